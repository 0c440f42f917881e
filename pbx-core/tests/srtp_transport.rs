//! SDES keys only over a secure transport (RFC 4568 §8.3): an SRTP offer over UDP is
//! refused, a best-effort one answered plain, a phone reached over UDP never gets a key,
//! and over TLS SRTP is negotiated as before. `srtp_over_insecure` restores the old way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use pbx_core::endpoint::{EndpointConfig, MediaSettings};
use pbx_core::media::sdp::Sdp;
use pbx_core::sip::{Response, Transport};
use support::*;

const A_ADDR: &str = "192.168.1.10:5061";
const B_ADDR: &str = "192.168.1.20:5061";
const KEY_A: &str = "inline:YUJDZGVmZ2hpSktMbW9QUXJzVFVWd3l6MTIzNDU2";
const KEY_B: &str = "inline:QmJDZGVmZ2hpSktMbW9QUXJzVFVWd3l6MTIzNDU2";

fn anchored() -> EndpointConfig {
    let mut cfg = config();
    cfg.media = Some(MediaSettings {
        addrs: vec!["10.0.0.1".parse().unwrap()],
        port_first: 30000,
        port_last: 30007,
    });
    cfg
}

/// An SDP at `host:port` with profile `proto` and, if given, one crypto line with `key`.
fn sdp(host: &str, port: u16, proto: &str, key: Option<&str>) -> String {
    let crypto = key
        .map(|k| format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 {k}\r\n"))
        .unwrap_or_default();
    format!(
        "v=0\r\no=x 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
         m=audio {port} {proto} 0\r\n{crypto}a=sendrecv\r\n"
    )
}

fn offer_a(proto: &str) -> String {
    sdp("192.168.1.10", 4000, proto, Some(KEY_A))
}

/// (profile, number of crypto lines) of a body's audio stream.
fn audio(body: &[u8]) -> (String, usize) {
    let sdp = Sdp::parse(body).expect("valid SDP");
    let (_, m) = sdp.audio().expect("audio stream");
    (m.proto.clone(), m.cryptos().count())
}

/// A (over `ta`) calls B (registered over `tb`) offering `offer`; returns the Sim, the
/// INVITE B got (if any) and A's responses so far.
fn call(
    cfg: EndpointConfig,
    ta: Transport,
    tb: Transport,
    offer: &str,
) -> (
    Sim,
    Phone,
    Phone,
    Option<pbx_core::sip::Request>,
    Vec<Response>,
) {
    let mut sim = Sim::with_config(cfg);
    let mut a = Phone::over("100", A_ADDR, ta);
    let mut b = Phone::over("200", B_ADDR, tb);
    register(&mut sim, &mut a, 600);
    register(&mut sim, &mut b, 600);
    invite(&mut sim, &mut a, "200", offer);
    let to_a = sim.responses(a.addr);
    let inv = sim.requests(b.addr).into_iter().next();
    (sim, a, b, inv, to_a)
}

/// B answers `inv` with `body`; returns A's 200.
fn answer(
    sim: &mut Sim,
    a: &Phone,
    b: &Phone,
    inv: &pbx_core::sip::Request,
    body: &str,
) -> Response {
    let text = response(
        inv,
        200,
        Some("bt"),
        &[format!("Contact: {}", b.contact())],
        body,
    );
    sim.send_from(b.peer(), &text);
    sim.responses(a.addr)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200 to A")
}

#[test]
fn an_srtp_required_offer_over_udp_or_tcp_is_refused_with_488() {
    for t in [Transport::Udp, Transport::Tcp] {
        let (_, _, _, inv, to_a) = call(anchored(), t, Transport::Tls, &offer_a("RTP/SAVP"));
        assert!(inv.is_none(), "B must not ring: {inv:?}");
        let r = to_a
            .iter()
            .find(|r| r.status >= 300)
            .expect("a final answer");
        assert_eq!(r.status, 488, "{r:?}");
        let warning = r.headers.get("Warning").expect("a Warning header");
        assert!(
            warning.starts_with("399 ") && warning.contains("TLS"),
            "{warning}"
        );
    }
}

#[test]
fn a_best_effort_offer_over_udp_is_answered_plain_and_no_key_is_passed_on() {
    let (mut sim, a, b, inv, _) = call(
        anchored(),
        Transport::Udp,
        Transport::Tls,
        &offer_a("RTP/AVP"),
    );
    let inv = inv.expect("B rings");
    assert_eq!(audio(&inv.body), ("RTP/AVP".to_string(), 0));
    let ok = answer(
        &mut sim,
        &a,
        &b,
        &inv,
        &sdp("192.168.1.20", 5000, "RTP/AVP", None),
    );
    assert_eq!(audio(&ok.body), ("RTP/AVP".to_string(), 0));

    // Without anchoring the SDP passes through: it must lose the caller's key.
    let (_, _, _, inv, _) = call(
        config(),
        Transport::Udp,
        Transport::Udp,
        &offer_a("RTP/AVP"),
    );
    let body = String::from_utf8(inv.expect("B rings").body).unwrap();
    assert!(!body.contains("a=crypto"), "{body}");
}

#[test]
fn over_tls_srtp_is_negotiated_on_both_legs() {
    let (mut sim, a, b, inv, _) = call(
        anchored(),
        Transport::Tls,
        Transport::Tls,
        &offer_a("RTP/SAVP"),
    );
    let inv = inv.expect("B rings");
    let (proto, n) = audio(&inv.body);
    assert_eq!(proto, "RTP/SAVP");
    assert!(n >= 1, "B is offered our keys");
    let ok = answer(
        &mut sim,
        &a,
        &b,
        &inv,
        &sdp("192.168.1.20", 5000, "RTP/SAVP", Some(KEY_B)),
    );
    assert_eq!(audio(&ok.body), ("RTP/SAVP".to_string(), 1));
}

#[test]
fn a_callee_registered_over_udp_is_offered_plain_rtp_while_the_tls_caller_keeps_srtp() {
    let (mut sim, a, b, inv, _) = call(
        anchored(),
        Transport::Tls,
        Transport::Udp,
        &offer_a("RTP/SAVP"),
    );
    let inv = inv.expect("B rings");
    assert_eq!(
        audio(&inv.body),
        ("RTP/AVP".to_string(), 0),
        "no key towards UDP"
    );
    let ok = answer(
        &mut sim,
        &a,
        &b,
        &inv,
        &sdp("192.168.1.20", 5000, "RTP/AVP", None),
    );
    assert_eq!(
        audio(&ok.body),
        ("RTP/SAVP".to_string(), 1),
        "A stays on SRTP"
    );
}

#[test]
fn srtp_over_insecure_restores_keys_over_udp() {
    let mut cfg = anchored();
    cfg.srtp_over_insecure = true;
    let (mut sim, a, b, inv, _) = call(cfg, Transport::Udp, Transport::Udp, &offer_a("RTP/SAVP"));
    let inv = inv.expect("B rings");
    let (proto, n) = audio(&inv.body);
    assert_eq!(proto, "RTP/SAVP");
    assert!(n >= 1);
    let ok = answer(
        &mut sim,
        &a,
        &b,
        &inv,
        &sdp("192.168.1.20", 5000, "RTP/SAVP", Some(KEY_B)),
    );
    assert_eq!(audio(&ok.body), ("RTP/SAVP".to_string(), 1));
}
