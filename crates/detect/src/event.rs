//! The events rules see: one per flow entry, node log entry, audit event
//! and reconciliation finding, with the fields of [`FLOW_FIELDS`],
//! [`AUDIT_FIELDS`], [`FINDING_FIELDS`] and the log entry's own fields.
//!
//! Flow events are a typed view over the stored record (no allocation per
//! field lookup); the others are JSON objects with the extra fields added.

use rsigma_eval::event::{Event, EventValue, JsonEvent};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::net::SocketAddr;
use tally_proto::flow::{ConnectionCounts, TrafficKind};

/// Which of Tally's event streams an event comes from: Sigma's
/// `logsource.service` under `product: tally`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// One event per traffic entry of a flow record (`tailtraffic`).
    Flows,
    /// Node log entries (any collection agents upload to).
    Logs,
    /// Configuration audit events (`tailaudit`).
    Audit,
    /// Reconciliation findings (`findings`).
    Reconciliation,
}

impl Service {
    /// Every service, in a fixed order (the index of [`Service::index`]).
    pub const ALL: [Service; 4] = [
        Service::Flows,
        Service::Logs,
        Service::Audit,
        Service::Reconciliation,
    ];

    /// The `logsource.service` name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Flows => "flows",
            Service::Logs => "logs",
            Service::Audit => "audit",
            Service::Reconciliation => "reconciliation",
        }
    }

    /// Position in [`Service::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses a `logsource.service` name.
    pub fn parse(s: &str) -> Option<Self> {
        Service::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
    }

    /// The fields events of this service have (`None`: any, as node logs
    /// carry whatever the node wrote).
    pub fn fields(self) -> Option<&'static [FieldDoc]> {
        match self {
            Service::Flows => Some(FLOW_FIELDS),
            Service::Logs => None,
            Service::Audit => Some(AUDIT_FIELDS),
            Service::Reconciliation => Some(FINDING_FIELDS),
        }
    }

    /// The field that names the node an event is about, the default group
    /// key of a detection rule's alerts.
    pub fn node_field(self) -> &'static str {
        match self {
            Service::Flows => "src_node",
            Service::Logs | Service::Reconciliation => "node",
            Service::Audit => "actor.loginName",
        }
    }
}

/// One documented event field.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    /// The field name rules use.
    pub name: &'static str,
    /// What it holds.
    pub doc: &'static str,
}

const fn f(name: &'static str, doc: &'static str) -> FieldDoc {
    FieldDoc { name, doc }
}

/// Fields of a flow event (`product: tally, service: flows`; also matched
/// by `category: firewall` and `category: network_connection` rules).
pub const FLOW_FIELDS: &[FieldDoc] = &[
    f(
        "src_ip",
        "address of the side that opened the connection (see `Initiated`)",
    ),
    f("src_port", "its port (0 for ICMP)"),
    f("dst_ip", "address of the side that accepted it"),
    f("dst_port", "its port"),
    f("SourceIp", "= src_ip (Sysmon network_connection name)"),
    f("SourcePort", "= src_port"),
    f("DestinationIp", "= dst_ip"),
    f("DestinationPort", "= dst_port"),
    f(
        "Initiated",
        "`true` when the node that logged the entry opened the connection",
    ),
    f(
        "Protocol",
        "`tcp`, `udp`, `icmp`, `icmpv6`, `sctp` or the number",
    ),
    f("proto", "IANA protocol number"),
    f("kind", "`virtual` (node to node), `subnet` or `exit`"),
    f(
        "action",
        "`accept`: a flow log records traffic that went through (Sigma firewall taxonomy)",
    ),
    f("blocked", "`false`, for the same reason"),
    f("tx_bytes", "bytes sent by the node that logged the entry"),
    f("rx_bytes", "bytes it received"),
    f("tx_pkts", "packets it sent"),
    f("rx_pkts", "packets it received"),
    f("bytes", "tx_bytes + rx_bytes"),
    f(
        "src_node",
        "name of the node at src_ip (empty when no node has it)",
    ),
    f("dst_node", "name of the node at dst_ip"),
    f("src_node_id", "stable ID of that node"),
    f("dst_node_id", "stable ID of that node"),
    f(
        "src_tags",
        "tags of the src node (a list: a value matches when any tag does)",
    ),
    f("dst_tags", "tags of the dst node (a list)"),
    f("logged_by", "name of the node whose agent logged the entry"),
    f(
        "pair_first_seen",
        "`true` when src_node and dst_node were not seen talking in the 7 days before (after 7 days of learning)",
    ),
    f(
        "start",
        "the record's window start, RFC 3339 (also `@timestamp`)",
    ),
    f("end", "the record's window end, RFC 3339"),
    f("collection", "`tailtraffic`"),
    f("event_id", "the record's store position"),
];

/// Fields of an audit event (`product: tally, service: audit`): Tailscale's
/// configuration audit shape, nested objects addressed with dots.
pub const AUDIT_FIELDS: &[FieldDoc] = &[
    f(
        "action",
        "`CREATE`, `UPDATE`, `DELETE`, `ENABLE`, `DISABLE`, ...",
    ),
    f("origin", "`API`, `CLI`, `CONSOLE`, `SYSTEM`, `AGENT`"),
    f("type", "`CONFIG`"),
    f("actor.id", "user ID, node ID or `system`"),
    f("actor.type", "`USER`, `NODE` or `SYSTEM`"),
    f("actor.loginName", "the actor's login name"),
    f("actor.displayName", "the actor's display name"),
    f("actor.tags", "the actor's tags (nodes)"),
    f(
        "target.type",
        "`TAILNET`, `USER`, `API_KEY`, `AUTH_KEY`, `NODE`, `COLLECTION`, `DETECTION_RULE`, `ALERT`, ...",
    ),
    f("target.id", "ID of the changed object"),
    f("target.name", "its name"),
    f("target.property", "the changed property (a setting's name)"),
    f("target.isEphemeral", "ephemeral node"),
    f("old", "value before (objects: `old.<field>`)"),
    f("new", "value after (objects: `new.<field>`)"),
    f(
        "change",
        "`increase`, `decrease` (numbers), `enable`, `disable` (booleans) or empty",
    ),
    f("error", "set when the change was refused"),
    f("actionDetails", "free text"),
    f("eventGroupID", "events of one change share it"),
    f("eventTime", "RFC 3339"),
    f("remoteAddr", "client address"),
    f("collection", "`tailaudit`"),
    f("event_id", "the record's store position"),
];

/// Fields of a reconciliation finding (`product: tally, service: reconciliation`).
pub const FINDING_FIELDS: &[FieldDoc] = &[
    f(
        "class",
        "`count_mismatch`, `missing_suspicious`, `missing_agent_silent`, `integrity`, \
         `missing_opted_out`, `missing_flow_logging_off`, `missing_lost_batch`, `node_unknown`, \
         `sequence_gap`",
    ),
    f(
        "severity",
        "`info`, `low`, `medium`, `high`, `critical` (the finding's)",
    ),
    f("node", "name of the node at fault"),
    f("node_id", "its stable ID"),
    f("peer", "the other node or address"),
    f("detail", "one readable sentence"),
    f("id", "the finding's ID"),
    f("collection", "`findings`"),
    f("event_id", "the record's store position"),
];

/// A registered node as rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRef {
    /// Stable node ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tags (`tag:...`).
    pub tags: Vec<String>,
}

/// The protocol name rules compare against (`tcp`, `udp`, ...).
pub fn protocol_name(proto: u8) -> Cow<'static, str> {
    Cow::Borrowed(match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        n => return Cow::Owned(n.to_string()),
    })
}

/// Whether the side with port `local` opened a connection between ports
/// `local` and `peer`: an ephemeral port (32768 and up) against a lower
/// one is the client; otherwise the higher port is (a service listens on
/// the lower one). Equal ports: the logging side.
pub fn local_opened(local: u16, peer: u16) -> bool {
    const EPHEMERAL: u16 = 32768;
    match (local >= EPHEMERAL, peer >= EPHEMERAL) {
        (true, false) => true,
        (false, true) => false,
        _ => local >= peer,
    }
}

/// One traffic entry of a flow record, as a rule sees it.
#[derive(Debug, Clone)]
pub struct FlowEvent<'a> {
    /// The entry.
    pub counts: &'a ConnectionCounts,
    /// Its traffic array.
    pub kind: TrafficKind,
    /// Node at the entry's `src` (the logging node's side).
    pub local: Option<&'a NodeRef>,
    /// Node at the entry's `dst`.
    pub peer: Option<&'a NodeRef>,
    /// The node that logged it.
    pub logged_by: &'a str,
    /// Whether the pair (src node, dst node) is new: see [`FLOW_FIELDS`].
    pub pair_first_seen: bool,
    /// Record window start and end, RFC 3339.
    pub start: &'a str,
    /// See `start`.
    pub end: &'a str,
    /// The record's store position, as text.
    pub event_id: &'a str,
    /// The entry's addresses as text, made on first use.
    pub ips: IpTexts,
}

/// The text of an entry's two addresses, made once per event (rules read
/// them often).
#[derive(Debug, Clone, Default)]
pub struct IpTexts {
    src: std::cell::OnceCell<String>,
    dst: std::cell::OnceCell<String>,
}

impl<'a> FlowEvent<'a> {
    /// Whether the logging node opened the connection.
    pub fn initiated(&self) -> bool {
        local_opened(self.counts.src.port(), self.counts.dst.port())
    }

    /// The (client, server) sides.
    fn oriented(&self) -> (SocketAddr, SocketAddr) {
        if self.initiated() {
            (self.counts.src, self.counts.dst)
        } else {
            (self.counts.dst, self.counts.src)
        }
    }

    /// The (client, server) nodes.
    fn oriented_nodes(&self) -> (Option<&'a NodeRef>, Option<&'a NodeRef>) {
        if self.initiated() {
            (self.local, self.peer)
        } else {
            (self.peer, self.local)
        }
    }

    /// The text of the client's (`src`) or server's address.
    fn ip_text(&self, client: bool) -> &str {
        let local = client == self.initiated();
        let (cell, addr) = if local {
            (&self.ips.src, self.counts.src)
        } else {
            (&self.ips.dst, self.counts.dst)
        };
        cell.get_or_init(|| addr.ip().to_string())
    }

    fn str_field(&self, name: &str) -> Option<Cow<'_, str>> {
        let (sn, dn) = self.oriented_nodes();
        let node_name = |n: Option<&'a NodeRef>| Cow::Borrowed(n.map_or("", |n| n.name.as_str()));
        let node_id = |n: Option<&'a NodeRef>| Cow::Borrowed(n.map_or("", |n| n.id.as_str()));
        Some(match name {
            "src_ip" | "SourceIp" => Cow::Borrowed(self.ip_text(true)),
            "dst_ip" | "DestinationIp" => Cow::Borrowed(self.ip_text(false)),
            "Protocol" => protocol_name(self.counts.proto),
            "kind" => Cow::Borrowed(self.kind.as_str()),
            "action" => Cow::Borrowed("accept"),
            "blocked" => Cow::Borrowed("false"),
            "src_node" => node_name(sn),
            "dst_node" => node_name(dn),
            "src_node_id" => node_id(sn),
            "dst_node_id" => node_id(dn),
            "logged_by" => Cow::Borrowed(self.logged_by),
            "start" | "@timestamp" => Cow::Borrowed(self.start),
            "end" => Cow::Borrowed(self.end),
            "collection" => Cow::Borrowed(tally_proto::collection::FLOWS),
            "event_id" => Cow::Borrowed(self.event_id),
            "product" => Cow::Borrowed("tally"),
            "service" => Cow::Borrowed("flows"),
            "category" => Cow::Borrowed("firewall"),
            _ => return None,
        })
    }
}

/// Every field name a flow event answers (for `to_json` and key listing).
const FLOW_KEYS: &[&str] = &[
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "SourceIp",
    "SourcePort",
    "DestinationIp",
    "DestinationPort",
    "Initiated",
    "Protocol",
    "proto",
    "kind",
    "action",
    "blocked",
    "tx_bytes",
    "rx_bytes",
    "tx_pkts",
    "rx_pkts",
    "bytes",
    "src_node",
    "dst_node",
    "src_node_id",
    "dst_node_id",
    "src_tags",
    "dst_tags",
    "logged_by",
    "pair_first_seen",
    "start",
    "end",
    "collection",
    "event_id",
];

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Event for FlowEvent<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        let (src, dst) = self.oriented();
        let c = self.counts;
        let int = |v: u64| Some(EventValue::Int(clamp_i64(v)));
        match path {
            "src_port" | "SourcePort" => int(u64::from(src.port())),
            "dst_port" | "DestinationPort" => int(u64::from(dst.port())),
            "proto" => int(u64::from(c.proto)),
            "tx_bytes" => int(c.tx_bytes),
            "rx_bytes" => int(c.rx_bytes),
            "tx_pkts" => int(c.tx_pkts),
            "rx_pkts" => int(c.rx_pkts),
            "bytes" => int(c.tx_bytes.saturating_add(c.rx_bytes)),
            "Initiated" => Some(EventValue::Str(Cow::Borrowed(if self.initiated() {
                "true"
            } else {
                "false"
            }))),
            "pair_first_seen" => Some(EventValue::Str(Cow::Borrowed(if self.pair_first_seen {
                "true"
            } else {
                "false"
            }))),
            "src_tags" | "dst_tags" => {
                let (sn, dn) = self.oriented_nodes();
                let n = if path == "src_tags" { sn } else { dn };
                Some(EventValue::Array(
                    n.map(|n| {
                        n.tags
                            .iter()
                            .map(|t| EventValue::Str(Cow::Borrowed(t.as_str())))
                            .collect()
                    })
                    .unwrap_or_default(),
                ))
            }
            other => self.str_field(other).map(EventValue::Str),
        }
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        FLOW_KEYS
            .iter()
            .filter_map(|k| self.str_field(k))
            .any(|v| pred(&v))
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        FLOW_KEYS.iter().filter_map(|k| self.str_field(k)).collect()
    }

    /// Only `event_id`: rsigma materializes an event for every correlation
    /// it feeds, to read its ID for the alert's evidence; the whole entry
    /// would cost more than evaluating it. [`FlowEvent::fields`] has all.
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("event_id".into(), Value::String(self.event_id.to_owned()));
        Value::Object(m)
    }
}

impl FlowEvent<'_> {
    /// Every field of the event as JSON.
    pub fn fields(&self) -> Value {
        let mut m = Map::new();
        for k in FLOW_KEYS {
            if let Some(v) = self.get_field(k) {
                m.insert((*k).to_owned(), value_to_json(&v));
            }
        }
        Value::Object(m)
    }
}

fn value_to_json(v: &EventValue<'_>) -> Value {
    match v {
        EventValue::Str(s) => Value::String(s.to_string()),
        EventValue::Int(i) => Value::from(*i),
        EventValue::Float(f) => Value::from(*f),
        EventValue::Bool(b) => Value::Bool(*b),
        EventValue::Null => Value::Null,
        EventValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        EventValue::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), value_to_json(v)))
                .collect(),
        ),
    }
}

/// An event held as a JSON object (logs, audit events, findings).
#[derive(Debug)]
pub struct ObjectEvent {
    inner: JsonEvent<'static>,
}

impl ObjectEvent {
    /// A node log entry: the entry's fields (a body that is not an object
    /// becomes `message`) plus `node`, `node_id`, `collection`, `event_id`.
    pub fn log(entry: Value, node: Option<&NodeRef>, collection: &str, event_id: &str) -> Self {
        let mut m = match entry {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("message".into(), other);
                m
            }
        };
        m.insert(
            "node".into(),
            Value::String(node.map(|n| n.name.clone()).unwrap_or_default()),
        );
        m.insert(
            "node_id".into(),
            Value::String(node.map(|n| n.id.clone()).unwrap_or_default()),
        );
        m.insert("collection".into(), Value::String(collection.to_owned()));
        m.insert("event_id".into(), Value::String(event_id.to_owned()));
        Self::from_map(m)
    }

    /// An audit event (its stored JSON) plus `change`, `collection` and
    /// `event_id`.
    pub fn audit(event: Value, event_id: &str) -> Self {
        let mut m = match event {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let change = change_direction(m.get("old"), m.get("new"));
        m.insert("change".into(), Value::String(change.to_owned()));
        m.insert(
            "collection".into(),
            Value::String(tally_proto::collection::AUDIT.to_owned()),
        );
        m.insert("event_id".into(), Value::String(event_id.to_owned()));
        Self::from_map(m)
    }

    /// A finding (its stored JSON) with `node` and `peer` given as names
    /// when known, plus `node_id`, `collection` and `event_id`.
    pub fn finding(
        finding: Value,
        node: Option<&NodeRef>,
        peer: Option<&NodeRef>,
        event_id: &str,
    ) -> Self {
        let mut m = match finding {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let node_id = m.get("node").cloned().unwrap_or(Value::Null);
        m.insert("node_id".into(), node_id);
        if let Some(n) = node {
            m.insert("node".into(), Value::String(n.name.clone()));
        }
        if let Some(p) = peer {
            m.insert("peer".into(), Value::String(p.name.clone()));
        }
        m.insert(
            "collection".into(),
            Value::String(tally_proto::collection::FINDINGS.to_owned()),
        );
        m.insert("event_id".into(), Value::String(event_id.to_owned()));
        Self::from_map(m)
    }

    fn from_map(m: Map<String, Value>) -> Self {
        Self {
            inner: JsonEvent::owned(Value::Object(m)),
        }
    }

    /// A field's value as text (for group keys and summaries).
    pub fn text(&self, path: &str) -> Option<String> {
        self.get_field(path)
            .and_then(|v| v.as_str().map(|s| s.into_owned()))
    }
}

/// `increase`/`decrease` for numbers, `enable`/`disable` for booleans,
/// else empty.
fn change_direction(old: Option<&Value>, new: Option<&Value>) -> &'static str {
    match (old, new) {
        (Some(Value::Number(o)), Some(Value::Number(n))) => match (o.as_f64(), n.as_f64()) {
            (Some(o), Some(n)) if n > o => "increase",
            (Some(o), Some(n)) if n < o => "decrease",
            _ => "",
        },
        (Some(Value::Bool(o)), Some(Value::Bool(n))) if o != n => {
            if *n {
                "enable"
            } else {
                "disable"
            }
        }
        _ => "",
    }
}

impl Event for ObjectEvent {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        self.inner.get_field(path)
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        self.inner.any_string_value(pred)
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        self.inner.all_string_values()
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        self.inner.visit_string_values(visit)
    }

    fn to_json(&self) -> Value {
        self.inner.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_side_is_the_ephemeral_or_higher_port() {
        assert!(local_opened(51234, 22));
        assert!(!local_opened(22, 51234));
        assert!(local_opened(8080, 443));
        assert!(!local_opened(443, 8080));
        assert!(local_opened(0, 0));
    }

    /// docs/detection.md has one row per field of each service, with the
    /// field's description, in that service's section, and no other row.
    #[test]
    fn the_detection_doc_lists_every_field() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/detection.md");
        let doc = std::fs::read_to_string(path).expect("docs/detection.md");
        for service in Service::ALL {
            let Some(fields) = service.fields() else {
                continue;
            };
            let heading = format!("(`service: {}`)", service.name());
            let start = doc
                .lines()
                .position(|l| l.starts_with("### ") && l.contains(&heading))
                .unwrap_or_else(|| panic!("no section for {heading}"));
            let section: Vec<&str> = doc
                .lines()
                .skip(start + 1)
                .take_while(|l| !l.starts_with('#'))
                .collect();
            for f in fields {
                let row = format!("| `{}` | {} |", f.name, f.doc);
                assert!(section.contains(&row.as_str()), "{heading}: missing {row}");
            }
            for l in section.iter().filter(|l| l.starts_with("| `")) {
                assert!(
                    fields
                        .iter()
                        .any(|f| l.starts_with(&format!("| `{}` |", f.name))),
                    "{heading}: no such field: {l}"
                );
            }
        }
    }

    #[test]
    fn audit_changes_have_a_direction() {
        let e = ObjectEvent::audit(
            serde_json::json!({"old": 90, "new": 7, "action": "UPDATE"}),
            "1",
        );
        assert_eq!(e.text("change").as_deref(), Some("decrease"));
        let e = ObjectEvent::audit(serde_json::json!({"old": true, "new": false}), "1");
        assert_eq!(e.text("change").as_deref(), Some("disable"));
        let e = ObjectEvent::audit(serde_json::json!({"old": null, "new": {"a": 1}}), "1");
        assert_eq!(e.text("change").as_deref(), Some(""));
    }
}
