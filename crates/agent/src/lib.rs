//! The Tally node agent: log sources, a bounded disk queue and the uploader.
//!
//! Lines from the agent's stdin, from followed files and from the local
//! socket (`tally agent log`) become logtail entries, are fsynced in a
//! bounded disk queue (`<data-dir>/queue/`) and are uploaded to
//! `POST {server}/c/{collection}/{private-id}` following the logs-service
//! protocol. See `DESIGN.md`, "Compatibility targets".
//!
//! Start with [`run`] (until SIGINT/SIGTERM), [`run_until`] (until a future
//! resolves) or [`Agent::start`] and [`Agent::shutdown`].

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tally_proto::logtail::MAX_BODY_BYTES;
use tally_proto::{CollectionName, PublicId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod addrs;
mod containers;
mod entry;
mod error;
mod flows;
mod follow;
mod globbing;
mod history;
mod identity;
mod journal;
mod lines;
mod pipeline;
mod queue;
mod report;
mod signing;
mod socket;
mod stdin;
mod syslog;
mod uploader;
mod witness;
mod writer;

pub use addrs::interface_addresses;
pub use containers::{
    CONTAINER_SOURCE, ContainerOptions, DEFAULT_CRI_LOG_DIR, DEFAULT_DOCKER_ROOT,
};
pub use error::AgentError;
pub use flows::{FLOW_SOURCE, FlowOptions};
pub use history::{LocalLog, QUEUE_DIR, recent_logs};
pub use identity::{IdentityError, PRIVATE_ID_FILE, load_or_create_identity, read_identity};
pub use journal::JournalOptions;
pub use queue::QueueError;
pub use report::{NODE_ID_FILE, NodeInfo, NodeSettings, Peer, hostname};
pub use signing::NODE_KEY_FILE;
pub use socket::{
    LogReceipt, RecordingClient, RecordingHello, SOCKET_FILE, SocketError, log_via_socket,
};
pub use tally_flow::TableConfig;
pub use uploader::UploadStatus;

use pipeline::{Pipeline, PipelineSpec, UploadSettings};

/// Default collection of node logs.
pub const DEFAULT_COLLECTION: &str = "tailnode";
/// Collection of network flow records.
pub const FLOWS_COLLECTION: &str = "tailtraffic";
/// Queue directory of flow records, in the data directory.
pub const FLOW_QUEUE_DIR: &str = "flow-queue";
/// Collection of session recordings (`tally record`).
pub const RECORDINGS_COLLECTION: &str = "recordings";
/// Queue directory of session recordings, in the data directory.
pub const RECORDING_QUEUE_DIR: &str = "recording-queue";
/// Default size limit of the disk queue.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 50 << 20;
/// Smallest disk queue accepted.
pub const MIN_QUEUE_MAX_BYTES: u64 = 1 << 20;
/// Name of the lock file that keeps two agents off one data directory.
const LOCK_FILE: &str = "agent.lock";
/// Requests buffered between the sources and the queue writer.
pub(crate) const CHANNEL_CAPACITY: usize = 64;
/// Longest followed path accepted (it is stored with every entry).
const MAX_PATH_BYTES: usize = 4096;

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of the Tally server (`https://logs.example.com`); required
    /// unless `no_logs_no_support`.
    pub server: Option<String>,
    /// Directory of the identity, the queue, the socket and the lock.
    pub data_dir: PathBuf,
    /// Collection to upload to (`[a-zA-Z0-9-_.]+`).
    pub collection: String,
    /// Files to follow.
    pub follow: Vec<PathBuf>,
    /// Read the agent's own stdin, one entry per line.
    pub read_stdin: bool,
    /// Size limit of the disk queue in bytes.
    pub queue_max_bytes: u64,
    /// Upload nothing (no network at all); keep logs in the local queue.
    pub no_logs_no_support: bool,
    /// How long entries gather before a batch is sent (unless it is full).
    pub flush_delay: Duration,
    /// Shortest wait before retrying an upload without `Retry-After`.
    pub backoff_min: Duration,
    /// Longest wait before retrying an upload without `Retry-After`.
    pub backoff_max: Duration,
    /// Cap of every wait, `Retry-After` included.
    pub max_sleep: Duration,
    /// Largest uncompressed batch body.
    pub batch_max_bytes: usize,
    /// How often followed files are checked.
    pub poll_interval: Duration,
    /// Shortest time between two fsyncs of the queue (group commit).
    pub fsync_interval: Duration,
    /// Trust only this CA (PEM) for the server's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Auth key to register the node with (first start); once registered
    /// (`<data-dir>/node-id`), the agent reports in without it.
    pub auth_key: Option<String>,
    /// What the agent reports about its node. Empty `addresses` (no
    /// `--address`): the agent finds them itself, on the flow interfaces
    /// and from `tailscale ip`, before every report.
    pub node: NodeInfo,
    /// How often the agent reports in when the server does not say.
    pub report_interval: Duration,
    /// Network flow logging (captures while the tailnet has it on).
    pub flows: Option<FlowOptions>,
    /// `--syslog-listen`: a local syslog listener (UDP and TCP) feeding
    /// the node's log.
    pub syslog_listen: Option<std::net::SocketAddr>,
    /// `--journal`: the systemd journal as a source.
    pub journal: Option<JournalOptions>,
    /// `--containers`: Docker's and the CRI's container logs as a source.
    pub containers: Option<ContainerOptions>,
}

impl AgentConfig {
    /// A configuration with the defaults of the logs-service protocol
    /// (2 s flush delay, 30–60 s backoff, 5 min cap, 256 KiB batches), the
    /// `tailnode` collection and a 50 MiB queue.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            server: None,
            data_dir: data_dir.into(),
            collection: DEFAULT_COLLECTION.to_owned(),
            follow: Vec::new(),
            read_stdin: false,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            no_logs_no_support: false,
            flush_delay: Duration::from_secs(2),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
            max_sleep: Duration::from_secs(300),
            batch_max_bytes: 256 << 10,
            poll_interval: Duration::from_millis(250),
            fsync_interval: Duration::from_millis(50),
            ca_cert: None,
            auth_key: None,
            node: NodeInfo {
                hostname: hostname(),
                os: std::env::consts::OS.to_owned(),
                ..NodeInfo::default()
            },
            report_interval: Duration::from_secs(30),
            flows: None,
            syslog_listen: None,
            journal: None,
            containers: None,
        }
    }

    /// Checks the configuration.
    fn validate(&self) -> Result<Validated, AgentError> {
        let bad = |msg: String| Err(AgentError::Config(msg));
        if CollectionName::parse(&self.collection).is_err() {
            return bad(format!(
                "invalid collection name {:?}: use letters, digits, '-', '_' and '.'",
                self.collection
            ));
        }
        if self.queue_max_bytes < MIN_QUEUE_MAX_BYTES {
            return bad(format!(
                "the disk queue must be at least 1 MiB, not {} bytes",
                self.queue_max_bytes
            ));
        }
        if self.backoff_min > self.backoff_max {
            return bad("backoff_min is larger than backoff_max".into());
        }
        if self.batch_max_bytes == 0 || self.batch_max_bytes > MAX_BODY_BYTES / 2 {
            return bad(format!(
                "batch_max_bytes must be between 1 and {}",
                MAX_BODY_BYTES / 2
            ));
        }
        if self.no_logs_no_support && self.flows.is_some() {
            return bad(
                "--flows cannot be combined with --no-logs-no-support (nothing would be uploaded)"
                    .into(),
            );
        }
        // With --no-logs-no-support a server is still used for registration
        // and reports (so the node is known as opted out), never for uploads.
        let server = match (&self.server, self.no_logs_no_support) {
            (None, true) => None,
            (None, false) => {
                return bad("no server to upload logs to: pass --server URL or set TALLY_SERVER (or pass --no-logs-no-support to keep logs on this node only)".into());
            }
            (Some(s), _) => {
                let url = reqwest::Url::parse(s)
                    .map_err(|e| AgentError::Config(format!("invalid server URL {s:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https")
                    || url.query().is_some()
                    || url.fragment().is_some()
                {
                    return bad(format!(
                        "invalid server URL {s:?}: use http(s)://host[:port][/path]"
                    ));
                }
                Some(s.trim_end_matches('/').to_owned())
            }
        };
        let mut seen = BTreeSet::new();
        let mut follow = Vec::new();
        let mut patterns = Vec::new();
        for p in &self.follow {
            if let Some(pattern) = p.to_str().filter(|s| is_pattern(s)) {
                let abs = std::path::absolute(pattern)
                    .map_err(|e| AgentError::Config(format!("cannot follow {pattern}: {e}")))?;
                let abs = abs.to_string_lossy().into_owned();
                glob::Pattern::new(&abs).map_err(|e| {
                    AgentError::Config(format!(
                        "--follow {pattern:?} is not a valid pattern: {e} (use *, ? and [...])"
                    ))
                })?;
                patterns.push(abs);
                continue;
            }
            let abs = std::path::absolute(p)
                .map_err(|e| AgentError::Config(format!("cannot follow {}: {e}", p.display())))?;
            let Some(key) = abs.to_str() else {
                return bad(format!(
                    "cannot follow {}: the path is not valid UTF-8",
                    abs.display()
                ));
            };
            if key.len() > MAX_PATH_BYTES {
                return bad(format!(
                    "cannot follow {}: the path is too long",
                    abs.display()
                ));
            }
            if seen.insert(key.to_owned()) {
                let key: Arc<str> = Arc::from(key);
                follow.push((abs, key));
            }
        }
        let containers = match &self.containers {
            Some(opts) => {
                let abs = |dir: &Option<PathBuf>| -> Result<Option<PathBuf>, AgentError> {
                    dir.as_ref()
                        .map(|d| {
                            std::path::absolute(d).map_err(|e| {
                                AgentError::Config(format!(
                                    "--containers: bad directory {}: {e}",
                                    d.display()
                                ))
                            })
                        })
                        .transpose()
                };
                Some(ContainerOptions {
                    docker_root: abs(&opts.docker_root)?,
                    cri_log_dir: abs(&opts.cri_log_dir)?,
                })
            }
            None => None,
        };
        Ok(Validated {
            server,
            follow,
            patterns,
            containers,
        })
    }
}

/// Whether a `--follow` value is a glob pattern (`*`, `?` or `[`).
fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// A checked configuration's derived values.
struct Validated {
    /// Base URL to upload to, without a trailing slash; `None`: no uploads.
    server: Option<String>,
    /// Followed paths, absolute and deduplicated, with their UTF-8 form.
    follow: Vec<(PathBuf, Arc<str>)>,
    /// `--follow` glob patterns, absolute; their matches are followed too,
    /// and new matches are picked up while the agent runs.
    patterns: Vec<String>,
    /// `--containers` with absolute directories.
    containers: Option<ContainerOptions>,
}

/// Takes the data directory's lock (released when the file is closed).
fn lock_data_dir(dir: &Path) -> Result<File, AgentError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(AgentError::io("open", &path))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(AgentError::AlreadyRunning {
                dir: dir.to_owned(),
                lock: path,
            });
        }
        return Err(AgentError::io("lock", &path)(e));
    }
    Ok(file)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
}

/// A running agent.
pub struct Agent {
    public_id: PublicId,
    socket_path: PathBuf,
    stop_sources: CancellationToken,
    followers: Vec<follow::FollowHandle>,
    socket_task: Option<JoinHandle<()>>,
    syslog_task: Option<JoinHandle<()>>,
    /// Watches `--follow` patterns for new matches.
    glob_task: Option<JoinHandle<()>>,
    /// Reads the systemd journal.
    journal_task: Option<JoinHandle<()>>,
    /// Finds and follows container logs.
    containers_task: Option<JoinHandle<()>>,
    logs: Pipeline,
    flows: Option<Pipeline>,
    recordings: Option<Pipeline>,
    stop_flows: CancellationToken,
    flows_task: Option<JoinHandle<()>>,
    settings: watch::Receiver<NodeSettings>,
    stop_reporter: CancellationToken,
    reporter_task: Option<JoinHandle<()>>,
    /// Keeps the error channel open while tasks come and go.
    _fatal_tx: mpsc::UnboundedSender<AgentError>,
    fatal_rx: mpsc::UnboundedReceiver<AgentError>,
    _lock: File,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("public_id", &self.public_id)
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the agent: identity, queue recovery, sources, socket and
    /// uploader. Returns once every source is in place (files positioned,
    /// socket listening).
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let Validated {
            server,
            mut follow,
            patterns,
            containers,
        } = config.validate()?;
        let mut known: BTreeSet<Arc<str>> = follow.iter().map(|(_, k)| Arc::clone(k)).collect();
        for (path, key) in globbing::expand(&patterns) {
            if known.insert(Arc::clone(&key)) {
                follow.push((path, key));
            }
        }
        // --flows that cannot capture fails here, before the identity or a
        // registration exists: a fixed start (as root, or after setcap)
        // then registers once, not a second node.
        if let Some(opts) = &config.flows {
            let iface = opts.ifaces.first().map_or("the interface", String::as_str);
            tally_flow::capture::check_permission(iface).map_err(|e| {
                AgentError::Config(format!(
                    "{e}. Nothing was registered; drop --flows to ship logs only"
                ))
            })?;
        }
        if config.journal.is_some() {
            journal::check().await?;
        }
        // Bound before anything else, so a busy port fails the start.
        let syslog_listener = match config.syslog_listen {
            Some(addr) => Some(syslog::bind(addr).await?),
            None => None,
        };
        let data_dir = config.data_dir.clone();
        let identity = {
            let dir = data_dir.clone();
            blocking(move || Ok(load_or_create_identity(&dir)?)).await?
        };
        let lock = lock_data_dir(&data_dir)?;
        // Read before the writer appends anything.
        let journal_cursor = match &config.journal {
            Some(opts) => {
                let dir = data_dir.clone();
                match blocking(move || Ok(journal::resume_cursor(&dir))).await? {
                    Some(c) => Some(c),
                    None => journal::end_cursor(opts).await?,
                }
            }
            None => None,
        };

        let reports =
            server.is_some() && (data_dir.join(NODE_ID_FILE).exists() || config.auth_key.is_some());
        if config.no_logs_no_support {
            let contact = if reports {
                "no log or flow is uploaded; the node only registers and reports to the server, which knows it opted out"
            } else {
                "nothing is uploaded and no network connection is made"
            };
            eprintln!(
                "tally agent: --no-logs-no-support is set: {contact}; \
                 logs are kept only on this node in {} (at most {}, oldest deleted first). \
                 Read them with `tally agent logs`.",
                data_dir.join(QUEUE_DIR).display(),
                writer::human_size(config.queue_max_bytes),
            );
        }

        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let client = match &server {
            Some(_) if reports || !config.no_logs_no_support => {
                Some(uploader::http_client(config.ca_cert.as_deref())?)
            }
            _ => None,
        };
        let (settings_tx, settings) = watch::channel(NodeSettings::default());
        let marker = data_dir.join(NODE_ID_FILE);
        let first_registration = reports && !marker.exists();
        let upload = UploadSettings {
            registration: first_registration.then(|| settings.clone()),
            server: if config.no_logs_no_support {
                None
            } else {
                server.clone()
            },
            client: client.clone(),
            flush_delay: config.flush_delay,
            backoff: (config.backoff_min, config.backoff_max, config.max_sleep),
            batch_max_bytes: config.batch_max_bytes,
            fsync_interval: config.fsync_interval,
            node_key: if config.no_logs_no_support {
                None
            } else {
                let dir = data_dir.clone();
                Some(blocking(move || signing::load_or_create_node_key(&dir)).await?)
            },
        };
        let (logs, positions) = Pipeline::start(
            PipelineSpec {
                collection: config.collection.clone(),
                queue_dir: data_dir.join(QUEUE_DIR),
                queue_max_bytes: config.queue_max_bytes,
                drop_notices: !config.no_logs_no_support,
                drop_on_forbidden: false,
                node_log: None,
            },
            &upload,
            &identity,
            fatal_tx.clone(),
        )
        .await?;
        let tx = logs.tx.clone();
        let stop_reporter = CancellationToken::new();
        let (refresh_tx, refresh_rx) = mpsc::channel(4);
        let ifaces: &[String] = config.flows.as_ref().map_or(&[], |f| &f.ifaces);
        let reporter_task = match (&server, &client) {
            (Some(server), Some(client)) if reports => {
                let reporter = report::Reporter {
                    client: client.clone(),
                    server: server.clone(),
                    private_hex: identity.to_hex(),
                    auth_key: config.auth_key.clone(),
                    info: config.node.clone(),
                    finder: config
                        .node
                        .addresses
                        .is_empty()
                        .then(|| addrs::AddressFinder::new(ifaces)),
                    flows: config.flows.is_some(),
                    refresh: Some(refresh_rx),
                    interval: config.report_interval,
                    settings: settings_tx,
                    marker,
                    witness: Some(witness::Witness {
                        client: client.clone(),
                        server: server.clone(),
                        dir: data_dir.clone(),
                    }),
                    logs: Some(tx.clone()),
                };
                Some(tokio::spawn(reporter.run(stop_reporter.clone())))
            }
            _ => None,
        };
        let stop_flows = CancellationToken::new();
        let (flows, flows_task) = match (&config.flows, &upload.server) {
            (Some(opts), Some(_)) if reporter_task.is_some() => {
                let (pipe, _) = Pipeline::start(
                    PipelineSpec {
                        collection: FLOWS_COLLECTION.to_owned(),
                        queue_dir: data_dir.join(FLOW_QUEUE_DIR),
                        queue_max_bytes: config.queue_max_bytes,
                        drop_notices: false,
                        drop_on_forbidden: true,
                        node_log: Some(tx.clone()),
                    },
                    &upload,
                    &identity,
                    fatal_tx.clone(),
                )
                .await?;
                let runner = flows::FlowRunner {
                    opts: opts.clone(),
                    own_routes: config.node.advertised_routes.clone(),
                    settings: settings.clone(),
                    records: pipe.tx.clone(),
                    logs: tx.clone(),
                    refresh: refresh_tx,
                    asked: Default::default(),
                    next_ask: None,
                };
                let task = tokio::spawn(runner.run(stop_flows.clone()));
                (Some(pipe), Some(task))
            }
            (Some(_), _) => {
                return Err(AgentError::Config(
                    "flow logging needs a server and a registered node: pass --server and, on first start, --auth-key".into(),
                ));
            }
            _ => (None, None),
        };
        // Session recordings (`tally record`) go through a queue of their
        // own, uploaded with the node's identity: only a registered node's
        // are accepted.
        let (recordings, recording_target) = match (&upload.server, &reporter_task) {
            (Some(server), Some(_)) => {
                let (pipe, _) = Pipeline::start(
                    PipelineSpec {
                        collection: RECORDINGS_COLLECTION.to_owned(),
                        queue_dir: data_dir.join(RECORDING_QUEUE_DIR),
                        queue_max_bytes: config.queue_max_bytes,
                        drop_notices: false,
                        drop_on_forbidden: true,
                        node_log: Some(tx.clone()),
                    },
                    &upload,
                    &identity,
                    fatal_tx.clone(),
                )
                .await?;
                let hello = socket::RecordingHello {
                    server: server.clone(),
                    node: config.node.hostname.clone(),
                    node_id: String::new(),
                    instance: identity.public().to_hex(),
                };
                let target = Ok((pipe.tx.clone(), hello));
                (Some(pipe), target)
            }
            _ if config.no_logs_no_support => (
                None,
                Err("this agent runs with --no-logs-no-support: it uploads no recordings".to_owned()),
            ),
            _ => (
                None,
                Err("this agent uploads no recordings: it needs --server and a registered node (first start with --auth-key)".to_owned()),
            ),
        };
        let mut agent = Self {
            public_id: identity.public(),
            socket_path: data_dir.join(SOCKET_FILE),
            stop_sources: CancellationToken::new(),
            followers: Vec::new(),
            socket_task: None,
            syslog_task: None,
            glob_task: None,
            journal_task: None,
            containers_task: None,
            logs,
            flows,
            recordings,
            stop_flows,
            flows_task,
            settings,
            stop_reporter,
            reporter_task,
            _fatal_tx: fatal_tx,
            fatal_rx,
            _lock: lock,
        };

        let mut readies = Vec::new();
        for (path, key) in follow {
            let (ready_tx, ready_rx) = oneshot::channel();
            let stored = positions.get(&*key).copied();
            let handle = follow::spawn(
                path.clone(),
                key,
                stored,
                tx.clone(),
                config.poll_interval,
                ready_tx,
                false,
            )
            .map_err(AgentError::io("start a thread to follow", &path))?;
            agent.followers.push(handle);
            readies.push(ready_rx);
        }
        for ready in readies {
            // An error means the writer stopped; `failed` reports why.
            let _ = ready.await;
        }

        if let Some(opts) = containers {
            for (what, dir) in [
                ("Docker root", &opts.docker_root),
                ("CRI log directory", &opts.cri_log_dir),
            ] {
                if let Some(dir) = dir.as_ref().filter(|d| !d.is_dir()) {
                    tracing::info!(dir = %dir.display(), "--containers: no {what} here (yet); looking again every second");
                }
            }
            let watcher = containers::Watcher::start(
                opts,
                &data_dir,
                positions.clone(),
                known.clone(),
                tx.clone(),
                config.poll_interval,
            )
            .await;
            agent.containers_task = Some(tokio::spawn(watcher.run(agent.stop_sources.clone())));
        }
        if !patterns.is_empty() {
            agent.glob_task = Some(tokio::spawn(globbing::watch(
                patterns,
                known,
                tx.clone(),
                config.poll_interval,
                agent.stop_sources.clone(),
            )));
        }
        let listener = socket::bind(&agent.socket_path)?;
        agent.socket_task = Some(tokio::spawn(socket::serve(
            listener,
            socket::Targets {
                logs: tx.clone(),
                recordings: recording_target,
                data_dir: data_dir.clone(),
            },
            agent.stop_sources.clone(),
        )));
        if let Some(opts) = &config.journal {
            agent.journal_task = Some(tokio::spawn(journal::run(
                opts.clone(),
                data_dir.clone(),
                journal_cursor,
                tx.clone(),
                agent.stop_sources.clone(),
            )));
        }
        if let Some(listener) = syslog_listener {
            if let Some(addr) = listener.local_addr() {
                tracing::info!(%addr, "syslog listener ready (UDP and TCP, RFC 5424 and 3164)");
            }
            agent.syslog_task = Some(tokio::spawn(syslog::serve(
                listener,
                tx.clone(),
                agent.stop_sources.clone(),
            )));
        }
        if config.read_stdin {
            stdin::spawn(tx.clone()).map_err(AgentError::io("start a thread to read", "stdin"))?;
        }
        drop(tx);
        tracing::info!(public_id = %agent.public_id, data_dir = %data_dir.display(), "agent started");
        Ok(agent)
    }

    /// This node's public ID.
    pub fn public_id(&self) -> PublicId {
        self.public_id
    }

    /// The local socket `tally agent log` talks to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The `proc_seq` of the last entry made durable (fsynced); changes
    /// after every group commit.
    pub fn durable_seq(&self) -> watch::Receiver<u64> {
        self.logs.durable.clone()
    }

    /// What the server last said about this node and its tailnet
    /// (changes when a report's answer differs). Closed (`has_changed`
    /// fails) when the agent does not report to a server at all.
    pub fn node_settings(&self) -> watch::Receiver<NodeSettings> {
        self.settings.clone()
    }

    /// The uploader's counters. When uploading is off no uploader runs:
    /// they stay zero and the channel is closed (`has_changed` fails).
    pub fn upload_status(&self) -> watch::Receiver<UploadStatus> {
        self.logs.status.clone()
    }

    /// Resolves when the agent cannot go on (the disk queue failed).
    pub async fn failed(&mut self) -> AgentError {
        match self.fatal_rx.recv().await {
            Some(e) => e,
            // Unreachable: the agent holds a sender.
            None => AgentError::Task("the agent's error channel closed".into()),
        }
    }

    /// Stops the sources, the uploader and then the writer, which commits
    /// everything already read and writes the queue state.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        self.stop_sources.cancel();
        let followers = std::mem::take(&mut self.followers);
        let _ = tokio::task::spawn_blocking(move || {
            followers.into_iter().for_each(follow::FollowHandle::stop)
        })
        .await;
        if let Some(t) = self.socket_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.syslog_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.glob_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.journal_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.containers_task.take() {
            let _ = t.await;
        }
        self.stop_flows.cancel();
        if let Some(t) = self.flows_task.take() {
            let _ = t.await;
        }
        self.stop_reporter.cancel();
        if let Some(t) = self.reporter_task.take() {
            let _ = t.await;
        }
        if let Some(f) = self.flows.as_mut() {
            f.stop_uploader().await;
            f.stop_writer().await?;
        }
        if let Some(r) = self.recordings.as_mut() {
            r.stop_uploader().await;
            r.stop_writer().await?;
        }
        self.logs.stop_uploader().await;
        self.logs.stop_writer().await?;
        let _ = std::fs::remove_file(&self.socket_path);
        match self.fatal_rx.try_recv() {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_sources.cancel();
        self.stop_reporter.cancel();
        self.stop_flows.cancel();
    }
}

/// Runs the agent until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    run_until(config, shutdown_signal()).await
}

/// Runs the agent until `shutdown` resolves (or the agent fails), then shuts
/// it down cleanly.
pub async fn run_until(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut agent = Agent::start(config).await?;
    let failure = tokio::select! {
        () = shutdown => None,
        e = agent.failed() => Some(e),
    };
    let result = agent.shutdown().await;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(result?)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
                _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
