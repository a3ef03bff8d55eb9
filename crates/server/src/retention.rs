//! Retention rules: how long the store keeps each entry.
//!
//! Entries of an adopted instance follow their collection's retention;
//! entries of instances nobody adopted are kept 12 hours; entries of a
//! deleted collection (or of an earlier collection with the same name) expire
//! at once.

use crate::control::collections::CollectionRow;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_store::RetentionPolicy;

/// How long entries of unadopted instances are kept.
pub const UNADOPTED_RETENTION_NANOS: i64 = 12 * 3600 * 1_000_000_000;
const DAY_NANOS: i64 = 24 * 3600 * 1_000_000_000;

struct Rule {
    created: i64,
    retention: i64,
    adopted: HashSet<[u8; 32]>,
}

/// The retention rules derived from the catalog; the store asks them.
#[derive(Default)]
pub struct RetentionRules {
    rules: RwLock<HashMap<String, Rule>>,
}

impl RetentionRules {
    /// Replaces the rules with those of `collections`.
    pub fn replace(&self, collections: &BTreeMap<String, CollectionRow>) {
        let rules = collections
            .iter()
            .map(|(name, c)| {
                let rule = Rule {
                    created: c.created,
                    retention: i64::from(c.retention_days) * DAY_NANOS,
                    adopted: c.adopted.iter().map(|p| p.0).collect(),
                };
                (name.clone(), rule)
            })
            .collect();
        *self.rules.write() = rules;
    }
}

impl RetentionPolicy for RetentionRules {
    fn expires_at(&self, collection: &str, instance: &[u8; 32], time: i64) -> Option<i64> {
        let rules = self.rules.read();
        let Some(rule) = rules.get(collection) else {
            return Some(i64::MIN);
        };
        if time < rule.created {
            return Some(i64::MIN);
        }
        let keep = if rule.adopted.contains(instance) {
            rule.retention
        } else {
            UNADOPTED_RETENTION_NANOS
        };
        Some(time.saturating_add(keep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tally_proto::PublicId;

    #[test]
    fn adopted_unadopted_and_deleted_collections_expire_as_specified() {
        let rules = RetentionRules::default();
        let adopted = PublicId([1; 32]);
        let mut cols = BTreeMap::new();
        cols.insert(
            "logs".to_owned(),
            CollectionRow {
                tailnet_id: "T1".into(),
                created: 1_000,
                retention_days: 30,
                own_retention_days: Some(30),
                adopted: BTreeSet::from([adopted]),
            },
        );
        rules.replace(&cols);
        let t = 10_000;
        assert_eq!(
            rules.expires_at("logs", &adopted.0, t),
            Some(t + 30 * DAY_NANOS)
        );
        assert_eq!(
            rules.expires_at("logs", &[2; 32], t),
            Some(t + UNADOPTED_RETENTION_NANOS)
        );
        // Entries older than the collection belong to a deleted predecessor.
        assert_eq!(rules.expires_at("logs", &adopted.0, 999), Some(i64::MIN));
        assert_eq!(rules.expires_at("gone", &adopted.0, t), Some(i64::MIN));
    }
}
