//! The session recorder's protocol (issue 16), spoken exactly as
//! tailscaled's SSH server speaks it: a `HEAD /v2/record` probe over h2c
//! (HTTP/2 with prior knowledge), a streaming `POST /v2/record` answered
//! at once with `{"ack": n}` frames (also while the session is idle, at
//! least every 5 s), the HTTP/1.1 fallback `POST /record` with `Expect:
//! 100-continue`; a session cut mid-stream keeps what was acknowledged, a
//! body that is not asciicast gets a final `{"error"}`, and an address
//! that is not allowed is refused.

mod support;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Db, Env, OWNER_KEY, start_with};
use tally_store::Filter;

async fn env(allow_loopback: bool) -> Env {
    start_with(&Db::Sqlite, tempfile::tempdir().expect("dir"), |c| {
        c.recorder_listen = Some("127.0.0.1:0".parse().expect("addr"));
        if allow_loopback {
            c.recorder.allow = vec!["127.0.0.0/8".parse().expect("cidr")];
        }
    })
    .await
}

/// An h2c client, as tailscaled's (`Protocols.SetUnencryptedHTTP2`).
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

const HEADER: &str = r#"{"version":2,"width":80,"height":24,"timestamp":1700000000,"srcNode":"alpha.tail1234.ts.net","srcNodeID":"nAlpha","srcNodeUser":"ada@example.com","sshUser":"root","localUser":"root","connectionID":"c1","env":{"TERM":"xterm-256color"}}"#;

/// Every recording record stored: (body JSON) in log order.
fn stored(env: &Env) -> Vec<Value> {
    let b = env
        .store
        .scan(
            1,
            &Filter {
                collections: vec!["recordings".into()],
                ..Default::default()
            },
            100_000,
            64 << 20,
            i64::MIN,
        )
        .expect("scan");
    b.records
        .iter()
        .map(|r| serde_json::from_slice(&r.rec.body).expect("json"))
        .collect()
}

/// The cast a recording's chunks hold, and its end record.
fn cast_of(records: &[Value]) -> (String, Option<Value>) {
    let mut cast = String::new();
    let mut end = None;
    for r in records {
        if r["end"] == true {
            end = Some(r.clone());
        } else {
            cast.push_str(r["data"].as_str().expect("data"));
        }
    }
    (cast, end)
}

/// Reads `{"ack"}`/`{"error"}` frames from a response body into a channel.
fn frames(resp: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailscaled_session_is_acknowledged_while_idle_and_stored_whole() {
    let env = env(true).await;
    let base = format!("http://{}", env.recorder.expect("recorder on"));
    let client = h2c();
    let probe = client
        .head(format!("{base}/v2/record"))
        .send()
        .await
        .expect("probe");
    assert_eq!(probe.status(), 200);
    assert_eq!(probe.version(), reqwest::Version::HTTP_2, "v2 needs HTTP/2");

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let resp = client
        .post(format!("{base}/v2/record"))
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200, "answered at once");
    let mut acks = frames(resp);
    let mut sent = format!("{HEADER}\n");
    for i in 0..50 {
        sent.push_str(&format!("[{}.5,\"o\",\"line {i}\\r\\n\"]\n", i));
    }
    tx.send(Ok(sent.clone().into_bytes())).await.expect("send");
    // Acknowledged once stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = tokio::time::timeout_at(deadline.into(), acks.recv())
            .await
            .expect("an ack within 10 s")
            .expect("ack stream open");
        if a["ack"].as_u64() == Some(sent.len() as u64) {
            break;
        }
    }
    // Live: the recording is listed in progress and can be watched.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let (s, v) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/recordings", None)
            .await;
        assert_eq!(s, 200, "{v}");
        if let Some(r) = v["recordings"].as_array().and_then(|a| a.first()) {
            assert_eq!(r["state"], "recording", "{r}");
            assert_eq!(r["srcNode"], "alpha.tail1234.ts.net", "{r}");
            assert_eq!(r["sshUser"], "root", "{r}");
            break r["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let live = env
        .http
        .get(format!(
            "{}/api/v2/tailnet/-/recordings/{id}/cast?follow=true",
            env.base
        ))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .expect("follow");
    assert_eq!(live.status(), 200);
    let watched = tokio::spawn(async move { live.text().await.expect("live cast") });
    // Idle: acks keep coming (tailscaled gives up after 30 s without one).
    let idle_from = Instant::now();
    let mut idle_acks = 0;
    while idle_from.elapsed() < Duration::from_secs(11) {
        if let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(6), acks.recv()).await {
            assert_eq!(a["ack"].as_u64(), Some(sent.len() as u64), "{a}");
            idle_acks += 1;
        } else {
            panic!("no ack for 6 s while idle");
        }
    }
    assert!(idle_acks >= 2, "{idle_acks}");
    // More output, a last line without its newline, then the end.
    let tail = "[60.0,\"o\",\"bye\\r\\n\"]";
    tx.send(Ok(tail.as_bytes().to_vec())).await.expect("send");
    drop(tx);
    let mut last = 0;
    while let Some(a) = acks.recv().await {
        assert!(a.get("error").is_none(), "{a}");
        last = a["ack"].as_u64().unwrap_or(last);
    }
    sent.push_str(tail);
    sent.push('\n');
    assert_eq!(last, sent.len() as u64, "the final ack covers everything");
    let (cast, end) = cast_of(&stored(&env));
    assert_eq!(cast, sent, "stored as received");
    let end = end.expect("an end record");
    assert_eq!(end["complete"], true, "{end}");
    // The live view ends with the recording and saw all of it; the file
    // is the one received; reading it is audited.
    let watched = tokio::time::timeout(Duration::from_secs(10), watched)
        .await
        .expect("the live view ends with the recording")
        .expect("task");
    assert_eq!(watched, sent);
    let file = env
        .http
        .get(format!(
            "{}/api/v2/tailnet/-/recordings/{id}/cast",
            env.base
        ))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .expect("cast")
        .text()
        .await
        .expect("body");
    assert_eq!(file, sent);
    let (_, meta) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/tailnet/-/recordings/{id}"),
            None,
        )
        .await;
    assert_eq!(meta["state"], "complete", "{meta}");
    assert_eq!(meta["bytes"], sent.len(), "{meta}");
    let reads = env
        .events_after(&env.tailnet, 0)
        .await
        .into_iter()
        .filter(|e| e["action"] == "READ" && e["target"]["type"] == "RECORDING")
        .count();
    assert_eq!(reads, 2, "the live view and the download");
    env.stop().await;
}

/// A stream of body chunks from a channel.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_sessions_bad_bodies_strangers_and_the_http1_fallback() {
    let env = env(true).await;
    let base = format!("http://{}", env.recorder.expect("recorder on"));
    // Cut mid-stream: what was acknowledged stays; the end says so.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let resp = h2c()
        .post(format!("{base}/v2/record"))
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
        .send()
        .await
        .expect("post");
    let mut acks = frames(resp);
    let first = format!("{HEADER}\n[0.1,\"o\",\"hello\\r\\n\"]\n");
    tx.send(Ok(first.clone().into_bytes())).await.expect("send");
    loop {
        let a = acks.recv().await.expect("ack");
        if a["ack"].as_u64() == Some(first.len() as u64) {
            break;
        }
    }
    tx.send(Err(std::io::Error::other("connection lost")))
        .await
        .expect("send");
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        if let (_, Some(end)) = cast_of(&stored(&env)) {
            break end;
        }
        assert!(Instant::now() < deadline, "no end record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(end["complete"], false, "{end}");
    assert_eq!(end["bytes"], first.len(), "{end}");

    // Not asciicast: a final error frame.
    let resp = h2c()
        .post(format!("{base}/v2/record"))
        .body("this is not asciicast\n")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let mut f = frames(resp);
    let mut error = None;
    while let Some(v) = f.recv().await {
        if let Some(e) = v.get("error") {
            error = Some(e.clone());
        }
    }
    let error = error.expect("an error frame");
    assert!(
        error.as_str().unwrap_or_default().contains("not asciicast"),
        "{error}"
    );

    // The HTTP/1.1 fallback with Expect: 100-continue.
    let body = format!("{HEADER}\n[0.5,\"o\",\"v1\\r\\n\"]\n");
    let resp = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
        .post(format!("{base}/record"))
        .header("expect", "100-continue")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert!(
        stored(&env)
            .iter()
            .any(|r| r["data"].as_str().is_some_and(|d| d.contains("v1\\r\\n"))),
        "the v1 recording is stored"
    );
    env.stop().await;

    // An address that is neither a node's nor allowed: refused.
    let env = self::env(false).await;
    let base = format!("http://{}", env.recorder.expect("recorder on"));
    let resp = h2c()
        .head(format!("{base}/v2/record"))
        .send()
        .await
        .expect("probe");
    assert_eq!(resp.status(), 403);
    let resp = h2c()
        .post(format!("{base}/v2/record"))
        .body(json!({"version": 2}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    assert!(stored(&env).is_empty());
    env.stop().await;
}

/// Sends `body` as one recording over h2c; answers the frames received.
async fn upload(base: &str, body: Vec<u8>) -> Vec<Value> {
    let resp = h2c()
        .post(format!("{base}/v2/record"))
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let mut f = frames(resp);
    let mut all = Vec::new();
    while let Some(v) = f.recv().await {
        all.push(v);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_end_with_an_error_and_many_tiny_events_are_stored_whole() {
    let env = env(true).await;
    let base = format!("http://{}", env.recorder.expect("recorder on"));
    let error_of = |frames: &[Value]| {
        frames
            .iter()
            .find_map(|f| f["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    // A line longer than 1 MiB.
    let mut body = format!("{HEADER}\n[0.1,\"o\",\"").into_bytes();
    body.extend(std::iter::repeat_n(b'x', 2 << 20));
    let f = upload(&base, body).await;
    assert!(error_of(&f).contains("longer than"), "{f:?}");
    // Output that is not UTF-8.
    let mut body = format!("{HEADER}\n").into_bytes();
    body.extend_from_slice(b"[0.1,\"o\",\"\xff\xfe\"]\n");
    let f = upload(&base, body).await;
    assert!(error_of(&f).contains("not UTF-8"), "{f:?}");
    // Escape sequences are data like any other.
    let body = format!("{HEADER}\n[0.1,\"o\",\"\\u001b[31mred\\u001b[0m\\u0007\"]\n");
    let f = upload(&base, body.clone().into_bytes()).await;
    assert!(error_of(&f).is_empty(), "{f:?}");
    assert_eq!(
        f.last().and_then(|a| a["ack"].as_u64()),
        Some(body.len() as u64)
    );
    // Many tiny events: every byte acknowledged and stored.
    let mut body = format!("{HEADER}\n");
    for i in 0..100_000 {
        body.push_str(&format!(
            "[{}.{:03},\"o\",\"{}\"]\n",
            i / 1000,
            i % 1000,
            i % 10
        ));
    }
    let f = upload(&base, body.clone().into_bytes()).await;
    assert!(error_of(&f).is_empty(), "{f:?}");
    assert_eq!(
        f.last().and_then(|a| a["ack"].as_u64()),
        Some(body.len() as u64)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/recordings", None)
            .await;
        assert_eq!(s, 200);
        if v["recordings"].as_array().is_some_and(|a| {
            a.iter()
                .any(|r| r["bytes"] == body.len() && r["state"] == "complete")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.stop().await;
}
