//! Helpers shared by the agent tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tally_agent::{Agent, AgentConfig, LocalLog, recent_logs};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest wait for anything the agent should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A configuration with short delays, uploading nothing.
pub fn config(data_dir: &Path) -> AgentConfig {
    let mut c = AgentConfig::new(data_dir);
    c.no_logs_no_support = true;
    c.poll_interval = Duration::from_millis(10);
    c.fsync_interval = Duration::from_millis(1);
    c.flush_delay = Duration::from_millis(50);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(40);
    c
}

/// Waits until the agent has made entry `seq` durable.
pub async fn wait_durable(agent: &Agent, seq: u64) {
    let mut rx = agent.durable_seq();
    tokio::time::timeout(PATIENCE, rx.wait_for(|s| *s >= seq))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "entry {seq} never became durable (last: {})",
                *agent.durable_seq().borrow()
            )
        })
        .unwrap();
}

/// Every entry in the local queue.
pub fn all_logs(data_dir: &Path) -> Vec<LocalLog> {
    recent_logs(data_dir, usize::MAX).unwrap()
}

/// The texts of the queued entries from `source`.
pub fn texts_from(data_dir: &Path, source: &str) -> Vec<String> {
    all_logs(data_dir)
        .into_iter()
        .filter(|l| l.source() == Some(source))
        .map(|l| l.text().to_owned())
        .collect()
}

/// Appends `text` to the file at `path`.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `prefix1\nprefix2\n...` for `range`.
pub fn numbered(prefix: &str, range: std::ops::Range<u32>) -> (String, Vec<String>) {
    let lines: Vec<String> = range.map(|i| format!("{prefix}{i}")).collect();
    let text = lines.iter().map(|l| format!("{l}\n")).collect();
    (text, lines)
}

/// Sends raw request lines over one socket connection and returns the
/// answers, in order.
pub async fn raw_requests(socket: PathBuf, lines: Vec<String>) -> Vec<Value> {
    let stream = UnixStream::connect(&socket).await.unwrap();
    let (r, mut w) = stream.into_split();
    let n = lines.len();
    let writer = tokio::spawn(async move {
        for l in lines {
            w.write_all(l.as_bytes()).await.unwrap();
            w.write_all(b"\n").await.unwrap();
        }
        w
    });
    let mut reader = BufReader::new(r).lines();
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let line = tokio::time::timeout(PATIENCE, reader.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        answers.push(serde_json::from_str(&line).unwrap());
    }
    drop(writer.await.unwrap());
    answers
}
