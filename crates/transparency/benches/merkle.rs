//! Merkle tree benchmark: appends per second into the on-disk tree and
//! proof generation at 10 million leaves.
//!
//! `cargo bench -p tally-transparency --bench merkle` (set
//! `TALLY_BENCH_LEAVES` for another size; the tree goes to a temporary
//! directory under `TMPDIR`, about 34 bytes per leaf).

use std::time::{Duration, Instant};

use tally_transparency::Hash;
use tally_transparency::merkle::{
    FileTree, MemoryTree, hash_leaf, verify_consistency, verify_inclusion,
};

/// xorshift64*: deterministic probe positions without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{label:<44} n={n:<6} mean {:>8.1} µs  p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        us(total / n as u32),
        us(samples[n / 2]),
        us(samples[n * 99 / 100]),
        us(samples[n - 1]),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("TALLY_BENCH_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!("merkle benchmark: {n} leaves");

    // Leaf hashing, for scale: a 256-byte log entry.
    let entry = [b'x'; 256];
    let t = Instant::now();
    let mut acc = Hash::ZERO;
    let hashes = 1_000_000u64;
    for i in 0..hashes {
        let mut e = entry;
        e[..8].copy_from_slice(&i.to_le_bytes());
        acc = hash_leaf(&e);
    }
    let el = t.elapsed();
    println!(
        "hash_leaf(256-byte entry)                    {:>10.0} /s  ({acc})",
        hashes as f64 / el.as_secs_f64()
    );

    // In-memory tree appends.
    let mem_n = n.min(2_000_000);
    let t = Instant::now();
    let mut mem = MemoryTree::new();
    for i in 0..mem_n {
        mem.append(Hash::sha256(&i.to_le_bytes()))?;
    }
    let el = t.elapsed();
    println!(
        "MemoryTree append (incl. making the hash)    {:>10.0} /s  ({mem_n} leaves)",
        mem_n as f64 / el.as_secs_f64()
    );
    drop(mem);

    // On-disk tree appends.
    let dir = tempfile::tempdir()?;
    let mut tree = FileTree::open_dir(dir.path())?;
    let leaves: Vec<Hash> = (0..1_000_000u64)
        .map(|i| Hash::sha256(&i.to_le_bytes()))
        .collect();
    let leaf = |i: u64| -> Hash {
        let mut h = leaves[(i % leaves.len() as u64) as usize];
        h.0[..8].copy_from_slice(&i.to_le_bytes());
        h
    };
    let t = Instant::now();
    let mut sync_time = Duration::ZERO;
    for i in 0..n {
        tree.append(leaf(i))?;
        if (i + 1) % 1_000_000 == 0 {
            let s = Instant::now();
            tree.sync()?;
            sync_time += s.elapsed();
        }
    }
    let s = Instant::now();
    tree.sync()?;
    sync_time += s.elapsed();
    let el = t.elapsed();
    println!(
        "FileTree append (precomputed leaf hashes)    {:>10.0} /s  ({n} leaves in {:.2} s, of which fsync {:.2} s)",
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64(),
        sync_time.as_secs_f64()
    );
    let t = Instant::now();
    for i in 0..10_000u64 {
        tree.append(leaf(n + i))?;
        tree.sync()?;
    }
    let el = t.elapsed();
    println!(
        "FileTree append + fsync each                 {:>10.0} /s",
        10_000.0 / el.as_secs_f64()
    );
    tree.truncate(n)?;
    tree.sync()?;
    let mut disk = 0u64;
    for e in std::fs::read_dir(dir.path())? {
        disk += e?.metadata()?.len();
    }
    println!(
        "on disk: {:.1} MB ({:.1} bytes/leaf)",
        disk as f64 / 1e6,
        disk as f64 / n as f64
    );
    let root = tree.root();
    drop(tree);

    let t = Instant::now();
    let tree = FileTree::open_dir(dir.path())?;
    println!(
        "reopen                                       {:>10.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(tree.root(), root);

    // Proofs at full size and at older sizes (page cache warm: the files
    // were just written).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let probes = 20_000;
    let mut incl = Vec::with_capacity(probes);
    for _ in 0..probes {
        let i = rng.below(n);
        let t = Instant::now();
        let proof = tree.inclusion_proof(i, n)?;
        incl.push(t.elapsed());
        if incl.len() % 100 == 0 {
            verify_inclusion(&leaf(i), i, n, &proof, &root)?;
        }
    }
    summary("inclusion proof, size = N", incl);

    let mut incl_old = Vec::with_capacity(probes);
    let mut roots = Vec::with_capacity(probes);
    for _ in 0..probes {
        let size = 1 + rng.below(n);
        let i = rng.below(size);
        let t = Instant::now();
        let root = tree.root_at(size)?;
        roots.push(t.elapsed());
        let t = Instant::now();
        let proof = tree.inclusion_proof(i, size)?;
        incl_old.push(t.elapsed());
        if incl_old.len() % 100 == 0 {
            verify_inclusion(&leaf(i), i, size, &proof, &root)?;
        }
    }
    summary("root at a random older size", roots);
    summary("inclusion proof, random older size", incl_old);

    let mut cons = Vec::with_capacity(probes);
    for k in 0..probes {
        let new = if k % 2 == 0 { n } else { 1 + rng.below(n) };
        let old = 1 + rng.below(new);
        let t = Instant::now();
        let proof = tree.consistency_proof(old, new)?;
        cons.push(t.elapsed());
        if k % 100 == 0 {
            verify_consistency(old, new, &tree.root_at(old)?, &tree.root_at(new)?, &proof)?;
        }
    }
    summary("consistency proof, random sizes", cons);

    // Verification cost, client side.
    let i = rng.below(n);
    let proof = tree.inclusion_proof(i, n)?;
    let t = Instant::now();
    for _ in 0..10_000 {
        verify_inclusion(&leaf(i), i, n, &proof, &root)?;
    }
    println!(
        "verify_inclusion ({} hashes)                 {:>10.1} µs",
        proof.len(),
        t.elapsed().as_secs_f64() * 1e6 / 10_000.0
    );
    Ok(())
}
