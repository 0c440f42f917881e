//! Where a bundle comes from: a file, standard input, or an `http://` / `https://` URL.
//!
//! The download is a GET through the one HTTP client (`crate::http`, with the daemon's TLS
//! client settings: the Mozilla roots plus `/etc/outpost/update-ca.pem` when present). Plain
//! HTTP is acceptable because the bundle is signed and its payload's SHA-256 is in the
//! signed manifest: a tampered or truncated download is refused by the bundle reader, not
//! here. The URL is checked here first (so the admin reads why it is refused); the response
//! head is bounded, at most [`MAX_REDIRECTS`] redirects are followed, and the body is
//! streamed, never held in memory.

use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use crate::http::{Client, HttpError, Settings};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;
/// A download that moves no byte for this long has stalled.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest URL accepted.
const MAX_URL: usize = 2048;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one this client reads.
    #[error("bad URL {url}: {reason}")]
    BadUrl {
        /// The URL (sanitised).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Name resolution, connect, TLS or transfer failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The error.
        source: io::Error,
    },
    /// The TLS client settings could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server's answer is not HTTP this client reads.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: the server answered HTTP {status} {reason}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The reason phrase (sanitised).
        reason: String,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("{0}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects(String),
}

/// True if `source` names a URL this client downloads.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn parse(text: &str) -> Result<Url, FetchError> {
        let bad = |reason: &str| FetchError::BadUrl {
            url: shown(text),
            reason: reason.to_owned(),
        };
        if text.len() > MAX_URL {
            return Err(bad("longer than 2048 characters"));
        }
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters"));
        }
        let (https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.contains('@') {
            return Err(bad("user names and passwords in URLs are not supported"));
        }
        let (host, port) = crate::http::split_authority(authority).map_err(|r| bad(&r))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        };
        Ok(Url {
            https,
            host: host.to_owned(),
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        crate::http::authority(&self.host, self.port, if self.https { 443 } else { 80 })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.path)
    }
}

/// A URL or header as it may be printed (no terminal escapes, bounded).
fn shown(text: &str) -> String {
    crate::http::shown(text)
}

/// A downloaded body, streamed.
#[derive(Debug)]
pub struct Download {
    body: crate::http::Response,
    /// The length the server announced, if it did.
    pub length: Option<u64>,
    /// The URL the body came from (after redirects).
    pub url: String,
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

/// Downloads `url` (following up to [`MAX_REDIRECTS`] redirects). `ca` adds trusted roots
/// for HTTPS besides the Mozilla ones.
pub fn download(url: &str, ca: Option<&Path>) -> Result<Download, FetchError> {
    let checked = Url::parse(url)?.to_string();
    let client = Client::new(&Settings {
        extra_ca: ca,
        user_agent: concat!("outpostctl/", env!("CARGO_PKG_VERSION")),
        max_redirects: u32::try_from(MAX_REDIRECTS).unwrap_or(u32::MAX),
        stall: IO_TIMEOUT,
        overall: None,
        https_only: false,
    })
    .map_err(|e| fetch_error(e, &checked))?;
    let answer = client.get(&checked).map_err(|e| fetch_error(e, &checked))?;
    if answer.status != 200 {
        return Err(FetchError::Status {
            url: answer.url.clone(),
            status: answer.status,
            reason: shown(&answer.reason),
        });
    }
    Ok(Download {
        length: answer.length,
        url: answer.url.clone(),
        body: answer,
    })
}

/// The client's failure as the update command words it.
fn fetch_error(err: HttpError, url: &str) -> FetchError {
    let io = |kind: io::ErrorKind, reason: String| FetchError::Io {
        url: url.to_owned(),
        source: io::Error::new(kind, reason),
    };
    match err {
        HttpError::BadUrl { url, reason } => FetchError::BadUrl { url, reason },
        HttpError::Settings(reason) => FetchError::Tls(reason),
        HttpError::Unreachable { reason, .. } => io(io::ErrorKind::NotConnected, reason),
        HttpError::Tls { reason, .. } => io(io::ErrorKind::InvalidData, reason),
        HttpError::Transfer { reason, kind, .. } => io(kind, reason),
        HttpError::Protocol { reason, .. } => FetchError::Protocol {
            url: url.to_owned(),
            reason,
        },
        HttpError::TooManyRedirects { .. } => FetchError::TooManyRedirects(shown(url)),
        HttpError::Status {
            url,
            status,
            reason,
        } => FetchError::Status {
            url,
            status,
            reason,
        },
        HttpError::TooLarge { .. } | HttpError::Local { .. } => {
            io(io::ErrorKind::Other, err.to_string())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    #[test]
    fn urls_parse() {
        let u = Url::parse("https://updates.example.com/outpost/0.2.0.bundle").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "updates.example.com", 443, "/outpost/0.2.0.bundle")
        );
        let u = Url::parse("http://[::1]:8080?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/?x=1")
        );
        assert_eq!(u.host_header(), "[::1]:8080");
        for bad in [
            "ftp://x/y",
            "http://user:pw@host/x",
            "http:///x",
            "http://host:port/x",
            "http://host/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    /// Serves each of `answers` to one connection, in order.
    fn server(answers: Vec<Vec<u8>>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut request = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    request.push_str(&line);
                }
                requests.push(request);
                s.write_all(&answer).unwrap();
            }
            requests
        });
        (port, handle)
    }

    #[test]
    fn follows_redirects_and_reads_length_and_chunked_bodies() {
        let (port, handle) = server(vec![
            b"HTTP/1.1 302 Found\r\nLocation: /real.bundle\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA"
                .to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                .to_vec(),
        ]);
        let mut d = download(&format!("http://127.0.0.1:{port}/x.bundle"), None).unwrap();
        let mut body = String::new();
        d.read_to_string(&mut body).unwrap();
        assert_eq!((body.as_str(), d.length), ("hello", Some(5)));
        assert!(d.url.ends_with("/real.bundle"), "{}", d.url);
        let mut d = download(&format!("http://127.0.0.1:{port}/c"), None).unwrap();
        let mut body = String::new();
        d.read_to_string(&mut body).unwrap();
        assert_eq!(body, "abcde");
        let requests = handle.join().unwrap();
        assert!(requests[0].starts_with("GET /x.bundle HTTP/1.1\r\n"));
        assert!(requests[1].starts_with("GET /real.bundle HTTP/1.1\r\n"));
        // Header names are case-insensitive (ureq writes them in lower case).
        assert!(requests[1]
            .to_ascii_lowercase()
            .contains(&format!("host: 127.0.0.1:{port}\r\n")));
    }

    #[test]
    fn errors_redirect_loops_and_huge_heads_are_refused() {
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: /again\r\n\r\n".to_vec();
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20_000));
        let (port, handle) = server(vec![
            b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec(),
            redirect.clone(),
            redirect.clone(),
            redirect.clone(),
            redirect,
            huge,
        ]);
        let url = format!("http://127.0.0.1:{port}/x");
        let err = download(&url, None).unwrap_err();
        assert!(
            matches!(err, FetchError::Status { status: 404, .. }),
            "{err}"
        );
        let err = download(&url, None).unwrap_err();
        assert!(matches!(err, FetchError::TooManyRedirects(_)), "{err}");
        let err = download(&url, None).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        handle.join().unwrap();
    }

    #[test]
    fn relative_absolute_and_scheme_relative_redirects_are_followed() {
        // A scheme-relative Location names the port, so the listener comes first.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers = vec![
            b"HTTP/1.1 302 Found\r\nLocation: d.bundle\r\n\r\n".to_vec(),
            b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n".to_vec(),
            format!("HTTP/1.1 302 Found\r\nLocation: //127.0.0.1:{port}/y\r\n\r\n").into_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ];
        let handle = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                lines.push(line.trim_end().to_owned());
                loop {
                    let mut l = String::new();
                    reader.read_line(&mut l).unwrap();
                    if l == "\r\n" || l.is_empty() {
                        break;
                    }
                }
                s.write_all(&answer).unwrap();
            }
            lines
        });
        let mut d = download(&format!("http://127.0.0.1:{port}/a/b/c.bundle"), None).unwrap();
        let mut body = String::new();
        d.read_to_string(&mut body).unwrap();
        assert_eq!(body, "ok");
        assert_eq!(d.url, format!("http://127.0.0.1:{port}/y"));
        assert_eq!(
            handle.join().unwrap(),
            vec![
                "GET /a/b/c.bundle HTTP/1.1",
                "GET /a/b/d.bundle HTTP/1.1",
                "GET /x HTTP/1.1",
                "GET /y HTTP/1.1",
            ]
        );
    }
}
