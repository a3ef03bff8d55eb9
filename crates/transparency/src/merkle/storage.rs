//! Where a [`super::MerkleTree`] keeps its hashes: append-only arrays of
//! 32-byte hashes, one per stored level (level 0 = the leaf hashes).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Hash, MerkleError};

/// Append-only arrays of hashes indexed by tree level.
///
/// Level 0 holds the leaf hashes in order; level `l > 0` holds the roots of
/// the complete subtrees of `2^l` leaves, in order (entry `i` covers leaves
/// `i * 2^l .. (i + 1) * 2^l`). The tree only uses level 0 and the levels
/// that are multiples of [`super::CACHE_STRIDE`]; it keeps every used level
/// exactly `size >> level` long and repairs them on open.
///
/// Reads take `&self` so proofs can be served concurrently; appends and
/// truncation take `&mut self` (one writer).
pub trait Storage {
    /// Number of hashes stored at `level` (0 if the level was never written).
    fn len(&self, level: u32) -> u64;

    /// Appends `hashes` at the end of `level`. Need not be durable before
    /// [`Storage::sync`], but must be visible to [`Storage::read`] at once.
    fn append(&mut self, level: u32, hashes: &[Hash]) -> Result<(), MerkleError>;

    /// Reads `out.len()` hashes of `level` starting at index `start`; errors
    /// if that runs past [`Storage::len`].
    fn read(&self, level: u32, start: u64, out: &mut [Hash]) -> Result<(), MerkleError>;

    /// Cuts `level` down to `len` hashes (no-op if it is not longer).
    fn truncate(&mut self, level: u32, len: u64) -> Result<(), MerkleError>;

    /// Makes everything appended so far durable (level 0 first).
    fn sync(&mut self) -> Result<(), MerkleError>;
}

fn out_of_range(level: u32, start: u64, count: usize, len: u64) -> MerkleError {
    MerkleError::Corrupt(format!(
        "read of {count} hashes at {start} from level {level}, which holds {len}"
    ))
}

/// Everything in memory: for tests, small trees and the client side.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    levels: BTreeMap<u32, Vec<Hash>>,
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemoryStorage {
    fn len(&self, level: u32) -> u64 {
        self.levels.get(&level).map_or(0, |v| v.len() as u64)
    }

    fn append(&mut self, level: u32, hashes: &[Hash]) -> Result<(), MerkleError> {
        self.levels
            .entry(level)
            .or_default()
            .extend_from_slice(hashes);
        Ok(())
    }

    fn read(&self, level: u32, start: u64, out: &mut [Hash]) -> Result<(), MerkleError> {
        let len = self.len(level);
        let end = start.checked_add(out.len() as u64).filter(|&e| e <= len);
        match (end, self.levels.get(&level)) {
            (Some(end), Some(v)) => {
                out.copy_from_slice(&v[start as usize..end as usize]);
                Ok(())
            }
            (Some(_), None) if out.is_empty() => Ok(()),
            _ => Err(out_of_range(level, start, out.len(), len)),
        }
    }

    fn truncate(&mut self, level: u32, len: u64) -> Result<(), MerkleError> {
        if let Some(v) = self.levels.get_mut(&level) {
            v.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), MerkleError> {
        Ok(())
    }
}

/// Buffered appends before a write(2): 2048 hashes = 64 KiB.
const PENDING_MAX: usize = 2048 * 32;

/// One append-only file of 32-byte hashes with an in-memory tail.
#[derive(Debug)]
struct HashFile {
    file: File,
    /// Hashes written to the file.
    flushed: u64,
    /// Hashes appended but not yet written, as bytes.
    pending: Vec<u8>,
}

impl HashFile {
    fn open(path: &Path) -> Result<(Self, bool), MerkleError> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let bytes = file.metadata()?.len();
        let whole = bytes / 32;
        if bytes % 32 != 0 {
            // A torn append: the partial hash was never acknowledged.
            file.set_len(whole * 32)?;
        }
        Ok((
            HashFile {
                file,
                flushed: whole,
                pending: Vec::new(),
            },
            created,
        ))
    }

    fn len(&self) -> u64 {
        self.flushed + (self.pending.len() / 32) as u64
    }

    fn flush(&mut self) -> Result<(), MerkleError> {
        if !self.pending.is_empty() {
            self.file.write_all_at(&self.pending, self.flushed * 32)?;
            self.flushed += (self.pending.len() / 32) as u64;
            self.pending.clear();
        }
        Ok(())
    }

    fn append(&mut self, hashes: &[Hash]) -> Result<(), MerkleError> {
        for h in hashes {
            self.pending.extend_from_slice(&h.0);
            if self.pending.len() >= PENDING_MAX {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn read(&self, start: u64, out: &mut [Hash]) -> Result<(), MerkleError> {
        let mut buf = [0u8; 4096];
        let mut pos = start;
        let mut done = 0usize;
        while done < out.len() {
            let want = out.len() - done;
            if pos < self.flushed {
                let n = want.min(buf.len() / 32).min((self.flushed - pos) as usize);
                let bytes = &mut buf[..n * 32];
                self.file.read_exact_at(bytes, pos * 32)?;
                for (dst, src) in out[done..done + n].iter_mut().zip(bytes.chunks_exact(32)) {
                    dst.0.copy_from_slice(src);
                }
                done += n;
                pos += n as u64;
            } else {
                let off = ((pos - self.flushed) * 32) as usize;
                let src = self.pending.get(off..off + want * 32).ok_or_else(|| {
                    MerkleError::Corrupt(format!("read past the end of a hash file at {pos}"))
                })?;
                for (dst, src) in out[done..].iter_mut().zip(src.chunks_exact(32)) {
                    dst.0.copy_from_slice(src);
                }
                done = out.len();
            }
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), MerkleError> {
        if len >= self.len() {
            return Ok(());
        }
        if len >= self.flushed {
            self.pending.truncate(((len - self.flushed) * 32) as usize);
        } else {
            self.pending.clear();
            self.file.set_len(len * 32)?;
            self.flushed = len;
        }
        Ok(())
    }
}

impl Drop for HashFile {
    fn drop(&mut self) {
        // Best effort, like BufWriter: durability is only promised by sync().
        let _ = self.flush();
    }
}

/// Hashes on disk in one directory: `leaves` holds the 32-byte leaf hashes
/// in order, `level-NN` the cached complete-subtree roots of level `NN`
/// (two decimal digits). All files are plain concatenations of 32-byte
/// hashes, append-only; a torn last hash is cut off on open.
///
/// Appends are buffered (64 KiB per file) and written with `pwrite`;
/// [`Storage::sync`] writes the buffers and `fdatasync`s the leaves first,
/// then the level files (which are derived data the tree rebuilds on open
/// if they lag). Reads use `pread` and need only `&self`.
///
/// One writer per directory: nothing stops a second process from opening
/// the same directory, so callers must (the server holds its data-dir lock).
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    files: BTreeMap<u32, HashFile>,
    dir_dirty: bool,
}

impl FileStorage {
    /// Opens (creating if needed) the directory `dir` and every hash file in it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, MerkleError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let mut storage = FileStorage {
            dir,
            files: BTreeMap::new(),
            dir_dirty: false,
        };
        let (leaves, created) = HashFile::open(&storage.path(0))?;
        storage.dir_dirty |= created;
        storage.files.insert(0, leaves);
        for entry in std::fs::read_dir(&storage.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(level) = name.to_str().and_then(parse_level_name) else {
                continue;
            };
            let (file, _) = HashFile::open(&entry.path())?;
            storage.files.insert(level, file);
        }
        Ok(storage)
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, level: u32) -> PathBuf {
        if level == 0 {
            self.dir.join("leaves")
        } else {
            self.dir.join(format!("level-{level:02}"))
        }
    }
}

fn parse_level_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("level-")?;
    if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let level: u32 = digits.parse().ok()?;
    (1..64).contains(&level).then_some(level)
}

impl Storage for FileStorage {
    fn len(&self, level: u32) -> u64 {
        self.files.get(&level).map_or(0, HashFile::len)
    }

    fn append(&mut self, level: u32, hashes: &[Hash]) -> Result<(), MerkleError> {
        if !self.files.contains_key(&level) {
            if level >= 64 {
                return Err(MerkleError::Corrupt(format!("no tree has level {level}")));
            }
            let (file, created) = HashFile::open(&self.path(level))?;
            self.dir_dirty |= created;
            self.files.insert(level, file);
        }
        match self.files.get_mut(&level) {
            Some(f) => f.append(hashes),
            None => Err(MerkleError::Corrupt(format!("level {level} vanished"))),
        }
    }

    fn read(&self, level: u32, start: u64, out: &mut [Hash]) -> Result<(), MerkleError> {
        let len = self.len(level);
        if start
            .checked_add(out.len() as u64)
            .is_none_or(|end| end > len)
        {
            return Err(out_of_range(level, start, out.len(), len));
        }
        match self.files.get(&level) {
            Some(f) => f.read(start, out),
            None => Ok(()), // only reached for empty reads
        }
    }

    fn truncate(&mut self, level: u32, len: u64) -> Result<(), MerkleError> {
        match self.files.get_mut(&level) {
            Some(f) => f.truncate(len),
            None => Ok(()),
        }
    }

    fn sync(&mut self) -> Result<(), MerkleError> {
        for f in self.files.values_mut() {
            f.flush()?;
            f.file.sync_data()?;
        }
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> Hash {
        Hash::sha256(&i.to_be_bytes())
    }

    fn exercise(s: &mut impl Storage) {
        assert_eq!(s.len(0), 0);
        assert!(s.read(0, 0, &mut []).is_ok());
        assert!(s.read(0, 0, &mut [Hash::ZERO]).is_err());
        assert!(s.read(4, 0, &mut [Hash::ZERO]).is_err());
        let all: Vec<Hash> = (0..5000).map(h).collect();
        for chunk in all.chunks(7) {
            s.append(0, chunk).unwrap();
        }
        assert_eq!(s.len(0), 5000);
        let mut out = vec![Hash::ZERO; 300];
        for start in [0u64, 1, 2047, 2048, 4095, 4500, 4700] {
            s.read(0, start, &mut out).unwrap();
            assert_eq!(&out[..], &all[start as usize..start as usize + 300]);
        }
        assert!(s.read(0, 4701, &mut out).is_err());
        assert!(s.read(0, u64::MAX, &mut out).is_err());
        s.truncate(0, 4999).unwrap();
        assert_eq!(s.len(0), 4999);
        s.truncate(0, 100).unwrap();
        assert_eq!(s.len(0), 100);
        s.truncate(0, 1000).unwrap();
        assert_eq!(s.len(0), 100);
        s.append(0, &[h(7)]).unwrap();
        let mut one = [Hash::ZERO];
        s.read(0, 100, &mut one).unwrap();
        assert_eq!(one[0], h(7));
        s.append(8, &all[..3]).unwrap();
        assert_eq!(s.len(8), 3);
        s.sync().unwrap();
    }

    #[test]
    fn memory_storage() {
        exercise(&mut MemoryStorage::new());
    }

    #[test]
    fn file_storage_survives_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = FileStorage::open(dir.path()).unwrap();
            exercise(&mut s);
        }
        let s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(s.len(0), 101);
        assert_eq!(s.len(8), 3);
        drop(s);
        // A torn write: half a hash at the end of the leaves.
        let leaves = dir.path().join("leaves");
        let mut bytes = std::fs::read(&leaves).unwrap();
        bytes.extend_from_slice(&[9u8; 17]);
        std::fs::write(&leaves, &bytes).unwrap();
        std::fs::write(dir.path().join("level-xx"), b"ignored").unwrap();
        std::fs::write(dir.path().join("level-99"), b"ignored").unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(s.len(0), 101);
        assert_eq!(std::fs::metadata(&leaves).unwrap().len(), 101 * 32);
        let mut one = [Hash::ZERO];
        s.read(0, 100, &mut one).unwrap();
        assert_eq!(one[0], h(7));
    }

    #[test]
    fn level_names() {
        assert_eq!(parse_level_name("level-04"), Some(4));
        assert_eq!(parse_level_name("level-63"), Some(63));
        assert_eq!(parse_level_name("level-64"), None);
        assert_eq!(parse_level_name("level-00"), None);
        assert_eq!(parse_level_name("level-4"), None);
        assert_eq!(parse_level_name("level-+4"), None);
        assert_eq!(parse_level_name("leaves"), None);
    }
}
