//! The README's way to try Tally beyond one machine: `dist/cluster/run-local`
//! starts NATS JetStream, PostgreSQL, an S3-compatible server (moto), two
//! servers and a worker as separate processes. Tried as a user would: wait
//! for "ready", follow its printed instructions across the two servers,
//! see the worker run the once-per-cluster consumers, stop it with a
//! signal, and nothing is left running.

mod common;

use common::http;
use common::readme::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_local_starts_a_cluster_that_works_and_stops_whole() {
    // The peers it starts must be installed (`.ci/run` installs them).
    if tally_testkit::nats::for_tests("cluster example", 1).is_none()
        || tally_testkit::postgres::for_tests("cluster example").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/cluster/run-local");
    // Distinct free ports (held while they are chosen), two of them
    // consecutive for the servers.
    let held: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let server_port = loop {
        let p = free_port();
        if !ports.contains(&p)
            && !ports.contains(&(p + 1))
            && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            break p;
        }
    };
    drop(held);
    let mut child = Command::new(script)
        .arg(dir.path().join("cluster"))
        .env("TALLY", common::bin())
        .env("NATS_PORT", ports[0].to_string())
        .env("PG_PORT", ports[1].to_string())
        .env("S3_PORT", ports[2].to_string())
        .env("SERVER_PORT", server_port.to_string())
        .env("WORKER_PORT", ports[3].to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run dist/cluster/run-local");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push(line.clone());
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert_eq!(
        printed.first().map(String::as_str),
        Some("tally cluster ready"),
        "{printed:?}"
    );
    let key = std::fs::read_to_string(dir.path().join("cluster/admin-key")).unwrap();
    assert!(
        printed.iter().any(|l| l.contains(&key)),
        "the key to use is printed"
    );
    let (one, two) = (
        format!("http://127.0.0.1:{server_port}"),
        format!("http://127.0.0.1:{}", server_port + 1),
    );

    // An upload through one server is read through the other.
    let id = tally_proto::PrivateId::generate();
    let c = http();
    let adopt = c
        .post(format!("{one}/instances"))
        .basic_auth(key.trim(), None::<&str>)
        .json(&serde_json::json!({"collection": "tailnode", "instances": [id.public().to_hex()]}))
        .send()
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("cluster/server-1.log"));
            panic!("{e}; server 1's log: {log:?}")
        });
    assert!(adopt.status().is_success(), "{}", adopt.status());
    let r = c
        .post(format!("{two}/c/tailnode/{}", id.to_hex()))
        .body(r#"[{"text":"through the second server"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = tokio::task::spawn_blocking({
        let (one, key) = (one.clone(), key.trim().to_owned());
        move || {
            Command::new(common::bin())
                .args(["logs", "query", "--limit", "5"])
                .env("TALLY_SERVER", &one)
                .env("TALLY_API_KEY", &key)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("through the second server"), "{text}");

    // The worker runs what runs once per cluster, the archive included.
    let ready: serde_json::Value = c
        .get(format!("http://127.0.0.1:{}/readyz", ports[3]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for name in ["reconciliation", "detection", "archive"] {
        assert_eq!(ready["consumers"][name], "running", "{ready}");
    }

    // A signal stops every process it started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();
    for port in [
        ports[0],
        ports[1],
        ports[2],
        ports[3],
        server_port,
        server_port + 1,
    ] {
        tally_testkit::wait::until(
            "every process stopped",
            Duration::from_secs(30),
            || async move {
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => Err(format!("port {port} still answers")),
                    Err(_) => Ok(()),
                }
            },
        )
        .await;
    }
}
