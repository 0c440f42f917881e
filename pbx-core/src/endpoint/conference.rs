//! Ad-hoc conference: a phone joins its calls into one, mixed in the relay.
//!
//! Outpost is the conference focus of RFC 4579, with a B2BUA's advantage: every party's
//! media already runs through the relay, so a call joins by moving its relay leg into a
//! mix; no party is called again. An extension's phone dials the conference number
//! (`[features] conference`, `*3`; the conference factory URI of a phone's network
//! conference setting):
//! - Outpost answers it (a beep; `Contact: ...;isfocus`) and puts that call's leg into a new
//!   mix (the room, named by that call's id);
//! - every other answered call of the same phone (same signalling address) joins at once:
//!   the phone's own dialog of that call is hung up (as the `Replaces` of RFC 4579 would
//!   end it), the other party stays in its dialog with Outpost, stops hearing music, is
//!   taken off hold if the phone had held it, and its leg goes into the mix. Everyone hears
//!   everyone else (per-party jitter buffers, G.711; the relay's mixer);
//! - a phone that follows RFC 4579 then REFERs the focus with `Refer-To: <...?Replaces=..>`
//!   for each call: a call that joined already is told done (202, NOTIFY `200 OK`); another
//!   call of the phone joins then. A REFER naming anything else (a number to call in, a
//!   dialog of another phone) is refused with 403: calling a party in is not done.
//!
//! A party that hangs up leaves; the room lives while two are in it, and the last one is
//! hung up. A party's re-INVITE (hold, resume, a session-timer refresh) is answered by
//! Outpost as the other end of its leg; its audio stays in the mix. A call whose media is
//! not anchored, or whose other party does not speak G.711, does not join (it stays as it
//! is, with the phone).
//!
//! Bounded: a room has at most [`MAX_PARTIES`] parties (the relay's mix holds 8 legs);
//! rooms are at most one per call, and cost a few hundred bytes each plus the relay's
//! mixer (27 KiB).

use std::collections::HashMap;

use crate::cdr::Disposition;
use crate::media::anchor::CallMedia;
use crate::media::session::{Codec, Leg, MediaCommand, MixRole};
use crate::sip::transaction::TxKey;
use crate::sip::{Method, Peer, Request, Response};
use crate::Millis;

use super::call::{App, CallState};
use super::event::Event;
use super::referral;
use super::signalling::ClientRole;
use super::transfer::{is_one_way, refer_to_of, two_way};
use super::Endpoint;

/// Most parties in one conference: the relay's mix holds 8 legs.
pub const MAX_PARTIES: usize = 8;

/// One conference.
#[derive(Debug)]
struct Room {
    /// The phone that made it (its signalling address): only its calls join.
    phone: Peer,
    /// The extension that made it (the records' `transferred_by`).
    host: String,
    /// The calls in it, each with one party's leg in the mix (the first: the host's call
    /// to the conference number).
    members: Vec<u64>,
    /// Call-IDs of the host's dialogs that joined (and were hung up): a REFER naming one
    /// is told done.
    joined: Vec<String>,
}

/// The conferences in progress, by room (the id of the call that made it, also its mix).
#[derive(Debug, Default)]
pub(super) struct Conferences {
    rooms: HashMap<u64, Room>,
}

impl Conferences {
    /// Parties in room `room` (0: none).
    pub(super) fn parties(&self, room: u64) -> usize {
        self.rooms.get(&room).map_or(0, |r| r.members.len())
    }
}

impl Endpoint {
    /// Call `id` dialled the conference number: answers it into a new room and joins the
    /// phone's other answered calls. False when media is not anchored.
    pub(super) fn start_conference(&mut self, now: Millis, id: u64) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        if self.cfg.media.is_none() || call.media.is_none() {
            return false;
        }
        let (phone, host) = (call.a.peer, call.caller.clone());
        let others = self.calls_of_phone(id, phone);
        let app = App::Conference {
            room: id,
            leg: Leg::A,
        };
        if !self.answer_with_app(now, id, app, vec!["beep".to_string()]) {
            return false;
        }
        self.conferences.rooms.insert(
            id,
            Room {
                phone,
                host: host.clone(),
                members: vec![id],
                joined: Vec::new(),
            },
        );
        self.join_mix(id, id, Leg::A, MixRole::Both);
        for (other, phone_side) in others {
            self.join_room(now, id, other, phone_side);
        }
        tracing::info!(
            host,
            parties = self.conferences.parties(id),
            "conference started"
        );
        true
    }

    /// The answered calls of `phone` other than `except` that can join a room, with the
    /// side of each the phone is on; the oldest first, as many as a room holds.
    fn calls_of_phone(&self, except: u64, phone: Peer) -> Vec<(u64, Leg)> {
        let mut out: Vec<(u64, Leg)> = self
            .calls
            .iter()
            .filter(|(&id, _)| id != except)
            .filter_map(|(&id, _)| Some((id, self.joinable(id, phone)?)))
            .collect();
        out.sort_unstable_by_key(|&(id, _)| id);
        out.truncate(MAX_PARTIES - 1);
        out
    }

    /// The side `phone` is on in call `id`, when that call can join its room: answered,
    /// two parties bridged through the relay, no transfer in progress, no app, and the
    /// other party speaking G.711 (the mixer's codecs).
    fn joinable(&self, id: u64, phone: Peer) -> Option<Leg> {
        let c = self.calls.get(&id)?;
        let w = c.winner?;
        if c.state != CallState::Answered
            || c.app.is_some()
            || c.media.is_none()
            || c.referrer.is_some()
            || c.pending_a.is_some()
        {
            return None;
        }
        let side = if c.a.peer == phone {
            Leg::A
        } else if c.forks.get(w).is_some_and(|f| f.peer == phone) {
            Leg::B
        } else {
            return None;
        };
        let (a, b) = c.media.as_ref().and_then(CallMedia::codecs)?;
        let party = if side == Leg::A { b } else { a };
        (party != Codec::Other).then_some(side)
    }

    /// Call `id` joins room `room`: the host's phone (on `phone_side`) is hung up in it,
    /// the other party's leg goes into the mix, off hold.
    fn join_room(&mut self, now: Millis, room: u64, id: u64, phone_side: Leg) {
        let Some(number) = self.conference_number() else {
            return;
        };
        let full = self
            .conferences
            .rooms
            .get(&room)
            .is_none_or(|r| r.members.len() >= MAX_PARTIES);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if full {
            return;
        }
        let party = phone_side.other();
        let fork = call.winner;
        // The host's dialog of this call ends, as RFC 4579's Replaces would end it.
        let dialog = match phone_side {
            Leg::A => {
                call.a.next_out_leg().send_bye(&mut self.sig, now);
                // Its held state is not the party's: nothing to undo towards it.
                call.a_sdp = two_way(&call.a_sdp);
                if self.by_a_call_id.get(&call.a.call_id) == Some(&id) {
                    self.by_a_call_id.remove(&call.a.call_id);
                }
                call.caller = number.clone();
                call.a.call_id.clone()
            }
            Leg::B => {
                call.winner = None;
                let Some(f) = fork.and_then(|w| call.forks.get_mut(w)) else {
                    return;
                };
                f.retired = true;
                f.next_out_leg().send_bye(&mut self.sig, now);
                call.b_sdp = two_way(&call.b_sdp);
                call.callee = number.clone();
                f.call_id.clone()
            }
        };
        call.app = Some(App::Conference { room, leg: party });
        let party_name = match party {
            Leg::A => call.rec.caller.clone(),
            Leg::B => call.rec.callee.clone(),
        };
        let held = match party {
            Leg::A => is_one_way(&call.a_sdp),
            Leg::B => is_one_way(&call.b_sdp),
        };
        let Some(r) = self.conferences.rooms.get_mut(&room) else {
            return;
        };
        r.members.push(id);
        r.joined.push(dialog);
        let host = r.host.clone();
        self.transferred(now, id, &party_name, &number, host);
        self.events.push_back(Event::Media(MediaCommand::StopPlay {
            session: id,
            leg: party,
        }));
        self.join_mix(room, id, party, MixRole::Both);
        if held {
            self.take_off_hold(now, id, party, fork);
        }
    }

    /// Offers `party` of call `id` two-way media again (the host's phone had held it).
    fn take_off_hold(&mut self, now: Millis, id: u64, party: Leg, fork: Option<usize>) {
        if party == Leg::A {
            self.resume_a(now, id);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let offer = call
            .media
            .as_mut()
            .and_then(|m| m.offer(Leg::A, &two_way(&call.a_sdp)).ok());
        let (Some(offer), Some(w)) = (offer, fork) else {
            return;
        };
        if let Some(f) = call.forks.get_mut(w) {
            f.next_out_leg().send_reinvite(
                &mut self.sig,
                now,
                offer,
                ClientRole::Reoffer { call: id, fork: w },
            );
        }
    }

    /// The conference number, when conferences are on.
    fn conference_number(&self) -> Option<String> {
        let n = &self.cfg.features.conference;
        (!n.is_empty()).then(|| n.clone())
    }

    /// A request in the dialog of the party of call `id` in room `room`: BYE leaves; the
    /// host's REFER joins a call; a re-INVITE or UPDATE is answered by Outpost itself;
    /// anything else is answered 200.
    pub(super) fn conference_request(
        &mut self,
        now: Millis,
        room: u64,
        id: u64,
        key: TxKey,
        req: Request,
        src: Peer,
    ) {
        match req.method {
            Method::Bye => {
                self.sig.reply(now, &key, &req, src, 200, None);
                self.end_call(now, id, Disposition::Answered, 200);
            }
            Method::Ack => {}
            Method::Refer if id == room => self.conference_refer(now, room, key, req, src),
            Method::Refer => self.sig.reply(now, &key, &req, src, 403, None),
            Method::Invite | Method::Update if !req.body.is_empty() => {
                self.conference_reoffer(now, room, id, &key, &req, src);
            }
            // A session refresh without an offer (RFC 4028 UPDATE): nothing changes.
            Method::Update => self.sig.reply(now, &key, &req, src, 200, None),
            Method::Invite => self.sig.reply(now, &key, &req, src, 488, None),
            _ => self.sig.reply(now, &key, &req, src, 200, None),
        }
    }

    /// A party's re-INVITE or UPDATE with an offer (hold, resume, a session refresh):
    /// Outpost answers it as the other end, and the party's leg stays in the mix with
    /// what it now sends. An offer without G.711 gets 488 and nothing changes.
    fn conference_reoffer(
        &mut self,
        now: Millis,
        room: u64,
        id: u64,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(App::Conference { leg, .. }) = call.app else {
            return;
        };
        let answered = call
            .media
            .as_mut()
            .map(|m| m.reanswer_local(leg, &req.body));
        let Some(Ok((body, cmd))) = answered else {
            self.sig.reply(now, key, req, src, 488, None);
            return;
        };
        match leg {
            Leg::A => call.a_sdp = req.body.clone(),
            Leg::B => call.b_sdp = req.body.clone(),
        }
        self.events.push_back(Event::Media(cmd));
        self.join_mix(room, id, leg, MixRole::Both);
        let tag = req.headers.to.tag().unwrap_or_default().to_string();
        self.sig
            .answer_200_sdp(now, key, req, src, &tag, body, None);
    }

    /// The host's REFER to the focus (RFC 4579 §5.5): `Refer-To` with `Replaces` naming one
    /// of the phone's calls joins it (or is told done when it joined already).
    fn conference_refer(&mut self, now: Millis, room: u64, key: TxKey, req: Request, src: Peer) {
        let Some(refer_to) = refer_to_of(&req) else {
            self.sig.reply(now, &key, &req, src, 400, None);
            return;
        };
        let Some(dialog) = refer_to.replaces else {
            self.refuse(now, &key, &req, src, "Only Calls Of This Phone Join");
            return;
        };
        let Some(r) = self.conferences.rooms.get(&room) else {
            self.sig.reply(now, &key, &req, src, 481, None);
            return;
        };
        let (phone, joined) = (r.phone, r.joined.contains(&dialog));
        if !joined {
            let id = self
                .by_a_call_id
                .get(&dialog)
                .copied()
                .or_else(|| self.by_b_call_id.get(&dialog).map(|&(id, _)| id));
            let side = id.and_then(|id| Some((id, self.joinable(id, phone)?)));
            let Some((id, side)) = side else {
                self.refuse(now, &key, &req, src, "Not A Call Of This Phone");
                return;
            };
            if self.conferences.parties(room) >= MAX_PARTIES {
                self.refuse(now, &key, &req, src, "Conference Full");
                return;
            }
            self.join_room(now, room, id, side);
        }
        self.sig.reply(now, &key, &req, src, 202, None);
        if let Some(call) = self.calls.get_mut(&room) {
            let leg = call.a.next_out_leg();
            referral::notify_done(&mut self.sig, now, leg);
        }
    }

    /// Answers `req` 403 with `reason`.
    fn refuse(&mut self, now: Millis, key: &TxKey, req: &Request, src: Peer, reason: &str) {
        let mut resp = Response::to_request(req, 403, None);
        resp.reason = reason.to_string();
        self.sig.send(now, key, resp, src);
    }

    /// Call `id` of room `room` ended: it leaves; with one party left, that party is hung
    /// up and the room is gone.
    pub(super) fn left_conference(&mut self, now: Millis, room: u64, id: u64) {
        let Some(r) = self.conferences.rooms.get_mut(&room) else {
            return;
        };
        r.members.retain(|&m| m != id);
        let last = match r.members.as_slice() {
            [] => None,
            [last] => Some(*last),
            _ => return,
        };
        self.conferences.rooms.remove(&room);
        tracing::info!(room, "conference over");
        let Some(last) = last else {
            return;
        };
        let leg = match self.calls.get(&last).and_then(|c| c.app.as_ref()) {
            Some(App::Conference { leg, .. }) => *leg,
            _ => return,
        };
        match leg {
            Leg::A => self.send_bye_a(now, last),
            Leg::B => {
                if let Some(w) = self.calls.get(&last).and_then(|c| c.winner) {
                    self.send_bye_b(now, last, w);
                }
            }
        }
        self.end_call(now, last, Disposition::Answered, 200);
    }
}
