//! The plaintext inside a backup: a tar archive with a manifest of checksums. The format is
//! documented for the customer in `docs/backup-format.md`; this module writes format
//! [`FORMAT`] and reads formats 0 to 4. Format 3 and later end with `manifest.sig`, the box's
//! signature of the manifest's exact bytes ([`super::signing`]); whether its signer is
//! trusted is the caller's decision, this module only says what the signature proves.
//! Format 4 adds the provisioned desk phones (`store/phones.json`).
//!
//! Reading treats the archive as hostile: only regular files with plain relative paths
//! under the known directories are accepted, every size is bounded (each member by its kind,
//! all of them together by the caller's total), and nothing is written outside the staging
//! directory the caller names.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use firewall::detect::Alert;
use pbx_core::cdr::Cdr;
use pbx_core::Millis;

use crate::store::{ExtensionRecord, PhoneRecord, StoredBan, StoredLock, VoicemailRecord};

use super::signing::{self, BoxKey, Seal, SignatureCheck};

/// The archive format written by this version (4: the desk phones are included; 3: signed;
/// 2: the SFTP client key is included).
pub const FORMAT: u32 = 4;
/// The first format that carries the desk phones ([`PHONES`]).
pub const PHONES_FORMAT: u32 = 4;
/// The first format that carries a signature.
pub const SIGNED_FORMAT: u32 = 3;
/// The name of the manifest (the last member but the signature).
pub const MANIFEST: &str = signing::SIGNED_MEMBER;
/// The box's signature of the manifest (format 3; the last member).
pub const MANIFEST_SIG: &str = "manifest.sig";
/// Call records, one JSON object per line, oldest first (format 1 and later).
pub const CDRS_JSONL: &str = "store/cdrs.jsonl";
/// Call records as one JSON array (format 0, migrated on restore).
pub const CDRS_JSON_V0: &str = "store/cdrs.json";
/// Extensions (digests, never passwords).
pub const EXTENSIONS: &str = "store/extensions.json";
/// Firewall bans.
pub const BANS: &str = "store/bans.json";
/// Account locks.
pub const LOCKS: &str = "store/locks.json";
/// Firewall alerts.
pub const ALERTS: &str = "store/alerts.json";
/// Meta values (PIN hashes, forwarding, caller-IDs, SSH keys, admin password hash, ...).
pub const META: &str = "store/meta.json";
/// The voicemail index.
pub const VOICEMAIL: &str = "store/voicemail.json";
/// Provisioned desk phones, with the SIP and provisioning passwords they are served
/// (format 4).
pub const PHONES: &str = "store/phones.json";
/// The SFTP client key of the off-site targets (format 2).
pub const SFTP_KEY: &str = "backup/sftp_ed25519";
/// Its public half (format 2).
pub const SFTP_KEY_PUB: &str = "backup/sftp_ed25519.pub";

/// Largest single store JSON document (other than the call records) accepted.
const MAX_JSON: u64 = 256 * 1024 * 1024;
/// Largest manifest accepted.
const MAX_MANIFEST: u64 = 64 * 1024 * 1024;
/// Largest configuration, TLS or SSH file accepted.
const MAX_SMALL_FILE: u64 = 4 * 1024 * 1024;
/// Largest voicemail audio file accepted.
pub const MAX_AUDIO: u64 = 1024 * 1024 * 1024;
/// Longest line of `store/cdrs.jsonl`.
const MAX_CDR_LINE: usize = 64 * 1024;
/// Most members an archive may have.
const MAX_ENTRIES: usize = 1_000_000;
/// Longest member path.
const MAX_PATH: usize = 255;
/// Default cap on the sum of all members' sizes of a backup a restore accepts: the most
/// the admin socket takes as an upload (a backup's members are never larger than its
/// ciphertext). `[backup] restore_max_bytes` sets it lower.
pub const MAX_TOTAL: u64 = 8 * 1024 * 1024 * 1024;

/// The manifest: what the archive holds, with a checksum of every other member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Archive format (2 today; a reader refuses anything newer than it knows).
    pub format: u32,
    /// When the backup was made, ms since the Unix epoch.
    pub created_ms: Millis,
    /// The same, RFC 3339 UTC.
    pub created: String,
    /// The box's host name.
    pub hostname: String,
    /// The Outpost version that made it.
    pub outpost_version: String,
    /// Every member except the manifest itself.
    pub files: Vec<FileEntry>,
}

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the archive.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// One ban in `store/bans.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRow {
    /// The banned address.
    pub addr: String,
    /// The ban itself.
    #[serde(flatten)]
    pub ban: StoredBan,
}

/// One account lock in `store/locks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRow {
    /// The locked account.
    pub user: String,
    /// The lock itself.
    #[serde(flatten)]
    pub lock: StoredLock,
}

/// One meta value in `store/meta.json`: UTF-8 text as `text`, anything else as `base64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaRow {
    /// The key.
    pub key: String,
    /// The value when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value in standard base64 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

impl MetaRow {
    /// Encodes a raw meta value.
    pub fn new(key: &str, value: &[u8]) -> MetaRow {
        use base64::Engine;
        match std::str::from_utf8(value) {
            Ok(text) => MetaRow {
                key: key.to_string(),
                text: Some(text.to_string()),
                base64: None,
            },
            Err(_) => MetaRow {
                key: key.to_string(),
                text: None,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            },
        }
    }

    /// The raw value, or why it is not valid.
    pub fn value(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        match (&self.text, &self.base64) {
            (Some(t), None) => Ok(t.as_bytes().to_vec()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("meta {:?}: bad base64: {e}", self.key)),
            _ => Err(format!(
                "meta {:?}: exactly one of text and base64 is needed",
                self.key
            )),
        }
    }
}

/// The store content of a backup, parsed (call records are streamed separately).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreDocs {
    /// Extensions.
    pub extensions: Vec<ExtensionRecord>,
    /// Bans.
    pub bans: Vec<BanRow>,
    /// Account locks.
    pub locks: Vec<LockRow>,
    /// Alerts, oldest first.
    pub alerts: Vec<Alert>,
    /// Meta values.
    pub meta: Vec<MetaRow>,
    /// The voicemail index; `path` is relative to the archive (`voicemail/<box>/<file>`).
    pub voicemail: Vec<VoicemailRecord>,
    /// Provisioned desk phones (none before format 4).
    pub phones: Vec<PhoneRecord>,
}

/// Writes the tar stream of a backup, collecting the manifest as it goes.
pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<W>,
    files: Vec<FileEntry>,
    mtime: u64,
}

impl<W: Write> std::fmt::Debug for ArchiveWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive whose members carry the time `now`.
    pub fn new(out: W, now: Millis) -> ArchiveWriter<W> {
        ArchiveWriter {
            tar: tar::Builder::new(out),
            files: Vec::new(),
            mtime: now / 1000,
        }
    }

    /// Adds a member with `data` (mode 0600 when `secret`, else 0644).
    pub fn add(&mut self, path: &str, data: &[u8], secret: bool) -> io::Result<()> {
        check_member_path(path).map_err(io::Error::other)?;
        let mut header = self.header(data.len() as u64, secret);
        self.tar.append_data(&mut header, path, data)?;
        self.files.push(FileEntry {
            path: path.to_string(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        });
        Ok(())
    }

    /// Adds a member of exactly `size` bytes that `produce` writes (streamed: nothing is
    /// held in memory). `produce` must write the same bytes as when `size` was measured.
    pub fn add_streamed(
        &mut self,
        path: &str,
        size: u64,
        produce: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        check_member_path(path).map_err(io::Error::other)?;
        let mut header = self.header(size, false);
        header.set_path(path)?;
        header.set_cksum();
        let out = self.tar.get_mut();
        out.write_all(header.as_bytes())?;
        let mut counted = Counting {
            inner: out,
            hasher: Sha256::new(),
            written: 0,
        };
        produce(&mut counted)?;
        let Counting {
            hasher, written, ..
        } = counted;
        if written != size {
            return Err(io::Error::other(format!(
                "{path}: {written} bytes written, {size} announced"
            )));
        }
        let pad = (512 - size % 512) % 512;
        self.tar
            .get_mut()
            .write_all(&[0u8; 512][..usize::try_from(pad).unwrap_or(0)])?;
        self.files.push(FileEntry {
            path: path.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
        });
        Ok(())
    }

    /// Writes the manifest and then `key`'s signature of its exact bytes as the last
    /// members, ends the tar stream and returns the writer.
    pub fn finish(
        mut self,
        created_ms: Millis,
        hostname: &str,
        key: &BoxKey,
    ) -> io::Result<(W, Manifest)> {
        let manifest = Manifest {
            format: FORMAT,
            created_ms,
            created: super::schedule::rfc3339(created_ms),
            hostname: hostname.to_string(),
            outpost_version: env!("CARGO_PKG_VERSION").to_string(),
            files: std::mem::take(&mut self.files),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        let mut header = self.header(json.len() as u64, false);
        self.tar
            .append_data(&mut header, MANIFEST, json.as_slice())?;
        let sig = key.seal(&json);
        let mut header = self.header(sig.len() as u64, false);
        self.tar
            .append_data(&mut header, MANIFEST_SIG, sig.as_slice())?;
        Ok((self.tar.into_inner()?, manifest))
    }

    fn header(&self, size: u64, secret: bool) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(if secret { 0o600 } else { 0o644 });
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        header
    }
}

/// Counts and hashes what passes through.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The decrypted stream ended early or failed to authenticate.
    #[error("the backup is corrupted or truncated ({0})")]
    Corrupt(String),
    /// The archive is from a newer version.
    #[error("made by a newer Outpost (format {0}); update first")]
    FutureFormat(u32),
    /// The archive is not laid out like an Outpost backup.
    #[error("not a valid Outpost backup: {0}")]
    Invalid(String),
    /// A member's content does not match the manifest.
    #[error("checksum mismatch for {0}: the backup was altered")]
    Checksum(String),
    /// The members together are larger than a restore accepts.
    #[error("the backup is too large to restore: its members add up to more than {max} bytes (passed at {at:?}, {total} bytes so far); nothing was installed ([backup] restore_max_bytes sets the cap, at most 8 GiB)")]
    TooLarge {
        /// The member whose header passed the cap.
        at: String,
        /// The sum of sizes up to and including it.
        total: u64,
        /// The cap.
        max: u64,
    },
    /// Writing to the staging directory failed.
    #[error("cannot write {path}: {source}")]
    Stage {
        /// The file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// What a checked archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// The manifest's format (0 to 2).
    pub format: u32,
    /// When it was made, ms since the epoch.
    pub created_ms: Millis,
    /// The box that made it.
    pub hostname: String,
    /// The version that made it.
    pub outpost_version: String,
    /// Extensions.
    pub extensions: usize,
    /// Call records.
    pub cdrs: u64,
    /// Bans (ended ones included).
    pub bans: usize,
    /// Account locks.
    pub locks: usize,
    /// Alerts.
    pub alerts: usize,
    /// Voicemail messages.
    pub voicemail: usize,
    /// Configuration revisions.
    pub config_revisions: usize,
    /// A TLS certificate and key are included.
    pub tls: bool,
    /// An SSH host key is included.
    pub ssh_host_key: bool,
    /// Members checked, the manifest included.
    pub files: usize,
    /// Authorised SSH public keys (of the admin).
    #[serde(default)]
    pub ssh_keys: usize,
    /// A console admin password hash is included.
    #[serde(default)]
    pub admin_password: bool,
    /// The SFTP client key of the off-site targets is included (format 2).
    #[serde(default)]
    pub sftp_key: bool,
    /// Sum of all members' sizes, the manifest and signature included.
    #[serde(default)]
    pub total_bytes: u64,
    /// Provisioned desk phones (format 4; an older backup has none, see
    /// [`Contents::carries_phones`]).
    #[serde(default)]
    pub phones: usize,
    /// Who signed it and why that is trusted (filled in by the restore's trust check).
    #[serde(default)]
    pub signature: SignatureCheck,
}

impl Contents {
    /// Whether the backup's format has the desk phones: an older one restores none (the
    /// box keeps only those of its own phones whose extension password the restored
    /// extension still accepts, see [`crate::store::Store::import`]).
    pub fn carries_phones(&self) -> bool {
        self.format >= PHONES_FORMAT
    }
}

/// A checked archive: what it holds, its store documents and what its signature proves.
#[derive(Debug, Clone)]
pub struct Checked {
    /// What it holds.
    pub contents: Contents,
    /// The store documents.
    pub docs: StoreDocs,
    /// The signature over the manifest, checked (not yet judged against a trust set).
    pub seal: Seal,
}

/// Reads a whole decrypted archive from `input`, checks every member against the manifest,
/// the format and the layout, checks the signature over the manifest and parses the store
/// documents. The sum of the members' sizes may not pass `max_total` (refused at the first
/// member header that passes it, before its content is read). With `stage`, every member
/// is written below that directory (format 0 call records already migrated to
/// `store/cdrs.jsonl`); without, nothing is written anywhere.
pub fn check<R: Read>(
    input: R,
    stage: Option<&Path>,
    max_total: u64,
) -> Result<Checked, ArchiveError> {
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    let mut archive = tar::Archive::new(input);
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut docs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut signature_bytes: Option<Vec<u8>> = None;
    let mut total_bytes = 0u64;
    let mut cdrs_jsonl: Option<u64> = None;
    let mut unknown: Vec<String> = Vec::new();
    let mut wav_dirs: Vec<PathBuf> = Vec::new();
    {
        let entries = archive.entries().map_err(corrupt)?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(corrupt)?;
            if n >= MAX_ENTRIES {
                return Err(ArchiveError::Invalid(format!(
                    "more than {MAX_ENTRIES} members"
                )));
            }
            let path = String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| ArchiveError::Invalid("a member name is not UTF-8".into()))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(ArchiveError::Invalid(format!(
                    "{path:?} is not a regular file"
                )));
            }
            check_member_path(&path).map_err(ArchiveError::Invalid)?;
            if seen.contains_key(&path)
                || (path == MANIFEST && manifest_bytes.is_some())
                || (path == MANIFEST_SIG && signature_bytes.is_some())
            {
                return Err(ArchiveError::Invalid(format!("{path:?} appears twice")));
            }
            let size = entry.header().size().map_err(corrupt)?;
            total_bytes = total_bytes.saturating_add(size);
            if total_bytes > max_total {
                return Err(ArchiveError::TooLarge {
                    at: path,
                    total: total_bytes,
                    max: max_total,
                });
            }
            let kind = member_kind(&path);
            let limit = match kind {
                Kind::Manifest => MAX_MANIFEST,
                Kind::Signature => signing::MAX_SIGNATURE_FILE,
                Kind::Doc => MAX_JSON,
                Kind::CdrLines => u64::MAX,
                Kind::Audio => MAX_AUDIO,
                Kind::Small => MAX_SMALL_FILE,
                // Only hashed; refused after the manifest's format is known.
                Kind::Unknown => MAX_AUDIO,
            };
            if size > limit {
                return Err(ArchiveError::Invalid(format!(
                    "{path:?} is {size} bytes, more than the {limit} allowed"
                )));
            }
            if kind == Kind::Manifest {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_MANIFEST)
                    .read_to_end(&mut buf)
                    .map_err(corrupt)?;
                manifest_bytes = Some(buf);
                continue;
            }
            if kind == Kind::Signature {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(signing::MAX_SIGNATURE_FILE)
                    .read_to_end(&mut buf)
                    .map_err(corrupt)?;
                signature_bytes = Some(buf);
                continue;
            }
            let target = match (stage, kind) {
                (Some(dir), Kind::Small | Kind::Audio | Kind::CdrLines | Kind::Doc) => {
                    let t = dir.join(&path);
                    if let Some(parent) = t.parent() {
                        std::fs::create_dir_all(parent).map_err(|source| ArchiveError::Stage {
                            path: parent.display().to_string(),
                            source,
                        })?;
                        if kind == Kind::Audio && !wav_dirs.iter().any(|d| d == parent) {
                            wav_dirs.push(parent.to_path_buf());
                        }
                    }
                    Some(t)
                }
                _ => None,
            };
            let mut sink: Box<dyn Write> = match &target {
                Some(t) => Box::new(io::BufWriter::new(create_private(t).map_err(|source| {
                    ArchiveError::Stage {
                        path: t.display().to_string(),
                        source,
                    }
                })?)),
                None => Box::new(io::sink()),
            };
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            match kind {
                Kind::CdrLines => {
                    let mut lines = 0u64;
                    let mut reader = io::BufReader::new(&mut entry);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        let got = (&mut reader)
                            .take(u64::try_from(MAX_CDR_LINE + 1).unwrap_or(u64::MAX))
                            .read_until(b'\n', &mut line)
                            .map_err(corrupt)?;
                        if got == 0 {
                            break;
                        }
                        if line.len() > MAX_CDR_LINE {
                            return Err(ArchiveError::Invalid(format!(
                                "{path}: a line is longer than {MAX_CDR_LINE} bytes"
                            )));
                        }
                        hasher.update(&line);
                        total += line.len() as u64;
                        sink.write_all(&line)
                            .map_err(|source| stage_err(&target, source))?;
                        let text = trim_newline(&line);
                        if text.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        lines += 1;
                        serde_json::from_slice::<Cdr>(text).map_err(|e| {
                            ArchiveError::Invalid(format!("{path} line {lines}: {e}"))
                        })?;
                    }
                    cdrs_jsonl = Some(lines);
                }
                Kind::Doc => {
                    let mut buf = Vec::new();
                    (&mut entry)
                        .take(MAX_JSON)
                        .read_to_end(&mut buf)
                        .map_err(corrupt)?;
                    hasher.update(&buf);
                    total = buf.len() as u64;
                    if path != CDRS_JSON_V0 {
                        sink.write_all(&buf)
                            .map_err(|source| stage_err(&target, source))?;
                    }
                    docs.insert(path.clone(), buf);
                }
                _ => {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let got = entry.read(&mut buf).map_err(corrupt)?;
                        if got == 0 {
                            break;
                        }
                        hasher.update(&buf[..got]);
                        total += got as u64;
                        sink.write_all(&buf[..got])
                            .map_err(|source| stage_err(&target, source))?;
                    }
                    if kind == Kind::Unknown {
                        unknown.push(path.clone());
                    }
                }
            }
            sink.flush().map_err(|source| stage_err(&target, source))?;
            drop(sink);
            if let Some(t) = &target {
                if path == CDRS_JSON_V0 {
                    let _ = std::fs::remove_file(t);
                } else {
                    sync_file(t).map_err(|source| stage_err(&target, source))?;
                }
            }
            if total != size {
                return Err(ArchiveError::Corrupt(format!(
                    "{path}: {total} of {size} bytes"
                )));
            }
            seen.insert(path, (size, hex::encode(hasher.finalize())));
        }
    }
    // Read to the very end so the age stream authenticates its last chunk (a file cut
    // after the tar trailer must fail too).
    let mut rest = archive.into_inner();
    let extra =
        io::copy(&mut (&mut rest).take(16 * 1024 * 1024), &mut io::sink()).map_err(corrupt)?;
    if extra >= 16 * 1024 * 1024 {
        return Err(ArchiveError::Invalid(
            "data after the end of the archive".into(),
        ));
    }

    let Some(manifest_bytes) = manifest_bytes else {
        return Err(ArchiveError::Invalid(format!(
            "no {MANIFEST}: this is not an Outpost backup"
        )));
    };
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let format = serde_json::from_slice::<FormatOnly>(&manifest_bytes)
        .map_err(|e| ArchiveError::Invalid(format!("{MANIFEST}: {e}")))?
        .format;
    if format > FORMAT {
        return Err(ArchiveError::FutureFormat(format));
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| ArchiveError::Invalid(format!("{MANIFEST}: {e}")))?;
    if let Some(path) = unknown.first() {
        return Err(ArchiveError::Invalid(format!(
            "unexpected member {path:?} for format {format}"
        )));
    }
    if format < SIGNED_FORMAT && signature_bytes.is_some() {
        return Err(ArchiveError::Invalid(format!(
            "unexpected member {MANIFEST_SIG:?} for format {format}"
        )));
    }
    if format < PHONES_FORMAT && seen.contains_key(PHONES) {
        return Err(ArchiveError::Invalid(format!(
            "unexpected member {PHONES:?} for format {format}"
        )));
    }
    let seal = signing::check_seal(&manifest_bytes, signature_bytes.as_deref(), format);
    let mut listed = std::collections::BTreeSet::new();
    for f in &manifest.files {
        if !listed.insert(f.path.as_str()) {
            return Err(ArchiveError::Invalid(format!(
                "{MANIFEST} lists {:?} twice",
                f.path
            )));
        }
        match seen.get(&f.path) {
            None => {
                return Err(ArchiveError::Invalid(format!(
                    "{:?} is in the manifest but not in the archive",
                    f.path
                )))
            }
            Some((size, sha)) if *size != f.size || !sha.eq_ignore_ascii_case(&f.sha256) => {
                return Err(ArchiveError::Checksum(f.path.clone()))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen.keys().find(|p| !listed.contains(p.as_str())) {
        return Err(ArchiveError::Invalid(format!(
            "{extra:?} is not in the manifest"
        )));
    }
    let cdrs_name = if format == 0 {
        CDRS_JSON_V0
    } else {
        CDRS_JSONL
    };
    let phones_name = (format >= PHONES_FORMAT).then_some(PHONES);
    for required in [EXTENSIONS, BANS, LOCKS, ALERTS, META, VOICEMAIL, cdrs_name]
        .into_iter()
        .chain(phones_name)
    {
        if !seen.contains_key(required) {
            return Err(ArchiveError::Invalid(format!("{required} is missing")));
        }
    }
    let other_cdrs = if format == 0 {
        CDRS_JSONL
    } else {
        CDRS_JSON_V0
    };
    if seen.contains_key(other_cdrs) {
        return Err(ArchiveError::Invalid(format!(
            "{other_cdrs} does not belong in format {format}"
        )));
    }

    let parse = |name: &str| -> Result<&[u8], ArchiveError> {
        docs.get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| ArchiveError::Invalid(format!("{name} is missing")))
    };
    let docs_parsed = StoreDocs {
        extensions: parse_json(EXTENSIONS, parse(EXTENSIONS)?)?,
        bans: parse_json(BANS, parse(BANS)?)?,
        locks: parse_json(LOCKS, parse(LOCKS)?)?,
        alerts: parse_json(ALERTS, parse(ALERTS)?)?,
        meta: parse_json(META, parse(META)?)?,
        voicemail: parse_json(VOICEMAIL, parse(VOICEMAIL)?)?,
        phones: match phones_name {
            Some(name) => parse_json(name, parse(name)?)?,
            None => Vec::new(),
        },
    };
    validate_docs(&docs_parsed, &seen)?;
    let cdrs = if format == 0 {
        let list: Vec<Cdr> = parse_json(CDRS_JSON_V0, parse(CDRS_JSON_V0)?)?;
        if let Some(dir) = stage {
            migrate_cdrs_v0(dir, &list)?;
        }
        list.len() as u64
    } else {
        cdrs_jsonl.unwrap_or(0)
    };
    if let Some(dir) = stage {
        // Voicemail files are always staged as a directory, even when there is none, so
        // the restore knows to replace the old ones.
        let vm = dir.join("voicemail");
        std::fs::create_dir_all(&vm).map_err(|source| ArchiveError::Stage {
            path: vm.display().to_string(),
            source,
        })?;
        for d in wav_dirs {
            let _ = sync_dir(&d);
        }
    }
    let contents = Contents {
        format,
        created_ms: manifest.created_ms,
        hostname: manifest.hostname.clone(),
        outpost_version: manifest.outpost_version.clone(),
        extensions: docs_parsed.extensions.len(),
        cdrs,
        bans: docs_parsed.bans.len(),
        locks: docs_parsed.locks.len(),
        alerts: docs_parsed.alerts.len(),
        voicemail: docs_parsed.voicemail.len(),
        config_revisions: seen.keys().filter(|p| p.starts_with("config/rev-")).count(),
        tls: seen.contains_key("tls/cert.pem") && seen.contains_key("tls/key.pem"),
        ssh_host_key: seen.keys().any(|p| p.starts_with("ssh/")),
        files: seen.len() + 1 + usize::from(signature_bytes.is_some()),
        ssh_keys: docs_parsed
            .meta
            .iter()
            .find(|m| m.key == "ssh_keys")
            .and_then(|m| m.value().ok())
            .and_then(|v| serde_json::from_slice::<Vec<serde_json::Value>>(&v).ok())
            .map_or(0, |keys| keys.len()),
        admin_password: docs_parsed.meta.iter().any(|m| m.key == "admin_password"),
        sftp_key: seen.contains_key(SFTP_KEY),
        total_bytes,
        phones: docs_parsed.phones.len(),
        signature: SignatureCheck::default(),
    };
    Ok(Checked {
        contents,
        docs: docs_parsed,
        seal,
    })
}

/// Checks what the parser cannot: addresses, voicemail paths that name members.
fn validate_docs(
    docs: &StoreDocs,
    seen: &BTreeMap<String, (u64, String)>,
) -> Result<(), ArchiveError> {
    for b in &docs.bans {
        b.addr.parse::<std::net::IpAddr>().map_err(|_| {
            ArchiveError::Invalid(format!("{BANS}: {:?} is not an address", b.addr))
        })?;
    }
    for m in &docs.meta {
        m.value()
            .map_err(|e| ArchiveError::Invalid(format!("{META}: {e}")))?;
    }
    for e in &docs.extensions {
        crate::names::validate_ext(&e.ext)
            .map_err(|why| ArchiveError::Invalid(format!("{EXTENSIONS}: {why}")))?;
    }
    if docs.phones.len() > pbx_core::provision::MAX_PHONES {
        return Err(ArchiveError::Invalid(format!(
            "{PHONES}: {} phones, more than the {} a box keeps",
            docs.phones.len(),
            pbx_core::provision::MAX_PHONES
        )));
    }
    let mut macs = std::collections::BTreeSet::new();
    for p in &docs.phones {
        validate_phone(p).map_err(|why| {
            ArchiveError::Invalid(format!(
                "{PHONES}: phone {:?}: {why}",
                crate::names::printable(&p.mac, 32)
            ))
        })?;
        if !macs.insert(p.mac.as_str()) {
            return Err(ArchiveError::Invalid(format!(
                "{PHONES}: phone {:?} is listed twice",
                p.mac
            )));
        }
    }
    for msg in &docs.voicemail {
        let p = msg.path.to_str().unwrap_or("");
        let expected_prefix = format!("voicemail/{}/", msg.mailbox);
        if crate::names::validate_ext(&msg.mailbox).is_err()
            || !p.starts_with(&expected_prefix)
            || !seen.contains_key(p)
        {
            return Err(ArchiveError::Invalid(format!(
                "{VOICEMAIL}: message {} points to {p:?}, which is not in the archive",
                msg.id
            )));
        }
    }
    Ok(())
}

/// Longest password of a phone accepted from a backup (`phone add` makes 24 characters,
/// `ext passwd` allows 128).
const MAX_PHONE_PASSWORD: usize = 128;

/// A restored phone must be one `phone add` could have stored: its MAC as the store keys
/// it, a model of a known vendor, valid extensions within the vendor's BLF keys, and
/// passwords a phone can be sent (the files escape every value; this refuses only what no
/// command could have stored, so an older backup is not refused by a newer password rule).
fn validate_phone(p: &PhoneRecord) -> Result<(), String> {
    use pbx_core::provision::{Mac, Vendor};
    let mac: Mac = p.mac.parse().map_err(|e| format!("{e}"))?;
    if mac.to_string() != p.mac {
        return Err("the MAC is not written as 12 lowercase hex digits".to_owned());
    }
    let vendor = Vendor::of_model(&p.model)?;
    crate::names::validate_ext(&p.ext)?;
    if p.keys.len() > vendor.max_blf_keys() {
        return Err(format!(
            "{} BLF keys, more than a {vendor} phone is given ({})",
            p.keys.len(),
            vendor.max_blf_keys()
        ));
    }
    for k in &p.keys {
        crate::names::validate_ext(k).map_err(|e| format!("BLF key: {e}"))?;
    }
    for (what, password) in [
        ("SIP password", &p.sip_password),
        ("provisioning password", &p.prov_password),
    ] {
        let len = password.chars().count();
        if len == 0 || len > MAX_PHONE_PASSWORD || password.chars().any(char::is_control) {
            return Err(format!(
                "the {what} is not 1 to {MAX_PHONE_PASSWORD} characters without control characters"
            ));
        }
    }
    Ok(())
}

/// Format 0 kept the call records in one JSON array; staging rewrites them as format 1's
/// `store/cdrs.jsonl`.
fn migrate_cdrs_v0(stage: &Path, cdrs: &[Cdr]) -> Result<(), ArchiveError> {
    let path = stage.join(CDRS_JSONL);
    let err = |source| ArchiveError::Stage {
        path: path.display().to_string(),
        source,
    };
    let mut out = io::BufWriter::new(create_private(&path).map_err(err)?);
    for cdr in cdrs {
        serde_json::to_writer(&mut out, cdr).map_err(|e| err(io::Error::other(e)))?;
        out.write_all(b"\n").map_err(err)?;
    }
    out.flush().map_err(err)?;
    drop(out);
    sync_file(&path).map_err(err)
}

fn parse_json<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::Invalid(format!("{name}: {e}")))
}

fn stage_err(target: &Option<PathBuf>, source: io::Error) -> ArchiveError {
    ArchiveError::Stage {
        path: target
            .as_ref()
            .map(|t| t.display().to_string())
            .unwrap_or_default(),
        source,
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a member is, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    /// `manifest.sig`, kept in memory.
    Signature,
    /// A store JSON document, parsed in memory.
    Doc,
    /// `store/cdrs.jsonl`, parsed line by line.
    CdrLines,
    /// A voicemail WAV.
    Audio,
    /// Configuration revisions, TLS and SSH files.
    Small,
    /// Not part of any format this version knows.
    Unknown,
}

fn member_kind(path: &str) -> Kind {
    match path {
        MANIFEST => Kind::Manifest,
        MANIFEST_SIG => Kind::Signature,
        CDRS_JSONL => Kind::CdrLines,
        EXTENSIONS | BANS | LOCKS | ALERTS | META | VOICEMAIL | PHONES | CDRS_JSON_V0 => Kind::Doc,
        "config/revisions.json" | "tls/cert.pem" | "tls/key.pem" => Kind::Small,
        "ssh/dropbear_ed25519_host_key" | SFTP_KEY | SFTP_KEY_PUB => Kind::Small,
        p if is_revision_file(p) => Kind::Small,
        p if is_voicemail_file(p) => Kind::Audio,
        _ => Kind::Unknown,
    }
}

/// `config/rev-NNNNNN.toml`.
fn is_revision_file(p: &str) -> bool {
    p.strip_prefix("config/rev-")
        .and_then(|r| r.strip_suffix(".toml"))
        .is_some_and(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// `voicemail/<mailbox>/<file>`.
fn is_voicemail_file(p: &str) -> bool {
    let mut parts = p.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("voicemail"), Some(mb), Some(file), None)
            if crate::names::validate_ext(mb).is_ok() && is_safe_file_name(file)
    )
}

/// A file name of letters, digits, `.`, `_` and `-` that does not start with a dot.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A member path: relative, `/`-separated plain components, no `.`/`..`, bounded.
fn check_member_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.starts_with('/')
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.contains('\\')
                && !c.chars().any(char::is_control)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "member {:?} has an unsafe path",
            path.escape_default().to_string()
        ))
    }
}

/// Creates (truncating) a file only the owner can read.
pub fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// fsyncs a file.
pub fn sync_file(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// fsyncs a directory (so a rename or a new file in it is durable).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    /// A signing key for test archives (kept in a leaked temp dir for the test's life).
    fn key() -> BoxKey {
        let dir = tempfile::tempdir().unwrap();
        let key = signing::box_key(dir.path()).unwrap();
        drop(dir);
        key
    }

    fn tiny(format: u32, cdrs_name: &str, cdrs: &[u8]) -> Vec<u8> {
        tiny_with(format, cdrs_name, cdrs, b"[]")
    }

    /// [`tiny`] with `phones` as `store/phones.json` (left out before format 4).
    fn tiny_with(format: u32, cdrs_name: &str, cdrs: &[u8], phones: &[u8]) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new(), 1_000);
        for name in [EXTENSIONS, BANS, LOCKS, ALERTS, META, VOICEMAIL] {
            w.add(name, b"[]", false).unwrap();
        }
        if format >= PHONES_FORMAT {
            w.add(PHONES, phones, true).unwrap();
        }
        w.add(cdrs_name, cdrs, false).unwrap();
        w.add("config/rev-000001.toml", b"[sip]\n", false).unwrap();
        let (bytes, mut manifest) = w.finish(1_000, "box", &key()).unwrap();
        if format == FORMAT {
            return bytes;
        }
        // Rewrite the manifest's format by rebuilding (without a signature: formats before
        // 3 have none, and a rewritten manifest no longer matches it).
        manifest.format = format;
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut out = tar::Builder::new(Vec::new());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if path == MANIFEST_SIG {
                continue;
            }
            if path == MANIFEST {
                data = serde_json::to_vec(&manifest).unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            out.append_data(&mut h, &path, data.as_slice()).unwrap();
        }
        out.into_inner().unwrap()
    }

    #[test]
    fn written_archive_checks_and_stages() {
        let cdr = br#"{"call_id":"c1","caller":"100","callee":"101","start":5,"answer":null,"end":9,"disposition":"busy","status":486}"#;
        let mut jsonl = cdr.to_vec();
        jsonl.push(b'\n');
        let bytes = tiny(FORMAT, CDRS_JSONL, &jsonl);
        let Checked {
            contents,
            docs,
            seal,
        } = check(bytes.as_slice(), None, MAX_TOTAL).unwrap();
        assert!(matches!(seal, Seal::Signed(_)), "{seal:?}");
        assert_eq!(contents.total_bytes, bytes_of_members(&bytes));
        assert_eq!(contents.format, FORMAT);
        assert_eq!(contents.cdrs, 1);
        assert_eq!(contents.config_revisions, 1);
        assert_eq!(contents.hostname, "box");
        assert!(docs.extensions.is_empty());

        let dir = tempfile::tempdir().unwrap();
        check(bytes.as_slice(), Some(dir.path()), MAX_TOTAL).unwrap();
        assert_eq!(std::fs::read(dir.path().join(CDRS_JSONL)).unwrap(), jsonl);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config/rev-000001.toml")).unwrap(),
            "[sip]\n"
        );
        assert!(dir.path().join("voicemail").is_dir());
        assert!(!dir.path().join(MANIFEST).exists());
        assert!(!dir.path().join(MANIFEST_SIG).exists());
    }

    /// The members of the tar `archive`, in order: path and content.
    fn members(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut ar = tar::Archive::new(archive);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, data)
            })
            .collect()
    }

    /// The tar `archive` with one more member at its end (the manifest unchanged).
    fn with_member(archive: &[u8], path: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let added = (path.to_owned(), data.to_vec());
        for (path, data) in members(archive).into_iter().chain([added]) {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, &path, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The sum of the member sizes of a tar.
    fn bytes_of_members(tar_bytes: &[u8]) -> u64 {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap().header().size().unwrap())
            .sum()
    }

    #[test]
    fn the_total_cap_refuses_before_staging_anything_past_it() {
        let bytes = tiny(FORMAT, CDRS_JSONL, b"");
        let total = bytes_of_members(&bytes);
        check(bytes.as_slice(), None, total).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = check(bytes.as_slice(), Some(dir.path()), total - 1).unwrap_err();
        assert!(
            matches!(err, ArchiveError::TooLarge { max, .. } if max == total - 1),
            "{err}"
        );
        assert!(err.to_string().contains("too large to restore"), "{err}");
        // A member larger than the cap is refused at its header, before its content.
        let mut w = ArchiveWriter::new(Vec::new(), 1_000);
        w.add("voicemail/100/a.wav", &[7u8; 5000], false).unwrap();
        let (big, _) = w.finish(1_000, "box", &key()).unwrap();
        let err = check(&big[..1024], None, 4096).unwrap_err();
        assert!(
            matches!(err, ArchiveError::TooLarge { ref at, .. } if at == "voicemail/100/a.wav"),
            "{err}"
        );
    }

    #[test]
    fn a_signature_is_checked_against_the_manifest_and_only_from_format_3() {
        // The manifest changed after signing (a member swapped and re-listed): unsigned.
        let bytes = tiny(FORMAT, CDRS_JSONL, b"");
        let mut out = tar::Builder::new(Vec::new());
        let mut sig = Vec::new();
        let mut stripped = tar::Builder::new(Vec::new());
        for (path, mut data) in members(&bytes) {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            if path == MANIFEST_SIG {
                sig = data.clone();
            } else {
                h.set_size(data.len() as u64);
                stripped
                    .append_data(&mut h, &path, data.as_slice())
                    .unwrap();
            }
            if path == EXTENSIONS {
                data = b"[ ]".to_vec();
            }
            if path == MANIFEST {
                let mut m: Manifest = serde_json::from_slice(&data).unwrap();
                let f = m.files.iter_mut().find(|f| f.path == EXTENSIONS).unwrap();
                f.size = 3;
                f.sha256 = hex::encode(Sha256::digest(b"[ ]"));
                data = serde_json::to_vec_pretty(&m).unwrap();
            }
            h.set_size(data.len() as u64);
            out.append_data(&mut h, &path, data.as_slice()).unwrap();
        }
        let swapped = out.into_inner().unwrap();
        let checked = check(swapped.as_slice(), None, MAX_TOTAL).unwrap();
        assert!(
            matches!(&checked.seal, Seal::Unsigned(why) if why.contains("altered")),
            "{:?}",
            checked.seal
        );
        let stripped = stripped.into_inner().unwrap();
        let checked = check(stripped.as_slice(), None, MAX_TOTAL).unwrap();
        assert!(
            matches!(&checked.seal, Seal::Unsigned(why) if why.contains("manifest.sig was removed")),
            "{:?}",
            checked.seal
        );
        // A signature in a format that has none is not a member of it.
        let old = tiny(2, CDRS_JSONL, b"");
        let signed_old = with_member(&old, MANIFEST_SIG, &sig);
        let err = check(signed_old.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert!(err.to_string().contains("manifest.sig"), "{err}");
        let checked = check(old.as_slice(), None, MAX_TOTAL).unwrap();
        assert!(matches!(&checked.seal, Seal::Unsigned(why) if why.contains("format 2")));
    }

    #[test]
    fn format_zero_is_migrated_and_future_formats_refused() {
        let cdr = br#"[{"call_id":"c1","caller":"100","callee":"101","start":5,"answer":6,"end":9,"disposition":"answered","status":200}]"#;
        let bytes = tiny(0, CDRS_JSON_V0, cdr);
        let dir = tempfile::tempdir().unwrap();
        let contents = check(bytes.as_slice(), Some(dir.path()), MAX_TOTAL)
            .unwrap()
            .contents;
        assert_eq!((contents.format, contents.cdrs), (0, 1));
        let migrated = std::fs::read_to_string(dir.path().join(CDRS_JSONL)).unwrap();
        let back: Cdr = serde_json::from_str(migrated.trim()).unwrap();
        assert_eq!(back.call_id, "c1");
        assert!(!dir.path().join(CDRS_JSON_V0).exists());

        let future = tiny(7, CDRS_JSONL, b"");
        let err = check(future.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "made by a newer Outpost (format 7); update first"
        );
        // Format 1 with format 0's call records is refused.
        let mixed = tiny(FORMAT, CDRS_JSON_V0, b"[]");
        assert!(check(mixed.as_slice(), None, MAX_TOTAL).is_err());
    }

    #[test]
    fn altered_truncated_and_hostile_archives_are_refused() {
        let bytes = tiny(FORMAT, CDRS_JSONL, b"");
        // The first member's content starts after its 512-byte header.
        let mut altered = bytes.clone();
        altered[512] = b'{';
        let err = check(altered.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Checksum(ref p) if p == EXTENSIONS),
            "{err}"
        );

        let cut = &bytes[..bytes.len() / 2];
        assert!(check(cut, None, MAX_TOTAL).is_err());

        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "config/../../x",
            "voicemail/1/../../x",
        ] {
            assert!(
                check_member_path(bad).is_err() || member_kind(bad) == Kind::Unknown,
                "{bad}"
            );
        }
        let mut w = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        w.append_data(&mut h, "voicemail/100/x.wav", b"x".as_slice())
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        w.append_link(&mut link, "store/extensions.json", "/etc/shadow")
            .unwrap();
        let evil = w.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = check(evil.as_slice(), Some(dir.path()), MAX_TOTAL).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let empty = tar::Builder::new(Vec::new()).into_inner().unwrap();
        let err = check(empty.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert!(err.to_string().contains("no manifest.json"), "{err}");
    }

    /// One phone as `store/phones.json` holds it, with `change` applied.
    fn phones_doc(change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut phone = serde_json::json!({
            "mac": "805ec0123456", "model": "T46U", "ext": "101", "keys": ["102"],
            "sip_password": "Gx7Rk2pQ9vLm3TzW8cNb4YhD", "prov_password": "p4Ss9w0rDp4Ss9w0rDp4Ss9w",
            "created_ms": 5, "fetched_ms": null
        });
        change(&mut phone);
        serde_json::to_vec(&[phone]).unwrap()
    }

    #[test]
    fn phones_are_a_member_of_format_4_checked_and_staged_and_absent_before() {
        let bytes = tiny_with(FORMAT, CDRS_JSONL, b"", &phones_doc(|_| {}));
        let dir = tempfile::tempdir().unwrap();
        let checked = check(bytes.as_slice(), Some(dir.path()), MAX_TOTAL).unwrap();
        assert_eq!(checked.contents.phones, 1);
        assert!(checked.contents.carries_phones());
        assert_eq!(
            checked.docs.phones[0].sip_password,
            "Gx7Rk2pQ9vLm3TzW8cNb4YhD"
        );
        let staged = dir.path().join(PHONES);
        assert_eq!(std::fs::read(&staged).unwrap(), phones_doc(|_| {}));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&staged).unwrap().permissions().mode() & 0o777,
            0o600,
            "the staged passwords are private"
        );
        // The tar header marks the member secret too.
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mode = ar
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_str() == Some(PHONES))
            .map(|e| e.header().mode().unwrap());
        assert_eq!(mode, Some(0o600));

        // Format 3 has none, and restores without it; format 4 without it is incomplete.
        let old = tiny(3, CDRS_JSONL, b"");
        let checked = check(old.as_slice(), None, MAX_TOTAL).unwrap();
        assert_eq!(
            (checked.contents.phones, checked.contents.carries_phones()),
            (0, false)
        );
        assert!(checked.docs.phones.is_empty());
        let mut w = ArchiveWriter::new(Vec::new(), 1_000);
        for name in [EXTENSIONS, BANS, LOCKS, ALERTS, META, VOICEMAIL] {
            w.add(name, b"[]", false).unwrap();
        }
        w.add(CDRS_JSONL, b"", false).unwrap();
        let (missing, _) = w.finish(1_000, "box", &key()).unwrap();
        let err = check(missing.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a valid Outpost backup: store/phones.json is missing"
        );
    }

    #[test]
    fn hostile_phones_are_refused_with_the_reason() {
        // (what the error names, the field, its hostile value)
        let cases = [
            ("MAC", "mac", serde_json::json!("80:5e:c0:12:34:56")),
            ("group", "mac", serde_json::json!("010000000001")),
            ("unknown phone model", "model", serde_json::json!("CP8841")),
            ("extension", "ext", serde_json::json!("../101")),
            ("BLF key", "keys", serde_json::json!(["1 2"])),
            (
                "SIP password",
                "sip_password",
                serde_json::json!("x\nkey = evil"),
            ),
            (
                "provisioning password",
                "prov_password",
                serde_json::json!(""),
            ),
        ];
        for (why, field, value) in cases {
            let bytes = tiny_with(FORMAT, CDRS_JSONL, b"", &phones_doc(|p| p[field] = value));
            let err = check(bytes.as_slice(), None, MAX_TOTAL).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with("not a valid Outpost backup: store/phones.json: phone ")
                    && text.contains(why),
                "{why}: {text}"
            );
        }
        let mut one: Vec<serde_json::Value> = serde_json::from_slice(&phones_doc(|_| {})).unwrap();
        one.push(one[0].clone());
        let twice = tiny_with(FORMAT, CDRS_JSONL, b"", &serde_json::to_vec(&one).unwrap());
        let err = check(twice.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let many: Vec<serde_json::Value> = (0..=pbx_core::provision::MAX_PHONES)
            .map(|n| {
                let mut p = one[0].clone();
                p["mac"] = format!("805ec0{n:06x}").into();
                p
            })
            .collect();
        let many = tiny_with(FORMAT, CDRS_JSONL, b"", &serde_json::to_vec(&many).unwrap());
        let err = check(many.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert!(err.to_string().contains("more than the 1000"), "{err}");
        // A phone in a format that has none is not a member of it.
        let with_phones = with_member(&tiny(3, CDRS_JSONL, b""), PHONES, b"[]");
        let err = check(with_phones.as_slice(), None, MAX_TOTAL).unwrap_err();
        assert!(
            err.to_string()
                .contains("unexpected member \"store/phones.json\" for format 3"),
            "{err}"
        );
    }

    #[test]
    fn meta_rows_keep_binary_and_text() {
        let t = MetaRow::new("fwd:100", b"{\"always\":\"101\"}");
        assert_eq!(t.text.as_deref(), Some("{\"always\":\"101\"}"));
        assert_eq!(t.value().unwrap(), b"{\"always\":\"101\"}");
        let b = MetaRow::new("nonce_key", &[0xff, 0, 7]);
        assert!(b.text.is_none());
        assert_eq!(b.value().unwrap(), vec![0xff, 0, 7]);
        let both = MetaRow {
            key: "x".into(),
            text: Some("a".into()),
            base64: Some("YQ==".into()),
        };
        assert!(both.value().is_err());
    }
}
