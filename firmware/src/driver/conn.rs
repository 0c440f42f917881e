//! Per-source accounting of TCP and TLS connections: who may open one, who must be refused,
//! and what the firewall is told about it.
//!
//! One source must never lock TCP phones out. Every accepted connection is admitted (or
//! refused, and reset at once) here, by its source:
//!
//! - **per-source caps**: a source that has not authenticated may hold
//!   [`ConnLimits::per_source`] connections (16), one that authenticated recently (the call
//!   core's `AuthSucceeded`, for the detector's pass time) [`ConnLimits::per_source_authenticated`]
//!   (256: a NATed office). IPv6 sources count per /64 (one host usually owns one);
//!   loopback, allow-listed networks and trunk peers have no per-source cap.
//! - **a reserve**: connections of unauthenticated sources may fill the global cap
//!   ([`ConnLimits::max`], 4,096) only up to `max - reserved_authenticated`; the last 1,024
//!   slots are for authenticated and trusted sources and our own outgoing connections, so a
//!   flood of strangers never takes them.
//! - **bans**: the firewall's bans close the source's connections and refuse new ones (the
//!   kernel drops them too when it enforces).
//! - **reports**: connections opened, and refused at a per-source cap, are summed per
//!   address and taken by the daemon ([`ConnTable::take_reports`]) for the detector's
//!   `connection_flood` rule; a flood costs one report per daemon turn, not one per
//!   connection.
//!
//! Each connection carries a [`ConnCtl`]: whether it carried an authenticated request (then
//! its idle timeout is the long one and it leaves the unauthenticated pool) and a way to
//! close it from outside (a ban).
//!
//! # Cost
//! Every table is bounded: per-source counts exist only for sources with an open connection
//! (at most `max`), connection controls one per open incoming connection (at most `max`),
//! authenticated sources [`MAX_AUTHED`], banned sources [`MAX_BANNED`], pending reports
//! [`MAX_REPORTS`] (beyond, reports are dropped and counted). About 100 bytes per entry:
//! under 2 MB in the worst case, nothing allocated per message. Admission is a few hash
//! lookups under one mutex, once per accepted connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use firewall::net::{canonical, is_loopback, Cidr};
use pbx_core::sip::Peer;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Most sources remembered as authenticated (the detector keeps as many passes).
pub const MAX_AUTHED: usize = 4_096;
/// Most banned sources refused at accept (the kernel set has no such bound).
pub const MAX_BANNED: usize = 4_096;
/// Most addresses with a pending report.
pub const MAX_REPORTS: usize = 4_096;

/// The limits, from `[firewall.connections]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections a source that has not authenticated may hold (IPv6: per /64).
    pub per_source: u32,
    /// Connections a source that authenticated recently may hold.
    pub per_source_authenticated: u32,
    /// Connections at once, incoming and outgoing.
    pub max: usize,
    /// Of `max`, slots unauthenticated sources can never take.
    pub reserved_authenticated: usize,
    /// A new connection must deliver its first complete SIP message within this.
    pub first_message: Duration,
    /// A message, once its first byte arrived, must be complete within this.
    pub message: Duration,
    /// Idle timeout of a connection that has not carried an authenticated request.
    pub idle: Duration,
    /// Idle timeout of one that has (CRLF keep-alives count as alive).
    pub idle_authenticated: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            per_source: 16,
            per_source_authenticated: 256,
            max: 4_096,
            reserved_authenticated: 1_024,
            first_message: Duration::from_secs(10),
            message: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            idle_authenticated: Duration::from_secs(900),
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source is banned.
    Banned,
    /// The source holds its cap of connections.
    SourceCap,
    /// The slots unauthenticated sources may use are taken.
    Pool,
    /// Every slot is taken.
    Full,
}

/// Why a connection ended (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseReason {
    /// The peer closed it, a read or write failed, or the framing broke.
    Peer,
    /// No complete first message in time.
    FirstMessage,
    /// A message begun was not complete in time (a slow drip).
    Message,
    /// Idle for too long.
    Idle,
    /// Its source was banned.
    Banned,
}

/// Counters for `outpostctl fw status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// Connections open now (incoming and outgoing).
    pub open: usize,
    /// Of those, counted against the unauthenticated pool.
    pub open_unauthenticated: usize,
    /// Sources holding at least one connection.
    pub sources: usize,
    /// Sources remembered as authenticated.
    pub authenticated_sources: usize,
    /// The limits: per source (unauthenticated, authenticated), total, reserved.
    pub per_source: u32,
    pub per_source_authenticated: u32,
    pub max: usize,
    pub reserved_authenticated: usize,
    /// Incoming connections admitted since the start.
    pub accepted: u64,
    /// Refused because the source held its cap.
    pub refused_source_cap: u64,
    /// Refused because the unauthenticated pool was full.
    pub refused_pool: u64,
    /// Refused because every slot was taken.
    pub refused_full: u64,
    /// Refused because the source is banned.
    pub refused_banned: u64,
    /// Closed: no first message in time.
    pub closed_first_message: u64,
    /// Closed: a message not complete in time.
    pub closed_message: u64,
    /// Closed: idle.
    pub closed_idle: u64,
    /// Closed: the source was banned.
    pub closed_banned: u64,
    /// Reports dropped because too many addresses were pending.
    pub reports_dropped: u64,
}

/// What the firewall is told: per address, connections opened and refused at the cap
/// since the last report, and refusals because the unauthenticated pool was full.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnReport {
    /// (address, opened, refused at its cap).
    pub sources: Vec<(IpAddr, u32, u32)>,
    /// Connections refused because the unauthenticated pool (or every slot) was full.
    pub pool_refused: u32,
}

/// What the firewall tells the SIP transports about connections (see
/// `Transports::conn_notice`); the daemon drains them from the firewall each turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnNotice {
    /// A request from `src` authenticated: the source gets the higher connection cap for
    /// `for_ms` (the detector's pass), and the connection it came over (TCP, TLS) the long
    /// idle timeout.
    Authenticated {
        /// The request's transport and source.
        src: Peer,
        /// How long the source counts as authenticated.
        for_ms: u64,
    },
    /// Close the source's connections and refuse new ones for `for_ms`.
    Banned {
        /// The banned address.
        addr: IpAddr,
        /// Ban length.
        for_ms: u64,
    },
    /// The admin lifted a ban.
    Unbanned(IpAddr),
    /// The admin allowed a network (`fw allow`): no per-source cap.
    Trusted(Cidr),
}

/// One connection's shared state: set by the daemon's task, read by the connection's.
#[derive(Debug)]
pub struct ConnCtl {
    authenticated: AtomicBool,
    /// Counted against the unauthenticated pool (cleared when it authenticates).
    in_pool: AtomicBool,
    closing: AtomicBool,
    close: Notify,
}

impl ConnCtl {
    fn new(authenticated: bool, in_pool: bool) -> ConnCtl {
        ConnCtl {
            authenticated: AtomicBool::new(authenticated),
            in_pool: AtomicBool::new(in_pool),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    /// A control for an outgoing connection: ours, so as trusted as an authenticated one.
    pub fn outgoing() -> Arc<ConnCtl> {
        Arc::new(ConnCtl::new(true, false))
    }

    /// Whether the connection carried an authenticated request (or is trusted or ours).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Whether the connection was told to close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Resolves when the connection is told to close (at once if it already was).
    pub async fn closed(&self) {
        let notified = self.close.notified();
        if self.is_closing() {
            return;
        }
        notified.await;
    }

    fn shut(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_waiters();
    }
}

/// Connections of one source key.
#[derive(Debug, Default, Clone, Copy)]
struct SourceConns {
    open: u32,
}

/// The accounting; pure (time is `now`, ms on a monotonic clock), shared behind a mutex
/// as [`SharedConns`].
#[derive(Debug)]
pub struct ConnTable {
    limits: ConnLimits,
    trusted: Vec<Cidr>,
    /// Loopback is trusted (always, except in tests of the limits over loopback).
    loopback_trusted: bool,
    sources: HashMap<IpAddr, SourceConns>,
    authed: HashMap<IpAddr, u64>,
    banned: HashMap<IpAddr, u64>,
    conns: HashMap<SocketAddr, Arc<ConnCtl>>,
    open_total: usize,
    open_pool: usize,
    reports: HashMap<IpAddr, (u32, u32)>,
    pool_refused: u32,
    wake_pending: bool,
    stats: ConnStats,
}

impl ConnTable {
    /// An empty table with `limits`.
    pub fn new(limits: ConnLimits) -> ConnTable {
        ConnTable {
            limits,
            trusted: Vec::new(),
            loopback_trusted: true,
            sources: HashMap::new(),
            authed: HashMap::new(),
            banned: HashMap::new(),
            conns: HashMap::new(),
            open_total: 0,
            open_pool: 0,
            reports: HashMap::new(),
            pool_refused: 0,
            wake_pending: false,
            stats: ConnStats::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// New limits; open connections keep their slots (a lower cap refuses new ones).
    pub fn set_limits(&mut self, limits: ConnLimits) {
        self.limits = limits;
    }

    /// Networks with no per-source cap (allow list, trunk peers); loopback always.
    pub fn set_trusted(&mut self, nets: Vec<Cidr>) {
        self.trusted = nets;
    }

    /// Adds one trusted network (`fw allow`).
    pub fn trust(&mut self, net: Cidr) {
        if !self.trusted.contains(&net) {
            self.trusted.push(net);
        }
    }

    /// Admits an incoming connection from `remote` or says why not. The refusal is
    /// counted; one at a per-source cap is also reported. `Ok` carries the connection's
    /// control; [`ConnTable::release`] must follow when it ends.
    pub fn admit(&mut self, now: u64, remote: SocketAddr) -> Result<Arc<ConnCtl>, Refusal> {
        let ip = canonical(remote.ip());
        let key = source_key(ip);
        if self.banned.get(&ip).is_some_and(|&until| until > now) {
            self.stats.refused_banned += 1;
            return Err(Refusal::Banned);
        }
        let trusted = self.is_trusted(ip);
        let authenticated = trusted || self.authed.get(&key).is_some_and(|&u| u > now);
        let open = self.sources.get(&key).map_or(0, |s| s.open);
        let cap = if authenticated {
            self.limits.per_source_authenticated
        } else {
            self.limits.per_source
        };
        if !trusted && open >= cap {
            self.stats.refused_source_cap += 1;
            self.report(ip, 0, 1);
            return Err(Refusal::SourceCap);
        }
        if self.open_total >= self.limits.max {
            self.stats.refused_full += 1;
            self.pool_refused = self.pool_refused.saturating_add(1);
            return Err(Refusal::Full);
        }
        let pool = self
            .limits
            .max
            .saturating_sub(self.limits.reserved_authenticated);
        if !authenticated && self.open_pool >= pool {
            self.stats.refused_pool += 1;
            self.pool_refused = self.pool_refused.saturating_add(1);
            return Err(Refusal::Pool);
        }
        let ctl = Arc::new(ConnCtl::new(trusted, !authenticated));
        // The same remote address twice (on another listener) is counted twice, but only
        // the first can be reached by address.
        self.conns.entry(remote).or_insert_with(|| ctl.clone());
        self.sources.entry(key).or_default().open += 1;
        self.open_total += 1;
        if !authenticated {
            self.open_pool += 1;
        }
        self.stats.accepted += 1;
        if !trusted {
            self.report(ip, 1, 0);
        }
        Ok(ctl)
    }

    /// Takes a slot for an outgoing connection; `false` when every slot is taken.
    pub fn admit_outgoing(&mut self) -> bool {
        if self.open_total >= self.limits.max {
            return false;
        }
        self.open_total += 1;
        true
    }

    /// Gives back an outgoing connection's slot.
    pub fn release_outgoing(&mut self) {
        self.open_total = self.open_total.saturating_sub(1);
    }

    /// An incoming connection ended.
    pub fn release(&mut self, remote: SocketAddr, ctl: &Arc<ConnCtl>, reason: CloseReason) {
        let key = source_key(canonical(remote.ip()));
        if let Some(s) = self.sources.get_mut(&key) {
            s.open = s.open.saturating_sub(1);
            if s.open == 0 {
                self.sources.remove(&key);
            }
        }
        if self.conns.get(&remote).is_some_and(|c| Arc::ptr_eq(c, ctl)) {
            self.conns.remove(&remote);
        }
        self.open_total = self.open_total.saturating_sub(1);
        if ctl.in_pool.swap(false, Ordering::Relaxed) {
            self.open_pool = self.open_pool.saturating_sub(1);
        }
        match reason {
            CloseReason::Peer => {}
            CloseReason::FirstMessage => self.stats.closed_first_message += 1,
            CloseReason::Message => self.stats.closed_message += 1,
            CloseReason::Idle => self.stats.closed_idle += 1,
            CloseReason::Banned => self.stats.closed_banned += 1,
        }
    }

    /// The call core authenticated a request from `remote`: its source counts as
    /// authenticated for `for_ms`, and when it came over a connection (`stream`), that
    /// connection keeps the long idle timeout and leaves the unauthenticated pool.
    pub fn authenticated(&mut self, now: u64, remote: SocketAddr, stream: bool, for_ms: u64) {
        let key = source_key(canonical(remote.ip()));
        let until = now.saturating_add(for_ms);
        if self.authed.len() >= MAX_AUTHED && !self.authed.contains_key(&key) {
            self.authed.retain(|_, u| *u > now);
            if self.authed.len() >= MAX_AUTHED {
                // Forget the one whose pass ends first.
                if let Some(k) = self.authed.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                    self.authed.remove(&k);
                }
            }
        }
        let entry = self.authed.entry(key).or_insert(until);
        *entry = (*entry).max(until);
        if let Some(ctl) = self.conns.get(&remote).filter(|_| stream) {
            ctl.authenticated.store(true, Ordering::Relaxed);
            if ctl.in_pool.swap(false, Ordering::Relaxed) {
                self.open_pool = self.open_pool.saturating_sub(1);
            }
        }
    }

    /// `ip` is banned until `now + for_ms`: its connections are told to close and new ones
    /// are refused. Returns how many were told to close.
    pub fn ban(&mut self, now: u64, ip: IpAddr, for_ms: u64) -> usize {
        let ip = canonical(ip);
        if self.banned.len() >= MAX_BANNED && !self.banned.contains_key(&ip) {
            self.banned.retain(|_, u| *u > now);
            if self.banned.len() >= MAX_BANNED {
                if let Some(k) = self.banned.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                    self.banned.remove(&k);
                }
            }
        }
        self.banned.insert(ip, now.saturating_add(for_ms));
        let mut closed = 0;
        for (addr, ctl) in &self.conns {
            if canonical(addr.ip()) == ip && !ctl.is_closing() {
                ctl.shut();
                closed += 1;
            }
        }
        closed
    }

    /// Lifts a ban (`fw unban`).
    pub fn unban(&mut self, ip: IpAddr) {
        self.banned.remove(&canonical(ip));
    }

    /// The pending reports (and clears them).
    pub fn take_reports(&mut self) -> ConnReport {
        self.wake_pending = false;
        let sources = self
            .reports
            .drain()
            .map(|(ip, (opened, refused))| (ip, opened, refused))
            .collect();
        ConnReport {
            sources,
            pool_refused: std::mem::take(&mut self.pool_refused),
        }
    }

    /// Whether a report is pending that the daemon has not been woken for yet; the caller
    /// wakes it (once) when this returns true.
    pub fn needs_wake(&mut self) -> bool {
        let pending = !self.reports.is_empty() || self.pool_refused > 0;
        if pending && !self.wake_pending {
            self.wake_pending = true;
            return true;
        }
        false
    }

    /// Forgets ended passes and bans (call now and then; work bounded by the tables).
    pub fn purge(&mut self, now: u64) {
        self.authed.retain(|_, u| *u > now);
        self.banned.retain(|_, u| *u > now);
    }

    /// Counters and table sizes.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            open: self.open_total,
            open_unauthenticated: self.open_pool,
            sources: self.sources.len(),
            authenticated_sources: self.authed.len(),
            per_source: self.limits.per_source,
            per_source_authenticated: self.limits.per_source_authenticated,
            max: self.limits.max,
            reserved_authenticated: self.limits.reserved_authenticated,
            ..self.stats.clone()
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        (self.loopback_trusted && is_loopback(ip)) || self.trusted.iter().any(|n| n.contains(ip))
    }

    /// Treats loopback like any source (tests of the limits over loopback).
    #[cfg(test)]
    pub(crate) fn distrust_loopback(&mut self) {
        self.loopback_trusted = false;
    }

    fn report(&mut self, ip: IpAddr, opened: u32, refused: u32) {
        if !self.reports.contains_key(&ip) && self.reports.len() >= MAX_REPORTS {
            self.stats.reports_dropped += 1;
            return;
        }
        let r = self.reports.entry(ip).or_insert((0, 0));
        r.0 = r.0.saturating_add(opened);
        r.1 = r.1.saturating_add(refused);
    }
}

/// The key a source is counted by: an IPv4 address, or an IPv6 address's /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

/// Milliseconds on a monotonic clock (since the first call), the table's `now`.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The table shared by the accept loops, the connection tasks and the daemon.
pub type SharedConns = Arc<Mutex<ConnTable>>;

/// Locks the table (a poisoned lock is still usable: the table stays consistent).
pub fn lock(conns: &SharedConns) -> std::sync::MutexGuard<'_, ConnTable> {
    conns.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An admitted incoming connection: gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    conns: SharedConns,
    remote: SocketAddr,
    ctl: Arc<ConnCtl>,
    reason: CloseReason,
}

impl ConnSlot {
    /// Admits `remote` in `conns` (see [`ConnTable::admit`]); `Err` also says whether the
    /// daemon should be woken for the report.
    pub fn admit(
        conns: &SharedConns,
        remote: SocketAddr,
    ) -> Result<(ConnSlot, bool), (Refusal, bool)> {
        let mut t = lock(conns);
        let admitted = t.admit(mono_ms(), remote);
        let wake = t.needs_wake();
        drop(t);
        match admitted {
            Ok(ctl) => Ok((
                ConnSlot {
                    conns: conns.clone(),
                    remote,
                    ctl,
                    reason: CloseReason::Peer,
                },
                wake,
            )),
            Err(r) => Err((r, wake)),
        }
    }

    /// The connection's control.
    pub fn ctl(&self) -> &Arc<ConnCtl> {
        &self.ctl
    }

    /// The limits in force (deadlines for this connection).
    pub fn limits(&self) -> ConnLimits {
        lock(&self.conns).limits()
    }

    /// Records why the connection ends (counted when the slot is dropped).
    pub fn set_reason(&mut self, reason: CloseReason) {
        self.reason = reason;
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        lock(&self.conns).release(self.remote, &self.ctl, self.reason);
    }
}

/// An outgoing connection's slot: given back when dropped.
#[derive(Debug)]
pub struct OutgoingSlot {
    conns: SharedConns,
}

impl OutgoingSlot {
    /// Takes a slot; `None` when every slot is taken.
    pub fn take(conns: &SharedConns) -> Option<OutgoingSlot> {
        lock(conns).admit_outgoing().then(|| OutgoingSlot {
            conns: conns.clone(),
        })
    }
}

impl Drop for OutgoingSlot {
    fn drop(&mut self) {
        lock(&self.conns).release_outgoing();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> ConnLimits {
        ConnLimits {
            per_source: 4,
            per_source_authenticated: 8,
            max: 20,
            reserved_authenticated: 6,
            ..ConnLimits::default()
        }
    }

    /// Admits `n` connections from `host` (ports from `first_port`); the controls of those
    /// admitted and the refusals.
    fn open(
        t: &mut ConnTable,
        host: &str,
        first_port: u16,
        n: u16,
    ) -> (Vec<(SocketAddr, Arc<ConnCtl>)>, Vec<Refusal>) {
        let mut ok = Vec::new();
        let mut refused = Vec::new();
        for p in first_port..first_port + n {
            let remote = SocketAddr::new(ip(host), p);
            match t.admit(0, remote) {
                Ok(ctl) => ok.push((remote, ctl)),
                Err(r) => refused.push(r),
            }
        }
        (ok, refused)
    }

    #[test]
    fn an_unauthenticated_source_holds_its_cap_and_the_rest_is_refused_and_reported() {
        let mut t = ConnTable::new(ConnLimits::default());
        let (ok, refused) = open(&mut t, "198.51.100.7", 1000, 4_200);
        assert_eq!(ok.len(), 16);
        assert_eq!(refused.len(), 4_184);
        assert!(refused.iter().all(|r| *r == Refusal::SourceCap));
        assert!(t.needs_wake());
        assert!(!t.needs_wake(), "one wake-up per pending report");
        let report = t.take_reports();
        assert_eq!(report.sources, [(ip("198.51.100.7"), 16, 4_184)]);
        assert_eq!(report.pool_refused, 0);
        assert!(t.take_reports().sources.is_empty());
        // A phone elsewhere is not affected.
        assert!(t.admit(0, sa("198.51.100.8:5000")).is_ok());
        let s = t.stats();
        assert_eq!((s.open, s.open_unauthenticated, s.sources), (17, 17, 2));
        assert_eq!((s.accepted, s.refused_source_cap), (17, 4_184));
        // Closing one makes room for one more.
        let (remote, ctl) = &ok[0];
        t.release(*remote, ctl, CloseReason::Idle);
        assert!(t.admit(0, sa("198.51.100.7:9999")).is_ok());
        assert!(t.admit(0, sa("198.51.100.7:9998")).is_err());
        assert_eq!(t.stats().closed_idle, 1);
    }

    #[test]
    fn an_authenticated_source_gets_the_higher_cap_until_its_pass_ends() {
        let mut t = ConnTable::new(small());
        let office = sa("203.0.113.10:5060");
        t.authenticated(0, office, false, HOUR);
        let mut n = 0;
        for p in 0..20 {
            if t.admit(1, SocketAddr::new(office.ip(), 2000 + p)).is_ok() {
                n += 1;
            }
        }
        assert_eq!(n, 8);
        // After the pass, new connections meet the low cap (the 8 held stay).
        let mut t2 = ConnTable::new(small());
        t2.authenticated(0, office, false, HOUR);
        t2.purge(HOUR + 1);
        assert_eq!(open(&mut t2, "203.0.113.10", 3000, 10).0.len(), 4);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_trusted_ones_have_no_per_source_cap() {
        let mut t = ConnTable::new(small());
        let a = open(&mut t, "2001:db8:1:2::10", 1000, 3).0.len();
        let b = open(&mut t, "2001:db8:1:2:ffff::99", 1000, 3).0.len();
        assert_eq!(a + b, 4);
        assert_eq!(open(&mut t, "2001:db8:1:3::10", 1000, 3).0.len(), 3);
        // Loopback and allow-listed networks: only the global cap.
        let mut t = ConnTable::new(small());
        t.set_trusted(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(open(&mut t, "127.0.0.1", 1000, 10).0.len(), 10);
        assert_eq!(open(&mut t, "10.9.9.9", 1000, 20).0.len(), 10);
        assert_eq!(t.stats().refused_full, 10);
        // Trusted connections keep the long idle timeout from the start, and are not
        // reported to the detector.
        let (ok, _) = open(&mut ConnTable::new(small()), "127.0.0.1", 1, 1);
        assert!(ok[0].1.is_authenticated());
        assert!(t.take_reports().sources.is_empty());
    }

    #[test]
    fn strangers_never_take_the_reserved_slots() {
        let mut t = ConnTable::new(small());
        // 14 of 20 slots for unauthenticated sources: four sources of 4 fill them.
        let mut admitted = 0;
        for host in [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ] {
            admitted += open(&mut t, host, 1000, 4).0.len();
        }
        assert_eq!(admitted, 14);
        assert_eq!(t.stats().refused_pool, 2);
        // A new stranger (or a phone that never authenticated) waits for the pool...
        assert_eq!(t.admit(0, sa("198.51.100.9:1")).unwrap_err(), Refusal::Pool);
        assert_eq!(t.take_reports().pool_refused, 3);
        // ...but a phone that authenticated (over UDP, or before) still gets in, up to max.
        let phone = sa("192.0.2.50:5060");
        t.authenticated(0, phone, false, HOUR);
        assert_eq!(open(&mut t, "192.0.2.50", 1000, 8).0.len(), 6);
        assert_eq!(t.admit(0, sa("192.0.2.51:1")).unwrap_err(), Refusal::Full);
        // And our own outgoing connections need a free slot too.
        assert!(!t.admit_outgoing());
    }

    #[test]
    fn a_connection_that_authenticates_leaves_the_pool_and_keeps_the_long_idle() {
        let mut t = ConnTable::new(small());
        let phone = sa("192.0.2.60:40000");
        let ctl = t.admit(0, phone).unwrap();
        assert!(!ctl.is_authenticated());
        assert_eq!(t.stats().open_unauthenticated, 1);
        // A request over UDP from the same address and port is not this connection's.
        t.authenticated(1, phone, false, HOUR);
        assert!(!ctl.is_authenticated());
        assert_eq!(t.stats().open_unauthenticated, 1);
        t.authenticated(5, phone, true, HOUR);
        assert!(ctl.is_authenticated());
        assert_eq!(t.stats().open_unauthenticated, 0);
        // Authenticating twice or releasing never double-counts.
        t.authenticated(6, phone, true, HOUR);
        t.release(phone, &ctl, CloseReason::Peer);
        let s = t.stats();
        assert_eq!((s.open, s.open_unauthenticated, s.sources), (0, 0, 0));
        assert_eq!(s.authenticated_sources, 1);
    }

    #[test]
    fn a_ban_closes_the_sources_connections_and_refuses_new_ones_until_it_ends() {
        let mut t = ConnTable::new(ConnLimits::default());
        let (held, _) = open(&mut t, "198.51.100.20", 1000, 5);
        let (other, _) = open(&mut t, "198.51.100.21", 1000, 1);
        assert_eq!(t.ban(10, ip("198.51.100.20"), 1_000), 5);
        assert!(held.iter().all(|(_, c)| c.is_closing()));
        assert!(!other[0].1.is_closing());
        assert_eq!(
            t.admit(20, sa("198.51.100.20:2000")).unwrap_err(),
            Refusal::Banned
        );
        assert_eq!(t.stats().refused_banned, 1);
        // Banned sources' refusals are not reported: the detector already banned them.
        t.take_reports();
        let _ = t.admit(30, sa("198.51.100.20:2001"));
        assert!(t.take_reports().sources.is_empty());
        for (remote, ctl) in &held {
            t.release(*remote, ctl, CloseReason::Banned);
        }
        assert_eq!(t.stats().closed_banned, 5);
        assert!(t.admit(1_011, sa("198.51.100.20:2002")).is_ok());
        t.ban(2_000, ip("198.51.100.20"), 1_000);
        t.unban(ip("198.51.100.20"));
        assert!(t.admit(2_001, sa("198.51.100.20:2003")).is_ok());
    }

    #[test]
    fn the_tables_stay_bounded() {
        let mut t = ConnTable::new(ConnLimits::default());
        for i in 0..u32::try_from(MAX_AUTHED + 100).unwrap() {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.authenticated(u64::from(i), SocketAddr::new(a, 1), false, HOUR);
            t.ban(u64::from(i), a, HOUR);
        }
        assert_eq!(t.authed.len(), MAX_AUTHED);
        assert_eq!(t.banned.len(), MAX_BANNED);
        // The first ones (ending first) were forgotten.
        assert!(!t.authed.contains_key(&ip("10.0.0.0")));
        // Reports: one entry per address, at most MAX_REPORTS.
        let mut t = ConnTable::new(ConnLimits {
            max: 100_000,
            reserved_authenticated: 0,
            ..ConnLimits::default()
        });
        for i in 0..u32::try_from(MAX_REPORTS + 10).unwrap() {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0xc633_0000 + i));
            let _ = t.admit(0, SocketAddr::new(a, 1));
        }
        assert_eq!(t.take_reports().sources.len(), MAX_REPORTS);
        assert_eq!(t.stats().reports_dropped, 10);
    }

    #[tokio::test]
    async fn a_closed_control_wakes_its_waiter() {
        let ctl = Arc::new(ConnCtl::new(false, true));
        let waiter = {
            let ctl = ctl.clone();
            tokio::spawn(async move { ctl.closed().await })
        };
        tokio::task::yield_now().await;
        ctl.shut();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // Already closed: resolves at once.
        tokio::time::timeout(Duration::from_millis(10), ctl.closed())
            .await
            .unwrap();
    }
}
