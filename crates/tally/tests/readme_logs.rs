//! The README's log recipe, verbatim and at the defaults: an auth key from
//! the CLI, `tally agent --server URL --auth-key KEY --follow FILE` with no
//! other flag (default 2-s flush, default retries), lines appended to the
//! file and logged with `tally agent log`, then read with `tally logs query`
//! and `tally agent logs` as a user would.

mod common;

use common::{KEY, TestServer, bin};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tally(server: &str, cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        // The agent's state directory: root's default is /var/lib/tally-agent,
        // shared by every test; this is the variable the README names.
        .env("TALLY_AGENT_DATA_DIR", cwd.join("tally-agent"))
        .env("TALLY_SERVER", server)
        .env("TALLY_API_KEY", KEY)
        .env("TALLY_LOG", "warn")
        .output()
        .expect("run tally")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_log_recipe_ships_lines_at_the_default_timings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let node = dir.path().join("node");
    std::fs::create_dir_all(&node).expect("node dir");
    // `tally keys create --reusable --preauthorized`: the secret is on the
    // line after "key (shown only once ...)".
    let created = ok(&tally(
        &server.url,
        &node,
        &["keys", "create", "--reusable", "--preauthorized"],
    ));
    let auth = created
        .split_whitespace()
        .find(|w| w.starts_with("tally-auth-"))
        .unwrap_or_else(|| panic!("no auth key in {created}"))
        .to_owned();
    let log = node.join("app.log");
    std::fs::write(&log, "written before the agent started: not shipped\n").expect("log");
    // The README's command (its state directory by TALLY_AGENT_DATA_DIR,
    // as in `tally()`).
    let mut agent = Command::new(bin())
        .args([
            "agent",
            "--server",
            &server.url,
            "--auth-key",
            &auth,
            "--follow",
        ])
        .arg(&log)
        .current_dir(&node)
        .env("TALLY_AGENT_DATA_DIR", node.join("tally-agent"))
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agent");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(agent.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("ready line");
    assert!(ready.starts_with("tally agent ready"), "{ready}");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("append");
        writeln!(f, "disk almost full on /var").expect("write");
    }
    ok(&tally(
        &server.url,
        &node,
        &["agent", "log", "backup finished"],
    ));

    // At the default 2-s flush the lines arrive within seconds; poll.
    let deadline = Instant::now() + Duration::from_secs(60);
    let shipped = loop {
        let out = ok(&tally(
            &server.url,
            &node,
            &["logs", "query", "--since", "1h"],
        ));
        if out.contains("disk almost full on /var") && out.contains("backup finished") {
            break out;
        }
        assert!(Instant::now() < deadline, "not shipped within 60 s: {out}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(!shipped.contains("not shipped"), "{shipped}");
    // The node keeps its own copy, readable without the server.
    let local = ok(&tally(&server.url, &node, &["agent", "logs", "-n", "20"]));
    assert!(local.contains("backup finished"), "{local}");
    // The node registered: it is listed with its hostname.
    let nodes = ok(&tally(&server.url, &node, &["nodes", "list"]));
    assert!(nodes.lines().count() >= 2, "{nodes}");
    let _ = agent.kill();
    let _ = agent.wait();
}
