//! Detection rules and alerts.
//!
//! - `GET|POST /api/v2/tailnet/{t}/detection/rules`: the tailnet's rules
//!   (built-in ones with their enabled flag, and its own); POST a Sigma
//!   YAML file (raw, or JSON `{"yaml": ..., "enabled": ...}`). A bad rule is
//!   a 400 `{"error": "line N: ...", "line": N}`.
//! - `GET|PUT|DELETE .../detection/rules/{ruleId}`: one rule (with its
//!   YAML); PUT a new YAML and/or `{"enabled": bool}` (built-in rules:
//!   only `enabled`); built-in rules cannot be deleted (disable them).
//! - `POST .../detection/rules/test`: runs a rule over the tailnet's stored
//!   records since `since` (e.g. `24h`) and streams NDJSON: `{"progress"}`
//!   lines, one `{"alert"}` per alert it would have raised, then `{"done"}`.
//! - `GET /api/v2/tailnet/{t}/alerts?start=&end=&severity=&rule=&node=&status=&limit=&cursor=`:
//!   alerts newest first, paged (`nextCursor`), each with its status.
//! - `POST .../alerts/{alertId}/ack`: acknowledges an alert (`{"note"}`).

use crate::AppState;
use crate::api::auth::Caller;
use crate::api::query::parse_time;
use crate::consumers::detection::{feed, read_directories};
use crate::control::detection::{AckRow, RuleRow};
use crate::error::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tally_detect::{Detector, DetectorConfig, Rule, RuleError};
use tally_proto::alert::{Alert, AlertSeverity};
use tally_proto::collection::ALERTS;
use tally_store::{Filter, kind};

/// Most alerts one page holds.
const MAX_PAGE: usize = 1000;
/// Default page size.
const DEFAULT_PAGE: usize = 100;

fn rule_error(e: &RuleError) -> Response {
    let body = json!({ "error": e.to_string(), "line": e.line });
    let mut resp = (StatusCode::BAD_REQUEST, Json(body)).into_response();
    resp.extensions_mut()
        .insert(crate::error::ErrorMessage(e.to_string()));
    resp
}

fn rfc(ns: i64) -> String {
    tally_proto::timefmt::format_nanos(ns)
}

fn view(rule: &Rule, builtin: bool, row: Option<&RuleRow>, with_yaml: bool) -> Value {
    let mut v = json!({
        "id": rule.id,
        "title": rule.title,
        "level": rule.level.name(),
        "builtin": builtin,
        "enabled": row.is_none_or(|r| r.enabled),
        "correlation": rule.correlation,
        "services": rule.services.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "description": rule.description.trim(),
        "falsepositives": rule.falsepositives,
        "tags": rule.tags,
        "suppressSeconds": rule.suppress_secs,
        "groupBy": rule.group_by,
    });
    if let Some(r) = row {
        v["created"] = json!(rfc(r.created));
        v["updated"] = json!(rfc(r.updated));
    }
    if with_yaml {
        v["yaml"] = json!(rule.yaml);
    }
    v
}

/// The tailnet's rules as views: built-in first, then its own (a stored
/// rule that no longer parses is listed with its error).
async fn rule_views(state: &AppState, tailnet: &str) -> Result<Vec<(String, Value)>, ApiError> {
    let rows = state.control.detection_rules(tailnet).await?;
    let by_id: HashMap<&str, &RuleRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = Vec::new();
    for r in state.detection.builtin() {
        out.push((
            r.id.clone(),
            view(r, true, by_id.get(r.id.as_str()).copied(), false),
        ));
    }
    for row in rows.iter().filter(|r| !r.yaml.is_empty()) {
        match tally_detect::parse_rule(&row.yaml) {
            Ok(r) => out.push((row.id.clone(), view(&r, false, Some(row), false))),
            Err(e) => out.push((
                row.id.clone(),
                json!({ "id": row.id, "builtin": false, "enabled": row.enabled, "error": e.to_string() }),
            )),
        }
    }
    Ok(out)
}

/// `GET .../detection/rules`.
pub async fn list_rules(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let rules: Vec<Value> = rule_views(&state, caller.tailnet())
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    Ok(Json(json!({ "rules": rules })).into_response())
}

/// A rule body: raw YAML, or JSON `{"yaml", "enabled"}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    #[serde(default)]
    yaml: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

async fn rule_body(headers: &HeaderMap, body: Body) -> Result<RuleBody, ApiError> {
    let limit = tally_detect::rules::MAX_RULE_BYTES + 4096;
    let bytes = crate::ingest::body::read_limited(body, limit).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("the rule is not UTF-8 text"))?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not valid JSON for this call ({{\"yaml\": \"...\", \"enabled\": true}}): {e}"
            ))
        })
    } else {
        Ok(RuleBody {
            yaml: Some(text.to_owned()),
            enabled: None,
        })
    }
}

/// `POST .../detection/rules`.
pub async fn add_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = rule_body(&headers, body).await?;
    let Some(yaml) = b.yaml else {
        return Err(ApiError::bad_request(
            "give the rule's YAML (the body, or \"yaml\" in JSON)",
        ));
    };
    let rule = match tally_detect::parse_rule(&yaml) {
        Ok(r) => r,
        Err(e) => return Ok(rule_error(&e)),
    };
    if tally_detect::builtin::is_builtin(&rule.id) {
        return Err(ApiError::bad_request(format!(
            "rule IDs starting with tally- are reserved for built-in rules; give {} another id",
            rule.id
        )));
    }
    let own = state
        .control
        .detection_rules(caller.tailnet())
        .await?
        .iter()
        .filter(|r| !r.yaml.is_empty())
        .count();
    if own >= crate::consumers::detection::MAX_OWN_RULES {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the tailnet has {own} rules of its own, the most allowed; delete unused ones first"
            ),
        ));
    }
    check_together(&state, caller.tailnet(), Some(&rule)).await?;
    let enabled = b.enabled.unwrap_or(true);
    let row = state
        .control
        .add_detection_rule(
            caller.tailnet(),
            &caller.ctx,
            (&rule.id, &rule.title),
            &yaml,
            enabled,
        )
        .await?;
    state.detection.rules_changed();
    Ok((
        StatusCode::CREATED,
        Json(view(&rule, false, Some(&row), true)),
    )
        .into_response())
}

/// Checks that the tailnet's rules with `added` compile as one set (IDs
/// unique across files).
async fn check_together(
    state: &AppState,
    tailnet: &str,
    added: Option<&Rule>,
) -> Result<(), ApiError> {
    let rows = state.control.detection_rules(tailnet).await?;
    let rows: Vec<RuleRow> = rows
        .into_iter()
        .filter(|r| added.is_none_or(|a| a.id != r.id))
        .collect();
    let (mut rules, _) = state.detection.effective(&rows);
    if let Some(a) = added {
        rules.push(Arc::new(a.clone()));
    }
    let mut d = Detector::new(DetectorConfig::default(), Vec::new());
    d.set_rules(tailnet, rules)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))
}

/// The rule `id` of the tailnet: (rule, built-in, its row).
async fn find_rule(
    state: &AppState,
    tailnet: &str,
    id: &str,
) -> Result<(Rule, bool, Option<RuleRow>), ApiError> {
    let row = state
        .control
        .detection_rules(tailnet)
        .await?
        .into_iter()
        .find(|r| r.id == id);
    if let Some(r) = state.detection.builtin().iter().find(|r| r.id == id) {
        return Ok(((**r).clone(), true, row));
    }
    let Some(row) = row else {
        return Err(ApiError::not_found(format!(
            "detection rule {id} (GET .../detection/rules lists them)"
        )));
    };
    let rule = tally_detect::parse_rule(&row.yaml).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("the stored rule {id} does not load: {e}; replace it with PUT"),
        )
    })?;
    Ok((rule, false, Some(row)))
}

/// `GET .../detection/rules/{ruleId}`.
pub async fn get_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = params.get("ruleId").cloned().unwrap_or_default();
    let (rule, builtin, row) = find_rule(&state, caller.tailnet(), &id).await?;
    Ok(Json(view(&rule, builtin, row.as_ref(), true)).into_response())
}

/// `PUT .../detection/rules/{ruleId}`.
pub async fn update_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = params.get("ruleId").cloned().unwrap_or_default();
    let (old, builtin, _) = find_rule(&state, caller.tailnet(), &id).await?;
    let b = rule_body(&headers, body).await?;
    if b.yaml.is_none() && b.enabled.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give the YAML and/or {\"enabled\": true|false}",
        ));
    }
    let mut rule = old;
    if let Some(yaml) = &b.yaml {
        if builtin {
            return Err(ApiError::bad_request(format!(
                "{id} is built in: only enabled may change; copy it with another id to change it"
            )));
        }
        rule = match tally_detect::parse_rule(yaml) {
            Ok(r) => r,
            Err(e) => return Ok(rule_error(&e)),
        };
        if rule.id != id {
            return Err(ApiError::bad_request(format!(
                "the YAML's id is {}, the path's {id}: they must agree",
                rule.id
            )));
        }
        check_together(&state, caller.tailnet(), Some(&rule)).await?;
    }
    let row = state
        .control
        .update_detection_rule(
            caller.tailnet(),
            &caller.ctx,
            (&id, &rule.title, builtin),
            b.yaml.as_deref(),
            b.enabled,
        )
        .await?;
    state.detection.rules_changed();
    Ok(Json(view(&rule, builtin, Some(&row), true)).into_response())
}

/// `DELETE .../detection/rules/{ruleId}`.
pub async fn delete_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = params.get("ruleId").cloned().unwrap_or_default();
    let (rule, builtin, _) = find_rule(&state, caller.tailnet(), &id).await?;
    if builtin {
        return Err(ApiError::bad_request(format!(
            "{id} is built in and cannot be deleted; disable it (PUT {{\"enabled\": false}})"
        )));
    }
    state
        .control
        .delete_detection_rule(caller.tailnet(), &caller.ctx, (&id, &rule.title))
        .await?;
    state.detection.rules_changed();
    Ok(Json(json!({ "deleted": id })).into_response())
}

/// Body of `POST .../detection/rules/test`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    yaml: String,
    /// How far back (`24h`, `7d`); default 24h.
    #[serde(default)]
    since: Option<String>,
}

/// `POST .../detection/rules/test`: NDJSON progress, alerts, then done.
pub async fn test_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes =
        crate::ingest::body::read_limited(body, tally_detect::rules::MAX_RULE_BYTES * 2).await?;
    let b: TestBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not valid JSON for this call ({{\"yaml\": \"...\", \"since\": \"24h\"}}): {e}"
        ))
    })?;
    let rule = match tally_detect::parse_rule(&b.yaml) {
        Ok(r) => r,
        Err(e) => return Ok(rule_error(&e)),
    };
    let since = b.since.as_deref().unwrap_or("24h");
    let span = humantime::parse_duration(since).map_err(|e| {
        ApiError::bad_request(format!("since must be a duration such as 24h or 7d: {e}"))
    })?;
    let now = tally_proto::timefmt::now_nanos();
    let start = now.saturating_sub(i64::try_from(span.as_nanos()).unwrap_or(i64::MAX));
    let Ok(permit) = state.detection.test_runs.clone().try_acquire_owned() else {
        return Err(ApiError::retry(
            StatusCode::TOO_MANY_REQUESTS,
            5,
            "rule test runs are busy (at most 2 at once); try again in a few seconds",
        ));
    };
    let dirs = read_directories(&state.control)
        .await
        .map_err(|e| ApiError::internal(format!("reading nodes: {e:#}")))?;
    let tailnet = caller.tailnet().to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut d = Detector::new(DetectorConfig::default(), vec![Arc::new(rule)]);
        let filter = Filter {
            owner: Some(tailnet.clone()),
            kinds: vec![kind::LOG],
            time_start: Some(start),
            ..Default::default()
        };
        let end = store.end_seq();
        let mut from = 1u64;
        let (mut events, mut alerts) = (0u64, 0u64);
        let mut last_progress = std::time::Instant::now();
        loop {
            let batch = match store.scan(from, &filter, 5000, 16 << 20, now) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.blocking_send(
                        json!({ "error": format!("reading the store: {e}") }).to_string(),
                    );
                    return;
                }
            };
            for r in &batch.records {
                if r.rec.collection == ALERTS {
                    continue;
                }
                events += 1;
                if let Ok(found) = feed(&mut d, &dirs, r) {
                    for a in found {
                        alerts += 1;
                        if tx.blocking_send(json!({ "alert": a }).to_string()).is_err() {
                            return;
                        }
                    }
                }
            }
            if last_progress.elapsed() >= std::time::Duration::from_millis(250) || !batch.truncated
            {
                last_progress = std::time::Instant::now();
                let line = json!({ "progress": { "position": batch.next_seq.saturating_sub(1), "end": end.saturating_sub(1), "records": events } });
                if tx.blocking_send(line.to_string()).is_err() {
                    return;
                }
            }
            if !batch.truncated {
                break;
            }
            from = batch.next_seq;
        }
        let _ = tx.blocking_send(
            json!({ "done": { "records": events, "alerts": alerts, "since": rfc(start) } })
                .to_string(),
        );
    });
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::io::Error>(format!("{line}\n")), rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(s),
    )
        .into_response())
}

/// One stored alert with its position and status.
fn alert_view(seq: u64, a: &Alert, ack: Option<&AckRow>) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    v["position"] = json!(seq);
    v["windowStart"] = json!(rfc(a.window.start));
    v["windowEnd"] = json!(rfc(a.window.end));
    v["status"] = json!(if ack.is_some() { "acked" } else { "open" });
    if let Some(k) = ack {
        v["ack"] = json!({ "by": k.actor, "at": rfc(k.acked), "note": k.note });
    }
    v
}

/// Every stored alert of `tailnet` (position, alert), oldest first.
fn stored_alerts(state: &AppState, tailnet: &str) -> Result<Vec<(u64, Alert)>, ApiError> {
    let filter = Filter {
        collections: vec![ALERTS.to_owned()],
        owner: Some(tailnet.to_owned()),
        kinds: vec![kind::LOG],
        ..Default::default()
    };
    let now = tally_proto::timefmt::now_nanos();
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let batch = state
            .store
            .scan(from, &filter, 10_000, 16 << 20, now)
            .map_err(|e| ApiError::internal(format!("reading alerts: {e}")))?;
        for r in &batch.records {
            if let Ok(a) = serde_json::from_slice::<Alert>(&r.rec.body)
                && a.tailnet == tailnet
            {
                out.push((r.seq, a));
            }
        }
        if !batch.truncated {
            break;
        }
        from = batch.next_seq;
    }
    Ok(out)
}

/// `GET /api/v2/tailnet/{t}/alerts`.
pub async fn list_alerts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let known = [
        "start", "end", "severity", "rule", "node", "status", "limit", "cursor",
    ];
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {k:?}; known: {}",
            known.join(", ")
        )));
    }
    let start = q.get("start").map(|v| parse_time("start", v)).transpose()?;
    let end = q.get("end").map(|v| parse_time("end", v)).transpose()?;
    let severities: Option<Vec<AlertSeverity>> = q
        .get("severity")
        .map(|v| {
            v.split(',')
                .map(|s| {
                    AlertSeverity::parse(s.trim()).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "severity {s:?}: use informational, low, medium, high or critical (comma-separated for several)"
                        ))
                    })
                })
                .collect()
        })
        .transpose()?;
    let status = q.get("status").map(String::as_str);
    if status.is_some_and(|s| s != "open" && s != "acked") {
        return Err(ApiError::bad_request("status must be open or acked"));
    }
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1..={MAX_PAGE}")))?,
    };
    let cursor = q
        .get("cursor")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request("cursor must be a nextCursor value"))
        })
        .transpose()?;
    let tailnet = caller.tailnet().to_owned();
    let acks = state.control.alert_acks(&tailnet).await?;
    let st = state.clone();
    let t = tailnet.clone();
    let all = tokio::task::spawn_blocking(move || stored_alerts(&st, &t))
        .await
        .map_err(|e| ApiError::internal(format!("reading alerts panicked: {e}")))??;
    let node = q.get("node").map(String::as_str);
    let rule = q.get("rule").map(String::as_str);
    let mut page = Vec::new();
    let mut next = None;
    for (seq, a) in all.iter().rev() {
        if cursor.is_some_and(|c| *seq >= c)
            || start.is_some_and(|s| a.window.end < s)
            || end.is_some_and(|e| a.window.start >= e)
            || severities
                .as_ref()
                .is_some_and(|s| !s.contains(&a.severity))
            || rule.is_some_and(|r| a.rule_id != r)
            || node
                .is_some_and(|n| a.node.as_deref() != Some(n) && !a.group.values().any(|v| v == n))
        {
            continue;
        }
        let ack = acks.get(&a.id);
        match status {
            Some("open") if ack.is_some() => continue,
            Some("acked") if ack.is_none() => continue,
            _ => {}
        }
        if page.len() == limit {
            next = page.last().and_then(|v: &Value| v["position"].as_u64());
            break;
        }
        page.push(alert_view(*seq, a, ack));
    }
    let mut out = json!({ "alerts": page });
    if let Some(n) = next {
        out["nextCursor"] = json!(n.to_string());
    }
    Ok(Json(out).into_response())
}

/// Body of `POST .../alerts/{id}/ack`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AckBody {
    #[serde(default)]
    note: String,
}

/// `POST /api/v2/tailnet/{t}/alerts/{alertId}/ack`.
pub async fn ack_alert(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = crate::ingest::body::read_limited(body, 16 << 10).await?;
    let b: AckBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        AckBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be empty or {{\"note\": \"...\"}}: {e}"
            ))
        })?
    };
    let id = params.get("alertId").cloned().unwrap_or_default();
    let tailnet = caller.tailnet().to_owned();
    let st = state.clone();
    let t = tailnet.clone();
    let all = tokio::task::spawn_blocking(move || stored_alerts(&st, &t))
        .await
        .map_err(|e| ApiError::internal(format!("reading alerts panicked: {e}")))??;
    let Some((seq, alert)) = all.into_iter().find(|(_, a)| a.id == id) else {
        return Err(ApiError::not_found(format!(
            "alert {id} (GET .../alerts lists them)"
        )));
    };
    let ack = state
        .control
        .ack_alert(&tailnet, &caller.ctx, (&id, &alert.title), &b.note)
        .await?;
    Ok(Json(alert_view(seq, &alert, Some(&ack))).into_response())
}
