//! Reading the node's own recent logs back from the local queue, uploaded
//! or not, without disturbing a running agent (read-only).

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::Value;

use crate::queue::{self, Position, QueueError, RecordIter};

/// Name of the queue directory inside the data directory.
pub const QUEUE_DIR: &str = "queue";

/// One entry of the local queue.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalLog {
    /// The entry as queued (and uploaded): a logtail JSON object.
    pub json: Value,
    /// Whether the server acknowledged it.
    pub uploaded: bool,
}

impl LocalLog {
    /// `logtail.client_time`.
    pub fn client_time(&self) -> Option<&str> {
        self.json.get("logtail")?.get("client_time")?.as_str()
    }

    /// `v`, the verbosity level.
    pub fn level(&self) -> Option<u64> {
        self.json.get("v")?.as_u64()
    }

    /// `source`: `stdin`, `cli`, `tally-agent` or a followed file's path.
    pub fn source(&self) -> Option<&str> {
        self.json.get("source")?.as_str()
    }

    /// `text`.
    pub fn text(&self) -> &str {
        self.json.get("text").and_then(Value::as_str).unwrap_or("")
    }

    /// `part`, for a line split over several entries.
    pub fn part(&self) -> Option<u64> {
        self.json.get("part")?.as_u64()
    }

    /// `logtail.proc_seq`.
    pub fn proc_seq(&self) -> Option<u64> {
        self.json.get("logtail")?.get("proc_seq")?.as_u64()
    }
}

/// The human form: `* TIME [vN] source: text`, where a leading `*` marks an
/// entry not uploaded yet.
impl fmt::Display for LocalLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.uploaded { "  " } else { "* " })?;
        f.write_str(self.client_time().unwrap_or("-"))?;
        if let Some(v) = self.level() {
            write!(f, " [v{v}]")?;
        }
        write!(f, " {}", self.source().unwrap_or("-"))?;
        if let Some(k) = self.part() {
            write!(f, " (part {k})")?;
        }
        write!(f, ": {}", self.text())
    }
}

/// The last `n` entries of the queue in `<data_dir>/queue`, oldest first.
pub fn recent_logs(data_dir: &Path, n: usize) -> Result<Vec<LocalLog>, QueueError> {
    let dir = data_dir.join(QUEUE_DIR);
    let acked = queue::read_state(&dir)?
        .map(|s| s.acked)
        .unwrap_or_default();
    let mut out: Vec<LocalLog> = Vec::new();
    if n == 0 {
        return Ok(out);
    }
    for id in queue::list_segments(&dir)?.into_iter().rev() {
        let path = queue::segment_path(&dir, id);
        let data = match fs::read(&path) {
            Ok(d) => d,
            // Deleted by the running agent since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(QueueError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let mut logs: Vec<LocalLog> = RecordIter::new(&data)
            .filter_map(|(offset, payload)| {
                let json = queue::decode(payload)?.json()?;
                let json = serde_json::from_slice(json).ok()?;
                let uploaded = (Position {
                    segment: id,
                    offset: offset as u64,
                }) < acked;
                Some(LocalLog { json, uploaded })
            })
            .collect();
        let want = n - out.len();
        if logs.len() > want {
            logs.drain(..logs.len() - want);
        }
        logs.append(&mut out);
        out = logs;
        if out.len() >= n {
            break;
        }
    }
    Ok(out)
}
