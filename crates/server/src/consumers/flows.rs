//! Network flow logs on the server. Agents' flow records arrive through
//! the logs-service ingest into the `tailtraffic` collection (durable in the
//! log store's WAL: that is what the 200 acknowledges). A consumer reads
//! them in store order from the flow store's checkpoint
//! ([`crate::consumers::flow_index`]), turns each into typed entries of its
//! node's tailnet (the node and tailnet come from the
//! agent's registration, never from the record's own `nodeId`), and
//! inserts them into the columnar flow store (`tally-flowstore`), which
//! answers the network-log API. The raw records stay in the log store for
//! [`RAW_FLOW_RETENTION_DAYS`] (replay after a crash, the logs-service
//! API); the typed copy follows each tailnet's `flowsRetentionDays`.

use crate::AppState;
use std::sync::Arc;
use tally_flowstore::{FlowEntry, FlowKind, FlowStore, FlowStoreConfig};
use tally_proto::flow::FlowRecord;

/// Days the log store keeps raw flow records (the typed copy lasts longer).
pub const RAW_FLOW_RETENTION_DAYS: u32 = 1;

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
                tally_proto::flow::TrafficKind::Virtual => FlowKind::Virtual,
                tally_proto::flow::TrafficKind::Subnet => FlowKind::Subnet,
                tally_proto::flow::TrafficKind::Exit => FlowKind::Exit,
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
