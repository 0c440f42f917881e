//! Micro-benchmarks of the call core that print figures (not run by CI):
//! `cargo bench -p pbx-core --bench core`.

use std::hint::black_box;
use std::time::Instant;

use pbx_core::sip::auth::{ha1, Algorithm};
use pbx_core::sip::wire::{emit_request, parse};
use pbx_core::sip::Message;

const REGISTER: &str = "REGISTER sip:outpost.local SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:100@outpost.local>\r\n\
From: <sip:100@outpost.local>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:100@192.0.2.10:5060;transport=udp>;expires=3600\r\n\
Authorization: Digest username=\"100\", realm=\"outpost\", nonce=\"AAABohjYFStH3YdvqjjZ3Yi2aFXvAEhqJVdgo_Fwz5A\", uri=\"sip:outpost.local\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Content-Length: 0\r\n\r\n";

fn measure(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let per = start.elapsed() / n;
    let rate = if per.as_nanos() > 0 {
        1_000_000_000 / per.as_nanos()
    } else {
        0
    };
    println!("{name:<40} {per:>10.2?}  ({rate}/s on one core)");
}

fn main() {
    measure("parse REGISTER", 50_000, || {
        black_box(parse(black_box(REGISTER.as_bytes())).is_ok());
    });
    let Ok(Message::Request(req)) = parse(REGISTER.as_bytes()) else {
        eprintln!("sample REGISTER does not parse");
        std::process::exit(1);
    };
    measure("emit REGISTER", 50_000, || {
        black_box(emit_request(black_box(&req)));
    });
    measure("HA1 MD5", 200_000, || {
        black_box(ha1(Algorithm::Md5, "100", "outpost", black_box("secret")));
    });
    measure("HA1 SHA-256", 200_000, || {
        black_box(ha1(
            Algorithm::Sha256,
            "100",
            "outpost",
            black_box("secret"),
        ));
    });
}
