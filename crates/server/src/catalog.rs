//! The catalog: collections, adopted instances and API keys, kept in one
//! JSON file written atomically. (The control-plane database replaces it
//! later; the [`Catalog`] methods are the seam.)

use crate::retention::RetentionRules;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use tally_proto::{CollectionName, PublicId};

/// Collections created on first start: operational logs and flow logs.
pub const DEFAULT_COLLECTIONS: [&str; 2] = ["tailnode", "tailtraffic"];

/// Errors of catalog changes.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The named collection does not exist.
    #[error(
        "collection \"{0}\" does not exist; create it with POST /collections (collection={0}, action=create)"
    )]
    NoSuchCollection(String),
    /// The collection exists already.
    #[error("collection \"{0}\" already exists")]
    CollectionExists(String),
    /// Writing the catalog failed.
    #[error("saving the catalog failed: {0}")]
    Save(#[from] tally_store::StoreError),
}

/// One collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collection {
    /// When it was created (Unix ns); older entries of the same name are gone.
    pub created: i64,
    /// Retention of adopted instances' entries, in days.
    pub retention_days: u32,
    /// Adopted instances (public IDs).
    pub adopted: BTreeSet<PublicId>,
}

/// An API key, stored as its SHA-256 hash only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    /// Short public identifier (first 12 hex digits of the hash).
    pub id: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// What it is for.
    pub description: String,
    /// Creation time, Unix ns.
    pub created: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CatalogData {
    collections: BTreeMap<String, Collection>,
    keys: Vec<ApiKey>,
}

/// Hex SHA-256 of an API key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A fresh random API key.
pub fn generate_key() -> String {
    let b: [u8; 24] = rand::random();
    format!("tally-key-{}", hex::encode(b))
}

/// The catalog, shared by handlers. Reads are lock-cheap; writes persist
/// before they return.
pub struct Catalog {
    path: PathBuf,
    data: RwLock<CatalogData>,
    rules: Arc<RetentionRules>,
    default_retention_days: u32,
}

impl Catalog {
    /// Loads the catalog, creating it (with the default collections) when absent.
    /// Returns the catalog and whether it was created now.
    pub fn open(
        path: PathBuf,
        rules: Arc<RetentionRules>,
        default_retention_days: u32,
    ) -> anyhow::Result<(Self, bool)> {
        let (data, created) = match std::fs::read(&path) {
            Ok(bytes) => (
                serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{} is not a valid catalog ({e}); restore it from a backup",
                        path.display()
                    )
                })?,
                false,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut d = CatalogData::default();
                for c in DEFAULT_COLLECTIONS {
                    d.collections.insert(
                        c.to_owned(),
                        Collection {
                            created: 0,
                            retention_days: default_retention_days,
                            adopted: BTreeSet::new(),
                        },
                    );
                }
                (d, true)
            }
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        let cat = Self {
            path,
            data: RwLock::new(data),
            rules,
            default_retention_days,
        };
        cat.publish_rules();
        if created {
            cat.save()?;
        }
        Ok((cat, created))
    }

    fn save(&self) -> Result<(), CatalogError> {
        let bytes = serde_json::to_vec_pretty(&*self.data.read()).unwrap_or_default();
        tally_store::write_atomic(&self.path, &bytes)?;
        Ok(())
    }

    fn publish_rules(&self) {
        self.rules.replace(&self.data.read().collections);
    }

    /// Applies a change, persists it, and republishes retention rules. On a
    /// failed save the change is rolled back.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut CatalogData) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let before = self.data.read().clone();
        let out = f(&mut self.data.write())?;
        if let Err(e) = self.save() {
            *self.data.write() = before;
            return Err(e);
        }
        self.publish_rules();
        Ok(out)
    }

    /// True if the collection exists.
    pub fn has_collection(&self, name: &str) -> bool {
        self.data.read().collections.contains_key(name)
    }

    /// True if `instance` is adopted into `collection`.
    pub fn is_adopted(&self, collection: &str, instance: &PublicId) -> bool {
        self.data
            .read()
            .collections
            .get(collection)
            .is_some_and(|c| c.adopted.contains(instance))
    }

    /// Every collection, by name.
    pub fn collections(&self) -> BTreeMap<String, Collection> {
        self.data.read().collections.clone()
    }

    /// Creates a collection.
    pub fn create_collection(
        &self,
        name: &CollectionName,
        retention_days: Option<u32>,
    ) -> Result<(), CatalogError> {
        let days = retention_days.unwrap_or(self.default_retention_days);
        self.change(|d| {
            if d.collections.contains_key(name.as_str()) {
                return Err(CatalogError::CollectionExists(name.to_string()));
            }
            let c = Collection {
                created: tally_proto::timefmt::now_nanos(),
                retention_days: days,
                adopted: BTreeSet::new(),
            };
            d.collections.insert(name.to_string(), c);
            Ok(())
        })
    }

    /// Deletes a collection; its entries become invisible at once and are
    /// removed by the next retention pass.
    pub fn delete_collection(&self, name: &CollectionName) -> Result<(), CatalogError> {
        self.change(|d| {
            d.collections
                .remove(name.as_str())
                .map(|_| ())
                .ok_or_else(|| CatalogError::NoSuchCollection(name.to_string()))
        })
    }

    /// Adopts instances into a collection. Returns those newly adopted.
    pub fn adopt(
        &self,
        name: &CollectionName,
        instances: &[PublicId],
    ) -> Result<Vec<PublicId>, CatalogError> {
        self.change(|d| {
            let c = d
                .collections
                .get_mut(name.as_str())
                .ok_or_else(|| CatalogError::NoSuchCollection(name.to_string()))?;
            Ok(instances
                .iter()
                .filter(|i| c.adopted.insert(**i))
                .copied()
                .collect())
        })
    }

    /// Adds an API key (by its clear text; only the hash is kept).
    pub fn add_key(&self, key: &str, description: &str) -> Result<ApiKey, CatalogError> {
        let hash = hash_key(key);
        self.change(|d| {
            if let Some(k) = d.keys.iter().find(|k| k.hash == hash) {
                return Ok(k.clone());
            }
            let k = ApiKey {
                id: hash[..12].to_owned(),
                hash: hash.clone(),
                description: description.to_owned(),
                created: tally_proto::timefmt::now_nanos(),
            };
            d.keys.push(k.clone());
            Ok(k)
        })
    }

    /// The key whose clear text is `key`, if any.
    pub fn find_key(&self, key: &str) -> Option<ApiKey> {
        let hash = hash_key(key);
        self.data
            .read()
            .keys
            .iter()
            .find(|k| constant_time_eq(k.hash.as_bytes(), hash.as_bytes()))
            .cloned()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
