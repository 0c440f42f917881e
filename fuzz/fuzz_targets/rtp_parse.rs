//! Fuzzes the RTP view and what the relay does with an accepted packet: no input may panic,
//! the header, payload and padding must tile the packet exactly, the setters must only
//! touch what they set, and DTMF, sequence and jitter tracking must swallow anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::media::dtmf::{event_digit, DtmfDetector, TelephoneEvent};
use pbx_core::media::g711;
use pbx_core::media::rtp::{looks_like_rtcp, JitterEstimator, RtpPacket, RtpRepr, SeqTracker};
use pbx_core::media::session::Codec;

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_rtcp(data);
    let Ok(packet) = RtpPacket::new_checked(data) else {
        return;
    };
    assert_eq!(packet.version(), 2);
    assert_eq!(
        packet.header_len() + packet.payload().len() + packet.padding_len(),
        data.len()
    );
    for i in 0..16 {
        assert_eq!(
            packet.csrc(i).is_some(),
            i < usize::from(packet.csrc_count())
        );
    }
    let _ = (packet.extension_profile(), packet.extension_data());
    let repr = RtpRepr::parse(&packet);

    let mut copy = data.to_vec();
    let mut writable = RtpPacket::new_checked(&mut copy[..]).expect("same bytes check again");
    writable.set_marker(!repr.marker);
    writable.set_payload_type(repr.payload_type ^ 0x7f);
    writable.set_sequence_number(repr.sequence_number.wrapping_add(1));
    writable.set_timestamp(repr.timestamp.wrapping_add(160));
    writable.set_ssrc(!repr.ssrc);
    g711::transcode(writable.payload_mut(), Codec::Pcmu, Codec::Pcma);
    let again = RtpPacket::new_checked(&copy[..]).expect("setters keep the packet valid");
    assert_eq!(again.header_len(), packet.header_len());
    assert_eq!(again.payload().len(), packet.payload().len());
    assert_eq!(
        again.sequence_number(),
        repr.sequence_number.wrapping_add(1)
    );

    let mut out = vec![0u8; data.len() + 12];
    let n = repr
        .emit(&mut out, packet.payload())
        .expect("buffer is large enough");
    let emitted = RtpPacket::new_checked(&out[..n]).expect("emitted packet is valid");
    assert_eq!(RtpRepr::parse(&emitted), repr);

    let mut seq = SeqTracker::new();
    let mut jitter = JitterEstimator::default();
    let mut dtmf = DtmfDetector::new();
    // Replay the packet's fields as a short stream, shifted by what the payload says.
    for (i, chunk) in packet.payload().chunks(4).take(64).enumerate() {
        let step = u16::from(chunk[0]);
        seq.update(repr.sequence_number.wrapping_add(step));
        jitter.update(
            i as u64 * 20_000,
            repr.timestamp.wrapping_add(u32::from(step) * 160),
        );
        if let Ok(ev) = TelephoneEvent::new_checked(chunk) {
            let _ = (event_digit(ev.event()), ev.volume(), ev.reserved());
        }
        if let Some((digit, _ms)) =
            dtmf.handle(repr.timestamp ^ u32::from(step), repr.marker, chunk)
        {
            assert!("0123456789*#ABCD".contains(digit));
        }
    }
    assert!(seq.lost() <= seq.expected());
    let _ = (jitter.jitter_us(), jitter.jitter_ts(), dtmf.flush());
});
