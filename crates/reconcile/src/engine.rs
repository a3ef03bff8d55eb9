//! The reconciler state machine.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::*;

/// FxHash-style hasher: fast, deterministic, good enough for keys we build.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
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
const SNAPSHOT_VERSION: u32 = 1;

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
    /// Server time minus node time, minimum seen (ns).
    offset: Option<i64>,
    /// Coverage ring: (window, covered ns).
    cov: Vec<(i64, i64)>,
    /// Spans (server time) of lost records (sequence gaps).
    gaps: Vec<(i64, i64)>,
    /// Last record end seen (server time).
    last_flow: Option<i64>,
    stats: Completeness,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingGap {
    from: u64,
    to: u64,
    span: (i64, i64),
    detected: i64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct ConnKey {
    tailnet: u32,
    proto: u8,
    lo: SocketAddr,
    hi: SocketAddr,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Slot {
    /// Per side (0 = lo, 1 = hi): tx_pkts, tx_bytes, rx_pkts, rx_bytes.
    c: [[u64; 4]; 2],
    /// Bit per side: a record of that side touched the window.
    present: u8,
    /// Bit per side: an excluded (flagged) record touched the window.
    flagged: u8,
    /// Per side: (stream index, seq) of the first record seen.
    rec: [Option<(u32, u64)>; 2],
    /// Per side: ns of the window covered by this connection's entries.
    cov: [i64; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Conn {
    nodes: [Option<u32>; 2],
    base: i64,
    slots: VecDeque<Slot>,
    /// Per direction (0: lo sends): carried (pkts, bytes) imbalance.
    carry: [[i64; 2]; 2],
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
    #[serde(with = "map_vec")]
    stream_ix: FxMap<(String, u32), u32>,
    #[serde(with = "map_vec")]
    conns: FxMap<ConnKey, Conn>,
    #[serde(with = "map_vec")]
    pairs: FxMap<(u32, u32), Completeness>,
    /// Findings produced by `observe` and not yet returned.
    out: Vec<Finding>,
    stats: Stats,
}

/// The double-entry reconciler. See the crate documentation.
pub struct Reconciler {
    st: State,
    /// Cache of the last stream looked up (entries of a record arrive together).
    last_stream: Option<u32>,
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
    if cfg.grace_ns < 0 || cfg.max_skew_ns < 0 {
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
                conns: FxMap::default(),
                pairs: FxMap::default(),
                out: Vec::new(),
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

    /// Open connection-windows held in memory.
    pub fn open_windows(&self) -> usize {
        self.st.conns.values().map(|c| c.slots.len()).sum()
    }

    /// The whole state, serialized (JSON, sorted: equal states give equal bytes).
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        Ok(serde_json::to_vec(&self.st)?)
    }

    /// Rebuild a reconciler from [`Reconciler::snapshot`] output.
    pub fn restore(bytes: &[u8]) -> Result<Reconciler, Error> {
        let st: State = serde_json::from_slice(bytes)?;
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
            cov: vec![(i64::MIN, 0); COV_SLOTS],
            gaps: Vec::new(),
            last_flow: None,
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
        match ns.facts.last_mut() {
            Some(l) if l.at == f.at => *l = f,
            Some(l)
                if l.opted_out == f.opted_out
                    && l.flow_logging == f.flow_logging
                    && f.at >= l.at =>
            {
                // Only the report time moved: keep one entry per state change.
                l.last_report = f.last_report.max(l.last_report);
            }
            _ => {
                ns.facts.push(f);
                ns.facts.sort_by_key(|f| f.at);
            }
        }
    }

    fn stream(&mut self, o: &FlowObservation) -> u32 {
        if let Some(s) = self.last_stream {
            let st = &self.st.streams[s as usize];
            if st.proc_id == o.proc_id && *st.instance == *o.instance {
                let n = &self.st.nodes[st.node as usize];
                if *n.id == *o.node && *self.st.tailnets[n.tailnet as usize] == *o.tailnet {
                    return s;
                }
            }
        }
        let key = (o.instance.to_string(), o.proc_id);
        let s = match self.st.stream_ix.get(&key) {
            Some(&s) => s,
            None => {
                let t = self.tailnet(&o.tailnet);
                let n = self.node(t, &o.node);
                let s = self.st.streams.len() as u32;
                self.st.streams.push(Stream {
                    instance: key.0.clone(),
                    proc_id: o.proc_id,
                    node: n,
                    last_seq: None,
                    last_end: i64::MIN,
                    seen: BTreeMap::new(),
                    pending: Vec::new(),
                });
                self.st.stream_ix.insert(key, s);
                s
            }
        };
        self.last_stream = Some(s);
        s
    }

    /// Feed one traffic entry. Duplicates (same instance, `proc_id`,
    /// `proc_seq` and entry index) are ignored; parts of an entry falling
    /// into windows already judged are counted in [`Stats::too_late`].
    pub fn observe(&mut self, o: &FlowObservation) {
        self.st.stats.observed += 1;
        let w = self.st.cfg.window_ns;
        let s = self.stream(o);
        let node = self.st.streams[s as usize].node;
        let tailnet = self.st.nodes[node as usize].tailnet;
        let end_node = o.end.max(o.start);
        // Clock offset: the smallest receive delay seen is the best estimate.
        let offset = {
            let ns = &mut self.st.nodes[node as usize];
            let cand = o.logged - end_node;
            let off = match ns.offset {
                Some(x) if x <= cand => x,
                _ => cand,
            };
            ns.offset = Some(off);
            off
        };
        let start = o.start.min(end_node) + offset;
        let end = end_node + offset;

        // Dedup and sequence tracking, once per record.
        let first_of_record = {
            let st = &mut self.st.streams[s as usize];
            match st.seen.get_mut(&o.proc_seq) {
                Some(e) => {
                    if o.index < e.0 {
                        self.st.stats.duplicates += 1;
                        return;
                    }
                    e.0 = o.index + 1;
                    false
                }
                None => {
                    st.seen.insert(o.proc_seq, (o.index + 1, end));
                    true
                }
            }
        };
        if first_of_record {
            self.new_record(s, node, o, start, end);
        }
        if let Some(v) = o.integrity
            && v.excluded()
        {
            self.st.stats.excluded += 1;
            if o.kind == FlowKind::Virtual {
                self.mark_flagged(tailnet, o, start, end);
            }
            return;
        }
        if o.kind != FlowKind::Virtual {
            return;
        }
        // Learn the reporting node's own address.
        self.st.addr.entry((tailnet, o.src.ip())).or_insert(node);
        let (key, side) = conn_key(tailnet, o);
        let horizon = self.st.horizon;
        let (w0, w1) = (start.div_euclid(w), (end - 1).max(start).div_euclid(w));
        let dur = (end - start).max(1);
        let vals = [o.tx_pkts, o.tx_bytes, o.rx_pkts, o.rx_bytes];
        let peer = self.st.addr.get(&(tailnet, o.dst.ip())).copied();
        let conn = self.st.conns.entry(key).or_insert_with(|| Conn {
            nodes: [None, None],
            base: w0.max(horizon.unwrap_or(i64::MIN)),
            slots: VecDeque::new(),
            carry: [[0; 2]; 2],
        });
        conn.nodes[side] = Some(node);
        if conn.nodes[1 - side].is_none() {
            conn.nodes[1 - side] = peer;
        }
        let mut done = [0u64; 4];
        for win in w0..=w1 {
            let part: [u64; 4] = if win == w1 {
                [
                    vals[0] - done[0],
                    vals[1] - done[1],
                    vals[2] - done[2],
                    vals[3] - done[3],
                ]
            } else {
                let ov = ((win + 1) * w).min(end) - (win * w).max(start);
                let mut p = [0u64; 4];
                for i in 0..4 {
                    p[i] = (u128::from(vals[i]) * ov.max(0) as u128 / dur as u128) as u64;
                    done[i] += p[i];
                }
                p
            };
            if win < conn.base {
                self.st.stats.too_late += 1;
                continue;
            }
            let idx = (win - conn.base) as usize;
            if conn.slots.len() <= idx {
                conn.slots.resize(idx + 1, Slot::default());
            }
            let slot = &mut conn.slots[idx];
            for (c, p) in slot.c[side].iter_mut().zip(part) {
                *c += p;
            }
            slot.present |= 1 << side;
            slot.cov[side] += ((win + 1) * w).min(end) - (win * w).max(start);
            if slot.rec[side].is_none() {
                slot.rec[side] = Some((s, o.proc_seq));
            }
        }
    }

    fn mark_flagged(&mut self, tailnet: u32, o: &FlowObservation, start: i64, end: i64) {
        let w = self.st.cfg.window_ns;
        let (key, side) = conn_key(tailnet, o);
        if let Some(conn) = self.st.conns.get_mut(&key) {
            for win in start.div_euclid(w)..=(end - 1).max(start).div_euclid(w) {
                if win >= conn.base {
                    let idx = (win - conn.base) as usize;
                    if conn.slots.len() <= idx {
                        conn.slots.resize(idx + 1, Slot::default());
                    }
                    conn.slots[idx].flagged |= 1 << side;
                }
            }
        } else {
            let base = start.div_euclid(w).max(self.st.horizon.unwrap_or(i64::MIN));
            let mut conn = Conn {
                nodes: [None, None],
                base,
                slots: VecDeque::new(),
                carry: [[0; 2]; 2],
            };
            for win in base..=(end - 1).max(start).div_euclid(w) {
                let mut slot = Slot::default();
                if win >= start.div_euclid(w) {
                    slot.flagged |= 1 << side;
                }
                conn.slots.push_back(slot);
            }
            self.st.conns.insert(key, conn);
        }
    }

    /// First entry of a record: coverage, sequence, integrity.
    fn new_record(&mut self, s: u32, node: u32, o: &FlowObservation, start: i64, end: i64) {
        let w = self.st.cfg.window_ns;
        {
            let ns = &mut self.st.nodes[node as usize];
            ns.last_flow = Some(ns.last_flow.map_or(end, |l| l.max(end)));
            for win in start.div_euclid(w)..=(end - 1).max(start).div_euclid(w) {
                let ov = ((win + 1) * w).min(end) - (win * w).max(start);
                let slot = &mut ns.cov[win.rem_euclid(COV_SLOTS as i64) as usize];
                if slot.0 != win {
                    *slot = (win, 0);
                }
                slot.1 += ov.max(0);
            }
        }
        let st = &mut self.st.streams[s as usize];
        match st.last_seq {
            Some(last) if o.proc_seq > last + 1 => {
                let span = (st.last_end.min(start), start);
                st.pending.push(PendingGap {
                    from: last + 1,
                    to: o.proc_seq - 1,
                    span,
                    detected: o.logged,
                });
                self.st.nodes[node as usize].gaps.push(span);
            }
            Some(last) if o.proc_seq < last => {
                // A late record fills part of a gap.
                let mut split = Vec::new();
                st.pending.retain_mut(|g| {
                    if g.from <= o.proc_seq && o.proc_seq <= g.to {
                        if o.proc_seq > g.from {
                            split.push(PendingGap {
                                to: o.proc_seq - 1,
                                ..g.clone()
                            });
                        }
                        if o.proc_seq < g.to {
                            g.from = o.proc_seq + 1;
                            return true;
                        }
                        return false;
                    }
                    true
                });
                st.pending.extend(split);
            }
            _ => {}
        }
        if st.last_seq.is_none_or(|l| o.proc_seq > l) {
            st.last_seq = Some(o.proc_seq);
            st.last_end = end;
        }
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
        self.last_stream = None;
        if now > self.st.now {
            self.st.now = now;
        }
        let cfg = self.st.cfg;
        let w = cfg.window_ns;
        // Window k is judged when window k+1 ended `grace` ago.
        let judge_to = (self.st.now - cfg.grace_ns).div_euclid(w) - 2;
        let mut out = std::mem::take(&mut self.st.out);
        self.gaps(&mut out);
        if self.st.horizon.is_some_and(|h| judge_to < h) {
            return sorted(out);
        }
        self.st.horizon = Some(judge_to + 1);
        let mut conns = std::mem::take(&mut self.st.conns);
        let mut pair_updates: Vec<((u32, u32), bool, i64)> = Vec::new();
        conns.retain(|key, conn| {
            while conn.base <= judge_to {
                if conn.slots.is_empty() {
                    conn.base = judge_to + 1;
                    break;
                }
                let k = conn.base;
                self.judge(key, conn, k, &mut out, &mut pair_updates);
                conn.slots.pop_front();
                conn.base += 1;
            }
            !(conn.slots.is_empty() && conn.carry == [[0; 2]; 2])
        });
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
            n.gaps.retain(|g| g.1 >= keep_from);
            // Keep the last fact before the open windows and everything after.
            let first_live = n.facts.iter().rposition(|f| f.at <= keep_from).unwrap_or(0);
            if first_live > 0 {
                n.facts.drain(..first_live);
            }
        }
        let late = keep_from - self.st.cfg.max_skew_ns - self.st.cfg.grace_ns;
        for s in &mut self.st.streams {
            let drop: Vec<u64> = s
                .seen
                .iter()
                .filter(|(_, v)| v.1 < late)
                .map(|(k, _)| *k)
                .collect();
            for k in drop {
                if Some(k) != s.last_seq {
                    s.seen.remove(&k);
                }
            }
        }
    }

    fn gaps(&mut self, out: &mut Vec<Finding>) {
        let now = self.st.now;
        let grace = self.st.cfg.grace_ns;
        for st in &mut self.st.streams {
            if st.pending.is_empty() {
                continue;
            }
            let node = &self.st.nodes[st.node as usize];
            let mut keep = Vec::new();
            for g in st.pending.drain(..) {
                if g.detected + grace > now {
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
            st.pending = keep;
        }
    }

    fn coverage(&self, node: u32, win: i64) -> i64 {
        let slot = self.st.nodes[node as usize].cov[win.rem_euclid(COV_SLOTS as i64) as usize];
        if slot.0 == win { slot.1 } else { 0 }
    }

    fn facts(&self, node: u32, t: i64) -> Option<&Facts> {
        let f = &self.st.nodes[node as usize].facts;
        f.iter().rev().find(|f| f.at <= t).or(f.first())
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
        let cur = conn.slots.front().copied().unwrap_or_default();
        let next = conn.slots.get(1).copied().unwrap_or_default();
        // Late resolution of the peer by address.
        for side in 0..2 {
            if conn.nodes[side].is_none() {
                let ip = if side == 0 { key.lo.ip() } else { key.hi.ip() };
                conn.nodes[side] = self.st.addr.get(&(key.tailnet, ip)).copied();
            }
        }
        let rel = cfg.rel_tolerance + cfg.edge_tolerance;
        let tol = |d: i64, vol: u64, abs: u64| -> bool {
            (d.unsigned_abs() as f64) <= abs as f64 + rel * vol as f64
        };
        let mut any = false;
        let mut bad: Option<Bad> = None;
        for d in 0..2 {
            let (s, r) = (d, 1 - d);
            let a = [cur.c[s][0], cur.c[s][1]];
            let b = [cur.c[r][2], cur.c[r][3]];
            let carry = conn.carry[d];
            if a == [0, 0] && b == [0, 0] && carry == [0, 0] {
                continue;
            }
            any = true;
            let dk = [
                carry[0] + a[0] as i64 - b[0] as i64,
                carry[1] + a[1] as i64 - b[1] as i64,
            ];
            let vol = [
                a[0].max(b[0]) + carry[0].unsigned_abs(),
                a[1].max(b[1]) + carry[1].unsigned_abs(),
            ];
            if tol(dk[0], vol[0], cfg.abs_tolerance_pkts)
                && tol(dk[1], vol[1], cfg.abs_tolerance_bytes)
            {
                // Balanced: keep half the residue, so a persistent offset
                // (an edit) builds up while packet loss does not.
                conn.carry[d] = [dk[0] / 2, dk[1] / 2];
                continue;
            }
            let a2 = [next.c[s][0], next.c[s][1]];
            let b2 = [next.c[r][2], next.c[r][3]];
            let d2 = [
                dk[0] + a2[0] as i64 - b2[0] as i64,
                dk[1] + a2[1] as i64 - b2[1] as i64,
            ];
            let vol2 = [vol[0] + a2[0].max(b2[0]), vol[1] + a2[1].max(b2[1])];
            if tol(d2[0], vol2[0], cfg.abs_tolerance_pkts)
                && tol(d2[1], vol2[1], cfg.abs_tolerance_bytes)
            {
                // The next window compensates: an edge effect.
                conn.carry[d] = dk;
                continue;
            }
            conn.carry[d] = [0, 0];
            if bad.is_none() {
                let sent = [
                    (a[0] as i64 + carry[0]).max(0) as u64,
                    (a[1] as i64 + carry[1]).max(0) as u64,
                ];
                bad = Some((d, dk, sent, b));
            }
        }
        if !any {
            return;
        }
        self.st.stats.judged += 1;
        let start = k * w;
        let ok = bad.is_none();
        for n in conn.nodes.iter().flatten() {
            bump(&mut self.st.nodes[*n as usize].stats, ok, start);
        }
        if let [Some(x), Some(y)] = conn.nodes {
            pairs.push(((x.min(y), x.max(y)), ok, start));
        }
        let Some((d, dk, sent, recv)) = bad else {
            return;
        };
        let (s, r) = (d, 1 - d);
        // The short side is the one whose records are presumed missing or edited.
        let short = if dk[1] > 0 { r } else { s };
        let other = 1 - short;
        let window = Window {
            start,
            end: start + w,
        };
        let addr = |side: usize| if side == 0 { key.lo } else { key.hi };
        let tailnet = self.st.tailnets[key.tailnet as usize].clone();
        let name = |n: Option<u32>| n.map(|n| self.st.nodes[n as usize].id.clone());
        let mut ev = Evidence {
            proto: Some(key.proto),
            src: Some(addr(s)),
            dst: Some(addr(r)),
            sent: Some(Counts {
                pkts: sent[0],
                bytes: sent[1],
            }),
            received: Some(Counts {
                pkts: recv[0],
                bytes: recv[1],
            }),
            sender_record: self.rec_ref(cur.rec[s]),
            receiver_record: self.rec_ref(cur.rec[r]),
            ..Evidence::default()
        };
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
        if cur.flagged & (1 << short) != 0 || next.flagged & (1 << short) != 0 {
            // The flagged batch is the finding (reported as integrity).
            return;
        }
        let xname = self.st.nodes[x as usize].id.clone();
        let peer = name(conn.nodes[other]);
        let facts = self.facts(x, start + w).cloned();
        ev.last_report = facts.as_ref().and_then(|f| f.last_report);
        let cov = self.coverage(x, k);
        ev.coverage_permille = Some(((cov.clamp(0, w) * 1000) / w) as u32);
        let absent = (cur.cov[short] as f64) < cfg.coverage * w as f64;
        let gap = self.st.nodes[x as usize]
            .gaps
            .iter()
            .any(|g| g.0 < start + w && g.1 > start);
        let covered = cov as f64 >= cfg.coverage * w as f64;
        let pname = peer.clone().unwrap_or_else(|| addr(other).to_string());
        let (class, severity, detail) = if facts.as_ref().is_some_and(|f| f.opted_out) {
            (
                FindingClass::MissingOptedOut,
                Severity::Info,
                format!(
                    "node {xname} runs with --no-logs-no-support; its half of the traffic with {pname} is not logged"
                ),
            )
        } else if facts.as_ref().is_some_and(|f| !f.flow_logging) {
            (
                FindingClass::MissingFlowLoggingOff,
                Severity::Info,
                format!(
                    "flow logging is off for node {xname}; its half of the traffic with {pname} is not logged"
                ),
            )
        } else if !covered && gap {
            (
                FindingClass::MissingLostBatch,
                Severity::Medium,
                format!(
                    "node {xname} lost a batch (sequence gap) covering its traffic with {pname}"
                ),
            )
        } else if !covered {
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
            let big = sent[1].max(recv[1]) > 2 * sent[1].min(recv[1]);
            (
                FindingClass::CountMismatch,
                if big {
                    Severity::High
                } else {
                    Severity::Medium
                },
                format!(
                    "{} sent {} pkts / {} bytes, {} received {} pkts / {} bytes",
                    addr(s),
                    sent[0],
                    sent[1],
                    addr(r),
                    recv[0],
                    recv[1]
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

/// A discrepant direction: (direction, imbalance, sent, received).
type Bad = (usize, [i64; 2], [u64; 2], [u64; 2]);

fn bump(c: &mut Completeness, ok: bool, start: i64) {
    c.judged += 1;
    if ok {
        c.matched += 1;
    } else {
        c.first_discrepancy = Some(c.first_discrepancy.map_or(start, |f| f.min(start)));
        c.last_discrepancy = Some(c.last_discrepancy.map_or(start, |f| f.max(start)));
    }
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
