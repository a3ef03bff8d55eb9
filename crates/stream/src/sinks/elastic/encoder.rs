//! `_bulk` lines.

use crate::sinks::{Entry, json};

/// `{"create":{"_id":"<position>-<digest>"}}` (data streams take only
/// `create`; an `_id` made of the store position and the first 8 bytes of
/// the item's SHA-256 (one stored entry may become several OCSF events)
/// makes a batch sent again a 409 per item, not a copy), `\n`, then the
/// entry with `@timestamp` (no final `\n`: the framing adds it).
pub(super) fn action_and_source(e: &Entry) -> Vec<u8> {
    let source = json::object_with(e, "@timestamp", json::rfc3339(e));
    let digest = ring::digest::digest(&ring::digest::SHA256, &e.body);
    let action = format!(
        r#"{{"create":{{"_id":"{}-{}"}}}}"#,
        e.position,
        hex::encode(&digest.as_ref()[..8])
    );
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
        assert!(action.starts_with(r#"{"create":{"_id":"3-"#), "{action}");
        assert_eq!(
            action.len(),
            r#"{"create":{"_id":"3-0123456789abcdef"}}"#.len()
        );
        assert!(!source.contains('\n'), "{source}");
        let v: serde_json::Value = serde_json::from_str(source).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"a": "b\nc", "@timestamp": "2023-11-14T22:13:20Z"})
        );
    }
}
