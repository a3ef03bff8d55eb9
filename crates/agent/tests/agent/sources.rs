//! Log sources and the disk queue, seen from outside: socket, followed files,
//! restarts, rotation, truncation, a full queue.

use std::fs;
use std::time::Duration;

use serde_json::Value;
use tally_agent::{Agent, AgentError, SocketError, log_via_socket};
use tally_proto::logtail::MAX_ENTRY_BYTES;

use crate::support::*;

#[tokio::test]
async fn socket_logging_answers_after_fsync_with_increasing_proc_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let agent = Agent::start(config(&data)).await.unwrap();
    let durable = agent.durable_seq();
    let mut last = 0;
    for (i, level) in [None, Some(2), None].into_iter().enumerate() {
        let receipt = log_via_socket(&data, &format!("message {i}"), level)
            .await
            .unwrap();
        assert_eq!(receipt.proc_seq.len(), 1);
        let seq = receipt.proc_seq[0];
        assert!(seq > last, "proc_seq increases: {seq} after {last}");
        assert!(*durable.borrow() >= seq, "answered only once durable");
        last = seq;
    }
    // Scripts: plain text lines, with a level prefix; several per connection.
    let answers = raw_requests(
        agent.socket_path().to_owned(),
        vec![
            "[v3] from a script".into(),
            "plain".into(),
            r#"{"text":"json\nform","v":1}"#.into(),
        ],
    )
    .await;
    let seqs: Vec<u64> = answers
        .iter()
        .map(|a| {
            assert_eq!(a["ok"], true, "{a}");
            a["proc_seq"][0].as_u64().unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] == last + 1,
        "{seqs:?}"
    );

    let logs = all_logs(&data);
    let got: Vec<(Option<u64>, &str)> = logs.iter().map(|l| (l.level(), l.text())).collect();
    assert_eq!(
        got,
        [
            (None, "message 0"),
            (Some(2), "message 1"),
            (None, "message 2"),
            (Some(3), "from a script"),
            (None, "plain"),
            (Some(1), "json\nform")
        ]
    );
    let proc_id = &logs[0].json["logtail"]["proc_id"];
    for (l, seq) in logs.iter().zip(1..) {
        assert_eq!(l.source(), Some("cli"));
        assert!(!l.uploaded);
        assert_eq!(&l.json["logtail"]["proc_id"], proc_id);
        assert_eq!(l.proc_seq(), Some(seq));
        assert!(tally_proto::timefmt::parse_rfc3339(l.client_time().unwrap()).is_some());
    }
    assert!(
        logs[1].to_string().contains("[v2] cli: message 1"),
        "{}",
        logs[1]
    );
    assert!(
        logs[1].to_string().starts_with("* "),
        "not uploaded marker: {}",
        logs[1]
    );

    agent.shutdown().await.unwrap();
    let err = log_via_socket(&data, "late", None).await.unwrap_err();
    assert!(matches!(err, SocketError::NotRunning { .. }), "{err}");
    assert!(
        err.to_string().contains("no agent is listening on")
            && err.to_string().contains("agent.sock")
    );
}

#[tokio::test]
async fn stale_socket_reads_as_not_running_and_one_agent_per_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    // A socket file left behind by a killed agent.
    drop(std::os::unix::net::UnixListener::bind(data.join("agent.sock")).unwrap());
    let err = log_via_socket(&data, "x", None).await.unwrap_err();
    assert!(matches!(err, SocketError::NotRunning { .. }), "{err}");

    let agent = Agent::start(config(&data)).await.unwrap();
    let err = Agent::start(config(&data)).await.unwrap_err();
    assert!(matches!(err, AgentError::AlreadyRunning { .. }), "{err}");
    log_via_socket(&data, "still works", None).await.unwrap();
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn followed_file_starts_at_end_then_resumes_without_loss_or_duplication() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("app.log");
    append(&log, "old 1\nold 2\n");
    let mut cfg = config(&data);
    cfg.follow = vec![log.clone()];
    let key = log.to_str().unwrap();

    let agent = Agent::start(cfg.clone()).await.unwrap();
    let (text, mut want) = numbered("a", 0..5);
    append(&log, &text);
    append(&log, "partial");
    wait_durable(&agent, 5).await;
    agent.shutdown().await.unwrap();

    append(&log, " line\n");
    let (text, more) = numbered("b", 0..3);
    append(&log, &text);
    want.push("partial line".into());
    want.extend(more);
    let agent = Agent::start(cfg.clone()).await.unwrap();
    wait_durable(&agent, 4).await;
    let (text, more) = numbered("c", 0..2);
    append(&log, &text);
    want.extend(more);
    wait_durable(&agent, 6).await;
    agent.shutdown().await.unwrap();

    // A restart with nothing new adds nothing.
    let agent = Agent::start(cfg).await.unwrap();
    log_via_socket(&data, "marker", None).await.unwrap();
    agent.shutdown().await.unwrap();
    assert_eq!(texts_from(&data, key), want);
}

#[tokio::test]
async fn rotation_by_rename_while_running_and_while_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("app.log");
    let rotated = tmp.path().join("app.log.1");
    append(&log, "");
    let mut cfg = config(&data);
    cfg.follow = vec![log.clone()];
    let key = log.to_str().unwrap();

    let agent = Agent::start(cfg.clone()).await.unwrap();
    append(&log, "l1\nl2\n");
    wait_durable(&agent, 2).await;
    // logrotate's "create": rename, the program still writes to the old file
    // for a moment, then a new file appears.
    fs::rename(&log, &rotated).unwrap();
    append(&rotated, "l3\n");
    append(&log, "l4\n");
    wait_durable(&agent, 4).await;
    agent.shutdown().await.unwrap();

    // The same while the agent is stopped.
    append(&log, "l5\n");
    fs::rename(&rotated, tmp.path().join("app.log.2")).unwrap();
    fs::rename(&log, &rotated).unwrap();
    append(&rotated, "l6\n");
    append(&log, "l7\n");
    let agent = Agent::start(cfg).await.unwrap();
    wait_durable(&agent, 3).await;
    append(&log, "l8\n");
    wait_durable(&agent, 4).await;
    agent.shutdown().await.unwrap();

    let want: Vec<String> = (1..=8).map(|i| format!("l{i}")).collect();
    assert_eq!(texts_from(&data, key), want);
}

#[tokio::test]
async fn truncation_while_running_and_while_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("app.log");
    append(&log, &"x".repeat(100));
    append(&log, "\n");
    let mut cfg = config(&data);
    cfg.follow = vec![log.clone()];
    let key = log.to_str().unwrap();

    let agent = Agent::start(cfg.clone()).await.unwrap();
    append(&log, "t1\nt2\n");
    wait_durable(&agent, 2).await;
    // copytruncate: the file is emptied in place and written again.
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, "t3\n");
    wait_durable(&agent, 3).await;
    agent.shutdown().await.unwrap();

    // Emptied and refilled past the old position while stopped: only the
    // fingerprint of the bytes before the position can tell.
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (text, refilled) = numbered("t", 4..40);
    append(&log, &text);
    let agent = Agent::start(cfg).await.unwrap();
    wait_durable(&agent, 36).await;
    agent.shutdown().await.unwrap();

    let mut want = vec!["t1".to_owned(), "t2".into(), "t3".into()];
    want.extend(refilled);
    assert_eq!(texts_from(&data, key), want);
}

#[tokio::test]
async fn long_lines_levels_and_invalid_utf8_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("app.log");
    append(&log, "");
    let mut cfg = config(&data);
    cfg.follow = vec![log.clone()];
    let agent = Agent::start(cfg).await.unwrap();

    let long: String = (0..600 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(format!("[v3] {long}\n[v1] short\n").as_bytes())
            .unwrap();
        f.write_all(b"bad \xff\xfe bytes\n").unwrap();
    }
    let mut durable = agent.durable_seq();
    tokio::time::timeout(
        PATIENCE,
        durable.wait_for(|_| all_logs(&data).iter().any(|l| l.text().starts_with("bad"))),
    )
    .await
    .unwrap()
    .unwrap();
    agent.shutdown().await.unwrap();

    let logs = all_logs(&data);
    let (parts, rest): (Vec<_>, Vec<_>) = logs.iter().partition(|l| l.part().is_some());
    assert!(parts.len() >= 3, "600 KiB make at least three parts");
    let joined: String = parts.iter().map(|l| l.text()).collect();
    assert_eq!(joined, long, "nothing cut");
    for (l, k) in parts.iter().zip(1..) {
        assert_eq!((l.part(), l.level()), (Some(k), Some(3)));
        assert!(serde_json::to_vec(&l.json).unwrap().len() <= MAX_ENTRY_BYTES);
    }
    assert_eq!((rest[0].text(), rest[0].level()), ("short", Some(1)));
    assert_eq!(rest[1].text(), "bad \u{fffd}\u{fffd} bytes");
    assert_eq!(rest[1].json["invalid_utf8"], Value::Bool(true));
    assert!(rest[0].json.get("invalid_utf8").is_none());
}

#[tokio::test]
async fn full_queue_drops_oldest_and_says_how_many() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Uploading on, to a server that is not there: nothing gets acknowledged.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&data);
    cfg.no_logs_no_support = false;
    cfg.server = Some(format!("http://127.0.0.1:{port}"));
    cfg.backoff_min = Duration::from_secs(60);
    cfg.backoff_max = Duration::from_secs(60);
    cfg.queue_max_bytes = 1 << 20;
    let agent = Agent::start(cfg).await.unwrap();

    let pad = "p".repeat(4000);
    let mut tasks = Vec::new();
    for c in 0..10 {
        let lines = (0..30)
            .map(|i| format!("entry {} {pad}", c * 30 + i))
            .collect();
        tasks.push(tokio::spawn(raw_requests(
            agent.socket_path().to_owned(),
            lines,
        )));
    }
    for t in tasks {
        assert!(t.await.unwrap().iter().all(|a| a["ok"] == true));
    }
    agent.shutdown().await.unwrap();

    let logs = all_logs(&data);
    let seqs: Vec<u64> = logs.iter().map(|l| l.proc_seq().unwrap()).collect();
    let first = seqs[0];
    assert!(first > 1, "something was dropped");
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "only the oldest went"
    );
    let notices: Vec<u64> = logs
        .iter()
        .filter(|l| l.source() == Some("tally-agent"))
        .map(|l| {
            let text = l.text();
            assert!(
                text.ends_with(" logs dropped: the disk queue (1 MiB) was full"),
                "{text}"
            );
            text.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(!notices.is_empty());
    assert_eq!(
        notices.iter().sum::<u64>(),
        first - 1,
        "every dropped entry is counted"
    );
    let users = logs.iter().filter(|l| l.source() == Some("cli")).count() as u64;
    assert_eq!(users + first - 1, 300, "no notice was itself dropped");
    let on_disk: u64 = fs::read_dir(data.join("queue"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 1 << 20, "{on_disk}");
}

/// Environment of the child process of [`killed_agent_neither_loses_nor_duplicates_lines`].
const CHILD_DATA: &str = "TALLY_AGENT_TEST_CHILD_DATA";
const CHILD_FOLLOW: &str = "TALLY_AGENT_TEST_CHILD_FOLLOW";

/// The child process of [`killed_agent_neither_loses_nor_duplicates_lines`]:
/// runs an agent until killed. Ignored, so it is no test of its own; the
/// parent runs it with `--ignored` (run by hand, it does nothing).
#[tokio::test]
#[ignore = "helper process of killed_agent_neither_loses_nor_duplicates_lines"]
async fn crash_child() {
    let (Some(data), Some(follow)) = (std::env::var_os(CHILD_DATA), std::env::var_os(CHILD_FOLLOW))
    else {
        eprintln!(
            "crash_child is a helper process of killed_agent_neither_loses_nor_duplicates_lines: nothing to do"
        );
        return;
    };
    let mut cfg = config(std::path::Path::new(&data));
    cfg.follow = vec![follow.into()];
    let _agent = Agent::start(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn killed_agent_neither_loses_nor_duplicates_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("app.log");
    append(&log, "");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "sources::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DATA, &data)
        .env(CHILD_FOLLOW, &log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The socket answers once the agent is started and the file positioned.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while log_via_socket(&data, "child is up", None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child agent did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Keep writing while the agent is killed.
    let total = 20_000u32;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for chunk in (0..total).collect::<Vec<_>>().chunks(50) {
                let text: String = chunk.iter().map(|i| format!("line {i}\n")).collect();
                append(&log, &text);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let key = log.to_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while texts_from(&data, &key).len() < 2_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child agent did not queue lines"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let seen_before_restart = texts_from(&data, &key).len();
    writer.join().unwrap();
    assert!(seen_before_restart < total as usize, "killed mid-stream");

    let mut cfg = config(&data);
    cfg.follow = vec![log.clone()];
    let agent = Agent::start(cfg).await.unwrap();
    let mut durable = agent.durable_seq();
    tokio::time::timeout(
        PATIENCE,
        durable.wait_for(|_| texts_from(&data, &key).len() >= total as usize),
    )
    .await
    .expect("every line queued after the restart")
    .unwrap();
    agent.shutdown().await.unwrap();
    let want: Vec<String> = (0..total).map(|i| format!("line {i}")).collect();
    assert_eq!(texts_from(&data, &key), want);
}
