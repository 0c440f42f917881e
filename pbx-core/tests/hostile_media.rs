//! Runs the media fuzz seed corpora (`fuzz/corpus/rtp_parse`, `fuzz/corpus/rtcp_parse`)
//! through the RTP, RTCP and DTMF views: nothing may panic, files named `ok_*` must be
//! accepted and `bad_*` rejected, and accepted packets must read back consistently.

use std::path::PathBuf;

use pbx_core::media::dtmf::{DtmfDetector, TelephoneEvent};
use pbx_core::media::g711;
use pbx_core::media::rtcp::{summarize, RtcpError, RtcpIter, RtcpPacket};
use pbx_core::media::rtp::{looks_like_rtcp, JitterEstimator, RtpPacket, RtpRepr, SeqTracker};
use pbx_core::media::session::Codec;

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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
    assert!(
        files.len() >= 12,
        "{name}: seed corpus has {} files",
        files.len()
    );
    files
}

/// Every view and tracker the relay would apply to a datagram on an RTP port.
fn run_rtp(bytes: &[u8]) -> bool {
    let _ = looks_like_rtcp(bytes);
    let Ok(p) = RtpPacket::new_checked(bytes) else {
        return false;
    };
    assert_eq!(
        p.header_len() + p.payload().len() + p.padding_len(),
        bytes.len()
    );
    for i in 0..16 {
        let _ = p.csrc(i);
    }
    let _ = (p.extension_profile(), p.extension_data());
    let repr = RtpRepr::parse(&p);
    let mut seq = SeqTracker::new();
    let mut jitter = JitterEstimator::default();
    seq.update(repr.sequence_number);
    jitter.update(0, repr.timestamp);
    let mut dtmf = DtmfDetector::new();
    let _ = dtmf.handle(repr.timestamp, repr.marker, p.payload());
    let _ = dtmf.flush();
    if let Ok(ev) = TelephoneEvent::new_checked(p.payload()) {
        let _ = (ev.event(), ev.end(), ev.volume(), ev.duration());
    }
    let mut copy = bytes.to_vec();
    let mut w = RtpPacket::new_checked(&mut copy[..]).expect("checked once already");
    g711::transcode(w.payload_mut(), Codec::Pcmu, Codec::Pcma);
    w.set_sequence_number(repr.sequence_number.wrapping_add(1));
    assert!(RtpPacket::new_checked(&copy[..]).is_ok());
    true
}

/// Every view the relay would apply to a datagram on an RTCP port; returns whether the
/// whole compound is acceptable.
fn run_rtcp(bytes: &[u8]) -> bool {
    let mut errors = 0;
    let mut total = 0;
    for item in RtcpIter::new(bytes) {
        match item {
            Ok(p) => {
                total += p.packet_len();
                let _ = (p.ssrc(), p.sender_info(), p.body(), p.kind(), p.count());
                assert_eq!(p.report_blocks().count(), p.report_count());
            }
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "iteration must stop after an error");
    let summary = summarize(bytes);
    assert_eq!(summary.is_ok(), errors == 0 && !bytes.is_empty());
    if summary.is_ok() {
        assert_eq!(total, bytes.len());
    }
    let _ = RtcpPacket::new_checked(bytes);
    summary.is_ok()
}

#[test]
fn rtp_corpus_is_handled_without_panic_and_as_named() {
    for (name, bytes) in corpus("rtp_parse") {
        let accepted = run_rtp(&bytes);
        if name.starts_with("ok_") {
            assert!(accepted, "{name} must be accepted");
            assert!(!looks_like_rtcp(&bytes), "{name} is RTP, not RTCP");
        } else if name.starts_with("bad_") {
            assert!(!accepted, "{name} must be rejected");
        } else if name.starts_with("mux_rtcp") {
            assert!(looks_like_rtcp(&bytes), "{name} must demultiplex as RTCP");
            assert!(run_rtcp(&bytes), "{name} is valid RTCP");
        }
        // Every prefix of a packet is hostile input too.
        for cut in 0..bytes.len() {
            run_rtp(&bytes[..cut]);
        }
    }
}

#[test]
fn rtcp_corpus_is_handled_without_panic_and_as_named() {
    for (name, bytes) in corpus("rtcp_parse") {
        let accepted = run_rtcp(&bytes);
        if name.starts_with("ok_") {
            assert!(accepted, "{name} must be accepted");
            assert!(looks_like_rtcp(&bytes), "{name} must demultiplex as RTCP");
        } else if name.starts_with("bad_") {
            assert!(!accepted, "{name} must be rejected");
        }
        for cut in 0..bytes.len() {
            run_rtcp(&bytes[..cut]);
        }
    }
}

#[test]
fn named_files_give_their_specific_outcome() {
    let rtp = corpus("rtp_parse");
    let get = |files: &[(String, Vec<u8>)], n: &str| {
        files
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    let p = get(&rtp, "ok_csrc_ext_pad.rtp");
    let p = RtpPacket::new_checked(&p[..]).expect("valid");
    assert_eq!(
        (p.csrc_count(), p.header_len(), p.padding_len()),
        (2, 32, 4)
    );
    assert_eq!(p.payload().len(), 160);

    let start = get(&rtp, "ok_dtmf_start_5.rtp");
    let end = get(&rtp, "ok_dtmf_end_5.rtp");
    let mut det = DtmfDetector::new();
    let mut digits = Vec::new();
    for bytes in [&start, &end, &end, &end] {
        let p = RtpPacket::new_checked(&bytes[..]).expect("valid");
        assert_eq!(p.payload_type(), 101);
        digits.extend(det.handle(p.timestamp(), p.marker(), p.payload()));
    }
    assert_eq!(digits, [('5', 120)]);

    let rtcp = corpus("rtcp_parse");
    let s = summarize(&get(&rtcp, "ok_sr_sdes.rtcp")).expect("valid");
    assert_eq!((s.cumulative_lost, s.jitter_us), (Some(17), Some(15_000)));
    let s = summarize(&get(&rtcp, "ok_rr_sdes_bye.rtcp")).expect("valid");
    assert_eq!((s.cumulative_lost, s.rtcp_lost()), (Some(-3), Some(0)));
    assert_eq!(
        summarize(&get(&rtcp, "bad_length_lie.rtcp")),
        Err(RtcpError::Length)
    );
    assert_eq!(
        summarize(&get(&rtcp, "bad_rc_overrun.rtcp")),
        Err(RtcpError::ReportOverrun)
    );
    assert_eq!(
        summarize(&get(&rtcp, "bad_garbage_tail.rtcp")),
        Err(RtcpError::Truncated)
    );
}
