//! `tally server --config FILE` / `tally agent --config FILE`: settings
//! from TOML, flags and environment variables winning, `--print-config`
//! saying where each came from, and clear errors for a bad file.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn a_server_runs_from_its_file_and_says_where_each_setting_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::readme::free_port();
    let data = dir.path().join("data");
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = {:?}\nregistered_only = true\nrecorder-allow = [\"10.0.0.0/8\", \"100.64.0.0/10\"]\ncontrol-db = \"postgres://tally:secret@db/tally\"\nretention-days = 9\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["server", "--config"])
        .arg(&file)
        .args(["--retention-days", "7", "--print-config"])
        .env("TALLY_UNCLAIMED_BUDGET_MB", "5")
        .env_remove("TALLY_LISTEN")
        .env_remove("TALLY_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in {report}"))
            .to_owned()
    };
    let from_file = format!("# file {}", file.display());
    assert!(
        line("listen").contains(&format!("127.0.0.1:{port}")),
        "{report}"
    );
    assert!(line("listen").ends_with(&from_file), "{report}");
    assert!(
        line("registered-only").starts_with("registered-only = true"),
        "{report}"
    );
    assert!(line("recorder-allow").contains("100.64.0.0/10"), "{report}");
    // The command line beats the file, the environment beats the default.
    assert!(
        line("retention-days").contains("\"7\"")
            && line("retention-days").ends_with("# command line"),
        "{report}"
    );
    assert!(
        line("unclaimed-budget-mb").ends_with("# environment TALLY_UNCLAIMED_BUDGET_MB"),
        "{report}"
    );
    assert!(line("unadopted-cap-mb").ends_with("# default"), "{report}");
    // A secret is never printed.
    assert!(!report.contains("secret"), "{report}");
    assert!(line("control-db").contains("(set, hidden)"), "{report}");

    // And the server runs with it: its port and data directory from the file.
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(common::bin())
        .args(["server", "--config"])
        .arg(&file)
        .env("TALLY_BOOTSTRAP_KEY", common::KEY)
        .env_remove("TALLY_LISTEN")
        .env_remove("TALLY_DATA_DIR")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first.trim(),
        format!("tally server listening on http://127.0.0.1:{port}")
    );
    assert!(data.join("control.db").exists());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_file_is_named_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let run = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(common::bin())
            .args(["agent", "--config"])
            .arg(&file)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run("folow = [\"/var/log/syslog\"]\n");
    assert!(
        e.contains("unknown setting \"folow\"") && e.contains("tally agent --help"),
        "{e}"
    );
    let e = run("follow = [\n");
    assert!(e.contains("is not valid TOML"), "{e}");
    // A value is only ever a value, never another flag.
    std::fs::write(&file, "collection = \"--flows\"\n").unwrap();
    let out = Command::new(common::bin())
        .args(["agent", "--config"])
        .arg(&file)
        .arg("--print-config")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("collection = \"--flows\""), "{report}");
    assert!(report.contains("flows = false"), "{report}");
    let e = run("flows = \"yes\"\n");
    assert!(e.contains("flows is a switch"), "{e}");
    let missing = Command::new(common::bin())
        .args([
            "agent",
            "--config",
            "/nonexistent/agent.toml",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read the configuration file")
    );
    // A value clap refuses names the flag and the file.
    std::fs::write(&file, "flow-interval = \"soon\"\n").unwrap();
    let out = Command::new(common::bin())
        .args(["agent", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--flow-interval") && e.contains(&file.display().to_string()),
        "{e}"
    );
}
