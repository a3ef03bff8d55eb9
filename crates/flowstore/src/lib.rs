//! Tally's flow store: network flow records stored typed and columnar, so
//! that queries by time, node, address, port, protocol and kind skip what
//! cannot match.
//!
//! # Place in the server
//!
//! The flow store is **not** the durability layer. The server appends every
//! flow record to the log store's write-ahead log first (`tally-store`:
//! fsynced, deduplicated; that is what its HTTP 200 acknowledges), and a
//! consumer feeds this store from the log store's durable cursor:
//!
//! ```text
//! ingest ─► tally-store WAL ─► cursor ─► FlowStore::insert(seq, entries) ─► open window (memory)
//!                                        FlowStore::seal_due(now) ────────► sealed segment files
//!                                        returns the checkpoint ◄────────── (fsync + rename, then checkpoint file)
//! ```
//!
//! After a crash, [`FlowStore::open`] returns the persisted checkpoint and
//! the consumer replays the log store from the position after it. Records
//! already in sealed files are recognised and skipped (see *Exactly once*),
//! so a replay neither loses nor duplicates entries.
//!
//! # Data model
//!
//! One Tailscale flow record (one node, one interval of about 5 s) becomes
//! one [`FlowEntry`] per traffic entry. Entries of one record share the
//! store position `seq` of the record, its node, interval and receive time
//! (`logged`). By Tailscale's convention `src` is the node's end and `dst`
//! the remote end; "remote address" below means `dst`.
//!
//! # Windows and files
//!
//! Entries are grouped per tailnet into **windows** of `logged` time
//! (default one hour, [`FlowStoreConfig::window`]). Windows follow receive
//! time rather than traffic time so that they fill and seal in store order:
//! an agent uploading a backlog after an outage adds to the current window,
//! not to dozens of old ones. Queries select by traffic time (record
//! start); each file's trailer carries its range of record starts, so a
//! window holding a late backlog is still found.
//!
//! A window is held in memory (the *open window*, queryable) until
//! [`FlowStore::seal_due`] finds it older than its end plus a grace period
//! ([`FlowStoreConfig::grace`], default 5 min), then written as
//! `dir/<tailnet>/<window start, Unix seconds>.flw`. A window may be
//! written in several **parts** (`<start>.<n>.flw`, n = 1, 2, ...): when
//! records for it arrive after it was sealed (a replay, a clock step), or
//! when open windows exceed [`FlowStoreConfig::max_open_entries`] and the
//! largest is sealed early to bound memory. Retention deletes whole files.
//! Tailnet directory names escape every byte outside `[A-Za-z0-9_-]` as
//! `%XX`.
//!
//! # File format (version 1)
//!
//! All integers little-endian.
//!
//! ```text
//! header   "TLYFLW01" | u32 version (1) | u32 reserved
//! blocks   "FBK1" | u32 compressed len | u32 raw len | u32 crc32c(compressed) | u32 entries | zstd bytes
//! footer   u32 raw len | zstd(index)
//! trailer  u64 footer offset | u32 footer len | u32 crc32c(footer) | u64 entries |
//!          i64 min start | i64 max start | i64 max end | u64 min seq | u64 max seq |
//!          i64 window start | i64 window end | u32 blocks | u32 crc32c(trailer so far) | "TLYFLWND"
//! ```
//!
//! Inside a file, records are sorted by (node ID, start, seq) and cut into
//! blocks of about [`FlowStoreConfig::block_entries`] entries, never
//! splitting a record and, when it costs at most half a block, never
//! splitting a node's run either, so a one-node query reads one or two
//! blocks per file. Each block is columnar (node runs, delta-coded times and
//! positions, an address dictionary, a dictionary of distinct
//! (kind, proto, src, src port, dst, dst port) tuples, varint counters; see
//! the `block` module) and compressed with zstd. Blocks are self-contained,
//! so a file whose footer is damaged can be salvaged block by block.
//!
//! The footer index (varints) holds per block: position, length, checksum,
//! counts, start range, max end, seq range, first and last node ID, a bit
//! set of kinds, a 256-bit set of protocols, min/max source and destination
//! address per family, and a Bloom filter (8 bits per distinct key, 5
//! probes, at most 8 KiB) over source addresses, destination addresses and
//! ports. A query reads the trailer catalog (kept in memory from open), the
//! footers of the files in its time range (cached in memory, bounded by
//! [`FlowStoreConfig::footer_cache_bytes`], least recently used out), and
//! decompresses only blocks whose index entry may match. A block that fails
//! its checksum or does not decode is skipped and named in the answer's
//! `errors`; it never fails the query.
//!
//! # Exactly once
//!
//! `insert` must be called in increasing `seq` order, once per record.
//! Each window part holds exactly the records routed to its window whose
//! `seq` lies between the part's smallest and largest `seq` (routing is by
//! tailnet and `logged`, both fixed by the record). The **checkpoint** is
//! the largest `seq` such that every flow record at or below it is in a
//! sealed file: the smallest `seq` in an open or unsealed window minus one,
//! or the highest `seq` inserted (or passed with [`FlowStore::advance_to`])
//! when nothing is open. Sealing writes `<name>.tmp`, fsyncs it, renames
//! it into place and fsyncs the directory; only then is the checkpoint file
//! (`dir/checkpoint`, replaced the same way) moved. On open, leftover
//! `.tmp` files (a crash before rename) are deleted, and a replayed record
//! is skipped when `seq` is at or below the checkpoint or falls in the seq
//! range of a sealed part of its window. Changing the window length takes
//! effect for new windows; records replayed across such a change could be
//! routed to a different window and stored twice.
//!
//! # Queries
//!
//! A [`FlowFilter`] selects entries of one tailnet whose record start lies
//! in `[start, end)`, optionally by node, source or destination prefix,
//! port (either side), protocol, kind and peer (remote address in a set of
//! prefixes: node-pair queries). [`FlowStore::query`] answers **newest
//! first** (record start descending, then node ID and store position
//! descending; entries of a record in tuple order), in pages of whole
//! records with an opaque cursor. [`FlowStore::edges`] sums packets and
//! bytes per (time bucket, node, remote address).
//!
//! # Compaction
//!
//! [`FlowStore::compact`] merges the parts of a closed window (ended more
//! than the grace ago, nothing of it open or sealing) into one new part,
//! in runs of consecutive parts of at most
//! [`FlowStoreConfig::compact_entries`] entries. The merged part holds
//! exactly the records of the parts it replaces, over their joint seq
//! range, so the exactly-once rules above still hold; the parts' files are
//! deleted after [`FlowStoreConfig::retire_after`].
//!
//! # A cluster's bucket
//!
//! With a [`Tier`] the sealed files live in a bucket shared by a
//! cluster: one owner uploads them and keeps the manifest, readers answer
//! from it below its checkpoint (see [`bucket`]).
//!
//! # Retention
//!
//! [`FlowStore::enforce_retention`] deletes the files of windows that ended
//! more than the tailnet's retention ago ([`DEFAULT_RETENTION_DAYS`] is the
//! usual answer). Retention counts from the window end (receive time).
//!
//! # Measured
//!
//! `cargo bench -p tally-bench --bench flowstore` (`tally_bench::flowstore`,
//! also part 4 of `tally bench flows`): 1,000 nodes, 24 h, 15.4 M entries
//! in 2.1 M records on a shared 2-core machine: about 5.8 M
//! entries/s into open windows, 1.8 M/s including sealing; 9.2 bytes on
//! disk per entry; a node pair over the 24 h, every page, p50 6 ms and
//! p99 17 ms (about 28 of 3,959 blocks read); whole-tailnet edges over
//! 24 h in 1-h buckets 1.6 s.
//!
//! # Limits, noted
//!
//! One process per directory (nothing locks it). Each page re-reads the
//! blocks it needs (no decoded-block cache), so dumping a whole tailnet
//! page by page costs about one window's blocks per page. `edges` decodes
//! every block its filter lets through (no pre-aggregated summaries), so a
//! whole-tailnet day costs seconds, not milliseconds. Open windows are not
//! trimmed by retention (they are younger than any sensible retention).

mod block;
mod bloom;
pub mod bucket;
mod codec;
mod columns;
mod compact;
mod query;
mod segment;
mod types;

pub use bucket::{Bucket, BucketFile, BucketRole, FlowManifest, Tier};
pub use ipnet::IpNet;
pub use types::{
    EdgeBucket, Edges, FlowEntry, FlowFilter, FlowHit, FlowKind, FlowPage, FlowStats, PageCursor,
    PageRequest, QueryStats, RetentionReport,
};

use columns::{Compiled, Window};
use parking_lot::{Mutex, RwLock};
use query::{Collector, EdgeAgg};
use segment::{FileMeta, Footer, WriteOpts, io_err, sync_dir};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most entries a page may ask for.
pub const MAX_PAGE_ENTRIES: usize = 100_000;
/// Most rows an edges answer may hold (about 130 MiB at worst while it is
/// built); a query that would exceed it fails and should use larger buckets
/// or a narrower filter.
pub const MAX_EDGE_ROWS: usize = 1_000_000;
/// The usual flow retention, in days.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Name of the checkpoint file in the store directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"TFCK";
const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Errors of the flow store.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// An operating-system I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What failed, with the path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Data on disk failed verification.
    #[error("corrupt flow data: {0}")]
    Corrupt(String),
    /// A caller passed something unusable (bad cursor, zero page, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// The configuration is unusable.
    #[error("flow store configuration: {0}")]
    Config(String),
    /// The cluster's bucket failed (upload, download, manifest).
    #[error("flow bucket: {0}")]
    Bucket(String),
}

/// Tuning of the flow store. Defaults suit a server.
#[derive(Debug, Clone)]
pub struct FlowStoreConfig {
    /// Length of a window of receive time, a whole number of seconds
    /// (default 1 h).
    pub window: Duration,
    /// How long after its end a window stays open for late records
    /// (default 5 min).
    pub grace: Duration,
    /// Target entries per block (default 4096).
    pub block_entries: usize,
    /// zstd level of blocks and footers (default 9).
    pub zstd_level: i32,
    /// Entries held in open windows before `seal_due` seals the largest
    /// ones early (default 1,000,000, about 60 MiB).
    pub max_open_entries: usize,
    /// Memory for decoded footers (default 64 MiB).
    pub footer_cache_bytes: usize,
    /// How long a reader keeps its own sealed files on disk after the
    /// bucket covered them, and any store the parts it merged, for queries
    /// that listed them (default 60 s).
    pub retire_after: Duration,
    /// Most entries [`FlowStore::compact`] merges into one file (default
    /// 2,000,000, about 120 MiB while merging).
    pub compact_entries: usize,
}

impl Default for FlowStoreConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            grace: Duration::from_secs(300),
            block_entries: 4096,
            zstd_level: 9,
            max_open_entries: 1_000_000,
            footer_cache_bytes: 64 << 20,
            retire_after: Duration::from_secs(60),
            compact_entries: 2_000_000,
        }
    }
}

type WindowKey = (String, i64);

struct State {
    open: HashMap<WindowKey, Window>,
    /// Frozen windows being written (or whose write failed: retried by the
    /// next seal call). Still queried and still holding the checkpoint back.
    sealing: Vec<Arc<Window>>,
    /// Sealed files per tailnet, by (window start, part).
    files: BTreeMap<String, BTreeMap<(i64, u32), Arc<FileMeta>>>,
    /// Seq ranges of sealed parts above the checkpoint found at open, per
    /// window: a replayed record inside one is already stored.
    dedup: HashMap<WindowKey, Vec<(u64, u64)>>,
    dedup_max: u64,
    high_water: u64,
    checkpoint: u64,
    open_entries: usize,
    /// A reader's view of the bucket: its files per tailnet.
    bucket: BTreeMap<String, Vec<Arc<FileMeta>>>,
    /// A reader's split: records at or below it are answered from the
    /// bucket's files, the rest from this store's own (0: no bucket).
    split: u64,
    /// The manifest as last loaded or saved (unchanged: nothing to do).
    manifest: Option<Vec<u8>>,
    /// An owner's checkpoint in the manifest last saved: with no file to
    /// upload and the same checkpoint, `publish` has nothing to do.
    published: Option<u64>,
    /// A reader's own files the bucket now covers, deleted a while after
    /// (a query that listed them before may still open them).
    retired: Vec<Retired>,
    /// Windows whose parts could not be merged (damage): left as they are.
    no_merge: std::collections::HashSet<WindowKey>,
}

impl State {
    fn current_checkpoint(&self) -> u64 {
        let lowest = self
            .open
            .values()
            .map(|w| w.seq_min)
            .chain(self.sealing.iter().map(|w| w.seq_min))
            .min();
        match lowest {
            Some(s) => s.saturating_sub(1),
            None => self.high_water,
        }
    }

    fn next_part(&self, tailnet: &str, start: i64) -> u32 {
        let sealed = self
            .files
            .get(tailnet)
            .and_then(|m| m.range((start, 0)..=(start, u32::MAX)).next_back())
            .map(|((_, p), _)| *p);
        let sealing = self
            .sealing
            .iter()
            .filter(|w| w.tailnet == tailnet && w.start == start)
            .map(|w| w.part)
            .max();
        match sealed.max(sealing) {
            Some(p) => p.saturating_add(1),
            None => 0,
        }
    }

    fn is_sealed_already(&self, key: &WindowKey, seq: u64) -> bool {
        self.dedup
            .get(key)
            .is_some_and(|rs| rs.iter().any(|(a, b)| *a <= seq && seq <= *b))
    }
}

/// Files out of the catalog, deleted after `retire_after`; a merge's
/// journal goes with its parts.
struct Retired {
    at: std::time::Instant,
    files: Vec<Arc<FileMeta>>,
    journal: Option<PathBuf>,
}

struct CacheEntry {
    footer: Arc<Footer>,
    bytes: usize,
    used: u64,
    pinned: bool,
}

/// Decoded footers by file id, least recently used out.
struct FooterCache {
    map: HashMap<u64, CacheEntry>,
    bytes: usize,
    cap: usize,
    tick: u64,
}

impl FooterCache {
    fn get(&mut self, id: u64) -> Option<Arc<Footer>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(&id).map(|e| {
            e.used = t;
            e.footer.clone()
        })
    }

    fn put(&mut self, id: u64, footer: Arc<Footer>, pinned: bool) {
        self.tick += 1;
        let bytes = footer.mem_bytes();
        if let Some(old) = self.map.insert(
            id,
            CacheEntry {
                footer,
                bytes,
                used: self.tick,
                pinned,
            },
        ) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        while self.bytes > self.cap {
            let victim = self
                .map
                .iter()
                .filter(|(k, e)| !e.pinned && **k != id)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            match victim {
                Some(k) => self.remove(k),
                None => break,
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.map.remove(&id) {
            self.bytes -= e.bytes;
        }
    }
}

/// Work and damage of one query.
struct Outcome {
    stats: QueryStats,
    errors: Vec<String>,
}

/// A sealed file a query reads: this store's own, or the bucket's.
struct Source {
    m: Arc<FileMeta>,
    bucket: bool,
}

impl Source {
    /// The file's name in messages.
    fn name(&self) -> String {
        match &self.m.remote {
            Some(k) => k.clone(),
            None => self.m.path.display().to_string(),
        }
    }
}

/// The filter for each side of a reader's split: its own data above the
/// split, the bucket's at or below it (no split: all of its own).
struct Split<'f> {
    own: Compiled<'f>,
    bucket: Compiled<'f>,
}

impl<'f> Split<'f> {
    fn at(f: &'f FlowFilter, split: u64) -> Self {
        if split == 0 {
            return Split {
                own: Compiled::new(f),
                bucket: Compiled::within(f, 1, 0),
            };
        }
        Split {
            own: Compiled::within(f, split.saturating_add(1), u64::MAX),
            bucket: Compiled::within(f, 1, split),
        }
    }

    fn of(&self, s: &Source) -> &Compiled<'f> {
        if s.bucket { &self.bucket } else { &self.own }
    }

    /// Whether the file may hold records of its side.
    fn may_hold(&self, s: &Source) -> bool {
        let c = self.of(s);
        s.m.seq_max >= c.seqs.0 && s.m.seq_min <= c.seqs.1
    }
}

/// The flow store of one server: open windows in memory, sealed segment
/// files on disk. All methods take `&self`; share it with an `Arc`.
pub struct FlowStore {
    dir: PathBuf,
    cfg: FlowStoreConfig,
    window_ns: i64,
    grace_ns: i64,
    state: RwLock<State>,
    footers: Mutex<FooterCache>,
    seal_lock: Mutex<()>,
    tier: Option<Tier>,
    next_id: AtomicU64,
    corrupt_blocks: AtomicU64,
    damaged_files: AtomicU64,
}

fn read_checkpoint(dir: &Path) -> Result<u64, FlowError> {
    let path = dir.join(CHECKPOINT_FILE);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    if b.len() == 16 && &b[..4] == CHECKPOINT_MAGIC {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[4..12]);
        let crc = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if crc32c::crc32c(&b[..12]) == crc {
            return Ok(u64::from_le_bytes(v));
        }
    }
    // Replaying everything is correct (sealed parts are recognised), only
    // slower, so a damaged checkpoint is not fatal.
    tracing::warn!(path = %path.display(), "damaged flow checkpoint; replaying from the start");
    Ok(0)
}

fn write_checkpoint(dir: &Path, seq: u64) -> Result<(), FlowError> {
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(CHECKPOINT_MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&tmp, &b).map_err(io_err("write", &tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("rename into", &path))?;
    sync_dir(dir)
}

fn overlaps(f: &FlowFilter, min_start: i64, max_start: i64) -> bool {
    min_start < f.end && max_start >= f.start && min_start <= max_start
}

impl FlowStore {
    /// Opens (creating if needed) the store in `dir`. Returns the store and
    /// the checkpoint: the consumer replays flow records after it.
    pub fn open(dir: &Path, cfg: FlowStoreConfig) -> Result<(FlowStore, u64), FlowError> {
        Self::open_with(dir, cfg, None)
    }

    /// Opens the store with a cluster's bucket (see [`bucket`]). An owner
    /// takes the manifest's files and checkpoint when there is a manifest
    /// (its own unpublished files are dropped and replayed); a reader
    /// starts at the manifest's checkpoint when that is ahead of its own.
    pub fn open_with(
        dir: &Path,
        cfg: FlowStoreConfig,
        tier: Option<Tier>,
    ) -> Result<(FlowStore, u64), FlowError> {
        let window_ns = i64::try_from(cfg.window.as_nanos())
            .ok()
            .filter(|w| *w >= 1_000_000_000 && w % 1_000_000_000 == 0)
            .ok_or_else(|| {
                FlowError::Config("window must be a whole number of seconds, at least 1".into())
            })?;
        let grace_ns = i64::try_from(cfg.grace.as_nanos())
            .map_err(|_| FlowError::Config("grace is too long".into()))?;
        if cfg.block_entries == 0 || !(1..=22).contains(&cfg.zstd_level) {
            return Err(FlowError::Config(
                "block_entries must be positive and zstd_level 1 to 22".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let checkpoint = read_checkpoint(dir)?;
        let store = FlowStore {
            dir: dir.to_path_buf(),
            footers: Mutex::new(FooterCache {
                map: HashMap::new(),
                bytes: 0,
                cap: cfg.footer_cache_bytes,
                tick: 0,
            }),
            cfg,
            window_ns,
            grace_ns,
            state: RwLock::new(State {
                open: HashMap::new(),
                sealing: Vec::new(),
                files: BTreeMap::new(),
                dedup: HashMap::new(),
                dedup_max: 0,
                high_water: checkpoint,
                checkpoint,
                open_entries: 0,
                bucket: BTreeMap::new(),
                split: 0,
                manifest: None,
                published: None,
                retired: Vec::new(),
                no_merge: std::collections::HashSet::new(),
            }),
            seal_lock: Mutex::new(()),
            tier,
            next_id: AtomicU64::new(1),
            corrupt_blocks: AtomicU64::new(0),
            damaged_files: AtomicU64::new(0),
        };
        store.load_catalog()?;
        let checkpoint = match store.tier.as_ref().map(|t| t.role) {
            None => checkpoint,
            Some(BucketRole::Owner) => store.adopt_manifest()?.unwrap_or(checkpoint),
            Some(BucketRole::Reader) => {
                store.refresh()?;
                checkpoint.max(store.state.read().split)
            }
        };
        Ok((store, checkpoint))
    }

    /// Deletes retired files (a reader's own the bucket covers, parts
    /// merged away) and their objects once no query can still be about to
    /// open them.
    fn delete_retired(&self) -> Result<(), FlowError> {
        let expired: Vec<Retired> = {
            let mut st = self.state.write();
            let now = std::time::Instant::now();
            let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.retired)
                .into_iter()
                .partition(|r| now.duration_since(r.at) >= self.cfg.retire_after);
            st.retired = keep;
            old
        };
        for (i, r) in expired.iter().enumerate() {
            let gone = r.files.iter().try_for_each(|m| {
                self.footers.lock().remove(m.id);
                if let Some(key) = &m.remote {
                    return self.bucket()?.bucket.delete(key).map_err(FlowError::Bucket);
                }
                match std::fs::remove_file(&m.path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err("remove", &m.path)(e)),
                }
            });
            if let Err(e) = gone {
                // Tried again by the next call.
                self.state
                    .write()
                    .retired
                    .extend(expired.into_iter().skip(i));
                return Err(e);
            }
            if let Some(j) = &r.journal {
                if let Some(d) = j.parent() {
                    sync_dir(d)?;
                }
                match std::fs::remove_file(j) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", j)(e)),
                }
            }
        }
        Ok(())
    }

    /// Opens the bytes of `m`: its file, or the bucket's cached copy. A
    /// file moved meanwhile (uploaded by the owner, or evicted from the
    /// cache) is looked up again.
    fn open_file(&self, m: &FileMeta) -> Result<(File, PathBuf), FlowError> {
        let open = |m: &FileMeta| {
            let p = self.path_of(m)?;
            let f = File::open(&p).map_err(io_err("open", &p))?;
            Ok::<_, FlowError>((f, p))
        };
        open(m).or_else(|first| {
            let now = self
                .state
                .read()
                .files
                .get(&m.tailnet)
                .and_then(|f| f.get(&(m.window_start, m.part)))
                .filter(|n| n.seq_min == m.seq_min && n.seq_max == m.seq_max)
                .cloned();
            match now {
                Some(n) => open(&n),
                None if m.remote.is_some() => open(m),
                None => Err(first),
            }
        })
    }

    /// Where the bytes of `m` are: its path, or the bucket's cached copy.
    fn path_of(&self, m: &FileMeta) -> Result<PathBuf, FlowError> {
        match &m.remote {
            None => Ok(m.path.clone()),
            Some(key) => self.bucket()?.bucket.fetch(key).map_err(FlowError::Bucket),
        }
    }

    fn load_catalog(&self) -> Result<(), FlowError> {
        let mut st = self.state.write();
        let rd = std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for ent in rd {
            let ent = ent.map_err(io_err("list", &self.dir))?;
            let path = ent.path();
            if !path.is_dir() {
                continue;
            }
            let name = ent.file_name();
            let Some(tailnet) = name.to_str().and_then(segment::parse_tailnet_dir) else {
                tracing::warn!(path = %path.display(), "ignoring a directory that is not a tailnet's");
                continue;
            };
            compact::finish_merges(&path)?;
            let files = std::fs::read_dir(&path).map_err(io_err("list", &path))?;
            let mut removed_tmp = false;
            for f in files {
                let f = f.map_err(io_err("list", &path))?;
                let fpath = f.path();
                let Some(fname) = f.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if fname.ends_with(".tmp") {
                    // A seal interrupted before its rename: the records are
                    // above the checkpoint and will be replayed.
                    std::fs::remove_file(&fpath).map_err(io_err("remove", &fpath))?;
                    removed_tmp = true;
                    continue;
                }
                let Some((start, part)) = segment::parse_file_name(&fname) else {
                    continue;
                };
                let end = start.saturating_add(self.window_ns);
                let meta = match segment::read_trailer(&fpath, &tailnet, part) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        self.damaged_files.fetch_add(1, Ordering::Relaxed);
                        match segment::salvage(&fpath, &tailnet, start, end, part) {
                            Ok((m, footer, lost)) if !footer.blocks.is_empty() => {
                                tracing::warn!(error = %e, lost = ?lost, blocks = footer.blocks.len(), "salvaged a damaged flow segment");
                                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                                self.footers.lock().put(id, Arc::new(footer), true);
                                Some(FileMeta { id, ..m })
                            }
                            Ok((_, _, lost)) => {
                                tracing::error!(error = %e, lost = ?lost, "unreadable flow segment left aside");
                                None
                            }
                            Err(e2) => {
                                tracing::error!(error = %e, salvage = %e2, "unreadable flow segment left aside");
                                None
                            }
                        }
                    }
                };
                let Some(mut meta) = meta else { continue };
                if meta.id == 0 {
                    meta.id = self.next_id.fetch_add(1, Ordering::Relaxed);
                }
                if meta.window_start != start {
                    tracing::warn!(path = %fpath.display(), "segment trailer names another window; trusting the file name");
                    meta.window_start = start;
                }
                if meta.seq_max > st.checkpoint {
                    st.dedup
                        .entry((tailnet.clone(), start))
                        .or_default()
                        .push((meta.seq_min, meta.seq_max));
                    st.dedup_max = st.dedup_max.max(meta.seq_max);
                }
                st.files
                    .entry(tailnet.clone())
                    .or_default()
                    .insert((start, part), Arc::new(meta));
            }
            if removed_tmp {
                sync_dir(&path)?;
            }
        }
        Ok(())
    }

    /// The window start of a receive time.
    fn window_of(&self, logged: i64) -> i64 {
        logged.div_euclid(self.window_ns) * self.window_ns
    }

    /// Adds the entries of one flow record read from the log store at
    /// position `seq` (at least 1, increasing from call to call) to the
    /// open windows. Entries may belong to different tailnets and windows.
    ///
    /// Returns the entries added: 0 when the record is already stored
    /// (`seq` at or below the highest position seen, or inside a sealed
    /// part of its window: a replay).
    pub fn insert(&self, seq: u64, entries: &[FlowEntry]) -> Result<usize, FlowError> {
        if seq == 0 {
            return Err(FlowError::InvalidInput(
                "flow record positions start at 1".into(),
            ));
        }
        if entries.iter().any(|e| e.tailnet.is_empty()) {
            return Err(FlowError::InvalidInput(
                "a flow entry has no tailnet".into(),
            ));
        }
        let mut keyed: Vec<(i64, &FlowEntry)> = entries
            .iter()
            .map(|e| (self.window_of(e.logged), e))
            .collect();
        keyed.sort_by(|(wa, a), (wb, b)| {
            (&a.tailnet, wa, &a.node, a.start, a.end, a.logged)
                .cmp(&(&b.tailnet, wb, &b.node, b.start, b.end, b.logged))
                .then_with(|| a.tuple_cmp(b))
        });
        let mut st = self.state.write();
        if seq <= st.high_water {
            return Ok(0);
        }
        let mut added = 0usize;
        let mut i = 0;
        let mut run: Vec<&FlowEntry> = Vec::new();
        while i < keyed.len() {
            let (ws, h) = keyed[i];
            let mut j = i + 1;
            while j < keyed.len() && keyed[j].0 == ws && keyed[j].1.tailnet == h.tailnet {
                j += 1;
            }
            let key = (h.tailnet.clone(), ws);
            if !st.is_sealed_already(&key, seq) {
                if !st.open.contains_key(&key) {
                    let part = st.next_part(&h.tailnet, ws);
                    let w = Window::new(
                        h.tailnet.clone(),
                        ws,
                        ws.saturating_add(self.window_ns),
                        part,
                    );
                    st.open.insert(key.clone(), w);
                }
                if let Some(w) = st.open.get_mut(&key) {
                    let mut k = i;
                    while k < j {
                        let hk = keyed[k].1;
                        run.clear();
                        while k < j && {
                            let e = keyed[k].1;
                            e.node == hk.node
                                && e.start == hk.start
                                && e.end == hk.end
                                && e.logged == hk.logged
                        } {
                            run.push(keyed[k].1);
                            k += 1;
                        }
                        w.add_record(seq, &run)?;
                        added += run.len();
                    }
                }
            }
            i = j;
        }
        st.high_water = seq;
        st.open_entries += added;
        if seq >= st.dedup_max && !st.dedup.is_empty() {
            st.dedup.clear();
        }
        Ok(added)
    }

    /// Tells the store that every log-store record up to `seq` has been
    /// read and its flow entries inserted, so the checkpoint can move past
    /// records that were not flow records.
    pub fn advance_to(&self, seq: u64) {
        let mut st = self.state.write();
        if seq > st.high_water {
            st.high_water = seq;
            if seq >= st.dedup_max {
                st.dedup.clear();
            }
        }
    }

    /// Seals the windows that ended more than the grace period before
    /// `now` (Unix ns), and the largest open windows while open entries
    /// exceed [`FlowStoreConfig::max_open_entries`]; then persists and
    /// returns the checkpoint. Pass the wall clock when the consumer is
    /// caught up and the `logged` time of the last record read while it
    /// replays, so replayed windows are not sealed half-filled. Call it
    /// every few seconds.
    ///
    /// A window whose file cannot be written stays queryable in memory and
    /// is retried by the next call; the error is returned after the other
    /// windows are sealed.
    pub fn seal_due(&self, now: i64) -> Result<u64, FlowError> {
        self.seal(|w| w.end.saturating_add(self.grace_ns) <= now)
    }

    /// Seals every open window (shutdown, tests) and returns the checkpoint.
    pub fn seal_all(&self) -> Result<u64, FlowError> {
        self.seal(|_| true)
    }

    fn seal(&self, due: impl Fn(&Window) -> bool) -> Result<u64, FlowError> {
        let _one = self.seal_lock.lock();
        let todo: Vec<Arc<Window>> = {
            let mut st = self.state.write();
            let mut keys: Vec<WindowKey> = st
                .open
                .iter()
                .filter(|(_, w)| due(w))
                .map(|(k, _)| k.clone())
                .collect();
            let due_entries: usize = keys
                .iter()
                .filter_map(|k| st.open.get(k))
                .map(Window::entries)
                .sum();
            let mut left = st.open_entries - due_entries;
            if left > self.cfg.max_open_entries {
                let mut rest: Vec<(usize, WindowKey)> = st
                    .open
                    .iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .map(|(k, w)| (w.entries(), k.clone()))
                    .collect();
                rest.sort_by_key(|r| std::cmp::Reverse(r.0));
                for (n, k) in rest {
                    if left <= self.cfg.max_open_entries / 2 {
                        break;
                    }
                    left -= n;
                    keys.push(k);
                }
            }
            for k in keys {
                if let Some(w) = st.open.remove(&k) {
                    st.open_entries -= w.entries();
                    st.sealing.push(Arc::new(w));
                }
            }
            st.sealing.clone()
        };
        let opts = WriteOpts {
            block_entries: self.cfg.block_entries,
            zstd_level: self.cfg.zstd_level,
        };
        let mut first_err = None;
        for w in todo {
            let dir = self.dir.join(segment::tailnet_dir_name(&w.tailnet));
            let res = self
                .ensure_dir(&dir)
                .and_then(|_| segment::write_window(&dir, &w, &opts));
            match res {
                Ok(mut meta) => {
                    meta.id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let mut st = self.state.write();
                    st.sealing.retain(|x| !Arc::ptr_eq(x, &w));
                    st.files
                        .entry(w.tailnet.clone())
                        .or_default()
                        .insert((w.start, w.part), Arc::new(meta));
                }
                Err(e) => {
                    tracing::error!(error = %e, tailnet = %w.tailnet, window = w.start, "sealing a flow window failed; kept in memory");
                    first_err.get_or_insert(e);
                }
            }
        }
        let c = self.state.read().current_checkpoint();
        if c > self.state.read().checkpoint {
            write_checkpoint(&self.dir, c)?;
            self.state.write().checkpoint = c;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(self.state.read().checkpoint),
        }
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), FlowError> {
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        sync_dir(&self.dir)
    }

    fn footer(&self, m: &FileMeta) -> Result<Arc<Footer>, FlowError> {
        if let Some(f) = self.footers.lock().get(m.id) {
            return Ok(f);
        }
        let (file, path) = self.open_file(m)?;
        match segment::read_footer(m, &file, &path) {
            Ok(f) => {
                let f = Arc::new(f);
                self.footers.lock().put(m.id, f.clone(), false);
                Ok(f)
            }
            Err(e) => {
                self.damaged_files.fetch_add(1, Ordering::Relaxed);
                let (_, footer, lost) =
                    segment::salvage(&path, &m.tailnet, m.window_start, m.window_end, m.part)?;
                tracing::warn!(error = %e, lost = ?lost, "salvaged the blocks of a flow segment whose footer is damaged");
                let f = Arc::new(footer);
                self.footers.lock().put(m.id, f.clone(), true);
                Ok(f)
            }
        }
    }

    /// The sources of a query: windows scanned in place under the lock by
    /// `scan_open`, then frozen windows, files and the split returned. A
    /// reader's files are its own (above the split), then the bucket's.
    fn snapshot<'f>(
        &self,
        f: &'f FlowFilter,
        mut scan_open: impl FnMut(&Window, &Compiled<'_>),
    ) -> (Vec<Arc<Window>>, Vec<Source>, Split<'f>) {
        let st = self.state.read();
        let split = Split::at(f, st.split);
        for w in st.open.values() {
            if w.tailnet == f.tailnet && overlaps(f, w.min_start, w.max_start) {
                scan_open(w, &split.own);
            }
        }
        let sealing = st
            .sealing
            .iter()
            .filter(|w| w.tailnet == f.tailnet && overlaps(f, w.min_start, w.max_start))
            .cloned()
            .collect();
        let own = st
            .files
            .get(&f.tailnet)
            .into_iter()
            .flat_map(|m| m.values().cloned())
            .map(|m| Source { m, bucket: false });
        let bucket = st
            .bucket
            .get(&f.tailnet)
            .into_iter()
            .flatten()
            .cloned()
            .map(|m| Source { m, bucket: true });
        (sealing, own.chain(bucket).collect(), split)
    }

    /// Runs `visit` over every block of `files` that the index lets
    /// through (`keep_file` and `keep_block` may refuse more; a refused file
    /// ends the scan), recording work and damage in `out`.
    fn scan_files(
        &self,
        files: &[Source],
        split: &Split<'_>,
        out: &mut Outcome,
        mut keep_file: impl FnMut(&FileMeta) -> bool,
        mut keep_block: impl FnMut(&block::BlockMeta) -> bool,
        mut visit: impl FnMut(&columns::Columns, &str, &Compiled<'_>) -> u64,
    ) {
        let mut zctx = match zstd::bulk::Decompressor::new() {
            Ok(z) => z,
            Err(e) => {
                out.errors.push(format!("zstd: {e}"));
                return;
            }
        };
        for src in files {
            let m = &src.m;
            if !keep_file(m) {
                break;
            }
            let c = split.of(src);
            let footer = match self.footer(m) {
                Ok(f) => f,
                Err(e) => {
                    out.errors.push(format!("{}: skipped: {e}", src.name()));
                    continue;
                }
            };
            let file = match self.open_file(m) {
                Ok((f, _)) => f,
                Err(e) => {
                    out.errors.push(format!("{}: skipped: {e}", src.name()));
                    continue;
                }
            };
            out.stats.blocks += footer.blocks.len() as u64;
            for b in &footer.blocks {
                if !b.may_match(c) || !keep_block(b) {
                    continue;
                }
                out.stats.blocks_read += 1;
                match segment::read_block_with(&file, b, &mut zctx) {
                    Ok(cols) => out.stats.entries_scanned += visit(&cols, &m.tailnet, c),
                    Err(e) => {
                        self.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(file = %src.name(), offset = b.offset, error = %e, "skipping a corrupt flow block");
                        out.errors.push(format!(
                            "{}: block at {} ({} entries) skipped: {e}",
                            src.name(),
                            b.offset,
                            b.entries
                        ));
                    }
                }
            }
        }
    }

    /// One page of the entries `f` selects, newest first (see the crate
    /// documentation for the order and paging rules).
    pub fn query(&self, f: &FlowFilter, page: &PageRequest) -> Result<FlowPage, FlowError> {
        if page.limit == 0 || page.limit > MAX_PAGE_ENTRIES {
            return Err(FlowError::InvalidInput(format!(
                "page limit must be 1 to {MAX_PAGE_ENTRIES}"
            )));
        }
        let cursor = page
            .cursor
            .as_ref()
            .map(|c| PageCursor::decode(c.as_str()))
            .transpose()?;
        let mut coll = Collector::new(page.limit, cursor);
        let mut stats = QueryStats::default();
        let errors = Vec::new();
        let (sealing, files, split) = self.snapshot(f, |w, own| {
            stats.entries_scanned += coll.scan(&w.cols, &w.tailnet, own);
        });
        for w in &sealing {
            stats.entries_scanned += coll.scan(&w.cols, &w.tailnet, &split.own);
        }
        stats.files = files.len() as u64;
        let mut cands: Vec<Source> = files
            .into_iter()
            .filter(|s| {
                let m = &s.m;
                overlaps(f, m.min_start, m.max_start)
                    && coll.before_cursor_possible(m.min_start)
                    && split.may_hold(s)
            })
            .collect();
        stats.files_skipped = stats.files - cands.len() as u64;
        cands.sort_by_key(|s| std::cmp::Reverse(s.m.max_start));
        let coll = std::cell::RefCell::new(coll);
        let mut out = Outcome { stats, errors };
        self.scan_files(
            &cands,
            &split,
            &mut out,
            |m| coll.borrow_mut().may_help(m.max_start),
            |b| {
                let mut k = coll.borrow_mut();
                k.before_cursor_possible(b.min_start) && k.may_help(b.max_start)
            },
            |cols, t, c| coll.borrow_mut().scan(cols, t, c),
        );
        let (hits, next) = coll.into_inner().finish();
        Ok(FlowPage {
            hits,
            next,
            errors: out.errors,
            stats: out.stats,
        })
    }

    /// Sums of packets and bytes of the entries `f` selects, per
    /// (bucket of record start, node, remote address). `bucket_nanos` is at
    /// least one second; the answer holds at most [`MAX_EDGE_ROWS`] rows.
    pub fn edges(&self, f: &FlowFilter, bucket_nanos: i64) -> Result<Edges, FlowError> {
        if bucket_nanos < 1_000_000_000 {
            return Err(FlowError::InvalidInput(
                "edge buckets are at least one second".into(),
            ));
        }
        let mut agg = EdgeAgg::new(bucket_nanos);
        let mut stats = QueryStats::default();
        let errors = Vec::new();
        let (sealing, files, split) = self.snapshot(f, |w, own| {
            stats.entries_scanned += agg.scan(&w.cols, own);
        });
        for w in &sealing {
            stats.entries_scanned += agg.scan(&w.cols, &split.own);
        }
        stats.files = files.len() as u64;
        let cands: Vec<Source> = files
            .into_iter()
            .filter(|s| overlaps(f, s.m.min_start, s.m.max_start) && split.may_hold(s))
            .collect();
        stats.files_skipped = stats.files - cands.len() as u64;
        let mut out = Outcome { stats, errors };
        self.scan_files(
            &cands,
            &split,
            &mut out,
            |_| true,
            |_| true,
            |cols, _, c| agg.scan(cols, c),
        );
        if agg.overflow() {
            return Err(FlowError::InvalidInput(format!(
                "more than {MAX_EDGE_ROWS} edge rows: use larger buckets or a narrower filter"
            )));
        }
        Ok(Edges {
            buckets: agg.finish(),
            errors: out.errors,
            stats: out.stats,
        })
    }

    /// Deletes the sealed files of windows that ended at least
    /// `days(tailnet)` days before `now` (Unix ns). `days` is called with
    /// the store locked and must not call back into it.
    pub fn enforce_retention(
        &self,
        now: i64,
        days: &dyn Fn(&str) -> u32,
    ) -> Result<RetentionReport, FlowError> {
        let removed: Vec<Arc<FileMeta>> = {
            let mut st = self.state.write();
            let mut out = Vec::new();
            for (t, files) in st.files.iter_mut() {
                let cutoff = now.saturating_sub(i64::from(days(t)).saturating_mul(NANOS_PER_DAY));
                let old: Vec<(i64, u32)> = files
                    .iter()
                    .filter(|(_, m)| m.window_end <= cutoff)
                    .map(|(k, _)| *k)
                    .collect();
                for k in old {
                    if let Some(m) = files.remove(&k) {
                        out.push(m);
                    }
                }
            }
            st.files.retain(|_, m| !m.is_empty());
            out
        };
        let mut rep = RetentionReport::default();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut first_err = None;
        let (in_bucket, removed): (Vec<_>, Vec<_>) =
            removed.into_iter().partition(|m| m.remote.is_some());
        if !in_bucket.is_empty() {
            // Out of the manifest first, so that no reader asks for a
            // deleted object; then out of the bucket.
            {
                let _one = self.seal_lock.lock();
                self.save_manifest_locked()?;
            }
            let tier = self.bucket()?;
            for m in in_bucket {
                self.footers.lock().remove(m.id);
                let key = m.remote.as_deref().unwrap_or_default();
                match tier.bucket.delete(key) {
                    Ok(()) => {
                        rep.files += 1;
                        rep.bytes += m.bytes;
                        rep.entries += m.entries;
                    }
                    Err(e) => {
                        first_err.get_or_insert(FlowError::Bucket(e));
                    }
                }
            }
        }
        for m in removed {
            self.footers.lock().remove(m.id);
            match std::fs::remove_file(&m.path) {
                Ok(()) => {
                    rep.files += 1;
                    rep.bytes += m.bytes;
                    rep.entries += m.entries;
                    let d = m.path.parent().map(Path::to_path_buf);
                    if let Some(d) = d.filter(|d| !dirs.contains(d)) {
                        dirs.push(d);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(io_err("remove", &m.path)(e));
                }
            }
        }
        for d in dirs {
            sync_dir(&d)?;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(rep),
        }
    }

    /// A snapshot of sizes and counters.
    pub fn stats(&self) -> FlowStats {
        let st = self.state.read();
        let files = st.files.values().flat_map(|m| m.values());
        FlowStats {
            checkpoint: st.checkpoint,
            high_water: st.high_water,
            open_windows: st.open.len(),
            open_entries: st.open_entries,
            sealing_windows: st.sealing.len(),
            sealing_entries: st.sealing.iter().map(|w| w.entries()).sum(),
            tailnets: st.files.len(),
            sealed_files: files.clone().count(),
            sealed_entries: files.clone().map(|m| m.entries).sum(),
            sealed_bytes: files.map(|m| m.bytes).sum(),
            footer_cache_bytes: self.footers.lock().bytes,
            bucket_files: st.bucket.values().map(Vec::len).sum::<usize>()
                + st.files
                    .values()
                    .flat_map(|m| m.values())
                    .filter(|m| m.remote.is_some())
                    .count(),
            bucket_checkpoint: st.split,
            corrupt_blocks: self.corrupt_blocks.load(Ordering::Relaxed),
            damaged_files: self.damaged_files.load(Ordering::Relaxed),
        }
    }

    /// Approximate memory held by open windows (bytes).
    pub fn open_memory(&self) -> usize {
        let st = self.state.read();
        st.open.values().map(Window::mem_bytes).sum::<usize>()
            + st.sealing.iter().map(|w| w.mem_bytes()).sum::<usize>()
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
