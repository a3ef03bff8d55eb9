//! Console sign-in: passwords (argon2id), one-time setup links, and
//! sessions.
//!
//! - A password belongs to a user; it is stored as an argon2id PHC string,
//!   never in the audit log (events say that it changed, not what to).
//! - A setup link carries a random token (stored as its SHA-256) that sets
//!   the user's password once, within 24 hours.
//! - A session is a random token (the `tally_session` cookie; stored as
//!   its SHA-256) with its user, the API key it was opened with (if any),
//!   a CSRF token and an expiry (12 hours). It acts as its user with the
//!   user's current role; one opened with an API key ends when the key is
//!   revoked or expires.

use super::audit::{AuditContext, EventSpec, Target};
use super::principals::{Principal, hash_secret};
use super::{ControlDb, ControlError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sqlx::Row;

/// How long a session lasts.
pub const SESSION_NANOS: i64 = 12 * 3600 * 1_000_000_000;
/// How long a setup link is good for.
pub const SETUP_NANOS: i64 = 24 * 3600 * 1_000_000_000;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
/// Longest password accepted (argon2 takes any length; bound the work).
pub const MAX_PASSWORD: usize = 1024;

/// A new session: the cookie's token and the CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie value (shown once; stored hashed).
    pub token: String,
    /// The token state-changing requests must carry.
    pub csrf: String,
    /// Expiry, Unix ns.
    pub expires: i64,
}

/// A session found by its token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who it acts as.
    pub principal: Principal,
    /// Its CSRF token.
    pub csrf: String,
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<(), ControlError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(ControlError::Invalid(format!(
            "the password is too short: use at least {MIN_PASSWORD} characters (a passphrase of a few words is best)"
        )));
    }
    if password.len() > MAX_PASSWORD {
        return Err(ControlError::Invalid(format!(
            "the password is too long (at most {MAX_PASSWORD} bytes)"
        )));
    }
    Ok(())
}

/// The argon2id hash (PHC string) of `password`.
fn hash_password(password: &str) -> Result<String, ControlError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ControlError::Internal(format!("password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ControlError::Internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches the PHC string `stored`.
fn password_matches(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the login is unknown, so that a wrong
/// login and a wrong password take the same time.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

fn user_target(user_id: &str, login: &str, property: &str) -> Target {
    Target {
        id: user_id.to_owned(),
        name: login.to_owned(),
        target_type: "USER".into(),
        property: property.to_owned(),
        is_ephemeral: false,
    }
}

impl ControlDb {
    /// Sets user `user_id`'s password (audited as an update of the user's
    /// `PASSWORD`, without the password).
    pub async fn set_password(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        user_id: &str,
        password: &str,
    ) -> Result<(), ControlError> {
        check_password(password)?;
        let user = self.user(tailnet_id, user_id).await?;
        let hash = hash_password(password)?;
        let now = tally_proto::timefmt::now_nanos();
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        sqlx::query("DELETE FROM passwords WHERE user_id = $1")
            .bind(user_id)
            .execute(change.tx())
            .await?;
        sqlx::query(
            "INSERT INTO passwords (user_id, tailnet_id, hash, updated) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(tailnet_id)
        .bind(&hash)
        .bind(now)
        .execute(change.tx())
        .await?;
        // A new password ends the user's other password sessions.
        sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND key_id = ''")
            .bind(user_id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("UPDATE", user_target(user_id, &user.login_name, "PASSWORD"))
                    .details("password set".to_owned()),
            )
            .await?;
        change.commit().await
    }

    /// Makes a one-time setup link's token for user `user_id` (audited).
    pub async fn password_setup(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        user_id: &str,
    ) -> Result<(String, i64), ControlError> {
        let user = self.user(tailnet_id, user_id).await?;
        let token = random_token();
        let expires = tally_proto::timefmt::now_nanos() + SETUP_NANOS;
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        sqlx::query("DELETE FROM password_setups WHERE user_id = $1")
            .bind(user_id)
            .execute(change.tx())
            .await?;
        sqlx::query(
            "INSERT INTO password_setups (token_hash, tailnet_id, user_id, expires) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash_secret(&token))
        .bind(tailnet_id)
        .bind(user_id)
        .bind(expires)
        .execute(change.tx())
        .await?;
        change
            .record(
                EventSpec::new(
                    "CREATE",
                    user_target(user_id, &user.login_name, "PASSWORD_SETUP"),
                )
                .details("one-time password setup link".to_owned()),
            )
            .await?;
        change.commit().await?;
        Ok((token, expires))
    }

    /// Uses a setup token: sets the password and answers the user's
    /// tailnet and ID. The token works once.
    pub async fn complete_setup(
        &self,
        token: &str,
        password: &str,
        remote: Option<String>,
    ) -> Result<(String, String), ControlError> {
        check_password(password)?;
        let row = sqlx::query(
            "SELECT tailnet_id, user_id, expires FROM password_setups WHERE token_hash = $1",
        )
        .bind(hash_secret(token))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            ControlError::Unauthorized(
                "this setup link is not valid (used already, or replaced by a newer one); ask an admin for a new one".into(),
            )
        })?;
        let (tailnet_id, user_id): (String, String) =
            (row.try_get("tailnet_id")?, row.try_get("user_id")?);
        sqlx::query("DELETE FROM password_setups WHERE token_hash = $1")
            .bind(hash_secret(token))
            .execute(&self.pool)
            .await?;
        if row.try_get::<i64, _>("expires")? <= tally_proto::timefmt::now_nanos() {
            return Err(ControlError::Unauthorized(
                "this setup link expired; ask an admin for a new one".into(),
            ));
        }
        let user = self.user(&tailnet_id, &user_id).await?;
        let ctx = AuditContext {
            actor: super::audit::Actor {
                id: user.id.clone(),
                actor_type: "USER".into(),
                login_name: user.login_name.clone(),
                display_name: user.display_name.clone(),
                tags: Vec::new(),
            },
            origin: super::audit::Origin::Console,
            remote,
        };
        self.set_password(&tailnet_id, &ctx, &user_id, password)
            .await?;
        Ok((tailnet_id, user_id))
    }

    /// Checks a login's password; answers its tailnet and user ID. Every
    /// failure is the same 401 (whether the login exists is not told).
    pub async fn check_login(
        &self,
        login: &str,
        tailnet: Option<&str>,
        password: &str,
    ) -> Result<(String, String), ControlError> {
        let rows = sqlx::query(
            "SELECT u.id, u.tailnet_id, t.name AS tailnet_name, p.hash
             FROM users u JOIN tailnets t ON t.id = u.tailnet_id
             LEFT JOIN passwords p ON p.user_id = u.id
             WHERE u.login_name = $1 AND u.status = 'active' AND t.deleted IS NULL",
        )
        .bind(login)
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| {
                tailnet.is_none_or(|t| {
                    r.try_get::<String, _>("tailnet_id").is_ok_and(|id| id == t)
                        || r.try_get::<String, _>("tailnet_name").is_ok_and(|n| n == t)
                })
            })
            .collect();
        let wrong = || {
            ControlError::Unauthorized(
                "wrong login or password (a user without a password signs in with a setup link from an admin, or with an API key)".into(),
            )
        };
        if rows.len() > 1 {
            // Still spend the hashing time.
            let _ = password_matches(decoy_hash(), password);
            return Err(ControlError::Invalid(format!(
                "{login} is a user of several tailnets; give the tailnet"
            )));
        }
        let Some(row) = rows.first() else {
            let _ = password_matches(decoy_hash(), password);
            return Err(wrong());
        };
        let hash: Option<String> = row.try_get("hash")?;
        let ok = password_matches(hash.as_deref().unwrap_or(decoy_hash()), password);
        if !ok || hash.is_none() {
            return Err(wrong());
        }
        Ok((row.try_get("tailnet_id")?, row.try_get("id")?))
    }

    /// Opens a session for a user (password sign-in: `key_id` empty) or
    /// an API key's user.
    pub async fn open_session(
        &self,
        tailnet_id: &str,
        user_id: &str,
        key_id: &str,
    ) -> Result<NewSession, ControlError> {
        let now = tally_proto::timefmt::now_nanos();
        let s = NewSession {
            token: random_token(),
            csrf: random_token(),
            expires: now + SESSION_NANOS,
        };
        sqlx::query("DELETE FROM sessions WHERE expires <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, tailnet_id, user_id, key_id, csrf, created, expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hash_secret(&s.token))
        .bind(tailnet_id)
        .bind(user_id)
        .bind(key_id)
        .bind(&s.csrf)
        .bind(now)
        .bind(s.expires)
        .execute(&self.pool)
        .await?;
        Ok(s)
    }

    /// The session of a cookie token, if it is valid.
    pub async fn session(&self, token: &str) -> Result<Session, ControlError> {
        let row = sqlx::query(
            "SELECT tailnet_id, user_id, key_id, csrf, expires FROM sessions WHERE token_hash = $1",
        )
        .bind(hash_secret(token))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            ControlError::Unauthorized(
                "the session is not valid (signed out?); sign in again".into(),
            )
        })?;
        if row.try_get::<i64, _>("expires")? <= tally_proto::timefmt::now_nanos() {
            return Err(ControlError::Unauthorized(
                "the session expired; sign in again".into(),
            ));
        }
        let key_id: String = row.try_get("key_id")?;
        let principal = if key_id.is_empty() {
            self.session_principal(
                &row.try_get::<String, _>("tailnet_id")?,
                &row.try_get::<String, _>("user_id")?,
            )
            .await?
        } else {
            self.key_principal(&key_id).await?
        };
        Ok(Session {
            principal,
            csrf: row.try_get("csrf")?,
        })
    }

    /// Ends a session.
    pub async fn close_session(&self, token: &str) -> Result<(), ControlError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(hash_secret(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The tailnet and actor of `login` for recording a refused sign-in:
    /// `None` unless exactly one active user (in `tailnet`, if given) has
    /// that login.
    pub async fn login_actor(
        &self,
        login: &str,
        tailnet: Option<&str>,
    ) -> Result<Option<(String, super::audit::Actor)>, ControlError> {
        let rows = sqlx::query(
            "SELECT u.id, u.tailnet_id, u.display_name, t.name AS tailnet_name
             FROM users u JOIN tailnets t ON t.id = u.tailnet_id
             WHERE u.login_name = $1 AND u.status = 'active' AND t.deleted IS NULL",
        )
        .bind(login)
        .fetch_all(&self.pool)
        .await?;
        let mut found = Vec::new();
        for r in rows {
            let (id, name): (String, String) =
                (r.try_get("tailnet_id")?, r.try_get("tailnet_name")?);
            if tailnet.is_none_or(|t| t == id || t == name) {
                found.push((
                    id,
                    super::audit::Actor {
                        id: r.try_get("id")?,
                        actor_type: "USER".into(),
                        login_name: login.to_owned(),
                        display_name: r.try_get("display_name")?,
                        tags: Vec::new(),
                    },
                ));
            }
        }
        Ok(if found.len() == 1 { found.pop() } else { None })
    }

    /// A user acting with their current role (password sessions).
    pub async fn session_principal(
        &self,
        tailnet_id: &str,
        user_id: &str,
    ) -> Result<Principal, ControlError> {
        let row = sqlx::query(
            "SELECT u.login_name, u.display_name, u.role, u.status, t.name AS tailnet_name, t.deleted
             FROM users u JOIN tailnets t ON t.id = u.tailnet_id
             WHERE u.id = $1 AND u.tailnet_id = $2",
        )
        .bind(user_id)
        .bind(tailnet_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::Unauthorized("the session's user was deleted".into()))?;
        if row.try_get::<String, _>("status")? != "active"
            || row.try_get::<Option<i64>, _>("deleted")?.is_some()
        {
            return Err(ControlError::Unauthorized(
                "the session's user or tailnet was deleted".into(),
            ));
        }
        let role: String = row.try_get("role")?;
        Ok(Principal {
            key_id: String::new(),
            user_id: user_id.to_owned(),
            login_name: row.try_get("login_name")?,
            display_name: row.try_get("display_name")?,
            role: super::model::Role::parse(&role)
                .ok_or_else(|| ControlError::Internal(format!("unknown role {role:?} stored")))?,
            tailnet_id: tailnet_id.to_owned(),
            tailnet_name: row.try_get("tailnet_name")?,
        })
    }
}
