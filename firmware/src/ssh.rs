//! Remote administration over SSH: dropbear (from Debian) faces the network, we never
//! speak the SSH protocol ourselves.
//!
//! - The admin's public keys live in the store (meta `ssh_keys`); every change rewrites the
//!   admin account's `~/.ssh/authorized_keys` atomically, each key restricted to a forced
//!   command (`outpostctl --socket <admin socket> ssh-session`) and without forwarding.
//!   Dropbear 2022.83 (Debian 12) has no option to read authorized_keys from elsewhere
//!   (`-D` came later), so the file lives in the home directory of `[ssh] user`; on the
//!   appliance that home is on `/data`.
//! - Who runs dropbear is fixed at start ([`crate::fixed::SshRunner`]). On the image, init
//!   runs it as the admin account (`image/files/run-dropbear`, with only
//!   CAP_NET_BIND_SERVICE): dropbear then can log in nobody but that account, and the
//!   daemon, which is not root, needs no privilege for it. The daemon publishes the listen
//!   addresses (`/run/outpost/ssh/listen`), makes the host key (readable by the admin
//!   group), writes authorized_keys through a descriptor init opened on the root-owned file
//!   (dropbear wants it owned by root or the admin, which the daemon's user cannot make),
//!   and reads dropbear's log from a FIFO. Without init (development, the black-box tests,
//!   the daemon as root) the daemon runs `dropbear -F -E -s -w` itself and restarts it with
//!   back-off.
//! - Either way the daemon reads dropbear's log: every connection that ends before
//!   authenticating, or that tried a user that does not exist or may not log in, is one
//!   failed login of its source for the firewall (rule `auth_failures`).
//!
//! The admin account reaches the admin socket through its group (`outpostd --admin-group`,
//! mode 0660, checked per connection with SO_PEERCRED). It is never uid 0: root logins are
//! refused (`-w`), and `[ssh] user` naming a uid-0 account is an error.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::fixed::{RetiredKey, SshRunner};
use crate::names::printable;
use crate::store::{Store, StoreError};
use pbx_core::Millis;

pub mod api;

use api::{SshCommand, SshKeyInfo, SshOutcome};

pub use outpost_sshkey::{KeyError, KeyType, PublicKey, MAX_COMMENT_LEN, MIN_RSA_BITS};

/// Store meta key of the authorised keys (JSON list of [`StoredKey`]).
const KEYS_META: &str = "ssh_keys";
/// Most keys the admin may authorise.
pub const MAX_KEYS: usize = 64;
/// Dropbear listens on at most this many addresses.
const MAX_LISTEN: usize = 10;
/// The options every authorised key gets before its forced command.
const KEY_OPTIONS: &str = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding";
/// Longest dropbear log line read; the rest of a longer line is skipped.
const MAX_LOG_LINE: usize = 1024;
/// Connections tracked between "Child connection" and their end.
const MAX_PENDING: usize = 1024;
/// Failed logins queued for the daemon's loop; more are dropped (the firewall has long
/// banned the source by then).
const FAILURE_QUEUE: usize = 256;
/// Restart delays of a dying dropbear: doubled each time up to the maximum, back to the
/// minimum once it stayed up for [`STABLE_AFTER`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Dropbear log lines re-logged per window; the rest are counted and summarised.
const LOG_LINES_PER_WINDOW: u32 = 30;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// `[ssh]` section: remote administration through dropbear.
///
/// The programs (dropbear, dropbearkey, the `outpostctl` of the forced command) are not
/// here: the image fixes them at start ([`crate::fixed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    /// Run and supervise dropbear.
    pub enabled: bool,
    /// Addresses dropbear listens on, at most 10; only these (`-p ADDR:PORT` each). The
    /// default, every address (`"0.0.0.0:22"`, `"[::]:22"`), keeps SSH reachable from the
    /// office whatever its addressing: the kernel's management zone (`[management]
    /// networks`) drops connections from elsewhere. A LAN address (`"192.168.1.1:22"`)
    /// keeps dropbear off the WAN side even without kernel enforcement.
    pub listen: Vec<SocketAddr>,
    /// The ed25519 host key [default: `<store.data_dir>/ssh/dropbear_ed25519_host_key`],
    /// generated when missing.
    pub host_key: Option<PathBuf>,
    /// The account admins log in as (never a uid-0 account); its `~/.ssh/authorized_keys`
    /// is ours. On the image dropbear runs as that account and this must name it.
    pub user: String,
    /// Retired: fixed by the image (`outpostd --dropbear`).
    #[serde(skip_serializing)]
    pub dropbear: Option<RetiredKey>,
    /// Retired: fixed by the image (`outpostd --dropbearkey`).
    #[serde(skip_serializing)]
    pub dropbearkey: Option<RetiredKey>,
    /// Retired: fixed by the image (`outpostd --outpostctl`).
    #[serde(skip_serializing)]
    pub outpostctl: Option<RetiredKey>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            enabled: false,
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 22)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 22)),
            ],
            host_key: None,
            user: "admin".to_owned(),
            dropbear: None,
            dropbearkey: None,
            outpostctl: None,
        }
    }
}

impl SshConfig {
    /// Checks the keys; the error is (dotted key, reason).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((format!("ssh.{key}"), reason.to_owned()));
        if self.enabled && self.listen.is_empty() {
            return bad(
                "listen",
                "must list at least one address when SSH is enabled",
            );
        }
        if self.listen.len() > MAX_LISTEN {
            return bad("listen", "dropbear listens on at most 10 addresses");
        }
        let mut seen = std::collections::HashSet::new();
        for addr in &self.listen {
            if addr.port() == 0 {
                return bad("listen", "port 0 is not a port to listen on");
            }
            if !seen.insert(addr) {
                return bad("listen", "an address is listed twice");
            }
        }
        if !valid_user_name(&self.user) {
            return bad(
                "user",
                "must be an account name: letters, digits, `_`, `-`, `.`, at most 32",
            );
        }
        if let Some(p) = &self.host_key {
            if p.as_os_str().is_empty() {
                return bad("host_key", "must not be empty");
            }
            if !safe_in_command(p) {
                return bad(
                    "host_key",
                    "must not contain quotes, backslashes or control characters",
                );
            }
        }
        Ok(())
    }

    /// The retired program keys this section still carries (dotted names).
    pub fn retired_keys(&self) -> Vec<&'static str> {
        [
            ("ssh.dropbear", self.dropbear.is_some()),
            ("ssh.dropbearkey", self.dropbearkey.is_some()),
            ("ssh.outpostctl", self.outpostctl.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// The host key file: `host_key`, or the default under `data_dir`.
    pub fn host_key_path(&self, data_dir: &Path) -> PathBuf {
        self.host_key
            .clone()
            .unwrap_or_else(|| data_dir.join("ssh").join("dropbear_ed25519_host_key"))
    }
}

/// The `outpostctl` the forced command runs: the fixed one, or the one beside this program,
/// or `/usr/bin/outpostctl`.
pub fn outpostctl_path() -> PathBuf {
    if let Some(p) = &crate::fixed::get().outpostctl {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("outpostctl"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/outpostctl"))
}

/// Why an SSH operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The public key was refused.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The store could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The configured admin account does not exist.
    #[error("there is no account `{0}` for SSH logins (see [ssh] user)")]
    NoAccount(String),
    /// The configured admin account has uid 0.
    #[error("`{0}` is a uid-0 account and SSH never logs in as root: set [ssh] user to the admin account")]
    RootAccount(String),
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The command cannot be carried out as asked.
    #[error("{0}")]
    Refused(String),
}

/// One authorised key as kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredKey {
    /// The normalised key line.
    line: String,
    /// When it was added (ms since the epoch).
    added: u64,
}

/// The authorised keys, parsed (entries that no longer parse are skipped with a warning).
fn load_keys(store: &Store) -> Result<Vec<(PublicKey, u64)>, SshError> {
    let Some(raw) = store.meta_get(KEYS_META)? else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredKey> = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(err) => {
            tracing::error!(%err, "ssh: the stored key list is unreadable; no key is authorised");
            return Ok(Vec::new());
        }
    };
    Ok(stored
        .into_iter()
        .filter_map(|k| match PublicKey::parse(&k.line) {
            Ok(key) => Some((key, k.added)),
            Err(err) => {
                tracing::warn!(%err, "ssh: a stored key is skipped");
                None
            }
        })
        .collect())
}

fn save_keys(store: &Store, keys: &[(PublicKey, u64)]) -> Result<(), SshError> {
    let stored: Vec<StoredKey> = keys
        .iter()
        .map(|(k, added)| StoredKey {
            line: k.to_line(),
            added: *added,
        })
        .collect();
    let json = serde_json::to_vec(&stored).map_err(|e| SshError::Refused(e.to_string()))?;
    store.meta_put(KEYS_META, &json)?;
    Ok(())
}

/// Carries out an `ssh` admin command: the key list in the store and, when SSH is
/// enabled, the admin account's authorized_keys. On an error nothing was changed.
pub fn execute(
    cfg: &SshConfig,
    admin_socket: &Path,
    store: &Store,
    now: Millis,
    cmd: SshCommand,
) -> Result<SshOutcome, SshError> {
    let old = load_keys(store)?;
    let mut keys = old.clone();
    let message = match cmd {
        SshCommand::KeysList => {
            return Ok(SshOutcome::Keys(
                keys.iter()
                    .map(|(k, added)| SshKeyInfo {
                        fingerprint: k.fingerprint(),
                        key_type: k.key_type().name().to_owned(),
                        bits: k.bits(),
                        comment: k.comment().map(str::to_owned),
                        added: *added,
                    })
                    .collect(),
            ))
        }
        SshCommand::KeysAdd { line } => {
            let key = PublicKey::parse(&line)?;
            let fp = key.fingerprint();
            if keys.iter().any(|(k, _)| k.fingerprint() == fp) {
                return Err(SshError::Refused(format!("key {fp} is already authorised")));
            }
            if keys.len() >= MAX_KEYS {
                return Err(SshError::Refused(format!(
                    "{MAX_KEYS} keys are authorised already; remove one first"
                )));
            }
            let message = format!("key {fp} ({}) added", describe(&key));
            keys.push((key, now));
            message
        }
        SshCommand::KeysDel { key } => {
            let wanted = key.trim();
            let by_fp = |k: &PublicKey| {
                let fp = k.fingerprint();
                fp == wanted || fp.strip_prefix("SHA256:") == Some(wanted)
            };
            let matches: Vec<usize> = match keys.iter().position(|(k, _)| by_fp(k)) {
                Some(i) => vec![i],
                None => keys
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, _))| k.comment() == Some(wanted))
                    .map(|(i, _)| i)
                    .collect(),
            };
            match matches.as_slice() {
                [] => {
                    return Err(SshError::Refused(format!(
                        "no authorised key has the fingerprint or comment `{}`",
                        printable(wanted, 80)
                    )))
                }
                [i] => {
                    let (removed, _) = keys.remove(*i);
                    format!(
                        "key {} ({}) removed",
                        removed.fingerprint(),
                        describe(&removed)
                    )
                }
                many => {
                    return Err(SshError::Refused(format!(
                    "{} keys have the comment `{}`: name one by its fingerprint (ssh keys list)",
                    many.len(),
                    printable(wanted, 80)
                )))
                }
            }
        }
    };
    if cfg.enabled {
        let target = KeysFile::of(cfg)?;
        let command = forced_command(admin_socket)?;
        target.write(&authorized_keys(&keys, &command))?;
        if let Err(err) = save_keys(store, &keys) {
            // Put the file back as the store still has it.
            let _ = target.write(&authorized_keys(&old, &command));
            return Err(err);
        }
        Ok(SshOutcome::Done(message))
    } else {
        save_keys(store, &keys)?;
        Ok(SshOutcome::Done(format!(
            "{message} (SSH is off: set [ssh] enabled = true to log in with it)"
        )))
    }
}

fn describe(key: &PublicKey) -> String {
    match key.comment() {
        Some(c) => format!("{} {}", key.key_type().name(), c),
        None => key.key_type().name().to_owned(),
    }
}

/// The authorized_keys text: one restricted line per key.
pub fn authorized_keys(keys: &[(PublicKey, u64)], command: &str) -> String {
    let mut out = String::from(
        "# Written by outpostd from its key list (outpostctl ssh keys); edits here are lost.\n",
    );
    for (key, _) in keys {
        out.push_str(&format!(
            "{KEY_OPTIONS},command=\"{command}\" {}\n",
            key.to_line()
        ));
    }
    out
}

/// The forced command: `'<outpostctl>' --socket '<admin socket>' ssh-session`, both paths
/// absolute (the session starts in the admin's home).
pub fn forced_command(admin_socket: &Path) -> Result<String, SshError> {
    let ctl = absolute(&outpostctl_path())?;
    let socket = absolute(admin_socket)?;
    for p in [&ctl, &socket] {
        if !safe_in_command(p) {
            return Err(SshError::Refused(format!(
                "{} cannot be used in a forced command (quotes, backslashes or control characters)",
                p.display()
            )));
        }
    }
    Ok(format!(
        "{} --socket {} ssh-session",
        shell_quote(&ctl),
        shell_quote(&socket)
    ))
}

fn absolute(p: &Path) -> Result<PathBuf, SshError> {
    std::path::absolute(p).map_err(|source| SshError::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// Single-quoted for `sh -c` (the path holds no `'`-breaking surprises: `'` becomes `'\''`).
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

/// A path that can sit inside `command="..."`: no `"`, `\` or control characters.
fn safe_in_command(p: &Path) -> bool {
    p.to_str()
        .is_some_and(|s| !s.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
}

fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The admin account dropbear logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// Home directory (holds `.ssh/authorized_keys`).
    pub home: PathBuf,
}

impl Account {
    /// Looks the account up in the system's user database.
    pub fn lookup(name: &str) -> Result<Account, SshError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) if u.uid.is_root() => Err(SshError::RootAccount(name.to_owned())),
            Ok(Some(u)) => Ok(Account {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            }),
            _ => Err(SshError::NoAccount(name.to_owned())),
        }
    }

    /// `<home>/.ssh/authorized_keys`.
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.home.join(".ssh").join("authorized_keys")
    }
}

/// Writes `text` to the account's authorized_keys atomically (temporary file, fsync,
/// rename), creating `~/.ssh` (0700) as needed; everything owned by the account, as
/// dropbear requires.
pub fn write_authorized_keys(account: &Account, text: &str) -> Result<PathBuf, SshError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SshError::Io { path, source }
    };
    let dir = account.home.join(".ssh");
    for d in [&account.home, &dir] {
        if !d.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io(d))?;
            std::os::unix::fs::chown(d, Some(account.uid), Some(account.gid)).map_err(io(d))?;
        }
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    std::os::unix::fs::chown(&dir, Some(account.uid), Some(account.gid)).map_err(io(&dir))?;
    let path = account.authorized_keys_path();
    let tmp = dir.join("authorized_keys.outpost-new");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    std::os::unix::fs::chown(&tmp, Some(account.uid), Some(account.gid)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Where the admin's authorized_keys go.
#[derive(Debug)]
enum KeysFile {
    /// Into the account's home, written and owned as dropbear requires (the daemon is root).
    Home(Account),
    /// Through the descriptor init opened on the root-owned file (the daemon is not root).
    Inherited(Arc<std::fs::File>),
}

impl KeysFile {
    fn of(cfg: &SshConfig) -> Result<KeysFile, SshError> {
        match &crate::fixed::get().ssh {
            SshRunner::Daemon => Ok(KeysFile::Home(Account::lookup(&cfg.user)?)),
            SshRunner::Init { keys, .. } => Ok(KeysFile::Inherited(Arc::clone(keys))),
        }
    }

    /// Replaces the file's text; where it went.
    fn write(&self, text: &str) -> Result<String, SshError> {
        match self {
            KeysFile::Home(account) => {
                write_authorized_keys(account, text).map(|p| p.display().to_string())
            }
            KeysFile::Inherited(file) => {
                write_keys_descriptor(file, text)?;
                Ok("authorized_keys (descriptor from init)".to_owned())
            }
        }
    }
}

/// Rewrites the authorized_keys file init opened for us in place. Emptied first, so a login
/// racing the rewrite can miss a key (and simply retries) but never sees a removed one.
fn write_keys_descriptor(file: &std::fs::File, text: &str) -> Result<(), SshError> {
    use std::os::unix::fs::FileExt;
    let io = |source| SshError::Io {
        path: PathBuf::from("authorized_keys (descriptor from init)"),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.write_all_at(text.as_bytes(), 0).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads dropbear's log lines and tells which connections were failed logins.
///
/// Dropbear prefixes each line with its process id (`[1234] Nov 26 20:10:49 ...`); a
/// connection is one child process. Lines that name no address (`Login attempt for
/// nonexistent user`) are tied to the address of the child's `Child connection from` line.
/// Each failed connection counts once: at its first failure line, or else when it ends
/// before authenticating (`Exit before auth from <ip:port>`), which also covers keys that
/// are not authorised (dropbear logs nothing else for those).
#[derive(Debug, Default)]
pub struct LoginWatch {
    pending: HashMap<u32, Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    ip: IpAddr,
    counted: bool,
}

/// Messages that make a connection a failed login.
const FAILURE_MARKS: [&str; 9] = [
    "Login attempt for nonexistent user",
    // A dropbear that is not root (the image's, run as the admin) for any other account.
    "Login attempt with wrong user",
    "root login rejected",
    "has invalid shell, rejected",
    "has blank password, rejected",
    "Bad password attempt for",
    "Pubkey auth bad signature",
    "Max auth tries reached",
    "is not a member of",
];

/// Routine dropbear messages logged at debug level only.
const QUIET: [&str; 4] = [
    "Not backgrounding",
    "Port forwarding disabled",
    "Agent forwarding disabled",
    "X11 forwarding disabled",
];

impl LoginWatch {
    /// A fresh watch (after dropbear (re)starts).
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one log line; returns the source of a failed login to count, if any.
    pub fn line(&mut self, line: &str) -> Option<IpAddr> {
        let (pid, msg) = split_log_line(line);
        if let Some(addr) = msg.strip_prefix("Child connection from ") {
            let ip = parse_addr(addr)?;
            if let Some(pid) = pid {
                if self.pending.len() >= MAX_PENDING {
                    // Ends that never came (a killed child): drop one; its Exit line, if
                    // it ever comes, still names the address.
                    if let Some(&old) = self.pending.keys().next() {
                        self.pending.remove(&old);
                    }
                }
                self.pending.insert(pid, Pending { ip, counted: false });
            }
            return None;
        }
        if let Some(rest) = msg.strip_prefix("Exit before auth from ") {
            let counted = pid
                .and_then(|p| self.pending.remove(&p))
                .is_some_and(|p| p.counted);
            if counted {
                return None;
            }
            let addr = rest.split_once('>').map_or(rest, |(a, _)| a);
            return parse_addr(addr);
        }
        if msg.starts_with("Pubkey auth succeeded for ")
            || msg.starts_with("Password auth succeeded for ")
        {
            if let Some(pid) = pid {
                self.pending.remove(&pid);
            }
            return None;
        }
        if FAILURE_MARKS.iter().any(|m| msg.contains(m)) {
            let p = self.pending.get_mut(&pid?)?;
            if !p.counted {
                p.counted = true;
                return Some(p.ip);
            }
        }
        None
    }
}

/// `[pid] Mon DD HH:MM:SS message` → (pid, message); other lines are all message.
fn split_log_line(line: &str) -> (Option<u32>, &str) {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some((pid, rest)) = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .and_then(|(p, rest)| Some((p.parse::<u32>().ok()?, rest)))
    else {
        return (None, line);
    };
    let mut parts = rest.splitn(4, ' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(time), Some(msg)) if time.matches(':').count() == 2 => {
            (Some(pid), msg)
        }
        _ => (Some(pid), rest),
    }
}

/// `ip:port`, `<ip:port>`, `[v6]:port` or `v6:port` → the address.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_start_matches('<').trim_end_matches('>');
    let s = s.split_whitespace().next()?;
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Lets through at most [`LOG_LINES_PER_WINDOW`] log lines per [`LOG_WINDOW`].
#[derive(Debug)]
struct LogBudget {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new(now: Instant) -> Self {
        LogBudget {
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log a line now, and how many were suppressed in the window that just
    /// ended (to report once).
    fn allow(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            ended = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged < LOG_LINES_PER_WINDOW {
            self.logged += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

/// Failed SSH logins from the supervisor, for `Guard::login_failure`.
pub type FailureReceiver = mpsc::Receiver<IpAddr>;

/// Starts SSH when `[ssh] enabled`: writes authorized_keys from the store, then either
/// spawns the dropbear supervisor ([`SshRunner::Daemon`]) or, when init runs dropbear
/// ([`SshRunner::Init`]), makes the host key, publishes the listen addresses and follows
/// dropbear's log (needs a tokio runtime). Returns the failed logins it reports.
pub fn start(
    cfg: &SshConfig,
    data_dir: &Path,
    admin_socket: &Path,
    store: &Store,
) -> Result<Option<FailureReceiver>, SshError> {
    let fixed = crate::fixed::get();
    if !cfg.enabled {
        if let SshRunner::Init { dir, .. } = &fixed.ssh {
            // run-dropbear stops dropbear when the addresses go.
            match std::fs::remove_file(dir.join(LISTEN_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("ssh: cannot withdraw the listen addresses: {e}");
                }
                _ => {}
            }
        }
        return Ok(None);
    }
    let keys = load_keys(store)?;
    let command = forced_command(admin_socket)?;
    let written = KeysFile::of(cfg)?.write(&authorized_keys(&keys, &command))?;
    let ssh_dir = data_dir.join("ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ssh_dir)
        .map_err(|source| SshError::Io {
            path: ssh_dir.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::channel(FAILURE_QUEUE);
    let host_key = HostKey {
        path: cfg.host_key_path(data_dir),
        dropbearkey: fixed.dropbearkey.clone(),
    };
    tracing::info!(
        user = %cfg.user,
        authorized_keys = %written,
        keys = keys.len(),
        listen = ?cfg.listen,
        "ssh: starting dropbear"
    );
    match &fixed.ssh {
        SshRunner::Daemon => {
            let supervisor = Supervisor {
                dropbear: fixed.dropbear.clone(),
                host_key,
                pid_file: ssh_dir.join("dropbear.pid"),
                listen: cfg.listen.clone(),
            };
            tokio::spawn(supervisor.run(tx));
        }
        SshRunner::Init { dir, .. } => {
            let outside = Outside {
                dir: dir.clone(),
                host_key,
                listen: cfg.listen.clone(),
            };
            outside.prepare()?;
            tokio::spawn(outside.run(tx));
        }
    }
    Ok(Some(rx))
}

/// The file in [`SshRunner::Init`]'s directory with the listen addresses, one a line.
const LISTEN_FILE: &str = "listen";
/// The FIFO in that directory dropbear's log comes through.
const LOG_FIFO: &str = "log";

/// The host key and the program that makes it.
#[derive(Debug, Clone)]
struct HostKey {
    path: PathBuf,
    dropbearkey: PathBuf,
}

impl HostKey {
    /// Generates the ed25519 host key with dropbearkey when the file is missing.
    async fn ensure(&self) -> Result<(), String> {
        if self.path.is_file() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let out = tokio::process::Command::new(&self.dropbearkey)
            .arg("-t")
            .arg("ed25519")
            .arg("-f")
            .arg(&self.path)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.dropbearkey.display()))?;
        if !out.status.success() {
            return Err(format!(
                "dropbearkey failed ({}): {}",
                out.status,
                printable(String::from_utf8_lossy(&out.stderr).trim(), 300)
            ));
        }
        tracing::info!(path = %self.path.display(), "ssh: host key generated");
        Ok(())
    }
}

/// dropbear run by init as the admin account: what the daemon does for it.
#[derive(Debug)]
struct Outside {
    dir: PathBuf,
    host_key: HostKey,
    listen: Vec<SocketAddr>,
}

impl Outside {
    /// The FIFO for dropbear's log (init's run-dropbear waits for it).
    fn prepare(&self) -> Result<(), SshError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SshError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        let fifo = self.dir.join(LOG_FIFO);
        match std::fs::symlink_metadata(&fifo) {
            Ok(m) if m.file_type().is_fifo() => Ok(()),
            Ok(_) => Err(SshError::Refused(format!(
                "{} exists and is not a FIFO",
                fifo.display()
            ))),
            Err(_) => nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| io(&fifo)(std::io::Error::from(e))),
        }
    }

    /// Makes the host key readable by dropbear (the admin group), publishes the addresses,
    /// then follows the log until the daemon ends.
    async fn run(self, failures: mpsc::Sender<IpAddr>) {
        let mut delay = MIN_BACKOFF;
        loop {
            match self.publish().await {
                Ok(()) => break,
                Err(err) => tracing::error!("ssh: {err}; trying again in {delay:?}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        let fifo = self.dir.join(LOG_FIFO);
        // Read-write: the FIFO never reports an end while dropbear restarts.
        let log = match tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
        {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(
                    "ssh: cannot read dropbear's log {}: {err}; failed SSH logins are not reported to the firewall",
                    fifo.display()
                );
                return;
            }
        };
        let mut budget = LogBudget::new(Instant::now());
        let dropped = follow_log(BufReader::new(log), &failures, &mut budget).await;
        if dropped > 0 {
            tracing::warn!(
                "ssh: {dropped} failed logins not reported to the firewall (queue full)"
            );
        }
    }

    async fn publish(&self) -> Result<(), String> {
        self.host_key.ensure().await?;
        // dropbear runs as the admin account, in the group the key has from its directory.
        std::fs::set_permissions(&self.host_key.path, std::fs::Permissions::from_mode(0o640))
            .map_err(|e| {
                format!(
                    "cannot open {} to dropbear: {e}",
                    self.host_key.path.display()
                )
            })?;
        let text: String = self.listen.iter().map(|a| format!("{a}\n")).collect();
        let path = self.dir.join(LISTEN_FILE);
        let tmp = self.dir.join(format!("{LISTEN_FILE}.new"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Feeds dropbear's log lines to a [`LoginWatch`] and re-logs them (within `budget`) until
/// the stream ends; returns how many failed logins did not fit the queue.
async fn follow_log<R: AsyncBufRead + Unpin>(
    mut reader: R,
    failures: &mpsc::Sender<IpAddr>,
    budget: &mut LogBudget,
) -> u64 {
    let mut watch = LoginWatch::new();
    let mut dropped = 0u64;
    let mut buf = Vec::with_capacity(MAX_LOG_LINE);
    while let Ok(true) = read_line_bounded(&mut reader, &mut buf, MAX_LOG_LINE).await {
        let line = String::from_utf8_lossy(&buf);
        let (_, msg) = split_log_line(&line);
        if QUIET.iter().any(|q| msg.starts_with(q)) {
            // Only after a key was accepted (or once at start): not attacker-driven.
            tracing::debug!("dropbear: {}", printable(msg, 300));
        } else {
            let (log, suppressed) = budget.allow(Instant::now());
            if suppressed > 0 {
                tracing::info!("ssh: {suppressed} dropbear log lines suppressed");
            }
            if log {
                tracing::info!("dropbear: {}", printable(msg, 300));
            }
        }
        if let Some(ip) = watch.line(&line) {
            if failures.try_send(ip).is_err() {
                dropped += 1;
            }
        }
    }
    dropped
}

/// The next failed login; pending forever when SSH is off.
pub async fn next_failure(rx: &mut Option<FailureReceiver>) -> Option<IpAddr> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs dropbear and restarts it when it dies.
#[derive(Debug)]
struct Supervisor {
    dropbear: PathBuf,
    host_key: HostKey,
    pid_file: PathBuf,
    listen: Vec<SocketAddr>,
}

impl Supervisor {
    /// dropbear's arguments: foreground, log to stderr, keys only, no forwarding, no root.
    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["-F", "-E", "-s", "-j", "-k", "-m", "-w"]
            .iter()
            .map(OsString::from)
            .collect();
        args.push("-r".into());
        args.push(self.host_key.path.clone().into());
        args.push("-P".into());
        args.push(self.pid_file.clone().into());
        for addr in &self.listen {
            args.push("-p".into());
            args.push(addr.to_string().into());
        }
        args
    }

    async fn run(self, failures: mpsc::Sender<IpAddr>) {
        self.stop_leftover();
        let mut backoff = MIN_BACKOFF;
        let mut budget = LogBudget::new(Instant::now());
        loop {
            let started = Instant::now();
            match self.host_key.ensure().await {
                Ok(()) => self.run_once(&failures, &mut budget).await,
                Err(err) => tracing::error!("ssh: {err}"),
            }
            if failures.is_closed() {
                return;
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!("ssh: dropbear is not running; restarting in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Starts dropbear, feeds its log to a [`LoginWatch`] until it exits.
    async fn run_once(&self, failures: &mpsc::Sender<IpAddr>, budget: &mut LogBudget) {
        let mut child = match tokio::process::Command::new(&self.dropbear)
            .args(self.args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(err) => {
                tracing::error!("ssh: cannot start {}: {err}", self.dropbear.display());
                return;
            }
        };
        tracing::info!(pid = child.id(), "ssh: dropbear running");
        let mut dropped = 0;
        if let Some(stderr) = child.stderr.take() {
            dropped = follow_log(BufReader::new(stderr), failures, budget).await;
        }
        match child.wait().await {
            Ok(status) => tracing::warn!("ssh: dropbear exited ({status})"),
            Err(err) => tracing::warn!("ssh: waiting for dropbear: {err}"),
        }
        if dropped > 0 {
            tracing::warn!(
                "ssh: {dropped} failed logins not reported to the firewall (queue full)"
            );
        }
    }

    /// Stops a dropbear left running by a daemon that was killed: the process named in our
    /// pid file, if its command line names that pid file (so it is ours, not a reused pid).
    fn stop_leftover(&self) {
        let Ok(text) = std::fs::read_to_string(&self.pid_file) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return;
        };
        let ours = self.pid_file.as_os_str().as_encoded_bytes();
        if cmdline.split(|&b| b == 0).any(|arg| arg == ours) {
            tracing::warn!(pid, "ssh: stopping a dropbear left by an earlier run");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Reads one line (newline removed) of at most `max` bytes into `buf`, skipping the rest
/// of a longer line. False at the end of the stream.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    let mut any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(any);
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl laptop";

    fn rsa_line(bits: u32) -> String {
        use base64::Engine as _;
        let mut blob = Vec::new();
        let mut put = |b: &[u8]| {
            blob.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
            blob.extend_from_slice(b);
        };
        put(b"ssh-rsa");
        put(&[1, 0, 1]);
        let mut n = vec![0u8];
        n.push(0xc5);
        n.extend(std::iter::repeat_n(
            0x5a,
            usize::try_from(bits / 8 - 1).unwrap(),
        ));
        put(&n);
        format!(
            "ssh-rsa {} admin@desk",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        )
    }

    #[test]
    fn authorized_keys_lines_are_restricted_to_the_forced_command() {
        let key = PublicKey::parse(ED25519).unwrap();
        let cmd = forced_command(Path::new("/run/outpost/admin.sock")).unwrap();
        let ctl = outpostctl_path();
        assert_eq!(
            cmd,
            format!(
                "'{}' --socket '/run/outpost/admin.sock' ssh-session",
                ctl.display()
            )
        );
        let text = authorized_keys(&[(key, 0)], &cmd);
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line,
            format!(
                "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"{cmd}\" {ED25519}"
            )
        );
        assert!(forced_command(Path::new("/tmp/a\"b.sock")).is_err());
    }

    #[test]
    fn authorized_keys_file_is_written_atomically_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let account = Account {
            name: "admin".into(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            home: dir.path().join("home"),
        };
        let path = write_authorized_keys(&account, "one\n").unwrap();
        let path2 = write_authorized_keys(&account, "two\n").unwrap();
        assert_eq!(path, path2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn keys_are_added_listed_and_deleted_by_fingerprint_or_comment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = SshConfig::default();
        let socket = PathBuf::from("/run/outpost/admin.sock");
        let execute = |cmd| execute(&cfg, &socket, &store, 0, cmd);
        let add = |line: &str| {
            super::execute(
                &cfg,
                &socket,
                &store,
                1_000,
                SshCommand::KeysAdd { line: line.into() },
            )
        };
        let reply = add(ED25519).unwrap();
        assert!(matches!(&reply, SshOutcome::Done(message) if message.contains("SSH is off")));
        assert!(matches!(add(ED25519), Err(SshError::Refused(m)) if m.contains("already")));
        add(&rsa_line(3072)).unwrap();
        let SshOutcome::Keys(list) = execute(SshCommand::KeysList).unwrap() else {
            panic!()
        };
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].key_type, "ssh-ed25519");
        assert_eq!(list[0].comment.as_deref(), Some("laptop"));
        assert_eq!(list[0].added, 1_000);
        assert_eq!(list[1].bits, 3072);
        let del = |key: &str| execute(SshCommand::KeysDel { key: key.into() });
        assert!(del("nobody").is_err());
        del("laptop").unwrap();
        let fp = list[1].fingerprint.clone();
        del(fp.strip_prefix("SHA256:").unwrap()).unwrap();
        let SshOutcome::Keys(list) = execute(SshCommand::KeysList).unwrap() else {
            panic!()
        };
        assert!(list.is_empty());
        // Two keys with one comment: the comment is ambiguous.
        add(ED25519).unwrap();
        add(&rsa_line(2048).replace("admin@desk", "laptop")).unwrap();
        assert!(matches!(del("laptop"), Err(SshError::Refused(m)) if m.contains("2 keys")));
    }

    #[test]
    fn failed_logins_are_counted_once_per_connection() {
        let mut w = LoginWatch::new();
        let lines = [
            "[20891] Nov 26 20:10:49 Not backgrounding",
            "[20894] Nov 26 20:10:50 Child connection from 203.0.113.7:32854",
            "[20894] Nov 26 20:10:50 Login attempt for nonexistent user",
            "[20894] Nov 26 20:10:50 Exit before auth from <203.0.113.7:32854>: Exited normally",
            // A key that is not authorised: only the early exit says so.
            "[20941] Nov 26 20:10:54 Child connection from 203.0.113.8:32894",
            "[20941] Nov 26 20:10:54 Exit before auth from <203.0.113.8:32894>: (user 'admin', 0 fails): Exited normally",
            // A good login.
            "[20943] Nov 26 20:10:54 Child connection from 198.51.100.2:32900",
            "[20943] Nov 26 20:10:54 Port forwarding disabled.",
            "[20943] Nov 26 20:10:54 Pubkey auth succeeded for 'admin' with ssh-ed25519 key SHA256:02CS from 198.51.100.2:32900",
            "[20943] Nov 26 20:10:54 Exit (admin) from <198.51.100.2:32900>: Disconnect received",
            // dropbear running as the admin: root (or anyone else) is a wrong user.
            "[20950] Nov 26 20:10:55 Child connection from 203.0.113.9:33000",
            "[20950] Nov 26 20:10:55 Login attempt with wrong user root",
            "[20950] Nov 26 20:10:55 Exit before auth from <203.0.113.9:33000>: (user 'root', 0 fails): Exited normally",
            "[20896] Nov 26 20:10:50 Child connection from [2001:db8::9]:40000",
            "[20896] Nov 26 20:10:50 root login rejected",
            "[20896] Nov 26 20:10:51 Max auth tries reached - user 'root'",
            "[20896] Nov 26 20:10:51 Exit before auth from <2001:db8::9:40000>: (user 'root', 10 fails): Max auth tries",
        ];
        let got: Vec<IpAddr> = lines.iter().filter_map(|l| w.line(l)).collect();
        let want: Vec<IpAddr> = vec![
            "203.0.113.7".parse().unwrap(),
            "203.0.113.8".parse().unwrap(),
            "203.0.113.9".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ];
        assert_eq!(got, want);
        assert!(w.pending.is_empty());
        // An early exit whose connection line was never seen still names its source.
        assert_eq!(
            w.line("[7] Nov 26 20:10:50 Exit before auth from <2001:db8::5:22>: x"),
            Some("2001:db8::5".parse().unwrap())
        );
        assert_eq!(w.line("garbage"), None);
        assert_eq!(w.line("[x] Exit before auth from <nonsense>"), None);
    }

    #[test]
    fn pending_connections_are_bounded() {
        let mut w = LoginWatch::new();
        for pid in 0..5_000u32 {
            w.line(&format!(
                "[{pid}] Nov 26 20:10:50 Child connection from 203.0.113.7:{}",
                pid % 60_000 + 1
            ));
        }
        assert!(w.pending.len() <= MAX_PENDING);
    }

    #[test]
    fn log_budget_limits_lines_per_window() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(t0);
        let allowed = (0..100).filter(|_| b.allow(t0).0).count();
        assert_eq!(allowed, usize::try_from(LOG_LINES_PER_WINDOW).unwrap());
        let (ok, suppressed) = b.allow(t0 + LOG_WINDOW);
        assert!(ok);
        assert_eq!(suppressed, 70);
    }

    #[tokio::test]
    async fn long_log_lines_are_cut_not_buffered() {
        let mut input = vec![b'a'; 10_000];
        input.extend_from_slice(b"\nshort\nlast");
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert!(read_line_bounded(&mut reader, &mut buf, 100).await.unwrap());
        assert_eq!(buf.len(), 100);
        assert!(read_line_bounded(&mut reader, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"short");
        assert!(read_line_bounded(&mut reader, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"last");
        assert!(!read_line_bounded(&mut reader, &mut buf, 100).await.unwrap());
    }

    #[test]
    fn config_checks() {
        let mut c = SshConfig::default();
        assert!(c.check().is_ok());
        c.user = "bad user".into();
        assert_eq!(c.check().unwrap_err().0, "ssh.user");
        c.user = "admin".into();
        c.listen = vec!["0.0.0.0:22".parse().unwrap(); 2];
        assert_eq!(c.check().unwrap_err().0, "ssh.listen");
        c.listen = vec![];
        c.enabled = true;
        assert_eq!(c.check().unwrap_err().0, "ssh.listen");
        let c = SshConfig {
            host_key: Some(PathBuf::from("/data/ssh/k\"ey")),
            ..SshConfig::default()
        };
        assert_eq!(c.check().unwrap_err().0, "ssh.host_key");
        // The retired program keys still load (ignored), are named, and are never written.
        let c: SshConfig =
            toml::from_str("enabled = true\ndropbear = \"/tmp/evil\"\noutpostctl = \"/tmp/x\"\n")
                .unwrap();
        assert_eq!(c.retired_keys(), ["ssh.dropbear", "ssh.outpostctl"]);
        let text = toml::to_string(&c).unwrap();
        assert!(
            !text.contains("evil") && !text.contains("dropbear"),
            "{text}"
        );
        let c: SshConfig =
            toml::from_str("enabled = true\nlisten = [\"127.0.0.1:2222\"]\nuser = \"ops\"\n")
                .unwrap();
        assert_eq!(c.user, "ops");
        assert_eq!(
            c.host_key_path(Path::new("/data")),
            PathBuf::from("/data/ssh/dropbear_ed25519_host_key")
        );
        assert!(toml::from_str::<SshConfig>("port = 22\n").is_err());
        let sup = Supervisor {
            dropbear: "/usr/sbin/dropbear".into(),
            host_key: HostKey {
                path: "/data/ssh/hk".into(),
                dropbearkey: "/usr/bin/dropbearkey".into(),
            },
            pid_file: "/data/ssh/dropbear.pid".into(),
            listen: vec!["0.0.0.0:22".parse().unwrap(), "[::]:2222".parse().unwrap()],
        };
        let args: Vec<String> = sup
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-F -E -s -j -k -m -w -r /data/ssh/hk -P /data/ssh/dropbear.pid -p 0.0.0.0:22 -p [::]:2222"
        );
    }
}
