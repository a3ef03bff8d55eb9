//! Recovery from damaged files: random truncation and corruption of WAL and
//! sealed segments never panics and keeps every intact record before the damage.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_store::{Filter, KeepForever, NewRecord, Store, StoreConfig, kind};

fn rec(i: u64) -> NewRecord {
    NewRecord {
        time: i as i64,
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

/// Writes `n` records one per append (each its own fsync), optionally sealed.
fn build(dir: &Path, n: u64, seal: bool) -> PathBuf {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, _) = Store::open(config(dir), Arc::new(KeepForever)).unwrap();
    rt.block_on(async {
        for i in 1..=n {
            store.append(vec![rec(i)]).await.unwrap();
        }
        if seal {
            store.seal_now().await.unwrap();
        }
    });
    store.close();
    let ext = if seal { "tsb" } else { "log" };
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == ext) && std::fs::metadata(p).unwrap().len() > 16
        })
        .expect("segment file")
}

fn reopen(dir: &Path) -> (Vec<u64>, Vec<String>) {
    let (store, report) = Store::open(config(dir), Arc::new(KeepForever))
        .expect("recovery never fails on damaged data");
    let got = store
        .scan(1, &Filter::default(), usize::MAX, usize::MAX, 0)
        .unwrap()
        .records;
    for r in &got {
        assert_eq!(
            r.rec,
            rec(r.seq),
            "a recovered record differs from what was written"
        );
    }
    (got.iter().map(|r| r.seq).collect(), report.cuts)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn truncating_the_wal_at_every_byte_of_the_last_records_keeps_the_prefix() {
    let base = tempfile::tempdir().unwrap();
    let wal = build(base.path(), 20, false);
    let len = std::fs::metadata(&wal).unwrap().len();
    let frame = (len - 16) / 20;
    for cut in (len - 2 * frame - 3)..len {
        let d = tempfile::tempdir().unwrap();
        copy_dir(base.path(), d.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join(wal.file_name().unwrap()))
            .unwrap();
        f.set_len(cut).unwrap();
        let (seqs, cuts) = reopen(d.path());
        let intact = (cut - 16) / frame;
        assert_eq!(seqs, (1..=intact).collect::<Vec<_>>(), "cut at {cut}");
        assert_eq!(
            cuts.is_empty(),
            (cut - 16) % frame == 0,
            "cut at {cut}: {cuts:?}"
        );
        // The store accepts writes after the cut, continuing the sequence.
        let (store, _) = Store::open(config(d.path()), Arc::new(KeepForever)).unwrap();
        assert_eq!(store.end_seq(), intact + 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn corrupting_a_wal_byte_keeps_every_record_before_it(pos in 16u64..4000, bit in 0u8..8) {
        let d = tempfile::tempdir().unwrap();
        let wal = build(d.path(), 60, false);
        let len = std::fs::metadata(&wal).unwrap().len();
        let pos = pos % len;
        let mut data = std::fs::read(&wal).unwrap();
        data[pos as usize] ^= 1 << bit;
        std::fs::write(&wal, &data).unwrap();
        let frame = (len - 16) / 60;
        let damaged_record = (pos.saturating_sub(16)) / frame + 1;
        let (seqs, cuts) = reopen(d.path());
        prop_assert!(seqs.len() as u64 >= damaged_record - 1, "lost intact records: {} < {}", seqs.len(), damaged_record - 1);
        prop_assert_eq!(seqs.clone(), (1..=seqs.len() as u64).collect::<Vec<_>>());
        prop_assert!(!cuts.is_empty() || pos < 16);
    }

    #[test]
    fn damaging_a_sealed_segment_never_panics_and_keeps_a_prefix(cut_frac in 0.0f64..1.0, flip in proptest::option::of(0usize..100_000)) {
        let d = tempfile::tempdir().unwrap();
        let seg = build(d.path(), 300, true);
        let blocks = tally_store::segment::Segment::open_sealed(seg.clone(), 1).unwrap().all_blocks();
        let mut data = std::fs::read(&seg).unwrap();
        let original_len = data.len();
        if let Some(p) = flip {
            let p = p % data.len();
            data[p] ^= 0x55;
        } else {
            data.truncate((data.len() as f64 * cut_frac) as usize);
        }
        std::fs::write(&seg, &data).unwrap();
        let (seqs, _) = reopen(d.path());
        let mut sorted = seqs.clone();
        sorted.dedup();
        prop_assert_eq!(&sorted, &seqs);
        // Every record in a block that ends before the damage is kept.
        let damage_at = flip.map_or(data.len(), |p| p % original_len);
        let intact_upto = blocks.iter().filter(|b| b.offset + u64::from(b.len) <= damage_at as u64).map(|b| b.last_seq).max().unwrap_or(0);
        for s in 1..=intact_upto {
            prop_assert!(seqs.contains(&s), "lost record {} from an intact block", s);
        }
    }
}
