//! Flow records on the wire: Tailscale's network flow log shape
//! (`types/netlogtype` `Message`) plus Tally's counters. The agent's
//! capture (`tally-flow`) writes them; the server reads them without
//! linking the capture code.
//!
//! ```json
//! {"nodeId":"n123","start":"2024-05-01T10:00:00Z","end":"2024-05-01T10:00:05Z",
//!  "virtualTraffic":[{"proto":6,"src":"100.64.0.1:51000","dst":"100.64.0.2:22",
//!                     "txPkts":10,"txBytes":1200,"rxPkts":8,"rxBytes":4096}]}
//! ```
//!
//! - `start`/`end` are RFC 3339 with nanoseconds (trailing zeros trimmed, as
//!   Go's `time.Time` JSON encoding writes them), in UTC.
//! - `virtualTraffic`, `subnetTraffic`, `exitTraffic` are omitted when empty;
//!   entry fields that are zero are omitted. `src` is always this node's side
//!   (`ip:port`, IPv6 as `[ip]:port`), `dst` the peer's, and `tx`/`rx` are
//!   sent/received by this node. Bytes are IP packet lengths.
//! - Tally additions, omitted when zero: `evictions`, `malformedPackets`,
//!   `droppedPackets`, `captureStart` (see the fields).
//! - Unknown fields are ignored when reading.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Entries per record that keep its JSON under 256 KiB (Tailscale's
/// `maxLogSize`) in the worst case: an entry is at most 247 bytes (its
/// `MaxConnectionCountsJSONSize`: full IPv6 addresses, 20-digit counters)
/// plus a comma, and 1,000 of them leave room for the record's other fields.
pub const MAX_ENTRIES_PER_RECORD: usize = 1000;

/// One node's traffic for one interval (Tailscale's `netlogtype.Message`,
/// plus Tally's counters).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// The node's stable ID.
    pub node_id: String,
    /// Interval start, Unix nanoseconds (RFC 3339 in JSON).
    #[serde(with = "rfc3339_nanos")]
    pub start: u64,
    /// Interval end, Unix nanoseconds (RFC 3339 in JSON).
    #[serde(with = "rfc3339_nanos")]
    pub end: u64,
    /// Flows between two tailnet nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_traffic: Vec<ConnectionCounts>,
    /// Flows to or from an advertised subnet route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_traffic: Vec<ConnectionCounts>,
    /// Everything else (through an exit node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_traffic: Vec<ConnectionCounts>,
    /// Tally: connections evicted from the full table in the interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evictions: u64,
    /// Tally: frames with truncated or garbage headers in the interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub malformed_packets: u64,
    /// Tally: packets dropped by the kernel before capture in the interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_packets: u64,
    /// Tally: when the capture this record belongs to started (Unix ns,
    /// RFC 3339 in JSON): capture ran without a break from then to `end`,
    /// so the intervals between this capture's records that sent no record
    /// had no traffic. Absent in records of other agents.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_nanos_opt"
    )]
    pub capture_start: Option<u64>,
}

impl FlowRecord {
    /// True when the record has no traffic and no Tally counter: nothing worth
    /// sending.
    pub fn is_empty(&self) -> bool {
        self.virtual_traffic.is_empty()
            && self.subnet_traffic.is_empty()
            && self.exit_traffic.is_empty()
            && self.evictions == 0
            && self.malformed_packets == 0
            && self.dropped_packets == 0
    }

    /// Number of traffic entries.
    pub fn len(&self) -> usize {
        self.virtual_traffic.len() + self.subnet_traffic.len() + self.exit_traffic.len()
    }

    /// Splits the record into records of at most `max_entries` entries each
    /// (at least 1), same node and interval, Tally counters in the first.
    /// A record of [`MAX_ENTRIES_PER_RECORD`] entries stays under 256 KiB of
    /// JSON, Tailscale's per-message bound; under a SYN flood an interval
    /// can hold every table entry.
    pub fn split(mut self, max_entries: usize) -> Vec<FlowRecord> {
        let max = max_entries.max(1);
        if self.len() <= max {
            return vec![self];
        }
        let template = FlowRecord {
            node_id: self.node_id.clone(),
            start: self.start,
            end: self.end,
            ..FlowRecord::default()
        };
        let mut out = Vec::new();
        let mut current = FlowRecord {
            virtual_traffic: Vec::new(),
            subnet_traffic: Vec::new(),
            exit_traffic: Vec::new(),
            ..self.clone_counters()
        };
        let lists = [
            std::mem::take(&mut self.virtual_traffic),
            std::mem::take(&mut self.subnet_traffic),
            std::mem::take(&mut self.exit_traffic),
        ];
        for (kind, list) in lists.into_iter().enumerate() {
            for entry in list {
                if current.len() == max {
                    out.push(std::mem::replace(&mut current, template.clone()));
                }
                match kind {
                    0 => current.virtual_traffic.push(entry),
                    1 => current.subnet_traffic.push(entry),
                    _ => current.exit_traffic.push(entry),
                }
            }
        }
        out.push(current);
        out
    }

    /// The record without its entries.
    fn clone_counters(&self) -> FlowRecord {
        FlowRecord {
            node_id: self.node_id.clone(),
            start: self.start,
            end: self.end,
            evictions: self.evictions,
            malformed_packets: self.malformed_packets,
            dropped_packets: self.dropped_packets,
            ..FlowRecord::default()
        }
    }

    /// All entries with their classification.
    pub fn entries(&self) -> impl Iterator<Item = (TrafficKind, &ConnectionCounts)> {
        let v = self
            .virtual_traffic
            .iter()
            .map(|c| (TrafficKind::Virtual, c));
        let s = self.subnet_traffic.iter().map(|c| (TrafficKind::Subnet, c));
        let x = self.exit_traffic.iter().map(|c| (TrafficKind::Exit, c));
        v.chain(s).chain(x)
    }
}

/// One connection's counters in a record (Tailscale's `ConnectionCounts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionCounts {
    /// IANA protocol number (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub proto: u8,
    /// This node's side.
    pub src: SocketAddr,
    /// The peer's side.
    pub dst: SocketAddr,
    /// Packets sent by this node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tx_pkts: u64,
    /// Bytes sent by this node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tx_bytes: u64,
    /// Packets received by this node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rx_pkts: u64,
    /// Bytes received by this node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rx_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

/// Which traffic array a flow belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficKind {
    /// Both ends are tailnet nodes.
    Virtual,
    /// One end is inside an advertised subnet route.
    Subnet,
    /// Anything else.
    Exit,
}

impl TrafficKind {
    /// `virtual`, `subnet` or `exit`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficKind::Virtual => "virtual",
            TrafficKind::Subnet => "subnet",
            TrafficKind::Exit => "exit",
        }
    }
}

/// Serde for Unix nanoseconds as RFC 3339 UTC text.
pub mod rfc3339_nanos {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Writes `nanos` as RFC 3339 (`2006-01-02T15:04:05.999999999Z`).
    pub fn serialize<S: Serializer>(nanos: &u64, s: S) -> Result<S::Ok, S::Error> {
        let n = i64::try_from(*nanos).unwrap_or(i64::MAX);
        s.serialize_str(&crate::timefmt::format_nanos(n))
    }

    /// Reads RFC 3339 into Unix nanoseconds (times before 1970 are refused).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        let n = crate::timefmt::parse_rfc3339(&s)
            .ok_or_else(|| D::Error::custom(format!("invalid RFC 3339 time {s:?}")))?;
        u64::try_from(n).map_err(|_| D::Error::custom(format!("time before 1970: {s:?}")))
    }
}

/// [`rfc3339_nanos`] for an optional time.
pub mod rfc3339_nanos_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `Some(nanos)` as RFC 3339 (`None` is skipped by the field).
    pub fn serialize<S: Serializer>(nanos: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match nanos {
            Some(n) => super::rfc3339_nanos::serialize(n, s),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional RFC 3339 time into Unix nanoseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::rfc3339_nanos")] u64);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}
