//! `tally record` (issue 16): a command run under a real pseudo-terminal
//! (`tally record` itself runs under `script`, so its stdin and stdout are
//! a terminal too) is recorded through the node's agent: the exported
//! `.cast` holds the output with its timings and `asciinema cat` and
//! `asciinema play` read it
//! unchanged; a server outage during the session loses nothing and
//! duplicates nothing; `--require-recording` refuses to start without the
//! agent or the server, and the default fails open.

mod common;

use common::readme::{free_port, tally_async as cli};
use common::{TestAgent, TestServer, bin, get_json};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `tally record --data-dir DIR ARGS -- sh -c INNER` under `script`
/// (a pseudo-terminal for `tally record` itself).
fn record_under_pty(data: &Path, args: &[&str], inner: &str) -> Command {
    assert!(
        !inner.contains('\''),
        "keep the script free of single quotes"
    );
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c"])
        .arg(format!(
            "{} record --data-dir {} {} -- sh -c '{inner}'",
            bin(),
            data.display(),
            args.join(" ")
        ))
        .arg("/dev/null")
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The recordings list of the test tailnet.
async fn recordings(url: &str) -> Vec<Value> {
    get_json(&format!("{url}/api/v2/tailnet/-/recordings"))
        .await
        .get("recordings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Waits until the API lists a recording whose state is `state`; no signal
/// crosses the processes, so it polls (at most 60 s).
async fn await_recording(url: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = recordings(url)
            .await
            .into_iter()
            .find(|r| r["state"] == state)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no recording in state {state:?}: {:?}",
            recordings(url).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `.cast` of recording `id`, exported by the CLI.
async fn export(url: &str, id: &str, file: &Path) -> String {
    cli(
        url,
        &[
            "recordings",
            "export",
            id,
            "-o",
            file.to_str().expect("path"),
        ],
    )
    .await;
    std::fs::read_to_string(file).expect("cast")
}

fn output_events(cast: &str) -> Vec<(f64, String)> {
    cast.lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).expect("an event"))
        .filter(|e| e[1] == "o")
        .map(|e| {
            (
                e[0].as_f64().expect("time"),
                e[2].as_str().expect("data").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_is_exported_with_timings_and_read_by_asciinema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let data = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &data, &["--hostname", "rec-node"]);
    agent.wait_line("tally agent registered", Duration::from_secs(60));

    let mut run = record_under_pty(
        &data,
        &[],
        "echo first line; sleep 0.3; printf \"second \\342\\234\\223 line\\n\"; exit 3",
    );
    let out: Output = tokio::task::spawn_blocking(move || run.output().expect("script"))
        .await
        .expect("ran");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's exit status: {shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("first line") && shown.contains("second ✓ line"),
        "{shown}"
    );

    let r = await_recording(&server.url, "complete").await;
    assert_eq!(r["recordedBy"], "tally record", "{r}");
    // The source node is the agent's node, as the server knows it.
    assert_eq!(r["srcNode"], "rec-node", "{r}");
    let id = r["id"].as_str().expect("id").to_owned();
    let file = dir.path().join("session.cast");
    let cast = export(&server.url, &id, &file).await;
    let header: Value = serde_json::from_str(cast.lines().next().expect("header")).expect("json");
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().is_some_and(|w| w > 0), "{header}");
    assert!(header["height"].as_u64().is_some_and(|h| h > 0), "{header}");
    assert_eq!(header["env"]["TERM"], "xterm", "{header}");
    assert!(header["localUser"].is_string(), "{header}");
    // No input is recorded by default.
    assert!(
        !cast.lines().skip(1).any(|l| l.contains(",\"i\",")),
        "{cast}"
    );
    let events = output_events(&cast);
    let text: String = events.iter().map(|(_, d)| d.as_str()).collect();
    assert!(text.contains("first line\r\n"), "{text:?}");
    assert!(text.contains("second ✓ line\r\n"), "{text:?}");
    // Timings: in order, and the second line after the first.
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0), "{events:?}");
    let at = |s: &str| events.iter().find(|(_, d)| d.contains(s)).expect(s).0;
    assert!(at("second") > at("first"), "{events:?}");

    // Debian's asciinema reads the export unchanged (it wants a terminal).
    assert!(
        Path::new("/usr/bin/asciinema").exists(),
        "asciinema is not installed (apt-get install asciinema; .ci/run does)"
    );
    // `asciinema cat`, and `asciinema play` (fast: -s 20, pauses capped
    // at 0.1 s), both under a pseudo-terminal.
    for verb in ["cat", "play -s 20 -i 0.1"] {
        let out = Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!("asciinema {verb} {}", file.display()))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux)");
        assert!(
            out.status.success(),
            "asciinema {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("first line") && text.contains("second ✓ line"),
            "asciinema {verb}: {text}"
        );
    }
    // The tailnet's retention of recordings.
    let shown = cli(&server.url, &["recordings", "retention"]).await;
    assert_eq!(shown.trim(), "recordings are kept 30 days");
    let set = cli(&server.url, &["recordings", "retention", "7"]).await;
    assert_eq!(set.trim(), "recordings are kept 7 days");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_recorded_through_a_server_outage_arrives_whole_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_dir = dir.path().join("server");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = TestServer::start_on(&server_dir, &listen, &[]);
    let data = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &data, &[]);
    agent.wait_line("tally agent registered", Duration::from_secs(60));

    // The session prints a line, waits for the test's go, then prints
    // 2,000 numbered lines.
    let go = dir.path().join("go");
    let inner = format!(
        "echo session started; while [ ! -e {} ]; do sleep 0.05; done; seq -f \"line %g\" 1 2000; echo session done",
        go.display()
    );
    let mut run = record_under_pty(&data, &[], &inner);
    let session = std::thread::spawn(move || run.output().expect("script"));
    // The recording is on the server (in progress) ...
    let r = await_recording(&server.url, "recording").await;
    let id = r["id"].as_str().expect("id").to_owned();
    // ... when the server goes down; the session goes on and ends.
    server.kill9();
    std::fs::write(&go, b"").expect("go");
    let out = tokio::task::spawn_blocking(move || session.join().expect("session"))
        .await
        .expect("joined");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Queued, not lost: nothing said on stderr about the recording.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("not recording") && !err.contains("recording stopped"),
        "{err}"
    );

    // The server is back: the agent uploads the rest.
    let server = TestServer::start_on(&server_dir, &listen, &[]);
    let r = await_recording(&server.url, "complete").await;
    assert_eq!(r["id"], id.as_str(), "{r}");
    let cast = export(&server.url, &id, &dir.path().join("outage.cast")).await;
    let text: String = output_events(&cast).into_iter().map(|(_, d)| d).collect();
    // (`script` passes its closed stdin on as a NUL, which the session's
    // terminal echoes as `^@`: recorded as it was shown.)
    let lines: Vec<&str> = text
        .split("\r\n")
        .map(|l| l.trim_start_matches("^@"))
        .filter(|l| l.starts_with("line "))
        .collect();
    let want: Vec<String> = (1..=2000).map(|i| format!("line {i}")).collect();
    assert!(
        lines == want,
        "every line once, in order: {} lines, starting {:?}",
        lines.len(),
        &text[..text.len().min(300)]
    );
    assert!(text.contains("session started") && text.contains("session done"));
    // Exactly once in the store too: each chunk of the recording once.
    let stored = common::read_all(&common::http(), &server.url, "recordings").await;
    let mut seqs: Vec<u64> = stored
        .iter()
        .filter(|e| e["recording"] == id.as_str())
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a chunk stored twice: {seqs:?}");
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "no chunk missing");
    assert_eq!(r["bytes"].as_u64(), Some(cast.len() as u64), "{r}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_recording_refuses_to_start_without_agent_or_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = dir.path().join("ran");
    let inner = format!("touch {}; exit 4", mark.display());
    let record = |data: &Path, extra: &[&str]| {
        Command::new(bin())
            .arg("record")
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .args(["--", "sh", "-c", &inner])
            .env_remove("TALLY_SERVER")
            .stdin(Stdio::null())
            .output()
            .expect("run tally record")
    };

    // No agent: refused, with why and what to do; the command never ran.
    let nowhere = dir.path().join("no-agent");
    let out = record(&nowhere, &["--require-recording"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("no agent is listening"), "{err}");
    assert!(err.contains("tally agent --server"), "{err}");
    assert!(!mark.exists(), "the command ran");

    // The default fails open: said once, the command runs, its status kept.
    let out = record(&nowhere, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(
        err.matches("not recording this session").count(),
        1,
        "{err}"
    );
    assert!(mark.exists());
    std::fs::remove_file(&mark).expect("rm");

    // An agent whose server is down: refused, saying the server does not
    // answer.
    let mut server = TestServer::start(&dir.path().join("server"), &[]);
    let data = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &data, &[]);
    agent.wait_line("tally agent registered", Duration::from_secs(60));
    server.kill9();
    let out = record(&data, &["--require-recording"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing to start") && err.contains("the server does not answer"),
        "{err}"
    );
    assert!(!mark.exists(), "the command ran");
    agent.stop();
}

/// Edits `from` into `to` (same length) inside the write-ahead-log frame
/// that holds it, fixing the frame's CRC-32C as a careful tamperer would;
/// returns whether a frame held it.
fn edit_wal_frame(store: &Path, from: &[u8], to: &[u8]) -> bool {
    assert_eq!(from.len(), to.len());
    for wal in std::fs::read_dir(store).expect("store dir").flatten() {
        let path = wal.path();
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("wal");
        let mut at = 16; // the WAL header
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
            if len == 0 || at + 8 + len > bytes.len() {
                break;
            }
            let payload = &mut bytes[at + 8..at + 8 + len];
            if let Some(p) = payload.windows(from.len()).position(|w| w == from) {
                payload[p..p + to.len()].copy_from_slice(to);
                let crc = crc32c::crc32c(payload);
                bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                std::fs::write(&path, &bytes).expect("write wal");
                return true;
            }
            at += 8 + len;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_recording_chunk_edited_on_the_servers_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_dir = dir.path().join("server");
    let state = dir.path().join("state");
    let listen = format!("127.0.0.1:{}", free_port());
    let recorder = format!("127.0.0.1:{}", free_port());
    let args = [
        "--recorder-listen",
        recorder.as_str(),
        "--recorder-allow",
        "127.0.0.0/8",
    ];
    let mut server = TestServer::start_on(&server_dir, &listen, &args);
    let cast = concat!(
        r#"{"version":2,"width":80,"height":24,"timestamp":1700000000,"srcNode":"web-1","sshUser":"root"}"#,
        "\n",
        r#"[0.5,"o","$ rm -rf /var/log/tamper-me-not\r\n"]"#,
        "\n",
    );
    let resp = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2c")
        .post(format!("http://{recorder}/v2/record"))
        .body(cast)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("acks");
    let id = await_recording(&server.url, "complete").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let verify = |url: &str| {
        let out = Command::new(bin())
            .args(["verify", "--server", url, "--api-key", common::KEY])
            .arg("--state-dir")
            .arg(&state)
            .args(["--recording", &id])
            .output()
            .expect("tally verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = verify(&server.url);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("recording {id}: 1 chunk(s)")),
        "{out}"
    );
    assert!(out.contains("each in the log"), "{out}");

    // Someone edits the recorded command on the server's disk.
    server.kill9();
    assert!(
        edit_wal_frame(
            &server_dir.join("store"),
            b"tamper-me-not",
            b"nothing-here!"
        ),
        "the chunk is in the write-ahead log"
    );
    let server = TestServer::start_on(&server_dir, &listen, &args);
    let edited = cli(&server.url, &["recordings", "export", &id]).await;
    assert!(
        edited.contains("nothing-here!"),
        "the edit is served: {edited}"
    );
    let (ok, out) = verify(&server.url);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("recording {id}: chunk 1"))
            && out.contains("does not match the transparency log")
            && out.contains("changed after it was stored"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_recording_ends_the_session_when_the_agent_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let data = dir.path().join("agent");
    let agent = TestAgent::start(&server.url, &data, &[]);
    agent.wait_line("tally agent registered", Duration::from_secs(60));
    // A session that would run for ten minutes.
    let mut run = record_under_pty(
        &data,
        &["--require-recording"],
        "i=0; while [ $i -lt 3000 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    );
    let session = std::thread::spawn(move || run.output().expect("script"));
    await_recording(&server.url, "recording").await;
    // The agent stops: recording can no longer be queued.
    agent.stop();
    let out = tokio::task::spawn_blocking(move || session.join().expect("session"))
        .await
        .expect("joined");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(125), "{shown}");
    assert!(shown.contains("recording failed"), "{shown}");
    assert!(
        shown.contains("the session was ended because recording failed (--require-recording)"),
        "{shown}"
    );
    assert!(
        !shown.contains("tick 2999"),
        "the command was ended: {shown}"
    );
}
