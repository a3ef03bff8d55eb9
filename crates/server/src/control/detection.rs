//! Detection configuration per tailnet: custom Sigma rules (the YAML as
//! given) and the enabled flag of built-in rules (a row with empty YAML),
//! and acknowledgements of alerts. Every change is audited (target types
//! `DETECTION_RULE` and `ALERT`); rule text is checked by the caller
//! (`tally_detect::parse_rule`) before it reaches here.

use super::audit::{AuditContext, EventSpec, Target};
use super::{ControlDb, ControlError};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::HashMap;

/// A stored rule row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    /// Rule ID.
    pub id: String,
    /// The YAML (empty for a built-in rule's row).
    pub yaml: String,
    /// Whether the tailnet runs it.
    pub enabled: bool,
    /// Created (Unix ns).
    pub created: i64,
    /// Last changed (Unix ns).
    pub updated: i64,
}

/// An alert's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRow {
    /// Login name of who acknowledged it.
    pub actor: String,
    /// When (Unix ns).
    pub acked: i64,
    /// Their note.
    pub note: String,
}

fn rule_target(id: &str, title: &str, property: &str) -> Target {
    Target {
        id: id.to_owned(),
        name: title.to_owned(),
        target_type: "DETECTION_RULE".into(),
        property: property.into(),
        is_ephemeral: false,
    }
}

fn row(r: &sqlx::any::AnyRow) -> Result<RuleRow, ControlError> {
    Ok(RuleRow {
        id: r.try_get("id")?,
        yaml: r.try_get("yaml")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

/// The rule row `id` of a tailnet, inside a change.
async fn rule_in(
    tx: &mut sqlx::AnyConnection,
    tailnet_id: &str,
    id: &str,
) -> Result<Option<RuleRow>, ControlError> {
    sqlx::query(
        "SELECT id, yaml, enabled, created, updated FROM detection_rules WHERE tailnet_id = $1 AND id = $2",
    )
    .bind(tailnet_id)
    .bind(id)
    .fetch_optional(tx)
    .await?
    .as_ref()
    .map(row)
    .transpose()
}

impl ControlDb {
    /// The tailnet's rule rows, by ID.
    pub async fn detection_rules(&self, tailnet_id: &str) -> Result<Vec<RuleRow>, ControlError> {
        sqlx::query(
            "SELECT id, yaml, enabled, created, updated FROM detection_rules WHERE tailnet_id = $1 ORDER BY id",
        )
        .bind(tailnet_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    /// Per tailnet with rule rows: (latest change, number of rows), to see
    /// whose rules changed.
    pub async fn detection_rule_versions(
        &self,
    ) -> Result<HashMap<String, (i64, i64)>, ControlError> {
        let rows = sqlx::query(
            "SELECT tailnet_id, MAX(updated) AS updated, COUNT(*) AS n FROM detection_rules GROUP BY tailnet_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            out.insert(
                r.try_get("tailnet_id")?,
                (r.try_get("updated")?, r.try_get("n")?),
            );
        }
        Ok(out)
    }

    /// Adds a custom rule (`title` for the audit event).
    pub async fn add_detection_rule(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        (id, title): (&str, &str),
        yaml: &str,
        enabled: bool,
    ) -> Result<RuleRow, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let exists =
            sqlx::query("SELECT id FROM detection_rules WHERE tailnet_id = $1 AND id = $2")
                .bind(tailnet_id)
                .bind(id)
                .fetch_optional(change.tx())
                .await?
                .is_some();
        if exists {
            return Err(ControlError::Conflict(format!(
                "a rule with ID {id} exists; replace it (`tally rules add --replace FILE`, or PUT .../detection/rules/{id}) or give the new rule another id"
            )));
        }
        let now = tally_proto::timefmt::now_nanos();
        sqlx::query(
            "INSERT INTO detection_rules (tailnet_id, id, yaml, enabled, created, updated) VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(tailnet_id)
        .bind(id)
        .bind(yaml)
        .bind(i64::from(enabled))
        .bind(now)
        .execute(change.tx())
        .await?;
        change
            .record(
                EventSpec::new("CREATE", rule_target(id, title, ""))
                    .values(Value::Null, json!({ "enabled": enabled, "yaml": yaml })),
            )
            .await?;
        change.commit().await?;
        Ok(RuleRow {
            id: id.to_owned(),
            yaml: yaml.to_owned(),
            enabled,
            created: now,
            updated: now,
        })
    }

    /// Changes a rule's YAML and/or enabled flag. `builtin`: the rule is
    /// built in (its row holds only the flag; created when first changed).
    pub async fn update_detection_rule(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        (id, title, builtin): (&str, &str, bool),
        yaml: Option<&str>,
        enabled: Option<bool>,
    ) -> Result<RuleRow, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let old = rule_in(change.tx(), tailnet_id, id).await?;
        let now = tally_proto::timefmt::now_nanos();
        let old = match (old, builtin) {
            (Some(o), _) => o,
            (None, true) => RuleRow {
                id: id.to_owned(),
                yaml: String::new(),
                enabled: true,
                created: now,
                updated: now,
            },
            (None, false) => return Err(ControlError::NotFound(format!("detection rule {id}"))),
        };
        let new = RuleRow {
            yaml: yaml.map_or(old.yaml.clone(), str::to_owned),
            enabled: enabled.unwrap_or(old.enabled),
            updated: now,
            ..old.clone()
        };
        sqlx::query("DELETE FROM detection_rules WHERE tailnet_id = $1 AND id = $2")
            .bind(tailnet_id)
            .bind(id)
            .execute(change.tx())
            .await?;
        sqlx::query(
            "INSERT INTO detection_rules (tailnet_id, id, yaml, enabled, created, updated) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tailnet_id)
        .bind(id)
        .bind(&new.yaml)
        .bind(i64::from(new.enabled))
        .bind(new.created)
        .bind(now)
        .execute(change.tx())
        .await?;
        if new.enabled != old.enabled {
            let action = if new.enabled { "ENABLE" } else { "DISABLE" };
            change
                .record(
                    EventSpec::new(action, rule_target(id, title, "enabled"))
                        .values(json!(old.enabled), json!(new.enabled)),
                )
                .await?;
        }
        if new.yaml != old.yaml {
            change
                .record(
                    EventSpec::new("UPDATE", rule_target(id, title, "yaml"))
                        .values(json!(old.yaml), json!(new.yaml)),
                )
                .await?;
        }
        change.commit().await?;
        Ok(new)
    }

    /// Deletes a custom rule.
    pub async fn delete_detection_rule(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        (id, title): (&str, &str),
    ) -> Result<(), ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let old = rule_in(change.tx(), tailnet_id, id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("detection rule {id}")))?;
        sqlx::query("DELETE FROM detection_rules WHERE tailnet_id = $1 AND id = $2")
            .bind(tailnet_id)
            .bind(id)
            .execute(change.tx())
            .await?;
        change
            .record(EventSpec::new("DELETE", rule_target(id, title, "")).values(
                json!({ "enabled": old.enabled, "yaml": old.yaml }),
                Value::Null,
            ))
            .await?;
        change.commit().await
    }

    /// Acknowledges an alert (again: replaces the note).
    pub async fn ack_alert(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        (alert_id, title): (&str, &str),
        note: &str,
    ) -> Result<AckRow, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let now = tally_proto::timefmt::now_nanos();
        sqlx::query("DELETE FROM alert_acks WHERE tailnet_id = $1 AND alert_id = $2")
            .bind(tailnet_id)
            .bind(alert_id)
            .execute(change.tx())
            .await?;
        sqlx::query(
            "INSERT INTO alert_acks (tailnet_id, alert_id, actor, acked, note) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tailnet_id)
        .bind(alert_id)
        .bind(&ctx.actor.login_name)
        .bind(now)
        .bind(note)
        .execute(change.tx())
        .await?;
        change
            .record(
                EventSpec::new(
                    "UPDATE",
                    Target {
                        id: alert_id.to_owned(),
                        name: title.to_owned(),
                        target_type: "ALERT".into(),
                        property: "status".into(),
                        is_ephemeral: false,
                    },
                )
                .values(json!("open"), json!({ "status": "acked", "note": note })),
            )
            .await?;
        change.commit().await?;
        Ok(AckRow {
            actor: ctx.actor.login_name.clone(),
            acked: now,
            note: note.to_owned(),
        })
    }

    /// The tailnet's acknowledgements, by alert ID.
    pub async fn alert_acks(
        &self,
        tailnet_id: &str,
    ) -> Result<HashMap<String, AckRow>, ControlError> {
        let rows = sqlx::query(
            "SELECT alert_id, actor, acked, note FROM alert_acks WHERE tailnet_id = $1",
        )
        .bind(tailnet_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            out.insert(
                r.try_get("alert_id")?,
                AckRow {
                    actor: r.try_get("actor")?,
                    acked: r.try_get("acked")?,
                    note: r.try_get("note")?,
                },
            );
        }
        Ok(out)
    }
}
