//! Registration and reports: the agent tells the server who it is
//! (`POST {server}/api/v2/agent/{private-id}`, with the auth key the first
//! time) at start and every `reportSeconds` after, and learns the tailnet
//! settings it follows (flow logging) and its peers (to classify traffic).
//!
//! Between reports it keeps one long poll outstanding
//! (`...?wait=25&version=V`, V the `version` of the last answer): the
//! server answers it as soon as what it would tell the agent changes, so a
//! setting or a new peer is known within about a second. A server whose
//! answers carry no `version` has no long poll: the agent then learns
//! only from its reports. Failed polls are retried after 1 s, doubling up
//! to a minute.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::addrs::{AddressFinder, Found};
use crate::identity::redact;

/// How often the interfaces' addresses are checked between reports (a
/// change is reported at once).
const ADDRESS_POLL: Duration = Duration::from_secs(5);
/// A report asked for this soon after the last one is not made again.
const REFRESH_FRESH: Duration = Duration::from_secs(1);
/// Seconds the server may hold a long poll (its limit is 25 s; the HTTP
/// client's timeout is 60 s).
const WATCH_WAIT_SECS: u64 = 25;
/// First wait after a failed long poll (doubling up to [`WATCH_BACKOFF_MAX`]).
const WATCH_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest wait after failed long polls.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A request for a report now (peers may have changed); answered once the
/// report is done.
pub(crate) type RefreshRequest = oneshot::Sender<()>;

/// What the agent reports about its node.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Hostname.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// Tailnet addresses.
    pub addresses: Vec<String>,
    /// Tags asked for (the auth key's tags win).
    pub tags: Vec<String>,
    /// Routes this node advertises.
    pub advertised_routes: Vec<String>,
    /// `--no-logs-no-support`.
    pub no_logs_no_support: bool,
}

/// Another node of the tailnet.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Node ID.
    pub node_id: String,
    /// Its addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Routes it advertises.
    #[serde(default)]
    pub advertised_routes: Vec<String>,
}

/// What the server last said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's ID, once registered.
    pub node_id: Option<String>,
    /// Whether the tailnet has flow logging on.
    pub flow_logging: bool,
    /// The tailnet's other nodes.
    pub peers: Vec<Peer>,
    /// The last registration problem, if the last report failed.
    pub last_error: Option<String>,
    /// The last problem found with the server's transparency log.
    pub log_problem: Option<String>,
    /// This node's own tailnet addresses, as the agent reports them (found
    /// on its interfaces and from the mesh daemon, or `--address`).
    pub addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportAnswer {
    node: AnswerNode,
    settings: AnswerSettings,
    #[serde(default)]
    report_seconds: Option<u64>,
    #[serde(default)]
    peers: Vec<Peer>,
    /// Digest of the answer's content (servers with the long poll).
    #[serde(default)]
    version: Option<String>,
}

/// The long poll's inputs.
struct Watch {
    client: reqwest::Client,
    server: String,
    private_hex: String,
    /// The version of the last answer (of a report or a poll).
    known: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Changed answers go to the report loop, which publishes them.
    answers: mpsc::Sender<ReportAnswer>,
}

impl Watch {
    fn known(&self) -> Option<String> {
        self.known.lock().map(|k| k.clone()).unwrap_or_default()
    }

    async fn poll_once(&self, version: &str) -> Result<ReportAnswer, String> {
        let url = format!(
            "{}/api/v2/agent/{}?wait={WATCH_WAIT_SECS}&version={version}",
            self.server, self.private_hex
        );
        let resp = self
            .client
            .post(&url)
            .json(&serde_json::json!({}))
            .send()
            .await
            .map_err(|e| redact(&format!("cannot reach the server: {e}"), &self.private_hex))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| redact(&format!("reading the answer: {e}"), &self.private_hex))?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(redact(&format!("HTTP {status}: {text}"), &self.private_hex));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
    }

    /// Keeps one long poll outstanding until `stop`, or until the server
    /// turns out to have none.
    async fn run(self, stop: CancellationToken) {
        let mut backoff = WATCH_BACKOFF_FIRST;
        let mut failing = false;
        loop {
            let version = self.known().unwrap_or_default();
            let started = Instant::now();
            let polled = tokio::select! {
                () = stop.cancelled() => return,
                r = self.poll_once(&version) => r,
            };
            let pause = match polled {
                Ok(a) => {
                    failing = false;
                    backoff = WATCH_BACKOFF_FIRST;
                    let Some(v) = a.version.clone() else {
                        tracing::info!(
                            "the server has no long poll: settings are learned at each report"
                        );
                        return;
                    };
                    if v != version {
                        if let Ok(mut k) = self.known.lock() {
                            *k = Some(v);
                        }
                        if self.answers.send(a).await.is_err() {
                            return;
                        }
                        None
                    } else if started.elapsed() < WATCH_BACKOFF_FIRST {
                        // Answered at once with nothing new: never spin.
                        Some(WATCH_BACKOFF_FIRST)
                    } else {
                        None
                    }
                }
                Err(e) => {
                    if failing {
                        tracing::debug!("long poll failed: {e}");
                    } else {
                        tracing::info!(
                            "long poll failed (settings are still learned at each report): {e}"
                        );
                    }
                    failing = true;
                    let jitter = rand::rng().random_range(0..=backoff.as_millis() / 4);
                    let wait = backoff + Duration::from_millis(u64::try_from(jitter).unwrap_or(0));
                    backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                    Some(wait)
                }
            };
            if let Some(wait) = pause {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct AnswerNode {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerSettings {
    #[serde(default)]
    network_flow_logging_on: bool,
}

/// The report loop's inputs.
pub(crate) struct Reporter {
    /// HTTP client.
    pub client: reqwest::Client,
    /// Server base URL.
    pub server: String,
    /// The private ID (hex): part of the URL, redacted from messages.
    pub private_hex: String,
    /// Auth key for the first registration.
    pub auth_key: Option<String>,
    /// What to report.
    pub info: NodeInfo,
    /// Finds the node's addresses before every report; `None`: they are
    /// configured (`--address`) and `info` has them.
    pub finder: Option<AddressFinder>,
    /// Flow capture is on: finding no address gets a warning.
    pub flows: bool,
    /// Requests for a report now (from the flow runner).
    pub refresh: Option<mpsc::Receiver<RefreshRequest>>,
    /// Report interval when the server does not say.
    pub interval: Duration,
    /// Where the answers go.
    pub settings: watch::Sender<NodeSettings>,
    /// File recording the node ID once registered (later starts report in
    /// without an auth key).
    pub marker: std::path::PathBuf,
    /// Keeps the server's checkpoints, when set.
    pub witness: Option<crate::witness::Witness>,
    /// Where problems found by the witness are logged (the node log).
    pub logs: Option<tokio::sync::mpsc::Sender<crate::writer::WriteRequest>>,
}

impl Reporter {
    async fn report_once(&self) -> Result<ReportAnswer, String> {
        let url = format!("{}/api/v2/agent/{}", self.server, self.private_hex);
        let mut req = self.client.post(&url).json(&self.info);
        if let Some(k) = &self.auth_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| redact(&format!("cannot reach the server: {e}"), &self.private_hex))?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let mut msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            if status == reqwest::StatusCode::CONFLICT
                && let Some(f) = &self.finder
            {
                msg.push_str(&format!(
                    " (this node's addresses were found on {}; pass --address IP, repeatable, to set them)",
                    f.where_looked()
                ));
            }
            return Err(redact(&format!("HTTP {status}: {msg}"), &self.private_hex));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
    }

    /// Writes `text` to the node's log (source `tally-agent`).
    async fn note(&self, text: String) {
        let Some(logs) = &self.logs else { return };
        crate::writer::note(logs, text).await;
    }

    /// Publishes what the server said (a report's answer, or a long poll's
    /// when `reported` is false: it leaves the last report's error).
    fn publish(&self, a: &ReportAnswer, reported: bool) {
        let changed = self.settings.send_if_modified(|s| {
            let new = NodeSettings {
                node_id: Some(a.node.id.clone()),
                flow_logging: a.settings.network_flow_logging_on,
                peers: a.peers.clone(),
                last_error: if reported { None } else { s.last_error.clone() },
                log_problem: s.log_problem.clone(),
                addresses: s.addresses.clone(),
            };
            let changed = *s != new;
            *s = new;
            changed
        });
        if changed {
            tracing::info!(
                flow_logging = a.settings.network_flow_logging_on,
                peers = a.peers.len(),
                from = if reported { "report" } else { "long poll" },
                "tailnet settings"
            );
        }
    }

    /// Tells the rest of the agent (the flow classifier) this node's
    /// addresses.
    fn publish_addresses(&self) {
        let addresses = &self.info.addresses;
        self.settings.send_if_modified(|s| {
            if s.addresses == *addresses {
                return false;
            }
            s.addresses.clone_from(addresses);
            true
        });
    }

    /// Finds the node's addresses (unless configured) and logs what was
    /// found the first time and whenever it changes.
    async fn update_addresses(&mut self, found: &mut Option<Found>) {
        let Some(finder) = &self.finder else {
            if found.is_none() {
                tracing::info!(
                    "tailnet addresses (from --address): {}",
                    self.info.addresses.join(", ")
                );
                *found = Some(Found::default());
            }
            self.publish_addresses();
            return;
        };
        let new = finder.find().await;
        let first = found.is_none();
        let old = found.take().unwrap_or_default();
        if new.daemon_problem.is_some() && (first || new.daemon_problem != old.daemon_problem) {
            tracing::info!(
                "no addresses from the mesh daemon: {}",
                new.daemon_problem.as_deref().unwrap_or_default()
            );
        }
        if first || new.addresses != old.addresses {
            if new.addresses.is_empty() {
                if self.flows {
                    let text = format!(
                        "no tailnet address of this node found (looked at {}): its flows will be classified as exit traffic and peers cannot tell its traffic is theirs; pass --address IP (repeatable) with this node's tailnet addresses",
                        finder.where_looked()
                    );
                    tracing::warn!("{text}");
                    self.note(text).await;
                } else {
                    tracing::info!(
                        "no tailnet address of this node found (looked at {}); pass --address IP to report one",
                        finder.where_looked()
                    );
                }
            } else if first {
                tracing::info!("tailnet addresses found: {}", new.sources);
            } else {
                tracing::info!(
                    "tailnet addresses changed: now {} (were {})",
                    new.sources,
                    if old.sources.is_empty() {
                        "none"
                    } else {
                        &old.sources
                    }
                );
            }
        }
        self.info.addresses.clone_from(&new.addresses);
        *found = Some(new);
        self.publish_addresses();
    }

    /// Reports until `stop`: at once, then every `reportSeconds`; failures
    /// are retried after 5–15 s (then every interval), keeping the last
    /// settings. Once an answer shows the server has the long poll, one
    /// is kept outstanding and its changed answers are published at once. The node's addresses are found again before every report;
    /// an address change on the interfaces (checked every 5 s) and a flow
    /// runner's request (an unknown address may be a new peer) are
    /// reported at once.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut witnessed = false;
        let mut found: Option<Found> = None;
        let mut refresh = self.refresh.take();
        let mut waiting: Vec<RefreshRequest> = Vec::new();
        let known = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (answers_tx, mut answers) = mpsc::channel(4);
        let mut watch = Some(Watch {
            client: self.client.clone(),
            server: self.server.clone(),
            private_hex: self.private_hex.clone(),
            known: known.clone(),
            answers: answers_tx,
        });
        let mut watching = true;
        loop {
            self.update_addresses(&mut found).await;
            let reported = self.report_once().await;
            let last_report = Instant::now();
            let wait = match reported {
                Ok(a) => {
                    let first = self.settings.borrow().node_id.is_none();
                    if first {
                        tracing::info!(node = %a.node.id, "registered with the server");
                        if let Err(e) = std::fs::write(&self.marker, format!("{}\n", a.node.id)) {
                            tracing::warn!("cannot write {}: {e}", self.marker.display());
                        }
                    }
                    self.publish(&a, true);
                    if let Some(v) = &a.version {
                        if let Ok(mut k) = known.lock() {
                            *k = Some(v.clone());
                        }
                        // The server has the long poll: keep one outstanding.
                        if let Some(w) = watch.take() {
                            tokio::spawn(w.run(stop.child_token()));
                        }
                    }
                    a.report_seconds
                        .map_or(self.interval, Duration::from_secs)
                        .clamp(Duration::from_secs(1), Duration::from_secs(3600))
                }
                Err(e) => {
                    tracing::warn!("registration with the server failed: {e}");
                    self.settings
                        .send_modify(|s| s.last_error = Some(e.clone()));
                    let jitter = rand::rng().random_range(5..=15);
                    Duration::from_secs(jitter).min(self.interval)
                }
            };
            if let Some(w) = &self.witness {
                match w.check().await {
                    Ok(crate::witness::Witnessed::Consistent(n)) if !witnessed => {
                        witnessed = true;
                        self.note(format!(
                            "keeping the server's transparency-log checkpoints: {n} records so far, consistent"
                        ))
                        .await;
                    }
                    Ok(crate::witness::Witnessed::Consistent(_)) => {}
                    Ok(crate::witness::Witnessed::Problem(p)) => {
                        tracing::error!("{p}");
                        self.settings
                            .send_modify(|s| s.log_problem = Some(p.clone()));
                        self.note(p).await;
                    }
                    Err(e) => tracing::debug!("checkpoint not checked: {e}"),
                }
            }
            for w in waiting.drain(..) {
                let _ = w.send(());
            }
            // Until the next report: the interval, unless the interfaces'
            // addresses change or the flow runner asks.
            let next = last_report + wait;
            loop {
                let poll = async {
                    match &self.finder {
                        Some(_) => tokio::time::sleep(ADDRESS_POLL).await,
                        None => std::future::pending().await,
                    }
                };
                let asked = async {
                    match refresh.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    polled = answers.recv(), if watching => match polled {
                        Some(a) => self.publish(&a, false),
                        // The server has no long poll.
                        None => watching = false,
                    },
                    () = tokio::time::sleep_until(next) => break,
                    () = poll => {
                        let now: Vec<std::net::IpAddr> = self
                            .finder
                            .as_ref()
                            .map(|f| f.interface_addresses().into_iter().map(|(_, ip)| ip).collect())
                            .unwrap_or_default();
                        if found.as_ref().is_some_and(|f| f.from_interfaces != now) {
                            break;
                        }
                    }
                    req = asked => match req {
                        Some(reply) if last_report.elapsed() < REFRESH_FRESH => {
                            let _ = reply.send(());
                        }
                        Some(reply) => {
                            waiting.push(reply);
                            break;
                        }
                        // The flow runner is gone.
                        None => refresh = None,
                    },
                }
            }
        }
    }
}

/// This machine's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Name of the file holding the node ID once registered.
pub const NODE_ID_FILE: &str = "node-id";
