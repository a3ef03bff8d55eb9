//! `tally reconcile report` against the real server: the one-screen
//! summary (a line per class, a line per incident naming the node and its
//! peers, the node table by name with "n/a" for nothing judged), the
//! per-window findings only with `--findings` or `--incident`, and the
//! server's refusals of an unknown class or node.

mod common;

use common::{KEY, TestServer, http};
use serde_json::{Value, json};
use std::process::Output;
use std::time::Duration;

fn rfc(n: i64) -> String {
    tally_proto::timefmt::format_nanos(n)
}

/// Runs `tally reconcile report --since 1h <args>` against `url`.
fn report(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(common::bin())
        .args(["reconcile", "report", "--since", "1h", "--server", url])
        .args(["--api-key", KEY])
        .args(args)
        .output()
        .expect("tally runs")
}

fn stdout_ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn stderr_failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_leads_with_classes_and_incidents_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("server"),
        &["--reconcile-window", "1s", "--reconcile-grace", "15s"],
    );
    let c = http();
    let auth_key = common::reusable_auth_key(&server.url).await;
    // On before the nodes register: the records below cover the 12 s
    // before their upload, and the reconciler knows when it was off.
    common::set_flow_logging(&server.url, true).await;
    let mut nodes = Vec::new();
    for (host, addr) in [
        ("alpha", "100.64.0.1"),
        ("beta", "100.64.0.2"),
        ("gamma", "100.64.0.3"),
    ] {
        let (private, id) = common::register_node(&server.url, &auth_key, host, addr).await;
        nodes.push((private.to_hex(), id));
    }
    // Ten 1-s records from alpha and beta about two connections: alpha
    // says it sent 50 kB a second, beta that it received 1 kB.
    let now = tally_proto::timefmt::now_nanos();
    let sec = 1_000_000_000i64;
    for (i, (pk, bk, bytes)) in [
        ("txPkts", "txBytes", 50_000u64),
        ("rxPkts", "rxBytes", 1_000),
    ]
    .into_iter()
    .enumerate()
    {
        let (private, node) = &nodes[i];
        let records: Vec<Value> = (0..10)
            .map(|r| {
                let start = now - (12 - r) * sec;
                let entries: Vec<Value> = [5432u16, 5433]
                    .iter()
                    .map(|port| {
                        let (a, b) = ("100.64.0.1:40000".to_owned(), format!("100.64.0.2:{port}"));
                        let (src, dst) = if i == 0 { (a, b) } else { (b, a) };
                        let mut e = json!({ "proto": 6, "src": src, "dst": dst });
                        e[pk] = json!(40);
                        e[bk] = json!(bytes);
                        e
                    })
                    .collect();
                json!({ "nodeId": node, "start": rfc(start), "end": rfc(start + sec), "virtualTraffic": entries })
            })
            .collect();
        let resp = c
            .post(format!("{}/c/tailtraffic/{private}", server.url))
            .json(&records)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Both connections found; then a little more for late windows.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = common::get_json(&format!(
            "{}/api/v2/tailnet/-/reconciliation?class=count_mismatch",
            server.url
        ))
        .await;
        let conns = v["incidents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["connections"]["count"].as_u64().unwrap_or(0))
            .sum::<u64>();
        if conns >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no findings: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let text = stdout_ok(&report(&server.url, &[]));
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains(" findings in ") && lines[0].contains(" incident"),
        "{text}"
    );
    // A line per class: name, findings, incidents.
    let class_line = lines
        .iter()
        .find(|l| l.starts_with("count_mismatch "))
        .unwrap_or_else(|| panic!("no class line: {text}"));
    let nums: Vec<u64> = class_line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("counts"))
        .collect();
    assert!(
        nums.len() == 2 && nums[0] >= 2 && nums[1] >= 1,
        "{class_line}"
    );
    // A line per incident: the node at fault by name, class, severity,
    // span and duration, findings, peers by name, connections, ID.
    let incident = lines
        .iter()
        .find(|l| l.starts_with("alpha  count_mismatch  "))
        .unwrap_or_else(|| panic!("no incident line: {text}"));
    assert!(
        incident.contains(" findings, peers beta; 2 connections  inc-"),
        "{incident}"
    );
    assert!(
        incident.contains('–') && incident.contains("s)"),
        "{incident}"
    );
    let id = incident.split_whitespace().last().unwrap().to_owned();
    // The node table by name, with the ID; nothing judged is n/a.
    assert!(text.contains("COMPLETE"), "{text}");
    let alpha = lines
        .iter()
        .find(|l| l.starts_with("alpha ") && l.contains(&nodes[0].1))
        .unwrap_or_else(|| panic!("no node row for alpha: {text}"));
    assert!(alpha.contains('%'), "{alpha}");
    let gamma = lines
        .iter()
        .find(|l| l.starts_with("gamma ") && l.contains(&nodes[2].1))
        .unwrap_or_else(|| panic!("no node row for gamma: {text}"));
    assert!(gamma.contains(" n/a "), "{gamma}");
    // Pairs by name (in node ID order).
    assert!(
        text.contains("alpha <-> beta") || text.contains("beta <-> alpha"),
        "{text}"
    );
    // Per-window findings only when asked for.
    assert!(!text.contains("alpha -> beta"), "{text}");
    assert!(text.contains("--findings"), "{text}");
    let all = stdout_ok(&report(&server.url, &["--findings"]));
    assert!(all.contains("alpha -> beta"), "{all}");
    let one = stdout_ok(&report(&server.url, &["--incident", &id]));
    eprintln!("{one}");
    assert!(one.contains("findings of the incident"), "{one}");
    assert!(one.contains("alpha -> beta"), "{one}");
    // Filters by node name; refusals with what to do.
    let by_name = stdout_ok(&report(&server.url, &["--node", "beta"]));
    assert!(by_name.contains("alpha  count_mismatch  "), "{by_name}");
    assert!(!by_name.contains("\ngamma "), "{by_name}");
    let e = stderr_failed(&report(&server.url, &["--node", "nosuch"]));
    assert!(e.contains("tally nodes list"), "{e}");
    let e = stderr_failed(&report(&server.url, &["--class", "count-mismatch"]));
    assert!(
        e.contains("valid classes") && e.contains("count_mismatch"),
        "{e}"
    );
    // --json is the server's answer.
    let json: Value =
        serde_json::from_str(&stdout_ok(&report(&server.url, &["--json"]))).expect("JSON");
    assert!(
        json["incidents"].as_array().is_some_and(|i| !i.is_empty()),
        "{json}"
    );
    assert!(json["summary"]["classes"].is_array(), "{json}");
}
