//! The reporter's long poll against an in-test control server: a held poll
//! brings a setting change long before the next report, and carries the
//! version of the last answer; a server whose answers have no `version`
//! gets reports only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use tally_agent::Agent;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::support::*;

/// Only against hangs.
const HANG_GUARD: Duration = Duration::from_secs(60);

struct Control {
    /// The tailnet's flow-logging switch (the test flips it).
    flow: watch::Sender<bool>,
    /// Whether answers carry a `version` (servers with the long poll).
    versioned: bool,
    reports: AtomicUsize,
    /// `("report", "")` or `("poll", version sent)`, as they arrive.
    seen: mpsc::UnboundedSender<(&'static str, String)>,
}

fn version(flow: bool) -> String {
    format!("v-{flow}")
}

fn answer(c: &Control, flow: bool) -> Response {
    let mut a = json!({
        "node": { "id": "n1" },
        "settings": { "networkFlowLoggingOn": flow },
        "reportSeconds": if c.versioned { 30 } else { 1 },
        "peers": [],
    });
    if c.versioned {
        a["version"] = json!(version(flow));
    }
    axum::Json(a).into_response()
}

async fn handle(
    State(c): State<Arc<Control>>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !uri.path().starts_with("/api/v2/agent/") {
        // Uploads and checkpoints: nothing to check here.
        return axum::Json(json!({})).into_response();
    }
    let Some(wait) = q.get("wait") else {
        c.reports.fetch_add(1, Ordering::SeqCst);
        let _ = c.seen.send(("report", String::new()));
        return answer(&c, *c.flow.borrow());
    };
    let sent = q.get("version").cloned().unwrap_or_default();
    let _ = c.seen.send(("poll", sent.clone()));
    let mut rx = c.flow.subscribe();
    if c.versioned {
        let wait = Duration::from_secs(wait.parse().unwrap_or(0));
        let _ = tokio::time::timeout(wait, rx.wait_for(|f| version(*f) != sent)).await;
    }
    let flow = *rx.borrow();
    answer(&c, flow)
}

async fn start(
    versioned: bool,
) -> (
    Agent,
    Arc<Control>,
    mpsc::UnboundedReceiver<(&'static str, String)>,
    tempfile::TempDir,
) {
    let (seen, rx) = mpsc::unbounded_channel();
    let c = Arc::new(Control {
        flow: watch::Sender::new(false),
        versioned,
        reports: AtomicUsize::new(0),
        seen,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(handle).with_state(c.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&tmp.path().join("data"));
    cfg.no_logs_no_support = false;
    cfg.server = Some(url);
    cfg.auth_key = Some("tally-auth-test".into());
    cfg.node.addresses = vec!["100.64.0.1".into()];
    let agent = Agent::start(cfg).await.unwrap();
    (agent, c, rx, tmp)
}

#[tokio::test]
async fn a_held_poll_brings_a_setting_change_before_the_next_report() {
    let (agent, control, mut seen, _tmp) = start(true).await;
    // The first report, then a poll with that answer's version.
    let (kind, _) = tokio::time::timeout(HANG_GUARD, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kind, "report");
    let (kind, sent) = tokio::time::timeout(HANG_GUARD, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kind, sent.as_str()), ("poll", version(false).as_str()));
    let mut settings = agent.node_settings();
    settings.wait_for(|s| s.node_id.is_some()).await.unwrap();
    assert!(!settings.borrow().flow_logging);

    control.flow.send_replace(true);
    tokio::time::timeout(HANG_GUARD, settings.wait_for(|s| s.flow_logging))
        .await
        .expect("the change arrives")
        .unwrap();
    // Learned from the poll: still only the first report (every 30 s).
    assert_eq!(control.reports.load(Ordering::SeqCst), 1);
    // The next poll carries the new version.
    let (kind, sent) = tokio::time::timeout(HANG_GUARD, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kind, sent.as_str()), ("poll", version(true).as_str()));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_without_the_long_poll_gets_reports_only() {
    let (agent, _control, mut seen, _tmp) = start(false).await;
    // Reports every second; an agent that polled would have done so
    // right after the first answer.
    for _ in 0..3 {
        let (kind, _) = tokio::time::timeout(HANG_GUARD, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kind, "report");
    }
    agent.shutdown().await.unwrap();
}
