//! Instance identifiers of the logs-service protocol.
//!
//! A private ID is 32 random bytes known only to the node that writes logs;
//! the public ID is `SHA-256(private ID bytes)`. Both travel as lowercase hex.

use sha2::{Digest, Sha256};
use std::fmt;

/// Why a hex string is not an instance ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string does not have 64 characters.
    #[error("an instance ID is 64 hex characters, got {0} characters")]
    Length(usize),
    /// The string has a character outside `[0-9a-fA-F]`.
    #[error("an instance ID is hex ([0-9a-f]); found another character")]
    NotHex,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], IdError> {
    if s.len() != 64 {
        return Err(IdError::Length(s.chars().count()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| IdError::NotHex)?;
    Ok(out)
}

/// The secret identity of a log-writing instance. Never stored by the server,
/// never logged: its `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateId([u8; 32]);

impl PrivateId {
    /// Generates a fresh private ID with the bit clamping Tailscale applies
    /// (`id[0] &= 248; id[31] = (id[31] & 127) | 64`).
    pub fn generate() -> Self {
        let mut b: [u8; 32] = rand::random();
        b[0] &= 248;
        b[31] = (b[31] & 127) | 64;
        Self(b)
    }

    /// Parses the 64-character hex form.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        parse_hex32(s).map(Self)
    }

    /// The public ID derived from this private ID.
    pub fn public(&self) -> PublicId {
        PublicId(Sha256::digest(self.0).into())
    }

    /// The hex form, for the node's own config file and upload URLs only.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl Drop for PrivateId {
    /// Wipes the secret bytes from memory.
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl fmt::Debug for PrivateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateId(<redacted>)")
    }
}

/// The public identity of an instance: what the server stores and shows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicId(pub [u8; 32]);

impl PublicId {
    /// Parses the 64-character hex form.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        parse_hex32(s).map(Self)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicId({})", self.to_hex())
    }
}

impl serde::Serialize for PublicId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for PublicId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_id_is_sha256_of_private_bytes() {
        let private = PrivateId::parse(&"00".repeat(32)).unwrap();
        // SHA-256 of 32 zero bytes.
        assert_eq!(
            private.public().to_hex(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    #[test]
    fn generated_ids_are_clamped_and_distinct() {
        let a = PrivateId::generate();
        let b = PrivateId::generate();
        assert_ne!(a, b);
        let bytes = hex::decode(a.to_hex()).unwrap();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0xc0, 0x40);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(PrivateId::parse("abc"), Err(IdError::Length(3)));
        assert_eq!(PublicId::parse(&"zz".repeat(32)), Err(IdError::NotHex));
        assert!(!format!("{:?}", PrivateId::generate()).contains(|c: char| c.is_ascii_digit()));
    }
}
