//! Calls to and from SIP trunks: outbound routes with failover from trunk to trunk,
//! digest answers to the provider's challenges, inbound DIDs, and the trunks' own
//! registration and health traffic.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rand::Rng;

use crate::cdr::Disposition;
use crate::dialplan::{OutboundError, Target};
use crate::media::session::Leg;
use crate::sip::transaction::TxKey;
use crate::sip::{wire, NameAddr, Params, Peer, Request, Response, Transport};
use crate::trunk::{Admission, TrunkStatus};
use crate::Millis;

use super::call::{better_failure, CallState, ForkIdentity, ForkState, Origin};
use super::config::GateDecision;
use super::event::Event;
use super::plan::{ExternalPlan, GateTicket, RingPlan};
use super::routing::Dest;
use super::signalling::ClientRole;
use super::{dialled, Endpoint};

impl Endpoint {
    /// Whether a request from `src` is a configured trunk's own (address, port and
    /// transport; see `trunk`'s module docs). The firewall lets exactly these past its
    /// detectors; other traffic from a provider's address is inspected like anyone's.
    pub fn is_trunk_source(&self, src: Peer) -> bool {
        self.trunks.find_by_source(src).is_some()
    }

    /// Live state of every trunk, for `outpostctl trunks`.
    pub fn trunk_status(&self) -> Vec<TrunkStatus> {
        self.trunks.status()
    }

    /// Sets (or with `None` clears) the caller-ID an extension presents on outside calls.
    pub fn set_caller_id(&mut self, ext: &str, number: Option<String>) {
        match number {
            Some(n) => {
                self.caller_ids.insert(ext.to_string(), n);
            }
            None => {
                self.caller_ids.remove(ext);
            }
        }
    }

    /// True when trunks are configured and none is up: the office runs on its own.
    pub fn survival(&self) -> bool {
        self.trunks.all_down()
    }

    /// The transport towards `peer` failed (connection refused, TLS handshake failed):
    /// every request waiting for its answer fails now instead of at its timeout.
    pub fn handle_transport_error(&mut self, now: Millis, peer: Peer, reason: &str) {
        for key in self.sig.tx.client_keys_to(peer) {
            let role = self.sig.clients.get(&key).cloned();
            self.sig.tx.abandon(&key);
            match role {
                Some(ClientRole::Trunk { trunk, purpose }) => {
                    self.trunks.on_failure(now, trunk, purpose, reason);
                }
                Some(ClientRole::Invite { call, fork }) => {
                    // RFC 3261 §8.1.3.1: a transport error counts as a 503.
                    let resp = self.sig.synthetic_response(&key, 503);
                    if let Some(resp) = resp {
                        self.on_fork_response(now, call, fork, &resp);
                    }
                }
                Some(ClientRole::Relay { relay, .. }) => {
                    if let Some(r) = self.relays.remove(&relay) {
                        self.sig
                            .reply(now, &r.server_key, &r.server_req, r.src, 503, None);
                    }
                }
                _ => {}
            }
        }
        self.pump_trunks(now);
        self.drain_tx_events(now);
    }

    /// Sends what the trunks want sent (registrations, pings).
    pub(super) fn pump_trunks(&mut self, now: Millis) {
        let ua = self.sig.user_agent().to_string();
        loop {
            let locals = self.sig.local().to_vec();
            let Some((trunk, purpose, req)) = self.trunks.poll_request(&locals, &ua) else {
                break;
            };
            let Some(peer) = self.trunks.peer(trunk) else {
                continue;
            };
            // One request per trunk and purpose: one the trunk gave up on (moving to the
            // provider's next address) must not report its late timeout against this one.
            let role = ClientRole::Trunk { trunk, purpose };
            let stale: Vec<TxKey> = self
                .sig
                .clients
                .iter()
                .filter(|(_, r)| {
                    matches!(r, ClientRole::Trunk { trunk: t, purpose: p } if *t == trunk && *p == purpose)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                self.sig.tx.abandon(&key);
                self.sig.clients.remove(&key);
            }
            self.sig.send_request(now, req, peer, role);
        }
        while let Some(change) = self.trunks.poll_change() {
            tracing::info!(trunk = %change.name, health = ?change.health, reason = %change.reason, "trunk health changed");
            self.events.push_back(Event::TrunkChanged(change));
        }
    }

    /// The outbound plan for `number` dialled by extension `caller`; `Err` is the status
    /// to refuse with.
    pub(super) fn resolve_external(&self, caller: &str, number: &str) -> Result<Dest, u16> {
        let out = match self.cfg.dialplan.outbound(caller, number) {
            Ok(out) => out,
            Err(OutboundError::NoRoute) => return Err(404),
            Err(OutboundError::NotAllowed { .. }) => return Err(403),
        };
        let known: Vec<usize> = out
            .trunks
            .iter()
            .filter_map(|name| self.trunks.index_of(name))
            .collect();
        // Trunks that are down are skipped, except for emergency calls, which try the
        // healthy ones first and then every other.
        let mut trunks: VecDeque<usize> = known
            .iter()
            .copied()
            .filter(|&t| self.trunks.is_up(t))
            .collect();
        if out.emergency {
            trunks.extend(known.iter().copied().filter(|&t| !self.trunks.is_up(t)));
        }
        if trunks.is_empty() {
            return Err(503);
        }
        Ok(Dest::External(ExternalPlan {
            number: out.number,
            trunks,
            addrs: None,
            caller_id: out.caller_id,
            emergency: out.emergency,
            route: out.route,
        }))
    }

    /// Asks the toll-fraud gate about an outbound call of `ext`: the ticket to report its
    /// end with (none for emergency calls or without a gate), or the refusal.
    fn gate_check(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        plan: &ExternalPlan,
    ) -> Result<Option<GateTicket>, (String, bool)> {
        if plan.emergency {
            return Ok(None);
        }
        let Some(gate) = self.gate.as_mut() else {
            return Ok(None);
        };
        let trunk = plan
            .trunks
            .front()
            .and_then(|&t| self.trunks.config(t))
            .map(|t| t.name.clone());
        match gate.check(now, ext, dialled, trunk.as_deref()) {
            GateDecision::Allow => Ok(Some(GateTicket {
                ext: ext.to_string(),
                dialled: dialled.to_string(),
                trunk,
            })),
            GateDecision::Refuse { reason, lock } => Err((reason, lock)),
        }
    }

    /// Like [`Endpoint::gate_check`], answering a refused request with 403 and the reason.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gate_allows(
        &mut self,
        now: Millis,
        key: &TxKey,
        req: &Request,
        src: Peer,
        ext: &str,
        dialled: &str,
        plan: &ExternalPlan,
    ) -> Result<Option<GateTicket>, ()> {
        let (reason, lock) = match self.gate_check(now, ext, dialled, plan) {
            Ok(ticket) => return Ok(ticket),
            Err(refusal) => refusal,
        };
        tracing::warn!(ext, dialled, %reason, "outbound call refused by the toll-fraud policy");
        let tag = self.sig.new_tag();
        let mut resp = Response::to_request(req, 403, Some(&tag));
        resp.reason = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        self.sig.send(now, key, resp, src);
        self.events.push_back(Event::CallRefused {
            src,
            ext: ext.to_string(),
            dialled: dialled.to_string(),
            reason,
            lock,
        });
        Err(())
    }

    /// Like [`Endpoint::gate_check`] for a call Outpost places on an extension's behalf
    /// (forwarding): `None` when refused (the caller then hears no forwarding).
    pub(super) fn gate_quiet(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        plan: &ExternalPlan,
    ) -> Option<Option<GateTicket>> {
        match self.gate_check(now, ext, dialled, plan) {
            Ok(ticket) => Some(ticket),
            Err((reason, _)) => {
                tracing::warn!(ext, dialled, %reason, "forwarding refused by the toll-fraud policy");
                None
            }
        }
    }

    /// Starts the outbound leg on the next trunk of the plan, at its current address.
    /// False when none is left.
    pub(super) fn next_trunk(&mut self, now: Millis, id: u64) -> bool {
        self.next_leg(now, id, false)
    }

    /// Starts the next outbound leg: with `same_trunk`, at the current trunk's next
    /// address not yet tried on this call, else (or with none left) on the next trunk.
    fn next_leg(&mut self, now: Millis, id: u64, same_trunk: bool) -> bool {
        let Some(mut call) = self.calls.remove(&id) else {
            return false;
        };
        let RingPlan::External(plan) = &mut call.plan else {
            self.calls.insert(id, call);
            return false;
        };
        let retry = if same_trunk {
            plan.addrs
                .as_mut()
                .and_then(|(t, q)| Some((*t, q.pop_front()?)))
        } else {
            None
        };
        let (trunk, addr) = match retry {
            Some(next) => next,
            None => loop {
                let Some(trunk) = plan.trunks.pop_front() else {
                    plan.addrs = None;
                    self.calls.insert(id, call);
                    return false;
                };
                let mut addrs: VecDeque<SocketAddr> =
                    self.trunks.targets_from_current(trunk).into();
                if let Some(first) = addrs.pop_front() {
                    plan.addrs = Some((trunk, addrs));
                    break (trunk, first);
                }
            },
        };
        let Some(cfg) = self.trunks.config(trunk).cloned() else {
            self.calls.insert(id, call);
            return false;
        };
        let peer = Peer {
            transport: cfg.transport,
            addr,
        };
        let number = plan.number.clone();
        // Route, then the extension's own number, then the trunk's, then its account.
        let own = match call.origin {
            Origin::Extension => self.caller_ids.get(&call.caller).cloned(),
            Origin::Trunk(_) => None,
        };
        let caller_id = plan
            .caller_id
            .clone()
            .or(own)
            .or_else(|| cfg.caller_id.clone())
            .or_else(|| (!cfg.username.is_empty()).then(|| cfg.username.clone()))
            .unwrap_or_else(|| call.caller.clone());
        let transport = match cfg.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let (Ok(target), Ok(from_uri)) = (
            wire::parse_uri(&format!("sip:{number}@{}{transport}", cfg.domain)),
            wire::parse_uri(&format!("sip:{caller_id}@{}", cfg.domain)),
        ) else {
            self.calls.insert(id, call);
            return false;
        };
        if let Some(m) = call.media.as_mut() {
            m.set_signal_b(addr.ip());
            m.set_sdes(Leg::B, self.cfg.sdes_allowed(cfg.transport));
        }
        let body = call.offer_for_new_b();
        let mut to = NameAddr::new(target.clone());
        to.params = Params::default();
        let mut from = NameAddr::new(from_uri);
        from.display = Some(call.caller.clone());
        let invite = call.a.invite.clone();
        let idx = call.forks.len();
        let mut fork = self.start_fork_to(
            now,
            id,
            idx,
            &invite,
            body,
            target,
            peer,
            ForkIdentity {
                local_uri: from,
                remote_uri: to,
                contact_user: if cfg.username.is_empty() {
                    "outpost".to_string()
                } else {
                    cfg.username.clone()
                },
                asserted: Some(caller_id),
                extra: Vec::new(),
            },
        );
        fork.trunk = Some(trunk);
        fork.trunk_invite = self
            .sig
            .tx
            .client_request(&fork.invite_key)
            .cloned()
            .map(Box::new);
        call.forks.push(fork);
        let silence = now.saturating_add(cfg.silence_timeout_ms);
        self.calls.insert(id, call);
        self.set_step_deadline(id, Some(silence));
        tracing::debug!(trunk = %cfg.name, %addr, "outbound call leg started");
        true
    }

    /// A trunk stayed silent on the current leg: give up on that address and try the
    /// trunk's next one, else the next trunk.
    pub(super) fn trunk_silent(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let mut silent = Vec::new();
        for f in call
            .forks
            .iter_mut()
            .filter(|f| f.trunk.is_some() && !f.retired)
        {
            if f.state == ForkState::Calling {
                f.retired = true;
                silent.extend(f.trunk.map(|t| (t, f.peer.addr)));
            }
        }
        if silent.is_empty() {
            return;
        }
        call.best_failure = Some(better_failure(call.best_failure, 503));
        for (trunk, addr) in silent {
            self.trunks.target_failed(now, trunk, addr);
        }
        if !self.next_leg(now, id, true) {
            self.fork_done(now, id);
        }
    }

    /// A final failure on leg `fork` of a trunk call: the trunk's next address when the
    /// failure is the address's (timeout, 503: RFC 3263 §4.3), the next trunk when it is
    /// the trunk's (other server errors, refused credentials); true when a leg started.
    pub(super) fn trunk_failover(
        &mut self,
        now: Millis,
        id: u64,
        fork: usize,
        status: u16,
    ) -> bool {
        let failover = matches!(status, 401 | 407 | 408 | 500..=599);
        if !failover {
            return false;
        }
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        if call.state == CallState::Ended || call.winner.is_some() {
            return false;
        }
        let next_address = matches!(status, 408 | 503);
        if next_address {
            if let Some((trunk, addr)) = call
                .forks
                .get(fork)
                .and_then(|f| Some((f.trunk?, f.peer.addr)))
            {
                self.trunks.target_failed(now, trunk, addr);
            }
        }
        self.next_leg(now, id, next_address)
    }

    /// Answers a provider's challenge to one of our INVITEs by sending it again with
    /// credentials. False when the challenge cannot (or may no longer) be answered.
    pub(super) fn answer_trunk_challenge(
        &mut self,
        now: Millis,
        id: u64,
        fork: usize,
        resp: &Response,
    ) -> bool {
        let Some(f) = self.calls.get(&id).and_then(|c| c.forks.get(fork)) else {
            return false;
        };
        let (Some(trunk), true) = (f.trunk, f.auth_tries < 2) else {
            return false;
        };
        let Some(mut req) = f.trunk_invite.as_deref().cloned() else {
            return false;
        };
        let peer = f.peer;
        let uri = wire::uri_to_string(&req.uri);
        let Some((name, value)) = self.trunks.answer_invite_challenge(trunk, resp, &uri) else {
            return false;
        };
        let seq = req.headers.cseq.seq.saturating_add(1);
        req.headers.cseq.seq = seq;
        req.headers.other.retain(|(n, _)| {
            !n.eq_ignore_ascii_case("Authorization")
                && !n.eq_ignore_ascii_case("Proxy-Authorization")
        });
        req.headers.push(&name, value);
        if let Some(via) = req.headers.via.first_mut() {
            via.params.set(
                "branch",
                Some(format!("z9hG4bK{:016x}", self.sig.rng.gen::<u64>())),
            );
        }
        let kept = Box::new(req.clone());
        let role = ClientRole::Invite { call: id, fork };
        let key = self.sig.send_request(now, req, peer, role);
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) {
            f.trunk_invite = Some(kept);
            f.invite_key = key;
            f.invite_cseq = seq;
            f.local_cseq = seq;
            f.auth_tries += 1;
            f.tx_live = true;
        }
        true
    }

    /// An INVITE from a trunk's address: a call for one of our DIDs.
    pub(super) fn on_trunk_invite(
        &mut self,
        now: Millis,
        key: TxKey,
        req: Request,
        src: Peer,
        trunk: usize,
    ) {
        if let Admission::Refused { report } = self.trunks.admit_inbound_call(now, trunk) {
            let (name, limit) = self
                .trunks
                .config(trunk)
                .map(|c| (c.name.clone(), c.inbound_calls_per_second))
                .unwrap_or_default();
            if let Some(refused) = report {
                tracing::warn!(trunk = %name, refused, limit, "inbound calls over the trunk's cap refused");
                self.events.push_back(Event::TrunkCallsRefused {
                    trunk: name,
                    src,
                    refused,
                    limit,
                });
            }
            // Stateless, like a challenge: a flood leaves no transaction state behind.
            let tag = self.sig.new_tag();
            let mut resp = Response::to_request(&req, 503, Some(&tag));
            resp.headers.push("Retry-After", "1".to_string());
            self.sig.stamp(&mut resp, src);
            self.sig.tx.send_stateless_response(&resp, src);
            self.sig.tx.abandon(&key);
            return;
        }
        self.sig.reply(now, &key, &req, src, 100, None);
        let username = self
            .trunks
            .config(trunk)
            .map(|t| t.username.clone())
            .unwrap_or_default();
        let mut did = dialled(&req);
        // Providers send calls to our registered Contact (user = account name); the DID
        // is then in To.
        if did.is_empty() || did == username || did == "outpost" {
            did = req.headers.to.uri.user().unwrap_or_default().to_string();
        }
        let caller: String = req
            .headers
            .from
            .uri
            .user()
            .unwrap_or("anonymous")
            .chars()
            .take(64)
            .collect();
        let dest = match self.cfg.dialplan.inbound(&did) {
            Some(Target::Extension(ext)) if self.accounts.has_user(&ext) => {
                Some(Dest::Extension(ext))
            }
            Some(Target::Group(n) | Target::Menu(n)) => self.resolve_target(&n).ok(),
            Some(Target::Voicemail(mb)) => Some(Dest::Voicemail(mb)),
            _ => None,
        };
        let Some(dest) = dest else {
            tracing::debug!(did = %did.chars().take(32).collect::<String>(), "inbound call for an unknown DID");
            self.sig.reply(now, &key, &req, src, 404, None);
            self.record_failed(now, &req, &caller, &did, 404, Disposition::NotFound);
            return;
        };
        self.place_call(now, key, req, src, caller, did, Origin::Trunk(trunk), dest);
    }
}
