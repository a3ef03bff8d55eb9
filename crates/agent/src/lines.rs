//! Line framing of byte streams (stdin, followed files).
//!
//! A [`LineSplitter`] cuts a stream into lines, hands over an unterminated
//! line in chunks of at most [`RAW_CHUNK`](crate::entry::RAW_CHUNK) bytes (cut
//! on a UTF-8 character boundary) so memory stays bounded, and records for
//! every line the stream offset after it and a checksum of the bytes just
//! before that offset (to recognise a rewritten file on resume).

use std::sync::Arc;

use crate::entry::{Level, Line, make_lines_with};

/// How many bytes before a position its fingerprint covers.
pub(crate) const FINGERPRINT_WINDOW: usize = 64;

/// One framed line or chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawLine {
    /// The bytes, without the `\n` or `\r\n` ending.
    pub bytes: Vec<u8>,
    /// This is a chunk of a longer line that goes on.
    pub continues: bool,
    /// Stream offset just after this line (its line ending included).
    pub end: u64,
    /// CRC-32C of the bytes before `end` (at most [`FINGERPRINT_WINDOW`]).
    pub fingerprint: u32,
    /// How many bytes `fingerprint` covers.
    pub fingerprint_len: u32,
}

/// Cuts a byte stream into lines.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    /// Bytes not yet handed over; `buf[0]` is at stream offset `consumed`.
    buf: Vec<u8>,
    /// How many leading bytes of `buf` are known to hold no newline.
    scanned: usize,
    /// The last bytes handed over before `buf[0]`.
    window: Vec<u8>,
    consumed: u64,
    max_chunk: usize,
}

/// CRC-32C of the last `FINGERPRINT_WINDOW` bytes of `window ++ data`.
pub(crate) fn fingerprint(window: &[u8], data: &[u8]) -> (u32, u32) {
    if data.len() >= FINGERPRINT_WINDOW {
        let tail = &data[data.len() - FINGERPRINT_WINDOW..];
        return (crc32c::crc32c(tail), FINGERPRINT_WINDOW as u32);
    }
    let from_window = window.len().min(FINGERPRINT_WINDOW - data.len());
    let head = &window[window.len() - from_window..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(head), data);
    (crc, (from_window + data.len()) as u32)
}

/// The longest prefix of `chunk` that does not end inside a UTF-8 sequence.
fn utf8_cut(chunk: &[u8]) -> usize {
    let len = chunk.len();
    for i in (len.saturating_sub(3)..len).rev() {
        let b = chunk[i];
        if b & 0xc0 == 0x80 {
            continue;
        }
        let want = match b {
            0xf0.. => 4,
            0xe0.. => 3,
            0xc0.. => 2,
            _ => 1,
        };
        if len - i < want && i > 0 {
            return i;
        }
        break;
    }
    len
}

impl LineSplitter {
    /// A splitter for a stream resumed at `offset`, `window` being the bytes
    /// just before it (empty at the start of a stream).
    pub(crate) fn new(offset: u64, window: Vec<u8>, max_chunk: usize) -> Self {
        let keep = window.len().saturating_sub(FINGERPRINT_WINDOW);
        Self {
            buf: Vec::new(),
            scanned: 0,
            window: window[keep..].to_vec(),
            consumed: offset,
            max_chunk,
        }
    }

    /// Stream offset after the last line handed over.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes received but not handed over (an unterminated line).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Fingerprint of the position [`consumed`](Self::consumed).
    pub(crate) fn fingerprint(&self) -> (u32, u32) {
        fingerprint(&self.window, &[])
    }

    fn emit(&self, start: usize, end: usize, complete: bool, out: &mut Vec<RawLine>) {
        let mut bytes = &self.buf[start..end];
        if complete {
            bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        }
        let (fp, fp_len) = fingerprint(&self.window, &self.buf[..end]);
        out.push(RawLine {
            bytes: bytes.to_vec(),
            continues: !complete,
            end: self.consumed + end as u64,
            fingerprint: fp,
            fingerprint_len: fp_len,
        });
    }

    fn compact(&mut self, upto: usize) {
        if upto == 0 {
            return;
        }
        let fp_window = &self.buf[..upto];
        let mut window = Vec::with_capacity(FINGERPRINT_WINDOW);
        if fp_window.len() < FINGERPRINT_WINDOW {
            let from_old = self.window.len().min(FINGERPRINT_WINDOW - fp_window.len());
            window.extend_from_slice(&self.window[self.window.len() - from_old..]);
            window.extend_from_slice(fp_window);
        } else {
            window.extend_from_slice(&fp_window[fp_window.len() - FINGERPRINT_WINDOW..]);
        }
        self.window = window;
        self.buf.drain(..upto);
        self.consumed += upto as u64;
        self.scanned = self.scanned.saturating_sub(upto);
    }

    /// Adds `data` and appends the lines it completes to `out`.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<RawLine>) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        let mut scan = self.scanned.max(start);
        loop {
            if let Some(i) = self.buf[scan..].iter().position(|&b| b == b'\n') {
                let end = scan + i + 1;
                self.emit(start, end, true, out);
                start = end;
                scan = end;
            } else if self.buf.len() - start >= self.max_chunk {
                let cut = start + utf8_cut(&self.buf[start..start + self.max_chunk]);
                self.emit(start, cut, false, out);
                start = cut;
                scan = cut;
            } else {
                break;
            }
        }
        self.scanned = self.buf.len();
        self.compact(start);
    }

    /// Hands over an unterminated last line, if any (end of stream).
    pub(crate) fn finish(&mut self, out: &mut Vec<RawLine>) {
        if !self.buf.is_empty() {
            let end = self.buf.len();
            self.emit(0, end, true, out);
            self.compact(end);
        }
    }
}

/// Numbers the parts of lines that arrive in several chunks and carries the
/// level of a line's first chunk over to the rest.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    part: u32,
    level: Option<u32>,
    /// Lines are taken as they are: no `[vN] ` prefix is looked for.
    no_levels: bool,
    /// Bytes the entries' other members take (a container's tags).
    extra: usize,
}

impl Parts {
    /// Resumes in the middle of a line of which `part` parts were taken.
    pub(crate) fn new(part: u32) -> Self {
        Self {
            part,
            ..Self::default()
        }
    }

    /// Like [`new`](Self::new), for a container's messages: no `[vN] `
    /// levels, and `extra` bytes of each entry taken by its tags.
    pub(crate) fn for_container(part: u32, extra: usize) -> Self {
        Self {
            part,
            level: None,
            no_levels: true,
            extra,
        }
    }

    /// Parts already taken of the current line.
    pub(crate) fn part(&self) -> u32 {
        self.part
    }

    /// The entries for `raw`.
    pub(crate) fn lines(
        &mut self,
        raw: &RawLine,
        source: &Arc<str>,
        client_time: i64,
    ) -> Vec<Line> {
        let level = if self.part == 0 && !self.no_levels {
            Level::FromPrefix
        } else {
            Level::Fixed(self.level)
        };
        let lines = make_lines_with(
            &raw.bytes,
            source,
            level,
            self.part,
            raw.continues,
            client_time,
            self.extra,
        );
        if self.part == 0 {
            self.level = lines.first().and_then(|l| l.v);
        }
        self.part = if raw.continues {
            self.part + lines.len() as u32
        } else {
            0
        };
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[RawLine]) -> Vec<&str> {
        lines
            .iter()
            .map(|l| std::str::from_utf8(&l.bytes).unwrap())
            .collect()
    }

    #[test]
    fn frames_lines_across_pushes_with_offsets() {
        let mut s = LineSplitter::new(100, Vec::new(), 1024);
        let mut out = Vec::new();
        s.push(b"one\r\ntw", &mut out);
        assert_eq!(texts(&out), ["one"]);
        assert_eq!(out[0].end, 105);
        assert_eq!(s.pending(), 2);
        s.push(b"o\n\nthree", &mut out);
        assert_eq!(texts(&out), ["one", "two", ""]);
        assert_eq!((out[1].end, out[2].end, s.consumed()), (109, 110, 110));
        s.finish(&mut out);
        assert_eq!(texts(&out), ["one", "two", "", "three"]);
        assert_eq!(s.consumed(), 115);
        assert!(out.iter().all(|l| !l.continues));
    }

    #[test]
    fn long_lines_come_in_chunks_cut_on_char_boundaries() {
        let mut s = LineSplitter::new(0, Vec::new(), 10);
        let mut out = Vec::new();
        // "é" is two bytes: a cut at 10 bytes would split the fifth one.
        s.push("aéééééé".as_bytes(), &mut out);
        assert_eq!(texts(&out), ["aéééé"]);
        s.push(b"\n", &mut out);
        assert_eq!(texts(&out), ["aéééé", "éé"]);
        assert!(out[0].continues && !out[1].continues);
        assert_eq!(out[0].end, 9);
        assert_eq!(out[1].end, 14);
    }

    #[test]
    fn fingerprints_cover_the_bytes_before_each_end() {
        let data: Vec<u8> = (0..200u8)
            .map(|i| if i % 50 == 49 { b'\n' } else { b'a' + i % 26 })
            .collect();
        let mut s = LineSplitter::new(0, Vec::new(), 1024);
        let mut out = Vec::new();
        // Feed byte by byte: the window must carry across pushes.
        for b in &data {
            s.push(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out.len(), 4);
        for l in &out {
            let end = l.end as usize;
            let from = end.saturating_sub(FINGERPRINT_WINDOW);
            assert_eq!(
                (l.fingerprint, l.fingerprint_len as usize),
                (crc32c::crc32c(&data[from..end]), end - from)
            );
        }
        let (fp, n) = s.fingerprint();
        assert_eq!((fp, n as usize), (crc32c::crc32c(&data[200 - 64..]), 64));
    }
}
