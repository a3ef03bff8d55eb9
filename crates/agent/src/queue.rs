//! The bounded disk queue in `<data-dir>/queue/`.
//!
//! Segment files `<20-digit id>.seg` (about 1 MiB each) hold records
//! `u32 length | u32 CRC-32C of the payload | payload` (little endian).
//! `state.json`, replaced atomically, holds the upload acknowledgement
//! position and the followed files' positions as of a queue position.
//!
//! Payload kinds (first byte):
//! - `1`: a log entry (its JSON);
//! - `2`: a log entry read from a followed file: the file position after its
//!   line, then the JSON;
//! - `3`: a file position alone (a followed file was first seen, rotated or
//!   truncated);
//! - `4`: a followed file's position forgotten (a container's log that went
//!   away): its path alone.
//!
//! Each entry from a followed file carries the position after its line, so
//! file positions are exactly as durable as the entries: after a crash,
//! recovery keeps the intact records, cuts a torn tail, and each file resumes
//! after the last line kept, neither losing nor duplicating lines.
//!
//! Acknowledged (uploaded) segments stay as local history while space allows.
//! When the queue would exceed its limit, the oldest segments go first:
//! acknowledged ones, then unacknowledged ones, whose entry count is returned
//! so the caller can log the loss.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::sync_dir;

/// Bytes of a record header (length and checksum).
pub(crate) const HEADER_LEN: usize = 8;
/// Largest payload a valid record may have; anything larger is corruption.
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;
/// Extension of segment files.
const SEGMENT_EXT: &str = "seg";
/// Name of the state file.
const STATE_FILE: &str = "state.json";

const KIND_ENTRY: u8 = 1;
const KIND_FILE_ENTRY: u8 = 2;
const KIND_FILE_MARK: u8 = 3;
const KIND_FILE_FORGET: u8 = 4;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A file system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A record does not fit in the queue.
    #[error("a queue record of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The record's size.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// An entry or the state could not be encoded.
    #[error("cannot encode queue data as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> QueueError {
    let path = path.to_owned();
    move |source| QueueError::Io { op, path, source }
}

/// A place in the queue: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub(crate) struct Position {
    /// Segment id.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// Where reading of a followed file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct FilePos {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Byte offset after the last line taken.
    pub offset: u64,
    /// CRC-32C of the `fingerprint_len` bytes before `offset`.
    pub fingerprint: u32,
    /// How many bytes the fingerprint covers (0 at offset 0).
    pub fingerprint_len: u32,
    /// Parts already taken of a long line that `offset` is in the middle of.
    pub part: u32,
}

/// A decoded record payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// A log entry, with the file position after its line if it came from a
    /// followed file.
    Entry {
        /// The entry's JSON.
        json: &'a [u8],
        /// The followed file's path and the position after the line.
        file: Option<(&'a str, FilePos)>,
    },
    /// A followed file's position alone.
    Mark {
        /// The followed file's path.
        path: &'a str,
        /// Its position.
        pos: FilePos,
    },
    /// A followed file's position is dropped (the file went away for good).
    Forget {
        /// The followed file's path.
        path: &'a str,
    },
}

impl<'a> Record<'a> {
    /// The entry JSON, for entries.
    pub(crate) fn json(&self) -> Option<&'a [u8]> {
        match *self {
            Record::Entry { json, .. } => Some(json),
            Record::Mark { .. } | Record::Forget { .. } => None,
        }
    }

    /// The file position carried, if any.
    fn file(&self) -> Option<(&'a str, FilePos)> {
        match *self {
            Record::Entry { file, .. } => file,
            Record::Mark { path, pos } => Some((path, pos)),
            Record::Forget { .. } => None,
        }
    }

    /// Applies the record to the followed files' positions.
    fn apply(&self, files: &mut BTreeMap<String, FilePos>) {
        if let Some((p, pos)) = self.file() {
            files.insert(p.to_owned(), pos);
        } else if let Record::Forget { path } = *self {
            files.remove(path);
        }
    }
}

fn encode_file(path: &str, pos: &FilePos, out: &mut Vec<u8>) -> Result<(), QueueError> {
    let len = u16::try_from(path.len()).map_err(|_| QueueError::TooLarge {
        size: path.len(),
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    for n in [pos.dev, pos.ino, pos.offset] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for n in [pos.fingerprint, pos.fingerprint_len, pos.part] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    Ok(())
}

/// Appends the payload encoding of `rec` to `out`.
fn encode(rec: &Record<'_>, out: &mut Vec<u8>) -> Result<(), QueueError> {
    match rec {
        Record::Entry { json, file: None } => {
            out.push(KIND_ENTRY);
            out.extend_from_slice(json);
        }
        Record::Entry {
            json,
            file: Some((path, pos)),
        } => {
            out.push(KIND_FILE_ENTRY);
            encode_file(path, pos, out)?;
            out.extend_from_slice(json);
        }
        Record::Mark { path, pos } => {
            out.push(KIND_FILE_MARK);
            encode_file(path, pos, out)?;
        }
        Record::Forget { path } => {
            out.push(KIND_FILE_FORGET);
            out.extend_from_slice(path.as_bytes());
        }
    }
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

fn decode_file<'a>(c: &mut Cursor<'a>) -> Option<(&'a str, FilePos)> {
    let len = usize::from(c.u16()?);
    let path = std::str::from_utf8(c.take(len)?).ok()?;
    let pos = FilePos {
        dev: c.u64()?,
        ino: c.u64()?,
        offset: c.u64()?,
        fingerprint: c.u32()?,
        fingerprint_len: c.u32()?,
        part: c.u32()?,
    };
    Some((path, pos))
}

/// Decodes a record payload; `None` for an unknown kind or a malformed one.
pub(crate) fn decode(payload: &[u8]) -> Option<Record<'_>> {
    let (&kind, rest) = payload.split_first()?;
    let mut c = Cursor(rest);
    match kind {
        KIND_ENTRY => Some(Record::Entry {
            json: rest,
            file: None,
        }),
        KIND_FILE_ENTRY => {
            let file = decode_file(&mut c)?;
            Some(Record::Entry {
                json: c.0,
                file: Some(file),
            })
        }
        KIND_FILE_MARK => decode_file(&mut c).map(|(path, pos)| Record::Mark { path, pos }),
        KIND_FILE_FORGET => std::str::from_utf8(rest)
            .ok()
            .map(|path| Record::Forget { path }),
        _ => None,
    }
}

/// Iterates over the intact records of a segment's bytes, yielding each
/// record's offset and payload, and stops at the first torn or corrupt one.
pub(crate) struct RecordIter<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> RecordIter<'a> {
    /// Iterates over `data`, which starts at a record boundary.
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Length of the intact prefix read so far.
    pub(crate) fn valid_end(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.data[self.pos..];
        let header = rest.get(..HEADER_LEN)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // A zero length is corruption too: zero-filled space would otherwise
        // pass as empty records (the CRC-32C of nothing is 0).
        if len == 0 || len > MAX_PAYLOAD {
            return None;
        }
        let payload = rest.get(HEADER_LEN..HEADER_LEN + len)?;
        if crc32c::crc32c(payload) != crc {
            return None;
        }
        let offset = self.pos;
        self.pos += HEADER_LEN + len;
        Some((offset, payload))
    }
}

/// The path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.{SEGMENT_EXT}"))
}

/// The ids of the segment files in `dir`, in order.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut ids = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(id) = stem.parse() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The persistent state besides the segments.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct State {
    /// Everything before this position is uploaded.
    #[serde(default)]
    pub acked: Position,
    /// `files` reflects every record before this position.
    #[serde(default)]
    pub files_as_of: Position,
    /// Followed files' positions.
    #[serde(default)]
    pub files: BTreeMap<String, FilePos>,
}

#[derive(Serialize)]
struct StateRef<'a> {
    version: u32,
    acked: Position,
    files_as_of: Position,
    files: &'a BTreeMap<String, FilePos>,
}

/// Reads `state.json`; a missing file is `None`, an unreadable one is
/// reported and treated as missing (everything is then re-uploaded, which the
/// server deduplicates).
pub(crate) fn read_state(dir: &Path) -> Result<Option<State>, QueueError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(Some(state)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "queue state is unreadable; every queued entry will be uploaded again");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Sizes of a queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueOptions {
    /// Most bytes all segments may take together.
    pub max_bytes: u64,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
}

impl QueueOptions {
    /// Options for a queue of `max_bytes`: segments of about 1 MiB, smaller
    /// for small queues.
    pub(crate) fn for_size(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            segment_bytes: (max_bytes / 32).clamp(4096, 1 << 20),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    id: u64,
    len: u64,
}

impl Segment {
    fn end(&self) -> Position {
        Position {
            segment: self.id,
            offset: self.len,
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Where the record starts.
    pub position: Position,
    /// Unuploaded entries deleted to make room.
    pub dropped: u64,
}

/// Entries read for upload.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Entry JSON objects, in order.
    pub entries: Vec<Vec<u8>>,
    /// Length of the JSON array of `entries`.
    pub body_len: usize,
    /// Position after the last record covered.
    pub end: Position,
}

/// An open queue. One process at a time (the agent holds a lock).
#[derive(Debug)]
pub(crate) struct Queue {
    dir: PathBuf,
    opts: QueueOptions,
    /// Never empty; the last one is being written.
    segments: Vec<Segment>,
    active: File,
    acked: Position,
    durable_end: Position,
    files: BTreeMap<String, FilePos>,
    durable_files: BTreeMap<String, FilePos>,
    unsynced: bool,
    scratch: Vec<u8>,
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`, recovering from a crash:
    /// each segment is cut at its first torn or corrupt record.
    pub(crate) fn open(dir: &Path, opts: QueueOptions) -> Result<Self, QueueError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        let state = read_state(dir)?.unwrap_or_default();
        let ids = list_segments(dir)?;
        let mut files = state.files;
        let mut segments = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let data = fs::read(&path).map_err(io_err("read", &path))?;
            let mut records = RecordIter::new(&data);
            for (offset, payload) in records.by_ref() {
                if (Position {
                    segment: id,
                    offset: offset as u64,
                }) < state.files_as_of
                {
                    continue;
                }
                if let Some(rec) = decode(payload) {
                    rec.apply(&mut files);
                }
            }
            let valid = records.valid_end();
            if valid < data.len() {
                tracing::warn!(
                    segment = %path.display(),
                    offset = valid,
                    cut_bytes = data.len() - valid,
                    "cut {} bytes of torn or corrupt data from queue segment {} at offset {valid}; the intact records before it are kept",
                    data.len() - valid,
                    path.display(),
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                f.set_len(valid as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err("truncate", &path))?;
            }
            if valid == 0 && i + 1 < ids.len() {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            segments.push(Segment {
                id,
                len: valid as u64,
            });
        }
        if segments.is_empty() {
            let id = state.acked.segment.max(state.files_as_of.segment) + 1;
            create_segment(dir, id)?;
            segments.push(Segment { id, len: 0 });
        }
        let last = segments[segments.len() - 1];
        let path = segment_path(dir, last.id);
        let active = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        // What a killed process left in the page cache is ours now: make it durable.
        active.sync_data().map_err(io_err("fsync", &path))?;
        let mut q = Self {
            dir: dir.to_owned(),
            opts,
            segments,
            active,
            acked: Position::default(),
            durable_end: Position::default(),
            durable_files: files.clone(),
            files,
            unsynced: false,
            scratch: Vec::new(),
        };
        q.acked = q.normalize(state.acked);
        q.durable_end = q.end();
        Ok(q)
    }

    /// Position after the last record written.
    fn end(&self) -> Position {
        self.segments[self.segments.len() - 1].end()
    }

    /// The canonical form of `pos`: within an existing segment, and at the
    /// start of the next segment rather than at the end of a closed one.
    fn normalize(&self, pos: Position) -> Position {
        for (i, s) in self.segments.iter().enumerate() {
            if s.id < pos.segment {
                continue;
            }
            if s.id > pos.segment {
                return Position {
                    segment: s.id,
                    offset: 0,
                };
            }
            let offset = pos.offset.min(s.len);
            return match self.segments.get(i + 1) {
                Some(next) if offset == s.len => Position {
                    segment: next.id,
                    offset: 0,
                },
                _ => Position {
                    segment: s.id,
                    offset,
                },
            };
        }
        self.end()
    }

    /// Bytes on disk in all segments.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Bytes of durable records not yet uploaded.
    pub(crate) fn pending_bytes(&self) -> u64 {
        let (from, to) = (self.acked, self.durable_end);
        self.segments
            .iter()
            .map(|s| {
                let lo = match s.id.cmp(&from.segment) {
                    std::cmp::Ordering::Less => s.len,
                    std::cmp::Ordering::Equal => from.offset,
                    std::cmp::Ordering::Greater => 0,
                };
                let hi = match s.id.cmp(&to.segment) {
                    std::cmp::Ordering::Less => s.len,
                    std::cmp::Ordering::Equal => to.offset,
                    std::cmp::Ordering::Greater => 0,
                };
                hi.saturating_sub(lo)
            })
            .sum()
    }

    /// Followed files' positions, as of the last record written.
    pub(crate) fn file_positions(&self) -> &BTreeMap<String, FilePos> {
        &self.files
    }

    /// Appends a record (not yet durable: see [`sync`](Self::sync)), first
    /// deleting the oldest segments if the queue would exceed its limit.
    pub(crate) fn append(&mut self, rec: &Record<'_>) -> Result<Appended, QueueError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        let result = encode(rec, &mut buf).and_then(|()| {
            let len = buf.len() - HEADER_LEN;
            let max =
                MAX_PAYLOAD.min(usize::try_from(self.opts.max_bytes / 2).unwrap_or(usize::MAX));
            if len > max {
                return Err(QueueError::TooLarge { size: len, max });
            }
            let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
            buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
            buf[4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
            self.write_record(&buf, rec)
        });
        self.scratch = buf;
        result
    }

    fn write_record(&mut self, buf: &[u8], rec: &Record<'_>) -> Result<Appended, QueueError> {
        let need = buf.len() as u64;
        let dropped = self.make_room(need)?;
        if self.end().offset >= self.opts.segment_bytes {
            self.roll()?;
        }
        let position = self.end();
        let path = segment_path(&self.dir, position.segment);
        self.unsynced = true;
        self.active.write_all(buf).map_err(io_err("write", &path))?;
        let last = self.segments.len() - 1;
        self.segments[last].len += need;
        rec.apply(&mut self.files);
        Ok(Appended { position, dropped })
    }

    /// Deletes the oldest segments until `need` more bytes fit; returns how
    /// many unuploaded entries went with them.
    fn make_room(&mut self, need: u64) -> Result<u64, QueueError> {
        let max = self.opts.max_bytes;
        let mut total = self.total_bytes();
        if total + need <= max {
            return Ok(0);
        }
        let mut victims = Vec::new();
        let mut dropped = 0;
        while total + need > max {
            if self.segments.len() == 1 {
                if self.segments[0].len == 0 {
                    break;
                }
                self.roll()?;
                continue;
            }
            let seg = self.segments.remove(0);
            if self.acked < seg.end() {
                dropped += self.count_unacked(seg)?;
            }
            total -= seg.len;
            victims.push(seg);
        }
        if victims.is_empty() {
            return Ok(dropped);
        }
        // The deleted segments carried file positions: the state file must
        // hold them (and every record must be durable) before they go.
        self.sync()?;
        self.acked = self.normalize(self.acked);
        self.write_state()?;
        for seg in victims {
            let path = segment_path(&self.dir, seg.id);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        sync_dir(&self.dir).map_err(io_err("fsync", &self.dir))?;
        Ok(dropped)
    }

    fn count_unacked(&self, seg: Segment) -> Result<u64, QueueError> {
        let from = match self.acked.segment.cmp(&seg.id) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => self.acked.offset as usize,
            std::cmp::Ordering::Greater => return Ok(0),
        };
        let path = segment_path(&self.dir, seg.id);
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        let n = RecordIter::new(&data)
            .filter(|&(offset, payload)| {
                offset >= from && decode(payload).and_then(|r| r.json()).is_some()
            })
            .count();
        Ok(n as u64)
    }

    /// Closes the segment being written and starts a new one.
    fn roll(&mut self) -> Result<(), QueueError> {
        self.sync()?;
        let id = self.end().segment + 1;
        self.active = create_segment(&self.dir, id)?;
        self.segments.push(Segment { id, len: 0 });
        Ok(())
    }

    /// Makes every record written so far durable (fsync) and visible to
    /// [`read_batch`](Self::read_batch).
    pub(crate) fn sync(&mut self) -> Result<(), QueueError> {
        if self.unsynced {
            let path = segment_path(&self.dir, self.end().segment);
            self.active.sync_data().map_err(io_err("fsync", &path))?;
            self.unsynced = false;
        }
        self.durable_end = self.end();
        if self.durable_files != self.files {
            self.durable_files.clone_from(&self.files);
        }
        Ok(())
    }

    /// Writes `state.json` atomically (temporary file, fsync, rename, fsync
    /// of the directory).
    fn write_state(&self) -> Result<(), QueueError> {
        let state = StateRef {
            version: 1,
            acked: self.acked,
            files_as_of: self.durable_end,
            files: &self.durable_files,
        };
        let json = serde_json::to_vec_pretty(&state)?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let path = self.dir.join(STATE_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir).map_err(io_err("fsync", &self.dir))
    }

    /// Reads the next durable, unacknowledged entries, as many as fit in a
    /// JSON array of `max_body` bytes (at least one).
    pub(crate) fn read_batch(&self, max_body: usize) -> Result<Batch, QueueError> {
        let mut batch = Batch {
            entries: Vec::new(),
            body_len: 2,
            end: self.acked,
        };
        let mut pos = self.acked;
        'segments: while pos < self.durable_end {
            let Some(idx) = self.segments.iter().position(|s| s.id == pos.segment) else {
                break;
            };
            let seg = self.segments[idx];
            let limit = if seg.id == self.durable_end.segment {
                self.durable_end.offset
            } else {
                seg.len
            };
            if pos.offset < limit {
                let path = segment_path(&self.dir, seg.id);
                let data = read_range(&path, pos.offset, limit)?;
                let mut records = RecordIter::new(&data);
                for (offset, payload) in records.by_ref() {
                    if let Some(json) = decode(payload).and_then(|r| r.json()) {
                        let add = json.len() + usize::from(!batch.entries.is_empty());
                        if !batch.entries.is_empty() && batch.body_len + add > max_body {
                            break 'segments;
                        }
                        batch.body_len += add;
                        batch.entries.push(json.to_vec());
                    }
                    let end = pos.offset + (offset + HEADER_LEN + payload.len()) as u64;
                    batch.end = Position {
                        segment: seg.id,
                        offset: end,
                    };
                }
                if records.valid_end() < data.len() {
                    tracing::warn!(segment = %path.display(), "skipping corrupt data in a queue segment");
                    batch.end = Position {
                        segment: seg.id,
                        offset: limit,
                    };
                }
            }
            match self.segments.get(idx + 1) {
                Some(next) if limit == seg.len => {
                    pos = Position {
                        segment: next.id,
                        offset: 0,
                    };
                    batch.end = pos;
                }
                _ => break,
            }
        }
        Ok(batch)
    }

    /// Marks everything before `to` as uploaded, persistently.
    pub(crate) fn ack(&mut self, to: Position) -> Result<(), QueueError> {
        let to = self.normalize(to);
        if to > self.acked {
            self.acked = to;
            self.write_state()?;
        }
        Ok(())
    }

    /// Makes everything durable and writes the state (at shutdown).
    pub(crate) fn close(&mut self) -> Result<(), QueueError> {
        self.sync()?;
        self.write_state()
    }
}

fn create_segment(dir: &Path, id: u64) -> Result<File, QueueError> {
    let path = segment_path(dir, id);
    let f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("create", &path))?;
    sync_dir(dir).map_err(io_err("fsync", dir))?;
    Ok(f)
}

fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, QueueError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    f.seek(SeekFrom::Start(from))
        .map_err(io_err("read", path))?;
    let mut data = Vec::with_capacity(usize::try_from(to - from).unwrap_or(0));
    f.take(to - from)
        .read_to_end(&mut data)
        .map_err(io_err("read", path))?;
    Ok(data)
}

#[cfg(test)]
mod tests;
