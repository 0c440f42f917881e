//! What a target answers, whatever its kind: a listed backup ([`RemoteFile`]) or why the
//! transfer failed ([`TargetError`]). A leaf: both kinds of target and the dispatch in
//! `target` use it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backups listed per target at most.
pub const MAX_REMOTE_FILES: usize = 1000;
/// Suffix of the temporary name an upload goes to before the rename.
pub const PARTIAL_SUFFIX: &str = ".partial";

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
    /// The HTTPS server does not list directories (it refused `PROPFIND`).
    #[error("{url} cannot be listed: the server answered PROPFIND with HTTP {status} {reason} (not WebDAV, or listing is off: nginx needs the dav-ext module); `backup fetch NAME` still downloads a backup by its name")]
    NoListing {
        /// The directory URL.
        url: String,
        /// The status code (405 or 501).
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
    /// One attempt ran longer than the retry policy's `attempt_timeout`.
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
            | TargetError::Tls { .. }
            | TargetError::NoListing { .. } => false,
        }
    }
}
