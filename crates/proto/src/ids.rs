//! Instance identifiers of the logs-service protocol.
//!
//! A private ID is 32 random bytes known only to the node that writes logs,
//! clamped as Tailscale's logtail does (`id[0] &= 248; id[31] = (id[31] &
//! 127) | 64`); the public ID is `SHA-256(private ID bytes)`. Both travel as
//! lower-case hex; [`PrivateId::parse`] accepts nothing else.

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
    /// A private ID that does not have 64 characters.
    #[error("private ID must be 64 lower-case hex digits (got {0} characters)")]
    PrivateLength(usize),
    /// A private ID with upper-case hex digits.
    #[error("private ID must be 64 lower-case hex digits (found upper-case A-F)")]
    PrivateUpperCase,
    /// A private ID with a character that is not a hex digit.
    #[error("private ID must be 64 lower-case hex digits (found a character outside 0-9 a-f)")]
    PrivateNotHex,
    /// A private ID whose bytes break the logtail clamping rule.
    #[error(
        "private ID is not clamped: byte 0 must have its low 3 bits clear and byte 31 must be 0b01xxxxxx ({0} is not)"
    )]
    NotClamped(&'static str),
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

    /// Parses the 64-character lower-case hex form, refusing IDs that break
    /// the clamping rule of [`PrivateId::generate`]. The errors never repeat
    /// the input (it is a secret).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() != 64 {
            return Err(IdError::PrivateLength(s.chars().count()));
        }
        if let Some(b) = s.bytes().find(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(if matches!(b, b'A'..=b'F') {
                IdError::PrivateUpperCase
            } else {
                IdError::PrivateNotHex
            });
        }
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| IdError::PrivateNotHex)?;
        let id = Self(b);
        if id.0[0] & 7 != 0 {
            return Err(IdError::NotClamped("byte 0"));
        }
        if id.0[31] & 0xc0 != 0x40 {
            return Err(IdError::NotClamped("byte 31"));
        }
        Ok(id)
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
        let private = PrivateId::parse(&format!("{}40", "00".repeat(31))).unwrap();
        // SHA-256 of 31 zero bytes and 0x40.
        assert_eq!(
            private.public().to_hex(),
            "d9ece2cd2214f52c55dcd9bca56a900ec79c1343f12df8a60f0298d255896b61"
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
        assert_eq!(PublicId::parse("abc"), Err(IdError::Length(3)));
        assert_eq!(PublicId::parse(&"zz".repeat(32)), Err(IdError::NotHex));
        assert!(!format!("{:?}", PrivateId::generate()).contains(|c: char| c.is_ascii_digit()));
    }

    /// A clamped ID: byte 0 = 0xa8 (low bits clear), byte 31 = 0x7f (0b01...).
    fn valid_hex() -> String {
        format!("a8{}7f", "5c".repeat(30))
    }

    #[test]
    fn private_id_parser_accepts_clamped_lower_case_hex_only() {
        let ok = valid_hex();
        let id = PrivateId::parse(&ok).unwrap();
        assert_eq!(id.to_hex(), ok);
        for _ in 0..100 {
            let g = PrivateId::generate();
            assert_eq!(PrivateId::parse(&g.to_hex()).as_ref(), Ok(&g));
        }
        let lower_bound = format!("00{}40", "00".repeat(30));
        assert!(PrivateId::parse(&lower_bound).is_ok());

        let cases: [(String, IdError, &str); 8] = [
            (
                ok.to_uppercase(),
                IdError::PrivateUpperCase,
                "64 lower-case hex digits",
            ),
            (
                format!("A8{}", &ok[2..]),
                IdError::PrivateUpperCase,
                "upper-case",
            ),
            (
                format!("a9{}", &ok[2..]),
                IdError::NotClamped("byte 0"),
                "byte 0 must have its low 3 bits clear",
            ),
            (
                format!("ac{}", &ok[2..]),
                IdError::NotClamped("byte 0"),
                "not clamped",
            ),
            (
                format!("{}bf", &ok[..62]),
                IdError::NotClamped("byte 31"),
                "byte 31 must be 0b01xxxxxx",
            ),
            (
                format!("{}3f", &ok[..62]),
                IdError::NotClamped("byte 31"),
                "(byte 31 is not)",
            ),
            (
                ok[..62].to_owned(),
                IdError::PrivateLength(62),
                "64 lower-case hex digits (got 62",
            ),
            (
                format!("{}zz", &ok[..62]),
                IdError::PrivateNotHex,
                "outside 0-9 a-f",
            ),
        ];
        for (input, want, says) in cases {
            let err = PrivateId::parse(&input).unwrap_err();
            assert_eq!(err, want, "{input}");
            let msg = err.to_string();
            assert!(msg.contains(says), "{msg}");
            assert!(!msg.contains(&input), "the secret is not echoed: {msg}");
        }
        assert_eq!(
            PrivateId::parse(&format!("{}\n", &ok[..63])),
            Err(IdError::PrivateNotHex)
        );
        assert_eq!(
            PrivateId::parse(&format!("{ok}0")),
            Err(IdError::PrivateLength(65))
        );
        // A multi-byte character: 64 bytes, but not hex.
        assert_eq!(
            PrivateId::parse(&format!("é{}", &ok[2..])),
            Err(IdError::PrivateNotHex)
        );
    }
}
