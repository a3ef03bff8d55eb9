//! Signed upload batches at ingest: a node's first key is trusted, each
//! batch is checked against its chain, and forged, missing, replayed or
//! retried batches get the right verdict — stored and flagged, never
//! refused silently. The chain state survives a restart.

mod support;

use reqwest::Method;
use support::{Db, Env, start, start_in};
use tally_transparency::batch::{BatchSigner, ChainState, generate_signing_key};

/// Posts `body` to `tailnode` as `private` with `headers`; returns the
/// status and the batch verdict header.
async fn upload(env: &Env, private: &str, body: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut req = env
        .http
        .post(format!("{}/c/tailnode/{private}", env.base))
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().await.expect("sent");
    let verdict = resp
        .headers()
        .get("tally-batch-verdict")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (resp.status().as_u16(), verdict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_checked_stored_and_flagged() {
    let env = start(&Db::Sqlite).await;
    let private = tally_proto::PrivateId::generate();
    let instance = private.public().to_hex();
    let private = private.to_hex();
    // Adopted: its entries are the owner's tailnet's.
    env.adopt("tailnode", &private).await;
    let key = generate_signing_key();
    let signer = BatchSigner::new(key.clone(), &instance, "tailnode").expect("signer");
    let mut state = ChainState::GENESIS;
    let send = async |env: &Env, body: &str, state: &mut ChainState| {
        let b = signer.sign(state, body.as_bytes()).expect("sign");
        let headers: Vec<(&str, String)> = b.headers();
        let r = upload(env, &private, body, &headers).await;
        *state = b.next_state();
        (r, b)
    };
    // First contact: the key is trusted; then the chain goes on.
    let ((s, v), _) = send(&env, r#"[{"text":"one"}]"#, &mut state).await;
    assert_eq!((s, v.as_str()), (200, "ok"));
    let ((s, v), second) = send(&env, r#"[{"text":"two"}]"#, &mut state).await;
    assert_eq!((s, v.as_str()), (200, "ok"));
    // The exact same batch again (a retry whose answer was lost).
    let (s, v) = upload(&env, &private, r#"[{"text":"two"}]"#, &second.headers()).await;
    assert_eq!((s, v.as_str()), (200, "duplicate"));
    // A forged batch: another key, same node.
    let forger = BatchSigner::new(generate_signing_key(), &instance, "tailnode").expect("signer");
    let forged = forger
        .sign(&state, br#"[{"text":"forged"}]"#)
        .expect("sign");
    let (s, v) = upload(&env, &private, r#"[{"text":"forged"}]"#, &forged.headers()).await;
    assert_eq!((s, v.as_str()), (200, "bad_signature"));
    // The forged entry is stored (so it can be examined), flagged by its batch record.
    let (_, logs) = env
        .call(
            support::OWNER_KEY,
            Method::GET,
            "/c/tailnode?max-count=100",
            None,
        )
        .await;
    let texts: Vec<&str> = logs["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(texts.contains(&"forged"), "{logs}");
    // A batch that skips one sequence number (one batch never arrived).
    let lost = signer.sign(&state, br#"[{"text":"lost"}]"#).expect("sign");
    state = lost.next_state();
    let ((s, v), _) = send(&env, r#"[{"text":"after the gap"}]"#, &mut state).await;
    assert_eq!((s, v.as_str()), (200, "gap"));
    // An unsigned upload from an instance that signs.
    let (s, v) = upload(&env, &private, r#"[{"text":"unsigned"}]"#, &[]).await;
    assert_eq!((s, v.as_str()), (200, "unsigned"));
    // Restart (no clean save of the chain state: it is rebuilt from the
    // stored batch records): the next batch is in order, not a false gap.
    let dir = env.stop_keep().await;
    let env = start_in(&Db::Sqlite, dir).await;
    let ((s, v), _) = send(&env, r#"[{"text":"after restart"}]"#, &mut state).await;
    assert_eq!((s, v.as_str()), (200, "ok"));
    // An old batch sent again with different content is a replay.
    let old = signer
        .sign(&ChainState::GENESIS, br#"[{"text":"rewritten"}]"#)
        .expect("sign");
    let (s, v) = upload(&env, &private, r#"[{"text":"rewritten"}]"#, &old.headers()).await;
    assert_eq!((s, v.as_str()), (200, "replay"));
    // Stock clients (never signed) are not flagged.
    let stock = tally_proto::PrivateId::generate().to_hex();
    let (s, v) = upload(&env, &stock, r#"[{"text":"stock"}]"#, &[]).await;
    assert_eq!((s, v.as_str()), (200, ""));
    env.stop().await;
}
