//! The transparency log follows the store: epochs are dropped with the
//! records they covered while checkpoints stay provable, and a recovery
//! cut of the store is stated in the log instead of reusing positions the
//! log had published.

use reqwest::Method;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_server::{Server, ServerConfig};
use tally_store::Store;
use tally_transparency::Hash;
use tally_transparency::checkpoint::Checkpoint;
use tally_transparency::note::Verifier;

mod support;

const OWNER_KEY: &str = "tally-test-owner-key-0123456789";

struct Srv {
    base: String,
    http: reqwest::Client,
    store: Arc<Store>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(dir: &Path) -> Srv {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), dir.into());
    config.bootstrap_key = Some(OWNER_KEY.into());
    config.log_epoch_bits = 8; // epochs of 256 leaves
    let server = Server::bind(config).await.expect("server binds");
    let base = format!("http://{}", server.local_addr().expect("addr"));
    let store = server.store().expect("the embedded store");
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Srv {
        base,
        http: reqwest::Client::new(),
        store,
        stop,
        task,
    }
}

impl Srv {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task").expect("server ran");
        self.store.close();
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(OWNER_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn verifier(&self) -> Verifier {
        support::log::verifier(&self.http, &self.base).await
    }

    async fn checkpoint(&self, verifier: &Verifier) -> Checkpoint {
        support::log::checkpoint(&self.http, &self.base, verifier).await
    }

    /// Posts `n` entries as a fresh instance adopted by the owner's tailnet.
    async fn post_logs(&self, n: usize) {
        let private = tally_proto::PrivateId::generate();
        let (s, v) = self
            .call(
                Method::POST,
                "/instances",
                Some(serde_json::json!({ "collection": "tailnode", "instances": [private.public().to_hex()] })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let body: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({ "text": format!("line {i}") }))
            .collect();
        let resp = self
            .http
            .post(format!("{}/c/tailnode/{}", self.base, private.to_hex()))
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200);
    }

    async fn consistent(&self, a: &Checkpoint, b: &Checkpoint) -> Value {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("/api/v2/log/consistency?old={}&new={}", a.size, b.size),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        a.verify_consistency_to(b, &hashes(&v["proof"]))
            .unwrap_or_else(|e| panic!("{} -> {} not consistent: {e}", a.size, b.size));
        v
    }

    /// Checks the inclusion proof of every position up to `end` in `cp`;
    /// returns (proven, gone-with-a-cut, not found).
    async fn prove_all(&self, cp: &Checkpoint, end: u64) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let (mut ok, mut cut, mut absent) = (Vec::new(), Vec::new(), Vec::new());
        for seq in 1..end {
            let (s, v) = self
                .call(
                    Method::GET,
                    &format!("/api/v2/log/inclusion?seq={seq}&size={}", cp.size),
                    None,
                )
                .await;
            match s {
                200 => {
                    assert_eq!(v["leafHash"], v["recordLeafHash"], "record {seq} changed");
                    let leaf =
                        Hash::from_base64(v["leafHash"].as_str().expect("leaf")).expect("hash");
                    let index = v["leafIndex"].as_u64().expect("index");
                    cp.verify_inclusion(&leaf, index, &hashes(&v["proof"]))
                        .unwrap_or_else(|e| panic!("record {seq}: {e}"));
                    ok.push(seq);
                }
                410 => {
                    assert!(v["cut"]["seq"].as_u64().is_some(), "{v}");
                    cut.push(seq);
                }
                404 => absent.push(seq),
                _ => panic!("inclusion of {seq}: {s} {v}"),
            }
        }
        (ok, cut, absent)
    }
}

use support::log::hashes;

fn du(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn now_nanos() -> i64 {
    tally_proto::timefmt::now_nanos()
}

/// Polls `check` until it holds or 30 s passed.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_shrinks_with_retention_and_old_checkpoints_stay_provable() {
    let dir = tempfile::tempdir().expect("dir");
    let srv = start(dir.path()).await;
    let verifier = srv.verifier().await;
    let merkle = dir.path().join("merkle");
    for _ in 0..6 {
        srv.post_logs(500).await;
    }
    let c1 = srv.checkpoint(&verifier).await;
    assert!(c1.size >= 3000, "{c1:?}");
    srv.post_logs(100).await;
    let c1b = srv.checkpoint(&verifier).await;
    // Epochs two behind the newest are thinned: their leaf hashes come
    // from the records now.
    until("old epochs thinned", || {
        merkle.join("epoch-000000000000").join("sparse").exists()
    })
    .await;
    let before = du(&merkle);
    let store_before = srv.store.stats().disk_bytes;

    // Retention runs three months later: every record expired (the
    // audit log's copies, kept as long as the audit log, 90 days, too).
    srv.store.seal_now().await.expect("seal");
    let later = now_nanos() + 91 * 24 * 3600 * 1_000_000_000;
    let r = srv.store.enforce_retention(later).expect("retention");
    assert!(r.records_deleted >= 3100, "{r:?}");
    srv.post_logs(600).await;
    let c2 = srv.checkpoint(&verifier).await;
    // Every epoch whose records are all gone is dropped: only the epochs
    // of the records posted since are left (the upkeep thins and drops in
    // steps of its own, so the size is compared once it is done).
    let epochs = || {
        std::fs::read_dir(&merkle)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("epoch-0"))
                    .count()
            })
            .unwrap_or(0)
    };
    until("epochs dropped with their records", || {
        !merkle.join("epoch-000000000000").exists() && epochs() <= 3 && du(&merkle) < before
    })
    .await;
    let after = du(&merkle);
    eprintln!(
        "merkle/: {before} B -> {after} B; store {store_before} B -> {} B",
        srv.store.stats().disk_bytes
    );
    // Checkpoints signed before the drop prove consistency with later ones.
    let c3 = {
        srv.post_logs(5).await;
        srv.checkpoint(&verifier).await
    };
    srv.consistent(&c1, &c3).await;
    srv.consistent(&c1b, &c3).await;
    srv.consistent(&c1, &c2).await;
    srv.consistent(&c2, &c3).await;
    // The retained records prove inclusion; the deleted ones are gone.
    let end = srv.store.end_seq();
    let (ok, cut, _absent) = srv.prove_all(&c3, end).await;
    // And the audit events of the adoptions since.
    let audit_copies = support::log::audit_copies(&srv.store, end);
    assert_eq!(audit_copies, 2, "the two adoptions since the drop");
    assert_eq!(
        ok.len(),
        605 + audit_copies,
        "the records posted after the drop and the audit copies"
    );
    assert!(cut.is_empty());
    srv.stop().await;
    // And after a restart.
    let srv = start(dir.path()).await;
    srv.post_logs(3).await;
    let c4 = srv.checkpoint(&verifier).await;
    srv.consistent(&c1, &c4).await;
    srv.consistent(&c3, &c4).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_cut_is_stated_in_the_log_and_positions_are_not_reused() {
    let dir = tempfile::tempdir().expect("dir");
    let srv = start(dir.path()).await;
    let verifier = srv.verifier().await;
    for _ in 0..10 {
        srv.post_logs(3).await;
    }
    // The log covers every record, and a checkpoint says so.
    let c1 = srv.checkpoint(&verifier).await;
    let end1 = srv.store.end_seq();
    assert_eq!(c1.size, end1 - 1);
    srv.stop().await;

    // The WAL's tail is damaged: the last records' frames are torn.
    let store_dir = dir.path().join("store");
    let wal = std::fs::read_dir(&store_dir)
        .expect("store dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a WAL");
    let len = std::fs::metadata(&wal).expect("wal").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open wal");
    f.set_len(len - 200).expect("truncate");
    drop(f);

    let srv = start(dir.path()).await;
    // The store continues after the last position the log published.
    assert!(
        srv.store.end_seq() > end1,
        "positions of cut records are not reused"
    );
    for _ in 0..3 {
        srv.post_logs(2).await;
    }
    let c2 = srv.checkpoint(&verifier).await;
    assert!(c2.size > c1.size, "the checkpoint grows again");
    let v = srv.consistent(&c1, &c2).await;
    // The cut is stated in the log, provably.
    let cuts = v["cuts"].as_array().expect("cuts");
    assert_eq!(cuts.len(), 1, "{v}");
    let cut = &cuts[0];
    let lost = &cut["statement"]["lost"]["positions"];
    let (from, to) = (
        lost[0].as_u64().expect("from"),
        lost[1].as_u64().expect("to"),
    );
    assert_eq!(to, end1 - 1);
    assert!(from <= to);
    let record = tally_store::Record {
        seq: cut["seq"].as_u64().expect("seq"),
        rec: tally_store::NewRecord {
            time: cut["time"].as_i64().expect("time"),
            collection: cut["collection"].as_str().expect("collection").into(),
            owner: tally_store::Owner::Unclaimed,
            instance: [0; 32],
            identity: None,
            client_time: None,
            kind: tally_store::kind::CUT,
            body: cut["body"].as_str().expect("body").as_bytes().to_vec(),
        },
    };
    let leaf = tally_server::consumers::merkle_log::record_leaf(&record);
    assert_eq!(cut["leafHash"].as_str(), Some(leaf.to_base64().as_str()));
    c2.verify_inclusion(
        &leaf,
        cut["leafIndex"].as_u64().expect("index"),
        &hashes(&cut["proof"]),
    )
    .expect("the statement is in the log");
    // Every record proves its inclusion; the cut positions say so.
    let (ok, gone, absent) = srv.prove_all(&c2, srv.store.end_seq()).await;
    assert_eq!(gone, (from..=to).collect::<Vec<_>>());
    assert_eq!(
        ok.len() as u64,
        c2.size - 1 - (to - from + 1),
        "all but the statement"
    );
    assert!(
        absent
            .iter()
            .all(|&s| s == record.seq || (s > to && s < record.seq)),
        "{absent:?}"
    );
    srv.stop().await;
}
