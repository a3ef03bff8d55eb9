//! Sealed files in a bucket shared by a cluster's processes.
//!
//! One process, the **owner** (the cluster's worker), seals windows as a
//! lone server does, uploads each sealed file to the bucket and then saves
//! the [`FlowManifest`]: every file in the bucket and the owner's
//! checkpoint (every flow record at or below it is in one of those files).
//! The other processes, **readers** (the servers answering queries),
//! follow the manifest: records at or below its checkpoint are answered
//! from the bucket's files (through the bucket's local cache), records
//! above it from their own open windows and sealed files, so each record
//! is answered once. A new reader starts at the manifest's checkpoint
//! instead of rebuilding the flow index from the whole log, and drops its
//! own files once the bucket covers them.
//!
//! Object keys name the window, the part and the positions it holds
//! (`flows/<tailnet>/<window start>.<part>.<first>-<last>.flw`), so a key
//! always names the same records: an owner that took over from another
//! never overwrites an object a reader has cached.

use crate::segment::{FileMeta, io_err, sync_dir};
use crate::{FlowError, FlowStore, Retired, segment, write_checkpoint};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A bucket and its local cache, as the flow store needs them. Every
/// method blocks; errors say what failed.
pub trait Bucket: Send + Sync {
    /// Uploads the sealed file at `path` as object `key`; the file may be
    /// moved away (into the cache) once the upload is durable.
    fn upload(&self, key: &str, path: &Path) -> Result<(), String>;
    /// A local copy of object `key`: from the cache, or downloaded into it.
    fn fetch(&self, key: &str) -> Result<PathBuf, String>;
    /// Deletes object `key` (a missing one is no error) and its cached copy.
    fn delete(&self, key: &str) -> Result<(), String>;
    /// The manifest as last saved, `None` before the first save.
    fn load_manifest(&self) -> Result<Option<Vec<u8>>, String>;
    /// Saves the manifest for every process.
    fn save_manifest(&self, bytes: &[u8]) -> Result<(), String>;
}

/// What a process does with the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRole {
    /// Seals, uploads and keeps the manifest (one process per cluster).
    Owner,
    /// Answers from the manifest's files at or below its checkpoint.
    Reader,
}

/// A bucket and this process's role with it.
#[derive(Clone)]
pub struct Tier {
    /// The bucket.
    pub bucket: Arc<dyn Bucket>,
    /// This process's role.
    pub role: BucketRole,
}

/// The bucket's contents, saved by the owner after each upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowManifest {
    /// Every flow record at or below this store position is in `files`.
    pub checkpoint: u64,
    /// The sealed files in the bucket.
    pub files: Vec<BucketFile>,
}

/// One sealed file in the bucket: its key and its trailer's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketFile {
    /// The object's key.
    pub key: String,
    /// The tailnet whose entries it holds.
    pub tailnet: String,
    /// Window start and end (Unix ns, receive time).
    pub window_start: i64,
    /// Window end.
    pub window_end: i64,
    /// Part number within the window.
    pub part: u32,
    /// Size in bytes.
    pub bytes: u64,
    /// Entries in it.
    pub entries: u64,
    /// Blocks in it.
    pub blocks: u32,
    /// Smallest record start.
    pub min_start: i64,
    /// Largest record start.
    pub max_start: i64,
    /// Largest record end.
    pub max_end: i64,
    /// Smallest store position.
    pub seq_min: u64,
    /// Largest store position.
    pub seq_max: u64,
    /// Where the footer is.
    pub footer_off: u64,
    /// The footer's length.
    pub footer_len: u32,
    /// The footer's CRC-32C.
    pub footer_crc: u32,
}

impl BucketFile {
    pub(crate) fn of(m: &FileMeta, key: String) -> Self {
        Self {
            key,
            tailnet: m.tailnet.clone(),
            window_start: m.window_start,
            window_end: m.window_end,
            part: m.part,
            bytes: m.bytes,
            entries: m.entries,
            blocks: m.blocks,
            min_start: m.min_start,
            max_start: m.max_start,
            max_end: m.max_end,
            seq_min: m.seq_min,
            seq_max: m.seq_max,
            footer_off: m.footer_off,
            footer_len: m.footer_len,
            footer_crc: m.footer_crc,
        }
    }

    pub(crate) fn meta(&self, id: u64) -> FileMeta {
        FileMeta {
            id,
            tailnet: self.tailnet.clone(),
            window_start: self.window_start,
            window_end: self.window_end,
            part: self.part,
            path: PathBuf::new(),
            bytes: self.bytes,
            entries: self.entries,
            blocks: self.blocks,
            min_start: self.min_start,
            max_start: self.max_start,
            max_end: self.max_end,
            seq_min: self.seq_min,
            seq_max: self.seq_max,
            footer_off: self.footer_off,
            footer_len: self.footer_len,
            footer_crc: self.footer_crc,
            remote: Some(self.key.clone()),
        }
    }
}

/// The key of a sealed file in the bucket.
pub(crate) fn key_of(m: &FileMeta) -> String {
    format!(
        "flows/{}/{}.{}.{}-{}.flw",
        segment::tailnet_dir_name(&m.tailnet),
        m.window_start.div_euclid(1_000_000_000),
        m.part,
        m.seq_min,
        m.seq_max
    )
}

/// The manifest's stored form: zstd-compressed JSON.
pub(crate) fn encode(m: &FlowManifest) -> Result<Vec<u8>, FlowError> {
    let json = serde_json::to_vec(m)
        .map_err(|e| FlowError::Bucket(format!("encoding the flow manifest: {e}")))?;
    zstd::bulk::compress(&json, 3)
        .map_err(|e| FlowError::Bucket(format!("compressing the flow manifest: {e}")))
}

/// Reads a manifest saved by [`encode`].
pub(crate) fn decode(b: &[u8]) -> Result<FlowManifest, FlowError> {
    let json = zstd::stream::decode_all(b)
        .map_err(|e| FlowError::Corrupt(format!("the flow manifest does not decompress: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| FlowError::Corrupt(format!("the flow manifest: {e}")))
}

impl FlowStore {
    pub(crate) fn bucket(&self) -> Result<&Tier, FlowError> {
        self.tier
            .as_ref()
            .ok_or_else(|| FlowError::InvalidInput("this flow store has no bucket".into()))
    }

    pub(crate) fn load_manifest(&self) -> Result<Option<(Vec<u8>, FlowManifest)>, FlowError> {
        let Some(b) = self
            .bucket()?
            .bucket
            .load_manifest()
            .map_err(FlowError::Bucket)?
        else {
            return Ok(None);
        };
        let m = decode(&b)?;
        Ok(Some((b, m)))
    }

    /// Owner at open: the manifest's files replace this store's sealed
    /// files, and its checkpoint this store's.
    pub(crate) fn adopt_manifest(&self) -> Result<Option<u64>, FlowError> {
        let Some((bytes, man)) = self.load_manifest()? else {
            return Ok(None);
        };
        let mut st = self.state.write();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for m in std::mem::take(&mut st.files)
            .into_values()
            .flat_map(|m| m.into_values())
        {
            std::fs::remove_file(&m.path).map_err(io_err("remove", &m.path))?;
            if let Some(d) = m.path.parent().filter(|d| !dirs.iter().any(|x| x == d)) {
                dirs.push(d.to_path_buf());
            }
        }
        for d in dirs {
            sync_dir(&d)?;
        }
        st.dedup.clear();
        st.dedup_max = 0;
        for f in &man.files {
            let meta = f.meta(self.next_id.fetch_add(1, Ordering::Relaxed));
            if meta.seq_max > man.checkpoint {
                st.dedup
                    .entry((f.tailnet.clone(), f.window_start))
                    .or_default()
                    .push((meta.seq_min, meta.seq_max));
                st.dedup_max = st.dedup_max.max(meta.seq_max);
            }
            st.files
                .entry(f.tailnet.clone())
                .or_default()
                .insert((f.window_start, f.part), Arc::new(meta));
        }
        write_checkpoint(&self.dir, man.checkpoint)?;
        st.checkpoint = man.checkpoint;
        st.high_water = man.checkpoint;
        st.manifest = Some(bytes);
        st.published = Some(man.checkpoint);
        Ok(Some(man.checkpoint))
    }

    /// Owner: uploads every sealed file not yet in the bucket, then saves
    /// the manifest (all files in the bucket and the checkpoint they
    /// cover). Returns the files uploaded. Call it after sealing.
    pub fn publish(&self) -> Result<usize, FlowError> {
        let tier = self.bucket()?;
        if tier.role != BucketRole::Owner {
            return Err(FlowError::InvalidInput(
                "only the bucket's owner publishes".into(),
            ));
        }
        // No seal in between: the checkpoint covers only files listed.
        let _one = self.seal_lock.lock();
        let todo: Vec<Arc<FileMeta>> = self
            .state
            .read()
            .files
            .values()
            .flat_map(|m| m.values())
            .filter(|m| m.remote.is_none())
            .cloned()
            .collect();
        {
            let st = self.state.read();
            if todo.is_empty() && st.published == Some(st.checkpoint) {
                return Ok(0);
            }
        }
        for m in &todo {
            let key = key_of(m);
            tier.bucket
                .upload(&key, &m.path)
                .map_err(FlowError::Bucket)?;
            let mut st = self.state.write();
            if let Some(slot) = st
                .files
                .get_mut(&m.tailnet)
                .and_then(|f| f.get_mut(&(m.window_start, m.part)))
            {
                let mut moved = FileMeta::clone(m);
                moved.remote = Some(key);
                *slot = Arc::new(moved);
            }
        }
        self.save_manifest_locked()?;
        Ok(todo.len())
    }

    /// Saves the owner's manifest if it changed (the seal lock held).
    pub(crate) fn save_manifest_locked(&self) -> Result<(), FlowError> {
        let man = {
            let st = self.state.read();
            FlowManifest {
                checkpoint: st.checkpoint,
                files: st
                    .files
                    .values()
                    .flat_map(|m| m.values())
                    .filter_map(|m| m.remote.clone().map(|k| BucketFile::of(m, k)))
                    .collect(),
            }
        };
        let bytes = encode(&man)?;
        if self.state.read().manifest.as_ref() != Some(&bytes) {
            self.bucket()?
                .bucket
                .save_manifest(&bytes)
                .map_err(FlowError::Bucket)?;
        }
        let mut st = self.state.write();
        st.manifest = Some(bytes);
        st.published = Some(man.checkpoint);
        Ok(())
    }

    /// Reader: takes the manifest's files and checkpoint if they changed,
    /// and deletes this store's files that the bucket now covers. Returns
    /// whether anything changed. Call it every few seconds.
    pub fn refresh(&self) -> Result<bool, FlowError> {
        if self.bucket()?.role != BucketRole::Reader {
            return Ok(false);
        }
        let changed = match self.load_manifest()? {
            Some((bytes, man)) if self.state.read().manifest.as_ref() != Some(&bytes) => {
                self.take_manifest(bytes, &man);
                true
            }
            _ => false,
        };
        self.delete_retired()?;
        Ok(changed)
    }

    /// A reader takes a new manifest: its files, its checkpoint as the
    /// split, and retires its own files at or below the split.
    pub(crate) fn take_manifest(&self, bytes: Vec<u8>, man: &FlowManifest) {
        let mut st = self.state.write();
        // Files already known keep their id (and cached footer).
        let known: HashMap<String, Arc<FileMeta>> = std::mem::take(&mut st.bucket)
            .into_values()
            .flatten()
            .filter_map(|m| m.remote.clone().map(|k| (k, m)))
            .collect();
        for f in &man.files {
            let m = match known.get(&f.key) {
                Some(m) => m.clone(),
                None => Arc::new(f.meta(self.next_id.fetch_add(1, Ordering::Relaxed))),
            };
            st.bucket.entry(f.tailnet.clone()).or_default().push(m);
        }
        for (k, m) in &known {
            if !man.files.iter().any(|f| &f.key == k) {
                self.footers.lock().remove(m.id);
            }
        }
        st.split = st.split.max(man.checkpoint);
        let split = st.split;
        // Records at or below the split are the bucket's: a new reader
        // skips them instead of rebuilding them.
        if split > st.high_water {
            st.high_water = split;
        }
        let mut covered = Vec::new();
        for files in st.files.values_mut() {
            let done: Vec<(i64, u32)> = files
                .iter()
                .filter(|(_, m)| m.seq_max <= split)
                .map(|(k, _)| *k)
                .collect();
            for k in done {
                if let Some(m) = files.remove(&k) {
                    covered.push(m);
                }
            }
        }
        st.files.retain(|_, m| !m.is_empty());
        st.manifest = Some(bytes);
        let now = std::time::Instant::now();
        st.retired.push(Retired {
            at: now,
            files: covered,
            journal: None,
        });
    }

    /// This store's role with a cluster's bucket, if it has one.
    pub fn bucket_role(&self) -> Option<BucketRole> {
        self.tier.as_ref().map(|t| t.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_window_part_and_positions() {
        let m = BucketFile {
            key: String::new(),
            tailnet: "T1/x".into(),
            window_start: 3_600_000_000_000,
            window_end: 7_200_000_000_000,
            part: 2,
            bytes: 1,
            entries: 1,
            blocks: 1,
            min_start: 0,
            max_start: 0,
            max_end: 0,
            seq_min: 7,
            seq_max: 9,
            footer_off: 0,
            footer_len: 0,
            footer_crc: 0,
        }
        .meta(1);
        assert_eq!(key_of(&m), "flows/T1%2Fx/3600.2.7-9.flw");
        let man = FlowManifest {
            checkpoint: 9,
            files: vec![BucketFile::of(&m, key_of(&m))],
        };
        assert_eq!(decode(&encode(&man).expect("encode")).expect("decode"), man);
        assert!(decode(b"not zstd").is_err());
    }
}
