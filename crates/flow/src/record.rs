//! Flow records in Tailscale's network flow log shape (`types/netlogtype`
//! `Message`), and the classification of flows into virtual, subnet and exit
//! traffic.
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
//! - Entries are sorted by `src`, then `dst`, then `proto` (as Tailscale does).
//! - Tally additions, omitted when zero (tools that read Tailscale's shape
//!   ignore them): `evictions`, connections evicted from the agent's full
//!   connection table during the interval (their unreported counts are
//!   missing from this record); `malformedPackets`, captured frames whose
//!   headers were truncated or garbage, counted in no entry;
//!   `droppedPackets`, packets the kernel dropped before the agent read them
//!   (capture overrun), also counted in no entry.
//! - Not produced (Tailscale fields Tally does not fill at the agent):
//!   `srcNode`, `dstNodes`, `physicalTraffic`. Unknown fields are ignored
//!   when reading, so records carrying them still parse.
//!
//! Classification ([`Classifier`]), following Tailscale's `wgengine/netlog`:
//! a flow is *virtual* when both ends are tailnet node addresses; otherwise
//! *subnet* when either end lies inside a route advertised by the node or its
//! peers (default routes `/0`, which exit nodes advertise, do not count);
//! otherwise *exit*.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

pub use tally_proto::flow::{
    ConnectionCounts, FlowRecord, MAX_ENTRIES_PER_RECORD, TrafficKind, rfc3339_nanos,
    rfc3339_nanos_opt,
};

use crate::table::{ConnTable, IntervalCounts};

/// An IP prefix such as `10.1.0.0/16` or `fd7a:115c:a1e0::/48`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid IP prefix {0:?} (want ADDR/LEN)")]
pub struct BadPrefix(pub String);

impl IpPrefix {
    /// A prefix; `None` if `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Option<IpPrefix> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(IpPrefix { addr, len })
    }

    /// The address part.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for a default route (`/0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` is inside the prefix (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpPrefix {
    type Err = BadPrefix;

    fn from_str(s: &str) -> Result<IpPrefix, BadPrefix> {
        let bad = || BadPrefix(s.to_string());
        match s.split_once('/') {
            Some((a, l)) => {
                let addr = a.parse::<IpAddr>().map_err(|_| bad())?;
                let len = l.parse::<u8>().map_err(|_| bad())?;
                IpPrefix::new(addr, len).ok_or_else(bad)
            }
            None => {
                let addr = s.parse::<IpAddr>().map_err(|_| bad())?;
                Ok(IpPrefix {
                    addr,
                    len: if addr.is_ipv4() { 32 } else { 128 },
                })
            }
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What the node knows about its tailnet, to classify flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classifier {
    /// Every registered node's tailnet addresses (this node's included).
    pub tailnet_nodes: HashSet<IpAddr>,
    /// Routes advertised by this node or its peers.
    pub routes: Vec<IpPrefix>,
}

impl Classifier {
    /// Classifies a flow between `local` and `remote` (see the module docs).
    pub fn classify(&self, local: IpAddr, remote: IpAddr) -> TrafficKind {
        let local = local.to_canonical();
        let remote = remote.to_canonical();
        if self.tailnet_nodes.contains(&local) && self.tailnet_nodes.contains(&remote) {
            return TrafficKind::Virtual;
        }
        let in_route = |ip: IpAddr| {
            !self.tailnet_nodes.contains(&ip)
                && self.routes.iter().any(|r| !r.is_empty() && r.contains(ip))
        };
        if in_route(remote) || in_route(local) {
            TrafficKind::Subnet
        } else {
            TrafficKind::Exit
        }
    }
}

impl IntervalCounts {
    /// Classifies the interval's flows into a record for `node_id`.
    pub fn into_record(self, node_id: &str, classifier: &Classifier) -> FlowRecord {
        let mut record = FlowRecord {
            node_id: node_id.to_string(),
            start: self.start,
            end: self.end,
            evictions: self.evictions,
            malformed_packets: self.malformed_packets,
            dropped_packets: self.dropped_packets,
            ..FlowRecord::default()
        };
        for flow in self.flows {
            let entry = ConnectionCounts {
                proto: flow.key.proto,
                src: flow.key.local_addr(),
                dst: flow.key.remote_addr(),
                tx_pkts: flow.counts.tx_pkts,
                tx_bytes: flow.counts.tx_bytes,
                rx_pkts: flow.counts.rx_pkts,
                rx_bytes: flow.counts.rx_bytes,
            };
            match classifier.classify(flow.key.local, flow.key.remote) {
                TrafficKind::Virtual => record.virtual_traffic.push(entry),
                TrafficKind::Subnet => record.subnet_traffic.push(entry),
                TrafficKind::Exit => record.exit_traffic.push(entry),
            }
        }
        for list in [
            &mut record.virtual_traffic,
            &mut record.subnet_traffic,
            &mut record.exit_traffic,
        ] {
            list.sort_unstable_by_key(|c| (c.src, c.dst, c.proto));
        }
        record
    }
}

impl ConnTable {
    /// Takes the interval's counts ([`ConnTable::take_interval`]) and
    /// classifies them into a record.
    pub fn take_record(
        &mut self,
        start: u64,
        end: u64,
        node_id: &str,
        classifier: &Classifier,
    ) -> FlowRecord {
        self.take_interval(start, end)
            .into_record(node_id, classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{PROTO_TCP, PROTO_UDP, PacketInfo, TcpFlags};
    use crate::table::{ConnTable, Direction};

    const T0: u64 = 1_700_000_000_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn classifier() -> Classifier {
        Classifier {
            tailnet_nodes: [
                "100.64.0.1",
                "100.64.0.2",
                "fd7a:115c:a1e0::1",
                "fd7a:115c:a1e0::2",
            ]
            .iter()
            .map(|s| ip(s))
            .collect(),
            routes: vec![
                "192.168.10.0/24".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
                "::/0".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn classification() {
        let c = classifier();
        let k = |a: &str, b: &str| c.classify(ip(a), ip(b));
        assert_eq!(k("100.64.0.1", "100.64.0.2"), TrafficKind::Virtual);
        assert_eq!(
            k("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"),
            TrafficKind::Virtual
        );
        // Using a subnet router: the peer is in an advertised route.
        assert_eq!(k("100.64.0.1", "192.168.10.7"), TrafficKind::Subnet);
        // Being the subnet router: this side is the subnet host.
        assert_eq!(k("192.168.10.7", "100.64.0.2"), TrafficKind::Subnet);
        // Default routes (exit nodes) do not make traffic "subnet".
        assert_eq!(k("100.64.0.1", "8.8.8.8"), TrafficKind::Exit);
        assert_eq!(k("fd7a:115c:a1e0::1", "2001:db8::1"), TrafficKind::Exit);
        // An unknown tailnet-range address is not a node.
        assert_eq!(k("100.64.0.1", "100.64.0.99"), TrafficKind::Exit);
        // IPv4-mapped IPv6 is compared as IPv4.
        assert_eq!(k("::ffff:100.64.0.1", "100.64.0.2"), TrafficKind::Virtual);
    }

    #[test]
    fn prefixes() {
        let p: IpPrefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains(ip("10.1.255.3")));
        assert!(!p.contains(ip("10.2.0.1")));
        assert!(!p.contains(ip("::1")));
        let p: IpPrefix = "fd7a:115c:a1e0::/48".parse().unwrap();
        assert!(p.contains(ip("fd7a:115c:a1e0:ab12::1")));
        assert!(!p.contains(ip("fd7a:115c:a1e1::1")));
        let host: IpPrefix = "10.0.0.1".parse().unwrap();
        assert_eq!(host.len(), 32);
        assert!(host.contains(ip("10.0.0.1")) && !host.contains(ip("10.0.0.2")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpPrefix>()
                .unwrap()
                .contains(ip("1.2.3.4"))
        );
        assert!("10.0.0.0/33".parse::<IpPrefix>().is_err());
        assert!("nonsense".parse::<IpPrefix>().is_err());
        assert_eq!(p.to_string(), "fd7a:115c:a1e0::/48");
    }

    fn packet(proto: u8, src: &str, sp: u16, dst: &str, dp: u16, len: u32) -> PacketInfo {
        PacketInfo {
            proto,
            src: ip(src),
            src_port: sp,
            dst: ip(dst),
            dst_port: dp,
            ip_len: len,
            tcp_flags: TcpFlags(if proto == PROTO_TCP { TcpFlags::ACK } else { 0 }),
        }
    }

    #[test]
    fn record_json_has_tailscale_shape() {
        let mut t = ConnTable::default();
        let me = "100.64.0.1";
        t.observe(
            T0,
            Direction::Tx,
            &packet(PROTO_TCP, me, 51000, "100.64.0.2", 22, 1200),
        );
        t.observe(
            T0,
            Direction::Rx,
            &packet(PROTO_TCP, "100.64.0.2", 22, me, 51000, 4096),
        );
        t.observe(
            T0,
            Direction::Tx,
            &packet(PROTO_UDP, me, 5000, "192.168.10.7", 53, 70),
        );
        t.observe(
            T0,
            Direction::Rx,
            &packet(PROTO_UDP, "1.1.1.1", 443, me, 6000, 1300),
        );
        t.observe(
            T0,
            Direction::Tx,
            &packet(
                PROTO_TCP,
                "fd7a:115c:a1e0::1",
                1,
                "fd7a:115c:a1e0::2",
                80,
                60,
            ),
        );
        t.note_malformed();
        let record = t.take_record(T0, T0 + 5_500_000_000, "nodeA", &classifier());
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"nodeId":"nodeA","start":"2023-11-14T22:13:20Z","end":"2023-11-14T22:13:25.5Z","#,
                r#""virtualTraffic":["#,
                r#"{"proto":6,"src":"100.64.0.1:51000","dst":"100.64.0.2:22","txPkts":1,"txBytes":1200,"rxPkts":1,"rxBytes":4096},"#,
                r#"{"proto":6,"src":"[fd7a:115c:a1e0::1]:1","dst":"[fd7a:115c:a1e0::2]:80","txPkts":1,"txBytes":60}],"#,
                r#""subnetTraffic":[{"proto":17,"src":"100.64.0.1:5000","dst":"192.168.10.7:53","txPkts":1,"txBytes":70}],"#,
                r#""exitTraffic":[{"proto":17,"src":"100.64.0.1:6000","dst":"1.1.1.1:443","rxPkts":1,"rxBytes":1300}],"#,
                r#""malformedPackets":1}"#
            )
        );
        let back: FlowRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        assert_eq!(record.entries().count(), 4);
    }

    #[test]
    fn split_keeps_every_entry_and_bounds_json_size() {
        let mut t = ConnTable::default();
        for port in 0..3000u16 {
            let dst = if port.is_multiple_of(3) {
                "100.64.0.2"
            } else {
                "8.8.8.8"
            };
            t.observe(
                T0,
                Direction::Tx,
                &packet(PROTO_UDP, "fd7a:115c:a1e0::1", port, dst, 53, 1500),
            );
        }
        t.note_malformed();
        let record = t.take_record(T0, T0 + 5, "n1", &classifier());
        assert_eq!(record.len(), 3000);
        let parts = record.clone().split(MAX_ENTRIES_PER_RECORD);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].len(), 1000);
        assert_eq!(parts.iter().map(FlowRecord::len).sum::<usize>(), 3000);
        assert_eq!(parts[0].malformed_packets, 1);
        assert!(parts[1..].iter().all(|p| p.malformed_packets == 0));
        for p in &parts {
            assert_eq!((p.start, p.end, p.node_id.as_str()), (T0, T0 + 5, "n1"));
            assert!(serde_json::to_vec(p).unwrap().len() < 256 << 10);
        }
        let mut joined: Vec<_> = parts
            .iter()
            .flat_map(|p| p.entries().map(|(_, c)| *c))
            .collect();
        let mut all: Vec<_> = record.entries().map(|(_, c)| *c).collect();
        joined.sort_by_key(|c| (c.src, c.dst));
        all.sort_by_key(|c| (c.src, c.dst));
        assert_eq!(joined, all);
        assert_eq!(record.clone().split(5000), vec![record]);
    }

    #[test]
    fn empty_record_omits_arrays() {
        let mut t = ConnTable::default();
        let r = t.take_record(T0, T0 + 1, "n1", &Classifier::default());
        assert!(r.is_empty());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"nodeId":"n1","start":"2023-11-14T22:13:20Z","end":"2023-11-14T22:13:20.000000001Z"}"#
        );
    }

    #[test]
    fn reads_records_with_tailscale_only_fields() {
        let json = r#"{"nodeId":"n1","start":"2023-11-14T22:13:20.123Z","end":"2023-11-14T22:13:25Z",
            "srcNode":{"nodeId":"n1"},"physicalTraffic":[{"src":"100.64.0.1:0","dst":"1.2.3.4:41641","txPkts":3}],
            "virtualTraffic":[{"proto":17,"src":"100.64.0.1:1","dst":"100.64.0.2:2","evictions":0}],"evictions":4}"#;
        let r: FlowRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.start, T0 + 123_000_000);
        assert_eq!(r.evictions, 4);
        assert_eq!(r.virtual_traffic[0].tx_pkts, 0);
        assert!(
            serde_json::from_str::<FlowRecord>(r#"{"nodeId":"n","start":"x","end":"y"}"#).is_err()
        );
    }
}
