//! The server's transparency log: an RFC 6962 Merkle tree over every stored
//! record (one leaf per record, in store order), and signed checkpoints in
//! the C2SP signed-note format. Clients keep the checkpoints they saw; a
//! later checkpoint must be consistent with them, so records deleted or
//! edited on the server afterwards are detected (`tally verify`).
//!
//! - Leaf: `hash_leaf("tally-record-v1\n<seq>\n<time>\n<collection>\n<instance hex>\n<kind>\n" || body)`.
//! - Files in `<data-dir>/merkle/`: the tree (`tally-transparency`'s file
//!   storage), `seqs` (the store position of each leaf, u64 little-endian),
//!   `log-key` (the signing key, 0600).
//! - The origin (and key name) is `tally/<first 16 hex digits of the key's
//!   public key hash>`, stable for the life of the key.

use crate::AppState;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tally_store::{Filter, Record};
use tally_transparency::Hash;
use tally_transparency::checkpoint::Checkpoint;
use tally_transparency::merkle::{FileTree, hash_leaf};
use tally_transparency::note::{Signer, Verifier};

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

struct Inner {
    tree: FileTree,
    seqs: File,
    /// The last signed checkpoint and the size it covers.
    signed: Option<(u64, String)>,
}

/// The transparency log.
pub struct MerkleLog {
    inner: Mutex<Inner>,
    signer: Signer,
    origin: String,
    /// Store position up to which records were looked at by the follower.
    scanned: tokio::sync::watch::Sender<u64>,
}

impl MerkleLog {
    /// Opens (creating) the log in `<data_dir>/merkle`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("merkle");
        std::fs::create_dir_all(&dir)?;
        let key_path = dir.join("log-key");
        let signer = match std::fs::read_to_string(&key_path) {
            Ok(skey) => Signer::from_skey(skey.trim())
                .map_err(|e| anyhow::anyhow!("{} is not a log key: {e}", key_path.display()))?,
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
                signer
            }
            Err(e) => return Err(e.into()),
        };
        let mut tree = FileTree::open_dir(&dir).map_err(|e| {
            anyhow::anyhow!("cannot open the Merkle tree in {}: {e}", dir.display())
        })?;
        let mut seqs = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("seqs"))?;
        // After a crash the two files may disagree: keep the shorter.
        let seq_count = seqs.metadata()?.len() / 8;
        let size = tree.size().min(seq_count);
        if tree.size() > size {
            tree.truncate(size)
                .map_err(|e| anyhow::anyhow!("repairing the Merkle tree: {e}"))?;
        }
        seqs.set_len(size * 8)?;
        seqs.seek(SeekFrom::End(0))?;
        let origin = signer.name().to_owned();
        Ok(Self {
            inner: Mutex::new(Inner {
                tree,
                seqs,
                signed: None,
            }),
            signer,
            origin,
            scanned: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Waits (at most `limit`) until every record stored up to `seq` was
    /// looked at. Returns false when it gave up.
    pub async fn wait_for(&self, seq: u64, limit: Duration) -> bool {
        let mut rx = self.scanned.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
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

    /// The store position of the last leaf (0 when empty).
    pub fn last_seq(&self) -> u64 {
        let mut inner = self.inner.lock();
        let n = inner.tree.size();
        if n == 0 {
            return 0;
        }
        read_seq(&mut inner.seqs, n - 1).unwrap_or(0)
    }

    /// Appends records (in store order) and syncs.
    pub fn append(&self, records: &[Record]) -> anyhow::Result<()> {
        let mut inner = self.inner.lock();
        let mut buf = Vec::with_capacity(records.len() * 8);
        for r in records {
            inner
                .tree
                .append(record_leaf(r))
                .map_err(|e| anyhow::anyhow!("Merkle append: {e}"))?;
            buf.extend_from_slice(&r.seq.to_le_bytes());
        }
        inner.seqs.write_all(&buf)?;
        inner
            .tree
            .sync()
            .map_err(|e| anyhow::anyhow!("Merkle sync: {e}"))?;
        inner.seqs.sync_data()?;
        Ok(())
    }

    /// A signed checkpoint of the current tree (signed again only when the
    /// tree grew).
    pub fn checkpoint(&self) -> anyhow::Result<String> {
        let mut inner = self.inner.lock();
        let size = inner.tree.size();
        if let Some((s, text)) = &inner.signed
            && *s == size
        {
            return Ok(text.clone());
        }
        let text = Checkpoint::of_tree(&self.origin, &inner.tree)
            .sign(&[&self.signer])
            .map_err(|e| anyhow::anyhow!("signing the checkpoint: {e}"))?;
        inner.signed = Some((size, text.clone()));
        Ok(text)
    }

    /// The leaf index of the record at store position `seq`, if it is in the tree.
    pub fn index_of(&self, seq: u64) -> Option<u64> {
        let mut inner = self.inner.lock();
        let n = inner.tree.size();
        let (mut lo, mut hi) = (0u64, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let s = read_seq(&mut inner.seqs, mid)?;
            match s.cmp(&seq) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Leaf hash, inclusion proof of leaf `index` in the tree of `size`.
    pub fn inclusion(&self, index: u64, size: u64) -> anyhow::Result<(Hash, Vec<Hash>)> {
        let inner = self.inner.lock();
        let leaf = inner.tree.leaf(index).map_err(|e| anyhow::anyhow!("{e}"))?;
        let proof = inner
            .tree
            .inclusion_proof(index, size)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((leaf, proof))
    }

    /// Consistency proof from `old` to `new` leaves.
    pub fn consistency(&self, old: u64, new: u64) -> anyhow::Result<Vec<Hash>> {
        self.inner
            .lock()
            .tree
            .consistency_proof(old, new)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

fn read_seq(f: &mut File, index: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    f.seek(SeekFrom::Start(index * 8)).ok()?;
    f.read_exact(&mut b).ok()?;
    f.seek(SeekFrom::End(0)).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Appends every newly stored record to the log, until the task is dropped.
pub async fn follow(state: AppState, log: Arc<MerkleLog>) {
    let mut changes = state.store.subscribe();
    let mut pos = log.last_seq() + 1;
    loop {
        let (store, log2) = (state.store.clone(), log.clone());
        let step = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, bool)> {
            // Records hidden by retention at this moment are skipped: the
            // log covers what was visible when it was appended.
            let batch = store.scan(pos, &Filter::default(), 10_000, 32 << 20, i64::MIN)?;
            log2.append(&batch.records)?;
            Ok((batch.next_seq, batch.truncated))
        })
        .await;
        match step {
            Ok(Ok((next, truncated))) => {
                pos = next;
                log.scanned.send_replace(next.saturating_sub(1));
                if truncated {
                    continue;
                }
            }
            Ok(Err(e)) => tracing::error!("transparency log: {e} (will retry)"),
            Err(e) => tracing::error!("transparency log task panicked: {e}"),
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
