//! Signed upload batches (`tally-transparency`'s batch format): the node's
//! Ed25519 key (`<data-dir>/node-key`, 0600, created on first start) signs
//! every upload batch of each collection's chain. Before a batch is first
//! sent, it is saved with the chain state that follows it
//! (`<queue>/batch-pending.json`), so a restart resends the very same bytes
//! and the server never sees a gap or a fork that did not happen.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tally_transparency::batch::{BatchSigner, ChainState, SigningKey, generate_signing_key};

use crate::error::AgentError;
use crate::queue::Position;

/// File of the node's signing key (hex seed).
pub const NODE_KEY_FILE: &str = "node-key";
const CHAIN_FILE: &str = "batch-chain";
const PENDING_FILE: &str = "batch-pending.json";

/// Loads the node key, creating it (0600) on first use.
pub fn load_or_create_node_key(data_dir: &Path) -> Result<SigningKey, AgentError> {
    let path = data_dir.join(NODE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    AgentError::Config(format!(
                        "{} is not a node key (64 hex digits); move it away to make a new one (the server will then need to re-trust the node)",
                        path.display()
                    ))
                })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_signing_key();
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(AgentError::io("create", &path))?;
            f.write_all(hex::encode(key.to_bytes()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(AgentError::io("write", &path))?;
            crate::identity::sync_dir(data_dir).map_err(AgentError::io("sync", data_dir))?;
            Ok(key)
        }
        Err(e) => Err(AgentError::io("read", &path)(e)),
    }
}

/// A batch signed and saved, ready to (re)send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingBatch {
    /// Queue position after the batch's entries.
    pub end: Position,
    /// Entries in it.
    pub entries: u64,
    /// The uncompressed body (base64).
    pub body: String,
    /// The signature headers.
    pub headers: Vec<(String, String)>,
    /// The chain state once the server has the batch.
    pub next_state: String,
}

impl PendingBatch {
    /// The body bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }
}

/// One collection's chain: its signer and files.
pub(crate) struct Chain {
    signer: BatchSigner,
    dir: PathBuf,
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        crate::identity::sync_dir(dir)?;
    }
    Ok(())
}

impl Chain {
    /// The chain of `instance_hex` uploading to `collection`, with its files in `dir`.
    pub fn new(
        key: SigningKey,
        instance_hex: &str,
        collection: &str,
        dir: &Path,
    ) -> Result<Self, AgentError> {
        let signer = BatchSigner::new(key, instance_hex, collection)
            .map_err(|e| AgentError::Config(format!("cannot sign batches: {e}")))?;
        Ok(Self {
            signer,
            dir: dir.to_owned(),
        })
    }

    fn state(&self) -> ChainState {
        std::fs::read_to_string(self.dir.join(CHAIN_FILE))
            .ok()
            .and_then(|t| ChainState::from_text(&t).ok())
            .unwrap_or_default()
    }

    /// The batch saved before a restart, if any.
    pub fn pending(&self) -> Option<PendingBatch> {
        let bytes = std::fs::read(self.dir.join(PENDING_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Signs `body` as the next batch and saves it before it is sent.
    pub fn sign(
        &self,
        body: &[u8],
        end: Position,
        entries: u64,
    ) -> Result<PendingBatch, AgentError> {
        let signed = self
            .signer
            .sign(&self.state(), body)
            .map_err(|e| AgentError::Config(format!("cannot sign a batch: {e}")))?;
        let pending = PendingBatch {
            end,
            entries,
            body: STANDARD.encode(body),
            headers: signed
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            next_state: signed.next_state().to_text(),
        };
        let path = self.dir.join(PENDING_FILE);
        let bytes = serde_json::to_vec(&pending).map_err(|e| AgentError::Task(e.to_string()))?;
        write_durably(&path, &bytes).map_err(AgentError::io("write", &path))?;
        Ok(pending)
    }

    /// Records that the server has `pending`: the chain moves on.
    pub fn delivered(&self, pending: &PendingBatch) -> Result<(), AgentError> {
        let path = self.dir.join(CHAIN_FILE);
        write_durably(&path, pending.next_state.as_bytes())
            .map_err(AgentError::io("write", &path))?;
        let p = self.dir.join(PENDING_FILE);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io("remove", &p)(e)),
        }
    }
}
