//! The firewall in the daemon: inspection before the call core, the core's feedback, the
//! kernel enforcer thread, persistence of bans, locks and alerts, and the `fw` admin commands.
//!
//! [`Guard`] is sans-IO like the detector it wraps, except for two things it owns: the
//! enforcer thread (nft runs block for milliseconds, so they never run on the daemon's task)
//! and a queue of store writes the daemon commits with its own batch ([`Guard::take_writes`]),
//! so a ban costs no extra fsync. Order of use per daemon turn:
//!
//! 1. for each inbound message: `inspect` (false = drop it), then the core;
//! 2. for each core event: `feedback` (auth outcomes) or `media` (RTP ports);
//! 3. drain `poll_lock` / `poll_unlock` into the endpoint, and hand each lock back the
//!    sources it does not apply to (`lock_exempt`) so they are stored with it;
//! 4. `take_writes` into the turn's store batch;
//! 5. `handle_timeout` when `poll_timeout` is due.
//!
//! Runtime allow-list additions (`outpostctl fw allow`) are not kept across a restart; the
//! permanent list is `[firewall.detect] allow` in the configuration.
//!
//! # Blocklist feeds
//! Each `[firewall] feeds` file is read by the `feed-reader` thread when `handle_timeout`
//! finds it due (at start, then every `refresh_secs`); the next `handle_timeout` (within
//! [`FEED_POLL_MS`]) takes the result. Its addresses are banned with rule `feed` for
//! `ban_secs` (renewed once half of that has passed, while they stay listed) and lifted at
//! the first good read that no longer lists them. A read that fails (file missing, too
//! large, not a feed) changes nothing: the bans of the last good read stay until they end.
//! Allow-listed networks, trunk peers, loopback and `fw allow` networks are never banned.
//! Feed bans are not written to the store (the file is their record and is read again at
//! start) and are not exported. An address already banned by a rule for longer keeps that
//! ban; one banned for less is taken over by the feed and gets its old ban back (if still
//! running) when it leaves the feed. `outpostctl fw import` bans a list once (rule
//! `manual`, stored like any ban); `fw export` writes our own bans in the same format.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use firewall::detect::{
    header_names, Alert, DetectConfig, Detector, Observation, Rule, Verdict, MAX_HEADER_NAMES,
};
use firewall::net::{canonical, is_loopback, Cidr};
use firewall::nft::{
    self, Counters, Enforcer, FloodLimit, NftConfig, NftError, SetOp, TrunkPeer, TrunkProto,
};
use pbx_core::endpoint::Event;
use pbx_core::lockout::TrustedSource;
use pbx_core::media::session::{MediaCommand, SessionId};
use pbx_core::sip::wire::{self, WireError};
use pbx_core::sip::{Message, Peer, Transport};
use pbx_core::Millis;

use crate::admin::proto::{
    FwAlertInfo, FwBanInfo, FwBansInfo, FwCommand, FwExport, FwExportBan, FwFeedInfo, FwKernelInfo,
    FwLockInfo, FwRuleHits, FwRuleInfo, FwStatusInfo, Reply,
};
use crate::config::{Config, EnforceMode};
use crate::driver::conn::ConnReport;
use crate::store::{Batch, FirewallChange, Store, StoreError, StoredBan, StoredLock};
use feed::{FeedError, FeedReader, ParsedFeed, MAX_FEED_BYTES, MAX_FEED_ENTRIES};

pub mod feed;
pub mod tollfraud;

/// How often the kernel table is verified (and restored if changed from outside).
const MAINTENANCE_MS: u64 = 5_000;
/// How often metrics refresh the kernel's counters (each refresh is one `nft list` run).
const KERNEL_COUNTERS_EVERY: Duration = Duration::from_secs(10);
/// How long a source whose calls tripped a toll-fraud lock stays banned.
const TOLL_FRAUD_BAN_MS: u64 = 24 * 3_600_000;
/// How often ended bans and locks are deleted from the store.
const PURGE_EVERY_MS: u64 = 3_600_000;
/// Alert log lines per rule per window; the rest are counted and summarised.
const ALERT_LOG_LIMIT: u32 = 10;
/// The alert log window.
const ALERT_LOG_WINDOW_MS: u64 = 60_000;
/// Store writes waiting for `take_writes`; beyond this they are dropped and counted.
const MAX_PENDING_WRITES: usize = 16_384;
/// Account locks and unlocks waiting for the daemon.
const MAX_QUEUED_LOCKS: usize = 4_096;
/// Networks `fw allow` may add.
const MAX_RUNTIME_ALLOW: usize = 256;
/// Set updates waiting for the enforcer thread.
const ENFORCER_QUEUE: usize = 65_536;
/// Most set updates in one nft run.
const MAX_OPS_PER_BATCH: usize = 20_000;
/// Longest the daemon waits for fresh kernel counters before using the cached ones.
const COUNTERS_WAIT: Duration = Duration::from_millis(50);
/// Most bans, locks or alerts in one admin listing (a reply line is at most 4 MiB).
const MAX_LISTED: usize = 10_000;
/// Most bans the enforcer thread remembers for a restore (twice the detector's default
/// table; beyond it a ban still reaches the kernel but a restore would not bring it back).
const MAX_DESIRED: usize = 400_000;
/// Longest account name accepted by `fw unlock`.
const MAX_USER_LEN: usize = 64;
/// How often a feed read in flight is looked for.
pub const FEED_POLL_MS: u64 = 20;
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

/// Log lines of one rule within the current window.
#[derive(Debug, Clone, Copy, Default)]
struct LogWindow {
    start: Millis,
    logged: u32,
    suppressed: u64,
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
    pub kernel: Option<Counters>,
}

/// What the firewall tells the SIP transports about connections (see
/// `driver::Transports::conn_notice`): drained by the daemon with [`Guard::poll_conn_notice`].
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
    /// (remote address, local RTP/RTCP port) pairs opened in the kernel per media session,
    /// sorted.
    rtp_sessions: HashMap<SessionId, Vec<(IpAddr, u16)>>,
    /// Networks added with `fw allow` (not persisted).
    runtime_allow: Vec<Cidr>,
    /// Store writes for the daemon's next batch.
    pending: Vec<FirewallChange>,
    writes_dropped: u64,
    locks_out: VecDeque<LockOrder>,
    unlocks_out: VecDeque<String>,
    /// Bans per address within the repeat window (count, window start): the detector keeps
    /// the same count but does not expose it per address, and the store needs it so repeat
    /// offenders still escalate after a reboot.
    ban_days: HashMap<IpAddr, (u32, Millis)>,
    log_windows: [LogWindow; Rule::ALL.len()],
    alerts_logged: u64,
    alerts_suppressed: u64,
    next_maintenance: Millis,
    next_purge: Millis,
    inspected: u64,
    dropped_banned: u64,
    dropped_rule: u64,
    /// Reused buffer for header names (kept empty between messages).
    names: Vec<&'static str>,
    /// Blocklist feeds, in configuration order.
    feeds: Vec<FeedState>,
    /// Reads feed files off the daemon's loop (None without feeds).
    feed_reader: Option<FeedReader>,
    /// When to look for a finished feed read (while one is in flight).
    feed_poll_at: Option<Millis>,
    /// Bans a feed took over, to give back when the address leaves the feeds.
    feed_displaced: HashMap<IpAddr, (Rule, Millis)>,
    /// Listed addresses past the feeds' overall limit at the last reconciliation.
    feed_overflow: usize,
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

/// One blocklist feed: its settings, what its last good read listed, and its health.
#[derive(Debug)]
struct FeedState {
    path: PathBuf,
    refresh_ms: u64,
    ban_ms: u64,
    /// The addresses to ban from the last good read (trusted ones left out).
    listed: HashSet<IpAddr>,
    next_read: Millis,
    in_flight: bool,
    health: FwFeedInfo,
}

impl Guard {
    /// Builds the firewall from the whole configuration, re-applies the stored bans (with
    /// their remaining time) and locks, and starts kernel enforcement when possible. Logs
    /// whether the kernel enforces and, if not, why. Never fails: a store or nft problem
    /// is logged and the firewall runs in user space.
    pub fn start(cfg: &Config, store: &Store, now: Millis) -> Guard {
        let fw = &cfg.firewall;
        let mut detect: DetectConfig = fw.detect.clone();
        detect.monitor = fw.monitor_mode();
        // Trunk peers are never banned.
        detect.trunk_peers.extend(configured_trunk_peers(cfg));
        let mut policy = fw.policy.clone();
        policy.plan.emergency = cfg.dialplan.emergency.clone();
        let mut guard = Guard {
            detector: Detector::new(detect),
            mode: Mode::Monitor,
            enforcer: None,
            table: format!("inet {}", fw.table),
            rtp_closed: fw.rtp_closed && cfg.media.enabled,
            rtp_sessions: HashMap::new(),
            runtime_allow: Vec::new(),
            pending: Vec::new(),
            writes_dropped: 0,
            locks_out: VecDeque::new(),
            unlocks_out: VecDeque::new(),
            ban_days: HashMap::new(),
            log_windows: [LogWindow::default(); Rule::ALL.len()],
            alerts_logged: 0,
            alerts_suppressed: 0,
            next_maintenance: now.saturating_add(MAINTENANCE_MS),
            next_purge: now.saturating_add(PURGE_EVERY_MS),
            inspected: 0,
            dropped_banned: 0,
            dropped_rule: 0,
            names: Vec::with_capacity(MAX_HEADER_NAMES),
            feeds: fw
                .feeds
                .iter()
                .map(|f| FeedState {
                    path: PathBuf::from(&f.source),
                    refresh_ms: f.refresh_secs.saturating_mul(1_000),
                    ban_ms: f.ban_secs.saturating_mul(1_000),
                    listed: HashSet::new(),
                    next_read: now,
                    in_flight: false,
                    health: FwFeedInfo {
                        source: f.source.clone(),
                        refresh_secs: f.refresh_secs,
                        ban_secs: f.ban_secs,
                        entries: 0,
                        ignored: 0,
                        invalid: 0,
                        too_wide: 0,
                        truncated: 0,
                        last_refresh: None,
                        reads: 0,
                        failures: 0,
                        last_error: None,
                    },
                })
                .collect(),
            feed_reader: None,
            feed_poll_at: None,
            feed_displaced: HashMap::new(),
            feed_overflow: 0,
            toll: tollfraud::TollFraud::new(policy, store),
            toll_dirty: false,
            last_ban: None,
            counters_asked: None,
            conn_notices: VecDeque::new(),
            conn_kernel: false,
            kernel_authed: HashMap::new(),
            pool_alert_at: None,
            pool_refused: 0,
        };
        if !guard.feeds.is_empty() {
            match FeedReader::spawn(guard.feeds.len()) {
                Ok(reader) => guard.feed_reader = Some(reader),
                Err(err) => {
                    tracing::error!(%err, "firewall: cannot start the feed reader thread; blocklist feeds are off");
                    for f in &mut guard.feeds {
                        f.health.last_error =
                            Some(format!("cannot start the feed reader thread: {err}"));
                    }
                }
            }
        }
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
            let nft = nft_config(cfg);
            guard.conn_kernel = nft.conn_limit.is_some();
            match EnforcerHandle::spawn(nft, kernel_bans) {
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
        if wire::is_keepalive(bytes) || self.runtime_allowed(ip) {
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
                if self.runtime_allowed(ip) {
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
            if self.runtime_allowed(ip) {
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
            .chain(self.runtime_allow.iter().copied())
            .collect()
    }

    /// A failed SSH login from `ip` (reported by the dropbear supervisor): counts like a
    /// SIP authentication failure of that source (rule `auth_failures`).
    pub fn ssh_failure(&mut self, now: Millis, ip: IpAddr) {
        let ip = canonical(ip);
        if self.runtime_allowed(ip) {
            return;
        }
        self.observe(now, Observation::SshFailure { src: ip });
    }

    /// Opens and closes, in the kernel, the (remote address, local port) pairs the relay
    /// accepts media on, as calls start, change and end (call it with every `Event::Media`
    /// before the relay gets it). Per leg: each address the relay accepts (its
    /// `allowed_ips`, or its SDP address if there are none) on the leg's RTP port and the
    /// RTCP port above it. No-op unless enforcing with `rtp_closed`.
    pub fn media(&mut self, cmd: &MediaCommand) {
        // The anchor gives a leg at most two addresses (signalling and SDP); a bound keeps a
        // session's pairs few whatever a command holds.
        const MAX_LEG_ADDRS: usize = 4;
        if !self.rtp_closed || self.enforcer.is_none() {
            return;
        }
        let (session, new_pairs) = match cmd {
            MediaCommand::Open { session, a, b } | MediaCommand::Update { session, a, b } => {
                let mut pairs: Vec<(IpAddr, u16)> = Vec::new();
                for leg in [a, b] {
                    // Port 0 is a leg that does not exist (a caller alone with a prompt).
                    if leg.local_port == 0 {
                        continue;
                    }
                    // The same addresses as the relay's latch (`ip_allowed`).
                    let addrs: Vec<IpAddr> = if leg.allowed_ips.is_empty() {
                        leg.remote.iter().map(|r| r.ip()).collect()
                    } else {
                        leg.allowed_ips
                            .iter()
                            .take(MAX_LEG_ADDRS)
                            .copied()
                            .collect()
                    };
                    let ports = [Some(leg.local_port), leg.local_port.checked_add(1)];
                    for ip in addrs {
                        let ip = canonical(ip);
                        pairs.extend(ports.iter().flatten().map(|&port| (ip, port)));
                    }
                }
                pairs.sort_unstable();
                pairs.dedup();
                (*session, pairs)
            }
            MediaCommand::Close { session } => (*session, Vec::new()),
            // Prompts and recordings do not change who may send.
            #[allow(unreachable_patterns)]
            _ => return,
        };
        let old = if new_pairs.is_empty() {
            self.rtp_sessions.remove(&session).unwrap_or_default()
        } else {
            self.rtp_sessions
                .insert(session, new_pairs.clone())
                .unwrap_or_default()
        };
        let mut ops: Vec<SetOp> = new_pairs
            .iter()
            .filter(|p| old.binary_search(p).is_err())
            .map(|&(addr, port)| SetOp::RtpOpen { addr, port })
            .collect();
        ops.extend(
            old.iter()
                .filter(|p| new_pairs.binary_search(p).is_err())
                .map(|&(addr, port)| SetOp::RtpClose { addr, port }),
        );
        for op in ops {
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

    /// Writes the queued store writes now, in their own transaction.
    /// Whether the enforcer thread finished a round within `max` (the guard asks it to
    /// verify the table every few seconds); `None` when the kernel does not enforce.
    pub fn enforcer_fresh(&self, max: Duration) -> Option<bool> {
        let e = self.enforcer.as_ref()?;
        let last = e
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_round;
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
                let (tx, _rx) = mpsc::channel();
                let _ = e.tx.try_send(Request::Counters(tx));
            }
            e.shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .counters
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

    /// New toll-fraud settings from a configuration change (emergency numbers from
    /// `[dialplan]`).
    pub fn set_policy(&self, cfg: &Config) {
        let mut policy = cfg.firewall.policy.clone();
        policy.plan.emergency = cfg.dialplan.emergency.clone();
        self.toll.set_config(policy);
    }

    /// Writes the toll-fraud locks when they changed (rare: a lock is an incident).
    pub fn save_toll_locks(&mut self, store: &Store) {
        if std::mem::take(&mut self.toll_dirty) {
            if let Err(err) = self.toll.save(store) {
                tracing::error!(%err, "toll-fraud: cannot store the locks");
            }
        }
    }

    pub fn persist(&mut self, store: &Store) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut self.pending);
        store.fw_apply(&changes)
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let feeds = self.feed_reader.as_ref().and_then(|_| {
            self.feeds
                .iter()
                .filter(|f| !f.in_flight)
                .map(|f| f.next_read)
                .chain(self.feed_poll_at)
                .min()
        });
        [self.detector.poll_timeout(), feeds]
            .into_iter()
            .flatten()
            .chain([self.next_maintenance])
            .min()
    }

    /// Expires detector state; starts due feed reads and applies finished ones; every 5 s
    /// asks the enforcer thread to verify the kernel table (it restores it with the live
    /// bans if it was flushed or altered); hourly deletes ended bans and locks from the
    /// store.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.feed_tick(now);
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
        for (i, w) in self.log_windows.iter_mut().enumerate() {
            if w.suppressed > 0 && now >= w.start.saturating_add(ALERT_LOG_WINDOW_MS) {
                tracing::warn!(
                    rule = %Rule::ALL[i],
                    "firewall: {} more {} alerts in the last minute were not logged (see `outpostctl fw alerts`)",
                    w.suppressed, Rule::ALL[i]
                );
                *w = LogWindow::default();
            }
        }
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
    pub fn admin(&mut self, now: Millis, cmd: FwCommand, store: &Store) -> Reply {
        if let Err(err) = self.persist(store) {
            tracing::error!(%err, "firewall: store write failed");
        }
        match cmd {
            FwCommand::Status => self.status(now, store),
            FwCommand::Bans => self.list_bans(now),
            FwCommand::Unban { addr } => match addr.trim().parse::<IpAddr>() {
                Ok(ip) => self.unban(ip, store),
                Err(_) => Reply::error(format!("`{}` is not an IP address", addr.escape_default())),
            },
            FwCommand::Allow { cidr } => match cidr.parse::<Cidr>() {
                Ok(net) => self.allow(now, net, store),
                Err(err) => Reply::error(format!("`{}`: {err}", cidr.escape_default())),
            },
            FwCommand::Unlock { user } => self.unlock(user, store),
            FwCommand::Alerts { limit } => match store.fw_alerts(limit.min(MAX_LISTED)) {
                Ok(alerts) => Reply::FwAlerts(alerts.into_iter().map(alert_info).collect()),
                Err(err) => Reply::error(format!("cannot read the alerts: {err}")),
            },
            FwCommand::Rules => Reply::FwRules(self.rules()),
            FwCommand::Import { text, ban_secs } => self.import(now, &text, ban_secs, store),
            FwCommand::Export => self.export(now),
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
        let i = rule_index(alert.rule);
        let w = &mut self.log_windows[i];
        if now >= w.start.saturating_add(ALERT_LOG_WINDOW_MS) {
            if w.suppressed > 0 {
                tracing::warn!(
                    rule = %alert.rule,
                    "firewall: {} more {} alerts in the last minute were not logged (see `outpostctl fw alerts`)",
                    w.suppressed, alert.rule
                );
            }
            *w = LogWindow {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= ALERT_LOG_LIMIT {
            w.suppressed += 1;
            self.alerts_suppressed += 1;
            return;
        }
        w.logged += 1;
        self.alerts_logged += 1;
        tracing::warn!(
            rule = %alert.rule,
            addr = ?alert.addr,
            user = ?alert.user,
            enforced = alert.enforced,
            "firewall: {}",
            alert.message.escape_debug()
        );
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
        if !self.conn_kernel || self.enforcer.is_none() || self.trusted(ip) {
            return;
        }
        if self.detector.is_banned(now, ip) {
            return;
        }
        let fresh = self
            .kernel_authed
            .get(&ip)
            .is_some_and(|&until| until.saturating_sub(now) > pass_ms / 2);
        if fresh {
            return;
        }
        if self.kernel_authed.len() >= MAX_KERNEL_AUTHED && !self.kernel_authed.contains_key(&ip) {
            self.kernel_authed.retain(|_, until| *until > now);
            if self.kernel_authed.len() >= MAX_KERNEL_AUTHED {
                return;
            }
        }
        self.kernel_authed.insert(ip, now.saturating_add(pass_ms));
        self.enforce(SetOp::Authenticated {
            addr: ip,
            timeout_secs: pass_ms.div_ceil(1_000),
        });
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

    fn runtime_allowed(&self, ip: IpAddr) -> bool {
        self.runtime_allow.iter().any(|c| c.contains(ip))
    }

    /// Never banned: loopback, trunk peers, allow-listed networks (config and `fw allow`).
    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let c = self.detector.config();
        is_loopback(ip)
            || c.trunk_peers.iter().any(|&p| canonical(p) == ip)
            || c.allow.iter().any(|n| n.contains(ip))
            || self.runtime_allowed(ip)
    }

    /// Starts the feed reads that are due and applies the finished ones.
    fn feed_tick(&mut self, now: Millis) {
        let Some(reader) = self.feed_reader.as_ref() else {
            return;
        };
        let mut done = Vec::new();
        while let Some(result) = reader.poll() {
            done.push(result);
        }
        let mut unavailable = Vec::new();
        for (i, f) in self.feeds.iter_mut().enumerate() {
            if f.in_flight || f.next_read > now {
                continue;
            }
            f.next_read = now.saturating_add(f.refresh_ms);
            if reader.request(i, &f.path, now) {
                f.in_flight = true;
            } else {
                unavailable.push(i);
            }
        }
        for i in unavailable {
            self.feed_failed(i, "the feed reader thread is not running".to_string());
        }
        if !done.is_empty() {
            for (i, result) in done {
                self.feed_read(now, i, result);
            }
            self.reconcile_feeds(now);
        }
        self.feed_poll_at = self
            .feeds
            .iter()
            .any(|f| f.in_flight)
            .then(|| now.saturating_add(FEED_POLL_MS));
    }

    /// Records one finished read of feed `i`.
    fn feed_read(&mut self, now: Millis, i: usize, result: Result<ParsedFeed, FeedError>) {
        let parsed = match result {
            Ok(parsed) => parsed,
            Err(err) => {
                if let Some(f) = self.feeds.get_mut(i) {
                    f.in_flight = false;
                }
                self.feed_failed(i, err.to_string());
                return;
            }
        };
        let listed: HashSet<IpAddr> = parsed
            .addrs
            .iter()
            .copied()
            .filter(|a| !self.trusted(*a))
            .collect();
        let Some(f) = self.feeds.get_mut(i) else {
            return;
        };
        f.in_flight = false;
        let h = &mut f.health;
        let problems_changed = (h.invalid, h.too_wide, h.truncated)
            != (parsed.invalid, parsed.too_wide, parsed.truncated);
        h.reads += 1;
        h.entries = parsed.addrs.len();
        h.ignored = parsed.addrs.len() - listed.len();
        h.invalid = parsed.invalid;
        h.too_wide = parsed.too_wide;
        h.truncated = parsed.truncated;
        h.last_refresh = Some(now);
        if h.last_error.take().is_some() {
            tracing::info!(feed = %h.source, "firewall: blocklist feed readable again");
        }
        if problems_changed && !parsed.problems.is_empty() {
            tracing::warn!(
                feed = %h.source,
                invalid = parsed.invalid,
                too_wide = parsed.too_wide,
                truncated = parsed.truncated,
                "firewall: blocklist feed: entries skipped: {}",
                parsed.problems.join("; ")
            );
        }
        if problems_changed && parsed.truncated > 0 {
            tracing::warn!(
                feed = %h.source,
                "firewall: blocklist feed lists more than {MAX_FEED_ENTRIES} addresses; {} skipped",
                parsed.truncated
            );
        }
        f.listed = listed;
    }

    /// Records a failed read of feed `i`; its bans stay until they end.
    fn feed_failed(&mut self, i: usize, text: String) {
        let Some(f) = self.feeds.get_mut(i) else {
            return;
        };
        let h = &mut f.health;
        h.reads += 1;
        h.failures += 1;
        if h.last_error.as_deref() != Some(text.as_str()) {
            tracing::error!(
                feed = %h.source,
                "firewall: blocklist feed cannot be used: {text}; the bans of its last good read stay until they end"
            );
        }
        h.last_error = Some(text);
    }

    /// Makes the bans with rule `feed` match what the feeds list now: bans the new
    /// addresses, renews those past half their time, lifts those no feed lists any more.
    fn reconcile_feeds(&mut self, now: Millis) {
        let cap = MAX_FEED_ENTRIES
            .min(self.detector.config().limits.max_bans / 2)
            .max(1);
        let mut desired: HashMap<IpAddr, u64> = HashMap::new();
        let mut overflow = 0;
        for f in &self.feeds {
            for &addr in &f.listed {
                let room = desired.len() < cap;
                match desired.get_mut(&addr) {
                    Some(ms) => *ms = (*ms).max(f.ban_ms),
                    None if room => {
                        desired.insert(addr, f.ban_ms);
                    }
                    None => overflow += 1,
                }
            }
        }
        if overflow != self.feed_overflow && overflow > 0 {
            tracing::warn!(
                "firewall: blocklist feeds list {overflow} addresses past the limit of {cap}; those are not banned"
            );
        }
        self.feed_overflow = overflow;

        let current: HashMap<IpAddr, (Rule, Millis)> = self
            .detector
            .bans(now)
            .into_iter()
            .map(|b| (b.addr, (b.rule, b.until)))
            .collect();
        let (mut added, mut renewed, mut lifted) = (0usize, 0usize, 0usize);
        let mut ops = Vec::new();
        for (&addr, &ban_ms) in &desired {
            let until = now.saturating_add(ban_ms);
            match current.get(&addr) {
                Some(&(Rule::Feed, old)) => {
                    if old.saturating_sub(now) >= ban_ms / 2 {
                        continue;
                    }
                    renewed += 1;
                }
                Some(&(rule, old)) => {
                    if old >= until {
                        continue;
                    }
                    if self.feed_displaced.len() < cap {
                        self.feed_displaced.insert(addr, (rule, old));
                    }
                    added += 1;
                }
                None => added += 1,
            }
            self.detector.restore_ban(now, addr, until, Rule::Feed, 1);
            ops.push(SetOp::Ban {
                addr,
                timeout_secs: ban_ms.div_ceil(1_000),
            });
        }
        for (&addr, &(rule, _)) in &current {
            if rule != Rule::Feed || desired.contains_key(&addr) {
                continue;
            }
            lifted += 1;
            match self.feed_displaced.remove(&addr) {
                Some((old_rule, old_until)) if old_until > now => {
                    self.detector.restore_ban(now, addr, old_until, old_rule, 1);
                    ops.push(SetOp::Ban {
                        addr,
                        timeout_secs: (old_until - now).div_ceil(1_000),
                    });
                }
                _ => {
                    self.detector.unban(addr);
                    ops.push(SetOp::Unban(addr));
                }
            }
        }
        self.feed_displaced
            .retain(|addr, (_, until)| *until > now && desired.contains_key(addr));
        if added + renewed + lifted > 0 {
            tracing::info!(
                listed = desired.len(),
                added,
                renewed,
                lifted,
                "firewall: blocklist feeds applied"
            );
        }
        self.enforce_all(ops);
    }

    /// The feeds (by source) that list `ip` now.
    fn feeds_listing(&self, ip: IpAddr) -> Vec<&str> {
        self.feeds
            .iter()
            .filter(|f| f.listed.contains(&ip))
            .map(|f| f.health.source.as_str())
            .collect()
    }

    /// `fw import`: bans every address of a blocklist once, stored like any ban.
    fn import(&mut self, now: Millis, text: &str, ban_secs: u64, store: &Store) -> Reply {
        if !(1..=nft::MAX_BAN_SECS).contains(&ban_secs) {
            return Reply::error(format!(
                "ban length must be between 1 and {} seconds",
                nft::MAX_BAN_SECS
            ));
        }
        if self.mode == Mode::Monitor {
            return Reply::error("monitor mode: nothing is banned, so nothing was imported");
        }
        let parsed = match feed::parse(text, now) {
            Ok(p) => p,
            Err(err) => return Reply::error(format!("not a blocklist: {err}")),
        };
        let summary = |p: &ParsedFeed| {
            let mut s = format!(
                "{} invalid entries, {} networks wider than {} addresses, {} ended bans and {} addresses past the {MAX_FEED_ENTRIES}-address limit skipped",
                p.invalid,
                p.too_wide,
                feed::MAX_NETWORK_ADDRS,
                p.expired,
                p.truncated
            );
            if !p.problems.is_empty() {
                s.push_str(&format!(" ({})", p.problems.join("; ")));
            }
            s
        };
        if parsed.addrs.is_empty() {
            return Reply::error(format!("no addresses to import: {}", summary(&parsed)));
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
            self.feed_displaced.remove(&addr);
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
        let message = format!(
            "{banned} addresses banned for {ban_secs} s; {already} already banned as long or longer, {ignored} ignored (allow-listed, trunk peer or loopback); {}",
            summary(&parsed)
        );
        match stored {
            Ok(()) => Reply::done(message),
            Err(err) => Reply::error(format!(
                "{message}; but writing them to the store failed ({err}): they end at the next restart"
            )),
        }
    }

    /// `fw export`: our enforced bans (not the feeds'), longest-lasting first, as many as
    /// fit in an importable document.
    fn export(&self, now: Millis) -> Reply {
        let mut bans: Vec<_> = self
            .detector
            .bans(now)
            .into_iter()
            .filter(|b| b.enforced && b.rule != Rule::Feed)
            .collect();
        bans.sort_by_key(|b| std::cmp::Reverse((b.until, b.addr)));
        // `{"generated":<ms>,"bans":[` ... `]}` and a newline per ban (see outpostctl).
        let mut size: usize = 48;
        let mut out = Vec::new();
        let mut omitted = 0;
        for b in bans {
            let ban = FwExportBan {
                addr: b.addr.to_string(),
                until: b.until,
                rule: b.rule.to_string(),
                reason: b.reason,
            };
            let len = serde_json::to_string(&ban).map_or(usize::MAX, |s| s.len().saturating_add(2));
            if omitted > 0
                || out.len() >= MAX_FEED_ENTRIES
                || size.saturating_add(len) > MAX_FEED_BYTES
            {
                omitted += 1;
                continue;
            }
            size += len;
            out.push(ban);
        }
        Reply::FwExport(FwExport {
            generated: now,
            bans: out,
            omitted,
        })
    }

    fn unban(&mut self, ip: IpAddr, store: &Store) -> Reply {
        let ip = canonical(ip);
        let existed = self.detector.unban(ip);
        self.ban_days.remove(&ip);
        self.feed_displaced.remove(&ip);
        self.enforce(SetOp::Unban(ip));
        self.conn_notice(ConnNotice::Unbanned(ip));
        if let Err(err) = store.fw_apply(&[FirewallChange::Unban(ip)]) {
            return Reply::error(format!(
                "{ip} unbanned in the kernel and in memory, but the store failed: {err}"
            ));
        }
        tracing::info!(addr = %ip, "firewall: unbanned by the admin");
        let listing = self.feeds_listing(ip);
        let feed_note = if listing.is_empty() {
            String::new()
        } else {
            format!(
                "; blocklist feed {} still lists it, so it is banned again at the feed's next refresh (use `fw allow` to exempt it)",
                listing.join(", ")
            )
        };
        if existed {
            Reply::done(format!(
                "{ip} unbanned (kernel, store and its counters cleared){feed_note}"
            ))
        } else {
            Reply::done(format!(
                "{ip} was not banned; kernel and store entries cleared anyway{feed_note}"
            ))
        }
    }

    fn allow(&mut self, now: Millis, net: Cidr, store: &Store) -> Reply {
        if self.runtime_allow.contains(&net) {
            return Reply::done(format!("{net} is already allowed"));
        }
        if self.runtime_allow.len() >= MAX_RUNTIME_ALLOW {
            return Reply::error(format!(
                "at most {MAX_RUNTIME_ALLOW} networks can be allowed at runtime; put them in [firewall.detect] allow"
            ));
        }
        self.runtime_allow.push(net);
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
            self.feed_displaced.remove(ip);
            self.enforce(SetOp::Unban(*ip));
            self.conn_notice(ConnNotice::Unbanned(*ip));
        }
        // The feeds' next reconciliation must not ban them again.
        for f in &mut self.feeds {
            f.listed.retain(|a| !net.contains(*a));
        }
        let changes: Vec<FirewallChange> =
            inside.iter().map(|ip| FirewallChange::Unban(*ip)).collect();
        if let Err(err) = store.fw_apply(&changes) {
            tracing::error!(%err, "firewall: cannot delete lifted bans from the store");
        }
        tracing::info!(net = %net, lifted = inside.len(), "firewall: network allowed by the admin");
        Reply::done(format!(
            "{net} allowed until the daemon restarts (add it to [firewall.detect] allow to keep it); {} bans inside it lifted",
            inside.len()
        ))
    }

    fn unlock(&mut self, user: String, store: &Store) -> Reply {
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Reply::error("not an account name");
        }
        let toll_locked = match self.toll.unlock(&user, store) {
            Ok(was) => was,
            Err(err) => return Reply::error(format!("cannot update the store: {err}")),
        };
        let existed = self.detector.unlock(&user) || toll_locked;
        if let Err(err) = store.fw_apply(&[FirewallChange::Unlock(user.clone())]) {
            return Reply::error(format!("cannot delete the lock from the store: {err}"));
        }
        if self.unlocks_out.len() >= MAX_QUEUED_LOCKS {
            self.unlocks_out.pop_front();
        }
        self.unlocks_out.push_back(user.clone());
        if existed {
            Reply::done(format!("account {user} unlocked"))
        } else {
            Reply::done(format!("account {user} was not locked"))
        }
    }

    fn status(&mut self, now: Millis, store: &Store) -> Reply {
        let stats = self.detector.stats();
        let alerts_stored = match store.fw_alert_count() {
            Ok(n) => n,
            Err(err) => return Reply::error(format!("cannot read the alerts: {err}")),
        };
        let kernel = self.enforcer.as_mut().map(|e| {
            let state = e.snapshot();
            FwKernelInfo {
                table: self.table.clone(),
                installed: state.installed,
                counters: state.counters,
                batches: state.batches,
                ops: state.ops,
                restores: state.restores,
                failures: state.failures,
                queue_drops: e.queue_drops,
                last_error: state.last_error,
            }
        });
        let now_bans = self
            .detector
            .bans(now)
            .iter()
            .filter(|b| b.enforced)
            .count();
        Reply::FwStatus(FwStatusInfo {
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
            runtime_allow: self.runtime_allow.iter().map(Cidr::to_string).collect(),
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
            feeds: self.feeds.iter().map(|f| f.health.clone()).collect(),
            connections: None,
        })
    }

    fn list_bans(&self, now: Millis) -> Reply {
        let secs = |until: Millis| until.saturating_sub(now).div_ceil(1_000);
        let bans = self.detector.bans(now);
        let locks = self.detector.locks(now);
        // Extensions the toll-fraud policy locked to internal calls: until unlocked.
        let toll: Vec<FwLockInfo> = self
            .toll
            .locked()
            .into_iter()
            .map(|user| FwLockInfo {
                user,
                until: u64::MAX,
                remaining_secs: u64::MAX,
                rule: Rule::TollFraud.to_string(),
                enforced: true,
                blocks: "outside calls (internal calls still work)".to_string(),
                except: Vec::new(),
            })
            .collect();
        Reply::FwBans(FwBansInfo {
            total_bans: bans.len(),
            total_locks: locks.len() + toll.len(),
            bans: bans
                .into_iter()
                .take(MAX_LISTED)
                .map(|b| FwBanInfo {
                    addr: b.addr.to_string(),
                    until: b.until,
                    remaining_secs: secs(b.until),
                    rule: b.rule.to_string(),
                    reason: b.reason,
                    count_today: b.count_today,
                    enforced: b.enforced,
                })
                .collect(),
            locks: locks
                .into_iter()
                .take(MAX_LISTED)
                .map(|l| FwLockInfo {
                    user: l.user,
                    until: l.until,
                    remaining_secs: secs(l.until),
                    rule: l.rule.to_string(),
                    enforced: l.enforced,
                    // The daemon fills in the sources the call core exempts.
                    blocks: "all sources".to_string(),
                    except: Vec::new(),
                })
                .chain(toll)
                .collect(),
        })
    }

    fn rules(&self) -> Vec<FwRuleInfo> {
        let c = self.detector.config();
        let hits: HashMap<Rule, u64> = self.detector.rule_hits().into_iter().collect();
        let per = |n: u32, what: &str, window: u64| {
            if n == 0 {
                "off".to_string()
            } else {
                format!("{n} {what} / {}", fmt_ms(window))
            }
        };
        let ban = |ms: u64| format!("ban {}", fmt_ms(ms));
        Rule::ALL
            .iter()
            .map(|&rule| {
                let (threshold, action) = match rule {
                    Rule::Flood => (
                        per(c.flood.limit, "requests", c.flood.window_ms),
                        ban(c.flood.ban_ms),
                    ),
                    Rule::UnknownHost => (
                        per(
                            c.unknown_host.reject_limit,
                            "messages before a successful auth",
                            c.unknown_host.reject_window_ms,
                        ),
                        format!("drop for {}", fmt_ms(c.unknown_host.reject_ms)),
                    ),
                    Rule::UnknownHostFlood => (
                        per(
                            c.unknown_host.ban_limit,
                            "messages before a successful auth",
                            c.unknown_host.ban_window_ms,
                        ),
                        ban(c.unknown_host.ban_ms),
                    ),
                    Rule::AuthFailures => (
                        per(
                            c.auth_source.limit,
                            "failures per source",
                            c.auth_source.window_ms,
                        ),
                        ban(c.auth_source.ban_ms),
                    ),
                    Rule::RepeatOffender => (
                        per(c.repeat.bans, "bans", c.repeat.window_ms),
                        ban(c.repeat.ban_ms),
                    ),
                    Rule::AccountGuessing => (
                        per(
                            c.auth_account.limit,
                            "failures per account",
                            c.auth_account.window_ms,
                        ),
                        format!("lock account {}", fmt_ms(c.auth_account.lock_ms)),
                    ),
                    Rule::Enumeration => (
                        if c.enumeration.limit == 0 {
                            "off".to_string()
                        } else {
                            format!(
                                "> {} distinct unknown users / {}",
                                c.enumeration.limit,
                                fmt_ms(c.enumeration.window_ms)
                            )
                        },
                        ban(c.enumeration.ban_ms),
                    ),
                    Rule::Scanner => (
                        format!(
                            "{} User-Agent patterns{}",
                            c.scanner.user_agents.len(),
                            if c.scanner.tool_fingerprints {
                                " + tool header fingerprints"
                            } else {
                                ""
                            }
                        ),
                        ban(c.scanner.ban_ms),
                    ),
                    Rule::Malformed => (
                        "message does not parse".to_string(),
                        "drop, counts as a failure".to_string(),
                    ),
                    Rule::Oversized => (
                        format!(
                            "message > {} B or Request-URI > {} B",
                            c.sanity.max_message, c.sanity.max_ruri
                        ),
                        "drop, counts as a failure".to_string(),
                    ),
                    Rule::Manual => ("admin (`fw import`)".to_string(), "ban".to_string()),
                    Rule::Feed => (
                        format!("listed by one of {} blocklist feeds", self.feeds.len()),
                        "ban while listed".to_string(),
                    ),
                    Rule::TollFraud => (
                        "toll-fraud policy refused a call".to_string(),
                        "ban".to_string(),
                    ),
                    Rule::ConnectionFlood => {
                        let r = &c.connection_flood;
                        let part = |n: u32, what: &str| {
                            (n > 0).then(|| format!("{n} TCP/TLS connections {what}"))
                        };
                        let parts: Vec<String> = [
                            part(r.refused_limit, "refused at the per-source cap"),
                            part(r.open_limit, "opened"),
                        ]
                        .into_iter()
                        .flatten()
                        .collect();
                        (
                            if parts.is_empty() {
                                "off".to_string()
                            } else {
                                format!(
                                    "{} / {} (x{} after a successful auth)",
                                    parts.join(" or "),
                                    fmt_ms(r.window_ms),
                                    r.authenticated_factor.max(1)
                                )
                            },
                            ban(r.ban_ms),
                        )
                    }
                };
                FwRuleInfo {
                    rule: rule.to_string(),
                    threshold,
                    action,
                    hits: hits.get(&rule).copied().unwrap_or(0),
                }
            })
            .collect()
    }
}

/// The addresses of the configured `[[trunk]]`s (names resolved now) and of their
/// `inbound_from` networks' hosts: never banned (see `Detector`'s "Who is never banned").
fn configured_trunk_peers(cfg: &Config) -> Vec<IpAddr> {
    cfg.trunk
        .iter()
        .filter_map(|t| t.resolve().ok())
        .map(|a| canonical(a.ip()))
        .collect()
}

/// The trunks' own traffic for the kernel's trunk meter, as the call core recognises it
/// (`pbx_core::trunk`): over UDP from the trunk's address and port, over TCP/TLS from its
/// address (any port: a connection we opened, or one the provider opened), and from its
/// `inbound_from` networks over its transport (any port). `[firewall.detect] trunk_peers`
/// addresses, which name no transport, count over both.
fn kernel_trunk_peers(cfg: &Config) -> Vec<TrunkPeer> {
    let mut peers = Vec::new();
    for t in &cfg.trunk {
        let proto = match t.transport_kind() {
            Transport::Udp => TrunkProto::Udp,
            Transport::Tcp | Transport::Tls => TrunkProto::Tcp,
        };
        if let Ok(addr) = t.resolve() {
            let port = (proto == TrunkProto::Udp).then_some(addr.port());
            peers.push(TrunkPeer::host(addr.ip(), proto, port));
        }
        for net in t.inbound_nets() {
            if let Ok(net) = Cidr::new(net.network(), net.prefix()) {
                peers.push(TrunkPeer {
                    net,
                    proto,
                    port: None,
                });
            }
        }
    }
    for &ip in &cfg.firewall.detect.trunk_peers {
        for proto in [TrunkProto::Udp, TrunkProto::Tcp] {
            peers.push(TrunkPeer::host(ip, proto, None));
        }
    }
    peers.truncate(firewall::nft::MAX_TRUNK_PEERS);
    peers
}

/// The kernel table's settings from the whole configuration.
fn nft_config(cfg: &Config) -> NftConfig {
    let fw = &cfg.firewall;
    let mut sip_ports: Vec<u16> = cfg.sip.listen.iter().map(|a| a.port()).collect();
    sip_ports.sort_unstable();
    sip_ports.dedup();
    let defaults = NftConfig::default();
    NftConfig {
        table: fw.table.clone(),
        sip_ports,
        rtp_range: if cfg.media.enabled {
            (cfg.media.port_first, cfg.media.port_last)
        } else {
            defaults.rtp_range
        },
        rtp_closed: fw.rtp_closed && cfg.media.enabled,
        allow: fw.detect.allow.clone(),
        trunk_peers: kernel_trunk_peers(cfg),
        flood_rate: (fw.kernel_flood_per_second > 0).then_some(FloodLimit {
            per_second: fw.kernel_flood_per_second,
            burst: fw.kernel_flood_burst,
        }),
        trunk_flood_rate: (fw.kernel_trunk_per_second > 0).then_some(FloodLimit {
            per_second: fw.kernel_trunk_per_second,
            burst: fw.kernel_trunk_burst,
        }),
        conn_limit: conn_limit(cfg),
        netns: None,
        nft: fw.nft.clone(),
        nft_timeout_ms: defaults.nft_timeout_ms,
    }
}

/// The kernel's per-source connection limits: twice the daemon's caps (connections held,
/// or new connections per second), so the connections between the two are the ones the
/// daemon refuses and reports (rule `connection_flood`), and a flood beyond is dropped
/// before `accept`.
fn conn_limit(cfg: &Config) -> Option<nft::ConnLimit> {
    let c = &cfg.firewall.connections;
    let by = match c.kernel {
        crate::config::KernelConnLimit::Count => nft::ConnLimitBy::Count,
        crate::config::KernelConnLimit::SynRate => nft::ConnLimitBy::SynRate,
        crate::config::KernelConnLimit::Off => return None,
    };
    let mut ports: Vec<u16> = cfg
        .sip
        .listen
        .iter()
        .chain(&cfg.tls.listen)
        .map(|a| a.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    (!ports.is_empty()).then(|| nft::ConnLimit {
        ports,
        unauthenticated: c.per_source.saturating_mul(2),
        authenticated: c.per_source_authenticated.saturating_mul(2),
        by,
    })
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

fn rule_index(rule: Rule) -> usize {
    Rule::ALL.iter().position(|&r| r == rule).unwrap_or(0)
}

fn alert_info(a: Alert) -> FwAlertInfo {
    FwAlertInfo {
        at: a.at,
        rule: a.rule.to_string(),
        addr: a.addr.map(|ip| ip.to_string()),
        user: a.user,
        message: a.message,
        enforced: a.enforced,
    }
}

/// A duration for humans: `300 s`, `10 min`, `24 h`, `7 d`.
fn fmt_ms(ms: u64) -> String {
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

// -----------------------------------------------------------------------------------------
// The enforcer thread
// -----------------------------------------------------------------------------------------

/// A request to the enforcer thread.
#[derive(Debug)]
enum Request {
    /// A set update, batched with everything else queued.
    Op(SetOp),
    /// Many set updates (a feed, an import), applied in runs of at most
    /// [`MAX_OPS_PER_BATCH`].
    Ops(Vec<SetOp>),
    /// Check the table; restore it if it was changed from outside; refresh the counters.
    Verify,
    /// Refresh the counters, then signal.
    Counters(mpsc::Sender<()>),
}

/// What the enforcer thread reports (read by `fw status`).
#[derive(Debug, Clone, Default)]
struct KernelState {
    /// When the enforcer thread last finished a round (for the watchdog).
    last_round: Option<Instant>,
    installed: bool,
    counters: Option<Counters>,
    batches: u64,
    ops: u64,
    restores: u64,
    failures: u64,
    last_error: Option<String>,
}

/// The daemon's side of the enforcer thread. Dropping it ends the thread after its current
/// nft run; the table stays, so the kernel keeps dropping banned sources across a restart.
#[derive(Debug)]
struct EnforcerHandle {
    tx: SyncSender<Request>,
    shared: Arc<Mutex<KernelState>>,
    queue_drops: u64,
}

impl EnforcerHandle {
    /// Starts the thread, which installs the table with `bans` (address, remaining secs).
    fn spawn(cfg: NftConfig, bans: Vec<(IpAddr, u64)>) -> std::io::Result<EnforcerHandle> {
        let (tx, rx) = mpsc::sync_channel(ENFORCER_QUEUE);
        let shared = Arc::new(Mutex::new(KernelState::default()));
        let thread_state = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("nft-enforcer".into())
            .spawn(move || EnforcerThread::new(cfg, bans, thread_state).run(&rx))?;
        Ok(EnforcerHandle {
            tx,
            shared,
            queue_drops: 0,
        })
    }

    fn send(&mut self, op: SetOp) {
        if let Err(e) = self.tx.try_send(Request::Op(op)) {
            self.queue_drops += 1;
            if self.queue_drops.is_power_of_two() {
                let why = match e {
                    TrySendError::Full(_) => "queue full",
                    TrySendError::Disconnected(_) => "thread gone",
                };
                tracing::error!(
                    dropped = self.queue_drops,
                    "firewall: kernel set update dropped ({why}); user space still drops"
                );
            }
        }
    }

    fn send_all(&mut self, ops: Vec<SetOp>) {
        let n = ops.len() as u64;
        if let Err(e) = self.tx.try_send(Request::Ops(ops)) {
            self.queue_drops += n;
            let why = match e {
                TrySendError::Full(_) => "queue full",
                TrySendError::Disconnected(_) => "thread gone",
            };
            tracing::error!(
                dropped = n,
                "firewall: {n} kernel set updates dropped ({why}); user space still drops"
            );
        }
    }

    fn verify(&mut self) {
        let _ = self.tx.try_send(Request::Verify);
    }

    /// The thread's state with counters at most ~50 ms old, or the cached ones if it is busy.
    fn snapshot(&self) -> KernelState {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.try_send(Request::Counters(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(COUNTERS_WAIT);
        }
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The thread's own state.
#[derive(Debug)]
struct EnforcerThread {
    cfg: NftConfig,
    enforcer: Option<Enforcer>,
    /// The bans the kernel should hold and when they end: what a restore re-installs.
    desired: HashMap<IpAddr, Instant>,
    shared: Arc<Mutex<KernelState>>,
    last_logged_error: Option<String>,
}

impl EnforcerThread {
    fn new(cfg: NftConfig, bans: Vec<(IpAddr, u64)>, shared: Arc<Mutex<KernelState>>) -> Self {
        let now = Instant::now();
        let desired = bans
            .into_iter()
            .map(|(a, secs)| {
                (
                    canonical(a),
                    now + Duration::from_secs(secs.min(nft::MAX_BAN_SECS)),
                )
            })
            .collect();
        EnforcerThread {
            cfg,
            enforcer: None,
            desired,
            shared,
            last_logged_error: None,
        }
    }

    fn run(mut self, rx: &Receiver<Request>) {
        self.install();
        while let Ok(first) = rx.recv() {
            let mut ops = Vec::new();
            let mut verify = false;
            let mut waiters = Vec::new();
            let mut next = Some(first);
            while let Some(r) = next {
                match r {
                    Request::Op(op) => ops.push(op),
                    Request::Ops(many) => ops.extend(many),
                    Request::Verify => verify = true,
                    Request::Counters(tx) => waiters.push(tx),
                }
                next = if ops.len() < MAX_OPS_PER_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.track(&ops);
            if self.enforcer.is_none() {
                if verify {
                    self.install();
                }
            } else {
                let runs: Vec<&[SetOp]> = if ops.is_empty() {
                    vec![&[]]
                } else {
                    ops.chunks(MAX_OPS_PER_BATCH).collect()
                };
                let last = runs.len() - 1;
                for (i, run) in runs.into_iter().enumerate() {
                    self.apply(run, verify && i == last, !waiters.is_empty() && i == last);
                }
            }
            for w in waiters {
                let _ = w.send(());
            }
            self.shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_round = Some(Instant::now());
        }
    }

    /// Records the bans the kernel should hold, whatever happens to this batch.
    fn track(&mut self, ops: &[SetOp]) {
        let now = Instant::now();
        for op in ops {
            match *op {
                SetOp::Ban { addr, timeout_secs } => {
                    let until = now + Duration::from_secs(timeout_secs.min(nft::MAX_BAN_SECS));
                    let addr = canonical(addr);
                    if self.desired.len() >= MAX_DESIRED && !self.desired.contains_key(&addr) {
                        self.desired.retain(|_, u| *u > now);
                        if self.desired.len() >= MAX_DESIRED {
                            continue;
                        }
                    }
                    self.desired.insert(addr, until);
                }
                SetOp::Unban(addr) => {
                    self.desired.remove(&canonical(addr));
                }
                _ => {}
            }
        }
    }

    fn apply(&mut self, ops: &[SetOp], mut verify: bool, counters: bool) {
        let Some(e) = self.enforcer.as_mut() else {
            return;
        };
        let mut failed = false;
        if !ops.is_empty() {
            match e.apply(ops) {
                Ok(()) => {
                    let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                    s.batches += 1;
                    s.ops += ops.len() as u64;
                }
                Err(err) => {
                    self.failure("applying set updates", &err);
                    failed = true;
                    verify = true;
                }
            }
        }
        if verify {
            self.verify_and_restore();
            if failed {
                // The bans came back with the restore; the other updates are re-sent.
                let rest: Vec<SetOp> = ops
                    .iter()
                    .filter(|o| !matches!(o, SetOp::Ban { .. } | SetOp::Unban(_)))
                    .copied()
                    .collect();
                if let Some(e) = self.enforcer.as_mut() {
                    if !rest.is_empty() {
                        if let Err(err) = e.apply(&rest) {
                            self.failure("re-applying set updates", &err);
                        }
                    }
                }
            }
        }
        if verify || counters {
            self.refresh_counters();
        }
    }

    fn verify_and_restore(&mut self) {
        let now = Instant::now();
        self.desired.retain(|_, until| *until > now);
        let Some(e) = self.enforcer.as_mut() else {
            return;
        };
        match e.verify() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    table = %e.config().table,
                    "firewall: the nftables table was changed from outside; restoring it"
                );
                let bans = remaining(&self.desired, now);
                match e.restore(&bans) {
                    Ok(()) => {
                        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                        s.restores += 1;
                        s.installed = true;
                    }
                    Err(err) => self.failure("restoring the table", &err),
                }
            }
            Err(err) => self.failure("verifying the table", &err),
        }
    }

    fn refresh_counters(&mut self) {
        let Some(e) = self.enforcer.as_ref() else {
            return;
        };
        match e.counters() {
            Ok(c) => {
                self.shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .counters = Some(c);
            }
            Err(err) => self.failure("reading the counters", &err),
        }
    }

    fn install(&mut self) {
        let now = Instant::now();
        self.desired.retain(|_, until| *until > now);
        let result = Enforcer::install(self.cfg.clone()).and_then(|mut e| {
            let bans = remaining(&self.desired, now);
            if !bans.is_empty() {
                e.restore(&bans)?;
            }
            Ok(e)
        });
        match result {
            Ok(e) => {
                tracing::info!(
                    table = %self.cfg.table, bans = self.desired.len(),
                    "firewall: nftables table installed"
                );
                self.enforcer = Some(e);
                self.last_logged_error = None;
                let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                s.installed = true;
                s.last_error = None;
            }
            Err(err) => self.failure("installing the table", &err),
        }
    }

    /// Records a failed nft run; logs it unless it is the same error as last time.
    fn failure(&mut self, what: &str, err: &NftError) {
        let text = format!("{what}: {err}");
        if self.last_logged_error.as_deref() != Some(text.as_str()) {
            tracing::error!("firewall: nftables {text}");
            self.last_logged_error = Some(text.clone());
        }
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.failures += 1;
        s.last_error = Some(text);
        if self.enforcer.is_none() {
            s.installed = false;
        }
    }
}

/// The live bans with their remaining seconds (at least 1).
fn remaining(desired: &HashMap<IpAddr, Instant>, now: Instant) -> Vec<(IpAddr, u64)> {
    desired
        .iter()
        .filter(|(_, until)| **until > now)
        .map(|(a, until)| (*a, until.duration_since(now).as_secs().max(1)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use pbx_core::sip::{Method, Transport};

    use super::*;

    const T0: Millis = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn config() -> Config {
        let mut c = Config::default();
        c.firewall.enforce = EnforceMode::Off;
        c
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
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
        assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
        assert_eq!(g.poll_unlock(), Some("100".to_string()));
        assert!(store.fw_locks().unwrap().is_empty());
    }

    #[test]
    fn unknown_users_count_as_failures_and_feed_enumeration() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
        let phone = "192.0.2.44";
        for i in 0..10 {
            g.feedback(T0 + i, &auth_failed(phone, &format!("2{i:02}"), true));
        }
        assert!(g.is_banned(T0 + 10, ip(phone)));
        let reply = g.admin(T0 + 20, FwCommand::Unban { addr: phone.into() }, &store);
        match reply {
            Reply::Done { message } => assert!(message.contains("unbanned"), "{message}"),
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
        assert!(matches!(bad, Reply::Error { .. }));
    }

    #[test]
    fn bans_and_locks_survive_a_restart_with_their_remaining_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        {
            let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, later);
        assert!(g.is_banned(later, ip("203.0.113.9")));
        assert!(!inspect(
            &mut g,
            later,
            "203.0.113.9",
            &options("203.0.113.9", "x", 2)
        ));
        let Reply::FwBans(list) = g.admin(later, FwCommand::Bans, &store) else {
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
        let mut g = Guard::start(&config(), &store, later + MIN);
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
            Guard::start(&config(), &store, much_later)
        };
        assert!(!g2.is_banned(much_later, ip("203.0.113.9")));
        assert!(store.fw_bans().unwrap().is_empty());
    }

    #[test]
    fn alerts_are_persisted_listed_and_their_logging_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = Guard::start(&config(), &store, T0);
        for n in 0..25u32 {
            let src = format!("203.0.113.{}", n + 1);
            assert!(!inspect(
                &mut g,
                T0 + u64::from(n),
                &src,
                &options(&src, "friendly-scanner", n)
            ));
        }
        assert_eq!(g.alerts_logged, 10, "at most 10 lines per rule per minute");
        assert_eq!(g.alerts_suppressed, 15);
        // Next minute: logging resumes.
        let src = "198.51.100.99";
        assert!(!inspect(
            &mut g,
            T0 + MIN,
            src,
            &options(src, "sipcli/1.8", 99)
        ));
        assert_eq!(g.alerts_logged, 11);

        let Reply::FwAlerts(alerts) = g.admin(T0 + MIN, FwCommand::Alerts { limit: 5 }, &store)
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
        let mut g = Guard::start(&config(), &store, T0);
        for _ in 0..MAX_PENDING_WRITES + 10 {
            g.write(FirewallChange::PurgeExpired(T0));
        }
        assert_eq!(g.pending.len(), MAX_PENDING_WRITES);
        assert_eq!(g.writes_dropped, 10);
    }

    #[test]
    fn runtime_allow_lifts_bans_inside_and_exempts_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = Guard::start(&config(), &store, T0);
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
            Reply::Done { message } => {
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
        assert!(matches!(
            g.admin(
                T0,
                FwCommand::Allow {
                    cidr: "10.0.0.0/33".into()
                },
                &store
            ),
            Reply::Error { .. }
        ));
        let Reply::FwStatus(st) = g.admin(T0, FwCommand::Status, &store) else {
            panic!("not a status")
        };
        assert_eq!(st.runtime_allow, ["198.51.100.0/24"]);
    }

    #[test]
    fn monitor_mode_alerts_but_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut cfg = config();
        cfg.firewall.monitor = true;
        let mut g = Guard::start(&cfg, &store, T0);
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
        let Reply::FwStatus(st) = g.admin(T0 + 2, FwCommand::Status, &store) else {
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let Reply::FwStatus(st) = g.admin(T0 + 2, FwCommand::Status, &store) else {
            panic!("not a status")
        };
        assert_eq!(st.mode, "user-space");
        assert!(st.reason.unwrap().contains("enforce"));
        assert!(st.kernel.is_none());
        assert_eq!((st.bans, st.inspected, st.dropped_banned), (1, 1, 1));
        assert_eq!(st.alerts_stored, 1);
        let scanner = st.rule_hits.iter().find(|h| h.rule == "scanner").unwrap();
        assert_eq!(scanner.hits, 1);

        let Reply::FwRules(rules) = g.admin(T0, FwCommand::Rules, &store) else {
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
        // Without the kernel nothing is tracked.
        g.media(&MediaCommand::Close { session: 1 });
        assert!(g.rtp_sessions.is_empty());
        let cfg = nft_config(&Config::default());
        assert_eq!(cfg.sip_ports, [5060]);
        assert_eq!(cfg.rtp_range, (10000, 10999));
        assert!(cfg.rtp_closed);
        assert_eq!(cfg.flood_rate.unwrap().per_second, 200);
    }
    #[test]
    fn trunks_become_kernel_trunk_peers_by_address_transport_and_port() {
        let mut c = Config::from_toml_str(
            "[[trunk]]\nname = \"udp\"\nhost = \"203.0.113.5:5080\"\nregister = false\n\
             inbound_from = [\"198.51.100.16/28\"]\n\n\
             [[trunk]]\nname = \"tls\"\nhost = \"[2001:db8::5]\"\ntransport = \"tls\"\n\
             register = false\n",
        )
        .unwrap();
        c.firewall.detect.trunk_peers = vec![ip("192.0.2.77")];
        let cfg = nft_config(&c);
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
        assert_eq!(nft_config(&c).trunk_flood_rate, None);
    }

    #[test]
    fn a_trunks_own_traffic_passes_uninspected_the_rest_of_its_address_is_inspected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut c = config();
        c.firewall.detect.trunk_peers = vec![ip("203.0.113.5")];
        let mut g = Guard::start(&c, &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
        // A stand-in for the enforcer thread: the test reads what it would be sent.
        let (tx, rx) = mpsc::sync_channel(64);
        g.enforcer = Some(EnforcerHandle {
            tx,
            shared: Arc::new(Mutex::new(KernelState::default())),
            queue_drops: 0,
        });
        g.rtp_closed = true;
        let ops = || -> Vec<SetOp> {
            rx.try_iter()
                .filter_map(|r| match r {
                    Request::Op(op) => Some(op),
                    _ => None,
                })
                .collect()
        };
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
        let close = |a: &str, port| SetOp::RtpClose { addr: ip(a), port };

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
        );
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
        // A re-INVITE from a new public address: its pairs open, the old address's close,
        // the unchanged ones are not touched.
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
            [
                open("198.51.100.9", 10000),
                open("198.51.100.9", 10001),
                close("203.0.113.5", 10000),
                close("203.0.113.5", 10001),
            ]
        );
        // An absent leg opens nothing (its pairs close); a leg without allowed addresses
        // is open to its SDP address only, as in the relay.
        g.media(&MediaCommand::Update {
            session: 7,
            a: leg(10000, &[], Some("198.51.100.9")),
            b: LegMedia::absent(),
        });
        assert_eq!(
            ops(),
            [
                close("10.0.0.7", 10002),
                close("10.0.0.7", 10003),
                close("192.168.1.20", 10000),
                close("192.168.1.20", 10001),
            ],
            "an absent leg has no pairs"
        );
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
        g.media(&MediaCommand::Close { session: 7 });
        assert_eq!(
            ops(),
            [close("198.51.100.9", 10000), close("198.51.100.9", 10001)]
        );
        assert_eq!(g.rtp_sessions.len(), 1);
        g.media(&MediaCommand::Close { session: 7 });
        assert!(ops().is_empty(), "closing twice sends nothing");
        g.media(&MediaCommand::Close { session: 8 });
        assert_eq!(
            ops(),
            [close("2001:db8::5", 10004), close("2001:db8::5", 10005)]
        );
        assert!(g.rtp_sessions.is_empty());
    }

    /// A stand-in for the enforcer thread: the test reads what it would be sent.
    fn capture_ops(g: &mut Guard) -> Receiver<Request> {
        let (tx, rx) = mpsc::sync_channel(64);
        g.enforcer = Some(EnforcerHandle {
            tx,
            shared: Arc::new(Mutex::new(KernelState::default())),
            queue_drops: 0,
        });
        rx
    }

    fn sent_ops(rx: &Receiver<Request>) -> Vec<SetOp> {
        let mut out = Vec::new();
        for r in rx.try_iter() {
            match r {
                Request::Op(op) => out.push(op),
                Request::Ops(ops) => out.extend(ops),
                _ => {}
            }
        }
        out
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
        let mut g = Guard::start(&config(), &store, T0);
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
        );
        assert_eq!(notices(&mut g), [ConnNotice::Unbanned(ip("203.0.113.30"))]);
    }

    #[test]
    fn an_auth_success_raises_the_sources_caps_in_the_transports_and_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let mut g = Guard::start(&config(), &store, T0);
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
        let Reply::FwRules(rules) = g.admin(T0, FwCommand::Rules, &store) else {
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
        while g.feeds.iter().any(|f| f.in_flight) {
            assert!(Instant::now() < deadline, "the feed read did not finish");
            std::thread::sleep(Duration::from_millis(2));
            g.handle_timeout(now);
        }
    }

    fn feed_config(path: &std::path::Path, refresh_secs: u64, ban_secs: u64) -> Config {
        let mut c = config();
        c.firewall.detect.allow = vec!["192.0.2.0/24".parse().unwrap()];
        c.firewall.detect.trunk_peers = vec![ip("198.51.100.200")];
        c.firewall.feeds = vec![crate::config::FeedConfig {
            source: path.to_str().unwrap().to_string(),
            refresh_secs,
            ban_secs,
        }];
        c
    }

    fn ban_rule(g: &mut Guard, store: &Store, now: Millis, addr: &str) -> Option<(String, u64)> {
        let Reply::FwBans(list) = g.admin(now, FwCommand::Bans, store) else {
            panic!("not a ban list")
        };
        list.bans
            .into_iter()
            .find(|b| b.addr == addr)
            .map(|b| (b.rule, b.until))
    }

    fn feed_health(g: &mut Guard, store: &Store, now: Millis) -> FwFeedInfo {
        let Reply::FwStatus(st) = g.admin(now, FwCommand::Status, store) else {
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
        let mut g = Guard::start(&feed_config(&path, 2, 600), &store, T0);
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
        let Reply::FwExport(doc) = g.admin(T0, FwCommand::Export, &store) else {
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
        let Reply::Done { message } = g.admin(
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
        );
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
        let mut g = Guard::start(&feed_config(&path, 2, 600), &store, T0);
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
        assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
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
        cfg.firewall.detect.allow = vec!["192.0.2.0/24".parse().unwrap()];
        let mut g = Guard::start(&cfg, &store, T0);
        let ops = capture_ops(&mut g);
        let reply = g.admin(
            T0,
            FwCommand::Import {
                text: "203.0.113.9\n2001:db8::66\n127.0.0.1\n192.0.2.1\nbad\n".into(),
                ban_secs: 3_600,
            },
            &store,
        );
        let Reply::Done { message } = reply else {
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
        let Reply::FwExport(doc) = g.admin(T0 + 1_000, FwCommand::Export, &store) else {
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
        let mut other = Guard::start(&config(), &store2, T0 + 2_000);
        let text = serde_json::to_string(&doc).unwrap();
        let reply = other.admin(
            T0 + 2_000,
            FwCommand::Import {
                text,
                ban_secs: 86_400,
            },
            &store2,
        );
        assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
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
            assert!(matches!(reply, Reply::Error { .. }), "{text}: {reply:?}");
        }
        let mut mcfg = config();
        mcfg.firewall.monitor = true;
        let mut monitor = Guard::start(&mcfg, &store2, T0);
        let reply = monitor.admin(
            T0,
            FwCommand::Import {
                text: "203.0.113.1\n".into(),
                ban_secs: 60,
            },
            &store2,
        );
        assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
    }

    #[test]
    fn an_export_stays_importable_in_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = Guard::start(&config(), &store, T0);
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
        assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
        let Reply::FwExport(doc) = g.admin(T0, FwCommand::Export, &store) else {
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
        let mut cfg = Config::default();
        cfg.firewall.table = "guardtest".into();
        let mut g = Guard::start(&cfg, &store, T0);
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
        let Reply::FwStatus(st) = g.admin(T0 + MAINTENANCE_MS, FwCommand::Status, &store) else {
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
        );
        wait_for("the unban", &|| !ban4().contains("203.0.113.9"));
        assert!(ban6().contains("2001:db8::66"));
        nft(&["delete", "table", "inet", "guardtest"]);
    }
}
