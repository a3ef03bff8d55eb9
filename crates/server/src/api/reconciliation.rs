//! `GET /api/v2/tailnet/{t}/reconciliation?start=&end=&class=&node=&limit=`:
//! the tailnet's completeness per node and node pair, and its findings
//! (newest first).

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::query::parse_time;
use crate::reconcile::FINDINGS_COLLECTION;
use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use tally_store::{Filter, kind};

/// `GET /api/v2/tailnet/{t}/reconciliation`.
pub async fn report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    for k in q.keys() {
        if !matches!(k.as_str(), "start" | "end" | "class" | "node" | "limit") {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {:?}; use start, end, class, node, limit",
                k.chars().take(40).collect::<String>()
            )));
        }
    }
    let now = tally_proto::timefmt::now_nanos();
    let end = q
        .get("end")
        .map(|v| parse_time("end", v))
        .transpose()?
        .unwrap_or(now);
    let start = q
        .get("start")
        .map(|v| parse_time("start", v))
        .transpose()?
        .unwrap_or(end - 3600 * 1_000_000_000);
    if start >= end {
        return Err(ApiError::bad_request("start must be before end"));
    }
    let limit = match q.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be 1 to 10000"))?,
        None => 1000,
    };
    let tailnet = caller.tailnet().to_owned();
    let filter = Filter {
        collections: vec![FINDINGS_COLLECTION.to_owned()],
        kinds: vec![kind::LOG],
        time_start: Some(start),
        ..Filter::default()
    };
    let store = state.store.clone();
    let (class, node) = (q.get("class").cloned(), q.get("node").cloned());
    let findings =
        tokio::task::spawn_blocking(move || -> Result<Vec<Value>, tally_store::StoreError> {
            let mut out: std::collections::VecDeque<Value> = std::collections::VecDeque::new();
            let mut from = 1;
            loop {
                let batch = store.scan(from, &filter, 10_000, 16 << 20, now)?;
                for r in &batch.records {
                    let Ok(f) = serde_json::from_slice::<Value>(&r.rec.body) else {
                        continue;
                    };
                    let in_window = f["window"]["start"].as_i64().is_some_and(|s| s < end)
                        && f["window"]["end"].as_i64().is_some_and(|e| e > start);
                    if f["tailnet"] != tailnet.as_str()
                        || !in_window
                        || class.as_ref().is_some_and(|c| f["class"] != c.as_str())
                        || node
                            .as_ref()
                            .is_some_and(|n| f["node"] != n.as_str() && f["peer"] != n.as_str())
                    {
                        continue;
                    }
                    out.push_back(f);
                    if out.len() > limit {
                        out.pop_front();
                    }
                }
                if !batch.truncated {
                    break;
                }
                from = batch.next_seq;
            }
            Ok(out.into_iter().rev().collect())
        })
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("findings: {e}"))
        })??;
    let summary = state.reconcile.summary();
    let nodes: Vec<Value> = summary
        .nodes
        .iter()
        .filter(|(t, _, _)| t == caller.tailnet())
        .map(|(_, n, c)| json!({ "node": n, "judged": c.judged, "matched": c.matched, "completeness": c.ratio(), "firstDiscrepancy": c.first_discrepancy, "lastDiscrepancy": c.last_discrepancy }))
        .collect();
    let pairs: Vec<Value> = summary
        .pairs
        .iter()
        .filter(|(t, _, _, _)| t == caller.tailnet())
        .map(|(_, a, b, c)| json!({ "nodes": [a, b], "judged": c.judged, "matched": c.matched, "completeness": c.ratio(), "firstDiscrepancy": c.first_discrepancy, "lastDiscrepancy": c.last_discrepancy }))
        .collect();
    Ok(Json(json!({
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(end),
        "nodes": nodes,
        "pairs": pairs,
        "findings": findings,
    }))
    .into_response())
}
