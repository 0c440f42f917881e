//! Batched UDP for the SIP sockets: datagrams read with `recvmmsg` and sent with `sendmmsg`,
//! one system call per batch instead of one per message.
//!
//! The daemon's loop queues every datagram of a turn ([`UdpOut::push`]) and sends them in one
//! go at the end of the turn ([`UdpOut::flush`]): under load one `sendmmsg` carries dozens of
//! responses. The queue is bounded ([`MAX_QUEUED`]); a datagram beyond it is dropped and
//! counted, as a full socket buffer would (SIP retransmits).

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams per `sendmmsg` / `recvmmsg` call.
pub(super) const BATCH: usize = 64;
/// Datagrams queued for sending before further ones are dropped (one turn handles at most
/// the daemon's batch of inbound messages; a few responses each).
pub(super) const MAX_QUEUED: usize = 8_192;
/// Receive buffer per datagram in a `recvmmsg` batch: the largest SIP message accepted
/// over UDP (a longer one is cut, and the parser rejects it).
pub(super) const RECV_BUF: usize = 65_535;

/// One datagram waiting to be sent.
#[derive(Debug)]
struct Queued {
    /// Index of the socket (in the transports' UDP list) it leaves through.
    socket: usize,
    dest: SocketAddr,
    bytes: Vec<u8>,
}

/// Datagrams of one turn, sent with `sendmmsg` per socket.
#[derive(Debug)]
pub(super) struct UdpOut {
    queue: Vec<Queued>,
    headers: MultiHeaders<SockaddrStorage>,
}

/// What a flush achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flushed {
    /// Datagrams the kernel took.
    pub(super) sent: usize,
    /// Datagrams dropped (full send buffer, unreachable destination, queue over its cap).
    pub(super) dropped: usize,
}

impl UdpOut {
    /// An empty queue with its headers allocated once.
    pub(super) fn new() -> Self {
        UdpOut {
            queue: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Queues `bytes` for `dest` through socket `socket`; false when the queue is full (the
    /// datagram is dropped).
    pub(super) fn push(&mut self, socket: usize, dest: SocketAddr, bytes: Vec<u8>) -> bool {
        if self.queue.len() >= MAX_QUEUED {
            return false;
        }
        self.queue.push(Queued {
            socket,
            dest,
            bytes,
        });
        true
    }

    /// Datagrams waiting.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Sends everything queued: consecutive datagrams through the same socket go in one
    /// `sendmmsg` of up to [`BATCH`]. `fd` gives each socket's descriptor.
    pub(super) fn flush(&mut self, fd: impl Fn(usize) -> Option<RawFd>) -> Flushed {
        let mut out = Flushed::default();
        let mut start = 0;
        let queue = std::mem::take(&mut self.queue);
        while start < queue.len() {
            let socket = queue[start].socket;
            let end = queue[start..]
                .iter()
                .take(BATCH)
                .take_while(|q| q.socket == socket)
                .count()
                + start;
            let Some(fd) = fd(socket) else {
                out.dropped += end - start;
                start = end;
                continue;
            };
            match send_many(&mut self.headers, fd, &queue[start..end]) {
                Ok(n) if n > 0 => {
                    out.sent += n;
                    start += n;
                }
                // Nothing taken: the first datagram is dropped (full buffer, refused
                // destination) and the rest tried again.
                Ok(_) | Err(_) => {
                    out.dropped += 1;
                    start += 1;
                }
            }
        }
        // The allocation is kept for the next turn, unless a burst grew it far beyond a
        // batch.
        let mut queue = queue;
        queue.clear();
        if queue.capacity() > BATCH * 16 {
            queue.shrink_to(BATCH);
        }
        self.queue = queue;
        out
    }
}

/// One `sendmmsg` of `batch` (at most [`BATCH`]); how many the kernel took.
fn send_many(
    headers: &mut MultiHeaders<SockaddrStorage>,
    fd: RawFd,
    batch: &[Queued],
) -> nix::Result<usize> {
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|q| [IoSlice::new(&q.bytes)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|q| Some(SockaddrStorage::from(q.dest)))
        .collect();
    loop {
        match sendmmsg(fd, headers, &iovs, &addrs, [], MsgFlags::MSG_DONTWAIT) {
            Ok(results) => return Ok(results.count()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Buffers for `recvmmsg` on one SIP socket.
#[derive(Debug)]
pub(super) struct UdpIn {
    bufs: Vec<Vec<u8>>,
    /// (source, length) of each datagram of the last batch.
    got: Vec<(SocketAddr, usize)>,
}

impl UdpIn {
    /// Buffers for `n` datagrams per call (at most [`BATCH`]).
    pub(super) fn new(n: usize) -> Self {
        let n = n.clamp(1, BATCH);
        UdpIn {
            bufs: vec![vec![0u8; RECV_BUF]; n],
            got: Vec::with_capacity(n),
        }
    }

    /// Reads what is waiting (without blocking) and calls `each(source, bytes)` per
    /// datagram; returns how many were read (`EAGAIN` when none).
    pub(super) fn receive(
        &mut self,
        fd: RawFd,
        mut each: impl FnMut(SocketAddr, &[u8]),
    ) -> nix::Result<usize> {
        self.got.clear();
        {
            // The headers hold raw pointers (not Send): made per call, never kept across
            // the reader task's awaits.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(self.bufs.len(), None);
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            let results = recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )?;
            for msg in results {
                let src = msg.address.as_ref().and_then(socket_addr);
                self.got.push((
                    src.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    msg.bytes,
                ));
            }
        }
        for (i, &(src, len)) in self.got.iter().enumerate() {
            if len > 0 && src.port() != 0 {
                each(src, &self.bufs[i][..len.min(RECV_BUF)]);
            }
        }
        Ok(self.got.len())
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
