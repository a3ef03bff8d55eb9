//! Streaming to Splunk HEC (issue 14), against a test receiver that
//! enforces HEC's documented protocol strictly (no real Splunk runs here):
//! `POST /services/collector/event`, `Authorization: Splunk <token>` (401
//! code 2 without it, 401 code 3 malformed, 403 code 4 for a wrong token),
//! a body of concatenated JSON envelopes each with `time`, `host`,
//! `source`, `sourcetype` and an object `event` (400 code 6 otherwise),
//! `{"text":"Success","code":0}` on success.
//!
//! Configured through Tailscale's API (PUT .../logging/configuration/stream),
//! the receiver first answers 429 with `Retry-After` and a 503, then
//! accepts; the server is killed with `kill -9` mid-stream and restarted.
//! Every audit event made reaches the receiver, in order, duplicates at
//! most one batch; the status counts requests and failures; the token
//! never appears in an answer or the audit log.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{KEY, TestServer, get_json, http};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "11111111-2222-3333-4444-555555555555";

/// What the receiver saw, and how it answers next.
#[derive(Default)]
struct Receiver {
    /// Events accepted, in arrival order.
    events: Vec<Value>,
    /// Answers to give before accepting again: (status, Retry-After).
    faults: Vec<(u16, Option<u64>)>,
    requests: u64,
    refused: Vec<String>,
}

fn hec_error(status: StatusCode, code: u32, text: &str) -> axum::response::Response {
    (status, axum::Json(json!({ "text": text, "code": code }))).into_response()
}

async fn collector(
    axum::extract::State(r): axum::extract::State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let mut rx = r.lock();
    rx.requests += 1;
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        rx.refused.push("no authorization".into());
        return hec_error(StatusCode::UNAUTHORIZED, 2, "Token is required");
    };
    let Some(token) = auth.strip_prefix("Splunk ") else {
        rx.refused.push(format!("malformed authorization {auth:?}"));
        return hec_error(StatusCode::UNAUTHORIZED, 3, "Invalid authorization");
    };
    if token != TOKEN {
        rx.refused.push("wrong token".into());
        return hec_error(StatusCode::FORBIDDEN, 4, "Invalid token");
    }
    if !rx.faults.is_empty() {
        let (status, after) = rx.faults.remove(0);
        let mut resp = hec_error(
            StatusCode::from_u16(status).expect("status"),
            9,
            "Server is busy",
        );
        if let Some(a) = after {
            resp.headers_mut()
                .insert("retry-after", a.to_string().parse().expect("header"));
        }
        return resp;
    }
    // Concatenated envelopes, each complete.
    let mut got = Vec::new();
    for v in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let Ok(v) = v else {
            rx.refused.push("invalid JSON".into());
            return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        };
        let ok = v["time"].is_number()
            && v["host"].is_string()
            && v["source"].is_string()
            && v["sourcetype"] == "tailscale:configuration"
            && v["event"].is_object();
        if !ok {
            rx.refused.push(format!("bad envelope {v}"));
            return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
        got.push(v["event"].clone());
    }
    if got.is_empty() {
        return hec_error(StatusCode::BAD_REQUEST, 5, "No data");
    }
    rx.events.extend(got);
    (
        StatusCode::OK,
        axum::Json(json!({ "text": "Success", "code": 0 })),
    )
        .into_response()
}

async fn start_receiver(state: Arc<Mutex<Receiver>>) -> String {
    let app = axum::Router::new()
        .route("/services/collector/event", axum::routing::post(collector))
        .with_state(state);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}/services/collector/event")
}

async fn call(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = http()
        .request(method, format!("{url}{path}"))
        .bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let s = resp.status().as_u16();
    (s, resp.text().await.unwrap_or_default())
}

/// Makes `n` audited changes (API keys with expiry; each its own event).
async fn changes(url: &str, from: usize, n: usize) {
    for i in from..from + n {
        let (s, v) = call(
            url,
            reqwest::Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "keyType": "api", "description": format!("change {i}"), "expirySeconds": 3600 })),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
}

/// The change numbers the receiver got, in arrival order.
fn changes_seen(rx: &Receiver) -> Vec<usize> {
    rx.events
        .iter()
        .filter_map(|e| {
            e["target"]["name"]
                .as_str()?
                .strip_prefix("change ")?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_hec_once_in_order_through_faults_and_kill_9() {
    let rx = Arc::new(Mutex::new(Receiver::default()));
    let hec = start_receiver(rx.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = TestServer::start_on(dir.path(), &listen, &[]);
    let url = server.url.clone();

    // Tailscale's API: unknown fields refused, the token write-only.
    let (s, v) = call(
        &url,
        reqwest::Method::PUT,
        "/api/v2/tailnet/-/logging/configuration/stream",
        Some(json!({ "destinationType": "splunk", "url": hec, "token": TOKEN, "colour": "red" })),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        &url,
        reqwest::Method::PUT,
        "/api/v2/tailnet/-/logging/configuration/stream",
        Some(json!({ "destinationType": "splunk", "url": "http://splunk.example.com/services/collector/event", "token": TOKEN })),
    )
    .await;
    assert_eq!(s, 400, "plain http to a public host: {v}");
    rx.lock().faults = vec![(429, Some(1)), (503, None)];
    let (s, v) = call(
        &url,
        reqwest::Method::PUT,
        "/api/v2/tailnet/-/logging/configuration/stream",
        Some(json!({ "destinationType": "splunk", "url": hec, "token": TOKEN, "uploadPeriodMinutes": 0, "compressionFormat": "none" })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let config = get_json(&format!(
        "{url}/api/v2/tailnet/-/logging/configuration/stream"
    ))
    .await;
    assert_eq!(config["destinationType"], "splunk", "{config}");
    assert_eq!(config["logType"], "configuration", "{config}");
    assert!(config.get("token").is_none(), "{config}");

    changes(&url, 0, 30).await;
    // Kill -9 as soon as part of it arrived, restart, and go on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while changes_seen(&rx.lock()).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "nothing arrived: {:?}",
            rx.lock().refused
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The faults show in the status before the kill (the counters are
    // saved with the position, so a kill -9 may roll them back to the
    // last saved batch).
    let st = get_json(&format!(
        "{url}/api/v2/tailnet/-/logging/configuration/stream/status"
    ))
    .await;
    assert!(st["numFailedRequests"].as_u64() >= Some(2), "{st}");
    server.kill9();
    let server = TestServer::start_on(dir.path(), &listen, &[]);
    changes(&server.url, 30, 30).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = changes_seen(&rx.lock());
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique == (0..60).collect::<Vec<_>>() {
            // In order (a redelivered batch repeats a run already seen).
            let firsts: Vec<usize> = seen
                .iter()
                .enumerate()
                .filter(|(i, n)| !seen[..*i].contains(n))
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(firsts, unique, "out of order: {seen:?}");
            assert!(seen.len() - unique.len() <= 2000, "more than a batch again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every change arrived: {} of 60; refused: {:?}",
            unique.len(),
            rx.lock().refused
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.lock().refused.is_empty(), "{:?}", rx.lock().refused);

    // Status: Tailscale's fields, the faults counted, no error now.
    let st = get_json(&format!(
        "{url}/api/v2/tailnet/-/logging/configuration/stream/status"
    ))
    .await;
    for k in [
        "lastActivity",
        "lastError",
        "maxBodySize",
        "numBytesSent",
        "numEntriesSent",
        "numSpoofedEntries",
        "numTotalRequests",
        "numFailedRequests",
        "rateBytesSent",
        "rateEntriesSent",
        "rateTotalRequests",
        "rateFailedRequests",
    ] {
        assert!(st.get(k).is_some(), "no {k} in {st}");
    }
    assert_eq!(st["lastError"], "", "{st}");
    assert!(st["numEntriesSent"].as_u64() >= Some(1), "{st}");

    // A test event goes through; the token is nowhere in the audit log.
    let (s, v) = call(
        &url,
        reqwest::Method::POST,
        "/api/v2/tailnet/-/logging/configuration/stream/test",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.contains("\"ok\":true"), "{v}");
    let audit = get_json(&format!(
        "{url}/api/v2/tailnet/-/logging/configuration?property=LOGSTREAM_ENDPOINT"
    ))
    .await;
    assert!(
        audit["logs"].as_array().is_some_and(|l| !l.is_empty()),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(TOKEN),
        "the token is in the audit log"
    );

    // A wrong token: lastError says so, the server stays ready.
    let (s, _) = call(
        &url,
        reqwest::Method::PUT,
        "/api/v2/tailnet/-/logging/configuration/stream",
        Some(json!({ "destinationType": "splunk", "url": hec, "token": "wrong" })),
    )
    .await;
    assert_eq!(s, 200);
    changes(&url, 60, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = get_json(&format!(
            "{url}/api/v2/tailnet/-/logging/configuration/stream/status"
        ))
        .await;
        if st["lastError"].as_str().is_some_and(|e| e.contains("403")) {
            break;
        }
        assert!(Instant::now() < deadline, "no 403 in lastError: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = http()
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "a failing destination made the server unready"
    );
    let (s, _) = call(
        &url,
        reqwest::Method::DELETE,
        "/api/v2/tailnet/-/logging/configuration/stream",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v2/tailnet/-/logging/configuration/stream",
        None,
    )
    .await;
    assert_eq!(s, 404);
    drop(server);
}
