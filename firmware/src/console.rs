//! The admin's shell (serial console and SSH) and the console password.
//!
//! Client side (`outpostctl shell`, `login`, `ssh-session`): [`split_words`] turns a line
//! into words the way a shell would quote them but with no expansion at all, [`complete`]
//! completes commands from clap's own command tree, and [`run_shell`] is the prompt loop.
//! Daemon side: [`execute`] keeps the console password as an Argon2id hash in the store
//! and checks it; neither the password nor the hash is ever logged.

use std::io::{BufRead, IsTerminal};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Helper};

use crate::names::validate_admin_password;
use crate::store::{Store, StoreError};

pub mod api;

use api::{AdminCommand, AdminInfo, ConsoleOutcome, LoginOutcome};

/// The shell's prompt.
pub const PROMPT: &str = "outpost> ";
/// Wrong passwords at the console before [`LOGIN_DELAY`].
pub const LOGIN_TRIES: usize = 3;
/// The pause after [`LOGIN_TRIES`] wrong passwords.
pub const LOGIN_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest line the word splitter takes (an SSH command comes from the network).
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Most words in one line.
pub const MAX_WORDS: usize = 256;
/// Store meta key of the console password's Argon2id hash (PHC string).
const PASSWORD_META: &str = "admin_password";
/// Lines of shell history kept (in memory only).
const HISTORY: usize = 500;
/// Shell words that are not outpostctl commands.
const BUILTINS: [(&str, &str); 2] = [
    (
        "help",
        "List the commands, or show the help of one: help COMMAND...",
    ),
    ("exit", "Leave the shell (also Ctrl-D)"),
];

/// Why a console operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The store could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The new password breaks a rule.
    #[error("{0}")]
    Password(String),
    /// Hashing failed (never expected with the default parameters).
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(String),
}

/// Carries out an admin-password command (daemon side). Blocks for one Argon2id run
/// (tens to hundreds of ms) on `Passwd` and `Login`.
pub fn execute(store: &Store, cmd: AdminCommand) -> Result<ConsoleOutcome, ConsoleError> {
    match cmd {
        AdminCommand::Status => Ok(ConsoleOutcome::Info(AdminInfo {
            password_set: stored_hash(store)?.is_some(),
        })),
        AdminCommand::Passwd { password } => {
            validate_admin_password(&password).map_err(ConsoleError::Password)?;
            let hash = hash_password(&password)?;
            store.meta_put(PASSWORD_META, hash.as_bytes())?;
            tracing::info!("console: admin password changed");
            Ok(ConsoleOutcome::Done("admin password set".to_owned()))
        }
        AdminCommand::Login {
            password,
            source,
            service,
        } => {
            let Some(hash) = stored_hash(store)? else {
                return Ok(ConsoleOutcome::Login(LoginOutcome::NoPassword));
            };
            // `via` says which door, so the log tells a web guesser from a console typo.
            let via = match (source, service) {
                (None, None) => "console".to_string(),
                (None, Some(s)) => s.to_string(),
                (Some(ip), s) => format!("{} from {ip}", s.unwrap_or(api::LoginService::Web)),
            };
            if verify_password(&hash, &password) {
                tracing::info!("admin logged in ({via})");
                Ok(ConsoleOutcome::Login(LoginOutcome::Accepted))
            } else {
                tracing::warn!("wrong admin password ({via})");
                Ok(ConsoleOutcome::Login(LoginOutcome::Refused))
            }
        }
    }
}

fn stored_hash(store: &Store) -> Result<Option<String>, ConsoleError> {
    Ok(store
        .meta_get(PASSWORD_META)?
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|h| !h.is_empty()))
}

/// An Argon2id hash (PHC string, random salt, the crate's default cost: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String, ConsoleError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ConsoleError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC `hash` (false for an unreadable hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Why a line could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A `'` or `"` was opened and never closed.
    #[error("unterminated {0} quote")]
    Unterminated(char),
    /// The line ends in a lone backslash.
    #[error("the line ends with a backslash")]
    TrailingBackslash,
    /// Longer than [`MAX_LINE_LEN`] or more than [`MAX_WORDS`] words.
    #[error("the line is too long")]
    TooLong,
}

/// Splits a command line into words like a POSIX shell quotes them (`'...'` literal,
/// `"..."` with `\"` `\\` `\$` and `` \` `` escapes, backslash outside quotes), with no
/// expansion: `;`, `|`, `&&`, `$( )`, backticks, `*` and `~` are ordinary characters of
/// the words they stand in.
pub fn split_words(line: &str) -> Result<Vec<String>, SplitError> {
    if line.len() > MAX_LINE_LEN {
        return Err(SplitError::TooLong);
    }
    let (words, state) = scan(line);
    match state {
        ScanEnd::Clean => {}
        ScanEnd::Open(q) => return Err(SplitError::Unterminated(q)),
        ScanEnd::Backslash => return Err(SplitError::TrailingBackslash),
    }
    if words.len() > MAX_WORDS {
        return Err(SplitError::TooLong);
    }
    Ok(words.into_iter().map(|w| w.text).collect())
}

/// A word found by [`scan`]: its text and the byte offset where it starts.
#[derive(Debug)]
struct Word {
    text: String,
    start: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum ScanEnd {
    Clean,
    Open(char),
    Backslash,
}

/// The splitter; also tells how the line ends (for completion of an unfinished line).
fn scan(line: &str) -> (Vec<Word>, ScanEnd) {
    let mut words: Vec<Word> = Vec::new();
    let mut cur: Option<Word> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\\' => {
                let w = cur.get_or_insert_with(|| Word {
                    text: String::new(),
                    start: i,
                });
                match chars.next() {
                    Some((_, '\n')) => {}
                    Some((_, n)) => w.text.push(n),
                    None => return (finish(words, cur), ScanEnd::Backslash),
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(|| Word {
                    text: String::new(),
                    start: i,
                });
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, n)) => w.text.push(n),
                        None => return (finish(words, cur), ScanEnd::Open('\'')),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(|| Word {
                    text: String::new(),
                    start: i,
                });
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some(&(_, n @ ('"' | '\\' | '$' | '`'))) => {
                                w.text.push(n);
                                chars.next();
                            }
                            Some(&(_, '\n')) => {
                                chars.next();
                            }
                            _ => w.text.push('\\'),
                        },
                        Some((_, n)) => w.text.push(n),
                        None => return (finish(words, cur), ScanEnd::Open('"')),
                    }
                }
            }
            other => cur
                .get_or_insert_with(|| Word {
                    text: String::new(),
                    start: i,
                })
                .text
                .push(other),
        }
    }
    (finish(words, cur), ScanEnd::Clean)
}

fn finish(mut words: Vec<Word>, cur: Option<Word>) -> Vec<Word> {
    words.extend(cur);
    words
}

/// Completes the word under the cursor from clap's command tree `tree` (built, so global
/// options are known everywhere): command and subcommand names, `--options`, and the
/// shell's own `help` and `exit`. Returns where the replaced word starts and the
/// candidates; a lone candidate ends with a space.
pub fn complete(tree: &clap::Command, line: &str, pos: usize) -> (usize, Vec<String>) {
    let head = line.get(..pos).unwrap_or(line);
    let (mut words, end) = scan(head);
    let ends_in_space = head.ends_with([' ', '\t']) && end == ScanEnd::Clean;
    let (partial, start) = match words.last() {
        Some(w) if !ends_in_space => (w.text.clone(), w.start),
        _ => (String::new(), pos),
    };
    if !ends_in_space && !words.is_empty() {
        words.pop();
    }
    if end != ScanEnd::Clean || head[start..].starts_with(['\'', '"']) {
        return (start, Vec::new());
    }
    let words: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    let (names_only, walk) = match words.first() {
        Some(&"help") => (true, &words[1..]),
        _ => (false, &words[..]),
    };
    let Some(cmd) = walk_tree(tree, walk) else {
        return (start, Vec::new());
    };
    let at_root = walk.is_empty() || std::ptr::eq(cmd, tree);
    let mut out: Vec<String> = Vec::new();
    if partial.starts_with('-') && !names_only {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                out.push(format!("--{long}"));
            }
        }
    } else {
        out.extend(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .map(|s| s.get_name().to_owned()),
        );
        if at_root && words.is_empty() {
            out.extend(BUILTINS.iter().map(|(n, _)| (*n).to_owned()));
        }
        if out.is_empty() && partial.is_empty() && !names_only {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    if !matches!(long, "help" | "version" | "socket" | "json") {
                        out.push(format!("--{long}"));
                    }
                }
            }
        }
    }
    out.retain(|c| c.starts_with(&partial));
    out.sort();
    out.dedup();
    if let [only] = out.as_mut_slice() {
        only.push(' ');
    }
    (start, out)
}

/// The subcommand that `words` lead to, skipping options and their values; None when a
/// word names no subcommand where one is needed.
fn walk_tree<'a>(tree: &'a clap::Command, words: &[&str]) -> Option<&'a clap::Command> {
    let mut cmd = tree;
    let mut i = 0;
    while let Some(&w) = words.get(i) {
        i += 1;
        if let Some(long) = w.strip_prefix("--") {
            if long.contains('=') {
                continue;
            }
            let takes_value = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .is_some_and(|a| a.get_action().takes_values());
            if takes_value {
                i += 1;
            }
        } else if w.starts_with('-') && w.len() > 1 {
            continue;
        } else if let Some(sub) = cmd.find_subcommand(w) {
            cmd = sub;
        } else if cmd.has_subcommands() {
            return None;
        }
    }
    Some(cmd)
}

/// The shell's `help`: every command with its one-line description, then the builtins.
pub fn command_list(tree: &clap::Command) -> String {
    let mut rows: Vec<(String, String)> = tree
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| {
            (
                s.get_name().to_owned(),
                s.get_about().map(|a| a.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    rows.extend(
        BUILTINS
            .iter()
            .map(|(n, a)| ((*n).to_owned(), (*a).to_owned())),
    );
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut out = String::from("Commands:\n");
    for (name, about) in rows {
        out.push_str(format!("  {name:<width$}  {about}").trim_end());
        out.push('\n');
    }
    out.push_str("\nOptions for every command: --json (machine-readable output). TAB completes.\n");
    out
}

/// `help COMMAND...`: clap's long help of that (sub)command.
pub fn help_for(tree: &clap::Command, path: &[String]) -> Result<String, String> {
    let mut cmd = tree;
    for w in path {
        cmd = cmd
            .find_subcommand(w)
            .filter(|s| !s.is_hide_set())
            .ok_or_else(|| {
                format!(
                    "no command `{}` (type `help` for the list)",
                    w.escape_default()
                )
            })?;
    }
    Ok(cmd.clone().render_long_help().to_string())
}

/// Line editing for the shell: TAB completion from the command tree.
#[derive(Debug)]
pub struct ShellHelper {
    tree: clap::Command,
}

impl ShellHelper {
    /// A helper completing from `tree` (built here so global options propagate).
    pub fn new(mut tree: clap::Command) -> Self {
        tree.build();
        ShellHelper { tree }
    }

    /// The built command tree.
    pub fn tree(&self) -> &clap::Command {
        &self.tree
    }
}

impl Completer for ShellHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(&self.tree, line, pos))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

/// Runs the prompt loop: each line is split with [`split_words`]; `help` and `exit` are
/// handled here, anything else goes to `exec` (which prints its own output and errors).
/// Ends on `exit` or Ctrl-D; Ctrl-C abandons the current line.
pub fn run_shell(
    tree: clap::Command,
    mut exec: impl FnMut(Vec<String>),
) -> Result<(), ConsoleError> {
    let helper = ShellHelper::new(tree);
    let config = rustyline::Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .max_history_size(HISTORY)
        .map_err(|e| ConsoleError::Terminal(e.to_string()))?
        .build();
    let mut editor: rustyline::Editor<ShellHelper, rustyline::history::DefaultHistory> =
        rustyline::Editor::with_config(config)
            .map_err(|e| ConsoleError::Terminal(e.to_string()))?;
    editor.set_helper(Some(helper));
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!(
            "Outpost admin shell. Type `help` for the commands, TAB to complete, `exit` to leave."
        );
    }
    loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(ConsoleError::Terminal(e.to_string())),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        let words = match split_words(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        let Some(first) = words.first() else {
            continue;
        };
        let tree = editor
            .helper()
            .map(|h| h.tree().clone())
            .unwrap_or_else(|| clap::Command::new("outpostctl"));
        match first.as_str() {
            "exit" | "quit" | "logout" => break,
            "help" if words.len() == 1 => print!("{}", command_list(&tree)),
            "help" => match help_for(&tree, &words[1..]) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            },
            _ => exec(words),
        }
    }
    Ok(())
}

/// Reads a secret: from the terminal without echo when standard input is one, else one
/// line of standard input (None at its end).
pub fn read_secret(prompt: &str) -> std::io::Result<Option<String>> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).map(Some);
    }
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()))
}

/// Switches the echo of the terminal on standard input on or off (nothing when standard
/// input is not a terminal). The console login keeps it off across its pause after wrong
/// passwords and its restart, so keys typed then are never shown in clear.
pub fn set_echo(on: bool) -> std::io::Result<()> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(());
    }
    let mut t = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let flags = LocalFlags::ECHO | LocalFlags::ECHONL;
    if on {
        t.local_flags.insert(LocalFlags::ECHO);
    } else {
        t.local_flags.remove(flags);
    }
    tcsetattr(&stdin, SetArg::TCSANOW, &t).map_err(std::io::Error::from)
}

/// Discards what was typed on the terminal and not read yet (during the pause after wrong
/// passwords, so it is not taken as the next password).
pub fn flush_input() {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _ = nix::sys::termios::tcflush(&stdin, nix::sys::termios::FlushArg::TCIFLUSH);
    }
}

/// How a console login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginEnd {
    /// The password was right.
    Accepted,
    /// [`LOGIN_TRIES`] wrong passwords.
    TooManyTries,
    /// No password is set: nobody can log in at the console.
    NoPassword,
    /// Input ended.
    Eof,
}

/// Asks for the password up to [`LOGIN_TRIES`] times; `ask` reads one (None at the end of
/// input), `check` asks the daemon. An empty line (Enter alone, as one presses to wake a
/// console) is asked again and is not a try.
pub fn login_loop(
    mut ask: impl FnMut() -> std::io::Result<Option<String>>,
    mut check: impl FnMut(String) -> Result<LoginOutcome, String>,
) -> Result<LoginEnd, String> {
    for attempt in 1..=LOGIN_TRIES {
        let password = loop {
            match ask().map_err(|e| format!("cannot read the password: {e}"))? {
                None => return Ok(LoginEnd::Eof),
                Some(p) if p.is_empty() => continue,
                Some(p) => break p,
            }
        };
        match check(password)? {
            LoginOutcome::Accepted => return Ok(LoginEnd::Accepted),
            LoginOutcome::NoPassword => return Ok(LoginEnd::NoPassword),
            LoginOutcome::Refused => {
                if attempt < LOGIN_TRIES {
                    eprintln!("Wrong password.");
                }
            }
        }
    }
    Ok(LoginEnd::TooManyTries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn tree() -> clap::Command {
        use clap::{Arg, ArgAction, Command};
        let mut t = Command::new("outpostctl")
            .arg(
                Arg::new("json")
                    .long("json")
                    .global(true)
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("socket").long("socket").global(true))
            .subcommand(Command::new("status").about("Show the daemon's state"))
            .subcommand(
                Command::new("fw")
                    .about("The firewall")
                    .subcommand(Command::new("bans").about("Banned addresses"))
                    .subcommand(
                        Command::new("alerts")
                            .about("Alerts")
                            .arg(Arg::new("limit").long("limit")),
                    )
                    .subcommand(Command::new("unban").arg(Arg::new("addr"))),
            )
            .subcommand(
                Command::new("ssh").subcommand(
                    Command::new("keys")
                        .subcommand(Command::new("add"))
                        .subcommand(Command::new("del"))
                        .subcommand(Command::new("list")),
                ),
            )
            .subcommand(Command::new("ssh-session").hide(true));
        t.build();
        t
    }

    #[test]
    fn words_split_like_a_shell_without_expansion() {
        assert_eq!(
            split_words("fw bans --json").unwrap(),
            ["fw", "bans", "--json"]
        );
        assert_eq!(
            split_words(r#"ext add 104 --name 'Front desk' --password "a\"b c""#).unwrap(),
            [
                "ext",
                "add",
                "104",
                "--name",
                "Front desk",
                "--password",
                "a\"b c"
            ]
        );
        assert_eq!(split_words(r"a\ b c\\d").unwrap(), ["a b", r"c\d"]);
        assert_eq!(split_words("x '' y").unwrap(), ["x", "", "y"]);
        assert_eq!(split_words(r#""a\nb""#).unwrap(), [r"a\nb"]);
        // Operators and substitutions are plain characters.
        assert_eq!(
            split_words("status; touch /tmp/x").unwrap(),
            ["status;", "touch", "/tmp/x"]
        );
        assert_eq!(
            split_words("$(touch /tmp/y)").unwrap(),
            ["$(touch", "/tmp/y)"]
        );
        assert_eq!(
            split_words("a|b && `id` $HOME ~ *").unwrap(),
            ["a|b", "&&", "`id`", "$HOME", "~", "*"]
        );
        assert_eq!(split_words("  \t ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("'open"), Err(SplitError::Unterminated('\'')));
        assert_eq!(split_words("\"open"), Err(SplitError::Unterminated('"')));
        assert_eq!(split_words("end\\"), Err(SplitError::TrailingBackslash));
        assert_eq!(
            split_words(&"a ".repeat(MAX_WORDS + 1)),
            Err(SplitError::TooLong)
        );
        assert_eq!(
            split_words(&"a".repeat(MAX_LINE_LEN + 1)),
            Err(SplitError::TooLong)
        );
    }

    #[test]
    fn completion_follows_the_command_tree() {
        let t = tree();
        let (start, c) = complete(&t, "", 0);
        assert_eq!(start, 0);
        assert_eq!(c, ["exit", "fw", "help", "ssh", "status"]);
        assert_eq!(complete(&t, "st", 2), (0, vec!["status ".to_owned()]));
        assert_eq!(complete(&t, "fw ", 3).1, ["alerts", "bans", "unban"]);
        assert_eq!(complete(&t, "fw b", 4), (3, vec!["bans ".to_owned()]));
        assert_eq!(
            complete(&t, "ssh keys l", 10),
            (9, vec!["list ".to_owned()])
        );
        assert_eq!(
            complete(&t, "fw bans --j", 11),
            (8, vec!["--json ".to_owned()])
        );
        // Options and their values are skipped on the way down.
        assert_eq!(
            complete(&t, "--socket /tmp/s fw a", 20),
            (19, vec!["alerts ".to_owned()])
        );
        // A leaf offers its own options.
        assert_eq!(complete(&t, "fw alerts ", 10).1, ["--limit "]);
        // `help` completes command names.
        assert_eq!(complete(&t, "help f", 6), (5, vec!["fw ".to_owned()]));
        // Hidden commands and unknown paths complete nothing.
        assert!(complete(&t, "ssh-s", 5).1.is_empty());
        assert!(complete(&t, "nope ", 5).1.is_empty());
        // Completion looks only at the text before the cursor.
        assert_eq!(complete(&t, "fw bans", 4), (3, vec!["bans ".to_owned()]));
        assert!(complete(&t, "fw 'b", 5).1.is_empty());
    }

    #[test]
    fn help_lists_every_visible_command() {
        let t = tree();
        let list = command_list(&t);
        for name in ["status", "fw", "ssh", "help", "exit"] {
            assert!(
                list.lines().any(|l| l.trim_start().starts_with(name)),
                "{name} missing from\n{list}"
            );
        }
        assert!(!list.contains("ssh-session"));
        let fw = help_for(&t, &["fw".to_owned()]).unwrap();
        assert!(fw.contains("bans") && fw.contains("alerts"), "{fw}");
        assert!(help_for(&t, &["nope".to_owned()]).is_err());
        assert!(help_for(&t, &["ssh-session".to_owned()]).is_err());
    }

    #[test]
    fn password_hash_is_argon2id_and_verifies() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct"));
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn console_password_is_kept_hashed_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let login = |pw: &str| {
            execute(
                &store,
                AdminCommand::Login {
                    password: pw.into(),
                    source: None,
                    service: None,
                },
            )
            .unwrap()
        };
        assert_eq!(
            execute(&store, AdminCommand::Status).unwrap(),
            ConsoleOutcome::Info(AdminInfo {
                password_set: false
            })
        );
        assert_eq!(
            login("anything-at-all"),
            ConsoleOutcome::Login(LoginOutcome::NoPassword)
        );
        assert!(matches!(
            execute(
                &store,
                AdminCommand::Passwd {
                    password: "short".into()
                }
            ),
            Err(ConsoleError::Password(_))
        ));
        execute(
            &store,
            AdminCommand::Passwd {
                password: "branch-office-42".into(),
            },
        )
        .unwrap();
        let raw = store.meta_get(PASSWORD_META).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("branch-office-42"));
        assert_eq!(
            login("branch-office-42"),
            ConsoleOutcome::Login(LoginOutcome::Accepted)
        );
        assert_eq!(
            login("branch-office-43"),
            ConsoleOutcome::Login(LoginOutcome::Refused)
        );
    }

    #[test]
    fn login_gives_three_tries() {
        let mut typed = vec!["a".to_owned(), "b".to_owned(), "right".to_owned()].into_iter();
        let mut checks = 0;
        let end = login_loop(
            || Ok(typed.next()),
            |pw| {
                checks += 1;
                Ok(if pw == "right" {
                    LoginOutcome::Accepted
                } else {
                    LoginOutcome::Refused
                })
            },
        )
        .unwrap();
        assert_eq!((end, checks), (LoginEnd::Accepted, 3));
        let mut typed = vec!["a", "b", "c", "right"].into_iter().map(String::from);
        let end = login_loop(|| Ok(typed.next()), |_| Ok(LoginOutcome::Refused)).unwrap();
        assert_eq!(end, LoginEnd::TooManyTries);
        assert_eq!(
            typed.next().as_deref(),
            Some("right"),
            "a fourth try is not read"
        );
        let end = login_loop(|| Ok(None), |_| Ok(LoginOutcome::Accepted)).unwrap();
        assert_eq!(end, LoginEnd::Eof);
        // Enter alone is asked again, never a try.
        let mut typed = vec!["", "a", "", "", "b", "", "right"]
            .into_iter()
            .map(String::from);
        let mut checks = 0;
        let end = login_loop(
            || Ok(typed.next()),
            |pw| {
                checks += 1;
                assert!(!pw.is_empty());
                Ok(if pw == "right" {
                    LoginOutcome::Accepted
                } else {
                    LoginOutcome::Refused
                })
            },
        )
        .unwrap();
        assert_eq!((end, checks), (LoginEnd::Accepted, 3));
    }
}
