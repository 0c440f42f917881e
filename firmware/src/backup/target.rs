//! Off-site backup targets: SFTP to any OpenSSH server and HTTPS PUT to a WebDAV-style
//! server. A finished backup file is copied off the box so that a stolen, burnt or
//! encrypted box can be replaced from it.
//!
//! - **SFTP** runs the OpenSSH `sftp` client in batch mode (we never speak SSH ourselves):
//!   key authentication only, the server's host key pinned in the config (a one-line
//!   known_hosts file written for each run, `StrictHostKeyChecking=yes`: any other key is
//!   refused), `cd DIR`, `put FILE NAME.partial`, `rename NAME.partial NAME`. OpenSSH's
//!   `rename` uses the `posix-rename@openssh.com` extension, so an existing file of that name
//!   is replaced atomically. The client key defaults to `<data_dir>/backup/id_ed25519`,
//!   made with `ssh-keygen` when missing; its public key is logged so the admin can
//!   install it on the server.
//! - **HTTPS** is a small HTTP/1.1 client on tokio-rustls with the daemon's TLS client
//!   settings (Mozilla roots plus the optional `ca`), Basic auth, `Expect: 100-continue`
//!   (a refused password costs one round trip, not the whole upload) and the file streamed
//!   with its `Content-Length`. The file goes to `NAME.partial` first and is then renamed
//!   with WebDAV `MOVE` (`Destination`, `Overwrite: T`). A server that refuses `MOVE` with
//!   405 or 501 (a plain PUT endpoint, not WebDAV) gets the file again by a plain `PUT` to
//!   `NAME` and a best-effort `DELETE` of the partial: such a server may briefly show a
//!   partial `NAME` while that second upload runs.
//!
//! Every upload is retried with exponential back-off ([`Retry`]) while the failure may be
//! transient (target unreachable, timeout, HTTP 5xx, a remote write error); a refused host
//! key, refused credentials or certificate, or a bad configuration fail at once. The error
//! says why in words an admin can act on.

use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ssh::PublicKey;

/// Default SFTP port.
const SSH_PORT: u16 = 22;
/// Default HTTPS port.
const HTTPS_PORT: u16 = 443;
/// Name of the default client key under `<data_dir>/backup/`.
const IDENTITY_FILE: &str = "id_ed25519";
/// Comment of a generated client key.
const IDENTITY_COMMENT: &str = "outpost-backup";
/// The host alias the pinned key is filed under (so the port never changes the lookup).
const HOST_ALIAS: &str = "outpost-backup-target";
/// Suffix of the temporary name an upload goes to before the rename.
const PARTIAL_SUFFIX: &str = ".partial";
/// Time for a TCP connect (also ssh's `ConnectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an HTTPS server gets to answer `Expect: 100-continue` before the body goes anyway.
const EXPECT_WAIT: Duration = Duration::from_secs(2);
/// An HTTPS transfer that moves no byte for this long is stalled (SFTP: ssh's
/// `ServerAliveInterval` × `ServerAliveCountMax`, 60 s).
const IO_STALL: Duration = Duration::from_secs(120);
/// Time for `ssh-keygen`.
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP response head read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Interim (1xx) responses skipped before a final one; more is a broken server.
const MAX_INTERIM: usize = 8;
/// Bytes of the client's stderr kept for the error message.
const MAX_STDERR: usize = 16 * 1024;
/// Longest reason taken from a remote tool or server into an error.
const MAX_REASON: usize = 400;
/// Longest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;
/// Longest backup file name.
const MAX_FILE_NAME: usize = 200;
/// Longest target name.
const MAX_TARGET_NAME: usize = 64;
/// Longest remote directory or URL.
const MAX_REMOTE_PATH: usize = 1024;
/// Most output of an `sftp` run read (a listing of a few thousand backups fits).
const MAX_LISTING: usize = 1024 * 1024;
/// Backups listed per target at most.
pub const MAX_REMOTE_FILES: usize = 1000;

/// One off-site target: `[[backup.targets]]` with `name`, `kind` (`"sftp"` or `"https"`)
/// and the keys of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TargetRepr", into = "TargetRepr")]
pub struct TargetConfig {
    /// Name used in logs, alerts and `outpostctl` (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// Where and how the backup goes.
    pub kind: TargetKind,
}

/// The protocol of a target and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// `kind = "sftp"`.
    Sftp(SftpTarget),
    /// `kind = "https"`.
    Https(HttpsTarget),
}

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

/// A WebDAV-style HTTPS server that takes `PUT` (and `MOVE`) with Basic auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsTarget {
    /// Directory URL, `https://host[:port]/dir/` (a missing final `/` is implied).
    pub url: String,
    /// Basic auth user name.
    pub username: String,
    /// File holding the password (mode 0600; one line, a final newline is ignored).
    pub password_file: PathBuf,
    /// PEM file of extra trusted roots (besides the Mozilla roots).
    pub ca: Option<PathBuf>,
}

/// The config file's form of a target: one table with a `kind` tag (serde cannot deny
/// unknown keys through `flatten`, so the struct converts from and into this).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum TargetRepr {
    Sftp {
        name: String,
        host: String,
        #[serde(default = "default_ssh_port")]
        port: u16,
        user: String,
        path: String,
        host_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<PathBuf>,
    },
    Https {
        name: String,
        url: String,
        username: String,
        password_file: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<PathBuf>,
    },
}

fn default_ssh_port() -> u16 {
    SSH_PORT
}

impl From<TargetRepr> for TargetConfig {
    fn from(repr: TargetRepr) -> Self {
        match repr {
            TargetRepr::Sftp {
                name,
                host,
                port,
                user,
                path,
                host_key,
                identity,
            } => TargetConfig {
                name,
                kind: TargetKind::Sftp(SftpTarget {
                    host,
                    port,
                    user,
                    path,
                    host_key,
                    identity,
                }),
            },
            TargetRepr::Https {
                name,
                url,
                username,
                password_file,
                ca,
            } => TargetConfig {
                name,
                kind: TargetKind::Https(HttpsTarget {
                    url,
                    username,
                    password_file,
                    ca,
                }),
            },
        }
    }
}

impl From<TargetConfig> for TargetRepr {
    fn from(cfg: TargetConfig) -> Self {
        match cfg.kind {
            TargetKind::Sftp(s) => TargetRepr::Sftp {
                name: cfg.name,
                host: s.host,
                port: s.port,
                user: s.user,
                path: s.path,
                host_key: s.host_key,
                identity: s.identity,
            },
            TargetKind::Https(h) => TargetRepr::Https {
                name: cfg.name,
                url: h.url,
                username: h.username,
                password_file: h.password_file,
                ca: h.ca,
            },
        }
    }
}

/// How often and how patiently an upload is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least one is made).
    pub tries: u32,
    /// Wait after the first failed attempt.
    pub first_delay: Duration,
    /// Each further wait is this many times the previous one.
    pub factor: u32,
    /// Longest one attempt may run before it is stopped (a stalled transfer).
    pub attempt_timeout: Duration,
}

impl Retry {
    /// Four attempts, waiting 5 s, 25 s and about 2 min in between; at most 1 h per
    /// attempt (a large backup over a slow uplink; a stalled connection is detected much
    /// sooner, see `IO_STALL`).
    pub const DEFAULT: Retry = Retry {
        tries: 4,
        first_delay: Duration::from_secs(5),
        factor: 5,
        attempt_timeout: Duration::from_secs(3600),
    };

    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut delay = self.first_delay;
        for _ in 1..attempt {
            delay = delay.saturating_mul(self.factor);
        }
        delay
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry::DEFAULT
    }
}

/// Why a backup could not be put on its target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target's settings are unusable.
    #[error("{key}: {reason}")]
    Config {
        /// The setting.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper program (`sftp`, `ssh-keygen`) could not be run or failed.
    #[error("{program}: {reason}")]
    Tool {
        /// The program.
        program: String,
        /// What went wrong.
        reason: String,
    },
    /// The server could not be reached (refused, timed out, unresolvable, no route).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The system's reason.
        reason: String,
    },
    /// The SSH server presented a host key other than the pinned one.
    #[error("host key mismatch: {addr} did not present the pinned key {pinned}{}; refused (update host_key only if the server's key really changed)", presented.as_ref().map(|p| format!(" but {p}")).unwrap_or_default())]
    HostKeyMismatch {
        /// `host:port`.
        addr: String,
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint the server presented, when known.
        presented: Option<String>,
    },
    /// The server refused our credentials (SSH key, HTTP 401).
    #[error("authentication failed at {addr}: {reason}")]
    AuthFailed {
        /// `host:port`.
        addr: String,
        /// What was refused and how to fix it.
        reason: String,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, expired).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls' reason.
        reason: String,
    },
    /// The HTTPS server answered a request with an error status.
    #[error("{method} {url}: HTTP {status} {reason}")]
    Http {
        /// The request method.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// The SFTP session failed after login (directory missing, permission, disk full).
    #[error("sftp at {addr} failed: {reason}")]
    Remote {
        /// `host:port`.
        addr: String,
        /// The client's message.
        reason: String,
    },
    /// The server broke the protocol or the connection dropped mid-way.
    #[error("{addr}: {reason}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// One attempt ran longer than [`Retry::attempt_timeout`].
    #[error("upload did not finish within {0:?}")]
    Timeout(Duration),
}

impl TargetError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            TargetError::Unreachable { .. }
            | TargetError::Remote { .. }
            | TargetError::Protocol { .. }
            | TargetError::Timeout(_) => true,
            TargetError::Http { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            TargetError::Config { .. }
            | TargetError::Io { .. }
            | TargetError::Tool { .. }
            | TargetError::HostKeyMismatch { .. }
            | TargetError::AuthFailed { .. }
            | TargetError::Tls { .. } => false,
        }
    }
}

/// Checks a target's settings without touching the network or files; the error is
/// (key relative to the target, reason), e.g. `("host_key", "…")`.
pub fn check(target: &TargetConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
    if target.name.is_empty()
        || target.name.len() > MAX_TARGET_NAME
        || !target
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return bad(
            "name",
            format!("must be 1 to {MAX_TARGET_NAME} letters, digits, `_`, `-` or `.`"),
        );
    }
    match &target.kind {
        TargetKind::Sftp(s) => {
            if !valid_host(&s.host) {
                return bad(
                    "host",
                    "must be a host name or IP address (letters, digits, `.`, `-`, `_`, `:`)"
                        .to_owned(),
                );
            }
            if s.port == 0 {
                return bad("port", "must be 1 to 65535".to_owned());
            }
            if !valid_user(&s.user) {
                return bad(
                    "user",
                    "must be an account name: letters, digits, `_`, `-`, `.`, at most 32"
                        .to_owned(),
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
        }
        TargetKind::Https(h) => {
            if let Err(reason) = HttpsUrl::parse(&h.url) {
                return bad("url", reason);
            }
            if h.username.is_empty()
                || h.username.len() > 256
                || h.username.contains(':')
                || h.username.chars().any(char::is_control)
            {
                return bad(
                    "username",
                    "must be 1 to 256 characters without `:` or control characters".to_owned(),
                );
            }
            if h.password_file.as_os_str().is_empty() {
                return bad("password_file", "must not be empty".to_owned());
            }
            if h.ca.as_ref().is_some_and(|c| c.as_os_str().is_empty()) {
                return bad("ca", "must not be empty when given".to_owned());
            }
        }
    }
    Ok(())
}

/// Uploads `file` to `target` under its own file name, with [`Retry::DEFAULT`].
pub async fn upload(
    target: &TargetConfig,
    file: &Path,
    data_dir: &Path,
) -> Result<(), TargetError> {
    upload_with(target, file, data_dir, &Retry::DEFAULT).await
}

/// Uploads `file` to `target` under its own file name: to a temporary name first, then
/// renamed. Transient failures are retried as `retry` says; the last error is returned.
pub async fn upload_with(
    target: &TargetConfig,
    file: &Path,
    data_dir: &Path,
    retry: &Retry,
) -> Result<(), TargetError> {
    check(target).map_err(|(key, reason)| TargetError::Config { key, reason })?;
    let name = remote_name(file)?;
    let size = std::fs::metadata(file)
        .map_err(|source| TargetError::Io {
            path: file.to_path_buf(),
            source,
        })?
        .len();
    let plan = match &target.kind {
        TargetKind::Sftp(s) => {
            let identity = identity_path(s, data_dir);
            check_identity_path(&identity).map_err(|reason| TargetError::Config {
                key: "identity".to_owned(),
                reason,
            })?;
            ensure_identity(&identity).await?;
            Plan::Sftp {
                target: s,
                identity,
            }
        }
        TargetKind::Https(h) => {
            let (url, auth, connector) = https_plan(h)?;
            Plan::Https {
                url,
                auth,
                connector,
            }
        }
    };
    let tries = retry.tries.max(1);
    let mut attempt = 1;
    loop {
        let result = tokio::time::timeout(retry.attempt_timeout, async {
            match &plan {
                Plan::Sftp { target, identity } => {
                    sftp_upload(target, identity, file, &name, retry.attempt_timeout).await
                }
                Plan::Https {
                    url,
                    auth,
                    connector,
                } => https_upload(url, auth, connector, file, size, &name).await,
            }
        })
        .await
        .unwrap_or(Err(TargetError::Timeout(retry.attempt_timeout)));
        let err = match result {
            Ok(()) => {
                tracing::info!(backup_target = %target.name, file = %name, bytes = size, attempt, "backup uploaded");
                return Ok(());
            }
            Err(err) => err,
        };
        if attempt >= tries || !err.is_transient() {
            tracing::warn!(backup_target = %target.name, file = %name, attempt, error = %err, "backup upload failed");
            return Err(err);
        }
        let delay = retry.delay(attempt);
        tracing::warn!(
            backup_target = %target.name,
            file = %name,
            attempt,
            tries,
            error = %err,
            "backup upload failed; retrying in {delay:?}"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
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

/// One backup on an off-site target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// File name (an Outpost backup name).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was made (ms since the epoch, from the name).
    pub created_ms: u64,
}

/// Longest a listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a download may take (a large backup over a slow line).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

/// The backups on `target`, newest first (at most [`MAX_REMOTE_FILES`]): names that are
/// Outpost backup names (no `.partial`), with their sizes.
pub async fn list_remote(
    target: &TargetConfig,
    data_dir: &Path,
) -> Result<Vec<RemoteFile>, TargetError> {
    check(target).map_err(|(key, reason)| TargetError::Config { key, reason })?;
    let mut files = match &target.kind {
        TargetKind::Sftp(s) => {
            let identity = ready_identity(s, data_dir).await?;
            let batch = format!("cd \"{}\"\nls -ln\n", s.path);
            let (out, _) =
                run_sftp(s, &identity, &batch, LIST_TIMEOUT, HostKeyCheck::Pinned).await?;
            parse_sftp_listing(&out)
        }
        TargetKind::Https(h) => {
            let (url, auth, connector) = https_plan(h)?;
            let http = Http {
                url: &url,
                auth: &auth,
                connector: &connector,
            };
            let body = tokio::time::timeout(
                LIST_TIMEOUT,
                http.fetch_body(
                    "PROPFIND",
                    &url.path,
                    &[("Depth", "1"), ("Content-Type", "application/xml")],
                    MAX_LISTING,
                    &[207],
                ),
            )
            .await
            .map_err(|_| TargetError::Timeout(LIST_TIMEOUT))??;
            parse_propfind(&String::from_utf8_lossy(&body))
        }
    };
    files.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.name.cmp(&a.name)));
    files.truncate(MAX_REMOTE_FILES);
    Ok(files)
}

/// Downloads backup `name` from `target` into `dest` (which must not exist); at most
/// `max` bytes. Returns the size.
pub async fn fetch(
    target: &TargetConfig,
    data_dir: &Path,
    name: &str,
    dest: &Path,
    max: u64,
) -> Result<u64, TargetError> {
    check(target).map_err(|(key, reason)| TargetError::Config { key, reason })?;
    if super::parse_name(name).is_none() {
        return Err(TargetError::Config {
            key: "name".to_owned(),
            reason: format!("{name:?} is not the name of an Outpost backup"),
        });
    }
    match &target.kind {
        TargetKind::Sftp(s) => {
            let identity = ready_identity(s, data_dir).await?;
            sftp_get(s, &identity, name, dest, max).await
        }
        TargetKind::Https(h) => {
            let (url, auth, connector) = https_plan(h)?;
            let http = Http {
                url: &url,
                auth: &auth,
                connector: &connector,
            };
            let path = format!("{}{name}", url.path);
            tokio::time::timeout(FETCH_TIMEOUT, http.download(&path, dest, max))
                .await
                .map_err(|_| TargetError::Timeout(FETCH_TIMEOUT))?
        }
    }
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

/// A backup file named by a URL (the console's restore of a box with no target yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileUrl {
    /// `sftp://user@host[:port]/dir/file` (`host_key` still empty: to be confirmed).
    Sftp {
        /// The server, its user and the file's directory.
        target: SftpTarget,
        /// The file's name.
        file: String,
    },
    /// `https://host[:port]/dir/file`, fetched with a plain `GET` (no credentials).
    Https {
        /// The whole URL.
        url: String,
    },
}

/// Parses `sftp://user@host[:port]/path/file` or `https://host[:port]/path/file`; returns
/// it with the file's name.
pub fn parse_file_url(url: &str) -> Result<(FileUrl, String), String> {
    if url.len() > MAX_REMOTE_PATH {
        return Err(format!(
            "the location must be at most {MAX_REMOTE_PATH} bytes"
        ));
    }
    if let Some(rest) = url.strip_prefix("sftp://") {
        let (user, rest) = rest
            .split_once('@')
            .ok_or("give the user: sftp://user@host/path/file")?;
        let (authority, path) = rest
            .find('/')
            .map(|i| rest.split_at(i))
            .ok_or("give the file's path: sftp://user@host/path/file")?;
        let (host, port) = crate::http::split_authority(authority)?;
        let port = match port {
            None => SSH_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port must be 1 to 65535")?,
        };
        if !valid_user(user) || !(valid_host(host) || host.parse::<IpAddr>().is_ok()) {
            return Err("not a valid user@host".to_owned());
        }
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = if dir.is_empty() { "/" } else { dir };
        if file.is_empty()
            || !super::archive::is_safe_file_name(file)
            || !safe_in_batch(dir)
            || file.len() > MAX_FILE_NAME
        {
            return Err(
                "the path must end in a plain file name (letters, digits, . _ -)".to_owned(),
            );
        }
        let target = SftpTarget {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            path: dir.to_owned(),
            host_key: String::new(),
            identity: None,
        };
        return Ok((
            FileUrl::Sftp {
                target,
                file: file.to_owned(),
            },
            file.to_owned(),
        ));
    }
    if url.len() > 8 && url[..8].eq_ignore_ascii_case("https://") {
        let (dir, file) = url.rsplit_once('/').unwrap_or((url, ""));
        let parsed = HttpsUrl::parse(&format!("{dir}/"))?;
        let _ = parsed;
        if file.is_empty() || !super::archive::is_safe_file_name(file) {
            return Err(
                "the URL must end in a plain file name (letters, digits, . _ -)".to_owned(),
            );
        }
        return Ok((
            FileUrl::Https {
                url: url.to_owned(),
            },
            file.to_owned(),
        ));
    }
    Err("give sftp://user@host[:port]/path/file or https://host/path/file".to_owned())
}

/// `GET` of an https URL (no credentials, the system's roots) into `dest`.
pub async fn fetch_https_url(url: &str, dest: &Path, max: u64) -> Result<u64, TargetError> {
    let bad = |reason: String| TargetError::Config {
        key: "url".to_owned(),
        reason,
    };
    let (dir, file) = url
        .rsplit_once('/')
        .ok_or_else(|| bad("no file name".into()))?;
    let parsed = HttpsUrl::parse(&format!("{dir}/")).map_err(bad)?;
    let tls = crate::driver::tls::client_config(None).map_err(|e| TargetError::Config {
        key: "ca".to_owned(),
        reason: e.to_string(),
    })?;
    let connector = TlsConnector::from(Arc::new(tls));
    let http = Http {
        url: &parsed,
        auth: "",
        connector: &connector,
    };
    let path = format!("{}{file}", parsed.path);
    tokio::time::timeout(FETCH_TIMEOUT, http.download(&path, dest, max))
        .await
        .map_err(|_| TargetError::Timeout(FETCH_TIMEOUT))?
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
    if !super::archive::is_safe_file_name(name) || !safe_in_batch(name) {
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
            let created_ms = super::parse_name(&name)?;
            Some(RemoteFile {
                name,
                size,
                created_ms,
            })
        })
        .collect()
}

/// The backups of a WebDAV `207 Multi-Status` answer: each `response`'s `href` (its last
/// path segment) and `getcontentlength`, whatever the namespace prefix.
fn parse_propfind(xml: &str) -> Vec<RemoteFile> {
    let mut files = Vec::new();
    for block in split_elements(xml, "response") {
        let Some(href) = element_text(block, "href") else {
            continue;
        };
        let name = href
            .trim()
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("");
        let name = percent_decode(name);
        let Some(created_ms) = super::parse_name(&name) else {
            continue;
        };
        let size = element_text(block, "getcontentlength")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        files.push(RemoteFile {
            name,
            size,
            created_ms,
        });
        if files.len() >= MAX_REMOTE_FILES * 4 {
            break;
        }
    }
    files
}

/// The contents of each `<prefix:local ...>...</prefix:local>` element (any prefix).
fn split_elements<'a>(xml: &'a str, local: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some((start, after_open)) = find_open(rest, local) {
        let body = &rest[after_open..];
        let Some(end) = find_close(body, local) else {
            break;
        };
        out.push(&body[..end]);
        rest = &body[end..];
        let _ = start;
    }
    out
}

/// The text of the first `local` element in `xml`.
fn element_text<'a>(xml: &'a str, local: &str) -> Option<&'a str> {
    let (_, after_open) = find_open(xml, local)?;
    let body = &xml[after_open..];
    let end = find_close(body, local)?;
    Some(&body[..end])
}

/// Where an opening tag of `local` (any prefix) starts and where its content starts.
fn find_open(xml: &str, local: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<') {
        let start = from + i;
        let tag_end = start + xml[start..].find('>')?;
        let tag = &xml[start + 1..tag_end];
        let name = tag.split_whitespace().next().unwrap_or("");
        let bare = name.rsplit(':').next().unwrap_or("");
        if !name.starts_with('/') && bare.eq_ignore_ascii_case(local) && !tag.ends_with('/') {
            return Some((start, tag_end + 1));
        }
        from = tag_end + 1;
    }
    None
}

/// Where the closing tag of `local` (any prefix) starts.
fn find_close(xml: &str, local: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = xml[from..].find("</") {
        let start = from + i;
        let tag_end = start + xml[start..].find('>')?;
        let name = xml[start + 2..tag_end].trim();
        if name
            .rsplit(':')
            .next()
            .unwrap_or("")
            .eq_ignore_ascii_case(local)
        {
            return Some(start);
        }
        from = tag_end + 1;
    }
    None
}

/// `%XX` escapes of a URL path segment decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL, Basic credentials and TLS connector of an HTTPS target.
fn https_plan(h: &HttpsTarget) -> Result<(HttpsUrl, String, TlsConnector), TargetError> {
    let url = HttpsUrl::parse(&h.url).map_err(|reason| TargetError::Config {
        key: "url".to_owned(),
        reason,
    })?;
    let password = read_password(&h.password_file)?;
    let tls =
        crate::driver::tls::client_config(h.ca.as_deref()).map_err(|e| TargetError::Config {
            key: "ca".to_owned(),
            reason: e.to_string(),
        })?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", h.username));
    Ok((url, auth, TlsConnector::from(Arc::new(tls))))
}

/// What an attempt needs, prepared once before the first.
enum Plan<'a> {
    Sftp {
        target: &'a SftpTarget,
        identity: PathBuf,
    },
    Https {
        url: HttpsUrl,
        auth: String,
        connector: TlsConnector,
    },
}

// ---------------------------------------------------------------------------------------
// SFTP

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
            .map(|w| sanitize(w.trim_end_matches('.'), 80))
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
            Some(cmd) => format!("`{}`: {reason}", sanitize(cmd, MAX_REASON)),
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

// ---------------------------------------------------------------------------------------
// HTTPS

/// A checked `https://host[:port]/dir/` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpsUrl {
    /// Host name or IP address (IPv6 without brackets).
    host: String,
    port: u16,
    /// The directory, starting and ending with `/`.
    path: String,
}

impl HttpsUrl {
    fn parse(url: &str) -> Result<HttpsUrl, String> {
        if url.len() > MAX_REMOTE_PATH {
            return Err(format!("must be at most {MAX_REMOTE_PATH} bytes"));
        }
        let rest = url
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("https://"))
            .map(|_| &url[8..])
            .ok_or("must start with https:// (plain http would send the password in clear)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("must not hold credentials: use username and password_file".to_owned());
        }
        let (host, port) = crate::http::split_authority(authority)?;
        if !host.contains(':') && !valid_host(host) {
            return Err("the host must be a host name or IP address".to_owned());
        }
        let port = match port {
            None => HTTPS_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port must be 1 to 65535")?,
        };
        if path.contains(['?', '#']) {
            return Err("must not have a query or fragment".to_owned());
        }
        if !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:@".contains(c))
        {
            return Err(
                "the path must be URL-encoded (no spaces, quotes or control characters)".to_owned(),
            );
        }
        let mut path = path.to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(HttpsUrl {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host[:port]` as the `Host` header and URLs carry it.
    fn authority(&self) -> String {
        crate::http::authority(&self.host, self.port, HTTPS_PORT)
    }

    fn server_name(&self) -> Result<ServerName<'static>, TargetError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(ServerName::IpAddress(ip.into()));
        }
        ServerName::try_from(self.host.clone()).map_err(|_| TargetError::Config {
            key: "url".to_owned(),
            reason: format!("`{}` is not a valid TLS server name", self.host),
        })
    }
}

/// The status line of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    code: u16,
    reason: String,
    /// `Content-Length`, when given.
    length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    chunked: bool,
}

/// PUT to the partial name, MOVE into place (or plain PUT when MOVE is refused).
async fn https_upload(
    url: &HttpsUrl,
    auth: &str,
    connector: &TlsConnector,
    file: &Path,
    size: u64,
    name: &str,
) -> Result<(), TargetError> {
    let partial_path = format!("{}{name}{PARTIAL_SUFFIX}", url.path);
    let final_path = format!("{}{name}", url.path);
    let http = Http {
        url,
        auth,
        connector,
    };
    http.expect_ok(
        "PUT",
        &partial_path,
        &[],
        Some((file, size)),
        &[200, 201, 204],
    )
    .await?;
    let destination = format!("https://{}{final_path}", url.authority());
    let moved = http
        .request(
            "MOVE",
            &partial_path,
            &[("Destination", &destination), ("Overwrite", "T")],
            None,
        )
        .await?;
    match moved.code {
        200 | 201 | 204 => Ok(()),
        405 | 501 => {
            tracing::info!(
                server = %url.authority(),
                "the backup server refuses MOVE (not WebDAV); uploading under the final name"
            );
            http.expect_ok(
                "PUT",
                &final_path,
                &[],
                Some((file, size)),
                &[200, 201, 204],
            )
            .await?;
            // The partial is only clutter now; a server without DELETE keeps it.
            let _ = http.request("DELETE", &partial_path, &[], None).await;
            Ok(())
        }
        _ => Err(http.status_error("MOVE", &partial_path, moved)),
    }
}

/// One server's requests: a fresh TLS connection each (`Connection: close`).
struct Http<'a> {
    url: &'a HttpsUrl,
    auth: &'a str,
    connector: &'a TlsConnector,
}

impl Http<'_> {
    /// A request whose status must be one of `ok`.
    async fn expect_ok(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&Path, u64)>,
        ok: &[u16],
    ) -> Result<(), TargetError> {
        let status = self.request(method, path, headers, body).await?;
        if ok.contains(&status.code) {
            Ok(())
        } else {
            Err(self.status_error(method, path, status))
        }
    }

    fn status_error(&self, method: &'static str, path: &str, status: Status) -> TargetError {
        let url = format!("https://{}{path}", self.url.authority());
        if status.code == 401 {
            return TargetError::AuthFailed {
                addr: self.url.authority(),
                reason: format!(
                    "{method} {url}: HTTP 401 {}: the username or password was refused",
                    status.reason
                ),
            };
        }
        TargetError::Http {
            method,
            url,
            status: status.code,
            reason: status.reason,
        }
    }

    /// Sends one request (with the file as its body) and reads the final status.
    async fn request(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&Path, u64)>,
    ) -> Result<Status, TargetError> {
        self.exchange(method, path, headers, body)
            .await
            .map(|(status, _, _)| status)
    }

    /// A request whose answer's body is wanted (`ok` statuses only), at most `max` bytes.
    async fn fetch_body(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        max: usize,
        ok: &[u16],
    ) -> Result<Vec<u8>, TargetError> {
        let mut out = Vec::new();
        self.read_body(method, path, headers, ok, max as u64, &mut out)
            .await?;
        Ok(out)
    }

    /// `GET path` into the new file `dest` (mode 0600), at most `max` bytes; its size.
    async fn download(&self, path: &str, dest: &Path, max: u64) -> Result<u64, TargetError> {
        let local = |source| TargetError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(local)?;
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
        let n = self
            .read_body("GET", path, &[], &[200], max, &mut out)
            .await?;
        let file = out.into_inner().map_err(|e| local(e.into_error()))?;
        file.sync_all().map_err(local)?;
        Ok(n)
    }

    /// Sends a request without body and copies the answer's body to `out` (plain,
    /// `Content-Length` or chunked; at most `max` bytes).
    async fn read_body(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        ok: &[u16],
        max: u64,
        out: &mut impl std::io::Write,
    ) -> Result<u64, TargetError> {
        let (status, mut tls, mut buf) = self.exchange(method, path, headers, None).await?;
        if !ok.contains(&status.code) {
            return Err(self.status_error(method, path, status));
        }
        let addr = self.url.authority();
        let too_big = || TargetError::Remote {
            addr: addr.clone(),
            reason: format!("{path}: the answer is larger than {max} bytes"),
        };
        if status.length.is_some_and(|n| n > max) {
            return Err(too_big());
        }
        let mut body = BodyReader {
            io: &mut tls,
            buf: &mut buf,
            addr: &addr,
        };
        let mut total = 0u64;
        let mut sink = |data: &[u8]| -> Result<(), TargetError> {
            total += data.len() as u64;
            if total > max {
                return Err(too_big());
            }
            out.write_all(data).map_err(|source| TargetError::Io {
                path: PathBuf::from(path),
                source,
            })
        };
        if status.chunked {
            loop {
                let line = body.line().await?;
                let size_text = line.split(';').next().unwrap_or("").trim();
                let size =
                    u64::from_str_radix(size_text, 16).map_err(|_| TargetError::Protocol {
                        addr: addr.clone(),
                        reason: format!("bad chunk size {:?}", sanitize(size_text, 20)),
                    })?;
                if size == 0 {
                    break;
                }
                body.copy(size, &mut sink).await?;
                body.line().await?;
            }
        } else if let Some(len) = status.length {
            body.copy(len, &mut sink).await?;
        } else {
            body.copy_to_end(&mut sink).await?;
        }
        Ok(total)
    }

    /// Sends one request and reads the final status; returns the connection and the bytes
    /// read after the head.
    async fn exchange(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&Path, u64)>,
    ) -> Result<(Status, tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), TargetError> {
        let addr = self.url.authority();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.url.host.as_str(), self.url.port)),
        )
        .await
        .map_err(|_| TargetError::Unreachable {
            addr: addr.clone(),
            reason: "connection timed out".to_owned(),
        })?
        .map_err(|e| TargetError::Unreachable {
            addr: addr.clone(),
            reason: io_reason(&e),
        })?;
        let mut tls = self
            .connector
            .connect(self.url.server_name()?, tcp)
            .await
            .map_err(|e| {
                let reason = crate::driver::tls::handshake_failure(&e);
                if e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some()
                {
                    TargetError::Tls {
                        addr: addr.clone(),
                        reason,
                    }
                } else {
                    TargetError::Protocol {
                        addr: addr.clone(),
                        reason,
                    }
                }
            })?;
        let len = body.map_or(0, |(_, n)| n);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\
             User-Agent: outpost-backup\r\nConnection: close\r\nContent-Length: {len}\r\n"
        );
        if !self.auth.is_empty() {
            head.push_str(&format!("Authorization: Basic {}\r\n", self.auth));
        }
        if body.is_some() {
            head.push_str("Content-Type: application/octet-stream\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if len > 0 {
            head.push_str("Expect: 100-continue\r\n");
        }
        head.push_str("\r\n");
        let lost = |e: io::Error| TargetError::Protocol {
            addr: addr.clone(),
            reason: format!("connection lost: {}", io_reason(&e)),
        };
        tls.write_all(head.as_bytes()).await.map_err(lost)?;
        tls.flush().await.map_err(lost)?;
        let mut buf = Vec::new();
        if let Some((file, len)) = body.filter(|(_, n)| *n > 0) {
            // Wait briefly for "100 Continue" or an early refusal (401) before the body.
            match tokio::time::timeout(EXPECT_WAIT, read_head(&mut tls, &mut buf, &addr)).await {
                Ok(Ok(status)) if status.code == 100 => {}
                Ok(Ok(status)) if status.code >= 200 => return Ok((status, tls, buf)),
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(e),
            }
            if let Err(e) = send_file(&mut tls, file, len, &addr).await {
                // The server may have refused mid-body: its answer says more than EPIPE.
                if let TargetError::Protocol { .. } = e {
                    if let Ok(Ok(status)) =
                        tokio::time::timeout(EXPECT_WAIT, read_final(&mut tls, &mut buf, &addr))
                            .await
                    {
                        return Ok((status, tls, buf));
                    }
                }
                return Err(e);
            }
        }
        let status = read_final(&mut tls, &mut buf, &addr).await?;
        Ok((status, tls, buf))
    }
}

/// Reads a response body: the bytes left after the head first, then the connection.
struct BodyReader<'a, R> {
    io: &'a mut R,
    buf: &'a mut Vec<u8>,
    addr: &'a str,
}

/// `io`, failed with `TimedOut` ("`what` 30s") when it makes no progress for [`IO_STALL`].
async fn within_stall<T>(
    io: impl std::future::Future<Output = io::Result<T>>,
    what: &str,
) -> io::Result<T> {
    tokio::time::timeout(IO_STALL, io)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} {IO_STALL:?}"),
            ))
        })
}

impl<R: AsyncRead + Unpin> BodyReader<'_, R> {
    /// More bytes into `buf`; false at the end of the connection.
    async fn fill(&mut self) -> Result<bool, TargetError> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = within_stall(self.io.read(&mut chunk), "stalled for")
            .await
            .map_err(|e| TargetError::Protocol {
                addr: self.addr.to_owned(),
                reason: format!("connection lost while receiving: {}", io_reason(&e)),
            })?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// One CRLF-terminated line (a chunk header), at most 1 KiB.
    async fn line(&mut self) -> Result<String, TargetError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 1024 || !self.fill().await? {
                return Err(self.cut());
            }
        }
    }

    /// Exactly `len` bytes to `sink`.
    async fn copy(
        &mut self,
        mut len: u64,
        sink: &mut impl FnMut(&[u8]) -> Result<(), TargetError>,
    ) -> Result<(), TargetError> {
        while len > 0 {
            if self.buf.is_empty() && !self.fill().await? {
                return Err(self.cut());
            }
            let take = usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            sink(&self.buf[..take])?;
            self.buf.drain(..take);
            len -= take as u64;
        }
        Ok(())
    }

    /// Everything until the server closes the connection.
    async fn copy_to_end(
        &mut self,
        sink: &mut impl FnMut(&[u8]) -> Result<(), TargetError>,
    ) -> Result<(), TargetError> {
        loop {
            if !self.buf.is_empty() {
                sink(self.buf)?;
                self.buf.clear();
            }
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    fn cut(&self) -> TargetError {
        TargetError::Protocol {
            addr: self.addr.to_owned(),
            reason: "the answer ended early".to_owned(),
        }
    }
}

/// Streams exactly `len` bytes of `file` to `out`.
async fn send_file<W: AsyncWrite + Unpin>(
    out: &mut W,
    file: &Path,
    len: u64,
    addr: &str,
) -> Result<(), TargetError> {
    let local = |source| TargetError::Io {
        path: file.to_path_buf(),
        source,
    };
    let f = tokio::fs::File::open(file).await.map_err(local)?;
    let mut body = f.take(len);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let n = body.read(&mut chunk).await.map_err(local)?;
        if n == 0 {
            break;
        }
        within_stall(out.write_all(&chunk[..n]), "stalled for")
            .await
            .map_err(|e| TargetError::Protocol {
                addr: addr.to_owned(),
                reason: format!("connection lost while sending: {}", io_reason(&e)),
            })?;
        sent += n as u64;
    }
    if sent != len {
        return Err(TargetError::Io {
            path: file.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file shrank from {len} to {sent} bytes while it was sent"),
            ),
        });
    }
    out.flush().await.map_err(|e| TargetError::Protocol {
        addr: addr.to_owned(),
        reason: format!("connection lost while sending: {}", io_reason(&e)),
    })
}

/// Reads response heads until a final (non-1xx) one.
async fn read_final<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
    addr: &str,
) -> Result<Status, TargetError> {
    for _ in 0..MAX_INTERIM {
        let status = read_head(input, buf, addr).await?;
        if status.code >= 200 {
            return Ok(status);
        }
    }
    Err(TargetError::Protocol {
        addr: addr.to_owned(),
        reason: "too many interim (1xx) responses".to_owned(),
    })
}

/// Reads one response head into `buf` (bytes after it stay there) and parses its status
/// line. Cancel-safe: bytes are appended only after a read completes.
async fn read_head<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
    addr: &str,
) -> Result<Status, TargetError> {
    let protocol = |reason: String| TargetError::Protocol {
        addr: addr.to_owned(),
        reason,
    };
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(protocol(format!(
                "response head longer than {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let mut chunk = [0u8; 4096];
        let n = within_stall(input.read(&mut chunk), "no answer for")
            .await
            .map_err(|e| {
                protocol(format!(
                    "connection lost before the response: {}",
                    io_reason(&e)
                ))
            })?;
        if n == 0 {
            return Err(protocol(
                "the server closed the connection without a response".to_owned(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let line = head.lines().next().unwrap_or_default();
    match crate::http::status_line(line) {
        Some((code, reason)) => {
            let mut length = None;
            let mut chunked = false;
            for h in head.lines().skip(1) {
                let Some((name, value)) = h.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.parse().ok();
                } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                }
            }
            Ok(Status {
                code,
                reason: sanitize(reason, 100),
                length,
                chunked,
            })
        }
        None => Err(protocol(format!(
            "not an HTTP/1.1 response: {:?}",
            sanitize(line, 80)
        ))),
    }
}

/// The password: the file's first line, refused when others may read the file.
fn read_password(path: &Path) -> Result<String, TargetError> {
    let bad = |reason: String| TargetError::Config {
        key: "password_file".to_owned(),
        reason: format!("{}: {reason}", path.display()),
    };
    let io_err = |source| TargetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets other users read the password; chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    if meta.len() > MAX_PASSWORD_FILE {
        return Err(bad(format!("longer than {MAX_PASSWORD_FILE} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(io_err)?;
    let password = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    if password.is_empty() {
        return Err(bad("holds no password".to_owned()));
    }
    if password.chars().any(char::is_control) {
        return Err(bad("the password holds control characters".to_owned()));
    }
    Ok(password.to_owned())
}

// ---------------------------------------------------------------------------------------
// Shared helpers

/// The name `file` gets on the target: its own file name, restricted to characters that
/// need no quoting in an sftp batch or a URL.
fn remote_name(file: &Path) -> Result<String, TargetError> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && n.len() <= MAX_FILE_NAME
                && !n.starts_with(['.', '-'])
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | ':'))
        })
        .ok_or_else(|| TargetError::Config {
            key: "file".to_owned(),
            reason: format!(
                "{}: a backup file name must be 1 to {MAX_FILE_NAME} letters, digits, `_-.+:`, \
                 not starting with `.` or `-`",
                file.display()
            ),
        })?;
    Ok(name.to_owned())
}

/// A host name or IP address that ssh takes as `HostName` (no `%` tokens, no options).
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A string that can sit between double quotes in an sftp batch command.
fn safe_in_batch(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || matches!(c, '"' | '\\' | '*' | '?' | '[' | ']'))
}

/// A key path ssh takes literally (`%` and a leading `~` would be expanded).
fn check_identity_path(path: &Path) -> Result<(), String> {
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
    sanitize(&lines.join("; "), MAX_REASON)
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::TimedOut => "connection timed out".to_owned(),
        _ => e.to_string(),
    }
}

/// Control characters replaced with `?`, cut to `max` characters.
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn sftp() -> TargetConfig {
        TargetConfig {
            name: "offsite".to_owned(),
            kind: TargetKind::Sftp(SftpTarget {
                host: "backup.example.net".to_owned(),
                port: 22,
                user: "outpost".to_owned(),
                path: "/srv/backup/branch-1".to_owned(),
                host_key: HOST_KEY.to_owned(),
                identity: None,
            }),
        }
    }

    fn https() -> TargetConfig {
        TargetConfig {
            name: "dav".to_owned(),
            kind: TargetKind::Https(HttpsTarget {
                url: "https://dav.example.net/remote.php/dav/files/outpost/backups/".to_owned(),
                username: "outpost".to_owned(),
                password_file: PathBuf::from("/data/backup/dav.password"),
                ca: None,
            }),
        }
    }

    fn with_sftp(f: impl FnOnce(&mut SftpTarget)) -> TargetConfig {
        let mut t = sftp();
        if let TargetKind::Sftp(s) = &mut t.kind {
            f(s);
        }
        t
    }

    fn with_https(f: impl FnOnce(&mut HttpsTarget)) -> TargetConfig {
        let mut t = https();
        if let TargetKind::Https(h) = &mut t.kind {
            f(h);
        }
        t
    }

    fn bad_key(t: &TargetConfig) -> String {
        check(t).expect_err("must be refused").0
    }

    #[test]
    fn toml_targets_parse_with_defaults_and_round_trip() {
        #[derive(Deserialize, Serialize)]
        struct Doc {
            targets: Vec<TargetConfig>,
        }
        let text = format!(
            "[[targets]]\nname = \"offsite\"\nkind = \"sftp\"\nhost = \"backup.example.net\"\n\
             user = \"outpost\"\npath = \"/srv/backup/branch-1\"\nhost_key = \"{HOST_KEY}\"\n\n\
             [[targets]]\nname = \"dav\"\nkind = \"https\"\n\
             url = \"https://dav.example.net/remote.php/dav/files/outpost/backups/\"\n\
             username = \"outpost\"\npassword_file = \"/data/backup/dav.password\"\n"
        );
        let doc: Doc = toml::from_str(&text).expect("parses");
        assert_eq!(doc.targets, vec![sftp(), https()]);
        let again: Doc =
            toml::from_str(&toml::to_string(&doc).expect("serialises")).expect("re-parses");
        assert_eq!(again.targets, doc.targets);
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let typo = format!(
            "name = \"x\"\nkind = \"sftp\"\nhost = \"h\"\nuser = \"u\"\npath = \"/p\"\n\
             host_key = \"{HOST_KEY}\"\nhostkey = \"oops\"\n"
        );
        let err = toml::from_str::<TargetConfig>(&typo).expect_err("unknown key");
        assert!(err.to_string().contains("hostkey"), "{err}");
        let https_key_on_sftp = format!(
            "name = \"x\"\nkind = \"sftp\"\nhost = \"h\"\nuser = \"u\"\npath = \"/p\"\n\
             host_key = \"{HOST_KEY}\"\nurl = \"https://h/\"\n"
        );
        assert!(toml::from_str::<TargetConfig>(&https_key_on_sftp).is_err());
        let kind = "name = \"x\"\nkind = \"ftp\"\n";
        assert!(toml::from_str::<TargetConfig>(kind).is_err());
    }

    #[test]
    fn good_targets_pass_the_check() {
        assert_eq!(check(&sftp()), Ok(()));
        assert_eq!(check(&https()), Ok(()));
        let v6 = with_https(|h| h.url = "https://[2001:db8::7]:8443/dav".to_owned());
        assert_eq!(check(&v6), Ok(()));
    }

    #[test]
    fn sftp_settings_that_could_inject_or_cannot_work_are_refused() {
        assert_eq!(
            bad_key(&TargetConfig {
                name: "a b".to_owned(),
                ..sftp()
            }),
            "name"
        );
        assert_eq!(
            bad_key(&with_sftp(|s| s.host = "-oProxyCommand=x".to_owned())),
            "host"
        );
        assert_eq!(bad_key(&with_sftp(|s| s.host = "h%d".to_owned())), "host");
        assert_eq!(bad_key(&with_sftp(|s| s.port = 0)), "port");
        assert_eq!(
            bad_key(&with_sftp(|s| s.user = "root@x".to_owned())),
            "user"
        );
        assert_eq!(bad_key(&with_sftp(|s| s.path = String::new())), "path");
        // A newline or quote would add sftp commands to the batch.
        assert_eq!(
            bad_key(&with_sftp(|s| s.path = "/a\"\nrm x".to_owned())),
            "path"
        );
        assert_eq!(
            bad_key(&with_sftp(|s| s.path = "/a\nrm x".to_owned())),
            "path"
        );
        assert_eq!(
            bad_key(&with_sftp(|s| s.host_key = "AAAA".to_owned())),
            "host_key"
        );
        assert_eq!(
            bad_key(&with_sftp(
                |s| s.host_key = "ssh-dss AAAAB3NzaC1kc3M=".to_owned()
            )),
            "host_key"
        );
        assert_eq!(
            bad_key(&with_sftp(
                |s| s.identity = Some(PathBuf::from("/data/%u/key"))
            )),
            "identity"
        );
    }

    #[test]
    fn https_settings_that_leak_or_cannot_work_are_refused() {
        for url in [
            "http://dav.example.net/backups/",
            "https://user:pw@dav.example.net/backups/",
            "https://dav.example.net:0/",
            "https://dav.example.net/a b/",
            "https://dav.example.net/a\r\nX: y/",
            "https://dav.example.net/?x=1",
            "https://[::1/",
            "https:///x/",
        ] {
            assert_eq!(
                bad_key(&with_https(|h| h.url = url.to_owned())),
                "url",
                "{url:?}"
            );
        }
        assert_eq!(
            bad_key(&with_https(|h| h.username = "a:b".to_owned())),
            "username"
        );
        assert_eq!(
            bad_key(&with_https(|h| h.username = String::new())),
            "username"
        );
        assert_eq!(
            bad_key(&with_https(|h| h.password_file = PathBuf::new())),
            "password_file"
        );
    }

    #[test]
    fn urls_keep_the_directory_and_the_port() {
        let u = HttpsUrl::parse("HTTPS://dav.example.net:8443/backups").expect("valid");
        assert_eq!(
            u,
            HttpsUrl {
                host: "dav.example.net".to_owned(),
                port: 8443,
                path: "/backups/".to_owned()
            }
        );
        assert_eq!(u.authority(), "dav.example.net:8443");
        let u = HttpsUrl::parse("https://[2001:db8::7]").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("2001:db8::7", 443, "/")
        );
        assert_eq!(u.authority(), "[2001:db8::7]");
        assert!(matches!(u.server_name(), Ok(ServerName::IpAddress(_))));
    }

    #[test]
    fn retry_delays_grow_by_the_factor() {
        let r = Retry::DEFAULT;
        assert_eq!(r.delay(1), Duration::from_secs(5));
        assert_eq!(r.delay(2), Duration::from_secs(25));
        assert_eq!(r.delay(3), Duration::from_secs(125));
        let huge = Retry {
            factor: u32::MAX,
            ..r
        };
        assert!(huge.delay(40) >= huge.delay(39));
    }

    #[test]
    fn only_safe_backup_file_names_are_sent() {
        assert_eq!(
            remote_name(Path::new("/data/backup/outpost-20250102T030000Z.tar.age")).ok(),
            Some("outpost-20250102T030000Z.tar.age".to_owned())
        );
        for bad in ["/x/.hidden", "/x/a b", "/x/a\"b", "/x/-rf", "/x/a*"] {
            assert!(remote_name(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn sftp_failures_are_told_apart() {
        let target = match sftp().kind {
            TargetKind::Sftp(s) => s,
            TargetKind::Https(_) => unreachable!(),
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
    fn the_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_password(&path).expect_err("world-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_password(&path).expect("private"), "s3cret");
    }

    #[test]
    fn response_heads_are_parsed_and_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut input: &[u8] =
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX: y\r\n\r\nbody";
            let mut buf = Vec::new();
            let status = read_final(&mut input, &mut buf, "h").await.expect("final");
            assert_eq!(
                status,
                Status {
                    code: 201,
                    reason: "Created".to_owned(),
                    length: None,
                    chunked: false,
                }
            );
            assert_eq!(buf, b"body");
            let endless = vec![b'a'; MAX_RESPONSE_HEAD * 2];
            let mut input: &[u8] = &endless;
            let err = read_head(&mut input, &mut Vec::new(), "h")
                .await
                .expect_err("too long");
            assert!(matches!(err, TargetError::Protocol { .. }));
            let mut input: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
            assert!(read_head(&mut input, &mut Vec::new(), "h").await.is_err());
        });
    }

    #[test]
    fn remote_listings_parse() {
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
        let xml = r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">
            <D:response><D:href>/outpost/</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype></D:prop></D:propstat></D:response>
            <d:response><d:href>/outpost/outpost-a-20240501T023000Z.backup</d:href><d:propstat><d:prop><d:getcontentlength>42</d:getcontentlength></d:prop></d:propstat></d:response>
            <response><href>https://dav/outpost/outpost%2Db-20240501T023000Z.backup</href><propstat><prop><getcontentlength> 7 </getcontentlength></prop></propstat></response>
            </D:multistatus>"#;
        let files = parse_propfind(xml);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!((files[0].size, files[1].size), (42, 7));
        assert_eq!(files[1].name, "outpost-b-20240501T023000Z.backup");
    }

    #[test]
    fn file_urls_parse_and_refuse_what_a_batch_could_misread() {
        let (url, name) = parse_file_url(
            "sftp://backup@nas.example:2222/srv/b/outpost-a-20240501T023000Z.backup",
        )
        .expect("an sftp URL");
        assert_eq!(name, "outpost-a-20240501T023000Z.backup");
        let FileUrl::Sftp { target, file } = url else {
            panic!("sftp")
        };
        assert_eq!(
            (target.host.as_str(), target.port, target.user.as_str()),
            ("nas.example", 2222, "backup")
        );
        assert_eq!(
            (target.path.as_str(), file.as_str()),
            ("/srv/b", "outpost-a-20240501T023000Z.backup")
        );
        let (url, _) = parse_file_url("https://dav.example/x/outpost-a-20240501T023000Z.backup")
            .expect("an https URL");
        assert!(matches!(url, FileUrl::Https { .. }));
        for bad in [
            "sftp://nas/srv/f.backup",
            "sftp://u@nas",
            "sftp://u@nas/srv/\"x\".backup",
            "sftp://u@nas/srv/",
            "sftp://u@nas:0/f",
            "http://dav/f.backup",
            "ftp://x/y",
        ] {
            assert!(parse_file_url(bad).is_err(), "{bad}");
        }
    }
}
