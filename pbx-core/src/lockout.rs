//! Account locks that never lock out the account's own phones.
//!
//! The firewall locks an account after repeated wrong passwords for it, from any mix of
//! sources (distributed guessing). A lock here refuses only the sources that have not
//! authenticated as that account recently; the sources that did — the office's phones —
//! keep registering, calling and un-registering. Without that exemption, anyone who knows an
//! extension number could silence it with three bad REGISTERs.
//!
//! # Which sources are remembered
//! Every successful authentication as an account remembers its source as a
//! [`TrustedSource`]:
//! - **the address alone** when the phone talks to us directly (its Via names the address
//!   it sends from) or over TCP/TLS (every reconnect gets a new port, and the address is the
//!   phone's own): a phone that reboots onto another port stays trusted;
//! - **address and port** when a UDP request came through NAT (its Via names another
//!   address): behind NAT the public address is shared by the whole office, including any
//!   compromised PC, and the NAT mapping (kept alive by the phone's keepalives and
//!   re-registrations) is what identifies the phone.
//!
//! A remembered source stays trusted for [`TRUST_MS`] (7 days) after its last successful
//! authentication; phones re-register at least hourly, so a phone in use never ages out.
//! During a lock only trusted sources can authenticate, so a lock cannot be used to make a
//! new source trusted.
//!
//! # Memory
//! At most [`MAX_TRUSTED_PER_ACCOUNT`] (16) sources per account (the least recently seen is
//! forgotten first) and [`MAX_TRUSTED`] (50,000) in all (the least recently seen of any
//! account is forgotten first): about 120 bytes each with the age index, so at most ~6 MiB.
//! Only a successful authentication adds an entry, so only real extensions have any.
//! Locks: at most [`MAX_LOCKS`] (100,000) accounts, about 60 bytes each (~6 MiB); when full,
//! ended locks are swept and a new lock beyond the bound is not taken (the source rules
//! still ban the guessers).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::sip::{Peer, Transport, Via};
use crate::Millis;

/// How long a source stays trusted after its last successful authentication (7 days).
pub const TRUST_MS: u64 = 7 * 24 * 3_600_000;
/// Most trusted sources remembered per account.
pub const MAX_TRUSTED_PER_ACCOUNT: usize = 16;
/// Most trusted sources remembered over all accounts.
pub const MAX_TRUSTED: usize = 50_000;
/// Most locked accounts (there are never more than guessed names).
pub const MAX_LOCKS: usize = 100_000;

/// A source that authenticated as an account: an address, or an address and port (NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrustedSource {
    /// The source address (IPv4-mapped IPv6 is kept as IPv4).
    pub ip: IpAddr,
    /// The source port when the source is behind NAT; `None` matches any port.
    pub port: Option<u16>,
}

impl TrustedSource {
    /// The source as remembered for a request from `src` whose top Via is `via` (see the
    /// module docs for when the port counts).
    pub fn of(src: Peer, via: Option<&Via>) -> Self {
        let ip = src.addr.ip().to_canonical();
        let natted = src.transport == Transport::Udp
            && via
                .and_then(|v| v.host.trim_matches(['[', ']']).parse::<IpAddr>().ok())
                .is_some_and(|sent_by| sent_by.to_canonical() != ip);
        TrustedSource {
            ip,
            port: natted.then_some(src.addr.port()),
        }
    }

    /// The source as remembered from a stored binding: NAT when its Contact names another
    /// address than the one the REGISTER came from.
    pub fn of_binding(src: Peer, contact_host: Option<IpAddr>) -> Self {
        let ip = src.addr.ip().to_canonical();
        let natted =
            src.transport == Transport::Udp && contact_host.is_some_and(|h| h.to_canonical() != ip);
        TrustedSource {
            ip,
            port: natted.then_some(src.addr.port()),
        }
    }

    /// Whether a request from `addr` comes from this source.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        addr.ip().to_canonical() == self.ip && self.port.is_none_or(|p| p == addr.port())
    }
}

impl fmt::Display for TrustedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.ip) {
            (None, ip) => write!(f, "{ip}"),
            (Some(port), ip) => write!(f, "{}", SocketAddr::new(ip, port)),
        }
    }
}

/// Account locks with the sources each account's lock does not apply to.
#[derive(Debug, Default)]
pub struct AccountLocks {
    /// Locked account → end of the lock.
    locks: HashMap<String, Millis>,
    /// Account → its trusted sources with the time each last authenticated.
    trusted: HashMap<String, Vec<(TrustedSource, Millis)>>,
    /// Every trusted entry by last authentication, oldest first (for the global bound and
    /// the sweep of old entries).
    by_age: BTreeSet<(Millis, String, TrustedSource)>,
}

impl AccountLocks {
    /// No locks, nothing trusted.
    pub fn new() -> Self {
        AccountLocks::default()
    }

    /// Locks `ext` until `until` for every source that is not trusted for it.
    pub fn lock(&mut self, now: Millis, ext: &str, until: Millis) {
        if self.locks.len() >= MAX_LOCKS && !self.locks.contains_key(ext) {
            self.locks.retain(|_, &mut u| u > now);
            if self.locks.len() >= MAX_LOCKS {
                return;
            }
        }
        self.locks.insert(ext.to_string(), until);
    }

    /// Lifts the lock of `ext`; whether there was one.
    pub fn unlock(&mut self, ext: &str) -> bool {
        self.locks.remove(ext).is_some()
    }

    /// Whether `ext` is locked at `now` (for anyone not trusted).
    pub fn is_locked(&self, now: Millis, ext: &str) -> bool {
        self.locks.get(ext).is_some_and(|&until| until > now)
    }

    /// Whether a request from `addr` is refused as `ext` at `now`: the account is locked and
    /// `addr` is not one of its trusted sources.
    pub fn blocks(&self, now: Millis, ext: &str, addr: SocketAddr) -> bool {
        self.is_locked(now, ext) && !self.is_trusted(now, ext, addr)
    }

    /// Whether `addr` authenticated as `ext` within [`TRUST_MS`] before `now`.
    pub fn is_trusted(&self, now: Millis, ext: &str, addr: SocketAddr) -> bool {
        self.trusted.get(ext).is_some_and(|list| {
            list.iter()
                .any(|(s, at)| s.matches(addr) && now < at.saturating_add(TRUST_MS))
        })
    }

    /// Remembers (or refreshes) `source` as trusted for `ext`, last seen at `at`.
    pub fn trust(&mut self, now: Millis, ext: &str, source: TrustedSource, at: Millis) {
        self.sweep(now, usize::MAX);
        if now >= at.saturating_add(TRUST_MS) {
            return;
        }
        let list = self.trusted.entry(ext.to_string()).or_default();
        if let Some(entry) = list.iter_mut().find(|(s, _)| *s == source) {
            if entry.1 >= at {
                return;
            }
            self.by_age.remove(&(entry.1, ext.to_string(), source));
            entry.1 = at;
            self.by_age.insert((at, ext.to_string(), source));
            return;
        }
        if list.len() >= MAX_TRUSTED_PER_ACCOUNT {
            if let Some(i) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
            {
                let (old, t) = list.remove(i);
                self.by_age.remove(&(t, ext.to_string(), old));
            }
        }
        list.push((source, at));
        self.by_age.insert((at, ext.to_string(), source));
        while self.by_age.len() > MAX_TRUSTED {
            let Some((t, e, s)) = self.by_age.pop_first() else {
                break;
            };
            self.forget_entry(&e, s, t);
        }
    }

    /// The sources trusted for `ext` at `now`, in address order.
    pub fn trusted(&self, now: Millis, ext: &str) -> Vec<TrustedSource> {
        let mut out: Vec<TrustedSource> = self
            .trusted
            .get(ext)
            .into_iter()
            .flatten()
            .filter(|(_, at)| now < at.saturating_add(TRUST_MS))
            .map(|(s, _)| *s)
            .collect();
        out.sort();
        out
    }

    /// Forgets everything about `ext` (the extension was deleted).
    pub fn forget(&mut self, ext: &str) {
        self.locks.remove(ext);
        if let Some(list) = self.trusted.remove(ext) {
            for (s, t) in list {
                self.by_age.remove(&(t, ext.to_string(), s));
            }
        }
    }

    /// Number of trusted entries (for tests and metrics).
    pub fn trusted_count(&self) -> usize {
        self.by_age.len()
    }

    /// Drops up to `budget` entries that stopped being trusted by `now`.
    pub fn sweep(&mut self, now: Millis, budget: usize) {
        let mut done = 0;
        while done < budget {
            let Some(&(t, _, _)) = self.by_age.first() else {
                break;
            };
            if now < t.saturating_add(TRUST_MS) {
                break;
            }
            let Some((t, e, s)) = self.by_age.pop_first() else {
                break;
            };
            self.forget_entry(&e, s, t);
            done += 1;
        }
    }

    fn forget_entry(&mut self, ext: &str, source: TrustedSource, at: Millis) {
        if let Some(list) = self.trusted.get_mut(ext) {
            list.retain(|&(s, t)| !(s == source && t == at));
            if list.is_empty() {
                self.trusted.remove(ext);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn peer(s: &str, transport: Transport) -> Peer {
        Peer {
            transport,
            addr: s.parse().expect("socket address"),
        }
    }

    fn via(host: &str) -> Via {
        Via {
            transport: "UDP".into(),
            host: host.into(),
            port: Some(5060),
            params: Default::default(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn direct_sources_are_trusted_by_address_natted_by_address_and_port() {
        let direct = TrustedSource::of(
            peer("10.0.0.5:5060", Transport::Udp),
            Some(&via("10.0.0.5")),
        );
        assert_eq!(direct.port, None);
        assert!(direct.matches(addr("10.0.0.5:40000")));
        assert!(!direct.matches(addr("10.0.0.6:5060")));
        assert_eq!(direct.to_string(), "10.0.0.5");

        let natted = TrustedSource::of(
            peer("198.51.100.7:31000", Transport::Udp),
            Some(&via("192.168.1.20")),
        );
        assert_eq!(natted.port, Some(31000));
        assert!(natted.matches(addr("198.51.100.7:31000")));
        assert!(
            !natted.matches(addr("198.51.100.7:31001")),
            "another device behind the NAT"
        );
        assert_eq!(natted.to_string(), "198.51.100.7:31000");

        // TCP reconnects change the port: address only, NAT or not.
        let tcp = TrustedSource::of(
            peer("198.51.100.7:31000", Transport::Tcp),
            Some(&via("192.168.1.20")),
        );
        assert_eq!(tcp.port, None);
        // A host name in Via says nothing about NAT.
        let named = TrustedSource::of(
            peer("198.51.100.7:31000", Transport::Udp),
            Some(&via("phone.lan")),
        );
        assert_eq!(named.port, None);
        // IPv4-mapped IPv6 is the IPv4 source.
        let mapped = TrustedSource::of(
            peer("[::ffff:10.0.0.5]:5060", Transport::Udp),
            Some(&via("10.0.0.5")),
        );
        assert_eq!(mapped, direct);
        assert!(mapped.matches(addr("[::ffff:10.0.0.5]:5061")));
    }

    #[test]
    fn a_lock_blocks_only_sources_that_did_not_authenticate() {
        let mut l = AccountLocks::new();
        let phone = TrustedSource::of(
            peer("10.0.0.5:5060", Transport::Udp),
            Some(&via("10.0.0.5")),
        );
        l.trust(T0, "103", phone, T0);
        l.lock(T0 + 1, "103", T0 + 15 * MIN);
        assert!(!l.blocks(T0 + 2, "103", addr("10.0.0.5:5060")));
        assert!(l.blocks(T0 + 2, "103", addr("203.0.113.9:5060")));
        // Trust is per account.
        l.lock(T0 + 1, "104", T0 + 15 * MIN);
        assert!(l.blocks(T0 + 2, "104", addr("10.0.0.5:5060")));
        // The lock ends.
        assert!(!l.blocks(T0 + 15 * MIN, "103", addr("203.0.113.9:5060")));
        assert!(l.unlock("104"));
        assert!(!l.blocks(T0 + 2, "104", addr("10.0.0.5:5060")));
        assert_eq!(l.trusted(T0, "103"), vec![phone]);
    }

    #[test]
    fn trust_ages_out_after_a_week_unless_refreshed() {
        let mut l = AccountLocks::new();
        let a = TrustedSource {
            ip: IpAddr::from([10, 0, 0, 5]),
            port: None,
        };
        l.trust(T0, "103", a, T0);
        l.trust(T0 + TRUST_MS - 1, "103", a, T0 + TRUST_MS - 1);
        assert!(l.is_trusted(T0 + TRUST_MS + 1, "103", addr("10.0.0.5:1")));
        assert!(!l.is_trusted(T0 + 2 * TRUST_MS, "103", addr("10.0.0.5:1")));
        l.sweep(T0 + 2 * TRUST_MS, 100);
        assert_eq!(l.trusted_count(), 0);
        // Something seen long ago is not remembered at all.
        l.trust(T0 + 3 * TRUST_MS, "103", a, T0);
        assert_eq!(l.trusted_count(), 0);
    }

    #[test]
    fn trusted_sources_are_bounded_per_account_and_in_total() {
        let mut l = AccountLocks::new();
        for i in 0..40u16 {
            let s = TrustedSource {
                ip: IpAddr::from([10, 0, 0, 1]),
                port: Some(10_000 + i),
            };
            l.trust(T0 + u64::from(i), "103", s, T0 + u64::from(i));
        }
        let kept = l.trusted(T0 + 100, "103");
        assert_eq!(kept.len(), MAX_TRUSTED_PER_ACCOUNT);
        // The most recent ones are kept.
        assert!(kept.iter().all(|s| s.port >= Some(10_000 + 40 - 16)));
        for i in 0..(u32::try_from(MAX_TRUSTED).expect("small") + 1_000) {
            let s = TrustedSource {
                ip: IpAddr::from(i.to_be_bytes()),
                port: None,
            };
            let now = T0 + 1_000 + u64::from(i);
            l.trust(now, &format!("e{}", i % 5_000), s, now);
        }
        assert_eq!(l.trusted_count(), MAX_TRUSTED);
        // The oldest (account 103's) went first.
        assert!(l.trusted(T0 + 2_000_000, "103").is_empty());
        l.forget("e1");
        assert!(l.trusted(T0 + 2_000_000, "e1").is_empty());
        assert!(l.trusted_count() < MAX_TRUSTED);
    }

    #[test]
    fn locks_are_bounded() {
        let mut l = AccountLocks::new();
        for i in 0..MAX_LOCKS {
            l.lock(T0, &format!("u{i}"), T0 + MIN);
        }
        l.lock(T0, "extra", T0 + MIN);
        assert!(!l.is_locked(T0, "extra"));
        // Once the old ones ended, there is room again.
        l.lock(T0 + MIN, "extra", T0 + 2 * MIN);
        assert!(l.is_locked(T0 + MIN, "extra"));
    }
}
