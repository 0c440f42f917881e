//! Making a backup: every record, file and secret of the box written as one age-encrypted
//! tar (`docs/backup-format.md`) to `<dir>/outpost-<host>-<stamp>.backup.partial`, fsynced
//! and renamed into place, so a crash leaves only a `.partial` file that is never listed.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use pbx_core::cdr::Cdr;
use pbx_core::Millis;
use serde::Serialize;

use super::archive::{self, ArchiveWriter};
use super::crypto::Encryption;
use super::{io_err, schedule, target, BackupEntry, BackupError, Context, PARTIAL_SUFFIX, SUFFIX};

/// Largest voicemail file put into a backup (longer messages cannot be recorded anyway).
const MAX_BACKUP_AUDIO: u64 = 256 * 1024 * 1024;

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
    let encryption = ctx.cfg.encryption(&ctx.data_dir)?;
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
            damaged: None,
            verified: true,
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
    // The phones with the SIP passwords they are served, in clear (the box cannot derive
    // them from the extensions' digests): a secret member, like the digests.
    ar.add(archive::PHONES, &json(&snap.phones()?)?, true)
        .map_err(wr)?;

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
            || crate::names::validate_ext(&msg.mailbox).is_err()
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
    // The SFTP client key, so a restored box uploads at once (the server knows it).
    let sftp = ctx.sftp_identity();
    if let (Ok(key), Ok(public)) = (
        read_bounded(&sftp, 64 * 1024),
        read_bounded(&target::public_key_path(&sftp), 64 * 1024),
    ) {
        ar.add(archive::SFTP_KEY, &key, true).map_err(wr)?;
        ar.add(archive::SFTP_KEY_PUB, &public, false).map_err(wr)?;
    }

    let key = super::signing::box_key(&ctx.data_dir)?;
    let (sealed, _manifest) = ar.finish(now, &ctx.hostname, &key).map_err(wr)?;
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

pub(super) fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    /// 2024-05-01T02:30:00Z.
    const NOW: Millis = 1_714_530_600_000;

    #[test]
    fn backup_names_carry_the_time_and_nothing_else_parses() {
        assert_eq!(parse_name("outpost-a-b-20240501T023000Z.backup"), Some(NOW));
        for bad in [
            "outpost-20240501T023000Z.backup",
            "outpost-x-20240501T023000Z.backup.partial",
            "other-x-20240501T023000Z.backup",
            "outpost-x-2024050AT023000Z.backup",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
