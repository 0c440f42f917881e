//! TCP connection floods end to end (issue 14, reproduction 1: from one unauthenticated
//! address, 4,200 idle TCP connections used to fill the global cap and lock every TCP phone
//! out). As root, with real nftables: `outpostd` runs in the appliance namespace of a
//! `FwLab`; the attacker namespace opens thousands of idle connections as fast as the
//! kernel lets it and drips a header a byte at a time, while a TCP phone in the phone
//! namespace keeps registering (digest auth, on its held connection and on new ones) and
//! calling.
//!
//! These tests REQUIRE root, `ip`, `nft` and SIPp: without them they fail saying so, they
//! never skip. Each test has its own namespaces and /24; Drop guards stop the daemon, kill
//! SIPp and delete the namespaces. Every wait is bounded. Run them with
//! `sudo -E cargo test -p outpost-tests --test connections -- --nocapture` to see the
//! figures.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    digest_authorization, eventually, header_value, in_netns, json_str, require_root, status_of,
    Daemon, FwLab, SipTcp, Sipp, SippProcess, Transport,
};

const PHONE: (&str, &str) = ("200", "phone-pass-200");
const CALLEE: (&str, &str) = ("201", "phone-pass-201");
/// Connections the attacker tries to open (the reproduction used 4,200).
const FLOOD: usize = 4_200;
/// How long the attacker may take to open them.
const FLOOD_BUDGET: Duration = Duration::from_secs(10);
/// The daemon's default deadline for a message once begun (`message_secs`).
const MESSAGE_DEADLINE: Duration = Duration::from_secs(10);
/// The drip: one byte every 5 s.
const DRIP_EVERY: Duration = Duration::from_secs(5);

/// A running appliance with its lab; the daemon stops before the namespaces go.
struct Site {
    daemon: Daemon,
    lab: FwLab,
}

fn site(toml: &str) -> Site {
    require_root("the connection flood tests");
    let lab = FwLab::new();
    let daemon = Daemon::start_in(&lab.appliance, lab.daemon_config().with_toml(toml));
    daemon.add_extension(PHONE.0, PHONE.1);
    daemon.add_extension(CALLEE.0, CALLEE.1);
    let installed = eventually(Duration::from_secs(5), || {
        lab.appliance.outpost_set("authed4").map(|_| ())
    });
    assert!(
        installed.is_some(),
        "outpostd did not install table inet outpost with its connection caps (set authed4) \
         within 5 s; nft list ruleset:\n{}\nlog:\n{}",
        lab.appliance.nft(&["list", "ruleset"]).stdout,
        daemon.log_text()
    );
    Site { daemon, lab }
}

impl Site {
    fn in_kernel_ban(&self, ip: IpAddr) -> bool {
        self.lab
            .appliance
            .outpost_set("ban4")
            .is_some_and(|e| e.iter().any(|(a, _)| *a == ip))
    }

    fn ban_of(&self, ip: IpAddr) -> Option<Value> {
        let v = self.daemon.ctl_json(&["fw", "bans"]);
        v["bans"]
            .as_array()?
            .iter()
            .find(|b| {
                b["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .is_some_and(|a| a == ip)
            })
            .cloned()
    }

    fn counter(&self, name: &str) -> u64 {
        self.lab.appliance.outpost_counter(name).unwrap_or_else(|| {
            panic!(
                "no counter {name:?} in table inet outpost:\n{}",
                self.lab.appliance.nft(&["list", "ruleset"]).stdout
            )
        })
    }

    /// `fw status --json`'s `connections` object.
    fn conn_stats(&self) -> Value {
        self.daemon.ctl_json(&["fw", "status"])["connections"].clone()
    }

    fn phone_sipp(&self, scenario: &str) -> Sipp {
        Sipp::new(scenario, &self.daemon).in_netns(&self.lab.phone, self.lab.phone_ip().into())
    }

    /// SIPp callee for CALLEE (UDP) in the phone namespace, registered.
    fn callee(&self) -> SippProcess {
        let mut process = self
            .phone_sipp("callee.xml")
            .account(CALLEE.0, CALLEE.1)
            .ooc("uas_answer.xml")
            .timeout_secs(60)
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.daemon.registrations_of(CALLEE.0).is_empty() {
            if !process.is_running() || Instant::now() >= deadline {
                panic!(
                    "callee did not register:\n{}\nlog:\n{}",
                    process.wait().dump(),
                    self.daemon.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        process
    }
}

/// A TCP phone: one connection, kept open with CRLF keep-alives, on which it re-registers
/// with digest authentication (REGISTER, 401, REGISTER with credentials, 200).
struct TcpPhone {
    conn: SipTcp,
    local: SocketAddr,
    server: SocketAddr,
    call_id: String,
    cseq: u32,
}

impl TcpPhone {
    /// Connects from `src` in namespace `ns` to `server`.
    fn connect(ns: &str, src: Ipv4Addr, server: SocketAddr) -> Option<TcpPhone> {
        let stream = in_netns(ns, move || connect_from(src.into(), server))?;
        stream.set_nodelay(true).ok()?;
        let local = stream.local_addr().ok()?;
        Some(TcpPhone {
            conn: SipTcp::from_stream(stream),
            local,
            server,
            call_id: format!("tcp-phone-{}-{}@test", std::process::id(), local.port()),
            cseq: 0,
        })
    }

    fn request(&mut self, auth: &str) -> (u32, String) {
        self.cseq += 1;
        let host = self.server.ip();
        let msg = format!(
            "REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp-{port}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{ext}@{host}>;tag=tcp{port}\r\nTo: <sip:{ext}@{host}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{ext}@{local};transport=tcp>\r\nExpires: 300\r\nUser-Agent: outpost-tests tcp-phone\r\n{auth}Content-Length: 0\r\n\r\n",
            local = self.local,
            port = self.local.port(),
            cseq = self.cseq,
            ext = PHONE.0,
            call_id = self.call_id,
        );
        (self.cseq, msg)
    }

    /// The response to CSeq `cseq`, skipping anything else, within `wait`.
    fn response(&mut self, cseq: u32, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let msg = self.conn.read_message(left)?;
            let ours = header_value(&msg, "CSeq").is_some_and(|c| c == format!("{cseq} REGISTER"));
            if ours && status_of(msg.as_bytes()).is_some_and(|s| s >= 200) {
                return Some(msg);
            }
        }
    }

    /// One registration with digest auth; `Err` says what went wrong.
    fn register(&mut self, wait: Duration) -> Result<(), String> {
        let (cseq, first) = self.request("");
        if !self.conn.send(first.as_bytes()) {
            return Err("the connection is closed (write failed)".into());
        }
        let resp = self
            .response(cseq, wait)
            .ok_or("no answer to the REGISTER")?;
        if status_of(resp.as_bytes()) != Some(401) {
            return Err(format!("expected 401:\n{resp}"));
        }
        let challenge = header_value(&resp, "WWW-Authenticate").ok_or("no challenge")?;
        let uri = format!("sip:{}", self.server.ip());
        let auth = digest_authorization(&challenge, "REGISTER", &uri, PHONE.0, PHONE.1);
        let (cseq, second) = self.request(&format!("Authorization: {auth}\r\n"));
        if !self.conn.send(second.as_bytes()) {
            return Err("the connection is closed (write failed)".into());
        }
        let resp = self
            .response(cseq, wait)
            .ok_or("no answer to the authenticated REGISTER")?;
        match status_of(resp.as_bytes()) {
            Some(200) => Ok(()),
            _ => Err(format!("authenticated REGISTER refused:\n{resp}")),
        }
    }

    /// An RFC 5626 keep-alive (CRLF CRLF).
    fn keepalive(&mut self) -> bool {
        self.conn.send(b"\r\n\r\n")
    }
}

/// Connects from `src` to `to` (in the calling thread's namespace), 2 s at most.
fn connect_from(src: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let s = nonblocking_connect(src, to)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if s.peer_addr().is_ok() {
            s.set_nonblocking(false).ok()?;
            return Some(s);
        }
        if s.take_error().ok().flatten().is_some() {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// A TCP socket bound to `src` whose connect to `to` has been started (the SYN is on its
/// way); `None` when the socket cannot be made (descriptors, ports).
fn nonblocking_connect(src: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).ok()?;
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )
    .ok()?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Some(TcpStream::from(fd)),
        Err(_) => None,
    }
}

/// Raises this process's descriptor limit to its hard limit; returns the soft limit now.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The attacker's connections, opened as fast as the kernel lets.
struct Flood {
    socks: Vec<TcpStream>,
    /// Time to start them all.
    opened_in: Duration,
}

/// What became of the attacker's connections, seen from the attacker.
#[derive(Debug, Default)]
struct Fates {
    /// Handshake never completed: the SYN was dropped in the kernel.
    dropped: usize,
    /// Reset (the socket is closed, no peer any more): refused at accept.
    refused: usize,
    /// Admitted by the daemon and closed by it since (FIN: the peer is still known).
    admitted_closed: usize,
    /// Admitted and still open.
    admitted_open: usize,
}

impl Fates {
    fn completed(&self) -> usize {
        self.refused + self.admitted_closed + self.admitted_open
    }

    fn admitted(&self) -> usize {
        self.admitted_closed + self.admitted_open
    }
}

impl Flood {
    fn open(ns: &str, src: Ipv4Addr, to: SocketAddr, n: usize) -> Flood {
        let (socks, opened_in) = in_netns(ns, move || {
            let start = Instant::now();
            let mut socks = Vec::with_capacity(n);
            while socks.len() < n && start.elapsed() < FLOOD_BUDGET {
                match nonblocking_connect(src.into(), to) {
                    Some(s) => socks.push(s),
                    None => break,
                }
            }
            (socks, start.elapsed())
        });
        Flood { socks, opened_in }
    }

    /// Reads every connection once (non-blocking) to tell them apart: a socket still
    /// connecting would block; a reset one has no peer and reads end-of-file; an admitted
    /// one closed by the daemon still has its peer and reads end-of-file; an open one
    /// would block.
    fn fates(&mut self) -> Fates {
        let mut f = Fates::default();
        let mut buf = [0u8; 64];
        for s in &mut self.socks {
            let connected = s.peer_addr().is_ok();
            let read = s.read(&mut buf);
            match (connected, read) {
                (true, Ok(0)) => f.admitted_closed += 1,
                (true, _) => f.admitted_open += 1,
                (false, Ok(0)) => f.refused += 1,
                (false, Err(e)) if e.kind() == ErrorKind::ConnectionReset => f.refused += 1,
                (false, _) => f.dropped += 1,
            }
        }
        f
    }
}

/// Drips `REGISTER sip:...` one byte per `every` from `src` in namespace `ns`; returns the
/// time from the first byte until the daemon closed the connection (`None`: still open
/// after `max`).
fn drip(
    ns: &str,
    src: Ipv4Addr,
    to: SocketAddr,
    every: Duration,
    max: Duration,
) -> Option<Duration> {
    let mut s = in_netns(ns, move || connect_from(src.into(), to)).expect("the drip connects");
    let header =
        b"REGISTER sip:outpost SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKdrip\r\n";
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for byte in header.iter().cycle() {
        if start.elapsed() >= max {
            return None;
        }
        if s.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(start.elapsed());
        }
        s.set_read_timeout(Some(every)).ok()?;
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_4200_connection_flood_from_one_source_costs_a_tcp_phone_nothing() {
    flood_while_a_tcp_phone_registers_and_calls("", "kernel = \"syn_rate\" (the default)");
}

#[test]
fn the_flood_with_the_kernels_ct_count_instead_of_the_syn_rate_meter() {
    flood_while_a_tcp_phone_registers_and_calls(
        "[firewall.connections]\nkernel = \"count\"\n",
        "kernel = \"count\"",
    );
}

/// The reproduction of issue 14 under `toml` (described by `setup` in the figures).
fn flood_while_a_tcp_phone_registers_and_calls(toml: &str, setup: &str) {
    let site = site(toml);
    let lab = &site.lab;
    let target = lab.sip_addr();
    let attacker = lab.attacker_ips()[0];
    let dripper = lab.attacker_ips()[1];
    let fd_limit = raise_fd_limit();
    let flood_n = FLOOD.min(usize::try_from(fd_limit.saturating_sub(256)).unwrap_or(FLOOD));

    // The TCP phone registers before the attack, on a connection it keeps.
    let mut phone = TcpPhone::connect(lab.phone.name(), lab.phone_ip(), target)
        .expect("the phone connects over TCP");
    phone.register(Duration::from_secs(2)).unwrap_or_else(|e| {
        panic!(
            "registration before the flood: {e}\nlog:\n{}",
            site.daemon.log_text()
        )
    });
    let callee = site.callee();

    // The phone keeps registering (every second, on its held connection, with keep-alives
    // between) while the attack runs; a second thread registers over new TCP connections
    // (SIPp) and calls over TCP.
    let stop = Arc::new(AtomicBool::new(false));
    let phone_thread = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match phone.register(Duration::from_secs(2)) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                for _ in 0..4 {
                    thread::sleep(Duration::from_millis(250));
                    phone.keepalive();
                }
            }
            (ok, failed)
        })
    };
    let sipp_thread = {
        let stop = stop.clone();
        let sipp_reg = site
            .phone_sipp("register.xml")
            .account(PHONE.0, PHONE.1)
            .transport(Transport::Tcp);
        let sipp_call = site
            .phone_sipp("uac_call.xml")
            .account(PHONE.0, PHONE.1)
            .service(CALLEE.0)
            .transport(Transport::Tcp);
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut calls = (0u32, Vec::new());
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let reg = sipp_reg
                    .clone()
                    .local_port(outpost_tests::free_port())
                    .run();
                if reg.code == Some(0) {
                    ok += 1;
                } else {
                    failed.push(reg.dump());
                }
                if round == 2 {
                    let call = sipp_call
                        .clone()
                        .local_port(outpost_tests::free_port())
                        .run();
                    if call.code == Some(0) {
                        calls.0 += 1;
                    } else {
                        calls.1.push(call.dump());
                    }
                }
                thread::sleep(Duration::from_millis(1_500));
            }
            (ok, failed, calls)
        })
    };

    // The attack: a drip from one address, thousands of idle connections from another.
    let drip_thread = {
        let ns = lab.attacker.name().to_owned();
        thread::spawn(move || drip(&ns, dripper, target, DRIP_EVERY, Duration::from_secs(40)))
    };
    let flood_start = Instant::now();
    let mut flood = Flood::open(lab.attacker.name(), attacker, target, flood_n);
    let attacker_ip: IpAddr = attacker.into();
    let mut time_to_ban = None;
    let mut time_listed = None;
    while flood_start.elapsed() < Duration::from_secs(5) && time_to_ban.is_none() {
        if time_listed.is_none() && site.ban_of(attacker_ip).is_some() {
            time_listed = Some(flood_start.elapsed());
        }
        if site.in_kernel_ban(attacker_ip) {
            time_to_ban = Some(flood_start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let time_to_ban =
        time_to_ban.unwrap_or_else(|| {
            panic!(
            "the attacker ({} connections started) was not in the kernel's ban set within 5 s; \
             fw status: {}\nnft: {}\nlog:\n{}",
            flood.socks.len(),
            site.daemon.ctl_json(&["fw", "status"]),
            lab.appliance.nft(&["list", "table", "inet", "outpost"]).stdout,
            site.daemon.log_text()
        )
        });
    // Handshakes still in flight when the ban landed are dropped from now on; the ban
    // closes what the daemon had admitted.
    thread::sleep(Duration::from_millis(500));
    let fates = flood.fates();
    let drip_closed = drip_thread.join().expect("the drip thread does not panic");
    // Let the phone go on a little after the drip, then stop it.
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (phone_ok, phone_failed) = phone_thread.join().expect("the phone thread");
    let (sipp_ok, sipp_failed, (calls_ok, calls_failed)) =
        sipp_thread.join().expect("the SIPp thread");
    let callee_outcome = callee.wait();

    let ban = site
        .ban_of(attacker_ip)
        .expect("the attacker is listed by fw bans");
    let banned_packets = site.counter("banned");
    let conn_limit_drops = site.counter("conn_limit");
    let stats = site.conn_stats();
    let registrations = phone_ok + sipp_ok;
    let failures = phone_failed.len() + sipp_failed.len();
    println!(
        "connection flood from {attacker}, {setup} ({} connections started in {:?}):",
        flood.socks.len(),
        flood.opened_in
    );
    println!(
        "  attacker handshakes completed (the kernel let them through): {} of {}; {} SYNs dropped for good",
        fates.completed(),
        flood.socks.len(),
        fates.dropped
    );
    println!(
        "  connections accepted from the attacker: {} (closed by the ban: {}, still open: {}); {} reset at accept (at its cap, then banned)",
        fates.admitted(),
        fates.admitted_closed,
        fates.admitted_open,
        fates.refused
    );
    println!(
        "  daemon: {} connections admitted in all (phone included), {} refused at the per-source cap, {} at the pool, {} banned",
        stats["accepted"], stats["refused_source_cap"], stats["refused_pool"], stats["refused_banned"]
    );
    println!(
        "  time to ban: listed by fw bans after {:?}, in the kernel's ban set after {time_to_ban:?}",
        time_listed.unwrap_or(time_to_ban)
    );
    println!(
        "  kernel: {banned_packets} packets dropped as banned, {conn_limit_drops} SYNs dropped at the per-source limit"
    );
    println!(
        "  drip of one byte per {DRIP_EVERY:?} from {dripper}: closed after {drip_closed:?} (deadline {MESSAGE_DEADLINE:?})"
    );
    println!(
        "  TCP phone: {registrations} registrations ({phone_ok} on its held connection, {sipp_ok} on new connections), {failures} failed; {calls_ok} calls over TCP, {} failed",
        calls_failed.len()
    );

    assert!(
        phone_failed.is_empty(),
        "registrations on the held connection failed: {phone_failed:#?}\nlog:\n{}",
        site.daemon.log_text()
    );
    assert!(
        sipp_failed.is_empty(),
        "registrations over new TCP connections failed:\n{}",
        sipp_failed.join("\n---\n")
    );
    assert!(
        phone_ok >= 5 && sipp_ok >= 3,
        "too few registrations: {phone_ok} + {sipp_ok}"
    );
    assert!(
        calls_failed.is_empty() && calls_ok == 1,
        "the call over TCP failed:\n{}",
        calls_failed.join("\n---\n")
    );
    callee_outcome.assert_success("phone 201 answering");
    assert_eq!(json_str(&ban, "rule"), Some("connection_flood"), "{ban}");
    assert!(
        time_to_ban < Duration::from_secs(3),
        "time to ban {time_to_ban:?}"
    );
    // The kernel kept the flood away from accept: far fewer handshakes than attempts.
    assert!(
        fates.completed() < flood.socks.len() / 4,
        "{fates:?} of {}",
        flood.socks.len()
    );
    assert!(
        banned_packets + conn_limit_drops > 0,
        "the kernel dropped nothing of the attacker's"
    );
    // The daemon held at most the per-source cap, and the ban closed all of them.
    assert!((1..=16).contains(&fates.admitted()), "{fates:?}");
    assert_eq!(fates.admitted_open, 0, "{fates:?}");
    assert!(fates.refused >= 1, "{fates:?}");
    assert!(
        stats["refused_source_cap"].as_u64().unwrap_or(0) >= 1,
        "the daemon refused nothing at the per-source cap: {stats}"
    );
    let drip_closed = drip_closed.unwrap_or_else(|| {
        panic!(
            "the dripped header was still open after 40 s\nlog:\n{}",
            site.daemon.log_text()
        )
    });
    assert!(
        drip_closed <= MESSAGE_DEADLINE + Duration::from_secs(3),
        "the drip was closed after {drip_closed:?}, past its {MESSAGE_DEADLINE:?} deadline"
    );
    let closed_by_deadline = stats["closed_message"].as_u64().unwrap_or(0)
        + stats["closed_first_message"].as_u64().unwrap_or(0);
    assert!(closed_by_deadline >= 1, "{stats}");
    // The phone's connection is still there.
    assert!(
        site.daemon
            .registrations_of(PHONE.0)
            .iter()
            .any(|r| json_str(r, "transport") == Some("TCP")),
        "{:?}",
        site.daemon.registrations_of(PHONE.0)
    );
}

#[test]
fn strangers_filling_the_pool_never_take_the_slots_reserved_for_authenticated_phones() {
    // A small box: 64 connections, 16 reserved; 16 per stranger; no bans, so the strangers
    // stay and only the reserve protects the phone.
    let site = site(
        "[firewall.connections]\nmax = 64\nreserved_authenticated = 16\nfirst_message_secs = 60\nidle_secs = 60\n\n[firewall.detect.connection_flood]\nrefused_limit = 0\nopen_limit = 0\n",
    );
    let lab = &site.lab;
    let target = lab.sip_addr();
    raise_fd_limit();
    // The phone authenticates first (over TCP), then hangs up its connection.
    let mut phone = TcpPhone::connect(lab.phone.name(), lab.phone_ip(), target).expect("connect");
    phone
        .register(Duration::from_secs(2))
        .expect("the phone registers");
    drop(phone);
    // Four strangers hold 16 connections each: 48 fill the pool, the rest are refused.
    let mut held = Vec::new();
    for src in lab.attacker_ips() {
        let flood = Flood::open(lab.attacker.name(), src, target, 16);
        thread::sleep(Duration::from_millis(300));
        held.push(flood);
    }
    let stats = eventually(Duration::from_secs(3), || {
        let s = site.conn_stats();
        (s["open_unauthenticated"].as_u64() == Some(48)).then_some(s)
    })
    .unwrap_or_else(|| panic!("the pool did not fill: {}", site.conn_stats()));
    assert!(stats["refused_pool"].as_u64().unwrap_or(0) >= 16, "{stats}");
    // A new connection of the authenticated phone still gets in and registers.
    let mut phone = TcpPhone::connect(lab.phone.name(), lab.phone_ip(), target).expect("connect");
    phone
        .register(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the phone was locked out: {e}\n{}", site.conn_stats()));
    println!(
        "pool of 48 full of strangers' connections ({} refused); the authenticated phone registered over a new connection: {}",
        stats["refused_pool"],
        site.conn_stats()
    );
    // The full pool raised an alert, and nobody was banned for it.
    let alerts = site.daemon.ctl_json(&["fw", "alerts"]);
    let text = alerts.to_string();
    assert!(
        text.contains("connection_flood") && text.contains("slots for unauthenticated sources"),
        "{text}"
    );
    assert!(site.daemon.ctl_json(&["fw", "bans"])["bans"]
        .as_array()
        .is_none_or(Vec::is_empty));
    drop(held);
}

#[test]
fn an_office_of_tcp_phones_reconnecting_after_a_restart_is_not_a_flood() {
    let mut site = site("");
    let target = site.lab.sip_addr();
    let phone_ip = site.lab.phone_ip();
    let mut phone =
        TcpPhone::connect(site.lab.phone.name(), phone_ip, target).expect("the phone connects");
    phone
        .register(Duration::from_secs(2))
        .expect("the phone registers");
    drop(phone);
    site.daemon.stop();
    site.daemon.restart();
    // The registration came back from the store: the office's address is authenticated
    // again, in the kernel too, before any phone re-registers.
    let authed = eventually(Duration::from_secs(3), || {
        site.lab
            .appliance
            .outpost_set("authed4")
            .filter(|e| e.iter().any(|(a, _)| *a == IpAddr::from(phone_ip)))
    });
    assert!(
        authed.is_some(),
        "{phone_ip} not in authed4 after the restart:\n{}",
        site.lab
            .appliance
            .nft(&["list", "set", "inet", "outpost", "authed4"])
            .stdout
    );
    // 40 phones behind the office's NAT reconnect at once, before any registers: all get
    // in (more than a stranger's 16), and nobody is banned.
    let mut office = Flood::open(site.lab.phone.name(), phone_ip, target, 40);
    thread::sleep(Duration::from_millis(500));
    let fates = office.fates();
    let stats = site.conn_stats();
    println!("40 connections of a registered office right after a restart: {fates:?}; {stats}");
    assert_eq!(fates.admitted(), 40, "{fates:?} {stats}");
    assert!(site.ban_of(phone_ip.into()).is_none());
}
