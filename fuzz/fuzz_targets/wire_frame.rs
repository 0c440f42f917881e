//! Fuzzes the stream framer: frames must make progress, stay within the buffer and the
//! message limit, and whatever they cut must be safe to parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::sip::wire::{self, Frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some(frame)) = wire::next_frame(buf) {
        let n = match frame {
            Frame::KeepAlive(n) => {
                assert!(wire::is_keepalive(&buf[..n]));
                n
            }
            Frame::Message(n) => {
                assert!(n <= wire::MAX_MESSAGE);
                let _ = wire::parse(&buf[..n]);
                n
            }
        };
        assert!(n > 0 && n <= buf.len());
        assert_eq!(wire::frame(buf), Ok(Some(n)));
        buf = &buf[n..];
    }
});
