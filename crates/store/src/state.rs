//! Ingest state derived from the log: the client identities already stored
//! (to drop retried duplicates) and recent bytes per instance (for quotas).
//!
//! The state is a pure function of the records: it is rebuilt on start from
//! the last snapshot plus the records after it.

use crate::record::NewRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How long a client identity is remembered after it was last seen.
pub const DEDUP_WINDOW_NANOS: i64 = 24 * 3600 * 1_000_000_000;
/// The window of [`IngestState::recent_bytes`].
pub const RECENT_WINDOW_NANOS: i64 = 12 * 3600 * 1_000_000_000;
const HOUR: i64 = 3600 * 1_000_000_000;
/// Most identity keys kept; past that the least recently seen are forgotten.
const MAX_DEDUP_KEYS: usize = 1_000_000;
/// Most disjoint ranges kept per key; past that the oldest ranges are forgotten.
const MAX_RANGES: usize = 64;

type InstanceKey = (String, [u8; 32]);
type IdentityKey = (String, [u8; 32], u32);
/// (hour number, bytes) buckets of one instance.
type HourBuckets = Vec<(i64, u64)>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SeenRanges {
    /// Sorted, disjoint, inclusive ranges of proc_seq.
    ranges: Vec<(u64, u64)>,
    last_seen: i64,
}

impl SeenRanges {
    fn contains(&self, n: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < n);
        self.ranges.get(i).is_some_and(|r| r.0 <= n)
    }

    fn insert(&mut self, n: u64) {
        let i = self.ranges.partition_point(|r| r.1.saturating_add(1) < n);
        match self.ranges.get_mut(i) {
            Some(r) if r.0 <= n.saturating_add(1) => {
                r.0 = r.0.min(n);
                r.1 = r.1.max(n);
                // Merge with the next range if they now touch.
                if let Some(&next) = self.ranges.get(i + 1)
                    && next.0 <= self.ranges[i].1.saturating_add(1)
                {
                    self.ranges[i].1 = self.ranges[i].1.max(next.1);
                    self.ranges.remove(i + 1);
                }
            }
            _ => {
                self.ranges.insert(i, (n, n));
                if self.ranges.len() > MAX_RANGES {
                    self.ranges.remove(0);
                }
            }
        }
    }
}

/// Identities and byte counters derived from every record before `next_seq`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IngestState {
    /// The state accounts for every record with a smaller position.
    pub next_seq: u64,
    seen: Vec<(IdentityKey, SeenRanges)>,
    recent: Vec<(InstanceKey, HourBuckets)>,
    /// Bytes per owner (tailnet ID, `""` for unclaimed) and hour.
    #[serde(default)]
    owners: HashMap<String, HourBuckets>,
    #[serde(skip)]
    live: Live,
}

/// Maps keyed by collection first, so lookups by `&str` need no allocation.
#[derive(Debug, Clone, Default)]
struct Live {
    seen: HashMap<String, HashMap<([u8; 32], u32), SeenRanges>>,
    /// Per instance: (hour number, bytes) for the last 12 hours.
    recent: HashMap<String, HashMap<[u8; 32], HourBuckets>>,
}

impl IngestState {
    /// True if a record with this identity is already stored.
    pub fn is_duplicate(&self, rec: &NewRecord) -> bool {
        let Some((pid, pseq)) = rec.identity else {
            return false;
        };
        self.live
            .seen
            .get(rec.collection.as_str())
            .and_then(|m| m.get(&(rec.instance, pid)))
            .is_some_and(|s| s.contains(pseq))
    }

    /// Accounts a stored record at position `seq`.
    pub fn apply(&mut self, seq: u64, rec: &NewRecord) {
        self.next_seq = self.next_seq.max(seq + 1);
        if let Some((pid, pseq)) = rec.identity {
            let per = match self.live.seen.get_mut(rec.collection.as_str()) {
                Some(m) => m,
                None => self.live.seen.entry(rec.collection.clone()).or_default(),
            };
            let s = per.entry((rec.instance, pid)).or_default();
            s.insert(pseq);
            s.last_seen = s.last_seen.max(rec.time);
        }
        let hour = rec.time.div_euclid(HOUR);
        if let Some(key) = rec.owner.as_ref().key() {
            let buckets = match self.owners.get_mut(key) {
                Some(b) => b,
                None => self.owners.entry(key.to_owned()).or_default(),
            };
            add_to_hour(buckets, hour, rec.body.len() as u64);
        }
        let per = match self.live.recent.get_mut(rec.collection.as_str()) {
            Some(m) => m,
            None => self.live.recent.entry(rec.collection.clone()).or_default(),
        };
        add_to_hour(
            per.entry(rec.instance).or_default(),
            hour,
            rec.body.len() as u64,
        );
    }

    /// Body bytes stored for an owner (a tailnet ID, `""` for unclaimed
    /// records) during the last 12 hours.
    pub fn recent_owner_bytes(&self, owner: &str, now: i64) -> u64 {
        self.owners.get(owner).map_or(0, |b| sum_recent(b, now))
    }

    /// Bytes stored for `(collection, instance)` during the last 12 hours.
    pub fn recent_bytes(&self, collection: &str, instance: &[u8; 32], now: i64) -> u64 {
        self.live
            .recent
            .get(collection)
            .and_then(|m| m.get(instance))
            .map_or(0, |b| sum_recent(b, now))
    }

    /// Forgets identities not seen for a day and counters past their window.
    pub fn prune(&mut self, now: i64) {
        let mut cut = now - DEDUP_WINDOW_NANOS;
        let keys: usize = self.live.seen.values().map(HashMap::len).sum();
        if keys > MAX_DEDUP_KEYS {
            let mut times: Vec<i64> = self
                .live
                .seen
                .values()
                .flat_map(|m| m.values().map(|s| s.last_seen))
                .collect();
            times.sort_unstable();
            cut = cut.max(times[times.len() - MAX_DEDUP_KEYS]);
        }
        for m in self.live.seen.values_mut() {
            m.retain(|_, s| s.last_seen >= cut);
        }
        self.live.seen.retain(|_, m| !m.is_empty());
        let oldest = (now - RECENT_WINDOW_NANOS).div_euclid(HOUR);
        for m in self.live.recent.values_mut() {
            m.retain(|_, b| {
                b.retain(|(h, _)| *h >= oldest);
                !b.is_empty()
            });
        }
        self.live.recent.retain(|_, m| !m.is_empty());
        self.owners.retain(|_, b| {
            b.retain(|(h, _)| *h >= oldest);
            !b.is_empty()
        });
    }

    /// Serializes the state (for a snapshot file).
    pub fn to_bytes(&self) -> Vec<u8> {
        let seen = self
            .live
            .seen
            .iter()
            .flat_map(|(c, m)| {
                m.iter()
                    .map(move |((i, p), v)| ((c.clone(), *i, *p), v.clone()))
            })
            .collect();
        let recent = self
            .live
            .recent
            .iter()
            .flat_map(|(c, m)| m.iter().map(move |(i, v)| ((c.clone(), *i), v.clone())))
            .collect();
        let snap = IngestState {
            next_seq: self.next_seq,
            seen,
            recent,
            owners: self.owners.clone(),
            live: Live::default(),
        };
        serde_json::to_vec(&snap).unwrap_or_default()
    }

    /// Reads a snapshot written by [`IngestState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut s: IngestState = serde_json::from_slice(bytes).ok()?;
        for ((c, i, p), v) in std::mem::take(&mut s.seen) {
            s.live.seen.entry(c).or_default().insert((i, p), v);
        }
        for ((c, i), v) in std::mem::take(&mut s.recent) {
            s.live.recent.entry(c).or_default().insert(i, v);
        }
        Some(s)
    }
}

/// Adds `bytes` to the bucket of `hour`, keeping the last 13 hours.
fn add_to_hour(buckets: &mut HourBuckets, hour: i64, bytes: u64) {
    match buckets.last_mut() {
        Some((h, b)) if *h == hour => *b += bytes,
        _ => buckets.push((hour, bytes)),
    }
    if buckets.len() > 13 {
        buckets.remove(0);
    }
}

/// Sum of the buckets of the last 12 hours before `now`.
fn sum_recent(buckets: &HourBuckets, now: i64) -> u64 {
    let oldest = (now - RECENT_WINDOW_NANOS).div_euclid(HOUR);
    buckets
        .iter()
        .filter(|(h, _)| *h >= oldest)
        .map(|(_, n)| n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::kind;

    fn rec(pseq: u64, time: i64) -> NewRecord {
        NewRecord {
            time,
            collection: "c".into(),
            owner: crate::record::Owner::tailnet("T1"),
            instance: [1; 32],
            identity: Some((9, pseq)),
            client_time: None,
            kind: kind::LOG,
            body: vec![0; 10],
        }
    }

    #[test]
    fn ranges_merge_and_answer_membership() {
        let mut s = SeenRanges::default();
        for n in [5, 7, 6, 1, 2, 10] {
            s.insert(n);
        }
        assert_eq!(s.ranges, vec![(1, 2), (5, 7), (10, 10)]);
        for n in [1, 2, 5, 6, 7, 10] {
            assert!(s.contains(n));
        }
        for n in [0, 3, 4, 8, 9, 11] {
            assert!(!s.contains(n));
        }
        s.insert(3);
        s.insert(4);
        assert_eq!(s.ranges, vec![(1, 7), (10, 10)]);
    }

    #[test]
    fn duplicates_are_recognised_across_a_snapshot() {
        let mut st = IngestState::default();
        for i in 1..=100 {
            st.apply(i, &rec(i, HOUR));
        }
        let back = IngestState::from_bytes(&st.to_bytes()).unwrap();
        assert!(back.is_duplicate(&rec(50, HOUR)));
        assert!(!back.is_duplicate(&rec(101, HOUR)));
        assert_eq!(back.next_seq, 101);
        assert_eq!(back.recent_bytes("c", &[1; 32], HOUR), 1000);
        assert_eq!(back.recent_bytes("c", &[1; 32], HOUR * 14), 0);
        assert_eq!(back.recent_owner_bytes("T1", HOUR), 1000);
        assert_eq!(back.recent_owner_bytes("", HOUR), 0);
        assert_eq!(back.recent_owner_bytes("T1", HOUR * 14), 0);
    }

    #[test]
    fn prune_forgets_old_identities() {
        let mut st = IngestState::default();
        st.apply(1, &rec(1, 0));
        st.prune(DEDUP_WINDOW_NANOS + 1);
        assert!(!st.is_duplicate(&rec(1, 0)));
    }
}
