//! Log lines to the system log (`/dev/log`, RFC 3164 framing), next to or instead of stderr.
//!
//! Each tracing event is formatted by `tracing-subscriber` and sent as one datagram with the
//! priority of its level (facility daemon). If the socket is missing (no syslogd yet) the
//! line is dropped: logging never blocks or fails the daemon. Lines triggered by network
//! input are already rate-limited at their call sites (the firewall's alert log windows).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Largest datagram sent (longer lines are cut).
const MAX_LINE: usize = 4096;
/// Facility `daemon` (3), shifted.
const FACILITY_DAEMON: u8 = 3 << 3;

/// Writes log lines to the syslog socket.
#[derive(Debug, Clone)]
pub struct Syslog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: UnixDatagram,
    path: PathBuf,
    tag: String,
}

impl Syslog {
    /// A writer for the syslog socket at `path` (normally `/dev/log`).
    pub fn new(path: impl Into<PathBuf>, tag: &str) -> io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Syslog {
            inner: Arc::new(Inner {
                socket,
                path: path.into(),
                tag: tag.to_string(),
            }),
        })
    }
}

/// One event's line on its way to the socket.
#[derive(Debug)]
pub struct SyslogLine {
    inner: Arc<Inner>,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_LINE.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last().is_some_and(|b| *b == b'\n') {
            self.buf.pop();
        }
        if self.buf.is_empty() {
            return;
        }
        let mut packet = format!(
            "<{}>{}[{}]: ",
            FACILITY_DAEMON | self.severity,
            self.inner.tag,
            std::process::id()
        )
        .into_bytes();
        packet.extend_from_slice(&self.buf);
        // Best effort: a missing or full log socket loses the line, nothing else.
        let _ = self.inner.socket.send_to(&packet, &self.inner.path);
    }
}

fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            inner: self.inner.clone(),
            severity: 6,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine {
            inner: self.inner.clone(),
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn lines_arrive_with_priority_tag_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let log = Syslog::new(&path, "outpostd").unwrap();
        {
            let mut w = log.make_writer();
            w.severity = severity(&Level::WARN);
            w.write_all(b"trunk down reason=timeout\n").unwrap();
        }
        let mut buf = [0u8; 8192];
        let n = server.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(
            line,
            format!(
                "<28>outpostd[{}]: trunk down reason=timeout",
                std::process::id()
            )
        );
        // A huge line is cut, and a missing socket is not an error.
        {
            let mut w = log.make_writer();
            w.write_all(&vec![b'x'; 10_000]).unwrap();
        }
        let n = server.recv(&mut buf).unwrap();
        assert!(n < MAX_LINE + 64);
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let mut w = log.make_writer();
        w.write_all(b"nobody listens\n").unwrap();
    }
}
