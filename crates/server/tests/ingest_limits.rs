//! What an anonymous or greedy uploader can do to a server, and what a
//! reader is told when the store cannot give everything: budgets stop
//! floods of fresh instances (429 with Retry-After) with the disk growth
//! bounded, a tailnet's budget stops it alone, `--registered-only` refuses
//! unclaimed instances, and an answer that skipped a damaged block says so.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use support::{Db, Env, OWNER_KEY, start_in, start_with};

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = e.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&e.path())
        } else {
            meta.len()
        };
    }
    total
}

async fn upload(env: &Env, private: &str, body: &Value) -> (u16, Option<String>, Value) {
    let resp = env
        .http
        .post(format!("{}/c/tailnode/{private}", env.base))
        .json(body)
        .send()
        .await
        .expect("upload sent");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

fn chunk(kib: usize) -> Value {
    json!([{ "text": "x".repeat(kib << 10) }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_fresh_instances_stops_at_the_unclaimed_budget() {
    const BUDGET: u64 = 2 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = start_with(&Db::Sqlite, dir, |c| c.unclaimed_budget_bytes = BUDGET).await;
    let store = env.dir.path().join("store");
    let before = dir_bytes(&store);
    // 16 clients, a fresh private ID for every upload (so no per-instance
    // cap applies), 100 KiB each, until each has been refused.
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (http, base) = (env.http.clone(), env.base.clone());
        clients.push(tokio::spawn(async move {
            let mut stored = 0u64;
            for _ in 0..100 {
                let private = tally_proto::PrivateId::generate().to_hex();
                let resp = http
                    .post(format!("{base}/c/tailnode/{private}"))
                    .json(&chunk(100))
                    .send()
                    .await
                    .expect("upload sent");
                match resp.status().as_u16() {
                    200 => stored += 1,
                    429 => {
                        let retry = resp.headers().get("retry-after").cloned();
                        let v: Value = resp.json().await.expect("JSON error");
                        return (stored, retry, v);
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
            panic!("never refused after 100 uploads of 100 KiB");
        }));
    }
    let mut accepted = 0;
    for c in clients {
        let (stored, retry, v) = c.await.expect("client");
        accepted += stored;
        let retry: u64 = retry
            .expect("Retry-After")
            .to_str()
            .expect("ascii")
            .parse()
            .expect("integer seconds");
        assert!(retry > 0);
        let msg = v["error"].as_str().expect("error message");
        assert!(
            msg.contains("budget") && msg.contains("--auth-key"),
            "{msg}"
        );
    }
    // Together they stored no more than the budget: 20 uploads of 100 KiB
    // fill 2 MiB; the entries' own overhead makes it a little fewer.
    assert!((16..=20).contains(&accepted), "{accepted} uploads accepted");
    let grown = dir_bytes(&store) - before;
    assert!(
        grown <= BUDGET + (64 << 10),
        "the store grew {grown} bytes for a budget of {BUDGET}"
    );
    // Tenants are not affected: the owner's adopted instance still uploads.
    let own = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &own).await;
    let (s, _, v) = upload(&env, &own, &chunk(100)).await;
    assert_eq!(s, 200, "{v}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailnet_budget_stops_that_tailnet_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = start_with(&Db::Sqlite, dir, |c| c.tailnet_budget_bytes = Some(1 << 20)).await;
    let own = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &own).await;
    let mut accepted = 0;
    let (retry, v) = loop {
        let (s, retry, v) = upload(&env, &own, &chunk(100)).await;
        match s {
            200 => accepted += 1,
            429 => break (retry, v),
            other => panic!("unexpected {other}: {v}"),
        }
        assert!(accepted <= 10, "never refused");
    };
    assert!((8..=10).contains(&accepted), "{accepted}");
    assert!(retry.is_some());
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("ingest budget"),
        "{v}"
    );
    // Another tailnet's node is not affected.
    let (s, created) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnets",
            Some(json!({ "name": "other.example" })),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    let other_key = created["ownerKey"]["key"].as_str().expect("key").to_owned();
    let (s, auth) = env
        .call(
            &other_key,
            Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "capabilities": { "devices": { "create": { "reusable": true } } } })),
        )
        .await;
    assert_eq!(s, 200, "{auth}");
    let node = tally_proto::PrivateId::generate().to_hex();
    let resp = env
        .http
        .post(format!("{}/api/v2/agent/{node}", env.base))
        .bearer_auth(auth["key"].as_str().expect("auth key"))
        .json(&json!({ "hostname": "other-1", "addresses": ["100.64.9.1"] }))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), 201, "registered");
    let (s, _, v) = upload(&env, &node, &chunk(100)).await;
    assert_eq!(s, 200, "{v}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_only_refuses_unclaimed_instances_with_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = start_with(&Db::Sqlite, dir, |c| c.registered_only = true).await;
    let stray = tally_proto::PrivateId::generate().to_hex();
    let (s, _, v) = upload(&env, &stray, &json!({ "text": "hi" })).await;
    assert_eq!(s, 403, "{v}");
    let msg = v["error"].as_str().expect("error");
    assert!(
        msg.contains("--auth-key") && msg.contains("POST /instances"),
        "{msg}"
    );
    env.adopt("tailnode", &stray).await;
    let (s, _, v) = upload(&env, &stray, &json!({ "text": "hi" })).await;
    assert_eq!(s, 200, "{v}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_skipped_a_damaged_block_says_it_is_incomplete() {
    let tune = |c: &mut tally_server::ServerConfig| {
        let mut store = tally_store::StoreConfig::new(c.data_dir.join("store"));
        store.segment_max_bytes = 64 << 10;
        store.block_target_bytes = 16 << 10;
        c.store = Some(store);
    };
    let env = start_with(&Db::Sqlite, tempfile::tempdir().expect("tempdir"), tune).await;
    let own = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &own).await;
    for i in 0..40 {
        let body: Vec<Value> = (0..10)
            .map(|j| json!({ "text": format!("entry {i}-{j} {}", "y".repeat(500)) }))
            .collect();
        let (s, _, v) = upload(&env, &own, &json!(body)).await;
        assert_eq!(s, 200, "{v}");
    }
    let store = env.dir.path().join("store");
    let sealed = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("store dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tsb"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let segment = loop {
        if let Some(p) = sealed(&store) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "nothing was sealed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let dir = env.stop_keep().await;
    // Damage the first block's compressed bytes (after the file's magic).
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes[64] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("write segment");
    let env = start_in(&Db::Sqlite, dir).await;
    let (s, v) = env
        .call(OWNER_KEY, Method::GET, "/c/tailnode?max-count=10000", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let missing = v["incomplete"].as_array().expect("incomplete is said");
    assert_eq!(missing.len(), 1, "{}", v["incomplete"]);
    let (from, to) = (
        missing[0]["from"].as_u64().expect("from"),
        missing[0]["to"].as_u64().expect("to"),
    );
    assert!(from <= to && missing[0]["reason"].is_string());
    let count = v["count"].as_u64().expect("count");
    assert!(count < 400 && count > 0, "{count}");
    // A live stream from the start says it too, on a line of its own.
    let mut resp = env
        .http
        .get(format!("{}/c/tailnode", env.base))
        .bearer_auth(OWNER_KEY)
        .query(&[("stream", "true"), ("time-start", "1970-01-01T00:00:00Z")])
        .send()
        .await
        .expect("stream");
    let mut seen = String::new();
    while !seen.contains("\"incomplete\"") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), resp.chunk())
            .await
            .expect("a chunk within 30 s")
            .expect("read")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The server shuts down gracefully: it waits for open streams.
    drop(resp);
    env.stop().await;
}

/// A client that starts a request and never finishes its headers is cut
/// off (slow-header clients cannot hold connections forever); a complete
/// request on the next connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = std::time::Duration::from_secs(2);
    let env = start_with(&Db::Sqlite, tempfile::tempdir().expect("tempdir"), |c| {
        c.header_read_timeout = timeout;
    })
    .await;
    let addr = env.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n")
        .await
        .expect("partial headers");
    // The server closes the connection (possibly after a 408 answer); a
    // server without a header timeout would keep it open past the deadline.
    let mut buf = Vec::new();
    let limit = timeout * 15;
    let read = tokio::time::timeout(limit, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after {limit:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // A new client (the test's pooled connection was idle past the limit
    // and was closed too).
    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    env.stop().await;
}
