//! `stream=true`: followers see entries as they are stored, and slow readers
//! lose nothing.

mod common;

use common::{KEY, TestServer, http};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

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

#[tokio::test]
async fn followers_see_entries_within_a_second_of_their_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let id = common::adopted_id(&server.url, "tailnode").await;
    let mut lines = open_stream(&c, &server.url, &[]).await;
    let header: serde_json::Value = serde_json::from_str(&lines.next().await).unwrap();
    assert_eq!(header["collection"], "tailnode");
    assert_eq!(header["stream"], true);
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let r = c
            .post(format!("{}/c/tailnode/{}", server.url, id.to_hex()))
            .body(format!("{{\"text\":\"live {i}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let acked = Instant::now();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("entry never arrived on the stream");
        let delay = acked.elapsed();
        worst = worst.max(delay);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["text"], format!("live {i}"));
    }
    eprintln!("worst stream delay after 200: {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "an entry took {worst:?} to reach the stream"
    );
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
    // The server's memory stayed bounded while the reader lagged.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(hwm_kb < 300 * 1024, "server peak RSS {hwm_kb} kB");
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
