//! The log seam: the shared, ordered, durable log that ingest appends to
//! and every consumer reads. The server and its consumers use only
//! [`Log`]; [`Store`] (embedded, files on this machine) implements it, and a
//! replicated log (NATS JetStream) can implement it the same way:
//!
//! - a [`Position`] is an opaque, increasing value that the log assigns; it
//!   is not dense (deleted, expired or skipped positions leave gaps), so
//!   readers compare positions and never count on `p + 1` existing (a
//!   JetStream stream sequence has the same properties);
//! - [`Log::append`] returns a future that resolves once the records are
//!   durable (fsynced here, acknowledged by the replica quorum there);
//! - [`Log::scan`] may block (disk or network): call it from a blocking
//!   thread; [`Log::wait_for`] is the async wait for more.

use crate::{
    AppendOutcome, Filter, NewRecord, Order, Record, RetentionReport, ScanBatch, Store, StoreError,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A position in the log (see the module documentation).
pub type Position = u64;

/// A boxed future of the log.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// How much one read returns at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most records.
    pub records: usize,
    /// About the most body bytes (the record that crosses it is the last).
    pub bytes: usize,
}

impl ReadSpec {
    /// Reads `limits` of matching records at positions `>= from`.
    pub fn read(
        &self,
        log: &dyn Log,
        from: Position,
        limits: ReadLimits,
    ) -> Result<ScanBatch, StoreError> {
        let now = if self.include_expired {
            i64::MIN
        } else {
            crate::now_nanos()
        };
        log.scan(from, &self.filter, limits.records, limits.bytes, now)
    }
}

/// Which records a consumer reads.
#[derive(Debug, Clone, Default)]
pub struct ReadSpec {
    /// Collections, kinds, instances, owners, times.
    pub filter: Filter,
    /// Also records already expired by retention but not yet deleted (a
    /// consumer that must see every record, e.g. the transparency log).
    pub include_expired: bool,
}

/// The shared, ordered, durable log.
pub trait Log: Send + Sync + 'static {
    /// Appends records; the future resolves once they are durable, with
    /// the positions they got. Records whose identity was already stored
    /// are dropped and counted as duplicates.
    fn append(&self, records: Vec<NewRecord>) -> LogFuture<'_, AppendOutcome>;

    /// Reads up to `max_records` (and about `max_bytes` of bodies)
    /// records matching `filter` at positions `>= from`, in order, leaving
    /// out records expired at `now` (`i64::MIN`: none); `next_seq` of the
    /// answer is where the next read starts and `truncated` says whether
    /// a limit cut it. May block.
    fn scan(
        &self,
        from: Position,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
    ) -> Result<ScanBatch, StoreError>;

    /// [`Log::scan`] in either [`Order`], keeping only the records that
    /// also satisfy `keep`; the limits count kept records. Newest first
    /// reads positions `< from` (`0`: from the end) and its `next_seq` is
    /// where the next read continues, downwards. May block.
    #[allow(clippy::too_many_arguments)]
    fn scan_where(
        &self,
        from: Position,
        order: Order,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError>;

    /// The position the next appended record will get: every record
    /// before it is durable.
    fn end_seq(&self) -> Position;

    /// The end as the log's authority knows it now: for a log shared by
    /// several processes, a round trip that also moves [`Log::end_seq`]
    /// past what others appended; the embedded store's end otherwise.
    fn sync_end(&self) -> LogFuture<'_, Position> {
        let end = self.end_seq();
        Box::pin(async move { Ok(end) })
    }

    /// Resolves once position `pos` is assigned and durable, i.e. once
    /// [`Log::end_seq`] is past it (at once when it is), or with
    /// [`StoreError::Closed`] when the log closes. A reader that has read
    /// everything before `next` waits with `wait_for(next)`.
    fn wait_for(&self, pos: Position) -> LogFuture<'_, ()>;

    /// Retention: deletes records expired at `now` (Unix ns).
    fn enforce_retention(&self, now: i64) -> Result<RetentionReport, StoreError>;

    /// Retention: the next pass re-examines every record (a retention
    /// setting was shortened or a collection deleted).
    fn recheck_retention(&self);

    /// Body bytes stored for an owner (tailnet ID, `""` for unclaimed) in
    /// the last 12 hours (ingest budgets).
    fn recent_owner_bytes(&self, owner: &str, now: i64) -> u64;

    /// Body bytes stored for `(collection, instance)` in the last 12 hours
    /// (ingest budgets).
    fn recent_bytes(&self, collection: &str, instance: &[u8; 32], now: i64) -> u64;

    /// Whether the log accepts appends: `Err(why)` after a failed write
    /// (the embedded store stops acknowledging until a restart) or a close.
    fn check(&self) -> Result<(), String>;

    /// Stops accepting appends and waits for the ones in flight.
    fn close(&self);

    /// Counters for metrics.
    fn stats(&self) -> LogStats;
}

/// What a log reports about itself (metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes in write-ahead-log files.
    pub wal_bytes: u64,
    /// Bytes in sealed files.
    pub sealed_bytes: u64,
    /// Records stored since the log was opened.
    pub appended_records: u64,
    /// Durable writes (fsyncs) since the log was opened.
    pub syncs: u64,
    /// Total time spent in those fsyncs, in microseconds.
    pub sync_micros: u64,
    /// The longest fsync since the log was opened, in microseconds.
    pub max_sync_micros: u64,
}

impl Log for Store {
    fn append(&self, records: Vec<NewRecord>) -> LogFuture<'_, AppendOutcome> {
        Box::pin(Store::append(self, records))
    }

    fn scan(
        &self,
        from: Position,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
    ) -> Result<ScanBatch, StoreError> {
        Store::scan(self, from, filter, max_records, max_bytes, now)
    }

    fn scan_where(
        &self,
        from: Position,
        order: Order,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        Store::scan_where(self, from, order, filter, max_records, max_bytes, now, keep)
    }

    fn end_seq(&self) -> Position {
        Store::end_seq(self)
    }

    fn wait_for(&self, pos: Position) -> LogFuture<'_, ()> {
        let mut rx = self.subscribe();
        Box::pin(async move {
            rx.wait_for(|end| *end > pos)
                .await
                .map(|_| ())
                .map_err(|_| StoreError::Closed)
        })
    }

    fn enforce_retention(&self, now: i64) -> Result<RetentionReport, StoreError> {
        Store::enforce_retention(self, now)
    }

    fn recheck_retention(&self) {
        Store::recheck_retention(self);
    }

    fn recent_owner_bytes(&self, owner: &str, now: i64) -> u64 {
        Store::recent_owner_bytes(self, owner, now)
    }

    fn recent_bytes(&self, collection: &str, instance: &[u8; 32], now: i64) -> u64 {
        Store::recent_bytes(self, collection, instance, now)
    }

    fn check(&self) -> Result<(), String> {
        Store::check(self)
    }

    fn close(&self) {
        Store::close(self);
    }

    fn stats(&self) -> LogStats {
        let s = Store::stats(self);
        LogStats {
            wal_bytes: s.wal_bytes,
            sealed_bytes: s.sealed_bytes,
            appended_records: s.appended_records,
            syncs: s.syncs,
            sync_micros: s.sync_micros,
            max_sync_micros: s.max_sync_micros,
        }
    }
}

/// A shared handle to a log.
pub type SharedLog = Arc<dyn Log>;
