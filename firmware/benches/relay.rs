//! RTP relay benchmark: N concurrent G.711 calls through the relay on loopback.
//!
//! The relay runs in-process, its thread pinned to CPU 0. This program's main thread, on
//! CPU 1, plays both phones of every call: 50 packets/s each way per call, 172-byte PCMU
//! packets (12-byte header + 160 payload) with the send time embedded in the payload, sent
//! with `sendmmsg` and read back with `recvmmsg`. For each N of a ramp it prints the offered
//! rate, loss, latency through the relay (median, p99), the relay thread's CPU share and the
//! process RSS, and at the end the largest N with < 0.1 % loss among the steps that held
//! the nominal rate with a median latency below 1 ms.
//!
//! A first "direct" step sends the same traffic phone to phone without the relay: its
//! latency is the floor that the generator and loopback add by themselves.
//!
//! Knobs (environment): `RELAY_BENCH_STEPS` (comma-separated N, default
//! 250,500,1000,1500,2000,2500,3000,3500,4000), `RELAY_BENCH_SECS` (per step, default 5),
//! `RELAY_BENCH_PORT` (first relay port, default 6000; the range is 4 ports per call).
//! "relay thr" is the relay thread's own CPU time (utime + stime); "irq 0" is CPU 0's
//! interrupt time (mostly the softirq work of delivering the relay's packets on loopback);
//! "other 0" is what other programs took from CPU 0: when it is not near 0 the machine was
//! shared and the step's figures are not the relay's. "µs/packet" is relay thread plus
//! CPU 0 interrupt time per relayed packet; "batch" is datagrams per `recvmmsg` call.
//!
//! Before the ramp, "srtp" prints what an SRTP leg adds per packet: protect plus unprotect
//! of one 172-byte PCMU packet (RFC 3711, AES-CM-128, HMAC-SHA1), on this thread, in ns.
//! A relayed packet between two SRTP legs pays it once (unprotect on one leg, protect on
//! the other). `RELAY_BENCH_SRTP_ONLY=1` stops after it.
//!
//! Run: `cargo bench -p firmware --bench relay`.

// Figures are printed as floats, and RTP sequence numbers and timestamps wrap by design.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use firmware::media::relay::{FastPathState, RelayIo, RelayOptions};
use firmware::media::{self, PromptStore, RelayConfig};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use nix::unistd::{sysconf, Pid, SysconfVar};
use pbx_core::media::session::{Codec, LegMedia, MediaCommand};
use pbx_core::media::srtp::{SrtpContext, Suite, MAX_TRAILER};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The relay's own loopback address: its ports cannot collide with programs on 127.0.0.1
/// (SIPp's media ports from 6000, another daemon's relay range).
const RELAY_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// With RELAY_BENCH_NETNS: the relay's address inside the namespace, and the phones' here.
const NS_RELAY_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 78, 0, 1));
const NS_PHONE_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 78, 0, 2));
/// Sockets the generator plays all phones from (legs share them; latching is per leg).
const GEN_SOCKETS: usize = 8;
const PACKET_LEN: usize = 172;
const PTIME: Duration = Duration::from_millis(20);
const BATCH: usize = 32;
/// Time after the last send for late packets to arrive.
const DRAIN: Duration = Duration::from_millis(300);
/// Latency histogram: 1 µs buckets up to 100 ms, the last bucket holds the rest.
const HIST_BUCKETS: usize = 100_000;
/// A step counts only if its median latency stays below this: a growing queue (the relay
/// behind the offered rate) loses nothing within a short step, only later.
const SUSTAINED_MEDIAN_US: usize = 1000;
/// A step losing more than this ends the ramp: the relay is saturated.
const GIVE_UP_LOSS_PCT: f64 = 5.0;

fn main() {
    srtp_cost();
    if env_or("RELAY_BENCH_SRTP_ONLY", "0") == "1" {
        return;
    }
    let steps: Vec<usize> = env_or(
        "RELAY_BENCH_STEPS",
        "250,500,1000,1500,2000,2500,3000,3500,4000",
    )
    .split(',')
    .filter_map(|s| s.trim().parse().ok())
    .filter(|&n| n > 0)
    .collect();
    let secs: u64 = env_or("RELAY_BENCH_SECS", "5")
        .parse()
        .unwrap_or(5)
        .clamp(1, 60);
    let port_first: u16 = env_or("RELAY_BENCH_PORT", "10000").parse().unwrap_or(10000);
    let max_calls = steps.iter().copied().max().unwrap_or(0);
    let Some(port_last) = u16::try_from(max_calls * 4)
        .ok()
        .and_then(|span| port_first.checked_add(span.saturating_sub(1)))
    else {
        eprintln!("relay bench: {max_calls} calls do not fit above port {port_first}");
        return;
    };
    let step_time = Duration::from_secs(secs);
    // With RELAY_BENCH_NETNS (bench/relay.sh sets it for IO=kernel) Outpost's relay runs in
    // that namespace on NS_RELAY_ADDR and the phones here on NS_PHONE_ADDR, over a veth pair:
    // the kernel fast path forwards only between interfaces.
    let netns = std::env::var("RELAY_BENCH_NETNS").ok();
    let mut targets: Vec<Target> = match env_or("RELAY_BENCH_IO", "both").as_str() {
        "epoll" => vec![Target::Outpost(RelayIo::Epoll)],
        "kernel" => vec![Target::Outpost(RelayIo::Epoll), Target::Kernel],
        "uring" => vec![Target::Outpost(RelayIo::Uring)],
        _ => vec![
            Target::Outpost(RelayIo::Epoll),
            Target::Outpost(RelayIo::Uring),
        ],
    };
    let mut rtpengine = Rtpengine::from_env();
    if rtpengine.is_some() {
        targets.push(Target::Rtpengine);
    }
    let rounds: usize = env_or("RELAY_BENCH_ROUNDS", "2")
        .parse()
        .unwrap_or(2)
        .clamp(1, 10);
    let relay_addr = if netns.is_some() {
        NS_RELAY_ADDR
    } else {
        RELAY_ADDR
    };
    let cfg = RelayConfig {
        addrs: vec![relay_addr],
        port_first,
        port_last,
        media_timeout: Duration::from_secs(60),
    };
    let pinned = pin(0, 1);
    println!(
        "relay bench: ports {port_first}-{port_last}, {secs} s per step, {rounds} round(s) of \
         {} per N, {}",
        targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" then "),
        if pinned {
            "relay thread on CPU 0, generator on CPU 1"
        } else {
            "CPU pinning unavailable (fewer than 2 CPUs?)"
        }
    );
    let tick = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;

    let mut gen = Generator::new(LOCALHOST);
    let mut gen_ns = netns.as_ref().map(|_| Generator::new(NS_PHONE_ADDR));
    let direct = Plan::direct(&gen, steps.first().copied().unwrap_or(250));
    let r = gen.run(&direct, 0, Duration::from_secs(2));
    println!(
        "direct (no relay), {} calls: loss {:.3} %, latency median {} µs, p99 {} µs",
        direct.calls,
        r.loss_pct(),
        r.percentile(0.5),
        r.percentile(0.99)
    );

    println!(
        "{:>6} {:>6} {:>12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
        "N",
        "io",
        "offered/s",
        "loss %",
        "median µs",
        "p99 µs",
        "relay thr",
        "irq 0",
        "other 0",
        "µs/packet",
        "sys/pkt",
        "RSS MiB",
        "box µs/p"
    );
    let mut best: Vec<Option<(usize, f64)>> = vec![None; targets.len()];
    let mut run = 0usize;
    'ramp: for &calls in &steps {
        let mut saturated = vec![false; targets.len()];
        for _round in 0..rounds {
            for (k, &target) in targets.iter().enumerate() {
                run += 1;
                let tag = u8::try_from(run % 250 + 1).unwrap_or(1);
                let session_base = run as u64 * 1_000_000;
                // The relay under test, its sessions open, and the threads to account.
                let (plan, label, under_test) = match target {
                    Target::Outpost(_) | Target::Kernel => {
                        let (io, fast) = match target {
                            Target::Outpost(io) => (io, false),
                            _ => (RelayIo::Epoll, true),
                        };
                        let opts = RelayOptions {
                            io,
                            kernel_fast_path: fast,
                        };
                        let start = {
                            let cfg = cfg.clone();
                            move || {
                                media::relay::start_with_options(cfg, PromptStore::builtin(), opts)
                                    .expect("relay starts (is the port range free?)")
                            }
                        };
                        let relay = match &netns {
                            Some(ns) => in_netns(ns, start),
                            None => start(),
                        };
                        pin(relay.thread_id(), 0);
                        let label = if fast {
                            "kernel"
                        } else {
                            io_name(io, relay.uses_io_uring())
                        };
                        let g = gen_ns.as_ref().unwrap_or(&gen);
                        let plan = Plan::relayed(g, calls, port_first, relay_addr);
                        let opens = (0..calls)
                            .map(|call| {
                                plan.open_command(session_base + call as u64, call, port_first)
                            })
                            .collect();
                        relay.commands(opens);
                        let last = session_base + calls as u64 - 1;
                        let opened = Instant::now();
                        while relay.stats(last).is_none()
                            && opened.elapsed() < Duration::from_secs(5)
                        {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        if let Some(g) = gen_ns.as_mut() {
                            // Latch every leg (and, on the fast path, let the relay hand the
                            // calls to the kernel) before measuring: a tag nobody counts.
                            let warm = tag.wrapping_add(100);
                            g.run(&plan, warm, Duration::from_secs(1));
                            let want = 2 * calls;
                            while fast
                                && !matches!(relay.fast_path(), FastPathState::On { directions } if directions >= want)
                                && opened.elapsed() < Duration::from_secs(20)
                            {
                                g.run(&plan, warm, Duration::from_millis(200));
                            }
                            if fast {
                                if let FastPathState::On { directions } = relay.fast_path() {
                                    if directions < want {
                                        println!("              (only {directions} of {want} directions in the kernel)");
                                    }
                                } else {
                                    println!("              (fast path {:?})", relay.fast_path());
                                }
                            }
                        }
                        (plan, label, UnderTest::Outpost(relay))
                    }
                    Target::Rtpengine => {
                        let Some(peer) = rtpengine.as_mut() else {
                            continue;
                        };
                        let Some(plan) = peer.open(&gen, calls, run) else {
                            println!(
                                "{calls:>6} rtpeng   (offer/answer failed: is rtpengine running?)"
                            );
                            saturated[k] = true;
                            continue;
                        };
                        (plan, "rtpeng", UnderTest::Rtpengine(peer.pid))
                    }
                };
                let tids = under_test.threads();
                let syscalls: Vec<SyscallCounter> = tids
                    .iter()
                    .filter_map(|&t| SyscallCounter::new(t))
                    .collect();
                let counted = !syscalls.is_empty() && syscalls.len() == tids.len();
                let before_sys: u64 = syscalls.iter().map(SyscallCounter::read).sum();
                let before_cpu: u64 = tids.iter().map(|&t| task_cpu_ticks(&under_test, t)).sum();
                let (before_busy0, before_irq0) = cpu_ticks(0);
                let before_all = all_busy_ticks();
                let gen_tid = nix::unistd::gettid().as_raw();
                let before_gen = thread_ticks(gen_tid);
                let ksoftirqd1 = ksoftirqd_pid(1);
                let before_ksoft = ksoftirqd1.map_or(0, proc_ticks);
                let before_soft1 = softirq_ticks(1);
                let g = match (target, gen_ns.as_mut()) {
                    (Target::Rtpengine, _) | (_, None) => &mut gen,
                    (_, Some(g)) => g,
                };
                let r = g.run(&plan, tag, step_time);
                // Every CPU's busy time less this generator thread's own: the box's work,
                // softirq forwarding on whichever CPU included. Tick accounting charges a
                // softirq tick to the task it interrupted too, so the softirq ticks of the
                // generator's CPU not spent in ksoftirqd (the forwarding that ran in the
                // generator's send calls) are given back to the box.
                let soft1 = softirq_ticks(1);
                let soft_in_gen = soft1.saturating_sub(before_soft1).saturating_sub(
                    ksoftirqd1
                        .map_or(0, proc_ticks)
                        .saturating_sub(before_ksoft),
                );
                let box_s = (all_busy_ticks().saturating_sub(before_all) as f64
                    - thread_ticks(gen_tid).saturating_sub(before_gen) as f64
                    + soft_in_gen as f64)
                    .max(0.0)
                    / tick;
                let sys = counted.then(|| {
                    syscalls
                        .iter()
                        .map(SyscallCounter::read)
                        .sum::<u64>()
                        .saturating_sub(before_sys)
                });
                let cpu_s = tids
                    .iter()
                    .map(|&t| task_cpu_ticks(&under_test, t))
                    .sum::<u64>()
                    .saturating_sub(before_cpu) as f64
                    / tick;
                let (busy0, irq0) = cpu_ticks(0);
                let irq0_s = irq0.saturating_sub(before_irq0) as f64 / tick;
                // CPU 0 time that was neither the relay nor interrupt work: other programs.
                let other0_s =
                    (busy0.saturating_sub(before_busy0) as f64 / tick - cpu_s - irq0_s).max(0.0);
                let window = r.send_secs + DRAIN.as_secs_f64();
                let offered = r.sent as f64 / r.send_secs;
                let relayed = r.received.max(1) as f64;
                println!(
                    "{:>6} {:>6} {:>12.0} {:>9.3} {:>10} {:>9} {:>8.1}% {:>8.1}% {:>8.1}% {:>10.2} {:>8} {:>9.1} {:>9.2}",
                    calls,
                    label,
                    offered,
                    r.loss_pct(),
                    r.percentile(0.5),
                    r.percentile(0.99),
                    100.0 * cpu_s / window,
                    100.0 * irq0_s / window,
                    100.0 * other0_s / window,
                    1e6 * (cpu_s + irq0_s) / relayed,
                    sys.map_or_else(
                        || "n/a".to_string(),
                        |n| format!("{:.3}", n as f64 / relayed)
                    ),
                    under_test.rss_mib(),
                    1e6 * box_s / relayed
                );
                match under_test {
                    UnderTest::Outpost(mut relay) => {
                        if env_or("RELAY_BENCH_COUNTERS", "0") == "1" {
                            // The counters are published once a second.
                            std::thread::sleep(Duration::from_millis(1100));
                            let c = relay.counters();
                            println!(
                                "              relay: {} in ({} receiving calls), {} sent ({} sending calls), {} send errors, {} unassigned; generator: {} sent, {} back",
                                c.packets_received, c.recv_calls, c.packets_sent, c.send_calls,
                                c.send_errors, c.unassigned, r.sent, r.received
                            );
                        }
                        if let Some(mut events) = relay.events() {
                            while events.try_recv().is_ok() {}
                        }
                        relay.shutdown();
                    }
                    UnderTest::Rtpengine(_) => {
                        if let Some(peer) = rtpengine.as_mut() {
                            peer.close(calls, run);
                        }
                    }
                }
                let nominal = calls as f64 * 2.0 / PTIME.as_secs_f64();
                let sustained =
                    offered >= 0.95 * nominal && r.percentile(0.5) < SUSTAINED_MEDIAN_US;
                if 100.0 * other0_s / window > 5.0 {
                    println!("              (other programs used CPU 0 during this step: figures disturbed)");
                }
                // A size counts for a back end when every round of it was clean.
                if r.loss_pct() < 0.1 && sustained {
                    if !saturated[k] && best[k].is_none_or(|(n, _)| n <= calls) {
                        best[k] = Some((calls, offered));
                    }
                } else {
                    saturated[k] = true;
                    if best[k].is_some_and(|(n, _)| n == calls) {
                        best[k] = None;
                    }
                }
                if r.loss_pct() > GIVE_UP_LOSS_PCT && targets.len() == 1 {
                    println!("(loss above {GIVE_UP_LOSS_PCT} %: ramp stopped)");
                    break 'ramp;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if saturated.iter().all(|&s| s) && calls >= steps.iter().copied().max().unwrap_or(0) {
            break;
        }
    }
    println!(
        "(a step counts when every round offered >= 95 % of 100 packets/s per call with < 0.1 % \
         loss and a median latency below {SUSTAINED_MEDIAN_US} µs; sys/pkt: system calls entered \
         by the relay thread per datagram relayed, from the raw_syscalls:sys_enter tracepoint)"
    );
    for (k, target) in targets.iter().enumerate() {
        let name = target.name();
        match best[k] {
            Some((calls, offered)) => {
                println!(
                    "relay {name}: largest N with < 0.1 % loss: {calls} ({offered:.0} packets/s)"
                )
            }
            None => println!("relay {name}: largest N with < 0.1 % loss: none"),
        }
    }
}

/// What a row of the table measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Outpost's relay on one I/O back end.
    Outpost(RelayIo),
    /// rtpengine in user space (RELAY_BENCH_RTPENGINE), driven over its ng protocol.
    Rtpengine,
    /// Outpost's relay (epoll) with the kernel fast path.
    Kernel,
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Outpost(io) => io_name(*io, *io == RelayIo::Uring),
            Target::Rtpengine => "rtpeng",
            Target::Kernel => "kernel",
        }
    }
}

/// The relay a step runs through.
enum UnderTest {
    /// In this process; only its relay thread is accounted.
    Outpost(media::Relay),
    /// rtpengine's process (every thread accounted).
    Rtpengine(i32),
}

impl UnderTest {
    /// The Linux thread ids whose CPU time and system calls count.
    fn threads(&self) -> Vec<i32> {
        match self {
            UnderTest::Outpost(relay) => vec![relay.thread_id()],
            UnderTest::Rtpengine(pid) => std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|dir| {
                    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Resident memory of the process that relays, in MiB.
    fn rss_mib(&self) -> f64 {
        let path = match self {
            UnderTest::Outpost(_) => "/proc/self/status".to_string(),
            UnderTest::Rtpengine(pid) => format!("/proc/{pid}/status"),
        };
        let status = std::fs::read_to_string(path).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// rtpengine's ng control protocol (bencoded dictionaries over UDP): one offer and one
/// answer per call, a delete after the step.
struct Rtpengine {
    ctl: UdpSocket,
    addr: SocketAddr,
    pid: i32,
    cookie: u64,
    buf: Vec<u8>,
}

impl Rtpengine {
    /// From RELAY_BENCH_RTPENGINE (its ng address) and RELAY_BENCH_RTPENGINE_PID.
    fn from_env() -> Option<Rtpengine> {
        let addr: SocketAddr = std::env::var("RELAY_BENCH_RTPENGINE").ok()?.parse().ok()?;
        let pid: i32 = std::env::var("RELAY_BENCH_RTPENGINE_PID")
            .ok()?
            .parse()
            .ok()?;
        let ctl = UdpSocket::bind((LOCALHOST, 0)).ok()?;
        ctl.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(Rtpengine {
            ctl,
            addr,
            pid,
            cookie: 0,
            buf: vec![0; 65536],
        })
    }

    /// Sends one command (`fields` in bencode's key order) and returns the reply.
    fn request(&mut self, fields: &[(&str, &str)]) -> Option<Vec<u8>> {
        self.cookie += 1;
        let cookie = format!("{} ", self.cookie);
        let mut msg = cookie.clone().into_bytes();
        msg.push(b'd');
        for (k, v) in fields {
            msg.extend_from_slice(format!("{}:{k}{}:{v}", k.len(), v.len()).as_bytes());
        }
        msg.push(b'e');
        self.ctl.send_to(&msg, self.addr).ok()?;
        // Bounded: replies to earlier (timed-out) cookies are skipped, at most 16.
        for _ in 0..16 {
            let (n, _) = self.ctl.recv_from(&mut self.buf).ok()?;
            if self.buf[..n].starts_with(cookie.as_bytes()) {
                return Some(self.buf[..n].to_vec());
            }
        }
        None
    }

    /// The media port in the SDP of an offer or answer reply.
    fn sdp_port(reply: &[u8]) -> Option<u16> {
        let key = reply.windows(5).position(|w| w == b"3:sdp")? + 5;
        let colon = key + reply[key..].iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&reply[key..colon]).ok()?.parse().ok()?;
        let sdp = std::str::from_utf8(reply.get(colon + 1..colon + 1 + len)?).ok()?;
        sdp.lines()
            .find_map(|l| l.strip_prefix("m=audio "))?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    /// Offer and answer for `calls` calls whose phones are the generator's sockets;
    /// the plan sends each phone's stream to the port rtpengine gave it.
    fn open(&mut self, gen: &Generator, calls: usize, run: usize) -> Option<Plan> {
        let sdp = |phone: SocketAddr| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
                phone.port()
            )
        };
        let mut dests = Vec::with_capacity(2 * calls);
        for call in 0..calls {
            let call_id = format!("bench-{run}-{call}");
            let a = gen.addrs[(2 * call) % GEN_SOCKETS];
            let b = gen.addrs[(2 * call + 1) % GEN_SOCKETS];
            let offer = self.request(&[
                ("call-id", &call_id),
                ("command", "offer"),
                ("from-tag", "a"),
                ("sdp", &sdp(a)),
            ])?;
            // Where B sends (the offer's SDP goes to B).
            let to_b = Self::sdp_port(&offer)?;
            let answer = self.request(&[
                ("call-id", &call_id),
                ("command", "answer"),
                ("from-tag", "a"),
                ("sdp", &sdp(b)),
                ("to-tag", "b"),
            ])?;
            let to_a = Self::sdp_port(&answer)?;
            dests.push(SockaddrStorage::from(SocketAddr::new(self.addr.ip(), to_a)));
            dests.push(SockaddrStorage::from(SocketAddr::new(self.addr.ip(), to_b)));
        }
        Some(Plan {
            calls,
            dests,
            phones: gen.addrs.clone(),
        })
    }

    /// Deletes the calls of run `run`.
    fn close(&mut self, calls: usize, run: usize) {
        for call in 0..calls {
            let call_id = format!("bench-{run}-{call}");
            let _ = self.request(&[
                ("call-id", &call_id),
                ("command", "delete"),
                ("from-tag", "a"),
            ]);
        }
    }
}

/// The short name of a back end in the table.
fn io_name(io: RelayIo, uring: bool) -> &'static str {
    match (io, uring) {
        (RelayIo::Epoll, _) => "epoll",
        (RelayIo::Uring, true) => "uring",
        (RelayIo::Uring, false) => "uring->epoll",
    }
}

/// Counts the system calls one thread enters (perf tracepoint raw_syscalls:sys_enter).
struct SyscallCounter {
    file: std::fs::File,
}

impl SyscallCounter {
    /// `None` where tracefs or perf events are unavailable (mount tracefs, run as root).
    #[allow(unsafe_code)]
    fn new(tid: i32) -> Option<SyscallCounter> {
        use std::os::fd::FromRawFd;
        let id: u64 =
            std::fs::read_to_string("/sys/kernel/tracing/events/raw_syscalls/sys_enter/id")
                .ok()?
                .trim()
                .parse()
                .ok()?;
        // struct perf_event_attr (128 bytes): type PERF_TYPE_TRACEPOINT (2) and size in the
        // first word, config = the tracepoint id; everything else 0 (enabled, user and
        // kernel counted, this thread only).
        let mut attr = [0u64; 16];
        attr[0] = 2 | (128 << 32);
        attr[1] = id;
        // SAFETY: attr is a valid, fully initialised perf_event_attr of the size it states;
        // the kernel only reads it.
        let fd = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_perf_event_open,
                attr.as_ptr(),
                tid,
                -1i32,
                -1i32,
                0u64,
            )
        };
        let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
        // SAFETY: the kernel just returned this descriptor, owned by nothing else.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        Some(SyscallCounter { file })
    }

    fn read(&self) -> u64 {
        use std::io::Read;
        let mut bytes = [0u8; 8];
        match (&self.file).read_exact(&mut bytes) {
            Ok(()) => u64::from_ne_bytes(bytes),
            Err(_) => 0,
        }
    }
}

/// Prints the cost of protect + unprotect of one PCMU packet for both suites.
fn srtp_cost() {
    const ROUNDS: u32 = 200_000;
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
        let key: [u8; 30] = std::array::from_fn(|i| i as u8);
        let mut tx = SrtpContext::new(suite, &key);
        let mut rx = SrtpContext::new(suite, &key);
        let mut buf = [0u8; PACKET_LEN + MAX_TRAILER];
        buf[0] = 0x80;
        buf[8..12].copy_from_slice(&0x5eed_u32.to_be_bytes());
        let start = Instant::now();
        for i in 0..ROUNDS {
            let seq = i as u16;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[4..8].copy_from_slice(&(i * 160).to_be_bytes());
            let n = tx
                .protect_rtp(&mut buf, PACKET_LEN)
                .expect("room for the tag");
            let m = rx
                .unprotect_rtp(&mut buf[..n])
                .expect("own packet unprotects");
            assert_eq!(m, PACKET_LEN);
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        println!(
            "srtp {}: protect + unprotect of a {PACKET_LEN}-byte packet: {ns:.0} ns",
            suite.name()
        );
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Pins thread `tid` (0: the calling thread) to `cpu`; false if that is impossible.
/// Runs `f` on a thread inside network namespace `ns` (threads and sockets it makes stay
/// there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the bench namespace exists");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// The tick counters of one line of /proc/stat (`cpu` for all CPUs together, `cpuN`):
/// user nice system idle iowait irq softirq steal ...; empty when absent.
fn proc_stat_ticks(name: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Busy ticks of every CPU together (the `cpu` line of /proc/stat, idle and iowait aside).
fn all_busy_ticks() -> u64 {
    let ticks = proc_stat_ticks("cpu");
    let total: u64 = ticks.iter().take(8).sum();
    total.saturating_sub(ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0))
}

/// Softirq ticks of CPU `cpu`.
fn softirq_ticks(cpu: usize) -> u64 {
    proc_stat_ticks(&format!("cpu{cpu}"))
        .get(6)
        .copied()
        .unwrap_or(0)
}

/// The pid of `ksoftirqd/CPU`.
fn ksoftirqd_pid(cpu: usize) -> Option<i32> {
    let want = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == want).then_some(pid)
    })
}

/// utime + stime of process `pid`, in clock ticks.
fn proc_ticks(pid: i32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime of one thread of this process, in clock ticks.
fn thread_ticks(tid: i32) -> u64 {
    stat_ticks(&format!("/proc/self/task/{tid}/stat"))
}

/// utime + stime from a `stat` file (fields 14 and 15; the command name may hold spaces, so
/// counted after its closing parenthesis); 0 when unreadable.
fn stat_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn pin(tid: i32, cpu: usize) -> bool {
    let mut set = CpuSet::new();
    set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(tid), &set).is_ok()
}

/// utime + stime of one thread of the relay under test, in clock ticks.
fn task_cpu_ticks(under_test: &UnderTest, tid: i32) -> u64 {
    match under_test {
        UnderTest::Outpost(_) => thread_ticks(tid),
        UnderTest::Rtpengine(pid) => stat_ticks(&format!("/proc/{pid}/task/{tid}/stat")),
    }
}

/// Ticks CPU `cpu` spent busy in all (user, system, irq, softirq, steal) and in interrupts
/// (irq + softirq), from /proc/stat.
fn cpu_ticks(cpu: usize) -> (u64, u64) {
    let ticks = proc_stat_ticks(&format!("cpu{cpu}"));
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    (
        total.saturating_sub(field(3) + field(4)),
        field(5) + field(6),
    )
}

/// Who sends what where: stream `2 * call + dir` (dir 0: phone A to B, 1: B to A) leaves
/// from generator socket `stream % GEN_SOCKETS` towards `dests[stream]`.
struct Plan {
    calls: usize,
    dests: Vec<SockaddrStorage>,
    /// The generator socket each leg's phone uses: the leg's SDP address.
    phones: Vec<SocketAddr>,
}

impl Plan {
    /// Through the relay on `relay`: leg A of call i on port first + 4i, leg B on
    /// first + 4i + 2.
    fn relayed(gen: &Generator, calls: usize, first: u16, relay: IpAddr) -> Plan {
        let dests = (0..2 * calls)
            .map(|stream| {
                let port = relay_port(first, stream / 2, stream % 2);
                SockaddrStorage::from(SocketAddr::new(relay, port))
            })
            .collect();
        Plan {
            calls,
            dests,
            phones: gen.addrs.clone(),
        }
    }

    /// Phone to phone, no relay: the generator's own floor.
    fn direct(gen: &Generator, calls: usize) -> Plan {
        let dests = (0..2 * calls)
            .map(|stream| SockaddrStorage::from(gen.addrs[(stream ^ 1) % GEN_SOCKETS]))
            .collect();
        Plan {
            calls,
            dests,
            phones: gen.addrs.clone(),
        }
    }

    fn open_command(&self, session: u64, call: usize, first: u16) -> MediaCommand {
        let leg = |dir: usize| {
            let phone = self.phones[(2 * call + dir) % GEN_SOCKETS];
            LegMedia {
                local_port: relay_port(first, call, dir),
                remote: Some(phone),
                allowed_ips: vec![phone.ip()],
                codec: Codec::Pcmu,
                pt: 0,
                dtmf_pt: Some(101),
                srtp: None,
            }
        };
        MediaCommand::Open {
            session,
            a: leg(0),
            b: leg(1),
        }
    }
}

fn relay_port(first: u16, call: usize, dir: usize) -> u16 {
    let offset = u16::try_from(call * 4 + dir * 2).expect("the range was sized for the calls");
    first + offset
}

/// What one step measured.
struct StepResult {
    sent: u64,
    received: u64,
    send_secs: f64,
    hist: Vec<u64>,
}

impl StepResult {
    fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    /// Latency (µs) below which fraction `q` of the received packets arrived.
    fn percentile(&self, q: f64) -> usize {
        let total: u64 = self.hist.iter().sum();
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (us, &count) in self.hist.iter().enumerate() {
            seen += count;
            if seen >= want.max(1) {
                return us;
            }
        }
        HIST_BUCKETS
    }
}

/// Packets waiting to leave one generator socket.
struct SendBatch {
    bufs: Box<[[u8; PACKET_LEN]; BATCH]>,
    addrs: [Option<SockaddrStorage>; BATCH],
    len: usize,
}

/// Both phones of every call, on a few non-blocking sockets.
struct Generator {
    sockets: Vec<UdpSocket>,
    addrs: Vec<SocketAddr>,
    batches: Vec<SendBatch>,
    send_headers: MultiHeaders<SockaddrStorage>,
    recv_headers: MultiHeaders<SockaddrStorage>,
    recv_bufs: Box<[[u8; 256]; BATCH]>,
    epoch: Instant,
}

impl Generator {
    fn new(ip: IpAddr) -> Generator {
        let sockets: Vec<UdpSocket> = (0..GEN_SOCKETS)
            .map(|_| {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )
                .expect("socket");
                let _ = socket.set_recv_buffer_size(4 << 20);
                let _ = socket.set_send_buffer_size(4 << 20);
                socket.bind(&SocketAddr::new(ip, 0).into()).expect("bind");
                socket.set_nonblocking(true).expect("non-blocking");
                socket.into()
            })
            .collect();
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr().expect("bound"))
            .collect();
        let batches = (0..GEN_SOCKETS)
            .map(|_| SendBatch {
                bufs: vec![[0u8; PACKET_LEN]; BATCH]
                    .into_boxed_slice()
                    .try_into()
                    .expect("BATCH elements"),
                addrs: [None; BATCH],
                len: 0,
            })
            .collect();
        Generator {
            sockets,
            addrs,
            batches,
            send_headers: MultiHeaders::preallocate(BATCH, None),
            recv_headers: MultiHeaders::preallocate(BATCH, None),
            recv_bufs: vec![[0u8; 256]; BATCH]
                .into_boxed_slice()
                .try_into()
                .expect("BATCH elements"),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sends the plan's traffic for `duration` (each stream every 20 ms, streams spread
    /// evenly over the period), receiving all the while, then drains.
    fn run(&mut self, plan: &Plan, tag: u8, duration: Duration) -> StepResult {
        let streams = 2 * plan.calls as u64;
        let period_ns = PTIME.as_nanos() as u64;
        let mut result = StepResult {
            sent: 0,
            received: 0,
            send_secs: duration.as_secs_f64(),
            hist: vec![0; HIST_BUCKETS + 1],
        };
        let start = Instant::now();
        let mut next: u64 = 0;
        loop {
            let elapsed = start.elapsed();
            if elapsed < duration {
                let elapsed_ns = elapsed.as_nanos() as u64;
                let due = elapsed_ns.saturating_mul(streams) / period_ns;
                // Bounded per round so that receiving keeps up when we fall behind.
                let until = due.min(next + 256);
                while next < until {
                    let stream = (next % streams) as usize;
                    let seq = next / streams;
                    self.enqueue(plan, stream, seq, tag, &mut result);
                    next += 1;
                }
                for socket in 0..GEN_SOCKETS {
                    self.flush(socket, &mut result);
                }
            } else if elapsed >= duration + DRAIN {
                break;
            }
            for socket in 0..GEN_SOCKETS {
                self.receive(socket, tag, &mut result);
            }
        }
        result
    }

    fn enqueue(&mut self, plan: &Plan, stream: usize, seq: u64, tag: u8, result: &mut StepResult) {
        let socket = stream % GEN_SOCKETS;
        if self.batches[socket].len == BATCH {
            self.flush(socket, result);
        }
        let now = self.now_ns();
        let batch = &mut self.batches[socket];
        let buf = &mut batch.bufs[batch.len];
        buf.fill(0xff);
        buf[0] = 0x80; // V=2, PT 0 (PCMU)
        buf[1] = 0;
        buf[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
        buf[4..8].copy_from_slice(&((seq as u32).wrapping_mul(160)).to_be_bytes());
        buf[8..12].copy_from_slice(&(stream as u32).to_be_bytes());
        buf[12..20].copy_from_slice(&now.to_be_bytes());
        buf[20] = tag;
        batch.addrs[batch.len] = Some(plan.dests[stream]);
        batch.len += 1;
    }

    fn flush(&mut self, socket: usize, result: &mut StepResult) {
        let fd: RawFd = self.sockets[socket].as_raw_fd();
        let batch = &mut self.batches[socket];
        let iovs: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|j| [IoSlice::new(&batch.bufs[j][..])]);
        let mut done = 0;
        while done < batch.len {
            let n = batch.len - done;
            match sendmmsg(
                fd,
                &mut self.send_headers,
                &iovs[done..batch.len],
                &batch.addrs[done..batch.len],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let sent = results.count().max(1).min(n);
                    result.sent += sent as u64;
                    done += sent;
                }
                // Full socket buffer: the packet is not offered (and not counted).
                Err(_) => done += 1,
            }
        }
        batch.len = 0;
    }

    fn receive(&mut self, socket: usize, tag: u8, result: &mut StepResult) {
        let fd = self.sockets[socket].as_raw_fd();
        loop {
            let mut lens = [0usize; BATCH];
            let n = {
                let mut iovs = self.recv_bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
                match recvmmsg(
                    fd,
                    &mut self.recv_headers,
                    iovs.iter_mut(),
                    MsgFlags::empty(),
                    None,
                ) {
                    Ok(results) => {
                        let mut n = 0;
                        for (len, msg) in lens.iter_mut().zip(results) {
                            *len = msg.bytes;
                            n += 1;
                        }
                        n
                    }
                    Err(_) => 0,
                }
            };
            if n == 0 {
                return;
            }
            let now = self.now_ns();
            for (buf, &len) in self.recv_bufs.iter().zip(&lens[..n]) {
                if len != PACKET_LEN || buf[20] != tag {
                    continue;
                }
                let mut sent = [0u8; 8];
                sent.copy_from_slice(&buf[12..20]);
                let latency_us = now.saturating_sub(u64::from_be_bytes(sent)) / 1000;
                result.received += 1;
                result.hist[usize::try_from(latency_us)
                    .unwrap_or(HIST_BUCKETS)
                    .min(HIST_BUCKETS)] += 1;
            }
            if n < BATCH {
                return;
            }
        }
    }
}
