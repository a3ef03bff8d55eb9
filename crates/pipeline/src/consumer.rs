//! The [`Consumer`] trait: what one consumer of the log declares and does.

use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tally_store::{Position, ReadLimits, ReadSpec, ScanBatch};

/// What the driver does after a consumer rejected a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Record it and move on (derived indexes: the record's absence is
    /// visible in the rejection, nothing downstream depends on it).
    Skip,
    /// Record it and stop before it until an operator resumes the
    /// consumer (integrity consumers: moving on would publish or judge a
    /// history with a hole in it).
    Halt,
}

impl FailurePolicy {
    /// `skip` or `halt`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Halt => "halt",
        }
    }
}

/// A record a consumer cannot handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its position in the log.
    pub position: Position,
    /// Why, for the operator (never the record's content).
    pub reason: String,
}

/// What handling one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handled {
    /// Every record at a position up to this one is handled; the next read
    /// starts after it. Usually the batch's end (`next_seq - 1`); less when
    /// the consumer holds records back for the next batch, or, for a
    /// [`FailurePolicy::Halt`] consumer, stops before a rejected record.
    pub through: Position,
    /// Records it could not handle, in log order.
    pub rejected: Vec<Rejection>,
}

/// An error not about a record (I/O, a database away, a bug): the driver
/// retries from the consumer's position after a backoff.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConsumerError(pub String);

impl ConsumerError {
    /// An error with what was being done.
    pub fn new(what: impl std::fmt::Display) -> Self {
        Self(what.to_string())
    }
}

/// A consumer of the log. The driver calls its methods one at a time, in
/// order; long work belongs on a blocking thread inside the futures.
pub trait Consumer: Send + 'static {
    /// Stable name (`[a-z0-9-]+`): metrics label, rejection file, health.
    fn name(&self) -> &str;

    /// Whether the server is unready while this consumer cannot go on
    /// (`/readyz`). A streaming destination is not: its errors are its
    /// destination's, shown in its own status.
    fn essential(&self) -> bool {
        true
    }

    /// Which records it reads (collections, kinds, expired ones too?).
    fn reads(&self) -> ReadSpec;

    /// What happens after it rejects a record.
    fn policy(&self) -> FailurePolicy;

    /// How much one batch holds at most.
    fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            records: 5000,
            bytes: 16 << 20,
        }
    }

    /// The position through which it has handled records (0: none): the
    /// driver reads from the next one on start and after an error. After a
    /// restart it is the last committed position.
    fn position(&self) -> Position;

    /// Handles a batch: records after [`Consumer::position`], in log
    /// order (`batch.truncated` says whether more were waiting). Handling
    /// a record twice (after a crash, before the commit) must give the
    /// same output once: outputs carry the identity of what they came from.
    fn handle(
        &mut self,
        batch: Arc<ScanBatch>,
    ) -> impl Future<Output = Result<Handled, ConsumerError>> + Send;

    /// Makes its output and its position durable together.
    fn commit(&mut self) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// How often [`Consumer::commit`] runs (zero: after every batch). It
    /// also runs when the driver stops.
    fn commit_every(&self) -> Duration {
        Duration::ZERO
    }

    /// Periodic work that does not wait for records (seal windows, judge
    /// time windows); runs about every [`Consumer::tick_every`], also
    /// while idle.
    fn tick(&mut self) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        async { Ok(()) }
    }

    /// How often [`Consumer::tick`] runs; `None`: never.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Whether a [`Consumer::handle`] or [`Consumer::tick`] in flight may
    /// be dropped when the driver stops (true for a consumer whose
    /// position moves only when its work is done, such as a streaming
    /// destination waiting on a hung peer): the server then stops at once
    /// instead of waiting for it.
    fn cancel_safe(&self) -> bool {
        false
    }
}
