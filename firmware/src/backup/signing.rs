//! Who made a backup: every backup (format 3 and later) carries an ed25519 signature by
//! the box's own backup-signing key over the exact bytes of its `manifest.json`. The
//! manifest lists every other member with its size and SHA-256, and a restore refuses a
//! member that is missing, extra or different, so the signature covers everything a
//! restore installs; the signature is the last member, `manifest.sig`.
//!
//! The key is made at the daemon's first start as `<data_dir>/backup/signing_ed25519`
//! (mode 0600, in a 0700 directory) and never leaves the box (it is not in a backup: a
//! restored box keeps its own). Its public half is one line the office keeps
//! (`outpostctl backup key`): `outpost-backup-ed25519 <base64> <comment>`.
//!
//! A restore accepts a backup signed by this box's key, a key in `[backup] trusted_keys`
//! or the `--signer` of the command ([`Trust`]); anything else (no signature, a signature
//! that does not verify, an unknown signer) only with `--trust-unsigned`.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The key file, under the data directory.
const KEY_FILE: &str = "backup/signing_ed25519";
/// The first word of a public key line.
pub const KEY_TYPE: &str = "outpost-backup-ed25519";
/// The first word of the key file's line.
const SECRET_TYPE: &str = "outpost-backup-ed25519-secret";
/// The member signed (the archive's manifest; named here so this module stands below the
/// archive's).
pub const SIGNED_MEMBER: &str = "manifest.json";
/// The signature scheme named in `manifest.sig`.
pub const ALGORITHM: &str = "ed25519";
/// Largest `manifest.sig` accepted.
pub const MAX_SIGNATURE_FILE: u64 = 4 * 1024;
/// Most keys in `[backup] trusted_keys`.
pub const MAX_TRUSTED_KEYS: usize = 32;
/// Longest public key line accepted.
const MAX_KEY_LINE: usize = 1024;

/// Why the signing key or a public key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key file could not be read, made or written.
    #[error("cannot {what} the backup signing key {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("the backup signing key {0} is damaged (move it away: the daemon makes a new one, and the office must keep the new public key)")]
    Damaged(String),
    /// The key file may be read by other users.
    #[error("the backup signing key {path} may be read by other users (mode {mode:o}): `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A public key line does not parse.
    #[error("{0}")]
    BadPublicKey(String),
}

/// A backup-signing public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `outpost-backup-ed25519 <base64 of 32 bytes> [comment]` (the comment, often
    /// the fingerprint or the box's name, is ignored).
    pub fn parse(line: &str) -> Result<PublicKey, SigningError> {
        let bad = |why: &str| {
            SigningError::BadPublicKey(format!(
                "not a backup signing key ({why}): expected `{KEY_TYPE} <base64>` as printed by `outpostctl backup key`"
            ))
        };
        if line.len() > MAX_KEY_LINE {
            return Err(bad("too long"));
        }
        let mut words = line.split_whitespace();
        if words.next() != Some(KEY_TYPE) {
            return Err(bad(&format!("it does not start with {KEY_TYPE}")));
        }
        let b64 = words.next().ok_or_else(|| bad("no key after the type"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("the key is not base64"))?;
        let raw: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        VerifyingKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| bad("the bytes are not an ed25519 public key"))
    }

    /// `outpost-backup-ed25519 <base64>` (no comment).
    pub fn line(&self) -> String {
        format!(
            "{KEY_TYPE} {}",
            base64::engine::general_purpose::STANDARD.encode(self.0.as_bytes())
        )
    }

    /// `SHA256:<base64 without padding>` of the 32 key bytes, as OpenSSH shows its keys.
    pub fn fingerprint(&self) -> String {
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// Whether `signature` is this key's signature of `message` (strict verification:
    /// no malleable or small-order forms).
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }
}

/// The box's backup-signing key.
pub struct BoxKey(SigningKey);

impl std::fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BoxKey({})", self.public().fingerprint())
    }
}

impl BoxKey {
    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The `manifest.sig` member for `manifest` (the exact bytes of `manifest.json`).
    pub fn seal(&self, manifest: &[u8]) -> Vec<u8> {
        let sig = self.0.sign(manifest);
        let file = SignatureFile {
            algorithm: ALGORITHM.to_owned(),
            signed: SIGNED_MEMBER.to_owned(),
            public_key: self.public().line(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        };
        // Four strings cannot fail to serialise; were it ever empty, every restore would
        // refuse the backup as unsigned rather than accept it.
        let mut json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        json.push(b'\n');
        json
    }
}

/// Where the box's signing key lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// The box's signing key, made (0600, in a 0700 directory) when there is none yet.
pub fn box_key(data_dir: &Path) -> Result<BoxKey, SigningError> {
    let path = key_path(data_dir);
    match read_key(&path) {
        Err(SigningError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            make_key(&path)
        }
        other => other,
    }
}

/// The error of a file operation `what` on the key file `path`.
fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SigningError {
    let path = path.display().to_string();
    move |source| SigningError::Io { what, path, source }
}

fn read_key(path: &Path) -> Result<BoxKey, SigningError> {
    let shown = path.display().to_string();
    let io = |what| io_err(what, path);
    // A link here would be someone else's file posing as the key.
    if std::fs::symlink_metadata(path)
        .map_err(io("read"))?
        .file_type()
        .is_symlink()
    {
        return Err(SigningError::Damaged(shown));
    }
    let file = std::fs::File::open(path).map_err(io("read"))?;
    let mode = file.metadata().map_err(io("read"))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SigningError::Permissions { path: shown, mode });
    }
    let mut text = String::new();
    file.take(1024)
        .read_to_string(&mut text)
        .map_err(io("read"))?;
    let mut words = text.split_whitespace();
    let seed = match (words.next(), words.next()) {
        (Some(SECRET_TYPE), Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()),
        _ => None,
    };
    seed.map(|s| BoxKey(SigningKey::from_bytes(&s)))
        .ok_or(SigningError::Damaged(shown))
}

fn make_key(path: &Path) -> Result<BoxKey, SigningError> {
    let io = |what| io_err(what, path);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("make"))?;
    }
    // rand's thread RNG is a CSPRNG seeded from the OS.
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let line = format!(
        "{SECRET_TYPE} {}\n",
        base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
    );
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("make"))?;
        f.write_all(line.as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("write"))?;
    }
    // A link, not a rename: two first starts racing keep one key (the loser reads it).
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
            if let Some(dir) = path.parent() {
                // The new name durable before the key signs anything.
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            let made = BoxKey(key);
            tracing::info!(
                key = %made.public().line(),
                fingerprint = %made.public().fingerprint(),
                "made the backup signing key; keep its public key (`outpostctl backup key`) to restore this box's backups elsewhere"
            );
            Ok(made)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            read_key(path)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io("write")(e))
        }
    }
}

/// `manifest.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    /// `ed25519`.
    algorithm: String,
    /// The member signed: `manifest.json`.
    signed: String,
    /// The signer's public key line.
    public_key: String,
    /// The 64-byte signature, standard base64.
    signature: String,
}

/// What the signature of a backup says, before anyone decides whether to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seal {
    /// The signature verifies with this key.
    Signed(PublicKey),
    /// No usable signature; why.
    Unsigned(String),
}

/// Checks `manifest.sig` (`None`: absent) against the exact bytes of `manifest.json`.
pub fn check_seal(manifest: &[u8], signature: Option<&[u8]>, format: u32) -> Seal {
    let Some(sig) = signature else {
        return Seal::Unsigned(if format < 3 {
            format!("the backup carries no signature (format {format}: made before backups were signed)")
        } else {
            format!("the backup carries no signature (format {format} backups are signed: its manifest.sig was removed)")
        });
    };
    let file: SignatureFile = match serde_json::from_slice(sig) {
        Ok(f) => f,
        Err(e) => return Seal::Unsigned(format!("its manifest.sig does not parse ({e})")),
    };
    if file.algorithm != ALGORITHM || file.signed != SIGNED_MEMBER {
        return Seal::Unsigned(format!(
            "its manifest.sig is an {} signature of {:?}, not an {ALGORITHM} signature of {}",
            file.algorithm, file.signed, SIGNED_MEMBER
        ));
    }
    let key = match PublicKey::parse(&file.public_key) {
        Ok(k) => k,
        Err(e) => return Seal::Unsigned(format!("its manifest.sig names no usable key: {e}")),
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&file.signature) else {
        return Seal::Unsigned("its signature is not base64".to_owned());
    };
    if key.verifies(manifest, &bytes) {
        Seal::Signed(key)
    } else {
        Seal::Unsigned(format!(
            "its signature (by {}) does not match its manifest: the backup was altered after it was signed",
            key.fingerprint()
        ))
    }
}

/// Why a key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustSource {
    /// The box's own key.
    ThisBox,
    /// `[backup] trusted_keys`.
    Config,
    /// The command's `--signer`.
    Signer,
}

impl std::fmt::Display for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustSource::ThisBox => "this box's key",
            TrustSource::Config => "a key in backup.trusted_keys",
            TrustSource::Signer => "the key given with --signer",
        })
    }
}

/// The keys a restore accepts, and whether it accepts a backup none of them signed.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<(PublicKey, TrustSource)>,
    /// `--trust-unsigned`: accept what no trusted key signed (with a warning and an alert).
    pub allow_unsigned: bool,
}

/// The outcome of [`Trust::judge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SignatureCheck {
    /// The key whose signature verifies (`outpost-backup-ed25519 <base64>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Its fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why the signer is trusted (this box's key, backup.trusted_keys, --signer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_as: Option<String>,
    /// Why the backup is not authenticated (it was accepted with --trust-unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<String>,
}

impl Trust {
    /// Trusts `key` for `source` (a key trusted twice keeps its first source).
    pub fn add(&mut self, key: PublicKey, source: TrustSource) {
        if !self.keys.iter().any(|(k, _)| *k == key) {
            self.keys.push((key, source));
        }
    }

    /// Decides on a checked seal: `Ok` with what to report, or `Err` with why it is
    /// refused and what would make it acceptable.
    pub fn judge(&self, seal: &Seal) -> Result<SignatureCheck, String> {
        let (problem, signer) = match seal {
            Seal::Signed(key) => {
                if let Some((_, source)) = self.keys.iter().find(|(k, _)| k == key) {
                    return Ok(SignatureCheck {
                        signer: Some(key.line()),
                        fingerprint: Some(key.fingerprint()),
                        trusted_as: Some(source.to_string()),
                        unauthenticated: None,
                    });
                }
                (
                    format!(
                        "it is signed by {} ({}), which is not this box's key, not in backup.trusted_keys and not given with --signer",
                        key.line(),
                        key.fingerprint()
                    ),
                    Some(*key),
                )
            }
            Seal::Unsigned(why) => (why.clone(), None),
        };
        if self.allow_unsigned {
            return Ok(SignatureCheck {
                signer: signer.map(|k| k.line()),
                fingerprint: signer.map(|k| k.fingerprint()),
                trusted_as: None,
                unauthenticated: Some(problem),
            });
        }
        Err(problem)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn the_box_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = box_key(dir.path()).unwrap();
        let path = key_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let again = box_key(dir.path()).unwrap();
        assert_eq!(a.public(), again.public(), "the same key at the next start");
        assert!(!format!("{a:?}").contains(&std::fs::read_to_string(&path).unwrap()[30..50]));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            box_key(dir.path()),
            Err(SigningError::Permissions { .. })
        ));
        std::fs::write(&path, "garbage").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(box_key(dir.path()), Err(SigningError::Damaged(_))));
    }

    #[test]
    fn public_key_lines_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = box_key(dir.path()).unwrap().public();
        let line = key.line();
        assert!(line.starts_with("outpost-backup-ed25519 "), "{line}");
        assert_eq!(
            PublicKey::parse(&format!("{line} {}", key.fingerprint())).unwrap(),
            key
        );
        assert!(key.fingerprint().starts_with("SHA256:"));
        for bad in [
            "",
            "ssh-ed25519 AAAA",
            "outpost-backup-ed25519",
            "outpost-backup-ed25519 !!!",
            "outpost-backup-ed25519 AAAA",
        ] {
            let err = PublicKey::parse(bad).unwrap_err().to_string();
            assert!(err.contains("not a backup signing key"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_seal_verifies_only_the_manifest_it_was_made_for_and_trust_decides() {
        let dir = tempfile::tempdir().unwrap();
        let own = box_key(dir.path()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = box_key(other_dir.path()).unwrap();
        let manifest = br#"{"format":3,"files":[]}"#;
        let sig = own.seal(manifest);
        assert_eq!(
            check_seal(manifest, Some(&sig), 3),
            Seal::Signed(own.public())
        );
        // One changed byte of the manifest, or of the signature, and it no longer verifies.
        let mut altered = manifest.to_vec();
        altered[12] = b'4';
        assert!(matches!(
            check_seal(&altered, Some(&sig), 3),
            Seal::Unsigned(why) if why.contains("altered")
        ));
        let mut file: SignatureFile = serde_json::from_slice(&sig).unwrap();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&file.signature)
            .unwrap();
        raw[5] ^= 1;
        file.signature = base64::engine::general_purpose::STANDARD.encode(raw);
        let bent = serde_json::to_vec(&file).unwrap();
        assert!(matches!(
            check_seal(manifest, Some(&bent), 3),
            Seal::Unsigned(_)
        ));
        // Another key's signature that names our key does not verify either.
        let mut file: SignatureFile = serde_json::from_slice(&other.seal(manifest)).unwrap();
        file.public_key = own.public().line();
        let claimed = serde_json::to_vec(&file).unwrap();
        assert!(matches!(
            check_seal(manifest, Some(&claimed), 3),
            Seal::Unsigned(_)
        ));
        assert!(matches!(
            check_seal(manifest, None, 2),
            Seal::Unsigned(why) if why.contains("format 2")
        ));
        assert!(matches!(
            check_seal(manifest, Some(b"{}"), 3),
            Seal::Unsigned(_)
        ));

        let mut trust = Trust::default();
        trust.add(own.public(), TrustSource::ThisBox);
        let ok = trust.judge(&Seal::Signed(own.public())).unwrap();
        assert_eq!(ok.trusted_as.as_deref(), Some("this box's key"));
        assert_eq!(ok.unauthenticated, None);
        let err = trust.judge(&Seal::Signed(other.public())).unwrap_err();
        assert!(err.contains(&other.public().fingerprint()), "{err}");
        assert!(trust.judge(&Seal::Unsigned("none".into())).is_err());
        trust.add(other.public(), TrustSource::Signer);
        assert_eq!(
            trust
                .judge(&Seal::Signed(other.public()))
                .unwrap()
                .trusted_as
                .as_deref(),
            Some("the key given with --signer")
        );
        trust.allow_unsigned = true;
        let accepted = trust.judge(&Seal::Unsigned("none".into())).unwrap();
        assert_eq!(accepted.unauthenticated.as_deref(), Some("none"));
    }
}
