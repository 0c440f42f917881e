//! Extensions and their credentials: secrets, per-extension digest algorithms, account
//! locks, and the digest check every request from an extension passes.
//!
//! [`Accounts::authenticate`] answers what it refuses itself (challenge, 400, 403) through
//! the [`AuthIo`] it is handed, and reports failures and successes as [`Event`]s for the
//! firewall; the caller only sees the authenticated extension.

use std::collections::{HashMap, VecDeque};

use crate::lockout::{AccountLocks, TrustedSource};
use crate::registrar::{is_unregister, Registrar};
use crate::sip::auth::{
    digest_uri_matches, parse_credentials, Algorithm, AuthError, Authenticator, DigestChoice,
    DigestCredentials, StoredSecret,
};
use crate::sip::transaction::TxKey;
use crate::sip::{Method, Peer, Request, Response};
use crate::Millis;

use super::event::{Counters, Event};
use super::signalling::Signalling;

/// What authentication touches of the endpoint besides the accounts.
#[derive(Debug)]
pub(super) struct AuthIo<'a> {
    /// Where answers go.
    pub(super) sig: &'a mut Signalling,
    /// For an un-REGISTER while the account is locked.
    pub(super) registrar: &'a mut Registrar,
    /// Failures and successes, for the firewall.
    pub(super) events: &'a mut VecDeque<Event>,
    /// `auth_failures`.
    pub(super) counters: &'a mut Counters,
}

/// The extensions, their secrets and locks.
#[derive(Debug)]
pub(super) struct Accounts {
    realm: String,
    auth: Authenticator,
    users: HashMap<String, StoredSecret>,
    /// Stands in for an unknown user's secret so the work and the answer are the same.
    decoy: StoredSecret,
    /// Locked accounts, and the sources each lock does not apply to.
    locks: AccountLocks,
    /// Digest algorithms per extension, where not the global ones.
    digests: HashMap<String, DigestChoice>,
}

impl Accounts {
    /// No extensions yet; `decoy` answers for unknown names.
    pub(super) fn new(realm: &str, auth: Authenticator, decoy: StoredSecret) -> Self {
        Accounts {
            realm: realm.to_string(),
            auth,
            users: HashMap::new(),
            decoy,
            locks: AccountLocks::new(),
            digests: HashMap::new(),
        }
    }

    /// Sets the digest algorithms offered to everyone.
    pub(super) fn set_algorithms(&mut self, algorithms: &[Algorithm]) {
        self.auth.set_algorithms(algorithms);
    }

    /// Adds or replaces an extension's secret.
    pub(super) fn set_user(&mut self, ext: &str, secret: StoredSecret) {
        self.users.insert(ext.to_string(), secret);
    }

    /// Removes an extension with its lock and digest choice; false when it did not exist.
    pub(super) fn remove_user(&mut self, ext: &str) -> bool {
        if self.users.remove(ext).is_none() {
            return false;
        }
        self.locks.forget(ext);
        self.digests.remove(ext);
        true
    }

    /// True when `ext` exists.
    pub(super) fn has_user(&self, ext: &str) -> bool {
        self.users.contains_key(ext)
    }

    /// Number of extensions.
    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Sets the digest algorithms of `ext`.
    pub(super) fn set_digest(&mut self, ext: &str, choice: DigestChoice) {
        if choice == DigestChoice::Default {
            self.digests.remove(ext);
        } else {
            self.digests.insert(ext.to_string(), choice);
        }
    }

    /// The account locks.
    pub(super) fn locks(&self) -> &AccountLocks {
        &self.locks
    }

    /// The account locks, to lock, unlock or trust.
    pub(super) fn locks_mut(&mut self) -> &mut AccountLocks {
        &mut self.locks
    }

    /// Challenges or checks the credentials of `req`. Returns the authenticated user, or
    /// `None` after answering the request itself.
    ///
    /// Known and unknown users walk the same path (challenge first, look up afterwards, and
    /// a decoy secret for unknown names), so responses cannot be used to enumerate users.
    /// What may differ by name is reserved for sources that already authenticated as that
    /// name (an extension's own digest algorithms, the exemption from its lock): they know
    /// the password, so they learn nothing.
    ///
    /// Order: credentials present and well-formed (else challenge / 400), digest `uri` =
    /// Request-URI (else 400, a failure), account lock (a refused source fails like a wrong
    /// password, except that an un-REGISTER gets the same 200 whatever the password, see
    /// [`Accounts::unregister_while_locked`]), then the digest itself.
    pub(super) fn authenticate(
        &mut self,
        io: &mut AuthIo<'_>,
        now: Millis,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) -> Option<String> {
        let proxy = req.method != Method::Register;
        let (header, status) = if proxy {
            ("Proxy-Authorization", 407)
        } else {
            ("Authorization", 401)
        };
        let creds: Option<DigestCredentials> = req
            .headers
            .get_all(header)
            .filter_map(|v| parse_credentials(v).ok())
            .find(|c| c.realm == self.realm);
        let Some(creds) = creds else {
            let malformed = req.headers.get(header).is_some()
                && req
                    .headers
                    .get_all(header)
                    .all(|v| parse_credentials(v).is_err());
            if malformed {
                io.sig.reply(now, key, req, src, 400, None);
            } else {
                let claimed = if proxy {
                    req.headers.from.uri.user()
                } else {
                    req.headers.to.uri.user()
                };
                let offered = self.offered(now, claimed, src);
                self.challenge(io, now, key, req, src, status, false, offered);
            }
            return None;
        };
        // RFC 7616 §3.4.6: credentials computed for another target must not be accepted
        // here, or an on-path attacker could replay them towards this one.
        if !digest_uri_matches(&req.uri, &creds.uri) {
            self.auth_failed(io, src, &creds.username, &req.method);
            let mut resp = Response::to_request(req, 400, Some(&io.sig.new_tag()));
            resp.reason = "Digest URI Does Not Match Request-URI".to_string();
            io.sig.send(now, key, resp, src);
            return None;
        }
        let blocked = self.locks.blocks(now, &creds.username, src.addr);
        if blocked && req.method == Method::Register && is_unregister(req) {
            self.unregister_while_locked(io, now, key, req, src, &creds);
            return None;
        }
        // A lock refuses a source that did not authenticate as the account recently like a
        // wrong password (the same answer as for unknown users); its phones pass.
        let known = self.users.get(&creds.username).filter(|_| !blocked);
        let ha1 = known
            .unwrap_or(&self.decoy)
            .ha1(creds.algorithm)
            .to_string();
        let known = known.is_some();
        let accepted = self.accepted(now, &creds.username, src);
        let result = self
            .auth
            .verify_with(now, &creds, req.method.as_str(), &ha1, &accepted);
        match result {
            Ok(()) if known => {
                let source = TrustedSource::of(src, req.headers.via.first());
                self.locks.trust(now, &creds.username, source, now);
                io.events.push_back(Event::AuthSucceeded {
                    src,
                    user: creds.username.clone(),
                });
                Some(creds.username)
            }
            Err(AuthError::Stale) if known => {
                let offered = self.offered(now, Some(&creds.username), src);
                self.challenge(io, now, key, req, src, status, true, offered);
                None
            }
            // The right password with a nonce count already used: a UDP retransmission
            // whose completed transaction was dropped early (cache full) looks exactly
            // like this. An exact repeat of the REGISTER that wrote the bindings goes on
            // to the registrar, which answers it with the current bindings and changes
            // nothing; anything else is challenged afresh.
            Err(AuthError::Replay)
                if known
                    && req.method == Method::Register
                    && req.headers.to.uri.user() == Some(creds.username.as_str())
                    && io.registrar.is_exact_repeat(now, &creds.username, req) =>
            {
                Some(creds.username)
            }
            Err(AuthError::InvalidNonce) | Err(AuthError::Replay) => {
                let offered = self.offered(now, Some(&creds.username), src);
                self.challenge(io, now, key, req, src, status, false, offered);
                None
            }
            Err(AuthError::Malformed(_)) => {
                io.sig.reply(now, key, req, src, 400, None);
                None
            }
            _ => {
                self.auth_failed(io, src, &creds.username, &req.method);
                io.sig.reply(now, key, req, src, 403, None);
                None
            }
        }
    }

    /// An un-REGISTER from a source the lock of its account refuses.
    ///
    /// Un-registering must always work for a phone that has the password (a phone that
    /// moved, rebooted onto another port or was re-provisioned must not leave a stale
    /// binding behind), yet the answer must not tell a guesser whether its password was
    /// right, or the lock would stop nothing: so every such un-REGISTER with a valid, fresh
    /// nonce gets the same bare 200 (no Contact list), and only one whose credentials verify
    /// removes bindings. A wrong password still counts as a failure against the source.
    /// Nonce problems are answered before the password is looked at: a fresh challenge.
    #[allow(clippy::too_many_arguments)]
    fn unregister_while_locked(
        &mut self,
        io: &mut AuthIo<'_>,
        now: Millis,
        key: &TxKey,
        req: &Request,
        src: Peer,
        creds: &DigestCredentials,
    ) {
        if self.auth.check_nonce(now, &creds.nonce).is_err() {
            self.challenge(io, now, key, req, src, 401, false, &[]);
            return;
        }
        let secret = self.users.get(&creds.username);
        let ha1 = secret
            .unwrap_or(&self.decoy)
            .ha1(creds.algorithm)
            .to_string();
        let known = secret.is_some();
        let global = self.auth.algorithms().to_vec();
        let result = self.auth.verify_with(now, creds, "REGISTER", &ha1, &global);
        let tag = io.sig.new_tag();
        match result {
            Ok(()) if known && req.headers.to.uri.user() == Some(creds.username.as_str()) => {
                let outcome = io.registrar.register(now, &creds.username, req, src, &tag);
                if !outcome.changes.is_empty() {
                    io.events.push_back(Event::Bindings(outcome.changes));
                }
            }
            Err(AuthError::Replay) => {
                // Only possible after the right password was used with this nonce.
                self.challenge(io, now, key, req, src, 401, false, &[]);
                return;
            }
            Err(AuthError::Malformed(_)) => {
                io.sig.reply(now, key, req, src, 400, None);
                return;
            }
            _ => self.auth_failed(io, src, &creds.username, &req.method),
        }
        let resp = Response::to_request(req, 200, Some(&tag));
        io.sig.send(now, key, resp, src);
    }

    /// Counts a failed authentication and tells the firewall.
    fn auth_failed(&self, io: &mut AuthIo<'_>, src: Peer, user: &str, method: &Method) {
        io.counters.auth_failures += 1;
        io.events.push_back(Event::AuthFailed {
            src,
            user: user.chars().take(64).collect(),
            method: method.clone(),
            known: self.users.contains_key(user),
        });
    }

    /// The algorithms to challenge a request claiming to be `user` from `src` with: the
    /// extension's own choice once `src` authenticated as it, the global list otherwise
    /// (empty slice = the global list).
    fn offered(&self, now: Millis, user: Option<&str>, src: Peer) -> &'static [Algorithm] {
        match user.and_then(|u| self.digests.get(u).map(|c| (u, *c))) {
            Some((u, choice)) if self.locks.is_trusted(now, u, src.addr) => choice.algorithms(),
            _ => &[],
        }
    }

    /// The algorithms accepted from `src` for `user`: the global list, plus the
    /// extension's own once `src` authenticated as it. An untrusted source gets exactly the
    /// global list whatever the name, so no answer depends on whether the name exists.
    fn accepted(&self, now: Millis, user: &str, src: Peer) -> Vec<Algorithm> {
        let mut list = self.auth.algorithms().to_vec();
        for &alg in self.offered(now, Some(user), src) {
            if !list.contains(&alg) {
                list.push(alg);
            }
        }
        list
    }

    #[allow(clippy::too_many_arguments)]
    fn challenge(
        &mut self,
        io: &mut AuthIo<'_>,
        now: Millis,
        key: &TxKey,
        req: &Request,
        src: Peer,
        status: u16,
        stale: bool,
        algorithms: &[Algorithm],
    ) {
        let name = if status == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let tag = io.sig.new_tag();
        let mut resp = Response::to_request(req, status, Some(&tag));
        for value in self.auth.challenge_with(now, stale, algorithms) {
            resp.headers.push(name, value);
        }
        // Challenges are answered statelessly (as every rejection before a dialog, see
        // `sip::transaction`): a retransmitted request gets the same challenge from the
        // bounded cache, and a flood of unauthenticated requests leaves no transaction
        // state behind.
        io.sig.send(now, key, resp, src);
    }
}
