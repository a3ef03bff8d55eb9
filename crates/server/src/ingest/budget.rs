//! Ingest budgets: bytes an owner (a tailnet, or all unclaimed instances
//! together) may store per 12 hours. What is stored comes from the store's
//! own counters; uploads in flight hold a [`Reservation`] so that many at
//! once cannot overshoot a budget together.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes reserved by uploads in flight, per owner key (tailnet ID, `""`
/// for unclaimed instances).
#[derive(Default)]
pub struct Budgets {
    pending: Arc<Mutex<HashMap<String, u64>>>,
}

/// Bytes held against a budget until dropped.
pub struct Reservation {
    pending: Arc<Mutex<HashMap<String, u64>>>,
    key: String,
    bytes: u64,
}

impl Budgets {
    /// Reserves `bytes` for `key` if what it stored in the last 12 hours,
    /// plus what uploads in flight hold, plus `bytes` stays within `limit`;
    /// `None` when it would not (with `bytes` 0: when the budget is spent).
    pub fn reserve(
        &self,
        store: &dyn tally_store::Log,
        key: &str,
        bytes: u64,
        limit: u64,
        now: i64,
    ) -> Option<Reservation> {
        // Read what is stored while holding the lock: an upload that ends
        // meanwhile counts its bytes in the store before it gives back its
        // reservation (under this lock), so they are seen once or twice,
        // never not at all.
        let mut pending = self.pending.lock();
        let stored = store.recent_owner_bytes(key, now);
        let held = pending.get(key).copied().unwrap_or(0);
        let total = stored.saturating_add(held).saturating_add(bytes);
        if total > limit || (bytes == 0 && stored.saturating_add(held) >= limit) {
            return None;
        }
        *pending.entry(key.to_owned()).or_default() += bytes;
        Some(Reservation {
            pending: self.pending.clone(),
            key: key.to_owned(),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut pending = self.pending.lock();
        if let Some(n) = pending.get_mut(&self.key) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                pending.remove(&self.key);
            }
        }
    }
}
