//! Findings that hold on real hosts (issue 11): four network namespaces
//! with agents at the default flow interval and reconcile window (5 s),
//! started at deliberately different moments so that their interval phases
//! are spread across the 5 s, and clean traffic between every pair: a
//! steady TCP stream, lock-step UDP, and a new short TCP connection every
//! few hundred milliseconds (many fall between two agents' interval
//! boundaries). Meanwhile a fourth node joins late (its peers file their
//! first traffic with it as exit traffic until they hear of it), one agent
//! cannot reach the server for 3 s (its uploads back up, then leave with
//! shorter queue delays than usual) and one agent restarts (its traffic
//! paused while it is down). None of this may raise a finding.
//!
//! Then one agent is stopped for a minute while its peers keep talking to
//! it: the report must show one incident naming it, covering the minute,
//! with its peers, and its summary must say so in one line.
//!
//! The end is marked by stopping one agent while the others keep talking
//! to it: its first `missing_agent_silent` finding after that moment shows
//! that every earlier window has been judged (windows are judged in time
//! order), so the absence of other findings is meaningful.

mod common;
use tally_testkit::netns;

use common::{Follow, KEY, TestAgent, TestServer, http};
use netns::Lab;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tally_proto::timefmt::{format_nanos, now_nanos};

const SEC: i64 = 1_000_000_000;
/// Shorter than the default 60 s so the test ends sooner; the window and
/// the agents' interval are the defaults.
const GRACE: &str = "15s";

/// A switch the traffic of one host waits on (paused while its agent
/// restarts).
#[derive(Clone, Default)]
struct Gate(Arc<AtomicBool>);

impl Gate {
    fn closed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, closed: bool) {
        self.0.store(closed, Ordering::SeqCst);
    }
}

/// Waits while either gate is closed (the traffic's shape: no packet of a
/// paused host is sent).
fn wait_open(gates: &[&Gate], stop: &AtomicBool) {
    while gates.iter().any(|g| g.closed()) && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Traffic between host `a` and host `b` until `stop`: a steady TCP
/// stream, lock-step UDP and a new short TCP connection (3 KB each way)
/// every 300-700 ms, all paused while a gate of either host is closed.
fn pair_traffic(
    lab: &Lab,
    (a, b): (usize, usize),
    base_port: u16,
    gates: (&Gate, &Gate),
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let (ia, ib) = (lab.addr(a), lab.addr(b));
    let mut threads = Vec::new();
    // Listeners on b: steady TCP, short TCP (echo), UDP echo.
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let s = stop.clone();
    threads.push(lab.run_in(b, move || {
        let steady = TcpListener::bind((ib, base_port)).unwrap();
        let short = TcpListener::bind((ib, base_port + 1)).unwrap();
        let udp = UdpSocket::bind((ib, base_port + 2)).unwrap();
        short.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let (mut steady_conn, _) = steady.accept().unwrap();
        steady_conn
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        while !s.load(Ordering::SeqCst) {
            let _ = steady_conn.read(&mut buf);
            if let Ok((mut c, _)) = short.accept() {
                c.set_nonblocking(false).unwrap();
                let mut got = Vec::new();
                if c.read_to_end(&mut got).is_ok() {
                    let _ = c.write_all(&vec![8u8; got.len()]);
                }
            }
            if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n.min(200)], peer);
            }
        }
    }));
    ready.recv().unwrap();
    let (ga, gb) = (gates.0.clone(), gates.1.clone());
    let s = stop.clone();
    threads.push(lab.run_in(a, move || {
        let mut steady = TcpStream::connect(SocketAddr::from((ib, base_port))).unwrap();
        let udp = UdpSocket::bind((ia, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut k = 0u64;
        while !s.load(Ordering::SeqCst) {
            wait_open(&[&ga, &gb], &s);
            steady.write_all(&[5u8; 1200]).unwrap();
            udp.send_to(&[6u8; 900], (ib, base_port + 2)).unwrap();
            let _ = udp.recv_from(&mut buf);
            if k.is_multiple_of(3) {
                // A short connection: 3 KB up, 3 KB back, closed.
                let mut c = TcpStream::connect(SocketAddr::from((ib, base_port + 1))).unwrap();
                c.write_all(&[7u8; 3000]).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let mut back = Vec::new();
                c.read_to_end(&mut back).unwrap();
            }
            k += 1;
            // 100-233 ms between rounds (the traffic's shape).
            std::thread::sleep(Duration::from_millis(100 + (k * 37) % 134));
        }
    }));
    threads
}

fn start_agent(lab: &Lab, i: usize, server: &str, dir: &Path, auth: &str) -> TestAgent {
    let host = format!("host{i}");
    tokio::task::block_in_place(|| {
        TestAgent::start_in_netns(
            &lab.namespaces[i],
            server,
            &dir.join(format!("agent{i}")),
            &[
                "--auth-key",
                auth,
                "--hostname",
                &host,
                "--flows",
                "--iface",
                "eth0",
                // The default: records wait in the queue about 2 s, less
                // when a batch is already gathering (after an outage).
                "--flush-delay",
                "2s",
            ],
        )
    })
}

/// Reads the node log until `instance` says its capture started.
async fn await_capture(logs: &mut Follow, instance: &str) {
    loop {
        let e = logs.next().await;
        if e["logtail"]["id"].as_str() == Some(instance)
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("flow capture started"))
        {
            return;
        }
    }
}

fn node_of(agent: &TestAgent) -> String {
    agent
        .wait_line("tally agent registered: node ", Duration::from_secs(30))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clean_traffic_with_spread_phases_a_late_join_and_a_restart_gives_no_findings() {
    let Some(lab) = Lab::new(
        "clean_traffic_with_spread_phases_a_late_join_and_a_restart_gives_no_findings",
        4,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &format!("{}:0", lab.gateway),
        &["--reconcile-grace", GRACE],
    );
    let auth = common::reusable_auth_key(&server.url).await;
    common::set_flow_logging(&server.url, true).await;
    let mut logs = Follow::open(&server.url, "tailnode").await;
    let mut findings = Follow::open(&server.url, "findings").await;

    // Three agents, started 1.7 s apart: their 5-s intervals start at
    // phases about 0, 1.7 and 3.4 s.
    let mut agents: Vec<Option<TestAgent>> = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let agent = start_agent(&lab, i, &server.url, dir.path(), &auth);
        nodes.push(tokio::task::block_in_place(|| node_of(&agent)));
        await_capture(&mut logs, &agent.public_id).await;
        agents.push(Some(agent));
        tokio::time::sleep(Duration::from_millis(1700)).await;
    }
    let gates: Vec<Gate> = (0..4).map(|_| Gate::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut port = 46000;
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        threads.extend(pair_traffic(
            &lab,
            (a, b),
            port,
            (&gates[a], &gates[b]),
            &stop,
        ));
        port += 10;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;

    // A fourth node joins: its peers hear of it only at their next report.
    let late = start_agent(&lab, 3, &server.url, dir.path(), &auth);
    nodes.push(tokio::task::block_in_place(|| node_of(&late)));
    await_capture(&mut logs, &late.public_id).await;
    for (a, b) in [(3, 0), (1, 3)] {
        threads.extend(pair_traffic(
            &lab,
            (a, b),
            port,
            (&gates[a], &gates[b]),
            &stop,
        ));
        port += 10;
    }
    agents.push(Some(late));
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Host 0 loses the server for 3 s (its peers stay reachable): its
    // uploads fail, and once they go through again the records queued
    // meanwhile leave at once or after a shorter wait than usual, so its
    // records' delays vary as on a real network.
    let blackhole = format!("{}/32", lab.gateway);
    let route = |verb: &str| {
        let st = std::process::Command::new("ip")
            .args([
                "-n",
                &lab.namespaces[0],
                "route",
                verb,
                "blackhole",
                &blackhole,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "ip route {verb} blackhole");
    };
    route("add");
    tokio::time::sleep(Duration::from_secs(3)).await;
    route("del");
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Host 1's agent restarts, its traffic paused while it is down.
    gates[1].set(true);
    // Let packets in flight reach both tables before the agent stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| agents[1].take().unwrap().stop());
    let again = start_agent(&lab, 1, &server.url, dir.path(), &auth);
    await_capture(&mut logs, &again.public_id).await;
    agents[1] = Some(again);
    gates[1].set(false);
    tokio::time::sleep(Duration::from_secs(40)).await;

    // Host 2's agent is stopped for a minute while its peers keep talking
    // to it: one incident, naming it, covering the minute, with its peers.
    let t_down = now_nanos();
    tokio::task::block_in_place(|| agents[2].take().unwrap().stop());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let again = start_agent(&lab, 2, &server.url, dir.path(), &auth);
    await_capture(&mut logs, &again.public_id).await;
    agents[2] = Some(again);
    let t_up = now_nanos();
    tokio::time::sleep(Duration::from_secs(15)).await;

    // The end marker: host 3's agent stops, the others keep talking to it.
    let t_end = now_nanos();
    tokio::task::block_in_place(|| agents[3].take().unwrap().stop());
    let seen =
        common::findings_until_silent(&mut findings, &nodes[3], t_end, Duration::from_secs(120))
            .await;
    stop.store(true, Ordering::SeqCst);
    // Host 2's silence, and the marker: nothing else.
    let explained = |f: &Value| {
        let (start, end) = (
            f["window"]["start"].as_i64().unwrap_or(i64::MIN),
            f["window"]["end"].as_i64().unwrap_or(i64::MAX),
        );
        let silent = f["class"] == "missing_agent_silent";
        // A window of host 2's silence may reach a record (5 s) and a
        // window (5 s) past the moments the test saw it stop and restart.
        (silent
            && f["node"] == nodes[2].as_str()
            && start >= t_down - 10 * SEC
            && end <= t_up + 10 * SEC)
            || (f["node"] == nodes[3].as_str() && end > t_end - 5 * SEC)
    };
    let unexpected: Vec<String> = seen
        .iter()
        .filter(|f| !explained(f))
        .map(|f| {
            format!(
                "{} {} {}..{}: {}",
                f["class"],
                f["node"],
                format_nanos(f["window"]["start"].as_i64().unwrap_or(0)),
                format_nanos(f["window"]["end"].as_i64().unwrap_or(0)),
                f["detail"]
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "clean traffic raised findings before {} (nodes {nodes:?}; host2 down {} to {}): {unexpected:#?}",
        format_nanos(t_end),
        format_nanos(t_down),
        format_nanos(t_up)
    );

    // The report: host 2's minute is one incident, by name, with its peers.
    let report = http()
        .get(format!(
            "{}/api/v2/tailnet/-/reconciliation?start={}&end={}",
            server.url,
            format_nanos(t_down - 30 * SEC),
            format_nanos(t_end - 5 * SEC)
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    let report: Value = report.json().await.unwrap();
    let incidents: Vec<&Value> = report["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["node"] == nodes[2].as_str())
        .collect();
    assert_eq!(incidents.len(), 1, "one incident for host2: {report:#}");
    let inc = incidents[0];
    assert_eq!(inc["class"], "missing_agent_silent", "{inc:#}");
    assert_eq!(inc["nodeName"], "host2", "{inc:#}");
    let (start, end) = (
        inc["window"]["start"].as_i64().unwrap(),
        inc["window"]["end"].as_i64().unwrap(),
    );
    assert!(
        start <= t_down + 10 * SEC && end >= t_up - 10 * SEC,
        "the incident covers the downtime {}..{}: {inc:#}",
        format_nanos(t_down),
        format_nanos(t_up)
    );
    let mut peers: Vec<&str> = inc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    peers.sort_unstable();
    assert_eq!(peers, ["host0", "host1"], "{inc:#}");
    // The CLI's summary says it in one line.
    let out = std::process::Command::new(common::bin())
        .args([
            "reconcile",
            "report",
            "--server",
            &server.url,
            "--since",
            "10m",
        ])
        .env("TALLY_API_KEY", KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("host2") && l.contains("missing_agent_silent"))
        .collect();
    assert_eq!(lines.len(), 1, "one incident line for host2:\n{text}");
    assert!(
        lines[0].contains("host0") && lines[0].contains("host1"),
        "{text}"
    );
    drop(agents);
    for t in threads {
        let _ = t.join();
    }
}
