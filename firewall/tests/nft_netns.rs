//! Kernel enforcement against real nftables, as root, in network namespaces.
//!
//! Each test builds its own pair of namespaces, "appliance" and "attacker", joined by a veth
//! pair (10.200.N.0/24 and fd00:200::/64, addresses that exist only inside them), installs
//! the `inet outpost` table in the appliance namespace through `ip netns exec`, and sends
//! UDP between sockets created inside the namespaces (a thread enters the namespace with
//! setns(2) just to create the socket). These tests REQUIRE root and nft: without them they
//! fail with a message saying so, they never skip. Namespaces are deleted by Drop guards,
//! also when a test panics. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // STYLE.md: unwrap is fine in tests

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use firewall::net::Cidr;
use firewall::nft::{
    self, ConnLimit, ConnLimitBy, Enforcer, FloodLimit, ManagementZone, NftConfig, SetOp,
    TrunkPeer, TrunkProto, MAX_TRUNK_PEERS,
};
use nix::sched::{setns, CloneFlags};

const SIP: u16 = 5060;
const PAYLOAD: &[u8] = b"outpost-probe";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    if let Err(why) = nft::available() {
        panic!(
            "the nft_netns tests need root (or CAP_NET_ADMIN) and nftables installed \
             (apt-get install nftables iproute2); they do not skip: {why}"
        );
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("outpost-t-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", self.0.as_str(), "nft"];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// A UDP socket bound inside this namespace.
    fn udp(&self, bind: SocketAddr) -> UdpSocket {
        let path = format!("/run/netns/{}", self.0);
        // setns(2) moves only the calling thread; the socket keeps the namespace it was
        // created in, so the thread can end right after.
        thread::spawn(move || {
            let f = File::open(&path).expect("namespace file");
            setns(&f, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            UdpSocket::bind(bind).expect("bind inside the namespace")
        })
        .join()
        .expect("socket thread")
    }
}

impl Netns {
    /// A TCP listener bound inside this namespace (backlog 128: the kernel completes
    /// handshakes without `accept`).
    fn tcp_listener(&self, bind: SocketAddr) -> TcpListener {
        self.in_ns(move || TcpListener::bind(bind).expect("listen inside the namespace"))
    }

    /// Connects from `src` (an address of this namespace) to `to`; `None` when the
    /// handshake does not complete within `wait` (the SYN was dropped).
    fn tcp_connect(&self, src: IpAddr, to: SocketAddr, wait: Duration) -> Option<TcpStream> {
        self.in_ns(move || {
            let domain = if to.is_ipv4() {
                nix::sys::socket::AddressFamily::Inet
            } else {
                nix::sys::socket::AddressFamily::Inet6
            };
            // std has no bind-before-connect: connect from a socket bound to `src` with a
            // short blocking deadline, polled by hand.
            use nix::sys::socket::{self as s, SockFlag, SockType, SockaddrStorage};
            use std::os::fd::AsRawFd;
            let fd = s::socket(domain, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).unwrap();
            s::bind(
                fd.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(src, 0)),
            )
            .unwrap();
            let _ = s::connect(fd.as_raw_fd(), &SockaddrStorage::from(to));
            let stream = TcpStream::from(fd);
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if stream.peer_addr().is_ok() {
                    return Some(stream);
                }
                if stream.take_error().ok().flatten().is_some() {
                    return None;
                }
                thread::sleep(Duration::from_millis(5));
            }
            None
        })
    }

    fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        thread::spawn(move || {
            let file = File::open(&path).expect("namespace file");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Appliance and attacker namespaces joined by a veth pair. The attacker side has a second
/// address per family (`other4`, `other6`): a stranger next to the phone.
struct Lab {
    app: Netns,
    atk: Netns,
    app4: Ipv4Addr,
    atk4: Ipv4Addr,
    other4: Ipv4Addr,
    app6: Ipv6Addr,
    atk6: Ipv6Addr,
    other6: Ipv6Addr,
}

impl Lab {
    fn new() -> Lab {
        let app = Netns::new();
        let atk = Netns::new();
        let n = u8::try_from(SEQ.load(Ordering::Relaxed) % 250).unwrap();
        let (app4, atk4) = (Ipv4Addr::new(10, 200, n, 1), Ipv4Addr::new(10, 200, n, 2));
        let other4 = Ipv4Addr::new(10, 200, n, 3);
        let app6: Ipv6Addr = "fd00:200::1".parse().unwrap();
        let atk6: Ipv6Addr = "fd00:200::2".parse().unwrap();
        let other6: Ipv6Addr = "fd00:200::3".parse().unwrap();
        app.ip(&[
            "link", "add", "va", "type", "veth", "peer", "name", "vx", "netns", &atk.0,
        ]);
        app.ip(&["addr", "add", &format!("{app4}/24"), "dev", "va"]);
        atk.ip(&["addr", "add", &format!("{atk4}/24"), "dev", "vx"]);
        atk.ip(&["addr", "add", &format!("{other4}/24"), "dev", "vx"]);
        app.ip(&["addr", "add", &format!("{app6}/64"), "dev", "va", "nodad"]);
        atk.ip(&["addr", "add", &format!("{atk6}/64"), "dev", "vx", "nodad"]);
        atk.ip(&["addr", "add", &format!("{other6}/64"), "dev", "vx", "nodad"]);
        app.ip(&["link", "set", "va", "up"]);
        atk.ip(&["link", "set", "vx", "up"]);
        Lab {
            app,
            atk,
            app4,
            atk4,
            other4,
            app6,
            atk6,
            other6,
        }
    }

    fn cfg(&self) -> NftConfig {
        NftConfig {
            netns: Some(self.app.0.clone()),
            ..NftConfig::default()
        }
    }

    /// A listener in the appliance and a sender in the attacker namespace, IPv4 or IPv6.
    fn pair(&self, v6: bool, port: u16) -> Link {
        let (app, atk): (IpAddr, IpAddr) = if v6 {
            (self.app6.into(), self.atk6.into())
        } else {
            (self.app4.into(), self.atk4.into())
        };
        let rx = self.app.udp(SocketAddr::new(app, port));
        let tx = self.atk.udp(SocketAddr::new(atk, 0));
        let link = Link {
            rx,
            tx,
            to: SocketAddr::new(app, port),
        };
        link.wait_open(Duration::from_secs(5));
        link
    }

    /// Another sender (bound to `src`, an attacker-side address) to `link`'s listener.
    fn from(&self, src: IpAddr, link: &Link) -> Link {
        let other = Link {
            rx: link.rx.try_clone().unwrap(),
            tx: self.atk.udp(SocketAddr::new(src, 0)),
            to: link.to,
        };
        other.wait_open(Duration::from_secs(5));
        other
    }
}

fn rtp_open(addr: impl Into<IpAddr>, port: u16) -> SetOp {
    SetOp::RtpOpen {
        addr: addr.into(),
        port,
    }
}

fn rtp_close(addr: impl Into<IpAddr>, port: u16) -> SetOp {
    SetOp::RtpClose {
        addr: addr.into(),
        port,
    }
}

/// One UDP path from the attacker to the appliance.
struct Link {
    rx: UdpSocket,
    tx: UdpSocket,
    to: SocketAddr,
}

impl Link {
    /// Sends `n` datagrams and returns how many arrived (waiting at most ~300 ms after).
    fn send(&self, n: usize) -> usize {
        self.drain();
        for _ in 0..n {
            self.tx.send_to(PAYLOAD, self.to).unwrap();
        }
        self.count(n, Duration::from_millis(300))
    }

    fn count(&self, max: usize, quiet: Duration) -> usize {
        self.rx.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < max {
            match self.rx.recv_from(&mut buf) {
                Ok(_) => got += 1,
                Err(_) => break,
            }
        }
        got
    }

    fn drain(&self) {
        self.rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..10_000 {
            if self.rx.recv_from(&mut buf).is_err() {
                break;
            }
        }
        self.rx.set_nonblocking(false).unwrap();
    }

    /// Probes until one datagram arrives (also warms ARP / neighbour discovery), or panics
    /// after `limit`. Returns how long it took.
    fn wait_open(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            self.tx.send_to(PAYLOAD, self.to).unwrap();
            if self.count(1, Duration::from_millis(100)) == 1 {
                self.drain();
                return start.elapsed();
            }
        }
        panic!("no datagram reached {} within {limit:?}", self.to);
    }
}

fn ban(addr: impl Into<IpAddr>, timeout_secs: u64) -> SetOp {
    SetOp::Ban {
        addr: addr.into(),
        timeout_secs,
    }
}

fn set_len(ns: &Netns, set: &str) -> usize {
    let out = ns.nft(&["-j", "list", "set", "inet", "outpost", set]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.get("set"))
        .and_then(|s| s.get("elem"))
        .and_then(|e| e.as_array())
        .map_or(0, Vec::len)
}

#[test]
fn install_replaces_only_our_table_and_remove_deletes_only_it() {
    require_root();
    let ns = Netns::new();
    let other = "table inet other {\n\
        set keep { type ipv4_addr; elements = { 192.0.2.1 }; }\n\
        chain c { type filter hook input priority 0; policy accept; tcp dport 22 counter accept; }\n\
        }\n\
        table inet outpost { chain stray { }; }\n";
    let script = format!("/tmp/outpost-t-{}-other.nft", std::process::id());
    std::fs::write(&script, other).unwrap();
    ns.nft(&["-f", &script]);
    let _ = std::fs::remove_file(&script);
    let before = ns.nft(&["list", "table", "inet", "other"]);

    let cfg = NftConfig {
        netns: Some(ns.0.clone()),
        ..NftConfig::default()
    };
    let enf = Enforcer::install(cfg.clone()).unwrap();
    // Installing twice replaces, it does not fail or duplicate.
    let enf2 = Enforcer::install(cfg).unwrap();
    let ruleset = ns.nft(&["list", "ruleset"]);
    assert!(ruleset.contains("table inet outpost"), "{ruleset}");
    assert!(
        !ruleset.contains("chain stray"),
        "the old outpost table was replaced"
    );
    assert_eq!(ruleset.matches("chain input").count(), 1, "{ruleset}");
    for needle in [
        "set allow4",
        "set allow6",
        "set ban4",
        "set ban6",
        "set rtp_open4",
        "set rtp_open6",
        "ipv4_addr . inet_service",
        "ipv6_addr . inet_service",
    ] {
        assert!(ruleset.contains(needle), "{needle} missing:\n{ruleset}");
    }
    assert_eq!(ns.nft(&["list", "table", "inet", "other"]), before);
    assert!(enf.verify().unwrap() && enf2.verify().unwrap());

    enf2.remove().unwrap();
    let tables = ns.nft(&["list", "tables"]);
    assert!(!tables.contains("outpost"), "{tables}");
    assert_eq!(ns.nft(&["list", "table", "inet", "other"]), before);
    assert!(!enf.verify().unwrap(), "a deleted table is not intact");
    // Removing what is already gone is fine.
    enf.remove().unwrap();
}

#[test]
fn banned_ipv4_source_is_dropped_counted_and_unbanned() {
    require_root();
    let lab = Lab::new();
    let link = lab.pair(false, SIP);
    let mut enf = Enforcer::install(lab.cfg()).unwrap();
    assert_eq!(link.send(10), 10, "delivered before the ban");

    let c0 = enf.counters().unwrap();
    enf.apply(&[ban(lab.atk4, 300)]).unwrap();
    assert_eq!(link.send(20), 0, "nothing delivered while banned");
    let c1 = enf.counters().unwrap();
    assert_eq!(c1.banned_packets - c0.banned_packets, 20);
    // IPv4 20 + UDP 8 + payload per packet.
    let per_packet = u64::try_from(28 + PAYLOAD.len()).unwrap();
    assert_eq!(c1.banned_bytes - c0.banned_bytes, 20 * per_packet);

    enf.apply(&[SetOp::Unban(lab.atk4.into())]).unwrap();
    assert_eq!(link.send(10), 10, "delivered again after the unban");
    assert_eq!(enf.counters().unwrap().banned_packets, c1.banned_packets);
    // Unbanning what is not banned does not fail the batch.
    enf.apply(&[SetOp::Unban(lab.atk4.into())]).unwrap();
    // A ban and an unban in one batch: the last one wins.
    enf.apply(&[ban(lab.atk4, 300), SetOp::Unban(lab.atk4.into())])
        .unwrap();
    assert_eq!(link.send(5), 5);
    // An IPv4-mapped IPv6 address bans the IPv4 source.
    let mapped: IpAddr = lab.atk4.to_ipv6_mapped().into();
    enf.apply(&[ban(mapped, 300)]).unwrap();
    assert_eq!(link.send(5), 0);
    assert_eq!(set_len(&lab.app, "ban4"), 1);
}

#[test]
fn ban_timeout_expires_by_itself() {
    require_root();
    let lab = Lab::new();
    let link = lab.pair(false, SIP);
    let mut enf = Enforcer::install(lab.cfg()).unwrap();
    enf.apply(&[ban(lab.atk4, 2)]).unwrap();
    let banned_at = Instant::now();
    assert_eq!(link.send(5), 0, "dropped during the ban");
    let waited = link.wait_open(Duration::from_secs(8));
    let total = banned_at.elapsed();
    println!("2 s ban lifted by the kernel after {total:?} (probing for {waited:?})");
    assert!(
        total >= Duration::from_millis(1_500),
        "lifted too early: {total:?}"
    );
    // Banning again after the expiry (past our bookkeeping's slack) is a plain add.
    thread::sleep(Duration::from_millis(2_100));
    enf.apply(&[ban(lab.atk4, 300)]).unwrap();
    assert_eq!(link.send(5), 0, "banned again after the expiry");
    // Re-banning replaces the timeout: a long ban after a short one holds.
    enf.apply(&[ban(lab.atk4, 1)]).unwrap();
    enf.apply(&[ban(lab.atk4, 300)]).unwrap();
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(link.send(5), 0, "the 300 s ban replaced the 1 s one");
}

#[test]
fn banned_ipv6_source_is_dropped_in_ban6() {
    require_root();
    let lab = Lab::new();
    let link = lab.pair(true, SIP);
    let mut enf = Enforcer::install(lab.cfg()).unwrap();
    assert_eq!(link.send(10), 10);
    let c0 = enf.counters().unwrap();
    enf.apply(&[ban(lab.atk6, 300)]).unwrap();
    assert_eq!(set_len(&lab.app, "ban6"), 1);
    assert_eq!(set_len(&lab.app, "ban4"), 0);
    assert_eq!(link.send(20), 0);
    let c1 = enf.counters().unwrap();
    // At least our datagrams; neighbour discovery from the banned address is dropped too.
    assert!(
        c1.banned_packets - c0.banned_packets >= 20,
        "{c0:?} -> {c1:?}"
    );
    enf.apply(&[SetOp::Unban(lab.atk6.into())]).unwrap();
    link.wait_open(Duration::from_secs(5));
}

#[test]
fn allow_listed_source_is_never_dropped_even_when_banned() {
    require_root();
    let lab = Lab::new();
    let net: Cidr = format!("{}/24", lab.atk4).parse().unwrap();
    let cfg = NftConfig {
        allow: vec![net],
        ..lab.cfg()
    };
    let link4 = lab.pair(false, SIP);
    let mut enf = Enforcer::install(cfg).unwrap();
    let c0 = enf.counters().unwrap();
    enf.apply(&[ban(lab.atk4, 300)]).unwrap();
    assert_eq!(link4.send(10), 10, "allow-listed network");
    assert_eq!(enf.counters().unwrap().banned_packets, c0.banned_packets);

    // Taking the network off the allow list lets the ban bite.
    enf.apply(&[SetOp::Disallow(net)]).unwrap();
    assert_eq!(link4.send(10), 0);
    // Disallowing what is not allowed is fine; allowing a single host works again.
    enf.apply(&[
        SetOp::Disallow(net),
        SetOp::Allow(Cidr::new(lab.atk4.into(), 32).unwrap()),
    ])
    .unwrap();
    assert_eq!(link4.send(10), 10);
    assert!(enf.verify().unwrap());
}

/// Trunk peers used to sit in the allow sets, accepted ahead of every limit: a flood
/// forging the provider's address went through. Now the trunk's own traffic (address,
/// transport, source port) has its own, higher meter; anything else from that address is
/// metered like anyone's; bans and the closed RTP range apply to it too.
#[test]
fn trunk_peers_are_metered_at_their_own_rate_never_accepted_ahead_of_the_limits() {
    require_root();
    let lab = Lab::new();
    let trunk = lab.pair(false, SIP);
    let trunk_port = trunk.tx.local_addr().unwrap().port();
    let v6 = lab.pair(true, SIP);
    let v6_port = v6.tx.local_addr().unwrap().port();
    let rtp = lab.pair(false, 10_500);
    let cfg = NftConfig {
        flood_rate: Some(FloodLimit {
            per_second: 20,
            burst: 50,
        }),
        trunk_flood_rate: Some(FloodLimit {
            per_second: 100,
            burst: 400,
        }),
        trunk_peers: vec![
            TrunkPeer::host(lab.atk4.into(), TrunkProto::Udp, Some(trunk_port)),
            TrunkPeer::host(lab.atk6.into(), TrunkProto::Udp, Some(v6_port)),
        ],
        ..lab.cfg()
    };
    let mut enf = Enforcer::install(cfg).unwrap();
    let c0 = enf.counters().unwrap();
    // The trunk's own traffic passes far above the ordinary rate (burst 50), over both
    // families. (Bursts of 200: a socket's receive buffer holds about 256 datagrams.)
    assert!(trunk.send(200) >= 195, "trunk traffic within its burst");
    assert!(v6.send(200) >= 195, "IPv6 trunk traffic within its burst");
    let c1 = enf.counters().unwrap();
    assert_eq!(c1.meter_drops, c0.meter_drops, "{c0:?} -> {c1:?}");
    assert_eq!(
        c1.trunk_meter_drops, c0.trunk_meter_drops,
        "{c0:?} -> {c1:?}"
    );
    // But a flood from it is metered (about 200 of its burst are left), on its own counter.
    trunk.send(1_000);
    let c2 = enf.counters().unwrap();
    assert!(
        c2.trunk_meter_drops - c1.trunk_meter_drops >= 500,
        "{c1:?} -> {c2:?}"
    );
    assert_eq!(c2.meter_drops, c1.meter_drops);

    // The provider's address from another port is an ordinary source: the ordinary meter.
    let stranger = lab.from(lab.atk4.into(), &trunk);
    let got = stranger.send(200);
    assert!(
        got <= 100,
        "{got} of 200 from the trunk's address, another port"
    );
    let c3 = enf.counters().unwrap();
    assert!(c3.meter_drops - c2.meter_drops >= 100, "{c2:?} -> {c3:?}");

    // A ban and the closed RTP range bite on a trunk peer too.
    assert_eq!(rtp.send(5), 0, "closed RTP range");
    thread::sleep(Duration::from_secs(4)); // refill the trunk's meter
    assert!(trunk.send(20) >= 19);
    enf.apply(&[ban(lab.atk4, 300)]).unwrap();
    assert_eq!(trunk.send(20), 0, "a banned trunk address is dropped");
    assert!(enf.verify().unwrap());
}

/// A trunk whose host resolves to a new address: the trunk sets are replaced live, in one
/// run, and a restore keeps them.
#[test]
fn trunk_peers_follow_a_live_change() {
    require_root();
    let lab = Lab::new();
    let trunk = lab.pair(false, SIP);
    let trunk_port = trunk.tx.local_addr().unwrap().port();
    let cfg = NftConfig {
        flood_rate: Some(FloodLimit {
            per_second: 20,
            burst: 50,
        }),
        trunk_flood_rate: Some(FloodLimit {
            per_second: 100,
            burst: 400,
        }),
        trunk_peers: Vec::new(),
        ..lab.cfg()
    };
    let mut enf = Enforcer::install(cfg).unwrap();
    // Not a trunk yet: the ordinary meter.
    let got = trunk.send(200);
    assert!(got <= 100, "{got} of 200 before the address is a trunk's");
    thread::sleep(Duration::from_secs(3)); // refill the ordinary meter
    let peers = vec![TrunkPeer::host(
        lab.atk4.into(),
        TrunkProto::Udp,
        Some(trunk_port),
    )];
    enf.set_trunk_peers(&peers).unwrap();
    assert_eq!(set_len(&lab.app, "trunk4"), 1);
    assert!(trunk.send(200) >= 195, "the trunk's rate applies at once");
    assert!(
        enf.verify().unwrap(),
        "set contents are not the table's shape"
    );
    lab.app.nft(&["flush", "table", "inet", "outpost"]);
    enf.restore(&[]).unwrap();
    assert_eq!(
        set_len(&lab.app, "trunk4"),
        1,
        "a restore keeps the peers last set"
    );
    // Gone again.
    enf.set_trunk_peers(&[]).unwrap();
    assert_eq!(set_len(&lab.app, "trunk4"), 0);
    let too_many: Vec<TrunkPeer> = (0..=MAX_TRUNK_PEERS)
        .map(|i| {
            let [_, _, c, d] = u32::try_from(i).unwrap().to_be_bytes();
            TrunkPeer::host(Ipv4Addr::new(10, 8, c, d).into(), TrunkProto::Udp, None)
        })
        .collect();
    assert!(enf.set_trunk_peers(&too_many).is_err());
}

#[test]
fn thousand_bans_apply_in_one_batch() {
    require_root();
    let lab = Lab::new();
    let link = lab.pair(false, SIP);
    let mut enf = Enforcer::install(lab.cfg()).unwrap();
    let many: Vec<IpAddr> = (0..1000u32)
        .map(|i| {
            let [_, _, c, d] = (0xC612_0000u32 + i).to_be_bytes(); // 198.18.0.0/15
            IpAddr::V4(Ipv4Addr::new(198, 18, c, d))
        })
        .collect();
    let mut batch: Vec<SetOp> = many.iter().map(|a| ban(*a, 3600)).collect();
    batch.push(ban(lab.atk4, 3600));

    let t = Instant::now();
    enf.apply(&batch).unwrap();
    let thousand = t.elapsed();
    assert_eq!(set_len(&lab.app, "ban4"), 1001);
    assert_eq!(link.send(5), 0);

    let t = Instant::now();
    enf.apply(&[ban(Ipv4Addr::new(203, 0, 113, 7), 3600)])
        .unwrap();
    let one = t.elapsed();
    assert_eq!(set_len(&lab.app, "ban4"), 1002);
    let t = Instant::now();
    enf.apply(&[ban(Ipv4Addr::new(203, 0, 113, 7), 60)])
        .unwrap();
    let one_again = t.elapsed();
    // Re-banning all of them (new timeouts) goes through the reset path.
    let t = Instant::now();
    enf.apply(&batch).unwrap();
    let thousand_again = t.elapsed();
    assert_eq!(set_len(&lab.app, "ban4"), 1002);

    // 1,000 unbans of addresses that were never banned: one run, no failure.
    let absent: Vec<SetOp> = (0..1000u32)
        .map(|i| {
            let [_, _, c, d] = i.to_be_bytes();
            SetOp::Unban(IpAddr::V4(Ipv4Addr::new(198, 19, c, d)))
        })
        .collect();
    let t = Instant::now();
    enf.apply(&absent).unwrap();
    let absent_unbans = t.elapsed();
    let unbans: Vec<SetOp> = many.iter().map(|a| SetOp::Unban(*a)).collect();
    enf.apply(&unbans).unwrap();
    assert_eq!(set_len(&lab.app, "ban4"), 2);
    assert_eq!(link.send(5), 0, "the attacker is still banned");
    println!(
        "nft batch timings: 1,001 new bans in one batch {thousand:?}; one new ban {one:?}; \
         one re-ban {one_again:?}; 1,001 re-bans {thousand_again:?}; \
         1,000 unbans of absent addresses {absent_unbans:?}"
    );
}

#[test]
fn flushed_or_deleted_table_is_detected_and_restored() {
    require_root();
    let lab = Lab::new();
    let link = lab.pair(false, SIP);
    let mut enf = Enforcer::install(lab.cfg()).unwrap();
    enf.apply(&[
        ban(lab.atk4, 300),
        rtp_open(lab.atk4, 10_010),
        rtp_open(lab.atk6, 10_010),
    ])
    .unwrap();
    assert!(enf.verify().unwrap());
    assert_eq!(link.send(5), 0);

    lab.app.nft(&["flush", "table", "inet", "outpost"]);
    assert!(!enf.verify().unwrap(), "a flushed table is detected");
    assert_eq!(link.send(5), 5, "the flush really removed the rules");
    enf.restore(&[(lab.atk4.into(), 300), ("192.0.2.9".parse().unwrap(), 0)])
        .unwrap();
    assert!(enf.verify().unwrap());
    assert_eq!(link.send(5), 0, "the ban is back");
    assert_eq!(
        set_len(&lab.app, "ban4"),
        1,
        "expired bans are not restored"
    );
    assert_eq!(
        (
            set_len(&lab.app, "rtp_open4"),
            set_len(&lab.app, "rtp_open6")
        ),
        (1, 1),
        "open RTP pairs are restored"
    );

    lab.app.nft(&["delete", "table", "inet", "outpost"]);
    assert!(!enf.verify().unwrap(), "a deleted table is detected");
    enf.restore(&[(lab.atk4.into(), 300)]).unwrap();
    assert!(enf.verify().unwrap());
    assert_eq!(link.send(5), 0);

    lab.app
        .nft(&["insert", "rule", "inet", "outpost", "input", "accept"]);
    assert!(!enf.verify().unwrap(), "an added rule is detected");
    assert_eq!(link.send(5), 5);
    enf.restore(&[(lab.atk4.into(), 300)]).unwrap();
    assert!(enf.verify().unwrap());
    assert_eq!(link.send(5), 0);
}

#[test]
fn rtp_is_open_only_from_the_opened_address_to_the_opened_port() {
    require_root();
    let lab = Lab::new();
    let cfg = NftConfig {
        rtp_range: (10_000, 10_100),
        ..lab.cfg()
    };
    // Open the listeners before the table exists, so wait_open can see the paths work.
    let phone = lab.pair(false, 10_010);
    let stranger = lab.from(lab.other4.into(), &phone);
    let rtcp = lab.pair(false, 10_011);
    let phone6 = lab.pair(true, 10_020);
    let stranger6 = lab.from(lab.other6.into(), &phone6);
    let outside = lab.pair(false, 10_200);
    let mut enf = Enforcer::install(cfg).unwrap();
    let c0 = enf.counters().unwrap().rtp_drops;
    assert_eq!(phone.send(5), 0, "closed before RtpOpen");
    assert_eq!(outside.send(5), 5, "ports outside the range are not ours");
    assert_eq!(enf.counters().unwrap().rtp_drops - c0, 5);

    // The phone's address on the port, and on the RTCP port as the mapped form.
    enf.apply(&[
        rtp_open(lab.atk4, 10_010),
        rtp_open(lab.atk4.to_ipv6_mapped(), 10_011),
        rtp_open(lab.atk6, 10_020),
    ])
    .unwrap();
    assert_eq!(set_len(&lab.app, "rtp_open4"), 2, "mapped IPv4 is IPv4");
    assert_eq!(set_len(&lab.app, "rtp_open6"), 1);
    let c1 = enf.counters().unwrap().rtp_drops;
    assert_eq!(phone.send(5), 5, "the opened pair passes");
    assert_eq!(rtcp.send(5), 5, "so does its RTCP pair");
    assert_eq!(
        stranger.send(5),
        0,
        "another address to the same port is dropped"
    );
    assert_eq!(phone6.send(5), 5, "the IPv6 pair passes");
    assert_eq!(stranger6.send(5), 0, "another IPv6 address is dropped");
    assert_eq!(
        enf.counters().unwrap().rtp_drops - c1,
        10,
        "the strangers' packets are counted in rtp_closed"
    );
    assert!(enf.verify().unwrap(), "open pairs do not alter the table");

    enf.apply(&[rtp_close(lab.atk4, 10_010), rtp_close(lab.atk6, 10_020)])
        .unwrap();
    assert_eq!(phone.send(5), 0, "closed again after RtpClose");
    assert_eq!(phone6.send(5), 0);
    assert_eq!(rtcp.send(5), 5, "the RTCP pair is still open");
    // Closing a closed pair, and open+close in one batch, are fine.
    enf.apply(&[
        rtp_close(lab.atk4, 10_010),
        rtp_open(lab.other4, 10_012),
        rtp_close(lab.other4, 10_012),
        rtp_close(lab.atk4, 10_011),
    ])
    .unwrap();
    assert_eq!(set_len(&lab.app, "rtp_open4"), 0);
    assert_eq!(set_len(&lab.app, "rtp_open6"), 0);
}

#[test]
fn sip_flood_is_metered_in_the_kernel() {
    require_root();
    let lab = Lab::new();
    let cfg = NftConfig {
        flood_rate: Some(FloodLimit {
            per_second: 20,
            burst: 20,
        }),
        ..lab.cfg()
    };
    let link = lab.pair(false, SIP);
    let mut enf = Enforcer::install(cfg).unwrap();
    let sent = 300;
    let got = link.send(sent);
    let c = enf.counters().unwrap();
    println!(
        "flood of {sent} datagrams: {got} delivered, {} dropped by the meter",
        c.meter_drops
    );
    assert!((1..=80).contains(&got), "delivered {got}");
    assert!(c.meter_drops >= 220, "{c:?}");
    assert_eq!(c.banned_packets, 0);
    // The meter's entries do not make the table look altered.
    assert!(enf.verify().unwrap());
    // Allow-listed sources are not metered.
    enf.apply(&[SetOp::Allow(Cidr::new(lab.atk4.into(), 32).unwrap())])
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(link.send(200), 200);
}

/// Starts `n` connections from `src` to `to` at once and returns how many completed within
/// `wait` (shorter than the 1 s SYN retransmission).
fn burst(ns: &Netns, src: IpAddr, to: SocketAddr, n: usize, wait: Duration) -> usize {
    ns.in_ns(move || {
        use nix::sys::socket::{self as s, SockFlag, SockType, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let socks: Vec<TcpStream> = (0..n)
            .map(|_| {
                let fd = s::socket(
                    s::AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK,
                    None,
                )
                .unwrap();
                s::bind(
                    fd.as_raw_fd(),
                    &SockaddrStorage::from(SocketAddr::new(src, 0)),
                )
                .unwrap();
                let _ = s::connect(fd.as_raw_fd(), &SockaddrStorage::from(to));
                TcpStream::from(fd)
            })
            .collect();
        thread::sleep(wait);
        socks.iter().filter(|s| s.peer_addr().is_ok()).count()
    })
}

/// Opens up to `n` connections from `src` to `to` and returns those that completed.
fn open_conns(ns: &Netns, src: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| ns.tcp_connect(src, to, Duration::from_millis(300)))
        .collect()
}

#[test]
fn connection_caps_drop_new_tcp_connections_per_source_before_accept() {
    require_root();
    let lab = Lab::new();
    let cfg = NftConfig {
        conn_limit: Some(ConnLimit {
            ports: vec![SIP],
            unauthenticated: 4,
            authenticated: 6,
            by: ConnLimitBy::Count,
        }),
        // Only the caps under test.
        flood_rate: None,
        ..lab.cfg()
    };
    let mut enf = Enforcer::install(cfg).unwrap();
    let to4 = SocketAddr::new(lab.app4.into(), SIP);
    let listener4 = lab.app.tcp_listener(to4);
    listener4.set_nonblocking(true).unwrap();

    // A stranger holds 4 connections; the 5th and later SYNs are dropped in the kernel.
    let held = open_conns(&lab.atk, lab.atk4.into(), to4, 7);
    assert_eq!(
        held.len(),
        4,
        "connections completed from an unauthenticated source"
    );
    let c = enf.counters().unwrap();
    println!("unauthenticated source: 4 of 7 connections completed, {c:?}");
    assert!(c.conn_drops >= 3, "{c:?}");
    // Its neighbour has its own count.
    assert_eq!(open_conns(&lab.atk, lab.other4.into(), to4, 2).len(), 2);
    // Connections closed by both sides no longer count.
    drop(held);
    thread::sleep(Duration::from_millis(100));
    while listener4.accept().is_ok() {}
    thread::sleep(Duration::from_millis(200));
    let again = open_conns(&lab.atk, lab.atk4.into(), to4, 4);
    assert_eq!(again.len(), 4);

    // Authenticated, the source may open 6 more (counted from now on).
    enf.apply(&[SetOp::Authenticated {
        addr: lab.atk4.into(),
        timeout_secs: 60,
    }])
    .unwrap();
    assert_eq!(set_len(&lab.app, "authed4"), 1);
    let more = open_conns(&lab.atk, lab.atk4.into(), to4, 8);
    assert_eq!(more.len(), 6, "connections completed after authenticating");
    // The meters' entries do not make the table look altered, and a restore keeps the
    // authenticated sources.
    assert!(enf.verify().unwrap());
    lab.app.nft(&["flush", "table", "inet", "outpost"]);
    assert!(!enf.verify().unwrap());
    enf.restore(&[]).unwrap();
    assert_eq!(set_len(&lab.app, "authed4"), 1);
    // A refresh replaces the timeout; 0 removes it.
    enf.apply(&[SetOp::Authenticated {
        addr: lab.atk4.into(),
        timeout_secs: 0,
    }])
    .unwrap();
    assert_eq!(set_len(&lab.app, "authed4"), 0);

    // IPv6 counts per /64: the attacker's two addresses share one cap.
    let to6 = SocketAddr::new(lab.app6.into(), SIP);
    let _listener6 = lab.app.tcp_listener(to6);
    let a = open_conns(&lab.atk, lab.atk6.into(), to6, 3);
    let b = open_conns(&lab.atk, lab.other6.into(), to6, 3);
    assert_eq!(a.len() + b.len(), 4, "{} + {}", a.len(), b.len());
    enf.apply(&[SetOp::Authenticated {
        addr: lab.other6.into(),
        timeout_secs: 60,
    }])
    .unwrap();
    // The whole /64 is authenticated now.
    assert_eq!(open_conns(&lab.atk, lab.atk6.into(), to6, 7).len(), 6);
}

/// `n` connections at once from `src` in the attacker's namespace to the SIP port (IPv4):
/// how many completed within 500 ms.
fn burst_to_sip(lab: &Lab, src: IpAddr, n: usize) -> usize {
    let to4 = SocketAddr::new(lab.app4.into(), SIP);
    burst(&lab.atk, src, to4, n, Duration::from_millis(500))
}

/// SYNs to the SIP port metered per source: a burst of 5 a second, 50 once authenticated.
fn syn_rate_cfg(lab: &Lab) -> NftConfig {
    NftConfig {
        conn_limit: Some(ConnLimit {
            ports: vec![SIP],
            unauthenticated: 5,
            authenticated: 50,
            by: ConnLimitBy::SynRate,
        }),
        flood_rate: None,
        ..lab.cfg()
    }
}

#[test]
fn syn_rate_limits_new_tcp_connections_per_source_without_conntrack() {
    require_root();
    let lab = Lab::new();
    let cfg = syn_rate_cfg(&lab);
    let mut enf = Enforcer::install(cfg).unwrap();
    let to4 = SocketAddr::new(lab.app4.into(), SIP);
    let listener = lab.app.tcp_listener(to4);
    listener.set_nonblocking(true).unwrap();
    // A burst of 5 (and 5 a second after): 20 at once, 5 complete.
    let got = burst_to_sip(&lab, lab.atk4.into(), 20);
    let c = enf.counters().unwrap();
    println!("SYN rate 5/s burst 5: {got} of 20 connections completed, {c:?}");
    assert!((5..=7).contains(&got), "{got}");
    assert!(c.conn_drops >= 13, "{c:?}");
    // No connection tracking in the namespace.
    let ct = lab.app.nft(&["list", "table", "inet", "outpost"]);
    assert!(!ct.contains("ct "), "{ct}");
    // Authenticated sources get the larger budget.
    thread::sleep(Duration::from_millis(1_100));
    enf.apply(&[SetOp::Authenticated {
        addr: lab.atk4.into(),
        timeout_secs: 60,
    }])
    .unwrap();
    assert_eq!(burst_to_sip(&lab, lab.atk4.into(), 20), 20);
    assert!(enf.verify().unwrap());
    while listener.accept().is_ok() {}
}

#[test]
fn a_reinstall_holds_the_offices_authenticated_sources_and_the_bans_from_its_first_packet() {
    require_root();
    let lab = Lab::new();
    let cfg = syn_rate_cfg(&lab);
    // The daemon before the restart: its table, with the office (atk4 here) authenticated.
    let mut before = Enforcer::install(cfg.clone()).unwrap();
    before
        .apply(&[SetOp::Authenticated {
            addr: lab.atk4.into(),
            timeout_secs: 600,
        }])
        .unwrap();
    drop(before);
    // The restarted daemon replaces it in one run that already holds the office and a ban.
    let enf = Enforcer::install_with(cfg, &[(lab.other4.into(), 600)], &[(lab.atk4.into(), 600)])
        .unwrap();
    assert_eq!(set_len(&lab.app, "authed4"), 1);
    assert_eq!(set_len(&lab.app, "ban4"), 1);
    let to4 = SocketAddr::new(lab.app4.into(), SIP);
    let listener = lab.app.tcp_listener(to4);
    listener.set_nonblocking(true).unwrap();
    // 20 phones of the office reconnect at once: all complete (a stranger's burst is 5).
    let got = burst_to_sip(&lab, lab.atk4.into(), 20);
    let c = enf.counters().unwrap();
    println!("office after a reinstall: {got} of 20 connections completed, {c:?}");
    assert_eq!(got, 20, "{c:?}");
    assert_eq!(c.conn_drops, 0, "{c:?}");
    // The banned source gets nothing.
    assert_eq!(burst_to_sip(&lab, lab.other4.into(), 3), 0);
    assert!(enf.verify().unwrap());
    while listener.accept().is_ok() {}
}

#[test]
fn the_management_zone_drops_tcp_to_management_ports_from_outside_its_networks() {
    require_root();
    let lab = Lab::new();
    const SSH: u16 = 2222;
    // The zone holds the attacker's neighbour (other4, a /32) and the IPv6 loopback only:
    // atk4 and atk6 are outside.
    let cfg = NftConfig {
        management: ManagementZone {
            networks: vec![
                Cidr::new(lab.other4.into(), 32).unwrap(),
                "::1/128".parse().unwrap(),
            ],
            ports: vec![SSH],
        },
        ..lab.cfg()
    };
    let mut enf = Enforcer::install(cfg).unwrap();
    let to4 = SocketAddr::new(lab.app4.into(), SSH);
    let to6 = SocketAddr::new(lab.app6.into(), SSH);
    let _l4 = lab.app.tcp_listener(to4);
    let _l6 = lab.app.tcp_listener(to6);
    let wait = Duration::from_millis(700);
    assert!(
        lab.atk.tcp_connect(lab.atk4.into(), to4, wait).is_none(),
        "a source outside the zone completed a handshake to a management port"
    );
    assert!(lab.atk.tcp_connect(lab.atk6.into(), to6, wait).is_none());
    let c = enf.counters().unwrap();
    assert!(c.mgmt_drops >= 2, "every dropped SYN is counted: {c:?}");
    assert!(lab
        .atk
        .tcp_connect(lab.other4.into(), to4, Duration::from_secs(3))
        .is_some());
    // Other ports (SIP) are not the zone's business.
    let sip = SocketAddr::new(lab.app4.into(), SIP);
    let _sip = lab.app.tcp_listener(sip);
    assert!(lab
        .atk
        .tcp_connect(lab.atk4.into(), sip, Duration::from_secs(3))
        .is_some());
    // Loopback always reaches it.
    let lo = SocketAddr::new(lab.app4.into(), SSH);
    assert!(lab
        .app
        .tcp_connect(lab.app4.into(), lo, Duration::from_secs(3))
        .is_some());

    // A live change: the attacker's /24 and /64 join, in one run, without a reinstall.
    let zone = ManagementZone {
        networks: vec![
            Cidr::new(lab.atk4.into(), 24).unwrap(),
            Cidr::new(lab.atk6.into(), 64).unwrap(),
        ],
        ports: vec![SSH],
    };
    enf.set_management(&zone).unwrap();
    assert_eq!(set_len(&lab.app, "mgmt4"), 1);
    assert!(lab
        .atk
        .tcp_connect(lab.atk4.into(), to4, Duration::from_secs(3))
        .is_some());
    assert!(lab
        .atk
        .tcp_connect(lab.atk6.into(), to6, Duration::from_secs(3))
        .is_some());
    assert!(
        enf.verify().unwrap(),
        "set contents are not the table's shape"
    );
    // A restore keeps the zone last set.
    lab.app.nft(&["flush", "table", "inet", "outpost"]);
    enf.restore(&[]).unwrap();
    assert_eq!(set_len(&lab.app, "mgmt4"), 1);
    assert_eq!(set_len(&lab.app, "mgmt_ports"), 1);
    // Too many networks are refused before nft runs; the zone stays.
    let huge = ManagementZone {
        networks: (0..=64u8)
            .map(|i| Cidr::new(Ipv4Addr::new(10, 9, i, 0).into(), 24).unwrap())
            .collect(),
        ports: vec![SSH],
    };
    assert!(enf.set_management(&huge).is_err());
    assert_eq!(enf.config().management, zone);
}

/// The relay's fast path applies its element changes through one long-lived `nft -j -i`
/// (no process per change), each change one transaction the kernel takes as written.
#[test]
fn fast_path_changes_go_through_one_nft_session() {
    use firewall::nft::fastpath::{Direction, FastPath, FAST_TABLE};
    require_root();
    let ns = Netns::new();
    let dir = |id: u16| Direction {
        id,
        from: format!("192.0.2.10:{}", 4000 + id).parse().unwrap(),
        box_port: 21_000 + 2 * id,
        to: "198.51.100.20:5000".parse().unwrap(),
        via: "198.51.100.1:21001".parse().unwrap(),
    };
    let processes = ns.in_ns(move || {
        let mut fp = FastPath::install(21_000, 21_199).expect("fast path installs");
        let timeout = Duration::from_secs(60);
        // 30 calls handed to the kernel one by one, every other one taken back again.
        for id in 1..=30u16 {
            fp.apply(&[dir(id)], &[], timeout).expect("add");
            if id % 2 == 0 {
                fp.apply(&[], &[dir(id)], timeout).expect("delete");
            }
        }
        // A refresh of every live one, and a change the kernel refuses (deleting what is
        // not there): an error, the session survives it.
        let live: Vec<Direction> = (1..=30u16).filter(|i| i % 2 == 1).map(dir).collect();
        fp.apply(&live, &[], timeout).expect("refresh");
        assert!(fp.apply(&[], &[dir(2)], timeout).is_err());
        fp.apply(&[dir(40)], &[], timeout)
            .expect("add after a refused batch");
        let ids: Vec<u16> = fp.counts().expect("counters").keys().copied().collect();
        let listed = run("nft", &["list", "map", "ip", FAST_TABLE, "daddr"]);
        let processes = fp.batch_processes();
        // Removed here: it restores this namespace's forwarding switch.
        fp.remove().expect("removed");
        (processes, ids, listed)
    });
    let (processes, mut ids, listed) = processes;
    ids.sort_unstable();
    let mut want: Vec<u16> = (1..=30u16).filter(|i| i % 2 == 1).collect();
    want.push(40);
    assert_eq!(ids, want, "the kernel holds exactly the live directions");
    assert!(listed.contains("0x4f500028"), "{listed}");
    assert_eq!(processes, 1, "one nft for 47 changes");
}
