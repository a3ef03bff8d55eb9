//! Kill -9 while a child process inserts and seals; after each kill the
//! next process replays from the checkpoint. In the end every entry is
//! stored exactly once.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use tally_flowstore::{FlowFilter, FlowStoreConfig};

const CHILD_ENV: &str = "TALLY_FLOWSTORE_CRASH_CHILD";
const RECORDS: u64 = 4000;

fn config() -> FlowStoreConfig {
    FlowStoreConfig {
        window: Duration::from_secs(1),
        grace: Duration::ZERO,
        ..small_config()
    }
}

/// The child process of [`kill_9_while_sealing_loses_and_duplicates_nothing`]:
/// replays from the checkpoint to the end, sealing as it goes. Ignored, so
/// it is no test of its own; the parent runs it with `--ignored` (run by
/// hand, it does nothing).
#[test]
#[ignore = "helper process of kill_9_while_sealing_loses_and_duplicates_nothing"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        eprintln!(
            "crash_child is a helper process of kill_9_while_sealing_loses_and_duplicates_nothing: nothing to do"
        );
        return;
    };
    let (store, c) = open(std::path::Path::new(&dir), &config());
    for s in c + 1..=RECORDS {
        let es = record("t", s);
        store.insert(s, &es).expect("insert");
        if s % 3 == 0 {
            store.seal_due(es[0].logged).expect("seal");
        }
    }
    store.seal_all().expect("seal");
}

#[test]
fn kill_9_while_sealing_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut kills = 0;
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(40 + (round * 37) % 200));
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("kill -9");
            kills += 1;
        }
        let status = child.wait().expect("wait");
        assert!(
            status.success() || status.code().is_none(),
            "child failed: {status}"
        );
        // Each restart finds a consistent store.
        let (store, c) = open(dir.path(), &config());
        assert!(c <= RECORDS);
        let p = store
            .query(
                &FlowFilter::new("t", i64::MIN, i64::MAX),
                &tally_flowstore::PageRequest::first(10),
            )
            .expect("query");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }
    assert!(
        kills > 0,
        "no child was killed mid-run; the test proved nothing"
    );
    let (store, c) = open(dir.path(), &config());
    for s in c + 1..=RECORDS {
        store.insert(s, &record("t", s)).expect("insert");
    }
    assert_eq!(store.seal_all().expect("seal"), RECORDS);
    let all = FlowFilter::new("t", i64::MIN, i64::MAX);
    let got = drain(&store, &all, 5000);
    let want = naive(&records("t", RECORDS), &all);
    assert_eq!(got.len(), want.len(), "entries after {kills} kills");
    assert!(got == want);
    assert_eq!(store.stats().damaged_files, 0);
}
