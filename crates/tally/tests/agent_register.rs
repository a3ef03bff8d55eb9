//! An agent registers its node with an auth key, then reports in with its
//! identity alone; the inventory and the audit log show it.

mod common;

use common::{KEY, TestAgent, TestServer, http};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_with_an_auth_key_then_reports_by_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let c = http();
    let key: Value = c
        .post(format!("{}/api/v2/tailnet/-/keys", server.url))
        .bearer_auth(KEY)
        .json(&json!({
            "capabilities": { "devices": { "create": { "reusable": false, "tags": ["tag:web"] } } },
            "description": "web servers",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = key["key"].as_str().unwrap();
    let agent_dir = dir.path().join("agent");
    let agent = TestAgent::start(
        &server.url,
        &agent_dir,
        &[
            "--auth-key",
            auth,
            "--address",
            "100.64.0.5",
            "--hostname",
            "web5.example.com",
        ],
    );
    let line = agent.wait_line("tally agent registered: node ", Duration::from_secs(30));
    let node = line.rsplit(' ').next().unwrap().to_owned();
    let device: Value = common::get_json(&format!("{}/api/v2/device/{node}", server.url)).await;
    assert_eq!(device["name"], "web5");
    assert_eq!(device["addresses"], json!(["100.64.0.5"]));
    assert_eq!(device["tags"], json!(["tag:web"]));
    assert_eq!(device["instance"].as_str(), Some(agent.public_id.as_str()));
    agent.stop();

    // The one-off key is spent, yet the registered agent reports in again
    // (without --auth-key) and keeps its node.
    let agent = TestAgent::start(
        &server.url,
        &agent_dir,
        &["--address", "100.64.0.6", "--hostname", "web5.example.com"],
    );
    let again = agent.wait_line("tally agent registered: node ", Duration::from_secs(30));
    assert_eq!(again, line);
    agent.stop();
    let devices: Value =
        common::get_json(&format!("{}/api/v2/tailnet/-/devices", server.url)).await;
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{devices}");
    assert_eq!(list[0]["addresses"], json!(["100.64.0.6"]));
    // The audit log has the creation and the address change, by user then by node.
    let log: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/logging/configuration?targetType=NODE",
        server.url
    ))
    .await;
    let events = log["logs"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{log}");
    assert_eq!(
        (&events[0]["action"], &events[0]["actor"]["type"]),
        (&json!("UPDATE"), &json!("NODE"))
    );
    assert_eq!(
        (&events[1]["action"], &events[1]["actor"]["type"]),
        (&json!("CREATE"), &json!("USER"))
    );
    // The private ID never reached the server's files.
    let private = std::fs::read_to_string(agent_dir.join("private-id")).unwrap();
    let private = private.trim();
    for entry in walk(&dir.path().join("server")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes
                .windows(private.len())
                .any(|w| w == private.as_bytes()),
            "private ID found in {}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_agent_registers_as_opted_out_and_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let auth_key = common::reusable_auth_key(&server.url).await;
    let agent = TestAgent::start(
        &server.url,
        &dir.path().join("agent"),
        &[
            "--auth-key",
            &auth_key,
            "--no-logs-no-support",
            "--hostname",
            "quiet",
        ],
    );
    let line = agent.wait_line("tally agent registered: node ", Duration::from_secs(30));
    let node = line.rsplit(' ').next().unwrap().to_owned();
    let device: Value = common::get_json(&format!("{}/api/v2/device/{node}", server.url)).await;
    assert_eq!(device["noLogsNoSupport"], true, "{device}");
    // Its logs stay on the node: the collection knows no such instance.
    let cols: Value = common::get_json(&format!("{}/collections", server.url)).await;
    assert!(
        cols["collections"]["tailnode"]["instances"]
            .get(&agent.public_id)
            .is_none(),
        "{cols}"
    );
    agent.stop();
}
