//! SRTP end to end (RFC 3711 with SDES keys, RFC 4568): two raw-UDP phones call each other
//! through outpostd, which terminates SRTP on each leg with keys of its own. What A
//! protects with its key reaches B protected with the key Outpost gave B; packets under a
//! wrong key never reach B; a callee answering plain RTP gets plain RTP while the caller
//! keeps SRTP. The phones signal over UDP, so these calls need `srtp_over_insecure`: by
//! default an SRTP offer over UDP is refused (RFC 4568 §8.3, keys only over TLS).

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use outpost_tests::{
    body_of, eventually, parse_rtp, recv_datagrams, rtp_packet, rtp_pair, sdp_audio, sdp_body,
    Daemon, DaemonConfig, Dialog, SdpAudio, SipPhone,
};
use pbx_core::media::sdp::Crypto;
use pbx_core::media::srtp::{SrtpContext, Suite, KEY_MATERIAL_LEN, MAX_TRAILER};

const PHONE_A: (&str, &str) = ("100", "phone-a-secret-100");
const PHONE_B: (&str, &str) = ("200", "phone-b-secret-200");
const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);
const PACING: Duration = Duration::from_millis(2);
const STATS_WAIT: Duration = Duration::from_secs(3);
const PCMU: u8 = 0;
const TELEPHONE_EVENT: u8 = 101;
const KEY_A: [u8; KEY_MATERIAL_LEN] = *b"phone A master key + its salt!";
const KEY_B: [u8; KEY_MATERIAL_LEN] = *b"phone B master key + its salt!";
const WRONG_KEY: [u8; KEY_MATERIAL_LEN] = [0x66; KEY_MATERIAL_LEN];

/// An answered call; `key_*_in` is the key Outpost gave the phone (what it receives with).
struct Call {
    daemon: Daemon,
    a_rtp: UdpSocket,
    b_rtp: UdpSocket,
    relay_a: SdpAudio,
    relay_b: SdpAudio,
    key_a_in: Option<Crypto>,
    key_b_in: Option<Crypto>,
    _dialogs: (SipPhone, SipPhone, Dialog, Dialog),
}

/// An SDP body for RTP at `rtp`: PCMU and telephone-event, SRTP with `crypto` if given.
fn body(rtp: SocketAddr, crypto: Option<&Crypto>) -> String {
    let plain = sdp_body(rtp, &[PCMU, TELEPHONE_EVENT]);
    match crypto {
        None => plain,
        Some(c) => plain.replace(" RTP/AVP ", " RTP/SAVP ").replace(
            "a=sendrecv\r\n",
            &format!("a={}\r\na=sendrecv\r\n", c.to_attribute()),
        ),
    }
}

fn crypto(tag: u32, suite: Suite, key: [u8; KEY_MATERIAL_LEN]) -> Crypto {
    Crypto { tag, suite, key }
}

/// The usable crypto lines of an SDP audio section.
fn cryptos(audio: &SdpAudio) -> Vec<Crypto> {
    audio
        .attributes
        .iter()
        .filter_map(|a| Crypto::parse_attr(a.strip_prefix("crypto:")?))
        .collect()
}

/// A (SRTP, `KEY_A`) calls B, which answers SRTP with `KEY_B` or, if `b_srtp` is false,
/// plain RTP/AVP.
fn establish(b_srtp: bool) -> Call {
    // The raw phones speak UDP only: allow keys over it, as the tests are about SRTP itself.
    let daemon =
        Daemon::start_with(DaemonConfig::loopback().with_media("srtp_over_insecure = true"));
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    let mut a = SipPhone::new(&daemon, PHONE_A.0, PHONE_A.1);
    let mut b = SipPhone::new(&daemon, PHONE_B.0, PHONE_B.1);
    a.register();
    b.register();
    let (a_rtp, _a_rtcp) = rtp_pair();
    let (b_rtp, _b_rtcp) = rtp_pair();

    let offer_a = crypto(7, Suite::AesCm128HmacSha1_80, KEY_A);
    let invite = a.invite(PHONE_B.0, &body(local(&a_rtp), Some(&offer_a)));
    let incoming = b
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("B got no INVITE:\n{}", daemon.log_text()));
    let sdp_b = body_of(&incoming);
    assert!(sdp_b.contains(" RTP/SAVP "), "B is offered SRTP:\n{sdp_b}");
    assert!(
        !sdp_b.contains(&offer_a.to_attribute().to_string()),
        "A's key must not reach B:\n{sdp_b}"
    );
    let relay_b = sdp_audio(sdp_b).expect("audio in B's INVITE");
    let offered_b = cryptos(&relay_b);
    let key_b_in = offered_b
        .iter()
        .find(|c| c.suite == Suite::AesCm128HmacSha1_80)
        .cloned()
        .unwrap_or_else(|| panic!("no AES_CM_128_HMAC_SHA1_80 line for B:\n{sdp_b}"));

    let answer_b = crypto(key_b_in.tag, key_b_in.suite, KEY_B);
    let b_body = body(local(&b_rtp), b_srtp.then_some(&answer_b));
    let b_dialog = b.answer(&incoming, &b_body);
    let a_dialog = a
        .await_answer(&invite, WAIT)
        .unwrap_or_else(|resp| panic!("A not answered: {resp:?}\nlog:\n{}", daemon.log_text()));
    b.await_ack(&b_dialog, WAIT).expect("B gets the ACK");

    assert!(
        a_dialog.remote_sdp.contains(" RTP/SAVP "),
        "A is answered with the profile it offered:\n{}",
        a_dialog.remote_sdp
    );
    let relay_a = sdp_audio(&a_dialog.remote_sdp).expect("audio in A's 200 OK");
    let answered_a = cryptos(&relay_a);
    assert_eq!(answered_a.len(), 1, "{}", a_dialog.remote_sdp);
    assert_eq!(
        (answered_a[0].tag, answered_a[0].suite),
        (offer_a.tag, offer_a.suite)
    );
    assert_ne!(
        answered_a[0].key, KEY_A,
        "Outpost answers with a key of its own"
    );
    assert_ne!(answered_a[0].key, KEY_B, "B's key must not reach A");
    Call {
        daemon,
        a_rtp,
        b_rtp,
        relay_a,
        relay_b,
        key_a_in: answered_a.first().cloned(),
        key_b_in: b_srtp.then_some(key_b_in),
        _dialogs: (a, b, a_dialog, b_dialog),
    }
}

fn local(sock: &UdpSocket) -> SocketAddr {
    sock.local_addr().expect("socket has a local address")
}

fn payload(seq: u16) -> Vec<u8> {
    (0..160u16)
        .map(|i| i.wrapping_mul(31).wrapping_add(seq).to_le_bytes()[0])
        .collect()
}

/// Sends `count` RTP packets (protected by `ctx` when given); returns the payloads.
fn send_stream(
    sock: &UdpSocket,
    to: SocketAddr,
    mut ctx: Option<&mut SrtpContext>,
    first_seq: u16,
    count: u16,
    ssrc: u32,
) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let seq = first_seq.wrapping_add(i);
            let body = payload(seq);
            let mut packet = rtp_packet(PCMU, seq, u32::from(seq) * 160, ssrc, &body);
            if let Some(ctx) = ctx.as_deref_mut() {
                let len = packet.len();
                packet.resize(len + MAX_TRAILER, 0);
                let n = ctx.protect_rtp(&mut packet, len).expect("protect");
                packet.truncate(n);
            }
            sock.send_to(&packet, to).expect("send RTP");
            thread::sleep(PACING);
            body
        })
        .collect()
}

/// Payloads of up to `count` packets arriving within `wait`, unprotected by `ctx` if given.
fn receive_payloads(
    sock: &UdpSocket,
    mut ctx: Option<&mut SrtpContext>,
    count: usize,
) -> Vec<Vec<u8>> {
    recv_datagrams(sock, count, WAIT)
        .into_iter()
        .map(|(src, mut bytes)| {
            if let Some(ctx) = ctx.as_deref_mut() {
                let n = ctx
                    .unprotect_rtp(&mut bytes)
                    .unwrap_or_else(|e| panic!("packet from {src} does not unprotect: {e}"));
                bytes.truncate(n);
            }
            parse_rtp(&bytes)
                .unwrap_or_else(|| panic!("non-RTP datagram from {src}: {bytes:02x?}"))
                .payload
        })
        .collect()
}

fn context(c: &Crypto) -> SrtpContext {
    SrtpContext::new(c.suite, &c.key)
}

#[test]
fn srtp_is_terminated_on_each_leg_and_payloads_arrive_intact() {
    let call = establish(true);
    let key_a_in = call.key_a_in.clone().expect("A's key from Outpost");
    let key_b_in = call.key_b_in.clone().expect("B's key from Outpost");

    let mut a_out = SrtpContext::new(Suite::AesCm128HmacSha1_80, &KEY_A);
    let sent = send_stream(
        &call.a_rtp,
        call.relay_a.rtp_addr(),
        Some(&mut a_out),
        100,
        30,
        0xA1,
    );
    let got = receive_payloads(&call.b_rtp, Some(&mut context(&key_b_in)), 30);
    assert_eq!(got, sent, "A -> B: every packet, payload intact");

    let mut b_out = SrtpContext::new(Suite::AesCm128HmacSha1_80, &KEY_B);
    let sent = send_stream(
        &call.b_rtp,
        call.relay_b.rtp_addr(),
        Some(&mut b_out),
        9000,
        30,
        0xB2,
    );
    let got = receive_payloads(&call.a_rtp, Some(&mut context(&key_a_in)), 30);
    assert_eq!(got, sent, "B -> A: every packet, payload intact");

    // Under a wrong key (from A's own address) nothing reaches B, and the relay counts it.
    let mut wrong = SrtpContext::new(Suite::AesCm128HmacSha1_80, &WRONG_KEY);
    send_stream(
        &call.a_rtp,
        call.relay_a.rtp_addr(),
        Some(&mut wrong),
        130,
        10,
        0xA1,
    );
    let leaked = recv_datagrams(&call.b_rtp, 1, QUIET);
    assert!(
        leaked.is_empty(),
        "forged SRTP was forwarded: {leaked:02x?}"
    );
    // Nor does plain RTP: an SRTP leg accepts only authenticated packets.
    send_stream(&call.a_rtp, call.relay_a.rtp_addr(), None, 140, 5, 0xA1);
    let leaked = recv_datagrams(&call.b_rtp, 1, QUIET);
    assert!(leaked.is_empty(), "plain RTP was forwarded: {leaked:02x?}");
    let dropped = eventually(STATS_WAIT, || {
        let calls = call.daemon.calls();
        let d = calls.first()?.get("media")?["a"]["dropped"].as_u64()?;
        (d >= 15).then_some(d)
    });
    assert!(
        dropped.is_some(),
        "leg A's dropped counter: {:?}",
        call.daemon.calls()
    );
}

#[test]
fn a_plain_answer_leaves_the_caller_on_srtp_and_the_callee_on_rtp() {
    let call = establish(false);
    let key_a_in = call.key_a_in.clone().expect("A's key from Outpost");
    assert!(
        !cryptos(&call.relay_b).is_empty(),
        "B was offered SRTP before it answered plain"
    );

    let mut a_out = SrtpContext::new(Suite::AesCm128HmacSha1_80, &KEY_A);
    let sent = send_stream(
        &call.a_rtp,
        call.relay_a.rtp_addr(),
        Some(&mut a_out),
        1,
        20,
        0xA1,
    );
    let got = receive_payloads(&call.b_rtp, None, 20);
    assert_eq!(got, sent, "A's SRTP reaches B as plain RTP");

    let sent = send_stream(&call.b_rtp, call.relay_b.rtp_addr(), None, 500, 20, 0xB2);
    let got = receive_payloads(&call.a_rtp, Some(&mut context(&key_a_in)), 20);
    assert_eq!(got, sent, "B's plain RTP reaches A as SRTP");
}

#[test]
fn an_srtp_offer_over_udp_is_refused_by_default() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    let mut a = SipPhone::new(&daemon, PHONE_A.0, PHONE_A.1);
    let mut b = SipPhone::new(&daemon, PHONE_B.0, PHONE_B.1);
    a.register();
    b.register();
    let (a_rtp, _a_rtcp) = rtp_pair();
    let offer = crypto(1, Suite::AesCm128HmacSha1_80, KEY_A);
    let invite = a.invite(PHONE_B.0, &body(local(&a_rtp), Some(&offer)));
    let refused = a
        .await_answer(&invite, WAIT)
        .err()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the SRTP offer over UDP was not refused:\n{}",
                daemon.log_text()
            )
        });
    assert!(refused.starts_with("SIP/2.0 488 "), "{refused}");
    let warning = outpost_tests::header_value(&refused, "Warning").unwrap_or_default();
    assert!(warning.contains("TLS"), "a Warning says why: {refused}");
    assert!(
        b.await_request("INVITE", QUIET).is_none(),
        "B must not ring"
    );
    assert!(
        daemon
            .log_text()
            .contains("SDES keys are only exchanged over TLS"),
        "the refusal is logged:\n{}",
        daemon.log_text()
    );
}
