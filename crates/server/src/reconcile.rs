//! The reconciliation service: a consumer of the store (never on the
//! ingest path) that feeds every flow record, with the verdict of the batch
//! it came in, into `tally-reconcile`, tells it what the control database
//! knows about nodes, and appends the findings to the store's `findings`
//! collection. Its state (the reconciler's snapshot, the store position and
//! the number of findings written) is saved in `<data-dir>/reconcile.state`
//! after each step, so a restart resumes where it was; a finding written
//! again after a crash carries the same `proc_seq` and is dropped by the
//! store's dedup, so findings are exactly once.

use crate::AppState;
use crate::control::audit::AuditContext;
use crate::control::collections::FLOWS_COLLECTION;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tally_flow::FlowRecord;
use tally_proto::PublicId;
use tally_reconcile::{
    BatchVerdict, Config, FlowKind, FlowObservation, NodeInfo, Reconciler, Summary,
};
use tally_store::{Filter, NewRecord, Record, kind};

/// Collection of reconciliation findings.
pub const FINDINGS_COLLECTION: &str = "findings";
/// The instance findings are written as (a fixed public ID).
pub const RECONCILER_INSTANCE: [u8; 32] = [0x7a; 32];

#[derive(Serialize, Deserialize)]
struct Saved {
    pos: u64,
    written: u64,
    snapshot: Vec<u8>,
}

/// The running reconciler, shared with the API.
pub struct ReconcileService {
    inner: Mutex<Reconciler>,
    path: PathBuf,
}

impl ReconcileService {
    /// Loads the saved state (or starts fresh). Returns the service, the
    /// store position to resume after, and the findings written so far.
    pub fn open(data_dir: &std::path::Path, config: Config) -> anyhow::Result<(Self, u64, u64)> {
        let path = data_dir.join("reconcile.state");
        let (rec, pos, written) = match std::fs::read(&path) {
            Ok(b) => {
                let s: Saved = serde_json::from_slice(&b).map_err(|e| {
                    anyhow::anyhow!(
                        "{} is damaged ({e}); move it away to reconcile from scratch",
                        path.display()
                    )
                })?;
                let r = Reconciler::restore(&s.snapshot)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                (r, s.pos, s.written)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                Reconciler::new(config).map_err(|e| anyhow::anyhow!("{e}"))?,
                0,
                0,
            ),
            Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
        };
        Ok((
            Self {
                inner: Mutex::new(rec),
                path,
            },
            pos,
            written,
        ))
    }

    /// Per node and pair completeness.
    pub fn summary(&self) -> Summary {
        self.inner.lock().summary()
    }

    fn save(&self, pos: u64, written: u64) -> anyhow::Result<()> {
        let snapshot = self
            .inner
            .lock()
            .snapshot()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = serde_json::to_vec(&Saved {
            pos,
            written,
            snapshot,
        })?;
        tally_store::write_atomic(&self.path, &bytes)?;
        Ok(())
    }
}

fn verdict(name: &str) -> Option<BatchVerdict> {
    Some(match name {
        "ok" => BatchVerdict::Ok,
        "gap" => BatchVerdict::Gap,
        "broken_chain" => BatchVerdict::BrokenChain,
        "bad_signature" => BatchVerdict::BadSignature,
        "replay" => BatchVerdict::Replay,
        "duplicate" => BatchVerdict::Duplicate,
        "unsigned" => BatchVerdict::Unsigned,
        _ => return None,
    })
}

/// Observations of one stored flow record.
fn observations(
    state: &AppState,
    r: &Record,
    integrity: Option<BatchVerdict>,
) -> Vec<FlowObservation> {
    let Some(node) = state.catalog.node(&PublicId(r.rec.instance)) else {
        return Vec::new();
    };
    let Ok(record) = serde_json::from_slice::<FlowRecord>(&r.rec.body) else {
        return Vec::new();
    };
    let (proc_id, proc_seq) = r.rec.identity.unwrap_or((0, r.seq));
    let tailnet: Arc<str> = Arc::from(node.tailnet_id.as_str());
    let node_id: Arc<str> = Arc::from(node.node_id.as_str());
    let instance: Arc<str> = Arc::from(hex::encode(r.rec.instance).as_str());
    record
        .entries()
        .enumerate()
        .map(|(i, (k, c))| FlowObservation {
            tailnet: tailnet.clone(),
            node: node_id.clone(),
            start: i64::try_from(record.start).unwrap_or(i64::MAX),
            end: i64::try_from(record.end).unwrap_or(i64::MAX),
            logged: r.rec.time,
            kind: match k {
                tally_flow::TrafficKind::Virtual => FlowKind::Virtual,
                tally_flow::TrafficKind::Subnet => FlowKind::Subnet,
                tally_flow::TrafficKind::Exit => FlowKind::Exit,
            },
            proto: c.proto,
            src: c.src,
            dst: c.dst,
            tx_pkts: c.tx_pkts,
            tx_bytes: c.tx_bytes,
            rx_pkts: c.rx_pkts,
            rx_bytes: c.rx_bytes,
            instance: instance.clone(),
            proc_id,
            proc_seq,
            index: u32::try_from(i).unwrap_or(u32::MAX),
            integrity,
        })
        .collect()
}

/// Tells the reconciler what the control database knows about every node.
async fn refresh_nodes(state: &AppState, svc: &ReconcileService) {
    let now = tally_proto::timefmt::now_nanos();
    let on: std::collections::HashSet<String> = state
        .control
        .tailnets_with("networkFlowLoggingOn")
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let Ok(tailnets) = state.control.all_tailnet_ids().await else {
        return;
    };
    for t in tailnets {
        let Ok(nodes) = state.control.nodes(&t).await else {
            continue;
        };
        let mut rec = svc.inner.lock();
        for n in nodes {
            let addresses: Vec<IpAddr> = n
                .addresses
                .iter()
                .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
                .collect();
            rec.update_node(&NodeInfo {
                tailnet: t.clone(),
                node: n.id.clone(),
                addresses,
                opted_out: n.no_logs_no_support,
                flow_logging: on.contains(&t),
                last_report: tally_proto::timefmt::parse_rfc3339(&n.last_seen),
                // What the node is now held since it registered (the
                // database keeps no history of settings).
                at: tally_proto::timefmt::parse_rfc3339(&n.created)
                    .unwrap_or(now)
                    .min(now),
            });
        }
    }
}

/// Makes sure the findings collection exists and its writer is adopted.
pub async fn ensure_collection(state: &AppState) -> anyhow::Result<()> {
    if state.catalog.has_collection(FINDINGS_COLLECTION) {
        return Ok(());
    }
    let owner = state
        .catalog
        .owner(FLOWS_COLLECTION)
        .ok_or_else(|| anyhow::anyhow!("the {FLOWS_COLLECTION} collection is missing"))?;
    let ctx = AuditContext::system();
    state
        .control
        .create_collection(&owner, &ctx, FINDINGS_COLLECTION, None, 0)
        .await?;
    state
        .control
        .adopt(
            &owner,
            &ctx,
            FINDINGS_COLLECTION,
            &[PublicId(RECONCILER_INSTANCE)],
        )
        .await?;
    state.catalog.reload(&state.control).await?;
    Ok(())
}

/// Runs the reconciler until the task is dropped.
pub async fn run(state: AppState, svc: Arc<ReconcileService>, mut pos: u64, mut written: u64) {
    if let Err(e) = ensure_collection(&state).await {
        tracing::error!("reconciliation is off: {e}");
        return;
    }
    let filter = Filter {
        collections: vec![FLOWS_COLLECTION.to_owned()],
        kinds: vec![kind::LOG, kind::BATCH],
        ..Filter::default()
    };
    let mut changes = state.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut refreshed: Option<tokio::time::Instant> = None;
    let mut saved = tokio::time::Instant::now();
    loop {
        // Read what arrived.
        let (store, f) = (state.store.clone(), filter.clone());
        let batch =
            tokio::task::spawn_blocking(move || store.scan(pos + 1, &f, 5000, 16 << 20, i64::MIN))
                .await;
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!("reconciliation read failed (will retry): {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => {
                tracing::error!("reconciliation read panicked: {e}");
                return;
            }
        };
        // An upload's entries are followed by its batch record, when signed:
        // group consecutive records of one upload (same instance and time).
        let records = &batch.records;
        let mut i = 0;
        let mut consumed = pos;
        while i < records.len() {
            let mut j = i;
            while j < records.len()
                && records[j].rec.instance == records[i].rec.instance
                && records[j].rec.time == records[i].rec.time
            {
                j += 1;
            }
            // At the end of a truncated read the group may go on: next time.
            if j == records.len() && batch.truncated && i > 0 {
                break;
            }
            let group = &records[i..j];
            let integrity = group
                .iter()
                .rev()
                .find(|r| r.rec.kind == kind::BATCH)
                .and_then(|r| {
                    serde_json::from_slice::<crate::batches::BatchRecord>(&r.rec.body).ok()
                })
                .and_then(|b| verdict(&b.verdict));
            let mut rec = svc.inner.lock();
            for r in group.iter().filter(|r| r.rec.kind == kind::LOG) {
                for o in observations(&state, r, integrity) {
                    rec.observe(&o);
                }
            }
            drop(rec);
            consumed = group.last().map_or(consumed, |r| r.seq);
            i = j;
        }
        if i == records.len() {
            consumed = consumed.max(batch.next_seq.saturating_sub(1));
        }
        pos = consumed;
        let caught_up = !batch.truncated;
        // The reconciler's clock: while behind (a replay after a restart),
        // the receive time of the last record read, so that windows are not
        // judged before their records are read; once caught up, now.
        let clock = if caught_up {
            tally_proto::timefmt::now_nanos()
        } else {
            records[..i]
                .last()
                .map_or(i64::MIN, |r| r.rec.time)
        };
        if caught_up {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tick.tick() => {}
            }
        }
        // What the control database knows about nodes, at most once a second.
        if refreshed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            refresh_nodes(&state, &svc).await;
            refreshed = Some(tokio::time::Instant::now());
        }
        // Judge windows and write their findings.
        let judge = svc.clone();
        let Ok(findings) = tokio::task::spawn_blocking(move || {
            judge
                .inner
                .lock()
                .advance(clock)
        })
        .await
        else {
            tracing::error!("the reconciler panicked; reconciliation stops until restart");
            return;
        };
        if !findings.is_empty() {
            let now = tally_proto::timefmt::now_nanos();
            let records: Vec<NewRecord> = findings
                .iter()
                .enumerate()
                .map(|(k, f)| NewRecord {
                    time: now,
                    collection: FINDINGS_COLLECTION.to_owned(),
                    instance: RECONCILER_INSTANCE,
                    identity: Some((1, written + 1 + k as u64)),
                    client_time: None,
                    kind: kind::LOG,
                    body: serde_json::to_vec(f).unwrap_or_default(),
                })
                .collect();
            match state.store.append(records).await {
                Ok(_) => written += findings.len() as u64,
                Err(e) => {
                    tracing::error!(
                        "writing findings failed (will retry from the saved state): {e}"
                    );
                    return;
                }
            }
            for f in &findings {
                tracing::warn!(class = f.class.name(), node = %f.node, "reconciliation finding: {}", f.detail);
            }
        }
        // Saved after findings and at most every 5 s otherwise: a replay from
        // an older save derives the same findings with the same ordinals,
        // which the store's dedup drops.
        if !findings.is_empty() || saved.elapsed() >= Duration::from_secs(5) {
            if let Err(e) = svc.save(pos, written) {
                tracing::error!("saving the reconciler state failed: {e}");
            }
            saved = tokio::time::Instant::now();
        }
    }
}
