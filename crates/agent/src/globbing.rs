//! `--follow` glob patterns (`/var/log/app/*.log`): the files matching
//! when the agent starts are followed like named files (from their end on
//! first sight, resuming after a restart); a file that starts matching
//! while the agent runs is followed from its start (it is new). Patterns
//! are expanded again every few polls.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::follow::{self, FollowHandle};
use crate::writer::{WriteRequest, note};

/// Most files the patterns may add (each is followed by a thread).
const MAX_MATCHED_FILES: usize = 512;
/// Patterns are expanded again at most this often.
const MIN_RESCAN: Duration = Duration::from_secs(1);

/// The regular files matching `patterns` now, with their UTF-8 keys.
pub(crate) fn expand(patterns: &[String]) -> Vec<(PathBuf, Arc<str>)> {
    let mut found = Vec::new();
    for pattern in patterns {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths.flatten() {
            if !path.is_file() {
                continue;
            }
            if let Some(key) = path.to_str() {
                let key: Arc<str> = Arc::from(key);
                found.push((path, key));
            }
        }
    }
    found
}

/// Expands `patterns` again until `stop`, following each new match from
/// its start; `known` holds the keys followed already.
pub(crate) async fn watch(
    patterns: Vec<String>,
    mut known: BTreeSet<Arc<str>>,
    tx: mpsc::Sender<WriteRequest>,
    poll_interval: Duration,
    stop: CancellationToken,
) {
    let mut handles: Vec<FollowHandle> = Vec::new();
    let mut warned = false;
    let every = poll_interval.max(MIN_RESCAN);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        let pats = patterns.clone();
        let Ok(found) = tokio::task::spawn_blocking(move || expand(&pats)).await else {
            continue;
        };
        for (path, key) in found {
            if known.contains(&key) {
                continue;
            }
            if handles.len() >= MAX_MATCHED_FILES {
                if !warned {
                    warned = true;
                    note(
                        &tx,
                        format!(
                            "--follow patterns match more than {MAX_MATCHED_FILES} files; {} and later matches are not followed",
                            path.display()
                        ),
                    )
                    .await;
                }
                break;
            }
            let (ready_tx, ready_rx) = oneshot::channel();
            match follow::spawn(
                path.clone(),
                Arc::clone(&key),
                None,
                tx.clone(),
                poll_interval,
                ready_tx,
                true,
            ) {
                Ok(h) => {
                    let _ = ready_rx.await;
                    tracing::info!(path = %path.display(), "following a new match of a --follow pattern");
                    known.insert(key);
                    handles.push(h);
                }
                Err(e) => {
                    note(&tx, format!("cannot follow {}: {e}", path.display())).await;
                    known.insert(key);
                }
            }
        }
    }
    let _ =
        tokio::task::spawn_blocking(move || handles.into_iter().for_each(FollowHandle::stop)).await;
}
