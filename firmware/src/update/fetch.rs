//! Where a bundle comes from: a file, standard input, or an `http://` / `https://` URL.
//!
//! The download is a small blocking HTTP/1.1 GET (rustls with the daemon's client settings:
//! the Mozilla roots plus `/etc/outpost/update-ca.pem` when present). Plain HTTP is
//! acceptable because the bundle is signed and its payload's SHA-256 is in the signed
//! manifest: a tampered or truncated download is refused by the bundle reader, not here.
//! The response head is bounded, at most [`MAX_REDIRECTS`] redirects are followed, and the
//! body is streamed, never held in memory.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;
/// Largest response head (status line and headers) read.
const MAX_HEAD: u64 = 16 * 1024;
/// Largest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: u64 = 1024;
/// Time for one TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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

    /// Where a `Location` header points, relative to this URL.
    fn join(&self, location: &str) -> Result<Url, FetchError> {
        if is_url(location) {
            return Url::parse(location);
        }
        if location.starts_with("//") {
            let scheme = if self.https { "https:" } else { "http:" };
            return Url::parse(&format!("{scheme}{location}"));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let dir = self.path.split('?').next().unwrap_or("/");
            let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        let mut next = self.clone();
        next.path = path;
        // Re-checked like any other URL.
        Url::parse(&next.to_string())
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
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A connection: plain TCP or TLS over it.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            // A server that closes without close_notify: the end of the body is checked by
            // Content-Length or the chunked framing, and the bundle by its signed length.
            Conn::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

/// A downloaded body, streamed.
#[derive(Debug)]
pub struct Download {
    body: Body,
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

#[derive(Debug)]
enum Body {
    Length(io::Take<BufReader<Conn>>),
    Chunked(Chunked<BufReader<Conn>>),
    ToEnd(BufReader<Conn>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Length(r) => r.read(buf),
            Body::Chunked(r) => r.read(buf),
            Body::ToEnd(r) => r.read(buf),
        }
    }
}

/// `Transfer-Encoding: chunked`.
#[derive(Debug)]
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk; `None` before the next size line.
    left: Option<u64>,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: None,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut self.inner)
            .take(MAX_CHUNK_LINE)
            .read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad chunked encoding",
            ));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_owned())
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let left = match self.left {
            Some(n) => n,
            None => {
                let line = self.line()?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let n = u64::from_str_radix(size, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                if n == 0 {
                    // Trailers up to the empty line.
                    for _ in 0..64 {
                        if self.line()?.is_empty() {
                            self.done = true;
                            return Ok(0);
                        }
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "too many trailers",
                    ));
                }
                n
            }
        };
        let room = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a chunk",
            ));
        }
        let rest = left - n as u64;
        if rest == 0 {
            if !self.line()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no CRLF after a chunk",
                ));
            }
            self.left = None;
        } else {
            self.left = Some(rest);
        }
        Ok(n)
    }
}

/// Downloads `url` (following up to [`MAX_REDIRECTS`] redirects). `ca` adds trusted roots
/// for HTTPS besides the Mozilla ones.
pub fn download(url: &str, ca: Option<&Path>) -> Result<Download, FetchError> {
    let mut current = Url::parse(url)?;
    let mut tls: Option<Arc<rustls::ClientConfig>> = None;
    for _ in 0..=MAX_REDIRECTS {
        let conn = connect(&current, ca, &mut tls)?;
        match request(conn, &current)? {
            Answer::Body(d) => return Ok(d),
            Answer::Redirect(location) => current = current.join(&location)?,
        }
    }
    Err(FetchError::TooManyRedirects(shown(url)))
}

fn connect(
    url: &Url,
    ca: Option<&Path>,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
) -> Result<Conn, FetchError> {
    let io_err = |source| FetchError::Io {
        url: url.to_string(),
        source,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    let mut stream = None;
    for addr in (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(io_err)?
    {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| io_err(last))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(io_err)?;
    if !url.https {
        return Ok(Conn::Plain(stream));
    }
    let config = match tls {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(
                crate::driver::tls::client_config(ca)
                    .map_err(|e| FetchError::Tls(e.to_string()))?,
            );
            *tls = Some(c.clone());
            c
        }
    };
    let name = ServerName::try_from(url.host.clone()).map_err(|_| FetchError::BadUrl {
        url: url.to_string(),
        reason: "the host is not a valid name for TLS".to_owned(),
    })?;
    let conn = ClientConnection::new(config, name).map_err(|e| FetchError::Tls(e.to_string()))?;
    Ok(Conn::Tls(Box::new(StreamOwned::new(conn, stream))))
}

enum Answer {
    Body(Download),
    Redirect(String),
}

fn request(mut conn: Conn, url: &Url) -> Result<Answer, FetchError> {
    let shown_url = url.to_string();
    let io_err = |source| FetchError::Io {
        url: shown_url.clone(),
        source,
    };
    let protocol = |reason: String| FetchError::Protocol {
        url: shown_url.clone(),
        reason,
    };
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: outpostctl/{}\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    );
    conn.write_all(head.as_bytes())
        .and_then(|()| conn.flush())
        .map_err(io_err)?;
    let mut reader = BufReader::new(conn);
    let mut budget = MAX_HEAD;
    let mut read_line = |reader: &mut BufReader<Conn>| -> Result<String, FetchError> {
        let mut line = Vec::new();
        let n = reader
            .take(budget)
            .read_until(b'\n', &mut line)
            .map_err(io_err)?;
        budget -= n as u64;
        if line.last() != Some(&b'\n') {
            return Err(protocol(if budget == 0 {
                format!("the response head is longer than {MAX_HEAD} bytes")
            } else {
                "the connection closed before the response head ended".to_owned()
            }));
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
    };
    // Interim 1xx responses are skipped.
    let (status, reason, headers) = loop {
        let status_line = read_line(&mut reader)?;
        let (status, reason) = crate::http::status_line(&status_line)
            .ok_or_else(|| protocol(format!("not an HTTP response: {}", shown(&status_line))))?;
        let reason = shown(reason);
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader)?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        if !(100..200).contains(&status) {
            break (status, reason, headers);
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if matches!(status, 301 | 302 | 303 | 307 | 308) {
        let location = header("location")
            .ok_or_else(|| protocol(format!("HTTP {status} without a Location")))?;
        return Ok(Answer::Redirect(location.to_owned()));
    }
    if status != 200 {
        return Err(FetchError::Status {
            url: shown_url.clone(),
            status,
            reason,
        });
    }
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = match header("content-length") {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| protocol(format!("bad Content-Length {}", shown(v))))?,
        ),
        None => None,
    };
    let (body, length) = if chunked {
        (Body::Chunked(Chunked::new(reader)), None)
    } else if let Some(n) = length {
        (Body::Length(reader.take(n)), Some(n))
    } else {
        (Body::ToEnd(reader), None)
    };
    Ok(Answer::Body(Download {
        body,
        length,
        url: shown_url,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_parse_and_join() {
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
        let base = Url::parse("http://h:81/a/b/c.bundle").unwrap();
        assert_eq!(
            base.join("d.bundle").unwrap().to_string(),
            "http://h:81/a/b/d.bundle"
        );
        assert_eq!(base.join("/x").unwrap().to_string(), "http://h:81/x");
        assert_eq!(
            base.join("//other/y").unwrap().to_string(),
            "http://other/y"
        );
        assert_eq!(base.join("https://s/z").unwrap().to_string(), "https://s/z");
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
        assert!(requests[1].contains(&format!("Host: 127.0.0.1:{port}\r\n")));
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
}
