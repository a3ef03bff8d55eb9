//! The recordings' index: a consumer of the `recordings` collection that
//! knows each recording's tailnet, source node and users (from its
//! asciicast header), start, end, size, whether it ended whole, and the
//! store positions of its chunks (to read it back in order). Its state is
//! `<data-dir>/recordings-index.json`, saved with its position; after a
//! crash it reads again from there (a chunk seen twice is ignored by its
//! sequence number).

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tally_pipeline::{Consumer, ConsumerError, FailurePolicy, Handled, Rejection};
use tally_store::{Filter, Position, ReadSpec, ScanBatch, kind};

use crate::control::catalog::Catalog;

/// What the index knows of one recording.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingMeta {
    /// Recording ID.
    pub id: String,
    /// Tailnet ID.
    pub tailnet: String,
    /// When its first chunk was stored (Unix ns).
    pub start: i64,
    /// When its last record was stored (Unix ns).
    pub end: i64,
    /// Bytes of asciicast stored.
    pub bytes: u64,
    /// `None` while in progress; whether it ended whole.
    pub complete: Option<bool>,
    /// Why it was cut short.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The asciicast header as received.
    pub header: Value,
    /// Store positions of its chunks, in order.
    #[serde(default)]
    pub chunks: Vec<u64>,
    /// The last chunk sequence number seen.
    #[serde(default)]
    pub last_seq: u64,
    /// Who wrote it: empty for the recorder (tailscaled), else the public
    /// ID (hex) of the node agent that uploaded it (`tally record`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
}

impl RecordingMeta {
    /// The source node's name (`srcNode`).
    pub fn node(&self) -> &str {
        self.header["srcNode"].as_str().unwrap_or_default()
    }

    /// `recorder` (tailscaled's SSH server) or `tally record` (a node's agent).
    pub fn recorded_by(&self) -> &'static str {
        if self.writer.is_empty() {
            "recorder"
        } else {
            "tally record"
        }
    }

    /// Whether `user` is its SSH user, local user or source user.
    pub fn has_user(&self, user: &str) -> bool {
        ["sshUser", "localUser", "srcNodeUser"]
            .iter()
            .any(|k| self.header[*k].as_str() == Some(user))
    }
}

/// The index shared with the API.
#[derive(Default)]
pub struct RecordingIndex {
    by_id: RwLock<BTreeMap<String, RecordingMeta>>,
}

impl RecordingIndex {
    /// Recording `id` of `tailnet`.
    pub fn get(&self, tailnet: &str, id: &str) -> Option<RecordingMeta> {
        self.by_id
            .read()
            .get(id)
            .filter(|m| m.tailnet == tailnet)
            .cloned()
    }

    /// The recordings of `tailnet` that `keep` accepts, newest first.
    pub fn list(&self, tailnet: &str, keep: impl Fn(&RecordingMeta) -> bool) -> Vec<RecordingMeta> {
        let mut v: Vec<RecordingMeta> = self
            .by_id
            .read()
            .values()
            .filter(|m| m.tailnet == tailnet && keep(m))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.start.cmp(&a.start).then_with(|| b.id.cmp(&a.id)));
        v
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    position: u64,
    recordings: Vec<RecordingMeta>,
}

/// The consumer that keeps the index.
pub struct IndexConsumer {
    index: Arc<RecordingIndex>,
    path: PathBuf,
    position: Position,
    /// Registered nodes: an agent-uploaded recording's source node is the
    /// node of the instance that uploaded it, whatever its header claims.
    catalog: Option<Arc<Catalog>>,
}

impl IndexConsumer {
    /// The index and its consumer, from `<data_dir>/recordings-index.json`;
    /// `catalog` names the nodes that upload recordings through their agent.
    pub fn open(
        data_dir: &std::path::Path,
        catalog: Option<Arc<Catalog>>,
    ) -> anyhow::Result<(Arc<RecordingIndex>, Self)> {
        let path = data_dir.join("recordings-index.json");
        let saved: Saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); move it away to index the recordings again",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
        };
        let index = Arc::new(RecordingIndex {
            by_id: RwLock::new(
                saved
                    .recordings
                    .into_iter()
                    .map(|m| (m.id.clone(), m))
                    .collect(),
            ),
        });
        Ok((
            index.clone(),
            Self {
                index,
                path,
                position: saved.position,
                catalog,
            },
        ))
    }

    /// Applies one stored record, written by `instance`.
    fn apply(
        &self,
        tailnet: &str,
        time: i64,
        position: u64,
        instance: &[u8; 32],
        body: &[u8],
    ) -> Result<(), String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let id = v["recording"].as_str().ok_or("no recording ID")?.to_owned();
        let writer = if *instance == tally_proto::collection::RECORDINGS_WRITER {
            String::new()
        } else {
            hex::encode(instance)
        };
        let mut all = self.index.by_id.write();
        let m = all.entry(id.clone()).or_insert_with(|| RecordingMeta {
            id: id.clone(),
            tailnet: tailnet.to_owned(),
            start: time,
            writer: writer.clone(),
            ..Default::default()
        });
        if m.writer != writer || m.tailnet != tailnet {
            // Only its first writer adds to a recording.
            return Err(format!(
                "recording {id} belongs to another writer; this record is not part of it"
            ));
        }
        m.end = time;
        if v["end"] == true {
            m.complete = v["complete"].as_bool();
            m.reason = v["reason"].as_str().unwrap_or_default().to_owned();
            return Ok(());
        }
        let seq = v["seq"].as_u64().ok_or("no chunk sequence number")?;
        if seq <= m.last_seq {
            return Ok(()); // read again after a restart
        }
        m.last_seq = seq;
        let data = v["data"].as_str().unwrap_or_default();
        if m.chunks.is_empty()
            && let Some(first) = data.lines().next()
        {
            m.header = serde_json::from_str(first).unwrap_or(Value::Null);
            if !m.writer.is_empty() {
                // The node is the one whose agent uploaded the recording.
                let node = self
                    .catalog
                    .as_ref()
                    .and_then(|c| c.node(&tally_proto::PublicId(*instance)));
                let (node_id, name) = node.map_or_else(
                    || (String::new(), format!("unregistered instance {}", m.writer)),
                    |n| (n.node_id, n.name),
                );
                if let Some(h) = m.header.as_object_mut() {
                    h.insert("srcNode".into(), Value::String(name));
                    h.insert("srcNodeID".into(), Value::String(node_id));
                }
            }
        }
        m.bytes += data.len() as u64;
        m.chunks.push(position);
        Ok(())
    }
}

impl Consumer for IndexConsumer {
    fn name(&self) -> &str {
        "recording-index"
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter {
                collections: vec![tally_proto::collection::RECORDINGS.to_owned()],
                kinds: vec![kind::LOG],
                ..Default::default()
            },
            include_expired: false,
        }
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        let mut rejected = Vec::new();
        for r in &batch.records {
            let tailnet = match &r.rec.owner {
                tally_store::Owner::Tailnet(t) => t.as_str(),
                _ => "",
            };
            if let Err(reason) =
                self.apply(tailnet, r.rec.time, r.seq, &r.rec.instance, &r.rec.body)
            {
                rejected.push(Rejection {
                    position: r.seq,
                    reason: format!("a recording record: {reason}"),
                });
            }
        }
        let through = batch.next_seq.saturating_sub(1);
        self.position = through;
        Ok(Handled { through, rejected })
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let saved = Saved {
            position: self.position,
            recordings: self.index.by_id.read().values().cloned().collect(),
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
            tally_store::write_atomic(&path, &bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ConsumerError::new(format!("saving the recordings' index panicked: {e}")))?
        .map_err(|e| ConsumerError::new(format!("saving the recordings' index: {e}")))
    }

    fn commit_every(&self) -> Duration {
        Duration::from_secs(2)
    }
}
