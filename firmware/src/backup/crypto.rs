//! The encryption of a backup: the `age` format (age-encryption.org/v1), to a passphrase
//! (scrypt recipient) or to an X25519 public key (`age1...`). Key material is held in
//! [`SecretString`]s and never logged or shown.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::SecretString;

/// scrypt work factor (N = 2^16: about 64 MiB and well under a second on the box).
#[cfg(not(test))]
pub const SCRYPT_LOG_N: u8 = 16;
/// Unit tests use a small work factor: unoptimised scrypt at 2^16 takes seconds.
#[cfg(test)]
pub const SCRYPT_LOG_N: u8 = 10;
/// Highest scrypt work factor accepted when decrypting (bounds memory and time for a file
/// made elsewhere, e.g. by the `age` command line tool on a desktop).
pub const MAX_SCRYPT_LOG_N: u8 = 20;
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_LEN: usize = 10;
/// Largest passphrase or identity file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file may be read by other users.
    #[error("{path} may be read by other users (mode {mode:o}): `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The passphrase is too short or empty.
    #[error("the passphrase must be at least {MIN_PASSPHRASE_LEN} characters long")]
    WeakPassphrase,
    /// The recipient is not an `age1...` X25519 public key.
    #[error("{0:?} is not an age X25519 recipient (age1...)")]
    BadRecipient(String),
    /// The identity text holds no usable X25519 identity.
    #[error("no age X25519 identity (AGE-SECRET-KEY-1...) found in the identity file")]
    BadIdentity,
}

/// How a new backup is encrypted.
pub enum Encryption {
    /// To a passphrase (scrypt).
    Passphrase(SecretString),
    /// To an X25519 public key.
    Recipient(Box<age::x25519::Recipient>),
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::Passphrase(_) => write!(f, "Encryption::Passphrase(<hidden>)"),
            Encryption::Recipient(r) => write!(f, "Encryption::Recipient({r})"),
        }
    }
}

impl Encryption {
    /// Parses an `age1...` recipient.
    pub fn recipient(text: &str) -> Result<Encryption, KeyError> {
        age::x25519::Recipient::from_str(text.trim())
            .map(|r| Encryption::Recipient(Box::new(r)))
            .map_err(|_| KeyError::BadRecipient(text.to_string()))
    }

    /// What the backup is encrypted to, for listings: `passphrase` or the `age1...` key.
    pub fn describe(&self) -> String {
        match self {
            Encryption::Passphrase(_) => "passphrase".to_string(),
            Encryption::Recipient(r) => r.to_string(),
        }
    }

    /// Starts an age stream on `out`; the caller must `finish()` it.
    pub fn wrap<W: Write>(&self, out: W) -> std::io::Result<age::stream::StreamWriter<W>> {
        let encryptor = match self {
            Encryption::Passphrase(p) => {
                let mut r = age::scrypt::Recipient::new(p.clone());
                r.set_work_factor(SCRYPT_LOG_N);
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
            }
            Encryption::Recipient(r) => {
                age::Encryptor::with_recipients(std::iter::once(r.as_ref() as &dyn age::Recipient))
            }
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        encryptor.wrap_output(out)
    }
}

/// How a backup is decrypted.
pub enum Decryption {
    /// With a passphrase.
    Passphrase(SecretString),
    /// With X25519 identities (an `age-keygen` identity file).
    Identities(Vec<age::x25519::Identity>),
}

impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decryption::Passphrase(_) => write!(f, "Decryption::Passphrase(<hidden>)"),
            Decryption::Identities(v) => write!(f, "Decryption::Identities({} keys)", v.len()),
        }
    }
}

impl Decryption {
    /// Parses an identity file's text: `AGE-SECRET-KEY-1...` lines, `#` comments.
    pub fn identity_text(text: &str) -> Result<Decryption, KeyError> {
        let ids: Vec<age::x25519::Identity> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| age::x25519::Identity::from_str(l).ok())
            .collect();
        if ids.is_empty() {
            return Err(KeyError::BadIdentity);
        }
        Ok(Decryption::Identities(ids))
    }

    /// A passphrase given by the admin (checked for length only).
    pub fn passphrase(text: &str) -> Result<Decryption, KeyError> {
        let p = text.trim_end_matches(['\n', '\r']);
        if p.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(KeyError::WeakPassphrase);
        }
        Ok(Decryption::Passphrase(SecretString::from(p.to_string())))
    }

    /// Opens an age stream for reading the plaintext of `input`.
    pub fn open<R: Read>(
        &self,
        input: R,
    ) -> Result<age::stream::StreamReader<R>, age::DecryptError> {
        let decryptor = age::Decryptor::new(input)?;
        match self {
            Decryption::Passphrase(p) => {
                let mut id = age::scrypt::Identity::new(p.clone());
                id.set_max_work_factor(MAX_SCRYPT_LOG_N);
                decryptor.decrypt(std::iter::once(&id as &dyn age::Identity))
            }
            Decryption::Identities(ids) => {
                decryptor.decrypt(ids.iter().map(|i| i as &dyn age::Identity))
            }
        }
    }
}

/// Reads a passphrase file: mode 0600 (or stricter), first line, at least
/// [`MIN_PASSPHRASE_LEN`] characters.
pub fn read_passphrase_file(path: &Path) -> Result<SecretString, KeyError> {
    let text = read_secret_file(path)?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.chars().count() < MIN_PASSPHRASE_LEN {
        return Err(KeyError::WeakPassphrase);
    }
    Ok(SecretString::from(line.to_string()))
}

/// Reads an identity file (mode 0600 or stricter).
pub fn read_identity_file(path: &Path) -> Result<Decryption, KeyError> {
    Decryption::identity_text(&read_secret_file(path)?)
}

/// A small key file nobody else may read.
fn read_secret_file(path: &Path) -> Result<String, KeyError> {
    let shown = path.display().to_string();
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: shown, mode });
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(io)?;
    Ok(text)
}

/// What an age file is encrypted to, read from its header (no key needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// A passphrase (one scrypt stanza).
    Passphrase,
    /// Public keys (X25519 or other recipient stanzas).
    Recipient,
}

/// What an age file is encrypted to, or why its header does not parse.
pub fn header_kind(path: &Path) -> Result<HeaderKind, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    header_kind_of(std::io::BufReader::new(file))
}

/// [`header_kind`] of a stream.
pub fn header_kind_of<R: Read>(input: R) -> Result<HeaderKind, String> {
    let decryptor = age::Decryptor::new(input).map_err(|e| e.to_string())?;
    Ok(if decryptor.is_scrypt() {
        HeaderKind::Passphrase
    } else {
        HeaderKind::Recipient
    })
}

/// Whether an age file (its header only) is encrypted to a passphrase; `None` when the
/// header does not parse.
pub fn is_passphrase_file(path: &Path) -> Option<bool> {
    header_kind(path).ok().map(|k| k == HeaderKind::Passphrase)
}

impl Decryption {
    /// The kind of file this key can open.
    pub fn kind(&self) -> HeaderKind {
        match self {
            Decryption::Passphrase(_) => HeaderKind::Passphrase,
            Decryption::Identities(_) => HeaderKind::Recipient,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn passphrase_and_recipient_round_trip() {
        let plain = b"hello backup".repeat(10_000);
        let pass = Encryption::Passphrase(SecretString::from("correct horse battery".to_string()));
        let mut out = pass.wrap(Vec::new()).unwrap();
        out.write_all(&plain).unwrap();
        let sealed = out.finish().unwrap();
        let mut back = Vec::new();
        Decryption::passphrase("correct horse battery")
            .unwrap()
            .open(sealed.as_slice())
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
        assert!(Decryption::passphrase("wrong horse battery")
            .unwrap()
            .open(sealed.as_slice())
            .is_err());

        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let enc = Encryption::recipient(&public).unwrap();
        assert_eq!(enc.describe(), public);
        let mut out = enc.wrap(Vec::new()).unwrap();
        out.write_all(&plain).unwrap();
        let sealed = out.finish().unwrap();
        use age::secrecy::ExposeSecret;
        let text = format!(
            "# created: today\n# public key: {public}\n{}\n",
            id.to_string().expose_secret()
        );
        let mut back = Vec::new();
        Decryption::identity_text(&text)
            .unwrap()
            .open(sealed.as_slice())
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
        let other = age::x25519::Identity::generate();
        let wrong = Decryption::identity_text(other.to_string().expose_secret()).unwrap();
        assert!(matches!(
            wrong.open(sealed.as_slice()),
            Err(age::DecryptError::NoMatchingKeys)
        ));
    }

    #[test]
    fn key_inputs_are_checked() {
        assert!(matches!(
            Encryption::recipient("age1nope"),
            Err(KeyError::BadRecipient(_))
        ));
        assert!(matches!(
            Decryption::identity_text("# nothing\n"),
            Err(KeyError::BadIdentity)
        ));
        assert!(matches!(
            Decryption::passphrase("short\n"),
            Err(KeyError::WeakPassphrase)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "a long enough passphrase\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_passphrase_file(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        use age::secrecy::ExposeSecret;
        assert_eq!(
            read_passphrase_file(&path).unwrap().expose_secret(),
            "a long enough passphrase"
        );
        let dbg = format!(
            "{:?} {:?}",
            Encryption::Passphrase(read_passphrase_file(&path).unwrap()),
            Decryption::passphrase("a long enough passphrase").unwrap()
        );
        assert!(!dbg.contains("long enough"), "key material in Debug: {dbg}");
    }
}
