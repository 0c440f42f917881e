//! Off-site backup targets: a finished backup file is copied off the box so that a
//! stolen, burnt or encrypted box can be replaced from it. Two kinds, each its own module:
//! [`sftp`] (the OpenSSH client, pinned host key) and [`https`] (WebDAV through the one
//! HTTP client). This module holds the `[[backup.targets]]` settings, their check, and the
//! operations the backup service calls, dispatched to the kind: upload (with retries),
//! listing, download, and a download by URL for a box that has no target yet.
//!
//! Every upload is retried with exponential back-off ([`Retry`]) while the failure may be
//! transient (target unreachable, timeout, HTTP 5xx, a remote write error); a refused host
//! key, refused credentials or certificate, or a bad configuration fail at once. The error
//! says why in words an admin can act on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod https;
mod remote;
mod sftp;

pub use https::{fetch_https_url, HttpsTarget};
pub use remote::{RemoteFile, TargetError, MAX_REMOTE_FILES};
pub use sftp::{
    default_identity_path, ensure_identity, fetch_sftp_file, identity_path, learn_host_key,
    public_key_path, SftpTarget,
};

use https::{Dav, FETCH_TIMEOUT, LIST_TIMEOUT};
use sftp::{safe_in_batch, valid_host, valid_user, Sftp, SSH_PORT};

/// Longest backup file name.
const MAX_FILE_NAME: usize = 200;
/// Longest target name.
const MAX_TARGET_NAME: usize = 64;
/// Longest file URL.
const MAX_REMOTE_PATH: usize = 1024;

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
        TargetKind::Sftp(s) => sftp::check(s),
        TargetKind::Https(h) => https::check(h),
    }
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
    let remote = match &target.kind {
        TargetKind::Sftp(s) => Remote::Sftp(Sftp::ready(s, data_dir).await?),
        TargetKind::Https(h) => Remote::Https(Dav::new(h, retry.attempt_timeout)?),
    };
    let tries = retry.tries.max(1);
    let mut attempt = 1;
    loop {
        let result = tokio::time::timeout(retry.attempt_timeout, async {
            match &remote {
                Remote::Sftp(s) => s.upload(file, &name, retry.attempt_timeout).await,
                Remote::Https(dav) => dav.upload(file, size, &name).await,
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

/// A target made ready for its attempts (key present, password read, client built).
#[derive(Debug)]
enum Remote<'a> {
    Sftp(Sftp<'a>),
    Https(Dav),
}

/// The backups on `target`, newest first (at most [`MAX_REMOTE_FILES`]): names that are
/// Outpost backup names (no `.partial`), with their sizes.
pub async fn list_remote(
    target: &TargetConfig,
    data_dir: &Path,
) -> Result<Vec<RemoteFile>, TargetError> {
    check(target).map_err(|(key, reason)| TargetError::Config { key, reason })?;
    let mut files = match &target.kind {
        TargetKind::Sftp(s) => Sftp::ready(s, data_dir).await?.list().await?,
        TargetKind::Https(h) => {
            tokio::time::timeout(LIST_TIMEOUT, Dav::new(h, LIST_TIMEOUT)?.list())
                .await
                .map_err(|_| TargetError::Timeout(LIST_TIMEOUT))??
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
        TargetKind::Sftp(s) => Sftp::ready(s, data_dir).await?.fetch(name, dest, max).await,
        TargetKind::Https(h) => tokio::time::timeout(
            FETCH_TIMEOUT,
            Dav::new(h, FETCH_TIMEOUT)?.fetch(name, dest, max),
        )
        .await
        .map_err(|_| TargetError::Timeout(FETCH_TIMEOUT))?,
    }
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
        let parsed = https::HttpsUrl::parse(&format!("{dir}/"))?;
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
