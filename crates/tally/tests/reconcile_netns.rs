//! Reconciliation on real traffic: three network namespaces on a bridge (the
//! lab of `flows_netns`), an agent in each capturing its `eth0`, real UDP and
//! TCP traffic between them the whole time, and the server's reconciler
//! pairing both ends of every connection (1-s windows, 1-s flow intervals).
//!
//! - A (host0) and B (host1) talk UDP in lock-step: never touched, never
//!   down. Their pair must stay 100% complete and both ends must account
//!   for exactly what was sent.
//! - C (host2)'s agent is stopped (SIGTERM, like `systemctl stop`) for a
//!   while, then started again; A (TCP) and B (UDP) keep talking to C's
//!   sockets meanwhile. The reconciler must name C as the silent node, with
//!   A and B as peers, in windows overlapping the time it was down, and
//!   never in a window lying wholly in the time it was up.
//! - B's records are edited before upload, the way a compromised node
//!   would: B's agent signs each upload batch when it reads it from its
//!   disk queue, right before sending (`crates/agent/src/uploader.rs`,
//!   `signing.rs`); the queue itself only carries a CRC-32C per record. So
//!   an attacker with root on B who edits a queued record (fixing its CRC)
//!   gets it signed with B's own key: the batch verifies, no integrity
//!   flag, and only the other end's records can show the lie. The test does
//!   exactly that: B reaches the server through a TCP proxy in this test,
//!   which is paused (every byte held) so the queue backs up; meanwhile B
//!   copies 1 MB to C over a new TCP connection, and B's queued, not yet
//!   signed records of that connection are edited in place to claim a
//!   tenth of what B sent; the proxy resumes. The reconciler must report a
//!   count mismatch naming B (the sender) and C for those records' window,
//!   and the integrity report must show nothing flagged.
//!
//! At the end C is stopped again while the others still talk to it: its
//! missing half in a window after it exited is the signal that every
//! earlier window has been judged (windows are judged in time order), so
//! the absence of other findings is meaningful without waiting on a clock.

mod common;
use tally_testkit::netns;

use common::{Follow, TestAgent, TestServer};
use netns::Lab;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tally_proto::timefmt::{format_nanos, now_nanos, parse_rfc3339};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: i64 = 1_000_000_000;
/// `--reconcile-window`, also the agents' `--flow-interval`.
const WINDOW: &str = "1s";
/// `--reconcile-grace`: longer than B's uploads are held back (a few
/// seconds) and than C's records wait in its queue across its restart, so
/// no record is judged missing only because it arrived late.
const GRACE: &str = "10s";
/// How far a finding's window may lie from the test's own timestamps: one
/// window (records are split across windows) plus the reconciler's clock
/// offset estimate (receive delay, a fraction of a second here).
const SLACK: i64 = 2 * SEC;

/// Summed counters per (node, proto, src, dst).
type Sums = HashMap<(String, u64, String, String), [u64; 4]>;

/// The `tailtraffic` stream, summed per node and connection.
struct Flows {
    follow: Follow,
    sums: Sums,
    /// Latest record end per node (node clock).
    reported: HashMap<String, i64>,
}

impl Flows {
    async fn next(&mut self) {
        let r = self.follow.next().await;
        let node = r["nodeId"].as_str().unwrap_or_default().to_owned();
        for e in r["virtualTraffic"].as_array().into_iter().flatten() {
            let key = (
                node.clone(),
                e["proto"].as_u64().unwrap_or(0),
                e["src"].as_str().unwrap_or_default().to_owned(),
                e["dst"].as_str().unwrap_or_default().to_owned(),
            );
            let s = self.sums.entry(key).or_default();
            for (i, f) in ["txPkts", "txBytes", "rxPkts", "rxBytes"]
                .iter()
                .enumerate()
            {
                s[i] += e[*f].as_u64().unwrap_or(0);
            }
        }
        if let Some(end) = r["end"].as_str().and_then(parse_rfc3339) {
            let t = self.reported.entry(node).or_insert(end);
            *t = (*t).max(end);
        }
    }

    /// Reads records until `node` has reported an interval ending at `t` or later.
    async fn until_reported(&mut self, node: &str, t: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while self.reported.get(node).is_none_or(|r| *r < t) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {node} never reported up to {}",
                format_nanos(t)
            );
            self.next().await;
        }
    }

    /// Reads records until `done` holds for the sums.
    async fn until(&mut self, what: &str, done: impl Fn(&Sums) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while !done(&self.sums) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the flow records never added up; they say {:#?}",
                self.sums
            );
            self.next().await;
        }
    }
}

/// Lock-step UDP from host `from` to host `to` until `stop`: each datagram
/// of `size` bytes waits for its reply of `reply` bytes, `every` apart (the
/// traffic's shape, not synchronisation). The client thread returns the
/// number of exchanges; both ends saw exactly that many each way.
fn udp_traffic(
    lab: &Lab,
    (from, to): (usize, usize),
    ports: (u16, u16),
    (size, reply): (usize, usize),
    every: Duration,
    stop: &Arc<AtomicBool>,
) -> (JoinHandle<u64>, JoinHandle<()>) {
    let (a, b) = (lab.addr(from), lab.addr(to));
    let done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server_done = done.clone();
    let server = lab.run_in(to, move || {
        let s = UdpSocket::bind((b, ports.1)).unwrap();
        // Wakes up now and then to see whether the client has finished.
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            match s.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    assert_eq!(n, size);
                    s.send_to(&vec![7u8; reply], peer).unwrap();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if server_done.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(e) => panic!("UDP server: {e}"),
            }
        }
    });
    ready.recv().unwrap();
    let stop = stop.clone();
    let client = lab.run_in(from, move || {
        let s = UdpSocket::bind((a, ports.0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            s.send_to(&vec![1u8; size], (b, ports.1)).unwrap();
            let (got, _) = s.recv_from(&mut buf).expect("UDP reply");
            assert_eq!(got, reply);
            n += 1;
            std::thread::sleep(every);
        }
        done.store(true, Ordering::SeqCst);
        n
    });
    (client, server)
}

/// One TCP connection from host `from` to host `to`:`port` carrying
/// `chunk` bytes every `every` until `stop`; the client returns the bytes
/// sent, the listener the bytes received.
fn tcp_traffic(
    lab: &Lab,
    (from, to): (usize, usize),
    port: u16,
    chunk: usize,
    every: Duration,
    stop: &Arc<AtomicBool>,
) -> (JoinHandle<u64>, JoinHandle<u64>) {
    let b = lab.addr(to);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let listener = lab.run_in(to, move || {
        let l = TcpListener::bind((b, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len() as u64
    });
    ready.recv().unwrap();
    let stop = stop.clone();
    let client = lab.run_in(from, move || {
        let mut s = TcpStream::connect(SocketAddr::from((b, port))).unwrap();
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            s.write_all(&vec![5u8; chunk]).unwrap();
            sent += chunk as u64;
            std::thread::sleep(every);
        }
        sent
    });
    (client, listener)
}

/// Host `from` sends `bytes` to host `to`:`port` over a new TCP connection
/// and closes it; returns the client's port and the bytes received.
fn tcp_burst(lab: &Lab, (from, to): (usize, usize), port: u16, bytes: usize) -> (u16, u64) {
    let b = lab.addr(to);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let listener = lab.run_in(to, move || {
        let l = TcpListener::bind((b, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len() as u64
    });
    ready.recv().unwrap();
    let client_port = lab
        .run_in(from, move || {
            let mut s = TcpStream::connect(SocketAddr::from((b, port))).unwrap();
            s.write_all(&vec![9u8; bytes]).unwrap();
            s.local_addr().unwrap().port()
        })
        .join()
        .unwrap();
    (client_port, listener.join().unwrap())
}

/// A TCP proxy in front of the server that can hold every byte in both
/// directions (an outage that leaves connections open: requests in flight
/// complete once it resumes, so nothing is sent twice).
struct Proxy {
    url: String,
    paused: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(listen: &str, upstream: &str) -> Self {
        let l = tokio::net::TcpListener::bind(listen).await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (paused, rx) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, rx.clone()));
                tokio::spawn(pump(ur, dw, rx.clone()));
            }
        });
        Self { url, paused }
    }

    fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// CRC-32C (Castagnoli), as the agent's queue records carry.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A log entry (a flow record) in an agent's disk queue.
struct Queued {
    path: PathBuf,
    /// (segment id, byte offset of the record header).
    at: (u64, u64),
    json: Vec<u8>,
}

/// Every intact entry of the queue in `dir` (format: `crates/agent/src/queue.rs`:
/// `<20-digit id>.seg` files of `u32 len | u32 CRC-32C | payload`, payload
/// kind 1 = entry JSON).
fn queued(dir: &Path) -> Vec<Queued> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let id = p
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((id, p))
        })
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for (id, path) in segs {
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        let mut pos = 0usize;
        while let Some(h) = data.get(pos..pos + 8) {
            let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(h[4..].try_into().unwrap());
            let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if len == 0 || crc32c(payload) != crc {
                break;
            }
            if payload[0] == 1 {
                out.push(Queued {
                    path: path.clone(),
                    at: (id, pos as u64),
                    json: payload[1..].to_vec(),
                });
            }
            pos += 8 + len;
        }
    }
    out
}

/// Where the batch the uploader has signed and is sending ends
/// (`batch-pending.json`, see `crates/agent/src/signing.rs`); entries from
/// there on are not signed yet.
fn pending_end(dir: &Path) -> Option<(u64, u64)> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join("batch-pending.json")).ok()?).ok()?;
    Some((v["end"]["segment"].as_u64()?, v["end"]["offset"].as_u64()?))
}

/// Waits until the uploader of the queue in `dir` has a batch in flight
/// and a record beginning at `since` or later is queued past it; returns
/// where that batch ends.
async fn await_queued(dir: &Path, since: i64) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no record begun after {} queued past the batch in flight in {}",
            format_nanos(since),
            dir.display()
        );
        if let Some(end) = pending_end(dir)
            && queued(dir).iter().any(|q| {
                q.at >= end
                    && serde_json::from_slice::<Value>(&q.json).is_ok_and(|v| {
                        v["start"]
                            .as_str()
                            .and_then(parse_rfc3339)
                            .is_some_and(|t| t >= since)
                    })
            })
        {
            return end;
        }
        // The agent signals nothing: its files are polled, within the deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rewrites a queued entry in place with `json` (no longer than the
/// original: padded with blanks after the object), with a valid CRC.
fn rewrite(q: &Queued, json: &[u8]) {
    assert!(
        json.len() <= q.json.len(),
        "the edit must not grow the entry"
    );
    let mut payload = vec![1u8];
    payload.extend_from_slice(json);
    payload.resize(1 + q.json.len(), b' ');
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32c(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&q.path)
        .unwrap();
    f.write_all_at(&frame, q.at.1).unwrap();
    f.sync_all().unwrap();
}

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
                WINDOW,
            ],
        )
    })
}

/// Whether the finding's window lies inside `[from, to)`.
fn within(f: &Value, from: i64, to: i64) -> bool {
    f["window"]["start"].as_i64().is_some_and(|s| s >= from)
        && f["window"]["end"].as_i64().is_some_and(|e| e <= to)
}

/// Whether the finding's window overlaps `[from, to)`.
fn overlaps(f: &Value, from: i64, to: i64) -> bool {
    let (s, e) = (
        f["window"]["start"].as_i64().unwrap_or(i64::MAX),
        f["window"]["end"].as_i64().unwrap_or(i64::MIN),
    );
    s < to && e > from
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn findings_name_the_stopped_agent_and_the_edited_records() {
    let Some(lab) = Lab::new("findings_name_the_stopped_agent_and_the_edited_records", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("{}:0", lab.gateway);
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &listen,
        &[
            "--agent-report-seconds",
            "1",
            "--reconcile-window",
            WINDOW,
            "--reconcile-grace",
            GRACE,
        ],
    );
    let auth = common::reusable_auth_key(&server.url).await;
    // B reaches the server only through the proxy.
    let proxy = Proxy::start(&listen, &server.addr()).await;
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let url = if i == 1 { &proxy.url } else { &server.url };
        let agent = start_agent(&lab, i, url, dir.path(), &auth);
        let line = tokio::task::block_in_place(|| {
            agent.wait_line("tally agent registered: node ", Duration::from_secs(30))
        });
        nodes.push(line.rsplit(' ').next().unwrap().to_owned());
        agents.push(Some(agent));
    }
    let (a, b, c) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    let instances: Vec<String> = agents
        .iter()
        .map(|x| x.as_ref().unwrap().public_id.clone())
        .collect();
    let mut logs = Follow::open(&server.url, "tailnode").await;
    let mut flows = Flows {
        follow: Follow::open(&server.url, "tailtraffic").await,
        sums: Sums::new(),
        reported: HashMap::new(),
    };
    let mut findings = Follow::open(&server.url, "findings").await;

    // Flow logging on once every node is registered: the answer that turns
    // capture on also lists every peer, so all traffic below is virtual.
    common::set_flow_logging(&server.url, true).await;
    let ids: Vec<&str> = instances.iter().map(String::as_str).collect();
    common::await_node_logs(&mut logs, &ids, "flow capture started on eth0").await;

    // Traffic from now until the end: A<->B UDP, B->C UDP (1,000-byte
    // datagrams), A->C TCP.
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(20);
    let ab = udp_traffic(&lab, (0, 1), (45000, 45001), (200, 100), every, &stop);
    let bc = udp_traffic(&lab, (1, 2), (45100, 45101), (1000, 100), every, &stop);
    let ac = tcp_traffic(&lab, (0, 2), 45200, 1000, every, &stop);
    let t0 = now_nanos();
    let ep = |i: usize, port: u16| format!("{}:{port}", lab.addr(i));

    // Clean: three seconds of everything up.
    flows.until_reported(&a, t0 + 3 * SEC).await;
    flows.until_reported(&c, t0 + 3 * SEC).await;

    // C's agent stops; the others keep talking to C until A has reported
    // four more seconds of it.
    let t_down = now_nanos();
    tokio::task::block_in_place(|| agents[2].take().unwrap().stop());
    flows.until_reported(&a, now_nanos() + 4 * SEC).await;
    let restarted = start_agent(&lab, 2, &server.url, dir.path(), &auth);
    assert_eq!(restarted.public_id, instances[2], "C keeps its identity");
    agents[2] = Some(restarted);
    common::await_node_logs(
        &mut logs,
        &[instances[2].as_str()],
        "flow capture started on eth0",
    )
    .await;
    let t_up = now_nanos();
    // Clean again, C up, for three seconds of C's own records.
    flows.until_reported(&c, t_up + 3 * SEC).await;

    // B's records are edited before upload. Hold B's connection to the
    // server: the uploader gets stuck sending one signed batch and new
    // records pile up in B's queue, unsigned. Once a record captured after
    // the hold began is queued past the batch in flight, that batch is the
    // stuck one (a response that slipped through as the hold began was
    // followed by the next batch long before).
    let queue = dir.path().join("agent1").join(tally_agent::FLOW_QUEUE_DIR);
    proxy.pause(true);
    let t_pause = now_nanos();
    let signed_end = await_queued(&queue, t_pause).await;
    // Meanwhile B copies 1 MB to C over a new TCP connection (what B will
    // want to hide) and closes it; once B has queued a record begun after
    // the close, every record of that connection is queued, unsigned.
    let (burst_port, burst) =
        tokio::task::block_in_place(|| tcp_burst(&lab, (1, 2), 45300, 1 << 20));
    assert_eq!(burst, 1 << 20, "C received the copy");
    let t_closed = now_nanos();
    let (b_src, c_dst) = (ep(1, burst_port), ep(2, 45300));
    await_queued(&queue, t_closed).await;
    // The edit: B's records of that connection claim a tenth of what B
    // sent, with fixed CRCs.
    let (mut cut_pkts, mut cut_bytes) = (0, 0);
    let mut edited = (i64::MAX, i64::MIN);
    for q in queued(&queue).into_iter().filter(|q| q.at >= signed_end) {
        let mut record: Value = serde_json::from_slice(&q.json).unwrap();
        let mut touched = false;
        for e in record["virtualTraffic"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if e["src"] == b_src.as_str() && e["dst"] == c_dst.as_str() {
                let (p, by) = (
                    e["txPkts"].as_u64().unwrap_or(0),
                    e["txBytes"].as_u64().unwrap_or(0),
                );
                e["txPkts"] = json!(p / 10);
                e["txBytes"] = json!(by / 10);
                cut_pkts += p - p / 10;
                cut_bytes += by - by / 10;
                touched = true;
            }
        }
        if touched {
            rewrite(&q, &serde_json::to_vec(&record).unwrap());
            let time = |k: &str| record[k].as_str().and_then(parse_rfc3339).unwrap();
            edited = (edited.0.min(time("start")), edited.1.max(time("end")));
        }
    }
    assert!(
        cut_bytes > 900_000,
        "B's queued records of the 1-MB copy hold only {cut_bytes} bytes to cut"
    );
    // Still the same batch in flight: the uploader has not read past it,
    // so it reads (and signs) the edited records.
    assert_eq!(
        pending_end(&queue),
        Some(signed_end),
        "B's uploader moved on while its connection was held"
    );
    proxy.pause(false);

    // Clean again: four seconds of A's and B's records past the edited one
    // (B's held records arrive too).
    flows.until_reported(&a, edited.1 + 4 * SEC).await;
    flows.until_reported(&b, edited.1 + 4 * SEC).await;

    // The end: C stops again while A and B still talk to it. Once C is
    // silent in a window starting after it exited, every earlier window
    // has been judged.
    let t_final = now_nanos();
    tokio::task::block_in_place(|| agents[2].take().unwrap().stop());
    let t_gone = now_nanos();
    let mut all: Vec<Value> = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let f = findings.next().await;
            let sentinel = f["class"] == "missing_agent_silent"
                && f["node"] == c.as_str()
                && f["window"]["start"].as_i64().is_some_and(|s| s >= t_gone);
            all.push(f);
            if sentinel {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("C's final silence was never reported; findings: {all:#?}"));
    stop.store(true, Ordering::SeqCst);
    let (n_ab, n_bc, sent_ac) = tokio::task::block_in_place(|| {
        let n_ab = ab.0.join().unwrap();
        ab.1.join().unwrap();
        let n_bc = bc.0.join().unwrap();
        bc.1.join().unwrap();
        let sent = ac.0.join().unwrap();
        assert_eq!(ac.1.join().unwrap(), sent, "TCP A->C bytes");
        (n_ab, n_bc, sent)
    });

    // The reconciliation API: the same findings (and any written in the
    // same step after the one awaited: checked alike).
    let start = format_nanos(t0 - 60 * SEC);
    let report: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/reconciliation?start={start}",
        server.url
    ))
    .await;
    let api = report["findings"].as_array().unwrap();
    for f in &all {
        assert!(
            api.iter().any(|x| x["id"] == f["id"]),
            "finding {f} missing from the API: {report:#}"
        );
    }
    let mut later: Vec<Value> = api
        .iter()
        .filter(|x| !all.iter().any(|f| f["id"] == x["id"]))
        .cloned()
        .collect();
    later.reverse();
    all.extend(later);

    let rel = |t: i64| format!("t0{:+.1}s", (t - t0) as f64 / 1e9);
    let name = |id: &str| -> String {
        match nodes.iter().position(|n| n == id) {
            Some(i) => ["A", "B", "C"][i].to_owned(),
            None => id.to_owned(),
        }
    };
    let show = |f: &Value| {
        format!(
            "{} node={} peer={} window=[{}, {}) src={} dst={} sent={} received={}",
            f["class"].as_str().unwrap_or("?"),
            name(f["node"].as_str().unwrap_or("?")),
            name(f["peer"].as_str().unwrap_or("-")),
            rel(f["window"]["start"].as_i64().unwrap_or(0)),
            rel(f["window"]["end"].as_i64().unwrap_or(0)),
            f["evidence"]["src"],
            f["evidence"]["dst"],
            f["evidence"]["sent"],
            f["evidence"]["received"],
        )
    };
    eprintln!(
        "C down [{}, {}], B's edited records [{}, {}] (-{cut_pkts} pkts, -{cut_bytes} bytes), C stopped again at {}; {} findings:",
        rel(t_down),
        rel(t_up),
        rel(edited.0),
        rel(edited.1),
        rel(t_final),
        all.len()
    );
    for f in &all {
        eprintln!("  {}", show(f));
    }
    let dump = || {
        all.iter()
            .map(|f| format!("{}\n  {f}", show(f)))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Exact accounting of the real traffic: both ends of each UDP exchange
    // saw every datagram (C's end of B->C is not checked: C was down for a
    // while), and B's records of the copy say exactly what C received minus
    // the edit.
    let (ab_a, ab_b) = (
        (a.clone(), 17u64, ep(0, 45000), ep(1, 45001)),
        (b.clone(), 17u64, ep(1, 45001), ep(0, 45000)),
    );
    let want_ab = [n_ab, n_ab * (200 + 28), n_ab, n_ab * (100 + 28)];
    let bc_b = (b.clone(), 17u64, ep(1, 45100), ep(2, 45101));
    let want_bc = [n_bc, n_bc * (1000 + 28), n_bc, n_bc * (100 + 28)];
    let (burst_b, burst_c) = (
        (b.clone(), 6u64, b_src.clone(), c_dst.clone()),
        (c.clone(), 6u64, c_dst.clone(), b_src.clone()),
    );
    flows
        .until("exact counts", |s| {
            let copy = match (s.get(&burst_b), s.get(&burst_c)) {
                // B's records of the copy say what C received minus exactly
                // the edit; what C sent back (ACKs) was not edited.
                (Some(bv), Some(cv)) => {
                    [bv[0] + cut_pkts, bv[1] + cut_bytes, bv[2], bv[3]] == mirror(cv)
                        && cv[3] >= 1 << 20
                }
                _ => false,
            };
            copy && s.get(&ab_a) == Some(&want_ab)
                && s.get(&ab_b) == Some(&mirror(&want_ab))
                && s.get(&bc_b) == Some(&want_bc)
        })
        .await;
    // A's TCP sender saw at least its payload leave.
    let ac_tx: u64 = flows
        .sums
        .iter()
        .filter(|(k, _)| k.0 == a && k.1 == 6 && k.3 == ep(2, 45200))
        .map(|(_, v)| v[1])
        .sum();
    assert!(ac_tx >= sent_ac, "A's TCP records: {ac_tx} < {sent_ac}");

    // Every check below is made, and all that fail are reported together.
    let mut problems: Vec<String> = Vec::new();
    // C's downtime: a missing half naming C, with each peer, overlapping it.
    for (peer, what) in [(&a, "A (TCP)"), (&b, "B (UDP)")] {
        if !all.iter().any(|f| {
            f["class"] == "missing_agent_silent"
                && f["node"] == c.as_str()
                && f["peer"] == peer.as_str()
                && overlaps(f, t_down, t_up)
        }) {
            problems.push(format!(
                "no missing_agent_silent naming C with peer {what} while C was down"
            ));
        }
    }
    // B's edit: a count mismatch naming B (the sender) and C, for the copy,
    // in the edited records' window.
    let is_edit = |f: &Value| {
        f["class"] == "count_mismatch"
            && f["node"] == b.as_str()
            && f["peer"] == c.as_str()
            && f["evidence"]["src"] == b_src.as_str()
            && f["evidence"]["dst"] == c_dst.as_str()
            && within(f, edited.0 - SLACK, edited.1 + SLACK)
    };
    if !all.iter().any(is_edit) {
        problems.push("no count_mismatch naming B (sender) and C for B's edited records of the copy, in their window".into());
    }
    // Nothing else: C named only for windows that include its downtime and
    // end by its restart (a finding proven from running totals names the
    // span since the last point its proof rests on, which may begin while C
    // was still up), nothing for the pair A-B, no integrity or sequence
    // findings.
    for f in &all {
        let ends_by = |to: i64| f["window"]["end"].as_i64().is_some_and(|e| e <= to);
        let c_down = f["class"] == "missing_agent_silent"
            && f["node"] == c.as_str()
            && (f["peer"] == a.as_str() || f["peer"] == b.as_str())
            && ((overlaps(f, t_down, t_up) && ends_by(t_up + SLACK))
                || within(f, t_final - SLACK, i64::MAX));
        if !(c_down || is_edit(f)) {
            problems.push(format!("unexpected finding: {}", show(f)));
        }
    }

    // Completeness: the pair A-B whole, the pairs with C not.
    let pair = |x: &str, y: &str| -> Value {
        report["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                let n = &p["nodes"];
                (n[0] == x && n[1] == y) || (n[0] == y && n[1] == x)
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    let p_ab = pair(&a, &b);
    eprintln!("pair A-B: {p_ab}");
    if !(p_ab["judged"].as_u64().is_some_and(|j| j >= 10)
        && p_ab["completeness"].as_f64() == Some(1.0))
    {
        problems.push(format!("pair A-B not 100% complete: {p_ab}"));
    }
    for (x, y, what) in [(&a, &c, "A-C"), (&b, &c, "B-C")] {
        let p = pair(x, y);
        eprintln!("pair {what}: {p}");
        if !p["completeness"].as_f64().is_some_and(|r| r < 1.0) {
            problems.push(format!("pair {what} complete despite C's downtime: {p}"));
        }
    }
    // The edited records came in batches that verified: nothing flagged.
    let integrity: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/logging/integrity?start={start}",
        server.url
    ))
    .await;
    if !(integrity["batchesChecked"].as_u64().is_some_and(|n| n > 0)
        && integrity["flagged"]
            .as_array()
            .is_some_and(|f| f.is_empty()))
    {
        problems.push(format!("integrity report: {integrity}"));
    }
    assert!(
        problems.is_empty(),
        "{}\n\nall findings:\n{}",
        problems.join("\n"),
        dump()
    );

    for x in agents.into_iter().flatten() {
        tokio::task::block_in_place(|| x.stop());
    }
}

fn mirror(c: &[u64; 4]) -> [u64; 4] {
    [c[2], c[3], c[0], c[1]]
}
