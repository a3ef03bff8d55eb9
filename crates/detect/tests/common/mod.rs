//! Helpers shared by the detection tests: a small tailnet of nodes, flow
//! entries logged the way agents log them (both ends, each from its own
//! side), audit events in the shape the server records, findings, and a
//! harness that feeds them to a [`Detector`] in store order.
#![allow(dead_code)]

use rsigma_eval::event::Event;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tally_detect::event::local_opened;
use tally_detect::{Detector, DetectorConfig, FlowEvent, NodeRef, ObjectEvent, Rule, Service};
use tally_proto::alert::Alert;
use tally_proto::flow::{ConnectionCounts, TrafficKind};

/// 2026-01-01T00:00:00Z, Unix seconds.
pub const T0: i64 = 1_767_225_600;
/// A day in seconds.
pub const DAY: i64 = 86_400;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;

/// The tailnet the tests run: a few named nodes and a fleet `srv-1` ...
/// `srv-40` (`100.64.1.N`).
pub struct Fleet {
    nodes: Vec<(IpAddr, NodeRef)>,
}

fn node(name: &str, ip: [u8; 4], tags: &[&str]) -> (IpAddr, NodeRef) {
    (
        IpAddr::V4(Ipv4Addr::from(ip)),
        NodeRef {
            id: format!("n-{name}"),
            name: name.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        },
    )
}

impl Fleet {
    /// The test tailnet.
    pub fn new() -> Self {
        let mut nodes = vec![
            node("laptop", [100, 64, 0, 1], &[]),
            node("db", [100, 64, 0, 2], &["tag:db"]),
            node("web", [100, 64, 0, 3], &["tag:web"]),
            node("prom", [100, 64, 0, 10], &["tag:monitoring"]),
            node("bastion", [100, 64, 0, 11], &["tag:prod", "tag:bastion"]),
            node("ci", [100, 64, 0, 12], &["tag:hub", "tag:remote-access"]),
            node("scanner", [100, 64, 0, 13], &["tag:scanner"]),
        ];
        for i in 1..=40u8 {
            nodes.push(node(&format!("srv-{i}"), [100, 64, 1, i], &["tag:server"]));
        }
        Self { nodes }
    }

    /// The address of node `name`.
    pub fn ip(&self, name: &str) -> IpAddr {
        self.nodes
            .iter()
            .find(|(_, n)| n.name == name)
            .map(|(ip, _)| *ip)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The node at `ip`.
    pub fn at(&self, ip: IpAddr) -> Option<&NodeRef> {
        self.nodes.iter().find(|(a, _)| *a == ip).map(|(_, n)| n)
    }

    /// `name:port`.
    pub fn addr(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(name), port)
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// One traffic entry as a node's agent logs it: `local` is the logging
/// node's side.
pub fn counts(
    proto: u8,
    local: SocketAddr,
    peer: SocketAddr,
    tx: u64,
    rx: u64,
) -> ConnectionCounts {
    ConnectionCounts {
        proto,
        src: local,
        dst: peer,
        tx_pkts: tx.div_ceil(1200).max(1),
        tx_bytes: tx,
        rx_pkts: rx.div_ceil(1200),
        rx_bytes: rx,
    }
}

/// A built-in rule file by name, parsed.
pub fn builtin(file: &str) -> Arc<Rule> {
    let yaml = tally_detect::builtin::FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, y)| *y)
        .unwrap_or_else(|| panic!("no built-in {file}"));
    Arc::new(tally_detect::parse_rule(yaml).unwrap_or_else(|e| panic!("{file}: {e}")))
}

/// Feeds events of one tailnet to a detector in store order, numbering
/// them as the store would, and keeps every alert raised.
pub struct Harness {
    /// The detector.
    pub det: Detector,
    /// The tailnet's nodes.
    pub fleet: Fleet,
    /// Its name.
    pub tailnet: String,
    /// Store position of the next event.
    pub pos: u64,
    /// Every alert raised so far.
    pub alerts: Vec<Alert>,
}

impl Harness {
    /// A detector running `rules` (default limits).
    pub fn new(rules: Vec<Arc<Rule>>) -> Self {
        Self::with_config(DetectorConfig::default(), rules)
    }

    /// A detector running `rules` with `config`.
    pub fn with_config(config: DetectorConfig, rules: Vec<Arc<Rule>>) -> Self {
        Self {
            det: Detector::new(config, rules),
            fleet: Fleet::new(),
            tailnet: "example.org".to_owned(),
            pos: 1,
            alerts: Vec::new(),
        }
    }

    /// A detector running only the built-in rule of `file`.
    pub fn rule(file: &str) -> Self {
        Self::new(vec![builtin(file)])
    }

    /// A detector running the whole built-in pack.
    pub fn pack() -> Self {
        Self::new(tally_detect::builtin::rules().expect("the pack parses"))
    }

    fn next_pos(&mut self) -> String {
        let p = self.pos;
        self.pos += 1;
        p.to_string()
    }

    /// One flow entry logged by the node at `c.src` (or by `logged_by`
    /// when that side is no node, e.g. exit traffic); returns its alerts.
    pub fn entry(&mut self, ts: i64, kind: TrafficKind, c: ConnectionCounts) -> Vec<Alert> {
        let local = self.fleet.at(c.src.ip()).cloned();
        let peer = self.fleet.at(c.dst.ip()).cloned();
        let logged_by = local.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        // The (client, server) nodes, as the server works out the pair.
        let (client, server) = if local_opened(c.src.port(), c.dst.port()) {
            (&local, &peer)
        } else {
            (&peer, &local)
        };
        let pair_first_seen = match (kind, client, server) {
            (TrafficKind::Virtual, Some(a), Some(b)) => {
                self.det.pair_is_new(&self.tailnet, &a.id, &b.id, ts)
            }
            _ => false,
        };
        let start = tally_proto::timefmt::format_nanos(ts.saturating_sub(5) * 1_000_000_000);
        let end = tally_proto::timefmt::format_nanos(ts * 1_000_000_000);
        let event_id = self.next_pos();
        let event = FlowEvent {
            counts: &c,
            kind,
            local: local.as_ref(),
            peer: peer.as_ref(),
            logged_by: &logged_by,
            pair_first_seen,
            start: &start,
            end: &end,
            event_id: &event_id,
            ips: Default::default(),
        };
        let fleet = &self.fleet;
        let lookup = |ip: &str| {
            ip.parse::<IpAddr>()
                .ok()
                .and_then(|ip| fleet.at(ip).cloned())
        };
        let alerts = self
            .det
            .process(&self.tailnet, Service::Flows, &event, ts, &lookup);
        self.alerts.extend(alerts.iter().cloned());
        alerts
    }

    /// A connection between two nodes as both agents log it: the client's
    /// entry then the server's. `tx` is what the client sent.
    pub fn connection(
        &mut self,
        ts: i64,
        proto: u8,
        client: (&str, u16),
        server: (&str, u16),
        tx: u64,
        rx: u64,
    ) -> Vec<Alert> {
        let c = self.fleet.addr(client.0, client.1);
        let s = self.fleet.addr(server.0, server.1);
        let mut alerts = self.entry(ts, TrafficKind::Virtual, counts(proto, c, s, tx, rx));
        alerts.extend(self.entry(ts, TrafficKind::Virtual, counts(proto, s, c, rx, tx)));
        alerts
    }

    /// A connection only the client's agent logged (the server has no
    /// agent, or it is silent).
    pub fn client_only(
        &mut self,
        ts: i64,
        proto: u8,
        client: (&str, u16),
        server: (&str, u16),
    ) -> Vec<Alert> {
        let c = self.fleet.addr(client.0, client.1);
        let s = self.fleet.addr(server.0, server.1);
        self.entry(ts, TrafficKind::Virtual, counts(proto, c, s, 60, 0))
    }

    /// Exit traffic of `node` (from `port`) to internet address `to`.
    pub fn exit(
        &mut self,
        ts: i64,
        node: &str,
        port: u16,
        to: SocketAddr,
        tx: u64,
        rx: u64,
    ) -> Vec<Alert> {
        let c = self.fleet.addr(node, port);
        self.entry(ts, TrafficKind::Exit, counts(TCP, c, to, tx, rx))
    }

    /// One audit event (its stored JSON).
    pub fn audit(&mut self, ts: i64, event: Value) -> Vec<Alert> {
        let id = self.next_pos();
        let e = ObjectEvent::audit(event, &id);
        self.object(ts, Service::Audit, &e)
    }

    /// One reconciliation finding (its stored JSON; `node` and `peer` are
    /// node IDs `n-<name>`, given back by name as the server does).
    pub fn finding(&mut self, ts: i64, finding: Value) -> Vec<Alert> {
        let id = self.next_pos();
        let by_id = |field: &str| {
            let nid = finding
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.fleet
                .nodes
                .iter()
                .find(|(_, n)| n.id == nid)
                .map(|(_, n)| n.clone())
        };
        let node = by_id("node");
        let peer = by_id("peer");
        let e = ObjectEvent::finding(finding, node.as_ref(), peer.as_ref(), &id);
        self.object(ts, Service::Reconciliation, &e)
    }

    fn object<E: Event>(&mut self, ts: i64, service: Service, e: &E) -> Vec<Alert> {
        let fleet = &self.fleet;
        let lookup = |ip: &str| {
            ip.parse::<IpAddr>()
                .ok()
                .and_then(|ip| fleet.at(ip).cloned())
        };
        let alerts = self.det.process(&self.tailnet, service, e, ts, &lookup);
        self.alerts.extend(alerts.iter().cloned());
        alerts
    }

    /// The alerts raised so far by rule `id`.
    pub fn of(&self, id: &str) -> Vec<&Alert> {
        self.alerts.iter().filter(|a| a.rule_id == id).collect()
    }
}

/// A user actor.
pub fn user(login: &str) -> Value {
    json!({"id": format!("u-{login}"), "type": "USER", "loginName": login, "displayName": login, "tags": []})
}

/// An audit event in the shape the server records (`AuditEvent`).
pub fn audit_event(actor: &str, action: &str, target: Value, old: Value, new: Value) -> Value {
    let mut e = json!({
        "eventGroupID": "g",
        "origin": "API",
        "actor": user(actor),
        "type": "CONFIG",
        "target": target,
        "action": action,
        "eventTime": "2026-01-01T00:00:00Z",
    });
    if !old.is_null() {
        e["old"] = old;
    }
    if !new.is_null() {
        e["new"] = new;
    }
    e
}

/// The same event, refused by the server.
pub fn refused(mut event: Value) -> Value {
    event["error"] = json!("permission denied");
    event
}

/// A target of the audit shape.
pub fn target(kind: &str, id: &str, name: &str, property: &str) -> Value {
    json!({"id": id, "name": name, "type": kind, "property": property, "isEphemeral": false})
}

/// A tailnet setting changed (`ENABLE`/`DISABLE` for switches, `UPDATE`
/// for numbers), as `PATCH /settings` records it.
pub fn setting(actor: &str, property: &str, old: Value, new: Value) -> Value {
    let action = match (&old, &new) {
        (_, Value::Bool(true)) => "ENABLE",
        (_, Value::Bool(false)) => "DISABLE",
        _ => "UPDATE",
    };
    audit_event(
        actor,
        action,
        target("TAILNET", "T1", "example.org", property),
        old,
        new,
    )
}

/// An API (`api`) or auth (`auth`) key created, with or without expiry.
pub fn key_created(actor: &str, key_type: &str, id: &str, expires: Option<&str>) -> Value {
    let mut info = json!({
        "id": id,
        "keyType": key_type,
        "description": "automation",
        "created": "2026-01-01T00:00:00Z",
        "userId": format!("u-{actor}"),
    });
    if let Some(x) = expires {
        info["expires"] = json!(x);
    }
    let kind = if key_type == "api" {
        "API_KEY"
    } else {
        "AUTH_KEY"
    };
    audit_event(
        actor,
        "CREATE",
        target(kind, id, "automation", ""),
        Value::Null,
        info,
    )
}

/// A node deleted.
pub fn node_deleted(actor: &str, node: &str) -> Value {
    audit_event(
        actor,
        "DELETE",
        target("NODE", &format!("n-{node}"), node, ""),
        json!({"name": node}),
        Value::Null,
    )
}

/// A user's role changed.
pub fn role_changed(actor: &str, login: &str, old: &str, new: &str) -> Value {
    audit_event(
        actor,
        "UPDATE",
        target("USER", &format!("u-{login}"), login, "role"),
        json!(old),
        json!(new),
    )
}

/// A reconciliation finding of `class` about node `node` (by name).
pub fn finding(class: &str, severity: &str, node: &str, peer: Option<&str>, n: u32) -> Value {
    json!({
        "id": format!("f{n:04x}{class}"),
        "class": class,
        "severity": severity,
        "tailnet": "example.org",
        "node": format!("n-{node}"),
        "peer": peer.map(|p| format!("n-{p}")),
        "window": {"start": 0, "end": 1},
        "evidence": {},
        "detail": format!("{class} for {node}"),
    })
}
