//! One Datadog log per entry.

use crate::sinks::Entry;
use serde::Serialize;
use std::borrow::Cow;

/// A log as the intake takes it.
#[derive(Serialize)]
struct Log<'a> {
    ddsource: &'static str,
    service: &'static str,
    ddtags: &'a str,
    hostname: &'static str,
    message: Cow<'a, str>,
    timestamp: i64,
}

/// The entry as a log: its JSON text as `message`, its receive time in
/// Unix milliseconds as `timestamp`.
pub(super) fn log(e: &Entry, ddtags: &str) -> Vec<u8> {
    serde_json::to_vec(&Log {
        ddsource: "tally",
        service: "tally",
        ddtags,
        hostname: "tally",
        message: String::from_utf8_lossy(&e.body),
        timestamp: e.time.div_euclid(1_000_000),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_entry_is_a_log_with_its_json_as_message() {
        let e = crate::sinks::Entry {
            position: 1,
            time: 1_700_000_000_123_456_789,
            body: br#"{"a":1}"#.to_vec(),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&super::log(&e, "logtype:network")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "ddsource": "tally", "service": "tally", "ddtags": "logtype:network",
                "hostname": "tally", "message": "{\"a\":1}", "timestamp": 1_700_000_000_123i64,
            })
        );
    }
}
