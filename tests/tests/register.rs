//! Registration over SIPp and raw sockets: digest auth, wrong passwords, unknown users,
//! unregistration, TCP and IPv6.

use std::net::SocketAddr;
use std::time::Duration;

use outpost_tests::{
    challenge_param, digest_authorization, has_ipv6_loopback, header_count, header_values,
    json_str, register_request, status_of, udp_client, udp_exchange, Daemon, DaemonConfig, SipTcp,
    Sipp, Transport,
};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn register_with_digest_auth_creates_a_binding_from_the_phones_address() {
    let daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    let sipp = Sipp::new("register.xml", &daemon).account("100", "secret-100");
    let port = sipp.port();
    let outcome = sipp.run();
    outcome.assert_success("register");

    let statuses = outcome.received_statuses();
    assert_eq!(statuses.first(), Some(&401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");

    let reg = daemon.wait_registered("100", WAIT);
    assert_eq!(
        json_str(&reg, "source"),
        Some(format!("127.0.0.1:{port}").as_str()),
        "{reg}"
    );
    assert_eq!(json_str(&reg, "transport"), Some("UDP"), "{reg}");
    let contact = json_str(&reg, "contact").expect("contact is a string");
    assert!(contact.contains(&format!("127.0.0.1:{port}")), "{reg}");
    let expires = reg["expires_in_secs"]
        .as_u64()
        .expect("expires_in_secs is a number");
    assert!(
        (250..=300).contains(&expires),
        "granted 300 s, listed {expires}: {reg}"
    );
    assert_eq!(
        json_str(&reg, "user_agent"),
        Some("SIPp outpost-tests"),
        "{reg}"
    );
}

/// The challenges of the 401 to a first REGISTER for 100.
fn challenges_of(daemon: &Daemon) -> Vec<String> {
    let sock = udp_client(daemon.sip_addr());
    let local = sock.local_addr().expect("local addr");
    let req = register_request(daemon.sip_addr(), Transport::Udp, local, "100", "c1@test");
    let resp = udp_exchange(&sock, req.as_bytes(), WAIT).expect("a response to REGISTER");
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), Some(401), "{text}");
    let challenges = header_values(&text, "WWW-Authenticate");
    for c in &challenges {
        assert!(c.starts_with("Digest "), "{c}");
        assert!(c.contains("realm=\"outpost\""), "{c}");
        assert!(c.contains("qop=\"auth\""), "{c}");
        assert!(c.contains("nonce=\""), "{c}");
    }
    challenges
}

#[test]
fn the_401_offers_md5_alone_by_default() {
    // Debian 12's baresip 1.0 gives up on a 401 that carries any SHA-256 challenge.
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    daemon.add_extension("100", "secret-100");
    let challenges = challenges_of(&daemon);
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(challenges[0].contains("algorithm=MD5"), "{challenges:?}");
}

#[test]
fn with_sha256_configured_the_401_offers_sha256_then_md5_with_qop_auth() {
    let daemon = Daemon::start_with(DaemonConfig::loopback().digest(&["SHA-256", "MD5"]));
    daemon.add_extension("100", "secret-100");
    let challenges = challenges_of(&daemon);
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    assert!(
        challenges[0].contains("algorithm=SHA-256"),
        "{challenges:?}"
    );
    assert!(challenges[1].contains("algorithm=MD5"), "{challenges:?}");
}

/// REGISTER over raw UDP answering the challenge for `algorithm` with our own digest code.
fn register_answering(daemon: &Daemon, algorithm: &str, password: &str) -> (Option<u16>, String) {
    register_answering_with(daemon, algorithm, password, 300)
}

/// As `register_answering`, asking for `expires` seconds.
fn register_answering_with(
    daemon: &Daemon,
    algorithm: &str,
    password: &str,
    expires: u32,
) -> (Option<u16>, String) {
    let sock = udp_client(daemon.sip_addr());
    let local = sock.local_addr().expect("local addr");
    let call_id = format!("{algorithm}-{password}@test");
    let first = register_request(daemon.sip_addr(), Transport::Udp, local, "100", &call_id)
        .replace("Expires: 300\r\n", &format!("Expires: {expires}\r\n"));
    let resp = udp_exchange(&sock, first.as_bytes(), WAIT).expect("a 401");
    let text = String::from_utf8_lossy(&resp).into_owned();
    assert_eq!(status_of(&resp), Some(401), "{text}");
    let challenge = header_values(&text, "WWW-Authenticate")
        .into_iter()
        .find(|c| challenge_param(c, "algorithm").as_deref() == Some(algorithm))
        .unwrap_or_else(|| panic!("no {algorithm} challenge in {text}"));
    let uri = format!("sip:{}", daemon.sip_addr().ip());
    let authorization = digest_authorization(&challenge, "REGISTER", &uri, "100", password);
    let second = first
        .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
        .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
        .replace(
            "Content-Length: 0\r\n",
            &format!("Authorization: {authorization}\r\nContent-Length: 0\r\n"),
        );
    let resp = udp_exchange(&sock, second.as_bytes(), WAIT).expect("an answer to the credentials");
    (
        status_of(&resp),
        String::from_utf8_lossy(&resp).into_owned(),
    )
}

#[test]
fn with_sha256_configured_sha256_and_md5_digests_are_both_accepted() {
    let daemon = Daemon::start_with(DaemonConfig::loopback().digest(&["SHA-256", "MD5"]));
    daemon.add_extension("100", "secret-100");
    for algorithm in ["SHA-256", "MD5"] {
        let (status, text) = register_answering(&daemon, algorithm, "secret-100");
        assert_eq!(status, Some(200), "{algorithm}: {text}");
        let (status, text) = register_answering(&daemon, algorithm, "wrong-pass-1");
        assert_eq!(status, Some(403), "{algorithm}: {text}");
    }
    // One binding per accepted REGISTER (each came from its own socket), none for the 403s.
    assert_eq!(
        daemon.registrations_of("100").len(),
        2,
        "{:?}",
        daemon.registrations()
    );
}

#[test]
fn lifetimes_are_held_to_the_configured_range() {
    let daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    // Below registrar.min_expires (60): 423 naming the minimum, no binding.
    let (status, text) = register_answering_with(&daemon, "MD5", "secret-100", 30);
    assert_eq!(status, Some(423), "{text}");
    assert_eq!(
        header_values(&text, "Min-Expires"),
        vec!["60".to_owned()],
        "{text}"
    );
    assert!(daemon.registrations_of("100").is_empty());
    // Above registrar.max_expires (3600): granted, but cut to 3600.
    let (status, text) = register_answering_with(&daemon, "MD5", "secret-100", 86_400);
    assert_eq!(status, Some(200), "{text}");
    let reg = daemon.wait_registered("100", WAIT);
    let expires = reg["expires_in_secs"].as_u64().expect("a number");
    assert!((3500..=3600).contains(&expires), "{reg}");
}

#[test]
fn wrong_password_gets_403_and_no_binding() {
    let daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    let outcome = Sipp::new("register_wrong.xml", &daemon)
        .account("100", "not-the-password")
        .run();
    outcome.assert_success("register with a wrong password");
    assert_eq!(outcome.received_statuses(), vec![401, 403]);
    assert!(daemon.registrations_of("100").is_empty());
}

#[test]
fn unknown_user_gets_the_same_answers_as_a_known_one() {
    let daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");

    // Without credentials: the same challenge.
    let mut answers = Vec::new();
    for (ext, call_id) in [("100", "k1@test"), ("555", "u1@test")] {
        let sock = udp_client(daemon.sip_addr());
        let local = sock.local_addr().expect("local addr");
        let req = register_request(daemon.sip_addr(), Transport::Udp, local, ext, call_id);
        let resp = udp_exchange(&sock, req.as_bytes(), WAIT).expect("a response to REGISTER");
        let text = String::from_utf8_lossy(&resp).into_owned();
        answers.push((
            status_of(&resp),
            header_count(&text, "WWW-Authenticate"),
            text,
        ));
    }
    assert_eq!(answers[0].0, Some(401), "{}", answers[0].2);
    assert_eq!(
        answers[0].0, answers[1].0,
        "known {} / unknown {}",
        answers[0].2, answers[1].2
    );
    assert_eq!(
        answers[0].1, answers[1].1,
        "known {} / unknown {}",
        answers[0].2, answers[1].2
    );

    // With (wrong) credentials: 401 then 403 for both.
    let known = Sipp::new("register_wrong.xml", &daemon)
        .account("100", "guessed-pass")
        .run();
    let unknown = Sipp::new("register_wrong.xml", &daemon)
        .account("555", "guessed-pass")
        .run();
    known.assert_success("wrong password for a known extension");
    unknown.assert_success("a password for an unknown extension");
    assert_eq!(known.received_statuses(), unknown.received_statuses());
    let challenge_count = |o: &outpost_tests::SippOutcome| {
        o.received()
            .first()
            .map(|m| header_count(m, "WWW-Authenticate"))
    };
    assert_eq!(challenge_count(&known), challenge_count(&unknown));
    assert!(daemon.registrations().is_empty());
}

#[test]
fn unregister_with_expires_zero_removes_the_binding() {
    let daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    let register = Sipp::new("register.xml", &daemon).account("100", "secret-100");
    let port = register.port();
    register.run().assert_success("register");
    daemon.wait_registered("100", WAIT);

    Sipp::new("unregister.xml", &daemon)
        .account("100", "secret-100")
        .local_port(port)
        .run()
        .assert_success("unregister");
    assert!(
        daemon.registrations_of("100").is_empty(),
        "{:?}",
        daemon.registrations()
    );
}

#[test]
fn register_over_tcp() {
    let daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    Sipp::new("register.xml", &daemon)
        .account("100", "secret-100")
        .transport(Transport::Tcp)
        .run()
        .assert_success("register over TCP");
    let reg = daemon.wait_registered("100", WAIT);
    assert_eq!(json_str(&reg, "transport"), Some("TCP"), "{reg}");
}

#[test]
fn raw_tcp_register_gets_a_challenge_on_the_same_connection() {
    let daemon = Daemon::start();
    let mut conn = SipTcp::connect(daemon.sip_addr()).expect("connect");
    let local = conn.stream.local_addr().expect("local addr");
    let req = register_request(daemon.sip_addr(), Transport::Tcp, local, "100", "t1@test");
    assert!(conn.send(req.as_bytes()));
    let resp = conn.read_message(WAIT).expect("a response over TCP");
    assert_eq!(status_of(resp.as_bytes()), Some(401), "{resp}");
    let challenges = header_values(&resp, "WWW-Authenticate");
    assert_eq!(challenges.len(), 1, "{resp}");
    assert!(challenges[0].contains("algorithm=MD5"), "{resp}");
}

#[test]
fn register_over_ipv6_loopback() {
    if !has_ipv6_loopback() {
        eprintln!("no ::1 on lo; IPv6 registration not tested here");
        return;
    }
    let daemon = Daemon::start_with(DaemonConfig::dual_stack());
    daemon.add_extension("100", "secret-100");
    let v6: SocketAddr = *daemon
        .listen()
        .iter()
        .find(|a| a.is_ipv6())
        .expect("dual stack config has ::1");
    let sipp = Sipp::new("register.xml", &daemon)
        .account("100", "secret-100")
        .target(v6);
    let port = sipp.port();
    sipp.run().assert_success("register over IPv6");
    let reg = daemon.wait_registered("100", WAIT);
    assert_eq!(
        json_str(&reg, "source"),
        Some(format!("[::1]:{port}").as_str()),
        "{reg}"
    );
}

/// One REGISTER round on `sock` for `ext`: the algorithms the 401 offers, then the status
/// of the answer to the `answer_with` challenge (None: nothing answered).
fn register_round(
    daemon: &Daemon,
    sock: &std::net::UdpSocket,
    ext: &str,
    password: &str,
    answer_with: Option<&str>,
) -> (Vec<String>, Option<u16>) {
    let local = sock.local_addr().expect("local addr");
    static ROUND: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let call_id = format!("digest-{ext}-{}-{round}", local.port());
    let first = register_request(daemon.sip_addr(), Transport::Udp, local, ext, &call_id);
    let resp = udp_exchange(sock, first.as_bytes(), WAIT).expect("a 401");
    let text = String::from_utf8_lossy(&resp).into_owned();
    assert_eq!(status_of(&resp), Some(401), "{text}");
    let challenges = header_values(&text, "WWW-Authenticate");
    let offered = challenges
        .iter()
        .filter_map(|c| challenge_param(c, "algorithm"))
        .collect();
    let Some(algorithm) = answer_with else {
        return (offered, None);
    };
    let challenge = challenges
        .iter()
        .find(|c| challenge_param(c, "algorithm").as_deref() == Some(algorithm))
        .unwrap_or_else(|| panic!("no {algorithm} challenge in {text}"));
    let uri = format!("sip:{}", daemon.sip_addr().ip());
    let authorization = digest_authorization(challenge, "REGISTER", &uri, ext, password);
    let second = first
        .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
        .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
        .replace(
            "Content-Length: 0\r\n",
            &format!("Authorization: {authorization}\r\nContent-Length: 0\r\n"),
        );
    let resp = udp_exchange(sock, second.as_bytes(), WAIT).expect("an answer to the credentials");
    (offered, status_of(&resp))
}

/// `ext digest 100 sha256` with MD5 as the global default: the first challenge to a new
/// address is the global one, the same as for a name that does not exist; once the phone
/// registered from its address it is challenged with SHA-256 only, also after a restart.
#[test]
fn an_extensions_sha256_applies_to_its_phone_once_known_and_reveals_nothing_before() {
    let mut config = DaemonConfig::loopback();
    config.digest_algorithms = Some(vec!["MD5".to_owned()]);
    let mut daemon = Daemon::start_with(config);
    daemon.add_extension("100", "secret-100");
    let out = daemon.ctl_ok(&["ext", "digest", "100", "sha256"]);
    assert!(out.contains("SHA-256"), "{out}");
    let shown = daemon.ctl_json(&["ext", "show", "100"]);
    assert_eq!(json_str(&shown, "digest"), Some("sha256"), "{shown}");

    let phone = udp_client(daemon.sip_addr());
    let stranger = udp_client(daemon.sip_addr());
    let (unknown, _) = register_round(&daemon, &stranger, "555", "x", None);
    let (first, status) = register_round(&daemon, &phone, "100", "secret-100", Some("MD5"));
    assert_eq!(first, vec!["MD5".to_owned()]);
    assert_eq!(first, unknown, "a real extension's first challenge differs");
    assert_eq!(status, Some(200));

    let (known, status) = register_round(&daemon, &phone, "100", "secret-100", Some("SHA-256"));
    assert_eq!(known, vec!["SHA-256".to_owned()]);
    assert_eq!(status, Some(200));

    daemon.stop();
    daemon.restart();
    let (after, status) = register_round(&daemon, &phone, "100", "secret-100", Some("SHA-256"));
    assert_eq!(after, vec!["SHA-256".to_owned()], "after a restart");
    assert_eq!(status, Some(200));

    daemon.ctl_ok(&["ext", "digest", "100", "default"]);
    let (back, _) = register_round(&daemon, &phone, "100", "secret-100", None);
    assert_eq!(back, vec!["MD5".to_owned()]);
}

/// The realm of the 401 to a first REGISTER for 100.
fn realm_of(daemon: &Daemon) -> String {
    let challenges = header_values_of_401(daemon);
    challenge_param(&challenges[0], "realm").expect("a realm in the challenge")
}

fn header_values_of_401(daemon: &Daemon) -> Vec<String> {
    let sock = udp_client(daemon.sip_addr());
    let local = sock.local_addr().expect("local addr");
    let req = register_request(
        daemon.sip_addr(),
        Transport::Udp,
        local,
        "100",
        "realm@test",
    );
    let resp = udp_exchange(&sock, req.as_bytes(), WAIT).expect("a response to REGISTER");
    assert_eq!(status_of(&resp), Some(401));
    header_values(&String::from_utf8_lossy(&resp), "WWW-Authenticate")
}

#[test]
fn each_box_has_its_own_realm_which_its_phones_keep_through_restarts_and_upgrades() {
    let own_realm = || DaemonConfig {
        realm: None,
        ..DaemonConfig::loopback()
    };
    let mut a = Daemon::start_with(own_realm());
    let b = Daemon::start_with(own_realm());
    let realm_a = realm_of(&a);
    let realm_b = realm_of(&b);
    assert!(
        realm_a.starts_with("outpost-") && realm_a.len() == 24,
        "{realm_a}"
    );
    assert_ne!(
        realm_a, realm_b,
        "a digest from one box would open the other"
    );
    assert_eq!(
        json_str(&a.ctl_json(&["status"]), "realm"),
        Some(realm_a.as_str())
    );

    // A phone's password works, and keeps working after a restart: same realm.
    a.add_extension("100", "secret-100");
    assert_eq!(register_answering(&a, "MD5", "secret-100").0, Some(200));
    a.stop();
    a.restart();
    assert_eq!(realm_of(&a), realm_a);
    assert_eq!(register_answering(&a, "MD5", "secret-100").0, Some(200));

    // A box upgraded from the old fixed default ("outpost", set in the test harness) with
    // no realm in its configuration keeps the realm its extensions were made with.
    let mut old = Daemon::start();
    old.add_extension("100", "secret-100");
    old.stop();
    let path = old.dir().join("outpost.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    assert!(text.contains("realm = \"outpost\"\n"), "{text}");
    std::fs::write(&path, text.replace("realm = \"outpost\"\n", "")).expect("write config");
    old.restart();
    let running = old.ctl_ok(&["config", "show"]);
    assert!(
        !running.contains("realm"),
        "the edited file runs: {running}"
    );
    assert_eq!(realm_of(&old), "outpost");
    assert_eq!(register_answering(&old, "MD5", "secret-100").0, Some(200));
}
