//! Uploading queued entries: `POST {server}/c/{collection}/{private-id}`.
//!
//! One batch in flight at a time, in queue order. A batch is a JSON array of
//! at most `batch_max_bytes` (256 KiB), sent `flush_delay` (2 s) after the
//! first pending entry, or at once when a full batch is waiting. The body is
//! zstd-compressed (with `Orig-Content-Length`) only when that makes it
//! smaller. 200 acknowledges the batch; 400 means "saved with errors, do not
//! resend": it is acknowledged too, with a warning. Anything else, and
//! transport errors, are retried after the integer (or HTTP-date)
//! `Retry-After`, or else after a random 30–60 s; every sleep is capped at
//! 5 minutes. A 200 whose answer says records were `discarded` (flow
//! records that reached the server after its tailnet's flow logging was
//! turned off: it checked the batch and kept only its batch record) is
//! final too, and noted once in the node's log.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::identity::redact;
use crate::queue::{Batch, Queue, QueueError};
use crate::writer::{SharedQueue, lock};

/// Most bytes of an error answer read for the log message.
const MAX_ERROR_BODY: usize = 4096;

/// Header with the time an upload attempt was sent (Unix ns, the node's
/// clock).
pub const SENT_AT_HEADER: &str = "Tally-Sent-At";

/// Counters of the uploader's work, for status display and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadStatus {
    /// Requests sent (or attempted).
    pub attempts: u64,
    /// Attempts that failed and will be retried.
    pub failures: u64,
    /// Entries the server acknowledged with 200 (counted once the
    /// acknowledgement is recorded in the queue).
    pub uploaded: u64,
    /// Entries the server saved with errors (400) and that are not resent.
    pub rejected: u64,
    /// Entries the server checked and did not store (flow records of a
    /// tailnet whose flow logging was turned off); not resent.
    pub discarded: u64,
    /// The last failure, private ID redacted.
    pub last_error: Option<String>,
}

/// How the uploader behaves. No `Debug`: `url` holds the private ID.
#[derive(Clone)]
pub(crate) struct UploadConfig {
    /// The full upload URL (secret: it holds the private ID).
    pub url: String,
    /// The URL with the private ID redacted, for messages.
    pub shown_url: String,
    /// The private ID's hex form, to redact it from messages.
    pub private_hex: String,
    /// Wait after the first pending entry before sending.
    pub flush_delay: Duration,
    /// Shortest retry wait without `Retry-After`.
    pub backoff_min: Duration,
    /// Longest retry wait without `Retry-After`.
    pub backoff_max: Duration,
    /// Cap of every wait.
    pub max_sleep: Duration,
    /// Largest uncompressed body.
    pub batch_max_bytes: usize,
    /// Drop a batch the server refuses with 403 instead of retrying it
    /// (flow records of a tailnet whose flow logging was turned off).
    pub drop_on_forbidden: bool,
}

/// The upload loop.
pub(crate) struct Uploader {
    /// The one HTTP client (keep-alive).
    pub client: reqwest::Client,
    /// Behaviour.
    pub cfg: UploadConfig,
    /// Where the entries come from.
    pub queue: SharedQueue,
    /// Progress counters.
    pub status: watch::Sender<UploadStatus>,
    /// Signs each batch (and keeps the batch chain), when set.
    pub chain: Option<crate::signing::Chain>,
    /// Waited on before the first send until the node is registered.
    pub registration: Option<watch::Receiver<crate::report::NodeSettings>>,
    /// The node's log, where records the server discarded are noted (the
    /// flow pipeline's uploader).
    pub node_log: Option<tokio::sync::mpsc::Sender<crate::writer::WriteRequest>>,
}

/// Builds the one HTTP client (keep-alive, rustls with the ring provider).
/// With `ca_cert`, only certificates issued by that CA (PEM) are trusted,
/// for servers with a private CA; otherwise the system's roots are.
pub(crate) fn http_client(
    ca_cert: Option<&std::path::Path>,
) -> Result<reqwest::Client, AgentError> {
    // Fails only when a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("tally-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        // The server closes connections idle for 30 s: drop them first, so
        // that a request never races the server's close.
        .pool_idle_timeout(Duration::from_secs(20));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            AgentError::Config(format!(
                "cannot read the CA certificate {}: {e}",
                path.display()
            ))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            AgentError::Config(format!(
                "{} is not a PEM certificate bundle: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(AgentError::Config(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| AgentError::Http(e.to_string()))
}

/// The server's `Retry-After`, as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The message of an error answer: its `error` member, or its text.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        text.chars().take(300).collect()
    }
}

/// A transport error's message with its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        let s = inner.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        source = inner.source();
    }
    msg
}

/// The start of an answer's body (at most about [`MAX_ERROR_BODY`] bytes).
async fn read_some(mut resp: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body
}

/// The zstd form of `body`, if it is smaller.
fn compress_if_smaller(body: &[u8]) -> Option<Vec<u8>> {
    zstd::bulk::compress(body, 3)
        .ok()
        .filter(|c| c.len() < body.len())
}

fn body_of(batch: &Batch) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.body_len);
    body.push(b'[');
    for (i, e) in batch.entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

/// The part of a 200 answer that says records were not stored.
#[derive(serde::Deserialize)]
struct Discarded {
    #[serde(default)]
    discarded: u64,
    #[serde(default)]
    reason: String,
}

/// What became of a batch.
enum Delivery {
    /// Acknowledged (200): drop it from the queue.
    Accepted,
    /// Acknowledged (200), but the server stored only the batch's record:
    /// drop it from the queue (this many entries were discarded).
    Discarded(u64),
    /// Saved with errors (400): drop it from the queue too.
    Rejected,
    /// The agent is stopping.
    Stopped,
}

impl Uploader {
    async fn with_queue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let queue = SharedQueue::clone(&self.queue);
        tokio::task::spawn_blocking(move || f(&mut lock(&queue)))
            .await
            .map_err(|e| AgentError::Task(format!("uploader: {e}")))?
            .map_err(AgentError::from)
    }

    fn jitter(&self) -> Duration {
        let (lo, hi) = (
            self.cfg.backoff_min,
            self.cfg.backoff_max.max(self.cfg.backoff_min),
        );
        rand::rng().random_range(lo..=hi)
    }

    /// Uploads until `stop`; `durable` changes whenever entries become durable.
    pub(crate) async fn run(
        self,
        mut durable: watch::Receiver<u64>,
        stop: CancellationToken,
    ) -> Result<(), AgentError> {
        if let Some(mut reg) = self.registration.clone() {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = reg.wait_for(|s| s.node_id.is_some()) => if r.is_err() { return Ok(()) },
            }
        }
        tracing::info!(url = %self.cfg.shown_url, "uploading logs");
        // A batch signed before a restart is resent first, byte for byte.
        if let Some(p) = self.chain.as_ref().and_then(crate::signing::Chain::pending) {
            let body = p.body_bytes();
            let delivery = self.deliver(&body, p.entries, &p.headers, &stop).await;
            if let Delivery::Stopped = delivery {
                return Ok(());
            }
            let end = p.end;
            self.with_queue(move |q| q.ack(end)).await?;
            if let Some(c) = &self.chain {
                c.delivered(&p)?;
            }
        }
        let full = self.cfg.batch_max_bytes as u64;
        loop {
            durable.borrow_and_update();
            let mut pending = self.with_queue(|q| Ok(q.pending_bytes())).await?;
            if pending == 0 {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    changed = durable.changed() => if changed.is_err() { return Ok(()) },
                }
                continue;
            }
            // Let entries gather, unless a full batch is waiting.
            let deadline = Instant::now() + self.cfg.flush_delay;
            while pending < full {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep_until(deadline) => break,
                    changed = durable.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        pending = self.with_queue(|q| Ok(q.pending_bytes())).await?;
                    }
                }
            }
            // Send batches while full ones are waiting.
            loop {
                let max = self.cfg.batch_max_bytes;
                let batch = self.with_queue(move |q| q.read_batch(max)).await?;
                let n = batch.entries.len() as u64;
                let end = batch.end;
                let mut pending = None;
                let delivery = if n > 0 {
                    let body = body_of(&batch);
                    let headers = match &self.chain {
                        Some(c) => {
                            let p = c.sign(&body, end, n)?;
                            let h = p.headers.clone();
                            pending = Some(p);
                            h
                        }
                        None => Vec::new(),
                    };
                    self.deliver(&body, n, &headers, &stop).await
                } else {
                    Delivery::Accepted
                };
                if let Delivery::Stopped = delivery {
                    return Ok(());
                }
                let (before, after) = self
                    .with_queue(move |q| {
                        let before = q.pending_bytes();
                        q.ack(end)?;
                        Ok((before, q.pending_bytes()))
                    })
                    .await?;
                if let (Some(c), Some(p)) = (&self.chain, &pending) {
                    c.delivered(p)?;
                }
                // Counted once the acknowledgement is on disk.
                self.status.send_modify(|s| match delivery {
                    Delivery::Rejected => s.rejected += n,
                    Delivery::Discarded(d) => s.discarded += d,
                    _ => s.uploaded += n,
                });
                if after >= before || after < full {
                    break;
                }
            }
        }
    }

    /// Notes in the log (and the node's log, once per batch) that the
    /// server discarded records of a batch.
    async fn note_discarded(&self, d: Discarded) {
        let text = if d.reason == "flow_logging_off" {
            format!(
                "{} flow records captured while flow logging was being turned off were discarded by the server",
                d.discarded
            )
        } else {
            format!(
                "{} records were discarded by the server ({})",
                d.discarded,
                d.reason.chars().take(100).collect::<String>()
            )
        };
        tracing::info!(url = %self.cfg.shown_url, "{text}");
        let Some(logs) = &self.node_log else { return };
        crate::writer::note(logs, text).await;
    }

    /// Sends one batch (`n` entries, with its signature `headers`) until
    /// the server takes it.
    async fn deliver(
        &self,
        body: &[u8],
        n: u64,
        headers: &[(String, String)],
        stop: &CancellationToken,
    ) -> Delivery {
        let compressed = compress_if_smaller(body);
        loop {
            self.status.send_modify(|s| s.attempts += 1);
            let mut req = self
                .client
                .post(&self.cfg.url)
                .header(CONTENT_TYPE, "application/json");
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            // When this attempt leaves (this node's clock): the server
            // measures the node's clock offset from the time in flight.
            req = req.header(SENT_AT_HEADER, tally_proto::timefmt::now_nanos());
            req = match &compressed {
                Some(c) => req
                    .header(CONTENT_ENCODING, "zstd")
                    .header("Orig-Content-Length", body.len())
                    .body(c.clone()),
                None => req.body(body.to_vec()),
            };
            let sent = tokio::select! {
                () = stop.cancelled() => return Delivery::Stopped,
                sent = req.send() => sent,
            };
            let (problem, wait) = match sent {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    // Reading the (small) answer lets the connection be reused.
                    let body = read_some(resp).await;
                    return match serde_json::from_slice::<Discarded>(&body) {
                        Ok(d) if d.discarded > 0 => {
                            let count = d.discarded.min(n);
                            self.note_discarded(d).await;
                            Delivery::Discarded(count)
                        }
                        _ => Delivery::Accepted,
                    };
                }
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(resp.headers());
                    let body = read_some(resp).await;
                    let msg = redact(&error_message(status, &body), &self.cfg.private_hex);
                    if status == StatusCode::FORBIDDEN && self.cfg.drop_on_forbidden {
                        tracing::warn!(
                            url = %self.cfg.shown_url,
                            "the server refused {n} entries and they are dropped: {msg}"
                        );
                        return Delivery::Rejected;
                    }
                    if status == StatusCode::BAD_REQUEST {
                        tracing::warn!(
                            url = %self.cfg.shown_url,
                            "the server saved {n} entries with errors and asked not to send them again: {msg}"
                        );
                        return Delivery::Rejected;
                    }
                    (format!("HTTP {status}: {msg}"), wait)
                }
                Err(e) => (redact(&describe(e), &self.cfg.private_hex), None),
            };
            let wait = wait
                .unwrap_or_else(|| self.jitter())
                .min(self.cfg.max_sleep);
            tracing::warn!(url = %self.cfg.shown_url, "upload failed: {problem}; retrying in {wait:?}");
            self.status.send_modify(|s| {
                s.failures += 1;
                s.last_error = Some(problem);
            });
            tokio::select! {
                () = stop.cancelled() => return Delivery::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn compresses_only_when_smaller() {
        assert_eq!(compress_if_smaller(br#"[{"a":1}]"#), None);
        let body = format!("[{}]", vec![r#"{"text":"same old line"}"#; 100].join(","));
        let c = compress_if_smaller(body.as_bytes()).unwrap();
        assert!(c.len() < body.len());
        assert_eq!(zstd::stream::decode_all(&c[..]).unwrap(), body.as_bytes());
    }

    #[test]
    fn error_message_prefers_the_error_member() {
        assert_eq!(
            error_message(
                StatusCode::FORBIDDEN,
                br#"{"error":"invalid collection name"}"#
            ),
            "invalid collection name"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"  upstream down\n"),
            "upstream down"
        );
        assert_eq!(
            error_message(StatusCode::SERVICE_UNAVAILABLE, b""),
            "Service Unavailable"
        );
    }
}
