//! Segment files: the write-ahead log (`wal-<first seq>.log`, uncompressed
//! frames) and sealed segments (`seg-<first seq>.tsb`, zstd blocks + index).
//!
//! Sealed layout: `TLYSEG01`, then blocks (`BLK1 | u32 clen | u32 crc32c |
//! zstd bytes`), then the index (zstd JSON of the block metas), then the
//! footer `u64 index offset | u32 index len | u32 index crc | TLYEND01`.

use crate::StoreError;
use crate::index::BlockMeta;
use crate::record::{self, FRAME_HEADER, Frame, MAX_PAYLOAD, NewRecord, Record};
use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic at the start of a write-ahead-log file.
pub const WAL_MAGIC: &[u8; 8] = b"TLYWAL01";
/// Bytes before the first frame of a WAL file.
pub const WAL_HEADER: u64 = 16;
const SEG_MAGIC: &[u8; 8] = b"TLYSEG01";
const END_MAGIC: &[u8; 8] = b"TLYEND01";
const BLOCK_MAGIC: &[u8; 4] = b"BLK1";
const BLOCK_HEADER: usize = 12;
const FOOTER: u64 = 24;

/// File name of the WAL segment starting at `first_seq`.
pub fn wal_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// File name of the sealed segment starting at `first_seq`.
pub fn sealed_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.tsb")
}

/// Parses `wal-N.log` or `seg-N.tsb` into `(is_sealed, N)`.
pub fn parse_name(name: &str) -> Option<(bool, u64)> {
    if let Some(n) = name
        .strip_prefix("wal-")
        .and_then(|r| r.strip_suffix(".log"))
    {
        return n.parse().ok().map(|n| (false, n));
    }
    let n = name.strip_prefix("seg-")?.strip_suffix(".tsb")?;
    n.parse().ok().map(|n| (true, n))
}

fn io_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    let what = what.to_owned();
    move |source| StoreError::Io {
        what: format!("{what} {}", path.display()),
        source,
    }
}

/// Fsyncs a directory so that a create, rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

/// Where a segment's records live.
pub enum Body {
    /// Uncompressed frames; `chunks` lists the committed ones.
    Wal {
        /// Committed chunks, in order.
        chunks: RwLock<Vec<BlockMeta>>,
    },
    /// Compressed blocks.
    Sealed {
        /// Every block, in order.
        blocks: Vec<BlockMeta>,
    },
}

/// One segment file, open for reading.
pub struct Segment {
    /// Position of the first record the file may hold.
    pub first_seq: u64,
    /// Path of the file.
    pub path: PathBuf,
    file: File,
    /// Its records' layout.
    pub body: Body,
}

impl Segment {
    /// Opens an existing WAL file for reading with the given committed chunks.
    pub fn wal(path: PathBuf, first_seq: u64, chunks: Vec<BlockMeta>) -> Result<Self, StoreError> {
        let file = File::open(&path).map_err(io_err(&path, "open"))?;
        Ok(Self {
            first_seq,
            path,
            file,
            body: Body::Wal {
                chunks: RwLock::new(chunks),
            },
        })
    }

    /// True for a sealed segment.
    pub fn is_sealed(&self) -> bool {
        matches!(self.body, Body::Sealed { .. })
    }

    /// Last position held (0 if none yet).
    pub fn last_seq(&self) -> u64 {
        match &self.body {
            Body::Wal { chunks } => chunks.read().last().map_or(0, |c| c.last_seq),
            Body::Sealed { blocks } => blocks.last().map_or(0, |b| b.last_seq),
        }
    }

    /// Block summaries of blocks that may hold positions `>= from_seq`.
    pub fn blocks_from(&self, from_seq: u64) -> Vec<BlockMeta> {
        let pick = |v: &[BlockMeta]| {
            let i = v.partition_point(|b| b.last_seq < from_seq);
            v[i..].to_vec()
        };
        match &self.body {
            Body::Wal { chunks } => pick(&chunks.read()),
            Body::Sealed { blocks } => pick(blocks),
        }
    }

    /// Every block summary.
    pub fn all_blocks(&self) -> Vec<BlockMeta> {
        self.blocks_from(0)
    }

    /// Reads the bytes of one block as stored, unverified, into `buf`
    /// (replacing its contents): frames for a WAL chunk, the compressed
    /// block with its header for a sealed block. `buf` keeps its capacity,
    /// so a caller streaming a segment reuses one buffer.
    pub fn read_raw(&self, b: &BlockMeta, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        buf.clear();
        buf.resize(b.len as usize, 0);
        self.file
            .read_exact_at(buf, b.offset)
            .map_err(|source| StoreError::Io {
                what: format!(
                    "read {} bytes at byte {} of {}",
                    b.len,
                    b.offset,
                    self.path.display()
                ),
                source,
            })
    }

    /// Reads and verifies the records of one block.
    pub fn read_block(&self, b: &BlockMeta) -> Result<Vec<Record>, StoreError> {
        let mut buf = Vec::new();
        self.read_raw(b, &mut buf)?;
        let what = format!("{} block at byte {}", self.path.display(), b.offset);
        match &self.body {
            Body::Wal { .. } => record::decode_all(&buf, &what),
            Body::Sealed { .. } => {
                let raw = decode_block(&buf, b.raw_bytes as usize)
                    .map_err(|why| StoreError::Corrupt(format!("{what}: {why}")))?;
                record::decode_all(&raw, &what)
            }
        }
    }

    /// Opens a sealed segment, reading its index from the footer.
    pub fn open_sealed(path: PathBuf, first_seq: u64) -> Result<Self, StoreError> {
        let file = File::open(&path).map_err(io_err(&path, "open"))?;
        let blocks = read_index(&file)
            .map_err(|why| StoreError::Corrupt(format!("{}: {why}", path.display())))?;
        Ok(Self {
            first_seq,
            path,
            file,
            body: Body::Sealed { blocks },
        })
    }
}

fn decode_block(buf: &[u8], raw_hint: usize) -> Result<Vec<u8>, String> {
    if buf.len() < BLOCK_HEADER || &buf[..4] != BLOCK_MAGIC {
        return Err("bad block header".into());
    }
    let clen = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let data = buf
        .get(BLOCK_HEADER..BLOCK_HEADER + clen)
        .ok_or("block shorter than its header says")?;
    if crc32c::crc32c(data) != crc {
        return Err("block checksum mismatch".into());
    }
    zstd::bulk::decompress(data, raw_hint.max(1) + 1024).map_err(|e| format!("zstd: {e}"))
}

fn read_index(file: &File) -> Result<Vec<BlockMeta>, String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size < 8 + FOOTER {
        return Err("too short for a sealed segment".into());
    }
    let mut foot = [0u8; FOOTER as usize];
    file.read_exact_at(&mut foot, size - FOOTER)
        .map_err(|e| e.to_string())?;
    if &foot[16..24] != END_MAGIC {
        return Err("missing footer".into());
    }
    let off = u64::from_le_bytes(foot[0..8].try_into().map_err(|_| "footer")?);
    let len = u32::from_le_bytes(foot[8..12].try_into().map_err(|_| "footer")?) as u64;
    let crc = u32::from_le_bytes(foot[12..16].try_into().map_err(|_| "footer")?);
    if off.checked_add(len) != Some(size - FOOTER) {
        return Err("footer points outside the file".into());
    }
    let mut idx = vec![0u8; len as usize];
    file.read_exact_at(&mut idx, off)
        .map_err(|e| e.to_string())?;
    if crc32c::crc32c(&idx) != crc {
        return Err("index checksum mismatch".into());
    }
    let json = zstd::stream::decode_all(&idx[..]).map_err(|e| format!("index: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("index: {e}"))
}

/// The fields of a verified frame that sealing needs, borrowed from the
/// frame bytes (nothing is copied or allocated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead<'a> {
    /// Position of the record.
    pub seq: u64,
    /// Server receive time, Unix nanoseconds.
    pub time: i64,
    /// Public ID of the writing instance.
    pub instance: [u8; 32],
    /// Collection of the record.
    pub collection: &'a str,
    /// Tailnet of the record.
    pub owner: crate::record::Tenant<'a>,
    /// Bytes of the whole frame, header included.
    pub len: usize,
}

/// The outcome of [`check_frame`].
#[derive(Debug)]
pub enum FrameCheck<'a> {
    /// A valid frame.
    Valid(FrameHead<'a>),
    /// The slice ends before the frame does.
    Incomplete,
    /// The frame is damaged: bad length, checksum or payload.
    Corrupt(&'static str),
}

/// Offset of the collection length byte in a record payload: seq, time,
/// client time, flags, kind, proc_id, proc_seq, instance.
const COLLECTION_AT: usize = 8 + 8 + 8 + 1 + 1 + 4 + 8 + 32;

/// Verifies the frame at the start of `buf` exactly as
/// [`record::decode_frame`] does (length, CRC-32C, payload layout) but
/// without decoding it into an owned [`Record`].
pub fn check_frame(buf: &[u8]) -> FrameCheck<'_> {
    if buf.len() < FRAME_HEADER {
        return FrameCheck::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    // The smallest payload: fixed fields, empty collection, empty body.
    if !(COLLECTION_AT + 1 + 4..=MAX_PAYLOAD).contains(&len) {
        return FrameCheck::Corrupt("frame length out of range");
    }
    let Some(p) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return FrameCheck::Incomplete;
    };
    if crc32c::crc32c(p) != crc {
        return FrameCheck::Corrupt("checksum mismatch");
    }
    let malformed = FrameCheck::Corrupt("malformed record payload");
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let flags = p[24];
    let clen = p[COLLECTION_AT] as usize;
    let coll_end = COLLECTION_AT + 1 + clen;
    if flags > record::FLAG_IDENTITY | record::FLAG_OWNER {
        return malformed;
    }
    let (owner_range, body_len_at) = if flags & record::FLAG_OWNER != 0 {
        let Some(&tlen) = p.get(coll_end) else {
            return malformed;
        };
        let end = coll_end + 1 + tlen as usize;
        (Some(coll_end + 1..end), end)
    } else {
        (None, coll_end)
    };
    let Some(blen) = p.get(body_len_at..body_len_at + 4) else {
        return malformed;
    };
    let blen = u32::from_le_bytes([blen[0], blen[1], blen[2], blen[3]]) as usize;
    if body_len_at + 4 + blen != len {
        return malformed;
    }
    let Ok(collection) = std::str::from_utf8(&p[COLLECTION_AT + 1..coll_end]) else {
        return malformed;
    };
    let owner = match owner_range {
        None => crate::record::Tenant::Legacy,
        Some(r) => match std::str::from_utf8(&p[r]) {
            Ok("") => crate::record::Tenant::Unclaimed,
            Ok(t) => crate::record::Tenant::Tailnet(t),
            Err(_) => return malformed,
        },
    };
    let mut instance = [0u8; 32];
    instance.copy_from_slice(&p[COLLECTION_AT - 32..COLLECTION_AT]);
    FrameCheck::Valid(FrameHead {
        seq: u64_at(0),
        time: u64_at(8) as i64,
        instance,
        collection,
        owner,
        len: FRAME_HEADER + len,
    })
}

/// Writes sealed segments block by block.
pub struct SealedWriter {
    tmp: PathBuf,
    out: std::io::BufWriter<File>,
    pos: u64,
    block_target: usize,
    cur: Vec<u8>,
    cur_meta: BlockMeta,
    blocks: Vec<BlockMeta>,
    /// One zstd context for every block (creating one per block costs
    /// CPU and allocator churn).
    zstd: zstd::bulk::Compressor<'static>,
    /// Reused output buffer of `zstd`.
    zbuf: Vec<u8>,
    /// Reused record for [`BlockMeta::add`] in [`SealedWriter::push_frame`]:
    /// only its time, instance and collection are set.
    scratch: NewRecord,
}

impl SealedWriter {
    /// Starts writing `<final path>.tmp`.
    pub fn create(final_path: &Path, level: i32, block_target: usize) -> Result<Self, StoreError> {
        let tmp = final_path.with_extension("tsb.tmp");
        let f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        let mut out = std::io::BufWriter::with_capacity(256 << 10, f);
        out.write_all(SEG_MAGIC).map_err(io_err(&tmp, "write"))?;
        let zstd = zstd::bulk::Compressor::new(level).map_err(io_err(&tmp, "set up zstd for"))?;
        Ok(Self {
            tmp,
            out,
            pos: SEG_MAGIC.len() as u64,
            block_target,
            cur: Vec::with_capacity(block_target + (1 << 16)),
            cur_meta: BlockMeta::new(0),
            blocks: Vec::new(),
            zstd,
            zbuf: Vec::new(),
            scratch: NewRecord {
                time: 0,
                collection: String::new(),
                owner: crate::record::Owner::Unclaimed,
                instance: [0; 32],
                identity: None,
                client_time: None,
                kind: 0,
                body: Vec::new(),
            },
        })
    }

    /// Adds one record given as its already-encoded, verified frame (see
    /// [`check_frame`]); `head` describes that frame. The bytes are copied
    /// as they are: a sealed block holds the same frames as the WAL.
    pub fn push_frame(
        &mut self,
        frame: &[u8],
        head: &FrameHead<'_>,
        expiry: Option<i64>,
    ) -> Result<(), StoreError> {
        self.cur.extend_from_slice(frame);
        self.scratch.time = head.time;
        self.scratch.instance = head.instance;
        self.scratch.collection.clear();
        self.scratch.collection.push_str(head.collection);
        self.scratch.owner = head.owner.to_owned();
        self.cur_meta.add(head.seq, &self.scratch, frame.len());
        self.cur_meta.note_expiry(expiry);
        if self.cur.len() >= self.block_target {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Adds one record; `expiry` is when it may be deleted.
    pub fn push(&mut self, r: &Record, expiry: Option<i64>) -> Result<(), StoreError> {
        let before = self.cur.len();
        record::encode_frame(&mut self.cur, r.seq, &r.rec);
        self.cur_meta.add(r.seq, &r.rec, self.cur.len() - before);
        self.cur_meta.note_expiry(expiry);
        if self.cur.len() >= self.block_target {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), StoreError> {
        if self.cur_meta.count == 0 {
            return Ok(());
        }
        self.zbuf.clear();
        self.zbuf
            .reserve(zstd::zstd_safe::compress_bound(self.cur.len()));
        self.zstd
            .compress_to_buffer(&self.cur, &mut self.zbuf)
            .map_err(io_err(&self.tmp, "compress block for"))?;
        let z = &self.zbuf;
        let mut meta = std::mem::replace(&mut self.cur_meta, BlockMeta::new(0));
        meta.offset = self.pos;
        meta.len = (BLOCK_HEADER + z.len()) as u32;
        let mut hdr = [0u8; BLOCK_HEADER];
        hdr[..4].copy_from_slice(BLOCK_MAGIC);
        hdr[4..8].copy_from_slice(&(z.len() as u32).to_le_bytes());
        hdr[8..12].copy_from_slice(&crc32c::crc32c(z).to_le_bytes());
        self.out
            .write_all(&hdr)
            .and_then(|_| self.out.write_all(z))
            .map_err(io_err(&self.tmp, "write"))?;
        self.pos += meta.len as u64;
        self.blocks.push(meta);
        self.cur.clear();
        Ok(())
    }

    /// Number of records pushed so far.
    pub fn records(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.count)).sum::<u64>() + u64::from(self.cur_meta.count)
    }

    /// Writes the index and footer, fsyncs, and renames into place. Returns
    /// the block summaries.
    pub fn finish(mut self, final_path: &Path) -> Result<Vec<BlockMeta>, StoreError> {
        self.flush_block()?;
        let json = serde_json::to_vec(&self.blocks)
            .map_err(|e| StoreError::Corrupt(format!("index encoding: {e}")))?;
        let idx =
            zstd::bulk::compress(&json, 3).map_err(io_err(&self.tmp, "compress index for"))?;
        let mut foot = Vec::with_capacity(FOOTER as usize);
        foot.extend_from_slice(&self.pos.to_le_bytes());
        foot.extend_from_slice(&(idx.len() as u32).to_le_bytes());
        foot.extend_from_slice(&crc32c::crc32c(&idx).to_le_bytes());
        foot.extend_from_slice(END_MAGIC);
        self.out
            .write_all(&idx)
            .and_then(|_| self.out.write_all(&foot))
            .map_err(io_err(&self.tmp, "write"))?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.tmp, "flush")(e.into_error()))?;
        f.sync_all().map_err(io_err(&self.tmp, "fsync"))?;
        std::fs::rename(&self.tmp, final_path).map_err(io_err(final_path, "rename into"))?;
        if let Some(dir) = final_path.parent() {
            sync_dir(dir)?;
        }
        Ok(self.blocks)
    }

    /// Removes the temporary file (when nothing was written).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads every intact block of a sealed file from the start, stopping at the
/// first damaged one. Used to salvage a segment whose index is unreadable.
pub fn salvage_sealed(path: &Path) -> Result<(Vec<Record>, Option<String>), StoreError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path, "read"))?;
    if data.get(..8) != Some(SEG_MAGIC) {
        return Ok((Vec::new(), Some("no segment header".into())));
    }
    let mut at = 8;
    let mut out = Vec::new();
    while at + BLOCK_HEADER <= data.len() && &data[at..at + 4] == BLOCK_MAGIC {
        let clen =
            u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]) as usize;
        let end = (at + BLOCK_HEADER).saturating_add(clen).min(data.len());
        match decode_block(&data[at..end], 1 << 22)
            .and_then(|raw| record::decode_all(&raw, "salvage").map_err(|e| e.to_string()))
        {
            Ok(recs) => out.extend(recs),
            Err(why) => return Ok((out, Some(format!("damaged block at byte {at}: {why}")))),
        }
        at = end;
    }
    Ok((out, None))
}

/// The records of a WAL file up to its first damaged or torn frame.
pub struct WalScan {
    /// Position from the header.
    pub first_seq: u64,
    /// Intact records, with their frame offsets and lengths.
    pub records: Vec<(u64, usize, Record)>,
    /// Length of the intact prefix of the file.
    pub valid_len: u64,
    /// Total file length.
    pub file_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub damage: Option<String>,
}

/// Reads a WAL file, verifying every frame and the continuity of positions.
pub fn scan_wal(path: &Path) -> Result<WalScan, StoreError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path, "read"))?;
    let file_len = data.len() as u64;
    let name_seq = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_name)
        .map_or(0, |(_, n)| n);
    if data.len() < WAL_HEADER as usize || &data[..8] != WAL_MAGIC {
        return Ok(WalScan {
            first_seq: name_seq,
            records: Vec::new(),
            valid_len: 0,
            file_len,
            damage: Some("missing or torn WAL header".into()),
        });
    }
    let first_seq = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    let mut at = WAL_HEADER as usize;
    let mut records = Vec::new();
    let mut damage = None;
    let mut expect = first_seq;
    while at < data.len() {
        match record::decode_frame(&data[at..]) {
            Frame::Record(r, n) if r.seq == expect => {
                expect += 1;
                records.push((at as u64, n, r));
                at += n;
            }
            Frame::Record(r, _) => {
                damage = Some(format!(
                    "record at byte {at} has position {} where {expect} was expected",
                    r.seq
                ));
                break;
            }
            Frame::Incomplete => {
                damage = Some(format!("torn frame at byte {at}"));
                break;
            }
            Frame::Corrupt(why) => {
                damage = Some(format!("{why} at byte {at}"));
                break;
            }
        }
    }
    Ok(WalScan {
        first_seq,
        records,
        valid_len: at as u64,
        file_len,
        damage,
    })
}

/// Creates a new, empty WAL file starting at `first_seq` and returns it open for appending.
pub fn create_wal(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), StoreError> {
    let path = dir.join(wal_name(first_seq));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "create"))?;
    let mut hdr = Vec::with_capacity(16);
    hdr.extend_from_slice(WAL_MAGIC);
    hdr.extend_from_slice(&first_seq.to_le_bytes());
    f.write_all(&hdr)
        .and_then(|_| f.sync_all())
        .map_err(io_err(&path, "write header of"))?;
    sync_dir(dir)?;
    Ok((path, f))
}

/// Builds chunk summaries for WAL records (used on recovery).
pub fn chunks_of(records: &[(u64, usize, Record)], chunk_target: usize) -> Vec<BlockMeta> {
    let mut out: Vec<BlockMeta> = Vec::new();
    for (off, len, r) in records {
        let need_new = out.last().is_none_or(|c| c.len as usize >= chunk_target);
        if need_new {
            out.push(BlockMeta::new(*off));
        }
        if let Some(c) = out.last_mut() {
            c.add(r.seq, &r.rec, *len);
            c.len += *len as u32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_frame, kind};

    fn sample(i: u64) -> NewRecord {
        NewRecord {
            time: 1_000 + i as i64 * 7,
            collection: ["tailnode", "", "ü-col"][i as usize % 3].into(),
            owner: match i % 4 {
                0 => crate::record::Owner::Unclaimed,
                1 => crate::record::Owner::Legacy,
                _ => crate::record::Owner::tailnet(format!("tailnet-{}", i % 5)),
            },
            instance: [(i % 251) as u8; 32],
            identity: i.is_multiple_of(2).then_some((7, i)),
            client_time: i.is_multiple_of(3).then_some(5),
            kind: kind::LOG,
            body: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i as usize % 97)).into_bytes(),
        }
    }

    #[test]
    fn check_frame_agrees_with_decode_frame_on_every_damaged_byte() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, &sample(5));
        match check_frame(&buf) {
            FrameCheck::Valid(h) => {
                let r = sample(5);
                assert_eq!(
                    (h.seq, h.time, h.instance, h.collection, h.owner, h.len),
                    (
                        42,
                        r.time,
                        r.instance,
                        r.collection.as_str(),
                        r.owner.as_ref(),
                        buf.len()
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..buf.len() {
            assert!(matches!(check_frame(&buf[..cut]), FrameCheck::Incomplete));
        }
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let ours = matches!(check_frame(&bad), FrameCheck::Valid(_));
                let theirs = matches!(record::decode_frame(&bad), Frame::Record(..));
                assert_eq!(ours, theirs, "byte {byte} bit {bit}");
            }
        }
    }

    /// Malformed payloads with a valid checksum are refused like decode_frame refuses them.
    #[test]
    fn check_frame_refuses_malformed_payloads_with_valid_checksums() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, &sample(1));
        let reseal = |mut f: Vec<u8>| {
            let crc = crc32c::crc32c(&f[FRAME_HEADER..]);
            f[4..8].copy_from_slice(&crc.to_le_bytes());
            f
        };
        let mut cases = Vec::new();
        let mut flags = buf.clone();
        flags[FRAME_HEADER + 24] = 4;
        cases.push(reseal(flags));
        let mut clen = buf.clone();
        clen[FRAME_HEADER + COLLECTION_AT] = 200;
        cases.push(reseal(clen));
        let mut utf8 = buf.clone();
        utf8[FRAME_HEADER + COLLECTION_AT + 1] = 0xff;
        cases.push(reseal(utf8));
        for (i, f) in cases.iter().enumerate() {
            assert!(!matches!(check_frame(f), FrameCheck::Valid(_)), "case {i}");
            assert!(
                !matches!(record::decode_frame(f), Frame::Record(..)),
                "case {i}"
            );
        }
    }

    /// Copying frames gives the same file, byte for byte, as re-encoding decoded records.
    #[test]
    fn push_frame_writes_the_same_segment_as_push() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = Vec::new();
        for i in 0..3000 {
            encode_frame(&mut frames, i + 1, &sample(i));
        }
        let records = record::decode_all(&frames, "test").unwrap();
        let expiry = |r: &Record| (!r.seq.is_multiple_of(5)).then_some(r.rec.time + r.seq as i64);

        let a = dir.path().join("a.tsb");
        let mut w = SealedWriter::create(&a, 3, 4096).unwrap();
        for r in &records {
            w.push(r, expiry(r)).unwrap();
        }
        let blocks_a = w.finish(&a).unwrap();

        let b = dir.path().join("b.tsb");
        let mut w = SealedWriter::create(&b, 3, 4096).unwrap();
        let mut at = 0;
        for r in &records {
            let FrameCheck::Valid(h) = check_frame(&frames[at..]) else {
                panic!("frame at {at}");
            };
            w.push_frame(&frames[at..at + h.len], &h, expiry(r))
                .unwrap();
            at += h.len;
        }
        let blocks_b = w.finish(&b).unwrap();

        assert!(blocks_a.len() > 10);
        assert_eq!(blocks_a, blocks_b);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let seg = Segment::open_sealed(b, 1).unwrap();
        let mut back = Vec::new();
        for blk in seg.all_blocks() {
            back.extend(seg.read_block(&blk).unwrap());
        }
        assert_eq!(back, records);
    }
}
