//! The typed operations of the backup subsystem and their results: what the admin layer
//! hands to [`super::Backups::command`] and what comes back. Only the admin layer turns a
//! [`BackupOutcome`] or a [`super::BackupError`] into a wire reply.

use serde::{Deserialize, Serialize};

use super::archive::Contents;
use super::upload::UploadState;
use super::{BackupEntry, BackupInfo, BackupList, FetchedBackup, RemoteListing, RestoreStaged};

/// A backup command; travels inside the admin protocol's `Command::Backup`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "backup", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupCommand {
    /// Make a backup now.
    Now,
    /// The backups on the box, the schedule and the off-site targets.
    List,
    /// Decrypt and check a backup completely; nothing changes.
    Verify {
        /// A file name in the backup directory, or an absolute path on the box.
        file: String,
        /// The key; without one the daemon uses its own passphrase.
        key: Option<BackupKey>,
        /// A signer to trust besides this box's key and `[backup] trusted_keys`
        /// (`outpost-backup-ed25519 <base64>`).
        #[serde(default)]
        signer: Option<String>,
        /// Accept a backup no trusted key signed (logged; an alert on restore).
        #[serde(default)]
        trust_unsigned: bool,
    },
    /// Check a backup, stage it and restart to apply it (answer: [`BackupOutcome::RestoreStaged`]).
    Restore {
        /// A file name in the backup directory, or an absolute path on the box.
        file: String,
        /// The key; without one the daemon uses its own passphrase.
        key: Option<BackupKey>,
        /// A signer to trust besides this box's key and `[backup] trusted_keys`
        /// (`outpost-backup-ed25519 <base64>`).
        #[serde(default)]
        signer: Option<String>,
        /// Accept a backup no trusted key signed (logged, and an alert once applied).
        #[serde(default)]
        trust_unsigned: bool,
    },
    /// Start receiving a backup file in chunks (one upload at a time; answer:
    /// [`BackupOutcome::Upload`] with its id).
    UploadBegin {
        /// The file's original name, kept when it is a backup name not used yet.
        name: Option<String>,
    },
    /// The next piece of the upload.
    UploadChunk {
        /// The upload's id.
        id: String,
        /// Where the piece starts (the bytes received so far).
        offset: u64,
        /// The bytes, standard base64 (at most [`super::upload::CHUNK`] decoded).
        data: String,
    },
    /// The upload is complete: checked against its size and SHA-256, synced and renamed
    /// into the backup directory (answer: [`BackupOutcome::Upload`] with its name).
    UploadFinish {
        /// The upload's id.
        id: String,
        /// Total bytes sent.
        size: u64,
        /// SHA-256 of the whole file, lowercase hex.
        sha256: String,
    },
    /// Give up an upload (its partial file is deleted).
    UploadAbort {
        /// The upload's id.
        id: String,
    },
    /// Download a backup from an off-site target into the backup directory and check it
    /// (answer: [`BackupOutcome::Fetched`]).
    Fetch {
        /// The file on the target; the newest when `None`.
        name: Option<String>,
        /// The target's name; the first target when `None`.
        target: Option<String>,
    },
    /// Download a backup from a location that is not a configured target:
    /// `sftp://user@host[:port]/dir/file` (the host key must be confirmed: without
    /// `host_key` the answer is [`BackupOutcome::HostKey`] and nothing is downloaded).
    FetchUrl {
        /// Where the backup is.
        url: String,
        /// The server's host key line the admin confirmed.
        host_key: Option<String>,
    },
    /// The backups on every off-site target (answer: [`BackupOutcome::Remote`]).
    ListRemote,
    /// Keep a backup passphrase on the box (used when `[backup]` sets no key).
    PassphraseSet {
        /// The passphrase (never logged).
        passphrase: SecretText,
    },
    /// Forget the stored passphrase.
    PassphraseClear,
    /// Key source, stored passphrase, SFTP key, whether the box was ever configured
    /// (answer: [`BackupOutcome::Info`]).
    Info,
    /// The SFTP client public key, made when missing (answer: [`BackupOutcome::Done`] with the
    /// OpenSSH line).
    Key,
    /// The box's backup-signing public key, made when missing (answer:
    /// [`BackupOutcome::Done`] with `outpost-backup-ed25519 <base64> SHA256:<fingerprint>`).
    SigningKey,
    /// A piece of a backup file, to download it (answer: [`BackupOutcome::Chunk`]).
    Read {
        /// A backup's name in the backup directory (`*.backup`; no paths).
        file: String,
        /// Where the piece starts.
        offset: u64,
        /// How many bytes (1 to [`crate::chunk::MAX_CHUNK`]).
        len: u64,
    },
}

/// A secret in a command; hidden from `Debug`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<hidden>")
    }
}

/// The key a backup is decrypted with (never logged).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupKey {
    /// The passphrase.
    Passphrase(String),
    /// The text of an age identity file (`AGE-SECRET-KEY-1...`).
    Identity(String),
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupKey::Passphrase(_) => write!(f, "Passphrase(<hidden>)"),
            BackupKey::Identity(_) => write!(f, "Identity(<hidden>)"),
        }
    }
}

impl BackupCommand {
    /// The wire name of the command, for logs (never the key).
    pub fn name(&self) -> &'static str {
        match self {
            BackupCommand::Now => "backup_now",
            BackupCommand::List => "backup_list",
            BackupCommand::Verify { .. } => "backup_verify",
            BackupCommand::Restore { .. } => "backup_restore",
            BackupCommand::UploadBegin { .. } => "backup_upload_begin",
            BackupCommand::UploadChunk { .. } => "backup_upload_chunk",
            BackupCommand::UploadFinish { .. } => "backup_upload_finish",
            BackupCommand::UploadAbort { .. } => "backup_upload_abort",
            BackupCommand::Fetch { .. } => "backup_fetch",
            BackupCommand::FetchUrl { .. } => "backup_fetch_url",
            BackupCommand::ListRemote => "backup_list_remote",
            BackupCommand::PassphraseSet { .. } => "backup_passphrase_set",
            BackupCommand::PassphraseClear => "backup_passphrase_clear",
            BackupCommand::Info => "backup_info",
            BackupCommand::Key => "backup_key",
            BackupCommand::SigningKey => "backup_signing_key",
            BackupCommand::Read { .. } => "backup_read",
        }
    }
}

/// What a backup operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutcome {
    /// `list`: the backups, the schedule and the targets.
    List(BackupList),
    /// `now`: the backup just made.
    Created(BackupEntry),
    /// `verify`: what the backup holds.
    Verified(Contents),
    /// `restore`: the backup is staged; the daemon restarts to apply it.
    RestoreStaged(RestoreStaged),
    /// `upload_*`: where the upload stands.
    Upload(UploadState),
    /// `fetch`, `fetch_url`: the file now in the backup directory.
    Fetched(FetchedBackup),
    /// `fetch_url` without a confirmed host key: the server's key, nothing downloaded.
    HostKey {
        /// The OpenSSH public key line.
        line: String,
        /// Its SHA256 fingerprint.
        fingerprint: String,
    },
    /// `list_remote`: every target's backups.
    Remote(Vec<RemoteListing>),
    /// `info`: the key source and whether the box was ever configured.
    Info(BackupInfo),
    /// A one-line confirmation (passphrase set or cleared, upload abandoned, the SFTP key).
    Done(String),
    /// `read`: a piece of a backup file.
    Chunk(crate::chunk::FileChunk),
}
