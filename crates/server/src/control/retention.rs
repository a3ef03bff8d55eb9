//! Retention rules: how long the store keeps each entry.
//!
//! Entries of a tailnet follow its collection's retention; unclaimed
//! entries (of instances no tailnet registered or adopted) are kept 12
//! hours; entries of a deleted collection (or of an earlier collection with
//! the same name) or of a deleted tailnet expire at once.

use crate::control::collections::Collections;
use parking_lot::RwLock;
use std::collections::HashMap;
use tally_store::{RetentionPolicy, Tenant};

/// How long unclaimed entries are kept.
pub const UNADOPTED_RETENTION_NANOS: i64 = 12 * 3600 * 1_000_000_000;
const DAY_NANOS: i64 = 24 * 3600 * 1_000_000_000;

struct Rule {
    created: i64,
    retention: i64,
}

/// The retention rules derived from the catalog; the store asks them.
#[derive(Default)]
pub struct RetentionRules {
    /// By tailnet, then collection name.
    rules: RwLock<HashMap<String, HashMap<String, Rule>>>,
}

impl RetentionRules {
    /// Replaces the rules with those of `collections`.
    pub fn replace(&self, collections: &Collections) {
        let mut rules: HashMap<String, HashMap<String, Rule>> = HashMap::new();
        for ((tailnet, name), c) in collections {
            rules.entry(tailnet.clone()).or_default().insert(
                name.clone(),
                Rule {
                    created: c.created,
                    retention: i64::from(c.retention_days) * DAY_NANOS,
                },
            );
        }
        *self.rules.write() = rules;
    }
}

impl RetentionPolicy for RetentionRules {
    fn expires_at(
        &self,
        owner: Tenant<'_>,
        collection: &str,
        _instance: &[u8; 32],
        time: i64,
    ) -> Option<i64> {
        let tailnet = match owner {
            Tenant::Unclaimed => return Some(time.saturating_add(UNADOPTED_RETENTION_NANOS)),
            // Given an owner when the server starts; kept until then.
            Tenant::Legacy => return None,
            Tenant::Tailnet(t) => t,
        };
        let rules = self.rules.read();
        let Some(rule) = rules.get(tailnet).and_then(|r| r.get(collection)) else {
            return Some(i64::MIN);
        };
        if time < rule.created {
            return Some(i64::MIN);
        }
        Some(time.saturating_add(rule.retention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::collections::CollectionRow;
    use std::collections::BTreeSet;

    #[test]
    fn tailnet_unclaimed_and_deleted_collections_expire_as_specified() {
        let rules = RetentionRules::default();
        let mut cols = Collections::new();
        cols.insert(
            ("T1".to_owned(), "logs".to_owned()),
            CollectionRow {
                tailnet_id: "T1".into(),
                created: 1_000,
                retention_days: 30,
                own_retention_days: Some(30),
                adopted: BTreeSet::new(),
            },
        );
        rules.replace(&cols);
        let t = 10_000;
        let i = &[1; 32];
        let t1 = Tenant::Tailnet("T1");
        assert_eq!(rules.expires_at(t1, "logs", i, t), Some(t + 30 * DAY_NANOS));
        assert_eq!(
            rules.expires_at(Tenant::Unclaimed, "logs", i, t),
            Some(t + UNADOPTED_RETENTION_NANOS)
        );
        // Another tailnet has no collection of that name: its entries go.
        assert_eq!(
            rules.expires_at(Tenant::Tailnet("T2"), "logs", i, t),
            Some(i64::MIN)
        );
        // Entries older than the collection belong to a deleted predecessor.
        assert_eq!(rules.expires_at(t1, "logs", i, 999), Some(i64::MIN));
        assert_eq!(rules.expires_at(t1, "gone", i, t), Some(i64::MIN));
        assert_eq!(rules.expires_at(Tenant::Legacy, "gone", i, t), None);
    }
}
