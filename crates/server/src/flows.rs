//! Network flow logs on the server. Agents' flow records arrive through
//! the logs-service ingest into the `tailtraffic` collection (durable in the
//! log store's WAL: that is what the 200 acknowledges). A consumer reads
//! them in store order from the flow store's checkpoint, turns each into
//! typed entries of its node's tailnet (the node and tailnet come from the
//! agent's registration, never from the record's own `nodeId`), and
//! inserts them into the columnar flow store (`tally-flowstore`), which
//! answers the network-log API. The raw records stay in the log store for
//! [`RAW_FLOW_RETENTION_DAYS`] (replay after a crash, the logs-service
//! API); the typed copy follows each tailnet's `flowsRetentionDays`.

use crate::AppState;
use crate::control::collections::FLOWS_COLLECTION;
use std::sync::Arc;
use std::time::Duration;
use tally_flow::FlowRecord;
use tally_flowstore::{FlowEntry, FlowKind, FlowStore, FlowStoreConfig};
use tally_proto::PublicId;
use tally_store::Filter;

/// Days the log store keeps raw flow records (the typed copy lasts longer).
pub const RAW_FLOW_RETENTION_DAYS: u32 = 1;
/// Records read per step.
const BATCH: usize = 2000;

/// Opens the flow store in `<data-dir>/flows`; returns it and its checkpoint.
pub fn open(data_dir: &std::path::Path) -> anyhow::Result<(Arc<FlowStore>, u64)> {
    let dir = data_dir.join("flows");
    let (store, checkpoint) = FlowStore::open(&dir, FlowStoreConfig::default())
        .map_err(|e| anyhow::anyhow!("cannot open the flow store in {}: {e}", dir.display()))?;
    Ok((Arc::new(store), checkpoint))
}

/// The typed entries of one stored flow record, for the node that sent it.
pub fn entries_of(
    body: &[u8],
    tailnet: &str,
    node: &str,
    logged: i64,
) -> Result<Vec<FlowEntry>, String> {
    let r: FlowRecord =
        serde_json::from_slice(body).map_err(|e| format!("not a flow record: {e}"))?;
    let start = i64::try_from(r.start).unwrap_or(i64::MAX);
    let end = i64::try_from(r.end).unwrap_or(i64::MAX);
    Ok(r.entries()
        .map(|(kind, c)| FlowEntry {
            tailnet: tailnet.to_owned(),
            node: node.to_owned(),
            start,
            end,
            logged,
            kind: match kind {
                tally_flow::TrafficKind::Virtual => FlowKind::Virtual,
                tally_flow::TrafficKind::Subnet => FlowKind::Subnet,
                tally_flow::TrafficKind::Exit => FlowKind::Exit,
            },
            proto: c.proto,
            src: c.src.ip().to_canonical(),
            src_port: c.src.port(),
            dst: c.dst.ip().to_canonical(),
            dst_port: c.dst.port(),
            tx_pkts: c.tx_pkts,
            tx_bytes: c.tx_bytes,
            rx_pkts: c.rx_pkts,
            rx_bytes: c.rx_bytes,
        })
        .collect())
}

/// Feeds the flow store from the log store, from `checkpoint` on, until
/// the task is dropped. Seals due windows every few seconds.
pub async fn consume(state: AppState, mut pos: u64) {
    let filter = Filter {
        collections: vec![FLOWS_COLLECTION.to_owned()],
        kinds: vec![tally_store::kind::LOG],
        ..Filter::default()
    };
    let mut changes = state.store.subscribe();
    let mut seal_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let (store, flows, catalog, f) = (
            state.store.clone(),
            state.flows.clone(),
            state.catalog.clone(),
            filter.clone(),
        );
        let step = tokio::task::spawn_blocking(move || {
            let now = tally_proto::timefmt::now_nanos();
            let batch = store.scan(pos + 1, &f, BATCH, 16 << 20, now)?;
            let mut last_logged = None;
            for r in &batch.records {
                last_logged = Some(r.rec.time);
                // The tailnet is the one fixed at ingest; a node removed (or
                // moved to another tailnet) since takes its records with it.
                let tally_store::Owner::Tailnet(tailnet) = &r.rec.owner else {
                    continue;
                };
                let Some(node) = catalog
                    .node(&PublicId(r.rec.instance))
                    .filter(|n| n.tailnet_id == *tailnet)
                else {
                    continue;
                };
                match entries_of(&r.rec.body, &node.tailnet_id, &node.node_id, r.rec.time) {
                    Ok(entries) if !entries.is_empty() => {
                        if let Err(e) = flows.insert(r.seq, &entries) {
                            tracing::error!(seq = r.seq, "flow store insert failed: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(seq = r.seq, "skipping a tailtraffic entry: {e}"),
                }
            }
            let next = batch.next_seq.saturating_sub(1);
            flows.advance_to(next);
            Ok::<_, tally_store::StoreError>((next, batch.truncated, last_logged))
        })
        .await;
        let caught_up = match step {
            Ok(Ok((next, truncated, _))) => {
                pos = next;
                state.flow_progress.send_replace(pos);
                !truncated
            }
            Ok(Err(e)) => {
                tracing::error!("reading flow records failed (will retry): {e}");
                true
            }
            Err(e) => {
                tracing::error!("the flow consumer panicked (will retry): {e}");
                true
            }
        };
        if !caught_up {
            continue;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = seal_tick.tick() => {
                let flows = state.flows.clone();
                let sealed = tokio::task::spawn_blocking(move || {
                    flows.seal_due(tally_proto::timefmt::now_nanos())
                })
                .await;
                match sealed {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!("sealing flow windows failed (will retry): {e}"),
                    Err(e) => tracing::error!("sealing flow windows panicked: {e}"),
                }
            }
        }
    }
}

/// Deletes typed flows past each tailnet's `flowsRetentionDays`.
pub async fn enforce_retention(state: &AppState) {
    let days = match state.control.flow_retention_days().await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("flow retention: reading settings failed: {e}");
            return;
        }
    };
    let flows = state.flows.clone();
    let done = tokio::task::spawn_blocking(move || {
        let lookup = |t: &str| {
            days.get(t)
                .copied()
                .unwrap_or(tally_flowstore::DEFAULT_RETENTION_DAYS)
        };
        flows.enforce_retention(tally_proto::timefmt::now_nanos(), &lookup)
    })
    .await;
    match done {
        Ok(Ok(r)) if r.files > 0 => {
            tracing::info!(
                files = r.files,
                bytes = r.bytes,
                "flow retention removed old windows"
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("flow retention failed: {e}"),
        Err(e) => tracing::error!("flow retention panicked: {e}"),
    }
}

/// Waits (at most `limit`) until the consumer has read every record stored
/// before now, so a query sees the flow records acknowledged before it.
/// Returns false when it had to give up.
pub async fn catch_up(state: &AppState, limit: Duration) -> bool {
    let target = state.store.end_seq().saturating_sub(1);
    let mut rx = state.flow_progress.subscribe();
    tokio::time::timeout(limit, rx.wait_for(|p| *p >= target))
        .await
        .is_ok_and(|r| r.is_ok())
}
