//! The flow index: the consumer that turns the `tailtraffic` records of
//! the log into typed entries of the columnar flow store (see
//! [`crate::consumers::flows`]). Policy `skip`: a record it cannot decode is recorded
//! and left out of the index (the raw record stays in the log).

use crate::consumers::flows::entries_of;
use crate::control::ControlDb;
use crate::control::catalog::Catalog;
use std::sync::Arc;
use std::time::Duration;
use tally_flowstore::{BucketRole, FlowStore};
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled, Rejection};
use tally_proto::PublicId;
use tally_store::{Filter, Position, ReadLimits, ReadSpec, ScanBatch};

/// Name of the flow index consumer.
pub const NAME: &str = "flow-index";

/// How far behind a record's receive time another server's clock may be:
/// an unknown node's record received up to this long before the catalog
/// was read may be from a node registered through another server.
const CLOCK_SLACK_NS: i64 = 30_000_000_000;

/// The flow index consumer.
pub struct FlowIndex {
    flows: Arc<FlowStore>,
    catalog: Arc<Catalog>,
    /// On a shared log: the control database, to reload the catalog when
    /// a record comes from a node registered through another server.
    shared: Option<ControlDb>,
    position: Position,
    /// The bucket's last error, said once when it begins and once when
    /// it ends (the index goes on meanwhile: files wait on disk).
    bucket_error: Option<String>,
}

impl FlowIndex {
    /// Feeds `flows` from `checkpoint` on (the flow store's own); `shared`
    /// on a shared log.
    pub fn new(
        flows: Arc<FlowStore>,
        catalog: Arc<Catalog>,
        shared: Option<ControlDb>,
        checkpoint: Position,
    ) -> Self {
        Self {
            flows,
            catalog,
            shared,
            position: checkpoint,
            bucket_error: None,
        }
    }

    /// On a shared log, reloads the catalog first when the batch holds a
    /// record of a node it does not know that is newer than the catalog.
    async fn read_barrier(&self, batch: &ScanBatch) -> Result<(), ConsumerError> {
        let Some(db) = &self.shared else {
            return Ok(());
        };
        let read = self.catalog.read_at_nanos();
        let unknown = batch.records.iter().any(|r| {
            matches!(r.rec.owner, tally_store::Owner::Tailnet(_))
                && r.rec.time >= read.saturating_sub(CLOCK_SLACK_NS)
                && self.catalog.node(&PublicId(r.rec.instance)).is_none()
        });
        if unknown {
            self.catalog
                .reload_since(std::time::Instant::now(), db)
                .await
                .map_err(|e| ConsumerError::new(format!("reloading the catalog: {e}")))?;
        }
        Ok(())
    }
}

impl Consumer for FlowIndex {
    fn name(&self) -> &str {
        NAME
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter {
                collections: vec![tally_proto::collection::FLOWS.to_owned()],
                kinds: vec![tally_store::kind::LOG],
                ..Filter::default()
            },
            include_expired: false,
        }
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }

    fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            records: 2000,
            bytes: 16 << 20,
        }
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        self.read_barrier(&batch).await?;
        let (flows, catalog) = (self.flows.clone(), self.catalog.clone());
        let handled = tokio::task::spawn_blocking(move || {
            let mut rejected = Vec::new();
            for r in &batch.records {
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
                    // The flow store refuses only what it cannot hold (a
                    // record it already has is no error): the record's fault.
                    Ok(entries) if !entries.is_empty() => {
                        if let Err(e) = flows.insert(r.seq, &entries) {
                            rejected.push(Rejection {
                                position: r.seq,
                                reason: format!("the flow store refused it: {e}"),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(reason) => rejected.push(Rejection {
                        position: r.seq,
                        reason,
                    }),
                }
            }
            let through = batch.next_seq.saturating_sub(1);
            flows.advance_to(through);
            Ok::<_, ConsumerError>(Handled { through, rejected })
        })
        .await
        .map_err(|e| ConsumerError::new(format!("the flow index panicked: {e}")))??;
        self.position = handled.through;
        Ok(handled)
    }

    /// The flow store moves its checkpoint itself as windows are sealed.
    async fn commit(&mut self) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// Seals the windows that are due and merges closed windows' parts;
    /// with a bucket, the owner uploads what it sealed and a reader
    /// follows the manifest.
    async fn tick(&mut self) -> Result<(), ConsumerError> {
        let flows = self.flows.clone();
        let bucket = tokio::task::spawn_blocking(move || {
            let now = tally_proto::timefmt::now_nanos();
            flows
                .seal_due(now)
                .map_err(|e| format!("sealing flow windows: {e}"))?;
            // Sealed files wait on disk while the bucket is unreachable:
            // the index goes on, and the bucket's error is its own.
            let bucket = flows
                .compact(now)
                .map_err(|e| format!("merging the parts of flow windows: {e}"))
                .and_then(|_| match flows.bucket_role() {
                    Some(BucketRole::Owner) => flows
                        .publish()
                        .map(|_| ())
                        .map_err(|e| format!("uploading sealed flow files: {e}")),
                    Some(BucketRole::Reader) => flows
                        .refresh()
                        .map(|_| ())
                        .map_err(|e| format!("reading the flow manifest: {e}")),
                    None => Ok(()),
                });
            Ok::<_, String>(bucket.err())
        })
        .await
        .map_err(|e| ConsumerError::new(format!("sealing flow windows panicked: {e}")))?
        .map_err(ConsumerError::new)?;
        match (&self.bucket_error, bucket) {
            (None, Some(e)) => {
                tracing::error!("flow index: {e} (the index goes on; tried again every 5 s)");
                self.bucket_error = Some(e);
            }
            (Some(_), None) => {
                tracing::info!("flow index: the bucket answers again");
                self.bucket_error = None;
            }
            _ => {}
        }
        Ok(())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(5))
    }
}
