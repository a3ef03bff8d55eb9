//! Test harness: runs the real `tally` binary as a server process.
#![allow(dead_code)]

pub mod certs;
pub mod moto;
pub mod readme;

use futures_util::StreamExt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Extra CA (PEM) trusted by [`http_for`], set by TLS tests.
pub static TEST_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A client for `url`: trusts [`TEST_CA`] for https.
pub fn http_for(url: &str) -> reqwest::Client {
    match TEST_CA.get() {
        Some(pem) if url.starts_with("https") => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ca = reqwest::Certificate::from_pem(pem).expect("CA");
            reqwest::Client::builder()
                .tls_certs_only([ca])
                .build()
                .expect("client")
        }
        _ => http(),
    }
}

/// The admin key every test server is started with.
pub const KEY: &str = "tally-test-admin-key-0123456789";

/// A server child process.
pub struct TestServer {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

impl TestServer {
    /// Starts `tally server` on a free port with `data_dir`, waiting until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts on a given address.
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::spawn(data_dir, listen, extra, &[], false).0
    }

    /// Starts like [`TestServer::start`] with extra environment variables.
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(data_dir, "127.0.0.1:0", extra, env, false).0
    }

    /// Starts like [`TestServer::start`], handing over the server's stderr
    /// lines (warnings and errors; each is also printed).
    pub fn start_with_stderr(
        data_dir: &Path,
        extra: &[&str],
    ) -> (Self, std::sync::mpsc::Receiver<String>) {
        let (server, lines) = Self::spawn(data_dir, "127.0.0.1:0", extra, &[], true);
        (server, lines.expect("stderr captured"))
    }

    /// Starts `tally <sub>` (`server` or `worker`) with `extra` flags;
    /// returns once it listens (a standby worker: once it took the lease).
    pub fn start_sub(sub: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_sub(sub, data_dir, "127.0.0.1:0", extra, &[], false).0
    }

    /// [`TestServer::start_sub`] with extra environment variables.
    pub fn start_sub_env(sub: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_sub(sub, data_dir, "127.0.0.1:0", extra, env, false).0
    }

    fn spawn(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        capture_stderr: bool,
    ) -> (Self, Option<std::sync::mpsc::Receiver<String>>) {
        Self::spawn_sub("server", data_dir, listen, extra, env, capture_stderr)
    }

    fn spawn_sub(
        sub: &str,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        capture_stderr: bool,
    ) -> (Self, Option<std::sync::mpsc::Receiver<String>>) {
        let mut child = Command::new(bin())
            .args([sub, "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("TALLY_BOOTSTRAP_KEY", KEY)
            .env("TALLY_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn tally server");
        let stderr = child.stderr.take().map(|err| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let _ = tx.send(line);
                }
            });
            rx
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("server printed nothing")
            .expect("read stdout");
        let url = first
            .strip_prefix("tally server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_owned();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let server = Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        };
        (server, stderr)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }

    /// The port the server listens on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("client")
}

/// Reads every entry of a collection (paging), as JSON values.
pub async fn read_all(
    client: &reqwest::Client,
    url: &str,
    collection: &str,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("max-count".to_owned(), "100000".to_owned())];
        if let Some(a) = &after {
            q.push(("after".into(), a.clone()));
        }
        let resp = client
            .get(format!("{url}/c/{collection}"))
            .bearer_auth(KEY)
            .query(&q)
            .send()
            .await
            .expect("query");
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.expect("json");
        out.extend(v["logs"].as_array().expect("logs").iter().cloned());
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

/// A running `tally agent` child process.
pub struct TestAgent {
    pub child: Child,
    pub public_id: String,
    /// The agent's later stdout lines.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl TestAgent {
    /// Starts an agent with short retry waits and waits until it is ready.
    pub fn start(server: &str, data: &Path, extra: &[&str]) -> Self {
        Self::start_with(Command::new(bin()), server, data, extra)
    }

    /// Starts an agent inside a network namespace (`ip netns exec`).
    pub fn start_in_netns(netns: &str, server: &str, data: &Path, extra: &[&str]) -> Self {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, bin()]);
        Self::start_with(c, server, data, extra)
    }

    /// Starts `base` (the binary, or a wrapper running it) as an agent,
    /// with short retry waits and (unless `extra` has one) a 100-ms flush
    /// delay. Unless `extra` has an `--auth-key`, the agent registers with a new
    /// reusable auth key of the test tailnet (its entries are the tailnet's).
    pub fn start_with(mut base: Command, server: &str, data: &Path, extra: &[&str]) -> Self {
        // A registered agent (its node-id file is there) needs no key.
        let auth_key = if extra.contains(&"--auth-key") || data.join("node-id").exists() {
            Vec::new()
        } else {
            let url = server.to_owned();
            let key = std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .expect("runtime")
                    .block_on(reusable_auth_key(&url))
            })
            .join()
            .expect("auth key");
            vec!["--auth-key".to_owned(), key]
        };
        let mut child = base
            .args(["agent", "--server", server, "--data-dir"])
            .arg(data)
            .args(extra)
            .args(&auth_key)
            .args(["--no-stdin", "--retry-min", "100ms", "--retry-max", "300ms"])
            // The default (2 s) when the test asks for it.
            .args(if extra.contains(&"--flush-delay") {
                &[][..]
            } else {
                &["--flush-delay", "100ms"][..]
            })
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tally agent");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().expect("agent printed nothing").unwrap();
        let public_id = ready
            .strip_prefix("tally agent ready: instance ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {ready}"))
            .to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            public_id,
            lines: rx,
        }
    }

    /// Waits (at most `timeout`) for a stdout line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(e) => panic!("no line starting with {prefix:?} from the agent: {e}"),
            }
        }
    }

    /// SIGTERM; the agent must exit cleanly.
    pub fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits, on a live stream of the instance's entries, until `n` have arrived.
pub async fn await_entries(url: &str, instance: &str, n: usize) {
    let c = http_for(url);
    let resp = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[
            ("stream", "true"),
            ("time-start", "2000-01-01T00:00:00Z"),
            ("instances", instance),
        ])
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut newlines = 0;
    let mut prev = b'\n';
    let wait = async {
        while newlines < n + 1 {
            let chunk = body.next().await.expect("stream ended").unwrap();
            // Count line ends that close a JSON line (heartbeats are bare newlines).
            for b in chunk.iter() {
                if *b == b'\n' && prev != b'\n' {
                    newlines += 1;
                }
                prev = *b;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} entries arrived", newlines.saturating_sub(1)));
}

/// A fresh private ID whose instance the test tailnet adopted into
/// `collection`, so that what it uploads is the tailnet's.
pub async fn adopted_id(url: &str, collection: &str) -> tally_proto::PrivateId {
    let id = tally_proto::PrivateId::generate();
    let resp = http_for(url)
        .post(format!("{url}/instances"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "collection": collection, "instances": [id.public().to_hex()] }))
        .send()
        .await
        .expect("adopt");
    assert!(resp.status().is_success(), "adopting: {}", resp.status());
    id
}

/// Creates a reusable auth key with the admin key; returns its secret.
pub async fn reusable_auth_key(url: &str) -> String {
    let key: serde_json::Value = http_for(url)
        .post(format!("{url}/api/v2/tailnet/-/keys"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "capabilities": { "devices": { "create": { "reusable": true } } } }))
        .send()
        .await
        .expect("create auth key")
        .json()
        .await
        .expect("auth key JSON");
    key["key"].as_str().expect("auth key secret").to_owned()
}

/// Registers a node as an agent does (`POST /api/v2/agent/<private-id>`
/// with an auth key); returns its private ID and the node ID it got.
pub async fn register_node(
    url: &str,
    auth_key: &str,
    hostname: &str,
    address: &str,
) -> (tally_proto::PrivateId, String) {
    let private = tally_proto::PrivateId::generate();
    let resp = http()
        .post(format!("{url}/api/v2/agent/{}", private.to_hex()))
        .bearer_auth(auth_key)
        .json(&serde_json::json!({ "hostname": hostname, "addresses": [address] }))
        .send()
        .await
        .expect("register node");
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.expect("registration JSON");
    assert!(status.is_success(), "registering {hostname}: {status}: {v}");
    let id = v["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no node ID in {v}"))
        .to_owned();
    (private, id)
}

/// A live NDJSON stream of a collection, from its beginning.
pub struct Follow {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Follow {
    /// Opens `GET /c/<collection>?stream=true` from the first entry.
    pub async fn open(url: &str, collection: &str) -> Self {
        let resp = http()
            .get(format!("{url}/c/{collection}"))
            .bearer_auth(KEY)
            .query(&[("stream", "true"), ("time-start", "1970-01-01T00:00:00Z")])
            .send()
            .await
            .expect("open stream");
        assert_eq!(resp.status(), 200);
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next entry (skipping the header line and heartbeats); at most 90 s.
    pub async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                match serde_json::from_slice::<serde_json::Value>(&line) {
                    Ok(v) if v.get("logtail").is_some() || v.get("class").is_some() => return v,
                    _ => continue,
                }
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(90), self.resp.chunk())
                .await
                .expect("no entry within 90 s")
                .expect("stream read")
                .expect("stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The text of the next entry whose `text` starts with `prefix`.
    pub async fn until_text(&mut self, prefix: &str) -> String {
        loop {
            let v = self.next().await;
            if let Some(t) = v["text"].as_str()
                && t.starts_with(prefix)
            {
                return t.to_owned();
            }
        }
    }
}

/// `GET url` with the admin key, as JSON (panics on a transport error).
pub async fn get_json(url: &str) -> serde_json::Value {
    http()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET sent")
        .json()
        .await
        .expect("JSON answer")
}

/// Reads findings from `findings` (a live stream of the `findings`
/// collection) until the end marker: a `missing_agent_silent` finding of
/// `node` in a window starting at `since` or later (the test stopped that
/// node's agent at `since` while its peers kept talking to it; windows are
/// judged in time order, so every earlier window has been judged by then).
/// Returns every finding read, the marker last; fails after `within`.
pub async fn findings_until_silent(
    findings: &mut Follow,
    node: &str,
    since: i64,
    within: std::time::Duration,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let f = tokio::time::timeout_at(deadline, findings.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no finding for the stopped agent of {node}; findings so far: {seen:#?}")
            });
        let marker = f["class"] == "missing_agent_silent"
            && f["node"] == node
            && f["window"]["start"].as_i64().is_some_and(|s| s >= since);
        seen.push(f);
        if marker {
            return seen;
        }
    }
}

/// Turns the test tailnet's flow logging on or off (as the CLI does:
/// `Tally-Origin: CLI`); returns the time just before the change.
pub async fn set_flow_logging(url: &str, on: bool) -> i64 {
    let at = tally_proto::timefmt::now_nanos();
    let resp = http()
        .patch(format!("{url}/api/v2/tailnet/-/settings"))
        .bearer_auth(KEY)
        .header("Tally-Origin", "CLI")
        .json(&serde_json::json!({ "networkFlowLoggingOn": on }))
        .send()
        .await
        .expect("settings request");
    assert_eq!(resp.status(), 200, "flow logging {on}");
    at
}

/// Reads the node log (a [`Follow`] of `tailnode`) until every one of
/// `instances` logged a line containing `text`, in whatever order they
/// come; returns each one's first such line's client time, in the order
/// of `instances`. Fails after 90 s naming those still missing.
pub async fn await_node_logs<S: AsRef<str>>(
    logs: &mut Follow,
    instances: &[S],
    text: &str,
) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut times: Vec<Option<i64>> = vec![None; instances.len()];
    while times.iter().any(Option::is_none) {
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<&str> = instances
                .iter()
                .zip(&times)
                .filter(|(_, t)| t.is_none())
                .map(|(i, _)| i.as_ref())
                .collect();
            panic!("no {text:?} in the node log of {missing:?}");
        }
        let e = logs.next().await;
        if let Some(i) = instances
            .iter()
            .position(|id| e["logtail"]["id"].as_str() == Some(id.as_ref()))
            && times[i].is_none()
            && e["text"].as_str().is_some_and(|t| t.contains(text))
        {
            times[i] = Some(
                e["logtail"]["client_time"]
                    .as_str()
                    .and_then(tally_proto::timefmt::parse_rfc3339)
                    .expect("client time"),
            );
        }
    }
    times.into_iter().flatten().collect()
}

/// Waits (at most 60 s) until consumer `name` runs and has read everything
/// stored when it is asked (`/api/v2/consumers`, the test key's
/// `server:operate`); no signal crosses the process, so it polls.
pub async fn consumer_caught_up(url: &str, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(&format!("{url}/api/v2/consumers")).await;
        let c = v["consumers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_default();
        if c["lagRecords"].as_u64() == Some(0) && c["state"] == "running" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumer {name} never caught up: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
