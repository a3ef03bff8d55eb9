//! The audit outbox: copies every committed configuration-audit event from
//! the control database (the source of truth, with its hash chain) into
//! the log, as a record of the tailnet's `tailaudit` collection, so that
//! everything downstream (detection, streaming, the transparency log)
//! reads audit events from the log like flows and node logs.
//!
//! Exactly once by identity: a record's identity is the tailnet's audit
//! sequence number (`proc_seq`, instance = a hash of the tailnet ID), and
//! the outbox's position per tailnet (`<data-dir>/audit-outbox.json`) is
//! written only after the append is durable. A crash between a commit and
//! its append leaves the event after the saved position: it is appended
//! on restart (nothing lost). A crash between the append and the position
//! write appends it again: the log drops it as a duplicate (nothing
//! twice).
//!
//! The outbox wakes at each commit of this server and at least every
//! second (commits of other servers on a shared PostgreSQL).

use crate::AppState;
use crate::control::ControlDb;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_store::{NewRecord, Owner, SharedLog, kind};

/// File of the outbox's positions in the data directory.
pub const POSITIONS_FILE: &str = "audit-outbox.json";
/// Events copied per query.
const BATCH: i64 = 1000;
/// Longest wait between two looks at the control database.
const POLL: Duration = Duration::from_secs(1);

/// The instance (public ID) a tailnet's audit records are written as.
pub fn audit_instance(tailnet_id: &str) -> [u8; 32] {
    Sha256::digest(format!("tally-audit-v1\n{tailnet_id}").as_bytes()).into()
}

/// The outbox: positions per tailnet and where they are saved.
pub struct AuditOutbox {
    path: PathBuf,
    /// Tailnet ID → the sequence number copied through.
    positions: BTreeMap<String, i64>,
}

impl AuditOutbox {
    /// Loads the positions saved in `data_dir` (none: from the start).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(POSITIONS_FILE);
        let positions = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); remove it to copy the audit log into the store again (duplicates are dropped)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(Self { path, positions })
    }

    /// The sequence number copied through for `tailnet`.
    pub fn position(&self, tailnet: &str) -> i64 {
        self.positions.get(tailnet).copied().unwrap_or(0)
    }

    /// Copies what was committed since the last call; returns the events
    /// copied.
    pub async fn step(&mut self, control: &ControlDb, log: &SharedLog) -> anyhow::Result<u64> {
        let mut copied = 0;
        for (tailnet, head) in control.audit_heads().await? {
            while self.position(&tailnet) < head {
                let events = control
                    .audit_events_after(&tailnet, self.position(&tailnet), BATCH)
                    .await?;
                let Some(last) = events.last().map(|e| e.seq) else {
                    // Removed by audit retention before they were copied.
                    self.positions.insert(tailnet.clone(), head);
                    break;
                };
                let now = tally_proto::timefmt::now_nanos();
                let instance = audit_instance(&tailnet);
                let records: Vec<NewRecord> = events
                    .iter()
                    .map(|e| NewRecord {
                        time: now,
                        collection: tally_proto::collection::AUDIT.to_owned(),
                        owner: Owner::tailnet(tailnet.clone()),
                        instance,
                        identity: Some((1, u64::try_from(e.seq).unwrap_or(0))),
                        client_time: Some(e.time),
                        kind: kind::LOG,
                        body: e.body.clone().into_bytes(),
                    })
                    .collect();
                failpoint("audit-outbox-before-append");
                log.append(records)
                    .await
                    .map_err(|e| anyhow::anyhow!("appending audit events to the store: {e}"))?;
                failpoint("audit-outbox-after-append");
                copied += events.len() as u64;
                self.positions.insert(tailnet.clone(), last);
                self.save()?;
            }
        }
        Ok(copied)
    }

    fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(&self.positions)?;
        crate::shared_state::save(&self.path, &bytes)
            .map_err(|e| anyhow::anyhow!("saving the audit outbox position: {e}"))
    }
}

/// Aborts the process here when `TALLY_FAILPOINTS` (comma-separated) names
/// `name`: crash tests use it to stop the server between two steps.
pub fn failpoint(name: &str) {
    if std::env::var("TALLY_FAILPOINTS").is_ok_and(|v| v.split(',').any(|f| f.trim() == name)) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Runs the outbox until the task is dropped.
pub async fn run(state: AppState, mut outbox: AuditOutbox) {
    let committed = state.control.audit_committed();
    let mut failures = 0u32;
    loop {
        match outbox.step(&state.control, &state.store).await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::error!("audit outbox: {e:#} (will retry)");
                let wait = POLL * 2u32.saturating_pow(failures.min(5));
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        let _ = tokio::time::timeout(POLL, committed.notified()).await;
    }
}
