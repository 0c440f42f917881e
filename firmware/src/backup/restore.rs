//! Restoring: [`verify`] decrypts and checks a backup without writing anything;
//! [`stage_restore`] checks it into `<data_dir>/restore/` and marks it ready; [`apply_staged`]
//! imports it at the next start, before anything opens the data (a crash during the import
//! repeats it); [`restore_offline`] does both while no daemon runs.

use std::io::{BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use pbx_core::cdr::Cdr;
use pbx_core::Millis;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreImport, VoicemailRecord};

use super::archive::{self, Contents};
use super::create::read_bounded;
use super::crypto::{self, Decryption, HeaderKind};
use super::signing::{Seal, SignatureCheck, Trust};
use super::{io_err, schedule, target, wall_now, BackupError};

/// What a restore (or a trusted verify) accepts: the signers it trusts and the most the
/// members of a backup may add up to.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The keys whose signature authenticates a backup, and `--trust-unsigned`.
    pub trust: Trust,
    /// Cap on the sum of the members' sizes.
    pub max_total: u64,
}

/// The staging directory of a restore, under the data directory.
pub const STAGING_DIR: &str = "restore";
/// Written last into the staging directory: the restore is complete and checked.
const READY_MARKER: &str = "READY";
/// The staged restore's id (written before [`READY_MARKER`]).
const ID_FILE: &str = "ID";
/// The record of the last restore applied, under the data directory.
const LAST_RESTORE: &str = "last-restore.json";

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
    let mut input = std::io::BufReader::with_capacity(256 * 1024, file);
    // The header tells a passphrase file from a recipient one: a key of the other kind is
    // named as such rather than reported as a wrong key.
    let kind = {
        use std::io::Seek;
        let k = crypto::header_kind_of(&mut input);
        input
            .seek(std::io::SeekFrom::Start(0))
            .map_err(io_err("read", path))?;
        k.map_err(BackupError::NotAge)?
    };
    match (kind, key.kind()) {
        (HeaderKind::Recipient, HeaderKind::Passphrase) => return Err(BackupError::NeedIdentity),
        (HeaderKind::Passphrase, HeaderKind::Recipient) => return Err(BackupError::NeedPassphrase),
        _ => {}
    }
    key.open(input).map_err(|e| match e {
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

/// Decrypts `path` and checks its integrity completely (not who signed it: the signer is
/// reported, see [`verify_trusted`]); changes nothing anywhere.
pub fn verify(path: &Path, key: &Decryption) -> Result<Contents, BackupError> {
    let reader = open_decrypted(path, key)?;
    let checked = archive::check(reader, None, archive::MAX_TOTAL)?;
    let mut contents = checked.contents;
    contents.signature = match checked.seal {
        Seal::Signed(k) => SignatureCheck {
            signer: Some(k.line()),
            fingerprint: Some(k.fingerprint()),
            ..SignatureCheck::default()
        },
        Seal::Unsigned(why) => SignatureCheck {
            unauthenticated: Some(why),
            ..SignatureCheck::default()
        },
    };
    Ok(contents)
}

/// [`verify`], and the backup must be signed by a key `policy` trusts (or the policy
/// allows unsigned ones) and within its total size.
pub fn verify_trusted(
    path: &Path,
    key: &Decryption,
    policy: &Policy,
) -> Result<Contents, BackupError> {
    let reader = open_decrypted(path, key)?;
    let checked = archive::check(reader, None, policy.max_total)?;
    judge(checked, policy)
}

/// The trust decision on a checked archive.
fn judge(checked: archive::Checked, policy: &Policy) -> Result<Contents, BackupError> {
    let mut contents = checked.contents;
    contents.signature = policy
        .trust
        .judge(&checked.seal)
        .map_err(BackupError::Unauthenticated)?;
    if let Some(why) = &contents.signature.unauthenticated {
        tracing::warn!(
            hostname = %contents.hostname,
            created = %schedule::rfc3339(contents.created_ms),
            reason = %why,
            "accepting a backup that no trusted key signed (--trust-unsigned)"
        );
    }
    Ok(contents)
}

/// Decrypts and checks `path` (integrity, signer, total size) into `<data_dir>/restore/`
/// and marks it ready for [`apply_staged`]. On any error the staging directory is removed
/// and nothing else has changed.
pub fn stage_restore(
    data_dir: &Path,
    path: &Path,
    key: &Decryption,
    policy: &Policy,
) -> Result<Contents, BackupError> {
    stage_restore_as(data_dir, path, key, policy, "").map(|(c, _)| c)
}

/// [`stage_restore`] under a new random restore id, returned with the contents; the
/// daemon reports the id in `status` once it has applied the restore.
pub fn stage_restore_with_id(
    data_dir: &Path,
    path: &Path,
    key: &Decryption,
    policy: &Policy,
) -> Result<(Contents, String), BackupError> {
    let id = hex::encode(rand::random::<[u8; 8]>());
    stage_restore_as(data_dir, path, key, policy, &id)
}

fn stage_restore_as(
    data_dir: &Path,
    path: &Path,
    key: &Decryption,
    policy: &Policy,
    id: &str,
) -> Result<(Contents, String), BackupError> {
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
        // Staged before the signer is judged (the signature is the last member), but the
        // READY marker is written only after: a refused backup is removed unapplied.
        let checked = archive::check(reader, Some(&staging), policy.max_total)?;
        let contents = judge(checked, policy)?;
        let id_path = staging.join(ID_FILE);
        std::fs::write(&id_path, id).map_err(io_err("write", &id_path))?;
        archive::sync_file(&id_path).map_err(io_err("sync", &id_path))?;
        let marker = staging.join(READY_MARKER);
        let json = serde_json::to_vec_pretty(&contents).unwrap_or_default();
        std::fs::write(&marker, json).map_err(io_err("write", &marker))?;
        archive::sync_file(&marker).map_err(io_err("sync", &marker))?;
        archive::sync_dir(&staging).map_err(io_err("sync", &staging))?;
        Ok((contents, id.to_owned()))
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
    data_dir: &Path,
    ssh_host_key: &Path,
    boot_text: &str,
) -> Result<Option<Contents>, BackupError> {
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
        // A backup made before phones were backed up has none: the store keeps those of
        // the box's own that still register.
        phones: if contents.carries_phones() {
            Some(staged_doc(&staging, archive::PHONES)?)
        } else {
            None
        },
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
        // After the import, which replaces the alerts: the admin sees it in `fw alerts`.
        if let Some(why) = &contents.signature.unauthenticated {
            let message = format!(
                "restored a backup of {} made {} that no trusted key signed (--trust-unsigned): {why}",
                contents.hostname,
                schedule::rfc3339(contents.created_ms)
            );
            tracing::warn!("{message}");
            super::raise_alert(&store, message);
        }
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

    // Secrets: the TLS identity, the SSH host key and the SFTP client key (always to the
    // default path: a target with its own `identity` keeps its file).
    let sftp = target::default_identity_path(data_dir);
    let copies = [
        ("tls/cert.pem", data_dir.join("tls").join("cert.pem")),
        ("tls/key.pem", data_dir.join("tls").join("key.pem")),
        ("ssh/dropbear_ed25519_host_key", ssh_host_key.to_path_buf()),
        (archive::SFTP_KEY, sftp.clone()),
        (archive::SFTP_KEY_PUB, target::public_key_path(&sftp)),
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

    // What `status` reports from now on (written before the marker goes, so a crash
    // repeats the import and rewrites it).
    let record = LastRestore {
        id: std::fs::read_to_string(staging.join(ID_FILE)).unwrap_or_default(),
        applied_ms: wall_now(),
        contents: contents.clone(),
    };
    let record_path = data_dir.join(LAST_RESTORE);
    let tmp = data_dir.join(format!("{LAST_RESTORE}.new"));
    let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    std::fs::write(&tmp, json).map_err(io_err("write", &tmp))?;
    archive::sync_file(&tmp).map_err(io_err("sync", &tmp))?;
    std::fs::rename(&tmp, &record_path).map_err(io_err("rename", &tmp))?;
    archive::sync_dir(data_dir).map_err(io_err("sync", data_dir))?;

    std::fs::remove_file(&marker).map_err(io_err("remove", &marker))?;
    archive::sync_dir(&staging).map_err(io_err("sync", &staging))?;
    std::fs::remove_dir_all(&staging).map_err(io_err("remove", &staging))?;
    tracing::warn!(
        extensions = contents.extensions,
        cdrs = contents.cdrs,
        voicemail = contents.voicemail,
        phones = contents.phones,
        "backup restored"
    );
    Ok(Some(contents))
}

/// The last restore applied to this data directory (`status`, and the console's test of a
/// box that was never configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRestore {
    /// The id `backup restore` returned (empty for `outpostd --restore`).
    pub id: String,
    /// When it was applied (ms since the epoch).
    pub applied_ms: Millis,
    /// What it restored.
    pub contents: Contents,
}

/// The last restore applied to `data_dir`, if any.
pub fn last_restore(data_dir: &Path) -> Option<LastRestore> {
    let bytes = read_bounded(&data_dir.join(LAST_RESTORE), 1024 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A box that was never configured: no extension, no configuration revision beyond the
/// one the boot file made, and no restore ever applied. The console offers a restore then.
pub fn never_configured(store: &Store, data_dir: &Path) -> Result<bool, BackupError> {
    if store.ext_count()? > 0 || last_restore(data_dir).is_some() {
        return Ok(false);
    }
    let revisions = match std::fs::read(data_dir.join("config").join("revisions.json")) {
        Ok(bytes) => serde_json::from_slice::<Vec<serde_json::Value>>(&bytes)
            .map(|v| v.len())
            .unwrap_or(usize::MAX),
        Err(_) => 0,
    };
    Ok(revisions <= 1)
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

/// `outpostd --restore`: restores `file` into `data_dir` (the SSH host key to
/// `ssh_host_key`) while no daemon runs (refused if one holds the store).
pub fn restore_offline(
    data_dir: &Path,
    ssh_host_key: &Path,
    boot_text: &str,
    file: &Path,
    key: &Decryption,
    policy: &Policy,
) -> Result<Contents, BackupError> {
    // Fails when a running daemon holds the database: nothing is staged then.
    drop(Store::open(data_dir)?);
    stage_restore(data_dir, file, key, policy)?;
    match apply_staged(data_dir, ssh_host_key, boot_text) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(BackupError::NotFound(file.display().to_string())),
        Err(e) => {
            let _ = std::fs::remove_dir_all(data_dir.join(STAGING_DIR));
            Err(e)
        }
    }
}
