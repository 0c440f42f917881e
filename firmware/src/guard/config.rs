//! The firewall's configuration: the `[firewall]` section and its tables (the detector's
//! rules, feeds, the toll-fraud policy, connection caps), the `[management]` section (who
//! may reach the box's management listeners), and [`Surroundings`], what the
//! firewall needs from the other sections. From both it derives the detector's, the
//! policy's and the kernel table's settings. The daemon's `Config` aggregates and
//! re-exports these types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firewall::detect::DetectConfig;
use firewall::net::{canonical, Cidr};
use firewall::nft::{
    ConnLimit, ConnLimitBy, FloodLimit, ManagementZone, NftConfig, TrunkPeer, TrunkProto,
    MAX_BAN_SECS, MAX_MGMT_NETWORKS, MAX_TRUNK_PEERS,
};
use firewall::policy::PolicyConfig;
use pbx_core::sip::Transport;
use serde::{Deserialize, Serialize};

use crate::driver::conn::ConnLimits;

/// The office side, the default management networks: RFC 1918, IPv4 link-local and
/// loopback, IPv6 unique-local (RFC 4193), link-local and loopback.
pub const DEFAULT_MANAGEMENT_NETWORKS: [&str; 8] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// `[management]` section: the networks SSH, the metrics endpoint and any other admin
/// listener may be reached from. The kernel drops TCP to those listeners' ports from
/// anywhere else (with kernel enforcement); SIP ports are never affected. Applied live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Networks (IPv4 and IPv6, `ADDR/PREFIX` or a single address), at most 64; default
    /// [`DEFAULT_MANAGEMENT_NETWORKS`]. Loopback reaches the listeners whatever this says.
    pub networks: Vec<Cidr>,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            networks: DEFAULT_MANAGEMENT_NETWORKS
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        }
    }
}

impl ManagementConfig {
    /// Checks the keys; the error is (dotted key, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let n = &self.networks;
        if n.is_empty() {
            return Err((
                "management.networks",
                "must list at least one network (with none, SSH and the metrics endpoint \
                 could be reached from the box itself only; to turn SSH off use \
                 ssh.enabled = false)"
                    .to_owned(),
            ));
        }
        if n.len() > MAX_MGMT_NETWORKS {
            return Err((
                "management.networks",
                format!("{} networks listed; at most {MAX_MGMT_NETWORKS}", n.len()),
            ));
        }
        if let Some(dup) = n
            .iter()
            .enumerate()
            .find_map(|(i, c)| n[..i].contains(c).then_some(c))
        {
            return Err(("management.networks", format!("{dup} is listed twice")));
        }
        Ok(())
    }
}

/// `[firewall]` section; the detector's rules are the nested table `[firewall.detect]`
/// (with `[firewall.detect.flood]`, `[firewall.detect.auth_source]`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallConfig {
    /// Kernel enforcement: `auto` uses nftables when running as root (CAP_NET_ADMIN) and
    /// `nft` works, else inspects and drops in user space only and says why at start;
    /// `off` never touches nftables.
    pub enforce: EnforceMode,
    /// Detect and alert only: nothing is dropped, banned or locked, and no nftables table is
    /// installed (for rollout). Same as `detect.monitor`; either turns it on.
    pub monitor: bool,
    /// The detection rules; defaults are DESIGN.md's table.
    pub detect: DetectConfig,
    /// Name of our nftables table in family `inet`.
    pub table: String,
    /// Retired: the `nft` program is fixed by the image (`outpostd --nft`).
    #[serde(skip_serializing)]
    pub nft: Option<crate::fixed::RetiredKey>,
    /// Drop packets to relay ports that no live call opened (only with `media.enabled`).
    pub rtp_closed: bool,
    /// Seconds an RTP pinhole lives in the kernel after it was opened or last refreshed;
    /// live calls are refreshed every third of it, an ended call's pinholes expire (keep
    /// it above `media.timeout_secs`).
    pub rtp_pinhole_secs: u32,
    /// Per-source packets per second on the SIP ports above which the kernel drops (a
    /// safety net far above what the detector bans for); 0 turns the meter off.
    pub kernel_flood_per_second: u32,
    /// Packets a source may send above that rate in a burst.
    pub kernel_flood_burst: u32,
    /// Packets per second of a trunk's own traffic (its address, transport and port, or
    /// `inbound_from` networks) above which the kernel drops; higher than
    /// `kernel_flood_per_second` because a provider carries many calls. 0 meters trunks
    /// like every other source.
    pub kernel_trunk_per_second: u32,
    /// Packets a trunk may send above that rate in a burst.
    pub kernel_trunk_burst: u32,
    /// Blocklist feeds re-read on a schedule (`[[firewall.feeds]]` tables, or
    /// `feeds = [{ source = "/path", refresh_secs = 3600, ban_secs = 86400 }]`).
    pub feeds: Vec<FeedConfig>,
    /// `[firewall.policy]`: the toll-fraud policy for outbound calls (emergency numbers
    /// come from `[dialplan] emergency`).
    pub policy: PolicyConfig,
    /// `[firewall.connections]`: per-source caps and deadlines of TCP/TLS connections.
    pub connections: ConnectionsConfig,
}

/// `[firewall.connections]`: how many TCP/TLS connections a source may hold and how long a
/// connection may take to say something (see `firmware/src/driver/conn.rs`). Enforced in
/// every firewall mode (like any resource limit); bans for connection floods are the
/// detector's rule `connection_flood`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Connections a source that has not authenticated may hold (IPv6: per /64).
    pub per_source: u32,
    /// Connections a source that authenticated within `firewall.detect.unknown_host.pass_ms`
    /// may hold (a NATed office's phones share one address).
    pub per_source_authenticated: u32,
    /// Connections at once, incoming and outgoing.
    pub max: usize,
    /// Of `max`, slots only authenticated and trusted sources (and our own outgoing
    /// connections) may take.
    pub reserved_authenticated: usize,
    /// Seconds a new connection has to deliver its first complete SIP message.
    pub first_message_secs: u64,
    /// Seconds a message has, once its first byte arrived, to be complete.
    pub message_secs: u64,
    /// Idle timeout of a connection that has not carried an authenticated request.
    pub idle_secs: u64,
    /// Idle timeout of one that has (CRLF keep-alives count as alive).
    pub idle_authenticated_secs: u64,
    /// Also limit connections per source in the kernel, so a flood is dropped before
    /// `accept` (needs kernel enforcement): `syn_rate` (the default) limits a source's new
    /// connections per second to twice the caps above, with a burst as large (a stateless
    /// meter); `count` caps the connections it holds at twice the caps above (nftables `ct
    /// count`, which makes the kernel track connections for all traffic: a UDP flood then
    /// costs the kernel ~15 % more per packet, see bench/README.md); `off` leaves it to the
    /// daemon.
    pub kernel: KernelConnLimit,
}

/// `firewall.connections.kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelConnLimit {
    /// Connections held at once (`ct count`).
    Count,
    /// New connections per second (a SYN meter).
    SynRate,
    /// No kernel limit.
    Off,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        let l = ConnLimits::default();
        ConnectionsConfig {
            per_source: l.per_source,
            per_source_authenticated: l.per_source_authenticated,
            max: l.max,
            reserved_authenticated: l.reserved_authenticated,
            first_message_secs: l.first_message.as_secs(),
            message_secs: l.message.as_secs(),
            idle_secs: l.idle.as_secs(),
            idle_authenticated_secs: l.idle_authenticated.as_secs(),
            kernel: KernelConnLimit::SynRate,
        }
    }
}

impl ConnectionsConfig {
    /// The driver's limits.
    pub fn limits(&self) -> ConnLimits {
        ConnLimits {
            per_source: self.per_source,
            per_source_authenticated: self.per_source_authenticated,
            max: self.max,
            reserved_authenticated: self.reserved_authenticated,
            first_message: Duration::from_secs(self.first_message_secs),
            message: Duration::from_secs(self.message_secs),
            idle: Duration::from_secs(self.idle_secs),
            idle_authenticated: Duration::from_secs(self.idle_authenticated_secs),
        }
    }
}

impl Default for FirewallConfig {
    fn default() -> Self {
        let nft = NftConfig::default();
        let flood = FloodLimit::default();
        FirewallConfig {
            enforce: EnforceMode::Auto,
            monitor: false,
            detect: DetectConfig::default(),
            table: nft.table,
            nft: None,
            rtp_closed: true,
            rtp_pinhole_secs: nft.rtp_pinhole_secs,
            kernel_flood_per_second: flood.per_second,
            kernel_flood_burst: flood.burst,
            kernel_trunk_per_second: FloodLimit::TRUNK_DEFAULT.per_second,
            kernel_trunk_burst: FloodLimit::TRUNK_DEFAULT.burst,
            feeds: Vec::new(),
            policy: PolicyConfig::default(),
            connections: ConnectionsConfig::default(),
        }
    }
}

/// Most feeds in `[firewall] feeds`.
pub const MAX_FEEDS: usize = 8;
/// Longest `refresh_secs` of a feed: a week.
const MAX_FEED_REFRESH_SECS: u64 = 7 * 24 * 3600;

/// One blocklist feed: a file on the box or an HTTPS URL, holding addresses or networks,
/// one per line (`#` comments) or JSON (an array of strings, or `outpostctl fw export`'s
/// document). Its entries are banned (rule `feed`) for `ban_secs`, renewed while they stay
/// listed, and lifted at the first refresh that no longer lists them. Allow-listed
/// networks, trunk peers and loopback are never banned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Absolute path of a file, or an `https://` URL (plain `http://` is refused: anyone
    /// on the path could add the office's own addresses to the list).
    pub source: String,
    /// For an HTTPS source: a PEM file of extra CA certificates trusted besides the
    /// Mozilla roots (a private feed server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Seconds between two reads of the file (1 to 604800).
    #[serde(default = "default_feed_refresh_secs")]
    pub refresh_secs: u64,
    /// How long a listed address stays banned after the last read that listed it; at
    /// least `refresh_secs`, so bans do not lapse between reads.
    #[serde(default = "default_feed_ban_secs")]
    pub ban_secs: u64,
}

fn default_feed_refresh_secs() -> u64 {
    3_600
}

fn default_feed_ban_secs() -> u64 {
    86_400
}

impl FeedConfig {
    /// Why this feed cannot be used, naming the offending key (`source`, `refresh_secs`, ...).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let lower = self.source.trim().to_ascii_lowercase();
        if lower.starts_with("http://") {
            return Err((
                "source",
                format!(
                    "{:?}: plain HTTP feeds are refused (anyone on the path could add the \
                     office's addresses); use https://",
                    self.source
                ),
            ));
        }
        if let Some(rest) = lower.strip_prefix("https://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let well_formed = !authority.contains('@')
                && !self.source.chars().any(char::is_whitespace)
                && crate::http::split_authority(authority).is_ok_and(|(host, port)| {
                    !host.is_empty() && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
                });
            if !well_formed {
                return Err((
                    "source",
                    format!(
                        "{:?}: expected https://HOST[:PORT]/PATH (no credentials, no spaces)",
                        self.source
                    ),
                ));
            }
        } else if lower.contains("://") {
            return Err((
                "source",
                format!(
                    "{:?}: only file paths and https:// URLs are supported",
                    self.source
                ),
            ));
        } else if !Path::new(&self.source).is_absolute() {
            return Err((
                "source",
                format!(
                    "{:?}: must be an absolute file path or an https:// URL",
                    self.source
                ),
            ));
        } else if self.ca.is_some() {
            return Err(("ca", "only an https:// source uses a CA file".to_owned()));
        }
        if let Some(ca) = &self.ca {
            if !ca.is_absolute() {
                return Err(("ca", format!("{}: must be an absolute path", ca.display())));
            }
        }
        if !(1..=MAX_FEED_REFRESH_SECS).contains(&self.refresh_secs) {
            return Err((
                "refresh_secs",
                format!("must be between 1 and {MAX_FEED_REFRESH_SECS}"),
            ));
        }
        if self.ban_secs > MAX_BAN_SECS {
            return Err(("ban_secs", format!("must be at most {}", MAX_BAN_SECS)));
        }
        if self.ban_secs < self.refresh_secs {
            return Err((
                "ban_secs",
                format!(
                    "{} is shorter than refresh_secs ({}): bans would lapse between reads",
                    self.ban_secs, self.refresh_secs
                ),
            ));
        }
        Ok(())
    }
}

impl FirewallConfig {
    /// Whether monitor mode is on (`monitor` or `detect.monitor`).
    pub fn monitor_mode(&self) -> bool {
        self.monitor || self.detect.monitor
    }
}

/// `firewall.enforce`: whether the kernel enforces bans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforceMode {
    /// nftables when possible, user space only otherwise (the reason is logged at start).
    #[default]
    Auto,
    /// User space only.
    Off,
}

/// What the firewall needs from the configuration's other sections: plain data the daemon
/// gathers at start and at each reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surroundings {
    /// `[sip] listen` ports (UDP and TCP).
    pub sip_ports: Vec<u16>,
    /// `[tls] listen` ports.
    pub tls_ports: Vec<u16>,
    /// The relay's RTP port range, inclusive, when `[media]` is enabled.
    pub rtp_range: Option<(u16, u16)>,
    /// The `[[trunk]]`s.
    pub trunks: Vec<TrunkSite>,
    /// `[dialplan] emergency`: numbers the toll-fraud policy always lets through.
    pub emergency: Vec<String>,
    /// The management zone: `[management] networks` and the TCP ports of the admin
    /// listeners the daemon runs (SSH when enabled, the metrics endpoint when on; a new
    /// admin listener adds its port in `Config::management_zone`).
    pub management: ManagementZone,
}

/// One `[[trunk]]` as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkSite {
    /// The provider's addresses as resolved when the firewall started (every SRV target
    /// and A/AAAA record; empty if the host did not resolve).
    pub addrs: Vec<SocketAddr>,
    /// The trunk's transport.
    pub transport: Transport,
    /// Its `inbound_from` networks.
    pub inbound: Vec<Cidr>,
}

impl FirewallConfig {
    /// The detector's settings: `[firewall.detect]` with monitor mode and the trunks'
    /// addresses, which are never banned (see `Detector`'s "Who is never banned").
    pub fn detect_config(&self, site: &Surroundings) -> DetectConfig {
        let mut detect = self.detect.clone();
        detect.monitor = self.monitor_mode();
        detect.trunk_peers.extend(
            site.trunks
                .iter()
                .flat_map(|t| &t.addrs)
                .map(|a| canonical(a.ip())),
        );
        detect
    }

    /// The toll-fraud policy with the emergency numbers of `[dialplan]`.
    pub fn call_policy(&self, emergency: &[String]) -> PolicyConfig {
        let mut policy = self.policy.clone();
        policy.plan.emergency = emergency.to_vec();
        policy
    }

    /// Whether RTP ports are opened per call in the kernel (only with the relay on).
    pub fn rtp_closed(&self, site: &Surroundings) -> bool {
        self.rtp_closed && site.rtp_range.is_some()
    }

    /// The kernel table's settings.
    pub fn nft_config(&self, site: &Surroundings) -> NftConfig {
        let mut sip_ports = site.sip_ports.clone();
        sip_ports.sort_unstable();
        sip_ports.dedup();
        let defaults = NftConfig::default();
        NftConfig {
            table: self.table.clone(),
            sip_ports,
            rtp_range: site.rtp_range.unwrap_or(defaults.rtp_range),
            rtp_closed: self.rtp_closed(site),
            allow: self.detect.allow.clone(),
            trunk_peers: self.kernel_trunk_peers(site),
            flood_rate: (self.kernel_flood_per_second > 0).then_some(FloodLimit {
                per_second: self.kernel_flood_per_second,
                burst: self.kernel_flood_burst,
            }),
            trunk_flood_rate: (self.kernel_trunk_per_second > 0).then_some(FloodLimit {
                per_second: self.kernel_trunk_per_second,
                burst: self.kernel_trunk_burst,
            }),
            conn_limit: self.conn_limit(site),
            management: site.management.clone(),
            netns: None,
            nft: crate::fixed::get().nft.clone(),
            nft_timeout_ms: defaults.nft_timeout_ms,
            rtp_pinhole_secs: self.rtp_pinhole_secs,
        }
    }

    /// The trunks' own traffic for the kernel's trunk meter, as the call core recognises it
    /// (`pbx_core::trunk`): over UDP from the trunk's address and port, over TCP/TLS from
    /// its address (any port: a connection we opened, or one the provider opened), and from
    /// its `inbound_from` networks over its transport (any port). `[firewall.detect]
    /// trunk_peers` addresses, which name no transport, count over both.
    fn kernel_trunk_peers(&self, site: &Surroundings) -> Vec<TrunkPeer> {
        let mut peers = Vec::new();
        for t in &site.trunks {
            let proto = match t.transport {
                Transport::Udp => TrunkProto::Udp,
                Transport::Tcp | Transport::Tls => TrunkProto::Tcp,
            };
            for addr in &t.addrs {
                let port = (proto == TrunkProto::Udp).then_some(addr.port());
                peers.push(TrunkPeer::host(addr.ip(), proto, port));
            }
            for &net in &t.inbound {
                peers.push(TrunkPeer {
                    net,
                    proto,
                    port: None,
                });
            }
        }
        for &ip in &self.detect.trunk_peers {
            for proto in [TrunkProto::Udp, TrunkProto::Tcp] {
                peers.push(TrunkPeer::host(ip, proto, None));
            }
        }
        peers.truncate(MAX_TRUNK_PEERS);
        peers
    }

    /// The kernel's per-source connection limits: twice the daemon's caps (connections
    /// held, or new connections per second), so the connections between the two are the
    /// ones the daemon refuses and reports (rule `connection_flood`), and a flood beyond is
    /// dropped before `accept`.
    fn conn_limit(&self, site: &Surroundings) -> Option<ConnLimit> {
        let c = &self.connections;
        let by = match c.kernel {
            KernelConnLimit::Count => ConnLimitBy::Count,
            KernelConnLimit::SynRate => ConnLimitBy::SynRate,
            KernelConnLimit::Off => return None,
        };
        let mut ports: Vec<u16> = site
            .sip_ports
            .iter()
            .chain(&site.tls_ports)
            .copied()
            .collect();
        ports.sort_unstable();
        ports.dedup();
        (!ports.is_empty()).then(|| ConnLimit {
            ports,
            unauthenticated: c.per_source.saturating_mul(2),
            authenticated: c.per_source_authenticated.saturating_mul(2),
            by,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trunks_become_kernel_trunk_peers_by_address_transport_and_port() {
        let site = Surroundings {
            sip_ports: vec![5060, 5060],
            tls_ports: vec![5061],
            rtp_range: Some((10_000, 10_999)),
            trunks: vec![
                TrunkSite {
                    addrs: vec!["203.0.113.5:5080".parse().unwrap()],
                    transport: Transport::Udp,
                    inbound: vec!["198.51.100.16/28".parse().unwrap()],
                },
                TrunkSite {
                    addrs: vec!["[2001:db8::5]:5061".parse().unwrap()],
                    transport: Transport::Tls,
                    inbound: Vec::new(),
                },
                TrunkSite {
                    addrs: Vec::new(),
                    transport: Transport::Udp,
                    inbound: Vec::new(),
                },
            ],
            emergency: vec!["112".into()],
            management: ManagementZone {
                networks: vec!["192.168.0.0/16".parse().unwrap()],
                ports: vec![22],
            },
        };
        let mut fw = FirewallConfig::default();
        fw.detect.trunk_peers = vec![ip("192.0.2.77")];
        let cfg = fw.nft_config(&site);
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
        assert_eq!(cfg.sip_ports, [5060]);
        assert_eq!(cfg.rtp_range, (10_000, 10_999));
        assert!(cfg.rtp_closed);
        assert_eq!(cfg.trunk_flood_rate, Some(FloodLimit::TRUNK_DEFAULT));
        let conn = cfg.conn_limit.unwrap();
        assert_eq!(conn.ports, [5060, 5061]);
        assert_eq!(conn.by, ConnLimitBy::SynRate);
        // The detector never bans the trunks' addresses; the policy knows the emergency
        // numbers.
        let detect = fw.detect_config(&site);
        assert_eq!(
            detect.trunk_peers,
            [ip("192.0.2.77"), ip("203.0.113.5"), ip("2001:db8::5")]
        );
        assert_eq!(fw.call_policy(&site.emergency).plan.emergency, ["112"]);

        fw.kernel_trunk_per_second = 0;
        fw.connections.kernel = KernelConnLimit::Off;
        let cfg = fw.nft_config(&site);
        assert_eq!(cfg.trunk_flood_rate, None);
        assert_eq!(cfg.conn_limit, None);
        // Without the relay the RTP range stays open and takes the table's default.
        let no_media = Surroundings {
            rtp_range: None,
            ..site
        };
        let cfg = fw.nft_config(&no_media);
        assert!(!cfg.rtp_closed);
        assert_eq!(cfg.rtp_range, NftConfig::default().rtp_range);
    }

    #[test]
    fn management_networks_default_to_the_office_side_and_are_checked() {
        let m = ManagementConfig::default();
        assert_eq!(m.networks.len(), DEFAULT_MANAGEMENT_NETWORKS.len());
        m.check().unwrap();
        let bad = |networks: Vec<Cidr>| ManagementConfig { networks }.check().unwrap_err();
        let (key, why) = bad(Vec::new());
        assert_eq!(key, "management.networks");
        assert!(why.contains("at least one"), "{why}");
        let many: Vec<Cidr> = (0..=64u8)
            .map(|i| Cidr::new(std::net::Ipv4Addr::new(10, i, 0, 0).into(), 16).unwrap())
            .collect();
        assert!(bad(many).1.contains("at most 64"));
        let (_, why) = bad(vec![
            "10.0.0.0/8".parse().unwrap(),
            "10.1.2.3/8".parse().unwrap(),
        ]);
        assert_eq!(why, "10.0.0.0/8 is listed twice");
        // The zone reaches the kernel table as configured.
        let site = Surroundings {
            management: ManagementZone {
                networks: ManagementConfig::default().networks,
                ports: vec![22, 9100],
            },
            ..Surroundings::default()
        };
        let nft = FirewallConfig::default().nft_config(&site);
        assert_eq!(nft.management, site.management);
    }
}
