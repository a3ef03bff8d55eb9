//! The log seam ([`tally_store::Log`]) on NATS JetStream: the shared,
//! replicated log that lets any number of `tally server` instances take
//! ingest and serve reads with no state of their own.
//!
//! - **Append** publishes the records (packed per tailnet and collection,
//!   see [`codec`]) and resolves when JetStream acknowledged every message:
//!   with `--log-replicas N`, once the quorum stored it.
//! - **Positions** are `stream sequence << 16 | index`: increasing, with
//!   gaps, as the seam allows.
//! - **Reads** ask the stream's leader for the next message of a subject
//!   (`STREAM.MSG.GET` with `next_by_subj`), so a read never misses what
//!   was acknowledged, and a tenant's read fetches only its subjects.
//! - **Duplicates**: each server follows the whole stream (an ordered
//!   consumer from 24 h back) into the same [`IngestState`] the embedded
//!   store keeps, so a record whose identity any server stored in the last
//!   24 h is dropped before it is published; a retry that races the
//!   original (sent again before the follower saw it) is caught by
//!   JetStream's duplicate window on the message ID (`--log-dedup-window`,
//!   default 2 minutes). The follower also gives budgets their byte counts
//!   and moves [`Log::end_seq`] with other servers' appends.
//! - **Retention** purges each subject's oldest messages once all their
//!   records expired; reads hide expired records at once, as the embedded
//!   store does.

pub mod archive;
pub mod bucket;
pub mod codec;
pub mod shared;

pub use shared::{Lease, SharedFiles};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tally_store::state::IngestState;
use tally_store::{
    AppendOutcome, DamagedRange, Filter, Log, LogFuture, LogStats, NewRecord, Order, Position,
    Record, RetentionPolicy, RetentionReport, ScanBatch, StoreError,
};
use tokio::sync::{Notify, watch};

/// Where the log is and how it is kept.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS servers, `nats://host:port` (any member of the cluster will do;
    /// more give the client somewhere to go when one is down).
    pub servers: Vec<String>,
    /// The stream's name; its subjects are `<name>.>`.
    pub stream: String,
    /// Replicas of each message (1, or 3 or 5 on a cluster).
    pub replicas: usize,
    /// JetStream's duplicate window for message IDs.
    pub dedup_window: Duration,
    /// How long to wait for the first connection and each acknowledgement.
    pub timeout: Duration,
    /// A NATS credentials file (JWT and NKey seed), `--log-creds`.
    pub creds: Option<std::path::PathBuf>,
    /// A CA certificate (PEM) for `tls://` servers, `--log-ca`.
    pub ca: Option<std::path::PathBuf>,
}

impl JetStreamConfig {
    /// The settings of `--log nats://host:port[,host:port...]` with the
    /// defaults: stream `TALLY`, one replica, 2-minute duplicate window.
    pub fn from_url(url: &str) -> Result<Self, JetStreamError> {
        let scheme = if url.starts_with("tls://") {
            "tls://"
        } else {
            "nats://"
        };
        let rest = url.strip_prefix(scheme).ok_or_else(|| {
            JetStreamError::Config(format!(
                "--log {:?}: expected nats://host:port[,host:port...] (tls:// for TLS; user:password@ before a host, or --log-creds)",
                redact(url)
            ))
        })?;
        let servers: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_owned()
                } else {
                    format!("{scheme}{s}")
                }
            })
            .collect();
        if servers.is_empty() {
            return Err(JetStreamError::Config(format!(
                "--log {:?} names no NATS server",
                redact(url)
            )));
        }
        Ok(Self {
            servers,
            stream: "TALLY".into(),
            replicas: 1,
            dedup_window: Duration::from_secs(120),
            timeout: Duration::from_secs(10),
            creds: None,
            ca: None,
        })
    }

    /// The servers, passwords left out (for messages and logs).
    pub fn shown(&self) -> String {
        self.servers
            .iter()
            .map(|s| redact(s))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A NATS URL without the password of its user part.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(i), Some(at)) if at > i => {
            let user = url[i + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..i + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// The settings are wrong.
    #[error("{0}")]
    Config(String),
    /// No NATS server answered.
    #[error("cannot connect to NATS at {servers}: {why} ({hint})")]
    Connect {
        /// The servers tried (passwords left out).
        servers: String,
        /// What failed.
        why: String,
        /// What to check.
        hint: &'static str,
    },
    /// JetStream refused the stream or is off.
    #[error("{0}")]
    Stream(String),
}

/// The end of the log and whether it closed.
#[derive(Debug, Clone, Copy, Default)]
struct End {
    next: Position,
    closed: bool,
}

/// What the log's tasks share.
struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    prefix: String,
    replicas: usize,
    max_payload: usize,
    policy: Arc<dyn RetentionPolicy>,
    end: watch::Sender<End>,
    /// Identities and byte counts of the last 24 h, from the follower.
    ingest: Mutex<IngestState>,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    appended: AtomicU64,
    acks: AtomicU64,
    ack_micros: AtomicU64,
    max_ack_micros: AtomicU64,
    stream_bytes: AtomicU64,
}

impl Shared {
    fn advance(&self, next: Position) {
        self.end.send_if_modified(|e| {
            let moved = next > e.next;
            e.next = e.next.max(next);
            moved
        });
    }
}

/// Shuts its runtime down without blocking, wherever it is dropped.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The log on a JetStream stream (see the crate documentation).
pub struct JetStreamLog {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    /// Where records below the stream's first message are.
    archive: std::sync::OnceLock<Arc<archive::Archive>>,
    _runtime: OwnedRuntime,
}

pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl JetStreamLog {
    /// Connects, creates the stream if it is missing, and follows it until
    /// the last 24 h are known (so duplicates are caught from the first
    /// append). Its own runtime runs the NATS client.
    pub async fn open(
        config: JetStreamConfig,
        policy: Arc<dyn RetentionPolicy>,
    ) -> Result<Arc<Self>, JetStreamError> {
        if !valid_stream_name(&config.stream) {
            return Err(JetStreamError::Config(format!(
                "--log-stream {:?}: use 1 to 32 letters, digits, '_' or '-'",
                config.stream
            )));
        }
        if !(1..=5).contains(&config.replicas) {
            return Err(JetStreamError::Config(format!(
                "--log-replicas {}: JetStream keeps 1 to 5 replicas",
                config.replicas
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tally-nats")
            .enable_all()
            .build()
            .map_err(|e| JetStreamError::Config(format!("starting the NATS runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let runtime = OwnedRuntime(Some(runtime));
        let (shared, caught_up) = handle
            .spawn(connect(config, policy))
            .await
            .map_err(|e| JetStreamError::Stream(format!("connecting panicked: {e}")))??;
        let log = Arc::new(Self {
            shared,
            handle,
            archive: std::sync::OnceLock::new(),
            _runtime: runtime,
        });
        let mut caught_up = caught_up;
        let started = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), caught_up.wait_for(|c| *c)).await {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => {
                    return Err(JetStreamError::Stream(
                        "following the stream stopped before it caught up".into(),
                    ));
                }
                Err(_) => tracing::info!(
                    seconds = started.elapsed().as_secs(),
                    "still reading the last 24 h of the log (duplicates and budgets need them)"
                ),
            }
        }
        Ok(log)
    }

    /// Runs `fut` on the log's runtime and waits for it from any thread
    /// (a blocking thread, as the seam's blocking reads are called from).
    pub(crate) fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the NATS client stopped".into()))
    }

    /// The next message of `subject` at stream sequence `>= seq`, from the
    /// stream's leader.
    fn next_message(
        &self,
        subject: &str,
        seq: u64,
    ) -> Result<Option<(u64, bytes::Bytes)>, StoreError> {
        let stream = self.shared.stream.clone();
        let subject = subject.to_owned();
        let got = self.block(async move {
            stream
                .raw_message_builder()
                .sequence(seq.max(1))
                .next_by_subject(subject)
                .send()
                .await
        })?;
        match got {
            Ok(m) => Ok(Some((m.sequence, m.payload))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable("reading from JetStream", e)),
        }
    }

    /// Reads below the stream come from `archive` from now on.
    pub fn set_archive(&self, archive: Arc<archive::Archive>) {
        let _ = self.archive.set(archive);
    }

    /// The archive, when there is one.
    pub fn archive(&self) -> Option<&Arc<archive::Archive>> {
        self.archive.get()
    }

    /// When a record expires under the log's retention policy.
    pub fn expiry(&self, r: &Record) -> Option<i64> {
        self.shared.policy.expires_at(
            r.rec.owner.as_ref(),
            &r.rec.collection,
            &r.rec.instance,
            r.rec.time,
        )
    }

    /// Purges the stream's messages below stream sequence `seq` (they are
    /// in the archive). Blocks.
    pub fn purge_below(&self, seq: u64) -> Result<u64, StoreError> {
        let stream = self.shared.stream.clone();
        self.block(async move { stream.purge().sequence(seq).await })?
            .map(|r| r.purged)
            .map_err(|e| unavailable("purging archived messages", e))
    }

    fn expired(&self, r: &Record, now: i64) -> bool {
        now != i64::MIN
            && self
                .shared
                .policy
                .expires_at(
                    r.rec.owner.as_ref(),
                    &r.rec.collection,
                    &r.rec.instance,
                    r.rec.time,
                )
                .is_some_and(|t| t <= now)
    }

    /// A message's records, or the damaged range it is.
    fn records_of(&self, seq: u64, payload: &[u8], damaged: &mut Vec<DamagedRange>) -> Vec<Record> {
        match codec::unpack(seq, payload) {
            Ok(r) => r,
            Err(e) => {
                damaged.push(DamagedRange {
                    first_seq: codec::position(seq, 0),
                    last_seq: codec::position(seq, codec::MAX_RECORDS_PER_MESSAGE),
                    reason: e.to_string(),
                });
                Vec::new()
            }
        }
    }

    /// The stream's first sequence, when an archive may hold what is
    /// below it (1 otherwise: nothing was purged).
    fn first_in_stream(&self) -> Result<u64, StoreError> {
        if self.archive.get().is_none() {
            return Ok(1);
        }
        self.first_sequence()
    }

    /// The stream's first sequence (1 when it is empty from the start).
    fn first_sequence(&self) -> Result<u64, StoreError> {
        let stream = self.shared.stream.clone();
        Ok(self
            .block(async move { stream.get_info().await })?
            .map_err(|e| unavailable("reading the stream's state", e))?
            .state
            .first_sequence
            .max(1))
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_forward(
        &self,
        from: Position,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        let end = self.end_seq();
        let subject = codec::filter_subject(
            &self.shared.prefix,
            filter.owner.as_deref(),
            &filter.collections,
        );
        let from = from.max(codec::position(1, 0));
        let mut c = Collector::new(from, max_records, max_bytes);
        let accept = |r: &Record| filter.matches(&r.rec) && !self.expired(r, now) && keep(r);
        let first = codec::position(self.first_in_stream()?, 0);
        if from < first
            && let Some(archive) = self.archive.get()
        {
            // Below the stream: sealed in the bucket.
            archive.read(from, first, false, filter, &mut |r| {
                let ok = accept(&r);
                c.forward(r, ok)
            })?;
            if c.out.truncated {
                return Ok(c.out);
            }
            c.out.next_seq = c.out.next_seq.max(first);
        }
        let (mut seq, _) = codec::split(c.out.next_seq);
        while let Some((at, payload)) = self.next_message(&subject, seq)? {
            for r in self.records_of(at, &payload, &mut c.out.damaged) {
                let ok = accept(&r);
                if !c.forward(r, ok) {
                    return Ok(c.out);
                }
            }
            c.out.next_seq = c.out.next_seq.max(codec::position(at + 1, 0));
            seq = at + 1;
        }
        // Nothing of the subject before what was acknowledged when the
        // read began: the next read can start there.
        c.out.next_seq = c.out.next_seq.max(end);
        Ok(c.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_backward(
        &self,
        before: Position,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        let end = self.end_seq();
        let before = if before == 0 { end } else { before.min(end) };
        let subject = codec::filter_subject(
            &self.shared.prefix,
            filter.owner.as_deref(),
            &filter.collections,
        );
        let first = self.first_sequence()?;
        let mut c = Collector::new(before, max_records, max_bytes);
        let accept = |r: &Record| filter.matches(&r.rec) && !self.expired(r, now) && keep(r);
        let (mut hi, _) = codec::split(before);
        let mut window = 64u64;
        while hi >= first {
            let lo = hi.saturating_sub(window - 1).max(first);
            // The subject's messages in [lo, hi], read forwards.
            let mut messages = Vec::new();
            let mut seq = lo;
            while let Some((at, payload)) = self.next_message(&subject, seq)? {
                if at > hi {
                    break;
                }
                messages.push((at, payload));
                seq = at + 1;
            }
            for (at, payload) in messages.into_iter().rev() {
                for r in self
                    .records_of(at, &payload, &mut c.out.damaged)
                    .into_iter()
                    .rev()
                {
                    let ok = accept(&r);
                    if !c.backward(r, ok) {
                        return Ok(c.out);
                    }
                }
                c.out.next_seq = c.out.next_seq.min(codec::position(at, 0));
            }
            c.out.next_seq = c.out.next_seq.min(codec::position(lo, 0));
            if lo <= first {
                break;
            }
            hi = lo - 1;
            window = (window * 2).min(1 << 16);
        }
        // Below the stream: sealed in the bucket.
        let first_pos = codec::position(first, 0);
        if let Some(archive) = self.archive.get() {
            let below = c.out.next_seq.min(first_pos);
            archive.read(0, below, true, filter, &mut |r| {
                let ok = accept(&r);
                c.backward(r, ok)
            })?;
        }
        Ok(c.out)
    }
}

/// A read's answer as it fills, with its limits.
struct Collector {
    out: ScanBatch,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl Collector {
    fn new(next_seq: Position, max_records: usize, max_bytes: usize) -> Self {
        Self {
            out: ScanBatch {
                records: Vec::new(),
                next_seq,
                truncated: false,
                damaged: Vec::new(),
            },
            bytes: 0,
            max_records,
            max_bytes,
        }
    }

    /// Takes the next record of an oldest-first read (kept when `keep`);
    /// false once a limit is reached (the answer is then truncated).
    fn forward(&mut self, r: Record, keep: bool) -> bool {
        if r.seq < self.out.next_seq {
            return true;
        }
        if self.out.records.len() >= self.max_records || self.bytes >= self.max_bytes {
            self.out.truncated = true;
            return false;
        }
        self.out.next_seq = r.seq + 1;
        if keep {
            self.bytes += r.rec.body.len();
            self.out.records.push(r);
        }
        true
    }

    /// Takes the next record of a newest-first read.
    fn backward(&mut self, r: Record, keep: bool) -> bool {
        if r.seq >= self.out.next_seq {
            return true;
        }
        if self.out.records.len() >= self.max_records || self.bytes >= self.max_bytes {
            self.out.truncated = true;
            return false;
        }
        self.out.next_seq = r.seq;
        if keep {
            self.bytes += r.rec.body.len();
            self.out.records.push(r);
        }
        true
    }
}

/// Connects and starts the follower; the watch turns true once it caught
/// up with the stream as it was.
async fn connect(
    config: JetStreamConfig,
    policy: Arc<dyn RetentionPolicy>,
) -> Result<(Arc<Shared>, watch::Receiver<bool>), JetStreamError> {
    let shown = config.shown();
    let addrs = config
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JetStreamError::Config(format!("--log {shown}: {e}")))?;
    let mut options = async_nats::ConnectOptions::new()
        .name("tally-server")
        .connection_timeout(config.timeout);
    // User and password (or a token) given in a URL.
    if let Some(a) = addrs.iter().find(|a| a.username().is_some()) {
        let user = a.username().unwrap_or_default().to_owned();
        options = match a.password() {
            Some(p) => options.user_and_password(user, p.to_owned()),
            None => options.token(user),
        };
    }
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| JetStreamError::Config(format!("--log-creds {}: {e}", creds.display())))?;
    }
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = options.connect(addrs).await.map_err(|e| {
        let why = e.to_string();
        let hint = if why.contains("authorization") || why.contains("authentication") {
            "check the user and password in --log, or --log-creds"
        } else if why.contains("tls") || why.contains("certificate") {
            "check the tls:// address and --log-ca"
        } else {
            "is nats-server running with JetStream on, `nats-server -js`?"
        };
        JetStreamError::Connect {
            servers: shown.clone(),
            why,
            hint,
        }
    })?;
    let max_payload = client.server_info().max_payload.saturating_sub(4096);
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.timeout);
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.stream)],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.dedup_window,
        max_message_size: -1,
        ..Default::default()
    };
    // A cluster that has just started answers only once it elected its
    // JetStream leader: time-outs are waited out for a while.
    let deadline = Instant::now() + STREAM_WAIT.max(config.timeout);
    let mut told = false;
    let mut stream = loop {
        match js.get_or_create_stream(wanted.clone()).await {
            Ok(s) => break s,
            Err(e) if e.to_string().contains("timed out") && Instant::now() < deadline => {
                if !told {
                    tracing::info!(
                        "waiting for JetStream on {shown} to answer (a new cluster elects its leader first)"
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(JetStreamError::Stream(format!(
                    "cannot open JetStream stream {} on {shown}: {e} (JetStream must be on: `nats-server -js`; {} replicas need a cluster of at least {} servers)",
                    config.stream, config.replicas, config.replicas
                )));
            }
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|e| JetStreamError::Stream(format!("reading stream {}: {e}", config.stream)))?
        .clone();
    if info.config.num_replicas != config.replicas {
        tracing::warn!(
            stream = %config.stream,
            existing = info.config.num_replicas,
            asked = config.replicas,
            "the stream exists with another replica count; it keeps its own (change it with `nats stream edit`)"
        );
    }
    let last = info.state.last_sequence;
    let (end, _) = watch::channel(End {
        next: codec::position(last + 1, 0),
        closed: false,
    });
    let shared = Arc::new(Shared {
        client,
        js,
        stream,
        prefix: config.stream,
        replicas: config.replicas,
        max_payload,
        policy,
        end,
        ingest: Mutex::new(IngestState::default()),
        closed: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
        appended: AtomicU64::new(0),
        acks: AtomicU64::new(0),
        ack_micros: AtomicU64::new(0),
        max_ack_micros: AtomicU64::new(0),
        stream_bytes: AtomicU64::new(info.state.bytes),
    });
    let (caught_up_tx, caught_up) = watch::channel(false);
    tokio::spawn(follow(shared.clone(), last, caught_up_tx));
    tokio::spawn(refresh_stream_size(shared.clone()));
    Ok((shared, caught_up))
}

/// How long opening the log waits for a JetStream that does not answer yet.
const STREAM_WAIT: Duration = Duration::from_secs(60);

/// How far back the follower starts: the dedup window of identities.
const FOLLOW_BACK: Duration = Duration::from_secs(24 * 3600);

/// Follows every message of the stream into the ingest state and the end
/// position; recreates its consumer after an error.
async fn follow(shared: Arc<Shared>, caught_up_at: u64, caught_up: watch::Sender<bool>) {
    let start = time::OffsetDateTime::now_utc() - FOLLOW_BACK;
    let mut policy = consumer::DeliverPolicy::ByStartTime { start_time: start };
    let mut last_prune = Instant::now();
    if caught_up_at == 0 {
        caught_up.send_replace(true);
    }
    while !shared.closed.load(Ordering::Relaxed) {
        let config = consumer::pull::OrderedConfig {
            deliver_policy: policy,
            ..Default::default()
        };
        let messages = match shared.stream.create_consumer(config).await {
            Ok(mut c) => {
                // Nothing to read back: caught up at once.
                if let Ok(info) = c.info().await
                    && info.num_pending == 0
                {
                    caught_up.send_replace(true);
                }
                c.messages().await
            }
            Err(e) => {
                tracing::warn!("following the log: cannot create a consumer: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("following the log: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("following the log: {e}; resuming");
                    break;
                }
            };
            let Ok(info) = m.info() else { continue };
            let (seq, pending) = (info.stream_sequence, info.pending);
            match codec::unpack(seq, &m.payload) {
                Ok(records) => {
                    let mut ingest = shared.ingest.lock();
                    for r in &records {
                        ingest.apply(r.seq, &r.rec);
                    }
                    if last_prune.elapsed() > Duration::from_secs(60) {
                        ingest.prune(now_nanos());
                        last_prune = Instant::now();
                    }
                }
                Err(e) => tracing::error!("log message {seq} is damaged: {e}"),
            }
            shared.advance(codec::position(seq + 1, 0));
            policy = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            };
            if seq >= caught_up_at || pending == 0 {
                caught_up.send_replace(true);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn refresh_stream_size(shared: Arc<Shared>) {
    while !shared.closed.load(Ordering::Relaxed) {
        if let Ok(info) = shared.stream.get_info().await {
            shared
                .stream_bytes
                .store(info.state.bytes, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Counts an append in flight until dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn publish(
    shared: Arc<Shared>,
    records: Vec<NewRecord>,
) -> Result<AppendOutcome, StoreError> {
    let messages = codec::pack(&shared.prefix, &records, shared.max_payload)?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let mut msg = PublishMessage::build().payload(m.payload.into());
        if let Some(id) = &m.msg_id {
            msg = msg.message_id(id);
        }
        let ack = shared
            .js
            .send_publish(m.subject, msg)
            .await
            .map_err(|e| unavailable("publishing to JetStream", e))?;
        pending.push((ack, m.records));
    }
    let mut out = AppendOutcome::default();
    let mut next = 0;
    for (ack, n) in pending {
        let ack = ack.await.map_err(|e| {
            unavailable(
                "JetStream did not acknowledge (the upload may be retried safely)",
                e,
            )
        })?;
        if ack.duplicate {
            out.duplicates += n;
        } else {
            out.stored += n;
            out.last_seq = out.last_seq.max(Some(codec::position(ack.sequence, n - 1)));
        }
        next = next.max(codec::position(ack.sequence + 1, 0));
    }
    let micros = started.elapsed().as_micros() as u64;
    shared.acks.fetch_add(1, Ordering::Relaxed);
    shared.ack_micros.fetch_add(micros, Ordering::Relaxed);
    shared.max_ack_micros.fetch_max(micros, Ordering::Relaxed);
    shared
        .appended
        .fetch_add(out.stored as u64, Ordering::Relaxed);
    shared.advance(next);
    Ok(out)
}

impl Log for JetStreamLog {
    fn append(&self, records: Vec<NewRecord>) -> LogFuture<'_, AppendOutcome> {
        let shared = self.shared.clone();
        let handle = self.handle.clone();
        Box::pin(async move {
            if shared.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            // Drop what any server stored in the last 24 h, and repeats
            // within this append.
            let mut duplicates = 0;
            let fresh: Vec<NewRecord> = {
                let ingest = shared.ingest.lock();
                let mut seen = HashSet::new();
                records
                    .into_iter()
                    .filter(|r| {
                        let dup = ingest.is_duplicate(r)
                            || r.identity.is_some_and(|(p, s)| {
                                !seen.insert((r.collection.clone(), r.instance, p, s))
                            });
                        duplicates += usize::from(dup);
                        !dup
                    })
                    .collect()
            };
            if fresh.is_empty() {
                return Ok(AppendOutcome {
                    duplicates,
                    ..AppendOutcome::default()
                });
            }
            shared.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = InFlight(shared.clone());
            let mut out = handle
                .spawn(publish(shared, fresh))
                .await
                .map_err(|e| unavailable("publishing", e))??;
            drop(guard);
            out.duplicates += duplicates;
            Ok(out)
        })
    }

    fn scan(
        &self,
        from: Position,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
    ) -> Result<ScanBatch, StoreError> {
        self.scan_forward(from, filter, max_records, max_bytes, now, &|_| true)
    }

    fn scan_where(
        &self,
        from: Position,
        order: Order,
        filter: &Filter,
        max_records: usize,
        max_bytes: usize,
        now: i64,
        keep: &(dyn Fn(&Record) -> bool + Sync),
    ) -> Result<ScanBatch, StoreError> {
        match order {
            Order::Oldest => self.scan_forward(from, filter, max_records, max_bytes, now, keep),
            Order::Newest => self.scan_backward(from, filter, max_records, max_bytes, now, keep),
        }
    }

    fn end_seq(&self) -> Position {
        self.shared.end.borrow().next
    }

    fn sync_end(&self) -> LogFuture<'_, Position> {
        let shared = self.shared.clone();
        let handle = self.handle.clone();
        Box::pin(async move {
            let last = handle
                .spawn(async move {
                    let info = shared.stream.get_info().await;
                    info.map(|i| {
                        let end = codec::position(i.state.last_sequence + 1, 0);
                        shared.advance(end);
                        end
                    })
                })
                .await
                .map_err(|e| unavailable("reading the stream's end", e))?
                .map_err(|e| unavailable("reading the stream's end", e))?;
            Ok(last)
        })
    }

    fn wait_for(&self, pos: Position) -> LogFuture<'_, ()> {
        let mut rx = self.shared.end.subscribe();
        Box::pin(async move {
            let e = rx
                .wait_for(|e| e.next > pos || e.closed)
                .await
                .map_err(|_| StoreError::Closed)?;
            if e.next > pos {
                Ok(())
            } else {
                Err(StoreError::Closed)
            }
        })
    }

    fn enforce_retention(&self, now: i64) -> Result<RetentionReport, StoreError> {
        let stream = self.shared.stream.clone();
        let filter = format!("{}.>", self.shared.prefix);
        let subjects: Vec<String> = self
            .block(async move {
                let mut info = stream.info_with_subjects(filter).await?;
                let mut out = Vec::new();
                while let Some(s) = info.next().await {
                    out.push(s?.0);
                }
                Ok::<_, stream::InfoError>(out)
            })?
            .map_err(|e| unavailable("listing the stream's subjects", e))?;
        let mut report = RetentionReport::default();
        for subject in subjects {
            // Messages whose records have all expired, from the oldest.
            let mut cut = 0;
            let mut count = 0;
            let mut seq = 1;
            while let Some((at, payload)) = self.next_message(&subject, seq)? {
                let records = codec::unpack(at, &payload).unwrap_or_default();
                if records.is_empty() || !records.iter().all(|r| self.expired(r, now)) {
                    break;
                }
                count += records.len() as u64;
                cut = at + 1;
                seq = at + 1;
            }
            if cut == 0 {
                continue;
            }
            let stream = self.shared.stream.clone();
            let s = subject.clone();
            self.block(async move { stream.purge().filter(s).sequence(cut).await })?
                .map_err(|e| unavailable("purging expired messages", e))?;
            report.records_deleted += count;
            report.segments_deleted += 1;
        }
        Ok(report)
    }

    fn recheck_retention(&self) {
        // Every pass starts from each subject's oldest message.
    }

    fn recent_owner_bytes(&self, owner: &str, now: i64) -> u64 {
        self.shared.ingest.lock().recent_owner_bytes(owner, now)
    }

    fn recent_bytes(&self, collection: &str, instance: &[u8; 32], now: i64) -> u64 {
        self.shared
            .ingest
            .lock()
            .recent_bytes(collection, instance, now)
    }

    fn check(&self) -> Result<(), String> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err("the log is closed".into());
        }
        match self.shared.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!(
                "NATS is not connected ({state}); appends wait for it"
            )),
        }
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let shared = self.shared.clone();
        let _ = self.block(async move {
            let idle = shared.idle.notified();
            if shared.in_flight.load(Ordering::Acquire) > 0 {
                let _ = tokio::time::timeout(Duration::from_secs(30), idle).await;
            }
            // NATS may be gone: a stop never waits long for it.
            let _ = tokio::time::timeout(Duration::from_secs(5), shared.client.flush()).await;
        });
        self.shared.end.send_modify(|e| e.closed = true);
    }

    fn stats(&self) -> LogStats {
        let s = &self.shared;
        LogStats {
            wal_bytes: s.stream_bytes.load(Ordering::Relaxed),
            sealed_bytes: 0,
            appended_records: s.appended.load(Ordering::Relaxed),
            syncs: s.acks.load(Ordering::Relaxed),
            sync_micros: s.ack_micros.load(Ordering::Relaxed),
            max_sync_micros: s.max_ack_micros.load(Ordering::Relaxed),
        }
    }
}
