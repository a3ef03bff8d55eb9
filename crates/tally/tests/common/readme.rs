//! The README's agent and CLI, exactly as a user runs them: `tally agent
//! --server URL --auth-key KEY --flows --iface eth0` in a network namespace
//! (plus `--hostname`, as the namespaces share one hostname) and the CLI
//! with `TALLY_SERVER` and `TALLY_API_KEY`. Shared by the README tests.

use super::{KEY, bin};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_testkit::netns::Lab;

/// Runs the CLI with the README's environment (`TALLY_SERVER`,
/// `TALLY_API_KEY`); returns stdout, failing on a non-zero exit.
pub fn tally(url: &str, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env("TALLY_SERVER", url)
        .env("TALLY_API_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .expect("run tally");
    assert!(
        out.status.success(),
        "tally {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`tally`] off the async runtime.
pub async fn tally_async(url: &str, args: &[&str]) -> String {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        tally(&url, &a)
    })
    .await
    .expect("the CLI ran")
}

/// One audit event: `tally keys create` of an API key described `d`
/// (expiring in 30 days, so that no detection rule fires).
pub async fn create_api_key(url: &str, d: &str) {
    tally_async(
        url,
        &[
            "keys",
            "create",
            "--type",
            "api",
            "--description",
            d,
            "--expiry",
            "30d",
        ],
    )
    .await;
}

/// A free TCP port on 127.0.0.1 (for a peer that takes a port number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An agent started exactly as the README says.
pub struct Agent {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start(lab: &Lab, i: usize, dir: &std::path::Path, server: &str, key: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let hostname = format!("host{i}");
        let mut child = lab
            .command(i, bin())
            .args([
                "agent",
                "--server",
                server,
                "--auth-key",
                key,
                "--flows",
                "--iface",
                "eth0",
                // Only because the namespaces share one hostname.
                "--hostname",
                &hostname,
            ])
            .current_dir(dir)
            // Root's default state directory, /var/lib/tally-agent, would be
            // shared by every namespace's agent: one each, as the README's
            // TALLY_AGENT_DATA_DIR allows.
            .env("TALLY_AGENT_DATA_DIR", dir.join("tally-agent"))
            .env_remove("TALLY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally agent");
        let (tx, stdout) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = BufReader::new(child.stderr.take().unwrap());
        let lines = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_line(&self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(e) => panic!(
                    "no line {prefix:?} from the agent ({e}); its log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Waits until the agent's log (stderr) has a line containing `text`.
    pub async fn wait_log(&self, text: &str, deadline: Instant) {
        while !self.stderr.lock().unwrap().iter().any(|l| l.contains(text)) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the agent's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's first steps before agents start: flow logging on, then a
/// reusable, preauthorized auth key (`tally keys create`); returns the key.
pub fn flow_logging_and_auth_key(url: &str) -> String {
    tally(url, &["settings", "set", "--flow-logging", "on"]);
    let out = tally(url, &["keys", "create", "--reusable", "--preauthorized"]);
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("tally-auth-"))
        .unwrap_or_else(|| panic!("no auth key in {out}"))
        .to_owned()
}
