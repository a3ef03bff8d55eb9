//! `tally agent --containers`: a fake Docker root (config.v2.json and
//! json-file logs written as dockerd writes them) and a fake CRI pod log
//! directory (kubelet layout, `P`/`F` lines): entries arrive tagged with
//! the container's name, image, ID and stream, a line split into 16 KiB
//! records arrives whole, rotation and new containers are followed while
//! the agent runs, a removed container's last lines are read, garbage is
//! kept with a note, and a restart resumes exactly: every line once.

mod common;

use common::{Follow, TestAgent, TestServer};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Docker splits a line into records of at most 16 KiB.
const DOCKER_CHUNK: usize = 16 * 1024;

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// A fake container in a Docker root.
struct DockerContainer {
    id: String,
    dir: PathBuf,
}

impl DockerContainer {
    fn create(root: &Path, id_byte: &str, name: &str, image: &str) -> Self {
        let id = id_byte.repeat(64);
        let dir = root.join("containers").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "ID": id,
            "Name": format!("/{name}"),
            "Image": format!("sha256:{}", "e".repeat(64)),
            "Config": {"Image": image, "Hostname": &id[..12]},
            "State": {"Running": true},
        });
        std::fs::write(dir.join("config.v2.json"), config.to_string()).unwrap();
        Self { id, dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.id))
    }

    /// Writes `line` as dockerd does: records of at most 16 KiB, every
    /// one but the last without the trailing newline.
    fn write(&self, stream: &str, line: &str, time: &str) {
        let whole = format!("{line}\n");
        let mut out = Vec::new();
        let mut rest = whole.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(DOCKER_CHUNK);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            let rec = serde_json::json!({"log": chunk, "stream": stream, "time": time});
            out.extend_from_slice(rec.to_string().as_bytes());
            out.push(b'\n');
            rest = tail;
        }
        append_raw(&self.log(), &out);
    }
}

/// Reads the stream until every one of `texts` arrived (any order);
/// returns them in the order asked.
async fn until_all(follow: &mut Follow, texts: &[&str]) -> Vec<Value> {
    let mut found: Vec<Option<Value>> = vec![None; texts.len()];
    tokio::time::timeout(Duration::from_secs(60), async {
        while found.iter().any(Option::is_none) {
            let e = follow.next().await;
            if let Some(i) = texts.iter().position(|t| e["text"] == *t) {
                found[i] = Some(e);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not all of {texts:?} arrived within 60 s: {found:?}"));
    found.into_iter().flatten().collect()
}

async fn until(follow: &mut Follow, text: &str) -> Value {
    until_all(follow, &[text]).await.remove(0)
}

/// Every stored container entry's text, asserting each of `once` is there
/// exactly once and none of `never` is.
async fn assert_once(url: &str, once: &[&str], never: &[&str]) -> Vec<Value> {
    let all = common::read_all(&common::http(), url, "tailnode").await;
    let entries: Vec<Value> = all
        .into_iter()
        .filter(|e| e["source"] == "container")
        .collect();
    let texts: Vec<&str> = entries.iter().filter_map(|e| e["text"].as_str()).collect();
    for line in once {
        assert_eq!(
            texts.iter().filter(|t| *t == line).count(),
            1,
            "{line:?} once: {texts:?}"
        );
    }
    for line in never {
        assert!(
            !texts.iter().any(|t| t.contains(line)),
            "{line:?}: {texts:?}"
        );
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_json_file_logs_are_tagged_joined_rotated_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docker");
    let web = DockerContainer::create(&root, "a", "web", "nginx:1.27");
    web.write(
        "stdout",
        "before the agent: not shipped",
        "2025-06-01T11:00:00Z",
    );
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let agent_dir = dir.path().join("agent");
    let missing_cri = dir.path().join("no-pods");
    let args = [
        "--containers",
        "--docker-root",
        root.to_str().unwrap(),
        "--cri-log-dir",
        missing_cri.to_str().unwrap(),
    ];
    let agent = TestAgent::start(&server.url, &agent_dir, &args);
    let mut follow = Follow::open(&server.url, "tailnode").await;

    web.write("stdout", "web: one", "2025-06-01T12:00:00.123456789Z");
    let e = until(&mut follow, "web: one").await;
    assert_eq!(e["source"], "container", "{e}");
    let c = &e["container"];
    assert_eq!(c["runtime"], "docker", "{e}");
    assert_eq!(c["name"], "web", "{e}");
    assert_eq!(c["image"], "nginx:1.27", "{e}");
    assert_eq!(c["image_id"], format!("sha256:{}", "e".repeat(64)), "{e}");
    assert_eq!(c["id"], web.id, "{e}");
    assert_eq!(c["short_id"], &web.id[..12], "{e}");
    assert_eq!(c["stream"], "stdout", "{e}");
    assert!(c.get("note").is_none(), "{e}");
    assert_eq!(
        e["logtail"]["client_time"], "2025-06-01T12:00:00.123456789Z",
        "the container's time is the entry's: {e}"
    );

    // A 40 KiB line comes as three records: it arrives as one entry.
    let long = format!("long: {}", "x".repeat(40 * 1024));
    web.write("stderr", &long, "2025-06-01T12:00:01Z");
    // Garbage (not a json-file record) is kept, with a note.
    append_raw(&web.log(), b"this is not json\n");
    let got = until_all(&mut follow, &[&long, "this is not json"]).await;
    assert_eq!(got[0]["container"]["stream"], "stderr");
    assert!(got[0].get("part").is_none(), "one entry, not parts");
    assert_eq!(
        got[1]["container"]["note"],
        "not a Docker json-file record; kept as read"
    );
    assert_eq!(got[1]["container"]["name"], "web");

    // Rotation as dockerd does it (max-size): rename to .1, new file.
    web.write("stdout", "web: before rotation", "2025-06-01T12:00:02Z");
    std::fs::rename(web.log(), web.dir.join(format!("{}-json.log.1", web.id))).unwrap();
    web.write("stdout", "web: after rotation", "2025-06-01T12:00:03Z");
    until_all(
        &mut follow,
        &["web: before rotation", "web: after rotation"],
    )
    .await;

    // A container appearing while the agent runs: read from its start.
    let db = DockerContainer::create(&root, "b", "db", "postgres:17");
    db.write("stdout", "db: first line", "2025-06-01T12:00:04Z");
    let e = until(&mut follow, "db: first line").await;
    assert_eq!(e["container"]["name"], "db");
    assert_eq!(e["container"]["image"], "postgres:17");

    // A restart resumes exactly; a container created meanwhile is new.
    agent.stop();
    web.write("stdout", "web: while stopped", "2025-06-01T12:00:05Z");
    db.write("stdout", "db: while stopped", "2025-06-01T12:00:06Z");
    let cache = DockerContainer::create(&root, "c", "cache", "redis:8");
    cache.write("stdout", "cache: while stopped", "2025-06-01T12:00:07Z");
    let _agent = TestAgent::start(&server.url, &agent_dir, &args);
    until_all(
        &mut follow,
        &[
            "web: while stopped",
            "db: while stopped",
            "cache: while stopped",
        ],
    )
    .await;

    // A removed container: what it wrote last is read, then it is dropped.
    cache.write("stdout", "cache: last words", "2025-06-01T12:00:08Z");
    std::fs::remove_dir_all(&cache.dir).unwrap();
    until(&mut follow, "cache: last words").await;
    web.write("stdout", "web: end marker", "2025-06-01T12:00:09Z");
    until(&mut follow, "web: end marker").await;

    assert_once(
        &server.url,
        &[
            "web: one",
            &long,
            "this is not json",
            "web: before rotation",
            "web: after rotation",
            "db: first line",
            "web: while stopped",
            "db: while stopped",
            "cache: while stopped",
            "cache: last words",
            "web: end marker",
        ],
        &["not shipped"],
    )
    .await;
}

/// A fake CRI container log directory `<pods>/<ns>_<pod>_<uid>/<name>/`,
/// with the kubelet's symlink in `<pods>/../containers/`.
fn cri_container(pods: &Path, ns: &str, pod: &str, name: &str, id: &str) -> PathBuf {
    let dir = pods.join(format!("{ns}_{pod}_0f1e2d3c-uid")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let links = pods.parent().unwrap().join("containers");
    std::fs::create_dir_all(&links).unwrap();
    let log = dir.join("0.log");
    std::fs::write(&log, "").unwrap();
    std::os::unix::fs::symlink(&log, links.join(format!("{pod}_{ns}_{name}-{id}.log"))).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_logs_join_partial_lines_follow_rotation_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let api_id = "c".repeat(64);
    let api = cri_container(&pods, "prod", "api-7d9f", "app", &api_id);
    let log = api.join("0.log");
    append_raw(
        &log,
        b"2025-06-01T11:00:00Z stdout F before the agent: not shipped\n",
    );
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let agent_dir = dir.path().join("agent");
    let no_docker = dir.path().join("no-docker");
    let args = [
        "--containers",
        "--cri-log-dir",
        pods.to_str().unwrap(),
        "--docker-root",
        no_docker.to_str().unwrap(),
    ];
    let agent = TestAgent::start(&server.url, &agent_dir, &args);
    let mut follow = Follow::open(&server.url, "tailnode").await;

    append_raw(
        &log,
        b"2025-06-01T12:00:00.5+02:00 stdout P api: joined \n2025-06-01T12:00:01Z stdout P from \n2025-06-01T12:00:02Z stdout F three lines\n",
    );
    append_raw(&log, b"2025-06-01T12:00:03Z stderr F api: an error\n");
    append_raw(&log, b"garbage without a time\n");
    let got = until_all(
        &mut follow,
        &[
            "api: joined from three lines",
            "api: an error",
            "garbage without a time",
        ],
    )
    .await;
    let c = &got[0]["container"];
    assert_eq!(c["runtime"], "cri", "{}", got[0]);
    assert_eq!(c["namespace"], "prod", "{}", got[0]);
    assert_eq!(c["pod"], "api-7d9f", "{}", got[0]);
    assert_eq!(c["name"], "app", "{}", got[0]);
    assert_eq!(c["id"], api_id, "{}", got[0]);
    assert_eq!(c["stream"], "stdout", "{}", got[0]);
    assert!(c.get("image").is_none(), "CRI logs do not say the image");
    assert_eq!(got[0]["logtail"]["client_time"], "2025-06-01T10:00:00.5Z");
    assert_eq!(got[1]["container"]["stream"], "stderr");
    assert_eq!(
        got[2]["container"]["note"],
        "not a CRI log line; kept as read"
    );

    // The kubelet's rotation: 0.log renamed with a timestamp, a new 0.log.
    append_raw(
        &log,
        b"2025-06-01T12:00:04Z stdout F api: before rotation\n",
    );
    std::fs::rename(&log, api.join("0.log.20250601-120005")).unwrap();
    append_raw(&log, b"2025-06-01T12:00:05Z stdout F api: after rotation\n");
    until_all(
        &mut follow,
        &["api: before rotation", "api: after rotation"],
    )
    .await;

    // A pod started while the agent runs.
    let job_id = "d".repeat(64);
    let job = cri_container(&pods, "batch", "report-x1", "worker", &job_id);
    append_raw(
        &job.join("0.log"),
        b"2025-06-01T12:00:06Z stdout F job: started\n",
    );
    let e = until(&mut follow, "job: started").await;
    assert_eq!(e["container"]["namespace"], "batch");
    assert_eq!(e["container"]["id"], job_id);

    // Stopped in the middle of a partial message: the restart reads it
    // whole, and nothing twice.
    append_raw(&log, b"2025-06-01T12:00:07Z stdout P api: split across \n");
    agent.stop();
    append_raw(&log, b"2025-06-01T12:00:08Z stdout F a restart\n");
    append_raw(
        &job.join("0.log"),
        b"2025-06-01T12:00:09Z stdout F job: while stopped\n",
    );
    let _agent = TestAgent::start(&server.url, &agent_dir, &args);
    until_all(
        &mut follow,
        &["api: split across a restart", "job: while stopped"],
    )
    .await;
    append_raw(&log, b"2025-06-01T12:00:10Z stdout F api: end marker\n");
    until(&mut follow, "api: end marker").await;

    assert_once(
        &server.url,
        &[
            "api: joined from three lines",
            "api: an error",
            "garbage without a time",
            "api: before rotation",
            "api: after rotation",
            "job: started",
            "api: split across a restart",
            "job: while stopped",
            "api: end marker",
        ],
        &["not shipped"],
    )
    .await;
}

#[test]
fn the_config_file_takes_the_container_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "server = \"http://127.0.0.1:9\"\ncontainers = true\ndocker-root = \"/srv/docker\"\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["agent", "--config"])
        .arg(&file)
        .arg("--print-config")
        .env_remove("TALLY_SERVER")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in {report}"))
            .to_owned()
    };
    assert!(
        line("containers").starts_with("containers = true"),
        "{report}"
    );
    assert!(line("docker-root").contains("/srv/docker"), "{report}");
    assert!(line("cri-log-dir").contains("/var/log/pods"), "{report}");

    // The directories alone are refused: they need --containers.
    let out = Command::new(common::bin())
        .args(["agent", "--docker-root", "/srv/docker", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--containers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
