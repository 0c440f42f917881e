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
//!
//! The module is split sans-IO (smoltcp's `Interface::poll`, quinn-proto's `Connection`):
//! the per-packet decision is pure and takes the time as an argument, so it is tested
//! with a virtual clock; only the engine touches sockets, the thread and the clock.
//! - `table`: the pure core, every session and the state around them (inputs `command`,
//!   `handle`, `loaded`, `play_due`, `check_timeouts`; outputs drained by `poll_output`);
//! - `session`: one call and the per-packet decision for it; `leg`: one leg's state;
//!   `latch`: the symmetric-RTP source check; `ports`: port range layout and ownership;
//!   `output`: what the core asks of its driver;
//! - `engine`: the relay thread's epoll loop around the table; `udp`: the system calls
//!   (binding, `recvmmsg`/`sendmmsg`).
//!
//! [`LegMedia::absent`]: pbx_core::media::session::LegMedia::absent

mod engine;
mod fast;
mod latch;
mod leg;
mod output;
mod ports;
mod session;
mod table;
mod udp;
// The one module of the relay with `unsafe`: io_uring shares memory (message headers,
// buffers, the provided-buffer ring) with the kernel; each block says why it holds.
#[allow(unsafe_code)]
mod uring;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Interest, Poll, Token, Waker};
use pbx_core::media::session::{LegStats, MediaCommand, MediaEvent, SessionId};
use tokio::sync::mpsc as tokio_mpsc;

use self::engine::{Control, Engine, Parts, Shared, WAKER};
use self::fast::FastWorker;
use self::ports::Layout;
use self::table::SessionTable;
use super::files::FileWorker;
use super::prompts::PromptStore;

pub use self::engine::RelayCounters;
pub use self::latch::RELATCH_AFTER;

/// Events queued for the daemon before further ones are dropped (and counted).
const EVENT_CAPACITY: usize = 4096;

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

/// Which system-call interface the relay thread moves datagrams with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayIo {
    /// epoll with `recvmmsg`/`sendmmsg` (the default: in `bench/relay.sh` io_uring made far
    /// fewer system calls but lost more and spent more CPU once the relay fell behind).
    #[default]
    Epoll,
    /// io_uring where the kernel has what it needs (Linux 6.1 and io_uring not disabled),
    /// else epoll.
    Uring,
}

/// Choices beyond [`RelayConfig`] (`[media]` keys the benchmarks and tests also set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// The system-call interface.
    pub io: RelayIo,
    /// Hand latched, plain calls to the kernel (`[media] kernel_fast_path`): needs
    /// CAP_NET_ADMIN and nft; without them the relay runs in user space alone and
    /// [`Relay::fast_path`] says why.
    pub kernel_fast_path: bool,
}

/// The kernel fast path as the relay reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastPathState {
    /// Not asked for.
    Off,
    /// Running; this many call directions are in the kernel now (two per call).
    On {
        /// Directions in the kernel.
        directions: usize,
    },
    /// Asked for but not available (or stopped after the kernel refused an update): why.
    Unavailable(String),
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
    start_with_io(cfg, prompts, RelayIo::default())
}

/// Like [`start_with_prompts`], on the I/O back end `io`.
pub fn start_with_io(cfg: RelayConfig, prompts: PromptStore, io: RelayIo) -> io::Result<Relay> {
    start_with_options(
        cfg,
        prompts,
        RelayOptions {
            io,
            kernel_fast_path: false,
        },
    )
}

/// Like [`start_with_prompts`], with `opts`.
pub fn start_with_options(
    cfg: RelayConfig,
    prompts: PromptStore,
    opts: RelayOptions,
) -> io::Result<Relay> {
    let io = opts.io;
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
    udp::raise_fd_limit(ports, naddrs)?;

    let poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(ports * naddrs);
    for port in cfg.port_first..=cfg.port_last {
        for ip in &cfg.addrs {
            let mut socket = udp::bind_udp(SocketAddr::new(*ip, port))?;
            poll.registry()
                .register(&mut socket, Token(sockets.len()), Interest::READABLE)?;
            sockets.push(socket);
        }
    }
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let layout = Layout::new(cfg.port_first, ports, &cfg.addrs);
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
    let mut table = SessionTable::new(layout, cfg.media_timeout, prompts);
    let fast = if opts.kernel_fast_path {
        // The kernel rewrites the source to the box's address on the far side, so it must
        // know it: a relay bound on 0.0.0.0 learns no address per packet.
        let concrete = cfg
            .addrs
            .iter()
            .any(|a| matches!(a, IpAddr::V4(v4) if !v4.is_unspecified()));
        let installed = if concrete {
            Ok(())
        } else {
            Err("it needs concrete IPv4 relay addresses (`media.addrs`), not 0.0.0.0".to_string())
        }
        .and_then(|()| {
            firewall::nft::fastpath::FastPath::install(cfg.port_first, cfg.port_last)
                .map_err(|e| e.to_string())
        })
        .and_then(|fp| {
            let (control, waker) = (control_tx.clone(), Arc::clone(&waker));
            FastWorker::start(fp, move |report| {
                if control.send(Control::Fast(report)).is_ok() {
                    let _ = waker.wake();
                }
            })
            .map_err(|e| e.to_string())
        });
        match installed {
            Ok(worker) => {
                table.enable_fast(cfg.addrs.clone());
                *shared.fast.lock().unwrap_or_else(PoisonError::into_inner) = Some(Ok(0));
                tracing::info!("RTP relay: kernel fast path on");
                Some(worker)
            }
            Err(why) => {
                tracing::warn!("RTP relay: kernel fast path unavailable, user space only: {why}");
                *shared.fast.lock().unwrap_or_else(PoisonError::into_inner) = Some(Err(why));
                None
            }
        }
    } else {
        None
    };
    let thread_shared = Arc::clone(&shared);
    let (tid_tx, tid_rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("rtp-relay".into())
        .spawn(move || {
            // The I/O headers hold raw pointers (not Send), so the engine is built here.
            let mut engine = Engine::new(Parts {
                poll,
                sockets,
                addr_is_v6,
                table,
                control: control_rx,
                events: event_tx,
                shared: thread_shared,
                files,
                io,
                fast,
            });
            let ring = engine.back_end();
            // The receiver waits for this; if it is gone, start() already failed.
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            engine.run(ring);
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
        self.commands(vec![cmd]);
    }

    /// Hands several commands to the relay thread at once, in order, with one wake-up
    /// (the daemon sends what one inbound message produced); never blocks. Nothing is sent
    /// for an empty batch.
    pub fn commands(&self, cmds: Vec<MediaCommand>) {
        if !cmds.is_empty() {
            self.send(Control::Batch(cmds));
        }
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

    /// Whether the relay thread runs the io_uring back end (set once it started).
    pub fn uses_io_uring(&self) -> bool {
        self.shared.uring.load(Ordering::Relaxed)
    }

    /// Whether the kernel fast path runs (as of the last snapshot), and if not, why.
    pub fn fast_path(&self) -> FastPathState {
        match &*self
            .shared
            .fast
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            None => FastPathState::Off,
            Some(Ok(directions)) => FastPathState::On {
                directions: *directions,
            },
            Some(Err(why)) => FastPathState::Unavailable(why.clone()),
        }
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

// The end-to-end tests of the engine on real loopback sockets.
#[cfg(test)]
mod tests;
// The kernel fast path in three network namespaces (root).
#[cfg(test)]
mod kernel_tests;
