//! Evaluation harness: a simulated tailnet with labelled faults, and scoring.
//!
//! [`generate`] simulates N nodes exchanging traffic in 250-ms ticks of true
//! time (the server's clock is true time); every node cuts 5-s records on
//! its own skewed clock, packets are in flight and sometimes lost, uploads
//! are delayed. The faults of [`Scenario::faults`] are injected on distinct
//! nodes and labelled ([`Label`]). [`run`] feeds the events to a
//! [`Reconciler`] (optionally killing and restoring it at given event
//! positions) and [`score`] computes precision and recall per class.
//! Everything is deterministic in the seed.
//!
//! # What real tailnets do (the effects of [`Scenario::realistic`])
//!
//! [`Scenario::small`] keeps the original, idealised tailnet (every agent
//! cuts 5-s records on a fixed phase from before the run to its end, every
//! connection is long-lived and busy). Each effect below is a switch of
//! [`Scenario`]; [`Scenario::realistic`] turns them all on.
//!
//! 1. **Capture sessions** ([`Scenario::sessions`]): an agent captures in
//!    sessions (agent start, restart, flow logging turned on). A session's
//!    intervals run every 5 s from its start, which is on no grid (an agent
//!    started just before the run or an hour before it); every record
//!    carries [`FlowObservation::capture_start`]. A session ending
//!    gracefully cuts its last record short at the stop.
//! 2. **Short connections** ([`Scenario::short_conns`]): besides the
//!    long-lived connections, bursts of 2-12 packets within 600 ms on a new
//!    ephemeral port each (so inside one or two records, some straddling an
//!    interval boundary); every packet reaches each end's table 0-200 ms
//!    late, so the two ends may count it in different records.
//! 3. **Sparse traffic** ([`Scenario::sparse`]): long-lived connections of
//!    clean nodes alternate busy (15-120 s) and idle (10-90 s) periods; an
//!    agent sends no record for an interval without traffic (always true
//!    here, but only sparse traffic makes it happen), so whole nodes go
//!    silent inside their capture session.
//! 4. **Late peers** ([`Scenario::late_joins`]): a node registers at J (a
//!    [`NodeInfo`] at J), its agent starts a session at J + 0-3 s and its
//!    traffic starts 0.3 s later; each peer files its traffic with it as
//!    [`FlowKind::Exit`] until it hears of it, 0-30 s after J.
//! 5. **Nodes leaving** ([`Scenario::leaves`]): a node leaves the tailnet at
//!    L: its traffic stops at L and its agent stops gracefully 0.6-1.5 s
//!    later (a short last record); it sends no more reports.
//! 6. **Agent restarts** ([`Scenario::restarts`]): the agent stops
//!    gracefully at R and starts again 1-5 s later as a new process (new
//!    `proc_id`, `proc_seq` from 1, a new capture session). Decision: a
//!    restart of the agent is a restart of the node's tailnet stack, so its
//!    traffic pauses from 0.6 s before the stop to 0.3 s after the new
//!    session starts (applications retry); a restart is then a clean case
//!    that must raise nothing. (An agent that is down while traffic flows is
//!    the labelled `Killed` fault: `missing_agent_silent`.)
//! 7. **Flow logging toggled** ([`Scenario::toggle`]): flow logging is
//!    turned off for the whole tailnet at X for 60 s (a [`NodeInfo`] of every
//!    node at X with `flow_logging: false`, and at X + 60 s with `true`);
//!    every agent learns it 0.2-2 s late (its session stops then, a short
//!    last record; a new session starts 0.2-2 s after X + 60 s, same
//!    process). Traffic goes on. The server refuses the records it receives
//!    while logging is off ([`Event::Discarded`], fed to
//!    [`Reconciler::discarded`]). Expected: at most informational
//!    `missing_flow_logging_off` findings for each node from the start of
//!    its first refused record to its new session (a label with
//!    [`Label::must_find`] false: such findings are true, none is required);
//!    any other finding there is a false positive. X is after every fault's
//!    span.
//! 8. **Address changes** ([`Scenario::address_changes`]): a node gets a new
//!    address at A (a [`NodeInfo`] at A); from A on, its packets and its
//!    peers' packets use the new address (a new connection for the
//!    reconciler).
//! 9. **Upload queue delays** ([`Scenario::queue_delays`]): every record
//!    carries [`FlowObservation::sent`]. An agent queues a record 2-2.2 s
//!    after its end; half the agents send 10 % of their records at once
//!    (0-100 ms), the others never except after an outage: the first record
//!    of a session started in the run (agent start, restart, logging back
//!    on) and the last record of a graceful stop; some clean agents
//!    stall for 10-40 s once (a backlog: everything queued then goes at the
//!    stall's end). In flight 1-50 ms: `logged = sent - skew + transit`.
//!
//! What the harness cannot tell yet: whether the reconciler uses
//! `capture_start`. A one-sided half only arises next to a record of the
//! silent node (a deletion leaves the record's other entries, a deleted
//! whole record is a sequence gap), so the silent node's coverage there is
//! full with or without sessions.
//!
//! The server repeats each node's whole [`NodeInfo`] history on every
//! refresh ([`Event::Nodes`]): at the start, at every change (join, address,
//! toggle) and every 30 s with [`Scenario::reports`].
//!
//! Benign noise of every scenario: clock skew up to ±[`Scenario::max_skew_ns`],
//! 1 % of multi-packet sends lose a packet, uploads of one node 20-45 s late
//! for a minute, uploads of another duplicated for a minute.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::{
    BatchVerdict, Config, DiscardedRecord, Error, Finding, FindingClass, FlowKind, FlowObservation,
    NodeInfo, Reconciler,
};

const S: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;
/// Simulation start (true time, Unix ns).
pub const T0: i64 = 1_700_000_000 * S;
const INTERVAL: i64 = 5 * S;
const TICK: i64 = 250 * MS;
/// How long flow logging stays off in the toggle effect.
const TOGGLE_NS: i64 = 60 * S;

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

/// What to simulate. The effects are described in the module documentation.
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
    /// Effect 1: capture sessions starting off-grid, `capture_start` on
    /// every record, last record of a session cut short at the stop.
    pub sessions: bool,
    /// Effect 2: short connections, and packets reaching a node's table up
    /// to 200 ms late.
    pub short_conns: bool,
    /// Effect 3: long-lived connections of clean nodes go idle for periods.
    pub sparse: bool,
    /// Effect 4: nodes joining mid-run (peers file them as exit traffic at
    /// first).
    pub late_joins: usize,
    /// Effect 5: nodes leaving the tailnet mid-run.
    pub leaves: usize,
    /// Effect 6: agent restarts (new process and session; traffic paused).
    pub restarts: usize,
    /// Effect 7: flow logging off for the whole tailnet for 60 s.
    pub toggle: bool,
    /// Effect 8: nodes getting a new address mid-run.
    pub address_changes: usize,
    /// Effect 9: `sent` on every record, per-upload queue delays (at once,
    /// 2 s, backlogs of tens of seconds).
    pub queue_delays: bool,
}

impl Scenario {
    /// A small scenario for tests: 40 nodes, 4 connections each, 10
    /// minutes, none of the effects.
    pub fn small(seed: u64, faults: bool) -> Scenario {
        Scenario {
            seed,
            nodes: 40,
            conns_per_node: 4,
            seconds: 600,
            max_skew_ns: 30 * S,
            faults,
            reports: true,
            sessions: false,
            short_conns: false,
            sparse: false,
            late_joins: 0,
            leaves: 0,
            restarts: 0,
            toggle: false,
            address_changes: 0,
            queue_delays: false,
        }
    }

    /// What real tailnets do: 40 nodes, 4 long-lived connections each plus
    /// short ones, 12 minutes, every effect on (2 late joins, 2 leaves, 3
    /// restarts, 2 address changes, one tailnet-wide toggle).
    pub fn realistic(seed: u64, faults: bool) -> Scenario {
        Scenario {
            seconds: 720,
            sessions: true,
            short_conns: true,
            sparse: true,
            late_joins: 2,
            leaves: 2,
            restarts: 3,
            toggle: true,
            address_changes: 2,
            queue_delays: true,
            ..Scenario::small(seed, faults)
        }
    }
}

/// An injected fault the reconciler should report, or (when
/// [`Label::must_find`] is false) a span where findings of its class are
/// expected and allowed.
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
    /// Counted in recall (false: findings matching it are true, but none is
    /// required, e.g. informational findings of a tailnet-wide toggle).
    pub must_find: bool,
}

/// One input to the reconciler, in server-time order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A node snapshot (at `info.at`).
    Node(NodeInfo),
    /// A refresh of the server's inventory at the given server time: the
    /// whole history of the nodes (snapshots with their own `at`, possibly
    /// earlier), fed in order to [`Reconciler::update_node`].
    Nodes(i64, Vec<NodeInfo>),
    /// A traffic entry (at `logged`).
    Obs(FlowObservation),
    /// A record the server refused (at `logged`), fed to
    /// [`Reconciler::discarded`].
    Discarded(DiscardedRecord),
}

impl Event {
    /// Server time of the event.
    pub fn at(&self) -> i64 {
        match self {
            Event::Node(n) => n.at,
            Event::Nodes(at, _) => *at,
            Event::Obs(o) => o.logged,
            Event::Discarded(d) => d.logged,
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
    /// Benign noise and effects injected, for the report.
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

/// A capture session on the node's clock.
#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    /// `i64::MAX` while open.
    stop: i64,
    proc_id: u32,
    /// Killed: the interval cut by the stop is lost, not written short.
    abrupt: bool,
}

/// Entry key inside a record: connection and the addresses its packets used.
type EntryKey = (usize, SocketAddr, SocketAddr);

struct Node {
    id: Arc<str>,
    ip: IpAddr,
    /// A new address from this true time on.
    new_ip: Option<(i64, IpAddr)>,
    instance: Arc<str>,
    proc_id: u32,
    /// Process of the last record written, and its `proc_seq`.
    cur_proc: Option<u32>,
    seq: u64,
    skew: i64,
    phase: i64,
    delay: i64,
    role: Role,
    sessions: Vec<Session>,
    /// True-time spans in which the node exchanges traffic.
    up: Vec<(i64, i64)>,
    /// Registered with the server at (true time).
    joined: i64,
    /// Left the tailnet at (true time).
    left: Option<i64>,
    /// Upload stalls (true time): uploads due then go at the end.
    stalls: Vec<(i64, i64)>,
    /// Share of uploads sent at once (no queue delay).
    at_once: f64,
    /// Session of the last record written.
    last_session: Option<usize>,
    /// (session, interval) -> entries (this node's view: tx_p, tx_b, rx_p, rx_b).
    acc: BTreeMap<(usize, i64), BTreeMap<EntryKey, [u64; 4]>>,
}

impl Node {
    fn ip_at(&self, t: i64) -> IpAddr {
        match self.new_ip {
            Some((a, ip)) if t >= a => ip,
            _ => self.ip,
        }
    }
    fn up_at(&self, t: i64) -> bool {
        self.up.iter().any(|&(a, b)| a <= t && t < b)
    }
    /// Count `v` at true time `t` in the interval of the session capturing
    /// then (nothing when no session is).
    fn count(&mut self, t: i64, key: EntryKey, v: [u64; 4]) {
        let x = t + self.skew;
        let Some(si) = self
            .sessions
            .iter()
            .position(|s| s.start <= x && x < s.stop)
        else {
            return;
        };
        let k = (x - self.sessions[si].start).div_euclid(INTERVAL);
        let e = self.acc.entry((si, k)).or_default().entry(key).or_default();
        for (a, b) in e.iter_mut().zip(v) {
            *a += b;
        }
    }
}

struct Conn {
    a: usize,
    b: Option<usize>,
    a_port: u16,
    b_port: u16,
    /// The address of `b` when it is no node.
    b_unknown: Option<IpAddr>,
    proto: u8,
    rate: i64,
    /// Busy spans (true time) of a long-lived connection.
    busy: Vec<(i64, i64)>,
}

impl Conn {
    /// Addresses of both ends for a packet sent at true time `t`.
    fn addrs(&self, nodes: &[Node], t: i64) -> (SocketAddr, SocketAddr) {
        let b_ip = match (self.b, self.b_unknown) {
            (Some(b), _) => nodes[b].ip_at(t),
            (None, Some(ip)) => ip,
            (None, None) => IpAddr::from([0, 0, 0, 0]),
        };
        (
            SocketAddr::new(nodes[self.a].ip_at(t), self.a_port),
            SocketAddr::new(b_ip, self.b_port),
        )
    }
}

/// A stop of a node's capture: (true time, resume at (true time), new
/// process, abrupt).
type Break = (i64, Option<i64>, bool, bool);

/// Simulate `sc`.
// Nodes, roles, targets and fault times are parallel vectors.
#[allow(clippy::needless_range_loop)]
pub fn generate(sc: &Scenario) -> Generated {
    let mut rng = Rng::new(sc.seed);
    let tailnet: Arc<str> = Arc::from("example.com");
    let n = sc.nodes.max(4);
    let end = T0 + sc.seconds * S;
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
                new_ip: None,
                instance: Arc::from(
                    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()).as_str(),
                ),
                proc_id: rng.next_u64() as u32,
                cur_proc: None,
                seq: 0,
                skew,
                phase: rng.range(0, INTERVAL / MS) * MS,
                delay: 2 * S + rng.range(0, 200) * MS,
                role: Role::Clean,
                sessions: Vec::new(),
                up: vec![(T0, end)],
                joined: T0 - S,
                left: None,
                stalls: Vec::new(),
                at_once: 0.0,
                last_session: None,
                acc: BTreeMap::new(),
            }
        })
        .collect();
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

    // Effects 4, 5, 6, 8 on distinct clean nodes, in the first 60 % of the
    // run (before the toggle).
    let mut cands: Vec<usize> = (2..n).filter(|&i| nodes[i].role == Role::Clean).collect();
    let mut effect = vec![false; n];
    let mut pick = |rng: &mut Rng| -> Option<usize> {
        if cands.is_empty() {
            return None;
        }
        let i = cands.swap_remove(rng.range(0, cands.len() as i64) as usize);
        effect[i] = true;
        Some(i)
    };
    let eff_time = |rng: &mut Rng| {
        T0 + rng.range(sc.seconds / 10, sc.seconds * 6 / 10) * S + rng.range(0, 1000) * MS
    };
    let mut breaks: Vec<Vec<Break>> = vec![Vec::new(); n];
    let mut init_start: Vec<Option<i64>> = vec![None; n];
    // joiner -> when each node heard of it (true time).
    let mut heard: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for _ in 0..sc.late_joins {
        let Some(i) = pick(&mut rng) else { break };
        let j = eff_time(&mut rng);
        let cs = j + rng.range(0, 3000) * MS;
        init_start[i] = Some(cs);
        nodes[i].joined = j;
        nodes[i].up = vec![(cs + 300 * MS, end)];
        heard.insert(i, (0..n).map(|_| j + rng.range(0, 30_000) * MS).collect());
        benign.push(format!(
            "{}: joins at +{:.1} s (agent at +{:.1} s); peers file it as exit traffic for up to 30 s",
            nodes[i].id,
            (j - T0) as f64 / 1e9,
            (cs - T0) as f64 / 1e9
        ));
    }
    for _ in 0..sc.leaves {
        let Some(i) = pick(&mut rng) else { break };
        let l = eff_time(&mut rng);
        nodes[i].left = Some(l);
        nodes[i].up = vec![(T0, l)];
        breaks[i].push((l + rng.range(600, 1500) * MS, None, false, false));
        benign.push(format!(
            "{}: leaves the tailnet at +{:.1} s (agent stopped gracefully)",
            nodes[i].id,
            (l - T0) as f64 / 1e9
        ));
    }
    for _ in 0..sc.restarts {
        let Some(i) = pick(&mut rng) else { break };
        let r = eff_time(&mut rng);
        let gap = rng.range(1000, 5000) * MS;
        breaks[i].push((r, Some(r + gap), true, false));
        nodes[i].up = vec![(T0, r - 600 * MS), (r + gap + 300 * MS, end)];
        benign.push(format!(
            "{}: agent restarts at +{:.1} s ({:.1} s down, traffic paused)",
            nodes[i].id,
            (r - T0) as f64 / 1e9,
            gap as f64 / 1e9
        ));
    }
    for _ in 0..sc.address_changes {
        let Some(i) = pick(&mut rng) else { break };
        let a = eff_time(&mut rng);
        let ip = IpAddr::from([100, 65, (i / 250) as u8, (i % 250 + 1) as u8]);
        nodes[i].new_ip = Some((a, ip));
        benign.push(format!(
            "{}: address {} -> {ip} at +{:.1} s",
            nodes[i].id,
            nodes[i].ip,
            (a - T0) as f64 / 1e9
        ));
    }

    // Connections: peers are clean or benign nodes when possible; a faulty
    // node's peers are none of the effect nodes (its fault must show).
    let benign_role = |r: Role| matches!(r, Role::Clean | Role::Late | Role::Duplicated);
    let clean: Vec<usize> = (0..n).filter(|&i| benign_role(nodes[i].role)).collect();
    let plain: Vec<usize> = clean.iter().copied().filter(|&i| !effect[i]).collect();
    let mut conns = Vec::new();
    for a in 0..n {
        let pool = if benign_role(nodes[a].role) {
            &clean
        } else {
            &plain
        };
        for _ in 0..sc.conns_per_node {
            let b = loop {
                let b = pool[rng.range(0, pool.len() as i64) as usize];
                if b != a {
                    break b;
                }
            };
            let proto = if rng.chance(0.8) { 6 } else { 17 };
            let ports = [22u16, 80, 443, 5432, 8080, 53];
            conns.push(Conn {
                a,
                b: Some(b),
                a_port: rng.range(20_000, 60_000) as u16,
                b_port: ports[rng.range(0, 6) as usize],
                b_unknown: None,
                proto,
                rate: rng.range(2, 9),
                busy: vec![(T0, end)],
            });
        }
        if nodes[a].role == Role::Unknown {
            let ip = IpAddr::from([100, 127, 255, 1]);
            conns.push(Conn {
                a,
                b: None,
                a_port: 40_000,
                b_port: 443,
                b_unknown: Some(ip),
                proto: 6,
                rate: 4,
                busy: vec![(T0, end)],
            });
            labels.push(Label {
                class: FindingClass::NodeUnknown,
                node: nodes[a].id.to_string(),
                peer: Some(ip.to_string()),
                start: T0,
                end,
                must_find: true,
            });
        }
    }
    let long_conns = conns.len();
    // Effect 3: busy and idle periods of the clean nodes' connections.
    if sc.sparse {
        // A third of the clean nodes are mostly idle: their connections are
        // busy 5-30 s at a time, idle 30-180 s. A deleting node's other
        // connections are busy and idle 5-20 s each (whether the reconciler
        // believes the intervals between its records had no traffic decides
        // the class of what it hides).
        let quiet_node: Vec<bool> = nodes
            .iter()
            .map(|nd| nd.role == Role::Clean && rng.chance(0.33))
            .collect();
        for ci in 0..conns.len() {
            let c = &conns[ci];
            let first = conns.iter().position(|x| x.a == c.a && x.b.is_some());
            let (busy, idle) = match nodes[c.a].role {
                Role::Deleted if first != Some(ci) => ((5, 20), (5, 20)),
                Role::Clean if quiet_node[c.a] || c.b.is_some_and(|b| quiet_node[b]) => {
                    ((5, 30), (30, 180))
                }
                Role::Clean => ((15, 120), (10, 90)),
                _ => continue,
            };
            let mut t = T0
                + if rng.chance(0.5) {
                    0
                } else {
                    rng.range(0, idle.1) * S
                };
            let mut spans = Vec::new();
            while t < end {
                let b = (t + rng.range(busy.0, busy.1) * S).min(end);
                spans.push((t, b));
                t = b + rng.range(idle.0, idle.1) * S;
            }
            conns[ci].busy = spans;
        }
    }
    // Fault times: each faulty node gets its fault in the middle part of the run.
    let fault_at: Vec<i64> = (0..n)
        .map(|_| T0 + rng.range(sc.seconds / 4, sc.seconds * 2 / 3) * S)
        .collect();
    let kill_len = 60 * S;
    // Effect 7: after every fault's span.
    let toggle = sc
        .toggle
        .then(|| T0 + (sc.seconds * 2 / 3 + 75) * S + rng.range(0, 10_000) * MS);
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
                must_find: true,
            })
        };
        match nodes[i].role {
            Role::Killed => {
                lab(FindingClass::MissingAgentSilent, None, t, t + kill_len);
                breaks[i].push((t, Some(t + kill_len), true, true));
            }
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
    // Effect 7: every capturing agent stops 0.2-2 s after X and starts
    // again 0.2-2 s after X + 60 s.
    let mut resume = vec![None; n];
    if let Some(x) = toggle {
        for i in 0..n {
            if nodes[i].joined > x || nodes[i].left.is_some_and(|l| l < x) {
                continue;
            }
            let back = x + TOGGLE_NS + rng.range(200, 2000) * MS;
            resume[i] = Some(back);
            breaks[i].push((x + rng.range(200, 2000) * MS, Some(back), false, false));
        }
        benign.push(format!(
            "flow logging off for the tailnet from +{:.1} s for 60 s",
            (x - T0) as f64 / 1e9
        ));
    }
    // Effect 9: one upload stall of some clean agents.
    if sc.queue_delays {
        for nd in nodes.iter_mut() {
            nd.at_once = if rng.chance(0.5) { 0.0 } else { 0.1 };
            if nd.role == Role::Clean && rng.chance(0.3) {
                let s0 = T0 + rng.range(sc.seconds / 10, sc.seconds * 6 / 10) * S;
                nd.stalls.push((s0, s0 + rng.range(10, 40) * S));
            }
        }
    }
    // Capture sessions (node clock).
    for (i, nd) in nodes.iter_mut().enumerate() {
        let grid_up = |x: i64| {
            if sc.sessions {
                x
            } else {
                let r = (x - nd.phase).rem_euclid(INTERVAL);
                if r == 0 { x } else { x + INTERVAL - r }
            }
        };
        let start = match init_start[i] {
            Some(cs) => grid_up(cs + nd.skew),
            None if sc.sessions => {
                let back = if rng.chance(0.5) {
                    rng.range(0, 5000) * MS
                } else {
                    rng.range(5, 3600) * S + rng.range(0, 1000) * MS
                };
                T0 + nd.skew - back
            }
            None => {
                let x = T0 + nd.skew;
                x - (x - nd.phase).rem_euclid(INTERVAL)
            }
        };
        let mut sessions = vec![Session {
            start,
            stop: i64::MAX,
            proc_id: nd.proc_id,
            abrupt: false,
        }];
        breaks[i].sort_by_key(|b| b.0);
        for &(stop, back, new_proc, abrupt) in &breaks[i] {
            let Some(last) = sessions.last_mut() else {
                break;
            };
            last.stop = stop + nd.skew;
            last.abrupt = abrupt;
            let Some(back) = back else {
                break;
            };
            let proc_id = if new_proc {
                last.proc_id.wrapping_add(1)
            } else {
                last.proc_id
            };
            sessions.push(Session {
                start: grid_up(back + nd.skew),
                stop: i64::MAX,
                proc_id,
                abrupt: false,
            });
        }
        nd.sessions = sessions;
    }

    // The server's inventory: each node's history (server time).
    let state = |nd: &Node, at: i64| -> NodeInfo {
        let off = toggle.is_some_and(|x| at >= x && at < x + TOGGLE_NS);
        NodeInfo {
            tailnet: tailnet.to_string(),
            node: nd.id.to_string(),
            addresses: vec![nd.ip_at(at)],
            opted_out: nd.role == Role::OptedOut,
            flow_logging: nd.role != Role::LoggingOff && !off,
            last_report: Some(at),
            at,
        }
    };
    let mut history: Vec<Vec<NodeInfo>> =
        nodes.iter().map(|nd| vec![state(nd, nd.joined)]).collect();
    for (i, nd) in nodes.iter().enumerate() {
        if let Some((a, _)) = nd.new_ip {
            history[i].push(state(nd, a));
        }
        if let Some(x) = toggle
            && nd.joined <= x
        {
            history[i].push(state(nd, x));
            history[i].push(state(nd, x + TOGGLE_NS));
        }
        history[i].sort_by_key(|h| h.at);
    }
    let mut events: Vec<Event> = Vec::new();
    let mut changes: BTreeMap<i64, Vec<NodeInfo>> = BTreeMap::new();
    for h in history.iter().flatten() {
        changes.entry(h.at).or_default().push(h.clone());
    }
    for (at, v) in changes {
        events.push(Event::Nodes(at, v));
    }

    let mut rec_faults_done = vec![false; n];
    let mut deletion_labelled = vec![false; n];
    // Per node: true start of the first record the server refused.
    let mut refused_from: Vec<Option<i64>> = vec![None; n];
    let mut next_port: Vec<u16> = vec![32_768; n];
    let table_delay = if sc.short_conns { 200 } else { 0 };
    let mut t = T0;
    let mut tick = 0i64;
    while t < end {
        // Traffic of this tick (quiet for the last 20 s, so that every
        // record of the run is complete).
        let quiet = t >= end - 20 * S;
        for ci in 0..long_conns {
            if quiet {
                break;
            }
            let c = &conns[ci];
            let busy = c.busy.iter().any(|&(a, b)| a <= t && t < b);
            let up = nodes[c.a].up_at(t) && c.b.is_none_or(|b| nodes[b].up_at(t));
            if !busy || !up {
                continue;
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
                let (a_addr, b_addr) = c.addrs(&nodes, at);
                let key = (ci, a_addr, b_addr);
                let (ds, dr) = (
                    rng.range(0, table_delay + 1) * MS,
                    rng.range(0, table_delay + 1) * MS,
                );
                if let Some(s) = snd {
                    nodes[s].count(at + ds, key, [pkts, bytes, 0, 0]);
                } else if let Some(r) = rcv {
                    // Unknown sender: only the receiver logs (no mirror).
                    nodes[r].count(arrive + dr, key, [0, 0, pkts, bytes]);
                    continue;
                }
                if let Some(r) = rcv {
                    let lb = lost * (bytes / pkts);
                    nodes[r].count(arrive + dr, key, [0, 0, pkts - lost, bytes - lb]);
                }
            }
        }
        // Effect 2: short connections, a burst of packets each.
        if sc.short_conns && !quiet {
            for a in 0..n {
                if !rng.chance(0.015) || !nodes[a].up_at(t) || !nodes[a].up_at(t + S) {
                    continue;
                }
                let pool = if benign_role(nodes[a].role) {
                    &clean
                } else {
                    &plain
                };
                let b = pool[rng.range(0, pool.len() as i64) as usize];
                if b == a || !nodes[b].up_at(t) || !nodes[b].up_at(t + S) {
                    continue;
                }
                let port = next_port[a];
                next_port[a] = if port >= 60_999 { 32_768 } else { port + 1 };
                let ports = [22u16, 80, 443, 53, 3000, 9100];
                let ci = conns.len();
                conns.push(Conn {
                    a,
                    b: Some(b),
                    a_port: port,
                    b_port: ports[rng.range(0, 6) as usize],
                    b_unknown: None,
                    proto: if rng.chance(0.7) { 6 } else { 17 },
                    rate: 0,
                    busy: Vec::new(),
                });
                let t0 = t + rng.range(0, TICK);
                for p in 0..rng.range(2, 13) {
                    let at = t0 + rng.range(0, 600) * MS;
                    let arrive = at + rng.range(5, 40) * MS;
                    let (s, r) = if p == 0 || rng.chance(0.5) {
                        (a, b)
                    } else {
                        (b, a)
                    };
                    let bytes = rng.range(60, 1400) as u64;
                    let (a_addr, b_addr) = conns[ci].addrs(&nodes, at);
                    let key = (ci, a_addr, b_addr);
                    let ds = rng.range(0, table_delay + 1) * MS;
                    let dr = rng.range(0, table_delay + 1) * MS;
                    nodes[s].count(at + ds, key, [1, bytes, 0, 0]);
                    nodes[r].count(arrive + dr, key, [0, 0, 1, bytes]);
                }
            }
        }
        // Cut records whose interval ended (node clock) 1.5 s before this
        // tick: every packet counted in them has reached the table.
        for i in 0..n {
            let now_node = t + nodes[i].skew;
            while let Some((&(si, k), _)) = nodes[i].acc.first_key_value() {
                let sess = nodes[i].sessions[si];
                let rec_start_node = sess.start + k * INTERVAL;
                let full_end = rec_start_node + INTERVAL;
                let rec_end_node = full_end.min(sess.stop);
                if rec_end_node + 1500 * MS > now_node {
                    break;
                }
                let entries: Vec<(EntryKey, [u64; 4])> = nodes[i]
                    .acc
                    .pop_first()
                    .map(|(_, v)| v.into_iter().collect())
                    .unwrap_or_default();
                if sess.abrupt && full_end > sess.stop {
                    // Killed: the interval in progress is lost.
                    continue;
                }
                let true_start = rec_start_node - nodes[i].skew;
                let true_end = rec_end_node - nodes[i].skew;
                let role = nodes[i].role;
                let ft = fault_at[i];
                if matches!(role, Role::OptedOut | Role::LoggingOff) || entries.is_empty() {
                    continue;
                }
                let first_of_session = nodes[i].last_session != Some(si);
                let nd = &mut nodes[i];
                nd.last_session = Some(si);
                if nd.cur_proc != Some(sess.proc_id) {
                    if nd.cur_proc.is_some() && role == Role::Killed {
                        rec_faults_done[i] = true;
                    }
                    nd.cur_proc = Some(sess.proc_id);
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
                                    must_find: true,
                                });
                            }
                        }
                        Role::EditLarge | Role::Forged => {
                            // The target connection's entry, if big enough.
                            let pick = entries
                                .iter()
                                .position(|(c, v)| Some(c.0) == target[i] && v[1] >= 40_000);
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
                                        peer_of(entries[p].0.0)
                                    },
                                    start: true_start,
                                    end: true_end,
                                    must_find: true,
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
                        .position(|(c, _)| Some(c.0) == target[i])
                        .map(|p| (p, 0.7));
                }
                let nd = &nodes[i];
                let (mut logged, sent) = if sc.queue_delays {
                    // Effect 9: when the agent sends the upload (true time).
                    let mut send = true_end
                        + if (first_of_session && sess.start > T0 + nd.skew - 5 * S)
                            || rec_end_node == sess.stop
                            || rng.chance(nd.at_once)
                        {
                            rng.range(0, 100) * MS
                        } else {
                            2 * S + rng.range(0, 200) * MS
                        };
                    if let Some(&(_, s1)) = nd.stalls.iter().find(|s| s.0 <= send && send < s.1) {
                        send = s1 + rng.range(0, 500) * MS;
                    }
                    (send + rng.range(1, 51) * MS, Some(send + nd.skew))
                } else {
                    (true_end + nd.delay + rng.range(0, 800) * MS, None)
                };
                let in_span = true_start >= ft && true_start < ft + 60 * S;
                if role == Role::Late && in_span {
                    logged += rng.range(20, 45) * S;
                }
                let copies = if role == Role::Duplicated && in_span {
                    2
                } else {
                    1
                };
                let shifts: Vec<i64> = (0..copies)
                    .map(|c| if c == 0 { 0 } else { rng.range(1, 10) * S })
                    .collect();
                // Effect 7: the server refuses what it receives while flow
                // logging is off (all copies, decided by the first).
                if let Some(x) = toggle
                    && logged >= x
                    && logged < x + TOGGLE_NS
                {
                    let r = refused_from[i].get_or_insert(true_start);
                    *r = (*r).min(true_start);
                    for sh in &shifts {
                        events.push(Event::Discarded(DiscardedRecord {
                            tailnet: tailnet.clone(),
                            node: nd.id.clone(),
                            start: rec_start_node,
                            end: rec_end_node,
                            logged: logged + sh,
                            sent,
                            instance: nd.instance.clone(),
                            proc_id: sess.proc_id,
                            proc_seq: nd.seq,
                        }));
                    }
                    continue;
                }
                let mut index = 0u32;
                let mut out = Vec::with_capacity(entries.len());
                for (p, ((c, a_addr, b_addr), v)) in entries.iter().enumerate() {
                    let conn = &conns[*c];
                    // (Only from records with other entries: deleting a
                    // whole record would be a sequence gap.)
                    if role == Role::Deleted
                        && Some(*c) == target[i]
                        && true_start >= ft
                        && true_end <= ft + 30 * S
                        && entries.iter().any(|(k, _)| Some(k.0) != target[i])
                    {
                        if !deletion_labelled[i] {
                            deletion_labelled[i] = true;
                            labels.push(Label {
                                class: FindingClass::MissingSuspicious,
                                node: nd.id.to_string(),
                                peer: conn.b.map(|b| nodes[b].id.to_string()),
                                start: true_start,
                                end: ft + 30 * S,
                                must_find: true,
                            });
                        }
                        continue;
                    }
                    let mine_a = conn.a == i;
                    let (src, dst) = if mine_a {
                        (*a_addr, *b_addr)
                    } else {
                        (*b_addr, *a_addr)
                    };
                    // Effect 4: a peer not heard of yet is exit traffic.
                    let other = if mine_a { conn.b } else { Some(conn.a) };
                    let kind = match other.and_then(|o| heard.get(&o)) {
                        Some(h) if h[i] > true_end => FlowKind::Exit,
                        _ => FlowKind::Virtual,
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
                        kind,
                        proto: conn.proto,
                        src,
                        dst,
                        tx_pkts: v[0],
                        tx_bytes: v[1],
                        rx_pkts: v[2],
                        rx_bytes: v[3],
                        instance: nd.instance.clone(),
                        proc_id: sess.proc_id,
                        proc_seq: nd.seq,
                        sequenced: true,
                        index,
                        integrity,
                        sent,
                        capture_start: sc.sessions.then_some(sess.start),
                    });
                    index += 1;
                }
                for sh in &shifts {
                    for o in &out {
                        let mut o = o.clone();
                        o.logged += sh;
                        events.push(Event::Obs(o));
                    }
                }
            }
        }
        // Refresh every 30 s: every registered node's history, and a report
        // of every node whose agent runs (not while killed, not once left).
        tick += 1;
        if sc.reports && tick % 120 == 0 {
            let mut v = Vec::new();
            for (i, nd) in nodes.iter().enumerate() {
                if nd.joined > t {
                    continue;
                }
                v.extend(history[i].iter().filter(|h| h.at <= t).cloned());
                let killed =
                    nd.role == Role::Killed && t >= fault_at[i] && t < fault_at[i] + kill_len;
                if killed || nd.left.is_some_and(|l| l <= t) {
                    continue;
                }
                v.push(state(nd, t));
            }
            events.push(Event::Nodes(t, v));
        }
        t += TICK;
    }
    // Effect 7: informational findings allowed for each node from its first
    // refused record to its new session.
    if let Some(x) = toggle {
        for i in 0..n {
            if let Some(back) = resume[i] {
                labels.push(Label {
                    class: FindingClass::MissingFlowLoggingOff,
                    node: nodes[i].id.to_string(),
                    peer: None,
                    start: refused_from[i].map_or(x, |r| r.min(x)),
                    end: back,
                    must_find: false,
                });
            }
        }
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
            Event::Nodes(_, v) => v.iter().for_each(|n| r.update_node(n)),
            Event::Obs(o) => r.observe(o),
            Event::Discarded(d) => r.discarded(d),
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
    /// Injected faults of the class (labels that must be found).
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
/// the finding's window. Recall counts the labels that must be found;
/// precision counts findings matching any label.
pub fn score(labels: &[Label], run: &Run, cfg: &Config) -> Score {
    let slack = 2 * cfg.window_ns + 5 * S;
    let mut classes = Vec::new();
    let mut false_findings = 0;
    for class in FindingClass::ALL {
        let ls: Vec<&Label> = labels.iter().filter(|l| l.class == class).collect();
        let must: Vec<&Label> = ls.iter().copied().filter(|l| l.must_find).collect();
        let fs: Vec<&(i64, Finding)> = run.findings.iter().filter(|f| f.1.class == class).collect();
        let mut found = 0;
        let mut max_latency = None;
        for l in &must {
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
            labels: must.len(),
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
