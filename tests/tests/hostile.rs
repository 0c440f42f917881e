//! Hostile input over UDP and TCP: every malformed message gets a 400 (when it is a
//! recognisable request) or nothing, and the daemon keeps serving: a valid OPTIONS
//! afterwards still gets 200.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use outpost_tests::{
    options_ok, sip_request, status_of, udp_client, udp_exchange, Daemon, SipTcp, Transport,
};

const WAIT: Duration = Duration::from_millis(1500);

/// One hostile message, built for a given local address (for the Via).
struct Case {
    name: &'static str,
    build: fn(SocketAddr, Transport) -> Vec<u8>,
    /// Statuses acceptable besides silence.
    allowed: &'static [u16],
}

fn options(local: SocketAddr, transport: Transport, call_id: &str) -> String {
    sip_request("OPTIONS", "sip:127.0.0.1", transport, local, call_id, "")
}

fn truncated(local: SocketAddr, t: Transport) -> Vec<u8> {
    let full = sip_request("INVITE", "sip:100@127.0.0.1", t, local, "trunc@test", "");
    full.as_bytes()[..full.len() / 2].to_vec()
}

fn oversized(local: SocketAddr, t: Transport) -> Vec<u8> {
    let padding = "a".repeat(20 * 1024);
    sip_request(
        "OPTIONS",
        "sip:127.0.0.1",
        t,
        local,
        "big@test",
        &format!("X-Padding: {padding}\r\n"),
    )
    .into_bytes()
}

fn garbage(_: SocketAddr, _: Transport) -> Vec<u8> {
    // Deterministic pseudo-random bytes (xorshift), with NULs and high bytes.
    let mut x: u32 = 0x9e37_79b9;
    (0..700)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn no_call_id(local: SocketAddr, t: Transport) -> Vec<u8> {
    options(local, t, "nocallid@test")
        .replace("Call-ID: nocallid@test\r\n", "")
        .into_bytes()
}

fn long_content_length(local: SocketAddr, t: Transport) -> Vec<u8> {
    options(local, t, "cl-long@test")
        .replace(
            "Content-Length: 0\r\n\r\n",
            "Content-Length: 500\r\n\r\nshort body",
        )
        .into_bytes()
}

fn negative_content_length(local: SocketAddr, t: Transport) -> Vec<u8> {
    options(local, t, "cl-neg@test")
        .replace("Content-Length: 0", "Content-Length: -5")
        .into_bytes()
}

fn garbage_content_length(local: SocketAddr, t: Transport) -> Vec<u8> {
    options(local, t, "cl-junk@test")
        .replace("Content-Length: 0", "Content-Length: 12abc")
        .into_bytes()
}

fn no_via(local: SocketAddr, t: Transport) -> Vec<u8> {
    let msg = options(local, t, "novia@test");
    let start = msg.find("Via:").expect("request has a Via");
    let end = start + msg[start..].find("\r\n").expect("line end") + 2;
    format!("{}{}", &msg[..start], &msg[end..]).into_bytes()
}

fn bad_request_line(local: SocketAddr, t: Transport) -> Vec<u8> {
    options(local, t, "badline@test")
        .replacen("OPTIONS sip:127.0.0.1 SIP/2.0", "OPTIONS  SIP/9.9 extra", 1)
        .into_bytes()
}

fn cseq_mismatch(local: SocketAddr, t: Transport) -> Vec<u8> {
    options(local, t, "cseq@test")
        .replace("CSeq: 1 OPTIONS", "CSeq: x INVITE")
        .into_bytes()
}

const CASES: &[Case] = &[
    Case {
        name: "truncated INVITE",
        build: truncated,
        allowed: &[400],
    },
    Case {
        name: "20 KiB OPTIONS",
        build: oversized,
        allowed: &[400, 513],
    },
    Case {
        name: "binary garbage",
        build: garbage,
        allowed: &[400],
    },
    Case {
        name: "missing Call-ID",
        build: no_call_id,
        allowed: &[400],
    },
    Case {
        name: "Content-Length larger than the body",
        build: long_content_length,
        allowed: &[400],
    },
    Case {
        name: "negative Content-Length",
        build: negative_content_length,
        allowed: &[400],
    },
    Case {
        name: "garbage Content-Length",
        build: garbage_content_length,
        allowed: &[400],
    },
    Case {
        name: "missing Via",
        build: no_via,
        allowed: &[400],
    },
    Case {
        name: "broken request line",
        build: bad_request_line,
        allowed: &[400],
    },
    Case {
        name: "CSeq method differs from the request method",
        build: cseq_mismatch,
        allowed: &[400],
    },
];

fn check_answer(case: &Case, answer: Option<&[u8]>, transport: Transport, daemon: &Daemon) {
    eprintln!(
        "{:<45} {transport:?}: {}",
        case.name,
        answer.map_or_else(
            || "no answer".to_owned(),
            |b| String::from_utf8_lossy(b)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        )
    );
    if let Some(bytes) = answer {
        let status = status_of(bytes);
        assert!(
            status.is_some_and(|s| case.allowed.contains(&s)),
            "{} over {transport:?}: expected {:?} or nothing, got:\n{}\nlog:\n{}",
            case.name,
            case.allowed,
            String::from_utf8_lossy(bytes),
            daemon.log_text()
        );
    }
}

#[test]
fn malformed_udp_datagrams_get_400_or_nothing_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start();
    for case in CASES {
        let sock = udp_client(daemon.sip_addr());
        let local = sock.local_addr().expect("local addr");
        let answer = udp_exchange(&sock, &(case.build)(local, Transport::Udp), WAIT);
        check_answer(case, answer.as_deref(), Transport::Udp, &daemon);
        assert!(
            options_ok(daemon.sip_addr(), Transport::Udp),
            "no 200 to OPTIONS after {} over UDP\nlog:\n{}",
            case.name,
            daemon.log_text()
        );
    }
}

#[test]
fn malformed_tcp_messages_get_400_or_nothing_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start();
    for case in CASES {
        let mut conn = SipTcp::connect(daemon.sip_addr()).expect("connect");
        let local = conn.stream.local_addr().expect("local addr");
        conn.send(&(case.build)(local, Transport::Tcp));
        let answer = conn.read_message(WAIT);
        check_answer(
            case,
            answer.as_ref().map(String::as_bytes),
            Transport::Tcp,
            &daemon,
        );
        drop(conn);
        assert!(
            options_ok(daemon.sip_addr(), Transport::Tcp),
            "no 200 to OPTIONS after {} over TCP\nlog:\n{}",
            case.name,
            daemon.log_text()
        );
    }
    assert!(options_ok(daemon.sip_addr(), Transport::Udp));
}

#[test]
fn tcp_stream_framing_two_messages_in_one_write_and_one_split_across_writes() {
    let daemon = Daemon::start();
    let mut conn = SipTcp::connect(daemon.sip_addr()).expect("connect");
    let local = conn.stream.local_addr().expect("local addr");

    // Two requests back to back in one write: two answers, in order.
    let first = options(local, Transport::Tcp, "pair-1@test");
    let second = options(local, Transport::Tcp, "pair-2@test");
    assert!(conn.send(format!("{first}{second}").as_bytes()));
    for call_id in ["pair-1@test", "pair-2@test"] {
        let resp = conn
            .read_message(WAIT)
            .unwrap_or_else(|| panic!("no answer for {call_id}\nlog:\n{}", daemon.log_text()));
        assert_eq!(status_of(resp.as_bytes()), Some(200), "{resp}");
        assert!(resp.contains(call_id), "answers out of order: {resp}");
    }

    // One request split inside the start line, a header and the final CRLF.
    let split = options(local, Transport::Tcp, "split@test");
    let bytes = split.as_bytes();
    for piece in [
        &bytes[..5],
        &bytes[5..40],
        &bytes[40..bytes.len() - 1],
        &bytes[bytes.len() - 1..],
    ] {
        assert!(conn.send(piece));
        thread::sleep(Duration::from_millis(100));
    }
    let resp = conn
        .read_message(WAIT)
        .expect("answer to the split request");
    assert_eq!(status_of(resp.as_bytes()), Some(200), "{resp}");
    assert!(resp.contains("split@test"), "{resp}");

    // A request with a body split from its headers (Content-Length framing).
    let body = "v=0\r\n";
    let with_body = options(local, Transport::Tcp, "body@test").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    );
    assert!(conn.send(with_body.as_bytes()));
    thread::sleep(Duration::from_millis(200));
    assert!(conn.send(body.as_bytes()));
    let resp = conn
        .read_message(WAIT)
        .expect("answer once the body arrived");
    assert!(resp.contains("body@test"), "{resp}");
    assert_eq!(status_of(resp.as_bytes()), Some(200), "{resp}");
}

#[test]
fn a_flood_of_garbage_does_not_stop_service() {
    let daemon = Daemon::start();
    let sock = udp_client(daemon.sip_addr());
    let local = sock.local_addr().expect("local addr");
    for i in 0..200u32 {
        let payload = match i % 4 {
            0 => garbage(local, Transport::Udp),
            1 => truncated(local, Transport::Udp),
            2 => negative_content_length(local, Transport::Udp),
            _ => Vec::new(),
        };
        let _ = sock.send(&payload);
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        options_ok(daemon.sip_addr(), Transport::Udp),
        "log:\n{}",
        daemon.log_text()
    );
    assert!(options_ok(daemon.sip_addr(), Transport::Tcp));
}
