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
//!
//! With an archive (`--archive s3://...`, on a shared log) the worker's
//! flow index owns the cluster's sealed flow files: it uploads each to the
//! bucket (`<prefix>/flows/...`) and keeps their manifest beside them
//! ([`FLOW_MANIFEST`], an object: no size limit; readers ask for it only
//! if its entity tag changed); the servers read them through the archive's
//! cache and index only what the manifest does not cover yet (see
//! `tally_flowstore::bucket`).

use crate::AppState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tally_flowstore::{Bucket, FlowEntry, FlowKind, FlowStore, FlowStoreConfig, Tier};
use tally_jetstream::bucket::{Fetched, ObjectBucket};
use tally_proto::flow::FlowRecord;

/// Days the log store keeps raw flow records (the typed copy lasts longer).
pub const RAW_FLOW_RETENTION_DAYS: u32 = 1;

/// The flow files' manifest: an object under the archive's prefix.
pub const FLOW_MANIFEST: &str = "manifests/flows.zst";

/// Opens the flow store in `<data-dir>/flows` (with the cluster's bucket
/// when there is one); returns it and its checkpoint. Blocks.
pub fn open(
    data_dir: &Path,
    config: FlowStoreConfig,
    tier: Option<Tier>,
) -> anyhow::Result<(Arc<FlowStore>, u64)> {
    let dir = data_dir.join("flows");
    let (store, checkpoint) = FlowStore::open_with(&dir, config, tier)
        .map_err(|e| anyhow::anyhow!("cannot open the flow store in {}: {e}", dir.display()))?;
    Ok((Arc::new(store), checkpoint))
}

/// The archive's bucket as the flow store uses it: objects under the
/// archive's prefix, its cache, the manifest in the shared files.
pub struct ArchiveBucket {
    archive: Arc<ObjectBucket>,
    /// The worker's lease: a worker that lost it writes no manifest (its
    /// successor's would be overwritten with an older partition).
    lease_held: Option<Arc<AtomicBool>>,
    /// The manifest as last read, with its entity tag.
    last: parking_lot::Mutex<Option<(Option<String>, Vec<u8>)>>,
}

impl ArchiveBucket {
    /// The archive's bucket, for the lease holder (`lease_held`) or a reader.
    pub fn new(archive: Arc<ObjectBucket>, lease_held: Option<Arc<AtomicBool>>) -> Self {
        Self {
            archive,
            lease_held,
            last: parking_lot::Mutex::new(None),
        }
    }
}

impl Bucket for ArchiveBucket {
    fn upload(&self, key: &str, path: &Path) -> Result<(), String> {
        self.archive
            .upload_file(&self.archive.object_key(key), path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn fetch(&self, key: &str) -> Result<PathBuf, String> {
        self.archive
            .fetch(&self.archive.object_key(key))
            .map_err(|e| e.to_string())
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.archive
            .delete(&self.archive.object_key(key))
            .map_err(|e| e.to_string())
    }

    fn load_manifest(&self) -> Result<Option<Vec<u8>>, String> {
        let etag = self.last.lock().as_ref().and_then(|(t, _)| t.clone());
        let key = self.archive.object_key(FLOW_MANIFEST);
        match self
            .archive
            .get_if_changed(&key, etag)
            .map_err(|e| e.to_string())?
        {
            Fetched::Missing => Ok(None),
            Fetched::Unchanged => Ok(self.last.lock().as_ref().map(|(_, b)| b.clone())),
            Fetched::Body(bytes, etag) => {
                *self.last.lock() = Some((etag, bytes.clone()));
                Ok(Some(bytes))
            }
        }
    }

    fn save_manifest(&self, bytes: &[u8]) -> Result<(), String> {
        if self
            .lease_held
            .as_ref()
            .is_some_and(|h| !h.load(Ordering::Acquire))
        {
            return Err("this worker lost its lease; the flow manifest is its successor's".into());
        }
        self.archive
            .put_bytes(&self.archive.object_key(FLOW_MANIFEST), bytes.to_vec())
            .map_err(|e| e.to_string())
    }
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
