//! One collection's path to the server: a bounded disk queue, its writer
//! (group commit) and its uploader. The agent runs one for its logs and, with
//! flow logging, one for its flow records (`tailtraffic`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::queue::{FilePos, Queue, QueueOptions};
use crate::uploader::{self, UploadStatus};
use crate::writer::{WriteRequest, Writer};
use crate::{CHANNEL_CAPACITY, blocking};

/// What differs between pipelines.
pub(crate) struct PipelineSpec {
    /// Collection uploaded to.
    pub collection: String,
    /// Queue directory.
    pub queue_dir: PathBuf,
    /// Queue size limit.
    pub queue_max_bytes: u64,
    /// Queue an "N logs dropped" entry when the queue overflows.
    pub drop_notices: bool,
    /// Drop batches the server refuses with 403.
    pub drop_on_forbidden: bool,
    /// The node's log, where the uploader notes records the server
    /// discarded (none for the log pipeline itself).
    pub node_log: Option<mpsc::Sender<WriteRequest>>,
}

/// Upload behaviour shared by pipelines.
#[derive(Clone)]
pub(crate) struct UploadSettings {
    /// Server base URL; `None`: nothing is uploaded.
    pub server: Option<String>,
    /// The HTTP client.
    pub client: Option<reqwest::Client>,
    /// Flush delay.
    pub flush_delay: Duration,
    /// Backoff bounds and cap.
    pub backoff: (Duration, Duration, Duration),
    /// Largest batch.
    pub batch_max_bytes: usize,
    /// Group-commit interval.
    pub fsync_interval: Duration,
    /// The node's key: every upload batch is signed with it.
    pub node_key: Option<tally_transparency::batch::SigningKey>,
    /// When the node is registering for the first time: nothing is sent
    /// until it is registered, so that every entry the server stores is
    /// its tailnet's (the server fixes an entry's tailnet when it stores it).
    pub registration: Option<watch::Receiver<crate::report::NodeSettings>>,
}

/// A running pipeline.
pub(crate) struct Pipeline {
    /// Where sources send their items.
    pub tx: mpsc::Sender<WriteRequest>,
    /// The last durable `proc_seq`.
    pub durable: watch::Receiver<u64>,
    /// The uploader's counters.
    pub status: watch::Receiver<UploadStatus>,
    stop_uploader: CancellationToken,
    stop_writer: CancellationToken,
    uploader_task: Option<JoinHandle<()>>,
    writer_task: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Opens (recovering) the queue and starts the writer and, with a
    /// server, the uploader. Returns the pipeline and the followed files'
    /// positions stored in the queue.
    pub(crate) async fn start(
        spec: PipelineSpec,
        upload: &UploadSettings,
        identity: &tally_proto::PrivateId,
        fatal: mpsc::UnboundedSender<AgentError>,
    ) -> Result<(Self, BTreeMap<String, FilePos>), AgentError> {
        let queue = {
            let dir = spec.queue_dir.clone();
            let opts = QueueOptions::for_size(spec.queue_max_bytes);
            blocking(move || Ok(Queue::open(&dir, opts)?)).await?
        };
        let positions = queue.file_positions().clone();
        let queue = Arc::new(Mutex::new(queue));
        let (tx, rx) = mpsc::channel::<WriteRequest>(CHANNEL_CAPACITY);
        let (durable_tx, durable) = watch::channel(0);
        let (status_tx, status) = watch::channel(UploadStatus::default());
        let stop_uploader = CancellationToken::new();
        let stop_writer = CancellationToken::new();
        let writer = Writer {
            queue: Arc::clone(&queue),
            proc_id: rand::random(),
            next_seq: 1,
            drop_notices: spec.drop_notices,
            queue_max_bytes: spec.queue_max_bytes,
            fsync_interval: upload.fsync_interval,
            durable: durable_tx,
        };
        let writer_task = {
            let (stop, fatal) = (stop_writer.clone(), fatal.clone());
            tokio::spawn(async move {
                if let Err(e) = writer.run(rx, stop).await {
                    let _ = fatal.send(e);
                }
            })
        };
        let uploader_task = match (&upload.server, &upload.client) {
            (Some(server), Some(client)) => {
                let private_hex = identity.to_hex();
                let (backoff_min, backoff_max, max_sleep) = upload.backoff;
                let uploader = uploader::Uploader {
                    client: client.clone(),
                    cfg: uploader::UploadConfig {
                        url: format!("{server}/c/{}/{private_hex}", spec.collection),
                        shown_url: format!("{server}/c/{}/<private-id>", spec.collection),
                        private_hex,
                        flush_delay: upload.flush_delay,
                        backoff_min,
                        backoff_max,
                        max_sleep,
                        batch_max_bytes: upload.batch_max_bytes,
                        drop_on_forbidden: spec.drop_on_forbidden,
                    },
                    queue: Arc::clone(&queue),
                    status: status_tx,
                    registration: upload.registration.clone(),
                    node_log: spec.node_log.clone(),
                    chain: match &upload.node_key {
                        Some(k) => Some(crate::signing::Chain::new(
                            k.clone(),
                            &identity.public().to_hex(),
                            &spec.collection,
                            &spec.queue_dir,
                        )?),
                        None => None,
                    },
                };
                let durable = durable.clone();
                let stop = stop_uploader.clone();
                Some(tokio::spawn(async move {
                    if let Err(e) = uploader.run(durable, stop).await {
                        let _ = fatal.send(e);
                    }
                }))
            }
            _ => None,
        };
        Ok((
            Self {
                tx,
                durable,
                status,
                stop_uploader,
                stop_writer,
                uploader_task,
                writer_task: Some(writer_task),
            },
            positions,
        ))
    }

    /// Stops the uploader (what is queued stays queued).
    pub(crate) async fn stop_uploader(&mut self) {
        self.stop_uploader.cancel();
        if let Some(t) = self.uploader_task.take() {
            let _ = t.await;
        }
    }

    /// Stops the writer after it committed what it was handed.
    pub(crate) async fn stop_writer(&mut self) -> Result<(), AgentError> {
        self.stop_writer.cancel();
        if let Some(t) = self.writer_task.take() {
            t.await
                .map_err(|e| AgentError::Task(format!("queue writer: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_uploader.cancel();
        self.stop_writer.cancel();
    }
}
