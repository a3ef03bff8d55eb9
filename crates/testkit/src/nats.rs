//! NATS servers with JetStream for tests and benchmarks: Debian's
//! `nats-server`, alone or as a cluster of several on one machine, each
//! with its own store directory and free ports, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to `1` to make a missing `nats-server` a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "TALLY_REQUIRE_NATS";

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// `nats-server` is not on `PATH`.
    #[error("nats-server not found on PATH: install it (Debian: apt-get install nats-server)")]
    NotInstalled,
    /// It did not start or did not listen.
    #[error("{0}")]
    Start(String),
}

/// One `nats-server` process.
pub struct NatsServer {
    child: Option<Child>,
    config: PathBuf,
    /// The client port.
    pub port: u16,
    /// The monitoring port (`/jsz`).
    pub monitor_port: u16,
    /// Its name in the cluster.
    pub name: String,
}

/// A cluster of servers (or just one), stopped on drop.
pub struct NatsCluster {
    /// The servers, in start order.
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> Result<u16, NatsError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| NatsError::Start(format!("finding a free port: {e}")))
}

fn find_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    fn spawn(&mut self) -> Result<(), NatsError> {
        let bin = find_binary().ok_or(NatsError::NotInstalled)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| NatsError::Start(format!("starting nats-server: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(NatsError::Start(format!(
                    "nats-server {} exited at start ({status}); its configuration: {}",
                    self.name,
                    self.config.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(NatsError::Start(format!(
                    "nats-server {} did not listen on {} within 20 s",
                    self.name, self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The process ID of the running `nats-server` (`None` once killed),
    /// for benchmarks that read its CPU and memory from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL (a crash: no goodbye to the cluster).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) -> Result<(), NatsError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl NatsCluster {
    /// Starts `n` servers with JetStream (`n > 1`: routed into one
    /// cluster) in a temporary directory under `base` (system temp when
    /// `None`).
    pub fn start(n: usize, base: Option<&Path>) -> Result<Self, NatsError> {
        find_binary().ok_or(NatsError::NotInstalled)?;
        let dir = match base {
            Some(b) => tempfile::tempdir_in(b),
            None => tempfile::tempdir(),
        }
        .map_err(|e| NatsError::Start(format!("temporary directory: {e}")))?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c, _)| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, cport, mport)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let mut conf = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{mport}\"\njetstream {{ store_dir: {:?} }}\n",
                store.display().to_string()
            );
            if n > 1 {
                conf.push_str(&format!(
                    "cluster {{ name: tally, listen: \"127.0.0.1:{cport}\", routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, conf)
                .map_err(|e| NatsError::Start(format!("writing {}: {e}", config.display())))?;
            let mut s = NatsServer {
                child: None,
                config,
                port: *port,
                monitor_port: *mport,
                name,
            };
            s.spawn()?;
            servers.push(s);
        }
        Ok(Self { servers, _dir: dir })
    }

    /// Stream `stream`'s details from `/jsz` (its `state`: `messages`,
    /// `first_seq`, `last_seq`; its `cluster`: `leader`), asked of the
    /// first server that answers.
    pub fn stream_detail(&self, stream: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        for s in &self.servers {
            let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", s.monitor_port)) else {
                continue;
            };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let req = "GET /jsz?streams=true HTTP/1.0\r\nHost: localhost\r\n\r\n";
            let mut body = String::new();
            if c.write_all(req.as_bytes()).is_err() || c.read_to_string(&mut body).is_err() {
                continue;
            }
            let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                continue;
            };
            let detail = v["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|d| d["name"] == stream)
                .cloned();
            if detail.is_some() {
                return detail;
            }
        }
        None
    }

    /// The index in [`NatsCluster::servers`] of the server that leads
    /// stream `stream`.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let detail = self.stream_detail(stream)?;
        let leader = detail["cluster"]["leader"].as_str()?;
        self.servers.iter().position(|s| s.name == leader)
    }

    /// Every server's URL, comma-separated (what `--log nats://...` takes).
    pub fn urls(&self) -> String {
        let v: Vec<String> = self.servers.iter().map(NatsServer::url).collect();
        v.join(",")
    }
}

/// A cluster for a test, or `None` (with a note) when `nats-server` is
/// not installed, unless `TALLY_REQUIRE_NATS=1`, which makes that a panic.
pub fn for_tests(test: &str, n: usize) -> Option<NatsCluster> {
    match NatsCluster::start(n, None) {
        Ok(c) => Some(c),
        Err(NatsError::NotInstalled) if std::env::var(REQUIRE_ENV).as_deref() != Ok("1") => {
            eprintln!(
                "skipping {test}: nats-server not installed (apt-get install nats-server; set {REQUIRE_ENV}=1 to make this a failure)"
            );
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}
