//! The command-line client against a real server: verbs work, and errors say
//! what to do.

mod common;

use common::{KEY, TestServer, bin};
use std::process::{Command, Output};

fn tally(server: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("TALLY_SERVER", server)
        .env_remove("TALLY_API_KEY");
    if let Some(k) = key {
        cmd.env("TALLY_API_KEY", k);
    }
    cmd.output().expect("run tally")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[tokio::test]
async fn collections_adoption_and_queries_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.as_str();
    ok(&tally(
        url,
        Some(KEY),
        &[
            "collections",
            "create",
            "app.example.com",
            "--retention-days",
            "7",
        ],
    ));
    // Adopted before it uploads: its entries are then the tailnet's.
    let id = tally_proto::PrivateId::generate();
    let public = id.public().to_hex();
    let out = ok(&tally(
        url,
        Some(KEY),
        &[
            "instances",
            "adopt",
            "--collection",
            "app.example.com",
            &public,
        ],
    ));
    assert!(out.contains("adopted 1 new instance"), "{out}");
    let c = common::http();
    for text in ["disk full on /var", "all good", "disk almost full"] {
        let r = c
            .post(format!("{url}/c/app.example.com/{}", id.to_hex()))
            .body(format!("{{\"text\":\"{text}\",\"v\":1}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let list = ok(&tally(url, Some(KEY), &["collections", "list"]));
    assert!(
        list.contains("app.example.com") && list.contains(&public),
        "{list}"
    );
    let found = ok(&tally(
        url,
        Some(KEY),
        &[
            "logs",
            "query",
            "-c",
            "app.example.com",
            "--since",
            "1h",
            "--grep",
            "disk",
        ],
    ));
    let lines: Vec<&str> = found.lines().collect();
    assert_eq!(lines.len(), 2, "{found}");
    assert!(
        lines[0].contains("[v1] disk full on /var") && lines[0].contains(&public[..8]),
        "{found}"
    );
    let json = ok(&tally(
        url,
        Some(KEY),
        &[
            "logs",
            "query",
            "-c",
            "app.example.com",
            "--json",
            "--instance",
            &public,
        ],
    ));
    assert_eq!(json.lines().count(), 3);
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["logtail"]["id"], public.as_str());
    }
    ok(&tally(
        url,
        Some(KEY),
        &["collections", "delete", "app.example.com"],
    ));
    let e = err(&tally(
        url,
        Some(KEY),
        &["logs", "query", "-c", "app.example.com"],
    ));
    assert!(e.contains("does not exist"), "{e}");
}

#[tokio::test]
async fn errors_tell_the_user_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let e = err(&tally(&server.url, None, &["collections", "list"]));
    assert!(e.contains("TALLY_API_KEY"), "{e}");
    let e = err(&tally(
        &server.url,
        Some("not-a-key"),
        &["collections", "list"],
    ));
    assert!(e.contains("401") && e.contains("not valid"), "{e}");
    let e = err(&tally(
        "http://127.0.0.1:1",
        Some(KEY),
        &["collections", "list"],
    ));
    assert!(
        e.contains("cannot reach the server") && e.contains("TALLY_SERVER"),
        "{e}"
    );
    let e = err(&tally(
        &server.url,
        Some(KEY),
        &["logs", "query", "--since", "last tuesday"],
    ));
    assert!(e.contains("duration") && e.contains("RFC 3339"), "{e}");
    let e = err(&tally(
        &server.url,
        Some(KEY),
        &["collections", "create", "bad name"],
    ));
    assert!(e.contains("invalid collection name"), "{e}");
    // The agent refuses to run without a server, and says how to set one.
    let e = err(&Command::new(bin())
        .args(["agent", "--no-stdin", "--data-dir"])
        .arg(dir.path().join("a"))
        .env_remove("TALLY_SERVER")
        .output()
        .unwrap());
    assert!(e.contains("--server"), "{e}");
    let e = err(&Command::new(bin())
        .args(["agent", "--data-dir"])
        .arg(dir.path().join("a"))
        .args(["log", "hi"])
        .output()
        .unwrap());
    assert!(e.contains("no agent is listening"), "{e}");
}

/// `tally bench` runs the `tally-bench` next to the running `tally`, with
/// the arguments as given (help flags included) and its exit status; with
/// none there, it says how to build it. Run from a copy of the binary in a
/// directory of its own, so a real tally-bench in target/ plays no part.
#[test]
fn bench_runs_tally_bench_next_to_tally() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tally = dir.path().join("tally");
    if std::fs::hard_link(bin(), &tally).is_err() {
        std::fs::copy(bin(), &tally).unwrap();
    }
    let run = |args: &[&str]| -> Output {
        // A script written just now can be "busy" while another test's
        // fork still holds it open: try again.
        for _ in 0..50 {
            let out = Command::new(&tally).args(args).output().expect("run tally");
            if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("tally-bench stayed busy");
    };

    let e = err(&run(&["bench", "ingest", "--clients", "3"]));
    assert!(
        e.contains("needs the tally-bench binary next to tally")
            && e.contains("cargo build --release -p tally-bench"),
        "{e}"
    );

    let script = dir.path().join("tally-bench");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&["bench", "--help", "pipeline", "--nodes", "10", "-x"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "--help\npipeline\n--nodes\n10\n-x\n"
    );
    let out = run(&["bench"]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(7), &b""[..])
    );
}

#[tokio::test]
async fn logs_query_prints_the_newest_entries_and_says_when_the_limit_cut_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.as_str();
    let id = tally_proto::PrivateId::generate();
    ok(&tally(
        url,
        Some(KEY),
        &["instances", "adopt", &id.public().to_hex()],
    ));
    let c = common::http();
    // 30 entries, one upload each (so each has its own time); every third
    // mentions an error, in mixed case.
    for n in 0..30 {
        let text = if n % 3 == 0 {
            format!("line {n}: Error opening socket")
        } else {
            format!("line {n}: ok")
        };
        let r = c
            .post(format!("{url}/c/tailnode/{}", id.to_hex()))
            .body(serde_json::json!({ "text": text }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let texts = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["text"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    // The newest 5, oldest of them first; stderr says the limit cut them.
    let out = tally(url, Some(KEY), &["logs", "query", "--limit", "5", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let printed = texts(&ok(&out));
    let want: Vec<String> = (25..30)
        .map(|n| {
            if n % 3 == 0 {
                format!("line {n}: Error opening socket")
            } else {
                format!("line {n}: ok")
            }
        })
        .collect();
    assert_eq!(printed, want);
    assert!(stderr.contains("newest 5 entries"), "{stderr}");
    // --grep is searched on the server, case-insensitively; all 10 fit in
    // a limit of 10: nothing is said.
    let out = tally(
        url,
        Some(KEY),
        &[
            "logs", "query", "--grep", "ERROR", "--limit", "10", "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let printed = texts(&ok(&out));
    let want: Vec<String> = (0..30)
        .step_by(3)
        .map(|n| format!("line {n}: Error opening socket"))
        .collect();
    assert_eq!(printed, want);
    assert!(!stderr.contains("newest"), "{stderr}");
    // The newest 3 matches, across pages of the server's answer.
    let out = tally(
        url,
        Some(KEY),
        &["logs", "query", "--grep", "error", "--limit", "3"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let human = ok(&out);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 3, "{human}");
    assert!(
        lines[0].ends_with("line 21: Error opening socket"),
        "{human}"
    );
    assert!(
        lines[2].ends_with("line 27: Error opening socket"),
        "{human}"
    );
    assert!(stderr.contains("newest 3 entries"), "{stderr}");
}
