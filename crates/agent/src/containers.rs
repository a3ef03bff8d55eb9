//! Container logs (`--containers`): Docker's json-file logs and the CRI
//! logs of containerd and CRI-O (Kubernetes), found and followed as
//! containers come and go.
//!
//! - Docker: `<docker-root>/containers/<id>/<id>-json.log`, one JSON record
//!   a line (`{"log":"...\n","stream":"stdout","time":"..."}`); a line
//!   over 16 KiB comes as several records, all but the last without the
//!   trailing `\n`. The name (`Name`), image (`Config.Image`) and image
//!   ID (`Image`) come from `config.v2.json` beside it, read once when the
//!   container's log is first seen.
//! - CRI: `<cri-log-dir>/<namespace>_<pod>_<uid>/<container>/<n>.log`,
//!   lines `<RFC 3339 time> <stdout|stderr> <P|F> <message>` (`P`: the
//!   message goes on in the next line). Namespace, pod and container come
//!   from the path; the container ID from the kubelet's symlinks in
//!   `<cri-log-dir>/../containers/` when there is one. The image is not
//!   in either, so CRI entries have none.
//!
//! Each log file is followed by [`crate::follow`] (positions kept across
//! restarts, rotation by rename found again, truncation), with a
//! [`Joiner`] as its line decoder: partial records are joined into one
//! message (at most [`RAW_CHUNK`] bytes at a time; a longer message
//! becomes numbered `part`s like any long line), the container's
//! timestamp becomes the entry's `client_time`, and a line that is not in
//! the runtime's format is kept as read with a `note`.
//!
//! A partial message nothing is added to for [`IDLE_FLUSH`] (a prompt
//! without a newline) is taken as a part; the rest follows as the next.
//! A root the agent may not read (not root: dockerd keeps its containers
//! 0710) is said once, in the node's log too.
//!
//! Files are looked for again every second: a new container's log is read
//! from its start; a container whose log went away (removed) is read to
//! the end of what the agent has open, then dropped, its position
//! forgotten. On the first start with `--containers` the logs already
//! there are followed from their end, like `--follow`; on later starts a
//! container the agent has not seen is new, and read from its start.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::entry::{ContainerTags, RAW_CHUNK};
use crate::follow::{self, FollowHandle};
use crate::lines::RawLine;
use crate::queue::FilePos;
use crate::writer::{Item, WriteRequest, note};

/// Source name of container log entries.
pub const CONTAINER_SOURCE: &str = "container";
/// Default Docker data root.
pub const DEFAULT_DOCKER_ROOT: &str = "/var/lib/docker";
/// Default CRI pod log directory.
pub const DEFAULT_CRI_LOG_DIR: &str = "/var/log/pods";
/// Marker in the data directory: container logs were positioned once, so
/// a container without a stored position is new (read from its start).
const SEEN_MARKER: &str = "containers.seen";
/// Most container log files followed at once (each by a thread).
const MAX_FILES: usize = 1024;
/// Files are looked for again at most this often.
const MIN_RESCAN: Duration = Duration::from_secs(1);
/// A partial message nothing was added to for this long is taken as it
/// is (as a `part`; the rest follows when it comes).
pub(crate) const IDLE_FLUSH: Duration = Duration::from_secs(5);

/// `--containers`: where container logs are looked for.
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// Docker's data root (`--docker-root`, default `/var/lib/docker`);
    /// `None`: Docker's logs are not read.
    pub docker_root: Option<PathBuf>,
    /// The CRI pod log directory (`--cri-log-dir`, default
    /// `/var/log/pods`); `None`: CRI logs are not read.
    pub cri_log_dir: Option<PathBuf>,
}

/// The log format of a container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    /// Docker's json-file driver.
    Docker,
    /// The CRI log format (containerd, CRI-O).
    Cri,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Cri => "cri",
        }
    }

    fn malformed(self) -> &'static str {
        match self {
            Runtime::Docker => "not a Docker json-file record; kept as read",
            Runtime::Cri => "not a CRI log line; kept as read",
        }
    }
}

/// A container log file: its format and its entries' tags.
#[derive(Debug, Clone)]
pub(crate) struct ContainerFile {
    /// The format of its lines.
    pub runtime: Runtime,
    /// What each entry carries.
    pub tags: Arc<ContainerTags>,
}

/// One message decoded from a container log.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The message (or a part of it: `continues`), ending and position
    /// those of the last line it takes.
    pub raw: RawLine,
    /// The runtime's time of its first line, Unix ns.
    pub time: Option<i64>,
    /// `stdout` or `stderr`.
    pub stream: Option<&'static str>,
    /// Why it is kept as read.
    pub note: Option<&'static str>,
}

/// A message being joined from partial lines.
#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    time: Option<i64>,
    stream: &'static str,
    /// Position and fingerprint after its last line.
    end: u64,
    fingerprint: u32,
    fingerprint_len: u32,
    /// When its last line was added.
    since: Instant,
}

/// The line decoder of one container log file: parses each line and
/// joins partial ones.
#[derive(Debug)]
pub(crate) struct Joiner {
    runtime: Runtime,
    pending: Option<Pending>,
    /// The line being read is longer than a chunk (so not the runtime's
    /// format): its chunks are passed on as they are.
    in_long_line: bool,
}

/// One parsed line.
struct Record<'a> {
    message: &'a [u8],
    partial: bool,
    stream: &'static str,
    time: Option<i64>,
}

#[derive(Deserialize)]
struct DockerRecord {
    log: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

fn stream_name(s: &[u8]) -> Option<&'static str> {
    match s {
        b"stdout" => Some("stdout"),
        b"stderr" => Some("stderr"),
        _ => None,
    }
}

/// A CRI line: `<time> <stream> <tags> <message>`, the first tag `P`
/// (partial) or `F` (full).
fn parse_cri(line: &[u8]) -> Option<Record<'_>> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(it.next()?).ok()?;
    let time = tally_proto::timefmt::parse_rfc3339(time)?;
    let stream = stream_name(it.next()?)?;
    let partial = match it.next()?.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Record {
        message: it.next().unwrap_or_default(),
        partial,
        stream,
        time: Some(time),
    })
}

impl Joiner {
    /// A decoder for a file in `runtime`'s format.
    pub(crate) fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            pending: None,
            in_long_line: false,
        }
    }

    /// Takes the pending message as it is.
    fn flush(&mut self, continues: bool, out: &mut Vec<Decoded>) {
        if let Some(p) = self.pending.take() {
            out.push(Decoded {
                raw: RawLine {
                    bytes: p.bytes,
                    continues,
                    end: p.end,
                    fingerprint: p.fingerprint,
                    fingerprint_len: p.fingerprint_len,
                },
                time: p.time,
                stream: Some(p.stream),
                note: None,
            });
        }
    }

    /// A line that is not in the format: kept as read, with a note.
    fn raw(&mut self, raw: RawLine, out: &mut Vec<Decoded>) {
        self.flush(false, out);
        self.in_long_line = raw.continues;
        out.push(Decoded {
            raw,
            time: None,
            stream: None,
            note: Some(self.runtime.malformed()),
        });
    }

    /// Decodes one line (or chunk of a long one) of the file, appending
    /// the messages it completes to `out`.
    pub(crate) fn push(&mut self, raw: RawLine, out: &mut Vec<Decoded>) {
        if raw.continues || self.in_long_line {
            return self.raw(raw, out);
        }
        let docker;
        let rec = match self.runtime {
            Runtime::Docker => {
                docker = serde_json::from_slice::<DockerRecord>(&raw.bytes).ok();
                docker.as_ref().map(|d| {
                    let log = d.log.as_bytes();
                    let (message, partial) = match log.strip_suffix(b"\n") {
                        Some(m) => (m.strip_suffix(b"\r").unwrap_or(m), false),
                        None => (log, true),
                    };
                    Record {
                        message,
                        partial,
                        stream: d
                            .stream
                            .as_deref()
                            .and_then(|s| stream_name(s.as_bytes()))
                            .unwrap_or("stdout"),
                        time: d
                            .time
                            .as_deref()
                            .and_then(tally_proto::timefmt::parse_rfc3339),
                    }
                })
            }
            Runtime::Cri => parse_cri(&raw.bytes),
        };
        let Some(rec) = rec else {
            return self.raw(raw, out);
        };
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.stream != rec.stream)
        {
            // The other stream's line while one was partial: take it as is.
            self.flush(false, out);
        }
        let p = self.pending.get_or_insert_with(|| Pending {
            bytes: Vec::new(),
            time: rec.time,
            stream: rec.stream,
            end: 0,
            fingerprint: 0,
            fingerprint_len: 0,
            since: Instant::now(),
        });
        p.bytes.extend_from_slice(rec.message);
        p.end = raw.end;
        p.fingerprint = raw.fingerprint;
        p.fingerprint_len = raw.fingerprint_len;
        p.since = Instant::now();
        if !rec.partial {
            self.flush(false, out);
        } else if p.bytes.len() >= RAW_CHUNK {
            // Bounded: a long message goes on in numbered parts.
            self.flush(true, out);
        }
    }

    /// End of the file (rotated away, or its container removed): the
    /// message still partial is taken as it is.
    pub(crate) fn finish(&mut self, out: &mut Vec<Decoded>) {
        self.flush(false, out);
    }

    /// A partial message nothing was added to for `idle` is taken as a
    /// part (the rest, if it comes, follows as the next parts).
    pub(crate) fn flush_idle(&mut self, idle: Duration, out: &mut Vec<Decoded>) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.since.elapsed() >= idle)
        {
            self.flush(true, out);
        }
    }
}

/// A container log file present now.
#[derive(Debug, Clone)]
struct Present {
    path: PathBuf,
    key: Arc<str>,
    runtime: Runtime,
}

/// Docker container IDs are 64 hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Lists `dir`; a missing one is empty, another error is said in `problems`.
fn list(dir: &Path, problems: &mut Vec<String>) -> Vec<fs::DirEntry> {
    match fs::read_dir(dir) {
        Ok(items) => items.flatten().collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(format!(
                "--containers: cannot read {}: {e}{}",
                dir.display(),
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (container logs are root's: run the agent as root)"
                } else {
                    ""
                }
            ));
            Vec::new()
        }
    }
}

/// The container log files present now, and what could not be read.
fn scan(opts: &ContainerOptions) -> (Vec<Present>, Vec<String>) {
    let mut problems = Vec::new();
    let mut found = Vec::new();
    let mut push = |path: PathBuf, runtime| {
        if let Some(key) = path.to_str() {
            let key: Arc<str> = Arc::from(key);
            found.push(Present { path, key, runtime });
        }
    };
    if let Some(root) = &opts.docker_root {
        for dir in list(&root.join("containers"), &mut problems) {
            let name = dir.file_name();
            let Some(id) = name.to_str().filter(|n| is_container_id(n)) else {
                continue;
            };
            let log = dir.path().join(format!("{id}-json.log"));
            match fs::metadata(&log) {
                Ok(m) if m.is_file() => push(log, Runtime::Docker),
                // A container directory the agent may not enter.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    problems.push(format!(
                        "--containers: cannot read {}: {e} (container logs are root's: run the agent as root)",
                        log.display()
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some(pods) = &opts.cri_log_dir {
        for pod in list(pods, &mut problems) {
            for container in list(&pod.path(), &mut problems) {
                for file in list(&container.path(), &mut problems) {
                    let name = file.file_name();
                    let is_log = name
                        .to_str()
                        .and_then(|n| n.strip_suffix(".log"))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                    if is_log && file.path().is_file() {
                        push(file.path(), Runtime::Cri);
                    }
                }
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    problems.truncate(8);
    (found, problems)
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Image", default)]
    image_id: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<DockerInnerConfig>,
}

#[derive(Deserialize, Default)]
struct DockerInnerConfig {
    #[serde(rename = "Image", default)]
    image: Option<String>,
}

/// Adds `id` and `short_id` (its first 12 digits).
fn insert_id(fields: &mut Map<String, Value>, id: &str) {
    fields.insert("id".into(), id.into());
    fields.insert(
        "short_id".into(),
        id.chars().take(12).collect::<String>().into(),
    );
}

/// A Docker container's tags, from its `config.v2.json` (only the ID when
/// it cannot be read).
fn docker_tags(log: &Path) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("runtime".into(), Runtime::Docker.name().into());
    let dir = log.parent().unwrap_or(Path::new("."));
    if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
        insert_id(&mut fields, id);
    }
    let config_path = dir.join("config.v2.json");
    let config: DockerConfig = match fs::read(&config_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %config_path.display(), "cannot parse the container's configuration ({e}); its entries carry only its ID");
            DockerConfig::default()
        }),
        Err(e) => {
            tracing::warn!(path = %config_path.display(), "cannot read the container's configuration ({e}); its entries carry only its ID");
            DockerConfig::default()
        }
    };
    if let Some(name) = config.name {
        fields.insert("name".into(), name.trim_start_matches('/').into());
    }
    if let Some(image) = config.config.and_then(|c| c.image) {
        fields.insert("image".into(), image.into());
    }
    if let Some(image_id) = config.image_id {
        fields.insert("image_id".into(), image_id.into());
    }
    fields
}

/// The CRI container IDs by log file, from the kubelet's symlinks
/// `<cri-log-dir>/../containers/<pod>_<namespace>_<container>-<id>.log`.
fn cri_ids(cri_log_dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut ids = BTreeMap::new();
    let Some(dir) = cri_log_dir.parent().map(|p| p.join("containers")) else {
        return ids;
    };
    let Ok(links) = fs::read_dir(dir) else {
        return ids;
    };
    for link in links.flatten() {
        let name = link.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.rsplit_once('-'))
            .map(|(_, id)| id)
            .filter(|id| is_container_id(id))
        else {
            continue;
        };
        if let Ok(target) = fs::canonicalize(link.path()) {
            ids.insert(target, id.to_owned());
        }
    }
    ids
}

/// A CRI container's tags, from its log file's path.
fn cri_tags(log: &Path, ids: &BTreeMap<PathBuf, String>) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("runtime".into(), Runtime::Cri.name().into());
    let container_dir = log.parent().unwrap_or(Path::new("."));
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    if let Some(pod_dir) = container_dir.parent().and_then(name) {
        let parts: Vec<&str> = pod_dir.split('_').collect();
        if let [namespace, pod, uid] = parts[..] {
            fields.insert("namespace".into(), namespace.into());
            fields.insert("pod".into(), pod.into());
            fields.insert("pod_uid".into(), uid.into());
        } else {
            fields.insert("pod".into(), pod_dir.into());
        }
    }
    if let Some(container) = name(container_dir) {
        fields.insert("name".into(), container.into());
    }
    if let Some(restart) = log
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u64>().ok())
    {
        fields.insert("restart".into(), restart.into());
    }
    if let Some(id) = fs::canonicalize(log).ok().and_then(|p| ids.get(&p)) {
        insert_id(&mut fields, id);
    }
    fields
}

/// The tags of `new` files (read from the files beside them).
fn tag_files(opts: &ContainerOptions, new: Vec<Present>) -> Vec<(Present, ContainerFile)> {
    let ids = match &opts.cri_log_dir {
        Some(dir) if new.iter().any(|p| p.runtime == Runtime::Cri) => cri_ids(dir),
        _ => BTreeMap::new(),
    };
    new.into_iter()
        .map(|p| {
            let fields = match p.runtime {
                Runtime::Docker => docker_tags(&p.path),
                Runtime::Cri => cri_tags(&p.path, &ids),
            };
            let file = ContainerFile {
                runtime: p.runtime,
                tags: Arc::new(ContainerTags::new(Arc::clone(&p.key), fields)),
            };
            (p, file)
        })
        .collect()
}

/// Whether the container of the log file `log` is gone: its directory is
/// (Docker's `containers/<id>/`, the CRI's `<pod>/<container>/`).
fn container_gone(log: &Path) -> bool {
    log.parent().is_none_or(|dir| !dir.exists())
}

/// Whether `key` has the shape of a container log file under `opts`' roots.
fn is_container_key(opts: &ContainerOptions, key: &str) -> bool {
    let path = Path::new(key);
    let docker = opts.docker_root.as_ref().is_some_and(|root| {
        path.parent().and_then(Path::parent) == Some(&root.join("containers"))
            && key.ends_with("-json.log")
    });
    let cri = opts.cri_log_dir.as_ref().is_some_and(|dir| {
        path.parent().and_then(Path::parent).and_then(Path::parent) == Some(dir.as_path())
    });
    docker || cri
}

/// Follows the container logs, looking for new ones and dropping removed
/// ones until stopped.
#[derive(Debug)]
pub(crate) struct Watcher {
    opts: ContainerOptions,
    tx: mpsc::Sender<WriteRequest>,
    poll_interval: Duration,
    /// Positions stored at start, by key.
    stored: BTreeMap<String, FilePos>,
    /// `--follow` keys: never taken as containers'.
    other_keys: BTreeSet<Arc<str>>,
    followers: BTreeMap<Arc<str>, FollowHandle>,
    /// Read a new file from its start (not the first start).
    seen_before: bool,
    warned_full: bool,
    /// Problems said already (each once).
    warned: BTreeSet<String>,
}

impl Watcher {
    /// Positions every container log present now (stored position, else
    /// the end on the first start, else the start) and returns once each
    /// is in place.
    pub(crate) async fn start(
        opts: ContainerOptions,
        data_dir: &Path,
        stored: BTreeMap<String, FilePos>,
        other_keys: BTreeSet<Arc<str>>,
        tx: mpsc::Sender<WriteRequest>,
        poll_interval: Duration,
    ) -> Self {
        let marker = data_dir.join(SEEN_MARKER);
        let mut w = Self {
            opts,
            tx,
            poll_interval,
            stored,
            other_keys,
            followers: BTreeMap::new(),
            seen_before: marker.exists(),
            warned_full: false,
            warned: BTreeSet::new(),
        };
        let present = w.rescan().await;
        // Containers removed while the agent was stopped: their logs are gone.
        let gone: Vec<String> = w
            .stored
            .keys()
            .filter(|k| {
                is_container_key(&w.opts, k)
                    && !present.contains(k.as_str())
                    && !w.other_keys.contains(k.as_str())
                    && container_gone(Path::new(k))
            })
            .cloned()
            .collect();
        for key in gone {
            tracing::info!(path = %key, "container log went away while the agent was stopped; forgetting its position");
            w.forget(Arc::from(key)).await;
        }
        w.seen_before = true;
        if let Err(e) = fs::write(&marker, b"") {
            tracing::warn!(path = %marker.display(), "cannot write the containers marker ({e}): the next start reads the logs present then from their end");
        }
        w
    }

    /// Drops `path`'s position (its container is gone for good).
    async fn forget(&mut self, path: Arc<str>) {
        self.stored.remove(&*path);
        let _ = self
            .tx
            .send(WriteRequest {
                items: vec![Item::Forget { path }],
                reply: None,
            })
            .await;
    }

    /// Looks for container logs once: follows new ones, finishes and drops
    /// removed ones. Returns the keys present.
    async fn rescan(&mut self) -> BTreeSet<String> {
        let opts = self.opts.clone();
        let Ok((found, problems)) = tokio::task::spawn_blocking(move || scan(&opts)).await else {
            return BTreeSet::new();
        };
        for p in problems {
            if self.warned.insert(p.clone()) {
                tracing::warn!("{p}");
                note(&self.tx, p).await;
            }
        }
        let present: BTreeSet<String> = found.iter().map(|p| p.key.to_string()).collect();
        // A log file missing while its directory is there is being rotated:
        // its follower handles that.
        let gone: Vec<Arc<str>> = self
            .followers
            .keys()
            .filter(|k| !present.contains(&***k) && container_gone(Path::new(&***k)))
            .cloned()
            .collect();
        for key in gone {
            if let Some(handle) = self.followers.remove(&key) {
                let _ = tokio::task::spawn_blocking(move || handle.finish()).await;
                tracing::info!(path = %key, "container log went away; read to its end and dropped");
                self.forget(key).await;
            }
        }
        let new: Vec<Present> = found
            .into_iter()
            .filter(|p| !self.followers.contains_key(&p.key) && !self.other_keys.contains(&p.key))
            .collect();
        if new.is_empty() {
            return present;
        }
        let opts = self.opts.clone();
        let Ok(tagged) = tokio::task::spawn_blocking(move || tag_files(&opts, new)).await else {
            return present;
        };
        for (p, file) in tagged {
            if self.followers.len() >= MAX_FILES {
                if !self.warned_full {
                    self.warned_full = true;
                    note(
                        &self.tx,
                        format!(
                            "--containers: more than {MAX_FILES} container logs; {} and later ones are not followed",
                            p.path.display()
                        ),
                    )
                    .await;
                }
                break;
            }
            let stored = self.stored.get(&*p.key).copied();
            let (ready_tx, ready_rx) = oneshot::channel();
            match follow::spawn_container(
                p.path.clone(),
                Arc::clone(&p.key),
                stored,
                self.tx.clone(),
                self.poll_interval,
                ready_tx,
                self.seen_before,
                file,
            ) {
                Ok(h) => {
                    let _ = ready_rx.await;
                    tracing::info!(path = %p.path.display(), "following a container's log");
                    self.followers.insert(p.key, h);
                }
                Err(e) => {
                    note(&self.tx, format!("cannot follow {}: {e}", p.path.display())).await;
                }
            }
        }
        present
    }

    /// Looks again every second until `stop`; then stops every follower.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let every = self.poll_interval.max(MIN_RESCAN);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            self.rescan().await;
        }
        let handles = std::mem::take(&mut self.followers);
        let _ = tokio::task::spawn_blocking(move || {
            handles.into_values().for_each(FollowHandle::stop);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str, end: u64) -> RawLine {
        RawLine {
            bytes: s.as_bytes().to_vec(),
            continues: false,
            end,
            fingerprint: end as u32,
            fingerprint_len: 1,
        }
    }

    fn texts(out: &[Decoded]) -> Vec<String> {
        out.iter()
            .map(|d| String::from_utf8_lossy(&d.raw.bytes).into_owned())
            .collect()
    }

    #[test]
    fn docker_partial_records_are_joined_with_the_first_ones_time() {
        let mut j = Joiner::new(Runtime::Docker);
        let mut out = Vec::new();
        j.push(
            line(
                r#"{"log":"hello ","stream":"stderr","time":"2025-01-02T03:04:05.123456789Z"}"#,
                10,
            ),
            &mut out,
        );
        assert!(out.is_empty());
        j.push(
            line(
                r#"{"log":"world\n","stream":"stderr","time":"2025-01-02T03:04:06Z"}"#,
                20,
            ),
            &mut out,
        );
        assert_eq!(texts(&out), ["hello world"]);
        let d = &out[0];
        assert_eq!(
            (d.stream, d.note, d.raw.end, d.raw.continues),
            (Some("stderr"), None, 20, false)
        );
        assert_eq!(
            d.time.map(tally_proto::timefmt::format_nanos).as_deref(),
            Some("2025-01-02T03:04:05.123456789Z")
        );
    }

    #[test]
    fn bad_lines_are_kept_with_a_note() {
        let mut j = Joiner::new(Runtime::Docker);
        let mut out = Vec::new();
        j.push(line(r#"{"log":"cut "#, 5), &mut out);
        j.push(line(r#"{"nolog":1}"#, 9), &mut out);
        assert_eq!(texts(&out), [r#"{"log":"cut "#, r#"{"nolog":1}"#]);
        assert!(out.iter().all(|d| d.note.is_some() && d.stream.is_none()));

        let mut j = Joiner::new(Runtime::Cri);
        let mut out = Vec::new();
        for bad in [
            "no time stdout F x",
            "2025-01-02T03:04:05Z stdin F x",
            "2025-01-02T03:04:05Z stdout X x",
            "",
        ] {
            j.push(line(bad, 1), &mut out);
        }
        assert_eq!(out.len(), 4);
        assert!(
            out.iter()
                .all(|d| d.note == Some("not a CRI log line; kept as read"))
        );
    }

    #[test]
    fn cri_partial_lines_join_until_f_and_a_pending_one_flushes_first() {
        let mut j = Joiner::new(Runtime::Cri);
        let mut out = Vec::new();
        j.push(
            line("2025-01-02T03:04:05.5+01:00 stdout P abc", 1),
            &mut out,
        );
        j.push(line("2025-01-02T03:04:06Z stdout P def", 2), &mut out);
        j.push(line("2025-01-02T03:04:07Z stdout F  ghi", 3), &mut out);
        j.push(line("2025-01-02T03:04:08Z stderr F", 4), &mut out);
        assert_eq!(texts(&out), ["abcdef ghi", ""]);
        assert_eq!(
            out[0]
                .time
                .map(tally_proto::timefmt::format_nanos)
                .as_deref(),
            Some("2025-01-02T02:04:05.5Z")
        );
        assert_eq!(out[1].stream, Some("stderr"));
        // A garbage line ends a partial message: both are kept.
        let mut out = Vec::new();
        j.push(line("2025-01-02T03:04:05Z stdout P part", 5), &mut out);
        j.push(line("garbage", 6), &mut out);
        assert_eq!(texts(&out), ["part", "garbage"]);
        assert_eq!((out[0].raw.end, out[1].raw.end), (5, 6));
        // The end of the file takes a partial message as it is.
        let mut out = Vec::new();
        j.push(line("2025-01-02T03:04:05Z stdout P tail", 7), &mut out);
        j.finish(&mut out);
        assert_eq!(texts(&out), ["tail"]);
    }

    #[test]
    fn a_partial_message_left_waiting_is_taken_as_a_part() {
        let mut j = Joiner::new(Runtime::Cri);
        let mut out = Vec::new();
        j.push(
            line("2025-01-02T03:04:05Z stdout P password: ", 1),
            &mut out,
        );
        j.flush_idle(Duration::from_secs(3600), &mut out);
        assert!(out.is_empty(), "not waited long enough");
        j.flush_idle(Duration::ZERO, &mut out);
        assert_eq!(texts(&out), ["password: "]);
        assert!(out[0].raw.continues, "the rest follows as the next part");
        j.push(line("2025-01-02T03:04:09Z stdout F ok", 2), &mut out);
        assert_eq!(texts(&out), ["password: ", "ok"]);
        assert!(!out[1].raw.continues);
    }

    #[test]
    fn joined_messages_are_bounded() {
        let mut j = Joiner::new(Runtime::Docker);
        let mut out = Vec::new();
        let chunk = "x".repeat(16 * 1024);
        let rec = format!(r#"{{"log":"{chunk}","stream":"stdout"}}"#);
        for i in 0..40 {
            j.push(line(&rec, i), &mut out);
        }
        j.push(line(r#"{"log":"end\n","stream":"stdout"}"#, 99), &mut out);
        assert!(out.len() >= 3, "{}", out.len());
        assert!(
            out.iter()
                .all(|d| d.raw.bytes.len() <= RAW_CHUNK + chunk.len())
        );
        assert!(out[..out.len() - 1].iter().all(|d| d.raw.continues));
        let total: usize = out.iter().map(|d| d.raw.bytes.len()).sum();
        assert_eq!(total, 40 * chunk.len() + 3);
    }

    #[test]
    fn paths_give_the_tags() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        let log = pods.join("prod_web-7d9f_0b1c-uid/nginx/2.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "").unwrap();
        let links = dir.path().join("containers");
        std::fs::create_dir_all(&links).unwrap();
        let id = "ab".repeat(32);
        std::os::unix::fs::symlink(&log, links.join(format!("web-7d9f_prod_nginx-{id}.log")))
            .unwrap();
        let opts = ContainerOptions {
            docker_root: None,
            cri_log_dir: Some(pods.clone()),
        };
        let (found, problems) = scan(&opts);
        assert_eq!((found.len(), problems.len()), (1, 0), "{problems:?}");
        let tagged = tag_files(&opts, found);
        let f = &tagged[0].1.tags.fields;
        assert_eq!(f["namespace"], "prod");
        assert_eq!(f["pod"], "web-7d9f");
        assert_eq!(f["name"], "nginx");
        assert_eq!(f["restart"], 2);
        assert_eq!(f["id"], id.as_str());
        assert_eq!(f["short_id"], &id[..12]);
        assert!(is_container_key(&opts, log.to_str().unwrap()));
        assert!(!is_container_key(
            &opts,
            pods.join("x.log").to_str().unwrap()
        ));
    }
}
