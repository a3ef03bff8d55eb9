//! `tally agent --syslog-listen`: a real rsyslogd on the node forwards
//! into the agent, over TCP (octet-counted RFC 5424) and UDP (RFC 3164,
//! rsyslog's default forwarding format); each message arrives in the
//! node's log once, with its facility, severity, host and app.

mod common;

use common::{Follow, TestAgent, TestServer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn rsyslogd() -> PathBuf {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("rsyslogd is not installed (apt-get install rsyslog; .ci/run does)")
}

/// rsyslogd reading a private unix socket (as `logger -u` writes to) and
/// forwarding everything to the agent on `port`, by TCP and UDP.
fn start_rsyslog(dir: &Path, port: u16) -> (Child, PathBuf) {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let sock = dir.join("log.sock");
    let conf = format!(
        r#"global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}")
if $msg contains "over-tcp" then action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
if $msg contains "over-udp" then action(type="omfwd" target="127.0.0.1" port="{port}" protocol="udp")
"#,
        work = work.display(),
        sock = sock.display(),
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(rsyslogd())
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
    while !sock.exists() {
        assert!(Instant::now() < deadline, "rsyslogd made no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, sock)
}

fn logger(sock: &Path, priority: &str, tag: &str, msg: &str) {
    let out = Command::new("logger")
        .arg("-u")
        .arg(sock)
        .args(["-p", priority, "-t", tag, msg])
        .output()
        .expect("run logger (bsdutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_into_the_agent_over_tcp_and_udp() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let port = common::readme::free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = TestAgent::start(
        &server.url,
        &dir.path().join("agent"),
        &["--syslog-listen", &listen],
    );
    let (mut rsyslog, sock) = start_rsyslog(dir.path(), port);
    let mut follow = Follow::open(&server.url, "tailnode").await;
    logger(
        &sock,
        "auth.err",
        "sshd",
        "over-tcp: Failed password for root",
    );
    let tcp = follow_until(&mut follow, "over-tcp").await;
    logger(&sock, "local3.info", "backup", "over-udp: backup finished");
    let udp = follow_until(&mut follow, "over-udp").await;

    assert_eq!(tcp["source"], "syslog");
    assert_eq!(tcp["text"], "over-tcp: Failed password for root");
    assert_eq!(tcp["syslog"]["protocol"], "rfc5424");
    assert_eq!(tcp["syslog"]["transport"], "tcp");
    assert_eq!(tcp["syslog"]["facility"], "auth");
    assert_eq!(tcp["syslog"]["severity"], "err");
    assert_eq!(tcp["syslog"]["appname"], "sshd");
    assert!(tcp["syslog"]["hostname"].is_string(), "{tcp}");

    assert_eq!(udp["syslog"]["protocol"], "rfc3164");
    assert_eq!(udp["syslog"]["transport"], "udp");
    assert_eq!(udp["syslog"]["facility"], "local3");
    assert_eq!(udp["syslog"]["severity"], "info");
    assert_eq!(udp["syslog"]["appname"], "backup");
    assert_eq!(udp["text"], "over-udp: backup finished");

    // A sender breaking the framing is cut off, with a note; others go on.
    use std::io::Write;
    let mut bad = std::net::TcpStream::connect(&listen).unwrap();
    bad.write_all(b"99999999999 x").unwrap();
    let note = follow.until_text("syslog sender").await;
    assert!(note.contains("cut off"), "{note}");
    logger(&sock, "auth.warning", "sshd", "over-tcp: still listening");
    follow_until(&mut follow, "over-tcp: still listening").await;

    let _ = Command::new("kill").arg(rsyslog.id().to_string()).status();
    let _ = rsyslog.wait();
    agent.stop();
}

/// The next entry of `follow` whose text contains `needle`.
async fn follow_until(follow: &mut Follow, needle: &str) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = follow.next().await;
            if e["text"].as_str().is_some_and(|t| t.contains(needle)) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no entry with {needle:?} within 30 s"))
}
