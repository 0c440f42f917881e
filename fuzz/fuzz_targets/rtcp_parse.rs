//! Fuzzes compound RTCP iteration and `summarize`: no input may panic, every accepted packet
//! lies inside the buffer, an error ends the iteration, and `summarize` succeeds exactly
//! when the whole compound is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::media::rtcp::{summarize, RtcpIter, RtcpKind};

fuzz_target!(|data: &[u8]| {
    let mut consumed = 0usize;
    let mut failed = false;
    let mut first_block = None;
    for item in RtcpIter::new(data) {
        assert!(!failed, "iteration continues after an error");
        match item {
            Ok(packet) => {
                assert_eq!(packet.version(), 2);
                assert!(packet.packet_len() >= 4 && packet.packet_len() % 4 == 0);
                assert_eq!(
                    packet.as_bytes(),
                    &data[consumed..consumed + packet.packet_len()]
                );
                consumed += packet.packet_len();
                let _ = (
                    packet.ssrc(),
                    packet.sender_info(),
                    packet.body(),
                    packet.padding(),
                );
                let blocks = packet.report_blocks().count();
                assert_eq!(blocks, packet.report_count());
                if matches!(
                    packet.kind(),
                    RtcpKind::SenderReport | RtcpKind::ReceiverReport
                ) {
                    first_block = first_block.or(packet.report_block(0));
                }
            }
            Err(_) => failed = true,
        }
    }
    match summarize(data) {
        Ok(summary) => {
            assert!(!failed && consumed == data.len());
            assert_eq!(summary.report, first_block);
            if let Some(block) = summary.report {
                assert_eq!(summary.cumulative_lost, Some(block.cumulative_lost));
            }
        }
        Err(_) => assert!(failed || data.is_empty()),
    }
});
