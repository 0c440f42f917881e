//! Authentication edges of the endpoint with a virtual clock: account locks that spare the
//! account's own phones, un-REGISTER during a lock, the digest `uri` check, and digest
//! algorithms per extension.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use pbx_core::endpoint::{EndpointConfig, Event};
use pbx_core::lockout::TrustedSource;
use pbx_core::registrar::BindingChange;
use pbx_core::sip::auth::{Algorithm, DigestChoice};
use pbx_core::sip::Response;
use support::*;

const PHONE_ADDR: &str = "192.168.1.10:5060";
const ATTACKER_ADDR: &str = "203.0.113.9:5060";
const LOCK_MS: u64 = 15 * 60_000;

/// What the phone sends in one REGISTER attempt.
struct Attempt<'a> {
    headers: Vec<String>,
    alg: &'a str,
    /// The digest `uri` when it differs from the Request-URI.
    digest_uri: Option<&'a str>,
    /// Clock jump between the challenge and the answer.
    delay_ms: u64,
}

impl Attempt<'_> {
    fn register(p: &Phone, expires: u32) -> Attempt<'static> {
        Attempt {
            headers: vec![format!("Contact: {};expires={expires}", p.contact())],
            alg: "MD5",
            digest_uri: None,
            delay_ms: 0,
        }
    }

    fn unregister_all() -> Attempt<'static> {
        Attempt {
            headers: vec!["Contact: *".into(), "Expires: 0".into()],
            alg: "MD5",
            digest_uri: None,
            delay_ms: 0,
        }
    }
}

/// Sends a REGISTER for `p`, answers the challenge as `a` says; returns (challenge, final).
fn register_attempt(sim: &mut Sim, p: &mut Phone, a: &Attempt<'_>) -> (Response, Response) {
    let ruri = format!("sip:{REALM}");
    let call_id = p.token();
    let from = format!("<{}>;tag={}", p.aor(), p.token());
    let to = format!("<{}>", p.aor());
    let via = p.via();
    let text = request(
        "REGISTER", &ruri, &via, &from, &to, &call_id, 1, &a.headers, "",
    );
    sim.send(p.addr, &text);
    let mut r = sim.responses(p.addr);
    assert_eq!(r.len(), 1, "{r:?}");
    let challenge = r.remove(0);
    assert_eq!(challenge.status, 401, "{challenge:?}");
    sim.now += a.delay_ms;
    let auth = format!(
        "Authorization: {}",
        p.authorize(&challenge, "REGISTER", a.digest_uri.unwrap_or(&ruri), a.alg)
    );
    let mut headers = a.headers.clone();
    headers.push(auth);
    let via = p.via();
    let text = request(
        "REGISTER", &ruri, &via, &from, &to, &call_id, 2, &headers, "",
    );
    sim.send(p.addr, &text);
    let mut r = sim.responses(p.addr);
    assert_eq!(r.len(), 1, "{r:?}");
    (challenge, r.remove(0))
}

/// A REGISTER of `p` for 600 s, answered with MD5.
fn reg(sim: &mut Sim, p: &mut Phone) -> (Response, Response) {
    let a = Attempt::register(p, 600);
    register_attempt(sim, p, &a)
}

/// Status of an authenticated INVITE from `p` to `dial` (after its 407 and ACK).
fn invite_status(sim: &mut Sim, p: &mut Phone, dial: &str) -> u16 {
    invite(sim, p, dial, SDP_OFFER);
    let statuses: Vec<u16> = sim
        .statuses(p.addr)
        .into_iter()
        .filter(|s| *s != 100)
        .collect();
    statuses.first().copied().unwrap_or(100)
}

fn failures(sim: &Sim) -> usize {
    sim.events
        .iter()
        .filter(|e| matches!(e, Event::AuthFailed { .. }))
        .count()
}

fn names(r: &Response) -> Vec<String> {
    r.headers
        .other
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect()
}

#[test]
fn a_lock_spares_the_phone_that_authenticated_and_stops_everyone_else() {
    let mut sim = Sim::new();
    let mut phone = Phone::new("103", PHONE_ADDR);
    let mut callee = Phone::new("200", "192.168.1.20:5060");
    register(&mut sim, &mut phone, 600);
    register(&mut sim, &mut callee, 600);
    sim.ep.lock_user(sim.now, "103", sim.now + LOCK_MS);
    assert_eq!(
        sim.ep.trusted_sources(sim.now, "103"),
        vec![TrustedSource {
            ip: "192.168.1.10".parse().unwrap(),
            port: None
        }]
    );

    // The phone keeps registering and calling.
    let (_, r) = reg(&mut sim, &mut phone);
    assert_eq!(r.status, 200, "{r:?}");
    let call = invite(&mut sim, &mut phone, "200", SDP_OFFER);
    let _ = sim.responses(phone.addr);
    assert!(
        !sim.requests(callee.addr).is_empty(),
        "the callee is rung for {}",
        call.call_id
    );

    // Anyone else, right password or not, is refused like a wrong password.
    let mut thief = Phone::new("103", ATTACKER_ADDR);
    let before = failures(&sim);
    let (_, r) = reg(&mut sim, &mut thief);
    assert_eq!(r.status, 403);
    assert_eq!(invite_status(&mut sim, &mut thief, "200"), 403);
    assert_eq!(failures(&sim), before + 2);

    // The phone un-registers: 200, its binding is gone.
    sim.events.clear();
    let (_, r) = register_attempt(&mut sim, &mut phone, &Attempt::unregister_all());
    assert_eq!(r.status, 200);
    assert!(sim.ep.registrar().lookup("103", sim.now).is_empty());
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::Bindings(c) if matches!(c.as_slice(), [BindingChange::Remove { ext, .. }] if ext == "103"))));

    // The lock ends: anyone with the password gets in again.
    sim.now += LOCK_MS;
    let (_, r) = reg(&mut sim, &mut thief);
    assert_eq!(r.status, 200);
}

#[test]
fn behind_nat_only_the_phones_own_mapping_is_spared() {
    let mut sim = Sim::new();
    let mut phone = Phone::new("103", "198.51.100.7:31000");
    phone.contact_addr = "192.168.1.10:5060".parse().unwrap();
    // The Via of a NATed phone names its private address.
    let mut natted = phone.clone();
    let reg = |sim: &mut Sim, p: &mut Phone| {
        let a = Attempt::register(p, 600);
        let ruri = format!("sip:{REALM}");
        let call_id = p.token();
        let from = format!("<{}>;tag={}", p.aor(), p.token());
        let to = format!("<{}>", p.aor());
        let b = p.token();
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bK{b};rport", p.contact_addr);
        sim.send(
            p.addr,
            &request(
                "REGISTER", &ruri, &via, &from, &to, &call_id, 1, &a.headers, "",
            ),
        );
        let ch = sim.responses(p.addr).remove(0);
        let mut headers = a.headers.clone();
        headers.push(format!(
            "Authorization: {}",
            p.authorize(&ch, "REGISTER", &ruri, "MD5")
        ));
        let b = p.token();
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bK{b};rport", p.contact_addr);
        sim.send(
            p.addr,
            &request(
                "REGISTER", &ruri, &via, &from, &to, &call_id, 2, &headers, "",
            ),
        );
        sim.responses(p.addr).remove(0).status
    };
    assert_eq!(reg(&mut sim, &mut natted), 200);
    assert_eq!(
        sim.ep.trusted_sources(sim.now, "103")[0].to_string(),
        "198.51.100.7:31000"
    );
    sim.ep.lock_user(sim.now, "103", sim.now + LOCK_MS);
    assert_eq!(reg(&mut sim, &mut natted), 200);
    // Another device behind the same NAT (another port) is refused.
    let mut other = natted.clone();
    other.addr = "198.51.100.7:31001".parse().unwrap();
    assert_eq!(reg(&mut sim, &mut other), 403);
}

#[test]
fn unregister_during_a_lock_works_with_the_password_and_tells_a_guesser_nothing() {
    let mut sim = Sim::new();
    // The phone registered from one port, then comes back from another address (a
    // re-provisioned phone) while the account is locked.
    let mut old = Phone::new("103", PHONE_ADDR);
    register(&mut sim, &mut old, 600);
    sim.ep.lock_user(sim.now, "103", sim.now + LOCK_MS);
    let mut moved = Phone::new("103", "192.168.1.99:5070");
    let (_, r) = reg(&mut sim, &mut moved);
    assert_eq!(
        r.status, 403,
        "a new source cannot register during the lock"
    );

    // A guesser's un-REGISTER: 200, nothing removed, counted as a failure.
    let mut guesser = Phone::new("103", ATTACKER_ADDR);
    guesser.password = "wrong".into();
    let before = failures(&sim);
    let (_, wrong) = register_attempt(&mut sim, &mut guesser, &Attempt::unregister_all());
    assert_eq!(wrong.status, 200);
    assert_eq!(sim.ep.registrar().lookup("103", sim.now).len(), 1);
    assert_eq!(failures(&sim), before + 1);

    // The same from the moved phone with the right password: 200 and the binding is gone.
    let (_, right) = register_attempt(&mut sim, &mut moved, &Attempt::unregister_all());
    assert_eq!(right.status, 200);
    assert!(sim.ep.registrar().lookup("103", sim.now).is_empty());
    assert_eq!(failures(&sim), before + 1);
    // Both answers look the same.
    assert_eq!(names(&wrong), names(&right));
    assert_eq!(wrong.reason, right.reason);
    assert!(wrong.headers.contact.is_empty() && right.headers.contact.is_empty());

    // An expired nonce gets a fresh challenge whatever the password (no stale=true, which
    // only a right password earns).
    let mut late = Attempt::unregister_all();
    late.delay_ms = 400_000;
    for p in [&mut guesser, &mut moved] {
        let ruri = format!("sip:{REALM}");
        let call_id = p.token();
        let from = format!("<{}>;tag={}", p.aor(), p.token());
        let to = format!("<{}>", p.aor());
        let via = p.via();
        sim.send(
            p.addr,
            &request(
                "REGISTER",
                &ruri,
                &via,
                &from,
                &to,
                &call_id,
                1,
                &late.headers,
                "",
            ),
        );
        let ch = sim.responses(p.addr).remove(0);
        sim.now += late.delay_ms;
        let mut headers = late.headers.clone();
        headers.push(format!(
            "Authorization: {}",
            p.authorize(&ch, "REGISTER", &ruri, "MD5")
        ));
        let via = p.via();
        sim.send(
            p.addr,
            &request(
                "REGISTER", &ruri, &via, &from, &to, &call_id, 2, &headers, "",
            ),
        );
        let r = sim.responses(p.addr).remove(0);
        assert_eq!(r.status, 401);
        assert!(r
            .headers
            .get_all("WWW-Authenticate")
            .all(|c| !c.contains("stale")));
    }
}

#[test]
fn digest_uri_for_another_target_is_400_and_a_failure() {
    let mut sim = Sim::new();
    for (ext, password) in [("103", "pw103"), ("999", "whatever")] {
        let mut p = Phone::new(ext, PHONE_ADDR);
        p.password = password.into();
        let mut a = Attempt::register(&p, 600);
        a.digest_uri = Some("sip:other.example.com");
        let before = failures(&sim);
        let (_, r) = register_attempt(&mut sim, &mut p, &a);
        assert_eq!(r.status, 400, "{ext}: {r:?}");
        assert!(r.reason.contains("Digest URI"), "{}", r.reason);
        assert_eq!(failures(&sim), before + 1, "{ext}");
    }
    assert!(sim.ep.registrar().lookup("103", sim.now).is_empty());
    // The equivalences phones produce are accepted.
    let mut p = Phone::new("103", "192.168.1.12:5060");
    let mut a = Attempt::register(&p, 600);
    a.digest_uri = Some("SIP:PBX.TEST:5060;transport=udp");
    let (_, r) = register_attempt(&mut sim, &mut p, &a);
    assert_eq!(r.status, 200, "{r:?}");
}

fn md5_only() -> EndpointConfig {
    let mut cfg = config();
    cfg.auth_algorithms = vec![Algorithm::Md5];
    cfg
}

fn algorithms(r: &Response) -> Vec<String> {
    r.headers
        .get_all("WWW-Authenticate")
        .map(|c| c.rsplit("algorithm=").next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn an_extensions_sha256_applies_once_its_phone_is_known_and_reveals_nothing_before() {
    let mut sim = Sim::with_config(md5_only());
    sim.ep.set_user_digest("103", DigestChoice::Sha256);
    // First contact: known, unknown and SHA-256 extensions get the same MD5 challenge.
    let mut phone = Phone::new("103", PHONE_ADDR);
    let mut nobody = Phone::new("999", "192.168.1.11:5060");
    nobody.password = "x".into();
    let (c_known, r_known) = reg(&mut sim, &mut phone);
    let (c_unknown, r_unknown) = reg(&mut sim, &mut nobody);
    assert_eq!(algorithms(&c_known), vec!["MD5"]);
    assert_eq!(algorithms(&c_known), algorithms(&c_unknown));
    assert_eq!(names(&c_known), names(&c_unknown));
    assert_eq!((r_known.status, r_unknown.status), (200, 403));
    // Another source naming 103 still gets the global challenge.
    let mut stranger = Phone::new("103", ATTACKER_ADDR);
    let (c, _) = reg(&mut sim, &mut stranger);
    assert_eq!(algorithms(&c), vec!["MD5"]);

    // Once known, the phone is challenged with its extension's SHA-256 and answers it.
    let mut a = Attempt::register(&phone, 600);
    a.alg = "SHA-256";
    let (c, r) = register_attempt(&mut sim, &mut phone, &a);
    assert_eq!(algorithms(&c), vec!["SHA-256"]);
    assert_eq!(r.status, 200, "{r:?}");
    // Back to the global default: MD5 again.
    sim.ep.set_user_digest("103", DigestChoice::Default);
    let (c, r) = reg(&mut sim, &mut phone);
    assert_eq!((algorithms(&c), r.status), (vec!["MD5".to_string()], 200));
}

#[test]
fn restored_bindings_keep_their_phones_trusted() {
    let mut sim = Sim::new();
    let mut phone = Phone::new("103", PHONE_ADDR);
    register(&mut sim, &mut phone, 600);
    let bindings: Vec<_> = sim.ep.registrar().all().into_iter().cloned().collect();
    // A restart: a new endpoint, the store's bindings, the stored lock.
    let mut restarted = Sim::new();
    restarted.now = sim.now + 1_000;
    restarted.ep.restore_bindings(bindings, restarted.now);
    restarted
        .ep
        .lock_user(restarted.now, "103", restarted.now + LOCK_MS);
    let (_, r) = reg(&mut restarted, &mut phone);
    assert_eq!(r.status, 200, "{r:?}");
    let mut thief = Phone::new("103", ATTACKER_ADDR);
    let (_, r) = reg(&mut restarted, &mut thief);
    assert_eq!(r.status, 403);
}

#[test]
fn a_register_retransmitted_after_its_transaction_is_gone_gets_200_and_changes_nothing() {
    // A short T1 makes Timer J (64*T1) end long before the registrar's repeat window, as
    // when the completed cache drops an entry early.
    let mut cfg = config();
    cfg.timers.t1 = 100;
    let mut sim = Sim::with_config(cfg);
    let mut p = Phone::new("100", PHONE_ADDR);
    let ruri = format!("sip:{REALM}");
    let call_id = p.token();
    let from = format!("<{}>;tag={}", p.aor(), p.token());
    let to = format!("<{}>", p.aor());
    let contact = vec![format!("Contact: {};expires=600", p.contact())];
    let via = p.via();
    let first = request(
        "REGISTER", &ruri, &via, &from, &to, &call_id, 1, &contact, "",
    );
    sim.send(p.addr, &first);
    let challenge = sim.responses(p.addr).remove(0);
    assert_eq!(challenge.status, 401);
    let mut headers = contact.clone();
    headers.push(format!(
        "Authorization: {}",
        p.authorize(&challenge, "REGISTER", &ruri, "MD5")
    ));
    let via = p.via();
    let second = request(
        "REGISTER", &ruri, &via, &from, &to, &call_id, 2, &headers, "",
    );
    sim.send(p.addr, &second);
    let ok = sim.responses(p.addr).remove(0);
    assert_eq!(ok.status, 200, "{ok:?}");
    let writes = |sim: &Sim| {
        sim.events
            .iter()
            .filter(|e| matches!(e, Event::Bindings(_)))
            .count()
    };
    let written = writes(&sim);
    assert_eq!(written, 1);
    // Within Timer J the completed transaction answers with the same bytes.
    sim.advance(1_000);
    sim.send(p.addr, &second);
    assert_eq!(sim.responses(p.addr), vec![ok.clone()]);
    // After it (6.4 s), the same request reaches the endpoint again: its nonce count was
    // used, yet as an exact repeat it gets 200 with the current bindings, writing nothing.
    sim.advance(9_000);
    assert_eq!(sim.ep.server_transactions().completed, 0);
    sim.send(p.addr, &second);
    let again = sim.responses(p.addr);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].status, 200, "{again:?}");
    assert_eq!(again[0].headers.contact.len(), 1, "lists the binding");
    assert_eq!(writes(&sim), written, "nothing changed");
    assert_eq!(failures(&sim), 0);
    // The same Call-ID and CSeq asking for something else is challenged afresh.
    let mut other = headers.clone();
    other[0] = format!("Contact: {};expires=1200", p.contact());
    let via = p.via();
    let changed = request("REGISTER", &ruri, &via, &from, &to, &call_id, 2, &other, "");
    sim.send(p.addr, &changed);
    let statuses: Vec<u16> = sim.responses(p.addr).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401]);
    assert_eq!(writes(&sim), written);
}
