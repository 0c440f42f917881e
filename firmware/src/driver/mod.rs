//! SIP transports around the sans-IO core: UDP sockets, TCP connections and TLS over TCP.
//!
//! Every datagram and every stream-framed message becomes an [`Inbound`] on one bounded
//! channel that the daemon's single core task drains in batches. When the core is busy the
//! channel fills, the reader tasks stop reading, and the kernel's (enlarged) receive buffer
//! absorbs the burst: a flood costs queue space, not unbounded memory.
//!
//! TCP and TLS connections share one table (keyed by the remote address), one framing
//! routine and one connection accounting ([`conn`]): per-source caps (low until the source
//! authenticates), a global cap with slots reserved for authenticated sources, bans that
//! close a source's connections. Each connection has deadlines: its first complete message
//! within `first_message`, each message once begun within `message` (a header dripped a
//! byte at a time is closed), and an idle timeout that is short until the connection
//! carried an authenticated request (then CRLF keep-alives keep it open).

pub mod conn;
pub mod tls;
mod udp;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbx_core::sip::wire::{self, Frame};
use pbx_core::sip::{Peer, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use self::conn::{CloseReason, ConnCtl, ConnLimits, ConnSlot, OutgoingSlot, SharedConns};
use self::tls::TlsContext;
use self::udp::{UdpIn, UdpOut};

/// Datagrams read per `recvmmsg` on a SIP socket (16 × 64 KiB of buffers per socket).
const RECV_BATCH: usize = 16;
/// Kernel receive buffer asked for on SIP sockets (Kamailio's losses come from 256 KiB).
const RCVBUF: usize = 8 << 20;
const SNDBUF: usize = 2 << 20;
/// Outgoing messages queued per connection before further ones are dropped.
const TCP_QUEUE: usize = 256;
/// Time for an outgoing TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a TLS handshake, either side; a silent peer holds a connection slot no longer.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A message (or datagram) that arrived.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes from a peer, `received` when they arrived: for UDP the kernel's receive time
    /// (time in the socket buffer counts), for TCP and TLS when the frame was complete.
    Message {
        peer: Peer,
        bytes: Vec<u8>,
        received: Instant,
    },
    /// A TCP connection is ready to carry messages to `addr`.
    Connected {
        addr: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// A TCP or TLS connection to `addr` closed.
    Closed { addr: SocketAddr },
    /// An outgoing connection to `peer` failed (connect, TLS handshake or certificate
    /// check); what was queued for it is lost. `Closed` follows.
    TransportError { peer: Peer, reason: String },
    /// Connection reports are waiting ([`Transports::take_conn_report`]); sent once per
    /// batch of reports, not per connection.
    ConnReport,
}

/// The sockets of the SIP transports, owned by the core task for sending.
#[derive(Debug)]
pub struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    /// Whether each of `udp` is IPv4 (read once at bind, not per datagram).
    udp_v4: Vec<bool>,
    /// UDP datagrams of this turn, sent together by [`Transports::flush`].
    udp_out: UdpOut,
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    inbound: mpsc::Sender<Inbound>,
    /// Connection accounting shared with the accept loops and connection tasks.
    conns: SharedConns,
    /// TLS client (and server, when listening); `None` until [`Transports::enable_tls`].
    tls: Option<TlsContext>,
    /// Names that trunk servers' certificates must carry, by address.
    tls_names: HashMap<SocketAddr, String>,
    /// The TLS listeners' addresses (port 0 resolved).
    tls_local: Vec<SocketAddr>,
    /// Datagrams or messages that could not be sent.
    pub send_errors: u64,
}

impl Transports {
    /// Binds UDP and TCP on every address and starts the reader tasks.
    pub async fn bind(
        listen: &[SocketAddr],
        inbound: mpsc::Sender<Inbound>,
    ) -> io::Result<Transports> {
        let mut udp = Vec::new();
        let mut udp_v4 = Vec::new();
        let conns: SharedConns = Arc::new(std::sync::Mutex::new(conn::ConnTable::new(
            ConnLimits::default(),
        )));
        raise_fd_limit();
        for addr in listen {
            let sock = Arc::new(bind_udp(*addr)?);
            udp.push(sock.clone());
            udp_v4.push(addr.is_ipv4());
            tokio::spawn(read_udp(sock, inbound.clone()));
            let listener = bind_tcp(*addr)?;
            tokio::spawn(accept(
                listener,
                Upgrade::Plain,
                inbound.clone(),
                conns.clone(),
            ));
        }
        Ok(Transports {
            udp,
            udp_v4,
            udp_out: UdpOut::new(),
            tcp: HashMap::new(),
            inbound,
            conns,
            tls: None,
            tls_names: HashMap::new(),
            tls_local: Vec::new(),
            send_errors: 0,
        })
    }

    /// Turns on TLS: the client side for `Transport::Tls` destinations and, when `tls` has
    /// a server identity, a listener on each of `listen`. Logs each listener with the
    /// certificate's SHA-256 fingerprint (phones pin it).
    pub fn enable_tls(&mut self, listen: &[SocketAddr], tls: TlsContext) -> io::Result<()> {
        if !listen.is_empty() {
            let Some(acceptor) = tls.acceptor() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS listeners need a server certificate",
                ));
            };
            for addr in listen {
                let listener = bind_tcp(*addr)?;
                let local = listener.local_addr()?;
                tracing::info!(
                    listen = %local,
                    fingerprint = tls.fingerprint().unwrap_or(""),
                    "TLS listener (certificate SHA-256 fingerprint)"
                );
                self.tls_local.push(local);
                tokio::spawn(accept(
                    listener,
                    Upgrade::Tls(acceptor.clone()),
                    self.inbound.clone(),
                    self.conns.clone(),
                ));
            }
        }
        self.tls = Some(tls);
        Ok(())
    }

    /// The name the certificate of the TLS server at `addr` must carry (a trunk's host
    /// name); without one the IP address is checked.
    pub fn set_tls_name(&mut self, addr: SocketAddr, name: String) {
        self.tls_names.insert(addr, name);
    }

    /// The TLS listeners' addresses (port 0 resolved).
    pub fn tls_local_addrs(&self) -> &[SocketAddr] {
        &self.tls_local
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// New connection limits (`[firewall.connections]`); open connections keep their slots.
    pub fn set_conn_limits(&mut self, limits: ConnLimits) {
        conn::lock(&self.conns).set_limits(limits);
    }

    /// Networks with no per-source connection cap (allow list, trunk peers); loopback
    /// always has none.
    pub fn set_trusted(&mut self, nets: Vec<firewall::net::Cidr>) {
        conn::lock(&self.conns).set_trusted(nets);
    }

    /// What the firewall decided about connections (see [`conn::ConnNotice`]).
    pub fn conn_notice(&mut self, notice: conn::ConnNotice) {
        use conn::ConnNotice;
        let now = conn::mono_ms();
        let mut t = conn::lock(&self.conns);
        match notice {
            ConnNotice::Authenticated { src, for_ms } => {
                let stream = src.transport != Transport::Udp;
                t.authenticated(now, src.addr, stream, for_ms);
            }
            ConnNotice::Banned { addr, for_ms } => {
                let closed = t.ban(now, addr, for_ms);
                if closed > 0 {
                    tracing::info!(%addr, closed, "firewall: banned source's TCP/TLS connections closed");
                }
            }
            ConnNotice::Unbanned(addr) => t.unban(addr),
            ConnNotice::Trusted(net) => t.trust(net),
        }
    }

    /// The connection reports gathered since the last call (for the firewall); also forgets
    /// ended passes and bans.
    pub fn take_conn_report(&mut self) -> conn::ConnReport {
        let mut t = conn::lock(&self.conns);
        t.purge(conn::mono_ms());
        t.take_reports()
    }

    /// Connection counters and table sizes.
    pub fn conn_stats(&self) -> conn::ConnStats {
        conn::lock(&self.conns).stats()
    }

    /// Records a connection's writer (from [`Inbound::Connected`]).
    pub fn connected(&mut self, addr: SocketAddr, writer: mpsc::Sender<Vec<u8>>) {
        self.tcp.insert(addr, writer);
    }

    /// Forgets a closed connection.
    pub fn closed(&mut self, addr: SocketAddr) {
        self.tcp.remove(&addr);
    }

    /// Sends one message; UDP errors and full TCP queues are counted, never fatal. A UDP
    /// datagram is queued until [`Transports::flush`] (the end of the daemon's turn).
    pub fn send(&mut self, dest: Peer, bytes: Vec<u8>) {
        match dest.transport {
            Transport::Udp => {
                let v4 = dest.addr.is_ipv4();
                let Some(socket) = self.udp_v4.iter().position(|&s| s == v4) else {
                    self.send_errors += 1;
                    return;
                };
                if !self.udp_out.push(socket, dest.addr, bytes) {
                    self.send_errors += 1;
                }
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(writer) = self.tcp.get(&dest.addr) {
                    match writer.try_send(bytes) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => self.send_errors += 1,
                        Err(mpsc::error::TrySendError::Closed(b)) => {
                            self.tcp.remove(&dest.addr);
                            self.connect_and_send(dest, b);
                        }
                    }
                } else {
                    self.connect_and_send(dest, bytes);
                }
            }
        }
    }

    /// Sends the queued UDP datagrams: one `sendmmsg` per socket and batch. A full send
    /// buffer drops a datagram (counted); SIP retransmits.
    pub fn flush(&mut self) {
        if self.udp_out.len() == 0 {
            return;
        }
        let udp = &self.udp;
        let out = self.udp_out.flush(|i| udp.get(i).map(|s| s.as_raw_fd()));
        self.send_errors += u64::try_from(out.dropped).unwrap_or(u64::MAX);
    }

    /// Opens a connection (TCP, or TLS with certificate verification) to a peer that has
    /// none (RFC 3261 §18.2.2: a new one to the same address) and sends `first` on it.
    /// A failure reaches the core as [`Inbound::TransportError`].
    fn connect_and_send(&mut self, dest: Peer, first: Vec<u8>) {
        let Some(permit) = OutgoingSlot::take(&self.conns) else {
            self.send_errors += 1;
            return;
        };
        let limits = conn::lock(&self.conns).limits();
        let tls = match dest.transport {
            Transport::Tls => {
                let name = tls::server_name(
                    dest.addr,
                    self.tls_names.get(&dest.addr).map(String::as_str),
                );
                Some((self.tls.as_ref().map(TlsContext::connector), name))
            }
            _ => None,
        };
        let (writer, queue) = mpsc::channel(TCP_QUEUE);
        if writer.try_send(first).is_err() {
            return;
        }
        self.tcp.insert(dest.addr, writer.clone());
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            let opened = match tls {
                None => connect_tcp(dest.addr).await.map(Opened::Tcp),
                Some((Some(connector), name)) => connect_tls(dest.addr, connector, name)
                    .await
                    .map(|s| Opened::Tls(Box::new(s))),
                Some((None, _)) => Err("TLS is not enabled".to_string()),
            };
            // Ours: no first-message deadline, the long idle timeout.
            let ctl = ConnCtl::outgoing();
            let deadlines = Deadlines::of(&limits, false);
            match opened {
                Ok(Opened::Tcp(stream)) => {
                    run_connection(stream, dest, inbound, writer, queue, &ctl, deadlines).await;
                }
                Ok(Opened::Tls(stream)) => {
                    run_connection(*stream, dest, inbound, writer, queue, &ctl, deadlines).await;
                }
                Err(reason) => {
                    tracing::debug!(peer = %dest.addr, transport = dest.transport.as_str(), %reason, "connection failed");
                    drop(queue);
                    let _ = inbound
                        .send(Inbound::TransportError { peer: dest, reason })
                        .await;
                    let _ = inbound.send(Inbound::Closed { addr: dest.addr }).await;
                }
            }
            drop(permit);
        });
    }
}

/// An outgoing connection, ready for messages.
enum Opened {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(err)) => Err(format!("connect failed: {err}")),
        Err(_) => Err("connect timed out".to_string()),
    }
}

async fn connect_tls(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    name: rustls_pki_types::ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let stream = connect_tcp(addr).await?;
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(tls::handshake_failure(&err)),
        Err(_) => Err("TLS handshake timed out".to_string()),
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Best effort: without CAP_NET_ADMIN the kernel caps these at rmem_max/wmem_max.
    let _ = sock.set_recv_buffer_size(RCVBUF);
    let _ = sock.set_send_buffer_size(SNDBUF);
    // The kernel's receive time on each datagram, so the wait in this buffer counts when
    // the daemon sheds stale requests; without it a datagram is timed from its read.
    if let Err(err) =
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
    {
        tracing::warn!(%addr, %err, "SO_TIMESTAMPNS refused: a request's wait counts from its read");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// Reads datagrams in `recvmmsg` batches while the socket has them and queues each for the
/// core; when the queue is full it waits (the kernel's receive buffer takes the burst).
async fn read_udp(sock: Arc<UdpSocket>, inbound: mpsc::Sender<Inbound>) {
    let mut io = UdpIn::new(RECV_BATCH);
    let mut got: Vec<Inbound> = Vec::with_capacity(RECV_BATCH);
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let read = sock.try_io(Interest::READABLE, || {
            io.receive(sock.as_raw_fd(), |addr, bytes, received| {
                got.push(Inbound::Message {
                    peer: Peer {
                        transport: Transport::Udp,
                        addr,
                    },
                    bytes: bytes.to_vec(),
                    received,
                });
            })
            .map_err(io::Error::from)
        });
        if let Err(err) = read {
            // WouldBlock: readiness is cleared and the next `readable` waits. ICMP errors
            // surface as recv errors on Linux; they say nothing about us.
            if err.kind() != io::ErrorKind::WouldBlock {
                tracing::trace!(%err, "udp recv");
            }
        }
        for msg in got.drain(..) {
            if inbound.send(msg).await.is_err() {
                return;
            }
        }
    }
}

/// How an accepted TCP connection becomes a SIP stream: as it is, or after a TLS handshake.
#[derive(Clone)]
enum Upgrade {
    /// SIP over TCP.
    Plain,
    /// SIP over TLS: the handshake runs in the connection's own task under a deadline.
    Tls(tokio_rustls::TlsAcceptor),
}

/// Accepts connections on `listener`; each holds one of the connection slots that TCP and
/// TLS share, and runs in its own task after the `upgrade` step.
async fn accept(
    listener: TcpListener,
    upgrade: Upgrade,
    inbound: mpsc::Sender<Inbound>,
    conns: SharedConns,
) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(mut slot) = admit(&conns, &inbound, &stream, addr) else {
            continue;
        };
        let inbound = inbound.clone();
        let upgrade = upgrade.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let ctl = slot.ctl().clone();
            let acceptor = match upgrade {
                Upgrade::Plain => {
                    let (writer, queue) = mpsc::channel(TCP_QUEUE);
                    let peer = Peer {
                        transport: Transport::Tcp,
                        addr,
                    };
                    let deadlines = Deadlines::of(&slot.limits(), true);
                    let reason =
                        run_connection(stream, peer, inbound, writer, queue, &ctl, deadlines).await;
                    slot.set_reason(reason);
                    return;
                }
                Upgrade::Tls(acceptor) => acceptor,
            };
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let handshake = tokio::select! {
                biased;
                () = ctl.closed() => {
                    slot.set_reason(CloseReason::Banned);
                    return;
                }
                h = handshake => h,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let (writer, queue) = mpsc::channel(TCP_QUEUE);
                    let peer = Peer {
                        transport: Transport::Tls,
                        addr,
                    };
                    let deadlines = Deadlines::of(&slot.limits(), true);
                    let reason =
                        run_connection(stream, peer, inbound, writer, queue, &ctl, deadlines).await;
                    slot.set_reason(reason);
                }
                // Scanners and phones that do not trust us yet: nothing for the core.
                Ok(Err(err)) => {
                    tracing::debug!(%addr, reason = %tls::handshake_failure(&err), "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    slot.set_reason(CloseReason::FirstMessage);
                }
            }
        });
    }
}

/// Admits an accepted connection from `addr`, or resets it (no TIME_WAIT left behind) and
/// returns `None`. Wakes the daemon when connection reports are waiting.
fn admit(
    conns: &SharedConns,
    inbound: &mpsc::Sender<Inbound>,
    stream: &TcpStream,
    addr: SocketAddr,
) -> Option<ConnSlot> {
    let (slot, wake) = match ConnSlot::admit(conns, addr) {
        Ok((slot, wake)) => (Some(slot), wake),
        Err((refusal, wake)) => {
            tracing::trace!(%addr, ?refusal, "TCP connection refused");
            let _ = stream.set_zero_linger();
            (None, wake)
        }
    };
    if wake {
        // Dropped when the queue is full: the daemon also takes the reports every second.
        let _ = inbound.try_send(Inbound::ConnReport);
    }
    slot
}

/// A connection's deadlines (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// For the first complete message; `None` for our own outgoing connections.
    first_message: Option<Duration>,
    message: Duration,
    idle: Duration,
    idle_authenticated: Duration,
}

impl Deadlines {
    fn of(limits: &ConnLimits, incoming: bool) -> Deadlines {
        Deadlines {
            first_message: incoming.then_some(limits.first_message),
            message: limits.message,
            idle: limits.idle,
            idle_authenticated: limits.idle_authenticated,
        }
    }
}

/// Reads framed messages from a connection (TCP or TLS) and writes queued ones until
/// either side ends, a deadline passes or `ctl` is told to close; returns why it ended.
async fn run_connection<S>(
    stream: S,
    peer: Peer,
    inbound: mpsc::Sender<Inbound>,
    writer: mpsc::Sender<Vec<u8>>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    ctl: &ConnCtl,
    deadlines: Deadlines,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let addr = peer.addr;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let announce = inbound
        .send(Inbound::Connected {
            addr,
            writer: writer.clone(),
        })
        .await;
    if announce.is_err() {
        return CloseReason::Peer;
    }
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = queue.recv().await {
            // TLS buffers records: flush so each message leaves now.
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        // The table let go of the connection: close it cleanly (TLS close_notify).
        let _ = wr.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    let opened = tokio::time::Instant::now();
    // Whether a complete SIP message arrived yet; when the message in the buffer began;
    // when the peer last showed it is alive.
    let mut got_message = false;
    let mut started: Option<tokio::time::Instant> = None;
    let mut alive = opened;
    let reason = 'conn: loop {
        let authenticated = ctl.is_authenticated();
        let idle = if authenticated {
            deadlines.idle_authenticated
        } else {
            deadlines.idle
        };
        let mut deadline = (alive + idle, CloseReason::Idle);
        if let Some(first) = deadlines.first_message.filter(|_| !got_message) {
            deadline = deadline.min((opened + first, CloseReason::FirstMessage));
        }
        if let Some(began) = started {
            deadline = deadline.min((began + deadlines.message, CloseReason::Message));
        }
        let read = tokio::select! {
            biased;
            () = ctl.closed() => break CloseReason::Banned,
            r = tokio::time::timeout_at(deadline.0, rd.read(&mut chunk)) => r,
        };
        let n = match read {
            Err(_) => {
                // The connection authenticated while it idled: its timeout grew.
                if deadline.1 == CloseReason::Idle && ctl.is_authenticated() != authenticated {
                    continue;
                }
                tracing::debug!(%addr, transport = peer.transport.as_str(), reason = ?deadline.1, "closing connection at its deadline");
                break deadline.1;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break CloseReason::Peer,
            Ok(Ok(n)) => n,
        };
        let now = tokio::time::Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        let mut completed = false;
        loop {
            match wire::next_frame(&buf) {
                Ok(Some(Frame::KeepAlive(n))) => {
                    buf.drain(..n);
                    // A registered phone's keep-alives keep its connection; a stranger's do
                    // not hold a slot.
                    if ctl.is_authenticated() {
                        alive = now;
                    }
                }
                Ok(Some(Frame::Message(n))) => {
                    let bytes: Vec<u8> = buf.drain(..n).collect();
                    got_message = true;
                    completed = true;
                    alive = now;
                    if inbound
                        .send(Inbound::Message {
                            peer,
                            bytes,
                            received: now.into_std(),
                        })
                        .await
                        .is_err()
                    {
                        break 'conn CloseReason::Peer;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    // A stream whose framing is lost cannot be resynchronised: answer what
                    // can be answered and close it (RFC 3261 §18.3).
                    tracing::debug!(%addr, %err, transport = peer.transport.as_str(), "closing connection with bad framing");
                    let end = buf.len().min(wire::MAX_MESSAGE);
                    if let Some(reply) = wire::reply_to_malformed(&buf[..end], &err) {
                        let _ = writer.send(reply).await;
                    }
                    drop(writer);
                    // Give the writer a moment to flush the error response.
                    let _ = tokio::time::timeout(Duration::from_millis(200), write_task).await;
                    let _ = inbound.send(Inbound::Closed { addr }).await;
                    return CloseReason::Peer;
                }
            }
        }
        // What is left is the start of the next message: its clock runs from when its
        // first byte came (this read, unless it was already waiting).
        if buf.is_empty() {
            started = None;
        } else if completed || started.is_none() {
            started = Some(now);
        }
    };
    drop(writer);
    write_task.abort();
    let _ = inbound.send(Inbound::Closed { addr }).await;
    reason
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (best effort): each connection is a
/// descriptor, and the default soft limit (1,024) is below the connection cap.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::driver::tls::TlsConfig;

    const OPTIONS: &[u8] = b"OPTIONS sip:outpost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:t@outpost>;tag=1\r\nTo: <sip:outpost>\r\nCall-ID: drv@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    /// A TLS listener on loopback with an identity generated under `dir`; its address, its
    /// certificate file and what it receives.
    async fn tls_server(dir: &Path) -> (SocketAddr, PathBuf, mpsc::Receiver<Inbound>) {
        let cfg = TlsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..TlsConfig::default()
        };
        let ctx = TlsContext::new(&cfg, dir).expect("server context");
        assert!(ctx.fingerprint().is_some());
        let (tx, rx) = mpsc::channel(16);
        let mut server = Transports::bind(&[], tx).await.expect("no sockets to bind");
        server.enable_tls(&cfg.listen, ctx).expect("TLS listener");
        (server.tls_local_addrs()[0], dir.join("tls/cert.pem"), rx)
    }

    /// Client transports trusting `ca` (beside the built-in roots).
    async fn client(ca: Option<PathBuf>) -> (Transports, mpsc::Receiver<Inbound>) {
        let cfg = TlsConfig {
            ca,
            ..TlsConfig::default()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = TlsContext::new(&cfg, dir.path()).expect("client context");
        let (tx, rx) = mpsc::channel(16);
        let mut transports = Transports::bind(&[], tx).await.expect("no sockets to bind");
        transports.enable_tls(&[], ctx).expect("client only");
        (transports, rx)
    }

    /// The first inbound item that `pick` accepts, within 5 s.
    async fn next<T>(
        rx: &mut mpsc::Receiver<Inbound>,
        mut pick: impl FnMut(Inbound) -> Option<T>,
    ) -> T {
        let wait = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(item) = rx.recv().await {
                if let Some(found) = pick(item) {
                    return Some(found);
                }
            }
            None
        });
        wait.await
            .ok()
            .flatten()
            .expect("the expected inbound item within 5 s")
    }

    fn transport_error(item: Inbound) -> Option<(Peer, String)> {
        match item {
            Inbound::TransportError { peer, reason } => Some((peer, reason)),
            _ => None,
        }
    }

    /// Transports on a free loopback port with short deadlines (1 s for the first message,
    /// each message and idling; 60 s idle once authenticated).
    async fn tcp_server() -> (Transports, SocketAddr, mpsc::Receiver<Inbound>) {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let (tx, rx) = mpsc::channel(64);
        let mut t = Transports::bind(&[addr], tx).await.expect("bind");
        t.set_conn_limits(ConnLimits {
            first_message: Duration::from_secs(1),
            message: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            idle_authenticated: Duration::from_secs(60),
            ..ConnLimits::default()
        });
        conn::lock(&t.conns).distrust_loopback();
        (t, addr, rx)
    }

    /// Seconds until the server closes `stream` (reads to EOF), at most `max`; `None` if it
    /// is still open then. Writes `drip` one byte every `every` meanwhile (cycling).
    async fn closed_after(
        stream: &mut TcpStream,
        drip: &[u8],
        every: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut i = 0;
        let mut buf = [0u8; 4096];
        loop {
            if start.elapsed() >= max {
                return None;
            }
            if !drip.is_empty() {
                // A write to a connection the server closed may fail: that is the answer.
                let _ = stream
                    .write_all(&drip[i % drip.len()..=i % drip.len()])
                    .await;
                i += 1;
            }
            let wait = if drip.is_empty() { max } else { every };
            match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) | Err(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_dripped_header_and_a_silent_connection_are_closed_at_their_deadlines() {
        let (t, addr, _rx) = tcp_server().await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut drip = TcpStream::connect(addr).await.expect("connect");
        let (a, b) = tokio::join!(
            closed_after(&mut silent, b"", Duration::ZERO, Duration::from_secs(5)),
            closed_after(
                &mut drip,
                OPTIONS,
                Duration::from_millis(200),
                Duration::from_secs(5)
            ),
        );
        let a = a.expect("the silent connection is closed");
        let b = b.expect("the dripping connection is closed");
        assert!(a < Duration::from_millis(1_800), "silent: {a:?}");
        assert!(b < Duration::from_millis(1_800), "drip: {b:?}");
        // Counted by reason (the drip never completed a message either: whichever deadline
        // came first).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = t.conn_stats();
        assert_eq!(st.closed_first_message + st.closed_message, 2, "{st:?}");
        assert_eq!(st.open, 0);
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_reset_at_accept_and_reported() {
        let (mut t, addr, mut rx) = tcp_server().await;
        let limits = conn::lock(&t.conns).limits();
        t.set_conn_limits(ConnLimits {
            per_source: 1,
            ..limits
        });
        let _held = TcpStream::connect(addr).await.expect("connect");
        // The reset may come before the client saw its handshake complete.
        let refused = match TcpStream::connect(addr).await {
            Err(e) => e.kind(),
            Ok(mut over) => {
                let mut buf = [0u8; 16];
                tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf))
                    .await
                    .expect("an answer within 2 s")
                    .map_or_else(|e| e.kind(), |n| panic!("read {n} bytes, not a reset"))
            }
        };
        assert_eq!(
            refused,
            io::ErrorKind::ConnectionReset,
            "refused with a reset, leaving no TIME_WAIT behind"
        );
        next(&mut rx, |item| match item {
            Inbound::ConnReport => Some(()),
            _ => None,
        })
        .await;
        let report = t.take_conn_report();
        assert_eq!(report.sources, [(addr.ip(), 1, 1)]);
        assert_eq!(t.conn_stats().refused_source_cap, 1);
    }

    #[tokio::test]
    async fn a_message_begun_after_a_complete_one_has_its_own_deadline() {
        let (mut t, addr, mut rx) = tcp_server().await;
        // Idle longer than the message deadline: only the drip's own deadline can end it.
        let limits = conn::lock(&t.conns).limits();
        t.set_conn_limits(ConnLimits {
            idle: Duration::from_secs(10),
            ..limits
        });
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(OPTIONS).await.expect("write");
        next(&mut rx, |item| match item {
            Inbound::Message { .. } => Some(()),
            _ => None,
        })
        .await;
        let closed = closed_after(
            &mut conn,
            OPTIONS,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await
        .expect("closed");
        assert!(closed < Duration::from_millis(1_800), "{closed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(t.conn_stats().closed_message, 1);
    }

    #[tokio::test]
    async fn keepalives_hold_an_authenticated_connection_but_not_a_strangers() {
        let (mut t, addr, mut rx) = tcp_server().await;
        let mut phone = TcpStream::connect(addr).await.expect("connect");
        let mut stranger = TcpStream::connect(addr).await.expect("connect");
        let phone_addr = phone.local_addr().expect("local");
        phone.write_all(OPTIONS).await.expect("write");
        stranger.write_all(OPTIONS).await.expect("write");
        for _ in 0..2 {
            next(&mut rx, |item| match item {
                Inbound::Message { .. } => Some(()),
                _ => None,
            })
            .await;
        }
        // The call core authenticated a request on the phone's connection.
        t.conn_notice(conn::ConnNotice::Authenticated {
            src: Peer {
                transport: Transport::Tcp,
                addr: phone_addr,
            },
            for_ms: 60_000,
        });
        let keepalive = b"\r\n\r\n";
        let (p, s) = tokio::join!(
            closed_after(
                &mut phone,
                keepalive,
                Duration::from_millis(100),
                Duration::from_secs(3)
            ),
            closed_after(
                &mut stranger,
                keepalive,
                Duration::from_millis(100),
                Duration::from_secs(3)
            ),
        );
        assert_eq!(p, None, "the authenticated connection was closed");
        let s = s.expect("the stranger's connection is closed");
        assert!(s < Duration::from_millis(1_800), "{s:?}");
        let st = t.conn_stats();
        assert_eq!(
            (st.closed_idle, st.open, st.open_unauthenticated),
            (1, 1, 0)
        );
        // A ban closes what is left, at once.
        t.conn_notice(conn::ConnNotice::Banned {
            addr: addr.ip(),
            for_ms: 60_000,
        });
        let b = closed_after(&mut phone, b"", Duration::ZERO, Duration::from_secs(2))
            .await
            .expect("closed by the ban");
        assert!(b < Duration::from_millis(500), "{b:?}");
        // And the banned source cannot come back while the ban lasts.
        let mut again = TcpStream::connect(addr).await.expect("the kernel accepts");
        assert!(
            closed_after(&mut again, b"", Duration::ZERO, Duration::from_secs(2))
                .await
                .is_some()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = t.conn_stats();
        assert_eq!((st.closed_banned, st.refused_banned), (1, 1));
    }

    #[tokio::test]
    async fn a_tls_destination_gets_a_verified_connection_carrying_the_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (addr, cert, mut server_rx) = tls_server(dir.path()).await;
        let (mut transports, mut client_rx) = client(Some(cert)).await;
        transports.set_tls_name(addr, "outpost".to_string());
        let dest = Peer {
            transport: Transport::Tls,
            addr,
        };
        transports.send(dest, OPTIONS.to_vec());
        let (peer, bytes) = next(&mut server_rx, |item| match item {
            Inbound::Message { peer, bytes, .. } => Some((peer, bytes)),
            _ => None,
        })
        .await;
        assert_eq!(peer.transport, Transport::Tls);
        assert_eq!(bytes, OPTIONS);
        // The client side announced its connection for the replies to come.
        let connected = next(&mut client_rx, |item| match item {
            Inbound::Connected { addr, .. } => Some(addr),
            _ => None,
        })
        .await;
        assert_eq!(connected, addr);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_transport_error_for_the_core() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (addr, _cert, _server_rx) = tls_server(dir.path()).await;
        let (mut transports, mut rx) = client(None).await;
        transports.set_tls_name(addr, "outpost".to_string());
        let dest = Peer {
            transport: Transport::Tls,
            addr,
        };
        transports.send(dest, OPTIONS.to_vec());
        let (peer, reason) = next(&mut rx, transport_error).await;
        assert_eq!(peer, dest);
        assert_eq!(reason, "certificate verify failed: UnknownIssuer");
        let closed = next(&mut rx, |item| match item {
            Inbound::Closed { addr } => Some(addr),
            _ => None,
        })
        .await;
        assert_eq!(closed, addr);
    }

    #[tokio::test]
    async fn without_a_name_the_certificate_must_carry_the_ip_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (addr, cert, _server_rx) = tls_server(dir.path()).await;
        let (mut transports, mut rx) = client(Some(cert)).await;
        let dest = Peer {
            transport: Transport::Tls,
            addr,
        };
        transports.send(dest, OPTIONS.to_vec());
        let (_, reason) = next(&mut rx, transport_error).await;
        assert!(
            reason.starts_with("certificate verify failed: NotValidForName"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_refused_tcp_connect_is_a_transport_error_for_the_core() {
        // A port that was free a moment ago: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let (mut transports, mut rx) = client(None).await;
        let dest = Peer {
            transport: Transport::Tcp,
            addr,
        };
        transports.send(dest, OPTIONS.to_vec());
        let (peer, reason) = next(&mut rx, transport_error).await;
        assert_eq!(peer, dest);
        assert!(reason.starts_with("connect failed"), "{reason}");
    }
}
