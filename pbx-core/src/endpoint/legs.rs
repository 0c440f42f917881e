//! Sending on the two legs of a bridged call: in-dialog requests relayed from one leg to
//! the other (and their answers), the ACKs and BYEs Outpost sends itself, and the SDP
//! rewriting that anchors media in the relay as bodies cross.

use crate::media::session::Leg;
use crate::sip::transaction::TxKey;
use crate::sip::{Contact, Method, Peer, Request, Response};
use crate::Millis;

use super::call::Relay;
use super::outleg::OutLeg;
use super::signalling::ClientRole;
use super::{Endpoint, Event};

impl Endpoint {
    /// The answer to an in-dialog request relayed to the other leg.
    pub(super) fn on_relay_response(
        &mut self,
        now: Millis,
        id: u64,
        relay_id: u64,
        resp: &Response,
    ) {
        if resp.is_provisional() {
            // Provisional answers to relayed requests stay on their leg.
            return;
        }
        let Some(relay) = self.relays.remove(&relay_id) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if resp.is_success() && relay.server_req.method == Method::Invite {
            // The 2xx of a relayed re-INVITE: its ACK comes from the requester and goes
            // to the other leg (with the SDP answer when the re-INVITE had no offer).
            call.pending_reinvite_ack = Some((relay.from_a, resp.headers.cseq.seq));
        }
        let tag = relay.from_a.then(|| call.a.local_tag.clone());
        let mut out = Response::to_request(&relay.server_req, resp.status, tag.as_deref());
        out.reason = resp.reason.clone();
        out.headers.content_type = resp.headers.content_type.clone();
        // The responder answers the relayed offer, or offers itself to a body-less one.
        let responder = if relay.from_a { Leg::B } else { Leg::A };
        let offer = relay.server_req.body.is_empty();
        out.body = if resp.is_success() {
            self.media_body(id, responder, offer, &resp.body, None)
        } else {
            Vec::new()
        };
        if resp.is_success() {
            out.headers.contact = vec![Contact::Addr(self.sig.our_contact(relay.src, None))];
        }
        // Never pass a phone's own challenges through: only Outpost authenticates.
        for (name, value) in &resp.headers.other {
            if matches!(
                name.as_str(),
                "Supported" | "Require" | "Session-Expires" | "Min-SE" | "Allow" | "Accept"
            ) {
                out.headers.push(name, value.clone());
            }
        }
        self.sig.send(now, &relay.server_key, out, relay.src);
    }

    /// Relays an in-dialog request from the caller to fork `fork`.
    pub(super) fn relay_to_b(
        &mut self,
        now: Millis,
        id: u64,
        fork: usize,
        key: TxKey,
        req: Request,
        src: Peer,
    ) {
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else {
            return;
        };
        let leg = f.next_out_leg();
        self.relay_out(now, id, key, req, src, leg);
    }

    /// Relays an in-dialog request from the callee to the caller.
    pub(super) fn relay_to_a(&mut self, now: Millis, id: u64, key: TxKey, req: Request, src: Peer) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let leg = call.a.next_out_leg();
        self.relay_out(now, id, key, req, src, leg);
    }

    /// Sends a relayed request out on `leg` and remembers where its answer goes.
    pub(super) fn relay_out(
        &mut self,
        now: Millis,
        id: u64,
        server_key: TxKey,
        req: Request,
        src: Peer,
        leg: OutLeg,
    ) {
        let (from_a, peer) = (leg.to_b, leg.peer);
        let mut out = leg.request(&mut self.sig, req.method.clone());
        out.headers.content_type = req.headers.content_type.clone();
        if matches!(req.method, Method::Invite | Method::Update) {
            out.headers.contact = vec![Contact::Addr(self.sig.our_contact(peer, None))];
        }
        for (name, value) in &req.headers.other {
            // Pass end-to-end content headers; hop-by-hop and identity headers stay behind.
            if matches!(
                name.as_str(),
                "Content-Disposition"
                    | "Event"
                    | "Subscription-State"
                    | "Supported"
                    | "Require"
                    | "Session-Expires"
                    | "Min-SE"
                    | "Info-Package"
                    | "Recv-Info"
            ) {
                out.headers.push(name, value.clone());
            }
        }
        let from = if from_a { Leg::A } else { Leg::B };
        out.body = self.media_body(id, from, true, &req.body, None);
        let relay_id = self.next_relay;
        self.next_relay += 1;
        self.relays.insert(
            relay_id,
            Relay {
                call: id,
                server_key,
                server_req: req,
                src,
                from_a,
            },
        );
        self.sig.send_request(
            now,
            out,
            peer,
            ClientRole::Relay {
                call: id,
                relay: relay_id,
            },
        );
    }

    /// ACKs fork `fork`'s 2xx to our INVITE.
    pub(super) fn send_ack_b(
        &mut self,
        id: u64,
        fork: usize,
        body: Vec<u8>,
        content_type: Option<String>,
    ) {
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else {
            return;
        };
        let cseq = f.invite_cseq;
        f.send_ack(&mut self.sig, cseq, body, content_type);
    }

    /// Sends an ACK with CSeq `cseq` to fork `fork` (kept when it ACKs the INVITE).
    pub(super) fn send_in_dialog_ack_b(
        &mut self,
        id: u64,
        fork: usize,
        cseq: u32,
        body: Vec<u8>,
        content_type: Option<String>,
    ) {
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) {
            f.send_ack(&mut self.sig, cseq, body, content_type);
        }
    }

    /// Sends an ACK with CSeq `cseq` to the caller.
    pub(super) fn send_in_dialog_ack_a(
        &mut self,
        id: u64,
        cseq: u32,
        body: Vec<u8>,
        content_type: Option<String>,
    ) {
        if let Some(call) = self.calls.get(&id) {
            call.a
                .out_leg(cseq)
                .send_ack(&mut self.sig, body, content_type);
        }
    }

    /// Hangs up fork `fork`.
    pub(super) fn send_bye_b(&mut self, now: Millis, id: u64, fork: usize) {
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) {
            f.next_out_leg().send_bye(&mut self.sig, now);
        }
    }

    /// Hangs up the caller.
    pub(super) fn send_bye_a(&mut self, now: Millis, id: u64) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.a.next_out_leg().send_bye(&mut self.sig, now);
        }
    }

    /// Rewrites a body crossing call `id` from leg `from` for the relay: an offer (`offer`)
    /// or the answer to the other leg's offer. Without media anchoring, or for an empty
    /// body, the body passes unchanged; an unusable SDP is passed unchanged too (and
    /// logged), so signalling never breaks on media.
    pub(super) fn media_body(
        &mut self,
        id: u64,
        from: Leg,
        offer: bool,
        body: &[u8],
        b_peer: Option<Peer>,
    ) -> Vec<u8> {
        if body.is_empty() {
            return Vec::new();
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return body.to_vec();
        };
        match from {
            Leg::A => call.a_sdp = body.to_vec(),
            Leg::B => call.b_sdp = body.to_vec(),
        }
        let Some(media) = call.media.as_mut() else {
            // Passed through: no key crosses a leg reached over an insecure transport.
            let b = b_peer.or_else(|| call.winner.and_then(|w| call.forks.get(w)).map(|f| f.peer));
            let secure = self.cfg.sdes_allowed(call.a.peer.transport)
                && b.is_none_or(|p| self.cfg.sdes_allowed(p.transport));
            return if secure {
                body.to_vec()
            } else {
                super::without_sdes(body)
            };
        };
        if let Some(peer) = b_peer {
            media.set_signal_b(peer.addr.ip());
            media.set_sdes(Leg::B, self.cfg.sdes_allowed(peer.transport));
        }
        let result = if offer {
            media.offer(from, body).map(|b| (b, Vec::new()))
        } else {
            media.answer(from, body)
        };
        match result {
            Ok((out, cmds)) => {
                for cmd in cmds {
                    self.events.push_back(Event::Media(cmd));
                }
                out
            }
            Err(err) => {
                tracing::debug!(%err, "SDP not anchored");
                body.to_vec()
            }
        }
    }

    /// Two relay ports for a new call (both or none).
    pub(super) fn take_ports(&mut self) -> Option<(u16, u16)> {
        let pool = self.ports.as_mut()?;
        let a = pool.take()?;
        match pool.take() {
            Some(b) => Some((a, b)),
            None => {
                pool.give_back(a);
                None
            }
        }
    }

    /// Returns a call's relay ports to the pool.
    pub(super) fn give_ports(&mut self, (a, b): (u16, u16)) {
        if let Some(pool) = self.ports.as_mut() {
            pool.give_back(a);
            pool.give_back(b);
        }
    }
}
