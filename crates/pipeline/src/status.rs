//! The running consumers ([`Pipeline`]), each one's controls and what it
//! reports ([`ConsumerHandle`], [`ConsumerStatus`]).

use crate::rejections::{RejectionLog, RejectionRecord};
use crate::{Consumer, FailurePolicy};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tally_store::{Position, SharedLog};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a consumer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerState {
    /// Reading and handling, or waiting for records.
    Running,
    /// Paused by an operator.
    Paused,
    /// Waiting to retry after an error.
    Backoff,
    /// Stopped before a record it could not handle (policy `halt`), or
    /// after a panic, until an operator resumes it.
    Halted,
    /// Stopped with the server.
    Stopped,
}

/// A consumer's status, for metrics and health.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// Its name.
    pub name: String,
    /// Whether the server is unready while it cannot go on.
    pub essential: bool,
    /// What it does with a record it cannot handle.
    pub policy: FailurePolicy,
    /// What it is doing.
    pub state: ConsumerState,
    /// The position it has handled through.
    pub position: Position,
    /// The log's end when the status was taken.
    pub end: Position,
    /// Log positions between its position and the end.
    pub lag_records: u64,
    /// Seconds since it was last at the log's end (0 when it is there): about
    /// the age of the oldest record it has not handled.
    pub lag_seconds: f64,
    /// Records handed to it since the server started.
    pub records_handled: u64,
    /// Batches handed to it since the server started.
    pub batches: u64,
    /// Errors (retried) since the server started.
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Records it rejected, ever (from its rejection file).
    pub rejected: u64,
    /// The latest rejections, oldest first.
    pub recent_rejections: Vec<RejectionRecord>,
    /// Where and why it halted, while halted.
    pub halted_at: Option<RejectionRecord>,
}

/// Operator controls of one consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Control {
    pub paused: bool,
    /// Incremented by each resume (a halted consumer retries).
    pub resumes: u64,
}

pub(crate) struct Live {
    pub state: ConsumerState,
    pub records: u64,
    pub batches: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub halted_at: Option<RejectionRecord>,
    /// When it last read up to the log's end.
    pub caught_up_at: Instant,
    pub rejections: RejectionLog,
}

/// One running consumer: its progress, status and controls.
pub struct ConsumerHandle {
    name: String,
    essential: bool,
    /// Cancelled to stop this consumer alone ([`Pipeline::remove`]).
    cancel: CancellationToken,
    policy: FailurePolicy,
    pub(crate) live: Mutex<Live>,
    pub(crate) progress: watch::Sender<Position>,
    pub(crate) control: watch::Sender<Control>,
}

impl ConsumerHandle {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The position it has handled through.
    pub fn position(&self) -> Position {
        *self.progress.borrow()
    }

    /// Waits until it has handled through `pos`.
    pub async fn wait_for(&self, pos: Position) {
        let mut rx = self.progress.subscribe();
        let _ = rx.wait_for(|p| *p >= pos).await;
    }

    /// Pauses it after the batch in hand.
    pub fn pause(&self) {
        self.control.send_modify(|c| c.paused = true);
    }

    /// Resumes it: a paused one goes on, a halted one retries the record
    /// it halted at.
    pub fn resume(&self) {
        self.control.send_modify(|c| {
            c.paused = false;
            c.resumes += 1;
        });
    }

    /// Its status, against the log's end `end`.
    pub fn status(&self, end: Position) -> ConsumerStatus {
        let live = self.live.lock();
        let position = self.position();
        let behind = end.saturating_sub(1).saturating_sub(position);
        ConsumerStatus {
            name: self.name.clone(),
            essential: self.essential,
            policy: self.policy,
            state: live.state,
            position,
            end,
            lag_records: behind,
            lag_seconds: if behind == 0 {
                0.0
            } else {
                live.caught_up_at.elapsed().as_secs_f64()
            },
            records_handled: live.records,
            batches: live.batches,
            errors: live.errors,
            last_error: live.last_error.clone(),
            rejected: live.rejections.total,
            recent_rejections: live.rejections.recent.iter().cloned().collect(),
            halted_at: live.halted_at.clone(),
        }
    }
}

/// The consumers of one log, run by the driver.
pub struct Pipeline {
    log: SharedLog,
    dir: Option<PathBuf>,
    consumers: RwLock<Vec<Arc<ConsumerHandle>>>,
    cancel: CancellationToken,
}

impl Pipeline {
    /// A pipeline over `log`; rejection files go in `dir` (kept in memory
    /// only when `None`).
    pub fn new(log: SharedLog, dir: Option<PathBuf>) -> Self {
        Self {
            log,
            dir,
            consumers: RwLock::new(Vec::new()),
            cancel: CancellationToken::new(),
        }
    }

    /// The log.
    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// Starts `consumer` on the driver; its handle is listed from now on.
    /// Fails when its rejection file cannot be read, or the name is taken.
    pub fn spawn<C: Consumer>(
        &self,
        consumer: C,
    ) -> std::io::Result<(Arc<ConsumerHandle>, tokio::task::JoinHandle<()>)> {
        let name = consumer.name().to_owned();
        if self.get(&name).is_some() {
            return Err(std::io::Error::other(format!(
                "a consumer named {name} is already running"
            )));
        }
        let rejections = RejectionLog::open(self.dir.as_deref(), &name)?;
        let cancel = self.cancel.child_token();
        let handle = Arc::new(ConsumerHandle {
            name,
            essential: consumer.essential(),
            cancel: cancel.clone(),
            policy: consumer.policy(),
            live: Mutex::new(Live {
                state: ConsumerState::Running,
                records: 0,
                batches: 0,
                errors: 0,
                last_error: None,
                halted_at: None,
                caught_up_at: Instant::now(),
                rejections,
            }),
            progress: watch::Sender::new(consumer.position()),
            control: watch::Sender::new(Control::default()),
        });
        self.consumers.write().push(handle.clone());
        let task = tokio::spawn(crate::driver::run(
            self.log.clone(),
            consumer,
            handle.clone(),
            cancel,
        ));
        Ok((handle, task))
    }

    /// Stops consumer `name` (it commits first) and drops it from the list;
    /// returns its handle, whose task ends soon after. Its rejection file
    /// stays.
    pub fn remove(&self, name: &str) -> Option<Arc<ConsumerHandle>> {
        let mut list = self.consumers.write();
        let i = list.iter().position(|c| c.name == name)?;
        let handle = list.remove(i);
        handle.cancel.cancel();
        Some(handle)
    }

    /// The consumer named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ConsumerHandle>> {
        self.consumers
            .read()
            .iter()
            .find(|c| c.name == name)
            .cloned()
    }

    /// Every consumer's status, in the order they started.
    pub fn statuses(&self) -> Vec<ConsumerStatus> {
        let end = self.log.end_seq();
        self.consumers
            .read()
            .iter()
            .map(|c| c.status(end))
            .collect()
    }

    /// Tells every consumer to commit and stop (their tasks end soon after).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}
