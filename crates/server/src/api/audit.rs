//! The configuration audit log: `GET /api/v2/tailnet/{t}/logging/configuration`
//! (Tailscale's shape, newest first, filtered and paged) and `.../verify`.

use crate::AppState;
use crate::api::auth::Caller;
use crate::api::query::parse_time;
use crate::control::audit::AuditQuery;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size.
pub const MAX_LIMIT: i64 = 1000;

fn parse(params: &[(String, String)]) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..AuditQuery::default()
    };
    for (k, v) in params {
        let text = || -> Result<Option<String>, ApiError> {
            if v.chars().count() > 256 || v.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "{k} must be at most 256 printable characters"
                )));
            }
            Ok((!v.is_empty()).then(|| v.clone()))
        };
        match k.as_str() {
            "start" => q.start = Some(parse_time("start", v)?),
            "end" => q.end = Some(parse_time("end", v)?),
            "actor" => q.actor = text()?,
            "action" => q.action = text()?.map(|a| a.to_uppercase()),
            "targetType" => q.target_type = text()?.map(|a| a.to_uppercase()),
            "targetId" => q.target_id = text()?,
            "property" => q.property = text()?,
            "q" => q.text = text()?,
            "limit" => {
                q.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "before" => {
                q.before = Some(v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::bad_request("before must be the nextBefore of an earlier page")
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {:?}; use start, end, actor, action, targetType, targetId, property, q, limit, before",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    if let (Some(s), Some(e)) = (q.start, q.end)
        && s >= e
    {
        return Err(ApiError::bad_request("start must be before end"));
    }
    Ok(q)
}

/// `GET /api/v2/tailnet/{t}/logging/configuration`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = parse(&params)?;
    let page = state.control.audit_query(caller.tailnet(), &q).await?;
    Ok(Json(json!({
        "version": "1.1",
        "tailnetId": caller.tailnet(),
        "logs": page.events,
        "nextBefore": page.next_before,
    }))
    .into_response())
}

/// `GET /api/v2/tailnet/{t}/logging/configuration/verify`.
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(state.control.audit_verify(caller.tailnet()).await?).into_response())
}
