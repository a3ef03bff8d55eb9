//! Collection names: `[a-zA-Z0-9-_.]+`, as the logs-service API restricts them.

use std::fmt;

/// Longest collection name accepted (a domain name fits in 253 bytes).
pub const MAX_COLLECTION_NAME_LEN: usize = 253;

/// A validated collection name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct CollectionName(String);

/// The reason a collection name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid collection name")]
pub struct InvalidCollectionName;

impl CollectionName {
    /// Validates `name` against `[a-zA-Z0-9-_.]{1,253}`.
    pub fn parse(name: &str) -> Result<Self, InvalidCollectionName> {
        let ok = !name.is_empty()
            && name.len() <= MAX_COLLECTION_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidCollectionName)
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CollectionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Network flow logs: agents upload flow records here; the flow index and
/// reconciliation read them.
pub const FLOWS: &str = "tailtraffic";
/// Node logs: the collection agents upload their node's logs to by default.
pub const NODE_LOGS: &str = "tailnode";
/// Reconciliation findings (written by the reconciler).
pub const FINDINGS: &str = "findings";
/// Configuration audit events (copied from the control database after each
/// commit).
pub const AUDIT: &str = "tailaudit";
/// Detection alerts (written by the detection consumer).
pub const ALERTS: &str = "alerts";
/// Terminal session recordings: chunks of asciicast v2 (written by the
/// recorder).
pub const RECORDINGS: &str = "recordings";
/// The transparency log's own statements (owned by no tailnet).
pub const TRANSPARENCY: &str = "tally-log";

/// The instance (public ID) the reconciler writes findings as.
pub const FINDINGS_WRITER: [u8; 32] = [0x7a; 32];
/// The instance (public ID) the detection consumer writes alerts as.
pub const ALERTS_WRITER: [u8; 32] = [0x7b; 32];
/// The instance (public ID) the recorder writes recordings as.
pub const RECORDINGS_WRITER: [u8; 32] = [0x7c; 32];

/// Collections every tailnet has; they cannot be created or deleted.
pub const BUILTIN: [&str; 6] = [NODE_LOGS, FLOWS, FINDINGS, AUDIT, ALERTS, RECORDINGS];

/// Collections only the server writes: uploads to them are refused.
pub const SYSTEM: [&str; 5] = [FINDINGS, AUDIT, ALERTS, RECORDINGS, TRANSPARENCY];

/// True for a collection only the server writes.
pub fn is_system(name: &str) -> bool {
    SYSTEM.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_domain_like_names() {
        for ok in ["tailnode", "tailtraffic", "a.b-c_d.example.com", "X9"] {
            assert!(CollectionName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_other_characters_and_lengths() {
        let long = "a".repeat(254);
        for bad in ["", "a/b", "a b", "ü", "..%2f", long.as_str()] {
            assert_eq!(
                CollectionName::parse(bad),
                Err(InvalidCollectionName),
                "{bad}"
            );
        }
    }
}
