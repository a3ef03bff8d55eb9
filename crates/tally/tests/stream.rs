//! `stream=true`: followers see entries as they are stored, and slow readers
//! lose nothing.

mod common;

use common::{KEY, TestServer, http};
use futures_util::StreamExt;
use std::time::Duration;

/// Reads NDJSON lines from a streaming response.
struct Lines {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> String {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.len() == 1 {
                    continue; // heartbeat
                }
                return String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
            }
            let chunk = self
                .body
                .next()
                .await
                .expect("stream ended")
                .expect("stream broke");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

async fn open_stream(c: &reqwest::Client, url: &str, query: &[(&str, &str)]) -> Lines {
    let mut q = vec![("stream", "true")];
    q.extend_from_slice(query);
    let resp = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    Lines {
        body: Box::pin(resp.bytes_stream()),
        buf: Vec::new(),
    }
}

/// A follower sees each entry once it is acknowledged, while the stream
/// stays open. How soon is not asserted: a delay measured on a shared
/// machine is no test (it would be a benchmark's figure).
#[tokio::test]
async fn followers_see_each_entry_after_its_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let id = common::adopted_id(&server.url, "tailnode").await;
    let mut lines = open_stream(&c, &server.url, &[]).await;
    let header: serde_json::Value = serde_json::from_str(&lines.next().await).unwrap();
    assert_eq!(header["collection"], "tailnode");
    assert_eq!(header["stream"], true);
    for i in 0..20 {
        let r = c
            .post(format!("{}/c/tailnode/{}", server.url, id.to_hex()))
            .body(format!("{{\"text\":\"live {i}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next())
            .await
            .expect("entry never arrived on the stream");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["text"], format!("live {i}"));
    }
}

#[tokio::test]
async fn a_slow_reader_gets_everything_in_order_with_instance_filter() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let mine = common::adopted_id(&server.url, "tailnode").await;
    let other = common::adopted_id(&server.url, "tailnode").await;
    let mut lines = open_stream(&c, &server.url, &[("instances", &mine.public().to_hex())]).await;
    lines.next().await;
    // Write far more than socket buffers hold before reading anything.
    let n = 20_000;
    for chunk in 0..(n / 500) {
        for who in [&mine, &other] {
            let batch: Vec<_> = (0..500).map(|i| serde_json::json!({"text": format!("{} {}", "p".repeat(200), chunk * 500 + i)})).collect();
            let r = c
                .post(format!("{}/c/tailnode/{}", server.url, who.to_hex()))
                .json(&batch)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    for i in 0..n {
        let v: serde_json::Value = serde_json::from_str(&lines.next().await).unwrap();
        assert_eq!(v["text"], format!("{} {i}", "p".repeat(200)));
        assert_eq!(v["logtail"]["id"], mine.public().to_hex());
    }
    // The server's peak memory while the reader lagged is not asserted: it
    // depends on the build and the allocator (a benchmark's figure).
}

#[tokio::test]
async fn a_stream_with_time_start_replays_history_then_follows() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let id = common::adopted_id(&server.url, "tailnode").await;
    let post = |text: &str| {
        c.post(format!("{}/c/tailnode/{}", server.url, id.to_hex()))
            .body(format!("{{\"text\":\"{text}\"}}"))
            .send()
    };
    assert_eq!(post("old").await.unwrap().status(), 200);
    let mut lines = open_stream(&c, &server.url, &[("time-start", "2000-01-01T00:00:00Z")]).await;
    lines.next().await;
    assert!(lines.next().await.contains("\"old\""));
    assert_eq!(post("new").await.unwrap().status(), 200);
    assert!(lines.next().await.contains("\"new\""));
    let r = c
        .get(format!(
            "{}/c/tailnode?stream=true&time-end=2030-01-01T00:00:00Z",
            server.url
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
