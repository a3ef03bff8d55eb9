//! The server speaks HTTPS (rustls, HTTP/2 by ALPN) when given a certificate and key.

mod common;

use common::certs::make_certs;
use common::{TEST_CA, TestAgent, TestServer};
use std::process::Command;

#[tokio::test]
async fn serves_ingest_and_reads_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = server.url.clone();
    assert!(url.starts_with("https://"), "{url}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let id = tally_proto::PrivateId::generate();
    let r = c
        .post(format!("{url}/instances"))
        .bearer_auth(common::KEY)
        .json(&serde_json::json!({ "collection": "tailnode", "instances": [id.public().to_hex()] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{url}/c/tailnode/{}", id.to_hex()))
        .body(r#"{"text":"over tls"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let logs = common::read_all(&c, &url, "tailnode").await;
    assert_eq!(logs[0]["text"], "over tls");
    // A client that does not trust the certificate is refused.
    assert!(
        common::http()
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err()
    );

    // The agent uploads over TLS when told to trust the private CA.
    let _ = TEST_CA.set(std::fs::read(dir.path().join("ca.pem")).unwrap());
    let agent_dir = dir.path().join("agent");
    let localhost = url.replace("127.0.0.1", "localhost");
    let ca_path = dir.path().join("ca.pem");
    let agent = TestAgent::start(
        &localhost,
        &agent_dir,
        &["--ca-cert", ca_path.to_str().unwrap()],
    );
    let out = std::process::Command::new(common::bin())
        .args([
            "agent",
            "--data-dir",
            agent_dir.to_str().unwrap(),
            "log",
            "hello",
            "over",
            "tls",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent's own notes (registration, checkpoints) share its log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = common::read_all(&c, &url, "tailnode").await;
        if logs.iter().any(|e| {
            e["text"] == "hello over tls" && e["logtail"]["id"] == agent.public_id.as_str()
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never arrived: {logs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    agent.stop();
}

#[test]
fn a_missing_or_mismatched_key_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let out = Command::new(common::bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--tls-cert", "cert.pem", "--tls-key", "ca.key"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not match"), "{err}");
}
