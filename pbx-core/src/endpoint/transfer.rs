//! Transfer (REFER, RFC 3515, with Replaces for attended transfer, RFC 3891) and call
//! pickup.
//!
//! Outpost is a B2BUA, so a REFER never travels end to end: Outpost itself rings the
//! transfer target for the party that stays (the transferee), who hears ringback
//! meanwhile, and the phone that transfers (the referrer) is told the target's progress
//! ([`super::referral`]) and hung up once the target answers; if the target fails, the
//! call goes back to the referrer. An attended transfer is complete when accepted. The
//! media stays anchored in the relay: only the relay's far side moves to the new phone.

use crate::cdr::Disposition;
use crate::media::session::{Leg, MediaCommand};
use crate::sip::transaction::TxKey;
use crate::sip::{wire, Method, NameAddr, Params, Peer, Request, Response};
use crate::Millis;

use super::call::{App, Call, CallState, Fork, ForkState, Origin, PendingLegA, RecordLeg};
use super::event::Event;
use super::plan::RingPlan;
use super::referral::{self, Referrer, Side};
use super::routing::{Dest, Routed};
use super::signalling::first_contact_uri;
use super::signalling::ClientRole;
use super::Endpoint;

/// A Refer-To header: the target's user part, and for attended transfer the Call-ID of the
/// dialog to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReferTo {
    pub user: String,
    pub replaces: Option<String>,
}

/// The Refer-To header of `req` (long or compact form), parsed; `None` when it is missing
/// or unusable (answered 400).
pub(super) fn refer_to_of(req: &Request) -> Option<ReferTo> {
    req.headers
        .get("Refer-To")
        .or_else(|| req.headers.get("r"))
        .and_then(parse_refer_to)
}

/// Parses a Refer-To value such as `<sip:200@pbx?Replaces=abc%40host%3Bto-tag%3D1>`.
pub(super) fn parse_refer_to(value: &str) -> Option<ReferTo> {
    let value = value.trim();
    let inner = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value),
    };
    let (uri_text, headers) = match inner.split_once('?') {
        Some((u, h)) => (u, Some(h)),
        None => (inner, None),
    };
    let uri = wire::parse_uri(uri_text).ok()?;
    let user: String = uri.user()?.chars().take(64).collect();
    let replaces = headers.and_then(|h| {
        h.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.eq_ignore_ascii_case("Replaces")
                .then(|| percent_decode(v))
        })
    });
    // The Replaces value is `call-id;to-tag=..;from-tag=..`: the Call-ID identifies it.
    let replaces = replaces.map(|r| r.split(';').next().unwrap_or_default().trim().to_string());
    Some(ReferTo {
        user,
        replaces: replaces.filter(|r| !r.is_empty()),
    })
}

/// True when an SDP's media direction is one-way or off (the phone holds or is held).
pub(super) fn is_one_way(sdp: &[u8]) -> bool {
    String::from_utf8_lossy(sdp)
        .lines()
        .any(|l| matches!(l.trim(), "a=sendonly" | "a=recvonly" | "a=inactive"))
}

/// The SDP with every direction attribute made `sendrecv`.
pub(super) fn two_way(sdp: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(sdp);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix("\r\n") {
            Some(b) => (b, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            },
        };
        if matches!(body.trim(), "a=sendonly" | "a=recvonly" | "a=inactive") {
            out.push_str("a=sendrecv");
        } else {
            out.push_str(body);
        }
        out.push_str(end);
    }
    out.into_bytes()
}

/// `%XX` decoding of a URI header value (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Endpoint {
    /// A REFER inside call `id`'s dialog with the caller (`from_a`) or the callee.
    pub(super) fn on_refer(
        &mut self,
        now: Millis,
        id: u64,
        from_a: bool,
        key: TxKey,
        req: Request,
        src: Peer,
    ) {
        let Some(refer_to) = refer_to_of(&req) else {
            self.sig.reply(now, &key, &req, src, 400, None);
            return;
        };
        let Some(call) = self.calls.get(&id) else {
            self.sig.reply(now, &key, &req, src, 481, None);
            return;
        };
        if call.pending_a.is_some() || call.referrer.is_some() {
            // A transfer of this call is in progress already.
            self.sig.reply(now, &key, &req, src, 491, None);
            return;
        }
        let bridged = call.state == CallState::Answered
            && call.winner.is_some()
            && call.app.is_none()
            && call.media.is_some();
        if !bridged || call.hops >= 4 {
            // Transfer needs a bridged call with anchored media.
            self.sig.reply(now, &key, &req, src, 603, None);
            return;
        }
        // The referrer's extension decides what it may transfer to.
        let referrer = if from_a {
            (call.origin == Origin::Extension).then(|| call.caller.clone())
        } else {
            match &call.plan {
                RingPlan::Extension { ext } => Some(ext.clone()),
                _ => call
                    .winner
                    .and_then(|w| call.forks.get(w))
                    .and_then(|f| f.local_uri.uri.user().map(str::to_string)),
            }
        };
        let Some(referrer) = referrer.filter(|r| self.accounts.has_user(r)) else {
            self.sig.reply(now, &key, &req, src, 403, None);
            return;
        };
        if let Some(replaced) = refer_to.replaces.as_deref() {
            if !from_a && self.attended_transfer(now, id, replaced, &key, &req, src) {
                return;
            }
        }
        if let Some(orbit) = self.park_orbit(&refer_to.user) {
            match orbit {
                Ok(orbit) => {
                    self.reply_202(now, &key, &req, src);
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.hops += 1;
                    }
                    self.park_call(now, id, from_a, &referrer, orbit);
                }
                Err(status) => self.sig.reply(now, &key, &req, src, status, None),
            }
            return;
        }
        let dest = self
            .resolve_target(&refer_to.user)
            .or_else(|_| self.resolve_external(&referrer, &refer_to.user));
        let dest = match dest {
            Ok(Dest::External(plan)) => {
                match self.gate_allows(now, &key, &req, src, &referrer, &refer_to.user, &plan) {
                    Ok(ticket) => {
                        if let (Some(t), Some(call)) = (ticket, self.calls.get_mut(&id)) {
                            if call.gate.is_none() {
                                call.gate = Some(t);
                            }
                        }
                        Dest::External(plan)
                    }
                    Err(()) => return,
                }
            }
            Ok(dest) => dest,
            Err(status) => {
                self.sig.reply(now, &key, &req, src, status, None);
                return;
            }
        };
        tracing::info!(%referrer, target = %refer_to.user, "blind transfer");
        self.reply_202(now, &key, &req, src);
        self.accept_blind_refer(now, id, from_a);
        let parties = self.calls.get_mut(&id).map(|call| {
            call.hops += 1;
            call.callee = refer_to.user.clone();
            (call.rec.caller.clone(), call.rec.callee.clone())
        });
        // The record: the referrer's leg ends; the next is the party that stays with the
        // target (its talk time starts when the target answers).
        if let Some((caller, callee)) = parties {
            let (caller, callee) = if from_a {
                (refer_to.user.clone(), callee)
            } else {
                (caller, refer_to.user.clone())
            };
            self.transferred(now, id, &caller, &callee, referrer.clone());
        }
        if from_a {
            self.transfer_leg_a(now, id, dest, &refer_to.user);
        } else {
            self.transfer_leg_b(now, id, dest, &refer_to.user);
        }
    }

    /// 202 Accepted to a REFER.
    fn reply_202(&mut self, now: Millis, key: &TxKey, req: &Request, src: Peer) {
        let tag = req.headers.to.tag().map(str::to_string);
        self.sig.reply(now, key, req, src, 202, tag.as_deref());
    }

    /// A blind transfer (the REFER was answered 202): `100 Trying` in its subscription; the
    /// referrer stays in its dialog, told the target's progress, until the target answers
    /// or fails.
    pub(super) fn accept_blind_refer(&mut self, now: Millis, id: u64, from_a: bool) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let dialog = if from_a {
            Some((
                call.a.out_leg(call.a.local_cseq),
                Side::A,
                call.a.local_tag.clone(),
            ))
        } else {
            call.winner.and_then(|w| {
                let f = call.forks.get(w)?;
                Some((f.out_leg(f.local_cseq), Side::Fork(w), f.local_tag.clone()))
            })
        };
        if let Some((leg, side, local_tag)) = dialog {
            let sdp = if from_a {
                call.a_sdp.clone()
            } else {
                call.b_sdp.clone()
            };
            call.referrer = Some(Referrer::accepted(
                &mut self.sig,
                now,
                leg,
                side,
                local_tag,
                sdp,
            ));
        }
    }

    /// An attended transfer, complete when accepted (the REFER was answered 202): a final
    /// NOTIFY (`200 OK`), and a BYE: the referrer (the callee of call `id`) is done.
    fn accept_attended_refer(&mut self, now: Millis, id: u64) {
        let leg = self.calls.get_mut(&id).and_then(|c| {
            let w = c.winner?;
            c.forks.get_mut(w).map(|f| f.next_out_leg())
        });
        let Some(leg) = leg else {
            return;
        };
        referral::notify_done(&mut self.sig, now, leg);
        if let Some(w) = self.calls.get(&id).and_then(|c| c.winner) {
            self.send_bye_b(now, id, w);
        }
    }

    /// The transfer target of call `id` answers with provisional `status`: its referrer
    /// hears of it.
    pub(super) fn referral_progress(&mut self, now: Millis, id: u64, status: u16) {
        if let Some(r) = self.calls.get_mut(&id).and_then(|c| c.referrer.as_mut()) {
            r.progress(&mut self.sig, now, status);
        }
    }

    /// The transfer of call `id` is through (the target answered, or its voicemail did):
    /// the referrer is told `200 OK` and hung up.
    pub(super) fn referral_done(&mut self, now: Millis, id: u64) {
        if let Some(mut r) = self.calls.get_mut(&id).and_then(|c| c.referrer.take()) {
            r.finish(&mut self.sig, now, 200);
            r.hang_up(&mut self.sig, now);
        }
    }

    /// The target of the blind transfer of call `id` failed with `status`. With its
    /// referrer still in the call, the referrer is told why and the call goes back to it
    /// (true); the referrer's phone then takes the held party back. False when the
    /// referrer is gone (hung up first): the caller's fate is the caller's.
    pub(super) fn referral_failed(&mut self, now: Millis, id: u64, status: u16) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        let Some(mut r) = call.referrer.take() else {
            return false;
        };
        r.finish(&mut self.sig, now, status);
        tracing::info!(
            status,
            "transfer target failed: the call goes back to the referrer"
        );
        let cseq = r.last_cseq();
        // The attempt's record ends as failed; the referrer and the party that stayed talk
        // again from now (the attempt's leg names the referrer as `transferred_by`).
        let referrer_ext = call.rec.transferred_by.clone().unwrap_or_default();
        let (caller, callee) = match r.side {
            Side::A => (referrer_ext, call.rec.callee.clone()),
            Side::Fork(_) => (call.rec.caller.clone(), referrer_ext),
        };
        call.callee.clone_from(&callee);
        let again = RecordLeg {
            caller,
            callee,
            start: now,
            answer: Some(now),
            transferred_by: None,
        };
        let ended = std::mem::replace(&mut call.rec, again);
        match r.side {
            Side::A => {
                call.a.local_cseq = call.a.local_cseq.max(cseq);
                if let Some(pending) = call.pending_a.take() {
                    self.by_a_call_id.remove(&pending.call_id);
                }
                self.events.push_back(Event::Media(MediaCommand::StopPlay {
                    session: id,
                    leg: Leg::B,
                }));
            }
            Side::Fork(w) => {
                self.retire_forks(now, id);
                let deadline = self.calls.get(&id).map(|c| c.ring_deadline);
                if let Some(deadline) = deadline {
                    self.ring_timers.remove(deadline, id);
                }
                self.set_step_deadline(id, None);
                let Some(call) = self.calls.get_mut(&id) else {
                    return true;
                };
                call.app = None;
                call.winner = Some(w);
                let peer = call.forks.get_mut(w).map(|f| {
                    f.retired = false;
                    f.local_cseq = f.local_cseq.max(cseq);
                    f.peer
                });
                self.events.push_back(Event::Media(MediaCommand::StopPlay {
                    session: id,
                    leg: Leg::A,
                }));
                // The relay's far side back to the referrer's phone (a target's early
                // media may have moved it).
                let _ = self.media_body(id, Leg::B, false, r.sdp(), peer);
            }
        }
        let Some(call) = self.calls.get(&id) else {
            return true;
        };
        let cdr = self.leg_record(call, &ended, now, Disposition::of_failure(status), status);
        self.events.push_back(Event::CallEnded(cdr));
        true
    }

    /// The referrer of call `id`'s transfer sent `req` in its dialog: a BYE takes it out
    /// of the call (the transfer goes on without it); a new offer waits for the target's
    /// answer (491); anything else is acknowledged.
    pub(super) fn referrer_request(
        &mut self,
        now: Millis,
        id: u64,
        key: TxKey,
        req: Request,
        src: Peer,
    ) {
        match req.method {
            Method::Ack => {}
            Method::Bye => {
                self.sig.reply(now, &key, &req, src, 200, None);
                if let Some(call) = self.calls.get_mut(&id) {
                    call.referrer = None;
                }
            }
            Method::Invite | Method::Update | Method::Refer | Method::Prack => {
                self.sig.reply(now, &key, &req, src, 491, None);
            }
            _ => self.sig.reply(now, &key, &req, src, 200, None),
        }
    }

    /// The callee transferred the caller: the caller hears ringback while `dest` rings.
    pub(super) fn transfer_leg_b(&mut self, now: Millis, id: u64, dest: Dest, target: &str) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(w) = call.winner.take() {
            if let Some(f) = call.forks.get_mut(w) {
                f.retired = true;
            }
        }
        tracing::debug!(target, "ringing the transfer target");
        call.app = Some(App::Transfer);
        call.best_failure = None;
        self.events.push_back(Event::Media(MediaCommand::Play {
            session: id,
            leg: Leg::A,
            clips: vec!["ringback".to_string()],
            repeat: true,
        }));
        match self.route(now, id, dest) {
            Routed::Ringing => {}
            Routed::Answered => {}
            Routed::Failed(..) => self.transfer_failed(now, id),
        }
    }

    /// The caller transferred the callee: Outpost calls the target itself and, when it
    /// answers, the target takes the caller's place on leg A. Only extensions and
    /// external numbers can be targets here (not menus or groups).
    pub(super) fn transfer_leg_a(&mut self, now: Millis, id: u64, dest: Dest, target: &str) {
        let contacts = match &dest {
            Dest::Extension(ext) => self.contacts_of(now, ext),
            _ => Vec::new(),
        };
        let Some(first) = contacts.first().cloned() else {
            tracing::info!(target, "transfer target unreachable: hanging up");
            if let Some(w) = self.calls.get(&id).and_then(|c| c.winner) {
                self.send_bye_b(now, id, w);
            }
            self.end_call(now, id, Disposition::Answered, 200);
            return;
        };
        let Ok(uri) = wire::parse_uri(&first.contact) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let body = match call.media.as_mut() {
            Some(m) => {
                m.set_signal_b(call.a.peer.addr.ip());
                // The offer goes to the target, which is to take over leg A.
                m.set_sdes(Leg::A, self.cfg.sdes_allowed(first.source.transport));
                m.offer(Leg::B, &call.b_sdp).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let peer = first.source;
        let Ok(to_uri) = wire::parse_uri(&format!("sip:{target}@{}", self.cfg.realm)) else {
            return;
        };
        let from = call
            .winner
            .and_then(|w| call.forks.get(w))
            .map(|f| {
                let mut n = f.remote_uri.clone();
                n.params = Params::default();
                n
            })
            .unwrap_or_else(|| call.a.local_uri.clone());
        let to = NameAddr::new(to_uri);
        let pending = PendingLegA::invite(&mut self.sig, now, id, peer, uri, from, to, body);
        self.events.push_back(Event::Media(MediaCommand::Play {
            session: id,
            leg: Leg::B,
            clips: vec!["ringback".to_string()],
            repeat: true,
        }));
        let b_call_id = pending.call_id.clone();
        if let Some(call) = self.calls.get_mut(&id) {
            call.pending_a = Some(pending);
        }
        self.by_a_call_id.insert(b_call_id, id);
    }

    /// A response to the INVITE that brings a new party onto leg A.
    pub(super) fn on_new_leg_a_response(&mut self, now: Millis, id: u64, resp: &Response) {
        if resp.is_provisional() {
            self.referral_progress(now, id, resp.status);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.pending_a.is_none() {
            return;
        }
        if !resp.is_success()
            && call.state == CallState::Answered
            && self.referral_failed(now, id, resp.status)
        {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(pending) = call.pending_a.take() else {
            return;
        };
        if !resp.is_success() || call.state != CallState::Answered {
            tracing::info!(
                status = resp.status,
                "transfer target did not answer: hanging up"
            );
            self.by_a_call_id.remove(&pending.call_id);
            if let Some(w) = self.calls.get(&id).and_then(|c| c.winner) {
                self.send_bye_b(now, id, w);
            }
            self.end_call(now, id, Disposition::Answered, 200);
            return;
        }
        // The new party becomes leg A (its dialog stands in for the caller's).
        call.answered(now);
        let old_call_id = pending.take_over(&mut call.a, resp);
        call.pending_reinvite_ack = None;
        if self.by_a_call_id.get(&old_call_id) == Some(&id) {
            self.by_a_call_id.remove(&old_call_id);
        }
        let cseq = resp.headers.cseq.seq;
        // (The relay admits the new party by the address in its SDP.)
        let _ = self.media_body(id, Leg::A, false, &resp.body, None);
        self.events.push_back(Event::Media(MediaCommand::StopPlay {
            session: id,
            leg: Leg::B,
        }));
        self.send_in_dialog_ack_a(id, cseq, Vec::new(), None);
        self.referral_done(now, id);
    }

    /// Attended transfer: the callee of call `id` asks that the caller replace it in
    /// `replaced` (the callee's other, answered call). False when that call is not found
    /// (the REFER is then handled as a blind transfer).
    fn attended_transfer(
        &mut self,
        now: Millis,
        id: u64,
        replaced: &str,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) -> bool {
        let Some(&other) = self.by_a_call_id.get(replaced) else {
            return false;
        };
        let movable = other != id
            && self.calls.get(&other).is_some_and(|c| {
                c.state == CallState::Answered && c.winner.is_some() && c.media.is_some()
            });
        if !movable {
            return false;
        }
        tracing::info!("attended transfer");
        self.reply_202(now, key, req, src);
        self.accept_attended_refer(now, id);
        // Leg A of the other call (the referrer's consultation call) is hung up; its
        // callee (the target) moves into this call in place of the referrer.
        self.send_bye_a(now, other);
        let Some(mut moved) = self.calls.get_mut(&other).and_then(|c| {
            let w = c.winner.take()?;
            let f = c.forks.get_mut(w)?;
            let placeholder = Fork::placeholder();
            Some(std::mem::replace(f, placeholder))
        }) else {
            return true;
        };
        // The records: the consultation call's leg (referrer → target) and this call's
        // leg (caller → referrer) end as transferred, under this call's link; the next leg
        // is the caller with the target, talking from now.
        let linked = self.calls.get(&id).map(|c| c.linked_id.clone());
        let target = self.calls.get_mut(&other).map(|c| {
            if let Some(linked) = linked {
                c.linked_id = linked;
            }
            c.rec.callee.clone()
        });
        self.end_call(now, other, Disposition::Transferred, 200);
        let parties = self
            .calls
            .get(&id)
            .map(|c| (c.rec.caller.clone(), c.rec.callee.clone()));
        if let (Some((caller, referrer)), Some(target)) = (parties, target) {
            self.transferred(now, id, &caller, &target, referrer);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return true;
        };
        call.answered(now);
        if let Some(w) = call.winner.take() {
            if let Some(f) = call.forks.get_mut(w) {
                f.retired = true;
            }
        }
        let idx = call.forks.len();
        let leg = moved.next_out_leg();
        let (cseq, peer) = (leg.cseq, leg.peer);
        if let Some(m) = call.media.as_mut() {
            m.set_signal_b(peer.addr.ip());
            m.set_sdes(Leg::B, self.cfg.sdes_allowed(peer.transport));
        }
        // The referrer usually held the caller first: the target is offered a two-way
        // stream, and the caller is resumed once the target answered.
        let offer = match call.media.as_mut() {
            Some(m) => m.offer(Leg::A, &two_way(&call.a_sdp)).unwrap_or_default(),
            None => Vec::new(),
        };
        let b_call_id = moved.call_id.clone();
        moved.state = ForkState::Answered;
        moved.invite_cseq = cseq;
        moved.ack = None;
        call.forks.push(moved);
        call.winner = Some(idx);
        self.by_b_call_id.insert(b_call_id, (id, idx));
        // Re-INVITE the target towards this call's relay session.
        leg.send_reinvite(
            &mut self.sig,
            now,
            offer,
            ClientRole::Reoffer {
                call: id,
                fork: idx,
            },
        );
        true
    }

    /// The answer to a re-INVITE Outpost sent on its own (attended transfer).
    pub(super) fn on_reoffer_response(
        &mut self,
        now: Millis,
        id: u64,
        fork: usize,
        resp: &Response,
    ) {
        if !resp.is_success() {
            return;
        }
        let peer = self
            .calls
            .get(&id)
            .and_then(|c| c.forks.get(fork))
            .map(|f| f.peer);
        let _ = self.media_body(id, Leg::B, false, &resp.body, peer);
        self.send_in_dialog_ack_b(id, fork, resp.headers.cseq.seq, Vec::new(), None);
        // Take the caller off hold: offer it the target's (two-way) media.
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if !is_one_way(&call.a_sdp) {
            return;
        }
        // The hold was the referrer's: the music stops now that the target is there.
        self.events.push_back(Event::Media(MediaCommand::StopPlay {
            session: id,
            leg: Leg::A,
        }));
        self.resume_a(now, id);
    }

    /// Takes the caller of call `id` off hold: a re-INVITE offering it leg B's last media,
    /// two-way.
    pub(super) fn resume_a(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let b_sdp = two_way(&call.b_sdp);
        let Some(offer) = call
            .media
            .as_mut()
            .and_then(|m| m.offer(Leg::B, &b_sdp).ok())
        else {
            return;
        };
        call.a.next_out_leg().send_reinvite(
            &mut self.sig,
            now,
            offer,
            ClientRole::ResumeA { call: id },
        );
    }

    /// The caller's answer to the re-INVITE that takes it off hold after a transfer.
    pub(super) fn on_resume_a_response(&mut self, id: u64, resp: &Response) {
        if !resp.is_success() {
            return;
        }
        let _ = self.media_body(id, Leg::A, false, &resp.body, None);
        self.send_in_dialog_ack_a(id, resp.headers.cseq.seq, Vec::new(), None);
    }

    /// Call pickup: `picker` takes the call ringing `target` (or any extension).
    pub(super) fn pickup(
        &mut self,
        now: Millis,
        key: TxKey,
        req: Request,
        src: Peer,
        picker: &str,
        target: Option<&str>,
    ) {
        let ringing = |c: &Call| -> bool {
            c.state == CallState::Ringing
                && c.app.is_none()
                && !c.late_offer
                && c.media.is_some()
                && match (&c.plan, target) {
                    (RingPlan::Extension { ext }, Some(t)) => ext == t,
                    (RingPlan::Extension { ext }, None) => ext != picker,
                    (RingPlan::Group { group, .. }, t) => self
                        .cfg
                        .groups
                        .get(*group)
                        .is_some_and(|g| t.is_none_or(|t| g.members.iter().any(|m| m == t))),
                    _ => false,
                }
        };
        let found = self
            .calls
            .iter()
            .filter(|(_, c)| ringing(c))
            .min_by_key(|(_, c)| c.start)
            .map(|(&id, _)| id);
        let Some(id) = found else {
            let mut resp = Response::to_request(&req, 480, Some(&self.sig.new_tag()));
            resp.reason = "Nothing To Pick Up".to_string();
            self.sig.send(now, &key, resp, src);
            return;
        };
        let Some(a_sdp) = self.calls.get(&id).map(|c| c.a_sdp.clone()) else {
            return;
        };
        let Some(for_a) = self.join_as_leg_b(now, id, &key, &req, src, &a_sdp) else {
            return;
        };
        tracing::info!(picker, "call picked up");
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.state = CallState::Answered;
        call.answer = Some(now);
        call.answered(now);
        self.counters.calls_answered += 1;
        let (a_key, a_invite, a_tag, a_peer) = (
            call.a.invite_key.clone(),
            call.a.invite.clone(),
            call.a.local_tag.clone(),
            call.a.peer,
        );
        self.sig
            .answer_200_sdp(now, &a_key, &a_invite, a_peer, &a_tag, for_a, None);
    }

    /// The INVITE `req` (key `key`, from `src`, with an offer) becomes leg B of call `id`,
    /// answered at once (200) with the caller's media `a_sdp` as the answer; forks still
    /// ringing are retired and the ring timers stopped. Returns the new phone's offer,
    /// anchored, for the caller; `None` (488 sent) when the SDP does not fit.
    pub(super) fn join_as_leg_b(
        &mut self,
        now: Millis,
        id: u64,
        key: &TxKey,
        req: &Request,
        src: Peer,
        a_sdp: &[u8],
    ) -> Option<Vec<u8>> {
        if req.body.is_empty() {
            self.sig.reply(now, key, req, src, 488, None);
            return None;
        }
        let call = self.calls.get_mut(&id)?;
        let m = call.media.as_mut()?;
        m.set_signal_b(src.addr.ip());
        m.set_sdes(Leg::B, self.cfg.sdes_allowed(src.transport));
        // The new phone's offer meets the caller's: the caller's SDP serves as the answer
        // to the new phone, and the new phone's (anchored) as the offer to the caller.
        let for_a = m.offer(Leg::B, &req.body);
        let for_p = m.answer(Leg::A, a_sdp);
        let (Ok(for_a), Ok((for_p, cmds))) = (for_a, for_p) else {
            self.sig.reply(now, key, req, src, 488, None);
            return None;
        };
        self.retire_forks(now, id);
        let local_tag = self.sig.new_tag();
        let call = self.calls.get_mut(&id)?;
        let mut local_uri = req.headers.to.clone();
        local_uri.params = Params::default();
        let mut remote_uri = req.headers.from.clone();
        remote_uri.params.remove("tag");
        let idx = call.forks.len();
        call.forks.push(Fork {
            call_id: req.headers.call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: req.headers.from.tag().map(str::to_string),
            local_uri,
            remote_uri,
            target: first_contact_uri(&req.headers).unwrap_or_else(|| req.headers.from.uri.clone()),
            peer: src,
            invite_key: key.clone(),
            invite_cseq: req.headers.cseq.seq,
            local_cseq: 0,
            state: ForkState::Answered,
            ack: None,
            tx_live: false,
            retired: false,
            trunk: None,
            rings: None,
            auth_tries: 0,
            trunk_invite: None,
        });
        call.winner = Some(idx);
        let deadline = call.ring_deadline;
        self.ring_timers.remove(deadline, id);
        self.set_step_deadline(id, None);
        self.by_b_call_id
            .insert(req.headers.call_id.clone(), (id, idx));
        for cmd in cmds {
            self.events.push_back(Event::Media(cmd));
        }
        self.sig
            .answer_200_sdp(now, key, req, src, &local_tag, for_p, None);
        Some(for_a)
    }
}

#[cfg(test)]
mod tests {
    use crate::sip::transaction::TxKey;

    use super::super::signalling::Signalling;
    use super::super::ALLOW;
    use crate::sip::Contact;

    use super::super::call::tests::{leg_a, name, peer, sent, signalling};
    use super::*;

    /// The INVITE `sig` sent in its only NewLegA client transaction.
    fn new_leg_a_invite(sig: &Signalling, call: u64) -> (TxKey, Request) {
        let key = sig
            .clients
            .iter()
            .find(|(_, r)| matches!(r, ClientRole::NewLegA { call: c } if *c == call))
            .map(|(k, _)| k.clone())
            .expect("a NewLegA transaction");
        let invite = sig.tx.client_request(&key).expect("the INVITE").clone();
        (key, invite)
    }

    #[test]
    fn a_transfer_target_is_invited_and_then_takes_over_the_callers_leg() {
        let mut sig = signalling();
        let target = wire::parse_uri("sip:300@10.0.0.7:5060").expect("uri");
        let pending = PendingLegA::invite(
            &mut sig,
            0,
            9,
            peer("10.0.0.7:5060"),
            target,
            name("sip:200@pbx"),
            name("sip:300@pbx"),
            b"v=0\r\n".to_vec(),
        );
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("INVITE sip:300@10.0.0.7:5060 SIP/2.0"),
            "{}",
            out[0]
        );
        assert!(
            out[0].contains(&format!("Call-ID: {}", pending.call_id)),
            "{}",
            out[0]
        );
        assert!(
            out[0].contains(&format!("tag={}", pending.local_tag)),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 1 INVITE"), "{}", out[0]);
        assert!(
            out[0].contains("Content-Type: application/sdp"),
            "{}",
            out[0]
        );
        assert!(out[0].contains(ALLOW), "{}", out[0]);
        // Timer A on the virtual clock: unanswered, the INVITE goes again after T1.
        sig.tx.handle_timeout(499);
        assert!(sent(&mut sig).is_empty());
        sig.tx.handle_timeout(500);
        assert_eq!(sent(&mut sig), out);

        let (_, invite) = new_leg_a_invite(&sig, 9);
        let mut ok = Response::to_request(&invite, 200, Some("target"));
        ok.headers.contact = vec![Contact::Addr(name("sip:300@10.0.0.7:5070"))];
        let new_call_id = pending.call_id.clone();
        let mut a = leg_a();
        a.local_cseq = 4;
        let replaced = pending.take_over(&mut a, &ok);
        assert_eq!(replaced, "a-call");
        assert_eq!(a.call_id, new_call_id);
        assert_eq!(a.remote_tag, "target");
        assert_eq!(a.target.to_string(), "sip:300@10.0.0.7:5070");
        assert_eq!(a.peer, peer("10.0.0.7:5060"));
        // The target's dialog continues after its INVITE's CSeq 1.
        let bye = a.next_out_leg();
        assert_eq!(bye.cseq, 2);
        assert_eq!(bye.to.tag(), Some("target"));
        assert_eq!(bye.from.uri.user(), Some("200"));
    }

    #[test]
    fn the_referrer_is_notified_once_and_its_subscription_ends() {
        let mut sig = signalling();
        let mut a = leg_a();
        referral::notify_done(&mut sig, 0, a.next_out_leg());
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("NOTIFY sip:100@10.0.0.5:5062 SIP/2.0"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 1 NOTIFY"), "{}", out[0]);
        assert!(out[0].contains("Event: refer"), "{}", out[0]);
        assert!(
            out[0].contains("Subscription-State: terminated;reason=noresource"),
            "{}",
            out[0]
        );
        assert!(out[0].ends_with("\r\n\r\nSIP/2.0 200 OK\r\n"), "{}", out[0]);
        assert!(sig
            .clients
            .values()
            .any(|r| matches!(r, ClientRole::Notify)));
        // A non-INVITE transaction: retransmitted at T1 until answered.
        sig.tx.handle_timeout(500);
        assert_eq!(sent(&mut sig), out);
    }

    #[test]
    fn a_target_without_contact_is_reached_where_it_was_invited() {
        let mut sig = signalling();
        let pending = PendingLegA::invite(
            &mut sig,
            0,
            3,
            peer("10.0.0.7:5060"),
            wire::parse_uri("sip:300@10.0.0.7:5060").expect("uri"),
            name("sip:200@pbx"),
            name("sip:300@pbx"),
            Vec::new(),
        );
        let out = sent(&mut sig);
        assert!(!out[0].contains("Content-Type"), "{}", out[0]);
        let (_, invite) = new_leg_a_invite(&sig, 3);
        let ok = Response::to_request(&invite, 200, Some("t"));
        let mut a = leg_a();
        pending.take_over(&mut a, &ok);
        assert_eq!(a.target.to_string(), "sip:300@10.0.0.7:5060");
    }

    #[test]
    fn refer_to_blind_and_attended() {
        let r = parse_refer_to("<sip:200@pbx.example>").expect("parses");
        assert_eq!(r.user, "200");
        assert_eq!(r.replaces, None);
        let r = parse_refer_to(
            "<sip:201@10.0.0.1?Replaces=abc%40host%3Bto-tag%3D12%3Bfrom-tag%3D34>;x=y",
        )
        .expect("parses");
        assert_eq!(r.user, "201");
        assert_eq!(r.replaces.as_deref(), Some("abc@host"));
        assert_eq!(parse_refer_to("garbage"), None);
        assert_eq!(parse_refer_to("<sip:pbx.example>"), None);
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }

    #[test]
    fn held_sdp_is_made_two_way() {
        let held = b"v=0\r\nm=audio 4000 RTP/AVP 0\r\na=recvonly\r\n";
        assert!(is_one_way(held));
        let fixed = two_way(held);
        assert_eq!(
            fixed,
            b"v=0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n".to_vec()
        );
        assert!(!is_one_way(&fixed));
    }
}
