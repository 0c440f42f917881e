//! Kernel enforcement: the `inet outpost` nftables table and batched set updates.
//!
//! This is the firewall's only I/O. [`Enforcer::install`] replaces our table (and nothing
//! else) in one transaction; [`Enforcer::apply`] turns a batch of [`SetOp`]s into one
//! `nft -j -f -` run, whatever its size. The table (rules in this order, chain `input`,
//! hook input, priority -5, policy accept: we drop only what we own):
//!
//! 1. `iifname "lo" accept`, then the management zone ([`ManagementZone`]): `tcp dport
//!    @mgmt_ports ip saddr != @mgmt4 counter name "mgmt_drop" drop`, the same with `ip6
//!    saddr` and `@mgmt6`: SSH, the metrics endpoint and any other admin listener the
//!    daemon names in `mgmt_ports` are reachable only from the management networks (and
//!    loopback). Ahead of the allow list on purpose: allow-listing a SIP peer must not open
//!    the box's management to it. Every TCP packet is matched, not only SYNs, so removing a
//!    network also cuts the sessions it holds.
//! 2. `ip saddr @allow4 accept`, `ip6 saddr @allow6 accept` (interval sets: the allow list
//!    only; so an allow-listed source is never dropped, even if it is also banned)
//! 3. `ip saddr @ban4 counter name "banned" drop`, same for `@ban6` (timeout sets: each
//!    element carries its own timeout)
//! 4. with a `trunk_flood_rate`, on the SIP ports, per family: `ip saddr . meta l4proto .
//!    th sport @trunk4` (a trunk's own traffic: its address or networks, its transport, its
//!    signalling port or any port) → a per-address meter at the trunks' rate → `counter name
//!    "trunk_flood" drop`. Trunk peers are never accepted ahead of the limits: a UDP source
//!    address can be forged, so the trunk sets only choose which rate applies.
//! 5. on the SIP ports (TCP and UDP) a per-source meter, `limit rate over N/second burst M`
//!    → `counter name "flood" drop`, for everything rule 4 did not meter (other traffic from
//!    a trunk's address included); IPv6 sources are metered per /64. A coarse safety net far
//!    above what user space bans for, so floods never wake the daemon.
//! 6. if `rtp_closed`, per family: `meta nfproto ipv4 udp dport LO-HI ip saddr . udp dport
//!    != @rtp_open4 counter name "rtp_closed" drop`, and the same with `ip6 saddr` and
//!    `@rtp_open6` (one counter for both)
//!
//! With `conn_limit`, between 3 and 4: on new TCP connections to the SIP-over-TCP and TLS
//! ports, per source (IPv6 per /64), either a count of the source's tracked connections
//! (`ct state new` + `ct count over N`, [`ConnLimitBy::Count`]) or a SYN rate meter (`tcp
//! flags syn / syn,ack` + `limit rate over N/second burst N`, [`ConnLimitBy::SynRate`]): a
//! source in the `authed4`/`authed6` timeout sets (it authenticated recently; the daemon
//! adds it on the call core's auth success) gets the `authenticated` limit, any other the
//! `unauthenticated` one; a SYN beyond is dropped before `accept` → `counter name
//! "conn_limit" drop`. Before the packet meter, so a connection flood is counted as one.
//! `Count` makes the kernel track connections (conntrack) for all traffic in the namespace:
//! measured, a UDP flood from a banned source is absorbed at ~15 % fewer packets per second
//! per core (`bench/README.md`); a one-way UDP flood's entries are unassured and the first
//! the kernel evicts when its table is full. `SynRate` costs nothing of the sort but bounds
//! the rate of new connections, not how many a source holds (the daemon bounds that).
//!
//! RTP decision: the RTP range is closed except the (remote address, local port) pairs the
//! media engine opened for live calls (sets of type `ipv4_addr . inet_service` and
//! `ipv6_addr . inet_service`). The pairs are exactly what the relay itself accepts: per
//! leg, each of its allowed addresses (the phone's signalling address and its SDP address)
//! on the leg's local RTP port and the RTCP port above it. The remote *port* is left out on
//! purpose: a phone behind NAT sends media from its public address (the one it signals
//! from) but from a port nobody knows until the first packet arrives, and the relay latches
//! onto it then; an (address, port, port) triple would drop exactly that packet. Opening
//! whole local ports instead (the earlier design) let anyone on the internet reach the
//! relay's sockets on a live call's ports; with pairs, strangers are dropped (and counted)
//! in the kernel and never wake the relay.
//!
//! Removing something absent never fails a batch: nft 1.0.6 (Debian 12) has no `destroy`,
//! so an unban (or a re-ban of an address the kernel may still hold, to replace its
//! timeout) first adds the element with a 1 s timeout and deletes it in the same
//! transaction; a ban of a new address is a plain `add` (a transaction that deletes
//! elements costs the kernel ~10 ms more). RTP pairs are added before closed ones are
//! deleted (so deleting an absent pair is safe too); the allow sets are rewritten whole from our copy (small, rarely changed).
//!
//! Every call blocks for one nft run (a few ms; tens of ms for thousands of elements):
//! call it from a blocking thread, not from the async runtime's workers. [`enforcer`] is
//! that thread: [`EnforcerHandle`] queues set updates to it and reads back its state.

pub mod enforcer;
pub mod fastpath;
mod ruleset;
mod runner;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::net::{canonical, Cidr};
pub use enforcer::{EnforcerHandle, KernelState, SentOps};
use runner::{Batches, Runner};

/// Most trunk peer entries in the kernel's trunk sets (trunks × (1 + `inbound_from`)).
pub const MAX_TRUNK_PEERS: usize = 4_096;

/// Most networks in the management zone (per family they share one interval set).
pub const MAX_MGMT_NETWORKS: usize = 64;
/// Most management ports (TCP) the zone guards.
pub const MAX_MGMT_PORTS: usize = 32;

/// Longest ban the kernel is given: one year (longer bans are re-applied from the store).
pub const MAX_BAN_SECS: u64 = 365 * 24 * 3600;

/// Default lifetime of an RTP pinhole without a refresh: the relay's default media timeout
/// (60 s) plus a margin, so a pinhole outlives the call the relay would still keep.
pub const DEFAULT_RTP_PINHOLE_SECS: u32 = 90;
/// Shortest pinhole lifetime (tests use a few seconds).
pub const MIN_RTP_PINHOLE_SECS: u32 = 3;
/// Longest pinhole lifetime: what a crashed daemon can leave open at most.
pub const MAX_RTP_PINHOLE_SECS: u32 = 3_600;

/// A ban we gave the kernel counts as possibly present until this long after its expiry,
/// so a re-ban close to the expiry takes the safe (reset) path.
const EXPIRY_SLACK: Duration = Duration::from_secs(2);

/// Why an nft operation failed; carries nft's own words where there are any.
#[derive(Debug, Error)]
pub enum NftError {
    /// The program could not be started (not installed, not in PATH) or waited for.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// nft ran and refused: its stderr says why.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// The exit status, as shown by the OS.
        status: String,
        /// nft's stderr, trimmed and bounded.
        stderr: String,
    },
    /// nft did not finish in time and was killed.
    #[error("`{command}` did not finish within {ms} ms and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline.
        ms: u64,
    },
    /// nft's output was not what we expected (not JSON, not UTF-8, a counter missing).
    #[error("unexpected output from `{command}`: {reason}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// The configuration cannot be turned into a ruleset.
    #[error("invalid nftables configuration: {0}")]
    Config(String),
}

/// Per-source packet limit on the SIP ports, enforced by a kernel meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodLimit {
    /// Sustained packets per second per source.
    pub per_second: u32,
    /// Packets a source may send above the rate in a burst.
    pub burst: u32,
}

impl FloodLimit {
    /// The trunks' default: a provider link carrying a branch office's calls (each call is
    /// a handful of SIP packets) stays far below it.
    pub const TRUNK_DEFAULT: FloodLimit = FloodLimit {
        per_second: 1_000,
        burst: 2_000,
    };
}

impl Default for FloodLimit {
    fn default() -> Self {
        FloodLimit {
            per_second: 200,
            burst: 400,
        }
    }
}

/// Transport of a trunk's traffic as the kernel sees it (TLS is TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkProto {
    /// UDP.
    Udp,
    /// TCP (SIP over TCP or TLS).
    Tcp,
}

/// A trunk's own traffic for the kernel: from `net` over `proto`, from source port `port`
/// (`None`: any port, e.g. connections the provider opens, or `inbound_from` networks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkPeer {
    /// The provider's address (a host route) or one of its networks.
    pub net: Cidr,
    /// Its transport.
    pub proto: TrunkProto,
    /// Its source port; `None` = any.
    pub port: Option<u16>,
}

impl TrunkPeer {
    /// One address (canonical: IPv4-mapped IPv6 counts as IPv4) as a host route.
    pub fn host(ip: IpAddr, proto: TrunkProto, port: Option<u16>) -> TrunkPeer {
        TrunkPeer {
            net: host(ip),
            proto,
            port,
        }
    }
}

/// Per-source limits on new TCP connections to the SIP/TLS ports, in the kernel. Meant as a
/// bound above the daemon's own per-source caps: the connections between the two are the
/// ones the daemon refuses and reports to the detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnLimit {
    /// TCP ports whose new connections are limited (SIP over TCP, TLS).
    pub ports: Vec<u16>,
    /// For a source outside `authed4`/`authed6` (IPv6: per /64): connections it may hold
    /// ([`ConnLimitBy::Count`]) or new connections per second, with as many in a burst
    /// ([`ConnLimitBy::SynRate`]).
    pub unauthenticated: u32,
    /// The same for a source that authenticated recently.
    pub authenticated: u32,
    /// What is limited.
    #[serde(default)]
    pub by: ConnLimitBy,
}

/// How the kernel limits a source's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnLimitBy {
    /// Connections held at once (`ct count` on `ct state new`): makes the kernel track
    /// connections (conntrack) for all traffic in the namespace.
    #[default]
    Count,
    /// New connections (SYNs) per second, with a burst as large (a stateless meter, like the
    /// packet flood meter: no conntrack).
    SynRate,
}

/// Who may reach the box's management listeners: TCP to `ports` from a source outside
/// `networks` (and not over loopback) is dropped and counted (`mgmt_drop`). Live-updatable
/// with [`Enforcer::set_management`]; SIP ports never belong here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementZone {
    /// The management networks, IPv4 and IPv6 (at most [`MAX_MGMT_NETWORKS`]).
    pub networks: Vec<Cidr>,
    /// TCP ports of the management listeners the daemon runs (SSH, metrics, ...; at most
    /// [`MAX_MGMT_PORTS`]); empty: the zone guards nothing.
    pub ports: Vec<u16>,
}

impl ManagementZone {
    /// Refuses what the kernel sets cannot hold or would misread.
    pub fn check(&self) -> Result<(), NftError> {
        if self.networks.len() > MAX_MGMT_NETWORKS {
            return Err(NftError::Config(format!(
                "{} management networks (at most {MAX_MGMT_NETWORKS})",
                self.networks.len()
            )));
        }
        if self.ports.len() > MAX_MGMT_PORTS {
            return Err(NftError::Config(format!(
                "{} management ports (at most {MAX_MGMT_PORTS})",
                self.ports.len()
            )));
        }
        if self.ports.contains(&0) {
            return Err(NftError::Config("management port 0".into()));
        }
        Ok(())
    }
}

/// What the kernel table looks like and how to reach nft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NftConfig {
    /// Name of our table in family `inet`.
    pub table: String,
    /// SIP ports (TCP and UDP) guarded by the flood meter.
    pub sip_ports: Vec<u16>,
    /// The media engine's RTP port range, inclusive.
    pub rtp_range: (u16, u16),
    /// Drop UDP to the RTP range except from the (address, local port) pairs the media
    /// engine opened.
    pub rtp_closed: bool,
    /// Networks accepted before any ban or meter.
    pub allow: Vec<Cidr>,
    /// The trunks' own traffic, metered at `trunk_flood_rate` instead of `flood_rate`
    /// (never accepted ahead of the ban sets, meters or the closed RTP range).
    pub trunk_peers: Vec<TrunkPeer>,
    /// Per-source flood meter on the SIP ports; `None` turns it off.
    pub flood_rate: Option<FloodLimit>,
    /// Per-address meter for `trunk_peers` on the SIP ports (higher than `flood_rate`: a
    /// provider carries many calls); `None` meters them with everyone else.
    pub trunk_flood_rate: Option<FloodLimit>,
    /// Per-source connection caps on the SIP/TLS TCP ports; `None` (the default) turns them
    /// off (and leaves conntrack alone).
    pub conn_limit: Option<ConnLimit>,
    /// The management zone at install; changed later with [`Enforcer::set_management`].
    /// The default guards no port.
    pub management: ManagementZone,
    /// Run nft inside this network namespace (`ip netns exec NS nft …`); tests use it.
    pub netns: Option<String>,
    /// The nft program: a name looked up in PATH, or a path.
    pub nft: String,
    /// Deadline for one nft run, ms; a run that takes longer is killed.
    pub nft_timeout_ms: u64,
    /// Lifetime of an RTP pinhole (a `rtp_open4`/`rtp_open6` element) after it was opened
    /// or last refreshed ([`SetOp::RtpOpen`] again); the kernel removes it then on its own.
    pub rtp_pinhole_secs: u32,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "outpost".to_string(),
            sip_ports: vec![5060, 5061],
            rtp_range: (10000, 20000),
            rtp_closed: true,
            allow: Vec::new(),
            trunk_peers: Vec::new(),
            flood_rate: Some(FloodLimit::default()),
            trunk_flood_rate: Some(FloodLimit::TRUNK_DEFAULT),
            conn_limit: None,
            management: ManagementZone::default(),
            netns: None,
            nft: "nft".to_string(),
            nft_timeout_ms: 10_000,
            rtp_pinhole_secs: DEFAULT_RTP_PINHOLE_SECS,
        }
    }
}

impl NftConfig {
    fn validate(&self) -> Result<(), NftError> {
        let t = &self.table;
        let ok_name = !t.is_empty()
            && t.len() <= 32
            && t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok_name {
            return Err(NftError::Config(format!(
                "table name {t:?}: use 1-32 letters, digits or '_', starting with a letter"
            )));
        }
        let (lo, hi) = self.rtp_range;
        if self.rtp_closed && (lo == 0 || lo > hi) {
            return Err(NftError::Config(format!("RTP range {lo}-{hi}")));
        }
        for f in [self.flood_rate, self.trunk_flood_rate]
            .into_iter()
            .flatten()
        {
            if f.per_second == 0 {
                return Err(NftError::Config(
                    "flood rate 0/s would drop every SIP packet; use None to turn it off".into(),
                ));
            }
        }
        if self.trunk_peers.len() > MAX_TRUNK_PEERS {
            return Err(NftError::Config(format!(
                "{} trunk peer entries (at most {MAX_TRUNK_PEERS})",
                self.trunk_peers.len()
            )));
        }
        if let Some(c) = &self.conn_limit {
            if c.ports.is_empty() || c.unauthenticated == 0 || c.authenticated == 0 {
                return Err(NftError::Config(
                    "connection limits need ports and caps above 0; use None to turn them off"
                        .into(),
                ));
            }
        }
        if !(MIN_RTP_PINHOLE_SECS..=MAX_RTP_PINHOLE_SECS).contains(&self.rtp_pinhole_secs) {
            return Err(NftError::Config(format!(
                "rtp_pinhole_secs must be between {MIN_RTP_PINHOLE_SECS} and \
                 {MAX_RTP_PINHOLE_SECS}"
            )));
        }
        if self.nft_timeout_ms == 0 {
            return Err(NftError::Config("nft_timeout_ms must be above 0".into()));
        }
        self.management.check()
    }
}

/// One change to the kernel sets; a batch of them becomes one nft run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    /// Drop everything from `addr` for `timeout_secs` (capped at [`MAX_BAN_SECS`]; 0 means
    /// the ban has already run out, i.e. [`SetOp::Unban`]). Re-banning replaces the timeout.
    Ban {
        /// The source (IPv4-mapped IPv6 counts as IPv4).
        addr: IpAddr,
        /// Seconds from now.
        timeout_secs: u64,
    },
    /// Lift a ban; fine if there is none.
    Unban(IpAddr),
    /// Accept a network before any ban or meter.
    Allow(Cidr),
    /// Remove a network from the allow list (exact match); fine if absent.
    Disallow(Cidr),
    /// Accept UDP from `addr` to this local RTP (or RTCP) port for
    /// [`NftConfig::rtp_pinhole_secs`]: a call's media started, or (sent again) its pinhole
    /// is refreshed for another lifetime. Nothing needs to close it: it expires.
    RtpOpen {
        /// The phone's address (IPv4-mapped IPv6 counts as IPv4).
        addr: IpAddr,
        /// Local UDP port.
        port: u16,
    },
    /// Drop UDP from `addr` to this local port now instead of at its expiry; fine if the
    /// pair is not open (any more).
    RtpClose {
        /// The phone's address (IPv4-mapped IPv6 counts as IPv4).
        addr: IpAddr,
        /// Local UDP port.
        port: u16,
    },
    /// `addr` authenticated: for `timeout_secs` it may hold the authenticated number of
    /// connections (`ConnLimit`); IPv6 counts for its whole /64. Re-sending replaces the
    /// timeout. A no-op without `conn_limit`.
    Authenticated {
        /// The source (IPv4-mapped IPv6 counts as IPv4).
        addr: IpAddr,
        /// Seconds from now (capped like a ban; 0 removes it).
        timeout_secs: u64,
    },
}

/// The kernel's own counters in our table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets dropped because their source is banned.
    pub banned_packets: u64,
    /// Bytes of those packets.
    pub banned_bytes: u64,
    /// Packets dropped by the per-source flood meter on the SIP ports.
    pub meter_drops: u64,
    /// Packets dropped in the RTP range: not from an open (address, local port) pair.
    pub rtp_drops: u64,
    /// Packets of trunk peers dropped by their own meter on the SIP ports.
    #[serde(default)]
    pub trunk_meter_drops: u64,
    /// New TCP connections dropped because their source held its connection cap.
    #[serde(default)]
    pub conn_drops: u64,
    /// TCP packets to a management port from outside the management networks, dropped.
    #[serde(default)]
    pub mgmt_drops: u64,
}

/// Owner of the `inet outpost` table: installs it, applies batches, reads counters, and
/// restores it when something outside changed it.
#[derive(Debug)]
pub struct Enforcer {
    cfg: NftConfig,
    runner: Runner,
    /// The long-lived nft that applies batches (started on the first batch, again after
    /// it died or was fed [`runner::MAX_SESSION_INPUT`]), with its fallback to one-shot runs.
    batches: Batches,
    /// Our copy of the allow list (config allow + `Allow` ops); the kernel's allow sets
    /// are rewritten from it.
    allow: Vec<Cidr>,
    /// RTP (remote address, local port) pairs we gave the kernel and when they expire, so a
    /// restore reopens the live ones and a refresh resets the element's timeout.
    rtp_open: BTreeMap<(IpAddr, u16), Instant>,
    /// Bans we gave the kernel and when they run out. A ban of an address not in here is a
    /// plain `add`; one in here must first reset the element (a transaction that deletes
    /// elements costs the kernel ~10 ms more, so new bans, the common case, avoid it).
    bans: HashMap<IpAddr, Instant>,
    /// Authenticated sources (IPv6: their /64) we gave the kernel and when they run out, so
    /// a restore re-adds them and a refresh resets the element's timeout.
    authed: HashMap<IpAddr, Instant>,
    /// What the table looked like right after we installed it.
    fingerprint: Vec<Value>,
}

impl Enforcer {
    /// Creates or replaces our table (only ours) atomically in one nft run; no bans yet.
    pub fn install(cfg: NftConfig) -> Result<Enforcer, NftError> {
        Enforcer::install_with(cfg, &[], &[])
    }

    /// Creates or replaces our table atomically in one nft run that already holds `bans`
    /// and the authenticated sources `authed` (address, remaining seconds each; 0 =
    /// expired, skipped). A daemon restarting replaces the table it left: the bans and the
    /// office's authenticated sources are in the new table from its first packet, with no
    /// moment where the office meets the stranger's connection cap.
    pub fn install_with(
        cfg: NftConfig,
        bans: &[(IpAddr, u64)],
        authed: &[(IpAddr, u64)],
    ) -> Result<Enforcer, NftError> {
        cfg.validate()?;
        let runner = Runner::new(
            &cfg.nft,
            cfg.netns.as_deref(),
            Duration::from_millis(cfg.nft_timeout_ms),
        );
        let mut e = Enforcer {
            allow: ruleset::normalize(&cfg.allow),
            cfg,
            runner,
            batches: Batches::default(),
            rtp_open: BTreeMap::new(),
            bans: HashMap::new(),
            authed: HashMap::new(),
            fingerprint: Vec::new(),
        };
        if e.cfg.conn_limit.is_some() {
            let now = Instant::now();
            for (addr, secs) in authed {
                if let Some(secs) = ban_secs(*secs) {
                    e.authed.insert(
                        ruleset::conn_key(canonical(*addr)),
                        now + Duration::from_secs(u64::from(secs)),
                    );
                }
            }
        }
        e.restore(bans)?;
        Ok(e)
    }

    /// Applies a batch in one nft run (none if the batch changes nothing). Within a batch
    /// the last op on an address (ban) or an (address, port) pair (RTP) wins. Atomic: on error nothing changed, in the
    /// kernel or in our copies.
    pub fn apply(&mut self, batch: &[SetOp]) -> Result<(), NftError> {
        let mut bans: BTreeMap<IpAddr, Option<u32>> = BTreeMap::new();
        let mut authed: BTreeMap<IpAddr, Option<u32>> = BTreeMap::new();
        let mut pairs: BTreeMap<(IpAddr, u16), bool> = BTreeMap::new();
        let mut allow = self.allow.clone();
        let mut allow_changed = false;
        for op in batch {
            match *op {
                SetOp::Ban { addr, timeout_secs } => {
                    let secs = ban_secs(timeout_secs);
                    bans.insert(canonical(addr), secs);
                }
                SetOp::Unban(addr) => {
                    bans.insert(canonical(addr), None);
                }
                SetOp::Allow(net) => {
                    if !allow.contains(&net) {
                        allow.push(net);
                        allow_changed = true;
                    }
                }
                SetOp::Disallow(net) => {
                    let before = allow.len();
                    allow.retain(|n| *n != net);
                    allow_changed |= allow.len() != before;
                }
                SetOp::RtpOpen { addr, port } => {
                    pairs.insert((canonical(addr), port), true);
                }
                SetOp::RtpClose { addr, port } => {
                    pairs.insert((canonical(addr), port), false);
                }
                SetOp::Authenticated { addr, timeout_secs } => {
                    if self.cfg.conn_limit.is_some() {
                        authed.insert(ruleset::conn_key(canonical(addr)), ban_secs(timeout_secs));
                    }
                }
            }
        }
        let now = Instant::now();
        self.bans.retain(|_, until| *until + EXPIRY_SLACK > now);
        self.authed.retain(|_, until| *until + EXPIRY_SLACK > now);
        self.rtp_open.retain(|_, until| *until + EXPIRY_SLACK > now);
        // A pinhole the kernel may still hold is reset first (refresh or close); a new one is
        // a plain add, the common case at call setup.
        let pinhole = self.cfg.rtp_pinhole_secs;
        let rtp_reset: Vec<(IpAddr, u16)> = pairs
            .iter()
            .filter(|(p, open)| !**open || self.rtp_open.contains_key(*p))
            .map(|(p, _)| *p)
            .collect();
        let rtp_add: Vec<((IpAddr, u16), u32)> = pairs
            .iter()
            .filter(|(_, open)| **open)
            .map(|(p, _)| (*p, pinhole))
            .collect();
        // An element the kernel may still hold keeps its old timeout on `add`: reset it.
        let authed_reset: Vec<IpAddr> = authed
            .iter()
            .filter(|(a, secs)| secs.is_none() || self.authed.contains_key(*a))
            .map(|(a, _)| *a)
            .collect();
        let authed_add: Vec<(IpAddr, u32)> = authed
            .iter()
            .filter_map(|(a, secs)| secs.map(|s| (*a, s)))
            .collect();
        // Unbans always reset (an admin's unban must work even if our copy is wrong);
        // bans reset only addresses the kernel may still hold.
        let reset: Vec<IpAddr> = bans
            .iter()
            .filter(|(a, secs)| secs.is_none() || self.bans.contains_key(*a))
            .map(|(a, _)| *a)
            .collect();
        let add: Vec<(IpAddr, u32)> = bans
            .iter()
            .filter_map(|(a, secs)| secs.map(|s| (*a, s)))
            .collect();
        let table = self.cfg.table.as_str();
        let mut objects = Vec::new();
        if allow_changed {
            objects.extend(ruleset::allow_replace(table, &allow));
        }
        objects.extend(ruleset::ban_commands(table, &reset, &add));
        objects.extend(ruleset::rtp_commands(table, &rtp_reset, &rtp_add));
        objects.extend(ruleset::authed_commands(table, &authed_reset, &authed_add));
        if objects.is_empty() {
            return Ok(());
        }
        self.run_batch(&nftables::schema::Nftables {
            objects: objects.into(),
        })?;
        // Committed: now our copies follow the kernel.
        self.allow = allow;
        for (addr, secs) in bans {
            match secs {
                Some(s) => {
                    self.bans
                        .insert(addr, now + Duration::from_secs(u64::from(s)));
                }
                None => {
                    self.bans.remove(&addr);
                }
            }
        }
        for (pair, open) in pairs {
            if open {
                self.rtp_open
                    .insert(pair, now + Duration::from_secs(u64::from(pinhole)));
            } else {
                self.rtp_open.remove(&pair);
            }
        }
        for (addr, secs) in authed {
            match secs {
                Some(s) => {
                    self.authed
                        .insert(addr, now + Duration::from_secs(u64::from(s)));
                }
                None => {
                    self.authed.remove(&addr);
                }
            }
        }
        Ok(())
    }

    /// The kernel's counters, from `nft -j list table inet <table>`.
    pub fn counters(&self) -> Result<Counters, NftError> {
        let listing = self.list()?;
        let get = |name: &str| {
            ruleset::counter_values(&listing, name).ok_or_else(|| NftError::Output {
                command: "nft -j -t list table".into(),
                reason: format!("counter {name:?} missing from table {}", self.cfg.table),
            })
        };
        let (banned_packets, banned_bytes) = get(ruleset::COUNTER_BANNED)?;
        let (meter_drops, _) = get(ruleset::COUNTER_FLOOD)?;
        let (rtp_drops, _) = get(ruleset::COUNTER_RTP)?;
        let (trunk_meter_drops, _) = get(ruleset::COUNTER_TRUNK)?;
        let (conn_drops, _) = get(ruleset::COUNTER_CONN)?;
        let (mgmt_drops, _) = get(ruleset::COUNTER_MGMT)?;
        Ok(Counters {
            banned_packets,
            banned_bytes,
            meter_drops,
            rtp_drops,
            trunk_meter_drops,
            conn_drops,
            mgmt_drops,
        })
    }

    /// Replaces the trunk peers (`trunk4`, `trunk6`: which traffic the trunks' meter
    /// applies to) in one nft run, flush and refill in one transaction: a trunk's host
    /// resolved to other addresses, or the trunks changed. On error the kernel and our copy
    /// keep the previous peers; a restore re-installs the peers last set.
    pub fn set_trunk_peers(&mut self, peers: &[TrunkPeer]) -> Result<(), NftError> {
        if peers.len() > MAX_TRUNK_PEERS {
            return Err(NftError::Config(format!(
                "{} trunk peer entries (at most {MAX_TRUNK_PEERS})",
                peers.len()
            )));
        }
        if peers == self.cfg.trunk_peers.as_slice() {
            return Ok(());
        }
        let objects = ruleset::trunk_replace(&self.cfg.table, peers);
        self.run_batch(&nftables::schema::Nftables {
            objects: objects.into(),
        })?;
        self.cfg.trunk_peers = peers.to_vec();
        Ok(())
    }

    /// Replaces the management zone's networks and ports in one nft run (flush and refill
    /// of `mgmt4`, `mgmt6`, `mgmt_ports`: one transaction, so no packet sees an empty zone).
    /// Atomic: on error the kernel and our copy keep the previous zone. A restore
    /// re-installs the zone last set.
    pub fn set_management(&mut self, zone: &ManagementZone) -> Result<(), NftError> {
        zone.check()?;
        if *zone == self.cfg.management {
            return Ok(());
        }
        let objects = ruleset::mgmt_replace(&self.cfg.table, zone);
        self.run_batch(&nftables::schema::Nftables {
            objects: objects.into(),
        })?;
        self.cfg.management = zone.clone();
        Ok(())
    }

    /// Whether our table is intact: present, with exactly the chains, sets, counters and
    /// rules we installed (set contents and counter values are not compared).
    pub fn verify(&self) -> Result<bool, NftError> {
        let listing = match self.list() {
            Ok(l) => l,
            // The table is gone (deleted, or the whole ruleset flushed).
            Err(NftError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        Ok(ruleset::fingerprint(&listing).as_ref() == Some(&self.fingerprint))
    }

    /// Reinstalls the whole table in one nft run, with our allow list and open RTP pairs and
    /// the given bans (address, remaining seconds; 0 = expired, skipped). Call it when
    /// [`Enforcer::verify`] says the table was changed from outside, or at boot with the
    /// stored bans.
    pub fn restore(&mut self, bans: &[(IpAddr, u64)]) -> Result<(), NftError> {
        let mut live = BTreeMap::new();
        for (addr, secs) in bans {
            if let Some(secs) = ban_secs(*secs) {
                live.insert(canonical(*addr), secs);
            }
        }
        let live: Vec<(IpAddr, u32)> = live.into_iter().collect();
        self.load(&live)?;
        let now = Instant::now();
        self.bans = live
            .iter()
            .map(|(a, s)| (*a, now + Duration::from_secs(u64::from(*s))))
            .collect();
        Ok(())
    }

    /// Deletes our table (on shutdown, if configured). Fine if it is already gone.
    pub fn remove(mut self) -> Result<(), NftError> {
        self.batches.close();
        self.run_file(&ruleset::delete_table_batch(&self.cfg.table))
    }

    /// nft processes started to apply batches so far (a session each, or a one-shot run each
    /// when sessions cannot run); the table's load and listings are not counted.
    pub fn batch_processes(&self) -> u64 {
        self.batches.processes()
    }

    /// The configuration this enforcer was installed with.
    pub fn config(&self) -> &NftConfig {
        &self.cfg
    }

    fn load(&mut self, bans: &[(IpAddr, u32)]) -> Result<(), NftError> {
        let now = Instant::now();
        self.rtp_open.retain(|_, until| *until > now);
        let pinholes: Vec<((IpAddr, u16), u32)> = self
            .rtp_open
            .iter()
            .map(|(p, until)| {
                let secs = until.saturating_duration_since(now).as_secs().max(1);
                (*p, u32::try_from(secs).unwrap_or(u32::MAX))
            })
            .collect();
        let mut batch = ruleset::table_batch(&self.cfg, &self.allow, &pinholes, bans);
        // The authenticated sources come back with their remaining time.
        self.authed.retain(|_, until| *until > now);
        if self.cfg.conn_limit.is_some() && !self.authed.is_empty() {
            let authed: Vec<(IpAddr, u32)> = self
                .authed
                .iter()
                .map(|(a, until)| {
                    let secs = until.saturating_duration_since(now).as_secs().max(1);
                    (*a, u32::try_from(secs).unwrap_or(u32::MAX))
                })
                .collect();
            batch
                .objects
                .to_mut()
                .extend(ruleset::authed_commands(&self.cfg.table, &[], &authed));
        }
        self.run_file(&batch)?;
        let listing = self.list()?;
        self.fingerprint = ruleset::fingerprint(&listing).ok_or_else(|| NftError::Output {
            command: "nft -j -t list table".into(),
            reason: "not an nftables JSON document".into(),
        })?;
        Ok(())
    }

    /// One `nft -j -f -` run: the table's load (large, rare) and its removal.
    fn run_file(&self, batch: &nftables::schema::Nftables<'_>) -> Result<(), NftError> {
        let payload = serde_json::to_string(batch)
            .map_err(|e| NftError::Config(format!("cannot serialize the batch: {e}")))?;
        self.runner.run(&["-j", "-f", "-"], Some(payload))?;
        Ok(())
    }

    /// Applies a batch through the long-lived session ([`Batches`]: started or replaced as
    /// needed, one-shot runs when sessions cannot run).
    fn run_batch(&mut self, batch: &nftables::schema::Nftables<'_>) -> Result<(), NftError> {
        let payload = serde_json::to_string(batch)
            .map_err(|e| NftError::Config(format!("cannot serialize the batch: {e}")))?;
        let deadline = Duration::from_millis(self.cfg.nft_timeout_ms);
        self.batches.apply(&self.runner, &payload, deadline)
    }

    /// `nft -j -t list table inet <table>`: terse, so set elements are not listed (a table
    /// with 10,000 bans lists as fast as an empty one).
    fn list(&self) -> Result<Value, NftError> {
        let args = ["-j", "-t", "list", "table", "inet", self.cfg.table.as_str()];
        let out = self.runner.run(&args, None)?;
        serde_json::from_str(&out).map_err(|e| NftError::Output {
            command: format!("nft {}", args.join(" ")),
            reason: format!("not JSON: {e}"),
        })
    }
}

/// Whether kernel enforcement can work here: we have CAP_NET_ADMIN (root has it) and nft
/// runs and can read the kernel's ruleset. `Err` says why not, for the daemon to report.
pub fn available() -> Result<(), String> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or("no CapEff line in /proc/self/status")?;
    if cap_eff & (1 << CAP_NET_ADMIN) == 0 {
        return Err("not running as root and without CAP_NET_ADMIN".to_string());
    }
    Runner::new("nft", None, Duration::from_secs(5))
        .run(&["list", "tables"], None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A ban's kernel timeout: capped, and 0 means "already over".
fn ban_secs(timeout_secs: u64) -> Option<u32> {
    if timeout_secs == 0 {
        return None;
    }
    let capped = timeout_secs.min(MAX_BAN_SECS);
    Some(u32::try_from(capped).expect("MAX_BAN_SECS fits in u32"))
}

fn host(ip: IpAddr) -> Cidr {
    let ip = canonical(ip);
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    Cidr::new(ip, bits).expect("a full-length prefix is always valid")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn ban_timeouts_are_capped_and_zero_means_over() {
        assert_eq!(ban_secs(0), None);
        assert_eq!(ban_secs(2), Some(2));
        assert_eq!(ban_secs(u64::MAX), Some(31_536_000));
    }

    #[test]
    fn bad_configs_are_refused_before_nft_runs() {
        let bad_name = NftConfig {
            table: "out post; flush ruleset".into(),
            ..NftConfig::default()
        };
        assert!(matches!(
            Enforcer::install(bad_name),
            Err(NftError::Config(_))
        ));
        let bad_range = NftConfig {
            rtp_range: (20000, 10000),
            ..NftConfig::default()
        };
        assert!(matches!(
            Enforcer::install(bad_range),
            Err(NftError::Config(_))
        ));
        let zero_rate = NftConfig {
            flood_rate: Some(FloodLimit {
                per_second: 0,
                burst: 1,
            }),
            ..NftConfig::default()
        };
        assert!(matches!(
            Enforcer::install(zero_rate),
            Err(NftError::Config(_))
        ));
    }

    #[test]
    fn trunk_peers_become_host_routes_in_canonical_form() {
        let c = host("::ffff:192.0.2.9".parse().unwrap());
        assert_eq!(c.to_string(), "192.0.2.9/32");
        assert_eq!(host("2001:db8::1".parse().unwrap()).prefix(), 128);
    }

    /// A stand-in for nft: `list` prints an empty document, a batch is appended to the
    /// log (one line per run). Returns the config using it and the log's path.
    fn fake_nft(name: &str) -> (NftConfig, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("outpost-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("batches");
        let _ = std::fs::remove_file(&log);
        let prog = dir.join("nft");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\nif [ \"$3\" = list ]; then echo '{{\"nftables\":[]}}'; \
                 elif [ \"$2\" = -i ]; then while IFS= read -r l; do case \"$l\" in \
                 outpost-batch-done*) printf 'Error: syntax error, x\\n%s\\n  ^\\n' \"$l\" >&2;; \
                 *) printf '%s\\n' \"$l\" >> '{log}';; esac; done; \
                 else {{ cat; echo; }} >> '{log}'; fi\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = NftConfig {
            nft: prog.display().to_string(),
            ..NftConfig::default()
        };
        (cfg, log)
    }

    fn batches(log: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The RTP element commands of a batch, as (verb, set, elements as `ADDR . PORT`
    /// with ` TIMEOUT` when there is one).
    fn rtp_cmds(batch: &Value) -> Vec<(String, String, Vec<String>)> {
        batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let (verb, inner) = c.as_object()?.iter().next()?;
                let e = inner.get("element")?;
                let name = e["name"].as_str()?;
                let elems = e["elem"]
                    .as_array()?
                    .iter()
                    .map(|el| {
                        let (pair, timeout) = match el.get("elem") {
                            Some(t) => (&t["val"]["concat"], format!(" {}", t["timeout"])),
                            None => (&el["concat"], String::new()),
                        };
                        format!("{} . {}{timeout}", pair[0].as_str().unwrap(), pair[1])
                    })
                    .collect();
                name.starts_with("rtp_open")
                    .then(|| (verb.clone(), name.to_string(), elems))
            })
            .collect()
    }

    fn cmd(verb: &str, set: &str, elems: &[&str]) -> (String, String, Vec<String>) {
        (
            verb.to_string(),
            set.to_string(),
            elems.iter().map(|e| e.to_string()).collect(),
        )
    }

    #[test]
    fn rtp_pinholes_are_canonical_batched_refreshed_and_kept_across_a_restore() {
        let (mut cfg, log) = fake_nft("rtp-pairs");
        cfg.rtp_pinhole_secs = 90;
        let mut e = Enforcer::install(cfg).unwrap();
        assert_eq!(batches(&log).len(), 1, "install is one run");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let gone: IpAddr = "192.0.2.8".parse().unwrap();
        let open = |addr, port| SetOp::RtpOpen { addr, port };
        e.apply(&[
            open(mapped, 10000),
            open(v6, 10002),
            open(gone, 10000),
            // The last op on a pair wins; a close is safe whether or not the pair is there.
            SetOp::RtpClose {
                addr: gone,
                port: 10000,
            },
        ])
        .unwrap();
        let b = batches(&log);
        assert_eq!(b.len(), 2, "one batch per apply");
        assert_eq!(
            rtp_cmds(&b[1]),
            [
                cmd("add", "rtp_open4", &["192.0.2.8 . 10000 1"]),
                cmd("delete", "rtp_open4", &["192.0.2.8 . 10000"]),
                cmd("add", "rtp_open4", &["192.0.2.7 . 10000 90"]),
                cmd("add", "rtp_open6", &["2001:db8::7 . 10002 90"]),
            ]
        );
        assert_eq!(
            e.rtp_open.keys().copied().collect::<Vec<_>>(),
            [(v4, 10000), (v6, 10002)]
        );
        // Opening an open pair again refreshes it: its old timeout is reset.
        e.apply(&[open(v4, 10000)]).unwrap();
        assert_eq!(
            rtp_cmds(&batches(&log)[2]),
            [
                cmd("add", "rtp_open4", &["192.0.2.7 . 10000 1"]),
                cmd("delete", "rtp_open4", &["192.0.2.7 . 10000"]),
                cmd("add", "rtp_open4", &["192.0.2.7 . 10000 90"]),
            ]
        );
        // An empty batch runs nothing.
        e.apply(&[]).unwrap();
        assert_eq!(batches(&log).len(), 3);
        // A restore reinstalls the open pairs with their remaining time, and only them.
        e.restore(&[]).unwrap();
        let b = batches(&log);
        assert_eq!(b.len(), 4);
        let restored = rtp_cmds(&b[3]);
        let whole = |r: &(String, String, Vec<String>)| {
            let (pair, secs) = r.2[0].rsplit_once(' ').unwrap();
            let secs: u32 = secs.parse().unwrap();
            assert!((88..=90).contains(&secs), "{restored:?}");
            (r.0.clone(), r.1.clone(), pair.to_string(), r.2.len())
        };
        assert_eq!(
            restored.iter().map(whole).collect::<Vec<_>>(),
            [
                (
                    "add".into(),
                    "rtp_open4".into(),
                    "192.0.2.7 . 10000".into(),
                    1
                ),
                (
                    "add".into(),
                    "rtp_open6".into(),
                    "2001:db8::7 . 10002".into(),
                    1
                ),
            ]
        );
        // Closing through the mapped form closes the IPv4 pair.
        e.apply(&[SetOp::RtpClose {
            addr: mapped,
            port: 10000,
        }])
        .unwrap();
        assert_eq!(
            e.rtp_open.keys().copied().collect::<Vec<_>>(),
            [(v6, 10002)]
        );
        // One nft process applied every batch.
        assert_eq!(e.batch_processes(), 1);
        let _ = std::fs::remove_dir_all(log.parent().unwrap());
    }

    #[test]
    fn an_nft_without_interactive_mode_still_gets_every_batch_one_run_each() {
        let (mut cfg, log) = fake_nft("no-cli");
        // This stand-in exits at once in `-i` mode, like an nft built without its CLI.
        let prog = std::path::Path::new(&cfg.nft).with_file_name("nft-no-cli");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\nif [ \"$2\" = -i ]; then echo 'Error: no CLI' >&2; exit 1; fi\nexec '{}' \"$@\"\n",
                cfg.nft
            ),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        cfg.nft = prog.display().to_string();
        let mut e = Enforcer::install(cfg).unwrap();
        for port in 0..5u16 {
            e.apply(&[SetOp::RtpOpen {
                addr: "192.0.2.7".parse().unwrap(),
                port: 10_000 + 2 * port,
            }])
            .unwrap();
        }
        assert_eq!(batches(&log).len(), 6, "install and five batches");
        // Three sessions tried (each batch then ran once), then one run per batch.
        assert_eq!(e.batch_processes(), 3 * 2 + 2);
        let _ = std::fs::remove_dir_all(log.parent().unwrap());
    }

    #[test]
    fn config_reads_from_toml_with_defaults() {
        let cfg: NftConfig = toml::from_str(
            "allow = [\"10.0.0.0/8\"]\nrtp_range = [16384, 32767]\n[flood_rate]\nper_second = 100\nburst = 300\n",
        )
        .unwrap();
        assert_eq!(cfg.table, "outpost");
        assert_eq!(cfg.rtp_range, (16384, 32767));
        assert_eq!(
            cfg.flood_rate,
            Some(FloodLimit {
                per_second: 100,
                burst: 300
            })
        );
        assert!(toml::from_str::<NftConfig>("tabel = \"x\"").is_err());
    }
}
