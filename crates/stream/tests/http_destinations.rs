//! Every HTTP destination against an in-process receiver that enforces
//! the request its service documents (path, method, auth scheme, content
//! type, content encoding, body framing and limits) and answers the way
//! the service does. No real SIEM runs here; the receivers are strict so
//! that a sink drifting from the documented protocol fails.
//!
//! - Elasticsearch `_bulk`: basic auth (401 otherwise), NDJSON
//!   action/source pairs ending in `\n`, per-item statuses in a 200 with
//!   `"errors":true` (429 retried alone, 409 already there, 400 mapping).
//! - Datadog logs intake: `DD-API-KEY` (401 missing, 403 wrong), arrays of
//!   at most 1000 logs and 5 MB (413 otherwise), 202, 429 `Retry-After`.
//! - Panther HTTP source: `Bearer` token, NDJSON `{"time","event"}` lines,
//!   bodies under 1 MB.
//! - Axiom ingest: `Bearer` token, NDJSON with `_time`, ingest status
//!   with per-event failures.
//! - Splunk HEC / Cribl and the signed webhook, whose wire formats the
//!   shared delivery loop must keep.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_stream::config::Compression;
use tally_stream::{DestinationType, EndpointConfig, Entry, LogType, Sink};

/// What every receiver shares: its state behind a lock.
type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(s: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    s.lock().expect("receiver lock")
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("HTTP client")
}

/// Serves `app` on an ephemeral loopback port.
async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

/// A sink made through the public configuration path.
fn sink(
    t: DestinationType,
    url: &str,
    user: &str,
    token: &str,
    compression: Compression,
    log_type: LogType,
) -> Sink {
    let config = EndpointConfig {
        destination_type: t,
        url: url.to_owned(),
        user: user.to_owned(),
        token: Some(token.to_owned()),
        compression_format: compression,
        ..Default::default()
    };
    Sink::new(&config, log_type, client()).expect("a valid configuration")
}

/// Receive time of entry `seq`: sub-millisecond parts included.
fn time_of(seq: u64) -> i64 {
    1_700_000_000_000_000_000 + seq as i64 * 1_000_123
}

/// Entries `from..to`, each `{"seq", "node", "msg"}`.
fn entries(range: std::ops::Range<u64>) -> Vec<Entry> {
    range.map(|i| entry(i, json!({}))).collect()
}

/// Entry `seq` with `extra` fields.
fn entry(seq: u64, extra: Value) -> Entry {
    let mut v =
        json!({"seq": seq, "node": format!("node-{}", seq % 7), "msg": "flow \"quoted\"\nline"});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Entry {
        position: 1000 + seq,
        time: time_of(seq),
        body: serde_json::to_vec(&v).expect("entry JSON"),
    }
}

fn seq_of(v: &Value) -> Option<u64> {
    v.get("seq").and_then(Value::as_u64)
}

/// The body as sent, decompressed: the encoding used, or why it is refused.
fn decode(
    headers: &HeaderMap,
    body: &[u8],
    taken: &[&str],
) -> Result<(Option<String>, Vec<u8>), String> {
    let encoding = match headers.get("content-encoding") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "content-encoding not text")?
                .to_owned(),
        ),
    };
    let plain = match encoding.as_deref() {
        None => body.to_vec(),
        Some(e) if !taken.contains(&e) => return Err(format!("content-encoding {e} is not taken")),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip body does not decompress: {e}"))?;
            out
        }
        Some("zstd") => {
            zstd::decode_all(body).map_err(|e| format!("zstd body does not decompress: {e}"))?
        }
        Some(e) => return Err(format!("content-encoding {e} unknown to the receiver")),
    };
    Ok((encoding, plain))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// NDJSON lines of `body`, or why it is not NDJSON (must end in `\n`).
fn ndjson(body: &[u8]) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8")?;
    let Some(text) = text.strip_suffix('\n') else {
        return Err("NDJSON body does not end with \\n".into());
    };
    text.split('\n')
        .map(|l| serde_json::from_str(l).map_err(|e| format!("line {l:?} is not JSON: {e}")))
        .collect()
}

/// An answer queued ahead of normal processing: status and `Retry-After`.
type Fault = (u16, Option<u64>);

fn fault_response(status: u16, retry_after: Option<u64>, body: &Value) -> Response {
    let mut r = json_response(StatusCode::from_u16(status).expect("a status"), body);
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert("retry-after", s.to_string().parse().expect("header value"));
    }
    r
}

// ---------------------------------------------------------------------
// Elasticsearch

const ES_USER: &str = "tally_writer";
const ES_PASSWORD: &str = "s3cret:with colon";
const ES_PATH: &str = "/logs-tailscale-default/_bulk";

/// An Elasticsearch data stream.
#[derive(Default)]
struct ElasticRx {
    /// Source documents stored, in order.
    docs: Vec<Value>,
    /// Documents already in the stream (answered 409).
    existing: HashSet<u64>,
    /// Per-document statuses to answer before taking it.
    item_faults: HashMap<u64, VecDeque<u16>>,
    /// The seqs each accepted request carried.
    bodies: Vec<Vec<u64>>,
    encodings: Vec<Option<String>>,
    queries: Vec<Option<String>>,
    unauthorized: u64,
    violations: Vec<String>,
}

fn es_error(status: StatusCode, kind: &str, reason: &str) -> Response {
    json_response(
        status,
        &json!({
            "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
            "status": status.as_u16(),
        }),
    )
}

async fn elastic(
    axum::extract::State(s): axum::extract::State<Shared<ElasticRx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut rx = lock(&s);
    if method != Method::POST || uri.path() != ES_PATH {
        rx.violations.push(format!("{method} {uri}"));
        return es_error(StatusCode::NOT_FOUND, "not_found", "no handler");
    }
    // Security first, as Elasticsearch does.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ES_USER}:{ES_PASSWORD}"))
    );
    match header(&headers, "authorization") {
        None => {
            rx.unauthorized += 1;
            let mut r = es_error(
                StatusCode::UNAUTHORIZED,
                "security_exception",
                &format!("missing authentication credentials for REST request [{uri}]"),
            );
            r.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"security\", charset=\"UTF-8\""
                    .parse()
                    .expect("header"),
            );
            return r;
        }
        Some(a) if a != expected => {
            rx.unauthorized += 1;
            return es_error(
                StatusCode::UNAUTHORIZED,
                "security_exception",
                &format!("unable to authenticate user [{ES_USER}] for REST request [{uri}]"),
            );
        }
        Some(_) => {}
    }
    if header(&headers, "content-type") != Some("application/x-ndjson") {
        rx.violations.push(format!(
            "content-type {:?}",
            header(&headers, "content-type")
        ));
        return es_error(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_header_exception",
            "Content-Type header is not supported",
        );
    }
    let (encoding, plain) = match decode(&headers, &body, &["gzip"]) {
        Ok(d) => d,
        Err(e) => {
            rx.violations.push(e.clone());
            return es_error(StatusCode::BAD_REQUEST, "illegal_argument_exception", &e);
        }
    };
    let lines = match ndjson(&plain) {
        Ok(l) if l.len() % 2 == 0 && !l.is_empty() => l,
        Ok(l) => {
            let e = format!("{} lines: not action/source pairs", l.len());
            rx.violations.push(e.clone());
            return es_error(StatusCode::BAD_REQUEST, "illegal_argument_exception", &e);
        }
        Err(e) => {
            rx.violations.push(e.clone());
            return es_error(StatusCode::BAD_REQUEST, "illegal_argument_exception", &e);
        }
    };
    let mut items = Vec::new();
    let mut seqs = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let (action, source) = (&pair[0], &pair[1]);
        let id = action["create"]["_id"].as_str().map(str::to_owned);
        let only_create = action.as_object().is_some_and(|o| o.len() == 1)
            && action["create"].as_object().is_some_and(|o| o.len() == 1);
        if !only_create || id.is_none() {
            let e = format!("action {action}: data streams take only create (with an _id here)");
            rx.violations.push(e.clone());
            return es_error(StatusCode::BAD_REQUEST, "illegal_argument_exception", &e);
        }
        let (Some(seq), Some(ts)) = (
            seq_of(source),
            source.get("@timestamp").and_then(Value::as_str),
        ) else {
            rx.violations
                .push(format!("source {source} without seq or @timestamp"));
            return es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                "bad source",
            );
        };
        if tally_proto::timefmt::parse_rfc3339(ts) != Some(time_of(seq)) {
            rx.violations.push(format!("@timestamp {ts} of {seq}"));
        }
        if !id
            .as_deref()
            .is_some_and(|i| i.starts_with(&format!("{}-", 1000 + seq)))
        {
            rx.violations
                .push(format!("_id {id:?} of {seq}: not the entry's position"));
        }
        seqs.push(seq);
        let fault = rx.item_faults.get_mut(&seq).and_then(VecDeque::pop_front);
        let (status, error) = if let Some(st) = fault {
            (
                st,
                Some(json!({"type": "es_rejected_execution_exception",
                    "reason": "rejected execution of coordinating operation [shard_detail=[logs][0][C]]"})),
            )
        } else if rx.existing.contains(&seq) {
            (
                409,
                Some(json!({"type": "version_conflict_engine_exception",
                    "reason": format!("[{seq}]: version conflict, document already exists")})),
            )
        } else if source.get("bad").is_some_and(|b| !b.is_i64()) {
            (
                400,
                Some(json!({"type": "document_parsing_exception",
                    "reason": "[1:42] failed to parse field [bad] of type [long] in document"})),
            )
        } else {
            rx.docs.push(source.clone());
            rx.existing.insert(seq);
            (201, None)
        };
        let mut item = json!({"_index": ".ds-logs-tailscale-default-2024.01.01-000001",
            "_id": id, "status": status});
        if let Some(e) = error {
            errors = true;
            item["error"] = e;
        } else {
            item["result"] = json!("created");
            item["_version"] = json!(1);
        }
        items.push(json!({"create": item}));
    }
    rx.bodies.push(seqs);
    rx.encodings.push(encoding);
    rx.queries.push(uri.query().map(str::to_owned));
    let answer = json!({"errors": errors, "took": 3, "items": items});
    let text = if uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "pretty"))
    {
        serde_json::to_string_pretty(&answer).expect("json")
    } else {
        answer.to_string()
    };
    (StatusCode::OK, [("content-type", "application/json")], text).into_response()
}

async fn start_elastic(rx: ElasticRx) -> (String, Shared<ElasticRx>) {
    let s = Arc::new(Mutex::new(rx));
    let addr = serve(Router::new().fallback(elastic).with_state(s.clone())).await;
    (format!("http://{addr}{ES_PATH}"), s)
}

fn elastic_sink(url: &str, password: &str, compression: Compression) -> Sink {
    sink(
        DestinationType::Elastic,
        url,
        ES_USER,
        password,
        compression,
        LogType::Network,
    )
}

#[tokio::test]
async fn elastic_bulk_takes_every_entry_in_order() {
    let (url, rx) = start_elastic(ElasticRx::default()).await;
    let url = format!("{url}?pretty");
    let d = elastic_sink(&url, ES_PASSWORD, Compression::Gzip)
        .deliver(&entries(0..50))
        .await
        .expect("delivered");
    assert_eq!(d.requests, 1);
    let rx = lock(&rx);
    assert!(rx.violations.is_empty(), "{:?}", rx.violations);
    assert_eq!(rx.encodings, vec![Some("gzip".to_owned())]);
    assert_eq!(rx.queries, vec![Some("pretty".to_owned())]);
    let stored: Vec<u64> = rx.docs.iter().filter_map(seq_of).collect();
    assert_eq!(stored, (0..50).collect::<Vec<_>>());
    // The source is the entry with @timestamp, nothing lost.
    assert_eq!(rx.docs[3]["msg"], "flow \"quoted\"\nline");
    assert_eq!(rx.docs[3]["node"], "node-3");
}

#[tokio::test]
async fn elastic_partial_failure_is_retried_alone_and_409s_count_as_delivered() {
    let (url, rx) = start_elastic(ElasticRx {
        item_faults: HashMap::from([(3, VecDeque::from([429])), (7, VecDeque::from([429]))]),
        existing: HashSet::from([5]),
        // Document 5 is already in the data stream.
        docs: vec![entry_source(5)],
        ..Default::default()
    })
    .await;
    let d = elastic_sink(&url, ES_PASSWORD, Compression::None)
        .deliver(&entries(0..10))
        .await
        .expect("delivered after retrying the rejected items");
    assert_eq!(d.requests, 2);
    let rx = lock(&rx);
    assert!(rx.violations.is_empty(), "{:?}", rx.violations);
    // The retry carried only the two rejected entries.
    assert_eq!(rx.bodies, vec![(0..10).collect::<Vec<_>>(), vec![3, 7]]);
    // Every entry exactly once.
    let mut stored: Vec<u64> = rx.docs.iter().filter_map(seq_of).collect();
    stored.sort_unstable();
    assert_eq!(stored, (0..10).collect::<Vec<_>>());
}

/// What Elasticsearch holds for entry `seq`.
fn entry_source(seq: u64) -> Value {
    let e = entry(seq, json!({}));
    let mut v: Value = serde_json::from_slice(&e.body).expect("json");
    v["@timestamp"] = json!(tally_proto::timefmt::format_nanos(e.time));
    v
}

#[tokio::test]
async fn elastic_mapping_error_is_an_error_naming_the_reason() {
    let (url, rx) = start_elastic(ElasticRx::default()).await;
    let mut batch = entries(0..5);
    batch[2] = entry(2, json!({"bad": "not a number"}));
    let e = elastic_sink(&url, ES_PASSWORD, Compression::None)
        .deliver(&batch)
        .await
        .expect_err("a mapping error is not delivered");
    assert!(
        e.message.contains("document_parsing_exception")
            && e.message.contains("failed to parse field [bad]")
            && e.message.contains("400")
            && e.message.contains("position 1002"),
        "{}",
        e.message
    );
    assert_eq!(e.retry_after, None);
    // Permanent: not retried within the delivery.
    assert_eq!(e.delivered.requests, 1);
    let rx = lock(&rx);
    assert_eq!(rx.bodies.len(), 1);
    assert!(rx.violations.is_empty(), "{:?}", rx.violations);
}

#[tokio::test]
async fn elastic_items_still_rejected_give_up_after_bounded_retries() {
    let (url, rx) = start_elastic(ElasticRx {
        item_faults: HashMap::from([(1, VecDeque::from([429; 10]))]),
        ..Default::default()
    })
    .await;
    let e = elastic_sink(&url, ES_PASSWORD, Compression::None)
        .deliver(&entries(0..3))
        .await
        .expect_err("still rejected");
    assert!(
        e.message.contains("es_rejected_execution_exception")
            && e.message.contains("429")
            && e.message.contains("retries"),
        "{}",
        e.message
    );
    let rx = lock(&rx);
    // The first body, then three retries of the one rejected entry.
    assert_eq!(rx.bodies, vec![vec![0, 1, 2], vec![1], vec![1], vec![1]]);
    assert_eq!(e.delivered.requests, 4);
}

#[tokio::test]
async fn elastic_without_or_with_wrong_credentials_is_401() {
    let (url, rx) = start_elastic(ElasticRx::default()).await;
    // The receiver refuses a request without credentials, as Elasticsearch does.
    let r = client()
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .body("{\"create\":{\"_id\":\"1\"}}\n{}\n")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let e = elastic_sink(&url, "wrong", Compression::None)
        .deliver(&entries(0..2))
        .await
        .expect_err("wrong password");
    assert!(e.message.contains("401"), "{}", e.message);
    assert!(!e.message.contains("wrong"), "no secret in {}", e.message);
    let rx = lock(&rx);
    assert_eq!(rx.unauthorized, 2);
    assert!(rx.docs.is_empty());
}

// ---------------------------------------------------------------------
// Datadog

const DD_KEY: &str = "0123456789abcdef0123456789abcdef";
const DD_PATH: &str = "/api/v2/logs";

/// A Datadog logs intake.
#[derive(Default)]
struct DatadogRx {
    logs: Vec<Value>,
    array_sizes: Vec<usize>,
    encodings: Vec<Option<String>>,
    faults: VecDeque<Fault>,
    violations: Vec<String>,
}

async fn datadog(
    axum::extract::State(s): axum::extract::State<Shared<DatadogRx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut rx = lock(&s);
    if method != Method::POST || uri.path() != DD_PATH {
        rx.violations.push(format!("{method} {uri}"));
        return json_response(StatusCode::NOT_FOUND, &json!({"errors": ["Not found"]}));
    }
    match header(&headers, "dd-api-key") {
        None => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"errors": ["Unauthorized"]}),
            );
        }
        Some(k) if k != DD_KEY => {
            return json_response(StatusCode::FORBIDDEN, &json!({"errors": ["Forbidden"]}));
        }
        Some(_) => {}
    }
    if let Some((status, after)) = rx.faults.pop_front() {
        return fault_response(status, after, &json!({"errors": ["Too many requests"]}));
    }
    if header(&headers, "content-type") != Some("application/json") {
        rx.violations.push(format!(
            "content-type {:?}",
            header(&headers, "content-type")
        ));
        return json_response(StatusCode::BAD_REQUEST, &json!({"errors": ["Bad request"]}));
    }
    let (encoding, plain) = match decode(&headers, &body, &["gzip", "deflate"]) {
        Ok(d) => d,
        Err(e) => {
            rx.violations.push(e);
            return json_response(StatusCode::BAD_REQUEST, &json!({"errors": ["Bad request"]}));
        }
    };
    if plain.len() > 5_000_000 {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"errors": ["Request too large"]}),
        );
    }
    let Ok(Value::Array(logs)) = serde_json::from_slice::<Value>(&plain) else {
        rx.violations.push("body is not a JSON array".into());
        return json_response(StatusCode::BAD_REQUEST, &json!({"errors": ["Bad request"]}));
    };
    if logs.is_empty() || logs.len() > 1000 {
        rx.violations.push(format!("array of {} logs", logs.len()));
        return json_response(StatusCode::BAD_REQUEST, &json!({"errors": ["Bad request"]}));
    }
    for log in &logs {
        let message: Option<Value> = log["message"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok());
        let ok = log["ddsource"] == "tally"
            && log["service"] == "tally"
            && log["ddtags"] == "logtype:configuration"
            && log["hostname"].is_string()
            && message.as_ref().and_then(seq_of).is_some_and(|seq| {
                log["timestamp"].as_i64() == Some(time_of(seq).div_euclid(1_000_000))
            });
        if !ok {
            rx.violations.push(format!("log {log}"));
            return json_response(StatusCode::BAD_REQUEST, &json!({"errors": ["Bad request"]}));
        }
    }
    rx.array_sizes.push(logs.len());
    rx.encodings.push(encoding);
    rx.logs.extend(logs);
    json_response(StatusCode::ACCEPTED, &json!({}))
}

async fn start_datadog(rx: DatadogRx) -> (String, Shared<DatadogRx>) {
    let s = Arc::new(Mutex::new(rx));
    let addr = serve(Router::new().fallback(datadog).with_state(s.clone())).await;
    (format!("http://{addr}{DD_PATH}"), s)
}

fn datadog_sink(url: &str, key: &str, compression: Compression) -> Sink {
    sink(
        DestinationType::Datadog,
        url,
        "",
        key,
        compression,
        LogType::Configuration,
    )
}

#[tokio::test]
async fn datadog_gets_arrays_of_at_most_1000_logs_in_order() {
    let (url, rx) = start_datadog(DatadogRx::default()).await;
    let batch = entries(0..2500);
    let d = datadog_sink(&url, DD_KEY, Compression::Gzip)
        .deliver(&batch)
        .await
        .expect("delivered");
    assert_eq!(d.requests, 3);
    let rx = lock(&rx);
    assert!(rx.violations.is_empty(), "{:?}", rx.violations);
    assert_eq!(rx.array_sizes, vec![1000, 1000, 500]);
    assert!(rx.encodings.iter().all(|e| e.as_deref() == Some("gzip")));
    let got: Vec<Value> = rx
        .logs
        .iter()
        .map(|l| serde_json::from_str(l["message"].as_str().expect("message")).expect("json"))
        .collect();
    let sent: Vec<Value> = batch
        .iter()
        .map(|e| serde_json::from_slice(&e.body).expect("json"))
        .collect();
    assert_eq!(got, sent);
}

#[tokio::test]
async fn datadog_bad_key_is_403_and_an_oversized_payload_is_413() {
    let (url, rx) = start_datadog(DatadogRx::default()).await;
    let e = datadog_sink(&url, "not-the-key", Compression::None)
        .deliver(&entries(0..3))
        .await
        .expect_err("a wrong key");
    assert!(e.message.contains("403"), "{}", e.message);
    assert!(!e.message.contains("not-the-key"), "{}", e.message);
    // One entry larger than Datadog's 5 MB payload goes alone and is refused.
    let big = entry(1, json!({"blob": "x".repeat(5_100_000)}));
    let batch = vec![entry(0, json!({})), big, entry(2, json!({}))];
    let e = datadog_sink(&url, DD_KEY, Compression::Gzip)
        .deliver(&batch)
        .await
        .expect_err("too large");
    assert!(e.message.contains("413"), "{}", e.message);
    assert_eq!(e.delivered.requests, 1);
    let rx = lock(&rx);
    assert!(rx.violations.is_empty(), "{:?}", rx.violations);
    assert_eq!(rx.array_sizes, vec![1]);
}

#[tokio::test]
async fn a_429_with_retry_after_7_asks_for_7_seconds() {
    let (url, rx) = start_datadog(DatadogRx {
        faults: VecDeque::from([(429, Some(7))]),
        ..Default::default()
    })
    .await;
    let s = datadog_sink(&url, DD_KEY, Compression::None);
    let e = s.deliver(&entries(0..4)).await.expect_err("throttled");
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert!(e.message.contains("429"), "{}", e.message);
    // The batch sent again is taken whole.
    s.deliver(&entries(0..4)).await.expect("delivered");
    let rx = lock(&rx);
    assert_eq!(rx.logs.len(), 4);
}

// ---------------------------------------------------------------------
// Panther

const PANTHER_TOKEN: &str = "panther-bearer-token";
const PANTHER_PATH: &str = "/http/1b2c3d4e-0000-4000-8000-000000000000";

/// A Panther HTTP source.
#[derive(Default)]
struct PantherRx {
    events: Vec<Value>,
    body_sizes: Vec<usize>,
    encodings: Vec<Option<String>>,
    violations: Vec<String>,
}

async fn panther(
    axum::extract::State(s): axum::extract::State<Shared<PantherRx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut rx = lock(&s);
    if method != Method::POST || uri.path() != PANTHER_PATH {
        rx.violations.push(format!("{method} {uri}"));
        return StatusCode::NOT_FOUND.into_response();
    }
    if header(&headers, "authorization") != Some(format!("Bearer {PANTHER_TOKEN}").as_str()) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    if header(&headers, "content-type") != Some("application/x-ndjson") {
        rx.violations.push(format!(
            "content-type {:?}",
            header(&headers, "content-type")
        ));
        return StatusCode::BAD_REQUEST.into_response();
    }
    let (encoding, plain) = match decode(&headers, &body, &["gzip", "zstd"]) {
        Ok(d) => d,
        Err(e) => {
            rx.violations.push(e);
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    // 1 MB, headers included.
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if body.len() + header_bytes > 1_000_000 || plain.len() > 1_000_000 {
        rx.violations
            .push(format!("payload of {} bytes", plain.len()));
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let lines = match ndjson(&plain) {
        Ok(l) => l,
        Err(e) => {
            rx.violations.push(e);
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    for line in lines {
        let (Some(time), Some(seq)) = (line["time"].as_f64(), seq_of(&line["event"])) else {
            rx.violations.push(format!("line {line}"));
            return StatusCode::BAD_REQUEST.into_response();
        };
        if line.as_object().map(|o| o.len()) != Some(2)
            || ((time * 1e9) as i64 - time_of(seq)).abs() > 1_000_000
        {
            rx.violations.push(format!("line {line}"));
        }
        rx.events.push(line["event"].clone());
    }
    rx.body_sizes.push(plain.len());
    rx.encodings.push(encoding);
    StatusCode::OK.into_response()
}

#[tokio::test]
async fn panther_gets_ndjson_lines_under_1_mb_with_a_bearer_token() {
    let s = Arc::new(Mutex::new(PantherRx::default()));
    let addr = serve(Router::new().fallback(panther).with_state(s.clone())).await;
    let url = format!("http://{addr}{PANTHER_PATH}");
    let batch: Vec<Entry> = (0..3000)
        .map(|i| entry(i, json!({"pad": "p".repeat(400)})))
        .collect();
    let d = sink(
        DestinationType::Panther,
        &url,
        "",
        PANTHER_TOKEN,
        Compression::Zstd,
        LogType::Alerts,
    )
    .deliver(&batch)
    .await
    .expect("delivered");
    assert!(d.requests >= 2, "{d:?}");
    {
        let rx = lock(&s);
        assert!(rx.violations.is_empty(), "{:?}", rx.violations);
        assert_eq!(rx.body_sizes.len() as u64, d.requests);
        assert!(rx.encodings.iter().all(|e| e.as_deref() == Some("zstd")));
        let seqs: Vec<u64> = rx.events.iter().filter_map(seq_of).collect();
        assert_eq!(seqs, (0..3000).collect::<Vec<_>>());
        assert_eq!(rx.events[9]["msg"], "flow \"quoted\"\nline");
    }
    let e = sink(
        DestinationType::Panther,
        &url,
        "",
        "wrong-token",
        Compression::None,
        LogType::Alerts,
    )
    .deliver(&entries(0..1))
    .await
    .expect_err("a wrong token");
    assert!(e.message.contains("401"), "{}", e.message);
}

// ---------------------------------------------------------------------
// Axiom

const AXIOM_TOKEN: &str = "xaat-00000000-0000-0000-0000-000000000000";
const AXIOM_PATH: &str = "/v1/datasets/tailscale/ingest";

/// An Axiom dataset.
#[derive(Default)]
struct AxiomRx {
    events: Vec<Value>,
    encodings: Vec<Option<String>>,
    violations: Vec<String>,
}

async fn axiom(
    axum::extract::State(s): axum::extract::State<Shared<AxiomRx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut rx = lock(&s);
    if method != Method::POST || uri.path() != AXIOM_PATH {
        rx.violations.push(format!("{method} {uri}"));
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"code": 404, "message": "not found"}),
        );
    }
    if header(&headers, "authorization") != Some(format!("Bearer {AXIOM_TOKEN}").as_str()) {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"code": 403, "message": "Forbidden"}),
        );
    }
    if header(&headers, "content-type") != Some("application/x-ndjson") {
        rx.violations.push(format!(
            "content-type {:?}",
            header(&headers, "content-type")
        ));
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"code": 400, "message": "bad"}),
        );
    }
    let (encoding, plain) = match decode(&headers, &body, &["gzip", "zstd"]) {
        Ok(d) => d,
        Err(e) => {
            rx.violations.push(e);
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"code": 400, "message": "bad"}),
            );
        }
    };
    let lines = match ndjson(&plain) {
        Ok(l) if l.len() <= 10_000 => l,
        Ok(l) => {
            rx.violations.push(format!("{} events", l.len()));
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"code": 400, "message": "bad"}),
            );
        }
        Err(e) => {
            rx.violations.push(e);
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"code": 400, "message": "bad"}),
            );
        }
    };
    let (mut ingested, mut failures) = (0, Vec::new());
    for line in lines {
        let time = line["_time"]
            .as_str()
            .and_then(tally_proto::timefmt::parse_rfc3339);
        if seq_of(&line).map(time_of) != time {
            rx.violations.push(format!("event {line}"));
        }
        if line.get("_reserved").is_some() {
            failures.push(json!({"timestamp": line["_time"],
                "error": "invalid field name \"_reserved\": fields starting with _ are reserved"}));
            continue;
        }
        ingested += 1;
        rx.events.push(line);
    }
    rx.encodings.push(encoding);
    json_response(
        StatusCode::OK,
        &json!({"ingested": ingested, "failed": failures.len(), "failures": failures,
            "processedBytes": plain.len(), "blocksCreated": 0, "walLength": ingested}),
    )
}

#[tokio::test]
async fn axiom_gets_ndjson_with_time_and_failures_are_named() {
    let s = Arc::new(Mutex::new(AxiomRx::default()));
    let addr = serve(Router::new().fallback(axiom).with_state(s.clone())).await;
    let url = format!("http://{addr}{AXIOM_PATH}");
    for (c, range) in [(Compression::Zstd, 0..20), (Compression::Gzip, 20..40)] {
        let d = sink(
            DestinationType::Axiom,
            &url,
            "",
            AXIOM_TOKEN,
            c,
            LogType::Findings,
        )
        .deliver(&entries(range))
        .await
        .expect("delivered");
        assert_eq!(d.requests, 1);
    }
    {
        let rx = lock(&s);
        assert!(rx.violations.is_empty(), "{:?}", rx.violations);
        assert_eq!(
            rx.encodings,
            vec![Some("zstd".to_owned()), Some("gzip".to_owned())]
        );
        let seqs: Vec<u64> = rx.events.iter().filter_map(seq_of).collect();
        assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    }
    let axiom_sink = |token: &str| {
        sink(
            DestinationType::Axiom,
            &url,
            "",
            token,
            Compression::None,
            LogType::Findings,
        )
    };
    let batch = vec![
        entry(40, json!({})),
        entry(41, json!({"_reserved": 1})),
        entry(42, json!({})),
    ];
    let e = axiom_sink(AXIOM_TOKEN)
        .deliver(&batch)
        .await
        .expect_err("an event failed");
    assert!(
        e.message.contains("1 of 3 events failed")
            && e.message.contains("fields starting with _ are reserved"),
        "{}",
        e.message
    );
    let e = axiom_sink("xaat-wrong")
        .deliver(&entries(0..1))
        .await
        .expect_err("a wrong token");
    assert!(e.message.contains("403"), "{}", e.message);
}

// ---------------------------------------------------------------------
// Splunk HEC and Cribl (kept exactly through the shared loop)

const HEC_TOKEN: &str = "11111111-2222-3333-4444-555555555555";
const HEC_PATH: &str = "/services/collector/event";

/// A HEC endpoint.
#[derive(Default)]
struct HecRx {
    events: Vec<Value>,
    violations: Vec<String>,
}

async fn hec(
    axum::extract::State(s): axum::extract::State<Shared<HecRx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut rx = lock(&s);
    let error = |status: StatusCode, code: u32, text: &str| {
        json_response(status, &json!({"text": text, "code": code}))
    };
    if method != Method::POST || uri.path() != HEC_PATH {
        rx.violations.push(format!("{method} {uri}"));
        return error(
            StatusCode::NOT_FOUND,
            404,
            "The requested URL was not found",
        );
    }
    let Some(auth) = header(&headers, "authorization") else {
        return error(StatusCode::UNAUTHORIZED, 2, "Token is required");
    };
    let Some(token) = auth.strip_prefix("Splunk ") else {
        return error(StatusCode::UNAUTHORIZED, 3, "Invalid authorization");
    };
    if token != HEC_TOKEN {
        return error(StatusCode::FORBIDDEN, 4, "Invalid token");
    }
    let plain = match decode(&headers, &body, &["gzip"]) {
        Ok((_, p)) => p,
        Err(e) => {
            rx.violations.push(e);
            return error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
    };
    // Envelopes each followed by a newline.
    let envelopes = match ndjson(&plain) {
        Ok(l) => l,
        Err(e) => {
            rx.violations.push(e);
            return error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
    };
    for v in envelopes {
        let ok = v["time"].is_number()
            && v["host"] == "tally"
            && v["source"] == "tally"
            && v["sourcetype"] == "tailscale:network"
            && v["event"].is_object();
        if !ok {
            rx.violations.push(format!("envelope {v}"));
            return error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
        rx.events.push(v["event"].clone());
    }
    error(StatusCode::OK, 0, "Success")
}

#[tokio::test]
async fn splunk_and_cribl_get_hec_envelopes() {
    let s = Arc::new(Mutex::new(HecRx::default()));
    let addr = serve(Router::new().fallback(hec).with_state(s.clone())).await;
    let url = format!("http://{addr}{HEC_PATH}");
    for (t, range) in [
        (DestinationType::Splunk, 0..30),
        (DestinationType::Cribl, 30..60),
    ] {
        sink(t, &url, "", HEC_TOKEN, Compression::Gzip, LogType::Network)
            .deliver(&entries(range))
            .await
            .expect("delivered");
    }
    {
        let rx = lock(&s);
        assert!(rx.violations.is_empty(), "{:?}", rx.violations);
        let seqs: Vec<u64> = rx.events.iter().filter_map(seq_of).collect();
        assert_eq!(seqs, (0..60).collect::<Vec<_>>());
    }
    let e = sink(
        DestinationType::Splunk,
        &url,
        "",
        "wrong",
        Compression::None,
        LogType::Network,
    )
    .deliver(&entries(0..1))
    .await
    .expect_err("a wrong token");
    assert!(e.message.contains("403"), "{}", e.message);
}

// ---------------------------------------------------------------------
// Signed webhook

const WEBHOOK_KEY: &str = "webhook-signing-key";

/// A receiver checking the signature independently.
#[derive(Default)]
struct WebhookRx {
    entries: Vec<Value>,
    violations: Vec<String>,
}

async fn webhook(
    axum::extract::State(s): axum::extract::State<Shared<WebhookRx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut rx = lock(&s);
    if method != Method::POST || uri.path() != "/tally" {
        rx.violations.push(format!("{method} {uri}"));
        return StatusCode::NOT_FOUND.into_response();
    }
    let plain = match decode(&headers, &body, &["gzip", "zstd"]) {
        Ok((_, p)) => p,
        Err(e) => {
            rx.violations.push(e);
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let (Some(ts), Some(sig)) = (
        header(&headers, "tally-timestamp"),
        header(&headers, "tally-signature").and_then(|s| s.strip_prefix("v1=")),
    ) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_KEY.as_bytes());
    let signed = [ts.as_bytes(), b".", &plain].concat();
    let verified = hex::decode(sig)
        .ok()
        .is_some_and(|sig| ring::hmac::verify(&key, &signed, &sig).is_ok());
    if !verified {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let v: Value = match serde_json::from_slice(&plain) {
        Ok(v) => v,
        Err(e) => {
            rx.violations.push(format!("body: {e}"));
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    if v.as_object().map(|o| o.len()) != Some(2) || v["logType"] != "alerts" {
        rx.violations.push(format!("body {v}"));
    }
    match v["entries"].as_array() {
        Some(es) => rx.entries.extend(es.iter().cloned()),
        None => rx.violations.push("no entries".into()),
    }
    StatusCode::NO_CONTENT.into_response()
}

#[tokio::test]
async fn webhook_bodies_are_signed_before_compression() {
    let s = Arc::new(Mutex::new(WebhookRx::default()));
    let addr = serve(Router::new().fallback(webhook).with_state(s.clone())).await;
    let url = format!("http://{addr}/tally");
    let batch = entries(0..25);
    sink(
        DestinationType::Webhook,
        &url,
        "",
        WEBHOOK_KEY,
        Compression::Gzip,
        LogType::Alerts,
    )
    .deliver(&batch)
    .await
    .expect("delivered");
    {
        let rx = lock(&s);
        assert!(rx.violations.is_empty(), "{:?}", rx.violations);
        let sent: Vec<Value> = batch
            .iter()
            .map(|e| serde_json::from_slice(&e.body).expect("json"))
            .collect();
        assert_eq!(rx.entries, sent);
    }
    let e = sink(
        DestinationType::Webhook,
        &url,
        "",
        "another key",
        Compression::None,
        LogType::Alerts,
    )
    .deliver(&entries(0..1))
    .await
    .expect_err("a wrong key");
    assert!(e.message.contains("401"), "{}", e.message);
}
