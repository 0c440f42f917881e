//! Where a dialled number goes — an extension (with its forwarding), a ring group, the auto
//! attendant, voicemail — and what happens when the phones rung do not answer.

use crate::cdr::Disposition;
use crate::media::session::Leg;
use crate::registrar::Binding;
use crate::sip::transaction::TxKey;
use crate::sip::{wire, NameAddr, Peer, Request, Response};
use crate::Millis;

use super::call::{App, CallState, ForkState};
use super::config::{CallGate, Forwarding, RingStrategy};
use super::plan::{ExternalPlan, FollowMe, RingPlan};
use super::{Endpoint, Event};

/// Forwarding and transfer hops a call may take (stops forwarding loops).
const MAX_HOPS: u8 = 4;

/// Where a dialled number leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dest {
    Extension(String),
    Group(usize),
    /// Page the members of this paging group (extension callers only).
    Paging(usize),
    /// A conference of the caller's calls (extension callers only).
    Conference,
    Menu(usize),
    /// Straight to this mailbox.
    Voicemail(String),
    /// The caller's own mailbox (the access number).
    Access,
    /// Pick up a call ringing any extension, or this one.
    Pickup(Option<String>),
    /// Take the call parked in this orbit.
    Orbit(u32),
    /// The caller turns its do-not-disturb on (true) or off.
    Dnd(bool),
    /// Out through a trunk.
    External(ExternalPlan),
}

/// How routing a call turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routed {
    /// Phones are ringing.
    Ringing,
    /// Outpost answered (voicemail, menu).
    Answered,
    /// Nothing to ring: answer the caller with this status.
    Failed(u16, Disposition),
}

impl Endpoint {
    /// Sets (or with an empty [`Forwarding`] clears) the forwarding of `ext`.
    pub fn set_forwarding(&mut self, ext: &str, fwd: Forwarding) {
        if fwd == Forwarding::default() {
            self.forwards.remove(ext);
        } else {
            self.forwards.insert(ext.to_string(), fwd);
        }
    }

    /// The forwarding of `ext`.
    pub fn forwarding(&self, ext: &str) -> Option<&Forwarding> {
        self.forwards.get(ext)
    }

    /// Turns do-not-disturb of `ext` on or off (the admin, or the stored flag at start):
    /// its phones ring for no call, and its busy lamp and presence say so.
    pub fn set_dnd(&mut self, now: Millis, ext: &str, on: bool) {
        let changed = if on {
            self.dnd.insert(ext.to_string())
        } else {
            self.dnd.remove(ext)
        };
        if changed {
            self.update_lamps(now);
        }
    }

    /// Whether `ext` is in do-not-disturb.
    pub fn dnd(&self, ext: &str) -> bool {
        self.dnd.contains(ext)
    }

    /// Installs the toll-fraud check asked before every outbound call.
    pub fn set_gate(&mut self, gate: Box<dyn CallGate>) {
        self.gate = Some(gate);
    }

    /// What `number`, dialled by extension `caller`, leads to.
    pub(super) fn resolve(&self, caller: &str, number: &str) -> Result<Dest, u16> {
        let f = &self.cfg.features;
        if !f.pickup.is_empty() && number == f.pickup {
            return Ok(Dest::Pickup(None));
        }
        if !caller.is_empty() && !f.dnd_on.is_empty() && number == f.dnd_on {
            return Ok(Dest::Dnd(true));
        }
        if !caller.is_empty() && !f.dnd_off.is_empty() && number == f.dnd_off {
            return Ok(Dest::Dnd(false));
        }
        if let Some(ext) = number
            .strip_prefix(f.directed_pickup.as_str())
            .filter(|e| !f.directed_pickup.is_empty() && self.accounts.has_user(e))
        {
            return Ok(Dest::Pickup(Some(ext.to_string())));
        }
        if let Some(orbit) = self.orbit_of(number) {
            return Ok(Dest::Orbit(orbit));
        }
        if !caller.is_empty() && !f.conference.is_empty() && number == f.conference {
            return Ok(Dest::Conference);
        }
        if let Some(i) = self.cfg.paging.iter().position(|p| p.number == number) {
            if !caller.is_empty() {
                return Ok(Dest::Paging(i));
            }
        }
        if !caller.is_empty()
            && self
                .cfg
                .voicemail
                .as_ref()
                .is_some_and(|v| v.access_number == number)
        {
            return Ok(Dest::Access);
        }
        self.resolve_target(number)
    }

    /// Destinations anybody may reach by number (callers from trunks included).
    pub(super) fn resolve_target(&self, number: &str) -> Result<Dest, u16> {
        if let Some(i) = self.cfg.ivr.iter().position(|m| m.number == number) {
            return Ok(Dest::Menu(i));
        }
        if let Some(i) = self.cfg.groups.iter().position(|g| g.number == number) {
            return Ok(Dest::Group(i));
        }
        if self.accounts.has_user(number) {
            return Ok(Dest::Extension(number.to_string()));
        }
        Err(404)
    }

    /// Rings (or answers) `dest` for call `id`. The caller of this function answers the
    /// caller when it returns [`Routed::Failed`].
    pub(super) fn route(&mut self, now: Millis, id: u64, dest: Dest) -> Routed {
        match dest {
            Dest::Menu(menu) => {
                if self.start_menu(now, id, menu) {
                    Routed::Answered
                } else {
                    Routed::Failed(480, Disposition::Unavailable)
                }
            }
            Dest::Access => {
                if self.start_access(now, id) {
                    Routed::Answered
                } else {
                    Routed::Failed(480, Disposition::Unavailable)
                }
            }
            Dest::Voicemail(mailbox) => {
                if self.start_voicemail_for(now, id, &mailbox, "unavailable") {
                    Routed::Answered
                } else {
                    Routed::Failed(480, Disposition::Unavailable)
                }
            }
            Dest::Pickup(_) | Dest::Orbit(_) | Dest::Dnd(_) => {
                Routed::Failed(404, Disposition::NotFound)
            }
            Dest::Extension(ext) => self.route_extension(now, id, ext),
            Dest::Group(group) => self.route_group(now, id, group),
            Dest::Conference => {
                if self.start_conference(now, id) {
                    Routed::Answered
                } else {
                    Routed::Failed(480, Disposition::Unavailable)
                }
            }
            Dest::Paging(group) => {
                if self.start_paging(now, id, group) {
                    Routed::Answered
                } else {
                    Routed::Failed(480, Disposition::Unavailable)
                }
            }
            Dest::External(plan) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.plan = RingPlan::External(plan);
                }
                if self.next_trunk(now, id) {
                    Routed::Ringing
                } else {
                    Routed::Failed(503, Disposition::Unavailable)
                }
            }
        }
    }

    fn route_extension(&mut self, now: Millis, id: u64, ext: String) -> Routed {
        let fwd = self.forwards.get(&ext).cloned().unwrap_or_default();
        if let Some(target) = fwd.always.as_deref() {
            if let Some(routed) = self.forward(now, id, &ext, target) {
                return routed;
            }
        }
        let contacts = self.contacts_of(now, &ext);
        if let Some(call) = self.calls.get_mut(&id) {
            call.plan = RingPlan::Extension { ext: ext.clone() };
        }
        if self.dnd.contains(&ext) {
            // Do-not-disturb is busy: busy forwarding, else voicemail's busy greeting.
            if let Some(target) = fwd.busy.as_deref() {
                if let Some(routed) = self.forward(now, id, &ext, target) {
                    return routed;
                }
            }
            if self.start_voicemail_for(now, id, &ext, "busy") {
                return Routed::Answered;
            }
            return Routed::Failed(486, Disposition::Busy);
        }
        if contacts.is_empty() {
            // Offline counts as not answering: the follow-me list, else voicemail.
            if let Some(routed) = self.start_follow_me(now, id, &ext) {
                return routed;
            }
            if self.start_voicemail_for(now, id, &ext, "unavailable") {
                return Routed::Answered;
            }
            return Routed::Failed(480, Disposition::Unavailable);
        }
        let ring_ms = if fwd.no_answer.is_some() && fwd.no_answer_ms > 0 {
            fwd.no_answer_ms
        } else {
            self.cfg.ring_timeout_ms
        };
        self.set_ring_deadline(id, now.saturating_add(ring_ms));
        self.ring_contacts(now, id, &ext, &contacts);
        Routed::Ringing
    }

    fn route_group(&mut self, now: Millis, id: u64, group: usize) -> Routed {
        let Some(g) = self.cfg.groups.get(group).cloned() else {
            return Routed::Failed(404, Disposition::NotFound);
        };
        if let Some(call) = self.calls.get_mut(&id) {
            call.plan = RingPlan::Group { group, next: 0 };
        }
        self.set_ring_deadline(id, now.saturating_add(g.timeout_ms));
        let rung = match g.strategy {
            RingStrategy::Simultaneous => {
                let mut rung = false;
                for member in &g.members {
                    let contacts = self.contacts_of(now, member);
                    rung |= !contacts.is_empty();
                    self.ring_contacts(now, id, member, &contacts);
                }
                rung
            }
            RingStrategy::InOrder => self.ring_next_member(now, id),
        };
        if rung {
            return Routed::Ringing;
        }
        if let Some(mailbox) = g.voicemail.as_deref() {
            if self.start_voicemail_for(now, id, mailbox, "unavailable") {
                return Routed::Answered;
            }
        }
        Routed::Failed(480, Disposition::Unavailable)
    }

    /// Rings the next member of an in-order group that has a phone registered. False when
    /// every member was tried.
    fn ring_next_member(&mut self, now: Millis, id: u64) -> bool {
        loop {
            let Some(call) = self.calls.get_mut(&id) else {
                return false;
            };
            let RingPlan::Group { group, next } = &mut call.plan else {
                return false;
            };
            let Some(g) = self.cfg.groups.get(*group) else {
                return false;
            };
            let Some(member) = g.members.get(*next).cloned() else {
                return false;
            };
            *next += 1;
            let step = now.saturating_add(g.member_timeout_ms);
            let contacts = self.contacts_of(now, &member);
            if contacts.is_empty() {
                continue;
            }
            self.set_step_deadline(id, Some(step));
            self.ring_contacts(now, id, &member, &contacts);
            return true;
        }
    }

    /// The phones of `ext` did not answer call `id` (or none is registered): starts its
    /// follow-me list (the no-answer numbers, tried in turn). `None` when it has none or
    /// none of them can be reached now.
    fn start_follow_me(&mut self, now: Millis, id: u64, ext: &str) -> Option<Routed> {
        self.forwards.get(ext)?.no_answer.as_ref()?;
        let call = self.calls.get_mut(&id)?;
        call.follow_me = Some(FollowMe {
            ext: ext.to_string(),
            next: 0,
            hops: call.hops,
            gate_ours: call.gate.is_none(),
        });
        self.next_follow_me(now, id)
    }

    /// Rings the next number of call `id`'s follow-me list that can be reached, for the
    /// no-answer ring time. `None` (and the list is over) when none is left.
    fn next_follow_me(&mut self, now: Millis, id: u64) -> Option<Routed> {
        loop {
            self.release_follow_me_ticket(now, id);
            let call = self.calls.get_mut(&id)?;
            let fm = call.follow_me.as_mut()?;
            let (ext, i) = (fm.ext.clone(), fm.next);
            fm.next += 1;
            // Each number is one forwarding hop from the extension, not one more than the
            // number before it.
            call.hops = fm.hops;
            let fwd = self.forwards.get(&ext).cloned().unwrap_or_default();
            let Some(target) = fwd.no_answer_list().get(i).map(|t| t.to_string()) else {
                call.follow_me = None;
                return None;
            };
            let ring_ms = if fwd.no_answer_ms > 0 {
                fwd.no_answer_ms
            } else {
                self.cfg.ring_timeout_ms
            };
            match self.forward(now, id, &ext, &target) {
                Some(Routed::Ringing) => {
                    tracing::info!(ext, target, step = i + 1, "follow-me: ringing");
                    self.set_ring_deadline(id, now.saturating_add(ring_ms));
                    return Some(Routed::Ringing);
                }
                Some(routed) => return Some(routed),
                None => {
                    tracing::info!(ext, target, step = i + 1, "follow-me: cannot be reached");
                }
            }
        }
    }

    /// The toll-fraud ticket of the follow-me number that was rung is released (a call
    /// that never connected) before the list moves on, so the policy counts only the
    /// number ringing now.
    fn release_follow_me_ticket(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if !call.follow_me.as_ref().is_some_and(|f| f.gate_ours) {
            return;
        }
        if let (Some(t), Some(gate)) = (call.gate.take(), self.gate.as_mut()) {
            gate.ended(now, &t.ext, &t.dialled, t.trunk.as_deref(), 0);
        }
    }

    /// A number of call `id`'s follow-me list did not answer (or failed; `no_answer`: it
    /// rang out): the group's next member when it was a group; an extension with its own
    /// no-answer forwarding forwards on (a chain, bounded by the hops); else the list's
    /// next number, else the extension's voicemail. False when none is left (480).
    fn follow_me_unanswered(&mut self, now: Millis, id: u64, no_answer: bool) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let ext = call
            .follow_me
            .as_ref()
            .map(|f| f.ext.clone())
            .unwrap_or_default();
        match call.plan.clone() {
            RingPlan::Group { .. } if self.ring_next_member(now, id) => return true,
            RingPlan::Extension { ext: step }
                if no_answer
                    && step != ext
                    && self
                        .forwards
                        .get(&step)
                        .is_some_and(|f| f.no_answer.is_some()) =>
            {
                self.retire_forks(now, id);
                return self.start_follow_me(now, id, &step).is_some()
                    || self.start_voicemail_for(now, id, &step, "unavailable");
            }
            _ => {}
        }
        self.retire_forks(now, id);
        if self.next_follow_me(now, id).is_some() {
            return true;
        }
        self.start_voicemail_for(now, id, &ext, "unavailable")
    }

    /// Sends call `id` on to `target` on behalf of `ext` (forwarding). `None` when the
    /// target cannot be reached (the caller then goes on as if there were no forwarding).
    fn forward(&mut self, now: Millis, id: u64, ext: &str, target: &str) -> Option<Routed> {
        let call = self.calls.get_mut(&id)?;
        if call.hops >= MAX_HOPS || target == ext {
            return None;
        }
        call.hops += 1;
        let dest = match self.resolve_target(target) {
            Ok(dest) => dest,
            // Forwarding out (to a mobile) is an outbound call of the forwarding extension,
            // with its routes and its toll-fraud limits.
            Err(_) => {
                let Ok(Dest::External(plan)) = self.resolve_external(ext, target) else {
                    return None;
                };
                let ticket = self.gate_quiet(now, ext, target, &plan)?;
                if let Some(call) = self.calls.get_mut(&id) {
                    if call.gate.is_none() {
                        call.gate = ticket;
                    }
                }
                Dest::External(plan)
            }
        };
        tracing::debug!(ext, target, "call forwarded");
        match self.route(now, id, dest) {
            Routed::Failed(..) => None,
            routed => Some(routed),
        }
    }

    /// A feature code of extension `caller`: do-not-disturb `on` or off. Answered 480 with
    /// the new state as the reason phrase (the phone shows it); nothing rings.
    pub(super) fn dnd_code(
        &mut self,
        now: Millis,
        key: TxKey,
        req: &Request,
        src: Peer,
        caller: &str,
        on: bool,
    ) {
        self.set_dnd(now, caller, on);
        self.events.push_back(Event::DndChanged {
            ext: caller.to_string(),
            on,
        });
        tracing::info!(ext = caller, on, "do-not-disturb set by feature code");
        let mut resp = Response::to_request(req, 480, Some(&self.sig.new_tag()));
        resp.reason = if on {
            "Do Not Disturb On"
        } else {
            "Do Not Disturb Off"
        }
        .to_string();
        self.sig.send(now, &key, resp, src);
    }

    /// The registered contacts of `ext` (none while it is in do-not-disturb: a group or a
    /// transfer does not ring it).
    pub(super) fn contacts_of(&self, now: Millis, ext: &str) -> Vec<Binding> {
        if self.dnd.contains(ext) {
            return Vec::new();
        }
        self.registrar
            .lookup(ext, now)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Starts one fork per contact of `ext` for call `id`.
    pub(super) fn ring_contacts(&mut self, now: Millis, id: u64, ext: &str, contacts: &[Binding]) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        if let (Some(m), Some(first)) = (call.media.as_mut(), contacts.first()) {
            m.set_signal_b(first.source.addr.ip());
            m.set_sdes(Leg::B, self.cfg.sdes_allowed(first.source.transport));
        }
        // A caller already talking to Outpost (menu, transfer) gets a fresh offer for the
        // new phone; a ringing caller's anchored offer is reused.
        let body = call.offer_for_new_b();
        let invite = call.a.invite.clone();
        if call.state == CallState::Answered {
            if let Ok(uri) = wire::parse_uri(&format!("sip:{ext}@{}", self.cfg.realm)) {
                call.a.local_uri = NameAddr::new(uri);
            }
        }
        for binding in contacts {
            let Ok(target) = wire::parse_uri(&binding.contact) else {
                continue;
            };
            let idx = call.forks.len();
            let mut fork = self.start_fork(
                now,
                id,
                idx,
                &call,
                &invite,
                body.clone(),
                target,
                binding.source,
            );
            fork.rings = Some(ext.to_string());
            call.forks.push(fork);
        }
        self.calls.insert(id, call);
    }

    /// Cancels every fork still ringing and stops counting the answers of all of them.
    pub(super) fn retire_forks(&mut self, now: Millis, id: u64) {
        self.cancel_forks(now, id, None);
        if let Some(call) = self.calls.get_mut(&id) {
            for f in &mut call.forks {
                if f.state != ForkState::Answered {
                    f.retired = true;
                }
            }
        }
    }

    /// Moves call `id`'s ring deadline to `at`.
    pub(super) fn set_ring_deadline(&mut self, id: u64, at: Millis) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        self.ring_timers.remove(call.ring_deadline, id);
        call.ring_deadline = at;
        self.ring_timers.insert(at, id);
    }

    /// Moves (or with `None` clears) the deadline of call `id`'s next plan step.
    pub(super) fn set_step_deadline(&mut self, id: u64, at: Option<Millis>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(old) = call.step_deadline.take() {
            self.step_timers.remove(old, id);
        }
        if let Some(at) = at {
            call.step_deadline = Some(at);
            self.step_timers.insert(at, id);
        }
    }

    /// The next step of a call's plan is due: the next member of an in-order group.
    pub(super) fn step_timeout(&mut self, now: Millis, id: u64, at: Millis) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.step_deadline != Some(at) {
            return;
        }
        call.step_deadline = None;
        if matches!(call.app, Some(App::Paging(_))) {
            self.page_ring_over(now, id);
            return;
        }
        if call.winner.is_some() || (call.state != CallState::Ringing && !call.transferring()) {
            return;
        }
        match call.plan {
            RingPlan::Group { .. } => {
                self.retire_forks(now, id);
                if !self.ring_next_member(now, id) {
                    self.unanswered(now, id, 480);
                }
            }
            RingPlan::External(_) => self.trunk_silent(now, id),
            _ => {}
        }
    }

    /// Nobody answers what the plan rang (every fork failed with `status`, or the ring
    /// timeout passed): forwarding, the next group member, voicemail, or the failure.
    pub(super) fn unanswered(&mut self, now: Millis, id: u64, status: u16) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let transferring = call.transferring();
        if !transferring && call.state != CallState::Ringing {
            return;
        }
        if matches!(call.app, Some(App::Menu(_))) {
            // The auto attendant takes its caller back.
            self.transfer_failed(now, id);
            return;
        }
        let plan = call.plan.clone();
        let following = !transferring && call.follow_me.is_some();
        self.set_step_deadline(id, None);
        let busy = matches!(status, 486 | 600);
        let no_answer = matches!(status, 480 | 408);
        let mut status = status;
        match plan {
            // A number of the follow-me list did not answer, whatever it said.
            _ if following => {
                if self.follow_me_unanswered(now, id, no_answer) {
                    return;
                }
                status = 480;
            }
            RingPlan::Extension { ext } => {
                let fwd = self.forwards.get(&ext).cloned().unwrap_or_default();
                if busy {
                    if let Some(target) = fwd.busy {
                        if self.forward(now, id, &ext, &target).is_some() {
                            return;
                        }
                    }
                } else if no_answer && self.start_follow_me(now, id, &ext).is_some() {
                    return;
                }
                if (busy || no_answer)
                    && self.start_voicemail_for(
                        now,
                        id,
                        &ext,
                        if busy { "busy" } else { "unavailable" },
                    )
                {
                    return;
                }
            }
            RingPlan::Group { group, .. } => {
                if self.ring_next_member(now, id) {
                    return;
                }
                let mailbox = self.cfg.groups.get(group).and_then(|g| g.voicemail.clone());
                if let Some(mailbox) = mailbox {
                    if self.start_voicemail_for(now, id, &mailbox, "unavailable") {
                        return;
                    }
                }
            }
            RingPlan::External(_) | RingPlan::Nothing => {}
        }
        if transferring {
            self.transfer_failed(now, id);
            return;
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let (key, invite, tag, peer) = (
            call.a.invite_key.clone(),
            call.a.invite.clone(),
            call.a.local_tag.clone(),
            call.a.peer,
        );
        self.sig.reply(now, &key, &invite, peer, status, Some(&tag));
        self.end_call(now, id, Disposition::of_failure(status), status);
    }
}
