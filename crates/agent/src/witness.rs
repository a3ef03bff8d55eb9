//! The agent keeps the server's transparency-log checkpoints: each report
//! cycle it fetches the signed checkpoint, checks it with the log key it
//! pinned on first contact (`<data-dir>/log-key`), checks that it is
//! consistent with the checkpoint it kept (`<data-dir>/checkpoint`), and
//! keeps the new one. A server whose history was rewritten after the
//! fact, or whose key changed, is reported in the node's log.

use std::path::{Path, PathBuf};

use tally_transparency::Hash;
use tally_transparency::checkpoint::SignedCheckpoint;
use tally_transparency::note::Verifier;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Witnessed {
    /// Consistent (or first seen); the size now kept.
    Consistent(u64),
    /// Something is wrong (the message says what).
    Problem(String),
}

/// Checkpoint keeping for one server.
pub(crate) struct Witness {
    /// HTTP client.
    pub client: reqwest::Client,
    /// Server base URL.
    pub server: String,
    /// Data directory (pinned key and kept checkpoint).
    pub dir: PathBuf,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Witness {
    async fn get(&self, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.server);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {path}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{path} answered {}", resp.status()));
        }
        resp.text()
            .await
            .map_err(|e| format!("reading {path}: {e}"))
    }

    /// Fetches, checks and keeps the current checkpoint. `Err` means the
    /// server could not be asked (not a finding).
    pub async fn check(&self) -> Result<Witnessed, String> {
        let served = self.get("/.well-known/tally/log-key").await?;
        let served = served.trim().to_owned();
        let key_path = self.dir.join("log-key");
        let pinned = match read(&key_path) {
            Some(k) => k.trim().to_owned(),
            None => {
                std::fs::write(&key_path, format!("{served}\n"))
                    .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
                served.clone()
            }
        };
        if pinned != served {
            return Ok(Witnessed::Problem(format!(
                "the server's transparency-log key changed (pinned {pinned}, now {served})"
            )));
        }
        let verifier =
            Verifier::from_vkey(&pinned).map_err(|e| format!("bad pinned log key: {e}"))?;
        let text = self.get("/.well-known/tally/checkpoint").await?;
        let current = match SignedCheckpoint::open(
            text.as_bytes(),
            verifier.name(),
            std::slice::from_ref(&verifier),
        ) {
            Ok(c) => c.checkpoint,
            Err(e) => {
                return Ok(Witnessed::Problem(format!(
                    "the server's checkpoint does not verify with its log key: {e}"
                )));
            }
        };
        let cp_path = self.dir.join("checkpoint");
        if let Some(kept) = read(&cp_path)
            && let Ok(kept) = SignedCheckpoint::open(
                kept.as_bytes(),
                verifier.name(),
                std::slice::from_ref(&verifier),
            )
        {
            let kept = kept.checkpoint;
            if kept.size > current.size {
                return Ok(Witnessed::Problem(format!(
                    "the server's log shrank from {} to {} records",
                    kept.size, current.size
                )));
            }
            let proof = self
                .get(&format!(
                    "/api/v2/log/consistency?old={}&new={}",
                    kept.size, current.size
                ))
                .await?;
            let proof: Vec<Hash> = serde_json::from_str::<serde_json::Value>(&proof)
                .ok()
                .and_then(|v| {
                    v["proof"]
                        .as_array()?
                        .iter()
                        .map(|h| Hash::from_base64(h.as_str()?).ok())
                        .collect()
                })
                .ok_or("the consistency proof is malformed")?;
            if let Err(e) = kept.verify_consistency_to(&current, &proof) {
                return Ok(Witnessed::Problem(format!(
                    "the server's log is not consistent with the checkpoint this agent kept ({} records): its history was rewritten ({e})",
                    kept.size
                )));
            }
        }
        std::fs::write(&cp_path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", cp_path.display()))?;
        Ok(Witnessed::Consistent(current.size))
    }
}
