//! The session recorder's protocol (issue 16), spoken exactly as
//! tailscaled's SSH server speaks it: a `HEAD /v2/record` probe over h2c
//! (HTTP/2 with prior knowledge), a streaming `POST /v2/record` answered
//! at once with `{"ack": n}` frames (also while the session is idle, at
//! least every 5 s, through 35 s of silence), the HTTP/1.1 fallback `POST /record` with `Expect:
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
    // Idle longer than tailscaled's patience: acks keep coming (it gives
    // up after 30 s without one).
    let idle_from = Instant::now();
    let mut idle_acks = 0;
    while idle_from.elapsed() < Duration::from_secs(35) {
        if let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(6), acks.recv()).await {
            assert_eq!(a["ack"].as_u64(), Some(sent.len() as u64), "{a}");
            idle_acks += 1;
        } else {
            panic!("no ack for 6 s while idle");
        }
    }
    assert!(idle_acks >= 5, "{idle_acks}");
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
async fn hostile_bodies_end_with_an_error_and_a_million_tiny_events_are_stored_whole() {
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
    // A header that lies about its size (a 4-billion-cell screen) costs
    // nothing: sizes are data, nothing is allocated by them.
    let liar = HEADER
        .replace("\"width\":80", "\"width\":4294967295")
        .replace("\"height\":24", "\"height\":4294967295");
    let body = format!("{liar}\n[0.1,\"o\",\"hi\"]\n");
    let f = upload(&base, body.clone().into_bytes()).await;
    assert!(error_of(&f).is_empty(), "{f:?}");
    assert_eq!(
        f.last().and_then(|a| a["ack"].as_u64()),
        Some(body.len() as u64)
    );
    // A million tiny events: every byte acknowledged and stored.
    let mut body = format!("{HEADER}\n");
    for i in 0..1_000_000 {
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

/// The stored chunks and end records (not the upload batches' records).
fn recording_records(env: &Env) -> Vec<Value> {
    stored(env)
        .into_iter()
        .filter(|r| r.get("recording").is_some())
        .collect()
}

/// Registers a node (a fresh agent identity) as `hostname`; returns its
/// private ID (hex) and node ID.
async fn node(env: &Env, hostname: &str) -> (String, String) {
    let key = env.auth_key(true, &[]).await;
    let private = tally_proto::PrivateId::generate().to_hex();
    let (s, v) = env
        .call(
            &key,
            Method::POST,
            &format!("/api/v2/agent/{private}"),
            Some(json!({ "hostname": hostname, "os": "linux", "addresses": ["100.64.9.9"] })),
        )
        .await;
    assert!(s == 200 || s == 201, "{s} {v}");
    (
        private,
        v["node"]["id"].as_str().expect("node id").to_owned(),
    )
}

/// What an agent uploads for `tally record`: logtail entries holding the
/// recording's chunks and its end record.
fn agent_body(id: &str, proc_id: u32, cast: &str) -> String {
    let entries = [
        json!({ "logtail": { "proc_id": proc_id, "proc_seq": 1 }, "recording": id, "seq": 1, "offset": 0, "data": cast }),
        json!({ "logtail": { "proc_id": proc_id, "proc_seq": 2 }, "recording": id, "seq": 2, "end": true, "complete": true, "bytes": cast.len(), "reason": "" }),
    ];
    serde_json::to_string(&entries).expect("json")
}

async fn node_upload(env: &Env, private: &str, body: String) -> (u16, Value) {
    let resp = env
        .http
        .post(format!("{}/c/recordings/{private}", env.base))
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until recording `id` is listed; returns it.
async fn listed(env: &Env, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::GET,
                &format!("/api/v2/tailnet/-/recordings/{id}"),
                None,
            )
            .await;
        if s == 200 && v["state"] == "complete" {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never indexed: {s} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_node_uploads_recordings_into_its_own_tailnet_only() {
    let env = env(false).await;
    let (private, node_id) = node(&env, "rec-host").await;
    // The header claims another node: the index names the uploader's.
    let claimed = r#"{"version":2,"width":80,"height":24,"srcNode":"someone-else","srcNodeID":"nOther","localUser":"ada"}"#;
    let cast = format!("{claimed}\n[0.5,\"o\",\"hello\\r\\n\"]\n");
    let (s, v) = node_upload(&env, &private, agent_body("tabc", 7, &cast)).await;
    assert_eq!((s, &v["stored"]), (200, &json!(2)), "{v}");
    let r = listed(&env, "tabc").await;
    assert_eq!(r["srcNode"], "rec-host", "{r}");
    assert_eq!(r["srcNodeID"], node_id.as_str(), "{r}");
    assert_eq!(r["recordedBy"], "tally record", "{r}");
    assert_eq!(r["localUser"], "ada", "{r}");
    assert_eq!(r["bytes"], cast.len(), "{r}");
    // A retry lands once.
    let (s, v) = node_upload(&env, &private, agent_body("tabc", 7, &cast)).await;
    assert_eq!(
        (s, &v["stored"], &v["duplicates"]),
        (200, &json!(0), &json!(2)),
        "{v}"
    );
    let (chunks, _) = cast_of(&recording_records(&env));
    assert_eq!(chunks, cast, "stored once");

    // An instance that is not a registered node is refused, clearly.
    let stranger = tally_proto::PrivateId::generate().to_hex();
    let (s, v) = node_upload(&env, &stranger, agent_body("tdef", 8, &cast)).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a registered node")),
        "{v}"
    );
    // Entries that are not recording records are refused whole.
    let (s, v) = node_upload(
        &env,
        &private,
        r#"[{"logtail":{"proc_id":1,"proc_seq":1},"text":"hi"}]"#.into(),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a recording chunk")),
        "{v}"
    );

    // A node cannot add to another writer's recording: the recorder's
    // recording keeps its own content.
    let theirs = env.add_recording(1).await;
    let before = listed(&env, &theirs).await;
    let (s, _) = node_upload(
        &env,
        &private,
        agent_body(&theirs, 9, "[9.0,\"o\",\"forged\"]\n"),
    )
    .await;
    assert_eq!(s, 200);
    // Indexed in order: once a later recording is listed, the forged one
    // was read (and refused).
    let (s, _) = node_upload(&env, &private, agent_body("tlater", 10, &cast)).await;
    assert_eq!(s, 200);
    listed(&env, "tlater").await;
    assert_eq!(listed(&env, &theirs).await["bytes"], before["bytes"]);
    let (s, v) = env
        .call(OWNER_KEY, Method::GET, "/api/v2/consumers", None)
        .await;
    assert_eq!(s, 200);
    let index = v["consumers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "recording-index"))
        .cloned()
        .expect("the index consumer");
    // The forged chunk and its end record.
    assert_eq!(index["rejected"], 2, "{index}");
    assert!(
        index["recentRejections"]
            .to_string()
            .contains("belongs to another writer"),
        "{index}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_follow_the_tailnets_retention_setting() {
    let env = env(false).await;
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "recordingsRetentionDays": 2 })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["recordingsRetentionDays"], 2, "{v}");
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "recordingsRetentionDays": 0 })),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let id = env.add_recording(1).await;
    assert_eq!(recording_records(&env).len(), 2);
    env.store.seal_now().await.expect("seal");
    let day = 24 * 3600 * 1_000_000_000i64;
    let now = tally_proto::timefmt::now_nanos();
    // A day on, the recording is kept ...
    env.store.enforce_retention(now + day).expect("retention");
    assert_eq!(recording_records(&env).len(), 2, "kept within 2 days");
    // ... three days on, its chunks are deleted like other expired records.
    let r = env
        .store
        .enforce_retention(now + 3 * day)
        .expect("retention");
    assert!(r.records_deleted >= 2, "{r:?}");
    assert!(recording_records(&env).is_empty(), "deleted after 2 days");
    // And a recording past the horizon is hidden from the API.
    let shown = tally_server::api::recordings::visible_from(now + 3 * day, 2);
    assert!(now < shown, "ended before the horizon: hidden");
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/tailnet/-/recordings/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "still within 2 days of now");
    env.stop().await;
}
