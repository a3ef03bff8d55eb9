//! The group-commit writer thread and the sealer thread.
//!
//! The writer drains every append request that is waiting, writes all their
//! frames with one `write`, makes them durable with one `fdatasync`, and only
//! then answers each request. When the WAL segment is large or old enough it
//! starts a new one and hands the old one to the sealer, which compresses it
//! into a sealed segment and then deletes it.

use crate::index::BlockMeta;
use crate::record::{self, NewRecord};
use crate::segment::{self, Segment};
use crate::{Inner, StoreError};
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Records newly stored.
    pub stored: usize,
    /// Records dropped because their identity was already stored.
    pub duplicates: usize,
    /// Position of the last stored record, if any was stored.
    pub last_seq: Option<u64>,
}

/// A message to the writer thread.
pub(crate) enum WriterMsg {
    Append {
        records: Vec<NewRecord>,
        bytes: usize,
        reply: Reply,
    },
    Rotate(oneshot::Sender<()>),
    /// Continue at this position (see [`crate::Store::skip_to`]).
    SkipTo(u64, oneshot::Sender<Result<(), StoreError>>),
}

/// Reply channel of one append.
type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;
/// One queued append: records, their bytes, the reply.
type Pending = (Vec<NewRecord>, usize, Reply);

/// A WAL segment to seal, with the ingest state as of its end.
pub(crate) struct SealJob {
    pub seg: Arc<Segment>,
    pub state_snapshot: Vec<u8>,
    pub done: Option<oneshot::Sender<()>>,
}

pub(crate) struct Writer {
    pub inner: Arc<Inner>,
    pub file: File,
    pub seg: Arc<Segment>,
    pub size: u64,
    pub opened_at: Instant,
    pub next_seq: u64,
    pub open_chunk: Option<BlockMeta>,
    pub seal_tx: Sender<SealJob>,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<WriterMsg>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let tick = Duration::from_secs(1);
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_rotate(None);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut rotate_waiters = Vec::new();
            let mut skip = None;
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    WriterMsg::Append {
                        records,
                        bytes: b,
                        reply,
                    } => {
                        bytes += b;
                        batch.push((records, b, reply));
                    }
                    WriterMsg::Rotate(done) => rotate_waiters.push(done),
                    WriterMsg::SkipTo(seq, done) => {
                        // Later appends wait: they get positions after the skip.
                        skip = Some((seq, done));
                        break;
                    }
                }
                if bytes < 16 << 20 {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut buf, batch);
            }
            if let Some((seq, done)) = skip {
                let _ = done.send(self.skip_to(seq));
            }
            if !rotate_waiters.is_empty() {
                self.maybe_rotate(Some(rotate_waiters));
            } else {
                self.maybe_rotate(None);
            }
        }
        // Shutting down: seal nothing; recovery continues this WAL next start.
    }

    fn commit(&mut self, buf: &mut Vec<u8>, batch: Vec<Pending>) {
        buf.clear();
        let total_bytes: usize = batch.iter().map(|b| b.1).sum();
        let poisoned = self.inner.poisoned.lock().clone();
        if let Some(why) = poisoned {
            self.inner
                .pending_bytes
                .fetch_sub(total_bytes, std::sync::atomic::Ordering::Relaxed);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return;
        }
        let start_seq = self.next_seq;
        let start_size = self.size;
        let mut chunk = self.open_chunk.clone();
        let mut new_chunks: Vec<BlockMeta> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut state = self.inner.state.lock();
            for (records, _, _) in &batch {
                let mut out = AppendOutcome::default();
                for rec in records {
                    if state.is_duplicate(rec) {
                        out.duplicates += 1;
                        continue;
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let before = buf.len();
                    record::encode_frame(buf, seq, rec);
                    let n = buf.len() - before;
                    let off = start_size + before as u64;
                    let c = match chunk.as_mut() {
                        Some(c) if (c.len as usize) < self.inner.config.chunk_target_bytes => c,
                        _ => {
                            if let Some(done) = chunk.take() {
                                new_chunks.push(done);
                            }
                            chunk.insert(BlockMeta::new(off))
                        }
                    };
                    c.add(seq, rec, n);
                    c.len += n as u32;
                    state.apply(seq, rec);
                    out.stored += 1;
                    out.last_seq = Some(seq);
                }
                outcomes.push(out);
            }
        }
        let result = if buf.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let r = self.file.write_all(buf).and_then(|_| self.file.sync_data());
            self.inner
                .sync_stats
                .note(started.elapsed(), out_records(&outcomes));
            r
        };
        self.inner
            .pending_bytes
            .fetch_sub(total_bytes, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = result {
            let why = format!(
                "writing {} failed ({e}); the store stopped accepting writes to protect acknowledged data: restart the server to recover",
                self.seg.path.display()
            );
            tracing::error!("{why}");
            *self.inner.poisoned.lock() = Some(why.clone());
            for (_, _, reply) in batch {
                let _ = reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return;
        }
        self.size += buf.len() as u64;
        if let segment::Body::Wal { chunks } = &self.seg.body {
            let mut chunks = chunks.write();
            // The open chunk (if it existed before) is the last published one.
            if self.open_chunk.is_some() {
                chunks.pop();
            }
            chunks.extend(new_chunks);
            if let Some(c) = &chunk {
                chunks.push(c.clone());
            }
        }
        self.open_chunk = chunk;
        if self.next_seq != start_seq {
            self.inner.end_tx.send_replace(self.next_seq);
        }
        for ((_, _, reply), out) in batch.into_iter().zip(outcomes) {
            let _ = reply.send(Ok(out));
        }
    }

    /// Continues at position `seq` (no-op unless it is ahead): starts a
    /// WAL segment whose header says `seq`, hands the previous one to the
    /// sealer (or deletes it when it is empty). Recovery takes the next
    /// position from that header, so the skip is durable once this returns.
    fn skip_to(&mut self, seq: u64) -> Result<(), StoreError> {
        if seq <= self.next_seq {
            return Ok(());
        }
        if let Some(why) = self.inner.poisoned.lock().clone() {
            return Err(StoreError::Poisoned(why));
        }
        let dir = self.inner.config.dir.clone();
        let (path, file) = segment::create_wal(&dir, seq)?;
        let seg = Arc::new(Segment::wal(path, seq, Vec::new())?);
        let old = std::mem::replace(&mut self.seg, seg);
        let had_records = self.open_chunk.is_some();
        self.file = file;
        self.size = segment::WAL_HEADER;
        self.opened_at = Instant::now();
        self.open_chunk = None;
        self.next_seq = seq;
        self.inner.segments.write().push(self.seg.clone());
        let state_snapshot = {
            let mut state = self.inner.state.lock();
            state.next_seq = state.next_seq.max(seq);
            state.to_bytes()
        };
        if had_records {
            let _ = self.seal_tx.send(SealJob {
                seg: old,
                state_snapshot,
                done: None,
            });
        } else {
            self.inner.replace_segment(old.first_seq, None);
            std::fs::remove_file(&old.path).map_err(|source| StoreError::Io {
                what: format!("remove empty WAL {}", old.path.display()),
                source,
            })?;
            segment::sync_dir(&dir)?;
        }
        self.inner.end_tx.send_replace(seq);
        Ok(())
    }

    fn maybe_rotate(&mut self, forced: Option<Vec<oneshot::Sender<()>>>) {
        let has_records = self.open_chunk.is_some();
        let due = self.size >= self.inner.config.segment_max_bytes
            || self.opened_at.elapsed() >= self.inner.config.segment_max_age;
        if !(has_records && (due || forced.is_some())) {
            for done in forced.into_iter().flatten() {
                let _ = done.send(());
            }
            return;
        }
        let dir = self.inner.config.dir.clone();
        let next = match segment::create_wal(&dir, self.next_seq).and_then(|(path, file)| {
            Segment::wal(path, self.next_seq, Vec::new()).map(|s| (Arc::new(s), file))
        }) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("cannot start a new WAL segment (will retry): {e}");
                for done in forced.into_iter().flatten() {
                    let _ = done.send(());
                }
                return;
            }
        };
        let old = std::mem::replace(&mut self.seg, next.0);
        self.file = next.1;
        self.size = segment::WAL_HEADER;
        self.opened_at = Instant::now();
        self.open_chunk = None;
        self.inner.segments.write().push(self.seg.clone());
        let state_snapshot = self.inner.state.lock().to_bytes();
        let mut waiters = forced.unwrap_or_default();
        let done = waiters.pop();
        for w in waiters {
            let _ = w.send(());
        }
        let _ = self.seal_tx.send(SealJob {
            seg: old,
            state_snapshot,
            done,
        });
    }
}

/// Runs the sealer: compresses finished WAL segments into sealed ones.
pub(crate) fn run_sealer(inner: Arc<Inner>, rx: Receiver<SealJob>) {
    for job in rx {
        if let Err(e) = seal(&inner, &job) {
            tracing::error!(
                "sealing {} failed; it stays readable as a WAL segment and sealing is retried at next start: {e}",
                job.seg.path.display()
            );
        }
        if let Some(done) = job.done {
            let _ = done.send(());
        }
    }
}

/// Seals a finished WAL segment: streams it chunk by chunk (one chunk of
/// about 256 KiB in memory, never the whole file), verifies each frame once
/// and copies its bytes unchanged into the sealed blocks, with each
/// record's expiry from the retention policy in the block summaries.
fn seal(inner: &Inner, job: &SealJob) -> Result<(), StoreError> {
    let final_path = inner
        .config
        .dir
        .join(segment::sealed_name(job.seg.first_seq));
    let mut w = segment::SealedWriter::create(
        &final_path,
        inner.config.zstd_level,
        inner.config.block_target_bytes,
    )?;
    if let Err(e) = copy_frames(inner, &job.seg, &mut w) {
        w.abandon();
        return Err(e);
    }
    if w.records() == 0 {
        w.abandon();
        inner.replace_segment(job.seg.first_seq, None);
    } else {
        w.finish(&final_path)?;
        let sealed = Arc::new(Segment::open_sealed(final_path, job.seg.first_seq)?);
        inner.replace_segment(job.seg.first_seq, Some(sealed));
    }
    if !job.state_snapshot.is_empty() {
        crate::write_atomic(
            &inner.config.dir.join(crate::STATE_FILE),
            &job.state_snapshot,
        )?;
    }
    std::fs::remove_file(&job.seg.path).map_err(|source| StoreError::Io {
        what: format!("remove sealed WAL {}", job.seg.path.display()),
        source,
    })?;
    segment::sync_dir(&inner.config.dir)
}

/// Copies every committed frame of the WAL segment `seg` into `w`. Any
/// damaged frame, or a chunk whose frames disagree with its summary (count,
/// positions), fails the seal: the WAL then stays as it is, readable, and
/// recovery at the next start deals with it.
fn copy_frames(
    inner: &Inner,
    seg: &Segment,
    w: &mut segment::SealedWriter,
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    let mut expect: Option<u64> = None;
    for chunk in seg.all_blocks() {
        seg.read_raw(&chunk, &mut buf)?;
        let corrupt = |at: usize, why: &str| {
            StoreError::Corrupt(format!(
                "{} at byte {}: {why}",
                seg.path.display(),
                chunk.offset + at as u64
            ))
        };
        let mut at = 0;
        let mut count = 0u32;
        while at < buf.len() {
            let head = match segment::check_frame(&buf[at..]) {
                segment::FrameCheck::Valid(h) => h,
                segment::FrameCheck::Incomplete => return Err(corrupt(at, "truncated frame")),
                segment::FrameCheck::Corrupt(why) => return Err(corrupt(at, why)),
            };
            let want = expect.unwrap_or(chunk.first_seq);
            if head.seq != want {
                return Err(corrupt(
                    at,
                    &format!("record has position {} where {want} was expected", head.seq),
                ));
            }
            expect = Some(head.seq + 1);
            let expiry =
                inner
                    .policy
                    .expires_at(head.owner, head.collection, &head.instance, head.time);
            w.push_frame(&buf[at..at + head.len], &head, expiry)?;
            at += head.len;
            count += 1;
        }
        if count != chunk.count || (count > 0 && expect != Some(chunk.last_seq + 1)) {
            return Err(corrupt(
                at,
                &format!(
                    "chunk holds {count} records ending before position {}, its summary says {} ending at {}",
                    expect.unwrap_or(0),
                    chunk.count,
                    chunk.last_seq
                ),
            ));
        }
    }
    Ok(())
}

/// Records stored by a group commit.
fn out_records(outcomes: &[AppendOutcome]) -> u64 {
    outcomes.iter().map(|o| o.stored as u64).sum()
}

#[cfg(test)]
mod tests {
    use crate::record::{NewRecord, kind};
    use crate::{Filter, KeepForever, Store, StoreConfig};
    use std::sync::Arc;

    fn rec(i: u64) -> NewRecord {
        NewRecord {
            time: 1_000 + i as i64,
            collection: "tailnode".into(),
            owner: crate::record::Owner::tailnet("T"),
            instance: [(i % 7) as u8; 32],
            identity: Some((1, i)),
            client_time: None,
            kind: kind::LOG,
            body: format!("{{\"n\":{i}}}").into_bytes(),
        }
    }

    fn config(dir: &std::path::Path) -> StoreConfig {
        let mut c = StoreConfig::new(dir);
        c.block_target_bytes = 4096;
        c.chunk_target_bytes = 1024;
        c
    }

    fn files(dir: &std::path::Path, suffix: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    }

    #[tokio::test]
    async fn sealing_streams_every_record_into_the_sealed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
        for i in 0..40 {
            let batch = (i * 50..(i + 1) * 50).map(rec).collect();
            store.append(batch).await.unwrap();
        }
        store.seal_now().await.unwrap();
        assert_eq!(files(dir.path(), ".tsb"), 1);
        assert_eq!(files(dir.path(), ".log"), 1, "only the new active WAL");
        let got = store
            .scan(1, &Filter::default(), usize::MAX, usize::MAX, 0)
            .unwrap()
            .records;
        assert_eq!(got.len(), 2000);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.rec, rec(i as u64));
        }
    }

    #[tokio::test]
    async fn a_damaged_wal_chunk_fails_the_seal_and_keeps_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(config(dir.path()), Arc::new(KeepForever)).unwrap();
        store.append((0..200).map(rec).collect()).await.unwrap();
        let wal = dir.path().join(crate::segment::wal_name(1));
        let mut bytes = std::fs::read(&wal).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&wal, &bytes).unwrap();
        store.seal_now().await.unwrap();
        assert!(wal.exists(), "the damaged WAL must not be deleted");
        assert_eq!(files(dir.path(), ".tsb"), 0);
        assert_eq!(files(dir.path(), ".tmp"), 0);
    }
}
