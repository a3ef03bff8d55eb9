//! Session recordings through the CLI (issue 16): a server started with
//! `--recorder-listen` and `--recorder-allow` takes a recording as
//! tailscaled uploads it (h2c, streaming POST /v2/record); `tally
//! recordings list` shows it, `tally recordings export -o FILE` writes the
//! `.cast` as received, and Debian's `asciinema cat` reads that file
//! unchanged (under a pseudo-terminal, as it wants one).

mod common;

use common::TestServer;
use common::readme::{free_port, tally_async as cli};
use std::time::{Duration, Instant};

const CAST: &str = concat!(
    r#"{"version":2,"width":80,"height":24,"timestamp":1700000000,"srcNode":"web-1.tail1234.ts.net","srcNodeID":"nWeb1","srcNodeUser":"ada@example.com","sshUser":"deploy","localUser":"deploy","connectionID":"c42"}"#,
    "\n",
    r#"[0.25,"o","$ uptime\r\n"]"#,
    "\n",
    r#"[0.75,"o","up 42 days, load average: 0.01\r\n"]"#,
    "\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_listed_exported_and_read_by_asciinema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = TestServer::start(
        dir.path(),
        &[
            "--recorder-listen",
            &listen,
            "--recorder-allow",
            "127.0.0.0/8",
        ],
    );
    let url = server.url.clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let probe = h2c
        .head(format!("http://{listen}/v2/record"))
        .send()
        .await
        .expect("probe");
    assert_eq!(probe.status(), 200);
    let resp = h2c
        .post(format!("http://{listen}/v2/record"))
        .body(CAST)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    let acks = resp.text().await.expect("acks");
    assert!(
        acks.lines()
            .last()
            .is_some_and(|l| l.contains(&format!("\"ack\":{}", CAST.len()))),
        "{acks}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let out = cli(&url, &["recordings", "list", "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        if let Some(r) = v["recordings"].as_array().and_then(|a| a.first())
            && r["state"] == "complete"
        {
            break r["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "never listed as complete: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let table = cli(&url, &["recordings", "list", "--user", "deploy"]).await;
    assert!(
        table.contains(&id)
            && table.contains("web-1.tail1234.ts.net")
            && table.contains("complete"),
        "{table}"
    );
    let none = cli(&url, &["recordings", "list", "--user", "nobody", "--json"]).await;
    assert!(!none.contains(&id), "{none}");

    let file = dir.path().join("session.cast");
    cli(
        &url,
        &[
            "recordings",
            "export",
            &id,
            "-o",
            file.to_str().expect("path"),
        ],
    )
    .await;
    assert_eq!(std::fs::read_to_string(&file).expect("cast"), CAST);
    // asciinema reads its controlling terminal: run it under a
    // pseudo-terminal (`script`, util-linux).
    assert!(
        std::path::Path::new("/usr/bin/asciinema").exists(),
        "asciinema is not installed (apt-get install asciinema; .ci/run does)"
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("asciinema cat {}", file.display()))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("$ uptime") && text.contains("up 42 days"),
        "{text}"
    );
}
