//! Reconciler restarts: three registered nodes stream signed flow records
//! (both halves of their connections, with an edited byte count, a missing
//! half and an unsigned batch injected) while the server is killed with
//! `kill -9` again and again (mid-round, as soon as findings are written,
//! and right after a restart). The `findings` collection must end up
//! holding every finding once, and exactly the findings that
//! `tally reconcile replay` recomputes offline from the same data
//! directory: no duplicates, no gaps.

mod common;

use common::{TestServer, http, read_all};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tally_transparency::batch::{BatchSigner, ChainState, generate_signing_key};

const SEC: i64 = 1_000_000_000;
/// Rounds of one 1-s flow record per node.
const ROUNDS: u64 = 24;
/// Round whose record from beta says it received a tenth of what alpha sent.
const EDIT_ROUND: u64 = 4;
/// Halves left out: (sender's port, round) — gamma's of gamma -> alpha,
/// then beta's of beta -> gamma.
const MISSING: [(u16, u64); 2] = [(42000, 9), (41000, 18)];
/// Consecutive records each of those senders leaves its half out of. Fewer
/// are below what the records can prove: with 1-s records and a 1-s
/// pairing margin, the neighbours of a gap of up to three records still
/// overlap the other end's halves, and the count bounds allow a record's
/// worth of straddle (the documented detection floor).
const MISSING_ROUNDS: u64 = 4;
/// Round alpha uploads without a signature.
const UNSIGNED_ROUND: u64 = 14;
const SERVER_ARGS: &[&str] = &["--reconcile-window", "1s", "--reconcile-grace", "5s"];

/// Recognizes the finding of one injected fault.
type IsFault = Box<dyn Fn(&Value) -> bool>;

fn rfc(n: i64) -> String {
    tally_proto::timefmt::format_nanos(n)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    addr: &'static str,
    private: String,
    id: String,
    signer: BatchSigner,
    chain: ChainState,
}

/// A connection: sender (node index, port), receiver (node index, port),
/// and the rounds it lasts.
struct Conn {
    from: (usize, u16),
    to: (usize, u16),
    rounds: std::ops::Range<u64>,
}

/// Alpha -> beta, beta -> gamma and gamma -> alpha all along (the senders
/// of the last two leave their half out of four records each), and a short
/// alpha -> beta connection of which beta's middle record was edited.
const CONNS: [Conn; 4] = [
    Conn {
        from: (0, 40000),
        to: (1, 5432),
        rounds: 0..ROUNDS,
    },
    Conn {
        from: (1, MISSING[1].0),
        to: (2, 443),
        rounds: 0..ROUNDS,
    },
    Conn {
        from: (2, MISSING[0].0),
        to: (0, 22),
        rounds: 0..ROUNDS,
    },
    Conn {
        from: (0, EDIT_PORT),
        to: (1, 8080),
        rounds: EDIT_ROUND - 1..EDIT_ROUND + 2,
    },
];
/// Alpha's port of the connection beta's edited record is of.
const EDIT_PORT: u16 = 45000;

/// The flow record node `n` reports for round `r`, whose node-clock
/// interval starts at `start`.
fn record(nodes: &[Node], n: usize, r: u64, start: i64) -> Value {
    let mut entries = Vec::new();
    for (k, c) in CONNS.iter().enumerate() {
        let ((s, sport), (d, dport)) = (c.from, c.to);
        if !c.rounds.contains(&r) {
            continue;
        }
        let (pkts, bytes) = (40 + k as u64, 50_000 + 1_000 * k as u64);
        let (back_pkts, back_bytes) = (20u64, 2_000u64);
        if n == s {
            if MISSING
                .iter()
                .any(|&(p, r0)| p == sport && (r0..r0 + MISSING_ROUNDS).contains(&r))
            {
                continue;
            }
            entries.push(json!({
                "proto": 6,
                "src": format!("{}:{sport}", nodes[s].addr),
                "dst": format!("{}:{dport}", nodes[d].addr),
                "txPkts": pkts, "txBytes": bytes, "rxPkts": back_pkts, "rxBytes": back_bytes,
            }));
        } else if n == d {
            // Beta's edited record says a tenth arrived.
            let rx_bytes = if sport == EDIT_PORT && r == EDIT_ROUND {
                bytes / 10
            } else {
                bytes
            };
            entries.push(json!({
                "proto": 6,
                "src": format!("{}:{dport}", nodes[d].addr),
                "dst": format!("{}:{sport}", nodes[s].addr),
                "txPkts": back_pkts, "txBytes": back_bytes, "rxPkts": pkts, "rxBytes": rx_bytes,
            }));
        }
    }
    json!({
        "nodeId": nodes[n].id,
        "start": rfc(start),
        "end": rfc(start + SEC),
        "virtualTraffic": entries,
        "logtail": { "proc_id": 7, "proc_seq": r + 1 },
    })
}

/// Posts one upload until the server acknowledges it (the server may be
/// down: it is being killed and restarted on the same address). Returns
/// the batch verdict.
async fn upload(
    url: &str,
    private: &str,
    body: &[u8],
    headers: &[(&'static str, String)],
) -> String {
    let c = http();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "upload never acknowledged; last answer: {last}"
        );
        let mut req = c
            .post(format!("{url}/c/tailtraffic/{private}"))
            .body(body.to_vec())
            .timeout(Duration::from_secs(10));
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        match req.send().await {
            Ok(r) if r.status() == 200 => {
                return r
                    .headers()
                    .get("tally-batch-verdict")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
            }
            Ok(r) => {
                let status = r.status();
                last = format!("{status} {}", r.text().await.unwrap_or_default());
                assert!(status.is_server_error(), "unexpected answer: {last}");
            }
            Err(e) => last = e.to_string(),
        }
        // Retry pause while the server restarts.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every entry of the `findings` collection.
async fn stored_findings(url: &str) -> Vec<Value> {
    read_all(&http(), url, "findings").await
}

/// Polls the findings collection (every 100 ms, at most `limit`) until
/// `done` holds for it; returns whether it did.
async fn await_findings(url: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done(&stored_findings(url).await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tally reconcile replay --data-dir DIR [args]`: status, stdout, stderr.
fn replay(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin())
        .args(["reconcile", "replay", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The replay's findings by ID (asserting the replay itself has no duplicate).
fn replayed(dir: &Path) -> BTreeMap<String, Value> {
    let (ok, out, err) = replay(dir, &["--json"]);
    assert!(ok, "replay failed: {err}");
    let mut m = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = v["id"].as_str().expect("finding id").to_owned();
        assert!(
            m.insert(id, v).is_none(),
            "replay repeats a finding: {line}"
        );
    }
    m
}

fn short(f: &Value) -> String {
    format!(
        "{} {} {} -> {} window {}..{}: {}",
        f["id"].as_str().unwrap_or("?"),
        f["class"].as_str().unwrap_or("?"),
        f["node"].as_str().unwrap_or("?"),
        f["peer"].as_str().unwrap_or("-"),
        f["window"]["start"],
        f["window"]["end"],
        f["detail"].as_str().unwrap_or("")
    )
}

/// What the reconciler's saved state says it had written (for the log).
fn saved_written(dir: &Path) -> String {
    match std::fs::read(dir.join("reconcile.state")) {
        // A JSON line (position, findings written), then the snapshot.
        Ok(b) => {
            match serde_json::from_slice::<Value>(b.split(|c| *c == b'\n').next().unwrap_or(&[])) {
                Ok(v) => format!("pos {} written {}", v["pos"], v["written"]),
                Err(e) => format!("unreadable ({e})"),
            }
        }
        Err(e) => format!("none ({e})"),
    }
}

/// Whether the finding is about the connection with this port.
fn on_conn(f: &Value, port: u16) -> bool {
    let ev = &f["evidence"];
    [&ev["src"], &ev["dst"]]
        .iter()
        .any(|a| a.as_str().is_some_and(|a| a.ends_with(&format!(":{port}"))))
}

fn names_pair(f: &Value, a: &str, b: &str) -> bool {
    let (n, p) = (
        f["node"].as_str().unwrap_or(""),
        f["peer"].as_str().unwrap_or(""),
    );
    (n == a && p == b) || (n == b && p == a)
}

/// Whether the finding's server-time window meets node-clock round `r`
/// (node clocks here are the server's; a margin covers upload delays).
fn in_round(f: &Value, t0: i64, r: u64) -> bool {
    let (s, e) = (
        f["window"]["start"].as_i64().unwrap_or(i64::MIN),
        f["window"]["end"].as_i64().unwrap_or(i64::MIN),
    );
    let (a, b) = (t0 + r as i64 * SEC, t0 + (r as i64 + 1) * SEC);
    s < b + 3 * SEC && e > a - SEC
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_the_same_after_kill_9_restarts_as_an_offline_replay() {
    let test_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("server");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = TestServer::start_on(&dir, &listen, SERVER_ARGS);
    let url = server.url.clone();

    // Three registered nodes, flow logging on.
    let auth = common::reusable_auth_key(&url).await;
    let mut nodes = Vec::new();
    for (name, addr) in [
        ("alpha", "100.64.0.1"),
        ("beta", "100.64.0.2"),
        ("gamma", "100.64.0.3"),
    ] {
        let (private, id) = common::register_node(&url, &auth, name, addr).await;
        let instance = private.public().to_hex();
        let private = private.to_hex();
        let signer = BatchSigner::new(generate_signing_key(), &instance, "tailtraffic").unwrap();
        nodes.push(Node {
            addr,
            private,
            id,
            signer,
            chain: ChainState::GENESIS,
        });
    }
    common::set_flow_logging(&url, true).await;
    // The reconciler knows the nodes (from the control database) before
    // their first records, as the offline replay does.
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = common::get_json(&format!("{url}/api/v2/tailnet/-/reconciliation")).await;
        let known: BTreeSet<&str> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["node"].as_str())
            .collect();
        if ids.iter().all(|i| known.contains(i.as_str())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reconciler never learned the nodes: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (alpha, beta, gamma) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // The stream: every second each node uploads its record of the second
    // before, signed (but for one), retrying through the restarts. The
    // pace is the workload's (real-time flow intervals), not a wait for
    // anything.
    // Uploads acknowledged so far.
    let (progress_tx, progress) = tokio::sync::watch::channel(0u64);
    // The mid-round kills, as the number of uploads acknowledged before
    // each: round 2 with alpha's record in (not beta's and gamma's), round 8
    // with gamma's not in, round 19 with alpha's in. The stream holds there
    // until the kill is done (`released`), so each kill hits its moment.
    const HOLDS: [u64; 3] = [2 * 3 + 1, 8 * 3 + 2, 19 * 3 + 1];
    let (release, released) = tokio::sync::watch::channel(0u64);
    let t0 = tally_proto::timefmt::now_nanos();
    let paced_from = tokio::time::Instant::now();
    let generator = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut verdicts = BTreeMap::<String, u64>::new();
            let mut released = released;
            for r in 0..ROUNDS {
                tokio::time::sleep_until(paced_from + Duration::from_secs(r + 1)).await;
                let start = t0 + r as i64 * SEC;
                for n in 0..nodes.len() {
                    let i = r * 3 + n as u64;
                    if HOLDS.contains(&i) {
                        released
                            .wait_for(|k| *k >= i)
                            .await
                            .expect("the test dropped the release");
                    }
                    let body = serde_json::to_vec(&json!([record(&nodes, n, r, start)])).unwrap();
                    let verdict = if n == 0 && r == UNSIGNED_ROUND {
                        upload(&url, &nodes[n].private, &body, &[]).await
                    } else {
                        let b = nodes[n].signer.sign(&nodes[n].chain, &body).unwrap();
                        let v = upload(&url, &nodes[n].private, &body, &b.headers()).await;
                        nodes[n].chain = b.next_state();
                        v
                    };
                    *verdicts.entry(verdict).or_default() += 1;
                    progress_tx.send_modify(|n| *n += 1);
                }
            }
            verdicts
        })
    };

    let mut kills = 0u32;
    let mut kill_and_restart = |server: &mut TestServer, why: &str| {
        server.kill9();
        kills += 1;
        eprintln!(
            "kill {kills} at {:.1} s ({why}); {} uploads acknowledged; saved state: {}",
            test_start.elapsed().as_secs_f64(),
            *progress.borrow(),
            saved_written(&dir)
        );
        *server = TestServer::start_on(&dir, &listen, SERVER_ARGS);
    };
    // A fault's finding is recognized by its connection, nodes and round,
    // whatever class the reconciler gives it (that is for the other tests).
    let on = |x: &str, y: &str, port: u16, round: u64| -> IsFault {
        let (x, y) = (x.to_owned(), y.to_owned());
        Box::new(move |f: &Value| {
            names_pair(f, &x, &y) && on_conn(f, port) && in_round(f, t0, round)
        })
    };
    let faults: [(&str, IsFault); 4] = [
        ("the edited count", on(&alpha, &beta, EDIT_PORT, EDIT_ROUND)),
        ("the unsigned batch", {
            let a = alpha.clone();
            Box::new(move |f: &Value| {
                f["class"] == "integrity"
                    && f["node"] == a.as_str()
                    && f["evidence"]["verdict"] == "unsigned"
                    && f["evidence"]["sender_record"]["proc_seq"].as_u64()
                        == Some(UNSIGNED_ROUND + 1)
            })
        }),
        (
            "gamma's missing half",
            on(&gamma, &alpha, MISSING[0].0, MISSING[0].1),
        ),
        (
            "beta's missing half",
            on(&beta, &gamma, MISSING[1].0, MISSING[1].1),
        ),
    ];
    // The kills, each at its moment: mid-round (some nodes' records of the
    // round in, not all: the stream holds there), as soon as findings are
    // written, and right after a restart.
    let mid_round = async |uploads: u64| {
        let mut rx = progress.clone();
        tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|n| *n >= uploads))
            .await
            .expect("the uploads do not progress")
            .expect("the uploader stopped");
        assert_eq!(
            *progress.borrow(),
            uploads,
            "the stream did not hold at its kill moment"
        );
    };
    let written = async |what: &str, is: &dyn Fn(&Value) -> bool| {
        assert!(
            await_findings(&url, Duration::from_secs(60), |fs| fs.iter().any(is)).await,
            "{what} was not written within 60 s: the kill planned after it cannot happen; findings (t0 {t0}): {:#?}",
            stored_findings(&url)
                .await
                .iter()
                .map(|f| format!(
                    "{} {} {} {}..{} {}",
                    f["class"],
                    f["node"],
                    f["peer"],
                    f["window"]["start"].as_i64().unwrap_or(0) - t0,
                    f["window"]["end"].as_i64().unwrap_or(0) - t0,
                    f["detail"]
                ))
                .collect::<Vec<_>>()
        );
        format!("{what} was just written")
    };
    mid_round(HOLDS[0]).await;
    kill_and_restart(
        &mut server,
        "round 2: alpha's record in, not beta's and gamma's",
    );
    release.send_replace(HOLDS[0]);
    mid_round(HOLDS[1]).await;
    kill_and_restart(&mut server, "round 8: gamma's record not in yet");
    release.send_replace(HOLDS[1]);
    let why = written("a first finding", &|_| true).await;
    kill_and_restart(&mut server, &why);
    kill_and_restart(&mut server, "just restarted, reading its backlog");
    let why = written("the finding of the edited count", &faults[0].1).await;
    kill_and_restart(&mut server, &why);
    let why = written("the finding of the unsigned batch", &faults[1].1).await;
    kill_and_restart(&mut server, &why);
    mid_round(HOLDS[2]).await;
    kill_and_restart(
        &mut server,
        "round 19: alpha's record in, not beta's and gamma's",
    );
    release.send_replace(HOLDS[2]);
    for (what, is) in &faults[2..] {
        let why = written(&format!("the finding of {what}"), is).await;
        kill_and_restart(&mut server, &why);
    }
    let verdicts = generator.await.unwrap();
    eprintln!(
        "all {} uploads acknowledged at {:.1} s; verdicts {verdicts:?}",
        ROUNDS * 3,
        test_start.elapsed().as_secs_f64()
    );
    assert_eq!(verdicts.get("unsigned"), Some(&1), "{verdicts:?}");
    assert_eq!(
        verdicts.get("ok").copied().unwrap_or(0) + verdicts.get("duplicate").copied().unwrap_or(0),
        ROUNDS * 3 - 1,
        "{verdicts:?}"
    );

    // The replay refuses a data directory a server is running on.
    let (ok, _, err) = replay(&dir, &["--json"]);
    assert!(!ok && err.contains("stop the server"), "{err}");

    // The reference: the server stopped (one more kill -9), the replay of
    // its data directory, with the configuration the server ran with.
    server.kill9();
    kills += 1;
    let (ok, table, err) = replay(&dir, &[]);
    assert!(ok, "{err}");
    assert!(table.contains("window 1s, grace 5s"), "{table}");
    let expected = replayed(&dir);
    eprintln!(
        "replay: {} findings; {}",
        expected.len(),
        table.lines().last().unwrap_or("")
    );
    for (what, is) in &faults {
        let classes: Vec<&str> = expected
            .values()
            .filter(|f| is(f))
            .filter_map(|f| f["class"].as_str())
            .collect();
        eprintln!("{what}: {classes:?}");
        assert!(
            expected.values().any(is),
            "the replay has no finding of {what}:\n{}",
            expected.values().map(short).collect::<Vec<_>>().join("\n")
        );
    }

    // The server again: it judges the last windows; then the findings
    // collection must hold exactly the replay's findings, each once.
    let server = TestServer::start_on(&dir, &listen, SERVER_ARGS);
    let want: BTreeSet<String> = expected.keys().cloned().collect();
    let complete = await_findings(&server.url, Duration::from_secs(120), |fs| {
        let have: BTreeSet<String> = fs
            .iter()
            .filter_map(|f| f["id"].as_str().map(str::to_owned))
            .collect();
        want.is_subset(&have)
    })
    .await;
    let stored = stored_findings(&server.url).await;
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for mut f in stored.iter().cloned() {
        if let Some(o) = f.as_object_mut() {
            o.remove("logtail");
        }
        let id = f["id"].as_str().expect("finding id").to_owned();
        if let Some(prev) = by_id.insert(id, f.clone()) {
            duplicates.push(format!("{}\n  and {}", short(&prev), short(&f)));
        }
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|(id, _)| !by_id.contains_key(*id))
        .map(|(_, f)| short(f))
        .collect();
    let extra: Vec<String> = by_id
        .iter()
        .filter(|(id, _)| !expected.contains_key(*id))
        .map(|(_, f)| short(f))
        .collect();
    eprintln!(
        "{kills} kills; {} findings stored, {} replayed; {:.1} s",
        stored.len(),
        expected.len(),
        test_start.elapsed().as_secs_f64()
    );
    assert!(
        duplicates.is_empty(),
        "findings stored twice after the kills:\n{}",
        duplicates.join("\n")
    );
    assert!(
        missing.is_empty() && extra.is_empty() && complete,
        "the findings after {kills} kills differ from the offline replay\n\
         missing (replayed, never stored):\n{}\nextra (stored, not replayed):\n{}",
        missing.join("\n"),
        extra.join("\n")
    );
    for (id, f) in &expected {
        assert_eq!(&by_id[id], f, "finding {id} differs from the replay's");
    }
    for (what, is) in &faults {
        assert!(by_id.values().any(is), "no stored finding of {what}");
    }

    // The replay is repeatable: the restarts read no flow record twice.
    let mut server = server;
    server.stop();
    assert_eq!(replayed(&dir), expected, "a second replay differs");
}
