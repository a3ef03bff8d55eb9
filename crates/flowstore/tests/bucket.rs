//! Sealed files in a cluster's bucket: the owner uploads and keeps the
//! manifest, readers answer from it below its checkpoint and from their
//! own data above it: every entry once, the same answers after the cache
//! is emptied, a new owner resumes without duplicates, retention deletes
//! objects.

mod common;

use common::*;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_flowstore::{Bucket, BucketRole, FlowFilter, FlowStore, FlowStoreConfig, Tier};

/// A bucket in a directory: objects, a cache and the manifest, with
/// counters of what went through it.
struct DirBucket {
    objects: PathBuf,
    cache: PathBuf,
    manifest: Mutex<Option<Vec<u8>>>,
    downloads: Mutex<u64>,
    /// Every call fails while set (an outage).
    down: std::sync::atomic::AtomicBool,
}

fn flat(key: &str) -> String {
    key.replace('/', "_")
}

impl DirBucket {
    fn new(root: &Path) -> Arc<Self> {
        let b = Self {
            objects: root.join("objects"),
            cache: root.join("cache"),
            manifest: Mutex::new(None),
            downloads: Mutex::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
        };
        std::fs::create_dir_all(&b.objects).expect("objects");
        std::fs::create_dir_all(&b.cache).expect("cache");
        Arc::new(b)
    }

    fn object_count(&self) -> usize {
        std::fs::read_dir(&self.objects).expect("list").count()
    }

    fn check(&self) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("connection refused".into());
        }
        Ok(())
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }

    fn empty_cache(&self) {
        for f in std::fs::read_dir(&self.cache).expect("list") {
            std::fs::remove_file(f.expect("entry").path()).expect("remove");
        }
    }
}

impl Bucket for DirBucket {
    fn upload(&self, key: &str, path: &Path) -> Result<(), String> {
        self.check()?;
        std::fs::copy(path, self.objects.join(flat(key))).map_err(|e| e.to_string())?;
        std::fs::rename(path, self.cache.join(flat(key))).map_err(|e| e.to_string())
    }

    fn fetch(&self, key: &str) -> Result<PathBuf, String> {
        let cached = self.cache.join(flat(key));
        if !cached.exists() {
            self.check()?;
            std::fs::copy(self.objects.join(flat(key)), &cached)
                .map_err(|e| format!("{key}: {e}"))?;
            *self.downloads.lock() += 1;
        }
        Ok(cached)
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.check()?;
        let _ = std::fs::remove_file(self.cache.join(flat(key)));
        match std::fs::remove_file(self.objects.join(flat(key))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    fn load_manifest(&self) -> Result<Option<Vec<u8>>, String> {
        self.check()?;
        Ok(self.manifest.lock().clone())
    }

    fn save_manifest(&self, bytes: &[u8]) -> Result<(), String> {
        self.check()?;
        *self.manifest.lock() = Some(bytes.to_vec());
        Ok(())
    }
}

fn cfg() -> FlowStoreConfig {
    small_config()
}

fn open_as(dir: &Path, bucket: &Arc<DirBucket>, role: BucketRole) -> (FlowStore, u64) {
    FlowStore::open_with(
        dir,
        cfg(),
        Some(Tier {
            bucket: bucket.clone(),
            role,
        }),
    )
    .expect("open with a bucket")
}

/// Position of a record that also holds an entry of tailnet `u` received
/// far in the future: its window stays open and holds the checkpoint back
/// while later windows of `t` are sealed (and uploaded) above it.
const HELD: u64 = 300;

fn feed(store: &FlowStore, from: u64, to: u64) {
    for s in from..=to {
        let mut es = record("t", s);
        if s == HELD {
            let mut u = record("u", s).remove(0);
            u.logged += 1_000_000 * SEC;
            es.push(u);
        }
        store.insert(s, &es).expect("insert");
        if s % 25 == 0 {
            store.seal_due(es[0].logged).expect("seal");
        }
    }
}

/// Sealed files on disk under a store's directory.
fn flw_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).expect("list").flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".flw"))
        .count()
}

fn all() -> FlowFilter {
    FlowFilter::new("t", i64::MIN, i64::MAX)
}

#[test]
fn readers_answer_from_the_bucket_below_its_checkpoint_and_from_their_own_above() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = DirBucket::new(&root.path().join("bucket"));
    let (owner, c) = open_as(&root.path().join("owner"), &bucket, BucketRole::Owner);
    assert_eq!(c, 0);
    // A reader that has indexed the start itself, sealed files included.
    let (reader, _) = open_as(&root.path().join("reader"), &bucket, BucketRole::Reader);
    feed(&owner, 1, 700);
    feed(&reader, 1, 700);
    let uploaded = owner.publish().expect("publish");
    assert!(uploaded >= 3, "sealed windows uploaded: {uploaded}");
    assert_eq!(bucket.object_count(), uploaded);
    let checkpoint = owner.stats().checkpoint;
    assert_eq!(checkpoint, HELD - 1, "the open window of u holds it back");
    let own_files_before = reader.stats().sealed_files;
    assert!(own_files_before > 0);
    assert!(reader.refresh().expect("refresh"), "a new manifest");
    assert!(!reader.refresh().expect("refresh"), "unchanged");
    let st = reader.stats();
    assert_eq!(st.bucket_checkpoint, checkpoint);
    assert!(
        st.sealed_files < own_files_before,
        "files the bucket covers are deleted: {} of {own_files_before}",
        st.sealed_files
    );
    assert_eq!(
        flw_files(&root.path().join("reader")),
        st.sealed_files,
        "and gone from disk (retire_after is zero here)"
    );
    // Every entry once: the bucket's up to the checkpoint, its own above.
    let want = naive(&records("t", 700), &all());
    assert_eq!(as_sorted(&drain(&reader, &all(), 97)), as_sorted(&want));
    let edges = reader.edges(&all(), 10 * SEC).expect("edges");
    assert_eq!(
        edges.buckets,
        naive_edges(&records("t", 700), &all(), 10 * SEC)
    );
    // The owner answers the same from the bucket's objects.
    assert_eq!(as_sorted(&drain(&owner, &all(), 500)), as_sorted(&want));

    // The cache emptied: the same answers, downloaded again.
    let before = *bucket.downloads.lock();
    bucket.empty_cache();
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));
    assert!(*bucket.downloads.lock() > before, "fetched from the bucket");

    // A new reader starts at the checkpoint: what is below it is never
    // indexed again, and the answers are the same once it caught up.
    let (fresh, start) = open_as(&root.path().join("fresh"), &bucket, BucketRole::Reader);
    assert_eq!(start, checkpoint);
    for s in 1..=checkpoint {
        assert_eq!(fresh.insert(s, &record("t", s)).expect("insert"), 0);
    }
    feed(&fresh, checkpoint + 1, 700);
    assert_eq!(as_sorted(&drain(&fresh, &all(), 500)), as_sorted(&want));
    // Nothing of another tenant's.
    assert!(drain(&fresh, &FlowFilter::new("v", i64::MIN, i64::MAX), 500).is_empty());
}

#[test]
fn a_new_owner_resumes_from_the_manifest_without_duplicates() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = DirBucket::new(&root.path().join("bucket"));
    let (first, _) = open_as(&root.path().join("first"), &bucket, BucketRole::Owner);
    feed(&first, 1, 500);
    first.publish().expect("publish");
    let published = first.stats().checkpoint;
    // Sealed after the last publish: lost with the first owner.
    feed(&first, 501, 650);
    drop(first);

    let (second, start) = open_as(&root.path().join("second"), &bucket, BucketRole::Owner);
    assert_eq!(start, published, "resumes at the manifest's checkpoint");
    feed(&second, start + 1, 900);
    second.seal_all().expect("seal");
    second.publish().expect("publish");
    let want = naive(&records("t", 900), &all());
    assert_eq!(as_sorted(&drain(&second, &all(), 500)), as_sorted(&want));
    let (reader, start) = open_as(&root.path().join("reader"), &bucket, BucketRole::Reader);
    assert_eq!(start, 900);
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));

    // The same owner restarting on its own directory: the same.
    drop(second);
    let (again, start) = open_as(&root.path().join("second"), &bucket, BucketRole::Owner);
    assert_eq!(start, 900);
    assert_eq!(as_sorted(&drain(&again, &all(), 500)), as_sorted(&want));
}

#[test]
fn retention_deletes_objects_after_taking_them_out_of_the_manifest() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = DirBucket::new(&root.path().join("bucket"));
    let (owner, _) = open_as(&root.path().join("owner"), &bucket, BucketRole::Owner);
    feed(&owner, 1, 600);
    owner.seal_all().expect("seal");
    owner.publish().expect("publish");
    let objects = bucket.object_count();
    assert!(objects >= 3);
    let (reader, _) = open_as(&root.path().join("reader"), &bucket, BucketRole::Reader);
    let full = drain(&reader, &all(), 500).len();

    // The first window ended long enough ago for a one-day retention.
    let now = BASE + 10 * SEC + 86_400 * SEC;
    let rep = owner.enforce_retention(now, &|_| 1).expect("retention");
    assert!(rep.files >= 1, "{rep:?}");
    assert_eq!(bucket.object_count() as u64, objects as u64 - rep.files);
    assert!(reader.refresh().expect("refresh"));
    let left = drain(&reader, &all(), 500).len();
    assert_eq!(left as u64, full as u64 - rep.entries);
    assert!(left > 0);
}

#[test]
fn a_store_without_a_bucket_refuses_to_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), &cfg());
    let e = store.publish().expect_err("no bucket");
    assert!(e.to_string().contains("no bucket"), "{e}");
}

#[test]
fn covered_files_stay_on_disk_for_queries_that_listed_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = DirBucket::new(&root.path().join("bucket"));
    let (owner, _) = open_as(&root.path().join("owner"), &bucket, BucketRole::Owner);
    let dir = root.path().join("reader");
    let (reader, _) = FlowStore::open_with(
        &dir,
        FlowStoreConfig {
            retire_after: std::time::Duration::from_secs(3600),
            ..cfg()
        },
        Some(Tier {
            bucket: bucket.clone(),
            role: BucketRole::Reader,
        }),
    )
    .expect("open");
    feed(&owner, 1, 700);
    feed(&reader, 1, 700);
    owner.publish().expect("publish");
    let on_disk = flw_files(&dir);
    assert!(reader.refresh().expect("refresh"));
    assert!(
        reader.stats().sealed_files < on_disk,
        "no longer answered from"
    );
    assert_eq!(flw_files(&dir), on_disk, "still on disk");
    let want = naive(&records("t", 700), &all());
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));
}

/// A store whose windows are sealed early in many small parts.
fn pressed() -> FlowStoreConfig {
    FlowStoreConfig {
        max_open_entries: 40,
        ..cfg()
    }
}

/// The window start (seconds) of each object in the bucket, one per key.
fn object_windows(bucket: &DirBucket) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&bucket.objects)
        .expect("list")
        .flatten()
        .map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            let file = name.rsplit('_').next().unwrap_or_default().to_owned();
            let tailnet = name.split('_').nth(1).unwrap_or_default().to_owned();
            format!("{tailnet}/{}", file.split('.').next().unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_closed_windows_parts_merge_into_one_object_and_readers_follow() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = DirBucket::new(&root.path().join("bucket"));
    let tier = |role| {
        Some(Tier {
            bucket: bucket.clone() as Arc<dyn Bucket>,
            role,
        })
    };
    let (owner, _) = FlowStore::open_with(
        &root.path().join("owner"),
        pressed(),
        tier(BucketRole::Owner),
    )
    .expect("open");
    feed(&owner, 1, 700);
    owner.seal_all().expect("seal");
    owner.publish().expect("publish");
    let before = object_windows(&bucket);
    let mut windows = before.clone();
    windows.dedup();
    assert!(
        before.len() > 2 * windows.len(),
        "many parts per window: {before:?}"
    );
    let (reader, _) = open_as(&root.path().join("reader"), &bucket, BucketRole::Reader);
    let want = naive(&records("t", 700), &all());
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));

    // Every window is closed by then: one object each, the parts' objects
    // deleted once the manifest no longer lists them.
    let merged = owner.compact(BASE + 10_000 * SEC).expect("compact");
    assert_eq!(merged, before.len() - windows.len());
    assert_eq!(object_windows(&bucket), windows);
    assert_eq!(owner.stats().sealed_files, windows.len());
    assert!(reader.refresh().expect("refresh"));
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));
    assert_eq!(
        reader.edges(&all(), 10 * SEC).expect("edges").buckets,
        naive_edges(&records("t", 700), &all(), 10 * SEC)
    );
    assert_eq!(owner.compact(BASE + 10_000 * SEC).expect("again"), 0);

    // A new owner resumes from the merged files without duplicates.
    drop(owner);
    let (next, start) = open_as(&root.path().join("next"), &bucket, BucketRole::Owner);
    assert_eq!(start, 700);
    assert_eq!(next.insert(700, &record("t", 700)).expect("replay"), 0);
    assert_eq!(as_sorted(&drain(&next, &all(), 500)), as_sorted(&want));
}

#[test]
fn parts_merge_on_a_lone_server_and_a_crash_midway_is_completed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Parts kept an hour after the merge: a crash comes before they go.
    let keep = FlowStoreConfig {
        retire_after: std::time::Duration::from_secs(3600),
        ..pressed()
    };
    let (store, _) = FlowStore::open(dir.path(), keep.clone()).expect("open");
    feed(&store, 1, 700);
    store.seal_all().expect("seal");
    let parts = flw_files(dir.path());
    let fewer = store.compact(BASE + 10_000 * SEC).expect("compact");
    assert!(fewer > 0, "{parts} parts");
    let want = naive(&records("t", 700), &all());
    assert_eq!(as_sorted(&drain(&store, &all(), 500)), as_sorted(&want));
    assert!(flw_files(dir.path()) > parts, "the parts are still on disk");
    // A journal whose merge never wrote its file is dropped, and the file
    // it names stays (the one part of u's window).
    let tdir = dir.path().join("t");
    let udir = dir.path().join("u");
    let u_file = std::fs::read_dir(&udir)
        .expect("list")
        .flatten()
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".flw"))
        .expect("u's part");
    std::fs::write(udir.join("99.7.flw.merge"), &u_file).expect("journal");
    drop(store);

    let (store, checkpoint) = FlowStore::open(dir.path(), keep).expect("reopen");
    assert_eq!(checkpoint, 700);
    assert_eq!(
        flw_files(dir.path()),
        parts - fewer,
        "the merge was completed"
    );
    assert_eq!(store.stats().sealed_files, parts - fewer);
    for d in [&tdir, &udir] {
        assert!(
            !std::fs::read_dir(d)
                .expect("list")
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".merge")),
            "journals are gone"
        );
    }
    assert!(
        udir.join(&u_file).exists(),
        "a journal without its merge deletes nothing"
    );
    assert_eq!(as_sorted(&drain(&store, &all(), 500)), as_sorted(&want));
}

#[test]
fn an_outage_of_the_bucket_loses_nothing_and_says_so() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = DirBucket::new(&root.path().join("bucket"));
    let (owner, _) = open_as(&root.path().join("owner"), &bucket, BucketRole::Owner);
    let (reader, _) = open_as(&root.path().join("reader"), &bucket, BucketRole::Reader);
    feed(&owner, 1, 350);
    feed(&reader, 1, 350);
    owner.publish().expect("publish");
    assert!(reader.refresh().expect("refresh"));

    // Down: the owner's files wait on disk, the reader keeps its view and
    // answers from what it holds; both say what failed.
    bucket.set_down(true);
    feed(&owner, 351, 700);
    feed(&reader, 351, 700);
    let e = owner.publish().expect_err("the bucket is down");
    assert!(e.to_string().contains("connection refused"), "{e}");
    let e = reader.refresh().expect_err("the bucket is down");
    assert!(e.to_string().contains("flow bucket"), "{e}");
    let want = naive(&records("t", 700), &all());
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));

    // Back: everything sealed meanwhile goes up, and the reader follows.
    bucket.set_down(false);
    assert!(owner.publish().expect("publish") > 0);
    assert!(reader.refresh().expect("refresh"));
    assert_eq!(as_sorted(&drain(&reader, &all(), 500)), as_sorted(&want));
    let (fresh, _) = open_as(&root.path().join("fresh"), &bucket, BucketRole::Reader);
    let below = owner.stats().checkpoint;
    let want_below: Vec<_> = records("t", 700)
        .into_iter()
        .filter(|(seq, _)| *seq <= below)
        .collect();
    assert_eq!(
        as_sorted(&drain(&fresh, &all(), 500)),
        as_sorted(&naive(&want_below, &all()))
    );
}
