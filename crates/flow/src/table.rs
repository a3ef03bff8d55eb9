//! The connection table: per-connection counters, open/close events, and the
//! per-interval counts a [`crate::record::FlowRecord`] is built from.
//!
//! # Keys and direction
//!
//! Packets are observed with a [`Direction`] from this node's point of view
//! (`Tx` = sent by this node, `Rx` = received). The [`FlowKey`] is normalized
//! to (proto, local addr:port, remote addr:port): for `Tx` the local side is
//! the packet's source, for `Rx` its destination. Both directions of one
//! connection therefore land in one entry, whose counters say how much was
//! sent (`tx`) and received (`rx`). This is the `src` = "this node's side"
//! convention of Tailscale's flow records.
//!
//! # Lifecycle
//!
//! - TCP opens on a SYN (without ACK). A TCP packet for an unknown key opens a
//!   flow too, flagged [`FlowEvent::mid_stream`]. It closes on a FIN from both
//!   sides ([`CloseReason::Fin`]), on a RST ([`CloseReason::Rst`]), or after
//!   [`TableConfig::tcp_idle_timeout`] without packets. A closed TCP entry
//!   lingers for [`TableConfig::closed_linger`] so that the last ACK and
//!   retransmissions count to it instead of opening a new flow; a new SYN on
//!   it opens a new flow.
//! - UDP, ICMP and other protocols open on the first packet and close after
//!   [`TableConfig::idle_timeout`] (default 60 s) without packets.
//! - A flow that has only seen packets in one direction (an unanswered SYN, a
//!   one-way UDP stream) closes after `idle_timeout` whatever its protocol.
//!
//! Every open and close is a [`FlowEvent`] returned to the caller. Time is
//! passed in as nanoseconds since the Unix epoch, so tests need no sleeps.
//!
//! # Bounds and eviction
//!
//! The table holds at most [`TableConfig::max_entries`] entries (default
//! 100,000). Its storage (a slab of entries, an index-only hash table sized so
//! it never grows, the list of entries active in the interval) is reserved up
//! front; after warm-up no packet allocates. When a new flow arrives and the
//! table is full, one entry is evicted, chosen in O(1) from intrusive
//! doubly-linked lists kept in least-recently-seen order:
//!
//! 1. entries already closed and waiting to be reported,
//! 2. closed TCP entries lingering after FIN/RST (oldest close first),
//! 3. one-directional flows, least recently seen first (under a SYN flood
//!    with random source ports the flood evicts itself, not established
//!    connections),
//! 4. the least recently seen of the remaining open flows.
//!
//! Evicting an open flow emits a close event with [`CloseReason::Evicted`];
//! every eviction is counted and reported in the next interval (counts the
//! evicted entry had not yet reported are lost, which is what the counter
//! says). The hash is SipHash with a random key (std `RandomState`), so
//! chosen addresses and ports cannot be used to collide entries.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hashbrown::HashTable;

use crate::parse::{LinkType, PROTO_TCP, PacketInfo, ParseError, parse_packet_truncated};

/// Which way a packet went, from this node's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by this node.
    Tx,
    /// Received by this node.
    Rx,
}

/// A connection's 5-tuple from this node's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    /// IANA protocol number.
    pub proto: u8,
    /// This node's address (source of `Tx` packets, destination of `Rx`).
    pub local: IpAddr,
    /// This node's port.
    pub local_port: u16,
    /// The peer's address.
    pub remote: IpAddr,
    /// The peer's port.
    pub remote_port: u16,
}

impl Hash for FlowKey {
    /// Hashes the key as one 37-byte write (IPv4 as IPv4-mapped IPv6 bytes):
    /// one call into the hasher instead of a dozen small ones.
    fn hash<H: Hasher>(&self, state: &mut H) {
        fn octets(ip: IpAddr) -> [u8; 16] {
            match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            }
        }
        let mut buf = [0u8; 37];
        buf[0] = self.proto;
        buf[1..17].copy_from_slice(&octets(self.local));
        buf[17..33].copy_from_slice(&octets(self.remote));
        buf[33..35].copy_from_slice(&self.local_port.to_ne_bytes());
        buf[35..37].copy_from_slice(&self.remote_port.to_ne_bytes());
        state.write(&buf);
    }
}

impl FlowKey {
    /// The normalized key of a packet seen in direction `dir`.
    pub fn from_packet(dir: Direction, p: &PacketInfo) -> FlowKey {
        match dir {
            Direction::Tx => FlowKey {
                proto: p.proto,
                local: p.src,
                local_port: p.src_port,
                remote: p.dst,
                remote_port: p.dst_port,
            },
            Direction::Rx => FlowKey {
                proto: p.proto,
                local: p.dst,
                local_port: p.dst_port,
                remote: p.src,
                remote_port: p.src_port,
            },
        }
    }

    /// This node's side as `ip:port`.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.local, self.local_port)
    }

    /// The peer's side as `ip:port`.
    pub fn remote_addr(&self) -> SocketAddr {
        SocketAddr::new(self.remote, self.remote_port)
    }
}

/// Packet and byte counters in both directions. Bytes are IP packet lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Counts {
    /// Packets sent by this node.
    pub tx_pkts: u64,
    /// Bytes sent by this node.
    pub tx_bytes: u64,
    /// Packets received by this node.
    pub rx_pkts: u64,
    /// Bytes received by this node.
    pub rx_bytes: u64,
}

impl Counts {
    /// Counts one packet of `bytes` in direction `dir`.
    pub fn add_packet(&mut self, dir: Direction, bytes: u64) {
        match dir {
            Direction::Tx => {
                self.tx_pkts += 1;
                self.tx_bytes += bytes;
            }
            Direction::Rx => {
                self.rx_pkts += 1;
                self.rx_bytes += bytes;
            }
        }
    }

    /// Adds another set of counters.
    pub fn add(&mut self, other: &Counts) {
        self.tx_pkts += other.tx_pkts;
        self.tx_bytes += other.tx_bytes;
        self.rx_pkts += other.rx_pkts;
        self.rx_bytes += other.rx_bytes;
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Why a flow closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// TCP FIN seen from both sides.
    Fin,
    /// TCP RST seen.
    Rst,
    /// No packet for the idle timeout.
    IdleTimeout,
    /// Removed to make room for a new flow (table full).
    Evicted,
    /// Closed by [`ConnTable::close_all`] (capture stopping).
    Shutdown,
}

impl CloseReason {
    /// A short lowercase name (`fin`, `rst`, `idle`, `evicted`, `shutdown`).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Fin => "fin",
            CloseReason::Rst => "rst",
            CloseReason::IdleTimeout => "idle",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
        }
    }

    fn code(self) -> u8 {
        match self {
            CloseReason::Fin => 1,
            CloseReason::Rst => 2,
            CloseReason::IdleTimeout => 3,
            CloseReason::Evicted => 4,
            CloseReason::Shutdown => 5,
        }
    }

    fn from_code(code: u8) -> Option<CloseReason> {
        Some(match code {
            1 => CloseReason::Fin,
            2 => CloseReason::Rst,
            3 => CloseReason::IdleTimeout,
            4 => CloseReason::Evicted,
            5 => CloseReason::Shutdown,
            _ => return None,
        })
    }
}

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowEventKind {
    /// The flow was first seen (or reopened on a closed key).
    Open,
    /// The flow closed.
    Close(CloseReason),
}

/// An open or close of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// Open or close (with the reason).
    pub kind: FlowEventKind,
    /// The flow.
    pub key: FlowKey,
    /// When it happened (Unix nanoseconds): the packet's time for opens and
    /// FIN/RST closes, the `now` passed in for idle, eviction and shutdown.
    pub at: u64,
    /// When the flow's first packet was seen (Unix nanoseconds).
    pub first_seen: u64,
    /// Counters over the flow's whole life so far.
    pub totals: Counts,
    /// A TCP flow first seen without its SYN (already running when capture
    /// started, or its entry was evicted or idle-closed).
    pub mid_stream: bool,
}

/// The state of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// Open.
    Open,
    /// TCP: a FIN was seen from one side only.
    Closing,
    /// Closed, still in the table (lingering or waiting to be reported).
    Closed(CloseReason),
}

/// A snapshot of one entry (see [`ConnTable::get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowInfo {
    /// The flow.
    pub key: FlowKey,
    /// Its state.
    pub state: FlowState,
    /// First packet (Unix nanoseconds).
    pub first_seen: u64,
    /// Last packet (Unix nanoseconds).
    pub last_seen: u64,
    /// Counters since the last [`ConnTable::take_interval`].
    pub interval: Counts,
    /// Counters over the flow's life.
    pub totals: Counts,
    /// Opened without a SYN.
    pub mid_stream: bool,
    /// Packets have been seen in both directions.
    pub answered: bool,
}

/// Table limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// Most entries held (default 100,000; at least 1).
    pub max_entries: usize,
    /// Idle timeout of UDP, ICMP, other protocols and one-directional flows
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// Idle timeout of TCP connections that have seen both directions
    /// (default 10 min).
    pub tcp_idle_timeout: Duration,
    /// How long a TCP entry closed by FIN/RST stays to absorb the final ACK
    /// and retransmissions (default 10 s).
    pub closed_linger: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            max_entries: 100_000,
            idle_timeout: Duration::from_secs(60),
            tcp_idle_timeout: Duration::from_secs(600),
            closed_linger: Duration::from_secs(10),
        }
    }
}

/// Cumulative counters since the table was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TableStats {
    /// Entries held now.
    pub entries: usize,
    /// The entry limit.
    pub max_entries: usize,
    /// Packets counted into flows.
    pub packets: u64,
    /// Flows opened.
    pub opened: u64,
    /// Flows closed (any reason).
    pub closed: u64,
    /// Entries evicted because the table was full.
    pub evictions: u64,
    /// Frames whose headers were truncated or garbage.
    pub malformed: u64,
    /// Frames that were not IP (ARP, ...).
    pub not_ip: u64,
    /// Packets the capture reported as dropped (see [`ConnTable::note_dropped`]).
    pub dropped: u64,
}

/// One flow's counters for one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowCount {
    /// The flow.
    pub key: FlowKey,
    /// What it sent and received in the interval.
    pub counts: Counts,
}

/// Everything counted in one interval, before classification (see
/// [`IntervalCounts::into_record`](crate::record)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntervalCounts {
    /// Interval start (Unix nanoseconds).
    pub start: u64,
    /// Interval end (Unix nanoseconds).
    pub end: u64,
    /// Flows with traffic in the interval, in no particular order.
    pub flows: Vec<FlowCount>,
    /// Entries evicted in the interval.
    pub evictions: u64,
    /// Malformed frames in the interval.
    pub malformed_packets: u64,
    /// Packets the capture dropped in the interval.
    pub dropped_packets: u64,
}

/// Up to three events from one [`ConnTable::observe`] call (an eviction's
/// close, an open, and an immediate close for a lone RST). Iterate it.
#[derive(Debug, Clone, Default)]
pub struct Events {
    buf: [Option<FlowEvent>; 3],
    next: usize,
}

impl Events {
    fn push(&mut self, event: FlowEvent) {
        if let Some(slot) = self.buf.iter_mut().find(|s| s.is_none()) {
            *slot = Some(event);
        }
    }

    /// Number of events not yet iterated.
    pub fn len(&self) -> usize {
        self.buf[self.next.min(3)..]
            .iter()
            .filter(|e| e.is_some())
            .count()
    }

    /// True when there is no event left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for Events {
    type Item = FlowEvent;

    fn next(&mut self) -> Option<FlowEvent> {
        while self.next < self.buf.len() {
            let event = self.buf[self.next].take();
            self.next += 1;
            if event.is_some() {
                return event;
            }
        }
        None
    }
}

const NIL: u32 = u32::MAX;

// Lists an entry can be on. Open flows are on one of the first three.
const L_UNANSWERED: u8 = 0;
const L_TCP: u8 = 1;
const L_OTHER: u8 = 2;
const L_CLOSED: u8 = 3; // closed by FIN/RST, lingering, ordered by close time
const L_DOOMED: u8 = 4; // closed, freed by the next take_interval
const N_LISTS: usize = 5;
const L_FREE: u8 = 255;
const L_NONE: u8 = 254; // unlinked, not free

const F_SEEN_TX: u8 = 1;
const F_SEEN_RX: u8 = 2;
const F_FIN_TX: u8 = 4;
const F_FIN_RX: u8 = 8;
const F_MID_STREAM: u8 = 16;
const F_IN_INTERVAL: u8 = 32; // the index is in `active`

#[derive(Debug, Clone)]
struct Entry {
    key: FlowKey,
    interval: Counts,
    totals: Counts,
    first_seen: u64,
    last_seen: u64,
    closed_at: u64,
    prev: u32,
    next: u32,
    list: u8,
    flags: u8,
    reason: u8, // 0 = open, else CloseReason::code
}

impl Entry {
    fn vacant() -> Entry {
        Entry {
            key: FlowKey {
                proto: 0,
                local: IpAddr::from([0u8; 4]),
                local_port: 0,
                remote: IpAddr::from([0u8; 4]),
                remote_port: 0,
            },
            interval: Counts::default(),
            totals: Counts::default(),
            first_seen: 0,
            last_seen: 0,
            closed_at: 0,
            prev: NIL,
            next: NIL,
            list: L_FREE,
            flags: 0,
            reason: 0,
        }
    }

    fn is_closed(&self) -> bool {
        self.reason != 0
    }
}

fn seen_flag(dir: Direction) -> u8 {
    match dir {
        Direction::Tx => F_SEEN_TX,
        Direction::Rx => F_SEEN_RX,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A bounded table of connections (see the module docs).
pub struct ConnTable {
    max_entries: usize,
    idle_ns: u64,
    tcp_idle_ns: u64,
    linger_ns: u64,
    hasher: RandomState,
    /// Slab index by key hash; stores only the index (the key is in the slab).
    map: HashTable<u32>,
    slab: Vec<Entry>,
    free_head: u32,
    heads: [u32; N_LISTS],
    tails: [u32; N_LISTS],
    /// Indexes of entries with traffic in the current interval (each once).
    active: Vec<u32>,
    interval_evictions: u64,
    interval_malformed: u64,
    interval_dropped: u64,
    stats: TableStats,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable::new(TableConfig::default())
    }
}

impl ConnTable {
    /// An empty table; reserves its storage for `config.max_entries`.
    pub fn new(config: TableConfig) -> ConnTable {
        let max = config.max_entries.clamp(1, (NIL - 1) as usize);
        ConnTable {
            max_entries: max,
            idle_ns: nanos(config.idle_timeout),
            tcp_idle_ns: nanos(config.tcp_idle_timeout),
            linger_ns: nanos(config.closed_linger),
            hasher: RandomState::new(),
            // Twice the entries: deletions leave tombstones, and hashbrown
            // only rehashes in place (no allocation) below half its capacity.
            map: HashTable::with_capacity(max.saturating_mul(2)),
            slab: Vec::with_capacity(max),
            free_head: NIL,
            heads: [NIL; N_LISTS],
            tails: [NIL; N_LISTS],
            active: Vec::with_capacity(max),
            interval_evictions: 0,
            interval_malformed: 0,
            interval_dropped: 0,
            stats: TableStats {
                max_entries: max,
                ..TableStats::default()
            },
        }
    }

    /// Entries held now (open and lingering closed ones).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Cumulative counters.
    pub fn stats(&self) -> TableStats {
        TableStats {
            entries: self.map.len(),
            ..self.stats
        }
    }

    /// Bytes reserved by the table's storage (the resident part is smaller
    /// until the table has filled once).
    pub fn reserved_bytes(&self) -> usize {
        self.slab.capacity() * std::mem::size_of::<Entry>()
            + self.map.allocation_size()
            + self.active.capacity() * std::mem::size_of::<u32>()
    }

    /// Size of one slab entry in bytes.
    pub fn entry_size() -> usize {
        std::mem::size_of::<Entry>()
    }

    /// Counts a frame whose headers were truncated or garbage.
    pub fn note_malformed(&mut self) {
        self.interval_malformed += 1;
        self.stats.malformed += 1;
    }

    /// Counts a frame that was not IP.
    pub fn note_not_ip(&mut self) {
        self.stats.not_ip += 1;
    }

    /// Counts packets the capture reports as dropped (kernel drops).
    pub fn note_dropped(&mut self, packets: u64) {
        self.interval_dropped += packets;
        self.stats.dropped += packets;
    }

    /// Parses a captured frame and observes it; malformed and non-IP frames
    /// are counted (see [`ConnTable::note_malformed`]) and yield no event.
    pub fn observe_frame(
        &mut self,
        now: u64,
        dir: Direction,
        link: LinkType,
        frame: &[u8],
        wire_len: usize,
    ) -> Result<Events, ParseError> {
        match parse_packet_truncated(link, frame, wire_len) {
            Ok(info) => Ok(self.observe(now, dir, &info)),
            Err(e) => {
                match e {
                    ParseError::NotIp(_) => self.note_not_ip(),
                    ParseError::Malformed(_) => self.note_malformed(),
                }
                Err(e)
            }
        }
    }

    /// Counts one packet seen at `now` (Unix nanoseconds) in direction `dir`.
    pub fn observe(&mut self, now: u64, dir: Direction, p: &PacketInfo) -> Events {
        let key = FlowKey::from_packet(dir, p);
        let hash = self.hasher.hash_one(key);
        let bytes = u64::from(p.ip_len);
        let mut events = Events::default();
        self.stats.packets += 1;
        let slab = &self.slab;
        let found = self
            .map
            .find(hash, |&i| slab[i as usize].key == key)
            .copied();
        match found {
            Some(idx) => {
                self.count(idx, now, dir, bytes);
                let e = &self.slab[idx as usize];
                if e.is_closed() {
                    let by_tcp_close = matches!(
                        CloseReason::from_code(e.reason),
                        Some(CloseReason::Fin | CloseReason::Rst)
                    );
                    let reopen = if p.proto == PROTO_TCP && by_tcp_close {
                        p.tcp_flags.is_initial_syn()
                    } else {
                        true
                    };
                    if reopen {
                        self.reopen(idx, now, dir, p, &mut events);
                        self.update_open(idx, now, dir, p, &mut events);
                    }
                    // Otherwise a straggler of a closed TCP connection:
                    // counted above, nothing else.
                } else {
                    self.update_open(idx, now, dir, p, &mut events);
                }
            }
            None => {
                let idx = self.alloc(now, &mut events);
                let keep = self.slab[idx as usize].flags & F_IN_INTERVAL;
                let mid_stream = p.proto == PROTO_TCP && !p.tcp_flags.is_initial_syn();
                {
                    let e = &mut self.slab[idx as usize];
                    e.key = key;
                    e.interval = Counts::default();
                    e.totals = Counts::default();
                    e.first_seen = now;
                    e.last_seen = now;
                    e.closed_at = 0;
                    e.flags = keep | if mid_stream { F_MID_STREAM } else { 0 };
                    e.reason = 0;
                }
                let slab = &self.slab;
                let hasher = &self.hasher;
                self.map
                    .insert_unique(hash, idx, |&i| hasher.hash_one(slab[i as usize].key));
                self.push_front(L_UNANSWERED, idx);
                self.count(idx, now, dir, bytes);
                self.stats.opened += 1;
                events.push(self.event(idx, FlowEventKind::Open, now));
                self.update_open(idx, now, dir, p, &mut events);
            }
        }
        events
    }

    /// Closes flows idle past their timeout and drops lingering closed
    /// entries; returns the close events. Call it every second or so.
    pub fn expire(&mut self, now: u64) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        for (list, timeout) in [
            (L_UNANSWERED, self.idle_ns),
            (L_OTHER, self.idle_ns),
            (L_TCP, self.tcp_idle_ns),
        ] {
            loop {
                let idx = self.tails[list as usize];
                if idx == NIL || now.saturating_sub(self.slab[idx as usize].last_seen) < timeout {
                    break;
                }
                events.push(self.close(idx, CloseReason::IdleTimeout, now));
                self.retire(idx);
            }
        }
        loop {
            let idx = self.tails[L_CLOSED as usize];
            if idx == NIL || now.saturating_sub(self.slab[idx as usize].closed_at) < self.linger_ns
            {
                break;
            }
            self.unlink(idx);
            self.retire(idx);
        }
        events
    }

    /// Closes every open flow with [`CloseReason::Shutdown`] (capture is
    /// stopping); their counts stay for the next [`ConnTable::take_interval`].
    pub fn close_all(&mut self, now: u64) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        for list in [L_UNANSWERED, L_OTHER, L_TCP] {
            loop {
                let idx = self.tails[list as usize];
                if idx == NIL {
                    break;
                }
                events.push(self.close(idx, CloseReason::Shutdown, now));
                self.retire(idx);
            }
        }
        events
    }

    /// Takes the interval's counts and resets them: every flow with traffic
    /// since the last call, plus the interval's eviction, malformed and drop
    /// counters. Closed entries whose linger has passed are freed here.
    pub fn take_interval(&mut self, start: u64, end: u64) -> IntervalCounts {
        let mut flows = Vec::with_capacity(self.active.len());
        let mut active = std::mem::take(&mut self.active);
        for &idx in &active {
            let e = &mut self.slab[idx as usize];
            e.flags &= !F_IN_INTERVAL;
            if e.list == L_FREE {
                continue;
            }
            if !e.interval.is_zero() {
                flows.push(FlowCount {
                    key: e.key,
                    counts: e.interval,
                });
                e.interval = Counts::default();
            }
            if e.list == L_DOOMED {
                self.unlink(idx);
                self.free(idx);
            }
        }
        active.clear();
        self.active = active;
        IntervalCounts {
            start,
            end,
            flows,
            evictions: std::mem::take(&mut self.interval_evictions),
            malformed_packets: std::mem::take(&mut self.interval_malformed),
            dropped_packets: std::mem::take(&mut self.interval_dropped),
        }
    }

    /// A snapshot of the entry for `key`, if held.
    pub fn get(&self, key: &FlowKey) -> Option<FlowInfo> {
        let hash = self.hasher.hash_one(key);
        let idx = *self
            .map
            .find(hash, |&i| self.slab[i as usize].key == *key)?;
        let e = &self.slab[idx as usize];
        let state = match CloseReason::from_code(e.reason) {
            Some(r) => FlowState::Closed(r),
            None if e.flags & (F_FIN_TX | F_FIN_RX) != 0 => FlowState::Closing,
            None => FlowState::Open,
        };
        Some(FlowInfo {
            key: e.key,
            state,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            interval: e.interval,
            totals: e.totals,
            mid_stream: e.flags & F_MID_STREAM != 0,
            answered: e.flags & (F_SEEN_TX | F_SEEN_RX) == F_SEEN_TX | F_SEEN_RX,
        })
    }

    // ---- internals ----

    fn event(&self, idx: u32, kind: FlowEventKind, at: u64) -> FlowEvent {
        let e = &self.slab[idx as usize];
        FlowEvent {
            kind,
            key: e.key,
            at,
            first_seen: e.first_seen,
            totals: e.totals,
            mid_stream: e.flags & F_MID_STREAM != 0,
        }
    }

    fn count(&mut self, idx: u32, now: u64, dir: Direction, bytes: u64) {
        let e = &mut self.slab[idx as usize];
        e.interval.add_packet(dir, bytes);
        e.totals.add_packet(dir, bytes);
        e.last_seen = now;
        if e.flags & F_IN_INTERVAL == 0 {
            e.flags |= F_IN_INTERVAL;
            self.active.push(idx);
        }
    }

    /// Direction bookkeeping, list position and TCP state for an open entry.
    fn update_open(
        &mut self,
        idx: u32,
        now: u64,
        dir: Direction,
        p: &PacketInfo,
        events: &mut Events,
    ) {
        let e = &mut self.slab[idx as usize];
        e.flags |= seen_flag(dir);
        let answered = e.flags & (F_SEEN_TX | F_SEEN_RX) == F_SEEN_TX | F_SEEN_RX;
        let target = if !answered {
            L_UNANSWERED
        } else if p.proto == PROTO_TCP {
            L_TCP
        } else {
            L_OTHER
        };
        if e.list != target || self.heads[target as usize] != idx {
            self.unlink(idx);
            self.push_front(target, idx);
        }
        if p.proto != PROTO_TCP {
            return;
        }
        let flags = p.tcp_flags;
        if flags.rst() {
            let ev = self.close(idx, CloseReason::Rst, now);
            events.push(ev);
            self.push_front(L_CLOSED, idx);
        } else if flags.fin() {
            let e = &mut self.slab[idx as usize];
            e.flags |= match dir {
                Direction::Tx => F_FIN_TX,
                Direction::Rx => F_FIN_RX,
            };
            if e.flags & (F_FIN_TX | F_FIN_RX) == F_FIN_TX | F_FIN_RX {
                let ev = self.close(idx, CloseReason::Fin, now);
                events.push(ev);
                self.push_front(L_CLOSED, idx);
            }
        }
    }

    /// Turns a closed entry into a new open flow starting with this packet
    /// (already counted into the interval).
    fn reopen(&mut self, idx: u32, now: u64, dir: Direction, p: &PacketInfo, events: &mut Events) {
        self.unlink(idx);
        let mid_stream = p.proto == PROTO_TCP && !p.tcp_flags.is_initial_syn();
        let e = &mut self.slab[idx as usize];
        e.totals = Counts::default();
        e.totals.add_packet(dir, u64::from(p.ip_len));
        e.first_seen = now;
        e.closed_at = 0;
        e.reason = 0;
        e.flags = (e.flags & F_IN_INTERVAL) | if mid_stream { F_MID_STREAM } else { 0 };
        self.push_front(L_UNANSWERED, idx);
        self.stats.opened += 1;
        events.push(self.event(idx, FlowEventKind::Open, now));
    }

    /// Marks an open entry closed and unlinks it; returns the event.
    fn close(&mut self, idx: u32, reason: CloseReason, now: u64) -> FlowEvent {
        self.unlink(idx);
        let e = &mut self.slab[idx as usize];
        e.reason = reason.code();
        e.closed_at = now;
        self.stats.closed += 1;
        self.event(idx, FlowEventKind::Close(reason), now)
    }

    /// An unlinked closed entry: freed now if it has nothing left to report,
    /// otherwise kept until the next interval is taken.
    fn retire(&mut self, idx: u32) {
        if self.slab[idx as usize].interval.is_zero() {
            self.free(idx);
        } else {
            self.push_front(L_DOOMED, idx);
        }
    }

    /// A slot for a new entry: a free one, a new one, or an evicted one.
    fn alloc(&mut self, now: u64, events: &mut Events) -> u32 {
        if self.free_head != NIL {
            let idx = self.free_head;
            self.free_head = self.slab[idx as usize].next;
            return idx;
        }
        if self.slab.len() < self.max_entries {
            self.slab.push(Entry::vacant());
            return (self.slab.len() - 1) as u32;
        }
        let idx = self.victim();
        self.interval_evictions += 1;
        self.stats.evictions += 1;
        if !self.slab[idx as usize].is_closed() {
            let ev = self.close(idx, CloseReason::Evicted, now);
            events.push(ev);
        } else {
            self.unlink(idx);
        }
        self.remove_from_map(idx);
        idx
    }

    fn victim(&self) -> u32 {
        for list in [L_DOOMED, L_CLOSED, L_UNANSWERED] {
            let t = self.tails[list as usize];
            if t != NIL {
                return t;
            }
        }
        let tcp = self.tails[L_TCP as usize];
        let other = self.tails[L_OTHER as usize];
        match (tcp, other) {
            (NIL, o) => o,
            (t, NIL) => t,
            (t, o) => {
                if self.slab[t as usize].last_seen <= self.slab[o as usize].last_seen {
                    t
                } else {
                    o
                }
            }
        }
    }

    fn remove_from_map(&mut self, idx: u32) {
        let key = self.slab[idx as usize].key;
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = self.map.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
    }

    /// Removes an unlinked entry from the map and puts its slot on the free
    /// list (keeping its `F_IN_INTERVAL` mark, as `active` may hold it).
    fn free(&mut self, idx: u32) {
        self.remove_from_map(idx);
        let free_head = self.free_head;
        let e = &mut self.slab[idx as usize];
        e.list = L_FREE;
        e.flags &= F_IN_INTERVAL;
        e.interval = Counts::default();
        e.prev = NIL;
        e.next = free_head;
        self.free_head = idx;
    }

    fn push_front(&mut self, list: u8, idx: u32) {
        let head = self.heads[list as usize];
        {
            let e = &mut self.slab[idx as usize];
            e.list = list;
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            self.slab[head as usize].prev = idx;
        } else {
            self.tails[list as usize] = idx;
        }
        self.heads[list as usize] = idx;
    }

    /// Unlinks an entry from its list (no-op when on none).
    fn unlink(&mut self, idx: u32) {
        let (list, prev, next) = {
            let e = &self.slab[idx as usize];
            (e.list, e.prev, e.next)
        };
        if list as usize >= N_LISTS {
            return;
        }
        if prev != NIL {
            self.slab[prev as usize].next = next;
        } else {
            self.heads[list as usize] = next;
        }
        if next != NIL {
            self.slab[next as usize].prev = prev;
        } else {
            self.tails[list as usize] = prev;
        }
        let e = &mut self.slab[idx as usize];
        e.prev = NIL;
        e.next = NIL;
        e.list = L_NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{PROTO_UDP, TcpFlags};
    use etherparse::PacketBuilder;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A packet from `src:sp` to `dst:dp`.
    fn pkt(proto: u8, src: &str, sp: u16, dst: &str, dp: u16, len: u32, flags: u8) -> PacketInfo {
        PacketInfo {
            proto,
            src: ip(src),
            src_port: sp,
            dst: ip(dst),
            dst_port: dp,
            ip_len: len,
            tcp_flags: TcpFlags(flags),
        }
    }

    const ME: &str = "100.64.0.1";
    const PEER: &str = "100.64.0.2";

    /// Sent by this node to PEER.
    fn out(proto: u8, sp: u16, dp: u16, len: u32, flags: u8) -> PacketInfo {
        pkt(proto, ME, sp, PEER, dp, len, flags)
    }

    /// Received by this node from PEER.
    fn inc(proto: u8, sp: u16, dp: u16, len: u32, flags: u8) -> PacketInfo {
        pkt(proto, PEER, sp, ME, dp, len, flags)
    }

    fn key(proto: u8, lp: u16, rp: u16) -> FlowKey {
        FlowKey {
            proto,
            local: ip(ME),
            local_port: lp,
            remote: ip(PEER),
            remote_port: rp,
        }
    }

    fn kinds(events: impl IntoIterator<Item = FlowEvent>) -> Vec<FlowEventKind> {
        events.into_iter().map(|e| e.kind).collect()
    }

    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN;
    const RST: u8 = TcpFlags::RST;

    #[test]
    fn both_directions_land_in_one_entry() {
        let mut t = ConnTable::default();
        let ev = t.observe(T0, Direction::Tx, &out(PROTO_UDP, 5000, 53, 60, 0));
        assert_eq!(kinds(ev), vec![FlowEventKind::Open]);
        let ev = t.observe(T0 + 1, Direction::Rx, &inc(PROTO_UDP, 53, 5000, 120, 0));
        assert!(ev.is_empty());
        assert_eq!(t.len(), 1);
        let info = t.get(&key(PROTO_UDP, 5000, 53)).unwrap();
        assert_eq!(
            info.totals,
            Counts {
                tx_pkts: 1,
                tx_bytes: 60,
                rx_pkts: 1,
                rx_bytes: 120
            }
        );
        assert!(info.answered);
        assert_eq!((info.first_seen, info.last_seen), (T0, T0 + 1));
    }

    #[test]
    fn byte_counts_are_ip_lengths_from_real_frames() {
        let mut t = ConnTable::default();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([100, 64, 0, 1], [100, 64, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut frame, &[0; 100])
            .unwrap();
        frame.resize(frame.len() + 4, 0); // trailing padding is not counted
        let mut raw = Vec::new();
        PacketBuilder::ipv4([100, 64, 0, 2], [100, 64, 0, 1], 64)
            .udp(2000, 1000)
            .write(&mut raw, &[0; 10])
            .unwrap();
        for i in 0..3 {
            t.observe_frame(
                T0 + i,
                Direction::Tx,
                LinkType::Ethernet,
                &frame,
                frame.len(),
            )
            .unwrap();
            t.observe_frame(T0 + i, Direction::Rx, LinkType::RawIp, &raw, raw.len())
                .unwrap();
        }
        let c = t.get(&key(PROTO_UDP, 1000, 2000)).unwrap().totals;
        assert_eq!(c.tx_pkts, 3);
        assert_eq!(c.tx_bytes, 3 * 128);
        assert_eq!(c.rx_pkts, 3);
        assert_eq!(c.rx_bytes, 3 * 38);
    }

    #[test]
    fn tcp_lifecycle_syn_to_fin() {
        let mut t = ConnTable::default();
        let k = key(PROTO_TCP, 40000, 22);
        let ev: Vec<_> = t
            .observe(T0, Direction::Tx, &out(PROTO_TCP, 40000, 22, 60, SYN))
            .collect();
        assert_eq!(kinds(ev.clone()), vec![FlowEventKind::Open]);
        assert!(!ev[0].mid_stream);
        assert!(
            t.observe(
                T0 + 1,
                Direction::Rx,
                &inc(PROTO_TCP, 22, 40000, 60, SYN | ACK)
            )
            .is_empty()
        );
        t.observe(T0 + 2, Direction::Tx, &out(PROTO_TCP, 40000, 22, 52, ACK));
        t.observe(T0 + 3, Direction::Tx, &out(PROTO_TCP, 40000, 22, 100, ACK));
        assert_eq!(t.get(&k).unwrap().state, FlowState::Open);
        assert!(
            t.observe(
                T0 + 4,
                Direction::Tx,
                &out(PROTO_TCP, 40000, 22, 52, FIN | ACK)
            )
            .is_empty()
        );
        assert_eq!(t.get(&k).unwrap().state, FlowState::Closing);
        let ev: Vec<_> = t
            .observe(
                T0 + 5,
                Direction::Rx,
                &inc(PROTO_TCP, 22, 40000, 52, FIN | ACK),
            )
            .collect();
        assert_eq!(
            kinds(ev.clone()),
            vec![FlowEventKind::Close(CloseReason::Fin)]
        );
        assert_eq!(ev[0].at, T0 + 5);
        assert_eq!(
            ev[0].totals,
            Counts {
                tx_pkts: 4,
                tx_bytes: 264,
                rx_pkts: 2,
                rx_bytes: 112
            }
        );
        // The last ACK is a straggler: counted, no new flow.
        assert!(
            t.observe(T0 + 6, Direction::Tx, &out(PROTO_TCP, 40000, 22, 52, ACK))
                .is_empty()
        );
        let info = t.get(&k).unwrap();
        assert_eq!(info.state, FlowState::Closed(CloseReason::Fin));
        assert_eq!(info.interval.tx_pkts, 5);
        // Linger passes: the entry waits for its counts to be reported...
        assert!(t.expire(T0 + 11 * SEC).is_empty());
        assert_eq!(t.len(), 1);
        let counts = t.take_interval(T0, T0 + 11 * SEC);
        assert_eq!(counts.flows.len(), 1);
        assert_eq!(counts.flows[0].counts.tx_pkts, 5);
        // ...and is then gone.
        assert!(t.is_empty());
        let s = t.stats();
        assert_eq!((s.opened, s.closed), (1, 1));
    }

    #[test]
    fn rst_closes_and_new_syn_reopens() {
        let mut t = ConnTable::default();
        t.observe(T0, Direction::Rx, &inc(PROTO_TCP, 5555, 80, 60, SYN));
        t.observe(
            T0 + 1,
            Direction::Tx,
            &out(PROTO_TCP, 80, 5555, 60, SYN | ACK),
        );
        let ev = t.observe(T0 + 2, Direction::Rx, &inc(PROTO_TCP, 5555, 80, 40, RST));
        assert_eq!(kinds(ev), vec![FlowEventKind::Close(CloseReason::Rst)]);
        // Port reuse: a new SYN on the closed entry is a new connection.
        let ev: Vec<_> = t
            .observe(T0 + 3, Direction::Rx, &inc(PROTO_TCP, 5555, 80, 60, SYN))
            .collect();
        assert_eq!(kinds(ev.clone()), vec![FlowEventKind::Open]);
        assert_eq!(ev[0].totals.rx_pkts, 1);
        assert_eq!(ev[0].first_seen, T0 + 3);
        let k = key(PROTO_TCP, 80, 5555);
        assert_eq!(t.get(&k).unwrap().state, FlowState::Open);
        // Interval counts cover both connections of the 5-tuple.
        let counts = t.take_interval(T0, T0 + 5);
        assert_eq!(counts.flows[0].counts.rx_pkts, 3);
    }

    #[test]
    fn mid_stream_tcp_is_flagged() {
        let mut t = ConnTable::default();
        let ev: Vec<_> = t
            .observe(T0, Direction::Tx, &out(PROTO_TCP, 40000, 443, 1500, ACK))
            .collect();
        assert_eq!(ev.len(), 1);
        assert!(ev[0].mid_stream);
        assert!(t.get(&key(PROTO_TCP, 40000, 443)).unwrap().mid_stream);
    }

    #[test]
    fn lone_rst_opens_and_closes() {
        let mut t = ConnTable::default();
        let ev = t.observe(T0, Direction::Rx, &inc(PROTO_TCP, 1, 2, 40, RST | ACK));
        assert_eq!(
            kinds(ev),
            vec![FlowEventKind::Open, FlowEventKind::Close(CloseReason::Rst)]
        );
    }

    #[test]
    fn udp_closes_after_idle_timeout() {
        let mut t = ConnTable::default(); // 60 s
        t.observe(T0, Direction::Tx, &out(PROTO_UDP, 5000, 53, 60, 0));
        t.observe(T0 + SEC, Direction::Rx, &inc(PROTO_UDP, 53, 5000, 90, 0));
        t.take_interval(T0, T0 + 5 * SEC);
        assert!(t.expire(T0 + 60 * SEC).is_empty());
        let ev = t.expire(T0 + 61 * SEC);
        assert_eq!(
            kinds(ev.clone()),
            vec![FlowEventKind::Close(CloseReason::IdleTimeout)]
        );
        assert_eq!(ev[0].totals.rx_bytes, 90);
        assert!(t.is_empty(), "no counts pending: freed at once");
        // The next packet opens a new flow.
        let ev = t.observe(
            T0 + 62 * SEC,
            Direction::Tx,
            &out(PROTO_UDP, 5000, 53, 60, 0),
        );
        assert_eq!(kinds(ev), vec![FlowEventKind::Open]);
    }

    #[test]
    fn idle_close_keeps_unreported_counts_until_taken() {
        let mut t = ConnTable::new(TableConfig {
            idle_timeout: Duration::from_secs(1),
            ..TableConfig::default()
        });
        t.observe(T0, Direction::Tx, &out(PROTO_UDP, 1, 2, 100, 0));
        let ev = t.expire(T0 + 2 * SEC);
        assert_eq!(ev.len(), 1);
        assert_eq!(t.len(), 1);
        let counts = t.take_interval(T0, T0 + 2 * SEC);
        assert_eq!(counts.flows.len(), 1);
        assert_eq!(counts.flows[0].counts.tx_bytes, 100);
        assert!(t.is_empty());
    }

    #[test]
    fn tcp_uses_its_own_idle_timeout_once_answered() {
        let mut t = ConnTable::default();
        t.observe(T0, Direction::Tx, &out(PROTO_TCP, 1, 2, 60, SYN));
        t.observe(T0, Direction::Rx, &inc(PROTO_TCP, 2, 1, 60, SYN | ACK));
        t.observe(T0, Direction::Tx, &out(PROTO_TCP, 3, 4, 60, SYN)); // unanswered
        let ev = t.expire(T0 + 61 * SEC);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].key, key(PROTO_TCP, 3, 4));
        let ev = t.expire(T0 + 601 * SEC);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].key, key(PROTO_TCP, 1, 2));
    }

    #[test]
    fn eviction_order_and_counter() {
        let mut t = ConnTable::new(TableConfig {
            max_entries: 3,
            ..TableConfig::default()
        });
        // A and B answered, A touched last; C unanswered.
        t.observe(T0 + 1, Direction::Tx, &out(PROTO_UDP, 1, 1, 10, 0));
        t.observe(T0 + 1, Direction::Rx, &inc(PROTO_UDP, 1, 1, 10, 0));
        t.observe(T0 + 2, Direction::Tx, &out(PROTO_UDP, 2, 2, 10, 0));
        t.observe(T0 + 2, Direction::Rx, &inc(PROTO_UDP, 2, 2, 10, 0));
        t.observe(T0 + 3, Direction::Tx, &out(PROTO_UDP, 1, 1, 10, 0));
        t.observe(T0 + 4, Direction::Tx, &out(PROTO_TCP, 3, 3, 10, SYN));
        // D: the unanswered C goes first, although A and B are older.
        let ev: Vec<_> = t
            .observe(T0 + 5, Direction::Tx, &out(PROTO_UDP, 4, 4, 10, 0))
            .collect();
        assert_eq!(
            kinds(ev.clone()),
            vec![
                FlowEventKind::Close(CloseReason::Evicted),
                FlowEventKind::Open
            ]
        );
        assert_eq!(ev[0].key, key(PROTO_TCP, 3, 3));
        // D gets answered; E evicts the least recently seen answered flow: B.
        t.observe(T0 + 6, Direction::Rx, &inc(PROTO_UDP, 4, 4, 10, 0));
        let ev: Vec<_> = t
            .observe(T0 + 7, Direction::Tx, &out(PROTO_UDP, 5, 5, 10, 0))
            .collect();
        assert_eq!(ev[0].kind, FlowEventKind::Close(CloseReason::Evicted));
        assert_eq!(ev[0].key, key(PROTO_UDP, 2, 2));
        assert_eq!(t.len(), 3);
        assert!(t.get(&key(PROTO_UDP, 1, 1)).is_some());
        assert!(t.get(&key(PROTO_UDP, 2, 2)).is_none());
        assert_eq!(t.stats().evictions, 2);
        let counts = t.take_interval(T0, T0 + 8);
        assert_eq!(counts.evictions, 2);
        // Evicted entries' unreported counts are gone: A, D, E remain.
        assert_eq!(counts.flows.len(), 3);
        assert_eq!(t.take_interval(T0 + 8, T0 + 9).evictions, 0);
    }

    #[test]
    fn closed_entries_are_evicted_before_open_ones() {
        let mut t = ConnTable::new(TableConfig {
            max_entries: 2,
            ..TableConfig::default()
        });
        t.observe(T0, Direction::Tx, &out(PROTO_TCP, 1, 1, 10, SYN));
        t.observe(T0, Direction::Rx, &inc(PROTO_TCP, 1, 1, 10, RST));
        t.observe(T0 + 1, Direction::Tx, &out(PROTO_UDP, 2, 2, 10, 0));
        let ev: Vec<_> = t
            .observe(T0 + 2, Direction::Tx, &out(PROTO_UDP, 3, 3, 10, 0))
            .collect();
        // The closed TCP entry goes silently (its close was already emitted).
        assert_eq!(kinds(ev), vec![FlowEventKind::Open]);
        assert!(t.get(&key(PROTO_UDP, 2, 2)).is_some());
        assert_eq!(t.stats().evictions, 1);
    }

    #[test]
    fn syn_flood_keeps_memory_flat_and_established_flows() {
        let mut t = ConnTable::new(TableConfig {
            max_entries: 1000,
            ..TableConfig::default()
        });
        t.observe(T0, Direction::Tx, &out(PROTO_TCP, 40000, 22, 60, SYN));
        t.observe(T0, Direction::Rx, &inc(PROTO_TCP, 22, 40000, 60, SYN | ACK));
        let reserved = t.reserved_bytes();
        let mut x: u32 = 12345;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let src = IpAddr::from((x | 0x0a00_0000).to_be_bytes());
            let p = PacketInfo {
                proto: PROTO_TCP,
                src,
                src_port: (x >> 16) as u16,
                dst: ip(ME),
                dst_port: 80,
                ip_len: 60,
                tcp_flags: TcpFlags(SYN),
            };
            t.observe(T0 + 1 + i, Direction::Rx, &p);
            if i.is_multiple_of(10_000) {
                t.take_interval(T0, T0 + i);
            }
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.reserved_bytes(), reserved, "no growth under the flood");
        assert!(t.stats().evictions >= 199_000);
        let established = t.get(&key(PROTO_TCP, 40000, 22)).unwrap();
        assert_eq!(established.state, FlowState::Open);
    }

    #[test]
    fn take_interval_reports_only_active_flows() {
        let mut t = ConnTable::default();
        t.observe(T0, Direction::Tx, &out(PROTO_UDP, 1, 1, 10, 0));
        t.observe(T0, Direction::Tx, &out(PROTO_UDP, 2, 2, 10, 0));
        let c = t.take_interval(T0, T0 + 5 * SEC);
        assert_eq!(c.flows.len(), 2);
        assert_eq!((c.start, c.end), (T0, T0 + 5 * SEC));
        t.observe(T0 + 6 * SEC, Direction::Rx, &inc(PROTO_UDP, 2, 2, 30, 0));
        let c = t.take_interval(T0 + 5 * SEC, T0 + 10 * SEC);
        assert_eq!(c.flows.len(), 1);
        assert_eq!(
            c.flows[0].counts,
            Counts {
                rx_pkts: 1,
                rx_bytes: 30,
                ..Counts::default()
            }
        );
        assert!(
            t.take_interval(T0 + 10 * SEC, T0 + 15 * SEC)
                .flows
                .is_empty()
        );
        assert_eq!(t.len(), 2, "open flows stay");
    }

    #[test]
    fn malformed_frames_are_counted() {
        let mut t = ConnTable::default();
        assert!(
            t.observe_frame(T0, Direction::Rx, LinkType::RawIp, &[0x45, 1, 2], 3)
                .is_err()
        );
        let arp = [0u8; 14 + 28];
        let mut arp = arp.to_vec();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(
            t.observe_frame(T0, Direction::Rx, LinkType::Ethernet, &arp, arp.len())
                .is_err()
        );
        let s = t.stats();
        assert_eq!((s.malformed, s.not_ip), (1, 1));
        let c = t.take_interval(T0, T0 + 1);
        assert_eq!(c.malformed_packets, 1);
        assert_eq!(t.take_interval(T0, T0 + 1).malformed_packets, 0);
    }

    #[test]
    fn close_all_emits_shutdown_and_keeps_counts() {
        let mut t = ConnTable::default();
        t.observe(T0, Direction::Tx, &out(PROTO_UDP, 1, 1, 10, 0));
        t.observe(T0, Direction::Tx, &out(PROTO_TCP, 2, 2, 10, SYN));
        let ev = t.close_all(T0 + 1);
        assert_eq!(ev.len(), 2);
        assert!(
            ev.iter()
                .all(|e| e.kind == FlowEventKind::Close(CloseReason::Shutdown))
        );
        assert_eq!(t.take_interval(T0, T0 + 1).flows.len(), 2);
        assert!(t.is_empty());
    }
}
