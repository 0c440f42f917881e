//! The RTP relay: one dedicated OS thread runs an epoll loop (mio) over every port of the
//! configured range and moves each call's packets between its two legs.
//!
//! Every port is bound up front, so opening a call costs no system call and a port that
//! another program holds is reported at start. Sockets are found by port through a `Vec`
//! indexed by `port - first`. Datagrams are read 32 at a time with `recvmmsg` into
//! preallocated buffers, rewritten in place (payload type, G.711 transcoding) and sent back
//! out, several at once with `sendmmsg` when a batch goes to one socket. Nothing on the
//! packet path allocates or takes a lock: counters live in the relay thread and a copy is
//! published for [`Relay::stats`] every second.
//!
//! Source checks follow symmetric RTP: a leg latches onto the first source whose IP is
//! allowed, and afterwards accepts only that address, unless the latched source has been
//! silent for [`RELATCH_AFTER`] and a new allowed source appears (a NAT rebinding).
//!
//! Playback and recording (for the auto attendant, voicemail and music on hold) run on the
//! same thread, with no thread per player: while anything plays, the epoll timeout is the
//! next 20 ms frame's due time, and each wake-up sends every frame that is due (see
//! [`super::player`]). While a leg hears a prompt, what the other leg sends is not forwarded
//! to it (afterwards the phone hears the other leg's stream again, under that stream's own
//! SSRC, as after any source change); DTMF from the leg is still detected. Recordings are
//! collected in memory (bounded by their `max_ms`) and written by the file thread
//! (`media::files`, private), which also reads WAV files named in a playlist, so no disk access
//! stalls the packet loop.
//!
//! A session may have only one phone: a leg given as [`LegMedia::absent`] (`local_port` 0)
//! owns no ports, and a later `Update` may bring it (the caller is transferred).

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc as tokio_mpsc;

use pbx_core::media::dtmf::DtmfDetector;
use pbx_core::media::rtp::{JitterEstimator, RtpPacket, SeqTracker};
use pbx_core::media::session::{
    Codec, Leg, LegMedia, LegStats, MediaCommand, MediaEvent, SessionId, SrtpKeys,
};
use pbx_core::media::srtp::{self, SrtpContext};
use pbx_core::media::{g711, rtcp, rtp};

use super::files::{self, FileJob, FileWorker, Loaded, Playlist};
use super::player::{OutStream, Player, Recorder, FRAME};
use super::prompts::PromptStore;

/// Datagrams read per `recvmmsg` call (and the most sent per `sendmmsg` call).
const BATCH: usize = 32;
/// Size of one receive buffer; a longer datagram is truncated and dropped as malformed.
const BUF_LEN: usize = 2048;
/// Batches read from one socket per wake-up before the loop serves the others.
const BATCHES_PER_WAKE: usize = 8;
/// How long a latched source must be silent before another allowed source may take over.
pub const RELATCH_AFTER: Duration = Duration::from_secs(1);
/// Housekeeping period: media timeouts are checked this often.
const TICK: Duration = Duration::from_millis(200);
/// How often the stats snapshot and counters are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Requested SO_RCVBUF / SO_SNDBUF per socket (the kernel caps it at `[rw]mem_max`).
const SOCKET_BUFFER: usize = 512 * 1024;
/// Events queued for the daemon before further ones are dropped (and counted).
const EVENT_CAPACITY: usize = 4096;
/// Readiness events taken from epoll per wait.
const POLL_EVENTS: usize = 1024;
/// File descriptors kept free for the rest of the daemon when checking the limit.
const FD_MARGIN: u64 = 64;
/// Token of the command waker; sockets use their index.
const WAKER: Token = Token(usize::MAX);

/// Where the relay listens and when it gives up on silent calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Local IPs to bind; every port of the range is bound on each (e.g. 127.0.0.1 and ::1).
    pub addrs: Vec<IpAddr>,
    /// First port of the range (inclusive).
    pub port_first: u16,
    /// Last port of the range (inclusive).
    pub port_last: u16,
    /// A session with no RTP from either leg for this long is reported as timed out.
    pub media_timeout: Duration,
}

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

/// A running relay; dropping it stops the relay thread.
#[derive(Debug)]
pub struct Relay {
    control: mpsc::Sender<Control>,
    waker: Arc<Waker>,
    events: Option<tokio_mpsc::Receiver<MediaEvent>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    thread_id: i32,
}

/// What the relay thread publishes for other threads.
#[derive(Debug, Default)]
struct Shared {
    snapshot: Mutex<HashMap<SessionId, (LegStats, LegStats)>>,
    counters: Mutex<RelayCounters>,
    unassigned: AtomicU64,
}

/// A message to the relay thread.
#[derive(Debug)]
enum Control {
    Media(MediaCommand),
    /// The file thread resolved a playlist.
    Loaded(Loaded),
    Shutdown,
}

/// Binds every port of the range on every address and starts the relay thread, with only
/// the built-in tones to play (see [`start_with_prompts`]).
///
/// Raises the soft open-file limit to the hard limit first. Fails, naming the address and
/// port, if any port is taken.
pub fn start(cfg: RelayConfig) -> io::Result<Relay> {
    start_with_prompts(cfg, PromptStore::builtin())
}

/// Like [`start`], playing the prompts of `prompts` by name.
pub fn start_with_prompts(cfg: RelayConfig, prompts: PromptStore) -> io::Result<Relay> {
    if cfg.addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "RTP relay: no address to bind",
        ));
    }
    if cfg.port_first == 0 || cfg.port_first > cfg.port_last {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "RTP relay: bad port range {}-{}",
                cfg.port_first, cfg.port_last
            ),
        ));
    }
    let ports = usize::from(cfg.port_last - cfg.port_first) + 1;
    let naddrs = cfg.addrs.len();
    raise_fd_limit(ports, naddrs)?;

    let poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(ports * naddrs);
    for port in cfg.port_first..=cfg.port_last {
        for ip in &cfg.addrs {
            let mut socket = bind_udp(SocketAddr::new(*ip, port))?;
            poll.registry()
                .register(&mut socket, Token(sockets.len()), Interest::READABLE)?;
            sockets.push(socket);
        }
    }
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let layout = Layout {
        first: cfg.port_first,
        ports,
        naddrs,
        v4: cfg.addrs.iter().position(IpAddr::is_ipv4),
        v6: cfg.addrs.iter().position(IpAddr::is_ipv6),
    };
    let addr_is_v6 = cfg.addrs.iter().map(IpAddr::is_ipv6).collect();

    let (control_tx, control_rx) = mpsc::channel();
    let (event_tx, event_rx) = tokio_mpsc::channel(EVENT_CAPACITY);
    let prompts = Arc::new(prompts);
    let files = {
        let (control, waker) = (control_tx.clone(), Arc::clone(&waker));
        FileWorker::start(Arc::clone(&prompts), event_tx.clone(), move |loaded| {
            if control.send(Control::Loaded(loaded)).is_ok() {
                let _ = waker.wake();
            }
        })?
    };
    let shared = Arc::new(Shared::default());
    let thread_shared = Arc::clone(&shared);
    let (tid_tx, tid_rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("rtp-relay".into())
        .spawn(move || {
            // The I/O headers hold raw pointers (not Send), so the engine is built here.
            let engine = Engine {
                poll,
                sockets,
                layout,
                addr_is_v6,
                owners: vec![None; ports],
                sessions: Vec::new(),
                free_slots: Vec::new(),
                index: HashMap::new(),
                control: control_rx,
                sink: EventSink {
                    tx: event_tx,
                    lost: 0,
                },
                shared: thread_shared,
                media_timeout: cfg.media_timeout,
                epoch: Instant::now(),
                io: Io::new(),
                pending: Vec::with_capacity(64),
                pending_work: Vec::with_capacity(64),
                counters: RelayCounters::default(),
                prompts,
                files,
                playing: Vec::new(),
                generation: 0,
                play_buf: [0; rtp::HEADER_LEN + FRAME + srtp::MAX_TRAILER],
                full_recordings: Vec::new(),
            };
            // The receiver waits for this; if it is gone, start() already failed.
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            engine.run();
        })?;
    let thread_id = tid_rx
        .recv()
        .map_err(|_| io::Error::other("RTP relay thread died at start"))?;
    Ok(Relay {
        control: control_tx,
        waker,
        events: Some(event_rx),
        shared,
        thread: Some(thread),
        thread_id,
    })
}

impl Relay {
    /// Hands a command to the relay thread; never blocks.
    pub fn command(&self, cmd: MediaCommand) {
        self.send(Control::Media(cmd));
    }

    /// The event stream (timeouts, DTMF, final stats); `Some` the first time only.
    pub fn events(&mut self) -> Option<tokio_mpsc::Receiver<MediaEvent>> {
        self.events.take()
    }

    /// Counters of both legs of a session as of the last snapshot (at most a second old).
    pub fn stats(&self, session: SessionId) -> Option<(LegStats, LegStats)> {
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&session)
            .copied()
    }

    /// Datagrams that arrived on ports no session owns.
    pub fn dropped_unassigned(&self) -> u64 {
        self.shared.unassigned.load(Ordering::Relaxed)
    }

    /// Relay-wide counters as of the last snapshot.
    pub fn counters(&self) -> RelayCounters {
        let mut counters = *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counters.unassigned = self.dropped_unassigned();
        counters
    }

    /// The relay thread's Linux thread id (for CPU accounting and pinning).
    pub fn thread_id(&self) -> i32 {
        self.thread_id
    }

    /// Stops the relay thread and closes every socket.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn send(&self, control: Control) {
        // A send fails only when the thread has exited; there is nothing left to tell it.
        if self.control.send(control).is_ok() {
            if let Err(e) = self.waker.wake() {
                tracing::error!("RTP relay: cannot wake the relay thread: {e}");
            }
        }
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.send(Control::Shutdown);
            if thread.join().is_err() {
                tracing::error!("RTP relay thread panicked");
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and checks the range fits.
fn raise_fd_limit(ports: usize, naddrs: usize) -> io::Result<()> {
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
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
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

/// How socket indices map to ports and addresses: index = (port - first) * naddrs + via.
#[derive(Debug, Clone, Copy)]
struct Layout {
    first: u16,
    ports: usize,
    naddrs: usize,
    /// The first bound address of each family, used to reach a not yet latched remote.
    v4: Option<usize>,
    v6: Option<usize>,
}

impl Layout {
    /// Index of a port in the range.
    fn port_index(&self, port: u16) -> Option<usize> {
        let idx = usize::from(port.checked_sub(self.first)?);
        (idx < self.ports).then_some(idx)
    }

    /// The socket of `port` on address number `via`.
    fn socket(&self, port: u16, via: usize) -> Option<usize> {
        (via < self.naddrs).then(|| self.port_index(port).map(|p| p * self.naddrs + via))?
    }

    /// Which bound address reaches `dest`.
    fn via_for(&self, dest: SocketAddr) -> Option<usize> {
        if dest.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

/// Which session and leg a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    slot: u32,
    leg: Leg,
    rtcp: bool,
}

/// Where a packet goes: out of `port` on address `via` to `dest`.
#[derive(Debug, Clone, Copy)]
struct Route {
    port: u16,
    via: usize,
    dest: SocketAddr,
    to: Leg,
    rtp: bool,
}

/// The address a leg's packets (RTP or RTCP) are accepted from and sent to.
#[derive(Debug, Clone, Copy)]
struct Latch {
    addr: Option<SocketAddr>,
    via: usize,
    last: Instant,
}

impl Latch {
    fn new(now: Instant) -> Self {
        Latch {
            addr: None,
            via: 0,
            last: now,
        }
    }

    /// Whether a packet from `src` is accepted; latches (or re-latches) as a side effect.
    fn accept(&mut self, src: SocketAddr, via: usize, now: Instant, media: &LegMedia) -> bool {
        match self.addr {
            Some(addr) if addr == src => {}
            Some(_) if now.saturating_duration_since(self.last) < RELATCH_AFTER => return false,
            _ if !ip_allowed(media, src.ip()) => return false,
            _ => self.addr = Some(src),
        }
        self.via = via;
        self.last = now;
        true
    }
}

/// Whether packets may come from `ip`: one of `allowed_ips`, or the SDP address if none.
fn ip_allowed(media: &LegMedia, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if media.allowed_ips.is_empty() {
        media.remote.is_some_and(|r| r.ip().to_canonical() == ip)
    } else {
        media.allowed_ips.iter().any(|a| a.to_canonical() == ip)
    }
}

/// One leg of a relayed call.
#[derive(Debug)]
struct LegState {
    media: LegMedia,
    rtp: Latch,
    rtcp: Latch,
    /// The phone sent RTCP on its RTP port (RFC 5761), so ours goes there too.
    rtcp_mux: bool,
    seq: SeqTracker,
    jitter: JitterEstimator,
    dtmf: DtmfDetector,
    stats: LegStats,
    /// What is being played to this leg's phone (the other leg is not heard meanwhile).
    player: Option<Player>,
    /// The next played frame starts a talkspurt (marker bit).
    talkspurt: bool,
    /// Identifies the latest `Play`/`StopPlay`, so a late file load cannot revive old ones.
    play_generation: u64,
    /// Numbering of the packets the relay itself sends to this leg's phone.
    out: OutStream,
    /// What this leg's phone sends, being recorded.
    recorder: Option<Recorder>,
    /// SRTP contexts when the leg is SRTP.
    srtp: Option<LegSrtp>,
}

/// SRTP of one leg: what the phone sends is unprotected with its key, what goes to it is
/// protected with ours.
#[derive(Debug)]
struct LegSrtp {
    keys: SrtpKeys,
    inbound: SrtpContext,
    outbound: SrtpContext,
}

impl LegSrtp {
    fn new(keys: SrtpKeys) -> Self {
        LegSrtp {
            inbound: SrtpContext::new(keys.suite, &keys.remote_key),
            outbound: SrtpContext::new(keys.suite, &keys.local_key),
            keys,
        }
    }

    /// New keys (re-INVITE): a direction whose key is unchanged keeps its state (rollover
    /// counters, replay windows), so no keystream is ever used twice.
    fn rekey(old: Option<LegSrtp>, keys: Option<&SrtpKeys>) -> Option<LegSrtp> {
        let keys = keys?;
        let Some(mut srtp) = old else {
            return Some(LegSrtp::new(keys.clone()));
        };
        if srtp.keys.suite != keys.suite {
            return Some(LegSrtp::new(keys.clone()));
        }
        if srtp.keys.remote_key != keys.remote_key {
            srtp.inbound = SrtpContext::new(keys.suite, &keys.remote_key);
        }
        if srtp.keys.local_key != keys.local_key {
            srtp.outbound = SrtpContext::new(keys.suite, &keys.local_key);
        }
        srtp.keys = keys.clone();
        Some(srtp)
    }
}

impl LegState {
    fn new(media: LegMedia, now: Instant) -> Self {
        LegState {
            rtp: Latch::new(now),
            rtcp: Latch::new(now),
            rtcp_mux: false,
            seq: SeqTracker::new(),
            jitter: JitterEstimator::new(8000),
            dtmf: DtmfDetector::new(),
            stats: LegStats::default(),
            player: None,
            talkspurt: true,
            play_generation: 0,
            out: OutStream::new(rand::random(), rand::random(), rand::random()),
            recorder: None,
            srtp: LegSrtp::rekey(None, media.srtp.as_ref()),
            media,
        }
    }

    /// Where RTP for this leg's phone goes: the latched source, else the SDP address.
    fn rtp_route(&self, to: Leg, layout: &Layout) -> Option<Route> {
        if self.media.is_absent() {
            return None;
        }
        let (dest, via) = match self.rtp.addr {
            Some(addr) => (addr, self.rtp.via),
            None => {
                let remote = self.media.remote?;
                (remote, layout.via_for(remote)?)
            }
        };
        Some(Route {
            port: self.media.local_port,
            via,
            dest,
            to,
            rtp: true,
        })
    }

    /// Where RTCP for this leg's phone goes: like RTP if it multiplexes, else port + 1.
    fn rtcp_route(&self, to: Leg, layout: &Layout) -> Option<Route> {
        if self.media.is_absent() {
            return None;
        }
        if self.rtcp_mux {
            return self
                .rtp_route(to, layout)
                .map(|r| Route { rtp: false, ..r });
        }
        let (dest, via) = match self.rtcp.addr {
            Some(addr) => (addr, self.rtcp.via),
            None => {
                let remote = self.media.remote?;
                let dest = SocketAddr::new(remote.ip(), remote.port().checked_add(1)?);
                (dest, layout.via_for(dest)?)
            }
        };
        Some(Route {
            port: self.media.local_port.checked_add(1)?,
            via,
            dest,
            to,
            rtp: false,
        })
    }

    /// New SDP: parameters replaced; latches kept unless the remote address changed.
    fn update(&mut self, media: LegMedia, now: Instant) {
        if media.remote != self.media.remote {
            self.rtp = Latch::new(now);
            self.rtcp = Latch::new(now);
            self.rtcp_mux = false;
            self.stats.latched = None;
        }
        self.srtp = LegSrtp::rekey(self.srtp.take(), media.srtp.as_ref());
        self.media = media;
    }

    /// Protects a packet for this leg's phone in place if the leg is SRTP; returns the
    /// length to send, `None` if it cannot be sent (no room, replayed index).
    fn protect(&mut self, buf: &mut [u8], len: usize, rtp: bool) -> Option<usize> {
        let Some(srtp) = self.srtp.as_mut() else {
            return Some(len);
        };
        let protected = if rtp {
            srtp.outbound.protect_rtp(buf, len)
        } else {
            srtp.outbound.protect_rtcp(buf, len)
        };
        protected.ok()
    }
}

/// A relayed call.
#[derive(Debug)]
struct Session {
    id: SessionId,
    legs: [LegState; 2],
    /// Indices of the ports it owns: A RTP, A RTCP, B RTP, B RTCP (`None`: absent leg).
    ports: [Option<usize>; 4],
    last_rtp: Instant,
    timed_out: bool,
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

/// A received datagram as the session sees it.
#[derive(Debug)]
struct Arrival {
    from: Leg,
    on_rtcp_port: bool,
    via: usize,
    src: SocketAddr,
    now: Instant,
    now_us: u64,
}

impl Session {
    /// Checks, counts and rewrites (in place) the datagram `buf[..len]`; returns where to
    /// forward it and its new length. On an SRTP leg it is unprotected first (a packet that
    /// fails authentication or is replayed is dropped and counted, never forwarded), and
    /// it is protected for the destination leg if that one is SRTP (`buf` has room).
    fn handle(
        &mut self,
        arrival: &Arrival,
        buf: &mut [u8],
        len: usize,
        layout: &Layout,
        sink: &mut EventSink,
    ) -> Option<(Route, usize)> {
        let from = leg_index(arrival.from);
        let mut len = len.min(buf.len());
        let is_rtcp = arrival.on_rtcp_port || rtp::looks_like_rtcp(&buf[..len]);
        if let Some(srtp) = self.legs[from].srtp.as_mut() {
            let data = &mut buf[..len];
            let plain = if is_rtcp {
                srtp.inbound.unprotect_rtcp(data)
            } else {
                srtp.inbound.unprotect_rtp(data)
            };
            match plain {
                Ok(n) => len = n,
                Err(_) => {
                    self.legs[from].stats.dropped += 1;
                    return None;
                }
            }
        }
        let route = self.handle_plain(arrival, &mut buf[..len], layout, sink)?;
        match self.legs[leg_index(route.to)].protect(buf, len, route.rtp) {
            Some(len) => Some((route, len)),
            None => {
                self.legs[from].stats.dropped += 1;
                None
            }
        }
    }

    /// [`Self::handle`] on a plain RTP/RTCP packet.
    fn handle_plain(
        &mut self,
        arrival: &Arrival,
        data: &mut [u8],
        layout: &Layout,
        sink: &mut EventSink,
    ) -> Option<Route> {
        let to = arrival.from.other();
        let [a, b] = &mut self.legs;
        let (this, other) = match arrival.from {
            Leg::A => (a, &*b),
            Leg::B => (b, &*a),
        };
        if arrival.on_rtcp_port || rtp::looks_like_rtcp(data) {
            let Ok(summary) = rtcp::summarize(data) else {
                this.stats.dropped += 1;
                return None;
            };
            let muxed = !arrival.on_rtcp_port;
            let latch = if muxed { &mut this.rtp } else { &mut this.rtcp };
            if !latch.accept(arrival.src, arrival.via, arrival.now, &this.media) {
                this.stats.dropped += 1;
                return None;
            }
            if muxed {
                this.rtcp_mux = true;
                this.stats.latched = this.rtp.addr;
            }
            if let Some(lost) = summary.rtcp_lost() {
                this.stats.rtcp_lost = Some(lost);
            }
            if let Some(jitter) = summary.jitter_us {
                this.stats.rtcp_jitter_us = Some(jitter);
            }
            return other.rtcp_route(to, layout);
        }

        let len = data.len() as u64;
        let Ok(mut packet) = RtpPacket::new_checked(data) else {
            this.stats.dropped += 1;
            return None;
        };
        if !this
            .rtp
            .accept(arrival.src, arrival.via, arrival.now, &this.media)
        {
            this.stats.dropped += 1;
            return None;
        }
        self.last_rtp = arrival.now;
        this.stats.latched = this.rtp.addr;
        this.stats.packets_in += 1;
        this.stats.bytes_in += len;
        this.seq.update(packet.sequence_number());
        this.stats.lost = this.seq.lost();

        let pt = packet.payload_type();
        if Some(pt) == this.media.dtmf_pt {
            let digit = this
                .dtmf
                .handle(packet.timestamp(), packet.marker(), packet.payload());
            if let Some((digit, duration_ms)) = digit {
                sink.emit(MediaEvent::Dtmf {
                    session: self.id,
                    leg: arrival.from,
                    digit,
                    duration_ms,
                });
            }
            // A prompt replaces what the other phone hears.
            if other.player.is_some() {
                return None;
            }
            // The other phone cannot decode telephone-events it did not negotiate.
            let out_pt = other.media.dtmf_pt?;
            let route = other.rtp_route(to, layout)?;
            packet.set_payload_type(out_pt);
            return Some(route);
        }
        if pt == this.media.pt {
            this.jitter.update(arrival.now_us, packet.timestamp());
            this.stats.jitter_us = this.jitter.jitter_us();
            if let Some(recorder) = this.recorder.as_mut() {
                if is_g711(this.media.codec) {
                    let alaw = this.media.codec == Codec::Pcma;
                    recorder.push(
                        packet.ssrc(),
                        packet.timestamp(),
                        packet.payload(),
                        alaw,
                        arrival.now,
                    );
                }
            }
            if other.player.is_some() {
                return None;
            }
            let route = other.rtp_route(to, layout)?;
            let (from_codec, to_codec) = (this.media.codec, other.media.codec);
            if from_codec != to_codec && is_g711(from_codec) && is_g711(to_codec) {
                g711::transcode(packet.payload_mut(), from_codec, to_codec);
            }
            if other.media.pt != pt {
                packet.set_payload_type(other.media.pt);
            }
            return Some(route);
        }
        // Comfort noise and anything else negotiated end to end: passed through untouched.
        if other.player.is_some() {
            return None;
        }
        other.rtp_route(to, layout)
    }

    fn stats(&self) -> (LegStats, LegStats) {
        (self.legs[0].stats, self.legs[1].stats)
    }
}

fn is_g711(codec: Codec) -> bool {
    matches!(codec, Codec::Pcmu | Codec::Pcma)
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

/// A datagram read by the last `recvmmsg`.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    len: usize,
    src: Option<SocketAddr>,
    truncated: bool,
}

/// A datagram waiting in `Io::bufs` to be sent.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    socket: usize,
    dest: SocketAddr,
    buf: usize,
    len: usize,
    slot: u32,
    to: Leg,
    rtp: bool,
}

/// Preallocated buffers and message headers for batched I/O.
#[derive(Debug)]
struct Io {
    bufs: Box<[[u8; BUF_LEN]; BATCH]>,
    received: [Received; BATCH],
    /// Per address family: the kernel shrinks `msg_namelen` to the last sender's length.
    recv_headers: [MultiHeaders<SockaddrStorage>; 2],
    send_headers: MultiHeaders<SockaddrStorage>,
    out: [Outgoing; BATCH],
    out_len: usize,
}

impl Io {
    fn new() -> Self {
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
    fn receive(&mut self, fd: RawFd, v6: bool) -> nix::Result<usize> {
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
    fn send_many(&mut self, fd: RawFd, start: usize, end: usize) -> nix::Result<usize> {
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

/// Everything the relay thread owns.
#[derive(Debug)]
struct Engine {
    poll: Poll,
    sockets: Vec<UdpSocket>,
    layout: Layout,
    addr_is_v6: Vec<bool>,
    /// Per port of the range: the session leg that owns it.
    owners: Vec<Option<Owner>>,
    sessions: Vec<Option<Session>>,
    free_slots: Vec<u32>,
    index: HashMap<SessionId, u32>,
    control: mpsc::Receiver<Control>,
    sink: EventSink,
    shared: Arc<Shared>,
    media_timeout: Duration,
    epoch: Instant,
    io: Io,
    /// Sockets that hit their per-wake budget and still have data.
    pending: Vec<usize>,
    pending_work: Vec<usize>,
    counters: RelayCounters,
    prompts: Arc<PromptStore>,
    files: FileWorker,
    /// Legs with a player, as (slot, leg).
    playing: Vec<(u32, Leg)>,
    /// Last `Play`/`StopPlay` generation handed out.
    generation: u64,
    /// One played packet: RTP header, a 20 ms frame and room for the SRTP tag.
    play_buf: [u8; rtp::HEADER_LEN + FRAME + srtp::MAX_TRAILER],
    /// Recordings that reached their length during the last batch, as (slot, leg).
    full_recordings: Vec<(u32, Leg)>,
}

impl Engine {
    fn run(mut self) {
        let mut events = Events::with_capacity(POLL_EVENTS);
        let mut next_tick = Instant::now() + TICK;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        loop {
            let wake = self
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
                    Ok(Control::Media(cmd)) => self.command(cmd),
                    Ok(Control::Loaded(loaded)) => self.loaded(loaded),
                    Ok(Control::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                        // Recordings in progress are kept; the file thread writes them
                        // before the relay is gone (the worker is joined on drop).
                        self.finish_all_recordings();
                        return;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
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
            self.finish_full_recordings();
            if now >= next_tick {
                self.check_timeouts(now);
                next_tick = now + TICK;
            }
            if now >= next_publish {
                self.publish();
                next_publish = now + PUBLISH_EVERY;
            }
        }
    }

    /// Reads a readable socket until it is empty or its budget is spent.
    fn drain(&mut self, token: usize) {
        let Some(socket) = self.sockets.get(token) else {
            return;
        };
        let fd = socket.as_raw_fd();
        let v6 = self.addr_is_v6[token % self.layout.naddrs];
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
            self.flush();
            if n < BATCH {
                // A short read means the queue was empty; the next datagram re-arms epoll.
                return;
            }
        }
        self.pending.push(token);
    }

    /// Runs the datagrams of one batch through their session, queueing what to forward.
    fn process(&mut self, token: usize, n: usize, now: Instant) {
        let port_idx = token / self.layout.naddrs;
        let via = token % self.layout.naddrs;
        let owner = self.owners.get(port_idx).copied().flatten();
        let session = owner.and_then(|o| self.sessions.get_mut(o.slot as usize)?.as_mut());
        let (Some(owner), Some(session)) = (owner, session) else {
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
            let leg = &mut session.legs[leg_index(owner.leg)];
            let Some(src) = meta.src else {
                leg.stats.dropped += 1;
                continue;
            };
            if meta.truncated || meta.len > BUF_LEN {
                leg.stats.dropped += 1;
                continue;
            }
            let arrival = Arrival {
                from: owner.leg,
                on_rtcp_port: owner.rtcp,
                via,
                src,
                now,
                now_us,
            };
            let routed = session.handle(
                &arrival,
                &mut self.io.bufs[i],
                meta.len,
                &self.layout,
                &mut self.sink,
            );
            let from = &session.legs[leg_index(owner.leg)];
            if from.recorder.as_ref().is_some_and(Recorder::is_full)
                && !self.full_recordings.contains(&(owner.slot, owner.leg))
            {
                self.full_recordings.push((owner.slot, owner.leg));
            }
            let Some((route, len)) = routed else {
                continue;
            };
            let Some(socket) = self.layout.socket(route.port, route.via) else {
                continue;
            };
            self.io.out[self.io.out_len] = Outgoing {
                socket,
                dest: route.dest,
                buf: i,
                len,
                slot: owner.slot,
                to: route.to,
                rtp: route.rtp,
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
                if !o.rtp {
                    continue;
                }
                if let Some(Some(session)) = self.sessions.get_mut(o.slot as usize) {
                    let stats = &mut session.legs[leg_index(o.to)].stats;
                    stats.packets_out += 1;
                    stats.bytes_out += o.len as u64;
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

    fn command(&mut self, cmd: MediaCommand) {
        let now = Instant::now();
        match cmd {
            MediaCommand::Open { session, a, b } | MediaCommand::Update { session, a, b } => {
                if self.index.contains_key(&session) {
                    self.update(session, a, b, now);
                } else {
                    self.open(session, a, b, now);
                }
            }
            MediaCommand::Close { session } => self.close(session),
            MediaCommand::Play {
                session,
                leg,
                clips,
                repeat,
            } => self.play(session, leg, clips, repeat, now),
            MediaCommand::StopPlay { session, leg } => {
                if let Some(&slot) = self.index.get(&session) {
                    self.stop_play(slot, leg);
                }
            }
            MediaCommand::Record {
                session,
                leg,
                path,
                max_ms,
            } => self.record(session, leg, path, max_ms, now),
            MediaCommand::StopRecord { session, leg } => {
                if let Some(&slot) = self.index.get(&session) {
                    self.finish_recording(slot, leg);
                }
            }
        }
    }

    /// The four port indices (A RTP, A RTCP, B RTP, B RTCP) of a pair of legs, `None` for an
    /// absent leg, if at least one leg is present, all lie in the range, are distinct, and
    /// are free or already owned by `slot`.
    fn claimable(
        &self,
        a: &LegMedia,
        b: &LegMedia,
        slot: Option<u32>,
    ) -> Option<[Option<usize>; 4]> {
        if a.is_absent() && b.is_absent() {
            return None;
        }
        let pair = |m: &LegMedia| -> Option<[Option<usize>; 2]> {
            if m.is_absent() {
                return Some([None, None]);
            }
            let rtp = self.layout.port_index(m.local_port)?;
            let rtcp = self.layout.port_index(m.local_port.checked_add(1)?)?;
            Some([Some(rtp), Some(rtcp)])
        };
        let ([a0, a1], [b0, b1]) = (pair(a)?, pair(b)?);
        let ports = [a0, a1, b0, b1];
        let distinct = [a0, a1]
            .iter()
            .flatten()
            .all(|p| b0 != Some(*p) && b1 != Some(*p));
        let free = ports.iter().flatten().all(|&p| match self.owners[p] {
            None => true,
            Some(o) => Some(o.slot) == slot,
        });
        (distinct && free).then_some(ports)
    }

    fn claim(&mut self, ports: [Option<usize>; 4], slot: u32) {
        let roles = [
            (Leg::A, false),
            (Leg::A, true),
            (Leg::B, false),
            (Leg::B, true),
        ];
        for (port, (leg, rtcp)) in ports.into_iter().zip(roles) {
            if let Some(port) = port {
                self.owners[port] = Some(Owner { slot, leg, rtcp });
            }
        }
    }

    /// Frees the ports of the session in `slot`.
    fn release(&mut self, slot: u32) {
        let Some(Some(session)) = self.sessions.get(slot as usize) else {
            return;
        };
        for port in session.ports.into_iter().flatten() {
            if let Some(owner) = self.owners.get_mut(port) {
                if owner.is_some_and(|o| o.slot == slot) {
                    *owner = None;
                }
            }
        }
    }

    fn open(&mut self, id: SessionId, a: LegMedia, b: LegMedia, now: Instant) {
        let Some(ports) = self.claimable(&a, &b, None) else {
            tracing::warn!(
                "RTP relay: session {id} asks for ports {} and {} that are outside the range \
                 or in use; not relayed",
                a.local_port,
                b.local_port
            );
            return;
        };
        let session = Session {
            id,
            legs: [LegState::new(a, now), LegState::new(b, now)],
            ports,
            last_rtp: now,
            timed_out: false,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = Some(session);
                slot
            }
            None => {
                let Ok(slot) = u32::try_from(self.sessions.len()) else {
                    return;
                };
                self.sessions.push(Some(session));
                slot
            }
        };
        self.claim(ports, slot);
        self.index.insert(id, slot);
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (LegStats::default(), LegStats::default()));
    }

    fn update(&mut self, id: SessionId, a: LegMedia, b: LegMedia, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        let Some(ports) = self.claimable(&a, &b, Some(slot)) else {
            tracing::warn!(
                "RTP relay: update of session {id} asks for ports {} and {} that are outside \
                 the range or in use; kept the old parameters",
                a.local_port,
                b.local_port
            );
            return;
        };
        self.release(slot);
        self.claim(ports, slot);
        if let Some(Some(session)) = self.sessions.get_mut(slot as usize) {
            session.ports = ports;
            let [leg_a, leg_b] = &mut session.legs;
            leg_a.update(a, now);
            leg_b.update(b, now);
        }
    }

    fn close(&mut self, id: SessionId) {
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        self.finish_recording(slot, Leg::A);
        self.finish_recording(slot, Leg::B);
        self.playing.retain(|&(s, _)| s != slot);
        self.full_recordings.retain(|&(s, _)| s != slot);
        self.index.remove(&id);
        self.release(slot);
        if let Some(session) = self.sessions.get_mut(slot as usize).and_then(Option::take) {
            let (a, b) = session.stats();
            self.sink.emit(MediaEvent::Stats { session: id, a, b });
        }
        self.free_slots.push(slot);
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn check_timeouts(&mut self, now: Instant) {
        for (slot, session) in self.sessions.iter().enumerate() {
            let Some(session) = session else { continue };
            for leg in [Leg::A, Leg::B] {
                let recorder = session.legs[leg_index(leg)].recorder.as_ref();
                if recorder.is_some_and(|r| r.expired(now)) {
                    if let Ok(slot) = u32::try_from(slot) {
                        self.full_recordings.push((slot, leg));
                    }
                }
            }
        }
        self.finish_full_recordings();
        for session in self.sessions.iter_mut().flatten() {
            if !session.timed_out
                && now.saturating_duration_since(session.last_rtp) >= self.media_timeout
            {
                session.timed_out = true;
                self.sink.emit(MediaEvent::Timeout {
                    session: session.id,
                });
            }
        }
    }

    /// The state of one leg of the session in `slot`.
    fn leg_state(&mut self, slot: u32, leg: Leg) -> Option<&mut LegState> {
        let session = self.sessions.get_mut(slot as usize)?.as_mut()?;
        Some(&mut session.legs[leg_index(leg)])
    }

    /// `Play`: replaces what `leg` hears with `clips` (resolved here, or by the file thread
    /// when a clip is a file).
    fn play(&mut self, id: SessionId, leg: Leg, clips: Vec<String>, repeat: bool, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            tracing::warn!("RTP relay: play to unknown session {id}");
            return;
        };
        self.stop_play(slot, leg);
        let generation = self.generation;
        let Some(state) = self.leg_state(slot, leg) else {
            return;
        };
        if state.media.is_absent() || !is_g711(state.media.codec) {
            tracing::warn!(
                "RTP relay: cannot play to leg {leg:?} of session {id} (absent or not G.711)"
            );
            self.sink.emit(MediaEvent::PlayDone { session: id, leg });
            return;
        }
        state.play_generation = generation;
        if clips.iter().any(|c| files::is_file_clip(c)) {
            self.files.submit(FileJob::Load(Playlist {
                session: id,
                leg,
                generation,
                clips,
                repeat,
            }));
            return;
        }
        let audio = files::resolve(&self.prompts, &clips);
        self.start_player(slot, leg, audio, repeat, now);
    }

    /// A playlist came back from the file thread: play it if it is still wanted.
    fn loaded(&mut self, loaded: Loaded) {
        let Loaded { playlist, audio } = loaded;
        let Some(&slot) = self.index.get(&playlist.session) else {
            return;
        };
        let current = self
            .leg_state(slot, playlist.leg)
            .is_some_and(|s| s.play_generation == playlist.generation);
        if current {
            self.start_player(slot, playlist.leg, audio, playlist.repeat, Instant::now());
        }
    }

    fn start_player(
        &mut self,
        slot: u32,
        leg: Leg,
        audio: Vec<Arc<[u8]>>,
        repeat: bool,
        now: Instant,
    ) {
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        let id = session.id;
        let state = &mut session.legs[leg_index(leg)];
        match Player::new(audio, repeat, now) {
            Some(player) => {
                state.player = Some(player);
                state.talkspurt = true;
                if !self.playing.contains(&(slot, leg)) {
                    self.playing.push((slot, leg));
                }
            }
            None => {
                tracing::warn!("RTP relay: nothing to play to session {id} leg {leg:?}");
                self.sink.emit(MediaEvent::PlayDone { session: id, leg });
            }
        }
    }

    /// Stops the player of a leg (no `PlayDone`) and invalidates a pending file load.
    fn stop_play(&mut self, slot: u32, leg: Leg) {
        self.generation += 1;
        let generation = self.generation;
        if let Some(state) = self.leg_state(slot, leg) {
            state.player = None;
            state.play_generation = generation;
        }
        self.playing.retain(|&e| e != (slot, leg));
    }

    /// When the next played frame is due, if anything plays.
    fn next_play_due(&self) -> Option<Instant> {
        self.playing
            .iter()
            .filter_map(|&(slot, leg)| {
                let session = self.sessions.get(slot as usize)?.as_ref()?;
                session.legs[leg_index(leg)]
                    .player
                    .as_ref()
                    .map(Player::next_due)
            })
            .min()
    }

    /// Sends every frame that is due, on every playing leg.
    fn play_due(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.playing.len() {
            let (slot, leg) = self.playing[i];
            if self.play_leg(slot, leg, now) {
                i += 1;
            } else {
                self.playing.swap_remove(i);
            }
        }
    }

    /// Sends the due frames of one leg; returns whether it still plays.
    fn play_leg(&mut self, slot: u32, leg: Leg, now: Instant) -> bool {
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return false;
        };
        let id = session.id;
        let state = &mut session.legs[leg_index(leg)];
        let route = state.rtp_route(leg, &self.layout);
        let socket = route
            .and_then(|r| self.layout.socket(r.port, r.via))
            .and_then(|s| self.sockets.get(s));
        let Some(player) = state.player.as_mut() else {
            return false;
        };
        let mut frame = [0u8; FRAME];
        for _ in 0..player.frames_due(now) {
            let due = player.next_due();
            let Some(resynced) = player.next_frame(&mut frame) else {
                break;
            };
            let talkspurt = std::mem::take(&mut state.talkspurt) || resynced;
            let header = state.out.next(due, talkspurt, state.media.pt);
            // Before the phone is known there is nowhere to send; the clock runs anyway.
            let (Some(route), Some(socket)) = (route, socket) else {
                continue;
            };
            if state.media.codec == Codec::Pcma {
                g711::transcode(&mut frame, Codec::Pcmu, Codec::Pcma);
            }
            let Ok(len) = header.emit(&mut self.play_buf, &frame) else {
                continue;
            };
            let len = match state.srtp.as_mut() {
                Some(srtp) => match srtp.outbound.protect_rtp(&mut self.play_buf, len) {
                    Ok(len) => len,
                    Err(_) => continue,
                },
                None => len,
            };
            self.counters.send_calls += 1;
            match socket.send_to(&self.play_buf[..len], route.dest) {
                Ok(_) => {
                    self.counters.packets_sent += 1;
                    state.stats.packets_out += 1;
                    state.stats.bytes_out += len as u64;
                }
                Err(_) => self.counters.send_errors += 1,
            }
        }
        if player.is_done() {
            state.player = None;
            self.sink.emit(MediaEvent::PlayDone { session: id, leg });
            return false;
        }
        true
    }

    /// `Record`: starts collecting what `leg`'s phone sends (a recording already running
    /// on that leg is finished first).
    fn record(&mut self, id: SessionId, leg: Leg, path: PathBuf, max_ms: u32, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            self.sink.emit(MediaEvent::RecordingFailed {
                session: id,
                leg,
                path,
                reason: "no such media session".into(),
            });
            return;
        };
        self.finish_recording(slot, leg);
        if let Some(state) = self.leg_state(slot, leg) {
            state.recorder = Some(Recorder::new(path, max_ms, now));
        }
    }

    /// Hands a leg's recording, if any, to the file thread, which writes and reports it.
    fn finish_recording(&mut self, slot: u32, leg: Leg) {
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        let id = session.id;
        let Some(recorder) = session.legs[leg_index(leg)].recorder.take() else {
            return;
        };
        let (path, samples) = recorder.finish();
        self.files.submit(FileJob::Write {
            session: id,
            leg,
            path,
            samples,
        });
    }

    fn finish_full_recordings(&mut self) {
        while let Some((slot, leg)) = self.full_recordings.pop() {
            self.finish_recording(slot, leg);
        }
    }

    fn finish_all_recordings(&mut self) {
        for slot in 0..self.sessions.len() {
            let Ok(slot) = u32::try_from(slot) else {
                break;
            };
            self.finish_recording(slot, Leg::A);
            self.finish_recording(slot, Leg::B);
        }
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
            for session in self.sessions.iter().flatten() {
                snapshot.insert(session.id, session.stats());
            }
        }
        self.counters.events_lost = self.sink.lost;
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.counters;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket as StdUdpSocket};

    use pbx_core::media::dtmf::emit_event;
    use pbx_core::media::g711::{alaw_to_ulaw, ulaw_to_alaw};
    use pbx_core::media::rtcp::{emit_receiver_report, ReportBlock};
    use pbx_core::media::rtp::RtpRepr;

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    /// Upper bound of every wait in these tests.
    const WAIT: Duration = Duration::from_secs(3);
    /// How long a phone waits for a datagram before concluding none comes.
    const QUIET: Duration = Duration::from_millis(250);

    // Port blocks of ten from 23000 on, one per test, below Linux's ephemeral range
    // (32768-60999) so that no phone socket of a parallel test can take them.

    fn relay_on(addrs: Vec<IpAddr>, first: u16, media_timeout: Duration) -> Relay {
        start(RelayConfig {
            addrs,
            port_first: first,
            port_last: first + 9,
            media_timeout,
        })
        .expect("relay starts")
    }

    fn phone(ip: IpAddr) -> StdUdpSocket {
        let socket = StdUdpSocket::bind((ip, 0)).expect("phone binds");
        socket.set_read_timeout(Some(QUIET)).expect("timeout set");
        socket
    }

    /// An RTP socket and an RTCP socket on the port above it, like a real phone.
    fn phone_pair(ip: IpAddr) -> (StdUdpSocket, StdUdpSocket) {
        for _ in 0..100 {
            let rtp = phone(ip);
            let port = rtp.local_addr().expect("bound").port();
            if let Ok(rtcp) = StdUdpSocket::bind((ip, port.wrapping_add(1))) {
                rtcp.set_read_timeout(Some(QUIET)).expect("timeout set");
                return (rtp, rtcp);
            }
        }
        panic!("no two consecutive free ports");
    }

    fn addr(socket: &StdUdpSocket) -> SocketAddr {
        socket.local_addr().expect("bound")
    }

    fn leg(port: u16, phone: &StdUdpSocket, codec: Codec, pt: u8, dtmf: Option<u8>) -> LegMedia {
        let remote = addr(phone);
        LegMedia {
            local_port: port,
            remote: Some(remote),
            allowed_ips: vec![remote.ip()],
            codec,
            pt,
            dtmf_pt: dtmf,
            srtp: None,
        }
    }

    fn pcmu(port: u16, phone: &StdUdpSocket) -> LegMedia {
        leg(port, phone, Codec::Pcmu, 0, None)
    }

    fn rtp_packet(pt: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; rtp::HEADER_LEN + payload.len()];
        RtpRepr {
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc: 0x1234_5678,
        }
        .emit(&mut buf, payload)
        .expect("buffer fits");
        buf
    }

    fn audio(seq: u16) -> Vec<u8> {
        let payload: Vec<u8> = (0..160u8).map(|i| i ^ seq.to_be_bytes()[1]).collect();
        rtp_packet(0, seq, u32::from(seq) * 160, false, &payload)
    }

    fn to(port: u16) -> SocketAddr {
        SocketAddr::new(V4, port)
    }

    fn recv(socket: &StdUdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 4096];
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    }

    fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        done()
    }

    fn open(relay: &Relay, session: SessionId, a: LegMedia, b: LegMedia) {
        relay.command(MediaCommand::Open { session, a, b });
        assert!(
            wait_until(|| relay.stats(session).is_some()),
            "session opened"
        );
    }

    fn next_event(
        events: &mut tokio_mpsc::Receiver<MediaEvent>,
        within: Duration,
    ) -> Option<MediaEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(event) = events.try_recv() {
                return Some(event);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stats_until(
        relay: &Relay,
        session: SessionId,
        done: impl Fn(&LegStats, &LegStats) -> bool,
    ) -> (LegStats, LegStats) {
        let mut last = None;
        wait_until(|| {
            last = relay.stats(session);
            last.is_some_and(|(a, b)| done(&a, &b))
        });
        last.expect("session has stats")
    }

    #[test]
    fn same_codec_is_relayed_byte_for_byte_both_ways() {
        let relay = relay_on(vec![V4], 23000, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 1, pcmu(23000, &a), pcmu(23002, &b));

        for seq in 1..=3 {
            let sent = audio(seq);
            a.send_to(&sent, to(23000)).expect("sent");
            let (got, from) = recv(&b).expect("B receives");
            assert_eq!(got, sent);
            assert_eq!(from, to(23002), "B hears the relay's B-side port");
        }
        let sent = audio(100);
        b.send_to(&sent, to(23002)).expect("sent");
        let (got, from) = recv(&a).expect("A receives");
        assert_eq!((got, from), (sent, to(23000)));

        let (sa, sb) = stats_until(&relay, 1, |sa, sb| {
            sa.packets_in == 3 && sb.packets_in == 1 && sa.packets_out == 1
        });
        assert_eq!((sa.bytes_in, sb.packets_out, sb.bytes_out), (516, 3, 516));
        assert_eq!((sa.latched, sb.latched), (Some(addr(&a)), Some(addr(&b))));
        assert_eq!((sa.lost, sa.dropped), (0, 0));
        relay.shutdown();
    }

    #[test]
    fn pcmu_and_pcma_legs_are_transcoded_with_the_g711_tables() {
        let relay = relay_on(vec![V4], 23010, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        let leg_b = leg(23012, &b, Codec::Pcma, 8, None);
        open(&relay, 2, pcmu(23010, &a), leg_b);
        let every_byte: Vec<u8> = (0..=255).collect();

        a.send_to(&rtp_packet(0, 7, 1120, true, &every_byte), to(23010))
            .expect("sent");
        let (got, _) = recv(&b).expect("B receives");
        let view = RtpPacket::new_checked(&got[..]).expect("valid RTP");
        assert_eq!(view.payload_type(), 8);
        assert_eq!(
            (view.sequence_number(), view.timestamp(), view.marker()),
            (7, 1120, true)
        );
        let expected: Vec<u8> = every_byte.iter().map(|&u| ulaw_to_alaw(u)).collect();
        assert_eq!(view.payload(), &expected[..]);

        b.send_to(&rtp_packet(8, 9, 0, false, &every_byte), to(23012))
            .expect("sent");
        let (got, _) = recv(&a).expect("A receives");
        let view = RtpPacket::new_checked(&got[..]).expect("valid RTP");
        assert_eq!(view.payload_type(), 0);
        let expected: Vec<u8> = every_byte.iter().map(|&x| alaw_to_ulaw(x)).collect();
        assert_eq!(view.payload(), &expected[..]);
    }

    #[test]
    fn strangers_are_dropped_and_counted() {
        let relay = relay_on(vec![V4], 23020, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 3, pcmu(23020, &a), pcmu(23022, &b));
        a.send_to(&audio(1), to(23020)).expect("sent");
        assert!(recv(&b).is_some(), "the phone's own packet is relayed");

        // An address that is not allowed at all, and an allowed IP on another port while
        // the latched source is still talking.
        let outsider = phone(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        outsider.send_to(&audio(2), to(23020)).expect("sent");
        let neighbour = phone(V4);
        neighbour.send_to(&audio(3), to(23020)).expect("sent");
        assert_eq!(recv(&b), None, "nothing from strangers reaches B");

        let (sa, sb) = stats_until(&relay, 3, |sa, _| sa.dropped == 2);
        assert_eq!((sa.dropped, sa.packets_in, sb.packets_out), (2, 1, 1));
        assert_eq!(sa.latched, Some(addr(&a)));
    }

    #[test]
    fn a_new_source_port_relatches_after_a_second_of_silence() {
        let relay = relay_on(vec![V4], 23030, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 4, pcmu(23030, &a), pcmu(23032, &b));
        a.send_to(&audio(1), to(23030)).expect("sent");
        assert!(recv(&b).is_some());

        // The NAT rebinds: same IP, new port. Too early at first, accepted after silence.
        let rebound = phone(V4);
        rebound.send_to(&audio(2), to(23030)).expect("sent");
        assert_eq!(recv(&b), None, "the latched source still counts");
        std::thread::sleep(RELATCH_AFTER);
        rebound.send_to(&audio(3), to(23030)).expect("sent");
        assert_eq!(recv(&b).map(|(p, _)| p), Some(audio(3)));

        b.send_to(&audio(50), to(23032)).expect("sent");
        assert_eq!(recv(&rebound).map(|(p, _)| p), Some(audio(50)));
        let (sa, _) = stats_until(&relay, 4, |sa, _| sa.latched == Some(addr(&rebound)));
        assert_eq!(sa.latched, Some(addr(&rebound)));
        assert_eq!(sa.dropped, 1);
    }

    #[test]
    fn a_silent_session_times_out_once() {
        let mut relay = relay_on(vec![V4], 23040, Duration::from_millis(300));
        let mut events = relay.events().expect("first take");
        assert!(relay.events().is_none(), "the receiver is handed out once");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 5, pcmu(23040, &a), pcmu(23042, &b));
        let started = Instant::now();
        a.send_to(&audio(1), to(23040)).expect("sent");

        let event = next_event(&mut events, WAIT);
        assert_eq!(event, Some(MediaEvent::Timeout { session: 5 }));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(next_event(&mut events, Duration::from_millis(700)), None);
    }

    #[test]
    fn a_dtmf_digit_is_reported_once_for_triple_end_packets() {
        let mut relay = relay_on(vec![V4], 23050, WAIT);
        let mut events = relay.events().expect("first take");
        let (a, b) = (phone(V4), phone(V4));
        let leg_a = leg(23050, &a, Codec::Pcmu, 0, Some(101));
        let leg_b = leg(23052, &b, Codec::Pcmu, 0, Some(96));
        open(&relay, 6, leg_a, leg_b);

        let five = pbx_core::media::dtmf::digit_event('5').expect("a digit");
        let steps = [
            (false, 160),
            (false, 320),
            (false, 480),
            (true, 800),
            (true, 800),
            (true, 800),
        ];
        for (seq, (end, duration)) in (10u16..).zip(steps) {
            let mut payload = [0u8; 4];
            emit_event(&mut payload, five, end, 10, duration);
            let packet = rtp_packet(101, seq, 8000, seq == 10, &payload);
            a.send_to(&packet, to(23050)).expect("sent");
            let (got, _) = recv(&b).expect("B receives the event");
            let view = RtpPacket::new_checked(&got[..]).expect("valid RTP");
            assert_eq!(
                view.payload_type(),
                96,
                "mapped to B's telephone-event type"
            );
            assert_eq!(view.payload(), &payload[..]);
        }
        let event = next_event(&mut events, WAIT);
        assert_eq!(
            event,
            Some(MediaEvent::Dtmf {
                session: 6,
                leg: Leg::A,
                digit: '5',
                duration_ms: 100
            })
        );
        assert_eq!(next_event(&mut events, QUIET), None, "reported once");
    }

    #[test]
    fn telephone_events_are_not_sent_to_a_leg_without_them() {
        let relay = relay_on(vec![V4], 23110, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        let leg_a = leg(23110, &a, Codec::Pcmu, 0, Some(101));
        open(&relay, 12, leg_a, pcmu(23112, &b));
        let mut payload = [0u8; 4];
        emit_event(&mut payload, 1, false, 10, 160);
        a.send_to(&rtp_packet(101, 1, 0, true, &payload), to(23110))
            .expect("sent");
        a.send_to(&audio(2), to(23110)).expect("sent");
        assert_eq!(
            recv(&b).map(|(p, _)| p),
            Some(audio(2)),
            "only audio arrives"
        );
    }

    #[test]
    fn malformed_packets_are_dropped_without_harm() {
        let relay = relay_on(vec![V4], 23060, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 7, pcmu(23060, &a), pcmu(23062, &b));

        let mut version_one = audio(1);
        version_one[0] = 0x40;
        let oversized = vec![0x80u8; BUF_LEN + 100];
        for bad in [&b"\x80\x00\x00"[..], &version_one, &oversized] {
            a.send_to(bad, to(23060)).expect("sent");
        }
        a.send_to(b"not rtcp at all", to(23061)).expect("sent");
        a.send_to(&audio(2), to(23060)).expect("sent");
        assert_eq!(
            recv(&b).map(|(p, _)| p),
            Some(audio(2)),
            "only the good packet"
        );

        let (sa, _) = stats_until(&relay, 7, |sa, _| sa.dropped == 4);
        assert_eq!((sa.dropped, sa.packets_in), (4, 1));
    }

    #[test]
    fn close_reports_final_stats_and_releases_the_ports() {
        let mut relay = relay_on(vec![V4], 23070, WAIT);
        let mut events = relay.events().expect("first take");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 8, pcmu(23070, &a), pcmu(23072, &b));
        a.send_to(&audio(1), to(23070)).expect("sent");
        assert!(recv(&b).is_some());

        relay.command(MediaCommand::Close { session: 8 });
        let Some(MediaEvent::Stats {
            session,
            a: sa,
            b: sb,
        }) = next_event(&mut events, WAIT)
        else {
            panic!("final stats expected");
        };
        assert_eq!((session, sa.packets_in, sb.packets_out), (8, 1, 1));
        assert_eq!(sa.latched, Some(addr(&a)));
        assert!(relay.stats(8).is_none());

        a.send_to(&audio(2), to(23070)).expect("sent");
        assert!(wait_until(|| relay.dropped_unassigned() == 1));
        assert_eq!(recv(&b), None);
    }

    #[test]
    fn ipv6_legs_are_relayed_on_the_v6_sockets() {
        if StdUdpSocket::bind((V6, 0)).is_err() {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        }
        let relay = relay_on(vec![V4, V6], 23080, WAIT);
        let (a, b) = (phone(V6), phone(V6));
        open(&relay, 9, pcmu(23080, &a), pcmu(23082, &b));
        a.send_to(&audio(1), SocketAddr::new(V6, 23080))
            .expect("sent");
        assert_eq!(
            recv(&b),
            Some((audio(1), SocketAddr::new(V6, 23082))),
            "relayed from the v6 socket of B's port"
        );
        b.send_to(&audio(2), SocketAddr::new(V6, 23082))
            .expect("sent");
        assert_eq!(recv(&a).map(|(p, _)| p), Some(audio(2)));
    }

    #[test]
    fn a_taken_port_fails_start_and_names_the_port() {
        let _squatter = StdUdpSocket::bind((V4, 23093)).expect("bind");
        let err = start(RelayConfig {
            addrs: vec![V4],
            port_first: 23090,
            port_last: 23099,
            media_timeout: WAIT,
        })
        .expect_err("port 23093 is taken");
        assert!(err.to_string().contains("127.0.0.1:23093"), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn rtcp_is_forwarded_and_summarised_also_when_muxed() {
        let relay = relay_on(vec![V4], 23100, WAIT);
        let ((a, a_rtcp), (b, b_rtcp)) = (phone_pair(V4), phone_pair(V4));
        open(&relay, 10, pcmu(23100, &a), pcmu(23102, &b));
        let block = ReportBlock {
            ssrc: 0x1234_5678,
            fraction_lost: 3,
            cumulative_lost: 7,
            highest_seq: 1000,
            jitter: 80,
            lsr: 0,
            dlsr: 0,
        };
        let mut report = [0u8; 64];
        let len = emit_receiver_report(&mut report, 0xabcd, &[block]).expect("fits");
        let report = &report[..len];

        a_rtcp.send_to(report, to(23101)).expect("sent");
        assert_eq!(
            recv(&b_rtcp),
            Some((report.to_vec(), to(23103))),
            "to B's SDP port + 1 before B's RTCP latched"
        );
        // RFC 5761: the same report on A's RTP port still goes to B's RTCP port.
        a.send_to(report, to(23100)).expect("sent");
        assert_eq!(recv(&b_rtcp).map(|(p, _)| p), Some(report.to_vec()));
        assert_eq!(recv(&b), None, "no RTCP on B's RTP socket");

        let (sa, _) = stats_until(&relay, 10, |sa, _| sa.rtcp_lost.is_some());
        assert_eq!((sa.rtcp_lost, sa.rtcp_jitter_us), (Some(7), Some(10_000)));
        assert_eq!(sa.packets_in, 0, "RTCP is not counted as RTP");
    }

    #[test]
    fn update_brings_the_answer_and_a_new_remote_resets_the_latch() {
        let relay = relay_on(vec![V4], 23120, WAIT);
        let (a, b) = (phone(V4), phone(V4));
        let unanswered = LegMedia {
            remote: None,
            allowed_ips: Vec::new(),
            ..pcmu(23122, &b)
        };
        open(&relay, 13, pcmu(23120, &a), unanswered);
        a.send_to(&audio(1), to(23120)).expect("sent");
        assert_eq!(recv(&b), None, "B's address is not known yet");

        relay.command(MediaCommand::Update {
            session: 13,
            a: pcmu(23120, &a),
            b: pcmu(23122, &b),
        });
        a.send_to(&audio(2), to(23120)).expect("sent");
        assert_eq!(recv(&b).map(|(p, _)| p), Some(audio(2)), "A's latch stayed");

        // A re-INVITE moves A to another address: the old source no longer counts.
        let moved = phone(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)));
        relay.command(MediaCommand::Update {
            session: 13,
            a: pcmu(23120, &moved),
            b: pcmu(23122, &b),
        });
        b.send_to(&audio(3), to(23122)).expect("sent");
        assert_eq!(
            recv(&moved).map(|(p, _)| p),
            Some(audio(3)),
            "to A's new SDP address"
        );
        a.send_to(&audio(4), to(23120)).expect("sent");
        assert_eq!(recv(&b), None, "the old address is no longer allowed");
    }

    // Playback, recording and single-leg sessions: port blocks from 23130 on.

    /// A relay whose prompts include `ramp` (1 s: sample i is i % 200) and `short` (800
    /// samples of 0x42) besides the built-in tones.
    fn relay_with_prompts(first: u16) -> Relay {
        let mut prompts = PromptStore::builtin();
        let ramp: Vec<u8> = (0..8000u32)
            .map(|i| u8::try_from(i % 200).expect("small"))
            .collect();
        assert!(prompts.insert("ramp", ramp));
        assert!(prompts.insert("short", vec![0x42; 800]));
        start_with_prompts(
            RelayConfig {
                addrs: vec![V4],
                port_first: first,
                port_last: first + 9,
                media_timeout: Duration::from_secs(30),
            },
            prompts,
        )
        .expect("relay starts")
    }

    /// The next RTP packet a phone receives: header, payload, arrival time.
    fn recv_rtp(socket: &StdUdpSocket) -> Option<(RtpRepr, Vec<u8>, Instant)> {
        let (bytes, _) = recv(socket)?;
        let at = Instant::now();
        let view = RtpPacket::new_checked(&bytes[..]).expect("valid RTP");
        Some((RtpRepr::parse(&view), view.payload().to_vec(), at))
    }

    fn play(relay: &Relay, session: SessionId, leg: Leg, clips: &[&str], repeat: bool) {
        relay.command(MediaCommand::Play {
            session,
            leg,
            clips: clips.iter().map(|c| (*c).to_owned()).collect(),
            repeat,
        });
    }

    /// Reads until the phone has heard nothing for a while.
    fn drain_phone(socket: &StdUdpSocket) {
        while recv(socket).is_some() {}
    }

    #[test]
    fn a_one_second_prompt_arrives_as_50_paced_packets_then_play_done() {
        let mut relay = relay_with_prompts(23130);
        let mut events = relay.events().expect("first take");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 20, pcmu(23130, &a), pcmu(23132, &b));
        play(&relay, 20, Leg::A, &["ramp"], false);

        let mut packets = Vec::new();
        while let Some(p) = recv_rtp(&a) {
            packets.push(p);
        }
        assert_eq!(packets.len(), 50, "1 s of audio in 20 ms frames");
        let (first, _, t0) = &packets[0];
        assert!(first.marker, "the talkspurt starts with the marker bit");
        assert_eq!(first.payload_type, 0);
        let mut audio = Vec::new();
        for (i, (h, payload, _)) in packets.iter().enumerate() {
            let i = u16::try_from(i).expect("small");
            assert_eq!(h.sequence_number, first.sequence_number.wrapping_add(i));
            let step = u32::from(i) * 160;
            assert_eq!(h.timestamp, first.timestamp.wrapping_add(step));
            assert_eq!(h.ssrc, first.ssrc);
            assert_eq!(h.marker, i == 0);
            audio.extend_from_slice(payload);
        }
        let expected: Vec<u8> = (0..8000u32)
            .map(|i| u8::try_from(i % 200).expect("small"))
            .collect();
        assert_eq!(audio, expected, "the clip, byte for byte");
        let span = packets[49].2.duration_since(*t0);
        assert!(
            span >= Duration::from_millis(900) && span <= Duration::from_millis(1300),
            "paced at 20 ms: 50 packets over {span:?}"
        );
        let gaps_ok = packets
            .windows(2)
            .filter(|w| w[1].2.duration_since(w[0].2) >= Duration::from_millis(10))
            .count();
        assert!(gaps_ok >= 30, "most packets ~20 ms apart ({gaps_ok} of 49)");

        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::PlayDone {
                session: 20,
                leg: Leg::A
            })
        );
        assert_eq!(next_event(&mut events, QUIET), None, "reported once");
        let (sa, _) = stats_until(&relay, 20, |sa, _| sa.packets_out == 50);
        assert_eq!(sa.bytes_out, 50 * 172);

        // The next Play continues the sequence, with a fresh talkspurt.
        play(&relay, 20, Leg::A, &["short"], false);
        let (next, payload, _) = recv_rtp(&a).expect("plays again");
        assert_eq!(next.sequence_number, first.sequence_number.wrapping_add(50));
        assert!(next.marker);
        assert!(next.timestamp.wrapping_sub(first.timestamp) >= 50 * 160);
        assert_eq!((next.ssrc, payload), (first.ssrc, vec![0x42; 160]));
    }

    #[test]
    fn a_pcma_leg_hears_the_prompt_in_alaw() {
        let relay = relay_with_prompts(23140);
        let (a, b) = (phone(V4), phone(V4));
        open(
            &relay,
            21,
            pcmu(23140, &a),
            leg(23142, &b, Codec::Pcma, 8, None),
        );
        play(&relay, 21, Leg::B, &["ramp"], false);
        let (h, payload, _) = recv_rtp(&b).expect("B hears the prompt");
        assert_eq!(h.payload_type, 8);
        let expected: Vec<u8> = (0..160u8).map(|i| ulaw_to_alaw(i % 200)).collect();
        assert_eq!(payload, expected);
        assert_eq!(recv(&a), None, "A hears nothing");
    }

    #[test]
    fn the_other_leg_is_muted_while_playing_and_heard_again_after_stop() {
        let relay = relay_with_prompts(23150);
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 22, pcmu(23150, &a), pcmu(23152, &b));
        a.send_to(&audio(1), to(23150)).expect("sent");
        assert_eq!(recv(&b).map(|(p, _)| p), Some(audio(1)), "relayed before");

        play(&relay, 22, Leg::B, &["short"], true);
        let (ours, _, _) = recv_rtp(&b).expect("prompt starts");
        for seq in 2..12 {
            a.send_to(&audio(seq), to(23150)).expect("sent");
        }
        for _ in 0..15 {
            let (h, payload, _) = recv_rtp(&b).expect("prompt goes on");
            assert_eq!(h.ssrc, ours.ssrc, "only the prompt reaches B");
            assert_eq!(payload, vec![0x42; 160]);
        }
        let (sa, _) = stats_until(&relay, 22, |sa, _| sa.packets_in == 11);
        assert_eq!(sa.packets_in, 11, "A's audio still counted");

        relay.command(MediaCommand::StopPlay {
            session: 22,
            leg: Leg::B,
        });
        drain_phone(&b);
        a.send_to(&audio(20), to(23150)).expect("sent");
        assert_eq!(recv(&b).map(|(p, _)| p), Some(audio(20)), "relayed again");
        assert_eq!(recv(&b), None);
    }

    #[test]
    fn a_repeating_prompt_loops_until_stopped_without_play_done() {
        let mut relay = relay_with_prompts(23160);
        let mut events = relay.events().expect("first take");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 23, pcmu(23160, &a), pcmu(23162, &b));
        play(&relay, 23, Leg::A, &["short"], true); // 5 frames per loop
        let (first, _, _) = recv_rtp(&a).expect("starts");
        for i in 1..23u16 {
            let (h, payload, _) = recv_rtp(&a).expect("still looping");
            assert_eq!(h.sequence_number, first.sequence_number.wrapping_add(i));
            assert_eq!(
                h.timestamp,
                first.timestamp.wrapping_add(u32::from(i) * 160)
            );
            assert_eq!(payload, vec![0x42; 160]);
        }
        relay.command(MediaCommand::StopPlay {
            session: 23,
            leg: Leg::A,
        });
        drain_phone(&a);
        assert_eq!(recv(&a), None, "stopped");
        assert_eq!(
            next_event(&mut events, QUIET),
            None,
            "no PlayDone for a loop"
        );
    }

    #[test]
    fn a_recording_fills_lost_packets_with_silence_and_is_written_as_wav() {
        let mut relay = relay_with_prompts(23170);
        let mut events = relay.events().expect("first take");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("message.wav");
        let (a, b) = (phone(V4), phone(V4));
        open(
            &relay,
            24,
            leg(23170, &a, Codec::Pcma, 8, None),
            pcmu(23172, &b),
        );
        relay.command(MediaCommand::Record {
            session: 24,
            leg: Leg::A,
            path: path.clone(),
            max_ms: 60_000,
        });
        let missing = [10u16, 20, 30, 31, 77];
        for seq in (1..=100u16).filter(|s| !missing.contains(s)) {
            let alaw = [ulaw_to_alaw(u8::try_from(seq).expect("small")); 160];
            let packet = rtp_packet(8, seq, u32::from(seq) * 160 + 7, seq == 1, &alaw);
            a.send_to(&packet, to(23170)).expect("sent");
            std::thread::sleep(Duration::from_millis(2));
        }
        stats_until(&relay, 24, |sa, _| sa.packets_in == 95);
        relay.command(MediaCommand::StopRecord {
            session: 24,
            leg: Leg::A,
        });
        let Some(MediaEvent::RecordingDone {
            session,
            leg,
            path: written,
            duration_ms,
        }) = next_event(&mut events, WAIT)
        else {
            panic!("RecordingDone expected");
        };
        assert_eq!((session, leg, duration_ms), (24, Leg::A, 2000));
        assert_eq!(written, path);
        let samples = crate::media::wav::read_ulaw(&path).expect("a valid WAV file");
        assert_eq!(samples.len(), 16_000, "100 frames of 20 ms");
        for (i, frame) in samples.chunks(160).enumerate() {
            let seq = u16::try_from(i + 1).expect("small");
            let want = if missing.contains(&seq) {
                0xff
            } else {
                alaw_to_ulaw(ulaw_to_alaw(u8::try_from(seq).expect("small")))
            };
            assert_eq!(frame, &[want; 160][..], "frame {seq}");
        }
        assert!(!dir.path().join("message.wav.tmp").exists());
    }

    #[test]
    fn a_recording_ends_at_max_ms_and_at_close() {
        let mut relay = relay_with_prompts(23180);
        let mut events = relay.events().expect("first take");
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 25, pcmu(23180, &a), pcmu(23182, &b));
        let (short, long) = (dir.path().join("short.wav"), dir.path().join("long.wav"));
        relay.command(MediaCommand::Record {
            session: 25,
            leg: Leg::A,
            path: short.clone(),
            max_ms: 300,
        });
        relay.command(MediaCommand::Record {
            session: 25,
            leg: Leg::B,
            path: long.clone(),
            max_ms: 60_000,
        });
        for seq in 1..=30 {
            a.send_to(&audio(seq), to(23180)).expect("sent");
            b.send_to(&audio(seq), to(23182)).expect("sent");
        }
        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::RecordingDone {
                session: 25,
                leg: Leg::A,
                path: short.clone(),
                duration_ms: 300
            }),
            "stops by itself at max_ms"
        );
        stats_until(&relay, 25, |_, sb| sb.packets_in == 30);
        relay.command(MediaCommand::Close { session: 25 });
        assert!(matches!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::Stats { session: 25, .. })
        ));
        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::RecordingDone {
                session: 25,
                leg: Leg::B,
                path: long.clone(),
                duration_ms: 600
            }),
            "finished at close"
        );
        assert_eq!(
            crate::media::wav::read_ulaw(&short).map(|s| s.len()).ok(),
            Some(2400)
        );
    }

    #[test]
    fn dtmf_is_reported_while_a_prompt_plays() {
        let mut relay = relay_with_prompts(23190);
        let mut events = relay.events().expect("first take");
        let (a, b) = (phone(V4), phone(V4));
        let leg_a = leg(23190, &a, Codec::Pcmu, 0, Some(101));
        open(&relay, 26, leg_a, pcmu(23192, &b));
        play(&relay, 26, Leg::A, &["moh"], true);
        assert!(recv_rtp(&a).is_some(), "music plays");
        let seven = pbx_core::media::dtmf::digit_event('7').expect("a digit");
        for (seq, (end, duration)) in (1u16..).zip([(false, 160), (true, 640), (true, 640)]) {
            let mut payload = [0u8; 4];
            emit_event(&mut payload, seven, end, 10, duration);
            let packet = rtp_packet(101, seq, 3200, seq == 1, &payload);
            a.send_to(&packet, to(23190)).expect("sent");
        }
        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::Dtmf {
                session: 26,
                leg: Leg::A,
                digit: '7',
                duration_ms: 80
            })
        );
        assert!(recv_rtp(&a).is_some(), "the music goes on");
    }

    #[test]
    fn a_single_leg_session_plays_and_can_gain_its_second_leg() {
        let mut relay = relay_with_prompts(23200);
        let mut events = relay.events().expect("first take");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 27, pcmu(23200, &a), LegMedia::absent());
        a.send_to(&audio(1), to(23200)).expect("sent");
        let (sa, _) = stats_until(&relay, 27, |sa, _| sa.packets_in == 1);
        assert_eq!(sa.latched, Some(addr(&a)));

        play(&relay, 27, Leg::A, &["beep"], false);
        let mut heard = 0;
        while recv_rtp(&a).is_some() {
            heard += 1;
        }
        assert_eq!(heard, 25, "500 ms beep");
        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::PlayDone {
                session: 27,
                leg: Leg::A
            })
        );
        play(&relay, 27, Leg::B, &["beep"], false);
        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::PlayDone {
                session: 27,
                leg: Leg::B
            }),
            "nothing to play to an absent leg"
        );

        // The caller is transferred: leg B arrives with an Update.
        relay.command(MediaCommand::Update {
            session: 27,
            a: pcmu(23200, &a),
            b: pcmu(23202, &b),
        });
        a.send_to(&audio(2), to(23200)).expect("sent");
        assert_eq!(recv(&b).map(|(p, _)| p), Some(audio(2)));
        b.send_to(&audio(3), to(23202)).expect("sent");
        assert_eq!(recv(&a).map(|(p, _)| p), Some(audio(3)));

        // Two absent legs are refused.
        relay.command(MediaCommand::Open {
            session: 28,
            a: LegMedia::absent(),
            b: LegMedia::absent(),
        });
        std::thread::sleep(Duration::from_millis(1100));
        assert!(relay.stats(28).is_none());
    }

    #[test]
    fn a_wav_file_clip_plays_before_a_prompt() {
        let mut relay = relay_with_prompts(23210);
        let mut events = relay.events().expect("first take");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("msg.wav");
        crate::media::wav::write_ulaw(&path, &[0x11; 320]).expect("written");
        let (a, b) = (phone(V4), phone(V4));
        open(&relay, 29, pcmu(23210, &a), pcmu(23212, &b));
        let file = path.display().to_string();
        play(
            &relay,
            29,
            Leg::A,
            &[&file, "short", "no-such-prompt"],
            false,
        );
        let mut payloads = Vec::new();
        while let Some((_, payload, _)) = recv_rtp(&a) {
            payloads.push(payload[0]);
        }
        assert_eq!(payloads, [vec![0x11; 2], vec![0x42; 5]].concat());
        assert_eq!(
            next_event(&mut events, WAIT),
            Some(MediaEvent::PlayDone {
                session: 29,
                leg: Leg::A
            })
        );
    }

    fn srtp_leg(port: u16, phone: &StdUdpSocket, remote_key: u8, local_key: u8) -> LegMedia {
        let mut media = pcmu(port, phone);
        media.srtp = Some(SrtpKeys {
            suite: srtp::Suite::AesCm128HmacSha1_80,
            remote_key: [remote_key; srtp::KEY_MATERIAL_LEN],
            local_key: [local_key; srtp::KEY_MATERIAL_LEN],
        });
        media
    }

    fn srtp_ctx(key: u8) -> SrtpContext {
        SrtpContext::new(
            srtp::Suite::AesCm128HmacSha1_80,
            &[key; srtp::KEY_MATERIAL_LEN],
        )
    }

    fn protected(ctx: &mut SrtpContext, packet: &[u8], rtcp: bool) -> Vec<u8> {
        let mut buf = packet.to_vec();
        buf.resize(packet.len() + srtp::MAX_TRAILER, 0);
        let n = if rtcp {
            ctx.protect_rtcp(&mut buf, packet.len())
        } else {
            ctx.protect_rtp(&mut buf, packet.len())
        };
        buf.truncate(n.expect("protects"));
        buf
    }

    #[test]
    fn an_srtp_leg_is_decrypted_and_encrypted_and_forgeries_are_dropped() {
        let relay = relay_with_prompts(23300);
        let (a, b) = (phone(V4), phone(V4));
        // A is SRTP (phone key 1, relay key 2); B is plain RTP.
        open(&relay, 40, srtp_leg(23300, &a, 1, 2), pcmu(23302, &b));
        let (mut a_out, mut a_in) = (srtp_ctx(1), srtp_ctx(2));

        for seq in 1..=3 {
            a.send_to(&protected(&mut a_out, &audio(seq), false), to(23300))
                .expect("sent");
            assert_eq!(
                recv(&b).map(|(p, _)| p),
                Some(audio(seq)),
                "B gets plain RTP"
            );
        }
        b.send_to(&audio(50), to(23302)).expect("sent");
        let (mut got, _) = recv(&a).expect("A receives");
        assert_ne!(got, audio(50), "A gets SRTP");
        let n = a_in
            .unprotect_rtp(&mut got)
            .expect("A can unprotect with the relay's key");
        assert_eq!(got[..n], audio(50)[..]);

        // Forged (wrong key), replayed and plain packets from A's own address go nowhere.
        let forged = protected(&mut srtp_ctx(9), &audio(4), false);
        let replay = protected(&mut srtp_ctx(1), &audio(2), false);
        for bad in [forged, replay, audio(5)] {
            a.send_to(&bad, to(23300)).expect("sent");
        }
        assert_eq!(recv(&b), None, "nothing unauthenticated reaches B");
        let (sa, _) = stats_until(&relay, 40, |sa, _| sa.dropped == 3);
        assert_eq!((sa.dropped, sa.packets_in), (3, 3));

        // RTCP muxed on the RTP port: A's SRTCP is accepted (A counts as muxed only after
        // it authenticated), and B's plain RTCP reaches A as SRTCP.
        let rr = |ssrc: u8| [0x80, 201, 0, 1, 0, 0, 0, ssrc];
        a.send_to(&protected(&mut a_out, &rr(0xaa), true), to(23300))
            .expect("sent");
        b.send_to(&rr(0xbb), to(23302)).expect("sent");
        let (mut got, _) = recv(&a).expect("A receives B's RTCP");
        let n = a_in
            .unprotect_rtcp(&mut got)
            .expect("SRTCP under the relay's key");
        assert_eq!(got[..n], rr(0xbb));
        let (sa, _) = stats_until(&relay, 40, |sa, _| sa.dropped == 3);
        assert_eq!(sa.dropped, 3, "the SRTCP packet passed");

        // A prompt to the SRTP leg is protected too.
        play(&relay, 40, Leg::A, &["short"], false);
        let (mut prompt, _) = recv(&a).expect("prompt packet");
        let n = a_in.unprotect_rtp(&mut prompt).expect("prompt is SRTP");
        assert_eq!(prompt[12..n], [0x42; 160]);
        relay.shutdown();
    }
}
