//! `GET /api/v2/tailnet/{t}/reconciliation?start=&end=&class=&node=&incident=&limit=&cursor=`:
//! the tailnet's completeness per node and node pair (since the reconciler
//! started, plus the last hour in 10-minute buckets and its trend), the
//! findings whose window overlaps `[start, end)` grouped into incidents
//! (newest first) with a summary per class, and the findings themselves,
//! newest first, paged: `nextCursor` is given when older ones remain.
//! Every node ID comes with its name (`nodeName`, `peerName`, `names`);
//! see [`crate::consumers::reconcile_report`] for the grouping and the trend.

use crate::AppState;
use crate::api::auth::Caller;
use crate::api::query::parse_time;
use crate::consumers::reconcile::FINDINGS_COLLECTION;
use crate::consumers::reconcile_report::{
    self as report, FindingRef, INCIDENT_GAP_NS, Incident, MAX_CONNECTIONS, MAX_GROUPED, NodeMatch,
};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use tally_store::{Filter, Log, SharedLog, StoreError, kind};

/// Most incidents listed in one answer (all are counted in `summary`).
const MAX_INCIDENTS: usize = 1000;

/// What one pass over the span's findings gathered.
struct Scanned {
    /// Every matching finding counted, per class.
    counted: BTreeMap<String, u64>,
    /// The newest [`MAX_GROUPED`] matching findings.
    grouped: VecDeque<FindingRef>,
    /// Store positions of every matching finding, oldest first.
    seqs: Vec<u64>,
}

/// The findings of `tailnet` in the store whose window overlaps
/// `[start, end)`, of `class` and naming `node` when given.
fn scan_span(
    store: &dyn Log,
    filter: &Filter,
    tailnet: &str,
    (start, end): (i64, i64),
    class: Option<&str>,
    node: Option<&str>,
    now: i64,
) -> Result<Scanned, StoreError> {
    let mut s = Scanned {
        counted: BTreeMap::new(),
        grouped: VecDeque::new(),
        seqs: Vec::new(),
    };
    let mut from = 1;
    loop {
        let batch = store.scan(from, filter, 10_000, 16 << 20, now)?;
        for r in &batch.records {
            let Ok(mut f) = serde_json::from_slice::<FindingRef>(&r.rec.body) else {
                continue;
            };
            if f.tailnet != tailnet
                || f.window.start >= end
                || f.window.end <= start
                || class.is_some_and(|c| f.class != c)
                || node.is_some_and(|n| f.node != n && f.peer.as_deref() != Some(n))
            {
                continue;
            }
            f.seq = r.seq;
            *s.counted.entry(f.class.clone()).or_default() += 1;
            s.seqs.push(r.seq);
            s.grouped.push_back(f);
            if s.grouped.len() > MAX_GROUPED {
                s.grouped.pop_front();
            }
        }
        if !batch.truncated {
            break;
        }
        from = batch.next_seq;
    }
    Ok(s)
}

/// The stored findings at the positions `want` (as JSON), by position.
fn read_findings(
    store: &dyn Log,
    filter: &Filter,
    want: &BTreeSet<u64>,
    now: i64,
) -> Result<HashMap<u64, Value>, StoreError> {
    let mut out = HashMap::new();
    let (Some(&first), Some(&last)) = (want.first(), want.last()) else {
        return Ok(out);
    };
    let mut from = first;
    loop {
        let batch = store.scan(from, filter, 10_000, 16 << 20, now)?;
        for r in &batch.records {
            if want.contains(&r.seq)
                && let Ok(v) = serde_json::from_slice::<Value>(&r.rec.body)
            {
                out.insert(r.seq, v);
            }
        }
        if !batch.truncated || batch.next_seq > last {
            break;
        }
        from = batch.next_seq;
    }
    Ok(out)
}

/// `GET /api/v2/tailnet/{t}/reconciliation`.
pub async fn report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "start" | "end" | "class" | "node" | "incident" | "limit" | "cursor"
        ) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {:?}; use start, end, class, node, incident, limit, cursor",
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
    let classes = report::class_names();
    let class = q.get("class").cloned();
    if let Some(c) = &class
        && !classes.contains(&c.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "unknown class {:?}; valid classes: {}",
            c.chars().take(40).collect::<String>(),
            classes.join(", ")
        )));
    }
    let tailnet = caller.tailnet().to_owned();
    let devices = state.control.nodes(&tailnet).await?;
    let names: HashMap<String, String> = devices
        .iter()
        .map(|d| (d.id.clone(), d.name.clone()))
        .collect();
    let node = match q.get("node") {
        None => None,
        Some(given) => {
            let pairs: Vec<(String, String)> = devices
                .iter()
                .map(|d| (d.id.clone(), d.name.clone()))
                .collect();
            let given_short: String = given.chars().take(64).collect();
            match report::resolve_node(given, &pairs) {
                NodeMatch::Id(id) => Some(id),
                NodeMatch::NotFound => {
                    return Err(ApiError::not_found(format!(
                        "no node with the ID or name {given_short:?} in this tailnet; `tally nodes list` shows them (a deleted node's findings are found by its node ID)"
                    )));
                }
                NodeMatch::Ambiguous(ids) => {
                    return Err(ApiError::bad_request(format!(
                        "{} nodes are named {given_short:?} ({}); give the node ID instead",
                        ids.len(),
                        ids.join(", ")
                    )));
                }
            }
        }
    };
    let incident = q.get("incident").cloned();
    let filter = Filter {
        collections: vec![FINDINGS_COLLECTION.to_owned()],
        kinds: vec![kind::LOG],
        time_start: Some(start),
        owner: Some(tailnet.clone()),
        ..Filter::default()
    };
    let store: SharedLog = state.store.clone();
    let (scan_filter, scan_tailnet) = (filter.clone(), tailnet.clone());
    let (scan_class, scan_node) = (class.clone(), node.clone());
    let scanned = tokio::task::spawn_blocking(move || {
        scan_span(
            &*store,
            &scan_filter,
            &scan_tailnet,
            (start, end),
            scan_class.as_deref(),
            scan_node.as_deref(),
            now,
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("findings: {e}")))??;
    let total: u64 = scanned.counted.values().sum();
    let capped = scanned.seqs.len() > scanned.grouped.len();
    let grouped: Vec<FindingRef> = scanned.grouped.into_iter().collect();
    let incidents = report::group(&grouped, INCIDENT_GAP_NS);
    let class_summary = report::summary(&scanned.counted, &incidents);

    // The page: the findings of the span (or of one incident) stored
    // before the cursor, newest first.
    let mut pool: Vec<u64> = match &incident {
        Some(id) => incidents
            .iter()
            .find(|i| &i.id == id)
            .map(|i| i.members.clone())
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no incident {:?} among the findings of this span and filters; incident IDs come from this report's `incidents`",
                    id.chars().take(40).collect::<String>()
                ))
            })?,
        None => scanned.seqs,
    };
    pool.retain(|s| cursor.is_none_or(|c| *s < c));
    pool.sort_unstable_by(|a, b| b.cmp(a));
    let more = pool.len() > limit;
    pool.truncate(limit);
    let next_cursor = if more {
        pool.last().map(|s| s.to_string())
    } else {
        None
    };
    let want: BTreeSet<u64> = pool.iter().copied().collect();
    let store: SharedLog = state.store.clone();
    let mut bodies =
        tokio::task::spawn_blocking(move || read_findings(&*store, &filter, &want, now))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("findings: {e}"))
            })??;
    let incident_of: HashMap<u64, &str> = incidents
        .iter()
        .flat_map(|i| i.members.iter().map(move |s| (*s, i.id.as_str())))
        .collect();
    let findings: Vec<Value> = pool
        .iter()
        .filter_map(|seq| {
            let mut f = bodies.remove(seq)?;
            let node = f["node"].as_str().unwrap_or_default().to_owned();
            f["nodeName"] = json!(report::name_of(&node, &names));
            f["peerName"] = match f["peer"].as_str() {
                Some(p) => json!(report::name_of(p, &names)),
                None => Value::Null,
            };
            f["incident"] = json!(incident_of.get(seq));
            Some(f)
        })
        .collect();

    let incidents_json: Vec<Value> = incidents
        .iter()
        .take(MAX_INCIDENTS)
        .map(|i| incident_json(i, &names))
        .collect();
    let summary = json!({
        "findings": total,
        "incidents": incidents.len(),
        "classes": class_summary.iter().map(|(c, s)| json!({
            "class": c, "findings": s.findings, "incidents": s.incidents,
        })).collect::<Vec<_>>(),
        "incidentGapSeconds": INCIDENT_GAP_NS / 1_000_000_000,
        "grouped": grouped.len(),
        "capped": capped,
        "note": capped.then(|| format!(
            "{total} findings matched: incidents are grouped from the newest {MAX_GROUPED} only (and the per-class incident counts too); narrow the span or filter by class or node"
        )),
        "incidentsListed": incidents_json.len(),
    });

    // Completeness: nodes (and pairs) the control database still has; a
    // deleted node's findings stay, named "(deleted)".
    let summary_now = state.reconcile.summary();
    let completeness = |c: &tally_reconcile::Completeness| {
        let recent = c.recent();
        json!({
            "judged": c.judged,
            "matched": c.matched,
            "completeness": (c.judged > 0).then(|| c.ratio()),
            "firstDiscrepancy": c.first_discrepancy,
            "lastDiscrepancy": c.last_discrepancy,
            "trend": report::trend(&recent),
            "recent": recent.iter().map(|b| json!({
                "start": b.start, "judged": b.judged, "matched": b.matched,
            })).collect::<Vec<_>>(),
        })
    };
    let wanted = |n: &str| node.as_ref().is_none_or(|want| want == n);
    let nodes: Vec<Value> = summary_now
        .nodes
        .iter()
        .filter(|(t, n, _)| *t == tailnet && names.contains_key(n) && wanted(n))
        .map(|(_, n, c)| {
            let mut v = completeness(c);
            v["node"] = json!(n);
            v["nodeName"] = json!(names.get(n));
            v
        })
        .collect();
    let pairs: Vec<Value> = summary_now
        .pairs
        .iter()
        .filter(|(t, a, b, _)| {
            *t == tailnet
                && names.contains_key(a)
                && names.contains_key(b)
                && (wanted(a) || wanted(b))
        })
        .map(|(_, a, b, c)| {
            let mut v = completeness(c);
            v["nodes"] = json!([a, b]);
            v["names"] = json!([names.get(a), names.get(b)]);
            v
        })
        .collect();
    Ok(Json(json!({
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(end),
        "summary": summary,
        "incidents": incidents_json,
        "nodes": nodes,
        "pairs": pairs,
        "findings": findings,
        "nextCursor": next_cursor,
    }))
    .into_response())
}

/// One incident in the answer.
fn incident_json(i: &Incident, names: &HashMap<String, String>) -> Value {
    json!({
        "id": i.id,
        "node": i.node,
        "nodeName": report::name_of(&i.node, names),
        "class": i.class,
        "severity": i.severity,
        "window": { "start": i.start, "end": i.end },
        "durationSeconds": (i.end - i.start) as f64 / 1e9,
        "findings": i.findings,
        "firstFinding": i.first_finding,
        "lastFinding": i.last_finding,
        "peers": i.peers.iter().map(|p| json!({
            "id": p, "name": report::name_of(p, names),
        })).collect::<Vec<_>>(),
        "connections": {
            "count": i.connections.len(),
            "list": i.connections.iter().take(MAX_CONNECTIONS).collect::<Vec<_>>(),
        },
    })
}
