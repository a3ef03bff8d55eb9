//! How records sit in JetStream: subjects, message payloads, positions
//! and message IDs.
//!
//! - **Subject** `<stream>.<owner>.<collection>`: one subject per tailnet
//!   and collection, so a tenant's read asks JetStream for its own
//!   messages only and retention purges a subject's prefix. Tokens are
//!   escaped (`~XX` for every byte outside `[A-Za-z0-9_-]`); unclaimed
//!   records have the owner token `~`.
//! - **Payload**: one format byte, then the records' store frames
//!   (length, CRC-32C, payload; [`tally_store::record`]), position 0
//!   inside, at most [`MAX_RECORDS_PER_MESSAGE`] records: [`RAW`] as they
//!   are, [`ZSTD`] compressed (when that is smaller; log entries shrink
//!   about fourfold).
//! - **Position** of a record: `stream sequence << 16 | index in the
//!   message`, increasing and with gaps, as the log seam allows.
//! - **Message ID** (`Nats-Msg-Id`): a hash of the records' identities,
//!   so a retried upload, sent again byte for byte to any server, is
//!   dropped by JetStream's duplicate window.

use sha2::{Digest, Sha256};
use tally_store::record::{Frame, decode_frame, encode_frame};
use tally_store::{NewRecord, Owner, Record, StoreError, Tenant};

/// Format byte: the frames as they are.
pub const RAW: u8 = 1;
/// Format byte: the frames compressed with zstd.
pub const ZSTD: u8 = 2;
/// The most a message's frames may decompress to.
const MAX_DECOMPRESSED: usize = 64 << 20;

/// Bits of a position that index a record inside its message.
pub const INDEX_BITS: u32 = 16;
/// Most records in one message.
pub const MAX_RECORDS_PER_MESSAGE: usize = (1 << INDEX_BITS) - 1;

/// The position of record `index` of the message at `stream_seq`.
pub fn position(stream_seq: u64, index: usize) -> u64 {
    (stream_seq << INDEX_BITS) | index as u64
}

/// The stream sequence and index of a position.
pub fn split(pos: u64) -> (u64, usize) {
    (pos >> INDEX_BITS, (pos & ((1 << INDEX_BITS) - 1)) as usize)
}

/// Escapes one subject token.
fn escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('~');
            out.push_str(&format!("{b:02x}"));
        }
    }
}

/// The subject token of an owner.
pub fn owner_token(owner: Tenant<'_>) -> String {
    match owner {
        Tenant::Legacy => "~~".into(),
        Tenant::Unclaimed => "~".into(),
        Tenant::Tailnet(t) => {
            let mut s = String::new();
            escape(&mut s, t);
            s
        }
    }
}

/// The subject of an owner's collection.
pub fn subject(prefix: &str, owner: Tenant<'_>, collection: &str) -> String {
    let mut s = format!("{prefix}.{}.", owner_token(owner));
    escape(&mut s, collection);
    s
}

/// The subject filter that selects what a read can match: one tailnet
/// and/or one collection narrow it; anything else is filtered after.
pub fn filter_subject(prefix: &str, owner: Option<&str>, collections: &[String]) -> String {
    let owner = match owner {
        Some("") => "~".to_owned(),
        Some(t) => owner_token(Tenant::Tailnet(t)),
        None => "*".to_owned(),
    };
    match collections {
        [one] => {
            let mut s = format!("{prefix}.{owner}.");
            escape(&mut s, one);
            s
        }
        _ if owner == "*" => format!("{prefix}.>"),
        _ => format!("{prefix}.{owner}.*"),
    }
}

/// One message to publish: its subject, payload, ID and record count.
#[derive(Debug)]
pub struct Outgoing {
    /// `<stream>.<owner>.<collection>`.
    pub subject: String,
    /// The records' frames.
    pub payload: Vec<u8>,
    /// `Nats-Msg-Id`, when every record has a client identity.
    pub msg_id: Option<String>,
    /// Records in the payload.
    pub records: usize,
}

/// Packs records into messages of at most `max_payload` bytes, one
/// subject each, keeping their order within each subject.
pub fn pack(
    prefix: &str,
    records: &[NewRecord],
    max_payload: usize,
) -> Result<Vec<Outgoing>, StoreError> {
    let mut out: Vec<Outgoing> = Vec::new();
    let mut hashers: Vec<Option<Sha256>> = Vec::new();
    // The open message of each subject, by index into `out`.
    let mut open: Vec<(String, usize)> = Vec::new();
    for rec in records {
        let subject = subject(prefix, rec.owner.as_ref(), &rec.collection);
        let len = rec.frame_len();
        if len > max_payload {
            return Err(StoreError::TooLarge(format!(
                "a record of {len} bytes is over the NATS server's {max_payload}-byte message limit (raise max_payload in nats-server's configuration)"
            )));
        }
        let slot = open.iter().position(|(s, _)| *s == subject);
        let i = match slot.map(|k| open[k].1) {
            Some(i)
                if out[i].payload.len() + len <= max_payload
                    && out[i].records < MAX_RECORDS_PER_MESSAGE =>
            {
                i
            }
            _ => {
                out.push(Outgoing {
                    subject: subject.clone(),
                    payload: Vec::new(),
                    msg_id: None,
                    records: 0,
                });
                hashers.push(Some(Sha256::new()));
                let i = out.len() - 1;
                match slot {
                    Some(k) => open[k].1 = i,
                    None => open.push((subject, i)),
                }
                i
            }
        };
        encode_frame(&mut out[i].payload, 0, rec);
        out[i].records += 1;
        hashers[i] = match (hashers[i].take(), rec.identity) {
            (Some(mut h), Some((pid, pseq))) => {
                h.update(rec.instance);
                h.update(pid.to_le_bytes());
                h.update(pseq.to_le_bytes());
                Some(h)
            }
            _ => None,
        };
    }
    for (o, h) in out.iter_mut().zip(hashers) {
        o.msg_id = h.map(|mut h| {
            h.update(o.subject.as_bytes());
            hex::encode(&h.finalize()[..16])
        });
        o.payload = seal(std::mem::take(&mut o.payload));
    }
    Ok(out)
}

/// The format byte and the frames, compressed when that is smaller.
fn seal(frames: Vec<u8>) -> Vec<u8> {
    if frames.len() > 256
        && let Ok(z) = zstd::bulk::compress(&frames, 1)
        && z.len() < frames.len()
    {
        let mut out = Vec::with_capacity(z.len() + 1);
        out.push(ZSTD);
        out.extend_from_slice(&z);
        return out;
    }
    let mut out = Vec::with_capacity(frames.len() + 1);
    out.push(RAW);
    out.extend_from_slice(&frames);
    out
}

/// Decodes a message's records, giving each its position.
pub fn unpack(stream_seq: u64, payload: &[u8]) -> Result<Vec<Record>, StoreError> {
    let damaged =
        |why: String| StoreError::Corrupt(format!("JetStream message {stream_seq}: {why}"));
    let owned;
    let payload: &[u8] = match payload.split_first() {
        None => return Ok(Vec::new()),
        Some((&RAW, frames)) => frames,
        Some((&ZSTD, z)) => {
            owned = zstd::bulk::decompress(z, MAX_DECOMPRESSED)
                .map_err(|e| damaged(format!("cannot decompress: {e}")))?;
            &owned
        }
        Some((b, _)) => return Err(damaged(format!("unknown format byte {b}"))),
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        match decode_frame(&payload[at..]) {
            Frame::Record(mut r, n) => {
                r.seq = position(stream_seq, out.len());
                out.push(r);
                at += n;
            }
            Frame::Incomplete => {
                return Err(StoreError::Corrupt(format!(
                    "JetStream message {stream_seq}: truncated record at byte {at}"
                )));
            }
            Frame::Corrupt(why) => {
                return Err(StoreError::Corrupt(format!(
                    "JetStream message {stream_seq}: {why} at byte {at}"
                )));
            }
        }
    }
    Ok(out)
}

/// The owner a subject's records belong to (for retention by subject).
pub fn owner_of_subject(prefix: &str, subject: &str) -> Option<Owner> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (token, _) = rest.split_once('.')?;
    Some(match token {
        "~" => Owner::Unclaimed,
        "~~" => Owner::Legacy,
        t => Owner::Tailnet(unescape(t)?),
    })
}

fn unescape(t: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(t.len());
    let mut it = t.bytes();
    while let Some(b) = it.next() {
        if b == b'~' {
            let hi = it.next()?;
            let lo = it.next()?;
            let s = [hi, lo];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&s).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: Owner, coll: &str, id: Option<(u32, u64)>, body: &str) -> NewRecord {
        NewRecord {
            time: 5,
            collection: coll.into(),
            owner,
            instance: [7; 32],
            identity: id,
            client_time: None,
            kind: tally_store::kind::LOG,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn subjects_escape_what_nats_would_read_as_syntax() {
        let s = subject("T", Tenant::Tailnet("a.b*>c d"), "x.y");
        assert_eq!(s, "T.a~2eb~2a~3ec~20d.x~2ey");
        assert_eq!(subject("T", Tenant::Unclaimed, "logs"), "T.~.logs");
        assert_eq!(
            owner_of_subject("T", &s),
            Some(Owner::Tailnet("a.b*>c d".into()))
        );
        assert_eq!(owner_of_subject("T", "T.~.logs"), Some(Owner::Unclaimed));
        assert_eq!(
            filter_subject("T", Some("t1"), &["logs".into()]),
            "T.t1.logs"
        );
        assert_eq!(filter_subject("T", Some("t1"), &[]), "T.t1.*");
        assert_eq!(filter_subject("T", None, &["logs".into()]), "T.*.logs");
        assert_eq!(filter_subject("T", None, &[]), "T.>");
        assert_eq!(filter_subject("T", Some(""), &[]), "T.~.*");
    }

    #[test]
    fn packing_splits_by_subject_and_size_and_round_trips() {
        let records = vec![
            rec(Owner::tailnet("a"), "logs", Some((1, 1)), "one"),
            rec(Owner::tailnet("b"), "logs", Some((1, 2)), "two"),
            rec(Owner::tailnet("a"), "logs", Some((1, 3)), "three"),
            rec(Owner::tailnet("a"), "logs", None, "four"),
        ];
        let out = pack("T", &records, 1 << 20).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].subject, "T.a.logs");
        assert_eq!(out[0].records, 3);
        assert!(out[0].msg_id.is_none(), "a record without identity");
        assert!(out[1].msg_id.is_some());
        let back = unpack(9, &out[0].payload).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].rec, records[3]);
        assert_eq!(split(back[2].seq), (9, 2));
        // The same records give the same ID; others another.
        let again = pack("T", &records[1..2], 1 << 20).unwrap();
        assert_eq!(again[0].msg_id, out[1].msg_id);
        let other = pack("T", &records[0..1], 1 << 20).unwrap();
        assert_ne!(other[0].msg_id, out[1].msg_id);
        // A small limit splits one subject's records into several messages.
        let small = pack("T", &records[..1], records[0].frame_len()).unwrap();
        assert_eq!(small.len(), 1);
        let many = pack("T", &records, records[2].frame_len() + 1).unwrap();
        assert_eq!(many.len(), 4);
        assert!(matches!(
            pack("T", &records, 10),
            Err(StoreError::TooLarge(_))
        ));
    }

    #[test]
    fn big_messages_are_compressed_and_read_back() {
        let records: Vec<NewRecord> = (0..200)
            .map(|i| {
                rec(
                    Owner::tailnet("a"),
                    "logs",
                    Some((1, i)),
                    "a fairly repetitive log line",
                )
            })
            .collect();
        let out = pack("T", &records, 1 << 20).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload[0], ZSTD);
        let raw: usize = records.iter().map(NewRecord::frame_len).sum();
        assert!(
            out[0].payload.len() * 4 < raw,
            "{} of {raw}",
            out[0].payload.len()
        );
        let back = unpack(3, &out[0].payload).unwrap();
        assert_eq!(back.len(), 200);
        assert_eq!(back[199].rec, records[199]);
        let mut bad = out[0].payload.clone();
        bad[10] ^= 0xff;
        assert!(unpack(3, &bad).is_err());
        assert!(unpack(3, &[9, 1, 2]).is_err());
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let out = pack("T", &[rec(Owner::tailnet("a"), "l", None, "x")], 1 << 20).unwrap();
        let mut p = out[0].payload.clone();
        let last = p.len() - 1;
        p[last] ^= 1;
        assert!(matches!(unpack(1, &p), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            unpack(1, &out[0].payload[..5]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(unpack(1, &[]).unwrap().is_empty());
    }
}
