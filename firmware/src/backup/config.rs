//! `[backup]`: where backups go, when they run, what they keep, the key they are encrypted
//! with (a passphrase file, an age recipient or the passphrase stored on the box) and the
//! off-site targets, the signers a restore trusts and the most it restores. Checked on load;
//! the key source is resolved here and nowhere else.
//!
//! Every credential file `[backup]` names (`passphrase_file`, a target's `password_file`
//! and `identity`) must lie under the data directory, checked on the box after resolving
//! links: `config apply` may come from a compromised admin session, and a file named here
//! is read by the daemon and sent (a password to a URL the same config names) or copied
//! into a backup (the SFTP identity). A target's `ca` holds public certificates that are
//! only read as trust roots, never sent, so it may live anywhere (e.g. `/etc/ssl`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::archive;
use super::crypto::{self, Decryption, Encryption, HeaderKind};
use super::restore::Policy;
use super::schedule::Schedule;
use super::{secret, signing, target, BackupError, DEFAULT_DIR};

/// Smallest `restore_max_bytes` accepted (an empty box's backup is a few KiB).
const MIN_RESTORE_BYTES: u64 = 1024 * 1024;

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
    /// Backup-signing public keys whose backups a restore accepts besides this box's own
    /// (`outpost-backup-ed25519 <base64> [comment]`, as `outpostctl backup key` prints).
    pub trusted_keys: Vec<String>,
    /// Most bytes the members of a backup may add up to for a restore to accept it.
    pub restore_max_bytes: u64,
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
            trusted_keys: Vec::new(),
            restore_max_bytes: archive::MAX_TOTAL,
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
        if schedule != Schedule::Off && self.keep_daily == 0 && self.keep_weekly == 0 {
            return bad(
                "keep_daily",
                "keep_daily and keep_weekly cannot both be 0".into(),
            );
        }
        if self.keep_daily > 3660 {
            return bad("keep_daily", "must be at most 3660".into());
        }
        if self.keep_weekly > 520 {
            return bad("keep_weekly", "must be at most 520".into());
        }
        if self.trusted_keys.len() > signing::MAX_TRUSTED_KEYS {
            return bad(
                "trusted_keys",
                format!("at most {} keys", signing::MAX_TRUSTED_KEYS),
            );
        }
        for (i, line) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = signing::PublicKey::parse(line) {
                return bad(&format!("trusted_keys[{i}]"), e.to_string());
            }
        }
        if !(MIN_RESTORE_BYTES..=archive::MAX_TOTAL).contains(&self.restore_max_bytes) {
            return bad(
                "restore_max_bytes",
                format!(
                    "must be between {MIN_RESTORE_BYTES} (1 MiB) and {} (8 GiB)",
                    archive::MAX_TOTAL
                ),
            );
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

    /// The checks that need the box itself (config apply and boot, after [`check`]): the
    /// key files exist, and a schedule has a key (a file, a recipient or the passphrase
    /// stored with `outpostctl backup passphrase set`).
    ///
    /// [`check`]: BackupConfig::check
    pub fn check_on_box(&self, data_dir: &Path) -> Result<(), (String, String)> {
        for (key, path) in self.credential_files() {
            under_data_dir(path, data_dir).map_err(|reason| (key, reason))?;
        }
        if let Some(p) = &self.passphrase_file {
            if !p.is_file() {
                return Err((
                    "backup.passphrase_file".to_owned(),
                    format!(
                        "{} does not exist on the box; store the passphrase with `outpostctl backup passphrase set` instead and remove this key",
                        p.display()
                    ),
                ));
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let target::TargetKind::Https(h) = &t.kind {
                if !h.password_file.is_file() {
                    return Err((
                        format!("backup.targets[{i}].password_file"),
                        format!("{} does not exist on the box", h.password_file.display()),
                    ));
                }
            }
        }
        if self.schedule() != Schedule::Off && self.key_source(data_dir) == KeySource::None {
            return Err((
                "backup.schedule".to_owned(),
                "backups are always encrypted: store a passphrase with `outpostctl backup passphrase set`, or set backup.passphrase_file or backup.recipient".to_owned(),
            ));
        }
        Ok(())
    }

    /// Every credential file the section names, with its dotted key.
    fn credential_files(&self) -> Vec<(String, &Path)> {
        let mut files = Vec::new();
        if let Some(p) = &self.passphrase_file {
            files.push(("backup.passphrase_file".to_owned(), p.as_path()));
        }
        for (i, t) in self.targets.iter().enumerate() {
            match &t.kind {
                target::TargetKind::Https(h) => files.push((
                    format!("backup.targets[{i}].password_file"),
                    h.password_file.as_path(),
                )),
                target::TargetKind::Sftp(s) => {
                    if let Some(id) = &s.identity {
                        files.push((format!("backup.targets[{i}].identity"), id.as_path()));
                    }
                }
            }
        }
        files
    }

    /// Where the key of new backups comes from: `passphrase_file`, else `recipient`, else
    /// the passphrase stored on the box.
    pub fn key_source(&self, data_dir: &Path) -> KeySource {
        match (&self.passphrase_file, &self.recipient) {
            (Some(p), _) => KeySource::PassphraseFile(p.clone()),
            (None, Some(r)) => KeySource::Recipient(r.clone()),
            (None, None) if secret::is_set(data_dir) => KeySource::StoredPassphrase,
            (None, None) => KeySource::None,
        }
    }

    /// The passphrase the box holds: `passphrase_file`, else the stored one.
    pub(super) fn own_passphrase(
        &self,
        data_dir: &Path,
    ) -> Result<Option<age::secrecy::SecretString>, BackupError> {
        match &self.passphrase_file {
            Some(p) => Ok(Some(crypto::read_passphrase_file(p)?)),
            None => Ok(secret::read(data_dir)?),
        }
    }

    /// What a restore or verify accepts: this box's signing key (made when missing),
    /// `trusted_keys`, the command's `signer`; unsigned backups only with
    /// `trust_unsigned`; at most `restore_max_bytes`.
    pub fn policy(
        &self,
        data_dir: &Path,
        signer: Option<&str>,
        trust_unsigned: bool,
    ) -> Result<Policy, BackupError> {
        let mut trust = signing::Trust::default();
        trust.add(
            signing::box_key(data_dir)?.public(),
            signing::TrustSource::ThisBox,
        );
        for line in &self.trusted_keys {
            trust.add(
                signing::PublicKey::parse(line)?,
                signing::TrustSource::Config,
            );
        }
        if let Some(line) = signer {
            trust.add(
                signing::PublicKey::parse(line)?,
                signing::TrustSource::Signer,
            );
        }
        trust.allow_unsigned = trust_unsigned;
        Ok(Policy {
            trust,
            max_total: self.restore_max_bytes,
        })
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

    /// How new backups are encrypted (reads the passphrase file), per [`key_source`].
    ///
    /// [`key_source`]: BackupConfig::key_source
    pub fn encryption(&self, data_dir: &Path) -> Result<Encryption, BackupError> {
        match self.key_source(data_dir) {
            KeySource::PassphraseFile(p) => {
                Ok(Encryption::Passphrase(crypto::read_passphrase_file(&p)?))
            }
            KeySource::Recipient(r) => Ok(Encryption::recipient(&r)?),
            KeySource::StoredPassphrase => match secret::read(data_dir)? {
                Some(p) => Ok(Encryption::Passphrase(p)),
                None => Err(BackupError::NoKey),
            },
            KeySource::None => Err(BackupError::NoKey),
        }
    }

    /// The key the daemon can decrypt a file of `kind` with by itself: its passphrase
    /// (`passphrase_file`, else the stored one); an identity is never on the box.
    pub fn own_decryption(
        &self,
        data_dir: &Path,
        kind: HeaderKind,
    ) -> Result<Decryption, BackupError> {
        match kind {
            HeaderKind::Recipient => Err(BackupError::NeedIdentity),
            HeaderKind::Passphrase => match self.own_passphrase(data_dir)? {
                Some(p) => Ok(Decryption::Passphrase(p)),
                None => Err(BackupError::NeedKey),
            },
        }
    }
}

/// Where the key of new backups comes from (`outpostctl backup passphrase status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `[backup] passphrase_file`.
    PassphraseFile(PathBuf),
    /// `[backup] recipient`.
    Recipient(String),
    /// The passphrase stored with `outpostctl backup passphrase set`.
    StoredPassphrase,
    /// None: backups cannot be made.
    None,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::PassphraseFile(p) => write!(f, "passphrase file {}", p.display()),
            KeySource::Recipient(r) => write!(f, "recipient {r}"),
            KeySource::StoredPassphrase => write!(f, "the passphrase stored on the box"),
            KeySource::None => write!(f, "none"),
        }
    }
}

/// Checks that the credential file `path` is, after resolving every link that exists,
/// inside `data_dir` (which need not exist yet). The file itself need not exist (an SFTP
/// identity is made at first use); the part that does not exist may not hold `..`.
fn under_data_dir(path: &Path, data_dir: &Path) -> Result<(), String> {
    use std::path::Component;
    let shown = path.display();
    let root = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let outside = |resolved: Option<&Path>| {
        let via = resolved
            .filter(|r| *r != path)
            .map(|r| format!(" (it resolves to {})", r.display()))
            .unwrap_or_default();
        format!(
            "{shown} is outside the data directory {}{via}: credential files must be under it, e.g. {}",
            root.display(),
            root.join("secrets").join(path.file_name().unwrap_or_default()).display()
        )
    };
    if !path.is_absolute() {
        return Err(format!(
            "{shown} must be an absolute path under the data directory {}",
            root.display()
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("{shown} may not contain `.` or `..` components"));
    }
    // The longest part of the path that exists, with its links resolved, then the rest.
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(&existing) {
            Ok(real) => break real,
            Err(_) => match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => return Err(outside(None)),
            },
        }
    };
    let full = rest.iter().rev().fold(resolved, |p, c| p.join(c));
    if full == root || !full.starts_with(&root) {
        return Err(outside(Some(&full)));
    }
    Ok(())
}

/// The SFTP client key of `cfg`: the first SFTP target's `identity`, else the default
/// `<data_dir>/backup/id_ed25519`.
pub fn sftp_identity(cfg: &BackupConfig, data_dir: &Path) -> PathBuf {
    cfg.targets
        .iter()
        .find_map(|t| match &t.kind {
            target::TargetKind::Sftp(s) => Some(target::identity_path(s, data_dir)),
            target::TargetKind::Https(_) => None,
        })
        .unwrap_or_else(|| target::default_identity_path(data_dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn the_section_is_checked_and_names_its_key() {
        let ok = BackupConfig::default();
        ok.check().unwrap();
        let mut c = BackupConfig {
            schedule: "daily 02:30".into(),
            ..BackupConfig::default()
        };
        c.check().unwrap();
        let data = tempfile::tempdir().unwrap();
        assert_eq!(
            c.check_on_box(data.path()).unwrap_err().0,
            "backup.schedule",
            "a schedule needs a key"
        );
        secret::store(data.path(), "a stored passphrase").unwrap();
        c.check_on_box(data.path()).unwrap();
        assert_eq!(c.key_source(data.path()), KeySource::StoredPassphrase);
        c.passphrase_file = Some(data.path().join("missing.pass"));
        let (key, reason) = c.check_on_box(data.path()).unwrap_err();
        assert_eq!(key, "backup.passphrase_file");
        assert!(reason.contains("does not exist"), "{reason}");
        c.passphrase_file = None;
        assert_eq!(
            c.policy(data.path(), None, false).unwrap().max_total,
            archive::MAX_TOTAL
        );
        c.restore_max_bytes = 1000;
        assert_eq!(c.check().unwrap_err().0, "backup.restore_max_bytes");
        c.restore_max_bytes = archive::MAX_TOTAL;
        c.trusted_keys = vec!["ssh-ed25519 AAAA".into()];
        assert_eq!(c.check().unwrap_err().0, "backup.trusted_keys[0]");
        c.trusted_keys = vec![signing::box_key(data.path()).unwrap().public().line()];
        c.check().unwrap();
        c.passphrase_file = None;
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
        let parsed: BackupConfig = toml::from_str(
            "schedule = \"daily 02:30\"\npassphrase_file = \"/p\"\nkeep_daily = 3\n",
        )
        .unwrap();
        assert_eq!(parsed.keep_daily, 3);
        assert_eq!(parsed.keep_weekly, 4);
        assert!(toml::from_str::<BackupConfig>("keep = 3\n").is_err());
    }

    #[test]
    fn credential_files_must_resolve_under_the_data_directory() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let secrets = data.join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        let inside = secrets.join("backup.pass");
        std::fs::write(&inside, "a long enough passphrase\n").unwrap();
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outside = tmp.path().join("shadow");
        std::fs::write(&outside, "root:secret\n").unwrap();
        let link = secrets.join("link.pass");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let dir_link = data.join("etc");
        std::os::unix::fs::symlink(tmp.path(), &dir_link).unwrap();

        let with_pass = |p: &Path| BackupConfig {
            passphrase_file: Some(p.to_path_buf()),
            ..BackupConfig::default()
        };
        with_pass(&inside).check_on_box(&data).unwrap();
        for (bad, why) in [
            (outside.clone(), "is outside the data directory"),
            (link.clone(), "resolves to"),
            (dir_link.join("shadow"), "resolves to"),
            (secrets.join("../../shadow"), "`..`"),
            (
                PathBuf::from("/etc/shadow"),
                "is outside the data directory",
            ),
            (data.clone(), "is outside the data directory"),
        ] {
            let (key, reason) = with_pass(&bad).check_on_box(&data).unwrap_err();
            assert_eq!(key, "backup.passphrase_file", "{bad:?}");
            assert!(reason.contains(why), "{bad:?}: {reason}");
        }

        let https = |password_file: &Path| -> target::TargetConfig {
            toml::from_str(&format!(
                "name = \"dav\"\nkind = \"https\"\nurl = \"https://dav.example/b/\"\nusername = \"u\"\npassword_file = {:?}\n",
                password_file.display().to_string()
            ))
            .unwrap()
        };
        let sftp = |identity: &Path| -> target::TargetConfig {
            toml::from_str(&format!(
                "name = \"nas\"\nkind = \"sftp\"\nhost = \"nas.example\"\nuser = \"u\"\npath = \"/b\"\nhost_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\nidentity = {:?}\n",
                identity.display().to_string()
            ))
            .unwrap()
        };
        let mut c = BackupConfig {
            targets: vec![sftp(&secrets.join("id_ed25519")), https(&inside)],
            ..BackupConfig::default()
        };
        c.check_on_box(&data).unwrap();
        c.targets[1] = https(&outside);
        assert_eq!(
            c.check_on_box(&data).unwrap_err().0,
            "backup.targets[1].password_file"
        );
        c.targets[1] = https(&inside);
        c.targets[0] = sftp(&tmp.path().join("id_ed25519"));
        assert_eq!(
            c.check_on_box(&data).unwrap_err().0,
            "backup.targets[0].identity"
        );
    }
}
