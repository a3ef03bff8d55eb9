//! The catalog: an in-memory copy of the control database's collections,
//! adoptions, registered nodes and flow-logging switches, for the ingest
//! path (no database query per upload) and the store's retention rules.
//! Reloaded after every change and periodically (other servers may share a
//! PostgreSQL control database).
//!
//! It also tells agents' long polls when what they are told (flow logging,
//! the tailnet's nodes) may have changed ([`Catalog::agent_changes`]): every
//! reload fingerprints that per tailnet and wakes the tailnet's waiters when
//! it differs, so a change made through another server sharing the database
//! is noticed by the next periodic reload.
//!
//! It also decides whose an upload is ([`Catalog::owner_of`]): the tailnet
//! of the instance's registered node, else the tailnet that adopted the
//! instance into the collection, else nobody (unclaimed).

use crate::control::collections::{
    BUILTIN_COLLECTIONS, CollectionRow, Collections, FLOWS_COLLECTION,
};
use crate::control::principals::hash_secret;
use crate::control::retention::RetentionRules;
use crate::control::{ControlDb, ControlError};
use parking_lot::RwLock;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tally_proto::PublicId;
use tally_store::Owner;

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
    /// The node's name when the catalog was last loaded.
    pub name: String,
}

#[derive(Default)]
struct Cached {
    collections: Collections,
    /// Every collection name of any tailnet.
    names: HashSet<String>,
    /// `(collection, instance)` → the tailnet that adopted it.
    adoptions: HashMap<(String, PublicId), String>,
    nodes: HashMap<PublicId, NodeRef>,
    flow_logging: HashSet<String>,
    /// Tailnet → fingerprint of what its agents are told.
    agent_prints: HashMap<String, u64>,
}

/// The cached collections, registered agents and flow-logging switches,
/// shared by handlers.
pub struct Catalog {
    data: RwLock<Cached>,
    rules: Arc<RetentionRules>,
    /// Held across a reload's reads and its write, so that reloads never
    /// interleave: a periodic reload that read the database before a change
    /// committed cannot overwrite the reload made after it.
    reloading: tokio::sync::Mutex<()>,
    /// When the last completed reload began to read the database.
    read_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The same, on the wall clock (Unix ns; 0 before the first reload).
    read_at_wall: std::sync::atomic::AtomicI64,
    /// Tailnet → a counter bumped when what its agents are told changed
    /// (only tailnets with a waiter have one).
    agent_watch: parking_lot::Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
}

impl Catalog {
    /// An empty catalog publishing to `rules`.
    pub fn new(rules: Arc<RetentionRules>) -> Self {
        Self {
            data: RwLock::new(Cached::default()),
            rules,
            reloading: tokio::sync::Mutex::new(()),
            read_at: parking_lot::Mutex::new(None),
            read_at_wall: std::sync::atomic::AtomicI64::new(0),
            agent_watch: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Reloads from the database and republishes the retention rules.
    pub async fn reload(&self, db: &ControlDb) -> Result<(), ControlError> {
        let _one_at_a_time = self.reloading.lock().await;
        self.reload_locked(db).await
    }

    /// When the last completed reload began to read the database (Unix ns
    /// on the wall clock, 0 before the first): a record received before
    /// it from an unknown instance is from a node that was gone already.
    pub fn read_at_nanos(&self) -> i64 {
        self.read_at_wall.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reloads unless a reload that began reading at or after `since`
    /// already completed (waiting for one in progress): on a shared log,
    /// where another server may have just registered a node or adopted an
    /// instance, an upload this server knows nothing of asks for this
    /// before it is stored as nobody's.
    pub async fn reload_since(
        &self,
        since: std::time::Instant,
        db: &ControlDb,
    ) -> Result<(), ControlError> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.read_at.lock().is_some_and(|t| t >= since) {
            return Ok(());
        }
        self.reload_locked(db).await
    }

    async fn reload_locked(&self, db: &ControlDb) -> Result<(), ControlError> {
        let began = std::time::Instant::now();
        let began_wall = tally_proto::timefmt::now_nanos();
        let mut collections = db.load_collections().await?;
        let audit_days = db.audit_retention_days().await?;
        for ((tailnet, name), c) in collections.iter_mut() {
            if name == FLOWS_COLLECTION {
                // The typed flow store keeps flows for each tailnet's
                // flowsRetentionDays; the raw records only need to outlive replay.
                c.retention_days = crate::consumers::flows::RAW_FLOW_RETENTION_DAYS;
            } else if name == tally_proto::collection::AUDIT {
                // The store's copy of the audit log lasts as long as the
                // audit log itself.
                c.retention_days = audit_days
                    .get(tailnet)
                    .copied()
                    .unwrap_or(crate::control::settings::DEFAULT_AUDIT_RETENTION_DAYS);
            }
        }
        let mut nodes = HashMap::new();
        for (instance, node_id, tailnet_id, name) in db.node_instances().await? {
            if let Ok(id) = PublicId::parse(&instance) {
                nodes.insert(
                    id,
                    NodeRef {
                        node_id,
                        tailnet_id,
                        name,
                    },
                );
            }
        }
        let flow_logging: HashSet<String> = db
            .tailnets_with("networkFlowLoggingOn")
            .await?
            .into_iter()
            .collect();
        let agent_prints = agent_prints(&db.agent_view_rows().await?, &flow_logging);
        let names = collections.keys().map(|(_, n)| n.clone()).collect();
        let adoptions = collections
            .iter()
            .flat_map(|((t, n), c)| c.adopted.iter().map(move |i| ((n.clone(), *i), t.clone())))
            .collect();
        self.rules.replace(&collections);
        let changed: Vec<String> = {
            let mut data = self.data.write();
            let old = &data.agent_prints;
            let changed = agent_prints
                .iter()
                .filter(|(t, p)| old.get(*t) != Some(*p))
                .map(|(t, _)| t.clone())
                .chain(
                    old.keys()
                        .filter(|t| !agent_prints.contains_key(*t))
                        .cloned(),
                )
                .collect();
            *data = Cached {
                collections,
                names,
                adoptions,
                nodes,
                flow_logging,
                agent_prints,
            };
            changed
        };
        let mut watch = self.agent_watch.lock();
        for t in &changed {
            if let Some(tx) = watch.get(t) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        watch.retain(|_, tx| tx.receiver_count() > 0);
        *self.read_at.lock() = Some(began);
        self.read_at_wall
            .store(began_wall, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// How many long polls wait on [`Catalog::agent_changes`] of a tailnet.
    pub fn agent_waiters(&self, tailnet_id: &str) -> usize {
        self.agent_watch
            .lock()
            .get(tailnet_id)
            .map_or(0, tokio::sync::watch::Sender::receiver_count)
    }

    /// Changes (the value is a counter) whenever a reload finds that what
    /// the agents of `tailnet_id` are told may have changed: its flow
    /// logging switch, or a node's ID, name, addresses or routes (nodes
    /// registered, updated or removed). Long polls of the agent API wait on
    /// it.
    pub fn agent_changes(&self, tailnet_id: &str) -> tokio::sync::watch::Receiver<u64> {
        self.agent_watch
            .lock()
            .entry(tailnet_id.to_owned())
            .or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe()
    }

    /// Whose an upload of `instance` to `collection` is: its registered
    /// node's tailnet, else the tailnet that adopted it into the collection,
    /// else nobody.
    pub fn owner_of(&self, collection: &str, instance: &PublicId) -> Owner {
        let data = self.data.read();
        if let Some(n) = data.nodes.get(instance) {
            return Owner::tailnet(n.tailnet_id.clone());
        }
        data.adoptions
            .get(&(collection.to_owned(), *instance))
            .map_or(Owner::Unclaimed, |t| Owner::tailnet(t.clone()))
    }

    /// The owner of a record stored before records carried one: the
    /// reconciler's findings belong to the tailnet they name, everything
    /// else to whom [`Catalog::owner_of`] names now.
    pub fn legacy_owner(&self, r: &tally_store::NewRecord) -> Owner {
        if r.instance == tally_proto::collection::FINDINGS_WRITER {
            #[derive(Deserialize)]
            struct Named {
                tailnet: String,
            }
            return serde_json::from_slice::<Named>(&r.body)
                .map_or(Owner::Unclaimed, |n| Owner::tailnet(n.tailnet));
        }
        self.owner_of(&r.collection, &PublicId(r.instance))
    }

    /// True if the tailnet has the collection.
    pub fn has_collection(&self, tailnet_id: &str, name: &str) -> bool {
        self.data
            .read()
            .collections
            .contains_key(&(tailnet_id.to_owned(), name.to_owned()))
    }

    /// True if some tailnet has a collection of this name (where an
    /// unclaimed instance may upload, to be adopted later).
    pub fn exists_anywhere(&self, name: &str) -> bool {
        BUILTIN_COLLECTIONS.contains(&name) || self.data.read().names.contains(name)
    }

    /// The collections of a tailnet, by name.
    pub fn collections_of(&self, tailnet_id: &str) -> BTreeMap<String, CollectionRow> {
        self.data
            .read()
            .collections
            .iter()
            .filter(|((t, _), _)| t == tailnet_id)
            .map(|((_, n), c)| (n.clone(), c.clone()))
            .collect()
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

/// Per tailnet, a fingerprint of what its agents are told: its nodes'
/// rows (in the order given) and its flow-logging switch.
fn agent_prints(rows: &[[String; 5]], flow_logging: &HashSet<String>) -> HashMap<String, u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hashers: HashMap<&str, DefaultHasher> = HashMap::new();
    for row in rows {
        row.hash(hashers.entry(row[0].as_str()).or_default());
    }
    for t in flow_logging {
        "networkFlowLoggingOn".hash(hashers.entry(t.as_str()).or_default());
    }
    hashers
        .into_iter()
        .map(|(t, h)| (t.to_owned(), h.finish()))
        .collect()
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

/// Imports a `catalog.json` of an earlier version into the default tailnet
/// when one is there (then renamed `.imported`).
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
                if !BUILTIN_COLLECTIONS.contains(&name.as_str()) {
                    db.create_collection(tailnet_id, &ctx, name, Some(c.retention_days), c.created)
                        .await?;
                }
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
        // The built-in collections need no seeding.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
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
