//! Compaction: a closed window's parts merged into one file, with a
//! journal that makes a crash midway harmless (see the crate documentation).

use crate::bucket;
use crate::columns::Window;
use crate::segment::{self, FileMeta, WriteOpts, io_err, sync_dir};
use crate::{BucketRole, FlowEntry, FlowError, FlowStore, Retired};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl FlowStore {
    /// Merges the sealed parts of each closed window (ended more than the
    /// grace before `now`, nothing of it open) into one file, in runs of
    /// consecutive parts of at most [`FlowStoreConfig::compact_entries`]
    /// entries, so that a window early-sealed in many small parts (memory
    /// pressure, late records) ends as few files. An owner uploads each
    /// merged file and saves the manifest before the parts go. The parts'
    /// files (and objects) are deleted after `retire_after`. Returns how
    /// many fewer files there are. Call it after sealing.
    pub fn compact(&self, now: i64) -> Result<usize, FlowError> {
        if self.bucket_role() == Some(BucketRole::Reader) {
            return Ok(0);
        }
        let _one = self.seal_lock.lock();
        let runs: Vec<Vec<Arc<FileMeta>>> = {
            let st = self.state.read();
            let mut runs = Vec::new();
            for (t, files) in &st.files {
                let mut by_window: BTreeMap<i64, Vec<Arc<FileMeta>>> = BTreeMap::new();
                for ((start, _), m) in files {
                    by_window.entry(*start).or_default().push(m.clone());
                }
                for (start, mut parts) in by_window {
                    let key = (t.clone(), start);
                    let closed = start
                        .saturating_add(self.window_ns)
                        .saturating_add(self.grace_ns)
                        <= now;
                    let busy = st.open.contains_key(&key)
                        || st
                            .sealing
                            .iter()
                            .any(|w| w.tailnet == *t && w.start == start);
                    if parts.len() < 2 || !closed || busy || st.no_merge.contains(&key) {
                        continue;
                    }
                    parts.sort_by_key(|m| m.seq_min);
                    let mut run: Vec<Arc<FileMeta>> = Vec::new();
                    let mut sum = 0u64;
                    for m in parts {
                        if sum + m.entries > self.cfg.compact_entries as u64 && !run.is_empty() {
                            if run.len() >= 2 {
                                runs.push(std::mem::take(&mut run));
                            }
                            run.clear();
                            sum = 0;
                        }
                        sum += m.entries;
                        run.push(m);
                    }
                    if run.len() >= 2 && sum <= self.cfg.compact_entries as u64 {
                        runs.push(run);
                    }
                }
            }
            runs
        };
        let owner = self.bucket_role() == Some(BucketRole::Owner);
        let mut done: Vec<Retired> = Vec::new();
        let mut fewer = 0usize;
        let mut first_err = None;
        for run in runs {
            let key = (run[0].tailnet.clone(), run[0].window_start);
            // The owner's manifest says which files count; elsewhere a
            // journal beside the merged file does, should this crash.
            let (mut meta, journal) = match self.merge(&run, !owner) {
                Ok(m) => m,
                // The bucket unreachable: tried again by the next call.
                Err(e @ FlowError::Bucket(_)) => {
                    first_err.get_or_insert(e);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, tailnet = %key.0, window = key.1, "the parts of a flow window cannot be merged; they stay as they are");
                    self.state.write().no_merge.insert(key);
                    continue;
                }
            };
            if owner {
                let object = bucket::key_of(&meta);
                if let Err(e) = self.bucket()?.bucket.upload(&object, &meta.path) {
                    let _ = std::fs::remove_file(&meta.path);
                    first_err.get_or_insert(FlowError::Bucket(e));
                    break;
                }
                meta.remote = Some(object);
            }
            {
                let mut st = self.state.write();
                if let Some(files) = st.files.get_mut(&meta.tailnet) {
                    for m in &run {
                        files.remove(&(m.window_start, m.part));
                    }
                    files.insert((meta.window_start, meta.part), Arc::new(meta));
                }
            }
            fewer += run.len() - 1;
            done.push(Retired {
                at: std::time::Instant::now(),
                files: run,
                journal,
            });
        }
        if owner && !done.is_empty() {
            self.save_manifest_locked()?;
        }
        {
            let mut st = self.state.write();
            for r in &done {
                for m in &r.files {
                    self.footers.lock().remove(m.id);
                }
            }
            st.retired.extend(done);
        }
        self.delete_retired()?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(fewer),
        }
    }

    /// Writes the records of `parts` (of one window, consecutive) as one
    /// new part; any damage aborts the merge. With `journal`, first writes
    /// `<merged file>.merge` naming the parts: found at open beside the
    /// merged file, it says the parts are gone (see `load_catalog`).
    fn merge(
        &self,
        parts: &[Arc<FileMeta>],
        journal: bool,
    ) -> Result<(FileMeta, Option<PathBuf>), FlowError> {
        let first = &parts[0];
        let mut recs: Vec<(u64, Vec<FlowEntry>)> = Vec::new();
        let mut zctx = zstd::bulk::Decompressor::new()
            .map_err(|e| FlowError::Corrupt(format!("zstd: {e}")))?;
        for m in parts {
            let footer = self.footer(m)?;
            let (file, path) = self.open_file(m)?;
            for b in &footer.blocks {
                let cols = segment::read_block_with(&file, b, &mut zctx)
                    .map_err(|e| FlowError::Corrupt(format!("{}: {e}", path.display())))?;
                for r in &cols.recs {
                    let mut es: Vec<FlowEntry> = cols
                        .ents_of(r)
                        .iter()
                        .map(|e| cols.entry(&m.tailnet, r, e))
                        .collect();
                    es.sort_by(|a, b| a.tuple_cmp(b));
                    recs.push((r.seq, es));
                }
            }
        }
        recs.sort_by_key(|(seq, _)| *seq);
        let part = self
            .state
            .read()
            .next_part(&first.tailnet, first.window_start);
        let mut w = Window::new(
            first.tailnet.clone(),
            first.window_start,
            first.window_end,
            part,
        );
        for (seq, es) in &recs {
            let refs: Vec<&FlowEntry> = es.iter().collect();
            w.add_record(*seq, &refs)?;
        }
        let dir = self.dir.join(segment::tailnet_dir_name(&first.tailnet));
        self.ensure_dir(&dir)?;
        let journal = if journal {
            let path = dir.join(format!(
                "{}.merge",
                segment::file_name(first.window_start, part)
            ));
            let names: Vec<String> = parts
                .iter()
                .map(|m| segment::file_name(m.window_start, m.part))
                .collect();
            std::fs::write(&path, names.join("\n")).map_err(io_err("write", &path))?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err("fsync", &path))?;
            sync_dir(&dir)?;
            Some(path)
        } else {
            None
        };
        let opts = WriteOpts {
            block_entries: self.cfg.block_entries,
            zstd_level: self.cfg.zstd_level,
        };
        match segment::write_window(&dir, &w, &opts) {
            Ok(mut meta) => {
                meta.id = self.next_id.fetch_add(1, Ordering::Relaxed);
                Ok((meta, journal))
            }
            Err(e) => {
                if let Some(j) = &journal {
                    let _ = std::fs::remove_file(j);
                }
                Err(e)
            }
        }
    }
}

/// Completes the merges a crash interrupted in a tailnet's directory: a
/// journal `<merged>.merge` beside its merged file means the parts it
/// names are replaced (deleted now); without the merged file the merge
/// never happened (the journal goes).
pub(crate) fn finish_merges(dir: &Path) -> Result<(), FlowError> {
    let mut any = false;
    for ent in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let ent = ent.map_err(io_err("list", dir))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(merged) = name.strip_suffix(".merge") else {
            continue;
        };
        let journal = ent.path();
        if dir.join(merged).exists() {
            let names = std::fs::read_to_string(&journal).map_err(io_err("read", &journal))?;
            for part in names
                .lines()
                .filter(|l| segment::parse_file_name(l).is_some())
            {
                let p = dir.join(part);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &p)(e)),
                }
            }
            sync_dir(dir)?;
        }
        std::fs::remove_file(&journal).map_err(io_err("remove", &journal))?;
        any = true;
    }
    if any {
        sync_dir(dir)?;
    }
    Ok(())
}
