//! `POST /c/<collection>/<private-id>`: store a log entry or a batch.

pub mod batches;
pub mod body;
pub mod budget;
pub mod instances;

use crate::AppState;
use crate::control::collections::{FLOWS_COLLECTION, is_system_collection};
use crate::error::ApiError;
use crate::ingest::batches::{BatchContents, BatchLedger};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use body::BodyError;
use std::sync::Arc;
use tally_proto::collection::RECORDINGS as RECORDINGS_COLLECTION;
use tally_proto::logtail::{self, MAX_BODY_BYTES, ParsedBody};
use tally_proto::{CollectionName, PrivateId, PublicId};
use tally_store::{NewRecord, Owner, kind};
use tally_transparency::batch::BatchCheck;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of one permit of the ingest memory budget.
const BUDGET_UNIT: usize = 1024;

/// Largest raw (possibly compressed) request body read.
const MAX_RAW_BYTES: usize = MAX_BODY_BYTES + (64 << 10);

/// Memory reserved per byte of decompressed body before the body is read:
/// the decompressed body itself plus the records built from it, for
/// entries of a typical size (≈200 B of JSON, which gain ≈130 B of
/// `server_time` and `id`, plus each record's own allocations). Once the
/// entries are counted and built, the reservation is adjusted to what they
/// hold ([`parse_need`], [`record_need`]), so a body of tiny entries
/// reserves more and a body of large ones less.
const HELD_PER_DECODED_BYTE: usize = 6;

/// glibc malloc's cost of one heap block beyond its size (header, rounding).
const ALLOC_OVERHEAD: usize = 32;

/// Stored JSON the server adds to a valid entry (the `logtail` wrapper,
/// `server_time` with nanoseconds and `id`), for the estimate made before
/// the entries are built. Error entries add more (a message): the exact
/// size is checked once they are built.
const ADDED_PER_ENTRY: usize = 160;

/// Bytes of an owner's tailnet ID in a record (`T` and 16 hex digits,
/// rounded up), for the estimate of what a record holds.
const OWNER_BYTES: usize = 24;

/// Uploads that may wait at once for more of the budget than they were
/// given (their entries turned out to need more), holding only their raw
/// body's share: any more are answered 503 at once. Waiting while holding
/// a larger share could leave uploads waiting on each other until they
/// time out.
static GROWING: Semaphore = Semaphore::const_new(4);

/// Memory an entry holds while its body is parsed, beyond its stored JSON:
/// its item in the split body, its [`logtail::IngestEntry`] and the heap
/// block of its JSON.
const PARSE_PER_ENTRY: usize =
    size_of::<&serde_json::value::RawValue>() + size_of::<logtail::IngestEntry>() + ALLOC_OVERHEAD;

/// Memory an entry holds as a record until it is written, beyond its stored
/// JSON and its collection name: its `IngestEntry` (until the records are
/// collected), its [`NewRecord`] and the heap blocks of its JSON, of its
/// collection name and of its owner's tailnet ID.
const RECORD_PER_ENTRY: usize =
    size_of::<logtail::IngestEntry>() + size_of::<NewRecord>() + 3 * ALLOC_OVERHEAD + OWNER_BYTES;

/// Permits of a budget of `bytes` (one per KiB, at least one).
pub fn budget_permits(bytes: usize) -> usize {
    (bytes / BUDGET_UNIT).clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// Bytes of memory an upload with these headers is expected to hold at
/// most, reserved before its body is read: its raw body (`Content-Length`,
/// else the largest accepted) plus [`HELD_PER_DECODED_BYTE`] times its
/// decompressed size bound (the raw size for an identity body, else
/// `Orig-Content-Length`, else the limit). A header that lies about a size
/// only makes the request fail later (413 or 400): decoding enforces the
/// same limits.
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

/// Bytes an upload holds while its body is parsed: the raw and decoded
/// bodies, and `entries` entries of `stored` bytes of JSON in all.
pub fn parse_need(raw: usize, decoded: usize, entries: usize, stored: usize) -> usize {
    raw + decoded + entries * PARSE_PER_ENTRY + stored
}

/// Bytes an upload holds from the end of parsing until its records are
/// written: `entries` records of `stored` bytes of JSON in all, each with
/// its own copy of a `collection_len`-byte collection name.
pub fn record_need(entries: usize, stored: usize, collection_len: usize) -> usize {
    entries * (RECORD_PER_ENTRY + collection_len) + stored
}

/// Bytes an upload holds at most from parsing until its records are
/// written ([`parse_need`] or [`record_need`], whichever is larger).
pub fn upload_need(
    raw: usize,
    decoded: usize,
    entries: usize,
    stored: usize,
    collection_len: usize,
) -> usize {
    parse_need(raw, decoded, entries, stored).max(record_need(entries, stored, collection_len))
}

/// [`upload_need`] estimated from the entry count before the entries are
/// built, as if they were all valid.
fn estimated_need(raw: usize, decoded: usize, entries: usize, collection_len: usize) -> usize {
    let stored = decoded + entries * ADDED_PER_ENTRY;
    upload_need(raw, decoded, entries, stored, collection_len)
}

/// An upload's share of the ingest memory budget, returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits() * BUDGET_UNIT
    }

    /// Returns what is reserved beyond `bytes` (at least one permit stays).
    fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(BUDGET_UNIT).max(1);
        if let Some(extra) = self.permit.num_permits().checked_sub(keep) {
            drop(self.permit.split(extra));
        }
    }
}

/// Permits wanted for `bytes`, at most the whole budget (an upload needing
/// more than the whole budget proceeds alone with all of it).
fn permits_for(state: &AppState, bytes: usize) -> usize {
    bytes
        .div_ceil(BUDGET_UNIT)
        .clamp(1, budget_permits(state.config.ingest_memory_budget))
}

fn busy(state: &AppState) -> ApiError {
    ApiError::retry(
        StatusCode::SERVICE_UNAVAILABLE,
        1,
        format!(
            "server is busy: uploads in progress fill its {} MiB ingest memory budget and no room was freed for this one within {} s; retry after 1 s",
            state.config.ingest_memory_budget >> 20,
            state.config.ingest_budget_wait.as_secs_f64()
        ),
    )
}

/// Waits up to `ingest_budget_wait` for `permits` permits; 503 with
/// `Retry-After` when there is no room.
async fn acquire(state: &AppState, permits: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let want = u32::try_from(permits).unwrap_or(u32::MAX);
    let wait = state.config.ingest_budget_wait;
    match tokio::time::timeout(wait, state.ingest_budget.clone().acquire_many_owned(want)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) | Err(_) => Err(busy(state)),
    }
}

/// Reserves room for an upload in the memory budget, waiting up to
/// `ingest_budget_wait`; answers 503 with `Retry-After` when there is none.
async fn reserve(state: &AppState, headers: &HeaderMap) -> Result<Reservation, ApiError> {
    let permit = acquire(state, permits_for(state, reservation(headers))).await?;
    Ok(Reservation { permit })
}

/// Permits a parsing thread took to cover its upload's need.
type Extra = Option<OwnedSemaphorePermit>;

/// Makes `held` bytes (plus `extra`) cover `need` bytes without waiting
/// (the caller holds a parsing thread); false when the budget has no room
/// now.
fn top_up(
    budget: &Arc<Semaphore>,
    total: usize,
    held: usize,
    extra: &mut Extra,
    need: usize,
) -> bool {
    let have = held / BUDGET_UNIT + extra.as_ref().map_or(0, |p| p.num_permits());
    let want = need.div_ceil(BUDGET_UNIT).clamp(1, total);
    let Some(more) = want.checked_sub(have).filter(|m| *m > 0) else {
        return true;
    };
    let Ok(more) = u32::try_from(more) else {
        return false;
    };
    match budget.clone().try_acquire_many_owned(more) {
        Ok(p) => {
            match extra {
                Some(e) => e.merge(p),
                None => *extra = Some(p),
            }
            true
        }
        Err(_) => false,
    }
}

/// What one parsing attempt did (one per attempt, moved once: its size
/// does not matter).
#[allow(clippy::large_enum_variant)]
enum Parse {
    Done {
        parsed: ParsedBody,
        decode_error: Option<BodyError>,
        batch: Option<BatchCheck>,
        extra: Extra,
    },
    /// The entries need `need` bytes and the budget had no room: the caller
    /// waits for it without holding a parsing thread, then tries again.
    NeedMore {
        need: usize,
    },
    TooMany(logtail::TooManyEntries),
}

/// One parsing attempt, on a blocking thread: decode, count the entries,
/// cover what they will hold, build them.
#[allow(clippy::too_many_arguments)]
fn parse_attempt(
    headers: &HeaderMap,
    raw: &[u8],
    now: i64,
    public: &PublicId,
    collection: &str,
    ledger: &BatchLedger,
    budget: &Arc<Semaphore>,
    total: usize,
    held: usize,
) -> Result<Parse, BodyError> {
    let bytes = match body::decode(headers, raw, MAX_BODY_BYTES) {
        Ok(b) => b,
        Err(e @ BodyError::Corrupt(_)) => {
            // Damaged compressed data is saved as an error entry, like any bad content.
            let note = serde_json::json!({ "logtail": { "error": { "message": e.message() } } })
                .to_string();
            return Ok(Parse::Done {
                parsed: logtail::parse_body(note.as_bytes(), now, public),
                decode_error: Some(e),
                batch: None,
                extra: None,
            });
        }
        Err(e) => return Err(e),
    };
    let mut extra = None;
    let split = match logtail::split_body(&bytes) {
        Ok(split) => split,
        Err(e) => return Ok(Parse::TooMany(e)),
    };
    let entries = split.entries();
    let need = estimated_need(raw.len(), bytes.len(), entries, collection.len());
    if !top_up(budget, total, held, &mut extra, need) {
        return Ok(Parse::NeedMore { need });
    }
    let parsed = split.parse(now, public);
    // Error entries can be larger than estimated (messages, escaping).
    let stored = parsed.stored_bytes();
    let need = upload_need(raw.len(), bytes.len(), entries, stored, collection.len());
    if !top_up(budget, total, held, &mut extra, need) {
        return Ok(Parse::NeedMore { need });
    }
    let batch = ledger.check(public, collection, headers, &bytes);
    Ok(Parse::Done {
        parsed,
        decode_error: None,
        batch: Some(batch),
        extra,
    })
}

/// Decodes and parses an upload on a parsing thread (one per CPU). The
/// entries are counted before they are built and `budget` is topped up to
/// what they will hold. When the budget has no room for that now, the
/// upload gives back its parsing thread and all but its raw body's share,
/// waits for the whole need (at most [`GROWING`] uploads at once, each up
/// to `ingest_budget_wait`, else 503) and parses again. On return `budget`
/// covers the records until they are written.
async fn decode_and_parse(
    state: &AppState,
    headers: &HeaderMap,
    raw: bytes::Bytes,
    now: i64,
    public: PublicId,
    collection: &str,
    budget: &mut Reservation,
) -> Result<(ParsedBody, Option<BodyError>, Option<BatchCheck>), ApiError> {
    let total = budget_permits(state.config.ingest_memory_budget);
    let mut need_seen = 0;
    let mut growing = None;
    for _attempt in 0..3 {
        // Parsing is CPU-bound: more at once than there are CPUs only adds
        // blocking threads, each with its own malloc arena (peak RSS).
        let parsing = state
            .parse_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| {
                ApiError::retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    5,
                    "server is shutting down; retry shortly",
                )
            })?;
        let (headers, body, ledger) = (headers.clone(), raw.clone(), state.batches.clone());
        let (sem, coll, held) = (
            state.ingest_budget.clone(),
            collection.to_owned(),
            budget.bytes(),
        );
        let attempt = tokio::task::spawn_blocking(move || {
            let _parsing = parsing;
            parse_attempt(
                &headers, &body, now, &public, &coll, &ledger, &sem, total, held,
            )
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ingest worker failed"))?
        .map_err(|e| ApiError::new(e.status(), e.message()))?;
        match attempt {
            Parse::Done {
                parsed,
                decode_error,
                batch,
                extra,
            } => {
                if let Some(extra) = extra {
                    budget.permit.merge(extra);
                }
                // The bodies are gone: keep what the records hold.
                budget.shrink_to(record_need(
                    parsed.entries.len(),
                    parsed.stored_bytes(),
                    collection.len(),
                ));
                return Ok((parsed, decode_error, batch));
            }
            Parse::TooMany(e) => {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()));
            }
            Parse::NeedMore { need } => {
                need_seen = need_seen.max(need);
                if growing.is_none() {
                    growing = Some(GROWING.try_acquire().map_err(|_| busy(state))?);
                }
                budget.shrink_to(raw.len());
                let more =
                    permits_for(state, need_seen).saturating_sub(budget.permit.num_permits());
                if more > 0 {
                    let extra = acquire(state, more).await?;
                    budget.permit.merge(extra);
                }
            }
        }
    }
    Err(busy(state))
}

/// Handles one upload.
pub async fn post_logs(
    State(state): State<AppState>,
    Path((collection, private_id)): Path<(String, String)>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    let label = crate::metrics::collection_label(&collection).to_owned();
    let answer = ingest(state, collection, private_id, headers, raw).await;
    let code = match &answer {
        Ok(r) => r.status(),
        Err(e) => e.status,
    };
    metrics.ingest_request(&label, code);
    answer
}

async fn ingest(
    state: AppState,
    collection: String,
    private_id: String,
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
    // Recordings (`tally record` through the agent's queue) come only from
    // registered nodes, into their own tailnet; other system collections
    // are written by the server alone.
    let recording = collection.as_str() == RECORDINGS_COLLECTION;
    if recording {
        check_recording_source(&state, &public)?;
    } else if is_system_collection(collection.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "collection \"{collection}\" is written only by the server; uploads to it are refused"
            ),
        ));
    }
    let mut owner = state.catalog.owner_of(collection.as_str(), &public);
    if owner == Owner::Unclaimed && state.shared_files.is_some() {
        // Another server may have registered or adopted it a moment ago.
        state
            .catalog
            .reload_since(std::time::Instant::now(), &state.control)
            .await
            .map_err(ApiError::from)?;
        owner = state.catalog.owner_of(collection.as_str(), &public);
    }
    check_destination(&state, &collection, &public, &owner)?;
    // Flow records of a tailnet with flow logging off are checked like any
    // batch but not stored (the batch record lists them): the agent learns
    // of the switch a moment late, and its batch chain must not show a gap.
    let discard = collection.as_str() == FLOWS_COLLECTION && !check_flow_source(&state, &public)?;
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
    let mut budget = reserve(&state, &headers).await?;
    // Compressed bodies are smaller than the decompressed limit; identity bodies are checked again after.
    let raw = body::read_limited(raw, MAX_RAW_BYTES).await?;
    if state.shared_files.is_some()
        && state
            .batches
            .is_behind(&public, collection.as_str(), &headers)
    {
        crate::consumers::batch_chains::catch_up(&state).await;
    }
    let (parsed, decode_error, batch) = decode_and_parse(
        &state,
        &headers,
        raw,
        now,
        public,
        collection.as_str(),
        &mut budget,
    )
    .await?;
    let intervals = if collection.as_str() == FLOWS_COLLECTION {
        check_flow_records(&parsed.entries)?
    } else {
        Vec::new()
    };
    if recording {
        check_recording_entries(&parsed.entries)?;
    }
    if discard {
        return discard_flows(
            &state,
            &public,
            &owner,
            &parsed,
            batch.as_ref(),
            &intervals,
            now,
            crate::ingest::batches::sent_at(&headers, now),
        )
        .await;
    }
    let bytes: u64 = parsed.entries.iter().map(|e| e.json.len() as u64).sum();
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
        && let Some(mut r) = state.batches.record(
            check,
            &public,
            collection.as_str(),
            now,
            BatchContents {
                entries: records.len(),
                discarded: None,
                sent_at: crate::ingest::batches::sent_at(&headers, now),
            },
        )
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
        crate::ingest::batches::verdict_name(&check.verdict)
    });
    state.metrics.ingest_stored(
        collection.as_str(),
        outcome.stored as u64,
        outcome.duplicates as u64,
        bytes,
    );
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
) -> Result<Option<crate::ingest::budget::Reservation>, ApiError> {
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
    match state.budgets.reserve(&*state.store, key, bytes, limit, now) {
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
/// Returns each record's interval (start, end).
fn check_flow_records(entries: &[logtail::IngestEntry]) -> Result<Vec<(u64, u64)>, ApiError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            serde_json::from_slice::<tally_proto::flow::FlowRecord>(&e.json)
                .map(|r| (r.start, r.end))
                .map_err(|err| {
                    ApiError::bad_request(format!(
                        "entry {i} is not a flow record ({err}); nothing of this upload was stored"
                    ))
                })
        })
        .collect()
}

/// Header of an answer whose records were checked but not stored: how
/// many.
pub const DISCARDED_HEADER: &str = "tally-discarded";

/// Stores, for a flow upload of a tailnet with flow logging off, only its
/// batch record (verdict as for any batch, plus the records it discards),
/// and answers 200 `{"stored":1,"duplicates":0,"discarded":N,"reason":"flow_logging_off"}`
/// (`stored`: the batch record, 0 for an unsigned upload)
/// with `Tally-Discarded: N` and the verdict: final, not to be sent again.
#[allow(clippy::too_many_arguments)]
async fn discard_flows(
    state: &AppState,
    public: &PublicId,
    owner: &Owner,
    parsed: &ParsedBody,
    batch: Option<&BatchCheck>,
    intervals: &[(u64, u64)],
    now: i64,
    sent_at: Option<i64>,
) -> Result<Response, ApiError> {
    use crate::ingest::batches::{DISCARD_FLOW_LOGGING_OFF, DiscardedRecord};
    let discarded: Vec<DiscardedRecord> = parsed
        .entries
        .iter()
        .zip(intervals)
        .map(|(e, &(start, end))| DiscardedRecord {
            proc_id: e.proc_id.unwrap_or(0),
            proc_seq: e.proc_seq.unwrap_or(0),
            start,
            end,
        })
        .collect();
    let n = discarded.len();
    let record = batch.and_then(|check| {
        state.batches.record(
            check,
            public,
            FLOWS_COLLECTION,
            now,
            BatchContents {
                entries: 0,
                discarded: Some((discarded, DISCARD_FLOW_LOGGING_OFF)),
                sent_at,
            },
        )
    });
    let (mut verdict, mut stored) = (None, 0);
    if let (Some(mut r), Some(check)) = (record, batch) {
        r.owner = owner.clone();
        let collection = CollectionName::parse(FLOWS_COLLECTION)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        // The batch record is what is stored: budgets apply to it.
        let _spent = check_budgets(state, &collection, public, owner, r.body.len() as u64, now)?;
        stored = state.store.append(vec![r]).await?.stored;
        state.batches.apply(public, FLOWS_COLLECTION, check);
        if check.verdict.is_suspicious() {
            tracing::warn!(
                instance = %public, collection = FLOWS_COLLECTION,
                "upload batch flagged: {:?}", check.verdict
            );
        }
        verdict = Some(crate::ingest::batches::verdict_name(&check.verdict));
    }
    tracing::info!(
        instance = %public,
        discarded = n,
        "flow records discarded: their tailnet has flow logging off"
    );
    let body = serde_json::json!({
        // The batch record, when there is one.
        "stored": stored,
        "duplicates": 0,
        "discarded": n,
        "reason": DISCARD_FLOW_LOGGING_OFF,
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(DISCARDED_HEADER, axum::http::HeaderValue::from(n));
    if let Some(v) = verdict
        && let Ok(h) = axum::http::HeaderValue::from_str(v)
    {
        resp.headers_mut().insert("tally-batch-verdict", h);
    }
    Ok(resp)
}

/// Recording chunks come only from registered nodes (`tally record` on a
/// node, through its agent): anything else is refused (403) with what to
/// do. The node's tailnet owns them ([`crate::control::catalog::Catalog::owner_of`]).
fn check_recording_source(state: &AppState, instance: &PublicId) -> Result<(), ApiError> {
    if state.catalog.node(instance).is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "instance {instance} is not a registered node; recordings are accepted only from agents registered with --auth-key (tally record on that node)"
            ),
        ));
    }
    Ok(())
}

/// Longest recording ID accepted from a node.
const MAX_RECORDING_ID: usize = 64;

/// Every entry uploaded to `recordings` must be a chunk
/// `{"recording","seq","offset","data"}` or an end record
/// `{"recording","seq","end":true,"complete","bytes"}`, as the recorder
/// stores them; otherwise nothing is stored and the answer says which entry
/// is wrong.
fn check_recording_entries(entries: &[logtail::IngestEntry]) -> Result<(), ApiError> {
    for (i, e) in entries.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap_or_default();
        let id_ok = v["recording"].as_str().is_some_and(|id| {
            !id.is_empty()
                && id.len() <= MAX_RECORDING_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        let shape_ok = e.proc_id.is_some()
            && e.proc_seq.is_some()
            && v["seq"].as_u64().is_some_and(|s| s > 0)
            && if v["end"] == true {
                v["complete"].is_boolean() && v["bytes"].is_u64()
            } else {
                v["data"].is_string() && v["offset"].is_u64()
            };
        if !id_ok || !shape_ok {
            return Err(ApiError::bad_request(format!(
                "entry {i} is not a recording chunk ({{\"recording\",\"seq\",\"offset\",\"data\"}}) nor an end record ({{\"recording\",\"seq\",\"end\":true,\"complete\",\"bytes\"}}) with logtail.proc_id and proc_seq; nothing of this upload was stored"
            )));
        }
    }
    Ok(())
}

/// Flow records come only from registered agents: anything else is refused
/// (403) with what to do. Returns whether the node's tailnet has flow
/// logging on (when off, the upload is checked but not stored).
fn check_flow_source(state: &AppState, instance: &PublicId) -> Result<bool, ApiError> {
    let Some(node) = state.catalog.node(instance) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "instance {instance} is not a registered node; flow logs come from agents registered with --auth-key"
            ),
        ));
    };
    Ok(state.catalog.flow_logging(&node.tailnet_id))
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
        assert_eq!(reservation(&zstd), 25_000 + 6 * 193_000);
        let identity = headers(&[("content-length", "1000")]);
        assert_eq!(reservation(&identity), 1000 + 6 * 1000);
        // Unknown sizes, or sizes past the limits, count as the limits.
        let unknown = headers(&[("content-encoding", "gzip")]);
        assert_eq!(reservation(&unknown), MAX_RAW_BYTES + 6 * MAX_BODY_BYTES);
        let lying = headers(&[
            ("content-length", "99999999"),
            ("content-encoding", "zstd"),
            ("orig-content-length", "99999999"),
        ]);
        assert_eq!(reservation(&lying), reservation(&unknown));
        assert_eq!(budget_permits(32 << 20), 32 << 10);
        assert_eq!(budget_permits(0), 1);
    }

    #[test]
    fn needs_follow_the_entries_and_the_worst_body_fits_the_default_budget() {
        let exact = |body: &str| {
            let parsed = logtail::parse_body(body.as_bytes(), 0, &PublicId([1; 32]));
            let (n, stored) = (parsed.entries.len(), parsed.stored_bytes());
            (n, upload_need(0, body.len(), n, stored, 8))
        };
        // Entries of 100 B and more: the reservation made from the headers
        // covers the estimate and the exact need, so they never wait twice.
        for text in [10, 160, 2000] {
            let entry = format!(
                r#"{{"logtail":{{"client_time":"2024-01-01T00:00:00.123456789Z","proc_id":1,"proc_seq":2}},"text":"{}"}}"#,
                "x".repeat(text)
            );
            let body = format!(
                "[{}]",
                vec![entry.as_str(); 200_000 / entry.len()].join(",")
            );
            let (n, need) = exact(&body);
            let initial = body.len() * HELD_PER_DECODED_BYTE;
            let estimate = estimated_need(0, body.len(), n, 8);
            assert!(
                need <= estimate,
                "{} B entries: {need} > {estimate}",
                entry.len()
            );
            assert!(
                estimate <= initial,
                "{} B entries: {estimate} > {initial}",
                entry.len()
            );
        }
        // The costliest bodies the parser accepts: the most tiny entries, or
        // the most error entries (each with a message). Each needs far more
        // than its body, and fits a quarter of the default budget.
        let budget = crate::ServerConfig::new("127.0.0.1:0".parse().unwrap(), "x".into())
            .ingest_memory_budget;
        for entry in ["{}", "0", r#"{"a":1,"a":1}"#] {
            let body = format!("[{}]", vec![entry; logtail::MAX_ENTRIES].join(","));
            let (_, need) = exact(&body);
            assert!(need > 40 * body.len(), "{entry}: {need}");
            assert!(need < budget / 4, "{entry}: {need}");
        }
    }

    #[tokio::test]
    async fn bodies_of_tiny_entries_reserve_what_their_records_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
        config.ingest_memory_budget = 8 << 20;
        config.ingest_budget_wait = Duration::from_millis(300);
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
        let tiny = |n: usize| {
            let json = format!("[{}]", vec!["{}"; n].join(","));
            (
                zstd::bulk::compress(json.as_bytes(), 3).unwrap(),
                json.len(),
            )
        };
        let post = |(body, orig): (Vec<u8>, usize)| {
            client
                .post(&url)
                .header("content-encoding", "zstd")
                .header("orig-content-length", orig.to_string())
                .body(body)
                .send()
        };

        // 10,000 entries in a 30 KB body (a few hundred bytes compressed):
        // the reservation made from the headers fits in the 1 MiB left, the
        // records' ≈3.5 MB do not: the upload waits, then gets 503.
        let all_but_1mib = state
            .ingest_budget
            .clone()
            .acquire_many_owned(u32::try_from(budget_permits(7 << 20)).unwrap())
            .await
            .unwrap();
        let resp = post(tiny(logtail::MAX_ENTRIES)).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        drop(all_but_1mib);
        let resp = post(tiny(logtail::MAX_ENTRIES)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["stored"], logtail::MAX_ENTRIES);
        // One more entry is refused whole, before any entry is built.
        let resp = post(tiny(logtail::MAX_ENTRIES + 1)).await.unwrap();
        assert_eq!(resp.status(), 413);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("more than 10000 entries"),
            "{body}"
        );
        assert_eq!(
            state.ingest_budget.available_permits(),
            budget_permits(8 << 20)
        );
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();
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
