//! Tally's append-only store: durable, checksummed, compressed, indexed.
//!
//! Records enter through [`Store::append`], which answers only after they are
//! fsynced (group commit: one fsync serves every request waiting). Each record
//! gets an increasing position (`seq`, dense unless [`Store::skip_to`] skipped some). Records live first in a write-ahead-log
//! segment, then in a sealed segment of zstd blocks with a per-block index
//! (time range, collections, instance Bloom filter) so scans skip blocks that
//! cannot match. Consumers read everything after a position with
//! [`Store::scan`], or through the [`Log`] seam that the server's consumers use. Retention deletes expired records
//! by rewriting or deleting sealed segments.

pub mod index;
pub mod log;
pub mod record;
pub mod segment;
pub mod state;
mod writer;

pub use index::{BlockMeta, Filter};
pub use log::{Log, LogFuture, LogStats, Position, ReadLimits, ReadSpec, SharedLog};
pub use record::{NewRecord, Owner, Record, Tenant, kind};
pub use writer::AppendOutcome;

use parking_lot::{Mutex, RwLock};
use segment::Segment;
use state::IngestState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use writer::{SealJob, Writer, WriterMsg};

/// Name of the ingest-state snapshot file in the store directory.
pub const STATE_FILE: &str = "ingest-state.json";

/// Marker file: every record of the store carries its owner.
const OWNERS_MARKER: &str = "owners-v1";

/// What [`Store::rewrite_sealed`] does with one record.
enum Edit {
    Keep,
    Changed,
    Drop,
}

/// What [`Store::rewrite_sealed`] did.
enum Rewrite {
    Unchanged,
    Deleted,
    Rewritten,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What failed, with the path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Data on disk failed verification.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Too many bytes are waiting to be written; retry later.
    #[error("the store is busy: {0}")]
    Overloaded(String),
    /// A write or fsync failed earlier; the store refuses writes until restarted.
    #[error("{0}")]
    Poisoned(String),
    /// The store is shutting down.
    #[error("the store is shutting down")]
    Closed,
    /// A replicated log cannot be reached or did not confirm in time;
    /// nothing is known to be lost, and a retry is safe.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    /// A record is over a replicated log's message limit.
    #[error("{0}")]
    TooLarge(String),
}

/// Decides how long records are kept.
pub trait RetentionPolicy: Send + Sync {
    /// Unix-nanosecond time at which a record of `owner` in `collection`,
    /// written by `instance` at `time`, may be deleted; `None` keeps it.
    fn expires_at(
        &self,
        owner: Tenant<'_>,
        collection: &str,
        instance: &[u8; 32],
        time: i64,
    ) -> Option<i64>;
}

/// A policy that keeps everything (for tests and tools).
pub struct KeepForever;

impl RetentionPolicy for KeepForever {
    fn expires_at(&self, _: Tenant<'_>, _: &str, _: &[u8; 32], _: i64) -> Option<i64> {
        None
    }
}

/// Tuning of the store. Defaults suit a server.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// A WAL segment is sealed once it is this large.
    pub segment_max_bytes: u64,
    /// ...or this old (and not empty).
    pub segment_max_age: Duration,
    /// Target uncompressed size of a sealed block.
    pub block_target_bytes: usize,
    /// Target size of an indexed WAL chunk.
    pub chunk_target_bytes: usize,
    /// zstd level for sealed blocks.
    pub zstd_level: i32,
    /// Most bytes waiting for the writer before appends are refused as overloaded.
    pub max_pending_bytes: usize,
}

impl StoreConfig {
    /// Defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(300),
            block_target_bytes: 1 << 20,
            chunk_target_bytes: 256 << 10,
            zstd_level: 3,
            max_pending_bytes: 64 << 20,
        }
    }
}

/// What recovery found on start.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segment files opened.
    pub segments: usize,
    /// Next position to be assigned.
    pub next_seq: u64,
    /// Damage found and what was cut, one line each.
    pub cuts: Vec<String>,
}

/// Which way a scan reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first (increasing positions), from a position on.
    #[default]
    Oldest,
    /// Newest first (decreasing positions), below a position.
    Newest,
}

/// A batch of records read by a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanBatch {
    /// Matching records, in position order.
    pub records: Vec<Record>,
    /// Where the next scan should start.
    pub next_seq: u64,
    /// True if the scan stopped at a limit before reaching the end.
    pub truncated: bool,
    /// Ranges the scan had to skip because their block could not be read,
    /// each with the reason: the answer is incomplete when this is not empty.
    pub damaged: Vec<DamagedRange>,
}

/// Positions a scan skipped because their block is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// First position of the unreadable block.
    pub first_seq: u64,
    /// Last position of the unreadable block.
    pub last_seq: u64,
    /// Why it could not be read.
    pub reason: String,
}

/// The records of block `b` of `seg`; a block that cannot be read is
/// logged, noted in `damaged` and skipped (`None`): one bad block never
/// fails every reader.
fn read_block_or_note(
    seg: &Segment,
    b: &index::BlockMeta,
    damaged: &mut Vec<DamagedRange>,
) -> Option<Vec<record::Record>> {
    match seg.read_block(b) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(
                "skipping unreadable block (records {}..={}): {e}",
                b.first_seq,
                b.last_seq
            );
            damaged.push(DamagedRange {
                first_seq: b.first_seq,
                last_seq: b.last_seq,
                reason: e.to_string(),
            });
            None
        }
    }
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted whole.
    pub segments_deleted: usize,
    /// Segment files rewritten without their expired records.
    pub segments_rewritten: usize,
    /// Records deleted.
    pub records_deleted: u64,
}

/// Size figures of the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Segment files.
    pub segments: usize,
    /// Bytes of all segment files.
    pub disk_bytes: u64,
    /// Bytes of write-ahead-log files.
    pub wal_bytes: u64,
    /// Bytes of sealed files.
    pub sealed_bytes: u64,
    /// Next position to be assigned.
    pub next_seq: u64,
    /// Records stored since the store was opened.
    pub appended_records: u64,
    /// Group commits (write + fdatasync) since the store was opened.
    pub syncs: u64,
    /// Time spent in them, in microseconds.
    pub sync_micros: u64,
    /// The longest one, in microseconds.
    pub max_sync_micros: u64,
}

/// Counters of the writer's group commits.
#[derive(Default)]
pub(crate) struct SyncStats {
    records: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
    micros: std::sync::atomic::AtomicU64,
    max_micros: std::sync::atomic::AtomicU64,
}

impl SyncStats {
    /// Notes one group commit of `records` that took `took`.
    pub fn note(&self, took: Duration, records: u64) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(us, Ordering::Relaxed);
        self.max_micros.fetch_max(us, Ordering::Relaxed);
    }
}

pub(crate) struct Inner {
    pub config: StoreConfig,
    pub policy: Arc<dyn RetentionPolicy>,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    pub state: Mutex<IngestState>,
    pub end_tx: watch::Sender<u64>,
    pub poisoned: Mutex<Option<String>>,
    pub pending_bytes: AtomicUsize,
    pub sync_stats: SyncStats,
    recheck_all: AtomicBool,
    retention_lock: Mutex<()>,
}

impl Inner {
    /// Replaces (or removes) the segment starting at `first_seq`.
    pub fn replace_segment(&self, first_seq: u64, with: Option<Arc<Segment>>) {
        let mut segs = self.segments.write();
        if let Some(i) = segs.iter().position(|s| s.first_seq == first_seq) {
            match with {
                Some(s) => segs[i] = s,
                None => {
                    segs.remove(i);
                }
            }
        }
    }
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Arc<Inner>,
    tx: Mutex<Option<std::sync::mpsc::SyncSender<WriterMsg>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |source| StoreError::Io { what, source }
    };
    std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    match path.parent() {
        Some(dir) => segment::sync_dir(dir),
        None => Ok(()),
    }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Store {
    /// Opens (or creates) the store, recovering from a crash: a torn or
    /// corrupt WAL tail is cut, a damaged sealed segment is salvaged up to
    /// its first damaged block. The report says what was cut.
    pub fn open(
        config: StoreConfig,
        policy: Arc<dyn RetentionPolicy>,
    ) -> Result<(Arc<Store>, RecoveryReport), StoreError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let mut report = RecoveryReport::default();
        let mut names: Vec<(bool, u64, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Io {
            what: format!("list {}", dir.display()),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            } else if let Some((sealed, n)) = segment::parse_name(&name) {
                names.push((sealed, n, e.path()));
            }
        }
        names.sort_by_key(|(sealed, n, _)| (*n, !*sealed));

        let snapshot = std::fs::read(dir.join(STATE_FILE))
            .ok()
            .and_then(|b| IngestState::from_bytes(&b));
        let have_snapshot = snapshot.is_some();
        let mut state = snapshot.unwrap_or_default();
        let now = now_nanos();
        let mut segments: Vec<Arc<Segment>> = Vec::new();
        let mut wals: Vec<(u64, PathBuf, Vec<BlockMeta>, u64)> = Vec::new();
        let mut next_seq = 1u64;

        for (sealed, first, path) in names {
            if sealed {
                let seg = match Segment::open_sealed(path.clone(), first) {
                    Ok(s) => s,
                    Err(e) => {
                        let (records, why) = segment::salvage_sealed(&path)?;
                        report.cuts.push(format!(
                            "{}: {e}; salvaged {} records ({})",
                            path.display(),
                            records.len(),
                            why.unwrap_or_else(|| "no damaged block found".into())
                        ));
                        let mut w = segment::SealedWriter::create(
                            &path,
                            config.zstd_level,
                            config.block_target_bytes,
                        )?;
                        for r in &records {
                            w.push(
                                r,
                                policy.expires_at(
                                    r.rec.owner.as_ref(),
                                    &r.rec.collection,
                                    &r.rec.instance,
                                    r.rec.time,
                                ),
                            )?;
                        }
                        if records.is_empty() {
                            w.abandon();
                            let _ = std::fs::remove_file(&path);
                            continue;
                        }
                        w.finish(&path)?;
                        Segment::open_sealed(path.clone(), first)?
                    }
                };
                let last = seg.last_seq();
                if !have_snapshot || last >= state.next_seq {
                    let recent = seg
                        .all_blocks()
                        .iter()
                        .any(|b| b.max_time >= now - state::DEDUP_WINDOW_NANOS);
                    if recent {
                        for b in seg.all_blocks() {
                            for r in seg.read_block(&b)? {
                                if r.seq >= state.next_seq || !have_snapshot {
                                    state.apply(r.seq, &r.rec);
                                }
                            }
                        }
                    }
                }
                next_seq = next_seq.max(last + 1);
                segments.push(Arc::new(seg));
            } else {
                if segments
                    .iter()
                    .any(|s| s.first_seq == first && s.is_sealed())
                {
                    // Sealed already but not yet deleted: the sealed copy wins.
                    let covered = segments
                        .iter()
                        .find(|s| s.first_seq == first)
                        .map_or(0, |s| s.last_seq());
                    let scan = segment::scan_wal(&path)?;
                    if scan.records.last().is_none_or(|(_, _, r)| r.seq <= covered) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    segments.retain(|s| s.first_seq != first);
                }
                let scan = segment::scan_wal(&path)?;
                if let Some(why) = &scan.damage {
                    report.cuts.push(format!(
                        "{}: {why}; cut {} bytes, kept {} records",
                        path.display(),
                        scan.file_len - scan.valid_len,
                        scan.records.len()
                    ));
                    let keep = scan.valid_len.max(segment::WAL_HEADER);
                    if scan.valid_len < segment::WAL_HEADER {
                        // Header itself torn: rewrite a clean empty WAL.
                        segment::create_wal(&dir, first)?;
                    } else {
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|source| StoreError::Io {
                                what: format!("open {}", path.display()),
                                source,
                            })?;
                        f.set_len(keep)
                            .and_then(|_| f.sync_all())
                            .map_err(|source| StoreError::Io {
                                what: format!("truncate {}", path.display()),
                                source,
                            })?;
                    }
                }
                for (_, _, r) in &scan.records {
                    if r.seq >= state.next_seq || !have_snapshot {
                        state.apply(r.seq, &r.rec);
                    }
                    next_seq = next_seq.max(r.seq + 1);
                }
                next_seq = next_seq.max(scan.first_seq);
                let chunks = segment::chunks_of(&scan.records, config.chunk_target_bytes);
                let size = scan.valid_len.max(segment::WAL_HEADER);
                wals.push((scan.first_seq, path, chunks, size));
            }
        }
        state.next_seq = state.next_seq.max(next_seq);
        state.prune(now);
        report.next_seq = next_seq;

        // The last WAL (if it continues the sequence) stays active; the others are sealed.
        let mut to_seal = Vec::new();
        let mut active = None;
        let last_wal = wals.len().checked_sub(1);
        for (i, (first, path, chunks, size)) in wals.into_iter().enumerate() {
            let seg = Arc::new(Segment::wal(path.clone(), first, chunks)?);
            let continues = seg.last_seq().max(first.saturating_sub(1)) + 1 == next_seq;
            segments.push(seg.clone());
            if Some(i) == last_wal && continues {
                active = Some((seg, size));
            } else {
                to_seal.push(seg);
            }
        }
        segments.sort_by_key(|s| s.first_seq);
        report.segments = segments.len();

        let (end_tx, _) = watch::channel(next_seq);
        let inner = Arc::new(Inner {
            config: config.clone(),
            policy,
            segments: RwLock::new(segments),
            state: Mutex::new(state),
            end_tx,
            poisoned: Mutex::new(None),
            pending_bytes: AtomicUsize::new(0),
            sync_stats: SyncStats::default(),
            recheck_all: AtomicBool::new(false),
            retention_lock: Mutex::new(()),
        });

        let (seg, file, size) = match active {
            Some((seg, size)) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(|source| StoreError::Io {
                        what: format!("open {} for append", seg.path.display()),
                        source,
                    })?;
                (seg, f, size)
            }
            None => {
                let (path, f) = segment::create_wal(&dir, next_seq)?;
                let seg = Arc::new(Segment::wal(path, next_seq, Vec::new())?);
                inner.segments.write().push(seg.clone());
                (seg, f, segment::WAL_HEADER)
            }
        };
        let open_chunk = match &seg.body {
            segment::Body::Wal { chunks } => chunks.read().last().cloned(),
            segment::Body::Sealed { .. } => None,
        };
        // Everything recovered is durable, so a snapshot covering it is valid now.
        let snapshot = inner.state.lock().to_bytes();
        write_atomic(&dir.join(STATE_FILE), &snapshot)?;
        let (seal_tx, seal_rx) = std::sync::mpsc::channel::<SealJob>();
        for seg in to_seal {
            let _ = seal_tx.send(SealJob {
                seg,
                state_snapshot: Vec::new(),
                done: None,
            });
        }
        let writer = Writer {
            inner: inner.clone(),
            file,
            seg,
            size,
            opened_at: Instant::now(),
            next_seq,
            open_chunk,
            seal_tx,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let sealer_inner = inner.clone();
        let t1 = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Io {
                what: "spawn writer thread".into(),
                source,
            })?;
        let t2 = std::thread::Builder::new()
            .name("store-sealer".into())
            .spawn(move || writer::run_sealer(sealer_inner, seal_rx))
            .map_err(|source| StoreError::Io {
                what: "spawn sealer thread".into(),
                source,
            })?;
        let store = Arc::new(Store {
            inner,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![t1, t2]),
        });
        Ok((store, report))
    }
}

impl Store {
    /// Appends records durably. Returns after they are fsynced. Records whose
    /// identity `(collection, instance, proc_id, proc_seq)` is already stored
    /// are dropped and counted as duplicates.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<AppendOutcome, StoreError> {
        let rx = self.submit(records)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::append`], for threads outside an async runtime.
    pub fn append_blocking(&self, records: Vec<NewRecord>) -> Result<AppendOutcome, StoreError> {
        let rx = self.submit(records)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    fn submit(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, StoreError>>, StoreError> {
        if let Some(why) = self.inner.poisoned.lock().clone() {
            return Err(StoreError::Poisoned(why));
        }
        let bytes: usize = records.iter().map(NewRecord::frame_len).sum();
        let max = self.inner.config.max_pending_bytes;
        let before = self.inner.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before + bytes > max {
            self.inner.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(StoreError::Overloaded(format!(
                "{before} bytes are waiting for the disk (limit {max})"
            )));
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.lock().clone();
        let sent = match tx {
            Some(tx) => tx
                .try_send(WriterMsg::Append {
                    records,
                    bytes,
                    reply,
                })
                .map_err(|e| match e {
                    std::sync::mpsc::TrySendError::Full(_) => {
                        StoreError::Overloaded("too many requests are waiting for the disk".into())
                    }
                    std::sync::mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
                }),
            None => Err(StoreError::Closed),
        };
        if let Err(e) = sent {
            self.inner.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(e);
        }
        Ok(rx)
    }

    /// Makes the store continue at position `seq` when it is ahead of
    /// [`Store::end_seq`]: positions before it that were never assigned stay
    /// unused for ever (scans, cursors and recovery pass over them). For a
    /// consumer that published positions the store lost in a recovery cut:
    /// a position must never name two different records. Durable when it
    /// returns; appends submitted after the call get positions `>= seq`.
    pub async fn skip_to(&self, seq: u64) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let tx = self.tx.lock().clone().ok_or(StoreError::Closed)?;
        tx.send(WriterMsg::SkipTo(seq, done))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Position that the next stored record will get: every record before it is durable.
    pub fn end_seq(&self) -> u64 {
        *self.inner.end_tx.borrow()
    }

    /// A receiver that changes whenever records become durable (value: [`Store::end_seq`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.end_tx.subscribe()
    }

    /// Receivers of [`Store::subscribe`] alive now. [`Log::wait_for`] holds
    /// one only while it waits for new records, so this shows readers waiting.
    pub fn subscribers(&self) -> usize {
        self.inner.end_tx.receiver_count()
    }

    /// Bytes stored in the last 12 hours for `(collection, instance)`.
    pub fn recent_bytes(&self, collection: &str, instance: &[u8; 32], now: i64) -> u64 {
        self.inner
            .state
            .lock()
            .recent_bytes(collection, instance, now)
    }

    /// Body bytes stored for an owner (a tailnet ID, `""` for unclaimed
    /// records) in the last 12 hours.
    pub fn recent_owner_bytes(&self, owner: &str, now: i64) -> u64 {
        self.inner.state.lock().recent_owner_bytes(owner, now)
    }

    /// Reads up to `max_records` (and about `max_bytes` of bodies) matching
    /// records at positions `>= from_seq`, skipping blocks the filter
    /// excludes and records expired at `now`.
    pub fn scan(
        &self,
        from_seq: u64,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
    ) -> Result<ScanBatch, StoreError> {
        self.scan_forward(from_seq, filter, max_records, max_bytes, now, &|_| true)
    }

    /// [`Store::scan`] in either [`Order`], keeping only the records that
    /// also satisfy `keep` (a text search, say); the limits count kept
    /// records. [`Order::Newest`] reads positions `< from` (`0`: from the
    /// end) newest first, and `next_seq` of its answer is where the next
    /// read continues (positions below it).
    #[allow(clippy::too_many_arguments)]
    pub fn scan_where(
        &self,
        from: u64,
        order: Order,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        match order {
            Order::Oldest => self.scan_forward(from, filter, max_records, max_bytes, now, keep),
            Order::Newest => self.scan_backward(from, filter, max_records, max_bytes, now, keep),
        }
    }

    /// Whether a record is expired at `now` under the retention policy.
    fn expired(&self, r: &Record, now: i64) -> bool {
        self.inner
            .policy
            .expires_at(
                r.rec.owner.as_ref(),
                &r.rec.collection,
                &r.rec.instance,
                r.rec.time,
            )
            .is_some_and(|t| t <= now)
    }

    /// The newest-first scan of [`Store::scan_where`].
    fn scan_backward(
        &self,
        before: u64,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        let end = self.end_seq();
        let before = if before == 0 { end } else { before.min(end) };
        let segments: Vec<Arc<Segment>> = self.inner.segments.read().clone();
        let mut out = ScanBatch {
            records: Vec::new(),
            next_seq: before,
            truncated: false,
            damaged: Vec::new(),
        };
        let mut bytes = 0usize;
        for seg in segments.iter().rev() {
            for b in seg.all_blocks().iter().rev() {
                if b.first_seq >= out.next_seq {
                    continue;
                }
                if !filter.may_match(b) {
                    out.next_seq = out.next_seq.min(b.first_seq);
                    continue;
                }
                let Some(records) = read_block_or_note(seg, b, &mut out.damaged) else {
                    out.next_seq = out.next_seq.min(b.first_seq);
                    continue;
                };
                for r in records.into_iter().rev() {
                    if r.seq >= out.next_seq {
                        continue;
                    }
                    if out.records.len() >= max_records || bytes >= max_bytes {
                        out.truncated = true;
                        return Ok(out);
                    }
                    out.next_seq = r.seq;
                    if filter.matches(&r.rec) && !self.expired(&r, now) && keep(&r) {
                        bytes += r.rec.body.len();
                        out.records.push(r);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The oldest-first scan of [`Store::scan_where`].
    fn scan_forward(
        &self,
        from_seq: u64,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        let end = self.end_seq();
        let segments: Vec<Arc<Segment>> = self.inner.segments.read().clone();
        let mut out = ScanBatch {
            records: Vec::new(),
            next_seq: from_seq.max(1),
            truncated: false,
            damaged: Vec::new(),
        };
        let mut bytes = 0usize;
        for seg in segments {
            for b in seg.blocks_from(out.next_seq) {
                if b.first_seq >= end {
                    break;
                }
                if !filter.may_match(&b) {
                    out.next_seq = out.next_seq.max(b.last_seq + 1);
                    continue;
                }
                let Some(records) = read_block_or_note(&seg, &b, &mut out.damaged) else {
                    out.next_seq = out.next_seq.max(b.last_seq + 1);
                    continue;
                };
                for r in records {
                    if r.seq < out.next_seq || r.seq >= end {
                        continue;
                    }
                    if out.records.len() >= max_records || bytes >= max_bytes {
                        out.truncated = true;
                        return Ok(out);
                    }
                    out.next_seq = r.seq + 1;
                    if filter.matches(&r.rec) && !self.expired(&r, now) && keep(&r) {
                        bytes += r.rec.body.len();
                        out.records.push(r);
                    }
                }
            }
        }
        out.next_seq = out.next_seq.max(end);
        Ok(out)
    }

    /// Starts a new WAL segment and waits until the previous one is sealed
    /// (for tests and tools; the writer does this by itself by size and age).
    pub async fn seal_now(&self) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let tx = self.tx.lock().clone().ok_or(StoreError::Closed)?;
        tx.send(WriterMsg::Rotate(done))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Makes the next retention pass re-examine every segment (after a
    /// retention setting was shortened or a collection deleted).
    pub fn recheck_retention(&self) {
        self.inner.recheck_all.store(true, Ordering::Relaxed);
    }

    /// Deletes records expired at `now`: sealed segments with nothing left
    /// are deleted, others are rewritten without their expired records.
    pub fn enforce_retention(&self, now: i64) -> Result<RetentionReport, StoreError> {
        let _guard = self.inner.retention_lock.lock();
        let all = self.inner.recheck_all.swap(false, Ordering::Relaxed);
        let mut report = RetentionReport::default();
        let segments: Vec<Arc<Segment>> = self.inner.segments.read().clone();
        for seg in segments.into_iter().filter(|s| s.is_sealed()) {
            let due = all
                || seg
                    .all_blocks()
                    .iter()
                    .any(|b| b.earliest_expiry.is_some_and(|t| t <= now));
            if !due {
                continue;
            }
            let mut dropped = 0u64;
            let outcome = self.rewrite_sealed(&seg, |_, exp| {
                if exp.is_some_and(|t| t <= now) {
                    dropped += 1;
                    Edit::Drop
                } else {
                    Edit::Keep
                }
            })?;
            report.records_deleted += dropped;
            match outcome {
                Rewrite::Unchanged => {}
                Rewrite::Deleted => report.segments_deleted += 1,
                Rewrite::Rewritten => report.segments_rewritten += 1,
            }
        }
        self.inner.state.lock().prune(now);
        Ok(report)
    }

    /// Gives every legacy record (stored by a version that did not record
    /// owners) the owner `resolve` names, rewriting the sealed segments that
    /// hold them; the write-ahead log is sealed first so that every record
    /// is in a sealed segment. Runs once per store (a marker file records
    /// that it is done); returns the number of records given an owner.
    pub async fn claim_legacy(
        self: &Arc<Self>,
        resolve: impl Fn(&NewRecord) -> Owner + Send + 'static,
    ) -> Result<u64, StoreError> {
        let marker = self.inner.config.dir.join(OWNERS_MARKER);
        if marker.exists() {
            return Ok(0);
        }
        let legacy_wal = self
            .inner
            .segments
            .read()
            .iter()
            .any(|s| !s.is_sealed() && s.all_blocks().iter().any(|b| b.tailnets.is_none()));
        if legacy_wal {
            self.seal_now().await?;
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = store.inner.retention_lock.lock();
            let mut claimed = 0u64;
            let mut complete = true;
            let segments: Vec<Arc<Segment>> = store.inner.segments.read().clone();
            for seg in segments {
                let legacy = seg.all_blocks().iter().any(|b| b.tailnets.is_none());
                if !legacy {
                    continue;
                }
                if !seg.is_sealed() {
                    // A WAL that could not be sealed (damaged): its legacy
                    // records stay unowned, shown to nobody, until the next
                    // start tries again.
                    complete = false;
                    continue;
                }
                store.rewrite_sealed(&seg, |r, _| {
                    if r.rec.owner != Owner::Legacy {
                        return Edit::Keep;
                    }
                    r.rec.owner = resolve(&r.rec);
                    claimed += 1;
                    Edit::Changed
                })?;
            }
            if complete {
                write_atomic(&marker, b"every record carries its owner\n")?;
            }
            Ok(claimed)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Rewrites the sealed segment `seg` through `edit`, which gets each
    /// record with its expiry and keeps it, changes it in place or drops
    /// it. The segment is replaced atomically, or deleted if nothing is
    /// left; left as it is if nothing changed.
    fn rewrite_sealed(
        &self,
        seg: &Segment,
        mut edit: impl FnMut(&mut Record, Option<i64>) -> Edit,
    ) -> Result<Rewrite, StoreError> {
        let mut w = segment::SealedWriter::create(
            &seg.path,
            self.inner.config.zstd_level,
            self.inner.config.block_target_bytes,
        )?;
        let mut changed = false;
        for b in &seg.all_blocks() {
            for mut r in seg.read_block(b)? {
                let exp = self.expiry(&r.rec);
                match edit(&mut r, exp) {
                    Edit::Keep => w.push(&r, exp)?,
                    Edit::Changed => {
                        changed = true;
                        w.push(&r, self.expiry(&r.rec))?;
                    }
                    Edit::Drop => changed = true,
                }
            }
        }
        if !changed {
            w.abandon();
            return Ok(Rewrite::Unchanged);
        }
        if w.records() == 0 {
            w.abandon();
            self.inner.replace_segment(seg.first_seq, None);
            std::fs::remove_file(&seg.path).map_err(|source| StoreError::Io {
                what: format!("delete expired segment {}", seg.path.display()),
                source,
            })?;
            segment::sync_dir(&self.inner.config.dir)?;
            return Ok(Rewrite::Deleted);
        }
        w.finish(&seg.path)?;
        let fresh = Arc::new(Segment::open_sealed(seg.path.clone(), seg.first_seq)?);
        self.inner.replace_segment(seg.first_seq, Some(fresh));
        Ok(Rewrite::Rewritten)
    }

    fn expiry(&self, r: &NewRecord) -> Option<i64> {
        self.inner
            .policy
            .expires_at(r.owner.as_ref(), &r.collection, &r.instance, r.time)
    }

    /// Sizes of the store.
    pub fn stats(&self) -> StoreStats {
        let segs = self.inner.segments.read().clone();
        let (mut wal_bytes, mut sealed_bytes) = (0, 0);
        for s in &segs {
            let len = std::fs::metadata(&s.path).map_or(0, |m| m.len());
            if s.is_sealed() {
                sealed_bytes += len;
            } else {
                wal_bytes += len;
            }
        }
        let sync = &self.inner.sync_stats;
        StoreStats {
            segments: segs.len(),
            disk_bytes: wal_bytes + sealed_bytes,
            wal_bytes,
            sealed_bytes,
            next_seq: self.end_seq(),
            appended_records: sync.records.load(Ordering::Relaxed),
            syncs: sync.syncs.load(Ordering::Relaxed),
            sync_micros: sync.micros.load(Ordering::Relaxed),
            max_sync_micros: sync.max_micros.load(Ordering::Relaxed),
        }
    }

    /// Whether appends are accepted: `Err(why)` once a write failed (the
    /// store is poisoned until a restart) or after [`Store::close`].
    pub fn check(&self) -> Result<(), String> {
        if let Some(why) = self.inner.poisoned.lock().clone() {
            return Err(why);
        }
        if self.tx.lock().is_none() {
            return Err("the store is closed".into());
        }
        Ok(())
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Stops the writer and sealer threads after the requests already queued.
    pub fn close(&self) {
        self.tx.lock().take();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}
