//! `POST /c/<collection>/<private-id>`: store a log entry or a batch.

use crate::AppState;
use crate::body;
use crate::control::collections::{FLOWS_COLLECTION, is_system_collection};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_proto::logtail::{self, MAX_BODY_BYTES};
use tally_proto::{CollectionName, PrivateId, PublicId};
use tally_store::{NewRecord, Owner, kind};
use tokio::sync::OwnedSemaphorePermit;

/// Bytes of one permit of the ingest memory budget.
const BUDGET_UNIT: usize = 1024;

/// Largest raw (possibly compressed) request body read.
const MAX_RAW_BYTES: usize = MAX_BODY_BYTES + (64 << 10);

/// Memory held per byte of decompressed body: the decompressed body itself,
/// plus the records built from it until they are written. Records are about
/// twice the JSON: the stored entry gains `server_time` and `id` (≈105 B on
/// ≈200 B entries), and each record has its own allocations and fixed fields.
const HELD_PER_DECODED_BYTE: usize = 3;

/// Permits of a budget of `bytes` (one per KiB, at least one).
pub fn budget_permits(bytes: usize) -> usize {
    (bytes / BUDGET_UNIT).clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// Bytes of memory an upload with these headers is expected to hold at
/// most: its raw body (`Content-Length`, else the largest accepted) plus
/// [`HELD_PER_DECODED_BYTE`] times its decompressed size bound (the raw size
/// for an identity body, else `Orig-Content-Length`, else the limit). A
/// header that lies about a size only makes the request fail later (413 or
/// 400): decoding enforces the same limits.
pub fn reservation(headers: &HeaderMap) -> usize {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<usize>().ok())
    };
    let raw =
        number(header::CONTENT_LENGTH.as_str()).map_or(MAX_RAW_BYTES, |n| n.min(MAX_RAW_BYTES));
    let identity = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"));
    let decoded = if identity {
        raw.min(MAX_BODY_BYTES)
    } else {
        number("orig-content-length").map_or(MAX_BODY_BYTES, |n| n.min(MAX_BODY_BYTES))
    };
    raw + decoded * HELD_PER_DECODED_BYTE
}

/// Reserves room for an upload in the memory budget, waiting up to
/// `ingest_budget_wait`; answers 503 with `Retry-After` when there is none.
async fn reserve(state: &AppState, headers: &HeaderMap) -> Result<OwnedSemaphorePermit, ApiError> {
    let total = budget_permits(state.config.ingest_memory_budget);
    let want = reservation(headers).div_ceil(BUDGET_UNIT).clamp(1, total);
    let want = u32::try_from(want).unwrap_or(u32::MAX);
    let wait = state.config.ingest_budget_wait;
    let busy = || {
        ApiError::retry(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            format!(
                "server is busy: uploads in progress fill its {} MiB ingest memory budget and no room was freed for this one within {} s; retry after 1 s",
                state.config.ingest_memory_budget >> 20,
                wait.as_secs_f64()
            ),
        )
    };
    match tokio::time::timeout(wait, state.ingest_budget.clone().acquire_many_owned(want)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) | Err(_) => Err(busy()),
    }
}

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
    if is_system_collection(collection.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "collection \"{collection}\" is written only by the server; uploads to it are refused"
            ),
        ));
    }
    let owner = state.catalog.owner_of(collection.as_str(), &public);
    check_destination(&state, &collection, &public, &owner)?;
    if collection.as_str() == FLOWS_COLLECTION {
        check_flow_source(&state, &public)?;
    }
    let Ok(_permit) = state.ingest_slots.clone().try_acquire_owned() else {
        return Err(ApiError::retry(
            StatusCode::TOO_MANY_REQUESTS,
            1,
            "too many uploads in progress; retry after 1 s",
        ));
    };
    let now = tally_proto::timefmt::now_nanos();
    // A spent budget is refused before the body is read.
    check_budgets(&state, &collection, &public, &owner, 0, now)?;
    // Held until the records are written: memory is bounded by bytes, not by request count.
    let _budget = reserve(&state, &headers).await?;
    // Compressed bodies are smaller than the decompressed limit; identity bodies are checked again after.
    let raw = body::read_limited(raw, MAX_RAW_BYTES).await?;
    let (parsed, decode_error, batch) = {
        let headers = headers.clone();
        // Parsing is CPU-bound: more at once than there are CPUs only adds
        // blocking threads, each with its own malloc arena (peak RSS).
        let _parsing = state.parse_slots.acquire().await.map_err(|_| {
            ApiError::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                5,
                "server is shutting down; retry shortly",
            )
        })?;
        let ledger = state.batches.clone();
        let coll = collection.to_string();
        tokio::task::spawn_blocking(move || match body::decode(&headers, &raw, MAX_BODY_BYTES) {
            Ok(bytes) => Ok((
                logtail::parse_body(&bytes, now, &public),
                None,
                Some(ledger.check(&public, &coll, &headers, &bytes)),
            )),
            Err(e @ body::BodyError::Corrupt(_)) => {
                // Damaged compressed data is saved as an error entry, like any bad content.
                let msg = e.message();
                let note =
                    serde_json::json!({ "logtail": { "error": { "message": msg } } }).to_string();
                Ok((
                    logtail::parse_body(note.as_bytes(), now, &public),
                    Some(e),
                    None,
                ))
            }
            Err(e) => Err(e),
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ingest worker failed"))?
        .map_err(|e| ApiError::new(e.status(), e.message()))?
    };
    let bytes: u64 = parsed.entries.iter().map(|e| e.json.len() as u64).sum();
    if collection.as_str() == FLOWS_COLLECTION {
        check_flow_records(&parsed.entries)?;
    }
    // The exact bytes are reserved against the budgets until they are written.
    let _spent = check_budgets(&state, &collection, &public, &owner, bytes, now)?;
    let bad_entries = parsed.error_message();
    let records: Vec<NewRecord> = parsed
        .entries
        .into_iter()
        .map(|e| NewRecord {
            time: now,
            collection: collection.to_string(),
            owner: owner.clone(),
            instance: public.0,
            identity: e.proc_id.zip(e.proc_seq),
            client_time: e.client_time,
            kind: kind::LOG,
            body: e.json,
        })
        .collect();
    let count = records.len() as u64;
    let mut records = records;
    if let Some(check) = &batch
        && let Some(mut r) =
            state
                .batches
                .record(check, &public, collection.as_str(), now, records.len())
    {
        r.owner = owner.clone();
        records.push(r);
    }
    let outcome = state.store.append(records).await?;
    let signed = |c: &&tally_transparency::batch::BatchCheck| {
        !matches!(
            c.verdict,
            tally_transparency::batch::Verdict::Unsigned {
                key_registered: false
            }
        )
    };
    let verdict = batch.as_ref().filter(signed).map(|check| {
        state.batches.apply(&public, collection.as_str(), check);
        if check.verdict.is_suspicious() {
            tracing::warn!(
                instance = %public, collection = %collection,
                "upload batch flagged: {:?}", check.verdict
            );
        }
        crate::batches::verdict_name(&check.verdict)
    });
    if outcome.stored > 0 {
        state
            .instances
            .record(&owner, collection.as_str(), public, now, count, bytes);
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
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    if let Some(v) = verdict
        && let Ok(h) = axum::http::HeaderValue::from_str(v)
    {
        resp.headers_mut().insert("tally-batch-verdict", h);
    }
    Ok(resp)
}

/// The upload's collection must exist where it goes: in its owner's
/// tailnet, or (for an unclaimed instance) in some tailnet, where it may
/// be adopted later; a server run with `--registered-only` refuses
/// unclaimed instances altogether.
fn check_destination(
    state: &AppState,
    collection: &CollectionName,
    public: &PublicId,
    owner: &Owner,
) -> Result<(), ApiError> {
    match owner {
        Owner::Tailnet(t) if !state.catalog.has_collection(t, collection.as_str()) => {
            Err(ApiError::not_found(format!(
                "collection \"{collection}\" does not exist in this instance's tailnet; an admin creates it with POST /collections (collection={collection}, action=create)"
            )))
        }
        Owner::Tailnet(_) => Ok(()),
        _ if state.config.registered_only => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this server accepts uploads only from registered nodes and adopted instances; register the agent with --auth-key, or have an admin adopt instance {public} (POST /instances)"
            ),
        )),
        _ if !state.catalog.exists_anywhere(collection.as_str()) => {
            Err(ApiError::not_found(format!(
                "collection \"{collection}\" does not exist; an admin creates it with POST /collections (collection={collection}, action=create)"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks the ingest budgets for `bytes` more of this upload (0: only
/// whether a budget is already spent): an unclaimed instance's own cap per
/// collection, the server-wide budget of all unclaimed instances, and the
/// owner tailnet's budget. The returned reservation holds `bytes` against
/// the budgets until it is dropped (after the records are written), so
/// uploads in flight cannot overshoot them together.
fn check_budgets(
    state: &AppState,
    collection: &CollectionName,
    public: &PublicId,
    owner: &Owner,
    bytes: u64,
    now: i64,
) -> Result<Option<crate::budget::Reservation>, ApiError> {
    let config = &state.config;
    let (key, limit) = match owner {
        Owner::Tailnet(t) => match config.tailnet_budget_bytes {
            Some(limit) => (t.as_str(), limit),
            None => return Ok(None),
        },
        _ => {
            let used = state
                .store
                .recent_bytes(collection.as_str(), public.as_bytes(), now);
            if used.saturating_add(bytes) > config.unadopted_cap_bytes {
                return Err(ApiError::retry(
                    StatusCode::TOO_MANY_REQUESTS,
                    3600,
                    format!(
                        "instance {public} belongs to no tailnet and has used its {} MiB allowance for 12 hours in \"{collection}\"; register the agent with --auth-key, or adopt the instance with POST /instances (collection={collection}, instances={public})",
                        config.unadopted_cap_bytes >> 20
                    ),
                ));
            }
            ("", config.unclaimed_budget_bytes)
        }
    };
    match state.budgets.reserve(&state.store, key, bytes, limit, now) {
        Some(r) => Ok(Some(r)),
        None if key.is_empty() => Err(ApiError::retry(
            StatusCode::TOO_MANY_REQUESTS,
            600,
            format!(
                "uploads from instances that belong to no tailnet have used this server's {} MiB budget for 12 hours; register the agent with --auth-key, or have an admin adopt instance {public} (POST /instances)",
                limit >> 20
            ),
        )),
        None => Err(ApiError::retry(
            StatusCode::TOO_MANY_REQUESTS,
            600,
            format!(
                "this instance's tailnet has used its ingest budget of {} MiB per 12 hours; the server's operator sets it (--tailnet-budget-mb)",
                limit >> 20
            ),
        )),
    }
}

/// Every entry uploaded to the flow-log collection must be a flow record;
/// otherwise nothing is stored and the answer says which entry is wrong.
fn check_flow_records(entries: &[logtail::IngestEntry]) -> Result<(), ApiError> {
    for (i, e) in entries.iter().enumerate() {
        if let Err(err) = serde_json::from_slice::<tally_flow::FlowRecord>(&e.json) {
            return Err(ApiError::bad_request(format!(
                "entry {i} is not a flow record ({err}); nothing of this upload was stored"
            )));
        }
    }
    Ok(())
}

/// Flow records come only from registered agents of tailnets with flow
/// logging on; anything else is refused (403) with what to do.
fn check_flow_source(state: &AppState, instance: &PublicId) -> Result<(), ApiError> {
    let Some(node) = state.catalog.node(instance) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "instance {instance} is not a registered node; flow logs come from agents registered with --auth-key"
            ),
        ));
    };
    if !state.catalog.flow_logging(&node.tailnet_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "flow logging is off for tailnet {}; an admin turns it on with `tally settings set --flow-logging on` (PATCH /api/v2/tailnet/-/settings {{\"networkFlowLoggingOn\":true}})",
                node.tailnet_id
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Server, ServerConfig};
    use axum::http::HeaderValue;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reservations_follow_the_declared_sizes_and_fall_back_to_the_limits() {
        let zstd = headers(&[
            ("content-length", "25000"),
            ("content-encoding", "zstd"),
            ("orig-content-length", "193000"),
        ]);
        assert_eq!(reservation(&zstd), 25_000 + 3 * 193_000);
        let identity = headers(&[("content-length", "1000")]);
        assert_eq!(reservation(&identity), 1000 + 3 * 1000);
        // Unknown sizes, or sizes past the limits, count as the limits.
        let unknown = headers(&[("content-encoding", "gzip")]);
        assert_eq!(reservation(&unknown), MAX_RAW_BYTES + 3 * MAX_BODY_BYTES);
        let lying = headers(&[
            ("content-length", "99999999"),
            ("content-encoding", "zstd"),
            ("orig-content-length", "99999999"),
        ]);
        assert_eq!(reservation(&lying), reservation(&unknown));
        assert_eq!(budget_permits(32 << 20), 32 << 10);
        assert_eq!(budget_permits(0), 1);
    }

    #[tokio::test]
    async fn uploads_wait_for_the_memory_budget_then_get_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
        config.ingest_memory_budget = 4 << 20;
        config.ingest_budget_wait = Duration::from_secs(2);
        config.bootstrap_key = Some("0123456789abcdef0123".into());
        let server = Server::bind(config).await.unwrap();
        let state = server.state.clone();
        let url = format!(
            "http://{}/c/tailnode/{}",
            server.local_addr().unwrap(),
            PrivateId::generate().to_hex()
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let post = {
            let (client, url) = (client.clone(), url.clone());
            move || client.post(&url).body(r#"[{"text":"hello"}]"#).send()
        };

        // The whole budget is taken: the upload waits, then is refused.
        let all = state
            .ingest_budget
            .clone()
            .acquire_many_owned(u32::try_from(budget_permits(4 << 20)).unwrap())
            .await
            .unwrap();
        let resp = post().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("ingest memory budget"),
            "{body}"
        );

        // Room freed while the upload waits: it proceeds.
        let upload = tokio::spawn(post());
        // The upload is seen waiting: a permit given back goes to the
        // waiting upload (the semaphore serves waiters first), not to the
        // free pool.
        let mut all = all;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            drop(all.split(1).unwrap());
            if state.ingest_budget.available_permits() == 0 {
                break;
            }
            all.merge(state.ingest_budget.clone().try_acquire_owned().unwrap());
            assert!(
                std::time::Instant::now() < deadline,
                "the upload never waited for the budget"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(all);
        let resp = upload.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        // Every reservation was returned.
        assert_eq!(
            state.ingest_budget.available_permits(),
            budget_permits(4 << 20)
        );
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();
    }
}
