//! RFC 6962 (RFC 9162 section 2.1) Merkle tree hashing, proofs and their
//! verification.
//!
//! * leaf hash `= SHA-256(0x00 || data)` ([`hash_leaf`]),
//! * interior node `= SHA-256(0x01 || left || right)` ([`hash_children`]),
//! * the root of the empty tree is `SHA-256("")` ([`empty_root`]),
//! * the tree over `n > 1` leaves splits at the largest power of two `k < n`:
//!   `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`.
//!
//! Inclusion proofs are listed from the leaf's sibling up to the root's
//! child, consistency proofs in the order of RFC 6962 section 2.1.2; both
//! are exactly what Certificate Transparency logs and `golang.org/x/mod/sumdb/tlog`
//! produce, so [`verify_inclusion`] and [`verify_consistency`] accept their
//! proofs and theirs accept ours.
//!
//! [`MerkleTree`] is the append-only tree that produces the proofs, over a
//! [`Storage`]: [`MemoryStorage`] or the on-disk [`FileStorage`].

mod epochs;
mod storage;
mod tree;

pub use epochs::{EpochTree, LeafSource, NoLeaves};
pub use storage::{FileStorage, MemoryStorage, Storage};
pub use tree::{CACHE_STRIDE, FileTree, MemoryTree, MerkleTree};

use sha2::{Digest, Sha256};

pub use crate::hash::Hash;

/// Errors of the tree and its storage.
#[derive(Debug, thiserror::Error)]
pub enum MerkleError {
    /// Reading or writing the storage failed.
    #[error("merkle storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A leaf index at or beyond the tree size it was asked about.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size it was asked for.
        size: u64,
    },
    /// A tree size larger than the tree, or sizes in the wrong order.
    #[error("tree size {size} is not available (tree has {available} leaves)")]
    SizeOutOfRange {
        /// The tree size asked for.
        size: u64,
        /// The largest size that could be answered.
        available: u64,
    },
    /// The hash asked for covers leaves of a dropped epoch (or a leaf whose
    /// hash is no longer kept anywhere): it cannot be produced any more.
    #[error("node {index} of level {level} is no longer kept (its leaves were dropped)")]
    Pruned {
        /// Level of the node (0 = a leaf).
        level: u32,
        /// Index of the node in its level.
        index: u64,
    },
    /// The storage does not hold what the tree expects of it.
    #[error("merkle storage is inconsistent: {0}")]
    Corrupt(String),
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree (`index >= size`).
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The old tree is larger than the new one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizesOutOfOrder {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for the sizes given.
    #[error("proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    /// The proof's hashes do not lead to the expected root: the leaf is not
    /// in the tree, the trees are not consistent, or the proof was altered.
    #[error("proof does not lead to the expected root hash")]
    RootMismatch,
}

/// The RFC 6962 leaf hash: `SHA-256(0x00 || data)`.
pub fn hash_leaf(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

/// The RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn hash_children(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(&left.0);
    buf[33..].copy_from_slice(&right.0);
    Hash(Sha256::digest(buf).into())
}

/// The root of the empty tree, `SHA-256("")`
/// (`e3b0c442...b855`).
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// The root of the tree over `leaves` (leaf hashes), computed in memory in
/// one pass. For small trees and tests; [`MerkleTree`] for anything that
/// grows.
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    // Right edge of perfect subtrees, as in MerkleTree::append.
    let mut stack: Vec<(u32, Hash)> = Vec::with_capacity(64);
    for leaf in leaves {
        let mut cur = (0u32, *leaf);
        while let Some(&(level, left)) = stack.last() {
            if level != cur.0 {
                break;
            }
            stack.pop();
            cur = (level + 1, hash_children(&left, &cur.1));
        }
        stack.push(cur);
    }
    fold_right(stack.iter().map(|(_, h)| *h))
}

/// Combines perfect subtree roots listed left to right into the root of
/// the tree they make up: `node(h1, node(h2, ... node(hk-1, hk)))`.
pub(crate) fn fold_right(parts: impl DoubleEndedIterator<Item = Hash>) -> Hash {
    let mut rev = parts.rev();
    let Some(mut acc) = rev.next() else {
        return empty_root();
    };
    for left in rev {
        acc = hash_children(&left, &acc);
    }
    acc
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 6962 section 2.1.1), sibling of the leaf first, from `range_hash`
/// (MTH of leaves `start .. start + n`). Sizes are checked by the caller.
pub(crate) fn inclusion_path(
    index: u64,
    size: u64,
    mut range_hash: impl FnMut(u64, u64) -> Result<Hash, MerkleError>,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::with_capacity(64);
    let (mut start, mut n, mut m) = (0u64, size, index);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            proof.push(range_hash(start + k, n - k)?);
            n = k;
        } else {
            proof.push(range_hash(start, k)?);
            start += k;
            m -= k;
            n -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof from the tree of `old_size` leaves to the tree of
/// `new_size` leaves (RFC 6962 section 2.1.2), from `range_hash`. Empty
/// when `old_size` is 0 or equals `new_size`; `new_size` is checked by the
/// caller.
pub(crate) fn consistency_path(
    old_size: u64,
    new_size: u64,
    mut range_hash: impl FnMut(u64, u64) -> Result<Hash, MerkleError>,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizeOutOfRange {
            size: old_size,
            available: new_size,
        });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:start+n], whole): descend, remembering the
    // sibling subtrees, which come after the deeper part of the proof.
    let mut siblings = Vec::with_capacity(64);
    let (mut start, mut n, mut m, mut whole) = (0u64, new_size, old_size, true);
    while m != n {
        let k = split_point(n);
        if m <= k {
            siblings.push(range_hash(start + k, n - k)?);
            n = k;
        } else {
            siblings.push(range_hash(start, k)?);
            start += k;
            n -= k;
            m -= k;
            whole = false;
        }
    }
    let mut proof = Vec::with_capacity(siblings.len() + 1);
    if !whole {
        proof.push(range_hash(start, n)?);
    }
    proof.extend(siblings.into_iter().rev());
    Ok(proof)
}

/// Number of hashes in the inclusion proof of leaf `index` in a tree of
/// `size` leaves (`index < size`).
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    if index >= size {
        return 0;
    }
    let last = size - 1;
    let inner = 64 - (index ^ last).leading_zeros();
    let border = if inner >= 64 {
        0
    } else {
        (index >> inner).count_ones()
    };
    (inner + border) as usize
}

/// Recomputes the root from a leaf hash and its inclusion proof (RFC 9162
/// section 2.1.3.2).
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    if proof.len() != inclusion_proof_len(index, size) {
        return Err(ProofError::WrongLength);
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = hash_children(p, &r);
            if fnode & 1 == 0 {
                while fnode != 0 && fnode & 1 == 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = hash_children(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

/// Checks that the leaf with hash `leaf_hash` is at `index` in the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    if computed == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a
/// prefix of the tree of `new_size` leaves with root `new_root` (RFC 9162
/// section 2.1.4.2).
///
/// Equal sizes need an empty proof and equal roots. An old size of 0 needs
/// an empty proof and `old_root` equal to [`empty_root`] (every tree extends
/// the empty one; a size-0 checkpoint with another root is bogus).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if *old_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    // When the old tree is a perfect subtree of the new one, its root is the
    // implicit first element of the proof.
    let (first, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        (proof[0], &proof[1..])
    };
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = first;
    let mut sr = first;
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            if fnode & 1 == 0 {
                while fnode != 0 && fnode & 1 == 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(root_from_leaves(&[]), empty_root());
    }

    #[test]
    fn split_points() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn proof_lengths() {
        assert_eq!(inclusion_proof_len(0, 1), 0);
        assert_eq!(inclusion_proof_len(0, 8), 3);
        assert_eq!(inclusion_proof_len(5, 8), 3);
        assert_eq!(inclusion_proof_len(4, 5), 1);
        assert_eq!(inclusion_proof_len(2, 3), 1);
        assert_eq!(inclusion_proof_len(0, 3), 2);
        assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), 63);
        assert_eq!(inclusion_proof_len(0, u64::MAX), 64);
    }

    #[test]
    fn extreme_sizes_do_not_panic() {
        let h = hash_leaf(b"x");
        for (i, s) in [
            (0, 0),
            (0, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (u64::MAX, u64::MAX),
            (1 << 63, u64::MAX),
        ] {
            let proof = vec![h; inclusion_proof_len(i, s)];
            assert!(verify_inclusion(&h, i, s, &proof, &h).is_err());
            assert!(verify_inclusion(&h, i, s, &[h; 70], &h).is_err());
        }
        for (a, b) in [
            (1, u64::MAX),
            (u64::MAX, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            (5, 3),
        ] {
            for n in [0, 1, 5, 64, 70, 200] {
                assert!(verify_consistency(a, b, &h, &empty_root(), &vec![h; n]).is_err());
            }
        }
    }
}
