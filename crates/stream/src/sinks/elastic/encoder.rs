//! `_bulk` lines.

use crate::sinks::{Entry, json};

/// `{"create":{"_id":"<position>"}}` (data streams take only `create`;
/// the store position as `_id` makes a batch sent again a 409 per entry,
/// not a copy), `\n`, then the entry with `@timestamp` (no final `\n`:
/// the framing adds it).
pub(super) fn action_and_source(e: &Entry) -> Vec<u8> {
    let source = json::object_with(e, "@timestamp", json::rfc3339(e));
    let action = format!(r#"{{"create":{{"_id":"{}"}}}}"#, e.position);
    let mut out = Vec::with_capacity(action.len() + 1 + source.len());
    out.extend_from_slice(action.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&source);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_entry_is_an_action_line_and_a_source_line() {
        let e = crate::sinks::Entry {
            position: 3,
            time: 1_700_000_000_000_000_000,
            body: br#"{"a":"b\nc"}"#.to_vec(),
        };
        let out = String::from_utf8(super::action_and_source(&e)).expect("utf-8");
        let (action, source) = out.split_once('\n').expect("two lines");
        assert_eq!(action, r#"{"create":{"_id":"3"}}"#);
        assert!(!source.contains('\n'), "{source}");
        let v: serde_json::Value = serde_json::from_str(source).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"a": "b\nc", "@timestamp": "2023-11-14T22:13:20Z"})
        );
    }
}
