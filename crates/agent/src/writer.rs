//! The queue writer: numbers entries, appends them and commits them in
//! groups (one fsync for everything that arrived meanwhile, at most one
//! fsync per `fsync_interval`), then answers whoever waits for it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::entry::Line;
use crate::error::AgentError;
use crate::queue::{FilePos, Queue, QueueError, Record};

/// The queue, shared by the writer, the uploader and shutdown.
pub(crate) type SharedQueue = Arc<Mutex<Queue>>;

/// Locks the queue (a panic elsewhere does not make it unusable).
pub(crate) fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most requests committed together.
const MAX_GROUP: usize = 1024;
/// Most bytes of text committed together (bounds the writer's memory).
const MAX_GROUP_BYTES: usize = 8 << 20;

/// Source name of the agent's own entries.
const AGENT_SOURCE: &str = "tally-agent";

/// Something to write to the queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// A log line.
    Line(Line),
    /// A ready JSON object (a flow record, serialized: `{...}`); the writer
    /// adds its `logtail` member (`client_time`, `proc_id`, `proc_seq`) in
    /// front of its other members.
    Record(Vec<u8>),
    /// A followed file's new position (first seen, rotated, truncated).
    Mark {
        /// The followed path.
        path: Arc<str>,
        /// Its position.
        pos: FilePos,
    },
    /// A followed file went away for good (a removed container's log):
    /// its position is dropped.
    Forget {
        /// The followed path.
        path: Arc<str>,
    },
}

/// The sequence numbers given to a request's lines once they are durable,
/// or why they could not be written.
pub(crate) type Reply = Result<Vec<u64>, String>;

/// Writes `text` to the node's log through `logs` (source `tally-agent`,
/// now), without waiting for it to be durable.
pub(crate) async fn note(logs: &mpsc::Sender<WriteRequest>, text: String) {
    let line = Line::note("tally-agent", text, tally_proto::timefmt::now_nanos());
    let req = WriteRequest {
        items: vec![Item::Line(line)],
        reply: None,
    };
    let _ = logs.send(req).await;
}

/// Items to queue together, and who to tell once they are on disk.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    /// The items, in order.
    pub items: Vec<Item>,
    /// Answered after the fsync that made the items durable.
    pub reply: Option<oneshot::Sender<Reply>>,
}

impl WriteRequest {
    /// Bytes of text it carries.
    fn size(&self) -> usize {
        self.items
            .iter()
            .map(|i| match i {
                Item::Line(l) => l.text.len(),
                Item::Record(r) => r.len(),
                Item::Mark { .. } | Item::Forget { .. } => 0,
            })
            .sum()
    }
}

/// Requests gathered for one commit.
#[derive(Debug, Default)]
struct Group {
    requests: Vec<WriteRequest>,
    bytes: usize,
}

impl Group {
    fn push(&mut self, req: WriteRequest) {
        self.bytes += req.size();
        self.requests.push(req);
    }

    fn is_full(&self) -> bool {
        self.requests.len() >= MAX_GROUP || self.bytes >= MAX_GROUP_BYTES
    }
}

/// Owns entry numbering and appends to the queue.
#[derive(Debug)]
pub(crate) struct Writer {
    /// The queue written to.
    pub queue: SharedQueue,
    /// This process's `proc_id`.
    pub proc_id: u32,
    /// The next `proc_seq` (from 1).
    pub next_seq: u64,
    /// Queue an entry saying so when unuploaded entries are deleted.
    pub drop_notices: bool,
    /// The queue's size limit, for the notice.
    pub queue_max_bytes: u64,
    /// Shortest time between two commits.
    pub fsync_interval: Duration,
    /// The last `proc_seq` that is durable.
    pub durable: watch::Sender<u64>,
}

/// `50 MiB`, `512 KiB` or `1000 bytes`.
pub(crate) fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes & ((1 << 20) - 1) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes & ((1 << 10) - 1) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

impl Writer {
    /// Writes what arrives on `rx` until `stop`, then commits what is left
    /// in the channel and closes the queue.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<WriteRequest>,
        stop: CancellationToken,
    ) -> Result<(), AgentError> {
        let mut last_commit: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => None,
                m = rx.recv() => m,
            };
            let Some(first) = first else { break };
            let mut group = Group::default();
            group.push(first);
            if let Some(t) = last_commit {
                let deadline = t + self.fsync_interval;
                while !group.is_full() {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep_until(deadline) => break,
                        m = rx.recv() => match m {
                            Some(m) => group.push(m),
                            None => break,
                        },
                    }
                }
            }
            while !group.is_full() {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            self = self.commit(group.requests).await?;
            last_commit = Some(Instant::now());
        }
        // What the sources handed over before stopping is still committed.
        rx.close();
        loop {
            let mut group = Group::default();
            while !group.is_full() {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            if group.requests.is_empty() {
                break;
            }
            self = self.commit(group.requests).await?;
        }
        let queue = Arc::clone(&self.queue);
        tokio::task::spawn_blocking(move || lock(&queue).close())
            .await
            .map_err(|e| AgentError::Task(format!("queue writer: {e}")))??;
        Ok(())
    }

    /// Appends every request of `group`, fsyncs once, then answers.
    async fn commit(self, group: Vec<WriteRequest>) -> Result<Self, AgentError> {
        let (this, replies, result) = tokio::task::spawn_blocking(move || {
            let mut this = self;
            let mut replies = Vec::with_capacity(group.len());
            let queue = Arc::clone(&this.queue);
            let mut q = lock(&queue);
            let result = (|| {
                for req in group {
                    let mut seqs = Vec::new();
                    for item in req.items {
                        if let Some(seq) = this.append_item(&mut q, item)? {
                            seqs.push(seq);
                        }
                    }
                    replies.push((req.reply, seqs));
                }
                q.sync()
            })();
            drop(q);
            (this, replies, result)
        })
        .await
        .map_err(|e| AgentError::Task(format!("queue writer: {e}")))?;
        match result {
            Ok(()) => {
                this.durable.send_replace(this.next_seq - 1);
                for (reply, seqs) in replies {
                    if let Some(tx) = reply {
                        let _ = tx.send(Ok(seqs));
                    }
                }
                Ok(this)
            }
            Err(e) => {
                for (reply, _) in replies {
                    if let Some(tx) = reply {
                        let _ = tx.send(Err(format!(
                            "the agent could not write its disk queue: {e}"
                        )));
                    }
                }
                Err(e.into())
            }
        }
    }

    fn append_item(&mut self, q: &mut Queue, item: Item) -> Result<Option<u64>, QueueError> {
        match item {
            Item::Mark { path, pos } => {
                q.append(&Record::Mark { path: &path, pos })?;
                Ok(None)
            }
            Item::Forget { path } => {
                q.append(&Record::Forget { path: &path })?;
                Ok(None)
            }
            Item::Line(line) => {
                let seq = self.append_line(q, &line)?;
                Ok(Some(seq))
            }
            Item::Record(record) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let logtail = serde_json::json!({
                    "client_time": tally_proto::timefmt::format_nanos(tally_proto::timefmt::now_nanos()),
                    "proc_id": self.proc_id,
                    "proc_seq": seq,
                });
                // `{"logtail":{...},` + the record's members (or `}` when it has none).
                let rest = record.strip_prefix(b"{").unwrap_or(&record);
                let mut json = Vec::with_capacity(record.len() + 96);
                json.extend_from_slice(b"{\"logtail\":");
                json.extend_from_slice(logtail.to_string().as_bytes());
                if rest.first() != Some(&b'}') {
                    json.push(b',');
                }
                json.extend_from_slice(rest);
                let dropped = q
                    .append(&Record::Entry {
                        json: &json,
                        file: None,
                    })?
                    .dropped;
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "the disk queue was full: the oldest records not uploaded yet were deleted"
                    );
                }
                Ok(Some(seq))
            }
        }
    }

    fn append_line(&mut self, q: &mut Queue, line: &Line) -> Result<u64, QueueError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let json = line.to_json(self.proc_id, seq)?;
        let file = line.file.map(|pos| (line.file_key(), pos));
        let mut dropped = q.append(&Record::Entry { json: &json, file })?.dropped;
        while dropped > 0 && self.drop_notices {
            let text = format!(
                "{dropped} logs dropped: the disk queue ({}) was full",
                human_size(self.queue_max_bytes)
            );
            tracing::warn!("{text}; the oldest entries that were not uploaded yet were deleted");
            let notice = Line {
                text,
                source: Arc::from(AGENT_SOURCE),
                v: None,
                invalid_utf8: false,
                part: None,
                client_time: tally_proto::timefmt::now_nanos(),
                file: None,
                container: None,
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let json = notice.to_json(self.proc_id, seq)?;
            dropped = q
                .append(&Record::Entry {
                    json: &json,
                    file: None,
                })?
                .dropped;
        }
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(50 << 20), "50 MiB");
        assert_eq!(human_size(512 << 10), "512 KiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
