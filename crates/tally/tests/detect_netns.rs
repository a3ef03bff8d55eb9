//! Detection on real hosts, as the README tells a user to run it (issue
//! 13): three network namespaces with agents started exactly as the README
//! says (`--flows --iface eth0`, default intervals), the server with its
//! defaults and the built-in rules. From host0, a real `nmap` SYN scan of
//! 200 ports of host1; between host1 and host2, ordinary TCP traffic.
//!
//! - Exactly one port-scan alert, naming host0 and host1's address; no alert
//!   about host1 or host2 (their traffic is clean).
//! - `tally alerts list` shows it; `tally alerts ack` acknowledges it
//!   (audited) and `--status open` no longer lists it.
//! - Turning flow logging off (`tally settings set --flow-logging off`)
//!   raises the flow-logging-off alert within seconds.
//!
//! Waits poll the API until a deadline (no signal crosses the processes):
//! the scan's flow records from both ends, then the detection consumer at
//! the log's end.

mod common;
use tally_testkit::netns;

use common::readme::{Agent, flow_logging_and_auth_key, tally};
use common::{TestServer, consumer_caught_up, get_json};
use netns::Lab;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const HOSTS: usize = 3;
const SCANNED_PORTS: u16 = 200;

/// host `from` opens `n` connections to host `to`:`port`, sending a little.
fn clean_traffic(lab: &Lab, from: usize, to: usize, port: u16, n: usize) {
    let b = lab.addr(to);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = lab.run_in(to, move || {
        let l = TcpListener::bind((b, port)).expect("bind");
        ready_tx.send(()).expect("ready");
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
        }
    });
    ready.recv().expect("server ready");
    lab.run_in(from, move || {
        for _ in 0..n {
            let mut s = TcpStream::connect(SocketAddr::from((b, port))).expect("connect");
            s.write_all(&[7u8; 4000]).expect("write");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
}

/// The tailnet's alerts (newest first).
async fn alerts(url: &str) -> Vec<Value> {
    get_json(&format!("{url}/api/v2/tailnet/-/alerts?limit=1000")).await["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nmap_scan_raises_one_alert_and_clean_traffic_none() {
    let Some(lab) = Lab::new(
        "an_nmap_scan_raises_one_alert_and_clean_traffic_none",
        HOSTS,
    ) else {
        return;
    };
    if std::process::Command::new("nmap")
        .arg("--version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("TALLY_REQUIRE_NETNS").as_deref(),
            Ok("1"),
            "nmap is missing (apt-get install nmap; .ci/run installs it)"
        );
        eprintln!("skipping: nmap is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &format!("{}:0", lab.gateway),
        &[],
    );
    let url = server.url.clone();
    let key = flow_logging_and_auth_key(&url);
    let agents: Vec<Agent> = (0..HOSTS)
        .map(|i| Agent::start(&lab, i, &dir.path().join(format!("host{i}")), &url, &key))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in &agents {
        a.wait_line("tally agent registered: node ", deadline);
    }
    for a in &agents {
        a.wait_log("capturing flows", deadline).await;
    }

    // Clean traffic between host1 and host2 (many connections, one port),
    // the scan from host0, and more clean traffic.
    clean_traffic(&lab, 1, 2, 7001, 30);
    let target = lab.addr(1).to_string();
    let ports = format!("1-{SCANNED_PORTS}");
    let scan = lab
        .command(0, "nmap")
        .args([
            "-sS",
            "-Pn",
            "-n",
            "-T4",
            "--max-retries",
            "0",
            "-p",
            &ports,
            &target,
        ])
        .output()
        .expect("run nmap");
    assert!(
        scan.status.success(),
        "nmap failed: {}",
        String::from_utf8_lossy(&scan.stderr)
    );
    clean_traffic(&lab, 2, 1, 7002, 30);

    // Every scanned port in the flow records of both ends.
    let scanner = lab.addr(0).to_string();
    let since = tally_proto::timefmt::format_nanos(
        tally_proto::timefmt::now_nanos() - 3600 * 1_000_000_000,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(&format!(
            "{url}/api/v2/tailnet/-/logging/network?start={since}&limit=10000"
        ))
        .await;
        let mut seen: [BTreeSet<u16>; 2] = Default::default();
        for r in v["logs"].as_array().into_iter().flatten() {
            for e in r["virtualTraffic"].as_array().into_iter().flatten() {
                let (src, dst) = (
                    e["src"].as_str().unwrap_or(""),
                    e["dst"].as_str().unwrap_or(""),
                );
                let port = |s: &str| s.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                if src.starts_with(&format!("{scanner}:")) && dst.starts_with(&format!("{target}:"))
                {
                    seen[0].extend(port(dst));
                } else if dst.starts_with(&format!("{scanner}:"))
                    && src.starts_with(&format!("{target}:"))
                {
                    seen[1].extend(port(src));
                }
            }
        }
        if seen.iter().all(|s| s.len() >= usize::from(SCANNED_PORTS)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scan's flow records never arrived from both ends: {} and {} ports; last answer: {}",
            seen[0].len(),
            seen[1].len(),
            v.to_string().chars().take(2000).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    consumer_caught_up(&url, "detection").await;

    let all = alerts(&url).await;
    let scans: Vec<&Value> = all
        .iter()
        .filter(|a| a["rule_id"] == "tally-port-scan")
        .collect();
    assert_eq!(scans.len(), 1, "one port-scan alert wanted: {all:#?}");
    let a = scans[0];
    assert_eq!(a["node"], "host0", "{a}");
    assert_eq!(a["group"]["src_ip"], scanner.as_str(), "{a}");
    assert_eq!(a["group"]["dst_ip"], target.as_str(), "{a}");
    assert_eq!(a["severity"], "high", "{a}");
    assert!(
        a["evidence"]["value"].as_f64().unwrap_or(0.0) >= 25.0,
        "{a}"
    );
    assert!(
        !a["evidence"]["positions"]
            .as_array()
            .expect("positions")
            .is_empty(),
        "{a}"
    );
    for other in &all {
        assert!(
            other["node"] != "host1" && other["node"] != "host2",
            "clean traffic raised an alert: {other:#}"
        );
    }

    // The CLI: list, ack, list open.
    let out = tally(&url, &["alerts", "list"]);
    assert!(out.contains("Port scan") && out.contains("host0"), "{out}");
    let id = a["id"].as_str().expect("id");
    let out = tally(&url, &["alerts", "ack", id, "--note", "our nmap test"]);
    assert!(out.contains("acknowledged"), "{out}");
    let out = tally(&url, &["alerts", "list", "--status", "open"]);
    assert!(!out.contains(id), "{out}");
    let audit = get_json(&format!(
        "{url}/api/v2/tailnet/-/logging/configuration?targetType=ALERT"
    ))
    .await;
    assert!(
        audit.to_string().contains(id),
        "the ack is not audited: {audit}"
    );

    // An audit change raises its alert within seconds.
    let before = Instant::now();
    tally(&url, &["settings", "set", "--flow-logging", "off"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if alerts(&url)
            .await
            .iter()
            .any(|a| a["rule_id"] == "tally-flow-logging-off")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no flow-logging-off alert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "flow logging off raised its alert in {:?}",
        before.elapsed()
    );
    drop(agents);
}
