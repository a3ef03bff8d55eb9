//! The session recorder that tailscaled's SSH server uploads to (issue
//! 16), on its own listener (`--recorder-listen`), one port serving HTTP/2
//! with prior knowledge (h2c) and HTTP/1.1 as tailscaled expects:
//!
//! - `HEAD /v2/record`: 200 (tailscaled uses v2 only when this answers 200
//!   over HTTP/2).
//! - `POST /v2/record`: a streaming body (an asciicast v2 header line,
//!   then `[t, "o", data]` lines), answered 200 at once with a stream of
//!   `{"ack": <bytes stored>}` lines: after each stored chunk and at least
//!   every [`ACK_EVERY`], also when idle (tailscaled gives up after 30 s
//!   without one), and a final `{"error": ...}` when the recording was
//!   refused midway.
//! - `POST /record`: the HTTP/1.1 fallback (`Expect: 100-continue`,
//!   answered by hyper when the body is first read): 200 once the body is
//!   stored.
//!
//! Who may record: a connection from an address of a registered node
//! (the recording belongs to that node's tailnet), or from a CIDR of
//! `--recorder-allow` (the operator's tailnet); with `--recorder-token`, a
//! request must also carry `Authorization: Bearer <token>`. Anything else
//! is refused (403) and logged.
//!
//! Storage: chunks of whole lines (at most [`CHUNK_BYTES`]) are records of
//! the `recordings` collection, stored durably before they are
//! acknowledged, so a connection that breaks keeps what was acknowledged;
//! a last record says whether the recording ended or was cut short.
//! Every record is a leaf of the transparency log, so a recording edited
//! on disk afterwards is detected by `tally verify`.

use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::time::Duration;
use tally_proto::collection;
use tally_store::{NewRecord, Owner, kind};

/// Most bytes of whole lines in one stored chunk.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Longest line accepted (an asciicast event); longer ones end the
/// recording with an error (what was acknowledged stays).
pub const MAX_LINE: usize = 1 << 20;
/// Longest time between acknowledgements.
pub const ACK_EVERY: Duration = Duration::from_secs(5);
/// Longest time output waits before it is stored.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Who may record.
#[derive(Debug, Clone, Default)]
pub struct RecorderConfig {
    /// Address ranges allowed besides the tailnets' node addresses.
    pub allow: Vec<ipnet::IpNet>,
    /// A bearer token every request must carry, when set.
    pub token: Option<String>,
}

/// The recorder's routes.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/v2/record", axum::routing::head(probe).post(record_v2))
        .route("/record", axum::routing::post(record_v1))
        .with_state(state)
}

/// The tailnet a connection records into, or why it may not record.
async fn tailnet_of(
    state: &AppState,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<String, (StatusCode, String)> {
    let config = &state.config.recorder;
    if let Some(want) = &config.token {
        let sent = crate::api::auth::key_from_headers(headers).unwrap_or_default();
        if sent != *want {
            return Err((
                StatusCode::UNAUTHORIZED,
                "the recorder needs its token (Authorization: Bearer ...)".into(),
            ));
        }
    }
    let rows = state.control.agent_view_rows().await.map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the control database: {e}"),
        )
    })?;
    for [tailnet, _, _, addresses, _] in rows {
        let list: Vec<String> = serde_json::from_str(&addresses).unwrap_or_default();
        if list
            .iter()
            .filter_map(|a| crate::control::nodes::host_ip(a))
            .any(|ip| ip == peer)
        {
            return Ok(tailnet);
        }
    }
    if config.allow.iter().any(|n| n.contains(&peer)) {
        return Ok(state.operator_tailnet.clone());
    }
    Err((
        StatusCode::FORBIDDEN,
        format!(
            "{peer} is not a registered node's address nor in --recorder-allow; recording refused"
        ),
    ))
}

fn refused(peer: IpAddr, status: StatusCode, why: String) -> Response {
    tracing::warn!(%peer, "a recording was refused: {why}");
    (status, why).into_response()
}

/// `HEAD /v2/record`.
async fn probe(
    State(state): State<AppState>,
    ConnectInfo(crate::api::ClientAddr(peer)): ConnectInfo<crate::api::ClientAddr>,
    headers: HeaderMap,
) -> Response {
    match tailnet_of(&state, peer.ip(), &headers).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err((s, why)) => refused(peer.ip(), s, why),
    }
}

/// One recording being stored.
struct Writer {
    state: AppState,
    tailnet: String,
    id: String,
    proc_id: u32,
    seq: u64,
    /// Bytes stored (acknowledged).
    stored: u64,
    /// Whole lines not yet stored.
    pending: Vec<u8>,
    /// The part of a line not yet ended.
    partial: Vec<u8>,
    header_seen: bool,
}

impl Writer {
    fn new(state: AppState, tailnet: String) -> Self {
        Self {
            state,
            tailnet,
            id: format!("r{}", hex::encode(rand::random::<[u8; 10]>())),
            proc_id: rand::random(),
            seq: 0,
            stored: 0,
            pending: Vec::new(),
            partial: Vec::new(),
            header_seen: false,
        }
    }

    /// Takes bytes of the body; Err ends the recording with a reason.
    fn take(&mut self, mut data: &[u8]) -> Result<(), String> {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&data[..=nl]);
            data = &data[nl + 1..];
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line)?;
            self.pending.extend_from_slice(&line);
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() > MAX_LINE {
            return Err(format!("a line longer than {MAX_LINE} bytes"));
        }
        Ok(())
    }

    /// The first line must be an asciicast v2 header; the others events.
    fn check_line(&mut self, line: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(line)
            .map_err(|_| "the body is not asciicast (not UTF-8)".to_owned())?
            .trim_end();
        if text.is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("the body is not asciicast (a line is not JSON: {e})"))?;
        if !self.header_seen {
            if v.get("version") != Some(&json!(2)) {
                return Err("the body is not asciicast v2 (no header with version 2)".into());
            }
            self.header_seen = true;
            return Ok(());
        }
        let ok = v.as_array().is_some_and(|a| {
            a.len() == 3 && a[0].is_number() && a[1].is_string() && a[2].is_string()
        });
        if !ok {
            return Err(format!(
                "the body is not asciicast (an event is not [time, code, data]: {})",
                crate::control::truncate(text, 80)
            ));
        }
        Ok(())
    }

    /// Stores the pending whole lines (if any) as one chunk.
    async fn flush(&mut self) -> Result<(), String> {
        while !self.pending.is_empty() {
            let cut = if self.pending.len() <= CHUNK_BYTES {
                self.pending.len()
            } else {
                // At a line end within the limit, or the whole first line.
                self.pending[..CHUNK_BYTES]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or_else(
                        || {
                            self.pending
                                .iter()
                                .position(|b| *b == b'\n')
                                .map_or(self.pending.len(), |p| p + 1)
                        },
                        |p| p + 1,
                    )
            };
            let data: Vec<u8> = self.pending.drain(..cut).collect();
            let body = json!({
                "recording": self.id,
                "offset": self.stored,
                "data": String::from_utf8_lossy(&data),
            });
            self.append(body).await?;
            self.stored += data.len() as u64;
        }
        Ok(())
    }

    /// Stores one record, numbered (`seq`, from 1) in the recording.
    async fn append(&mut self, mut body: Value) -> Result<(), String> {
        self.seq += 1;
        body["seq"] = json!(self.seq);
        let rec = NewRecord {
            time: tally_proto::timefmt::now_nanos(),
            collection: collection::RECORDINGS.to_owned(),
            owner: Owner::tailnet(self.tailnet.clone()),
            instance: collection::RECORDINGS_WRITER,
            identity: Some((self.proc_id, self.seq)),
            client_time: None,
            kind: kind::LOG,
            body: body.to_string().into_bytes(),
        };
        self.state
            .store
            .append(vec![rec])
            .await
            .map(|_| ())
            .map_err(|e| format!("storing the recording: {e}"))
    }

    /// Stores what is left and the end record.
    async fn finish(&mut self, complete: bool, reason: &str) -> Result<(), String> {
        if complete && !self.partial.is_empty() {
            // A last line without its newline.
            let mut line = std::mem::take(&mut self.partial);
            line.push(b'\n');
            self.check_line(&line)?;
            self.pending.extend_from_slice(&line);
        }
        self.flush().await?;
        let end = json!({
            "recording": self.id,
            "end": true,
            "complete": complete,
            "bytes": self.stored,
            "reason": reason,
        });
        self.append(end).await
    }
}

fn ack(n: u64) -> Bytes {
    Bytes::from(format!("{{\"ack\":{n}}}\n"))
}

/// Reads `body` into `w`, calling `acked` after each stored chunk and
/// every [`ACK_EVERY`]; returns whether it ended whole, and why not.
async fn pump(
    mut body: Body,
    w: &mut Writer,
    acked: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), (bool, String)> {
    let mut ack_tick = tokio::time::interval(ACK_EVERY);
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                None => return Ok(()),
                Some(Err(e)) => return Err((false, format!("the connection broke: {e}"))),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        w.take(&data).map_err(|e| (true, e))?;
                        if w.pending.len() >= CHUNK_BYTES {
                            w.flush().await.map_err(|e| (true, e))?;
                            let _ = acked.try_send(ack(w.stored));
                        }
                    }
                }
            },
            _ = flush_tick.tick() => {
                if !w.pending.is_empty() {
                    w.flush().await.map_err(|e| (true, e))?;
                    let _ = acked.try_send(ack(w.stored));
                }
            }
            _ = ack_tick.tick() => {
                let _ = acked.try_send(ack(w.stored));
            }
        }
    }
}

/// Receives a whole recording into `w` (acknowledging through `acked`)
/// and stores its end; Err says why it was cut short, and whether the
/// client should be told (it sent something wrong).
async fn receive(
    body: Body,
    w: &mut Writer,
    acked: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), (bool, String)> {
    let end = pump(body, w, acked).await;
    let (complete, reason) = match &end {
        Ok(()) => (true, String::new()),
        Err((_, why)) => (false, why.clone()),
    };
    if let Err(e) = w.finish(complete, &reason).await {
        tracing::error!(recording = %w.id, "{e}");
        return Err((true, e));
    }
    match &end {
        Ok(()) => tracing::info!(recording = %w.id, bytes = w.stored, "recording ended"),
        Err((_, why)) => tracing::warn!(recording = %w.id, "recording cut short: {why}"),
    }
    end
}

/// `POST /v2/record`.
async fn record_v2(
    State(state): State<AppState>,
    ConnectInfo(crate::api::ClientAddr(peer)): ConnectInfo<crate::api::ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tailnet = match tailnet_of(&state, peer.ip(), &headers).await {
        Ok(t) => t,
        Err((s, why)) => return refused(peer.ip(), s, why),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut w = Writer::new(state, tailnet);
    tracing::info!(recording = %w.id, %peer, "recording started");
    tokio::spawn(async move {
        let end = receive(body, &mut w, &tx).await;
        let _ = tx.send(ack(w.stored)).await;
        if let Err((true, why)) = end {
            let _ = tx
                .send(Bytes::from(format!("{}\n", json!({ "error": why }))))
                .await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `POST /record` (HTTP/1.1, `Expect: 100-continue`): 200 once stored.
async fn record_v1(
    State(state): State<AppState>,
    ConnectInfo(crate::api::ClientAddr(peer)): ConnectInfo<crate::api::ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tailnet = match tailnet_of(&state, peer.ip(), &headers).await {
        Ok(t) => t,
        Err((s, why)) => return refused(peer.ip(), s, why),
    };
    let (tx, _rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut w = Writer::new(state, tailnet);
    match receive(body, &mut w, &tx).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err((_, why)) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}
