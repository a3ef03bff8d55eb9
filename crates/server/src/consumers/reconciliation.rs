//! Reconciliation's consumer: feeds every flow record, with the verdict of
//! the batch it came in, into the reconciler ([`crate::consumers::reconcile`]), tells
//! it what the control database knows about nodes, and appends its
//! findings to the log's `findings` collection.
//!
//! - Clock: while behind (a replay after a restart), the receive time of
//!   the last record read, so that no window is judged before its records
//!   are read; once caught up, now.
//! - Commit: the reconciler's snapshot, the position and the number of
//!   findings written, every 15 s (a 10,000-node snapshot is ~50 MB). A
//!   replay from an older save derives the same findings with the same
//!   ordinals (`proc_seq`), which the log's dedup drops: exactly once.
//! - Policy `skip`: a flow record it cannot read is recorded and then
//!   judged as what it is, a node's halves that are missing (its peers'
//!   halves raise findings). Agents write this input; halting on it would
//!   let one record blind reconciliation for every tailnet.

use crate::consumers::reconcile::{
    FINDINGS_COLLECTION, FindingLog, RECONCILER_INSTANCE, ReconcileService, refresh_nodes, take_in,
};
use crate::control::ControlDb;
use crate::control::catalog::Catalog;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled};
use tally_reconcile::Finding;
use tally_store::{NewRecord, Position, ReadLimits, ReadSpec, ScanBatch, SharedLog, kind};

/// Name of the reconciliation consumer.
pub const NAME: &str = "reconciliation";

/// How often the reconciler's state is saved.
const SAVE_EVERY: Duration = Duration::from_secs(15);
/// How often node facts are read and windows judged while idle.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// The reconciliation consumer.
pub struct Reconciliation {
    svc: Arc<ReconcileService>,
    log: SharedLog,
    catalog: Arc<Catalog>,
    control: ControlDb,
    position: Position,
    /// Findings written so far (the next one's ordinal is this plus one).
    written: u64,
    /// The last batch left records waiting: judge by the records' clock.
    behind: bool,
    finding_log: FindingLog,
    /// Whether the state was saved since start (the first commit saves at
    /// once: the settings it runs with are on disk for a replay).
    saved_once: bool,
}

impl Reconciliation {
    /// Resumes `svc` at `position` with `written` findings written.
    pub fn new(
        svc: Arc<ReconcileService>,
        log: SharedLog,
        catalog: Arc<Catalog>,
        control: ControlDb,
        (position, written): (Position, u64),
    ) -> Self {
        Self {
            svc,
            log,
            catalog,
            control,
            position,
            written,
            behind: true,
            finding_log: FindingLog::default(),
            saved_once: false,
        }
    }

    /// Judges the windows that `clock` closes and appends their findings.
    async fn judge(&mut self, clock: i64) -> Result<(), ConsumerError> {
        let svc = self.svc.clone();
        let findings = tokio::task::spawn_blocking(move || svc.inner.lock().advance(clock))
            .await
            .map_err(|e| ConsumerError::new(format!("the reconciler panicked: {e}")))?;
        if !findings.is_empty() {
            self.write(&findings).await?;
        }
        if let Some(line) = self.finding_log.flush(std::time::Instant::now()) {
            tracing::warn!("{line}");
        }
        Ok(())
    }

    async fn write(&mut self, findings: &[Finding]) -> Result<(), ConsumerError> {
        let now = tally_proto::timefmt::now_nanos();
        let mut records = Vec::with_capacity(findings.len());
        for (k, f) in findings.iter().enumerate() {
            records.push(NewRecord {
                time: now,
                collection: FINDINGS_COLLECTION.to_owned(),
                // A finding belongs to the tailnet whose nodes it is about.
                owner: tally_store::Owner::tailnet(f.tailnet.clone()),
                instance: RECONCILER_INSTANCE,
                identity: Some((1, self.written + 1 + k as u64)),
                client_time: None,
                kind: kind::LOG,
                body: serde_json::to_vec(f)
                    .map_err(|e| ConsumerError::new(format!("encoding a finding: {e}")))?,
            });
        }
        // A failed write goes back to the saved state: the records read
        // since give the same findings with the same ordinals again (the
        // log drops those that were written), so none is lost.
        if let Err(e) = self.log.append(records).await {
            let svc = self.svc.clone();
            let reloaded = tokio::task::spawn_blocking(move || svc.reload())
                .await
                .map_err(|p| {
                    ConsumerError::new(format!("reloading the reconciler panicked: {p}"))
                })?;
            return match reloaded {
                Ok((position, written)) => {
                    self.position = position;
                    self.written = written;
                    self.behind = true;
                    Err(ConsumerError::new(format!(
                        "writing findings: {e}; going back to the saved state at position {position}"
                    )))
                }
                Err(r) => Err(ConsumerError::new(format!(
                    "writing findings: {e}; and the saved state cannot be read: {r:#}"
                ))),
            };
        }
        self.written += findings.len() as u64;
        if let Some(line) = self.finding_log.note(
            std::time::Instant::now(),
            findings.iter().map(|f| f.class.name()),
        ) {
            tracing::warn!("{line}");
        }
        Ok(())
    }
}

impl Consumer for Reconciliation {
    fn name(&self) -> &str {
        NAME
    }

    fn reads(&self) -> ReadSpec {
        crate::consumers::reconcile::input()
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }

    fn read_limits(&self) -> ReadLimits {
        crate::consumers::reconcile::READ_LIMITS
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        let (svc, catalog, pos) = (self.svc.clone(), self.catalog.clone(), self.position);
        let read = batch.clone();
        let taken = tokio::task::spawn_blocking(move || {
            take_in(&catalog, &read, pos, |_, upload| {
                upload.feed(&mut svc.inner.lock());
            })
        })
        .await
        .map_err(|e| ConsumerError::new(format!("the reconciler panicked: {e}")))?;
        self.position = taken.pos;
        self.behind = batch.truncated;
        let clock = if self.behind {
            taken.last_time.unwrap_or(i64::MIN)
        } else {
            tally_proto::timefmt::now_nanos()
        };
        self.judge(clock).await?;
        Ok(Handled {
            through: taken.pos,
            rejected: taken.rejected,
        })
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let (svc, pos, written) = (self.svc.clone(), self.position, self.written);
        tokio::task::spawn_blocking(move || svc.save(pos, written))
            .await
            .map_err(|e| ConsumerError::new(format!("saving the reconciler state panicked: {e}")))?
            .map_err(|e| ConsumerError::new(format!("saving the reconciler state: {e:#}")))?;
        self.saved_once = true;
        Ok(())
    }

    fn commit_every(&self) -> Duration {
        if self.saved_once {
            SAVE_EVERY
        } else {
            Duration::ZERO
        }
    }

    /// Reads node facts and, once caught up, judges the windows now closes.
    async fn tick(&mut self) -> Result<(), ConsumerError> {
        let started = Instant::now();
        refresh_nodes(&self.control, &self.svc).await;
        if !self.behind {
            self.judge(tally_proto::timefmt::now_nanos()).await?;
        }
        tracing::trace!(took = ?started.elapsed(), "reconciliation tick");
        Ok(())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(TICK_EVERY)
    }
}
