//! The relay thread's I/O engine: a loop over every socket of the range that reads
//! datagrams, runs each through the pure [`SessionTable`], sends what it answers, and runs
//! the timers (prompt frames, media timeouts, stats publication).
//!
//! Two back ends move the datagrams. io_uring (`uring`), where the kernel has it: every
//! socket's receive stays armed in one ring and each wait submits the forwards queued since
//! the last one, so a wake-up costs one system call however many sockets it serves. Each
//! wake-up, in order: commands; completions in the order the kernel posted them (a datagram
//! is forwarded through a queued send, a finished send is counted); then the timers as
//! below. Otherwise epoll (mio) with `recvmmsg`/`sendmmsg`, described next.
//!
//! Each epoll wake-up, in order: commands from the daemon and loaded playlists (so a packet sent
//! after an `Open` finds its session); sockets left over from the last wake-up, then those
//! epoll reports readable, each read at most [`BATCHES_PER_WAKE`] batches so a flood on one
//! port cannot starve the others or the timers; prompt frames that are due; recordings that
//! filled up; every [`TICK`] the media timeouts; every [`PUBLISH_EVERY`] the counters. The
//! table's outputs are delivered after each of these steps, in the order they arose.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Poll, Token};
use pbx_core::media::session::{LegStats, MediaCommand, MediaEvent, SessionId};
use tokio::sync::mpsc as tokio_mpsc;

use super::fast::FastWorker;
use super::output::Output;
use super::ports::Layout;
use super::table::{Datagram, SessionTable};
use super::udp::{Io, Outgoing, BATCH};
use super::uring::{Completion, SentMeta, Uring};
use super::RelayIo;
use crate::media::files::{FileWorker, Loaded};

/// Batches read from one socket per wake-up before the loop serves the others.
const BATCHES_PER_WAKE: usize = 8;
/// Housekeeping period: media timeouts are checked this often.
const TICK: Duration = Duration::from_millis(200);
/// How often the stats snapshot and counters are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Readiness events taken from epoll per wait.
const POLL_EVENTS: usize = 1024;
/// Token of the command waker; sockets use their index.
pub(super) const WAKER: Token = Token(usize::MAX);

/// Counters of the relay as a whole, published once per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Datagrams that arrived on a port no session owns.
    pub unassigned: u64,
    /// System calls that returned datagrams (`recvmmsg`; with io_uring, waits that
    /// collected at least one).
    pub recv_calls: u64,
    /// Datagrams read.
    pub packets_received: u64,
    /// System calls that sent (`sendmmsg` / `sendto`; with io_uring, waits that submitted
    /// sends, plus the `sendto` of prompt frames).
    pub send_calls: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams the kernel refused to send (full socket buffer, unreachable network).
    pub send_errors: u64,
    /// Events dropped because the daemon did not drain the event channel.
    pub events_lost: u64,
}

/// What the relay thread publishes for other threads.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) snapshot: Mutex<HashMap<SessionId, (LegStats, LegStats)>>,
    pub(super) counters: Mutex<RelayCounters>,
    pub(super) unassigned: AtomicU64,
    /// The relay thread runs the io_uring back end.
    pub(super) uring: AtomicBool,
    /// The kernel fast path: `None` off, `Ok(directions in the kernel)`, `Err(why it stopped)`.
    pub(super) fast: Mutex<Option<Result<usize, String>>>,
}

/// A message to the relay thread.
#[derive(Debug)]
pub(super) enum Control {
    /// Media commands, in order (those of one inbound message: one wake-up for all).
    Batch(Vec<MediaCommand>),
    /// The file thread resolved a playlist.
    Loaded(Loaded),
    /// The kernel fast-path thread's counts and releases.
    Fast(super::fast::FastReport),
    Shutdown,
}

/// The session a command is about.
fn command_session(cmd: &MediaCommand) -> SessionId {
    match cmd {
        MediaCommand::Open { session, .. }
        | MediaCommand::Update { session, .. }
        | MediaCommand::Close { session }
        | MediaCommand::Play { session, .. }
        | MediaCommand::StopPlay { session, .. }
        | MediaCommand::Record { session, .. }
        | MediaCommand::StopRecord { session, .. }
        | MediaCommand::Join { session, .. }
        | MediaCommand::Leave { session, .. } => *session,
    }
}

/// The bounded event channel to the daemon; full means the event is dropped and counted.
#[derive(Debug)]
struct EventSink {
    tx: tokio_mpsc::Sender<MediaEvent>,
    lost: u64,
}

impl EventSink {
    fn emit(&mut self, event: MediaEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(tokio_mpsc::error::TrySendError::Full(_)) => self.lost += 1,
            // The daemon stopped listening (or never took the receiver): nothing to do.
            Err(tokio_mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// What [`Engine::new`] is built from: the bound range and the channels around the thread.
#[derive(Debug)]
pub(super) struct Parts {
    /// Every socket of the range registered, socket `i` under `Token(i)`.
    pub(super) poll: Poll,
    pub(super) sockets: Vec<UdpSocket>,
    /// Per bound address: whether it is IPv6.
    pub(super) addr_is_v6: Vec<bool>,
    pub(super) table: SessionTable,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) events: tokio_mpsc::Sender<MediaEvent>,
    pub(super) shared: Arc<Shared>,
    pub(super) files: FileWorker,
    pub(super) io: RelayIo,
    /// The kernel fast-path thread, when it runs.
    pub(super) fast: Option<FastWorker>,
}

/// Everything the relay thread owns.
#[derive(Debug)]
pub(super) struct Engine {
    poll: Poll,
    sockets: Vec<UdpSocket>,
    layout: Layout,
    addr_is_v6: Vec<bool>,
    table: SessionTable,
    control: mpsc::Receiver<Control>,
    sink: EventSink,
    shared: Arc<Shared>,
    /// Origin of the microsecond clock the jitter estimates run on.
    epoch: Instant,
    io: Io,
    /// Sockets that hit their per-wake budget and still have data.
    pending: Vec<usize>,
    pending_work: Vec<usize>,
    counters: RelayCounters,
    files: FileWorker,
    io_choice: RelayIo,
    /// Completions of the current io_uring pass (preallocated).
    completions: Vec<Completion>,
    fast: Option<FastWorker>,
    /// Sessions the current command batches touched (fast path only).
    touched: Vec<SessionId>,
}

impl Engine {
    /// The engine; built on the relay thread (the I/O headers hold raw pointers, not Send).
    pub(super) fn new(parts: Parts) -> Self {
        Engine {
            poll: parts.poll,
            sockets: parts.sockets,
            layout: *parts.table.layout(),
            addr_is_v6: parts.addr_is_v6,
            table: parts.table,
            control: parts.control,
            sink: EventSink {
                tx: parts.events,
                lost: 0,
            },
            shared: parts.shared,
            epoch: Instant::now(),
            io: Io::new(),
            pending: Vec::with_capacity(64),
            pending_work: Vec::with_capacity(64),
            counters: RelayCounters::default(),
            files: parts.files,
            io_choice: parts.io,
            completions: Vec::with_capacity(super::uring::REAP),
            fast: parts.fast,
            touched: Vec::new(),
        }
    }

    /// Chooses the back end: io_uring where asked for and the kernel has what it needs
    /// (`Some`), else epoll (`None`).
    pub(super) fn back_end(&mut self) -> Option<Uring> {
        if self.io_choice != RelayIo::Uring {
            return None;
        }
        match self.start_uring() {
            Ok(ring) => {
                self.shared.uring.store(true, Ordering::Relaxed);
                tracing::info!("RTP relay: io_uring back end");
                Some(ring)
            }
            Err(e) => {
                tracing::info!("RTP relay: io_uring unavailable ({e}); epoll back end");
                None
            }
        }
    }

    /// Runs until `Shutdown` or until the control channel closes, on the back end chosen
    /// by [`Engine::back_end`].
    pub(super) fn run(self, ring: Option<Uring>) {
        match ring {
            Some(ring) => self.run_uring(ring),
            None => self.run_epoll(),
        }
    }

    /// Takes the sockets out of epoll (which keeps only the command waker) and sets up
    /// the ring over them; on failure they are registered again.
    fn start_uring(&mut self) -> io::Result<Uring> {
        for socket in &mut self.sockets {
            self.poll.registry().deregister(socket)?;
        }
        let fds = self.sockets.iter().map(AsRawFd::as_raw_fd).collect();
        match Uring::new(fds, self.poll.as_raw_fd()) {
            Ok(ring) => Ok(ring),
            Err(e) => {
                for (i, socket) in self.sockets.iter_mut().enumerate() {
                    self.poll
                        .registry()
                        .register(socket, Token(i), mio::Interest::READABLE)?;
                }
                Err(e)
            }
        }
    }

    /// Carries out the commands and loaded playlists waiting; false on `Shutdown` (after
    /// finishing the recordings) or when the daemon is gone.
    fn take_commands(&mut self) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::Batch(cmds)) => {
                    let fast = self.fast.is_some();
                    for cmd in cmds {
                        if fast {
                            self.touched.push(command_session(&cmd));
                        }
                        self.table.command(cmd, Instant::now());
                    }
                }
                Ok(Control::Loaded(loaded)) => self.table.loaded(loaded, Instant::now()),
                Ok(Control::Fast(report)) => {
                    let stopped = report.disabled.is_some();
                    self.table.kernel_report(report, Instant::now());
                    if stopped {
                        self.fast = None;
                    }
                }
                Ok(Control::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                    // Recordings in progress are kept; the file thread writes them
                    // before the relay is gone (the worker is joined on drop).
                    self.table.finish_all_recordings();
                    self.deliver();
                    return false;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    // A Play, Record or Close takes its call back from the kernel now.
                    if let Some(worker) = &self.fast {
                        self.table.sync_fast_sessions(&self.touched);
                        if let Some(job) = self.table.take_fast_job() {
                            worker.submit(job);
                        }
                    }
                    self.touched.clear();
                    return true;
                }
            }
            self.deliver();
        }
    }

    /// Hands the kernel fast path what changed (see `fast`).
    fn sync_fast(&mut self) {
        let Some(worker) = &self.fast else {
            return;
        };
        self.table.sync_fast();
        if let Some(job) = self.table.take_fast_job() {
            worker.submit(job);
        }
    }

    /// Prompt frames, full recordings, media timeouts and the counters, each when due.
    fn housekeeping(&mut self, next_tick: &mut Instant, next_publish: &mut Instant) {
        let now = Instant::now();
        self.play_due(now);
        self.table.finish_full_recordings();
        self.deliver();
        if now >= *next_tick {
            self.table.check_timeouts(now);
            self.deliver();
            self.sync_fast();
            *next_tick = now + TICK;
        }
        if now >= *next_publish {
            self.publish();
            *next_publish = now + PUBLISH_EVERY;
        }
    }

    /// The io_uring loop (see the module doc).
    fn run_uring(mut self, mut ring: Uring) {
        let mut events = Events::with_capacity(4);
        let mut next_tick = Instant::now() + TICK;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut completions = std::mem::take(&mut self.completions);
        loop {
            let wake = self
                .table
                .next_play_due()
                .map_or(next_tick, |due| due.min(next_tick));
            match ring.wait(wake.saturating_duration_since(Instant::now())) {
                Ok(sent) => self.counters.send_calls += u64::from(sent),
                Err(e) => {
                    tracing::error!("RTP relay: io_uring failed, relay stops: {e}");
                    return;
                }
            }
            // Commands first, so a packet sent after an Open finds its session.
            if !self.take_commands() {
                return;
            }
            let mut received = false;
            loop {
                ring.reap(&mut completions);
                if completions.is_empty() {
                    break;
                }
                let now = Instant::now();
                for &completion in &completions {
                    match completion {
                        Completion::Received {
                            token,
                            result,
                            flags,
                        } => {
                            ring.receive_ended(token, flags);
                            received |= self.uring_received(&mut ring, token, result, flags, now);
                        }
                        Completion::Sent { slot, result } => {
                            self.uring_sent(&mut ring, slot, result)
                        }
                        Completion::Wake => {
                            // Clears the waker's edge so the epoll descriptor reads idle.
                            if let Err(e) = self.poll.poll(&mut events, Some(Duration::ZERO)) {
                                tracing::warn!("RTP relay: epoll (waker) failed: {e}");
                            }
                            if let Err(e) = ring.arm_wake() {
                                tracing::error!(
                                    "RTP relay: cannot arm the waker, relay stops: {e}"
                                );
                                return;
                            }
                        }
                    }
                }
                self.deliver();
            }
            self.counters.recv_calls += u64::from(received);
            self.housekeeping(&mut next_tick, &mut next_publish);
        }
    }

    /// One receive completion; returns whether it carried a datagram.
    fn uring_received(
        &mut self,
        ring: &mut Uring,
        token: usize,
        result: i32,
        flags: u32,
        now: Instant,
    ) -> bool {
        // A negative result ends the multishot receive (a pending ICMP error, or no buffer
        // left); it is armed again before the next wait.
        let (Ok(filled), Some(bid)) = (usize::try_from(result), Uring::buffer_of(flags)) else {
            return false;
        };
        self.counters.packets_received += 1;
        let (port, via) = self.layout.split(token);
        let Some(owner) = self.table.owner(port) else {
            ring.copy_out(bid, 0, &mut []);
            self.shared.unassigned.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let datagram = |copied: super::uring::Copied, epoch: Instant| Datagram {
            owner,
            via,
            src: copied.src,
            truncated: copied.truncated,
            now,
            now_us: u64::try_from(now.saturating_duration_since(epoch).as_micros())
                .unwrap_or(u64::MAX),
        };
        match ring.take_slot() {
            Some(slot) => {
                // The datagram moves into the send slot; the buffer returns to the kernel.
                let copied = ring.copy_into_slot(bid, filled, slot);
                let d = datagram(copied, self.epoch);
                match self.table.handle(&d, ring.slot_buf(slot), copied.len) {
                    Some(forward) => {
                        let meta = SentMeta {
                            session: owner.slot,
                            to: forward.to,
                            len: forward.len,
                            rtp: forward.rtp,
                        };
                        match ring.send(slot, forward.socket, forward.dest, meta) {
                            // Counted now: the session may close before the completion.
                            Ok(()) if meta.rtp => {
                                self.table.count_sent(owner.slot, forward.to, forward.len);
                            }
                            Ok(()) => {}
                            Err(e) => {
                                self.counters.send_errors += 1;
                                tracing::warn!("RTP relay: cannot queue a send: {e}");
                            }
                        }
                    }
                    None => ring.free_slot(slot),
                }
            }
            None => {
                // Every slot is in flight: this one goes out at once with sendto.
                let copied = ring.copy_out(bid, filled, &mut self.io.bufs[0]);
                let d = datagram(copied, self.epoch);
                if let Some(forward) = self.table.handle(&d, &mut self.io.bufs[0], copied.len) {
                    self.io.out[0] = Outgoing {
                        socket: forward.socket,
                        dest: forward.dest,
                        buf: 0,
                        len: forward.len,
                        slot: owner.slot,
                        to: forward.to,
                        rtp: forward.rtp,
                    };
                    self.send_run(forward.socket, 0, 1);
                }
            }
        }
        true
    }

    /// A send completion: counts the datagram (or the refusal) and frees its slot.
    fn uring_sent(&mut self, ring: &mut Uring, slot: usize, result: i32) {
        let Some(meta) = ring.sent(slot) else {
            return;
        };
        if result < 0 {
            self.counters.send_errors += 1;
            if meta.rtp {
                self.table.uncount_sent(meta.session, meta.to, meta.len);
            }
            return;
        }
        self.counters.packets_sent += 1;
    }

    /// The epoll loop (see the module doc).
    fn run_epoll(mut self) {
        let mut events = Events::with_capacity(POLL_EVENTS);
        let mut next_tick = Instant::now() + TICK;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        loop {
            let wake = self
                .table
                .next_play_due()
                .map_or(next_tick, |due| due.min(next_tick));
            let timeout = if self.pending.is_empty() {
                wake.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("RTP relay: epoll failed, relay stops: {e}");
                    return;
                }
            }
            // Commands first, so a packet sent after an Open finds its session.
            if !self.take_commands() {
                return;
            }
            std::mem::swap(&mut self.pending, &mut self.pending_work);
            for i in 0..self.pending_work.len() {
                let token = self.pending_work[i];
                self.drain(token);
            }
            self.pending_work.clear();
            for event in events.iter() {
                let Token(token) = event.token();
                if token != WAKER.0 {
                    self.drain(token);
                }
            }
            self.housekeeping(&mut next_tick, &mut next_publish);
        }
    }

    /// Hands the table's outputs on: events to the daemon, jobs to the file thread,
    /// sessions to the stats snapshot.
    fn deliver(&mut self) {
        while let Some(output) = self.table.poll_output() {
            match output {
                Output::Event(event) => self.sink.emit(event),
                Output::File(job) => self.files.submit(job),
                Output::Opened(id) => {
                    self.shared
                        .snapshot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, (LegStats::default(), LegStats::default()));
                }
                Output::Closed(id) => {
                    self.shared
                        .snapshot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                }
            }
        }
    }

    /// Reads a readable socket until it is empty or its budget is spent.
    fn drain(&mut self, token: usize) {
        let Some(socket) = self.sockets.get(token) else {
            return;
        };
        let fd = socket.as_raw_fd();
        let (_, via) = self.layout.split(token);
        let v6 = self.addr_is_v6[via];
        for _ in 0..BATCHES_PER_WAKE {
            let n = match self.io.receive(fd, v6) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => return,
                // A pending socket error (an ICMP report) is returned once, ahead of the
                // queued datagrams: read on (within the budget).
                Err(_) => continue,
            };
            if n == 0 {
                return;
            }
            self.counters.recv_calls += 1;
            self.counters.packets_received += n as u64;
            self.process(token, n, Instant::now());
            self.deliver();
            self.flush();
            if n < BATCH {
                // A short read means the queue was empty; the next datagram re-arms epoll.
                return;
            }
        }
        self.pending.push(token);
    }

    /// Runs the datagrams of one batch through the table, queueing what to forward.
    fn process(&mut self, token: usize, n: usize, now: Instant) {
        let (port, via) = self.layout.split(token);
        let Some(owner) = self.table.owner(port) else {
            self.shared
                .unassigned
                .fetch_add(n as u64, Ordering::Relaxed);
            return;
        };
        let now_us = u64::try_from(now.saturating_duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX);
        self.io.out_len = 0;
        for i in 0..n {
            let meta = self.io.received[i];
            let datagram = Datagram {
                owner,
                via,
                src: meta.src,
                truncated: meta.truncated,
                now,
                now_us,
            };
            let Some(forward) = self.table.handle(&datagram, &mut self.io.bufs[i], meta.len) else {
                continue;
            };
            self.io.out[self.io.out_len] = Outgoing {
                socket: forward.socket,
                dest: forward.dest,
                buf: i,
                len: forward.len,
                slot: owner.slot,
                to: forward.to,
                rtp: forward.rtp,
            };
            self.io.out_len += 1;
        }
    }

    /// Sends the queued datagrams, one `sendmmsg` per run of datagrams for one socket.
    fn flush(&mut self) {
        let mut start = 0;
        while start < self.io.out_len {
            let socket = self.io.out[start].socket;
            let mut end = start + 1;
            while end < self.io.out_len && self.io.out[end].socket == socket {
                end += 1;
            }
            self.send_run(socket, start, end);
            start = end;
        }
        self.io.out_len = 0;
    }

    fn send_run(&mut self, socket: usize, start: usize, end: usize) {
        let Some(sock) = self.sockets.get(socket) else {
            return;
        };
        let mut i = start;
        while i < end {
            self.counters.send_calls += 1;
            let sent = if end - i == 1 {
                let o = self.io.out[i];
                match sock.send_to(&self.io.bufs[o.buf][..o.len], o.dest) {
                    Ok(_) => 1,
                    Err(_) => 0,
                }
            } else {
                self.io.send_many(sock.as_raw_fd(), i, end).unwrap_or(0)
            };
            for o in &self.io.out[i..i + sent] {
                if o.rtp {
                    self.table.count_sent(o.slot, o.to, o.len);
                }
            }
            self.counters.packets_sent += sent as u64;
            if sent == 0 {
                // The first datagram failed (full buffer, unreachable): skip it, go on.
                self.counters.send_errors += 1;
                i += 1;
            } else {
                i += sent;
            }
        }
    }

    /// Sends every prompt frame that is due.
    fn play_due(&mut self, now: Instant) {
        let (sockets, counters) = (&self.sockets, &mut self.counters);
        self.table.play_due(now, &mut |socket, dest, packet| {
            let Some(socket) = sockets.get(socket) else {
                return false;
            };
            counters.send_calls += 1;
            match socket.send_to(packet, dest) {
                Ok(_) => {
                    counters.packets_sent += 1;
                    true
                }
                Err(_) => {
                    counters.send_errors += 1;
                    false
                }
            }
        });
    }

    /// Copies every session's counters and the relay counters for other threads.
    fn publish(&mut self) {
        {
            let mut snapshot = self
                .shared
                .snapshot
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            snapshot.clear();
            snapshot.extend(self.table.stats());
        }
        self.counters.events_lost = self.sink.lost;
        *self
            .shared
            .fast
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.table.fast_state();
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.counters;
    }
}
