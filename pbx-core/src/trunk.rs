//! SIP trunks towards providers: outbound registration, health by OPTIONS pings, and
//! credentials for calls sent through a trunk.
//!
//! Sans-IO: [`Trunks`] builds complete requests (`poll_request`) and is told what became of
//! them (`on_response`, `on_failure`); the endpoint sends them through its transaction layer
//! and routes the outcome back by (trunk index, [`Purpose`]). Time only moves through
//! `new`, `handle_timeout`, `on_response` and `on_failure`; `poll_request` stamps requests
//! with the latest of those times.
//!
//! Inbound identity: a request is a trunk's only when it arrives over the trunk's transport
//! and, over UDP (where a source address is easily forged), from the trunk's own address and
//! port, or from one of its `inbound_from` networks. Over TCP and TLS the connection itself
//! vouches for the address (the one we opened to the peer, or one the provider opened from
//! its address or networks). Anything else from the provider's address is an ordinary,
//! unauthenticated source. Each trunk admits at most `inbound_calls_per_second` inbound
//! INVITEs (a token bucket holding one second's worth); see [`Trunks::admit_inbound_call`].
//!
//! Addresses (RFC 3263 §4.3): a trunk holds the provider's addresses in the order the
//! driver resolved them (NAPTR, SRV by priority and weight, A/AAAA; at most
//! [`MAX_TARGETS`]) and sends to one of them, the current one. A REGISTER with no answer
//! (on a trunk with several addresses, within `silence_timeout_ms`), a transport error, a
//! 503 or 408 to it, or pings missed until the trunk goes Down move the trunk to the next
//! address; a REGISTER failing on every address in turn backs off as usual. New addresses
//! from a re-resolution ([`Trunks::set_targets`]) keep the current one when it is still
//! listed. Inbound identity covers every listed address. A trunk whose host has not
//! resolved has no addresses: it is Down and sends nothing.
//!
//! Health follows what a VoIP engineer expects from a provider link: a registering trunk is
//! Down until the provider accepted the registration; with pings, `down_after` consecutive
//! unanswered OPTIONS take it Down and `up_after` answered ones bring it back. Any answer to
//! an OPTIONS, even 404 or 501, proves the provider is there.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::sip::auth::{self, Algorithm};
use crate::sip::message::{
    CSeq, Contact, Headers, Method, NameAddr, Params, Peer, Request, Response, Transport, Uri, Via,
};
use crate::sip::wire;
use crate::Millis;

/// Challenges answered in a row before giving up on a REGISTER ("challenge loop").
const MAX_CHALLENGES: u32 = 3;
/// 423 answers followed in a row before giving up.
const MAX_TOO_BRIEF: u32 = 3;
/// Largest Min-Expires we agree to (one day); beyond it a 423 is a failure.
const MAX_MIN_EXPIRES: u32 = 86_400;
/// Shortest registration interval we ask for, whatever the configuration says.
const MIN_EXPIRES: u32 = 30;
/// Refresh at least this long before the registration runs out.
const REFRESH_MARGIN_S: u64 = 5;
/// Shortest retry delay after a registration failure, whatever the configuration says.
const MIN_RETRY_MS: u64 = 1_000;
/// Retry back-off grows up to this multiple of `retry_ms`.
const BACKOFF_CAP: u64 = 10;
/// A request with no outcome reported after this long is taken as failed. The transaction
/// layer reports a timeout after 32 s (Timer B/F); this only guards against a lost report.
const OUTSTANDING_GUARD_MS: u64 = 90_000;
/// A request first heard of (by a time input) this long after its stamp was stamped with a
/// stale clock.
const STALE_SEND_MS: u64 = 10 * OUTSTANDING_GUARD_MS;
/// Health changes kept until drained by `poll_change`.
const MAX_CHANGES: usize = 256;
/// Longest text taken from a response into a status reason.
const MAX_REASON_PHRASE: usize = 64;
/// Most challenge headers of one response looked at.
const MAX_CHALLENGE_HEADERS: usize = 8;
/// CSeq numbers stay below 2^31 (RFC 3261 §8.1.1.5); a new Call-ID starts over.
const MAX_CSEQ: u32 = (1 << 31) - 1;
/// Most `inbound_from` networks per trunk (each costs one comparison per inbound request).
pub const MAX_INBOUND_FROM: usize = 16;
/// Refused inbound calls of one trunk are reported (`Event`) at most this often.
pub const CAP_ALERT_EVERY_MS: u64 = 60_000;
/// Token bucket unit: one call attempt is this many milli-tokens.
const CALL_TOKEN: u64 = 1_000;
/// Most addresses a trunk holds (a provider's SRV targets times their A/AAAA records);
/// each costs one comparison per inbound request.
pub const MAX_TARGETS: usize = 16;
/// Bounds of how long a REGISTER may go unanswered before a trunk with several addresses
/// tries the next one (its `silence_timeout_ms`, clamped).
const REGISTER_FAILOVER_MS: (u64, u64) = (1_000, 32_000);

/// An address block (`203.0.113.0/28`): where a provider may send requests from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The block of `addr` (canonical: IPv4-mapped IPv6 counts as IPv4) with `prefix` bits;
    /// `None` when the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let addr = addr.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then(|| IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The first address of the block.
    pub fn network(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` (canonicalised) lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// `ADDR/PREFIX`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let full = if addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        let prefix = match prefix {
            None => full,
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| format!("{s:?}: bad prefix length"))?,
        };
        IpNet::new(addr, prefix).ok_or_else(|| format!("{s:?}: prefix longer than {full} bits"))
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// One provider link as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkConfig {
    /// Name used in routes, logs and status.
    pub name: String,
    /// Host part for R-URI, To and From (e.g. "sip.provider.example").
    pub domain: String,
    /// Transport towards the provider.
    pub transport: Transport,
    /// The provider's addresses in the order to try them (RFC 3263); empty while its host
    /// has not resolved (the trunk is then Down and sends nothing). At most
    /// [`MAX_TARGETS`] are used.
    pub targets: Vec<SocketAddr>,
    /// False for an IP-authenticated trunk (no REGISTER).
    pub register: bool,
    /// AOR user and default authentication user.
    pub username: String,
    /// Authentication user when it differs from `username`.
    pub auth_username: Option<String>,
    /// Digest password; may be empty for IP-authenticated trunks.
    pub password: String,
    /// Registration interval asked for, in seconds (e.g. 600).
    pub expires_secs: u32,
    /// Interval between OPTIONS pings in milliseconds; 0 = no pings.
    pub options_interval_ms: u64,
    /// Consecutive missed pings that take the trunk Down.
    pub down_after: u32,
    /// Consecutive answered pings that bring it Up again.
    pub up_after: u32,
    /// Delay before retrying a failed registration; doubles per failure up to 10x.
    pub retry_ms: u64,
    /// Caller ID (From user) on this trunk when the route sets none; `None` = `username`.
    pub caller_id: Option<String>,
    /// An outbound INVITE with no answer at all for this long fails over to the next trunk.
    pub silence_timeout_ms: u64,
    /// Other networks the provider sends requests from (any port, still over `peer`'s
    /// transport); at most [`MAX_INBOUND_FROM`] are used.
    pub inbound_from: Vec<IpNet>,
    /// Inbound INVITEs admitted per second (bursts up to one second's worth); 0 = no cap.
    pub inbound_calls_per_second: u32,
}

// The password must never reach a log.
impl fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("transport", &self.transport)
            .field("targets", &self.targets)
            .field("register", &self.register)
            .field("username", &self.username)
            .field("auth_username", &self.auth_username)
            .field("password", &"<redacted>")
            .field("expires_secs", &self.expires_secs)
            .field("options_interval_ms", &self.options_interval_ms)
            .field("down_after", &self.down_after)
            .field("up_after", &self.up_after)
            .field("retry_ms", &self.retry_ms)
            .field("caller_id", &self.caller_id)
            .field("silence_timeout_ms", &self.silence_timeout_ms)
            .field("inbound_from", &self.inbound_from)
            .field("inbound_calls_per_second", &self.inbound_calls_per_second)
            .finish()
    }
}

/// What a trunk request is for; the endpoint routes its outcome back with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Outbound registration (REGISTER).
    Register,
    /// Health ping (OPTIONS).
    Options,
}

/// Whether calls can go out through a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Usable.
    Up,
    /// Not usable: calls fail over to the next trunk.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A trunk's state as shown to the admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrunkStatus {
    /// The trunk name.
    pub name: String,
    /// Up or Down.
    pub health: Health,
    /// Registration state; `None` for IP-authenticated trunks.
    pub registered: Option<bool>,
    /// When the current registration runs out.
    pub registered_until: Option<Millis>,
    /// Why the trunk is in its state ("200 OK", "no answer to 3 OPTIONS", ...).
    pub reason: String,
    /// Time of the last health change.
    pub since: Millis,
    /// Round-trip time of the last answered OPTIONS.
    pub last_rtt_ms: Option<u64>,
    /// Inbound INVITEs refused (503) for exceeding `inbound_calls_per_second`.
    #[serde(default)]
    pub inbound_refused: u64,
    /// The provider's addresses in the order they are tried (empty: not resolved).
    #[serde(default)]
    pub targets: Vec<SocketAddr>,
    /// The address requests and calls go to now.
    #[serde(default)]
    pub current: Option<SocketAddr>,
}

/// Whether an inbound INVITE from a trunk may go on; see [`Trunks::admit_inbound_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Within the trunk's cap.
    Admitted,
    /// Over the cap: answer 503 with `Retry-After`.
    Refused {
        /// Set at most once per [`CAP_ALERT_EVERY_MS`]: calls refused since the last report
        /// (this one included), for the alert.
        report: Option<u64>,
    },
}

/// A health change, for logs and alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrunkChange {
    /// Trunk index.
    pub idx: usize,
    /// Trunk name.
    pub name: String,
    /// The new health.
    pub health: Health,
    /// Why it changed.
    pub reason: String,
}

/// A request sent whose outcome has not been reported yet.
#[derive(Debug, Clone)]
struct Outstanding {
    call_id: String,
    seq: u32,
    /// Send time: the latest time known when `poll_request` built it.
    sent: Millis,
    /// Whether a time input arrived since; see [`Trunks::advance`].
    confirmed: bool,
    /// Given up on after this long without an outcome.
    limit_ms: u64,
    /// The address it went to: only a failure at the current address moves the trunk on.
    to: Option<SocketAddr>,
}

/// A credentials header to put on the next REGISTER.
#[derive(Clone)]
struct PendingAuth {
    name: &'static str,
    value: String,
}

/// The one place a trunk's mutable state lives.
#[derive(Debug)]
struct Trunk {
    cfg: TrunkConfig,
    /// `sip:<domain>`; `None` when the configuration does not make a URI.
    ruri: Option<Uri>,
    /// `sip:<username>@<domain>`.
    aor: Option<Uri>,
    /// REGISTER Call-ID, kept across refreshes.
    call_id: String,
    from_tag: String,
    cseq: u32,
    health: Health,
    reason: String,
    since: Millis,
    /// Index into `cfg.targets` of the address in use.
    current: usize,
    // Registration.
    registered: bool,
    registered_until: Option<Millis>,
    reg_due: Option<Millis>,
    reg_out: Option<Outstanding>,
    asked_expires: u32,
    auth: Option<PendingAuth>,
    last_nonce: Option<String>,
    challenges: u32,
    too_brief: u32,
    failures: u32,
    contact: Option<Uri>,
    // Pings.
    opt_due: Option<Millis>,
    opt_out: Option<Outstanding>,
    misses: u32,
    goods: u32,
    last_rtt_ms: Option<u64>,
    // Inbound call cap.
    /// Milli-tokens in the bucket (one call costs [`CALL_TOKEN`]).
    cap_tokens: u64,
    cap_refilled: Millis,
    inbound_refused: u64,
    refused_unreported: u64,
    last_cap_report: Option<Millis>,
}

// Answers to challenges are password-derived; keep them out of logs.
impl fmt::Debug for PendingAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingAuth({}: <redacted>)", self.name)
    }
}

/// All configured trunks, in configuration order (the index is the trunk's identity).
pub struct Trunks {
    trunks: Vec<Trunk>,
    rng: StdRng,
    now: Millis,
    changes: VecDeque<TrunkChange>,
}

impl fmt::Debug for Trunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trunks")
            .field("now", &self.now)
            .field("trunks", &self.status())
            .finish_non_exhaustive()
    }
}

impl Trunks {
    /// Sets up the trunks: registering ones start Down ("starting") with a REGISTER due now,
    /// IP-authenticated ones start Up; pings, where configured, are due now.
    pub fn new(configs: Vec<TrunkConfig>, seed: u64, now: Millis) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let trunks = configs
            .into_iter()
            .map(|cfg| Trunk::new(cfg, &mut rng, now))
            .collect();
        Trunks {
            trunks,
            rng,
            now,
            changes: VecDeque::new(),
        }
    }

    /// Number of trunks.
    pub fn len(&self) -> usize {
        self.trunks.len()
    }

    /// True with no trunks configured.
    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }

    /// The configuration of trunk `idx`.
    pub fn config(&self, idx: usize) -> Option<&TrunkConfig> {
        self.trunks.get(idx).map(|t| &t.cfg)
    }

    /// Index of the trunk called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.trunks.iter().position(|t| t.cfg.name == name)
    }

    /// The address and transport trunk `idx` sends to now; `None` while it has no address.
    pub fn peer(&self, idx: usize) -> Option<Peer> {
        self.trunks.get(idx)?.peer()
    }

    /// Trunk `idx`'s addresses from its current one on, wrapping around: the order a call
    /// tries them in.
    pub fn targets_from_current(&self, idx: usize) -> Vec<SocketAddr> {
        let Some(t) = self.trunks.get(idx) else {
            return Vec::new();
        };
        let n = t.cfg.targets.len();
        (0..n).map(|i| t.cfg.targets[(t.current + i) % n]).collect()
    }

    /// New addresses for trunk `idx` (a re-resolution). The current address stays in use
    /// when it is still listed; otherwise the first new one is used and a registering trunk
    /// registers there at once. Beyond [`MAX_TARGETS`] are ignored. A trunk that had none
    /// starts (registers, pings) now; one left with none goes Down.
    pub fn set_targets(&mut self, now: Millis, idx: usize, mut targets: Vec<SocketAddr>) {
        self.advance(now);
        let now = self.now;
        let Some(t) = self.trunks.get_mut(idx) else {
            return;
        };
        targets.truncate(MAX_TARGETS);
        if targets == t.cfg.targets {
            return;
        }
        let old = t.peer().map(|p| p.addr);
        let had_none = t.cfg.targets.is_empty();
        t.current = old
            .and_then(|a| targets.iter().position(|&b| b == a))
            .unwrap_or(0);
        t.cfg.targets = targets;
        let new = t.peer().map(|p| p.addr);
        if new.is_none() {
            t.reg_out = None;
            t.opt_out = None;
            t.reg_due = None;
            t.opt_due = None;
            t.registered = false;
            t.registered_until = None;
            self.update_health(now, idx, "no address (host does not resolve)".into(), true);
            return;
        }
        if new != old {
            let usable = t.ruri.is_some() && t.aor.is_some();
            if usable && t.cfg.register {
                // A REGISTER in flight went to an address that is no longer the one.
                t.reg_out = None;
                t.auth = None;
                t.reg_due = Some(now);
            }
            if usable && t.cfg.options_interval_ms > 0 && t.opt_out.is_none() {
                t.opt_due = Some(now);
            }
            if had_none {
                let reason = if t.cfg.register {
                    "starting"
                } else {
                    "address resolved"
                };
                self.update_health(now, idx, reason.to_string(), true);
            }
        }
    }

    /// A call's INVITE to `addr` on trunk `idx` timed out or was refused with 503: when it
    /// is the trunk's current address, the trunk moves to the next one.
    pub fn target_failed(&mut self, now: Millis, idx: usize, addr: SocketAddr) {
        self.advance(now);
        let now = self.now;
        if self.peer(idx).is_some_and(|p| p.addr == addr)
            && self.next_target(idx, "no answer to INVITE")
        {
            self.register_at_new_target(now, idx);
        }
    }

    /// The trunk an inbound request from `src` belongs to (see the module docs): same
    /// transport, and over UDP the trunk's address and port, over TCP/TLS its address; or
    /// one of its `inbound_from` networks over its transport. `None`: an ordinary source.
    pub fn find_by_source(&self, src: Peer) -> Option<usize> {
        self.trunks.iter().position(|t| t.is_source(src))
    }

    /// Takes one inbound INVITE of trunk `idx` from its cap at `now` (a token bucket of
    /// `inbound_calls_per_second` tokens refilled at that rate; a cap of 0 admits all).
    pub fn admit_inbound_call(&mut self, now: Millis, idx: usize) -> Admission {
        let Some(t) = self.trunks.get_mut(idx) else {
            return Admission::Admitted;
        };
        let rate = u64::from(t.cfg.inbound_calls_per_second);
        if rate == 0 {
            return Admission::Admitted;
        }
        let full = rate.saturating_mul(CALL_TOKEN);
        let elapsed = now.saturating_sub(t.cap_refilled);
        // rate tokens per 1,000 ms = rate milli-tokens per ms.
        t.cap_tokens = t
            .cap_tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(full);
        t.cap_refilled = t.cap_refilled.max(now);
        if t.cap_tokens >= CALL_TOKEN {
            t.cap_tokens -= CALL_TOKEN;
            return Admission::Admitted;
        }
        t.inbound_refused = t.inbound_refused.saturating_add(1);
        t.refused_unreported = t.refused_unreported.saturating_add(1);
        let due = t
            .last_cap_report
            .is_none_or(|at| now.saturating_sub(at) >= CAP_ALERT_EVERY_MS);
        let report = due.then(|| {
            t.last_cap_report = Some(now);
            std::mem::take(&mut t.refused_unreported)
        });
        Admission::Refused { report }
    }

    /// True when trunk `idx` exists and is Up.
    pub fn is_up(&self, idx: usize) -> bool {
        self.trunks.get(idx).is_some_and(|t| t.health == Health::Up)
    }

    /// True with at least one trunk and none Up (survival mode); false with no trunks.
    pub fn all_down(&self) -> bool {
        !self.trunks.is_empty() && self.trunks.iter().all(|t| t.health == Health::Down)
    }

    /// The state of every trunk, in configuration order.
    pub fn status(&self) -> Vec<TrunkStatus> {
        self.trunks
            .iter()
            .map(|t| TrunkStatus {
                name: t.cfg.name.clone(),
                health: t.health,
                registered: t.cfg.register.then_some(t.registered),
                registered_until: t.registered_until,
                reason: t.reason.clone(),
                since: t.since,
                last_rtt_ms: t.last_rtt_ms,
                inbound_refused: t.inbound_refused,
                targets: t.cfg.targets.clone(),
                current: t.peer().map(|p| p.addr),
            })
            .collect()
    }

    /// Advances time: expires registrations and gives up on requests whose outcome was
    /// never reported.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        let now = self.now;
        for idx in 0..self.trunks.len() {
            let t = &mut self.trunks[idx];
            if t.reg_out.as_ref().is_some_and(|o| guard_expired(o, now)) {
                let to = t.reg_out.take().and_then(|o| o.to);
                self.register_failover(now, idx, to, "no answer on REGISTER".to_string());
            }
            let t = &mut self.trunks[idx];
            if t.opt_out.as_ref().is_some_and(|o| guard_expired(o, now)) {
                self.ping_missed(now, idx);
            }
            let t = &mut self.trunks[idx];
            if t.registered && t.registered_until.is_some_and(|until| until <= now) {
                t.registered = false;
                t.registered_until = None;
                if t.reg_out.is_none() && t.reg_due.is_none_or(|d| d > now) {
                    t.reg_due = Some(now);
                }
                self.update_health(now, idx, "registration expired".to_string(), true);
            }
        }
    }

    /// The box's own address changed: every registering trunk registers again at once, so
    /// the provider learns the new Contact (health is left as it is; a failure shows as
    /// usual). A REGISTER already on its way is left to finish.
    pub fn address_changed(&mut self, now: Millis) {
        self.advance(now);
        for t in &mut self.trunks {
            if t.cfg.register && t.reg_out.is_none() {
                t.reg_due = Some(self.now);
            }
        }
    }

    /// When `handle_timeout` (and then `poll_request`) should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        // A trunk built before any time input (`new(.., 0)`) and with nothing due (no
        // address yet, no pings) learns the time at the first timer, so its `since` is real.
        let unstamped = self.trunks.iter().any(|t| t.since == 0).then_some(1);
        self.trunks
            .iter()
            .flat_map(|t| {
                [
                    t.reg_due.filter(|_| t.reg_out.is_none()),
                    t.opt_due.filter(|_| t.opt_out.is_none()),
                    t.reg_out.as_ref().map(guard_deadline),
                    t.opt_out.as_ref().map(guard_deadline),
                    t.registered_until.filter(|_| t.registered),
                ]
            })
            .flatten()
            .chain(unstamped)
            .min()
    }

    /// Next request to send, complete. `locals` are our listening addresses: each trunk uses
    /// the first of its peer's address family (else the first) for Via sent-by and Contact;
    /// with none, nothing is sent.
    pub fn poll_request(
        &mut self,
        locals: &[SocketAddr],
        user_agent: &str,
    ) -> Option<(usize, Purpose, Request)> {
        let now = self.now;
        for idx in 0..self.trunks.len() {
            let t = &self.trunks[idx];
            let Some(peer) = t.peer() else {
                continue;
            };
            let peer_v4 = peer.addr.is_ipv4();
            let local = *locals
                .iter()
                .find(|a| a.is_ipv4() == peer_v4)
                .or(locals.first())?;
            if t.reg_out.is_none() && t.reg_due.is_some_and(|d| d <= now) {
                match self.build_register(idx, local, user_agent) {
                    Some(req) => return Some((idx, Purpose::Register, req)),
                    None => {
                        self.trunks[idx].reg_due = None;
                        self.registration_failed(now, idx, "invalid configuration".to_string());
                        continue;
                    }
                }
            }
            let t = &self.trunks[idx];
            if t.opt_out.is_none() && t.opt_due.is_some_and(|d| d <= now) {
                match self.build_options(idx, local, user_agent) {
                    Some(req) => return Some((idx, Purpose::Options, req)),
                    None => self.trunks[idx].opt_due = None,
                }
            }
        }
        None
    }

    /// The final (or provisional, ignored) response to the request of `purpose` on `idx`.
    pub fn on_response(&mut self, now: Millis, idx: usize, purpose: Purpose, resp: &Response) {
        self.advance(now);
        let now = self.now;
        let Some(t) = self.trunks.get_mut(idx) else {
            return;
        };
        if resp.is_provisional() {
            return;
        }
        match purpose {
            Purpose::Register => {
                let Some(out) = t.reg_out.take() else {
                    return;
                };
                if !answers(resp, &out, &Method::Register) {
                    self.registration_failed(now, idx, "bad response to REGISTER".to_string());
                    return;
                }
                match resp.status {
                    200..=299 => self.registered(now, idx, resp),
                    401 | 407 => self.challenged(now, idx, resp),
                    423 => self.too_brief(now, idx, resp),
                    // RFC 3263 §4.3: an overloaded or unreachable server; the next one.
                    408 | 503 => {
                        let reason = format!("{} on REGISTER", status_text(resp));
                        self.register_failover(now, idx, out.to, reason);
                    }
                    _ => {
                        let reason = format!("{} on REGISTER", status_text(resp));
                        self.registration_failed(now, idx, reason);
                    }
                }
            }
            Purpose::Options => {
                let Some(out) = t.opt_out.clone() else {
                    return;
                };
                // A response to something else is no proof the provider answered our ping.
                if !answers(resp, &out, &Method::Options) {
                    self.ping_missed(now, idx);
                    return;
                }
                let rtt = now.saturating_sub(out.sent);
                let interval = t.cfg.options_interval_ms;
                t.opt_due = Some(out.sent.saturating_add(interval).max(now));
                t.opt_out = None;
                t.misses = 0;
                t.goods = t.goods.saturating_add(1);
                t.last_rtt_ms = Some(rtt);
                let reason = format!("{} to OPTIONS", status_text(resp));
                self.update_health(now, idx, reason, false);
            }
        }
    }

    /// Transaction timeout or transport error for that request.
    pub fn on_failure(&mut self, now: Millis, idx: usize, purpose: Purpose, reason: &str) {
        self.advance(now);
        let now = self.now;
        let Some(t) = self.trunks.get_mut(idx) else {
            return;
        };
        match purpose {
            Purpose::Register => {
                if let Some(out) = t.reg_out.take() {
                    let reason = format!("{} on REGISTER", clean(reason));
                    self.register_failover(now, idx, out.to, reason);
                }
            }
            Purpose::Options => {
                if t.opt_out.is_some() {
                    self.ping_missed(now, idx);
                }
            }
        }
    }

    /// Answers a 401/407 challenge to an INVITE we sent on this trunk: returns the header
    /// name ("Authorization" / "Proxy-Authorization") and value; None if no credentials or
    /// the challenge is unusable.
    pub fn answer_invite_challenge(
        &mut self,
        idx: usize,
        resp: &Response,
        uri: &str,
    ) -> Option<(String, String)> {
        let t = self.trunks.get(idx)?;
        if t.cfg.password.is_empty() {
            return None;
        }
        let cnonce = format!("{:016x}", self.rng.gen::<u64>());
        let (_, name, value) = answer(
            resp,
            resp.headers.cseq.method.as_str(),
            uri,
            &t.cfg,
            &cnonce,
        )?;
        Some((name.to_string(), value))
    }

    /// Next health change (Up/Down), oldest first.
    pub fn poll_change(&mut self) -> Option<TrunkChange> {
        self.changes.pop_front()
    }

    /// Moves the clock to `now` (never back).
    ///
    /// `poll_request` has no clock of its own: a caller that polls before any time input
    /// (right after `new(.., 0)`, say) stamps requests with a stale time. A request whose
    /// first time input comes implausibly late (far beyond any transaction timeout) is
    /// taken as sent now, so it is neither given up at once nor reported with a huge RTT.
    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
        let now = self.now;
        for t in &mut self.trunks {
            // Built before the first time input: "since" starts with the first real time.
            if t.since == 0 {
                t.since = now;
            }
            for o in [t.reg_out.as_mut(), t.opt_out.as_mut()]
                .into_iter()
                .flatten()
            {
                if !o.confirmed {
                    o.confirmed = true;
                    if now.saturating_sub(o.sent) > STALE_SEND_MS {
                        o.sent = now;
                    }
                }
            }
        }
    }

    fn build_register(
        &mut self,
        idx: usize,
        local: SocketAddr,
        user_agent: &str,
    ) -> Option<Request> {
        let branch = self.rng.gen::<u64>();
        let new_call_id = new_call_id(&mut self.rng);
        let now = self.now;
        let t = &mut self.trunks[idx];
        let (ruri, aor) = (t.ruri.clone()?, t.aor.clone()?);
        let transport = match t.cfg.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let contact = wire::parse_uri(&format!(
            "sip:{}@{}:{}{transport}",
            t.cfg.username,
            host_text(local.ip()),
            local.port()
        ))
        .ok()?;
        if t.cseq >= MAX_CSEQ {
            t.call_id = new_call_id;
            t.cseq = 0;
        }
        t.cseq += 1;
        let mut headers = headers(
            t.cfg.transport,
            local,
            branch,
            from(&aor, &t.from_tag),
            NameAddr::new(aor),
            t.call_id.clone(),
            CSeq {
                seq: t.cseq,
                method: Method::Register,
            },
            user_agent,
        );
        headers.contact = vec![Contact::Addr(NameAddr::new(contact.clone()))];
        headers.expires = Some(t.asked_expires);
        if let Some(auth) = t.auth.take() {
            headers.push(auth.name, auth.value);
        }
        t.contact = Some(contact);
        t.reg_due = None;
        let to = t.peer().map(|p| p.addr);
        // With somewhere else to go, an unanswered REGISTER moves on well before the
        // transaction's 32 s timeout.
        let limit_ms = if t.cfg.targets.len() > 1 {
            t.cfg
                .silence_timeout_ms
                .clamp(REGISTER_FAILOVER_MS.0, REGISTER_FAILOVER_MS.1)
        } else {
            OUTSTANDING_GUARD_MS
        };
        t.reg_out = Some(Outstanding {
            call_id: t.call_id.clone(),
            seq: t.cseq,
            sent: now,
            confirmed: false,
            limit_ms,
            to,
        });
        Some(Request {
            method: Method::Register,
            uri: ruri,
            headers,
            body: Vec::new(),
        })
    }

    fn build_options(
        &mut self,
        idx: usize,
        local: SocketAddr,
        user_agent: &str,
    ) -> Option<Request> {
        let branch = self.rng.gen::<u64>();
        // Every ping is a fresh out-of-dialog request, as providers' monitors expect.
        let call_id = new_call_id(&mut self.rng);
        let tag = new_tag(&mut self.rng);
        let now = self.now;
        let t = &mut self.trunks[idx];
        let (ruri, aor) = (t.ruri.clone()?, t.aor.clone()?);
        let mut headers = headers(
            t.cfg.transport,
            local,
            branch,
            from(&aor, &tag),
            NameAddr::new(ruri.clone()),
            call_id.clone(),
            CSeq {
                seq: 1,
                method: Method::Options,
            },
            user_agent,
        );
        headers.push("Accept", "application/sdp");
        t.opt_due = None;
        // A ping unanswered within its interval (1-5 s) is a miss: failure detection
        // must not wait for the transaction's 32 s timeout.
        let limit_ms = t.cfg.options_interval_ms.clamp(1_000, 5_000);
        let to = t.peer().map(|p| p.addr);
        t.opt_out = Some(Outstanding {
            call_id,
            seq: 1,
            sent: now,
            confirmed: false,
            limit_ms,
            to,
        });
        Some(Request {
            method: Method::Options,
            uri: ruri,
            headers,
            body: Vec::new(),
        })
    }

    /// A 2xx to our REGISTER.
    fn registered(&mut self, now: Millis, idx: usize, resp: &Response) {
        let t = &mut self.trunks[idx];
        let granted = t
            .contact
            .as_ref()
            .and_then(|ours| granted_for(resp, ours))
            .or(resp.headers.expires)
            .unwrap_or(t.asked_expires);
        if granted == 0 {
            self.registration_failed(now, idx, "registration not kept (expires 0)".to_string());
            return;
        }
        let granted = u64::from(granted);
        t.registered = true;
        t.registered_until = Some(now.saturating_add(granted.saturating_mul(1000)));
        t.reg_due = Some(now.saturating_add(refresh_delay_s(granted).saturating_mul(1000)));
        t.failures = 0;
        t.challenges = 0;
        t.too_brief = 0;
        t.last_nonce = None;
        let reason = status_text(resp);
        self.update_health(now, idx, reason, true);
        let t = &mut self.trunks[idx];
        if t.health == Health::Down {
            t.reason = "registered, waiting for OPTIONS answers".to_string();
        }
    }

    /// A 401/407 to our REGISTER: one authenticated retry per nonce.
    fn challenged(&mut self, now: Millis, idx: usize, resp: &Response) {
        let cnonce = format!("{:016x}", self.rng.gen::<u64>());
        let t = &mut self.trunks[idx];
        t.challenges += 1;
        if t.cfg.password.is_empty() {
            let reason = format!("{} on REGISTER (no password)", status_text(resp));
            self.registration_failed(now, idx, reason);
            return;
        }
        if t.challenges > MAX_CHALLENGES {
            self.registration_failed(now, idx, "challenge loop".to_string());
            return;
        }
        let uri = t.ruri.as_ref().map(wire::uri_to_string).unwrap_or_default();
        let Some((info, name, value)) = answer(resp, "REGISTER", &uri, &t.cfg, &cnonce) else {
            let reason = format!("unusable challenge in {} on REGISTER", status_text(resp));
            self.registration_failed(now, idx, reason);
            return;
        };
        if t.last_nonce.as_deref() == Some(info.nonce.as_str()) && !info.stale {
            // The server refused our answer to this very nonce: wrong credentials.
            self.registration_failed(now, idx, "challenge loop".to_string());
            return;
        }
        t.last_nonce = Some(info.nonce);
        t.auth = Some(PendingAuth { name, value });
        t.reg_due = Some(now);
    }

    /// A 423 to our REGISTER: ask again with the provider's Min-Expires.
    fn too_brief(&mut self, now: Millis, idx: usize, resp: &Response) {
        let t = &mut self.trunks[idx];
        t.too_brief += 1;
        let min = resp
            .headers
            .get("Min-Expires")
            .and_then(|v| v.trim().parse::<u32>().ok());
        match min {
            Some(min)
                if min > t.asked_expires
                    && min <= MAX_MIN_EXPIRES
                    && t.too_brief <= MAX_TOO_BRIEF =>
            {
                t.asked_expires = min;
                t.auth = None;
                t.reg_due = Some(now);
            }
            _ => {
                let reason = format!("{} on REGISTER", status_text(resp));
                self.registration_failed(now, idx, reason);
            }
        }
    }

    /// Any registration failure: Down, and a retry after `retry_ms` with back-off.
    fn registration_failed(&mut self, now: Millis, idx: usize, reason: String) {
        let t = &mut self.trunks[idx];
        t.registered = false;
        t.registered_until = None;
        t.auth = None;
        t.last_nonce = None;
        t.challenges = 0;
        t.too_brief = 0;
        t.failures = t.failures.saturating_add(1);
        let factor = (1u64 << t.failures.saturating_sub(1).min(4)).min(BACKOFF_CAP);
        let delay = t.cfg.retry_ms.max(MIN_RETRY_MS).saturating_mul(factor);
        t.reg_due = Some(now.saturating_add(delay));
        self.update_health(now, idx, reason, true);
    }

    /// An OPTIONS that went unanswered (timeout, transport error, wrong answer). Once the
    /// misses take the trunk Down, each further miss moves it to its next address.
    fn ping_missed(&mut self, now: Millis, idx: usize) {
        let t = &mut self.trunks[idx];
        let (sent, to) = t.opt_out.take().map_or((now, None), |o| (o.sent, o.to));
        t.opt_due = Some(sent.saturating_add(t.cfg.options_interval_ms).max(now));
        t.goods = 0;
        t.misses = t.misses.saturating_add(1);
        let reason = format!("no answer to {} OPTIONS", t.misses);
        self.update_health(now, idx, reason, false);
        let t = &self.trunks[idx];
        if t.misses >= t.cfg.down_after.max(1)
            && to.is_some()
            && to == t.peer().map(|p| p.addr)
            && self.next_target(idx, "no answer to OPTIONS")
        {
            self.register_at_new_target(now, idx);
        }
    }

    /// A REGISTER that went unanswered, met a transport error, 408 or 503: the next
    /// address, at once while not every address has failed in a row; then the usual
    /// back-off.
    fn register_failover(
        &mut self,
        now: Millis,
        idx: usize,
        to: Option<SocketAddr>,
        reason: String,
    ) {
        self.registration_failed(now, idx, reason);
        let t = &self.trunks[idx];
        let (failures, n) = (t.failures, t.cfg.targets.len());
        let current = t.peer().map(|p| p.addr);
        if to.is_some() && to != current {
            // It went to an address the trunk has left since: try the current one now.
            self.trunks[idx].reg_due = Some(now);
            return;
        }
        if self.next_target(idx, "REGISTER failed") && (failures as usize) < n {
            self.trunks[idx].reg_due = Some(now);
        }
    }

    /// Moves trunk `idx` to its next address (RFC 3263 §4.3); false with fewer than two.
    fn next_target(&mut self, idx: usize, why: &str) -> bool {
        let t = &mut self.trunks[idx];
        let n = t.cfg.targets.len();
        if n < 2 {
            return false;
        }
        let from = t.cfg.targets[t.current % n];
        t.current = (t.current + 1) % n;
        let to = t.cfg.targets[t.current];
        tracing::info!(trunk = %t.cfg.name, %from, %to, why, "trunk moves to the provider's next address");
        true
    }

    /// After a move not caused by a REGISTER: a registering trunk registers at its new
    /// address now (one in flight finishes first).
    fn register_at_new_target(&mut self, now: Millis, idx: usize) {
        let t = &mut self.trunks[idx];
        if t.cfg.register && t.reg_out.is_none() && t.reg_due.is_none_or(|d| d > now) {
            t.reg_due = Some(now);
        }
    }

    /// Re-evaluates health after an event; `reason` explains a change. With `sticky`, a
    /// trunk that stays Down takes `reason` too (the latest registration failure is news).
    fn update_health(&mut self, now: Millis, idx: usize, reason: String, sticky: bool) {
        let t = &mut self.trunks[idx];
        let pings = t.cfg.options_interval_ms > 0;
        let target = if t.cfg.targets.is_empty() || (t.cfg.register && !t.registered) {
            Health::Down
        } else if !pings {
            Health::Up
        } else {
            match t.health {
                Health::Up if t.misses >= t.cfg.down_after.max(1) => Health::Down,
                Health::Down if t.goods < t.cfg.up_after => Health::Down,
                _ => Health::Up,
            }
        };
        if target != t.health {
            t.health = target;
            t.since = now;
            t.reason.clone_from(&reason);
            if self.changes.len() == MAX_CHANGES {
                self.changes.pop_front();
            }
            self.changes.push_back(TrunkChange {
                idx,
                name: t.cfg.name.clone(),
                health: target,
                reason,
            });
        } else if sticky && target == Health::Down {
            t.reason = reason;
        }
    }
}

impl Trunk {
    /// The current address, with the transport.
    fn peer(&self) -> Option<Peer> {
        let addr = *self.cfg.targets.get(self.current)?;
        Some(Peer {
            transport: self.cfg.transport,
            addr,
        })
    }

    /// Whether a request from `src` is this trunk's (see the module docs): any of its
    /// addresses counts, not only the current one.
    fn is_source(&self, src: Peer) -> bool {
        let transport = self.cfg.transport;
        if src.transport != transport {
            return false;
        }
        let ip = src.addr.ip().to_canonical();
        let own = self.cfg.targets.iter().take(MAX_TARGETS).any(|a| {
            ip == a.ip().to_canonical()
                && (transport != Transport::Udp || src.addr.port() == a.port())
        });
        own || self
            .cfg
            .inbound_from
            .iter()
            .take(MAX_INBOUND_FROM)
            .any(|n| n.contains(ip))
    }

    fn new(mut cfg: TrunkConfig, rng: &mut StdRng, now: Millis) -> Trunk {
        cfg.targets.truncate(MAX_TARGETS);
        let ruri = wire::parse_uri(&format!("sip:{}", cfg.domain)).ok();
        // An IP-authenticated trunk may have no account: its pings come from "outpost".
        let user = if cfg.username.is_empty() {
            "outpost"
        } else {
            cfg.username.as_str()
        };
        let aor = wire::parse_uri(&format!("sip:{user}@{}", cfg.domain)).ok();
        let usable = ruri.is_some() && aor.is_some();
        let resolved = !cfg.targets.is_empty();
        let (health, reason) = if !usable {
            (Health::Down, "invalid configuration (domain or username)")
        } else if !resolved {
            (Health::Down, "host not resolved yet")
        } else if cfg.register {
            (Health::Down, "starting")
        } else {
            (Health::Up, "starting")
        };
        let pings = cfg.options_interval_ms > 0;
        Trunk {
            ruri,
            aor,
            call_id: new_call_id(rng),
            from_tag: new_tag(rng),
            cseq: 0,
            health,
            reason: reason.to_string(),
            since: now,
            current: 0,
            registered: false,
            registered_until: None,
            reg_due: (usable && resolved && cfg.register).then_some(now),
            reg_out: None,
            asked_expires: cfg.expires_secs.max(MIN_EXPIRES),
            auth: None,
            last_nonce: None,
            challenges: 0,
            too_brief: 0,
            failures: 0,
            contact: None,
            opt_due: (usable && resolved && pings).then_some(now),
            opt_out: None,
            misses: 0,
            goods: 0,
            last_rtt_ms: None,
            cap_tokens: u64::from(cfg.inbound_calls_per_second).saturating_mul(CALL_TOKEN),
            cap_refilled: now,
            inbound_refused: 0,
            refused_unreported: 0,
            last_cap_report: None,
            cfg,
        }
    }
}

fn guard_deadline(o: &Outstanding) -> Millis {
    o.sent.saturating_add(o.limit_ms)
}

fn guard_expired(o: &Outstanding, now: Millis) -> bool {
    guard_deadline(o) <= now
}

/// True when `resp` is the answer to the request `out` (same Call-ID, CSeq and method).
fn answers(resp: &Response, out: &Outstanding, method: &Method) -> bool {
    resp.headers.call_id == out.call_id
        && resp.headers.cseq.seq == out.seq
        && &resp.headers.cseq.method == method
}

/// Seconds until a registration granted for `granted` seconds is refreshed: half the
/// interval, at least 5 s before it runs out, never sooner than 1 s.
fn refresh_delay_s(granted: u64) -> u64 {
    let half = granted / 2;
    let delay = if granted - half < REFRESH_MARGIN_S {
        granted.saturating_sub(REFRESH_MARGIN_S)
    } else {
        half
    };
    delay.max(1)
}

/// The expiry the registrar granted our contact, from the matching Contact's expires param.
fn granted_for(resp: &Response, ours: &Uri) -> Option<u32> {
    resp.headers.contact.iter().find_map(|c| match c {
        Contact::Addr(a) if same_contact(&a.uri, ours) => contact_expires(a),
        _ => None,
    })
}

/// Same user, host and port (a missing port is 5060).
fn same_contact(a: &Uri, b: &Uri) -> bool {
    let user = |u: &Uri| u.auth.as_ref().map(|a| a.user.clone());
    let port = |u: &Uri| u.host_with_port.port.map_or(5060, |p| *p.value());
    user(a) == user(b)
        && port(a) == port(b)
        && a.host_with_port
            .host
            .to_string()
            .eq_ignore_ascii_case(&b.host_with_port.host.to_string())
}

/// A Contact's expires parameter, in the header or (written without brackets) in the URI.
fn contact_expires(a: &NameAddr) -> Option<u32> {
    let text = match a.params.get("expires") {
        Some(v) => v?.to_string(),
        None => a.uri.params.iter().find_map(|p| match p {
            rsip::Param::Expires(e) => Some(e.value().to_string()),
            _ => None,
        })?,
    };
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Beyond u32 saturates (RFC 3261 §20.19).
    Some(text.parse::<u32>().unwrap_or(u32::MAX))
}

/// Answers the best challenge in `resp` (SHA-256 before MD5) for `method` and `uri`:
/// the parsed challenge, the header name to send and its value.
fn answer(
    resp: &Response,
    method: &str,
    uri: &str,
    cfg: &TrunkConfig,
    cnonce: &str,
) -> Option<(auth::ChallengeInfo, &'static str, String)> {
    let (challenge_header, answer_header) = match resp.status {
        401 => ("WWW-Authenticate", "Authorization"),
        407 => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return None,
    };
    let user = cfg.auth_username.as_deref().unwrap_or(&cfg.username);
    let mut candidates: Vec<(auth::ChallengeInfo, &str)> = resp
        .headers
        .get_all(challenge_header)
        .take(MAX_CHALLENGE_HEADERS)
        .filter_map(|v| auth::parse_challenge(v).ok().map(|info| (info, v)))
        .collect();
    // Stable sort: SHA-256 first, otherwise the server's order.
    candidates.sort_by_key(|(info, _)| info.algorithm != Algorithm::Sha256);
    candidates.into_iter().find_map(|(info, v)| {
        auth::answer_challenge(v, method, uri, user, &cfg.password, cnonce, 1)
            .ok()
            .map(|value| (info, answer_header, value))
    })
}

/// "403 Forbidden": status and (cleaned, bounded) reason phrase of a response.
fn status_text(resp: &Response) -> String {
    format!("{} {}", resp.status, clean(&resp.reason))
}

/// Text from the network made fit for a status line: no control characters, bounded.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_PHRASE)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The From of a request we originate.
fn from(aor: &Uri, tag: &str) -> NameAddr {
    let mut na = NameAddr::new(aor.clone());
    na.params.set("tag", Some(tag.to_string()));
    na
}

/// Via, From, To, Call-ID, CSeq, Max-Forwards and User-Agent of a request we originate.
#[allow(clippy::too_many_arguments)]
fn headers(
    transport: Transport,
    local: SocketAddr,
    branch: u64,
    from: NameAddr,
    to: NameAddr,
    call_id: String,
    cseq: CSeq,
    user_agent: &str,
) -> Headers {
    let mut params = Params::default();
    params.set("branch", Some(format!("z9hG4bK{branch:016x}")));
    params.set("rport", None);
    let mut headers = Headers {
        via: vec![Via {
            transport: transport.as_str().to_string(),
            host: host_text(local.ip()),
            port: Some(local.port()),
            params,
        }],
        from,
        to,
        call_id,
        cseq,
        max_forwards: Some(70),
        contact: Vec::new(),
        expires: None,
        route: Vec::new(),
        record_route: Vec::new(),
        content_type: None,
        other: Vec::new(),
    };
    headers.push("User-Agent", user_agent);
    headers
}

fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

fn new_call_id(rng: &mut StdRng) -> String {
    format!("{:016x}{:016x}@outpost", rng.gen::<u64>(), rng.gen::<u64>())
}

fn new_tag(rng: &mut StdRng) -> String {
    format!("{:016x}", rng.gen::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{parse_credentials, Authenticator, NonceConfig, StoredSecret};
    use crate::sip::message::Message;

    const T0: Millis = 1_700_000_000_000;
    const DOMAIN: &str = "sip.provider.example";
    const UA: &str = "Outpost/0.1";

    fn local() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 10], 5060))
    }

    fn cfg(name: &str, register: bool, options_interval_ms: u64) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            domain: DOMAIN.into(),
            transport: Transport::Udp,
            targets: vec![SocketAddr::from(([203, 0, 113, 5], 5060))],
            register,
            username: "4930123456".into(),
            auth_username: Some("acct77".into()),
            password: "s3cret".into(),
            expires_secs: 600,
            options_interval_ms,
            down_after: 3,
            up_after: 2,
            retry_ms: 30_000,
            caller_id: None,
            silence_timeout_ms: 4_000,
            inbound_from: Vec::new(),
            inbound_calls_per_second: 10,
        }
    }

    fn provider() -> Authenticator {
        Authenticator::new(DOMAIN, [5u8; 32], 9, NonceConfig::default())
    }

    fn next(t: &mut Trunks) -> (usize, Purpose, Request) {
        t.poll_request(&[local()], UA).expect("a request is due")
    }

    fn reply(req: &Request, status: u16) -> Response {
        Response::to_request(req, status, Some("prov-tag"))
    }

    fn challenge(req: &Request, a: &mut Authenticator, now: Millis, stale: bool) -> Response {
        let mut resp = reply(req, 401);
        for v in a.challenge(now, stale) {
            resp.headers.push("WWW-Authenticate", v);
        }
        resp
    }

    fn verify(a: &mut Authenticator, now: Millis, req: &Request, header: &str) -> bool {
        let value = req.headers.get(header).expect("credentials sent");
        let creds = parse_credentials(value).expect("credentials parse");
        assert_eq!(creds.username, "acct77");
        let secret = StoredSecret::new("acct77", DOMAIN, "s3cret");
        a.verify(
            now,
            &creds,
            req.method.as_str(),
            secret.ha1(creds.algorithm),
        )
        .is_ok()
    }

    /// Drives a registering trunk to Up; returns the trunks and the time.
    fn registered_trunk(c: TrunkConfig) -> Trunks {
        let mut t = Trunks::new(vec![c], 1, T0);
        let (_, _, req) = next(&mut t);
        let mut ok = reply(&req, 200);
        ok.headers.expires = Some(600);
        t.on_response(T0 + 20, 0, Purpose::Register, &ok);
        t
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// A registering trunk at two addresses, with a 1 s failover.
    fn two_addresses() -> TrunkConfig {
        let mut c = cfg("prov", true, 0);
        c.targets = vec![addr("203.0.113.5:5060"), addr("198.51.100.7:5080")];
        c.silence_timeout_ms = 1_000;
        c
    }

    #[test]
    fn an_unanswered_register_moves_to_the_next_address_at_once() {
        let mut t = Trunks::new(vec![two_addresses()], 1, T0);
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("203.0.113.5:5060")));
        let (_, _, first) = next(&mut t);
        // Not before the failover time.
        t.handle_timeout(T0 + 900);
        assert!(t.poll_request(&[local()], UA).is_none());
        t.handle_timeout(T0 + 1_000);
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("198.51.100.7:5080")));
        let (_, purpose, second) = t.poll_request(&[local()], UA).expect("REGISTER again");
        assert_eq!(purpose, Purpose::Register);
        assert!(second.headers.cseq.seq > first.headers.cseq.seq);
        let mut ok = reply(&second, 200);
        ok.headers.expires = Some(600);
        t.on_response(T0 + 1_050, 0, Purpose::Register, &ok);
        let st = &t.status()[0];
        assert_eq!(st.health, Health::Up);
        assert_eq!(st.current, Some(addr("198.51.100.7:5080")));
        assert_eq!(st.targets.len(), 2);
    }

    #[test]
    fn a_503_to_register_moves_on_and_a_full_round_of_failures_backs_off() {
        let mut t = Trunks::new(vec![two_addresses()], 1, T0);
        let (_, _, r1) = next(&mut t);
        t.on_response(T0 + 10, 0, Purpose::Register, &reply(&r1, 503));
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("198.51.100.7:5080")));
        let (_, _, r2) = t.poll_request(&[local()], UA).expect("at once");
        t.on_failure(T0 + 20, 0, Purpose::Register, "transport error");
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("203.0.113.5:5060")));
        // Both failed in a row: the usual back-off, not a tight loop.
        assert!(t.poll_request(&[local()], UA).is_none());
        assert!(t.poll_timeout().is_some_and(|d| d > T0 + 20));
        let _ = r2;
        // One address alone keeps today's behaviour: a 503 just fails the registration.
        let mut one = Trunks::new(vec![cfg("one", true, 0)], 1, T0);
        let (_, _, r) = next(&mut one);
        one.on_response(T0 + 10, 0, Purpose::Register, &reply(&r, 503));
        assert!(one.poll_request(&[local()], UA).is_none());
        assert_eq!(
            one.status()[0].reason,
            "503 Service Unavailable on REGISTER"
        );
    }

    #[test]
    fn pings_missed_until_down_move_an_ip_trunk_to_the_next_address() {
        let mut c = two_addresses();
        c.register = false;
        c.options_interval_ms = 1_000;
        c.down_after = 2;
        c.up_after = 1;
        let mut t = Trunks::new(vec![c], 1, T0);
        let mut now = T0;
        for _ in 0..2 {
            let (_, p, _) = t.poll_request(&[local()], UA).expect("ping");
            assert_eq!(p, Purpose::Options);
            assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("203.0.113.5:5060")));
            now += 1_000;
            t.handle_timeout(now);
        }
        assert_eq!(t.status()[0].health, Health::Down);
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("198.51.100.7:5080")));
        let (_, _, ping) = t
            .poll_request(&[local()], UA)
            .expect("ping the next address");
        t.on_response(now + 5, 0, Purpose::Options, &reply(&ping, 200));
        assert_eq!(t.status()[0].health, Health::Up);
    }

    #[test]
    fn new_addresses_keep_the_current_one_when_still_listed() {
        let mut t = registered_trunk(two_addresses());
        assert!(t.poll_request(&[local()], UA).is_none());
        // Same addresses in another order (weighted SRV): no move, no new REGISTER.
        t.set_targets(
            T0 + 100,
            0,
            vec![addr("198.51.100.7:5080"), addr("203.0.113.5:5060")],
        );
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("203.0.113.5:5060")));
        assert!(t.poll_request(&[local()], UA).is_none());
        assert_eq!(t.status()[0].health, Health::Up);
        // The current address is gone: the first new one, registered at once.
        t.set_targets(T0 + 200, 0, vec![addr("192.0.2.99:5060")]);
        assert_eq!(t.peer(0).map(|p| p.addr), Some(addr("192.0.2.99:5060")));
        let (_, purpose, _) = t.poll_request(&[local()], UA).expect("REGISTER");
        assert_eq!(purpose, Purpose::Register);
        // No address at all: Down, nothing sent.
        t.set_targets(T0 + 300, 0, Vec::new());
        let st = &t.status()[0];
        assert_eq!((st.health, st.current), (Health::Down, None));
        assert!(t.poll_request(&[local()], UA).is_none());
        // Far too many addresses: bounded.
        let many: Vec<SocketAddr> = (1..=40u8)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 5060)))
            .collect();
        t.set_targets(T0 + 400, 0, many);
        assert_eq!(t.status()[0].targets.len(), MAX_TARGETS);
    }

    #[test]
    fn a_trunk_without_addresses_waits_and_starts_when_they_come() {
        let mut c = cfg("late", true, 0);
        c.targets = Vec::new();
        let mut t = Trunks::new(vec![c], 1, T0);
        let st = &t.status()[0];
        assert_eq!(
            (st.health, st.reason.as_str()),
            (Health::Down, "host not resolved yet")
        );
        assert!(t.poll_request(&[local()], UA).is_none());
        assert_eq!(t.poll_timeout(), None);
        t.set_targets(T0 + 5, 0, vec![addr("203.0.113.5:5060")]);
        let (_, purpose, _) = t.poll_request(&[local()], UA).expect("REGISTER");
        assert_eq!(purpose, Purpose::Register);
    }

    #[test]
    fn a_trunk_without_addresses_built_at_time_zero_learns_the_time() {
        let mut c = cfg("late", true, 0);
        c.targets = Vec::new();
        let mut t = Trunks::new(vec![c], 1, 0);
        // Nothing is due but the first time input, which stamps `since`.
        assert_eq!(t.poll_timeout(), Some(1));
        t.handle_timeout(T0);
        assert_eq!(t.status()[0].since, T0);
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn every_address_of_the_trunk_is_its_identity() {
        let t = Trunks::new(vec![two_addresses()], 1, T0);
        let udp = |a: &str| Peer {
            transport: Transport::Udp,
            addr: addr(a),
        };
        assert_eq!(t.find_by_source(udp("203.0.113.5:5060")), Some(0));
        assert_eq!(t.find_by_source(udp("198.51.100.7:5080")), Some(0));
        // The second address from another port over UDP: not the provider.
        assert_eq!(t.find_by_source(udp("198.51.100.7:5060")), None);
    }

    #[test]
    fn register_challenge_ok_and_refresh() {
        let mut a = provider();
        let mut t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        let st = &t.status()[0];
        assert_eq!(
            (st.health, st.registered, st.reason.as_str()),
            (Health::Down, Some(false), "starting")
        );
        assert!(t.all_down());
        assert_eq!(t.poll_timeout(), Some(T0));

        let (idx, purpose, req) = next(&mut t);
        assert_eq!((idx, purpose), (0, Purpose::Register));
        // Only one REGISTER in flight.
        assert!(t.poll_request(&[local()], UA).is_none());
        // What goes on the wire is a valid REGISTER with the expected headers.
        let text = String::from_utf8(wire::emit_request(&req)).expect("ascii");
        assert!(
            text.starts_with("REGISTER sip:sip.provider.example SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nFrom: <sip:4930123456@sip.provider.example>;tag="));
        assert!(text.contains("\r\nTo: <sip:4930123456@sip.provider.example>\r\n"));
        assert!(text.contains("\r\nContact: <sip:4930123456@192.0.2.10:5060>\r\n"));
        assert!(text.contains("\r\nExpires: 600\r\n"));
        assert!(text.contains("\r\nMax-Forwards: 70\r\n"));
        assert!(text.contains("\r\nUser-Agent: Outpost/0.1\r\n"));
        let via = req.headers.top_via().expect("via");
        assert_eq!(
            via.to_string().split(";branch=").next(),
            Some("SIP/2.0/UDP 192.0.2.10:5060")
        );
        assert!(via.is_rfc3261() && via.params.get("rport") == Some(None));
        let Ok(Message::Request(parsed)) = wire::parse(text.as_bytes()) else {
            panic!("emitted REGISTER does not parse: {text}");
        };
        assert_eq!(parsed, req);
        assert!(req.headers.get("Authorization").is_none());

        // Challenged: one authenticated retry, same Call-ID, next CSeq.
        t.on_response(
            T0 + 30,
            0,
            Purpose::Register,
            &challenge(&req, &mut a, T0, false),
        );
        let (_, _, req2) = next(&mut t);
        assert_eq!(req2.headers.call_id, req.headers.call_id);
        assert_eq!(req2.headers.cseq.seq, req.headers.cseq.seq + 1);
        assert_eq!(req2.headers.from.tag(), req.headers.from.tag());
        assert!(verify(&mut a, T0 + 30, &req2, "Authorization"));

        // 200 with our Contact granted 300 s (the other binding and Expires are not ours).
        let mut ok = Response::to_request(&req2, 200, None);
        let ours = match &req2.headers.contact[0] {
            Contact::Addr(na) => na.clone(),
            Contact::Star => panic!("contact"),
        };
        let mut other =
            NameAddr::new(wire::parse_uri("sip:4930123456@198.51.100.7:5060").expect("uri"));
        other.params.set("expires", Some("3600".into()));
        let mut granted = ours;
        granted.params.set("expires", Some("300".into()));
        ok.headers.contact = vec![Contact::Addr(other), Contact::Addr(granted)];
        ok.headers.expires = Some(1800);
        let t1 = T0 + 60;
        t.on_response(t1, 0, Purpose::Register, &ok);
        let st = &t.status()[0];
        assert_eq!(st.health, Health::Up);
        assert_eq!(st.registered, Some(true));
        assert_eq!(st.registered_until, Some(t1 + 300_000));
        assert_eq!(st.reason, "200 OK");
        assert_eq!(st.since, t1);
        assert!(t.is_up(0) && !t.all_down());
        assert_eq!(
            t.poll_change(),
            Some(TrunkChange {
                idx: 0,
                name: "prov".into(),
                health: Health::Up,
                reason: "200 OK".into()
            })
        );
        assert_eq!(t.poll_change(), None);

        // Refresh at half the interval, with the same Call-ID and no stale credentials.
        assert_eq!(t.poll_timeout(), Some(t1 + 150_000));
        t.handle_timeout(t1 + 149_999);
        assert!(t.poll_request(&[local()], UA).is_none());
        t.handle_timeout(t1 + 150_000);
        let (_, _, refresh) = next(&mut t);
        assert_eq!(refresh.headers.call_id, req.headers.call_id);
        assert_eq!(refresh.headers.cseq.seq, req2.headers.cseq.seq + 1);
        assert!(refresh.headers.get("Authorization").is_none());
        // The refresh is challenged afresh and answered once more.
        t.on_response(
            t1 + 150_010,
            0,
            Purpose::Register,
            &challenge(&refresh, &mut a, t1, false),
        );
        let (_, _, refresh2) = next(&mut t);
        assert!(verify(&mut a, t1 + 150_010, &refresh2, "Authorization"));
        t.on_response(t1 + 150_020, 0, Purpose::Register, &reply(&refresh2, 200));
        // No Contact, no Expires: the asked 600 s.
        assert_eq!(t.status()[0].registered_until, Some(t1 + 150_020 + 600_000));
        assert!(t.is_up(0));
        assert_eq!(t.poll_change(), None);
    }

    #[test]
    fn refresh_is_at_least_five_seconds_before_expiry() {
        assert_eq!(refresh_delay_s(600), 300);
        assert_eq!(refresh_delay_s(10), 5);
        assert_eq!(refresh_delay_s(8), 3);
        assert_eq!(refresh_delay_s(3), 1);
        assert_eq!(refresh_delay_s(1), 1);
    }

    #[test]
    fn same_nonce_again_is_a_challenge_loop_unless_stale() {
        let mut a = provider();
        let mut t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        let (_, _, r1) = next(&mut t);
        let first = challenge(&r1, &mut a, T0, false);
        t.on_response(T0, 0, Purpose::Register, &first);
        let (_, _, r2) = next(&mut t);
        // The same nonce but stale=true: answered again.
        let mut stale = reply(&r2, 401);
        for v in first.headers.get_all("WWW-Authenticate") {
            stale
                .headers
                .push("WWW-Authenticate", format!("{v}, stale=true"));
        }
        t.on_response(T0 + 10, 0, Purpose::Register, &stale);
        let (_, _, r3) = next(&mut t);
        assert!(r3.headers.get("Authorization").is_some());
        // The same nonce without stale: our credentials were refused.
        let mut again = reply(&r3, 401);
        for v in first.headers.get_all("WWW-Authenticate") {
            again.headers.push("WWW-Authenticate", v);
        }
        t.on_response(T0 + 20, 0, Purpose::Register, &again);
        let st = &t.status()[0];
        assert_eq!((st.health, st.registered), (Health::Down, Some(false)));
        assert_eq!(st.reason, "challenge loop");
        assert!(t.poll_request(&[local()], UA).is_none());
        assert_eq!(t.poll_timeout(), Some(T0 + 20 + 30_000));
        // Still Down from the start: no change to report.
        assert_eq!(t.poll_change(), None);
    }

    #[test]
    fn more_than_three_fresh_challenges_is_a_challenge_loop() {
        let mut a = provider();
        let mut t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        for i in 0..3 {
            let (_, _, r) = next(&mut t);
            t.on_response(
                T0 + i,
                0,
                Purpose::Register,
                &challenge(&r, &mut a, T0, false),
            );
        }
        let (_, _, r) = next(&mut t);
        t.on_response(
            T0 + 5,
            0,
            Purpose::Register,
            &challenge(&r, &mut a, T0, false),
        );
        assert_eq!(t.status()[0].reason, "challenge loop");
        assert!(t.poll_request(&[local()], UA).is_none());
    }

    #[test]
    fn forbidden_takes_an_up_trunk_down_and_retries_later() {
        let mut t = registered_trunk(cfg("prov", true, 0));
        assert!(t.is_up(0));
        let _ = t.poll_change();
        let until = t.status()[0].registered_until.expect("registered");
        let due = t.poll_timeout().expect("refresh due");
        t.handle_timeout(due);
        let (_, _, r) = next(&mut t);
        assert!(due < until);
        t.on_response(due + 5, 0, Purpose::Register, &reply(&r, 403));
        let st = &t.status()[0];
        assert_eq!(st.health, Health::Down);
        assert_eq!(st.registered, Some(false));
        assert_eq!(st.registered_until, None);
        assert_eq!(st.reason, "403 Forbidden on REGISTER");
        assert_eq!(st.since, due + 5);
        assert!(t.all_down());
        let change = t.poll_change().expect("change");
        assert_eq!(
            (change.health, change.reason.as_str()),
            (Health::Down, "403 Forbidden on REGISTER")
        );
        assert_eq!(t.poll_timeout(), Some(due + 5 + 30_000));
        // 403 with no password configured at all: no REGISTER is answered, reason says so.
        let mut c = cfg("nopw", true, 0);
        c.password.clear();
        let mut t = Trunks::new(vec![c], 1, T0);
        let (_, _, r) = next(&mut t);
        t.on_response(
            T0,
            0,
            Purpose::Register,
            &challenge(&r, &mut provider(), T0, false),
        );
        assert_eq!(
            t.status()[0].reason,
            "401 Unauthorized on REGISTER (no password)"
        );
    }

    #[test]
    fn interval_too_brief_retries_with_min_expires() {
        let mut t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        let (_, _, r) = next(&mut t);
        let mut brief = reply(&r, 423);
        brief.headers.push("Min-Expires", "1200");
        t.on_response(T0, 0, Purpose::Register, &brief);
        let (_, _, r2) = next(&mut t);
        assert_eq!(r2.headers.expires, Some(1200));
        assert_eq!(r2.headers.call_id, r.headers.call_id);
        t.on_response(T0 + 10, 0, Purpose::Register, &reply(&r2, 200));
        assert_eq!(t.status()[0].registered_until, Some(T0 + 10 + 1_200_000));
        // Later refreshes keep asking for what the provider accepts.
        t.handle_timeout(T0 + 10 + 600_000);
        let (_, _, r3) = next(&mut t);
        assert_eq!(r3.headers.expires, Some(1200));
        // A 423 without a usable Min-Expires is a failure.
        let mut bad = reply(&r3, 423);
        bad.headers.push("Min-Expires", "soon");
        t.on_response(T0 + 600_020, 0, Purpose::Register, &bad);
        let st = &t.status()[0];
        assert_eq!(st.health, Health::Down);
        assert_eq!(st.reason, "423 Interval Too Brief on REGISTER");
    }

    #[test]
    fn timeouts_back_off_up_to_ten_times() {
        let mut t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        let mut now = T0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let (_, p, _) = next(&mut t);
            now += 32_000;
            t.on_failure(now, 0, p, "timeout");
            let due = t.poll_timeout().expect("retry scheduled");
            delays.push(due - now);
            assert!(t.poll_request(&[local()], UA).is_none());
            now = due;
            t.handle_timeout(now);
        }
        assert_eq!(
            delays,
            [30_000, 60_000, 120_000, 240_000, 300_000, 300_000, 300_000]
        );
        assert_eq!(t.status()[0].reason, "timeout on REGISTER");
        // A success resets the back-off.
        let (_, _, r) = next(&mut t);
        t.on_response(now, 0, Purpose::Register, &reply(&r, 200));
        assert!(t.is_up(0));
        let due = t.poll_timeout().expect("refresh");
        t.handle_timeout(due);
        let (_, _, r) = next(&mut t);
        t.on_response(due, 0, Purpose::Register, &reply(&r, 503));
        assert_eq!(t.poll_timeout(), Some(due + 30_000));
        assert_eq!(t.status()[0].reason, "503 Service Unavailable on REGISTER");
    }

    #[test]
    fn garbage_answers_are_failures_and_late_answers_are_ignored() {
        let mut t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        let (_, _, r) = next(&mut t);
        let mut wrong = reply(&r, 200);
        wrong.headers.cseq.seq += 7;
        t.on_response(T0, 0, Purpose::Register, &wrong);
        let st = &t.status()[0];
        assert_eq!(
            (st.registered, st.reason.as_str()),
            (Some(false), "bad response to REGISTER")
        );
        // Nothing outstanding: stray answers and failures change nothing.
        t.on_response(T0, 0, Purpose::Register, &reply(&r, 200));
        t.on_failure(T0, 0, Purpose::Options, "timeout");
        t.on_response(T0, 7, Purpose::Register, &reply(&r, 200));
        assert_eq!(t.status()[0].registered, Some(false));
        // A 200 whose To has no tag still registers.
        t.handle_timeout(T0 + 30_000);
        let (_, _, r) = next(&mut t);
        t.on_response(T0 + 30_000, 0, Purpose::Register, &reply(&r, 100));
        assert!(!t.is_up(0));
        t.on_response(
            T0 + 30_001,
            0,
            Purpose::Register,
            &Response::to_request(&r, 200, None),
        );
        assert!(t.is_up(0));
    }

    #[test]
    fn lost_outcome_is_a_failure_and_registration_expires() {
        let mut t = registered_trunk(cfg("prov", true, 0));
        let due = t.poll_timeout().expect("refresh");
        t.handle_timeout(due);
        let _ = next(&mut t);
        // The endpoint never reports an outcome: after the guard the REGISTER counts as failed.
        assert_eq!(t.poll_timeout(), Some(due + OUTSTANDING_GUARD_MS));
        t.handle_timeout(due + OUTSTANDING_GUARD_MS);
        assert_eq!(t.status()[0].reason, "no answer on REGISTER");
        assert!(!t.is_up(0));

        // Registration running out while the refresh is unanswered.
        let mut c = cfg("short", true, 0);
        c.expires_secs = 60;
        let mut t = Trunks::new(vec![c], 1, T0);
        let (_, _, r) = next(&mut t);
        t.on_response(T0, 0, Purpose::Register, &reply(&r, 200));
        t.handle_timeout(T0 + 30_000);
        let _ = next(&mut t);
        assert_eq!(t.poll_timeout(), Some(T0 + 60_000));
        t.handle_timeout(T0 + 60_000);
        let st = &t.status()[0];
        assert_eq!(
            (st.health, st.reason.as_str()),
            (Health::Down, "registration expired")
        );
    }

    #[test]
    fn options_misses_take_trunk_down_and_answers_bring_it_up() {
        let mut t = Trunks::new(vec![cfg("ipauth", false, 30_000)], 1, T0);
        // IP-authenticated trunks with pings start Up.
        let st = &t.status()[0];
        assert_eq!((st.health, st.registered), (Health::Up, None));
        let mut now = T0;
        for miss in 1..=3u64 {
            let (_, p, req) = next(&mut t);
            assert_eq!(p, Purpose::Options);
            assert_eq!(req.method, Method::Options);
            assert_eq!(wire::uri_to_string(&req.uri), "sip:sip.provider.example");
            assert!(t.poll_request(&[local()], UA).is_none());
            now += 32_000;
            t.on_failure(now, 0, Purpose::Options, "timeout");
            assert_eq!(t.is_up(0), miss < 3, "after {miss} misses");
            // The next ping is due right away (the timeout outlasted the interval).
            assert_eq!(t.poll_timeout(), Some(now));
        }
        let st = &t.status()[0];
        assert_eq!(st.reason, "no answer to 3 OPTIONS");
        assert_eq!(st.since, now);
        let down = t.poll_change().expect("down");
        assert_eq!(
            (down.health, down.reason.as_str()),
            (Health::Down, "no answer to 3 OPTIONS")
        );

        // Any answer proves life; two in a row bring it back Up.
        let (_, _, req) = next(&mut t);
        t.on_response(now + 40, 0, Purpose::Options, &reply(&req, 404));
        assert!(!t.is_up(0));
        assert_eq!(t.status()[0].last_rtt_ms, Some(40));
        assert_eq!(t.poll_timeout(), Some(now + 30_000));
        t.handle_timeout(now + 30_000);
        let (_, _, req) = next(&mut t);
        t.on_response(now + 30_025, 0, Purpose::Options, &reply(&req, 501));
        let st = &t.status()[0];
        assert_eq!(st.health, Health::Up);
        assert_eq!(st.last_rtt_ms, Some(25));
        assert_eq!(st.reason, "501 Not Implemented to OPTIONS");
        assert_eq!(t.poll_change().map(|c| c.health), Some(Health::Up));
    }

    #[test]
    fn registering_trunk_with_pings_needs_both() {
        let mut t = Trunks::new(vec![cfg("prov", true, 10_000)], 1, T0);
        let (_, p1, reg) = next(&mut t);
        let (_, p2, ping) = next(&mut t);
        assert_eq!((p1, p2), (Purpose::Register, Purpose::Options));
        t.on_response(T0 + 5, 0, Purpose::Register, &reply(&reg, 200));
        // Registered, but only after up_after answered pings is it Up.
        assert!(!t.is_up(0));
        assert_eq!(t.status()[0].registered, Some(true));
        t.on_response(T0 + 6, 0, Purpose::Options, &reply(&ping, 200));
        assert!(!t.is_up(0));
        t.handle_timeout(T0 + 10_000);
        let (_, _, ping) = next(&mut t);
        t.on_response(T0 + 10_006, 0, Purpose::Options, &reply(&ping, 200));
        assert!(t.is_up(0));
        // Answered pings do not make up for a failed registration.
        let due = t.poll_timeout().expect("next");
        t.handle_timeout(T0 + 300_005);
        assert!(due <= T0 + 300_005);
        let mut reg_seen = false;
        while let Some((_, p, r)) = t.poll_request(&[local()], UA) {
            if p == Purpose::Register {
                t.on_response(T0 + 300_010, 0, p, &reply(&r, 403));
                reg_seen = true;
            } else {
                t.on_response(T0 + 300_010, 0, p, &reply(&r, 200));
            }
        }
        assert!(reg_seen);
        assert!(!t.is_up(0));
    }

    #[test]
    fn polling_before_the_clock_is_set_does_not_fail_requests() {
        // The endpoint creates the trunks at time 0 and may poll before any time input.
        let mut t = Trunks::new(vec![cfg("prov", true, 30_000)], 1, 0);
        let (_, _, reg) = next(&mut t);
        let (_, _, ping) = next(&mut t);
        t.handle_timeout(T0);
        assert!(t.poll_request(&[local()], UA).is_none());
        // The ping is given up on after its interval (capped at 5 s), not at once.
        assert_eq!(t.poll_timeout(), Some(T0 + 5_000));
        t.on_response(T0 + 80, 0, Purpose::Options, &reply(&ping, 200));
        assert_eq!(t.status()[0].last_rtt_ms, Some(80));
        t.on_response(T0 + 90, 0, Purpose::Register, &reply(&reg, 200));
        assert_eq!(t.status()[0].registered_until, Some(T0 + 90 + 600_000));
    }

    #[test]
    fn ip_auth_trunk_without_pings_is_always_up() {
        let mut t = Trunks::new(vec![cfg("static", false, 0)], 1, T0);
        assert!(t.is_up(0));
        assert!(t.poll_request(&[local()], UA).is_none());
        assert_eq!(t.poll_timeout(), None);
        assert!(!t.all_down());
        assert!(!Trunks::new(Vec::new(), 1, T0).all_down());
    }

    #[test]
    fn each_trunk_uses_a_local_address_of_its_peer_family() {
        let mut b = cfg("v6", false, 1_000);
        b.targets = vec!["[2001:db8::5]:5060".parse().expect("addr")];
        let mut t = Trunks::new(vec![cfg("v4", false, 1_000), b], 1, T0);
        let v6: SocketAddr = "[2001:db8::10]:5060".parse().expect("addr");
        let locals = [v6, local()];
        let (i0, _, r0) = t.poll_request(&locals, UA).expect("ping v4");
        let (i1, _, r1) = t.poll_request(&locals, UA).expect("ping v6");
        assert_eq!((i0, i1), (0, 1));
        assert_eq!(
            r0.headers.top_via().map(|v| v.host.as_str()),
            Some("192.0.2.10")
        );
        assert_eq!(
            r1.headers.top_via().map(|v| v.host.as_str()),
            Some("[2001:db8::10]")
        );
    }

    fn from(transport: Transport, addr: &str) -> Peer {
        Peer {
            transport,
            addr: addr.parse().expect("socket address"),
        }
    }

    #[test]
    fn lookup_by_name_and_source() {
        let mut b = cfg("b", false, 0);
        b.targets = vec!["[2001:db8::5]:5060".parse().expect("addr")];
        let t = Trunks::new(vec![cfg("a", false, 0), b], 1, T0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.index_of("b"), Some(1));
        assert_eq!(t.index_of("c"), None);
        assert_eq!(t.config(1).map(|c| c.name.as_str()), Some("b"));
        assert!(t.config(2).is_none());
        let udp = |a: &str| t.find_by_source(from(Transport::Udp, a));
        assert_eq!(udp("203.0.113.5:5060"), Some(0));
        assert_eq!(udp("[::ffff:203.0.113.5]:5060"), Some(0));
        assert_eq!(udp("[2001:db8::5]:5060"), Some(1));
        assert_eq!(udp("203.0.113.6:5060"), None);
    }

    #[test]
    fn a_udp_trunk_is_its_address_port_and_transport() {
        let t = Trunks::new(vec![cfg("a", false, 0)], 1, T0);
        // The provider's address from another port, or over another transport, is not it.
        for (transport, addr) in [
            (Transport::Udp, "203.0.113.5:5070"),
            (Transport::Udp, "203.0.113.5:40000"),
            (Transport::Tcp, "203.0.113.5:5060"),
            (Transport::Tls, "203.0.113.5:5060"),
        ] {
            assert_eq!(t.find_by_source(from(transport, addr)), None, "{addr}");
        }
        assert_eq!(
            t.find_by_source(from(Transport::Udp, "203.0.113.5:5060")),
            Some(0)
        );
    }

    #[test]
    fn a_tls_trunk_accepts_requests_only_over_tls() {
        let mut c = cfg("secure", false, 0);
        c.transport = Transport::Tls;
        c.targets = vec!["203.0.113.5:5061".parse().expect("addr")];
        let t = Trunks::new(vec![c], 1, T0);
        // Spoofed UDP from the provider's address, even from its port: not the trunk.
        assert_eq!(
            t.find_by_source(from(Transport::Udp, "203.0.113.5:5061")),
            None
        );
        assert_eq!(
            t.find_by_source(from(Transport::Tcp, "203.0.113.5:5061")),
            None
        );
        // The connection we opened, and one the provider opened from its address.
        assert_eq!(
            t.find_by_source(from(Transport::Tls, "203.0.113.5:5061")),
            Some(0)
        );
        assert_eq!(
            t.find_by_source(from(Transport::Tls, "203.0.113.5:41234")),
            Some(0)
        );
        assert_eq!(
            t.find_by_source(from(Transport::Tls, "203.0.113.6:5061")),
            None
        );
    }

    #[test]
    fn inbound_from_networks_are_bound_to_the_transport() {
        let mut c = cfg("multi", false, 0);
        c.inbound_from = vec![
            "198.51.100.16/28".parse().expect("net"),
            "2001:db8:7::/48".parse().expect("net"),
        ];
        let t = Trunks::new(vec![c], 1, T0);
        let find = |tr, a: &str| t.find_by_source(from(tr, a));
        assert_eq!(find(Transport::Udp, "198.51.100.17:5080"), Some(0));
        assert_eq!(find(Transport::Udp, "198.51.100.31:1024"), Some(0));
        assert_eq!(find(Transport::Udp, "[::ffff:198.51.100.20]:5060"), Some(0));
        assert_eq!(find(Transport::Udp, "[2001:db8:7:1::9]:5060"), Some(0));
        assert_eq!(find(Transport::Udp, "198.51.100.32:5060"), None);
        assert_eq!(find(Transport::Tcp, "198.51.100.17:5080"), None);
    }

    #[test]
    fn networks_parse_mask_and_refuse_nonsense() {
        let n: IpNet = "203.0.113.77/28".parse().expect("net");
        assert_eq!(n.to_string(), "203.0.113.64/28");
        assert!(n.contains("203.0.113.79".parse().expect("ip")));
        assert!(!n.contains("203.0.113.80".parse().expect("ip")));
        assert_eq!(
            "2001:db8::1".parse::<IpNet>().expect("host").to_string(),
            "2001:db8::1/128"
        );
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        assert!(!all.contains("2001:db8::1".parse().expect("ip")));
        for bad in ["203.0.113.0/33", "nonsense", "203.0.113.0/x", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn inbound_cap_refuses_over_the_rate_and_reports_once_a_minute() {
        let mut c = cfg("capped", false, 0);
        c.inbound_calls_per_second = 10;
        let mut t = Trunks::new(vec![c], 1, T0);
        // A burst of one second's worth passes, the 11th is refused and reported.
        for i in 0..10 {
            assert_eq!(t.admit_inbound_call(T0, 0), Admission::Admitted, "call {i}");
        }
        assert_eq!(
            t.admit_inbound_call(T0, 0),
            Admission::Refused { report: Some(1) }
        );
        for _ in 0..5 {
            assert_eq!(
                t.admit_inbound_call(T0 + 10, 0),
                Admission::Refused { report: None }
            );
        }
        // 100 ms refills one call.
        assert_eq!(t.admit_inbound_call(T0 + 110, 0), Admission::Admitted);
        assert_eq!(
            t.admit_inbound_call(T0 + 110, 0),
            Admission::Refused { report: None }
        );
        assert_eq!(t.status()[0].inbound_refused, 7);
        // A minute after the first report the next refusal reports the ones in between.
        for _ in 0..10 {
            t.admit_inbound_call(T0 + CAP_ALERT_EVERY_MS + 200, 0);
        }
        assert_eq!(
            t.admit_inbound_call(T0 + CAP_ALERT_EVERY_MS + 200, 0),
            Admission::Refused { report: Some(7) }
        );
        // A steady 10/s is never refused; no cap admits everything.
        let mut steady = Trunks::new(vec![cfg("s", false, 0)], 1, T0);
        for i in 0..100 {
            assert_eq!(
                steady.admit_inbound_call(T0 + i * 100, 0),
                Admission::Admitted
            );
        }
        let mut open = cfg("open", false, 0);
        open.inbound_calls_per_second = 0;
        let mut open = Trunks::new(vec![open], 1, T0);
        for _ in 0..1000 {
            assert_eq!(open.admit_inbound_call(T0, 0), Admission::Admitted);
        }
    }

    #[test]
    fn tcp_contact_and_ipv6_via() {
        let mut c = cfg("tcp", true, 0);
        c.transport = Transport::Tcp;
        let mut t = Trunks::new(vec![c], 1, T0);
        let v6: SocketAddr = "[2001:db8::10]:5070".parse().expect("addr");
        // No address at all: nothing can be sent.
        assert!(t.poll_request(&[], UA).is_none());
        // Only an IPv6 address: used even for an IPv4 peer.
        let (_, _, r) = t.poll_request(&[v6], UA).expect("register");
        let text = String::from_utf8(wire::emit_request(&r)).expect("ascii");
        assert!(
            text.contains("Via: SIP/2.0/TCP [2001:db8::10]:5070;branch=z9hG4bK"),
            "{text}"
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("contact: <sip:4930123456@[2001:db8::10]:5070;transport=tcp>"),
            "{text}"
        );
        assert!(wire::parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn invite_challenge_answer_is_accepted_by_the_provider() {
        let mut proxy = Authenticator::new(DOMAIN, [3u8; 32], 4, NonceConfig::default());
        let mut t = Trunks::new(vec![cfg("prov", false, 0)], 1, T0);
        let invite_uri = "sip:00441234567@sip.provider.example";
        let invite_text = format!(
            "INVITE {invite_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv\r\n\
             From: <sip:4930123456@sip.provider.example>;tag=a\r\nTo: <{invite_uri}>\r\n\
             Call-ID: inv@outpost\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let Ok(Message::Request(invite)) = wire::parse(invite_text.as_bytes()) else {
            panic!("INVITE parses");
        };
        let mut resp = reply(&invite, 407);
        for v in proxy.challenge(T0, false) {
            resp.headers.push("Proxy-Authenticate", v);
        }
        let (name, value) = t
            .answer_invite_challenge(0, &resp, invite_uri)
            .expect("answerable");
        assert_eq!(name, "Proxy-Authorization");
        let mut retry = invite.clone();
        retry.headers.push(&name, value);
        assert!(verify(&mut proxy, T0 + 1, &retry, "Proxy-Authorization"));
        let creds = parse_credentials(retry.headers.get(&name).expect("set")).expect("parses");
        assert_eq!(creds.algorithm, Algorithm::Sha256);
        assert_eq!(creds.uri, invite_uri);

        // 401 gives an Authorization header.
        let mut resp = reply(&invite, 401);
        for v in proxy.challenge(T0, false) {
            resp.headers.push("WWW-Authenticate", v);
        }
        let (name, _) = t
            .answer_invite_challenge(0, &resp, invite_uri)
            .expect("answerable");
        assert_eq!(name, "Authorization");
        // Unusable: no challenge, an unsupported one, wrong status, unknown trunk, no password.
        let bare = reply(&invite, 407);
        assert!(t.answer_invite_challenge(0, &bare, invite_uri).is_none());
        let mut odd = reply(&invite, 407);
        odd.headers.push(
            "Proxy-Authenticate",
            "Digest realm=\"x\", nonce=\"n\", algorithm=MD5-sess",
        );
        assert!(t.answer_invite_challenge(0, &odd, invite_uri).is_none());
        assert!(t
            .answer_invite_challenge(0, &reply(&invite, 403), invite_uri)
            .is_none());
        assert!(t.answer_invite_challenge(5, &resp, invite_uri).is_none());
        let mut c = cfg("open", false, 0);
        c.password.clear();
        let mut t = Trunks::new(vec![c], 1, T0);
        assert!(t.answer_invite_challenge(0, &resp, invite_uri).is_none());
    }

    #[test]
    fn hostile_reason_phrases_are_bounded_and_changes_queue_is_bounded() {
        let mut t = Trunks::new(vec![cfg("ipauth", false, 1_000)], 1, T0);
        let mut now = T0;
        for round in 0..400 {
            // Alternate 3 misses and 2 answers: a change per phase.
            for _ in 0..3 {
                let (_, p, _) = next(&mut t);
                now += 1_000;
                t.on_failure(now, 0, p, "timeout\r\nX-Injected: 1");
            }
            for _ in 0..2 {
                t.handle_timeout(now);
                let (_, p, r) = next(&mut t);
                let mut resp = reply(&r, 599);
                resp.reason = format!("{}\r\n{}", "A".repeat(10_000), round);
                now += 1_000;
                t.on_response(now, 0, p, &resp);
            }
            t.handle_timeout(now);
        }
        let st = &t.status()[0];
        assert!(
            st.reason.len() <= MAX_REASON_PHRASE + 16,
            "{}",
            st.reason.len()
        );
        assert!(!st.reason.contains('\n'));
        let mut n = 0;
        while t.poll_change().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_CHANGES);
    }

    #[test]
    fn status_serializes_for_the_admin() {
        let t = Trunks::new(vec![cfg("prov", true, 0)], 1, T0);
        let json = serde_json::to_string(&t.status()).expect("serializes");
        assert!(json.contains("\"health\":\"down\""), "{json}");
        let back: Vec<TrunkStatus> = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, t.status());
        assert!(!format!("{:?}", cfg("x", true, 0)).contains("s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn parse_challenge_reads_stale_and_algorithm() {
        let info = auth::parse_challenge(
            "Digest realm=\"r\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\", stale=TRUE",
        )
        .expect("parses");
        assert_eq!(info.realm, "r");
        assert_eq!(info.nonce, "abc");
        assert_eq!(info.algorithm, Algorithm::Sha256);
        assert!(info.stale);
        let info = auth::parse_challenge("Digest realm=r, nonce=n").expect("parses");
        assert_eq!((info.algorithm, info.stale), (Algorithm::Md5, false));
        assert!(auth::parse_challenge("Digest realm=r").is_err());
        assert!(auth::parse_challenge("Basic realm=r").is_err());
    }
}
