//! Collections and adopted instances of the logs-service API. Every tailnet
//! has its own collection names (the logs-service URLs carry no tailnet:
//! an entry's tailnet comes from its instance, see [`crate::control::catalog`]);
//! the built-in collections exist in every tailnet. An instance is adopted
//! into a collection by at most one tailnet.

use super::audit::{AuditContext, EventSpec, Target};
use super::{ControlDb, ControlError};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use tally_proto::PublicId;

pub use tally_proto::collection::{
    BUILTIN as BUILTIN_COLLECTIONS, FLOWS as FLOWS_COLLECTION, NODE_LOGS as NODE_LOGS_COLLECTION,
    is_system as is_system_collection,
};

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
    /// Instances the tailnet adopted into it.
    pub adopted: BTreeSet<PublicId>,
}

/// Collections keyed by `(tailnet ID, name)`.
pub type Collections = BTreeMap<(String, String), CollectionRow>;

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
    /// Every collection of every live tailnet (built-in ones included) with
    /// its adoptions and effective retention.
    pub async fn load_collections(&self) -> Result<Collections, ControlError> {
        let mut out = Collections::new();
        let rows = sqlx::query(
            "SELECT t.id AS tailnet_id,
                    (SELECT s.value FROM settings s WHERE s.tailnet_id = t.id AND s.name = 'logsRetentionDays') AS logs_days,
                    (SELECT s.value FROM settings s WHERE s.tailnet_id = t.id AND s.name = 'flowsRetentionDays') AS flows_days,
                    (SELECT s.value FROM settings s WHERE s.tailnet_id = t.id AND s.name = 'recordingsRetentionDays') AS recordings_days
             FROM tailnets t WHERE t.deleted IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        // Per tailnet: logs, flows and recordings retention settings.
        type Days = (Option<i64>, Option<i64>, Option<i64>);
        let mut days: BTreeMap<String, Days> = BTreeMap::new();
        for r in rows {
            let t: String = r.try_get("tailnet_id")?;
            let parse = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok());
            let logs = parse(r.try_get("logs_days")?);
            let flows = parse(r.try_get("flows_days")?);
            let recordings = parse(r.try_get("recordings_days")?);
            days.insert(t, (logs, flows, recordings));
        }
        let effective = |tailnet: &str, name: &str, own: Option<i64>| {
            let (logs, flows, recordings) = days.get(tailnet).copied().unwrap_or_default();
            let setting = if name == FLOWS_COLLECTION {
                flows
            } else if name == tally_proto::collection::RECORDINGS {
                // Session recordings: the tailnet's recordingsRetentionDays.
                Some(recordings.unwrap_or(i64::from(
                    crate::control::settings::DEFAULT_RECORDINGS_RETENTION_DAYS,
                )))
            } else {
                logs
            };
            u32::try_from(own.or(setting).unwrap_or(30)).unwrap_or(30)
        };
        for r in
            sqlx::query("SELECT tailnet_id, name, created, retention_days FROM tailnet_collections")
                .fetch_all(&self.pool)
                .await?
        {
            let tailnet: String = r.try_get("tailnet_id")?;
            if !days.contains_key(&tailnet) {
                continue;
            }
            let name: String = r.try_get("name")?;
            let own: Option<i64> = r.try_get("retention_days")?;
            let row = CollectionRow {
                tailnet_id: tailnet.clone(),
                created: r.try_get("created")?,
                retention_days: effective(&tailnet, &name, own),
                own_retention_days: own.and_then(|d| u32::try_from(d).ok()),
                adopted: BTreeSet::new(),
            };
            out.insert((tailnet, name), row);
        }
        for tailnet in days.keys() {
            for name in BUILTIN_COLLECTIONS {
                out.entry((tailnet.clone(), name.to_owned()))
                    .or_insert_with(|| CollectionRow {
                        tailnet_id: tailnet.clone(),
                        created: 0,
                        retention_days: effective(tailnet, name, None),
                        own_retention_days: None,
                        adopted: BTreeSet::new(),
                    });
            }
        }
        for r in sqlx::query("SELECT tailnet_id, collection, instance FROM tailnet_adoptions")
            .fetch_all(&self.pool)
            .await?
        {
            let key = (r.try_get("tailnet_id")?, r.try_get("collection")?);
            let i: String = r.try_get("instance")?;
            if let (Some(col), Ok(id)) = (out.get_mut(&key), PublicId::parse(&i)) {
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
        if BUILTIN_COLLECTIONS.contains(&name) {
            return Err(ControlError::Conflict(format!(
                "collection \"{name}\" is built in: every tailnet has it"
            )));
        }
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        if self.tailnet_has(change.tx(), tailnet_id, name).await? {
            return Err(ControlError::Conflict(format!(
                "collection \"{name}\" already exists in this tailnet"
            )));
        }
        sqlx::query(
            "INSERT INTO tailnet_collections (tailnet_id, name, created, retention_days) VALUES ($1, $2, $3, $4)",
        )
        .bind(tailnet_id)
        .bind(name)
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

    async fn tailnet_has(
        &self,
        tx: &mut sqlx::AnyConnection,
        tailnet_id: &str,
        name: &str,
    ) -> Result<bool, ControlError> {
        Ok(sqlx::query(
            "SELECT created FROM tailnet_collections WHERE tailnet_id = $1 AND name = $2",
        )
        .bind(tailnet_id)
        .bind(name)
        .fetch_optional(tx)
        .await?
        .is_some())
    }

    /// True if the tailnet has this collection (built-in ones included).
    pub async fn has_collection(&self, tailnet_id: &str, name: &str) -> Result<bool, ControlError> {
        if BUILTIN_COLLECTIONS.contains(&name) {
            return Ok(true);
        }
        let mut conn = self.pool.acquire().await?;
        self.tailnet_has(&mut conn, tailnet_id, name).await
    }

    fn no_such_collection(name: &str) -> ControlError {
        ControlError::NotFound(format!(
            "collection \"{name}\" (create it with POST /collections, collection={name}, action=create)"
        ))
    }

    /// Deletes a collection of a tailnet and its adoptions (its entries expire).
    pub async fn delete_collection(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        name: &str,
    ) -> Result<(), ControlError> {
        if BUILTIN_COLLECTIONS.contains(&name) {
            return Err(ControlError::Conflict(format!(
                "collection \"{name}\" is built in and cannot be deleted"
            )));
        }
        if !self.has_collection(tailnet_id, name).await? {
            return Err(Self::no_such_collection(name));
        }
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let adopted =
            sqlx::query("DELETE FROM tailnet_adoptions WHERE tailnet_id = $1 AND collection = $2")
                .bind(tailnet_id)
                .bind(name)
                .execute(change.tx())
                .await?
                .rows_affected();
        sqlx::query("DELETE FROM tailnet_collections WHERE tailnet_id = $1 AND name = $2")
            .bind(tailnet_id)
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
    /// adopted instance, one group. Returns those newly adopted. An instance
    /// registered as a node of another tailnet, or adopted into this
    /// collection by another tailnet, is refused (409) and nothing changes.
    pub async fn adopt(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        name: &str,
        instances: &[PublicId],
    ) -> Result<Vec<PublicId>, ControlError> {
        if !self.has_collection(tailnet_id, name).await? {
            return Err(Self::no_such_collection(name));
        }
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let mut newly = Vec::new();
        let now = tally_proto::timefmt::now_nanos();
        for i in instances {
            let hex = i.to_string();
            let registered = sqlx::query("SELECT tailnet_id FROM nodes WHERE instance = $1")
                .bind(&hex)
                .fetch_optional(change.tx())
                .await?
                .map(|r| r.try_get::<String, _>("tailnet_id"))
                .transpose()?;
            if registered.as_deref().is_some_and(|t| t != tailnet_id) {
                return Err(ControlError::Conflict(format!(
                    "instance {hex} is a node of another tailnet and cannot be adopted here"
                )));
            }
            let holder = sqlx::query(
                "SELECT tailnet_id FROM tailnet_adoptions WHERE collection = $1 AND instance = $2",
            )
            .bind(name)
            .bind(&hex)
            .fetch_optional(change.tx())
            .await?
            .map(|r| r.try_get::<String, _>("tailnet_id"))
            .transpose()?;
            match holder {
                Some(t) if t == tailnet_id => continue,
                Some(_) => {
                    return Err(ControlError::Conflict(format!(
                        "instance {hex} is already adopted into \"{name}\" by another tailnet"
                    )));
                }
                None if newly.contains(i) => continue,
                None => {}
            }
            sqlx::query(
                "INSERT INTO tailnet_adoptions (tailnet_id, collection, instance, adopted) VALUES ($1, $2, $3, $4)",
            )
            .bind(tailnet_id)
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
