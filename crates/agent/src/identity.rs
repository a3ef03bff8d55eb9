//! The node's identity: `<data-dir>/private-id`, created once with mode 0600.
//!
//! The private ID is this node's secret: only the upload URL carries it. It
//! never appears in logs or error messages ([`redact`] removes it from text
//! that might contain the URL).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tally_proto::{IdError, PrivateId};

/// Name of the identity file inside the data directory.
pub const PRIVATE_ID_FILE: &str = "private-id";

/// Why the node's identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory could not be created.
    #[error("cannot create the agent data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The identity file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The identity file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The identity file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The identity file is readable or writable by group or others.
    #[error(
        "{path} has mode {mode:04o}, but it holds this node's secret ID and must be accessible by its owner only; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The identity file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The identity file is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The identity file.
        path: PathBuf,
    },
    /// The identity file does not hold a private ID.
    #[error(
        "{path} is malformed ({reason}); it must hold the private ID (64 lower-case hex digits). Restore it from a backup, or move it away to start as a new node"
    )]
    Malformed {
        /// The identity file.
        path: PathBuf,
        /// What is wrong (never the content itself).
        reason: IdError,
    },
    /// The identity file holds a private ID in a form servers refuse
    /// (upper-case, or not clamped as logtail IDs are): written by hand or
    /// by an older agent. The agent does not start with it, since every
    /// upload and report would be refused.
    #[error(
        "{path} holds a private ID that servers refuse: {reason}. It was written by hand or by an older agent. \
         To continue as a new node: stop the agent, move {path} and {marker} away \
         (e.g. `mv {path} {path}.old; mv {marker} {marker}.old`), then start the agent again with --auth-key; \
         it creates a valid ID and registers as a new node (taking over the addresses of the old node if it \
         reports the same hostname); the old node can then be removed with `tally nodes delete NODE-ID`"
    )]
    Refused {
        /// The identity file.
        path: PathBuf,
        /// The node-ID file of the old registration.
        marker: PathBuf,
        /// What is wrong (never the content itself).
        reason: IdError,
    },
    /// No identity has been created yet.
    #[error(
        "no agent identity at {path}: it is created when the agent first starts (`tally agent --server URL --data-dir {dir}`)"
    )]
    Missing {
        /// The identity file that was looked for.
        path: PathBuf,
        /// The data directory.
        dir: PathBuf,
    },
}

/// Creates `dir` (and its parents) with mode 0700 when it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IdentityError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Loads the node's private ID from `<data_dir>/private-id`, creating the
/// directory (mode 0700) and the file (mode 0600) on first start.
///
/// Refuses a file that group or others may access, or that is malformed.
pub fn load_or_create_identity(data_dir: &Path) -> Result<PrivateId, IdentityError> {
    create_private_dir(data_dir)?;
    match read_identity(data_dir) {
        Err(IdentityError::Missing { .. }) => create_identity(data_dir),
        other => other,
    }
}

/// Reads the node's private ID from `<data_dir>/private-id` without creating
/// anything (for `tally agent id`).
pub fn read_identity(data_dir: &Path) -> Result<PrivateId, IdentityError> {
    let path = data_dir.join(PRIVATE_ID_FILE);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IdentityError::Missing {
                path,
                dir: data_dir.to_owned(),
            });
        }
        Err(source) => return Err(IdentityError::Read { path, source }),
    };
    if !meta.is_file() {
        return Err(IdentityError::NotAFile { path });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions { path, mode });
    }
    let text = fs::read_to_string(&path).map_err(|source| IdentityError::Read {
        path: path.clone(),
        source,
    })?;
    PrivateId::parse(text.trim()).map_err(|reason| match reason {
        IdError::PrivateUpperCase | IdError::NotClamped(_) => IdentityError::Refused {
            marker: data_dir.join(crate::report::NODE_ID_FILE),
            path,
            reason,
        },
        _ => IdentityError::Malformed { path, reason },
    })
}

fn create_identity(data_dir: &Path) -> Result<PrivateId, IdentityError> {
    let path = data_dir.join(PRIVATE_ID_FILE);
    let tmp = data_dir.join(format!("{PRIVATE_ID_FILE}.tmp"));
    let id = PrivateId::generate();
    let write_err = |p: &Path| {
        let p = p.to_owned();
        move |source| IdentityError::Write { path: p, source }
    };
    // A leftover temporary file may have other permissions: the mode given at
    // open only applies to a file that open creates.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_err(&tmp)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err(&tmp))?;
    file.write_all(format!("{}\n", id.to_hex()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(write_err(&path))?;
    sync_dir(data_dir).map_err(write_err(data_dir))?;
    Ok(id)
}

/// Fsyncs a directory so that a rename or a new file in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces every occurrence of the private ID's hex form in `text`.
pub(crate) fn redact(text: &str, private_hex: &str) -> String {
    if private_hex.is_empty() {
        return text.to_owned();
    }
    text.replace(private_hex, "<private-id>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_with_mode_0600_and_reloads_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let id = load_or_create_identity(&data).unwrap();
        let meta = fs::metadata(data.join(PRIVATE_ID_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(load_or_create_identity(&data).unwrap(), id);
        assert_eq!(read_identity(&data).unwrap(), id);
        assert!(!data.join("private-id.tmp").exists());
    }

    #[test]
    fn refuses_group_readable_file_without_showing_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create_identity(dir.path()).unwrap();
        let path = dir.path().join(PRIVATE_ID_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, IdentityError::Permissions { mode: 0o640, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("chmod 600") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert!(!msg.contains(&id.to_hex()));
    }

    #[test]
    fn refuses_malformed_file_without_showing_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRIVATE_ID_FILE);
        let secret = "ab".repeat(31);
        fs::write(&path, &secret).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
        assert!(!err.to_string().contains(&secret));
        // It was not replaced by a new identity.
        assert_eq!(fs::read_to_string(&path).unwrap(), secret);
    }

    #[test]
    fn refuses_an_old_unclamped_or_upper_case_id_with_instructions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRIVATE_ID_FILE);
        let good = PrivateId::generate().to_hex();
        // Byte 0 with its low bits set, as agents before clamping could write.
        let unclamped = format!("07{}", &good[2..]);
        for secret in [unclamped, good.to_uppercase()] {
            fs::write(&path, format!("{secret}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create_identity(dir.path()).unwrap_err();
            assert!(matches!(err, IdentityError::Refused { .. }), "{err}");
            let msg = err.to_string();
            assert!(!msg.contains(&secret), "{msg}");
            assert!(msg.contains("servers refuse"), "{msg}");
            assert!(msg.contains(&format!("mv {}", path.display())), "{msg}");
            assert!(
                msg.contains("node-id") && msg.contains("--auth-key"),
                "{msg}"
            );
            // It was not replaced by a new identity.
            assert_eq!(fs::read_to_string(&path).unwrap(), format!("{secret}\n"));
        }
    }

    #[test]
    fn generated_identities_parse_as_clamped_ids() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let id = load_or_create_identity(dir.path()).unwrap();
            let text = fs::read_to_string(dir.path().join(PRIVATE_ID_FILE)).unwrap();
            let bytes = hex::decode(text.trim()).unwrap();
            assert_eq!(bytes[0] & 7, 0);
            assert_eq!(bytes[31] & 0xc0, 0x40);
            assert_eq!(PrivateId::parse(text.trim()).unwrap(), id);
        }
    }

    #[test]
    fn read_identity_does_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_identity(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Missing { .. }));
        assert!(err.to_string().contains("tally agent --server URL"));
        assert!(!dir.path().join(PRIVATE_ID_FILE).exists());
    }

    #[test]
    fn redact_removes_every_occurrence() {
        let hex = PrivateId::generate().to_hex();
        let text = format!("error for url (http://x/c/tailnode/{hex}): {hex}");
        let out = redact(&text, &hex);
        assert!(!out.contains(&hex));
        assert_eq!(out.matches("<private-id>").count(), 2);
    }
}
