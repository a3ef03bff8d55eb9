//! Segment files: writing a sealed window, reading trailers, footers and
//! blocks back, salvaging a file whose footer is damaged.

use crate::FlowError;
use crate::block::{self, BlockMeta};
use crate::codec::{Bad, Reader, put_iv, put_str, put_uv};
use crate::columns::{Columns, Window};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic at the start of a segment file.
pub(crate) const FILE_MAGIC: &[u8; 8] = b"TLYFLW01";
/// Magic at the very end of a segment file.
pub(crate) const END_MAGIC: &[u8; 8] = b"TLYFLWND";
/// Magic of each block header.
pub(crate) const BLOCK_MAGIC: &[u8; 4] = b"FBK1";
/// Header: magic, u32 format version, u32 reserved.
pub(crate) const HEADER_LEN: u64 = 16;
/// Block header: magic, u32 compressed length, u32 raw length, u32 CRC-32C
/// of the compressed bytes, u32 entries.
pub(crate) const BLOCK_HEADER: usize = 20;
/// Fixed trailer at the end of the file.
pub(crate) const TRAILER_LEN: u64 = 96;
const FORMAT_VERSION: u32 = 1;
const FOOTER_VERSION: u64 = 1;
/// Refuse to decompress more than this per block or footer.
const MAX_RAW: u32 = 256 << 20;

pub(crate) fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> FlowError {
    let what = format!("{what} {}", path.display());
    move |source| FlowError::Io { what, source }
}

/// Fsyncs a directory so that a create, rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FlowError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Directory name of a tailnet: bytes outside `[A-Za-z0-9_-]` become `%XX`.
pub(crate) fn tailnet_dir_name(t: &str) -> String {
    let mut s = String::with_capacity(t.len());
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The tailnet ID of a directory name made by [`tailnet_dir_name`].
pub(crate) fn parse_tailnet_dir(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let t = String::from_utf8(out).ok()?;
    (!t.is_empty() && tailnet_dir_name(&t) == name).then_some(t)
}

/// File name of part `part` of the window starting at `start` (Unix ns, a
/// whole second): `<unix seconds>.flw`, then `<unix seconds>.<part>.flw`.
pub(crate) fn file_name(start: i64, part: u32) -> String {
    let secs = start.div_euclid(1_000_000_000);
    if part == 0 {
        format!("{secs}.flw")
    } else {
        format!("{secs}.{part}.flw")
    }
}

/// `(window start in ns, part)` of a name made by [`file_name`].
pub(crate) fn parse_file_name(name: &str) -> Option<(i64, u32)> {
    let stem = name.strip_suffix(".flw")?;
    let (secs, part) = match stem.split_once('.') {
        Some((s, p)) => (s, p.parse::<u32>().ok().filter(|p| *p > 0)?),
        None => (stem, 0),
    };
    let secs: i64 = secs.parse().ok()?;
    let start = secs.checked_mul(1_000_000_000)?;
    (file_name(start, part) == name).then_some((start, part))
}

/// What the catalog knows of a sealed file (from its trailer).
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    /// Unique while the process runs (footer cache key).
    pub id: u64,
    pub tailnet: String,
    pub window_start: i64,
    pub window_end: i64,
    pub part: u32,
    pub path: PathBuf,
    pub bytes: u64,
    pub entries: u64,
    pub blocks: u32,
    pub min_start: i64,
    pub max_start: i64,
    pub max_end: i64,
    pub seq_min: u64,
    pub seq_max: u64,
    pub footer_off: u64,
    pub footer_len: u32,
    pub footer_crc: u32,
    /// The object's key when the file lives in the bucket (`path` is then
    /// not used: the bytes come through the bucket's cache).
    pub remote: Option<String>,
}

/// The decoded footer: one index entry per block.
#[derive(Debug, Clone)]
pub(crate) struct Footer {
    pub blocks: Vec<BlockMeta>,
}

impl Footer {
    pub(crate) fn mem_bytes(&self) -> usize {
        64 + self.blocks.iter().map(BlockMeta::mem_bytes).sum::<usize>()
    }
}

/// Tuning of the writer.
pub(crate) struct WriteOpts {
    pub block_entries: usize,
    pub zstd_level: i32,
}

/// Orders the records of a window for sealing: by node ID, start, seq.
fn sorted_order(cols: &Columns) -> Vec<u32> {
    let mut by_name: Vec<u32> = (0..cols.nodes.len() as u32).collect();
    by_name.sort_by(|a, b| cols.nodes[*a as usize].cmp(&cols.nodes[*b as usize]));
    let mut rank = vec![0u32; cols.nodes.len()];
    for (r, n) in by_name.iter().enumerate() {
        rank[*n as usize] = r as u32;
    }
    let mut order: Vec<u32> = (0..cols.recs.len() as u32).collect();
    order.sort_by_key(|&i| {
        let r = &cols.recs[i as usize];
        (
            rank.get(r.node as usize).copied().unwrap_or(0),
            r.start,
            r.seq,
            r.end,
            r.logged,
            i,
        )
    });
    order
}

/// Cuts the sorted records into blocks of about `target` entries, keeping
/// records whole and, where it costs at most half a block, node runs too.
fn cut_blocks(cols: &Columns, order: &[u32], target: usize) -> Vec<std::ops::Range<usize>> {
    let rec = |i: usize| &cols.recs[order[i] as usize];
    // Entries of the node run starting at each record that starts one.
    let mut run_entries = vec![0usize; order.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let mut n = 0;
        while j < order.len() && rec(j).node == rec(i).node {
            n += rec(j).len as usize;
            j += 1;
        }
        run_entries[i] = n;
        i = j;
    }
    let mut out = Vec::new();
    let (mut from, mut cur) = (0usize, 0usize);
    for (i, run) in run_entries.iter().enumerate() {
        let new_node = i == 0 || rec(i).node != rec(i - 1).node;
        let cut =
            cur > 0 && (cur >= target || (new_node && cur >= target / 2 && cur + run > target));
        if cut {
            out.push(from..i);
            from = i;
            cur = 0;
        }
        cur += rec(i).len as usize;
    }
    if from < order.len() {
        out.push(from..order.len());
    }
    out
}

/// Writes `w` as `dir/<name>`: to `<name>.tmp` first, fsynced, then renamed
/// and the directory fsynced. Returns the catalog entry (id 0).
pub(crate) fn write_window(dir: &Path, w: &Window, o: &WriteOpts) -> Result<FileMeta, FlowError> {
    let path = dir.join(file_name(w.start, w.part));
    let tmp = dir.join(format!("{}.tmp", file_name(w.start, w.part)));
    let res = write_file(&tmp, &path, w, o);
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn write_file(tmp: &Path, path: &Path, w: &Window, o: &WriteOpts) -> Result<FileMeta, FlowError> {
    let cols = &w.cols;
    let order = sorted_order(cols);
    let f = File::create(tmp).map_err(io_err("create", tmp))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
    let wr = |e| io_err("write", tmp)(e);
    let mut head = Vec::with_capacity(HEADER_LEN as usize);
    head.extend_from_slice(FILE_MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    out.write_all(&head).map_err(wr)?;
    let mut pos = HEADER_LEN;
    let mut zstd =
        zstd::bulk::Compressor::new(o.zstd_level).map_err(io_err("set up zstd for", tmp))?;
    let mut metas = Vec::new();
    for range in cut_blocks(cols, &order, o.block_entries.max(1)) {
        let ids = &order[range];
        let raw = block::encode(cols, ids);
        let z = zstd
            .compress(&raw)
            .map_err(io_err("compress a block of", tmp))?;
        let mut m = BlockMeta::of_records(cols, ids.iter().map(|&i| &cols.recs[i as usize]));
        let too_big = || FlowError::InvalidInput("a block exceeds 4 GiB".into());
        m.offset = pos;
        m.clen = u32::try_from(z.len()).map_err(|_| too_big())?;
        m.raw_len = u32::try_from(raw.len()).map_err(|_| too_big())?;
        m.crc = crc32c::crc32c(&z);
        let mut h = [0u8; BLOCK_HEADER];
        h[..4].copy_from_slice(BLOCK_MAGIC);
        h[4..8].copy_from_slice(&m.clen.to_le_bytes());
        h[8..12].copy_from_slice(&m.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&m.crc.to_le_bytes());
        h[16..20].copy_from_slice(&m.entries.to_le_bytes());
        out.write_all(&h)
            .and_then(|_| out.write_all(&z))
            .map_err(wr)?;
        pos += (BLOCK_HEADER + z.len()) as u64;
        metas.push(m);
    }
    // Footer.
    let mut idx = Vec::new();
    put_uv(&mut idx, FOOTER_VERSION);
    put_str(&mut idx, &w.tailnet);
    put_iv(&mut idx, w.start);
    put_iv(&mut idx, w.end);
    put_uv(&mut idx, metas.len() as u64);
    for m in &metas {
        m.write(&mut idx);
    }
    let zi = zstd
        .compress(&idx)
        .map_err(io_err("compress the footer of", tmp))?;
    let mut foot = Vec::with_capacity(zi.len() + 4);
    foot.extend_from_slice(&(idx.len() as u32).to_le_bytes());
    foot.extend_from_slice(&zi);
    let footer_off = pos;
    let footer_len = foot.len() as u32;
    let footer_crc = crc32c::crc32c(&foot);
    out.write_all(&foot).map_err(wr)?;
    let entries = cols.ents.len() as u64;
    let mut meta = FileMeta {
        id: 0,
        tailnet: w.tailnet.clone(),
        window_start: w.start,
        window_end: w.end,
        part: w.part,
        path: path.to_path_buf(),
        bytes: 0,
        entries,
        blocks: metas.len() as u32,
        min_start: w.min_start,
        max_start: w.max_start,
        max_end: metas.iter().map(|m| m.max_end).max().unwrap_or(i64::MIN),
        seq_min: w.seq_min,
        seq_max: w.seq_max,
        footer_off,
        footer_len,
        footer_crc,
        remote: None,
    };
    let trailer = encode_trailer(&meta);
    out.write_all(&trailer).map_err(wr)?;
    meta.bytes = footer_off + u64::from(footer_len) + TRAILER_LEN;
    let f = out
        .into_inner()
        .map_err(|e| io_err("flush", tmp)(e.into_error()))?;
    f.sync_all().map_err(io_err("fsync", tmp))?;
    drop(f);
    std::fs::rename(tmp, path).map_err(io_err("rename into", path))?;
    sync_dir(dir_of(path))?;
    Ok(meta)
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

fn encode_trailer(m: &FileMeta) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER_LEN as usize);
    t.extend_from_slice(&m.footer_off.to_le_bytes());
    t.extend_from_slice(&m.footer_len.to_le_bytes());
    t.extend_from_slice(&m.footer_crc.to_le_bytes());
    t.extend_from_slice(&m.entries.to_le_bytes());
    t.extend_from_slice(&m.min_start.to_le_bytes());
    t.extend_from_slice(&m.max_start.to_le_bytes());
    t.extend_from_slice(&m.max_end.to_le_bytes());
    t.extend_from_slice(&m.seq_min.to_le_bytes());
    t.extend_from_slice(&m.seq_max.to_le_bytes());
    t.extend_from_slice(&m.window_start.to_le_bytes());
    t.extend_from_slice(&m.window_end.to_le_bytes());
    t.extend_from_slice(&m.blocks.to_le_bytes());
    let crc = crc32c::crc32c(&t);
    t.extend_from_slice(&crc.to_le_bytes());
    t.extend_from_slice(END_MAGIC);
    t
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> FlowError {
    FlowError::Corrupt(format!("{}: {what}", path.display()))
}

/// Reads and checks the header and trailer of a sealed file.
pub(crate) fn read_trailer(path: &Path, tailnet: &str, part: u32) -> Result<FileMeta, FlowError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let len = f.metadata().map_err(io_err("stat", path))?.len();
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(corrupt(path, "too short for a segment file"));
    }
    let mut head = [0u8; HEADER_LEN as usize];
    f.read_exact_at(&mut head, 0)
        .map_err(io_err("read", path))?;
    if &head[..8] != FILE_MAGIC {
        return Err(corrupt(path, "not a flow segment file (bad magic)"));
    }
    let mut t = [0u8; TRAILER_LEN as usize];
    f.read_exact_at(&mut t, len - TRAILER_LEN)
        .map_err(io_err("read", path))?;
    if &t[88..96] != END_MAGIC {
        return Err(corrupt(path, "trailer missing (bad end magic)"));
    }
    let u64at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&t[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let u32at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&t[i..i + 4]);
        u32::from_le_bytes(b)
    };
    if crc32c::crc32c(&t[..84]) != u32at(84) {
        return Err(corrupt(path, "trailer checksum mismatch"));
    }
    let m = FileMeta {
        id: 0,
        tailnet: tailnet.to_owned(),
        window_start: u64at(64) as i64,
        window_end: u64at(72) as i64,
        part,
        path: path.to_path_buf(),
        bytes: len,
        entries: u64at(16),
        blocks: u32at(80),
        min_start: u64at(24) as i64,
        max_start: u64at(32) as i64,
        max_end: u64at(40) as i64,
        seq_min: u64at(48),
        seq_max: u64at(56),
        footer_off: u64at(0),
        footer_len: u32at(8),
        footer_crc: u32at(12),
        remote: None,
    };
    if m.footer_off < HEADER_LEN || m.footer_off + u64::from(m.footer_len) + TRAILER_LEN != len {
        return Err(corrupt(path, "trailer points outside the file"));
    }
    Ok(m)
}

/// Reads and checks the footer of a file whose trailer was read (`path`:
/// where its bytes are, `m.path` or the bucket's cached copy).
pub(crate) fn read_footer(m: &FileMeta, f: &File, path: &Path) -> Result<Footer, FlowError> {
    let mut buf = vec![0u8; m.footer_len as usize];
    f.read_exact_at(&mut buf, m.footer_off)
        .map_err(io_err("read", path))?;
    if crc32c::crc32c(&buf) != m.footer_crc {
        return Err(corrupt(path, "footer checksum mismatch"));
    }
    if buf.len() < 4 {
        return Err(corrupt(path, "footer too short"));
    }
    let raw_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if raw_len > MAX_RAW {
        return Err(corrupt(path, "footer too large"));
    }
    let raw = zstd::bulk::decompress(&buf[4..], raw_len as usize)
        .map_err(|e| corrupt(path, format!("footer does not decompress: {e}")))?;
    parse_footer(&raw, m).map_err(|b| corrupt(path, format!("footer: {}", b.0)))
}

fn parse_footer(raw: &[u8], m: &FileMeta) -> Result<Footer, Bad> {
    let mut r = Reader::new(raw);
    if r.uv()? != FOOTER_VERSION {
        return Err(Bad("unknown footer version"));
    }
    let tailnet = r.string()?;
    let start = r.iv()?;
    let _end = r.iv()?;
    if tailnet != m.tailnet || start != m.window_start {
        return Err(Bad("footer names another tailnet or window"));
    }
    let n = r.count(8)?;
    let mut blocks = Vec::with_capacity(n);
    for _ in 0..n {
        let b = BlockMeta::read(&mut r)?;
        if b.offset < HEADER_LEN
            || b.offset + BLOCK_HEADER as u64 + u64::from(b.clen) > m.footer_off
        {
            return Err(Bad("block outside the file"));
        }
        blocks.push(b);
    }
    Ok(Footer { blocks })
}

/// Reads, checks and decodes one block with a reusable zstd context. The
/// error says what is wrong.
pub(crate) fn read_block_with(
    f: &File,
    b: &BlockMeta,
    z: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Columns, String> {
    let mut buf = read_checked(f, b)?;
    let raw = z
        .decompress(&buf[BLOCK_HEADER..], b.raw_len as usize)
        .map_err(|e| format!("block does not decompress: {e}"))?;
    buf.clear();
    if raw.len() != b.raw_len as usize {
        return Err("block length mismatch".into());
    }
    block::decode(&raw).map_err(|b| format!("block does not decode: {}", b.0))
}

fn read_checked(f: &File, b: &BlockMeta) -> Result<Vec<u8>, String> {
    if b.raw_len > MAX_RAW {
        return Err("block too large".into());
    }
    let mut buf = vec![0u8; BLOCK_HEADER + b.clen as usize];
    f.read_exact_at(&mut buf, b.offset)
        .map_err(|e| format!("read: {e}"))?;
    let (h, z) = buf.split_at(BLOCK_HEADER);
    if &h[..4] != BLOCK_MAGIC {
        return Err("bad block magic".into());
    }
    if crc32c::crc32c(z) != b.crc || h[12..16] != b.crc.to_le_bytes() {
        return Err("block checksum mismatch".into());
    }
    Ok(buf)
}

fn decode_z(z: &[u8], raw_len: u32) -> Result<Columns, String> {
    let raw = zstd::bulk::decompress(z, raw_len as usize)
        .map_err(|e| format!("block does not decompress: {e}"))?;
    if raw.len() != raw_len as usize {
        return Err("block length mismatch".into());
    }
    block::decode(&raw).map_err(|b| format!("block does not decode: {}", b.0))
}

/// Rebuilds the catalog entry and footer of a file whose trailer or footer
/// is damaged by reading its blocks from the start, stopping at the first
/// damaged one. Returns what was recovered and what was lost.
pub(crate) fn salvage(
    path: &Path,
    tailnet: &str,
    start: i64,
    end: i64,
    part: u32,
) -> Result<(FileMeta, Footer, Option<String>), FlowError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let len = f.metadata().map_err(io_err("stat", path))?.len();
    let mut pos = HEADER_LEN;
    let mut head = [0u8; HEADER_LEN as usize];
    let mut blocks = Vec::new();
    let mut lost = None;
    if len < HEADER_LEN || f.read_exact_at(&mut head, 0).is_err() || &head[..8] != FILE_MAGIC {
        lost = Some("no valid header".to_owned());
    }
    let mut meta = FileMeta {
        id: 0,
        tailnet: tailnet.to_owned(),
        window_start: start,
        window_end: end,
        part,
        path: path.to_path_buf(),
        bytes: len,
        entries: 0,
        blocks: 0,
        min_start: i64::MAX,
        max_start: i64::MIN,
        max_end: i64::MIN,
        seq_min: u64::MAX,
        seq_max: 0,
        footer_off: 0,
        footer_len: 0,
        footer_crc: 0,
        remote: None,
    };
    while lost.is_none() && pos + BLOCK_HEADER as u64 <= len {
        let mut h = [0u8; BLOCK_HEADER];
        if f.read_exact_at(&mut h, pos).is_err() || &h[..4] != BLOCK_MAGIC {
            // The footer (or garbage) follows the last block.
            break;
        }
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (clen, raw_len, crc) = (word(4), word(8), word(12));
        if pos + (BLOCK_HEADER as u64) + u64::from(clen) > len || raw_len > MAX_RAW {
            lost = Some(format!("block at {pos} runs past the end"));
            break;
        }
        let mut z = vec![0u8; clen as usize];
        if let Err(e) = f.read_exact_at(&mut z, pos + BLOCK_HEADER as u64) {
            lost = Some(format!("block at {pos}: {e}"));
            break;
        }
        if crc32c::crc32c(&z) != crc {
            lost = Some(format!("block at {pos}: checksum mismatch"));
            break;
        }
        let cols = match decode_z(&z, raw_len) {
            Ok(c) => c,
            Err(e) => {
                lost = Some(format!("block at {pos}: {e}"));
                break;
            }
        };
        let mut m = BlockMeta::of_records(&cols, cols.recs.iter());
        m.offset = pos;
        m.clen = clen;
        m.raw_len = raw_len;
        m.crc = crc;
        meta.entries += u64::from(m.entries);
        meta.min_start = meta.min_start.min(m.min_start);
        meta.max_start = meta.max_start.max(m.max_start);
        meta.max_end = meta.max_end.max(m.max_end);
        meta.seq_min = meta.seq_min.min(m.seq_min);
        meta.seq_max = meta.seq_max.max(m.seq_max);
        blocks.push(m);
        pos += BLOCK_HEADER as u64 + u64::from(clen);
    }
    meta.blocks = blocks.len() as u32;
    if blocks.is_empty() && lost.is_none() {
        lost = Some("no block could be read".into());
    }
    Ok((meta, Footer { blocks }, lost))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ["example.com", "T1234", "a/b", "..", "é", "%41"] {
            let d = tailnet_dir_name(t);
            assert!(!d.contains('/') && !d.starts_with('.'), "{d}");
            assert_eq!(parse_tailnet_dir(&d).as_deref(), Some(t));
        }
        assert_eq!(parse_tailnet_dir("a%2"), None);
        assert_eq!(parse_tailnet_dir("a%2f"), None, "lowercase hex is not ours");
        for (s, p) in [
            (0i64, 0u32),
            (3_600_000_000_000, 0),
            (7_200_000_000_000, 3),
            (-5_000_000_000, 1),
        ] {
            assert_eq!(parse_file_name(&file_name(s, p)), Some((s, p)));
        }
        assert_eq!(parse_file_name("3600.0.flw"), None);
        assert_eq!(parse_file_name("3600.flw.tmp"), None);
    }
}
