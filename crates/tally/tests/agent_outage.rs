//! The agent and the server together: the server goes down for a while, the
//! agent is restarted once in between, and every line written to a followed
//! file still arrives exactly once, in order.

mod common;

use common::{TestAgent, TestServer, await_entries, http, read_all};
use std::io::Write;
use std::path::Path;

fn append_lines(file: &Path, range: std::ops::Range<u32>) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .unwrap();
    for i in range {
        writeln!(f, "line {i:05} of the outage test").unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_exactly_once_across_a_server_outage_and_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, agent_dir, log) = (
        dir.path().join("server"),
        dir.path().join("agent"),
        dir.path().join("app.log"),
    );
    std::fs::write(&log, "written before the agent first looked: not shipped\n").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = TestServer::start_on(&server_dir, &listen, &[]);
    let url = server.url.clone();

    let agent = TestAgent::start(&url, &agent_dir, &["--follow", log.to_str().unwrap()]);
    let instance = agent.public_id.clone();
    append_lines(&log, 0..200);
    await_entries(&url, &instance, 200).await;

    // The server goes away; lines keep coming and queue on the agent's disk.
    server.kill9();
    append_lines(&log, 200..400);
    // The agent is restarted while the server is still down; lines written
    // while it is stopped are picked up from its saved position.
    agent.stop();
    append_lines(&log, 400..600);
    let agent = TestAgent::start(&url, &agent_dir, &["--follow", log.to_str().unwrap()]);
    assert_eq!(agent.public_id, instance, "the agent keeps its identity");
    append_lines(&log, 600..800);

    // The server comes back on the same address.
    let server = TestServer::start_on(&server_dir, &listen, &[]);
    await_entries(&server.url, &instance, 800).await;

    let all = read_all(&http(), &server.url, "tailnode").await;
    // The agent's own notes (registration) go to the same log.
    let (logs, notes): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|e| e["source"] != "tally-agent");
    assert!(notes.len() <= 2, "{notes:?}");
    let texts: Vec<String> = logs
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..800)
        .map(|i| format!("line {i:05} of the outage test"))
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "exactly once: no loss, no duplicates"
    );
    assert_eq!(texts, expected, "in order");
    for e in &logs {
        assert_eq!(e["logtail"]["id"], instance.as_str());
        assert!(e["logtail"]["proc_seq"].is_u64() && e["logtail"]["client_time"].is_string());
    }
    agent.stop();
}
