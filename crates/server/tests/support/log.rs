//! The transparency log as a client sees it: its key, signed checkpoints
//! and proof hashes.

use serde_json::Value;
use tally_transparency::Hash;
use tally_transparency::checkpoint::{Checkpoint, SignedCheckpoint};
use tally_transparency::note::Verifier;

async fn get_text(http: &reqwest::Client, base: &str, path: &str) -> String {
    http.get(format!("{base}{path}"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body")
}

/// The log's verifier key (`/.well-known/tally/log-key`).
pub async fn verifier(http: &reqwest::Client, base: &str) -> Verifier {
    let vkey = get_text(http, base, "/.well-known/tally/log-key").await;
    Verifier::from_vkey(vkey.trim()).expect("vkey")
}

/// The current checkpoint, opened with `verifier`.
pub async fn checkpoint(http: &reqwest::Client, base: &str, verifier: &Verifier) -> Checkpoint {
    let text = get_text(http, base, "/.well-known/tally/checkpoint").await;
    SignedCheckpoint::open(
        text.as_bytes(),
        verifier.name(),
        std::slice::from_ref(verifier),
    )
    .expect("a checkpoint signed by the log key")
    .checkpoint
}

/// The hashes of a proof in an API answer (base64 strings).
pub fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array()
        .expect("proof")
        .iter()
        .map(|h| Hash::from_base64(h.as_str().expect("b64")).expect("hash"))
        .collect()
}
