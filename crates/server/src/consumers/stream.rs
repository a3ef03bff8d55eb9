//! Streaming destinations: each configured stream is a consumer of the log
//! with its own durable position, reading its log type's collection of its
//! tailnet and handing batches to its sink (`tally-stream`).
//!
//! - At least once: the position advances only after the destination
//!   confirmed the whole batch; a failure leaves it where it was, and the
//!   driver retries (backing off with jitter, and not before the
//!   destination's `Retry-After`). A batch cut off mid-way (some bodies confirmed) is
//!   sent again whole: duplicates at most one batch.
//! - Not essential: a destination that is down shows in its status
//!   (`lastError`) and in `/api/v2/consumers`, never in `/readyz`, and
//!   never slows ingest or the other consumers (each has its own task).
//! - Object stores (`s3`, `gcs`) gather entries for `uploadPeriodMinutes`
//!   (or until an object's worth, [`tally_stream::sinks::object::MAX_OBJECT`])
//!   and upload them as one object. Gathered entries are held in memory
//!   only: the saved position stays before them until the upload is
//!   confirmed, so a restart reads them again from the store.
//! - State: `<data-dir>/streams/<id>.json` (position and counters), saved
//!   after every delivered batch. A new stream starts at the log's end.

use crate::control::secrets::SecretBox;
use crate::control::streams::StreamRow;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, so that tests can drive the upload period.
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled, Pipeline};
use tally_store::{Filter, Position, ReadLimits, ReadSpec, ScanBatch, kind};
use tally_stream::config::Secrets;
use tally_stream::{EndpointConfig, Entry, LogType, PublishingStatus, Sink};
use tokio::time::Instant;

/// Most records, and about the most bytes, one batch takes.
const READ_LIMITS: ReadLimits = ReadLimits {
    records: 2000,
    bytes: 4 << 20,
};

/// What a stream keeps across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    position: u64,
    status: PublishingStatus,
}

/// The status and position the worker running stream `id` last saved to
/// the cluster's shared files (what a server on a shared log shows).
pub fn shared_status(
    files: &tally_jetstream::SharedFiles,
    id: &str,
) -> Option<(PublishingStatus, u64)> {
    let bytes = files.get(&format!("streams/{id}.json")).ok()??;
    let saved: Saved = serde_json::from_slice(&bytes).ok()?;
    Some((saved.status, saved.position))
}

/// A stream's live state, shared with the API.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Tailscale's status.
    pub status: PublishingStatus,
    /// Plain HTTP to a private address.
    pub unencrypted: bool,
    /// Position delivered through.
    pub position: u64,
    last_secs: f64,
}

/// A running stream: its state and its consumer's task.
type Running = (Arc<Mutex<StreamState>>, tokio::task::JoinHandle<()>);

/// The running streams.
pub struct StreamService {
    secrets: SecretBox,
    client: reqwest::Client,
    dir: PathBuf,
    running: Mutex<HashMap<String, Running>>,
}

fn now_secs() -> f64 {
    tally_proto::timefmt::now_nanos() as f64 / 1e9
}

/// The consumer name of stream `id`.
pub fn consumer_name(id: &str) -> String {
    format!("stream-{id}")
}

impl StreamService {
    /// Opens the secrets key and the streams' state directory.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("streams");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        // The process-wide rustls provider (ring), as the server's own TLS
        // uses; the first caller installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("building the streams' HTTP client: {e}"))?;
        Ok(Self {
            secrets: SecretBox::open(data_dir)?,
            client,
            dir,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Seals a configuration's secrets; returns the configuration without
    /// them and the sealed text.
    pub fn seal(&self, mut config: EndpointConfig) -> anyhow::Result<(EndpointConfig, String)> {
        let secrets = config.take_secrets();
        let sealed = self.secrets.seal(&serde_json::to_vec(&secrets)?)?;
        Ok((config, sealed))
    }

    /// The configuration of `row` with its secrets, ready to run.
    pub fn unseal(&self, row: &StreamRow) -> anyhow::Result<EndpointConfig> {
        let config: EndpointConfig = serde_json::from_str(&row.config)?;
        let secrets: Secrets = serde_json::from_slice(&self.secrets.open_sealed(&row.secrets)?)?;
        Ok(config.with_secrets(secrets))
    }

    /// The sink of a configuration (with secrets) for a log type.
    pub fn sink(
        &self,
        config: &EndpointConfig,
        log_type: LogType,
    ) -> Result<Sink, tally_stream::ConfigError> {
        Sink::new(config, log_type, self.client.clone())
    }

    /// Starts (or restarts) stream `row` on the pipeline.
    pub fn start(&self, pipeline: &Pipeline, row: &StreamRow) -> anyhow::Result<()> {
        self.stop(pipeline, &row.id);
        let log_type = LogType::parse(&row.log_type).ok_or_else(|| {
            anyhow::anyhow!("stream {} has an unknown log type {}", row.id, row.log_type)
        })?;
        let config = self.unseal(row)?;
        let (_, unencrypted) = config.validate()?;
        let sink = self.sink(&config, log_type)?;
        let path = self.dir.join(format!("{}.json", row.id));
        let saved: Saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(stream = %row.id, "{}: {e}; starting from the stream's first position", path.display());
                Saved { position: row.start_position, ..Default::default() }
            }),
            Err(_) => Saved {
                position: row.start_position,
                ..Default::default()
            },
        };
        let state = Arc::new(Mutex::new(StreamState {
            status: saved.status,
            unencrypted,
            position: saved.position,
            last_secs: now_secs(),
        }));
        let consumer = StreamConsumer {
            log_type,
            format: config.format,
            period: config.upload_period(),
            pending: Pending::default(),
            name: consumer_name(&row.id),
            tailnet: row.tailnet_id.clone(),
            collections: config.collections_for(log_type),
            sink,
            position: saved.position,
            state: state.clone(),
            path,
            not_before: None,
        };
        let (_, task) = pipeline
            .spawn(consumer)
            .map_err(|e| anyhow::anyhow!("starting stream {}: {e}", row.id))?;
        self.running.lock().insert(row.id.clone(), (state, task));
        Ok(())
    }

    /// Stops stream `id` (it commits first); its state file stays until
    /// [`StreamService::forget`].
    pub fn stop(&self, pipeline: &Pipeline, id: &str) {
        pipeline.remove(&consumer_name(id));
        self.running.lock().remove(id);
    }

    /// Stops stream `id` and deletes its saved state.
    pub fn forget(&self, pipeline: &Pipeline, id: &str) {
        self.stop(pipeline, id);
        crate::shared_state::remove(&self.dir.join(format!("{id}.json")));
    }

    /// Stream `id`'s state.
    pub fn state(&self, id: &str) -> Option<Arc<Mutex<StreamState>>> {
        self.running.lock().get(id).map(|(s, _)| s.clone())
    }

    /// The running streams' tasks (to await at shutdown).
    pub fn take_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.running.lock().drain().map(|(_, (_, t))| t).collect()
    }
}

/// Entries an object-store destination has gathered, not yet uploaded.
#[derive(Default)]
struct Pending {
    entries: Vec<Entry>,
    bytes: usize,
    /// Read through this position.
    through: Position,
    /// When the first entry was gathered.
    since: Option<Instant>,
}

/// One destination as a consumer of the log.
struct StreamConsumer {
    log_type: LogType,
    format: tally_stream::Format,
    /// Object stores: how long entries are gathered before an upload.
    period: Option<Duration>,
    pending: Pending,
    name: String,
    tailnet: String,
    collections: Vec<String>,
    sink: Sink,
    position: Position,
    state: Arc<Mutex<StreamState>>,
    path: PathBuf,
    /// Not before: the destination's `Retry-After`.
    not_before: Option<Instant>,
}

impl StreamConsumer {
    /// Uploads what an object store gathered.
    async fn flush(&mut self) -> Result<(), ConsumerError> {
        let p = std::mem::take(&mut self.pending);
        self.send(p.entries, p.through).await
    }

    /// Delivers `entries` (read through `through`); on success the
    /// position moves to `through`. On failure, gathered entries are
    /// dropped: the driver reads again from the position.
    async fn send(&mut self, entries: Vec<Entry>, through: Position) -> Result<(), ConsumerError> {
        if entries.is_empty() {
            self.position = through;
            self.state.lock().position = through;
            return Ok(());
        }
        let activity = tally_proto::timefmt::format_nanos(tally_proto::timefmt::now_nanos());
        match self.sink.deliver(&entries).await {
            Ok(d) => {
                let mut s = self.state.lock();
                let StreamState {
                    status, last_secs, ..
                } = &mut *s;
                // Requests of one batch: the entries and bytes on the last.
                for i in 0..d.requests {
                    let last = i + 1 == d.requests;
                    status.record(
                        now_secs(),
                        last_secs,
                        if last {
                            (d.bytes, entries.len() as u64, d.max_body)
                        } else {
                            (0, 0, 0)
                        },
                        None,
                        activity.clone(),
                    );
                }
                s.position = through;
                self.position = through;
                Ok(())
            }
            Err(e) => {
                self.pending = Pending::default();
                let mut s = self.state.lock();
                let StreamState {
                    status, last_secs, ..
                } = &mut *s;
                for _ in 0..e.delivered.requests {
                    status.record(now_secs(), last_secs, (0, 0, 0), None, activity.clone());
                }
                status.record(
                    now_secs(),
                    last_secs,
                    (0, 0, 0),
                    Some(e.message.clone()),
                    activity,
                );
                if let Some(after) = e.retry_after {
                    self.not_before = Some(Instant::now() + after);
                }
                Err(ConsumerError::new(e.message))
            }
        }
    }
}

impl Consumer for StreamConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    fn essential(&self) -> bool {
        false
    }

    fn cancel_safe(&self) -> bool {
        // The position moves only after a confirmed delivery: a delivery
        // dropped at shutdown is sent again after the restart.
        true
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter {
                collections: self.collections.clone(),
                kinds: vec![kind::LOG],
                owner: Some(self.tailnet.clone()),
                ..Default::default()
            },
            include_expired: false,
        }
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }

    fn read_limits(&self) -> ReadLimits {
        READ_LIMITS
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        if let Some(t) = self.not_before.take() {
            // As the destination asked (Retry-After); the wait is dropped
            // if the server stops (cancel-safe).
            tokio::time::sleep_until(t).await;
        }
        let through = batch.next_seq.saturating_sub(1);
        let entries = batch
            .records
            .iter()
            .map(|r| Entry {
                position: r.seq,
                time: r.rec.time,
                body: r.rec.body.clone(),
            })
            .collect();
        // Entries the stream's format cannot write are rejections (shown
        // in /api/v2/consumers), never a stop: the others go on.
        let (entries, unwritable) =
            tally_stream::format::prepare(self.format, self.log_type, entries);
        let handled = Handled {
            through,
            rejected: unwritable
                .into_iter()
                .map(|u| tally_pipeline::Rejection {
                    position: u.position,
                    reason: u.reason,
                })
                .collect(),
        };
        let Some(period) = self.period else {
            self.send(entries, through).await?;
            return Ok(handled);
        };
        // An object store: gather until the period is over or an object
        // is full.
        let p = &mut self.pending;
        for e in entries {
            p.bytes += e.body.len() + 1;
            p.entries.push(e);
        }
        p.through = through;
        if p.entries.is_empty() {
            self.position = through;
            self.state.lock().position = through;
            return Ok(handled);
        }
        let since = *p.since.get_or_insert_with(Instant::now);
        if p.bytes >= tally_stream::sinks::object::MAX_OBJECT || since.elapsed() >= period {
            self.flush().await?;
        }
        Ok(handled)
    }

    async fn tick(&mut self) -> Result<(), ConsumerError> {
        if let (Some(period), Some(since)) = (self.period, self.pending.since)
            && since.elapsed() >= period
        {
            self.flush().await?;
        }
        Ok(())
    }

    fn tick_every(&self) -> Option<Duration> {
        self.period
            .map(|p| p.clamp(Duration::from_millis(200), Duration::from_secs(5)))
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let saved = {
            let s = self.state.lock();
            Saved {
                position: self.position,
                status: s.status.clone(),
            }
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
            crate::shared_state::save(&path, &bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ConsumerError::new(format!("saving the stream's position panicked: {e}")))?
        .map_err(|e| ConsumerError::new(format!("saving the stream's position: {e}")))
    }

    fn commit_every(&self) -> Duration {
        Duration::ZERO
    }
}

/// Starts every configured stream (at server start).
pub async fn start_all(state: &crate::AppState) -> anyhow::Result<()> {
    for row in state.control.streams(None).await? {
        if let Err(e) = state.streams.start(&state.pipeline, &row) {
            tracing::error!(stream = %row.id, tailnet = %row.tailnet_id, "a stream cannot start: {e:#}");
        }
    }
    Ok(())
}

/// A worker's loop: starts, restarts and stops streams as their rows in
/// the control database change (through any server's API), every 5 s.
pub async fn follow_changes(state: crate::AppState) {
    let mut known: HashMap<String, i64> = state
        .streams
        .running
        .lock()
        .keys()
        .map(|id| (id.clone(), i64::MIN))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let rows = match state.control.streams(None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading the streams' configuration: {e}");
                continue;
            }
        };
        for row in &rows {
            let running = state.streams.running.lock().contains_key(&row.id);
            match known.get(&row.id) {
                Some(&u) if u == row.updated => continue,
                // Started from this row when this process started.
                Some(&i64::MIN) if running => {
                    known.insert(row.id.clone(), row.updated);
                    continue;
                }
                _ => {}
            }
            match state.streams.start(&state.pipeline, row) {
                Ok(()) => tracing::info!(stream = %row.id, "stream (re)started after a change"),
                Err(e) => tracing::error!(stream = %row.id, "a stream cannot start: {e:#}"),
            }
            known.insert(row.id.clone(), row.updated);
        }
        let gone: Vec<String> = known
            .keys()
            .filter(|id| !rows.iter().any(|r| &r.id == *id))
            .cloned()
            .collect();
        for id in gone {
            state.streams.forget(&state.pipeline, &id);
            known.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStore as _, ObjectStoreExt as _};
    use tally_store::{NewRecord, Owner, Record};

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Arc<ScanBatch> {
        let next_seq = seqs.end() + 1;
        Arc::new(ScanBatch {
            records: seqs
                .map(|seq| Record {
                    seq,
                    rec: NewRecord {
                        time: 1_700_000_000_000_000_000 + seq as i64,
                        collection: "tailaudit".into(),
                        owner: Owner::Tailnet("t".into()),
                        instance: [0; 32],
                        identity: None,
                        client_time: None,
                        kind: kind::LOG,
                        body: format!("{{\"n\":{seq}}}").into_bytes(),
                    },
                })
                .collect(),
            next_seq,
            truncated: false,
            damaged: Vec::new(),
        })
    }

    /// An object store gathers batches for the upload period, uploads
    /// them as one object, and only then moves its saved position.
    #[tokio::test(start_paused = true)]
    async fn an_object_store_uploads_once_per_period() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = StreamConsumer {
            log_type: LogType::Configuration,
            format: tally_stream::Format::Native,
            period: Some(Duration::from_secs(60)),
            pending: Pending::default(),
            name: "stream-s1".into(),
            tailnet: "t".into(),
            collections: vec!["tailaudit".into()],
            sink: Sink::Objects(tally_stream::sinks::object::Objects::new(
                store.clone(),
                "mem://".into(),
                "p",
                LogType::Configuration,
                tally_stream::config::Compression::None,
            )),
            position: 0,
            state: Arc::new(Mutex::new(StreamState::default())),
            path: dir.path().join("s1.json"),
            not_before: None,
        };
        let listed = || async {
            let mut keys = Vec::new();
            let mut list = store.list(None);
            while let Some(m) = futures_util::StreamExt::next(&mut list).await {
                keys.push(m.expect("meta").location.to_string());
            }
            keys
        };
        assert_eq!(c.handle(batch(1..=3)).await.expect("batch").through, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        c.tick().await.expect("tick");
        assert_eq!(c.handle(batch(4..=5)).await.expect("batch").through, 5);
        assert!(listed().await.is_empty(), "nothing before the period ends");
        assert_eq!(c.position(), 0, "the saved position waits for the upload");
        tokio::time::advance(Duration::from_secs(31)).await;
        c.tick().await.expect("tick");
        let keys = listed().await;
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(
            keys[0].ends_with("00000000000000000001-00000000000000000005.ndjson"),
            "{keys:?}"
        );
        let body = store
            .get(&object_store::path::Path::from(keys[0].as_str()))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 5);
        assert_eq!(c.position(), 5);
        assert_eq!(c.state.lock().status.num_entries_sent, 5);
    }
}
