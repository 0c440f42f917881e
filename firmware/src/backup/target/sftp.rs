//! The SFTP target: the OpenSSH `sftp` client in batch mode (we never speak SSH
//! ourselves), key authentication only, the server's host key pinned in the config (a
//! one-line known_hosts file written for each run, `StrictHostKeyChecking=yes`: any other
//! key is refused). An upload is `cd DIR`, `put FILE NAME.partial`, `rename NAME.partial
//! NAME`; OpenSSH's `rename` uses the `posix-rename@openssh.com` extension, so an existing
//! file of that name is replaced atomically. The client key defaults to
//! `<data_dir>/backup/id_ed25519`, made with `ssh-keygen` when missing; its public key is
//! logged so the admin can install it on the server.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::remote::{RemoteFile, TargetError, PARTIAL_SUFFIX};
use crate::names::printable;
use crate::ssh::PublicKey;

/// Default SFTP port.
pub const SSH_PORT: u16 = 22;
/// Name of the default client key under `<data_dir>/backup/`.
const IDENTITY_FILE: &str = "id_ed25519";
/// Comment of a generated client key.
const IDENTITY_COMMENT: &str = "outpost-backup";
/// The host alias the pinned key is filed under (so the port never changes the lookup).
const HOST_ALIAS: &str = "outpost-backup-target";
/// Time for a TCP connect (ssh's `ConnectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for `ssh-keygen`.
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of the client's stderr kept for the error message.
const MAX_STDERR: usize = 16 * 1024;
/// Longest reason taken from a remote tool into an error.
const MAX_REASON: usize = 400;
/// Longest remote directory.
const MAX_REMOTE_PATH: usize = 1024;
/// Most output of an `sftp` run read (a listing of a few thousand backups fits).
const MAX_LISTING: usize = 1024 * 1024;
/// Longest a listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a download may take (a large backup over a slow line).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

/// An OpenSSH server reached with `sftp`, key authentication, pinned host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpTarget {
    /// Host name or IP address.
    pub host: String,
    /// SSH port [default: 22].
    pub port: u16,
    /// Remote account.
    pub user: String,
    /// Remote directory the backups go to (absolute, or relative to the account's home).
    pub path: String,
    /// The server's public host key line (`ssh-ed25519 AAAA…`); any other key is refused.
    pub host_key: String,
    /// Client private key [default: `<data_dir>/backup/id_ed25519`, generated when missing].
    pub identity: Option<PathBuf>,
}

/// Checks an SFTP target's settings without touching the network or files; the error is
/// (key, reason).
pub fn check(s: &SftpTarget) -> Result<(), (String, String)> {
    let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
    if !valid_host(&s.host) {
        return bad(
            "host",
            "must be a host name or IP address (letters, digits, `.`, `-`, `_`, `:`)".to_owned(),
        );
    }
    if s.port == 0 {
        return bad("port", "must be 1 to 65535".to_owned());
    }
    if !valid_user(&s.user) {
        return bad(
            "user",
            "must be an account name: letters, digits, `_`, `-`, `.`, at most 32".to_owned(),
        );
    }
    if s.path.is_empty() || s.path.len() > MAX_REMOTE_PATH || !safe_in_batch(&s.path) {
        return bad(
            "path",
            format!(
                "must be a directory of at most {MAX_REMOTE_PATH} bytes without quotes, \
                     backslashes, `*?[]` or control characters"
            ),
        );
    }
    if let Err(e) = PublicKey::parse(&s.host_key) {
        return bad(
            "host_key",
            format!("{e} (the server's /etc/ssh/ssh_host_*_key.pub)"),
        );
    }
    if let Some(id) = &s.identity {
        if let Err(reason) = check_identity_path(id) {
            return bad("identity", reason);
        }
    }
    Ok(())
}

/// An SFTP target ready for transfers: its settings and a client key that exists.
#[derive(Debug)]
pub struct Sftp<'a> {
    target: &'a SftpTarget,
    identity: PathBuf,
}

impl<'a> Sftp<'a> {
    /// The target with its client key, made when missing.
    pub async fn ready(target: &'a SftpTarget, data_dir: &Path) -> Result<Sftp<'a>, TargetError> {
        let identity = ready_identity(target, data_dir).await?;
        Ok(Sftp { target, identity })
    }

    /// One upload attempt of `file` as `name` (partial name, then renamed).
    pub async fn upload(
        &self,
        file: &Path,
        name: &str,
        timeout: Duration,
    ) -> Result<(), TargetError> {
        sftp_upload(self.target, &self.identity, file, name, timeout).await
    }

    /// The backups in the target's directory (unsorted).
    pub async fn list(&self) -> Result<Vec<RemoteFile>, TargetError> {
        let batch = format!("cd \"{}\"\nls -ln\n", self.target.path);
        let (out, _) = run_sftp(
            self.target,
            &self.identity,
            &batch,
            LIST_TIMEOUT,
            HostKeyCheck::Pinned,
        )
        .await?;
        Ok(parse_sftp_listing(&out))
    }

    /// Downloads `name` into `dest`, at most `max` bytes; its size.
    pub async fn fetch(&self, name: &str, dest: &Path, max: u64) -> Result<u64, TargetError> {
        sftp_get(self.target, &self.identity, name, dest, max).await
    }
}

/// The client key an SFTP target uses: `identity`, or `<data_dir>/backup/id_ed25519`.
pub fn identity_path(target: &SftpTarget, data_dir: &Path) -> PathBuf {
    target
        .identity
        .clone()
        .unwrap_or_else(|| default_identity_path(data_dir))
}

/// The default SFTP client key, `<data_dir>/backup/id_ed25519`.
pub fn default_identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("backup").join(IDENTITY_FILE)
}

/// Makes the ed25519 key pair `identity` (and `identity.pub`) with `ssh-keygen` when the
/// private key is missing, and returns the public key line to install on the server.
pub async fn ensure_identity(identity: &Path) -> Result<String, TargetError> {
    let public = public_key_path(identity);
    if identity.is_file() {
        if let Ok(line) = std::fs::read_to_string(&public) {
            if PublicKey::parse(line.trim()).is_ok() {
                return Ok(line.trim().to_owned());
            }
        }
        // The public half is gone or damaged: derive it again from the private key.
        let out = run_tool(
            "ssh-keygen",
            tokio::process::Command::new("ssh-keygen")
                .arg("-y")
                .arg("-f")
                .arg(identity),
        )
        .await?;
        let line = String::from_utf8_lossy(&out).trim().to_owned();
        write_file(&public, format!("{line}\n").as_bytes(), 0o644)?;
        return Ok(line);
    }
    if let Some(dir) = identity.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TargetError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    // ssh-keygen asks before overwriting: a lone stale public half would stall it.
    let _ = std::fs::remove_file(&public);
    run_tool(
        "ssh-keygen",
        tokio::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                IDENTITY_COMMENT,
                "-f",
            ])
            .arg(identity),
    )
    .await?;
    let line = std::fs::read_to_string(&public)
        .map_err(|source| TargetError::Io {
            path: public.clone(),
            source,
        })?
        .trim()
        .to_owned();
    tracing::warn!(
        identity = %identity.display(),
        "generated the SFTP backup key; add this line to ~/.ssh/authorized_keys of the backup account on the server: {line}"
    );
    Ok(line)
}

/// The server's host key, as `accept-new` sees it (for the admin to confirm before a
/// download with [`fetch_sftp_file`]).
pub async fn learn_host_key(target: &SftpTarget, data_dir: &Path) -> Result<String, TargetError> {
    let identity = ready_identity(target, data_dir).await?;
    let (_, learned) = run_sftp(
        target,
        &identity,
        "pwd\n",
        LIST_TIMEOUT,
        HostKeyCheck::Learn,
    )
    .await?;
    learned.ok_or_else(|| TargetError::Protocol {
        addr: host_port(&target.host, target.port),
        reason: "the server presented no host key".to_owned(),
    })
}

/// Downloads `dir/name` of an SFTP server (`target.path` is the directory) into `dest`.
pub async fn fetch_sftp_file(
    target: &SftpTarget,
    data_dir: &Path,
    name: &str,
    dest: &Path,
    max: u64,
) -> Result<u64, TargetError> {
    let identity = ready_identity(target, data_dir).await?;
    sftp_get(target, &identity, name, dest, max).await
}

/// The client key of an SFTP target, made when missing.
async fn ready_identity(s: &SftpTarget, data_dir: &Path) -> Result<PathBuf, TargetError> {
    let identity = identity_path(s, data_dir);
    check_identity_path(&identity).map_err(|reason| TargetError::Config {
        key: "identity".to_owned(),
        reason,
    })?;
    ensure_identity(&identity).await?;
    Ok(identity)
}

/// `ls -ln` of the file first (its size against `max`), then `get`.
async fn sftp_get(
    s: &SftpTarget,
    identity: &Path,
    name: &str,
    dest: &Path,
    max: u64,
) -> Result<u64, TargetError> {
    if !crate::backup::archive::is_safe_file_name(name) || !safe_in_batch(name) {
        return Err(TargetError::Config {
            key: "name".to_owned(),
            reason: format!("{name:?} is not a plain file name"),
        });
    }
    let local = batch_path(dest)?;
    let addr = host_port(&s.host, s.port);
    let batch = format!("cd \"{}\"\nls -ln \"{name}\"\n", s.path);
    let (out, _) = run_sftp(s, identity, &batch, LIST_TIMEOUT, HostKeyCheck::Pinned).await?;
    let size = parse_ls_lines(&out)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, size)| size)
        .ok_or_else(|| TargetError::Remote {
            addr: addr.clone(),
            reason: format!("no file {name} in {}", s.path),
        })?;
    if size > max {
        return Err(TargetError::Remote {
            addr,
            reason: format!("{name} is {size} bytes, more than the {max} a backup may have"),
        });
    }
    let batch = format!("cd \"{}\"\nget \"{name}\" \"{local}\"\n", s.path);
    run_sftp(s, identity, &batch, FETCH_TIMEOUT, HostKeyCheck::Pinned).await?;
    let got = std::fs::metadata(dest)
        .map_err(|source| TargetError::Io {
            path: dest.to_path_buf(),
            source,
        })?
        .len();
    if got != size {
        return Err(TargetError::Remote {
            addr,
            reason: format!("{name}: received {got} of {size} bytes"),
        });
    }
    Ok(got)
}

/// Regular files of an `ls -ln` output: (name, size).
fn parse_ls_lines(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            if fields.len() != 9 {
                return None;
            }
            let size = fields[4].parse().ok()?;
            // sftp prints the path as given: a bare name, or with the directory.
            let name = fields[8].rsplit('/').next()?;
            Some((name.to_owned(), size))
        })
        .collect()
}

/// The backups of an `ls -ln` output.
fn parse_sftp_listing(out: &str) -> Vec<RemoteFile> {
    parse_ls_lines(out)
        .into_iter()
        .filter_map(|(name, size)| {
            let created_ms = crate::backup::parse_name(&name)?;
            Some(RemoteFile {
                name,
                size,
                created_ms,
            })
        })
        .collect()
}

/// One `sftp` run: pinned host key, key auth, `cd`, `put` to the partial name, `rename`.
async fn sftp_upload(
    target: &SftpTarget,
    identity: &Path,
    file: &Path,
    name: &str,
    timeout: Duration,
) -> Result<(), TargetError> {
    let local = batch_path(file)?;
    let partial = format!("{name}{PARTIAL_SUFFIX}");
    let batch = format!(
        "cd \"{}\"\nput \"{local}\" \"{partial}\"\nrename \"{partial}\" \"{name}\"\n",
        target.path
    );
    run_sftp(target, identity, &batch, timeout, HostKeyCheck::Pinned).await?;
    Ok(())
}

/// A local path as an sftp batch file may quote it.
fn batch_path(file: &Path) -> Result<&str, TargetError> {
    file.to_str()
        .filter(|p| safe_in_batch(p))
        .ok_or_else(|| TargetError::Config {
            key: "file".to_owned(),
            reason: format!(
            "{}: the path must be UTF-8 without quotes, backslashes, `*?[]` or control characters",
            file.display()
        ),
        })
}

/// How `sftp` checks the server's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKeyCheck {
    /// Only the pinned `host_key` is accepted.
    Pinned,
    /// Whatever the server presents is accepted and returned (to be shown to the admin,
    /// who confirms it before anything is read).
    Learn,
}

/// Runs `sftp -b -` with `batch` against `target`; returns its standard output (batch mode
/// echoes each command as `sftp> ...`, followed by the command's output) and, with
/// [`HostKeyCheck::Learn`], the host key the server presented.
async fn run_sftp(
    target: &SftpTarget,
    identity: &Path,
    batch: &str,
    timeout: Duration,
    check: HostKeyCheck,
) -> Result<(String, Option<String>), TargetError> {
    let addr = host_port(&target.host, target.port);
    let pinned = match check {
        HostKeyCheck::Pinned => {
            Some(
                PublicKey::parse(&target.host_key).map_err(|e| TargetError::Config {
                    key: "host_key".to_owned(),
                    reason: e.to_string(),
                })?,
            )
        }
        HostKeyCheck::Learn => None,
    };
    let known_hosts = KnownHosts::write(pinned.as_ref())?;
    let mut cmd = tokio::process::Command::new("sftp");
    cmd.arg("-b")
        .arg("-")
        .args(["-F", "/dev/null", "-i"])
        .arg(identity)
        .arg("-o")
        .arg(format!("HostName={}", target.host))
        .arg("-o")
        .arg(format!("Port={}", target.port))
        .arg("-o")
        .arg(format!("User={}", target.user))
        .arg("-o")
        .arg(format!("HostKeyAlias={HOST_ALIAS}"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.path.display()))
        .arg("-o")
        .arg(format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()));
    match &pinned {
        Some(key) => {
            cmd.arg("-o")
                .arg(format!(
                    "HostKeyAlgorithms={}",
                    host_key_algorithms(key.key_type())
                ))
                .arg("-o")
                .arg("StrictHostKeyChecking=yes");
        }
        None => {
            cmd.arg("-o")
                .arg("StrictHostKeyChecking=accept-new")
                .arg("-o")
                .arg("HashKnownHosts=no");
        }
    }
    for opt in [
        "GlobalKnownHostsFile=/dev/null",
        "CheckHostIP=no",
        "UpdateHostKeys=no",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
    ] {
        cmd.arg("-o").arg(opt);
    }
    cmd.arg(HOST_ALIAS)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        // Batch mode echoes each command there: the last one is the one that failed.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that a stop also ends the ssh it started.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| TargetError::Tool {
        program: "sftp".to_owned(),
        reason: format!("cannot run it ({e}); is openssh-client installed?"),
    })?;
    let group = GroupKill(child.id().and_then(|id| i32::try_from(id).ok()));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let run = async {
        // sftp may exit before reading it all (e.g. a refused connection): not an error.
        let _ = stdin.write_all(batch.as_bytes()).await;
        drop(stdin);
        let (out_text, err_text) = tokio::join!(
            read_bounded(&mut stdout, MAX_LISTING),
            read_bounded(&mut stderr, MAX_STDERR)
        );
        let status = child.wait().await;
        (status, out_text, err_text)
    };
    let (status, out_text, err_text) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| TargetError::Timeout(timeout))?;
    let status = status.map_err(|e| TargetError::Tool {
        program: "sftp".to_owned(),
        reason: e.to_string(),
    })?;
    group.disarm();
    let learned = match check {
        HostKeyCheck::Learn => known_hosts.learned(),
        HostKeyCheck::Pinned => None,
    };
    drop(known_hosts);
    if status.success() {
        return Ok((out_text, learned));
    }
    if check == HostKeyCheck::Learn && learned.is_some() {
        // The key was learned; what failed after it (our key not authorised yet, a
        // missing file) is for the pinned run to report.
        return Ok((out_text, learned));
    }
    let last_command = out_text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("sftp> "));
    Err(sftp_failure(
        status.code(),
        &err_text,
        last_command,
        &addr,
        target,
        identity,
        pinned.as_ref(),
    ))
}

/// Maps a failed `sftp` run to a reason an admin can act on.
fn sftp_failure(
    code: Option<i32>,
    stderr: &str,
    last_command: Option<&str>,
    addr: &str,
    target: &SftpTarget,
    identity: &Path,
    pinned: Option<&PublicKey>,
) -> TargetError {
    let addr = addr.to_owned();
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("no matching host key type found")
    {
        let presented = stderr
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .map(|w| printable(w.trim_end_matches('.'), 80))
            .or_else(|| {
                stderr
                    .contains("no matching host key type found")
                    .then(|| match pinned {
                        Some(p) => format!("no {} key", p.key_type().name()),
                        None => "no usable key".to_owned(),
                    })
            });
        return TargetError::HostKeyMismatch {
            addr,
            pinned: pinned.map(PublicKey::fingerprint).unwrap_or_default(),
            presented,
        };
    }
    if stderr.contains("Permission denied (") || stderr.contains("Too many authentication failures")
    {
        return TargetError::AuthFailed {
            addr,
            reason: format!(
                "the server refused our key for user `{}`; add the line in {} to ~{}/.ssh/authorized_keys on the server",
                target.user,
                public_key_path(identity).display(),
                target.user
            ),
        };
    }
    for (needle, reason) in [
        ("Connection refused", "connection refused"),
        ("Connection timed out", "connection timed out"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network is unreachable"),
        ("Could not resolve hostname", "host name not found"),
        ("Name or service not known", "host name not found"),
    ] {
        if stderr.contains(needle) {
            return TargetError::Unreachable {
                addr,
                reason: reason.to_owned(),
            };
        }
    }
    let reason = summary(stderr);
    let reason = if reason.is_empty() {
        format!("sftp exited with {code:?}")
    } else {
        reason
    };
    if code == Some(1) {
        // Batch mode: a command failed after login (cd, put, rename).
        let reason = match last_command {
            Some(cmd) => format!("`{}`: {reason}", printable(cmd, MAX_REASON)),
            None => reason,
        };
        TargetError::Remote { addr, reason }
    } else {
        TargetError::Protocol { addr, reason }
    }
}

/// The host key algorithms that prove possession of a key of `key_type`.
fn host_key_algorithms(key_type: crate::ssh::KeyType) -> &'static str {
    match key_type {
        crate::ssh::KeyType::Ed25519 => "ssh-ed25519",
        crate::ssh::KeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
        crate::ssh::KeyType::Rsa => "rsa-sha2-512,rsa-sha2-256",
    }
}

/// A one-line known_hosts file with the pinned key, removed on drop.
struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    /// A file with the pinned key, or an empty one for `accept-new` to fill.
    fn write(pinned: Option<&PublicKey>) -> Result<KnownHosts, TargetError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "outpost-backup-known-hosts-{}-{}-{:016x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u64>()
        ));
        let line = match pinned {
            Some(pinned) => {
                // The comment is left out: ssh needs only type and key.
                let mut parts = pinned.to_line();
                if let Some(c) = pinned.comment() {
                    parts.truncate(parts.len() - c.len() - 1);
                }
                format!("{HOST_ALIAS} {parts}\n")
            }
            None => String::new(),
        };
        write_file(&path, line.as_bytes(), 0o600)?;
        Ok(KnownHosts { path })
    }

    /// The key `accept-new` wrote (`type base64`), if it parses.
    fn learned(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(HOST_ALIAS)?.trim();
            PublicKey::parse(rest).ok().map(|_| rest.to_owned())
        })
    }
}

impl Drop for KnownHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Kills a child's process group on drop unless disarmed (after the child was reaped).
struct GroupKill(Option<i32>);

impl GroupKill {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A host name or IP address that ssh takes as `HostName` (no `%` tokens, no options).
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A string that can sit between double quotes in an sftp batch command.
pub fn safe_in_batch(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || matches!(c, '"' | '\\' | '*' | '?' | '[' | ']'))
}

/// A key path ssh takes literally (`%` and a leading `~` would be expanded).
pub fn check_identity_path(path: &Path) -> Result<(), String> {
    match path.to_str() {
        Some(s) if !s.is_empty() && !s.starts_with('~') && !s.contains('%') && safe_in_batch(s) => {
            Ok(())
        }
        _ => Err(format!(
            "{}: must be a UTF-8 path without `%`, a leading `~`, quotes or control characters",
            path.display()
        )),
    }
}

/// The public half of a client key: `<identity>.pub`.
pub fn public_key_path(identity: &Path) -> PathBuf {
    let mut s = identity.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Writes `bytes` to a new file of mode `mode` (replacing an old one).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TargetError> {
    use std::io::Write as _;
    let io_err = |source| TargetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    f.write_all(bytes).map_err(io_err)
}

/// Runs a short helper program; returns its stdout, or its stderr as the error.
async fn run_tool(
    program: &str,
    cmd: &mut tokio::process::Command,
) -> Result<Vec<u8>, TargetError> {
    let tool = |reason: String| TargetError::Tool {
        program: program.to_owned(),
        reason,
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(KEYGEN_TIMEOUT, cmd.output())
        .await
        .map_err(|_| tool(format!("did not finish within {KEYGEN_TIMEOUT:?}")))?
        .map_err(|e| tool(format!("cannot run it ({e}); is openssh-client installed?")))?;
    if !out.status.success() {
        return Err(tool(format!(
            "failed ({}): {}",
            out.status,
            summary(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    Ok(out.stdout)
}

/// Reads at most `max` bytes of `input` (the rest is read and dropped, so the writer
/// never blocks on a full pipe).
async fn read_bounded<R: AsyncRead + Unpin>(input: &mut R, max: usize) -> String {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = input.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The informative lines of a tool's stderr, joined and cut to [`MAX_REASON`].
fn summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Connection closed" && !l.starts_with("sftp>"))
        .collect();
    printable(&lines.join("; "), MAX_REASON)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn sftp_failures_are_told_apart() {
        let target = SftpTarget {
            host: "backup.example.net".to_owned(),
            port: 22,
            user: "outpost".to_owned(),
            path: "/srv/backup/branch-1".to_owned(),
            host_key: HOST_KEY.to_owned(),
            identity: None,
        };
        let pinned = PublicKey::parse(HOST_KEY).expect("key");
        let id = Path::new("/data/backup/id_ed25519");
        let map = |code, err: &str| {
            sftp_failure(Some(code), err, None, "h:22", &target, id, Some(&pinned))
        };
        let mismatch = map(
            255,
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nThe fingerprint for the \
             ED25519 key sent by the remote host is\nSHA256:nMV3gTjVpLvu8UV3vkSdi4CbsQc3Ehu2q1wOuB05/mM.\n\
             Host key verification failed.\nConnection closed\n",
        );
        match &mismatch {
            TargetError::HostKeyMismatch {
                presented,
                pinned: p,
                ..
            } => {
                assert_eq!(
                    presented.as_deref(),
                    Some("SHA256:nMV3gTjVpLvu8UV3vkSdi4CbsQc3Ehu2q1wOuB05/mM")
                );
                assert_eq!(p, &pinned.fingerprint());
            }
            other => panic!("{other:?}"),
        }
        assert!(!mismatch.is_transient());
        let refused = map(
            255,
            "ssh: connect to host h port 22: Connection refused\nConnection closed\n",
        );
        assert!(
            matches!(refused, TargetError::Unreachable { .. }),
            "{refused:?}"
        );
        assert!(refused.is_transient());
        let auth = map(
            255,
            "outpost@h: Permission denied (publickey).\nConnection closed\n",
        );
        assert!(matches!(auth, TargetError::AuthFailed { .. }), "{auth:?}");
        assert!(
            auth.to_string().contains("/data/backup/id_ed25519.pub"),
            "{auth}"
        );
        let remote = sftp_failure(
            Some(1),
            "stat remote: No such file or directory\n",
            Some("cd \"/srv\""),
            "h:22",
            &target,
            id,
            Some(&pinned),
        );
        assert!(matches!(remote, TargetError::Remote { .. }), "{remote:?}");
        assert!(
            remote
                .to_string()
                .ends_with("`cd \"/srv\"`: stat remote: No such file or directory"),
            "{remote}"
        );
    }

    #[test]
    fn sftp_listings_parse() {
        let ls = "sftp> cd \"/srv\"\nsftp> ls -ln\n\
            -rw-------    1 0        0          12345 Dec  6 12:00 outpost-a-20240501T023000Z.backup\n\
            -rw-------    1 0        0             99 Dec  6 12:00 outpost-a-20240502T023000Z.backup.partial\n\
            drwx------    2 0        0           4096 Dec  6 12:00 outpost-b-20240503T023000Z.backup\n\
            -rw-------    1 0        0              7 Dec  6 12:00 notes.txt\n";
        let files = parse_sftp_listing(ls);
        assert_eq!(
            files,
            vec![RemoteFile {
                name: "outpost-a-20240501T023000Z.backup".into(),
                size: 12345,
                created_ms: 1_714_530_600_000,
            }]
        );
    }
}
