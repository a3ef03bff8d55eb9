//! The catalog: an in-memory copy of the control database's collections and
//! adoptions, for the ingest path (no database query per upload) and the
//! store's retention rules. Reloaded after every change and periodically
//! (other servers may share a PostgreSQL control database).

use crate::control::collections::{CollectionRow, FLOWS_COLLECTION};
use crate::control::principals::hash_secret;
use crate::control::{ControlDb, ControlError};
use crate::retention::RetentionRules;
use parking_lot::RwLock;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tally_proto::PublicId;

/// Collections created with the default tailnet: operational logs and flow logs.
pub const DEFAULT_COLLECTIONS: [&str; 2] = ["tailnode", "tailtraffic"];

/// A fresh random secret for the bootstrap API key.
pub fn generate_key() -> String {
    format!("tally-api-{}", hex::encode(rand::random::<[u8; 24]>()))
}

/// A registered agent: its node and tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// Node ID.
    pub node_id: String,
    /// Tailnet ID.
    pub tailnet_id: String,
}

#[derive(Default)]
struct Cached {
    collections: BTreeMap<String, CollectionRow>,
    nodes: HashMap<PublicId, NodeRef>,
    flow_logging: HashSet<String>,
}

/// The cached collections, registered agents and flow-logging switches,
/// shared by handlers.
pub struct Catalog {
    data: RwLock<Cached>,
    rules: Arc<RetentionRules>,
}

impl Catalog {
    /// An empty catalog publishing to `rules`.
    pub fn new(rules: Arc<RetentionRules>) -> Self {
        Self {
            data: RwLock::new(Cached::default()),
            rules,
        }
    }

    /// Reloads from the database and republishes the retention rules.
    /// Registered agents count as adopted into the flow-log collection.
    pub async fn reload(&self, db: &ControlDb) -> Result<(), ControlError> {
        let mut collections = db.load_collections().await?;
        let mut nodes = HashMap::new();
        for (instance, node_id, tailnet_id) in db.node_instances().await? {
            if let Ok(id) = PublicId::parse(&instance) {
                nodes.insert(
                    id,
                    NodeRef {
                        node_id,
                        tailnet_id,
                    },
                );
            }
        }
        if let Some(flows) = collections.get_mut(FLOWS_COLLECTION) {
            flows.adopted.extend(nodes.keys().copied());
            // The typed flow store keeps flows for each tailnet's
            // flowsRetentionDays; the raw records only need to outlive replay.
            flows.retention_days = crate::flows::RAW_FLOW_RETENTION_DAYS;
        }
        let flow_logging = db
            .tailnets_with("networkFlowLoggingOn")
            .await?
            .into_iter()
            .collect();
        self.rules.replace(&collections);
        *self.data.write() = Cached {
            collections,
            nodes,
            flow_logging,
        };
        Ok(())
    }

    /// True if the collection exists.
    pub fn has_collection(&self, name: &str) -> bool {
        self.data.read().collections.contains_key(name)
    }

    /// The tailnet owning a collection.
    pub fn owner(&self, name: &str) -> Option<String> {
        self.data
            .read()
            .collections
            .get(name)
            .map(|c| c.tailnet_id.clone())
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
    pub fn collections(&self) -> BTreeMap<String, CollectionRow> {
        self.data.read().collections.clone()
    }

    /// The registered node of an agent instance.
    pub fn node(&self, instance: &PublicId) -> Option<NodeRef> {
        self.data.read().nodes.get(instance).cloned()
    }

    /// Whether a tailnet has flow logging on.
    pub fn flow_logging(&self, tailnet_id: &str) -> bool {
        self.data.read().flow_logging.contains(tailnet_id)
    }
}

/// The JSON catalog of earlier versions (before the control database).
#[derive(Deserialize)]
struct LegacyCatalog {
    #[serde(default)]
    collections: BTreeMap<String, LegacyCollection>,
    #[serde(default)]
    keys: Vec<LegacyKey>,
}

#[derive(Deserialize)]
struct LegacyCollection {
    created: i64,
    retention_days: u32,
    #[serde(default)]
    adopted: BTreeSet<PublicId>,
}

#[derive(Deserialize)]
struct LegacyKey {
    hash: String,
    description: String,
}

/// Creates the default tailnet's collections, importing a `catalog.json`
/// of an earlier version when one is there (then renamed `.imported`).
pub async fn seed_collections(
    db: &ControlDb,
    data_dir: &Path,
    tailnet_id: &str,
    owner_id: &str,
) -> anyhow::Result<()> {
    use crate::control::audit::AuditContext;
    let legacy = data_dir.join("catalog.json");
    let ctx = AuditContext::system();
    match std::fs::read(&legacy) {
        Ok(bytes) => {
            let old: LegacyCatalog = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid catalog ({e}); move it away to start without it",
                    legacy.display()
                )
            })?;
            for (name, c) in &old.collections {
                db.create_collection(tailnet_id, &ctx, name, Some(c.retention_days), c.created)
                    .await?;
                let adopted: Vec<PublicId> = c.adopted.iter().copied().collect();
                if !adopted.is_empty() {
                    db.adopt(tailnet_id, &ctx, name, &adopted).await?;
                }
            }
            for k in &old.keys {
                if k.hash.len() == 64 && k.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    db.add_known_key(tailnet_id, owner_id, &k.hash, &k.description)
                        .await?;
                }
            }
            std::fs::rename(&legacy, data_dir.join("catalog.json.imported"))?;
            tracing::info!(
                collections = old.collections.len(),
                keys = old.keys.len(),
                "imported catalog.json into the control database"
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for name in DEFAULT_COLLECTIONS {
                db.create_collection(tailnet_id, &ctx, name, None, 0)
                    .await?;
            }
            // Reconciliation findings, written by the server itself.
            let findings = crate::reconcile::FINDINGS_COLLECTION;
            db.create_collection(tailnet_id, &ctx, findings, None, 0)
                .await?;
            db.adopt(
                tailnet_id,
                &ctx,
                findings,
                &[PublicId(crate::reconcile::RECONCILER_INSTANCE)],
            )
            .await?;
        }
        Err(e) => anyhow::bail!("reading {}: {e}", legacy.display()),
    }
    Ok(())
}

/// Adds the bootstrap key (clear text given by the operator) if unknown.
pub async fn add_bootstrap_key(
    db: &ControlDb,
    tailnet_id: &str,
    owner_id: &str,
    key: &str,
    description: &str,
) -> Result<(), ControlError> {
    db.add_known_key(tailnet_id, owner_id, &hash_secret(key), description)
        .await
}
