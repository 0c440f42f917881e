//! Requests inside a dialog: which call and which leg they belong to (or the referrer of a
//! transfer in progress), and what each leg's BYE, REFER, INFO and re-INVITE does; the
//! ACKs of 2xx responses.

use crate::cdr::Disposition;
use crate::media::session::Leg;
use crate::sip::transaction::TxKey;
use crate::sip::{Method, Peer, Request};
use crate::Millis;

use super::call::{App, CallState, ForkState};
use super::signalling::first_contact_uri;
use super::Endpoint;

impl Endpoint {
    /// A request with a To tag: find its dialog.
    pub(super) fn in_dialog(&mut self, now: Millis, key: TxKey, req: Request, src: Peer) {
        let call_id = &req.headers.call_id;
        let to_tag = req.headers.to.tag().unwrap_or_default();
        if req.method == Method::Subscribe {
            if let Some(package) = self.mwi.dialog_package(call_id, to_tag) {
                self.on_subscribe(now, key, req, src, package);
                return;
            }
        }
        // The referrer of a blind transfer in progress, still in its own dialog.
        let referred = self
            .by_a_call_id
            .get(call_id)
            .copied()
            .or_else(|| self.by_b_call_id.get(call_id).map(|&(id, _)| id));
        if let Some(id) = referred {
            let own = self
                .calls
                .get(&id)
                .and_then(|c| c.referrer.as_ref())
                .is_some_and(|r| r.owns(&req));
            if own {
                self.referrer_request(now, id, key, req, src);
                return;
            }
        }
        if let Some(&id) = self.by_a_call_id.get(call_id) {
            let matches = self.calls.get(&id).is_some_and(|c| c.a.local_tag == to_tag);
            if matches {
                self.in_dialog_from_a(now, id, key, req, src);
                return;
            }
        } else if let Some(&(id, fork)) = self.by_b_call_id.get(call_id) {
            let paged = self.calls.get(&id).is_some_and(|c| {
                matches!(c.app, Some(App::Paging(_)))
                    && c.forks
                        .get(fork)
                        .is_some_and(|f| f.local_tag == to_tag && f.state == ForkState::Answered)
            });
            if paged {
                self.page_request(now, id, fork, key, req, src);
                return;
            }
            let matches = self.calls.get(&id).is_some_and(|c| {
                c.state == CallState::Answered
                    && c.winner == Some(fork)
                    && c.forks.get(fork).is_some_and(|f| f.local_tag == to_tag)
            });
            if matches {
                self.in_dialog_from_b(now, id, fork, key, req, src);
                return;
            }
        }
        if req.method != Method::Ack {
            self.sig.reply(now, &key, &req, src, 481, None);
        }
    }

    fn in_dialog_from_a(&mut self, now: Millis, id: u64, key: TxKey, req: Request, src: Peer) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        // Refresh the caller's target on target-refresh requests.
        if req.method == Method::Invite || req.method == Method::Update {
            if let Some(uri) = first_contact_uri(&req.headers) {
                call.a.target = uri;
            }
        }
        let (winner, has_app) = (call.winner, call.app.is_some());
        if let Some(App::Conference { room, .. }) = call.app {
            self.conference_request(now, room, id, key, req, src);
            return;
        }
        if self.recording_info(now, id, Leg::A, &key, &req, src) {
            return;
        }
        match (req.method.clone(), winner) {
            (Method::Refer, Some(_)) => self.on_refer(now, id, true, key, req, src),
            (Method::Bye, Some(fork)) => {
                self.sig.reply(now, &key, &req, src, 200, None);
                self.send_bye_b(now, id, fork);
                self.end_call(now, id, Disposition::Answered, 200);
            }
            (_, Some(fork)) => self.relay_to_b(now, id, fork, key, req, src),
            (Method::Bye, None) if has_app => {
                let deposit = self
                    .calls
                    .get(&id)
                    .is_some_and(|c| matches!(c.app, Some(App::Deposit(_))));
                self.sig.reply(now, &key, &req, src, 200, None);
                self.cancel_forks(now, id, None);
                let disposition = if deposit {
                    Disposition::Voicemail
                } else {
                    Disposition::Answered
                };
                self.end_call(now, id, disposition, 200);
            }
            (Method::Bye, None) => {
                // BYE before the call was answered ends it like a CANCEL would.
                self.sig.reply(now, &key, &req, src, 200, None);
                self.cancel_forks(now, id, None);
                if let Some(call) = self.calls.get(&id) {
                    let (ikey, invite, tag, peer) = (
                        call.a.invite_key.clone(),
                        call.a.invite.clone(),
                        call.a.local_tag.clone(),
                        call.a.peer,
                    );
                    self.sig.reply(now, &ikey, &invite, peer, 487, Some(&tag));
                }
                self.end_call(now, id, Disposition::Cancelled, 487);
            }
            (_, None) => self.sig.reply(now, &key, &req, src, 491, None),
        }
    }

    fn in_dialog_from_b(
        &mut self,
        now: Millis,
        id: u64,
        fork: usize,
        key: TxKey,
        req: Request,
        src: Peer,
    ) {
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) {
            if req.method == Method::Invite || req.method == Method::Update {
                if let Some(uri) = first_contact_uri(&req.headers) {
                    f.target = uri;
                }
            }
        }
        if let Some(App::Conference { room, .. }) = self.calls.get(&id).and_then(|c| c.app.as_ref())
        {
            let room = *room;
            self.conference_request(now, room, id, key, req, src);
            return;
        }
        if req.method == Method::Bye {
            self.sig.reply(now, &key, &req, src, 200, None);
            self.send_bye_a(now, id);
            self.end_call(now, id, Disposition::Answered, 200);
            return;
        }
        if req.method == Method::Refer {
            self.on_refer(now, id, false, key, req, src);
            return;
        }
        if self.recording_info(now, id, Leg::B, &key, &req, src) {
            return;
        }
        self.relay_to_a(now, id, key, req, src);
    }

    pub(super) fn on_ack_2xx(&mut self, now: Millis, key: &TxKey, ack: &Request) {
        let Some(&id) = self.by_server_key.get(key) else {
            // ACK for a relayed re-INVITE's 2xx.
            self.on_stray_ack(now, ack);
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.late_offer {
            call.late_offer = false;
            if let Some(fork) = call.winner {
                let body = self.media_body(id, Leg::A, false, &ack.body, None);
                self.send_ack_b(id, fork, body, ack.headers.content_type.clone());
            }
        }
    }

    /// An ACK outside any transaction: the ACK for a relayed re-INVITE's 2xx.
    pub(super) fn on_stray_ack(&mut self, _now: Millis, ack: &Request) {
        let call_id = &ack.headers.call_id;
        let (id, from_a) = if let Some(&id) = self.by_a_call_id.get(call_id) {
            (id, true)
        } else if let Some(&(id, _)) = self.by_b_call_id.get(call_id) {
            (id, false)
        } else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some((to_b, cseq)) = call.pending_reinvite_ack else {
            return;
        };
        if to_b != from_a {
            return;
        }
        call.pending_reinvite_ack = None;
        let winner = call.winner;
        let from = if from_a { Leg::A } else { Leg::B };
        let body = self.media_body(id, from, false, &ack.body, None);
        if to_b {
            if let Some(fork) = winner {
                self.send_in_dialog_ack_b(id, fork, cseq, body, ack.headers.content_type.clone());
            }
        } else {
            self.send_in_dialog_ack_a(id, cseq, body, ack.headers.content_type.clone());
        }
    }
}
