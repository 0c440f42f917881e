//! Paging: an extension dials a paging number (`[[paging]]`, e.g. `*80`) and every phone of
//! every member that is not in a call answers by itself and hears the caller, one way.
//!
//! Outpost answers the caller at once (a beep, then talk) and puts the caller's relay leg
//! into a mix as its talker. Each registered phone of each free member gets an INVITE with
//! the vendors' auto-answer headers ([`CALL_INFO`], [`ALERT_INFO`]) and a `sendonly` offer
//! from a relay port of its own; a phone that answers gets its own relay session (its leg
//! B, leg A absent) joined to the mix as a listener. A phone that hangs up leaves; the page
//! ends when the caller hangs up (BYE to every paged phone, CANCEL to those still ringing)
//! or when no paged phone is left. A phone still ringing after the group's ring time (it
//! does not auto-answer) is cancelled; if none answered by then, the page ends.
//!
//! Bounded: at most [`MAX_PAGED`] phones per page (the relay's mix holds 8 legs); further
//! contacts are not paged. Not reachable from trunks (only `resolve` for extensions knows
//! paging numbers).

use rand::Rng;

use crate::media::anchor::CallMedia;
use crate::media::sdp::{Direction, Sdp};
use crate::media::session::{Leg, LegMedia, MediaCommand, MixRole};
use crate::registrar::Binding;
use crate::sip::{wire, Method, NameAddr, Params, Peer, Request, Response};
use crate::Millis;

use super::call::{App, CallState, ForkIdentity, ForkState, PageMember, RecordLeg};
use super::signalling::first_contact_uri;
use super::{media_addr, Endpoint, Event};
use crate::cdr::Disposition;
use crate::sip::transaction::TxKey;

/// Most phones one page reaches: the relay's mix holds 8 legs, the caller's and these.
pub const MAX_PAGED: usize = 7;

/// How long a paged phone may ring before it is cancelled, by default (`ring_secs`).
pub const PAGE_RING_MS: u64 = 10_000;

/// Auto-answer at once, as the `answer-after` parameter of a `Call-Info` naming the box
/// (read by phones whose intercom setting allows it; docs/call-features.md#paging).
const CALL_INFO: &str = "answer-after=0";
/// Auto-answer in the `Alert-Info` form (the other form phones read).
const ALERT_INFO: &str = "<http://127.0.0.1>;info=alert-autoanswer";

impl Endpoint {
    /// Pages group `group` for call `id`: answers the caller and INVITEs the free members'
    /// phones. False when nobody can be paged, media is not anchored or the caller's offer
    /// has no G.711.
    pub(super) fn start_paging(&mut self, now: Millis, id: u64, group: usize) -> bool {
        let Some(g) = self.cfg.paging.get(group).cloned() else {
            return false;
        };
        let caller = self.calls.get(&id).map(|c| c.caller.clone());
        let watched = g.members.iter().cloned().collect();
        let lines = self.line_states(now, &watched);
        let mut targets: Vec<(String, Binding)> = Vec::new();
        for ext in &g.members {
            // The caller itself, a member on a call or ringing, or in do-not-disturb.
            if caller.as_deref() == Some(ext.as_str()) || lines.get(ext).is_some_and(|l| l.busy()) {
                continue;
            }
            for binding in self.contacts_of(now, ext) {
                if targets.len() < MAX_PAGED {
                    targets.push((ext.clone(), binding));
                }
            }
        }
        if targets.is_empty() || self.cfg.media.is_none() {
            return false;
        }
        let app = App::Paging(Vec::new());
        if !self.answer_with_app(now, id, app, vec!["beep".to_string()]) {
            return false;
        }
        self.join_mix(id, id, Leg::A, MixRole::Talker);
        for (ext, binding) in targets {
            self.page_phone(now, id, &ext, &binding);
        }
        if self.paged_phones(id) == 0 {
            // Not one INVITE could go out (no relay port): the page is over at once.
            self.send_bye_a(now, id);
            self.end_call(now, id, Disposition::Unavailable, 480);
        } else {
            self.set_step_deadline(id, Some(now.saturating_add(g.ring_ms)));
        }
        true
    }

    /// The ring time of page `id` is over: every paged phone still ringing (it did not
    /// answer by itself) is cancelled; the page goes on with those that answered, and
    /// ends when none did.
    pub(super) fn page_ring_over(&mut self, now: Millis, id: u64) {
        self.cancel_forks(now, id, None);
        // Their records say so now (their 487s, later, find no member left).
        let ringing: Vec<PageMember> = match self.calls.get_mut(&id).and_then(|c| c.app.as_mut()) {
            Some(App::Paging(members)) => members
                .iter_mut()
                .filter(|m| m.as_ref().is_some_and(|m| m.rec.answer.is_none()))
                .filter_map(Option::take)
                .collect(),
            _ => Vec::new(),
        };
        for m in ringing {
            self.free_member(now, id, m, 480);
        }
        // Only the phones that answered and still listen are members now.
        if self.paged_phones(id) == 0 {
            self.send_bye_a(now, id);
            self.end_call(now, id, Disposition::Answered, 200);
        }
    }

    /// INVITEs one phone of member `ext` for page `id`, from a relay port of its own.
    fn page_phone(&mut self, now: Millis, id: u64, ext: &str, binding: &Binding) {
        let Ok(target) = wire::parse_uri(&binding.contact) else {
            return;
        };
        let Some(settings) = self.cfg.media.clone() else {
            return;
        };
        // Each phone is offered what the caller agreed to send (its codec as answered).
        let Some(agreed) = self
            .calls
            .get(&id)
            .and_then(|c| c.media.as_ref())
            .and_then(CallMedia::agreed_offer)
        else {
            return;
        };
        let Some(port) = self.ports.as_mut().and_then(|p| p.take()) else {
            tracing::warn!("no free media port: {ext} not paged");
            return;
        };
        let peer = binding.source;
        let session = self.next_call;
        self.next_call += 1;
        let mut media = CallMedia::new(
            session,
            0,
            port,
            media_addr(&settings, peer.addr.ip()),
            media_addr(&settings, peer.addr.ip()),
            peer.addr.ip(),
            peer.addr.ip(),
            self.sig.rng.gen(),
        );
        media.set_key_seed(self.sig.rng.gen());
        media.set_sdes(Leg::B, self.cfg.sdes_allowed(peer.transport));
        let Some(offer) = media.offer(Leg::A, &agreed).ok().and_then(|o| one_way(&o)) else {
            if let Some(pool) = self.ports.as_mut() {
                pool.give_back(port);
            }
            return;
        };
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let mut local_uri = call.a.remote_uri.clone();
        local_uri.params = Params::default();
        let Ok(to) = wire::parse_uri(&format!("sip:{ext}@{}", self.cfg.realm)) else {
            return;
        };
        let host = local_uri.uri.host_with_port.to_string();
        let identity = ForkIdentity {
            local_uri,
            remote_uri: NameAddr::new(to),
            contact_user: call.caller.clone(),
            asserted: None,
            extra: vec![
                ("Call-Info", format!("<sip:{host}>;{CALL_INFO}")),
                ("Alert-Info", ALERT_INFO.to_string()),
            ],
        };
        let invite = call.a.invite.clone();
        let idx = call.forks.len();
        let mut rec = RecordLeg::first(&call.caller, ext, now);
        rec.transferred_by = Some(format!("page:{}", call.callee));
        let fork = self.start_fork_to(now, id, idx, &invite, offer, target, peer, identity);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.forks.push(fork);
        if let Some(App::Paging(members)) = call.app.as_mut() {
            members.resize_with(idx, || None);
            members.push(Some(PageMember {
                session,
                port,
                media,
                rec,
            }));
        }
    }

    /// Whether call `id` is a page.
    pub(super) fn is_page(&self, id: u64) -> bool {
        self.calls
            .get(&id)
            .is_some_and(|c| matches!(c.app, Some(App::Paging(_))))
    }

    /// Paged phones still ringing or listening.
    fn paged_phones(&self, id: u64) -> usize {
        match self.calls.get(&id).map(|c| &c.app) {
            Some(Some(App::Paging(members))) => members.iter().flatten().count(),
            _ => 0,
        }
    }

    /// A response to the INVITE of paged phone `fork`.
    pub(super) fn page_response(&mut self, now: Millis, id: u64, fork: usize, resp: &Response) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let over = call.state == CallState::Ended;
        let Some(f) = call.forks.get_mut(fork) else {
            return;
        };
        if resp.is_provisional() {
            if f.state == ForkState::CancelPending {
                f.state = ForkState::Cancelled;
                let (key, peer) = (f.invite_key.clone(), f.peer);
                self.sig.send_cancel(now, &key, peer);
            } else if resp.status != 100 && f.state == ForkState::Calling {
                f.state = ForkState::Ringing;
                f.remote_tag = resp.headers.to.tag().map(str::to_string);
            }
            return;
        }
        if !resp.is_success() {
            f.state = ForkState::Failed;
            // Outpost cancels a paged phone only when its ring time is over.
            let status = if resp.status == 487 { 480 } else { resp.status };
            self.page_member_left(now, id, fork, status);
            return;
        }
        f.remote_tag = resp.headers.to.tag().map(str::to_string);
        if let Some(uri) = first_contact_uri(&resp.headers) {
            f.target = uri;
        }
        if over || !matches!(f.state, ForkState::Calling | ForkState::Ringing) {
            // The page ended meanwhile: this phone is hung up at once.
            self.reject_late_2xx(now, id, fork);
            return;
        }
        f.state = ForkState::Answered;
        let answered = match call.app.as_mut() {
            Some(App::Paging(members)) => members.get_mut(fork).and_then(Option::as_mut).map(|m| {
                m.rec.answer = Some(now);
                (m.session, m.media.answer(Leg::B, &resp.body))
            }),
            _ => None,
        };
        self.send_ack_b(id, fork, Vec::new(), None);
        let Some((session, Ok((_, cmds)))) = answered else {
            tracing::debug!("paged phone answered without usable SDP: hung up");
            self.send_bye_b(now, id, fork);
            self.page_member_left(now, id, fork, 488);
            return;
        };
        for cmd in cmds {
            // Leg A of a paged phone's session is absent: the caller is in the mix.
            match cmd {
                MediaCommand::Open { session, b, .. } | MediaCommand::Update { session, b, .. } => {
                    self.events.push_back(Event::Media(MediaCommand::Open {
                        session,
                        a: LegMedia::absent(),
                        b,
                    }));
                }
                _ => {}
            }
        }
        self.join_mix(id, session, Leg::B, MixRole::Listener);
    }

    /// A request inside a paged phone's dialog: BYE (it left), anything else is answered
    /// without changing the page (a re-INVITE is refused: the offer stays one way).
    pub(super) fn page_request(
        &mut self,
        now: Millis,
        id: u64,
        fork: usize,
        key: TxKey,
        req: Request,
        src: Peer,
    ) {
        match req.method {
            Method::Bye => {
                self.sig.reply(now, &key, &req, src, 200, None);
                // Gone: no BYE for it when the page ends.
                if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) {
                    f.state = ForkState::Failed;
                }
                self.page_member_left(now, id, fork, 200);
            }
            Method::Ack => {}
            Method::Invite | Method::Update => self.sig.reply(now, &key, &req, src, 488, None),
            _ => self.sig.reply(now, &key, &req, src, 200, None),
        }
    }

    /// Paged phone `fork` is gone (hung up: `status` 200; failed with `status`): its record
    /// is written, its relay session and port are freed; with no phone left the caller is
    /// hung up.
    fn page_member_left(&mut self, now: Millis, id: u64, fork: usize, status: u16) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let over = call.state == CallState::Ended;
        let member = match call.app.as_mut() {
            Some(App::Paging(members)) => members.get_mut(fork).and_then(Option::take),
            _ => None,
        };
        if let Some(m) = member {
            self.free_member(now, id, m, status);
        }
        if !over && self.paged_phones(id) == 0 {
            self.send_bye_a(now, id);
            self.end_call(now, id, Disposition::Answered, 200);
        }
    }

    /// Writes the record of a paged phone of page `id` that is gone (`status` 200: it had
    /// answered; else why not), closes its relay session (which takes it out of the mix)
    /// and returns its port.
    fn free_member(&mut self, now: Millis, id: u64, m: PageMember, status: u16) {
        if let Some(call) = self.calls.get(&id) {
            let disposition = if status < 300 {
                Disposition::Answered
            } else {
                Disposition::of_failure(status)
            };
            let cdr = self.leg_record(call, &m.rec, now, disposition, status);
            self.events.push_back(Event::CallEnded(cdr));
        }
        if let Some(cmd) = m.media.close() {
            self.events.push_back(Event::Media(cmd));
        }
        if let Some(pool) = self.ports.as_mut() {
            pool.give_back(m.port);
        }
    }

    /// The page `id` ends (the caller hung up, timed out, or nobody is left): every
    /// listening phone gets a BYE, every ringing one a CANCEL, every session is closed.
    pub(super) fn end_page(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let members = match call.app.as_mut() {
            Some(App::Paging(members)) => std::mem::take(members),
            _ => return,
        };
        let answered: Vec<usize> = call
            .forks
            .iter()
            .enumerate()
            .filter(|(_, f)| f.state == ForkState::Answered)
            .map(|(i, _)| i)
            .collect();
        for fork in answered {
            self.send_bye_b(now, id, fork);
        }
        self.cancel_forks(now, id, None);
        for m in members.into_iter().flatten() {
            // The caller hung up: a phone still ringing is cancelled.
            let status = if m.rec.answer.is_some() { 200 } else { 487 };
            self.free_member(now, id, m, status);
        }
    }
}

/// Our offer to a paged phone, made one way: `a=sendonly` on its audio (the phone answers
/// `recvonly`; its microphone is not wanted). `None` for an offer without audio.
fn one_way(offer: &[u8]) -> Option<Vec<u8>> {
    let mut sdp = Sdp::parse(offer).ok()?;
    let (idx, _) = sdp.audio()?;
    sdp.media.get_mut(idx)?.set_direction(Direction::SendOnly);
    Some(sdp.emit())
}

#[cfg(test)]
mod tests {
    use super::one_way;

    #[test]
    fn the_offer_to_a_paged_phone_is_sendonly_whatever_the_caller_said() {
        let offer = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
            m=audio 10000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
        let out = String::from_utf8(one_way(offer).expect("audio")).expect("text");
        assert!(out.contains("a=sendonly"), "{out}");
        assert!(!out.contains("a=sendrecv"), "{out}");
        assert_eq!(one_way(b"v=0\r\n"), None);
    }
}
