//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys,
//! interoperable with `golang.org/x/mod/sumdb/note`.
//!
//! A signed note is a UTF-8 text ending in a newline, a blank line, and one
//! or more signature lines:
//!
//! ```text
//! <text, one or more lines, each ending in \n>
//! \n
//! — <key name> <base64(4-byte big-endian key ID || 64-byte Ed25519 signature)>\n
//! ```
//!
//! (`—` is U+2014 EM DASH.) The signature is over the text including its
//! final newline. The key ID of an Ed25519 key is the first four bytes of
//! `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)`.
//!
//! Keys travel as text:
//!
//! * verifier key (public): `<name>+<key ID, 8 lowercase hex>+<base64(0x01 || public key)>`,
//! * signer key (secret): `PRIVATE+KEY+<name>+<key ID, 8 lowercase hex>+<base64(0x01 || 32-byte seed)>`.
//!
//! Key names are non-empty and contain no Unicode white space and no `+`;
//! the recommended form is a schema-less URL such as `tally.example.com/log`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in key IDs and key encodings.
pub const ALG_ED25519: u8 = 0x01;

/// Most signature lines a note may carry before it is rejected as malformed
/// (the spec requires accepting at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Largest note accepted by [`Note::parse`], in bytes.
pub const MAX_NOTE_BYTES: usize = 1 << 20;

const EM_DASH_PREFIX: &str = "\u{2014} ";

/// Errors about key text forms and key names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A key name that is empty or has white space or `+` in it.
    #[error("invalid key name {0:?}: must be non-empty, without spaces or '+'")]
    InvalidName(String),
    /// A verifier key that is not `<name>+<hex id>+<base64 key>`.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    /// A signer key that is not `PRIVATE+KEY+<name>+<hex id>+<base64 key>`.
    #[error("malformed signer key: {0}")]
    MalformedSignerKey(&'static str),
    /// The key uses a signature type other than Ed25519 (0x01).
    #[error("unsupported signature type 0x{0:02x} (only Ed25519, 0x01)")]
    UnsupportedAlgorithm(u8),
    /// The key ID written in the key does not match the one computed from it.
    #[error("key ID {written:08x} does not match the key (computed {computed:08x})")]
    KeyIdMismatch {
        /// The key ID in the text.
        written: u32,
        /// The key ID computed from name and key.
        computed: u32,
    },
}

/// Errors about notes: parsing, signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The bytes are not a well-formed signed note (or a text to sign is
    /// not a valid note text).
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// None of the note's signatures is by a known key.
    #[error("note has no signature by a known key (signed by: {})", .signers.join(", "))]
    UnknownKey {
        /// `name+keyid` of every signature on the note.
        signers: Vec<String>,
    },
    /// A signature by a known key does not verify: the note was altered or
    /// forged. The whole note is rejected.
    #[error("invalid signature for key {name}+{key_id:08x}")]
    BadSignature {
        /// Key name.
        name: String,
        /// Key ID.
        key_id: u32,
    },
    /// Two different known keys have the same name and key ID.
    #[error("ambiguous key {name}+{key_id:08x}: more than one known key has this name and ID")]
    AmbiguousKey {
        /// Key name.
        name: String,
        /// Key ID.
        key_id: u32,
    },
}

/// Whether `name` is a valid key name.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(KeyError::InvalidName(name.to_owned()))
    }
}

/// The key ID of an Ed25519 key: the first four bytes, big-endian, of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn ed25519_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn parse_key_id(text: &str) -> Option<u32> {
    if text.len() != 8
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// An Ed25519 public key with its note name: checks note signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({})", self.to_vkey())
    }
}

impl Verifier {
    /// A verifier for `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Verifier, KeyError> {
        check_name(name)?;
        let key_id = ed25519_key_id(name, key.as_bytes());
        Ok(Verifier {
            name: name.to_owned(),
            key_id,
            key,
        })
    }

    /// Parses the verifier key text `<name>+<hex id>+<base64(0x01 || key)>`;
    /// the key ID must match the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Verifier, KeyError> {
        use KeyError::MalformedVerifierKey as Bad;
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Bad("expected <name>+<key id>+<key>"));
        };
        check_name(name)?;
        let written = parse_key_id(id).ok_or(Bad("key ID is not 8 lowercase hex digits"))?;
        let raw = STANDARD
            .decode(key)
            .map_err(|_| Bad("key is not standard base64"))?;
        let (&alg, pk) = raw.split_first().ok_or(Bad("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(KeyError::UnsupportedAlgorithm(alg));
        }
        let pk: [u8; 32] = pk
            .try_into()
            .map_err(|_| Bad("Ed25519 public key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| Bad("not an Ed25519 public key"))?;
        let computed = ed25519_key_id(name, &pk);
        if computed != written {
            return Err(KeyError::KeyIdMismatch { written, computed });
        }
        Ok(Verifier {
            name: name.to_owned(),
            key_id: computed,
            key,
        })
    }

    /// The verifier key text `<name>+<hex id>+<base64(0x01 || key)>`.
    pub fn to_vkey(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(raw))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `signature` (64 bytes, without the key ID) is this key's
    /// signature of `msg` (strict RFC 8032 verification).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = EdSignature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }
}

/// An Ed25519 private key with its note name: signs notes.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "Signer({}+{:08x})", self.name, self.key_id)
    }
}

impl Signer {
    /// A fresh random key named `name`.
    pub fn generate(name: &str) -> Result<Signer, KeyError> {
        Signer::from_seed(name, &rand::random::<[u8; 32]>())
    }

    /// The key with the 32-byte Ed25519 `seed` (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Signer, KeyError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = ed25519_key_id(name, key.verifying_key().as_bytes());
        Ok(Signer {
            name: name.to_owned(),
            key_id,
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`; the key
    /// ID must match the name and the public key derived from the seed.
    pub fn from_skey(skey: &str) -> Result<Signer, KeyError> {
        use KeyError::MalformedSignerKey as Bad;
        let rest = skey
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(Bad("missing PRIVATE+KEY+ prefix"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Bad("expected PRIVATE+KEY+<name>+<key id>+<key>"));
        };
        check_name(name)?;
        let written = parse_key_id(id).ok_or(Bad("key ID is not 8 lowercase hex digits"))?;
        let raw = STANDARD
            .decode(key)
            .map_err(|_| Bad("key is not standard base64"))?;
        let (&alg, seed) = raw.split_first().ok_or(Bad("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(KeyError::UnsupportedAlgorithm(alg));
        }
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Bad("Ed25519 seed is not 32 bytes"))?;
        let signer = Signer::from_seed(name, &seed)?;
        if signer.key_id != written {
            return Err(KeyError::KeyIdMismatch {
                written,
                computed: signer.key_id,
            });
        }
        Ok(signer)
    }

    /// The signer key text `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    /// This is the secret: store it like one.
    pub fn to_skey(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(raw)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The 64-byte Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID (first four bytes of the decoded signature).
    pub key_id: u32,
    /// The signature proper (the decoded bytes after the key ID).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, `— <name> <base64(key ID || signature)>\n`.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{EM_DASH_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }

    fn parse_line(line: &str) -> Result<NoteSignature, NoteError> {
        let rest = line
            .strip_prefix(EM_DASH_PREFIX)
            .ok_or(NoteError::Malformed(
                "signature line does not start with an em dash and a space",
            ))?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "signature line is not '— <name> <signature>'",
        ))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::Malformed("invalid key name in a signature line"));
        }
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::Malformed("signature is not standard base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("signature is too short"));
        }
        Ok(NoteSignature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            signature: raw[4..].to_vec(),
        })
    }

    fn key_label(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_id)
    }
}

/// A note: its text and its signatures, verified or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// The signatures, in order.
    pub signatures: Vec<NoteSignature>,
}

/// A note whose signatures were checked by [`Note::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Signatures by known keys, each verified (duplicates removed).
    pub verified: Vec<NoteSignature>,
    /// Signatures by keys the verifier does not know (not checked;
    /// duplicates removed).
    pub unverified: Vec<NoteSignature>,
}

/// Checks that `text` may be the text of a note: non-empty, ending in a
/// newline, and free of control characters other than newline.
pub fn check_note_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("note text does not end in a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed(
            "note text contains control characters",
        ));
    }
    Ok(())
}

impl Note {
    /// Parses a signed note without verifying it.
    pub fn parse(msg: &[u8]) -> Result<Note, NoteError> {
        if msg.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed("note is too large"));
        }
        let msg =
            std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("note is not UTF-8"))?;
        if msg.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("note contains control characters"));
        }
        let split = msg.rfind("\n\n").ok_or(NoteError::Malformed(
            "no blank line between text and signatures",
        ))?;
        let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
        if sigs.is_empty() {
            return Err(NoteError::Malformed("note has no signatures"));
        }
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(NoteError::Malformed(
                "last signature line does not end in a newline",
            ));
        };
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            signatures.push(NoteSignature::parse_line(line)?);
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Parses `msg` and verifies it against `known` keys, following the
    /// spec: signatures by unknown keys (name and ID not both matching a
    /// known key) are ignored and listed as unverified; a signature by a
    /// known key that fails rejects the whole note
    /// ([`NoteError::BadSignature`]); at least one signature by a known key
    /// is required ([`NoteError::UnknownKey`]).
    pub fn open(msg: &[u8], known: &[Verifier]) -> Result<VerifiedNote, NoteError> {
        Note::parse(msg)?.verify(known)
    }

    /// Verifies this parsed note (see [`Note::open`]).
    pub fn verify(self, known: &[Verifier]) -> Result<VerifiedNote, NoteError> {
        let mut verified: Vec<NoteSignature> = Vec::new();
        let mut unverified: Vec<NoteSignature> = Vec::new();
        for sig in &self.signatures {
            let mut matching = known
                .iter()
                .filter(|v| v.name == sig.name && v.key_id == sig.key_id);
            let Some(v) = matching.next() else {
                if !unverified.contains(sig) {
                    unverified.push(sig.clone());
                }
                continue;
            };
            if matching.any(|other| other.key != v.key) {
                return Err(NoteError::AmbiguousKey {
                    name: sig.name.clone(),
                    key_id: sig.key_id,
                });
            }
            if !v.verify(self.text.as_bytes(), &sig.signature) {
                return Err(NoteError::BadSignature {
                    name: sig.name.clone(),
                    key_id: sig.key_id,
                });
            }
            if !verified.contains(sig) {
                verified.push(sig.clone());
            }
        }
        if verified.is_empty() {
            return Err(NoteError::UnknownKey {
                signers: self
                    .signatures
                    .iter()
                    .map(NoteSignature::key_label)
                    .collect(),
            });
        }
        Ok(VerifiedNote {
            text: self.text,
            verified,
            unverified,
        })
    }

    /// A note with `text` and no signatures yet (checked with
    /// [`check_note_text`]).
    pub fn new(text: &str) -> Result<Note, NoteError> {
        check_note_text(text)?;
        Ok(Note {
            text: text.to_owned(),
            signatures: Vec::new(),
        })
    }

    /// Adds the signatures of `signers`, replacing any earlier signature by
    /// the same key (name and ID). Existing signatures by other keys (such
    /// as witness cosignatures) are kept.
    pub fn sign(&mut self, signers: &[&Signer]) -> Result<(), NoteError> {
        check_note_text(&self.text)?;
        for s in signers {
            self.signatures
                .retain(|sig| !(sig.name == s.name && sig.key_id == s.key_id));
            self.signatures.push(NoteSignature {
                name: s.name.clone(),
                key_id: s.key_id,
                signature: s.sign(self.text.as_bytes()).to_vec(),
            });
        }
        Ok(())
    }

    /// The note in its wire form: text, blank line, signature lines. Errors
    /// if it has no signatures or its text or a key name is invalid.
    pub fn to_text(&self) -> Result<String, NoteError> {
        check_note_text(&self.text)?;
        if self.signatures.is_empty() {
            return Err(NoteError::Malformed("note has no signatures"));
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let mut out = String::with_capacity(self.text.len() + 1 + 110 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for sig in &self.signatures {
            if !is_valid_key_name(&sig.name) {
                return Err(NoteError::Malformed("invalid key name in a signature"));
            }
            out.push_str(&sig.to_line());
        }
        Ok(out)
    }
}

/// Signs `text` with every signer and returns the signed note in wire form.
pub fn sign_note(text: &str, signers: &[&Signer]) -> Result<String, NoteError> {
    let mut note = Note::new(text)?;
    note.sign(signers)?;
    note.to_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_sign() {
        let s = Signer::generate("tally.example/log").unwrap();
        let v = Verifier::from_vkey(&s.verifier().to_vkey()).unwrap();
        assert_eq!(v, s.verifier());
        let s2 = Signer::from_skey(&s.to_skey()).unwrap();
        assert_eq!(s2.to_skey(), s.to_skey());
        let msg = sign_note("hello\n", &[&s]).unwrap();
        let n = Note::open(msg.as_bytes(), &[v]).unwrap();
        assert_eq!(n.text, "hello\n");
        assert_eq!(n.verified.len(), 1);
        assert!(format!("{s:?}").starts_with("Signer(tally.example/log+"));
    }

    #[test]
    fn names() {
        assert!(is_valid_key_name("a"));
        assert!(is_valid_key_name("example.com/log"));
        for bad in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\u{a0}b",
            "a\u{2003}b",
            "a\nb",
            "a\u{7f}",
        ] {
            assert!(!is_valid_key_name(bad), "{bad:?}");
            assert!(Signer::generate(bad).is_err());
        }
    }
}
