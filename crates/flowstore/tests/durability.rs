//! Crash safety, damage and retention: a replay after a crash neither loses
//! nor duplicates entries; torn and corrupt files are ignored, salvaged or
//! skipped with an error; retention deletes old windows per tailnet.

mod common;

use common::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_flowstore::{FlowFilter, FlowStore, FlowStoreConfig, PageRequest};

fn everything(t: &str) -> FlowFilter {
    FlowFilter::new(t, i64::MIN, i64::MAX)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(dir).expect("list") {
        let d = d.expect("entry").path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).expect("list") {
                v.push(f.expect("entry").path());
            }
        }
    }
    v.sort();
    v
}

/// Feeds records `from..=to` like the server's consumer: insert, then seal
/// what is due by the records' own clock every `every` records.
fn feed(store: &FlowStore, from: u64, to: u64, every: u64) {
    for s in from..=to {
        let es = record("t", s);
        store.insert(s, &es).expect("insert");
        if s % every == 0 {
            store.seal_due(es[0].logged).expect("seal");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Crashes at random points, some between the rename of sealed files
    /// and the checkpoint write (the checkpoint file is rolled back to an
    /// older one), then replays from the checkpoint: every entry exactly once.
    #[test]
    fn replay_after_a_crash_stores_every_entry_exactly_once(
        n in 20u64..400,
        every in 1u64..40,
        crashes in prop::collection::vec((0.0f64..1.0, prop::bool::ANY), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = FlowStoreConfig { window: Duration::from_secs(1), grace: Duration::ZERO, ..small_config() };
        let ckpt = dir.path().join(tally_flowstore::CHECKPOINT_FILE);
        let mut reached = 0u64;
        for (at, roll_back) in crashes {
            let (store, c) = open(dir.path(), &cfg);
            prop_assert!(c <= reached);
            let before = std::fs::read(&ckpt).ok();
            let stop = (c + 1).max(((n as f64) * at) as u64).min(n);
            feed(&store, c + 1, stop, every);
            reached = reached.max(stop);
            drop(store); // the crash: open windows are lost
            if roll_back {
                // The checkpoint write of the last seals never happened.
                match before {
                    Some(b) => std::fs::write(&ckpt, b).expect("roll back"),
                    None => { let _ = std::fs::remove_file(&ckpt); }
                }
            }
        }
        let (store, c) = open(dir.path(), &cfg);
        feed(&store, c + 1, n, every);
        prop_assert_eq!(store.seal_all().expect("seal"), n);
        let got = drain(&store, &everything("t"), 500);
        let want = naive(&records("t", n), &everything("t"));
        prop_assert_eq!(got.len(), want.len());
        prop_assert!(got == want);
    }
}

#[test]
fn the_checkpoint_covers_only_sealed_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = FlowStoreConfig {
        window: Duration::from_secs(1),
        grace: Duration::ZERO,
        ..small_config()
    };
    let (store, c) = open(dir.path(), &cfg);
    assert_eq!(c, 0);
    for s in 1..=30 {
        store.insert(s, &record("t", s)).expect("insert");
    }
    // Records are logged 100 ms apart from BASE + 5.43 s: seal windows up
    // to BASE + 7 s, i.e. records whose logged time is before it.
    let c = store.seal_due(BASE + 7 * SEC).expect("seal");
    let sealed_upto = (1..=30u64)
        .take_while(|s| record("t", *s)[0].logged < BASE + 7 * SEC)
        .last()
        .expect("some sealed");
    assert_eq!(c, sealed_upto);
    assert_eq!(store.stats().checkpoint, c);
    drop(store);
    let (_, c2) = open(dir.path(), &cfg);
    assert_eq!(c2, c, "the persisted checkpoint");
    // advance_to moves the checkpoint over non-flow records once nothing is open.
    let (store, _) = open(dir.path(), &cfg);
    store.advance_to(100);
    assert_eq!(store.seal_all().expect("seal"), 100);
}

#[test]
fn a_torn_temporary_file_is_removed_and_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_config();
    let (store, _) = open(dir.path(), &cfg);
    feed(&store, 1, 40, 10);
    store.seal_all().expect("seal");
    drop(store);
    let tdir = dir.path().join("t");
    let tmp = tdir.join("1767225700.flw.tmp");
    std::fs::write(&tmp, b"TLYFLW01 half a segment").expect("write");
    let (store, c) = open(dir.path(), &cfg);
    assert_eq!(c, 40);
    assert!(
        !tmp.exists(),
        "leftover of a crash before rename is removed"
    );
    assert_eq!(store.stats().damaged_files, 0);
    assert_eq!(
        drain(&store, &everything("t"), 100),
        naive(&records("t", 40), &everything("t"))
    );
}

#[test]
fn a_truncated_segment_is_salvaged_block_by_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = small_config();
    cfg.window = Duration::from_secs(3600);
    let (store, _) = open(dir.path(), &cfg);
    feed(&store, 1, 200, 1000);
    store.seal_all().expect("seal");
    drop(store);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let len = std::fs::metadata(&files[0]).expect("stat").len();
    // Cut the trailer, the footer and part of the last block.
    let bytes = std::fs::read(&files[0]).expect("read");
    let last_block = bytes
        .windows(4)
        .rposition(|w| w == b"FBK1")
        .expect("a block");
    std::fs::write(&files[0], &bytes[..last_block + 30]).expect("truncate");
    assert!(std::fs::metadata(&files[0]).expect("stat").len() < len);
    let (store, _) = open(dir.path(), &cfg);
    assert_eq!(store.stats().damaged_files, 1);
    let got = drain(&store, &everything("t"), 1000);
    let want = naive(&records("t", 200), &everything("t"));
    assert!(!got.is_empty() && got.len() < want.len());
    let want = as_sorted(&want);
    assert!(
        as_sorted(&got)
            .iter()
            .all(|h| want.binary_search(h).is_ok()),
        "only real entries"
    );
}

#[test]
fn a_corrupt_block_is_skipped_with_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = small_config();
    cfg.window = Duration::from_secs(3600);
    let (store, _) = open(dir.path(), &cfg);
    feed(&store, 1, 200, 1000);
    store.seal_all().expect("seal");
    drop(store);
    let file = &segment_files(dir.path())[0];
    let mut bytes = std::fs::read(file).expect("read");
    let blocks: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"FBK1")
        .map(|(i, _)| i)
        .collect();
    assert!(blocks.len() > 3);
    bytes[blocks[1] + 20 + 3] ^= 0x40;
    std::fs::write(file, &bytes).expect("write");

    let (store, _) = open(dir.path(), &cfg);
    let p = store
        .query(&everything("t"), &PageRequest::first(100_000))
        .expect("the query still answers");
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert!(p.errors[0].contains("skipped"), "{}", p.errors[0]);
    let want = naive(&records("t", 200), &everything("t"));
    assert!(!p.hits.is_empty() && p.hits.len() < want.len());
    let want = as_sorted(&want);
    assert!(
        as_sorted(&p.hits)
            .iter()
            .all(|h| want.binary_search(h).is_ok())
    );
    let e = store.edges(&everything("t"), 3600 * SEC).expect("edges");
    assert_eq!(e.errors.len(), 1);
    assert!(store.stats().corrupt_blocks >= 2);
}

#[test]
fn a_damaged_footer_is_salvaged_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = small_config();
    cfg.window = Duration::from_secs(3600);
    let (store, _) = open(dir.path(), &cfg);
    feed(&store, 1, 200, 1000);
    store.seal_all().expect("seal");
    drop(store);
    let file = &segment_files(dir.path())[0];
    let mut bytes = std::fs::read(file).expect("read");
    let n = bytes.len();
    bytes[n - 96 - 10] ^= 0xff; // inside the footer, before the trailer
    std::fs::write(file, &bytes).expect("write");
    let (store, _) = open(dir.path(), &cfg);
    let got = drain(&store, &everything("t"), 1000);
    assert_eq!(got, naive(&records("t", 200), &everything("t")));
    assert_eq!(store.stats().damaged_files, 1);
}

#[test]
fn a_failed_seal_keeps_the_window_queryable_and_the_checkpoint_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_config();
    let (store, _) = open(dir.path(), &cfg);
    // A file where the tailnet's directory should be makes sealing fail.
    std::fs::write(dir.path().join("t"), b"in the way").expect("write");
    feed(&store, 1, 20, 1000);
    assert!(store.seal_all().is_err());
    assert_eq!(store.stats().checkpoint, 0);
    assert!(store.stats().sealing_windows >= 1);
    assert_eq!(
        drain(&store, &everything("t"), 7),
        naive(&records("t", 20), &everything("t"))
    );
    std::fs::remove_file(dir.path().join("t")).expect("remove");
    assert_eq!(store.seal_all().expect("retry"), 20);
    assert_eq!(store.stats().sealing_windows, 0);
    assert_eq!(
        drain(&store, &everything("t"), 7),
        naive(&records("t", 20), &everything("t"))
    );
}

#[test]
fn retention_deletes_old_windows_per_tailnet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = FlowStoreConfig {
        window: Duration::from_secs(3600),
        ..small_config()
    };
    let (store, _) = open(dir.path(), &cfg);
    let hour = 3600 * SEC;
    let mut all = Vec::new();
    let mut seq = 0;
    // Five days, one record per tailnet every 6 hours.
    for h in (0..120).step_by(6) {
        for t in ["a", "b"] {
            seq += 1;
            let mut es = record(t, seq);
            for e in &mut es {
                e.start = BASE + h * hour;
                e.end = e.start + 5 * SEC;
                e.logged = e.end + SEC;
            }
            store.insert(seq, &es).expect("insert");
            all.extend(es.into_iter().map(|e| (seq, e)));
        }
    }
    store.seal_all().expect("seal");
    let files_before = store.stats().sealed_files;
    let now = BASE + 120 * hour;
    let days = |t: &str| if t == "a" { 1 } else { 3 };
    let rep = store.enforce_retention(now, &days).expect("retention");
    assert!(rep.files > 0 && rep.entries > 0);
    assert_eq!(
        store.stats().sealed_files,
        files_before - rep.files as usize
    );
    for t in ["a", "b"] {
        let cutoff = now - i64::from(days(t)) * 24 * hour;
        let kept: Vec<_> = all
            .iter()
            .filter(|(_, e)| e.tailnet == t && (e.logged.div_euclid(hour) + 1) * hour > cutoff)
            .cloned()
            .collect();
        assert!(!kept.is_empty());
        assert_eq!(
            drain(&store, &everything(t), 100),
            naive(&kept, &everything(t)),
            "tailnet {t}"
        );
    }
    // Files are gone from disk too, and a reopened store agrees.
    assert_eq!(segment_files(dir.path()).len(), store.stats().sealed_files);
    let again = store.enforce_retention(now, &days).expect("retention");
    assert_eq!(again.files, 0);
    drop(store);
    let (store, _) = open(dir.path(), &cfg);
    assert_eq!(
        store.stats().sealed_files,
        files_before - rep.files as usize
    );
}

#[test]
fn memory_is_bounded_by_sealing_the_largest_windows_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = FlowStoreConfig {
        window: Duration::from_secs(3600),
        max_open_entries: 100,
        ..small_config()
    };
    let (store, _) = open(dir.path(), &cfg);
    feed(&store, 1, 200, 10);
    assert!(
        store.stats().open_entries <= 100 + 40,
        "{:?}",
        store.stats()
    );
    assert!(store.stats().sealed_files > 1, "parts of one window");
    store.seal_all().expect("seal");
    assert_eq!(
        drain(&store, &everything("t"), 50),
        naive(&records("t", 200), &everything("t"))
    );
}
