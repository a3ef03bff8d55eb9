//! Flow logging switched off for a short while and on again (an audited
//! admin action), with agents capturing real traffic in two network
//! namespaces and the server at its default report interval (30 s):
//!
//! - the agents learn each switch from their long poll, so capture stops
//!   and starts again within seconds (their node logs say `flow capture
//!   stopped` / `flow capture started on eth0`), long before the next
//!   report;
//! - the records captured while the switch-off reached them (at least each
//!   agent's last interval, flushed when capture stops) are discarded by
//!   the server, which says so, and each agent notes it in its node log;
//! - their batch chains show no gap: the batches after the switch-on are
//!   in order and `tally verify` exits 0;
//! - flow logging stays off for a minute: the reconciler's findings around
//!   it are `missing_flow_logging_off` only (no lost batch, gap or
//!   integrity finding).

mod common;
use tally_testkit::netns;

use common::{Follow, KEY, TestAgent, TestServer, bin};
use netns::Lab;
use serde_json::{Value, json};
use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tally_proto::timefmt::{format_nanos, now_nanos, parse_rfc3339};

const SEC: i64 = 1_000_000_000;
/// How soon after a switch the agents must have acted: far below the
/// 30-s report interval, which is how late they learned it before.
const PROMPT: i64 = 8 * SEC;

fn start_agent(lab: &Lab, i: usize, server: &str, dir: &Path, auth: &str) -> TestAgent {
    let addr = lab.addr(i).to_string();
    let host = format!("host{i}");
    tokio::task::block_in_place(|| {
        TestAgent::start_in_netns(
            &lab.namespaces[i],
            server,
            &dir.join(format!("agent{i}")),
            &[
                "--auth-key",
                auth,
                "--address",
                &addr,
                "--hostname",
                &host,
                "--flows",
                "--iface",
                "eth0",
                "--flow-interval",
                "1s",
            ],
        )
    })
}

/// Reads flow records until every node in `nodes` has one that began at
/// `since` or later.
async fn await_records_since(flows: &mut Follow, nodes: &[String], since: i64) {
    let mut seen = vec![false; nodes.len()];
    while !seen.iter().all(|s| *s) {
        let r = flows.next().await;
        let start = r["start"].as_str().and_then(parse_rfc3339).unwrap_or(0);
        if start >= since
            && let Some(i) = nodes.iter().position(|n| r["nodeId"] == n.as_str())
        {
            seen[i] = true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_flow_logging_off_and_on_stops_and_starts_capture_at_once_without_gaps() {
    let Some(lab) = Lab::new("flow_toggle_netns", 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Default report interval (30 s): only the long poll makes the agents
    // quick. Reconciliation in 1-s windows (the agents' interval) with a
    // 10-s grace, so that its findings come soon.
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &format!("{}:0", lab.gateway),
        &["--reconcile-window", "1s", "--reconcile-grace", "10s"],
    );
    let auth = common::reusable_auth_key(&server.url).await;
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let agent = start_agent(&lab, i, &server.url, dir.path(), &auth);
        let line = tokio::task::block_in_place(|| {
            agent.wait_line("tally agent registered: node ", Duration::from_secs(30))
        });
        nodes.push(line.rsplit(' ').next().unwrap().to_owned());
        agents.push(agent);
    }
    let instances: Vec<String> = agents.iter().map(|a| a.public_id.clone()).collect();
    let mut logs = Follow::open(&server.url, "tailnode").await;
    let mut flows = Follow::open(&server.url, "tailtraffic").await;
    let mut findings = Follow::open(&server.url, "findings").await;

    // UDP in lock-step between the two hosts the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = (lab.addr(0), lab.addr(1));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let echo_done = done.clone();
    let echo = lab.run_in(1, move || {
        let s = UdpSocket::bind((b, 46001)).unwrap();
        // Wakes up now and then to see whether the client has finished.
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 2048];
        while !echo_done.load(Ordering::SeqCst) {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                s.send_to(&buf[..n], peer).unwrap();
            }
        }
    });
    ready.recv().unwrap();
    let client_stop = stop.clone();
    let client = lab.run_in(0, move || {
        let s = UdpSocket::bind((a, 46000)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 2048];
        while !client_stop.load(Ordering::SeqCst) {
            s.send_to(&[1u8; 300], (b, 46001)).unwrap();
            s.recv_from(&mut buf).expect("UDP echo");
            // The traffic's shape, not synchronisation.
            std::thread::sleep(Duration::from_millis(20));
        }
        done.store(true, Ordering::SeqCst);
    });

    // On: capture starts on both, and records of both arrive.
    let on = common::set_flow_logging(&server.url, true).await;
    for t in common::await_node_logs(&mut logs, &instances, "flow capture started on eth0").await {
        assert!(
            t - on < PROMPT,
            "capture started at {}, switched on at {}",
            format_nanos(t),
            format_nanos(on)
        );
    }
    await_records_since(&mut flows, &nodes, on).await;

    // Off: capture stops on both within seconds; the last records, flushed
    // after the switch, are discarded by the server and noted by the agents.
    let off = common::set_flow_logging(&server.url, false).await;
    for t in common::await_node_logs(&mut logs, &instances, "flow capture stopped").await {
        assert!(
            t - off < PROMPT,
            "capture stopped at {}, switched off at {}",
            format_nanos(t),
            format_nanos(off)
        );
    }
    // The note follows the upload of the last records (a few seconds
    // later), in a line of its own: read from the start again.
    let mut notes = Follow::open(&server.url, "tailnode").await;
    common::await_node_logs(
        &mut notes,
        &instances,
        "flow records captured while flow logging was being turned off were discarded by the server",
    )
    .await;
    // Off for a minute in all.
    let left = off + 60 * SEC - now_nanos();
    if left > 0 {
        tokio::time::sleep(Duration::from_nanos(left.unsigned_abs())).await;
    }

    // On again: capture starts within seconds, new records arrive.
    let on = common::set_flow_logging(&server.url, true).await;
    for t in common::await_node_logs(&mut logs, &instances, "flow capture started on eth0").await {
        assert!(
            t - on < PROMPT,
            "capture started again at {}, switched on at {}",
            format_nanos(t),
            format_nanos(on)
        );
    }
    await_records_since(&mut flows, &nodes, on).await;
    // A couple more records each, so the batches after the discarded ones
    // have been checked.
    await_records_since(&mut flows, &nodes, now_nanos()).await;

    // The findings: `missing_flow_logging_off` around the minute off and
    // nothing else. The end is marked by stopping host 1's agent while
    // host 0 goes on talking to it: its first `missing_agent_silent`
    // finding after that shows every earlier window has been judged.
    let t_end = now_nanos();
    let marker_agent = agents.pop().unwrap();
    tokio::task::block_in_place(|| marker_agent.stop());
    let seen =
        common::findings_until_silent(&mut findings, &nodes[1], t_end, Duration::from_secs(60))
            .await;
    let window = |f: &Value| {
        (
            f["window"]["start"].as_i64().unwrap_or(i64::MIN),
            f["window"]["end"].as_i64().unwrap_or(i64::MAX),
        )
    };
    let off_findings = seen
        .iter()
        .filter(|f| f["class"] == "missing_flow_logging_off")
        .count();
    let unexpected: Vec<String> = seen
        .iter()
        .filter(|f| {
            let (start, end) = window(f);
            let toggle = f["class"] == "missing_flow_logging_off"
                && start >= off - 5 * SEC
                && end <= on + PROMPT;
            let marker = f["node"] == nodes[1].as_str() && end > t_end - 2 * SEC;
            !(toggle || marker)
        })
        .map(|f| {
            let (start, end) = window(f);
            format!(
                "{} {} {}..{}: {}",
                f["class"],
                f["node"],
                format_nanos(start),
                format_nanos(end),
                f["detail"]
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "flow logging off {} to {} should explain every finding before {}: {unexpected:#?}",
        format_nanos(off),
        format_nanos(on),
        format_nanos(t_end)
    );
    eprintln!("{off_findings} missing_flow_logging_off findings around the switch");
    stop.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| {
        client.join().unwrap();
        echo.join().unwrap();
    });

    // The batch records: every one in order, the switched-off ones listing
    // what they discarded.
    let integrity: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/logging/integrity",
        server.url
    ))
    .await;
    assert_eq!(integrity["flagged"], json!([]), "{integrity}");
    assert!(
        integrity["recordsDiscarded"].as_u64() > Some(0),
        "{integrity}"
    );

    let state = dir.path().join("verify-state");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(bin())
            .args([
                "verify",
                "--server",
                &server.url,
                "--api-key",
                KEY,
                "--state-dir",
            ])
            .arg(&state)
            .output()
            .expect("run tally verify")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tally verify failed:\n{text}");
    assert!(text.contains("verdict: OK"), "{text}");
    assert!(
        text.contains("reached the server after flow logging was turned off"),
        "{text}"
    );
    for a in agents {
        tokio::task::block_in_place(|| a.stop());
    }
}
