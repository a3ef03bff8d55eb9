//! `GET /c/<collection>` with our extensions: `q=` (a text search on the
//! server, case-insensitive, over the entry's text or, without one, its
//! JSON) and `order=newest` (newest first, `next` continuing with older
//! entries), over sealed blocks and the write-ahead log alike; and a
//! client that sends neither sees what it saw before (oldest first).

mod support;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Db, Env, OWNER_KEY, start_with};

async fn upload(env: &Env, private: &str, body: &Value) {
    let resp = env
        .http
        .post(format!("{}/c/tailnode/{private}", env.base))
        .json(body)
        .send()
        .await
        .expect("upload sent");
    assert_eq!(resp.status().as_u16(), 200);
}

/// The entries' `text` (or `msg`) of an answer, in its order.
fn texts(v: &Value) -> Vec<String> {
    v["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|e| {
            e["text"]
                .as_str()
                .or(e["msg"].as_str())
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

async fn get(env: &Env, query: &str) -> (u16, Value) {
    env.call(
        OWNER_KEY,
        Method::GET,
        &format!("/c/tailnode?{query}"),
        None,
    )
    .await
}

/// Every page of a query, following `next` as `after`.
async fn all_pages(env: &Env, query: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let (s, v) = get(env, &format!("{query}{after}")).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        out.extend(texts(&v));
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return (out, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_and_newest_first_on_the_server() {
    let tune = |c: &mut tally_server::ServerConfig| {
        let mut store = tally_store::StoreConfig::new(c.data_dir.join("store"));
        store.block_target_bytes = 4 << 10;
        store.chunk_target_bytes = 4 << 10;
        c.store = Some(store);
    };
    let env = start_with(&Db::Sqlite, tempfile::tempdir().expect("tempdir"), tune).await;
    let own = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &own).await;
    // 200 entries in 10 uploads; every 7th has the word in some case, one
    // has it after an escaped quote, one has no text but the word in
    // another member, one has it only in the text's neighbour member.
    let mut all = Vec::new();
    let mut matching = Vec::new();
    for i in 0..10 {
        let mut body = Vec::new();
        for j in 0..20 {
            let n = i * 20 + j;
            let text = match n {
                n if n % 7 == 0 => format!("entry {n} has a NeEdLe in it"),
                50 => format!("entry {n} \"quoted\" needle"),
                _ => format!("entry {n} {}", "x".repeat(100)),
            };
            if n == 120 {
                let msg = format!("entry {n} NEEDLE without text");
                body.push(json!({ "msg": msg }));
                all.push(msg.clone());
                matching.push(msg);
                continue;
            }
            if n == 130 {
                let t = format!("entry {n} plain");
                body.push(json!({ "text": t, "other": "needle elsewhere" }));
                all.push(t);
                continue;
            }
            if n % 7 == 0 || n == 50 {
                matching.push(text.clone());
            }
            body.push(json!({ "text": text }));
            all.push(text);
        }
        upload(&env, &own, &json!(body)).await;
        if i == 4 {
            // Half in sealed blocks, half in the write-ahead log.
            env.store.seal_now().await.expect("seal");
        }
    }

    // No extension: oldest first, as before.
    let (oldest, _) = all_pages(&env, "max-count=30").await;
    assert_eq!(oldest, all);

    // Newest first, 30 a page: every entry once, in reverse.
    let (newest, pages) = all_pages(&env, "max-count=30&order=newest").await;
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(newest, reversed);
    assert_eq!(pages, 7);
    let (s, v) = get(&env, "max-count=5&order=newest").await;
    assert_eq!(s, 200);
    assert_eq!(texts(&v), reversed[..5].to_vec());
    assert_eq!(v["count"], 5);

    // The search: exactly the matching entries, case-insensitively, in
    // either order and across pages.
    let (found, _) = all_pages(&env, "max-count=4&q=nEEdle").await;
    assert_eq!(found, matching);
    let (found, _) = all_pages(&env, "max-count=4&order=newest&q=needle").await;
    let mut rev = matching.clone();
    rev.reverse();
    assert_eq!(found, rev);
    let (s, v) = get(&env, "order=newest&max-count=3&q=NEEDLE").await;
    assert_eq!(s, 200);
    assert_eq!(texts(&v), rev[..3].to_vec());
    assert!(v["next"].is_string());
    // Within a time range and for an instance, the filters still apply.
    let public = tally_proto::PrivateId::parse(&own)
        .expect("id")
        .public()
        .to_hex();
    let (s, v) = get(
        &env,
        &format!("order=newest&q=needle&instances={public}&time-start=2000-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(texts(&v), rev);
    let (s, v) = get(&env, "q=needle&time-end=2000-01-01T00:00:00Z").await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 0);
    let (s, v) = get(&env, "q=no-such-text&order=newest").await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 0);
    assert!(v.get("next").is_none(), "{v}");

    // Bad values are refused with the reason.
    let (s, v) = get(&env, "order=sideways").await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().expect("error").contains("order"), "{v}");
    let (s, v) = get(&env, "stream=true&order=newest").await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().expect("error").contains("order"), "{v}");
    let (s, _) = get(&env, &format!("q={}", "a".repeat(2000))).await;
    assert_eq!(s, 400);

    // A stream with q= sends only the matching entries.
    let resp = env
        .http
        .get(format!(
            "{}/c/tailnode?stream=true&q=needle&time-start=2000-01-01T00:00:00Z",
            env.base
        ))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut lines: Vec<Value> = Vec::new();
    while lines.len() < matching.len() + 1 {
        let chunk = body.next().await.expect("more").expect("chunk");
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.trim_ascii().is_empty() {
                continue;
            }
            lines.push(serde_json::from_slice(&line).expect("json line"));
        }
    }
    assert_eq!(lines[0]["q"], "needle");
    let streamed: Vec<String> = lines[1..]
        .iter()
        .map(|e| texts(&json!({ "logs": [e] })).remove(0))
        .collect();
    assert_eq!(streamed, matching);
    // The server's graceful stop waits for open streams.
    drop(body);
    env.stop().await;
}
