//! Management zones (issue 16): SSH and the metrics endpoint are reachable only from the
//! management networks, enforced by the kernel in the daemon's own nftables table, while
//! SIP stays reachable from everywhere; a change of `[management] networks` applies live.
//!
//! The box runs in its own network namespace with two links: one to an "office" namespace
//! (10.203.N.0/24, inside the management networks) and one to a "WAN" namespace
//! (203.0.113.0/24 and 2001:db8:113::/64, explicitly outside them). dropbear is real,
//! started by the daemon on every address (the default shape: the kernel does the
//! filtering), for a throw-away non-root account whose home is the test's temp dir.
//! REQUIRES root, `ip`, `nft`, dropbear (`dropbear-bin`) and `useradd`; never skipped.
//! Every wait is bounded; namespaces, the account and the daemon go away on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outpost_tests::{
    eventually, in_netns, options_status_on, require_root, run_with_timeout, udp_socket_in, Daemon,
    DaemonConfig, Netns,
};

const SIP_PORT: u16 = 5060;
const SSH_PORT: u16 = 2222;
const METRICS_PORT: u16 = 9100;
/// How long a connection attempt the zone should drop is given: a SYN-ACK on a veth link
/// comes back in well under a millisecond, so silence for this long means dropped.
const DROPPED_AFTER: Duration = Duration::from_millis(800);
/// Upper bound of each wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(10);
const WAN_BOX: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const WAN_PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const WAN_BOX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
const WAN_PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 2);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A non-root login account for dropbear (it only has to exist); deleted on drop.
struct Account {
    name: String,
    _dir: tempfile::TempDir,
}

impl Account {
    fn create() -> Self {
        for tool in ["useradd", "userdel", "dropbear", "dropbearkey"] {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file());
            assert!(
                found,
                "the management zone test needs `{tool}` (apt-get install dropbear-bin passwd; tests/run-all does)"
            );
        }
        let name = format!(
            "opmz{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("outpost-mz-")
            .tempdir()
            .expect("create temp dir");
        let out = run_with_timeout(
            Command::new("useradd")
                .args(["-M", "-N", "-s", "/bin/sh", "-d"])
                .arg(dir.path().join("home"))
                .arg(&name),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(0), "useradd {name} failed: {out:?}");
        Account { name, _dir: dir }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new("userdel").args(["-f", &self.name]),
            Duration::from_secs(10),
        );
    }
}

/// The box with its two neighbours. Field order: the daemon stops before the account and
/// the namespaces go.
struct Site {
    daemon: Daemon,
    _account: Account,
    boxns: Netns,
    office: Netns,
    wan: Netns,
    office_box: Ipv4Addr,
    office_peer: Ipv4Addr,
}

fn site() -> Site {
    require_root("the management zone test");
    let boxns = Netns::create("mzbox");
    let office = Netns::create("mzoff");
    let wan = Netns::create("mzwan");
    let n = u8::try_from(std::process::id() % 250).expect("below 250") + 1;
    let office_box = Ipv4Addr::new(10, 203, n, 1);
    let office_peer = Ipv4Addr::new(10, 203, n, 2);
    for (peer, link, box_addrs, peer_addrs) in [
        (
            &office,
            "eoff",
            vec![format!("{office_box}/24")],
            vec![format!("{office_peer}/24")],
        ),
        (
            &wan,
            "ewan",
            vec![format!("{WAN_BOX}/24"), format!("{WAN_BOX6}/64")],
            vec![format!("{WAN_PEER}/24"), format!("{WAN_PEER6}/64")],
        ),
    ] {
        boxns.ip(&[
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ]);
        for a in &box_addrs {
            boxns.ip(&["addr", "add", a, "dev", link, "nodad"]);
        }
        for a in &peer_addrs {
            peer.ip(&["addr", "add", a, "dev", "eth0", "nodad"]);
        }
        boxns.ip(&["link", "set", link, "up"]);
        peer.ip(&["link", "set", "eth0", "up"]);
    }
    let account = Account::create();
    // The WAN's networks are left out explicitly: the default would leave them out too,
    // but the test must not depend on what the default happens to be.
    let toml = format!(
        "[ssh]\nenabled = true\nlisten = [\"0.0.0.0:{SSH_PORT}\", \"[::]:{SSH_PORT}\"]\nuser = \"{}\"\n\n\
         [metrics]\nlisten = \"0.0.0.0:{METRICS_PORT}\"\n\n\
         [management]\nnetworks = [\"10.0.0.0/8\", \"127.0.0.0/8\", \"::1/128\"]\n",
        account.name
    );
    let mut config = DaemonConfig::on(vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, SIP_PORT))])
        .with_toml(&toml);
    // The box namespace is private: no need for the host-wide port blocks.
    config.media_ports = (10_000, 10_099);
    let daemon = Daemon::start_in(&boxns, config);
    Site {
        daemon,
        _account: account,
        boxns,
        office,
        wan,
        office_box,
        office_peer,
    }
}

/// A TCP connection from namespace `ns` to `to`; `None` when the handshake does not
/// complete within `wait` (the SYN, or the SYN-ACK, was dropped).
fn connect(ns: &Netns, to: SocketAddr, wait: Duration) -> Option<TcpStream> {
    in_netns(ns.name(), move || {
        TcpStream::connect_timeout(&to, wait).ok()
    })
}

/// The SSH identification line the server sends first, read from `ns`.
fn ssh_banner(ns: &Netns, to: SocketAddr, wait: Duration) -> Option<String> {
    let mut stream = connect(ns, to, wait)?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 255 && !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    Some(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// `GET /metrics` from `ns`: the whole response, or `None` without a connection.
fn get_metrics(ns: &Netns, to: SocketAddr, wait: Duration) -> Option<String> {
    let mut stream = connect(ns, to, wait)?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: outpost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The status of an OPTIONS sent from `ns` (at `src`) to the box's SIP port at `box_ip`.
fn options_from(ns: &Netns, src: IpAddr, box_ip: IpAddr) -> Option<u16> {
    let sock = udp_socket_in(ns.name(), SocketAddr::new(src, 0));
    options_status_on(
        &sock,
        SocketAddr::new(box_ip, SIP_PORT),
        Duration::from_secs(3),
    )
}

impl Site {
    fn mgmt_drops(&self) -> u64 {
        // Polled: on a loaded machine one `nft` run can time out, or come while the
        // enforcer replaces the table.
        eventually(WAIT, || self.boxns.outpost_counter("mgmt_drop"))
            .expect("the table has the mgmt_drop counter")
    }

    /// Waits until dropbear (started by the daemon after it answers SIP) answers the office.
    fn wait_for_dropbear(&self) -> String {
        let to = SocketAddr::from((self.office_box, SSH_PORT));
        eventually(WAIT, || {
            ssh_banner(&self.office, to, Duration::from_secs(1))
                .filter(|b| b.starts_with("SSH-2.0-"))
        })
        .unwrap_or_else(|| {
            panic!(
                "dropbear did not answer from the office within {WAIT:?}\n{}",
                self.daemon.log_text()
            )
        })
    }
}

#[test]
fn ssh_and_metrics_answer_the_office_only_sip_answers_everyone_and_networks_apply_live() {
    let s = site();
    let banner = s.wait_for_dropbear();
    assert!(banner.contains("dropbear"), "{banner}");

    // The office reaches everything: SSH (above), metrics, SIP.
    let metrics = SocketAddr::from((s.office_box, METRICS_PORT));
    let text = get_metrics(&s.office, metrics, WAIT).expect("metrics from the office");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("outpost_uptime_seconds"), "{text}");
    assert_eq!(
        options_from(&s.office, s.office_peer.into(), s.office_box.into()),
        Some(200)
    );

    // The WAN: SSH and metrics get no SYN-ACK (IPv4 and IPv6), and the kernel counts the
    // drops; SIP OPTIONS is answered.
    let before = s.mgmt_drops();
    let wan_ssh = SocketAddr::from((WAN_BOX, SSH_PORT));
    let wan_ssh6 = SocketAddr::from((WAN_BOX6, SSH_PORT));
    let wan_metrics = SocketAddr::from((WAN_BOX, METRICS_PORT));
    for to in [wan_ssh, wan_ssh6, wan_metrics] {
        assert!(
            connect(&s.wan, to, DROPPED_AFTER).is_none(),
            "the WAN completed a handshake to {to}"
        );
    }
    let after = s.mgmt_drops();
    assert!(
        after >= before + 3,
        "each refused connection's SYN is counted: {before} -> {after}"
    );
    assert_eq!(
        options_from(&s.wan, WAN_PEER.into(), WAN_BOX.into()),
        Some(200),
        "SIP must stay reachable from the WAN"
    );
    // The status page shows the kernel's count too.
    let status = s.daemon.ctl_ok(&["fw", "status"]);
    assert!(status.contains("kernel: management zone"), "{status}");

    // A configuration change adding the WAN's networks applies without a restart.
    let text = std::fs::read_to_string(s.daemon.config_path()).expect("read the config");
    let old = "networks = [\"10.0.0.0/8\", \"127.0.0.0/8\", \"::1/128\"]";
    assert!(text.contains(old), "{text}");
    let new = text.replace(
        old,
        "networks = [\"10.0.0.0/8\", \"127.0.0.0/8\", \"::1/128\", \"203.0.113.0/24\", \"2001:db8:113::/64\"]",
    );
    let path = s.daemon.dir().join("with-wan.toml");
    std::fs::write(&path, new).expect("write the candidate configuration");
    let applied = std::time::Instant::now();
    let out = s
        .daemon
        .ctl_ok(&["config", "apply", path.to_str().expect("UTF-8 temp path")]);
    assert!(
        !out.contains("next restart"),
        "management.networks must apply live: {out}"
    );
    let banner = eventually(WAIT, || {
        ssh_banner(&s.wan, wan_ssh, Duration::from_secs(1)).filter(|b| b.starts_with("SSH-2.0-"))
    });
    assert!(
        banner.is_some(),
        "the WAN does not reach SSH after the change\n{}",
        s.daemon.log_text()
    );
    println!(
        "the WAN reached SSH {:?} after `config apply` was started",
        applied.elapsed()
    );
    assert!(ssh_banner(&s.wan, wan_ssh6, WAIT).is_some_and(|b| b.starts_with("SSH-2.0-")));
    // The metrics endpoint's own check follows the change too.
    let text = get_metrics(&s.wan, wan_metrics, WAIT).expect("metrics from the WAN now");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // The office keeps its access.
    assert!(ssh_banner(&s.office, SocketAddr::from((s.office_box, SSH_PORT)), WAIT).is_some());
}
