//! An S3-compatible bucket reached through `object_store`, with a bounded
//! local cache of whole objects: what the archive's segments and the flow
//! store's files are kept in. Every method blocks (call it off the async
//! threads); requests run on the runtime given at open.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_store::StoreError;

/// What [`ObjectBucket::get_if_changed`] found.
#[derive(Debug)]
pub enum Fetched {
    /// No such object.
    Missing,
    /// The object still has the entity tag given.
    Unchanged,
    /// The object's bytes and entity tag.
    Body(Vec<u8>, Option<String>),
}

/// A bucket, a key prefix in it and the local cache.
pub struct ObjectBucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    label: String,
    handle: tokio::runtime::Handle,
    cache_dir: PathBuf,
    cache_bytes: u64,
    /// Serializes cache fills and evictions.
    cache_lock: Mutex<()>,
}

pub(crate) fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl ObjectBucket {
    /// Opens `s3://bucket[/prefix]` (credentials, region and endpoint from
    /// the `AWS_*` environment variables) with a cache of at most
    /// `cache_bytes` (64 MiB at least) in `cache_dir`; requests run on
    /// `handle`.
    pub fn open(
        url: &str,
        cache_dir: &Path,
        cache_bytes: u64,
        handle: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, StoreError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            StoreError::Unavailable(format!("--archive {url:?}: expected s3://bucket[/prefix]"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "--archive {url:?} names no bucket"
            )));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| err("configuring the archive's bucket (AWS_* variables)", e))?;
        Self::with_store(
            Arc::new(store),
            &format!("s3://{bucket}"),
            prefix,
            cache_dir,
            cache_bytes,
            handle,
        )
    }

    /// The same over a store built by the caller (`label` names it in
    /// messages; keys go under `prefix`).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        label: &str,
        prefix: &str,
        cache_dir: &Path,
        cache_bytes: u64,
        handle: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(cache_dir).map_err(|e| StoreError::Io {
            what: format!("create {}", cache_dir.display()),
            source: e,
        })?;
        Ok(Arc::new(Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            label: label.to_owned(),
            handle,
            cache_dir: cache_dir.to_path_buf(),
            cache_bytes: cache_bytes.max(64 << 20),
            cache_lock: Mutex::new(()),
        }))
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// `s3://bucket`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the archive's client stopped".into()))
    }

    fn object_path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(key)
    }

    /// The key of object `name` under the archive's prefix.
    pub fn object_key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Writes `bytes` as object `key` (small objects: manifests). Blocks.
    pub fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (store, at) = (self.store.clone(), self.object_path(key));
        self.run(async move { store.put(&at, PutPayload::from(bytes)).await })?
            .map(|_| ())
            .map_err(|e| err(&format!("writing {key} to {}", self.label), e))
    }

    /// Object `key` unless its entity tag is still `etag`. Blocks.
    pub fn get_if_changed(&self, key: &str, etag: Option<String>) -> Result<Fetched, StoreError> {
        let (store, at) = (self.store.clone(), self.object_path(key));
        let got = self.run(async move {
            let opts = object_store::GetOptions {
                if_none_match: etag,
                ..Default::default()
            };
            match store.get_opts(&at, opts).await {
                Ok(r) => {
                    let etag = r.meta.e_tag.clone();
                    r.bytes().await.map(|b| Fetched::Body(b.to_vec(), etag))
                }
                Err(object_store::Error::NotModified { .. }) => Ok(Fetched::Unchanged),
                Err(object_store::Error::NotFound { .. }) => Ok(Fetched::Missing),
                Err(e) => Err(e),
            }
        })?;
        got.map_err(|e| err(&format!("reading {key} from {}", self.label), e))
    }

    /// Uploads the file at `path` as object `key`, then keeps it as the
    /// key's cached copy. Blocks.
    pub fn upload_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::Io {
            what: format!("read {}", path.display()),
            source: e,
        })?;
        let size = bytes.len() as u64;
        let (store, at) = (self.store.clone(), self.object_path(key));
        self.run(async move { store.put(&at, PutPayload::from(bytes)).await })?
            .map_err(|e| err(&format!("uploading {key} to {}", self.label), e))?;
        let _one = self.cache_lock.lock();
        self.evict(size);
        if std::fs::rename(path, self.cached_path(key)).is_err() {
            let _ = std::fs::remove_file(path);
        }
        Ok(size)
    }

    /// A local copy of object `key`: from the cache, or downloaded into
    /// it (least recently used copies make room). Blocks.
    pub fn fetch(&self, key: &str) -> Result<PathBuf, StoreError> {
        let path = self.cached_path(key);
        if !path.exists() {
            let _one = self.cache_lock.lock();
            if !path.exists() {
                let (store, at) = (self.store.clone(), self.object_path(key));
                let bytes = self
                    .run(async move {
                        match store.get(&at).await {
                            Ok(r) => r.bytes().await,
                            Err(e) => Err(e),
                        }
                    })?
                    .map_err(|er| err(&format!("downloading {key} from {}", self.label), er))?;
                self.evict(bytes.len() as u64);
                tally_store::write_atomic(&path, &bytes)?;
            }
        }
        // The access time orders evictions.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Ok(path)
    }

    /// Deletes an object and its cached copy (retention). Blocks.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (store, at) = (self.store.clone(), self.object_path(key));
        match self.run(async move { store.delete(&at).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(&format!("deleting {key}"), e)),
        }
        let _ = std::fs::remove_file(self.cached_path(key));
        Ok(())
    }

    fn cached_path(&self, key: &str) -> PathBuf {
        self.cache_dir.join(key.replace('/', "_"))
    }

    /// Makes room for `incoming` bytes in the cache.
    fn evict(&self, incoming: u64) {
        let Ok(dir) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with("writing-"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum::<u64>() + incoming;
        files.sort();
        for (_, len, path) in files {
            if total <= self.cache_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}
