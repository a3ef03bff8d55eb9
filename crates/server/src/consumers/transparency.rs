//! The transparency log's consumer: every record of the log becomes a leaf
//! of the Merkle tree, in log order, expired or not (see
//! [`crate::consumers::merkle_log`]). Policy `halt`: a record it cannot take (a block
//! of the log that cannot be read) would leave a hole in a published
//! history, so it stops there until an operator resumes it.

use crate::consumers::merkle_log::MerkleLog;
use std::sync::Arc;
use std::time::Duration;
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled};
use tally_store::{Filter, Position, ReadLimits, ReadSpec, ScanBatch};

/// Name of the transparency log consumer.
pub const NAME: &str = "transparency-log";

/// How often the consumer looks for epochs to thin or drop.
const MAINTAIN_EVERY: Duration = Duration::from_secs(2);

/// The transparency log consumer.
pub struct TransparencyLog {
    log: Arc<MerkleLog>,
    /// Positions looked at (past the last leaf when the last positions were
    /// skipped ones).
    position: Position,
}

impl TransparencyLog {
    /// Appends to `log` from its last leaf on.
    pub fn new(log: Arc<MerkleLog>) -> Self {
        let position = log.last_seq();
        Self { log, position }
    }
}

impl Consumer for TransparencyLog {
    fn name(&self) -> &str {
        NAME
    }

    /// Every record, expired or not: records deleted before the consumer
    /// saw them are not covered.
    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter::default(),
            include_expired: true,
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
        self.position.max(self.log.last_seq())
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        let log = self.log.clone();
        let through = tokio::task::spawn_blocking(move || {
            // Records already leaves (a batch read again after an error) are
            // not appended twice.
            let last = log.last_seq();
            let first_new = batch.records.partition_point(|r| r.seq <= last);
            log.append(&batch.records[first_new..])
                .map_err(|e| ConsumerError::new(format!("appending to the Merkle tree: {e:#}")))?;
            Ok::<_, ConsumerError>(batch.next_seq.saturating_sub(1))
        })
        .await
        .map_err(|e| ConsumerError::new(format!("the transparency log panicked: {e}")))??;
        self.position = self.position.max(through);
        Ok(Handled {
            through: self.position,
            rejected: Vec::new(),
        })
    }

    /// Leaves are synced as they are appended.
    async fn commit(&mut self) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// Thins and drops epochs as retention removes their records.
    async fn tick(&mut self) -> Result<(), ConsumerError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.maintain())
            .await
            .map_err(|e| ConsumerError::new(format!("transparency log upkeep panicked: {e}")))?
            .map_err(|e| ConsumerError::new(format!("transparency log upkeep: {e:#}")))?;
        Ok(())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(MAINTAIN_EVERY)
    }
}
