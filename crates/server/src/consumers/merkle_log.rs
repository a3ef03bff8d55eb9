//! The server's transparency log: an RFC 6962 Merkle tree over every stored
//! record (one leaf per record, in store order), and signed checkpoints in
//! the C2SP signed-note format. Clients keep the checkpoints they saw; a
//! later checkpoint must be consistent with them, so records deleted or
//! edited on the server afterwards are detected (`tally verify`).
//!
//! - Leaf: `hash_leaf("tally-record-v1\n<seq>\n<time>\n<collection>\n<instance hex>\n<kind>\n" || body)`.
//! - Files in `<data-dir>/merkle/`: the tree (`tally-transparency`'s
//!   [`EpochTree`]: epochs of `2^bits` leaves, default `2^20`), `runs` (the
//!   store position of each leaf as runs of consecutive positions:
//!   `u64 first leaf | u64 its position`, one entry per jump), `cuts.jsonl`
//!   (the recovery-cut statements, see [`after_recovery`]), `log-key` (the
//!   signing key, 0600).
//! - Storage follows retention ([`MerkleLog::maintain`]): an epoch two
//!   epochs behind the newest is *thinned* (its leaf hashes go; they are
//!   recomputed from the stored records, except those of records already
//!   gone or expiring before the rest of their 16-leaf block, and the
//!   blocks of signed sizes, which are kept); an epoch none of whose
//!   records is left in the store is *dropped*, keeping its root and the
//!   hashes that consistency proofs from the checkpoints signed inside it
//!   need. Signing is coalesced to one new checkpoint a second, which
//!   bounds what signed sizes cost.
//! - The origin (and key name) is `tally/<first 16 hex digits of the key's
//!   public key hash>`, stable for the life of the key.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_store::{
    Filter, NewRecord, Owner, Record, RecoveryReport, RetentionPolicy, SharedLog, Store, kind,
};
use tally_transparency::Hash;
use tally_transparency::checkpoint::Checkpoint;
use tally_transparency::merkle::{EpochTree, FileTree, LeafSource, MerkleError, hash_leaf};
use tally_transparency::note::{Signer, Verifier};

/// Default epoch size of the log: `2^20` leaves.
pub const DEFAULT_EPOCH_BITS: u32 = 20;

/// At most one new checkpoint is signed per this interval; a request for a
/// newer one waits (read-your-writes holds, a little later).
const SIGN_INTERVAL: Duration = Duration::from_secs(1);

/// Collection name of the server's own statements (owned by no tailnet).
pub const SYSTEM_COLLECTION: &str = tally_proto::collection::TRANSPARENCY;

/// The leaf hash of a stored record.
pub fn record_leaf(r: &Record) -> Hash {
    let mut data = format!(
        "tally-record-v1\n{}\n{}\n{}\n{}\n{}\n",
        r.seq,
        r.rec.time,
        r.rec.collection,
        hex::encode(r.rec.instance),
        r.rec.kind
    )
    .into_bytes();
    data.extend_from_slice(&r.rec.body);
    hash_leaf(&data)
}

/// A recovery-cut statement: the log had published store positions that
/// the store lost when it recovered (see [`after_recovery`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CutStatement {
    /// Store position of the statement's own record.
    pub seq: u64,
    /// Its time (Unix nanoseconds).
    pub time: i64,
    /// The statement (the record body, JSON): `lost` positions and leaves
    /// (or null), `resumesAt`, `reasons`.
    pub body: String,
}

impl CutStatement {
    /// The record the statement is stored as.
    pub fn record(&self) -> Record {
        Record {
            seq: self.seq,
            rec: NewRecord {
                time: self.time,
                collection: SYSTEM_COLLECTION.into(),
                owner: Owner::Unclaimed,
                instance: [0; 32],
                identity: None,
                client_time: None,
                kind: kind::CUT,
                body: self.body.clone().into_bytes(),
            },
        }
    }

    /// The store positions it says were lost, if any.
    pub fn lost(&self) -> Option<(u64, u64)> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        Some((
            v["lost"]["positions"][0].as_u64()?,
            v["lost"]["positions"][1].as_u64()?,
        ))
    }
}

struct Inner {
    tree: EpochTree,
    /// `(first leaf, its store position)`, one per run of consecutive positions.
    runs: Vec<(u64, u64)>,
    runs_file: File,
    /// The last signed checkpoint and the size it covers.
    signed: Option<(u64, String)>,
    last_signing: Option<Instant>,
    cuts: Vec<CutStatement>,
}

impl Inner {
    fn seq_of(&self, leaf: u64) -> Option<u64> {
        let i = self
            .runs
            .partition_point(|&(l, _)| l <= leaf)
            .checked_sub(1)?;
        let (l, s) = self.runs[i];
        (leaf < self.tree.size()).then_some(s + (leaf - l))
    }

    fn index_of(&self, seq: u64) -> Option<u64> {
        let i = self
            .runs
            .partition_point(|&(_, s)| s <= seq)
            .checked_sub(1)?;
        let (l, s) = self.runs[i];
        let leaf = l + (seq - s);
        let end = self
            .runs
            .get(i + 1)
            .map_or(self.tree.size(), |&(next, _)| next);
        (leaf < end).then_some(leaf)
    }

    fn last_seq(&self) -> u64 {
        match self.tree.size() {
            0 => 0,
            n => self.seq_of(n - 1).unwrap_or(0),
        }
    }
}

/// Leaf hashes recomputed from the stored records (and cut statements).
struct StoreLeaves<'a> {
    store: &'a dyn tally_store::Log,
    inner: &'a Inner,
}

impl LeafSource for StoreLeaves<'_> {
    fn leaf_hashes(&self, start: u64, out: &mut [Option<Hash>]) -> Result<(), MerkleError> {
        let wanted: Vec<(usize, u64)> = (0..out.len())
            .filter(|&i| out[i].is_none())
            .filter_map(|i| Some((i, self.inner.seq_of(start + i as u64)?)))
            .collect();
        let (Some(&(_, first)), Some(&(_, last))) = (wanted.first(), wanted.last()) else {
            return Ok(());
        };
        let mut from = first;
        while from <= last {
            let batch = self
                .store
                .scan(from, &Filter::default(), 64, 8 << 20, i64::MIN)
                .map_err(|e| MerkleError::Io(std::io::Error::other(e.to_string())))?;
            for r in &batch.records {
                if let Some(&(i, _)) = wanted.iter().find(|&&(_, s)| s == r.seq) {
                    out[i] = Some(record_leaf(r));
                }
            }
            if batch.next_seq <= from || (!batch.truncated && batch.records.is_empty()) {
                break;
            }
            from = batch.next_seq;
            if !batch.truncated {
                break;
            }
        }
        for c in &self.inner.cuts {
            if let Some(&(i, _)) = wanted.iter().find(|&&(_, s)| s == c.seq) {
                out[i] = Some(record_leaf(&c.record()));
            }
        }
        Ok(())
    }
}

/// What a look-up of a store position in the log found.
pub enum Position {
    /// Leaf `index` of the log.
    Leaf(u64),
    /// Lost in a recovery cut; the statement saying so.
    Cut(u64, CutStatement),
    /// Not in the log.
    Absent,
}

/// The transparency log.
pub struct MerkleLog {
    inner: Mutex<Inner>,
    signer: Signer,
    origin: String,
    dir: PathBuf,
    store: SharedLog,
    policy: Arc<dyn RetentionPolicy>,
}

pub(crate) fn load_key(dir: &Path) -> anyhow::Result<Signer> {
    let key_path = dir.join("log-key");
    match std::fs::read_to_string(&key_path) {
        Ok(skey) => Signer::from_skey(skey.trim())
            .map_err(|e| anyhow::anyhow!("{} is not a log key: {e}", key_path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let probe = Signer::from_seed("tally", &seed)
                .map_err(|e| anyhow::anyhow!("cannot make a log key: {e}"))?;
            let id = hex::encode(Sha256::digest(probe.verifier().public_key().as_bytes()));
            let signer = Signer::from_seed(&format!("tally/{}", &id[..16]), &seed)
                .map_err(|e| anyhow::anyhow!("cannot make a log key: {e}"))?;
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&key_path)?;
            f.write_all(signer.to_skey().as_bytes())?;
            f.sync_all()?;
            Ok(signer)
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves a log of the earlier layout (`leaves`, `level-NN`, `seqs`: every
/// leaf hash and position kept for ever) into an [`EpochTree`] and runs.
/// The same leaves give the same roots. `seqs` goes first: once it is gone
/// the move is complete, and leftovers of the old files are removed.
fn migrate(dir: &Path, bits: u32) -> anyhow::Result<()> {
    let seqs_path = dir.join("seqs");
    if seqs_path.exists() {
        for name in ["top", "runs", "dropped", "epoch-bits", "cuts.jsonl"] {
            let p = dir.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with("epoch-") && e.path().is_dir() {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        let old = FileTree::open_dir(dir).map_err(|e| anyhow::anyhow!("old Merkle tree: {e}"))?;
        let seqs = std::fs::read(&seqs_path)?;
        let n = old.size().min(seqs.len() as u64 / 8);
        let mut tree =
            EpochTree::open(dir, bits).map_err(|e| anyhow::anyhow!("new Merkle tree: {e}"))?;
        let mut runs: Vec<u8> = Vec::new();
        let mut expect = None;
        for i in 0..n {
            let leaf = old
                .leaf(i)
                .map_err(|e| anyhow::anyhow!("old Merkle tree: {e}"))?;
            tree.append(leaf)
                .map_err(|e| anyhow::anyhow!("new Merkle tree: {e}"))?;
            let at = (i * 8) as usize;
            let mut b = [0u8; 8];
            b.copy_from_slice(&seqs[at..at + 8]);
            let seq = u64::from_le_bytes(b);
            if expect != Some(seq) {
                runs.extend_from_slice(&i.to_le_bytes());
                runs.extend_from_slice(&seq.to_le_bytes());
            }
            expect = Some(seq + 1);
        }
        tree.sync()
            .map_err(|e| anyhow::anyhow!("new Merkle tree: {e}"))?;
        let mut f = File::create(dir.join("runs"))?;
        f.write_all(&runs)?;
        f.sync_all()?;
        File::open(dir)?.sync_all()?;
        std::fs::remove_file(&seqs_path)?;
        File::open(dir)?.sync_all()?;
        tracing::info!(leaves = n, "transparency log moved to epoch storage");
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "leaves" || (name.starts_with("level-") && e.path().is_file()) {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

impl MerkleLog {
    /// Opens (creating) the log in `<data_dir>/merkle` over `store`, with
    /// epochs of `2^epoch_bits` leaves; `policy` tells which records expire
    /// before their neighbours (their leaf hashes are kept when an epoch is
    /// thinned).
    pub fn open(
        data_dir: &Path,
        store: SharedLog,
        policy: Arc<dyn RetentionPolicy>,
        epoch_bits: u32,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("merkle");
        std::fs::create_dir_all(&dir)?;
        let signer = load_key(&dir)?;
        migrate(&dir, epoch_bits)?;
        let tree = EpochTree::open(&dir, epoch_bits).map_err(|e| {
            anyhow::anyhow!("cannot open the Merkle tree in {}: {e}", dir.display())
        })?;
        let runs_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(dir.join("runs"))?;
        let len = runs_file.metadata()?.len() / 16 * 16;
        let mut bytes = vec![0u8; len as usize];
        runs_file.read_exact_at(&mut bytes, 0)?;
        let mut runs: Vec<(u64, u64)> = bytes
            .chunks_exact(16)
            .map(|c| {
                let mut a = [0u8; 8];
                let mut b = [0u8; 8];
                a.copy_from_slice(&c[..8]);
                b.copy_from_slice(&c[8..]);
                (u64::from_le_bytes(a), u64::from_le_bytes(b))
            })
            .collect();
        // Runs are written before the leaves: drop those past the tree.
        runs.retain(|&(l, _)| l < tree.size());
        if tree.size() > 0 && runs.first().is_none_or(|&(l, _)| l > 0) {
            anyhow::bail!(
                "{}: the store positions of the transparency log's leaves are missing",
                dir.join("runs").display()
            );
        }
        runs_file.set_len(runs.len() as u64 * 16)?;
        let cuts = match std::fs::read_to_string(dir.join("cuts.jsonl")) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<Vec<CutStatement>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("cuts.jsonl").display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let origin = signer.name().to_owned();
        Ok(Self {
            inner: Mutex::new(Inner {
                tree,
                runs,
                runs_file,
                signed: None,
                last_signing: None,
                cuts,
            }),
            signer,
            origin,
            dir,
            store,
            policy,
        })
    }

    /// The log's origin (also its key name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key in `vkey` text form.
    pub fn vkey(&self) -> String {
        self.signer.verifier().to_vkey()
    }

    /// The verifier.
    pub fn verifier(&self) -> Verifier {
        self.signer.verifier()
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.inner.lock().tree.size()
    }

    /// The store position of the last leaf (0 when empty): the store must
    /// never give a position up to this one to another record.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().last_seq()
    }

    /// Bytes of the log's files on disk (key and statements included).
    pub fn disk_bytes(&self) -> u64 {
        self.inner.lock().tree.disk_bytes()
    }

    /// `(epoch bits, epochs dropped)`.
    pub fn epochs(&self) -> (u32, u64) {
        let inner = self.inner.lock();
        (inner.tree.epoch_bits(), inner.tree.dropped_epochs())
    }

    /// The recovery-cut statements, oldest first.
    pub fn cuts(&self) -> Vec<CutStatement> {
        self.inner.lock().cuts.clone()
    }

    /// Appends records (in store order) and syncs.
    pub fn append(&self, records: &[Record]) -> anyhow::Result<()> {
        let mut inner = self.inner.lock();
        let size = inner.tree.size();
        let mut expect = inner.last_seq().checked_add(1).filter(|_| size > 0);
        let mut new_runs = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if expect != Some(r.seq) {
                new_runs.push((size + i as u64, r.seq));
            }
            expect = Some(r.seq + 1);
        }
        if !new_runs.is_empty() {
            let mut buf = Vec::with_capacity(new_runs.len() * 16);
            for (l, s) in &new_runs {
                buf.extend_from_slice(&l.to_le_bytes());
                buf.extend_from_slice(&s.to_le_bytes());
            }
            inner.runs_file.write_all(&buf)?;
            inner.runs_file.sync_data()?;
            inner.runs.extend(new_runs);
        }
        for r in records {
            inner
                .tree
                .append(record_leaf(r))
                .map_err(|e| anyhow::anyhow!("Merkle append: {e}"))?;
        }
        inner
            .tree
            .sync()
            .map_err(|e| anyhow::anyhow!("Merkle sync: {e}"))?;
        Ok(())
    }

    /// A signed checkpoint of the current tree (signed again only when the
    /// tree grew, at most once per second: this may wait that long).
    pub fn checkpoint(&self) -> anyhow::Result<String> {
        let mut inner = self.inner.lock();
        if let Some((s, text)) = &inner.signed
            && *s == inner.tree.size()
        {
            return Ok(text.clone());
        }
        if let Some(at) = inner.last_signing {
            let wait = SIGN_INTERVAL.saturating_sub(at.elapsed());
            if !wait.is_zero() {
                drop(inner);
                std::thread::sleep(wait);
                inner = self.inner.lock();
                if let Some((s, text)) = &inner.signed
                    && *s == inner.tree.size()
                {
                    return Ok(text.clone());
                }
            }
        }
        let size = inner.tree.size();
        inner
            .tree
            .note_signed()
            .map_err(|e| anyhow::anyhow!("recording the signed size: {e}"))?;
        let text = Checkpoint::new(&self.origin, size, inner.tree.root())
            .sign(&[&self.signer])
            .map_err(|e| anyhow::anyhow!("signing the checkpoint: {e}"))?;
        inner.signed = Some((size, text.clone()));
        inner.last_signing = Some(Instant::now());
        Ok(text)
    }

    /// What the log holds for store position `seq`.
    pub fn position(&self, seq: u64) -> Position {
        let inner = self.inner.lock();
        for c in &inner.cuts {
            if let Some((from, to)) = c.lost()
                && (from..=to).contains(&seq)
                && self.store_lacks(seq)
            {
                return Position::Cut(inner.index_of(seq).unwrap_or(u64::MAX), c.clone());
            }
        }
        match inner.index_of(seq) {
            Some(i) => Position::Leaf(i),
            None => Position::Absent,
        }
    }

    fn store_lacks(&self, seq: u64) -> bool {
        self.store
            .scan(seq, &Filter::default(), 1, 1 << 20, i64::MIN)
            .map(|b| b.records.first().is_none_or(|r| r.seq != seq))
            .unwrap_or(false)
    }

    /// The leaf index of the record at store position `seq`, if it is in the tree.
    pub fn index_of(&self, seq: u64) -> Option<u64> {
        self.inner.lock().index_of(seq)
    }

    /// Leaf hash, inclusion proof of leaf `index` in the tree of `size`.
    pub fn inclusion(&self, index: u64, size: u64) -> anyhow::Result<(Hash, Vec<Hash>)> {
        let inner = self.inner.lock();
        let src = StoreLeaves {
            store: &*self.store,
            inner: &inner,
        };
        let leaf = inner.tree.leaf(index, &src).map_err(explain)?;
        let proof = inner
            .tree
            .inclusion_proof(index, size, &src)
            .map_err(explain)?;
        Ok((leaf, proof))
    }

    /// Consistency proof from `old` to `new` leaves.
    pub fn consistency(&self, old: u64, new: u64) -> anyhow::Result<Vec<Hash>> {
        let inner = self.inner.lock();
        let src = StoreLeaves {
            store: &*self.store,
            inner: &inner,
        };
        inner
            .tree
            .consistency_proof(old, new, &src)
            .map_err(explain)
    }

    /// Thins and drops epochs as retention allows (see the module
    /// documentation). Returns the epochs dropped.
    pub fn maintain(&self) -> anyhow::Result<u64> {
        let (bits, dropped, current) = {
            let inner = self.inner.lock();
            let bits = inner.tree.epoch_bits();
            (bits, inner.tree.dropped_epochs(), inner.tree.size() >> bits)
        };
        // Thin every epoch two behind the newest.
        for e in dropped..current.saturating_sub(1) {
            if self.inner.lock().tree.is_thinned(e) {
                continue;
            }
            let keep = self.leaves_to_keep(e, bits)?;
            self.inner
                .lock()
                .tree
                .thin(e, &keep)
                .map_err(|err| anyhow::anyhow!("thinning epoch {e}: {err}"))?;
            tracing::info!(
                epoch = e,
                kept = keep.len(),
                "transparency log epoch thinned"
            );
        }
        // Drop the leading finished epochs whose records are all gone.
        let mut upto = dropped;
        while upto < current {
            let range = {
                let inner = self.inner.lock();
                inner
                    .seq_of(upto << bits)
                    .zip(inner.seq_of(((upto + 1) << bits) - 1))
            };
            let Some((first, last)) = range else { break };
            let next = self
                .store
                .scan(first, &Filter::default(), 1, 1 << 20, i64::MIN)?;
            if next.records.first().is_some_and(|r| r.seq <= last) {
                break;
            }
            upto += 1;
        }
        if upto > dropped {
            let report = self
                .inner
                .lock()
                .tree
                .drop_epochs(upto)
                .map_err(|e| anyhow::anyhow!("dropping epochs: {e}"))?;
            tracing::info!(
                epochs = report.epochs,
                signed_kept = report.signed_kept,
                signed_lost = report.signed_lost,
                "transparency log epochs dropped with the records they covered"
            );
        }
        Ok(upto - dropped)
    }

    /// Leaves of epoch `e` whose hash must stay on disk: their record is
    /// gone, or expires before another record of its 16-leaf block.
    fn leaves_to_keep(&self, e: u64, bits: u32) -> anyhow::Result<Vec<u64>> {
        let first_leaf = e << bits;
        let n = 1u64 << bits;
        let seqs: Vec<u64> = {
            let inner = self.inner.lock();
            (first_leaf..first_leaf + n)
                .map(|l| inner.seq_of(l).unwrap_or(0))
                .collect()
        };
        // Expiry per leaf: None = the record is gone.
        let mut expiry: Vec<Option<i64>> = vec![None; n as usize];
        let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
            return Ok(Vec::new());
        };
        let mut from = lo;
        let mut at = 0usize;
        while from <= hi {
            let batch = self
                .store
                .scan(from, &Filter::default(), 10_000, 32 << 20, i64::MIN)?;
            for r in &batch.records {
                if r.seq > hi {
                    break;
                }
                while at < seqs.len() && seqs[at] < r.seq {
                    at += 1;
                }
                if at < seqs.len() && seqs[at] == r.seq {
                    let exp = self.policy.expires_at(
                        r.rec.owner.as_ref(),
                        &r.rec.collection,
                        &r.rec.instance,
                        r.rec.time,
                    );
                    expiry[at] = Some(exp.unwrap_or(i64::MAX));
                }
            }
            if !batch.truncated {
                break;
            }
            from = batch.next_seq;
        }
        let cuts = self.inner.lock().cuts.clone();
        let mut keep = Vec::new();
        for (b, block) in expiry.chunks(16).enumerate() {
            let Some(max) = block.iter().flatten().max().copied() else {
                continue; // every record gone: the block's hash suffices
            };
            for (i, x) in block.iter().enumerate() {
                let leaf = first_leaf + (b * 16 + i) as u64;
                let statement = cuts
                    .iter()
                    .any(|c| Some(c.seq) == seqs.get(b * 16 + i).copied());
                if !statement && x.is_none_or(|x| x < max) {
                    keep.push(leaf);
                }
            }
        }
        Ok(keep)
    }

    /// Records a cut statement stored at `seq` (kept with the log, so its
    /// leaf can be proven after the store's copy expired).
    fn add_cut(&self, statement: CutStatement) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(&statement)?;
        line.push('\n');
        let path = self.dir.join("cuts.jsonl");
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.inner.lock().cuts.push(statement);
        Ok(())
    }
}

fn explain(e: MerkleError) -> anyhow::Error {
    match e {
        MerkleError::Pruned { level, index } => anyhow::anyhow!(
            "not provable any more: node {index} of level {level} covers records that retention or a recovery cut removed"
        ),
        e => anyhow::anyhow!("{e}"),
    }
}

/// Lines the store up with the log after the store's recovery. Published
/// history is never rewritten, so when the log covers positions the store
/// no longer has (a cut WAL tail, or files removed), the store continues
/// after the last covered position ([`Store::skip_to`]) and a signed
/// statement of the cut is stored: a `kind::CUT` record owned by no
/// tailnet (collection `tally-log`) that the log then covers like any
/// record and keeps in `cuts.jsonl`. A statement is also written when
/// recovery reported damage that lost nothing the log had published, so
/// that every cut shows in the log. Returns the statement.
pub async fn after_recovery(
    store: &Store,
    log: &MerkleLog,
    report: &RecoveryReport,
) -> anyhow::Result<Option<CutStatement>> {
    let covered = log.last_seq();
    let end = store.end_seq();
    let lost = (covered >= end).then_some((end, covered));
    if lost.is_none() && report.cuts.is_empty() {
        return Ok(None);
    }
    if lost.is_some() {
        store
            .skip_to(covered + 1)
            .await
            .map_err(|e| anyhow::anyhow!("cannot move the store past the log's positions: {e}"))?;
    }
    let leaves = lost.and_then(|(from, to)| Some((log.index_of(from)?, log.index_of(to)?)));
    let mut reasons = report.cuts.clone();
    if lost.is_some() && reasons.is_empty() {
        reasons.push("store files that held them are missing (no damage was reported)".into());
    }
    let body = serde_json::json!({
        "statement": "tally-cut-v1",
        "lost": lost.map(|(from, to)| serde_json::json!({
            "positions": [from, to],
            "leaves": leaves.map(|(a, b)| [a, b]),
        })),
        "resumesAt": store.end_seq(),
        "reasons": reasons,
    })
    .to_string();
    let time = tally_proto::timefmt::now_nanos();
    let rec = CutStatement {
        seq: 0,
        time,
        body: body.clone(),
    }
    .record();
    let out = store
        .append(vec![rec.rec])
        .await
        .map_err(|e| anyhow::anyhow!("storing the recovery-cut statement: {e}"))?;
    let seq = out
        .last_seq
        .ok_or_else(|| anyhow::anyhow!("the recovery-cut statement was not stored"))?;
    let statement = CutStatement { seq, time, body };
    log.add_cut(statement.clone())?;
    tracing::warn!(
        statement = %statement.body,
        "recovery cut the store; the transparency log records it"
    );
    Ok(Some(statement))
}
