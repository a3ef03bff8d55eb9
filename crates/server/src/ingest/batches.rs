//! Signed upload batches at ingest (`tally-transparency`'s batch format):
//! every signed upload is checked against its chain (instance and
//! collection) and the instance's registered key (trust on first use,
//! endorsed rotations). The batch's entries are always stored; next to them,
//! in the same append, a `kind::BATCH` record states the batch's sequence
//! number, chain hash and verdict, so a forged, altered, missing or replayed
//! batch is stored *and flagged*, never silently accepted. The one
//! exception: flow records that arrive while their tailnet has flow logging
//! off are checked the same way but not stored; the `BATCH` record lists
//! them ([`BatchRecord::discarded`]), so the chain continues without a gap.
//!
//! The chain states and keys live in memory, are saved to
//! `batch-state.json` every few seconds, and are rebuilt after a crash by
//! replaying the `BATCH` records stored after the last save (replay is
//! idempotent: a state only moves forward).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tally_proto::PublicId;
use tally_store::{Filter, NewRecord, kind};
use tally_transparency::batch::{
    BatchCheck, ChainState, KeyEvent, RawBatchHeaders, Verdict, VerifyingKey, check_batch,
};

/// Saved state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Every `BATCH` record at or below this store position is reflected.
    through_seq: u64,
    /// `<instance>/<collection>` → chain state text.
    chains: HashMap<String, String>,
    /// Instance → registered public key (base64).
    keys: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    chains: HashMap<(PublicId, String), ChainState>,
    keys: HashMap<PublicId, VerifyingKey>,
    dirty: bool,
}

/// The chains and keys of every signing instance.
pub struct BatchLedger {
    inner: Mutex<Inner>,
    path: PathBuf,
    /// Position reflected by the last save (replay starts after it).
    saved_through: Mutex<u64>,
}

/// The short name of a verdict, as stored.
pub fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Ok => "ok",
        Verdict::Gap { .. } => "gap",
        Verdict::BrokenChain { .. } => "broken_chain",
        Verdict::BadSignature => "bad_signature",
        Verdict::Replay { .. } => "replay",
        Verdict::Duplicate => "duplicate",
        Verdict::Unsigned { .. } => "unsigned",
        Verdict::Malformed(_) => "malformed",
    }
}

fn advances(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Ok | Verdict::Gap { .. } | Verdict::BrokenChain { .. }
    )
}

/// The body of a stored batch record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    /// Collection of the batch.
    pub collection: String,
    /// Batch sequence number, when the headers parsed.
    pub seq: Option<u64>,
    /// Chain hash of the batch (hex).
    pub hash: Option<String>,
    /// Verdict (`ok`, `gap`, `broken_chain`, `bad_signature`, `replay`,
    /// `duplicate`, `unsigned`, `malformed`).
    pub verdict: String,
    /// Whether it is flagged.
    pub suspicious: bool,
    /// Human detail.
    pub detail: String,
    /// Whether the chain moved to this batch.
    pub advanced: bool,
    /// A key registered by this batch (first use or endorsed rotation).
    pub key: Option<String>,
    /// `first_use`, `rotated` or `unendorsed`.
    pub key_event: Option<String>,
    /// Entries stored with the batch.
    pub entries: usize,
    /// Records of the batch the server did not store, and why (empty when all were stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discarded: Vec<DiscardedRecord>,
    /// Why the records in `discarded` were not stored: `flow_logging_off`
    /// (flow records that arrived while their tailnet had flow logging off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_reason: Option<String>,
    /// When the agent sent the upload (its clock, Unix ns, header
    /// `Tally-Sent-At`): the reconciler measures the node's clock offset
    /// from the time in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
}

/// One record of a batch the server checked but did not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscardedRecord {
    /// The entry's logtail `proc_id` (0 when it had none).
    pub proc_id: u32,
    /// The entry's logtail `proc_seq` (0 when it had none).
    pub proc_seq: u64,
    /// Start of the flow record's interval, Unix nanoseconds.
    pub start: u64,
    /// End of the flow record's interval, Unix nanoseconds.
    pub end: u64,
}

/// Why a batch's records were discarded instead of stored.
pub const DISCARD_FLOW_LOGGING_OFF: &str = "flow_logging_off";

/// What a batch record says about the upload besides its verdict.
#[derive(Debug, Default)]
pub struct BatchContents<'a> {
    /// Entries stored with the batch.
    pub entries: usize,
    /// The batch's records not stored instead, and why.
    pub discarded: Option<(Vec<DiscardedRecord>, &'a str)>,
    /// When the agent sent the upload (its clock), from [`sent_at`].
    pub sent_at: Option<i64>,
}

/// The upload's `Tally-Sent-At` (Unix ns, the agent's clock), when it is
/// a number within a day of the server's `now` (anything else is ignored:
/// the offset is then measured from the records' ends).
pub fn sent_at(headers: &axum::http::HeaderMap, now: i64) -> Option<i64> {
    const DAY: i64 = 86_400_000_000_000;
    headers
        .get("tally-sent-at")?
        .to_str()
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|t| t.abs_diff(now) <= DAY.unsigned_abs())
}

impl BatchLedger {
    /// Loads the saved state and replays the batch records stored after it.
    pub fn open(data_dir: &Path, store: &dyn tally_store::Log) -> anyhow::Result<Self> {
        let path = data_dir.join("batch-state.json");
        let saved: Saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); move it away to rebuild it",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
        };
        let mut inner = Inner::default();
        for (k, v) in &saved.chains {
            if let (Some((i, c)), Ok(state)) = (k.split_once('/'), ChainState::from_text(v))
                && let Ok(id) = PublicId::parse(i)
            {
                inner.chains.insert((id, c.to_owned()), state);
            }
        }
        for (i, k) in &saved.keys {
            if let (Ok(id), Some(key)) = (PublicId::parse(i), decode_key(k)) {
                inner.keys.insert(id, key);
            }
        }
        let ledger = Self {
            inner: Mutex::new(inner),
            path,
            saved_through: Mutex::new(saved.through_seq),
        };
        // Replay what was stored after the save.
        let filter = Filter {
            kinds: vec![kind::BATCH],
            ..Filter::default()
        };
        let mut from = saved.through_seq + 1;
        loop {
            let batch = store.scan(from, &filter, 10_000, 16 << 20, i64::MIN)?;
            for r in &batch.records {
                if let Ok(b) = serde_json::from_slice::<BatchRecord>(&r.rec.body) {
                    ledger.replay(&PublicId(r.rec.instance), &b);
                }
            }
            if !batch.truncated {
                break;
            }
            from = batch.next_seq;
        }
        Ok(ledger)
    }

    fn replay(&self, instance: &PublicId, b: &BatchRecord) {
        let mut inner = self.inner.lock();
        if let Some(k) = b.key.as_deref().and_then(decode_key) {
            inner.keys.insert(*instance, k);
        }
        if let (true, Some(seq), Some(hash)) = (b.advanced, b.seq, b.hash.as_deref())
            && let Ok(hash) = tally_transparency::Hash::from_hex(hash)
        {
            let chain = inner
                .chains
                .entry((*instance, b.collection.clone()))
                .or_default();
            if seq >= chain.next_seq || chain.next_seq == 0 {
                *chain = ChainState {
                    next_seq: seq + 1,
                    last_hash: hash,
                };
            }
        }
        inner.dirty = true;
    }

    /// Whether this server's state of the upload's chain is behind the
    /// batch number it carries: on a shared log, another server may have
    /// taken the batches before it (see `consumers::batch_chains`).
    pub fn is_behind(
        &self,
        instance: &PublicId,
        collection: &str,
        headers: &axum::http::HeaderMap,
    ) -> bool {
        let Some(seq) = headers
            .get(tally_transparency::batch::HEADER_SEQ)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return false;
        };
        let next = self
            .inner
            .lock()
            .chains
            .get(&(*instance, collection.to_owned()))
            .map_or(1, |c| c.next_seq.max(1));
        seq > next
    }

    /// Applies a stored `BATCH` record (another server's, on a shared
    /// log); a chain only moves forward, so applying one twice is harmless.
    pub fn apply_stored(&self, record: &tally_store::Record) {
        if let Ok(b) = serde_json::from_slice::<BatchRecord>(&record.rec.body) {
            self.replay(&PublicId(record.rec.instance), &b);
        }
    }

    /// Judges one upload (its decoded body) without changing anything.
    pub fn check(
        &self,
        instance: &PublicId,
        collection: &str,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> BatchCheck {
        let raw = RawBatchHeaders::from_lookup(|name| headers.get(name).map(|v| v.as_bytes()));
        let inner = self.inner.lock();
        let state = inner
            .chains
            .get(&(*instance, collection.to_owned()))
            .copied()
            .unwrap_or_default();
        check_batch(
            &state,
            inner.keys.get(instance),
            &instance.to_hex(),
            collection,
            &raw,
            body,
        )
    }

    /// The record to store with the batch's entries, when there is one to
    /// keep (signed batches, and unsigned uploads of a signing instance).
    pub fn record(
        &self,
        check: &BatchCheck,
        instance: &PublicId,
        collection: &str,
        now: i64,
        contents: BatchContents<'_>,
    ) -> Option<NewRecord> {
        let BatchContents {
            entries,
            discarded,
            sent_at,
        } = contents;
        if matches!(
            check.verdict,
            Verdict::Unsigned {
                key_registered: false
            }
        ) {
            return None;
        }
        let (key, key_event) = match &check.key {
            KeyEvent::None => (None, None),
            KeyEvent::FirstUse(k) => (Some(STANDARD.encode(k.as_bytes())), Some("first_use")),
            KeyEvent::Rotated { new, .. } => {
                (Some(STANDARD.encode(new.as_bytes())), Some("rotated"))
            }
            KeyEvent::Unendorsed { .. } => (None, Some("unendorsed")),
        };
        let body = BatchRecord {
            collection: collection.to_owned(),
            seq: check.batch.map(|b| b.seq),
            hash: check.batch.map(|b| b.hash.to_hex()),
            verdict: verdict_name(&check.verdict).to_owned(),
            suspicious: check.verdict.is_suspicious(),
            detail: format!("{:?}", check.verdict),
            advanced: advances(&check.verdict),
            key,
            key_event: key_event.map(str::to_owned),
            entries,
            discard_reason: discarded.as_ref().map(|(_, why)| (*why).to_owned()),
            discarded: discarded.map(|(d, _)| d).unwrap_or_default(),
            sent_at,
        };
        Some(NewRecord {
            time: now,
            collection: collection.to_owned(),
            // The caller gives it the owner of the batch's entries.
            owner: tally_store::Owner::Unclaimed,
            instance: instance.0,
            identity: None,
            client_time: None,
            kind: kind::BATCH,
            body: json!(body).to_string().into_bytes(),
        })
    }

    /// Applies a check once its entries and record are durable.
    pub fn apply(&self, instance: &PublicId, collection: &str, check: &BatchCheck) {
        let mut inner = self.inner.lock();
        if let Some(k) = check.key_to_register() {
            inner.keys.insert(*instance, k);
            inner.dirty = true;
        }
        if advances(&check.verdict) {
            inner
                .chains
                .insert((*instance, collection.to_owned()), check.state);
            inner.dirty = true;
        }
    }

    /// Saves the state if it changed (or the store moved far ahead). `through` is a store position whose
    /// records were all applied before this call (replay covers the rest).
    pub fn save_if_dirty(&self, through: u64) -> Result<(), tally_store::StoreError> {
        let saved = {
            let mut inner = self.inner.lock();
            // Also save when the store moved on a lot, so a restart never
            // replays more than that (even when no batch was signed).
            let far = through >= self.saved_through.lock().saturating_add(1_000_000);
            if !inner.dirty && !far {
                return Ok(());
            }
            inner.dirty = false;
            Saved {
                through_seq: through,
                chains: inner
                    .chains
                    .iter()
                    .map(|((i, c), s)| (format!("{}/{c}", i.to_hex()), s.to_text()))
                    .collect(),
                keys: inner
                    .keys
                    .iter()
                    .map(|(i, k)| (i.to_hex(), STANDARD.encode(k.as_bytes())))
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        tally_store::write_atomic(&self.path, &bytes)?;
        *self.saved_through.lock() = through;
        Ok(())
    }
}

fn decode_key(b64: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(b64).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}
