//! Users and keys. API keys act for their user in their tailnet; auth keys
//! register nodes. Secrets are shown once and stored as SHA-256 only.

use super::audit::{Actor, AuditContext, Change, EventSpec, Target};
use super::model::{DeviceCreate, KeyInfo, Role, User, rfc3339};
use super::{ControlDb, ControlError, json_list, new_id, to_json_list, truncate};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// Longest key lifetime.
pub const MAX_KEY_EXPIRY_SECS: i64 = 365 * 86_400;
/// Key lifetime when none is asked for (auth keys; API keys never expire
/// unless asked).
pub const DEFAULT_AUTH_KEY_EXPIRY_SECS: i64 = 90 * 86_400;
/// Lifetime of an API key created without one (as Tailscale's).
pub const DEFAULT_API_KEY_EXPIRY_SECS: i64 = 90 * 86_400;

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// API or auth key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// Acts for a user on the API.
    Api,
    /// Registers nodes.
    Auth,
}

impl KeyType {
    /// `api` or `auth`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Auth => "auth",
        }
    }
}

/// How long a new key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyExpiry {
    /// The default: [`DEFAULT_API_KEY_EXPIRY_SECS`] for API keys,
    /// [`DEFAULT_AUTH_KEY_EXPIRY_SECS`] for auth keys.
    Default,
    /// This many seconds (1 to [`MAX_KEY_EXPIRY_SECS`]).
    Seconds(i64),
    /// Never (API keys only: the bootstrap key, or `neverExpires` asked
    /// for explicitly; the built-in detection rule flags such keys).
    Never,
}

/// What a new key is.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec<'a> {
    /// The user it acts for (API keys) or registers for (auth keys).
    pub user_id: &'a str,
    /// API or auth.
    pub key_type: KeyType,
    /// What it is for.
    pub description: &'a str,
    /// Lifetime.
    pub expiry: KeyExpiry,
    /// Auth keys: what registered devices get.
    pub caps: &'a DeviceCreate,
}

/// A key just created: its metadata and its secret (shown once).
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Metadata.
    pub info: KeyInfo,
    /// The secret.
    pub secret: String,
}

/// The user behind a valid API key.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Key ID.
    pub key_id: String,
    /// User ID.
    pub user_id: String,
    /// Login name.
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Tailnet ID.
    pub tailnet_id: String,
    /// Tailnet name.
    pub tailnet_name: String,
}

impl Principal {
    /// The audit actor.
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.user_id.clone(),
            actor_type: "USER".into(),
            login_name: self.login_name.clone(),
            display_name: self.display_name.clone(),
            tags: Vec::new(),
        }
    }
}

/// A valid auth key being used to register a node.
#[derive(Debug, Clone)]
pub struct AuthKeyUse {
    /// Key ID.
    pub key_id: String,
    /// Tailnet it registers into.
    pub tailnet_id: String,
    /// User who created it.
    pub user_id: String,
    /// What registered nodes get.
    pub caps: DeviceCreate,
}

/// Checks a login name: 1–254 printable characters without spaces.
pub fn validate_login(login: &str) -> Result<(), ControlError> {
    if (1..=254).contains(&login.chars().count())
        && login.chars().all(|c| !c.is_whitespace() && !c.is_control())
    {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "loginName {:?} is not valid: use 1 to 254 characters without spaces or control characters",
            truncate(login, 80)
        )))
    }
}

/// Checks a display name or description: at most `max` characters, no
/// control characters.
pub fn validate_text(field: &str, s: &str, max: usize) -> Result<(), ControlError> {
    if s.chars().count() <= max && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "{field} must be at most {max} characters without control characters"
        )))
    }
}

/// Checks tags: each `tag:` and 1–64 of `A-Z a-z 0-9 - _`; at most 50.
pub fn validate_tags(tags: &[String]) -> Result<(), ControlError> {
    if tags.len() > 50 {
        return Err(ControlError::Invalid("at most 50 tags".into()));
    }
    for t in tags {
        let ok = t.strip_prefix("tag:").is_some_and(|n| {
            (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !ok {
            return Err(ControlError::Invalid(format!(
                "tag {:?} is not valid: tags look like tag:name (letters, digits, '-', '_', up to 64)",
                truncate(t, 80)
            )));
        }
    }
    Ok(())
}

/// The refusal of the rank rule: `caller` may not act on a `target` user
/// (`what` says how), naming the permission the caller lacks.
fn rank_refusal(caller: Role, what: &str, target: Role) -> ControlError {
    let why = caller.lacks_of(target).map_or_else(
        || "that is not allowed".to_owned(),
        |p| {
            format!(
                "{} has {}, which {caller} lacks",
                target.with_article(),
                p.name()
            )
        },
    );
    ControlError::Forbidden(format!(
        "{} cannot {what}: {why} (a role manages only roles whose every permission it has); ask an owner",
        caller.with_article()
    ))
}

fn user_target(u: &User, property: &str) -> Target {
    Target {
        id: u.id.clone(),
        name: u.login_name.clone(),
        target_type: "USER".into(),
        property: property.into(),
        is_ephemeral: false,
    }
}

fn key_target(k: &KeyInfo) -> Target {
    Target {
        id: k.id.clone(),
        name: k.description.clone(),
        target_type: if k.key_type == "api" {
            "API_KEY".into()
        } else {
            "AUTH_KEY".into()
        },
        property: String::new(),
        is_ephemeral: false,
    }
}

const USER_COLS: &str = "id, tailnet_id, login_name, display_name, role, status, created";
const KEY_COLS: &str = "id, tailnet_id, user_id, key_type, description, created, expires, revoked, reusable, ephemeral, preauthorized, tags";

fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, ControlError> {
    let role: String = r.try_get("role")?;
    Ok(User {
        id: r.try_get("id")?,
        display_name: r.try_get("display_name")?,
        login_name: r.try_get("login_name")?,
        tailnet_id: r.try_get("tailnet_id")?,
        created: rfc3339(r.try_get("created")?),
        user_type: "member".into(),
        role: Role::parse(&role)
            .ok_or_else(|| ControlError::Internal(format!("unknown role {role:?} stored")))?,
        status: r.try_get("status")?,
    })
}

fn key_from_row(r: &sqlx::any::AnyRow, now: i64) -> Result<KeyInfo, ControlError> {
    let key_type: String = r.try_get("key_type")?;
    let expires: Option<i64> = r.try_get("expires")?;
    let revoked: Option<i64> = r.try_get("revoked")?;
    let caps = (key_type == "auth").then(|| -> Result<Value, ControlError> {
        Ok(json!({ "devices": { "create": DeviceCreate {
            reusable: r.try_get::<i64, _>("reusable")? != 0,
            ephemeral: r.try_get::<i64, _>("ephemeral")? != 0,
            preauthorized: r.try_get::<i64, _>("preauthorized")? != 0,
            tags: json_list(&r.try_get::<String, _>("tags")?),
        }}}))
    });
    Ok(KeyInfo {
        id: r.try_get("id")?,
        key_type,
        description: r.try_get("description")?,
        created: rfc3339(r.try_get("created")?),
        expires: expires.map(rfc3339),
        revoked: revoked.map(rfc3339),
        invalid: revoked.is_some() || expires.is_some_and(|e| e <= now),
        user_id: r.try_get("user_id")?,
        capabilities: caps.transpose()?,
    })
}

impl ControlDb {
    /// Inserts a user inside a change and records it.
    pub(crate) async fn insert_user(
        &self,
        change: &mut Change,
        login: &str,
        display: &str,
        role: Role,
        now: i64,
    ) -> Result<User, ControlError> {
        validate_login(login)?;
        validate_text("displayName", display, 100)?;
        let tailnet = change.tailnet_id().to_owned();
        let exists = sqlx::query(
            "SELECT id FROM users WHERE tailnet_id = $1 AND login_name = $2 AND status = 'active'",
        )
        .bind(&tailnet)
        .bind(login)
        .fetch_optional(change.tx())
        .await?;
        if exists.is_some() {
            return Err(ControlError::Conflict(format!(
                "a user {login:?} exists already in this tailnet"
            )));
        }
        let user = User {
            id: new_id("u"),
            display_name: display.to_owned(),
            login_name: login.to_owned(),
            tailnet_id: tailnet.clone(),
            created: rfc3339(now),
            user_type: "member".into(),
            role,
            status: "active".into(),
        };
        // A deleted user's login may be reused: free the unique slot.
        sqlx::query(
            "UPDATE users SET login_name = login_name || ' (deleted ' || id || ')' WHERE tailnet_id = $1 AND login_name = $2",
        )
        .bind(&tailnet)
        .bind(login)
        .execute(change.tx())
        .await?;
        sqlx::query(
            "INSERT INTO users (id, tailnet_id, login_name, display_name, role, status, created) VALUES ($1, $2, $3, $4, $5, 'active', $6)",
        )
        .bind(&user.id)
        .bind(&tailnet)
        .bind(login)
        .bind(display)
        .bind(role.name())
        .bind(now)
        .execute(change.tx())
        .await?;
        change
            .record(EventSpec::new("CREATE", user_target(&user, "")).values(
                Value::Null,
                json!({ "loginName": login, "displayName": display, "role": role }),
            ))
            .await?;
        Ok(user)
    }

    /// Creates a user with a role the caller may manage.
    pub async fn create_user(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        caller: &Principal,
        login: &str,
        display: &str,
        role: Role,
    ) -> Result<User, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let caller_role = self.current_role(&mut change, caller).await?;
        if !caller_role.may_manage(role) {
            return Err(rank_refusal(
                caller_role,
                &format!("create a user with role {role}"),
                role,
            ));
        }
        let u = self
            .insert_user(
                &mut change,
                login,
                display,
                role,
                tally_proto::timefmt::now_nanos(),
            )
            .await?;
        change.commit().await?;
        Ok(u)
    }

    /// Active users of a tailnet.
    pub async fn users(&self, tailnet_id: &str) -> Result<Vec<User>, ControlError> {
        sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE tailnet_id = $1 AND status = 'active' ORDER BY created, id"
        ))
        .bind(tailnet_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    /// An active user of a tailnet.
    pub async fn user(&self, tailnet_id: &str, id: &str) -> Result<User, ControlError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE id = $1 AND tailnet_id = $2 AND status = 'active'"
        ))
        .bind(id)
        .bind(tailnet_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("user {}", truncate(id, 40))))?;
        user_from_row(&row)
    }

    /// An active user of the change's tailnet, read inside the change (the
    /// rule checks see what the mutation changes).
    async fn user_in(&self, change: &mut Change, id: &str) -> Result<User, ControlError> {
        let tailnet = change.tailnet_id().to_owned();
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE id = $1 AND tailnet_id = $2 AND status = 'active'"
        ))
        .bind(id)
        .bind(tailnet)
        .fetch_optional(change.tx())
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("user {}", truncate(id, 40))))?;
        user_from_row(&row)
    }

    /// The caller's role now (inside the change): a caller demoted or
    /// deleted since its key was checked acts with what it has now.
    async fn current_role(
        &self,
        change: &mut Change,
        caller: &Principal,
    ) -> Result<Role, ControlError> {
        match self.user_in(change, &caller.user_id).await {
            Ok(u) => Ok(u.role),
            Err(ControlError::NotFound(_)) => Err(ControlError::Unauthorized(
                "the API key's user was deleted".into(),
            )),
            Err(e) => Err(e),
        }
    }

    async fn owners(&self, change: &mut Change) -> Result<i64, ControlError> {
        let tailnet = change.tailnet_id().to_owned();
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM users WHERE tailnet_id = $1 AND role = 'owner' AND status = 'active'",
        )
        .bind(tailnet)
        .fetch_one(change.tx())
        .await?
        .try_get("n")?)
    }

    /// Changes a user's role, within the rank rule (the caller manages the
    /// old and the new role) and keeping an owner.
    pub async fn set_role(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        caller: &Principal,
        user_id: &str,
        role: Role,
    ) -> Result<User, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let caller_role = self.current_role(&mut change, caller).await?;
        let user = self.user_in(&mut change, user_id).await?;
        for r in [user.role, role] {
            if !caller_role.may_manage(r) {
                return Err(rank_refusal(
                    caller_role,
                    &format!(
                        "change {} into {}",
                        user.role.with_article(),
                        role.with_article()
                    ),
                    r,
                ));
            }
        }
        if user.role == role {
            return Err(ControlError::Conflict(format!(
                "{} is already {}",
                user.login_name,
                role.with_article()
            )));
        }
        if user.role == Role::Owner && self.owners(&mut change).await? <= 1 {
            return Err(ControlError::Conflict(format!(
                "{} is the tailnet's last owner; make another user owner first",
                user.login_name
            )));
        }
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.name())
            .bind(user_id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("UPDATE", user_target(&user, "role"))
                    .values(json!(user.role), json!(role)),
            )
            .await?;
        change.commit().await?;
        Ok(User { role, ..user })
    }

    /// Deletes a user (within the rank rule) and revokes the user's keys
    /// and the keys the user created for others.
    pub async fn delete_user(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        caller: &Principal,
        user_id: &str,
    ) -> Result<(), ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let caller_role = self.current_role(&mut change, caller).await?;
        let user = self.user_in(&mut change, user_id).await?;
        if !caller_role.may_manage(user.role) {
            return Err(rank_refusal(
                caller_role,
                &format!("delete {}", user.role.with_article()),
                user.role,
            ));
        }
        if user.role == Role::Owner && self.owners(&mut change).await? <= 1 {
            return Err(ControlError::Conflict(format!(
                "{} is the tailnet's last owner and cannot be deleted",
                user.login_name
            )));
        }
        let now = tally_proto::timefmt::now_nanos();
        sqlx::query("UPDATE users SET status = 'deleted' WHERE id = $1")
            .bind(user_id)
            .execute(change.tx())
            .await?;
        let revoked = sqlx::query(
            "UPDATE keys SET revoked = $1 WHERE (user_id = $2 OR created_by = $2) AND revoked IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(change.tx())
        .await?
        .rows_affected();
        change
            .record(
                EventSpec::new("DELETE", user_target(&user, ""))
                    .values(
                        json!({ "loginName": user.login_name, "role": user.role }),
                        Value::Null,
                    )
                    .details(format!(
                        "{revoked} keys of the user or created by the user revoked"
                    )),
            )
            .await?;
        change.commit().await
    }

    /// Inserts a key inside a change and records it (without its secret).
    /// `created_by` is the user who asked for it (the key's own user for
    /// keys the server makes).
    pub(crate) async fn insert_key(
        &self,
        change: &mut Change,
        spec: KeySpec<'_>,
        created_by: &str,
        preset_hash: Option<&str>,
        now: i64,
    ) -> Result<NewKey, ControlError> {
        let KeySpec {
            user_id,
            key_type,
            description,
            expiry,
            caps,
        } = spec;
        validate_text("description", description, 100)?;
        if key_type == KeyType::Auth {
            validate_tags(&caps.tags)?;
        }
        let expiry = match (key_type, expiry) {
            (_, KeyExpiry::Seconds(s)) if !(1..=MAX_KEY_EXPIRY_SECS).contains(&s) => {
                return Err(ControlError::Invalid(format!(
                    "expirySeconds must be from 1 to {MAX_KEY_EXPIRY_SECS} (365 days)"
                )));
            }
            (_, KeyExpiry::Seconds(s)) => Some(s),
            (KeyType::Auth, KeyExpiry::Default) => Some(DEFAULT_AUTH_KEY_EXPIRY_SECS),
            (KeyType::Api, KeyExpiry::Default) => Some(DEFAULT_API_KEY_EXPIRY_SECS),
            (KeyType::Api, KeyExpiry::Never) => None,
            (KeyType::Auth, KeyExpiry::Never) => {
                return Err(ControlError::Invalid(
                    "auth keys always expire (at most 365 days); neverExpires applies to api keys only".into(),
                ));
            }
        };
        let id = new_id("k");
        let secret = format!(
            "tally-{}-{id}-{}",
            key_type.name(),
            hex::encode(rand::random::<[u8; 24]>())
        );
        let hash = preset_hash.map_or_else(|| hash_secret(&secret), str::to_owned);
        let expires = expiry.map(|s| now.saturating_add(s.saturating_mul(1_000_000_000)));
        let tailnet = change.tailnet_id().to_owned();
        sqlx::query(
            "INSERT INTO keys (id, tailnet_id, user_id, key_type, hash, description, created, expires, revoked, reusable, ephemeral, preauthorized, tags, uses, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, $12, 0, $13)",
        )
        .bind(&id)
        .bind(&tailnet)
        .bind(user_id)
        .bind(key_type.name())
        .bind(&hash)
        .bind(description)
        .bind(now)
        .bind(expires)
        .bind(i64::from(caps.reusable))
        .bind(i64::from(caps.ephemeral))
        .bind(i64::from(caps.preauthorized))
        .bind(to_json_list(&caps.tags))
        .bind(created_by)
        .execute(change.tx())
        .await?;
        let info = KeyInfo {
            id,
            key_type: key_type.name().into(),
            description: description.to_owned(),
            created: rfc3339(now),
            expires: expires.map(rfc3339),
            revoked: None,
            invalid: false,
            user_id: user_id.to_owned(),
            capabilities: (key_type == KeyType::Auth)
                .then(|| json!({ "devices": { "create": caps } })),
        };
        let mut shown = serde_json::to_value(&info).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut shown {
            m.remove("invalid");
        }
        change
            .record(EventSpec::new("CREATE", key_target(&info)).values(Value::Null, shown))
            .await?;
        Ok(NewKey { info, secret })
    }

    /// Creates a key for the caller or, when the caller may create keys for
    /// that user's role ([`Role::may_create_key_for`]), for another user.
    pub async fn create_key(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        caller: &Principal,
        spec: KeySpec<'_>,
    ) -> Result<NewKey, ControlError> {
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let caller_role = self.current_role(&mut change, caller).await?;
        if spec.user_id != caller.user_id {
            let user = self.user_in(&mut change, spec.user_id).await?;
            if !caller_role.may_create_key_for(user.role) {
                return Err(ControlError::Forbidden(format!(
                    "{} cannot create keys for another user ({}, {}): owners create keys for any user, admins for users below admin, everyone else only for themselves; {} can create their own key",
                    caller_role.with_article(),
                    user.login_name,
                    user.role.with_article(),
                    user.login_name
                )));
            }
        }
        let k = self
            .insert_key(
                &mut change,
                spec,
                &caller.user_id,
                None,
                tally_proto::timefmt::now_nanos(),
            )
            .await?;
        change.commit().await?;
        Ok(k)
    }

    /// Adds a key whose secret is given (bootstrap key, imported keys):
    /// only its hash is kept. Does nothing if the hash is known.
    pub async fn add_known_key(
        &self,
        tailnet_id: &str,
        user_id: &str,
        hash: &str,
        description: &str,
    ) -> Result<(), ControlError> {
        let known = || async {
            sqlx::query("SELECT id FROM keys WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await
                .map(|r| r.is_some())
        };
        if known().await? {
            return Ok(());
        }
        let added = async {
            let mut change = self
                .begin_change(tailnet_id, &AuditContext::system())
                .await?;
            let spec = KeySpec {
                user_id,
                key_type: KeyType::Api,
                description,
                expiry: KeyExpiry::Never,
                caps: &DeviceCreate::default(),
            };
            self.insert_key(
                &mut change,
                spec,
                user_id,
                Some(hash),
                tally_proto::timefmt::now_nanos(),
            )
            .await?;
            change.commit().await
        }
        .await;
        match added {
            // Another server sharing the database added it at the same moment.
            Err(_) if known().await? => Ok(()),
            other => other,
        }
    }

    /// Keys of a tailnet, newest first.
    pub async fn keys(&self, tailnet_id: &str) -> Result<Vec<KeyInfo>, ControlError> {
        let now = tally_proto::timefmt::now_nanos();
        sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM keys WHERE tailnet_id = $1 ORDER BY created DESC, id"
        ))
        .bind(tailnet_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| key_from_row(r, now))
        .collect()
    }

    /// One key of a tailnet.
    pub async fn key(&self, tailnet_id: &str, id: &str) -> Result<KeyInfo, ControlError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM keys WHERE id = $1 AND tailnet_id = $2"
        ))
        .bind(id)
        .bind(tailnet_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("key {}", truncate(id, 40))))?;
        key_from_row(&row, tally_proto::timefmt::now_nanos())
    }

    /// Revokes a key. Revoking another user's key needs the right to
    /// manage that user's role (a network admin cannot revoke an it-admin's
    /// key); the role of a deleted user counts as it was.
    pub async fn revoke_key(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        caller: &Principal,
        id: &str,
    ) -> Result<(), ControlError> {
        let key = self.key(tailnet_id, id).await?;
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let caller_role = self.current_role(&mut change, caller).await?;
        if key.user_id != caller.user_id {
            let role: String = sqlx::query("SELECT role FROM users WHERE id = $1")
                .bind(&key.user_id)
                .fetch_optional(change.tx())
                .await?
                .ok_or_else(|| ControlError::Internal(format!("key {id} belongs to no user")))?
                .try_get("role")?;
            let role = Role::parse(&role)
                .ok_or_else(|| ControlError::Internal(format!("unknown role {role:?} stored")))?;
            if !caller_role.may_manage(role) {
                return Err(rank_refusal(
                    caller_role,
                    &format!("revoke a key of {}", role.with_article()),
                    role,
                ));
            }
        }
        if key.revoked.is_some() {
            return Err(ControlError::Conflict(format!(
                "key {id} is already revoked"
            )));
        }
        let now = tally_proto::timefmt::now_nanos();
        sqlx::query("UPDATE keys SET revoked = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("REVOKE", key_target(&key))
                    .values(json!({ "revoked": false }), json!({ "revoked": true })),
            )
            .await?;
        change.commit().await
    }

    /// The user behind an API key, if the key is valid now.
    pub async fn authenticate(&self, secret: &str) -> Result<Principal, ControlError> {
        self.principal_where("k.hash", &hash_secret(secret)).await
    }

    /// The principal of API key `key_id`, with every check of
    /// [`ControlDb::authenticate`] (a console session opened with a key).
    pub async fn key_principal(&self, key_id: &str) -> Result<Principal, ControlError> {
        self.principal_where("k.id", key_id).await
    }

    /// The principal of the key whose `column` is `value`.
    async fn principal_where(&self, column: &str, value: &str) -> Result<Principal, ControlError> {
        let row = sqlx::query(&format!(
            "SELECT k.id AS key_id, k.key_type, k.expires, k.revoked, k.created_by, u.id AS user_id, u.login_name, u.display_name, u.role, u.status, t.id AS tailnet_id, t.name AS tailnet_name, t.deleted
             FROM keys k JOIN users u ON u.id = k.user_id JOIN tailnets t ON t.id = k.tailnet_id
             WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::Unauthorized("the API key is not valid (unknown)".into()))?;
        let now = tally_proto::timefmt::now_nanos();
        let key_type: String = row.try_get("key_type")?;
        if key_type != "api" {
            return Err(ControlError::Unauthorized(
                "this is an auth key, which only registers nodes; use an API key".into(),
            ));
        }
        if let Some(r) = row.try_get::<Option<i64>, _>("revoked")? {
            return Err(ControlError::Unauthorized(format!(
                "the API key was revoked at {}; create a new one",
                rfc3339(r)
            )));
        }
        if let Some(e) = row
            .try_get::<Option<i64>, _>("expires")?
            .filter(|e| *e <= now)
        {
            return Err(ControlError::Unauthorized(format!(
                "the API key expired at {}; create a new one",
                rfc3339(e)
            )));
        }
        if row.try_get::<String, _>("status")? != "active"
            || row.try_get::<Option<i64>, _>("deleted")?.is_some()
        {
            return Err(ControlError::Unauthorized(
                "the API key's user or tailnet was deleted".into(),
            ));
        }
        let role: String = row.try_get("role")?;
        let role = Role::parse(&role)
            .ok_or_else(|| ControlError::Internal(format!("unknown role {role:?} stored")))?;
        let user_id: String = row.try_get("user_id")?;
        let login_name: String = row.try_get("login_name")?;
        let created_by: Option<String> = row.try_get("created_by")?;
        if let Some(problem) = self
            .delegation_problem(&user_id, &login_name, role, created_by.as_deref())
            .await?
        {
            return Err(ControlError::Unauthorized(format!("the API key {problem}")));
        }
        Ok(Principal {
            key_id: row.try_get("key_id")?,
            user_id,
            login_name,
            display_name: row.try_get("display_name")?,
            role,
            tailnet_id: row.try_get("tailnet_id")?,
            tailnet_name: row.try_get("tailnet_name")?,
        })
    }

    /// Why a key that `created_by` made for another user (`user_id`, now
    /// `role`) no longer acts: its creator is gone or could not create it
    /// now ([`Role::may_create_key_for`]). `None` when the key is the
    /// user's own (or predates the record of creators).
    async fn delegation_problem(
        &self,
        user_id: &str,
        login: &str,
        role: Role,
        created_by: Option<&str>,
    ) -> Result<Option<String>, ControlError> {
        let Some(creator_id) = created_by.filter(|c| *c != user_id) else {
            return Ok(None);
        };
        let creator = sqlx::query("SELECT login_name, role, status FROM users WHERE id = $1")
            .bind(creator_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(creator) = creator else {
            return Ok(Some(format!(
                "was created for {login} by a user who no longer exists; {login} should create a new key"
            )));
        };
        let creator_login: String = creator.try_get("login_name")?;
        let creator_role: String = creator.try_get("role")?;
        let creator_role = Role::parse(&creator_role).ok_or_else(|| {
            ControlError::Internal(format!("unknown role {creator_role:?} stored"))
        })?;
        if creator.try_get::<String, _>("status")? != "active" {
            return Ok(Some(format!(
                "was created for {login} by {creator_login}, who was deleted; {login} should create a new key"
            )));
        }
        if !creator_role.may_create_key_for(role) {
            return Ok(Some(format!(
                "was created for {login} by {creator_login}, who is now {} and may not create keys for {} ({login}'s role now); \
                 a key never carries more than its creator may grant: {login} should create a new key",
                creator_role.with_article(),
                role.with_article()
            )));
        }
        Ok(None)
    }

    /// Checks an auth key for registering a node.
    pub async fn check_auth_key(&self, secret: &str) -> Result<AuthKeyUse, ControlError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLS}, uses, created_by FROM keys WHERE hash = $1"
        ))
        .bind(hash_secret(secret))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::Unauthorized("the auth key is not valid (unknown)".into()))?;
        let info = key_from_row(&row, tally_proto::timefmt::now_nanos())?;
        if info.key_type != "auth" {
            return Err(ControlError::Unauthorized(
                "this is an API key; nodes register with an auth key (tally keys create --type auth)".into(),
            ));
        }
        if info.invalid {
            return Err(ControlError::Unauthorized(
                "the auth key is revoked or expired; create a new one".into(),
            ));
        }
        let caps: DeviceCreate = info
            .capabilities
            .as_ref()
            .and_then(|c| c.pointer("/devices/create"))
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        if !caps.reusable && row.try_get::<i64, _>("uses")? > 0 {
            return Err(ControlError::Unauthorized(
                "the auth key was for one use and has been used; create a reusable one".into(),
            ));
        }
        let user = sqlx::query("SELECT login_name, role FROM users WHERE id = $1")
            .bind(&info.user_id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(user) = user {
            let login: String = user.try_get("login_name")?;
            let role: String = user.try_get("role")?;
            let role = Role::parse(&role)
                .ok_or_else(|| ControlError::Internal(format!("unknown role {role:?} stored")))?;
            if let Some(problem) = self
                .delegation_problem(
                    &info.user_id,
                    &login,
                    role,
                    row.try_get::<Option<String>, _>("created_by")?.as_deref(),
                )
                .await?
            {
                return Err(ControlError::Unauthorized(format!(
                    "the auth key {problem}"
                )));
            }
        }
        Ok(AuthKeyUse {
            key_id: info.id,
            tailnet_id: row.try_get("tailnet_id")?,
            user_id: info.user_id,
            caps,
        })
    }
}
