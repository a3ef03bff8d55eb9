//! The agent's top-level error.

use std::io;
use std::path::PathBuf;

use crate::identity::IdentityError;
use crate::queue::QueueError;

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is not usable.
    #[error("{0}")]
    Config(String),
    /// The node's identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The disk queue failed.
    #[error("disk queue: {0}")]
    Queue(#[from] QueueError),
    /// Another agent uses the same data directory.
    #[error(
        "another agent is already running with data directory {dir} (it holds the lock on {lock})"
    )]
    AlreadyRunning {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A file system or socket operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file, directory or socket.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    /// An internal task ended abnormally.
    #[error("internal error: {0}")]
    Task(String),
}

impl AgentError {
    /// An [`AgentError::Io`] builder for `map_err`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
