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
            let again = wire::parse(&bytes).expect("emitted message must parse");
            assert_eq!(again, msg, "parse(emit(parse(x))) == parse(x)");
        }
        Err(err) => {
            if let Some(reply) = wire::reply_to_malformed(data, &err) {
                assert!(reply.len() <= wire::MAX_MESSAGE);
                assert!(reply.starts_with(b"SIP/2.0 "));
            }
        }
    }
});
