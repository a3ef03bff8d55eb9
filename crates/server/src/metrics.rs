//! `GET /metrics`: the server's metrics in the Prometheus text format
//! (`prometheus-client`). Counters of events are counted where they
//! happen (ingest, HTTP); the rest is read when scraped (store, consumers,
//! reconciler, detection, process). Every metric is listed in ARCHITECTURE.md.
//!
//! Labels stay bounded: a collection label is the collection's name for
//! the built-in collections and `custom` for every other (tailnets name
//! their own), a route label is the route's pattern (`/c/:collection`),
//! never its path.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use tally_pipeline::ConsumerState;

/// Labels of ingest counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    collection: String,
    code: String,
}

/// Labels of per-collection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectionLabels {
    collection: String,
}

/// Labels of HTTP counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    code: String,
}

/// Labels of per-consumer metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

/// Labels of a consumer's state (one series per state, 1 for the current).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    consumer: String,
    state: String,
}

/// Labels of the reconciler's entry counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    ingest_requests: Family<IngestLabels, Counter>,
    ingest_entries: Family<CollectionLabels, Counter>,
    ingest_duplicates: Family<CollectionLabels, Counter>,
    ingest_bytes: Family<CollectionLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    store_end: Gauge,
    store_wal_bytes: Gauge,
    store_sealed_bytes: Gauge,
    store_appended: Counter,
    store_fsyncs: Counter,
    store_fsync_seconds: FloatCounter,
    store_fsync_max_seconds: FloatGauge,
    consumer_position: Family<ConsumerLabels, Gauge>,
    consumer_lag_records: Family<ConsumerLabels, Gauge>,
    consumer_lag_seconds: Family<ConsumerLabels, FloatGauge>,
    consumer_records: Family<ConsumerLabels, Counter>,
    consumer_errors: Family<ConsumerLabels, Counter>,
    consumer_rejected: Family<ConsumerLabels, Counter>,
    consumer_state: Family<StateLabels, Gauge>,
    reconcile_entries: Family<OutcomeLabels, Counter>,
    reconcile_judged: Counter,
    reconcile_findings: Counter,
    detect_events: Counter,
    detect_alerts: Counter,
    detect_suppressed: Counter,
    detect_evicted: Counter,
    detect_windows: Gauge,
    flow_open_bytes: Gauge,
    flow_open_entries: Gauge,
    flow_sealed_files: Gauge,
    flow_bucket_files: Gauge,
    flow_bucket_checkpoint: Gauge,
    rss: Gauge,
}

/// The label of collection `name` (see the module documentation).
pub fn collection_label(name: &str) -> &str {
    if tally_proto::collection::BUILTIN.contains(&name) {
        name
    } else {
        "custom"
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            ingest_requests: Family::default(),
            ingest_entries: Family::default(),
            ingest_duplicates: Family::default(),
            ingest_bytes: Family::default(),
            http_requests: Family::default(),
            store_end: Gauge::default(),
            store_wal_bytes: Gauge::default(),
            store_sealed_bytes: Gauge::default(),
            store_appended: Counter::default(),
            store_fsyncs: Counter::default(),
            store_fsync_seconds: FloatCounter::default(),
            store_fsync_max_seconds: FloatGauge::default(),
            consumer_position: Family::default(),
            consumer_lag_records: Family::default(),
            consumer_lag_seconds: Family::default(),
            consumer_records: Family::default(),
            consumer_errors: Family::default(),
            consumer_rejected: Family::default(),
            consumer_state: Family::default(),
            reconcile_entries: Family::default(),
            reconcile_judged: Counter::default(),
            reconcile_findings: Counter::default(),
            detect_events: Counter::default(),
            detect_alerts: Counter::default(),
            detect_suppressed: Counter::default(),
            detect_evicted: Counter::default(),
            detect_windows: Gauge::default(),
            flow_open_bytes: Gauge::default(),
            flow_open_entries: Gauge::default(),
            flow_sealed_files: Gauge::default(),
            flow_bucket_files: Gauge::default(),
            flow_bucket_checkpoint: Gauge::default(),
            rss: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "tally_ingest_requests",
            "Uploads to the logs-service ingest, by collection and HTTP status",
            m.ingest_requests.clone(),
        );
        r.register(
            "tally_ingest_entries",
            "Entries stored by ingest, by collection",
            m.ingest_entries.clone(),
        );
        r.register(
            "tally_ingest_duplicates",
            "Entries dropped as retried duplicates, by collection",
            m.ingest_duplicates.clone(),
        );
        r.register(
            "tally_ingest_bytes",
            "Bytes of entries stored by ingest, by collection",
            m.ingest_bytes.clone(),
        );
        r.register(
            "tally_http_requests",
            "HTTP requests answered, by route pattern, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "tally_store_end_position",
            "The position the next record of the log gets",
            m.store_end.clone(),
        );
        r.register(
            "tally_store_wal_bytes",
            "Bytes in write-ahead-log files",
            m.store_wal_bytes.clone(),
        );
        r.register(
            "tally_store_sealed_bytes",
            "Bytes in sealed segment files",
            m.store_sealed_bytes.clone(),
        );
        r.register(
            "tally_store_appended_records",
            "Records appended to the log since the server started",
            m.store_appended.clone(),
        );
        r.register(
            "tally_store_fsyncs",
            "Group commits (write and fdatasync) since the server started",
            m.store_fsyncs.clone(),
        );
        r.register(
            "tally_store_fsync_seconds",
            "Time spent in group commits since the server started",
            m.store_fsync_seconds.clone(),
        );
        r.register(
            "tally_store_fsync_max_seconds",
            "The longest group commit since the server started",
            m.store_fsync_max_seconds.clone(),
        );
        r.register(
            "tally_consumer_position",
            "The log position a consumer has handled through",
            m.consumer_position.clone(),
        );
        r.register(
            "tally_consumer_lag_records",
            "Log positions between a consumer's position and the log's end",
            m.consumer_lag_records.clone(),
        );
        r.register(
            "tally_consumer_lag_seconds",
            "Seconds since a consumer last reached the log's end (0 when there)",
            m.consumer_lag_seconds.clone(),
        );
        r.register(
            "tally_consumer_records",
            "Records handed to a consumer since the server started",
            m.consumer_records.clone(),
        );
        r.register(
            "tally_consumer_errors",
            "Errors a consumer retried since the server started",
            m.consumer_errors.clone(),
        );
        r.register(
            "tally_consumer_rejected_records",
            "Records a consumer could not handle, ever (its rejection file)",
            m.consumer_rejected.clone(),
        );
        r.register(
            "tally_consumer_state",
            "A consumer's state: 1 for the current one (running, paused, backoff, halted, stopped)",
            m.consumer_state.clone(),
        );
        r.register(
            "tally_reconcile_entries",
            "Flow entries the reconciler took in, by outcome",
            m.reconcile_entries.clone(),
        );
        r.register(
            "tally_reconcile_windows_judged",
            "Connection windows the reconciler judged",
            m.reconcile_judged.clone(),
        );
        r.register(
            "tally_reconcile_findings",
            "Findings the reconciler raised",
            m.reconcile_findings.clone(),
        );
        r.register(
            "tally_detection_events",
            "Events detection evaluated (flow entries, log entries, audit events, findings)",
            m.detect_events.clone(),
        );
        r.register(
            "tally_detection_alerts",
            "Alerts detection raised",
            m.detect_alerts.clone(),
        );
        r.register(
            "tally_detection_suppressed",
            "Alerts suppressed: same rule and group key within the rule's span",
            m.detect_suppressed.clone(),
        );
        r.register(
            "tally_detection_evicted",
            "Correlation windows, pairs and suppression entries dropped at their limits",
            m.detect_evicted.clone(),
        );
        r.register(
            "tally_detection_windows",
            "Correlation windows (rule x group key) held",
            m.detect_windows.clone(),
        );
        r.register(
            "tally_flow_open_window_bytes",
            "Memory held by the flow store's open windows",
            m.flow_open_bytes.clone(),
        );
        r.register(
            "tally_flow_open_window_entries",
            "Flow entries in the flow store's open windows",
            m.flow_open_entries.clone(),
        );
        r.register(
            "tally_flow_sealed_files",
            "Sealed flow files this process knows (its own and, on the worker, those it uploaded)",
            m.flow_sealed_files.clone(),
        );
        r.register(
            "tally_flow_bucket_files",
            "Sealed flow files in the cluster's bucket that this process knows",
            m.flow_bucket_files.clone(),
        );
        r.register(
            "tally_flow_bucket_checkpoint",
            "A server's flow split: records at or below this position are answered from the bucket",
            m.flow_bucket_checkpoint.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            m.rss.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one upload answered `code`.
    pub fn ingest_request(&self, collection: &str, code: StatusCode) {
        self.ingest_requests
            .get_or_create(&IngestLabels {
                collection: collection_label(collection).to_owned(),
                code: code.as_u16().to_string(),
            })
            .inc();
    }

    /// Counts what one upload stored.
    pub fn ingest_stored(&self, collection: &str, entries: u64, duplicates: u64, bytes: u64) {
        let l = CollectionLabels {
            collection: collection_label(collection).to_owned(),
        };
        self.ingest_entries.get_or_create(&l).inc_by(entries);
        self.ingest_duplicates.get_or_create(&l).inc_by(duplicates);
        self.ingest_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Counts one HTTP answer (`route` is the pattern; its `{param}`
    /// segments are labelled `:param`, which every exposition parser reads).
    pub fn http_request(&self, route: &str, method: &str, code: StatusCode) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.replace('{', ":").replace('}', ""),
                method: method.to_owned(),
                code: code.as_u16().to_string(),
            })
            .inc();
    }

    /// Reads the values that are not counted as they happen.
    fn refresh(&self, state: &AppState) {
        let s = state.store.stats();
        set_gauge(&self.store_end, state.store.end_seq());
        set_gauge(&self.store_wal_bytes, s.wal_bytes);
        set_gauge(&self.store_sealed_bytes, s.sealed_bytes);
        set_counter(&self.store_appended, s.appended_records);
        set_counter(&self.store_fsyncs, s.syncs);
        self.store_fsync_seconds
            .inner()
            .store((s.sync_micros as f64 / 1e6).to_bits(), Ordering::Relaxed);
        self.store_fsync_max_seconds
            .set(s.max_sync_micros as f64 / 1e6);
        for c in state.pipeline.statuses() {
            let l = ConsumerLabels {
                consumer: c.name.to_owned(),
            };
            set_gauge(&self.consumer_position.get_or_create(&l), c.position);
            set_gauge(&self.consumer_lag_records.get_or_create(&l), c.lag_records);
            self.consumer_lag_seconds
                .get_or_create(&l)
                .set(c.lag_seconds);
            set_counter(&self.consumer_records.get_or_create(&l), c.records_handled);
            set_counter(&self.consumer_errors.get_or_create(&l), c.errors);
            set_counter(&self.consumer_rejected.get_or_create(&l), c.rejected);
            for st in [
                ConsumerState::Running,
                ConsumerState::Paused,
                ConsumerState::Backoff,
                ConsumerState::Halted,
                ConsumerState::Stopped,
            ] {
                self.consumer_state
                    .get_or_create(&StateLabels {
                        consumer: c.name.to_owned(),
                        state: state_name(st).to_owned(),
                    })
                    .set(i64::from(c.state == st));
            }
        }
        let r = state.reconcile.stats();
        for (outcome, n) in [
            ("observed", r.observed),
            ("duplicate", r.duplicates),
            ("too_late", r.too_late),
            ("excluded", r.excluded),
            ("rejected", r.rejected),
        ] {
            set_counter(
                &self.reconcile_entries.get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                }),
                n,
            );
        }
        set_counter(&self.reconcile_judged, r.judged);
        set_counter(&self.reconcile_findings, r.findings);
        let d = state.detection.stats();
        set_counter(&self.detect_events, d.events);
        set_counter(&self.detect_alerts, d.alerts);
        set_counter(&self.detect_suppressed, d.suppressed);
        set_counter(&self.detect_evicted, d.evicted);
        set_gauge(&self.detect_windows, d.windows);
        set_gauge(&self.flow_open_bytes, state.flows.open_memory() as u64);
        let f = state.flows.stats();
        set_gauge(&self.flow_open_entries, f.open_entries);
        set_gauge(&self.flow_sealed_files, f.sealed_files);
        set_gauge(&self.flow_bucket_files, f.bucket_files);
        set_gauge(&self.flow_bucket_checkpoint, f.bucket_checkpoint);
        set_gauge(&self.rss, crate::memory::rss().unwrap_or(0));
    }

    /// The text exposition of every metric.
    pub fn render(&self, state: &AppState) -> Result<String, std::fmt::Error> {
        self.refresh(state);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The name a state has in metrics and health.
pub fn state_name(s: ConsumerState) -> &'static str {
    match s {
        ConsumerState::Running => "running",
        ConsumerState::Paused => "paused",
        ConsumerState::Backoff => "backoff",
        ConsumerState::Halted => "halted",
        ConsumerState::Stopped => "stopped",
    }
}

fn set_gauge(g: &Gauge, v: impl TryInto<i64>) {
    g.set(v.try_into().unwrap_or(i64::MAX));
}

fn set_counter(c: &Counter, v: u64) {
    c.inner().store(v, Ordering::Relaxed);
}

/// `GET /metrics`.
pub async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.metrics.render(&state))
            .await
            .map_err(|e| ApiError::internal(format!("collecting metrics panicked: {e}")))?
            .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
