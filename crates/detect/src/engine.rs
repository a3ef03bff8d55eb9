//! The detector: per tailnet, the compiled rules and the state of their
//! correlations, suppression and the pair baseline. Events go in with their
//! event time; alerts come out. Deterministic: the same events in the same
//! order, from the same snapshot, give the same alerts.

use crate::event::{NodeRef, Service};
use crate::rules::{Rule, RuleError, detection_engine};
use rsigma_eval::event::Event;
use rsigma_eval::{
    CorrelationConfig, CorrelationEngine, CorrelationEventMode, CorrelationSnapshot, Engine,
    EvaluationResult, ResultBody,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tally_proto::alert::{Alert, AlertEvidence};
use tally_proto::finding::Window;

/// How long a pair of nodes must have been silent to be "first seen".
pub const PAIR_BASELINE_SECS: i64 = 7 * 24 * 3600;
/// Most events referenced by one alert's evidence.
const EVIDENCE_REFS: usize = 20;

/// Limits of the detector's state.
#[derive(Debug, Clone, Copy)]
pub struct DetectorConfig {
    /// Most correlation windows (rule × group key) per tailnet; beyond it
    /// the oldest are evicted (and counted).
    pub max_windows: usize,
    /// Most node pairs remembered per tailnet for `pair_first_seen`.
    pub max_pairs: usize,
    /// Most suppression entries (rule × group key) per tailnet.
    pub max_suppressions: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            max_windows: 200_000,
            max_pairs: 500_000,
            max_suppressions: 100_000,
        }
    }
}

/// Counters of the detector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorStats {
    /// Events evaluated.
    pub events: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Alerts suppressed (same rule and group key within the span).
    pub suppressed: u64,
    /// Correlation windows, pairs and suppression entries evicted at a limit
    /// (windows: with the expired ones swept at the same time).
    pub evicted: u64,
    /// Correlation windows held now.
    pub windows: u64,
}

/// When a (rule, group key) last alerted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Suppression {
    /// Event time of the last alert written (s).
    last: i64,
    /// Alerts suppressed since.
    suppressed: u64,
}

/// One tailnet's compiled rules and state.
struct TailnetDetector {
    rules: Vec<Arc<Rule>>,
    by_id: HashMap<String, Arc<Rule>>,
    /// Detection engines per service (index [`Service::index`]).
    detect: [Engine; 4],
    correlate: CorrelationEngine,
    suppress: HashMap<(String, String), Suppression>,
    /// (src node ID, dst node ID) → last seen (s).
    pairs: HashMap<(String, String), i64>,
    /// Event time of the first flow seen (s): the baseline starts there.
    first_flow: Option<i64>,
}

/// Everything the detector must keep across a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DetectorSnapshot {
    /// Per tailnet.
    pub tailnets: BTreeMap<String, TailnetSnapshot>,
    /// Counters.
    pub stats: DetectorStats,
}

/// One tailnet's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailnetSnapshot {
    /// rsigma's correlation windows.
    pub correlation: CorrelationSnapshot,
    /// (rule, group key, last alert, suppressed since).
    pub suppress: Vec<(String, String, i64, u64)>,
    /// (src node ID, dst node ID, last seen).
    pub pairs: Vec<(String, String, i64)>,
    /// First flow's event time.
    pub first_flow: Option<i64>,
}

/// The detector over every tailnet.
pub struct Detector {
    config: DetectorConfig,
    tailnets: HashMap<String, TailnetDetector>,
    /// Rules of tailnets not given their own ([`Detector::set_rules`]).
    default_rules: Vec<Arc<Rule>>,
    stats: DetectorStats,
    /// State of tailnets restored before their rules were set.
    pending: BTreeMap<String, TailnetSnapshot>,
}

fn compile(rules: &[Arc<Rule>], config: &DetectorConfig) -> Result<TailnetDetector, RuleError> {
    let mut per_service: [Vec<&rsigma_parser::SigmaRule>; 4] = Default::default();
    let mut by_id = HashMap::new();
    let mut seen_ids: HashMap<&str, &str> = HashMap::new();
    let mut correlate = CorrelationEngine::new(correlation_config(config));
    for rule in rules {
        let ids = rule
            .collection
            .rules
            .iter()
            .filter_map(|r| r.id.as_deref())
            .chain(
                rule.collection
                    .correlations
                    .iter()
                    .filter_map(|c| c.id.as_deref()),
            );
        for id in ids {
            if let Some(other) = seen_ids.insert(id, &rule.id)
                && other != rule.id
            {
                return Err(RuleError {
                    line: None,
                    message: format!("ID {id} is used by rule {other} and rule {} too", rule.id),
                });
            }
            by_id.insert(id.to_owned(), rule.clone());
        }
        for r in &rule.collection.rules {
            if let Ok(s) = crate::rules::services_of(&r.logsource) {
                per_service[s.index()].push(r);
            }
        }
        correlate
            .add_collection(&rule.collection)
            .map_err(|e| RuleError {
                line: None,
                message: format!("rule {}: {e}", rule.id),
            })?;
    }
    let detect = [
        detection_engine(&per_service[0])?,
        detection_engine(&per_service[1])?,
        detection_engine(&per_service[2])?,
        detection_engine(&per_service[3])?,
    ];
    Ok(TailnetDetector {
        rules: rules.to_vec(),
        by_id,
        detect,
        correlate,
        suppress: HashMap::new(),
        pairs: HashMap::new(),
        first_flow: None,
    })
}

impl Detector {
    /// A detector whose tailnets run `default_rules` until given their own.
    pub fn new(config: DetectorConfig, default_rules: Vec<Arc<Rule>>) -> Self {
        Self {
            config,
            tailnets: HashMap::new(),
            default_rules,
            stats: DetectorStats::default(),
            pending: BTreeMap::new(),
        }
    }

    /// Replaces `tailnet`'s rules, keeping the state of correlations whose
    /// IDs remain.
    pub fn set_rules(&mut self, tailnet: &str, rules: Vec<Arc<Rule>>) -> Result<(), RuleError> {
        let mut fresh = compile(&rules, &self.config)?;
        if let Some(old) = self.tailnets.remove(tailnet) {
            fresh.correlate.import_state(old.correlate.export_state());
            fresh.suppress = old.suppress;
            fresh.pairs = old.pairs;
            fresh.first_flow = old.first_flow;
        } else if let Some(snap) = self.pending.remove(tailnet) {
            restore_into(&mut fresh, snap);
        }
        self.tailnets.insert(tailnet.to_owned(), fresh);
        Ok(())
    }

    /// The rules `tailnet` runs.
    pub fn rules(&self, tailnet: &str) -> &[Arc<Rule>] {
        self.tailnets
            .get(tailnet)
            .map(|t| t.rules.as_slice())
            .unwrap_or(&self.default_rules)
    }

    fn tailnet(&mut self, tailnet: &str) -> &mut TailnetDetector {
        if !self.tailnets.contains_key(tailnet) {
            // A failure here is a bug in the built-in pack (its tests
            // compile it): the tailnet runs no rules, and the log says so.
            let mut t = compile(&self.default_rules, &self.config).unwrap_or_else(|e| {
                tracing::error!("the default rules do not compile: {e}");
                TailnetDetector::empty(&self.config)
            });
            if let Some(snap) = self.pending.remove(tailnet) {
                restore_into(&mut t, snap);
            }
            self.tailnets.insert(tailnet.to_owned(), t);
        }
        self.tailnets
            .get_mut(tailnet)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Whether the pair (`src`, `dst`) (node IDs) is new at `ts`: not seen in
    /// [`PAIR_BASELINE_SECS`], and the tailnet's flows have been watched that
    /// long. Records the pair as seen.
    pub fn pair_is_new(&mut self, tailnet: &str, src: &str, dst: &str, ts: i64) -> bool {
        let max_pairs = self.config.max_pairs;
        let t = self.tailnet(tailnet);
        let first = *t.first_flow.get_or_insert(ts);
        let key = (src.to_owned(), dst.to_owned());
        let last = t.pairs.insert(key, ts);
        let mut evicted = 0;
        if t.pairs.len() > max_pairs {
            // Forget the pairs silent longest (a tenth, so this is rare).
            evicted = evict_oldest_tenth(&mut t.pairs, |seen| *seen);
        }
        self.stats.evicted += evicted;
        let learned = ts.saturating_sub(first) >= PAIR_BASELINE_SECS;
        learned && last.is_none_or(|l| ts.saturating_sub(l) >= PAIR_BASELINE_SECS)
    }

    /// Evaluates one event of `service` for `tailnet` at event time `ts`
    /// (Unix seconds); returns the alerts it raises.
    pub fn process<E: Event>(
        &mut self,
        tailnet: &str,
        service: Service,
        event: &E,
        ts: i64,
        nodes: &dyn Fn(&str) -> Option<NodeRef>,
    ) -> Vec<Alert> {
        self.stats.events += 1;
        let max_suppressions = self.config.max_suppressions;
        let max_windows = self.config.max_windows;
        let t = self.tailnet(tailnet);
        let detections = t.detect[service.index()].evaluate(event);
        if detections.is_empty() {
            return Vec::new();
        }
        // At the limit, evict here rather than inside rsigma, to count what
        // goes: rsigma drops to 90 % of the limit and then adds the event's
        // windows, so the state count before and after does not tell.
        let mut evicted = 0u64;
        let held = t.correlate.state_count();
        if held >= max_windows {
            t.correlate.evict_expired(ts.max(0));
            evicted += held.saturating_sub(t.correlate.state_count()) as u64;
        }
        let results = t.correlate.process_with_detections(event, detections, ts);
        let mut alerts = Vec::new();
        let mut suppressed = 0u64;
        for r in results {
            let Some(alert) = to_alert(tailnet, t, &r, service, event, ts, nodes) else {
                continue;
            };
            let rule = t.by_id.get(&alert.rule_id).cloned();
            let span = rule
                .as_ref()
                .map_or(crate::rules::DEFAULT_SUPPRESS_SECS, |r| r.suppress_secs);
            let key = (alert.rule_id.clone(), group_text(&alert.group));
            match t.suppress.get_mut(&key) {
                Some(s) if ts < s.last.saturating_add(span as i64) => {
                    s.suppressed += 1;
                    suppressed += 1;
                }
                _ => {
                    let prior = t.suppress.insert(
                        key,
                        Suppression {
                            last: ts,
                            suppressed: 0,
                        },
                    );
                    let mut alert = alert;
                    alert.suppressed_before = prior.map_or(0, |p| p.suppressed);
                    alerts.push(alert);
                }
            }
        }
        if t.suppress.len() > max_suppressions {
            evicted += evict_oldest_tenth(&mut t.suppress, |s| s.last);
        }
        self.stats.alerts += alerts.len() as u64;
        self.stats.suppressed += suppressed;
        self.stats.evicted += evicted;
        alerts
    }

    /// Drops correlation windows that ended before `now` (event time, s).
    pub fn evict_expired(&mut self, now: i64) {
        for t in self.tailnets.values_mut() {
            t.correlate.evict_expired(now);
        }
    }

    /// Counters (with the windows held now).
    pub fn stats(&self) -> DetectorStats {
        DetectorStats {
            windows: self
                .tailnets
                .values()
                .map(|t| t.correlate.state_count() as u64)
                .sum(),
            ..self.stats
        }
    }

    /// The state to save with the consumer's position.
    pub fn snapshot(&self) -> DetectorSnapshot {
        let mut tailnets: BTreeMap<String, TailnetSnapshot> = self.pending.clone();
        for (name, t) in &self.tailnets {
            let mut suppress: Vec<_> = t
                .suppress
                .iter()
                .map(|((r, g), s)| (r.clone(), g.clone(), s.last, s.suppressed))
                .collect();
            suppress.sort();
            let mut pairs: Vec<_> = t
                .pairs
                .iter()
                .map(|((a, b), ts)| (a.clone(), b.clone(), *ts))
                .collect();
            pairs.sort();
            tailnets.insert(
                name.clone(),
                TailnetSnapshot {
                    correlation: t.correlate.export_state(),
                    suppress,
                    pairs,
                    first_flow: t.first_flow,
                },
            );
        }
        DetectorSnapshot {
            tailnets,
            stats: self.stats,
        }
    }

    /// Restores saved state (before any event is processed).
    pub fn restore(&mut self, snapshot: DetectorSnapshot) {
        self.stats = snapshot.stats;
        for (name, snap) in snapshot.tailnets {
            match self.tailnets.get_mut(&name) {
                Some(t) => restore_into(t, snap),
                None => {
                    self.pending.insert(name, snap);
                }
            }
        }
    }
}

impl TailnetDetector {
    fn empty(config: &DetectorConfig) -> Self {
        TailnetDetector {
            rules: Vec::new(),
            by_id: HashMap::new(),
            detect: Default::default(),
            correlate: CorrelationEngine::new(correlation_config(config)),
            suppress: HashMap::new(),
            pairs: HashMap::new(),
            first_flow: None,
        }
    }
}

fn correlation_config(config: &DetectorConfig) -> CorrelationConfig {
    CorrelationConfig {
        max_state_entries: config.max_windows,
        suppress: None,
        emit_detections: false,
        correlation_event_mode: CorrelationEventMode::Refs,
        max_correlation_events: EVIDENCE_REFS,
        max_group_entries: Some(10_000),
        ..CorrelationConfig::default()
    }
}

fn restore_into(t: &mut TailnetDetector, snap: TailnetSnapshot) {
    t.correlate.import_state(snap.correlation);
    t.suppress = snap
        .suppress
        .into_iter()
        .map(|(r, g, last, suppressed)| ((r, g), Suppression { last, suppressed }))
        .collect();
    t.pairs = snap
        .pairs
        .into_iter()
        .map(|(a, b, ts)| ((a, b), ts))
        .collect();
    t.first_flow = snap.first_flow;
}

/// Removes a tenth (at least one) of `map`'s entries, those with the
/// oldest `time`, ties in key order (the same entries in every run: no
/// more than a tenth even when all share one time); returns how many.
fn evict_oldest_tenth<V>(map: &mut HashMap<(String, String), V>, time: impl Fn(&V) -> i64) -> u64 {
    let n = (map.len() / 10).max(1);
    let mut order: Vec<(i64, &(String, String))> = map.iter().map(|(k, v)| (time(v), k)).collect();
    if n < order.len() {
        order.select_nth_unstable(n - 1);
        order.truncate(n);
    }
    let gone: Vec<(String, String)> = order.into_iter().map(|(_, k)| k.clone()).collect();
    for k in &gone {
        map.remove(k);
    }
    gone.len() as u64
}

fn group_text(group: &BTreeMap<String, String>) -> String {
    group
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Fields shown with an alert, when the event has them.
const SHOWN_FIELDS: &[&str] = &[
    "src_node",
    "src_ip",
    "dst_node",
    "dst_ip",
    "dst_port",
    "Protocol",
    "kind",
    "tx_bytes",
    "logged_by",
    "action",
    "actor.loginName",
    "target.type",
    "target.name",
    "target.property",
    "old",
    "new",
    "error",
    "class",
    "node",
    "peer",
    "collection",
];

fn text_of<E: Event>(event: &E, field: &str) -> Option<String> {
    event.get_field(field).and_then(|v| match v {
        rsigma_eval::EventValue::Null => None,
        rsigma_eval::EventValue::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(|s| s.into_owned()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        rsigma_eval::EventValue::Map(_) => {
            let j = event.to_json();
            field
                .split('.')
                .try_fold(&j, |v, k| v.get(k))
                .map(|v| v.to_string())
        }
        other => other.as_str().map(|s| s.into_owned()),
    })
}

#[allow(clippy::too_many_arguments)]
fn to_alert<E: Event>(
    tailnet: &str,
    t: &TailnetDetector,
    r: &EvaluationResult,
    service: Service,
    event: &E,
    ts: i64,
    nodes: &dyn Fn(&str) -> Option<NodeRef>,
) -> Option<Alert> {
    let rule_id = r.header.rule_id.clone()?;
    let rule = t.by_id.get(&rule_id)?;
    // A base rule of a correlation file alerts only when it is the file's
    // own rule (its correlation decides otherwise).
    if rule.correlation && r.is_detection() {
        return None;
    }
    let severity = r
        .header
        .level
        .and_then(|l| tally_proto::alert::AlertSeverity::parse(l.as_str()))
        .unwrap_or(rule.level);
    let mut fields = BTreeMap::new();
    for f in SHOWN_FIELDS {
        if let Some(v) = text_of(event, f).filter(|v| !v.is_empty()) {
            fields.insert((*f).to_owned(), v);
        }
    }
    let event_id = text_of(event, "event_id").and_then(|s| s.parse::<u64>().ok());
    let (group, window_start, value, positions, summary) = match &r.body {
        ResultBody::Correlation(c) => {
            let group: BTreeMap<String, String> = c.group_key.iter().cloned().collect();
            let mut positions: Vec<u64> = c
                .event_refs
                .iter()
                .flatten()
                .filter_map(|e| e.id.as_deref().and_then(|s| s.parse().ok()))
                .collect();
            positions.dedup();
            let start = c
                .event_refs
                .iter()
                .flatten()
                .map(|e| e.timestamp)
                .min()
                .unwrap_or(ts.saturating_sub(c.timespan_secs as i64));
            let field = rule
                .collection
                .correlations
                .iter()
                .find(|k| k.id.as_deref() == Some(rule_id.as_str()))
                .and_then(|k| match &k.condition {
                    rsigma_parser::CorrelationCondition::Threshold { field, .. } => {
                        field.as_ref().map(|f| f.join(","))
                    }
                    _ => None,
                })
                .unwrap_or_default();
            use rsigma_parser::CorrelationType as T;
            let what = match c.correlation_type {
                T::EventCount => "events".to_owned(),
                T::ValueCount => format!("distinct {field}"),
                T::ValueSum => format!("sum of {field}"),
                T::ValueAvg => format!("average {field}"),
                T::Temporal | T::TemporalOrdered => "rules matched".to_owned(),
                _ => format!("{field} ({:?})", c.correlation_type),
            };
            let summary = format!(
                "{} {what} within {} for {}",
                c.aggregated_value,
                humanize_secs(c.timespan_secs),
                if group.is_empty() {
                    "the tailnet".to_owned()
                } else {
                    group_text(&group)
                }
            );
            (group, start, c.aggregated_value, positions, summary)
        }
        ResultBody::Detection(d) => {
            let mut group = BTreeMap::new();
            for g in &rule.group_by {
                group.insert(g.clone(), text_of(event, g).unwrap_or_default());
            }
            let matched: Vec<String> = d
                .matched_fields
                .iter()
                .take(5)
                .map(|m| match &m.value {
                    serde_json::Value::String(v) => format!("{}={v}", m.field),
                    v => format!("{}={v}", m.field),
                })
                .collect();
            let summary = if matched.is_empty() {
                format!("{} event matched", service.name())
            } else {
                format!("{} event matched {}", service.name(), matched.join(" "))
            };
            (group, ts, 1.0, event_id.into_iter().collect(), summary)
        }
    };
    let node = ["src_node", "node"]
        .iter()
        .find_map(|k| group.get(*k).filter(|v| !v.is_empty()).cloned())
        .or_else(|| group.get("src_ip").and_then(|ip| nodes(ip)).map(|n| n.name))
        .or_else(|| fields.get("src_node").or(fields.get("node")).cloned());
    // A detection rule's alerts also hash the event that raised them: two
    // matching events of one group in the same second (a rule that
    // suppresses nothing) are two alerts.
    let raised_by = match &r.body {
        ResultBody::Detection(_) => event_id.map(|p| p.to_string()),
        ResultBody::Correlation(_) => None,
    };
    let mut h = Sha256::new();
    for part in [
        tailnet,
        &rule_id,
        &group_text(&group),
        &window_start.to_string(),
    ]
    .into_iter()
    .chain(raised_by.as_deref())
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let id = hex::encode(&h.finalize()[..16]);
    const NS: i64 = 1_000_000_000;
    Some(Alert {
        id,
        tailnet: tailnet.to_owned(),
        rule_id,
        title: r.header.rule_title.clone(),
        severity,
        group,
        node,
        window: Window {
            start: window_start.saturating_mul(NS),
            end: ts.saturating_mul(NS),
        },
        evidence: AlertEvidence {
            positions: positions.into_iter().take(EVIDENCE_REFS).collect(),
            value,
            summary,
            fields,
        },
        suppressed_before: 0,
        tags: r.header.tags.clone(),
    })
}

fn humanize_secs(s: u64) -> String {
    match s {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
