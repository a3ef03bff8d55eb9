//! `Store::skip_to`: positions a consumer published and the store lost in
//! a recovery cut are never given to new records; scans, cursors,
//! recovery, sealing and the dedup state all pass over the skipped range.

use std::path::Path;
use std::sync::Arc;
use tally_store::{Filter, KeepForever, NewRecord, ReadLimits, ReadSpec, Store, StoreConfig, kind};

fn rec(i: u64) -> NewRecord {
    // Recent times: the dedup state keeps identities of the last 24 hours.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    NewRecord {
        time: now + i as i64,
        collection: "c".into(),
        owner: tally_store::Owner::tailnet("T1"),
        instance: [(i % 7) as u8; 32],
        identity: Some((1, i)),
        client_time: None,
        kind: kind::LOG,
        body: format!("{{\"text\":\"entry number {i:06}\"}}").into_bytes(),
    }
}

fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.block_target_bytes = 2048;
    c.chunk_target_bytes = 512;
    c
}

fn seqs(store: &Store) -> Vec<u64> {
    store
        .scan(1, &Filter::default(), usize::MAX, usize::MAX, 0)
        .unwrap()
        .records
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn skipped_positions_are_never_used_across_seals_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
    store.append((1..=10).map(rec).collect()).await.unwrap();
    store.skip_to(5).await.unwrap(); // behind: nothing happens
    assert_eq!(store.end_seq(), 11);
    store.skip_to(100).await.unwrap();
    assert_eq!(store.end_seq(), 100);
    let out = store.append((11..=15).map(rec).collect()).await.unwrap();
    assert_eq!(out.last_seq, Some(104));
    let mut want: Vec<u64> = (1..=10).chain(100..=104).collect();
    assert_eq!(seqs(&store), want);
    // A reader through the log seam crosses the gap.
    let limits = ReadLimits {
        records: 100,
        bytes: 1 << 20,
    };
    let got: Vec<u64> = ReadSpec::default()
        .read(&*store, 1, limits)
        .unwrap()
        .records
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got, want);
    store.seal_now().await.unwrap();
    assert_eq!(seqs(&store), want);
    // An empty WAL after a skip is all that says where to continue.
    store.skip_to(200).await.unwrap();
    store.close();

    drop(store);

    let (store, report) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
    assert!(report.cuts.is_empty(), "{:?}", report.cuts);
    assert_eq!(store.end_seq(), 200);
    assert_eq!(seqs(&store), want);
    // Retries of records stored before the skips are still duplicates.
    let out = store.append(vec![rec(3), rec(12), rec(16)]).await.unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 2));
    assert_eq!(out.last_seq, Some(200));
    want.push(200);
    assert_eq!(seqs(&store), want);
    store.close();
    drop(store);
    let (store, _) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
    assert_eq!(store.end_seq(), 201);
    assert_eq!(seqs(&store), want);
}

#[tokio::test]
async fn after_a_wal_cut_the_store_continues_where_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
        for i in 1..=20 {
            store.append(vec![rec(i)]).await.unwrap();
        }
        store.close();
    }
    // The last records' bytes are damaged: recovery cuts them.
    let wal = dir.path().join("wal-00000000000000000001.log");
    let wal = if wal.exists() {
        wal
    } else {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a WAL")
    };
    let len = std::fs::metadata(&wal).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);
    let (store, report) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
    assert_eq!(report.cuts.len(), 1, "{:?}", report.cuts);
    let end = store.end_seq();
    assert!(end < 21, "records were cut, the store continues at {end}");
    // A consumer had published positions up to 20: continue after them.
    store.skip_to(21).await.unwrap();
    let out = store.append(vec![rec(100)]).await.unwrap();
    assert_eq!(out.last_seq, Some(21));
    let got = seqs(&store);
    assert_eq!(got.last(), Some(&21));
    assert!(got.iter().all(|&s| s < end || s == 21), "{got:?}");
    store.close();
    drop(store);
    let (store, report) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
    assert!(report.cuts.is_empty(), "{:?}", report.cuts);
    assert_eq!(store.end_seq(), 22);
}
