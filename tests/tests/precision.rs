//! Precision: bytes are bytes, every recognisable request gets its precise answer, known
//! sources are not banned for mistakes, and rejections before a dialog keep no state.
//!
//! The firewall tests run `outpostd` in a `FwLab` appliance namespace with real nftables
//! (root, `ip`, `nft`; they fail saying so otherwise); the others on loopback. The RFC 4475
//! messages are `pbx-core/src/sip/testdata/rfc4475/` (also the wire parser's fuzz seeds).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use outpost_tests::{
    eventually, header_value, register_request, require_root, sdp_body, status_of, udp_client,
    udp_recv, workspace_root, Daemon, DaemonConfig, FwLab, SipPhone, Transport,
};

const PHONE_A: (&str, &str) = ("200", "phone-pass-200");
const PHONE_B: (&str, &str) = ("201", "phone-pass-201");
const ANSWER: Duration = Duration::from_secs(2);

/// A running appliance with its lab; the daemon stops before the namespaces go.
struct Site {
    daemon: Daemon,
    lab: FwLab,
}

fn site() -> Site {
    require_root("the firewall precision tests");
    let lab = FwLab::new();
    let daemon = Daemon::start_in(&lab.appliance, lab.daemon_config());
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    let installed = eventually(Duration::from_secs(5), || {
        lab.appliance.outpost_set("ban4").map(|_| ())
    });
    assert!(
        installed.is_some(),
        "no kernel table:\n{}",
        daemon.log_text()
    );
    Site { daemon, lab }
}

impl Site {
    fn phone(&self, ext: &str, password: &str) -> SipPhone {
        let sock = self.lab.phone_socket(self.lab.phone_ip().into());
        SipPhone::on_socket(sock, self.lab.sip_addr(), ext, password)
    }

    /// Asserts that nothing is banned: `fw bans`, the kernel's ban set and its drop counter.
    fn assert_nobody_banned(&self) {
        let bans = self.daemon.ctl_json(&["fw", "bans"]);
        let listed = match &bans {
            serde_json::Value::Array(items) => items.len(),
            serde_json::Value::Object(o) => o
                .get("bans")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len),
            _ => 0,
        };
        assert_eq!(
            listed,
            0,
            "fw bans: {bans}\nlog:\n{}",
            self.daemon.log_text()
        );
        let kernel = self.lab.appliance.outpost_set("ban4").unwrap_or_default();
        assert!(kernel.is_empty(), "kernel ban4: {kernel:?}");
        let dropped = self.lab.appliance.outpost_counter("banned");
        assert_eq!(dropped, Some(0), "kernel counter `banned`");
        println!("fw bans: 0, kernel ban4: empty, kernel `banned` counter: {dropped:?}");
    }
}

/// The first final (>= 200) answer on `sock` within `wait`.
fn final_answer(sock: &UdpSocket, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let bytes = udp_recv(sock, left)?;
        if status_of(&bytes).is_some_and(|s| s >= 200) {
            return Some(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
}

/// Drops whatever is queued on `sock`.
fn drain(sock: &UdpSocket) {
    while udp_recv(sock, Duration::from_millis(30)).is_some() {}
}

fn corpus(path: &str) -> Vec<u8> {
    let full: PathBuf = workspace_root()
        .join("pbx-core/src/sip/testdata")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn latin1_phone_registers_calls_and_is_never_banned() {
    let site = site();
    let mut caller = site
        .phone(PHONE_A.0, PHONE_A.1)
        .with_latin1_name("J\u{f6}rg");
    let mut callee = site.phone(PHONE_B.0, PHONE_B.1);
    // The Latin-1 REGISTER is answered (401, then 200), not dropped as malformed.
    caller.register();
    callee.register();
    site.daemon
        .wait_registered(PHONE_A.0, Duration::from_secs(5));

    // An unauthenticated Latin-1 REGISTER retransmitted per Timer E: every copy is
    // answered with the same challenge, and none of them counts against the source.
    let probe = register_request(
        site.lab.sip_addr(),
        Transport::Udp,
        caller.sip_addr(),
        PHONE_A.0,
        "latin1-retransmitted@test",
    );
    let raw = site.lab.phone_socket(site.lab.phone_ip().into());
    raw.connect(site.lab.sip_addr()).expect("connect");
    let wire = caller.wire_bytes(&probe);
    assert!(
        std::str::from_utf8(&wire).is_err(),
        "the probe is not UTF-8"
    );
    let mut answers = Vec::new();
    for gap in [0, 500, 1_000, 2_000] {
        thread::sleep(Duration::from_millis(gap));
        raw.send(&wire).expect("send");
        answers.push(final_answer(&raw, ANSWER).expect("every retransmission is answered"));
    }
    assert!(answers.iter().all(|a| status_of(a.as_bytes()) == Some(401)));
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "retransmissions get the same answer"
    );

    // The Latin-1 phone calls 201; the call is answered and hung up.
    let sdp_a = sdp_body(SocketAddr::new(site.lab.phone_ip().into(), 40_000), &[0]);
    let sdp_b = sdp_body(SocketAddr::new(site.lab.phone_ip().into(), 40_002), &[0]);
    let inv = caller.invite(PHONE_B.0, &sdp_a);
    let incoming = callee
        .await_request("INVITE", Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "no INVITE at 201; the caller got:\n{}\nlog:\n{}",
                caller.transcript(),
                site.daemon.log_text()
            )
        });
    let mut dialog = callee.answer(&incoming, &sdp_b);
    let mut caller_dialog = caller
        .await_answer(&inv, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("call not answered: {e:?}\n{}", caller.transcript()));
    callee.await_ack(&dialog, Duration::from_secs(5));
    caller.send_bye(&mut caller_dialog);
    assert!(callee.answer_bye(Duration::from_secs(5)).is_some());
    dialog.cseq += 1;
    let cdrs = site.daemon.wait_cdrs(1, Duration::from_secs(5));
    assert_eq!(
        cdrs[0].get("disposition").and_then(|d| d.as_str()),
        Some("answered"),
        "{cdrs:?}"
    );
    site.assert_nobody_banned();
}

/// Valid RFC 4475 §3.1.1 messages: the expected answer (`None`: a response, nothing to
/// answer). Each is answered as a valid message, never with 400.
const VALID: [(&str, Option<u16>); 13] = [
    ("wsinv", Some(481)),      // To tag, no such dialog
    ("intmeth", Some(501)),    // unknown method
    ("esc01", Some(407)),      // INVITE: challenge
    ("escnull", Some(401)),    // REGISTER: challenge
    ("esc02", Some(501)),      // RE%47IST%45R is not REGISTER
    ("lwsdisp", Some(200)),    // OPTIONS
    ("longreq", Some(407)),    // 34 Vias, long headers
    ("dblreq", Some(401)),     // the first of two requests in one datagram
    ("semiuri", Some(200)),    // OPTIONS
    ("transports", Some(200)), // OPTIONS
    ("mpart01", None),         // MESSAGE: any non-400 answer
    ("unreason", None),
    ("noreason", None),
];

/// Invalid RFC 4475 messages (§3.1.2, and §3.3 where the parser decides) with the precise
/// answer (`0`: a response, nothing to answer).
const INVALID: [(&str, u16); 25] = [
    ("badinv01", 400),
    ("clerr", 400),
    ("ncl", 400),
    ("scalar02", 400),
    ("scalarlg", 0),
    ("quotbal", 400),
    ("ltgtruri", 400),
    ("lwsruri", 400),
    ("lwsstart", 400),
    ("trws", 400),
    ("escruri", 400),
    ("regbadct", 400),
    ("badaspec", 400),
    ("baddn", 400),
    ("badvers", 505),
    ("mismatch01", 400),
    ("mismatch02", 400),
    ("bigcode", 0),
    ("insuf", 400),
    ("unkscm", 416),
    ("novelsc", 416),
    ("unksm2", 400),
    ("mcl01", 400),
    ("multi01", 400),
    ("zeromf", 483),
];

#[test]
fn rfc4475_corpus_gets_precise_answers_and_never_bans_an_authenticated_phone() {
    let site = site();
    let mut phone = site.phone(PHONE_A.0, PHONE_A.1);
    phone.register();
    let sock = site.lab.phone_socket(site.lab.phone_ip().into());
    sock.connect(site.lab.sip_addr()).expect("connect");
    let mut failures = Vec::new();
    // Paced below the flood rule (16 requests / 2 s): a phone's rate, not a flood.
    let pace = Duration::from_millis(160);
    for (name, expected) in VALID {
        drain(&sock);
        sock.send(&corpus(&format!("rfc4475/valid/{name}.sip")))
            .expect("send");
        let answer = final_answer(
            &sock,
            Duration::from_millis(if expected.is_some() { 1_500 } else { 400 }),
        );
        let status = answer.as_deref().and_then(|a| status_of(a.as_bytes()));
        let ok = match expected {
            Some(code) => status == Some(code),
            None => status != Some(400),
        };
        if !ok {
            failures.push(format!("valid {name}: wanted {expected:?}, got {answer:?}"));
        }
        if name == "intmeth" || name == "esc02" {
            let allow = answer.as_deref().and_then(|a| header_value(a, "Allow"));
            if allow.is_none() {
                failures.push(format!("{name}: 501 without Allow: {answer:?}"));
            }
        }
        thread::sleep(pace);
    }
    for (name, expected) in INVALID {
        drain(&sock);
        sock.send(&corpus(&format!("rfc4475/invalid/{name}.sip")))
            .expect("send");
        let wait = if expected == 0 { 400 } else { 1_500 };
        let answer = final_answer(&sock, Duration::from_millis(wait));
        let status = answer.as_deref().and_then(|a| status_of(a.as_bytes()));
        let want = (expected != 0).then_some(expected);
        if status != want {
            failures.push(format!("invalid {name}: wanted {want:?}, got {answer:?}"));
        }
        if expected == 400 {
            // The reason phrase names the problem: "Bad Request (<what>)".
            let first = answer
                .as_deref()
                .and_then(|a| a.lines().next())
                .unwrap_or("");
            if !first.contains("Bad Request (") {
                failures.push(format!("invalid {name}: reason names nothing: {first}"));
            }
        }
        thread::sleep(pace);
    }
    assert!(
        failures.is_empty(),
        "{}\nlog:\n{}",
        failures.join("\n"),
        site.daemon.log_text()
    );
    // The phone that sent all of it still works and nothing was banned.
    phone.register();
    site.assert_nobody_banned();
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// REGISTER with digest credentials for `ext` from `sock` (challenge, then credentials);
/// returns the final answer to the authenticated request.
fn register_with_auth(
    sock: &UdpSocket,
    server: SocketAddr,
    (ext, password): (&str, &str),
    call_id: &str,
) -> String {
    let local = sock.local_addr().expect("local");
    let first = register_request(server, Transport::Udp, local, ext, call_id);
    sock.send_to(first.as_bytes(), server).expect("send");
    let resp = final_answer(sock, ANSWER).expect("answered");
    assert_eq!(status_of(resp.as_bytes()), Some(401), "{resp}");
    let challenge = header_value(&resp, "WWW-Authenticate").expect("challenge");
    let auth = outpost_tests::digest_authorization(
        &challenge,
        "REGISTER",
        &format!("sip:{}", server.ip()),
        ext,
        password,
    );
    let second = first
        .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
        .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
        .replace(
            "Content-Length: 0\r\n",
            &format!("Authorization: {auth}\r\nContent-Length: 0\r\n"),
        );
    sock.send_to(second.as_bytes(), server).expect("send");
    final_answer(sock, ANSWER).expect("answered")
}

#[test]
fn transaction_cap_answers_503_with_retry_after_and_memory_stays_bounded() {
    // Below the calls the test's relay port block can anchor (each ringing call holds ports).
    const CAP: usize = 4;
    let daemon = Daemon::start_with(
        DaemonConfig::loopback().with_sip(&format!("max_server_transactions = {CAP}")),
    );
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    let server = daemon.sip_addr();
    let ip = server.ip();
    // The callee is registered at a socket nobody reads: its calls ring, unanswered.
    let callee = udp_client(server);
    let answer = register_with_auth(&callee, server, PHONE_B, "callee@test");
    assert_eq!(status_of(answer.as_bytes()), Some(200), "{answer}");
    let sock = udp_client(server);
    let local = sock.local_addr().expect("local");
    // Completed transactions do not count against the cap (they only keep their final
    // response to answer retransmissions): many more REGISTERs than the cap all succeed.
    for i in 0..100 {
        let answer = register_with_auth(&sock, server, PHONE_A, &format!("done{i}@test"));
        assert_eq!(
            status_of(answer.as_bytes()),
            Some(200),
            "REGISTER {i}: {answer}"
        );
    }
    let pid = daemon.pid().expect("pid");
    let rss_before = rss_kib(pid);
    // Live (pending) ones do: each authenticated INVITE to the callee rings and keeps its
    // server transaction; the challenges before them leave none (stateless).
    let uri = format!("sip:{}@{ip}:{}", PHONE_B.0, server.port());
    let invite = |i: usize, cseq: u32, extra: &str| {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKcap{i}x{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{}@{ip}>;tag=cap{i}\r\nTo: <{uri}>\r\n\
             Call-ID: cap{i}@test\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{}@{local}>\r\n\
             {extra}Content-Length: 0\r\n\r\n",
            PHONE_A.0, PHONE_A.0
        )
    };
    let mut accepted = 0usize;
    let mut overload = None;
    for i in 0..(CAP + 10) {
        sock.send_to(invite(i, 1, "").as_bytes(), server)
            .expect("send");
        let resp = final_answer(&sock, ANSWER).expect("answered");
        match status_of(resp.as_bytes()) {
            Some(407) => {}
            Some(503) => {
                overload = Some(resp);
                break;
            }
            other => panic!("INVITE {i}: {other:?}\n{resp}"),
        }
        let challenge = header_value(&resp, "Proxy-Authenticate").expect("challenge");
        let auth =
            outpost_tests::digest_authorization(&challenge, "INVITE", &uri, PHONE_A.0, PHONE_A.1);
        let authed = invite(i, 2, &format!("Proxy-Authorization: {auth}\r\n"));
        sock.send_to(authed.as_bytes(), server).expect("send");
        let resp = udp_recv(&sock, ANSWER).expect("answered");
        match status_of(&resp) {
            Some(100..=199) => accepted += 1,
            Some(503) => {
                overload = Some(String::from_utf8_lossy(&resp).into_owned());
                break;
            }
            other => panic!(
                "INVITE {i} with credentials: {other:?}\n{}",
                String::from_utf8_lossy(&resp)
            ),
        }
    }
    let overload =
        overload.unwrap_or_else(|| panic!("no 503 after {accepted} ringing INVITEs (cap {CAP})"));
    assert!(
        (CAP - 2..=CAP).contains(&accepted),
        "{accepted} accepted before the cap of {CAP}: {overload}"
    );
    assert!(overload.contains("too many transactions"), "{overload}");
    let retry = header_value(&overload, "Retry-After").expect("503 carries Retry-After");
    assert!(retry.trim().parse::<u32>().is_ok_and(|s| s > 0), "{retry}");
    // A flood of new requests while full: every one answered 503, nothing kept.
    let start = Instant::now();
    for i in 0..2_000 {
        let msg = register_request(server, Transport::Udp, local, PHONE_A.0, &format!("f{i}@t"));
        sock.send_to(msg.as_bytes(), server).expect("send");
        if i % 50 == 49 {
            drain(&sock);
        }
    }
    drain(&sock);
    let probe = register_request(server, Transport::Udp, local, PHONE_A.0, "probe@t");
    sock.send_to(probe.as_bytes(), server).expect("send");
    let resp = final_answer(&sock, ANSWER).expect("still answering");
    assert_eq!(status_of(resp.as_bytes()), Some(503), "{resp}");
    let rss_after = rss_kib(pid);
    println!(
        "transaction cap {CAP}: {accepted} INVITEs ringing, then 503 (Retry-After: {}); \
         2,000 more requests in {:?}; outpostd VmRSS {rss_before} KiB -> {rss_after} KiB",
        retry.trim(),
        start.elapsed()
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn rejected_invite_is_answered_again_without_state() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    let server = daemon.sip_addr();
    let sock = udp_client(server);
    let local: SocketAddr = sock.local_addr().expect("local");
    let ip = server.ip();
    let uri = format!("sip:999@{ip}:{}", server.port());
    let invite = |branch: &str, cseq: u32, extra: &str| {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:200@{ip}>;tag=rej\r\nTo: <{uri}>\r\n\
             Call-ID: rejected@test\r\nCSeq: {cseq} INVITE\r\nContact: <sip:200@{local}>\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        )
    };
    sock.send_to(invite("z9hG4bKrej1", 1, "").as_bytes(), server)
        .expect("send");
    let challenge = final_answer(&sock, ANSWER).expect("challenged");
    assert_eq!(status_of(challenge.as_bytes()), Some(407), "{challenge}");
    let auth = outpost_tests::digest_authorization(
        &header_value(&challenge, "Proxy-Authenticate").expect("challenge"),
        "INVITE",
        &uri,
        PHONE_A.0,
        PHONE_A.1,
    );
    // Authenticated, to an extension that does not exist: 404 before any dialog.
    let authed = invite(
        "z9hG4bKrej2",
        2,
        &format!("Proxy-Authorization: {auth}\r\n"),
    );
    sock.send_to(authed.as_bytes(), server).expect("send");
    let first = final_answer(&sock, ANSWER).expect("answered");
    assert_eq!(status_of(first.as_bytes()), Some(404), "{first}");
    // No ACK yet: a stateful server would retransmit the 404 (Timer G: 0.5 s, 1.5 s, ...).
    let quiet = udp_recv(&sock, Duration::from_millis(2_200));
    assert!(
        quiet.is_none(),
        "the rejection was retransmitted, so transaction state was kept: {:?}",
        quiet.map(|q| String::from_utf8_lossy(&q).into_owned())
    );
    // The INVITE retransmitted (Timer A): the very same answer again, from no state.
    for _ in 0..3 {
        sock.send_to(authed.as_bytes(), server).expect("send");
        let again = final_answer(&sock, ANSWER).expect("answered again");
        assert_eq!(again, first, "the same 404");
    }
    let cdrs = daemon.wait_cdrs(1, Duration::from_secs(5));
    assert_eq!(
        cdrs.len(),
        1,
        "one failed call recorded, not four: {cdrs:?}"
    );
    let to = header_value(&first, "To").expect("To");
    let ack = authed
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 2 INVITE", "CSeq: 2 ACK")
        .replace(&format!("To: <{uri}>"), &format!("To: {to}"));
    sock.send_to(ack.as_bytes(), server).expect("send");
    assert!(
        udp_recv(&sock, Duration::from_millis(300)).is_none(),
        "the ACK is absorbed"
    );
}
