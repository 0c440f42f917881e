//! Busy lamps and presence as a watching phone sees them, on the simulated network: an
//! extension with no phone registered is offline (closed) until a phone registers and
//! again when its binding is removed or expires; an in-order ring group lights only the
//! lamp of the member whose phones ring.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use pbx_core::endpoint::{RingGroup, RingStrategy};
use pbx_core::sip::{Message, Method, Request};

use support::*;

/// The watching phone: extension 200.
fn watcher(sim: &mut Sim) -> Phone {
    let mut w = Phone::new("200", "192.168.1.20:5060");
    register(sim, &mut w, 3600);
    w
}

/// `w` subscribes to `package` of extension `ext` (through the challenge); returns the
/// subscription's Call-ID and the body of its first NOTIFY (answered 200).
fn subscribe(sim: &mut Sim, w: &mut Phone, ext: &str, package: &str) -> (String, String) {
    let call_id = w.token();
    let from = format!("<{}>;tag={}", w.aor(), w.token());
    let ruri = format!("sip:{ext}@{REALM}");
    let to = format!("<{ruri}>");
    let mut headers = vec![
        format!("Event: {package}"),
        "Expires: 3600".to_string(),
        format!("Contact: {}", w.contact()),
    ];
    // Without credentials (challenged), then with them.
    let mut cseq = 0;
    let mut send = |sim: &mut Sim, w: &mut Phone, headers: &[String]| {
        cseq += 1;
        let via = w.via();
        let text = request(
            "SUBSCRIBE",
            &ruri,
            &via,
            &from,
            &to,
            &call_id,
            cseq,
            headers,
            "",
        );
        sim.send_from(w.peer(), &text);
    };
    send(sim, w, &headers);
    let challenge = sim.responses(w.addr).remove(0);
    assert_eq!(challenge.status, 407, "{challenge:?}");
    headers.push(format!(
        "Proxy-Authorization: {}",
        w.authorize(&challenge, "SUBSCRIBE", &ruri, "MD5")
    ));
    send(sim, w, &headers);
    let got = sim.take(w.addr);
    assert!(
        got.iter()
            .any(|m| matches!(m, Message::Response(r) if r.status == 200)),
        "{got:?}"
    );
    let notifies = notifies_in(sim, w, got);
    assert_eq!(notifies.len(), 1, "{notifies:?}");
    (call_id, notifies[0].1.clone())
}

/// The NOTIFYs among `msgs` as (Call-ID, body), each answered 200; a retransmission
/// (sent again before the answer, while the clock ran) counts once.
fn notifies_in(sim: &mut Sim, w: &Phone, msgs: Vec<Message>) -> Vec<(String, String)> {
    let mut reqs: Vec<Request> = msgs
        .into_iter()
        .filter_map(|m| match m {
            Message::Request(r) if r.method == Method::Notify => Some(r),
            _ => None,
        })
        .collect();
    reqs.dedup_by(|r, p| {
        r.headers.call_id == p.headers.call_id && r.headers.cseq == p.headers.cseq
    });
    let mut out = Vec::new();
    for r in reqs {
        sim.send_from(w.peer(), &response(&r, 200, None, &[], ""));
        out.push((
            r.headers.call_id.clone(),
            String::from_utf8_lossy(&r.body).into_owned(),
        ));
    }
    out
}

/// The NOTIFY bodies `w` received since the last look, by subscription Call-ID.
fn notified(sim: &mut Sim, w: &Phone) -> Vec<(String, String)> {
    let msgs = sim.take(w.addr);
    notifies_in(sim, w, msgs)
}

/// Bodies of the NOTIFYs of subscription `call_id`.
fn of(notifies: &[(String, String)], call_id: &str) -> Vec<String> {
    notifies
        .iter()
        .filter(|(c, _)| c == call_id)
        .map(|(_, b)| b.clone())
        .collect()
}

#[test]
fn presence_is_closed_until_a_phone_registers_and_again_when_the_binding_goes() {
    let mut sim = Sim::new();
    let mut w = watcher(&mut sim);
    let (presence, first) = subscribe(&mut sim, &mut w, "101", "presence");
    assert!(
        first.contains("<basic>closed</basic>") && first.contains("Offline"),
        "no phone of 101 is registered: {first}"
    );
    let (lamp, dark) = subscribe(&mut sim, &mut w, "101", "dialog");
    assert!(!dark.contains("<dialog "), "{dark}");

    // 101's phone registers: presence opens; the lamp has nothing new to say.
    let mut b = Phone::new("101", "192.168.1.11:5060");
    register(&mut sim, &mut b, 60);
    let n = notified(&mut sim, &w);
    let bodies = of(&n, &presence);
    assert_eq!(bodies.len(), 1, "{n:?}");
    assert!(bodies[0].contains("<basic>open</basic>"), "{}", bodies[0]);
    assert!(of(&n, &lamp).is_empty(), "the lamp stays as it was: {n:?}");

    // A refresh changes nothing a watcher sees.
    sim.advance(10_000);
    register(&mut sim, &mut b, 60);
    assert!(notified(&mut sim, &w).is_empty());

    // The phone unregisters: closed again.
    register(&mut sim, &mut b, 0);
    let bodies = of(&notified(&mut sim, &w), &presence);
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].contains("<basic>closed</basic>"), "{}", bodies[0]);

    // It registers for 60 s and lets the binding expire: closed when it does.
    register(&mut sim, &mut b, 60);
    assert!(of(&notified(&mut sim, &w), &presence)[0].contains("<basic>open</basic>"));
    sim.advance(59_000);
    assert!(notified(&mut sim, &w).is_empty(), "still registered");
    sim.advance(2_000);
    let bodies = of(&notified(&mut sim, &w), &presence);
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert!(bodies[0].contains("<basic>closed</basic>"), "{}", bodies[0]);
}

#[test]
fn an_in_order_group_lights_only_the_member_whose_phones_ring() {
    let mut cfg = config();
    cfg.groups = vec![RingGroup {
        number: "600".to_string(),
        members: vec!["101".to_string(), "102".to_string()],
        strategy: RingStrategy::InOrder,
        member_timeout_ms: 10_000,
        timeout_ms: 60_000,
        voicemail: None,
    }];
    let mut sim = Sim::with_config(cfg);
    let mut w = watcher(&mut sim);
    let mut b = Phone::new("101", "192.168.1.11:5060");
    let mut c = Phone::new("102", "192.168.1.12:5060");
    register(&mut sim, &mut b, 3600);
    register(&mut sim, &mut c, 3600);
    let (lamp_b, _) = subscribe(&mut sim, &mut w, "101", "dialog");
    let (lamp_c, _) = subscribe(&mut sim, &mut w, "102", "dialog");
    let mut a = Phone::new("100", "192.168.1.10:5060");
    register(&mut sim, &mut a, 3600);

    let _leg = invite(&mut sim, &mut a, "600", SDP_OFFER);
    let n = notified(&mut sim, &w);
    let b_lamp = of(&n, &lamp_b);
    assert!(
        b_lamp
            .last()
            .is_some_and(|x| x.contains("<state>early</state>")),
        "101 rings first: {n:?}"
    );
    assert!(of(&n, &lamp_c).is_empty(), "102 does not ring yet: {n:?}");
    assert_eq!(sim.requests(c.addr).len(), 0);

    // 101's time is up: its lamp goes dark, 102's lights.
    let inv_b = sim.requests(b.addr).remove(0);
    sim.send(b.addr, &response(&inv_b, 180, Some("b1"), &[], ""));
    let _ = notified(&mut sim, &w);
    sim.advance(10_000);
    let n = notified(&mut sim, &w);
    let b_lamp = of(&n, &lamp_b);
    let c_lamp = of(&n, &lamp_c);
    assert!(
        b_lamp.last().is_some_and(|x| !x.contains("<dialog ")),
        "101 no longer rings: {n:?}"
    );
    assert!(
        c_lamp
            .last()
            .is_some_and(|x| x.contains("<state>early</state>")),
        "102 rings now: {n:?}"
    );
}
