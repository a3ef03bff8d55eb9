//! Progress bars of long commands (`tally reconcile replay` here): drawn
//! on stderr when it is a terminal (under `script`'s pseudo-terminal),
//! not with `--quiet`, and never into piped output.

mod common;

use common::TestServer;
use std::path::Path;
use std::process::Command;

/// Runs `tally ARGS` under `script`, its stdout to `out`; returns what the
/// terminal saw.
fn on_terminal(args: &str, out: &Path) -> String {
    let dir = out.parent().unwrap();
    let transcript = dir.join("terminal");
    let cmd = format!("{} {args} > {}", common::bin(), out.display());
    let status = Command::new("script")
        .args(["-qefc", &cmd])
        .arg(&transcript)
        .env("TALLY_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script (util-linux)");
    assert!(status.success(), "{cmd}: {status}");
    String::from_utf8_lossy(&std::fs::read(&transcript).unwrap()).into_owned()
}

#[test]
fn replay_draws_a_bar_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = TestServer::start(&data, &[]);
    server.stop();
    let replay = format!("reconcile replay --data-dir {}", data.display());

    let out = dir.path().join("out");
    let seen = on_terminal(&replay, &out);
    assert!(
        seen.contains("replaying"),
        "no bar on the terminal: {seen:?}"
    );
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(stdout.contains("findings from"), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "the bar stays off stdout: {stdout:?}"
    );

    let seen = on_terminal(&format!("{replay} --quiet"), &out);
    assert!(
        !seen.contains("replaying"),
        "--quiet draws no bar: {seen:?}"
    );

    // Piped: no bar, no escape code, the same answer.
    let piped = Command::new(common::bin())
        .args(["reconcile", "replay", "--data-dir"])
        .arg(&data)
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains('\x1b') && !stderr.contains("replaying"),
        "{stderr:?}"
    );
    assert_eq!(String::from_utf8_lossy(&piped.stdout), stdout);
}
