//! Runs the SDP fuzz seed corpus (`fuzz/corpus/sdp_parse`) through parse, emit and the
//! offer/answer helpers. `valid_*` files are real phones' SDPs: they must parse, emit
//! byte-identical (CRLF) and survive anchoring; `bad_*` files must fail with their specific
//! error. Nothing may panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use pbx_core::media::sdp::{
    answer_for_a, choose, is_hold, offer_for_b, reject_all, OriginState, Sdp, SdpError, MAX_SDP,
};
use pbx_core::media::session::Codec;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sdp_parse")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory exists")
        .map(|e| {
            let path = e.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("readable corpus file"))
        })
        .collect();
    files.sort();
    files
}

fn valid(name: &str) -> Sdp {
    let bytes = std::fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Sdp::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Everything the B2BUA does with an SDP, on both sides of a call: must not panic, and
/// every body it emits must parse again.
fn exercise(name: &str, sdp: &Sdp) {
    let _ = is_hold(sdp);
    let _ = sdp.remote_rtp();
    for i in 0..sdp.media.len() {
        let _ = sdp.media_direction(i);
        let m = &sdp.media[i];
        let _ = m.telephone_event_pt();
        for pt in m.payload_types() {
            let _ = (m.rtpmap(pt), m.codec_of(pt));
        }
    }
    let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let mut to_b = offer_for_b(sdp);
    to_b.anchor(v6, 40000, &mut OriginState::new(1));
    let _ = choose(sdp, &to_b);
    let (mut back, _, _) = answer_for_a(sdp, sdp);
    back.anchor(v4, 30000, &mut OriginState::new(2));
    for out in [to_b, back, reject_all(sdp)] {
        let bytes = out.emit();
        if bytes.len() <= MAX_SDP {
            assert_eq!(
                Sdp::parse(&bytes).as_ref(),
                Ok(&out),
                "{name}: output re-parses"
            );
        }
    }
}

#[test]
fn whole_corpus_is_handled_without_panic() {
    let files = corpus();
    assert!(files.len() >= 30, "corpus has {} files", files.len());
    for (name, bytes) in &files {
        match Sdp::parse(bytes) {
            Ok(sdp) => {
                assert!(name.starts_with("valid_"), "{name} parsed but should not");
                let emitted = sdp.emit();
                assert_eq!(
                    Sdp::parse(&emitted).as_ref(),
                    Ok(&sdp),
                    "{name}: round trip"
                );
                exercise(name, &sdp);
            }
            Err(e) => assert!(name.starts_with("bad_"), "{name} rejected: {e}"),
        }
    }
}

#[test]
fn valid_sdps_emit_byte_identical_with_crlf() {
    for (name, bytes) in corpus().iter().filter(|(n, _)| n.starts_with("valid_")) {
        let sdp = Sdp::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let crlf = if bytes.windows(2).any(|w| w == b"\r\n") {
            bytes.clone()
        } else {
            String::from_utf8_lossy(bytes)
                .replace('\n', "\r\n")
                .into_bytes()
        };
        assert_eq!(
            String::from_utf8_lossy(&sdp.emit()),
            String::from_utf8_lossy(&crlf),
            "{name}"
        );
    }
}

#[test]
fn bad_sdps_fail_with_their_specific_error() {
    let expected = [
        ("bad_300_attributes.sdp", SdpError::TooManyAttributes),
        ("bad_65_media.sdp", SdpError::TooManyMedia),
        ("bad_cr_only.sdp", SdpError::BadLineEnd(1)),
        (
            "bad_crlf_injection_in_attribute.sdp",
            SdpError::BadLineEnd(7),
        ),
        ("bad_duplicate_origin.sdp", SdpError::Misplaced(6)),
        ("bad_empty.sdp", SdpError::BadVersion),
        ("bad_huge_ttl.sdp", SdpError::BadConnection(4)),
        ("bad_ip4_with_ipv6_literal.sdp", SdpError::BadConnection(4)),
        ("bad_latin1.sdp", SdpError::BadText(3)),
        ("bad_media_no_proto.sdp", SdpError::BadMedia(6)),
        ("bad_missing_origin.sdp", SdpError::MissingOrigin),
        ("bad_missing_session_name.sdp", SdpError::MissingSessionName),
        ("bad_missing_v.sdp", SdpError::BadVersion),
        ("bad_negative_port.sdp", SdpError::BadMedia(6)),
        ("bad_nul_byte.sdp", SdpError::BadText(7)),
        ("bad_origin_short.sdp", SdpError::BadOrigin(2)),
        ("bad_port_70000.sdp", SdpError::BadMedia(6)),
        ("bad_time_in_media.sdp", SdpError::Misplaced(7)),
        ("bad_too_large_10k.sdp", SdpError::TooLarge),
        ("bad_unknown_type.sdp", SdpError::UnknownType(6)),
        ("bad_version_1.sdp", SdpError::BadVersion),
    ];
    for (name, err) in expected {
        let bytes =
            std::fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Sdp::parse(&bytes), Err(err), "{name}");
    }
    let garbage = std::fs::read(corpus_dir().join("bad_binary_garbage.sdp")).expect("file");
    assert!(Sdp::parse(&garbage).is_err());
}

#[test]
fn phones_sdps_mean_what_the_phone_meant() {
    let linphone = valid("valid_linphone_ice.sdp");
    let (_, audio) = linphone.audio().expect("audio");
    assert_eq!(audio.telephone_event_pt(), Some(100));
    assert_eq!(
        linphone.remote_rtp(),
        Some("192.168.1.20:7078".parse().expect("addr"))
    );

    assert!(is_hold(&valid("valid_cisco_spa_hold_sendonly.sdp")));
    assert!(is_hold(&valid("valid_old_hold_zero_addr.sdp")));
    assert!(!is_hold(&valid("valid_yealink_t46.sdp")));
    assert!(is_hold(&valid("valid_answer_video_rejected.sdp"))); // session-level inactive

    let v6 = valid("valid_linphone_ipv6.sdp");
    assert_eq!(
        v6.remote_rtp(),
        Some("[2001:db8:85a3::8a2e:370:7334]:7078".parse().expect("addr"))
    );
    let (_, m) = v6.audio().expect("audio");
    assert_eq!((m.codec_of(0), m.codec_of(8)), (Codec::Pcmu, Codec::Pcma));

    let t38 = valid("valid_t38_reinvite.sdp");
    assert!(t38.audio().is_none());
    assert_eq!(t38.remote_rtp(), None);
}

#[test]
fn sipp_call_through_the_relay_transcodes_pcmu_to_pcma() {
    // SIPp's default offer is PCMU only; the callee (FreeSWITCH here) speaks only PCMA.
    let offer_a = valid("valid_sipp_default.sdp");
    let mut to_b = offer_for_b(&offer_a);
    assert_eq!(to_b.media[0].formats, vec!["0", "8"]);
    let relay = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let mut origin_b = OriginState::new(10);
    to_b.anchor(relay, 40000, &mut origin_b);

    let answer_b = valid("valid_freeswitch.sdp");
    assert_eq!(choose(&answer_b, &to_b), Some((Codec::Pcma, 8, None)));
    let (mut back, codec, pt) = answer_for_a(&answer_b, &offer_a);
    assert_eq!((codec, pt), (Codec::Pcmu, 0));
    let mut origin_a = OriginState::new(20);
    back.anchor(relay, 30000, &mut origin_a);
    let text = String::from_utf8(back.emit()).expect("utf-8");
    assert!(text.contains("m=audio 30000 RTP/AVP 0\r\n"), "{text}");
    assert!(text.contains("a=rtpmap:0 PCMU/8000\r\n"));
    assert!(text.contains("a=rtcp:30001 IN IP4 203.0.113.1\r\n"));
    assert!(!text.contains("203.0.113.20") && !text.contains("PCMA"));
}

#[test]
fn webrtc_offer_loses_ice_and_bundle_when_anchored() {
    let mut sdp = valid("valid_webrtc_chrome.sdp");
    sdp.anchor(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
        30000,
        &mut OriginState::new(5),
    );
    let text = String::from_utf8(sdp.emit()).expect("utf-8");
    for gone in ["ice-", "candidate", "rtcp-mux", "BUNDLE", "0.0.0.0"] {
        assert!(!text.contains(gone), "{gone} left in {text}");
    }
    assert!(text.contains("a=rtcp:30001 IN IP4 203.0.113.1\r\n"));
    assert!(!is_hold(&sdp));
}
