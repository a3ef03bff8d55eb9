//! The append-only Merkle tree.

use std::path::Path;

use super::storage::{FileStorage, MemoryStorage, Storage};
use super::{Hash, MerkleError, empty_root, fold_right, hash_children, hash_leaf};

/// Levels whose complete subtree roots are stored: every multiple of this
/// (4, 8, 12, ...), besides the leaves at level 0.
///
/// Any complete subtree hash is then at most `2^4 = 16` consecutive stored
/// hashes (one `pread`) and 15 node hashes away, so a proof in a tree of
/// tens of millions of leaves costs a few dozen small reads, while the
/// cache adds only `1/15` to the size of the leaf file.
pub const CACHE_STRIDE: u32 = 4;

/// An append-only RFC 6962 Merkle tree over leaf hashes, answering roots
/// and proofs for every size up to the current one.
///
/// Keeps in memory only the right edge of the tree (at most 64 hashes);
/// everything else is read from the [`Storage`] on demand. Reads
/// ([`MerkleTree::root_at`], proofs) take `&self`.
#[derive(Debug)]
pub struct MerkleTree<S: Storage> {
    storage: S,
    size: u64,
    /// Roots of the complete subtrees making up the tree, left to right,
    /// with their levels (one per set bit of `size`, highest first).
    frontier: Vec<(u32, Hash)>,
}

/// A tree held in memory.
pub type MemoryTree = MerkleTree<MemoryStorage>;

/// A tree kept in a directory on disk (see [`FileStorage`]).
pub type FileTree = MerkleTree<FileStorage>;

impl MemoryTree {
    /// An empty tree in memory.
    pub fn new() -> Self {
        MerkleTree {
            storage: MemoryStorage::new(),
            size: 0,
            frontier: Vec::new(),
        }
    }
}

impl Default for MemoryTree {
    fn default() -> Self {
        Self::new()
    }
}

impl FileTree {
    /// Opens (creating if needed) the tree stored in `dir`, repairing the
    /// cached levels after a crash.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, MerkleError> {
        MerkleTree::open(FileStorage::open(dir)?)
    }
}

pub(crate) fn cached_levels() -> impl Iterator<Item = u32> {
    (CACHE_STRIDE..64).step_by(CACHE_STRIDE as usize)
}

impl<S: Storage> MerkleTree<S> {
    /// Opens a tree over `storage`: its size is the number of leaf hashes
    /// stored; cached levels that lag behind the leaves (a crash between
    /// writes) are recomputed and ones that run ahead are cut.
    pub fn open(storage: S) -> Result<Self, MerkleError> {
        let mut tree = MerkleTree {
            size: storage.len(0),
            storage,
            frontier: Vec::new(),
        };
        tree.repair_levels()?;
        tree.rebuild_frontier()?;
        Ok(tree)
    }

    fn repair_levels(&mut self) -> Result<(), MerkleError> {
        let fan = 1usize << CACHE_STRIDE;
        for level in cached_levels() {
            let want = self.size >> level;
            let have = self.storage.len(level);
            if have > want {
                self.storage.truncate(level, want)?;
                continue;
            }
            let below = level - CACHE_STRIDE;
            let mut next = have;
            let mut buf = vec![Hash::ZERO; fan * 256];
            let mut out = Vec::with_capacity(256);
            while next < want {
                let count = ((want - next) as usize).min(256);
                let src = &mut buf[..count * fan];
                self.storage.read(below, next * fan as u64, src)?;
                out.clear();
                out.extend(src.chunks_exact_mut(fan).map(reduce));
                self.storage.append(level, &out)?;
                next += count as u64;
            }
        }
        Ok(())
    }

    fn rebuild_frontier(&mut self) -> Result<(), MerkleError> {
        self.frontier.clear();
        let mut offset = 0u64;
        for level in (0..64u32).rev() {
            if self.size >> level & 1 == 1 {
                let h = self.perfect(level, offset >> level)?;
                self.frontier.push((level, h));
                offset += 1 << level;
            }
        }
        Ok(())
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Appends one leaf hash (see [`super::hash_leaf`]); returns its index.
    ///
    /// After an error (storage I/O) the in-memory edge may no longer match
    /// the storage: drop the tree and [`MerkleTree::open`] it again, which
    /// recomputes everything from the stored leaves.
    pub fn append(&mut self, leaf_hash: Hash) -> Result<u64, MerkleError> {
        let index = self.size;
        if index == u64::MAX {
            return Err(MerkleError::SizeOutOfRange {
                size: index,
                available: index,
            });
        }
        self.storage.append(0, &[leaf_hash])?;
        let mut cur = (0u32, leaf_hash);
        while let Some(&(level, left)) = self.frontier.last() {
            if level != cur.0 {
                break;
            }
            self.frontier.pop();
            cur = (level + 1, hash_children(&left, &cur.1));
            if cur.0.is_multiple_of(CACHE_STRIDE) {
                self.storage.append(cur.0, &[cur.1])?;
            }
        }
        self.frontier.push(cur);
        self.size += 1;
        Ok(index)
    }

    /// Hashes `data` as a leaf and appends it; returns its index.
    pub fn append_data(&mut self, data: &[u8]) -> Result<u64, MerkleError> {
        self.append(hash_leaf(data))
    }

    /// Appends several leaf hashes; returns the index of the first.
    pub fn extend(&mut self, leaf_hashes: &[Hash]) -> Result<u64, MerkleError> {
        let first = self.size;
        for h in leaf_hashes {
            self.append(*h)?;
        }
        Ok(first)
    }

    /// Makes every appended leaf durable (see [`Storage::sync`]).
    pub fn sync(&mut self) -> Result<(), MerkleError> {
        self.storage.sync()
    }

    /// Cuts the tree back to `size` leaves. Only for crash recovery, to
    /// line the tree up with the records it covers *before* any checkpoint
    /// of the larger size was published: a signed checkpoint that the tree
    /// no longer extends is exactly what verifiers report as tampering.
    pub fn truncate(&mut self, size: u64) -> Result<(), MerkleError> {
        if size >= self.size {
            return Ok(());
        }
        self.storage.truncate(0, size)?;
        for level in cached_levels() {
            self.storage.truncate(level, size >> level)?;
        }
        self.size = size;
        self.rebuild_frontier()
    }

    /// The current root (the empty-tree hash if there are no leaves).
    pub fn root(&self) -> Hash {
        fold_right(self.frontier.iter().map(|(_, h)| *h))
    }

    /// The root of the tree as it was when it had `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        if size == self.size {
            return Ok(self.root());
        }
        if size == 0 {
            return Ok(empty_root());
        }
        self.range_hash(0, size)
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, MerkleError> {
        if index >= self.size {
            return Err(MerkleError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        let mut out = [Hash::ZERO];
        self.storage.read(0, index, &mut out)?;
        Ok(out[0])
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves
    /// (RFC 6962 section 2.1.1), sibling of the leaf first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        super::inclusion_path(index, size, |start, n| self.range_hash(start, n))
    }

    /// The consistency proof from the tree of `old_size` leaves to the tree
    /// of `new_size` leaves (RFC 6962 section 2.1.2). Empty when
    /// `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(new_size)?;
        super::consistency_path(old_size, new_size, |start, n| self.range_hash(start, n))
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

    /// MTH of leaves `start .. start + n` (`n >= 1`), where `start` is a
    /// multiple of the largest power of two in `n` (true of every subtree
    /// the RFC 6962 recursion visits).
    fn range_hash(&self, start: u64, n: u64) -> Result<Hash, MerkleError> {
        let mut parts = [Hash::ZERO; 64];
        let mut count = 0;
        let mut offset = start;
        for level in (0..64u32).rev() {
            if n >> level & 1 == 1 {
                if offset & ((1u64 << level) - 1) != 0 {
                    return Err(MerkleError::Corrupt(format!(
                        "unaligned subtree {start}+{n}"
                    )));
                }
                parts[count] = self.perfect(level, offset >> level)?;
                count += 1;
                offset += 1 << level;
            }
        }
        Ok(fold_right(parts[..count].iter().copied()))
    }

    /// Root of the complete subtree `index` of `level` (leaves
    /// `index * 2^level .. (index + 1) * 2^level`).
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        let base = level - level % CACHE_STRIDE;
        let width = 1usize << (level - base);
        let mut buf = [Hash::ZERO; 1 << CACHE_STRIDE];
        let src = &mut buf[..width];
        self.storage.read(base, index << (level - base), src)?;
        Ok(reduce(src))
    }
}

/// Root of a complete subtree from its `2^k` bottom hashes (clobbers them).
pub(crate) fn reduce(hashes: &mut [Hash]) -> Hash {
    let mut n = hashes.len();
    while n > 1 {
        for i in 0..n / 2 {
            hashes[i] = hash_children(&hashes[2 * i], &hashes[2 * i + 1]);
        }
        n /= 2;
    }
    hashes.first().copied().unwrap_or_else(empty_root)
}

#[cfg(test)]
mod tests {
    use super::super::{
        hash_leaf, root_from_leaves, split_point, verify_consistency, verify_inclusion,
    };
    use super::*;

    /// MTH straight from the RFC 6962 definition.
    pub(crate) fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                hash_children(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| hash_leaf(&i.to_le_bytes())).collect()
    }

    #[test]
    fn roots_match_the_definition_at_every_size() {
        let all = leaves(300);
        let mut tree = MemoryTree::new();
        assert_eq!(tree.root(), empty_root());
        for (i, h) in all.iter().enumerate() {
            tree.append(*h).unwrap();
            assert_eq!(tree.root(), reference_root(&all[..=i]), "size {}", i + 1);
        }
        for size in 0..=300u64 {
            let want = reference_root(&all[..size as usize]);
            assert_eq!(tree.root_at(size).unwrap(), want);
            assert_eq!(root_from_leaves(&all[..size as usize]), want);
        }
        assert!(tree.root_at(301).is_err());
        assert_eq!(tree.leaf(299).unwrap(), all[299]);
        assert!(tree.leaf(300).is_err());
    }

    #[test]
    fn proofs_verify_in_a_file_tree_after_reopen_and_repair() {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(1000);
        {
            let mut tree = FileTree::open_dir(dir.path()).unwrap();
            tree.extend(&all[..700]).unwrap();
            tree.sync().unwrap();
            tree.extend(&all[700..]).unwrap();
            // Dropped without sync: buffered appends still reach the file.
        }
        // Lose a cached level entirely and corrupt another's length.
        std::fs::remove_file(dir.path().join("level-04")).unwrap();
        let l8 = dir.path().join("level-08");
        let len = std::fs::metadata(&l8).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&l8)
            .unwrap()
            .set_len(len - 32)
            .unwrap();
        let tree = FileTree::open_dir(dir.path()).unwrap();
        assert_eq!(tree.size(), 1000);
        assert_eq!(tree.storage().len(4), 1000 >> 4);
        assert_eq!(tree.storage().len(8), 1000 >> 8);
        for size in [1u64, 2, 3, 17, 256, 257, 999, 1000] {
            let root = reference_root(&all[..size as usize]);
            assert_eq!(tree.root_at(size).unwrap(), root);
            for index in [0, size / 3, size - 1] {
                let proof = tree.inclusion_proof(index, size).unwrap();
                verify_inclusion(&all[index as usize], index, size, &proof, &root).unwrap();
            }
            for old in [1, size / 2, size - 1, size] {
                if old == 0 {
                    continue;
                }
                let old_root = reference_root(&all[..old as usize]);
                let proof = tree.consistency_proof(old, size).unwrap();
                verify_consistency(old, size, &old_root, &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn leaves_ahead_of_levels_and_levels_ahead_of_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let all = leaves(600);
        {
            let mut tree = FileTree::open_dir(dir.path()).unwrap();
            tree.extend(&all).unwrap();
            tree.sync().unwrap();
        }
        // Leaves cut back (as if the leaf write was lost but level writes were not).
        let lf = dir.path().join("leaves");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&lf)
            .unwrap()
            .set_len(300 * 32)
            .unwrap();
        let mut tree = FileTree::open_dir(dir.path()).unwrap();
        assert_eq!(tree.size(), 300);
        assert_eq!(tree.storage().len(4), 300 >> 4);
        assert_eq!(tree.storage().len(8), 1);
        assert_eq!(tree.root(), reference_root(&all[..300]));
        tree.extend(&all[300..]).unwrap();
        assert_eq!(tree.root(), reference_root(&all));
        tree.truncate(123).unwrap();
        assert_eq!(tree.root(), reference_root(&all[..123]));
        assert_eq!(tree.storage().len(4), 123 >> 4);
        tree.truncate(500).unwrap();
        assert_eq!(tree.size(), 123);
    }

    #[test]
    fn trees_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FileTree>();
        assert_send_sync::<MemoryTree>();
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut tree = MemoryTree::new();
        assert!(tree.inclusion_proof(0, 0).is_err());
        assert!(tree.consistency_proof(0, 1).is_err());
        assert_eq!(tree.consistency_proof(0, 0).unwrap(), Vec::<Hash>::new());
        tree.extend(&leaves(10)).unwrap();
        assert!(tree.inclusion_proof(10, 10).is_err());
        assert!(tree.inclusion_proof(3, 11).is_err());
        assert!(tree.consistency_proof(5, 4).is_err());
        assert!(tree.consistency_proof(5, 11).is_err());
        assert_eq!(tree.consistency_proof(10, 10).unwrap(), Vec::<Hash>::new());
        assert_eq!(tree.inclusion_proof(0, 1).unwrap(), Vec::<Hash>::new());
    }
}
