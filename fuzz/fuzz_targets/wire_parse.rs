//! Fuzzes `sip::wire::parse`: no input may panic; accepted messages must round-trip through
//! `emit`, and rejected requests may only produce a bounded error reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::sip::wire;

fuzz_target!(|data: &[u8]| {
    let _ = wire::is_keepalive(data);
    match wire::parse(data) {
        Ok(msg) => {
            let bytes = wire::emit(&msg);
            match wire::parse(&bytes) {
                Ok(again) => assert_eq!(again, msg, "parse(emit(parse(x))) == parse(x)"),
                // Emitting expands compact names and splits comma lists into lines, so an
                // input right at a limit may emit to something just over it.
                Err(
                    wire::WireError::TooLarge
                    | wire::WireError::TooManyVia
                    | wire::WireError::TooManyHeaders
                    | wire::WireError::HeaderTooLong,
                ) => {}
                Err(e) => panic!("emitted message does not parse: {e}"),
            }
        }
        Err(err) => {
            if let Some(reply) = wire::reply_to_malformed(data, &err) {
                assert!(reply.len() <= wire::MAX_MESSAGE);
                assert!(reply.starts_with(b"SIP/2.0 "));
            }
        }
    }
});
