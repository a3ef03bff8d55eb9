//! Streaming the configuration audit log to a real rsyslog over TLS
//! (RFC 5424 with RFC 5425 framing), set with the CLI as the README says:
//! `tally stream set configuration --type syslog --url
//! syslog+tls://localhost:PORT --ca-cert ca.pem`.
//!
//! rsyslog (`imtcp` with the `gtls` stream driver) parses each message's
//! structured data with `mmpstrucdata` and writes MSGID, PRI, the parsed
//! structured data and MSG to a file, which the test reads: every audit
//! event made after the stream was set arrives once, in order, its
//! structured data naming the log type, position and action. The receiver
//! is then stopped: the stream's status says it cannot reach it, changes
//! made meanwhile arrive after it is back. A second destination without
//! the private CA shows a certificate error in its status and delivers
//! nothing.

mod common;

use common::TestServer;
use common::certs::make_certs;
use common::readme::{create_api_key as change, free_port, tally_async as cli};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running rsyslogd receiving RFC 5424 over TLS on `port`.
struct Rsyslog {
    child: Child,
    out: PathBuf,
}

fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Self {
        let bin = rsyslogd().expect(
            "rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls; .ci/run does)",
        );
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).expect("work dir");
        let out = dir.join("received.log");
        let d = dir.display();
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="1m"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/cert.pem"
       defaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
module(load="mmpstrucdata")
input(type="imtcp" port="{port}")
template(name="fields" type="string" string="%msgid%\t%pri%\t%$!rfc5424-sd%\t%msg%\n")
action(type="mmpstrucdata" sd_name.lowercase="off")
action(type="omfile" file="{out}" template="fields")
"#,
            work = work.display(),
            out = out.display(),
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("write rsyslog.conf");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rsyslogd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, out }
    }

    /// Stops rsyslogd (SIGTERM: it writes what it received, then exits).
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Every message written so far: (msgid, pri, structured data, msg).
    fn messages(&self) -> Vec<(String, u32, Value, Value)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.splitn(4, '\t').collect();
                assert_eq!(f.len(), 4, "a line rsyslog wrote: {l}");
                let sd = serde_json::from_str(f[2])
                    .unwrap_or_else(|e| panic!("structured data {:?}: {e}", f[2]));
                let msg = serde_json::from_str(f[3].trim())
                    .unwrap_or_else(|e| panic!("message {:?}: {e}", f[3]));
                (f[0].to_owned(), f[1].parse().expect("pri"), sd, msg)
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until rsyslog wrote the key creations described `want`, in
/// order (a batch sent twice may repeat); returns every message.
async fn await_keys(rs: &Rsyslog, want: &[&str]) -> Vec<(String, u32, Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = rs.messages();
        let mut seen: Vec<String> = Vec::new();
        for (_, _, _, msg) in &all {
            if msg["action"] == "CREATE"
                && let Some(d) = msg["target"]["name"].as_str()
                && seen.last().map(String::as_str) != Some(d)
                && want.contains(&d)
            {
                seen.push(d.to_owned());
            }
        }
        if seen.len() >= want.len() {
            let mut dedup = seen.clone();
            dedup.dedup();
            let order: Vec<&str> = dedup.iter().map(String::as_str).collect();
            assert_eq!(order, want, "order at the receiver");
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog got {seen:?}, not all of {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(url: &str, args: &[&str]) -> Value {
    let mut a = vec!["stream", "status", "configuration", "--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&cli(url, &a).await).expect("status json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_reaches_rsyslog_over_tls_and_survives_its_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let port = free_port();
    let mut rs = Rsyslog::start(dir.path(), port);
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let url = server.url.clone();
    let ca = dir.path().join("ca.pem");
    let dest = format!("syslog+tls://localhost:{port}");

    let out = cli(
        &url,
        &[
            "stream",
            "set",
            "configuration",
            "--type",
            "syslog",
            "--url",
            &dest,
            "--ca-cert",
            ca.to_str().expect("path"),
        ],
    )
    .await;
    assert!(out.contains("streaming configuration to syslog"), "{out}");
    let out = cli(&url, &["stream", "test", "configuration"]).await;
    assert!(out.contains("accepted the test event"), "{out}");

    change(&url, "syslog-1").await;
    change(&url, "syslog-2").await;
    let all = await_keys(&rs, &["syslog-1", "syslog-2"]).await;
    let mut last_position = 0;
    for (msgid, pri, sd, msg) in &all {
        assert_eq!(msgid, "configuration");
        assert_eq!(*pri, 13 * 8 + 6, "facility log audit, informational");
        let sd = &sd["tally@32473"];
        assert_eq!(sd["logType"], "configuration", "{sd}");
        if msg["tallyTest"] == true {
            continue;
        }
        assert_eq!(sd["action"], msg["action"], "{sd} {msg}");
        let position: u64 = sd["position"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("position");
        assert!(position > last_position, "positions in order");
        last_position = position;
    }

    // The receiver restarts: changes made while it is down arrive after.
    let s = status(&url, &[]).await;
    assert_eq!(s["lastError"], "", "{s}");
    assert_eq!(s["unencrypted"], false, "{s}");
    rs.stop();
    change(&url, "syslog-3").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&url, &[]).await;
        let e = s["lastError"].as_str().unwrap_or_default();
        if e.contains("cannot reach syslog receiver") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error while rsyslog is down: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    change(&url, "syslog-4").await;
    let rs = Rsyslog::start(dir.path(), port);
    await_keys(&rs, &["syslog-1", "syslog-2", "syslog-3", "syslog-4"]).await;

    // A destination whose CA is not given: a clear certificate error.
    let out = cli(
        &url,
        &[
            "stream",
            "add",
            "configuration",
            "--type",
            "syslog",
            "--url",
            &dest,
        ],
    )
    .await;
    let id = out
        .split_once(" as ")
        .and_then(|(_, rest)| rest.split(';').next())
        .expect("the new stream's id")
        .to_owned();
    change(&url, "syslog-5").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&url, &["--id", &id]).await;
        let e = s["lastError"].as_str().unwrap_or_default().to_owned();
        if !e.is_empty() {
            assert!(
                e.contains("TLS handshake") && e.contains("certificate"),
                "{e}"
            );
            assert_eq!(s["numEntriesSent"], 0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no certificate error: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli(&url, &["stream", "list"]).await;
    assert!(out.contains(&id) && out.contains("syslog"), "{out}");
}
