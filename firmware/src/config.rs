//! The daemon's configuration file (TOML): one serde struct per subsystem.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key and its line
//! instead of a silently ignored setting. Every key has a default, so a file only lists what
//! it changes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::driver::tls::TlsConfig;
use crate::names::{valid_realm, validate_ext};

/// Where the production daemon puts its admin socket.
pub const DEFAULT_SOCKET: &str = "/run/outpost/admin.sock";
/// Where the quick-start demo (`Config::demo()`) puts its admin socket.
pub const DEMO_SOCKET: &str = "./outpost-data/outpostd.sock";
/// Environment variable that overrides the admin socket path for `outpostctl`.
pub const SOCKET_ENV: &str = "OUTPOST_SOCKET";

/// Longest admin socket path accepted: `sun_path` holds 107 bytes plus NUL, and the server
/// binds `<path>.new` first and renames it into place.
const MAX_SOCKET_PATH: usize = 103;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("{path}: line {line}, column {column}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The file parsed but a value is out of range or inconsistent.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `registrar.default_expires`.
        key: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[sip]`: listening sockets and identity.
    pub sip: SipConfig,
    /// `[registrar]`: registration lifetimes and limits.
    pub registrar: RegistrarConfig,
    /// `[auth]`: digest authentication.
    pub auth: AuthConfig,
    /// `[calls]`: call handling.
    pub calls: CallsConfig,
    /// `[store]`: persistent data.
    pub store: StoreConfig,
    /// `[admin]`: control socket.
    pub admin: AdminConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[demo]`: quick-start extras.
    pub demo: DemoConfig,
    /// `[media]`: the RTP relay.
    pub media: MediaConfig,
    /// `[voicemail]`: messages for unanswered calls.
    pub voicemail: VoicemailConfig,
    /// `[recording]`: call recording on demand, for the extensions that opted in.
    pub recording: RecordingConfig,
    /// `[[ivr]]`: auto-attendant menus.
    pub ivr: Vec<IvrConfig>,
    /// `[firewall]`: inspection before the call core and kernel enforcement.
    pub firewall: FirewallConfig,
    /// `[[trunk]]`: SIP providers.
    pub trunk: Vec<crate::pbx_config::TrunkSection>,
    /// `[[route]]`: outbound routes, tried in order.
    pub route: Vec<crate::pbx_config::RouteSection>,
    /// `[inbound]`: DIDs.
    pub inbound: crate::pbx_config::InboundSection,
    /// `[dialplan]`: emergency numbers.
    pub dialplan: crate::pbx_config::DialplanSection,
    /// `[[ring_group]]`: numbers that ring several extensions.
    pub ring_group: Vec<crate::pbx_config::RingGroupSection>,
    /// `[[paging]]`: numbers that page several extensions (one-way, auto-answered).
    pub paging: Vec<crate::pbx_config::PagingSection>,
    /// `[features]`: feature codes.
    pub features: crate::pbx_config::FeaturesSection,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: crate::metrics::MetricsConfig,
    /// `[watchdog]`: the hardware watchdog (see [`Config::watchdog_device`]).
    pub watchdog: crate::watchdog::WatchdogConfig,
    /// `[panel]`: the front panel.
    pub panel: crate::panel::PanelConfig,
    /// `[tls]`: SIP over TLS for phones and trunks.
    pub tls: TlsConfig,
    /// `[ssh]`: remote administration through dropbear.
    pub ssh: crate::ssh::SshConfig,
    /// `[backup]`: encrypted backups, their schedule, retention and off-site targets.
    pub backup: crate::backup::BackupConfig,
    /// `[system]`: the box's host name.
    pub system: crate::system::SystemConfig,
    /// `[management]`: the networks the management listeners may be reached from.
    pub management: ManagementConfig,
    /// `[dns]`: the name servers and answer lifetimes for trunk hosts.
    pub dns: crate::dns::DnsConfig,
    /// `[time]`: the NTP servers that keep the clock right.
    pub time: crate::timesync::TimeConfig,
    /// `[web]`: the web admin page.
    pub web: crate::webconf::WebConfig,
    /// `[provision]`: desk-phone auto-provisioning.
    pub provision: crate::provision::ProvisionConfig,
}

/// `[sip]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Socket addresses; each gets a UDP and a TCP listener.
    pub listen: Vec<SocketAddr>,
    /// Digest authentication realm [default: the box's own, `outpost-<16 hex digits>`, made
    /// at first start and kept in the store, so digests leaked from one box do not open
    /// another; a box whose extensions were made with another realm keeps that one, see
    /// `daemon::boot::box_realm`].
    pub realm: Option<String>,
    /// Value of the Server / User-Agent header the daemon sends.
    pub user_agent: String,
    /// Cap on live SIP server transactions; beyond it new requests get 503 with
    /// Retry-After. The default (2,048) is sized for 500 phones with margin; each costs
    /// typically 2–5 KiB (see `pbx_core::sip::transaction`).
    pub max_server_transactions: usize,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 5060)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5060)),
            ],
            realm: None,
            user_agent: "Outpost".to_owned(),
            max_server_transactions: pbx_core::sip::transaction::DEFAULT_MAX_SERVER,
        }
    }
}

/// `[registrar]` section (all lifetimes in seconds): the call core's own settings, so
/// the file and the registrar can never disagree.
pub use pbx_core::registrar::RegistrarConfig;

/// `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a digest nonce stays valid.
    pub nonce_lifetime_secs: u64,
    /// Digest algorithms offered ("SHA-256", "MD5"), most preferred first, one challenge
    /// each. MD5 alone by default: it is what phones speak, and some (baresip 1.0, SIPp 3.6)
    /// give up on, or answer wrongly, a 401 that also offers SHA-256, whatever the order.
    pub algorithms: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            nonce_lifetime_secs: 300,
            algorithms: vec!["MD5".to_string()],
        }
    }
}

impl AuthConfig {
    /// The configured algorithms, parsed (call after `validate`).
    pub fn parsed_algorithms(&self) -> Vec<pbx_core::sip::auth::Algorithm> {
        self.algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a))
            .collect()
    }
}

fn parse_algorithm(name: &str) -> Option<pbx_core::sip::auth::Algorithm> {
    use pbx_core::sip::auth::Algorithm;
    match name.to_ascii_uppercase().as_str() {
        "MD5" => Some(Algorithm::Md5),
        "SHA-256" => Some(Algorithm::Sha256),
        _ => None,
    }
}

/// `[calls]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// Unanswered calls are cancelled after this long.
    pub ring_timeout_secs: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_secs: 60,
        }
    }
}

/// `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding `outpost.redb`; created if missing.
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("/data"),
        }
    }
}

/// `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Unix socket `outpostctl` talks to (mode 0600).
    pub socket: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`error`..`trace`, `off`) or a filter such as `info,firmware=debug`.
    pub level: String,
    /// Also send every line to the system log socket (e.g. `/dev/log`).
    pub syslog: Option<PathBuf>,
    /// `text` (default) or `json` (one JSON object per line, for log collectors).
    pub format: String,
    /// Keep a persistent log in `<data_dir>/log/` (docs/logs.md).
    pub persist: bool,
    /// Size of one persistent log file before it is rotated, KiB (64..65536).
    pub file_kib: u64,
    /// Persistent log files kept, the current one included (1..16): the log takes at most
    /// `files × file_kib`.
    pub files: u32,
    /// Remote syslog collectors (RFC 5424), at most four.
    pub remote: Vec<crate::log::config::Collector>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            syslog: None,
            format: "text".to_owned(),
            persist: true,
            file_kib: 4096,
            files: 4,
            remote: Vec::new(),
        }
    }
}

/// `[media]` section: every call's audio runs through the relay on these ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Anchor media in the relay (false: SDP passes through and phones talk directly).
    pub enabled: bool,
    /// Relay addresses; empty = the IPs of `sip.listen`. An unspecified one (`0.0.0.0`,
    /// `::`) binds the relay on every address of its family, and SDP carries the box's
    /// current address of that family, followed live when it changes (`crate::netif`).
    pub addrs: Vec<std::net::IpAddr>,
    /// First and last port of the relay range (each call uses two even/odd pairs).
    pub port_first: u16,
    pub port_last: u16,
    /// A call whose media stops for this long is hung up.
    pub timeout_secs: u64,
    /// Spoken prompts (`.ul` files made by `scripts/make-prompts DIR`); tones (beep,
    /// ringback, music on hold) are built in.
    pub prompts_dir: PathBuf,
    /// Exchange SDES-SRTP keys (`a=crypto`) over UDP and TCP signalling as well as TLS.
    /// Off by default (RFC 4568 §8.3): over UDP/TCP an `RTP/SAVP` offer gets 488 and a
    /// best-effort one (`RTP/AVP` with keys) is answered plain RTP.
    pub srtp_over_insecure: bool,
    /// Hand latched, plain calls (no SRTP, transcoding, prompts or recording) to the kernel:
    /// nftables forwards their RTP without waking the relay (`docs/media.md`). Needs
    /// CAP_NET_ADMIN, nft and concrete IPv4 relay addresses; falls back to user space,
    /// reported in `outpostctl status`. Turns on IPv4 forwarding, closed to everything
    /// but these calls (`docs/threat-model.md`).
    pub kernel_fast_path: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            enabled: true,
            addrs: Vec::new(),
            port_first: 10000,
            port_last: 10999,
            timeout_secs: 60,
            prompts_dir: PathBuf::from("/usr/share/outpost/prompts"),
            srtp_over_insecure: false,
            kernel_fast_path: false,
        }
    }
}

impl MediaConfig {
    /// The relay addresses: configured ones, else those of the SIP listeners.
    pub fn effective_addrs(&self, listen: &[SocketAddr]) -> Vec<std::net::IpAddr> {
        if !self.addrs.is_empty() {
            return self.addrs.clone();
        }
        let mut out: Vec<std::net::IpAddr> = Vec::new();
        for a in listen {
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
        }
        out
    }
}

/// The firewall's sections (`[firewall]` and its tables), defined with the firewall.
pub use crate::guard::config::{
    ConnectionsConfig, EnforceMode, FeedConfig, FirewallConfig, KernelConnLimit, ManagementConfig,
    MAX_FEEDS,
};

impl Config {
    /// The watchdog device the daemon arms: `[watchdog] device`, else the board profile's
    /// when the panel runs on the real board; none in the demo.
    pub fn watchdog_device(&self) -> Option<PathBuf> {
        self.watchdog
            .device
            .clone()
            .or_else(|| self.panel.board_watchdog().map(|w| w.device))
    }

    /// What the firewall needs from the other sections, with the trunks' IP-literal
    /// addresses only (see [`Config::firewall_surroundings_with`]).
    pub fn firewall_surroundings(&self) -> crate::guard::config::Surroundings {
        self.firewall_surroundings_with(|t| {
            match crate::dns::lookup_for(&t.host, t.transport_kind()) {
                crate::dns::Lookup::Literal(a) => vec![a],
                _ => Vec::new(),
            }
        })
    }

    /// What the firewall needs from the other sections; `addrs` gives each trunk's
    /// resolved addresses (`dns::TrunkDns`).
    pub fn firewall_surroundings_with(
        &self,
        addrs: impl Fn(&crate::pbx_config::TrunkSection) -> Vec<SocketAddr>,
    ) -> crate::guard::config::Surroundings {
        use crate::guard::config::{Surroundings, TrunkSite};
        let ports = |listen: &[SocketAddr]| listen.iter().map(SocketAddr::port).collect();
        Surroundings {
            sip_ports: ports(&self.sip.listen),
            tls_ports: ports(&self.tls.listen),
            rtp_range: self
                .media
                .enabled
                .then_some((self.media.port_first, self.media.port_last)),
            trunks: self
                .trunk
                .iter()
                .map(|t| TrunkSite {
                    addrs: addrs(t),
                    transport: t.transport_kind(),
                    inbound: t
                        .inbound_nets()
                        .iter()
                        .filter_map(|n| firewall::net::Cidr::new(n.network(), n.prefix()).ok())
                        .collect(),
                })
                .collect(),
            emergency: self.dialplan.emergency.clone(),
            management: self.management_zone(),
        }
    }

    /// The management zone: `[management] networks` and the TCP ports of every admin
    /// listener this configuration runs (dropbear's when SSH is enabled, the metrics
    /// endpoint's when it is on). A new admin listener (e.g. a web admin) adds its port
    /// here, and the kernel guards it like the others.
    pub fn management_zone(&self) -> firewall::nft::ManagementZone {
        let mut ports: Vec<u16> = Vec::new();
        if self.ssh.enabled {
            ports.extend(self.ssh.listen.iter().map(SocketAddr::port));
        }
        ports.extend(self.metrics.listen.iter().map(SocketAddr::port));
        ports.extend(self.web.ports());
        ports.extend(self.provision.ports());
        ports.sort_unstable();
        ports.dedup();
        firewall::nft::ManagementZone {
            networks: self.management.networks.clone(),
            ports,
        }
    }
}

/// `[voicemail]` section: callers who reach no phone (no answer, busy, offline) leave a
/// message, stored under `<store.data_dir>/voicemail/<extension>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoicemailConfig {
    /// Offer voicemail (needs `media.enabled`).
    pub enabled: bool,
    /// Longest message.
    pub max_secs: u32,
    /// What extensions dial to hear their messages (after a PIN set with
    /// `outpostctl vm pin`).
    pub access_number: String,
}

impl Default for VoicemailConfig {
    fn default() -> Self {
        VoicemailConfig {
            enabled: true,
            max_secs: 180,
            access_number: "*97".to_string(),
        }
    }
}

/// `[recording]` section: call recording on demand, off unless extensions opt in. A
/// recording is stored under `<store.data_dir>/recordings/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// The extensions that may record their calls (both parties hear it announced).
    /// Empty: nobody (the default).
    pub extensions: Vec<String>,
    /// Dialled during a call, starts or stops the recording.
    pub code: String,
    /// Longest recording, 10-600 s (the relay holds it in memory until the end).
    pub max_secs: u32,
    /// Recordings kept at most, 1-10000; beyond, a new one is discarded (and logged).
    pub max_stored: u32,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            extensions: Vec::new(),
            code: "*1".to_string(),
            max_secs: 600,
            max_stored: 1000,
        }
    }
}

/// One `[[ivr]]` auto-attendant menu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrConfig {
    /// The number that reaches the menu.
    pub number: String,
    /// Prompt played on answer (a name from prompts/en.toml, default "main-menu").
    #[serde(default = "default_greeting")]
    pub greeting: String,
    /// Digit → extension, e.g. `options = { "1" = "100", "2" = "101" }`.
    pub options: std::collections::BTreeMap<String, String>,
    /// Seconds to wait for a digit after the greeting.
    #[serde(default = "default_ivr_timeout")]
    pub timeout_secs: u64,
    /// Greetings replayed after a timeout or an invalid digit before hanging up.
    #[serde(default = "default_ivr_retries")]
    pub retries: u32,
}

fn default_greeting() -> String {
    "main-menu".to_string()
}

fn default_ivr_timeout() -> u64 {
    8
}

fn default_ivr_retries() -> u32 {
    2
}

/// `[demo]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Extensions created at first start with random passwords that are printed once.
    pub extensions: Vec<String>,
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates configuration text (errors name the source `<string>`).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, "<string>")
    }

    /// The quick-start configuration shipped in `firmware/demo.toml`.
    pub fn demo() -> Config {
        Self::parse(include_str!("../demo.toml"), "demo.toml")
            .expect("demo.toml is checked by a unit test")
    }

    /// Parses and validates configuration text; errors name `source` (a file name).
    pub fn parse_named(text: &str, source: &str) -> Result<Config, ConfigError> {
        Self::parse(text, source)
    }

    /// The text of the embedded demo configuration.
    pub fn demo_text() -> &'static str {
        include_str!("../demo.toml")
    }

    /// Keys this configuration still carries that the image now fixes at start
    /// ([`crate::fixed`]): ignored when a stored revision loads, refused by `config apply`.
    pub fn fixed_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.firewall.nft.is_some() {
            keys.push("firewall.nft");
        }
        keys.extend(self.ssh.retired_keys());
        keys
    }

    /// Refuses text that sets a key the image fixes at start, naming the key: such a change
    /// would not take effect, and must not look as if it did.
    pub fn refuse_fixed_keys(text: &str) -> Result<(), ConfigError> {
        let Ok(config) = toml::from_str::<Config>(text) else {
            // Not ours to report: the full parse names what is wrong.
            return Ok(());
        };
        match config.fixed_keys().first() {
            Some(key) => Err(invalid(
                key,
                "is fixed by the firmware image and cannot be set in the configuration \
                 (the programs the daemon runs are set when it starts); remove the key",
            )),
            None => Ok(()),
        }
    }

    fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and consistency; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sip = &self.sip;
        if sip.listen.is_empty() {
            return Err(invalid("sip.listen", "at least one address is needed"));
        }
        let mut seen = HashSet::new();
        for addr in &sip.listen {
            if !seen.insert(addr) {
                return Err(invalid("sip.listen", format!("{addr} is listed twice")));
            }
        }
        if let Some(realm) = &sip.realm {
            if !valid_realm(realm) {
                return Err(invalid(
                    "sip.realm",
                    "must be 1-64 characters of letters, digits and -.!%*_+`'~",
                ));
            }
        }
        if sip.user_agent.is_empty()
            || sip.user_agent.len() > 128
            || !sip
                .user_agent
                .chars()
                .all(|c| c == ' ' || c.is_ascii_graphic())
        {
            return Err(invalid(
                "sip.user_agent",
                "must be 1-128 printable ASCII characters",
            ));
        }

        let reg = &self.registrar;
        if reg.min_expires == 0 {
            return Err(invalid("registrar.min_expires", "must be at least 1"));
        }
        if reg.max_expires < reg.min_expires {
            return Err(invalid(
                "registrar.max_expires",
                format!(
                    "{} is less than registrar.min_expires ({})",
                    reg.max_expires, reg.min_expires
                ),
            ));
        }
        if reg.default_expires < reg.min_expires || reg.default_expires > reg.max_expires {
            return Err(invalid(
                "registrar.default_expires",
                format!(
                    "{} is outside min_expires..max_expires ({}..{})",
                    reg.default_expires, reg.min_expires, reg.max_expires
                ),
            ));
        }
        if !(1..=100).contains(&reg.max_contacts) {
            return Err(invalid(
                "registrar.max_contacts",
                "must be between 1 and 100",
            ));
        }

        if !(10..=3600).contains(&self.auth.nonce_lifetime_secs) {
            return Err(invalid(
                "auth.nonce_lifetime_secs",
                "must be between 10 and 3600",
            ));
        }
        if self.auth.algorithms.is_empty() {
            return Err(invalid(
                "auth.algorithms",
                "must name at least one algorithm",
            ));
        }
        if let Some(bad) = self
            .auth
            .algorithms
            .iter()
            .find(|a| parse_algorithm(a).is_none())
        {
            return Err(invalid(
                "auth.algorithms",
                format!("unknown algorithm {bad:?} (use \"SHA-256\" or \"MD5\")"),
            ));
        }
        let media = &self.media;
        if media.enabled {
            if media.port_first < 1024 || media.port_last < media.port_first.saturating_add(3) {
                return Err(invalid(
                    "media.port_first",
                    "the relay range must start at 1024 or above and hold at least two port pairs",
                ));
            }
            if !(5..=3600).contains(&media.timeout_secs) {
                return Err(invalid("media.timeout_secs", "must be between 5 and 3600"));
            }
        }
        let fw = &self.firewall;
        let table_ok = !fw.table.is_empty()
            && fw.table.len() <= 32
            && fw.table.starts_with(|c: char| c.is_ascii_alphabetic())
            && fw
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !table_ok {
            return Err(invalid(
                "firewall.table",
                "use 1-32 letters, digits or '_', starting with a letter",
            ));
        }
        let pinhole = firewall::nft::MIN_RTP_PINHOLE_SECS..=firewall::nft::MAX_RTP_PINHOLE_SECS;
        if !pinhole.contains(&fw.rtp_pinhole_secs) {
            return Err(invalid(
                "firewall.rtp_pinhole_secs",
                format!("must be between {} and {}", pinhole.start(), pinhole.end()),
            ));
        }
        if fw.kernel_flood_per_second > 0 && fw.kernel_flood_burst == 0 {
            return Err(invalid(
                "firewall.kernel_flood_burst",
                "must be at least 1 when the kernel flood meter is on",
            ));
        }
        if fw.kernel_trunk_per_second > 0 && fw.kernel_trunk_burst == 0 {
            return Err(invalid(
                "firewall.kernel_trunk_burst",
                "must be at least 1 when the kernel trunk meter is on",
            ));
        }
        let c = &fw.connections;
        if !(1..=65_536).contains(&c.per_source) {
            return Err(invalid(
                "firewall.connections.per_source",
                "must be between 1 and 65536",
            ));
        }
        if !(c.per_source..=65_536).contains(&c.per_source_authenticated) {
            return Err(invalid(
                "firewall.connections.per_source_authenticated",
                "must be at least per_source and at most 65536",
            ));
        }
        if !(16..=1_000_000).contains(&c.max) {
            return Err(invalid(
                "firewall.connections.max",
                "must be between 16 and 1000000",
            ));
        }
        if c.reserved_authenticated >= c.max {
            return Err(invalid(
                "firewall.connections.reserved_authenticated",
                "must be below max (strangers need some slots to authenticate at all)",
            ));
        }
        for (key, secs, max) in [
            ("first_message_secs", c.first_message_secs, 300),
            ("message_secs", c.message_secs, 300),
            ("idle_secs", c.idle_secs, 86_400),
            ("idle_authenticated_secs", c.idle_authenticated_secs, 86_400),
        ] {
            if !(1..=max).contains(&secs) {
                return Err(invalid(
                    &format!("firewall.connections.{key}"),
                    format!("must be between 1 and {max}"),
                ));
            }
        }
        if fw.detect.enumeration.limit > 1024 {
            return Err(invalid(
                "firewall.detect.enumeration.limit",
                "must be at most 1024",
            ));
        }
        if !(1..=100_000).contains(&fw.detect.limits.max_alerts) {
            return Err(invalid(
                "firewall.detect.limits.max_alerts",
                "must be between 1 and 100000",
            ));
        }
        if fw.feeds.len() > MAX_FEEDS {
            return Err(invalid(
                "firewall.feeds",
                format!("at most {MAX_FEEDS} feeds"),
            ));
        }
        let mut sources = HashSet::new();
        for (i, feed) in fw.feeds.iter().enumerate() {
            if let Err((key, reason)) = feed.check() {
                return Err(invalid(&format!("firewall.feeds[{i}].{key}"), reason));
            }
            if !sources.insert(feed.source.as_str()) {
                return Err(invalid(
                    &format!("firewall.feeds[{i}].source"),
                    format!("{:?} is listed twice", feed.source),
                ));
            }
        }
        for (i, menu) in self.ivr.iter().enumerate() {
            if menu.number.is_empty()
                || validate_ext(&menu.number).is_err() && !menu.number.starts_with('*')
            {
                return Err(invalid(
                    &format!("ivr[{i}].number"),
                    "must be a dialable number",
                ));
            }
            if let Some(bad) = menu.options.keys().find(|k| {
                let mut c = k.chars();
                !matches!((c.next(), c.next()), (Some('0'..='9' | '*' | '#'), None))
            }) {
                return Err(invalid(
                    &format!("ivr[{i}].options"),
                    format!("option {bad:?} is not a single digit, * or #"),
                ));
            }
            if !(1..=60).contains(&menu.timeout_secs) {
                return Err(invalid(
                    &format!("ivr[{i}].timeout_secs"),
                    "must be between 1 and 60",
                ));
            }
        }
        if self.voicemail.enabled && !(5..=600).contains(&self.voicemail.max_secs) {
            return Err(invalid("voicemail.max_secs", "must be between 5 and 600"));
        }
        let rec = &self.recording;
        if !(10..=600).contains(&rec.max_secs) {
            return Err(invalid("recording.max_secs", "must be between 10 and 600"));
        }
        if !(1..=10_000).contains(&rec.max_stored) {
            return Err(invalid(
                "recording.max_stored",
                "must be between 1 and 10000",
            ));
        }
        if rec.code.is_empty() || !crate::pbx_config::is_dial_string(&rec.code) {
            return Err(invalid("recording.code", "must be digits, * or #"));
        }
        if rec.extensions.len() > 1000 {
            return Err(invalid("recording.extensions", "at most 1000 extensions"));
        }
        if !(1..=600).contains(&self.calls.ring_timeout_secs) {
            return Err(invalid(
                "calls.ring_timeout_secs",
                "must be between 1 and 600",
            ));
        }
        self.tls
            .check(&self.sip.listen)
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.ssh
            .check()
            .map_err(|(key, reason)| invalid(&key, reason))?;
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(invalid("store.data_dir", "must not be empty"));
        }
        let socket_len = self.admin.socket.as_os_str().len();
        if socket_len == 0 {
            return Err(invalid("admin.socket", "must not be empty"));
        }
        if socket_len > MAX_SOCKET_PATH {
            return Err(invalid(
                "admin.socket",
                format!("path is {socket_len} bytes; Unix sockets allow at most {MAX_SOCKET_PATH}"),
            ));
        }
        validate_log_level(&self.log.level).map_err(|reason| invalid("log.level", reason))?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be text or json"));
        }
        crate::log::config::check(&self.log.remote, self.log.file_kib, self.log.files)
            .map_err(|(key, reason)| invalid(&key, reason))?;

        self.watchdog
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.backup
            .check()
            .and_then(|()| self.backup.check_on_box(&self.store.data_dir))
            .map_err(|(key, reason)| invalid(&key, reason))?;
        self.panel
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        // The board's profile says what its watchdog accepts (the Pi's stops at 15 s).
        if let Some(board) = self.panel.board_watchdog() {
            let max = u64::from(board.max_timeout());
            if self.watchdog.timeout_secs > max {
                return Err(invalid(
                    "watchdog.timeout_secs",
                    format!(
                        "the {} board's watchdog accepts at most {max} s",
                        self.panel.profile
                    ),
                ));
            }
        }
        self.system
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.dns
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.time
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.management
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.web
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.provision
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        if let Some(a) = self
            .provision
            .listen
            .iter()
            .find(|a| self.web.ports().any(|p| p == a.port()))
        {
            return Err(invalid(
                "provision.listen",
                format!(
                    "port {} is web.listen's: the web page already serves /provision/ over HTTPS",
                    a.port()
                ),
            ));
        }
        // The management zone drops TCP to its ports from outside the management networks:
        // a port shared with SIP would take SIP over TCP with it.
        let sip_ports: HashSet<u16> = self
            .sip
            .listen
            .iter()
            .chain(&self.tls.listen)
            .map(SocketAddr::port)
            .collect();
        let ssh_ports = self.ssh.listen.iter().filter(|_| self.ssh.enabled);
        for (key, addr) in ssh_ports
            .map(|a| ("ssh.listen", a))
            .chain(self.metrics.listen.iter().map(|a| ("metrics.listen", a)))
            .chain(self.web.listen.iter().map(|a| ("web.listen", a)))
            .chain(
                self.provision
                    .listen
                    .iter()
                    .map(|a| ("provision.listen", a)),
            )
        {
            if sip_ports.contains(&addr.port()) {
                return Err(invalid(
                    key,
                    format!(
                        "port {} is also a SIP port (sip.listen or tls.listen); the management \
                         zone would drop SIP over TCP from outside management.networks",
                        addr.port()
                    ),
                ));
            }
        }
        crate::pbx_config::validate(
            &self.trunk,
            &self.route,
            &self.inbound,
            &self.dialplan,
            &self.ring_group,
            &self.paging,
            &self.features,
        )
        .map_err(|(key, reason)| invalid(&key, reason))?;

        let mut seen = HashSet::new();
        for ext in &self.demo.extensions {
            validate_ext(ext).map_err(|reason| invalid("demo.extensions", reason))?;
            if !seen.insert(ext) {
                return Err(invalid(
                    "demo.extensions",
                    format!("extension {ext} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

/// The admin socket `outpostctl` uses when `--socket` is not given: `$OUTPOST_SOCKET`, else
/// the production socket if it exists, else the demo socket in the current directory.
pub fn default_socket_path() -> PathBuf {
    socket_path_from(
        std::env::var_os(SOCKET_ENV).map(PathBuf::from),
        Path::new(DEFAULT_SOCKET).exists(),
    )
}

fn socket_path_from(env: Option<PathBuf>, production_exists: bool) -> PathBuf {
    match env {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ if production_exists => PathBuf::from(DEFAULT_SOCKET),
        _ => PathBuf::from(DEMO_SOCKET),
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn validate_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bad = || {
        format!(
            "`{level}` is not a level (off, error, warn, info, debug, trace) \
             or a filter like `info,firmware=debug`"
        )
    };
    if level.is_empty() {
        return Err(bad());
    }
    for part in level.split(',') {
        let lvl = match part.split_once('=') {
            Some((target, lvl)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
                if !target_ok {
                    return Err(bad());
                }
                lvl
            }
            None => part,
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Turns a toml error into one line with the line number, naming the section of an unknown key.
fn parse_error(text: &str, path: &str, err: &toml::de::Error) -> ConfigError {
    let span_start = err.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = &text.as_bytes()[..span_start];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    let mut message = err.message().trim().replace('\n', " ");
    if message.starts_with("unknown field") {
        if let Some(section) = section_of_line(text, line) {
            message = format!("{message} (in section [{section}])");
        }
    }
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// The `[table]` header governing 1-based `line`, unless that line is itself a header.
fn section_of_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let idx = line.checked_sub(1)?;
    if lines.get(idx)?.trim_start().starts_with('[') {
        return None;
    }
    lines[..idx].iter().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?;
        let end = inner.find(']')?;
        Some(
            inner[..end]
                .trim_matches(|c| c == '[' || c == ' ')
                .to_owned(),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.sip.listen.len(), 2);
        assert_eq!(c.sip.realm, None, "the box makes its own realm");
        assert_eq!(c.registrar.default_expires, 600);
        assert_eq!(c.store.data_dir, PathBuf::from("/data"));
        assert_eq!(c.admin.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(c.demo.extensions.is_empty());
    }

    #[test]
    fn digest_is_md5_alone_unless_sha256_is_configured() {
        use pbx_core::sip::auth::Algorithm;
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.auth.parsed_algorithms(), [Algorithm::Md5]);
        assert_eq!(Config::demo().auth.parsed_algorithms(), [Algorithm::Md5]);
        let c = Config::from_toml_str("[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n").unwrap();
        assert_eq!(
            c.auth.parsed_algorithms(),
            [Algorithm::Sha256, Algorithm::Md5]
        );
        let c = Config::from_toml_str("[auth]\nalgorithms = [\"sha-256\"]\n").unwrap();
        assert_eq!(c.auth.parsed_algorithms(), [Algorithm::Sha256]);
    }

    #[test]
    fn demo_config_parses_and_validates() {
        let c = Config::demo();
        assert_eq!(
            c.sip.listen,
            vec![
                "127.0.0.1:5060".parse::<SocketAddr>().unwrap(),
                "[::1]:5060".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(c.store.data_dir, PathBuf::from("./outpost-data"));
        assert_eq!(c.admin.socket, PathBuf::from(DEMO_SOCKET));
        assert_eq!(c.demo.extensions, ["100", "101", "102", "103"]);
    }

    #[test]
    fn unknown_key_names_key_line_and_section() {
        let text = "[sip]\nrealm = \"x\"\n\n[registrar]\nmin_expires = 60\nmax_expiry = 10\n";
        let err = Config::from_toml_str(text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 6"), "{msg}");
        assert!(msg.contains("`max_expiry`"), "{msg}");
        assert!(msg.contains("[registrar]"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn unknown_section_is_reported_with_line() {
        let err = Config::from_toml_str("[sip]\nrealm = \"x\"\n[firewal]\nx = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("`firewal`"), "{msg}");
    }

    #[test]
    fn load_reports_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, "[sip]\nlisten = [\"not-an-address\"]\n").unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert!(msg.contains("outpost.toml"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");

        let missing = Config::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Io { .. }));
    }

    #[test]
    fn load_accepts_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(
            &path,
            "[sip]\nlisten = [\"0.0.0.0:5070\"]\n[registrar]\nmax_contacts = 3\n\
             [media]\naddrs = [\"192.0.2.10\"]\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.sip.listen, vec!["0.0.0.0:5070".parse().unwrap()]);
        assert_eq!(c.sip.realm, None);
        assert_eq!(c.registrar.max_contacts, 3);
        assert_eq!(c.registrar.max_expires, 3600);
    }

    fn invalid_key(c: &Config) -> String {
        match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn management_networks_parse_validate_and_name_the_key() {
        let c = Config::from_toml_str(
            "[management]\nnetworks = [\"192.168.10.0/24\", \"fd00:1::/64\", \"10.9.8.7\"]\n",
        )
        .unwrap();
        let shown: Vec<String> = c
            .management
            .networks
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["192.168.10.0/24", "fd00:1::/64", "10.9.8.7/32"]);
        // The default is the office side, v4 and v6.
        let d = Config::default().management.networks;
        assert!(d.contains(&"10.0.0.0/8".parse().unwrap()));
        assert!(d.contains(&"fe80::/10".parse().unwrap()));
        assert_eq!(d.len(), 8);
        // A bad network is a parse error at its line, naming the problem.
        let err = Config::from_toml_str("[management]\nnetworks = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("\"33\" for 10.0.0.0"),
            "{err}"
        );
        let err = Config::from_toml_str("[management]\nnetworks = [\"office\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("office"), "{err}");
        assert!(Config::from_toml_str("[management]\nnetwork = []\n").is_err());
        let mut c = Config::default();
        c.management.networks.clear();
        assert_eq!(invalid_key(&c), "management.networks");
        let mut c = Config::default();
        c.management.networks = (0..65u8)
            .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
            .collect();
        assert_eq!(invalid_key(&c), "management.networks");
        // A management port shared with SIP would let the zone drop SIP over TCP.
        let mut c = Config::default();
        c.metrics.listen = Some("0.0.0.0:5060".parse().unwrap());
        assert_eq!(invalid_key(&c), "metrics.listen");
        let mut c = Config::default();
        c.ssh.enabled = true;
        c.ssh.listen = vec!["0.0.0.0:5060".parse().unwrap()];
        assert_eq!(invalid_key(&c), "ssh.listen");
        c.ssh.enabled = false;
        c.validate().unwrap();
    }

    #[test]
    fn the_management_zone_guards_the_ports_of_the_listeners_that_run() {
        let mut c = Config::default();
        assert!(
            c.management_zone().ports.is_empty(),
            "SSH and metrics are off"
        );
        c.ssh.enabled = true;
        c.ssh.listen = vec!["0.0.0.0:22".parse().unwrap(), "[::]:2222".parse().unwrap()];
        c.metrics.listen = Some("192.168.1.1:9100".parse().unwrap());
        let zone = c.management_zone();
        assert_eq!(zone.ports, [22, 2222, 9100]);
        assert_eq!(zone.networks, c.management.networks);
        assert!(!zone
            .ports
            .iter()
            .any(|p| c.sip.listen.iter().any(|l| l.port() == *p)));
        assert_eq!(c.firewall_surroundings().management, zone);
        c.ssh.enabled = false;
        assert_eq!(c.management_zone().ports, [9100]);
        c.web.listen = vec!["0.0.0.0:443".parse().unwrap(), "[::]:443".parse().unwrap()];
        assert_eq!(c.management_zone().ports, [443, 9100]);
        c.provision.listen = vec!["0.0.0.0:8080".parse().unwrap()];
        assert_eq!(c.management_zone().ports, [443, 8080, 9100]);
        c.provision.listen = vec!["[::]:443".parse().unwrap()];
        assert_eq!(invalid_key(&c), "provision.listen");
        c.provision.listen = vec!["0.0.0.0:5060".parse().unwrap()];
        assert_eq!(invalid_key(&c), "provision.listen");
        c.provision.listen.clear();
        c.web.listen = vec!["0.0.0.0:5060".parse().unwrap()];
        assert_eq!(invalid_key(&c), "web.listen");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let mut c = Config::default();
        c.registrar.default_expires = 30;
        assert_eq!(invalid_key(&c), "registrar.default_expires");

        let mut c = Config::default();
        c.registrar.max_expires = 10;
        assert_eq!(invalid_key(&c), "registrar.max_expires");

        let mut c = Config::default();
        c.sip.listen.clear();
        assert_eq!(invalid_key(&c), "sip.listen");

        let mut c = Config::default();
        c.sip.realm = Some("out post".into());
        assert_eq!(invalid_key(&c), "sip.realm");

        let mut c = Config::default();
        c.sip.realm = Some(String::new());
        assert_eq!(invalid_key(&c), "sip.realm");

        let mut c = Config::default();
        c.sip.user_agent = "Outpost\r\nX-Evil: 1".into();
        assert_eq!(invalid_key(&c), "sip.user_agent");

        let mut c = Config::default();
        c.log.level = "loud".into();
        assert_eq!(invalid_key(&c), "log.level");

        let mut c = Config::default();
        c.admin.socket = PathBuf::from("/".repeat(200));
        assert_eq!(invalid_key(&c), "admin.socket");

        let mut c = Config::default();
        c.demo.extensions = vec!["100".into(), "10 1".into()];
        assert_eq!(invalid_key(&c), "demo.extensions");

        let mut c = Config::default();
        c.demo.extensions = vec!["100".into(), "100".into()];
        assert_eq!(invalid_key(&c), "demo.extensions");

        let mut c = Config::default();
        c.log.level = "info,firmware=debug".into();
        c.validate().unwrap();
    }

    #[test]
    fn invalid_values_in_file_are_rejected_with_key() {
        let err = Config::from_toml_str("[registrar]\nmin_expires = 4000\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("registrar.max_expires"), "{msg}");
    }

    #[test]
    fn connection_limits_read_from_toml_and_bad_ones_name_their_key() {
        let c = Config::from_toml_str(
            "[firewall.connections]\nper_source = 8\nidle_secs = 20\nkernel = \"count\"\n",
        )
        .unwrap();
        let l = c.firewall.connections.limits();
        assert_eq!((l.per_source, l.per_source_authenticated), (8, 256));
        assert_eq!((l.max, l.reserved_authenticated), (4_096, 1_024));
        assert_eq!(l.idle, std::time::Duration::from_secs(20));
        assert_eq!(l.first_message, std::time::Duration::from_secs(10));
        assert_eq!(c.firewall.connections.kernel, KernelConnLimit::Count);
        assert_eq!(
            Config::default().firewall.connections.kernel,
            KernelConnLimit::SynRate
        );
        assert!(Config::from_toml_str("[firewall.connections]\nkernel = true\n").is_err());
        for (toml, key) in [
            ("per_source = 0", "firewall.connections.per_source"),
            (
                "per_source = 32\nper_source_authenticated = 16",
                "firewall.connections.per_source_authenticated",
            ),
            (
                "max = 64\nreserved_authenticated = 64",
                "firewall.connections.reserved_authenticated",
            ),
            ("message_secs = 0", "firewall.connections.message_secs"),
            ("idle_secs = 100000", "firewall.connections.idle_secs"),
        ] {
            let msg = Config::from_toml_str(&format!("[firewall.connections]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{toml}: {msg}");
        }
        assert!(Config::from_toml_str("[firewall.connections]\nper_sorce = 3\n").is_err());
    }

    #[test]
    fn feeds_are_files_or_https_urls_with_sane_timers() {
        let c = Config::from_toml_str(
            "[firewall]\nfeeds = [{ source = \"/etc/outpost/drop.txt\", refresh_secs = 2, ban_secs = 600 }]\n",
        )
        .unwrap();
        assert_eq!(c.firewall.feeds.len(), 1);
        assert_eq!(c.firewall.feeds[0].refresh_secs, 2);
        assert_eq!(c.firewall.feeds[0].ban_secs, 600);
        let c = Config::from_toml_str(
            "[[firewall.feeds]]\nsource = \"/var/lib/outpost/a.json\"\n\
             [[firewall.feeds]]\nsource = \"/var/lib/outpost/b.txt\"\n",
        )
        .unwrap();
        assert_eq!(c.firewall.feeds.len(), 2);
        assert_eq!(
            (
                c.firewall.feeds[1].refresh_secs,
                c.firewall.feeds[1].ban_secs
            ),
            (3_600, 86_400),
            "defaults: hourly reads, one-day bans"
        );

        let https = Config::from_toml_str(
            "[firewall]\nfeeds = [{ source = \"https://lists.example/drop.txt\", ca = \"/etc/outpost/feed-ca.pem\" }]\n",
        )
        .unwrap();
        assert_eq!(
            https.firewall.feeds[0].source,
            "https://lists.example/drop.txt"
        );
        let msg = Config::from_toml_str(
            "[firewall]\nfeeds = [{ source = \"http://lists.example/drop.txt\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("firewall.feeds[0].source"), "{msg}");
        assert!(msg.contains("plain HTTP feeds are refused"), "{msg}");

        let feed = |source: &str, refresh_secs: u64, ban_secs: u64| {
            let mut c = Config::default();
            c.firewall.feeds = vec![FeedConfig {
                source: source.into(),
                ca: None,
                refresh_secs,
                ban_secs,
            }];
            c
        };
        assert_eq!(
            invalid_key(&feed("drop.txt", 60, 600)),
            "firewall.feeds[0].source"
        );
        assert_eq!(
            invalid_key(&feed("ftp://x/y", 60, 600)),
            "firewall.feeds[0].source"
        );
        assert_eq!(
            invalid_key(&feed("https://user:pw@lists.example/x", 60, 600)),
            "firewall.feeds[0].source",
            "credentials in the URL would be shown by config show and the logs"
        );
        for bad in [
            "https://lists.example:0/x",
            "https://lists.example:http/x",
            "https://[::1/x",
        ] {
            assert_eq!(
                invalid_key(&feed(bad, 60, 600)),
                "firewall.feeds[0].source",
                "{bad}"
            );
        }
        feed("https://[2001:db8::1]:8443/drop.txt", 60, 600)
            .validate()
            .unwrap();
        let mut file_with_ca = feed("/a", 60, 600);
        file_with_ca.firewall.feeds[0].ca = Some(PathBuf::from("/etc/ca.pem"));
        assert_eq!(invalid_key(&file_with_ca), "firewall.feeds[0].ca");
        assert_eq!(
            invalid_key(&feed("/a", 0, 600)),
            "firewall.feeds[0].refresh_secs"
        );
        assert_eq!(
            invalid_key(&feed("/a", 3_600, 60)),
            "firewall.feeds[0].ban_secs",
            "bans shorter than the refresh would lapse"
        );
        feed("/a", 60, 60).validate().unwrap();
        let mut twice = feed("/a", 60, 600);
        twice.firewall.feeds.push(twice.firewall.feeds[0].clone());
        assert_eq!(invalid_key(&twice), "firewall.feeds[1].source");
        assert!(
            Config::from_toml_str("[[firewall.feeds]]\nsource = \"/a\"\nrefresh = 5\n").is_err()
        );
    }

    #[test]
    fn firewall_section_reads_nested_detect_tables_and_rejects_typos() {
        let c = Config::from_toml_str(
            "[firewall]\nenforce = \"off\"\nmonitor = true\nrtp_closed = false\n\
             [firewall.detect]\nallow = [\"192.168.1.0/24\"]\n\
             [firewall.detect.auth_source]\nlimit = 5\n",
        )
        .unwrap();
        assert_eq!(c.firewall.enforce, EnforceMode::Off);
        assert!(c.firewall.monitor_mode());
        assert!(!c.firewall.rtp_closed);
        assert_eq!(c.firewall.detect.allow.len(), 1);
        assert_eq!(c.firewall.detect.auth_source.limit, 5);
        assert_eq!(
            c.firewall.detect.flood.limit, 16,
            "untouched rules keep defaults"
        );
        assert_eq!(c.firewall.table, "outpost");

        let d = Config::from_toml_str("").unwrap();
        assert_eq!(d.firewall.enforce, EnforceMode::Auto);
        assert!(!d.firewall.monitor_mode());

        let msg = Config::from_toml_str("[firewall]\nenforce = \"on\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
        let msg = Config::from_toml_str("[firewall.detect.flood]\nlimt = 3\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`limt`"), "{msg}");
        let mut bad = Config::default();
        bad.firewall.table = "out post".into();
        assert_eq!(invalid_key(&bad), "firewall.table");
    }

    #[test]
    fn socket_path_rule() {
        assert_eq!(
            socket_path_from(Some(PathBuf::from("/tmp/x.sock")), true),
            PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(
            socket_path_from(Some(PathBuf::new()), true),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(socket_path_from(None, true), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(socket_path_from(None, false), PathBuf::from(DEMO_SOCKET));
    }

    #[test]
    fn tls_section_parses_and_names_bad_keys() {
        let c = Config::from_toml_str(
            "[tls]\nlisten = [\"0.0.0.0:5061\"]\ncert = \"/etc/outpost/cert.pem\"\nkey = \"/etc/outpost/key.pem\"\nca = \"/etc/outpost/trunks.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.tls.listen, vec![SocketAddr::from(([0, 0, 0, 0], 5061))]);
        assert_eq!(c.tls.key, Some(PathBuf::from("/etc/outpost/key.pem")));
        assert!(
            Config::default().tls.listen.is_empty(),
            "TLS is off by default"
        );

        let mut bad = Config::default();
        bad.tls.cert = Some(PathBuf::from("/etc/outpost/cert.pem"));
        assert_eq!(invalid_key(&bad), "tls.key");
        let mut bad = Config::default();
        bad.tls.key = Some(PathBuf::from("/etc/outpost/key.pem"));
        assert_eq!(invalid_key(&bad), "tls.cert");
        let mut bad = Config::default();
        bad.tls.listen = vec![bad.sip.listen[0]];
        assert_eq!(invalid_key(&bad), "tls.listen");
        let msg = Config::from_toml_str("[tls]\nlisen = []\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`lisen`"), "{msg}");
    }

    #[test]
    fn program_paths_are_not_configuration() {
        // An old revision naming the programs still loads; the keys are ignored and named.
        let old = "[firewall]\nnft = \"/tmp/evil-nft\"\n[ssh]\ndropbear = \"/tmp/evil\"\ndropbearkey = \"/tmp/k\"\noutpostctl = \"/tmp/c\"\n";
        let c = Config::from_toml_str(old).unwrap();
        assert_eq!(
            c.fixed_keys(),
            [
                "firewall.nft",
                "ssh.dropbear",
                "ssh.dropbearkey",
                "ssh.outpostctl"
            ]
        );
        assert_eq!(c.firewall.nft_config(&c.firewall_surroundings()).nft, "nft");
        // `config apply` refuses each, naming it.
        for (text, key) in [
            ("[firewall]\nnft = \"/tmp/x\"\n", "firewall.nft"),
            ("[ssh]\ndropbear = \"/tmp/x\"\n", "ssh.dropbear"),
            ("[ssh]\ndropbearkey = \"/tmp/x\"\n", "ssh.dropbearkey"),
            ("[ssh]\noutpostctl = \"/tmp/x\"\n", "ssh.outpostctl"),
        ] {
            let err = Config::refuse_fixed_keys(text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("fixed by the firmware image"),
                "{err}"
            );
        }
        assert!(Config::refuse_fixed_keys("[ssh]\nenabled = true\n").is_ok());
        // Nor are they ever written back.
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("/tmp/"), "{text}");
    }

    #[test]
    fn the_system_section_names_its_key_and_refuses_unknown_keys() {
        let c =
            crate::config::Config::from_toml_str("[system]\nhostname = \"berlin-1\"\n").unwrap();
        assert_eq!(c.system.hostname.as_deref(), Some("berlin-1"));
        assert_eq!(crate::system::hostname(&c.system), "berlin-1");
        let msg = crate::config::Config::from_toml_str("[system]\nhostname = \"berlin_1\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("system.hostname"), "{msg}");
        let msg = crate::config::Config::from_toml_str("[system]\nhost = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`host`"), "{msg}");
        assert_eq!(
            crate::config::Config::default().system.hostname,
            None,
            "the box keeps the name it booted with unless one is configured"
        );
    }
}

/// The telephony sections (`pbx_config`) as the config file carries them: parsing, the
/// keys their errors name, and the conversion into the call core's types.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod telephony_tests {
    use crate::config::{Config, ConfigError};

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!(
            "[sip]\nlisten = [\"127.0.0.1:5060\"]\n[demo]\nextensions = []\n{extra}"
        ))
    }

    fn invalid_key(extra: &str) -> String {
        match parse(extra) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    const TRUNK: &str = "[[trunk]]\nname = \"p1\"\nhost = \"192.0.2.10\"\nusername = \"4930100\"\npassword = \"pw\"\n";

    #[test]
    fn park_settings_are_held_to_their_ranges_and_orbits_to_their_own_numbers() {
        assert_eq!(
            invalid_key("[features]\npark_slots = 0\n"),
            "features.park_slots"
        );
        assert_eq!(
            invalid_key("[features]\npark_slots = 101\n"),
            "features.park_slots"
        );
        assert_eq!(
            invalid_key("[features]\npark_first = 0\n"),
            "features.park_first"
        );
        assert_eq!(
            invalid_key("[features]\npark_timeout_secs = 5\n"),
            "features.park_timeout_secs"
        );
        assert_eq!(invalid_key("[features]\npark = \"*7x\"\n"), "features.park");
        assert_eq!(
            invalid_key("[[ring_group]]\nnumber = \"703\"\nmembers = [\"100\"]\n"),
            "features.park_first"
        );
        let cfg = parse("[features]\npark = \"\"\npark_first = 800\npark_slots = 2\n").unwrap();
        let f = crate::pbx_config::features(&cfg.features);
        assert_eq!((f.park.as_str(), f.park_first, f.park_slots), ("", 800, 2));
        assert_eq!(f.park_timeout_ms, 120_000);
    }

    #[test]
    fn the_conference_number_is_a_dial_string_of_its_own_and_empty_turns_it_off() {
        assert_eq!(
            invalid_key("[features]\nconference = \"*3a\"\n"),
            "features.conference"
        );
        assert_eq!(
            invalid_key("[[paging]]\nnumber = \"*3\"\nmembers = [\"101\"]\n"),
            "paging[0].number"
        );
        let f = crate::pbx_config::features(&parse("").unwrap().features);
        assert_eq!(f.conference, "*3");
        let cfg = parse("[features]\nconference = \"\"\n").unwrap();
        assert_eq!(crate::pbx_config::features(&cfg.features).conference, "");
    }

    #[test]
    fn paging_groups_parse_and_their_numbers_and_members_are_checked() {
        let cfg = parse("[[paging]]\nnumber = \"*80\"\nmembers = [\"101\", \"102\"]\n").unwrap();
        let groups = crate::pbx_config::paging_groups(&cfg.paging);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (groups[0].number.as_str(), groups[0].members.len()),
            ("*80", 2)
        );
        for (extra, key) in [
            ("[[paging]]\nnumber = \"8x\"\nmembers = [\"101\"]\n", "paging[0].number"),
            ("[[paging]]\nnumber = \"*80\"\nmembers = []\n", "paging[0].members"),
            (
                "[[paging]]\nnumber = \"*80\"\nmembers = [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\"]\n",
                "paging[0].members",
            ),
            ("[[paging]]\nnumber = \"*80\"\nmembers = [\"101\", \"101\"]\n", "paging[0].members"),
            (
                "[[ring_group]]\nnumber = \"600\"\nmembers = [\"100\"]\n[[paging]]\nnumber = \"600\"\nmembers = [\"101\"]\n",
                "paging[0].number",
            ),
            ("[[paging]]\nnumber = \"*70\"\nmembers = [\"101\"]\n", "paging[0].number"),
            ("[[paging]]\nnumber = \"701\"\nmembers = [\"101\"]\n", "paging[0].number"),
            (
                "[[paging]]\nnumber = \"*80\"\nmembers = [\"101\"]\n[[paging]]\nnumber = \"*80\"\nmembers = [\"102\"]\n",
                "paging[1].number",
            ),
        ] {
            assert_eq!(invalid_key(extra), key, "{extra}");
        }
    }

    #[test]
    fn a_full_telephony_config_parses_and_converts() {
        let cfg = parse(&format!(
            "{TRUNK}[[trunk]]\nname = \"p2\"\nhost = \"192.0.2.11:5070\"\ntransport = \"tls\"\nregister = false\n\
             [[route]]\nname = \"national\"\npatterns = [\"0[1-9]X.\"]\ntrunks = [\"p1\", \"p2\"]\n\
             [inbound]\ndids = {{ \"4930100\" = \"ext:100\" }}\ndefault = \"ivr:500\"\n\
             [[ring_group]]\nnumber = \"600\"\nmembers = [\"100\", \"101\"]\nstrategy = \"in_order\"\n"
        ))
        .unwrap();
        // IP literals need no lookup: the firewall knows them without DNS.
        let site = cfg.firewall_surroundings();
        assert_eq!(
            site.trunks[0].addrs,
            vec!["192.0.2.10:5060".parse().unwrap()]
        );
        assert_eq!(
            site.trunks[1].addrs,
            vec!["192.0.2.11:5070".parse().unwrap()]
        );
        let t1 = cfg.trunk[0].to_core(site.trunks[0].addrs.clone());
        assert_eq!(t1.targets, vec!["192.0.2.10:5060".parse().unwrap()]);
        assert_eq!(t1.domain, "192.0.2.10");
        assert_eq!(t1.silence_timeout_ms, 2_000);
        let t2 = cfg.trunk[1].to_core(Vec::new());
        assert_eq!(t2.transport, pbx_core::sip::Transport::Tls);
        assert!(!t2.register);
        let plan = crate::pbx_config::dialplan(&cfg.route, &cfg.inbound, &cfg.dialplan);
        let out = plan.outbound("100", "0301234567").unwrap();
        assert_eq!(out.trunks, vec!["p1".to_string(), "p2".to_string()]);
        assert!(plan.is_emergency("112"));
        assert_eq!(
            plan.inbound("4930100"),
            Some(pbx_core::dialplan::Target::Extension("100".into()))
        );
        let groups = crate::pbx_config::ring_groups(&cfg.ring_group);
        assert_eq!(
            groups[0].strategy,
            pbx_core::endpoint::RingStrategy::InOrder
        );
        assert_eq!(groups[0].timeout_ms, 60_000);
    }

    #[test]
    fn mistakes_name_the_key() {
        assert_eq!(
            invalid_key("[[route]]\nname = \"r\"\npatterns = [\"0X.\"]\ntrunks = [\"nope\"]\n"),
            "route[0].trunks"
        );
        assert_eq!(
            invalid_key(&format!(
                "{TRUNK}[[route]]\nname = \"r\"\npatterns = [\"0[X\"]\ntrunks = [\"p1\"]\n"
            )),
            "route[0].patterns"
        );
        assert_eq!(invalid_key(&format!("{TRUNK}{TRUNK}")), "trunk[1].name");
        assert_eq!(
            invalid_key(
                "[[trunk]]\nname = \"p\"\nhost = \"h\"\ntransport = \"sctp\"\nregister = false\n"
            ),
            "trunk[0].transport"
        );
        for bad in [
            "inbound_from = [\"203.0.113.0/33\"]",
            "inbound_from = [\"far.away\"]",
        ] {
            assert_eq!(
                invalid_key(&format!(
                    "[[trunk]]\nname = \"p\"\nhost = \"h\"\nregister = false\n{bad}\n"
                )),
                "trunk[0].inbound_from",
                "{bad}"
            );
        }
        assert_eq!(
            invalid_key(
                "[[trunk]]\nname = \"p\"\nhost = \"h\"\nregister = false\ninbound_calls_per_second = 20000\n"
            ),
            "trunk[0].inbound_calls_per_second"
        );
        assert_eq!(
            invalid_key("[[trunk]]\nname = \"p\"\nhost = \"h\"\n"),
            "trunk[0].username"
        );
        assert_eq!(
            invalid_key("[inbound]\ndids = { \"4930\" = \"fax:1\" }\n"),
            "inbound.dids.4930"
        );
        assert_eq!(
            invalid_key("[[ring_group]]\nnumber = \"600\"\nmembers = []\n"),
            "ring_group[0].members"
        );
        assert_eq!(
            invalid_key("[dialplan]\nemergency = [\"11a\"]\n"),
            "dialplan.emergency"
        );
    }

    #[test]
    fn the_watchdog_timeout_is_held_to_what_the_boards_watchdog_accepts() {
        let board = |profile: &str, timeout: u64| {
            let mut c = Config::default();
            c.panel.backend = "linux".into();
            c.panel.profile = profile.into();
            c.watchdog.timeout_secs = timeout;
            c
        };
        // The Pi's bcm2835 watchdog stops at 15 s: its profile says so, once.
        assert!(board("rpi4", 15).validate().is_ok());
        let err = board("rpi4", 30).validate().unwrap_err().to_string();
        assert!(err.contains("watchdog.timeout_secs"), "{err}");
        assert!(
            err.contains("rpi4") && err.contains("at most 15 s"),
            "{err}"
        );
        assert!(board("qemu-virt", 300).validate().is_ok());
        // Without the board (the demo, a simulated panel) only the general range applies.
        let mut demo = board("rpi4", 30);
        demo.panel.backend = "sim".into();
        assert!(demo.validate().is_ok());
        // The device comes from the board's profile unless set.
        assert_eq!(
            board("rpi4", 15).watchdog_device(),
            Some(std::path::PathBuf::from("/dev/watchdog"))
        );
        assert_eq!(demo.watchdog_device(), None);
        let mut own = board("rpi4", 15);
        own.watchdog.device = Some(std::path::PathBuf::from("/dev/watchdog1"));
        assert_eq!(
            own.watchdog_device(),
            Some(std::path::PathBuf::from("/dev/watchdog1"))
        );
    }
}
