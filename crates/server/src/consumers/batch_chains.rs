//! On a shared log, each server keeps the signed-batch chains of every
//! instance from the `BATCH` records all servers store (an agent's next
//! upload may reach any server). Ingest applies its own uploads at once;
//! this consumer applies everyone's, and an upload whose batch number is
//! ahead of what this server knows waits (briefly) until it has read the
//! log to its end ([`catch_up`]) before it is judged, so a batch taken by
//! another server is never mistaken for a gap. Only with `--log nats://`.

use crate::AppState;
use crate::ingest::batches::BatchLedger;
use std::sync::Arc;
use std::time::Duration;
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled};
use tally_store::{Filter, Position, ReadSpec, ScanBatch, kind};

/// Name of the consumer.
pub const NAME: &str = "batch-chains";

/// How long an upload waits for this server to learn the chains.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(3);

/// The consumer (see the module documentation).
pub struct BatchChains {
    ledger: Arc<BatchLedger>,
    position: Position,
}

impl BatchChains {
    /// Applies `BATCH` records after `position`.
    pub fn new(ledger: Arc<BatchLedger>, position: Position) -> Self {
        Self { ledger, position }
    }
}

impl Consumer for BatchChains {
    fn name(&self) -> &str {
        NAME
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter {
                kinds: vec![kind::BATCH],
                ..Filter::default()
            },
            include_expired: true,
        }
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        for r in &batch.records {
            self.ledger.apply_stored(r);
        }
        self.position = batch.next_seq.saturating_sub(1).max(self.position);
        Ok(Handled {
            through: self.position,
            rejected: Vec::new(),
        })
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let (ledger, through) = (self.ledger.clone(), self.position);
        tokio::task::spawn_blocking(move || ledger.save_if_dirty(through))
            .await
            .map_err(|e| ConsumerError::new(format!("saving batch chains panicked: {e}")))?
            .map_err(|e| ConsumerError::new(format!("saving batch chains: {e}")))
    }

    fn commit_every(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// Waits (at most a few seconds) until this server applied every `BATCH`
/// record stored anywhere before now.
pub async fn catch_up(state: &AppState) {
    let Some(c) = state.pipeline.get(NAME) else {
        return;
    };
    let Ok(Ok(end)) = tokio::time::timeout(CATCH_UP_LIMIT, state.store.sync_end()).await else {
        return;
    };
    if tokio::time::timeout(CATCH_UP_LIMIT, c.wait_for(end.saturating_sub(1)))
        .await
        .is_err()
    {
        tracing::warn!(
            "batch chains did not catch up with the log within {CATCH_UP_LIMIT:?}; judging the upload with what this server knows"
        );
    }
}
