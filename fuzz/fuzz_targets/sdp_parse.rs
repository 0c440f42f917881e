//! Fuzzes `media::sdp`: no input may panic; accepted descriptions must round-trip through
//! `emit`, and what the B2BUA derives from them (anchoring, codec negotiation) must emit
//! bodies that parse again.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use pbx_core::media::sdp::{self, OriginState, Sdp, SdpError};

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = Sdp::parse(data) else {
        return;
    };
    let again = Sdp::parse(&sdp.emit());
    assert_eq!(
        again.as_ref(),
        Ok(&sdp),
        "parse(emit(parse(x))) == parse(x)"
    );

    let _ = (sdp::is_hold(&sdp), sdp.remote_rtp(), sdp.audio());
    let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let mut to_b = sdp::offer_for_b(&sdp);
    to_b.anchor(v6, 40000, &mut OriginState::new(1));
    let _ = sdp::choose(&sdp, &to_b);
    let (mut back, _, _) = sdp::answer_for_a(&sdp, &sdp);
    back.anchor(v4, 65534, &mut OriginState::new(u64::MAX));
    for out in [to_b, back, sdp::reject_all(&sdp)] {
        match Sdp::parse(&out.emit()) {
            Ok(parsed) => assert_eq!(parsed, out, "derived SDP round-trips"),
            // Anchoring may lengthen addresses or add a direction attribute: an input right
            // at a limit may produce output just over it.
            Err(SdpError::TooLarge | SdpError::TooManyAttributes) => {}
            Err(e) => panic!("derived SDP does not parse: {e}"),
        }
    }
});
