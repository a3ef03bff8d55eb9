//! Per-instance statistics shown by `GET /collections`: when each instance
//! was first seen and how many bytes it stored. Kept in memory, saved every
//! few seconds (a crash may lose the last seconds of counts, never entries).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use tally_proto::PublicId;

/// Statistics of one instance in one collection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// First entry's server time, Unix ns.
    pub first_seen: i64,
    /// Bytes of stored entries.
    pub size: u64,
    /// Entries stored.
    pub entries: u64,
}

/// The statistics of every instance.
pub struct InstanceStats {
    path: PathBuf,
    map: Mutex<BTreeMap<String, BTreeMap<PublicId, InstanceInfo>>>,
    dirty: AtomicBool,
}

impl InstanceStats {
    /// Loads saved statistics (a missing or damaged file starts empty).
    pub fn open(path: PathBuf) -> Self {
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            map: Mutex::new(map),
            dirty: AtomicBool::new(false),
        }
    }

    /// Counts stored entries of an instance.
    pub fn record(&self, collection: &str, instance: PublicId, now: i64, entries: u64, bytes: u64) {
        let mut map = self.map.lock();
        let per = map.entry(collection.to_owned()).or_default();
        let info = per.entry(instance).or_insert(InstanceInfo {
            first_seen: now,
            size: 0,
            entries: 0,
        });
        info.size += bytes;
        info.entries += entries;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Instances of a collection.
    pub fn of(&self, collection: &str) -> BTreeMap<PublicId, InstanceInfo> {
        self.map.lock().get(collection).cloned().unwrap_or_default()
    }

    /// Forgets a deleted collection.
    pub fn forget(&self, collection: &str) {
        self.map.lock().remove(collection);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Saves the statistics if they changed.
    pub fn save_if_dirty(&self) -> Result<(), tally_store::StoreError> {
        if self.dirty.swap(false, Ordering::Relaxed) {
            let bytes = serde_json::to_vec(&*self.map.lock()).unwrap_or_default();
            tally_store::write_atomic(&self.path, &bytes)?;
        }
        Ok(())
    }
}
