//! Tally server: the logs-service HTTP API over the store, and the control
//! plane (tailnets, users, keys, nodes, settings, configuration audit log)
//! over the control database. Every route and its access rule is in
//! [`api::table`].

pub mod api;
pub mod console;
pub mod consumers;
pub mod control;
pub mod error;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod recorder;
pub mod serve;
pub mod shared_state;
pub mod tls;

pub use tally_jetstream::JetStreamConfig;
pub use tally_jetstream::archive::ArchiveConfig;

use anyhow::Context;
use consumers::{flows, merkle_log, reconcile};
use control::ControlDb;
use control::catalog::{self, Catalog};
use control::retention::RetentionRules;
use ingest::{batches, budget, instances::InstanceStats};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tally_store::{SharedLog, Store, StoreConfig};
use tokio::net::TcpListener;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Data directory (store, catalog).
    pub data_dir: PathBuf,
    /// A fixed bootstrap admin key (for automation); generated when `None`.
    pub bootstrap_key: Option<String>,
    /// The default tailnet's `logsRetentionDays` when it is created (first
    /// start), in days; later changed with the tailnet settings.
    pub default_retention_days: u32,
    /// Bytes an instance that belongs to no tailnet may store per 12 hours,
    /// per collection.
    pub unadopted_cap_bytes: u64,
    /// Bytes all instances that belong to no tailnet may store together per
    /// 12 hours (then 429).
    pub unclaimed_budget_bytes: u64,
    /// Bytes each tailnet may store per 12 hours (then 429); unlimited when `None`.
    pub tailnet_budget_bytes: Option<u64>,
    /// Accept uploads only from registered nodes and adopted instances.
    pub registered_only: bool,
    /// Time a client has to send a request's headers (also closes HTTP/1
    /// connections idle that long).
    pub header_read_timeout: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Most uploads processed at once before answering 429.
    pub max_concurrent_uploads: usize,
    /// Memory budget of uploads in progress, in bytes: each upload reserves
    /// an estimate of what it will hold (see [`ingest::reservation`]) before
    /// its body is read, and waits while the budget is used up.
    pub ingest_memory_budget: usize,
    /// How long an upload waits for room in the budget before it is
    /// answered 503 with `Retry-After`.
    pub ingest_budget_wait: Duration,
    /// Store tuning (the embedded store).
    pub store: Option<StoreConfig>,
    /// The shared log on NATS JetStream instead of the embedded store
    /// (`--log nats://...`): any number of servers share it.
    pub jetstream: Option<tally_jetstream::JetStreamConfig>,
    /// What this process runs (see [`Role`]).
    pub role: Role,
    /// How long a worker's lease lasts without renewal (a crashed worker's
    /// consumers move to another within it).
    pub lease_ttl: Duration,
    /// Sealed data in an S3-compatible bucket (`--archive`), on a shared log.
    pub archive: Option<tally_jetstream::archive::ArchiveConfig>,
    /// How much of the log stays in the stream once archived (`--log-hot`).
    pub log_hot: Duration,
    /// How long a segment is written before it is uploaded (`--archive-every`).
    pub archive_every: Duration,
    /// How long a window of flow records stays open (in memory, queried
    /// there) before it is sealed into a file (`--flow-window`, 1 h).
    pub flow_window: Duration,
    /// How long after its end a flow window waits for late records
    /// (`--flow-grace`, 5 min).
    pub flow_grace: Duration,
    /// TLS certificate chain and key (PEM); plain HTTP when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// PostgreSQL URL of the control database; SQLite `control.db` in the
    /// data directory when `None`.
    pub control_db: Option<String>,
    /// How often agents report in (and so how fast they learn a setting
    /// change such as flow logging on/off), in seconds.
    pub agent_report_seconds: u64,
    /// Reconciliation tuning (windows, grace period, tolerances).
    pub reconcile: tally_reconcile::Config,
    /// Transparency-log epochs hold `2^log_epoch_bits` leaves (a multiple
    /// of 4 from 8 to 56; fixed when the log is created).
    pub log_epoch_bits: u32,
    /// Where the session recorder listens (tailscaled's recorder
    /// protocol); off when `None`.
    pub recorder_listen: Option<SocketAddr>,
    /// Who may record.
    pub recorder: recorder::RecorderConfig,
}

impl ServerConfig {
    /// Defaults for `data_dir` and `listen`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            bootstrap_key: None,
            default_retention_days: 30,
            unadopted_cap_bytes: 10 << 20,
            unclaimed_budget_bytes: 64 << 20,
            tailnet_budget_bytes: None,
            registered_only: false,
            header_read_timeout: serve::HEADER_READ_TIMEOUT,
            retention_interval: Duration::from_secs(60),
            max_concurrent_uploads: 512,
            ingest_memory_budget: 32 << 20,
            ingest_budget_wait: Duration::from_secs(5),
            store: None,
            jetstream: None,
            role: Role::All,
            lease_ttl: Duration::from_secs(15),
            archive: None,
            log_hot: Duration::from_secs(24 * 3600),
            archive_every: Duration::from_secs(300),
            flow_window: Duration::from_secs(3600),
            flow_grace: Duration::from_secs(300),
            tls: None,
            control_db: None,
            agent_report_seconds: 30,
            reconcile: tally_reconcile::Config::default(),
            log_epoch_bits: merkle_log::DEFAULT_EPOCH_BITS,
            recorder_listen: None,
            recorder: recorder::RecorderConfig::default(),
        }
    }
}

/// What a process runs. With the embedded store one process runs
/// everything; on a JetStream log the work is split so that any number of
/// servers can share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ingest, queries and every consumer (the embedded store).
    All,
    /// `tally server` on a shared log: ingest, queries and the consumers
    /// that build this process's read indexes (flow index, transparency
    /// log, recordings' index, batch chains).
    Api,
    /// `tally worker`: the consumers that must run once per cluster
    /// (reconciliation, detection, streams, the audit outbox), while it
    /// holds the workers' lease.
    Worker,
}

impl Role {
    /// Whether this process builds read indexes.
    pub fn runs_indexes(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    /// Whether this process runs the once-per-cluster consumers.
    pub fn runs_singletons(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// What a process on a JetStream log holds beside the log.
pub struct Cluster {
    /// The log itself.
    pub log: Arc<tally_jetstream::JetStreamLog>,
    /// Keys and consumer state shared by every process.
    pub files: tally_jetstream::SharedFiles,
    /// The workers' lease, held by a worker.
    pub lease: Option<tally_jetstream::Lease>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<ServerConfig>,
    /// The log (the embedded store, through the log seam).
    pub store: SharedLog,
    /// The consumers of the log.
    pub pipeline: Arc<tally_pipeline::Pipeline>,
    /// Metrics (`GET /metrics`).
    pub metrics: Arc<metrics::Metrics>,
    /// The server operator's tailnet (its owners and admins have
    /// `server:operate`).
    pub operator_tailnet: String,
    /// Cached collections and adoptions.
    pub catalog: Arc<Catalog>,
    /// The control database.
    pub control: ControlDb,
    /// Typed flow records (fed from the store's `tailtraffic` records).
    pub flows: Arc<tally_flowstore::FlowStore>,
    /// Double-entry reconciliation of flow records.
    pub reconcile: Arc<reconcile::ReconcileService>,
    /// Detection: the built-in rules and the signal that rules changed.
    pub detection: Arc<consumers::detection::DetectionService>,
    /// Streaming destinations: their secrets, consumers and status.
    pub streams: Arc<consumers::stream::StreamService>,
    /// The recordings' index (kept by the `recording-index` consumer).
    pub recordings: Arc<consumers::recording_index::RecordingIndex>,
    /// The transparency log (Merkle tree and signed checkpoints).
    pub log: Arc<merkle_log::MerkleLog>,
    /// Chains and keys of signed upload batches.
    pub batches: Arc<batches::BatchLedger>,
    /// Per-instance statistics.
    pub instances: Arc<InstanceStats>,
    /// Ingest budgets' bytes in flight.
    pub budgets: Arc<budget::Budgets>,
    /// Upload concurrency limit.
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// Upload memory budget, one permit per KiB.
    pub ingest_budget: Arc<tokio::sync::Semaphore>,
    /// Decoding and parsing of upload bodies running at once: one per CPU.
    pub parse_slots: Arc<tokio::sync::Semaphore>,
    /// Failed console sign-ins per address and login.
    pub sign_ins: Arc<api::session::SignInLimiter>,
    /// The cluster's shared files, on a JetStream log.
    pub shared_files: Option<tally_jetstream::SharedFiles>,
    /// The JetStream log itself (the archive consumer purges it).
    pub jetstream: Option<Arc<tally_jetstream::JetStreamLog>>,
    /// Cancelled when graceful shutdown begins: held requests (agents'
    /// long polls) answer at once so that draining does not wait for them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The HTTP routes (see [`api::table`]).
pub fn router(state: AppState) -> axum::Router {
    api::router(state)
}

/// Where each store consumer is: the store position it has read through.
#[derive(Clone)]
pub struct Progress {
    pipeline: Arc<tally_pipeline::Pipeline>,
}

impl Progress {
    /// The store's end: the position the next record gets.
    pub fn end(&self) -> u64 {
        self.pipeline.log().end_seq()
    }

    /// `(consumer, position read through)` of every consumer.
    pub fn positions(&self) -> Vec<(String, u64)> {
        self.pipeline
            .statuses()
            .into_iter()
            .map(|s| (s.name.to_owned(), s.position))
            .collect()
    }
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    /// The session recorder's listener, when it is on.
    recorder: Option<TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    /// The bootstrap key, when it was generated (or added) at this start.
    pub new_bootstrap_key: Option<String>,
    /// What store recovery found.
    pub recovery: tally_store::RecoveryReport,
    /// Where the consumers resume.
    resume: consumers::Resume,
    /// The embedded store behind [`AppState::store`] (tests drive it);
    /// `None` on a JetStream log.
    embedded: Option<Arc<Store>>,
    /// The JetStream log's shared parts, when the log is there.
    cluster: Option<Cluster>,
    /// The audit outbox, loaded.
    outbox: control::outbox::AuditOutbox,
}

/// `tally server reset-admin-key`: adds a new admin API key (no expiry)
/// for the first owner of the operator's tailnet and returns its secret.
/// For an operator who lost the bootstrap key; audited as a `CREATE` of
/// the key by the system. Works while the server runs.
pub async fn reset_admin_key(
    data_dir: &std::path::Path,
    control_db: Option<&str>,
) -> anyhow::Result<String> {
    if control_db.is_none() && !data_dir.join("control.db").is_file() {
        anyhow::bail!(
            "{} has no control.db: start `tally server --data-dir {}` once (it prints the bootstrap key), or give the --control-db the server uses",
            data_dir.display(),
            data_dir.display()
        );
    }
    let control = ControlDb::open(control_db, data_dir)
        .await
        .context("cannot open the control database")?;
    let result = async {
        let tailnet = control
            .operator_tailnet()
            .await
            .context("the control database has no tailnet yet; start the server once")?;
        let owner = control.first_owner(&tailnet).await?;
        let key = catalog::generate_key();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let description: String =
            format!("admin key from `tally server reset-admin-key` on {host}")
                .chars()
                .take(100)
                .collect();
        catalog::add_bootstrap_key(&control, &tailnet, &owner, &key, &description).await?;
        anyhow::Ok(key)
    }
    .await;
    control.close().await;
    result
}

impl Server {
    /// Opens the data directory, recovers the store, and binds the socket.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls::load_config(cert, key)?),
            None => None,
        };
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        // Before anything is created (the default tailnet, its bootstrap
        // key): a second server on this directory, or a busy port, fails
        // here and a first start that fails loses nothing.
        let data_dir_lock = reconcile::lock_data_dir(&config.data_dir)?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (is another server running? use --listen)",
                config.listen
            )
        })?;
        let recorder = match config.recorder_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for the recorder (--recorder-listen)")
            })?),
            None => None,
        };
        let rules = Arc::new(RetentionRules::default());
        let control = ControlDb::open(config.control_db.as_deref(), &config.data_dir)
            .await
            .context("cannot open the control database")?;
        let (tailnet, created) = control.ensure_default_tailnet().await?;
        let owner = control.first_owner(&tailnet.id).await?;
        if created {
            catalog::seed_collections(&control, &config.data_dir, &tailnet.id, &owner).await?;
            if config.default_retention_days != 30 {
                let mut patch = serde_json::Map::new();
                patch.insert(
                    "logsRetentionDays".into(),
                    config.default_retention_days.into(),
                );
                control
                    .update_settings(&tailnet.id, &control::audit::AuditContext::system(), &patch)
                    .await?;
            }
        }
        let mut new_bootstrap_key = None;
        if let Some(k) = &config.bootstrap_key {
            if k.len() < 16 {
                anyhow::bail!("TALLY_BOOTSTRAP_KEY must be at least 16 characters");
            }
            catalog::add_bootstrap_key(
                &control,
                &tailnet.id,
                &owner,
                k,
                "bootstrap admin key (TALLY_BOOTSTRAP_KEY)",
            )
            .await?;
        } else if created {
            let k = catalog::generate_key();
            catalog::add_bootstrap_key(&control, &tailnet.id, &owner, &k, "bootstrap admin key")
                .await?;
            new_bootstrap_key = Some(k);
        }
        let catalog = Catalog::new(rules.clone());
        let log_policy: Arc<dyn tally_store::RetentionPolicy> = rules.clone();
        catalog.reload(&control).await?;
        let catalog = Arc::new(catalog);
        let (store, embedded, recovery, cluster) = match &config.jetstream {
            Some(js) => {
                let cluster = open_cluster(&config, js, rules).await?;
                let log = cluster.log.clone() as SharedLog;
                (
                    log,
                    None,
                    tally_store::RecoveryReport::default(),
                    Some(cluster),
                )
            }
            None => {
                if config.role != Role::All {
                    anyhow::bail!(
                        "a worker needs the shared log: give it --log nats://... as the servers have"
                    );
                }
                let (store, recovery) = open_embedded(&config, rules, &catalog).await?;
                (store.clone() as SharedLog, Some(store), recovery, None)
            }
        };
        // With an archive, the worker owns the bucket's flow files and the
        // servers read them.
        let flow_tier = cluster.as_ref().and_then(|c| {
            let archive = c.log.archive()?.bucket().clone();
            let held = c.lease.as_ref().map(|l| l.held_flag());
            let role = if held.is_some() {
                tally_flowstore::BucketRole::Owner
            } else {
                tally_flowstore::BucketRole::Reader
            };
            Some(tally_flowstore::Tier {
                bucket: Arc::new(flows::ArchiveBucket::new(archive, held)),
                role,
            })
        });
        let flow_config = tally_flowstore::FlowStoreConfig {
            window: config.flow_window,
            grace: config.flow_grace,
            ..Default::default()
        };
        let (flow_store, flow_checkpoint) = {
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || flows::open(&dir, flow_config, flow_tier))
                .await
                .context("opening the flow store panicked")??
        };
        let batch_ledger = {
            let store = store.clone();
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || batches::BatchLedger::open(&dir, store.as_ref()))
                .await
                .context("batch ledger recovery panicked")??
        };
        let transparency_log = merkle_log::MerkleLog::open(
            &config.data_dir,
            store.clone(),
            log_policy,
            config.log_epoch_bits,
        )
        .context("cannot open the transparency log")?;
        if let Some(embedded) = &embedded {
            merkle_log::after_recovery(embedded, &transparency_log, &recovery)
                .await
                .context("lining the store up with the transparency log")?;
        }
        let (reconciler, reconcile_pos, reconcile_written) =
            reconcile::ReconcileService::open(&config.data_dir, config.reconcile, data_dir_lock)?;
        let detection = Arc::new(consumers::detection::DetectionService::new()?);
        let detection_state = consumers::detection::Detection::open(
            detection.clone(),
            store.clone(),
            control.clone(),
            &config.data_dir,
        )?;
        let streams = Arc::new(consumers::stream::StreamService::open(&config.data_dir)?);
        let (recordings, recording_consumer) = consumers::recording_index::IndexConsumer::open(
            &config.data_dir,
            Some(catalog.clone()),
        )?;
        let config_data_dir = config.data_dir.clone();
        if let Some(c) = &cluster
            && let Some(lease) = &c.lease
        {
            shared_state::register(&config.data_dir, c.files.clone(), lease.held_flag());
        }
        let state = AppState {
            instances: Arc::new(InstanceStats::open(
                config.data_dir.join("instances-v2.json"),
            )),
            budgets: Arc::new(budget::Budgets::default()),
            sign_ins: Arc::new(api::session::SignInLimiter::default()),
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads)),
            ingest_budget: Arc::new(tokio::sync::Semaphore::new(ingest::budget_permits(
                config.ingest_memory_budget,
            ))),
            parse_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            pipeline: Arc::new(tally_pipeline::Pipeline::new(
                store.clone(),
                Some(config.data_dir.join("consumers")),
            )),
            metrics: Arc::new(metrics::Metrics::new()),
            operator_tailnet: control.operator_tailnet().await?,
            config: Arc::new(config),
            store: store.clone(),
            catalog,
            control,
            flows: flow_store,
            batches: Arc::new(batch_ledger),
            log: Arc::new(transparency_log),
            reconcile: Arc::new(reconciler),
            detection,
            streams,
            recordings,
            shutdown: tokio_util::sync::CancellationToken::new(),
            shared_files: cluster.as_ref().map(|c| c.files.clone()),
            jetstream: cluster.as_ref().map(|c| c.log.clone()),
        };
        Ok(Self {
            listener,
            recorder,
            tls,
            state,
            new_bootstrap_key,
            recovery,
            resume: consumers::Resume {
                flow_checkpoint,
                reconcile: (reconcile_pos, reconcile_written),
                detection: parking_lot::Mutex::new(Some(detection_state)),
                recordings: parking_lot::Mutex::new(Some(recording_consumer)),
            },
            embedded,
            cluster,
            outbox: control::outbox::AuditOutbox::open(&config_data_dir)?,
        })
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The control database (tests and benchmarks inspect it).
    pub fn control(&self) -> ControlDb {
        self.state.control.clone()
    }

    /// The catalog (tests see agents' long polls waiting on it).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.state.catalog.clone()
    }

    /// The embedded store (tests drive retention with it); `None` when
    /// the log is on JetStream.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.embedded.clone()
    }

    /// The store consumers' progress (benchmarks wait on it).
    pub fn progress(&self) -> Progress {
        Progress {
            pipeline: self.state.pipeline.clone(),
        }
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The recorder's address, when it is on.
    pub fn recorder_addr(&self) -> Option<SocketAddr> {
        self.recorder.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then closes the store.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        memory::start_trimmer();
        let background = tokio::spawn(background_tasks(state.clone()));
        let role = state.config.role;
        let mut helpers = vec![background];
        let consumer_tasks = consumers::start(&state, &self.resume)?;
        if role.runs_singletons() {
            helpers.push(tokio::spawn(control::outbox::run(
                state.clone(),
                self.outbox,
            )));
            consumers::stream::start_all(&state)
                .await
                .context("starting the streams")?;
        }
        if role == Role::Worker {
            // Streams changed through any server start here.
            helpers.push(tokio::spawn(consumers::stream::follow_changes(
                state.clone(),
            )));
        }
        let app = router(state.clone());
        // A worker that lost its lease stops as if asked to, then fails.
        let lease_lost = self
            .cluster
            .as_ref()
            .and_then(|c| c.lease.as_ref())
            .map(|l| l.lost());
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Held long polls end as soon as shutdown begins.
        let shutdown = {
            let token = state.shutdown.clone();
            let lost = lost.clone();
            async move {
                match lease_lost {
                    Some(l) => tokio::select! {
                        () = shutdown => {}
                        () = l => lost.store(true, std::sync::atomic::Ordering::Release),
                    },
                    None => shutdown.await,
                }
                token.cancel();
            }
        };
        let header_timeout = state.config.header_read_timeout;
        let recorder = self.recorder.map(|l| {
            let app = recorder::router(state.clone());
            let stop = state.shutdown.clone().cancelled_owned();
            tokio::spawn(serve::serve(l, app, header_timeout, stop))
        });
        match self.tls {
            Some(config) => {
                let listener =
                    tls::TlsListener::new(self.listener, config).context("TLS listener")?;
                serve::serve(listener, app, header_timeout, shutdown).await;
            }
            None => serve::serve(self.listener, app, header_timeout, shutdown).await,
        }
        if let Some(r) = recorder {
            let _ = r.await;
        }
        // Stop the background tasks and wait until they are gone, so that
        // no control-database connection is still out when the pool closes
        // (SQLite folds its WAL back into control.db on the last close).
        // The consumers commit and stop; then the rest.
        state.pipeline.stop();
        for task in consumer_tasks.into_iter().chain(state.streams.take_tasks()) {
            if tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .is_err()
            {
                tracing::warn!("a consumer did not stop within 30 s");
            }
        }
        for task in helpers {
            task.abort();
            let _ = task.await;
        }
        let _ = state.instances.save_if_dirty();
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .ok();
        state.control.close().await;
        shared_state::unregister(&state.config.data_dir);
        // Dropping the lease hands it over at once.
        drop(self.cluster);
        if lost.load(std::sync::atomic::Ordering::Acquire) {
            anyhow::bail!(
                "this worker lost the workers' lease (NATS unreachable or the process stalled for a lease time); it stopped so that it can start again as a standby"
            );
        }
        Ok(())
    }
}

/// Opens the log on JetStream and its shared files; a worker waits for
/// the workers' lease, then takes the last holder's state.
async fn open_cluster(
    config: &ServerConfig,
    js: &tally_jetstream::JetStreamConfig,
    rules: Arc<RetentionRules>,
) -> anyhow::Result<Cluster> {
    if config.role == Role::All {
        anyhow::bail!(
            "on a shared log (--log nats://...) run `tally server` for ingest and queries and `tally worker` for the consumers that run once"
        );
    }
    let log = tally_jetstream::JetStreamLog::open(js.clone(), rules)
        .await
        .context("cannot open the log on NATS JetStream (--log)")?;
    let files = tally_jetstream::SharedFiles::open(&log)
        .await
        .context("cannot open the cluster's shared files")?;
    if let Some(a) = &config.archive {
        let (a, f) = (a.clone(), files.clone());
        let archive =
            tokio::task::spawn_blocking(move || tally_jetstream::archive::Archive::open(&a, f))
                .await
                .context("opening the archive panicked")?
                .context("cannot open the archive (--archive)")?;
        log.set_archive(archive);
    }
    let lease = match config.role {
        Role::Worker => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            let holder = format!(
                "{host}:{}:{}",
                std::process::id(),
                config.data_dir.display()
            );
            Some(
                tally_jetstream::Lease::acquire(&log, "workers", &holder, config.lease_ttl)
                    .await
                    .context("cannot take the workers' lease")?,
            )
        }
        _ => None,
    };
    let (dir, f, everything) = (config.data_dir.clone(), files.clone(), lease.is_some());
    let restored = tokio::task::spawn_blocking(move || {
        let n = shared_state::restore(&dir, &f, everything)?;
        // Before the transparency log and the streams load them.
        shared_state::share_keys(&dir, &f)?;
        anyhow::Ok(n)
    })
    .await
    .context("restoring shared state panicked")??;
    if everything {
        tracing::info!(files = restored, "took the workers' state from the cluster");
    }
    Ok(Cluster { log, files, lease })
}

/// Opens (recovers) the embedded store and gives records of versions
/// before owners their tailnet.
async fn open_embedded(
    config: &ServerConfig,
    rules: Arc<RetentionRules>,
    catalog: &Arc<Catalog>,
) -> anyhow::Result<(Arc<Store>, tally_store::RecoveryReport)> {
    let store_config = config
        .store
        .clone()
        .unwrap_or_else(|| StoreConfig::new(config.data_dir.join("store")));
    let (store, recovery) = tokio::task::spawn_blocking(move || Store::open(store_config, rules))
        .await
        .context("store recovery panicked")?
        .context("cannot open the store")?;
    let catalog = catalog.clone();
    let claimed = store
        .claim_legacy(move |r| catalog.legacy_owner(r))
        .await
        .context("giving records of an earlier version their tailnet")?;
    if claimed > 0 {
        tracing::info!(
            records = claimed,
            "records of an earlier version were given the tailnet of their instance"
        );
    }
    Ok((store, recovery))
}

async fn background_tasks(state: AppState) {
    let mut retention = tokio::time::interval(state.config.retention_interval);
    let mut stats = tokio::time::interval(Duration::from_secs(5));
    let mut audit = tokio::time::interval(Duration::from_secs(3600));
    let mut batch_through = 0u64;
    loop {
        tokio::select! {
            _ = retention.tick() => {
                let store = state.store.clone();
                let now = tally_proto::timefmt::now_nanos();
                match tokio::task::spawn_blocking(move || store.enforce_retention(now)).await {
                    Ok(Ok(r)) if r.records_deleted > 0 => tracing::info!(
                        deleted = r.records_deleted, segments_deleted = r.segments_deleted, segments_rewritten = r.segments_rewritten,
                        "retention removed expired entries"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!("retention pass failed (will retry): {e}"),
                    Err(e) => tracing::error!("retention pass panicked: {e}"),
                }
                flows::enforce_retention(&state).await;
            }
            _ = stats.tick() => {
                // Everything stored before the previous tick was applied
                // (on a shared log the batch-chains consumer saves instead).
                if state.shared_files.is_none()
                    && let Err(e) = state.batches.save_if_dirty(batch_through)
                {
                    tracing::warn!("saving batch chain state failed: {e}");
                }
                batch_through = state.store.end_seq().saturating_sub(1);
                if let Err(e) = state.instances.save_if_dirty() {
                    tracing::warn!("saving instance statistics failed: {e}");
                }
                if let Err(e) = state.catalog.reload(&state.control).await {
                    tracing::warn!("reloading collections from the control database failed: {e}");
                }
            }
            _ = audit.tick() => {
                if let Err(e) = state.control.audit_retention(tally_proto::timefmt::now_nanos()).await {
                    tracing::error!("audit log retention failed (will retry): {e}");
                }
            }
        }
    }
}
