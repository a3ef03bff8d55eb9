//! Beyond one machine, with the real engines: `tally server` instances and
//! `tally worker`s on a NATS JetStream log (Debian's `nats-server`, one or
//! a three-node cluster) with a PostgreSQL control database.
//!
//! - Writers upload through two servers; one is killed with `kill -9`
//!   under load; a writer retries what was not acknowledged through the
//!   other (as an agent behind a load balancer does): every acknowledged
//!   entry is read back exactly once.
//! - Killing one NATS server of an R3 cluster under load loses nothing
//!   acknowledged, and ingest goes on.
//! - Killing the worker: a standby takes the consumers over once the lease
//!   lapses, and what they write (the audit log's copy in the log) is not
//!   duplicated.

mod common;

use common::readme::tally_async;
use common::{KEY, TestServer, http, read_all};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_testkit::{nats, postgres};

const WRITERS: u32 = 4;

/// `n` NATS servers and a PostgreSQL cluster for a test (`None`, with a
/// note, when they are not installed and not required).
fn engines(test: &str, n: usize) -> Option<(nats::NatsCluster, postgres::PgCluster)> {
    Some((nats::for_tests(test, n)?, postgres::for_tests(test)?))
}
const BATCH: u64 = 25;
const PER_WRITER: u64 = 1_000;

/// Writers that upload batches to whichever server is up, retrying the same
/// batch (byte for byte) until one acknowledges it; returns the entries
/// acknowledged per writer. `kill` runs once `kill_after` entries were
/// acknowledged.
async fn write_through(
    servers: Vec<String>,
    kill_after: u64,
    kill: impl FnOnce() + Send + 'static,
) -> HashMap<u32, u64> {
    let acked_total = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    // Every writer's instance is adopted before anything can be killed.
    let mut ids = Vec::new();
    for _ in 0..WRITERS {
        ids.push(common::adopted_id(&servers[0], "tailnode").await);
    }
    let mut writers = Vec::new();
    for (w, id) in (0..WRITERS).zip(ids) {
        let servers = servers.clone();
        let (acked_total, reached) = (acked_total.clone(), reached.clone());
        writers.push(tokio::spawn(async move {
            let c = http();
            let mut target = w as usize % servers.len();
            let mut next = 1u64;
            while next <= PER_WRITER {
                let batch: Vec<_> = (next..next + BATCH)
                    .map(|n| serde_json::json!({"text": format!("w{w}-{n}"), "logtail": {"proc_id": w, "proc_seq": n}}))
                    .collect();
                let body = serde_json::to_vec(&batch).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut last = String::new();
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "writer {w}: batch at {next} never acknowledged; last answer: {last}"
                    );
                    let url = format!("{}/c/tailnode/{}", servers[target], id.to_hex());
                    match c.post(&url).body(body.clone()).timeout(Duration::from_secs(10)).send().await {
                        Ok(r) if r.status() == 200 => break,
                        Ok(r) => {
                            let status = r.status();
                            last = format!("{status} {}", r.text().await.unwrap_or_default());
                            assert!(status.is_server_error(), "unexpected answer: {last}");
                        }
                        Err(e) => last = e.to_string(),
                    }
                    // As a load balancer would: the next server.
                    target = (target + 1) % servers.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                next += BATCH;
                if acked_total.fetch_add(BATCH, Ordering::AcqRel) + BATCH >= kill_after {
                    reached.notify_one();
                }
            }
            (w, next - 1)
        }));
    }
    reached.notified().await;
    kill();
    let mut out = HashMap::new();
    for t in writers {
        let (w, n) = t.await.unwrap();
        out.insert(w, n);
    }
    out
}

/// Every entry of the writers read back from `url`: each acknowledged one
/// exactly once, none twice.
async fn assert_exactly_once(url: &str, acked: &HashMap<u32, u64>) {
    let entries = read_all(&http(), url, "tailnode").await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &entries {
        if let Some(t) = e["text"].as_str() {
            *seen.entry(t.to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "entries stored more than once: {twice:?}");
    for (w, last) in acked {
        for n in 1..=*last {
            assert!(
                seen.contains_key(&format!("w{w}-{n}")),
                "acknowledged entry w{w}-{n} is missing ({} entries read)",
                entries.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_share_the_log_and_a_killed_one_loses_nothing_acknowledged() {
    let Some((nats, pg)) = engines("scale-out servers", 1) else {
        return;
    };
    let (log, db) = (nats.urls(), pg.url("postgres"));
    let flags = ["--log", log.as_str(), "--control-db", db.as_str()];
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = TestServer::start_sub("server", dirs[0].path(), &flags);
    let b = TestServer::start_sub("server", dirs[1].path(), &flags);
    let _worker = TestServer::start_sub("worker", dirs[2].path(), &flags);

    // Both servers publish the same signed checkpoint of the one log: the
    // same key, the same tree built from the same records.
    let c = http();
    let checkpoint = |url: String| {
        let c = c.clone();
        async move {
            c.get(format!("{url}/.well-known/tally/checkpoint"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let (ca, cb) = tally_testkit::wait::until(
        "both servers at the same checkpoint",
        Duration::from_secs(30),
        || {
            let (ua, ub) = (a.url.clone(), b.url.clone());
            let checkpoint = &checkpoint;
            async move {
                let (ca, cb) = (checkpoint(ua).await, checkpoint(ub).await);
                if ca == cb {
                    Ok((ca, cb))
                } else {
                    Err(format!("{ca:?} vs {cb:?}"))
                }
            }
        },
    )
    .await;
    assert!(ca.starts_with("tally/"), "{ca}");
    assert_eq!(ca, cb);

    let kill_a = {
        let pid = a.child.id();
        move || unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    };
    let acked = write_through(
        vec![a.url.clone(), b.url.clone()],
        u64::from(WRITERS) * PER_WRITER / 3,
        kill_a,
    )
    .await;
    a.kill9();
    assert_exactly_once(&b.url, &acked).await;

    // A retry of an acknowledged batch through the survivor is dropped as
    // a duplicate, not stored twice.
    let id = common::adopted_id(&b.url, "tailnode").await;
    let body = r#"[{"text":"once","logtail":{"proc_id":9,"proc_seq":1}}]"#;
    for _ in 0..2 {
        let r = c
            .post(format!("{}/c/tailnode/{}", b.url, id.to_hex()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let entries = read_all(&c, &b.url, "tailnode").await;
    assert_eq!(entries.iter().filter(|e| e["text"] == "once").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_nats_cluster_loses_nothing_when_a_node_dies() {
    let Some((mut nats, pg)) = engines("scale-out R3", 3) else {
        return;
    };
    let (log, db) = (nats.urls(), pg.url("postgres"));
    let flags = [
        "--log",
        log.as_str(),
        "--log-replicas",
        "3",
        "--control-db",
        db.as_str(),
    ];
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // A new cluster elects its JetStream leader first: the server waits.
    let a = TestServer::start_sub("server", dirs[0].path(), &flags);
    let b = TestServer::start_sub("server", dirs[1].path(), &flags);
    // The stream's leader dies: the others elect a new one.
    let leader = nats
        .stream_leader("TALLY")
        .expect("the stream has a leader");
    let victim = nats.servers.remove(leader);
    let victim = Arc::new(parking_lot::Mutex::new(victim));
    let killed = Arc::new(AtomicBool::new(false));
    let kill = {
        let (victim, killed) = (victim.clone(), killed.clone());
        move || {
            victim.lock().kill();
            killed.store(true, Ordering::Release);
        }
    };
    let acked = write_through(
        vec![a.url.clone(), b.url.clone()],
        u64::from(WRITERS) * PER_WRITER / 3,
        kill,
    )
    .await;
    assert!(killed.load(Ordering::Acquire));
    assert_exactly_once(&a.url, &acked).await;
    assert_exactly_once(&b.url, &acked).await;
}

/// A webhook that keeps every body it receives.
async fn webhook() -> (String, Arc<parking_lot::Mutex<Vec<serde_json::Value>>>) {
    let bodies: Arc<parking_lot::Mutex<Vec<serde_json::Value>>> = Default::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(b): axum::extract::State<
                    Arc<parking_lot::Mutex<Vec<serde_json::Value>>>,
                >,
                 body: axum::body::Bytes| async move {
                    match serde_json::from_slice(&body) {
                        Ok(v) => {
                            b.lock().push(v);
                            axum::http::StatusCode::NO_CONTENT
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                },
            ),
        )
        .with_state(bodies.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, bodies)
}

/// The IDs of the alerts about key `name` the webhook received, once per
/// delivery.
fn deliveries(bodies: &[serde_json::Value], name: &str) -> Vec<String> {
    bodies
        .iter()
        .flat_map(|b| b["entries"].as_array().into_iter().flatten())
        .filter(|a| {
            a["rule_id"] == "tally-key-without-expiry"
                && a["evidence"]["fields"]["target.name"] == name
        })
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_worker_takes_over_without_duplicating_what_it_writes() {
    let Some((nats, pg)) = engines("scale-out workers", 1) else {
        return;
    };
    let (log, db) = (nats.urls(), pg.url("postgres"));
    let flags = [
        "--log",
        log.as_str(),
        "--control-db",
        db.as_str(),
        "--lease",
        "3s",
    ];
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = TestServer::start_sub("server", dirs[0].path(), &flags);
    let mut first = TestServer::start_sub("worker", dirs[1].path(), &flags);
    // The second waits for the lease: it listens only once it has it.
    let standby = {
        let dir = dirs[2].path().to_path_buf();
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            TestServer::start_sub("worker", &dir, &flags)
        })
    };
    // Alerts stream to a webhook, set through the server as a user does;
    // the worker starts the stream.
    let (hook, bodies) = webhook().await;
    let out = tally_async(
        &server.url,
        &[
            "stream",
            "set",
            "alerts",
            "--type",
            "webhook",
            "--url",
            &hook,
            "--token",
            "hook-token-0123456789",
        ],
    )
    .await;
    assert!(out.contains("streaming alerts to webhook"), "{out}");
    // Each API key that never expires is an audit event (copied into the
    // log by the worker's outbox) and an alert (raised by its detection,
    // delivered by its stream).
    let make_keys = |from: usize, to: usize| {
        let url = server.url.clone();
        async move {
            for i in from..to {
                tally_async(
                    &url,
                    &[
                        "keys",
                        "create",
                        "--type",
                        "api",
                        "--expiry",
                        "never",
                        "--description",
                        &format!("k{i}"),
                    ],
                )
                .await;
            }
        }
    };
    let delivered = |upto: usize| {
        let bodies = bodies.clone();
        async move {
            tally_testkit::wait::until("alerts delivered", Duration::from_secs(60), || {
                let b = bodies.lock().clone();
                async move {
                    let missing: Vec<usize> = (0..upto)
                        .filter(|i| deliveries(&b, &format!("k{i}")).is_empty())
                        .collect();
                    if missing.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("not yet: {missing:?}"))
                    }
                }
            })
            .await
        }
    };
    make_keys(0, 5).await;
    delivered(5).await;

    // The first worker dies; the standby takes over once the lease lapses
    // and goes on from where the first one left its state.
    first.kill9();
    make_keys(5, 10).await;
    let second = standby.join().expect("the standby worker starts");
    delivered(10).await;
    // The server shows the status the worker running the stream shares.
    let status = tally_async(&server.url, &["stream", "status", "alerts"]).await;
    assert!(!status.contains("not running"), "{status}");
    let c = http();
    let events: serde_json::Value = c
        .get(format!(
            "{}/api/v2/tailnet/-/logging/configuration",
            server.url
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["logs"].as_array().map_or(0, Vec::len);
    let copies =
        tally_testkit::wait::until("the audit log copied", Duration::from_secs(60), || {
            let (c, url) = (c.clone(), server.url.clone());
            async move {
                let copies = read_all(&c, &url, "tailaudit").await;
                if copies.len() >= events {
                    Ok(copies)
                } else {
                    Err(format!("{} of {events}", copies.len()))
                }
            }
        })
        .await;

    // Nothing twice: not an audit copy, not an alert, not a delivery.
    let mut seen = HashMap::new();
    for e in &copies {
        // The event itself, without the copy's own receive time.
        let mut e = e.clone();
        if let Some(o) = e.as_object_mut() {
            o.remove("logtail");
        }
        *seen.entry(e.to_string()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "an audit event was copied twice"
    );
    assert_eq!(copies.len(), events, "each audit event copied once");
    let alerts = read_all(&c, &server.url, "alerts").await;
    let bodies = bodies.lock().clone();
    for i in 0..10 {
        let name = format!("k{i}");
        let raised = alerts
            .iter()
            .filter(|a| {
                a["rule_id"] == "tally-key-without-expiry"
                    && a["evidence"]["fields"]["target.name"] == name.as_str()
            })
            .count();
        assert_eq!(raised, 1, "alert for {name} raised {raised} times");
        // At least once: the batch in flight when the first worker died
        // may come again, as the same alert (its ID), never as another.
        let mut ids = deliveries(&bodies, &name);
        assert!(
            (1..=2).contains(&ids.len()),
            "alert for {name} delivered {} times",
            ids.len()
        );
        ids.dedup();
        assert_eq!(
            ids.len(),
            1,
            "alert for {name} delivered as different alerts: {ids:?}"
        );
    }
    drop(second);
}

/// NATS, PostgreSQL and an S3-compatible server (moto) with the bucket
/// `tally-archive`, for a cluster with an archive.
struct ArchiveLab {
    nats: nats::NatsCluster,
    _pg: postgres::PgCluster,
    moto: common::moto::Moto,
    log: String,
    db: String,
}

impl ArchiveLab {
    /// `None` (with a note) when the engines are not installed and not required.
    fn start(test: &str) -> Option<Self> {
        let (nats, pg) = engines(test, 1)?;
        let moto = common::moto::Moto::start();
        moto.boto3("s3.create_bucket(Bucket='tally-archive')");
        let (log, db) = (nats.urls(), pg.url("postgres"));
        Some(Self {
            nats,
            _pg: pg,
            moto,
            log,
            db,
        })
    }

    /// The `AWS_*` variables every process of the cluster gets.
    fn env(&self) -> [(&str, &str); 5] {
        [
            ("AWS_ENDPOINT_URL", self.moto.url.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    /// The flags every process of the cluster gets, then `extra`.
    fn flags<'a>(&'a self, archive: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut f = vec![
            "--log",
            self.log.as_str(),
            "--control-db",
            self.db.as_str(),
            "--archive",
            archive,
        ];
        f.extend_from_slice(extra);
        f
    }
}

/// A new tailnet's owner key, made through `url`.
async fn other_tenant_key(url: &str) -> String {
    let created: serde_json::Value = http()
        .post(format!("{url}/api/v2/tailnets"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"name": "other.example"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["ownerKey"]["key"]
        .as_str()
        .expect("owner key")
        .to_owned()
}

/// The texts of every `tailnode` entry, oldest first, and the ten newest.
async fn answers(url: &str) -> (Vec<String>, Vec<String>) {
    let c = http();
    let all = read_all(&c, url, "tailnode")
        .await
        .iter()
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    let newest: serde_json::Value = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("order", "newest"), ("max-count", "10")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let newest = newest["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    (all, newest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_data_in_the_bucket_answers_the_same_without_the_cache() {
    let Some(lab) = ArchiveLab::start("scale-out archive") else {
        return;
    };
    let (nats, moto, env) = (&lab.nats, &lab.moto, lab.env());
    let flags = lab.flags(
        "s3://tally-archive/cluster-1",
        // Everything leaves the stream as soon as it is archived.
        &["--log-hot", "0s", "--archive-every", "1s"],
    );
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = TestServer::start_sub_env("server", dirs[0].path(), &flags, &env);
    let _worker = TestServer::start_sub_env("worker", dirs[1].path(), &flags, &env);

    let c = http();
    let id = common::adopted_id(&server.url, "tailnode").await;
    for b in 0..40u64 {
        let batch: Vec<_> = (1..=25)
            .map(|i| {
                let n = b * 25 + i;
                serde_json::json!({"text": format!("e{n}"), "logtail": {"proc_id": 1, "proc_seq": n}})
            })
            .collect();
        let r = c
            .post(format!("{}/c/tailnode/{}", server.url, id.to_hex()))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let want: Vec<String> = (1..=1000).map(|n| format!("e{n}")).collect();
    let newest: Vec<String> = (991..=1000).rev().map(|n| format!("e{n}")).collect();
    assert_eq!(answers(&server.url).await, (want.clone(), newest.clone()));

    // The worker seals the log into the bucket and purges the stream.
    let state = tally_testkit::wait::until(
        "the stream purged into the bucket",
        Duration::from_secs(60),
        || {
            let detail = nats.stream_detail("TALLY");
            async move {
                let first = detail
                    .as_ref()
                    .map_or(0, |d| d["state"]["first_seq"].as_u64().unwrap_or(0));
                if first > 40 {
                    Ok(detail)
                } else {
                    Err(format!("stream state: {detail:?}"))
                }
            }
        },
    )
    .await;
    let keys = moto.boto3(
        "for o in s3.list_objects_v2(Bucket='tally-archive', Prefix='cluster-1/segments/').get('Contents', []): print(o['Key'])",
    );
    assert!(
        keys.lines().count() >= 1,
        "no segment in the bucket: {keys}; stream {state:?}"
    );

    // The same answers, now from the bucket; and again with an empty cache.
    assert_eq!(answers(&server.url).await, (want.clone(), newest.clone()));
    let cache = dirs[0].path().join("archive-cache");
    for f in std::fs::read_dir(&cache).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    assert_eq!(answers(&server.url).await, (want, newest));
    assert!(
        std::fs::read_dir(&cache).unwrap().count() >= 1,
        "the answers came through the cache"
    );

    // Another tenant reads none of it, from the stream or the bucket,
    // oldest or newest first.
    let other = other_tenant_key(&server.url).await;
    for order in ["oldest", "newest"] {
        let v: serde_json::Value = c
            .get(format!("{}/c/tailnode", server.url))
            .bearer_auth(&other)
            .query(&[("order", order), ("max-count", "100000")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["count"], 0, "another tenant read {v}");
    }
}

/// The network log of the test tailnet for the last hour, as a user's
/// client reads it (every page), failing on damage or an index behind.
async fn flow_answers(url: &str, key: &str) -> Vec<serde_json::Value> {
    let now = tally_proto::timefmt::now_nanos();
    let (start, end) = (
        tally_proto::timefmt::format_nanos(now - 3_600_000_000_000),
        tally_proto::timefmt::format_nanos(now + 60_000_000_000),
    );
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![
            ("start", start.clone()),
            ("end", end.clone()),
            ("limit", "3".to_owned()),
        ];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let v: serde_json::Value = http()
            .get(format!("{url}/api/v2/tailnet/-/logging/network"))
            .bearer_auth(key)
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v.get("errors").is_none(), "damage: {v}");
        assert!(v.get("behind").is_none(), "behind: {v}");
        out.extend(v["logs"].as_array().expect("logs").iter().cloned());
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// A gauge of a server's `/metrics`.
async fn gauge(url: &str, name: &str) -> u64 {
    let metrics = http()
        .get(format!("{url}/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Sealed flow files (`.flw`) in a server's own flow store.
fn own_flow_files(data_dir: &std::path::Path) -> usize {
    let Ok(tailnets) = std::fs::read_dir(data_dir.join("flows")) else {
        return 0;
    };
    tailnets
        .flatten()
        .filter(|t| t.path().is_dir())
        .flat_map(|t| std::fs::read_dir(t.path()).into_iter().flatten().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".flw"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_files_in_the_bucket_answer_the_same_without_the_cache_and_on_a_new_server() {
    let Some(lab) = ArchiveLab::start("scale-out flow files") else {
        return;
    };
    let (moto, env) = (&lab.moto, lab.env());
    let flags = lab.flags(
        "s3://tally-archive/cluster-2",
        // Windows seal within seconds instead of an hour.
        &["--flow-window", "2s", "--flow-grace", "1s"],
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = TestServer::start_sub_env("server", dirs[0].path(), &flags, &env);
    let _worker = TestServer::start_sub_env("worker", dirs[1].path(), &flags, &env);

    // A node registered and flow logging on, through the server; the
    // worker learns of the node from the database.
    let auth = common::reusable_auth_key(&server.url).await;
    let (private, _) = common::register_node(&server.url, &auth, "web1", "100.64.0.1").await;
    common::set_flow_logging(&server.url, true).await;
    post_flows(&server.url, &private, 12, 5000).await;
    let want = flow_answers(&server.url, KEY).await;
    assert_eq!(want.len(), 12, "{want:?}");

    // The worker seals the window and uploads it; the server follows the
    // manifest and drops its own copy, which the bucket now covers.
    let keys = tally_testkit::wait::until(
        "the flow file in the bucket and the server's own copy dropped",
        Duration::from_secs(60),
        || {
            let keys = moto.boto3(
                "for o in s3.list_objects_v2(Bucket='tally-archive', Prefix='cluster-2/flows/').get('Contents', []): print(o['Key'])",
            );
            let url = server.url.clone();
            async move {
                let own = gauge(&url, "tally_flow_sealed_files").await;
                let open = gauge(&url, "tally_flow_open_window_entries").await;
                if keys.lines().count() >= 1 && own == 0 && open == 0 {
                    Ok(keys)
                } else {
                    Err(format!("bucket: {keys:?}; the server's own files: {own}, open entries: {open}"))
                }
            }
        },
    )
    .await;
    assert!(keys.lines().all(|k| k.ends_with(".flw")), "{keys}");

    // From the bucket: the same answers, and again with an empty cache.
    assert_eq!(flow_answers(&server.url, KEY).await, want);
    let cache = dirs[0].path().join("archive-cache");
    for f in std::fs::read_dir(&cache).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    assert_eq!(flow_answers(&server.url, KEY).await, want);
    assert!(
        std::fs::read_dir(&cache).unwrap().count() >= 1,
        "the answers came through the cache"
    );

    // A new server answers the same at once, without rebuilding the
    // index from the log: it starts at the manifest's checkpoint.
    let fresh = TestServer::start_sub_env("server", dirs[2].path(), &flags, &env);
    assert_eq!(flow_answers(&fresh.url, KEY).await, want);
    assert_eq!(
        gauge(&fresh.url, "tally_flow_open_window_entries").await,
        0,
        "it indexed the log again"
    );
    assert_eq!(
        own_flow_files(dirs[2].path()),
        0,
        "it indexed the log again"
    );
    assert!(gauge(&fresh.url, "tally_flow_bucket_files").await >= 1);
    assert!(gauge(&fresh.url, "tally_flow_bucket_checkpoint").await > 0);

    // Another tenant reads none of it.
    let other = other_tenant_key(&fresh.url).await;
    assert!(flow_answers(&fresh.url, &other).await.is_empty());
}

/// Posts one flow record per minute of the last `n` minutes for `node`,
/// each with one connection from port `first_port + i`.
async fn post_flows(url: &str, private: &tally_proto::PrivateId, n: i64, first_port: i64) {
    let now = tally_proto::timefmt::now_nanos();
    let records: Vec<_> = (0..n)
        .map(|i| {
            let start = now - (n - i) * 60_000_000_000;
            serde_json::json!({
                "nodeId": "x",
                "start": tally_proto::timefmt::format_nanos(start),
                "end": tally_proto::timefmt::format_nanos(start + 5_000_000_000),
                "virtualTraffic": [{"proto": 6, "src": format!("100.64.0.1:{}", first_port + i),
                    "dst": "100.64.0.2:5432", "txPkts": 1, "txBytes": 100}],
            })
        })
        .collect();
    let r = http()
        .post(format!("{url}/c/tailtraffic/{}", private.to_hex()))
        .json(&records)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// Waits until the server's flow store answers everything up to a bucket
/// checkpoint above `after` from the bucket (nothing of its own left).
async fn bucket_covers(url: &str, after: u64) -> u64 {
    tally_testkit::wait::until(
        "the bucket covering what the server holds",
        Duration::from_secs(60),
        || async move {
            let split = gauge(url, "tally_flow_bucket_checkpoint").await;
            let own = gauge(url, "tally_flow_sealed_files").await;
            let open = gauge(url, "tally_flow_open_window_entries").await;
            if split > after && own == 0 && open == 0 {
                Ok(split)
            } else {
                Err(format!(
                    "split {split}, own files {own}, open entries {open}"
                ))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_worker_takes_the_flow_files_over_without_duplicates() {
    let Some(lab) = ArchiveLab::start("scale-out flow takeover") else {
        return;
    };
    let env = lab.env();
    let flags = lab.flags(
        "s3://tally-archive/cluster-3",
        &["--flow-window", "2s", "--flow-grace", "1s", "--lease", "3s"],
    );
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = TestServer::start_sub_env("server", dirs[0].path(), &flags, &env);
    let mut first = TestServer::start_sub_env("worker", dirs[1].path(), &flags, &env);
    // The standby listens only once it holds the lease.
    let standby = {
        let dir = dirs[2].path().to_path_buf();
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::thread::spawn(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            TestServer::start_sub_env("worker", &dir, &flags, &env)
        })
    };
    let auth = common::reusable_auth_key(&server.url).await;
    let (private, _) = common::register_node(&server.url, &auth, "web1", "100.64.0.1").await;
    common::set_flow_logging(&server.url, true).await;

    // The first worker seals and uploads the first records, then dies.
    post_flows(&server.url, &private, 12, 5000).await;
    let split = bucket_covers(&server.url, 0).await;
    first.kill9();
    // The standby takes the manifest over and uploads what came since.
    post_flows(&server.url, &private, 12, 6000).await;
    let _standby = standby.join().expect("the standby worker");
    bucket_covers(&server.url, split).await;

    // Every connection once, all of it from the bucket, on a new server.
    let fresh = TestServer::start_sub_env("server", dirs[3].path(), &flags, &env);
    let answers = flow_answers(&fresh.url, KEY).await;
    let mut ports: Vec<String> = answers
        .iter()
        .flat_map(|r| r["virtualTraffic"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["src"].as_str().map(str::to_owned))
        .collect();
    ports.sort();
    let mut want: Vec<String> = (5000..5012)
        .chain(6000..6012)
        .map(|p| format!("100.64.0.1:{p}"))
        .collect();
    want.sort();
    assert_eq!(ports, want, "every connection exactly once");
    assert_eq!(
        gauge(&fresh.url, "tally_flow_open_window_entries").await,
        0,
        "all of it from the bucket"
    );
}
