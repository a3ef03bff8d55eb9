//! Crash safety: while writers push entries as fast as they can, the server
//! is killed with SIGKILL at random moments; after each restart every entry
//! that was acknowledged is there, and in the end every entry is there
//! exactly once (clients retry unacknowledged batches; the server drops
//! duplicates by identity).

mod common;

use common::{TestServer, http, read_all};
use parking_lot::RwLock;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const WRITERS: u32 = 6;
const BATCH: u64 = 40;
const KILLS: usize = 5;
/// Each writer stops after this many entries (keeps the read-backs quick).
const MAX_PER_WRITER: u64 = 20_000;
/// The server runs with the defaults.
const SERVER_ARGS: &[&str] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_entries_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), SERVER_ARGS);
    let url = Arc::new(RwLock::new(server.url.clone()));
    let server = Arc::new(parking_lot::Mutex::new(server));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<parking_lot::Mutex<HashMap<u32, u64>>> = Default::default();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let c = http();
            let base = url.read().clone();
            let id = common::adopted_id(&base, "tailnode").await;
            let mut next = 1u64;
            while !stop.load(Ordering::Relaxed) && next <= MAX_PER_WRITER {
                let batch: Vec<_> = (next..next + BATCH)
                    .map(|n| serde_json::json!({"text": format!("w{w}-{n}"), "logtail": {"proc_id": w, "proc_seq": n}}))
                    .collect();
                let body = serde_json::to_vec(&batch).unwrap();
                // Retry the same batch until it is acknowledged, across restarts.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut last = String::new();
                loop {
                    assert!(std::time::Instant::now() < deadline, "writer {w}: batch at {next} never acknowledged; last answer: {last}");
                    let target = format!("{}/c/tailnode/{}", url.read(), id.to_hex());
                    match c.post(&target).body(body.clone()).timeout(Duration::from_secs(10)).send().await {
                        Ok(r) if r.status() == 200 => break,
                        Ok(r) => {
                            let status = r.status();
                            last = format!("{status} {}", r.text().await.unwrap_or_default());
                            assert!(status.is_server_error(), "unexpected answer: {last}");
                        }
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked.lock().insert(w, next + BATCH - 1);
                next += BATCH;
                // Pace the writers so that writes are in flight through every kill.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (id, next - 1)
        }));
    }

    let c = http();
    for round in 0..KILLS {
        let pause = rand::rng().random_range(150..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let before: HashMap<u32, u64> = acked.lock().clone();
        let u = {
            let mut s = server.lock();
            s.kill9();
            *s = TestServer::start(dir.path(), SERVER_ARGS);
            *url.write() = s.url.clone();
            s.url.clone()
        };
        // Everything acknowledged before the kill is readable after it.
        let logs = read_all(&c, &u, "tailnode").await;
        eprintln!(
            "round {round}: killed after {pause} ms, {} entries stored",
            logs.len()
        );
        let mut max_seen: HashMap<u32, u64> = HashMap::new();
        for e in &logs {
            let lt = &e["logtail"];
            let (w, n) = (
                lt["proc_id"].as_u64().unwrap() as u32,
                lt["proc_seq"].as_u64().unwrap(),
            );
            let m = max_seen.entry(w).or_default();
            *m = (*m).max(n);
        }
        for (w, n) in before {
            assert!(
                max_seen.get(&w).copied().unwrap_or(0) >= n,
                "round {round}: writer {w} had {n} acknowledged, found {:?}",
                max_seen.get(&w)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut expected = HashMap::new();
    for w in writers {
        let (_, last) = w.await.unwrap();
        expected.insert(expected.len() as u32, last);
    }
    let u = url.read().clone();
    let logs = read_all(&c, &u, "tailnode").await;
    let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
    for e in &logs {
        let lt = &e["logtail"];
        let key = (
            lt["proc_id"].as_u64().unwrap() as u32,
            lt["proc_seq"].as_u64().unwrap(),
        );
        assert_eq!(e["text"], format!("w{}-{}", key.0, key.1));
        *seen.entry(key).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated entries: {dups:?}");
    let total: u64 = expected.values().sum();
    assert_eq!(
        seen.len() as u64,
        total,
        "every acknowledged entry, exactly once"
    );
    for (w, last) in expected {
        for n in 1..=last {
            assert!(seen.contains_key(&(w, n)), "writer {w} entry {n} missing");
        }
    }
}
