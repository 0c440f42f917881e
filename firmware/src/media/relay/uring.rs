//! The relay's io_uring back end: one ring carries the receives of every socket of the range
//! and every forwarded send, so one `io_uring_enter` moves the datagrams of many sockets.
//!
//! Why: at 50 packets/s per leg a socket rarely holds more than one datagram when epoll
//! reports it, so `recvmmsg`/`sendmmsg` batch nothing and the epoll back end pays one
//! receive and one send system call per packet. Here each socket has one multishot
//! `recvmsg` armed for good; the kernel picks a buffer from a provided-buffer ring when a
//! datagram arrives and posts a completion. The engine copies the datagram into a send slot
//! (the receive buffer goes straight back to the ring), runs it through the table, and
//! queues a `sendmsg` from that slot; the sends go to the kernel with the next wait, which
//! also collects the next receives.
//!
//! Memory, fixed at start: [`RECV_BUFFERS`] receive buffers of [`RECV_BUF_SIZE`] bytes
//! (2.1 MiB), [`SEND_SLOTS`] send slots of about 2.2 KiB (2.2 MiB), the submission and
//! completion rings ([`SQ_ENTRIES`] × 64 B, [`CQ_ENTRIES`] × 16 B: 0.5 MiB). When every send
//! slot is in flight, a datagram is sent with a plain `sendto` instead; when the kernel runs
//! out of receive buffers, the sockets' receives end (`ENOBUFS`, the datagrams stay queued in
//! the socket) and are armed again once buffers are back.
//!
//! Needs Linux 6.1 (multishot `recvmsg` from 6.0, deferred task work from 6.1); where the
//! ring cannot be set up (older kernel, `kernel.io_uring_disabled`, a seccomp filter) the
//! relay runs its epoll back end instead.

use std::alloc::{self, Layout as AllocLayout};
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use nix::libc;
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use pbx_core::media::session::Leg;

use super::udp::BUF_LEN;

/// Receive buffers in the provided-buffer ring (a power of two, at most 32768).
pub(super) const RECV_BUFFERS: u16 = 1024;
/// The name field reserved in front of each datagram: room for an IPv6 socket address.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_in6>();
/// The kernel's header in front of a multishot datagram (`struct io_uring_recvmsg_out`).
const RECVMSG_OUT_LEN: usize = 16;
/// One receive buffer: header, name, and a datagram of up to `BUF_LEN` bytes (longer ones
/// arrive truncated and are dropped as malformed, as on the epoll back end).
pub(super) const RECV_BUF_SIZE: usize = RECVMSG_OUT_LEN + NAME_LEN + BUF_LEN;
/// `RECV_BUF_SIZE` as the kernel's buffer length (2,092 bytes: fits).
#[allow(clippy::cast_possible_truncation)]
const BUF_SIZE_U32: u32 = RECV_BUF_SIZE as u32;
/// Sends in flight at most (each holds its datagram until the kernel reports it sent).
/// As many as receive buffers: the kernel fills buffers only while the relay waits, so one
/// pass never receives more than `RECV_BUFFERS` datagrams, and the sends of the previous
/// pass complete (their completions come first) during that wait.
pub(super) const SEND_SLOTS: usize = RECV_BUFFERS as usize;
/// Submission queue entries.
pub(super) const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries; beyond them the kernel keeps completions on its overflow list.
pub(super) const CQ_ENTRIES: u32 = 16384;
/// Completions taken from the ring per pass.
pub(super) const REAP: usize = 256;
/// The provided-buffer group of the receive buffers.
const BGID: u16 = 0;

/// What a completion is for, in the top byte of its `user_data`.
const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 0;
const KIND_SEND: u64 = 1;
const KIND_WAKE: u64 = 2;
const INDEX_MASK: u64 = (1 << KIND_SHIFT) - 1;

/// A completion, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Completion {
    /// A datagram (or the end of the multishot receive) on socket `token`.
    Received {
        token: usize,
        result: i32,
        flags: u32,
    },
    /// The send from slot `slot` finished (`result` < 0: the kernel refused it).
    Sent { slot: usize, result: i32 },
    /// The command waker's poll fired.
    Wake,
}

/// What a send slot's datagram is, to count it once sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct SentMeta {
    /// The session's slot in the table, and the leg that receives it.
    pub(super) session: u32,
    pub(super) to: Leg,
    pub(super) len: usize,
    pub(super) rtp: bool,
}

/// A datagram copied out of a receive buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Copied {
    pub(super) len: usize,
    pub(super) src: Option<SocketAddr>,
    pub(super) truncated: bool,
}

/// One send in flight: the datagram and the message header pointing at it.
struct SendSlot {
    buf: [u8; BUF_LEN],
    iov: libc::iovec,
    addr: SockaddrStorage,
    msg: libc::msghdr,
    meta: SentMeta,
}

/// A page-aligned, zeroed allocation (the provided-buffer ring must be page-aligned).
struct Aligned {
    ptr: NonNull<u8>,
    layout: AllocLayout,
}

impl Aligned {
    fn new(size: usize, align: usize) -> io::Result<Self> {
        let layout = AllocLayout::from_size_align(size, align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (the ring has at least one entry).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Aligned { ptr, layout })
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, and freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The ring, its buffers and the sends in flight. Lives on the relay thread only (the ring
/// is set up for a single issuer).
pub(super) struct Uring {
    // Field order matters for drop: the ring is closed before the memory it points at is
    // freed (see `Drop`).
    ring: IoUring,
    /// The provided-buffer ring: `RECV_BUFFERS` descriptors the kernel takes buffers from.
    buf_ring: Aligned,
    /// The receive buffers, `RECV_BUFFERS` × `RECV_BUF_SIZE` bytes.
    bufs: Box<[u8]>,
    /// Our copy of the buffer ring's tail (the kernel reads the shared one).
    tail: u16,
    /// The header every multishot receive was armed with (only its name and control
    /// lengths matter); boxed so its address stays put.
    recv_msg: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    free: Vec<usize>,
    /// Sockets whose multishot receive ended, to arm again before the next wait.
    rearm: Vec<usize>,
    /// Sends queued since the last submission.
    queued_sends: usize,
    fds: Vec<RawFd>,
    /// The epoll descriptor that holds only the command waker.
    wake_fd: RawFd,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("sockets", &self.fds.len())
            .field("free_slots", &self.free.len())
            .finish_non_exhaustive()
    }
}

impl Uring {
    /// Sets up the ring for sockets `fds` (socket `i` reports as token `i`) and arms a
    /// receive on each, and a poll on `wake_fd` (the epoll descriptor of the command waker).
    /// Fails if the kernel lacks what the back end needs.
    pub(super) fn new(fds: Vec<RawFd>, wake_fd: RawFd) -> io::Result<Self> {
        let release = nix::sys::utsname::uname()?;
        if !kernel_at_least(&release.release().to_string_lossy(), 6, 1) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Linux older than 6.1 (multishot recvmsg, deferred task work)",
            ));
        }
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(SQ_ENTRIES)?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without EXT_ARG or NODROP (Linux < 5.11)",
            ));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::RecvMsg::CODE) || !probe.is_supported(opcode::SendMsg::CODE)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without recvmsg/sendmsg",
            ));
        }
        let ring_bytes = usize::from(RECV_BUFFERS) * mem::size_of::<BufRingEntry>();
        let buf_ring = Aligned::new(ring_bytes, 4096)?;
        let bufs = vec![0u8; usize::from(RECV_BUFFERS) * RECV_BUF_SIZE].into_boxed_slice();
        // SAFETY: `buf_ring` is page-aligned, holds RECV_BUFFERS entries, and outlives the
        // registration: it is unregistered in `Drop` before the allocation is freed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.ptr.as_ptr() as u64,
                RECV_BUFFERS,
                BGID,
                0,
            )?;
        }
        // SAFETY: msghdr is a plain C struct for which all zeroes is a valid value.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        // 28 bytes: fits.
        recv_msg.msg_namelen = libc::socklen_t::try_from(NAME_LEN).unwrap_or(28);
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                buf: [0; BUF_LEN],
                // SAFETY: plain C structs for which all zeroes is a valid value; the
                // pointers are set when the slot is queued.
                iov: unsafe { mem::zeroed() },
                addr: SockaddrStorage::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                // SAFETY: as above.
                msg: unsafe { mem::zeroed() },
                meta: SentMeta {
                    session: 0,
                    to: Leg::A,
                    len: 0,
                    rtp: false,
                },
            })
            .collect();
        let mut uring = Uring {
            ring,
            buf_ring,
            bufs,
            tail: 0,
            recv_msg,
            slots,
            free: (0..SEND_SLOTS).rev().collect(),
            rearm: Vec::with_capacity(fds.len()),
            queued_sends: 0,
            fds,
            wake_fd,
        };
        for bid in 0..RECV_BUFFERS {
            uring.recycle(bid);
        }
        // The first receive alone: a kernel without multishot recvmsg fails it at once.
        if let Some(&first) = uring.fds.first() {
            uring.push(uring.recv_entry(0, first))?;
            uring.ring.submitter().submit()?;
            if let Some(cqe) = uring.ring.completion().next() {
                if cqe.result() < 0 {
                    return Err(io::Error::from_raw_os_error(-cqe.result()));
                }
            }
        }
        for token in 1..uring.fds.len() {
            uring.push(uring.recv_entry(token, uring.fds[token]))?;
        }
        uring.arm_wake()?;
        uring.ring.submitter().submit()?;
        Ok(uring)
    }

    /// Submits what is queued and waits up to `timeout` for a completion beyond those of
    /// the sends just submitted; returns whether sends went out with this call. The caller
    /// reaps every completion before waiting again.
    pub(super) fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        self.arm_ended()?;
        let sends = mem::take(&mut self.queued_sends);
        // UDP sends complete during the submission: waiting for one completion more than
        // they post makes one system call both send and sleep until the next datagram.
        let want = sends.saturating_add(1);
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        let sends = sends > 0;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(sends),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or completions to reap first (EBUSY).
                Some(libc::ETIME | libc::EINTR | libc::EBUSY) => Ok(sends),
                _ => Err(e),
            },
        }
    }

    /// Moves up to [`REAP`] completions into `out`.
    pub(super) fn reap(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        for cqe in self.ring.completion().take(REAP) {
            let data = cqe.user_data();
            let index = usize::try_from(data & INDEX_MASK).unwrap_or(usize::MAX);
            out.push(match data >> KIND_SHIFT {
                KIND_RECV => Completion::Received {
                    token: index,
                    result: cqe.result(),
                    flags: cqe.flags(),
                },
                KIND_SEND => Completion::Sent {
                    slot: index,
                    result: cqe.result(),
                },
                _ => Completion::Wake,
            });
        }
    }

    /// After a receive completion on `token`: arms the socket again if its receive ended
    /// (no `IORING_CQE_F_MORE`).
    pub(super) fn receive_ended(&mut self, token: usize, flags: u32) {
        if !cqueue::more(flags) {
            self.rearm.push(token);
        }
    }

    /// The buffer a receive completion carries, if any.
    pub(super) fn buffer_of(flags: u32) -> Option<u16> {
        cqueue::buffer_select(flags)
    }

    /// A free send slot, if any.
    pub(super) fn take_slot(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// Returns a slot that will not be sent.
    pub(super) fn free_slot(&mut self, slot: usize) {
        self.free.push(slot);
    }

    /// Copies the datagram of buffer `bid` (`result` bytes filled by the kernel) into `dst`
    /// and gives the buffer back to the kernel.
    pub(super) fn copy_out(&mut self, bid: u16, result: usize, dst: &mut [u8]) -> Copied {
        let copied = copy_datagram(&self.bufs, &self.recv_msg, bid, result, dst);
        self.recycle(bid);
        copied
    }

    /// Like [`Uring::copy_out`], into the buffer of send slot `slot`.
    pub(super) fn copy_into_slot(&mut self, bid: u16, result: usize, slot: usize) -> Copied {
        let copied = copy_datagram(
            &self.bufs,
            &self.recv_msg,
            bid,
            result,
            &mut self.slots[slot].buf,
        );
        self.recycle(bid);
        copied
    }

    /// The buffer of send slot `slot`.
    pub(super) fn slot_buf(&mut self, slot: usize) -> &mut [u8; BUF_LEN] {
        &mut self.slots[slot].buf
    }

    /// Queues the send of `slot`'s first `meta.len` bytes through socket `socket` to
    /// `dest`.
    pub(super) fn send(
        &mut self,
        slot: usize,
        socket: usize,
        dest: SocketAddr,
        meta: SentMeta,
    ) -> io::Result<()> {
        let Some(&fd) = self.fds.get(socket) else {
            self.free_slot(slot);
            return Ok(());
        };
        let s = &mut self.slots[slot];
        s.addr = SockaddrStorage::from(dest);
        s.meta = meta;
        s.iov = libc::iovec {
            iov_base: s.buf.as_mut_ptr().cast(),
            iov_len: meta.len.min(BUF_LEN),
        };
        s.msg.msg_name = s.addr.as_ptr().cast_mut().cast();
        s.msg.msg_namelen = s.addr.len();
        s.msg.msg_iov = &raw mut s.iov;
        s.msg.msg_iovlen = 1;
        let entry = opcode::SendMsg::new(Fd(fd), &raw const s.msg)
            .build()
            .user_data(KIND_SEND << KIND_SHIFT | slot as u64);
        match self.push(entry) {
            Ok(()) => {
                self.queued_sends += 1;
                Ok(())
            }
            Err(e) => {
                self.free_slot(slot);
                Err(e)
            }
        }
    }

    /// What slot `slot` carried, and frees it (its send completed).
    pub(super) fn sent(&mut self, slot: usize) -> Option<SentMeta> {
        let meta = self.slots.get(slot)?.meta;
        self.free.push(slot);
        Some(meta)
    }

    /// Arms the poll on the waker's epoll descriptor again (it is one-shot).
    pub(super) fn arm_wake(&mut self) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(self.wake_fd), libc::POLLIN as u32)
            .build()
            .user_data(KIND_WAKE << KIND_SHIFT);
        self.push(entry)
    }

    fn recv_entry(&self, token: usize, fd: RawFd) -> squeue::Entry {
        opcode::RecvMsgMulti::new(Fd(fd), &raw const *self.recv_msg, BGID)
            .build()
            .user_data(KIND_RECV << KIND_SHIFT | token as u64)
    }

    fn arm_ended(&mut self) -> io::Result<()> {
        while let Some(token) = self.rearm.pop() {
            if let Some(&fd) = self.fds.get(token) {
                self.push(self.recv_entry(token, fd))?;
            }
        }
        Ok(())
    }

    /// Queues an entry, submitting what is queued first when the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in the entries built here (message headers, buffers,
            // addresses) points into memory this struct owns and keeps in place until the
            // operation completes or the ring is closed.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submitter().submit() {
                // The sends queued so far are submitted; their completions are reaped in
                // this pass, so the next wait must not count on them.
                Ok(_) => self.queued_sends = 0,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue overflowed: the caller reaps, then retries.
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands receive buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        let mask = RECV_BUFFERS - 1;
        let base = self.buf_ring.ptr.as_ptr().cast::<BufRingEntry>();
        let addr = self.bufs[usize::from(bid) * RECV_BUF_SIZE..].as_ptr() as u64;
        // SAFETY: `base` points at RECV_BUFFERS entries (see `new`) and the index is masked
        // into range; the kernel reads entries only up to the tail published below.
        unsafe {
            let entry = &mut *base.add(usize::from(self.tail & mask));
            entry.set_addr(addr);
            entry.set_len(BUF_SIZE_U32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies inside the first entry, which lives as long as
        // `buf_ring`; the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(base).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // No buffer may be picked after this; then the ring closes (field order) and only
        // then the buffers are freed.
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}

/// Copies the datagram in receive buffer `bid` (`result` bytes filled by the kernel) into
/// `dst`: its payload, source and whether it was cut.
fn copy_datagram(
    bufs: &[u8],
    recv_msg: &libc::msghdr,
    bid: u16,
    result: usize,
    dst: &mut [u8],
) -> Copied {
    let start = usize::from(bid) * RECV_BUF_SIZE;
    let filled = result.min(RECV_BUF_SIZE);
    let Some(buf) = bufs.get(start..start + filled) else {
        return Copied {
            len: 0,
            src: None,
            truncated: true,
        };
    };
    match io_uring::types::RecvMsgOut::parse(buf, recv_msg) {
        Ok(out) => {
            let payload = out.payload_data();
            let len = payload.len().min(dst.len());
            dst[..len].copy_from_slice(&payload[..len]);
            Copied {
                len,
                src: if out.is_name_data_truncated() {
                    None
                } else {
                    parse_name(out.name_data())
                },
                truncated: out.is_payload_truncated() || len < payload.len(),
            }
        }
        Err(()) => Copied {
            len: 0,
            src: None,
            truncated: true,
        },
    }
}

/// Whether a kernel release string ("6.18.44-fc", "5.10.0") is at least `major.minor`.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// A socket address as the kernel wrote it into a receive buffer (IPv4 or IPv6).
fn parse_name(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*name.first()?, *name.get(1)?]));
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    if family == libc::AF_INET {
        let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
        return Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)));
    }
    if family == libc::AF_INET6 {
        let flowinfo = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
        return Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flowinfo,
            scope,
        )));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare_by_major_then_minor() {
        assert!(kernel_at_least("6.18.44-fc-v1300", 6, 1));
        assert!(kernel_at_least("6.1.0-13-arm64", 6, 1));
        assert!(!kernel_at_least("6.0.19", 6, 1));
        assert!(!kernel_at_least("5.19.17", 6, 1));
        assert!(kernel_at_least("7.0", 6, 1));
        assert!(!kernel_at_least("garbage", 6, 1));
    }

    #[test]
    fn names_of_both_families_parse_and_others_do_not() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&4000u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(parse_name(&v4), Some("192.0.2.7:4000".parse().unwrap()));

        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&6000u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(parse_name(&v6), Some("[2001:db8::5]:6000".parse().unwrap()));

        assert_eq!(parse_name(&[]), None);
        assert_eq!(parse_name(&v6[..10]), None, "a cut IPv6 name");
        let mut unix = [0u8; 28];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse_name(&unix), None);
    }
}
