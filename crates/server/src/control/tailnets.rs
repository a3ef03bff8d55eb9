//! Tailnets: the unit of configuration. Creation (with its first owner),
//! rename, delete, lookup, and the first start's default tailnet.

use super::audit::{AuditContext, Change, EventSpec, Target, genesis_hash};
use super::model::{Role, Tailnet, rfc3339};
use super::principals::{KeySpec, KeyType, NewKey};
use super::{ControlDb, ControlError, new_id, truncate};
use serde_json::json;
use sqlx::Row;

/// Name of the tailnet created on first start.
pub const DEFAULT_TAILNET: &str = "default";

/// Checks a tailnet name: 1–63 of `a-z 0-9 . -`, starting and ending with a
/// letter or digit.
pub fn validate_tailnet_name(name: &str) -> Result<(), ControlError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "tailnet name {:?} is not valid: use 1 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit",
            truncate(name, 80)
        )))
    }
}

/// A tailnet created with its owner and the owner's first API key.
#[derive(Debug, Clone)]
pub struct CreatedTailnet {
    /// The tailnet.
    pub tailnet: Tailnet,
    /// Its owner's user ID.
    pub owner_id: String,
    /// The owner's API key (clear text, shown once), if one was made.
    pub key: Option<NewKey>,
}

impl ControlDb {
    /// Opens a change that creates a tailnet row (its chain starts at the
    /// genesis hash) and records into the new tailnet.
    async fn begin_new_tailnet(
        &self,
        name: &str,
        ctx: &AuditContext,
        now: i64,
    ) -> Result<(Change, Tailnet), ControlError> {
        validate_tailnet_name(name)?;
        let id = new_id("T");
        {
            let _w = self.write_lock.lock().await;
            let exists = sqlx::query("SELECT id FROM tailnets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_some() {
                return Err(ControlError::Conflict(format!(
                    "a tailnet named {name:?} exists already"
                )));
            }
            sqlx::query(
                "INSERT INTO tailnets (id, name, created, deleted, audit_seq, audit_head, audit_time, anchor_seq, anchor_hash)
                 VALUES ($1, $2, $3, NULL, 0, $4, 0, 0, $4)",
            )
            .bind(&id)
            .bind(name)
            .bind(now)
            .bind(genesis_hash(&id))
            .execute(&self.pool)
            .await?;
        }
        // The row exists now; if the change below fails, remove it again so
        // no tailnet exists without its creation event.
        match self.begin_change(&id, ctx).await {
            Ok(c) => Ok((
                c,
                Tailnet {
                    id,
                    name: name.to_owned(),
                    created: rfc3339(now),
                },
            )),
            Err(e) => {
                let _ = sqlx::query("DELETE FROM tailnets WHERE id = $1")
                    .bind(&id)
                    .execute(&self.pool)
                    .await;
                Err(e)
            }
        }
    }

    /// Creates a tailnet, its owner (`owner_login`) and, when `with_key`,
    /// an API key for the owner. One event group in the new tailnet's log.
    pub async fn create_tailnet(
        &self,
        name: &str,
        owner_login: &str,
        owner_display: &str,
        ctx: &AuditContext,
        with_key: bool,
    ) -> Result<CreatedTailnet, ControlError> {
        let now = tally_proto::timefmt::now_nanos();
        let (mut change, tailnet) = self.begin_new_tailnet(name, ctx, now).await?;
        let result = async {
            change
                .record(
                    EventSpec::new("CREATE", tailnet_target(&tailnet.id, name, ""))
                        .values(serde_json::Value::Null, json!({ "name": name })),
                )
                .await?;
            let owner = self
                .insert_user(&mut change, owner_login, owner_display, Role::Owner, now)
                .await?;
            let key = if with_key {
                Some(
                    self.insert_key(
                        &mut change,
                        KeySpec {
                            user_id: &owner.id,
                            key_type: KeyType::Api,
                            description: "owner key (created with the tailnet)",
                            expiry: super::principals::KeyExpiry::Default,
                            caps: &Default::default(),
                        },
                        &owner.id,
                        None,
                        now,
                    )
                    .await?,
                )
            } else {
                None
            };
            Ok::<_, ControlError>((owner.id, key))
        }
        .await;
        match result {
            Ok((owner_id, key)) => {
                change.commit().await?;
                Ok(CreatedTailnet {
                    tailnet,
                    owner_id,
                    key,
                })
            }
            Err(e) => {
                drop(change);
                let _ = sqlx::query("DELETE FROM tailnets WHERE id = $1")
                    .bind(&tailnet.id)
                    .execute(&self.pool)
                    .await;
                Err(e)
            }
        }
    }

    /// The default tailnet, created with its owner on first start.
    /// Returns it and whether it was created now.
    pub async fn ensure_default_tailnet(&self) -> Result<(Tailnet, bool), ControlError> {
        if let Some(t) = self.tailnet_by_name(DEFAULT_TAILNET).await? {
            return Ok((t, false));
        }
        let any =
            sqlx::query("SELECT id FROM tailnets WHERE deleted IS NULL ORDER BY created LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if let Some(r) = any {
            let id: String = r.try_get("id")?;
            let t = self
                .tailnet(&id)
                .await?
                .ok_or_else(|| ControlError::NotFound(format!("tailnet {id}")))?;
            return Ok((t, false));
        }
        match self
            .create_tailnet(
                DEFAULT_TAILNET,
                "admin",
                "Administrator",
                &AuditContext::system(),
                false,
            )
            .await
        {
            Ok(created) => Ok((created.tailnet, true)),
            // Another server sharing the database created it first.
            Err(ControlError::Conflict(_)) => self
                .tailnet_by_name(DEFAULT_TAILNET)
                .await?
                .map(|t| (t, false))
                .ok_or_else(|| ControlError::NotFound(format!("tailnet {DEFAULT_TAILNET}"))),
            Err(e) => Err(e),
        }
    }

    /// IDs of every live tailnet.
    pub async fn all_tailnet_ids(&self) -> Result<Vec<String>, ControlError> {
        sqlx::query("SELECT id FROM tailnets WHERE deleted IS NULL ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("id")?))
            .collect()
    }

    /// A live tailnet by ID.
    pub async fn tailnet(&self, id: &str) -> Result<Option<Tailnet>, ControlError> {
        let row =
            sqlx::query("SELECT id, name, created FROM tailnets WHERE id = $1 AND deleted IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| tailnet_from_row(&r)).transpose()
    }

    /// A live tailnet by name.
    pub async fn tailnet_by_name(&self, name: &str) -> Result<Option<Tailnet>, ControlError> {
        let row = sqlx::query(
            "SELECT id, name, created FROM tailnets WHERE name = $1 AND deleted IS NULL",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| tailnet_from_row(&r)).transpose()
    }

    /// The owner of a tailnet with the oldest account (for bootstrap keys).
    pub async fn first_owner(&self, tailnet_id: &str) -> Result<String, ControlError> {
        let r = sqlx::query(
            "SELECT id FROM users WHERE tailnet_id = $1 AND role = 'owner' AND status = 'active' ORDER BY created LIMIT 1",
        )
        .bind(tailnet_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("owner of tailnet {tailnet_id}")))?;
        Ok(r.try_get("id")?)
    }

    /// Renames a tailnet.
    pub async fn rename_tailnet(
        &self,
        id: &str,
        new_name: &str,
        ctx: &AuditContext,
    ) -> Result<Tailnet, ControlError> {
        validate_tailnet_name(new_name)?;
        let old = self
            .tailnet(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("tailnet {id}")))?;
        if old.name == new_name {
            return Err(ControlError::Conflict(format!(
                "the tailnet is already named {new_name:?}"
            )));
        }
        let mut change = self.begin_change(id, ctx).await?;
        let taken = sqlx::query("SELECT id FROM tailnets WHERE name = $1")
            .bind(new_name)
            .fetch_optional(change.tx())
            .await?;
        if taken.is_some() {
            return Err(ControlError::Conflict(format!(
                "a tailnet named {new_name:?} exists already"
            )));
        }
        sqlx::query("UPDATE tailnets SET name = $1 WHERE id = $2")
            .bind(new_name)
            .bind(id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("UPDATE", tailnet_target(id, new_name, "name"))
                    .values(json!(old.name), json!(new_name)),
            )
            .await?;
        change.commit().await?;
        Ok(Tailnet {
            name: new_name.to_owned(),
            ..old
        })
    }

    /// Deletes a tailnet: its keys stop working, its collections are
    /// deleted (their entries expire), its audit log stays verifiable.
    pub async fn delete_tailnet(&self, id: &str, ctx: &AuditContext) -> Result<(), ControlError> {
        let t = self
            .tailnet(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("tailnet {id}")))?;
        let live: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tailnets WHERE deleted IS NULL")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        if live <= 1 {
            return Err(ControlError::Conflict(
                "this is the server's last tailnet; create another one before deleting it".into(),
            ));
        }
        let now = tally_proto::timefmt::now_nanos();
        let mut change = self.begin_change(id, ctx).await?;
        let freed = format!("{}.deleted.{}", truncate(&t.name, 30), &id[1..9]);
        sqlx::query("UPDATE tailnets SET deleted = $1, name = $2 WHERE id = $3")
            .bind(now)
            .bind(&freed)
            .bind(id)
            .execute(change.tx())
            .await?;
        sqlx::query("UPDATE keys SET revoked = $1 WHERE tailnet_id = $2 AND revoked IS NULL")
            .bind(now)
            .bind(id)
            .execute(change.tx())
            .await?;
        sqlx::query("DELETE FROM tailnet_adoptions WHERE tailnet_id = $1")
            .bind(id)
            .execute(change.tx())
            .await?;
        sqlx::query("DELETE FROM tailnet_collections WHERE tailnet_id = $1")
            .bind(id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("DELETE", tailnet_target(id, &t.name, ""))
                    .values(json!({ "name": t.name }), serde_json::Value::Null),
            )
            .await?;
        change.commit().await
    }
}

/// The audit target of a tailnet.
pub fn tailnet_target(id: &str, name: &str, property: &str) -> Target {
    Target {
        id: id.to_owned(),
        name: name.to_owned(),
        target_type: "TAILNET".into(),
        property: property.to_owned(),
        is_ephemeral: false,
    }
}

fn tailnet_from_row(r: &sqlx::any::AnyRow) -> Result<Tailnet, ControlError> {
    Ok(Tailnet {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created: rfc3339(r.try_get("created")?),
    })
}
