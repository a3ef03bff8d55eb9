//! Durable cursors: a named consumer's position in the log, persisted so the
//! consumer resumes after a crash exactly where it committed.

use crate::{Filter, Record, Store, StoreError, write_atomic};
use std::path::PathBuf;
use std::sync::Arc;

/// A consumer's read position, with a durable checkpoint.
pub struct Cursor {
    store: Arc<Store>,
    checkpoint: PathBuf,
    filter: Filter,
    read_pos: u64,
    committed: u64,
}

impl Cursor {
    /// Opens the cursor `name` (`[a-z0-9_-]+`), starting at its last
    /// committed position, or at the beginning of the log.
    pub fn open(store: Arc<Store>, name: &str, filter: Filter) -> Result<Self, StoreError> {
        let dir = store.dir().join("cursors");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let checkpoint = dir.join(format!("{name}.pos"));
        let committed = match std::fs::read_to_string(&checkpoint) {
            Ok(s) => s.trim().parse().map_err(|_| {
                StoreError::Corrupt(format!(
                    "cursor checkpoint {} is not a number",
                    checkpoint.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => {
                return Err(StoreError::Io {
                    what: format!("read {}", checkpoint.display()),
                    source,
                });
            }
        };
        Ok(Self {
            store,
            checkpoint,
            filter,
            read_pos: committed,
            committed,
        })
    }

    /// The position after the last committed record.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Returns the next matching records after the read position, waiting
    /// until at least one exists. Advances the read position, not the checkpoint.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Record>, StoreError> {
        loop {
            let now = crate::now_nanos();
            let store = self.store.clone();
            let filter = self.filter.clone();
            let from = self.read_pos;
            let batch =
                tokio::task::spawn_blocking(move || store.scan(from, &filter, max, 16 << 20, now))
                    .await
                    .map_err(|_| StoreError::Closed)??;
            self.read_pos = batch.next_seq;
            if !batch.records.is_empty() {
                return Ok(batch.records);
            }
            // Nothing yet: wait for the store's end to pass the read
            // position. `wait_for` looks at the current end first, so a
            // record stored since the scan is not missed; the subscription
            // lives only while waiting ([`Store::subscribers`] counts it).
            let pos = self.read_pos;
            let mut changes = self.store.subscribe();
            if changes.wait_for(|end| *end > pos).await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }

    /// Durably records that everything before `pos` was processed.
    pub fn commit(&mut self, pos: u64) -> Result<(), StoreError> {
        write_atomic(&self.checkpoint, pos.to_string().as_bytes())?;
        self.committed = pos;
        Ok(())
    }

    /// Durably records that everything read so far was processed.
    pub fn commit_read(&mut self) -> Result<(), StoreError> {
        self.commit(self.read_pos)
    }
}
