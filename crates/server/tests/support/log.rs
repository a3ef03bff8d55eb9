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

/// Every entry of `GET path` with the owner's key, every page (`next` →
/// `after`).
async fn entries(http: &reqwest::Client, base: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{base}{path}"))
            .bearer_auth(super::OWNER_KEY);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let v: Value = req.send().await.expect("sent").json().await.expect("JSON");
        out.extend(v["logs"].as_array().cloned().unwrap_or_default());
        match v["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// Waits until the audit outbox has copied the owner's tailnet's newest
/// audit event into the store, so that the log's size is settled (the
/// outbox appends after each commit, on a task of its own).
pub async fn audit_settled(http: &reqwest::Client, base: &str) {
    let newest = entries(
        http,
        base,
        "/api/v2/tailnet/-/logging/configuration?limit=1",
    )
    .await;
    let Some(newest) = newest.first().cloned() else {
        return;
    };
    tally_testkit::wait::until(
        "the newest audit event copied into the store",
        std::time::Duration::from_secs(30),
        || async {
            let copies = entries(http, base, "/c/tailaudit?max-count=100000").await;
            let same = |c: &Value| {
                c["eventGroupID"] == newest["eventGroupID"] && c["eventTime"] == newest["eventTime"]
            };
            if copies.iter().any(same) {
                Ok(())
            } else {
                Err(format!("{} copies, none is {newest}", copies.len()))
            }
        },
    )
    .await;
}

/// The current checkpoint, opened with `verifier`, once the audit events
/// committed before the call are in the store (see [`audit_settled`]).
pub async fn checkpoint(http: &reqwest::Client, base: &str, verifier: &Verifier) -> Checkpoint {
    audit_settled(http, base).await;
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

/// The audit log's copies in `store` (collection `tailaudit`) at positions
/// up to `through`, expired or not.
pub fn audit_copies(store: &tally_store::Store, through: u64) -> usize {
    store
        .scan(
            1,
            &tally_store::Filter {
                collections: vec!["tailaudit".into()],
                ..Default::default()
            },
            usize::MAX,
            usize::MAX,
            i64::MIN,
        )
        .expect("scan")
        .records
        .iter()
        .filter(|r| r.seq <= through)
        .count()
}
