//! `tally rules` and `tally alerts` against a real server, with the
//! README's environment (`TALLY_SERVER`, `TALLY_API_KEY`): a rule file
//! added, listed, shown, disabled and deleted; a bad file refused with its
//! line and exit status 1; a test run over stored data; `tally alerts tail`
//! printing an alert as it is raised, and `list`/`ack`.

mod common;

use common::readme::tally;
use common::{KEY, TestServer, bin};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const RULE: &str = "title: Keys made by anyone
id: own-keys
logsource:
    product: tally
    service: audit
detection:
    selection:
        action: CREATE
        target.type: API_KEY
    condition: selection
level: low
tally.suppress: 0s
";

#[test]
fn rules_and_alerts_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let url = server.url.clone();
    let file = dir.path().join("own-keys.yml");
    std::fs::write(&file, RULE).expect("write rule");
    let file = file.to_str().expect("path");

    let out = tally(&url, &["rules", "add", file]);
    assert!(out.contains("added own-keys"), "{out}");
    let out = tally(&url, &["rules", "list"]);
    assert!(
        out.contains("own-keys") && out.contains("tally-port-scan"),
        "{out}"
    );
    let out = tally(&url, &["rules", "show", "own-keys"]);
    assert!(out.contains("target.type: API_KEY"), "{out}");

    // A bad file: exit 1, the line and the problem.
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, RULE.replace("target.type", "target.colour")).expect("write");
    let out = Command::new(bin())
        .args(["rules", "add", bad.to_str().expect("path")])
        .env("TALLY_SERVER", &url)
        .env("TALLY_API_KEY", KEY)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 9") && err.contains("target.colour"),
        "{err}"
    );

    // Follow alerts, then make one: the tail prints it.
    let mut follow = Command::new(bin())
        .args(["alerts", "tail"])
        .env("TALLY_SERVER", &url)
        .env("TALLY_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // The tail's stream starts with records arriving from now on; a key
    // made after it connected is in it. Keys are made until the tail
    // prints one (the stream may still be connecting for the first).
    let mut got = None;
    for n in 0..20 {
        tally(
            &url,
            &[
                "keys",
                "create",
                "--type",
                "api",
                "--description",
                &format!("cli {n}"),
            ],
        );
        if let Ok(l) = lines.recv_timeout(Duration::from_secs(3)) {
            got = Some(l);
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let line = got.expect("the tail printed no alert");
    assert!(
        line.contains("Keys made by anyone") || line.contains("API key created without expiry"),
        "{line}"
    );

    let out = tally(&url, &["alerts", "list", "--rule", "own-keys"]);
    assert!(out.contains("Keys made by anyone"), "{out}");
    let id = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .expect("an alert row")
        .to_owned();
    let out = tally(&url, &["alerts", "ack", &id, "--note", "mine"]);
    assert!(out.contains("acknowledged"), "{out}");

    // A test run sees the stored key creations; nothing is stored by it.
    let out = tally(&url, &["rules", "test", file, "--since", "1h"]);
    assert!(out.contains("alert(s) over"), "{out}");
    assert!(!out.starts_with("0 alert"), "{out}");

    let out = tally(&url, &["rules", "disable", "tally-port-scan"]);
    assert!(out.contains("disabled tally-port-scan"), "{out}");
    let out = tally(&url, &["rules", "list"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("tally-port-scan "))
        .expect("port-scan row");
    assert!(row.contains(" no "), "{row}");
    let out = tally(&url, &["rules", "delete", "own-keys"]);
    assert!(out.contains("deleted own-keys"), "{out}");
}
