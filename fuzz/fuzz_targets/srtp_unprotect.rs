//! Fuzzes SRTP/SRTCP unprotect with a fixed key: no input may panic, a failed packet must
//! leave the buffer's length alone, and whatever unprotects must be no longer than the
//! input and protect again (for RTP, a fresh sender produces the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::media::srtp::{SrtpContext, Suite, MAX_TRAILER};

/// The key of the seed corpus (`fuzz/corpus/srtp_unprotect`): bytes 0, 1, 2, ... 29.
fn key() -> [u8; 30] {
    std::array::from_fn(|i| i as u8)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let suite = if selector & 1 == 0 {
        Suite::AesCm128HmacSha1_80
    } else {
        Suite::AesCm128HmacSha1_32
    };
    let rtcp = selector & 2 != 0;
    let mut ctx = SrtpContext::new(suite, &key());
    // The same packet twice: the second time it must be refused as a replay or fail again.
    for round in 0..2 {
        let mut buf = packet.to_vec();
        let result = if rtcp {
            ctx.unprotect_rtcp(&mut buf)
        } else {
            ctx.unprotect_rtp(&mut buf)
        };
        let Ok(n) = result else {
            continue;
        };
        assert_eq!(round, 0, "a packet was accepted twice");
        assert!(n < packet.len());
        let mut again = buf[..n].to_vec();
        again.resize(n + MAX_TRAILER, 0);
        let mut sender = SrtpContext::new(suite, &key());
        let m = if rtcp {
            sender.protect_rtcp(&mut again, n)
        } else {
            sender.protect_rtp(&mut again, n)
        }
        .expect("an unprotected packet protects again");
        if !rtcp {
            assert_eq!(&again[..m], packet, "RTP protection is deterministic");
        }
    }
});
