//! State shared by every process of a cluster on a JetStream log
//! (`--log nats://`), kept in the log's shared files
//! ([`tally_jetstream::SharedFiles`]):
//!
//! - the keys every process must agree on (`merkle/log-key`, the transparency
//!   log's signing key, so every server signs the same checkpoints;
//!   `secrets.key`, which opens the streams' sealed secrets), taken from
//!   the first process that had one;
//! - the files of the consumers that run once per cluster (reconciliation,
//!   detection, streams, the audit outbox), written through [`save`]: the
//!   local file, then the shared copy, so the worker that takes the lease
//!   next resumes exactly where the last one saved. A worker that lost its
//!   lease saves nothing more to the shared copy (fencing).
//!
//! [`save`] finds the cluster of a file by its data directory, so the
//! consumers need no handle of their own; with the embedded store no
//! directory is registered and [`save`] is `write_atomic`.

use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tally_jetstream::SharedFiles;
use tally_store::StoreError;

/// Files every process needs the same copy of.
pub const KEY_FILES: [&str; 2] = ["merkle/log-key", "secrets.key"];

struct Mirror {
    dir: PathBuf,
    files: SharedFiles,
    /// The worker's lease: cleared when lost.
    held: Arc<AtomicBool>,
}

static MIRRORS: RwLock<Vec<Arc<Mirror>>> = RwLock::new(Vec::new());

fn mirror_of(path: &Path) -> Option<(Arc<Mirror>, String)> {
    let mirrors = MIRRORS.read();
    mirrors.iter().find_map(|m| {
        let rel = path.strip_prefix(&m.dir).ok()?;
        Some((m.clone(), rel.to_str()?.to_owned()))
    })
}

/// Saves a consumer's state file: locally, then (in a cluster) for the
/// next worker. Blocks.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    tally_store::write_atomic(path, bytes)?;
    if let Some((m, name)) = mirror_of(path) {
        if !m.held.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "this worker lost its lease; its state is no longer shared".into(),
            ));
        }
        m.files.put(&name, bytes)?;
    }
    Ok(())
}

/// Forgets a consumer's state file, locally and for the next worker.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some((m, name)) = mirror_of(path)
        && m.held.load(Ordering::Acquire)
        && let Err(e) = m.files.put(&name, b"")
    {
        tracing::warn!("forgetting shared state {name}: {e}");
    }
}

/// Makes [`save`] share the files under `dir` while `held` is set.
pub fn register(dir: &Path, files: SharedFiles, held: Arc<AtomicBool>) {
    let mut mirrors = MIRRORS.write();
    mirrors.retain(|m| m.dir != dir);
    mirrors.push(Arc::new(Mirror {
        dir: dir.to_path_buf(),
        files,
        held,
    }));
}

/// Stops sharing the files under `dir`.
pub fn unregister(dir: &Path) {
    MIRRORS.write().retain(|m| m.dir != dir);
}

/// Writes the shared copies into `dir`: the keys only, or every file (a
/// worker that just took the lease). Returns the files written. Blocks.
pub fn restore(dir: &Path, files: &SharedFiles, everything: bool) -> anyhow::Result<usize> {
    let mut n = 0;
    for name in files.list()? {
        if !everything && !KEY_FILES.contains(&name.as_str()) {
            continue;
        }
        let path = dir.join(&name);
        match files.get(&name)? {
            // An emptied file was forgotten.
            Some(bytes) if bytes.is_empty() => {
                let _ = std::fs::remove_file(&path);
            }
            Some(bytes) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                write_private(&path, &bytes)?;
                n += 1;
            }
            None => {}
        }
    }
    Ok(n)
}

/// Makes sure this process has the cluster's keys before anything loads
/// them: the shared copy when there is one; else this process's (made
/// now when missing) becomes the shared one; when another process shared
/// its own at the same moment, that one wins here too. Blocks.
pub fn share_keys(dir: &Path, files: &SharedFiles) -> anyhow::Result<()> {
    let merkle = dir.join("merkle");
    std::fs::create_dir_all(&merkle)?;
    crate::consumers::merkle_log::load_key(&merkle)?;
    crate::control::secrets::SecretBox::open(dir)?;
    for name in KEY_FILES {
        let path = dir.join(name);
        // No file: the key comes from the environment (TALLY_SECRETS_KEY).
        let Ok(local) = std::fs::read(&path) else {
            continue;
        };
        let shared = files.get_or_create(name, || local.clone())?;
        if shared != local {
            write_private(&path, &shared)?;
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tally_store::write_atomic(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
