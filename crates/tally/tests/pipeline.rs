//! The pipeline on the real binary: metrics scraped by a Prometheus
//! parser, a paused consumer falling behind while the others keep up, a
//! poison record recorded with its position and reason, audit events in
//! the store exactly once across crashes between commit and append, and
//! every consumer's output exactly once across `kill -9` under load.

mod common;

use common::{KEY, TestServer, http, read_all, register_node, reusable_auth_key};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A flow record of `node` with one virtual entry of `pkts` packets.
fn flow_record(node: &str, src_port: u16, pkts: u64) -> Value {
    let end = tally_proto::timefmt::now_nanos();
    json!({
        "nodeId": node,
        "start": tally_proto::timefmt::format_nanos(end - 5_000_000_000),
        "end": tally_proto::timefmt::format_nanos(end),
        "virtualTraffic": [{"proto": 6, "src": format!("100.64.0.1:{src_port}"),
            "dst": "100.64.0.2:22", "txPkts": pkts, "txBytes": pkts * 100}],
    })
}

async fn post_flows(url: &str, private: &str, records: &[Value]) -> reqwest::StatusCode {
    http()
        .post(format!("{url}/c/tailtraffic/{private}"))
        .json(&records)
        .send()
        .await
        .expect("upload")
        .status()
}

async fn call(url: &str, key: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = http()
        .request(method, format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every consumer's status, by name.
async fn consumers(url: &str) -> BTreeMap<String, Value> {
    let (s, v) = call(url, KEY, reqwest::Method::GET, "/api/v2/consumers").await;
    assert_eq!(s, 200, "{v}");
    v["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| (c["name"].as_str().expect("name").to_owned(), c.clone()))
        .collect()
}

/// Polls the consumers' status until `ok` holds (the status is the
/// signal: consumers publish their position as they go).
async fn until_consumers(url: &str, what: &str, ok: impl Fn(&BTreeMap<String, Value>) -> bool) {
    tally_testkit::wait::until(what, Duration::from_secs(60), || async {
        let c = consumers(url).await;
        if ok(&c) {
            Ok(())
        } else {
            Err(format!("{c:#?}"))
        }
    })
    .await
}

fn caught_up(c: &BTreeMap<String, Value>, name: &str) -> bool {
    c[name]["lagRecords"] == 0 && c[name]["state"] == "running"
}

/// `/metrics`, parsed by a Prometheus text parser: `(name, labels)` → value.
async fn scrape(url: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let (s, body) = call(url, KEY, reqwest::Method::GET, "/metrics").await;
    assert_eq!(s, 200, "{body}");
    let text = body.as_str().expect("metrics text").to_owned();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    assert!(!parsed.docs.is_empty(), "every metric has help text");
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let labels: BTreeMap<String, String> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            ((s.metric, labels), v)
        })
        .collect()
}

fn sample(
    m: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    *m.get(&(name.to_owned(), want.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{want:?}"))
}

const CONSUMERS: [&str; 3] = ["flow-index", "transparency-log", "reconciliation"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_paused_consumer_behind_and_a_poison_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(dir.path(), &[]);
    let url = server.url.clone();
    let auth = reusable_auth_key(&url).await;
    let (private, node) = register_node(&url, &auth, "web1", "100.64.0.1").await;
    common::set_flow_logging(&url, true).await;
    assert_eq!(
        post_flows(&url, &private.to_hex(), &[flow_record(&node, 4000, 1)]).await,
        200
    );
    until_consumers(&url, "all caught up", |c| {
        CONSUMERS.iter().all(|n| caught_up(c, n))
    })
    .await;
    let (s, ready) = call(&url, KEY, reqwest::Method::GET, "/readyz").await;
    assert_eq!((s, &ready["ready"]), (200, &json!(true)), "{ready}");

    // Paused, the transparency log falls behind; the others keep up.
    let (s, v) = call(
        &url,
        KEY,
        reqwest::Method::POST,
        "/api/v2/consumers/transparency-log/pause",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for port in 4001..4004 {
        assert_eq!(
            post_flows(&url, &private.to_hex(), &[flow_record(&node, port, 1)]).await,
            200
        );
    }
    until_consumers(&url, "the others caught up, the log paused", |c| {
        caught_up(c, "flow-index")
            && caught_up(c, "reconciliation")
            && c["transparency-log"]["state"] == "paused"
            && c["transparency-log"]["lagRecords"].as_u64() > Some(0)
    })
    .await;
    let m = scrape(&url).await;
    let lag =
        |m: &BTreeMap<_, f64>, c: &str| sample(m, "tally_consumer_lag_records", &[("consumer", c)]);
    assert!(lag(&m, "transparency-log") >= 3.0, "{m:?}");
    assert_eq!(lag(&m, "flow-index"), 0.0);
    assert_eq!(lag(&m, "reconciliation"), 0.0);
    assert_eq!(
        sample(
            &m,
            "tally_consumer_state",
            &[("consumer", "transparency-log"), ("state", "paused")]
        ),
        1.0
    );
    let first_lag_s = sample(
        &m,
        "tally_consumer_lag_seconds",
        &[("consumer", "transparency-log")],
    );
    assert!(first_lag_s > 0.0);
    // The lag grows while it stays paused (and new records keep coming).
    assert_eq!(
        post_flows(&url, &private.to_hex(), &[flow_record(&node, 4004, 1)]).await,
        200
    );
    let m2 = scrape(&url).await;
    assert!(lag(&m2, "transparency-log") > lag(&m, "transparency-log"));
    assert!(
        sample(
            &m2,
            "tally_consumer_lag_seconds",
            &[("consumer", "transparency-log")]
        ) > first_lag_s
    );
    assert!(
        sample(
            &m2,
            "tally_ingest_requests_total",
            &[("collection", "tailtraffic"), ("code", "200")]
        ) >= 5.0
    );
    assert!(
        sample(
            &m2,
            "tally_ingest_entries_total",
            &[("collection", "tailtraffic")]
        ) >= 5.0
    );
    assert!(sample(&m2, "tally_store_fsyncs_total", &[]) >= 1.0);
    assert!(sample(&m2, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(
        sample(
            &m2,
            "tally_http_requests_total",
            &[
                ("route", "/api/v2/consumers/:consumer/pause"),
                ("method", "POST"),
                ("code", "200")
            ]
        ) == 1.0
    );
    // Paused by an operator is still ready.
    let (s, _) = call(&url, KEY, reqwest::Method::GET, "/readyz").await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &url,
        KEY,
        reqwest::Method::POST,
        "/api/v2/consumers/transparency-log/resume",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    until_consumers(&url, "resumed and caught up", |c| {
        caught_up(c, "transparency-log")
    })
    .await;
    // The pause and the resume are in the audit log.
    let (_, audit) = call(
        &url,
        KEY,
        reqwest::Method::GET,
        "/api/v2/tailnet/-/logging/configuration",
    )
    .await;
    let consumer_events: Vec<&Value> = audit["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter(|e| e["target"]["type"] == "CONSUMER")
        .collect();
    assert_eq!(consumer_events.len(), 2, "{audit}");
    assert_eq!(consumer_events[0]["new"], "running");
    assert_eq!(consumer_events[1]["new"], "paused");

    // Only the operator's tailnet may operate the server.
    let created = http()
        .post(format!("{url}/api/v2/tailnets"))
        .bearer_auth(KEY)
        .json(&json!({ "name": "tenant.example" }))
        .send()
        .await
        .expect("create tailnet")
        .json::<Value>()
        .await
        .expect("JSON");
    let tenant_owner = created["ownerKey"]["key"]
        .as_str()
        .expect("owner key")
        .to_owned();
    for (method, path) in [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/api/v2/consumers"),
        (reqwest::Method::POST, "/api/v2/consumers/flow-index/pause"),
    ] {
        let (s, v) = call(&url, &tenant_owner, method, path).await;
        assert_eq!(s, 403, "{path}: {v}");
        assert!(v.to_string().contains("server:operate"), "{v}");
    }
    let (s, v) = call(
        &url,
        KEY,
        reqwest::Method::POST,
        "/api/v2/consumers/nope/pause",
    )
    .await;
    assert_eq!(s, 404, "{v}");

    // A poison record: a tailtraffic record that is not a flow record,
    // written behind ingest's back (as an older version or a bug could).
    server.stop();
    let poison_at = {
        let (store, _) = tally_store::Store::open(
            tally_store::StoreConfig::new(dir.path().join("store")),
            Arc::new(tally_store::KeepForever),
        )
        .expect("open the stopped server's store");
        let owner = {
            // The node's tailnet: the owner of its stored flow records.
            let b = store
                .scan(
                    1,
                    &tally_store::Filter {
                        collections: vec!["tailtraffic".into()],
                        ..Default::default()
                    },
                    1,
                    1 << 20,
                    i64::MIN,
                )
                .expect("scan");
            b.records[0].rec.owner.clone()
        };
        let out = store
            .append(vec![tally_store::NewRecord {
                time: tally_proto::timefmt::now_nanos(),
                collection: "tailtraffic".into(),
                owner,
                instance: private.public().0,
                identity: None,
                client_time: None,
                kind: tally_store::kind::LOG,
                body: br#"{"nodeId": 42, "start": "not a time"}"#.to_vec(),
            }])
            .await
            .expect("append the poison record");
        store.close();
        out.last_seq.expect("stored")
    };
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.clone();
    assert_eq!(
        post_flows(&url, &private.to_hex(), &[flow_record(&node, 4005, 1)]).await,
        200
    );
    until_consumers(&url, "every consumer past the poison record", |c| {
        CONSUMERS.iter().all(|n| caught_up(c, n))
    })
    .await;
    let c = consumers(&url).await;
    for name in ["flow-index", "reconciliation"] {
        assert_eq!(c[name]["rejected"], 1, "{name}: {:#}", c[name]);
        let r = &c[name]["recentRejections"][0];
        assert_eq!(r["position"], poison_at, "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("not a flow record")),
            "{r}"
        );
    }
    assert_eq!(c["transparency-log"]["rejected"], 0);
    let m = scrape(&url).await;
    assert_eq!(
        sample(
            &m,
            "tally_consumer_rejected_records_total",
            &[("consumer", "flow-index")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "tally_consumer_rejected_records_total",
            &[("consumer", "transparency-log")]
        ),
        0.0
    );
    let (s, ready) = call(&url, KEY, reqwest::Method::GET, "/readyz").await;
    assert_eq!(s, 200, "{ready}");
    // The record after the poison one is indexed.
    let (s, flows) = call(
        &url,
        KEY,
        reqwest::Method::GET,
        "/api/v2/tailnet/-/logging/network?start=2020-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(s, 200, "{flows}");
    let ports: BTreeSet<String> = flows["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .flat_map(|r| r["virtualTraffic"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["src"].as_str().map(str::to_owned))
        .collect();
    assert!(ports.contains("100.64.0.1:4005"), "{ports:?}");

    // The same from the terminal.
    let cli = |key: &str, args: &[&str]| {
        std::process::Command::new(common::bin())
            .arg("consumers")
            .args(args)
            .env("TALLY_SERVER", &url)
            .env("TALLY_API_KEY", key)
            .env("TALLY_LOG", "warn")
            .output()
            .expect("run tally consumers")
    };
    let out = cli(KEY, &["list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in CONSUMERS {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{text}"
        );
    }
    let out = cli(KEY, &["show", "flow-index"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && text.contains(&poison_at.to_string())
            && text.contains("not a flow record"),
        "{text}"
    );
    let out = cli(KEY, &["pause", "reconciliation"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reconciliation: paused"),
        "{out:?}"
    );
    let out = cli(KEY, &["resume", "reconciliation"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reconciliation: resumed"),
        "{out:?}"
    );
    let out = cli(&tenant_owner, &["list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server:operate"),
        "{out:?}"
    );
    let out = cli(KEY, &["show", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("flow-index, transparency-log, recording-index, reconciliation"),
        "{out:?}"
    );
}

/// The tailaudit records of the default tailnet: audit sequence number →
/// how many times it is in the store.
async fn audit_copies(url: &str) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in read_all(&http(), url, "tailaudit").await {
        // The event time and group make an event's identity visible here.
        let id = format!(
            "{} {} {} {} {}",
            e["eventTime"],
            e["eventGroupID"],
            e["action"],
            e["target"]["id"],
            e["target"]["property"]
        );
        *n.entry(id).or_default() += 1;
    }
    n
}

/// Waits until every event of the control database is in the store (the
/// outbox publishes no signal a client can await: its copies are read
/// until they are all there); asserts that none is there twice. Returns
/// the copies.
async fn audit_copied_once(url: &str) -> BTreeMap<String, usize> {
    let want = audit_in_sql(url).await;
    tally_testkit::wait::until(
        "every audit event in the store",
        Duration::from_secs(30),
        || async {
            let copies = audit_copies(url).await;
            assert!(
                copies.values().all(|n| *n == 1),
                "an audit event twice: {copies:#?}"
            );
            assert!(copies.len() <= want, "more copies than events: {copies:#?}");
            if copies.len() == want {
                Ok(copies)
            } else {
                Err(format!("{} of {want}", copies.len()))
            }
        },
    )
    .await
}

async fn audit_in_sql(url: &str) -> usize {
    let (s, v) = call(
        url,
        KEY,
        reqwest::Method::GET,
        "/api/v2/tailnet/-/logging/configuration?limit=1000",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["logs"].as_array().expect("logs").len()
}

/// Waits until the outbox saved its position past `events` audit events
/// (one tailnet): a server killed before that copies them again at its
/// next start, and a failpoint would fire there instead of at the change.
async fn outbox_saved(dir: &std::path::Path, events: usize) {
    let path = dir.join("audit-outbox.json");
    tally_testkit::wait::until(
        "the outbox's position saved",
        Duration::from_secs(30),
        || {
            let saved: i64 = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<BTreeMap<String, i64>>(&b).ok())
                .map_or(0, |m| m.values().sum());
            async move {
                if saved >= events as i64 {
                    Ok(())
                } else {
                    Err(format!("saved through {saved} of {events}"))
                }
            }
        },
    )
    .await;
}

/// Starts a server without failpoints, waits until every audit event is
/// copied once and the outbox saved that, then kills it.
async fn copy_all(dir: &std::path::Path) {
    let server = TestServer::start(dir, &[]);
    let copies = audit_copied_once(&server.url).await;
    outbox_saved(dir, copies.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_the_store_exactly_once_across_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_all(dir.path()).await;
    // 1. A change is committed; the server dies before appending it.
    // 2. On the next start the outbox appends it and dies before saving
    //    its position. 3. A start without failpoints copies it (again).
    // 4. A change is committed and appended; the server dies before
    //    saving the position.
    for (failpoint, change) in [
        ("audit-outbox-before-append", Some(31)),
        ("audit-outbox-after-append", None),
        ("", None),
        ("audit-outbox-after-append", Some(32)),
    ] {
        if failpoint.is_empty() {
            copy_all(dir.path()).await;
            continue;
        }
        let mut server = TestServer::start_env(dir.path(), &[], &[("TALLY_FAILPOINTS", failpoint)]);
        let url = server.url.clone();
        if let Some(days) = change {
            let _ = http()
                .patch(format!("{url}/api/v2/tailnet/-/settings"))
                .bearer_auth(KEY)
                .json(&json!({ "logsRetentionDays": days }))
                .send()
                .await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = server.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{failpoint}: the server did not reach the failpoint"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!status.success(), "{failpoint}: the server did not abort");
    }
    let copies = audit_copied_once(&TestServer::start(dir.path(), &[]).url).await;
    let changes: Vec<&String> = copies.keys().filter(|k| k.contains("UPDATE")).collect();
    assert_eq!(changes.len(), 2, "both settings changes: {copies:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_is_exactly_once_across_kill_9_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(dir.path(), &[]);
    let auth = reusable_auth_key(&server.url).await;
    let (private, node) = register_node(&server.url, &auth, "web1", "100.64.0.1").await;
    common::set_flow_logging(&server.url, true).await;
    let mut acked_pkts = 0u64;
    let mut port = 10_000u16;
    for round in 0..6 {
        let url = server.url.clone();
        // Uploads and audited changes race with the kill, which comes
        // once a few uploads of the round were acknowledged.
        let (acks_tx, mut acks) = tokio::sync::watch::channel(0u64);
        let uploads = {
            let (url, private, node) = (url.clone(), private.to_hex(), node.clone());
            let first = port;
            tokio::spawn(async move {
                let mut acked = 0u64;
                for k in 0..200u16 {
                    let rec = flow_record(&node, first + k, 1);
                    match http()
                        .post(format!("{url}/c/tailtraffic/{private}"))
                        .json(&[rec])
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => acked += 1,
                        _ => break,
                    }
                    acks_tx.send_replace(acked);
                }
                acked
            })
        };
        port += 200;
        let _ = http()
            .patch(format!("{url}/api/v2/tailnet/-/settings"))
            .bearer_auth(KEY)
            .json(&json!({ "logsRetentionDays": 20 + round }))
            .send()
            .await;
        let target = 5 + 7 * round as u64;
        let _ = acks.wait_for(|n| *n >= target).await;
        server.kill9();
        acked_pkts += uploads.await.expect("uploads");
        server = TestServer::start(dir.path(), &[]);
    }
    let url = server.url.clone();
    until_consumers(&url, "caught up after the restarts", |c| {
        CONSUMERS.iter().all(|n| caught_up(c, n))
    })
    .await;
    // Flow index: every acknowledged entry once (each carries one packet;
    // the graph sums them). Records stored but not acknowledged (the kill
    // came between fsync and answer) may add some, never fewer.
    let (s, g) = call(
        &url,
        KEY,
        reqwest::Method::GET,
        "/api/v2/tailnet/-/logging/network/graph?start=2020-01-01T00:00:00Z&bucket=100000h",
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let graph_pkts: u64 = g["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .flat_map(|b| b["edges"].as_array().cloned().unwrap_or_default())
        .map(|e| e["txPkts"].as_u64().unwrap_or(0))
        .sum();
    let stored: Vec<Value> = read_all(&http(), &url, "tailtraffic").await;
    assert!(acked_pkts >= 6 * 5, "{acked_pkts} uploads acknowledged");
    assert!(stored.len() as u64 >= acked_pkts);
    assert_eq!(
        graph_pkts,
        stored.len() as u64,
        "the flow index holds each stored record exactly once ({acked_pkts} acknowledged)"
    );
    // Transparency log: one leaf per stored record, none twice, none
    // missing (positions are dense here: nothing was skipped). Records may
    // still be arriving (findings, the outbox): read until the checkpoint
    // and the log's end agree.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, cp) = call(
            &url,
            KEY,
            reqwest::Method::GET,
            "/.well-known/tally/checkpoint",
        )
        .await;
        assert_eq!(s, 200);
        let text = cp.as_str().expect("checkpoint text").to_owned();
        let size: u64 = text
            .lines()
            .nth(1)
            .expect("size line")
            .parse()
            .expect("size");
        let end = consumers(&url).await["transparency-log"]["end"]
            .as_u64()
            .expect("end");
        assert!(size < end, "more leaves ({size}) than records (end {end})");
        if size == end - 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leaves {size}, stored records {}",
            end - 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Audit records: each committed event once.
    audit_copied_once(&url).await;
    // Findings: none twice.
    let findings = read_all(&http(), &url, "findings").await;
    let unique: BTreeSet<String> = findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(unique.len(), findings.len(), "a finding twice");
}
