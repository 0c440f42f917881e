//! The command line: the clap tree of every outpostctl command, its arguments and help.
//!
//! Parsed in one place for the command line itself, the shell's lines and an SSH session's
//! `$SSH_ORIGINAL_COMMAND` (the session module); nothing here runs a command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Administer a running outpostd over its control socket.
#[derive(Debug, Parser)]
#[command(name = "outpostctl", version)]
pub struct Cli {
    /// The daemon's admin socket [default: $OUTPOST_SOCKET, else /run/outpost/admin.sock if
    /// it exists, else ./outpost-data/outpostd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's reply as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show the daemon's state at a glance.
    Status,
    /// Manage extensions.
    #[command(subcommand)]
    Ext(ExtCmd),
    /// Desk-phone auto-provisioning: the phones the box writes configuration files for.
    #[command(subcommand)]
    Phone(PhoneCmd),
    /// Show registrations.
    #[command(subcommand)]
    Reg(RegCmd),
    /// Show calls in progress.
    Calls,
    /// Show call detail records.
    #[command(subcommand)]
    Cdr(CdrCmd),
    /// The SIP firewall: bans, alerts, rules.
    #[command(subcommand)]
    Fw(FwCmd),
    /// Voicemail messages.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Call recordings (made on demand by the extensions that opted in).
    #[command(subcommand)]
    Rec(RecCmd),
    /// Show the SIP trunks: health, registration, reason, since when.
    Trunks,
    /// Counters for monitoring (also served as Prometheus text with `[metrics] listen`).
    Metrics,
    /// The configuration: show, edit, apply with automatic rollback, revisions, diff.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// SSH access: the public keys that may log in.
    #[command(subcommand)]
    Ssh(SshCmd),
    /// The admin password of the serial console.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Encrypted backups: make one now, list, verify, restore.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Firmware updates: install a signed bundle into the other slot, show the slots.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// The daemon's persistent log (newest lines last); --follow shows new lines as they
    /// come until interrupted.
    Log(LogArgs),
    /// The software bill of materials of this firmware (CycloneDX JSON).
    Sbom {
        /// Only the counts: crates, Debian packages, licences.
        #[arg(long)]
        summary: bool,
    },
    /// An interactive shell for every command: line editing, history, TAB completion.
    Shell,
    /// Log in at the serial console with the admin password, then start the shell.
    Login,
    /// The SSH forced command: runs $SSH_ORIGINAL_COMMAND as outpostctl words (split like a
    /// shell quotes them, never run by a shell), or the shell when there is none.
    #[command(hide = true)]
    SshSession,
}

/// `update`: firmware updates, run on the box itself.
#[derive(Debug, Subcommand)]
pub enum UpdateCmd {
    /// Check a signed update bundle and write it to the slot not running now, armed for one
    /// trial boot: it commits itself when it passes its health check after the reboot,
    /// otherwise the box returns to the running slot.
    Install {
        /// The bundle: a file, `-` for standard input, or an http:// or https:// URL.
        source: String,
        /// Install an older release or the running one again.
        #[arg(long)]
        force: bool,
        /// Reboot into the new slot when the install succeeded.
        #[arg(long)]
        reboot: bool,
    },
    /// The slots: what runs, what each holds, the last update's outcome, the trusted keys.
    Status,
    /// The trial boot's health check (run once at every boot): commits the slot, or rolls
    /// back and reboots.
    #[command(hide = true)]
    Health {
        /// Seconds to wait for the checks [default: health_timeout in /etc/outpost/release,
        /// else 90].
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: Option<u64>,
    },
    /// The installer agent (run by init as the admin account): installs the bundles the
    /// web page staged in the spool directory, one at a time, and reboots on request.
    #[command(hide = true)]
    Agent {
        /// The spool directory shared with outpostd.
        #[arg(long, value_name = "DIR", default_value = "/data/spool/update")]
        spool: std::path::PathBuf,
        /// The image's paths under DIR instead of / (tests: slots as files, boot data as a
        /// directory).
        #[arg(long, value_name = "DIR")]
        root: Option<std::path::PathBuf>,
        /// The FIFO init's run-reboot reads.
        #[arg(
            long,
            value_name = "FIFO",
            default_value = "/run/outpost/reboot-request"
        )]
        reboot_fifo: std::path::PathBuf,
    },
}

/// `backup`: make, list, fetch, verify and restore backups.
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Make a backup now (and upload it to the configured targets).
    Now,
    /// The backups on the box (newest first; damaged ones marked), the schedule, the key
    /// and the off-site targets; with --remote the backups on each target.
    List {
        /// List the backups on the off-site targets instead.
        #[arg(long)]
        remote: bool,
    },
    /// Download a backup from an off-site target into the box's backup directory and
    /// check it; prints its local name (then: backup restore NAME).
    Fetch {
        /// The backup's name on the target [default: the newest].
        name: Option<String>,
        /// The target [default: the first configured].
        #[arg(long, value_name = "TNAME")]
        target: Option<String>,
    },
    /// The passphrase kept on the box for backups (when [backup] sets no key).
    #[command(subcommand)]
    Passphrase(PassphraseCmd),
    /// Print the box's public keys (made when missing): the SFTP client key (one OpenSSH
    /// line for the backup server's authorized_keys), then the backup-signing key (one
    /// `outpost-backup-ed25519 <base64> SHA256:<fingerprint>` line for the office to keep:
    /// a replacement box restores this box's backups with `--signer` and that line).
    Key {
        /// Only the SFTP client key.
        #[arg(long, conflicts_with = "signing")]
        sftp: bool,
        /// Only the backup-signing key.
        #[arg(long)]
        signing: bool,
    },
    /// Decrypt a backup and check every checksum; nothing on the box changes.
    Verify {
        /// A name from `backup list`, or a path on the box.
        file: PathBuf,
        #[command(flatten)]
        key: BackupKeyArgs,
        #[command(flatten)]
        trust: BackupTrustArgs,
    },
    /// Check a backup, then replace everything on the box with it: the daemon stages it,
    /// stops, applies it when it starts again (its supervisor restarts it), and this
    /// command returns when it runs on the restored data.
    Restore {
        /// A name from `backup list`, a path on the box, or `-`: the file on standard input
        /// (decrypted with the box's passphrase, or --identity).
        file: PathBuf,
        #[command(flatten)]
        key: BackupKeyArgs,
        #[command(flatten)]
        trust: BackupTrustArgs,
        /// Return once the restore is staged, without waiting for the restart.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `backup passphrase`: the passphrase kept on the box.
#[derive(Debug, Subcommand)]
pub enum PassphraseCmd {
    /// Store the passphrase (the first line of standard input; asked twice on a terminal).
    Set,
    /// Where the backup key comes from and whether a passphrase is stored (never the key).
    Status,
    /// Forget the stored passphrase.
    Clear,
}

/// How to decrypt a backup: an identity, an asked passphrase, or the daemon's key.
#[derive(Debug, Args)]
pub struct BackupKeyArgs {
    /// The age identity file of a backup encrypted to a recipient key (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase")]
    pub identity: Option<PathBuf>,
    /// Ask for the passphrase (or read the first line of standard input) instead of
    /// using the daemon's `[backup] passphrase_file`.
    #[arg(long)]
    pub passphrase: bool,
}

/// Who may have made a backup: this box's signing key and `[backup] trusted_keys` always.
#[derive(Debug, Args, Clone, Default)]
pub struct BackupTrustArgs {
    /// Also trust this backup-signing key (the `outpost-backup-ed25519 <base64>` line that
    /// `backup key` printed on the box that made the backup).
    #[arg(long, value_name = "KEYLINE")]
    pub signer: Option<String>,
    /// Accept a backup that no trusted key signed (made before backups were signed, or by
    /// an unknown key): it is restored with a warning, logged and raised as an alert.
    #[arg(long)]
    pub trust_unsigned: bool,
}

/// `ssh`: SSH access.
#[derive(Debug, Subcommand)]
pub enum SshCmd {
    /// Manage the public keys that may log in over SSH.
    #[command(subcommand)]
    Keys(KeysCmd),
}

/// `ssh keys`: the authorised public keys.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Authorise a public key: one OpenSSH line (ssh-ed25519, ecdsa-sha2-nistp256, or
    /// ssh-rsa of 2048 bits or more) with an optional comment, as in a .pub file.
    Add {
        /// The .pub file, or `-` for standard input.
        file: PathBuf,
    },
    /// Remove a key, named by its fingerprint (SHA256:...) or its comment.
    Del {
        /// The fingerprint from `ssh keys list`, or the key's comment.
        key: String,
    },
    /// List the authorised keys: fingerprint, type, comment.
    List,
}

/// `admin`: the serial console's admin password.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Set the serial console's admin password (at least 10 characters): asked twice on
    /// a terminal, else read from the first line of standard input.
    Passwd,
}

/// `vm`: voicemail messages.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// List messages, oldest first.
    List {
        /// Only this extension's mailbox.
        mailbox: Option<String>,
    },
    /// Delete a message (its index entry and audio file).
    Del {
        /// The message number from `vm list`.
        id: u64,
    },
    /// Set the PIN an extension enters after dialling the voicemail access number.
    Pin {
        /// Extension number.
        ext: String,
        /// 4 to 12 digits.
        pin: String,
    },
}

/// `rec`: call recordings.
#[derive(Debug, Subcommand)]
pub enum RecCmd {
    /// List recordings, newest first.
    List {
        /// Only calls this extension was in.
        ext: Option<String>,
    },
    /// Delete a recording (its audio and description).
    Del {
        /// The recording number from `rec list`.
        id: u64,
    },
    /// Download a recording's WAV file (G.711 µ-law, 8 kHz mono) to FILE (made 0600).
    Get {
        /// The recording number from `rec list`.
        id: u64,
        /// Where to write it (an existing file is not overwritten).
        file: std::path::PathBuf,
    },
}

/// `fw`: the SIP firewall.
#[derive(Debug, Subcommand)]
pub enum FwCmd {
    /// Mode (enforcing, user-space, monitor), counters, kernel counters, rule hits.
    Status,
    /// Banned addresses and locked accounts.
    Bans,
    /// Lift a ban everywhere (kernel, store, counters).
    Unban {
        /// The address, IPv4 or IPv6.
        addr: std::net::IpAddr,
    },
    /// Never drop or ban a network (until the daemon restarts; put it in
    /// [firewall.detect] allow to keep it).
    Allow {
        /// A network such as 192.168.1.0/24, or one address.
        cidr: firewall::net::Cidr,
    },
    /// Lift an account lock.
    Unlock {
        /// The account (extension).
        user: String,
    },
    /// The most recent alerts, newest first.
    Alerts {
        /// How many alerts to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Every rule with its threshold, action and hit counter.
    Rules,
    /// Ban every address of a blocklist once (rule `manual`, kept across restarts): one
    /// address or network per line with `#` comments, or JSON (an array of addresses, or
    /// `fw export`'s document); networks of up to 256 addresses are expanded; at most 1 MiB.
    Import {
        /// The blocklist, or `-` for standard input.
        file: PathBuf,
        /// How long each address is banned, in seconds.
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
        ban_secs: u64,
    },
    /// Write our current bans (not those of blocklist feeds) for other sites' feeds or
    /// `fw import`: JSON {"generated", "bans": [{"addr", "until", "rule", "reason"}]}, or one
    /// address per line.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
    },
}

/// `fw export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// `{"generated": ms, "bans": [...]}`, one ban per line.
    Json,
    /// One address per line after a `#` comment.
    Lines,
}

/// `phone`: desk-phone auto-provisioning.
#[derive(Debug, Subcommand)]
pub enum PhoneCmd {
    /// Provision a desk phone for an extension. The extension's SIP password is replaced by
    /// a generated one that the phone receives in its file; the phone's provisioning user
    /// name and password are shown once (adding the MAC again makes new ones).
    Add {
        /// The phone's MAC address (80:5e:c0:12:34:56, 805EC0123456, ...).
        mac: String,
        /// Its model: Yealink T4x/T5x, Grandstream GXP/GRP, Snom D-series, Poly VVX/Edge,
        /// Fanvil X-series (T46U, GXP2170, D785, VVX450, X4U, ...).
        model: String,
        /// The extension it registers as (it must exist).
        ext: String,
        /// BLF keys: the extensions they watch, comma-separated (e.g. 101,102).
        #[arg(long, value_delimiter = ',', value_name = "EXT,...")]
        keys: Vec<String>,
    },
    /// List the provisioned phones and when each last fetched its file.
    List,
    /// Stop provisioning a phone (its extension stays).
    Del {
        /// The phone's MAC address.
        mac: String,
    },
}

/// `ext`: extensions.
#[derive(Debug, Subcommand)]
pub enum ExtCmd {
    /// List extensions and how many phones each has registered.
    List,
    /// Show an extension: name, call forwarding, caller-ID, whether a voicemail PIN is set,
    /// and its registered phones.
    Show {
        /// Extension number.
        ext: String,
    },
    /// Create an extension (a random password is generated and shown once if none is given).
    Add {
        /// Extension number: 1-16 letters or digits.
        ext: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Delete an extension and its registrations.
    Del {
        /// Extension number.
        ext: String,
    },
    /// Set a new password (a random one is generated and shown once if none is given).
    Passwd {
        /// Extension number.
        ext: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Set the digest algorithms of the extension's phones: md5, sha256, both (SHA-256
    /// then MD5) or default (the global [auth] algorithms). They apply once a phone has
    /// authenticated from its address; the first challenge to a new address always offers
    /// the global algorithms, so it tells a stranger nothing about which extensions exist.
    Digest {
        /// Extension number.
        ext: String,
        /// md5, sha256, both or default.
        #[arg(value_parser = ["md5", "sha256", "both", "default"])]
        algorithms: String,
    },
    /// Set the caller-ID the extension presents on outside calls (no number: the route's
    /// or trunk's).
    Callerid {
        /// Extension number.
        ext: String,
        /// The number shown to the called party.
        number: Option<String>,
    },
    /// Set call forwarding (replaces what was set); --off clears it, no option shows the
    /// extension (as `ext show`).
    Forward {
        /// Extension number.
        ext: String,
        /// Forward every call to this number.
        #[arg(long, value_name = "NUMBER")]
        always: Option<String>,
        /// Forward when the extension is busy.
        #[arg(long, value_name = "NUMBER")]
        busy: Option<String>,
        /// Forward when nobody answers (or no phone is registered); a comma-separated list
        /// (at most 4) is a follow-me: each number tried in turn.
        #[arg(long, value_name = "NUMBER[,NUMBER...]")]
        no_answer: Option<String>,
        /// Seconds to ring the phones before --no-answer applies, and each number of its
        /// list [default: the ring timeout].
        #[arg(long, value_name = "SECS", requires = "no_answer")]
        no_answer_secs: Option<u64>,
        /// Switch call forwarding off.
        #[arg(long, conflicts_with_all = ["always", "busy", "no_answer", "no_answer_secs"])]
        off: bool,
    },
    /// Turn do-not-disturb on or off: the extension's phones ring for no call; callers get
    /// its busy forwarding, its voicemail or busy (the phone itself: *78 / *79).
    Dnd {
        /// Extension number.
        ext: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Create or replace extensions from a CSV file: `ext,password[,name]` per line, `#`
    /// comments; `-` reads standard input. Every row is checked before anything is sent.
    Import {
        /// The CSV file, or `-` for standard input.
        file: PathBuf,
    },
}

/// Where an extension's new password comes from (generated when neither is given).
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// The password (visible to other users in `ps`; prefer --password-stdin).
    #[arg(long, value_name = "PW", conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `reg`: registrations.
#[derive(Debug, Subcommand)]
pub enum RegCmd {
    /// List registered contacts.
    List,
}

/// `config`: the configuration and its revisions.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the running configuration (or revision REV).
    Show {
        /// Revision number.
        #[arg(long)]
        rev: Option<u32>,
    },
    /// List the revisions: number, time, state, comment.
    List,
    /// Edit the running configuration in $EDITOR (default vi), then apply it.
    Edit {
        /// Roll back by itself unless `config confirm` within SECS seconds.
        #[arg(long, value_name = "SECS")]
        confirm: Option<u64>,
        /// Why (shown by `config list`).
        #[arg(long, short = 'm')]
        message: Option<String>,
    },
    /// Validate and apply a whole configuration file (`-` = standard input).
    Apply {
        /// The TOML file.
        file: PathBuf,
        /// Roll back by itself unless `config confirm` within SECS seconds.
        #[arg(long, value_name = "SECS")]
        confirm: Option<u64>,
        /// Why (shown by `config list`).
        #[arg(long, short = 'm')]
        message: Option<String>,
    },
    /// Keep the revision applied with --confirm.
    Confirm,
    /// Apply an earlier revision again (default: the previous one).
    Rollback {
        /// Revision number.
        rev: Option<u32>,
    },
    /// Show what changed between two revisions (default: the previous and the running one).
    Diff {
        /// Older revision.
        from: Option<u32>,
        /// Newer revision.
        to: Option<u32>,
    },
}

/// `cdr`: call detail records.
#[derive(Debug, Subcommand)]
pub enum CdrCmd {
    /// List the most recent calls, newest first.
    List {
        /// How many records to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Export call records, oldest first, as CSV (RFC 4180, with a header row) or JSON.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = CdrFormat::Csv)]
        format: CdrFormat,
        /// Calls that started on or after this date (YYYY-MM-DD, UTC) or time (RFC 3339).
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Calls that started before this time, or on or before this date (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
    },
}

/// `outpostctl log`.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Keep showing new lines as they are written (Ctrl-C to stop).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines from this time on: a date (YYYY-MM-DD, UTC), an RFC 3339 time, or an age
    /// such as 30s, 15m, 2h, 7d.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// How many of the newest matching lines [default: with --since every line since,
    /// else 100, with --follow 10]
    #[arg(long, short = 'n', value_name = "N")]
    pub lines: Option<usize>,
    /// Only lines at least this severe.
    #[arg(long, value_enum)]
    pub level: Option<LogLevel>,
}

/// `log --level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `cdr export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CdrFormat {
    /// Comma-separated values with a header row; times in RFC 3339 UTC.
    Csv,
    /// A JSON array of records (times in ms since the epoch, as `cdr list --json`).
    Json,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use clap::CommandFactory;

    use firmware::console;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_subcommands() {
        let cli = Cli::try_parse_from([
            "outpostctl",
            "ext",
            "list",
            "--json",
            "--socket",
            "/tmp/x.sock",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, Some(PathBuf::from("/tmp/x.sock")));
        let cli = Cli::try_parse_from(["outpostctl", "cdr", "list"]).unwrap();
        assert!(matches!(cli.command, Cmd::Cdr(CdrCmd::List { limit: 50 })));
    }

    #[test]
    fn password_and_password_stdin_conflict() {
        let err = Cli::try_parse_from([
            "outpostctl",
            "ext",
            "add",
            "104",
            "--password",
            "abcdefgh1",
            "--password-stdin",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(Cli::try_parse_from(["outpostctl", "cdr", "list", "--limit", "0"]).is_err());
    }

    #[test]
    fn shell_completion_covers_the_real_command_tree() {
        let helper = console::ShellHelper::new(Cli::command());
        let tree = helper.tree();
        let (_, top) = console::complete(tree, "", 0);
        for name in [
            "status", "ext", "reg", "calls", "cdr", "fw", "vm", "trunks", "ssh", "admin", "shell",
            "login", "help", "exit",
        ] {
            assert!(top.iter().any(|c| c == name), "{name} not offered: {top:?}");
        }
        assert!(!top.iter().any(|c| c.starts_with("ssh-session")), "{top:?}");
        assert_eq!(
            console::complete(tree, "ssh keys ", 9).1,
            ["add", "del", "list"]
        );
        assert_eq!(console::complete(tree, "admin p", 7).1, ["passwd "]);
        assert_eq!(
            console::complete(tree, "fw export --f", 13).1,
            ["--format "]
        );
        assert!(console::complete(tree, "ext add --", 10)
            .1
            .contains(&"--password-stdin".to_owned()));
    }
}
