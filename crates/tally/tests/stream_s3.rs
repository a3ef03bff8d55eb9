//! Streaming the configuration audit log to an S3-compatible store (a real
//! `moto_server`, from PyPI), set with the CLI as the README says, as
//! OCSF, gzip-compressed:
//!
//! `tally stream set configuration --type s3 --url http://127.0.0.1:PORT
//! --s3-bucket tally-logs --s3-key-prefix acme --s3-access-key-id ...
//! --s3-secret-access-key ... --compression gzip --format ocsf`
//!
//! The bucket does not exist at first: the stream's status says so and
//! nothing is lost; once the bucket is created, every audit event made
//! meanwhile arrives. The test lists the bucket over moto's S3 API,
//! checks the key layout, decompresses each object and reads the OCSF API
//! Activity events: every change once (a batch sent again rewrites the
//! same key), in order.

mod common;

use common::TestServer;
use common::moto::Moto;
use common::readme::{create_api_key as change, tally_async as cli};
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, Instant};

/// Every object under `prefix`, read with AWS's own SDK (boto3, which
/// moto depends on): (key, body), in key order.
async fn objects(moto: &str, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let script = format!(
        r#"
import boto3, json
s3 = boto3.client("s3", endpoint_url="{moto}", region_name="us-east-1",
                  aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="s3-secret-never-shown")
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="{bucket}", Prefix="{prefix}")
for page in pages:
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket="{bucket}", Key=o["Key"])["Body"].read()
        print(json.dumps({{"key": o["Key"], "hex": body.hex()}}))
"#
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("python3 with boto3 (installed with moto)");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (
                v["key"].as_str().expect("key").to_owned(),
                hex::decode(v["hex"].as_str().expect("hex")).expect("hex body"),
            )
        })
        .collect()
}

/// One object, gunzipped, as NDJSON.
fn ndjson(key: &str, bytes: &[u8]) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{key}: not a gzip object ({e})"));
    assert!(text.ends_with('\n'), "NDJSON ends with a newline");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

fn key_layout_ok(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    parts.len() == 7
        && parts[0] == "acme"
        && parts[1] == "configuration"
        && parts[2].len() == 4
        && parts[3..6]
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[6].ends_with(".ndjson.gz")
        && parts[6].len() == 20 + 1 + 20 + ".ndjson.gz".len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_reaches_an_s3_bucket_as_ocsf_objects() {
    let moto = Moto::start();
    let bucket = "tally-logs";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.clone();
    let out = cli(
        &url,
        &[
            "stream",
            "set",
            "configuration",
            "--type",
            "s3",
            "--url",
            &moto.url,
            "--s3-bucket",
            bucket,
            "--s3-key-prefix",
            "acme",
            "--s3-access-key-id",
            "AKIDEXAMPLE",
            "--s3-secret-access-key",
            "s3-secret-never-shown",
            "--compression",
            "gzip",
            "--format",
            "ocsf",
        ],
    )
    .await;
    assert!(out.contains("streaming configuration to s3"), "{out}");

    // No bucket yet: the status says why, and nothing is lost.
    change(&url, "s3-1").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s: Value = serde_json::from_str(
            &cli(&url, &["stream", "status", "configuration", "--json"]).await,
        )
        .expect("json");
        if s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("s3://tally-logs") && e.contains("NoSuchBucket"))
        {
            assert_eq!(s["unencrypted"], true, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no error without a bucket: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"import boto3; boto3.client("s3", endpoint_url="{}", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b").create_bucket(Bucket="{bucket}")"#,
            moto.url
        ))
        .status()
        .await
        .expect("python3");
    assert!(created.success(), "creating the bucket");
    change(&url, "s3-2").await;

    let want = ["s3-1", "s3-2"];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut names = Vec::new();
        let mut last_key = String::new();
        for (key, body) in objects(&moto.url, bucket, "acme/").await {
            assert!(key_layout_ok(&key), "key {key}");
            assert!(key > last_key, "keys sort in log order");
            last_key.clone_from(&key);
            for e in ndjson(&key, &body) {
                assert_eq!(e["class_uid"], 6003, "{e}");
                assert_eq!(e["type_uid"], 600301, "{e}");
                assert_eq!(e["metadata"]["product"]["name"], "Tally", "{e}");
                if e["resources"][0]["type"] == "API_KEY"
                    && let Some(n) = e["resources"][0]["name"].as_str()
                {
                    names.push(n.to_owned());
                }
            }
        }
        if names.len() >= want.len() {
            assert_eq!(names, want, "each change once, in order");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "objects hold {names:?}, not all of {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s: Value =
        serde_json::from_str(&cli(&url, &["stream", "status", "configuration", "--json"]).await)
            .expect("json");
    assert_eq!(s["lastError"], "", "{s}");
    assert!(s["numFailedRequests"].as_u64() >= Some(1), "{s}");
    // The secret is never answered.
    let config = cli(&url, &["stream", "list", "--json"]).await;
    assert!(!config.contains("s3-secret-never-shown"), "{config}");
    assert!(config.contains("AKIDEXAMPLE"), "{config}");
}
