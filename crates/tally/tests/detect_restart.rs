//! Detection across `kill -9` (issue 13): a node scans two hosts in a row
//! (five new ports per 1-s flow record); the server is killed twice, each
//! time while a scan's correlation window is open: once right after
//! detection read the records but before it saved its state (the restart
//! replays them), once right after it saved its state (the restart resumes
//! from the snapshot). The alerts must equal those of an uninterrupted run
//! on another server: the same rules, groups, windows and values, none
//! twice, none lost.

mod common;

use common::{
    TestServer, consumer_caught_up, get_json, http, register_node, reusable_auth_key,
    set_flow_logging,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SEC: i64 = 1_000_000_000;
/// 2026-12-01T00:00:00Z: fixed record times, so both runs see the same.
const T0: i64 = 1_796_083_200 * SEC;
const ROUNDS: u64 = 24;
/// The first scan (of host b) runs for rounds 0..12, the second (of host c)
/// for 12..24; the server is killed after these rounds (unsaved, saved).
const KILLS: [u64; 2] = [2, 15];
const ADDRS: [&str; 3] = ["100.64.0.1", "100.64.0.2", "100.64.0.3"];

fn record(node_id: &str, r: u64) -> Value {
    let target = if r < 12 { ADDRS[1] } else { ADDRS[2] };
    let base = (r % 12) * 5;
    let entries: Vec<Value> = (0..5)
        .map(|k| {
            json!({
                "proto": 6,
                "src": format!("{}:51000", ADDRS[0]),
                "dst": format!("{target}:{}", 1 + base + k),
                "txPkts": 1, "txBytes": 60,
            })
        })
        .collect();
    let start = T0 + i64::try_from(r).expect("round") * SEC;
    json!({
        "nodeId": node_id,
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(start + SEC),
        "virtualTraffic": entries,
        "logtail": { "proc_id": 9, "proc_seq": r + 1 },
    })
}

async fn upload(url: &str, private: &str, body: &Value) {
    let resp = http()
        .post(format!("{url}/c/tailtraffic/{private}"))
        .json(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

/// Waits until detection saved its state through its current position
/// (`detection.state` in the data directory; saved every 5 s).
async fn saved_through(url: &str, dir: &std::path::Path) {
    let v = get_json(&format!("{url}/api/v2/consumers")).await;
    let pos = v["consumers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "detection"))
        .and_then(|d| d["position"].as_u64())
        .unwrap_or_else(|| panic!("no detection position in {v}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let saved = std::fs::read(dir.join("detection.state"))
            .ok()
            .and_then(|b| {
                let line = b.split(|c| *c == b'\n').next()?.to_vec();
                serde_json::from_slice::<Value>(&line).ok()?["pos"].as_u64()
            })
            .unwrap_or(0);
        if saved >= pos {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "detection never saved position {pos}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The alerts, as what must agree between runs (not the IDs: they name
/// the tailnet, which differs between servers).
async fn alerts(url: &str) -> (Vec<String>, Vec<Value>) {
    let v = get_json(&format!("{url}/api/v2/tailnet/-/alerts?limit=1000")).await;
    let list = v["alerts"].as_array().cloned().unwrap_or_default();
    let ids = list
        .iter()
        .map(|a| a["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut shapes: Vec<Value> = list
        .iter()
        .map(|a| {
            json!({
                "rule": a["rule_id"], "group": a["group"], "window": a["window"],
                "value": a["evidence"]["value"], "node": a["node"],
            })
        })
        .collect();
    shapes.sort_by_key(|v| v.to_string());
    (ids, shapes)
}

/// Starts a server in `dir` on `listen`; registers the three hosts.
async fn start(dir: &std::path::Path, listen: &str) -> (TestServer, String) {
    let server = TestServer::start_on(dir, listen, &[]);
    set_flow_logging(&server.url, true).await;
    let key = reusable_auth_key(&server.url).await;
    let mut scanner = String::new();
    for (i, a) in ADDRS.iter().enumerate() {
        let (private, id) = register_node(&server.url, &key, &format!("host{i}"), a).await;
        if i == 0 {
            scanner = format!("{}|{id}", private.to_hex());
        }
    }
    (server, scanner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_after_kill_9_equal_an_uninterrupted_run() {
    let root = tempfile::tempdir().expect("tempdir");

    // Uninterrupted.
    let (reference, scanner) = start(&root.path().join("a"), "127.0.0.1:0").await;
    let (private, node) = scanner.split_once('|').expect("scanner");
    for r in 0..ROUNDS {
        upload(&reference.url, private, &record(node, r)).await;
    }
    consumer_caught_up(&reference.url, "detection").await;
    let (ids, want) = alerts(&reference.url).await;
    let scans = want
        .iter()
        .filter(|a| a["rule"] == "tally-port-scan")
        .count();
    assert_eq!(scans, 2, "one port-scan alert per scanned host: {want:#?}");
    assert_eq!(ids.len(), want.len());

    // Killed mid-window, restarted on the same directory and address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let dir = root.path().join("b");
    let (mut server, scanner) = start(&dir, &listen).await;
    let (private, node) = scanner.split_once('|').expect("scanner");
    let mut next = 0;
    for (k, kill_after) in KILLS.into_iter().enumerate() {
        for r in next..=kill_after {
            upload(&server.url, private, &record(node, r)).await;
        }
        next = kill_after + 1;
        consumer_caught_up(&server.url, "detection").await;
        if k == 1 {
            saved_through(&server.url, &dir).await;
        }
        server.kill9();
        server = TestServer::start_on(&dir, &listen, &[]);
    }
    for r in next..ROUNDS {
        upload(&server.url, private, &record(node, r)).await;
    }
    consumer_caught_up(&server.url, "detection").await;
    let (ids, got) = alerts(&server.url).await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an alert stored twice: {got:#?}");
    assert_eq!(got, want, "alerts differ from the uninterrupted run");
}
