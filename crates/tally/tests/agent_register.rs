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

/// `tally agent --data-dir DIR ARGS...`: its stdout (the command must succeed).
fn agent_cli(data: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(common::bin())
        .arg("agent")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tally agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The node's `lastSeen` (Unix ns), as the server's device API says.
async fn last_seen(url: &str, node: &str) -> i64 {
    let device: Value = common::get_json(&format!("{url}/api/v2/device/{node}")).await;
    device["lastSeen"]
        .as_str()
        .and_then(tally_proto::timefmt::parse_rfc3339)
        .unwrap_or_else(|| panic!("no lastSeen: {device}"))
}

/// An opted-out agent with lines to upload (a followed file and `tally agent
/// log`) registers as opted out, keeps the lines on the node, and uploads
/// none of them even after it has reported to the server since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_agent_registers_as_opted_out_and_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &["--agent-report-seconds", "1"]);
    let auth_key = common::reusable_auth_key(&server.url).await;
    let app_log = dir.path().join("app.log");
    std::fs::write(&app_log, "").unwrap();
    let agent_dir = dir.path().join("agent");
    let agent = TestAgent::start(
        &server.url,
        &agent_dir,
        &[
            "--auth-key",
            &auth_key,
            "--no-logs-no-support",
            "--hostname",
            "quiet",
            "--follow",
            app_log.to_str().unwrap(),
        ],
    );
    let line = agent.wait_line("tally agent registered: node ", Duration::from_secs(30));
    let node = line.rsplit(' ').next().unwrap().to_owned();
    let device: Value = common::get_json(&format!("{}/api/v2/device/{node}", server.url)).await;
    assert_eq!(device["noLogsNoSupport"], true, "{device}");
    assert_eq!(device["instance"].as_str(), Some(agent.public_id.as_str()));

    // Lines to upload: two in the followed file (it is followed from its
    // end, which it was at when the agent said it was ready), one logged.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&app_log)
            .unwrap();
        f.write_all(b"private line 1\nprivate line 2\n").unwrap();
    }
    agent_cli(&agent_dir, &["log", "private", "message"]);
    // They are durable on the node, and not uploaded.
    let want = ["private line 1", "private line 2", "private message"];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let local = loop {
        let out = agent_cli(&agent_dir, &["logs", "--json", "-n", "100"]);
        let logs: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if want.iter().all(|w| logs.iter().any(|l| l["text"] == *w)) {
            break logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lines never reached the local queue: {out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for l in local
        .iter()
        .filter(|l| want.contains(&l["text"].as_str().unwrap_or("")))
    {
        assert_eq!(l["uploaded"], false, "{l}");
    }

    // The server hears from the agent twice more (its reports move the
    // node's lastSeen), so any upload (sent 100 ms after the lines were
    // durable) would be stored by now.
    let mut seen = last_seen(&server.url, &node).await;
    for _ in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = last_seen(&server.url, &node).await;
            if now > seen {
                seen = now;
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent stopped reporting to the server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Its logs stay on the node: the collection knows no such instance and
    // holds none of the lines.
    let cols: Value = common::get_json(&format!("{}/collections", server.url)).await;
    assert!(
        cols["collections"]["tailnode"]["instances"]
            .get(&agent.public_id)
            .is_none(),
        "{cols}"
    );
    let stored = common::read_all(&common::http(), &server.url, "tailnode").await;
    assert!(
        stored
            .iter()
            .all(|e| e["logtail"]["id"] != agent.public_id.as_str()),
        "{stored:?}"
    );
    agent.stop();
    // Still there after the agent stopped.
    let out = agent_cli(&agent_dir, &["logs", "--json", "-n", "100"]);
    for w in want {
        assert!(out.contains(w), "{out}");
    }
}
