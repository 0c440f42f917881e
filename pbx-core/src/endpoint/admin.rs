//! The admin side of the endpoint: extensions, secrets, locks, PINs, restored
//! registrations, and the listings and counters `outpostctl` reads. Each operation delegates
//! to the owned type whose state it is ([`super::accounts::Accounts`], the registrar,
//! [`super::voicemail::Voicemail`]).

use crate::lockout::TrustedSource;
use crate::media::anchor::CallMedia;
use crate::registrar::{Binding, Registrar};
use crate::sip::auth::{DigestChoice, StoredSecret};
use crate::Millis;

use super::call::{App, CallState};
use super::{CallSummary, Counters, DebugCounts, Endpoint, EndpointError, Event};

impl Endpoint {
    /// Adds or replaces an extension's secret.
    pub fn set_user(&mut self, ext: &str, secret: StoredSecret) {
        self.accounts.set_user(ext, secret);
    }

    /// Locks an account until `until` (the firewall's per-account guessing rule): requests
    /// as it from sources that have not authenticated as it recently fail like a wrong
    /// password; its phones keep working (see [`crate::lockout`]).
    pub fn lock_user(&mut self, now: Millis, ext: &str, until: Millis) {
        self.accounts.locks_mut().lock(now, ext, until);
    }

    /// The sources a lock of `ext` does not apply to: those that authenticated as it within
    /// the last week, in address order.
    pub fn trusted_sources(&self, now: Millis, ext: &str) -> Vec<TrustedSource> {
        self.accounts.locks().trusted(now, ext)
    }

    /// Remembers `sources` as having authenticated as `ext` at `at` (restored after a
    /// restart with the lock they were exempt from).
    pub fn trust_sources(&mut self, now: Millis, ext: &str, sources: &[TrustedSource], at: Millis) {
        for &s in sources {
            self.accounts.locks_mut().trust(now, ext, s, at);
        }
    }

    /// Sets the digest algorithms of `ext` (see [`DigestChoice`] for when they apply).
    pub fn set_user_digest(&mut self, ext: &str, choice: DigestChoice) {
        self.accounts.set_digest(ext, choice);
    }

    /// Sets (or with `None` clears) an extension's voicemail PIN hash (see [`pin_hash`]).
    pub fn set_pin(&mut self, ext: &str, hash: Option<String>) {
        self.voicemail.set_pin(ext, hash);
    }

    /// Lifts an account lock.
    pub fn unlock_user(&mut self, ext: &str) -> bool {
        self.accounts.locks_mut().unlock(ext)
    }

    /// Removes an extension and its registrations (an `Event::Bindings` follows).
    pub fn remove_user(&mut self, ext: &str) -> Result<(), EndpointError> {
        if !self.accounts.remove_user(ext) {
            return Err(EndpointError::NoSuchExtension(ext.to_string()));
        }
        let changes = self.registrar.remove_ext(ext);
        if !changes.is_empty() {
            self.events.push_back(Event::Bindings(changes));
        }
        Ok(())
    }

    /// True when `ext` exists.
    pub fn has_user(&self, ext: &str) -> bool {
        self.accounts.has_user(ext)
    }

    /// Number of extensions.
    pub fn user_count(&self) -> usize {
        self.accounts.user_count()
    }

    /// Loads registrations saved before a restart. Each binding's source authenticated as
    /// its extension, so it is trusted again (an account lock restored with the firewall's
    /// state must not lock out the phones registered before the restart).
    pub fn restore_bindings(&mut self, bindings: Vec<Binding>, now: Millis) {
        for b in bindings.iter().filter(|b| b.expires_at > now) {
            let contact_host = crate::sip::Uri::try_from(b.contact.as_str())
                .ok()
                .and_then(|u| match u.host() {
                    rsip::Host::IpAddr(ip) => Some(*ip),
                    rsip::Host::Domain(d) => d.to_string().trim_matches(['[', ']']).parse().ok(),
                });
            // A live binding authenticated within one registration interval (an hour at
            // most by default): as good as now for a trust that lasts a week.
            self.accounts.locks_mut().trust(
                now,
                &b.ext,
                TrustedSource::of_binding(b.source, contact_host),
                now,
            );
        }
        self.registrar.restore(bindings, now);
    }

    /// Takes back the message-waiting subscriptions kept in the store (at start). Those
    /// that ended or no longer fit are reported removed (`Event::Mwi`).
    pub fn restore_mwi(&mut self, records: Vec<super::MwiRecord>, now: Millis) {
        self.mwi.restore(records, now);
        self.flush_mwi();
    }

    /// The registrar, for listings.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Live calls.
    pub fn calls(&self) -> Vec<CallSummary> {
        let mut out: Vec<CallSummary> = self
            .calls
            .values()
            .filter(|c| c.state != CallState::Ended)
            .map(|c| CallSummary {
                call_id: c.a.call_id.clone(),
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                answered: c.state == CallState::Answered,
                on_hold: c.state == CallState::Answered
                    && c.media.as_ref().is_some_and(CallMedia::on_hold),
                parked: match c.app {
                    Some(App::Parked { orbit, .. }) => Some(orbit),
                    _ => None,
                },
                conference: match c.app {
                    Some(App::Conference { room, .. }) => Some(self.conferences.parties(room)),
                    _ => None,
                },
                start: c.start,
                answer: c.answer,
                media_session: c.media.as_ref().map(CallMedia::session),
                codecs: c.media.as_ref().and_then(CallMedia::codecs),
            })
            .collect();
        out.sort_by_key(|c| c.start);
        out
    }

    /// The system clock was stepped by `delta_ms` and the caller's clock follows it:
    /// registrations and MWI subscriptions keep the time they had left (the changes to
    /// persist follow as events). Call this with no call in progress: a call's timers are
    /// not shifted.
    pub fn clock_stepped(&mut self, delta_ms: i64) {
        let changes = self.registrar.shift_time(delta_ms);
        if !changes.is_empty() {
            self.events.push_back(Event::Bindings(changes));
        }
        self.mwi.shift_time(delta_ms);
        self.flush_mwi();
    }

    /// The clock became trustworthy (NTP answered for the first time): trunks register
    /// again at once, so one that failed a TLS handshake on a certificate's dates does not
    /// wait for its retry timer.
    pub fn clock_synchronised(&mut self, now: Millis) {
        self.trunks.address_changed(now);
        self.pump_trunks(now);
    }

    /// Number of calls in progress (cheap, for metrics).
    pub fn active_calls(&self) -> usize {
        self.calls.len().saturating_sub(self.ended_calls)
    }

    /// Counters since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of live transactions.
    pub fn transactions(&self) -> usize {
        self.sig.tx.len()
    }

    /// The server transaction tables: live, completed, stateless, and the completed
    /// transactions dropped early because their cache was full.
    pub fn server_transactions(&self) -> crate::sip::transaction::ServerTableStats {
        self.sig.tx.server_stats()
    }

    /// True when `req` is a retransmission the transaction layer absorbs (it re-sends a
    /// stored response; see [`Transactions::absorbs_request`]). Read-only.
    ///
    /// [`Transactions::absorbs_request`]: crate::sip::transaction::Transactions::absorbs_request
    pub fn absorbs_request(&self, now: Millis, req: &crate::sip::message::Request) -> bool {
        self.sig.tx.absorbs_request(now, req)
    }

    /// Sizes of the internal tables, to check in tests and metrics that nothing leaks.
    pub fn debug_counts(&self) -> DebugCounts {
        DebugCounts {
            calls: self.calls.len(),
            by_a_call_id: self.by_a_call_id.len(),
            by_b_call_id: self.by_b_call_id.len(),
            by_server_key: self.by_server_key.len(),
            clients: self.sig.clients.len(),
            relays: self.relays.len(),
            ring_timers: self.ring_timers.len(),
            transactions: self.sig.tx.len(),
        }
    }
}
