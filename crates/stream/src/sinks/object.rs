//! What the object-store destinations (`s3`, `gcs`) share: one object per
//! upload, NDJSON (one entry per line) compressed per
//! `compressionFormat`, at a key that says what it holds:
//!
//! `<prefix>/<logType>/YYYY/MM/DD/HH/<first>-<last>.ndjson[.gz|.zst]`
//!
//! where the date is the first entry's receive time (UTC) and `first` and
//! `last` are the store positions of the first and last entry (20 digits,
//! so keys sort in log order). An upload retried after a failure or a
//! restart writes the same key again when it holds the same entries.

use super::compress::compress;
use super::{Delivery, Entry, SinkError};
use crate::config::{Compression, LogType};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

/// Most bytes (uncompressed) one object holds; the stream uploads when a
/// period's entries reach it.
pub const MAX_OBJECT: usize = 32 << 20;

/// A bucket with its key prefix.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or `gs://bucket`, for messages.
    label: String,
    prefix: String,
    log_type: LogType,
    compression: Compression,
}

/// `YYYY/MM/DD/HH` of a Unix time in ns (UTC).
fn hour_path(nanos: i64) -> String {
    let t = tally_proto::timefmt::format_nanos(nanos);
    // RFC 3339: YYYY-MM-DDTHH:...
    match (t.get(0..4), t.get(5..7), t.get(8..10), t.get(11..13)) {
        (Some(y), Some(m), Some(d), Some(h)) => format!("{y}/{m}/{d}/{h}"),
        _ => "unknown-time".to_owned(),
    }
}

impl Objects {
    /// Objects in `store` under `prefix`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        label: String,
        prefix: &str,
        log_type: LogType,
        compression: Compression,
    ) -> Self {
        Self {
            store,
            label,
            prefix: prefix.trim_matches('/').to_owned(),
            log_type,
            compression,
        }
    }

    /// The key of an object holding `entries` (not empty).
    pub fn key(&self, entries: &[Entry], ext: Option<&str>) -> String {
        let first = entries.first().map_or(0, |e| e.position);
        let last = entries.last().map_or(0, |e| e.position);
        let time = entries.first().map_or(0, |e| e.time);
        let mut key = String::new();
        if !self.prefix.is_empty() {
            key.push_str(&self.prefix);
            key.push('/');
        }
        key.push_str(&format!(
            "{}/{}/{first:020}-{last:020}.ndjson",
            self.log_type.name(),
            hour_path(time)
        ));
        if let Some(ext) = ext {
            key.push('.');
            key.push_str(ext);
        }
        key
    }

    /// Uploads `entries` as one object; Ok once the store confirmed it.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        let fail = |message: String| SinkError {
            message,
            retry_after: None,
            delivered: Delivery::default(),
        };
        if entries.is_empty() {
            return Ok(Delivery::default());
        }
        let mut body = Vec::with_capacity(entries.iter().map(|e| e.body.len() + 1).sum());
        for e in entries {
            body.extend_from_slice(&e.body);
            body.push(b'\n');
        }
        let (body, enc) = compress(body, self.compression).map_err(fail)?;
        let key = self.key(entries, enc.map(|e| e.ext));
        let size = body.len() as u64;
        let path = Path::parse(&key).map_err(|e| fail(format!("object key {key}: {e}")))?;
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| fail(format!("uploading {}/{key}: {e}", self.label)))?;
        Ok(Delivery {
            requests: 1,
            bytes: size,
            max_body: size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_say_what_and_when_and_sort_in_log_order() {
        let o = Objects::new(
            Arc::new(object_store::memory::InMemory::new()),
            "s3://b".into(),
            "/tally/prod/",
            LogType::Network,
            Compression::Gzip,
        );
        let e = |position, time| Entry {
            position,
            time,
            body: b"{}".to_vec(),
        };
        let entries = [
            e(7, 1_700_000_000_000_000_000),
            e(12, 1_700_000_100_000_000_000),
        ];
        assert_eq!(
            o.key(&entries, Some("gz")),
            "tally/prod/network/2023/11/14/22/00000000000000000007-00000000000000000012.ndjson.gz"
        );
    }
}
