//! The call core as a VoIP engineer sees it: simulated phones speak SIP text to the
//! endpoint over a virtual network with a virtual clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod support;

use std::collections::BTreeSet;

use pbx_core::cdr::Disposition;
use pbx_core::endpoint::{DebugCounts, Event};
use pbx_core::registrar::BindingChange;
use pbx_core::sip::{Contact, Method, Request, Response};

use support::*;

const A_ADDR: &str = "192.168.1.10:5060";
const B_ADDR: &str = "192.168.1.20:5060";

fn phones(sim: &mut Sim) -> (Phone, Phone) {
    let mut a = Phone::new("100", A_ADDR);
    let mut b = Phone::new("200", B_ADDR);
    register(sim, &mut a, 600);
    register(sim, &mut b, 600);
    sim.events.clear();
    (a, b)
}

fn contact_uri(resp_contact: &[Contact]) -> String {
    match resp_contact.first() {
        Some(Contact::Addr(na)) => na.uri.to_string(),
        other => panic!("no contact: {other:?}"),
    }
}

/// An answered call, as both phones see it.
struct Established {
    leg: ALeg,
    /// What the PBX put into the 200 to A (To has the PBX's tag; Contact is the PBX).
    a_ok: Response,
    /// The INVITE B received.
    b_inv: Request,
    b_tag: String,
}

impl Established {
    /// From/To/Call-ID/R-URI for a request from A in the dialog.
    fn req_a(&self, a: &mut Phone, method: &str, cseq: u32, body: &str) -> String {
        in_dialog(
            method,
            &contact_uri(&self.a_ok.headers.contact),
            &a.via(),
            &self.leg.from,
            &self.a_ok.headers.to.to_string(),
            &self.leg.call_id,
            cseq,
            body,
        )
    }

    /// A request from B in its dialog with the PBX.
    fn req_b(&self, b: &mut Phone, method: &str, cseq: u32, body: &str) -> String {
        let mut from = self.b_inv.headers.to.clone();
        from.params.set("tag", Some(self.b_tag.clone()));
        in_dialog(
            method,
            &contact_uri(&self.b_inv.headers.contact),
            &b.via(),
            &from.to_string(),
            &self.b_inv.headers.from.to_string(),
            &self.b_inv.headers.call_id,
            cseq,
            body,
        )
    }
}

/// Sets up A → B through ringing and answer (early offer); A has ACKed.
fn establish(sim: &mut Sim, a: &mut Phone, b: &mut Phone) -> Established {
    let leg = invite(sim, a, &b.ext, SDP_OFFER);
    assert_eq!(sim.statuses(a.addr), vec![100]);
    let inv = sim.requests(b.addr);
    assert_eq!(inv.len(), 1, "{inv:?}");
    let b_inv = inv[0].clone();
    let b_tag = b.token();
    sim.send(b.addr, &response(&b_inv, 180, Some(&b_tag), &[], ""));
    assert_eq!(sim.statuses(a.addr), vec![180]);
    let ok = response(
        &b_inv,
        200,
        Some(&b_tag),
        &[format!("Contact: {}", b.contact())],
        SDP_ANSWER,
    );
    sim.send(b.addr, &ok);
    let acks = sim.requests(b.addr);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method, Method::Ack);
    let r = sim.responses(a.addr);
    assert_eq!(r.len(), 1);
    let a_ok = r[0].clone();
    assert_eq!(a_ok.status, 200);
    let est = Established {
        leg,
        a_ok,
        b_inv,
        b_tag,
    };
    let ack = est.req_a(a, "ACK", 2, "");
    sim.send(a.addr, &ack);
    assert!(sim.take(a.addr).is_empty());
    assert!(sim.take(b.addr).is_empty(), "A's ACK is absorbed");
    est
}

/// Runs every timer out and checks that no state is left behind.
fn assert_drained(sim: &mut Sim) {
    sim.advance(120_000);
    sim.take(A_ADDR.parse().unwrap());
    sim.take(B_ADDR.parse().unwrap());
    assert!(sim.ep.calls().is_empty());
    assert_eq!(sim.ep.transactions(), 0);
    assert_eq!(sim.ep.debug_counts(), DebugCounts::default());
    assert!(sim.raw.is_empty(), "unparsable transmits: {:?}", sim.raw);
}

fn header_names(r: &Response) -> Vec<String> {
    let mut names: Vec<String> = r.headers.other.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Registrar
// ---------------------------------------------------------------------------------------------

#[test]
fn register_is_challenged_then_accepted() {
    let mut sim = Sim::new();
    let mut a = Phone::new("100", A_ADDR);
    let call_id = a.token();
    let from = format!("<{}>;tag=t1", a.aor());
    let to = format!("<{}>", a.aor());
    let contact = format!("Contact: {};expires=300", a.contact());
    let via = a.via();
    let text = request(
        "REGISTER",
        "sip:pbx.test",
        &via,
        &from,
        &to,
        &call_id,
        1,
        &[contact.clone()],
        "",
    );
    sim.send(a.addr, &text);
    let r = sim.responses(a.addr);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 401);
    let ch: Vec<&str> = r[0].headers.get_all("WWW-Authenticate").collect();
    assert_eq!(ch.len(), 2);
    assert!(ch[0].contains("algorithm=SHA-256"), "{ch:?}");
    assert!(ch[1].contains("algorithm=MD5"), "{ch:?}");
    assert!(sim.events.is_empty());
    // RFC 3581: received and rport filled in.
    let v = &r[0].headers.via[0];
    assert_eq!(v.params.get("received"), Some(Some("192.168.1.10")));
    assert_eq!(v.params.get("rport"), Some(Some("5060")));

    for alg in ["MD5", "SHA-256"] {
        let auth = format!(
            "Authorization: {}",
            a.authorize(&r[0], "REGISTER", "sip:pbx.test", alg)
        );
        let via = a.via();
        let cseq = if alg == "MD5" { 2 } else { 3 };
        let text = request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            &call_id,
            cseq,
            &[contact.clone(), auth],
            "",
        );
        sim.send(a.addr, &text);
        let ok = sim.responses(a.addr);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].status, 200, "{alg}");
        assert_eq!(ok[0].headers.contact.len(), 1);
        match &ok[0].headers.contact[0] {
            Contact::Addr(na) => {
                assert_eq!(na.uri.to_string(), "sip:100@192.168.1.10:5060");
                let exp: u32 = na.params.get("expires").flatten().unwrap().parse().unwrap();
                assert!((299..=300).contains(&exp), "{exp}");
            }
            Contact::Star => panic!("star"),
        }
    }
    // Two successful REGISTERs: two binding events.
    let binding_events = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::Bindings(_)))
        .count();
    assert_eq!(binding_events, 2);
    let b = sim.ep.registrar().lookup("100", sim.now);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].source.addr, a.addr);
}

/// Sends REGISTER with a digest for `user`/`password`; returns the two responses.
fn register_attempt(sim: &mut Sim, user: &str, password: &str) -> (Response, Response) {
    let mut p = Phone::new(user, "192.168.1.66:5062");
    p.password = password.to_string();
    let from = format!("<{}>;tag=x", p.aor());
    let to = format!("<{}>", p.aor());
    let contact = format!("Contact: {}", p.contact());
    let call_id = p.token();
    let via = p.via();
    sim.send(
        p.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            &call_id,
            1,
            &[contact.clone()],
            "",
        ),
    );
    let first = sim.responses(p.addr).remove(0);
    let auth = format!(
        "Authorization: {}",
        p.authorize(&first, "REGISTER", "sip:pbx.test", "MD5")
    );
    let via = p.via();
    sim.send(
        p.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            &call_id,
            2,
            &[contact, auth],
            "",
        ),
    );
    let second = sim.responses(p.addr).remove(0);
    (first, second)
}

#[test]
fn wrong_password_and_unknown_user_look_the_same() {
    let mut sim = Sim::new();
    let (k1, k2) = register_attempt(&mut sim, "101", "wrong");
    let (u1, u2) = register_attempt(&mut sim, "999", "whatever");
    assert_eq!((k1.status, k2.status), (401, 403));
    assert_eq!((u1.status, u2.status), (401, 403));
    assert_eq!(header_names(&k1), header_names(&u1));
    assert_eq!(header_names(&k2), header_names(&u2));
    assert_eq!(k2.reason, u2.reason);
    assert_eq!(k2.body, u2.body);
    let failures: Vec<&Event> = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::AuthFailed { .. }))
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(!sim.events.iter().any(|e| matches!(e, Event::Bindings(_))));
    assert_eq!(sim.ep.counters().auth_failures, 2);
}

#[test]
fn stale_nonce_is_rechallenged_with_stale_true() {
    let mut sim = Sim::new();
    let mut a = Phone::new("100", A_ADDR);
    let from = format!("<{}>;tag=x", a.aor());
    let to = format!("<{}>", a.aor());
    let contact = format!("Contact: {}", a.contact());
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "st1",
            1,
            &[contact.clone()],
            "",
        ),
    );
    let ch = sim.responses(a.addr).remove(0);
    sim.now += 600_000; // nonce lifetime is 300 s
    let auth = format!(
        "Authorization: {}",
        a.authorize(&ch, "REGISTER", "sip:pbx.test", "MD5")
    );
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "st1",
            2,
            &[contact.clone(), auth],
            "",
        ),
    );
    let r = sim.responses(a.addr).remove(0);
    assert_eq!(r.status, 401);
    assert!(r
        .headers
        .get_all("WWW-Authenticate")
        .all(|c| c.contains("stale=true")));
    assert!(!sim
        .events
        .iter()
        .any(|e| matches!(e, Event::AuthFailed { .. })));
    // The fresh nonce works.
    let auth = format!(
        "Authorization: {}",
        a.authorize(&r, "REGISTER", "sip:pbx.test", "SHA-256")
    );
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "st1",
            3,
            &[contact, auth],
            "",
        ),
    );
    assert_eq!(sim.statuses(a.addr), vec![200]);
}

#[test]
fn unregister_removes_binding_and_reports_it() {
    let mut sim = Sim::new();
    let mut a = Phone::new("100", A_ADDR);
    register(&mut sim, &mut a, 600);
    assert_eq!(sim.ep.registrar().count(), 1);
    sim.events.clear();
    // Un-REGISTER: Expires: 0, answered with the first challenge's nonce family.
    let from = format!("<{}>;tag=u", a.aor());
    let to = format!("<{}>", a.aor());
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "un1",
            1,
            &["Contact: *".into(), "Expires: 0".into()],
            "",
        ),
    );
    let ch = sim.responses(a.addr).remove(0);
    assert_eq!(ch.status, 401);
    let auth = format!(
        "Authorization: {}",
        a.authorize(&ch, "REGISTER", "sip:pbx.test", "MD5")
    );
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "un1",
            2,
            &["Contact: *".into(), "Expires: 0".into(), auth],
            "",
        ),
    );
    let r = sim.responses(a.addr).remove(0);
    assert_eq!(r.status, 200);
    assert!(r.headers.contact.is_empty());
    assert_eq!(sim.ep.registrar().count(), 0);
    sim.events
        .retain(|e| !matches!(e, Event::AuthSucceeded { .. }));
    assert!(
        matches!(
            sim.events.as_slice(),
            [Event::Bindings(ch)] if matches!(ch.as_slice(), [BindingChange::Remove { ext, .. }] if ext == "100")
        ),
        "{:?}",
        sim.events
    );
}

#[test]
fn binding_expiry_and_user_removal_emit_events() {
    let mut sim = Sim::new();
    let mut a = Phone::new("100", A_ADDR);
    let mut b = Phone::new("200", B_ADDR);
    register(&mut sim, &mut a, 60);
    register(&mut sim, &mut b, 600);
    sim.events.clear();
    sim.advance(61_000);
    assert!(matches!(sim.events.as_slice(), [Event::Bindings(c)] if c.len() == 1));
    sim.events.clear();
    sim.ep.remove_user("200").unwrap();
    sim.pump();
    assert!(matches!(sim.events.as_slice(), [Event::Bindings(c)] if c.len() == 1));
    assert!(!sim.ep.has_user("200"));
    assert_eq!(sim.ep.user_count(), 7);
    assert!(sim.ep.remove_user("200").is_err());
}

#[test]
fn register_for_another_users_aor_is_forbidden() {
    let mut sim = Sim::new();
    let mut a = Phone::new("100", A_ADDR);
    let from = format!("<{}>;tag=x", a.aor());
    let to = "<sip:200@pbx.test>".to_string();
    let contact = format!("Contact: {}", a.contact());
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "hj",
            1,
            &[contact.clone()],
            "",
        ),
    );
    let ch = sim.responses(a.addr).remove(0);
    let auth = format!(
        "Authorization: {}",
        a.authorize(&ch, "REGISTER", "sip:pbx.test", "MD5")
    );
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "REGISTER",
            "sip:pbx.test",
            &via,
            &from,
            &to,
            "hj",
            2,
            &[contact, auth],
            "",
        ),
    );
    assert_eq!(sim.statuses(a.addr), vec![403]);
    assert!(sim.ep.registrar().lookup("200", sim.now).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Basic calls
// ---------------------------------------------------------------------------------------------

#[test]
fn answered_call_hung_up_by_caller() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    let start = sim.now;
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    let r = sim.responses(a.addr);
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![100]);
    let v = &r[0].headers.via[0];
    assert_eq!(v.params.get("received"), Some(Some("192.168.1.10")));
    assert_eq!(v.params.get("rport"), Some(Some("5060")));

    let inv = sim.requests(b.addr);
    assert_eq!(inv.len(), 1);
    let inv = inv[0].clone();
    assert_eq!(inv.method, Method::Invite);
    assert_ne!(
        inv.headers.call_id, leg.call_id,
        "leg B has its own Call-ID"
    );
    assert_eq!(inv.uri.to_string(), "sip:200@192.168.1.20:5060");
    assert_eq!(inv.body, SDP_OFFER.as_bytes());
    assert_eq!(inv.headers.via.len(), 1);
    assert_eq!(inv.headers.via[0].host, "10.0.0.1");
    assert!(inv.headers.via[0].is_rfc3261());
    assert_eq!(inv.headers.max_forwards, Some(69));
    assert!(inv.headers.from.tag().is_some());
    assert!(inv.headers.to.tag().is_none());
    assert_eq!(
        inv.headers.from.uri.user(),
        Some("100"),
        "B sees the caller"
    );
    assert!(contact_uri(&inv.headers.contact).contains("10.0.0.1"));
    assert_eq!(inv.headers.content_type.as_deref(), Some("application/sdp"));
    assert!(sim.ep.calls().len() == 1 && !sim.ep.calls()[0].answered);

    sim.send(b.addr, &response(&inv, 180, Some("btag"), &[], ""));
    let ringing = sim.responses(a.addr);
    assert_eq!(ringing.len(), 1);
    assert_eq!(ringing[0].status, 180);
    let our_tag = tag(&ringing[0].headers.to);
    assert!(
        !our_tag.is_empty() && our_tag != "btag",
        "A sees the PBX's tag"
    );

    sim.now += 4_000;
    let ok = response(
        &inv,
        200,
        Some("btag"),
        &[format!("Contact: {}", b.contact())],
        SDP_ANSWER,
    );
    sim.send(b.addr, &ok);
    let ack_b = sim.requests(b.addr);
    assert_eq!(ack_b.len(), 1);
    assert_eq!(ack_b[0].method, Method::Ack);
    assert_eq!(ack_b[0].headers.call_id, inv.headers.call_id);
    assert_eq!(ack_b[0].headers.cseq.seq, inv.headers.cseq.seq);
    assert_eq!(tag(&ack_b[0].headers.to), "btag");
    assert_eq!(ack_b[0].uri.to_string(), "sip:200@192.168.1.20:5060");
    let a_ok = sim.responses(a.addr);
    assert_eq!(a_ok.len(), 1);
    assert_eq!(a_ok[0].status, 200);
    assert_eq!(tag(&a_ok[0].headers.to), our_tag);
    assert_eq!(a_ok[0].body, SDP_ANSWER.as_bytes());
    assert!(contact_uri(&a_ok[0].headers.contact).contains("10.0.0.1"));
    assert!(sim.ep.calls()[0].answered);
    let answer_at = sim.now;

    let est = Established {
        leg,
        a_ok: a_ok[0].clone(),
        b_inv: inv.clone(),
        b_tag: "btag".into(),
    };
    sim.send(a.addr, &est.req_a(&mut a, "ACK", 2, ""));
    assert!(sim.take(a.addr).is_empty() && sim.take(b.addr).is_empty());

    sim.now += 60_000;
    sim.send(a.addr, &est.req_a(&mut a, "BYE", 3, ""));
    assert_eq!(sim.statuses(a.addr), vec![200]);
    let bye = sim.requests(b.addr);
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].method, Method::Bye);
    assert_eq!(bye[0].headers.call_id, inv.headers.call_id);
    assert_eq!(tag(&bye[0].headers.to), "btag");
    assert_eq!(tag(&bye[0].headers.from), tag(&inv.headers.from));
    assert_eq!(
        bye[0].headers.to.uri, inv.headers.to.uri,
        "dialog remote URI is the INVITE's To"
    );
    assert!(bye[0].headers.cseq.seq > inv.headers.cseq.seq);
    sim.send(b.addr, &response(&bye[0], 200, None, &[], ""));

    let cdrs = sim.cdrs();
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!((cdr.caller.as_str(), cdr.callee.as_str()), ("100", "200"));
    assert_eq!(cdr.start, start);
    assert_eq!(cdr.answer, Some(answer_at));
    assert_eq!(cdr.end, sim.now);
    assert_eq!(cdr.billsec(), 60);
    assert_eq!(cdr.call_id, est.leg.call_id);
    assert_eq!(sim.ep.counters().calls_answered, 1);
    assert_drained(&mut sim);
}

#[test]
fn callee_hangs_up() {
    let mut sim = Sim::new();
    let (mut a, mut b) = phones(&mut sim);
    let est = establish(&mut sim, &mut a, &mut b);
    sim.send(b.addr, &est.req_b(&mut b, "BYE", 1, ""));
    assert_eq!(sim.statuses(b.addr), vec![200]);
    let bye = sim.requests(a.addr);
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].method, Method::Bye);
    assert_eq!(bye[0].headers.call_id, est.leg.call_id);
    assert_eq!(
        bye[0].uri.to_string(),
        "sip:100@192.168.1.10:5060",
        "to A's Contact"
    );
    assert_eq!(tag(&bye[0].headers.from), tag(&est.a_ok.headers.to));
    sim.send(a.addr, &response(&bye[0], 200, None, &[], ""));
    assert_eq!(sim.cdrs()[0].disposition, Disposition::Answered);
    assert_drained(&mut sim);
}

#[test]
fn late_offer_answer_reaches_callee_in_its_ack() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", "");
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    assert!(inv.body.is_empty());
    let ok = response(
        &inv,
        200,
        Some("bt"),
        &[format!("Contact: {}", b.contact())],
        SDP_ANSWER,
    );
    sim.send(b.addr, &ok);
    assert!(sim.take(b.addr).is_empty(), "ACK to B waits for A's answer");
    // B's 200 retransmission is not ACKed yet either.
    sim.send(b.addr, &ok);
    assert!(sim.take(b.addr).is_empty());
    let a_ok = sim.responses(a.addr).remove(0);
    assert_eq!(a_ok.body, SDP_ANSWER.as_bytes(), "B's offer goes to A");
    let est = Established {
        leg,
        a_ok,
        b_inv: inv,
        b_tag: "bt".into(),
    };
    sim.send(a.addr, &est.req_a(&mut a, "ACK", 2, SDP_OFFER));
    let ack = sim.requests(b.addr);
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].method, Method::Ack);
    assert_eq!(ack[0].body, SDP_OFFER.as_bytes());
    assert_eq!(
        ack[0].headers.content_type.as_deref(),
        Some("application/sdp")
    );
    // Retransmitted 200 gets the same ACK again.
    sim.send(b.addr, &ok);
    let again = sim.requests(b.addr);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, SDP_OFFER.as_bytes());
}

#[test]
fn busy_callee() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(b.addr, &response(&inv, 486, Some("bb"), &[], ""));
    let ack = sim.requests(b.addr);
    assert_eq!(ack.len(), 1, "B's 486 is ACKed");
    assert_eq!(ack[0].method, Method::Ack);
    let r = sim.responses(a.addr);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 486);
    let ack_to = r[0].headers.to.to_string();
    sim.send(
        a.addr,
        &request(
            "ACK",
            &leg.ruri,
            &leg.via,
            &leg.from,
            &ack_to,
            &leg.call_id,
            2,
            &[],
            "",
        ),
    );
    assert!(sim.take(a.addr).is_empty() && sim.take(b.addr).is_empty());
    let cdr = sim.cdrs();
    assert_eq!(cdr.len(), 1);
    assert_eq!(cdr[0].disposition, Disposition::Busy);
    assert_eq!(cdr[0].status, 486);
    assert_drained(&mut sim);
}

#[test]
fn caller_cancels_while_ringing() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(b.addr, &response(&inv, 180, Some("bt"), &[], ""));
    sim.take(a.addr);
    let cancel = request(
        "CANCEL",
        &leg.ruri,
        &leg.via,
        &leg.from,
        &leg.to,
        &leg.call_id,
        2,
        &[],
        "",
    );
    sim.send(a.addr, &cancel);
    let r = sim.responses(a.addr);
    let st: Vec<(u16, Method)> = r
        .iter()
        .map(|r| (r.status, r.headers.cseq.method.clone()))
        .collect();
    assert!(st.contains(&(200, Method::Cancel)), "{st:?}");
    assert!(st.contains(&(487, Method::Invite)), "{st:?}");
    let c = sim.requests(b.addr);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].method, Method::Cancel);
    assert_eq!(c[0].headers.via[0].branch(), inv.headers.via[0].branch());
    sim.send(b.addr, &response(&c[0], 200, Some("bt"), &[], ""));
    sim.send(b.addr, &response(&inv, 487, Some("bt"), &[], ""));
    let ack = sim.requests(b.addr);
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].method, Method::Ack);
    let cdr = sim.cdrs();
    assert_eq!(cdr.len(), 1);
    assert_eq!(cdr[0].disposition, Disposition::Cancelled);
    assert_eq!(cdr[0].status, 487);
    assert!(sim.ep.calls().is_empty());
    assert_drained(&mut sim);
}

#[test]
fn cancel_before_callee_answers_anything_waits_for_its_provisional() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    let cancel = request(
        "CANCEL",
        &leg.ruri,
        &leg.via,
        &leg.from,
        &leg.to,
        &leg.call_id,
        2,
        &[],
        "",
    );
    sim.send(a.addr, &cancel);
    assert_eq!(sim.responses(a.addr).len(), 2);
    // RFC 3261 §9.1: no CANCEL before a provisional.
    assert!(sim
        .requests(b.addr)
        .iter()
        .all(|r| r.method != Method::Cancel));
    sim.send(b.addr, &response(&inv, 180, Some("bt"), &[], ""));
    assert!(sim.take(a.addr).is_empty(), "nothing more for A");
    let c = sim.requests(b.addr);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].method, Method::Cancel);
    // B answered anyway (race): ACK + BYE.
    sim.send(
        b.addr,
        &response(
            &inv,
            200,
            Some("bt"),
            &[format!("Contact: {}", b.contact())],
            SDP_ANSWER,
        ),
    );
    let m: Vec<Method> = sim
        .requests(b.addr)
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(m, vec![Method::Ack, Method::Bye]);
    assert_eq!(sim.cdrs().len(), 1);
    assert_drained(&mut sim);
}

#[test]
fn unknown_number_is_404_only_after_authentication() {
    let mut sim = Sim::new();
    let (mut a, _b) = phones(&mut sim);
    // Unauthenticated: the same 407 for a known and an unknown number.
    let mut first = Vec::new();
    for dial in ["200", "999"] {
        let from = format!("<{}>;tag={}", a.aor(), a.token());
        let via = a.via();
        let text = request(
            "INVITE",
            &format!("sip:{dial}@pbx.test"),
            &via,
            &from,
            &format!("<sip:{dial}@pbx.test>"),
            &a.token(),
            1,
            &[format!("Contact: {}", a.contact())],
            SDP_OFFER,
        );
        sim.send(a.addr, &text);
        let r = sim.responses(a.addr);
        assert_eq!(r.len(), 1);
        first.push(r[0].clone());
    }
    assert_eq!(first[0].status, 407);
    assert_eq!(first[1].status, 407);
    assert_eq!(header_names(&first[0]), header_names(&first[1]));
    invite(&mut sim, &mut a, "999", SDP_OFFER);
    assert_eq!(sim.statuses(a.addr), vec![100, 404]);
    assert_eq!(sim.cdrs()[0].disposition, Disposition::NotFound);
    assert!(sim.ep.calls().is_empty());
}

#[test]
fn unregistered_callee_is_480() {
    let mut sim = Sim::new();
    let (mut a, _b) = phones(&mut sim);
    invite(&mut sim, &mut a, "201", SDP_OFFER);
    assert_eq!(sim.statuses(a.addr), vec![100, 480]);
    assert_eq!(sim.cdrs()[0].disposition, Disposition::Unavailable);
}

#[test]
fn calling_as_someone_else_is_forbidden() {
    let mut sim = Sim::new();
    let (mut a, _b) = phones(&mut sim);
    // Authenticate as 100 but claim From 101.
    let from = format!("<sip:101@{REALM}>;tag=f");
    let via = a.via();
    let to = "<sip:200@pbx.test>";
    sim.send(
        a.addr,
        &request(
            "INVITE",
            "sip:200@pbx.test",
            &via,
            &from,
            to,
            "spoof",
            1,
            &[],
            SDP_OFFER,
        ),
    );
    let ch = sim.responses(a.addr).remove(0);
    let auth = format!(
        "Proxy-Authorization: {}",
        a.authorize(&ch, "INVITE", "sip:200@pbx.test", "MD5")
    );
    let via = a.via();
    sim.send(
        a.addr,
        &request(
            "INVITE",
            "sip:200@pbx.test",
            &via,
            &from,
            to,
            "spoof",
            2,
            &[auth],
            SDP_OFFER,
        ),
    );
    assert_eq!(sim.statuses(a.addr), vec![403]);
    assert!(sim.take(B_ADDR.parse().unwrap()).is_empty());
}

#[test]
fn ring_timeout_gives_480_and_cancels_callee() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(b.addr, &response(&inv, 180, Some("bt"), &[], ""));
    sim.take(a.addr);
    sim.advance(RING_MS - 1);
    assert!(sim.responses(a.addr).is_empty());
    sim.advance(1);
    let st: Vec<u16> = sim.statuses(a.addr);
    assert_eq!(st, vec![480]);
    let c = sim.requests(b.addr);
    assert!(c.iter().any(|r| r.method == Method::Cancel), "{c:?}");
    assert_eq!(sim.cdrs()[0].disposition, Disposition::NoAnswer);
}

#[test]
fn nat_callee_is_reached_at_its_registration_source() {
    let mut sim = Sim::new();
    let mut a = Phone::new("100", A_ADDR);
    register(&mut sim, &mut a, 600);
    let mut b = Phone::new("200", "203.0.113.20:40000");
    b.contact_addr = "10.99.0.20:5060".parse().unwrap();
    register(&mut sim, &mut b, 600);
    invite(&mut sim, &mut a, "200", SDP_OFFER);
    let inv = sim.requests(b.addr);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].uri.to_string(), "sip:200@10.99.0.20:5060");
    assert!(sim.take(b.contact_addr).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Forking
// ---------------------------------------------------------------------------------------------

fn two_contacts(sim: &mut Sim) -> (Phone, Phone, Phone) {
    let mut a = Phone::new("100", A_ADDR);
    let mut b1 = Phone::new("200", B_ADDR);
    let mut b2 = Phone::new("200", "192.168.1.21:5060");
    register(sim, &mut a, 600);
    register(sim, &mut b1, 600);
    register(sim, &mut b2, 600);
    assert_eq!(sim.ep.registrar().lookup("200", sim.now).len(), 2);
    (a, b1, b2)
}

#[test]
fn forked_call_first_answer_wins_other_fork_cancelled() {
    let mut sim = Sim::new();
    let (mut a, b1, b2) = two_contacts(&mut sim);
    invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let i1 = sim.requests(b1.addr).remove(0);
    let i2 = sim.requests(b2.addr).remove(0);
    assert_ne!(i1.headers.call_id, i2.headers.call_id);
    sim.send(b1.addr, &response(&i1, 180, Some("t1"), &[], ""));
    sim.send(b2.addr, &response(&i2, 180, Some("t2"), &[], ""));
    let ringing = sim.responses(a.addr);
    assert!(ringing.iter().all(|r| r.status == 180));
    sim.send(
        b2.addr,
        &response(
            &i2,
            200,
            Some("t2"),
            &[format!("Contact: {}", b2.contact())],
            SDP_ANSWER,
        ),
    );
    let to_b2: Vec<Method> = sim
        .requests(b2.addr)
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(to_b2, vec![Method::Ack]);
    let to_b1 = sim.requests(b1.addr);
    assert_eq!(to_b1.len(), 1);
    assert_eq!(to_b1[0].method, Method::Cancel);
    assert_eq!(sim.statuses(a.addr), vec![200]);
    sim.send(b1.addr, &response(&to_b1[0], 200, Some("t1"), &[], ""));
    sim.send(b1.addr, &response(&i1, 487, Some("t1"), &[], ""));
    let acks = sim.requests(b1.addr);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method, Method::Ack);
    assert!(
        sim.take(a.addr).is_empty(),
        "the loser's 487 does not reach A"
    );
    assert!(sim.cdrs().is_empty());
}

#[test]
fn forked_call_both_answer_loser_gets_ack_and_bye() {
    let mut sim = Sim::new();
    let (mut a, b1, b2) = two_contacts(&mut sim);
    invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let i1 = sim.requests(b1.addr).remove(0);
    let i2 = sim.requests(b2.addr).remove(0);
    sim.send(
        b1.addr,
        &response(
            &i1,
            200,
            Some("t1"),
            &[format!("Contact: {}", b1.contact())],
            SDP_ANSWER,
        ),
    );
    sim.send(
        b2.addr,
        &response(
            &i2,
            200,
            Some("t2"),
            &[format!("Contact: {}", b2.contact())],
            SDP_ANSWER,
        ),
    );
    assert_eq!(sim.statuses(a.addr), vec![200], "A sees one answer");
    let to_b2 = sim.requests(b2.addr);
    let m: Vec<Method> = to_b2.iter().map(|r| r.method.clone()).collect();
    assert_eq!(m, vec![Method::Ack, Method::Bye]);
    assert_eq!(tag(&to_b2[1].headers.to), "t2");
    assert_eq!(to_b2[1].uri.to_string(), "sip:200@192.168.1.21:5060");
    // Its retransmitted 200 gets the ACK again, not a second BYE.
    sim.send(
        b2.addr,
        &response(
            &i2,
            200,
            Some("t2"),
            &[format!("Contact: {}", b2.contact())],
            SDP_ANSWER,
        ),
    );
    let m: Vec<Method> = sim
        .requests(b2.addr)
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(m, vec![Method::Ack]);
    sim.send(b2.addr, &response(&to_b2[1], 200, None, &[], ""));
    let m: Vec<Method> = sim
        .requests(b1.addr)
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(m, vec![Method::Ack]);
    assert_eq!(sim.ep.calls().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// In-dialog requests
// ---------------------------------------------------------------------------------------------

const SDP_HOLD: &str = "v=0\r\no=a 1 2 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n";

#[test]
fn hold_reinvite_from_caller_is_relayed() {
    let mut sim = Sim::new();
    let (mut a, mut b) = phones(&mut sim);
    let est = establish(&mut sim, &mut a, &mut b);
    sim.send(a.addr, &est.req_a(&mut a, "INVITE", 3, SDP_HOLD));
    let re = sim.requests(b.addr);
    assert_eq!(re.len(), 1);
    let re = re[0].clone();
    assert_eq!(re.method, Method::Invite);
    assert_eq!(re.headers.call_id, est.b_inv.headers.call_id);
    assert_eq!(tag(&re.headers.to), est.b_tag);
    assert_eq!(tag(&re.headers.from), tag(&est.b_inv.headers.from));
    assert!(re.headers.cseq.seq > est.b_inv.headers.cseq.seq);
    assert_eq!(re.body, SDP_HOLD.as_bytes());
    assert_eq!(re.uri.to_string(), "sip:200@192.168.1.20:5060");
    let statuses = sim.statuses(a.addr);
    assert!(statuses.iter().all(|s| *s < 200), "{statuses:?}");
    sim.send(
        b.addr,
        &response(
            &re,
            200,
            None,
            &[format!("Contact: {}", b.contact())],
            SDP_ANSWER,
        ),
    );
    let r = sim.responses(a.addr);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].headers.cseq.seq, 3);
    assert_eq!(r[0].body, SDP_ANSWER.as_bytes());
    assert!(sim.take(b.addr).is_empty(), "B's ACK waits for A's");
    sim.send(a.addr, &est.req_a(&mut a, "ACK", 3, ""));
    let ack = sim.requests(b.addr);
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].method, Method::Ack);
    assert_eq!(ack[0].headers.cseq.seq, re.headers.cseq.seq);
    assert_eq!(ack[0].headers.call_id, re.headers.call_id);
}

#[test]
fn hold_reinvite_from_callee_is_relayed() {
    let mut sim = Sim::new();
    let (mut a, mut b) = phones(&mut sim);
    let est = establish(&mut sim, &mut a, &mut b);
    sim.send(b.addr, &est.req_b(&mut b, "INVITE", 1, SDP_HOLD));
    let re = sim.requests(a.addr);
    assert_eq!(re.len(), 1);
    let re = re[0].clone();
    assert_eq!(re.method, Method::Invite);
    assert_eq!(re.headers.call_id, est.leg.call_id);
    assert_eq!(tag(&re.headers.from), tag(&est.a_ok.headers.to));
    assert_eq!(re.uri.to_string(), "sip:100@192.168.1.10:5060");
    assert_eq!(re.body, SDP_HOLD.as_bytes());
    sim.send(
        a.addr,
        &response(
            &re,
            200,
            None,
            &[format!("Contact: {}", a.contact())],
            SDP_OFFER,
        ),
    );
    let r = sim.responses(b.addr);
    let finals: Vec<&Response> = r.iter().filter(|r| r.status >= 200).collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].headers.call_id, est.b_inv.headers.call_id);
    assert_eq!(finals[0].body, SDP_OFFER.as_bytes());
    sim.send(b.addr, &est.req_b(&mut b, "ACK", 1, ""));
    let ack = sim.requests(a.addr);
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].method, Method::Ack);
    assert_eq!(ack[0].headers.cseq.seq, re.headers.cseq.seq);
    // Then A hangs up; CSeq keeps counting on B's leg.
    sim.send(a.addr, &est.req_a(&mut a, "BYE", 3, ""));
    let bye = sim.requests(b.addr);
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].method, Method::Bye);
}

#[test]
fn unacked_200_is_retransmitted_then_both_legs_hung_up() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(
        b.addr,
        &response(
            &inv,
            200,
            Some("bt"),
            &[format!("Contact: {}", b.contact())],
            SDP_ANSWER,
        ),
    );
    sim.take(b.addr);
    assert_eq!(sim.statuses(a.addr), vec![200]);
    sim.advance(2_000);
    let re = sim.statuses(a.addr);
    assert!(re.len() >= 2 && re.iter().all(|s| *s == 200), "{re:?}");
    sim.advance(31_000);
    let to_a = sim.take(a.addr);
    assert!(
        to_a.iter()
            .any(|m| matches!(m, pbx_core::sip::Message::Request(r) if r.method == Method::Bye)),
        "{to_a:?}"
    );
    let to_b = sim.requests(b.addr);
    assert!(to_b.iter().any(|r| r.method == Method::Bye));
    let cdr = sim.cdrs();
    assert_eq!(cdr.len(), 1);
    assert_eq!(cdr[0].disposition, Disposition::Answered);
    assert_drained(&mut sim);
}

#[test]
fn acked_200_stops_retransmission() {
    let mut sim = Sim::new();
    let (mut a, mut b) = phones(&mut sim);
    let _est = establish(&mut sim, &mut a, &mut b);
    sim.advance(100_000);
    assert!(sim.take(a.addr).is_empty());
    assert!(sim.take(b.addr).is_empty());
    assert_eq!(
        sim.ep.calls().len(),
        1,
        "the call survives its transactions"
    );
    assert_eq!(sim.ep.transactions(), 0);
}

#[test]
fn retransmissions_are_absorbed() {
    let mut sim = Sim::new();
    let (mut a, b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    sim.take(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(a.addr, &leg.invite_text);
    assert_eq!(sim.statuses(a.addr), vec![100], "last response re-sent");
    assert!(sim.take(b.addr).is_empty(), "no second call");
    assert_eq!(sim.ep.calls().len(), 1);
    assert_eq!(sim.ep.counters().calls_started, 1);
    let ok = response(
        &inv,
        200,
        Some("bt"),
        &[format!("Contact: {}", b.contact())],
        SDP_ANSWER,
    );
    sim.send(b.addr, &ok);
    let first = sim.requests(b.addr);
    assert_eq!(first.len(), 1);
    sim.send(b.addr, &ok);
    let second = sim.requests(b.addr);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].method, Method::Ack);
    assert_eq!(second[0].headers.cseq, first[0].headers.cseq);
    assert_eq!(
        sim.statuses(a.addr).len(),
        1,
        "A is told once (then by Timer G)"
    );
}

// ---------------------------------------------------------------------------------------------
// Odd requests
// ---------------------------------------------------------------------------------------------

#[test]
fn options_unknown_methods_malformed_and_strays() {
    let mut sim = Sim::new();
    let mut p = Phone::new("100", A_ADDR);
    let via = p.via();
    sim.send(
        p.addr,
        &request(
            "OPTIONS",
            "sip:pbx.test",
            &via,
            "<sip:100@pbx.test>;tag=o",
            "<sip:pbx.test>",
            "op1",
            1,
            &[],
            "",
        ),
    );
    let r = sim.responses(p.addr);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    let allow = r[0].headers.get("Allow").unwrap();
    for m in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"] {
        assert!(allow.contains(m), "{allow}");
    }
    let via = p.via();
    sim.send(
        p.addr,
        &request(
            "FROBNICATE",
            "sip:pbx.test",
            &via,
            "<sip:100@pbx.test>;tag=o",
            "<sip:pbx.test>",
            "op2",
            1,
            &[],
            "",
        ),
    );
    assert_eq!(sim.statuses(p.addr), vec![501]);
    // Bad CSeq number, but the headers needed for an answer are there.
    let bad = format!("INVITE sip:200@pbx.test SIP/2.0\r\nVia: {}\r\nFrom: <sip:100@pbx.test>;tag=1\r\nTo: <sip:200@pbx.test>\r\nCall-ID: bad1\r\nCSeq: abc INVITE\r\nContent-Length: 0\r\n\r\n", p.via());
    sim.send(p.addr, &bad);
    // The 400 echoes the broken CSeq, so it may not parse back: look at the text.
    let mut texts: Vec<String> = sim
        .take(p.addr)
        .iter()
        .map(|m| String::from_utf8_lossy(&pbx_core::sip::wire::emit(m)).into_owned())
        .collect();
    texts.extend(
        sim.raw
            .drain(..)
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned()),
    );
    assert_eq!(texts.len(), 1);
    assert!(texts[0].starts_with("SIP/2.0 400 "), "{}", texts[0]);
    assert!(texts[0].contains("Call-ID: bad1"), "{}", texts[0]);
    assert_eq!(sim.ep.counters().malformed, 1);
    // A response to nothing.
    let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnothing\r\nFrom: <sip:1@x>;tag=1\r\nTo: <sip:2@x>;tag=2\r\nCall-ID: nothing\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    sim.send(p.addr, stray);
    assert!(sim.inbox.values().all(|q| q.is_empty()));
    // Garbage with nothing recognisable: dropped.
    sim.send(p.addr, "\x01\x02hello");
    assert!(sim.take(p.addr).is_empty());
    // Keep-alive: nothing.
    sim.send(p.addr, "\r\n\r\n");
    assert!(sim.take(p.addr).is_empty());
    // In-dialog request for no dialog.
    let via = p.via();
    sim.send(
        p.addr,
        &request(
            "BYE",
            "sip:pbx.test",
            &via,
            "<sip:100@pbx.test>;tag=o",
            "<sip:200@pbx.test>;tag=zz",
            "nodialog",
            1,
            &[],
            "",
        ),
    );
    assert_eq!(sim.statuses(p.addr), vec![481]);
}

#[test]
fn max_forwards_zero_is_483() {
    let mut sim = Sim::new();
    let mut p = Phone::new("100", A_ADDR);
    let text = request(
        "OPTIONS",
        "sip:pbx.test",
        &p.via(),
        "<sip:100@pbx.test>;tag=o",
        "<sip:pbx.test>",
        "mf",
        1,
        &[],
        "",
    )
    .replace("Max-Forwards: 70", "Max-Forwards: 0");
    sim.send(p.addr, &text);
    assert_eq!(sim.statuses(p.addr), vec![483]);
    let text = request(
        "INVITE",
        "sip:200@pbx.test",
        &p.via(),
        "<sip:100@pbx.test>;tag=o",
        "<sip:200@pbx.test>",
        "mf2",
        1,
        &[],
        SDP_OFFER,
    )
    .replace("Max-Forwards: 70", "Max-Forwards: 0");
    sim.send(p.addr, &text);
    assert_eq!(sim.statuses(p.addr), vec![483]);
}

// ---------------------------------------------------------------------------------------------
// Scale
// ---------------------------------------------------------------------------------------------

#[test]
fn thousand_calls_leave_nothing_behind() {
    let mut sim = Sim::new();
    let (mut a, mut b) = phones(&mut sim);
    let mut seen_b_ids = BTreeSet::new();
    for i in 0..1_000u32 {
        let est = establish(&mut sim, &mut a, &mut b);
        assert!(seen_b_ids.insert(est.b_inv.headers.call_id.clone()));
        sim.now += 10;
        match i % 3 {
            0 => {
                sim.send(a.addr, &est.req_a(&mut a, "BYE", 3, ""));
                let bye = sim.requests(b.addr).remove(0);
                sim.send(b.addr, &response(&bye, 200, None, &[], ""));
                sim.take(a.addr);
            }
            1 => {
                sim.send(b.addr, &est.req_b(&mut b, "BYE", 1, ""));
                let bye = sim.requests(a.addr).remove(0);
                sim.send(a.addr, &response(&bye, 200, None, &[], ""));
                sim.take(b.addr);
            }
            _ => {
                // Busy call instead.
                let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
                let inv = sim.requests(b.addr).remove(0);
                sim.send(b.addr, &response(&inv, 486, Some("busy"), &[], ""));
                let r = sim.responses(a.addr);
                let busy = r.iter().find(|r| r.status == 486).unwrap();
                sim.send(
                    a.addr,
                    &request(
                        "ACK",
                        &leg.ruri,
                        &leg.via,
                        &leg.from,
                        &busy.headers.to.to_string(),
                        &leg.call_id,
                        2,
                        &[],
                        "",
                    ),
                );
                sim.send(a.addr, &est.req_a(&mut a, "BYE", 3, ""));
                let bye = sim.requests(b.addr);
                let bye = bye.iter().find(|r| r.method == Method::Bye).unwrap();
                sim.send(b.addr, &response(bye, 200, None, &[], ""));
                sim.take(a.addr);
            }
        }
        if i % 100 == 0 {
            sim.advance(1_000);
            sim.take(a.addr);
            sim.take(b.addr);
        }
    }
    assert!(sim.ep.calls().is_empty());
    let cdrs = sim.cdrs();
    assert_eq!(cdrs.len(), 1_000 + 333);
    assert_eq!(
        cdrs.iter()
            .filter(|c| c.disposition == Disposition::Busy)
            .count(),
        333
    );
    assert_drained(&mut sim);
}
