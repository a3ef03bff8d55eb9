//! Collections and adopted instances of the logs-service API, owned by a
//! tailnet. Names stay server-wide (the logs-service URLs carry no tailnet).

use super::audit::{AuditContext, EventSpec, Target};
use super::{ControlDb, ControlError};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use tally_proto::PublicId;

/// The collection that holds network flow logs (its retention is the
/// tailnet's `flowsRetentionDays`).
pub const FLOWS_COLLECTION: &str = "tailtraffic";

/// A collection as the ingest path and retention need it.
#[derive(Debug, Clone)]
pub struct CollectionRow {
    /// Owning tailnet.
    pub tailnet_id: String,
    /// Creation time (Unix ns).
    pub created: i64,
    /// Effective retention in days (own, else the tailnet's setting).
    pub retention_days: u32,
    /// Its own retention, when set at creation.
    pub own_retention_days: Option<u32>,
    /// Adopted instances.
    pub adopted: BTreeSet<PublicId>,
}

fn collection_target(name: &str, property: &str) -> Target {
    Target {
        id: name.to_owned(),
        name: name.to_owned(),
        target_type: "COLLECTION".into(),
        property: property.into(),
        is_ephemeral: false,
    }
}

impl ControlDb {
    /// Every collection with its adoptions and effective retention.
    pub async fn load_collections(&self) -> Result<BTreeMap<String, CollectionRow>, ControlError> {
        let mut out = BTreeMap::new();
        let rows = sqlx::query(
            "SELECT c.name, c.tailnet_id, c.created, c.retention_days,
                    (SELECT s.value FROM settings s WHERE s.tailnet_id = c.tailnet_id AND s.name = 'logsRetentionDays') AS logs_days,
                    (SELECT s.value FROM settings s WHERE s.tailnet_id = c.tailnet_id AND s.name = 'flowsRetentionDays') AS flows_days
             FROM collections c",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let name: String = r.try_get("name")?;
            let own: Option<i64> = r.try_get("retention_days")?;
            let setting: Option<String> = if name == FLOWS_COLLECTION {
                r.try_get("flows_days")?
            } else {
                r.try_get("logs_days")?
            };
            let days = own
                .or_else(|| setting.and_then(|s| s.parse().ok()))
                .unwrap_or(30);
            out.insert(
                name,
                CollectionRow {
                    tailnet_id: r.try_get("tailnet_id")?,
                    created: r.try_get("created")?,
                    retention_days: u32::try_from(days).unwrap_or(30),
                    own_retention_days: own.and_then(|d| u32::try_from(d).ok()),
                    adopted: BTreeSet::new(),
                },
            );
        }
        for r in sqlx::query("SELECT collection, instance FROM adoptions")
            .fetch_all(&self.pool)
            .await?
        {
            let c: String = r.try_get("collection")?;
            let i: String = r.try_get("instance")?;
            if let (Some(col), Ok(id)) = (out.get_mut(&c), PublicId::parse(&i)) {
                col.adopted.insert(id);
            }
        }
        Ok(out)
    }

    /// Creates a collection in a tailnet.
    pub async fn create_collection(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        name: &str,
        retention_days: Option<u32>,
        created: i64,
    ) -> Result<(), ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let exists = sqlx::query("SELECT tailnet_id FROM collections WHERE name = $1")
            .bind(name)
            .fetch_optional(change.tx())
            .await?;
        if exists.is_some() {
            return Err(ControlError::Conflict(format!(
                "collection \"{name}\" already exists"
            )));
        }
        sqlx::query(
            "INSERT INTO collections (name, tailnet_id, created, retention_days) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(tailnet_id)
        .bind(created)
        .bind(retention_days.map(i64::from))
        .execute(change.tx())
        .await?;
        change
            .record(
                EventSpec::new("CREATE", collection_target(name, ""))
                    .values(Value::Null, json!({ "retentionDays": retention_days })),
            )
            .await?;
        change.commit().await
    }

    /// The tailnet owning a collection, if it exists.
    pub async fn collection_owner(&self, name: &str) -> Result<Option<String>, ControlError> {
        Ok(
            sqlx::query("SELECT tailnet_id FROM collections WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("tailnet_id"))
                .transpose()?,
        )
    }

    fn no_such_collection(name: &str) -> ControlError {
        ControlError::NotFound(format!(
            "collection \"{name}\" (create it with POST /collections, collection={name}, action=create)"
        ))
    }

    /// Deletes a collection of a tailnet and its adoptions.
    pub async fn delete_collection(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        name: &str,
    ) -> Result<(), ControlError> {
        if self.collection_owner(name).await?.as_deref() != Some(tailnet_id) {
            return Err(Self::no_such_collection(name));
        }
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let adopted = sqlx::query("DELETE FROM adoptions WHERE collection = $1")
            .bind(name)
            .execute(change.tx())
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM collections WHERE name = $1")
            .bind(name)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("DELETE", collection_target(name, ""))
                    .values(json!({ "adoptedInstances": adopted }), Value::Null),
            )
            .await?;
        change.commit().await
    }

    /// Adopts instances into a collection of a tailnet: one event per newly
    /// adopted instance, one group. Returns those newly adopted.
    pub async fn adopt(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        name: &str,
        instances: &[PublicId],
    ) -> Result<Vec<PublicId>, ControlError> {
        if self.collection_owner(name).await?.as_deref() != Some(tailnet_id) {
            return Err(Self::no_such_collection(name));
        }
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let mut newly = Vec::new();
        let now = tally_proto::timefmt::now_nanos();
        for i in instances {
            let hex = i.to_string();
            let exists = sqlx::query(
                "SELECT adopted FROM adoptions WHERE collection = $1 AND instance = $2",
            )
            .bind(name)
            .bind(&hex)
            .fetch_optional(change.tx())
            .await?;
            if exists.is_some() || newly.contains(i) {
                continue;
            }
            sqlx::query(
                "INSERT INTO adoptions (collection, instance, adopted) VALUES ($1, $2, $3)",
            )
            .bind(name)
            .bind(&hex)
            .bind(now)
            .execute(change.tx())
            .await?;
            change
                .record(
                    EventSpec::new("UPDATE", collection_target(name, "adopted"))
                        .values(Value::Null, json!(hex))
                        .details("instance adopted"),
                )
                .await?;
            newly.push(*i);
        }
        if !newly.is_empty() {
            change.commit().await?;
        }
        Ok(newly)
    }
}
