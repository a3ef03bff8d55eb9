//! The rough edges a new operator met, each as a user meets it: the
//! command, what it prints, its exit status.

mod common;

use common::certs::make_certs;
use common::{KEY, TestServer, bin};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn tally(server: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TALLY_SERVER", server)
        .env("TALLY_API_KEY", KEY)
        .env("TALLY_LOG", "warn")
        .env_remove("TALLY_CA_CERT")
        .output()
        .expect("run tally")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tally server` as the README starts it (no TALLY_BOOTSTRAP_KEY): its
/// stdout lines until the blank line after the key, or its exit.
fn start_plain(data_dir: &std::path::Path, listen: &str) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(bin())
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env_remove("TALLY_BOOTSTRAP_KEY")
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally server");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
    {
        let done = line.starts_with("lost it?");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

#[test]
fn a_first_start_on_a_busy_port_keeps_the_bootstrap_key_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let (mut child, lines) = start_plain(&data, &busy_addr);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(lines.is_empty(), "{lines:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(&busy_addr), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    // The next start, on a free port, makes the key and prints it.
    let (mut child, lines) = start_plain(&data, "127.0.0.1:0");
    let key_line = lines
        .iter()
        .position(|l| l.starts_with("bootstrap admin API key"))
        .unwrap_or_else(|| panic!("no key printed: {lines:?}"));
    let key = lines[key_line + 1].trim().to_owned();
    assert!(key.starts_with("tally-"), "{key}");
    let url = lines[0].strip_prefix("tally server listening on ").unwrap();
    let out = Command::new(bin())
        .args(["keys", "list"])
        .env("TALLY_SERVER", url)
        .env("TALLY_API_KEY", &key)
        .output()
        .unwrap();
    ok(&out);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tally server reset-admin-key")),
        "{lines:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = TestServer::start(&data, &[]);
    let out = Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("TALLY_BOOTSTRAP_KEY", KEY)
        .output()
        .unwrap();
    let text = err(&out);
    assert!(
        text.contains(&format!("process {}", first.child.id())),
        "{text}"
    );
    assert!(text.contains("--data-dir"), "{text}");
}

#[test]
fn reset_admin_key_prints_a_working_key_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &[]);
    // While the server runs, as the README says.
    let out = Command::new(bin())
        .args(["server", "reset-admin-key", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = ok(&out);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("tally-api-"))
        .unwrap_or_else(|| panic!("no key in {text}"))
        .to_owned();
    let out = Command::new(bin())
        .args(["audit", "list", "--json"])
        .env("TALLY_SERVER", &server.url)
        .env("TALLY_API_KEY", &key)
        .output()
        .unwrap();
    let events: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let found = events["logs"]
        .as_array()
        .or_else(|| events.as_array())
        .into_iter()
        .flatten()
        .any(|e| {
            e["action"] == "CREATE"
                && e["target"]["type"] == "API_KEY"
                && e.to_string().contains("reset-admin-key")
        });
    assert!(found, "{events}");
    // A data directory that never held a server says what to do.
    let out = Command::new(bin())
        .args(["server", "reset-admin-key", "--data-dir"])
        .arg(dir.path().join("nothing"))
        .output()
        .unwrap();
    let text = err(&out);
    assert!(text.contains("start `tally server"), "{text}");
}

#[test]
fn keys_for_another_user_expire_by_default_and_show_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let url = &server.url;
    ok(&tally(
        url,
        &["users", "create", "ops@example.com", "--role", "admin"],
    ));
    let created = ok(&tally(
        url,
        &[
            "keys",
            "create",
            "--type",
            "api",
            "--user",
            "ops@example.com",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    let secret = v["key"].as_str().unwrap().to_owned();
    // 90 days by default.
    let expires = tally_proto::timefmt::parse_rfc3339(v["expires"].as_str().unwrap()).unwrap();
    let days = (expires - tally_proto::timefmt::now_nanos()) / 86_400_000_000_000;
    assert!((89..=90).contains(&days), "{v}");
    // It acts as that user.
    let out = Command::new(bin())
        .args(["keys", "list"])
        .env("TALLY_SERVER", url)
        .env("TALLY_API_KEY", &secret)
        .output()
        .unwrap();
    let listed = ok(&out);
    assert!(listed.contains("USER"), "{listed}");
    assert!(listed.contains("ops@example.com"), "{listed}");
    // `never`, for API keys only.
    let never = ok(&tally(
        url,
        &[
            "keys", "create", "--type", "api", "--expiry", "never", "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&never).unwrap();
    assert!(v.get("expires").is_none(), "{v}");
    let text = err(&tally(url, &["keys", "create", "--expiry", "never"]));
    assert!(text.contains("auth keys always expire"), "{text}");
    let text = err(&tally(
        url,
        &[
            "keys",
            "create",
            "--type",
            "api",
            "--user",
            "nobody@example.com",
        ],
    ));
    assert!(text.contains("no user \"nobody@example.com\""), "{text}");
}

#[test]
fn a_server_url_without_a_scheme_is_named() {
    let out = tally("127.0.0.1:8080", &["keys", "list"]);
    let text = err(&out);
    assert!(text.contains("has no scheme"), "{text}");
    assert!(text.contains("http://127.0.0.1:8080"), "{text}");
    let out = tally("ftp://127.0.0.1", &["keys", "list"]);
    assert!(err(&out).contains("http:// or https://"));
}

#[test]
fn the_cli_trusts_a_private_ca_when_told_and_says_why_it_did_not() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca = dir.path().join("ca.pem");
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = &server.url;
    let text = err(&tally(url, &["keys", "list"]));
    assert!(text.contains("CA this client does not trust"), "{text}");
    assert!(text.contains("--ca-cert"), "{text}");
    ok(&tally(
        url,
        &["keys", "list", "--ca-cert", ca.to_str().unwrap()],
    ));
    let out = Command::new(bin())
        .args(["keys", "list"])
        .env("TALLY_SERVER", url)
        .env("TALLY_API_KEY", KEY)
        .env("TALLY_CA_CERT", &ca)
        .output()
        .unwrap();
    ok(&out);
    // Plain http to a TLS port says so.
    let plain = url.replace("https://", "http://");
    let text = err(&tally(&plain, &["keys", "list"]));
    assert!(
        text.contains("cannot reach") || text.contains("TLS"),
        "{text}"
    );
}

#[test]
fn nodes_sharing_a_hostname_get_distinct_names_and_follow_a_new_hostname() {
    use common::TestAgent;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--agent-report-seconds", "1"]);
    let url = &server.url;
    let names = || -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&tally(url, &["nodes", "list", "--json"]))).unwrap();
        let mut names: Vec<String> = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let first_dir = dir.path().join("a");
    let first = TestAgent::start(url, &first_dir, &["--hostname", "web.lan"]);
    first.wait_line(
        "tally agent registered: node ",
        std::time::Duration::from_secs(30),
    );
    let second = TestAgent::start(url, &dir.path().join("b"), &["--hostname", "web.lan"]);
    second.wait_line(
        "tally agent registered: node ",
        std::time::Duration::from_secs(30),
    );
    assert_eq!(names(), ["web", "web-1"]);
    // An admin cannot give a second node a name that is taken.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&tally(url, &["nodes", "list", "--json"]))).unwrap();
    let second_id = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "web-1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = err(&tally(url, &["nodes", "rename", &second_id, "web"]));
    assert!(text.contains("already named \"web\""), "{text}");
    // The first agent comes back with another hostname: its node follows.
    first.stop();
    let _again = TestAgent::start(url, &first_dir, &["--hostname", "db.lan"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while names() != ["db", "web-1"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", names());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let audit = ok(&tally(url, &["audit", "list", "--json"]));
    assert!(
        audit.contains("renamed after the hostname its agent reported"),
        "{audit}"
    );
    second.stop();
}
