//! The archive consumer (a worker's, with `--archive s3://...`): writes
//! the log into sealed segments in the bucket, then lets the stream keep
//! only its hot window (see `tally_jetstream::archive`).
//!
//! - A segment is uploaded when it reaches 64 MiB of records or has been
//!   open for `--archive-every` (default 5 minutes); the manifest then
//!   covers it, and only then is the stream purged, below the last
//!   segment whose newest record is older than `--log-hot`.
//! - Its position is the manifest's `through`: after a crash the records
//!   of the segment being written are read again and written again.
//! - Retention deletes a segment's object once all its records expired.
//! - Policy `halt`: a record that cannot be archived must not be purged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_jetstream::JetStreamLog;
use tally_jetstream::archive::{Archive, SegmentSummary};
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled};
use tally_store::segment::SealedWriter;
use tally_store::{Filter, Position, ReadLimits, ReadSpec, ScanBatch};

/// Name of the consumer.
pub const NAME: &str = "archive";

/// A segment is uploaded at this many bytes of records.
const TARGET_BYTES: u64 = 64 << 20;

/// The segment being written.
struct Open {
    writer: SealedWriter,
    path: PathBuf,
    summary: SegmentSummary,
    bytes: u64,
    started: Instant,
}

/// The consumer (see the module documentation).
pub struct ArchiveConsumer {
    log: Arc<JetStreamLog>,
    archive: Arc<Archive>,
    open: Option<Open>,
    position: Position,
    hot: Duration,
    every: Duration,
}

impl ArchiveConsumer {
    /// Archives after what the manifest covers.
    pub fn new(
        log: Arc<JetStreamLog>,
        archive: Arc<Archive>,
        hot: Duration,
        every: Duration,
    ) -> Self {
        let position = archive.manifest().through;
        Self {
            log,
            archive,
            open: None,
            position,
            hot,
            every,
        }
    }

    /// Moves this consumer out (for work on a blocking thread), leaving
    /// one without its open segment in its place.
    fn detach(&mut self) -> Self {
        let stand_in = Self {
            log: self.log.clone(),
            archive: self.archive.clone(),
            open: None,
            position: self.position,
            hot: self.hot,
            every: self.every,
        };
        std::mem::replace(self, stand_in)
    }

    /// Uploads the open segment and records it in the manifest. Blocks.
    fn seal(&mut self) -> Result<(), ConsumerError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let entry = self
            .archive
            .upload(open.writer, &open.path, open.summary)
            .map_err(|e| ConsumerError::new(format!("archiving a segment: {e}")))?;
        let mut m = self.archive.manifest();
        m.through = m.through.max(entry.last);
        tracing::info!(
            key = %entry.key, records = entry.records, bytes = entry.bytes,
            "sealed a segment into {}", self.archive.label()
        );
        m.segments.push(entry);
        self.archive
            .save(&m)
            .map_err(|e| ConsumerError::new(format!("saving the archive's manifest: {e}")))?;
        self.position = m.through;
        Ok(())
    }

    /// Purges the stream below what is archived and older than the hot
    /// window; deletes expired segments. Blocks.
    fn upkeep(&mut self) -> Result<(), ConsumerError> {
        let now = tally_proto::timefmt::now_nanos();
        let cutoff = now.saturating_sub(i64::try_from(self.hot.as_nanos()).unwrap_or(i64::MAX));
        let mut m = self.archive.manifest();
        if let Some(seg) = m.segments.iter().rev().find(|s| s.max_time < cutoff) {
            // The message holding the segment's last record may hold later
            // ones too: it stays.
            let (below, _) = tally_jetstream::codec::split(seg.last);
            if below > 1 {
                let purged = self
                    .log
                    .purge_below(below)
                    .map_err(|e| ConsumerError::new(format!("purging archived messages: {e}")))?;
                if purged > 0 {
                    tracing::info!(messages = purged, "archived messages left the stream");
                }
            }
        }
        let expired: Vec<String> = m
            .segments
            .iter()
            .filter(|s| s.last_expiry.is_some_and(|t| t <= now))
            .map(|s| s.key.clone())
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        // Out of the manifest first: a reader never looks for a deleted object.
        m.segments.retain(|s| !expired.contains(&s.key));
        self.archive
            .save(&m)
            .map_err(|e| ConsumerError::new(format!("saving the archive's manifest: {e}")))?;
        for key in expired {
            self.archive
                .delete(&key)
                .map_err(|e| ConsumerError::new(format!("deleting an expired segment: {e}")))?;
        }
        Ok(())
    }
}

impl Consumer for ArchiveConsumer {
    fn name(&self) -> &str {
        NAME
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter::default(),
            include_expired: false,
        }
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy::Halt
    }

    fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            records: 10_000,
            bytes: 32 << 20,
        }
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        let mut me = self.detach();
        let (me, result) = tokio::task::spawn_blocking(move || {
            let result = (|| {
                for r in &batch.records {
                    // Read again after an error: already in the segment.
                    if me.open.as_ref().is_some_and(|o| r.seq <= o.summary.last)
                        || r.seq <= me.position
                    {
                        continue;
                    }
                    if me.open.is_none() {
                        let (writer, path) = me
                            .archive
                            .writer()
                            .map_err(|e| ConsumerError::new(format!("starting a segment: {e}")))?;
                        me.open = Some(Open {
                            writer,
                            path,
                            summary: SegmentSummary::default(),
                            bytes: 0,
                            started: Instant::now(),
                        });
                    }
                    let expiry = me.log.expiry(r);
                    if let Some(o) = me.open.as_mut() {
                        o.writer
                            .push(r, expiry)
                            .map_err(|e| ConsumerError::new(format!("writing a segment: {e}")))?;
                        o.summary.add(r, expiry);
                        o.bytes += r.rec.body.len() as u64;
                    }
                    if me.open.as_ref().is_some_and(|o| o.bytes >= TARGET_BYTES) {
                        me.seal()?;
                    }
                }
                Ok(batch.next_seq.saturating_sub(1))
            })();
            (me, result)
        })
        .await
        .map_err(|e| ConsumerError::new(format!("the archive panicked: {e}")))?;
        *self = me;
        Ok(Handled {
            through: result?,
            rejected: Vec::new(),
        })
    }

    /// The manifest is the durable state; it moves as segments are sealed.
    async fn commit(&mut self) -> Result<(), ConsumerError> {
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), ConsumerError> {
        let due = self
            .open
            .as_ref()
            .is_some_and(|o| o.started.elapsed() >= self.every);
        let mut me = self.detach();
        let (me, result) = tokio::task::spawn_blocking(move || {
            let r = if due { me.seal() } else { Ok(()) }.and_then(|()| me.upkeep());
            (me, r)
        })
        .await
        .map_err(|e| ConsumerError::new(format!("the archive panicked: {e}")))?;
        *self = me;
        result
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.every.min(Duration::from_secs(5)))
    }
}
