//! Page assembly (newest first, whole records, bounded memory) and edge
//! aggregation.

use crate::codec::IndexMap;
use crate::columns::{Columns, Compiled, Ent, Rec};
use crate::types::{EdgeBucket, FlowHit, PageCursor, RecKey};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::IpAddr;

/// Collects the hits of one page.
///
/// Records are ranked by [`RecKey`] descending. Once the records kept fill
/// the page, the key of the last one becomes the cutoff: lower-ranked
/// records cannot be on this page, so their hits are dropped (and blocks
/// and files holding only such records are skipped) and memory stays
/// within about twice the page.
pub(crate) struct Collector {
    limit: usize,
    cursor: Option<RecKey>,
    hits: Vec<FlowHit>,
    cutoff: Option<RecKey>,
    /// Something matching was left out: there is a next page.
    pub more: bool,
}

fn key_of(h: &FlowHit) -> (i64, &str, u64) {
    (h.entry.start, h.entry.node.as_str(), h.seq)
}

impl Collector {
    pub(crate) fn new(limit: usize, cursor: Option<RecKey>) -> Self {
        Self {
            limit,
            cursor,
            hits: Vec::new(),
            cutoff: None,
            more: false,
        }
    }

    /// Whether a block or file whose records start at or before `max_start`
    /// could still add to the page (and, when it could not, notes that
    /// something was left out).
    pub(crate) fn may_help(&mut self, max_start: i64) -> bool {
        let ok = self.cutoff.as_ref().is_none_or(|k| max_start >= k.start);
        if !ok {
            self.more = true;
        }
        ok
    }

    /// Whether anything starting at or after `min_start` could be after the
    /// cursor.
    pub(crate) fn before_cursor_possible(&self, min_start: i64) -> bool {
        self.cursor.as_ref().is_none_or(|c| min_start <= c.start)
    }

    fn push(&mut self, cols: &Columns, tailnet: &str, r: &Rec, e: &Ent) {
        if let Some(k) = &self.cutoff {
            let node = cols.nodes.get(r.node as usize).map_or("", |s| s.as_str());
            if k.cmp_parts(r.start, node, r.seq) == Ordering::Greater {
                self.more = true;
                return;
            }
        }
        self.hits.push(FlowHit {
            seq: r.seq,
            entry: cols.entry(tailnet, r, e),
        });
        if self.hits.len() >= 2 * self.limit + 1024 {
            self.compact();
        }
    }

    /// Scans `cols` into the page; returns the entries looked at.
    pub(crate) fn scan(&mut self, cols: &Columns, tailnet: &str, c: &Compiled<'_>) -> u64 {
        let cursor = self.cursor.take();
        let n = c.scan(
            cols,
            |r, node| {
                cursor
                    .as_ref()
                    .is_none_or(|k| k.cmp_parts(r.start, node, r.seq) == Ordering::Greater)
            },
            |r, e| self.push(cols, tailnet, r, e),
        );
        self.cursor = cursor;
        n
    }

    /// Sorts and keeps the whole records that fit the page.
    fn compact(&mut self) {
        self.hits.sort_by(|a, b| a.page_cmp(b));
        let mut taken = 0usize;
        let mut i = 0usize;
        while i < self.hits.len() {
            let k = key_of(&self.hits[i]);
            let mut j = i + 1;
            while j < self.hits.len() && key_of(&self.hits[j]) == k {
                j += 1;
            }
            if taken > 0 && taken + (j - i) > self.limit {
                break;
            }
            taken += j - i;
            i = j;
        }
        if i < self.hits.len() {
            self.hits.truncate(i);
            self.more = true;
        }
        let full = self.more || taken >= self.limit;
        if let Some(h) = self.hits.last().filter(|_| full) {
            self.cutoff = Some(RecKey {
                start: h.entry.start,
                node: h.entry.node.clone(),
                seq: h.seq,
            });
        }
    }

    /// The page and the cursor of the next one.
    pub(crate) fn finish(mut self) -> (Vec<FlowHit>, Option<PageCursor>) {
        self.compact();
        let next = match (self.more, self.hits.last()) {
            (true, Some(h)) => Some(PageCursor::encode(&RecKey {
                start: h.entry.start,
                node: h.entry.node.clone(),
                seq: h.seq,
            })),
            _ => None,
        };
        (self.hits, next)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    tx_pkts: u64,
    tx_bytes: u64,
    rx_pkts: u64,
    rx_bytes: u64,
    entries: u64,
}

impl Sums {
    fn add_ent(&mut self, e: &Ent) {
        self.tx_pkts = self.tx_pkts.saturating_add(e.tx_pkts);
        self.tx_bytes = self.tx_bytes.saturating_add(e.tx_bytes);
        self.rx_pkts = self.rx_pkts.saturating_add(e.rx_pkts);
        self.rx_bytes = self.rx_bytes.saturating_add(e.rx_bytes);
        self.entries += 1;
    }

    fn add(&mut self, o: &Sums) {
        self.tx_pkts = self.tx_pkts.saturating_add(o.tx_pkts);
        self.tx_bytes = self.tx_bytes.saturating_add(o.tx_bytes);
        self.rx_pkts = self.rx_pkts.saturating_add(o.rx_pkts);
        self.rx_bytes = self.rx_bytes.saturating_add(o.rx_bytes);
        self.entries += o.entries;
    }
}

/// Sums traffic per (bucket, node, remote address).
pub(crate) struct EdgeAgg {
    bucket: i64,
    map: HashMap<(i64, String, IpAddr), Sums>,
}

impl EdgeAgg {
    pub(crate) fn new(bucket: i64) -> Self {
        Self {
            bucket,
            map: HashMap::new(),
        }
    }

    /// Adds the matching entries of `cols`; returns the entries looked at.
    pub(crate) fn scan(&mut self, cols: &Columns, c: &Compiled<'_>) -> u64 {
        if self.overflow() {
            return 0;
        }
        let mut local: IndexMap<(i64, u32, u32), Sums> = IndexMap::default();
        let b = self.bucket;
        let n = c.scan(
            cols,
            |_, _| true,
            |r, e| {
                local
                    .entry((r.start.div_euclid(b) * b, r.node, e.dst))
                    .or_default()
                    .add_ent(e);
            },
        );
        for ((t, node, dst), s) in local {
            let (Some(node), Some(dst)) =
                (cols.nodes.get(node as usize), cols.addrs.get(dst as usize))
            else {
                continue;
            };
            self.map.entry((t, node.clone(), *dst)).or_default().add(&s);
        }
        n
    }

    /// Whether the answer grew past [`crate::MAX_EDGE_ROWS`] (scanning stops).
    pub(crate) fn overflow(&self) -> bool {
        self.map.len() > crate::MAX_EDGE_ROWS
    }

    pub(crate) fn finish(self) -> Vec<EdgeBucket> {
        let mut v: Vec<EdgeBucket> = self
            .map
            .into_iter()
            .map(|((bucket, node, remote), s)| EdgeBucket {
                bucket,
                node,
                remote,
                tx_pkts: s.tx_pkts,
                tx_bytes: s.tx_bytes,
                rx_pkts: s.rx_pkts,
                rx_bytes: s.rx_bytes,
                entries: s.entries,
            })
            .collect();
        v.sort_by(|a, b| (a.bucket, &a.node, a.remote).cmp(&(b.bucket, &b.node, b.remote)));
        v
    }
}
