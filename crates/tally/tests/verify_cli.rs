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
    let leaves = server_dir.join("merkle").join("leaves");
    let mut bytes = std::fs::read(&leaves).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&leaves, &bytes).unwrap();
    for f in std::fs::read_dir(server_dir.join("merkle"))
        .unwrap()
        .flatten()
    {
        if f.file_name().to_string_lossy().starts_with("level-") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let server = TestServer::start_on(&server_dir, &listen, &[]);
    let (ok, out) = verify(&server.url, &state);
    assert!(!ok, "{out}");
    assert!(out.contains("history was rewritten"), "{out}");
}
