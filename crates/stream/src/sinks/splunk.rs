//! Splunk HTTP Event Collector (and Cribl's HEC-compatible source): the
//! URL ends in `/services/collector/event`; `Authorization: Splunk
//! <token>`; several JSON envelopes (`time`, `host`, `source`,
//! `sourcetype`, `event`) concatenated in one body; success is a 200 with
//! `{"text":"Success","code":0}`.

use super::http::Http;
use super::{Delivery, Entry, SinkError, chunks};
use crate::config::LogType;

/// HEC's default `max_content_length` is larger; bodies stay well under.
pub const MAX_BODY: usize = 1 << 20;

/// A HEC endpoint.
pub struct Splunk {
    http: Http,
    token: String,
    log_type: LogType,
}

impl Splunk {
    /// An endpoint with its token, for one log type.
    pub fn new(http: Http, token: String, log_type: LogType) -> Self {
        Self {
            http,
            token,
            log_type,
        }
    }

    /// One envelope per entry.
    fn envelope(&self, e: &Entry) -> Vec<u8> {
        let event: serde_json::Value = serde_json::from_slice(&e.body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&e.body).into()));
        let time = e.time as f64 / 1e9;
        let v = serde_json::json!({
            "time": (time * 1000.0).round() / 1000.0,
            "host": "tally",
            "source": "tally",
            "sourcetype": format!("tailscale:{}", self.log_type.name()),
            "event": event,
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Delivers entries in bodies of at most [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        let items: Vec<Vec<u8>> = entries.iter().map(|e| self.envelope(e)).collect();
        let mut done = Delivery::default();
        let auth = format!("Splunk {}", self.token);
        for r in chunks(&items, MAX_BODY, 1) {
            let mut body = Vec::new();
            for it in &items[r] {
                body.extend_from_slice(it);
                body.push(b'\n');
            }
            let sent = self
                .http
                .post(
                    body,
                    "application/json",
                    &[("authorization", auth.clone())],
                    check_answer,
                    done,
                )
                .await?;
            done.requests += 1;
            done.bytes += sent;
            done.max_body = done.max_body.max(sent);
        }
        Ok(done)
    }
}

/// A 200 must say `code` 0.
fn check_answer(body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        "its answer is not HEC's JSON (is the url .../services/collector/event?)".to_owned()
    })?;
    match v.get("code").and_then(|c| c.as_i64()) {
        Some(0) => Ok(()),
        _ => Err(format!("said {v}")),
    }
}
