//! Inspection before the call core, and the core's feedback: observations in, verdicts out.
//!
//! Pure and deterministic: no I/O, no clock, time is the `now` argument. The driver calls
//! [`Detector::observe`] for every SIP message before `Endpoint::handle` (a
//! [`Observation::Message`], or [`Observation::Malformed`] when the wire parser refused it),
//! and again for the core's outcomes (auth failure/success, unknown user) and failed SSH and web logins.
//!
//! # Verdicts
//! `observe` returns one [`Verdict`], about the observation's *source* (or, for
//! [`Verdict::LockAccount`], its account). One observation can fire two rules only in one
//! case: an [`Observation::AuthFailure`] that both bans the source and locks the account.
//! Then `observe` returns the `Ban` and queues the `LockAccount`; drain [`Detector::poll_verdict`]
//! after every `observe`, then [`Detector::poll_alert`]. For feedback observations the message
//! already went through the core: only `Ban` and `LockAccount` are actionable there.
//!
//! # Who is never banned
//! Allow-listed networks and loopback get `Pass` for everything, with no per-source state
//! and no rule hits: they cannot be banned, dropped or rate-limited, and an attack spoofing
//! them is the kernel's business (reverse-path filtering). One exception: their auth
//! failures still count toward the *account* rule, because a lock protects the account
//! without blocking the source (a guessing script on a LAN PC is still guessing).
//!
//! Trunk peers are never *banned* either, but they are not trusted: the driver hands the
//! detector only what did not come from the trunk itself (wrong port or transport; see
//! `pbx_core::trunk`), and that is inspected like any source's. Where a rule would ban a
//! trunk peer, its address is rejected in user space instead (its messages dropped for the
//! ban's length, one alert), never put in the kernel's ban set: the same address carries
//! the provider's real calls, which keep reaching the core.
//!
//! # Connection floods
//! The SIP transports cap concurrent TCP/TLS connections per source and report, per source,
//! the connections they opened and those they refused at the cap
//! ([`Observation::Connections`]). Rule `connection_flood` bans a source whose refused (or
//! opened) connections reach `connection_flood.refused_limit` (`open_limit`) within
//! `window_ms`; for a source holding an authentication pass (it authenticated within
//! `unknown_host.pass_ms`) both limits are multiplied by `authenticated_factor`, so a NATed
//! office full of phones is banned only far beyond what phones do.
//!
//! # Monitor mode
//! With `monitor = true` every rule is evaluated and every ban/lock/reject raises an
//! [`Alert`] (with `enforced: false`), but `observe` returns `Pass`. Would-be bans and locks
//! are recorded as shadow records (listed by [`Detector::bans`] with `enforced: false`,
//! never reported by [`Detector::is_banned`]). A source with a shadow ban keeps being judged
//! like any other: every rule hit and every would-be ban counts ([`Detector::rule_hits`],
//! [`DetectStats::would_be_bans`]), and its messages count as would-be drops
//! ([`DetectStats::would_be_dropped`]), so the figures show what enforcing would have done.
//! A would-be ban of a source whose shadow ban is still running extends that record and
//! raises no alert: one alert per offender and shadow period, not one per message.
//!
//! # Malformed and oversized messages
//! A message the parser refused gets [`Verdict::Pass`] (the call core answers it with the
//! precise 4xx/5xx) unless a rule bans. A message and its retransmissions count once: each
//! source keeps the keys of its last [`RECENT_KEYS`] counted messages (8 × 8 bytes, in its
//! counters, no allocation). Every malformed message counts toward the flood rule like any
//! request. Beyond that:
//! - a source without an authentication pass counts it as a failure (the auth-failure
//!   rule: 10 within 10 min ban), as before;
//! - a source that authenticated recently (a phone, or an office behind NAT) is never
//!   banned for it: the first raises an alert (at most one per source per
//!   `auth_source.window_ms`), and past `KNOWN_ANSWER_FACTOR` × `auth_source.limit` within
//!   that window they are dropped unanswered (rate-limited), still without a ban. Only a
//!   flood (the flood rule, far beyond a phone's retransmissions, which do not count) bans.
//!
//! # Memory bound
//! Per-source counters live in an LRU table of `limits.max_sources` entries (100,000 by
//! default): a flood from a million spoofed addresses evicts the least recently seen sources
//! and the table never grows past the bound. Counters are fixed-size sliding windows (see
//! `window.rs`); the only per-source allocation is the enumeration set, made on a source's
//! first unknown-user event (`limit + 1` entries). Bans, locks, passes and alerts have their
//! own bounds ([`Limits`]). Nothing is allocated per message except the `reason` of a `Ban`
//! and the text of an alert, which happen once per offender.

mod config;
mod fingerprint;

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::{canonical, is_loopback};
use crate::table::{Expiring, ExpiryTable, LruTable};
use crate::window::{fnv1a, Distinct, Window};
use crate::Millis;

pub use config::{
    AccountRule, AuthSourceRule, ConnectionFloodRule, DetectConfig, EnumerationRule, FloodRule,
    Limits, RepeatRule, SanityRule, ScannerRule, UnknownHostRule,
};
pub use fingerprint::{header_names, MAX_HEADER_NAMES};

/// Most expired records purged per table by one [`Detector::handle_timeout`] call.
const PURGE_BUDGET: usize = 4_096;
/// Most secondary verdicts waiting for [`Detector::poll_verdict`].
const MAX_PENDING: usize = 64;
/// Largest enumeration limit honoured (bounds the per-source distinct set).
const MAX_ENUMERATION_LIMIT: u32 = 1_024;
/// Keys of recently counted malformed messages kept per source (retransmissions of one
/// message are counted once). 64 bytes per source.
pub const RECENT_KEYS: usize = 8;
/// An authenticated source's malformed messages are answered up to this many times the
/// auth-failure limit within its window, then dropped unanswered (never banned).
const KNOWN_ANSWER_FACTOR: u32 = 10;

/// Something the firewall saw or the call core reported.
#[derive(Debug, Clone, Copy)]
pub enum Observation<'a> {
    /// A SIP message that parsed, before it reaches the call core.
    Message {
        /// Transport source address.
        src: IpAddr,
        /// Size on the wire, bytes.
        size: usize,
        /// The request method; `None` for responses.
        method: Option<&'a str>,
        /// The User-Agent header.
        user_agent: Option<&'a str>,
        /// User part of the From URI.
        from_user: Option<&'a str>,
        /// User part of the To URI.
        to_user: Option<&'a str>,
        /// The From header's `tag` parameter (SIPVicious encodes its probes in it).
        from_tag: Option<&'a str>,
        /// Length of the Request-URI text, bytes (0 for responses).
        ruri_len: usize,
        /// Header names in wire order, as sent (see [`header_names`]).
        header_names: &'a [&'a str],
    },
    /// A message the wire parser refused. It is answered precisely by the call core unless
    /// the verdict drops it; see "Malformed and oversized messages".
    Malformed {
        /// Transport source address.
        src: IpAddr,
        /// Size on the wire, bytes.
        size: usize,
        /// Identifies the message and its retransmissions (hash of Call-ID, CSeq and
        /// top-Via branch, `sip::wire::retransmission_key`): counted once per source.
        key: Option<u64>,
        /// Refused for its size (message, header line, URI, header or Via count):
        /// counted under `oversized` rather than `malformed`.
        oversized: bool,
    },
    /// Wrong credentials for an existing user (not the first, credential-less challenge).
    AuthFailure {
        /// Transport source address.
        src: IpAddr,
        /// The user the credentials were for.
        user: &'a str,
    },
    /// A successful REGISTER/INVITE authentication: the source passes the unknown-host gate.
    AuthSuccess {
        /// Transport source address.
        src: IpAddr,
        /// The authenticated user.
        user: &'a str,
    },
    /// A request for or as a user that does not exist (after auth, or by Request-URI).
    UnknownUser {
        /// Transport source address.
        src: IpAddr,
        /// The user asked for.
        user: &'a str,
    },
    /// A failed login to one of the box's own services (SSH, the web admin page): counts
    /// like an auth failure of the source; a ban it tips names the service.
    LoginFailure {
        /// Client address.
        src: IpAddr,
        /// Which service refused the login.
        service: LoginService,
    },
    /// TCP/TLS connections of one source since its last report (the transports aggregate
    /// them, so a flood of connections costs one observation per report, not one each).
    Connections {
        /// Remote address of the connections.
        src: IpAddr,
        /// Connections accepted.
        opened: u32,
        /// Connections closed at accept because the source was at its concurrent cap.
        refused: u32,
    },
}

impl Observation<'_> {
    /// The source address the observation is about.
    pub fn src(&self) -> IpAddr {
        match *self {
            Observation::Message { src, .. }
            | Observation::Malformed { src, .. }
            | Observation::AuthFailure { src, .. }
            | Observation::AuthSuccess { src, .. }
            | Observation::UnknownUser { src, .. }
            | Observation::LoginFailure { src, .. }
            | Observation::Connections { src, .. } => src,
        }
    }
}

/// A service of the box's own that reports failed logins ([`Observation::LoginFailure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginService {
    /// The SSH server (dropbear).
    Ssh,
    /// The web admin page.
    Web,
    /// Desk-phone provisioning (a wrong phone password on `/provision/`).
    Provision,
}

impl LoginService {
    /// The name in alerts, logs and ban reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginService::Ssh => "ssh",
            LoginService::Web => "web",
            LoginService::Provision => "provision",
        }
    }
}

impl fmt::Display for LoginService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The detection rules, for verdicts, alerts, stored bans and hit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Per-source request flood.
    Flood,
    /// Unknown-host gate, reject stage (Drop).
    UnknownHost,
    /// Unknown-host gate, ban stage.
    UnknownHostFlood,
    /// Failures per source (auth, SSH, malformed, oversized).
    AuthFailures,
    /// Repeated bans within a day.
    RepeatOffender,
    /// Auth failures per account (the account locks).
    AccountGuessing,
    /// Distinct unknown users from one source.
    Enumeration,
    /// Scanner fingerprint.
    Scanner,
    /// A message the parser refused.
    Malformed,
    /// A message or Request-URI over the size limit.
    Oversized,
    /// Set by the admin, or imported once with `outpostctl fw import`.
    Manual,
    /// Requested by the toll-fraud policy for the source of a refused call.
    TollFraud,
    /// Listed by a blocklist feed (`[firewall] feeds`); lifted when it leaves the feed.
    Feed,
    /// Too many TCP/TLS connections refused at the per-source cap, or opened, in a window.
    ConnectionFlood,
}

impl Rule {
    /// Every rule, in the order [`Detector::rule_hits`] reports them.
    pub const ALL: [Rule; 14] = [
        Rule::Flood,
        Rule::UnknownHost,
        Rule::UnknownHostFlood,
        Rule::AuthFailures,
        Rule::RepeatOffender,
        Rule::AccountGuessing,
        Rule::Enumeration,
        Rule::Scanner,
        Rule::Malformed,
        Rule::Oversized,
        Rule::Manual,
        Rule::TollFraud,
        Rule::Feed,
        Rule::ConnectionFlood,
    ];

    /// The rule's name as in config and storage (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Flood => "flood",
            Rule::UnknownHost => "unknown_host",
            Rule::UnknownHostFlood => "unknown_host_flood",
            Rule::AuthFailures => "auth_failures",
            Rule::RepeatOffender => "repeat_offender",
            Rule::AccountGuessing => "account_guessing",
            Rule::Enumeration => "enumeration",
            Rule::Scanner => "scanner",
            Rule::Malformed => "malformed",
            Rule::Oversized => "oversized",
            Rule::Manual => "manual",
            Rule::TollFraud => "toll_fraud",
            Rule::Feed => "feed",
            Rule::ConnectionFlood => "connection_flood",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do about an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the message through / nothing to do.
    Pass,
    /// Drop this message (or answer it with an error); the source is not banned.
    Drop {
        /// The rule that dropped it (for a banned source: the rule that banned it).
        rule: Rule,
    },
    /// Ban the source: drop this message and everything from `addr` for `duration_ms`.
    Ban {
        /// The banned address (canonical: IPv4-mapped IPv6 is given as IPv4).
        addr: IpAddr,
        /// Ban length, ms.
        duration_ms: u64,
        /// The rule that banned (`RepeatOffender` when the ban was escalated).
        rule: Rule,
        /// Human-readable cause, for logs and the admin.
        reason: String,
    },
    /// Refuse authentication as `user` for `duration_ms` (the message itself passes).
    LockAccount {
        /// The locked account.
        user: String,
        /// Lock length, ms.
        duration_ms: u64,
        /// The rule that locked it.
        rule: Rule,
    },
}

impl Verdict {
    /// Whether the message must not reach the call core.
    pub fn drops_message(&self) -> bool {
        matches!(self, Verdict::Drop { .. } | Verdict::Ban { .. })
    }
}

/// One ban, for the admin, the store and the kernel set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    /// The banned address.
    pub addr: IpAddr,
    /// When the ban ends, ms since the epoch.
    pub until: Millis,
    /// The rule that banned.
    pub rule: Rule,
    /// Human-readable cause.
    pub reason: String,
    /// Bans of this address within the repeat window (the day), this one included.
    pub count_today: u32,
    /// False for a shadow ban recorded in monitor mode.
    pub enforced: bool,
}

/// One locked account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The account.
    pub user: String,
    /// When the lock ends, ms since the epoch.
    pub until: Millis,
    /// The rule that locked it.
    pub rule: Rule,
    /// False for a shadow lock recorded in monitor mode.
    pub enforced: bool,
}

/// A notable event for the admin and syslog: a ban, a lock, or the start of a reject period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// When, ms since the epoch.
    pub at: Millis,
    /// The rule that fired.
    pub rule: Rule,
    /// The source concerned, if any.
    pub addr: Option<IpAddr>,
    /// The account concerned, if any.
    pub user: Option<String>,
    /// Human-readable text.
    pub message: String,
    /// False in monitor mode: the action was not taken.
    pub enforced: bool,
}

/// Table sizes and counters for `outpostctl fw status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectStats {
    /// Sources with live counters.
    pub sources: usize,
    /// Sources holding an authentication pass.
    pub passes: usize,
    /// Ban records (active or kept as the day's history).
    pub ban_records: usize,
    /// Lock records.
    pub locks: usize,
    /// Messages dropped in user space because their source is banned.
    pub dropped_banned: u64,
    /// Alerts dropped because nobody drained `poll_alert`.
    pub alerts_dropped: u64,
    /// Monitor mode: bans and locks that enforcing would have made (each rule firing).
    pub would_be_bans: u64,
    /// Monitor mode: messages that enforcing would have dropped because their source was
    /// banned.
    pub would_be_dropped: u64,
}

/// Counters of one source.
#[derive(Debug, Default)]
struct SourceState {
    last_seen: Millis,
    flood: Window,
    gate_reject: Window,
    gate_ban: Window,
    failures: Window,
    conn_refused: Window,
    conn_opened: Window,
    rejected_until: Millis,
    /// A trunk peer a rule would have banned: rejected (and alerted) until then.
    peer_rejected_until: Millis,
    unknown_users: Option<Box<Distinct>>,
    /// Keys of the last counted malformed messages (0 = empty slot).
    recent: [u64; RECENT_KEYS],
    /// Next slot of `recent` to overwrite.
    recent_next: usize,
    /// Malformed messages of an authenticated source (rate limit, alert text).
    malformed: Window,
    /// No new malformed alert for this source before then.
    malformed_alert_until: Millis,
    /// No new alert for a wrong provisioning password of this (authenticated) source
    /// before then.
    provision_alert_until: Millis,
}

impl SourceState {
    /// Records `key`; false when it was already counted (a retransmission).
    fn first_time(&mut self, key: Option<u64>) -> bool {
        let Some(key) = key else {
            return true;
        };
        // 0 marks an empty slot; a real key of 0 is just never deduplicated.
        if key != 0 && self.recent.contains(&key) {
            return false;
        }
        self.recent[self.recent_next % RECENT_KEYS] = key;
        self.recent_next = (self.recent_next + 1) % RECENT_KEYS;
        true
    }
}

#[derive(Debug)]
struct BanRecord {
    until: Millis,
    rule: Rule,
    /// The rule whose threshold caused the latest ban (differs from `rule` when escalated).
    trigger: Rule,
    /// The service whose failed login tipped an `auth_failures` ban, if one did.
    login: Option<LoginService>,
    count_today: u32,
    day_start: Millis,
    forget_at: Millis,
    enforced: bool,
}

impl Expiring for BanRecord {
    fn forget_at(&self) -> Millis {
        self.forget_at
    }
}

#[derive(Debug)]
struct LockRecord {
    until: Millis,
    rule: Rule,
    enforced: bool,
}

impl Expiring for LockRecord {
    fn forget_at(&self) -> Millis {
        self.until
    }
}

/// The SIP-aware detector: per-source and per-account state, bans, locks and alerts.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    /// How long an idle source's counters can still matter.
    source_idle_ms: u64,
    sources: LruTable<IpAddr, SourceState>,
    /// Sources that authenticated successfully, with the end of their pass.
    passes: LruTable<IpAddr, Millis>,
    /// Account failure windows, keyed by the hash of the user name.
    accounts: LruTable<u64, Window>,
    bans: ExpiryTable<IpAddr, BanRecord>,
    locks: ExpiryTable<String, LockRecord>,
    alerts: VecDeque<Alert>,
    pending: VecDeque<Verdict>,
    hits: [u64; Rule::ALL.len()],
    dropped_banned: u64,
    alerts_dropped: u64,
    would_be_bans: u64,
    would_be_dropped: u64,
}

impl Detector {
    /// A detector with no state.
    pub fn new(cfg: DetectConfig) -> Self {
        let l = &cfg.limits;
        let source_idle_ms = [
            cfg.flood.window_ms,
            cfg.unknown_host.reject_window_ms,
            cfg.unknown_host.ban_window_ms,
            cfg.unknown_host.reject_ms,
            cfg.auth_source.window_ms,
            cfg.enumeration.window_ms,
            cfg.connection_flood.window_ms,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        Detector {
            source_idle_ms,
            sources: LruTable::new(l.max_sources),
            passes: LruTable::new(l.max_passes),
            accounts: LruTable::new(l.max_accounts),
            bans: ExpiryTable::new(l.max_bans),
            locks: ExpiryTable::new(l.max_locks),
            alerts: VecDeque::new(),
            pending: VecDeque::new(),
            hits: [0; Rule::ALL.len()],
            dropped_banned: 0,
            alerts_dropped: 0,
            would_be_bans: 0,
            would_be_dropped: 0,
            cfg,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// New trunk peer addresses (never banned): a trunk's host resolved to other addresses,
    /// or the trunks changed.
    pub fn set_trunk_peers(&mut self, peers: Vec<IpAddr>) {
        self.cfg.trunk_peers = peers;
    }

    /// Judges one observation at `now`; see the module docs for the meaning of the result.
    pub fn observe(&mut self, now: Millis, obs: Observation<'_>) -> Verdict {
        let src = canonical(obs.src());
        if self.is_trusted(src) {
            return match obs {
                Observation::AuthFailure { user, .. } => {
                    self.account_failure(now, user).unwrap_or(Verdict::Pass)
                }
                _ => Verdict::Pass,
            };
        }
        if let Some(ban) = self.bans.get(&src).filter(|b| b.until > now) {
            let dropped = matches!(
                obs,
                Observation::Message { .. } | Observation::Malformed { .. }
            );
            if ban.enforced {
                if !dropped {
                    return Verdict::Pass;
                }
                let rule = ban.rule;
                self.dropped_banned += 1;
                return Verdict::Drop { rule };
            }
            // A shadow ban (monitor mode): enforcing would drop this message; count that,
            // then judge it like any other so the rules keep counting.
            if dropped {
                self.would_be_dropped += 1;
            }
        }
        match obs {
            Observation::Message {
                size,
                method,
                user_agent,
                from_tag,
                ruri_len,
                header_names,
                ..
            } => self.on_message(
                now,
                src,
                size,
                method,
                user_agent,
                from_tag,
                ruri_len,
                header_names,
            ),
            Observation::Malformed { key, oversized, .. } => {
                let rule = if oversized {
                    Rule::Oversized
                } else {
                    Rule::Malformed
                };
                self.fault(now, src, rule, key, true)
            }
            Observation::AuthFailure { user, .. } => {
                let source = self.failure(now, src, Rule::AuthFailures, None);
                match (source, self.account_failure(now, user)) {
                    (Verdict::Pass, Some(lock)) => lock,
                    (source, Some(lock)) => {
                        if self.pending.len() >= MAX_PENDING {
                            self.pending.pop_front();
                        }
                        self.pending.push_back(lock);
                        source
                    }
                    (source, None) => source,
                }
            }
            // A success does not forgive the account's failures: a lock costs the phones
            // that authenticate nothing (the core exempts them), and forgiving let a guesser
            // hide under the real phone's re-registrations.
            Observation::AuthSuccess { .. } => {
                let pass_until = now.saturating_add(self.cfg.unknown_host.pass_ms);
                *self.passes.get_or_insert_with(src, || pass_until) = pass_until;
                if let Some(st) = self.sources.get_mut(&src) {
                    st.last_seen = st.last_seen.max(now);
                    st.rejected_until = 0;
                    st.gate_reject = Window::default();
                    st.gate_ban = Window::default();
                }
                Verdict::Pass
            }
            Observation::UnknownUser { user, .. } => self.unknown_user(now, src, user),
            Observation::LoginFailure {
                service: LoginService::Provision,
                ..
            } if self.passes.peek(&src).is_some_and(|&until| until > now) => {
                self.stale_provisioning(now, src)
            }
            Observation::LoginFailure { service, .. } => {
                self.failure(now, src, Rule::AuthFailures, Some(service))
            }
            Observation::Connections {
                opened, refused, ..
            } => self.connections(now, src, opened, refused),
        }
    }

    /// Bans `addr` on request (the admin, or the toll-fraud policy with `Rule::TollFraud`),
    /// like a rule would: trusted sources are never banned (`Pass`), monitor mode records a
    /// shadow ban, repeat offenders escalate, an alert is raised.
    pub fn ban_source(
        &mut self,
        now: Millis,
        addr: IpAddr,
        rule: Rule,
        duration_ms: u64,
        reason: &str,
    ) -> Verdict {
        let addr = canonical(addr);
        if self.is_trusted(addr) {
            return Verdict::Pass;
        }
        self.ban(now, addr, rule, duration_ms, reason.to_string())
    }

    /// A secondary verdict queued by the last `observe` (see the module docs).
    pub fn poll_verdict(&mut self) -> Option<Verdict> {
        self.pending.pop_front()
    }

    /// The next alert, oldest first.
    pub fn poll_alert(&mut self) -> Option<Alert> {
        self.alerts.pop_front()
    }

    /// Whether `ip` is banned at `now` (shadow bans in monitor mode do not count).
    pub fn is_banned(&self, now: Millis, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.is_trusted(ip)
            && self
                .bans
                .get(&ip)
                .is_some_and(|b| b.enforced && b.until > now)
    }

    /// Whether `user` is locked at `now` (shadow locks in monitor mode do not count).
    pub fn is_locked(&self, now: Millis, user: &str) -> bool {
        self.locks
            .get(user)
            .is_some_and(|l| l.enforced && l.until > now)
    }

    /// Lifts the ban on `ip` and forgets every counter of it (including the day's ban
    /// history), so old counts cannot ban it again. Returns whether a ban record existed.
    pub fn unban(&mut self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.sources.remove(&ip);
        self.bans.remove(&ip).is_some()
    }

    /// Lifts the lock on `user` and forgets its failure count. Returns whether it was locked.
    pub fn unlock(&mut self, user: &str) -> bool {
        self.accounts.remove(&fnv1a(user.as_bytes()));
        self.locks.remove(user).is_some()
    }

    /// Bans in force at `now` (including monitor-mode shadow bans), soonest to end first.
    pub fn bans(&self, now: Millis) -> Vec<BanInfo> {
        let mut out: Vec<BanInfo> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(&addr, b)| BanInfo {
                addr,
                until: b.until,
                rule: b.rule,
                reason: ban_reason(b),
                count_today: b.count_today,
                enforced: b.enforced,
            })
            .collect();
        out.sort_by_key(|b| (b.until, b.addr));
        out
    }

    /// The lock of `user` in force at `now` (a monitor-mode shadow lock included).
    pub fn lock_of(&self, now: Millis, user: &str) -> Option<LockInfo> {
        self.locks
            .get(user)
            .filter(|l| l.until > now)
            .map(|l| LockInfo {
                user: user.to_string(),
                until: l.until,
                rule: l.rule,
                enforced: l.enforced,
            })
    }

    /// Accounts locked at `now` (including monitor-mode shadow locks), soonest to end first.
    pub fn locks(&self, now: Millis) -> Vec<LockInfo> {
        let mut out: Vec<LockInfo> = self
            .locks
            .iter()
            .filter(|(_, l)| l.until > now)
            .map(|(user, l)| LockInfo {
                user: user.clone(),
                until: l.until,
                rule: l.rule,
                enforced: l.enforced,
            })
            .collect();
        out.sort_by(|a, b| (a.until, &a.user).cmp(&(b.until, &b.user)));
        out
    }

    /// Re-applies a ban from the store (after a reboot) or from the admin / a blocklist feed
    /// (`rule = Manual`). Ignored when it has already ended or `addr` is trusted; no alert.
    pub fn restore_ban(
        &mut self,
        now: Millis,
        addr: IpAddr,
        until: Millis,
        rule: Rule,
        count_today: u32,
    ) {
        let addr = canonical(addr);
        if until <= now || self.is_trusted(addr) || self.is_trunk_peer(addr) {
            return;
        }
        let forget_at = until.max(now.saturating_add(self.cfg.repeat.window_ms));
        self.bans.insert(
            addr,
            BanRecord {
                until,
                rule,
                trigger: rule,
                login: None,
                count_today: count_today.max(1),
                day_start: now,
                forget_at,
                enforced: !self.cfg.monitor,
            },
        );
        self.sources.remove(&addr);
    }

    /// Re-applies an account lock from the store. Ignored when it has already ended.
    pub fn restore_lock(&mut self, now: Millis, user: &str, until: Millis, rule: Rule) {
        if until <= now {
            return;
        }
        self.locks.insert(
            user.to_string(),
            LockRecord {
                until,
                rule,
                enforced: !self.cfg.monitor,
            },
        );
    }

    /// How often each rule fired (bans, locks, dropped messages), in [`Rule::ALL`] order.
    pub fn rule_hits(&self) -> Vec<(Rule, u64)> {
        Rule::ALL
            .iter()
            .map(|&r| (r, self.hits[r.index()]))
            .collect()
    }

    /// Table sizes and drop counters.
    pub fn stats(&self) -> DetectStats {
        DetectStats {
            sources: self.sources.len(),
            passes: self.passes.len(),
            ban_records: self.bans.len(),
            locks: self.locks.len(),
            dropped_banned: self.dropped_banned,
            alerts_dropped: self.alerts_dropped,
            would_be_bans: self.would_be_bans,
            would_be_dropped: self.would_be_dropped,
        }
    }

    /// When [`Detector::handle_timeout`] next has work: a ban, lock or pass ending, or idle
    /// counters to forget. `None` when all tables are empty.
    pub fn poll_timeout(&self) -> Option<Millis> {
        [
            self.bans.next_expiry(),
            self.locks.next_expiry(),
            self.passes.oldest().map(|(_, &until)| until),
            self.sources
                .oldest()
                .map(|(_, s)| s.last_seen.saturating_add(self.source_idle_ms)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Forgets what has expired by `now`. Work per call is bounded; if more remains,
    /// `poll_timeout` returns a time `<= now` again.
    pub fn handle_timeout(&mut self, now: Millis) {
        let bans = self.bans.expire(now, PURGE_BUDGET);
        let locks = self.locks.expire(now, PURGE_BUDGET);
        let mut passes = 0;
        while passes < PURGE_BUDGET && self.passes.oldest().is_some_and(|(_, &until)| until <= now)
        {
            self.passes.pop_oldest();
            passes += 1;
        }
        let mut sources = 0;
        while sources < PURGE_BUDGET
            && self
                .sources
                .oldest()
                .is_some_and(|(_, s)| s.last_seen.saturating_add(self.source_idle_ms) <= now)
        {
            self.sources.pop_oldest();
            sources += 1;
        }
        if bans + locks + passes + sources > 0 {
            tracing::debug!(
                bans,
                locks,
                passes,
                sources,
                "firewall: expired state purged"
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_message(
        &mut self,
        now: Millis,
        src: IpAddr,
        size: usize,
        method: Option<&str>,
        user_agent: Option<&str>,
        from_tag: Option<&str>,
        ruri_len: usize,
        header_names: &[&str],
    ) -> Verdict {
        if let Some(hit) = fingerprint::scan(&self.cfg.scanner, user_agent, from_tag, header_names)
        {
            let reason = hit.describe();
            return self.ban(now, src, Rule::Scanner, self.cfg.scanner.ban_ms, reason);
        }
        if size > self.cfg.sanity.max_message || ruri_len > self.cfg.sanity.max_ruri {
            return self.fault(now, src, Rule::Oversized, None, false);
        }

        let has_pass = self.passes.peek(&src).is_some_and(|&until| until > now);
        let flood = self.cfg.flood.clone();
        let gate = self.cfg.unknown_host.clone();
        let st = self.source(now, src);
        if method.is_some() && flood.limit > 0 {
            let n = st.flood.add(now, flood.window_ms, 1);
            if n >= flood.limit {
                let reason = format!("{n} requests within {}", fmt_ms(flood.window_ms));
                return self.ban(now, src, Rule::Flood, flood.ban_ms, reason);
            }
        }
        if has_pass {
            return Verdict::Pass;
        }
        let to_ban =
            gate.ban_limit > 0 && st.gate_ban.add(now, gate.ban_window_ms, 1) >= gate.ban_limit;
        let seen = st.gate_reject.add(now, gate.reject_window_ms, 1);
        if to_ban {
            let reason = format!(
                "{} messages within {} before authenticating",
                gate.ban_limit,
                fmt_ms(gate.ban_window_ms)
            );
            return self.ban(now, src, Rule::UnknownHostFlood, gate.ban_ms, reason);
        }
        if st.rejected_until > now {
            return self.drop_message(Rule::UnknownHost);
        }
        if gate.reject_limit > 0 && seen >= gate.reject_limit {
            st.rejected_until = now.saturating_add(gate.reject_ms);
            let message = format!(
                "reject {src} for {}: {seen} messages within {} before authenticating",
                fmt_ms(gate.reject_ms),
                fmt_ms(gate.reject_window_ms)
            );
            self.alert(now, Rule::UnknownHost, Some(src), None, message);
            return self.drop_message(Rule::UnknownHost);
        }
        Verdict::Pass
    }

    /// Counts a malformed or oversized message of `src` (see "Malformed and oversized
    /// messages"). `answerable`: the core can answer it (a parse error); otherwise (a
    /// parsed message over the sanity limits) the non-ban verdict drops it.
    fn fault(
        &mut self,
        now: Millis,
        src: IpAddr,
        rule: Rule,
        key: Option<u64>,
        answerable: bool,
    ) -> Verdict {
        let known = self.passes.peek(&src).is_some_and(|&until| until > now);
        let flood = self.cfg.flood.clone();
        let r = self.cfg.auth_source.clone();
        let st = self.source(now, src);
        if !st.first_time(key) {
            // A retransmission of a message already counted: answer it again, count nothing.
            return if answerable {
                Verdict::Pass
            } else {
                self.drop_message(rule)
            };
        }
        if flood.limit > 0 {
            let n = st.flood.add(now, flood.window_ms, 1);
            if n >= flood.limit {
                self.hit(rule);
                let reason = format!(
                    "{n} messages within {} (malformed)",
                    fmt_ms(flood.window_ms)
                );
                return self.ban(now, src, Rule::Flood, flood.ban_ms, reason);
            }
        }
        if known {
            let n = st.malformed.add(now, r.window_ms, 1);
            let alert = st.malformed_alert_until <= now;
            if alert {
                st.malformed_alert_until = now.saturating_add(r.window_ms);
            }
            let limit = r.limit.saturating_mul(KNOWN_ANSWER_FACTOR);
            if alert {
                let message = format!(
                    "{rule} message from {src}, which authenticated recently: answered, \
                     not banned ({n} within {})",
                    fmt_ms(r.window_ms)
                );
                self.alert(now, rule, Some(src), None, message);
            }
            return if answerable && (limit == 0 || n <= limit) {
                self.hit(rule);
                Verdict::Pass
            } else {
                self.drop_message(rule)
            };
        }
        if r.limit > 0 {
            let n = st.failures.add(now, r.window_ms, 1);
            if n >= r.limit {
                self.hit(rule);
                let reason = format!(
                    "{n} failures (auth, malformed, oversized) within {}",
                    fmt_ms(r.window_ms)
                );
                return self.ban(now, src, Rule::AuthFailures, r.ban_ms, reason);
            }
        }
        if answerable {
            self.hit(rule);
            Verdict::Pass
        } else {
            self.drop_message(rule)
        }
    }

    /// A wrong provisioning password from a source that authenticated over SIP recently: a
    /// desk phone polling with the credentials of an earlier `phone add` (or the office's
    /// NAT address it shares). The password is generated (24 random characters), so
    /// counting it towards a ban protects nothing and would ban the phone's own SIP:
    /// refused (by the caller), alerted once per `auth_source` window, never counted.
    fn stale_provisioning(&mut self, now: Millis, src: IpAddr) -> Verdict {
        let window = self.cfg.auth_source.window_ms;
        let st = self.source(now, src);
        if st.provision_alert_until > now {
            return Verdict::Pass;
        }
        st.provision_alert_until = now.saturating_add(window);
        let message = format!(
            "provisioning fetch with a wrong phone password from {src}, which authenticated \
             recently: refused, not counted (a phone with stale credentials? `phone list`)"
        );
        self.alert(now, Rule::AuthFailures, Some(src), None, message);
        Verdict::Pass
    }

    /// Counts an auth, malformed or login failure of `src` (feedback: nothing to drop);
    /// `login` names the service when it was a failed login, for the ban's reason.
    fn failure(
        &mut self,
        now: Millis,
        src: IpAddr,
        rule: Rule,
        login: Option<LoginService>,
    ) -> Verdict {
        let r = self.cfg.auth_source.clone();
        if r.limit > 0 {
            let n = self.source(now, src).failures.add(now, r.window_ms, 1);
            if n >= r.limit {
                if rule != Rule::AuthFailures {
                    self.hit(rule);
                }
                let mut reason = format!(
                    "{n} failures (auth, malformed, oversized, logins) within {}",
                    fmt_ms(r.window_ms)
                );
                if let Some(service) = login {
                    reason.push_str(&format!(", the last a failed {service} login"));
                }
                let verdict = self.ban(now, src, Rule::AuthFailures, r.ban_ms, reason);
                // The record remembers the service so that `bans` can say it; a trunk peer
                // has no record (ban() only rejects it).
                if let Some(mut b) = self.bans.remove(&src) {
                    b.login = login;
                    // Re-inserting the record just removed cannot evict another.
                    self.bans.insert(src, b);
                }
                return verdict;
            }
        }
        match rule {
            Rule::AuthFailures => Verdict::Pass,
            other => self.drop_message(other),
        }
    }

    /// Counts an auth failure of `user`; the lock verdict when it reaches the limit.
    fn account_failure(&mut self, now: Millis, user: &str) -> Option<Verdict> {
        let r = self.cfg.auth_account.clone();
        let running = self.locks.get(user).filter(|l| l.until > now);
        if r.limit == 0 || running.is_some_and(|l| l.enforced) {
            return None;
        }
        let shadow = running.is_some();
        let key = fnv1a(user.as_bytes());
        let n = self
            .accounts
            .get_or_insert_with(key, Window::default)
            .add(now, r.window_ms, 1);
        if n < r.limit {
            return None;
        }
        self.accounts.remove(&key);
        let until = now.saturating_add(r.lock_ms);
        let enforced = !self.cfg.monitor;
        if !enforced {
            self.would_be_bans += 1;
        }
        if shadow {
            // Monitor mode, shadow lock running: count and extend it, no second alert.
            self.hit(Rule::AccountGuessing);
            self.locks.insert(
                user.to_string(),
                LockRecord {
                    until,
                    rule: Rule::AccountGuessing,
                    enforced,
                },
            );
            return None;
        }
        self.locks.insert(
            user.to_string(),
            LockRecord {
                until,
                rule: Rule::AccountGuessing,
                enforced,
            },
        );
        self.hit(Rule::AccountGuessing);
        let message = format!(
            "lock account {user:?} for {}: {n} auth failures within {}",
            fmt_ms(r.lock_ms),
            fmt_ms(r.window_ms)
        );
        self.alert(now, Rule::AccountGuessing, None, Some(user), message);
        enforced.then(|| Verdict::LockAccount {
            user: user.to_string(),
            duration_ms: r.lock_ms,
            rule: Rule::AccountGuessing,
        })
    }

    fn unknown_user(&mut self, now: Millis, src: IpAddr, user: &str) -> Verdict {
        let r = self.cfg.enumeration.clone();
        if r.limit == 0 {
            return Verdict::Pass;
        }
        let limit = r.limit.min(MAX_ENUMERATION_LIMIT);
        let cap = limit as usize + 1;
        let st = self.source(now, src);
        let set = st
            .unknown_users
            .get_or_insert_with(|| Box::new(Distinct::new(cap)));
        let n = set.add(now, r.window_ms, fnv1a(user.as_bytes()));
        if n > limit as usize {
            let reason = format!("{n} distinct unknown users within {}", fmt_ms(r.window_ms));
            return self.ban(now, src, Rule::Enumeration, r.ban_ms, reason);
        }
        Verdict::Pass
    }

    /// Counts a source's opened and refused connections; bans at the rule's limits (times
    /// `authenticated_factor` for a source holding an authentication pass).
    fn connections(&mut self, now: Millis, src: IpAddr, opened: u32, refused: u32) -> Verdict {
        let r = self.cfg.connection_flood.clone();
        if opened == 0 && refused == 0 {
            return Verdict::Pass;
        }
        let authenticated = self.passes.peek(&src).is_some_and(|&until| until > now);
        let factor = if authenticated {
            r.authenticated_factor.max(1)
        } else {
            1
        };
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        let st = self.source(now, src);
        let n_refused = st.conn_refused.add(now, r.window_ms, clamp(refused));
        let n_opened = st.conn_opened.add(now, r.window_ms, clamp(opened));
        let refused_limit = r.refused_limit.saturating_mul(factor);
        let open_limit = r.open_limit.saturating_mul(factor);
        let who = if authenticated {
            " (authenticated recently)"
        } else {
            ""
        };
        let reason = if r.refused_limit > 0 && n_refused >= refused_limit {
            format!(
                "{n_refused} TCP/TLS connections refused at the per-source cap within {}{who}",
                fmt_ms(r.window_ms)
            )
        } else if r.open_limit > 0 && n_opened >= open_limit {
            format!(
                "{n_opened} TCP/TLS connections opened within {}{who}",
                fmt_ms(r.window_ms)
            )
        } else {
            return Verdict::Pass;
        };
        self.ban(now, src, Rule::ConnectionFlood, r.ban_ms, reason)
    }

    /// Records a ban of `src` (escalated for repeat offenders), raises the alert, resets
    /// the source's counters.
    fn ban(
        &mut self,
        now: Millis,
        src: IpAddr,
        rule: Rule,
        ban_ms: u64,
        reason: String,
    ) -> Verdict {
        if self.is_trunk_peer(src) {
            return self.reject_trunk_peer(now, src, rule, ban_ms, &reason);
        }
        let repeat = self.cfg.repeat.clone();
        let (count, day_start) = match self.bans.get(&src) {
            Some(prev) if now < prev.day_start.saturating_add(repeat.window_ms) => {
                (prev.count_today.saturating_add(1), prev.day_start)
            }
            _ => (1, now),
        };
        if self.cfg.monitor {
            self.would_be_bans += 1;
            if let Some(prev) = self.bans.get(&src).filter(|b| !b.enforced && b.until > now) {
                // A shadow ban is running: enforcing would have dropped everything until it
                // ends, so this firing is counted and extends it, without escalating (a
                // banned source cannot be banned again) or a second alert.
                let record = BanRecord {
                    until: prev.until.max(now.saturating_add(ban_ms)),
                    rule: prev.rule,
                    trigger: prev.trigger,
                    login: prev.login,
                    count_today: prev.count_today,
                    day_start: prev.day_start,
                    forget_at: prev.forget_at.max(now.saturating_add(ban_ms)),
                    enforced: false,
                };
                self.hit(rule);
                self.bans.insert(src, record);
                self.sources.remove(&src);
                return Verdict::Pass;
            }
        }
        let escalate = repeat.bans > 0 && count >= repeat.bans;
        let (effective, duration_ms, reason) = if escalate {
            (
                Rule::RepeatOffender,
                repeat.ban_ms.max(ban_ms),
                format!(
                    "{reason}; repeat offender: ban {count} within {}",
                    fmt_ms(repeat.window_ms)
                ),
            )
        } else {
            (rule, ban_ms, reason)
        };
        self.hit(rule);
        if escalate {
            self.hit(Rule::RepeatOffender);
        }
        let until = now.saturating_add(duration_ms);
        let enforced = !self.cfg.monitor;
        self.bans.insert(
            src,
            BanRecord {
                until,
                rule: effective,
                trigger: rule,
                login: None,
                count_today: count,
                day_start,
                forget_at: until.max(day_start.saturating_add(repeat.window_ms)),
                enforced,
            },
        );
        self.sources.remove(&src);
        let message = format!("ban {src} for {}: {reason}", fmt_ms(duration_ms));
        self.alert(now, effective, Some(src), None, message);
        if enforced {
            Verdict::Ban {
                addr: src,
                duration_ms,
                rule: effective,
                reason,
            }
        } else {
            Verdict::Pass
        }
    }

    fn drop_message(&mut self, rule: Rule) -> Verdict {
        self.hit(rule);
        if self.cfg.monitor {
            Verdict::Pass
        } else {
            Verdict::Drop { rule }
        }
    }

    fn source(&mut self, now: Millis, src: IpAddr) -> &mut SourceState {
        let st = self.sources.get_or_insert_with(src, SourceState::default);
        st.last_seen = st.last_seen.max(now);
        st
    }

    /// A trunk peer that a rule would ban: its messages are dropped in user space for
    /// `ban_ms` (the unknown-host gate's reject state), with one alert per rejection; no
    /// ban record, so neither the kernel nor `is_banned` ever sees it.
    fn reject_trunk_peer(
        &mut self,
        now: Millis,
        src: IpAddr,
        rule: Rule,
        ban_ms: u64,
        reason: &str,
    ) -> Verdict {
        self.hit(rule);
        let st = self.source(now, src);
        let fresh = st.peer_rejected_until <= now;
        let until = now.saturating_add(ban_ms);
        st.peer_rejected_until = st.peer_rejected_until.max(until);
        st.rejected_until = st.rejected_until.max(until);
        if fresh {
            let message = format!(
                "trunk peer {src} not banned (trunk peers never are): its requests that are \
                 not the trunk's own are dropped for {}: {reason}",
                fmt_ms(ban_ms)
            );
            self.alert(now, rule, Some(src), None, message);
        }
        if self.cfg.monitor {
            Verdict::Pass
        } else {
            Verdict::Drop { rule }
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        is_loopback(ip) || self.cfg.allow.iter().any(|c| c.contains(ip))
    }

    fn is_trunk_peer(&self, ip: IpAddr) -> bool {
        self.cfg.trunk_peers.iter().any(|&p| canonical(p) == ip)
    }

    fn hit(&mut self, rule: Rule) {
        self.hits[rule.index()] += 1;
    }

    fn alert(
        &mut self,
        now: Millis,
        rule: Rule,
        addr: Option<IpAddr>,
        user: Option<&str>,
        message: String,
    ) {
        if self.alerts.len() >= self.cfg.limits.max_alerts.max(1) {
            self.alerts.pop_front();
            self.alerts_dropped += 1;
        }
        self.alerts.push_back(Alert {
            at: now,
            rule,
            addr,
            user: user.map(str::to_string),
            message,
            enforced: !self.cfg.monitor,
        });
    }
}

fn ban_reason(b: &BanRecord) -> String {
    let what = match b.trigger {
        Rule::Flood => "request flood",
        Rule::UnknownHost | Rule::UnknownHostFlood => "messages before authenticating",
        Rule::AuthFailures => "too many failures (auth, malformed, oversized)",
        Rule::RepeatOffender => "repeat offender",
        Rule::AccountGuessing => "account guessing",
        Rule::Enumeration => "extension enumeration",
        Rule::Scanner => "scanner fingerprint",
        Rule::Malformed => "malformed messages",
        Rule::Oversized => "oversized messages",
        Rule::Manual => "banned by the admin or a blocklist",
        Rule::TollFraud => "toll fraud",
        Rule::Feed => "listed by a blocklist feed",
        Rule::ConnectionFlood => "TCP/TLS connection flood",
    };
    let what = match b.login {
        Some(service) if b.trigger == Rule::AuthFailures => {
            format!("{what}, the last a failed {service} login")
        }
        _ => what.to_string(),
    };
    if b.rule == Rule::RepeatOffender && b.trigger != Rule::RepeatOffender {
        format!(
            "repeat offender ({} bans today), last: {what}",
            b.count_today
        )
    } else {
        what
    }
}

/// A duration for humans: `300 s`, `10 min`, `24 h`, `7 d` (alert texts, rule tables).
pub fn fmt_ms(ms: u64) -> String {
    const S: u64 = 1_000;
    match ms {
        0 => "0 s".to_string(),
        m if m % (86_400 * S) == 0 && m >= 2 * 86_400 * S => format!("{} d", m / (86_400 * S)),
        m if m % (3_600 * S) == 0 => format!("{} h", m / (3_600 * S)),
        m if m % (60 * S) == 0 && m >= 10 * 60 * S => format!("{} min", m / (60 * S)),
        m if m % S == 0 => format!("{} s", m / S),
        m => format!("{m} ms"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use crate::net::Cidr;

    const SECOND: u64 = 1_000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const T0: Millis = 1_700_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn msg<'a>(src: IpAddr, method: Option<&'a str>, ua: Option<&'a str>) -> Observation<'a> {
        Observation::Message {
            src,
            size: 600,
            method,
            user_agent: ua,
            from_user: Some("100"),
            to_user: Some("100"),
            from_tag: Some("as6151ad25"),
            ruri_len: 30,
            header_names: &[],
        }
    }

    fn request(src: IpAddr) -> Observation<'static> {
        msg(src, Some("REGISTER"), Some("Yealink SIP-T46S"))
    }

    fn response(src: IpAddr) -> Observation<'static> {
        msg(src, None, Some("Yealink SIP-T46S"))
    }

    fn auth_fail(src: IpAddr, user: &str) -> Observation<'_> {
        Observation::AuthFailure { src, user }
    }

    /// A detector where only the rule under test can fire in the way the test drives it.
    fn quiet_gate() -> DetectConfig {
        let mut c = DetectConfig::default();
        c.unknown_host.reject_limit = 0;
        c.unknown_host.ban_limit = 0;
        c
    }

    fn ban_rule(v: &Verdict) -> Option<(Rule, u64)> {
        match v {
            Verdict::Ban {
                rule, duration_ms, ..
            } => Some((*rule, *duration_ms)),
            _ => None,
        }
    }

    #[test]
    fn flood_bans_on_the_16th_request_within_2s() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("198.51.100.7");
        d.observe(T0, Observation::AuthSuccess { src, user: "100" });
        for i in 0..15 {
            assert_eq!(
                d.observe(T0 + i * 10, request(src)),
                Verdict::Pass,
                "request {}",
                i + 1
            );
        }
        // Responses are not requests.
        for _ in 0..20 {
            assert_eq!(d.observe(T0 + 200, response(src)), Verdict::Pass);
        }
        let v = d.observe(T0 + 300, request(src));
        assert_eq!(ban_rule(&v), Some((Rule::Flood, 300 * SECOND)));
        assert!(d.is_banned(T0 + 301, src));
        assert_eq!(
            d.observe(T0 + 400, request(src)),
            Verdict::Drop { rule: Rule::Flood }
        );
        assert!(!d.is_banned(T0 + 300 + 300 * SECOND, src));
        assert_eq!(d.stats().dropped_banned, 1);
    }

    #[test]
    fn a_steady_phone_is_not_a_flood() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("198.51.100.8");
        d.observe(T0, Observation::AuthSuccess { src, user: "100" });
        // 5 requests per second for ten minutes: under 16 per 2 s.
        for i in 0..3_000 {
            assert_eq!(d.observe(T0 + i * 200, request(src)), Verdict::Pass);
        }
    }

    #[test]
    fn unknown_host_is_rejected_at_10_then_banned_at_50() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("203.0.113.50");
        // Responses so that the flood rule stays out of the way.
        for i in 0..9 {
            assert_eq!(
                d.observe(T0 + i, response(src)),
                Verdict::Pass,
                "message {}",
                i + 1
            );
        }
        assert_eq!(
            d.observe(T0 + 9, response(src)),
            Verdict::Drop {
                rule: Rule::UnknownHost
            }
        );
        let alert = d.poll_alert().unwrap();
        assert_eq!((alert.rule, alert.addr), (Rule::UnknownHost, Some(src)));
        // Rejected for 5 minutes, even for a single quiet message.
        assert_eq!(
            d.observe(T0 + 4 * MINUTE, response(src)),
            Verdict::Drop {
                rule: Rule::UnknownHost
            }
        );
        assert!(d.poll_alert().is_none(), "one alert per reject period");
        // Afterwards the count starts over.
        assert_eq!(d.observe(T0 + 10 * MINUTE, response(src)), Verdict::Pass);
        assert!(!d.is_banned(T0 + 10 * MINUTE, src));

        // 50 messages within 10 s ban for 24 h (the 49th does not).
        let src = ip("203.0.113.51");
        for i in 0..49 {
            let v = d.observe(T0 + i * 200, response(src));
            assert!(ban_rule(&v).is_none(), "message {} banned", i + 1);
        }
        let v = d.observe(T0 + 49 * 200, response(src));
        assert_eq!(ban_rule(&v), Some((Rule::UnknownHostFlood, DAY)));
    }

    #[test]
    fn a_successful_auth_passes_the_unknown_host_gate() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("203.0.113.60");
        for i in 0..9 {
            assert_eq!(d.observe(T0 + i, response(src)), Verdict::Pass);
        }
        d.observe(T0 + 10, Observation::AuthSuccess { src, user: "100" });
        for i in 0..200 {
            assert_eq!(d.observe(T0 + 100 + i * 500, request(src)), Verdict::Pass);
        }
        // Even a rejected source is let in by a successful authentication.
        let other = ip("203.0.113.61");
        for i in 0..10 {
            d.observe(T0 + i, response(other));
        }
        assert!(d.observe(T0 + 20, response(other)).drops_message());
        d.observe(
            T0 + 30,
            Observation::AuthSuccess {
                src: other,
                user: "101",
            },
        );
        assert_eq!(d.observe(T0 + 40, response(other)), Verdict::Pass);
        // The pass ends: the gate applies again.
        let later = T0 + 3 * HOUR;
        for i in 0..9 {
            assert_eq!(d.observe(later + i, response(src)), Verdict::Pass);
        }
        assert!(d.observe(later + 9, response(src)).drops_message());
    }

    #[test]
    fn the_10th_auth_failure_bans_the_9th_does_not() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.10");
        for i in 0..9 {
            // Different users: the account rule stays below its limit.
            let user = format!("u{i}");
            assert_eq!(
                d.observe(T0 + i * MINUTE, auth_fail(src, &user)),
                Verdict::Pass
            );
        }
        let v = d.observe(T0 + 9 * MINUTE, auth_fail(src, "u9"));
        assert_eq!(ban_rule(&v), Some((Rule::AuthFailures, 10 * MINUTE)));
        assert!(d.is_banned(T0 + 9 * MINUTE, src));
        assert!(!d.is_banned(T0 + 19 * MINUTE, src));
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.11");
        for i in 0..9 {
            d.observe(T0 + i, auth_fail(src, &format!("a{i}")));
        }
        // Eleven minutes later the nine are gone.
        for i in 0..9 {
            let v = d.observe(T0 + 11 * MINUTE + i, auth_fail(src, &format!("b{i}")));
            assert_eq!(v, Verdict::Pass);
        }
    }

    #[test]
    fn ssh_failures_count_like_sip_guessing() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.12");
        for i in 0..5 {
            d.observe(
                T0 + i,
                Observation::LoginFailure {
                    src,
                    service: LoginService::Ssh,
                },
            );
            d.observe(T0 + i, auth_fail(src, &format!("x{i}")));
        }
        assert!(d.is_banned(T0 + 10, src));
        // The last failure was SIP: the reason does not blame SSH.
        assert!(!d.bans(T0 + 10)[0].reason.contains("ssh"));
    }

    #[test]
    fn web_login_failures_ban_and_the_reason_names_the_service() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.7");
        let web = Observation::LoginFailure {
            src,
            service: LoginService::Web,
        };
        for i in 0..9 {
            assert_eq!(d.observe(T0 + i, web), Verdict::Pass);
        }
        assert!(!d.is_banned(T0 + 9, src));
        let Verdict::Ban { rule, reason, .. } = d.observe(T0 + 9, web) else {
            panic!("the tenth failed login bans");
        };
        assert_eq!(rule, Rule::AuthFailures);
        assert!(reason.contains("the last a failed web login"), "{reason}");
        let bans = d.bans(T0 + 10);
        assert_eq!(bans[0].addr, src);
        assert_eq!(
            bans[0].reason,
            "too many failures (auth, malformed, oversized), the last a failed web login"
        );
        let alert = d.poll_alert().expect("a ban raises an alert");
        assert!(
            alert.message.contains("failed web login"),
            "{}",
            alert.message
        );
    }

    #[test]
    fn a_phone_fetching_with_stale_provisioning_credentials_is_not_banned_a_stranger_is() {
        let mut d = Detector::new(quiet_gate());
        let phone = ip("192.0.2.21");
        let stranger = ip("192.0.2.22");
        let fetch = |src| Observation::LoginFailure {
            src,
            service: LoginService::Provision,
        };
        d.observe(
            T0,
            Observation::AuthSuccess {
                src: phone,
                user: "100",
            },
        );
        // A phone polling every few seconds for ten minutes with an old password.
        for i in 0..60 {
            assert_eq!(d.observe(T0 + 1 + i * 10_000, fetch(phone)), Verdict::Pass);
        }
        assert!(!d.is_banned(T0 + 600_001, phone));
        // One alert says so (rate-limited), none per fetch.
        let alerts: Vec<_> = std::iter::from_fn(|| d.poll_alert()).collect();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert!(
            alerts[0].message.contains("not counted"),
            "{}",
            alerts[0].message
        );
        // Its SIP and web failures still count: only the provisioning password is exempt.
        for i in 0..10 {
            d.observe(
                T0 + 700_000 + i,
                Observation::LoginFailure {
                    src: phone,
                    service: LoginService::Web,
                },
            );
        }
        assert!(d.is_banned(T0 + 700_010, phone));
        // A source that never authenticated is banned at the tenth wrong password.
        for i in 0..9 {
            assert_eq!(d.observe(T0 + i, fetch(stranger)), Verdict::Pass);
        }
        assert!(matches!(
            d.observe(T0 + 9, fetch(stranger)),
            Verdict::Ban { .. }
        ));
    }

    fn malformed(src: IpAddr, key: u64) -> Observation<'static> {
        Observation::Malformed {
            src,
            size: 100,
            key: Some(key),
            oversized: false,
        }
    }

    #[test]
    fn malformed_and_oversized_are_answered_and_count_as_failures() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.20");
        for i in 0..9 {
            // Passed on so the call core answers it precisely; counted.
            assert_eq!(d.observe(T0 + i * 300, malformed(src, i)), Verdict::Pass);
        }
        assert_eq!(d.rule_hits()[Rule::Malformed.index()].1, 9);
        let v = d.observe(T0 + 9 * 300, malformed(src, 9));
        assert_eq!(ban_rule(&v), Some((Rule::AuthFailures, 10 * MINUTE)));

        let src = ip("192.0.2.21");
        let mut big = request(src);
        if let Observation::Message { size, .. } = &mut big {
            *size = 16 * 1024;
        }
        assert_eq!(d.observe(T0, big), Verdict::Pass, "exactly 16 KiB is fine");
        if let Observation::Message { size, .. } = &mut big {
            *size = 16 * 1024 + 1;
        }
        assert_eq!(
            d.observe(T0 + 1, big),
            Verdict::Drop {
                rule: Rule::Oversized
            },
            "a parsed message over the limit is not handed on"
        );
        let mut long = request(src);
        if let Observation::Message { ruri_len, .. } = &mut long {
            *ruri_len = 512;
        }
        assert_eq!(d.observe(T0 + 2, long), Verdict::Pass);
        if let Observation::Message { ruri_len, .. } = &mut long {
            *ruri_len = 513;
        }
        assert_eq!(
            d.observe(T0 + 3, long),
            Verdict::Drop {
                rule: Rule::Oversized
            }
        );
        // Two oversized plus eight auth failures make ten.
        for i in 0..7 {
            assert_eq!(
                d.observe(T0 + 10 + i, auth_fail(src, &format!("o{i}"))),
                Verdict::Pass
            );
        }
        assert!(ban_rule(&d.observe(T0 + 20, auth_fail(src, "o7"))).is_some());
    }

    #[test]
    fn five_bans_in_a_day_make_a_week() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.30");
        let mut now = T0;
        for ban in 1..=5u32 {
            let mut last = Verdict::Pass;
            for i in 0..10 {
                last = d.observe(now + i, auth_fail(src, &format!("b{ban}-{i}")));
            }
            let (rule, dur) = ban_rule(&last).expect("banned");
            if ban < 5 {
                assert_eq!((rule, dur), (Rule::AuthFailures, 10 * MINUTE), "ban {ban}");
            } else {
                assert_eq!((rule, dur), (Rule::RepeatOffender, 7 * DAY), "ban {ban}");
                let info = d.bans(now + 10).pop().unwrap();
                assert_eq!((info.count_today, info.rule), (5, Rule::RepeatOffender));
                assert!(info.reason.contains("repeat offender"), "{}", info.reason);
            }
            // Wait out the ban (and the failure window) before the next round.
            now += 30 * MINUTE;
        }
        assert!(d.is_banned(now + 6 * DAY, src));
        let hits: Vec<_> = d.rule_hits().into_iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            hits,
            vec![(Rule::AuthFailures, 5), (Rule::RepeatOffender, 1)]
        );
    }

    #[test]
    fn bans_a_day_apart_do_not_escalate() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.31");
        for round in 0..6u64 {
            let now = T0 + round * 25 * HOUR;
            let mut last = Verdict::Pass;
            for i in 0..10 {
                last = d.observe(now + i, auth_fail(src, &format!("r{round}-{i}")));
            }
            assert_eq!(ban_rule(&last).map(|(r, _)| r), Some(Rule::AuthFailures));
        }
    }

    #[test]
    fn unban_clears_the_ban_and_the_counts() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.40");
        for i in 0..10 {
            d.observe(T0 + i, auth_fail(src, &format!("u{i}")));
        }
        assert!(d.is_banned(T0 + 10, src));
        assert!(d.unban(src));
        assert!(!d.is_banned(T0 + 10, src));
        assert!(d.bans(T0 + 10).is_empty());
        // One more failure does not re-ban it.
        assert_eq!(d.observe(T0 + 11, auth_fail(src, "v")), Verdict::Pass);

        // Counts below the threshold are forgotten too.
        let other = ip("192.0.2.41");
        for i in 0..9 {
            d.observe(T0 + i, auth_fail(other, &format!("w{i}")));
        }
        assert!(!d.unban(other));
        assert_eq!(d.observe(T0 + 20, auth_fail(other, "w9")), Verdict::Pass);

        // And so is the day's ban history: four bans, unban, next ban is not a week.
        let rep = ip("192.0.2.42");
        for round in 0..4u64 {
            for i in 0..10 {
                d.observe(
                    T0 + round * 30 * MINUTE + i,
                    auth_fail(rep, &format!("r{round}{i}")),
                );
            }
        }
        d.unban(rep);
        let mut last = Verdict::Pass;
        for i in 0..10 {
            last = d.observe(T0 + 3 * HOUR + i, auth_fail(rep, &format!("z{i}")));
        }
        assert_eq!(ban_rule(&last), Some((Rule::AuthFailures, 10 * MINUTE)));
    }

    #[test]
    fn three_failures_on_one_account_from_three_sources_lock_it() {
        let mut d = Detector::new(quiet_gate());
        let (a, b, c) = (ip("192.0.2.50"), ip("198.51.100.50"), ip("2001:db8::50"));
        assert_eq!(d.observe(T0, auth_fail(a, "200")), Verdict::Pass);
        assert_eq!(d.observe(T0 + SECOND, auth_fail(b, "200")), Verdict::Pass);
        assert!(!d.is_locked(T0 + SECOND, "200"));
        let v = d.observe(T0 + 2 * SECOND, auth_fail(c, "200"));
        assert_eq!(
            v,
            Verdict::LockAccount {
                user: "200".into(),
                duration_ms: 15 * MINUTE,
                rule: Rule::AccountGuessing
            }
        );
        assert!(d.is_locked(T0 + 3 * SECOND, "200"));
        assert!(!d.is_locked(T0 + 3 * SECOND, "201"));
        assert!(!d.is_locked(T0 + 2 * SECOND + 15 * MINUTE, "200"));
        let alert = d.poll_alert().unwrap();
        assert_eq!(
            (alert.rule, alert.user.as_deref()),
            (Rule::AccountGuessing, Some("200"))
        );
        // None of the sources is banned for it.
        assert!(!d.is_banned(T0 + 3 * SECOND, a));
        // unlock lifts it and forgets the count.
        d.observe(T0 + 20 * MINUTE, auth_fail(a, "300"));
        d.observe(T0 + 20 * MINUTE, auth_fail(a, "300"));
        d.observe(T0 + 20 * MINUTE, auth_fail(b, "300"));
        assert!(d.is_locked(T0 + 20 * MINUTE, "300"));
        assert!(d.unlock("300"));
        assert!(!d.is_locked(T0 + 20 * MINUTE, "300"));
        assert_eq!(
            d.observe(T0 + 21 * MINUTE, auth_fail(c, "300")),
            Verdict::Pass
        );
    }

    #[test]
    fn the_real_phones_successes_do_not_hide_a_guesser() {
        // Distributed guessing while the phone re-registers between the guesses: the
        // phone's successes do not forgive the guesses (the lock spares the phone anyway).
        let mut d = Detector::new(quiet_gate());
        let phone = ip("10.0.0.5");
        let guessers = [ip("192.0.2.51"), ip("192.0.2.52"), ip("192.0.2.53")];
        let mut verdicts = Vec::new();
        for (i, g) in guessers.into_iter().enumerate() {
            let t = T0 + i as u64 * MINUTE;
            d.observe(
                t,
                Observation::AuthSuccess {
                    src: phone,
                    user: "103",
                },
            );
            verdicts.push(d.observe(t + 1, auth_fail(g, "103")));
        }
        assert_eq!(&verdicts[..2], &[Verdict::Pass, Verdict::Pass]);
        assert!(matches!(&verdicts[2], Verdict::LockAccount { user, .. } if user == "103"));
        assert!(d.is_locked(T0 + 3 * MINUTE, "103"));
        let lock = d.lock_of(T0 + 3 * MINUTE, "103").unwrap();
        assert_eq!(lock.until, T0 + 2 * MINUTE + 1 + 15 * MINUTE);
        assert!(d.lock_of(T0 + 3 * MINUTE, "104").is_none());
    }

    #[test]
    fn ban_and_lock_together_queue_the_lock() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.52");
        d.observe(T0, auth_fail(ip("198.51.100.99"), "500"));
        d.observe(T0, auth_fail(ip("198.51.100.98"), "500"));
        for i in 0..9 {
            d.observe(T0 + i, auth_fail(src, &format!("q{i}")));
        }
        let v = d.observe(T0 + 10, auth_fail(src, "500"));
        assert_eq!(ban_rule(&v).map(|(r, _)| r), Some(Rule::AuthFailures));
        assert!(
            matches!(d.poll_verdict(), Some(Verdict::LockAccount { user, .. }) if user == "500")
        );
        assert_eq!(d.poll_verdict(), None);
        assert!(d.is_locked(T0 + 11, "500"));
    }

    #[test]
    fn more_than_20_distinct_unknown_users_bans_for_an_hour() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.60");
        for i in 0..20 {
            let user = format!("{}", 100 + i);
            assert_eq!(
                d.observe(T0 + i * 100, Observation::UnknownUser { src, user: &user }),
                Verdict::Pass
            );
            // Asking again for the same user is not a new one.
            assert_eq!(
                d.observe(
                    T0 + i * 100 + 1,
                    Observation::UnknownUser { src, user: &user }
                ),
                Verdict::Pass
            );
        }
        let v = d.observe(T0 + 5_000, Observation::UnknownUser { src, user: "999" });
        assert_eq!(ban_rule(&v), Some((Rule::Enumeration, HOUR)));

        // Slowly, over more than the window, is not enumeration.
        let slow = ip("192.0.2.61");
        for i in 0..40u64 {
            let user = format!("{}", 100 + i);
            let v = d.observe(
                T0 + i * 5 * SECOND,
                Observation::UnknownUser {
                    src: slow,
                    user: &user,
                },
            );
            assert_eq!(v, Verdict::Pass, "user {i}");
        }
    }

    #[test]
    fn scanner_user_agents_and_tool_fingerprints_ban_for_a_day() {
        let mut d = Detector::new(DetectConfig::default());
        let a = ip("192.0.2.70");
        let v = d.observe(T0, msg(a, Some("OPTIONS"), Some("Friendly-Scanner")));
        assert_eq!(ban_rule(&v), Some((Rule::Scanner, DAY)));
        if let Verdict::Ban { reason, .. } = v {
            assert!(reason.contains("friendly-scanner"), "{reason}");
        }
        for (n, ua) in [
            "sipsak 0.9.8",
            "VaxSIPUserAgent/3.1",
            "sip-scan",
            "SIPVicious",
        ]
        .iter()
        .enumerate()
        {
            let src = ip(&format!("192.0.2.{}", 71 + n));
            assert_eq!(
                ban_rule(&d.observe(T0, msg(src, Some("OPTIONS"), Some(ua)))).map(|x| x.0),
                Some(Rule::Scanner)
            );
        }

        // SIPVicious with its User-Agent changed still gives itself away.
        let b = ip("192.0.2.90");
        let tag = "313030013238373534"; // "100" 0x01 "28754": too few digits
        let mut o = msg(b, Some("REGISTER"), Some("Yealink"));
        if let Observation::Message { from_tag, .. } = &mut o {
            *from_tag = Some(tag);
        }
        assert_eq!(d.observe(T0, o), Verdict::Pass);
        let tag = "3130300131323334353637"; // "100" 0x01 "1234567"
        if let Observation::Message { from_tag, .. } = &mut o {
            *from_tag = Some(tag);
        }
        assert_eq!(
            ban_rule(&d.observe(T0 + 1, o)).map(|x| x.0),
            Some(Rule::Scanner)
        );

        let c = ip("192.0.2.91");
        let names = [
            "Via",
            "Max-Forwards",
            "To",
            "From",
            "User-Agent",
            "Call-ID",
            "Contact",
            "CSeq",
            "Accept",
            "Content-Length",
        ];
        let mut o = msg(c, Some("OPTIONS"), Some("Polycom"));
        if let Observation::Message { header_names, .. } = &mut o {
            *header_names = &names;
        }
        assert_eq!(
            ban_rule(&d.observe(T0, o)).map(|x| x.0),
            Some(Rule::Scanner)
        );
        assert_eq!(d.rule_hits()[Rule::Scanner.index()], (Rule::Scanner, 7));
    }

    #[test]
    fn trunk_peers_are_inspected_but_rejected_in_user_space_never_banned() {
        let mut cfg = DetectConfig::default();
        cfg.trunk_peers = vec![ip("203.0.113.200")];
        let mut d = Detector::new(cfg);
        let peer = ip("::ffff:203.0.113.200");
        // A scanner forging the provider's address: dropped, one alert, no ban.
        for i in 0..20u64 {
            assert_eq!(
                d.observe(T0 + i, msg(peer, Some("OPTIONS"), Some("friendly-scanner"))),
                Verdict::Drop {
                    rule: Rule::Scanner
                }
            );
        }
        let alerts: Vec<Alert> = std::iter::from_fn(|| d.poll_alert()).collect();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert!(alerts[0].message.contains("not banned"), "{alerts:?}");
        assert!(!d.is_banned(T0 + 20, peer));
        assert!(d.bans(T0 + 20).is_empty());
        // Plain requests stay rejected for the ban's length, then pass again.
        let scanner_ms = DetectConfig::default().scanner.ban_ms;
        assert!(matches!(
            d.observe(T0 + 30, msg(peer, Some("OPTIONS"), Some("Yealink"))),
            Verdict::Drop { .. }
        ));
        let later = T0 + 20 + scanner_ms;
        assert_eq!(
            d.observe(later, msg(peer, Some("OPTIONS"), Some("Yealink"))),
            Verdict::Pass
        );
        // Stored or manual bans of a trunk peer are ignored; rules counted it.
        d.restore_ban(later, peer, later + DAY, Rule::Manual, 1);
        assert!(!d.is_banned(later + 1, peer));
        assert!(d.rule_hits()[Rule::Scanner.index()].1 >= 1);
    }

    #[test]
    fn allow_listed_and_loopback_are_never_banned() {
        let mut cfg = DetectConfig::default();
        cfg.allow = vec![
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            "2001:db8:1::/48".parse().unwrap(),
        ];
        let mut d = Detector::new(cfg);
        let trusted = [
            ip("10.20.30.40"),
            ip("::ffff:10.1.1.1"),
            ip("2001:db8:1:ffff::9"),
            ip("127.0.0.1"),
            ip("::1"),
        ];
        for (n, &src) in trusted.iter().enumerate() {
            for i in 0..100u64 {
                let now = T0 + i;
                assert_eq!(
                    d.observe(now, msg(src, Some("OPTIONS"), Some("friendly-scanner"))),
                    Verdict::Pass
                );
                assert_eq!(
                    d.observe(
                        now,
                        Observation::Malformed {
                            src,
                            size: 99_999,
                            key: Some(i),
                            oversized: true
                        }
                    ),
                    Verdict::Pass
                );
                assert_eq!(
                    d.observe(
                        now,
                        Observation::UnknownUser {
                            src,
                            user: &format!("{i}")
                        }
                    ),
                    Verdict::Pass
                );
                let v = d.observe(now, auth_fail(src, &format!("t{n}-{i}")));
                assert_eq!(v, Verdict::Pass);
            }
            assert!(!d.is_banned(T0 + 100, src));
            d.restore_ban(T0, src, T0 + DAY, Rule::Manual, 1);
            assert!(!d.is_banned(T0 + 1, src));
        }
        assert!(d.bans(T0 + 200).is_empty());
        assert_eq!(d.stats().sources, 0, "trusted sources keep no counters");
        assert!(d.rule_hits().iter().all(|(_, n)| *n == 0));
        // Just outside the allow-listed networks the rules apply.
        let outside = ip("2001:db8:2::9");
        assert!(
            ban_rule(&d.observe(T0, msg(outside, Some("OPTIONS"), Some("friendly-scanner"))))
                .is_some()
        );
        let outside4 = ip("11.0.0.1");
        assert!(ban_rule(&d.observe(T0, msg(outside4, Some("OPTIONS"), Some("sipcli")))).is_some());
        // A trusted source's failures still lock the account.
        let lan = ip("10.9.9.9");
        d.observe(T0, auth_fail(lan, "400"));
        d.observe(T0, auth_fail(lan, "400"));
        assert!(matches!(
            d.observe(T0, auth_fail(lan, "400")),
            Verdict::LockAccount { .. }
        ));
    }

    #[test]
    fn monitor_mode_alerts_but_passes() {
        let mut cfg = quiet_gate();
        cfg.monitor = true;
        let mut d = Detector::new(cfg);
        let src = ip("192.0.2.100");
        assert_eq!(
            d.observe(T0, msg(src, Some("OPTIONS"), Some("friendly-scanner"))),
            Verdict::Pass
        );
        let alert = d.poll_alert().unwrap();
        assert_eq!(
            (alert.rule, alert.addr, alert.enforced),
            (Rule::Scanner, Some(src), false)
        );
        assert!(!d.is_banned(T0 + 1, src));
        let shadow = d.bans(T0 + 1);
        assert_eq!(shadow.len(), 1);
        assert!(!shadow[0].enforced);
        // The same offender does not raise an alert per message.
        for i in 0..50 {
            assert_eq!(
                d.observe(T0 + i, msg(src, Some("OPTIONS"), Some("friendly-scanner"))),
                Verdict::Pass
            );
        }
        assert!(d.poll_alert().is_none());

        let other = ip("192.0.2.101");
        assert_eq!(
            d.observe(
                T0,
                Observation::Malformed {
                    src: other,
                    size: 1,
                    key: None,
                    oversized: false
                }
            ),
            Verdict::Pass
        );
        for i in 0..3 {
            assert_eq!(d.observe(T0 + i, auth_fail(other, "700")), Verdict::Pass);
        }
        let alert = d.poll_alert().unwrap();
        assert_eq!(
            (alert.rule, alert.user.as_deref(), alert.enforced),
            (Rule::AccountGuessing, Some("700"), false)
        );
        assert!(!d.is_locked(T0 + 5, "700"));
        assert_eq!(d.rule_hits()[Rule::Malformed.index()].1, 1);
    }

    #[test]
    fn monitor_mode_keeps_counting_after_the_first_would_be_ban() {
        let mut cfg = quiet_gate();
        cfg.monitor = true;
        let mut d = Detector::new(cfg);
        let src = ip("192.0.2.110");
        // 30 wrong passwords (distinct users): enforcing would ban at the 10th, and again
        // at the 20th and 30th had the source been let through.
        for i in 0..30u64 {
            assert_eq!(
                d.observe(T0 + i, auth_fail(src, &format!("g{i}"))),
                Verdict::Pass
            );
        }
        assert_eq!(d.rule_hits()[Rule::AuthFailures.index()].1, 3);
        assert_eq!(d.stats().would_be_bans, 3);
        // One alert for the shadow period, not one per would-be ban.
        let alerts: Vec<Alert> = std::iter::from_fn(|| d.poll_alert()).collect();
        assert_eq!(
            alerts
                .iter()
                .filter(|a| a.rule == Rule::AuthFailures)
                .count(),
            1
        );
        assert!(alerts.iter().all(|a| !a.enforced));
        assert!(!d.is_banned(T0 + 31, src));
        assert!(!d.bans(T0 + 31)[0].enforced);
        // Its messages are what enforcing would have dropped, and still judged: a scanner
        // fingerprint counts every time.
        for i in 0..5 {
            d.observe(
                T0 + 40 + i,
                msg(src, Some("OPTIONS"), Some("friendly-scanner")),
            );
        }
        assert_eq!(d.stats().would_be_dropped, 5);
        assert_eq!(d.rule_hits()[Rule::Scanner.index()].1, 5);
        assert_eq!(d.stats().would_be_bans, 8);
        // A shadow lock keeps counting too: 6 failures on one account = 2 would-be locks.
        let other = ip("192.0.2.111");
        for i in 0..6u64 {
            d.observe(T0 + 100 + i, auth_fail(other, "800"));
        }
        assert_eq!(d.rule_hits()[Rule::AccountGuessing.index()].1, 2);
        assert!(!d.is_locked(T0 + 200, "800"));
        // Enforcing mode counts none of this.
        let mut e = Detector::new(quiet_gate());
        for i in 0..30u64 {
            e.observe(T0 + i, auth_fail(src, &format!("g{i}")));
        }
        assert_eq!(e.stats().would_be_bans, 0);
        assert_eq!(e.rule_hits()[Rule::AuthFailures.index()].1, 1);
    }

    #[test]
    fn a_million_spoofed_sources_stay_within_the_bounds() {
        let mut cfg = DetectConfig::default();
        cfg.limits.max_bans = 50_000;
        let mut d = Detector::new(cfg);
        let max = d.config().limits.max_sources;
        for i in 0..1_000_000u32 {
            let src = IpAddr::V4((0x0b00_0000 + i).into());
            let now = T0 + u64::from(i / 100);
            if i % 10 == 0 {
                // Every tenth is a scanner: a ban each.
                d.observe(now, msg(src, Some("OPTIONS"), Some("sipvicious")));
            } else {
                d.observe(now, response(src));
            }
            assert!(d.stats().sources <= max);
        }
        let stats = d.stats();
        assert_eq!(stats.sources, max);
        assert_eq!(stats.ban_records, 50_000);
        assert!(stats.alerts_dropped > 0);
        // The newest ban is still enforced, the oldest was evicted to make room.
        assert!(d.is_banned(T0 + 10_000, IpAddr::V4((0x0b00_0000 + 999_990u32).into())));
        assert!(!d.is_banned(T0 + 10_000, IpAddr::V4(0x0b00_0000u32.into())));
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_source() {
        let mut d = Detector::new(quiet_gate());
        for i in 0..5 {
            d.observe(T0 + i, auth_fail(ip("192.0.2.120"), &format!("m{i}")));
            d.observe(
                T0 + i,
                auth_fail(ip("::ffff:192.0.2.120"), &format!("n{i}")),
            );
        }
        assert!(d.is_banned(T0 + 10, ip("192.0.2.120")));
        assert!(d.is_banned(T0 + 10, ip("::ffff:192.0.2.120")));
        assert_eq!(d.bans(T0 + 10)[0].addr, ip("192.0.2.120"));
    }

    #[test]
    fn ipv6_attackers_are_banned_per_address() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("2001:db8:bad::1");
        assert!(ban_rule(&d.observe(T0, msg(src, Some("INVITE"), Some("sipcli/1.0")))).is_some());
        assert!(d.is_banned(T0 + 1, src));
        assert!(!d.is_banned(T0 + 1, ip("2001:db8:bad::2")));
    }

    #[test]
    fn restored_bans_and_locks_apply_with_their_remaining_time() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("192.0.2.130");
        d.restore_ban(T0, src, T0 + HOUR, Rule::Scanner, 2);
        d.restore_ban(T0, ip("192.0.2.131"), T0 - 1, Rule::Scanner, 1);
        d.restore_lock(T0, "100", T0 + MINUTE, Rule::AccountGuessing);
        assert!(d.is_banned(T0 + HOUR - 1, src));
        assert!(!d.is_banned(T0 + HOUR, src));
        assert!(!d.is_banned(T0, ip("192.0.2.131")));
        assert!(d.is_locked(T0 + 1, "100"));
        assert_eq!(d.locks(T0)[0].user, "100");
        let info = &d.bans(T0)[0];
        assert_eq!(
            (info.addr, info.until, info.count_today, info.rule),
            (src, T0 + HOUR, 2, Rule::Scanner)
        );
        assert_eq!(
            d.observe(T0 + 5, request(src)),
            Verdict::Drop {
                rule: Rule::Scanner
            }
        );
        assert!(d.poll_alert().is_none(), "restoring raises no alert");
    }

    #[test]
    fn timeouts_purge_expired_state() {
        let mut d = Detector::new(DetectConfig::default());
        assert_eq!(d.poll_timeout(), None);
        let src = ip("192.0.2.140");
        d.observe(T0, msg(src, Some("OPTIONS"), Some("friendly-scanner")));
        d.observe(T0, response(ip("192.0.2.141")));
        d.observe(
            T0,
            Observation::AuthSuccess {
                src: ip("192.0.2.142"),
                user: "100",
            },
        );
        for _ in 0..3 {
            d.observe(T0, auth_fail(ip("192.0.2.143"), "100"));
        }
        let mut now = T0;
        let mut rounds = 0;
        while let Some(next) = d.poll_timeout() {
            assert!(next >= now, "deadlines move forward");
            now = next;
            d.handle_timeout(now);
            rounds += 1;
            assert!(rounds < 100);
        }
        let s = d.stats();
        assert_eq!((s.sources, s.passes, s.ban_records, s.locks), (0, 0, 0, 0));
        // The scanner ban (24 h) outlives its day of history, then goes.
        assert!(now >= T0 + DAY);
    }

    #[test]
    fn header_names_feed_the_fingerprint() {
        let raw = b"OPTIONS sip:100@192.0.2.1 SIP/2.0\r\nv: SIP/2.0/UDP 6.6.6.6:5060;branch=z9hG4bK-1;rport\r\n\
            t: \"sipvicious\"<sip:100@1.1.1.1>\r\nf: \"sipvicious\"<sip:100@1.1.1.1>;tag=abc\r\n\
            i: 123\r\nm: sip:100@6.6.6.6:5060\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
            Accept: application/sdp\r\nContent-Length: 0\r\n\r\n";
        let mut names = Vec::new();
        header_names(raw, &mut names);
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("192.0.2.150");
        let o = Observation::Message {
            src,
            size: raw.len(),
            method: Some("OPTIONS"),
            user_agent: None,
            from_user: Some("100"),
            to_user: Some("100"),
            from_tag: Some("abc"),
            ruri_len: 20,
            header_names: &names,
        };
        assert_eq!(
            ban_rule(&d.observe(T0, o)).map(|x| x.0),
            Some(Rule::Scanner)
        );
    }

    #[test]
    fn ban_source_respects_the_allow_list_and_monitor_mode() {
        let mut cfg = DetectConfig::default();
        cfg.allow = vec!["10.0.0.0/8".parse().unwrap()];
        let mut d = Detector::new(cfg.clone());
        assert_eq!(
            d.ban_source(T0, ip("10.1.1.1"), Rule::TollFraud, HOUR, "fraud"),
            Verdict::Pass
        );
        assert!(!d.is_banned(T0, ip("10.1.1.1")));
        let v = d.ban_source(
            T0,
            ip("192.0.2.160"),
            Rule::TollFraud,
            HOUR,
            "premium burst",
        );
        assert_eq!(ban_rule(&v), Some((Rule::TollFraud, HOUR)));
        assert!(d.is_banned(T0 + 1, ip("192.0.2.160")));
        assert_eq!(d.bans(T0)[0].reason, "toll fraud");
        cfg.monitor = true;
        let mut d = Detector::new(cfg);
        assert_eq!(
            d.ban_source(T0, ip("192.0.2.161"), Rule::Manual, HOUR, "x"),
            Verdict::Pass
        );
        assert!(!d.is_banned(T0 + 1, ip("192.0.2.161")));
        assert!(!d.poll_alert().unwrap().enforced);
    }

    fn conns(src: IpAddr, opened: u32, refused: u32) -> Observation<'static> {
        Observation::Connections {
            src,
            opened,
            refused,
        }
    }

    #[test]
    fn connections_refused_at_the_cap_ban_an_unauthenticated_source_at_the_8th() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("198.51.100.40");
        // Holding its cap of 16 is no offence; seven refusals are not a flood yet.
        assert_eq!(d.observe(T0, conns(src, 16, 0)), Verdict::Pass);
        assert_eq!(d.observe(T0 + 10, conns(src, 0, 7)), Verdict::Pass);
        let v = d.observe(T0 + 20, conns(src, 0, 1));
        assert_eq!(ban_rule(&v), Some((Rule::ConnectionFlood, HOUR)));
        let Verdict::Ban { reason, .. } = &v else {
            unreachable!()
        };
        assert!(reason.contains("8 TCP/TLS connections refused"), "{reason}");
        assert!(d.is_banned(T0 + 21, src));
        let alert = d.poll_alert().unwrap();
        assert_eq!(alert.rule, Rule::ConnectionFlood);
        assert_eq!(alert.addr, Some(src));
        // Further reports of the banned source change nothing.
        assert_eq!(d.observe(T0 + 30, conns(src, 0, 500)), Verdict::Pass);
        assert_eq!(d.bans(T0 + 30)[0].reason, "TCP/TLS connection flood");
        assert_eq!(d.rule_hits()[Rule::ConnectionFlood.index()].1, 1);
    }

    #[test]
    fn a_hundred_connections_opened_in_10s_ban_and_slower_reconnects_do_not() {
        let mut d = Detector::new(DetectConfig::default());
        let src = ip("198.51.100.41");
        // A phone reconnecting every few seconds for an hour.
        for i in 0..1_000 {
            assert_eq!(d.observe(T0 + i * 3_600, conns(src, 1, 0)), Verdict::Pass);
        }
        let other = ip("198.51.100.42");
        assert_eq!(d.observe(T0, conns(other, 99, 0)), Verdict::Pass);
        let v = d.observe(T0 + 5_000, conns(other, 1, 0));
        assert_eq!(ban_rule(&v), Some((Rule::ConnectionFlood, HOUR)));
    }

    #[test]
    fn an_authenticated_source_is_banned_only_far_beyond_a_phone() {
        let mut d = Detector::new(DetectConfig::default());
        let office = ip("198.51.100.43");
        d.observe(
            T0,
            Observation::AuthSuccess {
                src: office,
                user: "100",
            },
        );
        // 255 refused and 3,199 opened within 10 s: still a (very busy) office.
        assert_eq!(d.observe(T0 + 1, conns(office, 3_199, 255)), Verdict::Pass);
        let v = d.observe(T0 + 2, conns(office, 0, 1));
        assert_eq!(ban_rule(&v).map(|b| b.0), Some(Rule::ConnectionFlood));
        let Verdict::Ban { reason, .. } = &v else {
            unreachable!()
        };
        assert!(reason.contains("authenticated recently"), "{reason}");
        // Once the pass has ended the source is a stranger again.
        let mut d = Detector::new(DetectConfig::default());
        d.observe(
            T0,
            Observation::AuthSuccess {
                src: office,
                user: "100",
            },
        );
        let later = T0 + DetectConfig::default().unknown_host.pass_ms + 1;
        let v = d.observe(later, conns(office, 0, 8));
        assert_eq!(ban_rule(&v).map(|b| b.0), Some(Rule::ConnectionFlood));
    }

    #[test]
    fn connection_floods_of_trusted_sources_are_never_banned() {
        let mut cfg = DetectConfig::default();
        cfg.allow = vec!["10.0.0.0/8".parse().unwrap()];
        cfg.trunk_peers = vec![ip("203.0.113.5")];
        let mut d = Detector::new(cfg);
        for src in [ip("10.1.2.3"), ip("127.0.0.1"), ip("::1")] {
            assert_eq!(d.observe(T0, conns(src, 10_000, 10_000)), Verdict::Pass);
            assert!(!d.is_banned(T0 + 1, src));
        }
        assert!(d.poll_alert().is_none());
        assert_eq!(d.stats().sources, 0);
        // A trunk peer's address is inspected like anyone's (a UDP source is easily forged),
        // but what would ban it is only dropped in user space: never a ban.
        let trunk = ip("203.0.113.5");
        let v = d.observe(T0, conns(trunk, 10_000, 10_000));
        assert!(ban_rule(&v).is_none(), "{v:?}");
        assert!(!d.is_banned(T0 + 1, trunk));
    }

    #[test]
    fn connection_flood_limits_of_zero_turn_the_rule_off_and_monitor_only_alerts() {
        let mut cfg = DetectConfig::default();
        cfg.connection_flood.refused_limit = 0;
        cfg.connection_flood.open_limit = 0;
        let mut d = Detector::new(cfg.clone());
        let src = ip("198.51.100.44");
        assert_eq!(d.observe(T0, conns(src, 60_000, 60_000)), Verdict::Pass);
        cfg = DetectConfig::default();
        cfg.monitor = true;
        let mut d = Detector::new(cfg);
        assert_eq!(d.observe(T0, conns(src, 0, 8)), Verdict::Pass);
        assert!(!d.is_banned(T0 + 1, src));
        let alert = d.poll_alert().unwrap();
        assert_eq!((alert.rule, alert.enforced), (Rule::ConnectionFlood, false));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_ms(300_000), "300 s");
        assert_eq!(fmt_ms(600_000), "10 min");
        assert_eq!(fmt_ms(HOUR), "1 h");
        assert_eq!(fmt_ms(DAY), "24 h");
        assert_eq!(fmt_ms(7 * DAY), "7 d");
        assert_eq!(fmt_ms(2_500), "2500 ms");
    }

    #[test]
    fn retransmissions_of_one_malformed_message_count_once() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("192.0.2.30");
        // RFC 3261 Timer E: 11 retransmissions over 32 s, one message.
        for (n, at) in [
            0u64, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(d.observe(T0 + at, malformed(src, 42)), Verdict::Pass, "{n}");
        }
        assert_eq!(d.rule_hits()[Rule::Malformed.index()].1, 1, "counted once");
        // Nine more distinct messages: the tenth distinct one bans an unknown source.
        for k in 0..8 {
            assert_eq!(
                d.observe(T0 + 40_000 + k * 1_000, malformed(src, k)),
                Verdict::Pass
            );
        }
        let v = d.observe(T0 + 50_000, malformed(src, 100));
        assert_eq!(ban_rule(&v), Some((Rule::AuthFailures, 10 * MINUTE)));
    }

    #[test]
    fn an_authenticated_source_is_alerted_never_banned_for_malformed_messages() {
        let mut d = Detector::new(quiet_gate());
        let office = ip("198.51.100.7");
        d.observe(
            T0,
            Observation::AuthSuccess {
                src: office,
                user: "200",
            },
        );
        // A phone's Latin-1 REGISTER every 60 s for an hour, each retransmitted per Timer E.
        for m in 0..60u64 {
            for at in [0u64, 500, 1_500, 3_500] {
                let v = d.observe(T0 + m * 60_000 + at, malformed(office, m));
                assert_eq!(v, Verdict::Pass, "minute {m}");
            }
            // Re-registration keeps the pass fresh.
            d.observe(
                T0 + m * 60_000 + 5_000,
                Observation::AuthSuccess {
                    src: office,
                    user: "200",
                },
            );
        }
        assert!(!d.is_banned(T0 + 3_600_000, office));
        let alerts: Vec<Alert> = std::iter::from_fn(|| d.poll_alert()).collect();
        assert!(!alerts.is_empty(), "the admin is told");
        assert!(
            alerts.len() <= 7,
            "rate-limited: one per 10 min, got {}",
            alerts.len()
        );
        assert!(alerts
            .iter()
            .all(|a| a.rule == Rule::Malformed && a.addr == Some(office)));
        assert!(d.bans(T0 + 3_600_000).is_empty());
        // Distinct malformed messages beyond 10x the failure limit in the window are dropped
        // unanswered, still without a ban.
        let start = T0 + 5_000_000;
        d.observe(
            start,
            Observation::AuthSuccess {
                src: office,
                user: "200",
            },
        );
        let mut dropped = 0;
        for k in 0..150u64 {
            match d.observe(start + k * 200, malformed(office, 1_000 + k)) {
                Verdict::Pass => {}
                Verdict::Drop {
                    rule: Rule::Malformed,
                } => dropped += 1,
                other => panic!("{k}: {other:?}"),
            }
        }
        assert_eq!(dropped, 50, "100 answered, the rest rate-limited");
        assert!(!d.is_banned(start + 40_000, office));
    }

    #[test]
    fn a_malformed_flood_bans_even_an_authenticated_source() {
        let mut d = Detector::new(quiet_gate());
        let src = ip("198.51.100.8");
        d.observe(T0, Observation::AuthSuccess { src, user: "200" });
        let mut verdict = Verdict::Pass;
        for k in 0..16u64 {
            verdict = d.observe(T0 + k * 10, malformed(src, k));
        }
        assert_eq!(ban_rule(&verdict), Some((Rule::Flood, 300_000)));
    }

    #[test]
    fn per_source_state_stays_small() {
        // The bound stated in `Limits`' docs: ~320 B per source with the map's own entry.
        assert!(
            std::mem::size_of::<SourceState>() <= 288,
            "{}",
            std::mem::size_of::<SourceState>()
        );
    }
}
