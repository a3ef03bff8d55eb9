//! Harness of the control-plane tests: a real server on a real socket with
//! its control database on SQLite (a file in a temp dir) or on a throwaway
//! PostgreSQL cluster (a fresh database per server).

#![allow(dead_code)]

pub mod log;

use reqwest::Method;
use serde_json::{Value, json};
use tally_server::control::ControlDb;
use tally_server::control::audit::AuditQuery;
use tally_server::{Server, ServerConfig};

/// The bootstrap (owner) key of every test server.
pub const OWNER_KEY: &str = "tally-test-owner-key-0123456789";

/// Where the control database lives.
pub enum Db<'a> {
    /// `control.db` in the data directory.
    Sqlite,
    /// A fresh database on this cluster.
    Postgres(&'a tally_testkit::postgres::PgCluster),
}

impl Db<'_> {
    /// For messages.
    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite => "SQLite",
            Db::Postgres(_) => "PostgreSQL",
        }
    }
}

/// A running server and a client.
pub struct Env {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The server's control database.
    pub control: ControlDb,
    /// The default tailnet's ID.
    pub tailnet: String,
    /// The server's catalog.
    pub catalog: std::sync::Arc<tally_server::control::catalog::Catalog>,
    /// The server's store (tests append records to it directly).
    pub store: std::sync::Arc<tally_store::Store>,
    /// The data directory.
    pub dir: tempfile::TempDir,
    /// The session recorder's address, when it is on.
    pub recorder: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts a server on `db`.
pub async fn start(db: &Db<'_>) -> Env {
    start_in(db, tempfile::tempdir().expect("temp dir")).await
}

/// Starts a server on `db` with the data directory `dir` (a restart when
/// it was used before).
pub async fn start_in(db: &Db<'_>, dir: tempfile::TempDir) -> Env {
    start_with(db, dir, |_| {}).await
}

/// Starts a server with settings changed by `tune`.
pub async fn start_with(
    db: &Db<'_>,
    dir: tempfile::TempDir,
    tune: impl FnOnce(&mut ServerConfig),
) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), dir.path().into());
    tune(&mut config);
    config.bootstrap_key = Some(OWNER_KEY.into());
    if let Db::Postgres(pg) = db {
        let name = format!("t{}", hex::encode(rand::random::<[u8; 6]>()));
        config.control_db = Some(pg.create_database(&name).expect("create database"));
    }
    let server = Server::bind(config).await.expect("server binds");
    let base = format!("http://{}", server.local_addr().expect("addr"));
    let recorder = server.recorder_addr();
    let control = server.control();
    let catalog = server.catalog();
    let store = server.store().expect("the embedded store");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let mut env = Env {
        base,
        http,
        control,
        catalog,
        store,
        tailnet: String::new(),
        dir,
        recorder,
        stop: Some(tx),
        task: Some(task),
    };
    let (s, v) = env
        .call(OWNER_KEY, Method::GET, "/api/v2/tailnets", None)
        .await;
    assert_eq!(s, 200, "{v}");
    env.tailnet = v["tailnets"][0]["id"]
        .as_str()
        .expect("tailnet id")
        .to_owned();
    env
}

impl Env {
    /// One request with an API key; returns the status and the JSON body
    /// (`Null` when the body is not JSON).
    pub async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Adopts the instance of `private` (hex) into the owner's `collection`,
    /// so that its uploads belong to the owner's tailnet.
    pub async fn adopt(&self, collection: &str, private: &str) {
        let public = tally_proto::PrivateId::parse(private)
            .expect("private ID")
            .public()
            .to_hex();
        let (s, v) = self
            .call(
                OWNER_KEY,
                Method::POST,
                "/instances",
                Some(serde_json::json!({ "collection": collection, "instances": [public] })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// A request with a raw body.
    pub async fn call_raw(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Every audit event of a tailnet with a sequence number above `after`, oldest first.
    pub async fn events_after(&self, tailnet: &str, after: i64) -> Vec<Value> {
        self.newest_events_after(tailnet, after, 1000).await
    }

    /// The few audit events of a tailnet after `after` (one call's worth:
    /// fewer than 50), oldest first.
    pub async fn last_events_after(&self, tailnet: &str, after: i64) -> Vec<Value> {
        let v = self.newest_events_after(tailnet, after, 50).await;
        assert!(v.len() < 50, "more events than one call makes");
        v
    }

    /// Of the newest `limit` audit events of a tailnet, those after `after`, oldest first.
    async fn newest_events_after(&self, tailnet: &str, after: i64, limit: i64) -> Vec<Value> {
        let page = self
            .control
            .audit_query(
                tailnet,
                &AuditQuery {
                    limit,
                    ..AuditQuery::default()
                },
            )
            .await
            .expect("audit query");
        let mut v: Vec<Value> = page
            .events
            .into_iter()
            .filter(|e| e["seq"].as_i64().expect("seq") > after)
            .collect();
        v.reverse();
        v
    }

    /// Stores a short recording of the default tailnet (as the recorder
    /// would) and waits until the index has it; returns its ID.
    pub async fn add_recording(&self, n: usize) -> String {
        let id = format!("rtest{n:06}");
        let header = r#"{"version":2,"width":80,"height":24,"srcNode":"alpha","sshUser":"root"}"#;
        let bodies = [
            json!({ "recording": id, "seq": 1, "offset": 0, "data": format!("{header}\n[0.5,\"o\",\"hi\"]\n") }),
            json!({ "recording": id, "end": true, "complete": true, "bytes": 0, "reason": "" }),
        ];
        let records = bodies
            .iter()
            .enumerate()
            .map(|(k, b)| tally_store::NewRecord {
                time: tally_proto::timefmt::now_nanos(),
                collection: "recordings".into(),
                owner: tally_store::Owner::tailnet(self.tailnet.clone()),
                instance: [0x7c; 32],
                identity: Some((9_000 + n as u32, k as u64 + 1)),
                client_time: None,
                kind: tally_store::kind::LOG,
                body: b.to_string().into_bytes(),
            })
            .collect();
        self.store.append(records).await.expect("append");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (s, _) = self
                .call(
                    OWNER_KEY,
                    Method::GET,
                    &format!("/api/v2/tailnet/-/recordings/{id}"),
                    None,
                )
                .await;
            if s == 200 {
                return id;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the recording was never indexed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Turns the default tailnet's flow logging on or off (as the owner).
    pub async fn set_flow_logging(&self, on: bool) {
        let (s, v) = self
            .call(
                OWNER_KEY,
                Method::PATCH,
                "/api/v2/tailnet/-/settings",
                Some(serde_json::json!({ "networkFlowLoggingOn": on })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// Raises an alert in the default tailnet (an API key made with
    /// `neverExpires`, which the built-in rule reports) and returns its ID once
    /// detection has stored it.
    pub async fn raise_alert(&self, n: usize) -> String {
        let (s, k) = self
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                Some(serde_json::json!({ "keyType": "api", "neverExpires": true, "description": format!("alert {n}") })),
            )
            .await;
        assert_eq!(s, 200, "{k}");
        let key_id = k["id"].as_str().expect("key id").to_owned();
        tally_testkit::wait::until(
            "the key's alert",
            std::time::Duration::from_secs(30),
            || async {
                let (s, v) = self
                    .call(
                        OWNER_KEY,
                        Method::GET,
                        "/api/v2/tailnet/-/alerts?rule=tally-key-without-expiry&limit=1000",
                        None,
                    )
                    .await;
                if s != 200 {
                    return Err(format!("{s} {v}"));
                }
                v["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| {
                        a["evidence"]["fields"]["target.name"].as_str()
                            == Some(format!("alert {n}").as_str())
                    })
                    .and_then(|a| a["id"].as_str().map(str::to_owned))
                    .ok_or_else(|| format!("no alert for key {key_id} yet: {v}"))
            },
        )
        .await
    }

    /// The newest sequence number of a tailnet's audit log.
    pub async fn head_seq(&self, tailnet: &str) -> i64 {
        let page = self
            .control
            .audit_query(
                tailnet,
                &AuditQuery {
                    limit: 1,
                    ..AuditQuery::default()
                },
            )
            .await
            .expect("audit query");
        page.events
            .first()
            .map_or(0, |e| e["seq"].as_i64().expect("seq"))
    }

    /// Creates a user with `role` and an API key for it; returns (user ID, key).
    pub async fn user_with_key(&self, login: &str, role: &str) -> (String, String) {
        let (s, u) = self
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/users",
                Some(json!({ "loginName": login, "role": role })),
            )
            .await;
        assert_eq!(s, 200, "create user {login}: {u}");
        let id = u["id"].as_str().expect("user id").to_owned();
        let (s, k) = self
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                // With an expiry: a key without one raises an alert
                // (tally-key-without-expiry) that tests counting alerts
                // would race with.
                Some(json!({ "keyType": "api", "userId": id, "description": login, "expirySeconds": 30 * 86_400 })),
            )
            .await;
        assert_eq!(s, 200, "create key for {login}: {k}");
        (id, k["key"].as_str().expect("key").to_owned())
    }

    /// Creates a reusable auth key (owner); returns its secret.
    pub async fn auth_key(&self, reusable: bool, tags: &[&str]) -> String {
        let (s, k) = self
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                Some(json!({
                    "capabilities": { "devices": { "create": { "reusable": reusable, "tags": tags } } },
                    "expirySeconds": 3600,
                    "description": "test nodes",
                })),
            )
            .await;
        assert_eq!(s, 200, "create auth key: {k}");
        k["key"].as_str().expect("key").to_owned()
    }

    /// Registers a new node (a fresh agent identity) with an auth key and
    /// an address of its own; returns its ID.
    pub async fn register(&self, auth_key: &str, hostname: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let address = format!("100.64.{}.{}", (n >> 8) & 0xff, n & 0xff);
        let private = tally_proto::PrivateId::generate().to_hex();
        let (s, v) = self
            .call(
                auth_key,
                Method::POST,
                &format!("/api/v2/agent/{private}"),
                Some(json!({ "hostname": hostname, "os": "linux", "addresses": [address] })),
            )
            .await;
        assert!(s == 201 || s == 200, "register {hostname}: {s} {v}");
        v["node"]["id"].as_str().expect("node id").to_owned()
    }

    /// The chain report of the verify endpoint for the owner's tailnet.
    pub async fn verify(&self) -> Value {
        let (s, v) = self
            .call(
                OWNER_KEY,
                Method::GET,
                "/api/v2/tailnet/-/logging/configuration/verify",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Stops the server, keeping its data directory for a restart.
    pub async fn stop_keep(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server ran");
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, tmp)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server ran");
        }
    }
}
