//! The server's consumers of the log, each an implementation of
//! [`tally_pipeline::Consumer`] run by the one driver: the flow index, the
//! transparency log, reconciliation and detection. A new consumer (detection, a
//! streaming destination) is a new module here and one line in [`start`].

pub mod archive;
pub mod batch_chains;
pub mod detection;
pub mod flow_index;
pub mod flows;
pub mod merkle_log;
pub mod reconcile;
pub mod reconcile_report;
pub mod reconciliation;
pub mod recording_index;
pub mod stream;
pub mod transparency;

use crate::AppState;
use anyhow::Context;

/// Where the consumers resume (read when the server was bound).
pub struct Resume {
    /// The flow store's checkpoint.
    pub flow_checkpoint: u64,
    /// The reconciler's position and findings written.
    pub reconcile: (u64, u64),
    /// The detection consumer, opened with its saved state (taken when started).
    pub detection: parking_lot::Mutex<Option<detection::Detection>>,
    /// The recordings' index consumer, opened with its saved state.
    pub recordings: parking_lot::Mutex<Option<recording_index::IndexConsumer>>,
}

/// Starts every consumer on the pipeline; returns their tasks.
pub fn start(
    state: &AppState,
    resume: &Resume,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let p = &state.pipeline;
    let role = state.config.role;
    let mut tasks = Vec::new();
    // The worker indexes flows when it owns the bucket's flow files.
    if role.runs_indexes() || state.flows.bucket_role() == Some(tally_flowstore::BucketRole::Owner)
    {
        tasks.push(
            p.spawn(flow_index::FlowIndex::new(
                state.flows.clone(),
                state.catalog.clone(),
                state.shared_files.as_ref().map(|_| state.control.clone()),
                resume.flow_checkpoint,
            ))
            .context("starting the flow index")?
            .1,
        );
    }
    if role.runs_indexes() {
        tasks.push(
            p.spawn(transparency::TransparencyLog::new(state.log.clone()))
                .context("starting the transparency log")?
                .1,
        );
        if let Some(r) = resume.recordings.lock().take() {
            tasks.push(p.spawn(r).context("starting the recordings' index")?.1);
        }
        if state.shared_files.is_some() {
            // Other servers' batches (this one's are applied at ingest).
            let from = state.store.end_seq().saturating_sub(1);
            tasks.push(
                p.spawn(batch_chains::BatchChains::new(state.batches.clone(), from))
                    .context("starting the batch chains")?
                    .1,
            );
        }
    }
    if role.runs_singletons() {
        tasks.push(
            p.spawn(reconciliation::Reconciliation::new(
                state.reconcile.clone(),
                state.store.clone(),
                state.catalog.clone(),
                state.control.clone(),
                resume.reconcile,
            ))
            .context("starting reconciliation")?
            .1,
        );
        if let Some(d) = resume.detection.lock().take() {
            tasks.push(p.spawn(d).context("starting detection")?.1);
        }
        if let Some(log) = &state.jetstream
            && let Some(a) = log.archive()
        {
            tasks.push(
                p.spawn(archive::ArchiveConsumer::new(
                    log.clone(),
                    a.clone(),
                    state.config.log_hot,
                    state.config.archive_every,
                ))
                .context("starting the archive")?
                .1,
            );
        }
    }
    Ok(tasks)
}

/// Waits (at most `limit`) until consumer `name` has read every record
/// stored before now; false when it gave up (or there is no such consumer).
pub async fn catch_up(state: &AppState, name: &str, limit: std::time::Duration) -> bool {
    let Some(c) = state.pipeline.get(name) else {
        return false;
    };
    let target = state.store.end_seq().saturating_sub(1);
    tokio::time::timeout(limit, c.wait_for(target))
        .await
        .is_ok()
}
