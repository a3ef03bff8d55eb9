//! `tally verify`: OK on an honest server; the batches flagged at ingest
//! (here an unsigned upload from a node that signs) and a rewritten log
//! history make it fail with what it found.

mod common;

use common::{KEY, TestAgent, TestServer, bin};
use std::process::Command;

fn verify(url: &str, state: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["verify", "--server", url, "--api-key", KEY, "--state-dir"])
        .arg(state)
        .output()
        .expect("run tally verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn agent_log(data: &std::path::Path, msg: &str) {
    let out = Command::new(bin())
        .args(["agent", "--data-dir"])
        .arg(data)
        .args(["log", msg])
        .output()
        .expect("run tally agent log");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_an_honest_server_and_catches_flags_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let state = dir.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = TestServer::start_on(&server_dir, &listen, &[]);
    let agent_dir = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &agent_dir, &[]);
    agent_log(&agent_dir, "signed one");
    common::await_entries(&server.url, &agent.public_id, 1).await;

    let (ok, out) = verify(&server.url, &state);
    assert!(ok, "{out}");
    assert!(out.contains("trusting the log key on first use"), "{out}");
    assert!(out.contains("verdict: OK"), "{out}");

    agent_log(&agent_dir, "signed two");
    common::await_entries(&server.url, &agent.public_id, 2).await;
    let (ok, out) = verify(&server.url, &state);
    assert!(ok, "{out}");
    assert!(
        out.contains("log consistent with the checkpoint seen before"),
        "{out}"
    );
    agent.stop();

    // The node signs; an unsigned upload in its name is flagged.
    let private = std::fs::read_to_string(agent_dir.join("private-id")).unwrap();
    let resp = common::http()
        .post(format!("{}/c/tailnode/{}", server.url, private.trim()))
        .body(r#"{"text":"not signed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (ok, out) = verify(&server.url, &state);
    assert!(!ok, "{out}");
    assert!(out.contains("unsigned"), "{out}");

    // Someone rewrites the log's history on the server's disk.
    server.stop();
    let epoch = server_dir.join("merkle").join("epoch-000000000000");
    let leaves = epoch.join("leaves");
    let mut bytes = std::fs::read(&leaves).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&leaves, &bytes).unwrap();
    for f in std::fs::read_dir(&epoch).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("level-") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let server = TestServer::start_on(&server_dir, &listen, &[]);
    let (ok, out) = verify(&server.url, &state);
    assert!(!ok, "{out}");
    assert!(out.contains("history was rewritten"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_checkpoints_and_report_a_rewritten_history() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let fast = ["--agent-report-seconds", "1"];
    let mut server = TestServer::start_on(&server_dir, &listen, &fast);
    let auth_key = common::reusable_auth_key(&server.url).await;
    // A record the agent's first checkpoint covers (leaf 0, rewritten below).
    let resp = common::http()
        .post(format!(
            "{}/c/tailnode/{}",
            server.url,
            common::adopted_id(&server.url, "tailnode").await.to_hex()
        ))
        .body(r#"{"text":"before the agent"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let agent_dir = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &agent_dir, &["--auth-key", &auth_key]);
    common::Follow::open(&server.url, "tailnode")
        .await
        .until_text("keeping the server's transparency-log checkpoints")
        .await;
    agent.stop();
    server.stop();
    let epoch = server_dir.join("merkle").join("epoch-000000000000");
    let leaves = epoch.join("leaves");
    let mut bytes = std::fs::read(&leaves).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&leaves, &bytes).unwrap();
    for f in std::fs::read_dir(&epoch).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("level-") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let server = TestServer::start_on(&server_dir, &listen, &fast);
    let agent = TestAgent::start(&server.url, &agent_dir, &[]);
    let text = common::Follow::open(&server.url, "tailnode")
        .await
        .until_text("the server's log is not consistent")
        .await;
    assert!(text.contains("history was rewritten"), "{text}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_recovery_cut_once_with_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let state = dir.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = TestServer::start_on(&server_dir, &listen, &[]);
    let private = common::adopted_id(&server.url, "tailnode").await.to_hex();
    for i in 0..10 {
        let resp = common::http()
            .post(format!("{}/c/tailnode/{private}", server.url))
            .body(format!(r#"{{"text":"entry {i}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The client's checkpoint covers every record.
    let (ok, out) = verify(&server.url, &state);
    assert!(ok, "{out}");

    // A crash, and the WAL's tail is damaged on disk.
    server.kill9();
    let wal = std::fs::read_dir(server_dir.join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a WAL");
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 150)
        .unwrap();
    let server = TestServer::start_on(&server_dir, &listen, &[]);
    let resp = common::http()
        .post(format!("{}/c/tailnode/{private}", server.url))
        .body(r#"{"text":"after the cut"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let out = Command::new(bin())
        .args([
            "verify",
            "--server",
            &server.url,
            "--api-key",
            KEY,
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .expect("run tally verify");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("log consistent with the checkpoint seen before"),
        "{text}"
    );
    assert!(text.contains("recovery cut"), "{text}");
    assert!(text.contains("were lost"), "{text}");
    // Reported once: the next run is clean.
    let (ok, out) = verify(&server.url, &state);
    assert!(ok, "{out}");
    assert!(out.contains("verdict: OK"), "{out}");
}
