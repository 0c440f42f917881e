//! Where a trunk's `host` is: RFC 3263 §4 resolution with hickory-resolver on the daemon's
//! tokio runtime, kept fresh in the background.
//!
//! The decision is pure ([`lookup_for`], [`naptr_choice`], [`order_srv`]): an IP literal is
//! used as it is; a name with an explicit port is looked up as A/AAAA only (§4.2); a name
//! without a port is looked up as NAPTR, whose record for the trunk's (configured)
//! transport names the SRV name, else the SRV name is `_sip._udp` / `_sip._tcp` /
//! `_sips._tcp` of the name; SRV records are ordered by priority with weighted random
//! selection among equal priorities (RFC 2782), then each target's A/AAAA; no SRV records:
//! A/AAAA of the name on the transport's default port. The result is the trunk's ordered
//! address list (at most [`MAX_TARGETS`]), which the call core fails over along.
//!
//! [`TrunkDns`] runs one task per distinct (host, transport): it resolves, hands the answer
//! to the daemon's loop through a bounded channel, and sleeps for the answer's TTL clamped
//! to `[dns] min_ttl_secs`..`max_ttl_secs`; a failed lookup is retried after
//! [`RETRY_SECS`] and never replaces the last good answer. Nothing here blocks the loop:
//! the loop only drains the channel ([`TrunkDns::poll`]).
//!
//! The name servers are `[dns] servers`, else those of `/etc/resolv.conf` (written by the
//! image's DHCP client), read again for every lookup so a new lease's servers are used.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use pbx_core::sip::Transport;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most addresses a trunk keeps (the call core's bound).
pub const MAX_TARGETS: usize = pbx_core::trunk::MAX_TARGETS;
/// Most `[dns] servers`.
pub const MAX_SERVERS: usize = 4;
/// A name that did not resolve (or whose lookup failed) is tried again this often.
pub const RETRY_SECS: u64 = 30;
/// Most NAPTR or SRV records of one answer looked at.
const MAX_RECORDS: usize = 32;
/// Most SRV targets whose addresses are looked up.
const MAX_SRV_TARGETS: usize = 8;
/// Each query's timeout and attempts (per server): a lookup of a dead server's name gives
/// up within seconds, and the trunk keeps its last good addresses meanwhile.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;
/// Answers waiting for the loop; a task waits when it is full (there is one per trunk
/// host, so this is never reached in practice).
const ANSWER_QUEUE: usize = 64;

/// UDP ports no query takes as its source port. hickory picks each query's source port at
/// random from 1024-65535 (spoofing resistance); one inside the relay's range, open while
/// the relay binds every port of it at start, made the relay fail to start (and the daemon
/// fall back to the built-in range) about one start in five on a machine with a 12,000-port
/// range. Set by the daemon from `[media]` before its first lookup.
static AVOID_UDP_PORTS: RwLock<Option<Arc<HashSet<u16>>>> = RwLock::new(None);

/// Keeps every lookup's UDP source port out of `ranges` (the relay's port ranges).
pub fn avoid_udp_ports(ranges: &[RangeInclusive<u16>]) {
    let ports: HashSet<u16> = ranges.iter().flat_map(|r| r.clone()).collect();
    if let Ok(mut avoid) = AVOID_UDP_PORTS.write() {
        *avoid = Some(Arc::new(ports));
    }
}

/// The ports of [`avoid_udp_ports`], for a resolver's options.
fn avoided_udp_ports() -> Arc<HashSet<u16>> {
    AVOID_UDP_PORTS
        .read()
        .ok()
        .and_then(|a| a.clone())
        .unwrap_or_default()
}

/// `[dns]` section: how trunk hosts are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`"192.0.2.53"` or `"192.0.2.53:5353"`, at most [`MAX_SERVERS`]);
    /// empty: those of `/etc/resolv.conf`.
    pub servers: Vec<String>,
    /// Shortest time an answer is kept before it is looked up again, whatever its TTL.
    pub min_ttl_secs: u64,
    /// Longest time an answer is kept before it is looked up again, whatever its TTL.
    pub max_ttl_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            min_ttl_secs: 30,
            max_ttl_secs: 3600,
        }
    }
}

impl DnsConfig {
    /// Why the section cannot be used, naming the offending key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.servers.len() > MAX_SERVERS {
            return Err(("dns.servers", format!("at most {MAX_SERVERS} servers")));
        }
        for s in &self.servers {
            parse_server(s).ok_or_else(|| {
                (
                    "dns.servers",
                    format!("{s:?} is not an address or address:port"),
                )
            })?;
        }
        if !(1..=3600).contains(&self.min_ttl_secs) {
            return Err(("dns.min_ttl_secs", "must be between 1 and 3600".to_owned()));
        }
        if !(self.min_ttl_secs..=86_400).contains(&self.max_ttl_secs) {
            return Err((
                "dns.max_ttl_secs",
                "must be between min_ttl_secs and 86400".to_owned(),
            ));
        }
        Ok(())
    }

    /// The configured servers (those that parse; `check` refused the others).
    pub fn server_addrs(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter_map(|s| parse_server(s))
            .take(MAX_SERVERS)
            .collect()
    }

    /// How long to keep an answer with `ttl` seconds to live.
    pub fn refresh_after(&self, ttl: u32) -> Duration {
        let lo = self.min_ttl_secs.max(1);
        Duration::from_secs(u64::from(ttl).clamp(lo, self.max_ttl_secs.max(lo)))
    }
}

/// `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or `[2001:db8::53]:5353`.
fn parse_server(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip: IpAddr = s.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, 53))
}

/// Why a host did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// No name server to ask (no `[dns] servers` and an unreadable `/etc/resolv.conf`).
    #[error("no name server: {0}")]
    NoServers(String),
    /// The host is not a usable domain name.
    #[error("{0:?} is not a domain name")]
    BadName(String),
    /// The name exists nowhere the records lead (no SRV target, no A/AAAA).
    #[error("{0} has no address")]
    NoAddress(String),
    /// The query failed (timeout, refused, server failure).
    #[error("cannot resolve {name}: {reason}")]
    Failed {
        /// The name asked for.
        name: String,
        /// The resolver's reason.
        reason: String,
    },
}

/// The addresses of `name` (A and AAAA) from the name servers of `cfg`, at most
/// [`MAX_TARGETS`]; for hosts that are not SIP trunks (the NTP servers of `[time]`).
pub async fn lookup_ips(cfg: &DnsConfig, name: &str) -> Result<Vec<IpAddr>, DnsError> {
    let resolver = Resolver::new(cfg)?;
    let (ips, _ttl) = resolver.addresses(name).await?;
    if ips.is_empty() {
        return Err(DnsError::NoAddress(name.to_owned()));
    }
    Ok(ips)
}

/// What RFC 3263 §4 says to look up for a trunk's `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An IP address (with or without port): no lookup.
    Literal(SocketAddr),
    /// A name with an explicit port: A/AAAA only (§4.2).
    Address {
        /// The name.
        name: String,
        /// The port given.
        port: u16,
    },
    /// A name without a port: NAPTR, SRV, then A/AAAA (§4.1, §4.2).
    Service {
        /// The name.
        name: String,
    },
}

/// The default port of `transport` (5061 for TLS, else 5060).
pub fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => 5061,
        Transport::Udp | Transport::Tcp => 5060,
    }
}

/// What to look up for `host` over `transport` (pure).
pub fn lookup_for(host: &str, transport: Transport) -> Lookup {
    let host = host.trim();
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Lookup::Literal(addr);
    }
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Lookup::Literal(SocketAddr::new(ip, default_port(transport)));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse::<u16>() {
            Ok(port) => Lookup::Address {
                name: name.to_ascii_lowercase(),
                port,
            },
            Err(_) => Lookup::Service {
                name: host.to_ascii_lowercase(),
            },
        },
        _ => Lookup::Service {
            name: host.to_ascii_lowercase(),
        },
    }
}

/// The SRV prefix for `transport` (RFC 3263 §4.1: `_sips._tcp` for TLS).
pub fn srv_prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
    }
}

/// The NAPTR service field for `transport` (RFC 3263 §4.1).
pub fn naptr_service(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "SIP+D2U",
        Transport::Tcp => "SIP+D2T",
        Transport::Tls => "SIPS+D2T",
    }
}

/// One NAPTR record, as far as SIP uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    /// Lower first.
    pub order: u16,
    /// Lower first among equal order.
    pub preference: u16,
    /// `s`: the replacement is an SRV name.
    pub flags: String,
    /// `SIP+D2U`, `SIPS+D2T`, ...
    pub services: String,
    /// The SRV name.
    pub replacement: String,
}

/// The SRV name the NAPTR records give for `transport` (§4.1): the first record by order,
/// then preference, whose flags are `s`, whose service is the transport's and whose
/// replacement is a name. `None`: use the default SRV name.
pub fn naptr_choice(records: &[Naptr], transport: Transport) -> Option<String> {
    let want = naptr_service(transport);
    let mut usable: Vec<&Naptr> = records
        .iter()
        .take(MAX_RECORDS)
        .filter(|r| {
            r.flags.eq_ignore_ascii_case("s")
                && r.services.eq_ignore_ascii_case(want)
                && !r.replacement.trim_end_matches('.').is_empty()
        })
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    usable
        .first()
        .map(|r| r.replacement.trim_end_matches('.').to_ascii_lowercase())
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower first.
    pub priority: u16,
    /// Share of the traffic among equal priority.
    pub weight: u16,
    /// Port of the service on the target.
    pub port: u16,
    /// The target host (without the final dot).
    pub target: String,
}

/// Orders SRV records as RFC 2782 says: ascending priority; within one priority a weighted
/// random order (records of weight 0 first in the running sum, so they are picked rarely
/// but not never). A single record with target `.` means "no such service": no records.
pub fn order_srv(mut records: Vec<Srv>, rng: &mut impl Rng) -> Vec<Srv> {
    records.truncate(MAX_RECORDS);
    if records.len() == 1 && records[0].target.trim_end_matches('.').is_empty() {
        return Vec::new();
    }
    records.retain(|r| !r.target.trim_end_matches('.').is_empty());
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let end = rest
            .iter()
            .position(|r| r.priority != first.priority)
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(end);
        let mut group: Vec<Srv> = group.to_vec();
        // Weight 0 first, as the RFC's running-sum selection requires.
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.gen_range(0..=total);
            let mut sum = 0u32;
            let idx = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(idx));
        }
        rest = tail;
    }
    out
}

/// A host's addresses and how long they may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// In the order to try them, at most [`MAX_TARGETS`].
    pub targets: Vec<SocketAddr>,
    /// Seconds the answer is valid (the smallest TTL of the records used); `None` for an
    /// IP literal, which never changes.
    pub ttl: Option<u32>,
}

/// The resolver for one round of lookups.
struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver asking `cfg.servers`, else the servers of `/etc/resolv.conf` (read now).
    fn new(cfg: &DnsConfig) -> Result<Resolver, DnsError> {
        let servers = cfg.server_addrs();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::NoServers(e.to_string()))?
        } else {
            let ns = servers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(ns),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_ATTEMPTS;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Answers are kept by TrunkDns for their TTL; the resolver's own cache would only
        // hide a change from the next round.
        opts.cache_size = 0;
        opts.avoid_local_udp_ports = avoided_udp_ports();
        let inner = builder
            .build()
            .map_err(|e| DnsError::NoServers(e.to_string()))?;
        Ok(Resolver { inner })
    }

    /// RFC 3263 §4 for `host` over `transport`.
    async fn resolve(&self, host: &str, transport: Transport) -> Result<Resolved, DnsError> {
        match lookup_for(host, transport) {
            Lookup::Literal(addr) => Ok(Resolved {
                targets: vec![addr],
                ttl: None,
            }),
            Lookup::Address { name, port } => {
                let (ips, ttl) = self.addresses(&name).await?;
                if ips.is_empty() {
                    return Err(DnsError::NoAddress(name));
                }
                Ok(Resolved {
                    targets: ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .take(MAX_TARGETS)
                        .collect(),
                    ttl: Some(ttl),
                })
            }
            Lookup::Service { name } => self.service(&name, transport).await,
        }
    }

    async fn service(&self, name: &str, transport: Transport) -> Result<Resolved, DnsError> {
        check_name(name)?;
        let mut ttl = u32::MAX;
        // NAPTR: a failure here is no reason to give up; the default SRV name follows.
        let naptrs = match self.inner.lookup(fqdn(name), RecordType::NAPTR).await {
            Ok(l) => {
                let mut v = Vec::new();
                for r in l.answers().iter().take(MAX_RECORDS) {
                    if let RData::NAPTR(n) = &r.data {
                        ttl = ttl.min(r.ttl);
                        v.push(Naptr {
                            order: n.order,
                            preference: n.preference,
                            flags: String::from_utf8_lossy(&n.flags).into_owned(),
                            services: String::from_utf8_lossy(&n.services).into_owned(),
                            replacement: n.replacement.to_ascii(),
                        });
                    }
                }
                v
            }
            Err(e) => {
                tracing::debug!(name, err = %e, "no NAPTR records");
                Vec::new()
            }
        };
        let srv_name = naptr_choice(&naptrs, transport)
            .unwrap_or_else(|| format!("{}.{name}", srv_prefix(transport)));
        let srvs = match self.inner.lookup(fqdn(&srv_name), RecordType::SRV).await {
            Ok(l) => l
                .answers()
                .iter()
                .take(MAX_RECORDS)
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => {
                        ttl = ttl.min(r.ttl);
                        Some(Srv {
                            priority: s.priority,
                            weight: s.weight,
                            port: s.port,
                            target: s.target.to_ascii().trim_end_matches('.').to_owned(),
                        })
                    }
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(DnsError::Failed {
                    name: srv_name,
                    reason: e.to_string(),
                })
            }
        };
        if srvs.is_empty() {
            // §4.2: no SRV records: the name's own addresses on the default port.
            let (ips, a_ttl) = self.addresses(name).await?;
            if ips.is_empty() {
                return Err(DnsError::NoAddress(name.to_owned()));
            }
            let port = default_port(transport);
            return Ok(Resolved {
                targets: ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .take(MAX_TARGETS)
                    .collect(),
                ttl: Some(a_ttl.min(ttl)),
            });
        }
        let ordered = order_srv(srvs, &mut rand::thread_rng());
        let mut targets: Vec<SocketAddr> = Vec::new();
        let mut last_err = None;
        for srv in ordered.iter().take(MAX_SRV_TARGETS) {
            if targets.len() >= MAX_TARGETS {
                break;
            }
            match self.addresses(&srv.target).await {
                Ok((ips, a_ttl)) => {
                    ttl = ttl.min(a_ttl);
                    for ip in ips {
                        let a = SocketAddr::new(ip, srv.port);
                        if !targets.contains(&a) && targets.len() < MAX_TARGETS {
                            targets.push(a);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(target = %srv.target, err = %e, "SRV target does not resolve");
                    last_err = Some(e);
                }
            }
        }
        if targets.is_empty() {
            return Err(last_err.unwrap_or(DnsError::NoAddress(srv_name)));
        }
        Ok(Resolved {
            targets,
            ttl: Some(ttl),
        })
    }

    /// A/AAAA of `name` (IPv4 first) and the smallest TTL; no records is an empty list.
    async fn addresses(&self, name: &str) -> Result<(Vec<IpAddr>, u32), DnsError> {
        check_name(name)?;
        match self.inner.lookup_ip(fqdn(name)).await {
            Ok(l) => {
                let ttl = l
                    .as_lookup()
                    .answers()
                    .iter()
                    .map(|r| r.ttl)
                    .min()
                    .unwrap_or(0);
                Ok((l.iter().take(MAX_TARGETS).collect(), ttl))
            }
            Err(e) if e.is_no_records_found() => Ok((Vec::new(), 0)),
            Err(e) => Err(DnsError::Failed {
                name: name.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Refuses what cannot be a domain name before it reaches the resolver.
fn check_name(name: &str) -> Result<(), DnsError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(DnsError::BadName(name.chars().take(64).collect()))
    }
}

/// A name with dots is asked as it is (fully qualified); a single label goes through the
/// search domains of resolv.conf.
fn fqdn(name: &str) -> String {
    if name.contains('.') && !name.ends_with('.') {
        format!("{name}.")
    } else {
        name.to_owned()
    }
}

/// A trunk host as resolution sees it.
pub type HostKey = (String, Transport);

/// The outcome of one lookup, for the daemon's loop.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The host and transport looked up.
    pub key: HostKey,
    /// The addresses, or why there are none this time.
    pub outcome: Result<Resolved, DnsError>,
}

/// Trunk hosts kept resolved in the background; see the module docs.
#[derive(Debug)]
pub struct TrunkDns {
    cfg: DnsConfig,
    tx: mpsc::Sender<Answer>,
    rx: mpsc::Receiver<Answer>,
    tasks: HashMap<HostKey, JoinHandle<()>>,
    /// The last good answer per host (kept across failed lookups and reconfiguration).
    good: HashMap<HostKey, Vec<SocketAddr>>,
    /// Hosts whose latest lookup failed (to log a failure once, not every retry).
    failing: HashMap<HostKey, String>,
}

impl TrunkDns {
    /// Starts the lookups of `hosts` (IP literals need none and are known at once). Must be
    /// called on the tokio runtime.
    pub fn start(cfg: &DnsConfig, hosts: &[HostKey]) -> TrunkDns {
        let (tx, rx) = mpsc::channel(ANSWER_QUEUE);
        let mut dns = TrunkDns {
            cfg: cfg.clone(),
            tx,
            rx,
            tasks: HashMap::new(),
            good: HashMap::new(),
            failing: HashMap::new(),
        };
        dns.set_hosts(cfg, hosts);
        dns
    }

    /// The hosts (and `[dns]`) of a new configuration: lookups of hosts no longer used
    /// stop, new ones start now; with a new `[dns]` every lookup starts again (the last
    /// good answers stay until replaced).
    pub fn set_hosts(&mut self, cfg: &DnsConfig, hosts: &[HostKey]) {
        if *cfg != self.cfg {
            self.cfg = cfg.clone();
            for (_, task) in self.tasks.drain() {
                task.abort();
            }
        }
        self.tasks.retain(|k, task| {
            let keep = hosts.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        self.good.retain(|k, _| hosts.contains(k));
        self.failing.retain(|k, _| hosts.contains(k));
        for key in hosts {
            if let Lookup::Literal(a) = lookup_for(&key.0, key.1) {
                self.good.insert(key.clone(), vec![a]);
                continue;
            }
            if self.tasks.contains_key(key) {
                continue;
            }
            let task = tokio::spawn(keep_resolved(
                self.cfg.clone(),
                key.clone(),
                self.tx.clone(),
            ));
            self.tasks.insert(key.clone(), task);
        }
    }

    /// Waits (at most `limit`) until every host has had its first answer, good or bad, and
    /// takes them in: at start, so trunks and the firewall begin with their addresses.
    pub async fn first_answers(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending: Vec<HostKey> = self.tasks.keys().cloned().collect();
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(answer)) => {
                    pending.retain(|k| *k != answer.key);
                    self.take(answer);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Answers that arrived since the last call, taken in: the hosts whose addresses
    /// changed, with their new addresses. Never waits.
    pub fn poll(&mut self) -> Vec<(HostKey, Vec<SocketAddr>)> {
        let mut changed = Vec::new();
        while let Ok(answer) = self.rx.try_recv() {
            let key = answer.key.clone();
            if let Some(targets) = self.take(answer) {
                changed.retain(|(k, _)| *k != key);
                changed.push((key, targets));
            }
        }
        changed
    }

    /// The last good addresses of `host` over `transport` (empty: never resolved).
    pub fn targets(&self, host: &str, transport: Transport) -> Vec<SocketAddr> {
        self.good
            .get(&(host.to_owned(), transport))
            .cloned()
            .unwrap_or_default()
    }

    /// Why `host` has no addresses (its latest lookup's error), if it has none.
    pub fn failure(&self, host: &str, transport: Transport) -> Option<String> {
        let key = (host.to_owned(), transport);
        if self.good.contains_key(&key) {
            return None;
        }
        self.failing.get(&key).cloned()
    }

    /// Takes one answer in; the new addresses when they differ from the last good ones.
    fn take(&mut self, answer: Answer) -> Option<Vec<SocketAddr>> {
        if !self.tasks.contains_key(&answer.key) {
            return None; // a host no longer configured
        }
        match answer.outcome {
            Ok(r) => {
                if self.failing.remove(&answer.key).is_some() {
                    tracing::info!(host = %answer.key.0, "trunk host resolves again");
                }
                let old = self.good.insert(answer.key.clone(), r.targets.clone());
                if old.as_ref() == Some(&r.targets) {
                    return None;
                }
                let list: Vec<String> = r.targets.iter().map(ToString::to_string).collect();
                tracing::info!(host = %answer.key.0, transport = answer.key.1.as_str(), targets = %list.join(", "), ttl = ?r.ttl, "trunk host resolved");
                Some(r.targets)
            }
            Err(e) => {
                let text = e.to_string();
                if self.failing.get(&answer.key) != Some(&text) {
                    let kept = self.good.get(&answer.key).map_or(0, Vec::len);
                    tracing::warn!(host = %answer.key.0, err = %text, kept, "trunk host lookup failed; the last good addresses stay in use");
                }
                self.failing.insert(answer.key, text);
                None
            }
        }
    }
}

impl Drop for TrunkDns {
    fn drop(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
    }
}

/// One host's lookups, forever: resolve, report, sleep for the TTL (bounded), or
/// [`RETRY_SECS`] after a failure.
async fn keep_resolved(cfg: DnsConfig, key: HostKey, tx: mpsc::Sender<Answer>) {
    loop {
        let outcome = match Resolver::new(&cfg) {
            Ok(r) => r.resolve(&key.0, key.1).await,
            Err(e) => Err(e),
        };
        let wait = match &outcome {
            Ok(Resolved { ttl: Some(ttl), .. }) => cfg.refresh_after(*ttl),
            Ok(Resolved { ttl: None, .. }) => return,
            Err(_) => Duration::from_secs(RETRY_SECS),
        };
        let answer = Answer {
            key: key.clone(),
            outcome,
        };
        if tx.send(answer).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.to_owned(),
        }
    }

    #[test]
    fn rfc3263_decides_what_to_look_up() {
        use Transport::*;
        let lit = |s: &str| Lookup::Literal(s.parse().expect("addr"));
        assert_eq!(lookup_for("192.0.2.10", Udp), lit("192.0.2.10:5060"));
        assert_eq!(lookup_for("192.0.2.10", Tls), lit("192.0.2.10:5061"));
        assert_eq!(lookup_for("192.0.2.10:5070", Tls), lit("192.0.2.10:5070"));
        assert_eq!(lookup_for("2001:db8::1", Udp), lit("[2001:db8::1]:5060"));
        assert_eq!(lookup_for("[2001:db8::1]", Udp), lit("[2001:db8::1]:5060"));
        assert_eq!(
            lookup_for("[2001:db8::1]:5080", Udp),
            lit("[2001:db8::1]:5080")
        );
        assert_eq!(
            lookup_for("SIP.Provider.example:5080", Udp),
            Lookup::Address {
                name: "sip.provider.example".into(),
                port: 5080
            }
        );
        assert_eq!(
            lookup_for("provider.example", Tcp),
            Lookup::Service {
                name: "provider.example".into()
            }
        );
        // A port that is not one is part of nothing: the whole thing is asked (and fails).
        assert_eq!(
            lookup_for("provider.example:http", Udp),
            Lookup::Service {
                name: "provider.example:http".into()
            }
        );
        assert_eq!(srv_prefix(Udp), "_sip._udp");
        assert_eq!(srv_prefix(Tcp), "_sip._tcp");
        assert_eq!(srv_prefix(Tls), "_sips._tcp");
    }

    #[test]
    fn naptr_picks_the_transports_record_by_order_then_preference() {
        let n = |order, preference, flags: &str, services: &str, replacement: &str| Naptr {
            order,
            preference,
            flags: flags.into(),
            services: services.into(),
            replacement: replacement.into(),
        };
        let records = vec![
            n(20, 10, "s", "SIP+D2U", "_sip._udp.late.example."),
            n(10, 50, "s", "SIP+D2U", "_sip._udp.b.example."),
            n(10, 20, "s", "SIP+D2U", "_sip._udp.a.example."),
            n(5, 10, "s", "SIPS+D2T", "_sips._tcp.a.example."),
            n(1, 10, "u", "SIP+D2U", "."),
            n(1, 10, "s", "SIP+D2U", "."),
        ];
        assert_eq!(
            naptr_choice(&records, Transport::Udp).as_deref(),
            Some("_sip._udp.a.example")
        );
        assert_eq!(
            naptr_choice(&records, Transport::Tls).as_deref(),
            Some("_sips._tcp.a.example")
        );
        assert_eq!(naptr_choice(&records, Transport::Tcp), None);
        let lower = vec![n(1, 1, "S", "sip+d2t", "_sip._tcp.X.example")];
        assert_eq!(
            naptr_choice(&lower, Transport::Tcp).as_deref(),
            Some("_sip._tcp.x.example")
        );
    }

    #[test]
    fn srv_orders_by_priority_first() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let out = order_srv(
                vec![
                    srv(20, 100, "c"),
                    srv(10, 1, "a"),
                    srv(30, 0, "d"),
                    srv(10, 99, "b"),
                ],
                &mut rng,
            );
            let prios: Vec<u16> = out.iter().map(|s| s.priority).collect();
            assert_eq!(prios, vec![10, 10, 20, 30]);
        }
    }

    #[test]
    fn srv_weights_share_the_first_place() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut first_heavy = 0;
        let mut first_zero = 0;
        const N: u32 = 10_000;
        for _ in 0..N {
            let out = order_srv(
                vec![
                    srv(10, 0, "zero"),
                    srv(10, 10, "light"),
                    srv(10, 90, "heavy"),
                ],
                &mut rng,
            );
            assert_eq!(out.len(), 3);
            match out[0].target.as_str() {
                "heavy" => first_heavy += 1,
                "zero" => first_zero += 1,
                _ => {}
            }
        }
        // 90 of 100 (+1 for the running sum's inclusive draw): about 89%.
        let share = f64::from(first_heavy) / f64::from(N);
        assert!((0.86..0.92).contains(&share), "heavy first {share}");
        // Weight 0 is rare but possible (1 in 101 draws).
        assert!(
            first_zero > 0 && first_zero < 300,
            "zero first {first_zero}"
        );
    }

    #[test]
    fn srv_dot_means_no_service_and_records_are_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!(order_srv(vec![srv(0, 0, ".")], &mut rng).is_empty());
        let many: Vec<Srv> = (0..100).map(|i| srv(i, 1, "t")).collect();
        assert_eq!(order_srv(many, &mut rng).len(), MAX_RECORDS);
    }

    #[test]
    fn config_bounds_and_refresh_clamp() {
        let d = DnsConfig::default();
        assert!(d.check().is_ok());
        assert_eq!(d.refresh_after(0), Duration::from_secs(30));
        assert_eq!(d.refresh_after(300), Duration::from_secs(300));
        assert_eq!(d.refresh_after(u32::MAX), Duration::from_secs(3600));
        let c = DnsConfig {
            servers: vec!["192.0.2.53".into(), "[2001:db8::53]:5353".into()],
            ..DnsConfig::default()
        };
        assert!(c.check().is_ok());
        assert_eq!(
            c.server_addrs(),
            vec![
                "192.0.2.53:53".parse().expect("addr"),
                "[2001:db8::53]:5353".parse().expect("addr")
            ]
        );
        let bad = |c: DnsConfig| c.check().expect_err("refused").0;
        assert_eq!(
            bad(DnsConfig {
                servers: vec!["ns.example".into()],
                ..DnsConfig::default()
            }),
            "dns.servers"
        );
        assert_eq!(
            bad(DnsConfig {
                servers: vec!["192.0.2.1".into(); 5],
                ..DnsConfig::default()
            }),
            "dns.servers"
        );
        assert_eq!(
            bad(DnsConfig {
                min_ttl_secs: 0,
                ..DnsConfig::default()
            }),
            "dns.min_ttl_secs"
        );
        assert_eq!(
            bad(DnsConfig {
                min_ttl_secs: 60,
                max_ttl_secs: 30,
                ..DnsConfig::default()
            }),
            "dns.max_ttl_secs"
        );
    }

    #[test]
    fn hostile_names_never_reach_the_resolver() {
        assert!(check_name("sip.provider.example").is_ok());
        assert!(check_name("_sip._udp.provider.example").is_ok());
        for bad in [
            "",
            "a..b",
            "a b",
            "x\u{0}y",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(fqdn("a.example"), "a.example.");
        assert_eq!(fqdn("pbx"), "pbx");
    }

    #[tokio::test]
    async fn lookups_never_take_a_source_port_of_the_relay() {
        avoid_udp_ports(&[16_000..=16_003, 10_000..=10_001]);
        let cfg = DnsConfig {
            servers: vec!["127.0.0.1:5353".to_owned()],
            ..DnsConfig::default()
        };
        let resolver = Resolver::new(&cfg).expect("resolver");
        let avoided = &resolver.inner.options().avoid_local_udp_ports;
        for port in [16_000, 16_001, 16_002, 16_003, 10_000, 10_001] {
            assert!(
                avoided.contains(&port),
                "{port} may be a query's source port"
            );
        }
        assert_eq!(avoided.len(), 6);
    }
}
