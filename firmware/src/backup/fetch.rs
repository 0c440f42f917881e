//! Fetching a backup onto the box: from an off-site target by name (or the newest), or from
//! an `sftp://` or `https://` URL (an SFTP host key must be confirmed first). The download
//! lands as `.partial`, is checked (fully with the box's key, else its age header) and only
//! then renamed into the backup directory.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Mutex;

use super::api::{BackupCommand, BackupOutcome};
use super::crypto::{self, HeaderKind};
use super::listing::{cache_good, CheckResult};
use super::{
    archive, parse_name, schedule, target, upload, verify, wall_now, BackupError, Context,
    FetchedBackup, PARTIAL_SUFFIX, SUFFIX,
};

/// Why `backup fetch` or a fetch from a URL failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The backup directory could not be created.
    #[error("cannot create {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The free space of the backup directory could not be read.
    #[error("{dir}: {source}")]
    FreeSpace {
        /// The directory.
        dir: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No target of that name.
    #[error("no backup target {0:?} (see [[backup.targets]] in `config show`)")]
    NoSuchTarget(String),
    /// No target at all.
    #[error("no off-site backup target is configured ([[backup.targets]])")]
    NoTarget,
    /// The target's listing failed.
    #[error("cannot list {target}: {source}")]
    List {
        /// The target's name.
        target: String,
        /// The underlying error.
        source: target::TargetError,
    },
    /// The target holds no backup.
    #[error("there is no backup on {0}")]
    Empty(String),
    /// The name is not a backup's.
    #[error("{0:?} is not the name of an Outpost backup")]
    NotABackupName(String),
    /// The URL is not understood.
    #[error("{0}")]
    Url(String),
    /// The server's host key could not be read.
    #[error("{0}")]
    LearnHostKey(target::TargetError),
    /// The confirmed host key does not parse.
    #[error("the host key: {0}")]
    HostKey(String),
    /// The download failed.
    #[error("cannot fetch {name} from {from}: {reason}")]
    Download {
        /// The file.
        name: String,
        /// The target or URL.
        from: String,
        /// Why.
        reason: String,
    },
    /// The check of the download died.
    #[error("the check failed: {0}")]
    Check(String),
    /// The downloaded file is damaged (it was deleted).
    #[error("{name} from {from} is damaged: {reason}")]
    Damaged {
        /// The file.
        name: String,
        /// The target or URL.
        from: String,
        /// Why.
        reason: String,
    },
    /// The download could not be renamed into place.
    #[error("cannot rename {path}: {source}")]
    Rename {
        /// The partial file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A command that is not a fetch reached the fetcher (a bug in the dispatch).
    #[error("{0} is not a fetch")]
    NotAFetch(&'static str),
}

/// `backup fetch` and the console's fetch from a URL: downloads into the backup
/// directory (as `.partial`, renamed when complete and checked).
pub(super) async fn fetch(
    checks: &Mutex<BTreeMap<String, CheckResult>>,
    ctx: &Context,
    cmd: BackupCommand,
) -> Result<BackupOutcome, FetchError> {
    let dir = ctx.dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| FetchError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })?;
    let free = upload::free_space(&dir).map_err(|source| FetchError::FreeSpace {
        dir: dir.display().to_string(),
        source,
    })?;
    let max = free.saturating_sub(upload::RESERVE).min(upload::MAX_UPLOAD);
    let (source, name, partial, size) = match cmd {
        BackupCommand::Fetch { name, target } => {
            let t = match &target {
                Some(n) => ctx
                    .cfg
                    .targets
                    .iter()
                    .find(|t| t.name == *n)
                    .ok_or_else(|| FetchError::NoSuchTarget(n.clone()))?,
                None => ctx.cfg.targets.first().ok_or(FetchError::NoTarget)?,
            };
            let name = match name {
                Some(n) => n,
                None => target::list_remote(t, &ctx.data_dir)
                    .await
                    .map_err(|source| FetchError::List {
                        target: t.name.clone(),
                        source,
                    })?
                    .into_iter()
                    .next()
                    .map(|f| f.name)
                    .ok_or_else(|| FetchError::Empty(t.name.clone()))?,
            };
            if parse_name(&name).is_none() {
                return Err(FetchError::NotABackupName(name));
            }
            if dir.join(&name).is_file() {
                return finish_fetch(checks, ctx, t.name.clone(), &name, None).await;
            }
            let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
            let _ = std::fs::remove_file(&partial);
            let got = target::fetch(t, &ctx.data_dir, &name, &partial, max).await;
            (t.name.clone(), name, partial, got)
        }
        BackupCommand::FetchUrl { url, host_key } => {
            let (kind, name) = target::parse_file_url(&url).map_err(FetchError::Url)?;
            let name = if parse_name(&name).is_some() && !dir.join(&name).exists() {
                name
            } else {
                format!(
                    "outpost-fetched-{}{SUFFIX}",
                    schedule::file_stamp(wall_now())
                )
            };
            let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
            let _ = std::fs::remove_file(&partial);
            let got = match kind {
                target::FileUrl::Sftp { mut target, file } => match host_key {
                    None => {
                        let line = target::learn_host_key(&target, &ctx.data_dir)
                            .await
                            .map_err(FetchError::LearnHostKey)?;
                        let fingerprint = crate::ssh::PublicKey::parse(&line)
                            .map(|k| k.fingerprint())
                            .unwrap_or_default();
                        return Ok(BackupOutcome::HostKey { line, fingerprint });
                    }
                    Some(key) => {
                        crate::ssh::PublicKey::parse(&key)
                            .map_err(|e| FetchError::HostKey(e.to_string()))?;
                        target.host_key = key;
                        target::fetch_sftp_file(&target, &ctx.data_dir, &file, &partial, max).await
                    }
                },
                target::FileUrl::Https { url } => {
                    target::fetch_https_url(&url, &partial, max).await
                }
            };
            (url, name, partial, got)
        }
        other => return Err(FetchError::NotAFetch(other.name())),
    };
    match size {
        Ok(_) => {}
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Download {
                name,
                from: source,
                reason: e.to_string(),
            });
        }
    }
    finish_fetch(checks, ctx, source, &name, Some(partial)).await
}

/// Checks a fetched file (fully when the box has its key, else its age header) and renames
/// it into place; a damaged download is deleted.
async fn finish_fetch(
    checks: &Mutex<BTreeMap<String, CheckResult>>,
    ctx: &Context,
    source: String,
    name: &str,
    partial: Option<PathBuf>,
) -> Result<BackupOutcome, FetchError> {
    let dir = ctx.dir();
    let final_path = dir.join(name);
    let already_here = partial.is_none();
    let checked = partial.clone().unwrap_or_else(|| final_path.clone());
    let job_ctx = ctx.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(String, bool, u64), String> {
        let kind = crypto::header_kind(&checked).map_err(|e| BackupError::NotAge(e).to_string())?;
        let verified = match job_ctx.cfg.own_decryption(&job_ctx.data_dir, kind) {
            Ok(key) => match verify(&checked, &key) {
                Ok(_) => true,
                // Not this box's passphrase: restoring will need the right one.
                Err(BackupError::WrongKey) => false,
                Err(e) => return Err(e.to_string()),
            },
            Err(_) => false,
        };
        let size = std::fs::metadata(&checked)
            .map_err(|e| e.to_string())?
            .len();
        Ok((
            match kind {
                HeaderKind::Passphrase => "passphrase".to_owned(),
                HeaderKind::Recipient => "X25519 recipient".to_owned(),
            },
            verified,
            size,
        ))
    })
    .await
    .map_err(|e| FetchError::Check(e.to_string()))?;
    let (encrypted_to, verified, size) = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = &partial {
                let _ = std::fs::remove_file(p);
            }
            return Err(FetchError::Damaged {
                name: name.to_owned(),
                from: source,
                reason: e,
            });
        }
    };
    if let Some(p) = &partial {
        std::fs::rename(p, &final_path).map_err(|source| FetchError::Rename {
            path: p.display().to_string(),
            source,
        })?;
        let _ = archive::sync_dir(&dir);
    }
    if verified {
        cache_good(checks, &final_path);
    }
    tracing::info!(file = %name, %source, size, verified, "backup fetched");
    Ok(BackupOutcome::Fetched(FetchedBackup {
        name: name.to_owned(),
        size,
        source,
        encrypted_to,
        verified,
        already_here,
    }))
}
