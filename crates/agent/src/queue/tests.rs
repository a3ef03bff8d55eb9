use super::*;

fn opts(max_bytes: u64, segment_bytes: u64) -> QueueOptions {
    QueueOptions {
        max_bytes,
        segment_bytes,
    }
}

fn entry(i: u64) -> Vec<u8> {
    format!(r#"{{"text":"entry {i}","pad":"{}"}}"#, "x".repeat(40)).into_bytes()
}

fn pos(offset: u64) -> FilePos {
    FilePos {
        dev: 1,
        ino: 2,
        offset,
        fingerprint: 3,
        fingerprint_len: 4,
        part: 0,
    }
}

fn append(q: &mut Queue, i: u64) -> Appended {
    let json = entry(i);
    let file = Some(("/var/log/x.log", pos(i)));
    q.append(&Record::Entry { json: &json, file }).unwrap()
}

/// Every durable, unacknowledged entry's number.
fn unacked(q: &Queue) -> Vec<u64> {
    let batch = q.read_batch(usize::MAX).unwrap();
    batch
        .entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(e).unwrap();
            v["text"].as_str().unwrap()["entry ".len()..]
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn records_round_trip() {
    let json = br#"{"a":1}"#;
    for rec in [
        Record::Entry { json, file: None },
        Record::Entry {
            json,
            file: Some(("/p", pos(9))),
        },
        Record::Mark {
            path: "/p/é",
            pos: pos(u64::MAX),
        },
        Record::Forget { path: "/p/é" },
    ] {
        let mut buf = Vec::new();
        encode(&rec, &mut buf).unwrap();
        assert_eq!(decode(&buf), Some(rec));
    }
    assert_eq!(decode(&[9, 1, 2]), None);
    assert_eq!(decode(&[KIND_FILE_MARK, 200]), None);
}

#[test]
fn a_forgotten_position_stays_forgotten_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), opts(1 << 20, 1 << 16)).unwrap();
    for path in ["/gone", "/kept"] {
        q.append(&Record::Mark { path, pos: pos(3) }).unwrap();
    }
    q.append(&Record::Forget { path: "/gone" }).unwrap();
    q.sync().unwrap();
    assert!(!q.file_positions().contains_key("/gone"));
    drop(q);
    // Recovered from the segments (the state file may predate the records).
    let q = Queue::open(dir.path(), opts(1 << 20, 1 << 16)).unwrap();
    let keys: Vec<_> = q.file_positions().keys().cloned().collect();
    assert_eq!(keys, ["/kept"]);
}

#[test]
fn entries_become_readable_after_sync_and_ack_persists() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), opts(1 << 20, 1 << 16)).unwrap();
    for i in 0..5 {
        append(&mut q, i);
    }
    assert_eq!(
        unacked(&q),
        Vec::<u64>::new(),
        "not durable yet, not visible"
    );
    q.sync().unwrap();
    assert_eq!(unacked(&q), [0, 1, 2, 3, 4]);
    let batch = q.read_batch(usize::MAX).unwrap();
    assert_eq!(
        batch.body_len,
        2 + batch.entries.iter().map(Vec::len).sum::<usize>() + 4
    );
    q.ack(batch.end).unwrap();
    assert_eq!(q.pending_bytes(), 0);
    for i in 5..8 {
        append(&mut q, i);
    }
    q.sync().unwrap();
    drop(q);

    let mut q = Queue::open(dir.path(), opts(1 << 20, 1 << 16)).unwrap();
    assert_eq!(
        unacked(&q),
        [5, 6, 7],
        "acked entries are not read again, unacked ones are"
    );
    assert_eq!(q.file_positions()["/var/log/x.log"], pos(7));
    append(&mut q, 8);
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts(1 << 20, 1 << 16)).unwrap();
    assert_eq!(unacked(&q), [5, 6, 7, 8]);
}

#[test]
fn batches_respect_the_size_limit_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), opts(1 << 20, 300)).unwrap();
    for i in 0..50 {
        append(&mut q, i);
        if i % 7 == 0 {
            q.append(&Record::Mark {
                path: "/m",
                pos: pos(i),
            })
            .unwrap();
        }
    }
    q.sync().unwrap();
    assert!(list_segments(dir.path()).unwrap().len() > 5);
    let limit = 3 * entry(0).len() + 10;
    let mut seen = Vec::new();
    loop {
        let batch = q.read_batch(limit).unwrap();
        if batch.entries.is_empty() {
            break;
        }
        assert!(
            batch.body_len <= limit && batch.entries.len() == 3
                || seen.len() + batch.entries.len() == 50
        );
        seen.extend(unacked(&q).into_iter().take(batch.entries.len()));
        q.ack(batch.end).unwrap();
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    assert_eq!(q.pending_bytes(), 0);
}

/// Builds a one-segment queue of ten entries, the state file written after
/// the ninth (as a crash would leave it), and returns its directory, the
/// segment's bytes and where the last record starts.
fn ten_entries() -> (tempfile::TempDir, Vec<u8>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), opts(1 << 20, 1 << 20)).unwrap();
    for i in 0..9 {
        append(&mut q, i);
    }
    q.close().unwrap();
    append(&mut q, 9);
    q.sync().unwrap();
    let ids = list_segments(dir.path()).unwrap();
    assert_eq!(ids.len(), 1);
    let data = fs::read(segment_path(dir.path(), ids[0])).unwrap();
    let last = RecordIter::new(&data).map(|(off, _)| off).last().unwrap();
    (dir, data, last)
}

fn reopen_with(data: &[u8], state_from: &Path) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(state_from.join(STATE_FILE), dir.path().join(STATE_FILE)).unwrap();
    fs::write(segment_path(dir.path(), 1), data).unwrap();
    let q = Queue::open(dir.path(), opts(1 << 20, 1 << 20)).unwrap();
    (dir, q)
}

#[test]
fn torn_last_record_is_cut_at_every_offset_keeping_intact_ones() {
    let (orig, data, last) = ten_entries();
    for cut in last..data.len() {
        let (dir, mut q) = reopen_with(&data[..cut], orig.path());
        assert_eq!(unacked(&q), (0..9).collect::<Vec<_>>(), "cut at {cut}");
        assert_eq!(
            fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
            last as u64,
            "cut at {cut}"
        );
        assert_eq!(
            q.file_positions()["/var/log/x.log"],
            pos(8),
            "position of the last intact line"
        );
        if (cut - last) % 8 != 0 {
            continue;
        }
        // The queue goes on cleanly after the cut.
        append(&mut q, 10);
        q.close().unwrap();
        let q = Queue::open(dir.path(), opts(1 << 20, 1 << 20)).unwrap();
        assert_eq!(unacked(&q), [0, 1, 2, 3, 4, 5, 6, 7, 8, 10], "cut at {cut}");
    }
    // Nothing cut when the tail is intact.
    let (_dir, q) = reopen_with(&data, orig.path());
    assert_eq!(unacked(&q), (0..10).collect::<Vec<_>>());
}

#[test]
fn corrupt_or_zeroed_data_is_cut_from_the_first_bad_record() {
    let (orig, data, _) = ten_entries();
    let starts: Vec<usize> = RecordIter::new(&data).map(|(off, _)| off).collect();
    // A flipped bit in the sixth record's payload.
    let mut bad = data.clone();
    bad[starts[5] + HEADER_LEN + 3] ^= 0x10;
    let (_dir, q) = reopen_with(&bad, orig.path());
    assert_eq!(unacked(&q), [0, 1, 2, 3, 4]);
    // Zeros after the records (a file extended but never written).
    let mut zeroed = data.clone();
    zeroed.extend_from_slice(&[0; 4096]);
    let (dir, q) = reopen_with(&zeroed, orig.path());
    assert_eq!(unacked(&q), (0..10).collect::<Vec<_>>());
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
        data.len() as u64
    );
}

#[test]
fn full_queue_deletes_uploaded_history_first_then_oldest_unuploaded() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8192;
    let mut q = Queue::open(dir.path(), opts(max, 1024)).unwrap();
    for i in 0..30 {
        append(&mut q, i);
    }
    q.sync().unwrap();
    let batch = q.read_batch(usize::MAX).unwrap();
    q.ack(batch.end).unwrap();
    let acked_segments = list_segments(dir.path()).unwrap();

    let mut dropped = 0;
    let mut first_drop_checked = false;
    for i in 100..400 {
        let out = append(&mut q, i);
        assert!(q.total_bytes() <= max, "never over the limit");
        if out.dropped > 0 && !first_drop_checked {
            first_drop_checked = true;
            for id in &acked_segments {
                assert!(
                    !segment_path(dir.path(), *id).exists(),
                    "uploaded history goes before unuploaded entries"
                );
            }
        }
        dropped += out.dropped;
    }
    q.sync().unwrap();
    assert!(first_drop_checked && dropped > 0);
    let left = unacked(&q);
    assert_eq!(
        left,
        (400 - left.len() as u64..400).collect::<Vec<_>>(),
        "the oldest went first"
    );
    assert_eq!(
        dropped,
        300 - left.len() as u64,
        "every deleted unuploaded entry is counted"
    );
    let on_disk: u64 = list_segments(dir.path())
        .unwrap()
        .iter()
        .map(|id| fs::metadata(segment_path(dir.path(), *id)).unwrap().len())
        .sum();
    assert!(on_disk <= max);

    drop(q);
    let q = Queue::open(dir.path(), opts(max, 1024)).unwrap();
    assert_eq!(q.file_positions()["/var/log/x.log"], pos(399));
    assert_eq!(unacked(&q), left);
}

#[test]
fn file_positions_of_deleted_segments_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), opts(8192, 1024)).unwrap();
    q.append(&Record::Mark {
        path: "/early",
        pos: pos(42),
    })
    .unwrap();
    for i in 0..200 {
        append(&mut q, i);
    }
    q.sync().unwrap();
    assert!(
        !segment_path(dir.path(), 1).exists(),
        "the first segment was deleted"
    );
    drop(q);
    let q = Queue::open(dir.path(), opts(8192, 1024)).unwrap();
    assert_eq!(q.file_positions()["/early"], pos(42));
    assert_eq!(q.file_positions()["/var/log/x.log"], pos(199));
}
