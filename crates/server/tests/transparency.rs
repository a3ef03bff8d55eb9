//! The transparency log: signed checkpoints that verify with the published
//! key, consistency between successive checkpoints, inclusion of stored
//! records, and a rewritten history caught by an old checkpoint.

mod support;

use reqwest::Method;
use support::{Db, Env, OWNER_KEY, start, start_in};
use tally_transparency::Hash;
use tally_transparency::checkpoint::Checkpoint;
use tally_transparency::note::Verifier;

async fn checkpoint(env: &Env, verifier: &Verifier) -> Checkpoint {
    support::log::checkpoint(&env.http, &env.base, verifier).await
}

use support::log::hashes;

/// Posts `n` entries as a fresh instance adopted by the owner's tailnet.
async fn post_logs(env: &Env, n: usize) {
    let private = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &private).await;
    let body: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({ "text": format!("line {i}") }))
        .collect();
    let resp = env
        .http
        .post(format!("{}/c/tailnode/{private}", env.base))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_prove_consistency_and_inclusion_and_catch_rewrites() {
    let env = start(&Db::Sqlite).await;
    let verifier = support::log::verifier(&env.http, &env.base).await;
    post_logs(&env, 5).await;
    let c1 = checkpoint(&env, &verifier).await;
    assert!(c1.size >= 5, "{c1:?}");
    post_logs(&env, 7).await;
    let c2 = checkpoint(&env, &verifier).await;
    // The 7 entries and the audit event of their instance's adoption.
    assert_eq!(c2.size, c1.size + 7 + 1);
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/log/consistency?old={}&new={}", c1.size, c2.size),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    c1.verify_consistency_to(&c2, &hashes(&v["proof"]))
        .expect("consistent");
    // Every record of the tailnet proves its inclusion, and its stored
    // content still hashes to its leaf; the other records are not shown.
    let mut proven = 0;
    for seq in 1..=c2.size {
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::GET,
                &format!("/api/v2/log/inclusion?seq={seq}&size={}", c2.size),
                None,
            )
            .await;
        if s == 404 {
            continue; // a record of no tailnet, or of another
        }
        assert_eq!(s, 200, "{v}");
        proven += 1;
        assert_eq!(
            v["leafHash"], v["recordLeafHash"],
            "record {seq} changed since it was logged"
        );
        let leaf = Hash::from_base64(v["leafHash"].as_str().expect("leaf")).expect("hash");
        let index = v["leafIndex"].as_u64().expect("index");
        c2.verify_inclusion(&leaf, index, &hashes(&v["proof"]))
            .expect("included");
    }
    // The 12 entries posted and the tailnet's audit events copied into the
    // store, each proven once.
    let audit_records = support::log::audit_copies(&env.store, c2.size);
    assert!(audit_records >= 2, "the two adoptions at least");
    assert_eq!(proven, 12 + audit_records, "each record proven once");
    // Somebody rewrites the log's history on disk (and the server signs
    // whatever it then holds): the old checkpoint exposes it.
    let dir = env.stop_keep().await;
    let epoch = dir.path().join("merkle").join("epoch-000000000000");
    let leaves = epoch.join("leaves");
    let mut bytes = std::fs::read(&leaves).expect("leaves file");
    bytes[40] ^= 0xff;
    std::fs::write(&leaves, &bytes).expect("write");
    for level in std::fs::read_dir(&epoch).expect("dir").flatten() {
        if level.file_name().to_string_lossy().starts_with("level-") {
            std::fs::remove_file(level.path()).expect("drop cached levels");
        }
    }
    let env = start_in(&Db::Sqlite, dir).await;
    let c3 = checkpoint(&env, &verifier).await;
    assert!(c3.size >= c2.size);
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/log/consistency?old={}&new={}", c2.size, c3.size),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        c2.verify_consistency_to(&c3, &hashes(&v["proof"])).is_err(),
        "a rewritten history must not prove consistent"
    );
    env.stop().await;
}
