//! Tailnet settings: a registry of named, typed, validated settings stored
//! as JSON values per tailnet. New features (streaming destinations,
//! rules) add definitions here and get validation, defaults, audit and the
//! API for free.

use super::audit::{AuditContext, EventSpec, Target};
use super::{ControlDb, ControlError};
use serde_json::{Map, Value};
use sqlx::Row;

/// The type and bounds of a setting.
#[derive(Debug, Clone, Copy)]
pub enum SettingKind {
    /// `true`/`false`; changes are `ENABLE`/`DISABLE` events.
    Bool,
    /// A whole number within bounds.
    Int {
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct SettingDef {
    /// API name (camelCase, Tailscale's where it has one).
    pub name: &'static str,
    /// Type and bounds.
    pub kind: SettingKind,
    /// Value until changed.
    pub default: i64,
    /// What it does (for errors and docs).
    pub help: &'static str,
}

/// Every setting of a tailnet.
pub const SETTINGS: &[SettingDef] = &[
    SettingDef {
        name: "networkFlowLoggingOn",
        kind: SettingKind::Bool,
        default: 0,
        help: "network flow logs from this tailnet's agents",
    },
    SettingDef {
        name: "logsRetentionDays",
        kind: SettingKind::Int { min: 1, max: 3650 },
        default: 30,
        help: "days adopted instances' logs are kept (collections without their own retention)",
    },
    SettingDef {
        name: "flowsRetentionDays",
        kind: SettingKind::Int { min: 1, max: 3650 },
        default: 30,
        help: "days network flow logs are kept",
    },
    SettingDef {
        name: "recordingsRetentionDays",
        kind: SettingKind::Int { min: 1, max: 3650 },
        default: DEFAULT_RECORDINGS_RETENTION_DAYS as i64,
        help: "days session recordings are kept (tailscaled's and tally record's)",
    },
    SettingDef {
        name: "auditRetentionDays",
        kind: SettingKind::Int { min: 90, max: 3650 },
        default: DEFAULT_AUDIT_RETENTION_DAYS as i64,
        help: "days configuration audit events are kept (at least 90)",
    },
];

/// `recordingsRetentionDays` of a tailnet that did not set it.
pub const DEFAULT_RECORDINGS_RETENTION_DAYS: u32 = 30;

/// `auditRetentionDays` of a tailnet that did not set it.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 90;

fn def(name: &str) -> Option<&'static SettingDef> {
    SETTINGS.iter().find(|d| d.name == name)
}

fn to_json(d: &SettingDef, v: i64) -> Value {
    match d.kind {
        SettingKind::Bool => Value::Bool(v != 0),
        SettingKind::Int { .. } => Value::from(v),
    }
}

/// Checks a value against its definition; returns it as stored.
fn validate(d: &SettingDef, v: &Value) -> Result<i64, ControlError> {
    match d.kind {
        SettingKind::Bool => v.as_bool().map(i64::from).ok_or_else(|| {
            ControlError::Invalid(format!("{} must be true or false (got {v})", d.name))
        }),
        SettingKind::Int { min, max } => {
            v.as_i64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ControlError::Invalid(format!(
                        "{} must be a whole number from {min} to {max} (got {v}): {}",
                        d.name, d.help
                    ))
                })
        }
    }
}

impl ControlDb {
    /// Every setting of a tailnet (defaults filled in), as the API shows them.
    pub async fn settings(&self, tailnet_id: &str) -> Result<Map<String, Value>, ControlError> {
        let rows = sqlx::query("SELECT name, value FROM settings WHERE tailnet_id = $1")
            .bind(tailnet_id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Map::new();
        for d in SETTINGS {
            out.insert(d.name.into(), to_json(d, d.default));
        }
        for r in rows {
            let name: String = r.try_get("name")?;
            let value: String = r.try_get("value")?;
            if let (Some(d), Ok(v)) = (def(&name), value.parse::<i64>()) {
                out.insert(name, to_json(d, v));
            }
        }
        Ok(out)
    }

    /// `flowsRetentionDays` of every tailnet that set it.
    pub async fn flow_retention_days(
        &self,
    ) -> Result<std::collections::HashMap<String, u32>, ControlError> {
        self.days_setting("flowsRetentionDays").await
    }

    /// `auditRetentionDays` of every tailnet that set it (others: the
    /// default, [`DEFAULT_AUDIT_RETENTION_DAYS`]).
    pub async fn audit_retention_days(
        &self,
    ) -> Result<std::collections::HashMap<String, u32>, ControlError> {
        self.days_setting("auditRetentionDays").await
    }

    /// A day-count setting of every tailnet that set it.
    async fn days_setting(
        &self,
        name: &str,
    ) -> Result<std::collections::HashMap<String, u32>, ControlError> {
        let rows = sqlx::query("SELECT tailnet_id, value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let t: String = r.try_get("tailnet_id")?;
            let v: String = r.try_get("value")?;
            if let Ok(d) = v.parse() {
                out.insert(t, d);
            }
        }
        Ok(out)
    }

    /// Tailnets where a boolean setting is on.
    pub async fn tailnets_with(&self, name: &str) -> Result<Vec<String>, ControlError> {
        sqlx::query("SELECT tailnet_id FROM settings WHERE name = $1 AND value = '1'")
            .bind(name)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("tailnet_id")?))
            .collect()
    }

    /// One numeric setting (booleans as 0/1).
    pub async fn setting_i64(&self, tailnet_id: &str, name: &str) -> Result<i64, ControlError> {
        let d = def(name).ok_or_else(|| ControlError::Internal(format!("no setting {name}")))?;
        let row = sqlx::query("SELECT value FROM settings WHERE tailnet_id = $1 AND name = $2")
            .bind(tailnet_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r
                .try_get::<String, _>("value")?
                .parse()
                .unwrap_or(d.default),
            None => d.default,
        })
    }

    /// Applies a partial update (`PATCH`): every field is validated before
    /// anything is written; each changed setting is one event of one group.
    /// Returns the settings after the change.
    pub async fn update_settings(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        patch: &Map<String, Value>,
    ) -> Result<Map<String, Value>, ControlError> {
        if patch.is_empty() {
            return Err(ControlError::Invalid(format!(
                "no settings given; known settings: {}",
                SETTINGS
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut wanted = Vec::new();
        for (name, v) in patch {
            let d = def(name).ok_or_else(|| {
                ControlError::Invalid(format!(
                    "unknown setting {name:?}; known settings: {}",
                    SETTINGS
                        .iter()
                        .map(|d| d.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            wanted.push((d, validate(d, v)?));
        }
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let tailnet_name: String = sqlx::query("SELECT name FROM tailnets WHERE id = $1")
            .bind(tailnet_id)
            .fetch_one(change.tx())
            .await?
            .try_get("name")?;
        let mut changed = 0;
        for (d, new) in wanted {
            let old =
                match sqlx::query("SELECT value FROM settings WHERE tailnet_id = $1 AND name = $2")
                    .bind(tailnet_id)
                    .bind(d.name)
                    .fetch_optional(change.tx())
                    .await?
                {
                    Some(r) => r
                        .try_get::<String, _>("value")?
                        .parse()
                        .unwrap_or(d.default),
                    None => d.default,
                };
            if old == new {
                continue;
            }
            sqlx::query("DELETE FROM settings WHERE tailnet_id = $1 AND name = $2")
                .bind(tailnet_id)
                .bind(d.name)
                .execute(change.tx())
                .await?;
            sqlx::query("INSERT INTO settings (tailnet_id, name, value) VALUES ($1, $2, $3)")
                .bind(tailnet_id)
                .bind(d.name)
                .bind(new.to_string())
                .execute(change.tx())
                .await?;
            let action = match d.kind {
                SettingKind::Bool if new != 0 => "ENABLE",
                SettingKind::Bool => "DISABLE",
                SettingKind::Int { .. } => "UPDATE",
            };
            let target = Target {
                id: tailnet_id.to_owned(),
                name: tailnet_name.clone(),
                target_type: "TAILNET".into(),
                property: d.name.into(),
                is_ephemeral: false,
            };
            change
                .record(EventSpec::new(action, target).values(to_json(d, old), to_json(d, new)))
                .await?;
            changed += 1;
        }
        if changed > 0 {
            change.commit().await?;
        }
        self.settings(tailnet_id).await
    }
}

impl ControlDb {
    /// Every recorded switch of boolean setting `name` of a tailnet:
    /// `(event time in Unix ns, on after it)`, oldest first (the audit log
    /// is the setting's history).
    pub async fn setting_switches(
        &self,
        tailnet_id: &str,
        name: &str,
    ) -> Result<Vec<(i64, bool)>, ControlError> {
        sqlx::query(
            "SELECT event_time, action FROM audit_events WHERE tailnet_id = $1 AND property = $2 AND failed = 0 AND (action = 'ENABLE' OR action = 'DISABLE') ORDER BY seq",
        )
        .bind(tailnet_id)
        .bind(name)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("event_time")?,
                r.try_get::<String, _>("action")? == "ENABLE",
            ))
        })
        .collect()
    }
}
