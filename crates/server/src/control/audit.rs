//! The configuration audit log: events in Tailscale's configuration-audit
//! shape, appended in the same transaction as the change they describe
//! ([`Change`]), chained per tailnet by SHA-256, queried newest first,
//! verified link by link, and cut by retention with a new anchor.

use super::{ControlDb, ControlError, new_id};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};
use std::sync::Arc;
pub use tally_proto::audit::{Actor, AuditEvent, Origin, Target};
use tally_proto::timefmt::format_nanos;

/// The actor, origin and address of a request.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// Who.
    pub actor: Actor,
    /// From which interface.
    pub origin: Origin,
    /// Client address, when known.
    pub remote: Option<String>,
}

impl AuditContext {
    /// The server's own changes.
    pub fn system() -> Self {
        Self {
            actor: Actor::system(),
            origin: Origin::System,
            remote: None,
        }
    }
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct EventSpec {
    /// `CREATE`, `UPDATE`, `DELETE`, `ENABLE`, `DISABLE`, `REVOKE`...
    pub action: String,
    /// What.
    pub target: Target,
    /// Value before (never a secret).
    pub old: Value,
    /// Value after (never a secret).
    pub new: Value,
    /// Free text.
    pub details: String,
    /// Set for a refused change.
    pub error: Option<String>,
}

impl EventSpec {
    /// An event without old/new values.
    pub fn new(action: &str, target: Target) -> Self {
        Self {
            action: action.into(),
            target,
            old: Value::Null,
            new: Value::Null,
            details: String::new(),
            error: None,
        }
    }

    /// Sets old and new.
    pub fn values(mut self, old: Value, new: Value) -> Self {
        self.old = old;
        self.new = new;
        self
    }

    /// Sets `actionDetails`.
    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

/// Hash of the chain before the first event of a tailnet.
pub fn genesis_hash(tailnet_id: &str) -> String {
    hex::encode(Sha256::digest(
        format!("tally-audit-genesis:{tailnet_id}").as_bytes(),
    ))
}

/// The chain link: `SHA-256(prev_hash "\n" seq "\n" body)`, hex.
pub fn link_hash(prev: &str, seq: i64, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// An open change: a transaction on one tailnet whose audit events are
/// appended to the chain and committed with the change itself.
pub struct Change {
    tx: Transaction<'static, Any>,
    _write: tokio::sync::OwnedMutexGuard<()>,
    tailnet_id: String,
    group: String,
    ctx: AuditContext,
    seq: i64,
    head: String,
    time: i64,
    events: usize,
    committed: Arc<tokio::sync::Notify>,
}

/// One committed audit event as the outbox copies it.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    /// Its sequence number in its tailnet's chain.
    pub seq: i64,
    /// Event time (Unix ns).
    pub time: i64,
    /// The event (Tailscale's configuration-audit shape, JSON).
    pub body: String,
}

impl ControlDb {
    /// Notified after each commit of audit events (a permit is kept when
    /// nobody waits, so a wake-up is never lost).
    pub fn audit_committed(&self) -> Arc<tokio::sync::Notify> {
        self.audit_committed.clone()
    }

    /// Every tailnet (deleted ones too) and the sequence number of its
    /// newest audit event.
    pub async fn audit_heads(&self) -> Result<Vec<(String, i64)>, ControlError> {
        sqlx::query("SELECT id, audit_seq FROM tailnets ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("audit_seq")?)))
            .collect()
    }

    /// Up to `limit` events of a tailnet after sequence number `after`,
    /// oldest first.
    pub async fn audit_events_after(
        &self,
        tailnet_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<CommittedEvent>, ControlError> {
        sqlx::query(
            "SELECT seq, event_time, body FROM audit_events WHERE tailnet_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(tailnet_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(CommittedEvent {
                seq: r.try_get("seq")?,
                time: r.try_get("event_time")?,
                body: r.try_get("body")?,
            })
        })
        .collect()
    }

    /// Opens a change on `tailnet_id`: takes the tailnet's row lock (and the
    /// process's write lock) so that events are appended in order.
    pub async fn begin_change(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
    ) -> Result<Change, ControlError> {
        let write = self.write_lock.clone().lock_owned().await;
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query("UPDATE tailnets SET audit_seq = audit_seq WHERE id = $1")
            .bind(tailnet_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() != 1 {
            return Err(ControlError::NotFound(format!("tailnet {tailnet_id}")));
        }
        let row =
            sqlx::query("SELECT audit_seq, audit_head, audit_time FROM tailnets WHERE id = $1")
                .bind(tailnet_id)
                .fetch_one(&mut *tx)
                .await?;
        Ok(Change {
            tx,
            _write: write,
            tailnet_id: tailnet_id.to_owned(),
            group: new_id("g"),
            ctx: ctx.clone(),
            seq: row.try_get("audit_seq")?,
            head: row.try_get("audit_head")?,
            time: row.try_get("audit_time")?,
            events: 0,
            committed: self.audit_committed.clone(),
        })
    }

    /// Appends one refusal event (its `error` set) in a transaction of its own.
    pub async fn record_refusal(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        mut event: EventSpec,
        error: &str,
    ) -> Result<(), ControlError> {
        event.error = Some(error.to_owned());
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        change.record(event).await?;
        change.commit().await
    }
}

impl Change {
    /// The transaction, for the change's own statements.
    pub fn tx(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// The tailnet changed.
    pub fn tailnet_id(&self) -> &str {
        &self.tailnet_id
    }

    /// Appends an event to the chain (inside the transaction).
    pub async fn record(&mut self, event: EventSpec) -> Result<(), ControlError> {
        self.record_at(event, tally_proto::timefmt::now_nanos())
            .await
    }

    /// Appends an event with an explicit time (kept monotonic per tailnet).
    pub async fn record_at(&mut self, event: EventSpec, now: i64) -> Result<(), ControlError> {
        let time = now.max(self.time);
        let body = AuditEvent {
            event_group_id: self.group.clone(),
            origin: self.ctx.origin,
            actor: self.ctx.actor.clone(),
            event_type: "CONFIG".into(),
            target: event.target.clone(),
            action: event.action.clone(),
            old: event.old.clone(),
            new: event.new.clone(),
            action_details: event.details.clone(),
            error: event.error.clone(),
            event_time: format_nanos(time),
            remote_addr: self.ctx.remote.clone(),
        };
        let body = serde_json::to_string(&body)
            .map_err(|e| ControlError::Internal(format!("encoding an audit event: {e}")))?;
        let seq = self.seq + 1;
        let hash = link_hash(&self.head, seq, &body);
        sqlx::query(
            "INSERT INTO audit_events (tailnet_id, seq, event_time, event_group_id, actor_id, actor_login, action, target_type, target_id, property, failed, body, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&self.tailnet_id)
        .bind(seq)
        .bind(time)
        .bind(&self.group)
        .bind(&self.ctx.actor.id)
        .bind(&self.ctx.actor.login_name)
        .bind(&event.action)
        .bind(&event.target.target_type)
        .bind(&event.target.id)
        .bind(&event.target.property)
        .bind(i64::from(event.error.is_some()))
        .bind(&body)
        .bind(&self.head)
        .bind(&hash)
        .execute(&mut *self.tx)
        .await?;
        self.seq = seq;
        self.head = hash;
        self.time = time;
        self.events += 1;
        Ok(())
    }

    /// Commits the change and its events; a change without an event is refused.
    pub async fn commit(mut self) -> Result<(), ControlError> {
        if self.events == 0 {
            return Err(ControlError::Internal(
                "a change must record at least one audit event".into(),
            ));
        }
        sqlx::query(
            "UPDATE tailnets SET audit_seq = $1, audit_head = $2, audit_time = $3 WHERE id = $4",
        )
        .bind(self.seq)
        .bind(&self.head)
        .bind(self.time)
        .bind(&self.tailnet_id)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        self.committed.notify_one();
        Ok(())
    }
}

/// Filters of an audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Events at or after (Unix ns).
    pub start: Option<i64>,
    /// Events before (Unix ns).
    pub end: Option<i64>,
    /// Actor login name.
    pub actor: Option<String>,
    /// Action.
    pub action: Option<String>,
    /// Target type.
    pub target_type: Option<String>,
    /// Target ID.
    pub target_id: Option<String>,
    /// Property.
    pub property: Option<String>,
    /// Free text (case-insensitive substring of the event JSON).
    pub text: Option<String>,
    /// Only events with a sequence number below this (paging).
    pub before: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// A page of events, newest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    /// The events (their stored JSON).
    pub events: Vec<Value>,
    /// `before` for the next page, when there is one.
    pub next_before: Option<i64>,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// Tailnet.
    pub tailnet_id: String,
    /// Whether every link holds.
    pub intact: bool,
    /// Events checked.
    pub events: i64,
    /// Hash of the newest event (or the anchor).
    pub head: String,
    /// Sequence number of the last event removed by retention (0: none).
    pub anchor_seq: i64,
    /// The first broken link.
    pub broken_at: Option<BrokenLink>,
    /// One line for people.
    pub message: String,
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokenLink {
    /// Sequence number of the event where the problem shows.
    pub seq: i64,
    /// What is wrong.
    pub problem: String,
}

/// Escapes `%`, `_` and `\` for `LIKE ... ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl ControlDb {
    /// Events of a tailnet, newest first, filtered and paged. Time bounds
    /// become sequence bounds first (event times rise with the sequence),
    /// so every filter is a range scan of one index.
    pub async fn audit_query(
        &self,
        tailnet_id: &str,
        q: &AuditQuery,
    ) -> Result<AuditPage, ControlError> {
        let mut lo = 0i64;
        let mut hi = q.before.map_or(i64::MAX, |b| b - 1);
        if let Some(start) = q.start {
            let row = sqlx::query(
                "SELECT seq FROM audit_events WHERE tailnet_id = $1 AND event_time >= $2 ORDER BY event_time, seq LIMIT 1",
            )
            .bind(tailnet_id)
            .bind(start)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(r) => lo = r.try_get("seq")?,
                None => {
                    return Ok(AuditPage {
                        events: Vec::new(),
                        next_before: None,
                    });
                }
            }
        }
        if let Some(end) = q.end {
            let row = sqlx::query(
                "SELECT seq FROM audit_events WHERE tailnet_id = $1 AND event_time < $2 ORDER BY event_time DESC, seq DESC LIMIT 1",
            )
            .bind(tailnet_id)
            .bind(end)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(r) => hi = hi.min(r.try_get("seq")?),
                None => {
                    return Ok(AuditPage {
                        events: Vec::new(),
                        next_before: None,
                    });
                }
            }
        }
        if lo > hi {
            return Ok(AuditPage {
                events: Vec::new(),
                next_before: None,
            });
        }
        let mut sql = String::from(
            "SELECT seq, body FROM audit_events WHERE tailnet_id = $1 AND seq >= $2 AND seq <= $3",
        );
        let mut binds: Vec<String> = Vec::new();
        for (col, val) in [
            ("actor_login", &q.actor),
            ("action", &q.action),
            ("target_type", &q.target_type),
            ("target_id", &q.target_id),
            ("property", &q.property),
        ] {
            if let Some(v) = val {
                binds.push(v.clone());
                sql.push_str(&format!(" AND {col} = ${}", binds.len() + 3));
            }
        }
        if let Some(t) = &q.text {
            binds.push(like_escape(t));
            sql.push_str(&format!(
                " AND LOWER(body) LIKE ${} ESCAPE '\\'",
                binds.len() + 3
            ));
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", q.limit + 1));
        let mut query = sqlx::query(&sql).bind(tailnet_id).bind(lo).bind(hi);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut next_before = None;
        for (i, row) in rows.iter().enumerate() {
            let seq: i64 = row.try_get("seq")?;
            if i as i64 == q.limit {
                break;
            }
            let body: String = row.try_get("body")?;
            let mut v: Value = serde_json::from_str(&body).map_err(|e| {
                ControlError::Internal(format!("audit event #{seq} is not valid JSON: {e}"))
            })?;
            if let Value::Object(m) = &mut v {
                m.insert("seq".into(), Value::from(seq));
            }
            events.push(v);
            next_before = Some(seq);
        }
        if rows.len() as i64 <= q.limit {
            next_before = None;
        }
        Ok(AuditPage {
            events,
            next_before,
        })
    }

    /// Walks a tailnet's chain from its anchor and reports the first broken
    /// link: an edited event (hash), a deleted one (gap), a moved one (its
    /// predecessor hash), edited index columns, or a cut-off head.
    pub async fn audit_verify(&self, tailnet_id: &str) -> Result<ChainReport, ControlError> {
        use futures_util::TryStreamExt;
        let t = sqlx::query(
            "SELECT audit_seq, audit_head, anchor_seq, anchor_hash FROM tailnets WHERE id = $1",
        )
        .bind(tailnet_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("tailnet {tailnet_id}")))?;
        let head_seq: i64 = t.try_get("audit_seq")?;
        let head_hash: String = t.try_get("audit_head")?;
        let anchor_seq: i64 = t.try_get("anchor_seq")?;
        let anchor_hash: String = t.try_get("anchor_hash")?;
        let mut expect_seq = anchor_seq + 1;
        let mut prev = anchor_hash.clone();
        let mut count = 0i64;
        let mut broken: Option<BrokenLink> = None;
        let mut rows = sqlx::query(
            "SELECT seq, event_time, actor_login, action, target_type, target_id, property, failed, body, prev_hash, hash
             FROM audit_events WHERE tailnet_id = $1 ORDER BY seq",
        )
        .bind(tailnet_id)
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let seq: i64 = row.try_get("seq")?;
            let body: String = row.try_get("body")?;
            let prev_hash: String = row.try_get("prev_hash")?;
            let hash: String = row.try_get("hash")?;
            let problem = if seq < expect_seq {
                Some(format!(
                    "event #{seq} lies before the anchor #{anchor_seq} (inserted, or the anchor was edited)"
                ))
            } else if seq > expect_seq {
                Some(if expect_seq + 1 == seq {
                    format!("event #{expect_seq} is missing (deleted)")
                } else {
                    format!("events #{expect_seq} to #{} are missing (deleted)", seq - 1)
                })
            } else if prev_hash != prev {
                Some(format!(
                    "event #{seq} does not follow event #{} (reordered, or its predecessor was deleted or replaced)",
                    seq - 1
                ))
            } else if link_hash(&prev, seq, &body) != hash {
                Some(format!(
                    "event #{seq} was edited (its hash does not match its content)"
                ))
            } else {
                columns_disagree(&row, &body).map(|c| {
                    format!("event #{seq} was edited (column {c} differs from the hashed event)")
                })
            };
            if let Some(problem) = problem {
                broken = Some(BrokenLink {
                    seq: if seq > expect_seq { expect_seq } else { seq },
                    problem,
                });
                break;
            }
            prev = hash;
            expect_seq = seq + 1;
            count += 1;
        }
        drop(rows);
        if broken.is_none() && (expect_seq - 1 != head_seq || prev != head_hash) {
            broken = Some(BrokenLink {
                seq: expect_seq,
                problem: if expect_seq - 1 < head_seq {
                    format!("the newest events #{expect_seq} to #{head_seq} are missing (deleted)")
                } else {
                    "the chain head recorded for the tailnet does not match its newest event (edited)".to_owned()
                },
            });
        }
        let message = match &broken {
            None => format!("intact, {count} events, head {head_hash}"),
            Some(b) => format!("broken at event #{}: {}", b.seq, b.problem),
        };
        Ok(ChainReport {
            tailnet_id: tailnet_id.to_owned(),
            intact: broken.is_none(),
            events: count,
            head: head_hash,
            anchor_seq,
            broken_at: broken,
            message,
        })
    }

    /// Deletes events older than each tailnet's audit retention (at least
    /// 90 days), keeps the hash of the last deleted event as the new anchor,
    /// and records the cut as a `SYSTEM` event. Returns events deleted.
    pub async fn audit_retention(&self, now: i64) -> Result<u64, ControlError> {
        let tailnets: Vec<String> = sqlx::query("SELECT id FROM tailnets ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let mut total = 0;
        for t in tailnets {
            let days = self.setting_i64(&t, "auditRetentionDays").await?;
            let cutoff = now.saturating_sub(days.saturating_mul(86_400_000_000_000));
            let last = sqlx::query(
                "SELECT seq, hash FROM audit_events WHERE tailnet_id = $1 AND event_time < $2 ORDER BY event_time DESC, seq DESC LIMIT 1",
            )
            .bind(&t)
            .bind(cutoff)
            .fetch_optional(&self.pool)
            .await?;
            let Some(last) = last else { continue };
            let seq: i64 = last.try_get("seq")?;
            let hash: String = last.try_get("hash")?;
            let mut change = self.begin_change(&t, &AuditContext::system()).await?;
            let deleted =
                sqlx::query("DELETE FROM audit_events WHERE tailnet_id = $1 AND seq <= $2")
                    .bind(&t)
                    .bind(seq)
                    .execute(change.tx())
                    .await?
                    .rows_affected();
            sqlx::query("UPDATE tailnets SET anchor_seq = $1, anchor_hash = $2 WHERE id = $3")
                .bind(seq)
                .bind(&hash)
                .bind(&t)
                .execute(change.tx())
                .await?;
            let event = EventSpec::new(
                "DELETE",
                Target {
                    id: t.clone(),
                    name: "configuration audit log".into(),
                    target_type: "AUDIT_LOG".into(),
                    ..Target::default()
                },
            )
            .values(
                Value::Null,
                serde_json::json!({
                    "removedEvents": deleted,
                    "retentionDays": days,
                    "anchorSeq": seq,
                    "anchorHash": hash,
                }),
            )
            .details(format!(
                "retention removed {deleted} events older than {days} days"
            ));
            change.record_at(event, now).await?;
            change.commit().await?;
            tracing::info!(tailnet = %t, deleted, "audit retention removed old events");
            total += deleted;
        }
        Ok(total)
    }
}

/// The indexed columns must say what the hashed body says.
fn columns_disagree(row: &sqlx::any::AnyRow, body: &str) -> Option<&'static str> {
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return Some("body"),
    };
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let col = |c: &str| row.try_get::<String, _>(c).unwrap_or_default();
    let checks = [
        ("actor_login", s("/actor/loginName")),
        ("action", s("/action")),
        ("target_type", s("/target/type")),
        ("target_id", s("/target/id")),
        ("property", s("/target/property")),
    ];
    for (c, want) in checks {
        if col(c) != want {
            return Some(match c {
                "actor_login" => "actor_login",
                "action" => "action",
                "target_type" => "target_type",
                "target_id" => "target_id",
                _ => "property",
            });
        }
    }
    let time = tally_proto::timefmt::parse_rfc3339(&s("/eventTime"));
    if row.try_get::<i64, _>("event_time").ok() != time {
        return Some("event_time");
    }
    let failed = v.get("error").is_some_and(|e| !e.is_null());
    if row.try_get::<i64, _>("failed").ok() != Some(i64::from(failed)) {
        return Some("failed");
    }
    None
}
