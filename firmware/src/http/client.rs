//! The one HTTP/1.1 client: ureq over TCP and the daemon's rustls settings ([`super::tls`]).
//! It serves the update download (`update::fetch`), the backup targets' WebDAV requests
//! (`backup::target::https`) and HTTPS blocklist feeds ([`get_bounded`]).
//!
//! A request goes out with `Connection: close` (no pooled connections: each exchange is one
//! connection, as every caller here makes a handful of requests at most); a body is streamed
//! from a file with its `Content-Length` and `Expect: 100-continue`, so a refused password
//! costs one round trip, not the upload. Every answer is returned, whatever its status: the
//! caller decides what it accepts. Bounds: the response head ([`MAX_HEAD`]), redirects
//! ([`Settings::max_redirects`]), a connection that moves no byte ([`Settings::stall`]),
//! the whole exchange ([`Settings::overall`]) and, where a body is read, its size.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::http::{Method, Request};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, TcpConnector};
use ureq::{ResponseExt, SendBody, Timeout};

use super::tls::TlsLayer;

/// Largest response head (status line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// Time for one TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a server gets to answer `Expect: 100-continue` before the body goes anyway.
const EXPECT_WAIT: Duration = Duration::from_secs(2);
/// Longest URL shown in an error.
const MAX_SHOWN: usize = 200;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not one this client reads.
    #[error("bad URL {url}: {reason}")]
    BadUrl {
        /// The URL (sanitised).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client settings could not be built (e.g. an unreadable extra CA file).
    #[error("TLS: {0}")]
    Settings(String),
    /// Name resolution or the TCP connect failed.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// `host[:port]`.
        addr: String,
        /// Why, in words.
        reason: String,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, expired).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// `host[:port]`.
        addr: String,
        /// As `driver::tls::handshake_failure` words it.
        reason: String,
    },
    /// The connection broke or stalled after it was made.
    #[error("{addr}: {reason}")]
    Transfer {
        /// `host[:port]`.
        addr: String,
        /// What happened.
        reason: String,
        /// The kind of the underlying error.
        kind: io::ErrorKind,
    },
    /// The server's answer is not HTTP/1.x this client reads.
    #[error("{addr}: {reason}")]
    Protocol {
        /// `host[:port]`.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// More redirects than allowed.
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects {
        /// The URL first asked for.
        url: String,
        /// Redirects allowed.
        max: u32,
    },
    /// The body is longer than the caller's bound.
    #[error("{url}: the answer is larger than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The bound.
        max: u64,
    },
    /// The server answered with a status the caller does not accept.
    #[error("{url}: the server answered HTTP {status} {reason}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The standard reason phrase of the code.
        reason: String,
    },
    /// A local file (a body to send, a file to write) failed.
    #[error("{path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What a [`Client`] is set up with.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// PEM file of roots trusted besides the Mozilla ones.
    pub extra_ca: Option<&'a Path>,
    /// The `User-Agent` header.
    pub user_agent: &'a str,
    /// Redirects followed (0: a 3xx answer is returned like any other).
    pub max_redirects: u32,
    /// A connection that moves no byte for this long has stalled.
    pub stall: Duration,
    /// Longest one exchange (all its redirects, its whole body) may take.
    pub overall: Option<Duration>,
    /// Refuse `http://` URLs, redirects to them included (no downgrade on the way).
    pub https_only: bool,
}

/// An HTTP client with fixed TLS settings and bounds.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    max_redirects: u32,
    /// The roots trusted, in words: a certificate from an unknown issuer names them, so
    /// the admin knows what to install (rustls only says `UnknownIssuer`).
    roots: String,
}

impl Client {
    /// Builds the client; fails only when the TLS settings cannot be built.
    pub fn new(settings: &Settings<'_>) -> Result<Client, HttpError> {
        let tls = crate::driver::tls::client_config(settings.extra_ca)
            .map_err(|e| HttpError::Settings(e.to_string()))?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Proxies from the environment are not ours to follow (the box has none).
            .proxy(None)
            .max_redirects(settings.max_redirects)
            .max_redirects_will_error(true)
            .https_only(settings.https_only)
            .user_agent(settings.user_agent)
            .accept("*/*")
            .max_response_header_size(MAX_HEAD)
            .max_idle_connections(0)
            .allow_non_standard_methods(true)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_await_100(Some(EXPECT_WAIT))
            .timeout_per_read(Some(settings.stall))
            .timeout_per_write(Some(settings.stall))
            .timeout_global(settings.overall)
            .build();
        let connector = ().chain(TcpConnector::default()).chain(TlsLayer::new(Arc::new(tls)));
        Ok(Client {
            agent: ureq::Agent::with_parts(config, connector, DefaultResolver::default()),
            max_redirects: settings.max_redirects,
            roots: match settings.extra_ca {
                Some(ca) => format!("the Mozilla roots or {}", ca.display()),
                None => "the Mozilla roots (no extra CA file is configured)".to_owned(),
            },
        })
    }

    /// `GET url`.
    pub fn get(&self, url: &str) -> Result<Response, HttpError> {
        self.send("GET", url, &[], None)
    }

    /// Sends `method url` with `headers` and, when given, the first `len` bytes of `file`
    /// as the body; returns the final answer (after redirects) whatever its status.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&Path, u64)>,
    ) -> Result<Response, HttpError> {
        let bad = |reason: String| HttpError::BadUrl {
            url: shown(url),
            reason,
        };
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header("Connection", "close");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let addr = authority_of(url);
        let sent = match body {
            Some((file, len)) => {
                let f = std::fs::File::open(file).map_err(|source| HttpError::Local {
                    path: file.to_path_buf(),
                    source,
                })?;
                request = request
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Length", len.to_string());
                if len > 0 {
                    request = request.header("Expect", "100-continue");
                }
                let request = request
                    .body(SendBody::from_owned_reader(f.take(len)))
                    .map_err(|e| bad(e.to_string()))?;
                self.agent.run(request)
            }
            None => {
                let request = request.body(()).map_err(|e| bad(e.to_string()))?;
                self.agent.run(request)
            }
        };
        let answer = sent.map_err(|e| self.failure(e, url, &addr))?;
        let status = answer.status();
        let final_url = answer.get_uri().to_string();
        let length = answer.body().content_length();
        Ok(Response {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or_default().to_owned(),
            url: shown(&final_url),
            addr,
            length,
            body: answer.into_body().into_reader(),
        })
    }

    fn failure(&self, err: ureq::Error, url: &str, addr: &str) -> HttpError {
        match err {
            ureq::Error::TooManyRedirects => HttpError::TooManyRedirects {
                url: shown(url),
                max: self.max_redirects,
            },
            ureq::Error::BadUri(reason) => HttpError::BadUrl {
                url: shown(url),
                reason: shown(&reason),
            },
            ureq::Error::RequireHttpsOnly(to) => HttpError::BadUrl {
                url: shown(url),
                reason: format!("only https:// is accepted here (asked for {})", shown(&to)),
            },
            ureq::Error::Http(e) => HttpError::BadUrl {
                url: shown(url),
                reason: shown(&e.to_string()),
            },
            other => {
                let unknown_issuer = matches!(&other, ureq::Error::Io(e) if e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|tls| matches!(
                    tls,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                )));
                match classify(other, addr) {
                    HttpError::Tls { addr, reason } if unknown_issuer => HttpError::Tls {
                        addr,
                        reason: format!(
                            "{reason}: the server's certificate chain does not lead to {}",
                            self.roots
                        ),
                    },
                    e => e,
                }
            }
        }
    }
}

/// A final answer; its body is read through [`Read`] or the bounded helpers.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The standard reason phrase of the code.
    pub reason: String,
    /// The URL the answer came from (after redirects, sanitised).
    pub url: String,
    /// `host[:port]` of the URL first asked for.
    pub addr: String,
    /// The body's length, when the server announced it.
    pub length: Option<u64>,
    body: ureq::BodyReader<'static>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("url", &self.url)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

impl Response {
    /// The error for a status the caller does not accept.
    pub fn status_error(&self) -> HttpError {
        HttpError::Status {
            url: self.url.clone(),
            status: self.status,
            reason: self.reason.clone(),
        }
    }

    /// Copies the body to `out`, at most `max` bytes (refused at once when the announced
    /// length is larger); returns its length. `out_path` names `out` in errors.
    pub fn copy_bounded(
        mut self,
        out: &mut impl Write,
        out_path: &Path,
        max: u64,
    ) -> Result<u64, HttpError> {
        let too_large = |url: &str| HttpError::TooLarge {
            url: url.to_owned(),
            max,
        };
        if self.length.is_some_and(|n| n > max) {
            return Err(too_large(&self.url));
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match self.body.read(&mut chunk) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(ureq::Error::from(e), &self.addr)),
            };
            total += n as u64;
            if total > max {
                return Err(too_large(&self.url));
            }
            out.write_all(&chunk[..n])
                .map_err(|source| HttpError::Local {
                    path: out_path.to_path_buf(),
                    source,
                })?;
        }
    }

    /// The body in memory, at most `max` bytes.
    pub fn read_bounded(self, max: u64) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        self.copy_bounded(&mut out, Path::new("(memory)"), max)?;
        Ok(out)
    }
}

/// `GET url` of at most `max_bytes` within `timeout` (redirects: at most 3, never to plain
/// HTTP), for HTTPS blocklist feeds: the Mozilla roots plus `extra_ca`; any status but 200
/// is an error.
pub fn get_bounded(
    url: &str,
    extra_ca: Option<&Path>,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Vec<u8>, HttpError> {
    Client::new(&Settings {
        extra_ca,
        user_agent: concat!("outpostd/", env!("CARGO_PKG_VERSION")),
        max_redirects: 3,
        stall: timeout,
        overall: Some(timeout),
        https_only: true,
    })?
    .get_bounded(url, max_bytes)
}

impl Client {
    /// `GET url`, its body of at most `max_bytes`; any status but 200 is an error.
    pub fn get_bounded(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, HttpError> {
        let answer = self.get(url)?;
        if answer.status != 200 {
            return Err(answer.status_error());
        }
        answer.read_bounded(max_bytes)
    }
}

/// Turns a ureq failure into words an admin can act on.
fn classify(err: ureq::Error, addr: &str) -> HttpError {
    let addr = addr.to_owned();
    let unreachable = |reason: &str| HttpError::Unreachable {
        addr: addr.clone(),
        reason: reason.to_owned(),
    };
    match err {
        ureq::Error::HostNotFound => unreachable("host name not found"),
        ureq::Error::ConnectionFailed => unreachable("connection failed"),
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => {
            unreachable("connection timed out")
        }
        ureq::Error::Timeout(which) => HttpError::Transfer {
            addr,
            reason: match which {
                Timeout::PerRead | Timeout::PerWrite => "the connection stalled".to_owned(),
                other => format!("timed out ({other})"),
            },
            kind: io::ErrorKind::TimedOut,
        },
        ureq::Error::Io(e) => {
            if e.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some()
            {
                return HttpError::Tls {
                    addr,
                    reason: crate::driver::tls::handshake_failure(&e),
                };
            }
            match e.kind() {
                io::ErrorKind::ConnectionRefused => unreachable("connection refused"),
                io::ErrorKind::HostUnreachable => unreachable("no route to host"),
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => {
                    unreachable("network is unreachable")
                }
                kind => HttpError::Transfer {
                    addr,
                    reason: format!("connection lost: {e}"),
                    kind,
                },
            }
        }
        ureq::Error::LargeResponseHeader(_, limit) => HttpError::Protocol {
            addr,
            reason: format!("the response head is longer than {limit} bytes"),
        },
        ureq::Error::Protocol(e) => HttpError::Protocol {
            addr,
            reason: format!("not an HTTP/1.1 answer: {}", shown(&e.to_string())),
        },
        ureq::Error::Tls(reason) => HttpError::Tls {
            addr,
            reason: reason.to_owned(),
        },
        other => HttpError::Protocol {
            addr,
            reason: shown(&other.to_string()),
        },
    }
}

/// `host[:port]` of a URL as written in it (for messages).
fn authority_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    shown(&rest[..end])
}

/// A URL or reason as it may be printed (no terminal escapes, bounded).
pub fn shown(text: &str) -> String {
    crate::names::printable(text, MAX_SHOWN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    /// Answers each connection with the next of `answers` after reading its head.
    fn server(answers: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let _ = s.write_all(&answer);
            }
        });
        (base, handle)
    }

    fn client() -> Client {
        Client::new(&Settings {
            extra_ca: None,
            user_agent: "test",
            max_redirects: 0,
            stall: Duration::from_secs(5),
            overall: Some(Duration::from_secs(10)),
            https_only: false,
        })
        .unwrap()
    }

    #[test]
    fn interim_answers_are_skipped_and_the_final_one_returned() {
        let (base, handle) = server(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX: y\r\nContent-Length: 4\r\n\r\nbody"
                .to_vec(),
        ]);
        let answer = client().get(&format!("{base}/x")).unwrap();
        assert_eq!(
            (answer.status, answer.reason.as_str(), answer.length),
            (201, "Created", Some(4))
        );
        assert_eq!(answer.read_bounded(100).unwrap(), b"body");
        handle.join().unwrap();
    }

    #[test]
    fn endless_heads_and_answers_that_are_not_http_are_refused() {
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        let (base, handle) = server(vec![endless, b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()]);
        let err = client().get(&format!("{base}/x")).unwrap_err();
        assert!(matches!(err, HttpError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("longer than"), "{err}");
        let err = client().get(&format!("{base}/x")).unwrap_err();
        assert!(matches!(err, HttpError::Protocol { .. }), "{err:?}");
        handle.join().unwrap();
    }

    #[test]
    fn bounded_get_refuses_large_bodies_and_error_statuses() {
        let (base, handle) = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        let url = format!("{base}/feed.txt");
        // Feeds are HTTPS only: a plain URL is refused before anything is sent.
        let err = get_bounded(&url, None, 5, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, HttpError::BadUrl { .. }), "{err:?}");
        let c = client();
        assert_eq!(c.get_bounded(&url, 5).unwrap(), b"hello");
        let err = c.get_bounded(&url, 4).unwrap_err();
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
        let err = c.get_bounded(&url, 4).unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { max: 4, .. }), "{err:?}");
        let err = c.get_bounded(&url, 4).unwrap_err();
        assert!(
            matches!(err, HttpError::Status { status: 404, .. }),
            "{err:?}"
        );
        handle.join().unwrap();
    }

    #[test]
    fn refused_connections_are_unreachable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = client()
            .get(&format!("http://127.0.0.1:{port}/"))
            .unwrap_err();
        assert!(
            matches!(&err, HttpError::Unreachable { reason, .. } if reason == "connection refused"),
            "{err:?}"
        );
    }
}
