//! Parsing of `POST /c/<collection>/<private-id>` bodies into stored entries.
//!
//! The body is one JSON object or an array of them. Each object becomes one
//! stored entry whose reserved `logtail` member keeps the client's allowed
//! fields (`client_time`, `proc_id`, `proc_seq`), moves anything else under
//! `logtail.error`, and gains `server_time` and `id` (the public ID).
//!
//! Two passes, and nothing is built before the entries are counted:
//!
//! 1. [`split_body`]: serde_json checks the syntax and UTF-8 of the whole
//!    body and finds its entries, at most [`MAX_ENTRIES`] (more is refused,
//!    so a caller can size its memory reservation first);
//! 2. [`SplitBody::parse`]: one scan per entry checks what a syntax check
//!    lets through but readers refuse, and yields the entry's members.
//!
//! **What is stored is always I-JSON** (RFC 7493, so any RFC 8259 reader,
//! serde_json and Python's `json` included, reads every entry):
//!
//! - nesting of at most [`MAX_DEPTH`] levels in the stored entry, the entry
//!   object itself being level 1 (values the server moves under
//!   `logtail.error` count where they are stored);
//! - numbers that fit an IEEE double: a number whose magnitude overflows is
//!   refused, also as serde_json rounds it (its fast path overflows on some
//!   spellings of values just under the largest double); one that
//!   underflows reads as 0 and is kept. Integers beyond 2^53 are kept
//!   as sent (I-JSON says SHOULD NOT): serde_json reads them as u64/i64 or
//!   f64, Python exactly; at most 309 digits, far below Python's 4,300;
//! - strings and member names are valid Unicode: no invalid UTF-8 (checked
//!   by pass 1) and no unpaired surrogate escape (`"\ud800"`). Noncharacters
//!   such as U+FFFF are kept: RFC 8259 allows them and every reader accepts
//!   them (I-JSON alone forbids them);
//! - no object, at any depth, has two members of the same name (compared
//!   after unescaping: `"a"` and `"\u0061"` are the same name).
//!
//! Anything else is still saved, as an error entry, and the request is
//! reported bad (the server answers 400: saved, do not retry). Content that
//! is not an object is kept as is in `logtail.error.bad_data` when it is
//! itself valid; an object breaking a rule above, and a body that is not
//! JSON at all, are kept only as a JSON string (at most 64 KiB of it) in
//! `logtail.error.bad_data`.
//!
//! Member values are copied as sent (no re-encoding), minus whitespace
//! between tokens, so a stored entry is always one line.

use crate::ids::PublicId;
use crate::timefmt;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::io::Write as _;

/// Largest stored entry, in bytes of its JSON.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Largest request body after decompression.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Most entries in one request body. Each entry costs a few hundred bytes
/// of server memory whatever its size (a `{}` is 3 bytes of body and a
/// ≈130-byte stored entry), so the count is bounded for the ingest memory
/// budget to hold. Real clients send far fewer: tailscaled and `tally agent`
/// upload at most 256 KiB, and their entries are over 80 bytes.
pub const MAX_ENTRIES: usize = 10_000;
/// Deepest nesting of a stored entry, the entry object being level 1. Half
/// of serde_json's default limit (128), leaving room for readers that wrap
/// entries (a query page adds 2 levels) and for stricter parsers.
pub const MAX_DEPTH: usize = 64;
/// How much of rejected content is kept in `logtail.error.bad_data`, in
/// bytes of the stored JSON string.
const MAX_BAD_DATA_BYTES: usize = 64 * 1024;
/// Longest piece of client data quoted in an error message, in bytes.
const MAX_QUOTED: usize = 64;
/// Levels a member value of an entry may use (the entry is level 1).
const MEMBER_DEPTH: usize = MAX_DEPTH - 1;
/// Levels the client's `logtail` member may use: refused fields move to
/// `logtail.error.fields`, 2 levels deeper than where they were sent.
const LOGTAIL_DEPTH: usize = MAX_DEPTH - 3;
/// Levels a value kept in `logtail.error.bad_data` may use.
const BAD_DATA_DEPTH: usize = MAX_DEPTH - 3;

/// One entry ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEntry {
    /// The stored JSON object, `logtail` member first.
    pub json: Vec<u8>,
    /// `logtail.client_time` in Unix nanoseconds, when the client sent a valid one.
    pub client_time: Option<i64>,
    /// `logtail.proc_id`, when sent.
    pub proc_id: Option<u32>,
    /// `logtail.proc_seq`, when sent.
    pub proc_seq: Option<u64>,
    /// True when the entry was saved with a `logtail.error`.
    pub has_error: bool,
}

/// The result of parsing one request body.
#[derive(Debug, Clone, Default)]
pub struct ParsedBody {
    /// Every entry to store, bad ones included (they carry their error).
    pub entries: Vec<IngestEntry>,
    /// How many entries carry an error.
    pub bad: usize,
    /// The first error, for the response message.
    pub first_error: Option<String>,
}

impl ParsedBody {
    /// A one-line summary of what was wrong, for a 400 response.
    pub fn error_message(&self) -> Option<String> {
        self.first_error.as_ref().map(|first| {
            format!(
                "{} of {} entries were malformed and were saved with logtail.error (first: {first}); fix the client, do not resend",
                self.bad,
                self.entries.len()
            )
        })
    }

    /// Bytes of stored JSON of all entries.
    pub fn stored_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.json.len()).sum()
    }
}

/// A body with more than [`MAX_ENTRIES`] entries: refused whole, nothing stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "request body has more than {MAX_ENTRIES} entries; nothing was stored: send at most {MAX_ENTRIES} entries per upload"
)]
pub struct TooManyEntries;

/// A request body after the first pass: syntax and UTF-8 checked, entries
/// found, nothing built yet.
#[derive(Debug)]
pub struct SplitBody<'a> {
    body: &'a [u8],
    items: Items<'a>,
}

#[derive(Debug)]
enum Items<'a> {
    Array(Vec<&'a RawValue>),
    Object(&'a RawValue),
    /// Not JSON: saved as one error entry, with why.
    Unparseable(String),
}

/// First pass over a decompressed request body: checks its syntax and
/// UTF-8 and finds its entries, refusing more than [`MAX_ENTRIES`]. A body
/// that is not JSON is not an error here: it is saved as one error entry.
pub fn split_body(body: &[u8]) -> Result<SplitBody<'_>, TooManyEntries> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let items = match first {
        Some(b'[') => {
            let over = Cell::new(false);
            let mut de = serde_json::Deserializer::from_slice(body);
            let read = CappedItems(&over)
                .deserialize(&mut de)
                .and_then(|items| de.end().map(|()| items));
            match read {
                Ok(items) => Items::Array(items),
                Err(_) if over.get() => return Err(TooManyEntries),
                Err(e) => Items::Unparseable(format!("body is not a JSON array of objects: {e}")),
            }
        }
        Some(b'{') => match serde_json::from_slice::<&RawValue>(body) {
            Ok(item) => Items::Object(item),
            Err(e) => Items::Unparseable(format!("body is not a JSON object: {e}")),
        },
        _ => Items::Unparseable("body is neither a JSON object nor an array of objects".into()),
    };
    Ok(SplitBody { body, items })
}

impl SplitBody<'_> {
    /// Entries the body will store (an unparseable body stores one).
    pub fn entries(&self) -> usize {
        match &self.items {
            Items::Array(items) => items.len(),
            Items::Object(_) | Items::Unparseable(_) => 1,
        }
    }

    /// Bytes of the decompressed body.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Second pass: checks and builds every entry. Never fails: what cannot
    /// be stored as sent is saved as an error entry.
    pub fn parse(self, server_time_nanos: i64, id: &PublicId) -> ParsedBody {
        let ctx = EntryContext::new(server_time_nanos, id);
        let mut out = ParsedBody::default();
        let mut scan = Scratch::default();
        match self.items {
            Items::Array(items) => {
                out.entries.reserve_exact(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    ctx.push_value(&mut out, &mut scan, item.get(), Some(i));
                }
            }
            Items::Object(item) => ctx.push_value(&mut out, &mut scan, item.get(), None),
            Items::Unparseable(why) => ctx.push_unparseable(&mut out, self.body, &why),
        }
        out
    }
}

/// Parses a decompressed request body ([`split_body`] then
/// [`SplitBody::parse`]). Never fails: content that cannot be read as
/// entries, and a body with too many entries, is saved as one error entry.
pub fn parse_body(body: &[u8], server_time_nanos: i64, id: &PublicId) -> ParsedBody {
    match split_body(body) {
        Ok(split) => split.parse(server_time_nanos, id),
        Err(e) => {
            let mut out = ParsedBody::default();
            EntryContext::new(server_time_nanos, id).push_unparseable(
                &mut out,
                body,
                &e.to_string(),
            );
            out
        }
    }
}

/// Collects the items of the top-level array, failing (with `over` set)
/// past [`MAX_ENTRIES`].
struct CappedItems<'c>(&'c Cell<bool>);

impl<'de> DeserializeSeed<'de> for CappedItems<'_> {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CappedItems<'_> {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == MAX_ENTRIES {
                self.0.set(true);
                return Err(de::Error::custom("too many entries"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Why a value cannot be stored as sent (a fragment of an error message).
#[derive(Debug)]
struct Invalid(String);

impl Invalid {
    fn unexpected(at: usize) -> Self {
        // Pass 1 checked the syntax: this would be a bug in the scan.
        Self(format!("unexpected byte at offset {at}"))
    }
}

/// `s` quoted for an error message, cut to [`MAX_QUOTED`] bytes.
fn quote(s: &str) -> String {
    let mut end = s.len().min(MAX_QUOTED);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < s.len() { "..." } else { "" };
    format!("{:?}{cut}", &s[..end])
}

/// One member of an entry object, as sent.
#[derive(Debug)]
struct Member<'a> {
    /// The name as sent, quotes included.
    raw_key: &'a str,
    /// The name unescaped.
    key: Cow<'a, str>,
    /// The value as sent.
    value: &'a str,
    /// The value has whitespace between its tokens.
    ws: bool,
}

/// The per-entry scan. Pass 1 checked the syntax, so the scan only looks at
/// what a syntax check lets through; it still never indexes past the end
/// and reports anything unexpected as invalid.
#[derive(Default)]
struct Scratch<'a> {
    /// Member names of the object open at each level, for duplicates.
    keys: Vec<Vec<Cow<'a, str>>>,
    /// Members of the entry being built.
    entry: Vec<Member<'a>>,
    /// Members of its `logtail` object.
    logtail: Vec<Member<'a>>,
    /// Whitespace between tokens was seen since this was last cleared.
    ws: bool,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex4(b: &[u8], at: usize) -> Result<u32, Invalid> {
    let digits = b.get(at..at + 4).ok_or_else(|| Invalid::unexpected(at))?;
    digits.iter().try_fold(0u32, |acc, d| {
        char::from(*d)
            .to_digit(16)
            .map(|v| acc * 16 + v)
            .ok_or_else(|| Invalid::unexpected(at))
    })
}

fn lone_surrogate(cp: u32) -> Invalid {
    Invalid(format!(
        "a string has an unpaired surrogate escape \\u{cp:04x} (not Unicode text)"
    ))
}

/// Scans the string starting at `b[*i] == '"'`; true when it has escapes.
fn scan_string(b: &[u8], i: &mut usize) -> Result<bool, Invalid> {
    let mut escaped = false;
    *i += 1;
    loop {
        let rest = b.get(*i..).unwrap_or_default();
        let Some(off) = memchr::memchr2(b'"', b'\\', rest) else {
            return Err(Invalid::unexpected(b.len()));
        };
        *i += off;
        if rest[off] == b'"' {
            *i += 1;
            return Ok(escaped);
        }
        escaped = true;
        match b.get(*i + 1) {
            Some(b'u') => {
                let cp = hex4(b, *i + 2)?;
                *i += 6;
                if (0xD800..0xDC00).contains(&cp) {
                    let paired = b.get(*i..*i + 2) == Some(b"\\u")
                        && hex4(b, *i + 2).is_ok_and(|lo| (0xDC00..0xE000).contains(&lo));
                    if !paired {
                        return Err(lone_surrogate(cp));
                    }
                    *i += 6;
                } else if (0xDC00..0xE000).contains(&cp) {
                    return Err(lone_surrogate(cp));
                }
            }
            Some(_) => *i += 2,
            None => return Err(Invalid::unexpected(*i)),
        }
    }
}

/// The text of a checked string's contents (between the quotes), unescaped.
fn unescape(s: &str) -> Result<String, Invalid> {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let Some(off) = memchr::memchr(b'\\', &b[i..]) else {
            out.push_str(s.get(i..).unwrap_or_default());
            break;
        };
        out.push_str(s.get(i..i + off).ok_or_else(|| Invalid::unexpected(i))?);
        i += off;
        let c = match b.get(i + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = hex4(b, i + 2)?;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    let lo = hex4(b, i + 8)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(lone_surrogate(hi));
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                i += 4;
                char::from_u32(cp).ok_or_else(|| lone_surrogate(cp))?
            }
            _ => return Err(Invalid::unexpected(i)),
        };
        out.push(c);
        i += 2;
    }
    Ok(out)
}

/// Checks the number starting at `t[*i]`: it must fit a double.
fn scan_number(t: &str, i: &mut usize) -> Result<(), Invalid> {
    let b = t.as_bytes();
    let start = *i;
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    if b.get(*i) == Some(&b'-') {
        *i += 1;
    }
    let int_digits = digits(i);
    if int_digits == 0 {
        return Err(Invalid::unexpected(*i));
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        digits(i);
    }
    let mut exponent = false;
    if matches!(b.get(*i), Some(b'e' | b'E')) {
        exponent = true;
        *i += 1;
        if matches!(b.get(*i), Some(b'+' | b'-')) {
            *i += 1;
        }
        digits(i);
    }
    // Below 10^308 without an exponent: finite, no need to convert.
    if !exponent && int_digits <= 308 {
        return Ok(());
    }
    let text = t.get(start..*i).ok_or_else(|| Invalid::unexpected(start))?;
    // Correctly rounded (as Python and Go read it), and as serde_json reads
    // it: its faster rounding overflows on some spellings of values just
    // under the largest double (`1.7976931348623157000000e308`).
    let finite = text.parse::<f64>().is_ok_and(f64::is_finite);
    match finite && serde_json::from_str::<f64>(text).is_ok() {
        true => Ok(()),
        false => Err(Invalid(format!(
            "number {} is beyond the range of a double",
            quote(text)
        ))),
    }
}

/// The first name that appears twice (sorts `keys` when there are many).
fn first_duplicate<'k>(keys: &'k mut [Cow<'_, str>]) -> Option<&'k str> {
    if keys.len() <= 16 {
        for (n, k) in keys.iter().enumerate() {
            if keys[..n].contains(k) {
                return Some(k);
            }
        }
        return None;
    }
    keys.sort_unstable();
    keys.windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| w[0].as_ref())
}

fn duplicate(name: &str) -> Invalid {
    Invalid(format!("an object has two members named {}", quote(name)))
}

impl<'a> Scratch<'a> {
    fn skip_ws(&mut self, b: &[u8], i: &mut usize) {
        let from = *i;
        while b.get(*i).copied().is_some_and(is_ws) {
            *i += 1;
        }
        if *i != from {
            self.ws = true;
        }
    }

    fn expect(&mut self, b: &[u8], i: &mut usize, c: u8) -> Result<(), Invalid> {
        self.skip_ws(b, i);
        if b.get(*i) != Some(&c) {
            return Err(Invalid::unexpected(*i));
        }
        *i += 1;
        self.skip_ws(b, i);
        Ok(())
    }

    /// Scans a member name at `t[*i]`: (as sent, unescaped).
    fn key(&mut self, t: &'a str, i: &mut usize) -> Result<(&'a str, Cow<'a, str>), Invalid> {
        let b = t.as_bytes();
        let start = *i;
        if b.get(*i) != Some(&b'"') {
            return Err(Invalid::unexpected(*i));
        }
        let escaped = scan_string(b, i)?;
        let raw = t.get(start..*i).ok_or_else(|| Invalid::unexpected(start))?;
        let inner = raw
            .get(1..raw.len() - 1)
            .ok_or_else(|| Invalid::unexpected(start))?;
        let key = if escaped {
            Cow::Owned(unescape(inner)?)
        } else {
            Cow::Borrowed(inner)
        };
        Ok((raw, key))
    }

    /// Checks the value at `t[*i]`, which may nest `depth` more levels;
    /// `level` indexes the name lists of open objects.
    fn value(
        &mut self,
        t: &'a str,
        i: &mut usize,
        depth: usize,
        level: usize,
    ) -> Result<(), Invalid> {
        let b = t.as_bytes();
        let literal = |i: &mut usize, lit: &[u8]| {
            if b.get(*i..*i + lit.len()) == Some(lit) {
                *i += lit.len();
                Ok(())
            } else {
                Err(Invalid::unexpected(*i))
            }
        };
        match b.get(*i) {
            Some(b'"') => scan_string(b, i).map(|_| ()),
            Some(b'-' | b'0'..=b'9') => scan_number(t, i),
            Some(b't') => literal(i, b"true"),
            Some(b'f') => literal(i, b"false"),
            Some(b'n') => literal(i, b"null"),
            Some(c @ (b'[' | b'{')) => {
                let Some(inner) = depth.checked_sub(1) else {
                    return Err(Invalid(format!(
                        "it nests deeper than the {MAX_DEPTH} levels a stored entry may have"
                    )));
                };
                let (object, close) = (*c == b'{', if *c == b'{' { b'}' } else { b']' });
                *i += 1;
                if object {
                    if self.keys.len() <= level {
                        self.keys.resize_with(level + 1, Vec::new);
                    }
                    self.keys[level].clear();
                }
                self.skip_ws(b, i);
                if b.get(*i) == Some(&close) {
                    *i += 1;
                    return Ok(());
                }
                loop {
                    if object {
                        let (_, key) = self.key(t, i)?;
                        self.keys[level].push(key);
                        self.expect(b, i, b':')?;
                    }
                    self.value(t, i, inner, level + 1)?;
                    self.skip_ws(b, i);
                    match b.get(*i) {
                        Some(b',') => {
                            *i += 1;
                            self.skip_ws(b, i);
                        }
                        Some(c) if *c == close => {
                            *i += 1;
                            break;
                        }
                        _ => return Err(Invalid::unexpected(*i)),
                    }
                }
                if object && let Some(k) = first_duplicate(&mut self.keys[level]) {
                    return Err(duplicate(k));
                }
                Ok(())
            }
            _ => Err(Invalid::unexpected(*i)),
        }
    }

    /// Checks a whole value that may nest `depth` levels; true when it has
    /// whitespace between tokens.
    fn check(&mut self, t: &'a str, depth: usize) -> Result<bool, Invalid> {
        self.ws = false;
        let mut i = 0;
        self.skip_ws(t.as_bytes(), &mut i);
        self.value(t, &mut i, depth, 1)?;
        self.skip_ws(t.as_bytes(), &mut i);
        if i != t.len() {
            return Err(Invalid::unexpected(i));
        }
        Ok(self.ws)
    }

    /// Checks the object `t` and lists its members into `members` (taken
    /// out of `self` by the caller); `depth` gives the levels a member value
    /// may nest, by name.
    fn members(
        &mut self,
        t: &'a str,
        members: &mut Vec<Member<'a>>,
        depth: impl Fn(&str) -> usize,
    ) -> Result<(), Invalid> {
        members.clear();
        let b = t.as_bytes();
        let mut i = 0;
        self.expect(b, &mut i, b'{')?;
        if b.get(i) != Some(&b'}') {
            loop {
                let (raw_key, key) = self.key(t, &mut i)?;
                self.expect(b, &mut i, b':')?;
                let start = i;
                self.ws = false;
                self.value(t, &mut i, depth(&key), 1)?;
                let value = t.get(start..i).ok_or_else(|| Invalid::unexpected(start))?;
                members.push(Member {
                    raw_key,
                    key,
                    value,
                    ws: self.ws,
                });
                self.skip_ws(b, &mut i);
                match b.get(i) {
                    Some(b',') => {
                        i += 1;
                        self.skip_ws(b, &mut i);
                    }
                    Some(b'}') => break,
                    _ => return Err(Invalid::unexpected(i)),
                }
            }
        }
        i += 1;
        self.skip_ws(b, &mut i);
        if i != t.len() {
            return Err(Invalid::unexpected(i));
        }
        if self.keys.is_empty() {
            self.keys.push(Vec::new());
        }
        let names = &mut self.keys[0];
        names.clear();
        names.extend(members.iter().map(|m| m.key.clone()));
        if let Some(k) = first_duplicate(names) {
            return Err(duplicate(k));
        }
        Ok(())
    }
}

/// Appends `raw`, a checked JSON value, without whitespace between tokens.
fn push_minified(out: &mut Vec<u8>, raw: &str, has_ws: bool) {
    let b = raw.as_bytes();
    if !has_ws {
        out.extend_from_slice(b);
        return;
    }
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if is_ws(c) {
            i += 1;
        } else if c == b'"' {
            let mut end = i;
            if scan_string(b, &mut end).is_err() {
                end = b.len();
            }
            out.extend_from_slice(&b[i..end.min(b.len())]);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
}

/// Appends `s` as a JSON string of at most `max` bytes (quotes included),
/// cutting it at a character; true when all of it fit.
fn push_json_string(out: &mut Vec<u8>, s: &str, max: usize) -> bool {
    let limit = out.len() + max.max(2) - 1;
    out.push(b'"');
    let mut complete = true;
    for c in s.chars() {
        let mut utf8 = [0u8; 4];
        let mut esc = *b"\\u0000";
        let bytes: &[u8] = match c {
            '"' => b"\\\"",
            '\\' => b"\\\\",
            '\n' => b"\\n",
            '\r' => b"\\r",
            '\t' => b"\\t",
            '\u{8}' => b"\\b",
            '\u{c}' => b"\\f",
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let v = u32::from(c) as usize;
                esc[4] = HEX[v >> 4];
                esc[5] = HEX[v & 0xf];
                &esc
            }
            c => c.encode_utf8(&mut utf8).as_bytes(),
        };
        if out.len() + bytes.len() > limit {
            complete = false;
            break;
        }
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
    complete
}

struct EntryContext {
    /// `"server_time":"...","id":"..."`: the members the server adds.
    fixed: Vec<u8>,
}

/// The client's `logtail` member, split into kept and refused fields.
#[derive(Default)]
struct ClientLogtail<'a> {
    client_time: Option<(&'a str, i64)>,
    proc_id: Option<u32>,
    proc_seq: Option<u64>,
    /// Indexes into the logtail members of the fields moved to `logtail.error.fields`.
    refused: Vec<usize>,
    not_object: Option<&'a str>,
}

/// Sorts the client's logtail members (already checked) into kept and refused.
fn split_logtail<'a>(members: &[Member<'a>]) -> ClientLogtail<'a> {
    let mut lt = ClientLogtail::default();
    for (n, m) in members.iter().enumerate() {
        let v = m.value;
        let kept = match m.key.as_ref() {
            "client_time" => serde_json::from_str::<&str>(v)
                .ok()
                .and_then(timefmt::parse_rfc3339)
                .map(|t| lt.client_time = Some((v, t)))
                .is_some(),
            "proc_id" => serde_json::from_str::<u32>(v)
                .map(|n| lt.proc_id = Some(n))
                .is_ok(),
            "proc_seq" => serde_json::from_str::<u64>(v)
                .map(|n| lt.proc_seq = Some(n))
                .is_ok(),
            _ => false,
        };
        if !kept {
            lt.refused.push(n);
        }
    }
    lt
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn kind_of(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

impl EntryContext {
    fn new(server_time_nanos: i64, id: &PublicId) -> Self {
        let mut fixed = Vec::with_capacity(128);
        fixed.extend_from_slice(b"\"server_time\":\"");
        fixed.extend_from_slice(timefmt::format_nanos(server_time_nanos).as_bytes());
        fixed.extend_from_slice(b"\",\"id\":\"");
        fixed.extend_from_slice(id.to_hex().as_bytes());
        fixed.push(b'"');
        Self { fixed }
    }

    /// Opens the stored object with its `logtail` member into a buffer of
    /// `cap` bytes plus the `logtail` member; returns it positioned after
    /// the `logtail` object, ready for more members.
    fn start_entry(
        &self,
        cap: usize,
        lt: &ClientLogtail<'_>,
        error: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let message = error.map(|(m, _)| json_string(m));
        let need = 16
            + lt.client_time.map_or(0, |(raw, _)| raw.len() + 16)
            + lt.proc_id.map_or(0, |_| 22)
            + lt.proc_seq.map_or(0, |_| 32)
            + self.fixed.len()
            + message.as_ref().map_or(0, |m| m.len() + 24)
            + error.map_or(0, |(_, extra)| extra.len())
            + cap;
        let mut out = Vec::with_capacity(need);
        out.extend_from_slice(b"{\"logtail\":{");
        if let Some((raw, _)) = lt.client_time {
            out.extend_from_slice(b"\"client_time\":");
            out.extend_from_slice(raw.as_bytes());
            out.push(b',');
        }
        // Writing to a Vec cannot fail.
        if let Some(n) = lt.proc_id {
            let _ = write!(out, "\"proc_id\":{n},");
        }
        if let Some(n) = lt.proc_seq {
            let _ = write!(out, "\"proc_seq\":{n},");
        }
        out.extend_from_slice(&self.fixed);
        if let (Some(message), Some((_, extra))) = (message, error) {
            out.extend_from_slice(b",\"error\":{\"message\":");
            out.extend_from_slice(message.as_bytes());
            out.extend_from_slice(extra);
            out.push(b'}');
        }
        out.push(b'}');
        out
    }

    fn push_error_entry(&self, out: &mut ParsedBody, message: String, extra: &[u8]) {
        let mut json = self.start_entry(1, &ClientLogtail::default(), Some((&message, extra)));
        json.push(b'}');
        out.bad += 1;
        out.first_error.get_or_insert(message);
        out.entries.push(IngestEntry {
            json,
            client_time: None,
            proc_id: None,
            proc_seq: None,
            has_error: true,
        });
    }

    /// Saves content that cannot be stored as sent: the message says why,
    /// and the content is kept as a JSON string in `bad_data`.
    fn push_as_string(&self, out: &mut ParsedBody, text: &str, why: &str) {
        let mut extra = Vec::with_capacity(text.len().min(MAX_BAD_DATA_BYTES) + 16);
        extra.extend_from_slice(b",\"bad_data\":");
        let whole = push_json_string(&mut extra, text, MAX_BAD_DATA_BYTES);
        let message = if whole {
            format!("{why}; it is kept as a string in logtail.error.bad_data")
        } else {
            format!(
                "{why}; the start of its {} bytes is kept as a string in logtail.error.bad_data",
                text.len()
            )
        };
        self.push_error_entry(out, message, &extra);
    }

    fn push_unparseable(&self, out: &mut ParsedBody, body: &[u8], why: &str) {
        // Past this many bytes of source, the kept string is full anyway.
        let shown = &body[..body.len().min(MAX_BAD_DATA_BYTES)];
        let text = String::from_utf8_lossy(shown);
        let mut extra = Vec::with_capacity(text.len() + 16);
        extra.extend_from_slice(b",\"bad_data\":");
        let whole = push_json_string(&mut extra, &text, MAX_BAD_DATA_BYTES);
        let message = if whole && shown.len() == body.len() {
            why.to_owned()
        } else {
            format!(
                "{why} (the start of its {} bytes is kept in bad_data)",
                body.len()
            )
        };
        self.push_error_entry(out, message, &extra);
    }

    fn push_value<'a>(
        &self,
        out: &mut ParsedBody,
        scan: &mut Scratch<'a>,
        text: &'a str,
        index: Option<usize>,
    ) {
        let where_ = || index.map(|i| format!("entry {i}: ")).unwrap_or_default();
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.len() > MAX_ENTRY_BYTES {
            let msg = format!(
                "{}entry of {} bytes is over the {MAX_ENTRY_BYTES}-byte limit",
                where_(),
                text.len()
            );
            self.push_unparseable(out, text.as_bytes(), &msg);
            return;
        }
        if !text.starts_with('{') {
            let what = format!("{}{} is not a JSON object", where_(), kind_of(text));
            match scan.check(text, BAD_DATA_DEPTH) {
                Ok(ws) => {
                    let mut extra = Vec::with_capacity(text.len() + 16);
                    extra.extend_from_slice(b",\"bad_data\":");
                    push_minified(&mut extra, text, ws);
                    self.push_error_entry(out, what, &extra);
                }
                Err(Invalid(why)) => self.push_as_string(out, text, &format!("{what} and {why}")),
            }
            return;
        }
        let mut members = std::mem::take(&mut scan.entry);
        let checked = scan.members(text, &mut members, |k| {
            if k == "logtail" {
                LOGTAIL_DEPTH
            } else {
                MEMBER_DEPTH
            }
        });
        if let Err(Invalid(why)) = checked {
            let why = format!("{}entry is not valid I-JSON: {why}", where_());
            self.push_as_string(out, text, &why);
            scan.entry = members;
            return;
        }
        let mut lt_members = std::mem::take(&mut scan.logtail);
        lt_members.clear();
        let mut lt = ClientLogtail::default();
        if let Some(m) = members.iter().find(|m| m.key == "logtail") {
            if m.value.starts_with('{') {
                // Checked above; this lists its members.
                match scan.members(m.value, &mut lt_members, |_| LOGTAIL_DEPTH - 1) {
                    Ok(()) => lt = split_logtail(&lt_members),
                    Err(_) => lt.not_object = Some(m.value),
                }
            } else {
                lt.not_object = Some(m.value);
            }
        }
        let mut error_extra = Vec::new();
        let mut message = None;
        if let Some(v) = lt.not_object {
            message = Some(format!(
                "{}the logtail member must be an object, got {}",
                where_(),
                kind_of(v)
            ));
            error_extra.extend_from_slice(b",\"bad_data\":");
            push_minified(&mut error_extra, v, true);
        } else if !lt.refused.is_empty() {
            let mut names: Vec<String> = lt
                .refused
                .iter()
                .take(8)
                .map(|&n| quote(&lt_members[n].key))
                .collect();
            if lt.refused.len() > names.len() {
                names.push(format!("and {} more", lt.refused.len() - names.len()));
            }
            message = Some(format!(
                "{}logtail fields [{}] are not client_time (RFC 3339), proc_id (u32) or proc_seq (u64); they were moved here",
                where_(),
                names.join(", ")
            ));
            error_extra.extend_from_slice(b",\"fields\":{");
            for (i, &n) in lt.refused.iter().enumerate() {
                let m = &lt_members[n];
                if i > 0 {
                    error_extra.push(b',');
                }
                error_extra.extend_from_slice(m.raw_key.as_bytes());
                error_extra.push(b':');
                push_minified(&mut error_extra, m.value, m.ws);
            }
            error_extra.push(b'}');
        }
        let body_len: usize = members
            .iter()
            .filter(|m| m.key != "logtail")
            .map(|m| m.raw_key.len() + m.value.len() + 2)
            .sum();
        let mut json = self.start_entry(
            body_len + 1,
            &lt,
            message.as_deref().map(|m| (m, error_extra.as_slice())),
        );
        for m in members.iter().filter(|m| m.key != "logtail") {
            json.push(b',');
            json.extend_from_slice(m.raw_key.as_bytes());
            json.push(b':');
            push_minified(&mut json, m.value, m.ws);
        }
        json.push(b'}');
        let has_error = message.is_some();
        if let Some(m) = message {
            out.bad += 1;
            out.first_error.get_or_insert(m);
        }
        out.entries.push(IngestEntry {
            json,
            client_time: lt.client_time.map(|(_, t)| t),
            proc_id: lt.proc_id,
            proc_seq: lt.proc_seq,
            has_error,
        });
        scan.entry = members;
        scan.logtail = lt_members;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn id() -> PublicId {
        PublicId([7; 32])
    }

    fn parse(body: &str) -> (ParsedBody, Vec<Value>) {
        let p = parse_body(body.as_bytes(), 1_700_000_000_000_000_000, &id());
        let values = p
            .entries
            .iter()
            .map(|e| serde_json::from_slice::<Value>(&e.json).expect("stored entry is valid JSON"))
            .collect();
        (p, values)
    }

    #[test]
    fn single_object_gains_server_fields_and_keeps_client_ones() {
        let (p, v) = parse(
            r#"{"text":"hi","logtail":{"client_time":"2023-11-14T22:13:19.5Z","proc_id":7,"proc_seq":9},"v":1}"#,
        );
        assert_eq!(p.bad, 0);
        let e = &v[0];
        assert_eq!(e["text"], "hi");
        assert_eq!(e["v"], 1);
        assert_eq!(e["logtail"]["client_time"], "2023-11-14T22:13:19.5Z");
        assert_eq!(e["logtail"]["proc_id"], 7);
        assert_eq!(e["logtail"]["proc_seq"], 9);
        assert_eq!(e["logtail"]["server_time"], "2023-11-14T22:13:20Z");
        assert_eq!(e["logtail"]["id"], id().to_hex());
        assert_eq!(
            p.entries[0].client_time,
            Some(1_700_000_000_000_000_000 - 500_000_000)
        );
        assert_eq!(
            (p.entries[0].proc_id, p.entries[0].proc_seq),
            (Some(7), Some(9))
        );
    }

    #[test]
    fn extra_logtail_fields_move_to_error_and_entry_is_kept() {
        let (p, v) = parse(r#"[{"a":1,"logtail":{"proc_seq":1,"server_time":"x","foo":[1]}}]"#);
        assert_eq!(p.bad, 1);
        let lt = &v[0]["logtail"];
        assert_eq!(lt["proc_seq"], 1);
        assert_eq!(lt["server_time"], "2023-11-14T22:13:20Z");
        assert_eq!(lt["error"]["fields"]["server_time"], "x");
        assert_eq!(lt["error"]["fields"]["foo"], serde_json::json!([1]));
        assert_eq!(v[0]["a"], 1);
        assert!(p.error_message().unwrap().contains("1 of 1"));
    }

    #[test]
    fn non_object_array_entries_are_saved_as_errors() {
        let (p, v) = parse(r#"[{"ok":true}, 42, "s", [1]]"#);
        assert_eq!(p.entries.len(), 4);
        assert_eq!(p.bad, 3);
        assert_eq!(v[1]["logtail"]["error"]["bad_data"], 42);
        assert_eq!(v[2]["logtail"]["error"]["bad_data"], "s");
        assert!(
            v[1]["logtail"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("entry 1: a number")
        );
    }

    #[test]
    fn garbage_and_invalid_utf8_are_saved_as_errors() {
        for body in [
            &b"not json"[..],
            b"{\"a\":",
            b"",
            b"[\xff\xfe]",
            b"{\"a\":\"\xc3\x28\"}",
        ] {
            let p = parse_body(body, 0, &id());
            assert_eq!(p.entries.len(), 1, "{body:?}");
            assert_eq!(p.bad, 1);
            let v: Value = serde_json::from_slice(&p.entries[0].json).unwrap();
            assert!(v["logtail"]["error"]["message"].is_string());
        }
    }

    #[test]
    fn oversize_entry_is_cut_and_flagged() {
        let big = format!(r#"[{{"text":"{}"}}]"#, "x".repeat(MAX_ENTRY_BYTES + 10));
        let (p, v) = parse(&big);
        assert_eq!(p.bad, 1);
        assert!(p.entries[0].json.len() < MAX_ENTRY_BYTES);
        assert!(
            v[0]["logtail"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("over the 262144-byte limit")
        );
    }

    #[test]
    fn invalid_client_time_is_moved_to_error() {
        let (p, v) = parse(r#"{"logtail":{"client_time":"noon","proc_id":-1}}"#);
        assert_eq!(p.bad, 1);
        assert_eq!(v[0]["logtail"]["error"]["fields"]["client_time"], "noon");
        assert_eq!(v[0]["logtail"]["error"]["fields"]["proc_id"], -1);
        assert!(v[0]["logtail"].get("client_time").is_none());
    }

    #[test]
    fn logtail_that_is_not_an_object_is_kept_as_bad_data() {
        let (p, v) = parse(r#"{"logtail":"hello","x":"y"}"#);
        assert_eq!(p.bad, 1);
        assert_eq!(v[0]["logtail"]["error"]["bad_data"], "hello");
        assert_eq!(v[0]["x"], "y");
    }

    #[test]
    fn escaped_keys_survive() {
        let (_, v) = parse(r#"{"a\"b":1,"\u00e9":2}"#);
        assert_eq!(v[0]["a\"b"], 1);
        assert_eq!(v[0]["é"], 2);
    }

    /// Nesting of a JSON value (a scalar is 0, `[]` is 1).
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    fn message(v: &Value) -> &str {
        v["logtail"]["error"]["message"].as_str().unwrap_or("")
    }

    #[test]
    fn nesting_is_limited_where_the_value_is_stored() {
        // A member value may use 63 levels: the stored entry then has 64.
        let (p, v) = parse(&format!(r#"{{"a":{}}}"#, nested(MAX_DEPTH - 1)));
        assert_eq!(p.bad, 0);
        assert_eq!(depth(&v[0]), MAX_DEPTH);
        let (p, v) = parse(&format!(r#"{{"a":{}}}"#, nested(MAX_DEPTH)));
        assert_eq!(p.bad, 1);
        assert!(
            message(&v[0]).contains("deeper than the 64 levels"),
            "{}",
            v[0]
        );
        assert!(v[0]["logtail"]["error"]["bad_data"].is_string());
        assert!(depth(&v[0]) <= 3);
        // Far deeper than serde_json's own limit (128): still one readable entry.
        let (p, v) = parse(&format!(r#"[{{"a":{}}}, {{"ok":1}}]"#, nested(5000)));
        assert_eq!((p.entries.len(), p.bad), (2, 1));
        assert_eq!(v[1]["ok"], 1);
        // Non-objects and moved logtail fields count at their stored place.
        let (p, v) = parse(&format!("[{}]", nested(MAX_DEPTH - 3)));
        assert_eq!(p.bad, 1);
        assert!(v[0]["logtail"]["error"]["bad_data"].is_array());
        assert_eq!(depth(&v[0]), MAX_DEPTH);
        let (_, v) = parse(&format!("[{}]", nested(MAX_DEPTH - 2)));
        assert!(v[0]["logtail"]["error"]["bad_data"].is_string());
        let (p, v) = parse(&format!(
            r#"{{"logtail":{{"x":{}}}}}"#,
            nested(MAX_DEPTH - 4)
        ));
        assert_eq!(p.bad, 1);
        assert!(v[0]["logtail"]["error"]["fields"]["x"].is_array());
        assert_eq!(depth(&v[0]), MAX_DEPTH);
        let (_, v) = parse(&format!(
            r#"{{"logtail":{{"x":{}}}}}"#,
            nested(MAX_DEPTH - 3)
        ));
        assert!(v[0]["logtail"]["error"]["bad_data"].is_string(), "{}", v[0]);
        let (_, v) = parse(&format!(r#"{{"logtail":{}}}"#, nested(MAX_DEPTH - 3)));
        assert!(v[0]["logtail"]["error"]["bad_data"].is_array());
        assert_eq!(depth(&v[0]), MAX_DEPTH);
    }

    #[test]
    fn numbers_must_fit_a_double() {
        for ok in [
            "0",
            "-0",
            "1e308",
            "-1.5e-400",
            "0e99999",
            "1.7976931348623157e308",
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "0.000000000000000000000000000000000000000000000000001",
        ] {
            let (p, v) = parse(&format!(r#"{{"n":{ok}}}"#));
            assert_eq!(p.bad, 0, "{ok}");
            assert!(v[0]["n"].is_number(), "{ok}");
        }
        let ten_to_308 = format!("1{}", "0".repeat(308));
        let (p, _) = parse(&format!(r#"{{"n":{ten_to_308}}}"#));
        assert_eq!(p.bad, 0);
        let two_e308 = format!("2{}", "0".repeat(308));
        for bad in [
            "1e99999",
            "-1e400",
            "1.7976931348623159e308",
            "1.7976931348623158e308",
            "1.7976931348623157000000000000000000000000e308",
            "1e309",
            two_e308.as_str(),
            "1e999999999999999999999",
        ] {
            let (p, v) = parse(&format!(r#"{{"n":{bad}}}"#));
            assert_eq!(p.bad, 1, "{bad}");
            assert!(
                message(&v[0]).contains("beyond the range of a double"),
                "{}",
                v[0]
            );
            assert_eq!(
                v[0]["logtail"]["error"]["bad_data"].as_str().unwrap(),
                format!(r#"{{"n":{bad}}}"#)
            );
        }
        // As a non-object entry: kept as a string.
        let (_, v) = parse("[1e99999, 5]");
        assert_eq!(v[0]["logtail"]["error"]["bad_data"], "1e99999");
        assert_eq!(v[1]["logtail"]["error"]["bad_data"], 5);
    }

    #[test]
    fn strings_and_names_must_be_unicode() {
        for ok in [
            r#""\ud83d\ude00""#,
            r#""\\ud800""#,
            r#""\uffff\u0000""#,
            r#""a\"b\\""#,
        ] {
            let (p, _) = parse(&format!(r#"{{"s":{ok},{ok}:1}}"#));
            assert_eq!(p.bad, 0, "{ok}");
        }
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""x\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#""\ude00\ud83d""#,
        ] {
            for body in [
                format!(r#"{{"s":{bad}}}"#),
                format!(r#"{{{bad}:1}}"#),
                format!("[{bad}]"),
            ] {
                let (p, v) = parse(&body);
                assert_eq!(p.bad, 1, "{body}");
                assert!(message(&v[0]).contains("unpaired surrogate"), "{}", v[0]);
                assert!(v[0]["logtail"]["error"]["bad_data"].is_string());
            }
        }
    }

    #[test]
    fn member_names_must_be_unique_at_every_depth() {
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        for bad in [
            r#"{"a":1,"a":2}"#.to_owned(),
            r#"{"a":1,"\u0061":2}"#.to_owned(),
            r#"{"logtail":{},"logtail":{}}"#.to_owned(),
            r#"{"logtail":{"proc_id":1,"proc_id":2}}"#.to_owned(),
            r#"{"x":[{"k":1,"k":2}]}"#.to_owned(),
            format!(r#"{{"x":{{{},"k7":0}}}}"#, many.join(",")),
        ] {
            let (p, v) = parse(&bad);
            assert_eq!(p.bad, 1, "{bad}");
            assert!(message(&v[0]).contains("two members named"), "{}", v[0]);
            assert_eq!(v[0]["logtail"]["error"]["bad_data"].as_str().unwrap(), bad);
        }
        // The same name in sibling or nested objects is fine.
        let (p, _) = parse(&format!(
            r#"{{"k":{{"k":{{"k":1}}}},"j":[{{"k":1}},{{"k":2}}],"m":{{{}}}}}"#,
            many.join(",")
        ));
        assert_eq!(p.bad, 0);
    }

    #[test]
    fn whitespace_between_tokens_is_dropped_and_strings_are_kept() {
        let (p, v) = parse(
            "{ \"a\" :\n [1, 2,\r\n\t3] , \"b\": \"x \\\" \\n y\", \"c\" : { \"d\" : null } }",
        );
        assert_eq!(p.bad, 0);
        let stored = std::str::from_utf8(&p.entries[0].json).unwrap();
        assert!(
            stored.ends_with(r#","a":[1,2,3],"b":"x \" \n y","c":{"d":null}}"#),
            "{stored}"
        );
        assert!(!stored.contains('\n'));
        assert_eq!(v[0]["b"], "x \" \n y");
    }

    #[test]
    fn rejected_content_is_kept_as_a_bounded_string() {
        let big = format!(
            r#"{{"a":1,"a":2,"pad":"{}"}}"#,
            "\\\"".repeat(MAX_BAD_DATA_BYTES)
        );
        let (p, v) = parse(&big);
        assert_eq!(p.bad, 1);
        assert!(p.entries[0].json.len() < MAX_BAD_DATA_BYTES + 1024);
        let kept = v[0]["logtail"]["error"]["bad_data"].as_str().unwrap();
        assert!(big.starts_with(kept));
        assert!(message(&v[0]).contains("the start of its"));
        // Control bytes of an unparseable body take 6 bytes each once escaped.
        let p = parse_body(&[1u8; MAX_BAD_DATA_BYTES], 0, &id());
        assert!(p.entries[0].json.len() < MAX_BAD_DATA_BYTES + 1024);
        let v: Value = serde_json::from_slice(&p.entries[0].json).unwrap();
        assert!(message(&v).contains("the start of its"));
    }

    #[test]
    fn bodies_are_counted_before_anything_is_built() {
        let body = |n: usize| format!("[{}]", vec!["{}"; n].join(","));
        let full = body(MAX_ENTRIES);
        let split = split_body(full.as_bytes()).unwrap();
        assert_eq!(split.entries(), MAX_ENTRIES);
        assert_eq!(split.parse(0, &id()).entries.len(), MAX_ENTRIES);
        let e = split_body(body(MAX_ENTRIES + 1).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("more than 10000 entries"));
        assert_eq!(split_body(b"[1,").unwrap().entries(), 1);
        assert_eq!(split_body(b"{}").unwrap().entries(), 1);
        assert_eq!(split_body(b"[]").unwrap().entries(), 0);
        let p = parse_body(body(3).as_bytes(), 0, &id());
        assert_eq!(
            p.stored_bytes(),
            p.entries.iter().map(|e| e.json.len()).sum::<usize>()
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_to_valid_json_entries(body in proptest::prop_oneof![
            proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            proptest::collection::vec(proptest::sample::select(b"[]{} ,\"01a:".to_vec()), 0..24),
        ]) {
            let p = parse_body(&body, 0, &id());
            // Nothing stored only for a body that is an empty JSON array;
            // anything else stores its entries or an error note in their place.
            let empty_array = serde_json::from_slice::<Vec<Value>>(&body).is_ok_and(|v| v.is_empty());
            proptest::prop_assert_eq!(p.entries.is_empty(), empty_array, "{:?}", String::from_utf8_lossy(&body));
            for e in &p.entries {
                let v: Value = serde_json::from_slice(&e.json).expect("valid JSON");
                proptest::prop_assert!(v["logtail"]["id"].is_string());
            }
        }

        #[test]
        fn arrays_of_objects_keep_every_member(texts in proptest::collection::vec("[ -~]{0,40}", 0..20)) {
            let body = serde_json::to_vec(&texts.iter().map(|t| serde_json::json!({"text": t})).collect::<Vec<_>>()).unwrap();
            let p = parse_body(&body, 0, &id());
            proptest::prop_assert_eq!(p.bad, 0);
            proptest::prop_assert_eq!(p.entries.len(), texts.len());
            for (e, t) in p.entries.iter().zip(&texts) {
                let v: Value = serde_json::from_slice(&e.json).unwrap();
                proptest::prop_assert_eq!(v["text"].as_str().unwrap(), t.as_str());
            }
        }
    }
}
