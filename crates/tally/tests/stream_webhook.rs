//! Streaming alerts to a signed webhook with the CLI, as the README says
//! (`tally stream set alerts --type webhook --url ... --token ...`, `tally
//! stream test`, `tally stream status`, `tally stream list`): the receiver
//! checks every request's `Tally-Signature` (HMAC-SHA256 of
//! `timestamp.body` with the token, computed here independently) and gets
//! the alert raised after the stream was set.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::TestServer;
use common::readme::tally;
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "webhook-signing-key-0123";

#[derive(Default)]
struct Hook {
    bodies: Vec<Value>,
    bad: Vec<String>,
}

async fn hook(
    axum::extract::State(h): axum::extract::State<Arc<Mutex<Hook>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let ts = headers
        .get("tally-timestamp")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let sig = headers
        .get("tally-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(&body);
    let want = format!(
        "v1={}",
        ring::hmac::sign(&key, &msg)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut h = h.lock();
    if sig != want {
        h.bad.push(format!("bad signature {sig:?}"));
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            h.bodies.push(v);
            StatusCode::NO_CONTENT
        }
        Err(e) => {
            h.bad.push(format!("not JSON: {e}"));
            StatusCode::BAD_REQUEST
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_signed_webhook_set_with_the_cli() {
    let state = Arc::new(Mutex::new(Hook::default()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(state.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.clone();
    let cli = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            tally(&url, &a)
        })
    };
    let out = cli(vec![
        "stream".into(),
        "set".into(),
        "alerts".into(),
        "--type".into(),
        "webhook".into(),
        "--url".into(),
        hook_url.clone(),
        "--token".into(),
        KEY.into(),
    ])
    .await
    .expect("cli");
    assert!(out.contains("streaming alerts to webhook"), "{out}");
    let out = cli(vec!["stream".into(), "test".into(), "alerts".into()])
        .await
        .expect("cli");
    assert!(out.contains("accepted the test event"), "{out}");

    // An alert (an API key that never expires) reaches the webhook.
    cli(vec![
        "keys".into(),
        "create".into(),
        "--type".into(),
        "api".into(),
        "--expiry".into(),
        "never".into(),
        "--description".into(),
        "streamed".into(),
    ])
    .await
    .expect("cli");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = {
            let h = state.lock();
            assert!(h.bad.is_empty(), "{:?}", h.bad);
            h.bodies.iter().any(|b| {
                b["logType"] == "alerts"
                    && b["entries"].as_array().is_some_and(|e| {
                        e.iter().any(|a| {
                            a["rule_id"] == "tally-key-without-expiry"
                                && a["evidence"]["fields"]["target.name"] == "streamed"
                        })
                    })
            })
        };
        if got {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alert never reached the webhook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = cli(vec!["stream".into(), "status".into(), "alerts".into()])
        .await
        .expect("cli");
    assert!(
        out.lines()
            .any(|l| l.starts_with("unencrypted") && l.trim_end().ends_with("true")),
        "{out}"
    );
    let out = cli(vec!["stream".into(), "list".into()])
        .await
        .expect("cli");
    assert!(
        out.contains("alerts") && out.contains("webhook") && out.contains(&hook_url),
        "{out}"
    );
    assert!(!out.contains(KEY), "{out}");
    let out = cli(vec!["stream".into(), "delete".into(), "alerts".into()])
        .await
        .expect("cli");
    assert!(out.contains("stopped streaming alerts"), "{out}");
}
