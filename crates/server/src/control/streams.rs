//! Log streams: each tailnet's destinations per log type (Tailscale's
//! `LogstreamEndpointConfiguration`, stored without its write-only fields)
//! with their secrets sealed ([`super::secrets`]). Every change is audited
//! as Tailscale does (target `TAILNET`, property `LOGSTREAM_ENDPOINT`, the
//! log type as its name); secrets never reach the audit log.

use super::audit::{AuditContext, EventSpec, Target};
use super::{ControlDb, ControlError, new_id};
use serde_json::Value;
use sqlx::Row;

/// A stored stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    /// Tailnet.
    pub tailnet_id: String,
    /// Stream ID (`s…`).
    pub id: String,
    /// `configuration`, `network`, `alerts`, `findings`.
    pub log_type: String,
    /// The configuration without secrets (JSON).
    pub config: String,
    /// The secrets, sealed.
    pub secrets: String,
    /// Store position it started after.
    pub start_position: u64,
    /// Created (Unix ns).
    pub created: i64,
    /// Last changed (Unix ns).
    pub updated: i64,
}

fn row(r: &sqlx::any::AnyRow) -> Result<StreamRow, ControlError> {
    Ok(StreamRow {
        tailnet_id: r.try_get("tailnet_id")?,
        id: r.try_get("id")?,
        log_type: r.try_get("log_type")?,
        config: r.try_get("config")?,
        secrets: r.try_get("secrets")?,
        start_position: u64::try_from(r.try_get::<i64, _>("start_position")?).unwrap_or(0),
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

const COLS: &str = "tailnet_id, id, log_type, config, secrets, start_position, created, updated";

fn target(tailnet_id: &str, log_type: &str) -> Target {
    Target {
        id: tailnet_id.to_owned(),
        name: log_type.to_owned(),
        target_type: "TAILNET".into(),
        property: "LOGSTREAM_ENDPOINT".into(),
        is_ephemeral: false,
    }
}

/// Stream `id` of a tailnet, inside a change.
async fn stream_in(
    tx: &mut sqlx::AnyConnection,
    tailnet_id: &str,
    id: &str,
) -> Result<StreamRow, ControlError> {
    sqlx::query(&format!(
        "SELECT {COLS} FROM log_streams WHERE tailnet_id = $1 AND id = $2"
    ))
    .bind(tailnet_id)
    .bind(id)
    .fetch_optional(tx)
    .await?
    .as_ref()
    .map(row)
    .transpose()?
    .ok_or_else(|| ControlError::NotFound(format!("stream {id}")))
}

fn config_json(row: &StreamRow) -> Value {
    serde_json::from_str(&row.config).unwrap_or(Value::Null)
}

impl ControlDb {
    /// Streams of `tailnet_id` (every tailnet's when `None`), oldest first.
    pub async fn streams(&self, tailnet_id: Option<&str>) -> Result<Vec<StreamRow>, ControlError> {
        let rows = match tailnet_id {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM log_streams WHERE tailnet_id = $1 ORDER BY created, id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM log_streams ORDER BY created, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(row).collect()
    }

    /// Creates a stream (`id` None) or replaces stream `id`'s configuration
    /// (its position kept). Returns the row.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_stream(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        log_type: &str,
        id: Option<&str>,
        config: &Value,
        sealed: &str,
        start_position: u64,
    ) -> Result<StreamRow, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let now = tally_proto::timefmt::now_nanos();
        let old = match id {
            Some(id) => Some(stream_in(change.tx(), tailnet_id, id).await?),
            None => None,
        };
        let new = StreamRow {
            tailnet_id: tailnet_id.to_owned(),
            id: old.as_ref().map_or_else(|| new_id("s"), |o| o.id.clone()),
            log_type: log_type.to_owned(),
            config: config.to_string(),
            secrets: sealed.to_owned(),
            start_position: old.as_ref().map_or(start_position, |o| o.start_position),
            created: old.as_ref().map_or(now, |o| o.created),
            updated: now,
        };
        sqlx::query("DELETE FROM log_streams WHERE tailnet_id = $1 AND id = $2")
            .bind(tailnet_id)
            .bind(&new.id)
            .execute(change.tx())
            .await?;
        sqlx::query(&format!(
            "INSERT INTO log_streams ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&new.tailnet_id)
        .bind(&new.id)
        .bind(&new.log_type)
        .bind(&new.config)
        .bind(&new.secrets)
        .bind(i64::try_from(new.start_position).unwrap_or(i64::MAX))
        .bind(new.created)
        .bind(new.updated)
        .execute(change.tx())
        .await?;
        let action = if old.is_some() { "UPDATE" } else { "CREATE" };
        change
            .record(
                EventSpec::new(action, target(tailnet_id, log_type))
                    .values(
                        old.as_ref().map_or(Value::Null, config_json),
                        config.clone(),
                    )
                    .details(format!("stream {}", new.id)),
            )
            .await?;
        change.commit().await?;
        Ok(new)
    }

    /// Deletes stream `id`.
    pub async fn delete_stream(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        id: &str,
    ) -> Result<StreamRow, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let old = stream_in(change.tx(), tailnet_id, id).await?;
        sqlx::query("DELETE FROM log_streams WHERE tailnet_id = $1 AND id = $2")
            .bind(tailnet_id)
            .bind(id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("DELETE", target(tailnet_id, &old.log_type))
                    .values(config_json(&old), Value::Null)
                    .details(format!("stream {id}")),
            )
            .await?;
        change.commit().await?;
        Ok(old)
    }
}
