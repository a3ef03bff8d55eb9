//! Following log files (`--follow PATH`), one polling thread per file.
//!
//! - First sight (no position stored for the path): start at the end.
//! - Restart: resume at the stored position if the file is the same (device,
//!   inode) and the bytes before the position still match its fingerprint;
//!   otherwise it was truncated or rewritten meanwhile: read from the start.
//!   If the path now names another file (rotated while the agent was
//!   stopped), the rest of the old file is read first when it is still in
//!   the same directory (`x.log.1`).
//! - Rotation by rename: when the path names a new file, the old one is read
//!   to its end, then the new one from its start.
//! - Truncation (copytruncate): when the file is shorter than what was read,
//!   or the bytes before the position changed, read it again from the start.
//!
//! Every line's entry carries the position after it (see [`crate::queue`]),
//! and a position-only record is queued whenever reading restarts elsewhere.
//!
//! A container's log file ([`spawn_container`]) is read the same way, its
//! lines decoded by a [`Joiner`] (the runtime's format, partial lines
//! joined); its entries' position is that of the last line they took.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::containers::{CONTAINER_SOURCE, ContainerFile, Decoded, IDLE_FLUSH, Joiner};
use crate::entry::{ContainerLine, RAW_CHUNK};
use crate::lines::{FINGERPRINT_WINDOW, LineSplitter, Parts, RawLine, fingerprint};
use crate::queue::FilePos;
use crate::writer::{Item, WriteRequest};

/// Bytes read per `read` call.
const READ_BUF: usize = 64 * 1024;
/// Bytes of lines sent to the writer per request.
const SEND_BYTES: usize = 256 * 1024;
/// Bytes read per poll before yielding (then polled again at once).
const POLL_BUDGET: u64 = 4 << 20;

/// The writer is gone: the agent is stopping.
#[derive(Debug)]
struct Closed;

struct Tail {
    file: File,
    dev: u64,
    ino: u64,
    /// Next byte to read.
    read_offset: u64,
    splitter: LineSplitter,
    parts: Parts,
    /// A container log's decoder.
    joiner: Option<Joiner>,
}

impl Tail {
    fn open_at(
        file: File,
        meta: &Metadata,
        offset: u64,
        window: Vec<u8>,
        part: u32,
        container: Option<&ContainerFile>,
    ) -> Self {
        Self {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            read_offset: offset,
            splitter: LineSplitter::new(offset, window, RAW_CHUNK),
            parts: match container {
                Some(c) => Parts::for_container(part, c.tags.json_len),
                None => Parts::new(part),
            },
            joiner: container.map(|c| Joiner::new(c.runtime)),
        }
    }

    /// Position after the last line taken.
    fn position(&self) -> FilePos {
        let (fingerprint, fingerprint_len) = self.splitter.fingerprint();
        FilePos {
            dev: self.dev,
            ino: self.ino,
            offset: self.splitter.consumed(),
            fingerprint,
            fingerprint_len,
            part: self.parts.part(),
        }
    }
}

/// Reads the `pos.fingerprint_len` bytes before `pos.offset` and checks them.
/// Returns them on a match.
fn check_fingerprint(file: &File, pos: &FilePos) -> io::Result<Option<Vec<u8>>> {
    let len = u64::from(pos.fingerprint_len);
    if len > pos.offset || len > FINGERPRINT_WINDOW as u64 {
        return Ok(None);
    }
    let mut buf = vec![0; len as usize];
    match file.read_exact_at(&mut buf, pos.offset - len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (fp, n) = fingerprint(&[], &buf);
    Ok((fp == pos.fingerprint && n == pos.fingerprint_len).then_some(buf))
}

/// Follows one path.
struct Follower {
    path: PathBuf,
    key: Arc<str>,
    /// The entries' `source`: the path, or `container`.
    source: Arc<str>,
    /// A container's log: its format and tags.
    container: Option<ContainerFile>,
    tx: mpsc::Sender<WriteRequest>,
    tail: Option<Tail>,
    /// The start could not open the file (other than "not found"): retry
    /// the start with this stored position rather than reading from 0.
    retry_initial: Option<Option<FilePos>>,
    /// A file that appeared while the agent ran (a `--follow` pattern's
    /// new match): read from its start, not its end, on first sight.
    from_start: bool,
    last_warning: Option<String>,
}

impl Follower {
    fn warn_once(&mut self, msg: String) {
        if self.last_warning.as_deref() != Some(msg.as_str()) {
            tracing::warn!(path = %self.path.display(), "{msg}");
            self.last_warning = Some(msg);
        }
    }

    fn open_tail(
        &self,
        file: File,
        meta: &Metadata,
        offset: u64,
        window: Vec<u8>,
        part: u32,
    ) -> Tail {
        Tail::open_at(file, meta, offset, window, part, self.container.as_ref())
    }

    fn send(&self, items: Vec<Item>) -> Result<(), Closed> {
        if items.is_empty() {
            return Ok(());
        }
        self.tx
            .blocking_send(WriteRequest { items, reply: None })
            .map_err(|_| Closed)
    }

    fn mark(&self) -> Result<(), Closed> {
        match &self.tail {
            Some(t) => self.send(vec![Item::Mark {
                path: Arc::clone(&self.key),
                pos: t.position(),
            }]),
            None => Ok(()),
        }
    }

    /// Starts following at agent start, from the stored position if any.
    fn attach_initial(&mut self, stored: Option<FilePos>) -> Result<(), Closed> {
        let (file, meta) = match File::open(&self.path).and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(path = %self.path.display(), "followed file does not exist yet; it will be read from its start once it appears");
                return Ok(());
            }
            Err(e) => {
                self.warn_once(format!("cannot open followed file: {e}; retrying"));
                self.retry_initial = Some(stored);
                return Ok(());
            }
        };
        self.last_warning = None;
        match stored {
            None if self.from_start => {
                self.tail = Some(self.open_tail(file, &meta, 0, Vec::new(), 0));
                self.mark()
            }
            None => {
                // First sight: only what is written from now on.
                let len = meta.len();
                let from = len.saturating_sub(FINGERPRINT_WINDOW as u64);
                let mut window = vec![0; (len - from) as usize];
                if let Err(e) = file.read_exact_at(&mut window, from) {
                    self.warn_once(format!("cannot read followed file: {e}"));
                    window.clear();
                }
                let window_len = window.len() as u64;
                self.tail = Some(self.open_tail(file, &meta, from + window_len, window, 0));
                self.mark()
            }
            Some(pos) if (pos.dev, pos.ino) == (meta.dev(), meta.ino()) => {
                match check_fingerprint(&file, &pos) {
                    Ok(Some(window)) if pos.offset <= meta.len() => {
                        self.tail = Some(self.open_tail(file, &meta, pos.offset, window, pos.part));
                        Ok(())
                    }
                    _ => {
                        tracing::info!(path = %self.path.display(), "followed file was truncated or rewritten while the agent was stopped; reading it from its start");
                        self.tail = Some(self.open_tail(file, &meta, 0, Vec::new(), 0));
                        self.mark()
                    }
                }
            }
            Some(pos) => {
                self.drain_rotated(&pos)?;
                self.tail = Some(self.open_tail(file, &meta, 0, Vec::new(), 0));
                self.mark()
            }
        }
    }

    /// The path names a new file since the agent stopped: read the rest of
    /// the old one if it is still next to it (renamed by log rotation).
    fn drain_rotated(&mut self, pos: &FilePos) -> Result<(), Closed> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let found = fs::read_dir(dir).ok().and_then(|items| {
            items.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                fs::symlink_metadata(p)
                    .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (pos.dev, pos.ino))
            })
        });
        let Some(old) = found else {
            tracing::warn!(
                path = %self.path.display(),
                "followed file was replaced while the agent was stopped and the old file is gone; lines written to it after the agent stopped could not be read"
            );
            return Ok(());
        };
        let opened = File::open(&old).and_then(|f| f.metadata().map(|m| (f, m)));
        let Ok((file, meta)) = opened else {
            return Ok(());
        };
        match check_fingerprint(&file, pos) {
            Ok(Some(window)) if pos.offset <= meta.len() => {
                tracing::info!(path = %self.path.display(), rotated = %old.display(), "reading the rest of the rotated file first");
                self.tail = Some(self.open_tail(file, &meta, pos.offset, window, pos.part));
                self.read_available(u64::MAX)?;
                self.finish_tail()?;
                self.tail = None;
            }
            _ => {
                tracing::warn!(path = %self.path.display(), rotated = %old.display(), "the rotated file changed; not reading it again");
            }
        }
        Ok(())
    }

    /// Takes an unterminated last line of the current file.
    fn finish_tail(&mut self) -> Result<(), Closed> {
        let Some(t) = self.tail.as_mut() else {
            return Ok(());
        };
        let mut raws = Vec::new();
        t.splitter.finish(&mut raws);
        let items = to_items(t, &self.source, self.container.as_ref(), raws, true);
        self.send(items)
    }

    /// A container log's partial message that waited [`IDLE_FLUSH`] is
    /// taken as a part.
    fn flush_idle(&mut self) -> Result<(), Closed> {
        let Some(t) = self.tail.as_mut() else {
            return Ok(());
        };
        let Some(j) = t.joiner.as_mut() else {
            return Ok(());
        };
        let mut decoded = Vec::new();
        j.flush_idle(IDLE_FLUSH, &mut decoded);
        if decoded.is_empty() {
            return Ok(());
        }
        let items = decoded_items(t, &self.source, self.container.as_ref(), decoded);
        self.send(items)
    }

    /// Reads the open file to its end and takes a partial last line or
    /// message (the file went away for good).
    fn drain(&mut self) -> Result<(), Closed> {
        self.read_available(u64::MAX)?;
        self.finish_tail()
    }

    /// One poll: notice rotation and truncation, then read what is new.
    /// Returns true when more data may be waiting.
    fn poll(&mut self) -> Result<bool, Closed> {
        if let Some(stored) = self.retry_initial.take() {
            self.attach_initial(stored)?;
            if self.tail.is_none() {
                return Ok(false);
            }
        }
        let meta = fs::metadata(&self.path);
        match (&self.tail, meta) {
            (None, Ok(_)) => {
                // Appeared (or reappeared) since the last poll: all of it is new.
                match File::open(&self.path).and_then(|f| f.metadata().map(|m| (f, m))) {
                    Ok((file, meta)) => {
                        self.last_warning = None;
                        self.tail = Some(self.open_tail(file, &meta, 0, Vec::new(), 0));
                        self.mark()?;
                    }
                    Err(e) => {
                        self.warn_once(format!("cannot open followed file: {e}; retrying"));
                        return Ok(false);
                    }
                }
            }
            (None, Err(e)) => {
                if e.kind() != io::ErrorKind::NotFound {
                    self.warn_once(format!("cannot access followed file: {e}; retrying"));
                }
                return Ok(false);
            }
            (Some(t), Ok(m)) if (m.dev(), m.ino()) != (t.dev, t.ino) => {
                // Rotated by rename: finish the old file, then start the new one.
                self.read_available(u64::MAX)?;
                self.finish_tail()?;
                self.tail = None;
                return self.poll();
            }
            (Some(t), Ok(m)) => {
                let pos = t.position();
                let rewritten = m.len() < t.read_offset
                    || !matches!(check_fingerprint(&t.file, &pos), Ok(Some(_)));
                if rewritten {
                    tracing::info!(path = %self.path.display(), "followed file was truncated; reading it from its start");
                    self.finish_tail()?;
                    if let Some(t) = self.tail.take() {
                        let meta = t.file.metadata();
                        if let Ok(meta) = meta {
                            self.tail = Some(Tail::open_at(
                                t.file,
                                &meta,
                                0,
                                Vec::new(),
                                0,
                                self.container.as_ref(),
                            ));
                        }
                    }
                    self.mark()?;
                }
            }
            // Gone without a replacement yet (rotation in progress) or not
            // accessible: keep reading the file already open.
            (Some(_), Err(_)) => {}
        }
        self.read_available(POLL_BUDGET)
    }

    /// Reads up to `budget` bytes from the current file and queues its lines.
    fn read_available(&mut self, budget: u64) -> Result<bool, Closed> {
        let Some(t) = self.tail.as_mut() else {
            return Ok(false);
        };
        let mut buf = vec![0; READ_BUF];
        let mut items = Vec::new();
        let mut pending_bytes = 0;
        let mut read = 0u64;
        let mut error = None;
        let more = loop {
            if read >= budget {
                break true;
            }
            let n = match t.file.read_at(&mut buf, t.read_offset) {
                Ok(0) => break false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error = Some(e);
                    break false;
                }
            };
            read += n as u64;
            t.read_offset += n as u64;
            let mut raws = Vec::new();
            t.splitter.push(&buf[..n], &mut raws);
            pending_bytes += raws.iter().map(|r| r.bytes.len()).sum::<usize>();
            items.extend(to_items(
                t,
                &self.source,
                self.container.as_ref(),
                raws,
                false,
            ));
            if pending_bytes >= SEND_BYTES {
                self.tx
                    .blocking_send(WriteRequest {
                        items: std::mem::take(&mut items),
                        reply: None,
                    })
                    .map_err(|_| Closed)?;
                pending_bytes = 0;
            }
        };
        self.send(items)?;
        if let Some(e) = error {
            self.warn_once(format!("cannot read followed file: {e}; retrying"));
        }
        Ok(more)
    }
}

/// The queue items for `raws` read from `t`; each line's last entry carries
/// the file position after it. A container log's lines go through its
/// decoder first (`end`: the end of the file, a partial message is taken).
fn to_items(
    t: &mut Tail,
    source: &Arc<str>,
    container: Option<&ContainerFile>,
    raws: Vec<RawLine>,
    end: bool,
) -> Vec<Item> {
    if let Some(j) = t.joiner.as_mut() {
        let mut decoded = Vec::new();
        for raw in raws {
            j.push(raw, &mut decoded);
        }
        if end {
            j.finish(&mut decoded);
        }
        return decoded_items(t, source, container, decoded);
    }
    let key = source;
    let now = tally_proto::timefmt::now_nanos();
    let mut items = Vec::with_capacity(raws.len());
    for raw in raws {
        let mut lines = t.parts.lines(&raw, key, now);
        if let Some(last) = lines.last_mut() {
            last.file = Some(FilePos {
                dev: t.dev,
                ino: t.ino,
                offset: raw.end,
                fingerprint: raw.fingerprint,
                fingerprint_len: raw.fingerprint_len,
                part: t.parts.part(),
            });
        }
        items.extend(lines.into_iter().map(Item::Line));
    }
    items
}

/// The queue items of a container log's decoded messages: each message's
/// last entry carries the position after its last line, and the
/// container's time is the entries' `client_time`.
fn decoded_items(
    t: &mut Tail,
    source: &Arc<str>,
    container: Option<&ContainerFile>,
    decoded: Vec<Decoded>,
) -> Vec<Item> {
    let now = tally_proto::timefmt::now_nanos();
    let mut items = Vec::with_capacity(decoded.len());
    for d in decoded {
        let mut lines = t.parts.lines(&d.raw, source, d.time.unwrap_or(now));
        let tag = container.map(|c| ContainerLine {
            tags: Arc::clone(&c.tags),
            stream: d.stream,
            note: d.note,
        });
        for line in &mut lines {
            line.container = tag.clone().map(Box::new);
        }
        if let Some(last) = lines.last_mut() {
            last.file = Some(FilePos {
                dev: t.dev,
                ino: t.ino,
                offset: d.raw.end,
                fingerprint: d.raw.fingerprint,
                fingerprint_len: d.raw.fingerprint_len,
                part: t.parts.part(),
            });
        }
        items.extend(lines.into_iter().map(Item::Line));
    }
    items
}

/// What a follower thread is asked.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Stop now (the agent stops; the position is kept).
    Now,
    /// Read the open file to its end, then stop (it went away for good).
    Finish,
}

/// A running follower thread.
#[derive(Debug)]
pub(crate) struct FollowHandle {
    stop: std_mpsc::Sender<Stop>,
    thread: thread::JoinHandle<()>,
}

impl FollowHandle {
    /// Asks the thread to stop and waits for it (blocking).
    pub(crate) fn stop(self) {
        let _ = self.stop.send(Stop::Now);
        let _ = self.thread.join();
    }

    /// Asks the thread to read what is left of its open file, then stop,
    /// and waits for it (blocking).
    pub(crate) fn finish(self) {
        let _ = self.stop.send(Stop::Finish);
        let _ = self.thread.join();
    }
}

/// Starts following `path` (`key` is its name in entries and in the queue).
/// `ready` fires once the starting position is decided and queued.
pub(crate) fn spawn(
    path: PathBuf,
    key: Arc<str>,
    stored: Option<FilePos>,
    tx: mpsc::Sender<WriteRequest>,
    poll_interval: Duration,
    ready: oneshot::Sender<()>,
    from_start: bool,
) -> io::Result<FollowHandle> {
    start(
        path,
        key,
        stored,
        tx,
        poll_interval,
        ready,
        from_start,
        None,
    )
}

/// Starts following a container's log `path` (`key` is its name in the
/// queue), decoding its lines in its runtime's format.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_container(
    path: PathBuf,
    key: Arc<str>,
    stored: Option<FilePos>,
    tx: mpsc::Sender<WriteRequest>,
    poll_interval: Duration,
    ready: oneshot::Sender<()>,
    from_start: bool,
    container: ContainerFile,
) -> io::Result<FollowHandle> {
    start(
        path,
        key,
        stored,
        tx,
        poll_interval,
        ready,
        from_start,
        Some(container),
    )
}

#[allow(clippy::too_many_arguments)]
fn start(
    path: PathBuf,
    key: Arc<str>,
    stored: Option<FilePos>,
    tx: mpsc::Sender<WriteRequest>,
    poll_interval: Duration,
    ready: oneshot::Sender<()>,
    from_start: bool,
    container: Option<ContainerFile>,
) -> io::Result<FollowHandle> {
    let (stop, stop_rx) = std_mpsc::channel::<Stop>();
    let source = match container {
        Some(_) => Arc::from(CONTAINER_SOURCE),
        None => Arc::clone(&key),
    };
    let thread = thread::Builder::new()
        .name("tally-follow".into())
        .spawn(move || {
            let mut f = Follower {
                path,
                key,
                source,
                container,
                tx,
                tail: None,
                retry_initial: None,
                last_warning: None,
                from_start,
            };
            if f.attach_initial(stored).is_err() {
                return;
            }
            let _ = ready.send(());
            let mut wait = Duration::ZERO;
            loop {
                match stop_rx.recv_timeout(wait) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(Stop::Finish) => {
                        let _ = f.drain();
                        return;
                    }
                    Ok(Stop::Now) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
                wait = match f.poll() {
                    Ok(true) => Duration::ZERO,
                    Ok(false) => match f.flush_idle() {
                        Ok(()) => poll_interval,
                        Err(Closed) => return,
                    },
                    Err(Closed) => return,
                };
            }
        })?;
    Ok(FollowHandle { stop, thread })
}
