//! Log entries: from raw line bytes to logtail JSON entries.
//!
//! An entry is `{"logtail":{"client_time","proc_id","proc_seq"},"source","text"}`
//! plus `"v"` (verbosity, from a `[vN] ` prefix or `--level`), `"part"` (for a
//! line split over several entries) and `"invalid_utf8":true` (the text was
//! converted lossily) when they apply.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use tally_proto::logtail::MAX_ENTRY_BYTES;
use tally_proto::timefmt;

use crate::queue::FilePos;

/// Room kept in an entry for everything but the text (logtail member, keys,
/// numbers) besides the source's own escaped length.
const ENTRY_OVERHEAD: usize = 1024;

/// Raw bytes of an unterminated line that a source hands over at once; the
/// rest of the line follows in the next parts.
pub(crate) const RAW_CHUNK: usize = 250 * 1024;

/// Largest `N` accepted in a `[vN] ` prefix.
const MAX_LEVEL: u32 = 99;

/// One log line (or part of one), ready to be numbered and queued.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The text, without its line ending or `[vN] ` prefix.
    pub text: String,
    /// `stdin`, `cli` or the followed file's path.
    pub source: Arc<str>,
    /// Verbosity level.
    pub v: Option<u32>,
    /// The text was not valid UTF-8 and was converted lossily.
    pub invalid_utf8: bool,
    /// Part number (from 1) when the line was split.
    pub part: Option<u32>,
    /// When the line was read, Unix nanoseconds.
    pub client_time: i64,
    /// For a followed file: the position after this line, stored with it.
    pub file: Option<FilePos>,
    /// For a container's log: its tags, the line's stream and a note.
    pub container: Option<Box<ContainerLine>>,
}

/// What a container log file's entries carry besides their text (see
/// [`crate::containers`]): `"container":{runtime, id, name, image, ...,
/// stream[, note]}`.
#[derive(Debug)]
pub(crate) struct ContainerTags {
    /// The log file's path: the key of its position in the queue (the
    /// entry's `source` is `container`).
    pub key: Arc<str>,
    /// The container's members (`runtime`, `id`, `name`, `image`, ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Escaped JSON length of `fields`, taken from the text's budget.
    pub json_len: usize,
}

impl ContainerTags {
    /// Tags of the log file `key` with `fields`.
    pub(crate) fn new(key: Arc<str>, fields: serde_json::Map<String, serde_json::Value>) -> Self {
        let json_len = serde_json::to_vec(&fields).map_or(4096, |v| v.len());
        Self {
            key,
            fields,
            json_len,
        }
    }
}

/// One container log entry's own members.
#[derive(Debug, Clone)]
pub(crate) struct ContainerLine {
    /// The container's (the file's) tags.
    pub tags: Arc<ContainerTags>,
    /// `stdout` or `stderr`, when the line said.
    pub stream: Option<&'static str>,
    /// Why the line is kept as read (not in the runtime's format).
    pub note: Option<&'static str>,
}

impl Line {
    /// A line the agent itself writes to the node's log, from `source`, at
    /// `at` (Unix ns).
    pub(crate) fn note(source: &str, text: String, at: i64) -> Line {
        Line {
            text,
            source: std::sync::Arc::from(source),
            v: None,
            invalid_utf8: false,
            part: None,
            client_time: at,
            file: None,
            container: None,
        }
    }
}

/// How the verbosity level of a line is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// From a `[vN] ` prefix of the line, if any.
    FromPrefix,
    /// Given by the caller; the line is taken as is.
    Fixed(Option<u32>),
}

/// Splits a `[vN] ` prefix off `bytes`.
pub(crate) fn split_level(bytes: &[u8]) -> (Option<u32>, &[u8]) {
    let Some(rest) = bytes.strip_prefix(b"[v") else {
        return (None, bytes);
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=2).contains(&digits) || !rest[digits..].starts_with(b"] ") {
        return (None, bytes);
    }
    let n = rest[..digits]
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if n > MAX_LEVEL {
        return (None, bytes);
    }
    (Some(n), &rest[digits + 2..])
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn escaped_str_len(s: &str) -> usize {
    s.chars().map(escaped_len).sum()
}

/// How many escaped bytes of text fit in one entry from `source` whose
/// other members take `extra` bytes.
fn text_budget(source: &str, extra: usize) -> usize {
    MAX_ENTRY_BYTES
        .saturating_sub(ENTRY_OVERHEAD + escaped_str_len(source) + extra)
        .max(1024)
}

/// Splits `text` into pieces whose JSON-escaped length is at most `budget`.
/// Always returns at least one piece.
pub(crate) fn split_text(text: &str, budget: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let n = escaped_len(c);
        if used + n > budget && i > start {
            pieces.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += n;
    }
    pieces.push(&text[start..]);
    pieces
}

/// Turns the bytes of one line (or of one chunk of a long line) into entries.
///
/// `first_part` is how many parts of this line were already produced, and
/// `continues` says the line goes on in a later chunk; parts are numbered
/// whenever the line is split at all. The `[vN] ` prefix is only looked for
/// at the start of a line.
pub(crate) fn make_lines(
    bytes: &[u8],
    source: &Arc<str>,
    level: Level,
    first_part: u32,
    continues: bool,
    client_time: i64,
) -> Vec<Line> {
    make_lines_with(bytes, source, level, first_part, continues, client_time, 0)
}

/// [`make_lines`] for entries whose other members (a container's tags)
/// take `extra` bytes of the entry.
pub(crate) fn make_lines_with(
    bytes: &[u8],
    source: &Arc<str>,
    level: Level,
    first_part: u32,
    continues: bool,
    client_time: i64,
    extra: usize,
) -> Vec<Line> {
    let (v, body) = match level {
        Level::FromPrefix if first_part == 0 => split_level(bytes),
        Level::FromPrefix => (None, bytes),
        Level::Fixed(v) => (v, bytes),
    };
    let (text, invalid_utf8) = match std::str::from_utf8(body) {
        Ok(s) => (Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(body), true),
    };
    let pieces = split_text(&text, text_budget(source, extra));
    let numbered = first_part > 0 || continues || pieces.len() > 1;
    pieces
        .into_iter()
        .zip(first_part + 1..)
        .map(|(piece, k)| Line {
            text: piece.to_owned(),
            source: Arc::clone(source),
            v,
            invalid_utf8,
            part: numbered.then_some(k),
            client_time,
            file: None,
            container: None,
        })
        .collect()
}

/// Turns a whole message (from `tally agent log`) into entries: one entry,
/// newlines included, or numbered parts when it is too long for one.
pub(crate) fn message_lines(text: &str, source: &Arc<str>, level: Level) -> Vec<Line> {
    make_lines(
        text.as_bytes(),
        source,
        level,
        0,
        false,
        timefmt::now_nanos(),
    )
}

#[derive(Serialize)]
struct LogtailJson<'a> {
    client_time: &'a str,
    proc_id: u32,
    proc_seq: u64,
}

#[derive(Serialize)]
struct EntryJson<'a> {
    logtail: LogtailJson<'a>,
    source: &'a str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    invalid_utf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerJson<'a>>,
}

#[derive(Serialize)]
struct ContainerJson<'a> {
    #[serde(flatten)]
    fields: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}

impl Line {
    /// Renders the logtail entry for this line.
    pub(crate) fn to_json(
        &self,
        proc_id: u32,
        proc_seq: u64,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let client_time = timefmt::format_nanos(self.client_time);
        serde_json::to_vec(&EntryJson {
            logtail: LogtailJson {
                client_time: &client_time,
                proc_id,
                proc_seq,
            },
            source: &self.source,
            text: &self.text,
            v: self.v,
            part: self.part,
            invalid_utf8: self.invalid_utf8,
            container: self.container.as_deref().map(|c| ContainerJson {
                fields: &c.tags.fields,
                stream: c.stream,
                note: c.note,
            }),
        })
    }

    /// The key of the file position this line carries: the followed
    /// file's path (a container log's path, or the `source`).
    pub(crate) fn file_key(&self) -> &str {
        match &self.container {
            Some(c) => &c.tags.key,
            None => &self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn src() -> Arc<str> {
        Arc::from("stdin")
    }

    #[test]
    fn level_prefix_is_parsed_and_stripped() {
        assert_eq!(split_level(b"[v1] hello"), (Some(1), &b"hello"[..]));
        assert_eq!(split_level(b"[v12] x"), (Some(12), &b"x"[..]));
        for raw in [
            &b"[v] x"[..],
            b"[v1]x",
            b"[v123] x",
            b"v1 x",
            b"[V1] x",
            b" [v1] x",
        ] {
            assert_eq!(split_level(raw), (None, raw), "{raw:?}");
        }
    }

    #[test]
    fn entry_json_has_logtail_fields_and_optional_members() {
        let lines = make_lines(
            b"[v2] hi \"there\"",
            &src(),
            Level::FromPrefix,
            0,
            false,
            1_700_000_000_000_000_001,
        );
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_slice(&lines[0].to_json(7, 42).unwrap()).unwrap();
        assert_eq!(
            v["logtail"]["client_time"],
            "2023-11-14T22:13:20.000000001Z"
        );
        assert_eq!(v["logtail"]["proc_id"], 7);
        assert_eq!(v["logtail"]["proc_seq"], 42);
        assert_eq!(v["text"], "hi \"there\"");
        assert_eq!(v["v"], 2);
        assert_eq!(v["source"], "stdin");
        assert!(v.get("part").is_none() && v.get("invalid_utf8").is_none());
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
    }

    #[test]
    fn fixed_level_keeps_prefix_text() {
        let lines = make_lines(b"[v1] x", &src(), Level::Fixed(Some(3)), 0, false, 0);
        assert_eq!((lines[0].v, lines[0].text.as_str()), (Some(3), "[v1] x"));
    }

    #[test]
    fn invalid_utf8_is_converted_and_flagged() {
        let lines = make_lines(b"a\xffb", &src(), Level::FromPrefix, 0, false, 0);
        assert!(lines[0].invalid_utf8);
        assert_eq!(lines[0].text, "a\u{fffd}b");
        let v: Value = serde_json::from_slice(&lines[0].to_json(1, 1).unwrap()).unwrap();
        assert_eq!(v["invalid_utf8"], true);
    }

    #[test]
    fn long_lines_are_split_into_numbered_parts_that_fit() {
        // Control characters take six bytes each once escaped.
        let mut raw = vec![b'x'; 300 * 1024];
        raw.extend(std::iter::repeat_n(1u8, 100 * 1024));
        let lines = make_lines(&raw, &src(), Level::FromPrefix, 0, false, 0);
        assert!(lines.len() >= 4, "{}", lines.len());
        let mut total = 0;
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.part, Some(i as u32 + 1));
            let json = l.to_json(u32::MAX, u64::MAX).unwrap();
            assert!(json.len() <= MAX_ENTRY_BYTES, "{}", json.len());
            total += l.text.len();
        }
        assert_eq!(total, raw.len(), "nothing is cut");
        let joined: String = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined.as_bytes(), &raw[..]);
    }

    #[test]
    fn continued_chunks_are_numbered_from_first_part() {
        let a = make_lines(b"abc", &src(), Level::FromPrefix, 0, true, 0);
        assert_eq!(a[0].part, Some(1));
        let b = make_lines(b"[v1] def", &src(), Level::FromPrefix, 1, false, 0);
        assert_eq!(
            (b[0].part, b[0].v, b[0].text.as_str()),
            (Some(2), None, "[v1] def")
        );
        let whole = make_lines(b"", &src(), Level::FromPrefix, 0, false, 0);
        assert_eq!((whole.len(), whole[0].part), (1, None));
    }

    #[test]
    fn split_text_never_splits_a_character() {
        let s = "é".repeat(10);
        let parts = split_text(&s, 5);
        assert!(parts.iter().all(|p| p.len() == 4), "{parts:?}");
        assert_eq!(parts.concat(), s);
    }
}
