//! How the server gives memory back (glibc malloc).
//!
//! Uploads allocate on whichever threads read, parse and write them. glibc
//! gives each thread an arena (up to 8 per CPU), and a freed block goes back
//! to its own arena, where it stays: after a burst of uploads of tiny
//! entries the server kept ≈5x its ingest memory budget until restart
//! (`tally bench ingest-memory`, BENCHMARKS.md). Two measures:
//!
//! - [`limit_malloc_arenas`]: at most 2 arenas per CPU, so fewer arenas
//!   each hold a high-water mark of their own;
//! - [`start_trimmer`]: `malloc_trim(0)` whenever the RSS grew by 16 MiB
//!   since the last trim (at most every 2 s; 4-14 ms each on a 2-CPU VM),
//!   which returns the free pages of every arena to the system.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Growth of the RSS since the last trim that triggers the next one.
const TRIM_GROWTH: u64 = 16 << 20;
/// Shortest time between two trims.
const TRIM_EVERY: Duration = Duration::from_secs(2);
/// How often the RSS is looked at.
const TRIM_POLL: Duration = Duration::from_secs(1);

/// Caps glibc's malloc arenas at 2 per CPU (glibc's default is 8 per CPU),
/// unless `MALLOC_ARENA_MAX` is set. Call it before any other thread is
/// started: glibc fixes the cap when a second thread first allocates.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from((2 * cpus).max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc parameter; M_ARENA_MAX takes
        // any positive count.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Starts (once per process) the thread that trims malloc's free memory
/// when the RSS has grown (see the module documentation).
pub fn start_trimmer() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if let Err(e) = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(trim_loop)
        {
            tracing::warn!(
                "cannot start the malloc-trim thread ({e}); freed memory stays in malloc's arenas"
            );
        }
    });
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss() -> Option<u64> {
    rss_bytes()
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_loop() {
    // The RSS right after the last trim (or the lowest seen since).
    let mut floor = rss_bytes().unwrap_or(0);
    let mut last: Option<Instant> = None;
    loop {
        std::thread::sleep(TRIM_POLL);
        let Some(rss) = rss_bytes() else { continue };
        floor = floor.min(rss);
        if rss < floor + TRIM_GROWTH || last.is_some_and(|t| t.elapsed() < TRIM_EVERY) {
            continue;
        }
        let t = Instant::now();
        // SAFETY: malloc_trim only gives free pages of malloc's own arenas
        // back to the system, taking each arena's lock like an allocation.
        unsafe {
            libc::malloc_trim(0);
        }
        last = Some(Instant::now());
        floor = rss_bytes().unwrap_or(rss);
        tracing::debug!(
            "malloc_trim: RSS {} -> {} MiB in {:?}",
            rss >> 20,
            floor >> 20,
            t.elapsed()
        );
    }
}
