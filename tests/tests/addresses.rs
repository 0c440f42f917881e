//! Addresses follow the box (issue 13): the appliance listens on `0.0.0.0`, and what it
//! puts on the wire — Contact, the SDP `c=` line — is the box's current address, followed
//! live when the address changes (a new DHCP lease, the box moved to another network),
//! without a restart. A configuration naming an address the box no longer has, or a
//! watchdog that is not there, never stops the daemon: it starts with what works and
//! raises an alert naming the key.
//!
//! The box runs in its own network namespace with `eth0` (a veth) and a default route; the
//! phones sit in a second namespace on the other end, with addresses in both the old and the
//! new subnet. Root only (network namespaces); never skipped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use outpost_tests::{
    body_of, header_value, parse_rtp, recv_datagrams, require_root, rtp_packet, sdp_audio,
    sdp_body, udp_socket_in, Daemon, DaemonConfig, Netns, SipPhone,
};

const A: (&str, &str) = ("100", "moving-secret-100");
const B: (&str, &str) = ("101", "moving-secret-101");
/// Upper bound of each SIP and RTP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// The box's address before and after the move, and the phones' addresses.
const OLD_BOX: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NEW_BOX: Ipv4Addr = Ipv4Addr::new(10, 77, 5, 1);
const OLD_PHONE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const NEW_PHONE: Ipv4Addr = Ipv4Addr::new(10, 77, 5, 2);
const SIP_PORT: u16 = 5060;
const PCMU: u8 = 0;

/// The box namespace (eth0 = `OLD_BOX`/24, default route via the phone side) and the phone
/// namespace (both phone addresses on its end of the link).
fn lab() -> (Netns, Netns) {
    require_root("the address tests");
    let boxns = Netns::create("box");
    let phones = Netns::create("ph");
    boxns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        phones.name(),
    ]);
    boxns.ip(&["addr", "add", &format!("{OLD_BOX}/24"), "dev", "eth0"]);
    boxns.ip(&["link", "set", "eth0", "up"]);
    boxns.ip(&["route", "add", "default", "via", &OLD_PHONE.to_string()]);
    for a in [OLD_PHONE, NEW_PHONE] {
        phones.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    phones.ip(&["link", "set", "eth0", "up"]);
    (boxns, phones)
}

/// A registered phone in `ns` talking to the box at `server`, with its RTP socket.
fn phone(
    ns: &Netns,
    me: Ipv4Addr,
    server: Ipv4Addr,
    (ext, password): (&str, &str),
) -> (SipPhone, UdpSocket) {
    let sock = udp_socket_in(ns.name(), SocketAddr::from((me, 0)));
    let mut p = SipPhone::on_socket(sock, SocketAddr::from((server, SIP_PORT)), ext, password);
    p.register();
    let rtp = udp_socket_in(ns.name(), SocketAddr::from((me, 0)));
    (p, rtp)
}

/// A calls B; checks that the INVITE B gets and the 200 OK A gets name `box_ip` in Contact
/// and SDP (never 0.0.0.0), and that RTP crosses the relay at that address both ways.
fn call_through(
    daemon: &Daemon,
    (a, a_rtp): &mut (SipPhone, UdpSocket),
    (b, b_rtp): &mut (SipPhone, UdpSocket),
    box_ip: Ipv4Addr,
) {
    let a_sdp = sdp_body(a_rtp.local_addr().expect("rtp addr"), &[PCMU]);
    let inv = a.invite(B.0, &a_sdp);
    let invite = b.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "B got no INVITE:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    let contact = header_value(&invite, "Contact").unwrap_or_default();
    assert!(
        contact.contains(&format!("@{box_ip}:")),
        "the INVITE's Contact must name the box's current address {box_ip}: {contact}"
    );
    let to_b = sdp_audio(body_of(&invite)).expect("the INVITE carries SDP");
    assert_eq!(to_b.addr, IpAddr::V4(box_ip), "SDP towards B:\n{invite}");
    let b_sdp = sdp_body(b_rtp.local_addr().expect("rtp addr"), &[PCMU]);
    let dialog_b = b.answer(&invite, &b_sdp);
    b.await_ack(&dialog_b, WAIT).expect("B gets the ACK");
    let dialog_a = a.await_answer(&inv, WAIT).unwrap_or_else(|r| {
        panic!(
            "A's call was not answered: {r:?}\nlog:\n{}",
            daemon.log_text()
        )
    });
    assert!(
        dialog_a.remote_target.contains(&box_ip.to_string()),
        "A's remote target is the box's Contact: {}",
        dialog_a.remote_target
    );
    let to_a = sdp_audio(&dialog_a.remote_sdp).expect("the 200 OK carries SDP");
    assert_eq!(
        to_a.addr,
        IpAddr::V4(box_ip),
        "SDP towards A:\n{}",
        dialog_a.remote_sdp
    );

    // Media both ways through the relay at the new address (the kernel opens the ports
    // with an nft run: allow a few packets before the first must arrive).
    let deadline = Instant::now() + WAIT;
    let (mut a_heard, mut b_heard) = (false, false);
    let mut seq = 0u16;
    while !(a_heard && b_heard) && Instant::now() < deadline {
        seq += 1;
        let ts = u32::from(seq) * 160;
        a_rtp
            .send_to(
                &rtp_packet(PCMU, seq, ts, 0xa, &[0x11; 160]),
                to_a.rtp_addr(),
            )
            .expect("A sends RTP");
        b_rtp
            .send_to(
                &rtp_packet(PCMU, seq, ts, 0xb, &[0x22; 160]),
                to_b.rtp_addr(),
            )
            .expect("B sends RTP");
        for (from, pkt) in recv_datagrams(b_rtp, 4, Duration::from_millis(20)) {
            if parse_rtp(&pkt).is_some_and(|r| r.payload.first() == Some(&0x11)) {
                assert_eq!(
                    from.ip(),
                    IpAddr::V4(box_ip),
                    "B hears the relay at {box_ip}"
                );
                b_heard = true;
            }
        }
        for (from, pkt) in recv_datagrams(a_rtp, 4, Duration::from_millis(20)) {
            if parse_rtp(&pkt).is_some_and(|r| r.payload.first() == Some(&0x22)) {
                assert_eq!(
                    from.ip(),
                    IpAddr::V4(box_ip),
                    "A hears the relay at {box_ip}"
                );
                a_heard = true;
            }
        }
    }
    assert!(
        a_heard && b_heard,
        "RTP through the relay at {box_ip}: A heard B {a_heard}, B heard A {b_heard}\nlog:\n{}",
        daemon.log_text()
    );
    let mut dialog_a = dialog_a;
    a.send_bye(&mut dialog_a);
    b.answer_bye(WAIT).expect("B gets the BYE");
}

#[test]
fn a_new_address_is_followed_without_a_restart() {
    let (boxns, phones) = lab();
    let config = DaemonConfig::on(vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, SIP_PORT))]);
    let daemon = Daemon::start_in(&boxns, config);
    daemon.add_extension(A.0, A.1);
    daemon.add_extension(B.0, B.1);
    let pid = daemon.pid();

    let mut a = phone(&phones, OLD_PHONE, OLD_BOX, A);
    let mut b = phone(&phones, OLD_PHONE, OLD_BOX, B);
    call_through(&daemon, &mut a, &mut b, OLD_BOX);

    // The DHCP server hands out another address: the old one goes away.
    let moved = Instant::now();
    boxns.ip(&["addr", "del", &format!("{OLD_BOX}/24"), "dev", "eth0"]);
    boxns.ip(&["addr", "add", &format!("{NEW_BOX}/24"), "dev", "eth0"]);
    boxns.ip(&["route", "replace", "default", "via", &NEW_PHONE.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("the box's address changed") {
        assert!(
            Instant::now() < deadline,
            "the daemon did not notice the new address within 10 s:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "new address followed after {} ms",
        moved.elapsed().as_millis()
    );
    let mut a = phone(&phones, NEW_PHONE, NEW_BOX, A);
    let mut b = phone(&phones, NEW_PHONE, NEW_BOX, B);
    call_through(&daemon, &mut a, &mut b, NEW_BOX);
    assert_eq!(
        daemon.pid(),
        pid,
        "the same daemon process, never restarted"
    );
}

#[test]
fn an_address_the_box_lost_and_a_missing_watchdog_do_not_stop_the_daemon() {
    let (boxns, phones) = lab();
    // Revision 1 of an old image froze the first boot's address into the configuration;
    // the box now has another one. The watchdog device does not exist on this board.
    let config = DaemonConfig::on(vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, SIP_PORT))])
        .with_toml("[watchdog]\ndevice = \"/dev/outpost-test-no-such-watchdog\"\n")
        .with_media("addrs = [\"10.0.2.15\"]");
    let daemon = Daemon::start_in(&boxns, config);
    let alerts = daemon.ctl_ok(&["fw", "alerts"]);
    assert!(
        alerts.contains("media") && alerts.contains("10.0.2.15"),
        "an alert names the key and the address:\n{alerts}"
    );
    assert!(
        alerts.contains("watchdog") && alerts.contains("no-such-watchdog"),
        "an alert names the watchdog device:\n{alerts}"
    );
    // `config show` still shows what the admin configured; calls work on the box's address.
    let shown = daemon.ctl_ok(&["config", "show"]);
    assert!(shown.contains("10.0.2.15"), "{shown}");
    daemon.add_extension(A.0, A.1);
    daemon.add_extension(B.0, B.1);
    let mut a = phone(&phones, OLD_PHONE, OLD_BOX, A);
    let mut b = phone(&phones, OLD_PHONE, OLD_BOX, B);
    call_through(&daemon, &mut a, &mut b, OLD_BOX);
}
