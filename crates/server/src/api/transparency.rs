//! The transparency log over HTTP: the signed checkpoint and the log key at
//! well-known URLs (public: they reveal only a size and a root), inclusion
//! proofs for records the caller may read, consistency proofs, and the
//! flagged upload batches of a tailnet.

use crate::AppState;
use crate::api::auth::Caller;
use crate::api::query::parse_time;
use crate::error::ApiError;
use crate::ingest::batches::BatchRecord;
use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use tally_proto::PublicId;
use tally_store::{Filter, kind};
use tally_transparency::Hash;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("transparency log: {e}"),
    )
}

fn num(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number")))
        })
        .transpose()
}

/// `GET /.well-known/tally/checkpoint`: the latest signed checkpoint (C2SP
/// signed note).
pub async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Cover what was stored before the request (read-your-writes).
    crate::consumers::catch_up(
        &state,
        crate::consumers::transparency::NAME,
        std::time::Duration::from_secs(2),
    )
    .await;
    let log = state.log.clone();
    let text = tokio::task::spawn_blocking(move || log.checkpoint())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// `GET /.well-known/tally/log-key`: the log's verifier key (`vkey` form).
pub async fn log_key(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", state.log.vkey()),
    )
        .into_response()
}

/// `GET /api/v2/log/inclusion?seq=N[&size=S]`: the leaf of the record at
/// store position N (one the caller may read) and its inclusion proof in
/// the tree of S leaves (default: the current size). A position lost in a
/// recovery cut answers 410 with the statement of the cut.
pub async fn inclusion(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let seq = num(&q, "seq")?.ok_or_else(|| ApiError::bad_request("seq is required"))?;
    let size = num(&q, "size")?;
    if let Some(c) = state.pipeline.get(crate::consumers::transparency::NAME) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), c.wait_for(seq)).await;
    }
    let store = state.store.clone();
    let log = state.log.clone();
    let position = tokio::task::spawn_blocking(move || log.position(seq))
        .await
        .map_err(internal)?;
    if let crate::consumers::merkle_log::Position::Cut(index, statement) = position {
        // Public knowledge: the statement is in the log for everybody.
        return Ok((
            StatusCode::GONE,
            Json(json!({
                "message": format!("record {seq} was lost in a recovery cut; the log's statement of the cut is record {}", statement.seq),
                "seq": seq,
                "leafIndex": (index != u64::MAX).then_some(index),
                "cut": cut_json(&statement),
            })),
        )
            .into_response());
    }
    let record = tokio::task::spawn_blocking(move || {
        store.scan(seq, &Filter::default(), 1, 1 << 20, i64::MIN)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?
    .records
    .into_iter()
    .find(|r| r.seq == seq);
    let not_found =
        || ApiError::not_found(format!("no record {seq} in the log that this key may read"));
    let record = record.ok_or_else(not_found)?;
    if record.rec.owner.as_ref().key() != Some(caller.tailnet()) {
        return Err(not_found());
    }
    let index = match position {
        crate::consumers::merkle_log::Position::Leaf(i) => i,
        _ => return Err(not_found()),
    };
    let size = size.unwrap_or_else(|| state.log.size());
    if index >= size {
        return Err(ApiError::bad_request(format!(
            "record {seq} is leaf {index}, not in a tree of {size}"
        )));
    }
    let (leaf, proof) = state
        .log
        .inclusion(index, size)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({
        "seq": seq,
        "leafIndex": index,
        "treeSize": size,
        "leafHash": leaf.to_base64(),
        "recordLeafHash": crate::consumers::merkle_log::record_leaf(&record).to_base64(),
        "proof": proof.iter().map(Hash::to_base64).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v2/log/consistency?old=M&new=N`: a consistency proof between
/// two tree sizes (public, like the checkpoint: only hashes; agents, which
/// hold no API key, check the checkpoints they keep with it), and the
/// recovery-cut statements among leaves `M..N` with their inclusion proofs
/// in the tree of N (`cuts`).
pub async fn consistency(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let old = num(&q, "old")?.ok_or_else(|| ApiError::bad_request("old is required"))?;
    let new = num(&q, "new")?.unwrap_or_else(|| state.log.size());
    if old > new || new > state.log.size() {
        return Err(ApiError::bad_request(format!(
            "need old <= new <= {} (the current size)",
            state.log.size()
        )));
    }
    let log = state.log.clone();
    let (proof, cuts) = tokio::task::spawn_blocking(move || {
        let proof = log.consistency(old, new)?;
        // Recovery cuts stated in the leaves old..new, each with its
        // inclusion proof in the tree of `new`.
        let mut cuts = Vec::new();
        for c in log.cuts() {
            let Some(index) = log.index_of(c.seq) else {
                continue;
            };
            if index < old || index >= new {
                continue;
            }
            let (leaf, p) = log.inclusion(index, new)?;
            let mut v = cut_json(&c);
            v["leafIndex"] = index.into();
            v["leafHash"] = leaf.to_base64().into();
            v["proof"] = p.iter().map(Hash::to_base64).collect::<Vec<_>>().into();
            cuts.push(v);
        }
        anyhow::Ok((proof, cuts))
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({
        "old": old,
        "new": new,
        "proof": proof.iter().map(Hash::to_base64).collect::<Vec<_>>(),
        "cuts": cuts,
    }))
    .into_response())
}

/// A recovery-cut statement as the API shows it: its record's fields
/// (from which its leaf hash is computed) and the statement itself.
fn cut_json(c: &crate::consumers::merkle_log::CutStatement) -> serde_json::Value {
    json!({
        "seq": c.seq,
        "time": c.time,
        "collection": crate::consumers::merkle_log::SYSTEM_COLLECTION,
        "kind": kind::CUT,
        "body": c.body,
        "statement": serde_json::from_str::<serde_json::Value>(&c.body).unwrap_or_default(),
    })
}

/// `GET /api/v2/tailnet/{t}/logging/integrity?start=&end=`: the flagged
/// upload batches (bad signatures, gaps, broken chains, replays, unsigned
/// uploads of signing nodes) of the tailnet's nodes and collections, and
/// how many batches and records were checked but discarded
/// (`batchesDiscarded`, `recordsDiscarded`: flow records that arrived
/// after flow logging was turned off; not flagged).
pub async fn integrity(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
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
        .unwrap_or(end - 24 * 3600 * 1_000_000_000);
    let filter = Filter {
        kinds: vec![kind::BATCH],
        time_start: Some(start),
        time_end: Some(end),
        owner: Some(caller.tailnet().to_owned()),
        ..Filter::default()
    };
    let store = state.store.clone();
    let mut out = Vec::new();
    let mut checked = 0u64;
    // Batches checked but not stored (flow records after a flow-logging
    // switch-off): not flagged, their chain goes on.
    let (mut discarded_batches, mut discarded_records) = (0u64, 0u64);
    let mut from = 1;
    loop {
        let (store, f) = (store.clone(), filter.clone());
        let batch =
            tokio::task::spawn_blocking(move || store.scan(from, &f, 10_000, 16 << 20, now))
                .await
                .map_err(internal)?
                .map_err(internal)?;
        for r in &batch.records {
            let instance = PublicId(r.rec.instance);
            checked += 1;
            let Ok(b) = serde_json::from_slice::<BatchRecord>(&r.rec.body) else {
                continue;
            };
            if !b.discarded.is_empty() {
                discarded_batches += 1;
                discarded_records += b.discarded.len() as u64;
            }
            if b.suspicious {
                out.push(json!({
                    "time": tally_proto::timefmt::format_nanos(r.rec.time),
                    "instance": instance.to_hex(),
                    "collection": b.collection,
                    "seq": b.seq,
                    "verdict": b.verdict,
                    "detail": b.detail,
                    "entries": b.entries,
                    "storeSeq": r.seq,
                }));
            }
        }
        if !batch.truncated || out.len() >= 10_000 {
            break;
        }
        from = batch.next_seq;
    }
    Ok(Json(json!({
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(end),
        "batchesChecked": checked,
        "batchesDiscarded": discarded_batches,
        "recordsDiscarded": discarded_records,
        "flagged": out,
    }))
    .into_response())
}
