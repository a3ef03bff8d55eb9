//! The labelled corpus of `tally bench detect`: a simulated tailnet with a
//! realistic baseline, and injected attack scenarios, each labelled with
//! the rule that should name it, the group it should name and when.
//!
//! **Time.** Eight days compressed: seven days of *learning* (one record
//! per node per hour, summing that hour: every pair of nodes that talks in
//! the baseline talks every hour, so the detector's seven-day pair baseline
//! knows them all), then `dense_hours` of one record per node per minute,
//! where the scenarios are injected. Scenario traffic comes in 5-s records,
//! as agents send them.
//!
//! **Baseline.** Servers (DNS, web, API, git, SMB file servers, databases,
//! caches, queues, syslog, Grafana), each tagged for its role; clients
//! (untagged laptops, desktops and dev VMs) that each talk to DNS and a
//! few servers on their service ports from ephemeral ports; web servers
//! calling APIs, APIs calling databases, caches and queues over pooled
//! connections; every server sending syslog; a Prometheus node tagged
//! `tag:monitoring` scraping node_exporter (9100) on every node; admins'
//! workstations tagged `tag:admin` SSHing into the servers they look after;
//! a third of the clients browsing through an exit node; a backup host
//! uploading 700-850 MiB an hour offsite (just under the exfiltration
//! threshold). Both ends of every tailnet connection log it. Audit events:
//! API keys with expiry, auth keys, node registrations, renames and
//! deletions, role changes below admin, retention raised, flow logging
//! turned on, single refused changes (including refused attempts to turn
//! logging off or lower retention). Findings: the informational classes
//! (lost batches, sequence gaps, unknown nodes, opted-out nodes).
//!
//! **Order.** Items come in the store's order: a flow record arrives after
//! its interval ends by its agent's upload delay (0-10 s, 1-10 min for one
//! record in fifty), so records of different nodes interleave and event
//! times go back and forth, as in the server; the detector gets each
//! record's end as its event time.
//!
//! **Scenarios.** See [`Scenarios`]: one function per built-in rule.

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tally_detect::NodeRef;
use tally_proto::audit::{Actor, AuditEvent, Origin, Target};
use tally_proto::finding::{Evidence, Finding, FindingClass, Severity, Window};
use tally_proto::flow::{ConnectionCounts, MAX_ENTRIES_PER_RECORD, TrafficKind};

/// The tailnet's name.
pub(crate) const TAILNET: &str = "bench.example";
/// Start of the simulated time: 2026-03-02T00:00:00Z.
pub(crate) const T0: i64 = 1_772_409_600;
/// Hours of learning (one record per node per hour).
const LEARN_HOURS: i64 = 7 * 24 + 1;
/// The dense part starts here (after the seven-day pair baseline).
pub(crate) const DENSE_START: i64 = T0 + (LEARN_HOURS + 1) * 3600;
/// Scenario records are this long, as agents send them.
const SCENARIO_RECORD_SECS: i64 = 5;
/// How long after an instance's last event its alert may come and still
/// count as naming it.
const LABEL_SLACK_SECS: i64 = 300;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// nmap's 100 most common TCP ports (`nmap -F`).
pub(crate) const NMAP_TOP_TCP: &[u16] = &[
    7, 9, 13, 21, 22, 23, 25, 26, 37, 53, 79, 80, 81, 88, 106, 110, 111, 113, 119, 135, 139, 143,
    144, 179, 199, 389, 427, 443, 444, 445, 465, 513, 514, 515, 543, 544, 548, 554, 587, 631, 646,
    873, 990, 993, 995, 1025, 1026, 1027, 1028, 1029, 1110, 1433, 1720, 1723, 1755, 1900, 2000,
    2001, 2049, 2121, 2717, 3000, 3128, 3306, 3389, 3986, 4899, 5000, 5009, 5051, 5060, 5101, 5190,
    5357, 5432, 5631, 5666, 5800, 5900, 6000, 6001, 6646, 7070, 8000, 8008, 8009, 8080, 8081, 8443,
    8888, 9100, 9999, 10000, 32768, 49152, 49153, 49154, 49155, 49156, 49157,
];
/// nmap's most common UDP ports (`nmap -sU --top-ports 40`).
const NMAP_TOP_UDP: &[u16] = &[
    7, 9, 17, 19, 49, 53, 67, 68, 69, 80, 88, 111, 120, 123, 135, 136, 137, 138, 139, 158, 161,
    162, 177, 427, 443, 445, 497, 500, 514, 515, 518, 520, 593, 623, 626, 631, 996, 997, 998, 999,
];
/// Ports sweeps look for.
const SWEEP_PORTS: &[u16] = &[22, 445, 3389, 5985, 80, 443, 8080, 6379, 5432, 9200, 2375];
/// Ports of lateral movement to a new peer.
const LATERAL_PORTS: &[u16] = &[22, 445, 3389, 5985, 5432, 6379, 8080, 443, 2375, 9200, 3306];
/// Remote-access ports (the rule's first list).
const REMOTE_PORTS: &[u16] = &[22, 23, 3389, 5900, 5901, 5985, 5986];
/// Callback ports (the rule's second list).
const CALLBACK_PORTS: &[u16] = &[4444, 1337, 31337, 6666, 6667];

/// A small xorshift generator: deterministic, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value).
    pub(crate) fn new(seed: u64) -> Self {
        let mut r = Rng((seed ^ 0x5851_F42D_4C95_7F2D).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..8 {
            r.next();
        }
        r
    }

    /// The next 64 bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// `v` scaled by a factor uniform in `[1 - f, 1 + f]`.
    fn jitter(&mut self, v: u64, f: f64) -> u64 {
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (v as f64 * (1.0 - f + 2.0 * f * x)).max(1.0) as u64
    }

    /// A client port (Linux's ephemeral range).
    fn eph(&mut self) -> u16 {
        self.range(32768, 60999) as u16
    }

    /// An index into a slice of `len` (> 0) items.
    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// What a server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Svc {
    Dns,
    Web,
    Api,
    Git,
    Files,
    Db,
    Cache,
    Mq,
    Logs,
    Grafana,
}

impl Svc {
    /// (protocol, port, tag, name prefix, count per 1,000 nodes).
    fn spec(self) -> (u8, u16, &'static str, &'static str, usize) {
        match self {
            Svc::Dns => (UDP, 53, "tag:dns", "dns", 2),
            Svc::Web => (TCP, 443, "tag:web", "web", 12),
            Svc::Api => (TCP, 8080, "tag:api", "api", 10),
            Svc::Git => (TCP, 443, "tag:git", "git", 2),
            Svc::Files => (TCP, 445, "tag:files", "files", 3),
            Svc::Db => (TCP, 5432, "tag:db", "db", 6),
            Svc::Cache => (TCP, 6379, "tag:cache", "cache", 4),
            Svc::Mq => (TCP, 5672, "tag:mq", "mq", 3),
            Svc::Logs => (UDP, 514, "tag:logging", "logs", 2),
            Svc::Grafana => (TCP, 3000, "tag:grafana", "grafana", 1),
        }
    }

    const ALL: [Svc; 10] = [
        Svc::Dns,
        Svc::Web,
        Svc::Api,
        Svc::Git,
        Svc::Files,
        Svc::Db,
        Svc::Cache,
        Svc::Mq,
        Svc::Logs,
        Svc::Grafana,
    ];
}

/// A node's job in the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Admin,
    Monitoring,
    Server(Svc),
    Exit,
    Backup,
}

/// One baseline connection pattern of a node (the client side).
#[derive(Debug, Clone)]
struct Link {
    dst: u32,
    proto: u8,
    port: u16,
    svc: Option<Svc>,
    /// Chance the link is used in a given minute.
    p: f64,
    /// Pooled / keep-alive client port (a fresh ephemeral port per
    /// connection when `None`).
    keep: Option<u16>,
}

/// A node of the simulated tailnet.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// What rules see.
    pub(crate) r: NodeRef,
    /// Its tailnet address.
    pub(crate) ip: Ipv4Addr,
    /// Its job.
    pub(crate) role: Role,
    links: Vec<Link>,
    /// Internet addresses it reaches through the exit node.
    exit_ips: Vec<Ipv4Addr>,
}

/// The simulated tailnet.
pub(crate) struct Tailnet {
    /// Every node.
    pub(crate) nodes: Vec<Node>,
    /// Nodes by address, as the server's node table answers.
    pub(crate) by_ip: HashMap<IpAddr, NodeRef>,
    /// Untagged client nodes (the attackers' footholds).
    pub(crate) clients: Vec<u32>,
    /// (client node, server node) pairs of the baseline.
    pairs: HashSet<(u32, u32)>,
    /// Backup host's upload rate, bytes per hour.
    backup_rate: u64,
    /// Login names of users.
    admin_users: Vec<String>,
    member_users: Vec<String>,
}

/// One flow record: one node's entries for one interval.
#[derive(Debug, Clone)]
pub(crate) struct FlowRec {
    /// The node that logged it (index into [`Tailnet::nodes`]).
    pub(crate) node: u32,
    /// Interval start and end, Unix seconds.
    pub(crate) start: i64,
    /// See `start`.
    pub(crate) end: i64,
    /// Its entries.
    pub(crate) entries: Vec<(TrafficKind, ConnectionCounts)>,
}

/// Something the detection consumer reads from the store.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A flow record.
    Flow(FlowRec),
    /// A configuration audit event (its stored JSON).
    Audit(Value),
    /// A reconciliation finding (its stored JSON) about a node.
    Finding(Value, u32),
}

/// An item at its event time.
#[derive(Debug, Clone)]
pub(crate) struct Timed {
    /// Event time, Unix seconds.
    pub(crate) ts: i64,
    /// When the server stores it (the store's order): a flow record
    /// arrives after its interval ends, by its agent's upload delay.
    pub(crate) arrival: i64,
    /// The item.
    pub(crate) item: Item,
}

/// How a label counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabelKind {
    /// An instance of the rule's scenario: counts for recall and precision.
    Primary,
    /// The scenario also meets this rule's definition (a port scan that
    /// hits port 22 from an untagged node is also remote access): an alert
    /// of the rule naming it is right (precision), a missing one is not
    /// counted (recall).
    Collateral,
    /// A scenario the rule cannot catch by design (a scan slower than its
    /// threshold): reported on a row of its own.
    Evasion,
}

/// What an alert should say about one injected instance.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    /// The rule.
    pub(crate) rule: &'static str,
    /// Group fields the alert must name, with their values.
    pub(crate) group: Vec<(&'static str, String)>,
    /// Event-time range the alert must fall in (Unix s).
    pub(crate) start: i64,
    /// See `start` (includes [`LABEL_SLACK_SECS`]).
    pub(crate) end: i64,
    /// How it counts.
    pub(crate) kind: LabelKind,
    /// Scenario name (for the report of misses).
    pub(crate) scenario: &'static str,
}

/// A generated corpus.
pub(crate) struct Corpus {
    /// The tailnet.
    pub(crate) tailnet: Tailnet,
    /// Items in the store's order (arrival).
    pub(crate) items: Vec<Timed>,
    /// Labels of the injected instances.
    pub(crate) labels: Vec<Label>,
    /// Flow entries in `items`.
    pub(crate) flow_entries: usize,
    /// End of the dense part.
    pub(crate) end: i64,
}

impl Tailnet {
    /// A tailnet of `n` nodes (at least 100).
    pub(crate) fn build(rng: &mut Rng, n: usize) -> Tailnet {
        let n = n.max(100);
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        let mut used_ips = HashSet::new();
        let mut add = |rng: &mut Rng, name: String, tags: Vec<&str>, role: Role| -> u32 {
            add_node(&mut nodes, &mut used_ips, rng, name, tags, role)
        };
        let scale = n as f64 / 1000.0;
        let mut by_svc: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
        for svc in Svc::ALL {
            let (_, _, tag, prefix, per_1000) = svc.spec();
            let count = ((per_1000 as f64 * scale).round() as usize).max(1);
            for k in 1..=count {
                let i = add(
                    rng,
                    format!("{prefix}-{k:02}"),
                    vec![tag],
                    Role::Server(svc),
                );
                by_svc.entry(prefix).or_default().push(i);
            }
        }
        let monitoring = add(
            rng,
            "prometheus".into(),
            vec!["tag:monitoring"],
            Role::Monitoring,
        );
        add(rng, "exit-01".into(), vec!["tag:exit"], Role::Exit);
        add(rng, "backup-01".into(), vec!["tag:backup"], Role::Backup);
        let admin_names = [
            "alice", "bruno", "chen", "dana", "emeka", "farah", "gita", "hugo",
        ];
        let admin_count = ((8.0 * scale).round() as usize).clamp(1, admin_names.len());
        let mut admin_users = Vec::new();
        for name in admin_names.iter().take(admin_count) {
            add(rng, format!("admin-{name}"), vec!["tag:admin"], Role::Admin);
            admin_users.push(format!("{name}@bench.example"));
        }
        let mut clients = Vec::new();
        let mut k = 0;
        let before_clients = Svc::ALL
            .iter()
            .map(|s| ((s.spec().4 as f64 * scale).round() as usize).max(1))
            .sum::<usize>()
            + 3
            + admin_count;
        while before_clients + clients.len() < n {
            k += 1;
            let name = match k % 4 {
                0 => format!("desktop-{k}"),
                1 => format!("dev-vm-{k}"),
                _ => format!("laptop-u{k:03}"),
            };
            clients.push(add(rng, name, vec![], Role::Client));
        }
        let member_users = (1..=200)
            .map(|k| format!("u{k:03}@bench.example"))
            .collect();
        let svc = |name: &str| by_svc.get(name).cloned().unwrap_or_default();
        let (dns, web, api, git, files, db, cache, mq, logs, grafana) = (
            svc("dns"),
            svc("web"),
            svc("api"),
            svc("git"),
            svc("files"),
            svc("db"),
            svc("cache"),
            svc("mq"),
            svc("logs"),
            svc("grafana"),
        );
        let link = |rng: &mut Rng, dst: u32, s: Svc, p: f64, keep: bool| {
            let (proto, port, ..) = s.spec();
            Link {
                dst,
                proto,
                port,
                svc: Some(s),
                p,
                keep: keep.then(|| rng.eph()),
            }
        };
        let pick = |rng: &mut Rng, from: &[u32], k: usize| -> Vec<u32> {
            let mut out: Vec<u32> = Vec::new();
            while out.len() < k.min(from.len()) {
                let c = from[rng.index(from.len())];
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            out
        };
        let internet = |rng: &mut Rng| {
            // CDNs and SaaS: Fastly, Cloudflare, Google, AWS.
            let r = rng.next();
            match r % 4 {
                0 => Ipv4Addr::new(151, 101, (r >> 8) as u8, (r >> 16) as u8),
                1 => Ipv4Addr::new(104, 16, (r >> 8) as u8 & 15, (r >> 16) as u8),
                2 => Ipv4Addr::new(142, 250, (r >> 8) as u8, (r >> 16) as u8),
                _ => Ipv4Addr::new(52, 94, (r >> 8) as u8, (r >> 16) as u8),
            }
        };
        for i in 0..nodes.len() {
            let mut links = Vec::new();
            let mut exit_ips = Vec::new();
            let role = nodes[i].role;
            for d in &dns {
                if *d as usize != i {
                    links.push(link(rng, *d, Svc::Dns, 0.9, false));
                }
            }
            match role {
                Role::Client => {
                    let k = rng.range(1, 3) as usize;
                    for w in pick(rng, &web, k) {
                        links.push(link(rng, w, Svc::Web, 0.6, false));
                    }
                    if rng.chance(0.5) {
                        for a in pick(rng, &api, 1) {
                            links.push(link(rng, a, Svc::Api, 0.4, false));
                        }
                    }
                    if rng.chance(0.4) {
                        for g in pick(rng, &git, 1) {
                            links.push(link(rng, g, Svc::Git, 0.15, false));
                        }
                    }
                    if rng.chance(0.3) {
                        for f in pick(rng, &files, 1) {
                            links.push(link(rng, f, Svc::Files, 0.5, true));
                        }
                    }
                    if rng.chance(0.35) {
                        for _ in 0..rng.range(2, 4) {
                            exit_ips.push(internet(rng));
                        }
                    }
                }
                Role::Admin => {
                    for g in &grafana {
                        links.push(link(rng, *g, Svc::Grafana, 0.5, false));
                    }
                    let servers: Vec<u32> = (0..nodes.len() as u32)
                        .filter(|&s| matches!(nodes[s as usize].role, Role::Server(_)))
                        .collect();
                    for s in pick(rng, &servers, 8) {
                        links.push(Link {
                            dst: s,
                            proto: TCP,
                            port: 22,
                            svc: None,
                            p: 0.02,
                            keep: None,
                        });
                    }
                }
                Role::Server(Svc::Web) => {
                    for a in pick(rng, &api, 2) {
                        links.push(link(rng, a, Svc::Api, 1.0, true));
                    }
                }
                Role::Server(Svc::Api) => {
                    let k = rng.range(1, 2) as usize;
                    for d in pick(rng, &db, k) {
                        links.push(link(rng, d, Svc::Db, 1.0, true));
                    }
                    for c in pick(rng, &cache, 1) {
                        links.push(link(rng, c, Svc::Cache, 1.0, true));
                    }
                    if rng.chance(0.4) {
                        for m in pick(rng, &mq, 1) {
                            links.push(link(rng, m, Svc::Mq, 1.0, true));
                        }
                    }
                }
                Role::Server(Svc::Grafana) => {
                    links.push(Link {
                        dst: monitoring,
                        proto: TCP,
                        port: 9090,
                        svc: None,
                        p: 1.0,
                        keep: Some(rng.eph()),
                    });
                }
                Role::Monitoring => {
                    for t in 0..nodes.len() as u32 {
                        if t as usize != i {
                            links.push(Link {
                                dst: t,
                                proto: TCP,
                                port: 9100,
                                svc: None,
                                p: 1.0,
                                keep: Some(rng.eph()),
                            });
                        }
                    }
                }
                Role::Backup => {
                    exit_ips.push(Ipv4Addr::new(
                        52,
                        216,
                        rng.below(256) as u8,
                        rng.range(1, 254) as u8,
                    ));
                }
                Role::Exit | Role::Server(_) => {}
            }
            if matches!(role, Role::Server(s) if s != Svc::Logs) {
                for l in pick(rng, &logs, 1) {
                    links.push(link(rng, l, Svc::Logs, 1.0, true));
                }
            }
            nodes[i].links = links;
            nodes[i].exit_ips = exit_ips;
        }
        let by_ip = nodes
            .iter()
            .map(|n| (IpAddr::V4(n.ip), n.r.clone()))
            .collect();
        let pairs = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.links.iter().map(move |l| (i as u32, l.dst)))
            .collect();
        Tailnet {
            nodes,
            by_ip,
            clients,
            pairs,
            backup_rate: rng.range(700, 850) * MIB,
            admin_users,
            member_users,
        }
    }

    fn sock(&self, node: u32, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.nodes[node as usize].ip), port)
    }

    /// Whether `a` and `b` talk in the baseline (either way).
    fn talk(&self, a: u32, b: u32) -> bool {
        self.pairs.contains(&(a, b)) || self.pairs.contains(&(b, a))
    }

    fn name(&self, node: u32) -> String {
        self.nodes[node as usize].r.name.clone()
    }

    fn ip(&self, node: u32) -> String {
        self.nodes[node as usize].ip.to_string()
    }
}

/// An agent's upload delay after a record's interval ends: 0-10 s
/// usually, 1-10 minutes for one record in fifty (a backlog after a
/// network change or a sleeping laptop).
fn upload_delay(rng: &mut Rng) -> i64 {
    if rng.chance(0.02) {
        rng.range(60, 600) as i64
    } else {
        rng.range(0, 10) as i64
    }
}

/// Adds a node with a fresh address and ID; returns its index.
fn add_node(
    nodes: &mut Vec<Node>,
    used_ips: &mut HashSet<Ipv4Addr>,
    rng: &mut Rng,
    name: String,
    tags: Vec<&str>,
    role: Role,
) -> u32 {
    let ip = loop {
        let r = rng.next();
        let ip = Ipv4Addr::new(
            100,
            64 + (r % 64) as u8,
            (r >> 8) as u8,
            1 + ((r >> 16) % 254) as u8,
        );
        if used_ips.insert(ip) {
            break ip;
        }
    };
    let id = format!("n{:010x}CNTRL", rng.next() & 0xff_ffff_ffff);
    nodes.push(Node {
        r: NodeRef {
            id,
            name,
            tags: tags.into_iter().map(str::to_owned).collect(),
        },
        ip,
        role,
        links: Vec::new(),
        exit_ips: Vec::new(),
    });
    (nodes.len() - 1) as u32
}

/// Entries of one interval, per logging node.
struct Interval {
    per_node: Vec<Vec<(TrafficKind, ConnectionCounts)>>,
}

impl Interval {
    fn new(n: usize) -> Self {
        Self {
            per_node: vec![Vec::new(); n],
        }
    }

    /// One connection, logged by both ends: `c2s`/`s2c` are (packets,
    /// bytes) from the client and from the server.
    #[allow(clippy::too_many_arguments)]
    fn conn(
        &mut self,
        tn: &Tailnet,
        proto: u8,
        client: (u32, u16),
        server: (u32, u16),
        c2s: (u64, u64),
        s2c: (u64, u64),
        client_logs: bool,
        server_logs: bool,
    ) {
        let c = tn.sock(client.0, client.1);
        let s = tn.sock(server.0, server.1);
        if client_logs {
            self.per_node[client.0 as usize]
                .push((TrafficKind::Virtual, counts(proto, c, s, c2s, s2c)));
        }
        if server_logs {
            self.per_node[server.0 as usize]
                .push((TrafficKind::Virtual, counts(proto, s, c, s2c, c2s)));
        }
    }

    /// Flushes the entries into records of `[end - secs, end]`.
    fn flush(self, rng: &mut Rng, end: i64, secs: i64, out: &mut Vec<Timed>) {
        for (node, entries) in self.per_node.into_iter().enumerate() {
            for chunk in entries.chunks(MAX_ENTRIES_PER_RECORD) {
                if chunk.is_empty() {
                    continue;
                }
                out.push(Timed {
                    ts: end,
                    arrival: end + upload_delay(rng),
                    item: Item::Flow(FlowRec {
                        node: node as u32,
                        start: end - secs,
                        end,
                        entries: chunk.to_vec(),
                    }),
                });
            }
        }
    }
}

fn counts(
    proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
    tx: (u64, u64),
    rx: (u64, u64),
) -> ConnectionCounts {
    ConnectionCounts {
        proto,
        src,
        dst,
        tx_pkts: tx.0,
        tx_bytes: tx.1,
        rx_pkts: rx.0,
        rx_bytes: rx.1,
    }
}

/// (connections, client→server (pkts, bytes), server→client) of one
/// minute of a link.
fn link_minute(rng: &mut Rng, l: &Link) -> (u64, (u64, u64), (u64, u64)) {
    let (conns, up, down) = match (l.svc, l.port) {
        (Some(Svc::Dns), _) => (1, rng.range(1, 6) * 70, rng.range(1, 6) * 130),
        (Some(Svc::Web), _) => (
            rng.range(1, 3),
            rng.range(2, 20) * 1024,
            rng.range(20, 2000) * 1024,
        ),
        (Some(Svc::Api), _) => (
            rng.range(1, 2),
            rng.range(1, 10) * 1024,
            rng.range(5, 200) * 1024,
        ),
        (Some(Svc::Git), _) => (1, rng.range(2, 40) * 1024, rng.range(50, 50_000) * 1024),
        (Some(Svc::Files), _) => (1, rng.range(10, 5000) * 1024, rng.range(10, 20_000) * 1024),
        (Some(Svc::Db | Svc::Cache | Svc::Mq), _) => {
            (1, rng.range(10, 1000) * 1024, rng.range(10, 1000) * 1024)
        }
        (Some(Svc::Logs), _) => (1, rng.range(5, 100) * 1024, 0),
        (Some(Svc::Grafana), _) => (1, rng.range(2, 20) * 1024, rng.range(20, 500) * 1024),
        (None, 9100) => (1, 4 * 300, 4 * rng.range(40, 80) * 1024),
        (None, 22) => (1, rng.range(5, 200) * 1024, rng.range(5, 400) * 1024),
        (None, _) => (1, rng.range(5, 50) * 1024, rng.range(50, 500) * 1024),
    };
    let pkts = |b: u64| if b == 0 { 0 } else { b / 1200 + 2 };
    (conns, (pkts(up), up), (pkts(down), down))
}

/// The baseline entries of one interval ending at `end`: hourly (every
/// link used, volumes of an hour) or one minute (links used by chance).
fn baseline_interval(tn: &Tailnet, rng: &mut Rng, end: i64, hourly: bool, out: &mut Vec<Timed>) {
    let mut iv = Interval::new(tn.nodes.len());
    let hour = (end - T0) / 3600;
    for (i, node) in tn.nodes.iter().enumerate() {
        let i = i as u32;
        let ssh_count = node.links.iter().filter(|l| l.port == 22).count().max(1);
        let mut ssh_seen = 0;
        for l in &node.links {
            let used = if l.port == 22 && hourly {
                // Admins visit two of their servers an hour, in turn.
                let k = (hour as usize * 2) % ssh_count;
                let p = ssh_seen;
                ssh_seen += 1;
                p == k || p == (k + 1) % ssh_count
            } else {
                hourly || rng.chance(l.p)
            };
            if !used {
                continue;
            }
            let (conns, up, down) = link_minute(rng, l);
            let scale = if hourly { 20 } else { 1 };
            for _ in 0..conns {
                let port = l.keep.unwrap_or_else(|| rng.eph());
                iv.conn(
                    tn,
                    l.proto,
                    (i, port),
                    (l.dst, l.port),
                    (up.0 * scale, up.1 * scale),
                    (down.0 * scale, down.1 * scale),
                    true,
                    true,
                );
            }
        }
        let src_ip = IpAddr::V4(node.ip);
        if node.role == Role::Backup {
            if hourly {
                // Sent minute by minute (see `backup_minutes`): two hourly
                // records one hour apart both fall in a one-hour window.
                continue;
            }
            let bytes = rng.jitter(tn.backup_rate / 60, 0.05);
            for ip in &node.exit_ips {
                iv.per_node[i as usize].push((
                    TrafficKind::Exit,
                    counts(
                        TCP,
                        SocketAddr::new(src_ip, 41_000),
                        SocketAddr::new(IpAddr::V4(*ip), 443),
                        (bytes / 1400, bytes),
                        (bytes / 20_000, bytes / 50),
                    ),
                ));
            }
        } else {
            for ip in &node.exit_ips {
                if !hourly && !rng.chance(0.5) {
                    continue;
                }
                let scale = if hourly { 20 } else { 1 };
                let up = rng.range(5, 500) * 1024 * scale;
                let down = rng.range(50, 5000) * 1024 * scale;
                iv.per_node[i as usize].push((
                    TrafficKind::Exit,
                    counts(
                        TCP,
                        SocketAddr::new(src_ip, rng.eph()),
                        SocketAddr::new(IpAddr::V4(*ip), 443),
                        (up / 1200 + 2, up),
                        (down / 1200 + 2, down),
                    ),
                ));
            }
        }
    }
    let secs = if hourly { 3600 } else { 60 };
    iv.flush(rng, end, secs, out);
}

/// The backup host's offsite upload while learning, one record a minute
/// (the hourly records of the other nodes would put two hours of it in
/// one sliding hour).
fn backup_minutes(tn: &Tailnet, rng: &mut Rng, out: &mut Vec<Timed>) {
    for (i, node) in tn.nodes.iter().enumerate() {
        if node.role != Role::Backup {
            continue;
        }
        let mut t = T0 + 60;
        while t <= T0 + LEARN_HOURS * 3600 {
            let bytes = rng.jitter(tn.backup_rate / 60, 0.05);
            let entries = node
                .exit_ips
                .iter()
                .map(|ip| {
                    (
                        TrafficKind::Exit,
                        counts(
                            TCP,
                            SocketAddr::new(IpAddr::V4(node.ip), 41_000),
                            SocketAddr::new(IpAddr::V4(*ip), 443),
                            (bytes / 1400, bytes),
                            (bytes / 20_000, bytes / 50),
                        ),
                    )
                })
                .collect();
            out.push(Timed {
                ts: t,
                arrival: t + upload_delay(rng),
                item: Item::Flow(FlowRec {
                    node: i as u32,
                    start: t - 60,
                    end: t,
                    entries,
                }),
            });
            t += 60;
        }
    }
}

/// Audit event as the server stores it.
pub(crate) fn audit(
    ts: i64,
    actor: &str,
    target: Target,
    action: &str,
    old: Value,
    new: Value,
    error: Option<&str>,
) -> Value {
    let e = AuditEvent {
        event_group_id: format!("g{ts}{}", actor.len()),
        origin: if actor.starts_with('u') {
            Origin::Console
        } else {
            Origin::Api
        },
        actor: Actor {
            id: format!("u-{actor}"),
            actor_type: "USER".into(),
            login_name: actor.to_owned(),
            display_name: actor.split('@').next().unwrap_or(actor).to_owned(),
            tags: Vec::new(),
        },
        event_type: "CONFIG".into(),
        target,
        action: action.to_owned(),
        old,
        new,
        action_details: String::new(),
        error: error.map(str::to_owned),
        event_time: tally_proto::timefmt::format_nanos(ts.saturating_mul(1_000_000_000)),
        remote_addr: Some("192.0.2.10".into()),
    };
    serde_json::to_value(&e).unwrap_or(Value::Null)
}

/// An audit event's target.
pub(crate) fn target(kind: &str, id: &str, name: &str, property: &str) -> Target {
    Target {
        id: id.to_owned(),
        name: name.to_owned(),
        target_type: kind.to_owned(),
        property: property.to_owned(),
        is_ephemeral: false,
    }
}

fn key_value(ts: i64, api: bool, expires: Option<i64>) -> Value {
    let mut v = json!({
        "id": format!("k{ts:x}"),
        "keyType": if api { "api" } else { "auth" },
        "description": "",
        "created": tally_proto::timefmt::format_nanos(ts * 1_000_000_000),
    });
    if let (Some(e), Value::Object(m)) = (expires, &mut v) {
        m.insert(
            "expires".into(),
            Value::String(tally_proto::timefmt::format_nanos(e * 1_000_000_000)),
        );
    }
    v
}

fn finding(ts: i64, tn: &Tailnet, node: u32, class: FindingClass, sev: Severity) -> Item {
    let f = Finding {
        id: format!("f{ts:x}{node}"),
        class,
        severity: sev,
        tailnet: TAILNET.into(),
        node: tn.nodes[node as usize].r.id.clone(),
        peer: None,
        window: Window {
            start: (ts - 60) * 1_000_000_000,
            end: ts * 1_000_000_000,
        },
        evidence: Evidence::default(),
        detail: format!("{} on {}", class.name(), tn.name(node)),
    };
    Item::Finding(serde_json::to_value(&f).unwrap_or(Value::Null), node)
}

/// The baseline's audit events and findings over `[from, to)`.
fn baseline_control(tn: &Tailnet, rng: &mut Rng, from: i64, to: i64, out: &mut Vec<Timed>) {
    let tailnet_target = |p: &str| target("TAILNET", "T1", TAILNET, p);
    out.push(Timed {
        ts: from,
        arrival: from,
        item: Item::Audit(audit(
            from,
            &tn.admin_users[0],
            tailnet_target("networkFlowLoggingOn"),
            "ENABLE",
            json!(false),
            json!(true),
            None,
        )),
    });
    let mut key_by: HashMap<String, i64> = HashMap::new();
    let mut refused_by: HashMap<String, i64> = HashMap::new();
    let mut retention = [30i64, 30, 90];
    let mut t = from + 60;
    while t < to {
        // One event every ~2 h while learning, every ~3 min when dense.
        let gap = if t < DENSE_START { 7200 } else { 180 };
        t += rng.jitter(gap, 0.9) as i64;
        let admin = tn.admin_users[rng.index(tn.admin_users.len())].clone();
        let member = tn.member_users[rng.index(tn.member_users.len())].clone();
        let node = rng.index(tn.nodes.len()) as u32;
        let node_t = |p: &str| {
            target(
                "NODE",
                &tn.nodes[node as usize].r.id,
                &tn.nodes[node as usize].r.name,
                p,
            )
        };
        let ev = match rng.below(12) {
            0 | 1 => {
                key_by.insert(admin.clone(), t);
                audit(
                    t,
                    &admin,
                    target("API_KEY", &format!("k{t:x}"), "automation", ""),
                    "CREATE",
                    Value::Null,
                    key_value(t, true, Some(t + 90 * 86400)),
                    None,
                )
            }
            2 => audit(
                t,
                "ci-bot@bench.example",
                target("AUTH_KEY", &format!("k{t:x}"), "ci runners", ""),
                "CREATE",
                Value::Null,
                key_value(t, false, None),
                None,
            ),
            3 => {
                // Admins remove nodes, never within an hour of a key they
                // made (replacing a node is the rule's known false positive,
                // left out of the baseline).
                if key_by.get(&admin).is_some_and(|k| t - k < 2 * 3600) {
                    continue;
                }
                audit(
                    t,
                    &admin,
                    node_t(""),
                    "DELETE",
                    Value::Null,
                    Value::Null,
                    None,
                )
            }
            4 => audit(
                t,
                &admin,
                node_t("name"),
                "UPDATE",
                json!(tn.name(node)),
                json!(format!("{}-renamed", tn.name(node))),
                None,
            ),
            5 => {
                let i = rng.index(3);
                let names = [
                    "logsRetentionDays",
                    "flowsRetentionDays",
                    "auditRetentionDays",
                ];
                let old = retention[i];
                retention[i] = old + rng.range(1, 30) as i64;
                audit(
                    t,
                    &admin,
                    tailnet_target(names[i]),
                    "UPDATE",
                    json!(old),
                    json!(retention[i]),
                    None,
                )
            }
            6 => {
                let roles = ["auditor", "it-admin", "network-admin", "billing-admin"];
                let user = tn.member_users[rng.index(tn.member_users.len())].clone();
                audit(
                    t,
                    &admin,
                    target("USER", &format!("u-{user}"), &user, "role"),
                    "UPDATE",
                    json!("member"),
                    json!(roles[rng.index(roles.len())]),
                    None,
                )
            }
            7 => {
                let user = tn.member_users[rng.index(tn.member_users.len())].clone();
                audit(
                    t,
                    &admin,
                    target("USER", &format!("u-{user}"), &user, "role"),
                    "UPDATE",
                    json!("admin"),
                    json!("member"),
                    None,
                )
            }
            8..=10 => {
                // One refused change; a member at most once in ten minutes.
                if refused_by.get(&member).is_some_and(|r| t - r < 600) {
                    continue;
                }
                refused_by.insert(member.clone(), t);
                let (tg, action, old, new) = match rng.below(4) {
                    0 => (
                        tailnet_target("networkFlowLoggingOn"),
                        "DISABLE",
                        json!(true),
                        json!(false),
                    ),
                    1 => (
                        tailnet_target("logsRetentionDays"),
                        "UPDATE",
                        json!(retention[0]),
                        json!(1),
                    ),
                    2 => (node_t(""), "DELETE", Value::Null, Value::Null),
                    _ => (
                        target("API_KEY", "", "", ""),
                        "CREATE",
                        Value::Null,
                        key_value(t, true, None),
                    ),
                };
                audit(
                    t,
                    &member,
                    tg,
                    action,
                    old,
                    new,
                    Some("permission denied: the member role cannot do this"),
                )
            }
            _ => {
                let classes = [
                    (FindingClass::MissingLostBatch, Severity::Info),
                    (FindingClass::SequenceGap, Severity::Low),
                    (FindingClass::NodeUnknown, Severity::Low),
                    (FindingClass::MissingOptedOut, Severity::Info),
                    (FindingClass::MissingFlowLoggingOff, Severity::Info),
                ];
                let (c, s) = classes[rng.index(classes.len())];
                out.push(Timed {
                    ts: t,
                    arrival: t,
                    item: finding(t, tn, node, c, s),
                });
                continue;
            }
        };
        out.push(Timed {
            ts: t,
            arrival: t,
            item: Item::Audit(ev),
        });
    }
}

/// Injected flow entries: (time, logging node, kind, counts).
type Injected = Vec<(i64, u32, TrafficKind, ConnectionCounts)>;

/// The scenario generator: one function per built-in rule, each adding
/// `n` labelled instances at random times of the dense part.
pub(crate) struct Scenarios<'a> {
    tn: &'a Tailnet,
    rng: Rng,
    flows: Injected,
    other: Vec<Timed>,
    labels: Vec<Label>,
    used: HashSet<u32>,
    end: i64,
    actor_seq: usize,
}

impl<'a> Scenarios<'a> {
    fn new(tn: &'a Tailnet, seed: u64, end: i64) -> Self {
        Self {
            tn,
            rng: Rng::new(seed ^ 0xA77A_C4ED),
            flows: Vec::new(),
            other: Vec::new(),
            labels: Vec::new(),
            used: HashSet::new(),
            end,
            actor_seq: 0,
        }
    }

    /// A start time leaving `dur` seconds before the end.
    fn start(&mut self, dur: i64) -> i64 {
        let lo = DENSE_START + 300;
        let hi = (self.end - dur - 120).max(lo);
        self.rng.range(lo as u64, hi as u64) as i64
    }

    /// An untagged client not used by another scenario yet.
    fn attacker(&mut self) -> u32 {
        for _ in 0..10_000 {
            let c = self.tn.clients[self.rng.index(self.tn.clients.len())];
            if self.used.insert(c) {
                return c;
            }
        }
        self.tn.clients[self.rng.index(self.tn.clients.len())]
    }

    /// A node other than `not` (and not the monitoring node).
    fn target(&mut self, not: u32) -> u32 {
        loop {
            let t = self.rng.index(self.tn.nodes.len()) as u32;
            if t != not && self.tn.nodes[t as usize].role != Role::Monitoring {
                return t;
            }
        }
    }

    /// A node `x` never talked to in the baseline.
    fn stranger(&mut self, x: u32, avoid: &[u32]) -> u32 {
        loop {
            let t = self.target(x);
            if !self.tn.talk(x, t) && !avoid.contains(&t) {
                return t;
            }
        }
    }

    /// A login name used by no one else.
    fn actor(&mut self) -> String {
        self.actor_seq += 1;
        let who = ["ops", "svc", "contractor", "dev", "it"];
        format!(
            "{}-{:03}@bench.example",
            who[self.actor_seq % who.len()],
            self.actor_seq
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn conn(
        &mut self,
        ts: i64,
        proto: u8,
        client: (u32, u16),
        server: (u32, u16),
        c2s: (u64, u64),
        s2c: (u64, u64),
        client_logs: bool,
        server_logs: bool,
    ) {
        let c = self.tn.sock(client.0, client.1);
        let s = self.tn.sock(server.0, server.1);
        if client_logs {
            self.flows.push((
                ts,
                client.0,
                TrafficKind::Virtual,
                counts(proto, c, s, c2s, s2c),
            ));
        }
        if server_logs {
            self.flows.push((
                ts,
                server.0,
                TrafficKind::Virtual,
                counts(proto, s, c, s2c, c2s),
            ));
        }
    }

    fn label(
        &mut self,
        rule: &'static str,
        group: Vec<(&'static str, String)>,
        start: i64,
        last: i64,
        kind: LabelKind,
        scenario: &'static str,
    ) {
        self.labels.push(Label {
            rule,
            group,
            start,
            end: last + LABEL_SLACK_SECS,
            kind,
            scenario,
        });
    }

    /// Alerts of these rules naming the attacker `x` during the instance
    /// are right too (see [`LabelKind::Collateral`]).
    fn collateral(&mut self, x: u32, rules: &[&'static str], start: i64, last: i64) {
        for r in rules {
            let group = match *r {
                "tally-host-sweep" | "tally-port-scan" => vec![("src_ip", self.tn.ip(x))],
                _ => vec![("src_node", self.tn.name(x))],
            };
            self.label(r, group, start, last, LabelKind::Collateral, "collateral");
        }
    }

    /// Port scans: nmap -F SYN scans, connect scans, UDP top-port scans,
    /// and SYN scans whose scanner's agent is silent (only the target
    /// logs). `slow` instances are nmap -T1 ("sneaky", 15 s between
    /// probes): out of the rule's reach by design.
    fn port_scans(&mut self, n: usize, slow: usize) {
        for i in 0..n + slow {
            let x = self.attacker();
            let y = self.target(x);
            let sneaky = i >= n;
            let variant = i % 4;
            let (ports, proto) = if variant == 2 && !sneaky {
                (NMAP_TOP_UDP, UDP)
            } else {
                (NMAP_TOP_TCP, TCP)
            };
            let dur = if sneaky {
                15 * ports.len() as i64
            } else {
                match variant {
                    0 | 3 => self.rng.range(5, 30) as i64,
                    1 => self.rng.range(20, 90) as i64,
                    _ => self.rng.range(30, 100) as i64,
                }
            };
            let start = self.start(dur);
            let fixed_sport = self.rng.eph();
            let mut order: Vec<u16> = ports.to_vec();
            for k in (1..order.len()).rev() {
                let j = self.rng.index(k + 1);
                order.swap(k, j);
            }
            let mut last = start;
            for (k, &p) in order.iter().enumerate() {
                let ts = start + dur * k as i64 / ports.len() as i64;
                last = ts;
                let sport = if variant == 1 || sneaky {
                    self.rng.eph()
                } else {
                    fixed_sport
                };
                let open = self.rng.chance(0.08);
                let scanner_logs = variant != 3;
                if proto == UDP {
                    self.conn(ts, UDP, (x, sport), (y, p), (1, 60), (0, 0), true, true);
                    if !open {
                        // ICMP port unreachable back to the scanner.
                        self.conn(ts, ICMP, (y, 0), (x, 0), (1, 88), (0, 0), true, true);
                    }
                } else if open {
                    self.conn(
                        ts,
                        TCP,
                        (x, sport),
                        (y, p),
                        (2, 84),
                        (1, 44),
                        scanner_logs,
                        true,
                    );
                } else {
                    self.conn(
                        ts,
                        TCP,
                        (x, sport),
                        (y, p),
                        (1, 44),
                        (1, 40),
                        scanner_logs,
                        true,
                    );
                }
            }
            let kind = if sneaky {
                LabelKind::Evasion
            } else {
                LabelKind::Primary
            };
            let group = vec![("src_ip", self.tn.ip(x)), ("dst_ip", self.tn.ip(y))];
            let name = if sneaky {
                "port scan, nmap -T1"
            } else {
                [
                    "port scan, SYN",
                    "port scan, connect",
                    "port scan, UDP",
                    "port scan, scanner silent",
                ][variant]
            };
            self.label("tally-port-scan", group, start, last, kind, name);
            self.collateral(
                x,
                &["tally-remote-access-port", "tally-new-pair"],
                start,
                last,
            );
        }
    }

    /// Host sweeps: one port on 12-60 nodes within 20 s to 4 min; a quarter
    /// with the sweeper's agent silent.
    fn host_sweeps(&mut self, n: usize) {
        for i in 0..n {
            let x = self.attacker();
            let port = SWEEP_PORTS[self.rng.index(SWEEP_PORTS.len())];
            let k = self.rng.range(12, 60) as usize;
            let dur = self.rng.range(20, 240) as i64;
            let start = self.start(dur);
            let mut targets: Vec<u32> = Vec::new();
            while targets.len() < k {
                let t = self.target(x);
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            let silent = i % 4 == 3;
            let mut last = start;
            for (j, &t) in targets.iter().enumerate() {
                let ts = start + dur * j as i64 / k as i64;
                last = ts;
                let sport = self.rng.eph();
                if self.rng.chance(0.3) {
                    self.conn(
                        ts,
                        TCP,
                        (x, sport),
                        (t, port),
                        (3, 180),
                        (2, 120),
                        !silent,
                        true,
                    );
                } else {
                    self.conn(
                        ts,
                        TCP,
                        (x, sport),
                        (t, port),
                        (1, 60),
                        (1, 40),
                        !silent,
                        true,
                    );
                }
            }
            let group = vec![("src_ip", self.tn.ip(x)), ("dst_port", port.to_string())];
            let name = if silent {
                "host sweep, sweeper silent"
            } else {
                "host sweep"
            };
            self.label(
                "tally-host-sweep",
                group,
                start,
                last,
                LabelKind::Primary,
                name,
            );
            self.collateral(
                x,
                &[
                    "tally-remote-access-port",
                    "tally-new-pair",
                    "tally-fan-out",
                ],
                start,
                last,
            );
        }
    }

    /// Lateral movement: a node opens sessions to 1-3 nodes it never
    /// talked to (after the seven-day baseline), on service or admin ports.
    fn new_pairs(&mut self, n: usize) {
        let mut made = 0;
        while made < n {
            let x = self.attacker();
            let k = self.rng.range(1, 3) as usize;
            let span = 900;
            let start = self.start(span);
            let mut t = start;
            let mut done: Vec<u32> = Vec::new();
            let mut last_all = start;
            for _ in 0..k.min(n - made) {
                let y = self.stranger(x, &done);
                done.push(y);
                let port = LATERAL_PORTS[self.rng.index(LATERAL_PORTS.len())];
                let sport = self.rng.eph();
                let minutes = self.rng.range(1, 3) as i64;
                let first = t;
                for m in 0..minutes {
                    let up = self.rng.range(2, 200) * 1024;
                    let down = self.rng.range(2, 800) * 1024;
                    self.conn(
                        t + m * 60,
                        TCP,
                        (x, sport),
                        (y, port),
                        (up / 1200 + 2, up),
                        (down / 1200 + 2, down),
                        true,
                        true,
                    );
                }
                let last = t + (minutes - 1) * 60;
                last_all = last;
                let group = vec![("src_node", self.tn.name(x)), ("dst_node", self.tn.name(y))];
                self.label(
                    "tally-new-pair",
                    group,
                    first,
                    last,
                    LabelKind::Primary,
                    "lateral movement to a new peer",
                );
                made += 1;
                t += self.rng.range(30, 300) as i64;
            }
            self.collateral(x, &["tally-remote-access-port"], start, last_all);
        }
    }

    /// Fan-out: a node reaches 20-45 nodes it never talked to within 10-50
    /// minutes, on mixed ports.
    fn fan_outs(&mut self, n: usize) {
        for _ in 0..n {
            let x = self.attacker();
            let k = self.rng.range(20, 45) as usize;
            let dur = self.rng.range(600, 3000) as i64;
            let start = self.start(dur);
            let mut done: Vec<u32> = Vec::new();
            let mut last = start;
            let ports = [80u16, 443, 8080, 22, 445, 3389, 5432, 6379];
            for j in 0..k {
                let y = self.stranger(x, &done);
                done.push(y);
                let ts = start + dur * j as i64 / k as i64;
                last = ts;
                for _ in 0..self.rng.range(1, 2) {
                    let port = ports[self.rng.index(ports.len())];
                    let sport = self.rng.eph();
                    self.conn(
                        ts,
                        TCP,
                        (x, sport),
                        (y, port),
                        (5, 900),
                        (4, 2400),
                        true,
                        true,
                    );
                }
            }
            let group = vec![("src_node", self.tn.name(x))];
            self.label(
                "tally-fan-out",
                group,
                start,
                last,
                LabelKind::Primary,
                "fan-out",
            );
            self.collateral(
                x,
                &[
                    "tally-new-pair",
                    "tally-remote-access-port",
                    "tally-host-sweep",
                ],
                start,
                last,
            );
        }
    }

    /// Remote access from untagged nodes: interactive sessions (SSH,
    /// Telnet, RDP, VNC, WinRM) to any node, and callbacks to reverse-shell
    /// and C2 ports, to a node or through the exit node to the internet.
    fn remote_access(&mut self, n: usize) {
        for i in 0..n {
            let x = self.attacker();
            let minutes = self.rng.range(1, 10) as i64;
            let start = self.start(minutes * 60);
            let last = start + (minutes - 1) * 60;
            let sport = self.rng.eph();
            let (port, name) = if i % 3 == 2 {
                (
                    CALLBACK_PORTS[self.rng.index(CALLBACK_PORTS.len())],
                    "callback port",
                )
            } else {
                (
                    REMOTE_PORTS[self.rng.index(REMOTE_PORTS.len())],
                    "remote-access session",
                )
            };
            let to_internet = i % 3 == 2 && i % 2 == 0;
            let y = self.target(x);
            let dst_ip = Ipv4Addr::new(
                185,
                self.rng.range(100, 250) as u8,
                self.rng.below(256) as u8,
                self.rng.range(1, 254) as u8,
            );
            for m in 0..minutes {
                let up = self.rng.range(2, 100) * 1024;
                let down = self.rng.range(2, 300) * 1024;
                let ts = start + m * 60;
                if to_internet {
                    self.flows.push((
                        ts,
                        x,
                        TrafficKind::Exit,
                        counts(
                            TCP,
                            self.tn.sock(x, sport),
                            SocketAddr::new(IpAddr::V4(dst_ip), port),
                            (up / 1200 + 2, up),
                            (down / 1200 + 2, down),
                        ),
                    ));
                } else {
                    self.conn(
                        ts,
                        TCP,
                        (x, sport),
                        (y, port),
                        (up / 1200 + 2, up),
                        (down / 1200 + 2, down),
                        true,
                        true,
                    );
                }
            }
            let group = vec![
                ("src_node", self.tn.name(x)),
                ("dst_port", port.to_string()),
            ];
            self.label(
                "tally-remote-access-port",
                group,
                start,
                last,
                LabelKind::Primary,
                name,
            );
            self.collateral(x, &["tally-new-pair"], start, last);
        }
    }

    /// Exfiltration: 1.1-4 GiB uploaded through the exit node within 10-55
    /// minutes, one or two connections, per-minute records.
    fn exfiltration(&mut self, n: usize) {
        for _ in 0..n {
            let x = self.attacker();
            let minutes = self.rng.range(10, 55) as i64;
            let start = self.start(minutes * 60);
            let total = self.rng.range(11 * GIB / 10, 4 * GIB);
            let dst = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(
                    45,
                    self.rng.range(1, 250) as u8,
                    self.rng.below(256) as u8,
                    self.rng.range(1, 254) as u8,
                )),
                443,
            );
            let conns = self.rng.range(1, 2);
            let ports: Vec<u16> = (0..conns).map(|_| self.rng.eph()).collect();
            let per = total / (minutes as u64 * conns);
            for m in 0..minutes {
                for p in &ports {
                    let up = self.rng.jitter(per, 0.1);
                    self.flows.push((
                        start + m * 60,
                        x,
                        TrafficKind::Exit,
                        counts(
                            TCP,
                            self.tn.sock(x, *p),
                            dst,
                            (up / 1400, up),
                            (up / 20_000, up / 50),
                        ),
                    ));
                }
            }
            let last = start + (minutes - 1) * 60;
            let group = vec![("logged_by", self.tn.name(x))];
            self.label(
                "tally-exit-transfer",
                group,
                start,
                last,
                LabelKind::Primary,
                "exfiltration through the exit node",
            );
        }
    }

    fn push_audit(&mut self, ts: i64, v: Value) {
        self.other.push(Timed {
            ts,
            arrival: ts,
            item: Item::Audit(v),
        });
    }

    /// Audit abuse: one function per audit rule.
    fn audit_abuse(&mut self, n: usize) {
        let tailnet_t = |p: &str| target("TAILNET", "T1", TAILNET, p);
        // Flow logging off (a third first tried by a member and refused;
        // half turned back on later).
        for i in 0..n {
            let actor = self.actor();
            let ts = self.start(3600);
            if i % 3 == 0 {
                let m = self.tn.member_users[self.rng.index(self.tn.member_users.len())].clone();
                self.push_audit(
                    ts - 60,
                    audit(
                        ts - 60,
                        &m,
                        tailnet_t("networkFlowLoggingOn"),
                        "DISABLE",
                        json!(true),
                        json!(false),
                        Some("permission denied"),
                    ),
                );
            }
            self.push_audit(
                ts,
                audit(
                    ts,
                    &actor,
                    tailnet_t("networkFlowLoggingOn"),
                    "DISABLE",
                    json!(true),
                    json!(false),
                    None,
                ),
            );
            if i % 2 == 0 {
                let back = ts + self.rng.range(600, 2400) as i64;
                self.push_audit(
                    back,
                    audit(
                        back,
                        &actor,
                        tailnet_t("networkFlowLoggingOn"),
                        "ENABLE",
                        json!(false),
                        json!(true),
                        None,
                    ),
                );
            }
            self.label(
                "tally-flow-logging-off",
                vec![("actor.loginName", actor)],
                ts,
                ts,
                LabelKind::Primary,
                "flow logging turned off",
            );
        }
        // Retention lowered.
        for _ in 0..n {
            let actor = self.actor();
            let ts = self.start(600);
            let props = [
                ("logsRetentionDays", 30u64, 1u64),
                ("flowsRetentionDays", 30, 1),
                ("auditRetentionDays", 365, 90),
            ];
            let (p, old, min) = props[self.rng.index(props.len())];
            let new = self.rng.range(min, old - 1);
            self.push_audit(
                ts,
                audit(
                    ts,
                    &actor,
                    tailnet_t(p),
                    "UPDATE",
                    json!(old),
                    json!(new),
                    None,
                ),
            );
            self.label(
                "tally-retention-weakened",
                vec![("actor.loginName", actor)],
                ts,
                ts,
                LabelKind::Primary,
                "retention lowered",
            );
        }
        // API key without expiry.
        for _ in 0..n {
            let actor = self.actor();
            let ts = self.start(600);
            self.push_audit(
                ts,
                audit(
                    ts,
                    &actor,
                    target("API_KEY", &format!("k{ts:x}"), "", ""),
                    "CREATE",
                    Value::Null,
                    key_value(ts, true, None),
                    None,
                ),
            );
            self.label(
                "tally-key-without-expiry",
                vec![("actor.loginName", actor)],
                ts,
                ts,
                LabelKind::Primary,
                "API key without expiry",
            );
        }
        // Role raised to admin or owner.
        for _ in 0..n {
            let actor = self.actor();
            let user = self.actor();
            let ts = self.start(600);
            let olds = ["member", "auditor", "it-admin", "network-admin"];
            let old = olds[self.rng.index(olds.len())];
            let new = if self.rng.chance(0.3) {
                "owner"
            } else {
                "admin"
            };
            self.push_audit(
                ts,
                audit(
                    ts,
                    &actor,
                    target("USER", &format!("u-{user}"), &user, "role"),
                    "UPDATE",
                    json!(old),
                    json!(new),
                    None,
                ),
            );
            self.label(
                "tally-role-raised",
                vec![("target.name", user)],
                ts,
                ts,
                LabelKind::Primary,
                "role raised",
            );
        }
        // Bursts of refused changes: 5-15 within 1-9 minutes.
        for _ in 0..n {
            let actor = self.actor();
            let k = self.rng.range(5, 15) as i64;
            let dur = self.rng.range(60, 540) as i64;
            let ts0 = self.start(dur);
            let mut last = ts0;
            for j in 0..k {
                let ts = ts0 + dur * j / k;
                last = ts;
                let node = self.rng.index(self.tn.nodes.len());
                let (tg, action) = match self.rng.below(4) {
                    0 => (
                        target(
                            "NODE",
                            &self.tn.nodes[node].r.id,
                            &self.tn.nodes[node].r.name,
                            "",
                        ),
                        "DELETE",
                    ),
                    1 => (tailnet_t("logsRetentionDays"), "UPDATE"),
                    2 => (target("API_KEY", "", "", ""), "CREATE"),
                    _ => (target("USER", "u-x", "x@bench.example", "role"), "UPDATE"),
                };
                self.push_audit(
                    ts,
                    audit(
                        ts,
                        &actor,
                        tg,
                        action,
                        Value::Null,
                        Value::Null,
                        Some("permission denied"),
                    ),
                );
            }
            self.label(
                "tally-refused-changes",
                vec![("actor.loginName", actor)],
                ts0,
                last,
                LabelKind::Primary,
                "burst of refused changes",
            );
        }
        // A key created, then a node removed by the same actor within an
        // hour (2-50 min).
        for _ in 0..n {
            let actor = self.actor();
            let gap = self.rng.range(120, 3000) as i64;
            let ts = self.start(gap);
            let api = self.rng.chance(0.4);
            let expires = (!api || self.rng.chance(0.8)).then_some(ts + 30 * 86400);
            let kind = if api { "API_KEY" } else { "AUTH_KEY" };
            self.push_audit(
                ts,
                audit(
                    ts,
                    &actor,
                    target(kind, &format!("k{ts:x}"), "", ""),
                    "CREATE",
                    Value::Null,
                    key_value(ts, api, expires),
                    None,
                ),
            );
            let node = self.rng.index(self.tn.nodes.len());
            let del = ts + gap;
            self.push_audit(
                del,
                audit(
                    del,
                    &actor,
                    target(
                        "NODE",
                        &self.tn.nodes[node].r.id,
                        &self.tn.nodes[node].r.name,
                        "",
                    ),
                    "DELETE",
                    Value::Null,
                    Value::Null,
                    None,
                ),
            );
            self.label(
                "tally-key-then-node-removed",
                vec![("actor.loginName", actor.clone())],
                ts,
                del,
                LabelKind::Primary,
                "key created, then a node removed",
            );
            if api && expires.is_none() {
                self.label(
                    "tally-key-without-expiry",
                    vec![("actor.loginName", actor)],
                    ts,
                    ts,
                    LabelKind::Collateral,
                    "collateral",
                );
            }
        }
    }

    /// Reconciliation findings of the alerting classes.
    fn findings(&mut self, n: usize) {
        let bad = [
            (FindingClass::MissingSuspicious, Severity::High),
            (FindingClass::CountMismatch, Severity::Medium),
            (FindingClass::Integrity, Severity::Critical),
        ];
        for _ in 0..n {
            let x = self.attacker();
            let (class, sev) = bad[self.rng.index(bad.len())];
            let ts = self.start(600);
            let k = self.rng.range(1, 3) as i64;
            for j in 0..k {
                let t = ts + j * 30;
                self.other.push(Timed {
                    ts: t,
                    arrival: t,
                    item: finding(t, self.tn, x, class, sev),
                });
            }
            self.label(
                "tally-reconciliation-high",
                vec![
                    ("node", self.tn.name(x)),
                    ("class", class.name().to_owned()),
                ],
                ts,
                ts + (k - 1) * 30,
                LabelKind::Primary,
                "missing, altered or forged logs",
            );
        }
        for _ in 0..n {
            let x = self.attacker();
            let ts = self.start(600);
            let k = self.rng.range(2, 6) as i64;
            for j in 0..k {
                let t = ts + j * 10;
                self.other.push(Timed {
                    ts: t,
                    arrival: t,
                    item: finding(
                        t,
                        self.tn,
                        x,
                        FindingClass::MissingAgentSilent,
                        Severity::Medium,
                    ),
                });
            }
            self.label(
                "tally-reconciliation-silent",
                vec![("node", self.tn.name(x))],
                ts,
                ts + (k - 1) * 10,
                LabelKind::Primary,
                "agent silent",
            );
        }
    }

    /// The injected items and labels.
    fn finish(self) -> (Vec<Timed>, Vec<Label>) {
        let mut out = self.other;
        let mut recs: BTreeMap<(i64, u32), Vec<(TrafficKind, ConnectionCounts)>> = BTreeMap::new();
        for (ts, node, kind, c) in self.flows {
            let slot = (ts + SCENARIO_RECORD_SECS - 1).div_euclid(SCENARIO_RECORD_SECS)
                * SCENARIO_RECORD_SECS;
            recs.entry((slot, node)).or_default().push((kind, c));
        }
        let mut rng = self.rng;
        for ((end, node), entries) in recs {
            out.push(Timed {
                ts: end,
                arrival: end + upload_delay(&mut rng),
                item: Item::Flow(FlowRec {
                    node,
                    start: end - SCENARIO_RECORD_SECS,
                    end,
                    entries,
                }),
            });
        }
        (out, self.labels)
    }
}

/// Generates the corpus of `seed`: `nodes` nodes, the learning week and
/// `dense_hours` of dense traffic, with `instances` labelled instances of
/// each built-in rule's scenario (0: the clean baseline alone; the same
/// baseline for the same seed).
pub(crate) fn generate(seed: u64, nodes: usize, dense_hours: i64, instances: usize) -> Corpus {
    let mut rng = Rng::new(seed);
    let tn = Tailnet::build(&mut rng, nodes);
    let end = DENSE_START + dense_hours * 3600;
    let mut items = Vec::new();
    for h in 1..=LEARN_HOURS {
        baseline_interval(&tn, &mut rng, T0 + h * 3600, true, &mut items);
    }
    backup_minutes(&tn, &mut rng, &mut items);
    let mut t = DENSE_START + 60;
    while t <= end {
        baseline_interval(&tn, &mut rng, t, false, &mut items);
        t += 60;
    }
    baseline_control(&tn, &mut rng, T0 + 60, end, &mut items);
    let mut labels = Vec::new();
    if instances > 0 {
        let mut sc = Scenarios::new(&tn, seed, end);
        sc.port_scans(instances, instances / 4);
        sc.host_sweeps(instances);
        sc.new_pairs(instances);
        sc.fan_outs(instances);
        sc.remote_access(instances);
        sc.exfiltration(instances);
        sc.audit_abuse(instances);
        sc.findings(instances);
        let (more, l) = sc.finish();
        items.extend(more);
        labels = l;
    }
    items.sort_by_key(|t| t.arrival);
    let flow_entries = items
        .iter()
        .map(|t| match &t.item {
            Item::Flow(r) => r.entries.len(),
            _ => 0,
        })
        .sum();
    Corpus {
        tailnet: tn,
        items,
        labels,
        flow_entries,
        end,
    }
}
