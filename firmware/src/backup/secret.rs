//! The backup passphrase kept on the box (`outpostctl backup passphrase set`): one line in
//! `<data_dir>/backup/passphrase`, mode 0600, in a 0700 directory. It is never in the
//! configuration file, a revision, a log line or a backup (it is the key of the backups: a
//! restored box keeps the one it was restored with).

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;

use super::crypto::{self, KeyError, MIN_PASSPHRASE_LEN};

/// The file, under the data directory.
const FILE: &str = "backup/passphrase";
/// Longest passphrase accepted.
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// Why the passphrase could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Too short, too long, or with control characters.
    #[error("{0}")]
    Invalid(String),
    /// The file could not be written or removed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where the stored passphrase lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Whether a passphrase is stored.
pub fn is_set(data_dir: &Path) -> bool {
    path(data_dir).is_file()
}

/// The stored passphrase, if any (an unreadable or too loose file is an error).
pub fn read(data_dir: &Path) -> Result<Option<SecretString>, KeyError> {
    let p = path(data_dir);
    if !p.exists() {
        return Ok(None);
    }
    crypto::read_passphrase_file(&p).map(Some)
}

/// Checks a passphrase typed by the admin: length and no control characters.
pub fn check(passphrase: &str) -> Result<(), SecretError> {
    let n = passphrase.chars().count();
    if n < MIN_PASSPHRASE_LEN {
        return Err(SecretError::Invalid(format!(
            "the passphrase must be at least {MIN_PASSPHRASE_LEN} characters long"
        )));
    }
    if n > MAX_PASSPHRASE_LEN {
        return Err(SecretError::Invalid(format!(
            "the passphrase must be at most {MAX_PASSPHRASE_LEN} characters long"
        )));
    }
    if passphrase.chars().any(char::is_control) {
        return Err(SecretError::Invalid(
            "the passphrase must not contain control characters".to_owned(),
        ));
    }
    Ok(())
}

/// Stores `passphrase` (replacing the old one): written to a temporary file, synced, renamed.
pub fn store(data_dir: &Path, passphrase: &str) -> Result<(), SecretError> {
    check(passphrase)?;
    let target = path(data_dir);
    let io = |what, p: &Path| {
        let path = p.display().to_string();
        move |source| SecretError::Io { what, path, source }
    };
    let dir = target.parent().unwrap_or(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    let tmp = dir.join(".passphrase.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = super::archive::create_private(&tmp).map_err(io("create", &tmp))?;
    f.write_all(passphrase.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &target).map_err(io("rename", &tmp))?;
    super::archive::sync_dir(dir).map_err(io("sync", dir))?;
    Ok(())
}

/// Removes the stored passphrase; true if there was one.
pub fn clear(data_dir: &Path) -> Result<bool, SecretError> {
    let p = path(data_dir);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SecretError::Io {
            what: "remove",
            path: p.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use age::secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn stored_passphrase_is_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_set(dir.path()));
        assert!(read(dir.path()).unwrap().is_none());
        assert!(store(dir.path(), "short").is_err());
        assert!(store(dir.path(), "has a\ttab in it").is_err());
        store(dir.path(), "a long enough passphrase").unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(dir.path().join("backup"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert_eq!(
            read(dir.path()).unwrap().unwrap().expose_secret(),
            "a long enough passphrase"
        );
        store(dir.path(), "another long passphrase").unwrap();
        assert_eq!(
            read(dir.path()).unwrap().unwrap().expose_secret(),
            "another long passphrase"
        );
        assert!(clear(dir.path()).unwrap());
        assert!(!clear(dir.path()).unwrap());
        assert!(!is_set(dir.path()));
    }
}
