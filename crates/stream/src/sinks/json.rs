//! JSON pieces the encoders share.

use super::Entry;

/// The entry as a JSON object with `field` set to `value` (replacing a
/// field of that name); an entry that is not a JSON object becomes
/// `{"message": <the entry as text>}` first.
pub(crate) fn object_with(e: &Entry, field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut object = match serde_json::from_slice::<serde_json::Value>(&e.body) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(other) => serde_json::Map::from_iter([("message".to_owned(), other)]),
        Err(_) => serde_json::Map::from_iter([(
            "message".to_owned(),
            serde_json::Value::String(String::from_utf8_lossy(&e.body).into_owned()),
        )]),
    };
    object.insert(field.to_owned(), value);
    serde_json::to_vec(&object).unwrap_or_default()
}

/// The entry as raw JSON on one line (re-encoded compactly only when it
/// spans lines; a JSON string of its text when it is not JSON).
pub(crate) fn raw(e: &Entry) -> Box<serde_json::value::RawValue> {
    use serde_json::value::{RawValue, to_raw_value};
    let value = match serde_json::from_slice::<&RawValue>(&e.body) {
        Ok(r) if !r.get().contains(['\n', '\r']) => return r.to_owned(),
        Ok(r) => serde_json::from_str::<serde_json::Value>(r.get()).unwrap_or_default(),
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&e.body).into_owned()),
    };
    to_raw_value(&value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The entry's time as RFC 3339 (UTC, up to nanoseconds).
pub(crate) fn rfc3339(e: &Entry) -> serde_json::Value {
    serde_json::Value::String(tally_proto::timefmt::format_nanos(e.time))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str) -> Entry {
        Entry {
            position: 1,
            time: 1_700_000_000_123_000_000,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_field_is_added_to_objects_and_other_entries_are_wrapped() {
        let v = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json");
        let t = rfc3339(&entry("{}"));
        assert_eq!(t, "2023-11-14T22:13:20.123Z");
        assert_eq!(
            v(&object_with(&entry(r#"{"a":1,"t":0}"#), "t", t.clone())),
            serde_json::json!({"a": 1, "t": t})
        );
        assert_eq!(
            v(&object_with(&entry("[1]"), "t", t.clone())),
            serde_json::json!({"message": [1], "t": t})
        );
        assert_eq!(
            v(&object_with(&entry("not json"), "t", t.clone())),
            serde_json::json!({"message": "not json", "t": t})
        );
        assert_eq!(raw(&entry(r#"{"a":1}"#)).get(), r#"{"a":1}"#);
        assert_eq!(raw(&entry("x\"y")).get(), r#""x\"y""#);
        assert_eq!(raw(&entry("{\n \"a\": [1,\r\n2]}")).get(), r#"{"a":[1,2]}"#);
    }
}
