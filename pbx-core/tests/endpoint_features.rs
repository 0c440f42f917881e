//! Ring groups, call forwarding, transfer (REFER, with Replaces for attended transfer),
//! call pickup and hold in a three-party call, as simulated phones see them: SIP text over
//! a virtual network with a virtual clock, the relay seen through its `MediaCommand`s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod support;

use std::net::SocketAddr;

use pbx_core::cdr::Disposition;
use pbx_core::endpoint::{
    Event, Forwarding, MediaSettings, RingGroup, RingStrategy, VoicemailSettings,
};
use pbx_core::media::sdp::Sdp;
use pbx_core::media::session::{Leg, LegMedia, MediaCommand, MediaEvent, SessionId};
use pbx_core::sip::{Contact, Message, Method, Request, Response};

use support::*;

const RELAY_IP: &str = "10.0.0.1";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Where each extension's phone sits: 100 at .10, 101 at .11, ... 200 at .20.
fn addr_of(ext: &str) -> String {
    let last = match ext {
        "100" => 10,
        "101" => 11,
        "102" => 12,
        "103" => 13,
        "200" => 20,
        "201" => 21,
        other => panic!("no address for {other}"),
    };
    format!("192.168.1.{last}:5060")
}

/// A PBX with `groups`, with or without media anchoring and voicemail.
fn pbx(groups: Vec<RingGroup>, media: bool, voicemail: bool) -> Sim {
    let mut cfg = config();
    cfg.groups = groups;
    if media || voicemail {
        cfg.media = Some(MediaSettings {
            addrs: vec![RELAY_IP.parse().unwrap()],
            port_first: 30000,
            port_last: 30031,
        });
    }
    if voicemail {
        cfg.voicemail = Some(VoicemailSettings {
            dir: "/data/voicemail".into(),
            max_ms: 60_000,
            access_number: "*97".into(),
        });
    }
    Sim::with_config(cfg)
}

fn group(
    number: &str,
    members: &[&str],
    strategy: RingStrategy,
    member_timeout_ms: u64,
    timeout_ms: u64,
    voicemail: Option<&str>,
) -> RingGroup {
    RingGroup {
        number: number.to_string(),
        members: members.iter().map(|m| m.to_string()).collect(),
        strategy,
        member_timeout_ms,
        timeout_ms,
        voicemail: voicemail.map(str::to_string),
    }
}

/// The registered phone of `ext`.
fn phone(sim: &mut Sim, ext: &str) -> Phone {
    let mut p = Phone::new(ext, &addr_of(ext));
    register(sim, &mut p, 3600);
    sim.events.clear();
    p
}

/// The SDP of `p` (RTP at its address, port 4000) with direction `dir`.
fn sdp_of(p: &Phone, version: u32, dir: &str) -> String {
    let ip = p.addr.ip();
    format!(
        "v=0\r\no={} 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na={dir}\r\n",
        p.ext
    )
}

/// Where `p` receives RTP.
fn media_of(p: &Phone) -> SocketAddr {
    SocketAddr::new(p.addr.ip(), 4000)
}

fn rtp_of(body: &[u8]) -> SocketAddr {
    Sdp::parse(body)
        .unwrap_or_else(|e| panic!("bad SDP ({e}): {}", String::from_utf8_lossy(body)))
        .remote_rtp()
        .expect("audio stream")
}

fn direction_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    ["sendrecv", "sendonly", "recvonly", "inactive"]
        .into_iter()
        .find(|d| text.contains(&format!("a={d}")))
        .unwrap_or("sendrecv")
        .to_string()
}

fn contact_uri(contact: &[Contact]) -> String {
    match contact.first() {
        Some(Contact::Addr(na)) => na.uri.to_string(),
        other => panic!("no contact: {other:?}"),
    }
}

fn split(msgs: Vec<Message>) -> (Vec<Request>, Vec<Response>) {
    let mut reqs = Vec::new();
    let mut resps = Vec::new();
    for m in msgs {
        match m {
            Message::Request(r) => reqs.push(r),
            Message::Response(r) => resps.push(r),
        }
    }
    (reqs, resps)
}

/// Drains the relay commands emitted so far.
fn media_commands(sim: &mut Sim) -> Vec<MediaCommand> {
    let out = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Media(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    sim.events.retain(|e| !matches!(e, Event::Media(_)));
    out
}

/// The legs of the one `Update` (or `Open`) among `cmds` for `session`.
fn relay_legs(cmds: &[MediaCommand], session: SessionId) -> (LegMedia, LegMedia) {
    let found: Vec<(LegMedia, LegMedia)> = cmds
        .iter()
        .filter_map(|c| match c {
            MediaCommand::Open { session: s, a, b } | MediaCommand::Update { session: s, a, b }
                if *s == session =>
            {
                Some((a.clone(), b.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one Open/Update for {session}: {cmds:?}");
    found.into_iter().next().unwrap()
}

fn plays(cmds: &[MediaCommand], leg: Leg, clip: &str) -> bool {
    cmds.iter().any(|c| {
        matches!(c, MediaCommand::Play { leg: l, clips, .. } if *l == leg && clips.iter().any(|k| k == clip))
    })
}

fn stops_play(cmds: &[MediaCommand], session: SessionId, leg: Leg) -> bool {
    cmds.iter().any(
        |c| matches!(c, MediaCommand::StopPlay { session: s, leg: l } if *s == session && *l == leg),
    )
}

/// A dialog as one phone sees it (enough to send in-dialog requests).
#[derive(Debug, Clone)]
struct Dlg {
    ruri: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
}

impl Dlg {
    /// The caller's dialog once the PBX answered `leg` with `ok`.
    fn caller(leg: &ALeg, ok: &Response) -> Dlg {
        Dlg {
            ruri: contact_uri(&ok.headers.contact),
            from: leg.from.clone(),
            to: ok.headers.to.to_string(),
            call_id: leg.call_id.clone(),
            cseq: leg.cseq,
        }
    }

    /// The callee's dialog after it answered `inv` with To tag `tag`.
    fn callee(inv: &Request, tag: &str) -> Dlg {
        let mut from = inv.headers.to.clone();
        from.params.set("tag", Some(tag.to_string()));
        Dlg {
            ruri: contact_uri(&inv.headers.contact),
            from: from.to_string(),
            to: inv.headers.from.to_string(),
            call_id: inv.headers.call_id.clone(),
            cseq: 0,
        }
    }

    /// The next request of the dialog (CSeq advanced).
    fn next(&mut self, p: &mut Phone, method: &str, headers: &[String], body: &str) -> String {
        self.cseq += 1;
        let via = p.via();
        request(
            method,
            &self.ruri,
            &via,
            &self.from,
            &self.to,
            &self.call_id,
            self.cseq,
            headers,
            body,
        )
    }

    /// The ACK for the 2xx of our INVITE with CSeq `cseq`.
    fn ack(&self, p: &mut Phone, cseq: u32) -> String {
        let via = p.via();
        request(
            "ACK",
            &self.ruri,
            &via,
            &self.from,
            &self.to,
            &self.call_id,
            cseq,
            &[],
            "",
        )
    }
}

/// The To tag a phone puts on its answers.
fn tag_of(p: &Phone) -> String {
    format!("tag{}", p.ext)
}

/// The one request sent to `p` so far, which must be an INVITE.
fn invite_to(sim: &mut Sim, p: &Phone) -> Request {
    let got = sim.take(p.addr);
    let (reqs, resps) = split(got);
    assert!(resps.is_empty(), "{} got responses: {resps:?}", p.ext);
    assert_eq!(reqs.len(), 1, "{} should get one INVITE: {reqs:?}", p.ext);
    assert_eq!(reqs[0].method, Method::Invite);
    reqs.into_iter().next().unwrap()
}

fn ringing(sim: &mut Sim, p: &Phone, inv: &Request) {
    sim.send(p.addr, &response(inv, 180, Some(&tag_of(p)), &[], ""));
}

fn decline(sim: &mut Sim, p: &Phone, inv: &Request, status: u16) {
    sim.send(p.addr, &response(inv, status, Some(&tag_of(p)), &[], ""));
    let (reqs, _) = split(sim.take(p.addr));
    assert!(
        reqs.iter().any(|r| r.method == Method::Ack),
        "the {status} of {} is ACKed: {reqs:?}",
        p.ext
    );
}

/// `p` answers `inv` with its SDP; returns its dialog. The PBX's ACK stays in the inbox.
fn answer(sim: &mut Sim, p: &Phone, inv: &Request) -> Dlg {
    let ok = response(
        inv,
        200,
        Some(&tag_of(p)),
        &[format!("Contact: {}", p.contact())],
        &sdp_of(p, 1, "sendrecv"),
    );
    sim.send(p.addr, &ok);
    Dlg::callee(inv, &tag_of(p))
}

/// `p` answers `inv` and the PBX ACKs at once.
fn answer_acked(sim: &mut Sim, p: &Phone, inv: &Request) -> Dlg {
    let d = answer(sim, p, inv);
    let (reqs, _) = split(sim.take(p.addr));
    assert!(
        reqs.iter()
            .any(|r| r.method == Method::Ack && r.headers.call_id == inv.headers.call_id),
        "{} gets the ACK of its 200: {reqs:?}",
        p.ext
    );
    d
}

/// Expects the CANCEL of `inv` among what `p` got; answers it 200 and the INVITE 487 and
/// checks the ACK of the 487.
fn expect_cancel(sim: &mut Sim, p: &Phone, inv: &Request) {
    let (reqs, _) = split(sim.take(p.addr));
    let cancel = reqs
        .iter()
        .find(|r| r.method == Method::Cancel && r.headers.call_id == inv.headers.call_id)
        .unwrap_or_else(|| panic!("{} gets no CANCEL: {reqs:?}", p.ext))
        .clone();
    sim.send(p.addr, &response(&cancel, 200, None, &[], ""));
    sim.send(p.addr, &response(inv, 487, Some(&tag_of(p)), &[], ""));
    let (reqs, _) = split(sim.take(p.addr));
    assert!(
        reqs.iter().any(|r| r.method == Method::Ack),
        "the 487 of {} is ACKed: {reqs:?}",
        p.ext
    );
}

/// `p` dials `number` offering its SDP; the 100 Trying is checked and consumed.
fn dial(sim: &mut Sim, p: &mut Phone, number: &str) -> ALeg {
    let sdp = sdp_of(p, 1, "sendrecv");
    let leg = invite(sim, p, number, &sdp);
    let st = sim.statuses(p.addr);
    assert_eq!(st.first(), Some(&100), "{st:?}");
    assert!(st.iter().all(|s| *s < 200), "no final answer yet: {st:?}");
    leg
}

/// `p` dials `number` offering its SDP; all responses stay in the inbox.
fn offer(sim: &mut Sim, p: &mut Phone, number: &str) -> ALeg {
    let sdp = sdp_of(p, 1, "sendrecv");
    invite(sim, p, number, &sdp)
}

/// The final responses `p` got so far.
fn finals(sim: &mut Sim, p: &Phone) -> Vec<Response> {
    sim.responses(p.addr)
        .into_iter()
        .filter(|r| r.status >= 200)
        .collect()
}

/// The caller got its 200: ACKs it and returns its dialog.
fn answered(sim: &mut Sim, a: &mut Phone, leg: &ALeg) -> (Dlg, Response) {
    let f = finals(sim, a);
    assert_eq!(f.len(), 1, "one final answer to {}: {f:?}", a.ext);
    assert_eq!(f[0].status, 200, "{:?}", f[0]);
    let d = Dlg::caller(leg, &f[0]);
    sim.send(a.addr, &d.ack(a, leg.cseq));
    (d, f[0].clone())
}

/// The caller's call failed with `status` (the 4xx ACK is absorbed).
fn failed_with(sim: &mut Sim, a: &mut Phone, leg: &ALeg, status: u16) {
    let f = finals(sim, a);
    assert_eq!(
        f.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![status],
        "final answer to {}",
        a.ext
    );
    let ack_to = f[0].headers.to.to_string();
    let ack = request(
        "ACK",
        &leg.ruri,
        &leg.via,
        &leg.from,
        &ack_to,
        &leg.call_id,
        leg.cseq,
        &[],
        "",
    );
    sim.send(a.addr, &ack);
}

/// `p` answers every request it got (NOTIFY, BYE, ...) with 200; returns them.
fn answer_requests(sim: &mut Sim, p: &Phone) -> Vec<Request> {
    let (reqs, _) = split(sim.take(p.addr));
    for r in &reqs {
        if r.method != Method::Ack {
            sim.send(p.addr, &response(r, 200, None, &[], ""));
        }
    }
    reqs
}

/// `from` hangs up `d`; `to` gets the BYE (in dialog `to_call_id`) and answers it.
fn hang_up(sim: &mut Sim, from: &mut Phone, d: &mut Dlg, to: &Phone, to_call_id: &str) {
    let bye = d.next(from, "BYE", &[], "");
    sim.send(from.addr, &bye);
    let st = sim.statuses(from.addr);
    assert_eq!(st, vec![200], "the BYE of {} is answered", from.ext);
    let reqs = answer_requests(sim, to);
    assert!(
        reqs.iter()
            .any(|r| r.method == Method::Bye && r.headers.call_id == to_call_id),
        "{} gets the BYE: {reqs:?}",
        to.ext
    );
}

/// Runs every timer out and checks that nothing is left behind.
fn assert_drained(sim: &mut Sim, phones: &[&Phone]) {
    sim.advance(120_000);
    for p in phones {
        sim.take(p.addr);
    }
    assert!(sim.ep.calls().is_empty(), "{:?}", sim.ep.calls());
    assert_eq!(sim.ep.transactions(), 0);
    assert!(sim.raw.is_empty(), "unparsable transmits: {:?}", sim.raw);
}

/// An answered, anchored call between two phones.
struct Bridged {
    leg: ALeg,
    /// The caller's dialog.
    a: Dlg,
    /// The callee's dialog.
    b: Dlg,
    /// The INVITE the callee got.
    b_inv: Request,
    session: SessionId,
    /// The relay ports the caller and the callee were given.
    port_a: u16,
    port_b: u16,
}

/// `a` calls `b` (media anchored), `b` answers; both 200s ACKed.
fn bridge(sim: &mut Sim, a: &mut Phone, b: &Phone) -> Bridged {
    let number = b.ext.clone();
    let leg = dial(sim, a, &number);
    let inv = invite_to(sim, b);
    let to_b = rtp_of(&inv.body);
    assert_eq!(to_b.ip().to_string(), RELAY_IP, "B is offered the relay");
    ringing(sim, b, &inv);
    let db = answer_acked(sim, b, &inv);
    let (da, ok) = answered(sim, a, &leg);
    let to_a = rtp_of(&ok.body);
    assert_eq!(
        to_a.ip().to_string(),
        RELAY_IP,
        "A is answered by the relay"
    );
    let cmds = media_commands(sim);
    let session = cmds
        .iter()
        .find_map(|c| match c {
            MediaCommand::Open { session, .. } => Some(*session),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Open: {cmds:?}"));
    let (la, lb) = relay_legs(&cmds, session);
    assert_eq!(la.remote, Some(media_of(a)));
    assert_eq!(lb.remote, Some(media_of(b)));
    assert!(sim.take(a.addr).is_empty());
    assert!(sim.take(b.addr).is_empty());
    Bridged {
        leg,
        a: da,
        b: db,
        b_inv: inv,
        session,
        port_a: to_a.port(),
        port_b: to_b.port(),
    }
}

/// What the referrer gets for an accepted blind REFER: the 202 and a NOTIFY `100 Trying`
/// that keeps the subscription active, in dialog `call_id`; it is not hung up yet. The
/// NOTIFY is answered.
fn assert_refer_accepted(sim: &mut Sim, referrer: &Phone, call_id: &str) {
    let (reqs, resps) = split(sim.take(referrer.addr));
    let accepted: Vec<&Response> = resps
        .iter()
        .filter(|r| r.headers.cseq.method == Method::Refer)
        .collect();
    assert_eq!(accepted.len(), 1, "{resps:?}");
    assert_eq!(accepted[0].status, 202, "{:?}", accepted[0]);
    assert_referrer_told(sim, referrer, call_id, &reqs, "SIP/2.0 100 Trying", false);
}

/// What the referrer of an attended transfer gets: the 202, then at once `200 OK` in a
/// NOTIFY that ends the subscription, and a BYE.
fn assert_attended_refer_done(sim: &mut Sim, referrer: &Phone, call_id: &str) {
    let (reqs, resps) = split(sim.take(referrer.addr));
    assert!(
        resps
            .iter()
            .any(|r| r.headers.cseq.method == Method::Refer && r.status == 202),
        "{resps:?}"
    );
    assert_referrer_told(sim, referrer, call_id, &reqs, "SIP/2.0 200 OK", true);
}

/// The next thing the referrer is told of its transfer, in dialog `call_id`: a NOTIFY
/// carrying `sipfrag`; with `last`, the subscription ends and a BYE follows. Everything
/// is answered 200.
fn referrer_hears(sim: &mut Sim, referrer: &Phone, call_id: &str, sipfrag: &str, last: bool) {
    let (reqs, _) = split(sim.take(referrer.addr));
    assert_referrer_told(sim, referrer, call_id, &reqs, sipfrag, last);
}

fn assert_referrer_told(
    sim: &mut Sim,
    referrer: &Phone,
    call_id: &str,
    reqs: &[Request],
    sipfrag: &str,
    last: bool,
) {
    let notifies: Vec<&Request> = reqs.iter().filter(|r| r.method == Method::Notify).collect();
    assert_eq!(notifies.len(), 1, "one NOTIFY to the referrer: {reqs:?}");
    let notify = notifies[0];
    assert_eq!(
        notify.headers.call_id, call_id,
        "NOTIFY in the REFER's dialog"
    );
    assert_eq!(
        notify.headers.get("Event").map(str::trim),
        Some("refer"),
        "{notify:?}"
    );
    let state = notify.headers.get("Subscription-State").unwrap_or_default();
    assert_eq!(state.trim().starts_with("terminated"), last, "{notify:?}");
    assert!(
        notify
            .headers
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("message/sipfrag")),
        "{notify:?}"
    );
    assert_eq!(String::from_utf8_lossy(&notify.body).trim_end(), sipfrag);
    let bye = reqs.iter().find(|r| r.method == Method::Bye);
    assert_eq!(bye.is_some(), last, "a BYE only once it is over: {reqs:?}");
    if let Some(bye) = bye {
        assert_eq!(bye.headers.call_id, call_id);
    }
    for r in reqs {
        sim.send(referrer.addr, &response(r, 200, None, &[], ""));
    }
}

fn refer_to(target: &str) -> Vec<String> {
    vec![
        format!("Refer-To: <sip:{target}@{REALM}>"),
        "Contact: <sip:ref@192.168.1.99:5060>".to_string(),
    ]
}

/// `%`-encoding of the characters a URI header value may not hold.
fn percent_encode(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' => "%3B".to_string(),
            '=' => "%3D".to_string(),
            '@' => "%40".to_string(),
            c => c.to_string(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ring groups
// ---------------------------------------------------------------------------------------------

#[test]
fn simultaneous_group_rings_every_member_and_the_first_answer_wins() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["101", "102", "103"],
            RingStrategy::Simultaneous,
            10_000,
            60_000,
            None,
        )],
        false,
        false,
    );
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let mut c = phone(&mut sim, "102");
    // 103 has no phone registered: the others ring anyway.
    let leg = dial(&mut sim, &mut a, "600");
    let ib = invite_to(&mut sim, &b);
    let ic = invite_to(&mut sim, &c);
    assert_ne!(ib.headers.call_id, ic.headers.call_id);
    assert_eq!(
        ib.headers.from.uri.user(),
        Some("100"),
        "members see the caller"
    );
    ringing(&mut sim, &b, &ib);
    ringing(&mut sim, &c, &ic);
    assert!(sim.statuses(a.addr).contains(&180));

    let mut dc = answer_acked(&mut sim, &c, &ic);
    expect_cancel(&mut sim, &b, &ib);
    answered(&mut sim, &mut a, &leg);
    assert!(sim.take(c.addr).is_empty(), "A's ACK is absorbed");
    let calls = sim.ep.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].answered);

    // The winner talks to A: its BYE reaches A.
    let a_call_id = leg.call_id.clone();
    hang_up(&mut sim, &mut c, &mut dc, &a, &a_call_id);
    let cdr = sim.cdrs().pop().expect("CDR");
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.caller, "100");
    assert_drained(&mut sim, &[&a, &b, &c]);
}

#[test]
fn in_order_group_hunts_member_by_member_and_skips_members_without_phones() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["101", "102", "103"],
            RingStrategy::InOrder,
            10_000,
            60_000,
            None,
        )],
        false,
        false,
    );
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let d = phone(&mut sim, "103"); // 102 has no phone
    let leg = dial(&mut sim, &mut a, "600");
    let ib = invite_to(&mut sim, &b);
    assert!(sim.take(d.addr).is_empty(), "only the first member rings");
    ringing(&mut sim, &b, &ib);
    let _ = sim.statuses(a.addr);

    sim.advance(9_999);
    assert!(sim.take(b.addr).is_empty(), "member 1 still rings");
    assert!(sim.take(d.addr).is_empty());
    sim.advance(1);
    expect_cancel(&mut sim, &b, &ib);
    let id = invite_to(&mut sim, &d);
    assert!(finals(&mut sim, &a).is_empty(), "the caller keeps waiting");
    ringing(&mut sim, &d, &id);
    answer_acked(&mut sim, &d, &id);
    answered(&mut sim, &mut a, &leg);
    assert!(sim.ep.calls()[0].answered);
}

#[test]
fn in_order_group_moves_on_at_once_when_a_member_is_busy_then_gives_480() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["101", "102"],
            RingStrategy::InOrder,
            10_000,
            60_000,
            None,
        )],
        false,
        false,
    );
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let leg = dial(&mut sim, &mut a, "600");
    let ib = invite_to(&mut sim, &b);
    decline(&mut sim, &b, &ib, 486);
    // No time passes: the next member rings at once, the caller hears nothing of the 486.
    let ic = invite_to(&mut sim, &c);
    assert!(finals(&mut sim, &a).is_empty());
    ringing(&mut sim, &c, &ic);

    // The last member does not answer within its time: everyone was tried.
    sim.advance(9_999);
    assert!(finals(&mut sim, &a).is_empty());
    sim.advance(1);
    expect_cancel(&mut sim, &c, &ic);
    failed_with(&mut sim, &mut a, &leg, 480);
    let cdr = sim.cdrs().pop().expect("CDR");
    assert_eq!(cdr.status, 480);
    assert_drained(&mut sim, &[&a, &b, &c]);
}

#[test]
fn group_time_limit_ends_the_hunt_with_480() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["101", "102"],
            RingStrategy::InOrder,
            20_000,
            30_000,
            None,
        )],
        false,
        false,
    );
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let leg = dial(&mut sim, &mut a, "600");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    sim.advance(20_000);
    expect_cancel(&mut sim, &b, &ib);
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &c, &ic);
    // 30 s after the call came in (10 s into member 2's 20 s): the group gives up.
    sim.advance(9_999);
    assert!(finals(&mut sim, &a).is_empty());
    sim.advance(1);
    expect_cancel(&mut sim, &c, &ic);
    failed_with(&mut sim, &mut a, &leg, 480);
}

#[test]
fn group_without_registered_members_is_480_at_once() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["102", "103"],
            RingStrategy::Simultaneous,
            10_000,
            60_000,
            None,
        )],
        false,
        false,
    );
    let mut a = phone(&mut sim, "100");
    let leg = offer(&mut sim, &mut a, "600");
    failed_with(&mut sim, &mut a, &leg, 480);
    assert!(sim.ep.calls().is_empty());
}

#[test]
fn unanswered_group_goes_to_the_group_mailbox() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["101", "102"],
            RingStrategy::Simultaneous,
            10_000,
            15_000,
            Some("103"),
        )],
        true,
        true,
    );
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let leg = dial(&mut sim, &mut a, "600");
    let ib = invite_to(&mut sim, &b);
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &b, &ib);
    ringing(&mut sim, &c, &ic);
    media_commands(&mut sim);
    sim.advance(15_000);
    expect_cancel(&mut sim, &b, &ib);
    expect_cancel(&mut sim, &c, &ic);
    let (_, ok) = answered(&mut sim, &mut a, &leg);
    assert_eq!(rtp_of(&ok.body).ip().to_string(), RELAY_IP);
    let cmds = media_commands(&mut sim);
    assert!(plays(&cmds, Leg::A, "please-leave-message"), "{cmds:?}");
    let path = record_after_greeting(&mut sim);
    assert!(path.starts_with("/data/voicemail/103"), "{path:?}");
}

/// The only call's greeting has played: the file voicemail records the caller into.
fn record_after_greeting(sim: &mut Sim) -> std::path::PathBuf {
    let session = sim.ep.calls()[0].media_session.unwrap();
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session,
            leg: Leg::A,
        },
    );
    sim.pump();
    let cmds = media_commands(sim);
    cmds.iter()
        .find_map(|c| match c {
            MediaCommand::Record { path, .. } => Some(path.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("recording starts: {cmds:?}"))
}

// ---------------------------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------------------------

fn forwarding(
    always: Option<&str>,
    busy: Option<&str>,
    no_answer: Option<&str>,
    ms: u64,
) -> Forwarding {
    Forwarding {
        always: always.map(str::to_string),
        busy: busy.map(str::to_string),
        no_answer: no_answer.map(str::to_string),
        no_answer_ms: ms,
        no_answer_then: Vec::new(),
    }
}

#[test]
fn forward_always_rings_the_target_and_never_the_extension() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(Some("102"), None, None, 0));
    assert_eq!(
        sim.ep.forwarding("101").and_then(|f| f.always.as_deref()),
        Some("102")
    );
    let leg = dial(&mut sim, &mut a, "101");
    assert!(
        sim.take(b.addr).is_empty(),
        "the forwarded phone never rings"
    );
    let ic = invite_to(&mut sim, &c);
    assert_eq!(
        ic.headers.from.uri.user(),
        Some("100"),
        "the target sees the caller"
    );
    ringing(&mut sim, &c, &ic);
    answer_acked(&mut sim, &c, &ic);
    answered(&mut sim, &mut a, &leg);
    assert!(sim.take(b.addr).is_empty());

    // Forwarding off: 101 rings again.
    sim.ep.set_forwarding("101", Forwarding::default());
    assert!(sim.ep.forwarding("101").is_none());
    let _leg2 = dial(&mut sim, &mut a, "101");
    invite_to(&mut sim, &b);
    assert!(sim.take(c.addr).is_empty());
}

#[test]
fn forward_on_busy_rings_the_target_when_the_phone_answers_486() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(None, Some("102"), None, 0));
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    assert!(sim.take(c.addr).is_empty(), "the target waits for the busy");
    decline(&mut sim, &b, &ib, 486);
    let ic = invite_to(&mut sim, &c);
    assert!(
        finals(&mut sim, &a).is_empty(),
        "the caller never sees the 486"
    );
    ringing(&mut sim, &c, &ic);
    answer_acked(&mut sim, &c, &ic);
    answered(&mut sim, &mut a, &leg);
}

#[test]
fn forward_on_busy_does_not_apply_to_an_unanswered_call() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(None, Some("102"), None, 0));
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    sim.advance(RING_MS);
    expect_cancel(&mut sim, &b, &ib);
    assert!(sim.take(c.addr).is_empty());
    failed_with(&mut sim, &mut a, &leg, 480);
}

#[test]
fn forward_on_no_answer_cancels_the_phone_after_its_ring_time() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(None, None, Some("102"), 8_000));
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    let _ = sim.statuses(a.addr);
    sim.advance(7_999);
    assert!(sim.take(b.addr).is_empty());
    assert!(sim.take(c.addr).is_empty());
    sim.advance(1);
    expect_cancel(&mut sim, &b, &ib);
    let ic = invite_to(&mut sim, &c);
    assert!(finals(&mut sim, &a).is_empty());
    ringing(&mut sim, &c, &ic);
    answer_acked(&mut sim, &c, &ic);
    answered(&mut sim, &mut a, &leg);
}

#[test]
fn forward_on_no_answer_without_its_own_time_uses_the_ring_timeout() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(None, None, Some("102"), 0));
    let _leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    sim.advance(RING_MS - 1);
    assert!(sim.take(c.addr).is_empty());
    sim.advance(1);
    expect_cancel(&mut sim, &b, &ib);
    invite_to(&mut sim, &c);
}

#[test]
fn follow_me_rings_the_phones_then_each_number_of_the_list_for_its_own_time() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let d = phone(&mut sim, "103");
    let mut fwd = forwarding(None, None, Some("102"), 8_000);
    fwd.no_answer_then = vec!["103".to_string()];
    sim.ep.set_forwarding("101", fwd);
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    sim.advance(8_000);
    expect_cancel(&mut sim, &b, &ib);
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &c, &ic);
    // 102 rings its own 8 s, not what was left of 101's.
    sim.advance(7_999);
    assert!(sim.take(c.addr).is_empty(), "102 still rings");
    assert!(sim.take(d.addr).is_empty(), "103 waits its turn");
    sim.advance(1);
    expect_cancel(&mut sim, &c, &ic);
    let id = invite_to(&mut sim, &d);
    assert!(finals(&mut sim, &a).is_empty(), "the caller keeps waiting");
    ringing(&mut sim, &d, &id);
    answer_acked(&mut sim, &d, &id);
    answered(&mut sim, &mut a, &leg);
}

#[test]
fn a_follow_me_list_that_nobody_answers_ends_in_the_extensions_voicemail() {
    let mut sim = pbx(Vec::new(), true, true);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let mut fwd = forwarding(None, None, Some("102"), 5_000);
    // 199 is no number of this box and no outside number (no route): skipped.
    fwd.no_answer_then = vec!["199".to_string()];
    sim.ep.set_forwarding("101", fwd);
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    sim.advance(5_000);
    expect_cancel(&mut sim, &b, &ib);
    let ic = invite_to(&mut sim, &c);
    // 102 is busy: the list is over, 101's voicemail answers.
    decline(&mut sim, &c, &ic, 486);
    answered(&mut sim, &mut a, &leg);
    let path = record_after_greeting(&mut sim);
    assert!(path.starts_with("/data/voicemail/101"), "{path:?}");
}

#[test]
fn offline_extension_with_no_answer_forwarding_goes_to_the_target_at_once() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(None, None, Some("102"), 20_000));
    let leg = dial(&mut sim, &mut a, "101");
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &c, &ic);
    answer_acked(&mut sim, &c, &ic);
    answered(&mut sim, &mut a, &leg);
}

#[test]
fn always_forwarding_loop_stops_and_the_call_still_connects() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(Some("102"), None, None, 0));
    sim.ep
        .set_forwarding("102", forwarding(Some("101"), None, None, 0));
    let leg = dial(&mut sim, &mut a, "101");
    let (rb, _) = split(sim.take(b.addr));
    let (rc, _) = split(sim.take(c.addr));
    let invites: Vec<(&Phone, Request)> = rb
        .into_iter()
        .map(|r| (&b, r))
        .chain(rc.into_iter().map(|r| (&c, r)))
        .filter(|(_, r)| r.method == Method::Invite)
        .collect();
    assert_eq!(
        invites.len(),
        1,
        "the loop stops with exactly one phone ringing: {invites:?}"
    );
    let (p, inv) = &invites[0];
    ringing(&mut sim, p, inv);
    answer_acked(&mut sim, p, inv);
    answered(&mut sim, &mut a, &leg);
    assert_eq!(sim.ep.calls().len(), 1);
}

#[test]
fn no_answer_forwarding_loop_stops_after_four_hops_with_480() {
    let mut sim = pbx(Vec::new(), false, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    sim.ep
        .set_forwarding("101", forwarding(None, None, Some("102"), 1_000));
    sim.ep
        .set_forwarding("102", forwarding(None, None, Some("101"), 1_000));
    let leg = dial(&mut sim, &mut a, "101");
    let mut rung = Vec::new();
    for _ in 0..10 {
        let (rb, _) = split(sim.take(b.addr));
        let (rc, _) = split(sim.take(c.addr));
        let mut invites: Vec<(Phone, Request)> = rb
            .into_iter()
            .map(|r| (b.clone(), r))
            .chain(rc.into_iter().map(|r| (c.clone(), r)))
            .filter(|(_, r)| r.method == Method::Invite)
            .collect();
        if invites.is_empty() {
            break;
        }
        assert_eq!(invites.len(), 1, "one phone at a time: {invites:?}");
        let (p, inv) = invites.remove(0);
        rung.push(p.ext.clone());
        ringing(&mut sim, &p, &inv);
        sim.advance(1_000);
        expect_cancel(&mut sim, &p, &inv);
    }
    // The first ring, then four forwarding hops.
    assert_eq!(rung, vec!["101", "102", "101", "102", "101"]);
    failed_with(&mut sim, &mut a, &leg, 480);
    assert_drained(&mut sim, &[&a, &b, &c]);
}

// ---------------------------------------------------------------------------------------------
// Blind transfer
// ---------------------------------------------------------------------------------------------

#[test]
fn blind_transfer_by_the_callee_connects_the_caller_to_the_target() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let mut c = phone(&mut sim, "102");
    let mut x = bridge(&mut sim, &mut a, &b);

    let refer = x.b.next(&mut b, "REFER", &refer_to("102"), "");
    sim.send(b.addr, &refer);
    assert_refer_accepted(&mut sim, &b, &x.b.call_id);
    let cmds = media_commands(&mut sim);
    assert!(
        plays(&cmds, Leg::A, "ringback"),
        "A hears ringback: {cmds:?}"
    );
    assert!(
        sim.take(a.addr).is_empty(),
        "A's SDP is never re-negotiated"
    );

    let ic = invite_to(&mut sim, &c);
    let offered = rtp_of(&ic.body);
    assert_eq!(offered.ip().to_string(), RELAY_IP, "C is offered the relay");
    assert_eq!(
        offered.port(),
        x.port_b,
        "C takes B's place in the same relay session"
    );
    assert_eq!(
        ic.headers.from.uri.user(),
        Some("100"),
        "C sees who it talks to"
    );
    ringing(&mut sim, &c, &ic);
    assert!(
        sim.take(a.addr).is_empty(),
        "A already talks: no second 180"
    );
    referrer_hears(&mut sim, &b, &x.b.call_id, "SIP/2.0 180 Ringing", false);
    let mut dc = answer_acked(&mut sim, &c, &ic);
    referrer_hears(&mut sim, &b, &x.b.call_id, "SIP/2.0 200 OK", true);

    let cmds = media_commands(&mut sim);
    let (la, lb) = relay_legs(&cmds, x.session);
    assert_eq!(la.remote, Some(media_of(&a)), "A's side of the relay stays");
    assert_eq!(la.local_port, x.port_a);
    assert_eq!(
        lb.remote,
        Some(media_of(&c)),
        "the relay sends B's side to C"
    );
    assert_eq!(lb.local_port, x.port_b);
    assert!(
        stops_play(&cmds, x.session, Leg::A),
        "ringback stops: {cmds:?}"
    );
    assert!(sim.take(a.addr).is_empty(), "no re-INVITE to A");
    assert!(sim.take(b.addr).is_empty(), "B is out of the call");
    let calls = sim.ep.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].answered);

    // C hangs up: A gets the BYE in its original dialog.
    let a_call_id = x.leg.call_id.clone();
    hang_up(&mut sim, &mut c, &mut dc, &a, &a_call_id);
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter()
            .any(|m| matches!(m, MediaCommand::Close { session } if *session == x.session)),
        "{cmds:?}"
    );
    // One record per leg, linked: A with B until the REFER, then A with C.
    let cdrs = sim.cdrs();
    assert_eq!(cdrs.len(), 2, "{cdrs:#?}");
    let (ab, ac) = (&cdrs[0], &cdrs[1]);
    assert_eq!((ab.caller.as_str(), ab.callee.as_str()), ("100", "101"));
    assert_eq!(ab.disposition, Disposition::Transferred);
    assert!(ab.answer.is_some());
    assert_eq!((ac.caller.as_str(), ac.callee.as_str()), ("100", "102"));
    assert_eq!(ac.disposition, Disposition::Answered);
    assert_eq!(ac.leg.transferred_by.as_deref(), Some("101"));
    assert_eq!(ab.leg.linked_id, ab.call_id);
    assert_eq!(ac.leg.linked_id, ab.leg.linked_id);
    assert!(ab.end <= ac.start && ac.start <= ac.answer.unwrap_or(0));
    let _ = (&x.a, &x.b_inv);
    assert_drained(&mut sim, &[&a, &b, &c]);
}

#[test]
fn blind_transfer_to_a_busy_target_after_the_referrer_left_says_unavailable_then_hangs_up() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let mut x = bridge(&mut sim, &mut a, &b);
    let refer = x.b.next(&mut b, "REFER", &refer_to("102"), "");
    sim.send(b.addr, &refer);
    assert_refer_accepted(&mut sim, &b, &x.b.call_id);
    // B hangs up at once, as many phones do after the 202: the transfer goes on.
    let bye = x.b.next(&mut b, "BYE", &[], "");
    sim.send(b.addr, &bye);
    assert_eq!(sim.statuses(b.addr), vec![200]);
    media_commands(&mut sim);
    let ic = invite_to(&mut sim, &c);
    decline(&mut sim, &c, &ic, 486);
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter().any(|m| matches!(
            m,
            MediaCommand::Play { leg: Leg::A, clips, repeat: false, .. }
                if clips.first().map(String::as_str) == Some("unavailable")
                    && clips.last().map(String::as_str) == Some("goodbye")
        )),
        "{cmds:?}"
    );
    assert!(sim.take(a.addr).is_empty(), "A hears the prompt first");
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session: x.session,
            leg: Leg::A,
        },
    );
    sim.pump();
    let reqs = answer_requests(&mut sim, &a);
    assert!(
        reqs.iter()
            .any(|r| r.method == Method::Bye && r.headers.call_id == x.leg.call_id),
        "A is hung up after goodbye: {reqs:?}"
    );
    assert!(sim.ep.calls().is_empty());
    let cdrs = sim.cdrs();
    assert_eq!(cdrs.len(), 2, "{cdrs:#?}");
    assert_eq!(cdrs[0].disposition, Disposition::Transferred);
    assert_eq!(cdrs[1].callee, "102");
    assert_eq!(
        (cdrs[1].disposition, cdrs[1].status),
        (Disposition::Busy, 486)
    );
    assert_eq!(cdrs[1].answer, None, "102 never talked");
    assert_drained(&mut sim, &[&a, &b, &c]);
}

#[test]
fn blind_transfer_nobody_answers_goes_to_the_targets_voicemail() {
    let mut sim = pbx(Vec::new(), true, true);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let mut x = bridge(&mut sim, &mut a, &b);
    let refer = x.b.next(&mut b, "REFER", &refer_to("102"), "");
    sim.send(b.addr, &refer);
    assert_refer_accepted(&mut sim, &b, &x.b.call_id);
    media_commands(&mut sim);
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &c, &ic);
    sim.advance(RING_MS);
    expect_cancel(&mut sim, &c, &ic);
    let cmds = media_commands(&mut sim);
    assert!(
        plays(&cmds, Leg::A, "please-leave-message"),
        "A is asked for a message for C: {cmds:?}"
    );
    let got = sim.take(a.addr);
    assert!(
        got.is_empty(),
        "A already talks to Outpost: nothing new in its dialog: {got:?}"
    );
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session: x.session,
            leg: Leg::A,
        },
    );
    sim.pump();
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter().any(|m| matches!(
            m,
            MediaCommand::Record { path, leg: Leg::A, .. } if path.starts_with("/data/voicemail/102")
        )),
        "{cmds:?}"
    );
}

#[test]
fn blind_transfer_by_the_caller_connects_the_callee_to_the_target() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let mut x = bridge(&mut sim, &mut a, &b);

    let refer = x.a.next(&mut a, "REFER", &refer_to("102"), "");
    sim.send(a.addr, &refer);
    assert_refer_accepted(&mut sim, &a, &x.leg.call_id);
    let cmds = media_commands(&mut sim);
    assert!(
        plays(&cmds, Leg::B, "ringback"),
        "B hears ringback: {cmds:?}"
    );

    let ic = invite_to(&mut sim, &c);
    let offered = rtp_of(&ic.body);
    assert_eq!(offered.ip().to_string(), RELAY_IP);
    assert_eq!(
        offered.port(),
        x.port_a,
        "C takes A's place in the relay session"
    );
    assert_eq!(ic.headers.from.uri.user(), Some("101"), "C sees B calling");
    ringing(&mut sim, &c, &ic);
    referrer_hears(&mut sim, &a, &x.leg.call_id, "SIP/2.0 180 Ringing", false);
    let mut dc = answer_acked(&mut sim, &c, &ic);
    referrer_hears(&mut sim, &a, &x.leg.call_id, "SIP/2.0 200 OK", true);
    let cmds = media_commands(&mut sim);
    let (la, lb) = relay_legs(&cmds, x.session);
    assert_eq!(
        la.remote,
        Some(media_of(&c)),
        "A's side of the relay goes to C"
    );
    assert_eq!(lb.remote, Some(media_of(&b)), "B's side stays");
    assert!(stops_play(&cmds, x.session, Leg::B), "{cmds:?}");
    assert!(sim.take(b.addr).is_empty(), "no re-INVITE to B");

    // B hangs up: C gets the BYE in the dialog Outpost opened with it.
    let c_call_id = ic.headers.call_id.clone();
    hang_up(&mut sim, &mut b, &mut x.b, &c, &c_call_id);
    assert!(sim.ep.calls().is_empty());
    let _ = &mut dc;
    assert_drained(&mut sim, &[&a, &b, &c]);
}

#[test]
fn refer_outside_a_bridged_call_is_refused() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let mut x = bridge(&mut sim, &mut a, &b);
    // A Refer-To that names nobody.
    let refer = x.b.next(&mut b, "REFER", &refer_to("999"), "");
    sim.send(b.addr, &refer);
    let st = sim.statuses(b.addr);
    assert_eq!(st.len(), 1, "{st:?}");
    assert!(st[0] >= 400, "{st:?}");
    // No Refer-To at all.
    let refer = x.b.next(&mut b, "REFER", &[], "");
    sim.send(b.addr, &refer);
    assert_eq!(sim.statuses(b.addr), vec![400]);
    assert!(sim.ep.calls()[0].answered, "the call goes on");
    assert!(sim.take(a.addr).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Attended transfer
// ---------------------------------------------------------------------------------------------

#[test]
fn attended_transfer_replaces_the_consultation_call() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let mut x = bridge(&mut sim, &mut a, &b);

    // Call 1: B puts A on hold.
    let (contact, held) = (
        format!("Contact: {}", b.contact()),
        sdp_of(&b, 2, "sendonly"),
    );
    let hold = x.b.next(&mut b, "INVITE", &[contact], &held);
    sim.send(b.addr, &hold);
    let (reqs, _) = split(sim.take(a.addr));
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let re = &reqs[0];
    assert_eq!(direction_of(&re.body), "sendonly");
    sim.send(
        a.addr,
        &response(
            re,
            200,
            None,
            &[format!("Contact: {}", a.contact())],
            &sdp_of(&a, 2, "recvonly"),
        ),
    );
    let f = finals(&mut sim, &b);
    assert_eq!(f[0].status, 200);
    sim.send(b.addr, &x.b.ack(&mut b, x.b.cseq));
    let (acks, _) = split(sim.take(a.addr));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method, Method::Ack);
    let cmds = media_commands(&mut sim);
    assert!(plays(&cmds, Leg::A, "moh"), "A hears music: {cmds:?}");

    // Call 2: B consults C.
    let leg2 = dial(&mut sim, &mut b, "102");
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &c, &ic);
    let _dc = answer_acked(&mut sim, &c, &ic);
    let (_db2, ok2) = answered(&mut sim, &mut b, &leg2);
    let cmds = media_commands(&mut sim);
    let session2 = cmds
        .iter()
        .find_map(|m| match m {
            MediaCommand::Open { session, .. } => Some(*session),
            _ => None,
        })
        .expect("call 2 opens its own session");
    assert_ne!(session2, x.session);

    // B transfers A to C, replacing call 2 (as B knows it).
    let b_tag = leg2.from.split("tag=").nth(1).unwrap().to_string();
    let replaces = format!(
        "{};to-tag={};from-tag={b_tag}",
        leg2.call_id,
        tag(&ok2.headers.to)
    );
    let headers = [
        format!(
            "Refer-To: <sip:102@{REALM}?Replaces={}>",
            percent_encode(&replaces)
        ),
        format!("Contact: {}", b.contact()),
    ];
    let refer = x.b.next(&mut b, "REFER", &headers, "");
    sim.send(b.addr, &refer);
    let (reqs, resps) = split(sim.take(b.addr));
    assert!(
        reqs.iter()
            .any(|r| r.method == Method::Bye && r.headers.call_id == leg2.call_id),
        "B's consultation call is hung up: {reqs:?}"
    );
    // Put the messages back for the common check of call 1.
    for r in reqs {
        sim.inbox
            .entry(b.addr)
            .or_default()
            .push_back(Message::Request(r));
    }
    for r in resps {
        sim.inbox
            .entry(b.addr)
            .or_default()
            .push_back(Message::Response(r));
    }
    assert_attended_refer_done(&mut sim, &b, &x.b.call_id);
    assert!(
        sim.take(a.addr).is_empty(),
        "A stays in its dialog untouched"
    );

    // C is re-INVITEd in call 2's dialog towards call 1's relay session.
    let (reqs, _) = split(sim.take(c.addr));
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let re = reqs[0].clone();
    assert_eq!(re.method, Method::Invite);
    assert_eq!(re.headers.call_id, ic.headers.call_id);
    assert_eq!(tag(&re.headers.to), tag_of(&c));
    assert_eq!(tag(&re.headers.from), tag(&ic.headers.from));
    assert!(re.headers.cseq.seq > ic.headers.cseq.seq);
    let offered = rtp_of(&re.body);
    assert_eq!(offered.ip().to_string(), RELAY_IP);
    assert_eq!(
        offered.port(),
        x.port_b,
        "C is moved to call 1's relay session"
    );
    // Media problems are collected so the rest of the flow is still checked.
    let mut problems = Vec::new();
    if direction_of(&re.body) != "sendrecv" {
        problems.push(format!(
            "C must be offered a two-way stream to talk with A, got a={} (from A's held answer?): {}",
            direction_of(&re.body),
            String::from_utf8_lossy(&re.body)
        ));
    }
    sim.send(
        c.addr,
        &response(
            &re,
            200,
            None,
            &[format!("Contact: {}", c.contact())],
            &sdp_of(&c, 2, "sendrecv"),
        ),
    );
    let (acks, _) = split(sim.take(c.addr));
    assert!(
        acks.iter()
            .any(|r| r.method == Method::Ack && r.headers.cseq.seq == re.headers.cseq.seq),
        "{acks:?}"
    );
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter()
            .any(|m| matches!(m, MediaCommand::Close { session } if *session == session2)),
        "call 2's relay session closes: {cmds:?}"
    );
    let (la, lb) = relay_legs(&cmds, x.session);
    assert_eq!(la.remote, Some(media_of(&a)));
    assert_eq!(
        lb.remote,
        Some(media_of(&c)),
        "call 1's relay now sends to C"
    );
    if !stops_play(&cmds, x.session, Leg::A) {
        problems.push(format!(
            "A's music on hold must stop once C is connected (the relay keeps playing \"moh\" to A over C's audio): {cmds:?}"
        ));
    }
    // A is taken off hold: a re-INVITE offering a two-way stream from the relay.
    let (reqs_a, _) = split(sim.take(a.addr));
    let resume = reqs_a
        .iter()
        .find(|r| r.method == Method::Invite)
        .expect("A is re-INVITEd off hold")
        .clone();
    assert_eq!(direction_of(&resume.body), "sendrecv");
    assert_eq!(
        rtp_of(&resume.body).port(),
        x.port_a,
        "A keeps its relay port"
    );
    sim.send(
        a.addr,
        &response(
            &resume,
            200,
            None,
            &[format!("Contact: {}", a.contact())],
            &sdp_of(&a, 3, "sendrecv"),
        ),
    );
    let (acks, _) = split(sim.take(a.addr));
    assert!(
        acks.iter()
            .any(|r| r.method == Method::Ack && r.headers.cseq.seq == resume.headers.cseq.seq),
        "{acks:?}"
    );
    let calls = sim.ep.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");

    // A hangs up: C gets the BYE in its dialog.
    let c_call_id = ic.headers.call_id.clone();
    hang_up(&mut sim, &mut a, &mut x.a, &c, &c_call_id);
    assert!(sim.ep.calls().is_empty());
    // Three linked records: the consultation call (B with C) and A with B end as
    // transferred at the REFER; A with C runs from then to A's hang-up.
    let cdrs = sim.cdrs();
    assert_eq!(cdrs.len(), 3, "{cdrs:#?}");
    let by = |caller: &str, callee: &str| {
        cdrs.iter()
            .find(|c| c.caller == caller && c.callee == callee)
            .unwrap_or_else(|| panic!("no record {caller} -> {callee}: {cdrs:#?}"))
    };
    let (ab, bc, ac) = (by("100", "101"), by("101", "102"), by("100", "102"));
    assert_eq!(ab.disposition, Disposition::Transferred);
    assert_eq!(bc.disposition, Disposition::Transferred);
    assert_eq!(ac.disposition, Disposition::Answered);
    assert_eq!(ac.leg.transferred_by.as_deref(), Some("101"));
    assert!(
        cdrs.iter().all(|c| c.leg.linked_id == ab.call_id),
        "{cdrs:#?}"
    );
    assert_drained(&mut sim, &[&a, &b, &c]);
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// Pickup
// ---------------------------------------------------------------------------------------------

#[test]
fn pickup_takes_the_ringing_call() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let mut p = phone(&mut sim, "102");
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    let port_b = rtp_of(&ib.body).port();
    ringing(&mut sim, &b, &ib);
    let _ = sim.statuses(a.addr);
    media_commands(&mut sim);

    let pleg = offer(&mut sim, &mut p, "*8");
    let (_, p_ok) = answered(&mut sim, &mut p, &pleg);
    let to_p = rtp_of(&p_ok.body);
    assert_eq!(to_p.ip().to_string(), RELAY_IP);
    assert_eq!(
        to_p.port(),
        port_b,
        "the picker takes the ringing phone's side"
    );
    let (mut da, a_ok) = answered(&mut sim, &mut a, &leg);
    assert_eq!(rtp_of(&a_ok.body).ip().to_string(), RELAY_IP);
    expect_cancel(&mut sim, &b, &ib);
    let cmds = media_commands(&mut sim);
    let session = sim.ep.calls()[0].media_session.unwrap();
    let (la, lb) = relay_legs(&cmds, session);
    assert_eq!(la.remote, Some(media_of(&a)));
    assert_eq!(lb.remote, Some(media_of(&p)));
    assert_eq!(sim.ep.calls().len(), 1);
    assert!(sim.ep.calls()[0].answered);

    // A hangs up: the picker gets the BYE in its own dialog.
    let p_call_id = pleg.call_id.clone();
    hang_up(&mut sim, &mut a, &mut da, &p, &p_call_id);
    assert!(sim.ep.calls().is_empty());
    assert_drained(&mut sim, &[&a, &b, &p]);
}

#[test]
fn picker_hangs_up_and_the_caller_gets_the_bye() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let mut p = phone(&mut sim, "102");
    let leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    let pleg = offer(&mut sim, &mut p, "*8");
    let (mut dp, _) = answered(&mut sim, &mut p, &pleg);
    answered(&mut sim, &mut a, &leg);
    expect_cancel(&mut sim, &b, &ib);
    let a_call_id = leg.call_id.clone();
    hang_up(&mut sim, &mut p, &mut dp, &a, &a_call_id);
    assert!(sim.ep.calls().is_empty());
}

#[test]
fn directed_pickup_takes_the_call_ringing_that_extension() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let mut p = phone(&mut sim, "102");
    let mut d = phone(&mut sim, "103");
    let e = phone(&mut sim, "200");
    // Two calls ring: A -> B first, then D -> E.
    let _leg1 = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    sim.now += 1_000;
    let leg2 = dial(&mut sim, &mut d, "200");
    let ie = invite_to(&mut sim, &e);
    ringing(&mut sim, &e, &ie);
    let _ = sim.statuses(a.addr);
    let _ = sim.statuses(d.addr);

    let pleg = offer(&mut sim, &mut p, "**200");
    answered(&mut sim, &mut p, &pleg);
    answered(&mut sim, &mut d, &leg2);
    expect_cancel(&mut sim, &e, &ie);
    assert!(sim.take(b.addr).is_empty(), "the other call keeps ringing");
    assert!(finals(&mut sim, &a).is_empty());
    let calls = sim.ep.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls.iter().filter(|c| c.answered).count(), 1);
    assert!(calls.iter().any(|c| c.caller == "103" && c.answered));
}

#[test]
fn pickup_with_nothing_ringing_is_480() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let b = phone(&mut sim, "101");
    let mut p = phone(&mut sim, "102");
    let leg = offer(&mut sim, &mut p, "*8");
    failed_with(&mut sim, &mut p, &leg, 480);
    // An answered call is not ringing either; nor is 101 for directed pickup.
    let _x = bridge(&mut sim, &mut a, &b);
    let leg = offer(&mut sim, &mut p, "*8");
    failed_with(&mut sim, &mut p, &leg, 480);
    let leg = offer(&mut sim, &mut p, "**101");
    failed_with(&mut sim, &mut p, &leg, 480);
    assert_eq!(sim.ep.calls().len(), 1);
}

#[test]
fn pickup_does_not_take_a_call_ringing_the_picker_itself() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let _leg = dial(&mut sim, &mut a, "101");
    let ib = invite_to(&mut sim, &b);
    ringing(&mut sim, &b, &ib);
    let leg = offer(&mut sim, &mut b, "*8");
    failed_with(&mut sim, &mut b, &leg, 480);
    assert!(!sim.ep.calls()[0].answered);
}

// ---------------------------------------------------------------------------------------------
// Hold and resume around a second call
// ---------------------------------------------------------------------------------------------

/// `from` re-INVITEs with `sdp` in dialog `d`; the other phone `to` answers with `answer`;
/// both ACKs go through. Returns the re-INVITE `to` got.
fn reinvite(
    sim: &mut Sim,
    from: &mut Phone,
    d: &mut Dlg,
    to: &Phone,
    sdp: &str,
    answer_sdp: &str,
) -> Request {
    let contact = format!("Contact: {}", from.contact());
    let inv = d.next(from, "INVITE", &[contact], sdp);
    sim.send(from.addr, &inv);
    let (reqs, _) = split(sim.take(to.addr));
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let re = reqs[0].clone();
    assert_eq!(re.method, Method::Invite);
    sim.send(
        to.addr,
        &response(
            &re,
            200,
            None,
            &[format!("Contact: {}", to.contact())],
            answer_sdp,
        ),
    );
    let f = finals(sim, from);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, 200);
    sim.send(from.addr, &d.ack(from, d.cseq));
    let (acks, _) = split(sim.take(to.addr));
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].method, Method::Ack);
    re
}

#[test]
fn held_caller_hears_music_while_the_callee_makes_another_call_then_is_resumed() {
    let mut sim = pbx(Vec::new(), true, false);
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");
    let mut x = bridge(&mut sim, &mut a, &b);

    // B holds A.
    let sdp_b = sdp_of(&b, 2, "sendonly");
    let re = reinvite(
        &mut sim,
        &mut b,
        &mut x.b,
        &a,
        &sdp_b,
        &sdp_of(&a, 2, "recvonly"),
    );
    assert_eq!(direction_of(&re.body), "sendonly");
    assert_eq!(
        rtp_of(&re.body),
        SocketAddr::new(RELAY_IP.parse().unwrap(), x.port_a)
    );
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter().any(|m| matches!(
            m,
            MediaCommand::Play { session, leg: Leg::A, clips, repeat: true }
                if *session == x.session && clips == &vec!["moh".to_string()]
        )),
        "music on hold to A: {cmds:?}"
    );

    // B calls C, talks, hangs up.
    let leg2 = dial(&mut sim, &mut b, "102");
    let ic = invite_to(&mut sim, &c);
    ringing(&mut sim, &c, &ic);
    answer_acked(&mut sim, &c, &ic);
    let (mut db2, _) = answered(&mut sim, &mut b, &leg2);
    let c_call_id = ic.headers.call_id.clone();
    hang_up(&mut sim, &mut b, &mut db2, &c, &c_call_id);
    let cmds = media_commands(&mut sim);
    assert!(
        !stops_play(&cmds, x.session, Leg::A),
        "A still hears music: {cmds:?}"
    );
    let calls = sim.ep.calls();
    assert_eq!(calls.len(), 1, "the held call lives on: {calls:?}");
    assert!(calls[0].answered);

    // B resumes A.
    let sdp_b = sdp_of(&b, 3, "sendrecv");
    let re = reinvite(
        &mut sim,
        &mut b,
        &mut x.b,
        &a,
        &sdp_b,
        &sdp_of(&a, 3, "sendrecv"),
    );
    assert_eq!(direction_of(&re.body), "sendrecv");
    let cmds = media_commands(&mut sim);
    assert!(
        stops_play(&cmds, x.session, Leg::A),
        "music stops: {cmds:?}"
    );
    assert!(
        !cmds.iter().any(|m| matches!(m, MediaCommand::Play { .. })),
        "{cmds:?}"
    );
    let (la, lb) = relay_legs(&cmds, x.session);
    assert_eq!(la.remote, Some(media_of(&a)));
    assert_eq!(lb.remote, Some(media_of(&b)));
    assert_eq!((la.local_port, lb.local_port), (x.port_a, x.port_b));

    let b_call_id = x.b_inv.headers.call_id.clone();
    hang_up(&mut sim, &mut a, &mut x.a, &b, &b_call_id);
    assert_drained(&mut sim, &[&a, &b, &c]);
}

#[test]
fn do_not_disturb_is_busy_skips_group_rings_and_is_set_by_feature_codes() {
    let mut sim = pbx(
        vec![group(
            "600",
            &["101", "102"],
            RingStrategy::Simultaneous,
            10_000,
            60_000,
            None,
        )],
        false,
        false,
    );
    let mut a = phone(&mut sim, "100");
    let mut b = phone(&mut sim, "101");
    let c = phone(&mut sim, "102");

    // 101 dials *78: 480 "Do Not Disturb On", the change is reported for the store.
    let _leg = offer(&mut sim, &mut b, "*78");
    let f = finals(&mut sim, &b);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].status, f[0].reason.as_str()),
        (480, "Do Not Disturb On")
    );
    assert!(sim.ep.dnd("101"));
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::DndChanged { ext, on: true } if ext == "101")));

    // A direct call: no ring, busy forwarding applies.
    sim.ep
        .set_forwarding("101", forwarding(None, Some("102"), None, 0));
    let _leg = dial(&mut sim, &mut a, "101");
    assert!(
        sim.take(b.addr)
            .iter()
            .all(|m| !matches!(m, Message::Request(r) if r.method == Method::Invite)),
        "101's phone does not ring"
    );
    let ic = invite_to(&mut sim, &c);
    decline(&mut sim, &c, &ic, 486);
    failed_with(&mut sim, &mut a, &_leg, 486);

    // Without busy forwarding and voicemail: 486 at once.
    sim.ep.set_forwarding("101", Forwarding::default());
    let leg = offer(&mut sim, &mut a, "101");
    failed_with(&mut sim, &mut a, &leg, 486);

    // The group rings only 102.
    let _leg = dial(&mut sim, &mut a, "600");
    let _ic = invite_to(&mut sim, &c);
    assert!(
        sim.take(b.addr)
            .iter()
            .all(|m| !matches!(m, Message::Request(r) if r.method == Method::Invite)),
        "the group skips 101"
    );

    // *79 turns it off.
    let _leg = offer(&mut sim, &mut b, "*79");
    let f = finals(&mut sim, &b);
    assert_eq!(
        (f[0].status, f[0].reason.as_str()),
        (480, "Do Not Disturb Off")
    );
    assert!(!sim.ep.dnd("101"));
}
