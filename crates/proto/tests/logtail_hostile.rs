//! Hostile ingest bodies: whatever a client sends, every stored entry is
//! valid I-JSON that serde_json reads (checked here independently of the
//! parser: a full parse, a duplicate-name walk, the nesting depth, one
//! line), and valid entries are stored unchanged in meaning.

use proptest::prelude::*;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use tally_proto::PublicId;
use tally_proto::logtail::{MAX_DEPTH, MAX_ENTRY_BYTES, parse_body};

/// Deserializes any JSON and fails on an object with a repeated name, at
/// any depth (serde_json's `Value` keeps the last one silently).
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NoDuplicates, E> {
        if v.is_finite() {
            Ok(NoDuplicates)
        } else {
            Err(E::custom("non-finite number"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!("duplicate name {k:?}")));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What a generated entry is.
#[derive(Debug, Clone)]
enum Gen {
    /// A valid object: must be stored unchanged in meaning, without error.
    Valid(Value, String),
    /// Breaks a rule: must be stored as an error entry.
    Bad(String),
    /// May or may not be accepted; must be stored as valid JSON either way.
    Any(String),
}

impl Gen {
    fn text(&self) -> &str {
        match self {
            Gen::Valid(_, t) | Gen::Bad(t) | Gen::Any(t) => t,
        }
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[ -~]{0,20}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\u{e9}\u{1f600}\"\\\\]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid entry object, sometimes with valid logtail fields, written
/// compactly or with whitespace.
fn valid_entry() -> impl Strategy<Value = Gen> {
    (
        prop::collection::btree_map("[a-z]{1,8}", value(), 0..6),
        prop::option::of((any::<u32>(), any::<u64>())),
        any::<bool>(),
    )
        .prop_map(|(members, ids, pretty)| {
            let mut obj: serde_json::Map<String, Value> = members.into_iter().collect();
            obj.remove("logtail");
            if let Some((id, seq)) = ids {
                obj.insert(
                    "logtail".into(),
                    serde_json::json!({"proc_id": id, "proc_seq": seq}),
                );
            }
            let v = Value::Object(obj);
            let text = if pretty {
                serde_json::to_string_pretty(&v)
            } else {
                serde_json::to_string(&v)
            }
            .expect("serializable");
            // As serde_json reads the text back (its float parsing is not
            // always exact): the stored entry must read the same.
            let v = serde_json::from_str(&text).expect("valid JSON");
            Gen::Valid(v, text)
        })
}

/// Values that break a rule wherever they are.
fn poison() -> impl Strategy<Value = String> {
    prop_oneof![
        (MAX_DEPTH..400usize).prop_map(|n| format!("{}0{}", "[".repeat(n), "]".repeat(n))),
        (MAX_DEPTH..200usize).prop_map(|n| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n))),
        prop::sample::select(vec![
            "1e99999",
            "-1e400",
            "1e309",
            "-1.7976931348623159e308",
            "1.7976931348623157000000000000000000000000e308",
            "123456789012345678901234567890e300",
        ])
        .prop_map(str::to_owned),
        (309..400usize).prop_map(|n| format!("9{}", "9".repeat(n))),
        prop::sample::select(vec![
            r#""\ud800""#,
            r#""\udfff""#,
            r#""ab\ud83dcd""#,
            r#""\ud83d\ud83d""#,
            r#""\ude00\ud83d""#,
            r#""\uDBFF\u0041""#,
        ])
        .prop_map(str::to_owned),
        prop::sample::select(vec![
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"\ud83d\ude00":1,"😀":2}"#,
            r#"[{"k":[{"x":1,"y":2,"x":3}]}]"#,
        ])
        .prop_map(str::to_owned),
        (17..60usize).prop_map(|n| {
            let names: Vec<String> = (0..n).map(|i| format!(r#""n{i}":{i}"#)).collect();
            format!(r#"{{{},"n3":0}}"#, names.join(","))
        }),
    ]
}

/// Hostile entries: poison as a member value, as a member name, inside the
/// logtail member, as a non-object entry; values near the limits that are
/// fine; and overlong strings.
fn hostile_entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        poison().prop_map(|p| Gen::Bad(format!(r#"{{"text":"x","h":{p}}}"#))),
        poison().prop_map(|p| Gen::Bad(format!(r#"{{"logtail":{{"proc_id":1,"x":{p}}}}}"#))),
        poison().prop_map(Gen::Any),
        prop::sample::select(vec![r#""\ud800""#, r#""\udc01x""#, r#""a\ud800\u0041""#])
            .prop_map(|k| Gen::Bad(format!(r#"{{{k}:1}}"#))),
        prop::sample::select(vec![r#""\ud800""#, r#""\udc01x""#])
            .prop_map(|k| Gen::Bad(format!(r#"{{"logtail":{{{k}:1}}}}"#))),
        (1..MAX_DEPTH - 1).prop_map(|n| Gen::Any(format!(
            r#"{{"ok":{}0{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        ))),
        prop::sample::select(vec!["1e308", "-1e-400", "18446744073709551616", "0.5e-330"])
            .prop_map(|n| Gen::Any(format!(r#"{{"n":{n}}}"#))),
        (1000..MAX_ENTRY_BYTES + 2000)
            .prop_map(|n| Gen::Any(format!(r#"{{"s":"{}"}}"#, "\\\"".repeat(n / 2)))),
    ]
}

fn entry() -> impl Strategy<Value = Gen> {
    prop_oneof![3 => valid_entry(), 2 => hostile_entry()]
}

/// How the body is damaged on top of its entries.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Cut at this fraction of its length.
    Truncate(f64),
    /// This byte replaces one inside the first string.
    BadUtf8(u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => (0.0..1.0f64).prop_map(Damage::Truncate),
        1 => prop::sample::select(vec![0xffu8, 0xc3, 0x80, 0xed, 0xf5]).prop_map(Damage::BadUtf8),
    ]
}

fn id() -> PublicId {
    PublicId([9; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_stored_entry_is_valid_i_json(entries in prop::collection::vec(entry(), 0..12), damage in damage()) {
        let mut body = format!(
            "[{}]",
            entries.iter().map(Gen::text).collect::<Vec<_>>().join(",")
        )
        .into_bytes();
        let mut damaged = false;
        match damage {
            Damage::None => {}
            Damage::Truncate(f) => {
                body.truncate(((body.len() as f64) * f) as usize);
                damaged = true;
            }
            Damage::BadUtf8(b) => {
                if let Some(q) = body.iter().position(|c| *c == b'"') {
                    body.insert(q + 1, b);
                    damaged = true;
                }
            }
        }
        let p = parse_body(&body, 1_700_000_000_000_000_000, &id());

        for e in &p.entries {
            let text = std::str::from_utf8(&e.json).expect("stored entries are UTF-8");
            let v: Value = serde_json::from_str(text)
                .unwrap_or_else(|err| panic!("not JSON ({err}): {}", &text[..text.len().min(300)]));
            serde_json::from_str::<NoDuplicates>(text)
                .unwrap_or_else(|err| panic!("duplicate names ({err}): {}", &text[..text.len().min(300)]));
            prop_assert!(depth(&v) <= MAX_DEPTH, "depth {}", depth(&v));
            prop_assert!(!text.contains('\n') && !text.contains('\r'), "not one line");
            prop_assert!(e.json.len() <= MAX_ENTRY_BYTES + 2048, "{} bytes", e.json.len());
            prop_assert_eq!(v["logtail"]["id"].as_str().map(str::to_owned), Some(id().to_hex()));
            prop_assert_eq!(e.has_error, v["logtail"].get("error").is_some());
            if e.has_error {
                prop_assert!(v["logtail"]["error"]["message"].is_string());
            }
        }

        if damaged {
            // An undamaged prefix can still be JSON only by accident: never
            // more than one error entry for a body that is not JSON.
            if p.entries.len() != entries.len() {
                prop_assert_eq!(p.entries.len(), 1);
                prop_assert_eq!(p.bad, 1);
            }
            return Ok(());
        }
        prop_assert_eq!(p.entries.len(), entries.len());
        let mut bad = 0;
        for (g, e) in entries.iter().zip(&p.entries) {
            let stored: Value = serde_json::from_slice(&e.json).expect("checked above");
            match g {
                Gen::Valid(sent, _) => {
                    prop_assert!(!e.has_error, "valid entry flagged: {}", String::from_utf8_lossy(&e.json));
                    let mut sent = sent.clone();
                    let mut stored = stored.clone();
                    let sent_lt = sent.as_object_mut().and_then(|o| o.remove("logtail"));
                    let stored_lt = stored.as_object_mut().and_then(|o| o.remove("logtail"));
                    prop_assert_eq!(&stored, &sent);
                    if let (Some(sent_lt), Some(stored_lt)) = (sent_lt, stored_lt) {
                        prop_assert_eq!(&stored_lt["proc_id"], &sent_lt["proc_id"]);
                        prop_assert_eq!(&stored_lt["proc_seq"], &sent_lt["proc_seq"]);
                        prop_assert_eq!(e.proc_id, sent_lt["proc_id"].as_u64().map(|n| n as u32));
                    }
                }
                Gen::Bad(text) => {
                    bad += 1;
                    prop_assert!(e.has_error, "accepted: {}", &text[..text.len().min(200)]);
                    // The original is kept as a string, or its start when long.
                    let kept = stored["logtail"]["error"]["bad_data"].as_str();
                    prop_assert!(kept.is_some_and(|k| text.starts_with(k)), "{}", stored);
                }
                Gen::Any(_) => bad += usize::from(e.has_error),
            }
        }
        prop_assert_eq!(p.bad, bad);
    }
}
