//! Flow logs on real hosts: three network namespaces on a bridge, an agent
//! in each capturing its `eth0`, real UDP and TCP traffic between them.
//! Every agent's records account for exactly what crossed its interface
//! (UDP: computed from what was sent; TCP: one side's tx is the other's
//! rx), a long connection spans several intervals, and turning flow
//! logging off and on stops and starts capture without a restart.

mod common;
use tally_testkit::netns;

use common::{Follow, KEY, TestAgent, TestServer, http};
use netns::Lab;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Summed counters per (node, proto, src, dst, traffic kind).
type Sums = HashMap<(String, u64, String, String, &'static str), [u64; 4]>;

/// Traffic between tailnet nodes: every flow of this test is of this kind
/// (each agent knows the others' addresses before capture starts).
const VIRTUAL: &str = "virtualTraffic";

fn add_record(
    sums: &mut Sums,
    intervals: &mut HashMap<(String, String, String), usize>,
    r: &Value,
) {
    let node = r["nodeId"].as_str().unwrap_or_default().to_owned();
    for kind in [VIRTUAL, "subnetTraffic", "exitTraffic"] {
        for e in r[kind].as_array().into_iter().flatten() {
            let key = (
                node.clone(),
                e["proto"].as_u64().unwrap_or(0),
                e["src"].as_str().unwrap_or_default().to_owned(),
                e["dst"].as_str().unwrap_or_default().to_owned(),
                kind,
            );
            let s = sums.entry(key.clone()).or_default();
            for (i, f) in ["txPkts", "txBytes", "rxPkts", "rxBytes"]
                .iter()
                .enumerate()
            {
                s[i] += e[*f].as_u64().unwrap_or(0);
            }
            *intervals.entry((key.0, key.2, key.3)).or_default() += 1;
        }
    }
}

/// Reads flow records until `done` holds for the sums.
async fn follow_until(
    records: &mut Follow,
    sums: &mut Sums,
    intervals: &mut HashMap<(String, String, String), usize>,
    done: impl Fn(&Sums) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !done(sums) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flow records never added up; they say {sums:#?}"
        );
        let r = records.next().await;
        add_record(sums, intervals, &r);
    }
}

fn udp_exchange(
    lab: &Lab,
    from: usize,
    to: usize,
    ports: (u16, u16),
    count: usize,
    size: usize,
    reply: usize,
) {
    let (a, b) = (lab.addr(from), lab.addr(to));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = lab.run_in(to, move || {
        let s = UdpSocket::bind((b, ports.1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        for _ in 0..count {
            let (n, peer) = s.recv_from(&mut buf).unwrap();
            assert_eq!(n, size);
            s.send_to(&vec![7u8; reply], peer).unwrap();
        }
    });
    ready.recv().unwrap();
    let client = lab.run_in(from, move || {
        let s = UdpSocket::bind((a, ports.0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 65536];
        // Lock-step: each datagram waits for its reply.
        for _ in 0..count {
            s.send_to(&vec![1u8; size], (b, ports.1)).unwrap();
            let (n, _) = s.recv_from(&mut buf).expect("UDP reply");
            assert_eq!(n, reply);
        }
    });
    client.join().unwrap();
    server.join().unwrap();
}

/// host `from` sends `chunks` writes of `size` bytes to host `to`:`port`,
/// `pause` apart, then closes; returns the client's port.
fn tcp_send(
    lab: &Lab,
    from: usize,
    to: usize,
    port: u16,
    chunks: usize,
    size: usize,
    pause: Duration,
) -> u16 {
    let b = lab.addr(to);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let listener = lab.run_in(to, move || {
        let l = TcpListener::bind((b, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), chunks * size);
    });
    ready.recv().unwrap();
    let client_port = lab
        .run_in(from, move || {
            let mut s = TcpStream::connect(SocketAddr::from((b, port))).unwrap();
            for i in 0..chunks {
                s.write_all(&vec![5u8; size]).unwrap();
                if i + 1 < chunks {
                    std::thread::sleep(pause);
                }
            }
            let p = s.local_addr().unwrap().port();
            drop(s);
            p
        })
        .join()
        .unwrap();
    listener.join().unwrap();
    client_port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_account_for_every_packet_and_byte() {
    let Some(lab) = Lab::new("three_hosts_account_for_every_packet_and_byte", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("{}:0", lab.gateway);
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &listen,
        &["--agent-report-seconds", "1"],
    );
    let c = http();
    let auth_key = common::reusable_auth_key(&server.url).await;
    let auth = auth_key.clone();
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let addr = lab.addr(i).to_string();
        let host = format!("host{i}");
        let agent = TestAgent::start_in_netns(
            &lab.namespaces[i],
            &server.url,
            &dir.path().join(format!("agent{i}")),
            &[
                "--auth-key",
                &auth,
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
        );
        let line = agent.wait_line("tally agent registered: node ", Duration::from_secs(30));
        nodes.push(line.rsplit(' ').next().unwrap().to_owned());
        agents.push(agent);
    }
    let instances: Vec<String> = agents.iter().map(|a| a.public_id.clone()).collect();

    let mut logs = Follow::open(&server.url, "tailnode").await;
    let mut records = Follow::open(&server.url, "tailtraffic").await;

    // Flow logging is off: this exchange must never show up.
    udp_exchange(&lab, 0, 1, (41100, 41101), 5, 300, 30);

    common::set_flow_logging(&server.url, true).await;
    common::await_node_logs(&mut logs, &instances, "flow capture started on eth0").await;

    // UDP, exactly computable: 20 datagrams of 100 bytes, 20 replies of 50.
    udp_exchange(&lab, 0, 1, (41000, 41001), 20, 100, 50);
    // TCP, short: host2 sends 10,000 bytes to host1 at once.
    let short_port = tcp_send(&lab, 2, 1, 42000, 1, 10_000, Duration::ZERO);
    // TCP, long: host0 sends 1,000 bytes to host2 every 400 ms (the pauses
    // are the traffic's shape, not synchronisation).
    let long_port = tcp_send(&lab, 0, 2, 43000, 10, 1000, Duration::from_millis(400));

    let ep = |i: usize, port: u16| format!("{}:{port}", lab.addr(i));
    // Every flow between the hosts is expected in virtualTraffic.
    let udp_a = (nodes[0].clone(), 17u64, ep(0, 41000), ep(1, 41001), VIRTUAL);
    let udp_b = (nodes[1].clone(), 17u64, ep(1, 41001), ep(0, 41000), VIRTUAL);
    let short_c = (
        nodes[2].clone(),
        6u64,
        ep(2, short_port),
        ep(1, 42000),
        VIRTUAL,
    );
    let short_b = (
        nodes[1].clone(),
        6u64,
        ep(1, 42000),
        ep(2, short_port),
        VIRTUAL,
    );
    let long_a = (
        nodes[0].clone(),
        6u64,
        ep(0, long_port),
        ep(2, 43000),
        VIRTUAL,
    );
    let long_c = (
        nodes[2].clone(),
        6u64,
        ep(2, 43000),
        ep(0, long_port),
        VIRTUAL,
    );
    let expect_udp = [20, 20 * (100 + 28), 20, 20 * (50 + 28)];
    let mut sums = Sums::new();
    let mut intervals = HashMap::new();
    let keys = [&udp_a, &udp_b, &short_c, &short_b, &long_a, &long_c];
    follow_until(&mut records, &mut sums, &mut intervals, |s| {
        // Complete once both ends report the closing FIN/ACKs: the mirrored
        // counters agree and UDP matches.
        s.get(&udp_a) == Some(&expect_udp)
            && keys.iter().all(|k| s.contains_key(*k))
            && s[&short_c] == mirror(&s[&short_b])
            && s[&long_a] == mirror(&s[&long_c])
            && s[&short_b][2] * 40 + 10_000 <= s[&short_b][3]
            && s[&long_c][2] * 40 + 10_000 <= s[&long_c][3]
    })
    .await;
    // Nothing between the hosts is filed under another kind (the agents'
    // uploads to the server on the gateway are not between hosts).
    let host = |a: &str| (0..3).any(|i| a.starts_with(&format!("{}:", lab.addr(i))));
    let misfiled: Vec<_> = sums
        .keys()
        .filter(|k| k.4 != VIRTUAL && host(&k.2) && host(&k.3))
        .collect();
    assert!(
        misfiled.is_empty(),
        "traffic between nodes outside virtualTraffic: {misfiled:?}"
    );
    assert_eq!(sums[&udp_a], expect_udp, "host0's UDP counts");
    assert_eq!(sums[&udp_b], mirror(&expect_udp), "host1's UDP counts");
    assert!(
        intervals[&(long_a.0.clone(), long_a.2.clone(), long_a.3.clone())] >= 3,
        "the long connection spans several intervals"
    );
    // The typed store answers the same through the network-log API (newest
    // first, paged), by node pair, and as a graph of who talks to whom.
    let api = api_sums(&server.url, "").await;
    for k in keys {
        assert_eq!(api.get(k), sums.get(k), "network API vs records for {k:?}");
    }
    let pair = api_sums(&server.url, &format!("node={}&peer={}", nodes[0], nodes[1])).await;
    assert!(
        pair.keys()
            .all(|k| k.0 == nodes[0] && k.3.starts_with(&format!("{}:", lab.addr(1)))),
        "{pair:?}"
    );
    assert_eq!(pair.get(&udp_a), Some(&expect_udp));
    let g: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/logging/network/graph?bucket=1d&start=2020-01-01T00:00:00Z",
        server.url
    ))
    .await;
    let edge_bytes = |src: &str, dst: &str| -> u64 {
        g["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["edges"].as_array().unwrap().iter())
            .filter(|e| e["src"] == src && e["dst"] == dst)
            .map(|e| e["txBytes"].as_u64().unwrap())
            .sum()
    };
    assert!(edge_bytes(&nodes[0], &nodes[1]) >= 2560, "{g}");
    let raw_tx = |from: usize, to: usize| -> u64 {
        let prefix = format!("{}:", lab.addr(to));
        api.iter()
            .filter(|(k, _)| k.0 == nodes[from] && k.3.starts_with(&prefix))
            .map(|(_, v)| v[1])
            .sum()
    };
    assert_eq!(edge_bytes(&nodes[0], &nodes[2]), raw_tx(0, 2), "{g}");
    assert_eq!(edge_bytes(&nodes[0], &nodes[1]), raw_tx(0, 1), "{g}");
    assert!(edge_bytes(&nodes[2], &nodes[1]) >= 10_000, "{g}");
    // Opens and closes are events in the node log (source tally-flows).
    let node_log = common::read_all(&c, &server.url, "tailnode").await;
    let has = |instance: &str, text: &str| {
        node_log.iter().any(|e| {
            e["logtail"]["id"].as_str() == Some(instance)
                && e["source"] == "tally-flows"
                && e["text"].as_str().is_some_and(|t| t.contains(text))
        })
    };
    let short = format!("tcp {} -> {}", ep(2, short_port), ep(1, 42000));
    assert!(
        has(&instances[2], &format!("flow open {short}")),
        "no open event for {short}"
    );
    assert!(
        has(&instances[2], &format!("flow close {short} (fin)")),
        "no close event for {short}"
    );
    let off_port = ep(0, 41100);
    assert!(
        !sums.keys().any(|k| k.2 == off_port || k.3 == off_port),
        "traffic sent while flow logging was off was captured"
    );

    // Off again: capture stops (no restart); traffic now is not recorded.
    common::set_flow_logging(&server.url, false).await;
    common::await_node_logs(&mut logs, &instances, "flow capture stopped").await;
    udp_exchange(&lab, 0, 1, (41200, 41201), 5, 200, 20);
    common::set_flow_logging(&server.url, true).await;
    common::await_node_logs(&mut logs, &instances, "flow capture started on eth0").await;
    udp_exchange(&lab, 1, 2, (41300, 41301), 3, 100, 10);
    let marker = (nodes[1].clone(), 17u64, ep(1, 41300), ep(2, 41301), VIRTUAL);
    follow_until(&mut records, &mut sums, &mut intervals, |s| {
        s.get(&marker) == Some(&[3, 3 * 128, 3, 3 * 38])
    })
    .await;
    let gap_port = ep(0, 41200);
    assert!(
        !sums.keys().any(|k| k.2 == gap_port || k.3 == gap_port),
        "traffic sent while flow logging was off was captured"
    );
    for a in agents {
        a.stop();
    }
}

/// Sums of every record the network-log API returns (all pages).
async fn api_sums(url: &str, filter: &str) -> Sums {
    let c = http();
    let mut sums = Sums::new();
    let mut intervals = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!(
            "{url}/api/v2/tailnet/-/logging/network?start=2020-01-01T00:00:00Z&limit=50&{filter}"
        );
        if let Some(cur) = &cursor {
            q.push_str(&format!("&cursor={cur}"));
        }
        let v: Value = c
            .get(&q)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v.get("behind").is_none(), "{v}");
        for r in v["logs"].as_array().unwrap() {
            assert!(r["logged"].is_string(), "{r}");
            add_record(&mut sums, &mut intervals, r);
        }
        match v["nextCursor"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => return sums,
        }
    }
}

fn mirror(c: &[u64; 4]) -> [u64; 4] {
    [c[2], c[3], c[0], c[1]]
}
