//! Call detail records: the record of a leg of a call when it ends or is transferred, and
//! of a call refused before it rang anyone.

use crate::cdr::{Cdr, CdrLeg, Disposition};
use crate::sip::Request;
use crate::Millis;

use super::call::{Call, Origin, RecordLeg};
use super::event::Event;
use super::Endpoint;

impl Endpoint {
    /// The record of `leg` of `call`, ended at `now` with `disposition` and `status` (an
    /// answered leg is `Answered` with 200 unless it ended by a media timeout, in
    /// voicemail or by a transfer; an unanswered leg's `Answered` becomes `NoAnswer`).
    pub(super) fn leg_record(
        &self,
        call: &Call,
        leg: &RecordLeg,
        now: Millis,
        disposition: Disposition,
        status: u16,
    ) -> Cdr {
        let answered = leg.answer.is_some();
        let (disposition, status) = match (answered, disposition) {
            (
                true,
                d @ (Disposition::MediaTimeout | Disposition::Voicemail | Disposition::Transferred),
            ) => (d, 200),
            (true, _) => (Disposition::Answered, 200),
            (false, Disposition::Answered) => (Disposition::NoAnswer, 480),
            (false, d) => (d, status),
        };
        let trunk_idx = match call.origin {
            Origin::Trunk(i) => Some(i),
            Origin::Extension => call
                .winner
                .and_then(|w| call.forks.get(w))
                .and_then(|f| f.trunk),
        };
        let trunk = trunk_idx
            .and_then(|i| self.trunks.config(i))
            .map(|t| t.name.clone())
            .or_else(|| call.gate.as_ref().and_then(|g| g.trunk.clone()));
        Cdr {
            call_id: call.a.call_id.clone(),
            caller: leg.caller.clone(),
            callee: leg.callee.clone(),
            start: leg.start,
            answer: leg.answer,
            end: now,
            disposition,
            status,
            leg: CdrLeg {
                linked_id: call.linked_id.clone(),
                transferred_by: leg.transferred_by.clone(),
                trunk,
                did: call.did.clone(),
                menu: call.menu_choice.as_ref().map(|(m, _)| m.clone()),
                menu_digit: call.menu_choice.as_ref().map(|(_, d)| d.to_string()),
            },
        }
    }

    /// Writes the record of call `id`'s current leg as `Transferred` and starts the next
    /// leg, between `caller` and `callee`, put together by `by`.
    pub(super) fn transferred(
        &mut self,
        now: Millis,
        id: u64,
        caller: &str,
        callee: &str,
        by: String,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let ended = call.next_leg(now, caller, callee, by);
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let cdr = self.leg_record(call, &ended, now, Disposition::Transferred, 200);
        self.events.push_back(Event::CallEnded(cdr));
    }

    /// A call refused before it rang anyone: its record, with no talk time.
    pub(super) fn record_failed(
        &mut self,
        now: Millis,
        req: &Request,
        caller: &str,
        callee: &str,
        status: u16,
        disposition: Disposition,
    ) {
        self.events.push_back(Event::CallEnded(Cdr {
            call_id: req.headers.call_id.clone(),
            caller: caller.to_string(),
            callee: callee.chars().take(64).collect(),
            start: now,
            answer: None,
            end: now,
            disposition,
            status,
            leg: CdrLeg {
                linked_id: req.headers.call_id.clone(),
                ..CdrLeg::default()
            },
        }));
    }
}
