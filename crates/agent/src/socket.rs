//! The local socket `<data-dir>/agent.sock`, through which `tally agent log`
//! and scripts log.
//!
//! Protocol: one request per line, either a JSON object
//! `{"text":"...","v":N}` (`v` optional; the text may hold newlines) or plain
//! text (a `[vN] ` prefix sets the level). Each request is answered with one
//! line once its entries are fsynced in the queue:
//! `{"ok":true,"proc_seq":[...]}` or `{"ok":false,"error":"..."}`.
//! For example: `echo 'backup done' | socat - UNIX-CONNECT:<data-dir>/agent.sock`.
//!
//! Session recordings (`tally record`) use two more requests:
//! `{"hello":"record"}`, answered `{"ok":true,"server","node","nodeId",
//! "instance"}` when this agent uploads recordings (it has a server and is a
//! registered node) or `{"ok":false,"error"}` saying why not; and
//! `{"records":[{...},...]}`, recording chunks and end records queued in
//! the recordings' disk queue (`<data-dir>/recording-queue/`) and uploaded
//! to the `recordings` collection, answered like a log line once fsynced.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::entry::{Level, make_lines, message_lines};
use crate::error::AgentError;
use crate::writer::{Item, WriteRequest};

/// Name of the socket inside the data directory.
pub const SOCKET_FILE: &str = "agent.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 4 << 20;
/// How long a client waits for the agent's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Source name of entries logged through the socket.
const SOURCE: &str = "cli";

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    proc_seq: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What the agent tells `tally record` (`{"hello":"record"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingHello {
    /// The server recordings are uploaded to.
    pub server: String,
    /// The node's hostname, as reported to the server.
    pub node: String,
    /// The node's ID, once registered.
    #[serde(default)]
    pub node_id: String,
    /// The agent's public ID (hex).
    pub instance: String,
}

/// Where socket requests go.
#[derive(Clone)]
pub(crate) struct Targets {
    /// The node log's queue.
    pub logs: mpsc::Sender<WriteRequest>,
    /// The recordings' queue, or why this agent takes no recordings.
    pub recordings: Result<(mpsc::Sender<WriteRequest>, RecordingHello), String>,
    /// The data directory (its `node-id` file names the node once registered).
    pub data_dir: PathBuf,
}

/// Longest list of records in one request.
const MAX_RECORDS: usize = 256;

/// Why logging through the agent's socket failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Nothing listens on the socket.
    #[error("no agent is listening on {path}; start it with `tally agent --server URL`")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason (permissions, ...).
    #[error("cannot connect to the agent at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The conversation broke off.
    #[error("talking to the agent at {path} failed: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// No answer in time.
    #[error("the agent at {path} did not confirm within {} s", CLIENT_TIMEOUT.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
    },
    /// The agent answered with an error.
    #[error("the agent could not log the message: {0}")]
    Refused(String),
    /// The agent's answer could not be read.
    #[error("the agent at {path} sent an unreadable answer")]
    BadReply {
        /// The socket path.
        path: PathBuf,
    },
}

/// What the agent answered to a logged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReceipt {
    /// The `proc_seq` of each entry written (several for a message split in
    /// parts).
    pub proc_seq: Vec<u64>,
}

/// A connection to the agent for one recording (`tally record`): asks
/// whether the agent takes recordings, then queues records one request at a
/// time, each answered once fsynced.
#[derive(Debug)]
pub struct RecordingClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

async fn connect(path: &Path) -> Result<UnixStream, SocketError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => SocketError::NotRunning {
                path: path.to_owned(),
            },
            _ => SocketError::Connect {
                path: path.to_owned(),
                source,
            },
        })
}

impl RecordingClient {
    /// Connects to the agent running with `data_dir` and asks whether it
    /// uploads recordings ([`SocketError::Refused`] says why not).
    pub async fn connect(data_dir: &Path) -> Result<(Self, RecordingHello), SocketError> {
        let path = data_dir.join(SOCKET_FILE);
        let stream = connect(&path).await?;
        let (r, w) = stream.into_split();
        let mut client = Self {
            path,
            reader: BufReader::new(r),
            writer: w,
        };
        let answer = client
            .exchange(&serde_json::json!({ "hello": "record" }))
            .await?;
        let hello: RecordingHello =
            serde_json::from_value(answer).map_err(|_| SocketError::BadReply {
                path: client.path.clone(),
            })?;
        Ok((client, hello))
    }

    /// Queues `records` (recording chunks and end records, in order);
    /// returns once they are fsynced in the agent's recordings queue.
    pub async fn queue(&mut self, records: &[serde_json::Value]) -> Result<(), SocketError> {
        self.exchange(&serde_json::json!({ "records": records }))
            .await
            .map(|_| ())
    }

    async fn exchange(
        &mut self,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, SocketError> {
        let path = self.path.clone();
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        let exchange = async {
            self.writer.write_all(&line).await?;
            let mut answer = Vec::new();
            (&mut self.reader)
                .take(64 * 1024)
                .read_until(b'\n', &mut answer)
                .await?;
            Ok::<_, io::Error>(answer)
        };
        let answer = await_answer(&path, exchange).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| SocketError::BadReply { path })?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(SocketError::Refused(
                v["error"].as_str().unwrap_or_default().to_owned(),
            ))
        }
    }
}

/// The agent's one-line answer to a request, within [`CLIENT_TIMEOUT`];
/// an empty answer means the agent closed the connection (stopped?).
async fn await_answer(
    path: &Path,
    exchange: impl std::future::Future<Output = io::Result<Vec<u8>>>,
) -> Result<Vec<u8>, SocketError> {
    let answer = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| SocketError::Timeout {
            path: path.to_owned(),
        })?
        .map_err(|source| SocketError::Io {
            path: path.to_owned(),
            source,
        })?;
    if answer.is_empty() {
        return Err(SocketError::Io {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without answering (stopped? `tally agent` must be running)",
            ),
        });
    }
    Ok(answer)
}

/// Logs `text` through the agent running with `data_dir`, at verbosity
/// `level`. Returns once the entry is fsynced in the agent's queue.
pub async fn log_via_socket(
    data_dir: &Path,
    text: &str,
    level: Option<u32>,
) -> Result<LogReceipt, SocketError> {
    let path = data_dir.join(SOCKET_FILE);
    let stream = connect(&path).await?;
    let mut line = serde_json::to_vec(&Request {
        text: text.to_owned(),
        v: level,
    })
    .map_err(|_| SocketError::BadReply { path: path.clone() })?;
    line.push(b'\n');
    let exchange = async {
        let (r, mut w) = stream.into_split();
        w.write_all(&line).await?;
        w.shutdown().await?;
        let mut answer = Vec::new();
        BufReader::new(r)
            .take(64 * 1024)
            .read_until(b'\n', &mut answer)
            .await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = await_answer(&path, exchange).await?;
    let reply: Reply =
        serde_json::from_slice(&answer).map_err(|_| SocketError::BadReply { path })?;
    if reply.ok {
        Ok(LogReceipt {
            proc_seq: reply.proc_seq,
        })
    } else {
        Err(SocketError::Refused(reply.error.unwrap_or_default()))
    }
}

/// Binds the socket (mode 0600), replacing a stale one: the caller holds
/// the data directory's lock, so no other agent uses it.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(AgentError::io("remove stale socket", path)(e));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(AgentError::io("listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(AgentError::io("set permissions of", path))?;
    Ok(listener)
}

/// Serves clients until `stop`; then waits for requests in progress.
pub(crate) async fn serve(listener: UnixListener, tx: Targets, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(handle(stream, tx.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!("cannot accept a connection on the agent socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

async fn handle(stream: UnixStream, tx: Targets, stop: CancellationToken) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = limited.read_until(b'\n', &mut line) => read,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = if line.len() > MAX_REQUEST {
            Answer::Log(Reply {
                error: Some(format!("request longer than {MAX_REQUEST} bytes")),
                ..Reply::default()
            })
        } else {
            match recording_request(&line) {
                Some(v) => Answer::Other(recording(v, &tx).await),
                None => Answer::Log(submit(&line, &tx.logs).await),
            }
        };
        let too_long = line.len() > MAX_REQUEST;
        let mut out = match reply {
            Answer::Log(reply) => serde_json::to_vec(&reply),
            Answer::Other(v) => serde_json::to_vec(&v),
        }
        .unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        if w.write_all(&out).await.is_err() || too_long {
            return;
        }
    }
}

/// An answer to one request.
enum Answer {
    Log(Reply),
    Other(serde_json::Value),
}

/// The request, when it is one of `tally record`'s.
fn recording_request(line: &[u8]) -> Option<serde_json::Value> {
    if line.first() != Some(&b'{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    (v.get("hello").is_some() || v.get("records").is_some()).then_some(v)
}

fn refusal(error: String) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": error })
}

/// Answers `{"hello":"record"}` and queues `{"records":[...]}`.
async fn recording(v: serde_json::Value, tx: &Targets) -> serde_json::Value {
    let (queue, hello) = match &tx.recordings {
        Ok(r) => r,
        Err(why) => return refusal(why.clone()),
    };
    if v.get("hello").is_some() {
        let mut hello = hello.clone();
        if let Ok(id) = std::fs::read_to_string(tx.data_dir.join(crate::NODE_ID_FILE)) {
            hello.node_id = id.trim().to_owned();
        }
        let mut answer = serde_json::to_value(&hello).unwrap_or_default();
        answer["ok"] = true.into();
        return answer;
    }
    let Some(records) = v["records"].as_array() else {
        return refusal("\"records\" must be a list of recording records".into());
    };
    if records.len() > MAX_RECORDS || records.iter().any(|r| !r.is_object()) {
        return refusal(format!(
            "\"records\" must be a list of at most {MAX_RECORDS} JSON objects"
        ));
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    let req = WriteRequest {
        items: records
            .iter()
            .map(|r| Item::Record(r.to_string().into_bytes()))
            .collect(),
        reply: Some(reply_tx),
    };
    if queue.send(req).await.is_err() {
        return refusal("the agent is stopping".into());
    }
    match reply_rx.await {
        Ok(Ok(seqs)) => serde_json::json!({ "ok": true, "proc_seq": seqs }),
        Ok(Err(e)) => refusal(e),
        Err(_) => refusal("the agent is stopping".into()),
    }
}

async fn submit(line: &[u8], tx: &mpsc::Sender<WriteRequest>) -> Reply {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let source: Arc<str> = Arc::from(SOURCE);
    let lines = match line.first() {
        Some(b'{') => match serde_json::from_slice::<Request>(line) {
            Ok(req) => {
                let level = if req.v.is_some() {
                    Level::Fixed(req.v)
                } else {
                    Level::FromPrefix
                };
                message_lines(&req.text, &source, level)
            }
            Err(_) => make_lines(
                line,
                &source,
                Level::FromPrefix,
                0,
                false,
                tally_proto::timefmt::now_nanos(),
            ),
        },
        _ => make_lines(
            line,
            &source,
            Level::FromPrefix,
            0,
            false,
            tally_proto::timefmt::now_nanos(),
        ),
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let req = WriteRequest {
        items: lines.into_iter().map(Item::Line).collect(),
        reply: Some(reply_tx),
    };
    let stopped = || Reply {
        error: Some("the agent is stopping".into()),
        ..Reply::default()
    };
    if tx.send(req).await.is_err() {
        return stopped();
    }
    match reply_rx.await {
        Ok(Ok(proc_seq)) => Reply {
            ok: true,
            proc_seq,
            error: None,
        },
        Ok(Err(error)) => Reply {
            error: Some(error),
            ..Reply::default()
        },
        Err(_) => stopped(),
    }
}
