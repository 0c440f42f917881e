//! The relay's system calls: binding the port range, the open-file limit, and batched
//! datagram I/O (`recvmmsg`/`sendmmsg`) into preallocated buffers, so nothing on the packet
//! path allocates.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use mio::net::UdpSocket;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use pbx_core::media::session::Leg;
use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams read per `recvmmsg` call (and the most sent per `sendmmsg` call).
pub(super) const BATCH: usize = 32;
/// Size of one receive buffer; a longer datagram is truncated and dropped as malformed.
pub(super) const BUF_LEN: usize = 2048;
/// Requested SO_RCVBUF / SO_SNDBUF per socket (the kernel caps it at `[rw]mem_max`).
const SOCKET_BUFFER: usize = 512 * 1024;
/// File descriptors kept free for the rest of the daemon when checking the limit.
const FD_MARGIN: u64 = 64;

/// A datagram read by the last `recvmmsg`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Received {
    pub(super) len: usize,
    pub(super) src: Option<SocketAddr>,
    pub(super) truncated: bool,
}

/// A datagram waiting in `Io::bufs` to be sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outgoing {
    pub(super) socket: usize,
    pub(super) dest: SocketAddr,
    /// Index of its buffer in `Io::bufs`.
    pub(super) buf: usize,
    pub(super) len: usize,
    /// The session's slot, and the leg and kind, to count it once sent.
    pub(super) slot: u32,
    pub(super) to: Leg,
    pub(super) rtp: bool,
}

/// Preallocated buffers and message headers for batched I/O.
#[derive(Debug)]
pub(super) struct Io {
    pub(super) bufs: Box<[[u8; BUF_LEN]; BATCH]>,
    pub(super) received: [Received; BATCH],
    /// Per address family: the kernel shrinks `msg_namelen` to the last sender's length.
    recv_headers: [MultiHeaders<SockaddrStorage>; 2],
    send_headers: MultiHeaders<SockaddrStorage>,
    pub(super) out: [Outgoing; BATCH],
    pub(super) out_len: usize,
}

impl Io {
    /// Buffers and headers for one batch each way.
    pub(super) fn new() -> Self {
        let bufs = vec![[0u8; BUF_LEN]; BATCH]
            .into_boxed_slice()
            .try_into()
            .expect("the vector has BATCH elements");
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Io {
            bufs,
            received: [Received::default(); BATCH],
            recv_headers: [
                MultiHeaders::preallocate(BATCH, None),
                MultiHeaders::preallocate(BATCH, None),
            ],
            send_headers: MultiHeaders::preallocate(BATCH, None),
            out: [Outgoing {
                socket: 0,
                dest: unspecified,
                buf: 0,
                len: 0,
                slot: 0,
                to: Leg::A,
                rtp: false,
            }; BATCH],
            out_len: 0,
        }
    }

    /// Reads up to [`BATCH`] datagrams; returns how many.
    pub(super) fn receive(&mut self, fd: RawFd, v6: bool) -> nix::Result<usize> {
        let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
        let headers = &mut self.recv_headers[usize::from(v6)];
        let results = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::empty(), None)?;
        let mut n = 0;
        for (slot, msg) in self.received.iter_mut().zip(results) {
            *slot = Received {
                len: msg.bytes,
                src: msg.address.as_ref().and_then(socket_addr),
                truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            };
            n += 1;
        }
        Ok(n)
    }

    /// Sends `out[start..end]` (all through one socket) with one `sendmmsg`; returns how
    /// many the kernel took.
    pub(super) fn send_many(&mut self, fd: RawFd, start: usize, end: usize) -> nix::Result<usize> {
        let out = &self.out[start..end];
        let bufs = &self.bufs;
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|j| {
            [IoSlice::new(
                out.get(j).map_or(&[][..], |o| &bufs[o.buf][..o.len]),
            )]
        });
        let addrs: [Option<SockaddrStorage>; BATCH] =
            std::array::from_fn(|j| out.get(j).map(|o| SockaddrStorage::from(o.dest)));
        let n = out.len();
        let results = sendmmsg(
            fd,
            &mut self.send_headers,
            &iovs[..n],
            &addrs[..n],
            [],
            MsgFlags::empty(),
        )?;
        Ok(results.count())
    }
}

/// A kernel socket address as a std one (IPv4 and IPv6 only).
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and checks the range fits.
pub(super) fn raise_fd_limit(ports: usize, naddrs: usize) -> io::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("RTP relay: cannot raise the open-file limit to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let needed = u64::try_from(ports * naddrs).unwrap_or(u64::MAX);
    if needed.saturating_add(FD_MARGIN) > soft {
        return Err(io::Error::other(format!(
            "RTP relay needs {needed} sockets ({ports} ports on {naddrs} addresses) but the \
             open-file limit is {soft}"
        )));
    }
    Ok(())
}

/// A non-blocking UDP socket on `addr`, with enlarged buffers; errors name the address.
pub(super) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let named =
        |e: io::Error| io::Error::new(e.kind(), format!("RTP relay cannot bind UDP {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(named)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(named)?;
    }
    // Best effort: the kernel silently caps these at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true).map_err(named)?;
    socket.bind(&addr.into()).map_err(named)?;
    Ok(UdpSocket::from_std(socket.into()))
}
