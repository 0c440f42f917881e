//! The backup directory as a list: the files whose header reads (newest first), the
//! interrupted and the damaged ones, a bounded cache of full checks made with the box's own
//! key, the newest backup's age and retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use pbx_core::Millis;

use super::crypto::{self, Decryption, HeaderKind};
use super::{
    parse_name, schedule, verify, BackupConfig, BackupEntry, BackupError, Context, PARTIAL_SUFFIX,
};

/// The backups in `dir` whose age header reads, newest first, the count of incomplete
/// (`.partial`) files, and the files named like backups that are not age files (marked
/// damaged).
pub fn scan(dir: &Path) -> (Vec<BackupEntry>, usize, Vec<BackupEntry>) {
    let mut good = Vec::new();
    let mut unreadable = Vec::new();
    let mut incomplete = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (good, 0, unreadable);
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
        match crypto::header_kind(&e.path()) {
            Ok(kind) => good.push(BackupEntry {
                name,
                size: meta.len(),
                created_ms,
                encrypted_to: match kind {
                    HeaderKind::Passphrase => "passphrase".to_string(),
                    HeaderKind::Recipient => "X25519 recipient".to_string(),
                },
                damaged: None,
                verified: false,
            }),
            Err(why) => unreadable.push(BackupEntry {
                name,
                size: meta.len(),
                created_ms,
                encrypted_to: String::new(),
                damaged: Some(format!("not an age file ({why})")),
                verified: false,
            }),
        }
    }
    let newest_first = |a: &BackupEntry, b: &BackupEntry| {
        b.created_ms.cmp(&a.created_ms).then(b.name.cmp(&a.name))
    };
    good.sort_by(newest_first);
    unreadable.sort_by(newest_first);
    (good, incomplete, unreadable)
}

/// What a full check of one backup file found, cached by name, size and modification
/// time so a listing decrypts each file once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CheckResult {
    size: u64,
    mtime: Option<std::time::SystemTime>,
    /// `None`: the file is good.
    damaged: Option<String>,
}

/// Most files whose check results are remembered.
const MAX_CHECK_CACHE: usize = 4096;
/// Time a listing may spend decrypting files not checked before; the rest are checked
/// by the next listing.
const LIST_CHECK_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

/// Marks the entries of a listing as verified or damaged: each file the box has the key
/// for (a passphrase file and the box's passphrase) is decrypted and checked once; the
/// result is cached by name, size and mtime.
pub(super) fn check_listing(
    cache: &Mutex<BTreeMap<String, CheckResult>>,
    ctx: &Context,
    entries: &mut [BackupEntry],
) {
    let dir = ctx.dir();
    let passphrase = ctx.cfg.own_passphrase(&ctx.data_dir).ok().flatten();
    let started = std::time::Instant::now();
    for entry in entries.iter_mut() {
        if entry.encrypted_to != "passphrase" {
            continue;
        }
        let Some(pass) = &passphrase else { continue };
        let path = dir.join(&entry.name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let (size, mtime) = (meta.len(), meta.modified().ok());
        let cached = cache
            .lock()
            .ok()
            .and_then(|c| c.get(&entry.name).cloned())
            .filter(|r| r.size == size && r.mtime == mtime);
        let result = match cached {
            Some(r) => r,
            None if started.elapsed() < LIST_CHECK_BUDGET => {
                let key = Decryption::Passphrase(pass.clone());
                let damaged = match verify(&path, &key) {
                    Ok(_) => None,
                    // Another box's passphrase: not damaged, just not ours to check.
                    Err(BackupError::WrongKey) => continue,
                    Err(e) => Some(e.to_string()),
                };
                let r = CheckResult {
                    size,
                    mtime,
                    damaged,
                };
                if let Ok(mut c) = cache.lock() {
                    if c.len() >= MAX_CHECK_CACHE {
                        c.clear();
                    }
                    c.insert(entry.name.clone(), r.clone());
                }
                r
            }
            None => continue,
        };
        entry.verified = result.damaged.is_none();
        entry.damaged = result.damaged;
    }
}

/// Remembers a file just written or checked as good.
pub(super) fn cache_good(cache: &Mutex<BTreeMap<String, CheckResult>>, path: &Path) {
    let (Some(name), Ok(meta)) = (path.file_name(), std::fs::metadata(path)) else {
        return;
    };
    if let Ok(mut c) = cache.lock() {
        if c.len() >= MAX_CHECK_CACHE {
            c.clear();
        }
        c.insert(
            name.to_string_lossy().into_owned(),
            CheckResult {
                size: meta.len(),
                mtime: meta.modified().ok(),
                damaged: None,
            },
        );
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::io::Write;

    use super::*;
    use crate::backup::crypto::Encryption;
    use crate::backup::file_name;

    /// 2024-05-01T02:30:00Z.
    const NOW: Millis = 1_714_530_600_000;
    const PASS: &str = "correct horse battery staple";

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
}
