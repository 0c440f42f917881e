//! Configuration of how calls leave and enter the office: `[[trunk]]`, `[[route]]`,
//! `[inbound]`, `[dialplan]`, `[[ring_group]]` and `[features]`, with their validation and
//! their conversion into the call core's types.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use pbx_core::dialplan::{Dialplan, Pattern, Route, Target};
use pbx_core::endpoint::{FeatureCodes, PagingGroup, RingGroup, RingStrategy};
use pbx_core::sip::Transport;
use pbx_core::trunk::{IpNet, TrunkConfig, MAX_INBOUND_FROM};

/// Most trunks, routes and groups a box takes (each is small; this bounds config mistakes).
const MAX_ENTRIES: usize = 64;

/// One `[[trunk]]`: a SIP provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSection {
    /// Short name used by routes and `outpostctl trunks`.
    pub name: String,
    /// Registrar/proxy: an address, `address:port`, a domain (RFC 3263: NAPTR, SRV, A/AAAA)
    /// or `name:port` (A/AAAA only); names are looked up in the background (`dns`).
    pub host: String,
    /// `udp`, `tcp` or `tls`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// Domain for Request-URIs, From and To; default: `host` without the port.
    #[serde(default)]
    pub domain: Option<String>,
    /// Register with the provider (false: an IP-authenticated trunk).
    #[serde(default = "default_true")]
    pub register: bool,
    /// Account (AOR user).
    #[serde(default)]
    pub username: String,
    /// Authentication user when it differs from `username`.
    #[serde(default)]
    pub auth_username: Option<String>,
    /// Account password (keep this file mode 0600; it is never logged).
    #[serde(default)]
    pub password: String,
    /// Registration interval asked for.
    #[serde(default = "default_expires")]
    pub expires_secs: u32,
    /// OPTIONS ping interval; 0 = no pings.
    #[serde(default = "default_options_interval")]
    pub options_interval_secs: u64,
    /// Missed pings (or a failed registration) before the trunk counts as down.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Answered pings before a down trunk counts as up again.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// Wait after a failed registration before trying again (backs off to 10x).
    #[serde(default = "default_retry")]
    pub retry_secs: u64,
    /// A call that hears nothing at all from the trunk within this time tries the trunk's
    /// next address, then the next trunk; a REGISTER unanswered this long moves a trunk
    /// with several addresses to the next one.
    #[serde(default = "default_silence_ms")]
    pub silence_timeout_ms: u64,
    /// Caller-ID presented on this trunk unless the route or extension has one.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Server name checked in the provider's TLS certificate; default: `domain`.
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Other addresses or networks the provider sends requests from, any source port, still
    /// over `transport` (e.g. `["203.0.113.0/28"]`); by default a request is the trunk's
    /// only from `host`'s address (over UDP, also its port).
    #[serde(default)]
    pub inbound_from: Vec<String>,
    /// Inbound call attempts (INVITEs) per second from this trunk; more get 503 with
    /// Retry-After, are counted and alerted (once a minute). 0 = no cap.
    #[serde(default = "default_inbound_cps")]
    pub inbound_calls_per_second: u32,
}

fn default_transport() -> String {
    "udp".to_string()
}
fn default_true() -> bool {
    true
}
fn default_expires() -> u32 {
    600
}
fn default_options_interval() -> u64 {
    30
}
fn default_down_after() -> u32 {
    2
}
fn default_up_after() -> u32 {
    2
}
fn default_retry() -> u64 {
    30
}
fn default_silence_ms() -> u64 {
    2_000
}
fn default_inbound_cps() -> u32 {
    10
}

/// One `[[route]]`: numbers that leave through trunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Name shown in CDRs and logs.
    pub name: String,
    /// Dial patterns, e.g. `["0[1-9]X."]` (X = any digit, Z = 1-9, N = 2-9, `.` = more).
    pub patterns: Vec<String>,
    /// Trunks in order of preference.
    pub trunks: Vec<String>,
    /// Leading digits removed before sending.
    #[serde(default)]
    pub strip: usize,
    /// Digits put in front after stripping.
    #[serde(default)]
    pub prepend: String,
    /// Extensions allowed to use the route; empty = all.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Caller-ID for calls on this route.
    #[serde(default)]
    pub caller_id: Option<String>,
}

/// `[inbound]`: where calls from trunks go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundSection {
    /// DID -> target (`ext:100`, `group:600`, `ivr:500`, `voicemail:100`, `hangup`).
    pub dids: BTreeMap<String, String>,
    /// Target for DIDs not listed; none = the call is refused (404).
    pub default: Option<String>,
}

/// `[dialplan]`: numbers that are always allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialplanSection {
    /// Emergency numbers: always allowed, never limited, tried on every trunk.
    pub emergency: Vec<String>,
}

impl Default for DialplanSection {
    fn default() -> Self {
        DialplanSection {
            emergency: ["112", "911", "999"].map(String::from).to_vec(),
        }
    }
}

/// One `[[ring_group]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingGroupSection {
    /// The number that rings the group.
    pub number: String,
    /// Member extensions (hunting order for `in_order`).
    pub members: Vec<String>,
    /// `simultaneous` or `in_order`.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// In order: seconds each member rings.
    #[serde(default = "default_member_secs")]
    pub member_timeout_secs: u64,
    /// Seconds the group rings in total.
    #[serde(default = "default_group_secs")]
    pub timeout_secs: u64,
    /// Mailbox taking a message when nobody answers.
    #[serde(default)]
    pub voicemail: Option<String>,
}

/// Most members of one `[[paging]]` group: as many as phones one page reaches (the relay's
/// mix holds 8 legs, the caller's and 7; a member with several phones counts each).
pub const MAX_PAGING_MEMBERS: usize = pbx_core::endpoint::MAX_PAGED;

/// One `[[paging]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingSection {
    /// The number extensions dial to page (`*80`).
    pub number: String,
    /// Member extensions (1 to [`MAX_PAGING_MEMBERS`]).
    pub members: Vec<String>,
    /// A paged phone that has not answered by then (no auto-answer) is cancelled, 1-60 s.
    #[serde(default = "default_page_ring_secs")]
    pub ring_secs: u64,
}

fn default_page_ring_secs() -> u64 {
    pbx_core::endpoint::PAGE_RING_MS / 1000
}

fn default_strategy() -> String {
    "simultaneous".to_string()
}
fn default_member_secs() -> u64 {
    15
}
fn default_group_secs() -> u64 {
    60
}

/// `[features]`: feature codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesSection {
    /// Picks up a call ringing any extension.
    pub pickup: String,
    /// Followed by an extension: picks up the call ringing it.
    pub directed_pickup: String,
    /// Call park: transfer a call here and it waits in the first free orbit ("" = off).
    pub park: String,
    /// The first orbit's number; the orbits are `park_first` .. `park_first + park_slots - 1`.
    pub park_first: u32,
    /// Orbits (calls parked at once), 1-100.
    pub park_slots: u32,
    /// A parked call rings back the phone that parked it after this long, 10-3600 s.
    pub park_timeout_secs: u64,
    /// Turns do-not-disturb on for the extension dialling it.
    pub dnd_on: String,
    /// Turns do-not-disturb off.
    pub dnd_off: String,
    /// The conference number: an extension's phone dials it (or names it as its network
    /// conference URI) to join its calls into one conference ("" = off).
    pub conference: String,
}

impl Default for FeaturesSection {
    fn default() -> Self {
        let d = FeatureCodes::default();
        FeaturesSection {
            pickup: d.pickup,
            directed_pickup: d.directed_pickup,
            park: d.park,
            park_first: d.park_first,
            park_slots: d.park_slots,
            park_timeout_secs: d.park_timeout_ms / 1000,
            dnd_on: d.dnd_on,
            dnd_off: d.dnd_off,
            conference: d.conference,
        }
    }
}

/// Why a telephony section is invalid: (dotted key, reason).
pub type Invalid = (String, String);

fn bad(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    (key.into(), reason.into())
}

/// True for a dial string: digits, `*`, `#`, an optional leading `+`, 1-32 characters.
pub fn is_dial_string(s: &str) -> bool {
    let body = s.strip_prefix('+').unwrap_or(s);
    !body.is_empty()
        && s.len() <= 32
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
}

impl TrunkSection {
    fn transport(&self) -> Option<Transport> {
        match self.transport.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }

    /// `host` without a port.
    fn host_name(&self) -> String {
        if let Ok(addr) = self.host.parse::<SocketAddr>() {
            return addr.ip().to_string();
        }
        match self.host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h.to_string(),
            _ => self.host.trim_matches(['[', ']']).to_string(),
        }
    }

    /// The domain used in URIs.
    pub fn domain(&self) -> String {
        self.domain.clone().unwrap_or_else(|| self.host_name())
    }

    fn check(&self, key: &str) -> Result<(), Invalid> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(bad(
                format!("{key}.name"),
                "use 1-32 letters, digits, '-' or '_'",
            ));
        }
        if self.host.is_empty() || self.host.len() > 253 {
            return Err(bad(format!("{key}.host"), "must be a host name or address"));
        }
        if self.transport().is_none() {
            return Err(bad(format!("{key}.transport"), "must be udp, tcp or tls"));
        }
        if self.register && (self.username.is_empty() || self.password.is_empty()) {
            return Err(bad(
                format!("{key}.username"),
                "a registering trunk needs username and password",
            ));
        }
        let user_ok = |u: &str| {
            u.len() <= 64
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/%".contains(c))
        };
        if !user_ok(&self.username) {
            return Err(bad(
                format!("{key}.username"),
                "contains characters a SIP URI cannot carry",
            ));
        }
        if !(60..=86_400).contains(&self.expires_secs) {
            return Err(bad(
                format!("{key}.expires_secs"),
                "must be between 60 and 86400",
            ));
        }
        if self.options_interval_secs > 3600 {
            return Err(bad(
                format!("{key}.options_interval_secs"),
                "must be at most 3600",
            ));
        }
        if !(1..=100).contains(&self.down_after) || !(1..=100).contains(&self.up_after) {
            return Err(bad(
                format!("{key}.down_after"),
                "down_after and up_after must be 1-100",
            ));
        }
        if !(1..=3600).contains(&self.retry_secs) {
            return Err(bad(
                format!("{key}.retry_secs"),
                "must be between 1 and 3600",
            ));
        }
        if !(200..=60_000).contains(&self.silence_timeout_ms) {
            return Err(bad(
                format!("{key}.silence_timeout_ms"),
                "must be between 200 and 60000",
            ));
        }
        if let Some(cid) = &self.caller_id {
            if !is_dial_string(cid) {
                return Err(bad(format!("{key}.caller_id"), "must be a number"));
            }
        }
        if self.inbound_from.len() > MAX_INBOUND_FROM {
            return Err(bad(
                format!("{key}.inbound_from"),
                format!("at most {MAX_INBOUND_FROM} networks"),
            ));
        }
        for net in &self.inbound_from {
            net.parse::<IpNet>()
                .map_err(|e| bad(format!("{key}.inbound_from"), e))?;
        }
        if self.inbound_calls_per_second > 10_000 {
            return Err(bad(
                format!("{key}.inbound_calls_per_second"),
                "must be at most 10000 (0 = no cap)",
            ));
        }
        Ok(())
    }

    /// The `inbound_from` networks (those that parse; `check` refused the others).
    pub fn inbound_nets(&self) -> Vec<IpNet> {
        self.inbound_from
            .iter()
            .filter_map(|n| n.parse().ok())
            .take(MAX_INBOUND_FROM)
            .collect()
    }

    /// The trunk's transport (UDP when the configuration says something else; `check`
    /// refuses that).
    pub fn transport_kind(&self) -> Transport {
        self.transport().unwrap_or(Transport::Udp)
    }

    /// The call core's view of this trunk with its host's addresses (`dns::TrunkDns`;
    /// empty while the host has not resolved).
    pub fn to_core(&self, targets: Vec<SocketAddr>) -> TrunkConfig {
        TrunkConfig {
            name: self.name.clone(),
            domain: self.domain(),
            transport: self.transport_kind(),
            targets,
            register: self.register,
            username: self.username.clone(),
            auth_username: self.auth_username.clone(),
            password: self.password.clone(),
            expires_secs: self.expires_secs,
            options_interval_ms: self.options_interval_secs.saturating_mul(1000),
            down_after: self.down_after,
            up_after: self.up_after,
            retry_ms: self.retry_secs.saturating_mul(1000),
            caller_id: self.caller_id.clone(),
            silence_timeout_ms: self.silence_timeout_ms,
            inbound_from: self.inbound_nets(),
            inbound_calls_per_second: self.inbound_calls_per_second,
        }
    }

    /// Server name for the TLS certificate check.
    pub fn tls_name(&self) -> String {
        self.tls_name.clone().unwrap_or_else(|| self.domain())
    }
}

/// Validates the telephony sections together (names referenced by routes exist, ...).
pub fn validate(
    trunks: &[TrunkSection],
    routes: &[RouteSection],
    inbound: &InboundSection,
    dialplan: &DialplanSection,
    groups: &[RingGroupSection],
    paging: &[PagingSection],
    features: &FeaturesSection,
) -> Result<(), Invalid> {
    for (list, name) in [
        (trunks.len(), "trunk"),
        (routes.len(), "route"),
        (groups.len(), "ring_group"),
        (paging.len(), "paging"),
    ] {
        if list > MAX_ENTRIES {
            return Err(bad(name, format!("at most {MAX_ENTRIES} entries")));
        }
    }
    let mut names = HashSet::new();
    for (i, t) in trunks.iter().enumerate() {
        t.check(&format!("trunk[{i}]"))?;
        if !names.insert(t.name.as_str()) {
            return Err(bad(
                format!("trunk[{i}].name"),
                format!("{:?} is used twice", t.name),
            ));
        }
    }
    for (i, r) in routes.iter().enumerate() {
        let key = format!("route[{i}]");
        if r.patterns.is_empty() {
            return Err(bad(format!("{key}.patterns"), "needs at least one pattern"));
        }
        for p in &r.patterns {
            Pattern::parse(p).map_err(|e| bad(format!("{key}.patterns"), format!("{p:?}: {e}")))?;
        }
        if r.trunks.is_empty() {
            return Err(bad(format!("{key}.trunks"), "needs at least one trunk"));
        }
        if let Some(t) = r.trunks.iter().find(|t| !names.contains(t.as_str())) {
            return Err(bad(
                format!("{key}.trunks"),
                format!("no trunk named {t:?}"),
            ));
        }
        if !r.prepend.is_empty() && !is_dial_string(&r.prepend) {
            return Err(bad(format!("{key}.prepend"), "must be digits"));
        }
        if let Some(cid) = &r.caller_id {
            if !is_dial_string(cid) {
                return Err(bad(format!("{key}.caller_id"), "must be a number"));
            }
        }
    }
    for (did, target) in &inbound.dids {
        if !is_dial_string(did) {
            return Err(bad(format!("inbound.dids.{did}"), "a DID must be a number"));
        }
        target
            .parse::<Target>()
            .map_err(|e| bad(format!("inbound.dids.{did}"), e.to_string()))?;
    }
    if let Some(d) = &inbound.default {
        d.parse::<Target>()
            .map_err(|e| bad("inbound.default", e.to_string()))?;
    }
    if let Some(e) = dialplan.emergency.iter().find(|e| !is_dial_string(e)) {
        return Err(bad("dialplan.emergency", format!("{e:?} is not a number")));
    }
    for (i, g) in groups.iter().enumerate() {
        let key = format!("ring_group[{i}]");
        if !is_dial_string(&g.number) {
            return Err(bad(format!("{key}.number"), "must be a number"));
        }
        if g.members.is_empty() || g.members.len() > 100 {
            return Err(bad(format!("{key}.members"), "needs 1-100 extensions"));
        }
        if !matches!(g.strategy.as_str(), "simultaneous" | "in_order") {
            return Err(bad(
                format!("{key}.strategy"),
                "must be simultaneous or in_order",
            ));
        }
        if !(1..=600).contains(&g.member_timeout_secs) || !(1..=3600).contains(&g.timeout_secs) {
            return Err(bad(
                format!("{key}.timeout_secs"),
                "member_timeout_secs must be 1-600 and timeout_secs 1-3600",
            ));
        }
    }
    for (key, code) in [
        ("features.pickup", &features.pickup),
        ("features.directed_pickup", &features.directed_pickup),
        ("features.park", &features.park),
        ("features.dnd_on", &features.dnd_on),
        ("features.dnd_off", &features.dnd_off),
        ("features.conference", &features.conference),
    ] {
        if !code.is_empty() && !is_dial_string(code) {
            return Err(bad(key, "must be digits, * or #"));
        }
    }
    if !(1..=100).contains(&features.park_slots) {
        return Err(bad("features.park_slots", "must be 1-100"));
    }
    if features.park_first == 0
        || features
            .park_first
            .checked_add(features.park_slots)
            .is_none_or(|end| end > 99_999_999)
    {
        return Err(bad(
            "features.park_first",
            "must be a number from 1, with room for park_slots orbits",
        ));
    }
    if !(10..=3600).contains(&features.park_timeout_secs) {
        return Err(bad("features.park_timeout_secs", "must be 10-3600"));
    }
    let orbits = features.park_first..features.park_first + features.park_slots;
    validate_paging(paging, groups, features, &orbits)?;
    if let Some(g) = groups
        .iter()
        .find(|g| g.number.parse::<u32>().is_ok_and(|n| orbits.contains(&n)))
    {
        return Err(bad(
            "features.park_first",
            format!("orbit {} is ring group {}'s number", g.number, g.number),
        ));
    }
    Ok(())
}

/// `[[paging]]`: numbers are dial strings used by nothing else (another paging group, a
/// ring group, a feature code, a park orbit); members are 1-7 distinct extensions.
fn validate_paging(
    paging: &[PagingSection],
    groups: &[RingGroupSection],
    features: &FeaturesSection,
    orbits: &std::ops::Range<u32>,
) -> Result<(), Invalid> {
    let codes = [
        &features.pickup,
        &features.park,
        &features.dnd_on,
        &features.dnd_off,
        &features.conference,
    ];
    for (i, p) in paging.iter().enumerate() {
        let key = format!("paging[{i}]");
        if !is_dial_string(&p.number) {
            return Err(bad(format!("{key}.number"), "must be digits, * or #"));
        }
        let taken = paging[..i].iter().any(|o| o.number == p.number)
            || groups.iter().any(|g| g.number == p.number)
            || codes.iter().any(|c| **c == p.number)
            || (!features.directed_pickup.is_empty()
                && p.number.starts_with(features.directed_pickup.as_str()))
            || p.number.parse::<u32>().is_ok_and(|n| orbits.contains(&n));
        if taken {
            return Err(bad(
                format!("{key}.number"),
                format!(
                    "{:?} is already a paging or ring group number, a feature code or an orbit",
                    p.number
                ),
            ));
        }
        if !(1..=60).contains(&p.ring_secs) {
            return Err(bad(format!("{key}.ring_secs"), "must be 1-60"));
        }
        if p.members.is_empty() || p.members.len() > MAX_PAGING_MEMBERS {
            return Err(bad(
                format!("{key}.members"),
                format!("needs 1-{MAX_PAGING_MEMBERS} extensions"),
            ));
        }
        let mut seen = HashSet::new();
        if let Some(m) = p.members.iter().find(|m| !seen.insert(m.as_str())) {
            return Err(bad(
                format!("{key}.members"),
                format!("{m} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The call core's paging groups.
pub fn paging_groups(paging: &[PagingSection]) -> Vec<PagingGroup> {
    paging
        .iter()
        .map(|p| PagingGroup {
            number: p.number.clone(),
            members: p.members.clone(),
            ring_ms: p.ring_secs.saturating_mul(1000),
        })
        .collect()
}

/// The call core's dial plan.
pub fn dialplan(
    routes: &[RouteSection],
    inbound: &InboundSection,
    dialplan: &DialplanSection,
) -> Dialplan {
    Dialplan {
        routes: routes
            .iter()
            .map(|r| Route {
                name: r.name.clone(),
                patterns: r
                    .patterns
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect(),
                strip: r.strip,
                prepend: r.prepend.clone(),
                trunks: r.trunks.clone(),
                extensions: r.extensions.clone(),
                caller_id: r.caller_id.clone(),
            })
            .collect(),
        emergency: dialplan.emergency.clone(),
        dids: inbound
            .dids
            .iter()
            .filter_map(|(d, t)| Some((d.clone(), t.parse().ok()?)))
            .collect(),
        default_inbound: inbound.default.as_deref().and_then(|t| t.parse().ok()),
    }
}

/// The call core's ring groups.
pub fn ring_groups(groups: &[RingGroupSection]) -> Vec<RingGroup> {
    groups
        .iter()
        .map(|g| RingGroup {
            number: g.number.clone(),
            members: g.members.clone(),
            strategy: if g.strategy == "in_order" {
                RingStrategy::InOrder
            } else {
                RingStrategy::Simultaneous
            },
            member_timeout_ms: g.member_timeout_secs.saturating_mul(1000),
            timeout_ms: g.timeout_secs.saturating_mul(1000),
            voicemail: g.voicemail.clone(),
        })
        .collect()
}

/// The call core's feature codes.
pub fn features(f: &FeaturesSection) -> FeatureCodes {
    FeatureCodes {
        pickup: f.pickup.clone(),
        directed_pickup: f.directed_pickup.clone(),
        park: f.park.clone(),
        park_first: f.park_first,
        park_slots: f.park_slots,
        park_timeout_ms: f.park_timeout_secs.saturating_mul(1000),
        dnd_on: f.dnd_on.clone(),
        dnd_off: f.dnd_off.clone(),
        conference: f.conference.clone(),
    }
}
