//! The uploader against an in-test logs server that checks the protocol
//! strictly and answers scripted statuses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tally_agent::{Agent, AgentConfig, log_via_socket};
use tally_proto::logtail::{MAX_BODY_BYTES, MAX_ENTRY_BYTES};
use tally_proto::{PrivateId, PublicId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::support::*;

/// One request as the server saw it.
#[derive(Debug)]
struct Received {
    at: Instant,
    compressed: bool,
    /// The entries of the (decompressed) JSON array.
    entries: Vec<Value>,
    /// Everything that breaks the protocol.
    violations: Vec<String>,
}

impl Received {
    fn seqs(&self) -> Vec<u64> {
        self.entries
            .iter()
            .map(|e| e["logtail"]["proc_seq"].as_u64().unwrap_or(0))
            .collect()
    }
    fn texts(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e["text"].as_str().unwrap_or(""))
            .collect()
    }
}

/// A scripted answer; `{path}` in the body is replaced by the request path.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    body: &'static str,
}

struct ServerState {
    expected: PublicId,
    script: Mutex<VecDeque<Answer>>,
    tx: mpsc::UnboundedSender<Received>,
}

struct TestServer {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl TestServer {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn next(&mut self) -> Received {
        let r = tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a request in time")
            .unwrap();
        assert!(
            r.violations.is_empty(),
            "protocol violations: {:?}",
            r.violations
        );
        r
    }
}

fn check(
    state: &ServerState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw: &[u8],
) -> (bool, Vec<Value>, Vec<String>) {
    let mut v = Vec::new();
    if method != Method::POST {
        v.push(format!("method {method}"));
    }
    let parts: Vec<&str> = uri.path().split('/').collect();
    match parts.as_slice() {
        ["", "c", "tailnode", id] => match PrivateId::parse(id) {
            Ok(p) if p.public() == state.expected && id.len() == 64 && *id == id.to_lowercase() => {
            }
            _ => v.push(format!(
                "path id is not the agent's private id in lowercase hex: {id}"
            )),
        },
        _ => v.push(format!("path {}", uri.path())),
    }
    if uri.query().is_some() {
        v.push("query string".into());
    }
    if headers.get("content-type").and_then(|h| h.to_str().ok()) != Some("application/json") {
        v.push("content-type is not application/json".into());
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    };
    let (compressed, body) = match header("content-encoding").as_deref() {
        None => {
            if header("orig-content-length").is_some() {
                v.push("Orig-Content-Length without compression".into());
            }
            (false, raw.to_vec())
        }
        Some("zstd") => {
            let body = zstd::stream::decode_all(raw).unwrap_or_default();
            match header("orig-content-length").and_then(|h| h.parse::<usize>().ok()) {
                Some(n) if n == body.len() => {}
                other => v.push(format!(
                    "Orig-Content-Length {other:?} but {} bytes decompressed",
                    body.len()
                )),
            }
            if raw.len() >= body.len() {
                v.push(format!(
                    "zstd made the body larger: {} >= {}",
                    raw.len(),
                    body.len()
                ));
            }
            (true, body)
        }
        Some(other) => {
            v.push(format!("content-encoding {other}"));
            (false, Vec::new())
        }
    };
    if body.len() > MAX_BODY_BYTES || body.len() > 256 * 1024 {
        v.push(format!("body of {} bytes", body.len()));
    }
    let entries = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) if !items.is_empty() => items,
        other => {
            v.push(format!("body is not a non-empty JSON array: {other:?}"));
            Vec::new()
        }
    };
    for e in &entries {
        if serde_json::to_vec(e).map_or(0, |b| b.len()) > MAX_ENTRY_BYTES {
            v.push("entry over 256 KiB".into());
        }
        let Some(lt) = e["logtail"].as_object() else {
            v.push(format!("no logtail object: {e}"));
            continue;
        };
        let mut keys: Vec<&str> = lt.keys().map(String::as_str).collect();
        keys.sort_unstable();
        if keys != ["client_time", "proc_id", "proc_seq"] {
            v.push(format!("logtail fields {keys:?}"));
        }
        if lt["client_time"]
            .as_str()
            .and_then(tally_proto::timefmt::parse_rfc3339)
            .is_none()
        {
            v.push(format!("client_time {}", lt["client_time"]));
        }
        if lt["proc_id"]
            .as_u64()
            .is_none_or(|n| n > u64::from(u32::MAX))
        {
            v.push(format!("proc_id {}", lt["proc_id"]));
        }
        if lt["proc_seq"].as_u64().is_none() {
            v.push(format!("proc_seq {}", lt["proc_seq"]));
        }
        if !e["text"].is_string() || !e["source"].is_string() {
            v.push(format!("text or source missing: {e}"));
        }
    }
    (compressed, entries, v)
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let (compressed, entries, violations) = check(&state, &method, &uri, &headers, &body);
    let _ = state.tx.send(Received {
        at,
        compressed,
        entries,
        violations,
    });
    let answer = state.script.lock().unwrap().pop_front();
    let Some(a) = answer else {
        return StatusCode::OK.into_response();
    };
    let mut resp = (
        StatusCode::from_u16(a.status).unwrap(),
        a.body.replace("{path}", uri.path()),
    )
        .into_response();
    if let Some(r) = a.retry_after {
        resp.headers_mut().insert("retry-after", r.parse().unwrap());
    }
    resp
}

async fn serve(listener: TcpListener, expected: PublicId, script: Vec<Answer>) -> TestServer {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(ServerState {
        expected,
        script: Mutex::new(script.into()),
        tx,
    });
    let app = axum::Router::new().fallback(handle).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestServer { addr, rx }
}

/// The identity the agent will use, created ahead so the server knows it.
fn identity(data: &Path) -> PrivateId {
    tally_agent::load_or_create_identity(data).unwrap()
}

fn upload_config(data: &Path, server: &str) -> AgentConfig {
    let mut c = config(data);
    c.no_logs_no_support = false;
    c.server = Some(server.to_owned());
    c
}

#[tokio::test]
async fn batches_follow_the_protocol_and_200_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = identity(&data);
    let mut server = serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        id.public(),
        vec![],
    )
    .await;
    let mut cfg = upload_config(&data, &server.url());
    cfg.flush_delay = Duration::from_millis(300);
    let agent = Agent::start(cfg).await.unwrap();

    // One small entry: sent after the flush delay.
    let t0 = Instant::now();
    log_via_socket(&data, "hello", None).await.unwrap();
    let first = server.next().await;
    assert!(
        first.at - t0 >= Duration::from_millis(300),
        "flush delay: {:?}",
        first.at - t0
    );
    assert_eq!((first.texts(), first.seqs()), (vec!["hello"], vec![1]));

    // 120 compressible entries of 4 KiB: more than one 256 KiB batch.
    let pad = "compressible ".repeat(300);
    let lines: Vec<String> = (0..120).map(|i| format!("entry {i} {pad}")).collect();
    raw_requests(agent.socket_path().to_owned(), lines).await;
    let mut status = agent.upload_status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.uploaded == 121))
        .await
        .unwrap()
        .unwrap();
    let mut requests = vec![first];
    while let Ok(r) = server.rx.try_recv() {
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        requests.push(r);
    }
    assert!(
        requests.len() >= 3,
        "split into batches: {}",
        requests.len()
    );
    assert!(
        requests[1..].iter().all(|r| r.compressed),
        "compressible batches are compressed"
    );
    let seqs: Vec<u64> = requests.iter().flat_map(Received::seqs).collect();
    assert_eq!(
        seqs,
        (1..=121).collect::<Vec<_>>(),
        "in order, no gap, no duplicate"
    );
    let proc_ids: Vec<&Value> = requests
        .iter()
        .flat_map(|r| r.entries.iter().map(|e| &e["logtail"]["proc_id"]))
        .collect();
    assert!(proc_ids.iter().all(|p| *p == proc_ids[0]));

    // Acknowledged entries are not sent again, and show as uploaded.
    let logs = all_logs(&data);
    assert_eq!(logs.len(), 121);
    assert!(logs.iter().all(|l| l.uploaded));
    assert!(logs[0].to_string().starts_with("  "), "{}", logs[0]);
    log_via_socket(&data, "after", None).await.unwrap();
    let next = server.next().await;
    assert_eq!((next.texts(), next.seqs()), (vec!["after"], vec![122]));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_after_is_honoured_and_400_drops_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = identity(&data);
    let script = vec![
        Answer {
            status: 503,
            retry_after: Some("1"),
            body: r#"{"error":"overloaded at {path}"}"#,
        },
        Answer {
            status: 400,
            retry_after: None,
            body: r#"{"error":"1 of 1 entries were malformed"}"#,
        },
    ];
    let mut server = serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        id.public(),
        script,
    )
    .await;
    let agent = Agent::start(upload_config(&data, &server.url()))
        .await
        .unwrap();

    log_via_socket(&data, "first", None).await.unwrap();
    let a = server.next().await;
    let b = server.next().await;
    assert!(
        b.at - a.at >= Duration::from_secs(1),
        "retried after {:?}, before Retry-After",
        b.at - a.at
    );
    assert_eq!((a.texts(), b.texts()), (vec!["first"], vec!["first"]));
    let mut status = agent.upload_status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.rejected == 1))
        .await
        .unwrap()
        .unwrap();
    let status = status.borrow().clone();
    assert_eq!(
        (status.failures, status.rejected, status.uploaded),
        (1, 1, 0)
    );
    let shown = status.last_error.unwrap();
    assert!(
        shown.contains("HTTP 503") && shown.contains("overloaded at /c/tailnode/<private-id>"),
        "{shown}"
    );
    assert!(
        !shown.contains(&id.to_hex()),
        "private id redacted: {shown}"
    );

    // 400 means saved: the entry is not sent again.
    log_via_socket(&data, "second", None).await.unwrap();
    let c = server.next().await;
    assert_eq!(c.texts(), ["second"]);
    let mut status = agent.upload_status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.uploaded == 1))
        .await
        .unwrap()
        .unwrap();
    assert!(all_logs(&data).iter().all(|l| l.uploaded));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_refused_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = identity(&data);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = Agent::start(upload_config(&data, &format!("http://{addr}")))
        .await
        .unwrap();
    log_via_socket(&data, "patient", None).await.unwrap();
    let mut status = agent.upload_status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.failures >= 2))
        .await
        .unwrap()
        .unwrap();
    let shown = status.borrow().last_error.clone().unwrap();
    assert!(
        !shown.contains(&id.to_hex()),
        "private id redacted: {shown}"
    );

    let mut server = serve(TcpListener::bind(addr).await.unwrap(), id.public(), vec![]).await;
    let r = server.next().await;
    assert_eq!(r.texts(), ["patient"]);
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.uploaded == 1))
        .await
        .unwrap()
        .unwrap();
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_logs_no_support_makes_no_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            *counter.lock().unwrap() += 1;
        }
    });
    let mut cfg = upload_config(&data, &format!("http://{addr}"));
    cfg.no_logs_no_support = true;
    let agent = Agent::start(cfg).await.unwrap();
    for i in 0..3 {
        log_via_socket(&data, &format!("local {i}"), None)
            .await
            .unwrap();
    }
    // The entries are durable (each `log` returned once it was on disk),
    // and nothing in the agent can send them: no uploader runs (its status
    // channel is closed, its counters zero) and no reporter either (no auth
    // key, never registered), so no connection is ever opened.
    let status = agent.upload_status();
    assert!(status.has_changed().is_err(), "an uploader runs");
    assert_eq!(*status.borrow(), Default::default());
    assert!(
        agent.node_settings().has_changed().is_err(),
        "a reporter runs"
    );
    agent.shutdown().await.unwrap();
    assert_eq!(*accepted.lock().unwrap(), 0);
    let logs = all_logs(&data);
    assert_eq!(logs.len(), 3);
    assert!(logs.iter().all(|l| !l.uploaded));
}

/// The protocol's timings at the agent's defaults, on a paused clock (the
/// clock jumps ahead whenever nothing else is left to do): the first
/// batch waits the 2-s flush delay; a failure without `Retry-After` is
/// retried after 30-60 s of jitter; an integer `Retry-After` is honoured;
/// no wait is longer than 5 minutes.
#[tokio::test(start_paused = true)]
async fn default_timings_follow_the_protocol_on_a_paused_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = identity(&data);
    let busy = r#"{"error":"busy"}"#;
    let script = vec![
        Answer {
            status: 503,
            retry_after: None,
            body: busy,
        },
        Answer {
            status: 503,
            retry_after: Some("7"),
            body: busy,
        },
        Answer {
            status: 429,
            retry_after: Some("3600"),
            body: busy,
        },
    ];
    let mut server = serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        id.public(),
        script,
    )
    .await;
    let mut defaults = AgentConfig::new(&data);
    defaults.server = Some(server.url());
    defaults.no_logs_no_support = false;
    let agent = Agent::start(defaults).await.unwrap();
    // Waits on the paused clock: ten minutes of it pass in an instant.
    let mut next = async || {
        let r = tokio::time::timeout(Duration::from_secs(600), server.rx.recv())
            .await
            .expect("a request within 10 minutes")
            .expect("server running");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        r
    };
    let logged = Instant::now();
    log_via_socket(&data, "first", None).await.unwrap();
    let first = next().await;
    let flush = first.at - logged;
    assert!(
        flush >= Duration::from_secs(2) && flush < Duration::from_secs(3),
        "first batch after {flush:?}, the flush delay is 2 s"
    );
    let jittered = next().await;
    let gap = jittered.at - first.at;
    assert!(
        (Duration::from_secs(30)..=Duration::from_secs(61)).contains(&gap),
        "retried after {gap:?} without Retry-After; 30-60 s expected"
    );
    let honoured = next().await;
    let gap = honoured.at - jittered.at;
    assert!(
        (Duration::from_secs(7)..Duration::from_secs(8)).contains(&gap),
        "retried after {gap:?}; Retry-After said 7 s"
    );
    let capped = next().await;
    let gap = capped.at - honoured.at;
    assert!(
        (Duration::from_secs(300)..Duration::from_secs(301)).contains(&gap),
        "retried after {gap:?}; Retry-After said an hour, capped at 5 minutes"
    );
    for r in [&first, &jittered, &honoured, &capped] {
        assert_eq!(r.texts(), ["first"]);
    }
    let mut status = agent.upload_status();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.uploaded == 1),
    )
    .await
    .unwrap()
    .unwrap();
    agent.shutdown().await.unwrap();
}
