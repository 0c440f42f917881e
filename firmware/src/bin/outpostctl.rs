//! `outpostctl`: the admin CLI. Talks to a running `outpostd` over its Unix control socket.
//!
//! Exit codes: 0 success, 1 the daemon refused the command, 2 usage or input error (nothing
//! was sent), 3 the daemon could not be reached or the connection broke.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Serialize;

use firmware::admin::proto::{
    validate_admin_password, validate_ext, validate_name, validate_password, AdminCommand,
    BackupCommand, BackupKey, CallInfo, Command, ConfigCommand, ExtImportRow, ExtensionInfo,
    FwAlertInfo, FwBansInfo, FwCommand, FwExport, FwRuleInfo, FwStatusInfo, LoginOutcome,
    RegistrationInfo, Reply, SecretText, SshCommand, SshKeyInfo, StatusInfo, MAX_LINE,
    MAX_SSH_KEY_LINE,
};
use firmware::admin::Client;
use firmware::config::default_socket_path;
use firmware::console::{self, LoginEnd};
use firmware::guard::feed::{self, MAX_FEED_BYTES};
use firmware::update::{self, UpdateError};
use pbx_core::cdr::{Cdr, Disposition};

/// How long to wait for the daemon to answer one request (an import of thousands of
/// extensions takes a while on slow flash).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Length of generated passwords.
const GENERATED_PASSWORD_LEN: usize = 16;
/// Rows per request when an import is too large for one request line.
const IMPORT_CHUNK: usize = 2_000;
/// Import errors listed before the rest are summarised.
const MAX_LISTED_ERRORS: usize = 20;

/// Administer a running outpostd over its control socket.
#[derive(Debug, Parser)]
#[command(name = "outpostctl", version)]
struct Cli {
    /// The daemon's admin socket [default: $OUTPOST_SOCKET, else /run/outpost/admin.sock if
    /// it exists, else ./outpost-data/outpostd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the daemon's reply as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the daemon's state at a glance.
    Status,
    /// Manage extensions.
    #[command(subcommand)]
    Ext(ExtCmd),
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

#[derive(Debug, Subcommand)]
enum UpdateCmd {
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
}

#[derive(Debug, Subcommand)]
enum BackupCmd {
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
    /// Print the box's SFTP client public key (one OpenSSH line for the backup server's
    /// authorized_keys; made when missing).
    Key,
    /// Decrypt a backup and check every checksum; nothing on the box changes.
    Verify {
        /// A name from `backup list`, or a path on the box.
        file: PathBuf,
        #[command(flatten)]
        key: BackupKeyArgs,
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
        /// Return once the restore is staged, without waiting for the restart.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PassphraseCmd {
    /// Store the passphrase (the first line of standard input; asked twice on a terminal).
    Set,
    /// Where the backup key comes from and whether a passphrase is stored (never the key).
    Status,
    /// Forget the stored passphrase.
    Clear,
}

#[derive(Debug, Args)]
struct BackupKeyArgs {
    /// The age identity file of a backup encrypted to a recipient key (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase")]
    identity: Option<PathBuf>,
    /// Ask for the passphrase (or read the first line of standard input) instead of
    /// using the daemon's `[backup] passphrase_file`.
    #[arg(long)]
    passphrase: bool,
}

#[derive(Debug, Subcommand)]
enum SshCmd {
    /// Manage the public keys that may log in over SSH.
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
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

#[derive(Debug, Subcommand)]
enum AdminCmd {
    /// Set the serial console's admin password (at least 10 characters): asked twice on
    /// a terminal, else read from the first line of standard input.
    Passwd,
}

#[derive(Debug, Subcommand)]
enum VmCmd {
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

#[derive(Debug, Subcommand)]
enum FwCmd {
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
enum ExportFormat {
    /// `{"generated": ms, "bans": [...]}`, one ban per line.
    Json,
    /// One address per line after a `#` comment.
    Lines,
}

#[derive(Debug, Subcommand)]
enum ExtCmd {
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
        /// Forward when nobody answers (or no phone is registered).
        #[arg(long, value_name = "NUMBER")]
        no_answer: Option<String>,
        /// Seconds to ring before --no-answer applies [default: the ring timeout].
        #[arg(long, value_name = "SECS", requires = "no_answer")]
        no_answer_secs: Option<u64>,
        /// Switch call forwarding off.
        #[arg(long, conflicts_with_all = ["always", "busy", "no_answer", "no_answer_secs"])]
        off: bool,
    },
    /// Create or replace extensions from a CSV file: `ext,password[,name]` per line, `#`
    /// comments; `-` reads standard input. Every row is checked before anything is sent.
    Import {
        /// The CSV file, or `-` for standard input.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct PasswordArgs {
    /// The password (visible to other users in `ps`; prefer --password-stdin).
    #[arg(long, value_name = "PW", conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum RegCmd {
    /// List registered contacts.
    List,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
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

#[derive(Debug, Subcommand)]
enum CdrCmd {
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

/// `cdr export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CdrFormat {
    /// Comma-separated values with a header row; times in RFC 3339 UTC.
    Csv,
    /// A JSON array of records (times in ms since the epoch, as `cdr list --json`).
    Json,
}

/// Why the command failed, mapped to the exit code.
#[derive(Debug)]
enum Failure {
    /// The daemon replied with an error (or an unexpected reply): exit 1.
    Refused(String),
    /// Bad input detected before anything was sent: exit 2.
    Usage(String),
    /// The daemon could not be reached: exit 3.
    Unreachable(String),
    /// Already explained to the user; exit with this code.
    Shown(u8),
}

/// What to print for a `Done` reply when the CLI generated a password.
#[derive(Debug)]
struct Generated {
    human: String,
    password: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => ExitCode::from(report(failure)),
    }
}

/// Prints a failure (unless already shown) and returns its exit code.
fn report(failure: Failure) -> u8 {
    let (code, message) = match failure {
        Failure::Refused(m) => (1, m),
        Failure::Usage(m) => (2, m),
        Failure::Unreachable(m) => (3, m),
        Failure::Shown(code) => return code,
    };
    eprintln!("outpostctl: {message}");
    code
}

/// Where a command line comes from, for what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A line typed in the shell.
    Shell,
    /// `$SSH_ORIGINAL_COMMAND` of an SSH session (the forced command).
    Ssh,
}

/// The options of the outer invocation that the commands of a shell or session inherit.
#[derive(Debug, Clone)]
struct Session {
    socket: Option<PathBuf>,
    json: bool,
    /// Inside an SSH session: the socket is fixed by the forced command.
    ssh: bool,
    /// An SSH or console-login session: nothing but outpostctl may be reached (see
    /// [`escapes_the_session`]).
    restricted: bool,
}

/// Runs the command line: the shell, console login and SSH session here, the daemon's
/// commands through [`run`].
fn dispatch(cli: Cli) -> Result<(), Failure> {
    let session = Session {
        socket: cli.socket.clone(),
        json: cli.json,
        ssh: false,
        restricted: false,
    };
    match cli.command {
        Cmd::Shell => shell(&session),
        Cmd::Login => login(&Session {
            restricted: true,
            ..session
        }),
        Cmd::SshSession => ssh_session(Session {
            ssh: true,
            restricted: true,
            ..session
        }),
        _ => run(cli),
    }
}

/// The forced command of every SSH key: `$SSH_ORIGINAL_COMMAND` split into words (no
/// shell ever sees it) and run like a command line, or the shell when it is absent.
fn ssh_session(session: Session) -> Result<(), Failure> {
    match std::env::var("SSH_ORIGINAL_COMMAND") {
        Ok(line) if !line.trim().is_empty() => {
            let words = console::split_words(&line)
                .map_err(|e| Failure::Usage(format!("cannot read the command: {e}")))?;
            run_words(words, &session, Origin::Ssh)
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Failure::Usage("the command is not UTF-8 text".to_owned()))
        }
        _ => shell(&session),
    }
}

/// The interactive shell; each line runs like `outpostctl <line>`.
fn shell(session: &Session) -> Result<(), Failure> {
    console::run_shell(Cli::command(), |words| {
        if let Err(failure) = run_words(words, session, Origin::Shell) {
            report(failure);
        }
    })
    .map_err(|e| Failure::Usage(e.to_string()))
}

/// Parses `words` as outpostctl's arguments (in process, with the same parser as the
/// command line) and runs them with the session's socket.
fn run_words(words: Vec<String>, session: &Session, origin: Origin) -> Result<(), Failure> {
    let argv = std::iter::once("outpostctl".to_owned()).chain(words);
    let mut cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(()),
                _ => Err(Failure::Shown(2)),
            };
        }
    };
    if session.ssh && cli.socket.is_some() {
        return Err(Failure::Usage(
            "--socket cannot be changed in an SSH session".to_owned(),
        ));
    }
    if session.restricted {
        if let Some(why) = escapes_the_session(&cli.command) {
            return Err(Failure::Usage(why.to_owned()));
        }
    }
    cli.socket = cli.socket.or_else(|| session.socket.clone());
    cli.json |= session.json;
    match (&cli.command, origin) {
        (Cmd::Login | Cmd::SshSession, _) | (Cmd::Shell, Origin::Shell) => Err(Failure::Usage(
            "not available here: this is already a logged-in session".to_owned(),
        )),
        (Cmd::Shell, Origin::Ssh) => shell(session),
        _ => run(cli),
    }
}

/// Why `cmd` may not run in an SSH or console-login session, whose user must reach nothing
/// but outpostctl: files on the box are read or written only as standard input/output (a
/// path would reach any file as root), and no other program (an editor can start a shell).
fn escapes_the_session(cmd: &Cmd) -> Option<&'static str> {
    let file_arg = |f: &Path| f.as_os_str() != "-";
    match cmd {
        Cmd::Fw(FwCmd::Import { file, .. })
        | Cmd::Ext(ExtCmd::Import { file })
        | Cmd::Ssh(SshCmd::Keys(KeysCmd::Add { file }))
        | Cmd::Config(ConfigCmd::Apply { file, .. })
            if file_arg(file) =>
        {
            Some("in this session files are read from standard input only: give `-` and send the file (ssh box ... - < FILE)")
        }
        Cmd::Backup(BackupCmd::Restore { file, key, .. })
            if file.as_os_str() == "-" && key.identity.is_some() =>
        {
            Some("with `restore -` standard input is the backup: in this session it is decrypted with the box's passphrase (`backup passphrase set`); --identity is available only where outpostctl runs on the box")
        }
        Cmd::Backup(
            BackupCmd::Verify { file, key } | BackupCmd::Restore { file, key, .. },
        ) if file.to_string_lossy().contains('/')
            || key.identity.as_deref().is_some_and(file_arg) =>
        {
            Some("in this session name a backup from `backup list` (or `restore -` with the file on standard input) and give --identity as `-` (standard input)")
        }
        Cmd::Fw(FwCmd::Export { out: Some(_), .. }) => {
            Some("in this session --out is not available: the export goes to standard output")
        }
        Cmd::Config(ConfigCmd::Edit { .. }) => Some(
            "`config edit` runs an editor, which can start a shell: not available in this session; \
             use `config show` and `config apply -`",
        ),
        Cmd::Update(UpdateCmd::Install { source, .. })
            if source != "-" && !update::fetch::is_url(source) =>
        {
            Some("in this session a bundle comes from standard input or a URL: `update install - < FILE.bundle` or `update install https://...`")
        }
        Cmd::Update(UpdateCmd::Health { .. }) => {
            Some("`update health` runs once at boot: not available in this session")
        }
        _ => None,
    }
}

/// Serial console login: the admin password (no echo), three tries, then a pause.
fn login(session: &Session) -> Result<(), Failure> {
    // Off from the start: keys typed before the prompt appears are not shown either.
    let _ = console::set_echo(false);
    let socket = session.socket.clone().unwrap_or_else(default_socket_path);
    let mut client = connect(&socket)?;
    let mut ask = |command: Command| {
        client.request(&command).map_err(|e| {
            Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
        })
    };
    let no_password = || {
        eprintln!(
            "No admin password is set, so nobody can log in at this console yet.\n\
             Set one over SSH (ssh admin@<this box> admin passwd) or as root on this machine \
             (outpostctl admin passwd)."
        );
        Err(Failure::Shown(1))
    };
    match ask(Command::Admin(AdminCommand::Status))? {
        Reply::Admin(info) if !info.password_set => return no_password(),
        Reply::Admin(_) => {}
        Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
        other => return Err(unexpected(&other)),
    }
    let end = console::login_loop(
        || console::read_secret("Password: "),
        |password| match ask(Command::Admin(AdminCommand::Login { password })) {
            Ok(Reply::Login(outcome)) => Ok(outcome),
            Ok(Reply::Error { message }) => Err(sanitize(&message)),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(Failure::Unreachable(m) | Failure::Refused(m) | Failure::Usage(m)) => Err(m),
            Err(Failure::Shown(_)) => Err("login failed".to_owned()),
        },
    )
    .map_err(Failure::Refused)?;
    match end {
        LoginEnd::Accepted => {
            let _ = console::set_echo(true);
            if let Some(offer) = restore_offer(session) {
                return offer;
            }
            shell(session)
        }
        LoginEnd::NoPassword => no_password(),
        LoginEnd::TooManyTries => {
            eprintln!("Login incorrect.");
            // Keys typed during the pause and while the console restarts the login are
            // not echoed (the next login's prompt reads without echo anyway) and are
            // thrown away, so a password typed ahead never shows in clear.
            let _ = console::set_echo(false);
            std::thread::sleep(console::LOGIN_DELAY);
            console::flush_input();
            Err(Failure::Shown(1))
        }
        LoginEnd::Eof => Err(Failure::Shown(1)),
    }
}

fn connect(socket: &Path) -> Result<Client, Failure> {
    Client::connect(socket, REPLY_TIMEOUT).map_err(|e| {
        Failure::Unreachable(format!(
            "cannot connect to outpostd at {}: {e} (is outpostd running? \
             use --socket PATH or set OUTPOST_SOCKET)",
            socket.display()
        ))
    })
}

fn unexpected(reply: &Reply) -> Failure {
    Failure::Refused(format!("unexpected reply from outpostd: {reply:?}"))
}

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket_path);
    if let Cmd::Config(ConfigCmd::Edit { confirm, message }) = &cli.command {
        return config_edit(&socket, *confirm, message.clone(), cli.json);
    }
    if let Cmd::Cdr(CdrCmd::Export { format, from, to }) = &cli.command {
        return cdr_export(&socket, *format, from.as_deref(), to.as_deref());
    }
    if let Cmd::Backup(BackupCmd::Restore { file, key, no_wait }) = &cli.command {
        return backup_restore(&socket, file, key, !*no_wait, cli.json);
    }
    if let Cmd::Backup(BackupCmd::Fetch { name, target }) = &cli.command {
        return backup_fetch(&socket, name.clone(), target.clone(), cli.json);
    }
    match &cli.command {
        Cmd::Update(u) => return update_cmd(u, &socket, cli.json),
        Cmd::Sbom { summary } => return sbom(&update::Layout::system(), *summary, cli.json),
        _ => {}
    }
    let export = match &cli.command {
        Cmd::Fw(FwCmd::Export { out, format }) => Some((out.clone(), *format)),
        _ => None,
    };
    let (commands, generated) = plan(cli.command)?;
    let mut client = connect(&socket)?;
    for command in &commands {
        let reply = client.request(command).map_err(|e| {
            Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
        })?;
        match (&export, &reply) {
            (Some((out, format)), Reply::FwExport(doc)) => {
                write_export(doc, *format, out.as_deref())?;
            }
            _ => show(&reply, cli.json, generated.as_ref())?,
        }
    }
    Ok(())
}

/// `config edit`: the running configuration in $EDITOR, then applied if it changed (an
/// invalid result is reported with the key and can be edited again).
fn config_edit(
    socket: &Path,
    confirm: Option<u64>,
    message: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let mut client = connect(socket)?;
    let unreachable = |e: firmware::admin::ClientError| {
        Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
    };
    let reply = client
        .request(&Command::Config(ConfigCommand::Show { rev: None }))
        .map_err(unreachable)?;
    let Reply::ConfigText { rev, text } = reply else {
        return show(&reply, json, None);
    };
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "outpost-config-{}-rev{rev}.toml",
        std::process::id()
    ));
    std::fs::write(&path, &text)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_string());
    loop {
        let status = std::process::Command::new(&editor)
            .arg(&path)
            .status()
            .map_err(|e| Failure::Usage(format!("cannot run the editor {editor:?}: {e}")))?;
        if !status.success() {
            let _ = std::fs::remove_file(&path);
            return Err(Failure::Usage(format!("{editor} failed; nothing applied")));
        }
        let edited = std::fs::read_to_string(&path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
        if edited == text {
            let _ = std::fs::remove_file(&path);
            println!("no change");
            return Ok(());
        }
        let reply = client
            .request(&Command::Config(ConfigCommand::Apply {
                text: edited,
                confirm_secs: confirm,
                comment: message.clone(),
            }))
            .map_err(unreachable)?;
        if let Reply::Error { message } = &reply {
            eprintln!("outpostctl: {}", sanitize(message));
            eprint!("edit again? [Y/n] ");
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if answer.trim().eq_ignore_ascii_case("n") {
                let _ = std::fs::remove_file(&path);
                return Err(Failure::Shown(1));
            }
            continue;
        }
        let _ = std::fs::remove_file(&path);
        return show(&reply, json, None);
    }
}

/// Prints an export, or writes it to `out`; warns when bans were left out.
fn write_export(doc: &FwExport, format: ExportFormat, out: Option<&Path>) -> Result<(), Failure> {
    let text = render_export(doc, format);
    match out {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
            println!("{} bans exported to {}", doc.bans.len(), path.display());
        }
        None => print!("{text}"),
    }
    if doc.omitted > 0 {
        eprintln!(
            "outpostctl: {} more bans left out: an export holds at most 1 MiB so other sites can import it",
            doc.omitted
        );
    }
    Ok(())
}

/// The export document: JSON with one ban per line, or one address per line.
fn render_export(doc: &FwExport, format: ExportFormat) -> String {
    match format {
        ExportFormat::Json => {
            if doc.bans.is_empty() {
                return format!("{{\"generated\":{},\"bans\":[]}}\n", doc.generated);
            }
            let bans: Vec<String> = doc.bans.iter().map(to_json).collect();
            format!(
                "{{\"generated\":{},\"bans\":[\n{}\n]}}\n",
                doc.generated,
                bans.join(",\n")
            )
        }
        ExportFormat::Lines => {
            let mut out = format!(
                "# outpost bans exported {} UTC ({} addresses)\n",
                fmt_time(doc.generated),
                doc.bans.len()
            );
            for b in &doc.bans {
                out.push_str(&sanitize(&b.addr));
                out.push('\n');
            }
            out
        }
    }
}

/// Reads at most [`MAX_FEED_BYTES`] of a blocklist (`-` = standard input).
fn read_blocklist(file: &Path) -> Result<String, Failure> {
    let limit = MAX_FEED_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    let result = if file.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    if bytes.len() > MAX_FEED_BYTES {
        return Err(Failure::Usage(format!(
            "{}: larger than 1 MiB; split it into smaller files",
            file.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Failure::Usage(format!("{}: not UTF-8 text", file.display())))
}

/// Largest SBOM read.
const MAX_SBOM: u64 = 32 * 1024 * 1024;

fn update_failure(e: UpdateError) -> Failure {
    Failure::Refused(sanitize(&e.to_string()))
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// `update install|status|health`: these run here (as root on the box), not in outpostd.
fn update_cmd(cmd: &UpdateCmd, socket: &Path, json: bool) -> Result<(), Failure> {
    let layout = update::Layout::system();
    match cmd {
        UpdateCmd::Install {
            source,
            force,
            reboot,
        } => update_install(&layout, source, *force, *reboot, json),
        UpdateCmd::Status => {
            let s = update::status(&layout).map_err(update_failure)?;
            if json {
                println!("{}", to_json(&s));
            } else {
                print!("{}", render_update_status(&s));
            }
            Ok(())
        }
        UpdateCmd::Health { timeout } => update_health(&layout, socket, *timeout),
    }
}

fn update_install(
    layout: &update::Layout,
    source: &str,
    force: bool,
    reboot: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut reader: Box<dyn Read> = if source == "-" {
        Box::new(std::io::BufReader::with_capacity(
            256 * 1024,
            std::io::stdin(),
        ))
    } else if update::fetch::is_url(source) {
        let ca = layout.update_ca();
        let ca = ca.exists().then_some(ca.as_path());
        eprintln!("update: downloading {}", sanitize(source));
        let download = update::fetch::download(source, ca)
            .map_err(|e| update_failure(UpdateError::Fetch(e)))?;
        Box::new(std::io::BufReader::with_capacity(256 * 1024, download))
    } else {
        let file = std::fs::File::open(source)
            .map_err(|e| Failure::Usage(format!("{}: {e}", sanitize(source))))?;
        Box::new(std::io::BufReader::with_capacity(256 * 1024, file))
    };
    let installed = update::install(
        layout,
        &mut reader,
        update::InstallOptions { force },
        now_secs(),
        &mut |p| match p {
            update::Progress::Verified { slot } => {
                eprintln!("update: signature verified; writing slot {slot}")
            }
            update::Progress::Writing { slot, percent } => {
                eprintln!("update: writing slot {slot}: {percent} %")
            }
            update::Progress::Verifying { slot } => {
                eprintln!("update: reading slot {slot} back")
            }
        },
    )
    .map_err(update_failure)?;
    if json {
        println!("{}", to_json(&installed));
    } else {
        println!(
            "update: installed {} into slot {} ({} bytes, signed by key {}){}",
            sanitize(&installed.release.to_string()),
            installed.slot,
            installed.bytes,
            installed.key_id,
            if installed.forced { ", forced" } else { "" }
        );
        println!(
            "reboot to try it; it commits itself after passing its health check, otherwise \
             the box returns to slot {}",
            installed.booted
        );
    }
    if reboot {
        eprintln!("update: rebooting into slot {}", installed.slot);
        reboot_now()?;
    }
    Ok(())
}

/// `sync`, then busybox `reboot` (init runs the shutdown actions).
fn reboot_now() -> Result<(), Failure> {
    nix::unistd::sync();
    match std::process::Command::new("reboot").status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Failure::Refused(format!("reboot failed: {s}"))),
        Err(e) => Err(Failure::Refused(format!("cannot run reboot: {e}"))),
    }
}

/// The trial boot's verdict: commit when outpostd, its store and SIP answer in time, else
/// record the rollback and reboot into the committed slot.
fn update_health(
    layout: &update::Layout,
    socket: &Path,
    timeout: Option<u64>,
) -> Result<(), Failure> {
    let slot = match update::pending_trial(layout) {
        Ok(Some(slot)) => slot,
        Ok(None) => return Ok(()),
        Err(UpdateError::NotAnImage(_)) => {
            eprintln!("update: not booted from an Outpost image; nothing to check");
            return Ok(());
        }
        Err(e) => return Err(update_failure(e)),
    };
    let timeout = update::health_timeout(layout, timeout);
    println!(
        "update: slot {slot} is on trial: health check (up to {} s)",
        timeout.as_secs()
    );
    let probe = update::health::Probe {
        admin_socket: socket.to_path_buf(),
        sip: None,
    };
    let result = update::health::probe(&probe, timeout);
    let took = result.as_ref().ok().copied();
    let verdict =
        update::record_health(layout, result.map(|_| ()), now_secs()).map_err(update_failure)?;
    match verdict {
        update::Verdict::NothingToDo => {
            println!("update: slot {slot}: the verdict was recorded already");
            Ok(())
        }
        update::Verdict::Committed { slot } => {
            println!(
                "update: slot {slot} committed: health check passed in {:.1} s",
                took.unwrap_or_default().as_secs_f64()
            );
            Ok(())
        }
        update::Verdict::RolledBack {
            slot,
            back_to,
            reason,
        } => {
            println!(
                "update: slot {slot} rolled back: {}; rebooting into slot {back_to}",
                sanitize(&reason)
            );
            reboot_now()?;
            Err(Failure::Shown(1))
        }
    }
}

fn render_update_status(s: &update::UpdateStatus) -> String {
    let release = |r: Option<&outpost_bundle::Release>| {
        r.map_or("unknown".to_owned(), |r| sanitize(&r.to_string()))
    };
    let mut out = format!(
        "running:  slot {}, {}{}\n",
        s.booted,
        release(s.running.as_ref()),
        if s.trial {
            " (on trial: the health check has not committed it yet)"
        } else {
            ""
        }
    );
    if let Some(p) = &s.profile {
        out.push_str(&format!("board:    {}\n", sanitize(p)));
    }
    let rows: Vec<Vec<String>> = s
        .slots
        .iter()
        .map(|slot| {
            let mut notes = Vec::new();
            if slot.running {
                notes.push("running");
            }
            if slot.committed {
                notes.push("committed");
            }
            if s.armed == Some(slot.slot) {
                notes.push("armed: boots once on trial at the next reboot");
            }
            vec![
                format!("slot {}", slot.slot),
                release(slot.release.as_ref()),
                slot.device.clone().unwrap_or_else(|| "-".to_owned()),
                notes.join(", "),
            ]
        })
        .collect();
    out.push_str(&format_table(None, &rows));
    match &s.last {
        Some(l) => {
            let what = match l.outcome {
                update::Outcome::Installed => "installed into",
                update::Outcome::Committed => "committed in",
                update::Outcome::RolledBack => "rolled back from",
            };
            out.push_str(&format!(
                "last update: {} {what} slot {} at {} UTC{}\n",
                release(Some(&l.release)),
                l.slot,
                fmt_time(l.time.saturating_mul(1000)),
                if l.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", sanitize(&l.reason))
                }
            ));
        }
        None => out.push_str("last update: none\n"),
    }
    if s.keys.is_empty() {
        out.push_str("trusted update keys: none (no bundle can be installed)\n");
    } else {
        out.push_str(&format!("trusted update keys: {}\n", s.keys.join(", ")));
    }
    for p in &s.key_problems {
        out.push_str(&format!("  skipped: {}\n", sanitize(p)));
    }
    if s.from_boot_copy {
        out.push_str("(boot data read from the copy made at boot: it may be older)\n");
    }
    out
}

/// `sbom`: the CycloneDX document as it is, or its counts.
fn sbom(layout: &update::Layout, summary: bool, json: bool) -> Result<(), Failure> {
    let mut text = String::new();
    std::fs::File::open(&layout.sbom)
        .and_then(|f| f.take(MAX_SBOM).read_to_string(&mut text))
        .map_err(|e| Failure::Refused(format!("{}: {e}", layout.sbom.display())))?;
    if !summary {
        print!("{text}");
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Refused(format!("{}: {e}", layout.sbom.display())))?;
    let s = update::sbom_summary(&doc);
    if json {
        println!("{}", to_json(&s));
    } else {
        print!("{}", render_sbom_summary(&s));
    }
    Ok(())
}

fn render_sbom_summary(s: &update::SbomSummary) -> String {
    let mut out = format!(
        "{} Rust crates, {} Debian packages{}\nlicences:\n",
        s.crates,
        s.debian_packages,
        if s.other > 0 {
            format!(", {} other components", s.other)
        } else {
            String::new()
        }
    );
    let rows: Vec<Vec<String>> = s
        .licences
        .iter()
        .map(|(l, n)| vec![format!("  {}", sanitize(l)), n.to_string()])
        .collect();
    out.push_str(&format_table(None, &rows));
    out
}

/// Turns the command line into the requests to send, checking all input first.
fn plan(cmd: Cmd) -> Result<(Vec<Command>, Option<Generated>), Failure> {
    let one = |c| Ok((vec![c], None));
    match cmd {
        Cmd::Status => one(Command::Status),
        Cmd::Ext(ExtCmd::List) => one(Command::ExtList),
        Cmd::Ext(ExtCmd::Show { ext }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtShow { ext })
        }
        Cmd::Reg(RegCmd::List) => one(Command::RegList),
        Cmd::Calls => one(Command::Calls),
        Cmd::Trunks => one(Command::Trunks),
        Cmd::Metrics => one(Command::Metrics),
        Cmd::Config(c) => one(Command::Config(match c {
            ConfigCmd::Show { rev } => ConfigCommand::Show { rev },
            ConfigCmd::List => ConfigCommand::List,
            ConfigCmd::Apply {
                file,
                confirm,
                message,
            } => ConfigCommand::Apply {
                text: read_input(&file)?,
                confirm_secs: confirm,
                comment: message,
            },
            ConfigCmd::Edit { .. } => {
                return Err(Failure::Usage(
                    "`config edit` needs a terminal and a daemon to talk to".to_string(),
                ))
            }
            ConfigCmd::Confirm => ConfigCommand::Confirm,
            ConfigCmd::Rollback { rev } => ConfigCommand::Rollback { rev },
            ConfigCmd::Diff { from, to } => ConfigCommand::Diff { from, to },
        })),
        Cmd::Ext(ExtCmd::Digest { ext, algorithms }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtDigest {
                ext,
                digest: algorithms,
            })
        }
        Cmd::Ext(ExtCmd::Callerid { ext, number }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtCallerId { ext, number })
        }
        Cmd::Ext(ExtCmd::Forward {
            ext,
            always,
            busy,
            no_answer,
            no_answer_secs,
            off,
        }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            if !off && always.is_none() && busy.is_none() && no_answer.is_none() {
                // Clearing takes `--off`: a bare `ext forward EXT` (to look) never clears.
                return one(Command::ExtShow { ext });
            }
            one(Command::ExtForward {
                ext,
                forwarding: pbx_core::endpoint::Forwarding {
                    always,
                    busy,
                    no_answer,
                    no_answer_ms: no_answer_secs.unwrap_or(0).saturating_mul(1000),
                },
            })
        }
        Cmd::Cdr(CdrCmd::List { limit }) => one(Command::CdrList {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }),
        Cmd::Cdr(CdrCmd::Export { .. }) => {
            Err(Failure::Usage("cdr export runs on its own".to_owned()))
        }
        Cmd::Backup(BackupCmd::Now) => one(Command::Backup(BackupCommand::Now)),
        Cmd::Backup(BackupCmd::List { remote: false }) => one(Command::Backup(BackupCommand::List)),
        Cmd::Backup(BackupCmd::List { remote: true }) => {
            one(Command::Backup(BackupCommand::ListRemote))
        }
        Cmd::Backup(BackupCmd::Key) => one(Command::Backup(BackupCommand::Key)),
        Cmd::Backup(BackupCmd::Passphrase(PassphraseCmd::Status)) => {
            one(Command::Backup(BackupCommand::Info))
        }
        Cmd::Backup(BackupCmd::Passphrase(PassphraseCmd::Clear)) => {
            one(Command::Backup(BackupCommand::PassphraseClear))
        }
        Cmd::Backup(BackupCmd::Passphrase(PassphraseCmd::Set)) => {
            let passphrase = read_new_backup_passphrase()?;
            one(Command::Backup(BackupCommand::PassphraseSet {
                passphrase: SecretText(passphrase),
            }))
        }
        Cmd::Backup(BackupCmd::Fetch { .. }) => {
            Err(Failure::Usage("backup fetch runs on its own".to_owned()))
        }
        Cmd::Backup(BackupCmd::Verify { file, key }) => {
            let (file, key) = backup_target(&file, &key)?;
            one(Command::Backup(BackupCommand::Verify { file, key }))
        }
        Cmd::Backup(BackupCmd::Restore { .. }) => {
            Err(Failure::Usage("backup restore runs on its own".to_owned()))
        }
        Cmd::Vm(VmCmd::List { mailbox }) => one(Command::VmList { mailbox }),
        Cmd::Vm(VmCmd::Del { id }) => one(Command::VmDel { id }),
        Cmd::Vm(VmCmd::Pin { ext, pin }) => one(Command::VmPin { ext, pin }),
        Cmd::Fw(fw) => one(Command::Fw(match fw {
            FwCmd::Status => FwCommand::Status,
            FwCmd::Bans => FwCommand::Bans,
            FwCmd::Unban { addr } => FwCommand::Unban {
                addr: addr.to_string(),
            },
            FwCmd::Allow { cidr } => FwCommand::Allow {
                cidr: cidr.to_string(),
            },
            FwCmd::Unlock { user } => {
                if user.is_empty() || user.len() > 64 || user.chars().any(char::is_control) {
                    return Err(Failure::Usage(format!(
                        "`{}` is not an account name",
                        user.escape_default()
                    )));
                }
                FwCommand::Unlock { user }
            }
            FwCmd::Alerts { limit } => FwCommand::Alerts {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            },
            FwCmd::Rules => FwCommand::Rules,
            FwCmd::Import { file, ban_secs } => {
                let text = read_blocklist(&file)?;
                // Checked here so a file with nothing to ban is refused before sending; the
                // daemon parses it again and reports what it skipped.
                let parsed = feed::parse(&text, 0)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
                if parsed.addrs.is_empty() {
                    let mut msg = format!("{}: no addresses to import", file.display());
                    for p in &parsed.problems {
                        msg.push_str("\n  ");
                        msg.push_str(&sanitize(p));
                    }
                    return Err(Failure::Usage(msg));
                }
                FwCommand::Import { text, ban_secs }
            }
            FwCmd::Export { .. } => FwCommand::Export,
        })),
        Cmd::Ext(ExtCmd::Del { ext }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtDel { ext })
        }
        Cmd::Ext(ExtCmd::Add {
            ext,
            name,
            password,
        }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            if let Some(name) = &name {
                validate_name(name).map_err(Failure::Usage)?;
            }
            let (password, generated) = obtain_password(&ext, &password)?;
            let generated = generated.then(|| Generated {
                human: format!("extension {ext} created, password: {password}"),
                password: password.clone(),
            });
            Ok((
                vec![Command::ExtAdd {
                    ext,
                    name,
                    password,
                }],
                generated,
            ))
        }
        Cmd::Ext(ExtCmd::Passwd { ext, password }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            let (password, generated) = obtain_password(&ext, &password)?;
            let generated = generated.then(|| Generated {
                human: format!("password of extension {ext} changed, new password: {password}"),
                password: password.clone(),
            });
            Ok((vec![Command::ExtPasswd { ext, password }], generated))
        }
        Cmd::Ext(ExtCmd::Import { file }) => {
            let text = read_input(&file)?;
            let shown = if file.as_os_str() == "-" {
                Path::new("<stdin>")
            } else {
                file.as_path()
            };
            let rows = parse_import(&text)
                .map_err(|errors| Failure::Usage(import_error_report(shown, &errors)))?;
            if rows.is_empty() {
                return Err(Failure::Usage(format!(
                    "{}: no extensions to import",
                    shown.display()
                )));
            }
            Ok((import_requests(rows), None))
        }
        Cmd::Ssh(SshCmd::Keys(KeysCmd::List)) => one(Command::Ssh(SshCommand::KeysList)),
        Cmd::Ssh(SshCmd::Keys(KeysCmd::Del { key })) => {
            if key.trim().is_empty() || key.len() > 300 || key.chars().any(char::is_control) {
                return Err(Failure::Usage(format!(
                    "`{}` is neither a fingerprint nor a comment",
                    key.escape_default()
                )));
            }
            one(Command::Ssh(SshCommand::KeysDel { key }))
        }
        Cmd::Ssh(SshCmd::Keys(KeysCmd::Add { file })) => {
            let line = read_key_line(&file)?;
            one(Command::Ssh(SshCommand::KeysAdd { line }))
        }
        Cmd::Admin(AdminCmd::Passwd) => {
            let password = read_new_admin_password()?;
            one(Command::Admin(AdminCommand::Passwd { password }))
        }
        Cmd::Shell | Cmd::Login | Cmd::SshSession => Err(Failure::Usage(
            "not available here: this is already a logged-in session".to_owned(),
        )),
        Cmd::Update(_) | Cmd::Sbom { .. } => Err(Failure::Usage(
            "update and sbom run on the box, not through outpostd".to_owned(),
        )),
    }
}

/// The file a backup command names, as the daemon must see it (absolute when it exists
/// here; a bare name is looked up in the backup directory), and the key to send.
fn backup_target(file: &Path, key: &BackupKeyArgs) -> Result<(String, Option<BackupKey>), Failure> {
    let text = file.to_string_lossy();
    let file = if text.contains('/') || file.exists() {
        std::path::absolute(file)
            .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?
            .to_string_lossy()
            .into_owned()
    } else {
        text.into_owned()
    };
    let key = if let Some(identity) = &key.identity {
        let text = read_input(identity)?;
        if text.len() > 64 * 1024 {
            return Err(Failure::Usage(format!(
                "{}: too large for an identity file",
                identity.display()
            )));
        }
        firmware::backup::crypto::Decryption::identity_text(&text)
            .map_err(|e| Failure::Usage(format!("{}: {e}", identity.display())))?;
        Some(BackupKey::Identity(text))
    } else if key.passphrase {
        let p = console::read_secret("Backup passphrase: ")
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase: {e}")))?
            .ok_or_else(|| Failure::Usage("no passphrase given".to_owned()))?;
        firmware::backup::crypto::Decryption::passphrase(&p)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        Some(BackupKey::Passphrase(p))
    } else {
        None
    };
    Ok((file, key))
}

/// `cdr export`: pages of records from the daemon, written as they arrive.
fn cdr_export(
    socket: &Path,
    format: CdrFormat,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(), Failure> {
    use std::io::Write;
    let parse = |s: &str| firmware::backup::schedule::parse_date(s).map_err(Failure::Usage);
    let from_ms = from.map(parse).transpose()?.map(|(t, _)| t);
    // A bare end date includes its whole day.
    let to_ms = to.map(parse).transpose()?.map(|(t, date)| {
        if date {
            t.saturating_add(86_400_000)
        } else {
            t
        }
    });
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if t <= f {
            return Err(Failure::Usage("--to must be after --from".to_owned()));
        }
    }
    let mut client = connect(socket)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let broken = |e: std::io::Error| Failure::Usage(format!("cannot write the export: {e}"));
    match format {
        CdrFormat::Csv => out.write_all(CSV_HEADER.as_bytes()).map_err(broken)?,
        CdrFormat::Json => out.write_all(b"[").map_err(broken)?,
    }
    let mut after = 0u64;
    let mut first = true;
    loop {
        let reply = client
            .request(&Command::CdrExport {
                from: from_ms,
                to: to_ms,
                after,
                limit: 2_000,
            })
            .map_err(|e| {
                Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
            })?;
        let (cdrs, next) = match reply {
            Reply::CdrPage { cdrs, next } => (cdrs, next),
            Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
            other => return Err(unexpected(&other)),
        };
        for cdr in &cdrs {
            match format {
                CdrFormat::Csv => out.write_all(csv_row(cdr).as_bytes()).map_err(broken)?,
                CdrFormat::Json => {
                    if !first {
                        out.write_all(b",").map_err(broken)?;
                    }
                    out.write_all(b"\n").map_err(broken)?;
                    out.write_all(to_json(cdr).as_bytes()).map_err(broken)?;
                }
            }
            first = false;
        }
        match next {
            Some(n) if n > after => after = n,
            _ => break,
        }
    }
    if format == CdrFormat::Json {
        out.write_all(if first { b"]\n" as &[u8] } else { b"\n]\n" })
            .map_err(broken)?;
    }
    out.flush().map_err(broken)
}

/// The header row of `cdr export --format csv`.
const CSV_HEADER: &str = "call_id,caller,callee,start,answer,end,billsec,disposition,status\r\n";

/// One CSV row (RFC 4180: CRLF line ends, fields with `,`, `"`, CR or LF quoted, quotes
/// doubled). Fields starting with `=` or `@` get a leading `'` so a spreadsheet never runs
/// them as formulas (these values come from the network); `+` stays, as in `+4930...`.
fn csv_row(c: &Cdr) -> String {
    let time = firmware::backup::schedule::rfc3339_ms;
    let disposition = serde_json::to_value(c.disposition)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let fields = [
        csv_field(&c.call_id),
        csv_field(&c.caller),
        csv_field(&c.callee),
        time(c.start),
        c.answer.map(time).unwrap_or_default(),
        time(c.end),
        c.billsec().to_string(),
        disposition,
        c.status.to_string(),
    ];
    format!("{}\r\n", fields.join(","))
}

fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The one public key line of a .pub file (or standard input), checked before sending.
fn read_key_line(file: &Path) -> Result<String, Failure> {
    let limit = u64::try_from(MAX_SSH_KEY_LINE * 2).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    let result = if file.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Usage(format!("{}: not UTF-8 text", file.display())))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines.as_slice() else {
        return Err(Failure::Usage(format!(
            "{}: expected exactly one public key line, found {}",
            file.display(),
            lines.len()
        )));
    };
    firmware::ssh::PublicKey::parse(line)
        .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    Ok((*line).to_owned())
}

/// The new console password: asked twice on a terminal, else the first line of stdin.
fn read_new_admin_password() -> Result<String, Failure> {
    let read = |prompt: &str| {
        console::read_secret(prompt)
            .map_err(|e| Failure::Usage(format!("cannot read the password: {e}")))?
            .ok_or_else(|| Failure::Usage("no password given".to_owned()))
    };
    let password = read("New admin password: ")?;
    validate_admin_password(&password).map_err(Failure::Usage)?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin())
        && read("Repeat the password: ")? != password
    {
        return Err(Failure::Usage("the passwords differ".to_owned()));
    }
    Ok(password)
}

/// The password from the flags, or a fresh random one (second value true when generated).
fn obtain_password(ext: &str, args: &PasswordArgs) -> Result<(String, bool), Failure> {
    let (password, generated) = if let Some(pw) = &args.password {
        (pw.clone(), false)
    } else if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the password from stdin: {e}")))?;
        let line = line.trim_end_matches(['\n', '\r']).to_owned();
        (line, false)
    } else {
        (generate_password(ext), true)
    };
    validate_password(ext, &password).map_err(Failure::Usage)?;
    Ok((password, generated))
}

/// A random password of letters and digits that passes [`validate_password`].
fn generate_password(ext: &str) -> String {
    let mut rng = rand::thread_rng();
    loop {
        let pw: String = (&mut rng)
            .sample_iter(&Alphanumeric)
            .take(GENERATED_PASSWORD_LEN)
            .map(char::from)
            .collect();
        if validate_password(ext, &pw).is_ok() {
            return pw;
        }
    }
}

fn read_input(file: &Path) -> Result<String, Failure> {
    let mut text = String::new();
    let result = if file.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    Ok(text)
}

/// Parses an import file: `ext,password[,name]` per line, fields trimmed, blank lines and
/// `#` comments skipped, an optional `ext,password[,name]` header. Returns every problem
/// with its 1-based line number, or the rows when there are none.
fn parse_import(text: &str) -> Result<Vec<ExtImportRow>, Vec<String>> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut first_line_of: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    let mut seen_data = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !seen_data {
            seen_data = true;
            let lower: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
            if lower == ["ext", "password"] || lower == ["ext", "password", "name"] {
                continue;
            }
        }
        if !(2..=3).contains(&fields.len()) {
            errors.push(format!(
                "line {line_no}: expected `ext,password[,name]`, found {} fields",
                fields.len()
            ));
            continue;
        }
        let (ext, password) = (fields[0], fields[1]);
        let name = fields
            .get(2)
            .filter(|n| !n.is_empty())
            .map(|n| n.to_string());
        let mut problems = Vec::new();
        if let Err(e) = validate_ext(ext) {
            problems.push(e);
        }
        if let Err(e) = validate_password(ext, password) {
            problems.push(e);
        }
        if let Some(Err(e)) = name.as_deref().map(validate_name) {
            problems.push(e);
        }
        if let Some(first) = first_line_of.get(ext) {
            problems.push(format!("extension {ext} already appears on line {first}"));
        } else {
            first_line_of.insert(ext.to_owned(), line_no);
        }
        if problems.is_empty() {
            rows.push(ExtImportRow {
                ext: ext.to_owned(),
                password: password.to_owned(),
                name,
            });
        } else {
            errors.push(format!("line {line_no}: {}", problems.join("; ")));
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

fn import_error_report(file: &Path, errors: &[String]) -> String {
    let mut out = format!(
        "{}: {} bad row(s), nothing imported",
        file.display(),
        errors.len()
    );
    for e in errors.iter().take(MAX_LISTED_ERRORS) {
        out.push_str("\n  ");
        out.push_str(e);
    }
    if errors.len() > MAX_LISTED_ERRORS {
        out.push_str(&format!(
            "\n  ... and {} more",
            errors.len() - MAX_LISTED_ERRORS
        ));
    }
    out
}

/// One request, or several when the rows would not fit in one request line.
fn import_requests(rows: Vec<ExtImportRow>) -> Vec<Command> {
    let whole = Command::ExtImport { rows };
    let fits = serde_json::to_vec(&whole)
        .map(|v| v.len() < MAX_LINE)
        .unwrap_or(false);
    let Command::ExtImport { rows } = whole else {
        unreachable!("constructed just above")
    };
    if fits {
        return vec![Command::ExtImport { rows }];
    }
    rows.chunks(IMPORT_CHUNK)
        .map(|c| Command::ExtImport { rows: c.to_vec() })
        .collect()
}

/// Prints one reply; a daemon error becomes [`Failure::Refused`].
fn show(reply: &Reply, json: bool, generated: Option<&Generated>) -> Result<(), Failure> {
    if json {
        let line = match (reply, generated) {
            (Reply::Done { message }, Some(g)) => to_json(&serde_json::json!({
                "message": message,
                "password": g.password,
            })),
            _ => payload_json(reply),
        };
        println!("{line}");
    } else if !matches!(reply, Reply::Error { .. }) {
        print!("{}", render(reply, generated));
    }
    match reply {
        Reply::Error { message } => Err(Failure::Refused(sanitize(message))),
        _ => Ok(()),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The reply's payload without the tag, as one JSON line.
fn payload_json(reply: &Reply) -> String {
    match reply {
        Reply::Status(s) => to_json(s),
        Reply::Extensions(v) => to_json(v),
        Reply::Extension(e) => to_json(e),
        Reply::Registrations(v) => to_json(v),
        Reply::Calls(v) => to_json(v),
        Reply::Cdrs(v) => to_json(v),
        Reply::Voicemail(v) => to_json(v),
        Reply::FwStatus(s) => to_json(s),
        Reply::FwBans(b) => to_json(b),
        Reply::FwAlerts(v) => to_json(v),
        Reply::FwRules(v) => to_json(v),
        Reply::FwExport(doc) => to_json(doc),
        Reply::Trunks(v) => to_json(v),
        Reply::Metrics(m) => to_json(m),
        Reply::ConfigText { rev, text } => {
            to_json(&serde_json::json!({ "rev": rev, "text": text }))
        }
        Reply::ConfigRevisions(v) => to_json(v),
        Reply::SshKeys(v) => to_json(v),
        Reply::Admin(a) => to_json(a),
        Reply::Login(o) => to_json(o),
        Reply::Backups(b) => to_json(b),
        Reply::BackupCreated(b) => to_json(b),
        Reply::BackupVerified(c) => to_json(c),
        Reply::RestoreStaged(r) => to_json(r),
        Reply::BackupUpload(u) => to_json(u),
        Reply::BackupFetched(f) => to_json(f),
        Reply::RemoteBackups(r) => to_json(r),
        Reply::BackupInfo(i) => to_json(i),
        Reply::HostKey { line, fingerprint } => {
            to_json(&serde_json::json!({ "line": line, "fingerprint": fingerprint }))
        }
        Reply::CdrPage { cdrs, next } => {
            to_json(&serde_json::json!({ "cdrs": cdrs, "next": next }))
        }
        Reply::Done { message } | Reply::Error { message } => {
            to_json(&serde_json::json!({ "message": message }))
        }
    }
}

/// Human output for a reply, ending in a newline.
fn render(reply: &Reply, generated: Option<&Generated>) -> String {
    match reply {
        Reply::Status(s) => render_status(s),
        Reply::Extensions(v) => render_extensions(v),
        Reply::Extension(e) => render_extension(e),
        Reply::Registrations(v) => render_registrations(v),
        Reply::Calls(v) => render_calls(v),
        Reply::Cdrs(v) => render_cdrs(v),
        Reply::Voicemail(v) => render_voicemail(v),
        Reply::FwStatus(s) => render_fw_status(s),
        Reply::FwBans(b) => render_fw_bans(b),
        Reply::FwAlerts(v) => render_fw_alerts(v),
        Reply::FwRules(v) => render_fw_rules(v),
        Reply::FwExport(doc) => render_export(doc, ExportFormat::Json),
        Reply::Trunks(v) => render_trunks(v),
        Reply::Metrics(m) => m.to_prometheus(),
        Reply::ConfigText { text, .. } => {
            if text.is_empty() || text.ends_with('\n') {
                text.clone()
            } else {
                format!("{text}\n")
            }
        }
        Reply::ConfigRevisions(v) => render_revisions(v),
        Reply::SshKeys(v) => render_ssh_keys(v),
        Reply::Admin(a) => format!(
            "admin password: {}\n",
            if a.password_set { "set" } else { "not set" }
        ),
        Reply::Login(o) => match o {
            LoginOutcome::Accepted => "password accepted\n".to_owned(),
            LoginOutcome::Refused => "password refused\n".to_owned(),
            LoginOutcome::NoPassword => "no admin password is set\n".to_owned(),
        },
        Reply::Backups(b) => render_backups(b),
        Reply::BackupCreated(b) => format!(
            "backup {} written ({}, encrypted to {})\n",
            sanitize(&b.name),
            fmt_size(b.size),
            sanitize(&b.encrypted_to)
        ),
        Reply::BackupVerified(c) => render_verified(c),
        Reply::RestoreStaged(r) => render_restore(r),
        Reply::BackupUpload(u) => format!(
            "upload {}: {} bytes{}\n",
            u.id,
            u.received,
            u.name
                .as_ref()
                .map(|n| format!(", stored as {}", sanitize(n)))
                .unwrap_or_default()
        ),
        Reply::BackupFetched(f) => format!("{}\n", sanitize(&f.name)),
        Reply::RemoteBackups(r) => render_remote(r),
        Reply::BackupInfo(i) => {
            format!(
                "backup key: {}\nstored passphrase: {}\nSFTP client key: {}\n",
                sanitize(&i.key),
                if i.passphrase_stored {
                    "set"
                } else {
                    "not set"
                },
                i.sftp_public_key
                    .as_deref()
                    .map(sanitize)
                    .unwrap_or_else(
                        || "none yet (made by `backup key` or the first upload)".to_owned()
                    )
            )
        }
        Reply::HostKey { line, fingerprint } => {
            format!("{} ({})\n", sanitize(line), sanitize(fingerprint))
        }
        Reply::CdrPage { cdrs, .. } => render_cdrs(cdrs),
        Reply::Done { message } => match generated {
            Some(g) => format!("{}\n", g.human),
            None => format!("{}\n", sanitize(message)),
        },
        Reply::Error { message } => format!("error: {}\n", sanitize(message)),
    }
}

fn render_status(s: &StatusInfo) -> String {
    let mut rows = Vec::new();
    if !s.hostname.is_empty() {
        rows.push(vec!["hostname".to_owned(), s.hostname.clone()]);
    }
    rows.extend([
        vec!["version".to_owned(), s.version.clone()],
        vec!["uptime".to_owned(), fmt_duration(s.uptime_secs)],
        vec!["listen".to_owned(), s.listen.join(", ")],
        vec!["realm".to_owned(), s.realm.clone()],
        vec!["data dir".to_owned(), s.data_dir.clone()],
        vec!["store schema".to_owned(), s.store_schema.to_string()],
        vec!["extensions".to_owned(), s.extensions.to_string()],
        vec!["registrations".to_owned(), s.registrations.to_string()],
        vec!["active calls".to_owned(), s.active_calls.to_string()],
        vec!["call records".to_owned(), s.cdrs.to_string()],
    ]);
    if s.trunks > 0 {
        rows.push(vec![
            "trunks".to_owned(),
            format!("{} of {} up", s.trunks_up, s.trunks),
        ]);
    }
    rows.push(vec![
        "last backup".to_owned(),
        match s.last_backup_age_secs {
            Some(age) => format!("{} ago", fmt_duration(age)),
            None => "never".to_owned(),
        },
    ]);
    if s.survival {
        rows.push(vec![
            "mode".to_owned(),
            "SURVIVAL: every trunk is down; local calls, voicemail and the IVR work, outside calls do not".to_owned(),
        ]);
    }
    format_table(None, &rows)
}

fn render_backups(b: &firmware::backup::BackupList) -> String {
    let mut out = String::new();
    if b.backups.is_empty() {
        out.push_str(&format!("no backups in {}\n", sanitize(&b.dir)));
    } else {
        let rows: Vec<Vec<String>> = b
            .backups
            .iter()
            .map(|e| {
                vec![
                    sanitize(&e.name),
                    fmt_size(e.size),
                    format!("{} UTC", fmt_time(e.created_ms)),
                    e.encrypted_to.clone(),
                    match (&e.damaged, e.verified) {
                        (Some(why), _) => format!("DAMAGED: {}", sanitize(why)),
                        (None, true) => "verified".to_owned(),
                        (None, false) => "not checked (no key on the box)".to_owned(),
                    },
                ]
            })
            .collect();
        out.push_str(&format_table(
            Some(&["NAME", "SIZE", "CREATED", "ENCRYPTED TO", "STATE"]),
            &rows,
        ));
    }
    if let Some(age) = b.newest_age_secs {
        out.push_str(&format!("newest backup: {} ago\n", fmt_duration(age)));
    }
    if b.incomplete > 0 {
        out.push_str(&format!(
            "{} interrupted backup(s) (.partial) in {}: not usable, deleted by the next backup\n",
            b.incomplete,
            sanitize(&b.dir)
        ));
    }
    let damaged = b.backups.iter().filter(|e| e.damaged.is_some()).count();
    if damaged > 0 {
        out.push_str(&format!(
            "{damaged} damaged backup(s): they cannot be restored\n"
        ));
    }
    out.push_str(&format!(
        "key: {}{}\n",
        sanitize(&b.key),
        if b.passphrase_stored && b.key != "the passphrase stored on the box" {
            " (a passphrase is also stored on the box)"
        } else {
            ""
        }
    ));
    out.push_str(&format!("schedule: {} (UTC)", sanitize(&b.schedule)));
    if let Some(next) = b.next_run_ms {
        out.push_str(&format!(", next {} UTC", fmt_time(next)));
    }
    out.push('\n');
    for t in &b.targets {
        let state = match (&t.last_upload_error, t.last_ok_ms) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(ok)) => format!(
                "ok {} UTC ({})",
                fmt_time(ok),
                t.last_ok_file.clone().unwrap_or_default()
            ),
            (None, None) => "no upload yet".to_owned(),
        };
        let busy = if t.uploading { " [uploading]" } else { "" };
        out.push_str(&format!(
            "target {}: {}{busy}\n",
            sanitize(&t.name),
            sanitize(&state)
        ));
    }
    out
}

fn render_verified(c: &firmware::backup::archive::Contents) -> String {
    let rows = vec![
        vec![
            "result".to_owned(),
            "OK: decrypted, every checksum matches".to_owned(),
        ],
        vec!["format".to_owned(), c.format.to_string()],
        vec![
            "made".to_owned(),
            format!(
                "{} UTC by {} (Outpost {})",
                fmt_time(c.created_ms),
                c.hostname,
                c.outpost_version
            ),
        ],
        vec!["extensions".to_owned(), c.extensions.to_string()],
        vec!["call records".to_owned(), c.cdrs.to_string()],
        vec![
            "bans / locks".to_owned(),
            format!("{} / {}", c.bans, c.locks),
        ],
        vec!["alerts".to_owned(), c.alerts.to_string()],
        vec!["voicemail".to_owned(), c.voicemail.to_string()],
        vec![
            "config revisions".to_owned(),
            c.config_revisions.to_string(),
        ],
        vec![
            "TLS identity".to_owned(),
            if c.tls { "yes" } else { "no" }.to_owned(),
        ],
        vec![
            "SSH host key".to_owned(),
            if c.ssh_host_key { "yes" } else { "no" }.to_owned(),
        ],
        vec!["SSH keys".to_owned(), c.ssh_keys.to_string()],
        vec![
            "SFTP client key".to_owned(),
            if c.sftp_key { "yes" } else { "no" }.to_owned(),
        ],
    ];
    format_table(None, &rows)
}

/// What a restore brings back, and what changes for the admin.
fn render_restore(r: &firmware::backup::RestoreStaged) -> String {
    let c = &r.contents;
    let host = sanitize(&c.hostname);
    let mut out = format!(
        "restoring {} (backup of {host} made {} UTC, Outpost {}):\n  {} extensions, {} configuration revisions, {} voicemail messages, {} call records, {} SSH keys, {} bans, {} locks, {} alerts{}{}{}\n",
        sanitize(&r.file),
        fmt_time(c.created_ms),
        sanitize(&c.outpost_version),
        c.extensions,
        c.config_revisions,
        c.voicemail,
        c.cdrs,
        c.ssh_keys,
        c.bans,
        c.locks,
        c.alerts,
        if c.tls { ", the TLS identity" } else { "" },
        if c.ssh_host_key { ", the SSH host key" } else { "" },
        if c.sftp_key { ", the SFTP client key" } else { "" },
    );
    if c.admin_password {
        out.push_str(&format!(
            "the console admin password is now the one of {host} (this box's own no longer works)\n"
        ));
    }
    if c.ssh_host_key {
        out.push_str(&format!(
            "the SSH host key is now the one of {host}: SSH clients will warn that the host key changed; \
             run `ssh-keygen -R <this box's address>` (and `ssh-keygen -R <{host}'s address>` if it differs) on each client, then connect again\n"
        ));
    }
    out
}

/// `backup list --remote`.
fn render_remote(listings: &[firmware::backup::RemoteListing]) -> String {
    if listings.is_empty() {
        return "no off-site backup target is configured ([[backup.targets]])\n".to_owned();
    }
    let mut out = String::new();
    for l in listings {
        match &l.error {
            Some(e) => out.push_str(&format!(
                "target {}: cannot list: {}\n",
                sanitize(&l.target),
                sanitize(e)
            )),
            None if l.backups.is_empty() => {
                out.push_str(&format!("target {}: no backups\n", sanitize(&l.target)))
            }
            None => {
                out.push_str(&format!("target {}:\n", sanitize(&l.target)));
                let rows: Vec<Vec<String>> = l
                    .backups
                    .iter()
                    .map(|f| {
                        vec![
                            sanitize(&f.name),
                            fmt_size(f.size),
                            format!("{} UTC", fmt_time(f.created_ms)),
                        ]
                    })
                    .collect();
                out.push_str(&format_table(Some(&["NAME", "SIZE", "CREATED"]), &rows));
            }
        }
    }
    out
}

/// The new backup passphrase: asked twice without echo on a terminal, else the first line
/// of standard input.
fn read_new_backup_passphrase() -> Result<String, Failure> {
    let passphrase = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let first = rpassword::prompt_password("New backup passphrase: ")
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase: {e}")))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase: {e}")))?;
        if first != again {
            return Err(Failure::Usage("the two passphrases differ".to_owned()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(4096)
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase from stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    firmware::backup::secret::check(&passphrase).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(passphrase)
}

/// After the console login (at a terminal) of a box that was never configured: offers to
/// restore it from a backup on an SFTP or HTTPS server. `None` when not offered or declined (the shell
/// follows); otherwise how the restore ended (the login ends: the console starts a new
/// one, with the restored box's admin password).
fn restore_offer(session: &Session) -> Option<Result<(), Failure>> {
    // Interactive only: a login scripted through a pipe goes straight to the shell.
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return None;
    }
    let socket = session.socket.clone().unwrap_or_else(default_socket_path);
    let mut client = connect(&socket).ok()?;
    let Ok(Reply::BackupInfo(info)) = client.request(&Command::Backup(BackupCommand::Info)) else {
        return None;
    };
    if !info.never_configured {
        return None;
    }
    let ask = |question: &str| -> Option<String> {
        eprint!("{question}");
        let mut line = String::new();
        match std::io::stdin().lock().take(4096).read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_owned()),
        }
    };
    let yes = |answer: Option<String>| {
        answer.is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes"))
    };
    eprintln!("\nThis box has never been configured.");
    if !yes(ask("Restore it from a backup (a replacement box)? [y/N] ")) {
        return None;
    }
    loop {
        match console_restore(&mut client, &socket, &ask) {
            Ok(true) => return Some(Ok(())),
            Ok(false) => return None,
            Err(message) => {
                eprintln!("outpostctl: {}", sanitize(&message));
                if !yes(ask("Try again? [y/N] ")) {
                    return None;
                }
            }
        }
    }
}

/// One go of the console's restore: key, location, host key, passphrase, fetch, restore,
/// wait. `Ok(false)`: the admin stopped.
fn console_restore(
    client: &mut Client,
    socket: &Path,
    ask: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, String> {
    let mut request = |cmd: BackupCommand| -> Result<Reply, String> {
        match client.request(&Command::Backup(cmd)) {
            Ok(Reply::Error { message }) => Err(message),
            Ok(r) => Ok(r),
            Err(e) => Err(format!("talking to outpostd: {e}")),
        }
    };
    if let Reply::Done { message } = request(BackupCommand::Key)? {
        eprintln!(
            "For an SFTP server, this box logs in with this key; put the line in \
             ~/.ssh/authorized_keys of the backup account there:\n\n{}\n",
            sanitize(&message)
        );
    }
    let Some(url) =
        ask("Backup location (sftp://user@host[:port]/path/file or https://host/path/file): ")
            .filter(|u| !u.is_empty())
    else {
        return Ok(false);
    };
    let host_key = if url.starts_with("sftp://") {
        let Reply::HostKey { line, fingerprint } = request(BackupCommand::FetchUrl {
            url: url.clone(),
            host_key: None,
        })?
        else {
            return Err("no host key from the server".to_owned());
        };
        eprintln!(
            "The server presents this host key:\n  {}\n  {}",
            sanitize(&line),
            sanitize(&fingerprint)
        );
        let answer = ask("Is this the key of your backup server? [y/N] ");
        if !answer.is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes")) {
            return Err("host key not confirmed; nothing was downloaded".to_owned());
        }
        Some(line)
    } else {
        None
    };
    let passphrase = console::read_secret("Backup passphrase: ")
        .map_err(|e| format!("cannot read the passphrase: {e}"))?
        .ok_or("no passphrase given")?;
    firmware::backup::secret::check(&passphrase).map_err(|e| e.to_string())?;
    request(BackupCommand::PassphraseSet {
        passphrase: SecretText(passphrase),
    })?;
    eprintln!("downloading and checking the backup...");
    let Reply::BackupFetched(fetched) = request(BackupCommand::FetchUrl { url, host_key })? else {
        return Err("unexpected answer to the download".to_owned());
    };
    if !fetched.verified {
        return Err(format!(
            "{} was downloaded but does not open with this passphrase{}",
            fetched.name,
            if fetched.encrypted_to == "passphrase" {
                ""
            } else {
                " (it is encrypted to a recipient key: restore it with `backup restore NAME --identity FILE` from a machine with the identity)"
            }
        ));
    }
    let Reply::RestoreStaged(staged) = request(BackupCommand::Restore {
        file: fetched.name,
        key: None,
    })?
    else {
        return Err("unexpected answer to the restore".to_owned());
    };
    eprint!("{}", render_restore(&staged));
    wait_for_restore(socket, &staged.id, false).map_err(|f| match f {
        Failure::Refused(m) | Failure::Usage(m) | Failure::Unreachable(m) => m,
        Failure::Shown(_) => "the restore failed".to_owned(),
    })?;
    eprintln!("Log in again with the admin password of the restored box.");
    Ok(true)
}

/// How long `backup restore` waits for outpostd to run on the restored data.
const RESTORE_WAIT: Duration = Duration::from_secs(300);

/// `backup restore FILE|-`: upload (for `-`), restore, report, wait for the restart.
fn backup_restore(
    socket: &Path,
    file: &Path,
    key: &BackupKeyArgs,
    wait: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut client = connect(socket)?;
    let talk = |e: firmware::admin::ClientError| {
        Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
    };
    let (name, key) = if file.as_os_str() == "-" {
        if key.passphrase {
            return Err(Failure::Usage(
                "with `restore -` standard input is the backup, so it cannot also carry the passphrase: \
                 store it first with `backup passphrase set` (the restore then uses it), or give --identity FILE \
                 for a backup encrypted to a recipient key"
                    .to_owned(),
            ));
        }
        let identity = match &key.identity {
            Some(p) if p.as_os_str() == "-" => {
                return Err(Failure::Usage(
                    "with `restore -` standard input is the backup: give --identity as a file"
                        .to_owned(),
                ))
            }
            Some(p) => Some(read_identity(p)?),
            None => None,
        };
        let name = upload_stdin(&mut client, identity.is_some(), socket)?;
        (name, identity)
    } else {
        backup_target(file, key)?
    };
    let reply = client
        .request(&Command::Backup(BackupCommand::Restore {
            file: name.clone(),
            key,
        }))
        .map_err(talk)?;
    let staged = match reply {
        Reply::RestoreStaged(r) => r,
        other => return show(&other, json, None),
    };
    drop(client);
    if json {
        println!("{}", to_json(&staged));
    } else {
        print!("{}", render_restore(&staged));
    }
    if !wait {
        if !json {
            println!("outpostd restarts now to apply it");
        }
        return Ok(());
    }
    wait_for_restore(socket, &staged.id, json)
}

/// Waits (at most [`RESTORE_WAIT`]) until outpostd answers again and reports restore `id`.
fn wait_for_restore(socket: &Path, id: &str, json: bool) -> Result<(), Failure> {
    eprintln!("outpostd restarts to apply it; waiting until it runs on the restored data...");
    let deadline = std::time::Instant::now() + RESTORE_WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let status = Client::connect(socket, Duration::from_secs(10))
            .ok()
            .and_then(|mut c| c.request(&Command::Status).ok());
        if let Some(Reply::Status(s)) = status {
            if s.last_restore.as_ref().is_some_and(|r| r.id == id) {
                if !json {
                    println!(
                        "outpostd runs on the restored data (restore {id}): {} extensions, {} call records",
                        s.extensions, s.cdrs
                    );
                }
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(Failure::Refused(format!(
                "the restore is staged, but outpostd did not come back on the restored data within {} s; \
                 it is applied when outpostd starts (start it if nothing supervises it)",
                RESTORE_WAIT.as_secs()
            )));
        }
    }
}

/// An identity file given to `restore -` (read here, where outpostctl runs).
fn read_identity(path: &Path) -> Result<BackupKey, Failure> {
    let text = read_input(path)?;
    if text.len() > 64 * 1024 {
        return Err(Failure::Usage(format!(
            "{}: too large for an identity file",
            path.display()
        )));
    }
    firmware::backup::crypto::Decryption::identity_text(&text)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    Ok(BackupKey::Identity(text))
}

/// Sends standard input to the daemon in chunks; returns the backup's name on the box.
/// The age header (the first bytes) is checked first, so a missing key is reported before
/// anything is sent.
fn upload_stdin(
    client: &mut Client,
    have_identity: bool,
    socket: &Path,
) -> Result<String, Failure> {
    use base64::Engine as _;
    use firmware::backup::crypto::HeaderKind;
    use firmware::backup::upload::CHUNK;
    use sha2::Digest;
    let talk = |e: firmware::admin::ClientError| {
        Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
    };
    let mut stdin = std::io::stdin().lock();
    let mut read_chunk = |buf: &mut Vec<u8>| -> Result<(), Failure> {
        buf.clear();
        (&mut stdin)
            .take(CHUNK as u64)
            .read_to_end(buf)
            .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
        Ok(())
    };
    let mut buf = Vec::with_capacity(CHUNK);
    read_chunk(&mut buf)?;
    if buf.is_empty() {
        return Err(Failure::Usage(
            "standard input is empty: send the backup file (ssh admin@box backup restore - < FILE)"
                .to_owned(),
        ));
    }
    let kind = firmware::backup::crypto::header_kind_of(buf.as_slice()).map_err(|e| {
        Failure::Usage(format!(
            "standard input is not an encrypted Outpost backup (age header: {e})"
        ))
    })?;
    match (kind, have_identity) {
        (HeaderKind::Passphrase, true) => {
            return Err(Failure::Usage("this backup is encrypted with a passphrase, not to a recipient key: drop --identity; the box's stored passphrase is used (`backup passphrase set`)".to_owned()))
        }
        (HeaderKind::Recipient, false) => {
            return Err(Failure::Usage("this backup is encrypted to an age recipient key (X25519): give its identity file with --identity FILE (only where outpostctl runs on the box), or restore it by name after `backup fetch`".to_owned()))
        }
        (HeaderKind::Passphrase, false) => {
            let info = client
                .request(&Command::Backup(BackupCommand::Info))
                .map_err(talk)?;
            if let Reply::BackupInfo(i) = &info {
                if !i.passphrase_stored && !i.key.starts_with("passphrase file") {
                    return Err(Failure::Refused("this backup is encrypted with a passphrase and the box has none: standard input carries the backup, so store the passphrase first with `backup passphrase set` (ssh admin@box backup passphrase set), then restore again".to_owned()));
                }
            }
        }
        (HeaderKind::Recipient, true) => {}
    }
    let id = match client
        .request(&Command::Backup(BackupCommand::UploadBegin { name: None }))
        .map_err(talk)?
    {
        Reply::BackupUpload(u) => u.id,
        Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
        other => return Err(unexpected(&other)),
    };
    let mut hasher = sha2::Sha256::new();
    let mut offset = 0u64;
    let result = (|| -> Result<String, Failure> {
        while !buf.is_empty() {
            hasher.update(&buf);
            let data = base64::engine::general_purpose::STANDARD.encode(&buf);
            match client
                .request(&Command::Backup(BackupCommand::UploadChunk {
                    id: id.clone(),
                    offset,
                    data,
                }))
                .map_err(talk)?
            {
                Reply::BackupUpload(u) => offset = u.received,
                Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
                other => return Err(unexpected(&other)),
            }
            read_chunk(&mut buf)?;
        }
        match client
            .request(&Command::Backup(BackupCommand::UploadFinish {
                id: id.clone(),
                size: offset,
                sha256: hex::encode(hasher.clone().finalize()),
            }))
            .map_err(talk)?
        {
            Reply::BackupUpload(u) => u
                .name
                .ok_or_else(|| Failure::Refused("the upload has no name".to_owned())),
            Reply::Error { message } => Err(Failure::Refused(sanitize(&message))),
            other => Err(unexpected(&other)),
        }
    })();
    match result {
        Ok(name) => {
            eprintln!("uploaded {offset} bytes as {}", sanitize(&name));
            Ok(name)
        }
        Err(e) => {
            let _ = client.request(&Command::Backup(BackupCommand::UploadAbort { id }));
            Err(e)
        }
    }
}

/// `backup fetch [NAME] [--target T]`: prints the local name on standard output.
fn backup_fetch(
    socket: &Path,
    name: Option<String>,
    target: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let mut client = connect(socket)?;
    let reply = client
        .request(&Command::Backup(BackupCommand::Fetch { name, target }))
        .map_err(|e| {
            Failure::Unreachable(format!("talking to outpostd at {}: {e}", socket.display()))
        })?;
    if let (Reply::BackupFetched(f), false) = (&reply, json) {
        eprintln!(
            "{} {} from {} ({}, encrypted to {}; {}); restore it with: backup restore {}",
            if f.already_here {
                "already here:"
            } else {
                "fetched"
            },
            sanitize(&f.name),
            sanitize(&f.source),
            fmt_size(f.size),
            f.encrypted_to,
            if f.verified {
                "decrypted and checked with the box's passphrase"
            } else {
                "its header was checked; the box has no key to check more"
            },
            sanitize(&f.name)
        );
    }
    show(&reply, json, None)
}

/// `1.5 MiB`.
fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

fn render_ssh_keys(v: &[SshKeyInfo]) -> String {
    if v.is_empty() {
        return "no SSH keys (add one with `outpostctl ssh keys add FILE.pub`)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|k| {
            vec![
                k.fingerprint.clone(),
                k.key_type.clone(),
                k.bits.to_string(),
                k.comment.clone().unwrap_or_else(|| "-".to_owned()),
                fmt_time(k.added),
            ]
        })
        .collect();
    format_table(
        Some(&["FINGERPRINT", "TYPE", "BITS", "COMMENT", "ADDED (UTC)"]),
        &rows,
    )
}

fn render_revisions(v: &[firmware::revisions::Revision]) -> String {
    if v.is_empty() {
        return "no revisions\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            vec![
                r.rev.to_string(),
                fmt_time(r.at),
                match r.state {
                    firmware::revisions::RevisionState::Applied => "running".to_owned(),
                    firmware::revisions::RevisionState::Pending => match r.confirm_by {
                        Some(by) => format!(
                            "PENDING ({} s to confirm)",
                            by.saturating_sub(now_ms()) / 1000
                        ),
                        None => "PENDING".to_owned(),
                    },
                    firmware::revisions::RevisionState::Superseded => "superseded".to_owned(),
                    firmware::revisions::RevisionState::RolledBack => "rolled back".to_owned(),
                },
                sanitize(&r.comment),
            ]
        })
        .collect();
    format_table(Some(&["REV", "TIME (UTC)", "STATE", "COMMENT"]), &rows)
}

fn render_trunks(v: &[pbx_core::trunk::TrunkStatus]) -> String {
    if v.is_empty() {
        return "no trunks configured\n".to_owned();
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|t| {
            vec![
                sanitize(&t.name),
                match t.health {
                    pbx_core::trunk::Health::Up => "up".to_owned(),
                    pbx_core::trunk::Health::Down => "DOWN".to_owned(),
                },
                match t.registered {
                    None => "-".to_owned(),
                    Some(true) => match t.registered_until {
                        Some(until) => format!(
                            "yes ({} left)",
                            fmt_duration(until.saturating_sub(now) / 1000)
                        ),
                        None => "yes".to_owned(),
                    },
                    Some(false) => "no".to_owned(),
                },
                t.last_rtt_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
                format!("{} ago", fmt_duration(now.saturating_sub(t.since) / 1000)),
                sanitize(&t.reason),
            ]
        })
        .collect();
    format_table(
        Some(&["TRUNK", "HEALTH", "REGISTERED", "RTT", "SINCE", "REASON"]),
        &rows,
    )
}

fn render_extensions(v: &[ExtensionInfo]) -> String {
    if v.is_empty() {
        return "no extensions\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|e| {
            vec![
                e.ext.clone(),
                e.name.clone().unwrap_or_else(|| "-".to_owned()),
                e.registered.to_string(),
            ]
        })
        .collect();
    format_table(Some(&["EXT", "NAME", "REGISTERED"]), &rows)
}

fn render_extension(e: &firmware::admin::proto::ExtensionDetail) -> String {
    let f = &e.forwarding;
    let mut rows = vec![
        vec!["extension".to_owned(), e.ext.clone()],
        vec![
            "name".to_owned(),
            e.name.clone().unwrap_or_else(|| "-".to_owned()),
        ],
    ];
    if f.always.is_none() && f.busy.is_none() && f.no_answer.is_none() {
        rows.push(vec!["forwarding".to_owned(), "off".to_owned()]);
    }
    if let Some(t) = &f.always {
        rows.push(vec!["forward always".to_owned(), t.clone()]);
    }
    if let Some(t) = &f.busy {
        rows.push(vec!["forward when busy".to_owned(), t.clone()]);
    }
    if let Some(t) = &f.no_answer {
        let after = match f.no_answer_ms / 1000 {
            0 => "the ring timeout".to_owned(),
            secs => format!("{secs} s"),
        };
        rows.push(vec![
            "forward on no answer".to_owned(),
            format!("{t} (after {after})"),
        ]);
    }
    rows.push(vec![
        "caller-ID".to_owned(),
        e.caller_id
            .clone()
            .unwrap_or_else(|| "the route's or trunk's".to_owned()),
    ]);
    rows.push(vec![
        "voicemail PIN".to_owned(),
        if e.vm_pin_set { "set" } else { "not set" }.to_owned(),
    ]);
    if !e.digest.is_empty() && e.digest != "default" {
        rows.push(vec!["digest".to_owned(), e.digest.clone()]);
    }
    rows.push(vec![
        "registered".to_owned(),
        e.registrations.len().to_string(),
    ]);
    let mut out = format_table(None, &rows);
    if !e.registrations.is_empty() {
        out.push_str(&render_registrations(&e.registrations));
    }
    out
}

fn render_registrations(v: &[RegistrationInfo]) -> String {
    if v.is_empty() {
        return "no registrations\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            vec![
                r.ext.clone(),
                r.contact.clone(),
                r.source.clone(),
                r.transport.clone(),
                fmt_duration(r.expires_in_secs),
                r.user_agent.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    format_table(
        Some(&[
            "EXT",
            "CONTACT",
            "SOURCE",
            "TRANSPORT",
            "EXPIRES IN",
            "USER-AGENT",
        ]),
        &rows,
    )
}

fn render_calls(v: &[CallInfo]) -> String {
    if v.is_empty() {
        return "no calls in progress\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|c| {
            vec![
                c.caller.clone(),
                c.callee.clone(),
                c.state.clone(),
                fmt_time(c.started_ms),
                fmt_duration(c.duration_secs),
                c.call_id.clone(),
            ]
        })
        .collect();
    let mut out = format_table(
        Some(&[
            "CALLER",
            "CALLEE",
            "STATE",
            "STARTED (UTC)",
            "DURATION",
            "CALL-ID",
        ]),
        &rows,
    );
    let media: Vec<Vec<String>> = v
        .iter()
        .filter_map(|c| {
            let m = c.media.as_ref()?;
            let leg = |name: &str, codec: &str, s: &pbx_core::media::session::LegStats| {
                vec![
                    format!("{} {name}", c.caller),
                    codec.to_owned(),
                    format!("{}/{}", s.packets_in, s.bytes_in),
                    format!("{}/{}", s.packets_out, s.bytes_out),
                    s.lost.to_string(),
                    format!("{:.1}", s.jitter_us as f64 / 1000.0),
                    s.rtcp_lost.map_or("-".to_owned(), |l| l.to_string()),
                    s.rtcp_jitter_us
                        .map_or("-".to_owned(), |j| format!("{:.1}", j as f64 / 1000.0)),
                    s.latched.map_or("-".to_owned(), |a| a.to_string()),
                ]
            };
            Some([leg("A", &m.codec_a, &m.a), leg("B", &m.codec_b, &m.b)])
        })
        .flatten()
        .collect();
    if !media.is_empty() {
        out.push('\n');
        out.push_str(&format_table(
            Some(&[
                "CALL/LEG",
                "CODEC",
                "PKTS/BYTES IN",
                "PKTS/BYTES OUT",
                "LOST",
                "JITTER MS",
                "RTCP LOST",
                "RTCP JITTER MS",
                "MEDIA FROM",
            ]),
            &media,
        ));
    }
    out
}

fn render_voicemail(v: &[firmware::store::VoicemailRecord]) -> String {
    if v.is_empty() {
        return "no voicemail messages\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.mailbox.clone(),
                m.caller.clone(),
                fmt_time(m.at),
                fmt_duration(u64::from(m.duration_ms) / 1000),
                if m.new { "new" } else { "old" }.to_owned(),
                m.path.display().to_string(),
            ]
        })
        .collect();
    format_table(
        Some(&[
            "ID",
            "MAILBOX",
            "FROM",
            "RECEIVED (UTC)",
            "LENGTH",
            "STATE",
            "FILE",
        ]),
        &rows,
    )
}

fn render_cdrs(v: &[Cdr]) -> String {
    if v.is_empty() {
        return "no call records\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|c| {
            vec![
                fmt_time(c.start),
                c.caller.clone(),
                c.callee.clone(),
                disposition_name(c.disposition).to_owned(),
                c.status.to_string(),
                match c.answer {
                    Some(_) => fmt_duration(c.billsec()),
                    None => "-".to_owned(),
                },
                c.call_id.clone(),
            ]
        })
        .collect();
    format_table(
        Some(&[
            "START (UTC)",
            "CALLER",
            "CALLEE",
            "RESULT",
            "STATUS",
            "TALK",
            "CALL-ID",
        ]),
        &rows,
    )
}

fn render_fw_status(s: &FwStatusInfo) -> String {
    let mode = match &s.reason {
        Some(reason) => format!("{} (kernel enforcement off: {reason})", s.mode),
        None => s.mode.clone(),
    };
    let mut rows = vec![
        vec!["mode".to_owned(), mode],
        vec!["bans".to_owned(), s.bans.to_string()],
        vec!["locked accounts".to_owned(), s.locks.to_string()],
        vec!["tracked sources".to_owned(), s.sources.to_string()],
        vec!["authenticated sources".to_owned(), s.passes.to_string()],
        vec!["messages inspected".to_owned(), s.inspected.to_string()],
        vec!["dropped (banned)".to_owned(), s.dropped_banned.to_string()],
        vec!["dropped (rules)".to_owned(), s.dropped_rule.to_string()],
        vec!["alerts stored".to_owned(), s.alerts_stored.to_string()],
    ];
    if s.mode == "monitor" {
        rows.push(vec![
            "would-be bans and locks".to_owned(),
            s.would_be_bans.to_string(),
        ]);
        rows.push(vec![
            "would-be drops (banned)".to_owned(),
            s.would_be_dropped.to_string(),
        ]);
    }
    if !s.runtime_allow.is_empty() {
        rows.push(vec![
            "allowed at runtime".to_owned(),
            s.runtime_allow.join(", "),
        ]);
    }
    if let Some(k) = &s.kernel {
        rows.push(vec![
            "kernel table".to_owned(),
            format!(
                "{} ({})",
                k.table,
                if k.installed {
                    "installed"
                } else {
                    "NOT installed"
                }
            ),
        ]);
        if let Some(c) = &k.counters {
            rows.push(vec![
                "kernel: banned".to_owned(),
                format!("{} packets, {} bytes", c.banned_packets, c.banned_bytes),
            ]);
            rows.push(vec![
                "kernel: flood meter".to_owned(),
                format!("{} packets", c.meter_drops),
            ]);
            rows.push(vec![
                "kernel: closed RTP ports".to_owned(),
                format!("{} packets", c.rtp_drops),
            ]);
            rows.push(vec![
                "kernel: connection caps".to_owned(),
                format!("{} new connections dropped", c.conn_drops),
            ]);
        }
        rows.push(vec![
            "kernel updates".to_owned(),
            format!(
                "{} batches, {} set updates, {} restores, {} failures, {} dropped",
                k.batches, k.ops, k.restores, k.failures, k.queue_drops
            ),
        ]);
        if let Some(e) = &k.last_error {
            rows.push(vec!["kernel: last error".to_owned(), e.clone()]);
        }
    }
    if let Some(c) = &s.connections {
        rows.push(vec![
            "TCP/TLS connections".to_owned(),
            format!(
                "{} open of {} ({} unauthenticated, {} reserved for authenticated sources), {} sources",
                c.open, c.max, c.open_unauthenticated, c.reserved_authenticated, c.sources
            ),
        ]);
        rows.push(vec![
            "connections per source".to_owned(),
            format!(
                "{} ({} after a successful auth; {} sources authenticated)",
                c.per_source, c.per_source_authenticated, c.authenticated_sources
            ),
        ]);
        rows.push(vec![
            "connections refused".to_owned(),
            format!(
                "{} at a source's cap, {} pool full, {} all taken, {} banned ({} accepted)",
                c.refused_source_cap, c.refused_pool, c.refused_full, c.refused_banned, c.accepted
            ),
        ]);
        rows.push(vec![
            "connections closed".to_owned(),
            format!(
                "{} no first message in time, {} message not complete in time, {} idle, {} banned",
                c.closed_first_message, c.closed_message, c.closed_idle, c.closed_banned
            ),
        ]);
    }
    let mut out = format_table(None, &rows);
    let hits: Vec<Vec<String>> = s
        .rule_hits
        .iter()
        .map(|h| vec![h.rule.clone(), h.hits.to_string()])
        .collect();
    out.push('\n');
    out.push_str(&format_table(Some(&["RULE", "HITS"]), &hits));
    if !s.feeds.is_empty() {
        let rows: Vec<Vec<String>> = s
            .feeds
            .iter()
            .map(|f| {
                vec![
                    f.source.clone(),
                    f.entries.to_string(),
                    f.ignored.to_string(),
                    (f.invalid + f.too_wide + f.truncated).to_string(),
                    f.last_refresh.map_or_else(|| "never".to_owned(), fmt_time),
                    format!("{}/{}", f.failures, f.reads),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&format_table(
            Some(&[
                "FEED",
                "ENTRIES",
                "IGNORED",
                "SKIPPED",
                "LAST REFRESH (UTC)",
                "FAILED READS",
            ]),
            &rows,
        ));
        for f in &s.feeds {
            if let Some(e) = &f.last_error {
                out.push_str(&format!(
                    "feed {}: last read failed: {}\n",
                    sanitize(&f.source),
                    sanitize(e)
                ));
            }
        }
    }
    out
}

fn render_fw_bans(b: &FwBansInfo) -> String {
    let mut out = String::new();
    if b.bans.is_empty() {
        out.push_str("no bans\n");
    } else {
        let rows: Vec<Vec<String>> = b
            .bans
            .iter()
            .map(|x| {
                vec![
                    x.addr.clone(),
                    fmt_duration(x.remaining_secs),
                    x.rule.clone(),
                    x.count_today.to_string(),
                    if x.enforced { "yes" } else { "no (monitor)" }.to_owned(),
                    x.reason.clone(),
                ]
            })
            .collect();
        out.push_str(&format_table(
            Some(&[
                "ADDRESS",
                "REMAINING",
                "RULE",
                "TODAY",
                "ENFORCED",
                "REASON",
            ]),
            &rows,
        ));
        if b.total_bans > b.bans.len() {
            out.push_str(&format!(
                "({} more not shown)\n",
                b.total_bans - b.bans.len()
            ));
        }
    }
    if !b.locks.is_empty() {
        let rows: Vec<Vec<String>> = b
            .locks
            .iter()
            .map(|l| {
                vec![
                    l.user.clone(),
                    if l.until == u64::MAX {
                        "until `fw unlock`".to_owned()
                    } else {
                        fmt_duration(l.remaining_secs)
                    },
                    l.rule.clone(),
                    if l.enforced { "yes" } else { "no (monitor)" }.to_owned(),
                    sanitize(&l.blocks),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&format_table(
            Some(&["LOCKED ACCOUNT", "REMAINING", "RULE", "ENFORCED", "BLOCKS"]),
            &rows,
        ));
        if b.total_locks > b.locks.len() {
            out.push_str(&format!(
                "({} more not shown)\n",
                b.total_locks - b.locks.len()
            ));
        }
    }
    out
}

fn render_fw_alerts(v: &[FwAlertInfo]) -> String {
    if v.is_empty() {
        return "no alerts\n".to_owned();
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|a| {
            vec![
                fmt_time(a.at),
                a.rule.clone(),
                a.addr.clone().unwrap_or_else(|| "-".to_owned()),
                a.user.clone().unwrap_or_else(|| "-".to_owned()),
                if a.enforced { "yes" } else { "no (monitor)" }.to_owned(),
                a.message.clone(),
            ]
        })
        .collect();
    format_table(
        Some(&[
            "TIME (UTC)",
            "RULE",
            "ADDRESS",
            "ACCOUNT",
            "ENFORCED",
            "MESSAGE",
        ]),
        &rows,
    )
}

fn render_fw_rules(v: &[FwRuleInfo]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.threshold.clone(),
                r.action.clone(),
                r.hits.to_string(),
            ]
        })
        .collect();
    format_table(Some(&["RULE", "THRESHOLD", "ACTION", "HITS"]), &rows)
}

fn disposition_name(d: Disposition) -> &'static str {
    match d {
        Disposition::Answered => "answered",
        Disposition::Busy => "busy",
        Disposition::Cancelled => "cancelled",
        Disposition::NoAnswer => "no answer",
        Disposition::NotFound => "not found",
        Disposition::Unavailable => "unavailable",
        Disposition::Failed => "failed",
        Disposition::MediaTimeout => "media timeout",
        Disposition::Voicemail => "voicemail",
    }
}

/// Left-aligned columns separated by two spaces, no trailing whitespace. Cells are
/// sanitised: User-Agents and contacts come from the network and must not reach the
/// admin's terminal as escape sequences.
fn format_table(headers: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    if let Some(h) = headers {
        all.push(h.iter().map(|s| s.to_string()).collect());
    }
    all.extend(
        rows.iter()
            .map(|r| r.iter().map(|c| sanitize(c)).collect::<Vec<_>>()),
    );
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in &all {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Replaces control characters (escape sequences, newlines) with `?`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `2026-11-26 17:03:05` (UTC) from milliseconds since the epoch.
fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm, unsigned form).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `45s`, `1m05s`, `2h03m04s`, `3d04h05m`.
/// Milliseconds since the Unix epoch (the daemon's clock for times it reports).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fmt_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ext_show_reads_as_a_table_and_a_bare_forward_only_looks() {
        let mut e = firmware::admin::proto::ExtensionDetail {
            ext: "100".into(),
            name: Some("Reception".into()),
            forwarding: pbx_core::endpoint::Forwarding {
                always: None,
                busy: Some("101".into()),
                no_answer: Some("0301234567".into()),
                no_answer_ms: 20_000,
            },
            caller_id: None,
            vm_pin_set: true,
            digest: "default".into(),
            registrations: vec![],
        };
        let text = render_extension(&e);
        assert!(text.contains("forward when busy     101\n"), "{text}");
        assert!(text.contains("0301234567 (after 20 s)"), "{text}");
        assert!(
            text.contains("caller-ID             the route's or trunk's\n"),
            "{text}"
        );
        assert!(text.contains("voicemail PIN         set\n"), "{text}");
        e.forwarding = pbx_core::endpoint::Forwarding::default();
        e.vm_pin_set = false;
        let text = render_extension(&e);
        assert!(text.contains("forwarding"), "{text}");
        assert!(text.contains("not set"), "{text}");

        let planned = |args: &[&str]| {
            let argv = ["outpostctl", "ext", "forward"].iter().chain(args);
            plan(Cli::try_parse_from(argv).unwrap().command).unwrap().0
        };
        assert_eq!(
            planned(&["100"]),
            vec![Command::ExtShow { ext: "100".into() }]
        );
        assert_eq!(
            planned(&["100", "--off"]),
            vec![Command::ExtForward {
                ext: "100".into(),
                forwarding: pbx_core::endpoint::Forwarding::default(),
            }]
        );
        for bad in [
            &["100", "--off", "--always", "101"][..],
            &["100", "--no-answer-secs", "5"],
        ] {
            let argv = ["outpostctl", "ext", "forward"].iter().chain(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
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
    fn bad_extension_is_a_usage_error_before_connecting() {
        let cli = Cli::try_parse_from(["outpostctl", "ext", "del", "10 0"]).unwrap();
        assert!(matches!(plan(cli.command), Err(Failure::Usage(_))));
        let cli =
            Cli::try_parse_from(["outpostctl", "ext", "add", "104", "--password", "104"]).unwrap();
        match plan(cli.command) {
            Err(Failure::Usage(m)) => assert!(m.contains("at least 8"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_without_password_generates_one_and_reports_it() {
        let cli =
            Cli::try_parse_from(["outpostctl", "ext", "add", "104", "--name", "Lab"]).unwrap();
        let (cmds, generated) = plan(cli.command).unwrap();
        let Command::ExtAdd {
            ext,
            name,
            password,
        } = &cmds[0]
        else {
            panic!("{cmds:?}")
        };
        assert_eq!((ext.as_str(), name.as_deref()), ("104", Some("Lab")));
        assert_eq!(password.len(), GENERATED_PASSWORD_LEN);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        let g = generated.unwrap();
        assert_eq!(
            g.human,
            format!("extension 104 created, password: {password}")
        );
        assert_eq!(
            render(&Reply::done("extension 104 added"), Some(&g)),
            format!("extension 104 created, password: {password}\n")
        );
        assert_ne!(generate_password("1"), generate_password("1"));
    }

    #[test]
    fn import_accepts_comments_header_and_optional_name() {
        let text = "# office phones\next,password,name\n\n100, s3cret-100 ,Front desk\n\
                    101,s3cret-101\r\n102,s3cret-102,\n";
        let rows = parse_import(text).unwrap();
        assert_eq!(
            rows,
            vec![
                ExtImportRow {
                    ext: "100".into(),
                    password: "s3cret-100".into(),
                    name: Some("Front desk".into())
                },
                ExtImportRow {
                    ext: "101".into(),
                    password: "s3cret-101".into(),
                    name: None
                },
                ExtImportRow {
                    ext: "102".into(),
                    password: "s3cret-102".into(),
                    name: None
                },
            ]
        );
    }

    #[test]
    fn import_reports_every_bad_row_with_its_line() {
        let text = "100,good-pass-1\n\
                    10 1,good-pass-2\n\
                    102,short\n\
                    # comment\n\
                    103\n\
                    100,good-pass-3\n\
                    104,aaaaaaaaaa,Name,extra\n";
        let errors = parse_import(text).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].starts_with("line 2:") && errors[0].contains("letters and digits"));
        assert!(errors[1].starts_with("line 3:") && errors[1].contains("at least 8"));
        assert!(errors[2].starts_with("line 5:") && errors[2].contains("1 fields"));
        assert!(errors[3].starts_with("line 6:") && errors[3].contains("line 1"));
        assert!(errors[4].starts_with("line 7:") && errors[4].contains("4 fields"));
        let report = import_error_report(Path::new("phones.csv"), &errors);
        assert!(report.starts_with("phones.csv: 5 bad row(s), nothing imported"));
    }

    #[test]
    fn import_of_10000_rows_is_one_request_and_huge_imports_are_chunked() {
        let small: Vec<ExtImportRow> = (0..10_000)
            .map(|i| ExtImportRow {
                ext: format!("{}", 20_000 + i),
                password: format!("pw-{i:08}-xyz"),
                name: Some(format!("User {i}")),
            })
            .collect();
        assert_eq!(import_requests(small).len(), 1);
        let huge: Vec<ExtImportRow> = (0..20_000)
            .map(|i| ExtImportRow {
                ext: format!("{}", 20_000 + i),
                password: "p".repeat(128),
                name: Some("\u{1d11e}".repeat(64)),
            })
            .collect();
        let reqs = import_requests(huge);
        assert_eq!(reqs.len(), 10);
        for r in &reqs {
            assert!(serde_json::to_vec(r).unwrap().len() < MAX_LINE);
        }
    }

    #[test]
    fn table_is_aligned_without_trailing_spaces() {
        let rows = vec![
            vec!["100".to_owned(), "Front desk".to_owned(), "2".to_owned()],
            vec!["1001".to_owned(), "-".to_owned(), "0".to_owned()],
        ];
        let t = format_table(Some(&["EXT", "NAME", "REGISTERED"]), &rows);
        assert_eq!(
            t,
            "EXT   NAME        REGISTERED\n\
             100   Front desk  2\n\
             1001  -           0\n"
        );
    }

    #[test]
    fn network_strings_cannot_inject_terminal_escapes() {
        let regs = vec![RegistrationInfo {
            ext: "100".into(),
            contact: "sip:100@10.0.0.5".into(),
            source: "10.0.0.5:5060".into(),
            transport: "UDP".into(),
            expires_in_secs: 65,
            user_agent: Some("evil\u{1b}[2J\nphone".into()),
        }];
        let out = render_registrations(&regs);
        assert!(!out.contains('\u{1b}'));
        assert_eq!(out.lines().count(), 2);
        assert!(out.contains("evil?[2J?phone"));
        assert!(out.contains("1m05s"));
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(fmt_time(1_795_712_585_999), "2026-11-26 17:03:05");
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(fmt_duration(65), "1m05s");
        assert_eq!(fmt_duration(3_600 + 3 * 60 + 4), "1h03m04s");
        assert_eq!(fmt_duration(2 * 86_400 + 4 * 3_600 + 5 * 60), "2d04h05m");
    }

    #[test]
    fn cdr_table_and_json_payload() {
        let cdrs = vec![Cdr {
            call_id: "abc".into(),
            caller: "100".into(),
            callee: "101".into(),
            start: 1_795_712_585_000,
            answer: Some(1_795_712_590_000),
            end: 1_795_712_655_000,
            disposition: Disposition::Answered,
            status: 200,
        }];
        let out = render_cdrs(&cdrs);
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("START (UTC)  ") && header.contains("  CALLER  "));
        let row = lines.next().unwrap();
        assert!(row.starts_with("2026-11-26 17:03:05  100"), "{row}");
        assert!(row.contains("answered") && row.contains("1m05s"), "{row}");
        assert_eq!(
            payload_json(&Reply::Extensions(vec![])),
            "[]",
            "--json prints the payload without the tag"
        );
        assert_eq!(payload_json(&Reply::done("ok")), r#"{"message":"ok"}"#);
    }

    #[test]
    fn fw_commands_are_checked_before_sending() {
        let plan_of = |args: &[&str]| {
            let mut argv = vec!["outpostctl"];
            argv.extend_from_slice(args);
            plan(Cli::try_parse_from(argv).unwrap().command).map(|(c, _)| c)
        };
        assert_eq!(
            plan_of(&["fw", "unban", "2001:db8::1"]).unwrap(),
            vec![Command::Fw(FwCommand::Unban {
                addr: "2001:db8::1".into()
            })]
        );
        assert_eq!(
            plan_of(&["fw", "allow", "192.168.1.77/24"]).unwrap(),
            vec![Command::Fw(FwCommand::Allow {
                cidr: "192.168.1.0/24".into()
            })]
        );
        assert_eq!(
            plan_of(&["fw", "alerts"]).unwrap(),
            vec![Command::Fw(FwCommand::Alerts { limit: 50 })]
        );
        assert!(plan_of(&["fw", "unlock", "a\u{1b}b"]).is_err());
        assert!(Cli::try_parse_from(["outpostctl", "fw", "unban", "1.2.3"]).is_err());
        assert!(Cli::try_parse_from(["outpostctl", "fw", "allow", "10.0.0.0/40"]).is_err());
        assert!(Cli::try_parse_from(["outpostctl", "fw", "alerts", "--limit", "0"]).is_err());
    }

    #[test]
    fn fw_tables_and_json() {
        let bans = Reply::FwBans(FwBansInfo {
            total_bans: 1,
            total_locks: 0,
            bans: vec![firmware::admin::proto::FwBanInfo {
                addr: "203.0.113.9".into(),
                until: 0,
                remaining_secs: 3_600,
                rule: "scanner".into(),
                reason: "scanner fingerprint\u{1b}[2J".into(),
                count_today: 1,
                enforced: true,
            }],
            locks: vec![],
        });
        let text = render(&bans, None);
        assert!(text.starts_with("ADDRESS"), "{text}");
        assert!(text.contains("203.0.113.9  1h00m00s   scanner"), "{text}");
        assert!(!text.contains('\u{1b}'), "escape sequences are sanitised");
        let json: serde_json::Value = serde_json::from_str(&payload_json(&bans)).unwrap();
        assert_eq!(json["bans"][0]["addr"], "203.0.113.9");

        let rules = Reply::FwRules(vec![FwRuleInfo {
            rule: "flood".into(),
            threshold: "16 requests / 2 s".into(),
            action: "ban 300 s".into(),
            hits: 3,
        }]);
        assert_eq!(
            render(&rules, None),
            "RULE   THRESHOLD          ACTION     HITS\nflood  16 requests / 2 s  ban 300 s  3\n"
        );
        let status = Reply::FwStatus(FwStatusInfo {
            mode: "user-space".into(),
            reason: Some("not running as root".into()),
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
            feeds: vec![firmware::admin::proto::FwFeedInfo {
                source: "/etc/outpost/drop.txt".into(),
                refresh_secs: 3_600,
                ban_secs: 86_400,
                entries: 12,
                ignored: 1,
                invalid: 2,
                too_wide: 1,
                truncated: 0,
                last_refresh: Some(0),
                reads: 4,
                failures: 1,
                last_error: Some("cannot read /etc/outpost/drop.txt: gone".into()),
            }],
            connections: Some(Box::new(firmware::driver::conn::ConnStats {
                open: 3,
                max: 4_096,
                refused_source_cap: 7,
                ..Default::default()
            })),
        });
        let text = render(&status, None);
        assert!(text.contains("user-space (kernel enforcement off: not running as root)"));
        assert!(
            text.contains("/etc/outpost/drop.txt  12       1        3        1970-01-01"),
            "{text}"
        );
        assert!(text.contains("feed /etc/outpost/drop.txt: last read failed: cannot read"));
        assert!(
            text.contains("TCP/TLS connections     3 open of 4096"),
            "{text}"
        );
        assert!(text.contains("7 at a source's cap"), "{text}");
        assert_eq!(render(&Reply::FwAlerts(vec![]), None), "no alerts\n");
    }

    #[test]
    fn fw_import_checks_the_file_and_export_formats_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("drop.txt");
        std::fs::write(&list, "# ours\n203.0.113.9\nnot-an-address\n").unwrap();
        let plan_of = |args: &[&str]| {
            let mut argv = vec!["outpostctl"];
            argv.extend_from_slice(args);
            plan(Cli::try_parse_from(argv).unwrap().command).map(|(c, _)| c)
        };
        let path = list.to_str().unwrap();
        assert_eq!(
            plan_of(&["fw", "import", path, "--ban-secs", "60"]).unwrap(),
            vec![Command::Fw(FwCommand::Import {
                text: "# ours\n203.0.113.9\nnot-an-address\n".into(),
                ban_secs: 60
            })]
        );
        std::fs::write(&list, "junk\n").unwrap();
        match plan_of(&["fw", "import", path]) {
            Err(Failure::Usage(m)) => assert!(m.contains("no addresses to import"), "{m}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&list, vec![b'#'; MAX_FEED_BYTES + 1]).unwrap();
        assert!(matches!(
            plan_of(&["fw", "import", path]),
            Err(Failure::Usage(_))
        ));
        assert!(
            Cli::try_parse_from(["outpostctl", "fw", "import", path, "--ban-secs", "0"]).is_err()
        );
        assert_eq!(
            plan_of(&["fw", "export", "--format", "lines"]).unwrap(),
            vec![Command::Fw(FwCommand::Export)]
        );

        let doc = FwExport {
            generated: 1_000,
            bans: vec![
                firmware::admin::proto::FwExportBan {
                    addr: "203.0.113.9".into(),
                    until: 90_000_000,
                    rule: "scanner".into(),
                    reason: "scanner fingerprint".into(),
                },
                firmware::admin::proto::FwExportBan {
                    addr: "2001:db8::66".into(),
                    until: 5_000,
                    rule: "flood".into(),
                    reason: "request flood".into(),
                },
            ],
            omitted: 0,
        };
        let json = render_export(&doc, ExportFormat::Json);
        let back: FwExport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
        assert_eq!(json.lines().count(), 4, "{json}");
        let lines = render_export(&doc, ExportFormat::Lines);
        assert!(
            lines.starts_with("# outpost bans exported 1970-01-01"),
            "{lines}"
        );
        // Both formats read back as the same addresses.
        let a = feed::parse(&json, 2_000).unwrap().addrs;
        let b = feed::parse(&lines, 2_000).unwrap().addrs;
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        let empty = FwExport {
            generated: 7,
            bans: vec![],
            omitted: 0,
        };
        assert_eq!(
            render_export(&empty, ExportFormat::Json),
            "{\"generated\":7,\"bans\":[]}\n"
        );
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

    #[test]
    fn session_lines_are_checked_before_connecting() {
        let ssh = Session {
            socket: Some(PathBuf::from("/nonexistent/admin.sock")),
            json: false,
            ssh: true,
            restricted: true,
        };
        let words = |line: &str| console::split_words(line).unwrap();
        let usage = |r: Result<(), Failure>| match r {
            Err(Failure::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            usage(run_words(words("--socket /x status"), &ssh, Origin::Ssh)).contains("--socket")
        );
        assert!(usage(run_words(words("ssh-session"), &ssh, Origin::Ssh)).contains("not available"));
        assert!(usage(run_words(words("login"), &ssh, Origin::Ssh)).contains("not available"));
        for line in [
            "ssh keys add /etc/shadow",
            "fw import /etc/passwd",
            "ext import /root/x.csv",
            "config apply /etc/outpost/outpost.toml",
            "config edit",
            "fw export --out /etc/shells",
        ] {
            let m = usage(run_words(words(line), &ssh, Origin::Ssh));
            assert!(
                m.contains("not available") || m.contains("standard input"),
                "{line}: {m}"
            );
        }
        // Standard input is fine (it fails later: nothing listens on the socket).
        assert!(matches!(
            run_words(words("fw export"), &ssh, Origin::Ssh),
            Err(Failure::Unreachable(_))
        ));
        let shell = Session {
            ssh: false,
            restricted: false,
            ..ssh
        };
        assert!(usage(run_words(words("shell"), &shell, Origin::Shell)).contains("not available"));
        // Shell syntax is an unknown command, refused by the parser (exit code 2).
        assert!(matches!(
            run_words(words("status; touch /tmp/x"), &shell, Origin::Shell),
            Err(Failure::Shown(2))
        ));
        // The session's socket is used: nothing listens there.
        assert!(matches!(
            run_words(words("status"), &shell, Origin::Shell),
            Err(Failure::Unreachable(m)) if m.contains("/nonexistent/admin.sock")
        ));
    }

    #[test]
    fn update_session_rules() {
        let escapes = |line: &str| {
            let mut argv = vec!["outpostctl".to_owned()];
            argv.extend(console::split_words(line).unwrap());
            escapes_the_session(&Cli::try_parse_from(argv).unwrap().command)
        };
        for line in [
            "update install /data/outpost/x.bundle",
            "update install x.bundle",
            "update install --force ftp://host/x.bundle",
        ] {
            let why = escapes(line).expect(line);
            assert!(why.contains("standard input or a URL"), "{line}: {why}");
        }
        assert!(escapes("update health").unwrap().contains("at boot"));
        assert!(escapes("update health --timeout 5").is_some());
        for line in [
            "update install -",
            "update install --force --reboot -",
            "update install https://updates.example.com/outpost-0.2.0.bundle",
            "update install http://10.0.0.5:8000/x.bundle",
            "update status",
            "update status --json",
            "sbom",
            "sbom --summary",
        ] {
            assert_eq!(escapes(line), None, "{line}");
        }
        // `update health` is not offered in help or completion, the rest is.
        let cmd = Cli::command();
        let update = cmd.find_subcommand("update").unwrap();
        assert!(update.find_subcommand("health").unwrap().is_hide_set());
        assert!(!update.find_subcommand("install").unwrap().is_hide_set());
        let helper = console::ShellHelper::new(Cli::command());
        let offered = console::complete(helper.tree(), "update ", 7).1;
        assert!(offered.contains(&"install".to_owned()), "{offered:?}");
        assert!(
            !offered.iter().any(|c| c.starts_with("health")),
            "{offered:?}"
        );
        assert!(Cli::try_parse_from(["outpostctl", "update", "health", "--timeout", "0"]).is_err());
    }

    #[test]
    fn update_status_and_sbom_summary_render() {
        let rel = |v: &str, b| outpost_bundle::Release {
            version: v.to_owned(),
            build: b,
        };
        let slot = |slot, release, running, committed| update::SlotStatus {
            slot,
            release: Some(release),
            device: Some(format!(
                "/dev/vda{}",
                if slot == update::Slot::A { 2 } else { 3 }
            )),
            running,
            committed,
        };
        let s = update::UpdateStatus {
            booted: update::Slot::A,
            running: Some(rel("0.1.0", 1_700_000_000)),
            profile: Some("qemu-virt".to_owned()),
            trial: false,
            armed: None,
            slots: vec![
                slot(update::Slot::A, rel("0.1.0", 1_700_000_000), true, true),
                slot(update::Slot::B, rel("0.2.0", 1_700_000_100), false, false),
            ],
            last: Some(update::LastOutcome {
                outcome: update::Outcome::RolledBack,
                slot: update::Slot::B,
                release: rel("0.2.0", 1_700_000_100),
                time: 1_750_000_000,
                reason: "SIP on 127.0.0.1:5060 did not answer\x1b[2J".to_owned(),
            }),
            keys: vec!["0123456789abcdef".to_owned()],
            key_problems: vec![],
            from_boot_copy: false,
        };
        let text = render_update_status(&s);
        assert!(
            text.starts_with("running:  slot a, 0.1.0 (build 1700000000)\n"),
            "{text}"
        );
        assert!(
            text.contains("slot b  0.2.0 (build 1700000100)  /dev/vda3"),
            "{text}"
        );
        assert!(
            text.contains("last update: 0.2.0 (build 1700000100) rolled back from slot b at 2025-06-15 15:06:40 UTC: SIP on 127.0.0.1:5060 did not answer"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains("trusted update keys: 0123456789abcdef\n"),
            "{text}"
        );
        let summary = update::SbomSummary {
            crates: 2,
            debian_packages: 1,
            other: 0,
            licences: vec![("MIT".to_owned(), 2), ("(none)".to_owned(), 1)],
        };
        assert_eq!(
            render_sbom_summary(&summary),
            "2 Rust crates, 1 Debian packages\nlicences:\n  MIT     2\n  (none)  1\n"
        );
    }

    #[test]
    fn ssh_key_files_are_checked_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("id.pub");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@desk";
        let plan_of = |args: &[&str]| {
            let mut argv = vec!["outpostctl"];
            argv.extend_from_slice(args);
            plan(Cli::try_parse_from(argv).unwrap().command).map(|(c, _)| c)
        };
        let path = file.to_str().unwrap();
        std::fs::write(&file, format!("# my laptop\n{key}\n")).unwrap();
        assert_eq!(
            plan_of(&["ssh", "keys", "add", path]).unwrap(),
            vec![Command::Ssh(SshCommand::KeysAdd { line: key.into() })]
        );
        std::fs::write(&file, format!("{key}\n{key}\n")).unwrap();
        assert!(
            matches!(plan_of(&["ssh", "keys", "add", path]), Err(Failure::Usage(m)) if m.contains("found 2"))
        );
        std::fs::write(&file, "ssh-dss AAAA\n").unwrap();
        assert!(
            matches!(plan_of(&["ssh", "keys", "add", path]), Err(Failure::Usage(m)) if m.contains("not accepted"))
        );
        assert_eq!(
            plan_of(&["ssh", "keys", "del", "SHA256:abc"]).unwrap(),
            vec![Command::Ssh(SshCommand::KeysDel {
                key: "SHA256:abc".into()
            })]
        );
        assert!(plan_of(&["ssh", "keys", "del", " "]).is_err());
    }

    #[test]
    fn daemon_error_maps_to_refused() {
        match show(&Reply::error("extension 104 exists"), false, None) {
            Err(Failure::Refused(m)) => assert_eq!(m, "extension 104 exists"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_rows_follow_rfc_4180_and_never_start_a_formula() {
        let cdr = Cdr {
            call_id: "a\"b".into(),
            caller: "=cmd|x".into(),
            callee: "+49 30, 1".into(),
            start: 1_714_521_600_000,
            answer: None,
            end: 1_714_521_605_500,
            disposition: Disposition::NoAnswer,
            status: 480,
        };
        assert_eq!(
            csv_row(&cdr),
            "\"a\"\"b\",'=cmd|x,\"+49 30, 1\",2024-05-01T00:00:00.000Z,,2024-05-01T00:00:05.500Z,0,no_answer,480\r\n"
        );
        assert_eq!(CSV_HEADER.matches(',').count(), 8);
        let cli = Cli::try_parse_from([
            "outpostctl",
            "backup",
            "restore",
            "x.backup",
            "--identity",
            "-",
        ])
        .unwrap();
        assert!(
            escapes_the_session(&cli.command).is_none(),
            "a name and stdin are fine over SSH"
        );
        let cli = Cli::try_parse_from(["outpostctl", "backup", "verify", "/etc/shadow"]).unwrap();
        assert!(
            escapes_the_session(&cli.command).is_some(),
            "no paths over SSH"
        );
    }
}
