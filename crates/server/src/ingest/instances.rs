//! Per-instance statistics shown by `GET /collections`: when each instance
//! was first seen and how many bytes it stored, per owner (tailnet, or
//! unclaimed) and collection. Kept in memory, saved every few seconds (a
//! crash may lose the last seconds of counts, never entries).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use tally_proto::PublicId;
use tally_store::Owner;

/// Instances of one collection.
type PerCollection = BTreeMap<PublicId, InstanceInfo>;

/// The key of an owner: its tailnet ID, `""` when unclaimed.
fn owner_key(owner: &Owner) -> &str {
    owner.as_ref().key().unwrap_or("")
}

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
    /// Owner key, then collection.
    map: Mutex<BTreeMap<String, BTreeMap<String, PerCollection>>>,
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
    pub fn record(
        &self,
        owner: &Owner,
        collection: &str,
        instance: PublicId,
        now: i64,
        entries: u64,
        bytes: u64,
    ) {
        let mut map = self.map.lock();
        let per = map
            .entry(owner_key(owner).to_owned())
            .or_default()
            .entry(collection.to_owned())
            .or_default();
        let info = per.entry(instance).or_insert(InstanceInfo {
            first_seen: now,
            size: 0,
            entries: 0,
        });
        info.size += bytes;
        info.entries += entries;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Instances of a tailnet's collection.
    pub fn of(&self, tailnet_id: &str, collection: &str) -> PerCollection {
        self.map
            .lock()
            .get(tailnet_id)
            .and_then(|m| m.get(collection))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets a tailnet's deleted collection.
    pub fn forget(&self, tailnet_id: &str, collection: &str) {
        if let Some(m) = self.map.lock().get_mut(tailnet_id) {
            m.remove(collection);
        }
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
