//! HEC's event envelope, and its answer.

use crate::config::LogType;
use crate::sinks::{Entry, json};

/// One envelope's fields.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    time: f64,
    host: &'a str,
    source: &'a str,
    sourcetype: String,
    event: Box<serde_json::value::RawValue>,
}

/// One envelope: `time` (Unix seconds, ms precision), `host` and `source`
/// `tally`, `sourcetype` `tailscale:<log type>`, `event` the entry as
/// stored (spliced in, not parsed and re-encoded: [`json::raw`]; a string
/// when it is not JSON).
pub(super) fn envelope(e: &Entry, log_type: LogType) -> Vec<u8> {
    let time = e.time as f64 / 1e9;
    let v = Envelope {
        time: (time * 1000.0).round() / 1000.0,
        host: "tally",
        source: "tally",
        sourcetype: format!("tailscale:{}", log_type.name()),
        event: json::raw(e),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A 200 must say `code` 0.
pub(super) fn check_answer(body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        "its answer is not HEC's JSON (is the url .../services/collector/event?)".to_owned()
    })?;
    match v.get("code").and_then(|c| c.as_i64()) {
        Some(0) => Ok(()),
        _ => Err(format!("said {v}")),
    }
}
