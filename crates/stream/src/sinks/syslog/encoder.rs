//! One entry as an RFC 5424 message.

use crate::config::LogType;
use crate::sinks::Entry;
use serde_json::Value;
use std::fmt::Write;

/// The structured-data ID: `tally` at the documentation enterprise
/// number (RFC 5612).
pub const SD_ID: &str = "tally@32473";

/// Facility 13: log audit.
const FACILITY: u8 = 13;

/// The syslog severity of an entry: an alert's own, informational else.
fn severity(log_type: LogType, v: &Value) -> u8 {
    if log_type != LogType::Alerts {
        return 6;
    }
    match v.get("severity").and_then(Value::as_str).unwrap_or("") {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        "low" => 5,
        _ => 6,
    }
}

/// An SD-NAME: 1 to 32 printable US-ASCII characters except `=`, space,
/// `]` and `"`.
fn sd_name(key: &str) -> Option<String> {
    let n: String = key
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"'))
        .take(32)
        .collect();
    (!n.is_empty()).then_some(n)
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped.
fn sd_value(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// RFC 3339 with at most 6 fraction digits (RFC 5424's TIME-SECFRAC).
fn timestamp(nanos: i64) -> String {
    let t = tally_proto::timefmt::format_nanos(nanos);
    match (t.find('.'), t.strip_suffix('Z')) {
        (Some(dot), Some(body)) if body.len() > dot + 7 => format!("{}Z", &body[..dot + 7]),
        _ => t,
    }
}

/// The message (without its octet count) for `entry`.
pub fn message(log_type: LogType, entry: &Entry) -> Vec<u8> {
    let v: Value = serde_json::from_slice(&entry.body).unwrap_or(Value::Null);
    let pri = FACILITY * 8 + severity(log_type, &v);
    let time = timestamp(entry.time);
    let mut sd = format!(
        "[{SD_ID} logType=\"{}\" position=\"{}\"",
        log_type.name(),
        entry.position
    );
    if let Value::Object(m) = &v {
        for (k, val) in m {
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            let Some(name) = sd_name(k) else { continue };
            if name == "logType" || name == "position" {
                continue;
            }
            let _ = write!(sd, " {name}=\"");
            sd_value(&mut sd, &text);
            sd.push('"');
        }
    }
    sd.push(']');
    let mut out = format!("<{pri}>1 {time} tally tally - {} {sd} ", log_type.name()).into_bytes();
    if v.is_null() {
        out.extend_from_slice(&entry.body);
    } else {
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_rfc5424_fields_and_escaped_structured_data() {
        let e = Entry {
            position: 42,
            time: 1_700_000_000_123_456_789,
            body: br#"{"action":"CREATE","note":"a \"quoted\" ]x\\","n":3,"nested":{"a":1}}"#
                .to_vec(),
        };
        let m = String::from_utf8(message(LogType::Configuration, &e)).expect("utf8");
        assert!(
            m.starts_with("<110>1 2023-11-14T22:13:20.123456Z tally tally - configuration [tally@32473 logType=\"configuration\" position=\"42\""),
            "{m}"
        );
        assert!(m.contains(r#"note="a \"quoted\" \]x\\""#), "{m}");
        assert!(m.contains(r#" n="3""#), "{m}");
        assert!(!m.contains("nested=\""), "{m}");
        let json = m.split_once("] ").expect("msg").1;
        let v: Value = serde_json::from_str(json).expect("json msg");
        assert_eq!(v["nested"]["a"], 1);
    }

    #[test]
    fn alerts_carry_their_severity() {
        let e = Entry {
            position: 1,
            time: 0,
            body: br#"{"severity":"high"}"#.to_vec(),
        };
        assert!(message(LogType::Alerts, &e).starts_with(b"<107>1 "));
    }
}
