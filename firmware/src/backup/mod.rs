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

pub mod api;
pub mod archive;
mod config;
mod create;
pub mod crypto;
mod fetch;
mod listing;
mod restore;
pub mod schedule;
pub mod secret;
pub mod signing;
pub mod target;
pub mod upload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use firewall::detect::{Alert, Rule};
use pbx_core::Millis;

use crate::store::{FirewallChange, Store, StoreError};
use api::{BackupCommand, BackupKey, BackupOutcome};
use archive::Contents;
use crypto::{Decryption, KeyError};
use listing::{cache_good, check_listing, CheckResult};

pub use config::{sftp_identity, BackupConfig, KeySource};
pub use create::{create, file_name, parse_name};
pub use fetch::FetchError;
pub use listing::{apply_retention, last_backup_age_secs, scan};
pub use restore::{
    apply_staged, last_restore, never_configured, restore_offline, stage_restore,
    stage_restore_with_id, verify, verify_trusted, LastRestore, Policy, STAGING_DIR,
};

/// Default backup directory, under the data directory.
pub const DEFAULT_DIR: &str = "backups";
/// Backup file names end with this.
pub const SUFFIX: &str = ".backup";
/// A backup being written ends with this until it is complete.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `read`: the file cannot be read out (not a backup name, a path, missing, a
    /// symlink, a bad offset or length).
    #[error("{0}")]
    Read(String),
    /// A key could not be read or parsed.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// Nothing to encrypt to.
    #[error("no encryption key: store a passphrase with `outpostctl backup passphrase set`, or set [backup] passphrase_file or recipient (backups are always encrypted)")]
    NoKey,
    /// A recipient-encrypted backup needs the identity to be read.
    #[error(
        "this backup is encrypted to an age recipient key (X25519), not a passphrase: give its identity file with --identity FILE"
    )]
    NeedIdentity,
    /// A passphrase backup and no passphrase given or kept on the box.
    #[error(
        "this backup is encrypted with a passphrase and the box has none: store it with `outpostctl backup passphrase set` (or give --passphrase)"
    )]
    NeedKey,
    /// An identity was given for a passphrase backup.
    #[error("this backup is encrypted with a passphrase, not to a recipient key: give --passphrase (or store it with `outpostctl backup passphrase set`), not --identity")]
    NeedPassphrase,
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
    /// No trusted key signed the backup (and `--trust-unsigned` was not given).
    #[error("refused: the backup is not authenticated: {0}. If it is genuine, name the box that made it: --signer 'outpost-backup-ed25519 ...' (the line `outpostctl backup key` printed there) or [backup] trusted_keys; --trust-unsigned restores it anyway (logged and raised as an alert)")]
    Unauthenticated(String),
    /// The box's signing key, or a signer key given, is unusable.
    #[error("{0}")]
    Signing(#[from] signing::SigningError),
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
    /// An upload command failed.
    #[error("{0}")]
    Upload(#[from] upload::UploadError),
    /// A thread panicked while holding the upload slot.
    #[error("the upload state is unusable")]
    UploadStateLost,
    /// The stored passphrase could not be written or removed.
    #[error("{0}")]
    Secret(#[from] secret::SecretError),
    /// The SFTP client key could not be made.
    #[error("cannot make the SFTP key: {0}")]
    SftpKey(target::TargetError),
    /// A download from a target or URL failed.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// The background task died.
    #[error("the backup task failed: {0}")]
    Task(String),
    /// The background check of the listing died.
    #[error("the listing failed: {0}")]
    Listing(String),
    /// A command reached a runner that does not run it (a bug in the dispatch).
    #[error("{command} is not a {kind}")]
    Misrouted {
        /// The command's wire name.
        command: &'static str,
        /// What the runner runs.
        kind: &'static str,
    },
}

/// Where [`Backups::command`] sends a command's outcome.
pub type Answer = oneshot::Sender<Result<BackupOutcome, BackupError>>;

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
    /// Why the file cannot be restored (not an age file, truncated, fails verification
    /// with the box's key); `None` for a good or unchecked backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// Whether the box checked it completely with its own key (`false`: no key for it).
    #[serde(default)]
    pub verified: bool,
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
    /// Files named like backups that cannot be restored (listed in `backups` as damaged).
    pub unreadable: usize,
    /// Where the key of new backups comes from (never the key itself).
    #[serde(default)]
    pub key: String,
    /// A passphrase is stored on the box (`backup passphrase set`).
    #[serde(default)]
    pub passphrase_stored: bool,
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
    /// The SFTP client key the off-site targets use: the first SFTP target's `identity`,
    /// else `<data_dir>/backup/id_ed25519`.
    pub fn sftp_identity(&self) -> PathBuf {
        sftp_identity(&self.cfg, &self.data_dir)
    }

    /// The backup directory.
    pub fn dir(&self) -> PathBuf {
        self.cfg.dir(&self.data_dir)
    }

    /// What a restore or verify accepts: this box's key, `[backup] trusted_keys`, the
    /// command's `signer`; unsigned backups only with `trust_unsigned`.
    pub fn policy(
        &self,
        signer: Option<&str>,
        trust_unsigned: bool,
    ) -> Result<Policy, BackupError> {
        self.cfg.policy(&self.data_dir, signer, trust_unsigned)
    }
}

/// The key a command carries, or the daemon's own for the kind of file `path` is.
fn decryption(
    key: Option<BackupKey>,
    ctx: &Context,
    path: &Path,
) -> Result<Decryption, BackupError> {
    match key {
        Some(BackupKey::Passphrase(p)) => Ok(Decryption::passphrase(&p)?),
        Some(BackupKey::Identity(text)) => Ok(Decryption::identity_text(&text)?),
        None => {
            if !path.exists() {
                return Err(BackupError::NotFound(path.display().to_string()));
            }
            let kind = crypto::header_kind(path).map_err(BackupError::NotAge)?;
            ctx.cfg.own_decryption(&ctx.data_dir, kind)
        }
    }
}

/// Answer to `backup restore`: the backup was checked and staged; the daemon restarts and
/// applies it, then reports `id` in `status` (`last_restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStaged {
    /// The restore's id.
    pub id: String,
    /// The backup file.
    pub file: String,
    /// What it holds.
    pub contents: Contents,
}

/// Answer to `backup fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedBackup {
    /// The file's name in the backup directory.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Where it came from (a target's name, or the URL).
    pub source: String,
    /// `passphrase` or `X25519 recipient`.
    pub encrypted_to: String,
    /// Decrypted and checked with the box's passphrase (else only its header was read).
    pub verified: bool,
    /// It was in the backup directory already (not downloaded again).
    pub already_here: bool,
}

/// One target's backups (`backup list --remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteListing {
    /// The target's name.
    pub target: String,
    /// Its backups, newest first.
    pub backups: Vec<target::RemoteFile>,
    /// Why it could not be listed.
    pub error: Option<String>,
}

/// Answer to `backup passphrase status` and `backup key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Where the key of new backups comes from (never the key).
    pub key: String,
    /// A passphrase is stored on the box.
    pub passphrase_stored: bool,
    /// The SFTP client public key (one OpenSSH line), when there is one.
    pub sftp_public_key: Option<String>,
    /// The box was never configured (no extension, only the boot revision, never
    /// restored): the console offers a restore.
    pub never_configured: bool,
    /// This box's host name (as in its backups' names).
    pub hostname: String,
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
    /// The `.partial` files a previous run left (an upload or download cut by a restart)
    /// were deleted.
    swept: bool,
}

#[derive(Debug, Default)]
struct Shared {
    /// A backup, verify, fetch or restore is running.
    running: AtomicBool,
    /// The upload in progress.
    upload: Mutex<Option<upload::Upload>>,
    /// Results of full checks of backup files, by name.
    checks: Mutex<BTreeMap<String, CheckResult>>,
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

    /// Runs an admin command off the daemon's loop and sends its outcome when done.
    pub fn command(&self, ctx: Context, now: Millis, cmd: BackupCommand, reply: Answer) {
        match cmd {
            BackupCommand::List => {
                let mut list = self.list(&ctx, now);
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let listed = tokio::task::spawn_blocking(move || {
                        check_listing(&shared.checks, &ctx, &mut list.backups);
                        list
                    })
                    .await;
                    let _ = reply.send(match listed {
                        Ok(list) => Ok(BackupOutcome::List(list)),
                        Err(err) => Err(BackupError::Listing(err.to_string())),
                    });
                });
                return;
            }
            BackupCommand::UploadBegin { .. }
            | BackupCommand::UploadChunk { .. }
            | BackupCommand::UploadFinish { .. }
            | BackupCommand::UploadAbort { .. }
            | BackupCommand::PassphraseSet { .. }
            | BackupCommand::PassphraseClear
            | BackupCommand::Read { .. }
            | BackupCommand::Info => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let answer =
                        tokio::task::spawn_blocking(move || small_command(&shared, &ctx, now, cmd))
                            .await
                            .unwrap_or_else(|e| Err(BackupError::Task(e.to_string())));
                    let _ = reply.send(answer);
                });
                return;
            }
            BackupCommand::SigningKey => {
                tokio::spawn(async move {
                    let data_dir = ctx.data_dir.clone();
                    let answer = tokio::task::spawn_blocking(move || signing::box_key(&data_dir))
                        .await
                        .map_err(|e| BackupError::Task(e.to_string()))
                        .and_then(|k| k.map_err(BackupError::from))
                        .map(|k| {
                            BackupOutcome::Done(format!(
                                "{} {}",
                                k.public().line(),
                                k.public().fingerprint()
                            ))
                        });
                    let _ = reply.send(answer);
                });
                return;
            }
            BackupCommand::Key => {
                tokio::spawn(async move {
                    let answer = target::ensure_identity(&ctx.sftp_identity())
                        .await
                        .map(BackupOutcome::Done)
                        .map_err(BackupError::SftpKey);
                    let _ = reply.send(answer);
                });
                return;
            }
            BackupCommand::ListRemote => {
                tokio::spawn(async move {
                    let _ = reply.send(Ok(BackupOutcome::Remote(list_remote(&ctx).await)));
                });
                return;
            }
            _ => {}
        }
        let Some(guard) = self.try_start() else {
            let _ = reply.send(Err(BackupError::Busy));
            return;
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let BackupCommand::Fetch { .. } | BackupCommand::FetchUrl { .. } = cmd {
                let answer = fetch::fetch(&shared.checks, &ctx, cmd)
                    .await
                    .map_err(BackupError::from);
                drop(guard);
                let _ = reply.send(answer);
                return;
            }
            let job_ctx = ctx.clone();
            let job_shared = shared.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                run_command(&job_shared, &job_ctx, now, cmd)
            })
            .await;
            let (answer, new_file, restart) = match outcome {
                Ok(Ok((done, new_file, restart))) => (Ok(done), new_file, restart),
                Ok(Err(err)) => (Err(err), None, false),
                Err(err) => (Err(BackupError::Task(err.to_string())), None, false),
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

    /// Once a second: drops an abandoned upload; starts the scheduled backup when it is
    /// due (then retention and uploads).
    pub fn tick(&mut self, cfg: &BackupConfig, now: Millis, ctx: impl FnOnce() -> Context) {
        if !self.swept {
            let idle = !self.shared.running.load(Ordering::SeqCst)
                && self.shared.upload.try_lock().is_ok_and(|u| u.is_none());
            if idle {
                // Uploads and URL downloads cut by a restart (interrupted backups and
                // downloads by name stay listed as incomplete until the next backup).
                self.swept = true;
                let ctx = ctx();
                // The signing key is made at the first start, so the office can keep its
                // public half before the first backup is needed.
                if let Err(err) = signing::box_key(&ctx.data_dir) {
                    tracing::error!(%err, "no backup signing key");
                }
                let dir = ctx.dir();
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if (name.starts_with("outpost-uploaded-")
                        || name.starts_with("outpost-fetched-"))
                        && name.ends_with(PARTIAL_SUFFIX)
                    {
                        let _ = std::fs::remove_file(e.path());
                        tracing::info!(file = %name, "removed an interrupted backup upload");
                    }
                }
                return;
            }
        }
        if let Ok(mut up) = self.shared.upload.try_lock() {
            if up.as_ref().is_some_and(upload::Upload::is_abandoned) {
                if let Some(u) = up.take() {
                    u.abort();
                }
            }
        }
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
        let (mut backups, incomplete, damaged) = scan(&dir);
        let unreadable = damaged.len();
        backups.extend(damaged);
        backups.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.name.cmp(&a.name)));
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
                .iter()
                .find(|b| b.damaged.is_none())
                .map(|b| now.saturating_sub(b.created_ms) / 1000),
            key: ctx.cfg.key_source(&ctx.data_dir).to_string(),
            passphrase_stored: secret::is_set(&ctx.data_dir),
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

/// Runs one command that is not `list`: the outcome, the new backup file (to upload) and
/// whether the daemon should restart.
fn run_command(
    shared: &Shared,
    ctx: &Context,
    now: Millis,
    cmd: BackupCommand,
) -> Result<(BackupOutcome, Option<PathBuf>, bool), BackupError> {
    match cmd {
        BackupCommand::Now => {
            let (entry, path) = create(ctx, now)?;
            cache_good(&shared.checks, &path);
            Ok((BackupOutcome::Created(entry), Some(path), false))
        }
        BackupCommand::Verify {
            file,
            key,
            signer,
            trust_unsigned,
        } => {
            let policy = ctx.policy(signer.as_deref(), trust_unsigned)?;
            let path = resolve(&file, &ctx.dir());
            let key = decryption(key, ctx, &path)?;
            let contents = verify_trusted(&path, &key, &policy)?;
            Ok((BackupOutcome::Verified(contents), None, false))
        }
        BackupCommand::Restore {
            file,
            key,
            signer,
            trust_unsigned,
        } => {
            let policy = ctx.policy(signer.as_deref(), trust_unsigned)?;
            let path = resolve(&file, &ctx.dir());
            let key = decryption(key, ctx, &path)?;
            let (contents, id) = stage_restore_with_id(&ctx.data_dir, &path, &key, &policy)?;
            tracing::warn!(file = %path.display(), restore = %id, "restore staged; the daemon stops to apply it");
            Ok((
                BackupOutcome::RestoreStaged(RestoreStaged {
                    id,
                    file: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    contents,
                }),
                None,
                true,
            ))
        }
        other => Err(BackupError::Misrouted {
            command: other.name(),
            kind: "job command",
        }),
    }
}

/// The quick commands (no running guard): uploads, the stored passphrase, the info.
fn small_command(
    shared: &Shared,
    ctx: &Context,
    now: Millis,
    cmd: BackupCommand,
) -> Result<BackupOutcome, BackupError> {
    let upload_slot = || {
        shared
            .upload
            .lock()
            .map_err(|_| BackupError::UploadStateLost)
    };
    match cmd {
        BackupCommand::UploadBegin { name } => {
            let mut slot = upload_slot()?;
            if let Some(old) = slot.take() {
                if old.is_abandoned() {
                    old.abort();
                } else {
                    *slot = Some(old);
                    return Err(upload::UploadError::Busy.into());
                }
            }
            let up = upload::Upload::begin(&ctx.dir(), name.as_deref(), now)?;
            let state = up.state();
            tracing::info!(upload = %state.id, "backup upload started");
            *slot = Some(up);
            Ok(BackupOutcome::Upload(state))
        }
        BackupCommand::UploadChunk { id, offset, data } => {
            let mut slot = upload_slot()?;
            let up = slot
                .as_mut()
                .filter(|u| u.id() == id)
                .ok_or_else(|| upload::UploadError::Unknown(id.clone()))?;
            match up.chunk(offset, &data) {
                Ok(state) => Ok(BackupOutcome::Upload(state)),
                Err(e @ (upload::UploadError::Offset { .. } | upload::UploadError::Chunk(_))) => {
                    Err(e.into())
                }
                Err(e) => {
                    // Full disk, too large, write error: the upload cannot go on.
                    if let Some(u) = slot.take() {
                        u.abort();
                    }
                    Err(e.into())
                }
            }
        }
        BackupCommand::UploadFinish { id, size, sha256 } => {
            let mut slot = upload_slot()?;
            if slot.as_ref().is_none_or(|u| u.id() != id) {
                return Err(upload::UploadError::Unknown(id).into());
            }
            let up = slot
                .take()
                .ok_or_else(|| upload::UploadError::Unknown(id.clone()))?;
            let (path, state) = up.finish(size, &sha256)?;
            // Only an age file is worth keeping.
            if let Err(why) = crypto::header_kind(&path) {
                let _ = std::fs::remove_file(&path);
                return Err(BackupError::NotAge(why));
            }
            Ok(BackupOutcome::Upload(state))
        }
        BackupCommand::UploadAbort { id } => {
            let mut slot = upload_slot()?;
            if slot.as_ref().is_some_and(|u| u.id() == id) {
                if let Some(u) = slot.take() {
                    u.abort();
                }
            }
            Ok(BackupOutcome::Done("upload abandoned".to_owned()))
        }
        BackupCommand::PassphraseSet { passphrase } => {
            secret::store(&ctx.data_dir, &passphrase.0)?;
            tracing::info!("backup passphrase stored");
            let note = match ctx.cfg.key_source(&ctx.data_dir) {
                KeySource::StoredPassphrase => String::new(),
                other => format!(
                    "; note: new backups use {other} ([backup] wins over the stored passphrase)"
                ),
            };
            Ok(BackupOutcome::Done(format!(
                "backup passphrase stored on the box (mode 0600){note}"
            )))
        }
        BackupCommand::PassphraseClear => {
            let had = secret::clear(&ctx.data_dir)?;
            tracing::info!("backup passphrase removed");
            Ok(BackupOutcome::Done(
                if had {
                    "the stored backup passphrase was removed"
                } else {
                    "no backup passphrase was stored"
                }
                .to_owned(),
            ))
        }
        BackupCommand::Info => Ok(BackupOutcome::Info(info(ctx))),
        BackupCommand::Read { file, offset, len } => {
            // Only what `list` shows: a partial upload or download is not a backup yet.
            if !file.ends_with(SUFFIX) {
                return Err(BackupError::Read(format!(
                    "{file:?} is not a backup name (*{SUFFIX} in the backup directory)"
                )));
            }
            crate::chunk::read_in_dir(&ctx.dir(), &file, offset, len)
                .map(BackupOutcome::Chunk)
                .map_err(|e| BackupError::Read(e.to_string()))
        }
        other => Err(BackupError::Misrouted {
            command: other.name(),
            kind: "quick command",
        }),
    }
}

/// `backup passphrase status`, and the console's question whether to offer a restore.
fn info(ctx: &Context) -> BackupInfo {
    let identity = ctx.sftp_identity();
    BackupInfo {
        key: ctx.cfg.key_source(&ctx.data_dir).to_string(),
        passphrase_stored: secret::is_set(&ctx.data_dir),
        sftp_public_key: std::fs::read_to_string(target::public_key_path(&identity))
            .ok()
            .map(|l| l.trim().to_owned())
            .filter(|l| crate::ssh::PublicKey::parse(l).is_ok()),
        never_configured: never_configured(&ctx.store, &ctx.data_dir).unwrap_or(false),
        hostname: ctx.hostname.clone(),
    }
}

/// Every target's backups.
async fn list_remote(ctx: &Context) -> Vec<RemoteListing> {
    let mut out = Vec::new();
    for t in &ctx.cfg.targets {
        let listed = target::list_remote(t, &ctx.data_dir).await;
        out.push(match listed {
            Ok(backups) => RemoteListing {
                target: t.name.clone(),
                backups,
                error: None,
            },
            Err(e) => RemoteListing {
                target: t.name.clone(),
                backups: Vec::new(),
                error: Some(e.to_string()),
            },
        });
    }
    out
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

    use pbx_core::cdr::{Cdr, Disposition};
    use pbx_core::sip::auth::StoredSecret;

    use super::*;
    use crate::store::{Batch, ExtensionRecord, StoredBan, StoredLock, VoicemailRecord};
    use crypto::HeaderKind;

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

    fn config(b: &Box1) -> BackupConfig {
        BackupConfig {
            passphrase_file: Some(b.pass_file.clone()),
            ..BackupConfig::default()
        }
    }

    /// What box `b` accepts when told to trust the signing key of box `signer`.
    fn trusting(b: &Box1, signer: &Box1) -> Policy {
        let line = signing::box_key(&signer.data).unwrap().public().line();
        config(b).policy(&b.data, Some(&line), false).unwrap()
    }

    /// Where the SSH host key of a box with data in `data` lives (the default `[ssh]`).
    fn host_key(data: &Path) -> PathBuf {
        crate::ssh::SshConfig::default().host_key_path(data)
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
            leg: Default::default(),
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
        Context {
            store: Arc::new(Store::open(&b.data).unwrap()),
            data_dir: b.data.clone(),
            cfg: config(b),
            ssh_host_key: host_key(&b.data),
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
        // B does not know A's key: refused, nothing staged; with A's key as signer it goes.
        let err = stage_restore(
            &b.data,
            &path,
            &key,
            &config(&b).policy(&b.data, None, false).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, BackupError::Unauthenticated(_)), "{err}");
        assert!(!b.data.join(STAGING_DIR).exists());
        let staged = stage_restore(&b.data, &path, &key, &trusting(&b, &a)).unwrap();
        assert_eq!(
            staged.signature.trusted_as.as_deref(),
            Some("the key given with --signer")
        );
        assert_eq!(
            Store::open(&b.data).unwrap().ext_count().unwrap(),
            1,
            "staging changes nothing yet"
        );
        let boot = "[sip]\n# the new box's boot file\n";
        let applied = apply_staged(&b.data, &host_key(&b.data), boot)
            .unwrap()
            .unwrap();
        assert_eq!(applied.cdrs, 250);
        assert!(!b.data.join(STAGING_DIR).exists());
        assert_eq!(
            apply_staged(&b.data, &host_key(&b.data), boot).unwrap(),
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
            let r = stage_restore(&b.data, &p, key, &trusting(&b, &a))
                .unwrap_err()
                .to_string();
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

    /// Decrypts `path` with the test passphrase, lets `edit` change or drop (`false`) each
    /// member, and writes the result re-encrypted with the same passphrase to `out`: what
    /// someone who knows the key but not the signing key can make.
    fn rewrite(path: &Path, out: &Path, mut edit: impl FnMut(&str, &mut Vec<u8>) -> bool) {
        use std::io::Write;
        let key = Decryption::passphrase(PASS).unwrap();
        let mut plain = Vec::new();
        key.open(std::fs::File::open(path).unwrap())
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        let mut ar = tar::Archive::new(plain.as_slice());
        let mut b = tar::Builder::new(Vec::new());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if !edit(&name, &mut data) {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, &name, data.as_slice()).unwrap();
        }
        let tar_bytes = b.into_inner().unwrap();
        let enc = crypto::Encryption::Passphrase(age::secrecy::SecretString::from(PASS.to_owned()));
        let mut w = enc.wrap(Vec::new()).unwrap();
        w.write_all(&tar_bytes).unwrap();
        std::fs::write(out, w.finish().unwrap()).unwrap();
    }

    #[test]
    fn forged_stripped_and_altered_backups_are_refused_unless_trusted_unsigned() {
        let a = new_box();
        populate(&a);
        let (_, path) = create(&context(&a), NOW).unwrap();
        let key = Decryption::passphrase(PASS).unwrap();
        // A's own backup restores on A without naming a signer.
        let own = config(&a).policy(&a.data, None, false).unwrap();
        let c = verify_trusted(&path, &key, &own).unwrap();
        assert_eq!(c.signature.trusted_as.as_deref(), Some("this box's key"));

        // Someone with the key (here the passphrase) but another signing key.
        let forger = new_box();
        populate(&forger);
        let (_, forged) = create(&context(&forger), NOW + 1000).unwrap();
        let stripped = a.data.join("stripped.backup");
        rewrite(&path, &stripped, |name, _| name != archive::MANIFEST_SIG);
        // A member swapped for the forger's and the manifest listing it anew.
        let swapped = a.data.join("swapped.backup");
        let evil_meta = br#"[{"key":"ssh_keys","text":"[\"ssh-ed25519 AAAAevil\"]"}]"#.to_vec();
        rewrite(&path, &swapped, |name, data| {
            if name == archive::META {
                *data = evil_meta.clone();
            }
            if name == archive::MANIFEST {
                let mut m: archive::Manifest = serde_json::from_slice(data).unwrap();
                let f = m
                    .files
                    .iter_mut()
                    .find(|f| f.path == archive::META)
                    .unwrap();
                use sha2::Digest;
                f.size = evil_meta.len() as u64;
                f.sha256 = hex::encode(sha2::Sha256::digest(&evil_meta));
                *data = serde_json::to_vec_pretty(&m).unwrap();
            }
            true
        });
        let b = new_box();
        for (file, expected) in [
            (&forged, "not this box's key"),
            (&stripped, "manifest.sig was removed"),
            (&swapped, "altered after it was signed"),
        ] {
            for policy in [own.clone(), trusting(&b, &a)] {
                let err = verify_trusted(file, &key, &policy).unwrap_err().to_string();
                assert!(
                    err.contains(expected) && err.contains("--trust-unsigned"),
                    "{err}"
                );
                let err = stage_restore(&b.data, file, &key, &policy).unwrap_err();
                assert!(matches!(err, BackupError::Unauthenticated(_)), "{err}");
                assert!(!b.data.join(STAGING_DIR).exists(), "nothing staged");
            }
        }
        // Told to trust it anyway: restored, and the admin sees an alert afterwards.
        let mut anyway = config(&b).policy(&b.data, None, true).unwrap();
        anyway.trust.allow_unsigned = true;
        let staged = stage_restore(&b.data, &swapped, &key, &anyway).unwrap();
        assert!(staged
            .signature
            .unauthenticated
            .as_deref()
            .is_some_and(|w| w.contains("altered")));
        apply_staged(&b.data, &host_key(&b.data), "")
            .unwrap()
            .unwrap();
        let store = Store::open(&b.data).unwrap();
        assert_eq!(
            store.meta_get("ssh_keys").unwrap().as_deref(),
            Some(&br#"["ssh-ed25519 AAAAevil"]"#[..])
        );
        let alerts = store.fw_alerts(100).unwrap();
        assert!(
            alerts
                .iter()
                .any(|al| al.message.contains("no trusted key signed")),
            "{alerts:?}"
        );
    }

    #[test]
    fn a_backup_over_the_total_cap_is_refused_and_nothing_staged() {
        let a = new_box();
        let wav = populate(&a);
        let (_, path) = create(&context(&a), NOW).unwrap();
        let key = Decryption::passphrase(PASS).unwrap();
        let mut policy = config(&a).policy(&a.data, None, false).unwrap();
        let total = verify_trusted(&path, &key, &policy).unwrap().total_bytes;
        assert!(total > wav.len() as u64, "{total}");
        policy.max_total = total - 1;
        let err = stage_restore(&a.data, &path, &key, &policy).unwrap_err();
        assert!(err.to_string().contains("too large to restore"), "{err}");
        assert!(!a.data.join(STAGING_DIR).exists());
        policy.max_total = total;
        stage_restore(&a.data, &path, &key, &policy).unwrap();
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
            ctx.cfg.own_decryption(&a.data, HeaderKind::Recipient),
            Err(BackupError::NeedIdentity)
        ));
        // A passphrase for a recipient backup, and the converse, are named precisely.
        let pass = Decryption::passphrase(PASS).unwrap();
        assert!(matches!(
            verify(&path, &pass),
            Err(BackupError::NeedIdentity)
        ));
        use age::secrecy::ExposeSecret;
        let key = Decryption::identity_text(id.to_string().expose_secret()).unwrap();
        assert_eq!(verify(&path, &key).unwrap().extensions, 2);
        let other = age::x25519::Identity::generate();
        let wrong = Decryption::identity_text(other.to_string().expose_secret()).unwrap();
        assert!(matches!(verify(&path, &wrong), Err(BackupError::WrongKey)));
        ctx.cfg.recipient = None;
        ctx.cfg.passphrase_file = Some(a.pass_file.clone());
        let (_, pass_path) = create(&ctx, NOW + 1000).unwrap();
        let err = verify(&pass_path, &key).unwrap_err();
        assert!(matches!(err, BackupError::NeedPassphrase), "{err}");
        assert!(err.to_string().contains("--passphrase"), "{err}");
    }

    #[test]
    fn a_backup_is_readable_with_standard_tools_layout() {
        // What docs/backup-format.md promises: age, then tar, the manifest with checksums and
        // its signature last.
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
        assert_eq!(
            names[names.len() - 2..],
            [archive::MANIFEST, archive::MANIFEST_SIG],
            "the manifest, then its signature, end the archive"
        );
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
