//! SIP transports around the sans-IO core: UDP sockets and TCP connections.
//!
//! Every datagram and every stream-framed message becomes an [`Inbound`] on one bounded
//! channel that the daemon's single core task drains in batches. When the core is busy the
//! channel fills, the reader tasks stop reading, and the kernel's (enlarged) receive buffer
//! absorbs the burst: a flood costs queue space, not unbounded memory.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbx_core::sip::wire::{self, Frame};
use pbx_core::sip::{Peer, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Largest datagram we read; anything longer is cut and then rejected by the parser.
const MAX_DATAGRAM: usize = 65_535;
/// Kernel receive buffer asked for on SIP sockets (Kamailio's losses come from 256 KiB).
const RCVBUF: usize = 8 << 20;
const SNDBUF: usize = 2 << 20;
/// Connections we keep at once; more are refused at accept.
const MAX_TCP_CONNECTIONS: usize = 4096;
/// A connection that sends nothing for this long is closed (phones send keep-alives).
const TCP_IDLE: Duration = Duration::from_secs(900);
/// Outgoing messages queued per connection before further ones are dropped.
const TCP_QUEUE: usize = 256;

/// A message (or datagram) that arrived.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes from a peer.
    Message { peer: Peer, bytes: Vec<u8> },
    /// A TCP connection is ready to carry messages to `addr`.
    Connected {
        addr: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// A TCP connection to `addr` closed.
    Closed { addr: SocketAddr },
}

/// The sockets of the SIP transports, owned by the core task for sending.
#[derive(Debug)]
pub struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    inbound: mpsc::Sender<Inbound>,
    tcp_slots: Arc<tokio::sync::Semaphore>,
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
        let tcp_slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
        for addr in listen {
            let sock = Arc::new(bind_udp(*addr)?);
            udp.push(sock.clone());
            tokio::spawn(read_udp(sock, inbound.clone()));
            let listener = bind_tcp(*addr)?;
            tokio::spawn(accept_tcp(listener, inbound.clone(), tcp_slots.clone()));
        }
        Ok(Transports {
            udp,
            tcp: HashMap::new(),
            inbound,
            tcp_slots,
            send_errors: 0,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Records a connection's writer (from [`Inbound::Connected`]).
    pub fn connected(&mut self, addr: SocketAddr, writer: mpsc::Sender<Vec<u8>>) {
        self.tcp.insert(addr, writer);
    }

    /// Forgets a closed connection.
    pub fn closed(&mut self, addr: SocketAddr) {
        self.tcp.remove(&addr);
    }

    /// Sends one message; UDP errors and full TCP queues are counted, never fatal.
    pub fn send(&mut self, dest: Peer, bytes: Vec<u8>) {
        match dest.transport {
            Transport::Udp => {
                let sock = self.udp.iter().find(|s| {
                    s.local_addr()
                        .is_ok_and(|a| a.is_ipv4() == dest.addr.is_ipv4())
                });
                let Some(sock) = sock else {
                    self.send_errors += 1;
                    return;
                };
                if sock.try_send_to(&bytes, dest.addr).is_err() {
                    // A full send buffer drops the datagram; SIP retransmits.
                    self.send_errors += 1;
                }
            }
            // TLS shares the connection table until the TLS transport lands.
            Transport::Tcp | Transport::Tls => {
                if let Some(writer) = self.tcp.get(&dest.addr) {
                    match writer.try_send(bytes) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => self.send_errors += 1,
                        Err(mpsc::error::TrySendError::Closed(b)) => {
                            self.tcp.remove(&dest.addr);
                            self.connect_and_send(dest.addr, b);
                        }
                    }
                } else {
                    self.connect_and_send(dest.addr, bytes);
                }
            }
        }
    }

    /// Opens a connection to a peer that has none (RFC 3261 §18.2.2: a new one to the
    /// same address) and sends `first` on it.
    fn connect_and_send(&mut self, addr: SocketAddr, first: Vec<u8>) {
        let Ok(permit) = self.tcp_slots.clone().try_acquire_owned() else {
            self.send_errors += 1;
            return;
        };
        let (writer, queue) = mpsc::channel(TCP_QUEUE);
        if writer.try_send(first).is_err() {
            return;
        }
        self.tcp.insert(addr, writer.clone());
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            let connect =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
            match connect {
                Ok(Ok(stream)) => {
                    run_connection(stream, addr, inbound, writer, queue).await;
                }
                _ => {
                    tracing::debug!(%addr, "TCP connect failed");
                    drop(queue);
                    let _ = inbound.send(Inbound::Closed { addr }).await;
                }
            }
            drop(permit);
        });
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

async fn read_udp(sock: Arc<UdpSocket>, inbound: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, addr)) => {
                let msg = Inbound::Message {
                    peer: Peer {
                        transport: Transport::Udp,
                        addr,
                    },
                    bytes: buf[..n].to_vec(),
                };
                if inbound.send(msg).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface as recv errors on Linux; they say nothing about us.
            Err(err) => tracing::trace!(%err, "udp recv"),
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let (writer, queue) = mpsc::channel(TCP_QUEUE);
            run_connection(stream, addr, inbound, writer, queue).await;
            drop(permit);
        });
    }
}

/// Reads framed messages from a connection and writes queued ones until either side ends.
async fn run_connection(
    stream: TcpStream,
    addr: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    writer: mpsc::Sender<Vec<u8>>,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let announce = inbound
        .send(Inbound::Connected {
            addr,
            writer: writer.clone(),
        })
        .await;
    if announce.is_err() {
        return;
    }
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = queue.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let peer = Peer {
        transport: Transport::Tcp,
        addr,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    'conn: loop {
        let read = tokio::time::timeout(TCP_IDLE, rd.read(&mut chunk)).await;
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match wire::next_frame(&buf) {
                Ok(Some(Frame::KeepAlive(n))) => {
                    buf.drain(..n);
                }
                Ok(Some(Frame::Message(n))) => {
                    let bytes: Vec<u8> = buf.drain(..n).collect();
                    if inbound
                        .send(Inbound::Message { peer, bytes })
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    // A stream whose framing is lost cannot be resynchronised: answer what
                    // can be answered and close it (RFC 3261 §18.3).
                    tracing::debug!(%addr, %err, "closing TCP connection with bad framing");
                    let end = buf.len().min(wire::MAX_MESSAGE);
                    if let Some(reply) = wire::reply_to_malformed(&buf[..end], &err) {
                        let _ = writer.send(reply).await;
                    }
                    drop(writer);
                    // Give the writer a moment to flush the error response.
                    let _ = tokio::time::timeout(Duration::from_millis(200), write_task).await;
                    let _ = inbound.send(Inbound::Closed { addr }).await;
                    return;
                }
            }
        }
    }
    drop(writer);
    write_task.abort();
    let _ = inbound.send(Inbound::Closed { addr }).await;
}
