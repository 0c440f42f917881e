//! Call park. A phone transfers its call (REFER, the transfer or park key) to the park code
//! (`[features] park`, `*70`) or straight to a free orbit (`701`..`708`): the other party
//! waits in the orbit hearing music on hold; the phone that parked it (the parker) is told
//! the transfer went through (NOTIFY `200 OK`) and hung up. An extension that dials the
//! orbit takes the call: it becomes the parked party's new other side, in the same relay
//! session, and a parked phone that was held is taken off hold. Nobody within the park
//! timeout: the call rings the parker back (its forwarding and voicemail apply if it does
//! not answer).
//!
//! Bounded: at most `park_slots` calls (100 at most) are parked at once, one per orbit;
//! a transfer to the park code with every orbit taken is refused (486).

use std::collections::BTreeMap;

use crate::media::session::{Leg, MediaCommand};
use crate::sip::transaction::TxKey;
use crate::sip::{NameAddr, Peer, Request, Response};
use crate::Millis;

use super::call::{App, LegA};
use super::event::Event;
use super::routing::Dest;
use super::signalling::{first_contact_uri, ClientRole};
use super::transfer::{is_one_way, two_way};
use super::Endpoint;

/// A call waiting in an orbit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parked {
    pub(super) call: u64,
    /// The extension that parked it (rung back at the timeout).
    pub(super) parker: String,
    pub(super) since: Millis,
}

/// The orbits in use.
#[derive(Debug, Default)]
pub(super) struct ParkLot {
    orbits: BTreeMap<u32, Parked>,
}

impl ParkLot {
    /// The call parked in `orbit`.
    pub(super) fn get(&self, orbit: u32) -> Option<&Parked> {
        self.orbits.get(&orbit)
    }

    /// Frees `orbit` if call `call` holds it.
    pub(super) fn release(&mut self, orbit: u32, call: u64) {
        if self.orbits.get(&orbit).is_some_and(|p| p.call == call) {
            self.orbits.remove(&orbit);
        }
    }
}

/// The orbit number `number` names within `first`.. (`slots` orbits): digits only, no
/// leading zero.
fn orbit_number(number: &str, first: u32, slots: u32) -> Option<u32> {
    if number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = number.parse().ok()?;
    (n >= first && n - first < slots).then_some(n)
}

impl Endpoint {
    /// The orbit `number` names, when park is on and it is one.
    pub(super) fn orbit_of(&self, number: &str) -> Option<u32> {
        let f = &self.cfg.features;
        if f.park.is_empty() {
            return None;
        }
        orbit_number(number, f.park_first, f.park_slots)
    }

    /// Where a transfer to `number` parks the call: `None` when `number` is neither the
    /// park code nor an orbit; `Err(486)` when the orbit (or, for the park code, every
    /// orbit) is taken.
    pub(super) fn park_orbit(&self, number: &str) -> Option<Result<u32, u16>> {
        let f = &self.cfg.features;
        if f.park.is_empty() {
            return None;
        }
        if number == f.park {
            let mut orbits = f.park_first..f.park_first.saturating_add(f.park_slots);
            return Some(orbits.find(|o| self.park.get(*o).is_none()).ok_or(486));
        }
        let orbit = self.orbit_of(number)?;
        Some(if self.park.get(orbit).is_some() {
            Err(486)
        } else {
            Ok(orbit)
        })
    }

    /// Parks call `id` in `orbit` (its REFER was answered 202): the party that stays hears
    /// music; `parker`, the caller (`from_a`) or the callee, is told and hung up.
    pub(super) fn park_call(
        &mut self,
        now: Millis,
        id: u64,
        from_a: bool,
        parker: &str,
        orbit: u32,
    ) {
        self.accept_blind_refer(now, id, from_a);
        self.referral_done(now, id);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        // The parked party: the callee on leg B, or the caller on leg A.
        let parked_party = if from_a {
            call.rec.callee.clone()
        } else {
            call.rec.caller.clone()
        };
        let a_call_id = call.a.call_id.clone();
        if !from_a {
            if let Some(w) = call.winner.take() {
                if let Some(f) = call.forks.get_mut(w) {
                    f.retired = true;
                }
            }
        }
        call.app = Some(App::Parked {
            orbit,
            on_b: from_a,
        });
        call.callee = orbit.to_string();
        if from_a && self.by_a_call_id.get(&a_call_id) == Some(&id) {
            // The caller (the parker) is gone: its dialog no longer leads to this call.
            self.by_a_call_id.remove(&a_call_id);
        }
        self.transferred(
            now,
            id,
            &parked_party,
            &orbit.to_string(),
            parker.to_string(),
        );
        let leg = if from_a { Leg::B } else { Leg::A };
        self.play(
            id,
            leg,
            vec![crate::media::anchor::MOH_CLIP.to_string()],
            true,
        );
        self.park.orbits.insert(
            orbit,
            Parked {
                call: id,
                parker: parker.to_string(),
                since: now,
            },
        );
        let timeout = self.cfg.features.park_timeout_ms;
        self.set_ring_deadline(id, now.saturating_add(timeout));
        tracing::info!(parker, orbit, "call parked");
    }

    /// `retriever` dialled `orbit` (INVITE `req` from `src`): it takes the call parked
    /// there, or gets 404 when the orbit is empty.
    pub(super) fn retrieve(
        &mut self,
        now: Millis,
        key: TxKey,
        req: Request,
        src: Peer,
        retriever: &str,
        orbit: u32,
    ) {
        let parked = self.park.get(orbit).map(|p| p.call);
        let on_b = parked
            .and_then(|id| self.calls.get(&id))
            .and_then(|c| match c.app {
                Some(App::Parked { on_b, .. }) => Some(on_b),
                _ => None,
            });
        let (Some(id), Some(on_b)) = (parked, on_b) else {
            let mut resp = Response::to_request(&req, 404, Some(&self.sig.new_tag()));
            resp.reason = "Nothing Parked Here".to_string();
            self.sig.send(now, &key, resp, src);
            return;
        };
        let joined = if on_b {
            self.retrieve_as_leg_a(now, id, &key, &req, src)
        } else {
            self.retrieve_as_leg_b(now, id, &key, &req, src)
        };
        if !joined {
            return;
        }
        self.park.release(orbit, id);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.app = None;
        call.callee = retriever.to_string();
        let parked_party = call.rec.caller.clone();
        self.transferred(now, id, &parked_party, retriever, format!("park:{orbit}"));
        if let Some(call) = self.calls.get_mut(&id) {
            call.answered(now);
        }
        tracing::info!(retriever, orbit, "parked call taken");
    }

    /// The retriever becomes leg B of call `id`, whose caller waits in the orbit.
    fn retrieve_as_leg_b(
        &mut self,
        now: Millis,
        id: u64,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) -> bool {
        let Some(a_sdp) = self.calls.get(&id).map(|c| two_way(&c.a_sdp)) else {
            return false;
        };
        if self.join_as_leg_b(now, id, key, req, src, &a_sdp).is_none() {
            return false;
        }
        self.events.push_back(Event::Media(MediaCommand::StopPlay {
            session: id,
            leg: Leg::A,
        }));
        // A caller the parker had held is taken off hold, towards the retriever.
        let Some(call) = self.calls.get_mut(&id) else {
            return true;
        };
        if !is_one_way(&call.a_sdp) {
            return true;
        }
        let offer = call
            .media
            .as_mut()
            .and_then(|m| m.offer(Leg::B, &two_way(&req.body)).ok());
        let Some(offer) = offer else {
            return true;
        };
        call.a.next_out_leg().send_reinvite(
            &mut self.sig,
            now,
            offer,
            ClientRole::ResumeA { call: id },
        );
        true
    }

    /// The retriever becomes leg A of call `id`, whose callee waits in the orbit (its
    /// caller parked it and left).
    fn retrieve_as_leg_a(
        &mut self,
        now: Millis,
        id: u64,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) -> bool {
        if req.body.is_empty() {
            self.sig.reply(now, key, req, src, 488, None);
            return false;
        }
        let local_tag = self.sig.new_tag();
        let sdes = self.cfg.sdes_allowed(src.transport);
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        let b_sdp = two_way(&call.b_sdp);
        let Some(m) = call.media.as_mut() else {
            return false;
        };
        m.set_signal_a(src.addr.ip());
        m.set_sdes(Leg::A, sdes);
        let for_b = m.offer(Leg::A, &req.body);
        let for_r = m.answer(Leg::B, &b_sdp);
        let (Ok(_), Ok((for_r, cmds))) = (for_b, for_r) else {
            self.sig.reply(now, key, req, src, 488, None);
            return false;
        };
        let mut local_uri = req.headers.to.clone();
        local_uri.params = crate::sip::Params::default();
        let mut remote_uri: NameAddr = req.headers.from.clone();
        remote_uri.params.remove("tag");
        call.a = LegA {
            call_id: req.headers.call_id.clone(),
            remote_tag: req.headers.from.tag().unwrap_or_default().to_string(),
            local_tag: local_tag.clone(),
            remote_uri,
            local_uri,
            target: first_contact_uri(&req.headers).unwrap_or_else(|| req.headers.from.uri.clone()),
            peer: src,
            invite_key: key.clone(),
            invite: req.clone(),
            local_cseq: 0,
        };
        call.a_sdp = req.body.clone();
        let winner = call.winner;
        let b_held = is_one_way(&call.b_sdp);
        let deadline = call.ring_deadline;
        self.ring_timers.remove(deadline, id);
        self.by_a_call_id.insert(req.headers.call_id.clone(), id);
        for cmd in cmds {
            self.events.push_back(Event::Media(cmd));
        }
        self.sig
            .answer_200_sdp(now, key, req, src, &local_tag, for_r, None);
        self.events.push_back(Event::Media(MediaCommand::StopPlay {
            session: id,
            leg: Leg::B,
        }));
        // A callee the parker had held is taken off hold, towards the retriever.
        let Some(fork) = winner.filter(|_| b_held) else {
            return true;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return true;
        };
        let offer = call
            .media
            .as_mut()
            .and_then(|m| m.offer(Leg::A, &two_way(&req.body)).ok());
        let (Some(offer), Some(f)) = (offer, call.forks.get_mut(fork)) else {
            return true;
        };
        f.next_out_leg().send_reinvite(
            &mut self.sig,
            now,
            offer,
            ClientRole::Reoffer { call: id, fork },
        );
        true
    }

    /// Nobody took call `id` from its orbit in time: it rings the parker back.
    pub(super) fn park_timeout(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(App::Parked { orbit, on_b }) = call.app else {
            return;
        };
        let Some(parker) = self.park.get(orbit).map(|p| p.parker.clone()) else {
            return;
        };
        self.park.release(orbit, id);
        tracing::info!(orbit, %parker, "parked call not taken: ringing the parker back");
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.app = None;
        call.callee.clone_from(&parker);
        let parked_party = call.rec.caller.clone();
        self.transferred(now, id, &parked_party, &parker, format!("park:{orbit}"));
        if on_b {
            self.transfer_leg_a(now, id, Dest::Extension(parker.clone()), &parker);
        } else {
            self.set_ring_deadline(id, now.saturating_add(self.cfg.ring_timeout_ms));
            self.transfer_leg_b(now, id, Dest::Extension(parker.clone()), &parker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orbit_numbers_are_the_configured_range_in_plain_digits() {
        assert_eq!(orbit_number("701", 701, 8), Some(701));
        assert_eq!(orbit_number("708", 701, 8), Some(708));
        assert_eq!(orbit_number("709", 701, 8), None);
        assert_eq!(orbit_number("700", 701, 8), None);
        assert_eq!(orbit_number("0701", 701, 8), None);
        assert_eq!(orbit_number("+701", 701, 8), None);
        assert_eq!(orbit_number("7O1", 701, 8), None);
        assert_eq!(orbit_number("99999999999", 701, 8), None);
        assert_eq!(orbit_number("", 701, 8), None);
    }

    #[test]
    fn an_orbit_is_released_only_by_the_call_that_holds_it() {
        let mut lot = ParkLot::default();
        lot.orbits.insert(
            701,
            Parked {
                call: 5,
                parker: "100".into(),
                since: 0,
            },
        );
        lot.release(701, 6);
        assert!(lot.get(701).is_some());
        lot.release(701, 5);
        assert!(lot.get(701).is_none());
    }
}
