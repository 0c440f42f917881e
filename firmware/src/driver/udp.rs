//! Batched UDP for the SIP sockets: datagrams read with `recvmmsg` and sent with `sendmmsg`,
//! one system call per batch instead of one per message.
//!
//! Each datagram read carries the kernel's receive time (`SO_TIMESTAMPNS`), turned into an
//! [`Instant`] once per batch: the time a request spent in the socket's receive buffer counts
//! towards its wait, which is what the daemon's load shedding judges (`daemon::shed`).
//!
//! The daemon's loop queues every datagram of a turn ([`UdpOut::push`]) and sends them in one
//! go at the end of the turn ([`UdpOut::flush`]): under load one `sendmmsg` carries dozens of
//! responses. The queue is bounded ([`MAX_QUEUED`]); a datagram beyond it is dropped and
//! counted, as a full socket buffer would (SIP retransmits).

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage,
};
use nix::sys::time::TimeSpec;

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
    /// (source, length, kernel receive time) of each datagram of the last batch.
    got: Vec<(SocketAddr, usize, Option<Duration>)>,
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

    /// Reads what is waiting (without blocking) and calls `each(source, bytes, received)`
    /// per datagram, `received` being when the kernel took it (the socket has
    /// `SO_TIMESTAMPNS`; without a stamp, the time of this read); returns how many were
    /// read (`EAGAIN` when none).
    pub(super) fn receive(
        &mut self,
        fd: RawFd,
        mut each: impl FnMut(SocketAddr, &[u8], Instant),
    ) -> nix::Result<usize> {
        self.got.clear();
        {
            // The headers hold raw pointers (not Send): made per call, never kept across
            // the reader task's awaits.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                self.bufs.len(),
                Some(nix::cmsg_space!(TimeSpec)),
            );
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
                let stamp = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmTimestampns(ts) => Some(Duration::from(ts)),
                        _ => None,
                    })
                });
                self.got.push((
                    src.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    msg.bytes,
                    stamp,
                ));
            }
        }
        // One reading of each clock per batch: the kernel stamps wall time, the daemon
        // compares monotonic instants.
        let (mono, wall) = (Instant::now(), wall_since_epoch());
        for (i, &(src, len, stamp)) in self.got.iter().enumerate() {
            if len > 0 && src.port() != 0 {
                let received = received_at(mono, wall, stamp);
                each(src, &self.bufs[i][..len.min(RECV_BUF)], received);
            }
        }
        Ok(self.got.len())
    }
}

/// The wall clock as time since the Unix epoch (zero before it: a box without time).
fn wall_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Longest wait believed from a kernel stamp: an older one means the wall clock was set
/// back or forward while the datagram waited, so its age says nothing; it counts as just
/// received. Far above any wait the bounded queues allow.
const MAX_BELIEVED_WAIT: Duration = Duration::from_secs(60);

/// The monotonic instant at which a datagram stamped `stamp` (wall time) was received,
/// given both clocks read together (`mono`, `wall`). A stamp in the future (the wall clock
/// was set back) or implausibly old counts as received at `mono`.
fn received_at(mono: Instant, wall: Duration, stamp: Option<Duration>) -> Instant {
    stamp
        .and_then(|s| wall.checked_sub(s))
        .filter(|waited| *waited <= MAX_BELIEVED_WAIT)
        .and_then(|waited| mono.checked_sub(waited))
        .unwrap_or(mono)
}

/// A kernel socket address as a std one (IPv4 and IPv6 only).
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_kernel_stamp_becomes_the_instant_it_was_received() {
        let mono = Instant::now();
        let wall = Duration::from_secs(1_800_000_000);
        let waited = Duration::from_millis(1_500);
        assert_eq!(received_at(mono, wall, Some(wall - waited)), mono - waited);
        assert_eq!(received_at(mono, wall, None), mono, "no stamp: now");
        // The wall clock moved while the datagram waited: its age is not believed.
        assert_eq!(received_at(mono, wall, Some(wall + waited)), mono);
        assert_eq!(
            received_at(mono, wall, Some(wall - Duration::from_secs(3_600))),
            mono
        );
    }

    #[test]
    fn a_datagram_that_waited_in_the_socket_buffer_is_stamped_when_it_arrived() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"OPTIONS", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut io = UdpIn::new(4);
        let mut got = Vec::new();
        let n = io
            .receive(rx.as_raw_fd(), |src, bytes, at| {
                got.push((src, bytes.to_vec(), at))
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(got[0].0, tx.local_addr().unwrap());
        assert_eq!(got[0].1, b"OPTIONS");
        let waited = got[0].2.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
            "the wait in the socket buffer counts: {waited:?}"
        );
    }
}
