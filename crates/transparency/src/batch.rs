//! Signed, hash-chained upload batches: what the agent signs, how it
//! travels, and the server's verifier state machine. The exact wire format
//! is specified in the [crate documentation](crate#upload-batch-signatures).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as EdSignature, Signer as _};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::hash::Hash;

/// First line of the signed batch statement.
pub const BATCH_DOMAIN: &str = "tally-batch-v1";
/// First line of a key endorsement statement.
pub const KEY_ENDORSEMENT_DOMAIN: &str = "tally-batch-key-v1";

/// Header: batch sequence number, decimal, from 1.
pub const HEADER_SEQ: &str = "Tally-Batch-Seq";
/// Header: hash of the previous batch of the chain, 64 lowercase hex.
pub const HEADER_PREV: &str = "Tally-Batch-Prev";
/// Header: the node's Ed25519 public key, standard padded base64 (44 chars).
pub const HEADER_KEY: &str = "Tally-Batch-Key";
/// Header: Ed25519 signature of the batch statement, standard padded base64 (88 chars).
pub const HEADER_SIGNATURE: &str = "Tally-Batch-Signature";
/// Header (only when the key changes): signature by the previous key of the
/// key endorsement statement for the new key, standard padded base64.
pub const HEADER_KEY_ENDORSEMENT: &str = "Tally-Batch-Key-Endorsement";

/// Why batch headers or parameters are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Some batch headers are present but this one is missing.
    #[error("batch header {0} is missing")]
    MissingHeader(&'static str),
    /// `Tally-Batch-Seq` is not a decimal number from 1 without leading zeros.
    #[error("Tally-Batch-Seq is not a decimal number from 1 to 2^64-2")]
    BadSeq,
    /// `Tally-Batch-Prev` is not 64 lowercase hex digits.
    #[error("Tally-Batch-Prev is not 64 lowercase hex digits")]
    BadPrev,
    /// `Tally-Batch-Key` is not the base64 of a valid Ed25519 public key.
    #[error("Tally-Batch-Key is not the base64 of an Ed25519 public key")]
    BadKey,
    /// `Tally-Batch-Signature` is not the base64 of 64 bytes.
    #[error("Tally-Batch-Signature is not the base64 of a 64-byte signature")]
    BadSignatureEncoding,
    /// `Tally-Batch-Key-Endorsement` is not the base64 of 64 bytes.
    #[error("Tally-Batch-Key-Endorsement is not the base64 of a 64-byte signature")]
    BadEndorsementEncoding,
    /// The instance public ID is not 64 lowercase hex digits.
    #[error("instance public ID is not 64 lowercase hex digits")]
    BadInstance,
    /// The collection name is not `[a-zA-Z0-9-_.]+`.
    #[error("collection name is not [a-zA-Z0-9-_.]+")]
    BadCollection,
    /// A chain state that cannot produce another batch (sequence 0 or exhausted).
    #[error("chain state has no next sequence number")]
    SeqExhausted,
    /// Chain state text that does not parse.
    #[error("malformed chain state")]
    BadState,
}

/// A fresh random Ed25519 node key (keep its 32-byte seed,
/// [`SigningKey::to_bytes`], in a 0600 file).
pub fn generate_signing_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// Where a chain stands: the sequence number the next batch must carry and
/// the hash of the last batch accepted. Persisted by the agent (before
/// sending a batch) and by the server (with the batch's records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    /// Sequence number of the next batch (the first batch is 1).
    pub next_seq: u64,
    /// Hash of the previous batch; [`Hash::ZERO`] before the first.
    pub last_hash: Hash,
}

impl ChainState {
    /// A chain nothing was sent on yet: next sequence 1, previous hash zero.
    pub const GENESIS: ChainState = ChainState {
        next_seq: 1,
        last_hash: Hash::ZERO,
    };

    /// Text form for state files: `<next_seq> <last_hash hex>`.
    pub fn to_text(&self) -> String {
        format!("{} {}", self.next_seq, self.last_hash.to_hex())
    }

    /// Parses [`ChainState::to_text`] (surrounding white space allowed).
    pub fn from_text(text: &str) -> Result<ChainState, BatchError> {
        let (seq, hash) = text.trim().split_once(' ').ok_or(BatchError::BadState)?;
        let next_seq = parse_seq(seq.as_bytes()).ok_or(BatchError::BadState)?;
        let last_hash = Hash::from_hex(hash).map_err(|_| BatchError::BadState)?;
        Ok(ChainState {
            next_seq,
            last_hash,
        })
    }
}

impl Default for ChainState {
    fn default() -> Self {
        ChainState::GENESIS
    }
}

fn check_instance(instance: &str) -> Result<(), BatchError> {
    Hash::from_hex(instance)
        .map(|_| ())
        .map_err(|_| BatchError::BadInstance)
}

fn check_collection(collection: &str) -> Result<(), BatchError> {
    let ok = !collection.is_empty()
        && collection
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BatchError::BadCollection)
    }
}

/// Decimal 1 ..= u64::MAX - 1, no sign, no leading zeros.
fn parse_seq(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || text[0] == b'0' || !text.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(text)
        .ok()?
        .parse()
        .ok()
        .filter(|&s| s < u64::MAX)
}

/// The exact bytes a batch signature covers (see the crate docs):
///
/// ```text
/// tally-batch-v1\n<instance>\n<collection>\n<seq>\n<prev hex>\n<SHA-256(body) hex>\n
/// ```
pub fn batch_statement(
    instance: &str,
    collection: &str,
    seq: u64,
    prev: &Hash,
    body_hash: &Hash,
) -> Vec<u8> {
    format!(
        "{BATCH_DOMAIN}\n{instance}\n{collection}\n{seq}\n{}\n{}\n",
        prev.to_hex(),
        body_hash.to_hex()
    )
    .into_bytes()
}

/// The exact bytes a key endorsement covers:
///
/// ```text
/// tally-batch-key-v1\n<instance>\n<base64 new public key>\n
/// ```
pub fn key_endorsement_statement(instance: &str, new_key: &VerifyingKey) -> Vec<u8> {
    format!(
        "{KEY_ENDORSEMENT_DOMAIN}\n{instance}\n{}\n",
        STANDARD.encode(new_key.as_bytes())
    )
    .into_bytes()
}

/// The facts of one batch: what was signed and the resulting chain hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Sequence number.
    pub seq: u64,
    /// Hash of the previous batch as claimed by this one.
    pub prev: Hash,
    /// SHA-256 of the (decoded) body.
    pub body_hash: Hash,
    /// This batch's chain hash: SHA-256 of the signed statement.
    pub hash: Hash,
}

/// The agent side: signs batches of one chain (one instance, one collection).
pub struct BatchSigner {
    key: SigningKey,
    instance: String,
    collection: String,
}

impl std::fmt::Debug for BatchSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSigner")
            .field(
                "public_key",
                &STANDARD.encode(self.key.verifying_key().as_bytes()),
            )
            .field("instance", &self.instance)
            .field("collection", &self.collection)
            .finish()
    }
}

impl BatchSigner {
    /// A signer for the chain of `instance_public_id` (64 lowercase hex)
    /// uploading to `collection`.
    pub fn new(
        key: SigningKey,
        instance_public_id: &str,
        collection: &str,
    ) -> Result<BatchSigner, BatchError> {
        check_instance(instance_public_id)?;
        check_collection(collection)?;
        Ok(BatchSigner {
            key,
            instance: instance_public_id.to_owned(),
            collection: collection.to_owned(),
        })
    }

    /// The node's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `body` (the request body before any `Content-Encoding`) as the
    /// next batch after `state`. The caller persists the returned batch and
    /// [`SignedBatch::next_state`] before the first send, and resends the
    /// very same body and headers until the server answers 200 or 400.
    pub fn sign(&self, state: &ChainState, body: &[u8]) -> Result<SignedBatch, BatchError> {
        let seq = state.next_seq;
        if seq == 0 || seq == u64::MAX {
            return Err(BatchError::SeqExhausted);
        }
        let body_hash = Hash::sha256(body);
        let statement = batch_statement(
            &self.instance,
            &self.collection,
            seq,
            &state.last_hash,
            &body_hash,
        );
        let info = BatchInfo {
            seq,
            prev: state.last_hash,
            body_hash,
            hash: Hash::sha256(&statement),
        };
        Ok(SignedBatch {
            info,
            public_key: self.key.verifying_key(),
            signature: self.key.sign(&statement).to_bytes(),
            endorsement: None,
        })
    }

    /// Endorses `new_key` as this node's next key: the value of
    /// `Tally-Batch-Key-Endorsement` on batches signed with the new key
    /// until the server has accepted one of them.
    pub fn endorse(&self, new_key: &VerifyingKey) -> [u8; 64] {
        self.key
            .sign(&key_endorsement_statement(&self.instance, new_key))
            .to_bytes()
    }
}

/// A signed batch, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBatch {
    /// What was signed.
    pub info: BatchInfo,
    /// The key that signed it.
    pub public_key: VerifyingKey,
    /// Ed25519 signature of the batch statement.
    pub signature: [u8; 64],
    /// Endorsement of `public_key` by the previous key, during a rotation.
    pub endorsement: Option<[u8; 64]>,
}

impl SignedBatch {
    /// The chain state after this batch.
    pub fn next_state(&self) -> ChainState {
        ChainState {
            next_seq: self.info.seq + 1,
            last_hash: self.info.hash,
        }
    }

    /// The HTTP headers that carry this batch's signature, in order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (HEADER_SEQ, self.info.seq.to_string()),
            (HEADER_PREV, self.info.prev.to_hex()),
            (HEADER_KEY, STANDARD.encode(self.public_key.as_bytes())),
            (HEADER_SIGNATURE, STANDARD.encode(self.signature)),
        ];
        if let Some(e) = &self.endorsement {
            h.push((HEADER_KEY_ENDORSEMENT, STANDARD.encode(e)));
        }
        h
    }
}

/// The raw values of the batch headers of one request, as bytes (absent
/// headers are `None`). Any bytes are accepted; [`check_batch`] judges.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBatchHeaders<'a> {
    /// `Tally-Batch-Seq`.
    pub seq: Option<&'a [u8]>,
    /// `Tally-Batch-Prev`.
    pub prev: Option<&'a [u8]>,
    /// `Tally-Batch-Key`.
    pub key: Option<&'a [u8]>,
    /// `Tally-Batch-Signature`.
    pub signature: Option<&'a [u8]>,
    /// `Tally-Batch-Key-Endorsement`.
    pub endorsement: Option<&'a [u8]>,
}

impl<'a> RawBatchHeaders<'a> {
    /// Collects the batch headers through `get(name)`, a lookup into the
    /// request's header map (case-insensitive, as HTTP header names are).
    pub fn from_lookup(get: impl Fn(&str) -> Option<&'a [u8]>) -> Self {
        RawBatchHeaders {
            seq: get(HEADER_SEQ),
            prev: get(HEADER_PREV),
            key: get(HEADER_KEY),
            signature: get(HEADER_SIGNATURE),
            endorsement: get(HEADER_KEY_ENDORSEMENT),
        }
    }
}

/// Batch headers that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeaders {
    /// Sequence number.
    pub seq: u64,
    /// Claimed previous batch hash.
    pub prev: Hash,
    /// Presented public key.
    pub key: VerifyingKey,
    /// Signature of the statement.
    pub signature: [u8; 64],
    /// Endorsement of `key` by the previous key.
    pub endorsement: Option<[u8; 64]>,
}

fn decode_fixed<const N: usize>(value: &[u8]) -> Option<[u8; N]> {
    // Standard padded base64 of N bytes is exactly 4 * ceil(N / 3) characters.
    if value.len() != N.div_ceil(3) * 4 {
        return None;
    }
    STANDARD.decode(value).ok()?.try_into().ok()
}

impl BatchHeaders {
    /// Parses raw header values; `Ok(None)` when the request carries none of
    /// the four mandatory batch headers (an unsigned upload, e.g. from a
    /// stock Tailscale client).
    pub fn parse(raw: &RawBatchHeaders<'_>) -> Result<Option<BatchHeaders>, BatchError> {
        if raw.seq.is_none() && raw.prev.is_none() && raw.key.is_none() && raw.signature.is_none() {
            return Ok(None);
        }
        let seq = raw.seq.ok_or(BatchError::MissingHeader(HEADER_SEQ))?;
        let prev = raw.prev.ok_or(BatchError::MissingHeader(HEADER_PREV))?;
        let key = raw.key.ok_or(BatchError::MissingHeader(HEADER_KEY))?;
        let signature = raw
            .signature
            .ok_or(BatchError::MissingHeader(HEADER_SIGNATURE))?;
        let seq = parse_seq(seq).ok_or(BatchError::BadSeq)?;
        let prev = std::str::from_utf8(prev)
            .ok()
            .and_then(|p| Hash::from_hex(p).ok())
            .ok_or(BatchError::BadPrev)?;
        let key = decode_fixed::<32>(key)
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
            .ok_or(BatchError::BadKey)?;
        let signature = decode_fixed::<64>(signature).ok_or(BatchError::BadSignatureEncoding)?;
        let endorsement = match raw.endorsement {
            None => None,
            Some(e) => Some(decode_fixed::<64>(e).ok_or(BatchError::BadEndorsementEncoding)?),
        };
        Ok(Some(BatchHeaders {
            seq,
            prev,
            key,
            signature,
            endorsement,
        }))
    }
}

/// The server's judgement of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Next in sequence, chained to the previous batch, signed by the node.
    Ok,
    /// Signed by the node, but batches `from ..= to` never arrived (lost or
    /// withheld). The chain resumes from this batch.
    Gap {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
    /// Next in sequence and signed by the node, but its previous-batch hash
    /// is not the hash of the batch the server has: the node's history
    /// differs from the server's (a batch was altered or substituted, or the
    /// node lost its chain state). The chain resumes from this batch.
    BrokenChain {
        /// The hash of the last batch the server accepted.
        expected_prev: Hash,
        /// The previous hash the batch claims.
        claimed_prev: Hash,
    },
    /// Not validly signed by the node's registered key (forged, altered in
    /// transit, or signed with an unendorsed new key; see [`KeyEvent`]).
    BadSignature,
    /// Validly signed, but its sequence number is behind the chain: an old
    /// batch sent again. Harmless if byte-identical to a stored batch (a
    /// retry whose answer was lost), suspicious otherwise.
    Replay {
        /// The batch's sequence number.
        seq: u64,
        /// The sequence number the server expected.
        expected: u64,
    },
    /// Exactly the last accepted batch again (same statement hash): a retry
    /// whose answer was lost. Store its entries (dedup makes that
    /// idempotent) but do not flag it.
    Duplicate,
    /// No batch headers at all. Expected from clients that do not sign
    /// (stock Tailscale); suspicious when the instance has a key registered.
    Unsigned {
        /// Whether the instance has a registered key (it signed before).
        key_registered: bool,
    },
    /// Batch headers present but unusable.
    Malformed(BatchError),
}

impl Verdict {
    /// Whether the server should record this as a finding (everything but
    /// [`Verdict::Ok`], [`Verdict::Duplicate`] and unsigned uploads of
    /// instances that never signed).
    pub fn is_suspicious(&self) -> bool {
        !matches!(
            self,
            Verdict::Ok
                | Verdict::Duplicate
                | Verdict::Unsigned {
                    key_registered: false
                }
        )
    }
}

/// What happened to the node's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// Nothing to do: the batch used the registered key, or no key was involved.
    None,
    /// Trust on first use: the instance had no key; register this one (and audit it).
    FirstUse(VerifyingKey),
    /// An endorsed rotation: replace the registered key by `new` (and audit it).
    Rotated {
        /// The key registered so far, which endorsed `new`.
        old: VerifyingKey,
        /// The key to register.
        new: VerifyingKey,
    },
    /// The batch presents a key other than the registered one without a
    /// valid endorsement by it: an impostor, or a node that lost its key
    /// (an operator must re-register it). Keep the registered key.
    Unendorsed {
        /// The registered key.
        registered: VerifyingKey,
        /// The key the batch presented.
        presented: VerifyingKey,
    },
}

/// The result of [`check_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCheck {
    /// The judgement.
    pub verdict: Verdict,
    /// What to do with the instance's registered key.
    pub key: KeyEvent,
    /// The chain state to persist, together with the batch's entries.
    pub state: ChainState,
    /// The batch's facts, when its headers parsed.
    pub batch: Option<BatchInfo>,
}

impl BatchCheck {
    /// The key the server should now hold as the instance's registered key,
    /// if it changes ([`KeyEvent::FirstUse`] or [`KeyEvent::Rotated`]).
    pub fn key_to_register(&self) -> Option<VerifyingKey> {
        match &self.key {
            KeyEvent::FirstUse(k) => Some(*k),
            KeyEvent::Rotated { new, .. } => Some(*new),
            _ => None,
        }
    }
}

/// The server's verifier state machine: judges one upload from `instance`
/// (its public ID) to `collection` given the chain `state`, the instance's
/// `registered` key (`None` before first contact), the raw batch headers and
/// the request body after removing any `Content-Encoding`.
///
/// Pure and total: never panics, whatever the input. Apply the result by
/// persisting [`BatchCheck::state`] and [`BatchCheck::key_to_register`]
/// atomically with the stored entries, and flag
/// [`Verdict::is_suspicious`] ones; the entries of every batch are stored.
///
/// Order of checks: headers parse; key (registered, first use, endorsed
/// rotation); signature; then sequence and chain. The state advances only
/// for [`Verdict::Ok`], [`Verdict::Gap`] and [`Verdict::BrokenChain`], and
/// keys change only then.
pub fn check_batch(
    state: &ChainState,
    registered: Option<&VerifyingKey>,
    instance: &str,
    collection: &str,
    raw: &RawBatchHeaders<'_>,
    body: &[u8],
) -> BatchCheck {
    let reject = |verdict: Verdict, key: KeyEvent, batch: Option<BatchInfo>| BatchCheck {
        verdict,
        key,
        state: *state,
        batch,
    };
    let headers = match BatchHeaders::parse(raw) {
        Ok(Some(h)) => h,
        Ok(None) => {
            return reject(
                Verdict::Unsigned {
                    key_registered: registered.is_some(),
                },
                KeyEvent::None,
                None,
            );
        }
        Err(e) => return reject(Verdict::Malformed(e), KeyEvent::None, None),
    };
    if let Err(e) = check_instance(instance).and_then(|()| check_collection(collection)) {
        return reject(Verdict::Malformed(e), KeyEvent::None, None);
    }
    let body_hash = Hash::sha256(body);
    let statement = batch_statement(instance, collection, headers.seq, &headers.prev, &body_hash);
    let info = BatchInfo {
        seq: headers.seq,
        prev: headers.prev,
        body_hash,
        hash: Hash::sha256(&statement),
    };

    // Which key must have signed, and what that means for the registration.
    let key_event = match registered {
        None => KeyEvent::FirstUse(headers.key),
        Some(reg) if *reg == headers.key => KeyEvent::None,
        Some(reg) => {
            let endorsed = headers.endorsement.is_some_and(|e| {
                let sig = EdSignature::from_bytes(&e);
                reg.verify_strict(&key_endorsement_statement(instance, &headers.key), &sig)
                    .is_ok()
            });
            if endorsed {
                KeyEvent::Rotated {
                    old: *reg,
                    new: headers.key,
                }
            } else {
                let ev = KeyEvent::Unendorsed {
                    registered: *reg,
                    presented: headers.key,
                };
                return reject(Verdict::BadSignature, ev, Some(info));
            }
        }
    };
    let sig = EdSignature::from_bytes(&headers.signature);
    if headers.key.verify_strict(&statement, &sig).is_err() {
        return reject(Verdict::BadSignature, KeyEvent::None, Some(info));
    }

    let advanced = ChainState {
        next_seq: headers.seq + 1,
        last_hash: info.hash,
    };
    let accept = |verdict: Verdict| BatchCheck {
        verdict,
        key: key_event.clone(),
        state: advanced,
        batch: Some(info),
    };
    if headers.seq == state.next_seq {
        if headers.prev == state.last_hash {
            accept(Verdict::Ok)
        } else {
            accept(Verdict::BrokenChain {
                expected_prev: state.last_hash,
                claimed_prev: headers.prev,
            })
        }
    } else if headers.seq > state.next_seq {
        accept(Verdict::Gap {
            from: state.next_seq,
            to: headers.seq - 1,
        })
    } else if headers.seq.checked_add(1) == Some(state.next_seq) && info.hash == state.last_hash {
        reject(Verdict::Duplicate, KeyEvent::None, Some(info))
    } else {
        reject(
            Verdict::Replay {
                seq: headers.seq,
                expected: state.next_seq,
            },
            KeyEvent::None,
            Some(info),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_parsing() {
        assert_eq!(parse_seq(b"1"), Some(1));
        assert_eq!(parse_seq(b"18446744073709551614"), Some(u64::MAX - 1));
        for bad in [
            &b""[..],
            b"0",
            b"01",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"18446744073709551615",
            b"99999999999999999999",
            b"\xff",
            b"1e3",
        ] {
            assert_eq!(parse_seq(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chain_state_text() {
        let s = ChainState {
            next_seq: 42,
            last_hash: Hash::sha256(b"x"),
        };
        assert_eq!(ChainState::from_text(&s.to_text()), Ok(s));
        assert_eq!(ChainState::from_text(&format!("{}\n", s.to_text())), Ok(s));
        for bad in [
            "",
            "1",
            "0 00",
            "x y",
            &format!("0 {}", Hash::ZERO),
            "1  0000",
        ] {
            assert!(ChainState::from_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(check_collection("tailtraffic").is_ok());
        assert!(check_collection("a-b_c.d").is_ok());
        assert!(check_collection("").is_err());
        assert!(check_collection("a/b").is_err());
        assert!(check_collection("a\nb").is_err());
        assert!(check_instance(&"ab".repeat(32)).is_ok());
        assert!(check_instance(&"AB".repeat(32)).is_err());
        assert!(check_instance("ab").is_err());
    }
}
