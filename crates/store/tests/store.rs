//! Store behaviour on real files: durability, recovery, dedup, sealing,
//! retention and cursors.

use std::sync::Arc;
use std::time::Duration;
use tally_store::{
    Filter, KeepForever, Log, NewRecord, ReadLimits, ReadSpec, RetentionPolicy, Store, StoreConfig,
    kind,
};

fn rec(inst: u8, time: i64, identity: Option<(u32, u64)>, text: &str) -> NewRecord {
    NewRecord {
        time,
        collection: "tailnode".into(),
        owner: tally_store::Owner::tailnet("T1"),
        instance: [inst; 32],
        identity,
        client_time: None,
        kind: kind::LOG,
        body: format!("{{\"text\":\"{text}\"}}").into_bytes(),
    }
}

fn small_config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.block_target_bytes = 4096;
    c.chunk_target_bytes = 1024;
    c
}

fn open(dir: &std::path::Path) -> (Arc<Store>, tally_store::RecoveryReport) {
    Store::open(small_config(dir), Arc::new(KeepForever)).expect("open store")
}

fn all(store: &Store) -> Vec<tally_store::Record> {
    store
        .scan(1, &Filter::default(), usize::MAX, usize::MAX, 0)
        .unwrap()
        .records
}

#[tokio::test]
async fn appended_records_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = open(dir.path());
    assert!(report.cuts.is_empty());
    for i in 0..50u64 {
        let out = store
            .append(vec![rec(1, i as i64, None, &format!("m{i}"))])
            .await
            .unwrap();
        assert_eq!(out.last_seq, Some(i + 1));
    }
    store.close();
    drop(store);
    let (store, report) = open(dir.path());
    assert!(report.cuts.is_empty(), "{:?}", report.cuts);
    let got = all(&store);
    assert_eq!(got.len(), 50);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.rec.body, format!("{{\"text\":\"m{i}\"}}").into_bytes());
    }
    assert_eq!(store.end_seq(), 51);
}

#[tokio::test]
async fn retried_identities_are_dropped_even_after_restart_and_sealing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let batch: Vec<_> = (1..=10).map(|n| rec(1, now, Some((7, n)), "x")).collect();
    assert_eq!(store.append(batch.clone()).await.unwrap().stored, 10);
    let again = store.append(batch.clone()).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 10));
    // Same proc_seq from another proc_id or instance is not a duplicate.
    assert_eq!(
        store
            .append(vec![
                rec(1, now, Some((8, 1)), "y"),
                rec(2, now, Some((7, 1)), "z")
            ])
            .await
            .unwrap()
            .stored,
        2
    );
    store.seal_now().await.unwrap();
    store.close();
    drop(store);
    let (store, _) = open(dir.path());
    let mixed: Vec<_> = (5..=15).map(|n| rec(1, now, Some((7, n)), "x")).collect();
    let out = store.append(mixed).await.unwrap();
    assert_eq!((out.stored, out.duplicates), (5, 6));
    assert_eq!(all(&store).len(), 17);
}

#[tokio::test]
async fn sealed_segments_are_compressed_indexed_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut raw = 0;
    for i in 0..2000u64 {
        let r = rec(
            (i % 10) as u8,
            i as i64,
            None,
            &format!("connection from 100.64.0.{} accepted, handshake ok", i % 50),
        );
        raw += r.body.len();
        store.append(vec![r]).await.unwrap();
    }
    store.seal_now().await.unwrap();
    let stats = store.stats();
    assert!(
        stats.disk_bytes < raw as u64 / 2,
        "stored {} bytes for {raw} raw",
        stats.disk_bytes
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".tsb")), "{names:?}");
    // Time and instance filters.
    let f = Filter {
        instances: vec![[3; 32]],
        time_start: Some(100),
        time_end: Some(199),
        ..Default::default()
    };
    let got = store
        .scan(1, &f, usize::MAX, usize::MAX, 0)
        .unwrap()
        .records;
    assert_eq!(got.len(), 10);
    assert!(
        got.iter()
            .all(|r| r.rec.instance == [3; 32] && (100..=199).contains(&r.rec.time))
    );
    // Paging with next_seq visits everything once.
    let mut pos = 1;
    let mut seen = 0;
    loop {
        let b = store
            .scan(pos, &Filter::default(), 333, usize::MAX, 0)
            .unwrap();
        seen += b.records.len();
        pos = b.next_seq;
        if !b.truncated {
            break;
        }
    }
    assert_eq!(seen, 2000);
    store.close();
    drop(store);
    let (store, report) = open(dir.path());
    assert!(report.cuts.is_empty());
    assert_eq!(all(&store).len(), 2000);
}

/// Expires instance 9's records (unadopted) 10 time units after they were written.
struct ShortForNine;
impl RetentionPolicy for ShortForNine {
    fn expires_at(
        &self,
        _: tally_store::Tenant<'_>,
        _: &str,
        instance: &[u8; 32],
        time: i64,
    ) -> Option<i64> {
        (instance[0] == 9).then_some(time + 10)
    }
}

#[tokio::test]
async fn retention_hides_then_deletes_expired_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(small_config(dir.path()), Arc::new(ShortForNine)).unwrap();
    for i in 0..100 {
        store
            .append(vec![rec(9, i, None, "gone"), rec(1, i, None, "kept")])
            .await
            .unwrap();
    }
    store.seal_now().await.unwrap();
    // At time 59, records of instance 9 with time <= 49 are expired: hidden at once.
    let visible = store
        .scan(1, &Filter::default(), usize::MAX, usize::MAX, 59)
        .unwrap()
        .records;
    assert_eq!(visible.len(), 100 + 50);
    let report = store.enforce_retention(59).unwrap();
    assert_eq!(report.records_deleted, 50);
    assert_eq!(all(&store).len(), 150);
    let report = store.enforce_retention(1_000).unwrap();
    assert_eq!(report.records_deleted, 50);
    assert!(all(&store).iter().all(|r| r.rec.instance == [1; 32]));
    // Whole segments go when nothing in them is kept.
    let (store2, _) =
        Store::open(small_config(&dir.path().join("b")), Arc::new(ShortForNine)).unwrap();
    store2.append(vec![rec(9, 0, None, "a")]).await.unwrap();
    store2.seal_now().await.unwrap();
    let before = store2.stats().segments;
    let r = store2.enforce_retention(100).unwrap();
    assert_eq!(r.segments_deleted, 1);
    assert_eq!(store2.stats().segments, before - 1);
}

#[tokio::test]
async fn log_reads_by_position_and_waits_for_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store
        .append(vec![rec(1, 1, None, "a"), rec(2, 2, None, "b")])
        .await
        .unwrap();
    let log: Arc<dyn Log> = store.clone();
    let spec = ReadSpec {
        filter: Filter {
            instances: vec![[2; 32]],
            ..Default::default()
        },
        include_expired: false,
    };
    let limits = ReadLimits {
        records: 10,
        bytes: 1 << 20,
    };
    let first = spec.read(&*log, 1, limits).unwrap();
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.records[0].seq, 2);
    assert_eq!(first.next_seq, 3);
    assert!(!first.truncated);
    // Nothing past the end yet: a wait subscribes and resolves only once a
    // record lands there.
    let idle = store.subscribers();
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for(first.next_seq).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.subscribers() == idle {
        assert!(
            std::time::Instant::now() < deadline,
            "the wait never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!waiter.is_finished());
    store.append(vec![rec(1, 3, None, "c")]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    store.append(vec![rec(2, 4, None, "d")]).await.unwrap();
    let next = spec.read(&*log, 3, limits).unwrap();
    assert_eq!(
        next.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![4]
    );
    // A wait for a position already passed resolves at once.
    log.wait_for(4).await.unwrap();
    assert_eq!(log.end_seq(), 5);
}

#[tokio::test]
async fn concurrent_appends_all_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50u64 {
                s.append(vec![rec(t, 0, Some((1, n)), "c")]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = all(&store);
    assert_eq!(got.len(), 16 * 50);
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=800).collect::<Vec<_>>());
}

/// Records of a version that stored no owners get one, once, on start;
/// until then no owner filter shows them.
#[tokio::test]
async fn legacy_records_are_given_owners_once_and_indexed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        let legacy: Vec<NewRecord> = (0..300u64)
            .map(|i| NewRecord {
                owner: tally_store::Owner::Legacy,
                ..rec((i % 3) as u8, 1_000 + i as i64, Some((1, i)), "old")
            })
            .collect();
        store.append(legacy[..200].to_vec()).await.unwrap();
        store.seal_now().await.unwrap();
        // The rest stays in the write-ahead log.
        store.append(legacy[200..].to_vec()).await.unwrap();
        store.close();
    }
    let (store, _) = open(dir.path());
    let owned_by = |o: &str| Filter {
        owner: Some(o.into()),
        ..Default::default()
    };
    let count = |store: &Store, o: &str| {
        store
            .scan(1, &owned_by(o), usize::MAX, usize::MAX, 0)
            .unwrap()
            .records
            .len()
    };
    assert_eq!(count(&store, "T0"), 0, "legacy records match no owner");
    // Instance 0 belongs to T0, instance 1 to T1, instance 2 to nobody.
    let claimed = store
        .claim_legacy(|r| match r.instance[0] {
            0 => tally_store::Owner::tailnet("T0"),
            1 => tally_store::Owner::tailnet("T1"),
            _ => tally_store::Owner::Unclaimed,
        })
        .await
        .unwrap();
    assert_eq!(claimed, 300);
    assert_eq!(count(&store, "T0"), 100);
    assert_eq!(count(&store, "T1"), 100);
    assert_eq!(count(&store, ""), 100);
    let records = all(&store);
    assert_eq!(records.len(), 300);
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.seq == i as u64 + 1)
    );
    assert!(
        records
            .iter()
            .all(|r| r.rec.owner != tally_store::Owner::Legacy)
    );
    // Done once: a second call (or start) changes nothing.
    assert_eq!(
        store
            .claim_legacy(|_| tally_store::Owner::Unclaimed)
            .await
            .unwrap(),
        0
    );
    store.close();
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!(count(&store, "T0"), 100);
}

/// A scan past a damaged sealed block says what it skipped and why.
#[tokio::test]
async fn a_scan_reports_the_ranges_it_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let batch: Vec<NewRecord> = (0..400u64)
        .map(|i| {
            rec(
                1,
                1_000 + i as i64,
                None,
                &format!("entry {i} {}", "x".repeat(64)),
            )
        })
        .collect();
    store.append(batch).await.unwrap();
    store.seal_now().await.unwrap();
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tsb"))
        .unwrap();
    let clean = store
        .scan(1, &Filter::default(), usize::MAX, usize::MAX, 0)
        .unwrap();
    assert!(clean.damaged.is_empty());
    assert_eq!(clean.records.len(), 400);
    // Flip a byte inside the first block's compressed data.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let got = store
        .scan(1, &Filter::default(), usize::MAX, usize::MAX, 0)
        .unwrap();
    assert_eq!(got.damaged.len(), 1, "{:?}", got.damaged);
    let d = &got.damaged[0];
    assert_eq!(d.first_seq, 1);
    assert_eq!(
        got.records.len() as u64,
        400 - (d.last_seq - d.first_seq + 1)
    );
    assert!(got.records.iter().all(|r| r.seq > d.last_seq));
    assert!(!d.reason.is_empty());
}
