//! C2SP tlog checkpoints (<https://c2sp.org/tlog-checkpoint>): the signed
//! tree head of a log, as the text of a [signed note](crate::note).
//!
//! ```text
//! <origin>\n
//! <tree size, decimal, no leading zeros>\n
//! <root hash, standard padded base64 of 32 bytes>\n
//! [<extension line>\n ...]
//! ```
//!
//! The origin is non-empty and names the log; Tally signs checkpoints with
//! a note key whose name is the origin, and [`SignedCheckpoint::open`]
//! requires a verified signature by a key with that name.

use crate::hash::Hash;
use crate::merkle::{
    MerkleError, MerkleTree, ProofError, Storage, verify_consistency, verify_inclusion,
};
use crate::note::{Note, NoteError, Signer, VerifiedNote, Verifier, check_note_text};

/// Why a checkpoint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note text is not a checkpoint body.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The checkpoint is for another log.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    WrongOrigin {
        /// The origin expected.
        expected: String,
        /// The origin in the checkpoint.
        found: String,
    },
    /// No verified signature by a key named like the origin.
    #[error("checkpoint is not signed by the log key {0:?}")]
    NotSignedByLog(String),
    /// The signed note around it did not verify.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A checkpoint body: which log, how many leaves, which root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (first line), e.g. `tally.example.com/t/acme/tailtraffic`.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 root hash of the tree at `size`.
    pub root: Hash,
    /// Extension lines, without their newlines (opaque, each non-empty;
    /// NOT RECOMMENDED by the spec).
    pub extensions: Vec<String>,
}

fn parse_size(line: &str) -> Option<u64> {
    if line.is_empty() || line.len() > 20 || !line.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if line.len() > 1 && line.starts_with('0') {
        return None;
    }
    line.parse().ok()
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Checkpoint {
        Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The current head of `tree` under `origin`.
    pub fn of_tree<S: Storage>(origin: &str, tree: &MerkleTree<S>) -> Checkpoint {
        Checkpoint::new(origin, tree.size(), tree.root())
    }

    /// Parses a checkpoint body (a note text).
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        use CheckpointError::Malformed as Bad;
        check_note_text(text)
            .map_err(|_| Bad("text is not a note text (final newline, no control characters)"))?;
        let body = &text[..text.len() - 1];
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or(Bad("empty origin"))?;
        let size = lines.next().ok_or(Bad("missing tree size"))?;
        let size = parse_size(size).ok_or(Bad(
            "tree size is not a decimal number without leading zeros",
        ))?;
        let root = lines.next().ok_or(Bad("missing root hash"))?;
        let root =
            Hash::from_base64(root).map_err(|_| Bad("root hash is not the base64 of 32 bytes"))?;
        let mut extensions = Vec::new();
        for line in lines {
            if line.is_empty() {
                return Err(Bad("empty extension line"));
            }
            extensions.push(line.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The checkpoint body (a note text ending in a newline).
    pub fn to_text(&self) -> Result<String, CheckpointError> {
        use CheckpointError::Malformed as Bad;
        if self.origin.is_empty() || self.origin.contains('\n') {
            return Err(Bad("origin must be one non-empty line"));
        }
        if self
            .extensions
            .iter()
            .any(|e| e.is_empty() || e.contains('\n'))
        {
            return Err(Bad("extension lines must be non-empty single lines"));
        }
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        );
        for e in &self.extensions {
            out.push_str(e);
            out.push('\n');
        }
        check_note_text(&out).map_err(|_| Bad("control characters in origin or extensions"))?;
        Ok(out)
    }

    /// Signs the checkpoint with `signers` (the log key first, named like
    /// the origin) and returns the signed note.
    pub fn sign(&self, signers: &[&Signer]) -> Result<String, CheckpointError> {
        let mut note = Note::new(&self.to_text()?)?;
        note.sign(signers)?;
        Ok(note.to_text()?)
    }

    /// Checks a consistency proof from `self` (older) to `newer`.
    pub fn verify_consistency_to(
        &self,
        newer: &Checkpoint,
        proof: &[Hash],
    ) -> Result<(), ProofError> {
        verify_consistency(self.size, newer.size, &self.root, &newer.root, proof)
    }

    /// Checks that `leaf_hash` is leaf `index` of the tree this checkpoint
    /// commits to.
    pub fn verify_inclusion(
        &self,
        leaf_hash: &Hash,
        index: u64,
        proof: &[Hash],
    ) -> Result<(), ProofError> {
        verify_inclusion(leaf_hash, index, self.size, proof, &self.root)
    }

    /// Whether `tree` has (had) this checkpoint's root at this size.
    pub fn matches_tree<S: Storage>(&self, tree: &MerkleTree<S>) -> Result<bool, MerkleError> {
        Ok(self.size <= tree.size() && tree.root_at(self.size)? == self.root)
    }
}

/// A checkpoint whose note signatures were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The note it came in, with its verified and unverified signatures.
    pub note: VerifiedNote,
}

impl SignedCheckpoint {
    /// Parses and verifies a signed checkpoint note: the note must verify
    /// against `known` (see [`Note::open`]), carry a verified signature by
    /// a key named `origin`, and its body must be a checkpoint of `origin`.
    pub fn open(
        msg: &[u8],
        origin: &str,
        known: &[Verifier],
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let note = Note::open(msg, known)?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        if checkpoint.origin != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_owned(),
                found: checkpoint.origin,
            });
        }
        if !note.verified.iter().any(|s| s.name == origin) {
            return Err(CheckpointError::NotSignedByLog(origin.to_owned()));
        }
        Ok(SignedCheckpoint { checkpoint, note })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MemoryTree, hash_leaf};

    #[test]
    fn round_trip_with_extensions() {
        let mut c = Checkpoint::new("example.com/log", 20852163, Hash::sha256(b"x"));
        assert_eq!(Checkpoint::parse(&c.to_text().unwrap()).unwrap(), c);
        c.extensions = vec!["ext one".into(), "— two".into()];
        let text = c.to_text().unwrap();
        assert!(text.ends_with("\next one\n— two\n"));
        assert_eq!(Checkpoint::parse(&text).unwrap(), c);
        c.extensions = vec![String::new()];
        assert!(c.to_text().is_err());
        c.extensions = vec!["a\nb".into()];
        assert!(c.to_text().is_err());
        c.extensions = vec!["a\u{7}b".into()];
        assert!(c.to_text().is_err());
        assert!(Checkpoint::new("", 1, Hash::ZERO).to_text().is_err());
        assert!(Checkpoint::new("a\nb", 1, Hash::ZERO).to_text().is_err());
    }

    #[test]
    fn signed_checkpoint_of_a_tree() {
        let origin = "tally.test/t/acme/tailtraffic";
        let log = Signer::generate(origin).unwrap();
        let witness = Signer::generate("witness.test").unwrap();
        let mut tree = MemoryTree::new();
        for i in 0..10u32 {
            tree.append_data(&i.to_be_bytes()).unwrap();
        }
        let old = Checkpoint::of_tree(origin, &tree);
        let old_note = old.sign(&[&log]).unwrap();
        for i in 10..25u32 {
            tree.append_data(&i.to_be_bytes()).unwrap();
        }
        let new = Checkpoint::of_tree(origin, &tree);
        let new_note = new.sign(&[&log, &witness]).unwrap();

        let known = [log.verifier()];
        let a = SignedCheckpoint::open(old_note.as_bytes(), origin, &known).unwrap();
        let b = SignedCheckpoint::open(new_note.as_bytes(), origin, &known).unwrap();
        assert_eq!(b.note.unverified.len(), 1);
        let proof = tree
            .consistency_proof(a.checkpoint.size, b.checkpoint.size)
            .unwrap();
        a.checkpoint
            .verify_consistency_to(&b.checkpoint, &proof)
            .unwrap();
        let incl = tree.inclusion_proof(3, b.checkpoint.size).unwrap();
        b.checkpoint
            .verify_inclusion(&hash_leaf(&3u32.to_be_bytes()), 3, &incl)
            .unwrap();
        assert!(
            b.checkpoint
                .verify_inclusion(&hash_leaf(&4u32.to_be_bytes()), 3, &incl)
                .is_err()
        );
        assert!(a.checkpoint.matches_tree(&tree).unwrap());

        // Wrong origin, and a log signature missing (only the witness is known).
        assert!(matches!(
            SignedCheckpoint::open(new_note.as_bytes(), "other.test/log", &known),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        assert!(matches!(
            SignedCheckpoint::open(new_note.as_bytes(), origin, &[witness.verifier()]),
            Err(CheckpointError::NotSignedByLog(_))
        ));
        assert!(matches!(
            SignedCheckpoint::open(old_note.as_bytes(), origin, &[witness.verifier()]),
            Err(CheckpointError::Note(NoteError::UnknownKey { .. }))
        ));
        // A note that verifies but whose text is no checkpoint.
        let junk = crate::note::sign_note("hello\n", &[&log]).unwrap();
        assert!(matches!(
            SignedCheckpoint::open(junk.as_bytes(), origin, &known),
            Err(CheckpointError::Malformed(_))
        ));
    }
}
