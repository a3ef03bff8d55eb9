//! An append-only RFC 6962 tree whose storage follows the retention of the
//! data it covers: [`EpochTree`].
//!
//! The leaves are cut into **epochs**: aligned complete subtrees of
//! `2^bits` leaves (epoch `e` covers leaves `e·2^bits .. (e+1)·2^bits`).
//! On disk (one directory):
//!
//! * `top/`: the hashes of levels `>= bits` (every multiple of
//!   [`CACHE_STRIDE`]); level `bits` holds one hash per finished epoch, its
//!   root. Kept for ever: 32 bytes per epoch.
//! * `epoch-<e>/`: the epoch's leaf hashes (`leaves`) and its cached levels
//!   `4, 8, .. < bits`, plus `signed` (the tree sizes inside the epoch at
//!   which a checkpoint was signed, see [`EpochTree::note_signed`]).
//!   An epoch can be **thinned** ([`EpochTree::thin`]): its leaf file is
//!   emptied and only the leaves named by the caller, and the 16-leaf blocks
//!   holding a signed size, are kept in `sparse` (sorted `u64 index ||
//!   hash`). Other leaf hashes then come from a [`LeafSource`] (the server
//!   recomputes them from its stored records).
//!   An epoch can be **dropped** ([`EpochTree::drop_epochs`]) once it is
//!   finished: its directory is deleted, after the hashes that the
//!   consistency proofs of its signed sizes need were saved in `dropped`.
//! * `dropped`: how many leading epochs were dropped and those saved hashes
//!   (rewritten atomically, with a SHA-256 trailer).
//! * `epoch-bits`: the epoch size, fixed when the tree is created.
//!
//! What stays provable after epochs `0 .. d` were dropped:
//!
//! * roots, inclusion proofs and consistency proofs between any sizes
//!   `>= d·2^bits` (their proofs need only nodes of retained epochs and
//!   the epoch roots in `top/`);
//! * consistency from any size at which a checkpoint was signed, and
//!   from every epoch boundary, to any later size (also to a later signed
//!   size inside a dropped epoch), and the roots of those sizes;
//! * not: inclusion proofs of dropped leaves, nor roots or consistency
//!   from sizes inside a dropped epoch that were never signed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::storage::{FileStorage, Storage};
use super::tree::reduce;
use super::{CACHE_STRIDE, Hash, MerkleError, empty_root, fold_right, hash_children};

/// Leaves in one bottom block: the hashes below the first cached level.
const BLOCK: u64 = 1 << CACHE_STRIDE;

/// Bytes of one `sparse` entry: `u64` LE leaf index, then the hash.
const SPARSE_ENTRY: u64 = 40;

/// Where the hashes of leaves that an [`EpochTree`] no longer keeps come
/// from (the server: its stored records).
pub trait LeafSource {
    /// Fills the `None` entries of `out` that it can with the hashes of
    /// leaves `start .. start + out.len()` (at most 16, inside one aligned
    /// block of 16); leaves it cannot produce stay `None`.
    fn leaf_hashes(&self, start: u64, out: &mut [Option<Hash>]) -> Result<(), MerkleError>;
}

/// A [`LeafSource`] that knows no leaf.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLeaves;

impl LeafSource for NoLeaves {
    fn leaf_hashes(&self, _: u64, _: &mut [Option<Hash>]) -> Result<(), MerkleError> {
        Ok(())
    }
}

/// What [`EpochTree::drop_epochs`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropReport {
    /// Epochs dropped.
    pub epochs: u64,
    /// Signed sizes inside them that stay provable.
    pub signed_kept: usize,
    /// Signed sizes inside them whose hashes could not be read (their
    /// consistency proofs are lost).
    pub signed_lost: usize,
}

#[derive(Debug)]
struct Epoch {
    storage: FileStorage,
    /// `(file, entries)` once thinned.
    sparse: Option<(File, u64)>,
    signed: Vec<u64>,
    signed_file: File,
}

/// An append-only RFC 6962 Merkle tree stored by epochs that can be
/// thinned and dropped (see the module documentation). One writer per
/// directory.
#[derive(Debug)]
pub struct EpochTree {
    dir: PathBuf,
    bits: u32,
    size: u64,
    /// Roots of the complete subtrees making up the tree, left to right.
    frontier: Vec<(u32, Hash)>,
    top: FileStorage,
    epochs: BTreeMap<u64, Epoch>,
    dirty: BTreeSet<u64>,
    /// Epochs `0 .. dropped` are dropped.
    dropped: u64,
    /// Hashes of nodes inside dropped epochs that signed sizes need.
    kept: BTreeMap<(u32, u64), Hash>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> MerkleError {
    move |e| MerkleError::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn sync_dir(dir: &Path) -> Result<(), MerkleError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(format!("fsync {}", dir.display())))
}

fn epoch_dir_name(e: u64) -> String {
    format!("epoch-{e:012}")
}

fn parse_epoch_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("epoch-")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes `bytes` to `path` through a temporary file, fsyncs, renames.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MerkleError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename {}", tmp.display())))?;
    match path.parent() {
        Some(d) => sync_dir(d),
        None => Ok(()),
    }
}

/// The nodes of epoch `e` (leaves `e·2^bits ..`) that the consistency proof
/// from size `s` (inside the epoch) to any size past the epoch uses, plus
/// the last left piece of `s` (needed for the root of `s`).
fn boundary_nodes(bits: u32, e: u64, s: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut start = e << bits;
    let mut n = 1u64 << bits;
    let mut m = s - start;
    while m != n {
        let k = n / 2;
        let level = k.trailing_zeros();
        if m <= k {
            out.push((level, (start + k) >> level));
            n = k;
        } else {
            out.push((level, start >> level));
            start += k;
            n -= k;
            m -= k;
        }
    }
    let level = n.trailing_zeros();
    out.push((level, start >> level));
    out
}

impl Epoch {
    fn open(dir: &Path) -> Result<Epoch, MerkleError> {
        let storage = FileStorage::open(dir)?;
        let sparse_path = dir.join("sparse");
        let sparse = match File::open(&sparse_path) {
            Ok(f) => {
                let n = f
                    .metadata()
                    .map_err(io_err(format!("stat {}", sparse_path.display())))?
                    .len()
                    / SPARSE_ENTRY;
                Some((f, n))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(format!("open {}", sparse_path.display()))(e)),
        };
        let signed_path = dir.join("signed");
        let signed_file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&signed_path)
            .map_err(io_err(format!("open {}", signed_path.display())))?;
        let len = signed_file
            .metadata()
            .map_err(io_err(format!("stat {}", signed_path.display())))?
            .len();
        let mut bytes = vec![0u8; (len / 8 * 8) as usize];
        signed_file
            .read_exact_at(&mut bytes, 0)
            .map_err(io_err(format!("read {}", signed_path.display())))?;
        let signed = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Epoch {
            storage,
            sparse,
            signed,
            signed_file,
        })
    }

    /// Sparse entries with leaf index in `start .. start + n`.
    fn sparse_range(&self, start: u64, n: u64) -> Result<Vec<(u64, Hash)>, MerkleError> {
        let Some((f, len)) = &self.sparse else {
            return Ok(Vec::new());
        };
        let read_at = |i: u64| -> Result<(u64, Hash), MerkleError> {
            let mut b = [0u8; SPARSE_ENTRY as usize];
            f.read_exact_at(&mut b, i * SPARSE_ENTRY)?;
            let mut idx = [0u8; 8];
            idx.copy_from_slice(&b[..8]);
            let mut h = [0u8; 32];
            h.copy_from_slice(&b[8..]);
            Ok((u64::from_le_bytes(idx), Hash(h)))
        };
        let (mut lo, mut hi) = (0u64, *len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if read_at(mid)?.0 < start {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        while lo < *len {
            let (i, h) = read_at(lo)?;
            if i >= start + n {
                break;
            }
            out.push((i, h));
            lo += 1;
        }
        Ok(out)
    }
}

impl EpochTree {
    /// Opens (creating if needed) the tree in `dir` with epochs of
    /// `2^bits` leaves (`bits` a multiple of 4 from 8 to 56; an existing
    /// tree keeps the size it was created with, and another `bits` is an
    /// error). Repairs what a crash left half written.
    pub fn open(dir: impl AsRef<Path>, bits: u32) -> Result<EpochTree, MerkleError> {
        let dir = dir.as_ref().to_path_buf();
        if !(8..=56).contains(&bits) || !bits.is_multiple_of(CACHE_STRIDE) {
            return Err(MerkleError::Corrupt(format!(
                "epoch size 2^{bits}: the exponent must be a multiple of 4 from 8 to 56"
            )));
        }
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let bits_path = dir.join("epoch-bits");
        match std::fs::read_to_string(&bits_path) {
            Ok(t) => {
                let on_disk: u32 = t.trim().parse().map_err(|_| {
                    MerkleError::Corrupt(format!("{} is not a number", bits_path.display()))
                })?;
                if on_disk != bits {
                    return Err(MerkleError::Corrupt(format!(
                        "the tree in {} has epochs of 2^{on_disk} leaves, not 2^{bits}",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&bits_path, format!("{bits}\n").as_bytes())?;
            }
            Err(e) => return Err(io_err(format!("read {}", bits_path.display()))(e)),
        }
        let (dropped, kept) = read_dropped(&dir.join("dropped"))?;
        let top = FileStorage::open(dir.join("top"))?;
        let mut epochs = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            let Some(e) = entry.file_name().to_str().and_then(parse_epoch_dir) else {
                continue;
            };
            if e < dropped {
                // Dropped, but the crash came before the directory went.
                std::fs::remove_dir_all(entry.path())
                    .map_err(io_err(format!("remove {}", entry.path().display())))?;
                continue;
            }
            epochs.insert(e, Epoch::open(&entry.path())?);
        }
        let full = 1u64 << bits;
        let size = match epochs.iter().next_back() {
            None => dropped << bits,
            Some((&e, ep)) => (e << bits) + ep.storage.len(0).min(full),
        };
        let current = size >> bits;
        let mut tree = EpochTree {
            dir,
            bits,
            size,
            frontier: Vec::new(),
            top,
            epochs,
            dirty: BTreeSet::new(),
            dropped,
            kept,
        };
        for e in dropped..current {
            let Some(ep) = tree.epochs.get_mut(&e) else {
                return Err(MerkleError::Corrupt(format!("epoch {e} is missing")));
            };
            if ep.sparse.is_some() {
                if ep.storage.len(0) > 0 {
                    // Thinned, but the crash came before the leaves went.
                    ep.storage.truncate(0, 0)?;
                    ep.storage.sync()?;
                }
            } else if ep.storage.len(0) != full {
                return Err(MerkleError::Corrupt(format!(
                    "epoch {e} holds {} leaves, not {full}",
                    ep.storage.len(0)
                )));
            }
        }
        tree.repair()?;
        tree.rebuild_frontier()?;
        Ok(tree)
    }

    /// Lines the cached levels up with the leaves after a crash.
    fn repair(&mut self) -> Result<(), MerkleError> {
        let bits = self.bits;
        let size = self.size;
        for (&e, ep) in self.epochs.iter_mut() {
            let local = size.saturating_sub(e << bits).min(1 << bits);
            let thinned = ep.sparse.is_some();
            for level in (CACHE_STRIDE..bits).step_by(CACHE_STRIDE as usize) {
                let want = local >> level;
                let have = ep.storage.len(level);
                if have > want {
                    ep.storage.truncate(level, want)?;
                } else if have < want {
                    if thinned {
                        return Err(MerkleError::Corrupt(format!(
                            "thinned epoch {e} lacks hashes of level {level}"
                        )));
                    }
                    fill_level(&mut ep.storage, level, level - CACHE_STRIDE, have, want)?;
                }
            }
            ep.storage.truncate(0, local)?;
            ep.storage.sync()?;
        }
        for level in (bits..64).step_by(CACHE_STRIDE as usize) {
            let want = size >> level;
            let have = self.top.len(level);
            if have > want {
                self.top.truncate(level, want)?;
            } else if have < want && level == bits {
                for e in have..want {
                    let root = self.epoch_root_from_storage(e)?;
                    self.top.append(bits, &[root])?;
                }
            } else if have < want {
                fill_level(&mut self.top, level, level - CACHE_STRIDE, have, want)?;
            }
        }
        self.top.sync()
    }

    fn epoch_root_from_storage(&self, e: u64) -> Result<Hash, MerkleError> {
        let ep = self.epochs.get(&e).ok_or(MerkleError::Pruned {
            level: self.bits,
            index: e,
        })?;
        let mut buf = [Hash::ZERO; BLOCK as usize];
        ep.storage.read(self.bits - CACHE_STRIDE, 0, &mut buf)?;
        Ok(reduce(&mut buf))
    }

    fn rebuild_frontier(&mut self) -> Result<(), MerkleError> {
        let mut frontier = Vec::new();
        let mut offset = 0u64;
        for level in (0..64u32).rev() {
            if self.size >> level & 1 == 1 {
                frontier.push((level, self.node(level, offset >> level, &NoLeaves)?));
                offset += 1 << level;
            }
        }
        self.frontier = frontier;
        Ok(())
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Leaves per epoch, as a power of two.
    pub fn epoch_bits(&self) -> u32 {
        self.bits
    }

    /// Epochs `0 .. dropped_epochs()` are dropped.
    pub fn dropped_epochs(&self) -> u64 {
        self.dropped
    }

    /// The first leaf that is not in a dropped epoch.
    pub fn first_retained_leaf(&self) -> u64 {
        self.dropped << self.bits
    }

    /// Whether epoch `e` is thinned (leaf hashes only in part on disk).
    pub fn is_thinned(&self, e: u64) -> bool {
        self.epochs.get(&e).is_some_and(|ep| ep.sparse.is_some())
    }

    /// The current root (the empty-tree hash if there are no leaves).
    pub fn root(&self) -> Hash {
        fold_right(self.frontier.iter().map(|(_, h)| *h))
    }

    /// Bytes of every file of the tree.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(p) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }

    fn epoch_mut(&mut self, e: u64) -> Result<&mut Epoch, MerkleError> {
        if !self.epochs.contains_key(&e) {
            let path = self.dir.join(epoch_dir_name(e));
            let ep = Epoch::open(&path)?;
            sync_dir(&self.dir)?;
            self.epochs.insert(e, ep);
        }
        self.epochs
            .get_mut(&e)
            .ok_or_else(|| MerkleError::Corrupt(format!("epoch {e} vanished")))
    }

    /// Appends one leaf hash; returns its index. After an error, drop the
    /// tree and open it again.
    pub fn append(&mut self, leaf: Hash) -> Result<u64, MerkleError> {
        let index = self.size;
        if index == u64::MAX >> 1 {
            return Err(MerkleError::SizeOutOfRange {
                size: index,
                available: index,
            });
        }
        let bits = self.bits;
        let e = index >> bits;
        self.dirty.insert(e);
        self.epoch_mut(e)?.storage.append(0, &[leaf])?;
        let mut cur = (0u32, leaf);
        while let Some(&(level, left)) = self.frontier.last() {
            if level != cur.0 {
                break;
            }
            self.frontier.pop();
            cur = (level + 1, hash_children(&left, &cur.1));
            if cur.0.is_multiple_of(CACHE_STRIDE) {
                if cur.0 < bits {
                    self.epoch_mut(e)?.storage.append(cur.0, &[cur.1])?;
                } else {
                    self.top.append(cur.0, &[cur.1])?;
                }
            }
        }
        self.frontier.push(cur);
        self.size += 1;
        Ok(index)
    }

    /// Makes every appended leaf durable.
    pub fn sync(&mut self) -> Result<(), MerkleError> {
        for e in std::mem::take(&mut self.dirty) {
            if let Some(ep) = self.epochs.get_mut(&e) {
                ep.storage.sync()?;
            }
        }
        self.top.sync()
    }

    /// Records that a checkpoint of the current size was signed, durably,
    /// so that consistency from it stays provable after its epoch is
    /// dropped. Call before publishing the signature.
    pub fn note_signed(&mut self) -> Result<(), MerkleError> {
        let size = self.size;
        if size == 0 || size.is_multiple_of(1 << self.bits) {
            return Ok(()); // an epoch boundary needs nothing of the epoch
        }
        let e = size >> self.bits;
        let ep = self.epoch_mut(e)?;
        if ep.signed.last() == Some(&size) {
            return Ok(());
        }
        ep.signed_file
            .write_all(&size.to_le_bytes())
            .and_then(|_| ep.signed_file.sync_data())
            .map_err(io_err("record a signed tree size".into()))?;
        ep.signed.push(size);
        Ok(())
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64, src: &dyn LeafSource) -> Result<Hash, MerkleError> {
        if index >= self.size {
            return Err(MerkleError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        self.node(0, index, src)
    }

    /// The root of the tree as it was when it had `size` leaves.
    pub fn root_at(&self, size: u64, src: &dyn LeafSource) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        if size == self.size {
            return Ok(self.root());
        }
        if size == 0 {
            return Ok(empty_root());
        }
        self.range_hash(0, size, src)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves
    /// (RFC 6962 section 2.1.1), sibling of the leaf first.
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        src: &dyn LeafSource,
    ) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        super::inclusion_path(index, size, |start, n| self.range_hash(start, n, src))
    }

    /// The consistency proof from the tree of `old_size` leaves to the tree
    /// of `new_size` leaves (RFC 6962 section 2.1.2).
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
        src: &dyn LeafSource,
    ) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(new_size)?;
        super::consistency_path(old_size, new_size, |start, n| {
            self.range_hash(start, n, src)
        })
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        if size > self.size {
            return Err(MerkleError::SizeOutOfRange {
                size,
                available: self.size,
            });
        }
        Ok(())
    }

    /// MTH of leaves `start .. start + n`, `start` a multiple of the
    /// largest power of two in `n`.
    fn range_hash(&self, start: u64, n: u64, src: &dyn LeafSource) -> Result<Hash, MerkleError> {
        let mut parts = Vec::with_capacity(64);
        let mut offset = start;
        for level in (0..64u32).rev() {
            if n >> level & 1 == 1 {
                if offset & ((1u64 << level) - 1) != 0 {
                    return Err(MerkleError::Corrupt(format!(
                        "unaligned subtree {start}+{n}"
                    )));
                }
                parts.push(self.node(level, offset >> level, src)?);
                offset += 1 << level;
            }
        }
        Ok(fold_right(parts.into_iter()))
    }

    /// Root of the complete subtree `index` of `level`.
    fn node(&self, level: u32, index: u64, src: &dyn LeafSource) -> Result<Hash, MerkleError> {
        let pruned = MerkleError::Pruned { level, index };
        let bits = self.bits;
        if level < bits {
            let end = index.checked_add(1).map(|i| i << level);
            if end.is_some_and(|end| end <= self.dropped << bits) {
                return self.kept.get(&(level, index)).copied().ok_or(pruned);
            }
        }
        let mut buf = [Hash::ZERO; BLOCK as usize];
        if level >= CACHE_STRIDE {
            let base = level - level % CACHE_STRIDE;
            let width = 1usize << (level - base);
            let src_index = index << (level - base);
            if level >= bits {
                self.top.read(base, src_index, &mut buf[..width])?;
            } else {
                let e = index >> (bits - level);
                let ep = self.epochs.get(&e).ok_or(pruned)?;
                let local = src_index - (e << (bits - base));
                ep.storage.read(base, local, &mut buf[..width])?;
            }
            return Ok(reduce(&mut buf[..width]));
        }
        let width = 1usize << level;
        self.leaves(index << level, &mut buf[..width], src)?;
        Ok(reduce(&mut buf[..width]))
    }

    /// Leaf hashes `start .. start + out.len()` (inside one block of 16).
    fn leaves(
        &self,
        start: u64,
        out: &mut [Hash],
        src: &dyn LeafSource,
    ) -> Result<(), MerkleError> {
        let e = start >> self.bits;
        let ep = self.epochs.get(&e).ok_or(MerkleError::Pruned {
            level: 0,
            index: start,
        })?;
        if ep.sparse.is_none() {
            return ep.storage.read(0, start - (e << self.bits), out);
        }
        let mut got: Vec<Option<Hash>> = vec![None; out.len()];
        for (i, h) in ep.sparse_range(start, out.len() as u64)? {
            got[(i - start) as usize] = Some(h);
        }
        if got.iter().any(Option::is_none) {
            src.leaf_hashes(start, &mut got)?;
        }
        for (i, (dst, h)) in out.iter_mut().zip(got).enumerate() {
            *dst = h.ok_or(MerkleError::Pruned {
                level: 0,
                index: start + i as u64,
            })?;
        }
        Ok(())
    }

    /// Thins epoch `e` (which must be at least two epochs behind the
    /// current one): its leaf file is emptied, keeping only the leaves in
    /// `keep` and the 16-leaf blocks that hold a signed size (their
    /// records may go before the epoch does). No-op if already thinned.
    pub fn thin(&mut self, e: u64, keep: &[u64]) -> Result<(), MerkleError> {
        let bits = self.bits;
        if e + 2 > self.size >> bits {
            return Err(MerkleError::Corrupt(format!(
                "epoch {e} is too recent to be thinned"
            )));
        }
        let dir = self.dir.join(epoch_dir_name(e));
        let Some(ep) = self.epochs.get_mut(&e) else {
            return Ok(()); // dropped already
        };
        if ep.sparse.is_some() {
            return Ok(());
        }
        let first = e << bits;
        let mut wanted: BTreeSet<u64> = keep
            .iter()
            .copied()
            .filter(|i| (first..first + (1 << bits)).contains(i))
            .collect();
        for &s in &ep.signed {
            let b = s / BLOCK * BLOCK;
            if b != s {
                wanted.extend(b..b + BLOCK);
            }
        }
        let mut bytes = Vec::with_capacity(wanted.len() * SPARSE_ENTRY as usize);
        let mut one = [Hash::ZERO];
        for i in wanted {
            ep.storage.read(0, i - first, &mut one)?;
            bytes.extend_from_slice(&i.to_le_bytes());
            bytes.extend_from_slice(&one[0].0);
        }
        let path = dir.join("sparse");
        write_atomic(&path, &bytes)?;
        ep.storage.truncate(0, 0)?;
        ep.storage.sync()?;
        let f = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
        ep.sparse = Some((f, bytes.len() as u64 / SPARSE_ENTRY));
        Ok(())
    }

    /// Drops epochs `dropped_epochs() .. upto` (all must be finished):
    /// their directories are deleted after the hashes that the consistency
    /// proofs of their signed sizes need were saved.
    pub fn drop_epochs(&mut self, upto: u64) -> Result<DropReport, MerkleError> {
        let bits = self.bits;
        let mut report = DropReport::default();
        if upto <= self.dropped {
            return Ok(report);
        }
        if upto > self.size >> bits {
            return Err(MerkleError::Corrupt(format!(
                "epoch {} is not finished and cannot be dropped",
                self.size >> bits
            )));
        }
        let mut kept = self.kept.clone();
        for e in self.dropped..upto {
            let Some(ep) = self.epochs.get(&e) else {
                continue;
            };
            for &s in &ep.signed {
                let nodes: Result<Vec<_>, MerkleError> = boundary_nodes(bits, e, s)
                    .into_iter()
                    .map(|(l, i)| self.node(l, i, &NoLeaves).map(|h| ((l, i), h)))
                    .collect();
                match nodes {
                    Ok(nodes) => {
                        kept.extend(nodes);
                        report.signed_kept += 1;
                    }
                    Err(_) => report.signed_lost += 1,
                }
            }
        }
        write_dropped(&self.dir.join("dropped"), upto, &kept)?;
        for e in self.dropped..upto {
            if self.epochs.remove(&e).is_some() {
                let path = self.dir.join(epoch_dir_name(e));
                std::fs::remove_dir_all(&path)
                    .map_err(io_err(format!("remove {}", path.display())))?;
            }
            self.dirty.remove(&e);
        }
        sync_dir(&self.dir)?;
        report.epochs = upto - self.dropped;
        self.dropped = upto;
        self.kept = kept;
        Ok(report)
    }
}

/// Appends to `level` of `s` the hashes `have .. want`, each reduced from
/// 16 hashes of level `below`.
fn fill_level(
    s: &mut FileStorage,
    level: u32,
    below: u32,
    have: u64,
    want: u64,
) -> Result<(), MerkleError> {
    let fan = 1usize << (level - below);
    let mut buf = vec![Hash::ZERO; fan];
    for i in have..want {
        s.read(below, i * fan as u64, &mut buf)?;
        let h = reduce(&mut buf);
        s.append(level, &[h])?;
    }
    Ok(())
}

/// `dropped`: `u64 epochs dropped | u64 count | count × (u32 level, u64
/// index, hash) | SHA-256 of all before`, little-endian.
fn write_dropped(
    path: &Path,
    dropped: u64,
    kept: &BTreeMap<(u32, u64), Hash>,
) -> Result<(), MerkleError> {
    let mut b = Vec::with_capacity(16 + kept.len() * 44 + 32);
    b.extend_from_slice(&dropped.to_le_bytes());
    b.extend_from_slice(&(kept.len() as u64).to_le_bytes());
    for (&(l, i), h) in kept {
        b.extend_from_slice(&l.to_le_bytes());
        b.extend_from_slice(&i.to_le_bytes());
        b.extend_from_slice(&h.0);
    }
    let sum = Sha256::digest(&b);
    b.extend_from_slice(&sum);
    write_atomic(path, &b)
}

type Kept = BTreeMap<(u32, u64), Hash>;

fn read_dropped(path: &Path) -> Result<(u64, Kept), MerkleError> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, BTreeMap::new())),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let bad = || MerkleError::Corrupt(format!("{} is damaged", path.display()));
    if b.len() < 48 {
        return Err(bad());
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad());
    }
    let u64_at = |at: usize| -> Result<u64, MerkleError> {
        Ok(u64::from_le_bytes(
            body.get(at..at + 8)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let dropped = u64_at(0)?;
    let count = u64_at(8)?;
    if body.len() as u64 != 16 + count * 44 {
        return Err(bad());
    }
    let mut kept = BTreeMap::new();
    for c in body[16..].chunks_exact(44) {
        let l = u32::from_le_bytes(c[..4].try_into().map_err(|_| bad())?);
        let i = u64::from_le_bytes(c[4..12].try_into().map_err(|_| bad())?);
        let h = Hash::from_slice(&c[12..]).ok_or_else(bad)?;
        kept.insert((l, i), h);
    }
    Ok((dropped, kept))
}

#[cfg(test)]
mod tests {
    use super::super::{MemoryTree, verify_consistency, verify_inclusion};
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| super::super::hash_leaf(&i.to_le_bytes()))
            .collect()
    }

    /// Leaves it was given, as the server gives the leaves of its records.
    struct Known(Vec<Option<Hash>>);

    impl LeafSource for Known {
        fn leaf_hashes(&self, start: u64, out: &mut [Option<Hash>]) -> Result<(), MerkleError> {
            for (i, o) in out.iter_mut().enumerate() {
                if o.is_none() {
                    *o = self.0.get(start as usize + i).copied().flatten();
                }
            }
            Ok(())
        }
    }

    #[test]
    fn same_roots_and_proofs_as_the_plain_tree_through_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(1500);
        let mut plain = MemoryTree::new();
        {
            let mut t = EpochTree::open(dir.path(), 8).unwrap();
            for h in &all[..1000] {
                t.append(*h).unwrap();
                plain.append(*h).unwrap();
                assert_eq!(t.root(), plain.root());
            }
            t.sync().unwrap();
        }
        assert!(
            EpochTree::open(dir.path(), 12).is_err(),
            "epoch size is fixed"
        );
        let mut t = EpochTree::open(dir.path(), 8).unwrap();
        assert_eq!(t.size(), 1000);
        assert_eq!(t.root(), plain.root());
        for h in &all[1000..] {
            t.append(*h).unwrap();
            plain.append(*h).unwrap();
        }
        for size in [1u64, 15, 16, 17, 255, 256, 257, 1000, 1500] {
            let root = plain.root_at(size).unwrap();
            assert_eq!(t.root_at(size, &NoLeaves).unwrap(), root);
            for index in [0, size / 2, size - 1] {
                let p = t.inclusion_proof(index, size, &NoLeaves).unwrap();
                assert_eq!(p, plain.inclusion_proof(index, size).unwrap());
                verify_inclusion(&all[index as usize], index, size, &p, &root).unwrap();
            }
            for old in [1, size / 3, size - 1] {
                let p = t.consistency_proof(old, size, &NoLeaves).unwrap();
                assert_eq!(p, plain.consistency_proof(old, size).unwrap());
            }
        }
    }

    #[test]
    fn a_torn_append_is_repaired_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(700);
        {
            let mut t = EpochTree::open(dir.path(), 8).unwrap();
            for h in &all {
                t.append(*h).unwrap();
            }
            t.sync().unwrap();
        }
        // Lose the last level-4 hash of epoch 2 and the epoch roots.
        let l4 = dir.path().join(epoch_dir_name(2)).join("level-04");
        let len = std::fs::metadata(&l4).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&l4)
            .unwrap()
            .set_len(len - 32)
            .unwrap();
        std::fs::remove_file(dir.path().join("top").join("level-08")).unwrap();
        let t = EpochTree::open(dir.path(), 8).unwrap();
        assert_eq!(t.size(), 700);
        assert_eq!(t.root(), super::super::root_from_leaves(&all));
    }

    #[test]
    fn thinned_and_dropped_epochs_keep_what_they_promise() {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(2000);
        let mut plain = MemoryTree::new();
        let mut t = EpochTree::open(dir.path(), 8).unwrap();
        let mut signed = Vec::new();
        for (i, h) in all.iter().enumerate() {
            t.append(*h).unwrap();
            plain.append(*h).unwrap();
            if [100usize, 300, 301, 512, 700].contains(&(i + 1)) {
                t.sync().unwrap();
                t.note_signed().unwrap();
                signed.push(i as u64 + 1);
            }
        }
        t.sync().unwrap();
        let before = t.disk_bytes();
        // Records of leaves 0..1024 are gone except leaf 5's; leaves 3
        // and 4 expire early, so their hashes are kept.
        for e in 0..4 {
            t.thin(e, &[3, 4]).unwrap();
        }
        assert!(t.thin(6, &[]).is_err(), "too recent");
        let mut known = vec![None; 2000];
        known[5] = Some(all[5]);
        for (i, k) in known.iter_mut().enumerate().skip(1024) {
            *k = Some(all[i]);
        }
        let src = Known(known);
        let root = plain.root();
        // Leaf 5: sibling 4 from the kept leaves, 6 and 7 are gone.
        assert!(matches!(
            t.inclusion_proof(5, 2000, &src),
            Err(MerkleError::Pruned { .. })
        ));
        // Leaf 100's block was kept for the signed size 100.
        let p = t.inclusion_proof(100, 2000, &src).unwrap();
        verify_inclusion(&all[100], 100, 2000, &p, &root).unwrap();
        // Signed sizes prove consistency from thinned epochs.
        for &s in &signed {
            let p = t.consistency_proof(s, 2000, &NoLeaves).unwrap();
            verify_consistency(s, 2000, &plain.root_at(s).unwrap(), &root, &p).unwrap();
        }
        let report = t.drop_epochs(4).unwrap();
        assert_eq!(report.epochs, 4);
        assert_eq!(
            report.signed_kept, 4,
            "100, 300, 301 and 700; 512 is a boundary"
        );
        assert!(
            t.disk_bytes() < before * 6 / 10,
            "{} -> {}",
            before,
            t.disk_bytes()
        );
        drop(t);
        let mut t = EpochTree::open(dir.path(), 8).unwrap();
        assert_eq!(t.dropped_epochs(), 4);
        for h in leaves(2100).iter().skip(2000) {
            t.append(*h).unwrap();
            plain.append(*h).unwrap();
        }
        let root = plain.root();
        assert_eq!(t.root(), root);
        for s in signed.iter().copied().chain([1024, 1500, 2000]) {
            let p = t.consistency_proof(s, 2100, &NoLeaves).unwrap();
            verify_consistency(s, 2100, &plain.root_at(s).unwrap(), &root, &p).unwrap();
            assert_eq!(t.root_at(s, &NoLeaves).unwrap(), plain.root_at(s).unwrap());
        }
        // Between two signed sizes of dropped epochs.
        let p = t.consistency_proof(100, 700, &NoLeaves).unwrap();
        verify_consistency(
            100,
            700,
            &plain.root_at(100).unwrap(),
            &plain.root_at(700).unwrap(),
            &p,
        )
        .unwrap();
        assert!(
            t.consistency_proof(200, 2100, &NoLeaves).is_err(),
            "never signed"
        );
        assert!(
            t.inclusion_proof(100, 2100, &NoLeaves).is_err(),
            "dropped leaf"
        );
        let p = t.inclusion_proof(1030, 2100, &NoLeaves).unwrap();
        verify_inclusion(&plain.leaf(1030).unwrap(), 1030, 2100, &p, &root).unwrap();
    }
}
