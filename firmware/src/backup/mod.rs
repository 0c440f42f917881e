//! Backups: one encrypted file holds everything a replacement box needs (configuration
//! revisions, extensions, call records, firewall state, voicemail audio and index, meta
//! values such as PIN hashes, forwarding and SSH keys, the TLS identity and the SSH host
//! key). The format is documented in `docs/backup-format.md` so the office can read its
//! data without us: `age -d FILE | tar x`.
//!
//! - [`create`] writes `<dir>/outpost-<host>-<stamp>.backup.partial`, fsyncs it and renames
//!   it into place: a crash leaves only a `.partial` file, never listed as good and deleted
//!   by the next run.
//! - [`verify`] decrypts and checks every checksum, the format and the layout; it writes
//!   nothing.
//! - [`stage_restore`] does the same into `<data_dir>/restore/` and marks it ready;
//!   [`apply_staged`] imports it at the next start of the daemon, before anything else
//!   opens the data (a crash during the import just repeats it).
//! - [`Backups`] is the daemon's side: the admin commands (run off the SIP loop), the
//!   schedule with retention, and the uploads to the off-site [`target`]s.

pub mod archive;
pub mod crypto;
pub mod schedule;
pub mod target;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use firewall::detect::{Alert, Rule};
use pbx_core::cdr::Cdr;
use pbx_core::Millis;

use crate::admin::proto::{BackupCommand, BackupKey, Reply};
use crate::store::{FirewallChange, Store, StoreError, StoreImport, VoicemailRecord};
use archive::{ArchiveWriter, Contents};
use crypto::{Decryption, Encryption, KeyError};
use schedule::Schedule;

/// Default backup directory, under the data directory.
pub const DEFAULT_DIR: &str = "backups";
/// Backup file names end with this.
pub const SUFFIX: &str = ".backup";
/// A backup being written ends with this until it is complete.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The staging directory of a restore, under the data directory.
pub const STAGING_DIR: &str = "restore";
/// Written last into the staging directory: the restore is complete and checked.
const READY_MARKER: &str = "READY";
/// Largest voicemail file put into a backup (longer messages cannot be recorded anyway).
const MAX_BACKUP_AUDIO: u64 = 256 * 1024 * 1024;

/// `[backup]`: where backups go, how they are encrypted, when they run, what is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Directory of the backup files [default: `<data_dir>/backups`].
    pub dir: Option<PathBuf>,
    /// File holding the passphrase (first line; mode 0600).
    pub passphrase_file: Option<PathBuf>,
    /// An age X25519 public key (`age1...`); restoring then needs its identity file.
    pub recipient: Option<String>,
    /// `off`, `hourly`, `daily HH:MM` or `weekly DAY HH:MM` (UTC).
    pub schedule: String,
    /// Keep the newest backup of each of this many days.
    pub keep_daily: u32,
    /// Keep the newest backup of each of this many ISO weeks.
    pub keep_weekly: u32,
    /// Off-site copies of every new backup (`[[backup.targets]]`).
    pub targets: Vec<target::TargetConfig>,
    /// Upload attempts per target before the failure is raised as an alert.
    pub upload_tries: u32,
    /// Wait after the first failed attempt (multiplied by 5 for each further one).
    pub upload_retry_secs: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            passphrase_file: None,
            recipient: None,
            schedule: "off".to_string(),
            keep_daily: 7,
            keep_weekly: 4,
            targets: Vec::new(),
            upload_tries: target::Retry::DEFAULT.tries,
            upload_retry_secs: target::Retry::DEFAULT.first_delay.as_secs(),
        }
    }
}

impl BackupConfig {
    /// Checks the section; the error is (dotted key, reason).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((format!("backup.{key}"), reason));
        if !(1..=10).contains(&self.upload_tries) {
            return bad("upload_tries", "must be between 1 and 10".to_string());
        }
        if !(1..=3600).contains(&self.upload_retry_secs) {
            return bad(
                "upload_retry_secs",
                "must be between 1 and 3600".to_string(),
            );
        }
        let schedule = match Schedule::parse(&self.schedule) {
            Ok(s) => s,
            Err(e) => return bad("schedule", e),
        };
        if self.passphrase_file.is_some() && self.recipient.is_some() {
            return bad(
                "recipient",
                "give either passphrase_file or recipient, not both".into(),
            );
        }
        if let Some(p) = &self.passphrase_file {
            if !p.is_absolute() {
                return bad("passphrase_file", "must be an absolute path".into());
            }
        }
        if let Some(r) = &self.recipient {
            if let Err(e) = Encryption::recipient(r) {
                return bad("recipient", e.to_string());
            }
        }
        if let Some(d) = &self.dir {
            if !d.is_absolute() {
                return bad("dir", "must be an absolute path".into());
            }
        }
        if schedule != Schedule::Off {
            if self.passphrase_file.is_none() && self.recipient.is_none() {
                return bad(
                    "schedule",
                    "backups are always encrypted: set backup.passphrase_file or backup.recipient"
                        .into(),
                );
            }
            if self.keep_daily == 0 && self.keep_weekly == 0 {
                return bad(
                    "keep_daily",
                    "keep_daily and keep_weekly cannot both be 0".into(),
                );
            }
        }
        if self.keep_daily > 3660 {
            return bad("keep_daily", "must be at most 3660".into());
        }
        if self.keep_weekly > 520 {
            return bad("keep_weekly", "must be at most 520".into());
        }
        if self.targets.len() > 16 {
            return bad("targets", "at most 16 targets".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if let Err((key, reason)) = target::check(t) {
                return bad(&format!("targets[{i}].{key}"), reason);
            }
            if !names.insert(t.name.as_str()) {
                return bad(
                    &format!("targets[{i}].name"),
                    format!("{:?} is used twice", t.name),
                );
            }
        }
        Ok(())
    }

    /// The backup directory.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| data_dir.join(DEFAULT_DIR))
    }

    /// The schedule (`off` when it does not parse; [`BackupConfig::check`] refuses that).
    pub fn schedule(&self) -> Schedule {
        Schedule::parse(&self.schedule).unwrap_or(Schedule::Off)
    }

    /// How new backups are encrypted (reads the passphrase file).
    pub fn encryption(&self) -> Result<Encryption, BackupError> {
        match (&self.passphrase_file, &self.recipient) {
            (Some(p), _) => Ok(Encryption::Passphrase(crypto::read_passphrase_file(p)?)),
            (None, Some(r)) => Ok(Encryption::recipient(r)?),
            (None, None) => Err(BackupError::NoKey),
        }
    }

    /// The key the daemon can decrypt with by itself: the configured passphrase.
    pub fn own_decryption(&self) -> Result<Decryption, BackupError> {
        match (&self.passphrase_file, &self.recipient) {
            (Some(p), _) => Ok(Decryption::Passphrase(crypto::read_passphrase_file(p)?)),
            (None, Some(_)) => Err(BackupError::NeedIdentity),
            (None, None) => Err(BackupError::NeedKey),
        }
    }
}

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A key could not be read or parsed.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// Nothing to encrypt to.
    #[error("no encryption configured: set [backup] passphrase_file or recipient (backups are always encrypted)")]
    NoKey,
    /// A recipient-encrypted backup needs the identity to be read.
    #[error(
        "backups here are encrypted to a recipient key: give its identity file (--identity FILE)"
    )]
    NeedIdentity,
    /// No key given and none configured.
    #[error(
        "no key: give --passphrase or --identity FILE (no [backup] passphrase_file is configured)"
    )]
    NeedKey,
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The file is not an age file, or its header is damaged.
    #[error("not an encrypted Outpost backup, or its header is damaged ({0})")]
    NotAge(String),
    /// The key does not open the file.
    #[error("cannot decrypt: wrong passphrase or key (or the file's header was altered)")]
    WrongKey,
    /// The content is refused.
    #[error("{0}")]
    Archive(#[from] archive::ArchiveError),
    /// Another backup or restore is running.
    #[error("a backup or restore is already running; try again when it has finished")]
    Busy,
    /// A backup of that name exists (two in the same second).
    #[error("{0} exists already (a backup was made less than a second ago)")]
    Exists(String),
    /// No such backup file.
    #[error("no backup {0}")]
    NotFound(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.display().to_string();
    move |source| BackupError::Io { what, path, source }
}

/// One backup file in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was made (ms since the epoch, from the name).
    pub created_ms: Millis,
    /// `passphrase` or `X25519 recipient` (or the `age1...` key when just made).
    pub encrypted_to: String,
}

/// The state of one off-site target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The target's name.
    pub name: String,
    /// When the last upload succeeded (ms since the epoch).
    pub last_ok_ms: Option<Millis>,
    /// The file it uploaded.
    pub last_ok_file: Option<String>,
    /// Why the last upload failed, while that is the latest outcome.
    pub last_upload_error: Option<String>,
    /// An upload is in progress.
    pub uploading: bool,
}

/// `outpostctl backup list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupList {
    /// The backup directory.
    pub dir: String,
    /// Complete backups, newest first.
    pub backups: Vec<BackupEntry>,
    /// Seconds since the newest backup was made.
    pub newest_age_secs: Option<u64>,
    /// `.partial` files of interrupted runs (deleted by the next backup).
    pub incomplete: usize,
    /// Files named like backups whose header is not an age header.
    pub unreadable: usize,
    /// The schedule in force.
    pub schedule: String,
    /// When the next scheduled backup runs (ms since the epoch).
    pub next_run_ms: Option<Millis>,
    /// Off-site targets.
    pub targets: Vec<TargetStatus>,
}

/// What a backup needs from the daemon.
#[derive(Debug, Clone)]
pub struct Context {
    /// The store (read through one snapshot).
    pub store: Arc<Store>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// `[backup]`.
    pub cfg: BackupConfig,
    /// The SSH host key file.
    pub ssh_host_key: PathBuf,
    /// The box's host name, as used in file names.
    pub hostname: String,
}

impl Context {
    /// The context of a configuration.
    pub fn new(cfg: &crate::config::Config, store: Arc<Store>) -> Context {
        Context {
            store,
            data_dir: cfg.store.data_dir.clone(),
            cfg: cfg.backup.clone(),
            ssh_host_key: cfg.ssh.host_key_path(&cfg.store.data_dir),
            hostname: crate::system::hostname(&cfg.system),
        }
    }

    /// The backup directory.
    pub fn dir(&self) -> PathBuf {
        self.cfg.dir(&self.data_dir)
    }
}

/// This box's host name, reduced to letters, digits and `-` for file names.
pub fn hostname() -> String {
    let raw = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.trim_matches('-').is_empty() {
        "outpost".to_string()
    } else {
        clean
    }
}

/// The file name of a backup made at `now`.
pub fn file_name(hostname: &str, now: Millis) -> String {
    format!("outpost-{hostname}-{}{SUFFIX}", schedule::file_stamp(now))
}

/// When a backup named `name` was made, or `None` if it is not a backup name.
pub fn parse_name(name: &str) -> Option<Millis> {
    let stem = name.strip_prefix("outpost-")?.strip_suffix(SUFFIX)?;
    let (host, stamp) = stem.split_at(stem.len().checked_sub(16)?);
    let host = host.strip_suffix('-')?;
    if host.is_empty() || !archive::is_safe_file_name(name) {
        return None;
    }
    schedule::parse_file_stamp(stamp)
}

/// Makes a backup now: returns the new file's entry and path.
pub fn create(ctx: &Context, now: Millis) -> Result<(BackupEntry, PathBuf), BackupError> {
    let encryption = ctx.cfg.encryption()?;
    let dir = ctx.dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("create", &dir))?;
    remove_partials(&dir);
    let name = file_name(&ctx.hostname, now);
    let path = dir.join(&name);
    if path.exists() {
        return Err(BackupError::Exists(name));
    }
    let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
    let result = write_backup(ctx, &encryption, &partial, now);
    if let Err(err) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    std::fs::rename(&partial, &path).map_err(io_err("rename", &partial))?;
    archive::sync_dir(&dir).map_err(io_err("sync", &dir))?;
    let size = std::fs::metadata(&path)
        .map_err(io_err("read", &path))?
        .len();
    tracing::info!(file = %path.display(), size, "backup written");
    Ok((
        BackupEntry {
            name,
            size,
            created_ms: now,
            encrypted_to: encryption.describe(),
        },
        path,
    ))
}

/// Deletes `*.partial` files left by interrupted runs.
fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("outpost-") && name.ends_with(PARTIAL_SUFFIX) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(file = %name, "removed an interrupted backup"),
                Err(err) => {
                    tracing::warn!(file = %name, %err, "cannot remove an interrupted backup")
                }
            }
        }
    }
}

fn write_backup(
    ctx: &Context,
    encryption: &Encryption,
    partial: &Path,
    now: Millis,
) -> Result<(), BackupError> {
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(partial)
            .map_err(io_err("create", partial))?
    };
    let werr = io_err("write", partial);
    let sealed = encryption
        .wrap(std::io::BufWriter::with_capacity(256 * 1024, file))
        .map_err(io_err("write", partial))?;
    let mut ar = ArchiveWriter::new(sealed, now);
    let snap = ctx.store.snapshot()?;
    let wr = |e: std::io::Error| BackupError::Io {
        what: "write",
        path: partial.display().to_string(),
        source: e,
    };

    ar.add(archive::EXTENSIONS, &json(&snap.extensions()?)?, true)
        .map_err(wr)?;

    // Call records: measured in a first pass, streamed in a second, never all in memory.
    let mut size = 0u64;
    snap.for_each_cdr(|cdr| -> Result<(), BackupError> {
        size += cdr_line(&cdr).len() as u64;
        Ok(())
    })?;
    ar.add_streamed(archive::CDRS_JSONL, size, |out| {
        snap.for_each_cdr(|cdr| -> Result<(), BackupError> {
            out.write_all(&cdr_line(&cdr))
                .map_err(io_err("write", partial))
        })
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(wr)?;

    let bans: Vec<archive::BanRow> = snap
        .bans()?
        .into_iter()
        .map(|(addr, ban)| archive::BanRow { addr, ban })
        .collect();
    ar.add(archive::BANS, &json(&bans)?, false).map_err(wr)?;
    let locks: Vec<archive::LockRow> = snap
        .locks()?
        .into_iter()
        .map(|(user, lock)| archive::LockRow { user, lock })
        .collect();
    ar.add(archive::LOCKS, &json(&locks)?, false).map_err(wr)?;
    ar.add(archive::ALERTS, &json(&snap.alerts()?)?, false)
        .map_err(wr)?;
    let meta: Vec<archive::MetaRow> = snap
        .meta()?
        .iter()
        .map(|(k, v)| archive::MetaRow::new(k, v))
        .collect();
    ar.add(archive::META, &json(&meta)?, true).map_err(wr)?;

    // Voicemail: the index with archive-relative paths, then each message's audio.
    let mut index = Vec::new();
    let mut audio = Vec::new();
    for mut msg in snap.voicemail()? {
        let file_name = msg
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !archive::is_safe_file_name(&file_name)
            || crate::admin::proto::validate_ext(&msg.mailbox).is_err()
        {
            tracing::warn!(id = msg.id, path = %msg.path.display(), "voicemail message with an unusual file name left out of the backup");
            continue;
        }
        let rel = format!("voicemail/{}/{file_name}", msg.mailbox);
        match read_bounded(&msg.path, MAX_BACKUP_AUDIO) {
            Ok(bytes) => {
                audio.push((rel.clone(), bytes));
                msg.path = PathBuf::from(rel);
                index.push(msg);
            }
            Err(err) => {
                tracing::warn!(id = msg.id, path = %msg.path.display(), %err, "voicemail audio unreadable: message left out of the backup");
            }
        }
        // Keep at most one message's audio in memory at a time.
        for (rel, bytes) in audio.drain(..) {
            ar.add(&rel, &bytes, false).map_err(wr)?;
        }
    }
    ar.add(archive::VOICEMAIL, &json(&index)?, false)
        .map_err(wr)?;
    drop(snap);

    // Configuration revisions, exactly as stored.
    let config_dir = ctx.data_dir.join("config");
    let mut config_files: Vec<String> = std::fs::read_dir(&config_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n == "revisions.json"
                        || (n.starts_with("rev-")
                            && n.ends_with(".toml")
                            && n[4..n.len() - 5].bytes().all(|c| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    config_files.sort();
    for n in config_files {
        let bytes = read_bounded(&config_dir.join(&n), 4 * 1024 * 1024)
            .map_err(io_err("read", &config_dir))?;
        ar.add(&format!("config/{n}"), &bytes, false).map_err(wr)?;
    }
    // The TLS identity the daemon generated, and the SSH host key.
    let tls = ctx.data_dir.join("tls");
    if let (Ok(cert), Ok(key)) = (
        read_bounded(&tls.join("cert.pem"), 1024 * 1024),
        read_bounded(&tls.join("key.pem"), 1024 * 1024),
    ) {
        ar.add("tls/cert.pem", &cert, false).map_err(wr)?;
        ar.add("tls/key.pem", &key, true).map_err(wr)?;
    }
    if let Ok(key) = read_bounded(&ctx.ssh_host_key, 1024 * 1024) {
        ar.add("ssh/dropbear_ed25519_host_key", &key, true)
            .map_err(wr)?;
    }

    let (sealed, _manifest) = ar.finish(now, &ctx.hostname).map_err(wr)?;
    let buffered = sealed.finish().map_err(io_err("write", partial))?;
    let file = buffered.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(io_err("sync", partial))?;
    Ok(())
}

/// A store document as pretty JSON, so the customer can read it.
fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, BackupError> {
    let mut v = serde_json::to_vec_pretty(value).map_err(|e| BackupError::Io {
        what: "encode",
        path: "a store document".to_string(),
        source: std::io::Error::other(e),
    })?;
    v.push(b'\n');
    Ok(v)
}

fn cdr_line(cdr: &Cdr) -> Vec<u8> {
    let mut line = serde_json::to_vec(cdr).unwrap_or_default();
    line.push(b'\n');
    line
}

fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than {max}"
        )));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Opens `path` and decrypts it with `key`, mapping age's errors to ours.
fn open_decrypted(
    path: &Path,
    key: &Decryption,
) -> Result<age::stream::StreamReader<std::io::BufReader<std::fs::File>>, BackupError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackupError::NotFound(path.display().to_string())
        } else {
            BackupError::Io {
                what: "open",
                path: path.display().to_string(),
                source: e,
            }
        }
    })?;
    key.open(std::io::BufReader::with_capacity(256 * 1024, file))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed
            | age::DecryptError::KeyDecryptionFailed
            | age::DecryptError::NoMatchingKeys => BackupError::WrongKey,
            age::DecryptError::InvalidMac => BackupError::Archive(archive::ArchiveError::Corrupt(
                "the header's MAC does not match".into(),
            )),
            age::DecryptError::ExcessiveWork { required, .. } => BackupError::NotAge(format!(
                "the passphrase work factor 2^{required} is more than this box accepts"
            )),
            other => BackupError::NotAge(other.to_string()),
        })
}

/// Decrypts `path` and checks it completely; changes nothing anywhere.
pub fn verify(path: &Path, key: &Decryption) -> Result<Contents, BackupError> {
    let reader = open_decrypted(path, key)?;
    Ok(archive::check(reader, None)?.0)
}

/// Decrypts and checks `path` into `<data_dir>/restore/` and marks it ready for
/// [`apply_staged`]. On any error the staging directory is removed and nothing else has
/// changed.
pub fn stage_restore(
    data_dir: &Path,
    path: &Path,
    key: &Decryption,
) -> Result<Contents, BackupError> {
    let staging = data_dir.join(STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err("remove", &staging))?;
    }
    let result = (|| {
        let reader = open_decrypted(path, key)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging)
            .map_err(io_err("create", &staging))?;
        let (contents, _) = archive::check(reader, Some(&staging))?;
        let marker = staging.join(READY_MARKER);
        let json = serde_json::to_vec_pretty(&contents).unwrap_or_default();
        std::fs::write(&marker, json).map_err(io_err("write", &marker))?;
        archive::sync_file(&marker).map_err(io_err("sync", &marker))?;
        archive::sync_dir(&staging).map_err(io_err("sync", &staging))?;
        Ok(contents)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Imports a restore staged by [`stage_restore`], if one is ready: replaces the store's
/// content, the voicemail audio, the configuration revisions (the one that ran last runs
/// next: `boot_text` is recorded as already seen), the TLS identity and the SSH host key.
/// An incomplete staging directory (a crash while staging) is deleted. Call it before
/// anything opens the data directory.
pub fn apply_staged(
    cfg: &crate::config::Config,
    boot_text: &str,
) -> Result<Option<Contents>, BackupError> {
    let data_dir = &cfg.store.data_dir;
    let staging = data_dir.join(STAGING_DIR);
    if !staging.is_dir() {
        return Ok(None);
    }
    let marker = staging.join(READY_MARKER);
    let Ok(marker_text) = std::fs::read(&marker) else {
        tracing::warn!(dir = %staging.display(), "removing an incomplete restore");
        std::fs::remove_dir_all(&staging).map_err(io_err("remove", &staging))?;
        return Ok(None);
    };
    let contents: Contents = serde_json::from_slice(&marker_text).map_err(|e| {
        BackupError::Archive(archive::ArchiveError::Invalid(format!(
            "{}: {e}",
            marker.display()
        )))
    })?;
    tracing::warn!(
        hostname = %contents.hostname,
        created = %schedule::rfc3339(contents.created_ms),
        "restoring the staged backup"
    );

    // The store, in one transaction.
    let bans: Vec<archive::BanRow> = staged_doc(&staging, archive::BANS)?;
    let locks: Vec<archive::LockRow> = staged_doc(&staging, archive::LOCKS)?;
    let meta: Vec<archive::MetaRow> = staged_doc(&staging, archive::META)?;
    let voicemail: Vec<VoicemailRecord> = staged_doc(&staging, archive::VOICEMAIL)?;
    let import = StoreImport {
        extensions: staged_doc(&staging, archive::EXTENSIONS)?,
        bans: bans
            .into_iter()
            .filter_map(|b| Some((b.addr.parse().ok()?, b.ban)))
            .collect(),
        locks: locks.into_iter().map(|l| (l.user, l.lock)).collect(),
        alerts: staged_doc(&staging, archive::ALERTS)?,
        meta: meta
            .iter()
            .filter_map(|m| Some((m.key.clone(), m.value().ok()?)))
            .collect(),
        voicemail: voicemail
            .into_iter()
            .map(|mut m| {
                m.path = data_dir.join(&m.path);
                m
            })
            .collect(),
    };
    let cdr_path = staging.join(archive::CDRS_JSONL);
    let cdr_file = std::fs::File::open(&cdr_path).map_err(io_err("read", &cdr_path))?;
    let cdrs = std::io::BufReader::new(cdr_file)
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| -> Result<Cdr, BackupError> {
            let line = line.map_err(io_err("read", &cdr_path))?;
            serde_json::from_str(&line).map_err(|e| {
                BackupError::Archive(archive::ArchiveError::Invalid(format!(
                    "{}: {e}",
                    archive::CDRS_JSONL
                )))
            })
        });
    {
        let store = Store::open(data_dir)?;
        store.import(&import, cdrs)?;
    }

    // Voicemail audio: the staged directory replaces the old one (moved, so a repeat
    // after a crash finds it already in place).
    let staged_vm = staging.join("voicemail");
    let vm_dir = data_dir.join("voicemail");
    if staged_vm.is_dir() {
        if vm_dir.exists() {
            std::fs::remove_dir_all(&vm_dir).map_err(io_err("remove", &vm_dir))?;
        }
        std::fs::rename(&staged_vm, &vm_dir).map_err(io_err("move", &staged_vm))?;
    }

    // Configuration revisions: copied over the old ones.
    let staged_config = staging.join("config");
    let config_dir = data_dir.join("config");
    if staged_config.is_dir() {
        std::fs::create_dir_all(&config_dir).map_err(io_err("create", &config_dir))?;
        if let Ok(rd) = std::fs::read_dir(&config_dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n == "revisions.json" || (n.starts_with("rev-") && n.ends_with(".toml")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let rd = std::fs::read_dir(&staged_config).map_err(io_err("read", &staged_config))?;
        for e in rd.flatten() {
            let to = config_dir.join(e.file_name());
            std::fs::copy(e.path(), &to).map_err(io_err("write", &to))?;
        }
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(boot_text.as_bytes()));
        let seen = config_dir.join("boot.sha256");
        std::fs::write(&seen, hash).map_err(io_err("write", &seen))?;
        archive::sync_dir(&config_dir).map_err(io_err("sync", &config_dir))?;
    }

    // Secrets: the TLS identity and the SSH host key.
    let copies = [
        ("tls/cert.pem", data_dir.join("tls").join("cert.pem")),
        ("tls/key.pem", data_dir.join("tls").join("key.pem")),
        (
            "ssh/dropbear_ed25519_host_key",
            cfg.ssh.host_key_path(data_dir),
        ),
    ];
    for (rel, to) in copies {
        let from_path = staging.join(rel);
        if !from_path.is_file() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err("create", parent))?;
        }
        let bytes = std::fs::read(&from_path).map_err(io_err("read", &from_path))?;
        let mut f = archive::create_private(&to).map_err(io_err("write", &to))?;
        f.write_all(&bytes).map_err(io_err("write", &to))?;
        f.sync_all().map_err(io_err("sync", &to))?;
    }

    std::fs::remove_file(&marker).map_err(io_err("remove", &marker))?;
    archive::sync_dir(&staging).map_err(io_err("sync", &staging))?;
    std::fs::remove_dir_all(&staging).map_err(io_err("remove", &staging))?;
    tracing::warn!(
        extensions = contents.extensions,
        cdrs = contents.cdrs,
        voicemail = contents.voicemail,
        "backup restored"
    );
    Ok(Some(contents))
}

/// A store document of the staging directory.
fn staged_doc<T: serde::de::DeserializeOwned>(
    staging: &Path,
    name: &str,
) -> Result<T, BackupError> {
    let p = staging.join(name);
    let bytes = std::fs::read(&p).map_err(io_err("read", &p))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Archive(archive::ArchiveError::Invalid(format!("{name}: {e}"))))
}

/// `outpostd --restore`: restores `file` into the data directory of `cfg` while no daemon
/// runs (refused if one holds the store).
pub fn restore_offline(
    cfg: &crate::config::Config,
    boot_text: &str,
    file: &Path,
    key: &Decryption,
) -> Result<Contents, BackupError> {
    let data_dir = &cfg.store.data_dir;
    // Fails when a running daemon holds the database: nothing is staged then.
    drop(Store::open(data_dir)?);
    stage_restore(data_dir, file, key)?;
    match apply_staged(cfg, boot_text) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(BackupError::NotFound(file.display().to_string())),
        Err(e) => {
            let _ = std::fs::remove_dir_all(data_dir.join(STAGING_DIR));
            Err(e)
        }
    }
}

/// The good backups in `dir`, newest first, with the counts of incomplete and unreadable
/// files.
pub fn scan(dir: &Path) -> (Vec<BackupEntry>, usize, usize) {
    let mut good = Vec::new();
    let (mut incomplete, mut unreadable) = (0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (good, 0, 0);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("outpost-") && name.ends_with(PARTIAL_SUFFIX) {
            incomplete += 1;
            continue;
        }
        let Some(created_ms) = parse_name(&name) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        match crypto::is_passphrase_file(&e.path()) {
            Some(scrypt) => good.push(BackupEntry {
                name,
                size: meta.len(),
                created_ms,
                encrypted_to: if scrypt {
                    "passphrase".to_string()
                } else {
                    "X25519 recipient".to_string()
                },
            }),
            None => unreadable += 1,
        }
    }
    good.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.name.cmp(&a.name)));
    (good, incomplete, unreadable)
}

/// Seconds since the newest good backup in the configured directory; `None` if there is
/// none.
pub fn last_backup_age_secs(cfg: &BackupConfig, data_dir: &Path, now: Millis) -> Option<u64> {
    let (good, _, _) = scan(&cfg.dir(data_dir));
    good.first()
        .map(|b| now.saturating_sub(b.created_ms) / 1000)
}

/// Deletes the backups of `dir` beyond retention; returns the names deleted.
pub fn apply_retention(dir: &Path, keep_daily: u32, keep_weekly: u32) -> Vec<String> {
    let (good, _, _) = scan(dir);
    let list: Vec<(String, Millis)> = good.into_iter().map(|b| (b.name, b.created_ms)).collect();
    let victims = schedule::retention_victims(&list, keep_daily, keep_weekly);
    let mut deleted = Vec::new();
    for name in victims {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => deleted.push(name),
            Err(err) => tracing::warn!(file = %name, %err, "cannot delete an old backup"),
        }
    }
    if !deleted.is_empty() {
        tracing::info!(deleted = deleted.len(), "old backups deleted (retention)");
    }
    deleted
}

/// The key a command carries, or the daemon's own.
fn decryption(key: Option<BackupKey>, cfg: &BackupConfig) -> Result<Decryption, BackupError> {
    match key {
        Some(BackupKey::Passphrase(p)) => Ok(Decryption::passphrase(&p)?),
        Some(BackupKey::Identity(text)) => Ok(Decryption::identity_text(&text)?),
        None => cfg.own_decryption(),
    }
}

/// Where a file named in a command is: a bare name is in the backup directory.
fn resolve(file: &str, dir: &Path) -> PathBuf {
    if file.contains('/') {
        PathBuf::from(file)
    } else {
        dir.join(file)
    }
}

fn wall_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The daemon's side of backups: commands, the schedule, uploads, the restart after a
/// staged restore.
#[derive(Debug, Default)]
pub struct Backups {
    shared: Arc<Shared>,
    /// The schedule text the next run was computed from, and that run.
    next_run: Option<(String, Millis)>,
}

#[derive(Debug, Default)]
struct Shared {
    /// A backup, verify or restore is running.
    running: AtomicBool,
    /// A restore is staged: the daemon should exit so it is applied at the next start.
    restart: AtomicBool,
    /// Off-site targets by name.
    targets: Mutex<BTreeMap<String, TargetStatus>>,
}

/// Clears the running flag when a job ends, however it ends.
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

impl Backups {
    /// No backup running, nothing scheduled yet.
    pub fn new() -> Backups {
        Backups::default()
    }

    /// A restore was staged: the daemon should stop (its supervisor starts it again and
    /// the restore is applied before anything else).
    pub fn restart_requested(&self) -> bool {
        self.shared.restart.load(Ordering::SeqCst)
    }

    fn try_start(&self) -> Option<RunningGuard> {
        self.shared
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| RunningGuard(self.shared.clone()))
    }

    /// Runs an admin command off the daemon's loop and sends its reply when done.
    pub fn command(
        &self,
        ctx: Context,
        now: Millis,
        cmd: BackupCommand,
        reply: oneshot::Sender<Reply>,
    ) {
        if let BackupCommand::List = cmd {
            let _ = reply.send(Reply::Backups(self.list(&ctx, now)));
            return;
        }
        let Some(guard) = self.try_start() else {
            let _ = reply.send(Reply::error(BackupError::Busy.to_string()));
            return;
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let job_ctx = ctx.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                run_command(&job_ctx, now, cmd)
            })
            .await;
            let (answer, new_file, restart) = match outcome {
                Ok(Ok(done)) => done,
                Ok(Err(err)) => (Reply::error(err.to_string()), None, false),
                Err(err) => (
                    Reply::error(format!("the backup task failed: {err}")),
                    None,
                    false,
                ),
            };
            let _ = reply.send(answer);
            if restart {
                shared.restart.store(true, Ordering::SeqCst);
            }
            if let Some(path) = new_file {
                upload_all(&shared, &ctx, &path);
            }
        });
    }

    /// Once a second: starts the scheduled backup when it is due (then retention and
    /// uploads).
    pub fn tick(&mut self, cfg: &BackupConfig, now: Millis, ctx: impl FnOnce() -> Context) {
        let fresh = !matches!(&self.next_run, Some((text, _)) if *text == cfg.schedule);
        if fresh {
            self.next_run = cfg
                .schedule()
                .next_after(now)
                .map(|t| (cfg.schedule.clone(), t));
            return;
        }
        let Some((_, due)) = &self.next_run else {
            return;
        };
        if now < *due {
            return;
        }
        self.next_run = cfg
            .schedule()
            .next_after(now)
            .map(|t| (cfg.schedule.clone(), t));
        let Some(guard) = self.try_start() else {
            tracing::warn!("scheduled backup skipped: another backup or restore is running");
            return;
        };
        let ctx = ctx();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let job_ctx = ctx.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                let made = create(&job_ctx, now);
                if made.is_ok() {
                    apply_retention(
                        &job_ctx.dir(),
                        job_ctx.cfg.keep_daily,
                        job_ctx.cfg.keep_weekly,
                    );
                }
                made
            })
            .await;
            match outcome {
                Ok(Ok((entry, path))) => {
                    tracing::info!(file = %entry.name, size = entry.size, "scheduled backup done");
                    upload_all(&shared, &ctx, &path);
                }
                Ok(Err(err)) => {
                    let message = format!("scheduled backup failed: {err}");
                    tracing::error!("{message}");
                    let store = ctx.store.clone();
                    // A durable write: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || raise_alert(&store, message)).await;
                }
                Err(err) => tracing::error!(%err, "scheduled backup task failed"),
            }
        });
    }

    /// The listing for `backup list`.
    pub fn list(&self, ctx: &Context, now: Millis) -> BackupList {
        let dir = ctx.dir();
        let (backups, incomplete, unreadable) = scan(&dir);
        let targets = match self.shared.targets.lock() {
            Ok(map) => ctx
                .cfg
                .targets
                .iter()
                .map(|t| {
                    map.get(&t.name).cloned().unwrap_or_else(|| TargetStatus {
                        name: t.name.clone(),
                        ..TargetStatus::default()
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        BackupList {
            dir: dir.display().to_string(),
            newest_age_secs: backups
                .first()
                .map(|b| now.saturating_sub(b.created_ms) / 1000),
            backups,
            incomplete,
            unreadable,
            schedule: ctx.cfg.schedule().to_string(),
            next_run_ms: self
                .next_run
                .as_ref()
                .filter(|(text, _)| *text == ctx.cfg.schedule)
                .map(|(_, t)| *t)
                .or_else(|| ctx.cfg.schedule().next_after(now)),
            targets,
        }
    }
}

/// Runs one command that is not `list`: the reply, the new backup file (to upload) and
/// whether the daemon should restart.
fn run_command(
    ctx: &Context,
    now: Millis,
    cmd: BackupCommand,
) -> Result<(Reply, Option<PathBuf>, bool), BackupError> {
    match cmd {
        BackupCommand::Now => {
            let (entry, path) = create(ctx, now)?;
            Ok((Reply::BackupCreated(entry), Some(path), false))
        }
        BackupCommand::List => Ok((Reply::error("unreachable"), None, false)),
        BackupCommand::Verify { file, key } => {
            let key = decryption(key, &ctx.cfg)?;
            let contents = verify(&resolve(&file, &ctx.dir()), &key)?;
            Ok((Reply::BackupVerified(contents), None, false))
        }
        BackupCommand::Restore { file, key } => {
            let key = decryption(key, &ctx.cfg)?;
            let path = resolve(&file, &ctx.dir());
            let c = stage_restore(&ctx.data_dir, &path, &key)?;
            tracing::warn!(file = %path.display(), "restore staged; the daemon stops to apply it");
            Ok((
                Reply::done(format!(
                    "backup of {} made {} checked and staged ({} extensions, {} call records, {} voicemail messages, {} configuration revisions); outpostd restarts now to apply it",
                    c.hostname,
                    schedule::rfc3339(c.created_ms),
                    c.extensions,
                    c.cdrs,
                    c.voicemail,
                    c.config_revisions
                )),
                None,
                true,
            ))
        }
    }
}

/// Uploads `path` to every target, each in its own task; failures raise an alert.
fn upload_all(shared: &Arc<Shared>, ctx: &Context, path: &Path) {
    for t in ctx.cfg.targets.clone() {
        let shared = shared.clone();
        let ctx = ctx.clone();
        let path = path.to_path_buf();
        if let Ok(mut map) = shared.targets.lock() {
            let st = map.entry(t.name.clone()).or_insert_with(|| TargetStatus {
                name: t.name.clone(),
                ..TargetStatus::default()
            });
            st.uploading = true;
        }
        tokio::spawn(async move {
            let retry = target::Retry {
                tries: ctx.cfg.upload_tries,
                first_delay: std::time::Duration::from_secs(ctx.cfg.upload_retry_secs),
                ..target::Retry::DEFAULT
            };
            let result = target::upload_with(&t, &path, &ctx.data_dir, &retry).await;
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let failure = result.as_ref().err().map(ToString::to_string);
            if let Ok(mut map) = shared.targets.lock() {
                let st = map.entry(t.name.clone()).or_default();
                st.name = t.name.clone();
                st.uploading = false;
                match &failure {
                    None => {
                        st.last_ok_ms = Some(wall_now());
                        st.last_ok_file = Some(file.clone());
                        st.last_upload_error = None;
                    }
                    Some(e) => st.last_upload_error = Some(e.clone()),
                }
            }
            match failure {
                None => tracing::info!(target = %t.name, %file, "backup uploaded"),
                Some(e) => {
                    let message = format!("backup upload to {} failed: {e}", t.name);
                    tracing::error!("{message}");
                    let store = ctx.store.clone();
                    // A durable write: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || raise_alert(&store, message)).await;
                }
            }
        });
    }
}

/// Stores an alert (rule `manual`) so it shows in `fw alerts` and on the front panel.
fn raise_alert(store: &Store, message: String) {
    let alert = Alert {
        at: wall_now(),
        rule: Rule::Manual,
        addr: None,
        user: None,
        message,
        enforced: true,
    };
    if let Err(err) = store.fw_apply(&[FirewallChange::Alert(alert)]) {
        tracing::error!(%err, "cannot store the backup alert");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use pbx_core::cdr::Disposition;
    use pbx_core::sip::auth::StoredSecret;

    use super::*;
    use crate::store::{Batch, ExtensionRecord, StoredBan, StoredLock};

    const PASS: &str = "correct horse battery staple";
    /// 2024-05-01T02:30:00Z.
    const NOW: Millis = 1_714_530_600_000;

    struct Box1 {
        _tmp: tempfile::TempDir,
        data: PathBuf,
        pass_file: PathBuf,
    }

    fn new_box() -> Box1 {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let pass_file = tmp.path().join("pass");
        std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
        std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Box1 {
            _tmp: tmp,
            data,
            pass_file,
        }
    }

    fn config(b: &Box1) -> crate::config::Config {
        let mut cfg = crate::config::Config::default();
        cfg.store.data_dir = b.data.clone();
        cfg.backup.passphrase_file = Some(b.pass_file.clone());
        cfg
    }

    fn cdr(n: u64) -> Cdr {
        Cdr {
            call_id: format!("call-{n}"),
            caller: "100".into(),
            callee: "101".into(),
            start: NOW - 100_000 + n,
            answer: Some(NOW - 99_000 + n),
            end: NOW - 50_000 + n,
            disposition: Disposition::Answered,
            status: 200,
        }
    }

    /// Fills a box with one of everything; returns the WAV bytes.
    fn populate(b: &Box1) -> Vec<u8> {
        let store = Store::open(&b.data).unwrap();
        for ext in ["100", "101"] {
            store
                .ext_put(&ExtensionRecord {
                    ext: ext.into(),
                    name: Some(format!("Phone {ext}")),
                    secret: StoredSecret::new(ext, "outpost", "a password"),
                    realm: "outpost".into(),
                    created_ms: NOW - 1_000_000,
                })
                .unwrap();
        }
        let wav: Vec<u8> = (0..40_000u32)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let vm_file = b.data.join("voicemail/100/msg-1.wav");
        std::fs::create_dir_all(vm_file.parent().unwrap()).unwrap();
        std::fs::write(&vm_file, &wav).unwrap();
        store
            .commit(&Batch {
                cdrs: (0..250).map(cdr).collect(),
                firewall: vec![
                    FirewallChange::Ban(
                        "203.0.113.9".parse().unwrap(),
                        StoredBan {
                            until: NOW + 3_600_000,
                            rule: Rule::AuthFailures,
                            reason: "guessing".into(),
                            count_today: 1,
                        },
                    ),
                    FirewallChange::Lock(
                        "101".into(),
                        StoredLock {
                            until: NOW + 900_000,
                            rule: Rule::AccountGuessing,
                            except: Vec::new(),
                        },
                    ),
                    FirewallChange::Alert(Alert {
                        at: NOW - 5,
                        rule: Rule::Scanner,
                        addr: Some("198.51.100.4".parse().unwrap()),
                        user: None,
                        message: "scanner".into(),
                        enforced: true,
                    }),
                ],
                voicemail: vec![VoicemailRecord {
                    id: 0,
                    mailbox: "100".into(),
                    caller: "101".into(),
                    at: NOW - 10_000,
                    duration_ms: 2_500,
                    path: vm_file,
                    new: true,
                }],
                ..Batch::default()
            })
            .unwrap();
        store.meta_put("fwd:100", br#"{"always":"101"}"#).unwrap();
        store.meta_put("vm_pin:100", b"hash").unwrap();
        store.secret_key().unwrap();
        let mut revs = crate::revisions::Revisions::open(&b.data).unwrap();
        revs.add("[sip]\nrealm = \"outpost\"\n", NOW - 9, "boot", None)
            .unwrap();
        revs.add(
            "[sip]\nrealm = \"outpost\" # second\n",
            NOW - 8,
            "edit",
            None,
        )
        .unwrap();
        std::fs::create_dir_all(b.data.join("tls")).unwrap();
        std::fs::write(b.data.join("tls/cert.pem"), "CERT").unwrap();
        std::fs::write(b.data.join("tls/key.pem"), "KEY").unwrap();
        std::fs::create_dir_all(b.data.join("ssh")).unwrap();
        std::fs::write(b.data.join("ssh/dropbear_ed25519_host_key"), "HOSTKEY").unwrap();
        wav
    }

    fn context(b: &Box1) -> Context {
        let cfg = config(b);
        Context {
            store: Arc::new(Store::open(&b.data).unwrap()),
            data_dir: b.data.clone(),
            cfg: cfg.backup.clone(),
            ssh_host_key: cfg.ssh.host_key_path(&b.data),
            hostname: "branch-1".into(),
        }
    }

    struct Dump {
        exts: Vec<ExtensionRecord>,
        cdrs: Vec<Cdr>,
        bans: Vec<(std::net::IpAddr, StoredBan)>,
        locks: Vec<(String, StoredLock)>,
        alerts: Vec<Alert>,
        meta: Vec<(String, Option<Vec<u8>>)>,
        vm: Vec<VoicemailRecord>,
    }

    fn dump(data: &Path) -> Dump {
        let store = Store::open(data).unwrap();
        Dump {
            exts: store.ext_list().unwrap(),
            cdrs: store.cdr_list(usize::MAX, 0).unwrap(),
            bans: store.fw_bans().unwrap(),
            locks: store.fw_locks().unwrap(),
            alerts: store.fw_alerts(usize::MAX).unwrap(),
            meta: ["fwd:100", "vm_pin:100", "nonce_key"]
                .iter()
                .map(|k| (k.to_string(), store.meta_get(k).unwrap()))
                .collect(),
            vm: store.vm_list(None).unwrap(),
        }
    }

    #[test]
    fn round_trip_restores_every_record_and_byte() {
        let a = new_box();
        let wav = populate(&a);
        let ctx = context(&a);
        let (entry, path) = create(&ctx, NOW).unwrap();
        drop(ctx);
        assert_eq!(entry.name, "outpost-branch-1-20240501T023000Z.backup");
        assert_eq!(entry.encrypted_to, "passphrase");
        assert_eq!(parse_name(&entry.name), Some(NOW));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup is readable by its owner only");

        let key = Decryption::passphrase(PASS).unwrap();
        let contents = verify(&path, &key).unwrap();
        assert_eq!(
            (
                contents.extensions,
                contents.cdrs,
                contents.bans,
                contents.locks
            ),
            (2, 250, 1, 1)
        );
        assert_eq!((contents.voicemail, contents.config_revisions), (1, 2));
        assert!(contents.tls && contents.ssh_host_key);

        // A fresh box (new data directory) with something of its own that must go.
        let b = new_box();
        {
            let store = Store::open(&b.data).unwrap();
            store
                .ext_put(&ExtensionRecord {
                    ext: "999".into(),
                    name: None,
                    secret: StoredSecret::new("999", "outpost", "x"),
                    realm: "outpost".into(),
                    created_ms: 1,
                })
                .unwrap();
        }
        stage_restore(&b.data, &path, &key).unwrap();
        assert_eq!(
            Store::open(&b.data).unwrap().ext_count().unwrap(),
            1,
            "staging changes nothing yet"
        );
        let boot = "[sip]\n# the new box's boot file\n";
        let applied = apply_staged(&config(&b), boot).unwrap().unwrap();
        assert_eq!(applied.cdrs, 250);
        assert!(!b.data.join(STAGING_DIR).exists());
        assert_eq!(
            apply_staged(&config(&b), boot).unwrap(),
            None,
            "applied once"
        );

        let (da, mut db) = (dump(&a.data), dump(&b.data));
        assert_eq!(da.exts, db.exts);
        assert_eq!(da.cdrs, db.cdrs);
        assert_eq!(da.bans, db.bans);
        assert_eq!(da.locks, db.locks);
        assert_eq!(da.alerts, db.alerts);
        assert_eq!(da.meta, db.meta);
        assert_eq!(db.vm.len(), 1);
        assert_eq!(db.vm[0].path, b.data.join("voicemail/100/msg-1.wav"));
        assert_eq!(
            std::fs::read(&db.vm[0].path).unwrap(),
            wav,
            "audio byte for byte"
        );
        db.vm[0].path = da.vm[0].path.clone();
        assert_eq!(da.vm, db.vm);
        for f in [
            "config/revisions.json",
            "config/rev-000001.toml",
            "config/rev-000002.toml",
            "tls/cert.pem",
            "tls/key.pem",
            "ssh/dropbear_ed25519_host_key",
        ] {
            assert_eq!(
                std::fs::read(a.data.join(f)).unwrap(),
                std::fs::read(b.data.join(f)).unwrap(),
                "{f}"
            );
        }
        use sha2::Digest;
        assert_eq!(
            std::fs::read_to_string(b.data.join("config/boot.sha256")).unwrap(),
            hex::encode(sha2::Sha256::digest(boot)),
            "the restored revision runs, not the new box's boot file"
        );
        let key_mode = std::fs::metadata(b.data.join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o077, 0);
    }

    #[test]
    fn damaged_wrong_key_and_truncated_backups_are_refused_untouched() {
        let a = new_box();
        populate(&a);
        let ctx = context(&a);
        let (_, path) = create(&ctx, NOW).unwrap();
        drop(ctx);
        let bytes = std::fs::read(&path).unwrap();
        let key = Decryption::passphrase(PASS).unwrap();
        let b = new_box();
        let try_file = |name: &str, content: &[u8], key: &Decryption| -> String {
            let p = b.data.join(name);
            std::fs::write(&p, content).unwrap();
            let v = verify(&p, key).unwrap_err().to_string();
            let r = stage_restore(&b.data, &p, key).unwrap_err().to_string();
            assert_eq!(v, r);
            assert!(!b.data.join(STAGING_DIR).exists(), "nothing staged");
            v
        };
        // A byte flipped in the payload, in the header, and near the end.
        for at in [bytes.len() / 2, 60, bytes.len() - 20] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            let err = try_file("flipped", &flipped, &key);
            assert!(
                err.contains("corrupted")
                    || err.contains("damaged")
                    || err.contains("cannot decrypt"),
                "byte {at}: {err}"
            );
        }
        let mut mid = bytes.clone();
        let at = mid.len() / 2;
        mid[at] ^= 0x80;
        assert!(try_file("mid", &mid, &key).contains("corrupted or truncated"));
        for cut in [bytes.len() - 1, bytes.len() / 3, 200] {
            let err = try_file("cut", &bytes[..cut], &key);
            assert!(
                err.contains("truncated") || err.contains("damaged"),
                "cut at {cut}: {err}"
            );
        }
        let wrong = Decryption::passphrase("not the passphrase").unwrap();
        assert!(try_file("wrong", &bytes, &wrong).contains("wrong passphrase"));
        let err = try_file("plain", b"just some text, not a backup", &key);
        assert!(err.contains("not an encrypted Outpost backup"), "{err}");
        assert!(matches!(
            verify(&b.data.join("missing"), &key),
            Err(BackupError::NotFound(_))
        ));
        assert_eq!(Store::open(&b.data).unwrap().ext_count().unwrap(), 0);
    }

    #[test]
    fn interrupted_backups_are_never_listed_and_cleaned_up() {
        let a = new_box();
        populate(&a);
        let ctx = context(&a);
        let dir = ctx.dir();
        std::fs::create_dir_all(&dir).unwrap();
        // What a kill -9 leaves: a partial file (and a stray file that is not ours).
        let partial = dir.join("outpost-branch-1-20240430T023000Z.backup.partial");
        std::fs::write(&partial, b"age-encryption.org/v1\n-> scrypt").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let (good, incomplete, _) = scan(&dir);
        assert!(good.is_empty());
        assert_eq!(incomplete, 1);
        assert_eq!(last_backup_age_secs(&ctx.cfg, &a.data, NOW), None);

        create(&ctx, NOW).unwrap();
        assert!(!partial.exists(), "the next run deletes it");
        assert!(dir.join("notes.txt").exists());
        let (good, incomplete, _) = scan(&dir);
        assert_eq!((good.len(), incomplete), (1, 0));
        assert_eq!(
            last_backup_age_secs(&ctx.cfg, &a.data, NOW + 90_000),
            Some(90)
        );
        assert!(matches!(create(&ctx, NOW), Err(BackupError::Exists(_))));
    }

    #[test]
    fn recipient_backups_need_the_identity() {
        let a = new_box();
        populate(&a);
        let id = age::x25519::Identity::generate();
        let mut ctx = context(&a);
        ctx.cfg.passphrase_file = None;
        ctx.cfg.recipient = Some(id.to_public().to_string());
        let (entry, path) = create(&ctx, NOW).unwrap();
        assert_eq!(entry.encrypted_to, id.to_public().to_string());
        assert_eq!(scan(&ctx.dir()).0[0].encrypted_to, "X25519 recipient");
        assert!(matches!(
            ctx.cfg.own_decryption(),
            Err(BackupError::NeedIdentity)
        ));
        use age::secrecy::ExposeSecret;
        let key = Decryption::identity_text(id.to_string().expose_secret()).unwrap();
        assert_eq!(verify(&path, &key).unwrap().extensions, 2);
        let other = age::x25519::Identity::generate();
        let wrong = Decryption::identity_text(other.to_string().expose_secret()).unwrap();
        assert!(matches!(verify(&path, &wrong), Err(BackupError::WrongKey)));
    }

    #[test]
    fn retention_deletes_old_backup_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let enc = Encryption::Passphrase(age::secrecy::SecretString::from(PASS.to_string()));
        for day in 0..10u64 {
            let t = NOW - day * 86_400_000;
            let mut w = enc.wrap(Vec::new()).unwrap();
            w.write_all(b"x").unwrap();
            std::fs::write(dir.path().join(file_name("b", t)), w.finish().unwrap()).unwrap();
        }
        std::fs::write(dir.path().join("outpost-b-garbage.backup"), b"x").unwrap();
        let deleted = apply_retention(dir.path(), 3, 0);
        assert_eq!(deleted.len(), 7);
        let (good, _, _) = scan(dir.path());
        assert_eq!(good.len(), 3);
        assert_eq!(good[0].created_ms, NOW);
        assert!(dir.path().join("outpost-b-garbage.backup").exists());
    }

    #[test]
    fn names_and_config_are_checked() {
        assert_eq!(parse_name("outpost-a-b-20240501T023000Z.backup"), Some(NOW));
        for bad in [
            "outpost-20240501T023000Z.backup",
            "outpost-x-20240501T023000Z.backup.partial",
            "other-x-20240501T023000Z.backup",
            "outpost-x-2024050AT023000Z.backup",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        let ok = BackupConfig::default();
        ok.check().unwrap();
        let mut c = BackupConfig {
            schedule: "daily 02:30".into(),
            ..BackupConfig::default()
        };
        assert_eq!(c.check().unwrap_err().0, "backup.schedule");
        c.recipient = Some("age1bad".into());
        assert_eq!(c.check().unwrap_err().0, "backup.recipient");
        c.recipient = Some(age::x25519::Identity::generate().to_public().to_string());
        c.check().unwrap();
        c.passphrase_file = Some("/etc/outpost/backup.pass".into());
        assert_eq!(c.check().unwrap_err().0, "backup.recipient", "not both");
        c.recipient = None;
        c.schedule = "every 5s".into();
        assert_eq!(c.check().unwrap_err().0, "backup.schedule");
        c.schedule = "weekly sun 03:00".into();
        c.keep_daily = 0;
        c.keep_weekly = 0;
        assert_eq!(c.check().unwrap_err().0, "backup.keep_daily");
        let parsed: crate::config::Config = toml::from_str(
            "[backup]\nschedule = \"daily 02:30\"\npassphrase_file = \"/p\"\nkeep_daily = 3\n",
        )
        .unwrap();
        assert_eq!(parsed.backup.keep_daily, 3);
        assert_eq!(parsed.backup.keep_weekly, 4);
        assert!(toml::from_str::<crate::config::Config>("[backup]\nkeep = 3\n").is_err());
    }

    #[test]
    fn a_backup_is_readable_with_standard_tools_layout() {
        // What docs/backup-format.md promises: age, then tar, manifest last with checksums.
        let a = new_box();
        populate(&a);
        let ctx = context(&a);
        let (_, path) = create(&ctx, NOW).unwrap();
        let key = Decryption::passphrase(PASS).unwrap();
        let mut plain = Vec::new();
        key.open(std::fs::File::open(&path).unwrap())
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        let mut ar = tar::Archive::new(plain.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.last().map(String::as_str), Some(archive::MANIFEST));
        for n in [
            archive::EXTENSIONS,
            archive::CDRS_JSONL,
            archive::META,
            "voicemail/100/msg-1.wav",
            "config/revisions.json",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("registrations")));
    }
}
