//! The reconciler state machine.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::*;

/// FxHash-style hasher: fast, deterministic, good enough for keys we build.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        // Fold the high bits down: a multiply leaves the low bits depending
        // only on the low bits of the input (constant for 100.64.x.y
        // addresses), and the table indexes by the low bits.
        let x = self.0;
        (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// Serialize a hash map as a sorted list of pairs (JSON keys must be strings,
/// and sorting makes snapshots byte-identical).
mod map_vec {
    use super::FxMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::hash::Hash;

    pub fn serialize<K: Serialize + Ord, V: Serialize, S: Serializer>(
        m: &FxMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut v: Vec<(&K, &V)> = m.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.serialize(s)
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<FxMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let v: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

/// Windows of per-node coverage kept (a ring).
const COV_SLOTS: usize = 64;
const SNAPSHOT_VERSION: u32 = 5;
/// Share of a judged span a node may leave uncovered and still count as
/// capturing all of it (clock-offset re-estimates leave gaps of a few ms).
const FULL_COVERAGE: f64 = 0.98;
/// Entries per span of the clock-offset minimum.
const OFFSET_SPAN: u32 = 1024;
/// Longest flow record paired (10 minutes; agents write 5-s records).
const MAX_RECORD_NS: i64 = 600_000_000_000;
/// Largest difference between a record's end (node clock) and its receipt
/// (server clock) paired: a day.
const MAX_CLOCK_ERROR_NS: u64 = 86_400_000_000_000;
/// Largest count of one entry paired (2^48: 281 TB in one record).
const MAX_COUNT: u64 = 1 << 48;
/// Longest capture session whose start is believed (a week).
const MAX_CAPTURE_NS: i64 = 7 * 86_400_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Facts {
    at: i64,
    opted_out: bool,
    flow_logging: bool,
    last_report: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeState {
    tailnet: u32,
    id: String,
    /// Registered through [`Reconciler::update_node`].
    known: bool,
    /// Fact history, oldest first (pruned to the open windows).
    facts: Vec<Facts>,
    /// Server time minus node time: the minimum over the current and the
    /// previous [`OFFSET_SPAN`] entries, so that a stepped clock or one
    /// wild record is forgotten.
    offset: Option<i64>,
    /// Minimum of the previous span.
    offset_prev: Option<i64>,
    /// Entries in the current span.
    offset_n: u32,
    /// Coverage ring: (window, covered ns).
    cov: Vec<(i64, i64)>,
    /// Lost records (sequence gaps not filled by late records).
    gaps: Vec<GapSpan>,
    /// Last record end seen (server time).
    last_flow: Option<i64>,
    /// Last own address learned from its entries.
    own_ip: Option<IpAddr>,
    /// Spans (server time) of records the server discarded because of a
    /// setting (flow logging turned off while they were in flight).
    policy: Vec<(i64, i64)>,
    /// The capture session of the latest record (its `capture_start`, node
    /// clock) and the server time up to which its coverage is counted.
    session: Option<(i64, i64)>,
    stats: Completeness,
}

/// Records of one stream missing between two others, and the server-time
/// span they covered.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct GapSpan {
    start: i64,
    end: i64,
    stream: u32,
    from: u64,
    to: u64,
}

impl GapSpan {
    fn overlaps(&self, a: i64, b: i64) -> bool {
        self.start < b && self.end > a
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingGap {
    from: u64,
    to: u64,
    /// From the end of the record before to the start of the one after
    /// (server time): the missing records end by `span.1`, so the gap is
    /// confirmed (no late record can fill it) a grace period after it.
    span: (i64, i64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stream {
    instance: String,
    proc_id: u32,
    node: u32,
    last_seq: Option<u64>,
    last_end: i64,
    /// seq -> (entries seen, record end in server time).
    seen: BTreeMap<u64, (u32, i64)>,
    pending: Vec<PendingGap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct ConnKey {
    tailnet: u32,
    proto: u8,
    lo: SocketAddr,
    hi: SocketAddr,
}

/// An address as 128 bits (IPv4 mapped into IPv6).
fn ip_bits(a: &SocketAddr) -> u128 {
    match a.ip() {
        IpAddr::V4(v) => u128::from(v.to_ipv6_mapped()),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl std::hash::Hash for ConnKey {
    // Six words instead of the derived per-field, per-byte writes: the key
    // is hashed once per flow entry.
    fn hash<H: Hasher>(&self, h: &mut H) {
        let (lo, hi) = (ip_bits(&self.lo), ip_bits(&self.hi));
        h.write_u64(
            u64::from(self.tailnet) << 40
                | u64::from(self.proto) << 32
                | u64::from(self.lo.port()) << 16
                | u64::from(self.hi.port()),
        );
        h.write_u64(lo as u64);
        h.write_u64((lo >> 64) as u64);
        h.write_u64(hi as u64);
        h.write_u64((hi >> 64) as u64);
    }
}

/// One connection half: the counts one node reported for one connection in
/// one record, placed on the server's clock.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seg {
    start: i64,
    end: i64,
    /// tx_pkts, tx_bytes, rx_pkts, rx_bytes.
    v: [u64; 4],
    /// (stream index, seq) of the record.
    rec: (u32, u64),
    /// From a batch flagged at ingest: never counted, hides missing halves.
    flagged: bool,
    /// Already added to the side's running total.
    absorbed: bool,
    /// One-sided and reported as a missing half: kept out of the totals.
    explained: bool,
}

/// Proof state of one direction of a connection (see `judge`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Dir {
    /// Largest lower bound of sent minus received seen since the last reset
    /// (pkts, bytes): the true value never decreases (loss only grows).
    m_lo: [i64; 2],
    /// Smallest upper bound of (sent minus received) minus the tolerated loss
    /// share of sent since the last reset: that value never increases while
    /// loss stays under the tolerance.
    x_min: [f64; 2],
    /// Server time `m_lo` was reached (a discrepancy it proves happened after).
    m_lo_at: [i64; 2],
    /// Server time `x_min` was reached.
    x_min_at: [i64; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Conn {
    nodes: [Option<u32>; 2],
    /// First window not judged yet.
    next: i64,
    /// Per side (0 = lo, 1 = hi): halves not yet dropped, by start.
    segs: [VecDeque<Seg>; 2],
    /// Per side: running totals of absorbed halves.
    base: [[u64; 4]; 2],
    /// Per direction (0: lo sends).
    dir: [Dir; 2],
    /// Longest half seen (ns): how long absorbed halves stay for pairing.
    max_len: i64,
    /// Until this server time the count proofs restart at every window
    /// instead of judging: a half is missing or untrusted there, and its
    /// share of the straddling halves is unknown (already reported).
    quiet_until: i64,
    /// Per side: end of the latest half seen (dropped or not).
    last_end: [i64; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    cfg: Config,
    now: i64,
    /// First window not judged yet (global horizon).
    horizon: Option<i64>,
    tailnets: Vec<String>,
    #[serde(with = "map_vec")]
    tailnet_ix: FxMap<String, u32>,
    nodes: Vec<NodeState>,
    #[serde(with = "map_vec")]
    node_ix: FxMap<(u32, String), u32>,
    #[serde(with = "map_vec")]
    addr: FxMap<(u32, IpAddr), u32>,
    streams: Vec<Stream>,
    /// instance -> [(proc_id, stream)].
    #[serde(with = "map_vec")]
    stream_ix: FxMap<String, Vec<(u32, u32)>>,
    /// Streams with pending (unreported) gaps.
    gap_streams: std::collections::BTreeSet<u32>,
    #[serde(with = "map_vec")]
    conns: FxMap<ConnKey, Conn>,
    #[serde(with = "map_vec")]
    pairs: FxMap<(u32, u32), Completeness>,
    /// Findings produced by `observe` and not yet returned.
    out: Vec<Finding>,
    /// Per node: the window last asked about and whether the node captured
    /// all of it and a window either side (a cache for `judge`, which asks
    /// once per connection).
    #[serde(skip)]
    full_cover: Vec<(i64, bool)>,
    stats: Stats,
}

/// The double-entry reconciler. See the crate documentation.
pub struct Reconciler {
    st: State,
    /// Cache of the last stream looked up (entries of a record arrive together).
    last_stream: Option<(u32, Arc<str>)>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("now", &self.st.now)
            .field("connections", &self.st.conns.len())
            .field("stats", &self.st.stats)
            .finish()
    }
}

fn check(cfg: &Config) -> Result<(), Error> {
    if cfg.window_ns <= 0 {
        return Err(Error::Config("window must be positive".into()));
    }
    if cfg.grace_ns < 0 || cfg.max_skew_ns < 0 || cfg.margin_ns < 0 {
        return Err(Error::Config("grace and skew must not be negative".into()));
    }
    // Coverage ring must reach back past the oldest open window.
    if (cfg.grace_ns + cfg.max_skew_ns) / cfg.window_ns + 4 >= COV_SLOTS as i64 {
        return Err(Error::Config(format!(
            "grace + max skew must be under {} windows",
            COV_SLOTS - 4
        )));
    }
    if !(0.0..1.0).contains(&cfg.rel_tolerance) || !(0.0..=1.0).contains(&cfg.coverage) {
        return Err(Error::Config(
            "tolerance and coverage must be in [0, 1)".into(),
        ));
    }
    Ok(())
}

impl Reconciler {
    /// A reconciler with `cfg`.
    pub fn new(cfg: Config) -> Result<Reconciler, Error> {
        check(&cfg)?;
        Ok(Reconciler {
            st: State {
                version: SNAPSHOT_VERSION,
                cfg,
                now: i64::MIN,
                horizon: None,
                tailnets: Vec::new(),
                tailnet_ix: FxMap::default(),
                nodes: Vec::new(),
                node_ix: FxMap::default(),
                addr: FxMap::default(),
                streams: Vec::new(),
                stream_ix: FxMap::default(),
                gap_streams: Default::default(),
                conns: FxMap::default(),
                pairs: FxMap::default(),
                out: Vec::new(),
                full_cover: Vec::new(),
                stats: Stats::default(),
            },
            last_stream: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.st.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.st.stats
    }

    /// Connections with open windows.
    pub fn open_connections(&self) -> usize {
        self.st.conns.len()
    }

    /// Connection halves (one node's counts for one connection in one
    /// record) held in memory: what bounds the reconciler's memory.
    pub fn open_halves(&self) -> usize {
        self.st
            .conns
            .values()
            .map(|c| c.segs[0].len() + c.segs[1].len())
            .sum()
    }

    /// The whole state, serialized (postcard after a version number; maps
    /// sorted, so equal states give equal bytes).
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        let mut out = SNAPSHOT_VERSION.to_le_bytes().to_vec();
        postcard::to_io(&self.st, &mut out)?;
        Ok(out)
    }

    /// Rebuild a reconciler from [`Reconciler::snapshot`] output.
    pub fn restore(bytes: &[u8]) -> Result<Reconciler, Error> {
        let (head, body) = bytes
            .split_first_chunk::<4>()
            .ok_or(Error::Snapshot(postcard::Error::DeserializeUnexpectedEnd))?;
        let version = u32::from_le_bytes(*head);
        if version != SNAPSHOT_VERSION {
            return Err(Error::Version(version));
        }
        let st: State = postcard::from_bytes(body)?;
        if st.version != SNAPSHOT_VERSION {
            return Err(Error::Version(st.version));
        }
        check(&st.cfg)?;
        Ok(Reconciler {
            st,
            last_stream: None,
        })
    }

    fn tailnet(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.st.tailnet_ix.get(name) {
            return i;
        }
        let i = self.st.tailnets.len() as u32;
        self.st.tailnets.push(name.to_string());
        self.st.tailnet_ix.insert(name.to_string(), i);
        i
    }

    fn node(&mut self, tailnet: u32, id: &str) -> u32 {
        if let Some(&i) = self.st.node_ix.get(&(tailnet, id.to_string())) {
            return i;
        }
        let i = self.st.nodes.len() as u32;
        self.st.nodes.push(NodeState {
            tailnet,
            id: id.to_string(),
            known: false,
            facts: Vec::new(),
            offset: None,
            offset_prev: None,
            offset_n: 0,
            cov: vec![(i64::MIN, 0); COV_SLOTS],
            gaps: Vec::new(),
            last_flow: None,
            own_ip: None,
            policy: Vec::new(),
            session: None,
            stats: Completeness::default(),
        });
        self.st.node_ix.insert((tailnet, id.to_string()), i);
        i
    }

    /// Record what the server knows about a node from `info.at` on.
    pub fn update_node(&mut self, info: &NodeInfo) {
        let t = self.tailnet(&info.tailnet);
        let n = self.node(t, &info.node);
        for a in &info.addresses {
            self.st.addr.insert((t, *a), n);
        }
        let ns = &mut self.st.nodes[n as usize];
        ns.known = true;
        let f = Facts {
            at: info.at,
            opted_out: info.opted_out,
            flow_logging: info.flow_logging,
            last_report: info.last_report,
        };
        // The history may be told again (the server repeats it on every
        // refresh): one entry per time, one per state change.
        let pos = ns.facts.partition_point(|x| x.at < f.at);
        if let Some(x) = ns.facts.get_mut(pos)
            && x.at == f.at
        {
            *x = f;
            return;
        }
        match pos.checked_sub(1).and_then(|p| ns.facts.get_mut(p)) {
            Some(l) if l.opted_out == f.opted_out && l.flow_logging == f.flow_logging => {
                // Only the report time moved.
                l.last_report = f.last_report.max(l.last_report);
            }
            _ => ns.facts.insert(pos, f),
        }
    }

    /// Account for a record the server did not store because of a setting
    /// (see [`DiscardedRecord`]): its sequence number fills the stream, and
    /// its span explains the node's missing halves there as
    /// [`FindingClass::MissingFlowLoggingOff`].
    pub fn discarded(&mut self, d: &DiscardedRecord) {
        if d.end < d.start || d.end.saturating_sub(d.start) > MAX_RECORD_NS {
            self.st.stats.rejected += 1;
            return;
        }
        let s = self.stream_of(&d.tailnet, &d.node, &d.instance, d.proc_id);
        let node = self.st.streams[s as usize].node;
        let offset = self.offset_of(node, d.logged, d.end, d.sent);
        let (start, end) = (d.start.saturating_add(offset), d.end.saturating_add(offset));
        let st = &mut self.st.streams[s as usize];
        if st.seen.contains_key(&d.proc_seq) {
            return;
        }
        st.seen.insert(d.proc_seq, (0, end));
        self.track_seq(s, node, d.proc_seq, start, end);
        self.st.nodes[node as usize].policy.push((start, end));
    }

    fn stream(&mut self, o: &FlowObservation) -> u32 {
        self.stream_of(&o.tailnet, &o.node, &o.instance, o.proc_id)
    }

    fn stream_of(&mut self, tailnet: &str, node: &str, instance: &Arc<str>, proc_id: u32) -> u32 {
        // Entries of one record come together, with the same `Arc`s.
        if let Some((s, inst)) = &self.last_stream
            && self.st.streams[*s as usize].proc_id == proc_id
            && (Arc::ptr_eq(inst, instance) || **inst == **instance)
        {
            return *s;
        }
        let known = self
            .st
            .stream_ix
            .get(&**instance)
            .and_then(|v| v.iter().find(|(p, _)| *p == proc_id))
            .map(|(_, s)| *s);
        let s = match known {
            Some(s) => s,
            None => {
                let t = self.tailnet(tailnet);
                let n = self.node(t, node);
                let s = self.st.streams.len() as u32;
                self.st.streams.push(Stream {
                    instance: instance.to_string(),
                    proc_id,
                    node: n,
                    last_seq: None,
                    last_end: i64::MIN,
                    seen: BTreeMap::new(),
                    pending: Vec::new(),
                });
                self.st
                    .stream_ix
                    .entry(instance.to_string())
                    .or_default()
                    .push((proc_id, s));
                s
            }
        };
        self.last_stream = Some((s, instance.clone()));
        s
    }

    /// The node's clock offset (server time minus node time) with this
    /// record taken into account. The best estimate is the smallest delay
    /// seen recently: from the upload's send time when the agent gave it
    /// (time in flight only), else from the record's end (which includes
    /// the time the record waited in the agent's queue).
    fn offset_of(&mut self, node: u32, logged: i64, end: i64, sent: Option<i64>) -> i64 {
        let ns = &mut self.st.nodes[node as usize];
        let cand = logged.saturating_sub(sent.filter(|s| *s >= end).unwrap_or(end));
        ns.offset = Some(ns.offset.map_or(cand, |x| x.min(cand)));
        ns.offset_n += 1;
        let off = match (ns.offset, ns.offset_prev) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(cand),
        };
        if ns.offset_n >= OFFSET_SPAN {
            ns.offset_prev = ns.offset.take();
            ns.offset_n = 0;
        }
        off
    }

    /// Feed one traffic entry. Duplicates (same instance, `proc_id`,
    /// `proc_seq` and entry index) are ignored; parts of an entry falling
    /// into windows already judged are counted in [`Stats::too_late`].
    pub fn observe(&mut self, o: &FlowObservation) {
        self.st.stats.observed += 1;
        // A record longer than MAX_RECORD_NS, ending before it starts,
        // received a day away from its end, or with counts no link carries
        // in one record is not a flow record any agent writes: left out (it
        // would only blur the pairing).
        let counts = [o.tx_pkts, o.tx_bytes, o.rx_pkts, o.rx_bytes];
        if o.end < o.start
            || o.end.saturating_sub(o.start) > MAX_RECORD_NS
            || o.logged.saturating_sub(o.end).unsigned_abs() > MAX_CLOCK_ERROR_NS
            || counts.iter().any(|c| *c > MAX_COUNT)
        {
            self.st.stats.rejected += 1;
            return;
        }
        let s = self.stream(o);
        let node = self.st.streams[s as usize].node;
        let tailnet = self.st.nodes[node as usize].tailnet;
        let offset = self.offset_of(node, o.logged, o.end, o.sent);
        let start = o.start.saturating_add(offset);
        let end = o.end.saturating_add(offset);

        // Dedup and sequence tracking, once per record.
        let first_of_record = {
            let st = &mut self.st.streams[s as usize];
            match st.seen.get_mut(&o.proc_seq) {
                Some(e) => {
                    if o.index < e.0 {
                        self.st.stats.duplicates += 1;
                        return;
                    }
                    e.0 = o.index.saturating_add(1);
                    false
                }
                None => {
                    st.seen.insert(o.proc_seq, (o.index.saturating_add(1), end));
                    true
                }
            }
        };
        if first_of_record {
            let capture = o
                .capture_start
                .filter(|c| *c <= o.start && o.start - *c <= MAX_CAPTURE_NS)
                .map(|c| (c, c.saturating_add(offset)));
            self.new_record(s, node, o, start, end, capture);
        }
        if let Some(v) = o.integrity
            && v.excluded()
        {
            self.st.stats.excluded += 1;
            if o.kind == FlowKind::Virtual {
                self.add_half(tailnet, node, s, o, start, end, true);
            }
            return;
        }
        // The server's inventory, not the agent's classification, decides
        // whether both ends are nodes: an agent that had not yet heard of a
        // peer (it joined or moved since the agent's last report) files the
        // traffic as exit or subnet traffic.
        if o.kind != FlowKind::Virtual
            && !(self.st.addr.get(&(tailnet, o.src.ip())) == Some(&node)
                && self
                    .st
                    .addr
                    .get(&(tailnet, o.dst.ip()))
                    .is_some_and(|p| *p != node))
        {
            return;
        }
        // Learn the reporting node's own address.
        let ip = o.src.ip();
        if self.st.nodes[node as usize].own_ip != Some(ip) {
            self.st.addr.entry((tailnet, ip)).or_insert(node);
            self.st.nodes[node as usize].own_ip = Some(ip);
        }
        self.add_half(tailnet, node, s, o, start, end, false);
    }

    /// Store one connection half (or account for it at once when its
    /// window was already judged).
    #[allow(clippy::too_many_arguments)]
    fn add_half(
        &mut self,
        tailnet: u32,
        node: u32,
        s: u32,
        o: &FlowObservation,
        start: i64,
        end: i64,
        flagged: bool,
    ) {
        let w = self.st.cfg.window_ns;
        let rel = self.st.cfg.rel_tolerance;
        let (key, side) = conn_key(tailnet, o);
        let horizon = self.st.horizon;
        let conn = self.st.conns.entry(key).or_insert_with(|| {
            let next = start.div_euclid(w).max(horizon.unwrap_or(i64::MIN));
            let dir = Dir {
                m_lo_at: [next * w; 2],
                x_min_at: [next * w; 2],
                ..Dir::default()
            };
            Conn {
                nodes: [None, None],
                next,
                segs: [VecDeque::new(), VecDeque::new()],
                base: [[0; 4]; 2],
                dir: [dir; 2],
                max_len: 0,
                quiet_until: i64::MIN,
                last_end: [i64::MIN; 2],
            }
        });
        conn.nodes[side] = Some(node);
        if conn.nodes[1 - side].is_none() {
            conn.nodes[1 - side] = self.st.addr.get(&(tailnet, o.dst.ip())).copied();
        }
        let v = [o.tx_pkts, o.tx_bytes, o.rx_pkts, o.rx_bytes];
        if (end - 1).max(start).div_euclid(w) < conn.next {
            // Its window was judged: count it without judging it, shifting
            // the proofs by the same amount so that it raises nothing.
            self.st.stats.too_late += 1;
            if flagged {
                return;
            }
            for (b, x) in conn.base[side].iter_mut().zip(v) {
                *b = b.saturating_add(x);
            }
            for c in 0..2 {
                let tx = si(v[c]);
                let sd = &mut conn.dir[side];
                sd.m_lo[c] = sd.m_lo[c].saturating_add(tx);
                sd.x_min[c] += tx as f64 * (1.0 - rel);
                let rx = si(v[2 + c]);
                let rd = &mut conn.dir[1 - side];
                rd.m_lo[c] = rd.m_lo[c].saturating_sub(rx);
                rd.x_min[c] -= rx as f64;
            }
            return;
        }
        conn.max_len = conn.max_len.max(end - start);
        if !flagged {
            conn.last_end[side] = conn.last_end[side].max(end);
        }
        let rec = (s, o.proc_seq);
        let segs = &mut conn.segs[side];
        // Kept in order of start (late records are rare: search from the back).
        let pos = segs
            .iter()
            .rposition(|x| x.start <= start)
            .map_or(0, |p| p + 1);
        if pos > 0
            && let Some(last) = segs.get_mut(pos - 1)
            && last.start == start
            && last.end == end
            && last.rec == rec
            && last.flagged == flagged
        {
            for (a, x) in last.v.iter_mut().zip(v) {
                *a = a.saturating_add(x);
            }
            return;
        }
        segs.insert(
            pos,
            Seg {
                start,
                end,
                v,
                rec,
                flagged,
                absorbed: false,
                explained: false,
            },
        );
    }

    /// Count `[a, b)` (server time) as covered by the node's capture.
    fn add_coverage(&mut self, node: u32, a: i64, b: i64) {
        let w = self.st.cfg.window_ns;
        if b <= a {
            return;
        }
        // Only the windows the ring holds.
        let a = a.max(b.saturating_sub(w.saturating_mul(COV_SLOTS as i64)));
        let ns = &mut self.st.nodes[node as usize];
        for win in a.div_euclid(w)..=(b - 1).div_euclid(w) {
            let ov = ((win + 1) * w).min(b) - (win * w).max(a);
            let slot = &mut ns.cov[win.rem_euclid(COV_SLOTS as i64) as usize];
            if slot.0 != win {
                *slot = (win, 0);
            }
            slot.1 = (slot.1 + ov.max(0)).min(w);
        }
    }

    /// First entry of a record: coverage, sequence, integrity. `capture`
    /// is the start of the record's capture session (node clock, server
    /// time), when the agent gave it.
    fn new_record(
        &mut self,
        s: u32,
        node: u32,
        o: &FlowObservation,
        start: i64,
        end: i64,
        capture: Option<(i64, i64)>,
    ) {
        {
            let ns = &mut self.st.nodes[node as usize];
            ns.last_flow = Some(ns.last_flow.map_or(end, |l| l.max(end)));
        }
        self.add_coverage(node, start, end);
        // Inside one capture session, the intervals without a record had no
        // traffic: covered too.
        if let Some((session, session_start)) = capture {
            let ns = &mut self.st.nodes[node as usize];
            let from = match ns.session {
                Some((cur, to)) if cur == session => to,
                _ => session_start,
            };
            let to = ns
                .session
                .filter(|(cur, _)| *cur == session)
                .map_or(end, |(_, to)| to.max(end));
            ns.session = Some((session, to));
            self.add_coverage(node, from, start);
        }
        if o.sequenced {
            self.track_seq(s, node, o.proc_seq, start, end);
        }
        self.integrity(node, o, start, end);
    }

    /// Sequence tracking of one record of stream `s`: gaps opened and filled.
    fn track_seq(&mut self, s: u32, node: u32, proc_seq: u64, start: i64, end: i64) {
        let st = &mut self.st.streams[s as usize];
        match st.last_seq {
            Some(last) if last.checked_add(1).is_some_and(|n| proc_seq > n) => {
                let span = (st.last_end.min(start), start);
                self.st.gap_streams.insert(s);
                st.pending.push(PendingGap {
                    from: last + 1,
                    to: proc_seq - 1,
                    span,
                });
                self.st.nodes[node as usize].gaps.push(GapSpan {
                    start: span.0,
                    end: span.1,
                    stream: s,
                    from: last + 1,
                    to: proc_seq - 1,
                });
            }
            Some(last) if proc_seq < last => {
                // A late record fills part of a gap.
                let mut split = Vec::new();
                st.pending.retain_mut(|g| {
                    if g.from <= proc_seq && proc_seq <= g.to {
                        if proc_seq > g.from {
                            split.push(PendingGap {
                                to: proc_seq - 1,
                                ..g.clone()
                            });
                        }
                        if proc_seq < g.to {
                            g.from = proc_seq + 1;
                            return true;
                        }
                        return false;
                    }
                    true
                });
                st.pending.extend(split);
                // The node's lost-record spans too.
                let q = proc_seq;
                let gaps = &mut self.st.nodes[node as usize].gaps;
                let mut parts = Vec::new();
                gaps.retain_mut(|g| {
                    if g.stream != s || q < g.from || q > g.to {
                        return true;
                    }
                    if q > g.from {
                        parts.push(GapSpan { to: q - 1, ..*g });
                    }
                    if q < g.to {
                        g.from = q + 1;
                        return true;
                    }
                    false
                });
                gaps.extend(parts);
            }
            _ => {}
        }
        if st.last_seq.is_none_or(|l| proc_seq > l) {
            st.last_seq = Some(proc_seq);
            st.last_end = end;
        }
    }

    /// An integrity finding for a record from a batch flagged at ingest.
    fn integrity(&mut self, node: u32, o: &FlowObservation, start: i64, end: i64) {
        if let Some(v) = o.integrity
            && v != BatchVerdict::Ok
        {
            let severity = match v {
                BatchVerdict::BadSignature | BatchVerdict::BrokenChain | BatchVerdict::Replay => {
                    Severity::Critical
                }
                BatchVerdict::Gap => Severity::Medium,
                BatchVerdict::Duplicate | BatchVerdict::Unsigned | BatchVerdict::Ok => {
                    Severity::Low
                }
            };
            let tailnet = self.st.tailnets[self.st.nodes[node as usize].tailnet as usize].clone();
            let rec = RecordRef {
                instance: o.instance.to_string(),
                proc_id: o.proc_id,
                proc_seq: o.proc_seq,
            };
            let detail = format!(
                "record {}/{}/{} of node {} came in a batch flagged {:?} at ingest{}",
                rec.instance,
                rec.proc_id,
                rec.proc_seq,
                o.node,
                v,
                if v.excluded() {
                    "; its entries are not paired"
                } else {
                    ""
                }
            );
            let f = finding(
                FindingClass::Integrity,
                severity,
                tailnet,
                o.node.to_string(),
                None,
                Window { start, end },
                Evidence {
                    verdict: Some(v),
                    sender_record: Some(rec),
                    ..Evidence::default()
                },
                detail,
            );
            self.st.out.push(f);
        }
    }

    /// Move the server clock to `now` (Unix ns) and judge every window whose
    /// successor ended more than the grace period ago. Returns the new
    /// findings, sorted by window start and ID.
    pub fn advance(&mut self, now: i64) -> Vec<Finding> {
        if now > self.st.now {
            self.st.now = now;
        }
        let cfg = self.st.cfg;
        let w = cfg.window_ns;
        // Window k is judged once it ended `grace` ago.
        let judge_to = (self.st.now - cfg.grace_ns).div_euclid(w) - 1;
        let mut out = std::mem::take(&mut self.st.out);
        self.gaps(&mut out);
        if self.st.horizon.is_some_and(|h| judge_to < h) {
            return sorted(out);
        }
        self.st.horizon = Some(judge_to + 1);
        // Coverage answers hold for this round only: records that came
        // since may have filled a window judged late for other connections.
        self.st.full_cover.clear();
        let mut conns = std::mem::take(&mut self.st.conns);
        let mut pair_updates: Vec<((u32, u32), bool, i64)> = Vec::new();
        let mut emptied = false;
        for (key, conn) in conns.iter_mut() {
            while conn.next <= judge_to {
                if conn.segs[0].is_empty() && conn.segs[1].is_empty() {
                    break;
                }
                let k = conn.next;
                if self.gap_pending(conn, k) {
                    // A record the window needs may still come late.
                    break;
                }
                self.judge(key, conn, k, &mut out, &mut pair_updates);
                conn.next += 1;
            }
            emptied |= conn.segs[0].is_empty() && conn.segs[1].is_empty();
        }
        if emptied {
            conns.retain(|_, conn| !(conn.segs[0].is_empty() && conn.segs[1].is_empty()));
        }
        self.st.conns = conns;
        for (p, ok, start) in pair_updates {
            let c = self.st.pairs.entry(p).or_default();
            bump(c, ok, start);
        }
        self.prune(judge_to);
        self.st.stats.findings += out.len() as u64;
        sorted(out)
    }

    fn prune(&mut self, judge_to: i64) {
        let w = self.st.cfg.window_ns;
        let keep_from = (judge_to - 2) * w;
        for n in &mut self.st.nodes {
            n.gaps.retain(|g| g.end >= keep_from);
            n.policy.retain(|p| p.1 >= keep_from);
            // Keep the last fact before the open windows and everything after.
            let first_live = n.facts.iter().rposition(|f| f.at <= keep_from).unwrap_or(0);
            if first_live > 0 {
                n.facts.drain(..first_live);
            }
        }
        let late = keep_from - self.st.cfg.max_skew_ns - self.st.cfg.grace_ns;
        for s in &mut self.st.streams {
            // Oldest first (sequence follows time); what is left behind by
            // an out-of-order record goes on a later round.
            while let Some((&k, v)) = s.seen.first_key_value()
                && v.1 < late
                && Some(k) != s.last_seq
            {
                s.seen.pop_first();
            }
        }
    }

    fn gaps(&mut self, out: &mut Vec<Finding>) {
        let now = self.st.now;
        let grace = self.st.cfg.grace_ns;
        // Only the streams with pending gaps (advance runs every second).
        let with_gaps = std::mem::take(&mut self.st.gap_streams);
        for &s in &with_gaps {
            let st = &mut self.st.streams[s as usize];
            if st.pending.is_empty() {
                continue;
            }
            let node = &self.st.nodes[st.node as usize];
            let mut keep = Vec::new();
            for g in st.pending.drain(..) {
                if g.span.1.saturating_add(grace) > now {
                    keep.push(g);
                    continue;
                }
                let n = g.to - g.from + 1;
                out.push(finding(
                    FindingClass::SequenceGap,
                    Severity::Medium,
                    self.st.tailnets[node.tailnet as usize].clone(),
                    node.id.clone(),
                    None,
                    Window {
                        start: g.span.0,
                        end: g.span.1,
                    },
                    Evidence {
                        missing_seq: Some((g.from, g.to)),
                        ..Evidence::default()
                    },
                    format!(
                        "node {} instance {} proc_id {}: {} record(s) missing (proc_seq {}..={})",
                        node.id, st.instance, st.proc_id, n, g.from, g.to
                    ),
                ));
            }
            if !keep.is_empty() {
                self.st.gap_streams.insert(s);
            }
            st.pending = keep;
        }
    }

    /// Whether a node of `conn` has an unconfirmed gap near window `k`.
    fn gap_pending(&self, conn: &Conn, k: i64) -> bool {
        let cfg = &self.st.cfg;
        let (a, b) = (
            k * cfg.window_ns - conn.max_len - cfg.margin_ns,
            (k + 1) * cfg.window_ns + conn.max_len + cfg.margin_ns,
        );
        conn.nodes.iter().flatten().any(|&n| {
            self.st.nodes[n as usize]
                .gaps
                .iter()
                .any(|g| g.end.saturating_add(cfg.grace_ns) > self.st.now && g.overlaps(a, b))
        })
    }

    /// Whether the node captured all of window `k`, the margin after it and
    /// a window before it (where the count bounds of window `k` rest), and
    /// none of its records there was discarded.
    fn fully_covered(&mut self, node: u32, k: i64) -> bool {
        let n = node as usize;
        if self.st.full_cover.len() <= n {
            let len = self.st.nodes.len().max(n + 1);
            self.st.full_cover.resize(len, (i64::MIN, false));
        }
        if self.st.full_cover[n].0 == k {
            return self.st.full_cover[n].1;
        }
        let (w, m) = (self.st.cfg.window_ns, self.st.cfg.margin_ns);
        let (a, b) = (k * w - w - m, (k + 1) * w + m);
        // A record the server discarded covered its span, but what it
        // counted is unknown (and a capture session's later record may
        // have counted the span as idle).
        let discarded = self.st.nodes[n].policy.iter().any(|p| p.0 < b && p.1 > a);
        let full = !discarded && self.span_coverage(node, a, b) >= FULL_COVERAGE;
        self.st.full_cover[n] = (k, full);
        full
    }

    /// Share (0..=1) of `[a, b)` covered by the node's records.
    fn span_coverage(&self, node: u32, a: i64, b: i64) -> f64 {
        let w = self.st.cfg.window_ns;
        if b <= a {
            return 1.0;
        }
        let mut covered = 0.0;
        for win in a.div_euclid(w)..=(b - 1).div_euclid(w) {
            let ov = ((win + 1) * w).min(b) - (win * w).max(a);
            covered += self.coverage(node, win).clamp(0, w) as f64 / w as f64 * ov as f64;
        }
        (covered / (b - a) as f64).clamp(0.0, 1.0)
    }

    fn coverage(&self, node: u32, win: i64) -> i64 {
        let slot = self.st.nodes[node as usize].cov[win.rem_euclid(COV_SLOTS as i64) as usize];
        if slot.0 == win { slot.1 } else { 0 }
    }

    fn facts(&self, node: u32, t: i64) -> Option<&Facts> {
        let f = &self.st.nodes[node as usize].facts;
        f.iter().rev().find(|f| f.at <= t).or(f.first())
    }

    /// Whether flow logging was off for the node at some moment of
    /// `[a, b)`, or the server discarded one of its records there because
    /// of it (records in flight while it was switched off).
    fn logging_off_in(&self, node: u32, a: i64, b: i64) -> bool {
        let ns = &self.st.nodes[node as usize];
        let first = ns.facts.iter().rposition(|f| f.at <= a).unwrap_or(0);
        ns.facts[first..]
            .iter()
            .take_while(|f| f.at < b)
            .any(|f| !f.flow_logging)
            || ns.policy.iter().any(|p| p.0 < b && p.1 > a)
    }

    fn rec_ref(&self, r: Option<(u32, u64)>) -> Option<RecordRef> {
        r.map(|(s, seq)| {
            let st = &self.st.streams[s as usize];
            RecordRef {
                instance: st.instance.clone(),
                proc_id: st.proc_id,
                proc_seq: seq,
            }
        })
    }

    /// Judge window `k` of one connection.
    ///
    /// Two checks, both proofs rather than estimates, so that clean traffic
    /// never raises a finding however bursty it is and wherever the two
    /// nodes cut their intervals:
    ///
    /// 1. Missing half: a half ending in the window with traffic above the
    ///    absolute tolerance, and no half of the other node overlapping it
    ///    (within the clock margin).
    /// 2. Count mismatch: for each direction, the sent and received running
    ///    totals at the window end `T` are bounded by the halves that ended
    ///    before `T - margin` (lower) and those that started before
    ///    `T + margin` (upper). Sent minus received is the loss (plus
    ///    traffic in flight, covered by the margin): it never decreases, and
    ///    grows by at most the loss tolerance of what was sent. A bound that
    ///    breaks either rule proves that a node reported wrong counts.
    fn judge(
        &mut self,
        key: &ConnKey,
        conn: &mut Conn,
        k: i64,
        out: &mut Vec<Finding>,
        pairs: &mut Vec<((u32, u32), bool, i64)>,
    ) {
        let cfg = self.st.cfg;
        let w = cfg.window_ns;
        let m = cfg.margin_ns;
        let (ws, t) = (k * w, (k + 1) * w);
        // Late resolution of the peer by address.
        for side in 0..2 {
            if conn.nodes[side].is_none() {
                let ip = if side == 0 { key.lo.ip() } else { key.hi.ip() };
                conn.nodes[side] = self.st.addr.get(&(key.tailnet, ip)).copied();
            }
        }
        let abs = [
            cfg.abs_tolerance_pkts as i64,
            cfg.abs_tolerance_bytes as i64,
        ];
        let in_window = |g: &Seg| (g.end - 1).max(g.start).div_euclid(w) == k;
        let overlaps = |g: &Seg, a: i64, b: i64| g.start < b && g.end > a;

        // 1. Missing halves among the halves ending in this window.
        let mut missing: Option<(usize, Seg)> = None; // (side of the present half, it)
        let mut quiet = conn.quiet_until;
        let mut missing_lost = false;
        let lim = t + m;
        for side in 0..2 {
            let (left, right) = conn.segs.split_at_mut(1);
            let (mine, other) = if side == 0 {
                (&mut left[0], &right[0])
            } else {
                (&mut right[0], &left[0])
            };
            for g in mine.iter_mut().take_while(|g| g.start < lim) {
                if g.flagged || !in_window(g) {
                    continue;
                }
                let paired = other
                    .iter()
                    .take_while(|o| o.start < g.end + m)
                    .any(|o| o.end > g.start - m);
                // A one-sided half is kept out of the totals: its other half
                // is what is missing.
                g.explained |= !paired;
                let big = |c: usize| g.v[c] as i64 > abs[0] || g.v[c + 1] as i64 > abs[1];
                if !(big(0) || big(2)) {
                    continue;
                }
                // A record of the other node lost inside this half's span:
                // that node's half is (at least partly) missing.
                let lost = conn.nodes[1 - side].is_some_and(|n| {
                    self.st.nodes[n as usize]
                        .gaps
                        .iter()
                        .any(|x| x.overlaps(g.start + m, g.end - m))
                });
                if !paired || lost {
                    quiet = quiet.max(g.end + conn.max_len + 2 * m);
                    if missing.is_none() {
                        missing = Some((side, *g));
                        missing_lost = lost;
                    }
                }
            }
        }

        // 2. Running totals at T.
        for (segs, base) in conn.segs.iter_mut().zip(conn.base.iter_mut()) {
            for g in segs.iter_mut().take_while(|g| g.start < t) {
                if !g.absorbed && g.end <= t - m {
                    g.absorbed = true;
                    if !g.flagged && !g.explained {
                        for (b, x) in base.iter_mut().zip(g.v) {
                            *b = b.saturating_add(x);
                        }
                    }
                }
            }
        }
        let lo = conn.base;
        let mut hi = lo;
        for (segs, hi) in conn.segs.iter().zip(hi.iter_mut()) {
            for g in segs.iter().take_while(|g| g.start < lim) {
                if g.flagged {
                    if overlaps(g, ws - m, t + m) {
                        quiet = quiet.max(g.end + conn.max_len + 2 * m);
                    }
                } else if !g.absorbed && !g.explained {
                    for (h, x) in hi.iter_mut().zip(g.v) {
                        *h = h.saturating_add(x);
                    }
                }
            }
        }
        conn.quiet_until = quiet;
        // Counts are compared only where both nodes captured the whole
        // span the bounds rest on: at a capture's start or end (an agent
        // starting, stopping, or flow logging switched) one end saw traffic
        // the other was not there to see.
        let partial = conn
            .nodes
            .iter()
            .flatten()
            .any(|&n| !self.fully_covered(n, k));
        let quiet = t <= quiet || partial;
        let rel = cfg.rel_tolerance;
        // (direction, proven excess in pkts/bytes, receiver short?, since)
        let mut bad: Option<(usize, [i64; 2], bool, i64)> = None;
        for d in 0..2 {
            let (sd, rd) = (d, 1 - d);
            let st = &mut conn.dir[d];
            let mut excess = [0i64; 2];
            let mut up = false;
            let mut viol = false;
            let mut since = ws;
            let mut next_dir = *st;
            for c in 0..2 {
                let (s_lo, s_hi) = (si(lo[sd][c]), si(hi[sd][c]));
                let (r_lo, r_hi) = (si(lo[rd][2 + c]), si(hi[rd][2 + c]));
                let (d_lo, d_hi) = (s_lo.saturating_sub(r_hi), s_hi.saturating_sub(r_lo));
                let x_lo = d_lo as f64 - rel * s_hi as f64;
                let x_hi = d_hi as f64 - rel * s_lo as f64;
                if d_hi < st.m_lo[c].saturating_sub(abs[c]) {
                    viol = true;
                    excess[c] = d_hi.saturating_sub(st.m_lo[c]);
                    since = since.min(st.m_lo_at[c]);
                } else if x_lo > st.x_min[c] + abs[c] as f64 {
                    viol = true;
                    up = true;
                    excess[c] = (x_lo - st.x_min[c]) as i64;
                    since = since.min(st.x_min_at[c]);
                }
                // The latest point reaching the reference: a discrepancy it
                // proves happened after it.
                if d_lo >= st.m_lo[c] {
                    next_dir.m_lo[c] = d_lo;
                    next_dir.m_lo_at[c] = t;
                }
                if x_hi <= st.x_min[c] {
                    next_dir.x_min[c] = x_hi;
                    next_dir.x_min_at[c] = t;
                }
            }
            if viol || quiet {
                // Start the proofs again from the bounds at T.
                for c in 0..2 {
                    let (s_lo, s_hi) = (si(lo[sd][c]), si(hi[sd][c]));
                    let (r_lo, r_hi) = (si(lo[rd][2 + c]), si(hi[rd][2 + c]));
                    next_dir.m_lo[c] = s_lo.saturating_sub(r_hi);
                    next_dir.x_min[c] = s_hi.saturating_sub(r_lo) as f64 - rel * s_lo as f64;
                    next_dir.m_lo_at[c] = t;
                    next_dir.x_min_at[c] = t;
                }
            }
            *st = next_dir;
            if viol && !quiet && bad.is_none() {
                bad = Some((d, excess, up, since));
            }
        }

        // Drop halves nothing can pair with any more.
        let keep_after = t - 2 * m - conn.max_len;
        for segs in conn.segs.iter_mut() {
            while segs
                .front()
                .is_some_and(|g| g.absorbed && g.end < keep_after)
            {
                segs.pop_front();
            }
        }

        let any = conn.segs.iter().any(|segs| {
            segs.iter()
                .take_while(|g| g.start < t)
                .any(|g| !g.flagged && g.end > ws)
        }) || missing.is_some()
            || bad.is_some();
        if !any {
            return;
        }
        self.st.stats.judged += 1;
        let ok = missing.is_none() && bad.is_none();
        for n in conn.nodes.iter().flatten() {
            bump(&mut self.st.nodes[*n as usize].stats, ok, ws);
        }
        if let [Some(x), Some(y)] = conn.nodes {
            pairs.push(((x.min(y), x.max(y)), ok, ws));
        }
        if ok {
            return;
        }
        // A count mismatch happened between the last point its proof rests
        // on and the window end; a missing half in the window.
        let window = Window {
            start: match (missing, bad) {
                (None, Some(b)) => b.3.min(ws),
                _ => ws,
            },
            end: t,
        };
        let addr = |side: usize| if side == 0 { key.lo } else { key.hi };
        // Sums over the finding's window (of the halves still held).
        let sum = |side: usize| {
            let mut v = [0u64; 4];
            for g in conn.segs[side]
                .iter()
                .filter(|g| !g.flagged && overlaps(g, window.start, window.end))
            {
                for (a, x) in v.iter_mut().zip(g.v) {
                    *a = a.saturating_add(x);
                }
            }
            v
        };
        let first_rec = |side: usize| {
            conn.segs[side]
                .iter()
                .find(|g| !g.flagged && overlaps(g, ws - m, t + m))
                .map(|g| g.rec)
        };
        let (s, short, unexplained) = match (missing, bad) {
            (Some((side, g)), _) => {
                // The present half sent (the other did not receive) or received.
                let sends = g.v[1] >= g.v[3];
                let s = if sends { side } else { 1 - side };
                let c = if sends {
                    [g.v[0], g.v[1]]
                } else {
                    [g.v[2], g.v[3]]
                };
                (s, 1 - side, [c[0] as i64, c[1] as i64])
            }
            (None, Some((d, excess, up, _))) => (d, if up { 1 - d } else { d }, excess),
            (None, None) => return,
        };
        let r = 1 - s;
        let (sv, rv) = (sum(s), sum(r));
        let mut ev = Evidence {
            proto: Some(key.proto),
            src: Some(addr(s)),
            dst: Some(addr(r)),
            sent: Some(Counts {
                pkts: sv[0],
                bytes: sv[1],
            }),
            received: Some(Counts {
                pkts: rv[2],
                bytes: rv[3],
            }),
            unexplained: Some(Counts {
                pkts: unexplained[0].unsigned_abs(),
                bytes: unexplained[1].unsigned_abs(),
            }),
            sender_record: self.rec_ref(first_rec(s)),
            receiver_record: self.rec_ref(first_rec(r)),
            ..Evidence::default()
        };
        let other = 1 - short;
        let tailnet = self.st.tailnets[key.tailnet as usize].clone();
        let name = |n: Option<u32>| n.map(|n| self.st.nodes[n as usize].id.clone());
        let Some(x) = conn.nodes[short] else {
            let Some(reporter) = name(conn.nodes[other]) else {
                return;
            };
            let ip = addr(short).ip().to_string();
            out.push(finding(
                FindingClass::NodeUnknown,
                Severity::High,
                tailnet,
                reporter.clone(),
                Some(ip.clone()),
                window,
                ev,
                format!(
                    "node {reporter} logged traffic with {ip}, an address no registered node has"
                ),
            ));
            return;
        };
        let xname = self.st.nodes[x as usize].id.clone();
        let peer = name(conn.nodes[other]);
        let facts = self.facts(x, t).cloned();
        ev.last_report = facts.as_ref().and_then(|f| f.last_report);
        // Coverage of the silent node over the one-sided half's span (or
        // the window, for counts).
        let (a, b) = match missing {
            Some((_, g)) => (g.start, g.end),
            None => (window.start.max(t - 3 * w), window.end),
        };
        let cov = self.span_coverage(x, a, b);
        ev.coverage_permille = Some((cov * 1000.0).round() as u32);
        let gap = self.st.nodes[x as usize]
            .gaps
            .iter()
            .any(|g| g.overlaps(a - m, b + m));
        let covered = cov >= cfg.coverage;
        // The silent node has no half of this connection around the window.
        // Or the other node goes on reporting the connection in the next
        // window and this one does not (the edge of a deletion).
        let has = |side: usize, a: i64, b: i64| {
            conn.segs[side]
                .iter()
                .any(|g| !g.flagged && overlaps(g, a, b))
        };
        let absent = missing.is_some()
            || !(has(short, window.start, window.end)
                || (conn.last_end[short] > window.start && window.end > window.start + w))
            || (has(other, t + m, t + w) && !has(short, t, t + w + m));
        let pname = peer.clone().unwrap_or_else(|| addr(other).to_string());
        let (class, severity, detail) = if facts.as_ref().is_some_and(|f| f.opted_out) {
            (
                FindingClass::MissingOptedOut,
                Severity::Info,
                format!(
                    "node {xname} runs with --no-logs-no-support; its half of the traffic with {pname} is not logged"
                ),
            )
        } else if facts.as_ref().is_some_and(|f| !f.flow_logging)
            || (absent && self.logging_off_in(x, a - m - cfg.window_ns, b + m + cfg.window_ns))
        {
            (
                FindingClass::MissingFlowLoggingOff,
                Severity::Info,
                format!(
                    "flow logging is off for node {xname}; its half of the traffic with {pname} is not logged"
                ),
            )
        } else if (!covered || missing_lost) && gap {
            (
                FindingClass::MissingLostBatch,
                Severity::Medium,
                format!(
                    "node {xname} lost a batch (sequence gap) covering its traffic with {pname}"
                ),
            )
        } else if !covered && absent && self.st.nodes[x as usize].last_flow.is_none() {
            // Never a flow record from this node: its agent runs without
            // `--flows` (or cannot capture); a configuration to look at,
            // not records gone missing.
            (
                FindingClass::MissingAgentSilent,
                Severity::Low,
                format!(
                    "node {xname} has sent no flow records at all (is its agent running with --flows, and may it capture?); its traffic with {pname} is one-sided"
                ),
            )
        } else if !covered && absent {
            (
                FindingClass::MissingAgentSilent,
                Severity::Medium,
                format!(
                    "node {xname}'s agent sent no flow records for this window ({}‰ covered); its traffic with {pname} is one-sided",
                    ev.coverage_permille.unwrap_or(0)
                ),
            )
        } else if absent {
            (
                FindingClass::MissingSuspicious,
                Severity::High,
                format!(
                    "node {xname} reported other traffic for this window but not its traffic with {pname}: records deleted or filtered"
                ),
            )
        } else {
            let (a, b) = (sv[1], rv[3]);
            let big = a.max(b) > 2 * a.min(b);
            (
                FindingClass::CountMismatch,
                if big {
                    Severity::High
                } else {
                    Severity::Medium
                },
                format!(
                    "{} sent {} pkts / {} bytes, {} received {} pkts / {} bytes in the records around this window; at least {} bytes / {} pkts cannot be explained by loss or timing",
                    addr(s),
                    sv[0],
                    sv[1],
                    addr(r),
                    rv[2],
                    rv[3],
                    unexplained[1].unsigned_abs(),
                    unexplained[0].unsigned_abs(),
                ),
            )
        };
        let (node, peer) = if class == FindingClass::CountMismatch {
            // The sender is named; either side may have been edited.
            (
                name(conn.nodes[s]).unwrap_or_else(|| addr(s).to_string()),
                name(conn.nodes[r]).or_else(|| Some(addr(r).to_string())),
            )
        } else {
            (xname, Some(pname))
        };
        out.push(finding(
            class, severity, tailnet, node, peer, window, ev, detail,
        ));
    }

    /// Completeness per node and per node pair so far.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for n in &self.st.nodes {
            s.nodes.push((
                self.st.tailnets[n.tailnet as usize].clone(),
                n.id.clone(),
                n.stats,
            ));
        }
        s.nodes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut pairs: Vec<_> = self.st.pairs.iter().collect();
        pairs.sort_by_key(|p| *p.0);
        for (&(x, y), c) in pairs {
            let (nx, ny) = (&self.st.nodes[x as usize], &self.st.nodes[y as usize]);
            let (a, b) = if nx.id <= ny.id {
                (nx.id.clone(), ny.id.clone())
            } else {
                (ny.id.clone(), nx.id.clone())
            };
            s.pairs
                .push((self.st.tailnets[nx.tailnet as usize].clone(), a, b, *c));
        }
        s.pairs
            .sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        s
    }
}

/// A count as i64 (saturating: sums of hostile counts must not wrap).
fn si(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn bump(c: &mut Completeness, ok: bool, start: i64) {
    c.record(ok, start);
}

fn sorted(mut v: Vec<Finding>) -> Vec<Finding> {
    v.sort_by(|a, b| (a.window.start, &a.id).cmp(&(b.window.start, &b.id)));
    v
}

fn conn_key(tailnet: u32, o: &FlowObservation) -> (ConnKey, usize) {
    if o.src <= o.dst {
        (
            ConnKey {
                tailnet,
                proto: o.proto,
                lo: o.src,
                hi: o.dst,
            },
            0,
        )
    } else {
        (
            ConnKey {
                tailnet,
                proto: o.proto,
                lo: o.dst,
                hi: o.src,
            },
            1,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn finding(
    class: FindingClass,
    severity: Severity,
    tailnet: String,
    node: String,
    peer: Option<String>,
    window: Window,
    evidence: Evidence,
    detail: String,
) -> Finding {
    let mut h = Sha256::new();
    h.update(class.name());
    h.update([0]);
    h.update(&tailnet);
    h.update([0]);
    h.update(&node);
    h.update([0]);
    h.update(peer.as_deref().unwrap_or(""));
    h.update([0]);
    h.update(window.start.to_be_bytes());
    h.update(window.end.to_be_bytes());
    // Evidence distinguishes findings of the same nodes and window.
    h.update(serde_json::to_vec(&evidence).unwrap_or_default());
    let id = hex::encode(&h.finalize()[..16]);
    Finding {
        id,
        class,
        severity,
        tailnet,
        node,
        peer,
        window,
        evidence,
        detail,
    }
}
