//! The README's flow-log recipe, verbatim, on real hosts (issue 11): three
//! network namespaces on a bridge (the lab of `flows_netns`), each with
//! `eth0` carrying its address, and in each
//!
//! ```sh
//! tally agent --server http://server:8080 --auth-key tally-auth-... --flows --iface eth0
//! ```
//!
//! after `tally settings set --flow-logging on` and `tally keys create
//! --reusable --preauthorized`, all through the CLI with the server's
//! default settings. No `--address`: the agents must find their addresses
//! on `eth0`. No shortened intervals, retries or flush delays: the flow
//! interval is 5 s, reports every 30 s, the reconciler's grace 60 s. Two
//! departures, both unavoidable: `--hostname` (the namespaces share one UTS
//! namespace, so every agent would report the same hostname and the nodes
//! would get one name), and no `sudo` (the test runs as root). Each agent
//! runs in its own working directory, so the default `./tally-agent` data
//! directory needs no `--data-dir`.
//!
//! Real TCP traffic between every two hosts must come out as
//! `virtualTraffic` on both ends (never exit), `tally flows top` and
//! `tally flows query` must name both ends, and the reconciler must judge
//! every pair complete (halves paired) with no finding about the lab's
//! nodes, `node_unknown` least of all. Waits poll the API until a deadline.

mod common;
use tally_testkit::netns;

use common::readme::{Agent, flow_logging_and_auth_key, tally};
use common::{TestServer, get_json};
use netns::Lab;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use tally_proto::timefmt::{format_nanos, now_nanos};

const HOSTS: usize = 3;
/// Bytes each client sends, in `CHUNKS` writes `PAUSE` apart (so each
/// connection spans more than one 5-s flow interval now and then).
const CHUNKS: usize = 6;
const CHUNK: usize = 20_000;
const PAUSE: Duration = Duration::from_millis(500);
const SEC: i64 = 1_000_000_000;
/// The reconciler's defaults: 5-s windows judged 60 s after they end, plus
/// its margin (1 s) and a few seconds for the records to arrive.
const JUDGED_AFTER: i64 = (5 + 60 + 1 + 4) * SEC;

/// Host `from` connects to host `to`:`port` and sends `CHUNKS` writes.
fn tcp_send(lab: &Lab, from: usize, to: usize, port: u16) -> std::thread::JoinHandle<u16> {
    let b = lab.addr(to);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let listener = lab.run_in(to, move || {
        let l = TcpListener::bind((b, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), CHUNKS * CHUNK);
    });
    ready.recv().unwrap();
    let client = lab.run_in(from, move || {
        let mut s = TcpStream::connect(SocketAddr::from((b, port))).unwrap();
        for i in 0..CHUNKS {
            s.write_all(&[5u8; CHUNK]).unwrap();
            if i + 1 < CHUNKS {
                // Traffic shaping (the connection lasts a few seconds), not
                // synchronisation.
                std::thread::sleep(PAUSE);
            }
        }
        let p = s.local_addr().unwrap().port();
        drop(s);
        p
    });
    std::thread::spawn(move || {
        let p = client.join().unwrap();
        listener.join().unwrap();
        p
    })
}

/// Table rows of CLI output (after the header), split on 2+ spaces.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| !l.starts_with('('))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_flow_recipe_classifies_names_and_pairs() {
    let Some(lab) = Lab::new("readme_flow_recipe_classifies_names_and_pairs", HOSTS) else {
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &format!("{}:0", lab.gateway),
        &[],
    );
    let url = server.url.clone();

    // The README's order: flow logging on, an auth key, then the agents.
    let key = flow_logging_and_auth_key(&url);

    let agents: Vec<Agent> = (0..HOSTS)
        .map(|i| Agent::start(&lab, i, &dir.path().join(format!("host{i}")), &url, &key))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let nodes: Vec<String> = agents
        .iter()
        .map(|a| {
            a.wait_line("tally agent registered: node ", deadline)
                .trim()
                .to_owned()
        })
        .collect();
    for a in &agents {
        a.wait_log("capturing flows", deadline).await;
    }
    eprintln!(
        "{:?}: agents registered and capturing: {nodes:?}",
        t0.elapsed()
    );

    // Each found its address on eth0, said so, and the server has it.
    for (i, a) in agents.iter().enumerate() {
        let want = format!("tailnet addresses found: {} (eth0)", lab.addr(i));
        let log = a.log();
        assert!(log.contains(&want), "host{i} did not log {want:?}:\n{log}");
        assert!(!log.contains("classified as exit"), "host{i}:\n{log}");
    }
    let devices = get_json(&format!("{url}/api/v2/tailnet/-/devices")).await;
    for (i, n) in nodes.iter().enumerate() {
        let d = devices["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == n.as_str()))
            .unwrap_or_else(|| panic!("no device {n} in {devices}"));
        assert_eq!(d["name"], format!("host{i}"), "{d}");
        assert_eq!(
            d["addresses"],
            serde_json::json!([lab.addr(i).to_string()]),
            "{d}"
        );
    }

    // TCP between every two hosts, all at once: host i to host i+1.
    let traffic_start = now_nanos();
    let pairs: Vec<(usize, usize, u16)> = (0..HOSTS)
        .map(|i| (i, (i + 1) % HOSTS, 7000 + u16::try_from(i).unwrap()))
        .collect();
    let sends: Vec<_> = pairs
        .iter()
        .map(|&(from, to, port)| tcp_send(&lab, from, to, port))
        .collect();
    let client_ports: Vec<u16> = sends.into_iter().map(|h| h.join().unwrap()).collect();
    let traffic_end = now_nanos();
    eprintln!("{:?}: traffic sent", t0.elapsed());

    // Flow records: both ends of every connection, as virtual traffic, the
    // client's sent bytes all there and what one end sent the other
    // received; none of it as exit.
    let since = format_nanos(traffic_start - 60 * SEC);
    let lab_ips: Vec<String> = (0..HOSTS).map(|i| lab.addr(i).to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let v = get_json(&format!(
            "{url}/api/v2/tailnet/-/logging/network?start={since}&limit=10000"
        ))
        .await;
        let logs = v["logs"].as_array().cloned().unwrap_or_default();
        let sum = |node: &str, src: &str, dst: &str, field: &str| -> u64 {
            logs.iter()
                .filter(|r| r["nodeId"] == node)
                .flat_map(|r| r["virtualTraffic"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["proto"] == 6 && e["src"] == src && e["dst"] == dst)
                .map(|e| e[field].as_u64().unwrap_or(0))
                .sum()
        };
        let complete = pairs.iter().zip(&client_ports).all(|(&(a, b, port), cp)| {
            let client = format!("{}:{cp}", lab.addr(a));
            let server = format!("{}:{port}", lab.addr(b));
            let payload = (CHUNKS * CHUNK) as u64;
            let sent = sum(&nodes[a], &client, &server, "txBytes");
            sent >= payload
                && sum(&nodes[b], &server, &client, "rxBytes") == sent
                && sum(&nodes[b], &server, &client, "txBytes")
                    == sum(&nodes[a], &client, &server, "rxBytes")
        });
        if complete {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "the virtual traffic never added up; records: {logs:#?}\nagent logs:\n{}",
            agents
                .iter()
                .map(Agent::log)
                .collect::<Vec<_>>()
                .join("\n--\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("{:?}: virtual traffic complete on both ends", t0.elapsed());
    for r in &records {
        for e in r["exitTraffic"].as_array().into_iter().flatten() {
            let dst = e["dst"].as_str().unwrap_or_default();
            assert!(
                !lab_ips.iter().any(|ip| dst.starts_with(&format!("{ip}:"))),
                "traffic between two nodes classified as exit: {r}"
            );
        }
    }

    // `tally flows top`: node names on both ends of every pair.
    let out = tally(&url, &["flows", "top", "--since", "1h"]);
    let top = rows(&out);
    for &(a, b, _) in &pairs {
        for (x, y) in [(a, b), (b, a)] {
            let (src, dst) = (format!("host{x}"), format!("host{y}"));
            assert!(
                top.iter()
                    .any(|r| r.len() >= 2 && r[0] == src && r[1] == dst),
                "no {src} -> {dst} in flows top:\n{out}"
            );
        }
    }
    assert!(
        !top.iter()
            .any(|r| r.len() >= 2 && lab_ips.iter().any(|ip| r[1] == *ip)),
        "a node shown as an address in flows top:\n{out}"
    );
    // `tally flows query`: every entry of a connection names the other end.
    for &(a, b, port) in &pairs {
        let out = tally(
            &url,
            &[
                "flows",
                "query",
                "--since",
                "1h",
                "--proto",
                "tcp",
                "--port",
                &port.to_string(),
            ],
        );
        let r = rows(&out);
        assert!(!r.is_empty(), "{out}");
        for row in &r {
            assert_eq!(row[2], "virtual", "{out}");
            let (me, other) = if row[1] == format!("host{a}") {
                (a, b)
            } else {
                assert_eq!(row[1], format!("host{b}"), "{out}");
                (b, a)
            };
            assert!(row[4].starts_with(&lab_ips[me]), "{out}");
            assert!(row[5].ends_with(&format!("(host{other})")), "{out}");
        }
        for h in [a, b] {
            assert!(
                r.iter().any(|row| row[1] == format!("host{h}")),
                "host{h} has no entry of port {port}:\n{out}"
            );
        }
    }

    // Reconciliation: once the traffic's last window is judged (default
    // grace), every pair judged and complete, and no finding about the
    // lab's nodes.
    let judged_at = traffic_end + JUDGED_AFTER;
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let report = get_json(&format!(
            "{url}/api/v2/tailnet/-/reconciliation?start={since}"
        ))
        .await;
        let pair = |x: &str, y: &str| -> Value {
            report["pairs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| {
                    let n = &p["nodes"];
                    (n[0] == x && n[1] == y) || (n[0] == y && n[1] == x)
                })
                .cloned()
                .unwrap_or(Value::Null)
        };
        let all_judged = pairs
            .iter()
            .all(|&(a, b, _)| pair(&nodes[a], &nodes[b])["judged"].as_u64() > Some(0));
        if all_judged && now_nanos() > judged_at {
            for &(a, b, _) in &pairs {
                let p = pair(&nodes[a], &nodes[b]);
                eprintln!("pair host{a}-host{b}: {p}");
                assert_eq!(p["completeness"].as_f64(), Some(1.0), "{report:#}");
                assert_eq!(p["judged"], p["matched"], "{report:#}");
            }
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "the pairs were never judged: {report:#}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("{:?}: every pair judged", t0.elapsed());
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    for f in &findings {
        eprintln!("finding: {f}");
    }
    assert!(
        !findings.iter().any(|f| f["class"] == "node_unknown"),
        "node_unknown findings: {findings:#?}"
    );
    let about_lab: Vec<&Value> = findings
        .iter()
        .filter(|f| {
            nodes
                .iter()
                .any(|n| f["node"] == n.as_str() || f["peer"] == n.as_str())
        })
        .collect();
    assert!(
        about_lab.is_empty(),
        "findings about the lab's nodes: {about_lab:#?}"
    );

    // Kept current: an address added to eth0 reaches the server within the
    // agent's 5-s check (not at the next 30-s report), so does its removal;
    // an address another node holds is refused (409) and the agent says how
    // to fix it.
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {}", args.join(" "));
    };
    let extra = format!("{}", std::net::Ipv4Addr::from(u32::from(lab.gateway) - 100));
    let addresses_of = |node: String| {
        let url = url.clone();
        async move { get_json(&format!("{url}/api/v2/device/{node}")).await["addresses"].clone() }
    };
    let changed = Instant::now();
    ip(&[
        "-n",
        &lab.namespaces[0],
        "addr",
        "add",
        &format!("{extra}/24"),
        "dev",
        "eth0",
    ]);
    let want = serde_json::json!([lab_ips[0], extra]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while addresses_of(nodes[0].clone()).await != want {
        assert!(
            Instant::now() < deadline,
            "added address not reported:\n{}",
            agents[0].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("added address reported after {:?}", changed.elapsed());
    assert!(
        agents[0].log().contains("tailnet addresses changed"),
        "{}",
        agents[0].log()
    );
    ip(&[
        "-n",
        &lab.namespaces[0],
        "addr",
        "del",
        &format!("{extra}/24"),
        "dev",
        "eth0",
    ]);
    let want = serde_json::json!([lab_ips[0]]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while addresses_of(nodes[0].clone()).await != want {
        assert!(
            Instant::now() < deadline,
            "removed address still there:\n{}",
            agents[0].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ip(&[
        "-n",
        &lab.namespaces[1],
        "addr",
        "add",
        &format!("{}/32", lab_ips[2]),
        "dev",
        "eth0",
    ]);
    // The refusal names the holder and says what to do (not "409" alone:
    // a public ID in the log may contain those digits).
    agents[1]
        .wait_log(
            "pass --address IP",
            Instant::now() + Duration::from_secs(15),
        )
        .await;
    let log = agents[1].log();
    assert!(
        log.contains(&nodes[2]) && log.contains("pass --address"),
        "{log}"
    );
    assert_eq!(
        addresses_of(nodes[1].clone()).await,
        serde_json::json!([lab_ips[1]])
    );
    eprintln!("{:?}: done", t0.elapsed());
}
