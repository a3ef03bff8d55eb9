//! The one loop that runs every consumer (see the crate documentation for
//! the failure rule).

use crate::status::{ConsumerHandle, ConsumerState};
use crate::{Consumer, ConsumerError, FailurePolicy, Handled, Rejection};
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tally_store::{Position, ScanBatch, SharedLog};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First wait after an error; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one step ended with.
enum Step {
    /// More records are waiting: go on at once.
    More,
    /// At the end of the log: wait for records, a tick or a control.
    Idle,
    /// An error: back off and retry from the consumer's position.
    Failed(String),
    /// The consumer halted before a record (policy): what it handled
    /// before it is committed.
    Halted,
    /// The driver was stopped while a cancel-safe consumer worked: its
    /// work was dropped, its position is where it was.
    Cancelled,
    /// The consumer panicked: halted, its state is not committed.
    Panicked,
}

/// Runs `consumer` over `log` until `cancel`, then commits it.
pub async fn run<C: Consumer>(
    log: SharedLog,
    mut consumer: C,
    handle: Arc<ConsumerHandle>,
    cancel: CancellationToken,
) {
    let name = consumer.name().to_owned();
    let name = name.as_str();
    let tick_every = consumer.tick_every();
    let mut next_tick = Instant::now();
    let mut last_commit = Instant::now();
    let mut dirty = false;
    let mut backoff = MIN_BACKOFF;
    let mut control = handle.control.subscribe();
    let mut seen_resumes = control.borrow().resumes;
    let mut pos = consumer.position();
    handle.progress.send_replace(pos);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // An operator's pause, or a halt until resumed.
        let c = *control.borrow_and_update();
        let halted = handle.live.lock().state == ConsumerState::Halted;
        if halted && c.resumes != seen_resumes {
            tracing::info!(consumer = name, "resumed by an operator: retrying");
            handle.live.lock().halted_at = None;
        } else if c.paused || halted {
            set_state(
                &handle,
                if halted {
                    ConsumerState::Halted
                } else {
                    ConsumerState::Paused
                },
            );
            tokio::select! {
                _ = control.changed() => {}
                () = cancel.cancelled() => {}
            }
            continue;
        }
        seen_resumes = c.resumes;
        set_state(&handle, ConsumerState::Running);

        let step = step(
            &log,
            &mut consumer,
            &handle,
            &mut pos,
            tick_every,
            &mut next_tick,
            &cancel,
        )
        .await;
        if matches!(step, Step::Panicked | Step::Cancelled) {
            continue;
        }
        if matches!(step, Step::More | Step::Idle | Step::Halted) {
            dirty = true;
            backoff = MIN_BACKOFF;
        }
        let commit_due = dirty && last_commit.elapsed() >= consumer.commit_every();
        if commit_due || (dirty && matches!(step, Step::Halted)) {
            match guarded(consumer.commit()).await {
                Ok(()) => {
                    dirty = false;
                    last_commit = Instant::now();
                }
                Err(e) => {
                    failed(&handle, &format!("commit: {e}"));
                    backoff_wait(&handle, &cancel, &mut backoff).await;
                    pos = consumer.position();
                    continue;
                }
            }
        }
        match step {
            Step::More | Step::Halted | Step::Panicked | Step::Cancelled => {}
            Step::Failed(e) => {
                failed(&handle, &e);
                backoff_wait(&handle, &cancel, &mut backoff).await;
                pos = consumer.position();
                handle.progress.send_replace(pos);
            }
            Step::Idle => {
                handle.live.lock().caught_up_at = std::time::Instant::now();
                let tick_at = tick_every.map(|_| next_tick);
                let commit_at = dirty.then(|| last_commit + consumer.commit_every());
                let wake = [tick_at, commit_at].into_iter().flatten().min();
                tokio::select! {
                    r = log.wait_for(pos + 1) => {
                        if r.is_err() {
                            break; // the log closed
                        }
                    }
                    () = sleep_until(wake) => {}
                    _ = control.changed() => {}
                    () = cancel.cancelled() => {}
                }
                // It was at the end until it woke: lag counts from here.
                handle.live.lock().caught_up_at = std::time::Instant::now();
            }
        }
    }
    if dirty && let Err(e) = guarded(consumer.commit()).await {
        tracing::error!(consumer = name, "final commit failed: {e}");
    }
    set_state(&handle, ConsumerState::Stopped);
}

/// One tick (when due), one read and one handled batch.
async fn step<C: Consumer>(
    log: &SharedLog,
    consumer: &mut C,
    handle: &ConsumerHandle,
    pos: &mut Position,
    tick_every: Option<Duration>,
    next_tick: &mut Instant,
    cancel: &CancellationToken,
) -> Step {
    let cancel_safe = consumer.cancel_safe();
    if let Some(every) = tick_every
        && Instant::now() >= *next_tick
    {
        *next_tick = Instant::now() + every;
        match cancellable(cancel_safe, cancel, guarded(consumer.tick())).await {
            None => return Step::Cancelled,
            Some(Ok(())) => {}
            Some(Err(e)) => return fail_or_halt(handle, *pos, e),
        }
    }
    let (spec, limits, from) = (consumer.reads(), consumer.read_limits(), *pos + 1);
    let read = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || spec.read(&*log, from, limits)).await
    };
    let mut batch = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Step::Failed(format!("reading the log: {e}")),
        Err(e) => return Step::Failed(format!("reading the log panicked: {e}")),
    };
    let end_of_batch = batch.next_seq.saturating_sub(1);
    if batch.records.is_empty() && batch.damaged.is_empty() && end_of_batch <= *pos {
        return Step::Idle;
    }
    // Unreadable blocks are rejections of every consumer that reads them;
    // a halting consumer stops before the first one.
    let mut damaged: Vec<Rejection> = batch
        .damaged
        .iter()
        .map(|d| Rejection {
            position: d.first_seq,
            reason: format!(
                "positions {}..={} are in a block of the log that cannot be read: {}",
                d.first_seq, d.last_seq, d.reason
            ),
        })
        .collect();
    let policy = consumer.policy();
    if policy == FailurePolicy::Halt && !damaged.is_empty() {
        let first = damaged[0].position;
        batch.records.retain(|r| r.seq < first);
        batch.next_seq = first;
        batch.truncated = true;
        damaged.truncate(1);
    }
    batch.damaged.clear();
    let truncated = batch.truncated;
    let count = batch.records.len() as u64;
    let handled = match cancellable(
        cancel_safe,
        cancel,
        guarded(consumer.handle(Arc::new(batch))),
    )
    .await
    {
        None => return Step::Cancelled,
        Some(Ok(h)) => h,
        Some(Err(e)) => return fail_or_halt(handle, *pos, e),
    };
    let Handled {
        through,
        mut rejected,
    } = handled;
    rejected.extend(damaged);
    rejected.sort_by_key(|r| r.position);
    {
        let mut live = handle.live.lock();
        live.records += count;
        live.batches += 1;
        if !rejected.is_empty() {
            match live.rejections.record(&rejected) {
                Ok(new) => {
                    for r in &new {
                        tracing::error!(
                            consumer = consumer.name(),
                            position = r.position,
                            policy = policy.name(),
                            "a record was rejected: {}",
                            r.reason
                        );
                    }
                }
                Err(e) => tracing::error!(
                    consumer = consumer.name(),
                    "cannot write the rejection file ({e}); {} rejection(s) are counted but not on disk",
                    rejected.len()
                ),
            }
        }
    }
    *pos = through.max(*pos);
    handle.progress.send_replace(*pos);
    if policy == FailurePolicy::Halt
        && let Some(first) = rejected.first()
    {
        halt(handle, first.clone());
        return Step::Halted;
    }
    if truncated { Step::More } else { Step::Idle }
}

/// `f`, or `None` when `cancel` fires first and the consumer allows its
/// work to be dropped.
async fn cancellable<T>(
    safe: bool,
    cancel: &CancellationToken,
    f: impl Future<Output = T>,
) -> Option<T> {
    if !safe {
        return Some(f.await);
    }
    tokio::select! {
        r = f => Some(r),
        () = cancel.cancelled() => None,
    }
}

/// A consumer's future with its panic caught (a panic is an error whose
/// message starts with `panicked`).
async fn guarded<T>(f: impl Future<Output = Result<T, ConsumerError>>) -> Result<T, ConsumerError> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(ConsumerError(format!("panicked: {what}")))
        }
    }
}

/// A panic halts (the consumer's state may be half-changed); any other
/// error is retried.
fn fail_or_halt(handle: &ConsumerHandle, pos: Position, e: ConsumerError) -> Step {
    if e.0.starts_with("panicked") {
        halt(
            handle,
            Rejection {
                position: pos + 1,
                reason: format!("the consumer {e}"),
            },
        );
        Step::Panicked
    } else {
        Step::Failed(e.0)
    }
}

fn halt(handle: &ConsumerHandle, at: Rejection) {
    tracing::error!(
        consumer = handle.name(),
        position = at.position,
        "the consumer halted: {}; it resumes when an operator resumes it (or the server restarts)",
        at.reason
    );
    let mut live = handle.live.lock();
    live.state = ConsumerState::Halted;
    live.halted_at = Some(crate::RejectionRecord {
        position: at.position,
        reason: at.reason,
        at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    });
}

fn failed(handle: &ConsumerHandle, e: &str) {
    tracing::error!(consumer = handle.name(), "{e} (will retry)");
    let mut live = handle.live.lock();
    live.errors += 1;
    live.last_error = Some(e.to_owned());
}

async fn backoff_wait(handle: &ConsumerHandle, cancel: &CancellationToken, backoff: &mut Duration) {
    set_state(handle, ConsumerState::Backoff);
    // Jittered (half to all of the backoff), so that consumers failing on
    // one cause (a destination down) do not retry in step.
    let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = cancel.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

fn set_state(handle: &ConsumerHandle, state: ConsumerState) {
    let mut live = handle.live.lock();
    if live.state != ConsumerState::Halted || state == ConsumerState::Running {
        live.state = state;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The batch type handed to consumers (re-exported for implementors).
pub type Batch = Arc<ScanBatch>;
