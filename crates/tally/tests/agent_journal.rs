//! `tally agent --journal`: a real journal file (made by Debian's
//! `systemd-journal-remote` from an export stream, appended to while the
//! agent runs and while it is stopped), read through journalctl: entries
//! written after the agent is ready arrive with unit, priority, PID and
//! host, and a restart resumes exactly: every entry once.

mod common;

use common::{Follow, TestAgent, TestServer};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const JOURNAL_REMOTE: &str = "/usr/lib/systemd/systemd-journal-remote";

/// Appends one entry to the journal file in `dir`.
fn write_entry(dir: &Path, seq: u64, unit: &str, priority: u8, msg: &str) {
    let export = format!(
        "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={seq}\n_BOOT_ID=0123456789abcdef0123456789abcdef\nMESSAGE={msg}\nPRIORITY={priority}\n_SYSTEMD_UNIT={unit}\n_PID={}\n_HOSTNAME=web1\nSYSLOG_IDENTIFIER=test\n\n",
        1_765_000_000_000_000u64 + seq * 1_000_000,
        1000 + seq,
    );
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg("-o")
        .arg(dir.join("remote.journal"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run systemd-journal-remote");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

async fn until(follow: &mut Follow, text: &str) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = follow.next().await;
            if e["text"] == text {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{text:?} did not arrive within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_entries_arrive_once_across_a_restart() {
    if !Path::new(JOURNAL_REMOTE).exists() {
        assert_ne!(
            std::env::var("TALLY_REQUIRE_NETNS").as_deref(),
            Ok("1"),
            "systemd-journal-remote is missing (apt-get install systemd-journal-remote; .ci/run does)"
        );
        eprintln!("skipping: systemd-journal-remote is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    write_entry(
        &journal,
        1,
        "old.service",
        6,
        "before the agent: not shipped",
    );
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let agent_dir = dir.path().join("agent");
    let args = [
        "--journal",
        "--journal-directory",
        journal.to_str().unwrap(),
    ];
    let agent = TestAgent::start(&server.url, &agent_dir, &args);
    let mut follow = Follow::open(&server.url, "tailnode").await;
    write_entry(&journal, 2, "ssh.service", 3, "one");
    let e = until(&mut follow, "one").await;
    assert_eq!(e["source"], "journal");
    assert_eq!(e["journal"]["unit"], "ssh.service");
    assert_eq!(e["journal"]["priority"], 3);
    assert_eq!(e["journal"]["pid"], 1002);
    assert_eq!(e["journal"]["host"], "web1");
    assert!(e["journal"]["cursor"].is_string(), "{e}");

    agent.stop();
    write_entry(&journal, 3, "cron.service", 6, "two");
    let _agent = TestAgent::start(&server.url, &agent_dir, &args);
    until(&mut follow, "two").await;
    write_entry(&journal, 4, "cron.service", 7, "three");
    let e = until(&mut follow, "three").await;
    assert_eq!(e["v"], 1, "debug priority is verbosity 1: {e}");

    let all = common::read_all(&common::http(), &server.url, "tailnode").await;
    let texts: Vec<&str> = all
        .iter()
        .filter(|e| e["source"] == "journal")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
}
