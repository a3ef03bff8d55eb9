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
