//! Reading recordings (issue 16):
//!
//! - `GET /api/v2/tailnet/{t}/recordings?start=&end=&node=&user=&limit=`:
//!   newest first, from the `recording-index` consumer.
//! - `GET .../recordings/{id}`: one recording's metadata.
//! - `GET .../recordings/{id}/cast[?follow=true]`: the asciicast v2 file as
//!   received, streamed from the store; with `follow`, a recording in
//!   progress goes on streaming until it ends (live viewing).
//! - `GET .../recordings/{id}/chunks`: the chunks' stored records, for
//!   `tally verify --recording ID` (each is a transparency-log leaf).
//!
//! Reading a recording's content is audited (`READ` of the `RECORDING`).

use super::query::parse_time;
use crate::AppState;
use crate::api::auth::Caller;
use crate::consumers::recording_index::RecordingMeta;
use crate::control::audit::{EventSpec, Target};
use crate::error::ApiError;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tally_store::{Filter, Owner};

/// Most recordings one list answers.
const MAX_LIST: usize = 1000;

fn shown(m: &RecordingMeta) -> Value {
    json!({
        "id": m.id,
        "start": tally_proto::timefmt::format_nanos(m.start),
        "end": tally_proto::timefmt::format_nanos(m.end),
        "bytes": m.bytes,
        "state": match m.complete {
            None => "recording",
            Some(true) => "complete",
            Some(false) => "cut short",
        },
        "reason": m.reason,
        "recordedBy": m.recorded_by(),
        "srcNode": m.header["srcNode"],
        "srcNodeID": m.header["srcNodeID"],
        "srcNodeUser": m.header["srcNodeUser"],
        "srcNodeTags": m.header["srcNodeTags"],
        "sshUser": m.header["sshUser"],
        "localUser": m.header["localUser"],
        "connectionID": m.header["connectionID"],
        "width": m.header["width"],
        "height": m.header["height"],
        "command": m.header["command"],
    })
}

/// The oldest end a recording of `tailnet` may have and still be shown:
/// older ones are past the tailnet's `recordingsRetentionDays` (their
/// chunks are hidden by the store and deleted by retention).
fn horizon(state: &AppState, tailnet: &str) -> i64 {
    let days = state
        .catalog
        .collections_of(tailnet)
        .get(tally_proto::collection::RECORDINGS)
        .map_or(
            crate::control::settings::DEFAULT_RECORDINGS_RETENTION_DAYS,
            |c| c.retention_days,
        );
    visible_from(tally_proto::timefmt::now_nanos(), days)
}

/// The oldest end shown at `now` with a retention of `days`.
pub fn visible_from(now: i64, days: u32) -> i64 {
    const DAY_NANOS: i64 = 24 * 3600 * 1_000_000_000;
    now.saturating_sub(i64::from(days).saturating_mul(DAY_NANOS))
}

/// `GET .../recordings`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let known = ["start", "end", "node", "user", "limit"];
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {k:?}; known: {}",
            known.join(", ")
        )));
    }
    let start = q.get("start").map(|v| parse_time("start", v)).transpose()?;
    let end = q.get("end").map(|v| parse_time("end", v)).transpose()?;
    let limit = match q.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit {v:?}: 1 to {MAX_LIST}")))?,
        None => 100,
    };
    let node = q.get("node");
    let user = q.get("user");
    let shown_from = horizon(&state, caller.tailnet());
    let all = state.recordings.list(caller.tailnet(), |m| {
        m.end >= shown_from
            && start.is_none_or(|s| m.end >= s)
            && end.is_none_or(|e| m.start < e)
            && node.is_none_or(|n| m.node() == n || m.header["srcNodeID"].as_str() == Some(n))
            && user.is_none_or(|u| m.has_user(u))
    });
    let truncated = all.len() > limit;
    let shown: Vec<Value> = all.iter().take(limit).map(shown).collect();
    Ok(Json(json!({ "recordings": shown, "truncated": truncated })).into_response())
}

fn found(state: &AppState, caller: &Caller, id: &str) -> Result<RecordingMeta, ApiError> {
    state
        .recordings
        .get(caller.tailnet(), id)
        .filter(|m| m.end >= horizon(state, caller.tailnet()))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no recording {id} in this tailnet (or it is past the tailnet's recordingsRetentionDays)"
            ))
        })
}

/// `GET .../recordings/{recordingId}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = params
        .get("recordingId")
        .map(String::as_str)
        .unwrap_or_default();
    Ok(Json(shown(&found(&state, &caller, id)?)).into_response())
}

/// The data of the chunk at `position` (of recording `id` in `tailnet`).
async fn chunk(
    state: &AppState,
    tailnet: &str,
    id: &str,
    position: u64,
) -> Result<Option<String>, String> {
    let log = state.store.clone();
    let filter = Filter {
        collections: vec![tally_proto::collection::RECORDINGS.to_owned()],
        ..Default::default()
    };
    let b = tokio::task::spawn_blocking(move || log.scan(position, &filter, 1, 4 << 20, i64::MIN))
        .await
        .map_err(|e| format!("reading the store panicked: {e}"))?
        .map_err(|e| format!("reading the store: {e}"))?;
    let Some(r) = b.records.first().filter(|r| r.seq == position) else {
        return Ok(None); // expired by retention
    };
    if r.rec.owner != Owner::Tailnet(tailnet.to_owned()) {
        return Ok(None);
    }
    let v: Value =
        serde_json::from_slice(&r.rec.body).map_err(|e| format!("a damaged chunk: {e}"))?;
    if v["recording"] != id {
        return Ok(None);
    }
    Ok(v["data"].as_str().map(str::to_owned))
}

/// Reading a recording is audited (`READ` of the `RECORDING`).
async fn audit_read(
    state: &AppState,
    caller: &Caller,
    meta: &RecordingMeta,
    how: &str,
) -> Result<(), ApiError> {
    let mut change = state
        .control
        .begin_change(caller.tailnet(), &caller.ctx)
        .await?;
    change
        .record(
            EventSpec::new(
                "READ",
                Target {
                    id: meta.id.clone(),
                    name: meta.node().to_owned(),
                    target_type: "RECORDING".into(),
                    property: String::new(),
                    is_ephemeral: false,
                },
            )
            .details(how.to_owned()),
        )
        .await?;
    change.commit().await?;
    Ok(())
}

/// `GET .../recordings/{recordingId}/chunks`: the stored records of the
/// recording's chunks as the transparency log hashes them (store position,
/// time, collection, writer instance, kind, body), so that `tally verify
/// --recording ID` computes each leaf itself and checks its inclusion
/// proof. Positions expired by retention are listed in `expired`.
pub async fn chunks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = params.get("recordingId").cloned().unwrap_or_default();
    let meta = found(&state, &caller, &id)?;
    audit_read(&state, &caller, &meta, "verified").await?;
    let mut out = Vec::with_capacity(meta.chunks.len());
    let mut expired = Vec::new();
    for &p in &meta.chunks {
        let log = state.store.clone();
        let filter = Filter {
            collections: vec![tally_proto::collection::RECORDINGS.to_owned()],
            ..Default::default()
        };
        let b = tokio::task::spawn_blocking(move || log.scan(p, &filter, 1, 4 << 20, i64::MIN))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the store: {e}"),
                )
            })?;
        match b.records.into_iter().find(|r| r.seq == p) {
            Some(r) if r.rec.owner == Owner::Tailnet(caller.tailnet().to_owned()) => {
                out.push(json!({
                    "position": r.seq,
                    "time": r.rec.time,
                    "collection": r.rec.collection,
                    "instance": hex::encode(r.rec.instance),
                    "kind": r.rec.kind,
                    "body": String::from_utf8_lossy(&r.rec.body),
                }));
            }
            _ => expired.push(p),
        }
    }
    Ok(Json(json!({
        "recording": id,
        "state": shown(&meta)["state"],
        "chunks": out,
        "expired": expired,
    }))
    .into_response())
}

/// `GET .../recordings/{recordingId}/cast`.
pub async fn cast(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = params.get("recordingId").cloned().unwrap_or_default();
    let meta = found(&state, &caller, &id)?;
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    audit_read(
        &state,
        &caller,
        &meta,
        if follow { "watched live" } else { "read" },
    )
    .await?;
    let tailnet = caller.tailnet().to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let mut sent = 0usize;
        loop {
            let Some(m) = state.recordings.get(&tailnet, &id) else {
                return;
            };
            for &p in &m.chunks[sent..] {
                match chunk(&state, &tailnet, &id, p).await {
                    Ok(Some(data)) => {
                        if tx.send(Ok(Bytes::from(data))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                }
            }
            sent = m.chunks.len();
            if !follow || m.complete.is_some() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = tx.closed() => return,
                () = state.shutdown.cancelled() => return,
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-asciicast"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
