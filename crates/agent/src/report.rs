//! Registration and reports: the agent tells the server who it is
//! (`POST {server}/api/v2/agent/{private-id}`, with the auth key the first
//! time) at start and every `reportSeconds` after, and learns the tailnet
//! settings it follows (flow logging) and its peers (to classify traffic).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::identity::redact;

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
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(redact(&format!("HTTP {status}: {msg}"), &self.private_hex));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
    }

    /// Writes `text` to the node's log (source `tally-agent`).
    async fn note(&self, text: String) {
        let Some(logs) = &self.logs else { return };
        let line = crate::entry::Line {
            text,
            source: std::sync::Arc::from("tally-agent"),
            v: None,
            invalid_utf8: false,
            part: None,
            client_time: tally_proto::timefmt::now_nanos(),
            file: None,
        };
        let req = crate::writer::WriteRequest {
            items: vec![crate::writer::Item::Line(line)],
            reply: None,
        };
        let _ = logs.send(req).await;
    }

    /// Reports until `stop`: at once, then every `reportSeconds`; failures
    /// are retried after 5–15 s (then every interval), keeping the last
    /// settings.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut witnessed = false;
        loop {
            let wait = match self.report_once().await {
                Ok(a) => {
                    let first = self.settings.borrow().node_id.is_none();
                    if first {
                        tracing::info!(node = %a.node.id, "registered with the server");
                        if let Err(e) = std::fs::write(&self.marker, format!("{}\n", a.node.id)) {
                            tracing::warn!("cannot write {}: {e}", self.marker.display());
                        }
                    }
                    let changed = self.settings.send_if_modified(|s| {
                        let new = NodeSettings {
                            node_id: Some(a.node.id.clone()),
                            flow_logging: a.settings.network_flow_logging_on,
                            peers: a.peers.clone(),
                            last_error: None,
                            log_problem: s.log_problem.clone(),
                        };
                        let changed = *s != new;
                        *s = new;
                        changed
                    });
                    if changed {
                        tracing::info!(
                            flow_logging = a.settings.network_flow_logging_on,
                            peers = a.peers.len(),
                            "tailnet settings"
                        );
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
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
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
