//! `POST /c/<collection>/<private-id>`: store a log entry or a batch.

use crate::AppState;
use crate::body;
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tally_proto::logtail::{self, MAX_BODY_BYTES};
use tally_proto::{CollectionName, PrivateId};
use tally_store::{NewRecord, kind};

/// Handles one upload.
pub async fn post_logs(
    State(state): State<AppState>,
    Path((collection, private_id)): Path<(String, String)>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Response, ApiError> {
    let collection = CollectionName::parse(&collection)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    let private = PrivateId::parse(&private_id).map_err(|e| {
        ApiError::bad_request(format!("the private ID in the URL is not valid: {e}"))
    })?;
    // From here on only the public ID is used: the private one is never stored or logged.
    let public = private.public();
    drop(private);
    if !state.catalog.has_collection(collection.as_str()) {
        return Err(ApiError::not_found(format!(
            "collection \"{collection}\" does not exist; an admin creates it with POST /collections (collection={collection}, action=create)"
        )));
    }
    let Ok(_permit) = state.ingest_slots.clone().try_acquire_owned() else {
        return Err(ApiError::retry(
            StatusCode::TOO_MANY_REQUESTS,
            1,
            "too many uploads in progress; retry after 1 s",
        ));
    };
    // Compressed bodies are smaller than the decompressed limit; identity bodies are checked again after.
    let raw = body::read_limited(raw, MAX_BODY_BYTES + (64 << 10)).await?;
    let now = tally_proto::timefmt::now_nanos();
    let adopted = state.catalog.is_adopted(collection.as_str(), &public);
    if !adopted {
        let used = state
            .store
            .recent_bytes(collection.as_str(), public.as_bytes(), now);
        if used >= state.config.unadopted_cap_bytes {
            return Err(ApiError::retry(
                StatusCode::TOO_MANY_REQUESTS,
                3600,
                format!(
                    "instance {public} is not adopted into \"{collection}\" and has used its {} MiB allowance for 12 hours; adopt it with POST /instances (collection={collection}, instances={public})",
                    state.config.unadopted_cap_bytes >> 20
                ),
            ));
        }
    }
    let (parsed, decode_error) = {
        let headers = headers.clone();
        tokio::task::spawn_blocking(move || match body::decode(&headers, &raw, MAX_BODY_BYTES) {
            Ok(bytes) => Ok((logtail::parse_body(&bytes, now, &public), None)),
            Err(e @ body::BodyError::Corrupt(_)) => {
                // Damaged compressed data is saved as an error entry, like any bad content.
                let msg = e.message();
                let note =
                    serde_json::json!({ "logtail": { "error": { "message": msg } } }).to_string();
                Ok((logtail::parse_body(note.as_bytes(), now, &public), Some(e)))
            }
            Err(e) => Err(e),
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ingest worker failed"))?
        .map_err(|e| ApiError::new(e.status(), e.message()))?
    };
    let bytes: u64 = parsed.entries.iter().map(|e| e.json.len() as u64).sum();
    let bad_entries = parsed.error_message();
    let records: Vec<NewRecord> = parsed
        .entries
        .into_iter()
        .map(|e| NewRecord {
            time: now,
            collection: collection.to_string(),
            instance: public.0,
            identity: e.proc_id.zip(e.proc_seq),
            client_time: e.client_time,
            kind: kind::LOG,
            body: e.json,
        })
        .collect();
    let count = records.len() as u64;
    let outcome = state.store.append(records).await?;
    if outcome.stored > 0 {
        state
            .instances
            .record(collection.as_str(), public, now, count, bytes);
    }
    if let Some(e) = decode_error {
        return Err(ApiError::bad_request(format!(
            "{}; a note was saved in its place",
            e.message()
        )));
    }
    if let Some(msg) = bad_entries {
        return Err(ApiError::bad_request(msg));
    }
    let body = serde_json::json!({ "stored": outcome.stored, "duplicates": outcome.duplicates });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}
