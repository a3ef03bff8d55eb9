//! Parsing of `POST /c/<collection>/<private-id>` bodies into stored entries.
//!
//! The body is one JSON object or an array of them. Each object becomes one
//! stored entry whose reserved `logtail` member keeps the client's allowed
//! fields (`client_time`, `proc_id`, `proc_seq`), moves anything else under
//! `logtail.error`, and gains `server_time` and `id` (the public ID). Content
//! that is not an object is still saved, wrapped in `logtail.error`, and the
//! request is reported bad so the server can answer 400.
//!
//! Members other than `logtail` are copied byte for byte (no re-encoding).

use crate::ids::PublicId;
use crate::timefmt;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Largest stored entry, in bytes of its JSON.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Largest request body after decompression.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// How much of unparseable content is kept in `logtail.error.bad_data`.
const MAX_BAD_DATA_BYTES: usize = 64 * 1024;

/// One entry ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEntry {
    /// The stored JSON object, `logtail` member first.
    pub json: Vec<u8>,
    /// `logtail.client_time` in Unix nanoseconds, when the client sent a valid one.
    pub client_time: Option<i64>,
    /// `logtail.proc_id`, when sent.
    pub proc_id: Option<u32>,
    /// `logtail.proc_seq`, when sent.
    pub proc_seq: Option<u64>,
    /// True when the entry was saved with a `logtail.error`.
    pub has_error: bool,
}

/// The result of parsing one request body.
#[derive(Debug, Clone, Default)]
pub struct ParsedBody {
    /// Every entry to store, bad ones included (they carry their error).
    pub entries: Vec<IngestEntry>,
    /// How many entries carry an error.
    pub bad: usize,
    /// The first error, for the response message.
    pub first_error: Option<String>,
}

impl ParsedBody {
    /// A one-line summary of what was wrong, for a 400 response.
    pub fn error_message(&self) -> Option<String> {
        self.first_error.as_ref().map(|first| {
            format!(
                "{} of {} entries were malformed and were saved with logtail.error (first: {first}); fix the client, do not resend",
                self.bad,
                self.entries.len()
            )
        })
    }
}

/// Parses a decompressed request body. Never fails: content that cannot be
/// read as entries is saved as error entries.
pub fn parse_body(body: &[u8], server_time_nanos: i64, id: &PublicId) -> ParsedBody {
    let ctx = EntryContext {
        server_time: timefmt::format_nanos(server_time_nanos),
        id: id.to_hex(),
    };
    let mut out = ParsedBody::default();
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => match serde_json::from_slice::<Vec<&RawValue>>(body) {
            Ok(items) => {
                out.entries.reserve(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    ctx.push_value(&mut out, item, Some(i));
                }
            }
            Err(e) => ctx.push_unparseable(
                &mut out,
                body,
                &format!("body is not a JSON array of objects: {e}"),
            ),
        },
        Some(b'{') => match serde_json::from_slice::<&RawValue>(body) {
            Ok(item) => ctx.push_value(&mut out, item, None),
            Err(e) => {
                ctx.push_unparseable(&mut out, body, &format!("body is not a JSON object: {e}"))
            }
        },
        _ => ctx.push_unparseable(
            &mut out,
            body,
            "body is neither a JSON object nor an array of objects",
        ),
    }
    out
}

struct EntryContext {
    server_time: String,
    id: String,
}

/// The members of one JSON object, in order, values left unparsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> de::Deserialize<'de> for Members<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let val: &'de RawValue = map.next_value()?;
                    v.push((k, val));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The client's `logtail` member, split into kept and refused fields.
#[derive(Default)]
struct ClientLogtail<'a> {
    client_time: Option<(&'a RawValue, i64)>,
    proc_id: Option<u32>,
    proc_seq: Option<u64>,
    refused: Vec<(Cow<'a, str>, &'a RawValue)>,
    not_object: Option<&'a RawValue>,
}

fn split_logtail(raw: &RawValue) -> ClientLogtail<'_> {
    let mut lt = ClientLogtail::default();
    let Ok(members) = serde_json::from_str::<Members<'_>>(raw.get()) else {
        lt.not_object = Some(raw);
        return lt;
    };
    for (k, v) in members.0 {
        let kept = match k.as_ref() {
            "client_time" => serde_json::from_str::<&str>(v.get())
                .ok()
                .and_then(timefmt::parse_rfc3339)
                .map(|t| lt.client_time = Some((v, t)))
                .is_some(),
            "proc_id" => serde_json::from_str::<u32>(v.get())
                .map(|n| lt.proc_id = Some(n))
                .is_ok(),
            "proc_seq" => serde_json::from_str::<u64>(v.get())
                .map(|n| lt.proc_seq = Some(n))
                .is_ok(),
            _ => false,
        };
        if !kept {
            lt.refused.push((k, v));
        }
    }
    lt
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

impl EntryContext {
    /// Opens the stored object with its `logtail` member; returns the buffer
    /// positioned after the `logtail` object, ready for more members.
    fn start_entry(
        &self,
        cap: usize,
        lt: &ClientLogtail<'_>,
        error: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(cap + 160);
        out.extend_from_slice(b"{\"logtail\":{");
        if let Some((raw, _)) = lt.client_time {
            out.extend_from_slice(b"\"client_time\":");
            out.extend_from_slice(raw.get().as_bytes());
            out.push(b',');
        }
        if let Some(n) = lt.proc_id {
            out.extend_from_slice(format!("\"proc_id\":{n},").as_bytes());
        }
        if let Some(n) = lt.proc_seq {
            out.extend_from_slice(format!("\"proc_seq\":{n},").as_bytes());
        }
        out.extend_from_slice(b"\"server_time\":\"");
        out.extend_from_slice(self.server_time.as_bytes());
        out.extend_from_slice(b"\",\"id\":\"");
        out.extend_from_slice(self.id.as_bytes());
        out.push(b'"');
        if let Some((message, extra)) = error {
            out.extend_from_slice(b",\"error\":{\"message\":");
            out.extend_from_slice(json_string(message).as_bytes());
            out.extend_from_slice(extra);
            out.push(b'}');
        }
        out.push(b'}');
        out
    }

    fn push_error_entry(&self, out: &mut ParsedBody, message: String, extra: &[u8]) {
        let json = {
            let mut j = self.start_entry(
                extra.len(),
                &ClientLogtail::default(),
                Some((&message, extra)),
            );
            j.push(b'}');
            j
        };
        out.bad += 1;
        out.first_error.get_or_insert(message);
        out.entries.push(IngestEntry {
            json,
            client_time: None,
            proc_id: None,
            proc_seq: None,
            has_error: true,
        });
    }

    fn push_unparseable(&self, out: &mut ParsedBody, body: &[u8], why: &str) {
        let shown = &body[..body.len().min(MAX_BAD_DATA_BYTES)];
        let text = String::from_utf8_lossy(shown);
        let message = if shown.len() < body.len() {
            format!(
                "{why} (first {} of {} bytes kept in bad_data)",
                shown.len(),
                body.len()
            )
        } else {
            why.to_owned()
        };
        let extra = format!(",\"bad_data\":{}", json_string(&text));
        self.push_error_entry(out, message, extra.as_bytes());
    }

    fn push_value(&self, out: &mut ParsedBody, raw: &RawValue, index: Option<usize>) {
        let where_ = || index.map(|i| format!("entry {i}: ")).unwrap_or_default();
        let text = raw.get();
        if text.len() > MAX_ENTRY_BYTES {
            let msg = format!(
                "{}entry of {} bytes is over the {MAX_ENTRY_BYTES}-byte limit",
                where_(),
                text.len()
            );
            self.push_unparseable(out, text.as_bytes(), &msg);
            return;
        }
        let members = match serde_json::from_str::<Members<'_>>(text) {
            Ok(m) => m,
            Err(_) => {
                let message = format!("{}{} is not a JSON object", where_(), kind_of(raw));
                let extra = format!(",\"bad_data\":{text}");
                self.push_error_entry(out, message, extra.as_bytes());
                return;
            }
        };
        let lt = members
            .0
            .iter()
            .rev()
            .find(|(k, _)| k == "logtail")
            .map(|(_, v)| split_logtail(v))
            .unwrap_or_default();
        let mut error_extra = Vec::new();
        let mut message = None;
        if let Some(v) = lt.not_object {
            message = Some(format!(
                "{}the logtail member must be an object, got {}",
                where_(),
                kind_of(v)
            ));
            error_extra.extend_from_slice(b",\"bad_data\":");
            error_extra.extend_from_slice(v.get().as_bytes());
        } else if !lt.refused.is_empty() {
            let names: Vec<&str> = lt.refused.iter().map(|(k, _)| k.as_ref()).collect();
            message = Some(format!(
                "{}logtail fields {names:?} are not client_time (RFC 3339), proc_id (u32) or proc_seq (u64); they were moved here",
                where_()
            ));
            error_extra.extend_from_slice(b",\"fields\":{");
            for (i, (k, v)) in lt.refused.iter().enumerate() {
                if i > 0 {
                    error_extra.push(b',');
                }
                push_key(&mut error_extra, k);
                error_extra.extend_from_slice(v.get().as_bytes());
            }
            error_extra.push(b'}');
        }
        let mut json = self.start_entry(
            text.len(),
            &lt,
            message.as_deref().map(|m| (m, error_extra.as_slice())),
        );
        for (k, v) in members.0.iter().filter(|(k, _)| k != "logtail") {
            json.push(b',');
            push_key(&mut json, k);
            json.extend_from_slice(v.get().as_bytes());
        }
        json.push(b'}');
        let has_error = message.is_some();
        if let Some(m) = message {
            out.bad += 1;
            out.first_error.get_or_insert(m);
        }
        out.entries.push(IngestEntry {
            json,
            client_time: lt.client_time.map(|(_, t)| t),
            proc_id: lt.proc_id,
            proc_seq: lt.proc_seq,
            has_error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn id() -> PublicId {
        PublicId([7; 32])
    }

    fn parse(body: &str) -> (ParsedBody, Vec<Value>) {
        let p = parse_body(body.as_bytes(), 1_700_000_000_000_000_000, &id());
        let values = p
            .entries
            .iter()
            .map(|e| serde_json::from_slice::<Value>(&e.json).expect("stored entry is valid JSON"))
            .collect();
        (p, values)
    }

    #[test]
    fn single_object_gains_server_fields_and_keeps_client_ones() {
        let (p, v) = parse(
            r#"{"text":"hi","logtail":{"client_time":"2023-11-14T22:13:19.5Z","proc_id":7,"proc_seq":9},"v":1}"#,
        );
        assert_eq!(p.bad, 0);
        let e = &v[0];
        assert_eq!(e["text"], "hi");
        assert_eq!(e["v"], 1);
        assert_eq!(e["logtail"]["client_time"], "2023-11-14T22:13:19.5Z");
        assert_eq!(e["logtail"]["proc_id"], 7);
        assert_eq!(e["logtail"]["proc_seq"], 9);
        assert_eq!(e["logtail"]["server_time"], "2023-11-14T22:13:20Z");
        assert_eq!(e["logtail"]["id"], id().to_hex());
        assert_eq!(
            p.entries[0].client_time,
            Some(1_700_000_000_000_000_000 - 500_000_000)
        );
        assert_eq!(
            (p.entries[0].proc_id, p.entries[0].proc_seq),
            (Some(7), Some(9))
        );
    }

    #[test]
    fn extra_logtail_fields_move_to_error_and_entry_is_kept() {
        let (p, v) = parse(r#"[{"a":1,"logtail":{"proc_seq":1,"server_time":"x","foo":[1]}}]"#);
        assert_eq!(p.bad, 1);
        let lt = &v[0]["logtail"];
        assert_eq!(lt["proc_seq"], 1);
        assert_eq!(lt["server_time"], "2023-11-14T22:13:20Z");
        assert_eq!(lt["error"]["fields"]["server_time"], "x");
        assert_eq!(lt["error"]["fields"]["foo"], serde_json::json!([1]));
        assert_eq!(v[0]["a"], 1);
        assert!(p.error_message().unwrap().contains("1 of 1"));
    }

    #[test]
    fn non_object_array_entries_are_saved_as_errors() {
        let (p, v) = parse(r#"[{"ok":true}, 42, "s", [1]]"#);
        assert_eq!(p.entries.len(), 4);
        assert_eq!(p.bad, 3);
        assert_eq!(v[1]["logtail"]["error"]["bad_data"], 42);
        assert_eq!(v[2]["logtail"]["error"]["bad_data"], "s");
        assert!(
            v[1]["logtail"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("entry 1: a number")
        );
    }

    #[test]
    fn garbage_and_invalid_utf8_are_saved_as_errors() {
        for body in [
            &b"not json"[..],
            b"{\"a\":",
            b"",
            b"[\xff\xfe]",
            b"{\"a\":\"\xc3\x28\"}",
        ] {
            let p = parse_body(body, 0, &id());
            assert_eq!(p.entries.len(), 1, "{body:?}");
            assert_eq!(p.bad, 1);
            let v: Value = serde_json::from_slice(&p.entries[0].json).unwrap();
            assert!(v["logtail"]["error"]["message"].is_string());
        }
    }

    #[test]
    fn oversize_entry_is_cut_and_flagged() {
        let big = format!(r#"[{{"text":"{}"}}]"#, "x".repeat(MAX_ENTRY_BYTES + 10));
        let (p, v) = parse(&big);
        assert_eq!(p.bad, 1);
        assert!(p.entries[0].json.len() < MAX_ENTRY_BYTES);
        assert!(
            v[0]["logtail"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("over the 262144-byte limit")
        );
    }

    #[test]
    fn invalid_client_time_is_moved_to_error() {
        let (p, v) = parse(r#"{"logtail":{"client_time":"noon","proc_id":-1}}"#);
        assert_eq!(p.bad, 1);
        assert_eq!(v[0]["logtail"]["error"]["fields"]["client_time"], "noon");
        assert_eq!(v[0]["logtail"]["error"]["fields"]["proc_id"], -1);
        assert!(v[0]["logtail"].get("client_time").is_none());
    }

    #[test]
    fn logtail_that_is_not_an_object_is_kept_as_bad_data() {
        let (p, v) = parse(r#"{"logtail":"hello","x":"y"}"#);
        assert_eq!(p.bad, 1);
        assert_eq!(v[0]["logtail"]["error"]["bad_data"], "hello");
        assert_eq!(v[0]["x"], "y");
    }

    #[test]
    fn escaped_keys_survive() {
        let (_, v) = parse(r#"{"a\"b":1,"\u00e9":2}"#);
        assert_eq!(v[0]["a\"b"], 1);
        assert_eq!(v[0]["é"], 2);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_to_valid_json_entries(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let p = parse_body(&body, 0, &id());
            proptest::prop_assert!(!p.entries.is_empty() || body.contains(&b'['));
            for e in &p.entries {
                let v: Value = serde_json::from_slice(&e.json).expect("valid JSON");
                proptest::prop_assert!(v["logtail"]["id"].is_string());
            }
        }

        #[test]
        fn arrays_of_objects_keep_every_member(texts in proptest::collection::vec("[ -~]{0,40}", 0..20)) {
            let body = serde_json::to_vec(&texts.iter().map(|t| serde_json::json!({"text": t})).collect::<Vec<_>>()).unwrap();
            let p = parse_body(&body, 0, &id());
            proptest::prop_assert_eq!(p.bad, 0);
            proptest::prop_assert_eq!(p.entries.len(), texts.len());
            for (e, t) in p.entries.iter().zip(&texts) {
                let v: Value = serde_json::from_slice(&e.json).unwrap();
                proptest::prop_assert_eq!(v["text"].as_str().unwrap(), t.as_str());
            }
        }
    }
}
