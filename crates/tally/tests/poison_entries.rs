//! Hostile uploads cannot make a collection unreadable: each gets its
//! answer (400 saved, or 413), and every stored entry is then served as
//! valid I-JSON through the query API, the live stream and `tally logs
//! query`, and read by Python 3's `json` (strictly: finite numbers, no
//! duplicate names, encodable text).

mod common;

use common::{KEY, TestServer, bin, http};
use futures_util::StreamExt;
use serde_json::Value;
use serde_json::value::RawValue;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Reads JSON texts, one per line, as strictly as Python's `json` allows;
/// prints how many it read.
const PY_CHECK: &str = r#"
import json, math, sys
def finite(s):
    v = float(s)
    if math.isinf(v) or math.isnan(v):
        raise ValueError("non-finite number " + s)
    return v
def constant(c):
    raise ValueError("non-standard constant " + c)
def unique(pairs):
    names = [k for k, _ in pairs]
    if len(names) != len(set(names)):
        raise ValueError("duplicate member names")
    return dict(pairs)
n = 0
for i, line in enumerate(sys.stdin.buffer):
    line = line.rstrip(b"\n")
    if not line:
        continue
    try:
        v = json.loads(line.decode("utf-8"), parse_float=finite, parse_constant=constant, object_pairs_hook=unique)
        json.dumps(v, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except Exception as e:
        sys.exit("line %d: %s: %r" % (i + 1, e, line[:200]))
    n += 1
print(n)
"#;

/// Lines Python's `json` reads (see [`PY_CHECK`]); panics with its reason.
fn python_reads(lines: &[Vec<u8>]) -> usize {
    let mut child = Command::new("python3")
        .args(["-c", PY_CHECK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            stdin.write_all(l).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 json refused a served entry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A hostile body, what the server must answer, and a fragment of its message.
struct Case {
    body: Vec<u8>,
    status: u16,
    message: &'static str,
    /// Entries it stores.
    stored: usize,
}

fn case(body: impl Into<Vec<u8>>, status: u16, message: &'static str, stored: usize) -> Case {
    Case {
        body: body.into(),
        status,
        message,
        stored,
    }
}

fn cases() -> Vec<Case> {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(150), "}".repeat(150));
    let long = "y".repeat(300 * 1024);
    let many = format!("[{}]", vec!["{}"; 10_001].join(","));
    vec![
        case(
            format!(r#"[{{"text":"deep array","a":{deep}}}]"#),
            400,
            "deeper than the 64 levels",
            1,
        ),
        case(
            format!(r#"{{"text":"deep object","a":{deep_obj}}}"#),
            400,
            "deeper than the 64 levels",
            1,
        ),
        case(
            r#"[{"text":"huge","n":1e99999}]"#,
            400,
            "beyond the range of a double",
            1,
        ),
        case(
            r#"[{"text":"tiny","n":-1e400}]"#,
            400,
            "beyond the range of a double",
            1,
        ),
        case(
            r#"[{"text":"surrogate","s":"\ud800"}]"#,
            400,
            "unpaired surrogate",
            1,
        ),
        case(r#"{"\udc00":"key"}"#, 400, "unpaired surrogate", 1),
        case(
            r#"[{"text":"dup","a":1,"a":2}]"#,
            400,
            "two members named",
            1,
        ),
        case(
            r#"[{"text":"dup nested","x":[{"k":1,"\u006b":2}]}]"#,
            400,
            "two members named",
            1,
        ),
        case(
            r#"[{"text":"dup logtail","logtail":{"proc_id":1},"logtail":{"proc_id":2}}]"#,
            400,
            "two members named",
            1,
        ),
        case(r#"[1e99999, "\ud800"]"#, 400, "is not a JSON object", 2),
        case(
            &b"[{\"text\":\"bad utf-8 \xff\xfe\"}]"[..],
            400,
            "not a JSON array",
            1,
        ),
        case(r#"[{"text":"cut"},{"te"#, 400, "not a JSON array", 1),
        case(
            format!(r#"[{{"text":"{long}"}}]"#),
            400,
            "over the 262144-byte limit",
            1,
        ),
        case(
            r#"[{"text":"ok before"},{"text":"poison between","n":1e400},{"text":"ok after"}]"#,
            400,
            "1 of 3 entries were malformed",
            3,
        ),
        case(
            "[{\"text\" : \"spaced\",\n \"a\" : [1,\r\n\t2] }]",
            200,
            "",
            1,
        ),
        case(many, 413, "more than 10000 entries", 0),
    ]
}

/// Every entry of the collection, as served: raw texts of the query pages.
async fn served_entries(c: &reqwest::Client, url: &str) -> Vec<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        logs: Vec<&'a RawValue>,
        next: Option<String>,
    }
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("max-count".to_owned(), "7".to_owned())];
        if let Some(a) = &after {
            q.push(("after".into(), a.clone()));
        }
        let resp = c
            .get(format!("{url}/c/tailnode"))
            .bearer_auth(KEY)
            .query(&q)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.bytes().await.unwrap();
        // The whole page is one JSON document Python reads too.
        assert_eq!(python_reads(&[body.to_vec()]), 1);
        let page: Page<'_> = serde_json::from_slice(&body).expect("page is JSON");
        out.extend(page.logs.iter().map(|r| r.get().as_bytes().to_vec()));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// The first `n` entry lines of the live stream, from the beginning.
async fn streamed_entries(c: &reqwest::Client, url: &str, n: usize) -> Vec<Vec<u8>> {
    let resp = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("stream", "true"), ("time-start", "2000-01-01T00:00:00Z")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let (mut buf, mut lines) = (Vec::new(), Vec::new());
    let read = async {
        // The header line, then one line per entry (blank lines are heartbeats).
        while lines.len() < n + 1 {
            let chunk = body.next().await.expect("stream ended").unwrap();
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.len() > 1 {
                    lines.push(line[..line.len() - 1].to_vec());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("stream delivered every entry within 60 s");
    lines.split_off(1)
}

#[tokio::test]
async fn hostile_uploads_are_answered_and_every_stored_entry_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let url = &server.url;
    let id = common::adopted_id(url, "tailnode").await;
    let path = format!("{url}/c/tailnode/{}", id.to_hex());

    let mut expected = 0;
    for (i, case) in cases().into_iter().enumerate() {
        let resp = c.post(&path).body(case.body).send().await.unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.expect("answer is JSON");
        assert_eq!(status, case.status, "case {i}: {v}");
        if case.status == 200 {
            assert_eq!(v["stored"], case.stored, "case {i}: {v}");
        } else {
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains(case.message), "case {i}: {msg}");
        }
        if case.status == 400 {
            assert!(msg_says_saved(&v), "case {i}: {v}");
        }
        expected += case.stored;
    }

    // The query API serves every entry, each valid for serde_json and Python.
    let served = served_entries(&c, url).await;
    assert_eq!(served.len(), expected);
    assert_eq!(python_reads(&served), expected);
    let values: Vec<Value> = served
        .iter()
        .map(|e| serde_json::from_slice(e).expect("served entry is JSON"))
        .collect();
    for (e, v) in served.iter().zip(&values) {
        assert!(!e.contains(&b'\n'), "an entry spans lines");
        assert!(e.len() < 80 * 1024, "an entry of {} bytes", e.len());
        if let Some(bad) = v["logtail"]["error"].get("bad_data") {
            assert!(bad.is_string() || bad.is_number(), "{v}");
        }
    }
    let texts: Vec<&str> = values.iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(texts, ["ok before", "ok after", "spaced"]);
    // The rejected originals are kept, as strings.
    let kept: Vec<&str> = values
        .iter()
        .filter_map(|v| v["logtail"]["error"]["bad_data"].as_str())
        .collect();
    assert!(kept.iter().any(|k| k.contains("1e99999")), "{kept:?}");
    assert!(
        kept.iter().any(|k| k.contains(r#""a":1,"a":2"#)),
        "{kept:?}"
    );
    assert!(kept.iter().any(|k| k.contains(r"\ud800")), "{kept:?}");
    assert!(kept.iter().any(|k| k.ends_with(r#"{"te"#)), "{kept:?}");

    // The live stream: one line per entry, the same entries.
    let streamed = streamed_entries(&c, url, expected).await;
    assert_eq!(streamed, served);
    assert_eq!(python_reads(&streamed), expected);

    // `tally logs query --json` prints every entry, each readable, and skips none.
    for json in [true, false] {
        let mut args = vec!["logs", "query", "-c", "tailnode", "--since", "1h"];
        if json {
            args.push("--json");
        }
        let out = Command::new(bin())
            .args(&args)
            .env("TALLY_SERVER", url)
            .env("TALLY_API_KEY", KEY)
            .output()
            .expect("run tally logs query");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("skipped"), "{stderr}");
        let lines: Vec<Vec<u8>> = out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(
            lines.len(),
            expected,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        if json {
            assert_eq!(lines, served);
            assert_eq!(python_reads(&lines), expected);
        }
    }
}

fn msg_says_saved(v: &Value) -> bool {
    let msg = v["error"].as_str().unwrap_or_default();
    msg.contains("saved with logtail.error") || msg.contains("saved in its place")
}
