//! `GET /api/v2/tailnet/{t}/reconciliation?start=&end=&class=&node=&limit=&cursor=`:
//! the tailnet's completeness per node and node pair (since the reconciler
//! started, plus the last hour in 10-minute buckets and its trend), and the
//! findings whose window overlaps `[start, end)`, newest first, paged:
//! `nextCursor` is given when older ones remain.

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
        if !matches!(
            k.as_str(),
            "start" | "end" | "class" | "node" | "limit" | "cursor"
        ) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {:?}; use start, end, class, node, limit, cursor",
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
    // The cursor is the store position of the oldest finding of the last
    // page: the next page holds the findings stored before it.
    let cursor = match q.get("cursor") {
        Some(v) => Some(v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request("cursor must be a nextCursor from a previous page")
        })?),
        None => None,
    };
    let tailnet = caller.tailnet().to_owned();
    let filter = Filter {
        collections: vec![FINDINGS_COLLECTION.to_owned()],
        kinds: vec![kind::LOG],
        time_start: Some(start),
        owner: Some(tailnet.clone()),
        ..Filter::default()
    };
    let store = state.store.clone();
    let (class, node) = (q.get("class").cloned(), q.get("node").cloned());
    let (findings, more) = tokio::task::spawn_blocking(
        move || -> Result<(Vec<(u64, Value)>, bool), tally_store::StoreError> {
            let mut out: std::collections::VecDeque<(u64, Value)> =
                std::collections::VecDeque::new();
            let mut more = false;
            let mut from = 1;
            loop {
                let batch = store.scan(from, &filter, 10_000, 16 << 20, now)?;
                for r in &batch.records {
                    if cursor.is_some_and(|c| r.seq >= c) {
                        break;
                    }
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
                    out.push_back((r.seq, f));
                    if out.len() > limit {
                        out.pop_front();
                        more = true;
                    }
                }
                if !batch.truncated || cursor.is_some_and(|c| batch.next_seq >= c) {
                    break;
                }
                from = batch.next_seq;
            }
            Ok((out.into_iter().rev().collect(), more))
        },
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("findings: {e}")))??;
    let next_cursor = if more {
        findings.last().map(|(seq, _)| seq.to_string())
    } else {
        None
    };
    let findings: Vec<Value> = findings.into_iter().map(|(_, f)| f).collect();
    let summary = state.reconcile.summary();
    let completeness = |c: &tally_reconcile::Completeness| {
        json!({
            "judged": c.judged,
            "matched": c.matched,
            "completeness": c.ratio(),
            "firstDiscrepancy": c.first_discrepancy,
            "lastDiscrepancy": c.last_discrepancy,
            "trend": c.trend(),
            "recent": c.recent().iter().map(|b| json!({
                "start": b.start, "judged": b.judged, "matched": b.matched,
            })).collect::<Vec<_>>(),
        })
    };
    let nodes: Vec<Value> = summary
        .nodes
        .iter()
        .filter(|(t, _, _)| t == caller.tailnet())
        .map(|(_, n, c)| {
            let mut v = completeness(c);
            v["node"] = json!(n);
            v
        })
        .collect();
    let pairs: Vec<Value> = summary
        .pairs
        .iter()
        .filter(|(t, _, _, _)| t == caller.tailnet())
        .map(|(_, a, b, c)| {
            let mut v = completeness(c);
            v["nodes"] = json!([a, b]);
            v
        })
        .collect();
    Ok(Json(json!({
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(end),
        "nodes": nodes,
        "pairs": pairs,
        "findings": findings,
        "nextCursor": next_cursor,
    }))
    .into_response())
}
