//! The reconciliation service: a consumer of the store (never on the
//! ingest path) that feeds every flow record, with the verdict of the batch
//! it came in, into `tally-reconcile`, tells it what the control database
//! knows about nodes, and appends the findings to the store's `findings`
//! collection. Its state (the reconciler's snapshot, the store position and
//! the number of findings written) is saved in `<data-dir>/reconcile.state`
//! after each step, so a restart resumes where it was; a finding written
//! again after a crash carries the same `proc_seq` and is dropped by the
//! store's dedup, so findings are exactly once.
//!
//! [`replay`] runs the same input path offline over a stopped server's data
//! directory: the reference the service's findings are checked against.

use crate::control::ControlDb;
use crate::control::catalog::Catalog;
use crate::control::collections::FLOWS_COLLECTION;
use crate::control::retention::RetentionRules;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tally_pipeline::Rejection;
use tally_proto::PublicId;
use tally_proto::flow::FlowRecord;
use tally_reconcile::{
    BatchVerdict, Config, DiscardedRecord, Finding, FlowKind, FlowObservation, NodeInfo,
    Reconciler, Stats, Summary,
};
use tally_store::{
    Filter, ReadLimits, ReadSpec, Record, ScanBatch, Store, StoreConfig, StoreError, kind,
};

/// Collection of reconciliation findings.
pub const FINDINGS_COLLECTION: &str = tally_proto::collection::FINDINGS;
/// The instance findings are written as (a fixed public ID).
pub const RECONCILER_INSTANCE: [u8; 32] = tally_proto::collection::FINDINGS_WRITER;
/// File the running server holds locked (`flock`) while its reconciler
/// runs, so that an offline [`replay`] never reads a data directory a
/// server is writing (nor a server starts during a replay).
pub const LOCK_FILE: &str = "reconcile.lock";
const STATE_FILE: &str = "reconcile.state";
/// Most records, and about the most body bytes, one read of the store takes.
const READ_RECORDS: usize = 5000;
const READ_BYTES: usize = 16 << 20;

/// `reconcile.state`: a JSON line with the store position and the number of
/// findings written, then the engine's snapshot (binary).
#[derive(Serialize, Deserialize)]
struct Saved {
    pos: u64,
    written: u64,
    /// Only in files of earlier versions (the snapshot as a JSON array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    snapshot: Vec<u8>,
}

impl Saved {
    fn encode(&self, snapshot: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = serde_json::to_vec(self)?;
        out.push(b'\n');
        out.extend_from_slice(snapshot);
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Saved, serde_json::Error> {
        match bytes.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let mut s: Saved = serde_json::from_slice(&bytes[..i])?;
                s.snapshot = bytes[i + 1..].to_vec();
                Ok(s)
            }
            None => serde_json::from_slice(bytes),
        }
    }
}

/// The running reconciler, shared with the API.
pub struct ReconcileService {
    pub(crate) inner: Mutex<Reconciler>,
    path: PathBuf,
    /// The settings a fresh reconciler starts with.
    config: Config,
    /// [`LOCK_FILE`], locked for the service's lifetime.
    _lock: File,
}

/// Who holds [`LOCK_FILE`] when [`try_lock`] could not take it.
enum LockHolder {
    /// This process (a server stopped here a moment ago, still dropping
    /// its tasks): worth waiting a little.
    ThisProcess,
    /// Another process, by PID when it wrote one.
    Other(Option<u32>),
}

/// Opens (creating) [`LOCK_FILE`] in `data_dir` and tries to lock it; on
/// success the file holds this process's ID. `Err(holder)` inside `Ok`
/// when someone else holds it.
fn try_lock(data_dir: &Path) -> anyhow::Result<Result<File, LockHolder>> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's PID, for the message another process shows.
            let pid = std::process::id().to_string();
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(pid.as_bytes()));
            Ok(Ok(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Ok(Err(match text.trim().parse::<u32>() {
                Ok(pid) if pid == std::process::id() => LockHolder::ThisProcess,
                Ok(pid) => LockHolder::Other(Some(pid)),
                Err(_) => LockHolder::Other(None),
            }))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display())
        }
    }
}

/// Takes the data directory's [`LOCK_FILE`] for a server: at once when
/// free, failing at once when another process holds it (naming it), and
/// waiting up to 5 s only for a server of this same process that is
/// still stopping (tests restart servers in one process).
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let holder = match try_lock(data_dir)? {
            Ok(f) => return Ok(f),
            Err(h) => h,
        };
        let busy = |pid: Option<u32>| {
            let who = pid.map_or_else(
                || "another tally server (or `tally reconcile replay`)".to_owned(),
                |p| format!("another tally server (or `tally reconcile replay`), process {p},"),
            );
            anyhow::anyhow!(
                "{who} is using the data directory {}; stop it first, or give this server its own --data-dir",
                data_dir.display()
            )
        };
        match holder {
            LockHolder::Other(pid) => return Err(busy(pid)),
            LockHolder::ThisProcess if std::time::Instant::now() >= deadline => {
                return Err(busy(Some(std::process::id())));
            }
            LockHolder::ThisProcess => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl ReconcileService {
    /// Loads the saved state (or starts fresh). Returns the service, the
    /// store position to resume after, and the findings written so far.
    /// `lock` is the data directory's [`LOCK_FILE`], taken with
    /// [`lock_data_dir`] before anything else was opened.
    pub fn open(data_dir: &Path, config: Config, lock: File) -> anyhow::Result<(Self, u64, u64)> {
        let path = data_dir.join(STATE_FILE);
        let (rec, pos, written) = load(&path, config)?;
        Ok((
            Self {
                inner: Mutex::new(rec),
                path,
                config,
                _lock: lock,
            },
            pos,
            written,
        ))
    }

    /// Goes back to the saved state (after findings could not be written:
    /// the records since are read again and give the same findings with
    /// the same ordinals). Returns the saved position and findings written.
    pub(crate) fn reload(&self) -> anyhow::Result<(u64, u64)> {
        let (rec, pos, written) = load(&self.path, self.config)?;
        *self.inner.lock() = rec;
        Ok((pos, written))
    }

    /// The reconciler's counters.
    pub fn stats(&self) -> Stats {
        self.inner.lock().stats()
    }

    /// Per node and pair completeness.
    pub fn summary(&self) -> Summary {
        self.inner.lock().summary()
    }

    pub(crate) fn save(&self, pos: u64, written: u64) -> anyhow::Result<()> {
        let snapshot = self
            .inner
            .lock()
            .snapshot()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = Saved {
            pos,
            written,
            snapshot: Vec::new(),
        }
        .encode(&snapshot)?;
        crate::shared_state::save(&self.path, &bytes)?;
        Ok(())
    }
}

/// The reconciler saved at `path` with its position and findings written,
/// or a fresh one with `config`.
fn load(path: &Path, config: Config) -> anyhow::Result<(Reconciler, u64, u64)> {
    Ok(match read_saved(path)? {
        Some(s) => {
            let r = match Reconciler::restore(&s.snapshot) {
                Ok(r) => r,
                // Written by another version of the engine: go on from
                // the same store position (findings already written stay
                // written, none is derived twice), with no open windows.
                Err(e) => {
                    tracing::warn!(
                        "{}: {e}; reconciliation goes on from the same store position with a fresh state (windows open at the upgrade are judged without the records read before it)",
                        path.display()
                    );
                    Reconciler::new(config).map_err(|e| anyhow::anyhow!("{e}"))?
                }
            };
            (r, s.pos, s.written)
        }
        None => (
            Reconciler::new(config).map_err(|e| anyhow::anyhow!("{e}"))?,
            0,
            0,
        ),
    })
}

/// The saved state at `path`, if there is one.
fn read_saved(path: &Path) -> anyhow::Result<Option<Saved>> {
    match std::fs::read(path) {
        Ok(b) => Saved::decode(&b).map(Some).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); move it away to reconcile from scratch",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    }
}

/// The configuration the reconciler of `data_dir` runs with (the one in
/// its saved state, which wins over the server's flags), if it saved one.
pub fn saved_config(data_dir: &Path) -> anyhow::Result<Option<Config>> {
    let path = data_dir.join(STATE_FILE);
    let Some(s) = read_saved(&path)? else {
        return Ok(None);
    };
    // A state of another engine version: its settings are unknown.
    Ok(Reconciler::restore(&s.snapshot).ok().map(|r| *r.config()))
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
fn observations_of(
    catalog: &Catalog,
    r: &Record,
    integrity: Option<BatchVerdict>,
    sent: Option<i64>,
) -> Result<Vec<FlowObservation>, String> {
    let Some(node) = catalog.node(&PublicId(r.rec.instance)) else {
        return Ok(Vec::new());
    };
    let record = serde_json::from_slice::<FlowRecord>(&r.rec.body)
        .map_err(|e| format!("not a flow record: {e}"))?;
    let (proc_id, proc_seq) = r.rec.identity.unwrap_or((0, r.seq));
    let tailnet: Arc<str> = Arc::from(node.tailnet_id.as_str());
    let node_id: Arc<str> = Arc::from(node.node_id.as_str());
    let instance: Arc<str> = Arc::from(hex::encode(r.rec.instance).as_str());
    Ok(record
        .entries()
        .enumerate()
        .map(|(i, (k, c))| FlowObservation {
            tailnet: tailnet.clone(),
            node: node_id.clone(),
            start: i64::try_from(record.start).unwrap_or(i64::MAX),
            end: i64::try_from(record.end).unwrap_or(i64::MAX),
            logged: r.rec.time,
            kind: match k {
                tally_proto::flow::TrafficKind::Virtual => FlowKind::Virtual,
                tally_proto::flow::TrafficKind::Subnet => FlowKind::Subnet,
                tally_proto::flow::TrafficKind::Exit => FlowKind::Exit,
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
            sequenced: r.rec.identity.is_some(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            integrity,
            sent,
            capture_start: record.capture_start.and_then(|c| i64::try_from(c).ok()),
        })
        .collect())
}

/// The records a batch record says the server discarded (flow logging
/// was off), for the reconciler.
fn discarded(
    catalog: &Catalog,
    r: &Record,
    b: &crate::ingest::batches::BatchRecord,
) -> Vec<DiscardedRecord> {
    if b.discarded.is_empty() {
        return Vec::new();
    }
    let Some(node) = catalog.node(&PublicId(r.rec.instance)) else {
        return Vec::new();
    };
    let tailnet: Arc<str> = Arc::from(node.tailnet_id.as_str());
    let node_id: Arc<str> = Arc::from(node.node_id.as_str());
    let instance: Arc<str> = Arc::from(hex::encode(r.rec.instance).as_str());
    b.discarded
        .iter()
        .map(|d| DiscardedRecord {
            tailnet: tailnet.clone(),
            node: node_id.clone(),
            start: i64::try_from(d.start).unwrap_or(i64::MAX),
            end: i64::try_from(d.end).unwrap_or(i64::MAX),
            logged: r.rec.time,
            sent: b.sent_at,
            instance: instance.clone(),
            proc_id: d.proc_id,
            proc_seq: d.proc_seq,
        })
        .collect()
}

/// The reconciler's input: flow records and batch verdicts. Expired
/// records are read too: the raw flow records are kept until this consumer
/// has read them.
pub(crate) fn input() -> ReadSpec {
    ReadSpec {
        filter: Filter {
            collections: vec![FLOWS_COLLECTION.to_owned()],
            kinds: vec![kind::LOG, kind::BATCH],
            ..Filter::default()
        },
        include_expired: true,
    }
}

/// Most records, and about the most body bytes, one read takes.
pub(crate) const READ_LIMITS: ReadLimits = ReadLimits {
    records: READ_RECORDS,
    bytes: READ_BYTES,
};

/// One read of the reconciler's input after store position `pos`.
fn read_after(store: &Store, pos: u64) -> Result<ScanBatch, StoreError> {
    input().read(store, pos + 1, READ_LIMITS)
}

/// How far a read was taken in.
pub(crate) struct TakenIn {
    /// Store position taken in through.
    pub pos: u64,
    /// Receive time of the last record taken in.
    pub last_time: Option<i64>,
    /// Flow records that could not be read (they count as missing).
    pub rejected: Vec<Rejection>,
}

/// One upload, as the reconciler takes it in.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    /// The observations of its flow records, with the batch's verdict and
    /// send time.
    observations: Vec<FlowObservation>,
    /// Flow records the server did not store (flow logging was off).
    discarded: Vec<DiscardedRecord>,
}

impl Upload {
    /// Feeds the upload to `rec`.
    pub(crate) fn feed(&self, rec: &mut Reconciler) {
        for d in &self.discarded {
            rec.discarded(d);
        }
        for o in &self.observations {
            rec.observe(o);
        }
    }
}

/// Takes in one read of the store (the one input path of the service and
/// of [`replay`]): an upload's entries are followed by its batch record,
/// when signed, so consecutive records of one upload (same instance and
/// receive time) are one group; `take` gets each group's receive time and
/// the [`Upload`]. A group a truncated read may have cut is left for the
/// next read.
pub(crate) fn take_in(
    catalog: &Catalog,
    batch: &ScanBatch,
    pos: u64,
    mut take: impl FnMut(i64, &Upload),
) -> TakenIn {
    let records = &batch.records;
    let mut i = 0;
    let mut consumed = pos;
    let mut rejected = Vec::new();
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
        let batch_record = group
            .iter()
            .rev()
            .find(|r| r.rec.kind == kind::BATCH)
            .and_then(|r| {
                serde_json::from_slice::<crate::ingest::batches::BatchRecord>(&r.rec.body)
                    .ok()
                    .map(|b| (r, b))
            });
        let integrity = batch_record.as_ref().and_then(|(_, b)| verdict(&b.verdict));
        let sent = batch_record.as_ref().and_then(|(_, b)| b.sent_at);
        let mut observations: Vec<FlowObservation> = Vec::new();
        for r in group.iter().filter(|r| r.rec.kind == kind::LOG) {
            match observations_of(catalog, r, integrity, sent) {
                Ok(o) => observations.extend(o),
                Err(reason) => rejected.push(Rejection {
                    position: r.seq,
                    reason,
                }),
            }
        }
        if sent.is_none() {
            // The upload left no earlier than its newest record ended: one
            // bound for all its records (a backlog sent at once is then
            // placed as one, not each record by its own queue delay).
            let newest = observations.iter().map(|o| o.end).max();
            for o in &mut observations {
                o.sent = newest;
            }
        }
        let upload = Upload {
            observations,
            discarded: batch_record
                .map(|(r, b)| discarded(catalog, r, &b))
                .unwrap_or_default(),
        };
        take(records[i].rec.time, &upload);
        consumed = group.last().map_or(consumed, |r| r.seq);
        i = j;
    }
    if i == records.len() {
        consumed = consumed.max(batch.next_seq.saturating_sub(1));
    }
    TakenIn {
        pos: consumed,
        last_time: records[..i].last().map(|r| r.rec.time),
        rejected,
    }
}

/// The flow-logging history of one tailnet: the state from the start and
/// every switch after it (from the audit log).
#[derive(Debug, Clone, Default, PartialEq)]
struct LoggingHistory {
    /// State before the first recorded switch.
    initially: bool,
    /// `(time, on after it)`, oldest first.
    switches: Vec<(i64, bool)>,
}

impl LoggingHistory {
    async fn read(control: &ControlDb, tailnet: &str, now_on: bool) -> anyhow::Result<Self> {
        let switches = control
            .setting_switches(tailnet, "networkFlowLoggingOn")
            .await?;
        // Before the first switch the setting was the opposite of it; with
        // no switch recorded (or retention removed them), as it is now.
        let initially = switches.first().map_or(now_on, |(_, on)| !on);
        Ok(Self {
            initially,
            switches,
        })
    }

    /// The state at `t`.
    fn at(&self, t: i64) -> bool {
        self.switches
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map_or(self.initially, |(_, on)| *on)
    }
}

/// What the control database knows about every node, as the reconciler
/// is told it: for each node its state when it registered and again at
/// every flow-logging switch after that (the reconciler keeps one entry
/// per time, so telling it again is harmless).
async fn node_facts(control: &ControlDb) -> anyhow::Result<Vec<NodeInfo>> {
    let now = tally_proto::timefmt::now_nanos();
    let on: std::collections::HashSet<String> = control
        .tailnets_with("networkFlowLoggingOn")
        .await?
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for t in control.all_tailnet_ids().await? {
        let nodes = control.nodes(&t).await?;
        if nodes.is_empty() {
            continue;
        }
        let history = LoggingHistory::read(control, &t, on.contains(&t)).await?;
        for n in nodes {
            let addresses: Vec<IpAddr> = n
                .addresses
                .iter()
                .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
                .collect();
            let created = tally_proto::timefmt::parse_rfc3339(&n.created)
                .unwrap_or(now)
                .min(now);
            let info = |at: i64| NodeInfo {
                tailnet: t.clone(),
                node: n.id.clone(),
                addresses: addresses.clone(),
                opted_out: n.no_logs_no_support,
                flow_logging: history.at(at),
                last_report: tally_proto::timefmt::parse_rfc3339(&n.last_seen),
                at,
            };
            out.push(info(created));
            for (at, _) in history.switches.iter().filter(|(at, _)| *at > created) {
                out.push(info(*at));
            }
        }
    }
    Ok(out)
}

/// Tells the reconciler what the control database knows about every node
/// (nothing when the database cannot be read: next time).
pub(crate) async fn refresh_nodes(control: &ControlDb, svc: &ReconcileService) {
    match node_facts(control).await {
        Ok(facts) => {
            let mut rec = svc.inner.lock();
            for f in &facts {
                rec.update_node(f);
            }
        }
        Err(e) => tracing::warn!("reading node facts for reconciliation failed (will retry): {e}"),
    }
}

/// The server's own log of findings: a summary per class, at most one line
/// a minute (the findings themselves are in the `findings` collection and
/// `tally reconcile report`); the first finding after a quiet minute is
/// told at once.
#[derive(Debug, Default)]
pub struct FindingLog {
    /// Findings per class since the last line.
    pending: std::collections::BTreeMap<&'static str, u64>,
    /// When the last line was written.
    last: Option<std::time::Instant>,
}

/// Least time between two lines of [`FindingLog`].
pub const FINDING_LOG_EVERY: Duration = Duration::from_secs(60);

impl FindingLog {
    /// Counts findings of these classes; returns a line to log now, if due.
    pub fn note(
        &mut self,
        now: std::time::Instant,
        classes: impl Iterator<Item = &'static str>,
    ) -> Option<String> {
        for c in classes {
            *self.pending.entry(c).or_default() += 1;
        }
        self.flush(now)
    }

    /// The summary line of what was counted, if any is pending and the last
    /// line is at least [`FINDING_LOG_EVERY`] old.
    pub fn flush(&mut self, now: std::time::Instant) -> Option<String> {
        if self.pending.is_empty()
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < FINDING_LOG_EVERY)
        {
            return None;
        }
        let total: u64 = self.pending.values().sum();
        let classes: Vec<String> = self
            .pending
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let since = if self.last.is_some() {
            " in the last minute"
        } else {
            ""
        };
        self.pending.clear();
        self.last = Some(now);
        Some(format!(
            "reconciliation: {total} new finding{}{since} ({}); `tally reconcile report` lists them",
            if total == 1 { "" } else { "s" },
            classes.join(", ")
        ))
    }
}

/// What [`replay`] computed.
#[derive(Debug)]
pub struct Replay {
    /// The findings, in the order the reconciler produced them.
    pub findings: Vec<Finding>,
    /// Flow and batch records read.
    pub records: u64,
    /// The reconciler's counters at the end.
    pub stats: Stats,
    /// What store recovery cut or salvaged when the store was opened (a
    /// server that crashed leaves a torn tail; its restart cuts the same).
    pub recovery: Vec<String>,
}

/// Recomputes offline what the reconciler finds in a stopped server's data
/// directory: a fresh [`Reconciler`] with `config` is told the node facts
/// of the control database (SQLite in `data_dir`, or `control_db`), then
/// takes in every stored flow record in store order through the service's
/// input path, its clock the receive time of each upload, and finally a
/// day past the later of now and the last record, so every window is judged.
///
/// Refuses (with what to do) when `data_dir` is not a server's data
/// directory or a running server holds it. Opening the store recovers it
/// as a server restart would (a torn WAL tail is cut).
///
/// `progress` is told the store position read up to and the store's end
/// after each batch (for a progress bar).
pub async fn replay(
    data_dir: &Path,
    control_db: Option<&str>,
    config: Config,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> anyhow::Result<Replay> {
    if !data_dir.is_dir() {
        anyhow::bail!(
            "no data directory at {}: give the --data-dir of a tally server",
            data_dir.display()
        );
    }
    if !data_dir.join("store").is_dir() {
        anyhow::bail!(
            "{} has no embedded store (no store/): give the --data-dir of a tally server that keeps its log there (servers on a shared log, --log nats://, keep none)",
            data_dir.display()
        );
    }
    if control_db.is_none() && !data_dir.join("control.db").is_file() {
        anyhow::bail!(
            "{} has no control.db; if the server ran with --control-db postgres://..., give the same --control-db",
            data_dir.display()
        );
    }
    let mut rec = Reconciler::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Ok(lock) = try_lock(data_dir)? else {
        anyhow::bail!(
            "{} is in use by a running tally server ({} is locked); stop the server first: replay reads a stopped server's data directory",
            data_dir.display(),
            data_dir.join(LOCK_FILE).display()
        );
    };
    let control = ControlDb::open(control_db, data_dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the control database: {e}"))?;
    let facts = node_facts(&control).await;
    let rules = Arc::new(RetentionRules::default());
    let catalog = Catalog::new(rules.clone());
    let loaded = catalog.reload(&control).await;
    control.close().await;
    for f in &facts? {
        rec.update_node(f);
    }
    loaded.map_err(|e| anyhow::anyhow!("cannot read the control database: {e}"))?;
    let store_config = StoreConfig::new(data_dir.join("store"));
    tokio::task::spawn_blocking(move || -> anyhow::Result<Replay> {
        let (store, report) = Store::open(store_config, rules)
            .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
        let mut findings = Vec::new();
        let mut records = 0u64;
        let mut pos = 0u64;
        let mut last_time = i64::MIN;
        loop {
            let batch = read_after(&store, pos)
                .map_err(|e| anyhow::anyhow!("reading the store failed: {e}"))?;
            let taken = take_in(&catalog, &batch, pos, |time, upload| {
                upload.feed(&mut rec);
                findings.extend(rec.advance(time));
            });
            records += batch
                .records
                .iter()
                .take_while(|r| r.seq <= taken.pos)
                .count() as u64;
            pos = taken.pos;
            progress(pos, store.end_seq().max(pos));
            last_time = taken.last_time.unwrap_or(last_time).max(last_time);
            if !batch.truncated {
                break;
            }
        }
        const DAY: i64 = 86_400 * 1_000_000_000;
        let end = tally_proto::timefmt::now_nanos()
            .max(last_time)
            .saturating_add(DAY);
        findings.extend(rec.advance(end));
        store.close();
        drop(lock);
        Ok(Replay {
            findings,
            records,
            stats: rec.stats(),
            recovery: report.cuts,
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("the replay panicked: {e}"))?
}

#[cfg(test)]
mod finding_log_tests {
    use super::*;

    #[test]
    fn findings_are_summed_into_at_most_one_line_a_minute() {
        let t0 = std::time::Instant::now();
        let mut log = FindingLog::default();
        assert_eq!(log.flush(t0), None, "nothing to say");
        let first = log
            .note(t0, ["count_mismatch"].into_iter())
            .expect("told at once");
        assert!(
            first.contains("1 new finding (count_mismatch 1)"),
            "{first}"
        );
        // A burst within the minute is held back, then summed.
        let later = t0 + Duration::from_secs(1);
        for _ in 0..300 {
            let classes = [
                "missing_agent_silent",
                "missing_agent_silent",
                "sequence_gap",
            ];
            assert_eq!(log.note(later, classes.into_iter()), None);
        }
        assert_eq!(log.flush(t0 + Duration::from_secs(59)), None);
        let summary = log.flush(t0 + Duration::from_secs(60)).expect("a summary");
        assert!(
            summary.contains(
                "900 new findings in the last minute (missing_agent_silent 600, sequence_gap 300)"
            ),
            "{summary}"
        );
        assert_eq!(log.flush(t0 + Duration::from_secs(200)), None, "said once");
    }
}
