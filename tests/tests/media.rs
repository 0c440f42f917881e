//! Media anchoring end to end: two raw-UDP phones (100 and 200) call each other through
//! outpostd and exchange RTP through its relay: audio byte for byte, PCMU↔PCMA
//! transcoding, strangers dropped, re-latching after a NAT rebinding, the media timeout
//! and hostile datagrams on the relay ports.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    body_of, eventually, header_value, json_str, options_ok, parse_rtp, recv_datagrams, rtp_packet,
    rtp_pair, sdp_audio, sdp_body, status_of, Daemon, DaemonConfig, Dialog, RtpView, SdpAudio,
    SipPhone, Transport,
};
use pbx_core::media::g711::{alaw_to_ulaw, ulaw_to_alaw};

const PHONE_A: (&str, &str) = ("100", "phone-a-secret-100");
const PHONE_B: (&str, &str) = ("200", "phone-b-secret-200");
/// Upper bound of every SIP and RTP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// How long a socket listens before concluding that nothing comes.
const QUIET: Duration = Duration::from_millis(300);
/// Gap between RTP packets (faster than real time, to keep the tests short).
const PACING: Duration = Duration::from_millis(2);
/// The relay publishes its counters once per second.
const STATS_WAIT: Duration = Duration::from_secs(3);
const PCMU: u8 = 0;
const PCMA: u8 = 8;
const TELEPHONE_EVENT: u8 = 101;

/// An answered call between phones A (caller) and B, both with their RTP sockets.
struct Call {
    daemon: Daemon,
    a: SipPhone,
    b: SipPhone,
    a_rtp: UdpSocket,
    b_rtp: UdpSocket,
    a_rtcp: UdpSocket,
    b_rtcp: UdpSocket,
    a_dialog: Dialog,
    b_dialog: Dialog,
    /// The relay as A's 200 OK describes it: where A sends RTP.
    relay_a: SdpAudio,
    /// The relay as B's INVITE describes it: where B sends RTP.
    relay_b: SdpAudio,
}

/// Starts a daemon, registers both phones, A calls B offering PCMU and telephone-event,
/// B answers with `b_formats`; checks that both SDPs point at the relay.
fn establish(config: DaemonConfig, b_formats: &[u8]) -> Call {
    let daemon = Daemon::start_with(config);
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    let mut a = SipPhone::new(&daemon, PHONE_A.0, PHONE_A.1);
    let mut b = SipPhone::new(&daemon, PHONE_B.0, PHONE_B.1);
    a.register();
    b.register();
    let (a_rtp, a_rtcp) = rtp_pair();
    let (b_rtp, b_rtcp) = rtp_pair();
    let a_media = local(&a_rtp);
    let b_media = local(&b_rtp);
    let (first, last) = daemon.media_ports();

    let invite = a.invite(PHONE_B.0, &sdp_body(a_media, &[PCMU, TELEPHONE_EVENT]));
    let incoming = b.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "B got no INVITE; A received:\n{}\nB received:\n{}",
            a.transcript(),
            b.transcript()
        )
    });
    let relay_b = sdp_audio(body_of(&incoming))
        .unwrap_or_else(|| panic!("B's INVITE has no audio SDP:\n{incoming}"));
    assert_eq!(
        relay_b.addr,
        Ipv4Addr::LOCALHOST,
        "B's INVITE must point at the relay:\n{incoming}"
    );
    assert!(
        (first..=last).contains(&relay_b.port),
        "B's INVITE offers port {}, outside the relay block {first}-{last}:\n{incoming}",
        relay_b.port
    );
    assert_ne!(
        relay_b.rtp_addr(),
        a_media,
        "A's SDP passed through unchanged:\n{incoming}"
    );
    assert!(
        relay_b.formats.contains(&PCMU) && relay_b.formats.contains(&PCMA),
        "B is offered PCMA next to A's PCMU, so the relay can transcode:\n{incoming}"
    );

    let b_dialog = b.answer(&incoming, &sdp_body(b_media, b_formats));
    let a_dialog = a.await_answer(&invite, WAIT).unwrap_or_else(|resp| {
        panic!(
            "A's call was not answered: {resp:?}\nA received:\n{}\nlog:\n{}",
            a.transcript(),
            daemon.log_text()
        )
    });
    b.await_ack(&b_dialog, WAIT)
        .unwrap_or_else(|| panic!("B got no ACK; B received:\n{}", b.transcript()));

    let relay_a = sdp_audio(&a_dialog.remote_sdp)
        .unwrap_or_else(|| panic!("A's 200 OK has no audio SDP:\n{}", a_dialog.remote_sdp));
    assert_eq!(
        relay_a.addr,
        Ipv4Addr::LOCALHOST,
        "A's 200 OK must point at the relay:\n{}",
        a_dialog.remote_sdp
    );
    assert!(
        (first..=last).contains(&relay_a.port),
        "A's 200 OK names port {}, outside the relay block {first}-{last}:\n{}",
        relay_a.port,
        a_dialog.remote_sdp
    );
    assert_ne!(
        relay_a.port, relay_b.port,
        "each leg has its own relay port"
    );
    assert_ne!(
        relay_a.rtp_addr(),
        b_media,
        "B's SDP passed through unchanged"
    );
    assert_eq!(
        relay_a.formats.first(),
        Some(&PCMU),
        "A offered only PCMU, so A's answer must be PCMU:\n{}",
        a_dialog.remote_sdp
    );
    Call {
        daemon,
        a,
        b,
        a_rtp,
        b_rtp,
        a_rtcp,
        b_rtcp,
        a_dialog,
        b_dialog,
        relay_a,
        relay_b,
    }
}

impl Call {
    /// A hangs up; B gets the BYE and answers it; A gets its 200.
    fn hang_up(&mut self) {
        let cseq = self.a.send_bye(&mut self.a_dialog);
        let bye = self.b.answer_bye(WAIT).unwrap_or_else(|| {
            panic!(
                "B got no BYE; B received:\n{}\nlog:\n{}",
                self.b.transcript(),
                self.daemon.log_text()
            )
        });
        assert_eq!(
            header_value(&bye, "Call-ID").as_deref(),
            Some(self.b_dialog.call_id.as_str()),
            "{bye}"
        );
        let ok = self
            .a
            .await_final(&self.a_dialog.call_id, cseq, "BYE", WAIT)
            .unwrap_or_else(|| panic!("no answer to A's BYE:\n{}", self.a.transcript()));
        assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    }

    /// The `media` object of the only call in `calls --json`, once `ready` holds for it.
    fn media_when(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        eventually(STATS_WAIT, || {
            let calls = self.daemon.calls();
            let media = calls.first()?.get("media")?.clone();
            ready(&media).then_some(media)
        })
        .unwrap_or_else(|| {
            panic!(
                "relay stats never showed {what}; calls: {:?}\nlog:\n{}",
                self.daemon.calls(),
                self.daemon.log_text()
            )
        })
    }
}

fn local(sock: &UdpSocket) -> SocketAddr {
    sock.local_addr().expect("socket has a local address")
}

/// A counter of one leg (`"a"` or `"b"`) in a call's `media` object.
fn counter(media: &Value, leg: &str, name: &str) -> u64 {
    media[leg][name].as_u64().unwrap_or(0)
}

/// 160 bytes (20 ms of G.711) that differ for every packet and cover all byte values.
fn payload(seq: u16) -> Vec<u8> {
    (0..160u16)
        .map(|i| {
            i.wrapping_mul(37)
                .wrapping_add(seq.wrapping_mul(11))
                .to_le_bytes()[0]
        })
        .collect()
}

/// Sends `count` RTP packets from `sock` to `to` (seq `first_seq`.., 160 timestamp units
/// apart, [`PACING`] apart in time); returns the payloads sent.
fn send_stream(
    sock: &UdpSocket,
    to: SocketAddr,
    pt: u8,
    first_seq: u16,
    count: u16,
    ssrc: u32,
) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let seq = first_seq.wrapping_add(i);
            let body = payload(seq);
            let packet = rtp_packet(pt, seq, u32::from(seq).wrapping_mul(160), ssrc, &body);
            sock.send_to(&packet, to).expect("send RTP");
            thread::sleep(PACING);
            body
        })
        .collect()
}

/// Up to `count` RTP packets arriving on `sock` within `wait`, with their sources; panics
/// on a datagram that is not RTP.
fn receive_rtp(sock: &UdpSocket, count: usize, wait: Duration) -> Vec<(SocketAddr, RtpView)> {
    recv_datagrams(sock, count, wait)
        .into_iter()
        .map(|(src, bytes)| {
            let packet = parse_rtp(&bytes)
                .unwrap_or_else(|| panic!("non-RTP datagram from {src}: {bytes:02x?}"));
            (src, packet)
        })
        .collect()
}

/// Asserts that `sock` receives nothing within [`QUIET`].
fn assert_silent(sock: &UdpSocket, what: &str) {
    let got = recv_datagrams(sock, 1, QUIET);
    assert!(got.is_empty(), "{what}: got {got:02x?}");
}

/// Checks a received stream: `expected.len()` packets from `relay`, with payload type `pt`
/// and the expected payloads in order.
fn assert_stream(got: &[(SocketAddr, RtpView)], relay: SocketAddr, pt: u8, expected: &[Vec<u8>]) {
    assert_eq!(
        got.len(),
        expected.len(),
        "packets relayed on loopback (none may be lost)"
    );
    for (i, ((src, packet), want)) in got.iter().zip(expected).enumerate() {
        assert_eq!(
            *src, relay,
            "packet {i} must come from the relay port the phone was given"
        );
        assert_eq!(packet.pt, pt, "payload type of packet {i}");
        assert_eq!(&packet.payload, want, "payload of packet {i}");
    }
}

#[test]
fn audio_is_relayed_byte_for_byte_both_ways() {
    let mut call = establish(DaemonConfig::loopback(), &[PCMU, TELEPHONE_EVENT]);

    let sent = send_stream(&call.a_rtp, call.relay_a.rtp_addr(), PCMU, 1000, 50, 0xA0A0);
    let got = receive_rtp(&call.b_rtp, 50, WAIT);
    assert_stream(&got, call.relay_b.rtp_addr(), PCMU, &sent);

    let sent = send_stream(&call.b_rtp, call.relay_b.rtp_addr(), PCMU, 5000, 50, 0xB0B0);
    let got = receive_rtp(&call.a_rtp, 50, WAIT);
    assert_stream(&got, call.relay_a.rtp_addr(), PCMU, &sent);

    let media = call.media_when("50 packets each way", |m| {
        ["a", "b"]
            .iter()
            .all(|leg| counter(m, leg, "packets_in") >= 50 && counter(m, leg, "packets_out") >= 50)
    });
    assert_eq!(json_str(&media, "codec_a"), Some("PCMU"), "{media}");
    assert_eq!(json_str(&media, "codec_b"), Some("PCMU"), "{media}");
    assert_eq!(counter(&media, "a", "packets_in"), 50, "{media}");
    assert_eq!(counter(&media, "b", "packets_out"), 50, "{media}");
    assert_eq!(counter(&media, "b", "packets_in"), 50, "{media}");
    assert_eq!(counter(&media, "a", "packets_out"), 50, "{media}");
    assert_eq!(counter(&media, "a", "bytes_in"), 50 * 172, "{media}");
    assert_eq!(counter(&media, "a", "lost"), 0, "{media}");
    assert_eq!(counter(&media, "a", "dropped"), 0, "{media}");
    let a_latched = local(&call.a_rtp).to_string();
    let b_latched = local(&call.b_rtp).to_string();
    assert_eq!(
        json_str(&media["a"], "latched"),
        Some(a_latched.as_str()),
        "{media}"
    );
    assert_eq!(
        json_str(&media["b"], "latched"),
        Some(b_latched.as_str()),
        "{media}"
    );

    call.hang_up();
    let cdrs = call.daemon.wait_cdrs(1, WAIT);
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("answered"),
        "{cdrs:?}"
    );
    let calls = call.daemon.calls();
    assert!(calls.is_empty(), "no call left: {calls:?}");
}

#[test]
fn pcmu_caller_and_pcma_callee_are_transcoded() {
    let mut call = establish(DaemonConfig::loopback(), &[PCMA]);
    assert!(
        call.relay_a
            .formats
            .iter()
            .all(|pt| [PCMU, TELEPHONE_EVENT].contains(pt)),
        "A's answer may only hold what A offered: {:?}",
        call.relay_a.formats
    );

    let sent = send_stream(&call.a_rtp, call.relay_a.rtp_addr(), PCMU, 1, 20, 0xA1);
    let as_alaw: Vec<Vec<u8>> = sent
        .iter()
        .map(|p| p.iter().map(|&u| ulaw_to_alaw(u)).collect())
        .collect();
    let got = receive_rtp(&call.b_rtp, 20, WAIT);
    assert_stream(&got, call.relay_b.rtp_addr(), PCMA, &as_alaw);

    let sent = send_stream(&call.b_rtp, call.relay_b.rtp_addr(), PCMA, 700, 20, 0xB1);
    let as_ulaw: Vec<Vec<u8>> = sent
        .iter()
        .map(|p| p.iter().map(|&a| alaw_to_ulaw(a)).collect())
        .collect();
    let got = receive_rtp(&call.a_rtp, 20, WAIT);
    assert_stream(&got, call.relay_a.rtp_addr(), PCMU, &as_ulaw);

    let media = call.media_when("20 packets each way", |m| {
        counter(m, "a", "packets_in") >= 20 && counter(m, "b", "packets_in") >= 20
    });
    assert_eq!(json_str(&media, "codec_a"), Some("PCMU"), "{media}");
    assert_eq!(json_str(&media, "codec_b"), Some("PCMA"), "{media}");
    call.hang_up();
}

#[test]
fn a_stranger_cannot_inject_audio() {
    let mut call = establish(DaemonConfig::loopback(), &[PCMU, TELEPHONE_EVENT]);
    let relay = call.relay_a.rtp_addr();
    // 127.0.0.2 is neither A's SDP address nor A's signalling address.
    let far = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind 127.0.0.2");
    // Same IP as A, other port: refused once A has latched and keeps talking.
    let near = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind stranger");

    send_stream(&far, relay, PCMU, 1, 5, 0x5757);
    assert_silent(&call.b_rtp, "B received a stranger's RTP before A latched");

    let mut sent = Vec::new();
    for i in 0..10u16 {
        sent.extend(send_stream(&call.a_rtp, relay, PCMU, 100 + i, 1, 0xA2));
        send_stream(&near, relay, PCMU, 900 + i, 1, 0x5758);
        send_stream(&far, relay, PCMU, 950 + i, 1, 0x5759);
    }
    let got = receive_rtp(&call.b_rtp, 30, Duration::from_secs(1));
    assert!(
        got.iter().all(|(_, p)| p.ssrc == 0xA2),
        "a stranger's packet reached B: {:?}",
        got.iter().map(|(_, p)| p.ssrc).collect::<Vec<_>>()
    );
    assert_stream(&got, call.relay_b.rtp_addr(), PCMU, &sent);

    let media = call.media_when("25 packets dropped on leg a", |m| {
        counter(m, "a", "dropped") >= 25
    });
    assert_eq!(counter(&media, "a", "dropped"), 25, "{media}");
    assert_eq!(counter(&media, "a", "packets_in"), 10, "{media}");
    assert_eq!(counter(&media, "b", "packets_out"), 10, "{media}");
    let a_latched = local(&call.a_rtp).to_string();
    assert_eq!(
        json_str(&media["a"], "latched"),
        Some(a_latched.as_str()),
        "{media}"
    );
    call.hang_up();
}

#[test]
fn the_relay_relatches_after_a_nat_rebinding() {
    let mut call = establish(DaemonConfig::loopback(), &[PCMU, TELEPHONE_EVENT]);
    let relay_a = call.relay_a.rtp_addr();
    let relay_b = call.relay_b.rtp_addr();

    let before = send_stream(&call.a_rtp, relay_a, PCMU, 1, 10, 0xA3);
    assert_stream(&receive_rtp(&call.b_rtp, 10, WAIT), relay_b, PCMU, &before);
    let replies = send_stream(&call.b_rtp, relay_b, PCMU, 300, 3, 0xB3);
    assert_stream(&receive_rtp(&call.a_rtp, 3, WAIT), relay_a, PCMU, &replies);

    // The NAT in front of A forgets its mapping: A's RTP now comes from a new port.
    thread::sleep(Duration::from_millis(1500));
    let rebound = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind rebound socket");
    let after = send_stream(&rebound, relay_a, PCMU, 11, 10, 0xA3);
    assert_stream(&receive_rtp(&call.b_rtp, 10, WAIT), relay_b, PCMU, &after);

    let replies = send_stream(&call.b_rtp, relay_b, PCMU, 303, 10, 0xB3);
    assert_stream(&receive_rtp(&rebound, 10, WAIT), relay_a, PCMU, &replies);
    assert_silent(&call.a_rtp, "B's audio still goes to A's old port");

    let rebound_addr = local(&rebound).to_string();
    let media = call.media_when("the latch on A's new port", |m| {
        json_str(&m["a"], "latched") == Some(rebound_addr.as_str())
    });
    assert_eq!(counter(&media, "a", "packets_in"), 20, "{media}");
    assert_eq!(counter(&media, "a", "lost"), 0, "{media}");
    call.hang_up();
}

#[test]
fn a_silent_call_is_hung_up_on_both_legs_with_media_timeout() {
    let mut config = DaemonConfig::loopback();
    config.media_timeout_secs = 5;
    let call = establish(config, &[PCMU, TELEPHONE_EVENT]);
    let mut a = call.a;
    let mut b = call.b;

    let sent = send_stream(&call.a_rtp, call.relay_a.rtp_addr(), PCMU, 1, 5, 0xA4);
    assert_stream(
        &receive_rtp(&call.b_rtp, 5, WAIT),
        call.relay_b.rtp_addr(),
        PCMU,
        &sent,
    );
    let sent = send_stream(&call.b_rtp, call.relay_b.rtp_addr(), PCMU, 1, 5, 0xB4);
    assert_stream(
        &receive_rtp(&call.a_rtp, 5, WAIT),
        call.relay_a.rtp_addr(),
        PCMU,
        &sent,
    );
    let silent_since = Instant::now();

    // Generous upper bound: CI machines are loaded; the lower bound is what matters.
    let bye_a = a.answer_bye(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "A got no BYE within 15 s of silence; A received:\n{}\nlog:\n{}",
            a.transcript(),
            call.daemon.log_text()
        )
    });
    let after = silent_since.elapsed();
    assert!(
        (Duration::from_millis(4_500)..=Duration::from_millis(14_000)).contains(&after),
        "BYE {after:?} after the last packet with a 5 s media timeout"
    );
    assert_eq!(
        header_value(&bye_a, "Call-ID").as_deref(),
        Some(call.a_dialog.call_id.as_str()),
        "{bye_a}"
    );
    let bye_b = b
        .answer_bye(Duration::from_secs(2))
        .unwrap_or_else(|| panic!("B got no BYE; B received:\n{}", b.transcript()));
    assert_eq!(
        header_value(&bye_b, "Call-ID").as_deref(),
        Some(call.b_dialog.call_id.as_str()),
        "{bye_b}"
    );

    let cdrs = call.daemon.wait_cdrs(1, WAIT);
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("media_timeout"),
        "{cdrs:?}"
    );
    assert!(!cdrs[0]["answer"].is_null(), "{cdrs:?}");
    let calls = call.daemon.calls();
    assert!(calls.is_empty(), "no call left: {calls:?}");
}

/// Deterministic pseudo-random bytes (xorshift) with the RTP version bits cleared.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect();
    bytes[0] &= 0x3f;
    bytes
}

/// An RTCP receiver report from `ssrc` with one block: `lost` cumulative, jitter 80 units.
fn receiver_report(ssrc: u32, lost: u32) -> Vec<u8> {
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&ssrc.to_be_bytes());
    rr.extend_from_slice(&0x0000_B0B0u32.to_be_bytes()); // reportee SSRC
    rr.extend_from_slice(&lost.to_be_bytes()); // fraction lost 0, cumulative lost
    rr.extend_from_slice(&1_000u32.to_be_bytes()); // highest sequence number
    rr.extend_from_slice(&80u32.to_be_bytes()); // jitter: 10 ms at 8 kHz
    rr.extend_from_slice(&[0; 8]); // LSR, DLSR
    rr
}

#[test]
fn hostile_datagrams_on_the_relay_ports_are_dropped() {
    let mut call = establish(DaemonConfig::loopback(), &[PCMU, TELEPHONE_EVENT]);
    let relay_a = call.relay_a.rtp_addr();
    let relay_b = call.relay_b.rtp_addr();
    let sent = send_stream(&call.a_rtp, relay_a, PCMU, 1, 1, 0xA5);
    assert_stream(&receive_rtp(&call.b_rtp, 1, WAIT), relay_b, PCMU, &sent);

    // From A's own (latched) address, so only the packets' shape can get them dropped.
    let mut version_1 = rtp_packet(PCMU, 2, 320, 0xA5, &payload(2));
    version_1[0] = 0x40;
    let mut rtcp_garbage = vec![0x81, 201, 0x00, 0x40];
    rtcp_garbage.extend_from_slice(&garbage(8));
    let hostile: [(&str, &UdpSocket, SocketAddr, Vec<u8>); 5] = [
        ("empty datagram", &call.a_rtp, relay_a, Vec::new()),
        (
            "truncated RTP",
            &call.a_rtp,
            relay_a,
            vec![0x80, PCMU, 0, 3, 0],
        ),
        ("version-1 RTP", &call.a_rtp, relay_a, version_1),
        ("1500 bytes of garbage", &call.a_rtp, relay_a, garbage(1500)),
        (
            "RTCP with a length past its end",
            &call.a_rtcp,
            call.relay_a.rtcp_addr(),
            rtcp_garbage,
        ),
    ];
    for (what, from, to, bytes) in &hostile {
        from.send_to(bytes, *to)
            .unwrap_or_else(|e| panic!("send {what}: {e}"));
    }
    assert_silent(&call.b_rtp, "hostile datagrams forwarded to B's RTP port");
    assert_silent(&call.b_rtcp, "hostile datagrams forwarded to B's RTCP port");
    assert!(
        options_ok(call.daemon.sip_addr(), Transport::Udp),
        "the daemon stopped answering OPTIONS"
    );

    let sent = send_stream(&call.a_rtp, relay_a, PCMU, 3, 5, 0xA5);
    assert_stream(&receive_rtp(&call.b_rtp, 5, WAIT), relay_b, PCMU, &sent);
    let sent = send_stream(&call.b_rtp, relay_b, PCMU, 40, 5, 0xB5);
    assert_stream(&receive_rtp(&call.a_rtp, 5, WAIT), relay_a, PCMU, &sent);
    let rr = receiver_report(0xA5, 3);
    call.a_rtcp
        .send_to(&rr, call.relay_a.rtcp_addr())
        .expect("send RTCP");
    let got = recv_datagrams(&call.b_rtcp, 1, WAIT);
    assert_eq!(
        got.first().map(|(_, bytes)| bytes),
        Some(&rr),
        "a well-formed receiver report reaches B's RTCP port"
    );

    let media = call.media_when("the hostile datagrams counted as dropped", |m| {
        counter(m, "a", "dropped") >= 5 && m["a"]["rtcp_lost"].as_u64().is_some()
    });
    assert_eq!(counter(&media, "a", "dropped"), 5, "{media}");
    assert_eq!(counter(&media, "a", "packets_in"), 6, "{media}");
    assert_eq!(media["a"]["rtcp_lost"].as_u64(), Some(3), "{media}");
    assert_eq!(
        media["a"]["rtcp_jitter_us"].as_u64(),
        Some(10_000),
        "{media}"
    );
    call.hang_up();
}
