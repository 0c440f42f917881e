//! The relay thread's I/O engine: an epoll loop (mio) over every socket of the range that
//! reads datagrams in batches, runs each through the pure [`SessionTable`], sends what it
//! answers, and runs the timers (prompt frames, media timeouts, stats publication).
//!
//! Each wake-up, in order: commands from the daemon and loaded playlists (so a packet sent
//! after an `Open` finds its session); sockets left over from the last wake-up, then those
//! epoll reports readable, each read at most [`BATCHES_PER_WAKE`] batches so a flood on one
//! port cannot starve the others or the timers; prompt frames that are due; recordings that
//! filled up; every [`TICK`] the media timeouts; every [`PUBLISH_EVERY`] the counters. The
//! table's outputs are delivered after each of these steps, in the order they arose.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Poll, Token};
use pbx_core::media::session::{LegStats, MediaCommand, MediaEvent, SessionId};
use tokio::sync::mpsc as tokio_mpsc;

use super::output::Output;
use super::ports::Layout;
use super::table::{Datagram, SessionTable};
use super::udp::{Io, Outgoing, BATCH};
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
    /// `recvmmsg` calls that returned data.
    pub recv_calls: u64,
    /// Datagrams read.
    pub packets_received: u64,
    /// `sendmmsg` / `sendto` calls.
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
}

/// A message to the relay thread.
#[derive(Debug)]
pub(super) enum Control {
    Media(MediaCommand),
    /// The file thread resolved a playlist.
    Loaded(Loaded),
    Shutdown,
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
        }
    }

    /// Runs until `Shutdown` or until the control channel closes.
    pub(super) fn run(mut self) {
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
            loop {
                match self.control.try_recv() {
                    Ok(Control::Media(cmd)) => self.table.command(cmd, Instant::now()),
                    Ok(Control::Loaded(loaded)) => self.table.loaded(loaded, Instant::now()),
                    Ok(Control::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                        // Recordings in progress are kept; the file thread writes them
                        // before the relay is gone (the worker is joined on drop).
                        self.table.finish_all_recordings();
                        self.deliver();
                        return;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
                self.deliver();
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
            let now = Instant::now();
            self.play_due(now);
            self.table.finish_full_recordings();
            self.deliver();
            if now >= next_tick {
                self.table.check_timeouts(now);
                self.deliver();
                next_tick = now + TICK;
            }
            if now >= next_publish {
                self.publish();
                next_publish = now + PUBLISH_EVERY;
            }
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
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.counters;
    }
}
