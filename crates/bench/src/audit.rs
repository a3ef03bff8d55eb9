//! `tally bench audit`: the configuration audit log under load, against a
//! real server started in this process (SQLite control database in a
//! temporary data directory by default, a throwaway PostgreSQL cluster with
//! `--postgres`):
//!
//! 1. **audited mutations** through the HTTP API: concurrent clients rename
//!    their own device back and forth; each rename is one change committed
//!    together with its audit event. Measured twice: on a fresh server (an
//!    empty log) and on the server whose log holds `--events` events.
//! 2. **filling** that tailnet's log to `--events` events through the
//!    library (`begin_change` / `record_at` / `commit` on a second
//!    `ControlDb` over the same database), realistic events from 50 actors
//!    with times spread over the last 89 days.
//! 3. **query latency** of pages of
//!    `GET /api/v2/tailnet/-/logging/configuration`, one client,
//!    sequential: filtered (actor + action + a 1-7 day window, the goal;
//!    actor + window), unfiltered newest first, and free text (`q=`, a
//!    LIKE scan, whole log and within a window).
//!
//! Layout: arguments; [`run`]; the server in process; the mutation load;
//! the event generator and the fill; the queries; the report.

use crate::common::{
    Machine, fmt_bytes, fmt_count, http_client, percentile, pg_sql, start_pg, stop_pg,
};
use anyhow::{Context, bail, ensure};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tally_server::control::ControlDb;
use tally_server::control::audit::{Actor, AuditContext, EventSpec, Origin, Target};

/// One day in nanoseconds.
const DAY_NS: i64 = 86_400_000_000_000;
/// Days the filled events span: the shortest audit retention is 90 days,
/// so the server's retention removes none of them.
const SPAN_DAYS: i64 = 89;
/// Distinct actors (`user-0@example.com` ... `user-49@example.com`).
const ACTORS: usize = 50;
/// Devices the generated events are about (`node-0000` ...).
const NODES: usize = 2000;
/// Users the generated events are about.
const TARGET_USERS: usize = 300;
/// Actions and their weights in the generated events.
const ACTIONS: &[(&str, u32)] = &[
    ("UPDATE", 40),
    ("CREATE", 20),
    ("DELETE", 12),
    ("ENABLE", 10),
    ("DISABLE", 10),
    ("REVOKE", 8),
];
/// Goal of the issue: a filtered page answers within this p99 (ms).
const GOAL_P99_MS: f64 = 50.0;

/// Settings of `tally bench audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Use a throwaway PostgreSQL cluster as the control database instead of
    /// SQLite.
    #[arg(long)]
    pub postgres: bool,
    /// Events in the tailnet's audit log before the queries.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// No progress bar while filling (one is drawn on stderr only when it
    /// is a terminal)
    #[arg(short, long)]
    pub quiet: bool,
    /// Events per change while filling (one transaction, one actor each).
    /// The actor is per change, so smaller changes interleave the 50 actors
    /// more finely (200: each actor about once a day, as a filtered query
    /// expects) but commit more often.
    #[arg(long, default_value_t = 200)]
    pub per_change: usize,
    /// Filtered and unfiltered queries (each).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Free-text queries (each kind); they scan, so fewer.
    #[arg(long, default_value_t = 100)]
    pub text_queries: usize,
    /// Concurrent clients of the mutation load (one device each).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds of measured mutation load (after 1 s of warm-up), per run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seed of the event generator and the query parameters.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parent directory of the temporary data directories (default: the
    /// system temporary directory); choose it to benchmark another disk.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the temporary data directories (and the PostgreSQL cluster's)
    /// and print where they are.
    #[arg(long)]
    pub keep: bool,
    /// Directory of PostgreSQL's initdb, pg_ctl and psql (default: the
    /// newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// Extra PostgreSQL setting `name=value` (repeatable); the default is an
    /// untuned cluster with fsync on.
    #[arg(long = "pg-conf")]
    pub pg_conf: Vec<String>,
}

/// Runs `tally bench audit`.
pub async fn run(a: AuditArgs) -> anyhow::Result<()> {
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(a.seconds > 0.0, "--seconds must be positive");
    ensure!(a.per_change >= 1, "--per-change must be at least 1");
    ensure!(
        a.queries >= 1 && a.text_queries >= 1,
        "--queries and --text-queries must be at least 1"
    );
    ensure!(
        a.clients <= 250,
        "--clients must be at most 250 (one 100.64.0.N address each)"
    );
    crate::common::install_crypto();
    let machine = Machine::detect();
    println!("{}", machine.render());
    let mut b = tempfile::Builder::new();
    b.prefix("tally-bench-audit-");
    let work = match &a.work_dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .context("cannot create a temporary directory (see --work-dir)")?;
    let pg = if a.postgres {
        eprintln!("starting a throwaway PostgreSQL cluster ...");
        Some(start_pg(a.pg_bin.clone(), a.work_dir.clone(), a.pg_conf.clone()).await?)
    } else {
        None
    };
    let result = bench(&a, work.path(), pg.as_ref()).await;
    let stopped = match pg {
        Some(pg) => stop_pg(pg, a.keep).await,
        None => Ok(()),
    };
    if a.keep {
        eprintln!("kept {}", work.keep().display());
    }
    let report = result?;
    stopped?;
    println!("\n{}", report.render(&a));
    Ok(())
}

async fn bench(
    a: &AuditArgs,
    work: &Path,
    pg: Option<&tally_testkit::postgres::PgCluster>,
) -> anyhow::Result<Report> {
    // Run 1: a fresh server, an empty log.
    let url = match pg {
        Some(pg) => Some(create_db(pg, "tally_empty").await?),
        None => None,
    };
    let server = BenchServer::start(&work.join("empty"), url).await?;
    let http = http_client(Duration::from_secs(300))?;
    let devices = register_devices(&http, &server, a.clients).await?;
    let before = count_events(&http, &server).await?;
    eprintln!(
        "mutations on an empty log ({before} events): {} clients for 1 s warm-up + {} s ...",
        a.clients, a.seconds
    );
    let empty = mutate(&server, &devices, a.seconds).await?;
    server.stop().await?;

    // Run 2: a second server; fill its log, mutate again, query.
    let url = match pg {
        Some(pg) => Some(create_db(pg, "tally").await?),
        None => None,
    };
    let data_dir = work.join("full");
    let server = BenchServer::start(&data_dir, url.clone()).await?;
    let result = async {
        let db = ControlDb::open(url.as_deref(), &data_dir)
            .await
            .context("cannot open a second handle on the control database")?;
        let backend = match pg {
            Some(pg) => format!(
                "PostgreSQL {} (fsync on, synchronous_commit on)",
                pg.version()
            ),
            None => {
                let v: String = sqlx::query_scalar("SELECT sqlite_version()")
                    .fetch_one(db.pool())
                    .await
                    .context("SELECT sqlite_version() failed")?;
                format!("SQLite {v} (WAL, synchronous=FULL)")
            }
        };
        eprintln!("backend: {backend}");
        let devices = register_devices(&http, &server, a.clients).await?;
        let tailnet = tailnet_id(&http, &server).await?;
        let fill = fill(&db, &tailnet, a).await?;
        let events = count_events(&http, &server).await?;
        let size = db_size(&db, &data_dir, pg.is_some()).await?;
        eprintln!(
            "mutations on a log of {events} events: {} clients for 1 s warm-up + {} s ...",
            a.clients, a.seconds
        );
        let full = mutate(&server, &devices, a.seconds).await?;
        let queries = query_all(&http, &server, a, &fill).await?;
        db.close().await;
        Ok::<_, anyhow::Error>(Report {
            backend,
            empty,
            full,
            fill,
            events,
            size,
            queries,
        })
    }
    .await;
    let stopped = server.stop().await;
    let report = result?;
    stopped?;
    Ok(report)
}

/// Creates a database in the cluster and returns its URL.
async fn create_db(pg: &tally_testkit::postgres::PgCluster, name: &str) -> anyhow::Result<String> {
    pg_sql(pg, &format!("CREATE DATABASE {name}")).await?;
    Ok(pg.url(name))
}

/// What the control database takes on disk: the SQLite file and its WAL,
/// or PostgreSQL's audit table with its indexes and the whole database.
async fn db_size(db: &ControlDb, data_dir: &Path, postgres: bool) -> anyhow::Result<String> {
    if postgres {
        let sizes: (i64, i64) = sqlx::query_as(
            "SELECT pg_total_relation_size('audit_events'), pg_database_size(current_database())",
        )
        .fetch_one(db.pool())
        .await
        .context("cannot read the database size")?;
        let size = |n: i64| fmt_bytes(u64::try_from(n).unwrap_or(0));
        return Ok(format!(
            "audit_events with its indexes {}, database {} (WAL not counted)",
            size(sizes.0),
            size(sizes.1)
        ));
    }
    let size = |f: &str| std::fs::metadata(data_dir.join(f)).map_or(0, |m| m.len());
    Ok(format!(
        "control.db {} + WAL {}",
        fmt_bytes(size("control.db")),
        fmt_bytes(size("control.db-wal"))
    ))
}

// ---------------------------------------------------------------------------
// The server, in process
// ---------------------------------------------------------------------------

/// A server running in this process.
struct BenchServer {
    base: String,
    key: String,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BenchServer {
    /// Binds a server on a free port with a fixed bootstrap key.
    async fn start(data_dir: &Path, control_db: Option<String>) -> anyhow::Result<Self> {
        let listen = "127.0.0.1:0".parse().context("bad listen address")?;
        let key = format!("bench-{:032x}", rand::random::<u128>());
        let mut config = tally_server::ServerConfig::new(listen, data_dir.to_path_buf());
        config.bootstrap_key = Some(key.clone());
        config.control_db = control_db;
        let server = tally_server::Server::bind(config)
            .await
            .context("cannot start the server")?;
        let base = format!("{}://{}", server.scheme(), server.local_addr()?);
        let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        eprintln!("server at {base}, data in {}", data_dir.display());
        Ok(Self {
            base,
            key,
            shutdown,
            task,
        })
    }

    /// Stops the server and waits for it.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await.context("the server task panicked")?
    }
}

/// Sends a request and returns the status and parsed JSON body.
async fn call(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the server"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("{what}: cannot read the answer"))?;
    if !status.is_success() {
        bail!("{what} failed: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON: {text}"))
}

/// Creates a reusable auth key and registers `n` devices with it (the
/// agent API, each with a fresh private ID); returns their IDs.
async fn register_devices(
    http: &reqwest::Client,
    s: &BenchServer,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let k = call(
        http.post(format!("{}/api/v2/tailnet/-/keys", s.base))
            .bearer_auth(&s.key)
            .json(&json!({
                "keyType": "auth",
                "description": "bench audit",
                "capabilities": { "devices": { "create": { "reusable": true } } },
            })),
        "creating an auth key",
    )
    .await?;
    let auth = k["key"]
        .as_str()
        .context("the created auth key has no \"key\"")?
        .to_owned();
    let mut ids = Vec::with_capacity(n);
    for i in 1..=n {
        let r = call(
            http.post(format!(
                "{}/api/v2/agent/{}",
                s.base,
                tally_proto::PrivateId::generate().to_hex()
            ))
            .bearer_auth(&auth)
            .json(&json!({
                "hostname": format!("bench-{i}"),
                "addresses": [format!("100.64.0.{i}")],
            })),
            "registering a device",
        )
        .await?;
        ids.push(
            r["node"]["id"]
                .as_str()
                .context("the registered device has no node.id")?
                .to_owned(),
        );
    }
    Ok(ids)
}

/// The caller's tailnet ID, from an audit page.
async fn tailnet_id(http: &reqwest::Client, s: &BenchServer) -> anyhow::Result<String> {
    let v = call(
        http.get(format!("{}/api/v2/tailnet/-/logging/configuration", s.base))
            .bearer_auth(&s.key)
            .query(&[("limit", "1")]),
        "reading the audit log",
    )
    .await?;
    Ok(v["tailnetId"]
        .as_str()
        .context("the audit page has no tailnetId")?
        .to_owned())
}

/// Events in the caller's tailnet: the newest event's `seq` (nothing has
/// been removed by retention on a fresh server).
async fn count_events(http: &reqwest::Client, s: &BenchServer) -> anyhow::Result<u64> {
    let v = call(
        http.get(format!("{}/api/v2/tailnet/-/logging/configuration", s.base))
            .bearer_auth(&s.key)
            .query(&[("limit", "1")]),
        "reading the audit log",
    )
    .await?;
    Ok(v["logs"][0]["seq"].as_u64().unwrap_or(0))
}

// ---------------------------------------------------------------------------
// Audited mutations through the API
// ---------------------------------------------------------------------------

/// What the mutation load measured.
struct MutationStats {
    seconds: f64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Latencies of the successful mutations, sorted, in microseconds.
    lat_us: Vec<u64>,
}

impl MutationStats {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// Each client renames its own device back and forth for 1 s of warm-up
/// and `seconds` of measurement, one request at a time on one connection.
async fn mutate(
    s: &BenchServer,
    devices: &[String],
    seconds: f64,
) -> anyhow::Result<MutationStats> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(devices.len());
    for (i, id) in devices.iter().enumerate() {
        let http = http_client(Duration::from_secs(60))?;
        let url = format!("{}/api/v2/device/{id}/name", s.base);
        let key = s.key.clone();
        let names = [format!("bench-{}-a", i + 1), format!("bench-{}-b", i + 1)];
        tasks.push(tokio::spawn(async move {
            let mut st = MutationStats {
                seconds,
                ok: 0,
                errors: 0,
                first_error: None,
                lat_us: Vec::new(),
            };
            let mut n = 0usize;
            while Instant::now() < end {
                let name = &names[n % 2];
                n += 1;
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "name": name }))
                    .send()
                    .await;
                let (ok, err) = match r {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        (status.is_success(), format!("{status}: {body}"))
                    }
                    Err(e) => (false, e.to_string()),
                };
                let t1 = Instant::now();
                if t1 < start || t1 > end {
                    continue;
                }
                if ok {
                    st.ok += 1;
                    st.lat_us.push((t1 - t0).as_micros() as u64);
                } else {
                    st.errors += 1;
                    st.first_error.get_or_insert(err);
                }
            }
            st
        }));
    }
    let mut all = MutationStats {
        seconds,
        ok: 0,
        errors: 0,
        first_error: None,
        lat_us: Vec::new(),
    };
    for t in tasks {
        let st = t.await.context("a mutation client panicked")?;
        all.ok += st.ok;
        all.errors += st.errors;
        all.lat_us.extend(st.lat_us);
        if all.first_error.is_none() {
            all.first_error = st.first_error;
        }
    }
    all.lat_us.sort_unstable();
    ensure!(
        all.ok > 0,
        "no mutation succeeded: {}",
        all.first_error.as_deref().unwrap_or("no answer")
    );
    Ok(all)
}

// ---------------------------------------------------------------------------
// Event generator and fill
// ---------------------------------------------------------------------------

/// A device of the generated tailnet.
struct Node {
    id: String,
    name: String,
    addr: String,
}

/// Deterministic generator of realistic audit events about a fixed set of
/// devices and users.
struct EventGen {
    rng: SmallRng,
    nodes: Vec<Node>,
    users: Vec<(String, String)>,
    actors: Vec<Actor>,
}

/// A random ID with a prefix, from the generator's RNG.
fn rid(rng: &mut SmallRng, prefix: &str) -> String {
    format!("{prefix}{:016x}", rng.random::<u64>())
}

impl EventGen {
    fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let nodes = (0..NODES)
            .map(|i| Node {
                id: rid(&mut rng, "n"),
                name: format!("node-{i:04}"),
                addr: format!("100.64.{}.{}", i / 250, i % 250 + 1),
            })
            .collect();
        let users = (0..TARGET_USERS)
            .map(|i| (rid(&mut rng, "u"), format!("person-{i:03}@example.com")))
            .collect();
        let actors = (0..ACTORS)
            .map(|i| Actor {
                id: rid(&mut rng, "u"),
                actor_type: "USER".into(),
                login_name: format!("user-{i}@example.com"),
                display_name: format!("User {i}"),
                tags: Vec::new(),
            })
            .collect();
        Self {
            rng,
            nodes,
            users,
            actors,
        }
    }

    /// The context of a change: a random actor, origin and address.
    fn context(&mut self) -> AuditContext {
        let actor = self.actors[self.rng.random_range(0..ACTORS)].clone();
        let origin = [Origin::Api, Origin::Cli, Origin::Console][self.rng.random_range(0..3)];
        AuditContext {
            actor,
            origin,
            remote: Some(format!(
                "100.64.{}.{}",
                self.rng.random_range(0..8),
                self.rng.random_range(1..255)
            )),
        }
    }

    fn action(&mut self) -> &'static str {
        let total: u32 = ACTIONS.iter().map(|a| a.1).sum();
        let mut r = self.rng.random_range(0..total);
        for (a, w) in ACTIONS {
            if r < *w {
                return a;
            }
            r -= w;
        }
        "UPDATE"
    }

    fn node_target(&mut self, property: &str) -> (Target, usize) {
        let i = self.rng.random_range(0..NODES);
        let n = &self.nodes[i];
        (
            Target {
                id: n.id.clone(),
                name: n.name.clone(),
                target_type: "NODE".into(),
                property: property.into(),
                is_ephemeral: false,
            },
            i,
        )
    }

    fn user_target(&mut self, property: &str) -> Target {
        let (id, login) = &self.users[self.rng.random_range(0..TARGET_USERS)];
        Target {
            id: id.clone(),
            name: login.clone(),
            target_type: "USER".into(),
            property: property.into(),
            is_ephemeral: false,
        }
    }

    fn key_target(&mut self, auth: bool) -> Target {
        Target {
            id: rid(&mut self.rng, "k"),
            name: if auth {
                "agent enrolment"
            } else {
                "automation"
            }
            .into(),
            target_type: if auth { "AUTH_KEY" } else { "API_KEY" }.into(),
            property: String::new(),
            is_ephemeral: false,
        }
    }

    fn tailnet_target(&self, property: &str) -> Target {
        Target {
            id: "tailnet".into(),
            name: "default".into(),
            target_type: "TAILNET".into(),
            property: property.into(),
            is_ephemeral: false,
        }
    }

    fn collection_target(&mut self, property: &str) -> Target {
        let c =
            ["tailnode", "network-flows", "app-web", "app-db", "ci"][self.rng.random_range(0..5)];
        Target {
            id: c.into(),
            name: c.into(),
            target_type: "COLLECTION".into(),
            property: property.into(),
            is_ephemeral: false,
        }
    }

    const ROLES: [&'static str; 6] = [
        "admin",
        "network-admin",
        "it-admin",
        "billing-admin",
        "auditor",
        "member",
    ];

    /// One event: an action with a plausible target and values.
    fn event(&mut self) -> EventSpec {
        let action = self.action();
        let pick = self.rng.random_range(0..100u32);
        match action {
            "CREATE" => match pick {
                0..40 => {
                    let (t, i) = self.node_target("");
                    let n = &self.nodes[i];
                    let v =
                        json!({ "name": n.name, "addresses": [n.addr], "tags": ["tag:server"] });
                    EventSpec::new(action, t).values(Value::Null, v)
                }
                40..55 => {
                    let t = self.user_target("");
                    let role = Self::ROLES[self.rng.random_range(0..Self::ROLES.len())];
                    EventSpec::new(action, t).values(Value::Null, json!({ "role": role }))
                }
                55..75 => {
                    let t = self.key_target(true);
                    EventSpec::new(action, t).values(
                        Value::Null,
                        json!({ "reusable": true, "ephemeral": false, "tags": ["tag:server"], "expirySeconds": 7_776_000 }),
                    )
                }
                75..90 => {
                    let t = self.key_target(false);
                    EventSpec::new(action, t)
                        .values(Value::Null, json!({ "expirySeconds": 7_776_000 }))
                }
                _ => {
                    let t = self.collection_target("");
                    EventSpec::new(action, t).values(Value::Null, json!({ "retentionDays": 30 }))
                }
            },
            "UPDATE" => match pick {
                0..35 => {
                    let (t, i) = self.node_target("name");
                    let old = self.nodes[i].name.clone();
                    EventSpec::new(action, t).values(json!(old), json!(format!("{old}-renamed")))
                }
                35..50 => {
                    let (t, _) = self.node_target("tags");
                    EventSpec::new(action, t)
                        .values(json!(["tag:server"]), json!(["tag:server", "tag:prod"]))
                }
                50..70 => {
                    let t = self.user_target("role");
                    let r = self.rng.random_range(0..Self::ROLES.len() - 1);
                    EventSpec::new(action, t)
                        .values(json!(Self::ROLES[r]), json!(Self::ROLES[r + 1]))
                }
                70..90 => {
                    let prop = [
                        "logsRetentionDays",
                        "flowsRetentionDays",
                        "auditRetentionDays",
                    ][self.rng.random_range(0..3)];
                    let t = self.tailnet_target(prop);
                    let old = self.rng.random_range(30..120);
                    EventSpec::new(action, t).values(json!(old), json!(old + 30))
                }
                _ => {
                    let t = self.collection_target("retentionDays");
                    EventSpec::new(action, t).values(json!(30), json!(90))
                }
            },
            "DELETE" => match pick {
                0..50 => {
                    let (t, i) = self.node_target("");
                    let n = &self.nodes[i];
                    let old = json!({ "name": n.name, "addresses": [n.addr], "tags": [] });
                    EventSpec::new(action, t).values(old, Value::Null)
                }
                50..70 => {
                    let t = self.user_target("");
                    EventSpec::new(action, t).values(json!({ "role": "member" }), Value::Null)
                }
                70..80 => {
                    let t = self.key_target(false);
                    EventSpec::new(action, t)
                }
                80..90 => {
                    let t = self.key_target(true);
                    EventSpec::new(action, t)
                }
                _ => {
                    let t = self.collection_target("");
                    EventSpec::new(action, t).details("collection and its entries removed")
                }
            },
            "ENABLE" | "DISABLE" => {
                let on = action == "ENABLE";
                if pick < 50 {
                    let t = self.tailnet_target("networkFlowLoggingOn");
                    EventSpec::new(action, t).values(json!(!on), json!(on))
                } else {
                    let t = self.user_target("status");
                    let (a, b) = if on {
                        ("suspended", "active")
                    } else {
                        ("active", "suspended")
                    };
                    EventSpec::new(action, t).values(json!(a), json!(b))
                }
            }
            _ => {
                let t = self.key_target(pick < 50);
                EventSpec::new(action, t)
                    .values(Value::Null, json!({ "revoked": true }))
                    .details("revoked by an administrator")
            }
        }
    }
}

/// What the fill did.
pub(crate) struct FillStats {
    pub(crate) events: u64,
    changes: u64,
    pub(crate) seconds: f64,
    /// Time of the first and last filled event (Unix ns).
    first: i64,
    last: i64,
    generator: EventGen,
}

/// Appends events to the tailnet until it holds `a.events`, in changes of
/// `a.per_change` events with one random actor each, times evenly spread
/// over the last 89 days.
pub(crate) async fn fill(
    db: &ControlDb,
    tailnet: &str,
    a: &AuditArgs,
) -> anyhow::Result<FillStats> {
    let existing: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE tailnet_id = $1")
            .bind(tailnet)
            .fetch_one(db.pool())
            .await
            .context("cannot count the audit events")?;
    let todo = a
        .events
        .saturating_sub(u64::try_from(existing).unwrap_or(0));
    let now = tally_proto::timefmt::now_nanos();
    let first = now - SPAN_DAYS * DAY_NS;
    let step = (SPAN_DAYS * DAY_NS) / i64::try_from(todo.max(1)).context("--events too large")?;
    // The tailnet was created a moment ago, and record_at keeps event times
    // from going backwards: move the chain's last time back so the history
    // can start 89 days ago. (Only the few events of the tailnet's creation
    // are then newer than the history that follows them.)
    sqlx::query("UPDATE tailnets SET audit_time = $1 WHERE id = $2")
        .bind(first)
        .bind(tailnet)
        .execute(db.pool())
        .await
        .context("cannot move the audit chain's time back")?;
    let mut generator = EventGen::new(a.seed);
    eprintln!(
        "filling the audit log: {todo} events in changes of {} over the last {SPAN_DAYS} days ...",
        a.per_change
    );
    let t = Instant::now();
    let mut done = 0u64;
    let mut changes = 0u64;
    let mut next_note = todo / 10;
    let bar = crate::common::progress(todo, "events", a.quiet);
    while done < todo {
        let ctx = generator.context();
        let mut change = db
            .begin_change(tailnet, &ctx)
            .await
            .context("begin_change failed")?;
        let n = (todo - done).min(a.per_change as u64);
        for _ in 0..n {
            let time = first + step * i64::try_from(done).unwrap_or(i64::MAX);
            change
                .record_at(generator.event(), time)
                .await
                .context("record_at failed")?;
            done += 1;
        }
        change.commit().await.context("commit failed")?;
        changes += 1;
        bar.set_position(done);
        if done >= next_note && done < todo && bar.is_hidden() {
            eprintln!(
                "  {done} events, {:.0} events/s",
                done as f64 / t.elapsed().as_secs_f64()
            );
            next_note += todo / 10;
        }
    }
    bar.finish_and_clear();
    let seconds = t.elapsed().as_secs_f64();
    Ok(FillStats {
        events: todo,
        changes,
        seconds,
        first,
        last: first + step * i64::try_from(todo.saturating_sub(1)).unwrap_or(0),
        generator,
    })
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

/// Latency and page sizes of one kind of query.
struct QueryStats {
    label: String,
    /// Sorted, microseconds.
    lat_us: Vec<u64>,
    returned: u64,
}

impl QueryStats {
    fn ms(&self, p: f64) -> f64 {
        percentile(&self.lat_us, p) as f64 / 1000.0
    }

    fn mean_returned(&self) -> f64 {
        self.returned as f64 / self.lat_us.len().max(1) as f64
    }
}

/// A random window of 1 to 7 days inside the filled span, as Unix seconds.
fn window(rng: &mut SmallRng, f: &FillStats) -> (i64, i64) {
    let len = rng.random_range(DAY_NS..=7 * DAY_NS);
    let latest = (f.last - len).max(f.first + 1);
    let start = rng.random_range(f.first..=latest);
    (start / 1_000_000_000, (start + len) / 1_000_000_000)
}

/// Runs every kind of query, one after the other.
async fn query_all(
    http: &reqwest::Client,
    s: &BenchServer,
    a: &AuditArgs,
    f: &FillStats,
) -> anyhow::Result<Vec<QueryStats>> {
    let mut rng = SmallRng::seed_from_u64(a.seed ^ 0x0a0d_17ed);
    let url = format!("{}/api/v2/tailnet/-/logging/configuration", s.base);
    let node_name = |rng: &mut SmallRng| f.generator.nodes[rng.random_range(0..NODES)].name.clone();
    let mut out = Vec::new();
    type Params = Vec<(&'static str, String)>;
    type MakeParams<'a> = Box<dyn Fn(&mut SmallRng) -> Params + 'a>;
    let kinds: Vec<(String, usize, MakeParams)> = vec![
        (
            "actor + action + 1-7 day window".into(),
            a.queries,
            Box::new(|rng: &mut SmallRng| {
                let (start, end) = window(rng, f);
                let action = ACTIONS[rng.random_range(0..ACTIONS.len())].0;
                vec![
                    (
                        "actor",
                        format!("user-{}@example.com", rng.random_range(0..ACTORS)),
                    ),
                    ("action", action.to_owned()),
                    ("start", start.to_string()),
                    ("end", end.to_string()),
                    ("limit", "100".into()),
                ]
            }),
        ),
        (
            "actor + 1-7 day window".into(),
            a.queries,
            Box::new(|rng: &mut SmallRng| {
                let (start, end) = window(rng, f);
                vec![
                    (
                        "actor",
                        format!("user-{}@example.com", rng.random_range(0..ACTORS)),
                    ),
                    ("start", start.to_string()),
                    ("end", end.to_string()),
                    ("limit", "100".into()),
                ]
            }),
        ),
        (
            "unfiltered, newest first".into(),
            a.queries,
            Box::new(|_| vec![("limit", "100".into())]),
        ),
        (
            "free text q=node-NNNN, whole log".into(),
            a.text_queries,
            Box::new(move |rng: &mut SmallRng| {
                vec![("q", node_name(rng)), ("limit", "100".into())]
            }),
        ),
        (
            "free text q=node-NNNN + 1-7 day window".into(),
            a.text_queries,
            Box::new(move |rng: &mut SmallRng| {
                let (start, end) = window(rng, f);
                vec![
                    ("q", node_name(rng)),
                    ("start", start.to_string()),
                    ("end", end.to_string()),
                    ("limit", "100".into()),
                ]
            }),
        ),
    ];
    for (label, n, params) in kinds {
        eprintln!("queries: {n} x {label} ...");
        let mut st = QueryStats {
            label,
            lat_us: Vec::with_capacity(n),
            returned: 0,
        };
        for _ in 0..n {
            let p = params(&mut rng);
            let t0 = Instant::now();
            let resp = http
                .get(&url)
                .bearer_auth(&s.key)
                .query(&p)
                .send()
                .await
                .context("audit query: cannot reach the server")?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .context("audit query: cannot read the answer")?;
            st.lat_us.push(t0.elapsed().as_micros() as u64);
            if !status.is_success() {
                bail!(
                    "audit query {p:?} failed: {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let v: Value =
                serde_json::from_slice(&body).context("audit query: the answer is not JSON")?;
            st.returned += v["logs"].as_array().map_or(0, Vec::len) as u64;
        }
        st.lat_us.sort_unstable();
        out.push(st);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// Everything measured.
struct Report {
    backend: String,
    empty: MutationStats,
    full: MutationStats,
    fill: FillStats,
    events: u64,
    size: String,
    queries: Vec<QueryStats>,
}

impl Report {
    fn render(&self, a: &AuditArgs) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== configuration audit log, {} ==", self.backend);
        let _ = writeln!(
            out,
            "audited mutations: POST /api/v2/device/{{id}}/name, {} clients (one device each), {} s after 1 s warm-up; one change + one audit event per commit",
            a.clients, a.seconds
        );
        let _ = writeln!(
            out,
            "  {:<28} {:>12} {:>9} {:>9} {:>9} {:>7}",
            "log", "mutations/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        for (label, m) in [
            ("empty".to_owned(), &self.empty),
            (
                format!("{} events", fmt_count(self.events as f64)),
                &self.full,
            ),
        ] {
            let ms = |p: f64| percentile(&m.lat_us, p) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  {:<28} {:>12} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                label,
                fmt_count(m.per_sec()),
                ms(50.0),
                ms(99.0),
                ms(100.0),
                m.errors
            );
            if let Some(e) = &m.first_error {
                let _ = writeln!(out, "    first error: {e}");
            }
        }
        let f = &self.fill;
        let _ = writeln!(
            out,
            "fill through the library: {} events in {} changes of up to {} ({} actors, times over the last {SPAN_DAYS} days): {:.1} s = {} events/s",
            fmt_count(f.events as f64),
            fmt_count(f.changes as f64),
            a.per_change,
            ACTORS,
            f.seconds,
            fmt_count(f.events as f64 / f.seconds.max(1e-9))
        );
        let _ = writeln!(
            out,
            "database: {} events in the tailnet; {}",
            fmt_count(self.events as f64),
            self.size
        );
        let _ = writeln!(
            out,
            "queries: GET /api/v2/tailnet/-/logging/configuration, limit=100, one client, sequential"
        );
        let _ = writeln!(
            out,
            "  {:<40} {:>6} {:>8} {:>8} {:>8} {:>8} {:>12}",
            "query", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "events/page"
        );
        for q in &self.queries {
            let _ = writeln!(
                out,
                "  {:<40} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12.1}",
                q.label,
                q.lat_us.len(),
                q.ms(50.0),
                q.ms(90.0),
                q.ms(99.0),
                q.ms(100.0),
                q.mean_returned()
            );
        }
        let _ = writeln!(
            out,
            "  (free text is a LIKE scan of the event JSON, newest first until the page is full: expect it to be much slower than the indexed filters)"
        );
        if let Some(q) = self.queries.first() {
            let p99 = q.ms(99.0);
            let _ = writeln!(
                out,
                "goal: filtered page (actor + action + time range) p99 < {GOAL_P99_MS} ms with {} events: {} ({p99:.2} ms)",
                fmt_count(self.events as f64),
                if p99 < GOAL_P99_MS { "MET" } else { "MISSED" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_cover_the_actions_and_targets() {
        let mut g = EventGen::new(7);
        let mut actions = std::collections::BTreeSet::new();
        let mut targets = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let e = g.event();
            actions.insert(e.action.clone());
            targets.insert(e.target.target_type.clone());
        }
        assert_eq!(actions.len(), ACTIONS.len(), "{actions:?}");
        for t in [
            "NODE",
            "USER",
            "API_KEY",
            "AUTH_KEY",
            "TAILNET",
            "COLLECTION",
        ] {
            assert!(targets.contains(t), "{t} missing from {targets:?}");
        }
        let ctx = g.context();
        assert!(ctx.actor.login_name.ends_with("@example.com"));
    }

    #[test]
    fn windows_stay_inside_the_filled_span() {
        let f = FillStats {
            events: 10,
            changes: 1,
            seconds: 1.0,
            first: 1_000 * DAY_NS,
            last: 1_089 * DAY_NS,
            generator: EventGen::new(1),
        };
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..1000 {
            let (s, e) = window(&mut rng, &f);
            let days = (e - s) as f64 / 86_400.0;
            assert!((1.0..=7.0 + 1e-6).contains(&days), "{days}");
            assert!(s >= f.first / 1_000_000_000 && e <= f.last / 1_000_000_000 + 1);
        }
    }
}
