//! Runs the wire fuzz seed corpus (`fuzz/corpus/wire_parse`) through parse, frame, emit and
//! `reply_to_malformed`: nothing may panic, accepted messages must round-trip, and the named
//! RFC 4475-style files must produce their specific outcome.

use std::path::PathBuf;

use pbx_core::sip::wire::{
    self, emit, frame, is_keepalive, next_frame, parse, reply_to_malformed, Frame, WireError,
};
use pbx_core::sip::{Message, Method};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_parse")
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

fn file(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Drains a stream buffer with `next_frame` as the TCP driver would.
fn drain_stream(mut buf: &[u8]) {
    let mut steps = 0;
    while let Ok(Some(f)) = next_frame(buf) {
        let n = match f {
            Frame::KeepAlive(n) => {
                assert!(is_keepalive(&buf[..n]));
                n
            }
            Frame::Message(n) => {
                let _ = parse(&buf[..n]);
                n
            }
        };
        assert!(n > 0 && n <= buf.len(), "frame must make progress");
        assert_eq!(frame(buf), Ok(Some(n)));
        buf = &buf[n..];
        steps += 1;
        assert!(steps < 10_000);
    }
}

#[test]
fn whole_corpus_is_handled_without_panic() {
    let files = corpus();
    assert!(files.len() >= 30, "corpus has {} files", files.len());
    for (name, bytes) in &files {
        match parse(bytes) {
            Ok(msg) => {
                let again = parse(&emit(&msg))
                    .unwrap_or_else(|e| panic!("{name}: emitted form does not parse: {e}"));
                assert_eq!(again, msg, "{name}: round trip");
            }
            Err(e) => {
                assert!((400..=599).contains(&wire::error_status(&e)), "{name}");
                if let Some(reply) = reply_to_malformed(bytes, &e) {
                    // The reply echoes the sender's own (possibly broken) headers, so it
                    // need not parse; it must be a bounded, well-framed response.
                    assert!(reply.len() <= wire::MAX_MESSAGE, "{name}");
                    let head = format!("SIP/2.0 {} ", wire::error_status(&e));
                    assert!(reply.starts_with(head.as_bytes()), "{name}");
                    assert!(reply.ends_with(b"\r\nContent-Length: 0\r\n\r\n"), "{name}");
                    assert_eq!(
                        next_frame(&reply),
                        Ok(Some(Frame::Message(reply.len()))),
                        "{name}"
                    );
                }
            }
        }
        drain_stream(bytes);
        // Every prefix and a few bit flips must also be harmless.
        for cut in (0..bytes.len()).step_by(97) {
            let _ = parse(&bytes[..cut]);
            let _ = next_frame(&bytes[..cut]);
        }
        let mut flipped = bytes.clone();
        for i in (0..flipped.len()).step_by(13) {
            flipped[i] ^= 0x20;
        }
        if let Err(e) = parse(&flipped) {
            let _ = reply_to_malformed(&flipped, &e);
        }
    }
}

#[test]
fn valid_corpus_files_parse() {
    for name in [
        "register.sip",
        "latin1_header.sip",
        "too_many_via.sip",
        "register_auth.sip",
        "unregister_star.sip",
        "invite_sdp.sip",
        "response_200.sip",
        "response_401.sip",
        "noreason.sip",
        "unreason.sip",
        "wsinv.sip",
        "compact.sip",
        "bare_lf.sip",
        "intmeth.sip",
        "ipv6.sip",
        "lwsdisp.sip",
        "tel_contact.sip",
        "dblreq.sip",
        "crlf_prefix.sip",
        "via_nested_quotes.sip",
        "binary_body.sip",
    ] {
        assert!(
            parse(&file(name)).is_ok(),
            "{name}: {:?}",
            parse(&file(name))
        );
    }
    let Ok(Message::Request(r)) = parse(&file("intmeth.sip")) else {
        panic!("intmeth.sip")
    };
    assert_eq!(r.method, Method::Other("NEWMETHOD".into()));
    let Ok(Message::Request(r)) = parse(&file("dblreq.sip")) else {
        panic!("dblreq.sip")
    };
    assert_eq!(r.method, Method::Register);
    let Ok(Message::Request(r)) = parse(&file("binary_body.sip")) else {
        panic!("binary_body.sip")
    };
    assert_eq!(r.body, b"\x00\xff\x00\xff\r\n\r\n");
}

#[test]
fn named_hostile_files_fail_as_expected() {
    use WireError::*;
    let cases: &[(&str, WireError, Option<u16>)] = &[
        ("oversized.sip", BodyTooLarge, Some(413)),
        ("no_callid.sip", MissingHeader("Call-ID"), Some(400)),
        ("badvers.sip", Version, Some(505)),
        ("unkscm.sip", UnsupportedScheme, Some(416)),
        ("novelsc.sip", UnsupportedScheme, Some(416)),
        ("longuri.sip", UriTooLong, Some(414)),
        ("ltgtruri.sip", Malformed("Request-URI"), Some(400)),
        ("lwsstart.sip", Malformed("Request-URI"), Some(400)),
        ("trws.sip", Malformed("SIP version"), Some(400)),
        ("escruri.sip", Malformed("Request-URI"), Some(400)),
        ("ipv6_bad.sip", Malformed("Request-URI"), Some(400)),
        ("clerr.sip", BadContentLength, Some(400)),
        ("ncl.sip", BadContentLength, Some(400)),
        ("scalarlg.sip", BadHeader("Max-Forwards"), Some(400)),
        ("quotbal.sip", BadHeader("From"), Some(400)),
        ("baddn.sip", BadHeader("From"), Some(400)),
        ("mismatch01.sip", CSeqMismatch, Some(400)),
        ("toomany_headers.sip", TooManyHeaders, Some(400)),
        ("header_too_long.sip", HeaderTooLong, Some(400)),
        // Cut inside the To line: answered on the complete lines before it.
        ("truncated.sip", Incomplete, Some(400)),
        ("bigcode.sip", Malformed("status code"), None),
        ("garbage.bin", Incomplete, None),
        // The line with the control character is not copied; the rest is answered.
        (
            "nul_in_header.sip",
            Malformed("control character in header"),
            Some(400),
        ),
        (
            "crlf_injection.sip",
            Malformed("control character in header"),
            Some(400),
        ),
        (
            "folded_first.sip",
            Malformed("continuation line without header"),
            Some(400),
        ),
        ("empty.sip", Malformed("empty message"), None),
        ("keepalive.sip", Malformed("empty message"), None),
    ];
    for (name, expected, status) in cases {
        let bytes = file(name);
        let e = parse(&bytes).expect_err(name);
        assert_eq!(&e, expected, "{name}");
        let reply = reply_to_malformed(&bytes, &e);
        match (status, reply) {
            (None, None) => {}
            (Some(code), Some(reply)) => {
                let head = format!("SIP/2.0 {code} ");
                assert!(
                    reply.starts_with(head.as_bytes()),
                    "{name}: {}",
                    String::from_utf8_lossy(&reply)
                );
                let text = String::from_utf8_lossy(&reply);
                // These lack (or hide behind a control character) a header the reply
                // would copy: it is answered on what is there.
                let partial =
                    ["no_callid.sip", "crlf_injection.sip", "truncated.sip"].contains(name);
                assert!(
                    partial || text.contains("\r\nCall-ID: 3848276298220188511@192.0.2.10\r\n"),
                    "{name}"
                );
                assert!(
                    partial || text.contains("\r\nTo: <sip:200@pbx.example.com>;tag="),
                    "{name}"
                );
                if code == &400 {
                    assert!(text.contains(&e.to_string()), "{name}: reason names it");
                }
                if let Ok(Message::Response(r)) = parse(&reply) {
                    assert_eq!(r.status, *code, "{name}");
                    assert!(r.headers.to.tag().is_some(), "{name}");
                }
            }
            (want, got) => panic!(
                "{name}: wanted reply {want:?}, got {:?}",
                got.map(|g| String::from_utf8_lossy(&g).into_owned())
            ),
        }
    }
    assert!(is_keepalive(&file("keepalive.sip")));
}

#[test]
fn stream_framing_of_corpus_messages() {
    // Content-Length-bearing messages framed back to back with keep-alives between them.
    let mut stream = Vec::new();
    for name in ["register.sip", "invite_sdp.sip", "response_401.sip"] {
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(&file(name));
    }
    let mut buf = stream.as_slice();
    let mut messages = 0;
    while let Some(f) = next_frame(buf).expect("frames") {
        match f {
            Frame::KeepAlive(n) => buf = &buf[n..],
            Frame::Message(n) => {
                parse(&buf[..n]).expect("framed message parses");
                messages += 1;
                buf = &buf[n..];
            }
        }
    }
    assert_eq!(messages, 3);
    assert!(buf.is_empty());
    // Streams need Content-Length (RFC 3261 §18.3); compact.sip uses `l:` and frames fine.
    assert!(matches!(
        next_frame(&file("compact.sip")),
        Ok(Some(Frame::Message(_)))
    ));
    assert_eq!(
        next_frame(&file("oversized.sip")),
        Err(WireError::BodyTooLarge)
    );
}
