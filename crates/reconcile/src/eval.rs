//! Evaluation harness: a simulated tailnet with labelled faults, and scoring.
//!
//! [`generate`] simulates N nodes exchanging traffic in 250-ms ticks of true
//! time; every node cuts its 5-s records at its own phase on its own skewed
//! clock, packets are in flight and sometimes lost, uploads are delayed. The
//! faults of [`Scenario::faults`] are injected on distinct nodes and labelled
//! ([`Label`]). [`run`] feeds the events to a [`Reconciler`] (optionally
//! killing and restoring it at given event positions) and [`score`] computes
//! precision and recall per class. Everything is deterministic in the seed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::{
    BatchVerdict, Config, Error, Finding, FindingClass, FlowKind, FlowObservation, NodeInfo,
    Reconciler,
};

const S: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;
/// Simulation start (true time, Unix ns).
pub const T0: i64 = 1_700_000_000 * S;
const INTERVAL: i64 = 5 * S;
const TICK: i64 = 250 * MS;

/// SplitMix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)` (`lo` when empty).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Seed of everything.
    pub seed: u64,
    /// Nodes in the tailnet.
    pub nodes: usize,
    /// Connections each node opens to random peers.
    pub conns_per_node: usize,
    /// Simulated seconds.
    pub seconds: i64,
    /// Largest clock skew of a node (ns); two nodes get exactly ±this.
    pub max_skew_ns: i64,
    /// Inject the labelled faults (else: clean traffic with benign noise only).
    pub faults: bool,
    /// Emit node reports (last-seen updates) every 30 s.
    pub reports: bool,
}

impl Scenario {
    /// A small scenario for tests: 40 nodes, 4 connections each, 10 minutes.
    pub fn small(seed: u64, faults: bool) -> Scenario {
        Scenario {
            seed,
            nodes: 40,
            conns_per_node: 4,
            seconds: 600,
            max_skew_ns: 30 * S,
            faults,
            reports: true,
        }
    }
}

/// An injected fault the reconciler should report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Expected class.
    pub class: FindingClass,
    /// Node at fault.
    pub node: String,
    /// Peer, when the fault concerns one peer.
    pub peer: Option<String>,
    /// Start of the fault (true time, ns).
    pub start: i64,
    /// End of the fault (true time, ns).
    pub end: i64,
}

/// One input to the reconciler, in server-time order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A node snapshot (at `info.at`).
    Node(NodeInfo),
    /// A traffic entry (at `logged`).
    Obs(FlowObservation),
}

impl Event {
    /// Server time of the event.
    pub fn at(&self) -> i64 {
        match self {
            Event::Node(n) => n.at,
            Event::Obs(o) => o.logged,
        }
    }
}

/// A generated scenario.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Events sorted by server time.
    pub events: Vec<Event>,
    /// The faults to find.
    pub labels: Vec<Label>,
    /// Benign noise injected (late, duplicated, skewed), for the report.
    pub benign: Vec<String>,
    /// End of the simulation (true time).
    pub end: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Clean,
    Dropped,
    Killed,
    EditSmall,
    EditLarge,
    Deleted,
    OptedOut,
    LoggingOff,
    Late,
    Duplicated,
    Forged,
    Unknown,
}

struct Node {
    id: Arc<str>,
    ip: IpAddr,
    instance: Arc<str>,
    proc_id: u32,
    seq: u64,
    skew: i64,
    phase: i64,
    delay: i64,
    role: Role,
    /// Next interval index to emit.
    next: i64,
    /// (interval, conn) -> [tx_p, tx_b, rx_p, rx_b] (this node's view).
    acc: BTreeMap<(i64, usize), [u64; 4]>,
}

struct Conn {
    a: usize,
    b: Option<usize>,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    proto: u8,
    rate: i64,
}

/// Simulate `sc`.
pub fn generate(sc: &Scenario) -> Generated {
    let mut rng = Rng::new(sc.seed);
    let tailnet: Arc<str> = Arc::from("example.com");
    let n = sc.nodes.max(4);
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            let ip = IpAddr::from([100, 64, (i / 250) as u8, (i % 250 + 1) as u8]);
            let skew = match i {
                0 => sc.max_skew_ns,
                1 => -sc.max_skew_ns,
                _ => rng.range(-sc.max_skew_ns, sc.max_skew_ns + 1),
            };
            Node {
                id: Arc::from(format!("node{i:05}").as_str()),
                ip,
                instance: Arc::from(
                    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()).as_str(),
                ),
                proc_id: rng.next_u64() as u32,
                seq: 0,
                skew,
                phase: rng.range(0, INTERVAL / MS) * MS,
                delay: 2 * S + rng.range(0, 200) * MS,
                role: Role::Clean,
                next: i64::MIN,
                acc: BTreeMap::new(),
            }
        })
        .collect();
    let end = T0 + sc.seconds * S;
    let mut labels = Vec::new();
    let mut benign = Vec::new();
    // Fault roles on distinct nodes (from node 2 on: 0 and 1 carry the extreme skews).
    let roles = [
        Role::Dropped,
        Role::Killed,
        Role::EditSmall,
        Role::EditLarge,
        Role::Deleted,
        Role::OptedOut,
        Role::LoggingOff,
        Role::Late,
        Role::Duplicated,
        Role::Forged,
        Role::Unknown,
        Role::Dropped,
        Role::EditSmall,
        Role::EditLarge,
        Role::Deleted,
        Role::Forged,
        Role::Killed,
    ];
    if sc.faults {
        for (k, r) in roles.iter().enumerate() {
            let i = 2 + k * (n - 2) / roles.len();
            if i < n {
                nodes[i].role = *r;
            }
        }
    } else {
        // Benign noise only.
        for (k, r) in [Role::Late, Role::Duplicated, Role::Late, Role::Duplicated]
            .iter()
            .enumerate()
        {
            let i = 2 + k * (n - 2) / 4;
            nodes[i].role = *r;
        }
    }
    // Connections: peers are clean or benign nodes when possible.
    let benign_role = |r: Role| matches!(r, Role::Clean | Role::Late | Role::Duplicated);
    let clean: Vec<usize> = (0..n).filter(|&i| benign_role(nodes[i].role)).collect();
    let mut conns = Vec::new();
    for a in 0..n {
        for _ in 0..sc.conns_per_node {
            let b = loop {
                let b = clean[rng.range(0, clean.len() as i64) as usize];
                if b != a {
                    break b;
                }
            };
            let proto = if rng.chance(0.8) { 6 } else { 17 };
            let ports = [22u16, 80, 443, 5432, 8080, 53];
            conns.push(Conn {
                a,
                b: Some(b),
                a_addr: SocketAddr::new(nodes[a].ip, rng.range(20_000, 60_000) as u16),
                b_addr: SocketAddr::new(nodes[b].ip, ports[rng.range(0, 6) as usize]),
                proto,
                rate: rng.range(2, 9),
            });
        }
        if nodes[a].role == Role::Unknown {
            let ip = IpAddr::from([100, 127, 255, 1]);
            conns.push(Conn {
                a,
                b: None,
                a_addr: SocketAddr::new(nodes[a].ip, 40_000),
                b_addr: SocketAddr::new(ip, 443),
                proto: 6,
                rate: 4,
            });
            labels.push(Label {
                class: FindingClass::NodeUnknown,
                node: nodes[a].id.to_string(),
                peer: Some(ip.to_string()),
                start: T0,
                end,
            });
        }
    }
    // Fault times: each faulty node gets its fault in the middle part of the run.
    let fault_at: Vec<i64> = (0..n)
        .map(|_| T0 + rng.range(sc.seconds / 4, sc.seconds * 2 / 3) * S)
        .collect();
    let kill_len = 60 * S;
    // Per-node fault target conn (a conn the node owns, to a clean peer).
    let target: Vec<Option<usize>> = (0..n)
        .map(|i| conns.iter().position(|c| c.a == i && c.b.is_some()))
        .collect();
    for i in 0..n {
        let id = nodes[i].id.to_string();
        let t = fault_at[i];
        let peer = target[i]
            .and_then(|c| conns[c].b)
            .map(|b| nodes[b].id.to_string());
        let mut lab = |class, peer: Option<String>, start, end| {
            labels.push(Label {
                class,
                node: id.clone(),
                peer,
                start,
                end,
            })
        };
        match nodes[i].role {
            Role::Killed => lab(FindingClass::MissingAgentSilent, None, t, t + kill_len),
            Role::OptedOut => lab(FindingClass::MissingOptedOut, None, T0, end),
            Role::LoggingOff => lab(FindingClass::MissingFlowLoggingOff, None, T0, end),
            // Deletions are labelled from the first record deleted.
            Role::EditSmall => lab(FindingClass::CountMismatch, peer, t, t + 60 * S),
            Role::Late => benign.push(format!("{id}: uploads 20-45 s late for 60 s")),
            Role::Duplicated => benign.push(format!("{id}: every upload duplicated for 60 s")),
            // Labels of record-level faults are added when the record is cut.
            _ => {}
        }
    }
    benign.push(format!(
        "clock skew: {} and {} at exactly +/-{} s, the rest uniform",
        nodes[0].id,
        nodes[1].id,
        sc.max_skew_ns / S
    ));

    let mut events: Vec<Event> = Vec::new();
    for nd in &nodes {
        events.push(Event::Node(NodeInfo {
            tailnet: tailnet.to_string(),
            node: nd.id.to_string(),
            addresses: vec![nd.ip],
            opted_out: nd.role == Role::OptedOut,
            flow_logging: nd.role != Role::LoggingOff,
            last_report: Some(T0 - S),
            at: T0 - S,
        }));
    }
    let mut rec_faults_done = vec![false; n];
    let mut deletion_labelled = vec![false; n];
    let mut t = T0;
    let mut tick = 0i64;
    while t < end {
        // Traffic of this tick (quiet for the last 20 s, so that every
        // record of the run is complete).
        let quiet = t >= end - 20 * S;
        for (ci, c) in conns.iter().enumerate() {
            if quiet {
                break;
            }
            for dir in 0..2 {
                if dir == 1 && c.b.is_none() && !rng.chance(0.5) {
                    continue;
                }
                if !rng.chance(0.6) {
                    continue;
                }
                let pkts = rng.range(1, c.rate + 1) as u64;
                let bytes = pkts * rng.range(200, 1400) as u64;
                let at = t + rng.range(0, TICK);
                let arrive = at + rng.range(5, 40) * MS;
                let lost = u64::from(pkts > 1 && rng.chance(0.01));
                let (snd, rcv) = if dir == 0 {
                    (Some(c.a), c.b)
                } else {
                    (c.b, Some(c.a))
                };
                if let Some(s) = snd {
                    let nd = &mut nodes[s];
                    let k = (at + nd.skew - nd.phase).div_euclid(INTERVAL);
                    let e = nd.acc.entry((k, ci)).or_default();
                    e[0] += pkts;
                    e[1] += bytes;
                } else if let Some(r) = rcv {
                    // Unknown sender: only the receiver logs (no mirror).
                    let nd = &mut nodes[r];
                    let k = (arrive + nd.skew - nd.phase).div_euclid(INTERVAL);
                    let e = nd.acc.entry((k, ci)).or_default();
                    e[2] += pkts;
                    e[3] += bytes;
                    continue;
                }
                if let Some(r) = rcv {
                    let nd = &mut nodes[r];
                    let k = (arrive + nd.skew - nd.phase).div_euclid(INTERVAL);
                    let e = nd.acc.entry((k, ci)).or_default();
                    e[2] += pkts - lost;
                    e[3] += bytes - lost * (bytes / pkts);
                }
            }
        }
        // Cut records whose interval ended (node clock) before this tick.
        for i in 0..n {
            let now_node = t + nodes[i].skew - nodes[i].phase;
            let cur = now_node.div_euclid(INTERVAL);
            if nodes[i].next == i64::MIN {
                nodes[i].next = cur;
            }
            while nodes[i].next < cur
                && (now_node - nodes[i].next * INTERVAL) >= INTERVAL + 100 * MS
            {
                let k = nodes[i].next;
                nodes[i].next += 1;
                let rec_start_node = k * INTERVAL + nodes[i].phase;
                let rec_end_node = rec_start_node + INTERVAL;
                let true_start = rec_start_node - nodes[i].skew;
                let true_end = rec_end_node - nodes[i].skew;
                let entries: Vec<(usize, [u64; 4])> = {
                    let keys: Vec<(i64, usize)> = nodes[i]
                        .acc
                        .range((k, 0)..(k + 1, 0))
                        .map(|(k, _)| *k)
                        .collect();
                    keys.iter()
                        .filter_map(|key| nodes[i].acc.remove(key).map(|v| (key.1, v)))
                        .collect()
                };
                let nd = &nodes[i];
                let role = nd.role;
                let ft = fault_at[i];
                if matches!(role, Role::OptedOut | Role::LoggingOff) {
                    continue;
                }
                if role == Role::Killed && true_end > ft && true_start < ft + kill_len {
                    continue;
                }
                if entries.is_empty() {
                    continue;
                }
                let killed_restart = role == Role::Killed && true_start >= ft + kill_len;
                let nd = &mut nodes[i];
                if killed_restart && !rec_faults_done[i] {
                    rec_faults_done[i] = true;
                    nd.proc_id = nd.proc_id.wrapping_add(1);
                    nd.seq = 0;
                }
                nd.seq += 1;
                let record_fault = !rec_faults_done[i] && true_start >= ft;
                let id = nd.id.to_string();
                let peer_of = |c: usize| conns[c].b.map(|b| nodes[b].id.to_string());
                let mut integrity = Some(BatchVerdict::Ok);
                let mut edit: Option<(usize, f64)> = None;
                let mut drop_all = false;
                if record_fault {
                    match role {
                        Role::Dropped => {
                            drop_all = true;
                            for class in [FindingClass::SequenceGap, FindingClass::MissingLostBatch]
                            {
                                labels.push(Label {
                                    class,
                                    node: id.clone(),
                                    peer: None,
                                    start: true_start,
                                    end: true_end,
                                });
                            }
                        }
                        Role::EditLarge | Role::Forged => {
                            // The target connection's entry, if big enough.
                            let pick = entries
                                .iter()
                                .position(|(c, v)| Some(*c) == target[i] && v[1] >= 40_000);
                            if let Some(p) = pick {
                                let f = if role == Role::EditLarge { 5.0 } else { 3.0 };
                                edit = Some((p, f));
                                if role == Role::Forged {
                                    integrity = Some(BatchVerdict::BadSignature);
                                }
                                labels.push(Label {
                                    class: if role == Role::Forged {
                                        FindingClass::Integrity
                                    } else {
                                        FindingClass::CountMismatch
                                    },
                                    node: id.clone(),
                                    peer: if role == Role::Forged {
                                        None
                                    } else {
                                        peer_of(entries[p].0)
                                    },
                                    start: true_start,
                                    end: true_end,
                                });
                            }
                        }
                        _ => {}
                    }
                    if !matches!(
                        role,
                        Role::Killed
                            | Role::Deleted
                            | Role::Late
                            | Role::Duplicated
                            | Role::EditSmall
                    ) && (drop_all || edit.is_some())
                    {
                        rec_faults_done[i] = true;
                    }
                }
                if drop_all {
                    continue;
                }
                // A small edit: 30 % of the target connection's bytes hidden
                // in every record for a minute.
                if role == Role::EditSmall && true_start >= ft && true_start < ft + 60 * S {
                    edit = entries
                        .iter()
                        .position(|(c, _)| Some(*c) == target[i])
                        .map(|p| (p, 0.7));
                }
                let nd = &nodes[i];
                let mut logged = true_end + nd.delay + rng.range(0, 800) * MS;
                let in_span = true_start >= ft && true_start < ft + 60 * S;
                if role == Role::Late && in_span {
                    logged += rng.range(20, 45) * S;
                }
                let copies = if role == Role::Duplicated && in_span {
                    2
                } else {
                    1
                };
                let mut index = 0u32;
                let mut out = Vec::with_capacity(entries.len());
                for (p, (c, v)) in entries.iter().enumerate() {
                    let conn = &conns[*c];
                    if role == Role::Deleted
                        && Some(*c) == target[i]
                        && true_start >= ft
                        && true_end <= ft + 30 * S
                    {
                        if !deletion_labelled[i] {
                            deletion_labelled[i] = true;
                            labels.push(Label {
                                class: FindingClass::MissingSuspicious,
                                node: nd.id.to_string(),
                                peer: conn.b.map(|b| nodes[b].id.to_string()),
                                start: true_start,
                                end: ft + 30 * S,
                            });
                        }
                        continue;
                    }
                    let mine_a = conn.a == i;
                    let (src, dst) = if mine_a {
                        (conn.a_addr, conn.b_addr)
                    } else {
                        (conn.b_addr, conn.a_addr)
                    };
                    let mut v = *v;
                    if let Some((ep, f)) = edit
                        && ep == p
                    {
                        v[1] = (v[1] as f64 * f) as u64;
                    }
                    out.push(FlowObservation {
                        tailnet: tailnet.clone(),
                        node: nd.id.clone(),
                        start: rec_start_node,
                        end: rec_end_node,
                        logged,
                        kind: FlowKind::Virtual,
                        proto: conn.proto,
                        src,
                        dst,
                        tx_pkts: v[0],
                        tx_bytes: v[1],
                        rx_pkts: v[2],
                        rx_bytes: v[3],
                        instance: nd.instance.clone(),
                        proc_id: nd.proc_id,
                        proc_seq: nd.seq,
                        index,
                        integrity,
                        sent: None,
                        capture_start: None,
                    });
                    index += 1;
                }
                for copy in 0..copies {
                    let shift = if copy == 0 { 0 } else { rng.range(1, 10) * S };
                    for o in &out {
                        let mut o = o.clone();
                        o.logged += shift;
                        events.push(Event::Obs(o));
                    }
                }
            }
        }
        // Agent reports every 30 s (not while killed, never for opted-out).
        tick += 1;
        if sc.reports && tick % 120 == 0 {
            for (i, nd) in nodes.iter().enumerate() {
                let killed =
                    nd.role == Role::Killed && t >= fault_at[i] && t < fault_at[i] + kill_len;
                if killed {
                    continue;
                }
                events.push(Event::Node(NodeInfo {
                    tailnet: tailnet.to_string(),
                    node: nd.id.to_string(),
                    addresses: vec![nd.ip],
                    opted_out: nd.role == Role::OptedOut,
                    flow_logging: nd.role != Role::LoggingOff,
                    last_report: Some(t),
                    at: t,
                }));
            }
        }
        t += TICK;
    }
    events.sort_by_key(|e| e.at());
    Generated {
        events,
        labels,
        benign,
        end,
    }
}

/// Result of [`run`].
#[derive(Debug, Clone)]
pub struct Run {
    /// All findings with the server time they were emitted at.
    pub findings: Vec<(i64, Finding)>,
    /// Largest snapshot seen (bytes), when snapshots were taken.
    pub max_snapshot: usize,
    /// Most connection halves held at once.
    pub max_open_halves: usize,
}

/// Feed `g` to a reconciler with `cfg`, advancing the clock every second of
/// server time; at each position in `cuts` (event indices) the reconciler is
/// snapshotted, dropped and restored.
pub fn run(g: &Generated, cfg: Config, cuts: &[usize]) -> Result<Run, Error> {
    let mut r = Reconciler::new(cfg)?;
    let mut out = Vec::new();
    let mut last_adv = i64::MIN;
    let mut max_snapshot = 0;
    let mut max_open_halves = 0;
    let mut cuts: Vec<usize> = cuts.to_vec();
    cuts.sort_unstable();
    let mut ci = 0;
    for (i, e) in g.events.iter().enumerate() {
        while ci < cuts.len() && cuts[ci] == i {
            let snap = r.snapshot()?;
            max_snapshot = max_snapshot.max(snap.len());
            r = Reconciler::restore(&snap)?;
            ci += 1;
        }
        let at = e.at();
        if at >= last_adv.saturating_add(S) {
            for f in r.advance(at) {
                out.push((at, f));
            }
            last_adv = at;
            if i % 64 == 0 {
                max_open_halves = max_open_halves.max(r.open_halves());
            }
        }
        match e {
            Event::Node(n) => r.update_node(n),
            Event::Obs(o) => r.observe(o),
        }
    }
    let fin = g.end + 2 * cfg.grace_ns + 4 * cfg.window_ns + 60 * S;
    for f in r.advance(fin) {
        out.push((fin, f));
    }
    Ok(Run {
        findings: out,
        max_snapshot,
        max_open_halves,
    })
}

/// Precision and recall of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScore {
    /// The class.
    pub class: FindingClass,
    /// Injected faults of the class.
    pub labels: usize,
    /// Of those, found by at least one finding of the class.
    pub found: usize,
    /// Findings of the class.
    pub findings: usize,
    /// Of those, matching an injected fault of the class.
    pub true_findings: usize,
    /// Largest time from a fault's start to its first finding (ns).
    pub max_latency_ns: Option<i64>,
}

impl ClassScore {
    /// found / labels (1 when there were none).
    pub fn recall(&self) -> f64 {
        if self.labels == 0 {
            1.0
        } else {
            self.found as f64 / self.labels as f64
        }
    }
    /// true findings / findings (1 when there were none).
    pub fn precision(&self) -> f64 {
        if self.findings == 0 {
            1.0
        } else {
            self.true_findings as f64 / self.findings as f64
        }
    }
}

/// Score of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Per class, in [`FindingClass::ALL`] order.
    pub classes: Vec<ClassScore>,
    /// Findings matching no injected fault.
    pub false_findings: usize,
    /// All findings.
    pub findings: usize,
}

fn matches(l: &Label, f: &Finding, slack: i64) -> bool {
    if l.class != f.class {
        return false;
    }
    let who = if f.class == FindingClass::CountMismatch {
        (f.node == l.node && (l.peer.is_none() || f.peer == l.peer))
            || (f.peer.as_deref() == Some(l.node.as_str())
                && (l.peer.is_none() || Some(&f.node) == l.peer.as_ref()))
    } else {
        f.node == l.node && (l.peer.is_none() || f.peer == l.peer)
    };
    who && f.window.start < l.end + slack && f.window.end > l.start - slack
}

/// Score `run` against `labels`. A finding matches a label of its class for
/// the same node (and peer when the label names one; either order for count
/// mismatches) whose time span, widened by two windows and the skew, overlaps
/// the finding's window.
pub fn score(labels: &[Label], run: &Run, cfg: &Config) -> Score {
    let slack = 2 * cfg.window_ns + 5 * S;
    let mut classes = Vec::new();
    let mut false_findings = 0;
    for class in FindingClass::ALL {
        let ls: Vec<&Label> = labels.iter().filter(|l| l.class == class).collect();
        let fs: Vec<&(i64, Finding)> = run.findings.iter().filter(|f| f.1.class == class).collect();
        let mut found = 0;
        let mut max_latency = None;
        for l in &ls {
            if let Some((at, _)) = fs.iter().find(|f| matches(l, &f.1, slack)) {
                found += 1;
                let lat = *at - l.start;
                if !matches!(
                    class,
                    FindingClass::MissingOptedOut
                        | FindingClass::MissingFlowLoggingOff
                        | FindingClass::NodeUnknown
                ) {
                    max_latency = Some(max_latency.map_or(lat, |m: i64| m.max(lat)));
                }
            }
        }
        let true_findings = fs
            .iter()
            .filter(|f| ls.iter().any(|l| matches(l, &f.1, slack)))
            .count();
        false_findings += fs.len() - true_findings;
        classes.push(ClassScore {
            class,
            labels: ls.len(),
            found,
            findings: fs.len(),
            true_findings,
            max_latency_ns: max_latency,
        });
    }
    Score {
        classes,
        false_findings,
        findings: run.findings.len(),
    }
}

/// The score as a Markdown table.
pub fn table(s: &Score) -> String {
    let mut t = String::from(
        "| class | faults | found | recall | findings | true | precision | max fault→finding |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in &s.classes {
        t.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {} | {} | {:.1}% | {} |\n",
            c.class.name(),
            c.labels,
            c.found,
            c.recall() * 100.0,
            c.findings,
            c.true_findings,
            c.precision() * 100.0,
            c.max_latency_ns
                .map_or("-".to_string(), |l| format!("{:.1} s", l as f64 / 1e9))
        ));
    }
    t.push_str(&format!(
        "\nfindings: {}, matching no fault: {}\n",
        s.findings, s.false_findings
    ));
    t
}
