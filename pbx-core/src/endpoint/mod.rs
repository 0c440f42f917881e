//! The call core: one sans-IO endpoint that owns transactions, authentication, the registrar
//! and the B2BUA.
//!
//! Inputs are [`Endpoint::handle`] (bytes from a peer), [`Endpoint::handle_timeout`] and the
//! admin methods; outputs are drained in this order after every input:
//! [`Endpoint::poll_event`] (things to persist: a driver that acknowledges durably commits
//! them before it sends), then [`Endpoint::poll_transmit`], then [`Endpoint::poll_timeout`].
//!
//! Calls are bridged as a back-to-back user agent: the caller's dialog (leg A) ends at
//! Outpost, and Outpost places a new INVITE (leg B, its own Call-ID) to every registered
//! contact of the callee in parallel. The first 2xx wins and the other forks are cancelled.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cdr::Disposition;
use crate::media::anchor::CallMedia;
use crate::media::session::{Leg, MediaCommand, PortPool};
use crate::registrar::{BindingChange, Registrar};
use crate::sip::auth::{Authenticator, StoredSecret};
use crate::sip::transaction::{ClientInput, ServerInput, Transactions, Transmit, TxEvent, TxKey};
use crate::sip::wire;
use crate::sip::{Contact, Message, Method, Params, Peer, Request, Response, Uri};
use crate::Millis;

mod accounts;
mod admin;
mod apps;
mod blf;
mod call;
mod conference;
mod config;
mod deadlines;
mod dialogs;
mod event;
mod ivr;
mod legs;
mod mwi;
mod outleg;
mod paging;
mod park;
mod plan;
mod recording;
mod records;
mod referral;
mod routing;
mod sdes;
mod signalling;
mod transfer;
mod trunking;
mod voicemail;

use accounts::{Accounts, AuthIo};
use call::{
    better_failure, App, Call, CallState, Fork, ForkIdentity, ForkState, LegA, Origin, RecordLeg,
    Relay,
};
pub use config::{
    CallGate, EndpointConfig, FeatureCodes, Forwarding, GateDecision, IvrMenu, MediaSettings,
    PagingGroup, RecordingSettings, RingGroup, RingStrategy, VoicemailSettings, MAX_FOLLOW_ME,
};
pub use event::{CallSummary, Counters, DebugCounts, Event, EventPackage, MwiChange, MwiRecord};
use mwi::MwiSubscriptions;
pub use paging::{MAX_PAGED, PAGE_RING_MS};
use voicemail::Voicemail;
pub use voicemail::{pin_hash, MailboxMessage};

use deadlines::Deadlines;
use plan::RingPlan;
use routing::{Dest, Routed};
use sdes::{requires_srtp, without_sdes, InsecureSrtpLog};
use signalling::{first_contact_uri, host_text, ClientRole, Signalling};

/// Methods we answer, for Allow headers.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, SUBSCRIBE";
/// Upper bound on simultaneous calls; beyond it new calls get 503 (bounded memory).
const MAX_CALLS: usize = 20_000;
/// Retry-After of the 503 sent when the server transaction table is full: long enough for
/// completed transactions to end (Timer J is 32 s), short enough for a phone to retry soon.
const OVERLOAD_RETRY_AFTER_SECS: u32 = 5;
/// Upper bound on subscriptions (message-summary, dialog and presence together).
const MAX_MWI: usize = 50_000;

/// Why an admin operation on the endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("extension {0} does not exist")]
    NoSuchExtension(String),
}

/// The SIP endpoint.
#[derive(Debug)]
pub struct Endpoint {
    cfg: EndpointConfig,
    /// Extensions, their secrets, locks and digest algorithms.
    accounts: Accounts,
    /// The transaction layer, our client transactions' roles, tags and the random generator.
    sig: Signalling,
    registrar: Registrar,
    calls: HashMap<u64, Call>,
    /// Mailboxes, PINs and recordings in progress.
    voicemail: Voicemail,
    /// Auto-attendant digit deadlines.
    menu_timers: Deadlines,
    /// Deadlines of the next step of a ring plan.
    step_timers: Deadlines,
    /// Call forwarding per extension.
    forwards: HashMap<String, Forwarding>,
    /// Extensions in do-not-disturb.
    dnd: std::collections::HashSet<String>,
    /// Caller-ID per extension on outside calls.
    caller_ids: HashMap<String, String>,
    /// The toll-fraud check for outbound calls.
    gate: Option<Box<dyn CallGate>>,
    /// The trunks' registrations and health.
    trunks: crate::trunk::Trunks,
    /// Event subscriptions (message-summary, dialog, presence) by Call-ID.
    mwi: MwiSubscriptions,
    /// What the dialog and presence watchers of each watched extension last heard.
    lamps: HashMap<String, blf::LineState>,
    /// Relay ports free for new calls (when media is anchored).
    ports: Option<PortPool>,
    /// Calls in `calls` that ended and wait for their forks' transactions.
    ended_calls: usize,
    next_call: u64,
    /// Rate-limited log of SRTP offers refused for their transport.
    insecure_srtp_log: InsecureSrtpLog,
    by_a_call_id: HashMap<String, u64>,
    by_b_call_id: HashMap<String, (u64, usize)>,
    by_server_key: HashMap<TxKey, u64>,
    relays: HashMap<u64, Relay>,
    next_relay: u64,
    ring_timers: Deadlines,
    /// The park orbits in use.
    park: park::ParkLot,
    /// The conferences in progress.
    conferences: conference::Conferences,
    /// Call recordings in progress (or waiting for their files), by relay session.
    recordings: HashMap<u64, recording::CallRecording>,
    /// The digits each leg of a call dialled lately (the recording code).
    recent_digits: HashMap<u64, recording::RecentDigits>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Endpoint {
    /// A new endpoint with no users and no registrations.
    pub fn new(cfg: EndpointConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let decoy_password: String = (0..24)
            .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
            .collect();
        let decoy = StoredSecret::new("decoy", &cfg.realm, &decoy_password);
        let mut auth = Authenticator::new(&cfg.realm, cfg.secret_key, rng.gen(), cfg.nonce);
        auth.set_algorithms(&cfg.auth_algorithms);
        Endpoint {
            registrar: Registrar::new(cfg.registrar.clone()),
            accounts: Accounts::new(&cfg.realm, auth, decoy),
            calls: HashMap::new(),
            voicemail: Voicemail::default(),
            menu_timers: Deadlines::default(),
            step_timers: Deadlines::default(),
            forwards: HashMap::new(),
            dnd: std::collections::HashSet::new(),
            caller_ids: HashMap::new(),
            gate: None,
            trunks: crate::trunk::Trunks::new(cfg.trunks.clone(), rng.gen(), 0),
            mwi: MwiSubscriptions::new(MAX_MWI),
            lamps: HashMap::new(),
            ports: cfg
                .media
                .as_ref()
                .map(|m| PortPool::new(m.port_first, m.port_last)),
            ended_calls: 0,
            next_call: 1,
            insecure_srtp_log: InsecureSrtpLog::default(),
            by_a_call_id: HashMap::new(),
            by_b_call_id: HashMap::new(),
            by_server_key: HashMap::new(),
            relays: HashMap::new(),
            next_relay: 1,
            ring_timers: Deadlines::default(),
            park: park::ParkLot::default(),
            conferences: conference::Conferences::default(),
            recordings: HashMap::new(),
            recent_digits: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            sig: Signalling::new(
                Transactions::with_max_server(cfg.timers, cfg.max_server_transactions),
                rng,
                cfg.local.clone(),
                cfg.user_agent.clone(),
            ),
            counters: Counters::default(),
            cfg,
        }
    }

    /// The digest realm.
    pub fn realm(&self) -> &str {
        &self.cfg.realm
    }

    /// Applies a new configuration to the running endpoint without touching calls in
    /// progress: menus, ring groups, feature codes, the dial plan, ring timeout, voicemail
    /// settings and digest algorithms take effect for new calls; trunks are rebuilt (they
    /// register and ping again) only when their settings changed. What cannot change while
    /// running (realm, addresses, media ports, registrar limits, timers) is left as it is;
    /// the caller tells the admin it needs a restart.
    pub fn reconfigure(&mut self, now: Millis, new: &EndpointConfig) {
        self.cfg.ivr = new.ivr.clone();
        self.cfg.groups = new.groups.clone();
        self.cfg.paging = new.paging.clone();
        self.cfg.features = new.features.clone();
        self.cfg.dialplan = new.dialplan.clone();
        self.cfg.ring_timeout_ms = new.ring_timeout_ms;
        self.cfg.voicemail = new.voicemail.clone();
        self.cfg.auth_algorithms = new.auth_algorithms.clone();
        self.accounts.set_algorithms(&new.auth_algorithms);
        self.cfg.user_agent = new.user_agent.clone();
        self.sig.set_user_agent(new.user_agent.clone());
        if same_but_targets(&self.cfg.trunks, &new.trunks) {
            // Only the providers' addresses changed (a re-resolution): the trunks keep
            // their registrations and health.
            for (idx, t) in new.trunks.iter().enumerate() {
                self.trunks.set_targets(now, idx, t.targets.clone());
            }
            self.cfg.trunks = new.trunks.clone();
            self.pump_trunks(now);
        } else if self.cfg.trunks != new.trunks {
            self.cfg.trunks = new.trunks.clone();
            self.trunks = crate::trunk::Trunks::new(new.trunks.clone(), self.sig.rng.gen(), now);
            // Transactions of the old trunks answer into nothing.
            self.sig
                .clients
                .retain(|_, role| !matches!(role, ClientRole::Trunk { .. }));
        }
    }

    /// New addresses for the trunk called `name` (its host was resolved again): see
    /// [`crate::trunk::Trunks::set_targets`]. False when there is no such trunk.
    pub fn set_trunk_targets(&mut self, now: Millis, name: &str, targets: Vec<SocketAddr>) -> bool {
        let Some(idx) = self.trunks.index_of(name) else {
            return false;
        };
        if let Some(c) = self.cfg.trunks.get_mut(idx) {
            c.targets.clone_from(&targets);
        }
        self.trunks.set_targets(now, idx, targets);
        self.pump_trunks(now);
        self.drain_tx_events(now);
        true
    }

    /// The box's addresses changed (a new DHCP lease, a moved box): `local` is what Via and
    /// Contact carry from now on, `media` what new SDP carries (one per family is enough).
    /// Calls in progress keep their relay ports; registering trunks register again so the
    /// provider learns the new Contact.
    pub fn set_addresses(&mut self, now: Millis, local: Vec<SocketAddr>, media: Vec<IpAddr>) {
        let moved = self.cfg.local != local;
        self.cfg.local = local.clone();
        self.sig.set_local(local);
        if let Some(m) = self.cfg.media.as_mut() {
            if !media.is_empty() {
                m.addrs = media;
            }
        }
        if moved {
            self.trunks.address_changed(now);
            self.pump_trunks(now);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Inputs and outputs
    // ---------------------------------------------------------------------------------------

    /// Handles one datagram or stream frame from `src`.
    pub fn handle(&mut self, now: Millis, src: Peer, bytes: &[u8]) {
        if wire::is_keepalive(bytes) {
            self.counters.received += 1;
            return;
        }
        let parsed = wire::parse(bytes);
        self.handle_parsed(now, src, bytes, parsed);
    }

    /// Like [`Endpoint::handle`] for a message the caller already parsed (the firewall
    /// inspects it first); `bytes` are the raw bytes, used to answer malformed requests.
    pub fn handle_parsed(
        &mut self,
        now: Millis,
        src: Peer,
        bytes: &[u8],
        parsed: Result<Message, wire::WireError>,
    ) {
        self.counters.received += 1;
        // Only messages of calls change what busy lamps show, and registrations that add or
        // remove a binding what presence shows (a refresh, the usual REGISTER, changes
        // nothing: no pass over the lamps for it).
        let of_calls = match &parsed {
            Ok(Message::Request(r)) => calls_method(&r.method),
            Ok(Message::Response(r)) => calls_method(&r.headers.cseq.method),
            Err(_) => false,
        };
        let events_before = self.events.len();
        match parsed {
            Ok(Message::Request(req)) => self.on_request(now, src, req),
            Ok(Message::Response(resp)) => self.on_response(now, src, resp),
            Err(err) => {
                self.counters.malformed += 1;
                tracing::debug!(%err, peer = %src.addr, "malformed SIP message");
                if let Some(reply) = wire::reply_to_malformed(bytes, &err) {
                    self.transmits.push_back(Transmit {
                        dest: src,
                        bytes: reply,
                    });
                }
            }
        }
        self.drain_tx_events(now);
        let bindings_changed = self.events.iter().skip(events_before).any(|e| {
            matches!(e, Event::Bindings(changes)
                if changes.iter().any(|c| !matches!(c, BindingChange::Refresh(_))))
        });
        if of_calls || bindings_changed {
            self.update_lamps(now);
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.sig.tx.handle_timeout(now);
        self.trunks.handle_timeout(now);
        self.pump_trunks(now);
        self.drain_tx_events(now);
        self.mwi.expire(now);
        self.flush_mwi();
        let changes = self.registrar.expire(now);
        if !changes.is_empty() {
            self.events.push_back(Event::Bindings(changes));
        }
        while let Some((deadline, call)) = self.menu_timers.pop_due(now) {
            self.menu_timeout(now, call, deadline);
        }
        while let Some((_, call)) = self.ring_timers.pop_due(now) {
            self.ring_timeout(now, call);
        }
        while let Some((deadline, call)) = self.step_timers.pop_due(now) {
            self.step_timeout(now, call, deadline);
        }
        self.drain_tx_events(now);
        self.update_lamps(now);
    }

    /// The next instant `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        [
            self.sig.tx.poll_timeout(),
            self.registrar.next_expiry(),
            self.ring_timers.next(),
            self.menu_timers.next(),
            self.step_timers.next(),
            self.trunks.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram or stream message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits
            .pop_front()
            .or_else(|| self.sig.tx.poll_transmit())
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------------------------------
    // Requests
    // ---------------------------------------------------------------------------------------

    fn on_request(&mut self, now: Millis, src: Peer, req: Request) {
        let key = match self.sig.tx.receive_request(now, &req, src) {
            ServerInput::New(key) => key,
            ServerInput::Ack2xx(key) => {
                self.on_ack_2xx(now, &key, &req);
                return;
            }
            ServerInput::AckUnmatched => {
                self.on_stray_ack(now, &req);
                return;
            }
            ServerInput::Retransmission | ServerInput::AckAbsorbed => return,
            ServerInput::Overloaded => {
                self.counters.overloaded += 1;
                let mut resp = Response::to_request(&req, 503, Some(&self.sig.new_tag()));
                resp.reason = "Service Unavailable (too many transactions)".to_string();
                resp.headers
                    .push("Retry-After", OVERLOAD_RETRY_AFTER_SECS.to_string());
                self.sig.stamp(&mut resp, src);
                self.sig.tx.send_stateless_response(&resp, src);
                return;
            }
        };
        if req.headers.max_forwards == Some(0) && req.method != Method::Ack {
            self.sig.reply(now, &key, &req, src, 483, None);
            return;
        }
        if req.headers.to.tag().is_some() {
            self.in_dialog(now, key, req, src);
            return;
        }
        match req.method {
            Method::Register => self.on_register(now, key, req, src),
            Method::Invite => self.on_invite(now, key, req, src),
            Method::Options => {
                let tag = self.sig.new_tag();
                let mut resp = Response::to_request(&req, 200, Some(&tag));
                resp.headers.push("Allow", ALLOW);
                resp.headers.push("Accept", "application/sdp");
                self.sig.send(now, &key, resp, src);
            }
            Method::Cancel => self.on_cancel(now, key, req, src),
            Method::Bye | Method::Prack | Method::Update | Method::Info => {
                self.sig.reply(now, &key, &req, src, 481, None)
            }
            Method::Subscribe => match req
                .headers
                .get("Event")
                .and_then(EventPackage::of_event_header)
            {
                Some(EventPackage::MessageSummary) if self.cfg.voicemail.is_none() => {
                    self.bad_event(now, key, &req, src)
                }
                Some(package) => self.on_subscribe(now, key, req, src, package),
                None => self.bad_event(now, key, &req, src),
            },
            Method::Publish => self.bad_event(now, key, &req, src),
            Method::Other(_) => {
                let mut resp = Response::to_request(&req, 501, Some(&self.sig.new_tag()));
                resp.headers.push("Allow", ALLOW);
                self.sig.send(now, &key, resp, src);
            }
            _ => {
                let mut resp = Response::to_request(&req, 405, Some(&self.sig.new_tag()));
                resp.headers.push("Allow", ALLOW);
                self.sig.send(now, &key, resp, src);
            }
        }
    }

    /// 489: an event package we do not serve (RFC 6665 §3.2.2), and PUBLISH.
    fn bad_event(&mut self, now: Millis, key: TxKey, req: &Request, src: Peer) {
        let mut resp = Response::to_request(req, 489, Some(&self.sig.new_tag()));
        resp.reason = "Bad Event".to_string();
        let packages = if self.cfg.voicemail.is_some() {
            "message-summary, dialog, presence"
        } else {
            "dialog, presence"
        };
        resp.headers.push("Allow-Events", packages);
        self.sig.send(now, &key, resp, src);
    }

    /// Challenges or checks the credentials of `req` (see [`Accounts::authenticate`]).
    fn authenticate(
        &mut self,
        now: Millis,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) -> Option<String> {
        let mut io = AuthIo {
            sig: &mut self.sig,
            registrar: &mut self.registrar,
            events: &mut self.events,
            counters: &mut self.counters,
        };
        self.accounts.authenticate(&mut io, now, key, req, src)
    }

    fn on_register(&mut self, now: Millis, key: TxKey, req: Request, src: Peer) {
        let Some(user) = self.authenticate(now, &key, &req, src) else {
            return;
        };
        // The address-of-record must be the authenticated extension's own.
        if req.headers.to.uri.user() != Some(user.as_str()) {
            self.counters.auth_failures += 1;
            self.sig.reply(now, &key, &req, src, 403, None);
            return;
        }
        let tag = self.sig.new_tag();
        let outcome = self.registrar.register(now, &user, &req, src, &tag);
        if !outcome.changes.is_empty() {
            self.events.push_back(Event::Bindings(outcome.changes));
        }
        self.sig.send(now, &key, outcome.response, src);
    }

    fn on_invite(&mut self, now: Millis, key: TxKey, req: Request, src: Peer) {
        if let Some(trunk) = self.trunks.find_by_source(src) {
            self.on_trunk_invite(now, key, req, src, trunk);
            return;
        }
        let Some(caller) = self.authenticate(now, &key, &req, src) else {
            return;
        };
        if req.headers.from.uri.user() != Some(caller.as_str()) {
            // An extension may only call as itself.
            self.counters.auth_failures += 1;
            self.sig.reply(now, &key, &req, src, 403, None);
            return;
        }
        self.sig.reply(now, &key, &req, src, 100, None);
        let call_id = req.headers.call_id.clone();
        let callee = dialled(&req);
        let dest = match self
            .resolve(&caller, &callee)
            .or_else(|_| self.resolve_external(&caller, &callee))
        {
            Ok(dest) => dest,
            Err(status) => {
                self.sig.reply(now, &key, &req, src, status, None);
                let disposition = match status {
                    404 => Disposition::NotFound,
                    503 => Disposition::Unavailable,
                    _ => Disposition::Failed,
                };
                self.record_failed(now, &req, &caller, &callee, status, disposition);
                return;
            }
        };
        let mut ticket = None;
        if let Dest::External(plan) = &dest {
            match self.gate_allows(now, &key, &req, src, &caller, &callee, plan) {
                Ok(t) => ticket = t,
                Err(()) => {
                    self.record_failed(now, &req, &caller, &callee, 403, Disposition::Failed);
                    return;
                }
            }
        }
        if let Dest::Pickup(target) = dest {
            self.pickup(now, key, req, src, &caller, target.as_deref());
            return;
        }
        if let Dest::Orbit(orbit) = dest {
            self.retrieve(now, key, req, src, &caller, orbit);
            return;
        }
        if let Dest::Dnd(on) = dest {
            self.dnd_code(now, key, &req, src, &caller, on);
            return;
        }
        self.place_call(now, key, req, src, caller, callee, Origin::Extension, dest);
        // An internal call has no ticket of its own, and keeps the one its routing may have
        // taken (forwarded out at once: the callee has no phone registered).
        let Some(t) = ticket else {
            return;
        };
        if let Some(call) = self
            .by_a_call_id
            .get(&call_id)
            .copied()
            .and_then(|id| self.calls.get_mut(&id))
        {
            call.gate = Some(t);
        } else if let Some(gate) = self.gate.as_mut() {
            gate.ended(now, &t.ext, &t.dialled, t.trunk.as_deref(), 0);
        }
    }

    /// Sets up a call from the caller of `req` to `dest`: anchors its media and rings
    /// (or answers) the destination.
    #[allow(clippy::too_many_arguments)]
    fn place_call(
        &mut self,
        now: Millis,
        key: TxKey,
        req: Request,
        src: Peer,
        caller: String,
        callee: String,
        origin: Origin,
        dest: Dest,
    ) {
        let local_tag = self.sig.new_tag();
        let live = self.calls.len().saturating_sub(self.ended_calls);
        if live >= MAX_CALLS || self.by_a_call_id.contains_key(&req.headers.call_id) {
            self.sig.reply(now, &key, &req, src, 503, Some(&local_tag));
            return;
        }
        let target =
            first_contact_uri(&req.headers).unwrap_or_else(|| req.headers.from.uri.clone());
        let mut local_uri = req.headers.to.clone();
        local_uri.params = Params::default();
        let mut remote_uri = req.headers.from.clone();
        remote_uri.params.remove("tag");
        let late_offer = req.body.is_empty();
        let caller_sdes = self.cfg.sdes_allowed(src.transport);
        if !caller_sdes && requires_srtp(&req.body) {
            // RFC 4568 §8.3: the keys crossed the wire in clear, and SRTP is all the
            // caller accepts.
            self.insecure_srtp_log.note(now, src);
            let mut resp = Response::to_request(&req, 488, Some(&local_tag));
            let host = host_text(self.sig.local_for(src));
            resp.headers.push(
                "Warning",
                format!("399 {host} \"SRTP keys are only exchanged over TLS\""),
            );
            self.sig.send(now, &key, resp, src);
            return;
        }
        let first_peer_ip = self.dest_ip(now, &dest).unwrap_or(src.addr.ip());
        let id = self.next_call;
        self.next_call += 1;
        self.counters.calls_started += 1;
        let mut media = None;
        // Without anchoring the caller's SDP passes through: over an insecure transport it
        // loses its keys (the caller's best-effort SRTP becomes plain RTP).
        let mut b_offer = if caller_sdes {
            req.body.clone()
        } else {
            without_sdes(&req.body)
        };
        if let Some(settings) = self.cfg.media.clone() {
            let Some((port_a, port_b)) = self.take_ports() else {
                tracing::warn!("no free media ports: call refused");
                self.sig.reply(now, &key, &req, src, 503, Some(&local_tag));
                return;
            };
            let mut m = CallMedia::new(
                id,
                port_a,
                port_b,
                media_addr(&settings, src.addr.ip()),
                media_addr(&settings, first_peer_ip),
                src.addr.ip(),
                first_peer_ip,
                self.sig.rng.gen(),
            );
            // SRTP keys come from the endpoint's generator (seeded by the driver with
            // OS randomness, never shown on the wire), not from the SDP session id.
            m.set_key_seed(self.sig.rng.gen());
            m.set_sdes(Leg::A, caller_sdes);
            if !late_offer {
                match m.offer(Leg::A, &req.body) {
                    Ok(body) => b_offer = body,
                    Err(err) => {
                        tracing::debug!(%err, "unusable SDP offer");
                        self.give_ports((port_a, port_b));
                        self.sig.reply(now, &key, &req, src, 488, Some(&local_tag));
                        return;
                    }
                }
            }
            media = Some(m);
        }
        let call = Call {
            rec: RecordLeg::first(&caller, &callee, now),
            linked_id: req.headers.call_id.clone(),
            talk_before_ms: 0,
            menu_choice: None,
            did: matches!(origin, Origin::Trunk(_)).then(|| callee.clone()),
            referrer: None,
            caller,
            callee,
            state: CallState::Ringing,
            start: now,
            answer: None,
            a: LegA {
                call_id: req.headers.call_id.clone(),
                remote_tag: req.headers.from.tag().unwrap_or_default().to_string(),
                local_tag: local_tag.clone(),
                remote_uri,
                local_uri,
                target,
                peer: src,
                invite_key: key.clone(),
                invite: req.clone(),
                local_cseq: 0,
            },
            forks: Vec::new(),
            winner: None,
            best_failure: None,
            ring_deadline: now.saturating_add(self.cfg.ring_timeout_ms),
            late_offer,
            pending_reinvite_ack: None,
            media,
            app: None,
            origin,
            plan: RingPlan::Nothing,
            step_deadline: None,
            gate: None,
            hops: 0,
            follow_me: None,
            a_sdp: req.body.clone(),
            b_sdp: Vec::new(),
            pending_a: None,
            b_offer,
        };
        self.by_a_call_id.insert(call.a.call_id.clone(), id);
        self.by_server_key.insert(key.clone(), id);
        self.ring_timers.insert(call.ring_deadline, id);
        self.calls.insert(id, call);
        if let Routed::Failed(status, disposition) = self.route(now, id, dest) {
            self.sig
                .reply(now, &key, &req, src, status, Some(&local_tag));
            self.end_call(now, id, disposition, status);
        }
    }

    /// The address of the first phone (or trunk) a destination rings, for the media anchor.
    fn dest_ip(&self, now: Millis, dest: &Dest) -> Option<IpAddr> {
        let ext = match dest {
            Dest::External(plan) => {
                return Some(self.trunks.peer(*plan.trunks.front()?)?.addr.ip());
            }
            Dest::Extension(ext) => ext.clone(),
            Dest::Group(g) => self
                .cfg
                .groups
                .get(*g)?
                .members
                .iter()
                .find(|m| !self.registrar.lookup(m, now).is_empty())?
                .clone(),
            _ => return None,
        };
        self.registrar
            .lookup(&ext, now)
            .first()
            .map(|b| b.source.addr.ip())
    }

    #[allow(clippy::too_many_arguments)]
    fn start_fork(
        &mut self,
        now: Millis,
        call_id: u64,
        idx: usize,
        call: &Call,
        a_invite: &Request,
        body: Vec<u8>,
        target: Uri,
        peer: Peer,
    ) -> Fork {
        // Leg B shows the caller's identity (its extension) and the dialled number.
        let mut local_uri = call.a.remote_uri.clone();
        local_uri.params = Params::default();
        // The dialog's remote URI is the To of the INVITE (RFC 3261 §12.1.2), not the contact.
        let mut remote_uri = call.a.local_uri.clone();
        remote_uri.params = Params::default();
        self.start_fork_to(
            now,
            call_id,
            idx,
            a_invite,
            body,
            target,
            peer,
            ForkIdentity {
                local_uri,
                remote_uri,
                contact_user: call.caller.clone(),
                asserted: None,
                extra: Vec::new(),
            },
        )
    }

    /// Sends leg B's INVITE to `target` at `peer` with the given identity.
    #[allow(clippy::too_many_arguments)]
    fn start_fork_to(
        &mut self,
        now: Millis,
        call_id: u64,
        idx: usize,
        a_invite: &Request,
        body: Vec<u8>,
        target: Uri,
        peer: Peer,
        identity: ForkIdentity,
    ) -> Fork {
        let b_call_id = self.sig.new_call_id();
        let local_tag = self.sig.new_tag();
        // Forks share one offer; a phone reached over UDP or TCP gets it without keys.
        let body = if self.cfg.sdes_allowed(peer.transport) {
            body
        } else {
            without_sdes(&body)
        };
        let ForkIdentity {
            local_uri,
            remote_uri,
            contact_user,
            asserted,
            extra,
        } = identity;
        let mut from = local_uri.clone();
        from.params.set("tag", Some(local_tag.clone()));
        let mut headers = self.sig.request_headers(
            peer,
            from,
            remote_uri.clone(),
            b_call_id.clone(),
            1,
            Method::Invite,
        );
        headers.max_forwards = Some(
            a_invite
                .headers
                .max_forwards
                .unwrap_or(70)
                .saturating_sub(1),
        );
        headers.contact = vec![Contact::Addr(
            self.sig.our_contact(peer, Some(&contact_user)),
        )];
        headers.content_type = if body.is_empty() {
            None
        } else {
            a_invite
                .headers
                .content_type
                .clone()
                .or_else(|| Some("application/sdp".to_string()))
        };
        headers.push("Allow", ALLOW);
        if let Some(id) = asserted {
            let host = local_uri.uri.host_with_port.to_string();
            headers.push("P-Asserted-Identity", format!("<sip:{id}@{host}>"));
        }
        for name in ["Supported", "Accept", "Allow-Events"] {
            if let Some(v) = a_invite.headers.get(name) {
                headers.push(name, v);
            }
        }
        for (name, value) in extra {
            headers.push(name, value);
        }
        let req = Request {
            method: Method::Invite,
            uri: target.clone(),
            headers,
            body,
        };
        let role = ClientRole::Invite {
            call: call_id,
            fork: idx,
        };
        let key = self.sig.send_request(now, req, peer, role);
        self.by_b_call_id.insert(b_call_id.clone(), (call_id, idx));
        Fork {
            call_id: b_call_id,
            local_tag,
            remote_tag: None,
            local_uri,
            remote_uri,
            target,
            peer,
            invite_key: key,
            invite_cseq: 1,
            local_cseq: 1,
            state: ForkState::Calling,
            ack: None,
            tx_live: true,
            retired: false,
            trunk: None,
            rings: None,
            auth_tries: 0,
            trunk_invite: None,
        }
    }

    fn on_cancel(&mut self, now: Millis, key: TxKey, req: Request, src: Peer) {
        let Some(invite_key) = self.sig.tx.find_invite_for_cancel(&req) else {
            self.sig.reply(now, &key, &req, src, 481, None);
            return;
        };
        let ringing = self
            .by_server_key
            .get(&invite_key)
            .and_then(|id| self.calls.get(id).map(|c| (*id, c)))
            .filter(|(_, c)| c.state == CallState::Ringing)
            .map(|(id, c)| (id, c.a.local_tag.clone(), c.a.invite.clone(), c.a.peer));
        // The 200 to the CANCEL carries the same To tag as the INVITE's responses.
        let tag = ringing.as_ref().map(|(_, tag, _, _)| tag.clone());
        self.sig.reply(now, &key, &req, src, 200, tag.as_deref());
        // After a final response the CANCEL has no effect (RFC 3261 §9.2).
        let Some((id, tag, invite, peer)) = ringing else {
            return;
        };
        self.sig
            .reply(now, &invite_key, &invite, peer, 487, Some(&tag));
        self.cancel_forks(now, id, None);
        self.end_call(now, id, Disposition::Cancelled, 487);
    }

    // ---------------------------------------------------------------------------------------
    // Responses (the relayed ones: `legs`)
    // ---------------------------------------------------------------------------------------

    fn on_response(&mut self, now: Millis, src: Peer, resp: Response) {
        match self.sig.tx.receive_response(now, &resp, src) {
            ClientInput::Deliver(key) => match self.sig.clients.get(&key).cloned() {
                Some(ClientRole::Invite { call, fork }) => {
                    self.on_fork_response(now, call, fork, &resp)
                }
                Some(ClientRole::Relay { call, relay }) => {
                    self.on_relay_response(now, call, relay, &resp)
                }
                Some(ClientRole::Trunk { trunk, purpose }) => {
                    self.trunks.on_response(now, trunk, purpose, &resp);
                    self.pump_trunks(now);
                }
                Some(ClientRole::NewLegA { call }) => self.on_new_leg_a_response(now, call, &resp),
                Some(ClientRole::Reoffer { call, fork }) => {
                    self.on_reoffer_response(now, call, fork, &resp)
                }
                Some(ClientRole::ResumeA { call }) => self.on_resume_a_response(call, &resp),
                Some(ClientRole::Cancel | ClientRole::Bye | ClientRole::Notify) | None => {}
            },
            ClientInput::Retransmitted2xx(key) => {
                if let Some(ClientRole::Invite { call, fork }) = self.sig.clients.get(&key).cloned()
                {
                    self.on_retransmitted_2xx(call, fork);
                }
            }
            ClientInput::Absorb | ClientInput::Unmatched => {}
        }
    }

    fn on_fork_response(&mut self, now: Millis, id: u64, fork: usize, resp: &Response) {
        if self.is_page(id) {
            self.page_response(now, id, fork, resp);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let transferring = call.transferring();
        let Some(f) = call.forks.get_mut(fork) else {
            return;
        };
        if f.retired {
            // The call moved on: a late ringing fork gets its CANCEL, a late 2xx is hung up.
            if resp.is_success() {
                self.reject_late_2xx(now, id, fork);
            } else if resp.is_provisional() && f.state == ForkState::CancelPending {
                f.state = ForkState::Cancelled;
                let (key, peer) = (f.invite_key.clone(), f.peer);
                self.sig.send_cancel(now, &key, peer);
            } else if !resp.is_provisional() {
                f.state = ForkState::Failed;
            }
            return;
        }
        let on_trunk = f.trunk.is_some();
        if on_trunk && f.state == ForkState::Calling && call.step_deadline.is_some() {
            // The trunk answered: it is alive, no need to try the next one.
            if let Some(at) = call.step_deadline.take() {
                self.step_timers.remove(at, id);
            }
        }
        if resp.is_provisional() {
            if f.state == ForkState::CancelPending {
                // RFC 3261 §9.1: the CANCEL waited for this provisional.
                f.state = ForkState::Cancelled;
                let (key, peer) = (f.invite_key.clone(), f.peer);
                self.sig.send_cancel(now, &key, peer);
                return;
            }
            if resp.status == 100 {
                return;
            }
            if f.remote_tag.is_none() {
                f.remote_tag = resp.headers.to.tag().map(str::to_string);
            }
            if f.state == ForkState::Calling {
                f.state = ForkState::Ringing;
            }
            if transferring {
                if let Some(r) = call.referrer.as_mut() {
                    r.progress(&mut self.sig, now, resp.status);
                }
            }
            if call.state == CallState::Ringing {
                // Relay 180/183 (with early media SDP) to the caller.
                let mut out =
                    Response::to_request(&call.a.invite, resp.status, Some(&call.a.local_tag));
                out.reason = resp.reason.clone();
                out.headers.content_type = resp.headers.content_type.clone();
                let (peer, key) = (call.a.peer, call.a.invite_key.clone());
                let late = call.late_offer;
                let fork_peer = f.peer;
                // Early media: the 18x answer (not in a late-offer call, where the 2xx
                // carries the offer and the early body would be a second offer).
                out.body = if late || resp.body.is_empty() {
                    Vec::new()
                } else {
                    self.media_body(id, Leg::B, false, &resp.body, Some(fork_peer))
                };
                if out.body.is_empty() {
                    out.headers.content_type = None;
                }
                out.headers.contact = vec![Contact::Addr(self.sig.our_contact(peer, None))];
                self.sig.send(now, &key, out, peer);
            }
            return;
        }
        if resp.is_success() {
            // The 2xx names the dialog (its To tag may differ from an early dialog's).
            f.remote_tag = resp.headers.to.tag().map(str::to_string);
            if let Some(uri) = first_contact_uri(&resp.headers) {
                f.target = uri;
            }
            if transferring {
                // The auto attendant's transfer is answered: bridge the caller (already
                // talking to Outpost) with this phone.
                f.state = ForkState::Answered;
                call.winner = Some(fork);
                // Through the auto attendant: its leg of the record ends, the caller's
                // talk with this phone is the next (a blind transfer started it already).
                let menu_leg = match call.app.take() {
                    Some(App::Menu(_)) => call.menu_choice.as_ref().map(|(menu, _)| {
                        (call.rec.caller.clone(), call.callee.clone(), menu.clone())
                    }),
                    _ => None,
                };
                let fork_peer = f.peer;
                if let Some((caller, target, menu)) = menu_leg {
                    self.transferred(now, id, &caller, &target, format!("menu:{menu}"));
                }
                if let Some(call) = self.calls.get_mut(&id) {
                    call.answered(now);
                }
                let Some(call) = self.calls.get(&id) else {
                    return;
                };
                self.counters.calls_answered += 1;
                self.ring_timers.remove(call.ring_deadline, id);
                self.send_ack_b(id, fork, Vec::new(), None);
                self.events.push_back(Event::Media(MediaCommand::StopPlay {
                    session: id,
                    leg: Leg::A,
                }));
                let _ = self.media_body(id, Leg::B, false, &resp.body, Some(fork_peer));
                self.cancel_forks(now, id, Some(fork));
                self.referral_done(now, id);
                return;
            }
            if call.state != CallState::Ringing {
                // Another fork won, or the call is over: end this dialog at once.
                f.state = ForkState::Cancelled;
                self.reject_late_2xx(now, id, fork);
                return;
            }
            f.state = ForkState::Answered;
            call.winner = Some(fork);
            call.state = CallState::Answered;
            call.answer = Some(now);
            call.rec.answer.get_or_insert(now);
            self.counters.calls_answered += 1;
            self.ring_timers.remove(call.ring_deadline, id);
            let late_offer = call.late_offer;
            let fork_peer = f.peer;
            let mut out = Response::to_request(&call.a.invite, 200, Some(&call.a.local_tag));
            out.reason = resp.reason.clone();
            out.headers.content_type = resp.headers.content_type.clone();
            out.headers.push("Allow", ALLOW);
            let peer = call.a.peer;
            let key = call.a.invite_key.clone();
            // The 2xx carries the answer, or in a late-offer call the callee's offer.
            out.body = self.media_body(id, Leg::B, late_offer, &resp.body, Some(fork_peer));
            out.headers.contact = vec![Contact::Addr(self.sig.our_contact(peer, None))];
            if !late_offer {
                self.send_ack_b(id, fork, Vec::new(), None);
            }
            self.sig.send(now, &key, out, peer);
            self.cancel_forks(now, id, Some(fork));
            return;
        }
        // Final failure of one fork (the transaction layer ACKs it).
        if on_trunk
            && matches!(resp.status, 401 | 407)
            && matches!(call.state, CallState::Ringing | CallState::Answered)
            && self.answer_trunk_challenge(now, id, fork, resp)
        {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(f) = call.forks.get_mut(fork) else {
            return;
        };
        f.state = ForkState::Failed;
        call.best_failure = Some(better_failure(call.best_failure, resp.status));
        if on_trunk && self.trunk_failover(now, id, fork, resp.status) {
            return;
        }
        self.fork_done(now, id);
    }

    /// After a fork failed: when no fork is left ringing, the plan's fallback.
    fn fork_done(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.pending_forks() {
            return;
        }
        if call.transferring() {
            let status = call.best_failure.unwrap_or(480);
            self.unanswered(now, id, status);
            return;
        }
        if call.winner.is_some() || call.state != CallState::Ringing {
            return;
        }
        let status = match call.best_failure {
            Some(408) | None => 480,
            Some(s) => s,
        };
        self.unanswered(now, id, status);
    }

    /// A retransmitted 2xx on a fork: re-send the ACK it already got. A 2xx whose ACK still
    /// waits for the caller's answer (late offer) is ignored until that ACK exists.
    fn on_retransmitted_2xx(&mut self, id: u64, fork: usize) {
        let Some(f) = self.calls.get(&id).and_then(|c| c.forks.get(fork)) else {
            return;
        };
        if let Some(ack) = f.ack.clone() {
            let peer = f.peer;
            self.sig.tx.send_stateless_request(&ack, peer);
        }
    }

    /// ACKs and hangs up the 2xx of a fork that lost (or of a call already over). The ACK is
    /// kept so a retransmitted 2xx gets it again without a second BYE.
    fn reject_late_2xx(&mut self, now: Millis, id: u64, fork: usize) {
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else {
            return;
        };
        if f.ack.is_some() {
            return;
        }
        f.state = ForkState::Cancelled;
        let cseq = f.invite_cseq;
        self.send_in_dialog_ack_b(id, fork, cseq, Vec::new(), None);
        self.send_bye_b(now, id, fork);
    }

    /// Cancels every fork still without a final response, except `keep`. A fork that has
    /// heard nothing yet gets its CANCEL when its first provisional arrives (RFC 3261 §9.1).
    fn cancel_forks(&mut self, now: Millis, id: u64, keep: Option<usize>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let mut to_cancel = Vec::new();
        for (i, f) in call.forks.iter_mut().enumerate() {
            if Some(i) == keep || !matches!(f.state, ForkState::Calling | ForkState::Ringing) {
                continue;
            }
            if self.sig.tx.is_proceeding(&f.invite_key) {
                f.state = ForkState::Cancelled;
                to_cancel.push((f.invite_key.clone(), f.peer));
            } else {
                f.state = ForkState::CancelPending;
            }
        }
        for (key, peer) in to_cancel {
            self.sig.send_cancel(now, &key, peer);
        }
    }

    fn ring_timeout(&mut self, now: Millis, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if matches!(call.app, Some(App::Parked { .. })) {
            self.park_timeout(now, id);
            return;
        }
        if call.state != CallState::Ringing && !call.transferring() {
            return;
        }
        // The group's time is up: no further members.
        if let RingPlan::Group { next, .. } = &mut call.plan {
            *next = usize::MAX;
        }
        self.retire_forks(now, id);
        self.unanswered(now, id, 480);
    }

    /// Ends a call: writes its CDR and forgets everything that routes new requests to it.
    /// The call itself stays (as `Ended`) while fork INVITE transactions are alive, so their
    /// late responses are still handled; [`Endpoint::reap`] removes it afterwards.
    fn end_call(&mut self, now: Millis, id: u64, disposition: Disposition, status: u16) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state == CallState::Ended {
            return;
        }
        call.state = CallState::Ended;
        self.ended_calls += 1;
        call.pending_reinvite_ack = None;
        if matches!(call.app, Some(App::Paging(_))) {
            self.end_page(now, id);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(App::Parked { orbit, .. }) = call.app {
            self.park.release(orbit, id);
        }
        if let Some(App::Conference { room, .. }) = call.app {
            self.left_conference(now, room, id);
        }
        // Closing the relay session finishes a recording's files (reported later).
        self.stop_recording(id);
        self.recent_digits.remove(&id);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(mut r) = call.referrer.take() {
            // A referrer of leg B is still in its dialog: the transfer is over. (A
            // referrer of leg A is the caller, hung up with the call.)
            if matches!(r.side, referral::Side::Fork(_)) {
                r.finish(&mut self.sig, now, 487);
                r.hang_up(&mut self.sig, now);
            }
        }
        if let Some(m) = call.media.take() {
            if let Some(cmd) = m.close() {
                self.events.push_back(Event::Media(cmd));
            }
            let ports = m.ports();
            if let Some(pool) = self.ports.as_mut() {
                pool.give_back(ports.0);
                pool.give_back(ports.1);
            }
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let deadline = call.ring_deadline;
        let cdr = self.leg_record(call, &call.rec, now, disposition, status);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let talk_ms = call
            .talk_before_ms
            .saturating_add(call.rec.answer.map_or(0, |a| now.saturating_sub(a)));
        let (a_call_id, a_key) = (call.a.call_id.clone(), call.a.invite_key.clone());
        if let Some(step) = call.step_deadline.take() {
            self.step_timers.remove(step, id);
        }
        if let (Some(ticket), Some(gate)) = (call.gate.take(), self.gate.as_mut()) {
            gate.ended(
                now,
                &ticket.ext,
                &ticket.dialled,
                ticket.trunk.as_deref(),
                talk_ms / 1000,
            );
        }
        self.ring_timers.remove(deadline, id);
        if self.by_a_call_id.get(&a_call_id) == Some(&id) {
            self.by_a_call_id.remove(&a_call_id);
        }
        if self.by_server_key.get(&a_key) == Some(&id) {
            self.by_server_key.remove(&a_key);
        }
        self.relays.retain(|_, r| r.call != id);
        self.events.push_back(Event::CallEnded(cdr));
        self.reap(id);
    }

    /// Removes an ended call once none of its fork INVITE transactions is alive.
    fn reap(&mut self, id: u64) {
        let done = self.calls.get(&id).is_some_and(|c| {
            // An answered fork's INVITE lingers in Accepted (Timer M, 32 s) only to
            // absorb 2xx retransmissions; it was ACKed, so it holds nothing up.
            c.state == CallState::Ended
                && c.forks
                    .iter()
                    .all(|f| !f.tx_live || f.state == ForkState::Answered)
        });
        if !done {
            return;
        }
        if let Some(call) = self.calls.remove(&id) {
            self.ended_calls = self.ended_calls.saturating_sub(1);
            for f in &call.forks {
                if self.by_b_call_id.get(&f.call_id).is_some_and(|v| v.0 == id) {
                    self.by_b_call_id.remove(&f.call_id);
                }
            }
        }
    }

    fn drain_tx_events(&mut self, now: Millis) {
        while let Some(event) = self.sig.tx.poll_event() {
            match event {
                TxEvent::Timeout(key) => self.on_tx_timeout(now, key),
                TxEvent::Terminated(key) => {
                    if key.server {
                        self.by_server_key.remove(&key);
                    } else if let Some(ClientRole::Invite { call, fork }) =
                        self.sig.clients.remove(&key)
                    {
                        if let Some(f) = self
                            .calls
                            .get_mut(&call)
                            .and_then(|c| c.forks.get_mut(fork))
                        {
                            // A fork that re-sent its INVITE with credentials lives on.
                            if f.invite_key == key {
                                f.tx_live = false;
                            }
                        }
                        self.reap(call);
                    }
                }
            }
        }
    }

    fn on_tx_timeout(&mut self, now: Millis, key: TxKey) {
        if key.server {
            // Timer L without an ACK for our 2xx: the caller is gone; hang up both legs.
            let Some(&id) = self.by_server_key.get(&key) else {
                return;
            };
            let Some(call) = self.calls.get(&id) else {
                return;
            };
            if call.state != CallState::Answered {
                return;
            }
            if let Some(fork) = call.winner {
                let unacked = call.forks.get(fork).is_some_and(|f| f.ack.is_none());
                if unacked {
                    // Late offer: the callee still waits for an ACK; it must come before the BYE.
                    self.send_ack_b(id, fork, Vec::new(), None);
                }
                self.send_bye_b(now, id, fork);
            }
            self.send_bye_a(now, id);
            self.end_call(now, id, Disposition::Answered, 200);
            return;
        }
        match self.sig.clients.get(&key).cloned() {
            Some(ClientRole::Invite { call, fork }) => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                let mut retired = false;
                if let Some(f) = c.forks.get_mut(fork) {
                    if matches!(
                        f.state,
                        ForkState::Calling | ForkState::Ringing | ForkState::CancelPending
                    ) {
                        f.state = ForkState::Failed;
                    }
                    retired = f.retired;
                }
                if !retired {
                    c.best_failure = Some(better_failure(c.best_failure, 408));
                    let on_trunk = c.forks.get(fork).is_some_and(|f| f.trunk.is_some());
                    if !(on_trunk && self.trunk_failover(now, call, fork, 408)) {
                        self.fork_done(now, call);
                    }
                }
            }
            Some(ClientRole::Trunk { trunk, purpose }) => {
                self.trunks.on_failure(now, trunk, purpose, "no answer");
                self.pump_trunks(now);
            }
            Some(ClientRole::Relay { relay, .. }) => {
                // The other leg did not answer an in-dialog request: answer 408 upstream.
                if let Some(r) = self.relays.remove(&relay) {
                    self.sig
                        .reply(now, &r.server_key, &r.server_req, r.src, 408, None);
                }
            }
            Some(ClientRole::NewLegA { call }) => {
                if let Some(resp) = self.sig.synthetic_response(&key, 408) {
                    self.on_new_leg_a_response(now, call, &resp);
                }
            }
            Some(
                ClientRole::Cancel
                | ClientRole::Bye
                | ClientRole::Notify
                | ClientRole::Reoffer { .. }
                | ClientRole::ResumeA { .. },
            )
            | None => {}
        }
    }
}

/// The number a request dials: the Request-URI's user part, or a `tel:` number.
fn dialled(req: &Request) -> String {
    req.uri
        .user()
        .map(str::to_string)
        .or_else(|| wire::tel_number(&req.uri).map(str::to_string))
        .unwrap_or_default()
}

/// Our media address for a peer: same family if we have one.
fn media_addr(settings: &MediaSettings, peer: IpAddr) -> IpAddr {
    settings
        .addrs
        .iter()
        .find(|a| a.is_ipv4() == peer.is_ipv4())
        .or(settings.addrs.first())
        .copied()
        .unwrap_or(peer)
}

/// True when two trunk lists differ at most in the providers' addresses.
fn same_but_targets(a: &[crate::trunk::TrunkConfig], b: &[crate::trunk::TrunkConfig]) -> bool {
    a.len() == b.len()
        && a != b
        && a.iter().zip(b).all(|(x, y)| {
            let mut y = y.clone();
            y.targets.clone_from(&x.targets);
            *x == y
        })
}

/// Requests of this method (or answers to them) may change a call's state.
fn calls_method(m: &Method) -> bool {
    matches!(
        m,
        Method::Invite
            | Method::Ack
            | Method::Bye
            | Method::Cancel
            | Method::Refer
            | Method::Update
            | Method::Prack
    )
}
