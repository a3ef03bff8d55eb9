//! Reading the agent's own standard input, one entry per line.
//!
//! A dedicated thread does the blocking reads: a read of stdin cannot be
//! cancelled, and a thread outside the runtime does not hold up shutdown.

use std::io::{self, Read};
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc;

use crate::entry::RAW_CHUNK;
use crate::lines::{LineSplitter, Parts};
use crate::writer::{Item, WriteRequest};

/// Source name of lines read from stdin.
const SOURCE: &str = "stdin";

/// Starts the thread reading stdin until its end. Lines still unread when
/// the agent stops are not read.
pub(crate) fn spawn(tx: mpsc::Sender<WriteRequest>) -> io::Result<()> {
    thread::Builder::new()
        .name("tally-stdin".into())
        .spawn(move || {
            let source: Arc<str> = Arc::from(SOURCE);
            let mut splitter = LineSplitter::new(0, Vec::new(), RAW_CHUNK);
            let mut parts = Parts::default();
            let mut buf = vec![0; 64 * 1024];
            let mut stdin = io::stdin().lock();
            let send = |raws: Vec<_>, parts: &mut Parts| {
                let now = tally_proto::timefmt::now_nanos();
                let items: Vec<Item> = raws
                    .iter()
                    .flat_map(|raw| parts.lines(raw, &source, now))
                    .map(Item::Line)
                    .collect();
                items.is_empty()
                    || tx
                        .blocking_send(WriteRequest { items, reply: None })
                        .is_ok()
            };
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("cannot read stdin: {e}; no longer reading it");
                        break;
                    }
                };
                let mut raws = Vec::new();
                splitter.push(&buf[..n], &mut raws);
                if !send(raws, &mut parts) {
                    return;
                }
            }
            let mut raws = Vec::new();
            splitter.finish(&mut raws);
            send(raws, &mut parts);
            tracing::debug!("stdin closed; other sources are still read");
        })?;
    Ok(())
}
