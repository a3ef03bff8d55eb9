//! The durable record of a consumer's rejections:
//! `<dir>/<consumer>.rejections.jsonl`, one JSON object a line.

use crate::Rejection;
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use tally_store::Position;

/// How many rejections the status keeps in memory to show.
const RECENT: usize = 20;
/// How many positions are remembered to drop a rejection recorded again
/// (a batch handled again after a crash rejects the same records).
const REMEMBERED: usize = 100_000;

/// One recorded rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionRecord {
    /// Position of the record in the log.
    pub position: Position,
    /// Why the consumer could not handle it.
    pub reason: String,
    /// When it was recorded (RFC 3339).
    pub at: String,
}

/// A consumer's rejections: the file, the count and the latest few.
pub(crate) struct RejectionLog {
    path: Option<PathBuf>,
    seen: HashSet<Position>,
    pub total: u64,
    pub recent: VecDeque<RejectionRecord>,
}

impl RejectionLog {
    /// Loads `<dir>/<name>.rejections.jsonl` (in memory only without a dir).
    pub fn open(dir: Option<&std::path::Path>, name: &str) -> std::io::Result<Self> {
        let mut log = Self {
            path: None,
            seen: HashSet::new(),
            total: 0,
            recent: VecDeque::new(),
        };
        let Some(dir) = dir else {
            return Ok(log);
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.rejections.jsonl"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A torn last line (a crash while writing) is not a record.
                for r in text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<RejectionRecord>(l).ok())
                {
                    log.remember(r);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        log.path = Some(path);
        Ok(log)
    }

    fn remember(&mut self, r: RejectionRecord) {
        if self.seen.len() < REMEMBERED {
            self.seen.insert(r.position);
        }
        self.total += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }

    /// Records rejections not recorded before; returns the new ones.
    pub fn record(&mut self, rejected: &[Rejection]) -> std::io::Result<Vec<RejectionRecord>> {
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let new: Vec<RejectionRecord> = rejected
            .iter()
            .filter(|r| !self.seen.contains(&r.position))
            .map(|r| RejectionRecord {
                position: r.position,
                reason: r.reason.clone(),
                at: at.clone(),
            })
            .collect();
        if new.is_empty() {
            return Ok(new);
        }
        if let Some(path) = &self.path {
            let mut text = String::new();
            for r in &new {
                text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
                text.push('\n');
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
        }
        for r in &new {
            self.remember(r.clone());
        }
        Ok(new)
    }
}
