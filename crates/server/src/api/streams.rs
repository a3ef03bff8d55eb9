//! Log streaming, Tailscale's API: `GET|PUT|DELETE
//! /api/v2/tailnet/{t}/logging/{logType}/stream` with
//! `LogstreamEndpointConfiguration` (write-only secrets never answered),
//! `GET .../stream/status` with `LogstreamEndpointPublishingStatus` (plus
//! Tally's `position`, `lagEntries`, `unencrypted`), and Tally's `POST
//! .../stream/test` (one test event; answers what the destination said).
//! Log types: `configuration`, `network` (Tailscale's), `alerts`,
//! `findings` (Tally's).

use crate::AppState;
use crate::api::auth::Caller;
use crate::control::streams::StreamRow;
use crate::error::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use tally_stream::{EndpointConfig, Entry, LogType, PublishingStatus};

fn log_type(params: &HashMap<String, String>) -> Result<LogType, ApiError> {
    let t = params
        .get("logType")
        .map(String::as_str)
        .unwrap_or_default();
    LogType::parse(t).ok_or_else(|| {
        ApiError::not_found(format!(
            "log type {t:?}: use configuration, network, alerts or findings"
        ))
    })
}

/// The tailnet's first stream of `t`.
async fn first(state: &AppState, tailnet: &str, t: LogType) -> Result<Option<StreamRow>, ApiError> {
    Ok(state
        .control
        .streams(Some(tailnet))
        .await?
        .into_iter()
        .find(|r| r.log_type == t.name()))
}

/// The tailnet's first stream of `t`, or a 404 that says how to make one.
async fn configured(state: &AppState, tailnet: &str, t: LogType) -> Result<StreamRow, ApiError> {
    first(state, tailnet, t)
        .await?
        .ok_or_else(|| not_configured(t))
}

fn not_configured(t: LogType) -> ApiError {
    ApiError::not_found(format!(
        "no {} log stream is configured (PUT .../logging/{}/stream)",
        t.name(),
        t.name()
    ))
}

/// `GET .../logging/{logType}/stream`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let row = configured(&state, caller.tailnet(), t).await?;
    let config: EndpointConfig = serde_json::from_str(&row.config)
        .map_err(|e| ApiError::internal(format!("stream {} is damaged: {e}", row.id)))?;
    Ok(Json(config.redacted(t)).into_response())
}

/// `PUT .../logging/{logType}/stream`: creates or replaces the first
/// stream of the type; a missing `token` keeps the stored one.
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let mut config: EndpointConfig = super::json_body(body).await?;
    if config.log_type.as_deref().is_some_and(|l| l != t.name()) {
        return Err(ApiError::bad_request(format!(
            "logType comes from the URL ({}), not the body",
            t.name()
        )));
    }
    config.log_type = None;
    let existing = first(&state, caller.tailnet(), t).await?;
    if config.token.is_none()
        && let Some(old) = &existing
        && let Ok(stored) = state.streams.unseal(old)
    {
        config.token = stored.token;
    }
    config
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (clean, sealed) = state
        .streams
        .seal(config)
        .map_err(|e| ApiError::internal(format!("sealing the stream's secrets: {e:#}")))?;
    let start = state.store.end_seq().saturating_sub(1);
    let row = state
        .control
        .put_stream(
            caller.tailnet(),
            &caller.ctx,
            t.name(),
            existing.as_ref().map(|r| r.id.as_str()),
            &serde_json::to_value(&clean).unwrap_or_default(),
            &sealed,
            start,
        )
        .await?;
    state
        .streams
        .start(&state.pipeline, &row)
        .map_err(|e| ApiError::internal(format!("starting the stream: {e:#}")))?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE .../logging/{logType}/stream`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let row = configured(&state, caller.tailnet(), t).await?;
    state
        .control
        .delete_stream(caller.tailnet(), &caller.ctx, &row.id)
        .await?;
    state.streams.forget(&state.pipeline, &row.id);
    Ok(StatusCode::OK.into_response())
}

/// `GET .../logging/{logType}/stream/status`: all zeros when none is
/// configured (as Tailscale answers).
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let Some(row) = first(&state, caller.tailnet(), t).await? else {
        return Ok(Json(PublishingStatus::default()).into_response());
    };
    let Some(live) = state.streams.state(&row.id) else {
        let mut v = serde_json::to_value(PublishingStatus::default()).unwrap_or_default();
        v["lastError"] = json!("the stream is not running (see the server's log)");
        return Ok(Json(v).into_response());
    };
    let (status, position, unencrypted) = {
        let s = live.lock();
        (s.status.clone(), s.position, s.unencrypted)
    };
    let mut v = serde_json::to_value(status).unwrap_or_default();
    v["position"] = json!(position);
    v["unencrypted"] = json!(unencrypted);
    if let Some(c) = state
        .pipeline
        .get(&crate::consumers::stream::consumer_name(&row.id))
    {
        v["lagEntries"] = json!(c.status(state.store.end_seq()).lag_records);
    }
    Ok(Json(v).into_response())
}

/// `POST .../logging/{logType}/stream/test`: sends one test event with the
/// stored configuration; answers `{"ok", "answer"|"error"}`.
pub async fn test(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let row = configured(&state, caller.tailnet(), t).await?;
    let config = state
        .streams
        .unseal(&row)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    let sink = state
        .streams
        .sink(&config, t)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = tally_proto::timefmt::now_nanos();
    let event = json!({
        "tallyTest": true,
        "message": "test event from Tally: this destination receives the tailnet's log stream",
        "logType": t.name(),
        "time": tally_proto::timefmt::format_nanos(now),
    });
    let entry = Entry {
        position: 0,
        time: now,
        body: event.to_string().into_bytes(),
    };
    Ok(match sink.deliver(&[entry]).await {
        Ok(d) => Json(json!({ "ok": true, "requests": d.requests, "bytes": d.bytes })),
        Err(e) => Json(json!({ "ok": false, "error": e.message })),
    }
    .into_response())
}
