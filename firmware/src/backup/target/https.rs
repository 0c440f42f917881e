//! The HTTPS target: a WebDAV-style server reached through the one HTTP client
//! (`crate::http`, the daemon's TLS client settings: Mozilla roots plus the optional `ca`),
//! Basic auth, the file streamed with its `Content-Length` after `Expect: 100-continue` (a
//! refused password costs one round trip, not the whole upload). The file goes to
//! `NAME.partial` first and is then renamed with WebDAV `MOVE` (`Destination`,
//! `Overwrite: T`). A server that refuses `MOVE` with 405 or 501 (a plain PUT endpoint, not
//! WebDAV) gets the file again by a plain `PUT` to `NAME` and a best-effort `DELETE` of the
//! partial: such a server may briefly show a partial `NAME` while that second upload runs.
//! Listing is `PROPFIND` (`Depth: 1`), download a `GET`.
//!
//! The client is blocking: each exchange runs on tokio's blocking pool, bounded by the same
//! time the async caller waits, so an abandoned exchange also ends on its own.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::remote::{RemoteFile, TargetError, MAX_REMOTE_FILES, PARTIAL_SUFFIX};
use super::sftp::valid_host;
use crate::http::{Client, HttpError, Response, Settings};

/// Default HTTPS port.
const HTTPS_PORT: u16 = 443;
/// An exchange that moves no byte for this long is stalled.
const IO_STALL: Duration = Duration::from_secs(120);
/// Longest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;
/// Longest directory URL.
const MAX_REMOTE_PATH: usize = 1024;
/// Largest `PROPFIND` answer read (a listing of a few thousand backups fits).
const MAX_LISTING: u64 = 1024 * 1024;
/// Longest a listing may take.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a download may take (a large backup over a slow line).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

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

/// Checks an HTTPS target's settings without touching the network or files; the error is
/// (key, reason).
pub fn check(h: &HttpsTarget) -> Result<(), (String, String)> {
    let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
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
    Ok(())
}

/// A WebDAV server ready for requests: its directory URL, credentials and client.
#[derive(Debug, Clone)]
pub struct Dav {
    url: HttpsUrl,
    /// `user:password` in base64, or none (a plain download by URL).
    auth: Option<String>,
    client: Client,
}

impl Dav {
    /// The target's server with its password read; each exchange ends within `overall`.
    pub fn new(h: &HttpsTarget, overall: Duration) -> Result<Dav, TargetError> {
        let url = HttpsUrl::parse(&h.url).map_err(|reason| TargetError::Config {
            key: "url".to_owned(),
            reason,
        })?;
        let password = read_password(&h.password_file)?;
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", h.username));
        Ok(Dav {
            url,
            auth: Some(auth),
            client: client(h.ca.as_deref(), overall)?,
        })
    }

    /// One upload attempt: PUT to the partial name, MOVE into place (or a plain PUT when
    /// MOVE is refused).
    pub async fn upload(&self, file: &Path, size: u64, name: &str) -> Result<(), TargetError> {
        let (dav, file, name) = (self.clone(), file.to_path_buf(), name.to_owned());
        blocking(move || dav.upload_now(&file, size, &name)).await
    }

    /// The backups in the directory (unsorted).
    pub async fn list(&self) -> Result<Vec<RemoteFile>, TargetError> {
        let dav = self.clone();
        blocking(move || {
            let path = dav.url.path.clone();
            let answer = dav.request(
                "PROPFIND",
                &path,
                &[("Depth", "1"), ("Content-Type", "application/xml")],
                None,
            )?;
            match answer.status {
                207 => {}
                // A plain PUT endpoint (nginx without dav-ext): uploads work, listing not.
                405 | 501 => {
                    return Err(TargetError::NoListing {
                        url: format!("https://{}{path}", dav.url.authority()),
                        status: answer.status,
                        reason: answer.reason.clone(),
                    })
                }
                _ => return Err(dav.status_error("PROPFIND", &path, &answer)),
            }
            let body = answer
                .read_bounded(MAX_LISTING)
                .map_err(|e| dav.failure(e, &path))?;
            Ok(parse_propfind(&String::from_utf8_lossy(&body)))
        })
        .await
    }

    /// Downloads `name` of the directory into the new file `dest`, at most `max` bytes.
    pub async fn fetch(&self, name: &str, dest: &Path, max: u64) -> Result<u64, TargetError> {
        let (dav, dest) = (self.clone(), dest.to_path_buf());
        let path = format!("{}{name}", self.url.path);
        blocking(move || dav.download(&path, &dest, max)).await
    }

    fn upload_now(&self, file: &Path, size: u64, name: &str) -> Result<(), TargetError> {
        let partial_path = format!("{}{name}{PARTIAL_SUFFIX}", self.url.path);
        let final_path = format!("{}{name}", self.url.path);
        self.put(&partial_path, file, size)?;
        let destination = format!("https://{}{final_path}", self.url.authority());
        let moved = self.request(
            "MOVE",
            &partial_path,
            &[("Destination", &destination), ("Overwrite", "T")],
            None,
        )?;
        match moved.status {
            200 | 201 | 204 => Ok(()),
            405 | 501 => {
                tracing::info!(
                    server = %self.url.authority(),
                    "the backup server refuses MOVE (not WebDAV); uploading under the final name"
                );
                self.put(&final_path, file, size)?;
                // The partial is only clutter now; a server without DELETE keeps it.
                let _ = self.request("DELETE", &partial_path, &[], None);
                Ok(())
            }
            _ => Err(self.status_error("MOVE", &partial_path, &moved)),
        }
    }

    fn put(&self, path: &str, file: &Path, size: u64) -> Result<(), TargetError> {
        let answer = self.request("PUT", path, &[], Some((file, size)))?;
        match answer.status {
            200 | 201 | 204 => Ok(()),
            _ => Err(self.status_error("PUT", path, &answer)),
        }
    }

    /// `GET path` into the new file `dest` (mode 0600), at most `max` bytes; its size.
    fn download(&self, path: &str, dest: &Path, max: u64) -> Result<u64, TargetError> {
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
        let answer = self.request("GET", path, &[], None)?;
        if answer.status != 200 {
            return Err(self.status_error("GET", path, &answer));
        }
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
        let n = answer
            .copy_bounded(&mut out, dest, max)
            .map_err(|e| self.failure(e, path))?;
        let file = out.into_inner().map_err(|e| local(e.into_error()))?;
        file.sync_all().map_err(local)?;
        Ok(n)
    }

    /// Sends one request (the file as its body, when given) and returns the final answer.
    fn request(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&Path, u64)>,
    ) -> Result<Response, TargetError> {
        let url = format!("https://{}{path}", self.url.authority());
        let basic = self.auth.as_ref().map(|a| format!("Basic {a}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(b) = &basic {
            all.push(("Authorization", b));
        }
        self.client
            .send(method, &url, &all, body)
            .map_err(|e| self.failure(e, path))
    }

    fn status_error(&self, method: &'static str, path: &str, answer: &Response) -> TargetError {
        let url = format!("https://{}{path}", self.url.authority());
        if answer.status == 401 {
            return TargetError::AuthFailed {
                addr: self.url.authority(),
                reason: format!(
                    "{method} {url}: HTTP 401 {}: the username or password was refused",
                    answer.reason
                ),
            };
        }
        TargetError::Http {
            method,
            url,
            status: answer.status,
            reason: answer.reason.clone(),
        }
    }

    /// The client's failure in the words of a backup target.
    fn failure(&self, err: HttpError, path: &str) -> TargetError {
        let addr = self.url.authority();
        match err {
            HttpError::BadUrl { reason, .. } => TargetError::Config {
                key: "url".to_owned(),
                reason,
            },
            HttpError::Settings(reason) => TargetError::Config {
                key: "ca".to_owned(),
                reason,
            },
            HttpError::Unreachable { reason, .. } => TargetError::Unreachable { addr, reason },
            HttpError::Tls { reason, .. } => TargetError::Tls { addr, reason },
            HttpError::TooLarge { max, .. } => TargetError::Remote {
                addr,
                reason: format!("{path}: the answer is larger than {max} bytes"),
            },
            HttpError::Local { path, source } => TargetError::Io { path, source },
            HttpError::Transfer { reason, .. } | HttpError::Protocol { reason, .. } => {
                TargetError::Protocol { addr, reason }
            }
            other @ (HttpError::TooManyRedirects { .. } | HttpError::Status { .. }) => {
                TargetError::Protocol {
                    addr,
                    reason: other.to_string(),
                }
            }
        }
    }
}

/// `GET` of an https URL (no credentials, the Mozilla roots) into `dest`.
pub async fn fetch_https_url(url: &str, dest: &Path, max: u64) -> Result<u64, TargetError> {
    let bad = |reason: String| TargetError::Config {
        key: "url".to_owned(),
        reason,
    };
    let (dir, file) = url
        .rsplit_once('/')
        .ok_or_else(|| bad("no file name".into()))?;
    let parsed = HttpsUrl::parse(&format!("{dir}/")).map_err(bad)?;
    let path = format!("{}{file}", parsed.path);
    let dav = Dav {
        url: parsed,
        auth: None,
        client: client(None, FETCH_TIMEOUT)?,
    };
    let dest = dest.to_path_buf();
    tokio::time::timeout(
        FETCH_TIMEOUT,
        blocking(move || dav.download(&path, &dest, max)),
    )
    .await
    .map_err(|_| TargetError::Timeout(FETCH_TIMEOUT))?
}

/// The client of a backup server: no redirects, `ca` trusted besides the Mozilla roots.
fn client(ca: Option<&Path>, overall: Duration) -> Result<Client, TargetError> {
    Client::new(&Settings {
        extra_ca: ca,
        user_agent: "outpost-backup",
        max_redirects: 0,
        stall: IO_STALL,
        overall: Some(overall),
        https_only: true,
    })
    .map_err(|e| TargetError::Config {
        key: "ca".to_owned(),
        reason: match e {
            HttpError::Settings(reason) => reason,
            other => other.to_string(),
        },
    })
}

/// Runs a blocking exchange on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    exchange: impl FnOnce() -> Result<T, TargetError> + Send + 'static,
) -> Result<T, TargetError> {
    tokio::task::spawn_blocking(exchange)
        .await
        .unwrap_or_else(|e| {
            Err(TargetError::Tool {
                program: "HTTP client".to_owned(),
                reason: format!("stopped: {e}"),
            })
        })
}

/// A checked `https://host[:port]/dir/` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// Host name or IP address (IPv6 without brackets).
    host: String,
    port: u16,
    /// The directory, starting and ending with `/`.
    path: String,
}

impl HttpsUrl {
    /// Checks `url` and keeps its parts (the path with a final `/`).
    pub fn parse(url: &str) -> Result<HttpsUrl, String> {
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
    pub fn authority(&self) -> String {
        crate::http::authority(&self.host, self.port, HTTPS_PORT)
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
        let Some(created_ms) = crate::backup::parse_name(&name) else {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn propfind_listings_parse() {
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
}
