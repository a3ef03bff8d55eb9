//! The systemd journal source (`--journal`): `journalctl -o json --follow`
//! (optionally `--unit`, `--priority`, `--directory`), each entry queued
//! as `{"source":"journal","text":MESSAGE,"journal":{unit, priority, pid,
//! host, identifier, time, cursor}}`.
//!
//! Where it resumes: each queued entry carries its journal cursor, so the
//! newest journal entry in the agent's queue is exactly as durable as the
//! entries; at start the source resumes after it (`--after-cursor`). The
//! cursor is also saved in `<data-dir>/journal.cursor` after each durable
//! batch, for when the queue no longer holds any journal entry (pruned
//! after 50 MiB of other logs). On first start it begins after the
//! journal's newest entry at that moment ([`end_cursor`]), as followed
//! files begin at their end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::entry::split_text;
use crate::error::AgentError;
use crate::writer::{Item, WriteRequest, note};

/// Source name of journal entries.
pub const JOURNAL_SOURCE: &str = "journal";
/// The cursor file in the data directory.
const CURSOR_FILE: &str = "journal.cursor";
/// Queue entries searched for the newest journal cursor at start.
const RESUME_SCAN: usize = 20_000;
/// Entries per queue request (one fsync, then the cursor file).
const BATCH: usize = 256;
/// Escaped text bytes per entry.
const TEXT_BUDGET: usize = 200 * 1024;
/// Longest journalctl output line taken (longer: cut, noted).
const MAX_LINE: usize = 4 << 20;

/// `--journal` and its filters.
#[derive(Debug, Clone, Default)]
pub struct JournalOptions {
    /// `--journal-unit`: only these units (journalctl `--unit`).
    pub units: Vec<String>,
    /// `--journal-priority`: at most this priority (0–7 or a name).
    pub priority: Option<String>,
    /// `--journal-directory`: read this journal directory instead of the
    /// system's (journalctl `--directory`).
    pub directory: Option<PathBuf>,
}

/// Checks that journalctl can run, before anything else starts.
pub(crate) async fn check() -> Result<(), AgentError> {
    match Command::new("journalctl").arg("--version").output().await {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(AgentError::Config(
            "--journal needs journalctl (Debian: the systemd package), which is not runnable here"
                .into(),
        )),
    }
}

/// The cursor to resume after: the newest journal entry in the queue,
/// else the cursor file.
pub(crate) fn resume_cursor(data_dir: &Path) -> Option<String> {
    if let Ok(logs) = crate::history::recent_logs(data_dir, RESUME_SCAN) {
        let newest = logs.iter().rev().find_map(|l| {
            (l.json.get("source")?.as_str()? == JOURNAL_SOURCE)
                .then(|| {
                    l.json
                        .get("journal")?
                        .get("cursor")?
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        });
        if newest.is_some() {
            return newest;
        }
    }
    std::fs::read_to_string(data_dir.join(CURSOR_FILE))
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
}

/// The journal's newest entry's cursor (within the filters) at start, so
/// that a first start follows from the end as it is now: entries written
/// once the agent said it is ready are read. `None` for an empty journal
/// (then everything is new).
pub(crate) async fn end_cursor(opts: &JournalOptions) -> Result<Option<String>, AgentError> {
    let mut cmd = Command::new("journalctl");
    cmd.args(["--output=json", "--lines=1", "--no-pager", "--quiet"]);
    filters(&mut cmd, opts);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| AgentError::Config(format!("--journal: cannot run journalctl: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::Config(format!(
            "--journal: journalctl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out
        .stdout
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|l| serde_json::from_slice::<Value>(l).ok())
        .and_then(|v| v.get("__CURSOR")?.as_str().map(str::to_owned)))
}

/// The unit, priority and directory arguments.
fn filters(cmd: &mut Command, opts: &JournalOptions) {
    for u in &opts.units {
        cmd.arg(format!("--unit={u}"));
    }
    if let Some(p) = &opts.priority {
        cmd.arg(format!("--priority={p}"));
    }
    if let Some(d) = &opts.directory {
        cmd.arg("--directory").arg(d);
    }
}

/// Runs journalctl until `stop`, restarting it (after the last durable
/// cursor) when it exits.
pub(crate) async fn run(
    opts: JournalOptions,
    data_dir: PathBuf,
    mut cursor: Option<String>,
    tx: mpsc::Sender<WriteRequest>,
    stop: CancellationToken,
) {
    loop {
        let why = follow_once(&opts, &data_dir, &mut cursor, &tx, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        note(
            &tx,
            format!("journal: journalctl stopped ({why}); starting it again in 5 s"),
        )
        .await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// One journalctl run; returns why it ended.
async fn follow_once(
    opts: &JournalOptions,
    data_dir: &Path,
    cursor: &mut Option<String>,
    tx: &mpsc::Sender<WriteRequest>,
    stop: &CancellationToken,
) -> String {
    let mut cmd = Command::new("journalctl");
    cmd.args(["--output=json", "--follow", "--no-pager", "--quiet"]);
    if let Some(c) = cursor.as_deref() {
        cmd.arg(format!("--after-cursor={c}"));
    }
    filters(&mut cmd, opts);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("cannot start journalctl: {e}"),
    };
    let Some(stdout) = child.stdout.take() else {
        return "journalctl has no stdout".into();
    };
    let mut lines = BufReader::with_capacity(1 << 16, stdout);
    let mut buf = Vec::new();
    loop {
        // The first entry waits; then whatever is ready joins its batch.
        let mut items = Vec::new();
        let mut last_cursor = None;
        loop {
            buf.clear();
            let read = if items.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return "stopping".into(),
                    r = read_line(&mut lines, &mut buf) => r,
                }
            } else {
                match tokio::time::timeout(
                    Duration::from_millis(20),
                    read_line(&mut lines, &mut buf),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            match read {
                Ok(0) => {
                    if items.is_empty() {
                        let status = child.wait().await;
                        return format!("journalctl exited: {status:?}");
                    }
                    break;
                }
                Ok(_) => {
                    if let Some((entries, c)) = entries(&buf) {
                        items.extend(entries.into_iter().map(Item::Record));
                        last_cursor = c;
                    }
                }
                Err(e) => return format!("reading journalctl failed: {e}"),
            }
            if items.len() >= BATCH {
                break;
            }
        }
        if items.is_empty() {
            continue;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx
            .send(WriteRequest {
                items,
                reply: Some(reply_tx),
            })
            .await
            .is_err()
        {
            return "the queue closed".into();
        }
        if let Ok(Ok(_)) = reply_rx.await
            && let Some(c) = last_cursor
        {
            save_cursor(data_dir, &c);
            *cursor = Some(c);
        }
    }
}

/// Reads one line (at most [`MAX_LINE`] bytes kept).
async fn read_line(
    r: &mut BufReader<tokio::process::ChildStdout>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let n = r.read_until(b'\n', buf).await?;
    buf.truncate(MAX_LINE);
    Ok(n)
}

/// Writes the cursor file (a temporary file renamed over it).
fn save_cursor(data_dir: &Path, cursor: &str) {
    let tmp = data_dir.join(format!("{CURSOR_FILE}.tmp"));
    if std::fs::write(&tmp, cursor).is_ok() {
        let _ = std::fs::rename(&tmp, data_dir.join(CURSOR_FILE));
    }
}

/// A journal field as text: a string, or an array of bytes (binary or
/// non-UTF-8 values) converted lossily.
fn field_text(v: &Value) -> Option<(String, bool)> {
    match v {
        Value::String(s) => Some((s.clone(), false)),
        Value::Array(bytes) => {
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            match String::from_utf8(raw) {
                Ok(s) => Some((s, false)),
                Err(e) => Some((String::from_utf8_lossy(e.as_bytes()).into_owned(), true)),
            }
        }
        _ => None,
    }
}

/// The queue entries of one journalctl JSON line, and its cursor.
pub(crate) fn entries(line: &[u8]) -> Option<(Vec<Vec<u8>>, Option<String>)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let obj = v.as_object()?;
    let (text, invalid_utf8) = obj.get("MESSAGE").and_then(field_text).unwrap_or_default();
    let mut fields = Map::new();
    for (key, name) in [
        ("_SYSTEMD_UNIT", "unit"),
        ("SYSLOG_IDENTIFIER", "identifier"),
        ("_HOSTNAME", "host"),
        ("_COMM", "comm"),
        ("__CURSOR", "cursor"),
    ] {
        if let Some((s, _)) = obj.get(key).and_then(field_text) {
            fields.insert(name.into(), s.into());
        }
    }
    let number = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
    };
    if let Some(p) = number("PRIORITY") {
        fields.insert("priority".into(), p.into());
    }
    if let Some(p) = number("_PID") {
        fields.insert("pid".into(), p.into());
    }
    if let Some(us) = number("__REALTIME_TIMESTAMP") {
        let ns = i64::try_from(us)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        fields.insert("time".into(), tally_proto::timefmt::format_nanos(ns).into());
    }
    let cursor = fields
        .get("cursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // journald priority 7 (debug) as verbosity 1, the rest 0.
    let v_level = number("PRIORITY").map(|p| u32::from(p >= 7));
    let fields = Value::Object(fields);
    let pieces = split_text(&text, TEXT_BUDGET);
    let numbered = pieces.len() > 1;
    let out = pieces
        .into_iter()
        .zip(1u32..)
        .map(|(piece, part)| {
            let mut e = json!({ "source": JOURNAL_SOURCE, "text": piece, "journal": fields });
            if let Some(v) = v_level {
                e["v"] = v.into();
            }
            if numbered {
                e["part"] = part.into();
            }
            if invalid_utf8 {
                e["invalid_utf8"] = true.into();
            }
            serde_json::to_vec(&e).unwrap_or_default()
        })
        .collect();
    Some((out, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_unit_priority_pid_host_and_cursor() {
        let line = br#"{"MESSAGE":"Accepted publickey","PRIORITY":"6","_SYSTEMD_UNIT":"ssh.service","_PID":"42","_HOSTNAME":"web1","SYSLOG_IDENTIFIER":"sshd","__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1765000000000000"}"#;
        let (e, cursor) = entries(line).unwrap();
        assert_eq!(cursor.as_deref(), Some("s=1;i=2"));
        let v: Value = serde_json::from_slice(&e[0]).unwrap();
        assert_eq!(v["source"], "journal");
        assert_eq!(v["text"], "Accepted publickey");
        assert_eq!(v["journal"]["unit"], "ssh.service");
        assert_eq!(v["journal"]["priority"], 6);
        assert_eq!(v["journal"]["pid"], 42);
        assert_eq!(v["journal"]["host"], "web1");
        assert_eq!(v["journal"]["time"], "2025-12-06T05:46:40Z");
        assert_eq!(v["v"], 0);
    }

    #[test]
    fn binary_messages_and_garbage_lines() {
        let (e, _) = entries(br#"{"MESSAGE":[104,105,255],"__CURSOR":"c"}"#).unwrap();
        let v: Value = serde_json::from_slice(&e[0]).unwrap();
        assert_eq!(v["invalid_utf8"], true);
        assert!(v["text"].as_str().unwrap().starts_with("hi"));
        assert!(entries(b"not json").is_none());
    }
}
