//! Public input, output and configuration types.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use tally_proto::finding::{
    BatchVerdict, Counts, Evidence, Finding, FindingClass, RecordRef, Severity, Window,
};

/// Which traffic list of a flow record an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlowKind {
    /// Both ends are tailnet nodes: the only kind with a mirror entry.
    Virtual,
    /// The peer is inside an advertised subnet route.
    Subnet,
    /// Anything else (exit node traffic).
    Exit,
}

/// One traffic entry of one node's flow record, with the identity of the
/// record it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowObservation {
    /// Tailnet the reporting node belongs to.
    pub tailnet: Arc<str>,
    /// Stable node ID of the reporting node.
    pub node: Arc<str>,
    /// Record interval start, the node's clock, Unix ns.
    pub start: i64,
    /// Record interval end, the node's clock, Unix ns.
    pub end: i64,
    /// When the server received the record (server clock, Unix ns).
    pub logged: i64,
    /// Traffic list of the entry.
    pub kind: FlowKind,
    /// IANA protocol number.
    pub proto: u8,
    /// The reporting node's side.
    pub src: SocketAddr,
    /// The other side.
    pub dst: SocketAddr,
    /// Packets sent by `src`.
    pub tx_pkts: u64,
    /// Bytes sent by `src`.
    pub tx_bytes: u64,
    /// Packets received by `src`.
    pub rx_pkts: u64,
    /// Bytes received by `src`.
    pub rx_bytes: u64,
    /// Public ID of the uploading instance (logtail `id`).
    pub instance: Arc<str>,
    /// logtail `proc_id` of the record.
    pub proc_id: u32,
    /// logtail `proc_seq` of the record.
    pub proc_seq: u64,
    /// Whether `proc_seq` is the sender's own sequence, so that a gap in it
    /// is a finding. False for a record sent without a logtail identity:
    /// the server's store position then stands in for it (it tells records
    /// apart, but its gaps are other records').
    pub sequenced: bool,
    /// Position of this entry inside its record (0-based); entries of one
    /// record arrive together and in order.
    pub index: u32,
    /// Ingest verdict of the batch, when the server stored one.
    pub integrity: Option<BatchVerdict>,
    /// When the agent sent the upload the record came in (the node's
    /// clock, Unix ns), when it said so: the node's clock offset is then
    /// measured from the time in flight alone, not from how long the record
    /// waited in the agent's queue. Without it, the end of the upload's
    /// newest record (it was sent no earlier) is the next best bound.
    pub sent: Option<i64>,
    /// When the node's capture that wrote the record started (node clock,
    /// Unix ns), when the agent said so: the node then covered the whole
    /// span from it to `end`, also where it sent no record (no traffic).
    pub capture_start: Option<i64>,
}

/// A flow record the server received and did not store because of a
/// setting (flow logging being turned off while the record was in flight):
/// its sequence number is accounted for, and its span is a known reason for
/// the node's missing halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardedRecord {
    /// Tailnet of the node.
    pub tailnet: Arc<str>,
    /// Stable node ID.
    pub node: Arc<str>,
    /// Record interval start, the node's clock, Unix ns.
    pub start: i64,
    /// Record interval end, the node's clock, Unix ns.
    pub end: i64,
    /// When the server received it (server clock, Unix ns).
    pub logged: i64,
    /// When the agent sent it (node clock, Unix ns), when known.
    pub sent: Option<i64>,
    /// Public ID of the uploading instance.
    pub instance: Arc<str>,
    /// logtail `proc_id` of the record.
    pub proc_id: u32,
    /// logtail `proc_seq` of the record.
    pub proc_seq: u64,
}

/// What the server knows about a node at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Tailnet of the node.
    pub tailnet: String,
    /// Stable node ID.
    pub node: String,
    /// Tailnet addresses of the node.
    pub addresses: Vec<IpAddr>,
    /// The agent runs with `--no-logs-no-support`.
    pub opted_out: bool,
    /// Flow logging is on for the node's tailnet (as the node last saw it).
    pub flow_logging: bool,
    /// Last agent report (server clock, Unix ns).
    pub last_report: Option<i64>,
    /// Server time this snapshot is valid from (Unix ns).
    pub at: i64,
}

/// Tuning of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Window length (ns); default 5 s, one flow interval.
    pub window_ns: i64,
    /// How long after a window ends, in server time, late records are
    /// still waited for (ns); default 60 s. Must cover a flow interval plus
    /// the upload delay.
    pub grace_ns: i64,
    /// Largest clock skew expected between a node and the server (ns);
    /// default 30 s. Skew is measured per node from receive times and
    /// corrected; nodes whose measured offset exceeds this by more than the
    /// grace period are still paired, this bounds how long a record may be
    /// early.
    pub max_skew_ns: i64,
    /// Largest share of sent traffic that may be lost in flight without a
    /// finding; default 0.05.
    pub rel_tolerance: f64,
    /// Largest error of two nodes' corrected clocks against each other, plus
    /// time in flight (ns); default 1 s. Halves are paired and bounded with
    /// this margin.
    pub margin_ns: i64,
    /// Absolute byte tolerance; default 2048.
    pub abs_tolerance_bytes: u64,
    /// Absolute packet tolerance; default 4.
    pub abs_tolerance_pkts: u64,
    /// Share of a window a node's records must cover for it to count as
    /// reporting during that window; default 0.9.
    pub coverage: f64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window_ns: 5_000_000_000,
            grace_ns: 60_000_000_000,
            max_skew_ns: 30_000_000_000,
            rel_tolerance: 0.05,
            margin_ns: 1_000_000_000,
            abs_tolerance_bytes: 2048,
            abs_tolerance_pkts: 4,
            coverage: 0.9,
        }
    }
}

/// Invalid configuration or snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid reconciler configuration: {0}")]
    Config(String),
    /// A snapshot could not be encoded or decoded.
    #[error("invalid reconciler snapshot: {0}")]
    Snapshot(#[from] postcard::Error),
    /// A snapshot was written by an incompatible version.
    #[error("reconciler snapshot version {0} is not supported")]
    Version(u32),
}

/// Length of a [`Bucket`] of recent completeness (10 minutes, ns).
pub const BUCKET_NS: i64 = 600_000_000_000;
/// Buckets of recent completeness kept (the last hour).
pub const BUCKETS: usize = 6;

/// Connection-windows judged and matched in one 10-minute bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket start (server time, Unix ns; multiple of [`BUCKET_NS`]).
    pub start: i64,
    /// Connection-windows judged.
    pub judged: u32,
    /// Connection-windows matched.
    pub matched: u32,
}

/// Direction of completeness over the last hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    /// The last 30 minutes matched better than the 30 before (by > 2 points).
    Improving,
    /// The last 30 minutes matched worse than the 30 before (by > 2 points).
    Worsening,
    /// Within 2 points.
    Steady,
    /// Not enough judged windows in one of the halves.
    Unknown,
}

/// Completeness of one node or node pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completeness {
    /// Connection-windows judged.
    pub judged: u64,
    /// Connection-windows matched.
    pub matched: u64,
    /// Window start of the first discrepancy.
    pub first_discrepancy: Option<i64>,
    /// Window start of the last discrepancy.
    pub last_discrepancy: Option<i64>,
    /// The last hour in 10-minute buckets (a ring indexed by bucket number).
    #[serde(default)]
    pub recent: [Bucket; BUCKETS],
}

impl Completeness {
    /// Share of judged connection-windows that matched (1.0 when none judged).
    pub fn ratio(&self) -> f64 {
        if self.judged == 0 {
            1.0
        } else {
            self.matched as f64 / self.judged as f64
        }
    }

    /// Count one judged connection-window starting at `start`.
    pub fn record(&mut self, ok: bool, start: i64) {
        self.judged += 1;
        if ok {
            self.matched += 1;
        } else {
            self.first_discrepancy = Some(self.first_discrepancy.map_or(start, |f| f.min(start)));
            self.last_discrepancy = Some(self.last_discrepancy.map_or(start, |f| f.max(start)));
        }
        let n = start.div_euclid(BUCKET_NS);
        let b = &mut self.recent[n.rem_euclid(BUCKETS as i64) as usize];
        if b.start != n * BUCKET_NS {
            if b.start > n * BUCKET_NS && b.judged > 0 {
                return; // older than the hour kept
            }
            *b = Bucket {
                start: n * BUCKET_NS,
                judged: 0,
                matched: 0,
            };
        }
        b.judged = b.judged.saturating_add(1);
        b.matched = b.matched.saturating_add(u32::from(ok));
    }

    /// The buckets of the hour up to the newest one, oldest first.
    pub fn recent(&self) -> Vec<Bucket> {
        let newest = self.recent.iter().map(|b| b.start).max().unwrap_or(0);
        let mut v: Vec<Bucket> = self
            .recent
            .iter()
            .copied()
            .filter(|b| b.judged > 0 && b.start > newest - BUCKETS as i64 * BUCKET_NS)
            .collect();
        v.sort_by_key(|b| b.start);
        v
    }

    /// The last 30 minutes against the 30 before them.
    pub fn trend(&self) -> Trend {
        let newest = self.recent.iter().map(|b| b.start).max().unwrap_or(0);
        let half = (BUCKETS / 2) as i64 * BUCKET_NS;
        let (mut late, mut early) = ((0u64, 0u64), (0u64, 0u64));
        for b in self.recent.iter().filter(|b| b.judged > 0) {
            let part = if b.start > newest - half {
                &mut late
            } else if b.start > newest - 2 * half {
                &mut early
            } else {
                continue;
            };
            part.0 += u64::from(b.judged);
            part.1 += u64::from(b.matched);
        }
        if late.0 < 10 || early.0 < 10 {
            return Trend::Unknown;
        }
        let d = late.1 as f64 / late.0 as f64 - early.1 as f64 / early.0 as f64;
        if d > 0.02 {
            Trend::Improving
        } else if d < -0.02 {
            Trend::Worsening
        } else {
            Trend::Steady
        }
    }
}

/// Per node and per pair completeness.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `(tailnet, node, completeness)`, sorted.
    pub nodes: Vec<(String, String, Completeness)>,
    /// `(tailnet, node, node, completeness)` with the two nodes sorted.
    pub pairs: Vec<(String, String, String, Completeness)>,
}

/// Counters of what the reconciler did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Entries observed.
    pub observed: u64,
    /// Entries dropped as duplicates.
    pub duplicates: u64,
    /// Entries (or parts) arriving after their window was judged.
    pub too_late: u64,
    /// Entries left out of pairing because of their batch verdict.
    pub excluded: u64,
    /// Entries left out as impossible (a record over 10 minutes long,
    /// ending before it starts or received more than a day away from its
    /// end; counts over 2^48).
    #[serde(default)]
    pub rejected: u64,
    /// Connection-windows judged.
    pub judged: u64,
    /// Findings emitted.
    pub findings: u64,
}
