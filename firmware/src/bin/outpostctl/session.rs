//! Sessions: the interactive shell, the serial-console login and the SSH forced command,
//! each running command lines like `outpostctl <words>` with the options it was started
//! with, and refusing what would reach past outpostctl in a restricted session.
//!
//! Order of a session line: split into words (no shell ever sees it) → parsed by the same
//! clap tree as the command line → checked against the session ([`escapes_the_session`])
//! → run by [`crate::run::run`].

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

use firmware::admin::proto::{AdminCommand, Command, Reply};
use firmware::config::default_socket_path;
use firmware::console::{self, LoginEnd};
use firmware::update;

use crate::backup::restore_offer;
use crate::cli::{BackupCmd, Cli, Cmd, ConfigCmd, ExtCmd, FwCmd, KeysCmd, SshCmd, UpdateCmd};
use crate::failure::Failure;
use crate::link::Link;
use crate::render::sanitize;
use crate::run::run;

/// Where a command line comes from, for what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A line typed in the shell.
    Shell,
    /// `$SSH_ORIGINAL_COMMAND` of an SSH session (the forced command).
    Ssh,
}

/// The options of the outer invocation that the commands of a shell or session inherit.
#[derive(Debug, Clone)]
pub struct Session {
    socket: Option<PathBuf>,
    json: bool,
    /// Inside an SSH session: the socket is fixed by the forced command.
    ssh: bool,
    /// An SSH or console-login session: nothing but outpostctl may be reached (see
    /// [`escapes_the_session`]).
    restricted: bool,
}

impl Session {
    /// The session of a command line as typed: its socket and `--json`, no restriction.
    pub fn of(cli: &Cli) -> Session {
        Session {
            socket: cli.socket.clone(),
            json: cli.json,
            ssh: false,
            restricted: false,
        }
    }

    /// Runs the command line: the shell, console login and SSH session here, the daemon's
    /// commands through [`run`].
    pub fn dispatch(self, cli: Cli) -> Result<(), Failure> {
        match cli.command {
            Cmd::Shell => self.shell(),
            Cmd::Login => Session {
                restricted: true,
                ..self
            }
            .login(),
            Cmd::SshSession => Session {
                ssh: true,
                restricted: true,
                ..self
            }
            .ssh_session(),
            _ => run(cli),
        }
    }

    /// The forced command of every SSH key: `$SSH_ORIGINAL_COMMAND` split into words (no
    /// shell ever sees it) and run like a command line, or the shell when it is absent.
    fn ssh_session(&self) -> Result<(), Failure> {
        match std::env::var("SSH_ORIGINAL_COMMAND") {
            Ok(line) if !line.trim().is_empty() => {
                let words = console::split_words(&line)
                    .map_err(|e| Failure::Usage(format!("cannot read the command: {e}")))?;
                self.run_words(words, Origin::Ssh)
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Failure::Usage("the command is not UTF-8 text".to_owned()))
            }
            _ => self.shell(),
        }
    }

    /// The interactive shell; each line runs like `outpostctl <line>`.
    fn shell(&self) -> Result<(), Failure> {
        console::run_shell(Cli::command(), |words| {
            if let Err(failure) = self.run_words(words, Origin::Shell) {
                failure.report();
            }
        })
        .map_err(|e| Failure::Usage(e.to_string()))
    }

    /// Parses `words` as outpostctl's arguments (in process, with the same parser as the
    /// command line) and runs them with the session's socket.
    pub fn run_words(&self, words: Vec<String>, origin: Origin) -> Result<(), Failure> {
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
        if self.ssh && cli.socket.is_some() {
            return Err(Failure::Usage(
                "--socket cannot be changed in an SSH session".to_owned(),
            ));
        }
        if self.restricted {
            if let Err(why) = allowed_in_session(&cli.command, origin) {
                return Err(Failure::Usage(why));
            }
            if let Some(why) = escapes_the_session(&cli.command) {
                return Err(Failure::Usage(why.to_owned()));
            }
        }
        cli.socket = cli.socket.or_else(|| self.socket.clone());
        cli.json |= self.json;
        match (&cli.command, origin) {
            (Cmd::Login | Cmd::SshSession, _) | (Cmd::Shell, Origin::Shell) => Err(Failure::Usage(
                "not available here: this is already a logged-in session".to_owned(),
            )),
            (Cmd::Shell, Origin::Ssh) => self.shell(),
            _ => run(cli),
        }
    }

    /// Serial console login: the admin password (no echo), three tries, then a pause.
    fn login(&self) -> Result<(), Failure> {
        // Off from the start: keys typed before the prompt appears are not shown either.
        let _ = console::set_echo(false);
        let socket = self.socket.clone().unwrap_or_else(default_socket_path);
        let mut link = Link::connect(&socket)?;
        let no_password = || {
            eprintln!(
                "No admin password is set, so nobody can log in at this console yet.\n\
                 Set one over SSH (ssh admin@<this box> admin passwd) or as root on this machine \
                 (outpostctl admin passwd)."
            );
            Err(Failure::Shown(1))
        };
        match link.request(&Command::Admin(AdminCommand::Status))? {
            Reply::Admin(info) if !info.password_set => return no_password(),
            Reply::Admin(_) => {}
            Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
            other => return Err(Failure::unexpected(&other)),
        }
        let end = console::login_loop(
            || console::read_secret("Password: "),
            |password| match link.request(&Command::Admin(AdminCommand::Login {
                password,
                source: None,
                service: None,
            })) {
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
                if let Some(offer) = restore_offer(&socket) {
                    return offer;
                }
                self.shell()
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
}

/// The command families an SSH or console-login session may run; anything else (a
/// family added later included) is refused until it is added here.
pub const SESSION_COMMANDS: &[&str] = &[
    "status", "ext", "phone", "reg", "calls", "cdr", "fw", "vm", "rec", "trunks", "metrics",
    "config", "ssh", "admin", "backup", "update", "sbom", "log", "shell",
];

/// The family name of `cmd` as typed (the first word).
fn family(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::Status => "status",
        Cmd::Ext(_) => "ext",
        Cmd::Phone(_) => "phone",
        Cmd::Reg(_) => "reg",
        Cmd::Calls => "calls",
        Cmd::Cdr(_) => "cdr",
        Cmd::Fw(_) => "fw",
        Cmd::Vm(_) => "vm",
        Cmd::Rec(_) => "rec",
        Cmd::Trunks => "trunks",
        Cmd::Metrics => "metrics",
        Cmd::Config(_) => "config",
        Cmd::Ssh(_) => "ssh",
        Cmd::Admin(_) => "admin",
        Cmd::Backup(_) => "backup",
        Cmd::Update(_) => "update",
        Cmd::Sbom { .. } => "sbom",
        Cmd::Log(_) => "log",
        Cmd::Shell => "shell",
        Cmd::Login => "login",
        Cmd::SshSession => "ssh-session",
    }
}

/// Whether a restricted session may run `cmd` at all: its family is on
/// [`SESSION_COMMANDS`] (the shell only from an SSH command line: a shell line is already in
/// one). The refusal lists what the session allows.
fn allowed_in_session(cmd: &Cmd, origin: Origin) -> Result<(), String> {
    let name = family(cmd);
    let listed = SESSION_COMMANDS.contains(&name);
    if listed && !(name == "shell" && origin == Origin::Shell) {
        return Ok(());
    }
    Err(format!(
        "`{name}` is not available in this session: this is already a logged-in session, \
         which runs only {}",
        SESSION_COMMANDS.join(", ")
    ))
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
            BackupCmd::Verify { file, key, .. } | BackupCmd::Restore { file, key, .. },
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
        Cmd::Update(UpdateCmd::Agent { .. }) => {
            Some("`update agent` is run by init: not available in this session")
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

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
            usage(ssh.run_words(words("--socket /x status"), Origin::Ssh)).contains("--socket")
        );
        assert!(usage(ssh.run_words(words("ssh-session"), Origin::Ssh)).contains("not available"));
        assert!(usage(ssh.run_words(words("login"), Origin::Ssh)).contains("not available"));
        for line in [
            "ssh keys add /etc/shadow",
            "fw import /etc/passwd",
            "ext import /root/x.csv",
            "config apply /etc/outpost/outpost.toml",
            "config edit",
            "fw export --out /etc/shells",
        ] {
            let m = usage(ssh.run_words(words(line), Origin::Ssh));
            assert!(
                m.contains("not available") || m.contains("standard input"),
                "{line}: {m}"
            );
        }
        // Standard input is fine (it fails later: nothing listens on the socket).
        assert!(matches!(
            ssh.run_words(words("fw export"), Origin::Ssh),
            Err(Failure::Unreachable(_))
        ));
        // Reading the persistent log is allowed in the session (docs/logs.md promises it).
        for line in ["log", "log --follow --level warn", "log --since 2h -n 50"] {
            assert!(
                matches!(
                    ssh.run_words(words(line), Origin::Ssh),
                    Err(Failure::Unreachable(_))
                ),
                "{line}"
            );
        }
        let shell = Session {
            ssh: false,
            restricted: false,
            ..ssh
        };
        assert!(usage(shell.run_words(words("shell"), Origin::Shell)).contains("not available"));
        // Shell syntax is an unknown command, refused by the parser (exit code 2).
        assert!(matches!(
            shell.run_words(words("status; touch /tmp/x"), Origin::Shell),
            Err(Failure::Shown(2))
        ));
        // The session's socket is used: nothing listens there.
        assert!(matches!(
            shell.run_words(words("status"), Origin::Shell),
            Err(Failure::Unreachable(m)) if m.contains("/nonexistent/admin.sock")
        ));
    }

    #[test]
    fn sessions_run_only_the_listed_families() {
        let parse = |line: &str| {
            let mut argv = vec!["outpostctl".to_owned()];
            argv.extend(console::split_words(line).unwrap());
            Cli::try_parse_from(argv).unwrap().command
        };
        for line in [
            "status",
            "ext list",
            "reg list",
            "calls",
            "cdr list",
            "fw bans",
            "vm list 100",
            "trunks",
            "metrics",
            "config show",
            "ssh keys list",
            "admin passwd",
            "backup list",
            "update status",
            "sbom",
        ] {
            assert_eq!(
                allowed_in_session(&parse(line), Origin::Ssh),
                Ok(()),
                "{line}"
            );
            assert_eq!(
                allowed_in_session(&parse(line), Origin::Shell),
                Ok(()),
                "{line}"
            );
        }
        assert_eq!(allowed_in_session(&parse("shell"), Origin::Ssh), Ok(()));
        for (line, origin) in [
            ("login", Origin::Ssh),
            ("ssh-session", Origin::Ssh),
            ("shell", Origin::Shell),
            ("login", Origin::Shell),
        ] {
            let why = allowed_in_session(&parse(line), origin).unwrap_err();
            assert!(
                why.contains("not available") && why.contains("status, ext"),
                "{why}"
            );
        }
        // Every family has a name, and each listed one is a real subcommand.
        let cmd = Cli::command();
        for name in SESSION_COMMANDS {
            assert!(cmd.find_subcommand(name).is_some(), "{name}");
        }
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
    fn backup_files_over_ssh_are_names_or_stdin() {
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
