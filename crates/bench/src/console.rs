//! `tally bench console`: the server time of each console page on a
//! loaded tailnet (issue 15).
//!
//! A `tally server` child process (the `tally` next to this binary) gets,
//! through the paths the other benchmarks use:
//!
//! - `--nodes` nodes registered through the agent API (as `tally bench
//!   flows` and `stream` do);
//! - `--log-entries` tailscaled-like log lines (the generator of `tally
//!   bench ingest`), one upload of `--log-entries / --nodes` lines per
//!   node to `/c/tailnode/<private-id>`;
//! - `--audit-events` configuration audit events, appended through the
//!   library on a second handle of the server's control database (as
//!   `tally bench audit` fills its log: 50 actors, times spread over the
//!   last 89 days);
//! - `--flow-hours` of flow records of those nodes ending now, uploaded
//!   to `/c/tailtraffic/<private-id>` as agents send them (the generator
//!   of `tally bench flows` and `stream`: 1 % busy servers with 100-1,000
//!   connections a record, the rest 1-6; one record per node per 5 s),
//!   generated a chunk at a time while the previous chunk uploads. The
//!   detection and reconciliation consumers are paused during the load
//!   and stay paused (see `--keep-consumers`): the generated traffic is
//!   one-sided, and the reconciler's memory on one-sided traffic is what
//!   `tally bench stream` found, not what a console page costs.
//!
//! Then, once every running consumer is at the log's end, it loads each
//! console page `--loads` times as the browser does on a first load: the
//! shell's `GET /api/v2/session`, then the page's `/api/v2` and `/c/`
//! requests, in the order and with the parallelism of the page's module
//! (`crates/server/console/js/pages/`), with the session cookie and
//! `Accept-Encoding: gzip`. A page's time is from its first request sent
//! to its last answer read, on loopback: the server's time plus this
//! client's (reading the bodies; no JSON parsing). Pages are interleaved
//! (one load of each page per round) so a slow phase of the machine hits
//! every page alike.
//!
//! Finally the console's static files as a first load fetches them
//! (`/`, then every stylesheet, icon and module they name, following the
//! modules' imports), once with gzip as browsers ask and once without:
//! the bytes of the answers.
//!
//! The time to draw the 1,000-node graph in Chromium is not measured
//! here: `cargo test -p tally --test console_browser` measures it
//! (headless Chromium over WebDriver) and prints it.

use crate::audit::{AuditArgs, fill};
use crate::common::{
    Machine, TallyServer, fmt_bytes, fmt_count, http_client, percentile, proc_status_bytes,
    tally_exe, temp_dir_in,
};
use crate::flows::{
    INTERVAL_NS, IngestStats, busy_nodes, gen_nodes, gen_requests, git_state, loadavg, node_addr,
    register_node_at, send_all, setup_tailnet_at,
};
use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tally_proto::timefmt::{format_nanos, now_nanos};

/// The goal of the issue: every page's server time under this p99 (ms).
const GOAL_P99_MS: f64 = 100.0;
/// The goal of the issue: a first load's compressed bytes under this.
const GOAL_BYTES: u64 = 300 * 1000;

/// Settings of `tally bench console`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Registered nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Configuration audit events in the tailnet's log.
    #[arg(long, default_value_t = 1_000_000)]
    pub audit_events: u64,
    /// Hours of flow records of every node, ending now.
    #[arg(long, default_value_t = 24)]
    pub flow_hours: u64,
    /// Log lines in `tailnode` (spread over the nodes; all received now,
    /// so all in the logs page's default hour).
    #[arg(long, default_value_t = 1_000_000)]
    pub log_entries: usize,
    /// Loads of each page.
    #[arg(long, default_value_t = 100)]
    pub loads: usize,
    /// Loads of the variants that take seconds (the pages as they were
    /// before this benchmark's fixes, the graph).
    #[arg(long, default_value_t = 10)]
    pub slow_loads: usize,
    /// Flow records per upload, per node (one record is 5 s).
    #[arg(long, default_value_t = 12)]
    pub records_per_request: usize,
    /// Concurrent upload clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Intervals (5 s each) of flow records generated per chunk.
    #[arg(long, default_value_t = 120)]
    pub chunk_intervals: usize,
    /// Leave the detection and reconciliation consumers running during
    /// the load and the measurement.
    #[arg(long)]
    pub keep_consumers: bool,
    /// Seed of the generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parent directory of the work directory (default: the system's
    /// temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (printed) instead of removing it; a later
    /// run can measure the same data with `--reuse`.
    #[arg(long)]
    pub keep: bool,
    /// Measure the pages on the data of an earlier run's kept work
    /// directory (with the `tally` next to this binary, which may be newer)
    /// instead of loading a tailnet; the directory is kept.
    #[arg(long)]
    pub reuse: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// The pages
// ---------------------------------------------------------------------------

/// One request of a page.
#[derive(Debug, Clone)]
struct Req {
    path: String,
    query: Vec<(String, String)>,
}

fn req(path: &str, query: &[(&str, String)]) -> Req {
    Req {
        path: path.to_owned(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

/// What a page does on a first load: steps in sequence, the requests of a
/// step at once. A step may also be a chain of `/c/` pages (each page's
/// `next` is the following page's `after`).
#[derive(Debug, Clone)]
enum Step {
    /// Requests sent at once.
    Parallel(Vec<Req>),
    /// Pages of `/c/<collection>` read one after another until the answer
    /// has no `next` or `max` pages were read.
    LogPages { req: Req, max: usize },
}

/// A page and how it loads.
struct Page {
    name: &'static str,
    /// What the page module does, for the report.
    requests: &'static str,
    steps: fn(&Times) -> Vec<Step>,
    /// Loaded only `--slow-loads` times (a variant that takes seconds).
    slow: bool,
}

/// The times the page modules compute (`timeArg`): now minus a duration.
struct Times {
    hour: String,
    day: String,
    week: String,
    /// The end of the windows: the page's `until` (the loaded data's end).
    end: String,
}

impl Times {
    /// The windows ending at `end` (Unix ns), with `end` itself.
    fn at(end: i64) -> Self {
        let ago = |secs: i64| format_nanos(end - secs * 1_000_000_000);
        Self {
            hour: ago(3600),
            day: ago(86_400),
            week: ago(7 * 86_400),
            end: format_nanos(end),
        }
    }
}

const T: &str = "/api/v2/tailnet/-";

fn devices() -> Req {
    req(&format!("{T}/devices"), &[])
}

/// Every page as its module loads it with no filters in its URL (an
/// owner's session: every card and action allowed).
fn pages() -> Vec<Page> {
    vec![
        Page {
            slow: false,
            name: "overview",
            requests: "devices, /collections, settings, reconciliation (last hour, limit 1), open alerts (limit 1000), at once",
            steps: |t| {
                vec![Step::Parallel(vec![
                    devices(),
                    req("/collections", &[]),
                    req(&format!("{T}/settings"), &[]),
                    req(
                        &format!("{T}/reconciliation"),
                        &[
                            ("start", t.hour.clone()),
                            ("end", t.end.clone()),
                            ("limit", "1".into()),
                        ],
                    ),
                    req(
                        &format!("{T}/alerts"),
                        &[("status", "open".into()), ("limit", "1000".into())],
                    ),
                ])]
            },
        },
        Page {
            slow: false,
            name: "logs",
            requests: "/collections and devices twice (the node list and the query's lookup) at once; then /c/tailnode, the last hour, newest first, 1,000 entries",
            steps: |t| {
                vec![
                    Step::Parallel(vec![req("/collections", &[]), devices(), devices()]),
                    Step::LogPages {
                        req: req(
                            "/c/tailnode",
                            &[
                                ("time-start", t.hour.clone()),
                                ("time-end", t.end.clone()),
                                ("max-count", "1000".into()),
                                ("order", "newest".into()),
                            ],
                        ),
                        max: 1,
                    },
                ]
            },
        },
        Page {
            slow: false,
            name: "logs, text search (`q=timeout`)",
            requests: "as logs, with q=timeout (about 1 line in 12)",
            steps: |t| {
                vec![
                    Step::Parallel(vec![req("/collections", &[]), devices(), devices()]),
                    Step::LogPages {
                        req: req(
                            "/c/tailnode",
                            &[
                                ("time-start", t.hour.clone()),
                                ("time-end", t.end.clone()),
                                ("max-count", "1000".into()),
                                ("order", "newest".into()),
                                ("q", "timeout".into()),
                            ],
                        ),
                        max: 1,
                    },
                ]
            },
        },
        Page {
            slow: true,
            name: "logs, before (oldest first, text matched in the page)",
            requests: "as logs, then up to 20 pages of 5,000 entries oldest first (the page module before server-side search)",
            steps: |t| {
                vec![
                    Step::Parallel(vec![req("/collections", &[]), devices(), devices()]),
                    Step::LogPages {
                        req: req(
                            "/c/tailnode",
                            &[
                                ("time-start", t.hour.clone()),
                                ("time-end", t.end.clone()),
                                ("max-count", "5000".into()),
                            ],
                        ),
                        max: 20,
                    },
                ]
            },
        },
        Page {
            slow: true,
            name: "flows (graph)",
            requests: "devices; then the graph of the last hour in 5-min buckets",
            steps: |t| {
                vec![
                    Step::Parallel(vec![devices()]),
                    Step::Parallel(vec![req(
                        &format!("{T}/logging/network/graph"),
                        &[
                            ("start", t.hour.clone()),
                            ("end", t.end.clone()),
                            ("bucket", "5m".into()),
                        ],
                    )]),
                ]
            },
        },
        Page {
            slow: true,
            name: "flows (graph), before (1-min buckets)",
            requests: "devices; then the graph of the last hour in 1-min buckets",
            steps: |t| {
                vec![
                    Step::Parallel(vec![devices()]),
                    Step::Parallel(vec![req(
                        &format!("{T}/logging/network/graph"),
                        &[
                            ("start", t.hour.clone()),
                            ("end", t.end.clone()),
                            ("bucket", "1m".into()),
                        ],
                    )]),
                ]
            },
        },
        Page {
            slow: false,
            name: "flows (table)",
            requests: "devices; then 500 flow records of the last hour",
            steps: |t| {
                vec![
                    Step::Parallel(vec![devices()]),
                    Step::Parallel(vec![req(
                        &format!("{T}/logging/network"),
                        &[
                            ("start", t.hour.clone()),
                            ("end", t.end.clone()),
                            ("limit", "500".into()),
                        ],
                    )]),
                ]
            },
        },
        Page {
            slow: false,
            name: "reconciliation",
            requests: "devices; then the last hour (limit 200)",
            steps: |t| {
                vec![
                    Step::Parallel(vec![devices()]),
                    Step::Parallel(vec![req(
                        &format!("{T}/reconciliation"),
                        &[
                            ("start", t.hour.clone()),
                            ("end", t.end.clone()),
                            ("limit", "200".into()),
                        ],
                    )]),
                ]
            },
        },
        Page {
            slow: false,
            name: "alerts",
            requests: "devices; then the last 24 h (limit 200)",
            steps: |t| {
                vec![
                    Step::Parallel(vec![devices()]),
                    Step::Parallel(vec![req(
                        &format!("{T}/alerts"),
                        &[
                            ("start", t.day.clone()),
                            ("end", t.end.clone()),
                            ("limit", "200".into()),
                        ],
                    )]),
                ]
            },
        },
        Page {
            slow: false,
            name: "recordings",
            requests: "the last 7 days (limit 500)",
            steps: |t| {
                vec![Step::Parallel(vec![req(
                    &format!("{T}/recordings"),
                    &[
                        ("start", t.week.clone()),
                        ("end", t.end.clone()),
                        ("limit", "500".into()),
                    ],
                )])]
            },
        },
        Page {
            slow: false,
            name: "audit log",
            requests: "users and the newest 100 events at once (the chain is verified when asked)",
            steps: |_| {
                vec![Step::Parallel(vec![
                    req(&format!("{T}/users"), &[]),
                    req(
                        &format!("{T}/logging/configuration"),
                        &[("limit", "100".into())],
                    ),
                ])]
            },
        },
        Page {
            slow: true,
            name: "audit log, before (chain verified on every load)",
            requests: "users, the chain's verification, the newest 100 events, at once",
            steps: |_| {
                vec![Step::Parallel(vec![
                    req(&format!("{T}/users"), &[]),
                    req(&format!("{T}/logging/configuration/verify"), &[]),
                    req(
                        &format!("{T}/logging/configuration"),
                        &[("limit", "100".into())],
                    ),
                ])]
            },
        },
        Page {
            slow: false,
            name: "devices",
            requests: "devices",
            steps: |_| vec![Step::Parallel(vec![devices()])],
        },
        Page {
            slow: false,
            name: "users",
            requests: "users",
            steps: |_| vec![Step::Parallel(vec![req(&format!("{T}/users"), &[])])],
        },
        Page {
            slow: false,
            name: "keys",
            requests: "keys and users at once",
            steps: |_| {
                vec![Step::Parallel(vec![
                    req(&format!("{T}/keys"), &[]),
                    req(&format!("{T}/users"), &[]),
                ])]
            },
        },
        Page {
            slow: false,
            name: "settings",
            requests: "settings and /collections at once",
            steps: |_| {
                vec![Step::Parallel(vec![
                    req(&format!("{T}/settings"), &[]),
                    req("/collections", &[]),
                ])]
            },
        },
        Page {
            slow: false,
            name: "rules",
            requests: "detection rules",
            steps: |_| {
                vec![Step::Parallel(vec![req(
                    &format!("{T}/detection/rules"),
                    &[],
                )])]
            },
        },
        Page {
            slow: false,
            name: "streaming",
            requests: "the streams of the five log types at once",
            steps: |_| {
                let types = ["configuration", "network", "alerts", "findings", "logs"];
                vec![Step::Parallel(
                    types
                        .iter()
                        .map(|ty| req(&format!("{T}/logging/{ty}/streams"), &[]))
                        .collect(),
                )]
            },
        },
    ]
}

// ---------------------------------------------------------------------------
// The client: a session cookie, gzip asked for, bodies read
// ---------------------------------------------------------------------------

/// A signed-in console client.
#[derive(Clone)]
struct Console {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

/// What one load read.
#[derive(Default)]
struct Loaded {
    requests: usize,
    bytes: u64,
}

impl Console {
    /// Signs in with the API key, as the sign-in page does with a pasted key.
    async fn sign_in(base: &str, key: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(8)
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot build an HTTP client")?;
        let resp = http
            .post(format!("{base}/api/v2/session"))
            .json(&json!({ "apiKey": key }))
            .send()
            .await
            .context("signing in: cannot reach the server")?;
        let status = resp.status();
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("tally_session="))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let text = resp.text().await.unwrap_or_default();
        ensure!(status.is_success(), "signing in failed: {status}: {text}");
        let cookie = cookie.context("signing in set no tally_session cookie")?;
        Ok(Self {
            http,
            base: base.to_owned(),
            cookie,
        })
    }

    /// One GET as the page's `fetch` sends it; the body's bytes and, for
    /// `/c/` pages, its `next`.
    async fn get(&self, r: &Req, after: Option<&str>) -> anyhow::Result<(u64, Option<String>)> {
        let mut q = r.query.clone();
        if let Some(a) = after {
            q.push(("after".into(), a.to_owned()));
        }
        let resp = self
            .http
            .get(format!("{}{}", self.base, r.path))
            .query(&q)
            .header(reqwest::header::COOKIE, &self.cookie)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::ACCEPT_ENCODING, "gzip, deflate, br, zstd")
            .header("Sec-Fetch-Mode", "cors")
            .send()
            .await
            .with_context(|| format!("GET {}: cannot reach the server", r.path))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("GET {}: cannot read the answer", r.path))?;
        if !status.is_success() {
            bail!(
                "GET {} failed: {status}: {}",
                r.path,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        let next = if r.path.starts_with("/c/") {
            next_of(&body)
        } else {
            None
        };
        Ok((body.len() as u64, next))
    }

    /// One first load of a page: the session, then its steps.
    async fn load(&self, steps: &[Step]) -> anyhow::Result<Loaded> {
        let mut out = Loaded::default();
        let (n, _) = self.get(&req("/api/v2/session", &[]), None).await?;
        out.requests += 1;
        out.bytes += n;
        for step in steps {
            match step {
                Step::Parallel(reqs) => {
                    let answers =
                        futures_util::future::join_all(reqs.iter().map(|r| self.get(r, None)))
                            .await;
                    for a in answers {
                        out.bytes += a?.0;
                        out.requests += 1;
                    }
                }
                Step::LogPages { req: r, max } => {
                    let mut after: Option<String> = None;
                    for _ in 0..*max {
                        let (n, next) = self.get(r, after.as_deref()).await?;
                        out.bytes += n;
                        out.requests += 1;
                        match next {
                            Some(n) => after = Some(n),
                            None => break,
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The `next` of a `/c/` answer (it comes before `logs`, near the start).
fn next_of(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(256)];
    let at = memchr::memmem::find(head, b"\"next\":\"")? + 8;
    let len = head[at..].iter().position(|b| *b == b'"')?;
    Some(String::from_utf8_lossy(&head[at..at + len]).into_owned())
}

// ---------------------------------------------------------------------------
// Static files of a first load
// ---------------------------------------------------------------------------

/// Paths `text` names with `attr="..."` (HTML) that start with `/`.
fn html_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = text;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            if let Some(end) = rest.find('"') {
                let v = &rest[..end];
                if v.starts_with('/') && !v.starts_with("//") {
                    out.push(v.to_owned());
                }
                rest = &rest[end..];
            }
        }
    }
    out
}

/// Modules a module imports (`from "./x.js"`, `import "./x.js"`),
/// resolved against the module's path.
fn js_imports(path: &str, text: &str) -> Vec<String> {
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out = Vec::new();
    for marker in ["from \"", "import \""] {
        let mut rest = text;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let Some(end) = rest.find('"') else { break };
            let spec = &rest[..end];
            rest = &rest[end..];
            if spec.starts_with("./") || spec.starts_with("../") {
                let mut parts: Vec<&str> = dir.split('/').collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                out.push(parts.join("/"));
            } else if spec.starts_with('/') {
                out.push(spec.to_owned());
            }
        }
    }
    out
}

/// What a first load of the console fetches: (path, gzip bytes, plain bytes).
async fn static_bytes(base: &str) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let http = http_client(Duration::from_secs(30))?;
    let mut seen = BTreeSet::new();
    let mut todo = VecDeque::from(["/".to_owned()]);
    let mut out = Vec::new();
    while let Some(path) = todo.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let fetch = |gzip: bool| {
            let mut r = http.get(format!("{base}{path}"));
            if gzip {
                r = r.header(reqwest::header::ACCEPT_ENCODING, "gzip, deflate, br, zstd");
            }
            r.send()
        };
        let z = fetch(true).await.with_context(|| format!("GET {path}"))?;
        ensure!(z.status().is_success(), "GET {path}: {}", z.status());
        let gz = z
            .bytes()
            .await
            .with_context(|| format!("GET {path}"))?
            .len() as u64;
        let plain = fetch(false)
            .await
            .with_context(|| format!("GET {path}"))?
            .bytes()
            .await
            .with_context(|| format!("GET {path}"))?;
        let text = String::from_utf8_lossy(&plain);
        if path == "/" || path.ends_with(".html") {
            todo.extend(html_refs(&text));
        } else if path.ends_with(".js") {
            todo.extend(js_imports(&path, &text));
        }
        out.push((path, gz, plain.len() as u64));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Loading the tailnet
// ---------------------------------------------------------------------------

/// An API call with the bootstrap key; the answer's JSON.
async fn call(key: &str, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let resp = req
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the server"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    ensure!(status.is_success(), "{what} failed: {status}: {text}");
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON"))
}

/// Uploads `per_node` generated log lines for each node (one upload each).
async fn load_logs(
    base: &str,
    privates: &[String],
    per_node: usize,
    seed: u64,
) -> anyhow::Result<(u64, f64)> {
    let start_ns = now_nanos();
    let t = Instant::now();
    let bodies: Vec<(String, Vec<u8>, usize)> = {
        let privates = privates.to_vec();
        let base = base.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut out = Vec::with_capacity(privates.len());
            for (i, p) in privates.iter().enumerate() {
                let mut g = crate::ingest::EntryGen::new(seed, i, start_ns);
                let mut json = Vec::with_capacity(per_node * 220);
                json.push(b'[');
                for j in 0..per_node {
                    if j > 0 {
                        json.push(b',');
                    }
                    json.extend_from_slice(g.next_entry().json.as_bytes());
                }
                json.push(b']');
                let z = zstd::bulk::compress(&json, 3).context("zstd failed")?;
                out.push((format!("{base}/c/tailnode/{p}"), z, json.len()));
            }
            Ok(out)
        })
        .await
        .context("generating log lines panicked")??
    };
    let http = http_client(Duration::from_secs(120))?;
    let mut stored = 0u64;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut it = bodies.into_iter();
    loop {
        while pending.len() < 4 {
            let Some((url, body, orig)) = it.next() else {
                break;
            };
            let http = http.clone();
            pending.push(async move {
                let resp = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::CONTENT_ENCODING, "zstd")
                    .header("Orig-Content-Length", orig)
                    .body(body)
                    .send()
                    .await
                    .context("uploading log lines: cannot reach the server")?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                ensure!(
                    status.is_success(),
                    "uploading log lines failed: {status}: {text}"
                );
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                anyhow::Ok(v["stored"].as_u64().unwrap_or(0))
            });
        }
        use futures_util::StreamExt as _;
        match pending.next().await {
            Some(r) => stored += r?,
            None => break,
        }
    }
    Ok((stored, t.elapsed().as_secs_f64()))
}

/// What loading the flows did.
struct FlowLoad {
    stats: IngestStats,
    json_bytes: u64,
    upload_secs: f64,
    index_secs: f64,
}

/// Generates and uploads `hours` of flow records ending now, a chunk at a
/// time (the next chunk is generated while one uploads).
async fn load_flows(
    a: &ConsoleArgs,
    base: &str,
    nodes: Vec<crate::flows::GenNode>,
) -> anyhow::Result<(IngestStats, u64, f64)> {
    let intervals = usize::try_from(a.flow_hours * 720).context("--flow-hours is too large")?;
    let start = (now_nanos() - intervals as i64 * INTERVAL_NS) / INTERVAL_NS * INTERVAL_NS;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (chunk, per_request, clients, seed, base) = (
        a.chunk_intervals.max(1),
        a.records_per_request,
        a.clients,
        a.seed,
        base.to_owned(),
    );
    let generator = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut nodes = nodes;
        let mut t = 0;
        let mut k = 0u64;
        while t < intervals {
            let n = chunk.min(intervals - t);
            let at = start + t as i64 * INTERVAL_NS;
            let made = gen_requests(&mut nodes, &base, n, per_request, clients, at, seed + k)?;
            if tx.blocking_send(made).is_err() {
                return Ok(());
            }
            t += n;
            k += 1;
        }
        Ok(())
    });
    let t0 = Instant::now();
    let mut stats = IngestStats::default();
    let mut json_bytes = 0u64;
    let mut next_note = Instant::now();
    while let Some((reqs, json)) = rx.recv().await {
        json_bytes += json;
        let s = send_all(reqs).await?;
        ensure!(
            s.gave_up == 0,
            "{} flow uploads failed: {}",
            s.gave_up,
            s.first_error.as_deref().unwrap_or("?")
        );
        stats.merge(s);
        if Instant::now() >= next_note {
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "  {} flow records ({} connections) in {secs:.0} s: {} records/s",
                fmt_count(stats.records as f64),
                fmt_count(stats.entries as f64),
                fmt_count(stats.records as f64 / secs.max(1e-9))
            );
            next_note = Instant::now() + Duration::from_secs(30);
        }
    }
    generator
        .await
        .context("generating flow records panicked")??;
    Ok((stats, json_bytes, t0.elapsed().as_secs_f64()))
}

/// Waits until every running consumer is at the log's end; the time taken.
async fn wait_consumers(http: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut last_note = Instant::now();
    loop {
        let v = call(
            key,
            http.get(format!("{base}/api/v2/consumers")),
            "listing the consumers",
        )
        .await?;
        let behind: Vec<(String, u64)> = v["consumers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["state"].as_str() != Some("paused"))
            .filter_map(|c| {
                let lag = c["lagRecords"].as_u64().unwrap_or(0);
                (lag > 0).then(|| (c["name"].as_str().unwrap_or("?").to_owned(), lag))
            })
            .collect();
        if behind.is_empty() {
            return Ok(t.elapsed().as_secs_f64());
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            eprintln!("  consumers behind: {behind:?}");
            last_note = Instant::now();
        }
        ensure!(
            t.elapsed() < Duration::from_secs(3600),
            "the consumers did not reach the log's end within an hour: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// One page's loads.
struct PageResult {
    name: &'static str,
    requests: &'static str,
    /// Microseconds, sorted.
    us: Vec<u64>,
    per_load: Loaded,
}

/// Runs `tally bench console`.
pub async fn run(a: ConsoleArgs) -> anyhow::Result<()> {
    ensure!(
        (10..=60_000).contains(&a.nodes),
        "--nodes must be 10 to 60,000"
    );
    ensure!(a.loads >= 1, "--loads must be at least 1");
    ensure!(
        a.records_per_request >= 1 && a.clients >= 1,
        "--records-per-request and --clients must be at least 1"
    );
    let exe = tally_exe()?;
    let (work, dir, key) = match &a.reuse {
        Some(d) => {
            let key = std::fs::read_to_string(d.join(KEY_FILE)).with_context(|| {
                format!(
                    "--reuse {}: no {KEY_FILE} (not kept by a run of this benchmark?)",
                    d.display()
                )
            })?;
            (None, d.clone(), key.trim().to_owned())
        }
        None => {
            let w = temp_dir_in(a.work_dir.as_deref(), "tally-bench-console-")?;
            let key = format!("bench-{:032x}", rand::random::<u128>());
            std::fs::write(w.path().join(KEY_FILE), &key).context("cannot write the key file")?;
            let dir = w.path().to_path_buf();
            (Some(w), dir, key)
        }
    };
    let machine = Machine::detect();
    let code = git_state();
    let load_start = loadavg();
    let mut server = TallyServer::spawn_at(&exe, &dir, &key, &[]).await?;
    let result = bench(&a, &server, &dir, &machine, &code, &load_start).await;
    let stopped = server.stop().await;
    if let Some(w) = work
        && a.keep
    {
        eprintln!(
            "kept {} (measure it again with --reuse)",
            w.keep().display()
        );
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(e.context(format!("the server's log:\n{}", server.log_tail())));
        }
    };
    stopped?;
    println!("\n{report}");
    Ok(())
}

/// The bootstrap key of a work directory's server, for `--reuse`.
const KEY_FILE: &str = "bench-key";
/// What was loaded into a work directory's server, for `--reuse`.
const LOADED_FILE: &str = "loaded.md";

async fn bench(
    a: &ConsoleArgs,
    server: &TallyServer,
    dir: &std::path::Path,
    machine: &Machine,
    code: &str,
    load_start: &str,
) -> anyhow::Result<String> {
    let pid = server.pid.context("the server has no pid")?;
    let (base, key) = (server.base.as_str(), server.key.as_str());
    let http = http_client(Duration::from_secs(120))?;
    let loaded = if a.reuse.is_some() {
        if !a.keep_consumers {
            pause_consumers(&http, base, key).await?;
        }
        let text = std::fs::read_to_string(dir.join(LOADED_FILE)).unwrap_or_default();
        eprintln!("waiting for the consumers to reach the log's end ...");
        wait_consumers(&http, base, key).await?;
        format!("(loaded by an earlier run, reused)\n\n{text}")
    } else {
        let text = load(a, server, &http).await?;
        std::fs::write(dir.join(LOADED_FILE), &text).context("cannot write loaded.md")?;
        text
    };
    measure(a, server, pid, machine, code, load_start, &loaded).await
}

/// Pauses the detection and reconciliation consumers.
async fn pause_consumers(http: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<()> {
    for c in ["detection", "reconciliation"] {
        call(
            key,
            http.post(format!("{base}/api/v2/consumers/{c}/pause")),
            &format!("pausing the {c} consumer"),
        )
        .await?;
    }
    Ok(())
}

/// Loads the tailnet; what was loaded, for the report.
async fn load(
    a: &ConsoleArgs,
    server: &TallyServer,
    http: &reqwest::Client,
) -> anyhow::Result<String> {
    let http = http.clone();
    let (base, key) = (server.base.as_str(), server.key.as_str());
    let auth = setup_tailnet_at(&http, base, key).await?;
    if !a.keep_consumers {
        pause_consumers(&http, base, key).await?;
    }

    // Nodes.
    eprintln!("registering {} nodes ...", a.nodes);
    let t = Instant::now();
    let mut regs = Vec::with_capacity(a.nodes);
    for i in 0..a.nodes {
        regs.push(
            register_node_at(
                base,
                &http,
                &auth,
                &format!("bench-node-{i}"),
                &[node_addr(i).to_string()],
            )
            .await?,
        );
    }
    let register_secs = t.elapsed().as_secs_f64();
    let privates: Vec<String> = regs.iter().map(|r| r.private.clone()).collect();

    // Log lines.
    let per_node = a.log_entries.div_ceil(a.nodes);
    eprintln!(
        "uploading {} log lines ({per_node} per node) ...",
        fmt_count((per_node * a.nodes) as f64)
    );
    let (logs_stored, logs_secs) = load_logs(base, &privates, per_node, a.seed).await?;

    // Audit events.
    let data_dir = server
        .data_dir
        .clone()
        .context("the server has no data dir")?;
    let tailnet = call(
        key,
        http.get(format!("{base}{T}/logging/configuration"))
            .query(&[("limit", "1")]),
        "reading the audit log",
    )
    .await?["tailnetId"]
        .as_str()
        .context("the audit page has no tailnetId")?
        .to_owned();
    let db = tally_server::control::ControlDb::open(None, &data_dir)
        .await
        .context("cannot open a second handle on the server's control database")?;
    let audit_args = AuditArgs {
        postgres: false,
        events: a.audit_events,
        quiet: false,
        per_change: 200,
        queries: 1,
        text_queries: 1,
        clients: 1,
        seconds: 1.0,
        seed: a.seed,
        work_dir: None,
        keep: false,
        pg_bin: None,
        pg_conf: Vec::new(),
    };
    let filled = fill(&db, &tailnet, &audit_args).await?;
    db.close().await;

    // Flows.
    let nodes = gen_nodes(regs, a.seed);
    eprintln!(
        "uploading {} h of flow records of {} nodes ({} records) ...",
        a.flow_hours,
        a.nodes,
        fmt_count((a.flow_hours * 720) as f64 * a.nodes as f64)
    );
    let (flow_stats, json_bytes, upload_secs) = load_flows(a, base, nodes).await?;
    eprintln!("waiting for the consumers to reach the log's end ...");
    let index_secs = wait_consumers(&http, base, key).await?;
    let flows = FlowLoad {
        stats: flow_stats,
        json_bytes,
        upload_secs,
        index_secs,
    };
    let mut w = String::new();
    let _ = writeln!(
        w,
        "- {} nodes registered through the agent API in {register_secs:.1} s",
        a.nodes
    );
    let _ = writeln!(
        w,
        "- {} log lines in tailnode ({per_node} per node, one upload each) in {logs_secs:.1} s",
        fmt_count(logs_stored as f64)
    );
    let _ = writeln!(
        w,
        "- {} audit events appended (the log holds {} with the setup's) in {:.1} s over the last 89 days",
        fmt_count(filled.events as f64),
        fmt_count(a.audit_events as f64),
        filled.seconds
    );
    let s = &flows.stats;
    let _ = writeln!(
        w,
        "- {} h of flow records: {} records with {} connections ({} of JSON; {} busy nodes) uploaded in {:.0} s ({} records/s); every running consumer at the log's end {:.1} s later",
        a.flow_hours,
        fmt_count(s.records as f64),
        fmt_count(s.entries as f64),
        fmt_bytes(flows.json_bytes),
        busy_nodes(a.nodes),
        flows.upload_secs,
        fmt_count(s.records as f64 / flows.upload_secs.max(1e-9)),
        flows.index_secs
    );
    let _ = writeln!(
        w,
        "- server RSS after loading {}",
        fmt_bytes(
            server
                .pid
                .and_then(|p| proc_status_bytes(p, "VmRSS"))
                .unwrap_or(0)
        )
    );
    Ok(w)
}

/// Loads every page, then the static files; the report.
async fn measure(
    a: &ConsoleArgs,
    server: &TallyServer,
    pid: u32,
    machine: &Machine,
    code: &str,
    load_start: &str,
    loaded: &str,
) -> anyhow::Result<String> {
    let base = server.base.as_str();
    let key = server.key.as_str();
    let data_dir = server
        .data_dir
        .clone()
        .context("the server has no data dir")?;
    // The pages, each with its window ending where the loaded data ends
    // (as with `until=` in the page's URL): the load takes long enough
    // that "the last hour" at measuring time would miss most of it.
    let newest = call(
        key,
        http_client(Duration::from_secs(60))?
            .get(format!("{base}{T}/logging/network"))
            .query(&[
                ("limit", "1".to_owned()),
                ("start", format_nanos(now_nanos() - 30 * 86_400_000_000_000)),
            ]),
        "reading the newest flow record",
    )
    .await?;
    let data_end = newest["logs"][0]["end"]
        .as_str()
        .and_then(tally_proto::timefmt::parse_rfc3339)
        .map_or_else(now_nanos, |t| t + 1_000_000_000);
    eprintln!("windows end at {}", format_nanos(data_end));
    let console = Console::sign_in(base, key).await?;
    let pages = pages();
    let mut results: Vec<PageResult> = pages
        .iter()
        .map(|p| PageResult {
            name: p.name,
            requests: p.requests,
            us: Vec::with_capacity(a.loads),
            per_load: Loaded::default(),
        })
        .collect();
    eprintln!(
        "loading each of {} pages {} times (1 warm-up round first) ...",
        pages.len(),
        a.loads
    );
    let t_pages = Instant::now();
    for round in 0..=a.loads {
        for (p, r) in pages.iter().zip(results.iter_mut()) {
            if p.slow && round > a.slow_loads {
                continue;
            }
            let steps = (p.steps)(&Times::at(data_end));
            let t = Instant::now();
            let loaded = console
                .load(&steps)
                .await
                .with_context(|| format!("loading the {} page", p.name))?;
            let us = t.elapsed().as_micros() as u64;
            if round > 0 {
                r.us.push(us);
                r.per_load = loaded;
            }
        }
    }
    let pages_secs = t_pages.elapsed().as_secs_f64();
    for r in &mut results {
        r.us.sort_unstable();
    }
    let statics = static_bytes(base).await?;
    let rss_end = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
    let hwm = proc_status_bytes(pid, "VmHWM").unwrap_or(0);
    let disk = dir_bytes(&data_dir);
    let load_end = loadavg();

    // The report.
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# tally bench console\n");
    let _ = writeln!(w, "{}", machine.render());
    let _ = writeln!(w, "code: {code}");
    let _ = writeln!(
        w,
        "load average: {load_start} at the start, {load_end} at the end\n"
    );
    let _ = writeln!(w, "## The tailnet\n");
    let _ = writeln!(w, "{loaded}");
    let _ = writeln!(
        w,
        "- consumers {}",
        if a.keep_consumers {
            "all running"
        } else {
            "detection and reconciliation paused (from before the load to the end)"
        }
    );
    let _ = writeln!(
        w,
        "- page windows end at {} (the newest flow record's end, as `until=` in a page's URL)",
        format_nanos(data_end)
    );
    let _ = writeln!(
        w,
        "- data directory {}; server RSS {} at the end (peak {})\n",
        fmt_bytes(disk),
        fmt_bytes(rss_end),
        fmt_bytes(hwm)
    );
    let _ = writeln!(
        w,
        "## Page loads ({} each, {} for the slow variants, interleaved, after one unmeasured round; {pages_secs:.0} s in all; goal p99 < {GOAL_P99_MS:.0} ms)\n",
        a.loads, a.slow_loads
    );
    let _ = writeln!(
        w,
        "| page | requests (after GET /api/v2/session) | loads | p50 ms | p99 ms | max ms | requests | bytes read | goal |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let ms = |p: f64| percentile(&r.us, p) as f64 / 1000.0;
        let max = r.us.last().copied().unwrap_or(0) as f64 / 1000.0;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.1} | {:.1} | {max:.1} | {} | {} | {} |",
            r.name,
            r.requests,
            r.us.len(),
            ms(50.0),
            ms(99.0),
            r.per_load.requests,
            fmt_bytes(r.per_load.bytes),
            if ms(99.0) < GOAL_P99_MS {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    let gz: u64 = statics.iter().map(|s| s.1).sum();
    let plain: u64 = statics.iter().map(|s| s.2).sum();
    let _ = writeln!(
        w,
        "\n## First load's static files\n\n{} files (`/` and what it names, following the modules' imports): {} with gzip ({gz} bytes), {} without; goal < {} KB: {}",
        statics.len(),
        fmt_bytes(gz),
        fmt_bytes(plain),
        GOAL_BYTES / 1000,
        if gz < GOAL_BYTES { "met" } else { "MISSED" }
    );
    let mut biggest = statics.clone();
    biggest.sort_by_key(|s| std::cmp::Reverse(s.1));
    let _ = writeln!(
        w,
        "largest (gzip): {}",
        biggest
            .iter()
            .take(5)
            .map(|(p, g, _)| format!("{p} {}", fmt_bytes(*g)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        w,
        "\nThe 1,000-node graph's drawing time in Chromium is measured by `cargo test -p tally --test console_browser` (not here)."
    );
    Ok(out)
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_resolve_against_the_module() {
        let js = r#"import { a } from "../api.js";
import b from "./b.js";
import "./side.js";
import x from "https://example.com/x.js";"#;
        assert_eq!(
            js_imports("/console/js/pages/logs.js", js),
            vec![
                "/console/js/api.js",
                "/console/js/pages/b.js",
                "/console/js/pages/side.js"
            ]
        );
        let html = r#"<link rel="stylesheet" href="/console/app.css"><script type="module" src="/console/js/main.js"></script><a href="https://x">"#;
        assert_eq!(
            html_refs(html),
            vec!["/console/js/main.js", "/console/app.css"]
        );
    }

    #[test]
    fn next_is_read_from_the_head_of_a_page() {
        assert_eq!(
            next_of(br#"{"collection":"c","count":2,"next":"123","logs":[{},{}]}"#).as_deref(),
            Some("123")
        );
        assert_eq!(next_of(br#"{"collection":"c","count":0,"logs":[]}"#), None);
    }
}
