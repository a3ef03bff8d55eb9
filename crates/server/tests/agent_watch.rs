//! The agent API's long poll (`POST /api/v2/agent/{id}?wait=N&version=V`)
//! and flow uploads while flow logging is off.
//!
//! A held poll is answered when the tailnet's settings change (not at its
//! wait's end; also when another server changed them), answers at once when the agent's version is stale, returns
//! the same version at its wait's end when nothing changed, registers and
//! audits nothing, and ends at once when the server shuts down. A signed
//! `tailtraffic` batch sent while flow logging is off is checked, answered
//! as final and not stored but for its batch record (which lists the
//! discarded records), so the next batch continues the chain.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Db, Env, OWNER_KEY, start};
use tally_server::ingest::batches::BatchRecord;
use tally_store::{Filter, kind};
use tally_transparency::batch::{BatchSigner, ChainState, generate_signing_key};

/// Only against hangs: every awaited answer comes long before.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Registers a fresh agent identity; returns its private ID (hex) and the
/// first answer.
async fn register(env: &Env, hostname: &str) -> (String, Value) {
    let ak = env.auth_key(true, &[]).await;
    let private = tally_proto::PrivateId::generate().to_hex();
    let (s, v) = env
        .call(
            &ak,
            Method::POST,
            &format!("/api/v2/agent/{private}"),
            Some(json!({ "hostname": hostname, "os": "linux", "addresses": ["100.64.9.1"] })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (private, v)
}

/// One long poll; returns the status and the answer.
async fn poll(
    http: reqwest::Client,
    base: String,
    private: String,
    wait: u64,
    version: String,
) -> (u16, Value) {
    let resp = http
        .post(format!(
            "{base}/api/v2/agent/{private}?wait={wait}&version={version}"
        ))
        .json(&json!({}))
        .send()
        .await
        .expect("poll sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("poll answer");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until `n` long polls of the tailnet are held by the server.
async fn until_held(env: &Env, n: usize) {
    tokio::time::timeout(HANG_GUARD, async {
        while env.catalog.agent_waiters(&env.tailnet) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the long poll is held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_answer_setting_changes_at_once_and_nothing_else() {
    let env = start(&Db::Sqlite).await;
    let (private, first) = register(&env, "watcher").await;
    let version = first["version"].as_str().expect("version").to_owned();
    assert_eq!(first["settings"]["networkFlowLoggingOn"], false, "{first}");
    let spawn_poll = |wait: u64, version: &str| {
        tokio::spawn(poll(
            env.http.clone(),
            env.base.clone(),
            private.clone(),
            wait,
            version.to_owned(),
        ))
    };
    let audited = env.head_seq(&env.tailnet).await;

    // A wait that is not whole seconds, or a parameter no agent sends: 400
    // saying what is expected.
    for (query, says) in [
        ("wait=-1&version=x", "whole seconds"),
        ("wait=5&since=1", "known: wait, version"),
    ] {
        let resp = env
            .http
            .post(format!("{}/api/v2/agent/{private}?{query}", env.base))
            .json(&json!({}))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 400, "{query}");
        let text = resp.text().await.expect("answer");
        assert!(text.contains(says), "{query}: {text}");
    }

    // Nothing changes: the poll ends at its wait's end with the same version.
    let (s, same) = tokio::time::timeout(HANG_GUARD, spawn_poll(1, &version))
        .await
        .expect("answered")
        .expect("poll task");
    assert_eq!(s, 200, "{same}");
    assert_eq!(same["version"], version.as_str(), "{same}");
    assert_eq!(same["node"]["id"], first["node"]["id"]);

    // A stale version is answered at once (wait longer than the guard).
    let (s, now) = tokio::time::timeout(HANG_GUARD, spawn_poll(25, "stale"))
        .await
        .expect("answered")
        .expect("poll task");
    assert_eq!(s, 200, "{now}");
    assert_eq!(now["version"], version.as_str(), "{now}");

    // A held poll is answered by the switch, with the new setting.
    let held = spawn_poll(25, &version);
    until_held(&env, 1).await;
    env.set_flow_logging(true).await;
    let (s, on) = tokio::time::timeout(HANG_GUARD, held)
        .await
        .expect("answered")
        .expect("poll task");
    assert_eq!(s, 200, "{on}");
    assert_eq!(on["settings"]["networkFlowLoggingOn"], true, "{on}");
    let on_version = on["version"].as_str().expect("version").to_owned();
    assert_ne!(on_version, version);

    // A change written to the control database by another server (here:
    // straight to the database, past this server's handlers) wakes a held
    // poll at this server's next periodic catalog reload.
    let held = spawn_poll(25, &on_version);
    until_held(&env, 1).await;
    let mut patch = serde_json::Map::new();
    patch.insert("networkFlowLoggingOn".into(), json!(false));
    env.control
        .update_settings(
            &env.tailnet,
            &tally_server::control::audit::AuditContext::system(),
            &patch,
        )
        .await
        .expect("settings written");
    let (s, off) = tokio::time::timeout(HANG_GUARD, held)
        .await
        .expect("answered")
        .expect("poll task");
    assert_eq!(s, 200, "{off}");
    assert_eq!(off["settings"]["networkFlowLoggingOn"], false, "{off}");
    assert_eq!(off["version"], version.as_str(), "{off}");
    env.set_flow_logging(true).await;

    // A new peer wakes a held poll too, and the answer lists it.
    let held = spawn_poll(25, &on_version);
    until_held(&env, 1).await;
    let peer = env.register(&env.auth_key(true, &[]).await, "peer").await;
    let (s, with_peer) = tokio::time::timeout(HANG_GUARD, held)
        .await
        .expect("answered")
        .expect("poll task");
    assert_eq!(s, 200, "{with_peer}");
    assert!(
        with_peer["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .any(|p| p["nodeId"] == peer.as_str()),
        "{with_peer}"
    );
    let peer_version = with_peer["version"].as_str().expect("version").to_owned();

    // Long polls register, report and audit nothing: the events since are
    // the setting change and the peer's registration (and its key) only.
    let watcher = first["node"]["id"].as_str().expect("node id");
    let events = env.events_after(&env.tailnet, audited).await;
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| !e.to_string().contains(watcher)),
        "{events:?}"
    );
    // An ordinary report gets the same version as the poll.
    let resp = env
        .http
        .post(format!("{}/api/v2/agent/{private}", env.base))
        .json(&json!({ "hostname": "watcher", "os": "linux", "addresses": ["100.64.9.1"] }))
        .send()
        .await
        .expect("report sent");
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.expect("report answer");
    assert_eq!(report["version"], peer_version.as_str(), "{report}");

    // An instance that is not registered: 401, and a one-off auth key
    // sent along is not spent.
    let one_off = env.auth_key(false, &[]).await;
    let stranger = tally_proto::PrivateId::generate().to_hex();
    let resp = env
        .http
        .post(format!(
            "{}/api/v2/agent/{stranger}?wait=1&version=x",
            env.base
        ))
        .bearer_auth(&one_off)
        .json(&json!({ "hostname": "stranger" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    let (s, v) = env
        .call(
            &one_off,
            Method::POST,
            &format!("/api/v2/agent/{stranger}"),
            Some(json!({ "hostname": "stranger", "addresses": ["100.64.9.2"] })),
        )
        .await;
    assert_eq!(s, 201, "the one-off key still registers: {v}");

    // A held poll ends as soon as the server shuts down, with an answer
    // (of the version it was sent: the stranger is a new peer).
    let (_, now) = tokio::time::timeout(HANG_GUARD, spawn_poll(25, "stale"))
        .await
        .expect("answered")
        .expect("poll task");
    let latest = now["version"].as_str().expect("version").to_owned();
    assert_ne!(latest, peer_version);
    let held = spawn_poll(25, &latest);
    until_held(&env, 1).await;
    let stopped = tokio::spawn(env.stop());
    let (s, last) = tokio::time::timeout(HANG_GUARD, held)
        .await
        .expect("answered")
        .expect("poll task");
    assert_eq!(s, 200, "{last}");
    assert_eq!(last["version"], latest.as_str(), "{last}");
    tokio::time::timeout(HANG_GUARD, stopped)
        .await
        .expect("stopped")
        .expect("stop task");
}

/// The batch records stored for `tailtraffic`, in store order.
fn flow_batch_records(env: &Env) -> Vec<BatchRecord> {
    let filter = Filter {
        kinds: vec![kind::BATCH],
        collections: vec!["tailtraffic".into()],
        ..Filter::default()
    };
    let batch = env
        .store
        .scan(
            1,
            &filter,
            1000,
            16 << 20,
            tally_proto::timefmt::now_nanos(),
        )
        .expect("scan");
    batch
        .records
        .iter()
        .map(|r| serde_json::from_slice(&r.rec.body).expect("batch record"))
        .collect()
}

/// The flow entries stored (kind LOG in `tailtraffic`).
fn flow_entries(env: &Env) -> usize {
    let filter = Filter {
        kinds: vec![kind::LOG],
        collections: vec!["tailtraffic".into()],
        ..Filter::default()
    };
    env.store
        .scan(
            1,
            &filter,
            1000,
            16 << 20,
            tally_proto::timefmt::now_nanos(),
        )
        .expect("scan")
        .records
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_batches_sent_while_flow_logging_is_off_keep_the_chain() {
    let env = start(&Db::Sqlite).await;
    let (private, first) = register(&env, "capturer").await;
    let node_id = first["node"]["id"].as_str().expect("node").to_owned();
    let instance = tally_proto::PrivateId::parse(&private)
        .expect("private")
        .public()
        .to_hex();
    let signer =
        BatchSigner::new(generate_signing_key(), &instance, "tailtraffic").expect("signer");
    let mut state = ChainState::GENESIS;
    let record = |seq: u64, second: u32| {
        format!(
            r#"[{{"logtail":{{"proc_id":7,"proc_seq":{seq}}},"nodeId":"{node_id}","start":"2026-01-01T00:00:{second:02}Z","end":"2026-01-01T00:00:{:02}Z"}}]"#,
            second + 5
        )
    };
    // Signs and sends the next batch of the chain; returns the status, the
    // verdict and discarded headers and the answer.
    let send = async |body: String, state: &mut ChainState| {
        let b = signer.sign(state, body.as_bytes()).expect("sign");
        *state = b.next_state();
        let mut req = env
            .http
            .post(format!("{}/c/tailtraffic/{private}", env.base))
            .body(body);
        for (k, v) in b.headers() {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("sent");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (verdict, discarded) = (header("tally-batch-verdict"), header("tally-discarded"));
        let status = resp.status().as_u16();
        let json: Value = resp.json().await.expect("json answer");
        (status, verdict, discarded, json)
    };

    env.set_flow_logging(true).await;
    let (s, verdict, _, v) = send(record(1, 0), &mut state).await;
    assert_eq!((s, verdict.as_str()), (200, "ok"), "{v}");
    // The entry and its batch record.
    assert_eq!(v["stored"], 2, "{v}");

    // Switched off: checked, answered as final, nothing stored but the
    // batch record.
    env.set_flow_logging(false).await;
    let (s, verdict, discarded, v) = send(record(2, 5), &mut state).await;
    assert_eq!((s, verdict.as_str()), (200, "ok"), "{v}");
    assert_eq!(discarded, "1");
    assert_eq!(
        v,
        json!({ "stored": 1, "duplicates": 0, "discarded": 1, "reason": "flow_logging_off" })
    );
    assert_eq!(flow_entries(&env), 1);

    // Switched on again: the chain goes on, no gap.
    env.set_flow_logging(true).await;
    let (s, verdict, discarded, v) = send(record(3, 10), &mut state).await;
    assert_eq!(
        (s, verdict.as_str(), discarded.as_str()),
        (200, "ok", ""),
        "{v}"
    );
    assert_eq!(v["stored"], 2, "{v}");
    assert_eq!(flow_entries(&env), 2);

    let batches = flow_batch_records(&env);
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b.verdict == "ok" && b.advanced));
    assert_eq!(
        batches.iter().map(|b| b.entries).collect::<Vec<_>>(),
        [1, 0, 1]
    );
    let off = &batches[1];
    assert_eq!(off.discard_reason.as_deref(), Some("flow_logging_off"));
    assert_eq!(off.discarded.len(), 1);
    let d = off.discarded[0];
    assert_eq!((d.proc_id, d.proc_seq), (7, 2));
    let t = |s: &str| {
        u64::try_from(tally_proto::timefmt::parse_rfc3339(s).expect("time")).expect("positive")
    };
    assert_eq!(
        (d.start, d.end),
        (t("2026-01-01T00:00:05Z"), t("2026-01-01T00:00:10Z"))
    );
    assert!(batches[0].discarded.is_empty() && batches[0].discard_reason.is_none());

    // Nothing flagged: the verify report's batch check is clean.
    let (s, integrity) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/logging/integrity",
            None,
        )
        .await;
    assert_eq!(s, 200, "{integrity}");
    assert_eq!(integrity["batchesChecked"], 3, "{integrity}");
    assert_eq!(integrity["batchesDiscarded"], 1, "{integrity}");
    assert_eq!(integrity["recordsDiscarded"], 1, "{integrity}");
    assert_eq!(integrity["flagged"], json!([]), "{integrity}");

    // A real gap is still one, flow logging off or on.
    env.set_flow_logging(false).await;
    let lost = signer.sign(&state, record(4, 15).as_bytes()).expect("sign");
    state = lost.next_state();
    let (s, verdict, discarded, v) = send(record(5, 20), &mut state).await;
    assert_eq!(
        (s, verdict.as_str(), discarded.as_str()),
        (200, "gap", "1"),
        "{v}"
    );
    let (_, integrity) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/logging/integrity",
            None,
        )
        .await;
    let flagged = integrity["flagged"].as_array().expect("flagged");
    assert_eq!(flagged.len(), 1, "{integrity}");
    assert_eq!(flagged[0]["verdict"], "gap");

    // An instance that is no registered node still gets 403.
    let stranger = tally_proto::PrivateId::generate().to_hex();
    let resp = env
        .http
        .post(format!("{}/c/tailtraffic/{stranger}", env.base))
        .body(record(1, 0))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 403);
    env.stop().await;
}
