//! Stored entries as [OCSF](https://schema.ocsf.io/1.3.0/) 1.3.0 events, for
//! destinations that take OCSF (AWS Security Lake, Splunk's OCSF add-on...).
//! Every event is a `serde_json::Value`; nothing here does I/O.
//!
//! | Log type | Stored entry | OCSF class (`class_uid`) | activity | events |
//! |---|---|---|---|---|
//! | `network` | flow record (Tailscale's `netlogtype.Message` + Tally's counters) | Network Activity (4001), category 4 | 6 Traffic | one per connection of `virtualTraffic`, `subnetTraffic`, `exitTraffic`, `physicalTraffic` |
//! | `configuration` | configuration audit event | API Activity (6003), category 6 | `CREATE` 1, `READ` 2, `UPDATE` 3, `DELETE` 4, else 99 (the action in `activity_name`) | one |
//! | `alerts` | detection alert | Detection Finding (2004), category 2 | 1 Create | one |
//! | `findings` | reconciliation finding | Detection Finding (2004), category 2 | 1 Create | one |
//! | anything else ([`encode_generic`]) | any entry | Base Event (0), category 0 | 99 Other | one |
//!
//! Every event has `class_uid`, `category_uid`, `activity_id`, `type_uid`
//! (`class_uid * 100 + activity_id`), `severity_id`, `time` (ms since the
//! epoch), `metadata` (`version` [`OCSF_VERSION`], `product` Tally,
//! `log_name` the log type, `logged_time` the time Tally stored the entry),
//! their `*_name` captions, and `unmapped` for what OCSF has no field for.
//!
//! **Flows.** `src` (always the logging node's side in Tailscale's
//! format) becomes `src_endpoint`, `dst` `dst_endpoint` (`ip`, `port`; a
//! port 0, which Tailscale writes for scrubbed or port-less traffic, is
//! left out); `tx*` are `traffic.*_out`, `rx*` `traffic.*_in`; `proto`
//! is `connection_info.protocol_num` (left out when 0: Tailscale omits
//! it for physical and anonymized traffic); `connection_info.direction_id`
//! is 3 Lateral for virtual, 2 Outbound for exit, 0 Unknown otherwise;
//! `boundary_id` is 2 Internal for virtual and subnet, 3 External for
//! exit, 99 Other (`physical`) for physical traffic; the traffic array is
//! `unmapped.traffic_kind`. `nodeId` is `device.uid` (`device.hostname`
//! from `srcNode.name` when the record carries it), endpoints whose
//! address belongs to `srcNode` or one of `dstNodes` get that node's
//! `uid` and `hostname`. `start`/`end` are `start_time`/`end_time`, and
//! `time` is `end`. Tally's record counters (`evictions`,
//! `malformedPackets`, `droppedPackets`, `captureStart`) are record-wide:
//! they are repeated in `unmapped.record` of each of the record's events,
//! and a record without connections gives no event. Counters above
//! `i64::MAX` (OCSF's `long_t`) are written as `i64::MAX`. A connection
//! whose destination Tailscale scrubbed (anonymized exit traffic) gets
//! `dst_endpoint` `{"name":"anonymized"}` (OCSF requires the object).
//! With the `logtail` identity of the record (`id`, `proc_id`,
//! `proc_seq`), `metadata.uid` is `<id>:<proc_id>:<proc_seq>:<n>`, `n` the
//! connection's index in the record: the same entry delivered twice
//! gives the same UIDs.
//!
//! **Audit events.** `actor` is `actor.user` (`uid` id, `name` loginName,
//! `email_addr` when the login name is an address, `full_name`,
//! `type_id` 1 User / 3 System / 99 Other for nodes) and `actor.app_name`
//! the origin; `api.operation` the action, `api.service.name` `tally`;
//! `src_endpoint.ip` the client address, or `{name: <origin>}` when the
//! event has none; `resources[0]` the target (`uid`, `name`, `type`,
//! `data.property`); `status_id` 1 Success, or 2 Failure with
//! `status_detail` the error for a refused change; `time` is `eventTime`;
//! `metadata.correlation_uid` the `eventGroupID`; `old`/`new` go to
//! `unmapped`.
//!
//! **Alerts.** `finding_info` (`uid` alert ID, `title`, `desc` the
//! evidence summary, `analytic` `{uid: ruleId, name: title, type_id: 1
//! Rule}`, `first_seen_time`/`last_seen_time` the window, `attacks` from
//! `attack.*` tags); `severity_id` informational 1 … critical 5;
//! `status_id` 1 New; `evidences[0]` the evidence (`data`, and the
//! endpoints, protocol and actor its fields name); `device.name` the
//! node; `metadata.uid` the alert ID and `tenant_uid` the tailnet; `time`
//! the time Tally stored the alert (the finding's creation).
//!
//! **Findings.** As alerts, with `finding_info.types` `["reconciliation"]`,
//! `analytic.name`/`uid` the finding class (`count_mismatch`...),
//! `device.uid` the node at fault, `resources` the node and its peer,
//! `evidences[0]` the connection when known, and the evidence numbers in
//! `unmapped.evidence`.
//!
//! **Errors.** [`encode`] is strict for the four log types: a body that is
//! not the shape its log type stores, or a field it cannot read (a time
//! that is not RFC 3339, an address that is not `ip:port`), is an
//! [`OcsfError`] naming the field, never a panic and never a partial
//! result. Entries of other shapes (node logs, which have no log type
//! yet) go through [`encode_generic`], which never fails: a log type added
//! to [`LogType`] must be given a mapping in [`encode`] (the `match` is
//! exhaustive) or sent there.

use crate::config::LogType;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use tally_proto::alert::{Alert, AlertSeverity};
use tally_proto::audit::{AuditEvent, Origin};
use tally_proto::finding::{Finding, FindingClass, Severity};

/// The OCSF schema version the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.3.0";

/// `metadata.product.name` and `vendor_name`.
pub const PRODUCT: &str = "Tally";

/// Why a stored entry could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcsfError {
    /// The body is not JSON of the shape its log type stores.
    #[error("a stored {log_type} entry is not {expected}: {reason}")]
    Shape {
        /// The log type's name (`network`, `configuration`...).
        log_type: &'static str,
        /// What the body should have been.
        expected: &'static str,
        /// What the JSON reader said (with the line and column).
        reason: String,
    },
    /// A field holds a value the mapping cannot read.
    #[error("a stored {log_type} entry has {field} = {value:?}, which is not {expected}")]
    Field {
        /// The log type's name.
        log_type: &'static str,
        /// Path of the field (`virtualTraffic[2].dst`).
        field: String,
        /// Its value (at most 64 characters of it).
        value: String,
        /// What it should have been.
        expected: &'static str,
    },
}

/// One stored entry as OCSF events (a flow record expands to one event per
/// connection). `time_ns` is the time Tally stored the entry (Unix ns);
/// `body` the entry as stored. See the [module documentation](self) for
/// the mapping.
pub fn encode(log_type: LogType, time_ns: i64, body: &[u8]) -> Result<Vec<Value>, OcsfError> {
    match log_type {
        LogType::Network => flows(time_ns, body),
        LogType::Configuration => audit(time_ns, body).map(|e| vec![e]),
        LogType::Alerts => alert(time_ns, body).map(|e| vec![e]),
        LogType::Findings => finding(time_ns, body).map(|e| vec![e]),
        LogType::Logs => Ok(vec![encode_generic(log_type.name(), time_ns, body)]),
    }
}

/// Any entry as one OCSF Base Event (`class_uid` 0, category 0
/// Uncategorized, activity 99 Other): for entries no class maps yet (node
/// logs). `time` is the entry's `logtail.client_time` when it has a valid
/// one, else `time_ns`; `message` its `text` member when it is a string;
/// a JSON object goes whole into `unmapped`, anything else into `raw_data`
/// (as text, invalid UTF-8 replaced). Never fails.
pub fn encode_generic(log_name: &str, time_ns: i64, body: &[u8]) -> Value {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let client_time = parsed
        .as_ref()
        .and_then(|v| v.pointer("/logtail/client_time"))
        .and_then(Value::as_str)
        .and_then(tally_proto::timefmt::parse_rfc3339);
    let mut e = header(
        &BASE_EVENT,
        Activity::new(99, "Other"),
        0,
        ms(client_time.unwrap_or(time_ns)),
        metadata(log_name, time_ns),
    );
    match parsed {
        Some(Value::Object(o)) => {
            if let Some(Value::String(text)) = o.get("text") {
                e.insert("message".into(), Value::String(text.clone()));
            }
            e.insert("unmapped".into(), Value::Object(o));
        }
        _ => {
            e.insert(
                "raw_data".into(),
                Value::String(String::from_utf8_lossy(body).into_owned()),
            );
        }
    }
    Value::Object(e)
}

// ---------------------------------------------------------------------------
// Common parts

/// An OCSF class: its UID, caption and category.
struct Class {
    uid: u64,
    name: &'static str,
    category_uid: u64,
    category_name: &'static str,
}

const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};
const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
};
const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};

/// An activity: its ID, caption (for `type_name`) and the name to show
/// (`activity_name`: the source's own for 99 Other).
struct Activity<'a> {
    id: u64,
    caption: &'static str,
    name: &'a str,
}

impl Activity<'static> {
    fn new(id: u64, caption: &'static str) -> Self {
        Activity {
            id,
            caption,
            name: caption,
        }
    }
}

/// The classification, time and metadata every event starts with.
fn header(
    class: &Class,
    activity: Activity<'_>,
    severity_id: u8,
    time_ms: i64,
    metadata: Value,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("class_uid".into(), class.uid.into());
    m.insert("class_name".into(), class.name.into());
    m.insert("category_uid".into(), class.category_uid.into());
    m.insert("category_name".into(), class.category_name.into());
    m.insert("activity_id".into(), activity.id.into());
    m.insert("activity_name".into(), activity.name.into());
    m.insert("type_uid".into(), (class.uid * 100 + activity.id).into());
    m.insert(
        "type_name".into(),
        format!("{}: {}", class.name, activity.caption).into(),
    );
    m.insert("severity_id".into(), severity_id.into());
    m.insert("severity".into(), severity_caption(severity_id).into());
    m.insert("time".into(), time_ms.into());
    m.insert("metadata".into(), metadata);
    m
}

/// `metadata` with the version, product, log name and the time Tally
/// stored the entry.
fn metadata(log_name: &str, stored_ns: i64) -> Value {
    json!({
        "version": OCSF_VERSION,
        "product": {
            "name": PRODUCT,
            "vendor_name": PRODUCT,
            "version": env!("CARGO_PKG_VERSION"),
        },
        "log_name": log_name,
        "logged_time": ms(stored_ns),
    })
}

/// Adds `key: value` to the object `v` (no-op when `v` is not one).
fn set(v: &mut Value, key: &str, value: impl Into<Value>) {
    if let Value::Object(m) = v {
        m.insert(key.to_owned(), value.into());
    }
}

fn severity_caption(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        99 => "Other",
        _ => "Unknown",
    }
}

/// Unix ns to OCSF's `timestamp_t` (ms), rounding down.
fn ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// A counter as OCSF's `long_t` (a signed 64-bit integer).
fn long(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// At most 64 characters of `s`, for error messages.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// The lower-case IANA keyword of a protocol number, for the common ones.
fn protocol_name(proto: u8) -> Option<&'static str> {
    Some(match proto {
        1 => "icmp",
        2 => "igmp",
        4 => "ipv4",
        6 => "tcp",
        17 => "udp",
        41 => "ipv6",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "ipv6-icmp",
        132 => "sctp",
        _ => return None,
    })
}

/// The protocol number of a name detection writes (`tcp`, `icmpv6`...) or
/// of a number.
fn protocol_number(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase();
    if let Ok(n) = name.parse::<u8>() {
        return Some(n);
    }
    Some(match name.as_str() {
        "icmpv6" => 58,
        other => (0..=255u8).find(|&n| protocol_name(n) == Some(other))?,
    })
}

/// `connection_info` for a protocol number (0: unknown, left out).
fn connection_info(proto: u8, ip: Option<IpAddr>, direction: (u8, &str)) -> Value {
    let mut c = json!({ "direction_id": direction.0, "direction": direction.1 });
    if proto != 0 {
        set(&mut c, "protocol_num", proto);
        if let Some(name) = protocol_name(proto) {
            set(&mut c, "protocol_name", name);
        }
    }
    match ip {
        Some(IpAddr::V4(_)) => {
            set(&mut c, "protocol_ver_id", 4);
            set(&mut c, "protocol_ver", "Internet Protocol version 4 (IPv4)");
        }
        Some(IpAddr::V6(_)) => {
            set(&mut c, "protocol_ver_id", 6);
            set(&mut c, "protocol_ver", "Internet Protocol version 6 (IPv6)");
        }
        None => {}
    }
    c
}

/// A `network_endpoint` for an address (port 0 left out).
fn endpoint(addr: SocketAddr) -> Value {
    let mut e = json!({ "ip": addr.ip().to_string() });
    if addr.port() != 0 {
        set(&mut e, "port", addr.port());
    }
    e
}

// ---------------------------------------------------------------------------
// Network flows

/// A flow record as stored: Tally's `FlowRecord` and Tailscale's
/// `netlogtype.Message` (with `physicalTraffic`, `srcNode`, `dstNodes`, and
/// connections whose `src`/`dst` Tailscale scrubbed).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFlow {
    node_id: String,
    start: String,
    end: String,
    #[serde(default)]
    src_node: Option<WireNode>,
    #[serde(default)]
    dst_nodes: Option<Vec<WireNode>>,
    #[serde(default)]
    virtual_traffic: Option<Vec<WireConn>>,
    #[serde(default)]
    subnet_traffic: Option<Vec<WireConn>>,
    #[serde(default)]
    exit_traffic: Option<Vec<WireConn>>,
    #[serde(default)]
    physical_traffic: Option<Vec<WireConn>>,
    #[serde(default)]
    evictions: u64,
    #[serde(default)]
    malformed_packets: u64,
    #[serde(default)]
    dropped_packets: u64,
    #[serde(default)]
    capture_start: Option<String>,
    #[serde(default)]
    logtail: Option<WireLogtail>,
}

/// A node as Tailscale describes it in a record (`srcNode`, `dstNodes`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct WireNode {
    node_id: Option<String>,
    name: Option<String>,
    addresses: Option<Vec<String>>,
}

/// One connection's counters.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireConn {
    #[serde(default)]
    proto: u8,
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    dst: Option<String>,
    #[serde(default)]
    tx_pkts: u64,
    #[serde(default)]
    tx_bytes: u64,
    #[serde(default)]
    rx_pkts: u64,
    #[serde(default)]
    rx_bytes: u64,
}

/// The members logtail and Tally's ingest add.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireLogtail {
    id: Option<String>,
    proc_id: Option<u32>,
    proc_seq: Option<u64>,
}

fn flows(time_ns: i64, body: &[u8]) -> Result<Vec<Value>, OcsfError> {
    let rec: WireFlow = serde_json::from_slice(body).map_err(|e| OcsfError::Shape {
        log_type: LogType::Network.name(),
        expected: "a network flow record",
        reason: e.to_string(),
    })?;
    let time = |field: &str, value: &str| {
        tally_proto::timefmt::parse_rfc3339(value).ok_or_else(|| OcsfError::Field {
            log_type: LogType::Network.name(),
            field: field.to_owned(),
            value: quoted(value),
            expected: "an RFC 3339 time",
        })
    };
    let start = ms(time("start", &rec.start)?);
    let end = ms(time("end", &rec.end)?);
    let capture_start = rec
        .capture_start
        .as_deref()
        .map(|s| time("captureStart", s).map(ms))
        .transpose()?;

    // Who is behind an address, from the nodes the record describes.
    let mut nodes: HashMap<IpAddr, &WireNode> = HashMap::new();
    for n in rec.src_node.iter().chain(rec.dst_nodes.iter().flatten()) {
        for a in n.addresses.iter().flatten() {
            if let Ok(ip) = a.parse::<IpAddr>() {
                nodes.entry(ip).or_insert(n);
            }
        }
    }
    let node_endpoint = |addr: SocketAddr| {
        let mut e = endpoint(addr);
        if let Some(n) = nodes.get(&addr.ip()) {
            if let Some(id) = n.node_id.as_deref().filter(|s| !s.is_empty()) {
                set(&mut e, "uid", id);
            }
            if let Some(name) = n.name.as_deref().filter(|s| !s.is_empty()) {
                set(&mut e, "hostname", name);
            }
        }
        e
    };

    let mut device = json!({ "uid": rec.node_id, "type_id": 0, "type": "Unknown" });
    if let Some(name) = rec
        .src_node
        .as_ref()
        .and_then(|n| n.name.as_deref())
        .filter(|s| !s.is_empty())
    {
        set(&mut device, "hostname", name);
    }

    let mut record = Map::new();
    for (k, v) in [
        ("evictions", rec.evictions),
        ("malformed_packets", rec.malformed_packets),
        ("dropped_packets", rec.dropped_packets),
    ] {
        if v != 0 {
            record.insert(k.into(), long(v).into());
        }
    }
    if let Some(t) = capture_start {
        record.insert("capture_start_time".into(), t.into());
    }
    let logtail = rec.logtail.unwrap_or_default();
    let uid_prefix = match (&logtail.id, logtail.proc_seq) {
        (Some(id), Some(seq)) => Some(format!("{id}:{}:{seq}", logtail.proc_id.unwrap_or(0))),
        _ => None,
    };

    // Array, kind, connection_info direction and boundary.
    let kinds = [
        (
            "virtualTraffic",
            "virtual",
            (3, "Lateral"),
            (2, "Internal"),
            rec.virtual_traffic,
        ),
        (
            "subnetTraffic",
            "subnet",
            (0, "Unknown"),
            (2, "Internal"),
            rec.subnet_traffic,
        ),
        (
            "exitTraffic",
            "exit",
            (2, "Outbound"),
            (3, "External"),
            rec.exit_traffic,
        ),
        (
            "physicalTraffic",
            "physical",
            (0, "Unknown"),
            (99, "physical"),
            rec.physical_traffic,
        ),
    ];
    let mut out = Vec::new();
    for (array, kind, direction, boundary, conns) in kinds {
        for (i, c) in conns.into_iter().flatten().enumerate() {
            let addr = |field: &str, v: &Option<String>| match v.as_deref() {
                None => Ok(None),
                Some(s) => s
                    .parse::<SocketAddr>()
                    .map(Some)
                    .map_err(|_| OcsfError::Field {
                        log_type: LogType::Network.name(),
                        field: format!("{array}[{i}].{field}"),
                        value: quoted(s),
                        expected: "an ip:port address (IPv6 as [ip]:port)",
                    }),
            };
            let src = addr("src", &c.src)?;
            let dst = addr("dst", &c.dst)?;
            let mut conn = connection_info(c.proto, dst.or(src).map(|a| a.ip()), direction);
            set(&mut conn, "boundary_id", boundary.0);
            set(&mut conn, "boundary", boundary.1);

            let mut meta = metadata(LogType::Network.name(), time_ns);
            set(&mut meta, "profiles", json!(["host"]));
            if let Some(p) = &uid_prefix {
                set(&mut meta, "uid", format!("{p}:{}", out.len()));
            }
            let mut e = header(&NETWORK_ACTIVITY, Activity::new(6, "Traffic"), 1, end, meta);
            e.insert("start_time".into(), start.into());
            e.insert("end_time".into(), end.into());
            e.insert("device".into(), device.clone());
            if let Some(a) = src {
                e.insert("src_endpoint".into(), node_endpoint(a));
            }
            e.insert(
                "dst_endpoint".into(),
                dst.map_or_else(|| json!({ "name": "anonymized" }), node_endpoint),
            );
            e.insert("connection_info".into(), conn);
            let (tx, rx) = (long(c.tx_bytes), long(c.rx_bytes));
            let (txp, rxp) = (long(c.tx_pkts), long(c.rx_pkts));
            e.insert(
                "traffic".into(),
                json!({
                    "bytes_out": tx,
                    "packets_out": txp,
                    "bytes_in": rx,
                    "packets_in": rxp,
                    "bytes": tx.saturating_add(rx),
                    "packets": txp.saturating_add(rxp),
                }),
            );
            let show = |a: Option<SocketAddr>| a.map_or_else(|| "?".to_owned(), |a| a.to_string());
            let proto = match c.proto {
                0 => String::new(),
                p => format!(
                    "{} ",
                    protocol_name(p).map_or_else(|| p.to_string(), str::to_owned)
                ),
            };
            e.insert(
                "message".into(),
                format!(
                    "{kind} {proto}{} -> {}: {tx} bytes out, {rx} bytes in",
                    show(src),
                    show(dst)
                )
                .into(),
            );
            let mut unmapped = json!({ "traffic_kind": kind });
            if !record.is_empty() {
                set(&mut unmapped, "record", Value::Object(record.clone()));
            }
            if src.is_none() || dst.is_none() {
                set(&mut unmapped, "anonymized", true);
            }
            e.insert("unmapped".into(), unmapped);
            out.push(Value::Object(e));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Configuration audit events

fn audit(time_ns: i64, body: &[u8]) -> Result<Value, OcsfError> {
    let ev: AuditEvent = serde_json::from_slice(body).map_err(|e| OcsfError::Shape {
        log_type: LogType::Configuration.name(),
        expected: "a configuration audit event",
        reason: e.to_string(),
    })?;
    let time =
        tally_proto::timefmt::parse_rfc3339(&ev.event_time).ok_or_else(|| OcsfError::Field {
            log_type: LogType::Configuration.name(),
            field: "eventTime".into(),
            value: quoted(&ev.event_time),
            expected: "an RFC 3339 time",
        })?;
    let activity = match ev.action.as_str() {
        "CREATE" => Activity::new(1, "Create"),
        "READ" => Activity::new(2, "Read"),
        "UPDATE" => Activity::new(3, "Update"),
        "DELETE" => Activity::new(4, "Delete"),
        other => Activity {
            id: 99,
            caption: "Other",
            name: other,
        },
    };
    let origin = origin_name(ev.origin);
    let mut meta = metadata(LogType::Configuration.name(), time_ns);
    if !ev.event_group_id.is_empty() {
        set(&mut meta, "correlation_uid", ev.event_group_id.as_str());
    }
    let mut e = header(&API_ACTIVITY, activity, 1, ms(time), meta);

    let a = &ev.actor;
    let (type_id, type_name) = match a.actor_type.as_str() {
        "USER" => (1, "User"),
        "SYSTEM" => (3, "System"),
        "NODE" => (99, "Node"),
        "" => (0, "Unknown"),
        other => (99, other),
    };
    let mut user = json!({ "type_id": type_id, "type": type_name });
    for (k, v) in [
        ("uid", &a.id),
        ("name", &a.login_name),
        ("full_name", &a.display_name),
    ] {
        if !v.is_empty() {
            set(&mut user, k, v.as_str());
        }
    }
    if a.login_name.contains('@') {
        set(&mut user, "email_addr", a.login_name.as_str());
    }
    e.insert("actor".into(), json!({ "user": user, "app_name": origin }));
    e.insert(
        "api".into(),
        json!({ "operation": ev.action, "service": { "name": "tally" } }),
    );
    let remote = ev.remote_addr.as_deref().and_then(|r| {
        r.parse::<IpAddr>()
            .ok()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .or_else(|| r.parse::<SocketAddr>().ok().map(endpoint))
    });
    e.insert(
        "src_endpoint".into(),
        remote.unwrap_or_else(|| json!({ "name": origin })),
    );
    let t = &ev.target;
    if !t.id.is_empty() || !t.name.is_empty() {
        let mut r = json!({});
        for (k, v) in [("uid", &t.id), ("name", &t.name), ("type", &t.target_type)] {
            if !v.is_empty() {
                set(&mut r, k, v.as_str());
            }
        }
        if !t.property.is_empty() {
            set(&mut r, "data", json!({ "property": t.property }));
        }
        e.insert("resources".into(), json!([r]));
    }
    match &ev.error {
        Some(err) => {
            e.insert("status_id".into(), 2.into());
            e.insert("status".into(), "Failure".into());
            e.insert("status_detail".into(), err.as_str().into());
        }
        None => {
            e.insert("status_id".into(), 1.into());
            e.insert("status".into(), "Success".into());
        }
    }
    let message = if ev.action_details.is_empty() {
        let what = if t.name.is_empty() { &t.id } else { &t.name };
        let prop = if t.property.is_empty() {
            String::new()
        } else {
            format!(" {}", t.property)
        };
        format!("{} {} {what}{prop}", ev.action, t.target_type)
    } else {
        ev.action_details.clone()
    };
    e.insert("message".into(), message.into());
    let mut unmapped = json!({ "origin": origin, "type": ev.event_type });
    if !ev.old.is_null() {
        set(&mut unmapped, "old", ev.old.clone());
    }
    if !ev.new.is_null() {
        set(&mut unmapped, "new", ev.new.clone());
    }
    if !a.tags.is_empty() {
        set(&mut unmapped, "actor_tags", json!(a.tags));
    }
    if t.is_ephemeral {
        set(&mut unmapped, "target_is_ephemeral", true);
    }
    e.insert("unmapped".into(), unmapped);
    Ok(Value::Object(e))
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Api => "API",
        Origin::Cli => "CLI",
        Origin::Console => "CONSOLE",
        Origin::System => "SYSTEM",
    }
}

// ---------------------------------------------------------------------------
// Detection alerts

fn alert(time_ns: i64, body: &[u8]) -> Result<Value, OcsfError> {
    let a: Alert = serde_json::from_slice(body).map_err(|e| OcsfError::Shape {
        log_type: LogType::Alerts.name(),
        expected: "a detection alert",
        reason: e.to_string(),
    })?;
    let severity_id = match a.severity {
        AlertSeverity::Informational => 1,
        AlertSeverity::Low => 2,
        AlertSeverity::Medium => 3,
        AlertSeverity::High => 4,
        AlertSeverity::Critical => 5,
    };
    let mut meta = metadata(LogType::Alerts.name(), time_ns);
    set(&mut meta, "uid", a.id.as_str());
    set(&mut meta, "tenant_uid", a.tailnet.as_str());
    let mut e = header(
        &DETECTION_FINDING,
        Activity::new(1, "Create"),
        severity_id,
        ms(time_ns),
        meta,
    );
    let (first, last) = (ms(a.window.start), ms(a.window.end));
    let mut info = json!({
        "uid": a.id,
        "title": a.title,
        "analytic": { "uid": a.rule_id, "name": a.title, "type_id": 1, "type": "Rule" },
        "first_seen_time": first,
        "last_seen_time": last,
        "created_time": ms(time_ns),
    });
    if !a.evidence.summary.is_empty() {
        set(&mut info, "desc", a.evidence.summary.as_str());
    }
    let attacks = attacks(&a.tags);
    if !attacks.is_empty() {
        set(&mut info, "attacks", attacks);
    }
    e.insert("finding_info".into(), info);
    e.insert("start_time".into(), first.into());
    e.insert("end_time".into(), last.into());
    e.insert("status_id".into(), 1.into());
    e.insert("status".into(), "New".into());
    let message = if a.evidence.summary.is_empty() {
        a.title.clone()
    } else {
        format!("{}: {}", a.title, a.evidence.summary)
    };
    e.insert("message".into(), message.into());
    if let Some(node) = a.node.as_deref().filter(|n| !n.is_empty()) {
        e.insert(
            "device".into(),
            json!({ "name": node, "type_id": 0, "type": "Unknown" }),
        );
    }
    e.insert("evidences".into(), json!([alert_evidence(&a)]));
    e.insert(
        "unmapped".into(),
        json!({
            "group": a.group,
            "tags": a.tags,
            "suppressed_before": a.suppressed_before,
        }),
    );
    Ok(Value::Object(e))
}

/// The alert's evidence: its data, and the endpoints, protocol and actor
/// its fields name.
fn alert_evidence(a: &Alert) -> Value {
    let ev = &a.evidence;
    let f = &ev.fields;
    let mut out = json!({
        "data": {
            "summary": ev.summary,
            "value": ev.value,
            "positions": ev.positions,
            "fields": f,
        }
    });
    let side = |ip: &str, port: Option<&str>, node: &str| {
        let mut e = json!({});
        if let Some(ip) = f.get(ip).and_then(|s| s.parse::<IpAddr>().ok()) {
            set(&mut e, "ip", ip.to_string());
        }
        if let Some(p) = port
            .and_then(|p| f.get(p))
            .and_then(|s| s.parse::<u16>().ok())
        {
            set(&mut e, "port", p);
        }
        if let Some(n) = f.get(node).filter(|s| !s.is_empty()) {
            set(&mut e, "name", n.as_str());
        }
        // An endpoint needs an ip or a name.
        let known = e.get("ip").is_some() || e.get("name").is_some();
        known.then_some(e)
    };
    if let Some(s) = side("src_ip", None, "src_node") {
        set(&mut out, "src_endpoint", s);
    }
    if let Some(d) = side("dst_ip", Some("dst_port"), "dst_node") {
        set(&mut out, "dst_endpoint", d);
    }
    if let Some(p) = f.get("Protocol").and_then(|p| protocol_number(p)) {
        set(
            &mut out,
            "connection_info",
            connection_info(p, None, (0, "Unknown")),
        );
    }
    if let Some(login) = f.get("actor.loginName").filter(|s| !s.is_empty()) {
        set(&mut out, "actor", json!({ "user": { "name": login } }));
    }
    out
}

/// MITRE ATT&CK tactic IDs of Sigma's `attack.<tactic>` tags.
const TACTICS: [(&str, &str, &str); 14] = [
    ("reconnaissance", "TA0043", "Reconnaissance"),
    ("resource_development", "TA0042", "Resource Development"),
    ("initial_access", "TA0001", "Initial Access"),
    ("execution", "TA0002", "Execution"),
    ("persistence", "TA0003", "Persistence"),
    ("privilege_escalation", "TA0004", "Privilege Escalation"),
    ("defense_evasion", "TA0005", "Defense Evasion"),
    ("credential_access", "TA0006", "Credential Access"),
    ("discovery", "TA0007", "Discovery"),
    ("lateral_movement", "TA0008", "Lateral Movement"),
    ("collection", "TA0009", "Collection"),
    ("command_and_control", "TA0011", "Command and Control"),
    ("exfiltration", "TA0010", "Exfiltration"),
    ("impact", "TA0040", "Impact"),
];

/// `finding_info.attacks` from Sigma tags (`attack.t1021`,
/// `attack.t1562.008`, `attack.lateral-movement`): one entry per technique,
/// with the tactic when the rule names exactly one; one per tactic when it
/// names no technique.
fn attacks(tags: &[String]) -> Vec<Value> {
    let mut tactics = Vec::new();
    let mut techniques = Vec::new();
    for tag in tags {
        let Some(rest) = tag
            .to_ascii_lowercase()
            .strip_prefix("attack.")
            .map(str::to_owned)
        else {
            continue;
        };
        let key = rest.replace('-', "_");
        if let Some((_, uid, name)) = TACTICS.iter().find(|(k, _, _)| *k == key) {
            tactics.push(json!({ "uid": uid, "name": name }));
            continue;
        }
        let (t, sub) = match rest.split_once('.') {
            Some((t, sub)) => (t, Some(sub)),
            None => (rest.as_str(), None),
        };
        let is_id = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
        if t.len() == 5 && t.starts_with('t') && is_id(&t[1..], 4) {
            let uid = t.to_ascii_uppercase();
            let mut attack = json!({ "technique": { "uid": uid } });
            if let Some(sub) = sub.filter(|s| is_id(s, 3)) {
                set(
                    &mut attack,
                    "sub_technique",
                    json!({ "uid": format!("{uid}.{sub}") }),
                );
            }
            techniques.push(attack);
        }
    }
    if techniques.is_empty() {
        return tactics
            .into_iter()
            .map(|t| json!({ "tactic": t }))
            .collect();
    }
    if let [tactic] = tactics.as_slice() {
        for t in &mut techniques {
            set(t, "tactic", tactic.clone());
        }
    }
    techniques
}

// ---------------------------------------------------------------------------
// Reconciliation findings

fn finding(time_ns: i64, body: &[u8]) -> Result<Value, OcsfError> {
    let f: Finding = serde_json::from_slice(body).map_err(|e| OcsfError::Shape {
        log_type: LogType::Findings.name(),
        expected: "a reconciliation finding",
        reason: e.to_string(),
    })?;
    let severity_id = match f.severity {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    };
    let class = f.class.name();
    let mut meta = metadata(LogType::Findings.name(), time_ns);
    set(&mut meta, "uid", f.id.as_str());
    set(&mut meta, "tenant_uid", f.tailnet.as_str());
    let mut e = header(
        &DETECTION_FINDING,
        Activity::new(1, "Create"),
        severity_id,
        ms(time_ns),
        meta,
    );
    let (first, last) = (ms(f.window.start), ms(f.window.end));
    let mut info = json!({
        "uid": f.id,
        "title": finding_title(f.class),
        "types": ["reconciliation"],
        "analytic": { "uid": class, "name": class, "type_id": 1, "type": "Rule" },
        "first_seen_time": first,
        "last_seen_time": last,
        "created_time": ms(time_ns),
    });
    if !f.detail.is_empty() {
        set(&mut info, "desc", f.detail.as_str());
    }
    e.insert("finding_info".into(), info);
    e.insert("start_time".into(), first.into());
    e.insert("end_time".into(), last.into());
    e.insert("status_id".into(), 1.into());
    e.insert("status".into(), "New".into());
    let message = if f.detail.is_empty() {
        finding_title(f.class).to_owned()
    } else {
        f.detail.clone()
    };
    e.insert("message".into(), message.into());
    if !f.node.is_empty() {
        e.insert(
            "device".into(),
            json!({ "uid": f.node, "type_id": 0, "type": "Unknown" }),
        );
    }
    let mut resources = Vec::new();
    if !f.node.is_empty() {
        resources.push(json!({ "uid": f.node, "type": "node", "labels": ["at_fault"] }));
    }
    if let Some(peer) = f.peer.as_deref().filter(|p| !p.is_empty()) {
        resources.push(if f.class == FindingClass::NodeUnknown {
            json!({ "name": peer, "type": "address", "labels": ["peer"] })
        } else {
            json!({ "uid": peer, "type": "node", "labels": ["peer"] })
        });
    }
    if !resources.is_empty() {
        e.insert("resources".into(), resources.into());
    }
    let ev = &f.evidence;
    if ev.src.is_some() || ev.dst.is_some() {
        let mut x = json!({});
        if let Some(s) = ev.src {
            set(&mut x, "src_endpoint", endpoint(s));
        }
        if let Some(d) = ev.dst {
            set(&mut x, "dst_endpoint", endpoint(d));
        }
        let ip = ev.dst.or(ev.src).map(|a| a.ip());
        set(
            &mut x,
            "connection_info",
            connection_info(ev.proto.unwrap_or(0), ip, (0, "Unknown")),
        );
        e.insert("evidences".into(), json!([x]));
    }
    // The evidence without its empty members (a Finding always encodes).
    let evidence = match serde_json::to_value(ev) {
        Ok(Value::Object(m)) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        _ => Value::Null,
    };
    let mut unmapped = json!({ "class": class, "evidence": evidence });
    if let Some(peer) = &f.peer {
        set(&mut unmapped, "peer", peer.as_str());
    }
    e.insert("unmapped".into(), unmapped);
    Ok(Value::Object(e))
}

fn finding_title(c: FindingClass) -> &'static str {
    match c {
        FindingClass::CountMismatch => "Sent and received counts of a connection disagree",
        FindingClass::MissingOptedOut => {
            "Missing half of a connection: the node opted out of logging"
        }
        FindingClass::MissingFlowLoggingOff => {
            "Missing half of a connection: flow logging is off for the node"
        }
        FindingClass::MissingAgentSilent => {
            "Missing half of a connection: the node's agent sent no records"
        }
        FindingClass::MissingLostBatch => "Missing half of a connection: the node lost a batch",
        FindingClass::MissingSuspicious => {
            "Missing half of a connection: the node reported other traffic but not this"
        }
        FindingClass::NodeUnknown => "Connection with an address of no registered node",
        FindingClass::SequenceGap => "Records of a node are missing (sequence gap)",
        FindingClass::Integrity => "A batch failed its integrity check at ingest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::alert::AlertEvidence;
    use tally_proto::audit::{Actor, Target};
    use tally_proto::finding::{Counts, Evidence, RecordRef, Window};
    use tally_proto::flow::{ConnectionCounts, FlowRecord};

    const T0: i64 = 1_714_557_600_000_000_000; // 2024-05-01T10:00:00Z
    const STORED: i64 = T0 + 7_250_000_000; // 7.25 s later

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn conn(proto: u8, src: &str, dst: &str, tx: (u64, u64), rx: (u64, u64)) -> ConnectionCounts {
        ConnectionCounts {
            proto,
            src: sa(src),
            dst: sa(dst),
            tx_pkts: tx.0,
            tx_bytes: tx.1,
            rx_pkts: rx.0,
            rx_bytes: rx.1,
        }
    }

    /// The fields every event must have, and `type_uid`'s arithmetic.
    fn assert_base(e: &Value, class_uid: u64, category_uid: u64, activity_id: u64) {
        assert_eq!(e["class_uid"], class_uid, "{e}");
        assert_eq!(e["category_uid"], category_uid, "{e}");
        assert_eq!(e["activity_id"], activity_id, "{e}");
        assert_eq!(e["type_uid"], class_uid * 100 + activity_id, "{e}");
        assert!(e["severity_id"].is_u64(), "{e}");
        assert!(e["time"].is_i64(), "{e}");
        for k in [
            "class_name",
            "category_name",
            "activity_name",
            "type_name",
            "severity",
        ] {
            assert!(e[k].is_string(), "{k} in {e}");
        }
        let m = &e["metadata"];
        assert_eq!(m["version"], OCSF_VERSION);
        assert_eq!(m["product"]["name"], "Tally");
        assert_eq!(m["product"]["vendor_name"], "Tally");
        assert_eq!(m["logged_time"], ms(STORED));
    }

    /// A record as Tally's agent writes it and the server stores it.
    fn stored_record(r: &FlowRecord) -> Value {
        let mut v = serde_json::to_value(r).expect("record");
        set(
            &mut v,
            "logtail",
            json!({"proc_id": 7, "proc_seq": 42, "server_time": "2024-05-01T10:00:07.25Z", "id": "ab12"}),
        );
        v
    }

    fn encode_value(t: LogType, v: &Value) -> Result<Vec<Value>, OcsfError> {
        encode(t, STORED, &serde_json::to_vec(v).expect("json"))
    }

    #[test]
    fn a_flow_record_with_three_connections_gives_three_events() {
        let rec = FlowRecord {
            node_id: "nABC123CNTRL".into(),
            start: T0 as u64,
            end: T0 as u64 + 5_000_000_000,
            virtual_traffic: vec![conn(
                6,
                "100.64.0.1:51000",
                "100.64.0.2:22",
                (10, 1200),
                (8, 4096),
            )],
            subnet_traffic: vec![conn(
                17,
                "100.64.0.1:5353",
                "192.168.1.10:53",
                (1, 70),
                (1, 140),
            )],
            exit_traffic: vec![conn(
                6,
                "[fd7a:115c:a1e0::1]:40000",
                "[2001:db8::5]:443",
                (3, 300),
                (4, 9000),
            )],
            dropped_packets: 2,
            capture_start: Some(T0 as u64 - 60_000_000_000),
            ..FlowRecord::default()
        };
        let events = encode_value(LogType::Network, &stored_record(&rec)).expect("encodes");
        assert_eq!(events.len(), 3);
        for e in &events {
            assert_base(e, 4001, 4, 6);
            assert_eq!(e["type_uid"], 400106);
            assert_eq!(e["severity_id"], 1);
            assert_eq!(e["start_time"], 1_714_557_600_000i64);
            assert_eq!(e["end_time"], 1_714_557_605_000i64);
            assert_eq!(e["time"], e["end_time"]);
            assert_eq!(e["device"]["uid"], "nABC123CNTRL");
            assert_eq!(e["device"]["type_id"], 0);
            assert_eq!(e["unmapped"]["record"]["dropped_packets"], 2);
            assert_eq!(
                e["unmapped"]["record"]["capture_start_time"],
                1_714_557_540_000i64
            );
        }

        let v = &events[0];
        assert_eq!(
            v["src_endpoint"],
            json!({"ip": "100.64.0.1", "port": 51000})
        );
        assert_eq!(v["dst_endpoint"], json!({"ip": "100.64.0.2", "port": 22}));
        assert_eq!(v["connection_info"]["protocol_num"], 6);
        assert_eq!(v["connection_info"]["protocol_name"], "tcp");
        assert_eq!(v["connection_info"]["protocol_ver_id"], 4);
        assert_eq!(v["connection_info"]["direction_id"], 3);
        assert_eq!(v["connection_info"]["boundary_id"], 2);
        assert_eq!(
            v["traffic"],
            json!({"bytes_out": 1200, "packets_out": 10, "bytes_in": 4096, "packets_in": 8, "bytes": 5296, "packets": 18})
        );
        assert_eq!(v["unmapped"]["traffic_kind"], "virtual");
        assert_eq!(v["metadata"]["uid"], "ab12:7:42:0");
        assert_eq!(v["metadata"]["log_name"], "network");

        let s = &events[1];
        assert_eq!(s["connection_info"]["protocol_name"], "udp");
        assert_eq!(s["connection_info"]["direction_id"], 0);
        assert_eq!(s["dst_endpoint"]["port"], 53);
        assert_eq!(s["unmapped"]["traffic_kind"], "subnet");
        assert_eq!(s["metadata"]["uid"], "ab12:7:42:1");

        let x = &events[2];
        assert_eq!(
            x["src_endpoint"],
            json!({"ip": "fd7a:115c:a1e0::1", "port": 40000})
        );
        assert_eq!(x["dst_endpoint"], json!({"ip": "2001:db8::5", "port": 443}));
        assert_eq!(x["connection_info"]["protocol_ver_id"], 6);
        assert_eq!(x["connection_info"]["direction_id"], 2);
        assert_eq!(x["connection_info"]["boundary_id"], 3);
        assert_eq!(x["traffic"]["bytes_in"], 9000);
        assert_eq!(x["unmapped"]["traffic_kind"], "exit");
    }

    /// Tailscale's own record: physical traffic, node descriptions, a
    /// scrubbed exit connection, no Tally counters.
    #[test]
    fn a_tailscale_record_with_nodes_and_physical_traffic() {
        let body = json!({
            "nodeId": "n1CNTRL",
            "start": "2024-05-01T10:00:00.123456789Z",
            "end": "2024-05-01T10:00:05Z",
            "srcNode": {"nodeId": "n1CNTRL", "name": "laptop.tail1a2b.ts.net", "addresses": ["100.64.0.1", "fd7a:115c:a1e0::1"]},
            "dstNodes": [{"nodeId": "n2CNTRL", "name": "server.tail1a2b.ts.net", "addresses": ["100.64.0.2"]}],
            "virtualTraffic": [{"proto": 6, "src": "100.64.0.1:51000", "dst": "100.64.0.2:22", "txPkts": 1, "txBytes": 60}],
            "exitTraffic": [{"src": "100.64.0.1:0", "txPkts": 5, "txBytes": 500}],
            "physicalTraffic": [{"src": "100.64.0.2:0", "dst": "203.0.113.7:41641", "rxPkts": 2, "rxBytes": 200}]
        });
        let events = encode_value(LogType::Network, &body).expect("encodes");
        assert_eq!(events.len(), 3);
        let v = &events[0];
        assert_eq!(v["start_time"], 1_714_557_600_123i64);
        assert_eq!(v["device"]["hostname"], "laptop.tail1a2b.ts.net");
        assert_eq!(v["src_endpoint"]["uid"], "n1CNTRL");
        assert_eq!(v["dst_endpoint"]["hostname"], "server.tail1a2b.ts.net");
        assert_eq!(v["dst_endpoint"]["uid"], "n2CNTRL");
        assert!(v["metadata"].get("uid").is_none(), "no logtail identity");
        assert!(v["unmapped"].get("record").is_none());

        let x = &events[1];
        assert_eq!(
            x["src_endpoint"],
            json!({"ip": "100.64.0.1", "uid": "n1CNTRL", "hostname": "laptop.tail1a2b.ts.net"})
        );
        assert_eq!(x["dst_endpoint"], json!({"name": "anonymized"}));
        assert!(x["connection_info"].get("protocol_num").is_none());
        assert_eq!(x["unmapped"]["anonymized"], true);

        let p = &events[2];
        assert_eq!(p["unmapped"]["traffic_kind"], "physical");
        assert_eq!(p["connection_info"]["boundary_id"], 99);
        assert_eq!(p["connection_info"]["boundary"], "physical");
        assert_eq!(
            p["dst_endpoint"],
            json!({"ip": "203.0.113.7", "port": 41641})
        );
        assert_eq!(p["traffic"]["bytes_in"], 200);
        assert_eq!(p["traffic"]["bytes_out"], 0);
    }

    #[test]
    fn counters_beyond_a_signed_long_saturate() {
        let rec = FlowRecord {
            node_id: "n1".into(),
            start: T0 as u64,
            end: T0 as u64,
            virtual_traffic: vec![conn(
                6,
                "100.64.0.1:1",
                "100.64.0.2:2",
                (u64::MAX, u64::MAX),
                (1, 1),
            )],
            ..FlowRecord::default()
        };
        let e = &encode_value(LogType::Network, &stored_record(&rec)).expect("encodes")[0];
        assert_eq!(e["traffic"]["bytes_out"], i64::MAX);
        assert_eq!(e["traffic"]["bytes"], i64::MAX);
    }

    #[test]
    fn a_record_without_connections_gives_no_event() {
        let rec = FlowRecord {
            node_id: "n1".into(),
            start: T0 as u64,
            end: T0 as u64,
            evictions: 3,
            ..FlowRecord::default()
        };
        assert_eq!(
            encode_value(LogType::Network, &stored_record(&rec)),
            Ok(vec![])
        );
    }

    fn audit_event() -> AuditEvent {
        AuditEvent {
            event_group_id: "g1".into(),
            origin: Origin::Cli,
            actor: Actor {
                id: "u1".into(),
                actor_type: "USER".into(),
                login_name: "alice@example.com".into(),
                display_name: "Alice".into(),
                tags: vec![],
            },
            event_type: "CONFIG".into(),
            target: Target {
                id: "T1".into(),
                name: "example.org".into(),
                target_type: "TAILNET".into(),
                property: "logsRetentionDays".into(),
                is_ephemeral: false,
            },
            action: "UPDATE".into(),
            old: json!(30),
            new: json!(31),
            action_details: String::new(),
            error: None,
            event_time: "2026-12-05T19:56:18.872415509Z".into(),
            remote_addr: Some("2001:db8::7".into()),
        }
    }

    #[test]
    fn an_audit_event_is_api_activity() {
        let ev = audit_event();
        let out = encode(
            LogType::Configuration,
            STORED,
            &serde_json::to_vec(&ev).expect("json"),
        )
        .expect("encodes");
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_base(e, 6003, 6, 3);
        assert_eq!(e["type_uid"], 600303);
        assert_eq!(e["activity_name"], "Update");
        assert_eq!(e["time"], 1_796_500_578_872i64);
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["actor"]["user"]["uid"], "u1");
        assert_eq!(e["actor"]["user"]["name"], "alice@example.com");
        assert_eq!(e["actor"]["user"]["email_addr"], "alice@example.com");
        assert_eq!(e["actor"]["user"]["full_name"], "Alice");
        assert_eq!(e["actor"]["user"]["type_id"], 1);
        assert_eq!(e["actor"]["app_name"], "CLI");
        assert_eq!(
            e["api"],
            json!({"operation": "UPDATE", "service": {"name": "tally"}})
        );
        assert_eq!(e["src_endpoint"], json!({"ip": "2001:db8::7"}));
        assert_eq!(
            e["resources"],
            json!([{"uid": "T1", "name": "example.org", "type": "TAILNET", "data": {"property": "logsRetentionDays"}}])
        );
        assert_eq!(e["unmapped"]["old"], 30);
        assert_eq!(e["unmapped"]["new"], 31);
        assert_eq!(e["metadata"]["correlation_uid"], "g1");
        assert_eq!(e["message"], "UPDATE TAILNET example.org logsRetentionDays");
    }

    #[test]
    fn a_refused_change_by_the_system_fails_and_other_actions_are_other() {
        let mut ev = audit_event();
        ev.actor = Actor::system();
        ev.origin = Origin::System;
        ev.remote_addr = None;
        ev.action = "REVOKE".into();
        ev.error = Some("permission denied".into());
        ev.action_details = "DELETE /api/v2/keys/{keyId}".into();
        ev.old = Value::Null;
        ev.new = Value::Null;
        let e = &encode(
            LogType::Configuration,
            STORED,
            &serde_json::to_vec(&ev).expect("json"),
        )
        .expect("encodes")[0];
        assert_base(e, 6003, 6, 99);
        assert_eq!(e["type_uid"], 600399);
        assert_eq!(e["activity_name"], "REVOKE");
        assert_eq!(e["type_name"], "API Activity: Other");
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["status_detail"], "permission denied");
        assert_eq!(e["actor"]["user"]["type_id"], 3);
        assert!(e["actor"]["user"].get("email_addr").is_none());
        assert_eq!(e["src_endpoint"], json!({"name": "SYSTEM"}));
        assert_eq!(e["message"], "DELETE /api/v2/keys/{keyId}");
        assert!(e["unmapped"].get("old").is_none());
        for (action, id) in [("CREATE", 1), ("READ", 2), ("DELETE", 4)] {
            ev.action = action.into();
            let e = &encode(
                LogType::Configuration,
                STORED,
                &serde_json::to_vec(&ev).expect("json"),
            )
            .expect("encodes")[0];
            assert_eq!(e["activity_id"], id);
            assert_eq!(e["type_uid"], 600300 + id);
        }
    }

    fn sample_alert() -> Alert {
        let fields: std::collections::BTreeMap<String, String> = [
            ("src_node", "laptop"),
            ("src_ip", "100.64.0.1"),
            ("dst_ip", "fd7a:115c:a1e0::2"),
            ("dst_port", "22"),
            ("Protocol", "tcp"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Alert {
            id: "0123abcd".into(),
            tailnet: "example.org".into(),
            rule_id: "tally-fan-out".into(),
            title: "Fan-out from one node to many".into(),
            severity: AlertSeverity::High,
            group: [("src_node".to_owned(), "laptop".to_owned())]
                .into_iter()
                .collect(),
            node: Some("laptop".into()),
            window: tally_proto::finding::Window {
                start: T0,
                end: T0 + 3_600_000_000_000,
            },
            evidence: AlertEvidence {
                positions: vec![10, 11, 12],
                value: 20.0,
                summary: "20 distinct nodes in 1h".into(),
                fields,
            },
            suppressed_before: 0,
            tags: vec!["attack.lateral-movement".into(), "attack.t1021".into()],
        }
    }

    #[test]
    fn an_alert_is_a_detection_finding() {
        let a = sample_alert();
        let e = &encode(
            LogType::Alerts,
            STORED,
            &serde_json::to_vec(&a).expect("json"),
        )
        .expect("encodes")[0];
        assert_base(e, 2004, 2, 1);
        assert_eq!(e["type_uid"], 200401);
        assert_eq!(e["severity_id"], 4);
        assert_eq!(e["severity"], "High");
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["time"], ms(STORED));
        let i = &e["finding_info"];
        assert_eq!(i["uid"], "0123abcd");
        assert_eq!(i["title"], "Fan-out from one node to many");
        assert_eq!(
            i["analytic"],
            json!({"uid": "tally-fan-out", "name": "Fan-out from one node to many", "type_id": 1, "type": "Rule"})
        );
        assert_eq!(i["first_seen_time"], 1_714_557_600_000i64);
        assert_eq!(i["last_seen_time"], 1_714_561_200_000i64);
        assert_eq!(
            i["attacks"],
            json!([{"technique": {"uid": "T1021"}, "tactic": {"uid": "TA0008", "name": "Lateral Movement"}}])
        );
        let ev = &e["evidences"][0];
        assert_eq!(
            ev["src_endpoint"],
            json!({"ip": "100.64.0.1", "name": "laptop"})
        );
        assert_eq!(
            ev["dst_endpoint"],
            json!({"ip": "fd7a:115c:a1e0::2", "port": 22})
        );
        assert_eq!(ev["connection_info"]["protocol_num"], 6);
        assert_eq!(ev["data"]["positions"], json!([10, 11, 12]));
        assert_eq!(e["device"]["name"], "laptop");
        assert_eq!(e["metadata"]["uid"], "0123abcd");
        assert_eq!(e["metadata"]["tenant_uid"], "example.org");

        for (s, id) in [
            (AlertSeverity::Informational, 1),
            (AlertSeverity::Low, 2),
            (AlertSeverity::Medium, 3),
            (AlertSeverity::Critical, 5),
        ] {
            let a = Alert {
                severity: s,
                ..sample_alert()
            };
            let e = &encode(
                LogType::Alerts,
                STORED,
                &serde_json::to_vec(&a).expect("json"),
            )
            .expect("encodes")[0];
            assert_eq!(e["severity_id"], id);
        }
    }

    #[test]
    fn sigma_tags_become_attacks() {
        let tags = |t: &[&str]| attacks(&t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            tags(&["attack.defense-evasion", "attack.t1562.008", "cve.2024-1"]),
            vec![json!({
                "technique": {"uid": "T1562"},
                "sub_technique": {"uid": "T1562.008"},
                "tactic": {"uid": "TA0005", "name": "Defense Evasion"},
            })]
        );
        assert_eq!(
            tags(&["attack.exfiltration", "attack.command_and_control"]),
            vec![
                json!({"tactic": {"uid": "TA0010", "name": "Exfiltration"}}),
                json!({"tactic": {"uid": "TA0011", "name": "Command and Control"}}),
            ]
        );
        assert!(tags(&["attack.t12", "attack.", "attack.tabcd"]).is_empty());
    }

    #[test]
    fn a_reconciliation_finding_is_a_detection_finding() {
        let f = Finding {
            id: "f00d".into(),
            class: FindingClass::CountMismatch,
            severity: Severity::High,
            tailnet: "example.org".into(),
            node: "nSENDER".into(),
            peer: Some("nRECEIVER".into()),
            window: Window {
                start: T0,
                end: T0 + 60_000_000_000,
            },
            evidence: Evidence {
                proto: Some(17),
                src: Some(sa("[fd7a:115c:a1e0::1]:5000")),
                dst: Some(sa("[fd7a:115c:a1e0::2]:6000")),
                sent: Some(Counts {
                    pkts: 100,
                    bytes: 10_000,
                }),
                received: Some(Counts {
                    pkts: 60,
                    bytes: 6_000,
                }),
                unexplained: Some(Counts {
                    pkts: 40,
                    bytes: 4_000,
                }),
                sender_record: Some(RecordRef {
                    instance: "ab12".into(),
                    proc_id: 7,
                    proc_seq: 42,
                }),
                ..Evidence::default()
            },
            detail: "nSENDER sent 10000 bytes nRECEIVER did not receive".into(),
        };
        let e = &encode(
            LogType::Findings,
            STORED,
            &serde_json::to_vec(&f).expect("json"),
        )
        .expect("encodes")[0];
        assert_base(e, 2004, 2, 1);
        assert_eq!(e["severity_id"], 4);
        let i = &e["finding_info"];
        assert_eq!(i["uid"], "f00d");
        assert_eq!(i["types"], json!(["reconciliation"]));
        assert_eq!(i["analytic"]["name"], "count_mismatch");
        assert_eq!(i["analytic"]["type_id"], 1);
        assert_eq!(i["first_seen_time"], 1_714_557_600_000i64);
        assert_eq!(i["last_seen_time"], 1_714_557_660_000i64);
        assert_eq!(i["desc"], f.detail);
        assert_eq!(e["device"]["uid"], "nSENDER");
        assert_eq!(e["resources"][1]["uid"], "nRECEIVER");
        let x = &e["evidences"][0];
        assert_eq!(
            x["src_endpoint"],
            json!({"ip": "fd7a:115c:a1e0::1", "port": 5000})
        );
        assert_eq!(x["connection_info"]["protocol_name"], "udp");
        let u = &e["unmapped"]["evidence"];
        assert_eq!(u["sent"], json!({"pkts": 100, "bytes": 10000}));
        assert_eq!(u["unexplained"], json!({"pkts": 40, "bytes": 4000}));
        assert_eq!(u["sender_record"]["proc_seq"], 42);
        assert!(u.get("verdict").is_none(), "empty members left out");
        assert_eq!(e["unmapped"]["class"], "count_mismatch");

        let info = Finding {
            severity: Severity::Info,
            class: FindingClass::NodeUnknown,
            peer: Some("203.0.113.9".into()),
            evidence: Evidence::default(),
            ..f
        };
        let e = &encode(
            LogType::Findings,
            STORED,
            &serde_json::to_vec(&info).expect("json"),
        )
        .expect("encodes")[0];
        assert_eq!(e["severity_id"], 1);
        assert_eq!(
            e["resources"][1],
            json!({"name": "203.0.113.9", "type": "address", "labels": ["peer"]})
        );
        assert!(e.get("evidences").is_none());
    }

    #[test]
    fn malformed_bodies_are_errors_naming_what_is_wrong() {
        let err = |t, body: &str| {
            encode(t, STORED, body.as_bytes())
                .expect_err(body)
                .to_string()
        };

        let e = err(LogType::Network, "not json");
        assert!(
            e.starts_with("a stored network entry is not a network flow record: expected"),
            "{e}"
        );
        let e = err(
            LogType::Network,
            r#"{"start":"2024-05-01T10:00:00Z","end":"2024-05-01T10:00:05Z"}"#,
        );
        assert!(e.contains("missing field `nodeId`"), "{e}");
        let e = err(
            LogType::Network,
            r#"{"nodeId":"n1","start":"yesterday","end":"2024-05-01T10:00:05Z"}"#,
        );
        assert_eq!(
            e,
            r#"a stored network entry has start = "yesterday", which is not an RFC 3339 time"#
        );
        let e = err(
            LogType::Network,
            r#"{"nodeId":"n1","start":"2024-05-01T10:00:00Z","end":"2024-05-01T10:00:05Z",
                "virtualTraffic":[{"src":"100.64.0.1:1","dst":"100.64.0.2:2"},{"src":"100.64.0.1:1","dst":"fd7a::2:22"}]}"#,
        );
        assert_eq!(
            e,
            r#"a stored network entry has virtualTraffic[1].dst = "fd7a::2:22", which is not an ip:port address (IPv6 as [ip]:port)"#
        );
        let e = err(
            LogType::Network,
            r#"{"nodeId":"n1","start":"2024-05-01T10:00:00Z","end":"2024-05-01T10:00:05Z","exitTraffic":[{"txBytes":-1}]}"#,
        );
        assert!(e.contains("invalid value: integer `-1`"), "{e}");

        let e = err(LogType::Configuration, r#"{"eventGroupID":"g"}"#);
        assert!(e.starts_with("a stored configuration entry is not a configuration audit event: missing field `origin`"), "{e}");
        let mut ev = serde_json::to_value(audit_event()).expect("json");
        set(&mut ev, "eventTime", "5 o'clock");
        let e = encode_value(LogType::Configuration, &ev)
            .expect_err("bad time")
            .to_string();
        assert_eq!(
            e,
            r#"a stored configuration entry has eventTime = "5 o'clock", which is not an RFC 3339 time"#
        );

        let mut a = serde_json::to_value(sample_alert()).expect("json");
        set(&mut a, "severity", "urgent");
        let e = encode_value(LogType::Alerts, &a)
            .expect_err("bad severity")
            .to_string();
        assert!(
            e.starts_with(
                "a stored alerts entry is not a detection alert: unknown variant `urgent`"
            ),
            "{e}"
        );

        let e = err(LogType::Findings, r#"{"id":"f","class":"gremlins"}"#);
        assert!(e.starts_with("a stored findings entry is not a reconciliation finding: unknown variant `gremlins`"), "{e}");

        let long = format!(
            r#"{{"nodeId":"n","start":"{}","end":"x"}}"#,
            "9".repeat(200)
        );
        let e = err(LogType::Network, &long);
        assert!(e.len() < 200, "value quoted in part: {e}");
    }

    #[test]
    fn garbage_never_panics() {
        let bodies: [&[u8]; 9] = [
            b"",
            b"null",
            b"[]",
            b"{}",
            b"\xff\xfe",
            b"[{\"nodeId\":1}]",
            b"{\"nodeId\":\"n\",\"start\":\"2024-05-01T10:00:00Z\",\"end\":\"2024-05-01T10:00:00Z\",\"virtualTraffic\":[{\"proto\":300}]}",
            b"{\"nodeId\":\"n\",\"start\":\"2024-05-01T10:00:00Z\",\"end\":\"2024-05-01T10:00:00Z\",\"virtualTraffic\":{}}",
            b"{\"id\":\"a\",\"window\":{\"start\":1,\"end\":\"x\"}}",
        ];
        for t in LogType::ALL {
            for b in bodies {
                if t == LogType::Logs {
                    // Node logs have no shape to fail: a base event each.
                    assert_eq!(encode(t, STORED, b).map(|e| e.len()), Ok(1));
                } else {
                    assert!(encode(t, STORED, b).is_err(), "{t:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn other_entries_are_base_events() {
        let body = br#"{"logtail":{"client_time":"2024-05-01T10:00:01.5Z","id":"ab12"},"text":"wgengine: ok\n"}"#;
        let e = encode_generic("node", STORED, body);
        assert_base(&e, 0, 0, 99);
        assert_eq!(e["type_uid"], 99);
        assert_eq!(e["time"], 1_714_557_601_500i64);
        assert_eq!(e["message"], "wgengine: ok\n");
        assert_eq!(e["unmapped"]["logtail"]["id"], "ab12");
        assert_eq!(e["metadata"]["log_name"], "node");

        let e = encode_generic("node", STORED, b"\xffnot json");
        assert_eq!(e["time"], ms(STORED));
        assert_eq!(e["raw_data"], "\u{fffd}not json");
        assert!(e.get("unmapped").is_none());
    }

    #[test]
    fn protocol_names_and_numbers() {
        assert_eq!(protocol_number("TCP"), Some(6));
        assert_eq!(protocol_number("icmpv6"), Some(58));
        assert_eq!(protocol_number("ipv6-icmp"), Some(58));
        assert_eq!(protocol_number("47"), Some(47));
        assert_eq!(protocol_number("carrier-pigeon"), None);
        assert_eq!(protocol_name(99), None);
    }
}
