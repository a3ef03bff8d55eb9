//! Records and their on-disk framing.
//!
//! A frame is `u32 payload length | u32 CRC-32C of payload | payload`, all
//! little-endian. The payload encodes one [`Record`]. Frames are the unit of
//! the write-ahead log and also the content of compressed blocks.

use crate::StoreError;

/// Frame header size: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Largest payload a frame may declare; anything larger is corruption.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// Kind of the body of a record.
pub mod kind {
    /// A logtail JSON entry.
    pub const LOG: u8 = 0;
    /// The server's record of one signed upload batch (its sequence number,
    /// chain hash and verdict), stored with the batch's entries.
    pub const BATCH: u8 = 2;
    /// The server's signed statement that a recovery cut lost positions
    /// its transparency log had published (server-wide, owned by no
    /// tailnet; shown through the transparency API only).
    pub const CUT: u8 = 3;
}

/// Which tailnet a record belongs to, fixed when it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Owner {
    /// No tailnet claimed the writing instance (kept briefly, shown to no tenant).
    #[default]
    Unclaimed,
    /// The tailnet (its ID) the record belongs to.
    Tailnet(String),
    /// Written by a version that did not record owners: the server assigns
    /// one on start ([`crate::Store::claim_legacy`]).
    Legacy,
}

impl Owner {
    /// The owner of a record of tailnet `id`.
    pub fn tailnet(id: impl Into<String>) -> Self {
        Owner::Tailnet(id.into())
    }

    /// A borrowed view.
    pub fn as_ref(&self) -> Tenant<'_> {
        match self {
            Owner::Unclaimed => Tenant::Unclaimed,
            Owner::Tailnet(t) => Tenant::Tailnet(t),
            Owner::Legacy => Tenant::Legacy,
        }
    }
}

/// A borrowed [`Owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tenant<'a> {
    /// See [`Owner::Unclaimed`].
    Unclaimed,
    /// See [`Owner::Tailnet`].
    Tailnet(&'a str),
    /// See [`Owner::Legacy`].
    Legacy,
}

impl<'a> Tenant<'a> {
    /// The key of this owner in indexes and counters: the tailnet ID, `""`
    /// for unclaimed records, `None` for legacy ones.
    pub fn key(self) -> Option<&'a str> {
        match self {
            Tenant::Unclaimed => Some(""),
            Tenant::Tailnet(t) => Some(t),
            Tenant::Legacy => None,
        }
    }

    /// The owned form.
    pub fn to_owned(self) -> Owner {
        match self {
            Tenant::Unclaimed => Owner::Unclaimed,
            Tenant::Tailnet(t) => Owner::Tailnet(t.to_owned()),
            Tenant::Legacy => Owner::Legacy,
        }
    }
}

/// Flag bit of a payload: the record carries an owner (tailnet ID, empty
/// when unclaimed) after its collection. Records without it are legacy.
pub(crate) const FLAG_OWNER: u8 = 2;
/// Flag bit of a payload: the record has a client identity.
pub(crate) const FLAG_IDENTITY: u8 = 1;

/// A record as handed to the store, before it has a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Server receive time, Unix nanoseconds: the indexed time.
    pub time: i64,
    /// Collection the record belongs to.
    pub collection: String,
    /// Tailnet the record belongs to.
    pub owner: Owner,
    /// Public ID of the writing instance.
    pub instance: [u8; 32],
    /// Client identity `(proc_id, proc_seq)`, used to drop retried duplicates.
    pub identity: Option<(u32, u64)>,
    /// Client-declared time, Unix nanoseconds, when known.
    pub client_time: Option<i64>,
    /// What the body is (see [`kind`]).
    pub kind: u8,
    /// The body bytes (for logs, the stored JSON object).
    pub body: Vec<u8>,
}

/// A stored record with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the global log: increasing, starting at 1, never reused; dense except where `Store::skip_to` skipped positions.
    pub seq: u64,
    /// The record itself.
    pub rec: NewRecord,
}

const FIXED: usize = 8 + 8 + 8 + 1 + 1 + 4 + 8 + 32 + 1 + 4;

impl NewRecord {
    /// Size of this record's frame on disk.
    pub fn frame_len(&self) -> usize {
        let owner = match &self.owner {
            Owner::Legacy => 0,
            Owner::Unclaimed => 1,
            Owner::Tailnet(t) => 1 + t.len().min(255),
        };
        FRAME_HEADER + FIXED + self.collection.len().min(255) + owner + self.body.len()
    }
}

/// Appends the frame of `rec` at position `seq` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, rec: &NewRecord) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&rec.time.to_le_bytes());
    out.extend_from_slice(&rec.client_time.unwrap_or(i64::MIN).to_le_bytes());
    let owner: Option<&str> = match &rec.owner {
        Owner::Legacy => None,
        Owner::Unclaimed => Some(""),
        Owner::Tailnet(t) => Some(t),
    };
    let flags = if rec.identity.is_some() {
        FLAG_IDENTITY
    } else {
        0
    } | if owner.is_some() { FLAG_OWNER } else { 0 };
    out.push(flags);
    out.push(rec.kind);
    let (pid, pseq) = rec.identity.unwrap_or((0, 0));
    out.extend_from_slice(&pid.to_le_bytes());
    out.extend_from_slice(&pseq.to_le_bytes());
    out.extend_from_slice(&rec.instance);
    let coll = &rec.collection.as_bytes()[..rec.collection.len().min(255)];
    out.push(coll.len() as u8);
    out.extend_from_slice(coll);
    if let Some(t) = owner {
        let t = &t.as_bytes()[..t.len().min(255)];
        out.push(t.len() as u8);
        out.extend_from_slice(t);
    }
    out.extend_from_slice(&(rec.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&rec.body);
    let payload_len = out.len() - start - FRAME_HEADER;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of reading one frame from a byte slice.
#[derive(Debug)]
pub enum Frame {
    /// A valid record and the number of bytes it used.
    Record(Record, usize),
    /// The slice ends before the frame does (a torn write, or just the end).
    Incomplete,
    /// The frame is damaged: bad length, checksum or payload.
    Corrupt(&'static str),
}

fn take<const N: usize>(p: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let s = p.get(*at..*at + N)?;
    *at += N;
    s.try_into().ok()
}

fn decode_payload(p: &[u8]) -> Option<Record> {
    let mut at = 0;
    let seq = u64::from_le_bytes(take(p, &mut at)?);
    let time = i64::from_le_bytes(take(p, &mut at)?);
    let client_time = i64::from_le_bytes(take(p, &mut at)?);
    let [flags] = take::<1>(p, &mut at)?;
    let [kind] = take::<1>(p, &mut at)?;
    let pid = u32::from_le_bytes(take(p, &mut at)?);
    let pseq = u64::from_le_bytes(take(p, &mut at)?);
    let instance = take::<32>(p, &mut at)?;
    let [clen] = take::<1>(p, &mut at)?;
    let collection = std::str::from_utf8(p.get(at..at + clen as usize)?)
        .ok()?
        .to_owned();
    at += clen as usize;
    if flags > FLAG_IDENTITY | FLAG_OWNER {
        return None;
    }
    let owner = if flags & FLAG_OWNER != 0 {
        let [tlen] = take::<1>(p, &mut at)?;
        let t = std::str::from_utf8(p.get(at..at + tlen as usize)?).ok()?;
        at += tlen as usize;
        if t.is_empty() {
            Owner::Unclaimed
        } else {
            Owner::Tailnet(t.to_owned())
        }
    } else {
        Owner::Legacy
    };
    let blen = u32::from_le_bytes(take(p, &mut at)?) as usize;
    let body = p.get(at..at + blen)?.to_vec();
    if at + blen != p.len() {
        return None;
    }
    Some(Record {
        seq,
        rec: NewRecord {
            time,
            collection,
            owner,
            instance,
            identity: (flags & FLAG_IDENTITY != 0).then_some((pid, pseq)),
            client_time: (client_time != i64::MIN).then_some(client_time),
            kind,
            body,
        },
    })
}

/// Reads the frame at the start of `buf`.
pub fn decode_frame(buf: &[u8]) -> Frame {
    if buf.len() < FRAME_HEADER {
        return Frame::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if !(FIXED..=MAX_PAYLOAD).contains(&len) {
        return Frame::Corrupt("frame length out of range");
    }
    let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Incomplete;
    };
    if crc32c::crc32c(payload) != crc {
        return Frame::Corrupt("checksum mismatch");
    }
    match decode_payload(payload) {
        Some(r) => Frame::Record(r, FRAME_HEADER + len),
        None => Frame::Corrupt("malformed record payload"),
    }
}

/// Decodes every frame of a buffer that must contain only whole, valid frames
/// (a block or a committed WAL range).
pub fn decode_all(buf: &[u8], what: &str) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match decode_frame(&buf[at..]) {
            Frame::Record(r, n) => {
                out.push(r);
                at += n;
            }
            Frame::Incomplete => {
                return Err(StoreError::Corrupt(format!(
                    "{what}: truncated frame at byte {at}"
                )));
            }
            Frame::Corrupt(why) => {
                return Err(StoreError::Corrupt(format!("{what}: {why} at byte {at}")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(i: u64) -> NewRecord {
        NewRecord {
            time: 1_000 + i as i64,
            collection: "tailnode".into(),
            owner: match i % 3 {
                0 => Owner::Unclaimed,
                1 => Owner::tailnet(format!("T{i}")),
                _ => Owner::Legacy,
            },
            instance: [i as u8; 32],
            identity: i.is_multiple_of(2).then_some((7, i)),
            client_time: i.is_multiple_of(3).then_some(5),
            kind: kind::LOG,
            body: format!("{{\"n\":{i}}}").into_bytes(),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        for i in 0..10 {
            encode_frame(&mut buf, i + 1, &sample(i));
        }
        let recs = decode_all(&buf, "test").unwrap();
        assert_eq!(recs.len(), 10);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.rec, sample(i as u64));
            assert_eq!(r.rec.frame_len(), sample(i as u64).frame_len());
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, &sample(1));
        for byte in 0..buf.len() {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            assert!(
                !matches!(decode_frame(&bad), Frame::Record(..)),
                "byte {byte}"
            );
        }
    }
}
