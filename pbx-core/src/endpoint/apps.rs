//! Calls Outpost answers itself, wired to the call table and the relay: voicemail deposit
//! and access, the auto attendant, its transfers, MWI, and the relay's media events
//! ([`Endpoint::handle_media_event`]: DTMF, prompts ended, recordings, media timeouts).
//!
//! The state of each feature lives in its own type ([`MenuSession`], [`AccessSession`],
//! [`super::voicemail::Voicemail`], [`super::mwi::MwiSubscriptions`]), which decides; the
//! methods here carry out its decision on the call (answer, play, hang up, ring).

use std::collections::{HashMap, HashSet};

use crate::cdr::Disposition;
use crate::media::anchor::CallMedia;
use crate::media::session::{Leg, MediaCommand, MediaEvent, MixRole};
use crate::sip::transaction::TxKey;
use crate::sip::{Peer, Request};
use crate::Millis;

use super::blf;
use super::call::{App, Call, CallState};
use super::event::EventPackage;
use super::ivr::{self, MenuSession, PlayDone};
use super::mwi::{Content, Watch};
use super::plan::RingPlan;
use super::voicemail::{AccessSession, Deposit, DepositStage, MailboxMessage};
use super::{Endpoint, Event};

impl Endpoint {
    /// Outpost answers the caller itself and takes a message for the callee. False when
    /// voicemail is off, media is not anchored or the caller's offer has no G.711.
    pub(super) fn start_voicemail_for(
        &mut self,
        now: Millis,
        id: u64,
        mailbox: &str,
        greeting: &str,
    ) -> bool {
        let Some(vm) = self.cfg.voicemail.clone() else {
            return false;
        };
        if !self.accounts.has_user(mailbox) {
            return false;
        }
        let path = vm.dir.join(mailbox).join(format!("{now}-{id}.wav"));
        let app = App::Deposit(Deposit {
            mailbox: mailbox.to_string(),
            path,
            stage: DepositStage::Greeting,
        });
        let clips = vec![
            greeting.to_string(),
            "please-leave-message".to_string(),
            "beep".to_string(),
        ];
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if call.transferring() && call.media.is_some() {
            // Already talking to Outpost (a transfer nobody took): the message is taken
            // on the open media.
            call.app = Some(app);
            let deadline = call.ring_deadline;
            self.ring_timers.remove(deadline, id);
            self.play(id, Leg::A, clips, false);
            // A blind transfer ends in the target's voicemail: through, for the referrer.
            self.referral_done(now, id);
            return true;
        }
        self.answer_with_app(now, id, app, clips)
    }

    /// Outpost answers a caller of an auto-attendant number.
    pub(super) fn start_menu(&mut self, now: Millis, id: u64, menu: usize) -> bool {
        let Some(m) = self.cfg.ivr.get(menu) else {
            return false;
        };
        let (session, clips) = MenuSession::start(menu, m);
        self.answer_with_app(now, id, App::Menu(session), clips)
    }

    /// The greeting (or a transfer announcement) ended.
    pub(super) fn menu_play_done(&mut self, now: Millis, id: u64) {
        let Some(session) = self.calls.get_mut(&id).and_then(Call::menu_mut) else {
            return;
        };
        match session.play_done(now, self.cfg.ivr.get(session.menu())) {
            // Ringback while the extension rings.
            PlayDone::Ringback => self.play(id, Leg::A, vec!["ringback".to_string()], true),
            PlayDone::HangUp => {
                self.send_bye_a(now, id);
                self.end_call(now, id, Disposition::Answered, 200);
            }
            PlayDone::WaitDigit(at) => self.menu_timers.insert(at, id),
            PlayDone::Nothing => {}
        }
    }

    /// No digit in time: the greeting again, or goodbye after the retries.
    pub(super) fn menu_timeout(&mut self, _now: Millis, id: u64, at: Millis) {
        let Some(session) = self.calls.get_mut(&id).and_then(Call::menu_mut) else {
            return;
        };
        if let Some(clips) = session.timeout(at, self.cfg.ivr.get(session.menu())) {
            self.play(id, Leg::A, clips, false);
        }
    }

    /// A digit in an auto-attendant menu.
    pub(super) fn menu_digit(&mut self, now: Millis, id: u64, digit: char) {
        let Some(session) = self.calls.get_mut(&id).and_then(Call::menu_mut) else {
            return;
        };
        let menu = session.menu();
        let (accounts, registrar) = (&self.accounts, &self.registrar);
        let reachable =
            |ext: &str| accounts.has_user(ext) && !registrar.lookup(ext, now).is_empty();
        let (cancelled, outcome) =
            session.digit(digit, self.cfg.ivr.get(session.menu()), reachable);
        if let Some(at) = cancelled {
            self.menu_timers.remove(at, id);
        }
        match outcome {
            ivr::Digit::Play(clips) => self.play(id, Leg::A, clips, false),
            ivr::Digit::Transfer(target) => {
                let number = self.cfg.ivr.get(menu).map(|m| m.number.clone());
                if let (Some(number), Some(call)) = (number, self.calls.get_mut(&id)) {
                    call.menu_choice = Some((number, digit));
                }
                self.start_transfer(now, id, &target);
            }
            ivr::Digit::Ignored => {}
        }
    }

    /// Rings `target` for the caller of call `id`, who hears "transfer" then ringback.
    pub(super) fn start_transfer(&mut self, now: Millis, id: u64, target: &str) {
        let contacts = self.contacts_of(now, target);
        self.retire_forks(now, id);
        if let Some(call) = self.calls.get_mut(&id) {
            call.callee = target.to_string();
            call.best_failure = None;
            call.plan = RingPlan::Extension {
                ext: target.to_string(),
            };
        }
        self.ring_contacts(now, id, target, &contacts);
        self.set_ring_deadline(id, now.saturating_add(self.cfg.ring_timeout_ms));
        self.play(id, Leg::A, vec!["transfer".to_string()], false);
        if self.calls.get(&id).is_some_and(|c| !c.pending_forks()) {
            self.transfer_failed(now, id);
        }
    }

    /// Nobody answered the transfer: the auto attendant's caller goes back to the menu
    /// with "unavailable"; a transferred caller hears "unavailable" and goodbye.
    pub(super) fn transfer_failed(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let deadline = call.ring_deadline;
        self.ring_timers.remove(deadline, id);
        if matches!(call.app, Some(App::Transfer)) {
            let status = call.best_failure.unwrap_or(480);
            if self.referral_failed(now, id, status) {
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let clips = match &mut call.app {
            Some(App::Menu(session)) => session.transfer_failed(self.cfg.ivr.get(session.menu())),
            Some(App::Transfer) => {
                call.app = Some(App::Goodbye);
                vec!["unavailable".to_string(), "goodbye".to_string()]
            }
            _ => return,
        };
        self.play(id, Leg::A, clips, false);
    }

    /// Outpost answers a mailbox owner who dialled the access number.
    pub(super) fn start_access(&mut self, now: Millis, id: u64) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let mailbox = call.caller.clone();
        let has_pin = self.voicemail.has_pin(&mailbox);
        let (session, clips) = AccessSession::start(mailbox, has_pin);
        self.answer_with_app(now, id, App::Access(session), clips)
    }

    /// Answers the caller of ringing call `id` with Outpost itself running `app`, and
    /// plays `clips`. False when media is not anchored or the offer has no G.711.
    pub(super) fn answer_with_app(
        &mut self,
        now: Millis,
        id: u64,
        app: App,
        clips: Vec<String>,
    ) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if call.state != CallState::Ringing || call.late_offer || call.app.is_some() {
            return false;
        }
        let Some(media) = call.media.as_mut() else {
            return false;
        };
        let Ok((body, open)) = media.answer_local() else {
            return false;
        };
        call.state = CallState::Answered;
        call.answer = Some(now);
        call.answered(now);
        let focus = matches!(app, App::Conference { .. }).then_some("isfocus");
        call.app = Some(app);
        let deadline = call.ring_deadline;
        let (invite, tag) = (call.a.invite.clone(), call.a.local_tag.clone());
        let (peer, key) = (call.a.peer, call.a.invite_key.clone());
        self.ring_timers.remove(deadline, id);
        self.counters.calls_answered += 1;
        self.events.push_back(Event::Media(open));
        self.play(id, Leg::A, clips, false);
        self.sig
            .answer_200_sdp(now, &key, &invite, peer, &tag, body, focus);
        true
    }

    /// A digit from a mailbox owner listening to messages.
    pub(super) fn access_digit(&mut self, session: u64, digit: char) {
        let Some(Call {
            app: Some(App::Access(access)),
            ..
        }) = self.calls.get_mut(&session)
        else {
            return;
        };
        let Some((event, clips)) = access.digit(digit, &self.voicemail) else {
            return;
        };
        self.events.extend(event);
        self.play(session, Leg::A, clips, false);
    }

    /// Ends a message: "goodbye", then the PBX hangs up (on `PlayDone`).
    pub(super) fn deposit_goodbye(&mut self, session: u64) {
        if let Some(App::Deposit(deposit)) =
            self.calls.get_mut(&session).and_then(|c| c.app.as_mut())
        {
            deposit.stage = DepositStage::Goodbye;
            self.play(session, Leg::A, vec!["goodbye".to_string()], false);
        }
    }

    /// Tells the relay to play `clips` to `leg` of call `session`.
    /// Puts `leg` of relay session `session` into mix `mix` as `role` (paging, conference).
    pub(super) fn join_mix(&mut self, mix: u64, session: u64, leg: Leg, role: MixRole) {
        self.events.push_back(Event::Media(MediaCommand::Join {
            mix,
            session,
            leg,
            role,
        }));
    }

    pub(super) fn play(&mut self, session: u64, leg: Leg, clips: Vec<String>, repeat: bool) {
        self.events.push_back(Event::Media(MediaCommand::Play {
            session,
            leg,
            clips,
            repeat,
        }));
    }

    /// Sets a mailbox's message counts (from the driver's index); subscribed phones are
    /// notified when they change.
    pub fn set_mailbox(&mut self, now: Millis, mailbox: &str, messages: Vec<MailboxMessage>) {
        if !self.voicemail.set_mailbox(mailbox, messages) {
            return;
        }
        let counts = Content::Summary(self.voicemail.counts(mailbox));
        for id in self.mwi.subscribers_of(mailbox) {
            self.mwi
                .notify(now, &mut self.sig, &id, false, counts, &self.cfg.realm);
        }
        self.flush_mwi();
    }

    /// Reports the subscriptions' changes for the store.
    pub(super) fn flush_mwi(&mut self) {
        let changes = self.mwi.take_changes();
        if !changes.is_empty() {
            self.events.push_back(Event::Mwi(changes));
        }
    }

    /// SUBSCRIBE for `message-summary` (RFC 3842: one's own mailbox), `dialog` (RFC 4235)
    /// or `presence` (an extension of this box), once authenticated.
    pub(super) fn on_subscribe(
        &mut self,
        now: Millis,
        key: TxKey,
        req: Request,
        src: Peer,
        package: EventPackage,
    ) {
        let Some(user) = self.authenticate(now, &key, &req, src) else {
            return;
        };
        let realm = &self.cfg.realm;
        if package == EventPackage::MessageSummary {
            let counts = Content::Summary(self.voicemail.counts(&user));
            let watch = Watch {
                subscriber: user.clone(),
                package,
                watched: user,
            };
            self.mwi
                .on_subscribe(now, &mut self.sig, key, &req, src, watch, counts, realm);
            self.flush_mwi();
            return;
        }
        let in_dialog = req.headers.to.tag().is_some();
        let watched = match self.mwi.watched_by(&req.headers.call_id) {
            Some(ext) if in_dialog => ext,
            _ => req.uri.user().unwrap_or_default().to_string(),
        };
        if !self.accounts.has_user(&watched) && self.orbit_of(&watched).is_none() {
            self.sig.reply(now, &key, &req, src, 404, None);
            return;
        }
        let one: HashSet<String> = [watched.clone()].into_iter().collect();
        let state = self.lamps.get(&watched).cloned().unwrap_or_else(|| {
            self.line_states(now, &one)
                .remove(&watched)
                .unwrap_or_default()
        });
        let watch = Watch {
            subscriber: user,
            package,
            watched: watched.clone(),
        };
        let content = Content::Line(&state);
        self.mwi
            .on_subscribe(now, &mut self.sig, key, &req, src, watch, content, realm);
        self.lamps.entry(watched).or_insert(state);
        self.flush_mwi();
    }

    /// What each extension in `watched` is doing now ([`blf::line_states`]): online while a
    /// phone of it is registered; a park orbit always is.
    pub(super) fn line_states(
        &self,
        now: Millis,
        watched: &HashSet<String>,
    ) -> HashMap<String, blf::LineState> {
        let online =
            |ext: &str| self.orbit_of(ext).is_some() || !self.registrar.lookup(ext, now).is_empty();
        blf::line_states(&self.calls, &self.dnd, online, watched)
    }

    /// NOTIFYs the dialog and presence watchers of every extension whose calls, presence
    /// (a phone registered, the last binding gone) or do-not-disturb changed since the last
    /// NOTIFY. One pass over the call table; nothing when nobody watches.
    pub(super) fn update_lamps(&mut self, now: Millis) {
        let watched = self.mwi.watched();
        if watched.is_empty() {
            self.lamps.clear();
            return;
        }
        self.lamps.retain(|ext, _| watched.contains(ext));
        let states = self.line_states(now, &watched);
        for (ext, state) in states {
            // Unknown after a restart: idle, as the restored subscribers last heard of it
            // unless a call was up across the restart (calls do not survive one).
            let before = self.lamps.get(&ext).cloned().unwrap_or_default();
            if before == state {
                continue;
            }
            for (id, package) in self.mwi.watchers_of(&ext) {
                let same = match package {
                    EventPackage::Presence => before.same_presence(&state),
                    _ => before.same_lamp(&state),
                };
                if same {
                    continue;
                }
                let content = Content::Line(&state);
                self.mwi
                    .notify(now, &mut self.sig, &id, false, content, &self.cfg.realm);
            }
            self.lamps.insert(ext, state);
        }
        self.flush_mwi();
    }

    /// Handles what the relay reports.
    pub fn handle_media_event(&mut self, now: Millis, event: MediaEvent) {
        match event {
            MediaEvent::Timeout { session } => {
                let Some(call) = self.calls.get(&session) else {
                    return;
                };
                let held = call.media.as_ref().is_some_and(CallMedia::on_hold);
                let parked = matches!(call.app, Some(App::Parked { .. }));
                if call.state != CallState::Answered || held || parked {
                    return;
                }
                tracing::info!(caller = %call.caller, callee = %call.callee, "media timeout: hanging up");
                if let Some(fork) = call.winner {
                    self.send_bye_b(now, session, fork);
                }
                self.send_bye_a(now, session);
                self.end_call(now, session, Disposition::MediaTimeout, 200);
            }
            MediaEvent::Dtmf {
                session,
                leg,
                digit,
                ..
            } => {
                tracing::debug!(session, ?leg, %digit, "DTMF");
                self.recording_digit(now, session, leg, digit);
                let recording = self
                    .calls
                    .get(&session)
                    .is_some_and(Call::recording_message);
                if leg == Leg::A {
                    self.access_digit(session, digit);
                    self.menu_digit(now, session, digit);
                }
                if recording && leg == Leg::A && digit == '#' {
                    self.events
                        .push_back(Event::Media(MediaCommand::StopRecord {
                            session,
                            leg: Leg::A,
                        }));
                    self.deposit_goodbye(session);
                }
            }
            MediaEvent::PlayDone {
                session,
                leg: Leg::A,
            } => self.play_done(now, session),
            MediaEvent::RecordingDone {
                session,
                leg,
                path,
                duration_ms,
            } if self.recording_part_done(session, leg, &path, Some(duration_ms)) => {}
            MediaEvent::RecordingFailed {
                session, leg, path, ..
            } if self.recording_part_done(session, leg, &path, None) => {}
            MediaEvent::RecordingDone {
                session,
                path,
                duration_ms,
                ..
            } => {
                // The caller may still be on the line (the length limit was reached).
                let still_recording = self
                    .calls
                    .get(&session)
                    .is_some_and(Call::recording_message);
                if still_recording {
                    self.deposit_goodbye(session);
                }
                let stored = self.voicemail.recording_done(session, path, duration_ms);
                self.events.extend(stored);
            }
            MediaEvent::RecordingFailed {
                session, reason, ..
            } => {
                tracing::warn!(session, %reason, "voicemail message could not be stored");
                self.voicemail.recording_failed(session);
            }
            MediaEvent::Stats { .. } | MediaEvent::PlayDone { .. } => return,
        }
        self.drain_tx_events(now);
        self.update_lamps(now);
    }

    /// A prompt to the caller of call `session` ended: what Outpost does with the caller
    /// goes on (hang up after goodbye, wait for a digit, start recording after the beep).
    pub(super) fn play_done(&mut self, now: Millis, session: u64) {
        let goodbye = self.calls.get(&session).is_some_and(|c| match &c.app {
            Some(App::Access(access)) => access.saying_goodbye(),
            Some(App::Goodbye) => true,
            _ => false,
        });
        if goodbye {
            // After a transfer target failed, the record's leg with it says how.
            let (disposition, status) = match self.calls.get(&session).and_then(|c| c.best_failure)
            {
                Some(s @ (486 | 600)) => (Disposition::Busy, s),
                Some(s @ (404 | 408 | 480 | 487)) => (Disposition::NoAnswer, s),
                Some(s) => (Disposition::Failed, s),
                None => (Disposition::Answered, 200),
            };
            self.send_bye_a(now, session);
            self.end_call(now, session, disposition, status);
        }
        self.menu_play_done(now, session);
        let Some(call) = self.calls.get_mut(&session) else {
            return;
        };
        let Some(App::Deposit(deposit)) = &mut call.app else {
            return;
        };
        match deposit.stage {
            DepositStage::Greeting => {
                let max_ms = self.cfg.voicemail.as_ref().map_or(120_000, |v| v.max_ms);
                deposit.stage = DepositStage::Recording;
                let path = deposit.path.clone();
                self.voicemail.recording_started(
                    session,
                    &deposit.mailbox,
                    &call.caller,
                    call.start,
                );
                self.events.push_back(Event::Media(MediaCommand::Record {
                    session,
                    leg: Leg::A,
                    path,
                    max_ms,
                    from_start: false,
                }));
            }
            DepositStage::Goodbye => {
                self.send_bye_a(now, session);
                self.end_call(now, session, Disposition::Voicemail, 200);
            }
            DepositStage::Recording => {}
        }
    }
}
