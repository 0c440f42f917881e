//! The control-plane protocol: JSON lines over a Unix stream socket.
//!
//! The client writes one [`Command`] per line and reads one [`Reply`] per line, in order; a
//! connection may carry several requests. Commands are internally tagged
//! (`{"cmd":"ext_add","ext":"104",...}`); replies are adjacently tagged
//! (`{"reply":"extensions","data":[...]}`) because serde cannot inline a list into a tag.

use serde::{Deserialize, Serialize};

use pbx_core::cdr::Cdr;

pub use crate::backup::api::{BackupCommand, BackupKey, SecretText};
pub use crate::console::api::{AdminCommand, AdminInfo, LoginOutcome, LoginService};
pub use crate::log::api::{LogCursor, LogPage, LogQuery, LogStatus};
pub use crate::log::remote::CollectorStatus;
pub use crate::names::{
    validate_admin_password, validate_ext, validate_name, validate_password, MAX_EXT_LEN,
    MAX_NAME_LEN, MAX_PASSWORD_LEN, MAX_SSH_KEY_LINE, MIN_ADMIN_PASSWORD_LEN, MIN_PASSWORD_LEN,
};
pub use crate::provision::{PhoneAdded, PhoneCommand, PhoneInfo, ProvisionAnswer};
pub use crate::ssh::api::{SshCommand, SshKeyInfo};

/// Version of this protocol, reported in the `status` reply. It grows when a command or
/// reply changes incompatibly; additions (a new command, a new field with a default) keep
/// it. A client that finds another non-zero version refuses to go on (zero: a daemon from
/// before versioning, which speaks version 1).
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request or reply line accepted, newline excluded (an import of 10,000 rows fits).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

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
    /// Call recordings, newest first (of calls this extension was in, when given).
    RecList { ext: Option<String> },
    /// Delete a call recording (audio and description).
    RecDel { id: u64 },
    /// A piece of a call recording's WAV file, in base64: `len` bytes (at most
    /// [`crate::chunk::MAX_CHUNK`]) at `offset`.
    RecAudio { id: u64, offset: u64, len: u64 },
    /// A voicemail message's audio, the stored WAV file in base64: the whole file (at most
    /// [`MAX_VM_AUDIO`]), or with `len` the piece at `offset` (at most
    /// [`crate::chunk::MAX_CHUNK`]). Read-only: the message stays new.
    VmAudio {
        /// Message number.
        id: u64,
        /// Where the piece starts (with `len`).
        #[serde(default)]
        offset: u64,
        /// Piece length; none: the whole file.
        #[serde(default)]
        len: Option<u64>,
    },
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
    /// Set (or with `None` clear) an extension's display name.
    ExtName {
        /// Extension number.
        ext: String,
        /// The name (the display-name rules); `None` clears it.
        name: Option<String>,
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
    // Busy lamps, do-not-disturb (issue 20): kept together.
    /// Turn an extension's do-not-disturb on or off (its phones ring for no call).
    ExtDnd {
        /// Extension number.
        ext: String,
        /// Do-not-disturb on.
        on: bool,
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
    /// Facts about the box, read-only: host name, addresses per interface, uplink (gateway,
    /// DNS), time sync, uptimes, firmware slot and version, SBOM summary.
    System,
    /// A piece of the image's SBOM file (CycloneDX JSON), to download it.
    SbomRead {
        /// Where the piece starts.
        offset: u64,
        /// How many bytes (1 to [`crate::chunk::MAX_CHUNK`]).
        len: u64,
    },
    /// Firmware updates from the web page (`{"cmd":"update","update":"state"}`).
    Update(crate::admin::update::UpdateCommand),
    /// Lines of the persistent log (`{"cmd":"log","lines":50,"level":"warn"}`); with
    /// `after`, the lines written since that cursor (how `outpostctl log --follow` polls).
    Log(LogQuery),
    /// Desk-phone provisioning (`{"cmd":"phone","phone":"list"}`).
    Phone(PhoneCommand),
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
            Command::VmAudio { .. } => "vm_audio",
            Command::VmPin { .. } => "vm_pin",
            Command::RecList { .. } => "rec_list",
            Command::RecDel { .. } => "rec_del",
            Command::RecAudio { .. } => "rec_audio",
            Command::Fw(fw) => fw.name(),
            Command::Trunks => "trunks",
            Command::Metrics => "metrics",
            Command::Config(c) => c.name(),
            Command::ExtCallerId { .. } => "ext_callerid",
            Command::ExtName { .. } => "ext_name",
            Command::ExtForward { .. } => "ext_forward",
            Command::ExtDigest { .. } => "ext_digest",
            Command::ExtDnd { .. } => "ext_dnd",
            Command::Ssh(ssh) => ssh.name(),
            Command::Admin(admin) => admin.name(),
            Command::Backup(b) => b.name(),
            Command::CdrExport { .. } => "cdr_export",
            Command::Log(_) => "log",
            Command::System => "system",
            Command::SbomRead { .. } => "sbom_read",
            Command::Update(u) => u.name(),
            Command::Phone(p) => p.name(),
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
    /// Answer to [`Command::VmAudio`].
    VmAudio(VoicemailAudio),
    /// Answer to [`Command::RecList`].
    Recordings(Vec<crate::recordings::RecordingEntry>),
    /// Answer to [`Command::RecAudio`]: the recording and a piece of its file.
    RecAudio {
        recording: crate::recordings::RecordingEntry,
        piece: crate::chunk::FileChunk,
    },
    /// A piece of a file: answer to `backup read` and `sbom_read`.
    FileChunk(crate::chunk::FileChunk),
    /// Answer to [`Command::System`].
    System(Box<SystemInfo>),
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
    /// Answer to the update upload commands.
    UpdateUpload(crate::admin::update::UploadState),
    /// Answer to `update state`.
    UpdateState(crate::admin::update::SpoolStatus),
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
    /// Answer to [`Command::Log`].
    Log(LogPage),
    /// Answer to [`PhoneCommand::List`].
    Phones(Vec<PhoneInfo>),
    /// Answer to [`PhoneCommand::Add`]: the phone's provisioning credentials, shown once.
    PhoneAdded(PhoneAdded),
    /// Answer to [`PhoneCommand::Fetch`].
    Provision(ProvisionAnswer),
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

/// Largest voicemail file [`Command::VmAudio`] returns whole (2 MiB: 262 s of 8 kHz
/// µ-law, more than the default `voicemail.max_secs` of 180; its base64 fits a reply
/// line). A longer message is read in pieces.
pub const MAX_VM_AUDIO: u64 = 2 * 1024 * 1024;

/// A voicemail message's audio, or a piece of it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VoicemailAudio {
    /// Message number.
    pub id: u64,
    /// The mailbox (extension) holding it.
    pub mailbox: String,
    /// Who called.
    pub caller: String,
    /// When the call came in (ms since the epoch).
    pub at: u64,
    /// Length of the recording.
    pub duration_ms: u32,
    /// `audio/wav` (G.711 µ-law, 8 kHz mono: format tag 7).
    pub content_type: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// The bytes, standard base64.
    pub data: String,
}

/// Facts about the box (answer to [`Command::System`]); a fact the daemon cannot read
/// (off the box, or without the right) is `None` with the reason beside it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The box's name (`[system] hostname`, else the system's).
    pub hostname: String,
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Seconds since the system booted (`/proc/uptime`).
    pub host_uptime_secs: Option<u64>,
    /// Every interface with its addresses, in the kernel's order (at most
    /// [`MAX_INTERFACES`]).
    pub interfaces: Vec<InterfaceInfo>,
    /// The uplink: DHCP or static, its address, the default gateway, the DNS servers.
    pub uplink: UplinkInfo,
    /// The clock's synchronisation.
    pub time: crate::timesync::TimeStatus,
    /// The running firmware and its A/B slots; `None` off an Outpost image.
    pub firmware: Option<FirmwareInfo>,
    /// Why `firmware` is `None`.
    pub firmware_error: Option<String>,
    /// The image's SBOM; `None` when it cannot be read.
    pub sbom: Option<SbomInfo>,
    /// Why `sbom` is `None`.
    pub sbom_error: Option<String>,
}

/// Most interfaces listed by [`Command::System`].
pub const MAX_INTERFACES: usize = 64;
/// Most addresses listed per interface.
pub const MAX_INTERFACE_ADDRS: usize = 32;

/// One network interface.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Its name (`eth0`).
    pub name: String,
    /// It is up.
    pub up: bool,
    /// Its addresses with prefix (`192.168.1.20/24`).
    pub addrs: Vec<String>,
}

/// The uplink as the system has it now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UplinkInfo {
    /// `dhcp` or `static` (as `network.toml` says).
    pub mode: String,
    /// The uplink's IPv4 address with prefix; empty: none.
    pub address: String,
    /// The default gateway; empty: none.
    pub gateway: String,
    /// The resolver's servers.
    pub dns: Vec<String>,
}

/// The running firmware and the A/B slots, as the initramfs booted them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FirmwareInfo {
    /// Version of the running release (`/etc/outpost/release`).
    pub version: String,
    /// Its build time, seconds since the epoch.
    pub build: u64,
    /// The board profile.
    pub profile: Option<String>,
    /// The slot running now (`a` or `b`).
    pub booted_slot: String,
    /// The committed slot (what boots without a trial), as at boot.
    pub committed_slot: Option<String>,
    /// This boot is an update's trial, not yet committed by its health check.
    pub trial: bool,
    /// The slot armed for the next boot's trial, as at boot.
    pub armed_slot: Option<String>,
    /// The latest update's outcome (`rolled-back b 0.2.0 ... reason`), as at boot.
    pub last_update: Option<String>,
}

/// The image's software bill of materials.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SbomInfo {
    /// Where it is on the box.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Components listed.
    pub components: usize,
    /// Of which Rust crates.
    pub crates: usize,
    /// Of which Debian packages.
    pub debian_packages: usize,
    /// Components per licence expression, most used first (at most 20).
    pub licences: Vec<(String, usize)>,
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
    /// [`PROTOCOL_VERSION`] of the daemon; 0 from a daemon that predates it.
    #[serde(default)]
    pub protocol_version: u32,
    /// The persistent log and the remote syslog collectors; `None` from a daemon that
    /// predates them.
    #[serde(default)]
    pub log: Option<LogStatus>,
    /// The clock: synchronised or not, the last offset and server; `None` from a daemon
    /// that predates time synchronisation.
    #[serde(default)]
    pub time: Option<Box<crate::timesync::TimeStatus>>,
    /// The relay's kernel fast path (`[media] kernel_fast_path`): `None` when not asked
    /// for; `on: N call directions in the kernel` or `unavailable: why` (user space only).
    #[serde(default)]
    pub media_fast_path: Option<String>,
}

impl StatusInfo {
    /// Whether this client speaks the daemon's protocol (a daemon that reports no version
    /// speaks version 1).
    pub fn protocol_compatible(&self) -> bool {
        matches!(self.protocol_version, 0 | PROTOCOL_VERSION)
    }
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
    /// In do-not-disturb.
    #[serde(default)]
    pub dnd: bool,
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
    /// In do-not-disturb (its phones ring for no call).
    #[serde(default)]
    pub dnd: bool,
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
    /// `ringing`, `answered`, `on hold` (a phone holds it: known with media anchored),
    /// `parked on 701`, or `in conference (3 parties)`.
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
            FwCommand::Status { cached: false },
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
        // `log` with any subset of its fields; unknown ones are refused.
        let c: Command = serde_json::from_str(r#"{"cmd":"log"}"#).unwrap();
        assert_eq!(c, Command::Log(LogQuery::default()));
        let c: Command = serde_json::from_str(
            r#"{"cmd":"log","lines":5,"level":"warn","after":{"file":3,"offset":9}}"#,
        )
        .unwrap();
        assert_eq!(c.name(), "log");
        assert_eq!(
            serde_json::from_str::<Command>(&serde_json::to_string(&c).unwrap()).unwrap(),
            c
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"log","grep":"x"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"ext_del"}"#).is_err());
    }

    #[test]
    fn a_status_without_a_protocol_version_is_version_1() {
        let old = r#"{"version":"0.1.0","uptime_secs":1,"listen":[],"extensions":0,"registrations":0,"active_calls":0,"cdrs":0,"data_dir":"/data","realm":"outpost"}"#;
        let info: StatusInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.protocol_version, 0);
        assert!(info.protocol_compatible());
        let newer = StatusInfo {
            protocol_version: PROTOCOL_VERSION + 1,
            ..info
        };
        assert!(!newer.protocol_compatible());
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
                protocol_version: PROTOCOL_VERSION,
                media_fast_path: Some("on: 2 call directions in the kernel".into()),
                log: Some(LogStatus {
                    file: Some("/data/log/outpostd.log".into()),
                    file_dropped: 0,
                    collectors: vec![CollectorStatus {
                        address: "192.0.2.10:514".into(),
                        transport: "udp".into(),
                        connected: true,
                        sent: 9,
                        dropped: 1,
                        queued: 0,
                        last_error: None,
                    }],
                }),
                time: Some(Box::new(crate::timesync::TimeStatus {
                    sets_clock: true,
                    servers: 3,
                    synchronised: true,
                    last_sync_ms: Some(1_780_000_000_000),
                    offset_ms: Some(-12),
                    correction: Some("slew".into()),
                    server: Some("192.0.2.123:123".into()),
                    stratum: Some(2),
                    unsynchronised_secs: None,
                    last_error: None,
                })),
            }),
            Reply::Log(LogPage {
                lines: vec!["2026-12-06T19:19:12.345Z INFO firmware::daemon: started".into()],
                cursor: Some(LogCursor {
                    file: 12,
                    offset: 345,
                    head: 77,
                }),
                missed: false,
                more: true,
            }),
            Reply::Extensions(vec![ExtensionInfo {
                ext: "100".into(),
                name: Some("Front desk".into()),
                registered: 2,
                dnd: true,
            }]),
            Reply::Extension(ExtensionDetail {
                ext: "100".into(),
                name: None,
                forwarding: pbx_core::endpoint::Forwarding {
                    always: None,
                    busy: Some("101".into()),
                    no_answer: Some("0301234567".into()),
                    no_answer_ms: 20_000,
                    no_answer_then: vec!["01701234567".into()],
                },
                caller_id: Some("0309876543".into()),
                vm_pin_set: true,
                digest: "sha256".into(),
                dnd: false,
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
                leg: Default::default(),
            }]),
            Reply::done("ok"),
            Reply::error("nope"),
            Reply::VmAudio(VoicemailAudio {
                id: 7,
                mailbox: "200".into(),
                caller: "100".into(),
                at: 1,
                duration_ms: 3120,
                content_type: "audio/wav".into(),
                size: 4,
                offset: 0,
                data: "UklGRg==".into(),
            }),
            Reply::FileChunk(crate::chunk::FileChunk {
                name: "a.backup".into(),
                size: 10,
                offset: 8,
                data: "YWI=".into(),
            }),
            Reply::System(Box::new(SystemInfo {
                hostname: "berlin-1".into(),
                version: "0.1.0".into(),
                uptime_secs: 5,
                host_uptime_secs: Some(50),
                interfaces: vec![InterfaceInfo {
                    name: "eth0".into(),
                    up: true,
                    addrs: vec!["192.168.1.20/24".into()],
                }],
                uplink: UplinkInfo {
                    mode: "dhcp".into(),
                    address: "192.168.1.20/24".into(),
                    gateway: "192.168.1.1".into(),
                    dns: vec!["192.168.1.1".into()],
                },
                time: crate::timesync::TimeStatus::default(),
                firmware: Some(FirmwareInfo {
                    version: "0.1.0".into(),
                    build: 1,
                    profile: Some("rpi4".into()),
                    booted_slot: "a".into(),
                    committed_slot: Some("a".into()),
                    trial: false,
                    armed_slot: None,
                    last_update: None,
                }),
                firmware_error: None,
                sbom: None,
                sbom_error: Some("/usr/share/outpost/sbom.json: No such file".into()),
            })),
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
                    nft_batch_processes: 1,
                    nft_processes: 3,
                    enforcer_cpus: Some(vec![1]),
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
            source: None,
            service: None,
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
        let c: Command = serde_json::from_str(
            r#"{"cmd":"admin","admin":"login","password":"x","source":"192.0.2.7","service":"web"}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Admin(AdminCommand::Login {
                password: "x".into(),
                source: Some("192.0.2.7".parse().unwrap()),
                service: Some(LoginService::Web),
            })
        );
        // The web page's read commands.
        for (line, name) in [
            (r#"{"cmd":"vm_audio","id":7}"#, "vm_audio"),
            (
                r#"{"cmd":"vm_audio","id":7,"offset":5,"len":10}"#,
                "vm_audio",
            ),
            (r#"{"cmd":"system"}"#, "system"),
            (r#"{"cmd":"sbom_read","offset":0,"len":65536}"#, "sbom_read"),
            (
                r#"{"cmd":"backup","backup":"read","file":"a.backup","offset":0,"len":9}"#,
                "backup_read",
            ),
            (
                r#"{"cmd":"update","update":"upload_begin","size":1000}"#,
                "update_upload_begin",
            ),
            (
                r#"{"cmd":"update","update":"upload_chunk","id":"ab","offset":0,"data":"AA=="}"#,
                "update_upload_chunk",
            ),
            (
                r#"{"cmd":"update","update":"upload_finish","id":"ab","sha256":"00","force":true}"#,
                "update_upload_finish",
            ),
            (
                r#"{"cmd":"update","update":"upload_abort","id":"ab"}"#,
                "update_upload_abort",
            ),
            (r#"{"cmd":"update","update":"state"}"#, "update_state"),
            (r#"{"cmd":"update","update":"reboot"}"#, "update_reboot"),
        ] {
            let c: Command = serde_json::from_str(line).unwrap();
            assert_eq!(c.name(), name);
            assert_eq!(
                serde_json::from_str::<Command>(&serde_json::to_string(&c).unwrap()).unwrap(),
                c
            );
        }
        for bad in [
            r#"{"cmd":"backup","backup":"read","file":"a.backup","offset":0}"#,
            r#"{"cmd":"sbom_read","offset":0,"len":1,"path":"/etc/shadow"}"#,
            r#"{"cmd":"update","update":"install","path":"/tmp/x"}"#,
            r#"{"cmd":"update","update":"upload_begin","size":1,"path":"/tmp/x"}"#,
            r#"{"cmd":"admin","admin":"login","password":"x","source":"192.0.2.300"}"#,
            r#"{"cmd":"admin","admin":"login","password":"x","service":"telnet"}"#,
        ] {
            assert!(serde_json::from_str::<Command>(bad).is_err(), "{bad}");
        }
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
