//! Load shedding at the inbound queue (docs/registrar.md "Overload"): a new request over UDP
//! that waited past the bound (250 ms) is dropped unanswered, and the client's
//! retransmission is served; responses and in-dialog requests are processed however late.
//!
//! The daemon is frozen with SIGSTOP while the phones send, so every datagram waits in the
//! socket buffer for a known time (the kernel's receive stamp counts that wait).

use std::net::UdpSocket;
use std::time::Duration;

use outpost_tests::{
    body_of, cseq_of, digest_authorization, header_value, json_str, register_request, sdp_body,
    send_signal, status_of, udp_client, udp_recv, Daemon, SipPhone, Transport,
};

const WAIT: Duration = Duration::from_secs(5);
/// Phones whose first REGISTER arrives while the daemon is frozen.
const PHONES: usize = 20;
/// How long the daemon stays frozen: the first copy then waited 1.5 s and the first
/// retransmission (sent at T1) 1 s, both far past the bound.
const FROZEN: Duration = Duration::from_millis(1_500);
const T1: Duration = Duration::from_millis(500);
const A: (&str, &str) = ("200", "shed-pw-200");
const B: (&str, &str) = ("201", "shed-pw-201");

/// SIGSTOPs the daemon; SIGCONT when dropped, so a failing assertion never leaves it frozen
/// (the harness's stop would wait on a process that cannot run).
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        assert!(send_signal(pid, "STOP"), "SIGSTOP outpostd");
        // The signal is delivered at once, but give the scheduler a moment to take it off
        // the CPU before anything is sent.
        std::thread::sleep(Duration::from_millis(50));
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        send_signal(self.0, "CONT");
    }
}

/// A counter of `outpostctl metrics --json`.
fn metric(daemon: &Daemon, name: &str) -> u64 {
    let m = daemon.ctl_json(&["metrics"]);
    m.get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("metric {name} in {m}"))
}

/// Every datagram `sock` receives within `wait`, as text.
fn drain(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(bytes) = udp_recv(sock, wait) {
        got.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    got
}

#[test]
fn stale_registers_are_shed_and_served_at_their_retransmission_while_calls_go_on() {
    let daemon = Daemon::start();
    let pid = daemon.pid().expect("pid");
    let exts: Vec<String> = (0..PHONES).map(|i| format!("{}", 300 + i)).collect();
    // One import, not an admin command per extension (that took most of the test's time).
    let mut csv = format!("{},{}\n{},{}\n", A.0, A.1, B.0, B.1);
    for ext in &exts {
        csv.push_str(&format!("{ext},shed-pw-{ext}\n"));
    }
    let csv_path = daemon.dir().join("shed-extensions.csv");
    std::fs::write(&csv_path, csv).expect("write csv");
    daemon.ctl_ok(&["ext", "import", csv_path.to_str().expect("utf-8 path")]);
    let server = daemon.sip_addr();

    // A call rings at B before the freeze; B's 200 OK will wait with the REGISTERs.
    let mut a = SipPhone::new(&daemon, A.0, A.1);
    let mut b = SipPhone::new(&daemon, B.0, B.1);
    a.register();
    b.register();
    let a_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
    let b_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
    let inv = a.invite(B.0, &sdp_body(a_rtp.local_addr().expect("addr"), &[0]));
    let invite = b
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("B got no INVITE:\n{}", b.transcript()));

    let phones: Vec<(UdpSocket, String, String)> = exts
        .iter()
        .enumerate()
        .map(|(i, ext)| {
            let sock = udp_client(server);
            let local = sock.local_addr().expect("addr");
            let call_id = format!("shed-{i}@test");
            let first = register_request(server, Transport::Udp, local, ext, &call_id);
            (sock, first, call_id)
        })
        .collect();

    {
        let frozen = Frozen::new(pid);
        let dialog_b = b.answer(&invite, &sdp_body(b_rtp.local_addr().expect("addr"), &[0]));
        for (sock, first, _) in &phones {
            sock.send(first.as_bytes()).expect("send REGISTER");
        }
        std::thread::sleep(T1);
        // The phones' first retransmission (Timer E at T1), byte for byte.
        for (sock, first, _) in &phones {
            sock.send(first.as_bytes()).expect("send REGISTER");
        }
        std::thread::sleep(FROZEN - T1);
        drop(frozen);
        // B's answer waited 1.5 s too: a response is processed however late, so B gets
        // the box's ACK and A the 200.
        b.await_ack(&dialog_b, WAIT)
            .unwrap_or_else(|| panic!("B got no ACK:\n{}", b.transcript()));
    }
    let mut dialog_a = a
        .await_answer(&inv, WAIT)
        .unwrap_or_else(|r| panic!("A's call was not answered: {r:?}\n{}", a.transcript()));

    // Nothing answered the two stale copies: no 401 went out for them.
    std::thread::sleep(Duration::from_millis(300));
    for (sock, _, call_id) in &phones {
        let got = drain(sock, Duration::from_millis(1));
        assert!(
            got.is_empty(),
            "{call_id}: the stale copies were answered:\n{}",
            got.join("\n---\n")
        );
    }
    assert_eq!(
        metric(&daemon, "sip_shed_stale_register"),
        2 * PHONES as u64
    );

    // The second retransmission (2·T1 later) is fresh: one 401, then the credentials get
    // the 200. No phone sees a second challenge.
    for (sock, first, _) in &phones {
        sock.send(first.as_bytes()).expect("send REGISTER");
    }
    for ((sock, first, call_id), ext) in phones.iter().zip(&exts) {
        let challenge = udp_recv(sock, WAIT)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|| panic!("{call_id}: no answer to the fresh copy"));
        assert_eq!(status_of(challenge.as_bytes()), Some(401), "{challenge}");
        let challenge = header_value(&challenge, "WWW-Authenticate").expect("401 has a challenge");
        let uri = format!("sip:{}", server.ip());
        let auth =
            digest_authorization(&challenge, "REGISTER", &uri, ext, &format!("shed-pw-{ext}"));
        let second = first
            .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
            .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
            .replace(
                "Content-Length: 0\r\n",
                &format!("Authorization: {auth}\r\nContent-Length: 0\r\n"),
            );
        sock.send(second.as_bytes()).expect("send REGISTER");
        // The next message is the 200: a second challenge for a late copy would come first.
        let ok = udp_recv(sock, WAIT)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|| panic!("{call_id}: no answer to the credentials"));
        assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
        assert_eq!(cseq_of(&ok).map(|c| c.0), Some(2), "{ok}");
    }
    // Nor does any arrive later.
    std::thread::sleep(Duration::from_millis(300));
    for (sock, _, call_id) in &phones {
        let got = drain(sock, Duration::from_millis(1));
        assert!(
            got.is_empty(),
            "{call_id}: more answers:\n{}",
            got.join("\n---\n")
        );
    }
    for ext in &exts {
        assert_eq!(daemon.registrations_of(ext).len(), 1, "{ext} is registered");
    }

    // A hangs up while the daemon is frozen: a stale in-dialog request is processed.
    let bye_cseq = {
        let _frozen = Frozen::new(pid);
        let cseq = a.send_bye(&mut dialog_a);
        std::thread::sleep(Duration::from_millis(600));
        cseq
    };
    b.answer_bye(WAIT)
        .unwrap_or_else(|| panic!("B got no BYE:\n{}", b.transcript()));
    let ok = a
        .await_final(&dialog_a.call_id, bye_cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("A's BYE was not answered:\n{}", a.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{}", body_of(&ok));
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("answered"),
        "{cdrs:?}"
    );

    // Only the 40 stale REGISTER copies were shed: B's late 200 and A's late BYE were not.
    assert_eq!(metric(&daemon, "sip_shed_stale"), 2 * PHONES as u64);
    assert_eq!(metric(&daemon, "sip_shed_stale_invite"), 0);
    let prometheus = daemon.ctl_ok(&["metrics"]);
    assert!(
        prometheus.contains(&format!("outpost_sip_shed_stale_total {}", 2 * PHONES)),
        "{prometheus}"
    );
}
