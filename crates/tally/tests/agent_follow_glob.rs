//! `tally agent --follow 'DIR/*.log'`: files matching at start are
//! followed from their end, a file that starts matching while the agent
//! runs is read from its start, and a restart resumes both exactly.

mod common;

use common::{Follow, TestAgent, TestServer};
use std::io::Write;
use std::time::Duration;

fn append(path: &std::path::Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

async fn until(follow: &mut Follow, text: &str) -> serde_json::Value {
    until_all(follow, &[text]).await.remove(0)
}

/// Reads the stream until every one of `texts` arrived, in any order (two
/// files are read by two threads); returns them in the order asked.
async fn until_all(follow: &mut Follow, texts: &[&str]) -> Vec<serde_json::Value> {
    let mut found: Vec<Option<serde_json::Value>> = vec![None; texts.len()];
    tokio::time::timeout(Duration::from_secs(30), async {
        while found.iter().any(Option::is_none) {
            let e = follow.next().await;
            if let Some(i) = texts.iter().position(|t| e["text"] == *t) {
                found[i] = Some(e);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not all of {texts:?} arrived within 30 s: {found:?}"));
    found.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_follows_new_files_from_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let old = logs.join("a.log");
    append(&old, "before the agent: not shipped");
    std::fs::write(logs.join("notes.txt"), "not matching\n").unwrap();
    let pattern = format!("{}/*.log", logs.display());
    let agent_dir = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &agent_dir, &["--follow", &pattern]);
    let mut follow = Follow::open(&server.url, "tailnode").await;

    append(&old, "a: after start");
    let e = until(&mut follow, "a: after start").await;
    assert_eq!(e["source"], old.to_str().unwrap());
    // A new file: its first lines (written before the agent saw it) too.
    let new = logs.join("b.log");
    append(&new, "b: line 1");
    append(&new, "b: line 2");
    until_all(&mut follow, &["b: line 1", "b: line 2"]).await;

    // A restart resumes both where they were: each line once.
    agent.stop();
    append(&old, "a: while stopped");
    append(&new, "b: while stopped");
    let _agent = TestAgent::start(&server.url, &agent_dir, &["--follow", &pattern]);
    until_all(&mut follow, &["a: while stopped", "b: while stopped"]).await;
    append(&new, "b: end marker");
    until(&mut follow, "b: end marker").await;

    let all = common::read_all(&common::http(), &server.url, "tailnode").await;
    let texts: Vec<&str> = all.iter().filter_map(|e| e["text"].as_str()).collect();
    for line in [
        "a: after start",
        "b: line 1",
        "b: line 2",
        "a: while stopped",
        "b: while stopped",
    ] {
        assert_eq!(
            texts.iter().filter(|t| **t == line).count(),
            1,
            "{line}: {texts:?}"
        );
    }
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("not shipped") || t.contains("not matching"))
    );
}
