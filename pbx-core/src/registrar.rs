//! Location service: the bindings of extensions to contact addresses (RFC 3261 §10.3).
//!
//! Sans-IO: the endpoint authenticates a REGISTER, then hands it here with the extension it
//! authenticated as. [`Registrar::register`] answers it and returns the [`BindingChange`]s the
//! driver persists; [`Registrar::expire`] sweeps bindings whose time is up, driven by
//! [`Registrar::next_expiry`].
//!
//! Each binding remembers the transport address the REGISTER really came from
//! ([`Binding::source`]): requests for a phone behind NAT go there, not to the private address
//! in its Contact (the RFC 3581 `received`/`rport` idea applied to the registration).
//! From RFC 5626 only the useful part is kept: a contact carrying the same `+sip.instance`
//! (and `reg-id`) as an existing binding replaces it, so a rebooted phone whose port changed
//! does not leave a stale twin behind.
//!
//! An *exact repeat* of the REGISTER that last wrote an extension's bindings (same Call-ID,
//! same CSeq, same contacts with the same granted intervals and q-values, within
//! [`REPEAT_WINDOW_MS`] of that write) is answered 200 with the current bindings and changes
//! nothing, as Kamailio does: it is a UDP retransmission that arrived after the transaction
//! layer dropped the completed transaction early (its cache was full). RFC 3261 §10.3 step 7
//! would fail it ("not higher"); a lower CSeq, or an equal one that asks for anything else,
//! still fails with 500.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sip::message::{Contact, NameAddr, Params, Peer, Request, Response, Uri};
use crate::Millis;

/// Longest Contact URI accepted, in bytes of its text form.
pub const MAX_CONTACT_URI: usize = 512;
/// Longest User-Agent kept with a binding, in characters.
pub const MAX_USER_AGENT: usize = 128;
/// Longest `+sip.instance` / `reg-id` value kept, in bytes; longer ones are ignored.
const MAX_INSTANCE: usize = 256;
/// How long after a write an exact repeat of its REGISTER is answered (64*T1 with the
/// default T1: a client retransmits no longer than its Timer F).
pub const REPEAT_WINDOW_MS: u64 = 32_000;

/// Registrar limits (RFC 3261 §10.3 steps 7 and 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Shortest registration interval accepted, seconds; shorter ones get 423.
    pub min_expires: u32,
    /// Longest registration interval granted, seconds; longer ones are cut to this.
    pub max_expires: u32,
    /// Interval granted when the request names none, seconds.
    pub default_expires: u32,
    /// Most bindings per extension; beyond it the least recently refreshed one is dropped.
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 600,
            max_contacts: 10,
        }
    }
}

/// One registered contact of an extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The extension (AOR user part).
    pub ext: String,
    /// The Contact URI as registered, as text (e.g. `sip:100@192.168.1.20:5060;transport=UDP`).
    pub contact: String,
    /// Where the REGISTER really came from; requests to this contact are sent here.
    pub source: Peer,
    /// When the binding lapses unless refreshed.
    pub expires_at: Millis,
    /// Call-ID of the REGISTER that last wrote the binding.
    pub call_id: String,
    /// CSeq number of the REGISTER that last wrote the binding.
    pub cseq: u32,
    /// The contact's q-value as text, if it gave a valid one.
    pub q: Option<String>,
    /// The phone's User-Agent, cut to [`MAX_USER_AGENT`] characters.
    pub user_agent: Option<String>,
    /// When this contact was first registered.
    pub registered_at: Millis,
}

/// A change to persist so the store mirrors the registrar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindingChange {
    /// Insert or replace the binding keyed by (`ext`, `contact`).
    Upsert(Binding),
    /// A refresh: the stored binding keyed by (`ext`, `contact`) again, with nothing
    /// changed but its expiry and the Call-ID/CSeq of the REGISTER that refreshed it. The
    /// driver may write it lazily (its 200 need not wait for the disk): a crash loses at
    /// most the extension of the expiry, never the binding.
    Refresh(Binding),
    /// Delete the binding keyed by (`ext`, `contact`).
    Remove {
        /// The extension.
        ext: String,
        /// The contact text, as in [`Binding::contact`].
        contact: String,
    },
}

/// The answer to a REGISTER and the state changes it caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOutcome {
    /// The final response to send.
    pub response: Response,
    /// Changes to persist; empty when the request failed or was a query.
    pub changes: Vec<BindingChange>,
}

/// Why a REGISTER was refused; each maps to the response status sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
enum RegisterError {
    #[error("contact is not a usable SIP URI")]
    BadContact,
    #[error("contact URI longer than {MAX_CONTACT_URI} bytes")]
    ContactTooLong,
    #[error("wildcard contact without Expires: 0 or with other contacts")]
    BadWildcard,
    #[error("more contacts in one request than max_contacts")]
    TooManyContacts,
    #[error("requested interval below min_expires")]
    IntervalTooBrief,
    #[error("CSeq not higher than the stored one for the same Call-ID")]
    OutOfOrder,
}

impl RegisterError {
    fn status(&self) -> u16 {
        match self {
            RegisterError::BadContact
            | RegisterError::ContactTooLong
            | RegisterError::BadWildcard
            | RegisterError::TooManyContacts => 400,
            RegisterError::IntervalTooBrief => 423,
            RegisterError::OutOfOrder => 500,
        }
    }
}

/// A `+sip.instance` value with its optional `reg-id` (RFC 5626 §4.1).
type Instance = (String, Option<String>);

/// A stored binding with what the registrar needs to match and order it.
#[derive(Debug, Clone)]
struct Entry {
    /// Normalised contact URI, the identity of the binding within its extension.
    key: String,
    uri: Uri,
    instance: Option<Instance>,
    /// Last time a REGISTER wrote this binding; the least recent is evicted first.
    updated_at: Millis,
    binding: Binding,
}

/// One validated contact of a REGISTER.
#[derive(Debug)]
struct ContactUpdate {
    key: String,
    uri: Uri,
    instance: Option<Instance>,
    /// Granted interval in seconds; 0 removes the binding.
    expires: u32,
    q: Option<String>,
}

/// The location service: extension → bindings, with an expiry index.
#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    by_ext: HashMap<String, Vec<Entry>>,
    /// `(expires_at, ext, key)` of every stored binding, earliest first.
    expiry: BTreeSet<(Millis, String, String)>,
    count: usize,
}

impl Registrar {
    /// An empty registrar.
    pub fn new(cfg: RegistrarConfig) -> Self {
        Registrar {
            cfg,
            by_ext: HashMap::new(),
            expiry: BTreeSet::new(),
            count: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// Loads bindings from the store at start; expired ones and ones whose contact no longer
    /// parses are dropped (the store is cleaned by the next `expire` or `remove_ext`).
    pub fn restore(&mut self, bindings: Vec<Binding>, now: Millis) {
        let default_ms = u64::from(self.cfg.default_expires) * 1000;
        for binding in bindings {
            if binding.expires_at <= now {
                continue;
            }
            let parsed = Uri::try_from(binding.contact.as_str())
                .ok()
                .filter(|uri| check_usable(uri).is_ok());
            let Some(uri) = parsed else {
                tracing::warn!(ext = %binding.ext, "dropping stored binding with unparsable contact");
                continue;
            };
            let key = contact_key(&uri);
            // The store does not keep the last refresh time; estimate it from the expiry so
            // eviction still prefers bindings that look stale.
            let updated_at = binding
                .expires_at
                .saturating_sub(default_ms)
                .max(binding.registered_at)
                .min(now);
            let ext = binding.ext.clone();
            let mut entries = self.by_ext.remove(&ext).unwrap_or_default();
            let old = entries.clone();
            entries.retain(|e| e.key != key);
            entries.push(Entry {
                key,
                uri,
                instance: None,
                updated_at,
                binding,
            });
            self.replace_ext(&ext, Some(old), entries);
        }
    }

    /// Applies an authenticated REGISTER for `ext` received from `src`; `to_tag` is the tag
    /// for the response's To.
    pub fn register(
        &mut self,
        now: Millis,
        ext: &str,
        req: &Request,
        src: Peer,
        to_tag: &str,
    ) -> RegisterOutcome {
        match self.apply(now, ext, req, src) {
            Ok(changes) => {
                let mut response = Response::to_request(req, 200, Some(to_tag));
                response.headers.contact = self
                    .live_sorted(ext, now)
                    .into_iter()
                    .map(|e| Contact::Addr(contact_header(e, now)))
                    .collect();
                RegisterOutcome { response, changes }
            }
            Err(err) => {
                tracing::debug!(ext, status = err.status(), "REGISTER refused: {err}");
                let mut response = Response::to_request(req, err.status(), Some(to_tag));
                if err == RegisterError::IntervalTooBrief {
                    response
                        .headers
                        .push("Min-Expires", self.cfg.min_expires.to_string());
                }
                RegisterOutcome {
                    response,
                    changes: Vec::new(),
                }
            }
        }
    }

    /// Live bindings of `ext`, highest q first (no q counts as 1.0), then most recently
    /// refreshed.
    pub fn lookup(&self, ext: &str, now: Millis) -> Vec<&Binding> {
        self.live_sorted(ext, now)
            .into_iter()
            .map(|e| &e.binding)
            .collect()
    }

    /// Removes every binding whose `expires_at` is at or before `now`.
    pub fn expire(&mut self, now: Millis) -> Vec<BindingChange> {
        let mut changes = Vec::new();
        while let Some(first) = self.expiry.first() {
            if first.0 > now {
                break;
            }
            let Some((_, ext, key)) = self.expiry.pop_first() else {
                break;
            };
            let Some(entries) = self.by_ext.get_mut(&ext) else {
                continue;
            };
            if let Some(pos) = entries.iter().position(|e| e.key == key) {
                let entry = entries.remove(pos);
                self.count -= 1;
                changes.push(BindingChange::Remove {
                    ext: ext.clone(),
                    contact: entry.binding.contact,
                });
            }
            if entries.is_empty() {
                self.by_ext.remove(&ext);
            }
        }
        changes
    }

    /// The earliest `expires_at` of any binding, for the endpoint's `poll_timeout`.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.expiry.first().map(|(at, _, _)| *at)
    }

    /// Drops every binding of a deleted extension.
    pub fn remove_ext(&mut self, ext: &str) -> Vec<BindingChange> {
        let old = self.by_ext.get(ext).cloned();
        let changes = old
            .iter()
            .flatten()
            .map(|e| BindingChange::Remove {
                ext: ext.to_string(),
                contact: e.binding.contact.clone(),
            })
            .collect();
        self.replace_ext(ext, old, Vec::new());
        changes
    }

    /// Every stored binding (live or awaiting the next sweep), by extension then contact.
    pub fn all(&self) -> Vec<&Binding> {
        let mut all: Vec<&Binding> = self.by_ext.values().flatten().map(|e| &e.binding).collect();
        all.sort_by(|a, b| (&a.ext, &a.contact).cmp(&(&b.ext, &b.contact)));
        all
    }

    /// Number of stored bindings.
    pub fn count(&self) -> usize {
        self.count
    }

    /// True when `req` is an exact repeat (see the module docs) of the REGISTER that last
    /// wrote `ext`'s bindings: answering it needs no change.
    pub fn is_exact_repeat(&self, now: Millis, ext: &str, req: &Request) -> bool {
        let headers = &req.headers;
        let call_id = headers.call_id.as_str();
        let cseq = headers.cseq.seq;
        let live: Vec<&Entry> = self
            .by_ext
            .get(ext)
            .into_iter()
            .flatten()
            .filter(|e| e.binding.expires_at > now)
            .collect();
        let mut written = 0usize;
        for contact in &headers.contact {
            let Contact::Addr(addr) = contact else {
                return false;
            };
            let Ok(update) = self.validate(addr, headers.expires) else {
                return false;
            };
            let entry = live.iter().find(|e| e.key == update.key);
            if update.expires == 0 {
                // The repeat of a removal: the binding must still be gone.
                if entry.is_some() {
                    return false;
                }
                continue;
            }
            let Some(e) = entry else {
                return false;
            };
            let granted = e.binding.expires_at.saturating_sub(e.updated_at);
            if e.binding.call_id != call_id
                || e.binding.cseq != cseq
                || granted != u64::from(update.expires).saturating_mul(1000)
                || e.binding.q != update.q
                || now >= e.updated_at.saturating_add(REPEAT_WINDOW_MS)
            {
                return false;
            }
            written += 1;
        }
        written > 0
    }

    /// RFC 3261 §10.3 steps 6-8: computes the extension's new bindings, all or nothing,
    /// stores them and returns the changes.
    fn apply(
        &mut self,
        now: Millis,
        ext: &str,
        req: &Request,
        src: Peer,
    ) -> Result<Vec<BindingChange>, RegisterError> {
        let headers = &req.headers;
        if headers.contact.is_empty() {
            return Ok(Vec::new());
        }
        let max_contacts = self.cfg.max_contacts.max(1);
        if headers.contact.len() > max_contacts {
            return Err(RegisterError::TooManyContacts);
        }
        if self.is_exact_repeat(now, ext, req) {
            return Ok(Vec::new());
        }
        let call_id = headers.call_id.as_str();
        let cseq = headers.cseq.seq;
        let old = self.by_ext.get(ext);
        let mut work: Vec<Entry> = old
            .iter()
            .copied()
            .flatten()
            .filter(|e| e.binding.expires_at > now)
            .cloned()
            .collect();

        if headers.contact.iter().any(|c| matches!(c, Contact::Star)) {
            if headers.contact.len() != 1 || headers.expires != Some(0) {
                return Err(RegisterError::BadWildcard);
            }
            for entry in &work {
                check_order(entry, call_id, cseq)?;
            }
            work.clear();
        } else {
            let updates = headers
                .contact
                .iter()
                .filter_map(|c| match c {
                    Contact::Addr(addr) => Some(addr),
                    Contact::Star => None,
                })
                .map(|addr| self.validate(addr, headers.expires))
                .collect::<Result<Vec<_>, _>>()?;
            let user_agent = headers
                .get("User-Agent")
                .map(|ua| truncate(ua, MAX_USER_AGENT));
            let mut touched: Vec<String> = Vec::with_capacity(updates.len());
            for update in updates {
                // A contact listed twice in one request: the later one wins, no order check.
                let fresh = |e: &Entry| !touched.contains(&e.key);
                if let Some(instance) = &update.instance {
                    if let Some(pos) = work
                        .iter()
                        .position(|e| e.key != update.key && e.instance.as_ref() == Some(instance))
                    {
                        if fresh(&work[pos]) {
                            check_order(&work[pos], call_id, cseq)?;
                        }
                        work.remove(pos);
                    }
                }
                let pos = work.iter().position(|e| e.key == update.key);
                if let Some(p) = pos {
                    if fresh(&work[p]) {
                        check_order(&work[p], call_id, cseq)?;
                    }
                }
                if update.expires == 0 {
                    if let Some(p) = pos {
                        work.remove(p);
                    }
                } else {
                    let registered_at = pos.map_or(now, |p| work[p].binding.registered_at);
                    let entry = Entry {
                        binding: Binding {
                            ext: ext.to_string(),
                            contact: crate::sip::wire::uri_to_string(&update.uri),
                            source: src,
                            expires_at: now
                                .saturating_add(u64::from(update.expires).saturating_mul(1000)),
                            call_id: call_id.to_string(),
                            cseq,
                            q: update.q,
                            user_agent: user_agent.clone(),
                            registered_at,
                        },
                        key: update.key.clone(),
                        uri: update.uri,
                        instance: update.instance,
                        updated_at: now,
                    };
                    match pos {
                        Some(p) => work[p] = entry,
                        None => work.push(entry),
                    }
                }
                touched.push(update.key);
            }
            // The newest registration wins: a rebooted phone must never be locked out by
            // its own stale bindings.
            while work.len() > max_contacts {
                let oldest = work
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, e)| (e.updated_at, *i))
                    .map(|(i, _)| i)
                    .expect("work is longer than max_contacts >= 1, so not empty");
                work.remove(oldest);
            }
        }

        let changes = diff(ext, old.map_or(&[][..], Vec::as_slice), &work);
        let old = old.cloned();
        self.replace_ext(ext, old, work);
        Ok(changes)
    }

    /// Checks one Contact of a REGISTER and computes its interval (RFC 3261 §10.3 step 7).
    fn validate(
        &self,
        addr: &NameAddr,
        expires_header: Option<u32>,
    ) -> Result<ContactUpdate, RegisterError> {
        let uri = &addr.uri;
        check_usable(uri)?;
        let requested = contact_param(addr, "expires")
            .and_then(parse_delta_seconds)
            .or(expires_header)
            .unwrap_or(self.cfg.default_expires);
        if requested > 0 && requested < self.cfg.min_expires {
            return Err(RegisterError::IntervalTooBrief);
        }
        let instance = addr
            .params
            .get("+sip.instance")
            .flatten()
            .filter(|v| v.len() <= MAX_INSTANCE)
            .map(|inst| {
                let reg_id = addr
                    .params
                    .get("reg-id")
                    .flatten()
                    .filter(|v| v.len() <= MAX_INSTANCE)
                    .map(str::to_string);
                (inst.to_string(), reg_id)
            });
        Ok(ContactUpdate {
            key: contact_key(uri),
            uri: uri.clone(),
            instance,
            expires: requested.min(self.cfg.max_expires),
            q: contact_param(addr, "q")
                .filter(|q| parse_q(q).is_some())
                .map(str::to_string),
        })
    }

    /// Live entries of `ext` in lookup order.
    fn live_sorted(&self, ext: &str, now: Millis) -> Vec<&Entry> {
        let mut live: Vec<&Entry> = self
            .by_ext
            .get(ext)
            .into_iter()
            .flatten()
            .filter(|e| e.binding.expires_at > now)
            .collect();
        live.sort_by_key(|e| {
            let q = e.binding.q.as_deref().and_then(parse_q).unwrap_or(1000);
            (
                std::cmp::Reverse(q),
                std::cmp::Reverse(e.updated_at),
                std::cmp::Reverse(e.binding.registered_at),
            )
        });
        live
    }

    /// Replaces the entries of `ext` (whose current value is `old`) and the expiry index.
    fn replace_ext(&mut self, ext: &str, old: Option<Vec<Entry>>, new: Vec<Entry>) {
        for entry in old.into_iter().flatten() {
            if self
                .expiry
                .remove(&(entry.binding.expires_at, ext.to_string(), entry.key))
            {
                self.count -= 1;
            }
        }
        for entry in &new {
            if self
                .expiry
                .insert((entry.binding.expires_at, ext.to_string(), entry.key.clone()))
            {
                self.count += 1;
            }
        }
        if new.is_empty() {
            self.by_ext.remove(ext);
        } else {
            self.by_ext.insert(ext.to_string(), new);
        }
    }
}

/// Whether `req` is an un-REGISTER: it only removes bindings (`Contact: *` with
/// `Expires: 0`, or every contact with `expires=0` or under `Expires: 0`). Judged from the
/// request's shape alone, before any authentication.
pub fn is_unregister(req: &Request) -> bool {
    let headers = &req.headers;
    !headers.contact.is_empty()
        && headers.contact.iter().all(|c| match c {
            Contact::Star => headers.expires == Some(0),
            Contact::Addr(addr) => {
                contact_param(addr, "expires")
                    .and_then(parse_delta_seconds)
                    .or(headers.expires)
                    == Some(0)
            }
        })
}

/// A contact must be a SIP(S) URI with a host, of bounded length.
fn check_usable(uri: &Uri) -> Result<(), RegisterError> {
    if !matches!(
        uri.scheme,
        Some(rsip::Scheme::Sip) | Some(rsip::Scheme::Sips)
    ) || uri.host().to_string().is_empty()
    {
        return Err(RegisterError::BadContact);
    }
    if uri.to_string().len() > MAX_CONTACT_URI {
        return Err(RegisterError::ContactTooLong);
    }
    Ok(())
}

/// RFC 3261 §10.3 step 7: the same Call-ID with a CSeq not above the stored one is a stale or
/// reordered request and must not change the binding.
fn check_order(entry: &Entry, call_id: &str, cseq: u32) -> Result<(), RegisterError> {
    if entry.binding.call_id == call_id && cseq <= entry.binding.cseq {
        return Err(RegisterError::OutOfOrder);
    }
    Ok(())
}

/// The Remove, Upsert and Refresh changes that turn `old` into `new`.
fn diff(ext: &str, old: &[Entry], new: &[Entry]) -> Vec<BindingChange> {
    let mut changes = Vec::new();
    for o in old {
        if !new
            .iter()
            .any(|n| n.key == o.key && n.binding.contact == o.binding.contact)
        {
            changes.push(BindingChange::Remove {
                ext: ext.to_string(),
                contact: o.binding.contact.clone(),
            });
        }
    }
    for n in new {
        match old.iter().find(|o| o.key == n.key) {
            Some(o) if o.binding == n.binding => {}
            Some(o) if is_refresh(&o.binding, &n.binding) => {
                changes.push(BindingChange::Refresh(n.binding.clone()));
            }
            _ => changes.push(BindingChange::Upsert(n.binding.clone())),
        }
    }
    changes
}

/// Whether `new` differs from `old` only in what a plain refresh changes: the expiry and the
/// Call-ID/CSeq that wrote it. Losing such a write loses no binding, only its extension
/// (the out-of-order check of a lost CSeq falls back to the stored, lower one).
fn is_refresh(old: &Binding, new: &Binding) -> bool {
    let Binding {
        ext,
        contact,
        source,
        expires_at: _,
        call_id: _,
        cseq: _,
        q,
        user_agent,
        registered_at,
    } = new;
    *ext == old.ext
        && *contact == old.contact
        && *source == old.source
        && *q == old.q
        && *user_agent == old.user_agent
        && *registered_at == old.registered_at
}

/// The Contact value listed in a 200 for a binding, with its remaining seconds.
fn contact_header(entry: &Entry, now: Millis) -> NameAddr {
    let remaining = entry.binding.expires_at.saturating_sub(now).div_ceil(1000);
    let mut params = Params::default();
    params.set("expires", Some(remaining.to_string()));
    if let Some(q) = &entry.binding.q {
        params.set("q", Some(q.clone()));
    }
    if let Some((instance, reg_id)) = &entry.instance {
        params.set("+sip.instance", Some(instance.clone()));
        if let Some(reg_id) = reg_id {
            params.set("reg-id", Some(reg_id.clone()));
        }
    }
    NameAddr {
        display: None,
        uri: entry.uri.clone(),
        params,
    }
}

/// A contact parameter, looked for in the header parameters and, for a Contact written
/// without angle brackets whose parameters ended up in the URI, in the URI parameters.
fn contact_param<'a>(addr: &'a NameAddr, name: &str) -> Option<&'a str> {
    if let Some(value) = addr.params.get(name) {
        return value;
    }
    addr.uri.params.iter().find_map(|p| match (p, name) {
        (rsip::Param::Expires(v), "expires") => Some(v.value()),
        (rsip::Param::Q(v), "q") => Some(v.value()),
        _ => None,
    })
}

/// A delta-seconds value; values above u32::MAX saturate (RFC 3261 §20.19), junk is None.
fn parse_delta_seconds(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    if digits.len() > 10 {
        return Some(u32::MAX);
    }
    Some(
        digits
            .parse::<u64>()
            .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
    )
}

/// A qvalue (RFC 3261 §25.1) in thousandths: `0`, `0.5`, `1`, `1.000`.
fn parse_q(text: &str) -> Option<u16> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The identity of a contact URI within an extension (RFC 3261 §19.1.4, simplified):
/// scheme and host case-insensitive, user and password exact, port as written, URI
/// parameters case-insensitive and order-insensitive; `expires`/`q` that slipped into the URI
/// do not count.
fn contact_key(uri: &Uri) -> String {
    let mut key = match &uri.scheme {
        Some(rsip::Scheme::Sips) => String::from("sips:"),
        _ => String::from("sip:"),
    };
    if let Some(auth) = &uri.auth {
        key.push_str(&auth.to_string());
        key.push('@');
    }
    key.push_str(&uri.host().to_string().to_ascii_lowercase());
    if let Some(port) = uri.port() {
        key.push(':');
        key.push_str(&port.to_string());
    }
    let mut params: Vec<String> = uri
        .params
        .iter()
        .filter(|p| !matches!(p, rsip::Param::Expires(_) | rsip::Param::Q(_)))
        .map(|p| p.to_string().to_ascii_lowercase())
        .collect();
    params.sort();
    for p in params {
        key.push_str(&p);
    }
    key
}

/// `text` cut to at most `max` characters.
fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl Registrar {
    /// The system clock was stepped by `delta_ms` (an NTP client's first answer after a
    /// start without one): every binding keeps the time it had left, so phones stay
    /// reachable instead of lapsing (a step forward) or lingering (back). Returns the
    /// changes to persist.
    pub fn shift_time(&mut self, delta_ms: i64) -> Vec<BindingChange> {
        let shift = |t: Millis| t.saturating_add_signed(delta_ms);
        let mut changes = Vec::new();
        let mut expiry = BTreeSet::new();
        for (ext, entries) in &mut self.by_ext {
            for e in entries.iter_mut() {
                e.binding.expires_at = shift(e.binding.expires_at);
                e.binding.registered_at = shift(e.binding.registered_at);
                e.updated_at = shift(e.updated_at);
                expiry.insert((e.binding.expires_at, ext.clone(), e.key.clone()));
                changes.push(BindingChange::Upsert(e.binding.clone()));
            }
        }
        self.expiry = expiry;
        changes
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::sip::message::{CSeq, Headers, Method, Transport, Via};

    const T0: Millis = 1_700_000_000_000;

    fn peer(addr: &str) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: addr.parse::<SocketAddr>().expect("test address"),
        }
    }

    fn uri(text: &str) -> Uri {
        Uri::try_from(text).expect("test URI")
    }

    fn addr(text: &str, params: &[(&str, &str)]) -> Contact {
        let mut na = NameAddr::new(uri(text));
        for (name, value) in params {
            na.params.set(name, Some((*value).to_string()));
        }
        Contact::Addr(na)
    }

    fn register_req(
        call_id: &str,
        cseq: u32,
        contact: Vec<Contact>,
        expires: Option<u32>,
    ) -> Request {
        let mut from = NameAddr::new(uri("sip:100@pbx.example"));
        from.params.set("tag", Some("ft1".to_string()));
        let mut via_params = Params::default();
        via_params.set("branch", Some(format!("z9hG4bK{call_id}{cseq}")));
        Request {
            method: Method::Register,
            uri: uri("sip:pbx.example"),
            headers: Headers {
                via: vec![Via {
                    transport: "UDP".to_string(),
                    host: "192.168.1.20".to_string(),
                    port: Some(5060),
                    params: via_params,
                }],
                from,
                to: NameAddr::new(uri("sip:100@pbx.example")),
                call_id: call_id.to_string(),
                cseq: CSeq {
                    seq: cseq,
                    method: Method::Register,
                },
                max_forwards: Some(70),
                contact,
                expires,
                route: Vec::new(),
                record_route: Vec::new(),
                content_type: None,
                other: vec![("User-Agent".to_string(), "Yealink T46U".to_string())],
            },
            body: Vec::new(),
        }
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig::default())
    }

    /// `(uri text, expires param)` of each Contact in a response.
    fn listed(resp: &Response) -> Vec<(String, String)> {
        resp.headers
            .contact
            .iter()
            .map(|c| match c {
                Contact::Addr(na) => (
                    na.uri.to_string(),
                    na.params
                        .get("expires")
                        .flatten()
                        .expect("expires listed")
                        .to_string(),
                ),
                Contact::Star => panic!("star in a 200"),
            })
            .collect()
    }

    const PHONE: &str = "sip:100@192.168.1.20:5060";
    const SOFTPHONE: &str = "sip:100@10.0.0.7:5062";

    fn parse_request(text: &str) -> Request {
        let bytes = text.replace('\n', "\r\n");
        match crate::sip::wire::parse(bytes.as_bytes()).expect("test message parses") {
            crate::sip::message::Message::Request(req) => req,
            crate::sip::message::Message::Response(_) => panic!("request expected"),
        }
    }

    #[test]
    fn register_from_wire_text_round_trips_contacts_and_star() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        let req = parse_request(
            "REGISTER sip:pbx.example SIP/2.0\n\
             Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKw1;rport\n\
             Max-Forwards: 70\n\
             From: <sip:100@pbx.example>;tag=a1\n\
             To: <sip:100@pbx.example>\n\
             Call-ID: wire-1\n\
             CSeq: 1 REGISTER\n\
             m: <sip:100@192.168.1.20:5060;transport=udp>;expires=120;q=0.7, sip:100@192.168.1.20:5070;expires=0\n\
             User-Agent: Grandstream GXP2170\n\
             Content-Length: 0\n\n",
        );
        let out = reg.register(T0, "100", &req, src, "tt");
        assert_eq!(out.response.status, 200);
        assert_eq!(reg.count(), 1);
        let b = reg.lookup("100", T0)[0];
        assert_eq!(b.expires_at, T0 + 120_000);
        assert_eq!(b.q.as_deref(), Some("0.7"));
        assert_eq!(b.user_agent.as_deref(), Some("Grandstream GXP2170"));
        assert_eq!(listed(&out.response)[0].1, "120");
        // The response goes back out as text with the To tag and the binding listed.
        let emitted = String::from_utf8(crate::sip::wire::emit_response(&out.response))
            .expect("emitted text");
        assert!(emitted.contains("tag=tt"), "{emitted}");
        assert!(emitted.contains("expires=120"), "{emitted}");

        let star = parse_request(
            "REGISTER sip:pbx.example SIP/2.0\n\
             Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKw2\n\
             From: <sip:100@pbx.example>;tag=a1\n\
             To: <sip:100@pbx.example>\n\
             Call-ID: wire-1\n\
             CSeq: 2 REGISTER\n\
             Contact: *\n\
             Expires: 0\n\
             Content-Length: 0\n\n",
        );
        let out = reg.register(T0 + 1, "100", &star, src, "tt");
        assert_eq!(out.response.status, 200);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(reg.count(), 0);
    }

    #[test]
    fn register_stores_binding_with_real_source_and_answers_200() {
        let mut reg = registrar();
        let req = register_req("c1", 1, vec![addr(PHONE, &[])], None);
        let out = reg.register(T0, "100", &req, peer("203.0.113.9:40000"), "tt");
        assert_eq!(out.response.status, 200);
        assert_eq!(out.response.headers.to.tag(), Some("tt"));
        assert_eq!(
            listed(&out.response),
            vec![(PHONE.to_string(), "600".to_string())]
        );
        let expected = Binding {
            ext: "100".to_string(),
            contact: PHONE.to_string(),
            source: peer("203.0.113.9:40000"),
            expires_at: T0 + 600_000,
            call_id: "c1".to_string(),
            cseq: 1,
            q: None,
            user_agent: Some("Yealink T46U".to_string()),
            registered_at: T0,
        };
        assert_eq!(out.changes, vec![BindingChange::Upsert(expected.clone())]);
        assert_eq!(reg.lookup("100", T0), vec![&expected]);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.next_expiry(), Some(T0 + 600_000));
    }

    #[test]
    fn refresh_extends_expiry_and_keeps_first_registration_time() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[])], Some(300)),
            src,
            "t",
        );
        let later = T0 + 200_000;
        let out = reg.register(
            later,
            "100",
            &register_req("c1", 2, vec![addr(PHONE, &[])], Some(300)),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        // Nothing but the expiry (and Call-ID/CSeq) changed: a Refresh the driver may
        // write lazily.
        let [BindingChange::Refresh(b)] = out.changes.as_slice() else {
            panic!("expected one refresh, got {:?}", out.changes);
        };
        assert_eq!(b.expires_at, later + 300_000);
        assert_eq!(b.cseq, 2);
        assert_eq!(b.registered_at, T0);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.next_expiry(), Some(later + 300_000));
    }

    #[test]
    fn a_refresh_that_changes_more_than_the_expiry_is_an_upsert() {
        let first = |reg: &mut Registrar| {
            reg.register(
                T0,
                "100",
                &register_req("c1", 1, vec![addr(PHONE, &[])], Some(300)),
                peer("203.0.113.9:40000"),
                "t",
            );
        };
        let later = T0 + 200_000;
        // A new source (the NAT rebound the phone): requests must go to the new one, so the
        // change is durable.
        let mut reg = registrar();
        first(&mut reg);
        let out = reg.register(
            later,
            "100",
            &register_req("c1", 2, vec![addr(PHONE, &[])], Some(300)),
            peer("203.0.113.9:40001"),
            "t",
        );
        assert!(
            matches!(out.changes.as_slice(), [BindingChange::Upsert(b)] if b.source == peer("203.0.113.9:40001")),
            "{:?}",
            out.changes
        );
        // A new q-value.
        let mut reg = registrar();
        first(&mut reg);
        let out = reg.register(
            later,
            "100",
            &register_req("c1", 2, vec![addr(PHONE, &[("q", "0.5")])], Some(300)),
            peer("203.0.113.9:40000"),
            "t",
        );
        assert!(
            matches!(out.changes.as_slice(), [BindingChange::Upsert(_)]),
            "{:?}",
            out.changes
        );
        // A new Call-ID alone (a phone that does not keep it) is still a refresh.
        let mut reg = registrar();
        first(&mut reg);
        let out = reg.register(
            later,
            "100",
            &register_req("c2", 1, vec![addr(PHONE, &[])], Some(300)),
            peer("203.0.113.9:40000"),
            "t",
        );
        assert!(
            matches!(out.changes.as_slice(), [BindingChange::Refresh(b)] if b.call_id == "c2"),
            "{:?}",
            out.changes
        );
    }

    #[test]
    fn register_without_contact_is_a_query() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[])], Some(600)),
            src,
            "t",
        );
        let out = reg.register(
            T0 + 100_000,
            "100",
            &register_req("q1", 1, vec![], None),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert!(out.changes.is_empty());
        assert_eq!(
            listed(&out.response),
            vec![(PHONE.to_string(), "500".to_string())]
        );
        assert_eq!(reg.lookup("100", T0 + 100_000)[0].expires_at, T0 + 600_000);
    }

    #[test]
    fn several_contacts_are_listed_highest_q_first() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        let req = register_req(
            "c1",
            1,
            vec![
                addr(PHONE, &[("q", "0.5")]),
                addr(SOFTPHONE, &[("q", "1.0"), ("expires", "120")]),
            ],
            None,
        );
        let out = reg.register(T0, "100", &req, src, "t");
        assert_eq!(out.response.status, 200);
        assert_eq!(out.changes.len(), 2);
        assert_eq!(
            listed(&out.response),
            vec![
                (SOFTPHONE.to_string(), "120".to_string()),
                (PHONE.to_string(), "600".to_string())
            ]
        );
        let found: Vec<&str> = reg
            .lookup("100", T0)
            .iter()
            .map(|b| b.contact.as_str())
            .collect();
        assert_eq!(found, vec![SOFTPHONE, PHONE]);
        assert_eq!(reg.lookup("100", T0)[1].q.as_deref(), Some("0.5"));
    }

    #[test]
    fn unregister_one_contact_with_expires_zero() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[]), addr(SOFTPHONE, &[])], None),
            src,
            "t",
        );
        let out = reg.register(
            T0 + 1,
            "100",
            &register_req("c1", 2, vec![addr(PHONE, &[("expires", "0")])], None),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert_eq!(
            out.changes,
            vec![BindingChange::Remove {
                ext: "100".to_string(),
                contact: PHONE.to_string()
            }]
        );
        assert_eq!(listed(&out.response).len(), 1);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.lookup("100", T0 + 1)[0].contact, SOFTPHONE);
    }

    #[test]
    fn wildcard_removes_all_bindings_and_is_validated() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[]), addr(SOFTPHONE, &[])], None),
            src,
            "t",
        );

        let no_zero = reg.register(
            T0 + 1,
            "100",
            &register_req("c1", 2, vec![Contact::Star], Some(60)),
            src,
            "t",
        );
        assert_eq!(no_zero.response.status, 400);
        let no_expires = reg.register(
            T0 + 1,
            "100",
            &register_req("c1", 2, vec![Contact::Star], None),
            src,
            "t",
        );
        assert_eq!(no_expires.response.status, 400);
        let mixed = reg.register(
            T0 + 1,
            "100",
            &register_req("c1", 2, vec![Contact::Star, addr(PHONE, &[])], Some(0)),
            src,
            "t",
        );
        assert_eq!(mixed.response.status, 400);
        assert!(
            no_zero.changes.is_empty() && no_expires.changes.is_empty() && mixed.changes.is_empty()
        );
        assert_eq!(reg.count(), 2);

        let stale = reg.register(
            T0 + 1,
            "100",
            &register_req("c1", 1, vec![Contact::Star], Some(0)),
            src,
            "t",
        );
        assert_eq!(stale.response.status, 500);
        assert_eq!(reg.count(), 2);

        let out = reg.register(
            T0 + 1,
            "100",
            &register_req("c1", 3, vec![Contact::Star], Some(0)),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert!(out.response.headers.contact.is_empty());
        assert_eq!(out.changes.len(), 2);
        assert!(out
            .changes
            .iter()
            .all(|c| matches!(c, BindingChange::Remove { .. })));
        assert_eq!(reg.count(), 0);
        assert_eq!(reg.next_expiry(), None);
        assert!(reg.lookup("100", T0 + 1).is_empty());
    }

    #[test]
    fn too_brief_interval_gets_423_with_min_expires_and_no_change() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[])], None),
            src,
            "t",
        );
        let req = register_req(
            "c1",
            2,
            vec![addr(SOFTPHONE, &[]), addr(PHONE, &[("expires", "30")])],
            Some(600),
        );
        let out = reg.register(T0 + 1, "100", &req, src, "t");
        assert_eq!(out.response.status, 423);
        assert_eq!(out.response.headers.get("Min-Expires"), Some("60"));
        assert!(out.changes.is_empty());
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.lookup("100", T0 + 1)[0].cseq, 1);
        // The Expires header counts too.
        let out = reg.register(
            T0 + 2,
            "100",
            &register_req("c1", 3, vec![addr(PHONE, &[])], Some(59)),
            src,
            "t",
        );
        assert_eq!(out.response.status, 423);
    }

    #[test]
    fn long_interval_is_clamped_to_max() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        let out = reg.register(
            T0,
            "100",
            &register_req(
                "c1",
                1,
                vec![addr(PHONE, &[("expires", "99999999999")])],
                None,
            ),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert_eq!(listed(&out.response)[0].1, "3600");
        assert_eq!(reg.lookup("100", T0)[0].expires_at, T0 + 3_600_000);
    }

    #[test]
    fn bindings_expire_on_a_virtual_clock() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[])], Some(120)),
            src,
            "t",
        );
        reg.register(
            T0,
            "101",
            &register_req("c2", 1, vec![addr("sip:101@192.168.1.21", &[])], Some(600)),
            src,
            "t",
        );
        assert_eq!(reg.next_expiry(), Some(T0 + 120_000));
        assert!(reg.expire(T0 + 119_999).is_empty());
        // Not listed once its time is up, even before the sweep.
        assert!(reg.lookup("100", T0 + 120_000).is_empty());
        let removed = reg.expire(T0 + 120_000);
        assert_eq!(
            removed,
            vec![BindingChange::Remove {
                ext: "100".to_string(),
                contact: PHONE.to_string()
            }]
        );
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.next_expiry(), Some(T0 + 600_000));
        assert_eq!(reg.expire(T0 + 10_000_000).len(), 1);
        assert_eq!(reg.next_expiry(), None);
        assert_eq!(reg.count(), 0);
        assert!(reg.all().is_empty());
    }

    #[test]
    fn expired_but_unswept_binding_is_removed_by_the_next_register() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[])], Some(60)),
            src,
            "t",
        );
        let out = reg.register(
            T0 + 61_000,
            "100",
            &register_req("c9", 1, vec![addr(SOFTPHONE, &[])], None),
            src,
            "t",
        );
        assert!(out.changes.contains(&BindingChange::Remove {
            ext: "100".to_string(),
            contact: PHONE.to_string()
        }));
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.next_expiry(), Some(T0 + 61_000 + 600_000));
    }

    #[test]
    fn out_of_order_cseq_is_refused_but_a_new_call_id_replaces() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 5, vec![addr(PHONE, &[])], None),
            src,
            "t",
        );
        for seq in [4, 5] {
            let out = reg.register(
                T0 + 1,
                "100",
                &register_req("c1", seq, vec![addr(PHONE, &[])], Some(3600)),
                src,
                "t",
            );
            assert_eq!(out.response.status, 500);
            assert!(out.changes.is_empty());
        }
        assert_eq!(reg.lookup("100", T0 + 1)[0].expires_at, T0 + 600_000);
        // A rebooted phone starts a new Call-ID at a low CSeq, from a new NAT port.
        let out = reg.register(
            T0 + 2,
            "100",
            &register_req("reboot", 1, vec![addr(PHONE, &[])], None),
            peer("203.0.113.9:40111"),
            "t",
        );
        assert_eq!(out.response.status, 200);
        let b = reg.lookup("100", T0 + 2)[0];
        assert_eq!((b.call_id.as_str(), b.cseq), ("reboot", 1));
        assert_eq!(b.source, peer("203.0.113.9:40111"));
        assert_eq!(reg.count(), 1);
    }

    #[test]
    fn an_exact_repeat_gets_the_current_bindings_and_changes_nothing() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        let first = register_req("c1", 5, vec![addr(PHONE, &[])], Some(3600));
        let out = reg.register(T0, "100", &first, src, "t");
        assert_eq!(out.response.status, 200);
        let before = reg.lookup("100", T0)[0].clone();
        // Another phone of the extension registers meanwhile; the repeat lists it too.
        let soft = register_req("s1", 1, vec![addr(SOFTPHONE, &[])], Some(600));
        reg.register(T0 + 1_000, "100", &soft, peer("198.51.100.4:5062"), "t");
        // The same request again: a retransmission whose transaction was dropped early.
        assert!(reg.is_exact_repeat(T0 + 20_000, "100", &first));
        let out = reg.register(T0 + 20_000, "100", &first, src, "t");
        assert_eq!(out.response.status, 200);
        assert!(out.changes.is_empty(), "{:?}", out.changes);
        let mut got = listed(&out.response);
        got.sort();
        assert_eq!(
            got,
            vec![
                (SOFTPHONE.to_string(), "581".to_string()),
                (PHONE.to_string(), "3580".to_string()),
            ]
        );
        assert_eq!(reg.lookup("100", T0 + 20_000)[1], &before);
        // An equal CSeq asking for anything else, and a lower one, still fail (§10.3 step 7).
        for other in [
            register_req("c1", 5, vec![addr(PHONE, &[])], Some(1800)),
            register_req("c1", 5, vec![addr(PHONE, &[("q", "0.5")])], Some(3600)),
            register_req(
                "c1",
                5,
                vec![addr(PHONE, &[]), addr("sip:100@192.168.1.21", &[])],
                Some(3600),
            ),
            register_req("c1", 4, vec![addr(PHONE, &[])], Some(3600)),
        ] {
            assert!(!reg.is_exact_repeat(T0 + 20_000, "100", &other));
            let out = reg.register(T0 + 20_000, "100", &other, src, "t");
            assert_eq!(out.response.status, 500, "{other:?}");
            assert!(out.changes.is_empty());
        }
        // Not for another extension, and not once a retransmission can no longer come.
        assert!(!reg.is_exact_repeat(T0 + 20_000, "101", &first));
        let late = T0 + REPEAT_WINDOW_MS;
        assert!(!reg.is_exact_repeat(late, "100", &first));
        assert_eq!(
            reg.register(late, "100", &first, src, "t").response.status,
            500
        );
        assert_eq!(reg.lookup("100", late)[1], &before);
    }

    #[test]
    fn max_contacts_evicts_the_least_recently_refreshed() {
        let mut reg = Registrar::new(RegistrarConfig {
            max_contacts: 2,
            ..RegistrarConfig::default()
        });
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("a", 1, vec![addr("sip:100@10.0.0.1", &[])], None),
            src,
            "t",
        );
        reg.register(
            T0 + 10,
            "100",
            &register_req("b", 1, vec![addr("sip:100@10.0.0.2", &[])], None),
            src,
            "t",
        );
        // The first one refreshes, so the second is now the stalest.
        reg.register(
            T0 + 20,
            "100",
            &register_req("a", 2, vec![addr("sip:100@10.0.0.1", &[])], None),
            src,
            "t",
        );
        let out = reg.register(
            T0 + 30,
            "100",
            &register_req("c", 1, vec![addr("sip:100@10.0.0.3", &[])], None),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert!(out.changes.contains(&BindingChange::Remove {
            ext: "100".to_string(),
            contact: "sip:100@10.0.0.2".to_string()
        }));
        let mut found: Vec<&str> = reg
            .lookup("100", T0 + 30)
            .iter()
            .map(|b| b.contact.as_str())
            .collect();
        found.sort_unstable();
        assert_eq!(found, vec!["sip:100@10.0.0.1", "sip:100@10.0.0.3"]);
        assert_eq!(reg.count(), 2);
        // More contacts in one request than allowed at all is refused.
        let many = register_req(
            "d",
            1,
            vec![
                addr("sip:100@10.0.0.4", &[]),
                addr("sip:100@10.0.0.5", &[]),
                addr("sip:100@10.0.0.6", &[]),
            ],
            None,
        );
        assert_eq!(
            reg.register(T0 + 40, "100", &many, src, "t")
                .response
                .status,
            400
        );
    }

    /// A stored binding as the store gives it back.
    fn stored(ext: &str, contact: &str, expires_at: Millis, registered_at: Millis) -> Binding {
        Binding {
            ext: ext.to_string(),
            contact: contact.to_string(),
            source: peer("198.51.100.1:5060"),
            expires_at,
            call_id: "x".to_string(),
            cseq: 7,
            q: None,
            user_agent: None,
            registered_at,
        }
    }

    #[test]
    fn a_clock_step_keeps_each_binding_the_time_it_had_left() {
        let mut reg = registrar();
        let make = |ext: &str, contact: &str, expires_at: Millis| {
            stored(ext, contact, expires_at, T0 - 1_000)
        };
        reg.restore(
            vec![
                make("100", PHONE, T0 + 50_000),
                make("101", "sip:101@192.168.1.21", T0 + 20_000),
            ],
            T0,
        );
        // The clock was a day behind: after the step, the same 20 s and 50 s remain.
        let day: Millis = 86_400_000;
        let changes = reg.shift_time(86_400_000);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| matches!(c,
            BindingChange::Upsert(b) if b.expires_at > T0 + day)));
        assert_eq!(reg.next_expiry(), Some(T0 + day + 20_000));
        assert!(reg.expire(T0 + day + 19_999).is_empty());
        assert_eq!(reg.lookup("100", T0 + day).len(), 1);
        assert_eq!(
            reg.lookup("100", T0 + day)[0].registered_at,
            T0 + day - 1_000
        );
        assert_eq!(reg.expire(T0 + day + 20_000).len(), 1);
        assert_eq!(reg.count(), 1);
        // And back.
        reg.shift_time(-86_400_000);
        assert_eq!(reg.next_expiry(), Some(T0 + 50_000));
        assert_eq!(reg.lookup("100", T0).len(), 1);
    }

    #[test]
    fn restore_drops_expired_and_rebuilds_the_index() {
        let mut reg = registrar();
        let make = |ext: &str, contact: &str, expires_at: Millis| {
            stored(ext, contact, expires_at, T0 - 1_000_000)
        };
        reg.restore(
            vec![
                make("100", PHONE, T0 - 1),
                make("100", SOFTPHONE, T0 + 50_000),
                make("101", "sip:101@192.168.1.21", T0 + 20_000),
                make("102", "not a uri at all <>", T0 + 20_000),
            ],
            T0,
        );
        assert_eq!(reg.count(), 2);
        assert_eq!(reg.next_expiry(), Some(T0 + 20_000));
        assert_eq!(reg.lookup("100", T0).len(), 1);
        assert_eq!(reg.lookup("100", T0)[0].contact, SOFTPHONE);
        // The restored Call-ID/CSeq still guard against replays.
        let out = reg.register(
            T0,
            "100",
            &register_req("x", 7, vec![addr(SOFTPHONE, &[])], None),
            peer("198.51.100.1:5060"),
            "t",
        );
        assert_eq!(out.response.status, 500);
        let all: Vec<&str> = reg.all().iter().map(|b| b.ext.as_str()).collect();
        assert_eq!(all, vec!["100", "101"]);
    }

    #[test]
    fn unusable_contact_gets_400_and_no_change() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        let mut tel = NameAddr::new(uri("sip:100@host"));
        tel.uri.scheme = Some(rsip::Scheme::Other("tel".to_string()));
        let out = reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[]), Contact::Addr(tel)], None),
            src,
            "t",
        );
        assert_eq!(out.response.status, 400);
        assert!(out.changes.is_empty());
        assert_eq!(reg.count(), 0);

        let long = format!("sip:100@192.168.1.20;x={}", "a".repeat(MAX_CONTACT_URI));
        let out = reg.register(
            T0,
            "100",
            &register_req("c1", 2, vec![addr(&long, &[])], None),
            src,
            "t",
        );
        assert_eq!(out.response.status, 400);
        assert_eq!(reg.count(), 0);
    }

    #[test]
    fn contact_matching_ignores_host_case_and_param_order() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req(
                "c1",
                1,
                vec![addr("sip:100@Phone.Example;transport=udp;ob", &[])],
                None,
            ),
            src,
            "t",
        );
        let out = reg.register(
            T0 + 1,
            "100",
            &register_req(
                "c1",
                2,
                vec![addr("sip:100@phone.example;ob;transport=UDP", &[])],
                None,
            ),
            src,
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert_eq!(reg.count(), 1);
        // The contact text changed, so the store must drop the old key and write the new.
        assert_eq!(out.changes.len(), 2);
        assert!(matches!(out.changes[0], BindingChange::Remove { .. }));
        assert!(matches!(out.changes[1], BindingChange::Upsert(_)));
        // A different user part is a different contact.
        reg.register(
            T0 + 2,
            "100",
            &register_req(
                "c1",
                3,
                vec![addr("sip:ALICE@phone.example;ob;transport=UDP", &[])],
                None,
            ),
            src,
            "t",
        );
        assert_eq!(reg.count(), 2);
    }

    #[test]
    fn same_instance_replaces_the_old_contact() {
        let mut reg = registrar();
        let inst = "\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\"";
        reg.register(
            T0,
            "100",
            &register_req(
                "c1",
                1,
                vec![addr(
                    "sip:100@192.168.1.20:5060",
                    &[("+sip.instance", inst), ("reg-id", "1")],
                )],
                None,
            ),
            peer("203.0.113.9:40000"),
            "t",
        );
        let out = reg.register(
            T0 + 5,
            "100",
            &register_req(
                "c2",
                1,
                vec![addr(
                    "sip:100@192.168.1.20:5077",
                    &[("+sip.instance", inst), ("reg-id", "1")],
                )],
                None,
            ),
            peer("203.0.113.9:40001"),
            "t",
        );
        assert_eq!(out.response.status, 200);
        assert_eq!(reg.count(), 1);
        assert_eq!(
            reg.lookup("100", T0 + 5)[0].contact,
            "sip:100@192.168.1.20:5077"
        );
        assert!(out.changes.contains(&BindingChange::Remove {
            ext: "100".to_string(),
            contact: "sip:100@192.168.1.20:5060".to_string()
        }));
        let Contact::Addr(listed) = &out.response.headers.contact[0] else {
            panic!("address expected");
        };
        assert_eq!(listed.params.get("+sip.instance"), Some(Some(inst)));
    }

    #[test]
    fn remove_ext_drops_everything_of_the_extension() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        reg.register(
            T0,
            "100",
            &register_req("c1", 1, vec![addr(PHONE, &[]), addr(SOFTPHONE, &[])], None),
            src,
            "t",
        );
        reg.register(
            T0,
            "101",
            &register_req("c2", 1, vec![addr("sip:101@192.168.1.21", &[])], Some(60)),
            src,
            "t",
        );
        let removed = reg.remove_ext("100");
        assert_eq!(removed.len(), 2);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.next_expiry(), Some(T0 + 60_000));
        assert!(reg.remove_ext("100").is_empty());
    }

    #[test]
    fn user_agent_is_truncated() {
        let mut reg = registrar();
        let mut req = register_req("c1", 1, vec![addr(PHONE, &[])], None);
        req.headers.other = vec![("User-Agent".to_string(), "é".repeat(300))];
        reg.register(T0, "100", &req, peer("203.0.113.9:40000"), "t");
        let ua = reg.lookup("100", T0)[0]
            .user_agent
            .clone()
            .expect("user agent kept");
        assert_eq!(ua.chars().count(), MAX_USER_AGENT);
    }

    #[test]
    fn qvalues_and_delta_seconds_parse_strictly() {
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.123"), Some(123));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        for bad in ["1.5", "2", "0.1234", "-0", "", "0.x"] {
            assert_eq!(parse_q(bad), None, "{bad}");
        }
        assert_eq!(parse_delta_seconds("3600"), Some(3600));
        assert_eq!(parse_delta_seconds("0"), Some(0));
        assert_eq!(parse_delta_seconds("99999999999999999999"), Some(u32::MAX));
        assert_eq!(parse_delta_seconds("abc"), None);
        assert_eq!(parse_delta_seconds(""), None);
    }

    #[test]
    fn ten_thousand_extensions_keep_the_index_consistent() {
        let mut reg = registrar();
        let src = peer("203.0.113.9:40000");
        for i in 0..10_000u32 {
            let ext = format!("{}", 1000 + i);
            let contact = format!("sip:{ext}@10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            let req = register_req(
                &format!("c{i}"),
                1,
                vec![addr(&contact, &[])],
                Some(60 + i % 100),
            );
            assert_eq!(reg.register(T0, &ext, &req, src, "t").response.status, 200);
        }
        assert_eq!(reg.count(), 10_000);
        assert_eq!(reg.next_expiry(), Some(T0 + 60_000));
        assert_eq!(reg.expire(T0 + 60_000).len(), 100);
        assert_eq!(reg.count(), 9_900);
        assert_eq!(reg.expire(T0 + 1_000_000).len(), 9_900);
        assert_eq!(reg.next_expiry(), None);
    }

    #[test]
    fn unregisters_are_recognised_by_their_shape() {
        let star = register_req("u", 1, vec![Contact::Star], Some(0));
        assert!(is_unregister(&star));
        let by_header = register_req("u", 1, vec![addr(PHONE, &[])], Some(0));
        assert!(is_unregister(&by_header));
        let by_param = register_req("u", 1, vec![addr(PHONE, &[("expires", "0")])], Some(300));
        assert!(is_unregister(&by_param));
        let mixed = register_req(
            "u",
            1,
            vec![addr(PHONE, &[("expires", "0")]), addr(SOFTPHONE, &[])],
            Some(300),
        );
        assert!(!is_unregister(&mixed), "one contact is being registered");
        let refresh = register_req("u", 1, vec![addr(PHONE, &[])], Some(300));
        assert!(!is_unregister(&refresh));
        let query = register_req("u", 1, vec![], Some(0));
        assert!(!is_unregister(&query), "a query removes nothing");
        let bad_star = register_req("u", 1, vec![Contact::Star], Some(300));
        assert!(!is_unregister(&bad_star));
    }
}
