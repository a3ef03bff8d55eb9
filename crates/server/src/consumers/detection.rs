//! Detection's consumer: every flow entry, node log entry, audit event and
//! reconciliation finding in the log goes through the tailnet's Sigma
//! rules (`tally-detect`); the alerts go to the log's `alerts` collection.
//!
//! - Events carry their event time (a flow record's window start, an audit
//!   event's time, a log entry's or finding's receive time), never the
//!   wall clock: a replay gives the same windows.
//! - Commit: the detector's snapshot (correlation windows, suppression,
//!   the pair baseline), the position and the number of alerts written, in
//!   `<data-dir>/detection.state`, every 5 s. A replay from an older save
//!   raises the same alerts with the same ordinals (`proc_seq`), which the
//!   log's dedup drops: exactly once.
//! - Rules: the built-in pack plus each tailnet's own (control database),
//!   reloaded within a second of a change through the API (and every 10 s
//!   from the database). A change applies from the record read next.
//! - Policy `skip`: a record it cannot read (written by agents) is
//!   recorded and skipped; the other rules and tailnets go on.

use crate::control::ControlDb;
use crate::control::detection::RuleRow;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_detect::{
    Detector, DetectorConfig, DetectorSnapshot, FlowEvent, NodeRef, ObjectEvent, Rule, RuleError,
    Service,
};
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled, Rejection};
use tally_proto::alert::Alert;
use tally_proto::collection;
use tally_proto::flow::FlowRecord;
use tally_store::{
    NewRecord, Owner, Position, ReadLimits, ReadSpec, Record, ScanBatch, SharedLog, kind,
};

/// Name of the detection consumer.
pub const NAME: &str = "detection";
const STATE_FILE: &str = "detection.state";
/// How often the detector's state is saved.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How often rules and nodes are re-read from the control database.
const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// Most records, and about the most bytes, one read takes.
const READ_LIMITS: ReadLimits = ReadLimits {
    records: 5000,
    bytes: 16 << 20,
};

/// The detection service, shared with the API: the built-in pack and the
/// signal that a tailnet's rules changed.
pub struct DetectionService {
    builtin: Vec<Arc<Rule>>,
    /// Bumped by the API after each rule change.
    generation: AtomicU64,
    /// The detector's counters after its last batch (for `/metrics`).
    stats: parking_lot::Mutex<tally_detect::DetectorStats>,
    /// Rule test runs at once (each reads the tailnet's stored records).
    pub test_runs: Arc<tokio::sync::Semaphore>,
}

/// Most rules of its own a tailnet may have.
pub const MAX_OWN_RULES: usize = 500;
/// Rule test runs at once, server-wide.
pub const MAX_TEST_RUNS: usize = 2;

impl DetectionService {
    /// Parses the built-in pack (a failure is a bug the pack's tests catch).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            builtin: tally_detect::builtin::rules()
                .map_err(|e| anyhow::anyhow!("the built-in detection rules: {e}"))?,
            generation: AtomicU64::new(0),
            stats: parking_lot::Mutex::new(Default::default()),
            test_runs: Arc::new(tokio::sync::Semaphore::new(MAX_TEST_RUNS)),
        })
    }

    /// The detector's counters after its last batch.
    pub fn stats(&self) -> tally_detect::DetectorStats {
        *self.stats.lock()
    }

    /// The built-in rules.
    pub fn builtin(&self) -> &[Arc<Rule>] {
        &self.builtin
    }

    /// Tells the consumer that rules changed.
    pub fn rules_changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The rules a tailnet with these rows runs: the built-in ones not
    /// disabled, and its own enabled ones. Stored rules that no longer
    /// parse (after an upgrade) are returned as errors, not run.
    pub fn effective(&self, rows: &[RuleRow]) -> (Vec<Arc<Rule>>, Vec<(String, RuleError)>) {
        let by_id: HashMap<&str, &RuleRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut rules: Vec<Arc<Rule>> = self
            .builtin
            .iter()
            .filter(|r| by_id.get(r.id.as_str()).is_none_or(|row| row.enabled))
            .cloned()
            .collect();
        let mut errors = Vec::new();
        for row in rows.iter().filter(|r| r.enabled && !r.yaml.is_empty()) {
            match tally_detect::parse_rule(&row.yaml) {
                Ok(r) => rules.push(Arc::new(r)),
                Err(e) => errors.push((row.id.clone(), e)),
            }
        }
        (rules, errors)
    }
}

/// What rules see of one tailnet's nodes.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_ip: HashMap<IpAddr, NodeRef>,
    by_id: HashMap<String, NodeRef>,
    by_instance: HashMap<[u8; 32], NodeRef>,
}

impl Directory {
    /// The node with this address.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&NodeRef> {
        self.by_ip.get(&ip.to_canonical())
    }
}

/// Every tailnet's directory, read from the control database.
pub async fn read_directories(control: &ControlDb) -> anyhow::Result<HashMap<String, Directory>> {
    let mut out = HashMap::new();
    for t in control.all_tailnet_ids().await? {
        let mut d = Directory::default();
        for n in control.nodes(&t).await? {
            let node = NodeRef {
                id: n.id.clone(),
                name: n.name.clone(),
                tags: n.tags.clone(),
            };
            for a in &n.addresses {
                if let Some(ip) = a.split('/').next().and_then(|s| s.parse::<IpAddr>().ok()) {
                    d.by_ip.insert(ip.to_canonical(), node.clone());
                }
            }
            if let Some(i) = n
                .instance
                .as_deref()
                .and_then(|s| tally_proto::PublicId::parse(s).ok())
            {
                d.by_instance.insert(i.0, node.clone());
            }
            d.by_id.insert(n.id.clone(), node);
        }
        out.insert(t, d);
    }
    Ok(out)
}

/// Feeds one stored record to the detector; returns its alerts, or why the
/// record cannot be read. Records detection does not read give nothing.
pub fn feed(
    detector: &mut Detector,
    dirs: &HashMap<String, Directory>,
    r: &Record,
) -> Result<Vec<Alert>, String> {
    let Owner::Tailnet(tailnet) = &r.rec.owner else {
        return Ok(Vec::new());
    };
    let empty = Directory::default();
    let dir = dirs.get(tailnet).unwrap_or(&empty);
    let lookup = |ip: &str| {
        ip.parse::<IpAddr>()
            .ok()
            .and_then(|ip| dir.by_ip(ip).cloned())
    };
    let event_id = r.seq.to_string();
    let secs = |ns: i64| ns.div_euclid(1_000_000_000);
    let coll = r.rec.collection.as_str();
    if r.rec.kind != kind::LOG {
        return Ok(Vec::new());
    }
    match coll {
        collection::FLOWS => {
            let rec: FlowRecord = serde_json::from_slice(&r.rec.body)
                .map_err(|e| format!("not a flow record: {e}"))?;
            let logger = dir.by_instance.get(&r.rec.instance);
            let logged_by = logger.map(|n| n.name.as_str()).unwrap_or_default();
            let start_ns = i64::try_from(rec.start).unwrap_or(i64::MAX);
            // The node's clock, but never later than the server received
            // the record: a record dated in the future must not open
            // windows or suppression spans that outlive it.
            let ts = secs(start_ns.min(r.rec.time));
            let start = tally_proto::timefmt::format_nanos(start_ns);
            let end =
                tally_proto::timefmt::format_nanos(i64::try_from(rec.end).unwrap_or(i64::MAX));
            let mut alerts = Vec::new();
            for (k, c) in rec.entries() {
                // The entry's own side is the logging node's (by its
                // registration, not the address the record claims).
                let local = logger.or_else(|| dir.by_ip(c.src.ip()));
                let peer = dir.by_ip(c.dst.ip());
                let opened = tally_detect::event::local_opened(c.src.port(), c.dst.port());
                let (client, server) = if opened { (local, peer) } else { (peer, local) };
                let pair_first_seen = match (client, server) {
                    (Some(a), Some(b)) if k == tally_proto::flow::TrafficKind::Virtual => {
                        detector.pair_is_new(tailnet, &a.id, &b.id, ts)
                    }
                    _ => false,
                };
                let ev = FlowEvent {
                    counts: c,
                    kind: k,
                    local,
                    peer,
                    logged_by,
                    pair_first_seen,
                    start: &start,
                    end: &end,
                    event_id: &event_id,
                    ips: Default::default(),
                };
                alerts.extend(detector.process(tailnet, Service::Flows, &ev, ts, &lookup));
            }
            Ok(alerts)
        }
        collection::AUDIT => {
            let v: serde_json::Value = serde_json::from_slice(&r.rec.body)
                .map_err(|e| format!("not an audit event: {e}"))?;
            let ts = v
                .get("eventTime")
                .and_then(|t| t.as_str())
                .and_then(tally_proto::timefmt::parse_rfc3339)
                .unwrap_or(r.rec.time);
            let ev = ObjectEvent::audit(v, &event_id);
            Ok(detector.process(tailnet, Service::Audit, &ev, secs(ts), &lookup))
        }
        collection::FINDINGS => {
            let v: serde_json::Value =
                serde_json::from_slice(&r.rec.body).map_err(|e| format!("not a finding: {e}"))?;
            let node = v
                .get("node")
                .and_then(|n| n.as_str())
                .and_then(|n| dir.by_id.get(n));
            let peer = v
                .get("peer")
                .and_then(|n| n.as_str())
                .and_then(|n| dir.by_id.get(n));
            let ev = ObjectEvent::finding(v, node, peer, &event_id);
            Ok(detector.process(
                tailnet,
                Service::Reconciliation,
                &ev,
                secs(r.rec.time),
                &lookup,
            ))
        }
        c if collection::is_system(c) => Ok(Vec::new()),
        c => {
            let v: serde_json::Value = serde_json::from_slice(&r.rec.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&r.rec.body).into_owned())
            });
            let node = dir.by_instance.get(&r.rec.instance);
            let ev = ObjectEvent::log(v, node, c, &event_id);
            Ok(detector.process(tailnet, Service::Logs, &ev, secs(r.rec.time), &lookup))
        }
    }
}

/// `detection.state`: a JSON line with the position and alerts written,
/// then the detector's snapshot (JSON).
#[derive(Serialize, Deserialize)]
struct Saved {
    pos: u64,
    written: u64,
}

/// Reads the saved state: (position, alerts written, snapshot).
pub fn load_state(data_dir: &Path) -> anyhow::Result<(u64, u64, Option<DetectorSnapshot>)> {
    let path = data_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0, None)),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let saved: Saved = serde_json::from_slice(&bytes[..nl]).map_err(|e| {
        anyhow::anyhow!(
            "{} is damaged: {e}; move it away to start detection afresh from the log's beginning",
            path.display()
        )
    })?;
    let snapshot = match serde_json::from_slice::<DetectorSnapshot>(
        bytes.get(nl + 1..).unwrap_or_default(),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            // Another version's state: go on from the same position with
            // fresh windows (alerts written stay written).
            tracing::warn!(
                "{}: the detector's state cannot be read ({e}); detection goes on from position {} with fresh correlation windows",
                path.display(),
                saved.pos
            );
            None
        }
    };
    Ok((saved.pos, saved.written, snapshot))
}

/// The detection consumer.
pub struct Detection {
    svc: Arc<DetectionService>,
    detector: Arc<Mutex<Detector>>,
    log: SharedLog,
    control: ControlDb,
    data_dir: PathBuf,
    position: Position,
    written: u64,
    dirs: Arc<HashMap<String, Directory>>,
    /// Per tailnet with rows: (latest change, rows) loaded.
    versions: HashMap<String, (i64, i64)>,
    generation: u64,
    last_reload: Option<Instant>,
    /// Instances of records that are no registered node (until the next reload).
    not_nodes: std::collections::HashSet<[u8; 32]>,
}

impl Detection {
    /// Resumes from `data_dir`'s saved state (or the log's beginning).
    pub fn open(
        svc: Arc<DetectionService>,
        log: SharedLog,
        control: ControlDb,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let (position, written, snapshot) = load_state(data_dir)?;
        let mut detector = Detector::new(DetectorConfig::default(), svc.builtin().to_vec());
        if let Some(s) = snapshot {
            detector.restore(s);
        }
        Ok(Self {
            svc,
            detector: Arc::new(Mutex::new(detector)),
            log,
            control,
            data_dir: data_dir.to_owned(),
            position,
            written,
            dirs: Arc::new(HashMap::new()),
            versions: HashMap::new(),
            generation: u64::MAX,
            last_reload: None,
            not_nodes: std::collections::HashSet::new(),
        })
    }

    /// Re-reads nodes and, for tailnets whose rows changed, rules.
    async fn reload(&mut self) -> Result<(), ConsumerError> {
        let dirs = read_directories(&self.control)
            .await
            .map_err(|e| ConsumerError::new(format!("reading nodes: {e:#}")))?;
        self.dirs = Arc::new(dirs);
        let versions = self
            .control
            .detection_rule_versions()
            .await
            .map_err(|e| ConsumerError::new(format!("reading detection rules: {e}")))?;
        let mut changed: Vec<String> = versions
            .iter()
            .filter(|(t, v)| self.versions.get(*t) != Some(v))
            .map(|(t, _)| t.clone())
            .collect();
        changed.extend(
            self.versions
                .keys()
                .filter(|t| !versions.contains_key(*t))
                .cloned(),
        );
        for t in changed {
            let rows = self
                .control
                .detection_rules(&t)
                .await
                .map_err(|e| ConsumerError::new(format!("reading detection rules: {e}")))?;
            let (rules, errors) = self.svc.effective(&rows);
            for (id, e) in errors {
                tracing::error!(tailnet = %t, rule = %id, "a stored detection rule does not load and is not run: {e}");
            }
            if let Err(e) = self.detector.lock().set_rules(&t, rules) {
                tracing::error!(tailnet = %t, "the tailnet's detection rules do not compile together; it keeps its previous rules: {e}");
            }
        }
        self.versions = versions;
        self.last_reload = Some(Instant::now());
        self.not_nodes.clear();
        Ok(())
    }

    async fn write(&mut self, alerts: &[Alert]) -> Result<(), ConsumerError> {
        let now = tally_proto::timefmt::now_nanos();
        let mut records = Vec::with_capacity(alerts.len());
        for (k, a) in alerts.iter().enumerate() {
            records.push(NewRecord {
                time: now,
                collection: collection::ALERTS.to_owned(),
                owner: Owner::tailnet(a.tailnet.clone()),
                instance: collection::ALERTS_WRITER,
                identity: Some((1, self.written + 1 + k as u64)),
                client_time: None,
                kind: kind::LOG,
                body: serde_json::to_vec(a)
                    .map_err(|e| ConsumerError::new(format!("encoding an alert: {e}")))?,
            });
        }
        if let Err(e) = self.log.append(records).await {
            // Back to the saved state: the records read since raise the
            // same alerts with the same ordinals again.
            let (position, written, snapshot) = load_state(&self.data_dir).map_err(|r| {
                ConsumerError::new(format!(
                    "writing alerts: {e}; and the saved state cannot be read: {r:#}"
                ))
            })?;
            let mut detector =
                Detector::new(DetectorConfig::default(), self.svc.builtin().to_vec());
            if let Some(s) = snapshot {
                detector.restore(s);
            }
            *self.detector.lock() = detector;
            self.versions.clear();
            self.position = position;
            self.written = written;
            return Err(ConsumerError::new(format!(
                "writing alerts: {e}; going back to the saved state at position {position}"
            )));
        }
        self.written += alerts.len() as u64;
        for a in alerts {
            tracing::warn!(tailnet = %a.tailnet, rule = %a.rule_id, severity = a.severity.name(), node = a.node.as_deref().unwrap_or(""), "alert: {}", a.title);
        }
        Ok(())
    }
}

impl Consumer for Detection {
    fn name(&self) -> &str {
        NAME
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: tally_store::Filter {
                kinds: vec![kind::LOG],
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
        // A record from an instance the directory does not know (a node
        // that just registered): read the nodes again first, so that its
        // events carry its name and tags. Instances that are no node
        // (adopted into a collection) are remembered until the next reload.
        let unknown: Vec<[u8; 32]> = batch
            .records
            .iter()
            .filter(|r| match &r.rec.owner {
                Owner::Tailnet(t) => {
                    !collection::is_system(&r.rec.collection)
                        && !self.not_nodes.contains(&r.rec.instance)
                        && !self
                            .dirs
                            .get(t)
                            .is_some_and(|d| d.by_instance.contains_key(&r.rec.instance))
                }
                _ => false,
            })
            .map(|r| r.rec.instance)
            .collect();
        // Rules changed through the API apply to every record read after
        // the change's answer.
        let generation = self.svc.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.reload().await?;
        }
        if self.last_reload.is_none() || !unknown.is_empty() {
            self.reload().await?;
            for i in unknown {
                if !self.dirs.values().any(|d| d.by_instance.contains_key(&i)) {
                    self.not_nodes.insert(i);
                }
            }
        }
        let (detector, dirs) = (self.detector.clone(), self.dirs.clone());
        let read = batch.clone();
        let (alerts, rejected, stats) = tokio::task::spawn_blocking(move || {
            let mut d = detector.lock();
            let mut alerts = Vec::new();
            let mut rejected = Vec::new();
            for r in &read.records {
                match feed(&mut d, &dirs, r) {
                    Ok(a) => alerts.extend(a),
                    Err(reason) => rejected.push(Rejection {
                        position: r.seq,
                        reason,
                    }),
                }
            }
            let stats = d.stats();
            (alerts, rejected, stats)
        })
        .await
        .map_err(|e| ConsumerError::new(format!("the detector panicked: {e}")))?;
        if !alerts.is_empty() {
            self.write(&alerts).await?;
        }
        *self.svc.stats.lock() = stats;
        let through = batch.next_seq.saturating_sub(1);
        self.position = through;
        Ok(Handled { through, rejected })
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let (detector, pos, written) = (self.detector.clone(), self.position, self.written);
        let path = self.data_dir.join(STATE_FILE);
        tokio::task::spawn_blocking(move || {
            let snapshot = detector.lock().snapshot();
            let mut bytes = serde_json::to_vec(&Saved { pos, written })?;
            bytes.push(b'\n');
            serde_json::to_writer(&mut bytes, &snapshot)?;
            crate::shared_state::save(&path, &bytes)?;
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map_err(|e| ConsumerError::new(format!("saving the detector panicked: {e}")))?
        .map_err(|e| ConsumerError::new(format!("saving the detector's state: {e:#}")))
    }

    fn commit_every(&self) -> Duration {
        SAVE_EVERY
    }

    /// Reloads rules (at once after a change through the API) and nodes;
    /// drops correlation windows that ended.
    async fn tick(&mut self) -> Result<(), ConsumerError> {
        let generation = self.svc.generation.load(Ordering::Acquire);
        let due = self.last_reload.is_none_or(|t| t.elapsed() >= RELOAD_EVERY);
        if generation != self.generation || due {
            self.generation = generation;
            self.reload().await?;
        }
        Ok(())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }
}
