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
use crate::bucket::ObjectBucket;
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

/// The bucket (with its cache) and the segments' manifest.
pub struct Archive {
    bucket: Arc<ObjectBucket>,
    files: SharedFiles,
    manifest: Mutex<Manifest>,
}

impl Archive {
    /// Opens the bucket named by `config.url`; the manifest comes from
    /// `files`.
    pub fn open(config: &ArchiveConfig, files: SharedFiles) -> Result<Arc<Self>, StoreError> {
        let bucket = ObjectBucket::open(
            &config.url,
            &config.cache_dir,
            config.cache_bytes,
            files.log.handle.clone(),
        )?;
        let archive = Self {
            bucket,
            files,
            manifest: Mutex::new(Manifest::default()),
        };
        archive.refresh()?;
        Ok(Arc::new(archive))
    }

    /// The bucket and its cache (the flow store keeps its files there too).
    pub fn bucket(&self) -> &Arc<ObjectBucket> {
        &self.bucket
    }

    /// `s3://bucket`, for messages.
    pub fn label(&self) -> &str {
        self.bucket.label()
    }

    /// Deletes a segment's object and its cached copy (retention). Blocks.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.bucket.delete(key)
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

    /// A new segment writer in the cache directory.
    pub fn writer(&self) -> Result<(SealedWriter, PathBuf), StoreError> {
        let path = self
            .bucket
            .cache_dir()
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
        let key = self.bucket.object_key(&format!(
            "segments/{:020}-{:020}.tsb",
            summary.first, summary.last
        ));
        let size = self.bucket.upload_file(&key, path)?;
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

    /// The segment, from the cache or downloaded into it. Blocks.
    pub fn segment(&self, e: &SegmentEntry) -> Result<Segment, StoreError> {
        Segment::open_sealed(self.bucket.fetch(&e.key)?, e.first)
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
