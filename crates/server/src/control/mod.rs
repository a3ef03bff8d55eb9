//! The control database: tailnets, users, keys, nodes, settings,
//! collections and the configuration audit log. SQLite (`control.db` in
//! the data directory, WAL, synchronous commits) by default, PostgreSQL
//! when given a `postgres://` URL; one set of portable queries through
//! sqlx's `Any` driver. Every mutation goes through a [`audit::Change`].

pub mod audit;
pub mod catalog;
pub mod collections;
pub mod detection;
pub mod model;
pub mod nodes;
pub mod outbox;
pub mod principals;
pub mod retention;
pub mod schema;
pub mod secrets;
pub mod sessions;
pub mod settings;
pub mod streams;
pub mod tailnets;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Errors of control-plane operations; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The object does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The object exists or the state forbids the change (409).
    #[error("{0}")]
    Conflict(String),
    /// The input is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The credentials are not valid (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The database failed.
    #[error("control database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A bug or corrupt data.
    #[error("{0}")]
    Internal(String),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The control database.
#[derive(Clone)]
pub struct ControlDb {
    pool: AnyPool,
    write_lock: Arc<tokio::sync::Mutex<()>>,
    backend: Backend,
    /// Notified after each commit of audit events (the outbox wakes).
    audit_committed: Arc<tokio::sync::Notify>,
}

/// A fresh random ID: `prefix` and 16 hex digits.
pub fn new_id(prefix: &str) -> String {
    let b: [u8; 8] = rand::random();
    format!("{prefix}{}", hex::encode(b))
}

/// At most `n` characters of `s`, for messages.
pub(crate) fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// True for a `postgres://` or `postgresql://` URL.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl ControlDb {
    /// Opens (creating if needed) the control database and runs the
    /// migrations: PostgreSQL at `url` when given, else SQLite in `data_dir`.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Self, ControlError> {
        sqlx::any::install_default_drivers();
        let (pool, backend) = match url {
            Some(url) if is_postgres_url(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                (pool, Backend::Postgres)
            }
            Some(other) => {
                return Err(ControlError::Invalid(format!(
                    "--control-db must be a postgres:// URL (got {:?}); leave it out to use SQLite in the data directory",
                    other.split('@').next_back().unwrap_or("")
                )));
            }
            None => {
                let path = data_dir.join("control.db");
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?;
                (pool, Backend::Sqlite)
            }
        };
        let db = Self {
            pool,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            audit_committed: Arc::new(tokio::sync::Notify::new()),
            backend,
        };
        db.migrate().await?;
        Ok(db)
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for tests and benchmarks that inspect or tamper.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), ControlError> {
        // Servers sharing a PostgreSQL database migrate one at a time.
        let mut lock = None;
        if self.backend == Backend::Postgres {
            let mut conn = self.pool.acquire().await?;
            conn.execute("SELECT pg_advisory_lock(7461726)").await?;
            lock = Some(conn);
        }
        let result = self.migrate_locked().await;
        if let Some(mut conn) = lock {
            conn.execute("SELECT pg_advisory_unlock(7461726)").await?;
        }
        result
    }

    async fn migrate_locked(&self) -> Result<(), ControlError> {
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied BIGINT NOT NULL)",
            )
            .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("version"))
            .collect::<Result<_, _>>()?;
        for (version, description, steps) in schema::MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for step in *steps {
                sqlx::query(step).execute(&mut *tx).await.map_err(|e| {
                    ControlError::Internal(format!("migration {version} ({description}): {e}"))
                })?;
            }
            sqlx::query(
                "INSERT INTO schema_migrations (version, description, applied) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(*description)
            .bind(tally_proto::timefmt::now_nanos())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, description, "control database migrated");
        }
        Ok(())
    }

    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<(), ControlError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The server operator's tailnet: the first one ever created (deleted
    /// or not, so no later tailnet can take its place).
    pub async fn operator_tailnet(&self) -> Result<String, ControlError> {
        let row = sqlx::query("SELECT id FROM tailnets ORDER BY created, id LIMIT 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("id")?)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Reads a JSON array of strings stored as TEXT.
pub(crate) fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// Stores a list of strings as JSON TEXT.
pub(crate) fn to_json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}
