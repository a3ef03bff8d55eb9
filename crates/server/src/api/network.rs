//! Network flow logs: `GET /api/v2/tailnet/{t}/logging/network` (Tailscale's
//! `{"logs":[...]}` shape, each record with `logged`; filters and paging)
//! and `GET .../logging/network/graph` (who talks to whom: edges between
//! nodes per time bucket, for the console and `tally flows top`).

use crate::AppState;
use crate::api::auth::Caller;
use crate::api::query::parse_time;
use crate::control::model::Device;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use tally_flowstore::{FlowFilter, FlowHit, FlowKind, IpNet, PageCursor, PageRequest};
use tally_proto::timefmt::format_nanos;

/// Default entries per page.
pub const DEFAULT_LIMIT: usize = 1000;
/// Longest wait for the indexer to reach the records stored before a query.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);
/// Default time range when none is given: the last hour.
const DEFAULT_RANGE: i64 = 3600 * 1_000_000_000;

/// Parsed query parameters.
struct NetworkQuery {
    filter: FlowFilter,
    limit: usize,
    cursor: Option<PageCursor>,
    bucket: i64,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

fn parse_net(name: &str, v: &str) -> Result<IpNet, ApiError> {
    if let Ok(n) = v.parse::<IpNet>() {
        return Ok(n);
    }
    v.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        bad(format!(
            "{name} must be an IP address or CIDR prefix, got {v:?}"
        ))
    })
}

fn parse_proto(v: &str) -> Result<u8, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmpv6" => Ok(58),
        n => n.parse::<u8>().map_err(|_| {
            bad(format!(
                "proto must be tcp, udp, icmp, icmpv6 or a protocol number, got {v:?}"
            ))
        }),
    }
}

/// The node named by `v` (ID or name) in the caller's tailnet; a name
/// that several nodes carry is refused, naming their IDs.
fn find_node<'a>(nodes: &'a [Device], v: &str) -> Result<&'a Device, ApiError> {
    if let Some(n) = nodes.iter().find(|n| n.id == v) {
        return Ok(n);
    }
    let named: Vec<&Device> = nodes.iter().filter(|n| n.name == v).collect();
    let shown: String = v.chars().take(64).collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => Err(ApiError::not_found(format!(
            "no device {shown:?} in this tailnet (tally nodes list)"
        ))),
        many => Err(ApiError::bad_request(format!(
            "{} devices are named {shown:?} ({}); give the node ID instead",
            many.len(),
            many.iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn parse(
    params: &[(String, String)],
    tailnet: &str,
    nodes: &[Device],
    graph: bool,
) -> Result<NetworkQuery, ApiError> {
    let now = tally_proto::timefmt::now_nanos();
    let mut start = None;
    let mut end = None;
    let mut q = NetworkQuery {
        filter: FlowFilter::new(tailnet, 0, 0),
        limit: DEFAULT_LIMIT,
        cursor: None,
        bucket: 300 * 1_000_000_000,
    };
    for (k, v) in params {
        match k.as_str() {
            "start" => start = Some(parse_time("start", v)?),
            "end" => end = Some(parse_time("end", v)?),
            "node" => q.filter.node = Some(find_node(nodes, v)?.id.clone()),
            "peer" => {
                let peer = find_node(nodes, v)?;
                let nets: Vec<IpNet> = peer
                    .addresses
                    .iter()
                    .filter_map(|a| parse_net("peer address", a).ok())
                    .map(|n| IpNet::from(n.addr()))
                    .collect();
                q.filter.peer = Some(nets);
            }
            "src" => q.filter.src = Some(parse_net("src", v)?),
            "dst" => q.filter.dst = Some(parse_net("dst", v)?),
            "port" => {
                q.filter.port = Some(
                    v.parse()
                        .map_err(|_| bad(format!("port must be 0 to 65535, got {v:?}")))?,
                )
            }
            "proto" => q.filter.proto = Some(parse_proto(v)?),
            "kind" => {
                q.filter.kind = Some(match v.as_str() {
                    "virtual" => FlowKind::Virtual,
                    "subnet" => FlowKind::Subnet,
                    "exit" => FlowKind::Exit,
                    "physical" => FlowKind::Physical,
                    _ => {
                        return Err(bad(format!(
                            "kind must be virtual, subnet, exit or physical, got {v:?}"
                        )));
                    }
                })
            }
            "limit" if !graph => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=tally_flowstore::MAX_PAGE_ENTRIES).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit must be 1 to {}",
                            tally_flowstore::MAX_PAGE_ENTRIES
                        ))
                    })?;
            }
            "cursor" if !graph => {
                q.cursor = Some(
                    PageCursor::parse(v)
                        .map_err(|_| bad("cursor must be the nextCursor of an earlier page"))?,
                )
            }
            "bucket" if graph => {
                let d = humantime::parse_duration(v)
                    .map_err(|e| bad(format!("bucket must be a duration like 5m or 1h: {e}")))?;
                q.bucket = i64::try_from(d.as_nanos())
                    .ok()
                    .filter(|b| *b >= 1_000_000_000)
                    .ok_or_else(|| bad("bucket must be at least 1s"))?;
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {:?}; use start, end, node, peer, src, dst, port, proto, kind, {}",
                    other.chars().take(40).collect::<String>(),
                    if graph { "bucket" } else { "limit, cursor" }
                )));
            }
        }
    }
    let end = end.unwrap_or(now);
    let start = start.unwrap_or(end - DEFAULT_RANGE);
    if start >= end {
        return Err(bad("start must be before end"));
    }
    if graph && (end - start) / q.bucket > 10_000 {
        return Err(bad(
            "too many buckets: use a longer bucket or a shorter range (at most 10,000 buckets)",
        ));
    }
    q.filter.start = start;
    q.filter.end = end;
    Ok(q)
}

fn entry_json(h: &FlowHit) -> Value {
    let e = &h.entry;
    let ep = |ip: IpAddr, port: u16| match ip {
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
        IpAddr::V4(_) => format!("{ip}:{port}"),
    };
    let mut m = Map::new();
    if e.proto != 0 {
        m.insert("proto".into(), json!(e.proto));
    }
    m.insert("src".into(), json!(ep(e.src, e.src_port)));
    m.insert("dst".into(), json!(ep(e.dst, e.dst_port)));
    for (k, v) in [
        ("txPkts", e.tx_pkts),
        ("txBytes", e.tx_bytes),
        ("rxPkts", e.rx_pkts),
        ("rxBytes", e.rx_bytes),
    ] {
        if v != 0 {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// Groups a page's hits (adjacent per record) back into Tailscale records.
fn records(hits: &[FlowHit]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut current: Option<(u64, Map<String, Value>)> = None;
    for h in hits {
        if current.as_ref().is_none_or(|(seq, _)| *seq != h.seq) {
            if let Some((_, m)) = current.take() {
                out.push(Value::Object(m));
            }
            let mut m = Map::new();
            m.insert("logged".into(), json!(format_nanos(h.entry.logged)));
            m.insert("nodeId".into(), json!(h.entry.node));
            m.insert("start".into(), json!(format_nanos(h.entry.start)));
            m.insert("end".into(), json!(format_nanos(h.entry.end)));
            current = Some((h.seq, m));
        }
        if let Some((_, m)) = current.as_mut() {
            let list = match h.entry.kind {
                FlowKind::Virtual => "virtualTraffic",
                FlowKind::Subnet => "subnetTraffic",
                FlowKind::Exit => "exitTraffic",
                FlowKind::Physical => "physicalTraffic",
            };
            if let Value::Array(a) = m.entry(list).or_insert_with(|| Value::Array(Vec::new())) {
                a.push(entry_json(h));
            }
        }
    }
    if let Some((_, m)) = current {
        out.push(Value::Object(m));
    }
    out
}

/// `GET /api/v2/tailnet/{t}/logging/network`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let nodes = state.control.nodes(caller.tailnet()).await?;
    let q = parse(&params, caller.tailnet(), &nodes, false)?;
    let complete =
        crate::consumers::catch_up(&state, crate::consumers::flow_index::NAME, CATCH_UP).await;
    let flows = state.flows.clone();
    let page = tokio::task::spawn_blocking(move || {
        flows.query(
            &q.filter,
            &PageRequest {
                limit: q.limit,
                cursor: q.cursor,
            },
        )
    })
    .await
    .map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("flow query failed: {e}"),
        )
    })?
    .map_err(|e| ApiError::bad_request(format!("flow query failed: {e}")))?;
    let mut body = json!({
        "logs": records(&page.hits),
        "nextCursor": page.next.as_ref().map(PageCursor::as_str),
    });
    if !page.errors.is_empty() {
        body["errors"] = json!(page.errors);
    }
    if !complete {
        body["behind"] = json!("the newest records are still being indexed; ask again shortly");
    }
    Ok(Json(body).into_response())
}

/// `GET /api/v2/tailnet/{t}/logging/network/graph`: per time bucket, the
/// traffic of each node with each remote end, remote addresses mapped to
/// the nodes that hold them.
pub async fn graph(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let nodes = state.control.nodes(caller.tailnet()).await?;
    let q = parse(&params, caller.tailnet(), &nodes, true)?;
    let complete =
        crate::consumers::catch_up(&state, crate::consumers::flow_index::NAME, CATCH_UP).await;
    let flows = state.flows.clone();
    let (filter, bucket) = (q.filter.clone(), q.bucket);
    let edges = tokio::task::spawn_blocking(move || flows.edges(&filter, bucket))
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("flow query failed: {e}"),
            )
        })?
        .map_err(|e| ApiError::bad_request(format!("flow query failed: {e}")))?;
    let mut owner: HashMap<IpAddr, &str> = HashMap::new();
    for n in &nodes {
        for a in &n.addresses {
            if let Ok(net) = parse_net("address", a) {
                owner.insert(net.addr().to_canonical(), &n.id);
            }
        }
    }
    // Written directly (a graph of a busy hour has hundreds of thousands
    // of edges; a `Value` per edge was most of the answer's time), in the
    // shape it always had: edges grouped by bucket, oldest first.
    let head = json!({
        "start": format_nanos(q.filter.start),
        "end": format_nanos(q.filter.end),
        "bucketSeconds": q.bucket / 1_000_000_000,
        "nodes": nodes.iter().map(|n| json!({ "id": n.id, "name": n.name, "addresses": n.addresses })).collect::<Vec<_>>(),
        "errors": edges.errors,
    });
    let mut out = Vec::with_capacity(edges.buckets.len() * 150 + 4096);
    let head = serde_json::to_vec(&head).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the graph: {e}"),
        )
    })?;
    // `head` is an object: drop its closing brace and go on.
    out.extend_from_slice(&head[..head.len() - 1]);
    if !complete {
        out.extend_from_slice(
            br#","behind":"the newest records are still being indexed; ask again shortly""#,
        );
    }
    out.extend_from_slice(br#","buckets":["#);
    // The `"src":...,"dst":...,"dstIsNode":...` part of each endpoint pair, once.
    let mut srcs: HashMap<&str, String> = HashMap::new();
    let mut dsts: HashMap<IpAddr, String> = HashMap::new();
    let mut current: Option<i64> = None;
    for e in &edges.buckets {
        if current != Some(e.bucket) {
            out.extend_from_slice(if current.is_some() {
                b"]},{\"start\":"
            } else {
                b"{\"start\":"
            });
            out.extend_from_slice(json_str(&format_nanos(e.bucket)).as_bytes());
            out.extend_from_slice(br#","edges":["#);
            current = Some(e.bucket);
        } else {
            out.push(b',');
        }
        let src = srcs
            .entry(e.node.as_str())
            .or_insert_with(|| format!("{{\"src\":{}", json_str(&e.node)));
        out.extend_from_slice(src.as_bytes());
        let remote = e.remote.to_canonical();
        let dst = dsts
            .entry(remote)
            .or_insert_with(|| match owner.get(&remote) {
                Some(n) => format!(",\"dst\":{},\"dstIsNode\":true", json_str(n)),
                None => {
                    let a = json_str(&remote.to_string());
                    format!(",\"dst\":{a},\"dstIsNode\":false,\"dstAddress\":{a}")
                }
            });
        out.extend_from_slice(dst.as_bytes());
        use std::io::Write as _;
        let _ = write!(
            out,
            ",\"txPkts\":{},\"txBytes\":{},\"rxPkts\":{},\"rxBytes\":{}}}",
            e.tx_pkts, e.tx_bytes, e.rx_pkts, e.rx_bytes
        );
    }
    out.extend_from_slice(if current.is_some() { b"]}]}" } else { b"]}" });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response())
}

/// A string as JSON.
fn json_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}
