//! Block metadata: what a block (or a write-ahead-log chunk) holds, so that a
//! query can skip blocks that cannot match.

use crate::record::NewRecord;
use serde::{Deserialize, Serialize};

/// Bits in the per-block instance Bloom filter.
const BLOOM_BITS: usize = 2048;
const BLOOM_WORDS: usize = BLOOM_BITS / 64;

/// Summary of one block of records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Byte offset of the block in its file (of its header, for sealed blocks).
    pub offset: u64,
    /// Bytes of the block in its file.
    pub len: u32,
    /// First and last record positions.
    pub first_seq: u64,
    /// Last record position (inclusive).
    pub last_seq: u64,
    /// Number of records.
    pub count: u32,
    /// Smallest record time.
    pub min_time: i64,
    /// Largest record time.
    pub max_time: i64,
    /// Uncompressed bytes of the frames.
    pub raw_bytes: u64,
    /// Distinct collections in the block.
    pub collections: Vec<String>,
    /// Bloom filter over instance IDs.
    pub bloom: Vec<u64>,
    /// Earliest time at which a record of the block expires (Unix ns), if any.
    #[serde(default)]
    pub earliest_expiry: Option<i64>,
    /// Distinct owners of the block's records (tailnet IDs, `""` for
    /// unclaimed); `None` when the block holds legacy records (written
    /// before owners were recorded) and so may hold any.
    #[serde(default)]
    pub tailnets: Option<Vec<String>>,
}

fn bloom_positions(instance: &[u8; 32]) -> [usize; 3] {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&instance[i * 8..i * 8 + 8]);
        // Mix so that non-random IDs spread too.
        (u64::from_le_bytes(b).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % BLOOM_BITS
    };
    [word(0), word(1), word(2)]
}

impl BlockMeta {
    /// An empty block starting at `offset`.
    pub fn new(offset: u64) -> Self {
        Self {
            offset,
            len: 0,
            first_seq: 0,
            last_seq: 0,
            count: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            raw_bytes: 0,
            collections: Vec::new(),
            bloom: vec![0; BLOOM_WORDS],
            earliest_expiry: None,
            tailnets: Some(Vec::new()),
        }
    }

    /// Accounts one record of `frame_len` bytes at position `seq`.
    pub fn add(&mut self, seq: u64, rec: &NewRecord, frame_len: usize) {
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.count += 1;
        self.min_time = self.min_time.min(rec.time);
        self.max_time = self.max_time.max(rec.time);
        self.raw_bytes += frame_len as u64;
        if !self.collections.contains(&rec.collection) {
            self.collections.push(rec.collection.clone());
        }
        for p in bloom_positions(&rec.instance) {
            self.bloom[p / 64] |= 1 << (p % 64);
        }
        match (rec.owner.as_ref().key(), &mut self.tailnets) {
            (None, t) => *t = None,
            (Some(key), Some(list)) if !list.iter().any(|t| t == key) => list.push(key.to_owned()),
            _ => {}
        }
    }

    /// True if the block may hold records owned by `key` (a tailnet ID,
    /// `""` for unclaimed records).
    pub fn may_contain_owner(&self, key: &str) -> bool {
        self.tailnets
            .as_ref()
            .is_none_or(|list| list.iter().any(|t| t == key))
    }

    /// Notes that a record of the block expires at `t`.
    pub fn note_expiry(&mut self, t: Option<i64>) {
        if let Some(t) = t {
            self.earliest_expiry = Some(self.earliest_expiry.map_or(t, |e| e.min(t)));
        }
    }

    /// True if the block may hold a record of `instance`.
    pub fn may_contain_instance(&self, instance: &[u8; 32]) -> bool {
        self.bloom.len() != BLOOM_WORDS
            || bloom_positions(instance)
                .iter()
                .all(|p| self.bloom[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// What a scan looks for. Empty sets mean "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these collections.
    pub collections: Vec<String>,
    /// Only these instances.
    pub instances: Vec<[u8; 32]>,
    /// Only records with `time >= time_start`.
    pub time_start: Option<i64>,
    /// Only records with `time <= time_end`.
    pub time_end: Option<i64>,
    /// Only records of these kinds (see `kind`).
    pub kinds: Vec<u8>,
    /// Only records owned by this tailnet (`""`: unclaimed records).
    /// Legacy records never match a filter with an owner.
    pub owner: Option<String>,
}

impl Filter {
    /// True if a block with this summary may hold a matching record.
    pub fn may_match(&self, b: &BlockMeta) -> bool {
        if b.count == 0 {
            return false;
        }
        if self.time_start.is_some_and(|t| b.max_time < t)
            || self.time_end.is_some_and(|t| b.min_time > t)
        {
            return false;
        }
        if !self.collections.is_empty()
            && !self.collections.iter().any(|c| b.collections.contains(c))
        {
            return false;
        }
        if self.owner.as_ref().is_some_and(|o| !b.may_contain_owner(o)) {
            return false;
        }
        self.instances.is_empty() || self.instances.iter().any(|i| b.may_contain_instance(i))
    }

    /// True if the record matches.
    pub fn matches(&self, r: &NewRecord) -> bool {
        self.time_start.is_none_or(|t| r.time >= t)
            && self.time_end.is_none_or(|t| r.time <= t)
            && (self.collections.is_empty() || self.collections.contains(&r.collection))
            && (self.instances.is_empty() || self.instances.contains(&r.instance))
            && (self.kinds.is_empty() || self.kinds.contains(&r.kind))
            && self
                .owner
                .as_deref()
                .is_none_or(|o| r.owner.as_ref().key() == Some(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::kind;

    fn rec(inst: u8, time: i64, coll: &str) -> NewRecord {
        NewRecord {
            time,
            collection: coll.into(),
            owner: crate::record::Owner::tailnet(format!("T{}", inst % 2)),
            instance: [inst; 32],
            identity: None,
            client_time: None,
            kind: kind::LOG,
            body: vec![],
        }
    }

    #[test]
    fn filters_skip_blocks_that_cannot_match() {
        let mut b = BlockMeta::new(0);
        for i in 0..50u8 {
            b.add(u64::from(i) + 1, &rec(i, 100 + i64::from(i), "a"), 10);
        }
        assert!(Filter::default().may_match(&b));
        assert!(
            !Filter {
                time_start: Some(200),
                ..Default::default()
            }
            .may_match(&b)
        );
        assert!(
            !Filter {
                time_end: Some(99),
                ..Default::default()
            }
            .may_match(&b)
        );
        assert!(
            !Filter {
                collections: vec!["b".into()],
                ..Default::default()
            }
            .may_match(&b)
        );
        assert!(
            Filter {
                instances: vec![[3; 32]],
                ..Default::default()
            }
            .may_match(&b)
        );
        // With 50 of 2048 bits x3 set, most absent instances are excluded.
        let excluded = (100..=255u8)
            .filter(|i| {
                !Filter {
                    instances: vec![[*i; 32]],
                    ..Default::default()
                }
                .may_match(&b)
            })
            .count();
        assert!(excluded > 120, "bloom excluded only {excluded} of 156");
        let owned_by = |o: &str| Filter {
            owner: Some(o.into()),
            ..Default::default()
        };
        assert!(owned_by("T0").may_match(&b) && owned_by("T1").may_match(&b));
        assert!(!owned_by("T2").may_match(&b) && !owned_by("").may_match(&b));
        // A legacy record makes the block a candidate for every owner.
        let mut legacy = rec(1, 100, "a");
        legacy.owner = crate::record::Owner::Legacy;
        b.add(51, &legacy, 10);
        assert!(owned_by("T2").may_match(&b) && owned_by("").may_match(&b));
        assert!(!owned_by("T2").matches(&legacy));
    }
}
