//! What the servers and workers of one log share beside the log, in
//! JetStream key-value buckets next to the stream:
//!
//! - [`SharedFiles`] (`<STREAM>_STATE`): small files every process must
//!   agree on (the transparency log's signing key, the secrets key) and
//!   the state of the consumers that run once per cluster (positions,
//!   snapshots), so that whoever runs them next resumes where they were.
//! - [`Lease`] (`<STREAM>_LEASES`): who runs those consumers. A holder
//!   renews its key every third of the lease time with a compare-and-set
//!   on the key's revision; the bucket's age limit deletes a key that was
//!   not renewed, and only then can another process create it. A holder
//!   that cannot renew for a whole lease time has lost it.

use crate::{JetStreamError, JetStreamLog};
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tally_store::StoreError;
use tokio::sync::watch;

/// Shared small files (see the module documentation).
#[derive(Clone)]
pub struct SharedFiles {
    kv: kv::Store,
    pub(crate) log: Arc<JetStreamLog>,
}

/// A key-value bucket, created when missing.
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: String,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, JetStreamError> {
    if let Ok(kv) = js.get_key_value(&name).await {
        return Ok(kv);
    }
    // The bucket's stream, as `create_key_value` would make it (which
    // first asks for account details that nats-server 2.9 answers in a
    // shape this client no longer reads).
    use async_nats::jetstream::stream;
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_message_size: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| JetStreamError::Stream(format!("cannot create key-value bucket {name}: {e}")))?;
    js.get_key_value(&name)
        .await
        .map_err(|e| JetStreamError::Stream(format!("cannot open key-value bucket {name}: {e}")))
}

/// Keys may hold `[-/_=.a-zA-Z0-9]`; file names are kept to that.
fn key_of(name: &str) -> Result<String, StoreError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        && !name.starts_with('.')
        && !name.ends_with('.')
    {
        Ok(name.to_owned())
    } else {
        Err(StoreError::Corrupt(format!(
            "{name:?} cannot be a shared file's name"
        )))
    }
}

impl SharedFiles {
    /// The shared files of `log`'s stream.
    pub async fn open(log: &Arc<JetStreamLog>) -> Result<Self, JetStreamError> {
        let shared = log.shared.clone();
        let name = format!("{}_STATE", shared.prefix);
        let replicas = shared.replicas;
        let kv = log
            .handle
            .spawn(async move { bucket(&shared.js, name, replicas, Duration::ZERO).await })
            .await
            .map_err(|e| JetStreamError::Stream(format!("opening shared files: {e}")))??;
        Ok(Self {
            kv,
            log: log.clone(),
        })
    }

    /// The file's bytes, `None` when no process saved it yet. Blocks.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key_of(name)?;
        let kv = self.kv.clone();
        self.log
            .block(async move { kv.get(key).await })?
            .map(|v| v.map(|b| b.to_vec()))
            .map_err(|e| crate::unavailable("reading a shared file", e))
    }

    /// Saves the file for every process. Blocks until JetStream has it.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let key = key_of(name)?;
        let kv = self.kv.clone();
        let value = bytes::Bytes::copy_from_slice(bytes);
        self.log
            .block(async move { kv.put(key, value).await })?
            .map(|_| ())
            .map_err(|e| crate::unavailable("saving a shared file", e))
    }

    /// The file, or `make()` saved as it when no process saved one yet; when
    /// two processes race, both get the first one saved. Blocks.
    pub fn get_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.get(name)? {
            return Ok(v);
        }
        let key = key_of(name)?;
        let kv = self.kv.clone();
        let value = bytes::Bytes::from(make());
        let mine = value.to_vec();
        let created = self.log.block(async move { kv.create(key, value).await })?;
        match created {
            Ok(_) => Ok(mine),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .get(name)?
                .ok_or_else(|| StoreError::Unavailable(format!("shared file {name} vanished"))),
            Err(e) => Err(crate::unavailable("creating a shared file", e)),
        }
    }

    /// The names of every saved file. Blocks.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let kv = self.kv.clone();
        self.log
            .block(async move {
                let mut keys = match kv.keys().await {
                    Ok(k) => k,
                    // An empty bucket has no keys to list.
                    Err(_) => return Ok(Vec::new()),
                };
                let mut out = Vec::new();
                while let Some(k) = keys.next().await {
                    out.push(k?);
                }
                Ok::<_, kv::WatcherError>(out)
            })?
            .map_err(|e| crate::unavailable("listing shared files", e))
    }
}

/// A held lease (see the module documentation); released on drop.
pub struct Lease {
    held: Arc<AtomicBool>,
    lost: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Lease {
    /// Waits until this process holds lease `name` (logging once that it
    /// waits), then renews it in the background.
    pub async fn acquire(
        log: &Arc<JetStreamLog>,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Self, JetStreamError> {
        let shared = log.shared.clone();
        let bucket_name = format!("{}_LEASES", shared.prefix);
        let replicas = shared.replicas;
        let kv = {
            let shared = shared.clone();
            log.handle
                .spawn(async move { bucket(&shared.js, bucket_name, replicas, ttl).await })
                .await
                .map_err(|e| JetStreamError::Stream(format!("opening leases: {e}")))??
        };
        let key = key_of(name).map_err(|e| JetStreamError::Config(e.to_string()))?;
        let value = bytes::Bytes::from(holder.to_owned());
        let mut told = false;
        let revision = loop {
            let (kv2, key2, value2) = (kv.clone(), key.clone(), value.clone());
            let created = log
                .handle
                .spawn(async move { kv2.create(key2, value2).await })
                .await
                .map_err(|e| JetStreamError::Stream(format!("taking the lease: {e}")))?;
            match created {
                Ok(rev) => break rev,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !told {
                        let (kv3, key3) = (kv.clone(), key.clone());
                        let owner = log
                            .handle
                            .spawn(async move { kv3.get(key3).await })
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default();
                        tracing::info!(
                            lease = name,
                            holder = %owner,
                            "standing by: another process holds the lease; taking over when it lapses ({ttl:?} without renewal)"
                        );
                        told = true;
                    }
                }
                Err(e) => tracing::warn!(lease = name, "cannot take the lease yet: {e}"),
            }
            tokio::time::sleep(ttl / 5).await;
        };
        tracing::info!(lease = name, holder, "lease taken");
        let held = Arc::new(AtomicBool::new(true));
        let (lost_tx, lost) = watch::channel(false);
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let renew = {
            let held = held.clone();
            let name = name.to_owned();
            async move {
                let mut revision = revision;
                let mut last_ok = Instant::now();
                loop {
                    tokio::select! {
                        _ = &mut stopped => {
                            let _ = kv.delete_expect_revision(&key, Some(revision)).await;
                            return;
                        }
                        () = tokio::time::sleep(ttl / 3) => {}
                    }
                    match kv.update(&key, value.clone(), revision).await {
                        Ok(r) => {
                            revision = r;
                            last_ok = Instant::now();
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            tracing::error!(lease = %name, "lease lost: another process took it");
                            break;
                        }
                        Err(e) if last_ok.elapsed() >= ttl => {
                            tracing::error!(lease = %name, "lease lost: not renewed for {ttl:?} ({e})");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(lease = %name, "renewing the lease failed: {e}; retrying")
                        }
                    }
                }
                held.store(false, Ordering::Release);
                let _ = lost_tx.send(true);
            }
        };
        log.handle.spawn(renew);
        Ok(Self {
            held,
            lost,
            stop: Some(stop),
        })
    }

    /// Whether the lease is still held (check before writing shared state).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// A flag that turns false when the lease is lost.
    pub fn held_flag(&self) -> Arc<AtomicBool> {
        self.held.clone()
    }

    /// Resolves when the lease is lost.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|l| *l).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
