//! Without CAP_NET_RAW, `tally agent --flows` fails at start saying
//! exactly that and how to grant it, before it registers anything; the
//! start that can capture then registers the one node. Runs the agent as `nobody` (needs root to switch;
//! skipped with a notice otherwise unless `TALLY_REQUIRE_NETNS=1`).

mod common;

use common::{TestAgent, TestServer};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_cap_net_raw_explains_and_registers_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_ne!(
            std::env::var("TALLY_REQUIRE_NETNS").as_deref(),
            Ok("1"),
            "this test needs root to run the agent as another user"
        );
        eprintln!(
            "skipping agent_without_cap_net_raw_explains_and_registers_nothing: needs root (set TALLY_REQUIRE_NETNS=1 to make this a failure)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &["--agent-report-seconds", "1"]);
    let auth_key = common::reusable_auth_key(&server.url).await;
    common::set_flow_logging(&server.url, true).await;
    // A data directory `nobody` owns (the tempdir itself is root's 0700).
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    std::os::unix::fs::chown(&agent_dir, Some(65534), Some(65534)).unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let mut base = Command::new("setpriv");
    base.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        common::bin(),
    ]);
    let out = base
        .args(["agent", "--server", &server.url, "--data-dir"])
        .arg(&agent_dir)
        .args([
            "--auth-key",
            &auth_key,
            "--address",
            "100.64.0.9",
            "--flows",
            "--iface",
            "lo",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // It fails at start, saying why and what to do...
    assert!(!out.status.success(), "the agent ran without CAP_NET_RAW");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("CAP_NET_RAW"), "{text}");
    assert!(text.contains("setcap cap_net_raw+ep"), "{text}");
    assert!(text.contains("drop --flows"), "{text}");
    // ...before it made an identity or registered a node: the start that
    // works (here: as root) registers the one node.
    assert!(!agent_dir.join("private-id").exists());
    let devices = common::get_json(&format!("{}/api/v2/tailnet/-/devices", server.url)).await;
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(0),
        "{devices}"
    );
    let agent = TestAgent::start(
        &server.url,
        &agent_dir,
        &[
            "--auth-key",
            &auth_key,
            "--address",
            "100.64.0.9",
            "--flows",
            "--iface",
            "lo",
        ],
    );
    agent.wait_line("tally agent registered: node ", Duration::from_secs(30));
    let devices = common::get_json(&format!("{}/api/v2/tailnet/-/devices", server.url)).await;
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(1),
        "{devices}"
    );
    agent.stop();
}
