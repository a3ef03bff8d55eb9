//! Configuration of the logs service: `POST /collections` (create, delete)
//! and `POST /instances` (adopt). Bodies are form- or JSON-encoded.

use crate::AppState;
use crate::api::auth::Caller;
use crate::error::ApiError;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use tally_proto::{CollectionName, PublicId};

/// Reads a form- or JSON-encoded body into string fields (arrays are joined with commas).
fn fields(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_json {
        let map: HashMap<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not a JSON object: {e}")))?;
        Ok(map
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect())
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::bad_request(format!("body is not form-encoded: {e}")))
    }
}

fn collection_field(f: &HashMap<String, String>) -> Result<CollectionName, ApiError> {
    let name = f
        .get("collection")
        .ok_or_else(|| ApiError::bad_request("missing field \"collection\""))?;
    CollectionName::parse(name).map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
}

/// The common start of a configuration call: the form/JSON fields and the
/// validated `collection` field.
async fn configuration_request(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(HashMap<String, String>, CollectionName), ApiError> {
    let body = crate::ingest::body::read_limited(body, 64 << 10).await?;
    let f = fields(headers, &body)?;
    let name = collection_field(&f)?;
    Ok((f, name))
}

/// `POST /collections`.
pub async fn post_collections(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (f, name) = configuration_request(&headers, body).await?;
    match f.get("action").map(String::as_str) {
        Some("create") => {
            let days = match f.get("retention-days") {
                None => None,
                Some(d) => Some(d.parse::<u32>().ok().filter(|d| *d >= 1).ok_or_else(|| {
                    ApiError::bad_request(
                        "retention-days must be a whole number of days, at least 1",
                    )
                })?),
            };
            state
                .control
                .create_collection(
                    caller.tailnet(),
                    &caller.ctx,
                    name.as_str(),
                    days,
                    tally_proto::timefmt::now_nanos(),
                )
                .await?;
            state.catalog.reload(&state.control).await?;
            tracing::info!(collection = %name, key = %caller.principal.key_id, "collection created");
            Ok(
                axum::Json(serde_json::json!({ "collection": name, "action": "create" }))
                    .into_response(),
            )
        }
        Some("delete") => {
            state
                .control
                .delete_collection(caller.tailnet(), &caller.ctx, name.as_str())
                .await?;
            state.catalog.reload(&state.control).await?;
            state.instances.forget(caller.tailnet(), name.as_str());
            state.store.recheck_retention();
            tracing::info!(collection = %name, key = %caller.principal.key_id, "collection deleted");
            Ok(
                axum::Json(serde_json::json!({ "collection": name, "action": "delete" }))
                    .into_response(),
            )
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "action must be create or delete, got {other:?}"
        ))),
        None => Err(ApiError::bad_request(
            "missing field \"action\" (create or delete)",
        )),
    }
}

/// `POST /instances`.
pub async fn post_instances(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (f, name) = configuration_request(&headers, body).await?;
    let list = f
        .get("instances")
        .or_else(|| f.get("instance"))
        .ok_or_else(|| ApiError::bad_request("missing field \"instances\" (public IDs, hex)"))?;
    let mut ids = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        ids.push(PublicId::parse(part).map_err(|e| {
            ApiError::bad_request(format!(
                "{part:?} is not a public ID: {e} (use `tally agent id` on the node)"
            ))
        })?);
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request("instances is empty"));
    }
    let newly = state
        .control
        .adopt(caller.tailnet(), &caller.ctx, name.as_str(), &ids)
        .await?;
    state.catalog.reload(&state.control).await?;
    tracing::info!(collection = %name, key = %caller.principal.key_id, adopted = newly.len(), "instances adopted");
    Ok(axum::Json(
        serde_json::json!({ "collection": name, "instances": ids, "newly_adopted": newly }),
    )
    .into_response())
}
