//! The 32-byte SHA-256 value used for leaves, tree nodes, roots and batch
//! hashes, with its text encodings.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// A SHA-256 hash: a Merkle leaf hash, an interior node, a root, or the
/// hash of an upload batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

/// Why a text form of a [`Hash`](struct@Hash) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashParseError {
    /// Not exactly 64 lowercase hexadecimal digits.
    #[error("hash is not 64 lowercase hex digits")]
    Hex,
    /// Not the canonical padded standard base64 of 32 bytes (44 characters).
    #[error("hash is not the standard padded base64 of 32 bytes")]
    Base64,
}

impl Hash {
    /// All zero bytes: the "previous hash" of the first batch of a chain.
    pub const ZERO: Hash = Hash([0; 32]);

    /// SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> Hash {
        Hash(Sha256::digest(data).into())
    }

    /// The hash in `bytes` if it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; 32]>::try_from(bytes).ok().map(Hash)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 lowercase hex digits (the form [`Hash::to_hex`]
    /// writes; uppercase is rejected so that every hash has one spelling).
    pub fn from_hex(text: &str) -> Result<Hash, HashParseError> {
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(HashParseError::Hex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| HashParseError::Hex)?;
        Ok(Hash(out))
    }

    /// Standard padded base64 (RFC 4648 section 4), 44 characters, as used
    /// in checkpoints.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses the canonical standard padded base64 of 32 bytes.
    pub fn from_base64(text: &str) -> Result<Hash, HashParseError> {
        if text.len() != 44 {
            return Err(HashParseError::Base64);
        }
        let bytes = STANDARD.decode(text).map_err(|_| HashParseError::Base64)?;
        Hash::from_slice(&bytes).ok_or(HashParseError::Base64)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<[u8; 32]> for Hash {
    fn from(bytes: [u8; 32]) -> Hash {
        Hash(bytes)
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let h = Hash::sha256(b"hello world");
        assert_eq!(Hash::from_hex(&h.to_hex()), Ok(h));
        assert_eq!(Hash::from_base64(&h.to_base64()), Ok(h));
    }

    #[test]
    fn garbage_is_rejected() {
        let h = Hash::sha256(b"x");
        let hx = h.to_hex();
        assert!(Hash::from_hex(&hx.to_uppercase()).is_err());
        assert!(Hash::from_hex(&hx[1..]).is_err());
        assert!(Hash::from_hex(&format!("{hx}0")).is_err());
        assert!(Hash::from_hex("").is_err());
        assert!(Hash::from_hex(&"g".repeat(64)).is_err());
        assert!(Hash::from_hex(&"é".repeat(32)).is_err());
        let b = h.to_base64();
        assert!(Hash::from_base64(&b[..43]).is_err());
        assert!(Hash::from_base64(&b.replace('=', "A")).is_err());
        assert!(Hash::from_base64(&"=".repeat(44)).is_err());
        // 33 bytes of base64 is 44 characters too, but not a hash.
        assert!(Hash::from_base64(&STANDARD.encode([1u8; 33])).is_err());
        assert!(Hash::from_base64(&"é".repeat(22)).is_err());
    }
}
