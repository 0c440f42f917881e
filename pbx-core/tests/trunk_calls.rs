//! Trunks in the call core, sans-IO: registration with the provider's challenge, outbound
//! calls answering the provider's challenge, failover from trunk to trunk, inbound DIDs,
//! survival when every trunk is down, and the toll-fraud gate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pbx_core::dialplan::{Dialplan, Pattern, Route, Target};
use pbx_core::endpoint::{CallGate, EndpointConfig, Event, Forwarding, GateDecision};
use pbx_core::sip::auth::{parse_credentials, Authenticator, NonceConfig, StoredSecret};
use pbx_core::sip::{Method, Peer, Request, Transport};
use pbx_core::trunk::{Health, TrunkConfig};
use pbx_core::Millis;
use support::*;

const T1: &str = "203.0.113.1:5060";
const T2: &str = "203.0.113.2:5060";
const PROVIDER_REALM: &str = "provider.example";

fn trunk(name: &str, addr: &str, register: bool, pings_ms: u64) -> TrunkConfig {
    TrunkConfig {
        name: name.to_string(),
        domain: PROVIDER_REALM.to_string(),
        transport: Transport::Udp,
        targets: vec![addr.parse().unwrap()],
        register,
        username: "4930100".to_string(),
        auth_username: None,
        password: "trunkpw".to_string(),
        expires_secs: 600,
        options_interval_ms: pings_ms,
        down_after: 2,
        up_after: 1,
        retry_ms: 5_000,
        caller_id: Some("4930100".to_string()),
        silence_timeout_ms: 1_000,
        inbound_from: Vec::new(),
        inbound_calls_per_second: 10,
    }
}

/// An inbound INVITE for `did` from `src` (Via says UDP), with an offer.
fn did_invite(src: &str, did: &str, call_id: &str) -> String {
    request(
        "INVITE",
        &format!("sip:{did}@10.0.0.1"),
        &format!("SIP/2.0/UDP {src};branch=z9hG4bK{call_id}"),
        "<sip:0301234567@provider.example>;tag=pv",
        &format!("<sip:{did}@provider.example>"),
        call_id,
        1,
        &[format!("Contact: <sip:0301234567@{src}>")],
        SDP_OFFER,
    )
}

fn config_with(trunks: Vec<TrunkConfig>) -> EndpointConfig {
    let mut cfg = config();
    cfg.dialplan = Dialplan {
        routes: vec![Route {
            name: "national".to_string(),
            patterns: vec![Pattern::parse("0[1-9]X.").unwrap()],
            strip: 0,
            prepend: String::new(),
            trunks: trunks.iter().map(|t| t.name.clone()).collect(),
            extensions: Vec::new(),
            caller_id: None,
        }],
        emergency: vec!["112".to_string()],
        dids: vec![("4930100".to_string(), Target::Extension("101".to_string()))],
        default_inbound: None,
    };
    cfg.trunks = trunks;
    cfg
}

/// The provider's side of digest authentication.
fn provider_auth() -> Authenticator {
    Authenticator::new(PROVIDER_REALM, [9; 32], 1, NonceConfig::default())
}

fn provider_secret() -> StoredSecret {
    StoredSecret::new("4930100", PROVIDER_REALM, "trunkpw")
}

fn invites_to(sim: &mut Sim, addr: &str) -> Vec<Request> {
    sim.requests(addr.parse().unwrap())
        .into_iter()
        .filter(|r| r.method == pbx_core::sip::Method::Invite)
        .collect()
}

fn challenge(sim: &mut Sim, auth: &mut Authenticator, from: &str, req: &Request, status: u16) {
    let name = if status == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    let headers: Vec<String> = auth
        .challenge(sim.now, false)
        .into_iter()
        .map(|v| format!("{name}: {v}"))
        .collect();
    sim.send(
        from.parse().unwrap(),
        &response(req, status, Some("prov1"), &headers, ""),
    );
}

fn verify(auth: &mut Authenticator, now: Millis, req: &Request, header: &str) {
    let creds = req
        .headers
        .get_all(header)
        .find_map(|v| parse_credentials(v).ok())
        .unwrap_or_else(|| panic!("no {header} in {req:?}"));
    let ha1 = provider_secret().ha1(creds.algorithm).to_string();
    auth.verify(now, &creds, req.method.as_str(), &ha1)
        .unwrap_or_else(|e| panic!("provider rejects our credentials: {e:?}"));
}

#[test]
fn registers_with_the_providers_challenge_and_refreshes() {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, true, 0)]));
    sim.advance(10);
    let regs = sim.requests(T1.parse().unwrap());
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(regs[0].method, pbx_core::sip::Method::Register);
    assert_eq!(regs[0].headers.to.uri.user(), Some("4930100"));
    let mut auth = provider_auth();
    challenge(&mut sim, &mut auth, T1, &regs[0], 401);
    let regs = sim.requests(T1.parse().unwrap());
    assert_eq!(regs.len(), 1, "one authenticated retry: {regs:?}");
    verify(&mut auth, sim.now, &regs[0], "Authorization");
    sim.send(
        T1.parse().unwrap(),
        &response(
            &regs[0],
            200,
            Some("prov2"),
            &["Expires: 120".to_string()],
            "",
        ),
    );
    let status = sim.ep.trunk_status();
    assert_eq!(status[0].health, Health::Up, "{status:?}");
    assert_eq!(status[0].registered, Some(true));
    assert!(!sim.ep.survival());
    // Refreshed before it expires.
    sim.advance(65_000);
    let regs = sim.requests(T1.parse().unwrap());
    assert!(
        regs.iter()
            .any(|r| r.method == pbx_core::sip::Method::Register),
        "refresh within half the interval: {regs:?}"
    );
}

#[test]
fn outbound_call_answers_the_providers_challenge() {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, false, 0)]));
    let mut a = Phone::new("100", "192.168.1.10:5060");
    let leg = invite(&mut sim, &mut a, "0301234567", SDP_OFFER);
    let inv = invites_to(&mut sim, T1);
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!(inv[0].uri.user(), Some("0301234567"));
    assert_eq!(inv[0].headers.from.uri.user(), Some("4930100"));
    let mut auth = provider_auth();
    challenge(&mut sim, &mut auth, T1, &inv[0], 407);
    let msgs = sim.take(T1.parse().unwrap());
    let retry: Vec<&Request> = msgs
        .iter()
        .filter_map(|m| match m {
            pbx_core::sip::Message::Request(r) if r.method == pbx_core::sip::Method::Invite => {
                Some(r)
            }
            _ => None,
        })
        .collect();
    assert_eq!(retry.len(), 1, "{msgs:?}");
    assert!(retry[0].headers.cseq.seq > inv[0].headers.cseq.seq);
    assert_eq!(retry[0].headers.call_id, inv[0].headers.call_id);
    verify(&mut auth, sim.now, retry[0], "Proxy-Authorization");
    let retry = retry[0].clone();
    sim.send(
        T1.parse().unwrap(),
        &response(&retry, 180, Some("far"), &[], ""),
    );
    sim.send(
        T1.parse().unwrap(),
        &response(
            &retry,
            200,
            Some("far"),
            &[format!("Contact: <sip:far@{T1}>")],
            SDP_ANSWER,
        ),
    );
    let statuses = sim.statuses(a.addr);
    assert!(statuses.contains(&180), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert_eq!(sim.ep.calls().len(), 1);
    let _ = leg;
}

#[test]
fn a_silent_trunk_fails_over_to_the_next_and_a_5xx_at_once() {
    let mut sim = Sim::with_config(config_with(vec![
        trunk("t1", T1, false, 0),
        trunk("t2", T2, false, 0),
    ]));
    let mut a = Phone::new("100", "192.168.1.10:5060");
    invite(&mut sim, &mut a, "0301234567", SDP_OFFER);
    assert_eq!(invites_to(&mut sim, T1).len(), 1);
    // t1 says nothing at all: after its silence timeout the call moves to t2.
    sim.advance(900);
    assert!(
        invites_to(&mut sim, T2).is_empty(),
        "not before the timeout"
    );
    sim.advance(200);
    let inv2 = invites_to(&mut sim, T2);
    assert_eq!(inv2.len(), 1, "failover to t2 after 1 s of silence");
    sim.send(
        T2.parse().unwrap(),
        &response(
            &inv2[0],
            200,
            Some("far2"),
            &[format!("Contact: <sip:x@{T2}>")],
            SDP_ANSWER,
        ),
    );
    assert!(sim.statuses(a.addr).contains(&200));

    // A second call: t1 answers 503 -> t2 at once.
    let mut b = Phone::new("102", "192.168.1.12:5060");
    invite(&mut sim, &mut b, "0301234568", SDP_OFFER);
    let inv1 = invites_to(&mut sim, T1);
    let inv1 = inv1.last().expect("INVITE to t1").clone();
    sim.send(
        T1.parse().unwrap(),
        &response(&inv1, 503, Some("busy"), &[], ""),
    );
    let inv2 = invites_to(&mut sim, T2);
    assert_eq!(inv2.len(), 1, "503 fails over at once");
    sim.send(
        T2.parse().unwrap(),
        &response(&inv2[0], 486, Some("b"), &[], ""),
    );
    // A 486 is the callee's answer, not the trunk's fault: it reaches the caller.
    assert!(sim.statuses(b.addr).contains(&486));
}

#[test]
fn a_call_tries_the_trunks_next_address_before_the_next_trunk() {
    const T1B: &str = "203.0.113.9:5070";
    let mut multi = trunk("t1", T1, false, 0);
    multi.targets.push(T1B.parse().unwrap());
    let mut sim = Sim::with_config(config_with(vec![multi, trunk("t2", T2, false, 0)]));
    let mut a = Phone::new("100", "192.168.1.10:5060");
    invite(&mut sim, &mut a, "0301234567", SDP_OFFER);
    assert_eq!(invites_to(&mut sim, T1).len(), 1);
    // The first address is silent: the same trunk's second address, not t2.
    sim.advance(1_100);
    let inv = invites_to(&mut sim, T1B);
    assert_eq!(inv.len(), 1, "failover to t1's second address");
    assert!(invites_to(&mut sim, T2).is_empty());
    sim.send(
        T1B.parse().unwrap(),
        &response(
            &inv[0],
            200,
            Some("far1b"),
            &[format!("Contact: <sip:x@{T1B}>")],
            SDP_ANSWER,
        ),
    );
    assert!(sim.statuses(a.addr).contains(&200));
    let status = &sim.ep.trunk_status()[0];
    assert_eq!(
        status.current,
        Some(T1B.parse().unwrap()),
        "the trunk moved"
    );

    // The next call starts at the address that worked; its 503 sends it to the other
    // address of t1, and a 503 there to t2.
    let mut b = Phone::new("102", "192.168.1.12:5060");
    invite(&mut sim, &mut b, "0301234568", SDP_OFFER);
    let inv = invites_to(&mut sim, T1B);
    assert_eq!(inv.len(), 1, "straight to the current address");
    // (The first call's silent INVITE may still be retransmitted to T1.)
    let ours = |v: Vec<Request>| -> Vec<Request> {
        v.into_iter()
            .filter(|r| r.uri.user() == Some("0301234568"))
            .collect()
    };
    assert!(ours(invites_to(&mut sim, T1)).is_empty());
    sim.send(
        T1B.parse().unwrap(),
        &response(&inv[0], 503, Some("o"), &[], ""),
    );
    let inv = ours(invites_to(&mut sim, T1));
    assert_eq!(inv.len(), 1, "503: the trunk's other address");
    sim.send(
        T1.parse().unwrap(),
        &response(&inv[0], 503, Some("o"), &[], ""),
    );
    assert_eq!(
        invites_to(&mut sim, T2).len(),
        1,
        "every address refused: t2"
    );
}

#[test]
fn inbound_did_rings_the_mapped_extension() {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, false, 0)]));
    let mut p = Phone::new("101", "192.168.1.11:5060");
    register(&mut sim, &mut p, 600);
    let text = request(
        "INVITE",
        "sip:4930100@10.0.0.1",
        &format!("SIP/2.0/UDP {T1};branch=z9hG4bKin1"),
        "<sip:0301234567@provider.example>;tag=pv",
        "<sip:4930100@provider.example>",
        "inbound-1",
        1,
        &[format!("Contact: <sip:0301234567@{T1}>")],
        SDP_OFFER,
    );
    sim.send(T1.parse().unwrap(), &text);
    let to_phone = sim.requests(p.addr);
    assert!(
        to_phone
            .iter()
            .any(|r| r.method == pbx_core::sip::Method::Invite),
        "DID 4930100 rings 101 without a challenge: {to_phone:?}"
    );
    let statuses = sim.statuses(T1.parse().unwrap());
    assert!(!statuses.contains(&407), "{statuses:?}");
    // An unknown DID (no default) is refused.
    let text = request(
        "INVITE",
        "sip:4930999@10.0.0.1",
        &format!("SIP/2.0/UDP {T1};branch=z9hG4bKin2"),
        "<sip:0301234567@provider.example>;tag=pv2",
        "<sip:4930999@provider.example>",
        "inbound-2",
        1,
        &[],
        SDP_OFFER,
    );
    sim.send(T1.parse().unwrap(), &text);
    assert!(sim.statuses(T1.parse().unwrap()).contains(&404));
}

#[test]
fn the_providers_address_from_another_port_or_transport_is_challenged() {
    let mut tls = trunk("t1", "203.0.113.1:5061", false, 0);
    tls.transport = Transport::Tls;
    let mut sim = Sim::with_config(config_with(vec![tls, trunk("t2", T2, false, 0)]));
    let mut p = Phone::new("101", "192.168.1.11:5060");
    register(&mut sim, &mut p, 600);
    // Spoofed UDP from the TLS trunk's address and port, and from the UDP trunk's address
    // but another port: ordinary sources, challenged, nothing rings.
    for (i, src) in ["203.0.113.1:5061", "203.0.113.2:5070"]
        .into_iter()
        .enumerate()
    {
        sim.send(
            src.parse().unwrap(),
            &did_invite(src, "4930100", &format!("spoof-{i}")),
        );
        let statuses = sim.statuses(src.parse().unwrap());
        assert!(statuses.contains(&407), "{src}: {statuses:?}");
        assert!(
            !sim.requests(p.addr)
                .iter()
                .any(|r| r.method == pbx_core::sip::Method::Invite),
            "{src} rang the DID"
        );
    }
    // The same INVITE over TLS from the trunk's address is the provider's.
    let tls_src = Peer {
        transport: Transport::Tls,
        addr: "203.0.113.1:41000".parse().unwrap(),
    };
    assert!(sim.ep.is_trunk_source(tls_src));
    let text = did_invite("203.0.113.1:41000", "4930100", "real-tls")
        .replace("SIP/2.0/UDP", "SIP/2.0/TLS");
    sim.ep.handle(sim.now, tls_src, text.as_bytes());
    sim.pump();
    assert!(sim
        .requests(p.addr)
        .iter()
        .any(|r| r.method == pbx_core::sip::Method::Invite));
}

#[test]
fn inbound_calls_over_the_trunks_cap_get_503_with_retry_after_and_one_report() {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, false, 0)]));
    let t1: SocketAddr = T1.parse().unwrap();
    // A burst of 25 INVITEs for an unknown DID: 10 reach the dialplan (404), 15 get 503.
    for i in 0..25 {
        sim.send(t1, &did_invite(T1, "4930999", &format!("burst-{i}")));
    }
    let responses = sim.responses(t1);
    let count = |code: u16| responses.iter().filter(|r| r.status == code).count();
    assert_eq!(count(404), 10, "{:?}", sim.statuses(t1));
    assert_eq!(count(503), 15);
    assert!(responses
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.headers.get("Retry-After") == Some("1")));
    let reports: Vec<&Event> = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::TrunkCallsRefused { .. }))
        .collect();
    assert_eq!(reports.len(), 1, "one report per minute: {reports:?}");
    assert!(matches!(
        reports[0],
        Event::TrunkCallsRefused { trunk, refused: 1, limit: 10, .. } if trunk == "t1"
    ));
    assert_eq!(sim.ep.trunk_status()[0].inbound_refused, 15);
    // A second later the trunk's calls pass again.
    sim.advance(1_000);
    sim.take(t1);
    sim.send(t1, &did_invite(T1, "4930999", "after"));
    assert!(sim.statuses(t1).contains(&404));
}

#[test]
fn survival_when_every_trunk_is_down_and_emergency_still_goes_out() {
    let mut sim = Sim::with_config(config_with(vec![
        trunk("t1", T1, false, 1_000),
        trunk("t2", T2, false, 1_000),
    ]));
    // Nobody answers the pings: both trunks go down.
    sim.advance(40_000);
    assert!(sim.ep.survival(), "{:?}", sim.ep.trunk_status());
    sim.take(T1.parse().unwrap());
    sim.take(T2.parse().unwrap());
    let mut a = Phone::new("100", "192.168.1.10:5060");
    invite(&mut sim, &mut a, "0301234567", SDP_OFFER);
    assert!(
        sim.statuses(a.addr).contains(&503),
        "outside calls fail fast"
    );
    assert!(invites_to(&mut sim, T1).is_empty());
    // Local calls go on.
    let mut p = Phone::new("101", "192.168.1.11:5060");
    register(&mut sim, &mut p, 600);
    invite(&mut sim, &mut a, "101", SDP_OFFER);
    assert!(sim
        .requests(p.addr)
        .iter()
        .any(|r| r.method == pbx_core::sip::Method::Invite));
    // Emergency numbers are tried on the trunks all the same.
    sim.take(a.addr);
    invite(&mut sim, &mut a, "112", SDP_OFFER);
    assert_eq!(invites_to(&mut sim, T1).len(), 1, "112 goes out on t1");
}

#[derive(Debug)]
struct RefuseAll;

impl CallGate for RefuseAll {
    fn check(&mut self, _: Millis, _: &str, _: &str, _: Option<&str>) -> GateDecision {
        GateDecision::Refuse {
            reason: "Premium Rate Not Allowed".to_string(),
            lock: true,
        }
    }
    fn ended(&mut self, _: Millis, _: &str, _: &str, _: Option<&str>, _: u64) {}
}

#[test]
fn the_toll_fraud_gate_refuses_but_never_emergency_calls() {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, false, 0)]));
    sim.ep.set_gate(Box::new(RefuseAll));
    let mut a = Phone::new("100", "192.168.1.10:5060");
    invite(&mut sim, &mut a, "09001234567", SDP_OFFER);
    let refused = sim.responses(a.addr);
    let r403 = refused.iter().find(|r| r.status == 403).expect("403");
    assert_eq!(r403.reason, "Premium Rate Not Allowed");
    assert!(invites_to(&mut sim, T1).is_empty());
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::CallRefused { lock: true, ext, .. } if ext == "100")));
    invite(&mut sim, &mut a, "112", SDP_OFFER);
    assert_eq!(
        invites_to(&mut sim, T1).len(),
        1,
        "emergency bypasses the gate"
    );
    let _: SocketAddr = T2.parse().unwrap();
}

#[test]
fn an_extensions_own_caller_id_beats_the_trunks() {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, false, 0)]));
    sim.ep.set_caller_id("100", Some("4930199".to_string()));
    let mut a = Phone::new("100", "192.168.1.10:5060");
    invite(&mut sim, &mut a, "0301234567", SDP_OFFER);
    let inv = invites_to(&mut sim, T1);
    assert_eq!(inv[0].headers.from.uri.user(), Some("4930199"));
    assert!(inv[0]
        .headers
        .get("P-Asserted-Identity")
        .is_some_and(|v| v.contains("4930199")));
    // Another extension presents the trunk's number.
    let mut b = Phone::new("101", "192.168.1.11:5060");
    invite(&mut sim, &mut b, "0301234568", SDP_OFFER);
    let inv = invites_to(&mut sim, T1);
    assert_eq!(inv[0].headers.from.uri.user(), Some("4930100"));
}

/// A gate that allows every call and writes down what it is asked and told.
#[derive(Debug, Clone, Default)]
struct Ledger(Arc<Mutex<Vec<String>>>);

impl Ledger {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl CallGate for Ledger {
    fn check(&mut self, _: Millis, ext: &str, dialled: &str, _: Option<&str>) -> GateDecision {
        self.0
            .lock()
            .unwrap()
            .push(format!("check {ext} {dialled}"));
        GateDecision::Allow
    }
    fn ended(&mut self, _: Millis, ext: &str, dialled: &str, _: Option<&str>, talk: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("ended {ext} {dialled} {talk}"));
    }
}

/// The requests the box sent to trunk `T1`, split into INVITEs and CANCELs.
fn to_t1(sim: &mut Sim) -> (Vec<Request>, Vec<Request>) {
    let (invites, cancels): (Vec<Request>, Vec<Request>) = sim
        .requests(T1.parse().unwrap())
        .into_iter()
        .filter(|r| matches!(r.method, Method::Invite | Method::Cancel))
        .partition(|r| r.method == Method::Invite);
    (invites, cancels)
}

/// The provider gives up on `inv` after the box's CANCEL: 200 to the CANCEL, 487.
fn cancelled(sim: &mut Sim, inv: &Request, cancel: &Request) {
    let t1: SocketAddr = T1.parse().unwrap();
    sim.send(t1, &response(cancel, 200, None, &[], ""));
    sim.send(t1, &response(inv, 487, Some("pv"), &[], ""));
}

/// A box with trunk t1 and the gate `Ledger`, where 101 (no phone registered) forwards on
/// no answer to `list`, 5 s each.
fn follow_me_box(list: &[&str]) -> (Sim, Ledger) {
    let mut sim = Sim::with_config(config_with(vec![trunk("t1", T1, false, 0)]));
    let ledger = Ledger::default();
    sim.ep.set_gate(Box::new(ledger.clone()));
    let mut forwarding = Forwarding {
        no_answer_ms: 5_000,
        ..Forwarding::default()
    };
    forwarding.set_no_answer_list(Some(&list.join(",")));
    sim.ep.set_forwarding("101", forwarding);
    (sim, ledger)
}

#[test]
fn follow_me_tries_each_outside_number_in_turn_each_judged_by_the_gate() {
    let (mut sim, ledger) = follow_me_box(&["0301234567", "0301234568", "0301234569"]);
    let t1: SocketAddr = T1.parse().unwrap();
    let mut a = Phone::new("100", "192.168.1.10:5060");
    // 101 has no phone registered: its list starts at once.
    let leg = invite(&mut sim, &mut a, "101", SDP_OFFER);
    let (invites, _) = to_t1(&mut sim);
    assert_eq!(invites.len(), 1, "{invites:?}");
    assert_eq!(invites[0].uri.user(), Some("0301234567"));
    assert_eq!(ledger.lines(), vec!["check 101 0301234567"]);
    sim.send(t1, &response(&invites[0], 180, Some("pv"), &[], ""));
    sim.advance(4_999);
    assert_eq!(to_t1(&mut sim), (Vec::new(), Vec::new()), "still ringing");

    // Its time is up: cancelled, and the second number rings, counted as the only one.
    sim.advance(1);
    let (second, cancels) = to_t1(&mut sim);
    assert_eq!(cancels.len(), 1, "the first number is cancelled");
    assert_eq!(cancels[0].headers.call_id, invites[0].headers.call_id);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].uri.user(), Some("0301234568"));
    cancelled(&mut sim, &invites[0], &cancels[0]);
    assert_eq!(
        ledger.lines(),
        vec![
            "check 101 0301234567",
            "ended 101 0301234567 0",
            "check 101 0301234568"
        ]
    );
    assert!(
        !sim.statuses(a.addr).iter().any(|s| *s >= 200),
        "the caller keeps waiting"
    );

    // The second answers: the caller is put through to it.
    sim.send(t1, &response(&second[0], 180, Some("pv2"), &[], ""));
    sim.advance(2_000);
    let contact = format!("Contact: <sip:0301234568@{T1}>");
    sim.send(
        t1,
        &response(&second[0], 200, Some("pv2"), &[contact], SDP_ANSWER),
    );
    let ok = sim
        .responses(a.addr)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("the caller is answered");
    assert_eq!(ok.headers.call_id, leg.call_id);
    assert!(
        to_t1(&mut sim).0.is_empty(),
        "the third number is never called"
    );
}

#[test]
fn a_follow_me_list_that_nobody_answers_ends_with_480() {
    let (mut sim, ledger) = follow_me_box(&["0301234567", "0301234568"]);
    let t1: SocketAddr = T1.parse().unwrap();
    let mut a = Phone::new("100", "192.168.1.10:5060");
    let _leg = invite(&mut sim, &mut a, "101", SDP_OFFER);
    let (first, _) = to_t1(&mut sim);
    // The first is busy: the second rings at once.
    sim.send(t1, &response(&first[0], 486, Some("pv"), &[], ""));
    let (second, _) = to_t1(&mut sim);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].uri.user(), Some("0301234568"));
    sim.send(t1, &response(&second[0], 180, Some("pv2"), &[], ""));
    assert!(!sim.statuses(a.addr).iter().any(|s| *s >= 200));
    // It does not answer within its time: no voicemail here, so 480.
    sim.advance(5_000);
    let (_, cancels) = to_t1(&mut sim);
    assert_eq!(cancels.len(), 1);
    cancelled(&mut sim, &second[0], &cancels[0]);
    assert!(sim.statuses(a.addr).contains(&480));
    let lines = ledger.lines();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("check")).count(),
        lines.iter().filter(|l| l.starts_with("ended")).count(),
        "every allowed number is reported ended: {lines:?}"
    );
}
