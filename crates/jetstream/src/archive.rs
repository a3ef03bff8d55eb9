//! Sealed data in an S3-compatible bucket: the log's older records leave
//! the JetStream stream for objects that cost little to keep.
//!
//! - The worker's `archive` consumer writes the log, in position order,
//!   into sealed segments (the embedded store's format: zstd blocks, each
//!   with its positions, times, collections, tailnets and instances; an
//!   index in the footer), uploads each as
//!   `<prefix>/segments/<first>-<last>.tsb`, then records it in the
//!   manifest (`archive/manifest.json` in the cluster's shared files).
//! - Only then does it purge the stream below what the manifest covers,
//!   keeping the last `--log-hot` (default 24 h) in JetStream.
//! - Reads of positions below the stream's first message come from the
//!   archive, through a bounded local cache of whole segments; a block
//!   whose positions, times, collections or tailnets cannot match is never
//!   decompressed.
//! - Retention deletes a segment's object once every record in it expired
//!   (and reads hide expired records at once, as everywhere).

use crate::SharedFiles;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_store::segment::{SealedWriter, Segment};
use tally_store::{Record, StoreError};

/// The manifest's name among the shared files.
pub const MANIFEST: &str = "archive/manifest.json";

/// Where sealed data goes and how much of it this process caches.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// `s3://bucket[/prefix]`; credentials, region and endpoint come from
    /// the standard `AWS_*` environment variables (`AWS_ENDPOINT_URL` and
    /// `AWS_ALLOW_HTTP=true` for a local S3-compatible server).
    pub url: String,
    /// The local cache of segments.
    pub cache_dir: PathBuf,
    /// The cache's size limit, in bytes (least recently used go first).
    pub cache_bytes: u64,
}

/// One sealed segment in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SegmentEntry {
    /// The object's key.
    pub key: String,
    /// First and last position it holds.
    pub first: u64,
    /// Last position it holds.
    pub last: u64,
    /// Records in it.
    pub records: u64,
    /// Bytes of the object.
    pub bytes: u64,
    /// The newest receive time in it (Unix ns): it may leave the stream
    /// once this is older than the hot window.
    pub max_time: i64,
    /// When its last record expires; `None` when one never does.
    pub last_expiry: Option<i64>,
}

/// What the bucket holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Every position up to this one is in a segment (or was expired when
    /// it was archived).
    pub through: u64,
    /// The segments, in position order.
    pub segments: Vec<SegmentEntry>,
}

/// What [`Archive::get_if_changed`] found.
#[derive(Debug)]
pub enum Fetched {
    /// No such object.
    Missing,
    /// The object still has the entity tag given.
    Unchanged,
    /// The object's bytes and entity tag.
    Body(Vec<u8>, Option<String>),
}

/// The bucket, its manifest and the local cache.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    label: String,
    files: SharedFiles,
    handle: tokio::runtime::Handle,
    manifest: Mutex<Manifest>,
    cache_dir: PathBuf,
    cache_bytes: u64,
    /// Serializes cache fills and evictions.
    cache_lock: Mutex<()>,
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl Archive {
    /// Opens the bucket named by `config.url`; the manifest comes from
    /// `files`.
    pub fn open(config: &ArchiveConfig, files: SharedFiles) -> Result<Arc<Self>, StoreError> {
        let rest = config.url.strip_prefix("s3://").ok_or_else(|| {
            StoreError::Unavailable(format!(
                "--archive {:?}: expected s3://bucket[/prefix]",
                config.url
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "--archive {:?} names no bucket",
                config.url
            )));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| err("configuring the archive's bucket (AWS_* variables)", e))?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|e| StoreError::Io {
            what: format!("create {}", config.cache_dir.display()),
            source: e,
        })?;
        let archive = Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            label: format!("s3://{bucket}"),
            handle: files.log.handle.clone(),
            files,
            manifest: Mutex::new(Manifest::default()),
            cache_dir: config.cache_dir.clone(),
            cache_bytes: config.cache_bytes.max(64 << 20),
            cache_lock: Mutex::new(()),
        };
        archive.refresh()?;
        Ok(Arc::new(archive))
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

    /// Re-reads the manifest from the shared files. Blocks.
    pub fn refresh(&self) -> Result<Manifest, StoreError> {
        let m: Manifest = match self.files.get(MANIFEST)? {
            Some(b) if !b.is_empty() => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Corrupt(format!("{MANIFEST}: {e}")))?,
            _ => Manifest::default(),
        };
        *self.manifest.lock() = m.clone();
        Ok(m)
    }

    /// The manifest as last read.
    pub fn manifest(&self) -> Manifest {
        self.manifest.lock().clone()
    }

    /// Saves the manifest for every process (the worker alone writes it).
    pub fn save(&self, m: &Manifest) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec(m).map_err(|e| StoreError::Corrupt(format!("manifest: {e}")))?;
        self.files.put(MANIFEST, &bytes)?;
        *self.manifest.lock() = m.clone();
        Ok(())
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

    /// A new segment writer in the cache directory.
    pub fn writer(&self) -> Result<(SealedWriter, PathBuf), StoreError> {
        let path = self
            .cache_dir
            .join(format!("writing-{}.tsb", std::process::id()));
        Ok((SealedWriter::create(&path, 3, 1 << 20)?, path))
    }

    /// Finishes a segment written with [`Archive::writer`] and uploads it;
    /// returns its entry (not yet in the manifest). Blocks.
    pub fn upload(
        &self,
        writer: SealedWriter,
        path: &Path,
        summary: SegmentSummary,
    ) -> Result<SegmentEntry, StoreError> {
        writer.finish(path)?;
        let key = self.object_key(&format!(
            "segments/{:020}-{:020}.tsb",
            summary.first, summary.last
        ));
        let size = self.upload_file(&key, path)?;
        Ok(SegmentEntry {
            key,
            first: summary.first,
            last: summary.last,
            records: summary.records,
            bytes: size,
            max_time: summary.max_time,
            last_expiry: summary.last_expiry,
        })
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

    /// The segment, from the cache or downloaded into it. Blocks.
    pub fn segment(&self, e: &SegmentEntry) -> Result<Segment, StoreError> {
        Segment::open_sealed(self.fetch(&e.key)?, e.first)
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

    /// Reads archived records at positions in `[from, below)` in order
    /// (`newest`: reversed), handing each to `take`, which returns false
    /// to stop. Blocks.
    pub fn read(
        &self,
        from: u64,
        below: u64,
        newest: bool,
        filter: &tally_store::Filter,
        take: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), StoreError> {
        let mut m = self.manifest();
        if m.through.saturating_add(1) < below {
            m = self.refresh()?;
        }
        let mut segs: Vec<&SegmentEntry> = m
            .segments
            .iter()
            .filter(|s| s.last >= from && s.first < below)
            .collect();
        if newest {
            segs.reverse();
        }
        for e in segs {
            let seg = self.segment(e)?;
            let mut blocks = seg.blocks_from(from);
            if newest {
                blocks.reverse();
            }
            for b in blocks {
                if b.first_seq >= below && !newest {
                    break;
                }
                if b.first_seq >= below || b.last_seq < from || !filter.may_match(&b) {
                    continue;
                }
                let mut records = seg.read_block(&b)?;
                if newest {
                    records.reverse();
                }
                for r in records {
                    if r.seq < from || r.seq >= below {
                        continue;
                    }
                    if !take(r) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a segment holds, gathered while writing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegmentSummary {
    /// First position.
    pub first: u64,
    /// Last position.
    pub last: u64,
    /// Records.
    pub records: u64,
    /// Newest receive time.
    pub max_time: i64,
    /// When the last record expires (`None`: one never does).
    pub last_expiry: Option<i64>,
}

impl SegmentSummary {
    /// Accounts one record written, with its expiry.
    pub fn add(&mut self, r: &Record, expiry: Option<i64>) {
        if self.records == 0 {
            self.first = r.seq;
            self.max_time = r.rec.time;
            self.last_expiry = expiry;
        }
        self.records += 1;
        self.last = r.seq;
        self.max_time = self.max_time.max(r.rec.time);
        self.last_expiry = match (self.last_expiry, expiry) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
}
