//! Reading logs: `GET /collections` and `GET /c/<collection>` (query or
//! `stream=true`, which follows new entries like `tail -f`).
//!
//! Besides the parameters of Tailscale's logs service, `GET /c/` takes two
//! of its own, which clients that do not send them never see: `q=TEXT`
//! keeps the entries whose text contains TEXT, case-insensitively (the
//! entry's `text`, or its whole JSON when it has no `text`), searched on
//! the server; `order=newest` answers newest first (the newest
//! `max-count` matching entries; `next` continues with older ones, passed
//! back as `after`). Without them an answer is oldest first, as before.

use crate::AppState;
use crate::api::auth::Caller;
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use tally_proto::timefmt::{format_nanos, now_nanos, parse_rfc3339};
use tally_proto::{CollectionName, PublicId};
use tally_store::{Filter, Order};

/// Default and largest `max-count` of one query.
pub const DEFAULT_MAX_COUNT: usize = 1000;
/// Largest `max-count` accepted.
pub const LIMIT_MAX_COUNT: usize = 100_000;
/// Most bytes of entries in one query response.
const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Idle time after which a stream sends a blank line (NDJSON readers skip it).
const STREAM_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most entries read per step of a stream.
const STREAM_BATCH: usize = 1000;

/// Parses a time parameter: RFC 3339, or Unix seconds.
pub fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Some(t) = parse_rfc3339(v) {
        return Ok(t);
    }
    v.parse::<i64>()
        .ok()
        .and_then(|s| s.checked_mul(1_000_000_000))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 time (2024-01-02T15:04:05Z) or Unix seconds, got {v:?}"
            ))
        })
}

/// Parsed parameters of `GET /c/<collection>`.
#[derive(Debug, Default)]
struct LogQuery {
    instances: Vec<PublicId>,
    time_start: Option<i64>,
    time_end: Option<i64>,
    max_count: Option<usize>,
    stream: bool,
    after: Option<u64>,
    text: Option<TextQuery>,
    order: Order,
}

/// Most bytes of a `q=` search text.
const MAX_QUERY_TEXT: usize = 1024;

/// A `q=` search: case-insensitive substring of an entry's text.
#[derive(Debug, Clone)]
pub struct TextQuery(Arc<TextInner>);

#[derive(Debug)]
struct TextInner {
    /// The text, lowercased.
    lower: String,
    /// Whether the text is ASCII (a raw-bytes check can reject entries).
    ascii: bool,
}

/// The `text` of an entry, when it is a string (other members skipped).
#[derive(serde::Deserialize)]
struct TextOnly<'a> {
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

impl TextQuery {
    /// A search for `text` (case-insensitive); `None` for an empty text.
    pub fn new(text: &str) -> Option<Self> {
        (!text.is_empty()).then(|| {
            Self(Arc::new(TextInner {
                lower: text.to_lowercase(),
                ascii: text.is_ascii(),
            }))
        })
    }

    /// Whether an entry (its stored JSON) matches: its `text` contains the
    /// search text, or, when it has no `text` string, its JSON does.
    pub fn matches(&self, body: &[u8]) -> bool {
        let q = &self.0;
        // Fast rejection: an ASCII text that is not in the raw bytes (with
        // ASCII case folded) is in no member, unless an escape hides it.
        if q.ascii && !body.contains(&b'\\') && !contains_ascii_folded(body, q.lower.as_bytes()) {
            return false;
        }
        match serde_json::from_slice::<TextOnly<'_>>(body) {
            Ok(TextOnly { text: Some(t) }) => t.to_lowercase().contains(&q.lower),
            Ok(TextOnly { text: None }) => {
                match serde_json::from_slice::<serde_json::Value>(body) {
                    Ok(v) => v.to_string().to_lowercase().contains(&q.lower),
                    Err(_) => false,
                }
            }
            // `text` is there but not a string: the whole entry.
            Err(_) => String::from_utf8_lossy(body)
                .to_lowercase()
                .contains(&q.lower),
        }
    }
}

/// Whether `hay` contains `needle` (lowercase ASCII), ASCII case folded.
fn contains_ascii_folded(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.len() < needle.len() {
        return false;
    }
    let first = needle[0];
    let upper = first.to_ascii_uppercase();
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        let b = hay[i];
        if (b == first || b == upper)
            && hay[i + 1..i + needle.len()]
                .iter()
                .zip(&needle[1..])
                .all(|(h, n)| h.to_ascii_lowercase() == *n)
        {
            return true;
        }
        i += 1;
    }
    false
}

fn parse_query(params: &[(String, String)]) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery::default();
    for (k, v) in params {
        match k.as_str() {
            "instances" | "instance" => {
                for part in v.split(',').filter(|p| !p.is_empty()) {
                    let id = PublicId::parse(part).map_err(|e| {
                        ApiError::bad_request(format!(
                            "instances: {part:?} is not a public ID: {e}"
                        ))
                    })?;
                    q.instances.push(id);
                }
            }
            "time-start" => q.time_start = Some(parse_time(k, v)?),
            "time-end" => q.time_end = Some(parse_time(k, v)?),
            "max-count" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "max-count must be a positive integer, got {v:?}"
                    ))
                })?;
                if n == 0 || n > LIMIT_MAX_COUNT {
                    return Err(ApiError::bad_request(format!(
                        "max-count must be between 1 and {LIMIT_MAX_COUNT}"
                    )));
                }
                q.max_count = Some(n);
            }
            "stream" => {
                q.stream = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    _ => return Err(ApiError::bad_request("stream must be true or false")),
                }
            }
            "after" => {
                q.after = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("after must be the `next` value of a previous response")
                })?)
            }
            "q" => {
                if v.len() > MAX_QUERY_TEXT {
                    return Err(ApiError::bad_request(format!(
                        "q must be at most {MAX_QUERY_TEXT} bytes"
                    )));
                }
                q.text = TextQuery::new(v);
            }
            "order" => {
                q.order = match v.as_str() {
                    "oldest" | "" => Order::Oldest,
                    "newest" => Order::Newest,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "order must be oldest or newest, got {v:?}"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; known: instances, time-start, time-end, max-count, stream, after, q, order"
                )));
            }
        }
    }
    if q.stream && q.time_end.is_some() {
        return Err(ApiError::bad_request(
            "stream=true cannot be combined with time-end",
        ));
    }
    if q.stream && q.order == Order::Newest {
        return Err(ApiError::bad_request(
            "stream=true follows new entries oldest first: it cannot be combined with order=newest",
        ));
    }
    Ok(q)
}

/// `GET /c/<collection>`.
pub async fn get_logs(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let collection = CollectionName::parse(&collection)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    if !state
        .catalog
        .has_collection(caller.tailnet(), collection.as_str())
        && state.shared_files.is_some()
    {
        // Another server may have created it (or the tailnet) a moment ago.
        state
            .catalog
            .reload_since(std::time::Instant::now(), &state.control)
            .await?;
    }
    if !state
        .catalog
        .has_collection(caller.tailnet(), collection.as_str())
    {
        return Err(ApiError::not_found(format!(
            "collection \"{collection}\" does not exist (GET /collections lists them)"
        )));
    }
    let q = parse_query(&params)?;
    let filter = Filter {
        collections: vec![collection.to_string()],
        instances: q.instances.iter().map(|i| i.0).collect(),
        time_start: q.time_start,
        time_end: q.time_end,
        kinds: vec![tally_store::kind::LOG],
        // A caller sees its own tailnet's entries only.
        owner: Some(caller.tailnet().to_owned()),
    };
    if q.stream {
        return Ok(stream_logs(state, collection, filter, q));
    }
    let max = q.max_count.unwrap_or(DEFAULT_MAX_COUNT);
    let store = state.store.clone();
    let order = q.order;
    let from = match order {
        Order::Oldest => q.after.unwrap_or(1),
        // Below `after`; 0 reads from the end.
        Order::Newest => q.after.unwrap_or(0),
    };
    let text = q.text.clone();
    let batch = tokio::task::spawn_blocking(move || {
        let keep = |r: &tally_store::Record| text.as_ref().is_none_or(|t| t.matches(&r.rec.body));
        store.scan_where(
            from,
            order,
            &filter,
            max,
            MAX_RESPONSE_BYTES,
            now_nanos(),
            &keep,
        )
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query worker failed"))??;
    let mut out = Vec::with_capacity(
        batch
            .records
            .iter()
            .map(|r| r.rec.body.len() + 1)
            .sum::<usize>()
            + 128,
    );
    out.extend_from_slice(
        format!(
            "{{\"collection\":\"{collection}\",\"count\":{},",
            batch.records.len()
        )
        .as_bytes(),
    );
    if batch.truncated {
        out.extend_from_slice(format!("\"next\":\"{}\",", batch.next_seq).as_bytes());
    }
    if !batch.damaged.is_empty() {
        // The answer is incomplete: say which positions are missing and why.
        let incomplete = serde_json::to_string(&incomplete(&batch.damaged)).unwrap_or_default();
        out.extend_from_slice(format!("\"incomplete\":{incomplete},").as_bytes());
    }
    out.extend_from_slice(b"\"logs\":[");
    for (i, r) in batch.records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.rec.body);
    }
    out.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

fn stream_logs(
    state: AppState,
    collection: CollectionName,
    filter: Filter,
    q: LogQuery,
) -> Response {
    // Without time-start (or after), a stream starts with entries arriving from now on.
    let start = match (q.after, q.time_start) {
        (Some(a), _) => a,
        (None, Some(_)) => 1,
        (None, None) => state.store.end_seq(),
    };
    let header_obj = serde_json::json!({
        "collection": collection.as_str(),
        "instances": q.instances,
        "time-start": q.time_start.map(format_nanos),
        "stream": true,
    });
    let mut header_obj = header_obj;
    if let Some(t) = &q.text {
        header_obj["q"] = t.0.lower.clone().into();
    }
    let mut header_line = header_obj.to_string().into_bytes();
    header_line.push(b'\n');
    let init = (state, filter, start, Some(Bytes::from(header_line)));
    let text = q.text.clone();
    let s = futures_util::stream::unfold(init, move |(state, filter, pos, header)| {
        let text = text.clone();
        async move {
            if let Some(h) = header {
                return Some((Ok::<Bytes, std::io::Error>(h), (state, filter, pos, None)));
            }
            let mut pos = pos;
            loop {
                let store = state.store.clone();
                let f = filter.clone();
                let t = text.clone();
                let batch = tokio::task::spawn_blocking(move || {
                    let keep =
                        |r: &tally_store::Record| t.as_ref().is_none_or(|t| t.matches(&r.rec.body));
                    store.scan_where(
                        pos,
                        Order::Oldest,
                        &f,
                        STREAM_BATCH,
                        1 << 20,
                        now_nanos(),
                        &keep,
                    )
                })
                .await;
                let batch = match batch {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        return Some((
                            Err(std::io::Error::other(e.to_string())),
                            (state, filter, pos, None),
                        ));
                    }
                    Err(_) => return None,
                };
                pos = batch.next_seq;
                if !batch.records.is_empty() || !batch.damaged.is_empty() {
                    let mut out = Vec::new();
                    if !batch.damaged.is_empty() {
                        // A line of its own (no `logtail` member) tells the
                        // reader that entries are missing here, and why.
                        let line = serde_json::json!({ "incomplete": incomplete(&batch.damaged) });
                        out.extend_from_slice(line.to_string().as_bytes());
                        out.push(b'\n');
                    }
                    for r in &batch.records {
                        out.extend_from_slice(&r.rec.body);
                        out.push(b'\n');
                    }
                    return Some((Ok(Bytes::from(out)), (state, filter, pos, None)));
                }
                let p = pos;
                // An idle stream sends a blank line now and then, so a
                // reader that went away is noticed and its task ends.
                let woke = tokio::time::timeout(STREAM_HEARTBEAT, state.store.wait_for(p))
                    .await
                    .map(|r| r.is_ok());
                match woke {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(_) => {
                        return Some((Ok(Bytes::from_static(b"\n")), (state, filter, pos, None)));
                    }
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(s),
    )
        .into_response()
}

/// The `incomplete` member of an answer that skipped damaged blocks: the
/// store positions missing and why.
fn incomplete(damaged: &[tally_store::DamagedRange]) -> serde_json::Value {
    serde_json::Value::Array(
        damaged
            .iter()
            .map(|d| {
                serde_json::json!({
                    "from": d.first_seq,
                    "to": d.last_seq,
                    "reason": "a damaged block of the store could not be read; the server's log has the details",
                })
            })
            .collect(),
    )
}

/// `GET /collections[?collection-name=]`.
pub async fn get_collections(
    State(state): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let only = params
        .iter()
        .find(|(k, _)| k == "collection-name")
        .map(|(_, v)| v.clone());
    let mut out = BTreeMap::new();
    for (name, c) in state.catalog.collections_of(caller.tailnet()) {
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        let instances: BTreeMap<String, serde_json::Value> = state
            .instances
            .of(caller.tailnet(), &name)
            .into_iter()
            .map(|(id, info)| {
                let mut v = serde_json::json!({
                    "first-seen": format_nanos(info.first_seen),
                    "size": info.size,
                    "entries": info.entries,
                });
                // How the instance is the tailnet's: a registered node, or adopted.
                match state.catalog.node(&id) {
                    Some(n) if n.tailnet_id == caller.tailnet() => v["node"] = n.node_id.into(),
                    _ => v["adopted"] = c.adopted.contains(&id).into(),
                }
                (id.to_hex(), v)
            })
            .collect();
        out.insert(
            name,
            serde_json::json!({ "instances": instances, "retention-days": c.retention_days }),
        );
    }
    if let Some(o) = only
        && out.is_empty()
    {
        return Err(ApiError::not_found(format!(
            "collection \"{o}\" does not exist"
        )));
    }
    Ok(axum::Json(serde_json::json!({ "collections": out })).into_response())
}
