//! End-to-end tests of the relay on loopback sockets: they prove the wiring (commands,
//! epoll, batched I/O, the file thread, the event channel); the per-packet rules are
//! tested with a virtual clock beside the pure code.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use pbx_core::media::dtmf::emit_event;
use pbx_core::media::g711::{alaw_to_ulaw, ulaw_to_alaw};
use pbx_core::media::rtcp::{emit_receiver_report, ReportBlock};
use pbx_core::media::rtp::{self, RtpPacket, RtpRepr};
use pbx_core::media::session::{
    Codec, Leg, LegMedia, LegStats, MediaCommand, MediaEvent, SessionId, SrtpKeys,
};
use pbx_core::media::srtp::{self, SrtpContext};
use tokio::sync::mpsc as tokio_mpsc;

use super::udp::BUF_LEN;
use super::{start, start_with_io, start_with_prompts, Relay, RelayConfig, RelayIo, RELATCH_AFTER};
use crate::media::prompts::PromptStore;

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

/// A relay on IPv4 on the back end `io`, ports `first`..`first + 9`.
fn relay_io(first: u16, io: RelayIo) -> Relay {
    let cfg = RelayConfig {
        addrs: vec![V4],
        port_first: first,
        port_last: first + 9,
        media_timeout: WAIT,
    };
    start_with_io(cfg, PromptStore::builtin(), io).expect("relay starts")
}

/// Whether this kernel runs the io_uring back end: Linux 6.1 or later with io_uring
/// enabled (`kernel.io_uring_disabled` 0).
fn kernel_has_io_uring() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let version = (
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0),
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0),
    );
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() != "0");
    version >= (6, 1) && !disabled
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
    relayed_byte_for_byte(23000, RelayIo::Epoll);
}

#[test]
fn same_codec_is_relayed_byte_for_byte_on_the_io_uring_back_end() {
    relayed_byte_for_byte(23220, RelayIo::Uring);
}

fn relayed_byte_for_byte(first: u16, io: RelayIo) {
    let relay = relay_io(first, io);
    let (a, b) = (phone(V4), phone(V4));
    open(&relay, 1, pcmu(first, &a), pcmu(first + 2, &b));

    for seq in 1..=3 {
        let sent = audio(seq);
        a.send_to(&sent, to(first)).expect("sent");
        let (got, from) = recv(&b).expect("B receives");
        assert_eq!(got, sent);
        assert_eq!(from, to(first + 2), "B hears the relay's B-side port");
    }
    let sent = audio(100);
    b.send_to(&sent, to(first + 2)).expect("sent");
    let (got, from) = recv(&a).expect("A receives");
    assert_eq!((got, from), (sent, to(first)));

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
    strangers_dropped(23020, RelayIo::Epoll);
}

#[test]
fn strangers_are_dropped_and_counted_on_the_io_uring_back_end() {
    strangers_dropped(23230, RelayIo::Uring);
}

fn strangers_dropped(first: u16, io: RelayIo) {
    let relay = relay_io(first, io);
    let (a, b) = (phone(V4), phone(V4));
    open(&relay, 3, pcmu(first, &a), pcmu(first + 2, &b));
    a.send_to(&audio(1), to(first)).expect("sent");
    assert!(recv(&b).is_some(), "the phone's own packet is relayed");

    // An address that is not allowed at all, and an allowed IP on another port while
    // the latched source is still talking.
    let outsider = phone(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    outsider.send_to(&audio(2), to(first)).expect("sent");
    let neighbour = phone(V4);
    neighbour.send_to(&audio(3), to(first)).expect("sent");
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
    malformed_dropped(23060, RelayIo::Epoll);
}

#[test]
fn malformed_packets_are_dropped_without_harm_on_the_io_uring_back_end() {
    malformed_dropped(23240, RelayIo::Uring);
}

fn malformed_dropped(first: u16, io: RelayIo) {
    let relay = relay_io(first, io);
    let (a, b) = (phone(V4), phone(V4));
    open(&relay, 7, pcmu(first, &a), pcmu(first + 2, &b));

    let mut version_one = audio(1);
    version_one[0] = 0x40;
    // Longer than a receive buffer: cut by the kernel, so dropped.
    let oversized = vec![0x80u8; BUF_LEN + 100];
    for bad in [&b"\x80\x00\x00"[..], &version_one, &oversized] {
        a.send_to(bad, to(first)).expect("sent");
    }
    a.send_to(b"not rtcp at all", to(first + 1)).expect("sent");
    a.send_to(&audio(2), to(first)).expect("sent");
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
    let (h, payload, _) = recv_rtp(&b).expect("relayed again");
    assert_eq!(payload, audio(20)[rtp::HEADER_LEN..], "A's audio");
    assert_eq!(h.ssrc, ours.ssrc, "in B's one stream");
    assert!(h.marker, "after the prompt: a new talkspurt");
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
        from_start: false,
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
        from_start: false,
    });
    relay.command(MediaCommand::Record {
        session: 25,
        leg: Leg::B,
        path: long.clone(),
        max_ms: 60_000,
        from_start: false,
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
    // A heard the beep first: B's audio continues A's stream.
    let (h, payload, _) = recv_rtp(&a).expect("B heard by A");
    assert_eq!(payload, audio(3)[rtp::HEADER_LEN..]);
    assert!(h.marker);

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

#[test]
fn the_io_uring_back_end_runs_where_the_kernel_has_it_and_epoll_by_default() {
    let auto = relay_io(23250, RelayIo::Uring);
    assert_eq!(
        auto.uses_io_uring(),
        kernel_has_io_uring(),
        "io_uring is used exactly where Linux >= 6.1 has it enabled"
    );
    let epoll = relay_io(23260, RelayIo::default());
    assert!(!epoll.uses_io_uring());
}

/// Many sockets ready at once, more datagrams than one pass reaps: every one arrives, in
/// order, and is counted once (both back ends).
#[test]
fn a_burst_over_many_sessions_is_relayed_in_order_and_counted_once() {
    for (first, io) in [(23270, RelayIo::Uring), (23280, RelayIo::Epoll)] {
        burst_over_sessions(first, io);
    }
}

fn burst_over_sessions(first: u16, io: RelayIo) {
    const PER_LEG: u16 = 120;
    let relay = relay_io(first, io);
    let phones: Vec<(StdUdpSocket, StdUdpSocket)> =
        (0..2).map(|_| (phone(V4), phone(V4))).collect();
    for (i, (a, b)) in phones.iter().enumerate() {
        let port = first + 4 * u16::try_from(i).expect("two sessions");
        open(&relay, 40 + i as u64, pcmu(port, a), pcmu(port + 2, b));
    }
    // Both directions of both sessions at once: four sockets of the relay ready together.
    for seq in 1..=PER_LEG {
        for (i, (a, b)) in phones.iter().enumerate() {
            let port = first + 4 * u16::try_from(i).expect("two sessions");
            a.send_to(&audio(seq), to(port)).expect("sent");
            b.send_to(&audio(1000 + seq), to(port + 2)).expect("sent");
        }
    }
    for (i, (a, b)) in phones.iter().enumerate() {
        for seq in 1..=PER_LEG {
            assert_eq!(
                recv(b).map(|(p, _)| p),
                Some(audio(seq)),
                "{io:?}: B{i} hears A"
            );
            assert_eq!(
                recv(a).map(|(p, _)| p),
                Some(audio(1000 + seq)),
                "{io:?}: A{i} hears B"
            );
        }
        let session = 40 + i as u64;
        let (sa, sb) = stats_until(&relay, session, |sa, sb| {
            sa.packets_out == u64::from(PER_LEG) && sb.packets_out == u64::from(PER_LEG)
        });
        assert_eq!(
            (sa.packets_in, sa.packets_out, sb.packets_in, sb.packets_out),
            (120, 120, 120, 120),
            "{io:?}: session {i}"
        );
        assert_eq!((sa.dropped, sb.dropped, sa.lost, sb.lost), (0, 0, 0, 0));
    }
    relay.shutdown();
}
