//! Secrets the server must use (streaming destinations' tokens) are stored
//! encrypted in the control database: ChaCha20-Poly1305 with a 256-bit key
//! from `TALLY_SECRETS_KEY` (64 hex digits) or the file `secrets.key` in
//! the data directory (created on first start, mode 0600). Losing the key
//! loses the secrets (destinations must be set again), nothing else.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

/// Environment variable holding the key (64 hex digits).
pub const KEY_ENV: &str = "TALLY_SECRETS_KEY";
/// File holding the key in the data directory.
pub const KEY_FILE: &str = "secrets.key";

/// Seals and opens secrets.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key from [`KEY_ENV`], else [`KEY_FILE`] in `data_dir` (made
    /// when missing).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let raw = match std::env::var(KEY_ENV) {
            Ok(hex_key) => hex::decode(hex_key.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| anyhow::anyhow!("{KEY_ENV} must be 64 hex digits (32 bytes)"))?,
            Err(_) => Self::key_file(data_dir)?,
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &raw)
            .map_err(|_| anyhow::anyhow!("the secrets key is not a ChaCha20-Poly1305 key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    fn key_file(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(k) if k.len() == 32 => return Ok(k),
            Ok(_) => anyhow::bail!(
                "{} is not a 32-byte key; restore it from a backup, or move it away (stored destination secrets are then lost)",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        }
        let mut k = vec![0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| anyhow::anyhow!("no randomness for the secrets key"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        f.write_all(&k)
            .and_then(|()| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(k)
    }

    /// `plain` sealed: hex of nonce and ciphertext with tag.
    pub fn seal(&self, plain: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; 12];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(hex::encode(out))
    }

    /// Opens what [`SecretBox::seal`] made.
    pub fn open_sealed(&self, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let raw = hex::decode(sealed).map_err(|_| anyhow::anyhow!("a sealed secret is not hex"))?;
        if raw.len() < 12 + 16 {
            anyhow::bail!("a sealed secret is too short");
        }
        let (nonce, rest) = raw.split_at(12);
        let mut buf = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("a sealed secret has a bad nonce"))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| {
                anyhow::anyhow!(
                    "a stored secret does not open with this server's key ({KEY_FILE} or {KEY_ENV} changed?); set the destination again"
                )
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_the_same_key_only() {
        let dir = tempfile::tempdir().expect("dir");
        let b = SecretBox::open(dir.path()).expect("box");
        let sealed = b.seal(b"hec-token").expect("seal");
        assert!(!sealed.contains("hec-token"));
        assert_eq!(b.open_sealed(&sealed).expect("open"), b"hec-token");
        let again = SecretBox::open(dir.path()).expect("same key file");
        assert_eq!(again.open_sealed(&sealed).expect("open"), b"hec-token");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().expect("dir");
        let b2 = SecretBox::open(other.path()).expect("other key");
        assert!(b2.open_sealed(&sealed).is_err());
    }
}
