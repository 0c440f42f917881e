//! The control-plane protocol: JSON lines over a Unix stream socket.
//!
//! The client writes one [`Command`] per line and reads one [`Reply`] per line, in order; a
//! connection may carry several requests. Commands are internally tagged
//! (`{"cmd":"ext_add","ext":"104",...}`); replies are adjacently tagged
//! (`{"reply":"extensions","data":[...]}`) because serde cannot inline a list into a tag.

use serde::{Deserialize, Serialize};

use pbx_core::cdr::Cdr;

/// Longest request or reply line accepted, newline excluded (an import of 10,000 rows fits).
pub const MAX_LINE: usize = 4 * 1024 * 1024;
/// Longest extension number or name.
pub const MAX_EXT_LEN: usize = 16;
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 128;
/// Longest display name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Shortest console (admin) password accepted.
pub const MIN_ADMIN_PASSWORD_LEN: usize = 10;
/// Longest OpenSSH public key line accepted (an RSA 16384-bit key fits).
pub const MAX_SSH_KEY_LINE: usize = outpost_sshkey::MAX_KEY_LINE;

/// A request from `outpostctl` (or any other client) to the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Daemon overview.
    Status,
    /// All extensions with their live contact count.
    ExtList,
    /// One extension's settings (forwarding, caller-ID, whether a PIN is set) and phones.
    ExtShow {
        /// Extension number.
        ext: String,
    },
    /// Create an extension.
    ExtAdd {
        /// Extension number.
        ext: String,
        /// Display name.
        name: Option<String>,
        /// Plain password; the daemon stores only digests.
        password: String,
    },
    /// Delete an extension and its registrations.
    ExtDel {
        /// Extension number.
        ext: String,
    },
    /// Change an extension's password.
    ExtPasswd {
        /// Extension number.
        ext: String,
        /// New plain password.
        password: String,
    },
    /// Create or replace many extensions at once.
    ExtImport {
        /// The rows, already validated by the client.
        rows: Vec<ExtImportRow>,
    },
    /// Current registrations.
    RegList,
    /// Calls in progress.
    Calls,
    /// Voicemail messages (of one mailbox when given).
    VmList { mailbox: Option<String> },
    /// Delete a voicemail message (index entry and audio file).
    VmDel { id: u64 },
    /// Set an extension's voicemail PIN (stored hashed).
    VmPin { ext: String, pin: String },
    /// Most recent call detail records, newest first.
    CdrList {
        /// How many at most.
        limit: usize,
    },
    /// The firewall (`{"cmd":"fw","fw":"unban","addr":"203.0.113.9"}`).
    Fw(FwCommand),
    /// State of every trunk.
    Trunks,
    /// Counters for monitoring.
    Metrics,
    /// Configuration revisions.
    Config(ConfigCommand),
    /// Set an extension's digest algorithms: `md5`, `sha256`, `both` or `default` (the
    /// global `[auth] algorithms`).
    ExtDigest {
        /// Extension number.
        ext: String,
        /// The choice, as named above.
        digest: String,
    },
    /// Set (or with `None` clear) the caller-ID an extension presents on outside calls.
    ExtCallerId {
        /// Extension number.
        ext: String,
        /// The number shown to the called party.
        number: Option<String>,
    },
    /// Set (replace) the call forwarding of an extension; all `None` clears it.
    ExtForward {
        /// Extension number.
        ext: String,
        /// Targets and the no-answer ring time.
        forwarding: pbx_core::endpoint::Forwarding,
    },
    /// SSH access (`{"cmd":"ssh","ssh":"keys_list"}`).
    Ssh(SshCommand),
    /// The console's admin password (`{"cmd":"admin","admin":"status"}`).
    Admin(AdminCommand),
    /// Backups (`{"cmd":"backup","backup":"now"}`).
    Backup(BackupCommand),
    /// One page of call records for an export, oldest first.
    CdrExport {
        /// Only calls that started at or after this time (ms since the epoch).
        from: Option<u64>,
        /// Only calls that started before this time (ms since the epoch).
        to: Option<u64>,
        /// The cursor from the previous page (0 for the first).
        after: u64,
        /// How many records at most.
        limit: usize,
    },
}

/// A backup command; travels inside [`Command::Backup`].
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
    },
    /// Check a backup, stage it and restart to apply it (answer: [`Reply::RestoreStaged`]).
    Restore {
        /// A file name in the backup directory, or an absolute path on the box.
        file: String,
        /// The key; without one the daemon uses its own passphrase.
        key: Option<BackupKey>,
    },
    /// Start receiving a backup file in chunks (one upload at a time; answer:
    /// [`Reply::BackupUpload`] with its id).
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
        /// The bytes, standard base64 (at most [`crate::backup::upload::CHUNK`] decoded).
        data: String,
    },
    /// The upload is complete: checked against its size and SHA-256, synced and renamed
    /// into the backup directory (answer: [`Reply::BackupUpload`] with its name).
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
    /// (answer: [`Reply::BackupFetched`]).
    Fetch {
        /// The file on the target; the newest when `None`.
        name: Option<String>,
        /// The target's name; the first target when `None`.
        target: Option<String>,
    },
    /// Download a backup from a location that is not a configured target:
    /// `sftp://user@host[:port]/dir/file` (the host key must be confirmed: without
    /// `host_key` the answer is [`Reply::HostKey`] and nothing is downloaded).
    FetchUrl {
        /// Where the backup is.
        url: String,
        /// The server's host key line the admin confirmed.
        host_key: Option<String>,
    },
    /// The backups on every off-site target (answer: [`Reply::RemoteBackups`]).
    ListRemote,
    /// Keep a backup passphrase on the box (used when `[backup]` sets no key).
    PassphraseSet {
        /// The passphrase (never logged).
        passphrase: SecretText,
    },
    /// Forget the stored passphrase.
    PassphraseClear,
    /// Key source, stored passphrase, SFTP key, whether the box was ever configured
    /// (answer: [`Reply::BackupInfo`]).
    Info,
    /// The SFTP client public key, made when missing (answer: [`Reply::Done`] with the
    /// OpenSSH line).
    Key,
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
        }
    }
}

/// An SSH command; travels inside [`Command::Ssh`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "ssh", rename_all = "snake_case", deny_unknown_fields)]
pub enum SshCommand {
    /// Authorise a public key (one OpenSSH `authorized_keys` line without options).
    KeysAdd {
        /// `ssh-ed25519 AAAA... comment`; the daemon parses and checks it.
        line: String,
    },
    /// Remove a key, named by its SHA256 fingerprint or its comment.
    KeysDel {
        /// `SHA256:...` or the key's comment.
        key: String,
    },
    /// The authorised keys.
    KeysList,
}

/// An admin-password command; travels inside [`Command::Admin`]. The password is never
/// logged; the daemon keeps only an Argon2id hash.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "admin", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminCommand {
    /// Whether a console password is set.
    Status,
    /// Set (or replace) the console password.
    Passwd {
        /// The new plain password (at least [`MIN_ADMIN_PASSWORD_LEN`] characters).
        password: String,
    },
    /// Check a console password.
    Login {
        /// The password typed at the console.
        password: String,
    },
}

impl SshCommand {
    /// The wire name of the command, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            SshCommand::KeysAdd { .. } => "ssh_keys_add",
            SshCommand::KeysDel { .. } => "ssh_keys_del",
            SshCommand::KeysList => "ssh_keys_list",
        }
    }
}

impl AdminCommand {
    /// The wire name of the command, for logs (never the password).
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::Status => "admin_status",
            AdminCommand::Passwd { .. } => "admin_passwd",
            AdminCommand::Login { .. } => "admin_login",
        }
    }
}

impl Command {
    /// The wire name of the command, for logs (never log the command itself: it may carry
    /// passwords).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::ExtList => "ext_list",
            Command::ExtShow { .. } => "ext_show",
            Command::ExtAdd { .. } => "ext_add",
            Command::ExtDel { .. } => "ext_del",
            Command::ExtPasswd { .. } => "ext_passwd",
            Command::ExtImport { .. } => "ext_import",
            Command::RegList => "reg_list",
            Command::Calls => "calls",
            Command::CdrList { .. } => "cdr_list",
            Command::VmList { .. } => "vm_list",
            Command::VmDel { .. } => "vm_del",
            Command::VmPin { .. } => "vm_pin",
            Command::Fw(fw) => fw.name(),
            Command::Trunks => "trunks",
            Command::Metrics => "metrics",
            Command::Config(c) => c.name(),
            Command::ExtCallerId { .. } => "ext_callerid",
            Command::ExtForward { .. } => "ext_forward",
            Command::ExtDigest { .. } => "ext_digest",
            Command::Ssh(ssh) => ssh.name(),
            Command::Admin(admin) => admin.name(),
            Command::Backup(b) => b.name(),
            Command::CdrExport { .. } => "cdr_export",
        }
    }
}

/// One extension in an [`Command::ExtImport`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtImportRow {
    /// Extension number.
    pub ext: String,
    /// Plain password.
    pub password: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// The daemon's answer to one [`Command`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "reply", content = "data", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to [`Command::Status`].
    Status(StatusInfo),
    /// Answer to [`Command::ExtList`].
    Extensions(Vec<ExtensionInfo>),
    /// Answer to [`Command::ExtShow`].
    Extension(ExtensionDetail),
    /// Answer to [`Command::RegList`].
    Registrations(Vec<RegistrationInfo>),
    /// Answer to [`Command::Calls`].
    Calls(Vec<CallInfo>),
    /// Answer to [`Command::CdrList`].
    Cdrs(Vec<Cdr>),
    /// Voicemail messages, oldest first.
    Voicemail(Vec<crate::store::VoicemailRecord>),
    /// Answer to [`FwCommand::Status`].
    FwStatus(FwStatusInfo),
    /// Answer to [`FwCommand::Bans`].
    FwBans(FwBansInfo),
    /// Answer to [`FwCommand::Alerts`].
    FwAlerts(Vec<FwAlertInfo>),
    /// Answer to [`FwCommand::Rules`].
    FwRules(Vec<FwRuleInfo>),
    /// Answer to [`FwCommand::Export`].
    FwExport(FwExport),
    /// Answer to [`Command::Trunks`].
    Trunks(Vec<pbx_core::trunk::TrunkStatus>),
    /// Answer to [`Command::Metrics`].
    Metrics(crate::metrics::Metrics),
    /// A configuration text (`config show`) or a diff (`config diff`).
    ConfigText {
        /// The revision shown (0 for a diff).
        rev: u32,
        text: String,
    },
    /// Answer to `config list`.
    ConfigRevisions(Vec<crate::revisions::Revision>),
    /// Answer to [`SshCommand::KeysList`].
    SshKeys(Vec<SshKeyInfo>),
    /// Answer to [`AdminCommand::Status`].
    Admin(AdminInfo),
    /// Answer to [`AdminCommand::Login`].
    Login(LoginOutcome),
    /// Answer to [`BackupCommand::List`].
    Backups(crate::backup::BackupList),
    /// Answer to [`BackupCommand::Now`]: the new backup.
    BackupCreated(crate::backup::BackupEntry),
    /// Answer to [`BackupCommand::Verify`]: what the backup holds.
    BackupVerified(crate::backup::archive::Contents),
    /// Answer to [`BackupCommand::Restore`]: checked and staged; the daemon restarts.
    RestoreStaged(crate::backup::RestoreStaged),
    /// Answer to the upload commands.
    BackupUpload(crate::backup::upload::UploadState),
    /// Answer to [`BackupCommand::Fetch`] and a confirmed [`BackupCommand::FetchUrl`].
    BackupFetched(crate::backup::FetchedBackup),
    /// Answer to [`BackupCommand::ListRemote`].
    RemoteBackups(Vec<crate::backup::RemoteListing>),
    /// Answer to [`BackupCommand::Info`].
    BackupInfo(crate::backup::BackupInfo),
    /// Answer to [`BackupCommand::FetchUrl`] without a host key: the server's, to confirm.
    HostKey {
        /// `type base64` as the server presented it.
        line: String,
        /// Its SHA256 fingerprint.
        fingerprint: String,
    },
    /// Answer to [`Command::CdrExport`].
    CdrPage {
        /// The records, oldest first.
        cdrs: Vec<Cdr>,
        /// The cursor for the next page; `None` when this was the last.
        next: Option<u64>,
    },
    /// A change was made.
    Done {
        /// What was done, for a human.
        message: String,
    },
    /// The command failed; nothing was changed.
    Error {
        /// Why, for a human.
        message: String,
    },
}

impl Reply {
    /// Shorthand for [`Reply::Error`].
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error {
            message: message.into(),
        }
    }

    /// Shorthand for [`Reply::Done`].
    pub fn done(message: impl Into<String>) -> Reply {
        Reply::Done {
            message: message.into(),
        }
    }
}

/// One authorised SSH key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SshKeyInfo {
    /// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256` or `ssh-rsa`.
    pub key_type: String,
    /// Key size in bits.
    pub bits: u32,
    /// The comment given with the key.
    pub comment: Option<String>,
    /// When it was added (ms since the epoch).
    pub added: u64,
}

/// The console password's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminInfo {
    /// A console password is set.
    pub password_set: bool,
}

/// What the daemon made of a console password.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoginOutcome {
    /// The password is right.
    Accepted,
    /// The password is wrong.
    Refused,
    /// No password is set yet: nobody can log in at the console.
    NoPassword,
}

/// Daemon overview.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// Daemon version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// SIP listening addresses.
    pub listen: Vec<String>,
    /// Configured extensions.
    pub extensions: usize,
    /// Live contact bindings.
    pub registrations: usize,
    /// Calls in progress.
    pub active_calls: usize,
    /// Stored call detail records.
    pub cdrs: u64,
    /// Data directory.
    pub data_dir: String,
    /// Digest realm.
    pub realm: String,
    /// Trunks configured.
    #[serde(default)]
    pub trunks: usize,
    /// Trunks up.
    #[serde(default)]
    pub trunks_up: usize,
    /// Every trunk is down: the office runs on its own (local calls, voicemail, IVR).
    #[serde(default)]
    pub survival: bool,
    /// Seconds since the newest backup on the box was made; `None` if there is none.
    #[serde(default)]
    pub last_backup_age_secs: Option<u64>,
    /// Layout version of the store (`store::SCHEMA_VERSION` of the running firmware).
    #[serde(default)]
    pub store_schema: u32,
    /// The box's name (`[system] hostname`, else the system's), as in backup file names.
    #[serde(default)]
    pub hostname: String,
    /// The last backup restored onto this box (its id, source box, time, what it held).
    #[serde(default)]
    pub last_restore: Option<crate::backup::LastRestore>,
}

/// One extension in a listing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExtensionInfo {
    /// Extension number.
    pub ext: String,
    /// Display name.
    pub name: Option<String>,
    /// Live registered contacts.
    pub registered: usize,
}

/// One extension's settings and phones (never its password or PIN, not even hashed).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExtensionDetail {
    /// Extension number.
    pub ext: String,
    /// Display name.
    pub name: Option<String>,
    /// Call forwarding: targets and the no-answer ring time (all `None`: off).
    pub forwarding: pbx_core::endpoint::Forwarding,
    /// The caller-ID presented on outside calls; `None`: the route's or trunk's.
    pub caller_id: Option<String>,
    /// Whether a voicemail PIN is set.
    pub vm_pin_set: bool,
    /// Digest algorithms for its phones once they authenticated: `default` (the global
    /// `[auth] algorithms`), `md5`, `sha256` or `both`.
    #[serde(default)]
    pub digest: String,
    /// The phones registered now.
    pub registrations: Vec<RegistrationInfo>,
}

/// One contact binding in a listing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// Extension number.
    pub ext: String,
    /// Contact URI.
    pub contact: String,
    /// Address the REGISTER came from (`ip:port`).
    pub source: String,
    /// `UDP` or `TCP`.
    pub transport: String,
    /// Seconds until the binding expires.
    pub expires_in_secs: u64,
    /// The phone's User-Agent header.
    pub user_agent: Option<String>,
}

impl RegistrationInfo {
    /// The listing row of a binding at `now`.
    pub fn of(b: &pbx_core::registrar::Binding, now: pbx_core::Millis) -> RegistrationInfo {
        RegistrationInfo {
            ext: b.ext.clone(),
            contact: b.contact.clone(),
            source: b.source.addr.to_string(),
            transport: b.source.transport.as_str().to_string(),
            expires_in_secs: b.expires_at.saturating_sub(now) / 1000,
            user_agent: b.user_agent.clone(),
        }
    }
}

/// One call in progress.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// Calling extension.
    pub caller: String,
    /// Dialled number.
    pub callee: String,
    /// `ringing` or `answered`.
    pub state: String,
    /// When the INVITE arrived (ms since the epoch).
    pub started_ms: u64,
    /// When the call was answered (ms since the epoch).
    pub answered_ms: Option<u64>,
    /// Seconds since start (ringing) or answer (answered).
    pub duration_secs: u64,
    /// Media through the relay, when anchored and negotiated.
    #[serde(default)]
    pub media: Option<CallMediaInfo>,
}

/// Codecs and relay counters of a call's two legs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallMediaInfo {
    /// Codec on the caller's leg (`PCMU`, `PCMA`, `other`).
    pub codec_a: String,
    /// Codec on the callee's leg; differs from `codec_a` when the relay transcodes.
    pub codec_b: String,
    /// Counters of the caller's leg (in = from the caller's phone).
    pub a: pbx_core::media::session::LegStats,
    /// Counters of the callee's leg.
    pub b: pbx_core::media::session::LegStats,
}

/// The firewall's side of the protocol (`fw` commands and their answers), defined with the
/// firewall in the daemon.
pub use crate::guard::api::{
    FwAlertInfo, FwBanInfo, FwBansInfo, FwCommand, FwExport, FwExportBan, FwFeedInfo, FwKernelInfo,
    FwLockInfo, FwRuleHits, FwRuleInfo, FwStatusInfo,
};

/// Checks an extension number: 1-16 ASCII letters or digits.
pub fn validate_ext(ext: &str) -> Result<(), String> {
    if ext.is_empty() {
        return Err("extension must not be empty".to_owned());
    }
    if ext.len() > MAX_EXT_LEN {
        return Err(format!(
            "extension is {} characters long; at most {MAX_EXT_LEN} are allowed",
            ext.chars().count()
        ));
    }
    if !ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "extension `{}` may contain only letters and digits",
            ext.escape_default()
        ));
    }
    Ok(())
}

/// Checks a password for extension `ext`: 8-128 characters, no control characters, no
/// surrounding whitespace, not the extension itself, not one character repeated.
pub fn validate_password(ext: &str, password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(format!(
            "password is {len} characters long; at least {MIN_PASSWORD_LEN} are needed"
        ));
    }
    if len > MAX_PASSWORD_LEN {
        return Err(format!(
            "password is {len} characters long; at most {MAX_PASSWORD_LEN} are allowed"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("password must not contain control characters".to_owned());
    }
    if password.trim() != password {
        return Err("password must not start or end with whitespace".to_owned());
    }
    if password == ext {
        return Err("password must not be the extension number".to_owned());
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next() {
        if chars.all(|c| c == first) {
            return Err("password must not be one character repeated".to_owned());
        }
    }
    Ok(())
}

/// Checks a display name: 1-64 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if name.trim().is_empty() {
        return Err("name must not be empty".to_owned());
    }
    if len > MAX_NAME_LEN {
        return Err(format!(
            "name is {len} characters long; at most {MAX_NAME_LEN} are allowed"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".to_owned());
    }
    Ok(())
}

/// Checks a console password: 10-128 characters, no control characters, no surrounding
/// whitespace, not one character repeated.
pub fn validate_admin_password(password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < MIN_ADMIN_PASSWORD_LEN {
        return Err(format!(
            "password is {len} characters long; at least {MIN_ADMIN_PASSWORD_LEN} are needed"
        ));
    }
    validate_password("", password)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn command_wire_format() {
        let c: Command = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(c, Command::Status);
        let c: Command =
            serde_json::from_str(r#"{"cmd":"ext_add","ext":"104","name":null,"password":"x"}"#)
                .unwrap();
        assert_eq!(c.name(), "ext_add");
        let c: Command = serde_json::from_str(r#"{"cmd":"cdr_list","limit":5}"#).unwrap();
        assert_eq!(c, Command::CdrList { limit: 5 });
        let s = serde_json::to_string(&Command::ExtImport {
            rows: vec![ExtImportRow {
                ext: "1".into(),
                password: "p".into(),
                name: None,
            }],
        })
        .unwrap();
        assert!(s.starts_with(r#"{"cmd":"ext_import","rows":[{"#), "{s}");
        let c: Command =
            serde_json::from_str(r#"{"cmd":"fw","fw":"unban","addr":"203.0.113.9"}"#).unwrap();
        assert_eq!(
            c,
            Command::Fw(FwCommand::Unban {
                addr: "203.0.113.9".into()
            })
        );
        assert_eq!(c.name(), "fw_unban");
        for fw in [
            FwCommand::Status,
            FwCommand::Bans,
            FwCommand::Allow {
                cidr: "10.0.0.0/8".into(),
            },
            FwCommand::Unlock { user: "100".into() },
            FwCommand::Alerts { limit: 20 },
            FwCommand::Rules,
            FwCommand::Import {
                text: "203.0.113.9\n".into(),
                ban_secs: 60,
            },
            FwCommand::Export,
        ] {
            let s = serde_json::to_string(&Command::Fw(fw.clone())).unwrap();
            assert!(s.starts_with(r#"{"cmd":"fw","fw":""#), "{s}");
            assert_eq!(
                serde_json::from_str::<Command>(&s).unwrap(),
                Command::Fw(fw)
            );
        }
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"fw","fw":"flush"}"#).is_err());
        assert!(
            serde_json::from_str::<Command>(r#"{"cmd":"fw","fw":"unban","addr":"a","x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"ext_del"}"#).is_err());
    }

    #[test]
    fn every_reply_round_trips() {
        let replies = vec![
            Reply::Status(StatusInfo {
                version: "0.1.0".into(),
                uptime_secs: 5,
                listen: vec!["127.0.0.1:5060".into()],
                extensions: 4,
                registrations: 1,
                active_calls: 0,
                cdrs: 7,
                data_dir: "/data".into(),
                realm: "outpost".into(),
                trunks: 2,
                trunks_up: 0,
                survival: true,
                last_backup_age_secs: Some(3600),
                store_schema: 1,
                hostname: "berlin-1".into(),
                last_restore: None,
            }),
            Reply::Extensions(vec![ExtensionInfo {
                ext: "100".into(),
                name: Some("Front desk".into()),
                registered: 2,
            }]),
            Reply::Extension(ExtensionDetail {
                ext: "100".into(),
                name: None,
                forwarding: pbx_core::endpoint::Forwarding {
                    always: None,
                    busy: Some("101".into()),
                    no_answer: Some("0301234567".into()),
                    no_answer_ms: 20_000,
                },
                caller_id: Some("0309876543".into()),
                vm_pin_set: true,
                digest: "sha256".into(),
                registrations: vec![RegistrationInfo {
                    ext: "100".into(),
                    contact: "sip:100@192.0.2.7:5060".into(),
                    source: "192.0.2.7:5060".into(),
                    transport: "UDP".into(),
                    expires_in_secs: 300,
                    user_agent: None,
                }],
            }),
            Reply::Registrations(vec![]),
            Reply::Calls(vec![]),
            Reply::Cdrs(vec![Cdr {
                call_id: "c".into(),
                caller: "100".into(),
                callee: "101".into(),
                start: 1,
                answer: None,
                end: 2,
                disposition: pbx_core::cdr::Disposition::Busy,
                status: 486,
            }]),
            Reply::done("ok"),
            Reply::error("nope"),
            Reply::FwStatus(FwStatusInfo {
                mode: "enforcing".into(),
                reason: None,
                bans: 1,
                locks: 0,
                sources: 3,
                passes: 1,
                inspected: 10,
                dropped_banned: 4,
                dropped_rule: 1,
                alerts_stored: 2,
                runtime_allow: vec!["10.0.0.0/8".into()],
                kernel: Some(FwKernelInfo {
                    table: "inet outpost".into(),
                    installed: true,
                    counters: Some(firewall::nft::Counters::default()),
                    batches: 1,
                    ops: 1,
                    restores: 0,
                    failures: 0,
                    queue_drops: 0,
                    last_error: None,
                }),
                rule_hits: vec![FwRuleHits {
                    rule: "scanner".into(),
                    hits: 1,
                }],
                would_be_bans: 3,
                would_be_dropped: 40,
                feeds: vec![FwFeedInfo {
                    source: "/etc/outpost/drop.txt".into(),
                    refresh_secs: 3_600,
                    ban_secs: 86_400,
                    entries: 3,
                    ignored: 1,
                    invalid: 2,
                    too_wide: 0,
                    truncated: 0,
                    last_refresh: Some(7),
                    reads: 2,
                    failures: 1,
                    last_error: None,
                }],
                connections: Some(Box::default()),
            }),
            Reply::FwBans(FwBansInfo {
                total_bans: 1,
                total_locks: 1,
                bans: vec![FwBanInfo {
                    addr: "203.0.113.9".into(),
                    until: 5,
                    remaining_secs: 1,
                    rule: "scanner".into(),
                    reason: "scanner fingerprint".into(),
                    count_today: 1,
                    enforced: true,
                }],
                locks: vec![FwLockInfo {
                    user: "100".into(),
                    until: 5,
                    remaining_secs: 1,
                    rule: "account_guessing".into(),
                    enforced: true,
                    blocks: "all sources except 10.0.0.5".into(),
                    except: vec!["10.0.0.5".into()],
                }],
            }),
            Reply::FwAlerts(vec![FwAlertInfo {
                at: 1,
                rule: "flood".into(),
                addr: None,
                user: Some("100".into()),
                message: "m".into(),
                enforced: false,
            }]),
            Reply::FwRules(vec![FwRuleInfo {
                rule: "flood".into(),
                threshold: "16 requests / 2 s".into(),
                action: "ban 300 s".into(),
                hits: 0,
            }]),
            Reply::FwExport(FwExport {
                generated: 9,
                bans: vec![FwExportBan {
                    addr: "2001:db8::1".into(),
                    until: 10,
                    rule: "scanner".into(),
                    reason: "scanner fingerprint".into(),
                }],
                omitted: 0,
            }),
        ];
        for r in replies {
            let s = serde_json::to_string(&r).unwrap();
            assert!(!s.contains('\n'));
            let back: Reply = serde_json::from_str(&s).unwrap();
            assert_eq!(back, r);
        }
        let s = serde_json::to_string(&Reply::Extensions(vec![])).unwrap();
        assert_eq!(s, r#"{"reply":"extensions","data":[]}"#);
        // The exchange format carries no `omitted` key unless bans were left out.
        let doc = FwExport {
            generated: 1,
            bans: vec![],
            omitted: 0,
        };
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"generated":1,"bans":[]}"#
        );
        // An older daemon's status without `feeds` still reads.
        let mut status: serde_json::Value = serde_json::to_value(FwStatusInfo {
            mode: "monitor".into(),
            reason: None,
            bans: 0,
            locks: 0,
            sources: 0,
            passes: 0,
            inspected: 0,
            dropped_banned: 0,
            dropped_rule: 0,
            alerts_stored: 0,
            runtime_allow: vec![],
            kernel: None,
            rule_hits: vec![],
            would_be_bans: 0,
            would_be_dropped: 0,
            feeds: vec![],
            connections: None,
        })
        .unwrap();
        status.as_object_mut().unwrap().remove("feeds");
        status.as_object_mut().unwrap().remove("would_be_bans");
        status.as_object_mut().unwrap().remove("connections");
        assert!(serde_json::from_value::<FwStatusInfo>(status).is_ok());
    }

    #[test]
    fn extension_rules() {
        assert!(validate_ext("100").is_ok());
        assert!(validate_ext("sales1").is_ok());
        assert!(validate_ext("1234567890123456").is_ok());
        assert!(validate_ext("").is_err());
        assert!(validate_ext("12345678901234567").is_err());
        assert!(validate_ext("10 0").is_err());
        assert!(validate_ext("a.b").is_err());
        assert!(validate_ext("١٢٣").is_err(), "non-ASCII digits");
    }

    #[test]
    fn password_rules_say_why() {
        assert!(validate_password("100", "s3cret-pass").is_ok());
        assert!(validate_password("100", "short")
            .unwrap_err()
            .contains("at least 8"));
        assert!(validate_password("100", &"ab".repeat(65))
            .unwrap_err()
            .contains("at most 128"));
        assert!(validate_password("10000000", "10000000")
            .unwrap_err()
            .contains("extension"));
        assert!(validate_password("100", "aaaaaaaaaa")
            .unwrap_err()
            .contains("repeated"));
        assert!(validate_password("100", "abc\ndefgh")
            .unwrap_err()
            .contains("control"));
        assert!(validate_password("100", " abcdefgh")
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn ssh_and_admin_commands_on_the_wire() {
        let c: Command = serde_json::from_str(r#"{"cmd":"ssh","ssh":"keys_list"}"#).unwrap();
        assert_eq!(c, Command::Ssh(SshCommand::KeysList));
        assert_eq!(c.name(), "ssh_keys_list");
        let c: Command =
            serde_json::from_str(r#"{"cmd":"ssh","ssh":"keys_del","key":"laptop"}"#).unwrap();
        assert_eq!(
            c,
            Command::Ssh(SshCommand::KeysDel {
                key: "laptop".into()
            })
        );
        let c = Command::Admin(AdminCommand::Login {
            password: "secret-password".into(),
        });
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(
            s,
            r#"{"cmd":"admin","admin":"login","password":"secret-password"}"#
        );
        assert_eq!(
            c.name(),
            "admin_login",
            "the name never carries the password"
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"admin","admin":"su"}"#).is_err());
        for r in [
            Reply::SshKeys(vec![SshKeyInfo {
                fingerprint: "SHA256:abc".into(),
                key_type: "ssh-ed25519".into(),
                bits: 256,
                comment: Some("laptop".into()),
                added: 5,
            }]),
            Reply::Admin(AdminInfo { password_set: true }),
            Reply::Login(LoginOutcome::NoPassword),
        ] {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&s).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Reply::Login(LoginOutcome::Accepted)).unwrap(),
            r#"{"reply":"login","data":"accepted"}"#
        );
    }

    #[test]
    fn admin_password_rules() {
        assert!(validate_admin_password("correct horse").is_ok());
        assert!(validate_admin_password("short-pw1")
            .unwrap_err()
            .contains("at least 10"));
        assert!(validate_admin_password("xxxxxxxxxxxx")
            .unwrap_err()
            .contains("repeated"));
        assert!(validate_admin_password(" leading-space")
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("Front desk").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\u{1b}[2J").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }
}

/// `outpostctl config ...`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "config", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConfigCommand {
    /// The running configuration (or revision `rev`).
    Show {
        /// Revision number; none = the running one.
        rev: Option<u32>,
    },
    /// Every revision with its state.
    List,
    /// Validate and apply a whole configuration as a new revision.
    Apply {
        /// The TOML text.
        text: String,
        /// Roll back by itself unless confirmed within this many seconds.
        confirm_secs: Option<u64>,
        /// Why (shown by `config list`).
        comment: Option<String>,
    },
    /// Confirm the pending revision.
    Confirm,
    /// Apply revision `rev` again (none: the previous one) as a new revision.
    Rollback {
        /// Revision number.
        rev: Option<u32>,
    },
    /// Unified diff between two revisions (defaults: the previous and the running one).
    Diff {
        /// Older revision.
        from: Option<u32>,
        /// Newer revision.
        to: Option<u32>,
    },
}

impl ConfigCommand {
    /// Wire name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ConfigCommand::Show { .. } => "config_show",
            ConfigCommand::List => "config_list",
            ConfigCommand::Apply { .. } => "config_apply",
            ConfigCommand::Confirm => "config_confirm",
            ConfigCommand::Rollback { .. } => "config_rollback",
            ConfigCommand::Diff { .. } => "config_diff",
        }
    }
}
