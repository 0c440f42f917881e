//! Sending to remote syslog collectors: one thread and one bounded queue per collector, so
//! a slow, dead or unreachable collector never blocks or slows the thread that logged.
//!
//! The queue holds at most [`QUEUE_CAP`] messages of at most
//! [`MAX_MESSAGE`](super::rfc5424::MAX_MESSAGE) bytes: 1 MiB per collector at worst. When
//! full, the oldest message is dropped and counted (`outpostctl status`, metric
//! `log_remote_dropped_total`). TCP and TLS connect with a deadline and reconnect with
//! backoff (1 s doubling to 60 s); a connection that fails mid-write loses what was being
//! written (at most one batch of [`BATCH`] messages, counted as dropped). UDP sends one
//! message per datagram (RFC 5426) and never waits for anything.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use serde::{Deserialize, Serialize};

use super::config::{Collector, Transport};
use super::rfc5424::frame;

/// Messages queued per collector at most (each at most 2 KiB: 1 MiB).
pub const QUEUE_CAP: usize = 512;
/// Messages written to a stream in one go.
pub const BATCH: usize = 64;
/// How long a connection attempt or one write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest pause before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest error text kept for the status.
const MAX_ERROR: usize = 200;

/// One collector's counters, for `status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorStatus {
    /// `host:port` as configured.
    pub address: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// Whether the last send (or connection) worked.
    pub connected: bool,
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages dropped: the queue was full, or the connection broke while writing them.
    pub dropped: u64,
    /// Messages waiting now.
    pub queued: u64,
    /// The last failure, if the collector is not reachable now.
    pub last_error: Option<String>,
}

/// The sending side of one collector, shared by the logging layer and its thread.
#[derive(Debug)]
pub struct Remote {
    collector: Collector,
    queue: Mutex<VecDeque<Vec<u8>>>,
    ready: Condvar,
    sent: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicBool,
    /// The thread holds a batch it has not finished sending.
    in_flight: AtomicBool,
    last_error: Mutex<Option<String>>,
    min_level: tracing::Level,
}

impl Remote {
    /// Starts the thread that sends to `collector`; `tls` is the client configuration for
    /// `transport = "tls"`.
    pub fn start(
        collector: Collector,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Arc<Remote>> {
        let min_level =
            super::config::parse_level(&collector.level).unwrap_or(tracing::Level::INFO);
        let remote = Arc::new(Remote {
            collector,
            queue: Mutex::new(VecDeque::with_capacity(QUEUE_CAP)),
            ready: Condvar::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            last_error: Mutex::new(None),
            min_level,
        });
        let worker = Arc::clone(&remote);
        std::thread::Builder::new()
            .name("syslog-remote".to_owned())
            .spawn(move || worker.run(tls))?;
        Ok(remote)
    }

    /// Whether a line of `level` goes to this collector.
    pub fn wants(&self, level: &tracing::Level) -> bool {
        // tracing orders levels by verbosity: ERROR < WARN < INFO < DEBUG < TRACE.
        *level <= self.min_level
    }

    /// The collector's facility code.
    pub fn facility(&self) -> u8 {
        self.collector.facility_code()
    }

    /// Queues one formatted message; never blocks beyond a short lock.
    pub fn push(&self, message: Vec<u8>) {
        let mut q = lock(&self.queue);
        if q.len() >= QUEUE_CAP {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(message);
        drop(q);
        self.ready.notify_one();
    }

    /// The counters now.
    pub fn status(&self) -> CollectorStatus {
        CollectorStatus {
            address: self.collector.address.clone(),
            transport: self.collector.transport.as_str().to_owned(),
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: lock(&self.queue).len() as u64,
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Waits (until `deadline` at most) for the queue to be sent, while the collector is
    /// reachable: at a clean stop, so the last lines ("outpostd stopped") go out too.
    pub fn drain(&self, deadline: std::time::Instant) {
        while std::time::Instant::now() < deadline
            && self.connected.load(Ordering::Relaxed)
            && (self.in_flight.load(Ordering::Relaxed) || !lock(&self.queue).is_empty())
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for messages and takes up to `max` of them.
    fn take(&self, max: usize) -> Vec<Vec<u8>> {
        self.in_flight.store(false, Ordering::Relaxed);
        let mut q = lock(&self.queue);
        while q.is_empty() {
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let n = q.len().min(max);
        self.in_flight.store(true, Ordering::Relaxed);
        q.drain(..n).collect()
    }

    fn failed(&self, what: &str, err: &dyn std::fmt::Display) {
        let mut text = format!("{what}: {err}");
        text.truncate(
            (0..=MAX_ERROR.min(text.len()))
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0),
        );
        let was_up = self.connected.swap(false, Ordering::Relaxed);
        let first = lock(&self.last_error).replace(text.clone()).is_none();
        // Said once per outage, not per attempt: the line itself goes to the collectors.
        if was_up || first {
            tracing::warn!(
                collector = %self.collector.address,
                transport = self.collector.transport.as_str(),
                "syslog collector unreachable: {text}"
            );
        }
    }

    fn succeeded(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            let had_error = lock(&self.last_error).take().is_some();
            if had_error {
                tracing::info!(collector = %self.collector.address, "syslog collector reachable again");
            }
        }
    }

    fn run(self: Arc<Self>, tls: Option<Arc<rustls::ClientConfig>>) {
        let mut backoff = BACKOFF_MIN;
        let mut link: Option<Link> = None;
        loop {
            let batch = self.take(match self.collector.transport {
                Transport::Udp => 1,
                _ => BATCH,
            });
            if link.is_none() {
                match Link::open(&self.collector, tls.as_ref()) {
                    Ok(l) => {
                        link = Some(l);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        self.failed("connect", &e);
                        // The messages go back to the head of the queue (as far as there
                        // is room: newer ones win) to wait for the next attempt.
                        self.requeue(batch);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let Some(l) = link.as_mut() else { continue };
            let n = batch.len() as u64;
            match l.send(&batch) {
                Ok(()) => {
                    self.sent.fetch_add(n, Ordering::Relaxed);
                    self.succeeded();
                }
                Err(e) => {
                    self.dropped.fetch_add(n, Ordering::Relaxed);
                    self.failed("send", &e);
                    if self.collector.transport != Transport::Udp {
                        link = None;
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }

    fn requeue(&self, batch: Vec<Vec<u8>>) {
        let mut q = lock(&self.queue);
        for m in batch.into_iter().rev() {
            if q.len() >= QUEUE_CAP {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.push_front(m);
        }
    }
}

/// A connection (or a connected UDP socket) to one collector.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Link {
    fn open(c: &Collector, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<Link> {
        let (host, port) = c.host_port().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address is not host:port")
        })?;
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        for addr in addrs {
            let opened = match c.transport {
                Transport::Udp => udp(addr).map(Link::Udp),
                Transport::Tcp => tcp(addr).map(Link::Tcp),
                Transport::Tls => {
                    let config = tls.cloned().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "no TLS settings")
                    })?;
                    let name = crate::driver::tls::server_name(
                        addr,
                        Some(c.server_name.as_deref().unwrap_or(host)),
                    );
                    tcp(addr).and_then(|sock| {
                        let conn = ClientConnection::new(config, name)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                        let mut stream = StreamOwned::new(conn, sock);
                        // The handshake now, so a certificate problem shows as a connection
                        // failure with its reason rather than as a broken write.
                        while stream.conn.is_handshaking() {
                            stream.conn.complete_io(&mut stream.sock).map_err(|e| {
                                io::Error::new(e.kind(), crate::driver::tls::handshake_failure(&e))
                            })?;
                        }
                        Ok(Link::Tls(Box::new(stream)))
                    })
                }
            };
            match opened {
                Ok(link) => return Ok(link),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn send(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        match self {
            Link::Udp(sock) => {
                for m in batch {
                    sock.send(m)?;
                }
                Ok(())
            }
            Link::Tcp(s) => write_framed(s, batch),
            Link::Tls(s) => write_framed(s.as_mut(), batch),
        }
    }
}

fn udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    Ok(sock)
}

fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn write_framed(w: &mut impl Write, batch: &[Vec<u8>]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(batch.iter().map(|m| m.len() + 6).sum());
    for m in batch {
        buf.extend_from_slice(&frame(m));
    }
    w.write_all(&buf)?;
    w.flush()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data: go on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use std::io::Read;

    fn collector(address: String, transport: Transport) -> Collector {
        Collector {
            address,
            transport,
            ca: None,
            server_name: None,
            facility: "daemon".into(),
            level: "info".into(),
        }
    }

    #[test]
    fn tcp_messages_arrive_octet_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let remote = Remote::start(collector(addr.to_string(), Transport::Tcp), None).unwrap();
        remote.push(b"<30>1 - - - - - - one".to_vec());
        remote.push(b"<30>1 - - - - - - two".to_vec());
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let want = b"21 <30>1 - - - - - - one21 <30>1 - - - - - - two";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_dead_collector_never_blocks_and_the_queue_drops_the_oldest() {
        // Nothing listens on this port: connecting fails, the thread backs off.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let remote =
            Remote::start(collector(format!("127.0.0.1:{port}"), Transport::Tcp), None).unwrap();
        let start = std::time::Instant::now();
        for i in 0..(QUEUE_CAP * 3) {
            remote.push(format!("m{i}").into_bytes());
        }
        assert!(start.elapsed() < Duration::from_secs(1), "pushing blocked");
        let s = remote.status();
        assert!(s.queued <= QUEUE_CAP as u64, "{s:?}");
        assert!(s.dropped >= (QUEUE_CAP * 2) as u64 - BATCH as u64, "{s:?}");
        let oldest = lock(&remote.queue).back().cloned().unwrap();
        assert_eq!(
            oldest,
            format!("m{}", QUEUE_CAP * 3 - 1).into_bytes(),
            "newest kept"
        );
    }
}
