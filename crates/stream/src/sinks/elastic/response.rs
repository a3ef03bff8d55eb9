//! The `_bulk` answer, item by item.

use crate::sinks::http::ItemFailure;
use serde::Deserialize;
use std::collections::HashMap;

/// A `_bulk` answer (the fields read).
#[derive(Deserialize)]
struct Bulk {
    errors: Option<bool>,
    items: Option<Vec<HashMap<String, Item>>>,
}

/// One item's result (under its action's name).
#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// `type: reason` of an item's error.
fn reason(error: Option<&serde_json::Value>) -> String {
    match error {
        Some(serde_json::Value::Object(e)) => {
            let kind = e.get("type").and_then(|t| t.as_str()).unwrap_or("error");
            match e.get("reason").and_then(|r| r.as_str()) {
                Some(r) => format!("{kind}: {r}"),
                None => kind.to_owned(),
            }
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "no reason given".to_owned(),
    }
}

/// The items of a body of `sent` items that Elasticsearch did not take
/// (409, already there, counts as taken).
pub(super) fn failures(answer: &[u8], sent: usize) -> Result<Vec<ItemFailure>, String> {
    let not_bulk =
        || "its answer is not a _bulk answer (is the url .../<data-stream>/_bulk?)".to_owned();
    let bulk: Bulk = serde_json::from_slice(answer).map_err(|_| not_bulk())?;
    let errors = bulk.errors.ok_or_else(not_bulk)?;
    let items = match bulk.items {
        Some(items) => items,
        None if !errors => return Ok(Vec::new()),
        None => return Err("said errors but gave no items".to_owned()),
    };
    if items.len() != sent {
        return Err(format!("answered {} items for {sent}", items.len()));
    }
    if !errors {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(result) = item.values().next() else {
            return Err(format!("item {index} has no result"));
        };
        let status = result.status;
        if (200..300).contains(&status) || status == 409 {
            continue;
        }
        out.push(ItemFailure {
            index,
            status,
            reason: reason(result.error.as_ref()),
            retryable: status == 429 || status >= 500,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::failures;

    #[test]
    fn items_are_taken_retried_or_refused_by_status() {
        let answer = serde_json::json!({
            "took": 3, "errors": true,
            "items": [
                {"create": {"status": 201}},
                {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}},
                {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
                {"create": {"status": 400, "error": {"type": "document_parsing_exception", "reason": "failed to parse field [a]"}}},
                {"create": {"status": 503, "error": "unavailable"}},
            ]
        });
        let f = failures(answer.to_string().as_bytes(), 5).expect("a bulk answer");
        let got: Vec<_> = f.iter().map(|f| (f.index, f.status, f.retryable)).collect();
        assert_eq!(got, vec![(2, 429, true), (3, 400, false), (4, 503, true)]);
        assert_eq!(
            f[1].reason,
            "document_parsing_exception: failed to parse field [a]"
        );
        assert_eq!(f[2].reason, "unavailable");
    }

    #[test]
    fn other_answers_are_refused() {
        assert!(failures(br#"{"errors":false,"items":[]}"#, 0).is_ok());
        assert!(failures(br#"{"errors":false}"#, 3).is_ok());
        assert!(failures(b"<html>", 1).is_err());
        assert!(failures(br#"{"acknowledged":true}"#, 1).is_err());
        assert!(failures(br#"{"errors":true}"#, 1).is_err());
        assert!(failures(br#"{"errors":true,"items":[]}"#, 1).is_err());
    }
}
