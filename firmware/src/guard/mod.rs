//! The firewall in the daemon: inspection before the call core, the core's feedback, and
//! what follows from them — kernel set updates, store writes, account locks for the core and
//! notices for the SIP transports — plus the `fw` admin commands.
//!
//! [`Guard`] wraps the pure detector and owns, besides it:
//! - the enforcer thread ([`EnforcerHandle`], `firewall::nft::enforcer`): nft runs block for
//!   milliseconds, so they never run on the daemon's task;
//! - the blocklist feeds ([`feeds::Feeds`]) and their `feed-reader` thread;
//! - a queue of store writes (bans, locks, alerts) the daemon commits with its own batch
//!   ([`Guard::take_writes`]), so a ban costs no extra fsync; the admin commands, the
//!   toll-fraud locks and the start-up restore write the store directly;
//! - the toll-fraud policy shared with the call core's gate ([`tollfraud`]).
//!
//! Time is passed in (`now`) for everything the detector decides; only the metrics'
//! refresh interval reads the system clock. Order of use per daemon turn:
//!
//! 1. for each inbound message: `inspect` (false = drop it), then the core;
//! 2. for each core event: `feedback` (auth outcomes) or `media` (RTP ports); the
//!    transports' reports go to `connections`;
//! 3. drain `poll_lock` / `poll_unlock` into the endpoint, and hand each lock back the
//!    sources it does not apply to (`lock_exempt`) so they are stored with it; drain
//!    `poll_conn_notice` into the transports;
//! 4. `take_writes` into the turn's store batch;
//! 5. `handle_timeout` when `poll_timeout` is due (feed reads, detector expiry, the kernel
//!    table's check every 5 s, the hourly purge of ended bans).
//!
//! The `fw` commands ([`Guard::admin`]) answer with the typed [`api::FwReply`] or
//! [`api::FwError`]; the admin layer turns them into its reply. Runtime allow-list
//! additions ([`allow`]) are not kept across a restart. `outpostctl fw import` bans a list
//! once (rule `manual`, stored like any ban); `fw export` writes our own bans in the feeds'
//! format.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use firewall::detect::{
    header_names, Alert, Detector, LoginService, Observation, Rule, Verdict, MAX_HEADER_NAMES,
};
use firewall::net::{canonical, Cidr};
use firewall::nft::{self, EnforcerHandle, SetOp};
use pbx_core::endpoint::Event;
use pbx_core::lockout::TrustedSource;
use pbx_core::media::session::MediaCommand;
use pbx_core::sip::wire::{self, WireError};
use pbx_core::sip::{Message, Peer};
use pbx_core::Millis;

use crate::driver::conn::{ConnNotice, ConnReport};
use crate::store::{Batch, FirewallChange, Store, StoreError, StoredBan, StoredLock};
use alert_log::AlertLog;
use allow::{Added, RuntimeAllow};
use api::{
    FwAlertInfo, FwCommand, FwError, FwKernelInfo, FwReply, FwRuleHits, FwRuleInfo, FwStatusInfo,
    MAX_LISTED,
};
use config::{EnforceMode, FirewallConfig, Surroundings};
use feeds::Feeds;
use rtp::RtpPairs;

pub mod alert_log;
pub mod allow;
pub mod api;
pub mod config;
pub mod feed;
pub mod feeds;
pub mod rtp;
pub mod tollfraud;

pub use feeds::FEED_POLL_MS;

/// How often the kernel table is verified (and restored if changed from outside).
const MAINTENANCE_MS: u64 = 5_000;
/// How often metrics refresh the kernel's counters (each refresh is one `nft list` run).
const KERNEL_COUNTERS_EVERY: Duration = Duration::from_secs(10);
/// How long a source whose calls tripped a toll-fraud lock stays banned.
const TOLL_FRAUD_BAN_MS: u64 = 24 * 3_600_000;
/// How often ended bans and locks are deleted from the store.
const PURGE_EVERY_MS: u64 = 3_600_000;
/// Store writes waiting for `take_writes`; beyond this they are dropped and counted.
const MAX_PENDING_WRITES: usize = 16_384;
/// Account locks and unlocks waiting for the daemon.
const MAX_QUEUED_LOCKS: usize = 4_096;
/// Longest account name accepted by `fw unlock`.
const MAX_USER_LEN: usize = 64;
/// Notices for the transports waiting for the daemon; the oldest are dropped beyond this.
const MAX_CONN_NOTICES: usize = 4_096;
/// Sources whose authentication the kernel was told about (the detector keeps as many
/// passes); beyond, a source is not added and meets the kernel's lower connection cap.
const MAX_KERNEL_AUTHED: usize = 4_096;
/// At most one alert per this long that the unauthenticated connection pool is full.
const POOL_ALERT_EVERY_MS: u64 = 60_000;
/// Reason stored with the bans of `fw import`.
const IMPORT_REASON: &str = "imported with outpostctl fw import";

/// An account lock for the call core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOrder {
    /// The account.
    pub user: String,
    /// When the lock ends.
    pub until: Millis,
    /// Sources stored with a restored lock: they had authenticated as the account, so the
    /// lock does not apply to them (empty for a new lock: the core knows its sources).
    pub except: Vec<TrustedSource>,
}

/// How the firewall enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Bans reach the kernel (nftables) and user space drops meanwhile.
    Enforcing,
    /// User space inspects and drops; the kernel does nothing, for this reason.
    UserSpace {
        /// Why kernel enforcement is off.
        reason: String,
    },
    /// Detect and alert only.
    Monitor,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Enforcing => "enforcing",
            Mode::UserSpace { .. } => "user-space",
            Mode::Monitor => "monitor",
        }
    }
}

/// The firewall's counters for metrics (see [`Guard::counters`]).
#[derive(Debug, Clone, Default)]
pub struct GuardCounters {
    /// Messages inspected.
    pub inspected: u64,
    /// Messages of banned sources dropped in user space.
    pub dropped_banned: u64,
    /// Messages dropped by a rule.
    pub dropped_rule: u64,
    /// Ban records (enforced or shadow).
    pub bans: usize,
    /// Locked accounts.
    pub locks: usize,
    /// Hits per rule.
    pub rule_hits: Vec<(String, u64)>,
    /// The kernel's counters at the last refresh.
    pub kernel: Option<nft::Counters>,
}

/// The daemon-side firewall: detector, enforcer thread, persistence and admin.
#[derive(Debug)]
pub struct Guard {
    detector: Detector,
    mode: Mode,
    enforcer: Option<EnforcerHandle>,
    /// `inet <table>`, for status.
    table: String,
    /// Whether RTP ports are opened per call in the kernel.
    rtp_closed: bool,
    /// The RTP pairs opened in the kernel per media session.
    rtp: RtpPairs,
    /// Every this long the live sessions' pinholes are refreshed (a third of their
    /// lifetime, `rtp_pinhole_secs`).
    rtp_refresh_ms: u64,
    /// The next refresh round.
    next_rtp_refresh: Millis,
    /// Networks added with `fw allow` (not persisted).
    allow: RuntimeAllow,
    /// Store writes for the daemon's next batch.
    pending: Vec<FirewallChange>,
    writes_dropped: u64,
    locks_out: VecDeque<LockOrder>,
    unlocks_out: VecDeque<String>,
    /// Bans per address within the repeat window (count, window start): the detector keeps
    /// the same count but does not expose it per address, and the store needs it so repeat
    /// offenders still escalate after a reboot.
    ban_days: HashMap<IpAddr, (u32, Millis)>,
    /// Alert log lines, rate-limited per rule.
    alert_log: AlertLog,
    next_maintenance: Millis,
    next_purge: Millis,
    inspected: u64,
    dropped_banned: u64,
    dropped_rule: u64,
    /// Reused buffer for header names (kept empty between messages).
    names: Vec<&'static str>,
    /// Blocklist feeds.
    feeds: Feeds,
    /// The toll-fraud policy (shared with the call core's gate).
    toll: tollfraud::TollFraud,
    /// The toll-fraud locks changed: write them with the next persist.
    toll_dirty: bool,
    /// The most recently banned address (the front panel offers to unban it).
    last_ban: Option<IpAddr>,
    /// When metrics last asked the enforcer for fresh kernel counters.
    counters_asked: Option<Instant>,
    /// Notices for the SIP transports (connection caps, bans).
    conn_notices: VecDeque<ConnNotice>,
    /// Whether the kernel caps connections per source (then it is told who authenticated).
    conn_kernel: bool,
    /// Sources the kernel holds as authenticated, and until when (our estimate).
    kernel_authed: HashMap<IpAddr, Millis>,
    /// When the last "connection pool full" alert was raised.
    pool_alert_at: Option<Millis>,
    /// Connections refused because the pool was full since that alert.
    pool_refused: u64,
}

impl Guard {
    /// Builds the firewall from its section and what it needs of the others, re-applies
    /// the stored bans (with their remaining time) and locks, and starts kernel enforcement
    /// when possible. Logs whether the kernel enforces and, if not, why. Never fails: a
    /// store or nft problem is logged and the firewall runs in user space.
    pub fn start(fw: &FirewallConfig, site: &Surroundings, store: &Store, now: Millis) -> Guard {
        let mut guard = Guard {
            detector: Detector::new(fw.detect_config(site)),
            mode: Mode::Monitor,
            enforcer: None,
            table: format!("inet {}", fw.table),
            rtp_closed: fw.rtp_closed(site),
            rtp: RtpPairs::default(),
            rtp_refresh_ms: u64::from(fw.rtp_pinhole_secs) * 1000 / 3,
            next_rtp_refresh: now.saturating_add(u64::from(fw.rtp_pinhole_secs) * 1000 / 3),
            allow: RuntimeAllow::default(),
            pending: Vec::new(),
            writes_dropped: 0,
            locks_out: VecDeque::new(),
            unlocks_out: VecDeque::new(),
            ban_days: HashMap::new(),
            alert_log: AlertLog::default(),
            next_maintenance: now.saturating_add(MAINTENANCE_MS),
            next_purge: now.saturating_add(PURGE_EVERY_MS),
            inspected: 0,
            dropped_banned: 0,
            dropped_rule: 0,
            names: Vec::with_capacity(MAX_HEADER_NAMES),
            feeds: Feeds::new(&fw.feeds, now),
            toll: tollfraud::TollFraud::new(fw.call_policy(&site.emergency), store),
            toll_dirty: false,
            last_ban: None,
            counters_asked: None,
            conn_notices: VecDeque::new(),
            conn_kernel: false,
            kernel_authed: HashMap::new(),
            pool_alert_at: None,
            pool_refused: 0,
        };
        let kernel_bans = guard.restore(store, now);

        guard.mode = if fw.monitor_mode() {
            Mode::Monitor
        } else if fw.enforce == EnforceMode::Off {
            Mode::UserSpace {
                reason: "firewall.enforce is \"off\"".to_string(),
            }
        } else {
            match nft::available() {
                Ok(()) => Mode::Enforcing,
                Err(reason) => Mode::UserSpace { reason },
            }
        };
        if guard.mode == Mode::Enforcing {
            let nft = fw.nft_config(site);
            guard.conn_kernel = nft.conn_limit.is_some();
            let authed = guard.restored_sources(store, now);
            match EnforcerHandle::spawn(nft, kernel_bans, authed) {
                Ok(handle) => guard.enforcer = Some(handle),
                Err(err) => {
                    guard.mode = Mode::UserSpace {
                        reason: format!("cannot start the enforcer thread: {err}"),
                    }
                }
            }
        }
        let stats = guard.detector.stats();
        match &guard.mode {
            Mode::Enforcing => tracing::info!(
                table = %guard.table, bans = stats.ban_records, locks = stats.locks,
                "firewall: kernel enforcement on (nftables)"
            ),
            Mode::UserSpace { reason } => tracing::warn!(
                bans = stats.ban_records, locks = stats.locks,
                "firewall: kernel enforcement off ({reason}); inspecting and dropping in user space only"
            ),
            Mode::Monitor => tracing::warn!(
                "firewall: monitor mode: detecting and alerting only, nothing is dropped or banned"
            ),
        }
        if guard.mode != Mode::Enforcing && !site.management.ports.is_empty() {
            // Dropbear then listens wherever `ssh.listen` says; the metrics endpoint still
            // refuses peers outside the networks itself.
            tracing::warn!(
                ports = ?site.management.ports,
                "firewall: the management zone is not enforced in the kernel ({}): the \
                 management ports are reachable from any network their listeners face",
                guard.mode.name()
            );
        }
        guard
    }

    /// Judges one inbound message before the call core; true = hand it to the core.
    /// `parsed` is the one parse of `bytes` the core gets next (`Endpoint::handle_parsed`).
    /// `from_trunk`: the message is a configured trunk's own (`Endpoint::is_trunk_source`:
    /// its address, port and transport), which passes uninspected; the kernel meters it.
    /// Anything else from a trunk's address is inspected like any source's.
    pub fn inspect(
        &mut self,
        now: Millis,
        src: Peer,
        bytes: &[u8],
        parsed: &Result<Message, WireError>,
        from_trunk: bool,
    ) -> bool {
        if from_trunk {
            return true;
        }
        let ip = canonical(src.addr.ip());
        if self.detector.is_banned(now, ip) {
            self.dropped_banned += 1;
            return false;
        }
        if wire::is_keepalive(bytes) || self.allow.contains(ip) {
            return true;
        }
        self.inspected += 1;
        let msg = match parsed {
            // Passed on (unless a rule bans or rate-limits) so the core answers precisely;
            // the key makes a message and its retransmissions count once.
            Err(err) => {
                return self.observe(
                    now,
                    Observation::Malformed {
                        src: ip,
                        size: bytes.len(),
                        key: wire::retransmission_key(bytes),
                        oversized: wire::is_size_error(err),
                    },
                )
            }
            Ok(msg) => msg,
        };
        let (method, ruri_len, headers) = match msg {
            Message::Request(r) => (Some(r.method.as_str()), request_uri_len(bytes), &r.headers),
            Message::Response(r) => (None, 0, &r.headers),
        };
        // Covariance lets the 'static buffer hold names borrowed from `bytes`.
        let mut names: Vec<&str> = std::mem::take(&mut self.names);
        header_names(bytes, &mut names);
        let pass = self.observe(
            now,
            Observation::Message {
                src: ip,
                size: bytes.len(),
                method,
                user_agent: headers.get("User-Agent"),
                from_user: headers.from.uri.user(),
                to_user: headers.to.uri.user(),
                from_tag: headers.from.tag(),
                ruri_len,
                header_names: &names,
            },
        );
        names.clear();
        // An empty vector's allocation is reused by the in-place collect; no element is mapped.
        self.names = names.into_iter().map(|_| "").collect();
        pass
    }

    /// Feeds the call core's auth outcomes to the detector (other events are ignored).
    pub fn feedback(&mut self, now: Millis, event: &Event) {
        match event {
            Event::AuthFailed {
                src, user, known, ..
            } => {
                let ip = canonical(src.addr.ip());
                if self.allow.contains(ip) {
                    return;
                }
                self.observe(now, Observation::AuthFailure { src: ip, user });
                if !known {
                    self.observe(now, Observation::UnknownUser { src: ip, user });
                }
            }
            Event::AuthSucceeded { src, user } => {
                let ip = canonical(src.addr.ip());
                self.observe(now, Observation::AuthSuccess { src: ip, user });
                let pass_ms = self.detector.config().unknown_host.pass_ms;
                self.conn_notice(ConnNotice::Authenticated {
                    src: *src,
                    for_ms: pass_ms,
                });
                self.kernel_authenticated(now, ip, pass_ms);
            }
            Event::TrunkCallsRefused {
                trunk,
                src,
                refused,
                limit,
            } => {
                // Rule `flood`: a trunk sending calls faster than it is allowed to is a
                // flood from the provider's address (forged or not); never a ban.
                let alert = Alert {
                    at: now,
                    rule: Rule::Flood,
                    addr: Some(canonical(src.addr.ip())),
                    user: None,
                    message: format!(
                        "trunk {trunk}: {refused} inbound call attempt(s) over its cap of \
                         {limit}/s refused (503)"
                    ),
                    enforced: !self.detector.config().monitor,
                };
                self.log_alert(now, &alert);
                self.write(FirewallChange::Alert(alert));
            }
            Event::CallRefused {
                src,
                ext,
                dialled,
                reason,
                lock,
            } => {
                for a in self.toll.take_alerts() {
                    let alert = Alert {
                        at: a.at,
                        rule: Rule::TollFraud,
                        addr: Some(canonical(src.addr.ip())),
                        user: a.ext.clone(),
                        message: a.message,
                        enforced: true,
                    };
                    self.log_alert(now, &alert);
                    self.write(FirewallChange::Alert(alert));
                }
                if *lock {
                    self.toll_dirty = true;
                    let ip = canonical(src.addr.ip());
                    let why = format!("toll fraud: extension {ext} dialled {dialled}: {reason}");
                    let verdict =
                        self.detector
                            .ban_source(now, ip, Rule::TollFraud, TOLL_FRAUD_BAN_MS, &why);
                    self.act(now, verdict);
                    while let Some(alert) = self.detector.poll_alert() {
                        self.log_alert(now, &alert);
                        self.write(FirewallChange::Alert(alert));
                    }
                }
            }
            _ => {}
        }
    }

    /// A registration that was live when the daemon stopped (the store's bindings, read at
    /// start): its source authenticated within the registration's lifetime, so it gets its
    /// pass back: the unknown-host gate, the connection caps and the kernel treat it as
    /// authenticated. Without this, an office of TCP phones reconnecting at once after a
    /// restart would meet the stranger's cap of connections until one of them
    /// re-registered, and be banned for the refusals.
    pub fn restored_registration(&mut self, now: Millis, src: Peer, user: &str) {
        let ip = canonical(src.addr.ip());
        if self.detector.is_banned(now, ip) {
            return;
        }
        self.observe(now, Observation::AuthSuccess { src: ip, user });
        let pass_ms = self.detector.config().unknown_host.pass_ms;
        self.conn_notice(ConnNotice::Authenticated {
            src,
            for_ms: pass_ms,
        });
        self.kernel_authenticated(now, ip, pass_ms);
    }

    /// What the transports reported about TCP/TLS connections: per source, connections
    /// opened and refused at its cap (rule `connection_flood`), and refusals because the
    /// unauthenticated pool was full (an alert at most once a minute: many sources at once,
    /// none banned for it).
    pub fn connections(&mut self, now: Millis, report: &ConnReport) {
        for &(addr, opened, refused) in &report.sources {
            let ip = canonical(addr);
            if self.allow.contains(ip) {
                continue;
            }
            self.observe(
                now,
                Observation::Connections {
                    src: ip,
                    opened,
                    refused,
                },
            );
        }
        self.pool_refused += u64::from(report.pool_refused);
        let due = self
            .pool_alert_at
            .is_none_or(|t| now >= t.saturating_add(POOL_ALERT_EVERY_MS));
        if self.pool_refused > 0 && due {
            let alert = Alert {
                at: now,
                rule: Rule::ConnectionFlood,
                addr: None,
                user: None,
                message: format!(
                    "{} TCP/TLS connections refused: the slots for unauthenticated sources are taken (many sources at once); authenticated phones keep their reserved slots",
                    self.pool_refused
                ),
                enforced: true,
            };
            self.pool_alert_at = Some(now);
            self.pool_refused = 0;
            self.log_alert(now, &alert);
            self.write(FirewallChange::Alert(alert));
        }
    }

    /// A notice for the SIP transports (`Transports::conn_notice`).
    pub fn poll_conn_notice(&mut self) -> Option<ConnNotice> {
        self.conn_notices.pop_front()
    }

    /// Networks the transports must not cap per source: the allow list, trunk peers and
    /// `fw allow` networks (loopback is always exempt).
    pub fn trusted_networks(&self) -> Vec<Cidr> {
        let c = self.detector.config();
        c.allow
            .iter()
            .copied()
            .chain(c.trunk_peers.iter().filter_map(|&p| {
                let p = canonical(p);
                Cidr::new(p, if p.is_ipv4() { 32 } else { 128 }).ok()
            }))
            .chain(self.allow.nets().iter().copied())
            .collect()
    }

    /// A failed login from `ip` to one of the box's services (SSH, reported by the dropbear
    /// supervisor; the web page, through `admin login` with a source): counts like a SIP
    /// authentication failure of that source (rule `auth_failures`); an allowed source
    /// counts nothing.
    pub fn login_failure(&mut self, now: Millis, ip: IpAddr, service: LoginService) {
        let ip = canonical(ip);
        if self.allow.contains(ip) {
            return;
        }
        self.observe(now, Observation::LoginFailure { src: ip, service });
    }

    /// Opens, in the kernel, the (remote address, local port) pairs the relay accepts media
    /// on, as calls start and change (call it with every `Event::Media` before the relay
    /// gets it); a call's end only stops their refresh ([`rtp`]: pinholes expire on their
    /// own). Per leg: each address the relay accepts (its `allowed_ips`, or its SDP address
    /// if there are none) on the leg's RTP port and the RTCP port above it. No-op unless
    /// enforcing with `rtp_closed`.
    pub fn media(&mut self, cmd: &MediaCommand) {
        if !self.rtp_closed || self.enforcer.is_none() {
            return;
        }
        for op in self.rtp.update(cmd) {
            self.enforce(op);
        }
    }

    /// An account to lock in the core (`Endpoint::trust_sources` with its `except`, then
    /// `Endpoint::lock_user`).
    pub fn poll_lock(&mut self) -> Option<LockOrder> {
        self.locks_out.pop_front()
    }

    /// The sources the lock of `user` does not apply to, as the core knows them: stored
    /// with the lock so that a restart keeps them exempt. Ignored when `user` is not locked.
    pub fn lock_exempt(&mut self, now: Millis, user: &str, except: Vec<TrustedSource>) {
        if let Some(lock) = self.detector.lock_of(now, user).filter(|l| l.enforced) {
            self.write(FirewallChange::Lock(
                user.to_string(),
                StoredLock {
                    until: lock.until,
                    rule: lock.rule,
                    except,
                },
            ));
        }
    }

    /// An account to unlock in the core (`Endpoint::unlock_user(user)`).
    pub fn poll_unlock(&mut self) -> Option<String> {
        self.unlocks_out.pop_front()
    }

    /// Moves the queued store writes (bans, locks, alerts) into the daemon's batch.
    pub fn take_writes(&mut self, batch: &mut Batch) {
        batch.firewall.append(&mut self.pending);
    }

    /// Whether the enforcer thread finished a round within `max` (the guard asks it to
    /// verify the table every few seconds); `None` when the kernel does not enforce.
    pub fn enforcer_fresh(&self, max: Duration) -> Option<bool> {
        let last = self.enforcer.as_ref()?.last_round();
        Some(last.is_some_and(|t| t.elapsed() <= max))
    }

    /// Counters for metrics, without waiting for anything: the kernel's counters are the
    /// ones cached at the last refresh; a refresh (one `nft list` run on the enforcer
    /// thread) is requested at most every 10 s.
    pub fn counters(&mut self) -> GuardCounters {
        let stats = self.detector.stats();
        let refresh = self
            .counters_asked
            .is_none_or(|t| t.elapsed() >= KERNEL_COUNTERS_EVERY);
        if refresh {
            self.counters_asked = Some(Instant::now());
        }
        let kernel = self.enforcer.as_ref().and_then(|e| {
            if refresh {
                e.refresh_counters();
            }
            e.counters()
        });
        GuardCounters {
            inspected: self.inspected,
            dropped_banned: self.dropped_banned + stats.dropped_banned,
            dropped_rule: self.dropped_rule,
            bans: stats.ban_records,
            locks: stats.locks,
            rule_hits: self
                .detector
                .rule_hits()
                .into_iter()
                .map(|(rule, hits)| (rule.to_string(), hits))
                .collect(),
            kernel,
        }
    }

    /// The most recently banned address, if it is still banned.
    pub fn last_ban(&self) -> Option<IpAddr> {
        self.last_ban
    }

    /// The toll-fraud check for the call core (see [`tollfraud`]).
    pub fn toll_gate(&self) -> Box<dyn pbx_core::endpoint::CallGate> {
        self.toll.gate()
    }

    /// New toll-fraud settings from a configuration change (`emergency`: the numbers of
    /// `[dialplan]`).
    pub fn set_policy(&self, fw: &FirewallConfig, emergency: &[String]) {
        self.toll.set_config(fw.call_policy(emergency));
    }

    /// A new management zone from a configuration change: the kernel's management sets are
    /// replaced (by the enforcer thread, in one nft run). Without kernel enforcement there
    /// is nothing to update (the start-up log said the zone is not enforced).
    pub fn set_management(&mut self, zone: nft::ManagementZone) {
        if let Some(e) = self.enforcer.as_mut() {
            e.set_management(zone);
        }
    }

    /// The trunks' addresses changed (a trunk host resolved to other addresses, or the
    /// trunks were reconfigured): the never-banned trunk addresses and the kernel's trunk
    /// sets follow `site` (built like the one given to [`Guard::start`]). The transports'
    /// trusted networks are the caller's to refresh ([`Guard::trusted_networks`]).
    pub fn set_trunks(&mut self, fw: &FirewallConfig, site: &Surroundings) {
        self.detector
            .set_trunk_peers(fw.detect_config(site).trunk_peers);
        if let Some(e) = self.enforcer.as_mut() {
            e.set_trunk_peers(fw.nft_config(site).trunk_peers);
        }
    }

    /// Writes the toll-fraud locks when they changed (rare: a lock is an incident).
    pub fn save_toll_locks(&mut self, store: &Store) {
        if std::mem::take(&mut self.toll_dirty) {
            if let Err(err) = self.toll.save(store) {
                tracing::error!(%err, "toll-fraud: cannot store the locks");
            }
        }
    }

    /// Writes the queued store writes now, in their own transaction.
    pub fn persist(&mut self, store: &Store) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut self.pending);
        store.fw_apply(&changes)
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let refresh = (!self.rtp.is_empty()).then_some(self.next_rtp_refresh);
        [
            self.detector.poll_timeout(),
            self.feeds.poll_timeout(),
            refresh,
        ]
        .into_iter()
        .flatten()
        .chain([self.next_maintenance])
        .min()
    }

    /// Expires detector state; starts due feed reads and applies finished ones; refreshes
    /// the live calls' RTP pinholes every third of their lifetime; every 5 s
    /// asks the enforcer thread to verify the kernel table (it restores it with the live
    /// bans if it was flushed or altered); hourly deletes ended bans and locks from the
    /// store.
    pub fn handle_timeout(&mut self, now: Millis) {
        let ops = self.feeds.tick(now, &mut self.detector, &self.allow);
        self.enforce_all(ops);
        if now >= self.next_rtp_refresh {
            self.next_rtp_refresh = now.saturating_add(self.rtp_refresh_ms.max(1));
            let refresh = self.rtp.refresh();
            self.enforce_all(refresh);
        }
        if self.detector.poll_timeout().is_some_and(|t| t <= now) {
            self.detector.handle_timeout(now);
        }
        if now < self.next_maintenance {
            return;
        }
        self.next_maintenance = now.saturating_add(MAINTENANCE_MS);
        if let Some(e) = &mut self.enforcer {
            e.verify();
        }
        self.alert_log.flush(now);
        if self.writes_dropped > 0 {
            tracing::error!(
                dropped = self.writes_dropped,
                "firewall: store writes dropped because the queue was full"
            );
            self.writes_dropped = 0;
        }
        if now >= self.next_purge {
            self.next_purge = now.saturating_add(PURGE_EVERY_MS);
            self.write(FirewallChange::PurgeExpired(now));
            let window = self.detector.config().repeat.window_ms;
            self.ban_days
                .retain(|_, (_, start)| now < start.saturating_add(window));
        }
    }

    /// Serves one `outpostctl fw` command. Writes queued for the store are written first,
    /// so the answer reflects what is on disk.
    pub fn admin(
        &mut self,
        now: Millis,
        cmd: FwCommand,
        store: &Store,
    ) -> Result<FwReply, FwError> {
        if let Err(err) = self.persist(store) {
            tracing::error!(%err, "firewall: store write failed");
        }
        match cmd {
            FwCommand::Status { cached } => self
                .status(now, store, cached)
                .map(|st| FwReply::Status(Box::new(st))),
            FwCommand::Bans => Ok(FwReply::Bans(api::ban_list(
                now,
                self.detector.bans(now),
                self.detector.locks(now),
                self.toll.locked(),
            ))),
            FwCommand::Unban { addr } => match addr.trim().parse::<IpAddr>() {
                Ok(ip) => self.unban(ip, store),
                Err(_) => Err(FwError::NotAnAddress(addr)),
            },
            FwCommand::Allow { cidr } => match cidr.parse::<Cidr>() {
                Ok(net) => self.allow(now, net, store),
                Err(source) => Err(FwError::NotANetwork { text: cidr, source }),
            },
            FwCommand::Unlock { user } => self.unlock(user, store),
            FwCommand::Alerts { limit } => match store.fw_alerts(limit.min(MAX_LISTED)) {
                Ok(alerts) => Ok(FwReply::Alerts(
                    alerts.into_iter().map(FwAlertInfo::from).collect(),
                )),
                Err(err) => Err(FwError::ReadAlerts(err)),
            },
            FwCommand::Rules => Ok(FwReply::Rules(self.rules())),
            FwCommand::Import { text, ban_secs } => self.import(now, &text, ban_secs, store),
            FwCommand::Export => Ok(FwReply::Export(api::export(now, self.detector.bans(now)))),
        }
    }

    /// How the firewall enforces.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Whether `ip` is banned now (user space view).
    pub fn is_banned(&self, now: Millis, ip: IpAddr) -> bool {
        self.detector.is_banned(now, ip)
    }

    // -------------------------------------------------------------------------------------
    // Internals
    // -------------------------------------------------------------------------------------

    /// Re-applies stored bans and locks; returns the bans for the kernel (remaining secs).
    fn restore(&mut self, store: &Store, now: Millis) -> Vec<(IpAddr, u64)> {
        let mut kernel = Vec::new();
        let mut stale = Vec::new();
        match store.fw_bans() {
            Ok(rows) => {
                for (addr, ban) in rows {
                    self.detector
                        .restore_ban(now, addr, ban.until, ban.rule, ban.count_today);
                    if self.detector.is_banned(now, addr) {
                        kernel.push((addr, ban.until.saturating_sub(now).div_ceil(1_000)));
                        self.ban_days.insert(addr, (ban.count_today.max(1), now));
                    } else if ban.until > now && !self.detector.config().monitor {
                        // Trusted by now (allow list changed): the stored ban is void.
                        stale.push(FirewallChange::Unban(addr));
                    }
                }
            }
            Err(err) => tracing::error!(%err, "firewall: cannot load the stored bans"),
        }
        match store.fw_locks() {
            Ok(rows) => {
                for (user, lock) in rows {
                    self.detector
                        .restore_lock(now, &user, lock.until, lock.rule);
                    if self.detector.is_locked(now, &user)
                        && self.locks_out.len() < MAX_QUEUED_LOCKS
                    {
                        self.locks_out.push_back(LockOrder {
                            user,
                            until: lock.until,
                            except: lock.except,
                        });
                    }
                }
            }
            Err(err) => tracing::error!(%err, "firewall: cannot load the stored locks"),
        }
        stale.push(FirewallChange::PurgeExpired(now));
        if let Err(err) = store.fw_apply(&stale) {
            tracing::error!(%err, "firewall: cannot delete ended bans from the store");
        }
        kernel
    }

    /// Observes, acts on the verdict, the queued secondary verdicts and the alerts; true
    /// when the message may reach the core.
    fn observe(&mut self, now: Millis, obs: Observation<'_>) -> bool {
        let verdict = self.detector.observe(now, obs);
        let pass = self.act(now, verdict);
        while let Some(v) = self.detector.poll_verdict() {
            self.act(now, v);
        }
        while let Some(alert) = self.detector.poll_alert() {
            self.log_alert(now, &alert);
            self.write(FirewallChange::Alert(alert));
        }
        pass
    }

    fn act(&mut self, now: Millis, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Pass => true,
            Verdict::Drop { .. } => {
                self.dropped_rule += 1;
                false
            }
            Verdict::Ban {
                addr,
                duration_ms,
                rule,
                reason,
            } => {
                self.dropped_rule += 1;
                self.last_ban = Some(addr);
                self.conn_notice(ConnNotice::Banned {
                    addr,
                    for_ms: duration_ms,
                });
                let count_today = self.count_ban(now, addr);
                if self.alert_log.admit_event(now, rule) {
                    let secs = duration_ms.div_ceil(1_000);
                    // `sd`: a structured event for the remote syslog collectors (crate::log).
                    tracing::warn!(
                        sd = "ban",
                        src = %addr,
                        rule = %rule,
                        reason = %reason.escape_debug(),
                        secs,
                        enforced = !self.detector.config().monitor,
                        "firewall: banned {addr} for {secs} s ({rule})"
                    );
                }
                self.write(FirewallChange::Ban(
                    addr,
                    StoredBan {
                        until: now.saturating_add(duration_ms),
                        rule,
                        reason,
                        count_today,
                    },
                ));
                self.enforce(SetOp::Ban {
                    addr,
                    timeout_secs: duration_ms.div_ceil(1_000),
                });
                false
            }
            Verdict::LockAccount {
                user,
                duration_ms,
                rule,
            } => {
                let until = now.saturating_add(duration_ms);
                if self.alert_log.admit_event(now, rule) {
                    let secs = duration_ms.div_ceil(1_000);
                    tracing::warn!(
                        sd = "lock",
                        user = %user.escape_debug(),
                        rule = %rule,
                        secs,
                        "firewall: account {} locked for {secs} s ({rule})",
                        user.escape_debug()
                    );
                }
                self.write(FirewallChange::Lock(
                    user.clone(),
                    StoredLock {
                        until,
                        rule,
                        except: Vec::new(),
                    },
                ));
                if self.locks_out.len() >= MAX_QUEUED_LOCKS {
                    self.locks_out.pop_front();
                }
                self.locks_out.push_back(LockOrder {
                    user,
                    until,
                    except: Vec::new(),
                });
                true
            }
        }
    }

    /// This address's bans within the repeat window, this one included (as the detector
    /// counts them).
    fn count_ban(&mut self, now: Millis, addr: IpAddr) -> u32 {
        let window = self.detector.config().repeat.window_ms;
        let max = self.detector.config().limits.max_bans.max(1);
        if self.ban_days.len() >= max && !self.ban_days.contains_key(&addr) {
            self.ban_days
                .retain(|_, (_, start)| now < start.saturating_add(window));
            if self.ban_days.len() >= max {
                return 1;
            }
        }
        let entry = self.ban_days.entry(addr).or_insert((0, now));
        if now >= entry.1.saturating_add(window) {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.0
    }

    fn log_alert(&mut self, now: Millis, alert: &Alert) {
        self.alert_log.log(now, alert);
    }

    fn conn_notice(&mut self, notice: ConnNotice) {
        if self.conn_notices.len() >= MAX_CONN_NOTICES {
            self.conn_notices.pop_front();
        }
        self.conn_notices.push_back(notice);
    }

    /// Tells the kernel that `ip` authenticated (for its connection cap): when it is new
    /// there, or its entry has run half its time; so a phone re-registering costs one
    /// set update per half pass, not one per REGISTER.
    fn kernel_authenticated(&mut self, now: Millis, ip: IpAddr, pass_ms: u64) {
        if self.enforcer.is_none() || !self.kernel_authed_due(now, ip, pass_ms) {
            return;
        }
        self.enforce(SetOp::Authenticated {
            addr: ip,
            timeout_secs: pass_ms.div_ceil(1_000),
        });
    }

    /// Whether the kernel must be told that `ip` authenticated now (see
    /// [`Guard::kernel_authenticated`]); if so, it is noted as told.
    fn kernel_authed_due(&mut self, now: Millis, ip: IpAddr, pass_ms: u64) -> bool {
        if !self.conn_kernel || self.trusted(ip) || self.detector.is_banned(now, ip) {
            return false;
        }
        let fresh = self
            .kernel_authed
            .get(&ip)
            .is_some_and(|&until| until.saturating_sub(now) > pass_ms / 2);
        if fresh {
            return false;
        }
        if self.kernel_authed.len() >= MAX_KERNEL_AUTHED && !self.kernel_authed.contains_key(&ip) {
            self.kernel_authed.retain(|_, until| *until > now);
            if self.kernel_authed.len() >= MAX_KERNEL_AUTHED {
                return false;
            }
        }
        self.kernel_authed.insert(ip, now.saturating_add(pass_ms));
        true
    }

    /// The sources of the stored registrations that are still live (address, seconds of
    /// pass), for the table's first load: the kernel gives an office of TCP phones
    /// reconnecting after a restart the authenticated cap from the first SYN, not only
    /// once the set update after the load has run. Noted as told, so
    /// [`Guard::restored_registration`] does not send them again.
    fn restored_sources(&mut self, store: &Store, now: Millis) -> Vec<(IpAddr, u64)> {
        let bindings = match store.bindings_all() {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!("firewall: cannot read the stored registrations: {err}");
                return Vec::new();
            }
        };
        let pass_ms = self.detector.config().unknown_host.pass_ms;
        let mut out = Vec::new();
        for b in bindings.iter().filter(|b| b.expires_at > now) {
            let ip = canonical(b.source.addr.ip());
            if self.kernel_authed_due(now, ip, pass_ms) {
                out.push((ip, pass_ms.div_ceil(1_000)));
            }
        }
        out
    }

    fn write(&mut self, change: FirewallChange) {
        if self.pending.len() >= MAX_PENDING_WRITES {
            self.writes_dropped += 1;
            return;
        }
        self.pending.push(change);
    }

    fn enforce(&mut self, op: SetOp) {
        if let Some(e) = &mut self.enforcer {
            e.send(op);
        }
    }

    /// Many set updates in one message to the enforcer thread (a feed, an import).
    fn enforce_all(&mut self, ops: Vec<SetOp>) {
        if ops.is_empty() {
            return;
        }
        if let Some(e) = &mut self.enforcer {
            e.send_all(ops);
        }
    }

    /// Never banned: loopback, trunk peers, allow-listed networks (config and `fw allow`).
    fn trusted(&self, ip: IpAddr) -> bool {
        self.allow.trusts(self.detector.config(), ip)
    }

    /// `fw import`: bans every address of a blocklist once, stored like any ban.
    fn import(
        &mut self,
        now: Millis,
        text: &str,
        ban_secs: u64,
        store: &Store,
    ) -> Result<FwReply, FwError> {
        if !(1..=nft::MAX_BAN_SECS).contains(&ban_secs) {
            return Err(FwError::BanLength {
                max: nft::MAX_BAN_SECS,
            });
        }
        if self.mode == Mode::Monitor {
            return Err(FwError::Monitor);
        }
        let parsed = feed::parse(text, now).map_err(FwError::NotABlocklist)?;
        if parsed.addrs.is_empty() {
            return Err(FwError::NothingToImport(api::import_summary(&parsed)));
        }
        let until = now.saturating_add(ban_secs.saturating_mul(1_000));
        let current: HashMap<IpAddr, Millis> = self
            .detector
            .bans(now)
            .into_iter()
            .filter(|b| b.enforced)
            .map(|b| (b.addr, b.until))
            .collect();
        let (mut ignored, mut already) = (0usize, 0usize);
        let mut changes = Vec::new();
        let mut ops = Vec::new();
        for &addr in &parsed.addrs {
            if self.trusted(addr) {
                ignored += 1;
                continue;
            }
            if current.get(&addr).is_some_and(|&u| u >= until) {
                already += 1;
                continue;
            }
            self.detector.restore_ban(now, addr, until, Rule::Manual, 1);
            self.feeds.forget(addr);
            changes.push(FirewallChange::Ban(
                addr,
                StoredBan {
                    until,
                    rule: Rule::Manual,
                    reason: IMPORT_REASON.to_string(),
                    count_today: 1,
                },
            ));
            ops.push(SetOp::Ban {
                addr,
                timeout_secs: ban_secs,
            });
        }
        let banned = ops.len();
        self.enforce_all(ops);
        let stored = store.fw_apply(&changes);
        tracing::info!(
            banned,
            already,
            ignored,
            invalid = parsed.invalid,
            "firewall: blocklist imported by the admin"
        );
        let done = format!(
            "{banned} addresses banned for {ban_secs} s; {already} already banned as long or longer, {ignored} ignored (allow-listed, trunk peer or loopback); {}",
            api::import_summary(&parsed)
        );
        match stored {
            Ok(()) => Ok(FwReply::Done(done)),
            Err(source) => Err(FwError::ImportNotStored { done, source }),
        }
    }

    fn unban(&mut self, ip: IpAddr, store: &Store) -> Result<FwReply, FwError> {
        let ip = canonical(ip);
        let existed = self.detector.unban(ip);
        self.ban_days.remove(&ip);
        self.feeds.forget(ip);
        self.enforce(SetOp::Unban(ip));
        self.conn_notice(ConnNotice::Unbanned(ip));
        if let Err(source) = store.fw_apply(&[FirewallChange::Unban(ip)]) {
            return Err(FwError::UnbanNotStored { addr: ip, source });
        }
        tracing::info!(sd = "unban", src = %ip, by = "admin", "firewall: {ip} unbanned by the admin");
        let listing = self.feeds.listing(ip);
        let feed_note = if listing.is_empty() {
            String::new()
        } else {
            format!(
                "; blocklist feed {} still lists it, so it is banned again at the feed's next refresh (use `fw allow` to exempt it)",
                listing.join(", ")
            )
        };
        Ok(FwReply::Done(if existed {
            format!("{ip} unbanned (kernel, store and its counters cleared){feed_note}")
        } else {
            format!("{ip} was not banned; kernel and store entries cleared anyway{feed_note}")
        }))
    }

    fn allow(&mut self, now: Millis, net: Cidr, store: &Store) -> Result<FwReply, FwError> {
        match self.allow.add(net) {
            Added::New => {}
            Added::Already => return Ok(FwReply::Done(format!("{net} is already allowed"))),
            Added::Full => {
                return Err(FwError::TooManyAllowed {
                    max: allow::MAX_RUNTIME_ALLOW,
                })
            }
        }
        self.enforce(SetOp::Allow(net));
        self.conn_notice(ConnNotice::Trusted(net));
        let inside: Vec<IpAddr> = self
            .detector
            .bans(now)
            .into_iter()
            .map(|b| b.addr)
            .filter(|a| net.contains(*a))
            .collect();
        for ip in &inside {
            self.detector.unban(*ip);
            self.ban_days.remove(ip);
            self.feeds.forget(*ip);
            self.enforce(SetOp::Unban(*ip));
            self.conn_notice(ConnNotice::Unbanned(*ip));
        }
        self.feeds.exclude(net);
        let changes: Vec<FirewallChange> =
            inside.iter().map(|ip| FirewallChange::Unban(*ip)).collect();
        if let Err(err) = store.fw_apply(&changes) {
            tracing::error!(%err, "firewall: cannot delete lifted bans from the store");
        }
        tracing::info!(net = %net, lifted = inside.len(), "firewall: network allowed by the admin");
        Ok(FwReply::Done(format!(
            "{net} allowed until the daemon restarts (add it to [firewall.detect] allow to keep it); {} bans inside it lifted",
            inside.len()
        )))
    }

    fn unlock(&mut self, user: String, store: &Store) -> Result<FwReply, FwError> {
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Err(FwError::NotAnAccount);
        }
        let toll_locked = self.toll.unlock(&user, store).map_err(FwError::TollStore)?;
        let existed = self.detector.unlock(&user) || toll_locked;
        store
            .fw_apply(&[FirewallChange::Unlock(user.clone())])
            .map_err(FwError::DeleteLock)?;
        if self.unlocks_out.len() >= MAX_QUEUED_LOCKS {
            self.unlocks_out.pop_front();
        }
        self.unlocks_out.push_back(user.clone());
        Ok(FwReply::Done(if existed {
            format!("account {user} unlocked")
        } else {
            format!("account {user} was not locked")
        }))
    }

    fn status(
        &mut self,
        now: Millis,
        store: &Store,
        cached: bool,
    ) -> Result<FwStatusInfo, FwError> {
        let stats = self.detector.stats();
        let alerts_stored = store.fw_alert_count().map_err(FwError::ReadAlerts)?;
        let kernel = self.enforcer.as_ref().map(|e| {
            let state = if cached {
                e.refresh_counters();
                e.cached()
            } else {
                e.snapshot()
            };
            FwKernelInfo {
                table: self.table.clone(),
                installed: state.installed,
                counters: state.counters,
                batches: state.batches,
                ops: state.ops,
                restores: state.restores,
                failures: state.failures,
                queue_drops: e.queue_drops(),
                last_error: state.last_error,
                nft_batch_processes: state.nft_batch_processes,
                nft_processes: state.nft_processes,
                enforcer_cpus: state.cpus,
            }
        });
        let now_bans = self
            .detector
            .bans(now)
            .iter()
            .filter(|b| b.enforced)
            .count();
        Ok(FwStatusInfo {
            mode: self.mode.name().to_string(),
            reason: match &self.mode {
                Mode::UserSpace { reason } => Some(reason.clone()),
                _ => None,
            },
            bans: now_bans,
            locks: stats.locks,
            sources: stats.sources,
            passes: stats.passes,
            inspected: self.inspected,
            dropped_banned: self.dropped_banned + stats.dropped_banned,
            dropped_rule: self.dropped_rule,
            alerts_stored,
            runtime_allow: self.allow.nets().iter().map(Cidr::to_string).collect(),
            kernel,
            rule_hits: self
                .detector
                .rule_hits()
                .into_iter()
                .map(|(rule, hits)| FwRuleHits {
                    rule: rule.to_string(),
                    hits,
                })
                .collect(),
            would_be_bans: stats.would_be_bans,
            would_be_dropped: stats.would_be_dropped,
            feeds: self.feeds.health(),
            connections: None,
        })
    }

    fn rules(&self) -> Vec<FwRuleInfo> {
        let hits: HashMap<Rule, u64> = self.detector.rule_hits().into_iter().collect();
        api::rule_table(self.detector.config(), &hits, self.feeds.len())
    }
}

/// Length of the Request-URI on the start line of a raw request.
fn request_uri_len(bytes: &[u8]) -> usize {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    let rest = &bytes[start..];
    let line = &rest[..rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())];
    line.split(|&b| b == b' ')
        .filter(|p| !p.is_empty())
        .nth(1)
        .map_or(0, <[u8]>::len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use firewall::nft::{FloodLimit, SentOps};
    use pbx_core::sip::{Method, Transport};

    use super::api::FwFeedInfo;
    use super::feed::MAX_FEED_BYTES;
    use super::*;

    const T0: Millis = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn config() -> FirewallConfig {
        FirewallConfig {
            enforce: EnforceMode::Off,
            ..FirewallConfig::default()
        }
    }

    /// The rest of the default configuration, as the daemon hands it over.
    fn site() -> Surroundings {
        crate::config::Config::default().firewall_surroundings()
    }

    fn start(fw: &FirewallConfig, store: &Store, now: Millis) -> Guard {
        Guard::start(fw, &site(), store, now)
    }

    fn peer(ip: &str) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: std::net::SocketAddr::new(ip.parse().unwrap(), 5060),
        }
    }

    fn options(ip: &str, ua: &str, n: u32) -> Vec<u8> {
        format!(
            "OPTIONS sip:100@192.0.2.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK-{n}\r\n\
             From: <sip:probe@{ip}>;tag=t{n}\r\n\
             To: <sip:100@192.0.2.1>\r\n\
             Call-ID: c{n}@{ip}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\n\
             User-Agent: {ua}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn inspect(g: &mut Guard, now: Millis, ip: &str, bytes: &[u8]) -> bool {
        let parsed = wire::parse(bytes);
        g.inspect(now, peer(ip), bytes, &parsed, false)
    }

    fn auth_failed(ip: &str, user: &str, known: bool) -> Event {
        Event::AuthFailed {
            src: peer(ip),
            user: user.to_string(),
            method: Method::Register,
            known,
        }
    }

    fn flush(g: &mut Guard, store: &Store) {
        let mut batch = Batch::default();
        g.take_writes(&mut batch);
        store.commit(&batch).unwrap();
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn scanner_options_is_dropped_banned_and_the_ban_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        assert!(matches!(g.mode(), Mode::UserSpace { reason } if reason.contains("off")));

        assert!(inspect(
            &mut g,
            T0,
            "198.51.100.20",
            &options("198.51.100.20", "Linphone/5.0", 1)
        ));
        assert!(!inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 2)
        ));
        assert!(g.is_banned(T0, ip("203.0.113.9")));
        flush(&mut g, &store);

        let bans = store.fw_bans().unwrap();
        assert_eq!(bans.len(), 1);
        let (addr, ban) = &bans[0];
        assert_eq!(*addr, ip("203.0.113.9"));
        assert_eq!(ban.rule, Rule::Scanner);
        assert_eq!(
            ban.until,
            T0 + 24 * 60 * MIN,
            "scanner ban is 24 h by default"
        );
        assert_eq!(ban.count_today, 1);
        let alerts = store.fw_alerts(10).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].addr, Some(ip("203.0.113.9")));
        assert!(alerts[0].enforced);
    }

    #[test]
    fn ten_auth_failures_ban_the_source_and_its_messages_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let attacker = "203.0.113.50";
        // Different accounts, so only the per-source rule counts.
        for i in 0..9 {
            g.feedback(
                T0 + i * 1_000,
                &auth_failed(attacker, &format!("1{i:02}"), true),
            );
        }
        assert!(
            !g.is_banned(T0 + 9_000, ip(attacker)),
            "9 failures are tolerated"
        );
        g.feedback(T0 + 9_000, &auth_failed(attacker, "199", true));
        assert!(g.is_banned(T0 + 9_000, ip(attacker)));
        assert!(g.poll_lock().is_none(), "no account failed three times");

        let msg = options(attacker, "Yealink SIP-T46S", 3);
        assert!(!inspect(&mut g, T0 + 10_000, attacker, &msg));
        assert!(!inspect(&mut g, T0 + 11_000, attacker, &msg));
        assert_eq!(g.dropped_banned, 2, "counted as dropped for a ban");
        // The ban is over after 10 min.
        assert!(inspect(&mut g, T0 + 9_000 + 10 * MIN, attacker, &msg));

        flush(&mut g, &store);
        let bans = store.fw_bans().unwrap();
        assert_eq!(bans[0].1.rule, Rule::AuthFailures);
        assert_eq!(bans[0].1.until, T0 + 9_000 + 10 * MIN);
    }

    #[test]
    fn distributed_guessing_locks_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        g.feedback(T0, &auth_failed("203.0.113.1", "100", true));
        g.feedback(T0 + 1_000, &auth_failed("203.0.113.2", "100", true));
        assert_eq!(g.poll_lock(), None);
        g.feedback(T0 + 2_000, &auth_failed("2001:db8::3", "100", true));
        assert_eq!(
            g.poll_lock(),
            Some(LockOrder {
                user: "100".to_string(),
                until: T0 + 2_000 + 15 * MIN,
                except: Vec::new(),
            })
        );
        assert_eq!(g.poll_lock(), None);
        // The daemon hands back the sources the core exempts; they are stored with it.
        let phone = TrustedSource {
            ip: ip("10.0.0.5"),
            port: None,
        };
        g.lock_exempt(T0 + 2_000, "100", vec![phone]);
        g.lock_exempt(T0 + 2_000, "not-locked", vec![phone]);
        for src in ["203.0.113.1", "203.0.113.2", "2001:db8::3"] {
            assert!(
                !g.is_banned(T0 + 2_000, ip(src)),
                "one failure each bans nobody"
            );
        }
        flush(&mut g, &store);
        let locks = store.fw_locks().unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].0, "100");
        assert_eq!(locks[0].1.rule, Rule::AccountGuessing);
        assert_eq!(locks[0].1.except, vec![phone]);
        assert_eq!(locks[0].1.until, T0 + 2_000 + 15 * MIN);

        // The admin unlocks: the core is told, the store forgets it.
        let reply = g.admin(T0 + 3_000, FwCommand::Unlock { user: "100".into() }, &store);
        assert!(matches!(reply, Ok(FwReply::Done(_))), "{reply:?}");
        assert_eq!(g.poll_unlock(), Some("100".to_string()));
        assert!(store.fw_locks().unwrap().is_empty());
    }

    #[test]
    fn unknown_users_count_as_failures_and_feed_enumeration() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        for i in 0..10 {
            g.feedback(
                T0 + i,
                &auth_failed("203.0.113.77", &format!("x{i}"), false),
            );
        }
        assert!(g.is_banned(T0 + 10, ip("203.0.113.77")));
        let hits: HashMap<Rule, u64> = g.detector.rule_hits().into_iter().collect();
        assert_eq!(hits[&Rule::AuthFailures], 1);
    }

    #[test]
    fn unban_clears_detector_store_and_old_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let phone = "192.0.2.44";
        for i in 0..10 {
            g.feedback(T0 + i, &auth_failed(phone, &format!("2{i:02}"), true));
        }
        assert!(g.is_banned(T0 + 10, ip(phone)));
        let reply = g.admin(T0 + 20, FwCommand::Unban { addr: phone.into() }, &store);
        match reply {
            Ok(FwReply::Done(message)) => assert!(message.contains("unbanned"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(!g.is_banned(T0 + 20, ip(phone)));
        assert!(
            store.fw_bans().unwrap().is_empty(),
            "the ban was persisted, then deleted"
        );
        assert!(inspect(
            &mut g,
            T0 + 30,
            phone,
            &options(phone, "Yealink", 9)
        ));
        // Old counts are gone: one more failure does not ban again.
        g.feedback(T0 + 40, &auth_failed(phone, "200", true));
        assert!(!g.is_banned(T0 + 40, ip(phone)));

        let bad = g.admin(
            T0,
            FwCommand::Unban {
                addr: "nope".into(),
            },
            &store,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn bans_and_locks_survive_a_restart_with_their_remaining_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        {
            let mut g = start(&config(), &store, T0);
            assert!(!inspect(
                &mut g,
                T0,
                "203.0.113.9",
                &options("203.0.113.9", "sipvicious", 1)
            ));
            for (i, src) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
                .iter()
                .enumerate()
            {
                g.feedback(T0 + i as u64, &auth_failed(src, "101", true));
            }
            assert!(g.poll_lock().is_some());
            flush(&mut g, &store);
        }
        let later = T0 + 60 * MIN;
        let mut g = start(&config(), &store, later);
        assert!(g.is_banned(later, ip("203.0.113.9")));
        assert!(!inspect(
            &mut g,
            later,
            "203.0.113.9",
            &options("203.0.113.9", "x", 2)
        ));
        let Ok(FwReply::Bans(list)) = g.admin(later, FwCommand::Bans, &store) else {
            panic!("not a ban list")
        };
        assert_eq!(list.bans.len(), 1);
        assert_eq!(
            list.bans[0].remaining_secs,
            23 * 3_600,
            "24 h minus the hour that passed"
        );
        assert_eq!(list.bans[0].rule, "scanner");
        // The lock (15 min) ended during the hour: not restored, and purged from the store.
        assert!(list.locks.is_empty());
        assert_eq!(g.poll_lock(), None);
        assert!(store.fw_locks().unwrap().is_empty());

        // A lock that is still running is handed to the core again after a restart.
        store
            .fw_apply(&[FirewallChange::Lock(
                "102".into(),
                StoredLock {
                    until: later + 5 * MIN,
                    rule: Rule::AccountGuessing,
                    except: vec![TrustedSource {
                        ip: ip("198.51.100.7"),
                        port: Some(31_000),
                    }],
                },
            )])
            .unwrap();
        let mut g = start(&config(), &store, later + MIN);
        // With the sources it does not apply to.
        assert_eq!(
            g.poll_lock(),
            Some(LockOrder {
                user: "102".to_string(),
                until: later + 5 * MIN,
                except: vec![TrustedSource {
                    ip: ip("198.51.100.7"),
                    port: Some(31_000),
                }],
            })
        );
        // And a ban that ended while the daemon was down is gone for good.
        let much_later = T0 + 25 * 60 * MIN;
        let g2 = {
            drop(g);
            start(&config(), &store, much_later)
        };
        assert!(!g2.is_banned(much_later, ip("203.0.113.9")));
        assert!(store.fw_bans().unwrap().is_empty());
    }

    #[test]
    fn alerts_are_persisted_listed_and_their_logging_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        for n in 0..25u32 {
            let src = format!("203.0.113.{}", n + 1);
            assert!(!inspect(
                &mut g,
                T0 + u64::from(n),
                &src,
                &options(&src, "friendly-scanner", n)
            ));
        }
        assert_eq!(
            g.alert_log.logged(),
            10,
            "at most 10 lines per rule per minute"
        );
        assert_eq!(g.alert_log.suppressed(), 15);
        // Next minute: logging resumes.
        let src = "198.51.100.99";
        assert!(!inspect(
            &mut g,
            T0 + MIN,
            src,
            &options(src, "sipcli/1.8", 99)
        ));
        assert_eq!(g.alert_log.logged(), 11);

        let Ok(FwReply::Alerts(alerts)) = g.admin(T0 + MIN, FwCommand::Alerts { limit: 5 }, &store)
        else {
            panic!("not an alert list")
        };
        assert_eq!(alerts.len(), 5);
        assert_eq!(alerts[0].addr.as_deref(), Some(src), "newest first");
        assert_eq!(alerts[0].rule, "scanner");
        assert_eq!(store.fw_alert_count().unwrap(), 26, "every alert is stored");
    }

    #[test]
    fn pending_writes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        for _ in 0..MAX_PENDING_WRITES + 10 {
            g.write(FirewallChange::PurgeExpired(T0));
        }
        assert_eq!(g.pending.len(), MAX_PENDING_WRITES);
        assert_eq!(g.writes_dropped, 10);
    }

    #[test]
    fn trunk_addresses_from_a_new_dns_answer_are_never_banned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let provider = "203.0.113.44";
        assert!(!g.trusted(ip(provider)));
        let mut site = site();
        site.trunks.push(crate::guard::config::TrunkSite {
            addrs: vec![
                "192.0.2.1:5060".parse().unwrap(),
                "203.0.113.44:5080".parse().unwrap(),
            ],
            transport: Transport::Udp,
            inbound: Vec::new(),
        });
        g.set_trunks(&config(), &site);
        assert!(g.trusted(ip(provider)));
        assert!(g
            .trusted_networks()
            .iter()
            .any(|n| n.contains(ip(provider))));
        // A scanner's OPTIONS from it is dropped but never bans the provider.
        inspect(&mut g, T0, provider, &options(provider, "sipsak 0.9", 1));
        assert!(!g.is_banned(T0, ip(provider)));
        // The address gone from the answer: trusted no more.
        site.trunks.pop();
        g.set_trunks(&config(), &site);
        assert!(!g.trusted(ip(provider)));
    }

    #[test]
    fn runtime_allow_lifts_bans_inside_and_exempts_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let office = "198.51.100.7";
        assert!(!inspect(
            &mut g,
            T0,
            office,
            &options(office, "sipsak 0.9", 1)
        ));
        assert!(g.is_banned(T0, ip(office)));
        let reply = g.admin(
            T0,
            FwCommand::Allow {
                cidr: "198.51.100.0/24".into(),
            },
            &store,
        );
        match reply {
            Ok(FwReply::Done(message)) => {
                assert!(message.contains("1 bans inside it lifted"), "{message}");
                assert!(message.contains("restarts"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(inspect(
            &mut g,
            T0 + 1,
            office,
            &options(office, "sipsak 0.9", 2)
        ));
        assert!(store.fw_bans().unwrap().is_empty());
        assert!(g
            .admin(
                T0,
                FwCommand::Allow {
                    cidr: "10.0.0.0/33".into()
                },
                &store
            )
            .is_err());
        let Ok(FwReply::Status(st)) = g.admin(T0, FwCommand::Status { cached: false }, &store)
        else {
            panic!("not a status")
        };
        assert_eq!(st.runtime_allow, ["198.51.100.0/24"]);
    }

    #[test]
    fn monitor_mode_alerts_but_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut cfg = config();
        cfg.monitor = true;
        let mut g = start(&cfg, &store, T0);
        assert_eq!(g.mode(), &Mode::Monitor);
        assert!(inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 1)
        ));
        assert!(inspect(
            &mut g,
            T0 + 1,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 2)
        ));
        flush(&mut g, &store);
        assert!(store.fw_bans().unwrap().is_empty());
        let alerts = store.fw_alerts(10).unwrap();
        assert_eq!(alerts.len(), 1, "one alert per offender");
        assert!(!alerts[0].enforced);
        // Every would-be ban counts, also after the first: status and rules show them.
        let Ok(FwReply::Status(st)) = g.admin(T0 + 2, FwCommand::Status { cached: false }, &store)
        else {
            panic!("not a status")
        };
        assert_eq!(st.would_be_bans, 2);
        assert_eq!(st.would_be_dropped, 1);
        let scanner = g.rules().into_iter().find(|r| r.rule == "scanner").unwrap();
        assert_eq!(scanner.hits, 2);
    }

    #[test]
    fn malformed_messages_count_as_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let junk = b"\x16\x03\x01 not sip at all\r\n\r\n";
        for i in 0..9 {
            assert!(
                inspect(&mut g, T0 + i * 200, "203.0.113.30", junk),
                "malformed goes to the core, which answers what it can"
            );
        }
        assert!(!g.is_banned(T0 + 1_800, ip("203.0.113.30")));
        assert!(!inspect(&mut g, T0 + 1_800, "203.0.113.30", junk));
        assert!(g.is_banned(T0 + 1_800, ip("203.0.113.30")));
        // A keepalive is not a malformed message.
        assert!(inspect(&mut g, T0, "192.0.2.1", b"\r\n\r\n"));
    }

    #[test]
    fn latin1_text_is_not_malformed_and_known_sources_are_not_banned_for_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let office = "198.51.100.40";
        let mut latin1 = String::from_utf8(options(office, "Yealink SIP-T46S", 1))
            .unwrap()
            .replace("From: <", "From: \"J#rg\" <")
            .into_bytes();
        let i = latin1.iter().position(|&b| b == b'#').unwrap();
        latin1[i] = 0xf6; // "ö" in Latin-1, as older phones send it
        assert!(wire::parse(&latin1).is_ok(), "8-bit text parses");
        assert!(inspect(&mut g, T0, office, &latin1));
        g.feedback(
            T0 + 10,
            &Event::AuthSucceeded {
                src: peer(office),
                user: "200".to_string(),
            },
        );
        // After authenticating, malformed messages (each retransmitted 4 times) never ban.
        for m in 0..30u32 {
            let bad = String::from_utf8(options(office, "Yealink SIP-T46S", 100 + m))
                .unwrap()
                .replace("CSeq: ", "CSeq: x");
            for r in 0..4u64 {
                let at = T0 + 1_000 + u64::from(m) * 20_000 + r * 500;
                assert!(inspect(&mut g, at, office, bad.as_bytes()), "{m}/{r}");
            }
        }
        assert!(!g.is_banned(T0 + 700_000, ip(office)));
        flush(&mut g, &store);
        assert!(store.fw_bans().unwrap().is_empty());
        let alerts = store.fw_alerts(10).unwrap();
        assert!(
            alerts.iter().any(|a| a.rule == Rule::Malformed),
            "alerted: {alerts:?}"
        );
    }

    #[test]
    fn status_and_rules_report_mode_counters_and_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 1),
        );
        inspect(
            &mut g,
            T0 + 1,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 2),
        );
        let Ok(FwReply::Status(st)) = g.admin(T0 + 2, FwCommand::Status { cached: false }, &store)
        else {
            panic!("not a status")
        };
        assert_eq!(st.mode, "user-space");
        assert!(st.reason.unwrap().contains("enforce"));
        assert!(st.kernel.is_none());
        assert_eq!((st.bans, st.inspected, st.dropped_banned), (1, 1, 1));
        assert_eq!(st.alerts_stored, 1);
        let scanner = st.rule_hits.iter().find(|h| h.rule == "scanner").unwrap();
        assert_eq!(scanner.hits, 1);

        let Ok(FwReply::Rules(rules)) = g.admin(T0, FwCommand::Rules, &store) else {
            panic!("not rules")
        };
        assert_eq!(rules.len(), Rule::ALL.len());
        let by = |name: &str| rules.iter().find(|r| r.rule == name).unwrap().clone();
        assert_eq!(by("flood").threshold, "16 requests / 2 s");
        assert_eq!(by("flood").action, "ban 300 s");
        assert_eq!(
            by("auth_failures").threshold,
            "10 failures per source / 10 min"
        );
        assert_eq!(by("account_guessing").action, "lock account 15 min");
        assert_eq!(by("repeat_offender").action, "ban 7 d");
        assert_eq!(by("scanner").hits, 1);
    }

    #[test]
    fn timers_run_maintenance_and_detector_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        assert_eq!(g.poll_timeout(), Some(T0 + MAINTENANCE_MS));
        inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 1),
        );
        let mut now = T0;
        // Jump from deadline to deadline past the purge hour; every deadline moves forward.
        while now < T0 + PURGE_EVERY_MS + MAINTENANCE_MS {
            let next = g.poll_timeout().unwrap();
            assert!(next > now || next == now && g.detector.poll_timeout().is_some());
            now = next.max(now + 1);
            g.handle_timeout(now);
        }
        assert!(g
            .pending
            .iter()
            .any(|c| matches!(c, FirewallChange::PurgeExpired(_))));
    }

    #[test]
    fn request_uri_length_and_rtp_ports() {
        assert_eq!(request_uri_len(b"\r\nINVITE sip:1@a SIP/2.0\r\n"), 7);
        assert_eq!(request_uri_len(b"SIP/2.0 200 OK\r\n"), 3);
        assert_eq!(request_uri_len(b""), 0);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        // Without the kernel nothing is tracked.
        g.media(&MediaCommand::Close { session: 1 });
        assert!(g.rtp.is_empty());
        let cfg = FirewallConfig::default().nft_config(&site());
        assert_eq!(cfg.sip_ports, [5060]);
        assert_eq!(cfg.rtp_range, (10000, 10999));
        assert!(cfg.rtp_closed);
        assert_eq!(cfg.flood_rate.unwrap().per_second, 200);
    }
    #[test]
    fn trunks_become_kernel_trunk_peers_by_address_transport_and_port() {
        let mut c = crate::config::Config::from_toml_str(
            "[[trunk]]\nname = \"udp\"\nhost = \"203.0.113.5:5080\"\nregister = false\n\
             inbound_from = [\"198.51.100.16/28\"]\n\n\
             [[trunk]]\nname = \"tls\"\nhost = \"[2001:db8::5]\"\ntransport = \"tls\"\n\
             register = false\n",
        )
        .unwrap();
        c.firewall.detect.trunk_peers = vec![ip("192.0.2.77")];
        let cfg = c.firewall.nft_config(&c.firewall_surroundings());
        let shown: Vec<String> = cfg
            .trunk_peers
            .iter()
            .map(|p| format!("{} {:?} {:?}", p.net, p.proto, p.port))
            .collect();
        assert_eq!(
            shown,
            [
                "203.0.113.5/32 Udp Some(5080)",
                "198.51.100.16/28 Udp None",
                "2001:db8::5/128 Tcp None",
                "192.0.2.77/32 Udp None",
                "192.0.2.77/32 Tcp None",
            ]
        );
        assert_eq!(cfg.trunk_flood_rate, Some(FloodLimit::TRUNK_DEFAULT));
        c.firewall.kernel_trunk_per_second = 0;
        assert_eq!(
            c.firewall
                .nft_config(&c.firewall_surroundings())
                .trunk_flood_rate,
            None
        );
    }

    #[test]
    fn a_trunks_own_traffic_passes_uninspected_the_rest_of_its_address_is_inspected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut c = config();
        c.detect.trunk_peers = vec![ip("203.0.113.5")];
        let mut g = start(&c, &store, T0);
        let scan = options("203.0.113.5", "friendly-scanner", 1);
        let parsed = wire::parse(&scan);
        // As the trunk's own traffic even a scanner's fingerprint passes (the core decides).
        assert!(g.inspect(T0, peer("203.0.113.5"), &scan, &parsed, true));
        // From the trunk's address but not the trunk: dropped, never banned.
        for i in 0..5 {
            assert!(!inspect(&mut g, T0 + i, "203.0.113.5", &scan));
        }
        assert!(!g.is_banned(T0 + 5, ip("203.0.113.5")));
        assert!(g.inspect(T0 + 5, peer("203.0.113.5"), &scan, &parsed, true));
    }

    #[test]
    fn bans_unbans_and_call_media_become_set_updates() {
        use pbx_core::media::session::{Codec, LegMedia};
        use std::net::SocketAddr;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        // A stand-in for the enforcer thread: the test reads what it would be sent.
        let rx = capture_ops(&mut g);
        g.rtp_closed = true;
        let ops = || -> Vec<SetOp> { rx.drain() };
        // A leg on `port` whose phone signals from `signal` and puts `sdp` in its SDP.
        let leg = |port: u16, allowed: &[&str], sdp: Option<&str>| LegMedia {
            local_port: port,
            remote: sdp.map(|a| SocketAddr::new(ip(a), 4000)),
            allowed_ips: allowed.iter().map(|a| ip(a)).collect(),
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        };
        let open = |a: &str, port| SetOp::RtpOpen { addr: ip(a), port };

        assert!(!inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 1)
        ));
        assert_eq!(
            ops(),
            [SetOp::Ban {
                addr: ip("203.0.113.9"),
                timeout_secs: 86_400
            }]
        );
        g.admin(
            T0,
            FwCommand::Unban {
                addr: "203.0.113.9".into(),
            },
            &store,
        )
        .unwrap();
        assert_eq!(ops(), [SetOp::Unban(ip("203.0.113.9"))]);

        // Phone A behind NAT (private SDP address, public signalling address), phone B on
        // the LAN (the anchor lists its one address once); an IPv4-mapped address counts as
        // IPv4. Each address may send to the leg's RTP port and the RTCP port above it.
        g.media(&MediaCommand::Open {
            session: 7,
            a: leg(
                10000,
                &["203.0.113.5", "192.168.1.20"],
                Some("192.168.1.20"),
            ),
            b: leg(10002, &["::ffff:10.0.0.7"], Some("10.0.0.7")),
        });
        assert_eq!(
            ops(),
            [
                open("10.0.0.7", 10002),
                open("10.0.0.7", 10003),
                open("192.168.1.20", 10000),
                open("192.168.1.20", 10001),
                open("203.0.113.5", 10000),
                open("203.0.113.5", 10001),
            ]
        );
        // A re-INVITE from a new public address: its pairs open, the old address's expire
        // (no update), the unchanged ones are not touched.
        g.media(&MediaCommand::Update {
            session: 7,
            a: leg(
                10000,
                &["198.51.100.9", "192.168.1.20"],
                Some("192.168.1.20"),
            ),
            b: leg(10002, &["10.0.0.7"], Some("10.0.0.7")),
        });
        assert_eq!(
            ops(),
            [open("198.51.100.9", 10000), open("198.51.100.9", 10001)]
        );
        // An absent leg opens nothing (its pairs expire); a leg without allowed addresses
        // is open to its SDP address only, as in the relay.
        g.media(&MediaCommand::Update {
            session: 7,
            a: leg(10000, &[], Some("198.51.100.9")),
            b: LegMedia::absent(),
        });
        assert!(ops().is_empty(), "an absent leg has no pairs");
        // A second call is tracked on its own; prompts change nothing.
        g.media(&MediaCommand::Open {
            session: 8,
            a: leg(10004, &["2001:db8::5"], None),
            b: leg(10006, &[], None),
        });
        assert_eq!(
            ops(),
            [open("2001:db8::5", 10004), open("2001:db8::5", 10005)],
            "a leg with neither allowed nor SDP address accepts nobody"
        );
        g.media(&MediaCommand::Play {
            session: 7,
            leg: pbx_core::media::session::Leg::A,
            clips: vec!["beep".into()],
            repeat: false,
        });
        assert!(ops().is_empty());
        // Live calls' pinholes are refreshed every third of their lifetime, from the
        // second round after they were opened or changed.
        let round = g.rtp_refresh_ms;
        assert_eq!(round, 30_000, "a third of the default 90 s");
        assert!(g.poll_timeout().is_some_and(|t| t <= T0 + round));
        g.handle_timeout(T0 + round);
        assert!(
            ops().is_empty(),
            "both sessions were opened or changed in this round"
        );
        g.handle_timeout(T0 + round + 1);
        assert!(ops().is_empty(), "one round per third of the lifetime");
        g.handle_timeout(T0 + 2 * round);
        let mut refreshed = ops();
        refreshed.sort_by_key(|op| format!("{op:?}"));
        assert_eq!(
            refreshed,
            [
                open("198.51.100.9", 10000),
                open("198.51.100.9", 10001),
                open("2001:db8::5", 10004),
                open("2001:db8::5", 10005),
            ]
        );
        // A call's end sends nothing: its pinholes expire; it is no longer refreshed.
        g.media(&MediaCommand::Close { session: 7 });
        assert!(ops().is_empty());
        assert_eq!(g.rtp.len(), 1);
        g.media(&MediaCommand::Close { session: 8 });
        assert!(ops().is_empty());
        assert!(g.rtp.is_empty());
        g.handle_timeout(T0 + 3 * round);
        assert!(ops().is_empty(), "nothing left to refresh");
    }

    /// A stand-in for the enforcer thread: the test reads what it would be sent.
    fn capture_ops(g: &mut Guard) -> SentOps {
        let (handle, sent) = EnforcerHandle::detached(64);
        g.enforcer = Some(handle);
        sent
    }

    fn sent_ops(sent: &SentOps) -> Vec<SetOp> {
        sent.drain()
    }

    fn report(sources: &[(&str, u32, u32)], pool_refused: u32) -> ConnReport {
        ConnReport {
            sources: sources
                .iter()
                .map(|&(a, opened, refused)| (ip(a), opened, refused))
                .collect(),
            pool_refused,
        }
    }

    fn notices(g: &mut Guard) -> Vec<ConnNotice> {
        std::iter::from_fn(|| g.poll_conn_notice()).collect()
    }

    #[test]
    fn a_connection_flood_bans_the_source_in_the_kernel_and_closes_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let rx = capture_ops(&mut g);
        // Holding its 16 is allowed; the 8th refusal at the cap within 10 s bans.
        g.connections(T0, &report(&[("203.0.113.30", 16, 7)], 0));
        assert!(!g.is_banned(T0, ip("203.0.113.30")));
        g.connections(T0 + 100, &report(&[("203.0.113.30", 0, 40)], 0));
        assert!(g.is_banned(T0 + 101, ip("203.0.113.30")));
        assert_eq!(
            sent_ops(&rx),
            [SetOp::Ban {
                addr: ip("203.0.113.30"),
                timeout_secs: 3_600
            }]
        );
        assert_eq!(
            notices(&mut g),
            [ConnNotice::Banned {
                addr: ip("203.0.113.30"),
                for_ms: 3_600_000
            }]
        );
        assert_eq!(g.last_ban(), Some(ip("203.0.113.30")));
        flush(&mut g, &store);
        let alerts = store.fw_alerts(10).unwrap();
        assert_eq!(alerts[0].rule, Rule::ConnectionFlood);
        assert!(
            alerts[0].message.contains("refused at the per-source cap"),
            "{}",
            alerts[0].message
        );
        // An unban reaches the transports too.
        g.admin(
            T0 + 200,
            FwCommand::Unban {
                addr: "203.0.113.30".into(),
            },
            &store,
        )
        .unwrap();
        assert_eq!(notices(&mut g), [ConnNotice::Unbanned(ip("203.0.113.30"))]);
    }

    #[test]
    fn an_auth_success_raises_the_sources_caps_in_the_transports_and_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let rx = capture_ops(&mut g);
        g.conn_kernel = true;
        let phone = Peer {
            transport: Transport::Tcp,
            addr: "198.51.100.60:40001".parse().unwrap(),
        };
        let ok = |src| Event::AuthSucceeded {
            src,
            user: "100".into(),
        };
        g.feedback(T0, &ok(phone));
        assert_eq!(
            notices(&mut g),
            [ConnNotice::Authenticated {
                src: phone,
                for_ms: 2 * 60 * MIN
            }]
        );
        assert_eq!(
            sent_ops(&rx),
            [SetOp::Authenticated {
                addr: phone.addr.ip(),
                timeout_secs: 7_200
            }]
        );
        // Re-registering within the first half of the pass costs the kernel nothing...
        g.feedback(T0 + 30 * MIN, &ok(phone));
        assert_eq!(notices(&mut g).len(), 1);
        assert!(sent_ops(&rx).is_empty());
        // ...after it, one refresh.
        g.feedback(T0 + 61 * MIN, &ok(phone));
        assert_eq!(sent_ops(&rx).len(), 1);
        // An authenticated office is banned only far beyond a phone: 255 refusals pass.
        g.connections(T0 + 62 * MIN, &report(&[("198.51.100.60", 3_000, 255)], 0));
        assert!(!g.is_banned(T0 + 62 * MIN, ip("198.51.100.60")));
        // Trusted sources are never sent to the kernel's authenticated set nor banned.
        let lan = Peer {
            transport: Transport::Tcp,
            addr: "127.0.0.1:5000".parse().unwrap(),
        };
        g.feedback(T0, &ok(lan));
        assert!(sent_ops(&rx).is_empty());
        g.connections(T0, &report(&[("127.0.0.1", 100_000, 100_000)], 0));
        assert!(!g.is_banned(T0, ip("127.0.0.1")));
    }

    #[test]
    fn registrations_that_survived_a_restart_give_their_sources_a_pass_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        let rx = capture_ops(&mut g);
        g.conn_kernel = true;
        let office = Peer {
            transport: Transport::Tcp,
            addr: "198.51.100.70:40000".parse().unwrap(),
        };
        g.restored_registration(T0, office, "100");
        assert_eq!(
            notices(&mut g),
            [ConnNotice::Authenticated {
                src: office,
                for_ms: 2 * 60 * MIN
            }]
        );
        assert_eq!(sent_ops(&rx).len(), 1);
        // The office's phones reconnecting at once are not a flood...
        g.connections(T0 + 10, &report(&[("198.51.100.70", 100, 84)], 0));
        assert!(!g.is_banned(T0 + 10, ip("198.51.100.70")));
        // ...and their first messages pass the unknown-host gate (a stranger is rejected
        // from the 10th).
        for n in 0..15 {
            assert!(inspect(
                &mut g,
                T0 + 20,
                "198.51.100.70",
                &options("198.51.100.70", "Yealink", n)
            ));
        }
        assert!(!g.is_banned(T0 + 20, ip("198.51.100.70")));
    }

    #[test]
    fn a_full_connection_pool_raises_one_alert_a_minute_and_bans_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        g.connections(T0, &report(&[], 30));
        g.connections(T0 + 1_000, &report(&[], 50));
        g.connections(T0 + MIN + 1, &report(&[], 5));
        flush(&mut g, &store);
        let alerts = store.fw_alerts(10).unwrap();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert!(alerts
            .iter()
            .all(|a| a.rule == Rule::ConnectionFlood && a.addr.is_none()));
        // Newest first: the second alert sums what the first minute left unreported.
        assert!(
            alerts[0]
                .message
                .starts_with("55 TCP/TLS connections refused"),
            "{}",
            alerts[0].message
        );
        assert_eq!(g.detector.bans(T0).len(), 0);
        let Ok(FwReply::Rules(rules)) = g.admin(T0, FwCommand::Rules, &store) else {
            panic!("not rules")
        };
        let rule = rules.iter().find(|r| r.rule == "connection_flood").unwrap();
        assert_eq!(
            rule.threshold,
            "8 TCP/TLS connections refused at the per-source cap or 100 TCP/TLS connections opened / 10 s (x32 after a successful auth)"
        );
        assert_eq!(rule.action, "ban 1 h");
    }

    /// Runs `handle_timeout(now)` until the feed reads it starts have been applied (the
    /// reader is a real thread; the virtual clock stands still meanwhile).
    fn refresh_feeds(g: &mut Guard, now: Millis) {
        g.handle_timeout(now);
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.feeds.in_flight() {
            assert!(Instant::now() < deadline, "the feed read did not finish");
            std::thread::sleep(Duration::from_millis(2));
            g.handle_timeout(now);
        }
    }

    fn feed_config(path: &std::path::Path, refresh_secs: u64, ban_secs: u64) -> FirewallConfig {
        let mut c = config();
        c.detect.allow = vec!["192.0.2.0/24".parse().unwrap()];
        c.detect.trunk_peers = vec![ip("198.51.100.200")];
        c.feeds = vec![config::FeedConfig {
            source: path.to_str().unwrap().to_string(),
            ca: None,
            refresh_secs,
            ban_secs,
        }];
        c
    }

    fn ban_rule(g: &mut Guard, store: &Store, now: Millis, addr: &str) -> Option<(String, u64)> {
        let Ok(FwReply::Bans(list)) = g.admin(now, FwCommand::Bans, store) else {
            panic!("not a ban list")
        };
        list.bans
            .into_iter()
            .find(|b| b.addr == addr)
            .map(|b| (b.rule, b.until))
    }

    fn feed_health(g: &mut Guard, store: &Store, now: Millis) -> FwFeedInfo {
        let Ok(FwReply::Status(st)) = g.admin(now, FwCommand::Status { cached: false }, store)
        else {
            panic!("not a status")
        };
        st.feeds[0].clone()
    }

    #[test]
    fn feed_entries_are_banned_renewed_and_lifted_when_they_leave_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = dir.path().join("drop.txt");
        std::fs::write(
            &path,
            "# a blocklist\n203.0.113.9\n203.0.113.64/30 ; four\nbogus line\n\
             192.0.2.5\n198.51.100.200\n127.0.0.1\n10.0.0.0/8\n",
        )
        .unwrap();
        let mut g = start(&feed_config(&path, 2, 600), &store, T0);
        let ops = capture_ops(&mut g);
        assert_eq!(g.poll_timeout(), Some(T0), "the first read is due at start");
        refresh_feeds(&mut g, T0);

        for a in ["203.0.113.9", "203.0.113.64", "203.0.113.67"] {
            assert!(g.is_banned(T0, ip(a)), "{a}");
            assert_eq!(
                ban_rule(&mut g, &store, T0, a),
                Some(("feed".to_string(), T0 + 600_000))
            );
        }
        for trusted in ["192.0.2.5", "198.51.100.200", "127.0.0.1"] {
            assert!(!g.is_banned(T0, ip(trusted)), "{trusted} is never banned");
        }
        let mut sent = sent_ops(&ops);
        sent.sort_by_key(|op| format!("{op:?}"));
        assert_eq!(sent.len(), 5, "{sent:?}");
        assert!(sent.contains(&SetOp::Ban {
            addr: ip("203.0.113.9"),
            timeout_secs: 600
        }));
        let h = feed_health(&mut g, &store, T0);
        assert_eq!(
            (h.entries, h.ignored, h.invalid, h.too_wide, h.failures, h.reads),
            (8, 3, 1, 1, 0, 1),
            "{h:?}"
        );
        assert_eq!(h.last_refresh, Some(T0));
        // Feed bans are the feed's: not stored, not exported.
        flush(&mut g, &store);
        assert!(store.fw_bans().unwrap().is_empty());
        let Ok(FwReply::Export(doc)) = g.admin(T0, FwCommand::Export, &store) else {
            panic!("not an export")
        };
        assert!(doc.bans.is_empty(), "{doc:?}");

        // Nothing changed, nothing is sent; the next read is 2 s later.
        assert_eq!(g.poll_timeout(), Some(T0 + 2_000));
        refresh_feeds(&mut g, T0 + 2_000);
        assert!(sent_ops(&ops).is_empty());

        // Listed past half the ban: renewed.
        refresh_feeds(&mut g, T0 + 301_000);
        assert_eq!(sent_ops(&ops).len(), 5, "renewed in the kernel");
        assert_eq!(
            ban_rule(&mut g, &store, T0 + 301_000, "203.0.113.9"),
            Some(("feed".to_string(), T0 + 901_000))
        );

        // It leaves the feed: lifted at the next read.
        std::fs::write(&path, "203.0.113.64/30\n").unwrap();
        refresh_feeds(&mut g, T0 + 303_000);
        assert!(!g.is_banned(T0 + 303_000, ip("203.0.113.9")));
        assert!(g.is_banned(T0 + 303_000, ip("203.0.113.65")));
        assert_eq!(sent_ops(&ops), [SetOp::Unban(ip("203.0.113.9"))]);

        // A broken feed changes nothing: its bans stay until they end.
        std::fs::remove_file(&path).unwrap();
        refresh_feeds(&mut g, T0 + 305_000);
        assert!(g.is_banned(T0 + 305_000, ip("203.0.113.65")));
        let h = feed_health(&mut g, &store, T0 + 305_000);
        assert_eq!((h.failures, h.reads), (1, 5));
        assert!(h.last_error.unwrap().contains("drop.txt"));
        assert_eq!(h.last_refresh, Some(T0 + 303_000));
        assert!(!g.is_banned(T0 + 901_000, ip("203.0.113.65")), "ended");

        // The admin unbans a listed address: told it comes back with the feed.
        std::fs::write(&path, "203.0.113.64/30\n").unwrap();
        refresh_feeds(&mut g, T0 + 307_000);
        let Ok(FwReply::Done(message)) = g.admin(
            T0 + 307_000,
            FwCommand::Unban {
                addr: "203.0.113.66".into(),
            },
            &store,
        ) else {
            panic!("unban refused")
        };
        assert!(message.contains("still lists it"), "{message}");
        // `fw allow` exempts it for good.
        g.admin(
            T0 + 307_000,
            FwCommand::Allow {
                cidr: "203.0.113.66".into(),
            },
            &store,
        )
        .unwrap();
        refresh_feeds(&mut g, T0 + 309_000);
        assert!(!g.is_banned(T0 + 309_000, ip("203.0.113.66")));
        assert!(g.is_banned(T0 + 309_000, ip("203.0.113.67")));
    }

    #[test]
    fn feeds_leave_longer_bans_alone_and_give_shorter_ones_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = dir.path().join("drop.txt");
        std::fs::write(&path, "203.0.113.9\n203.0.113.10\n").unwrap();
        let mut g = start(&feed_config(&path, 2, 600), &store, T0);
        // A scanner ban (24 h) is longer than the feed's; an import of 60 s is shorter.
        assert!(!inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 1)
        ));
        let reply = g.admin(
            T0,
            FwCommand::Import {
                text: "203.0.113.10\n".into(),
                ban_secs: 60,
            },
            &store,
        );
        assert!(matches!(reply, Ok(FwReply::Done(_))), "{reply:?}");
        refresh_feeds(&mut g, T0 + 1_000);
        assert_eq!(
            ban_rule(&mut g, &store, T0 + 1_000, "203.0.113.9")
                .unwrap()
                .0,
            "scanner"
        );
        assert_eq!(
            ban_rule(&mut g, &store, T0 + 1_000, "203.0.113.10"),
            Some(("feed".to_string(), T0 + 601_000))
        );
        std::fs::write(&path, "").unwrap();
        refresh_feeds(&mut g, T0 + 3_000);
        assert_eq!(
            ban_rule(&mut g, &store, T0 + 3_000, "203.0.113.10"),
            Some(("manual".to_string(), T0 + 60_000)),
            "the import's ban is back with its own end"
        );
        assert_eq!(
            ban_rule(&mut g, &store, T0 + 3_000, "203.0.113.9")
                .unwrap()
                .0,
            "scanner"
        );
    }

    #[test]
    fn import_bans_once_and_an_export_imports_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut cfg = config();
        cfg.detect.allow = vec!["192.0.2.0/24".parse().unwrap()];
        let mut g = start(&cfg, &store, T0);
        let ops = capture_ops(&mut g);
        let reply = g.admin(
            T0,
            FwCommand::Import {
                text: "203.0.113.9\n2001:db8::66\n127.0.0.1\n192.0.2.1\nbad\n".into(),
                ban_secs: 3_600,
            },
            &store,
        );
        let Ok(FwReply::Done(message)) = reply else {
            panic!("{reply:?}")
        };
        assert!(
            message.starts_with("2 addresses banned for 3600 s"),
            "{message}"
        );
        assert!(message.contains("2 ignored"), "{message}");
        assert!(message.contains("1 invalid entries"), "{message}");
        assert_eq!(sent_ops(&ops).len(), 2);
        let mut stored = store.fw_bans().unwrap();
        stored.sort_by_key(|(a, _)| *a);
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[0].1.rule, Rule::Manual);
        assert_eq!(stored[0].1.until, T0 + 3_600_000);

        assert!(!inspect(
            &mut g,
            T0,
            "198.51.100.7",
            &options("198.51.100.7", "sipvicious", 1)
        ));
        let Ok(FwReply::Export(doc)) = g.admin(T0 + 1_000, FwCommand::Export, &store) else {
            panic!("not an export")
        };
        assert_eq!(doc.generated, T0 + 1_000);
        let addrs: Vec<&str> = doc.bans.iter().map(|b| b.addr.as_str()).collect();
        assert_eq!(addrs[0], "198.51.100.7", "longest-lasting first: {addrs:?}");
        assert_eq!(addrs.len(), 3);
        assert_eq!(doc.bans[0].rule, "scanner");

        // Another site imports the export.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path()).unwrap();
        let mut other = start(&config(), &store2, T0 + 2_000);
        let text = serde_json::to_string(&doc).unwrap();
        let reply = other.admin(
            T0 + 2_000,
            FwCommand::Import {
                text,
                ban_secs: 86_400,
            },
            &store2,
        );
        assert!(matches!(reply, Ok(FwReply::Done(_))), "{reply:?}");
        for a in ["198.51.100.7", "203.0.113.9", "2001:db8::66"] {
            assert!(other.is_banned(T0 + 2_000, ip(a)), "{a}");
        }
        // Nothing to import, bad lengths, monitor mode: refused, nothing changed.
        for (text, secs) in [("bad\n", 60), ("203.0.113.1\n", 0), ("[1,", 60)] {
            let reply = other.admin(
                T0,
                FwCommand::Import {
                    text: text.into(),
                    ban_secs: secs,
                },
                &store2,
            );
            assert!(reply.is_err(), "{text}: {reply:?}");
        }
        let mut mcfg = config();
        mcfg.monitor = true;
        let mut monitor = start(&mcfg, &store2, T0);
        let reply = monitor.admin(
            T0,
            FwCommand::Import {
                text: "203.0.113.1\n".into(),
                ban_secs: 60,
            },
            &store2,
        );
        assert!(reply.is_err(), "{reply:?}");
    }

    #[test]
    fn an_export_stays_importable_in_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = start(&config(), &store, T0);
        // 79 networks of 256: 20,224 bans, about 2 MiB of export.
        let text: String = (0..79).map(|n| format!("10.1.{n}.0/24\n")).collect();
        let reply = g.admin(
            T0,
            FwCommand::Import {
                text,
                ban_secs: 600,
            },
            &store,
        );
        assert!(matches!(reply, Ok(FwReply::Done(_))), "{reply:?}");
        let Ok(FwReply::Export(doc)) = g.admin(T0, FwCommand::Export, &store) else {
            panic!("not an export")
        };
        assert!(doc.omitted > 0);
        assert_eq!(doc.bans.len() + doc.omitted, 79 * 256);
        let size: usize = 48
            + doc
                .bans
                .iter()
                .map(|b| serde_json::to_string(b).unwrap().len() + 2)
                .sum::<usize>();
        assert!(size <= MAX_FEED_BYTES, "{size}");
        assert!(size > MAX_FEED_BYTES - 200, "filled up: {size}");
    }

    /// Kernel enforcement end to end. Needs root and its own network namespace, so it only
    /// runs when asked: `OUTPOST_GUARD_NETNS_TEST=1 unshare -n cargo test -p firmware --lib
    /// guard::tests::kernel -- --ignored` (it flushes the namespace's whole ruleset).
    #[test]
    #[ignore = "needs root in a private network namespace"]
    fn kernel_ban_unban_and_restore_after_a_flush() {
        if std::env::var_os("OUTPOST_GUARD_NETNS_TEST").is_none() {
            return;
        }
        let nft = |args: &[&str]| {
            let out = std::process::Command::new("nft")
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            for _ in 0..100 {
                if f() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("timed out waiting for {what}");
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = FirewallConfig {
            table: "guardtest".into(),
            ..FirewallConfig::default()
        };
        let mut g = start(&cfg, &store, T0);
        assert_eq!(g.mode(), &Mode::Enforcing);
        let ban4 = || nft(&["list", "set", "inet", "guardtest", "ban4"]);
        let ban6 = || nft(&["list", "set", "inet", "guardtest", "ban6"]);
        wait_for("the table", &|| ban4().contains("ban4"));

        assert!(!inspect(
            &mut g,
            T0,
            "203.0.113.9",
            &options("203.0.113.9", "friendly-scanner", 1)
        ));
        assert!(!inspect(
            &mut g,
            T0,
            "2001:db8::66",
            &options("[2001:db8::66]", "sipvicious", 2)
        ));
        wait_for("the IPv4 ban", &|| ban4().contains("203.0.113.9"));
        wait_for("the IPv6 ban", &|| ban6().contains("2001:db8::66"));

        nft(&["flush", "ruleset"]);
        assert!(!ban4().contains("203.0.113.9"));
        g.handle_timeout(T0 + MAINTENANCE_MS);
        wait_for("the restore", &|| ban4().contains("203.0.113.9"));
        let Ok(FwReply::Status(st)) = g.admin(
            T0 + MAINTENANCE_MS,
            FwCommand::Status { cached: false },
            &store,
        ) else {
            panic!("not a status")
        };
        let k = st.kernel.unwrap();
        assert_eq!(k.restores, 1);
        assert!(k.counters.is_some());

        g.admin(
            T0,
            FwCommand::Unban {
                addr: "203.0.113.9".into(),
            },
            &store,
        )
        .unwrap();
        wait_for("the unban", &|| !ban4().contains("203.0.113.9"));
        assert!(ban6().contains("2001:db8::66"));
        nft(&["delete", "table", "inet", "guardtest"]);
    }
}
