//! `[provision]` and the phone commands' wire types: desk-phone auto-provisioning (the
//! files themselves are `pbx_core::provision`; the admin side is `admin::phone`, the HTTP
//! side `web::provision`). A leaf, so `config` and the admin protocol can hold it.

use std::net::{IpAddr, SocketAddr};

use pbx_core::provision::files::Daylight;
use pbx_core::provision::{TimeZone, Transport};
use serde::{Deserialize, Serialize};

/// Most plain-HTTP listen addresses.
pub const MAX_LISTEN: usize = 4;

/// Longest `Authorization` value looked at (user name and password of a phone fit).
pub const MAX_AUTH: usize = 512;

/// The provisioning realm phones are challenged with.
pub const REALM: &str = "outpost-provisioning";

/// `[provision]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionConfig {
    /// Plain-HTTP listeners serving only `/provision/…`, for phones that cannot do HTTPS
    /// or refuse the box's certificate, e.g. `["0.0.0.0:8080"]`. Empty (the default): the
    /// files are served on the `[web]` HTTPS listeners only. Reachable only from
    /// `[management] networks`, like `[web]`.
    pub listen: Vec<SocketAddr>,
    /// The SIP transport phones are told to register over: `udp` (default), `tcp` or `tls`.
    pub transport: String,
    /// The time zone phones show, as minutes east of UTC (-720 to 840; daylight saving time
    /// is left to the phone). Not with `time_zone`.
    pub utc_offset_minutes: i32,
    /// The time zone phones show, with its daylight-saving rule: a name from
    /// `pbx_core::provision::tz::ZONES` (`Europe/Berlin`) or a POSIX TZ rule
    /// (`CET-1CEST,M3.5.0,M10.5.0/3`). Empty (the default): `utc_offset_minutes`.
    pub time_zone: String,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            listen: Vec::new(),
            transport: "udp".to_owned(),
            utc_offset_minutes: 0,
            time_zone: String::new(),
        }
    }
}

impl ProvisionConfig {
    /// Checks the section; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::webconf::check_listen(&self.listen, MAX_LISTEN)
            .map_err(|e| ("provision.listen", e))?;
        self.sip_transport()?;
        if !(-720..=840).contains(&self.utc_offset_minutes) {
            return Err((
                "provision.utc_offset_minutes",
                "must be between -720 and 840".to_owned(),
            ));
        }
        if !self.time_zone.is_empty() {
            TimeZone::parse(&self.time_zone).map_err(|e| ("provision.time_zone", e))?;
            if self.utc_offset_minutes != 0 {
                return Err((
                    "provision.time_zone",
                    "set either time_zone or utc_offset_minutes, not both (the zone has its offset)"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The standard offset (minutes east of UTC) and daylight saving time phones are
    /// given: `time_zone`'s, else `utc_offset_minutes` with daylight saving time left to
    /// the phone (also for a zone that no longer parses: validated on apply).
    pub fn zone(&self) -> (i32, Daylight) {
        match TimeZone::parse(&self.time_zone) {
            Ok(z) if !self.time_zone.is_empty() => (
                z.offset_minutes,
                z.dst.map_or(Daylight::Never, Daylight::Rule),
            ),
            _ => (self.utc_offset_minutes, Daylight::LeftToPhone),
        }
    }

    /// The transport named by `transport`.
    pub fn sip_transport(&self) -> Result<Transport, (&'static str, String)> {
        match self.transport.as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            other => Err((
                "provision.transport",
                format!("{other:?} is not udp, tcp or tls"),
            )),
        }
    }

    /// The ports that join the management zone's kernel rule.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listen.iter().map(SocketAddr::port)
    }
}

/// A phone command (`{"cmd":"phone","phone":"list"}`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "phone", rename_all = "snake_case", deny_unknown_fields)]
pub enum PhoneCommand {
    /// Provision a phone: the extension's SIP password is replaced by a generated one the
    /// box serves in the phone's file, and the phone gets its own provisioning password.
    /// Adding a known MAC again replaces its record (and both passwords).
    Add {
        /// The phone's MAC address (`aa:bb:cc:dd:ee:ff`, `AABBCCDDEEFF`, ...).
        mac: String,
        /// Its model (`T46U`, `GXP2170`, `D785`, `VVX450`, `X4U`, ...).
        model: String,
        /// The extension it registers as.
        ext: String,
        /// Extensions its BLF keys watch.
        #[serde(default)]
        keys: Vec<String>,
    },
    /// Every provisioned phone.
    List,
    /// Stop provisioning a phone (its extension stays).
    Del {
        /// The phone's MAC address.
        mac: String,
    },
    /// A phone's file, as the HTTP side asks for it (never logged: it carries a password).
    Fetch {
        /// The file name after `/provision/`.
        path: String,
        /// Where the request came from (a refusal counts against it in the firewall).
        source: IpAddr,
        /// The box's address the request came to (the SIP server the file names).
        server: IpAddr,
        /// The `Authorization` header's Basic user name and password, if any.
        #[serde(default)]
        credentials: Option<(String, String)>,
    },
}

impl PhoneCommand {
    /// The wire name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            PhoneCommand::Add { .. } => "phone_add",
            PhoneCommand::List => "phone_list",
            PhoneCommand::Del { .. } => "phone_del",
            PhoneCommand::Fetch { .. } => "phone_fetch",
        }
    }
}

/// One provisioned phone in a listing (no secrets).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PhoneInfo {
    /// Its MAC address, 12 lowercase hex digits.
    pub mac: String,
    /// Its model.
    pub model: String,
    /// Its vendor (`yealink`, `grandstream`, `snom`, `poly`, `fanvil`).
    pub vendor: String,
    /// Its extension.
    pub ext: String,
    /// Extensions its BLF keys watch.
    pub keys: Vec<String>,
    /// When it was added (ms since the epoch).
    pub created_ms: u64,
    /// When it last fetched its file (ms since the epoch), if it has.
    pub fetched_ms: Option<u64>,
}

/// The answer to `phone add`: what to type into the phone (or its DHCP option) once.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PhoneAdded {
    /// The phone.
    pub phone: PhoneInfo,
    /// The provisioning user name (the MAC, 12 lowercase hex digits).
    pub username: String,
    /// The provisioning password (shown once; `phone add` again makes a new one).
    pub password: String,
    /// The file the phone asks for, after `/provision/`.
    pub file: String,
}

/// What the HTTP side answers a fetch with.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ProvisionAnswer {
    /// 200 with this file.
    File {
        /// Its `Content-Type`.
        content_type: String,
        /// Its text.
        body: String,
    },
    /// 404, empty: not a file of a phone the box knows.
    NotFound,
    /// 401 with a Basic challenge: no credentials, or wrong ones (counted by the firewall).
    Unauthorized,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_bad_values_name_their_key() {
        let off = ProvisionConfig::default();
        assert_eq!((off.listen.len(), off.validate()), (0, Ok(())));
        assert_eq!(off.sip_transport().unwrap(), Transport::Udp);
        let c: ProvisionConfig =
            toml::from_str("listen = [\"0.0.0.0:8080\"]\ntransport = \"tls\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.ports().collect::<Vec<_>>(), vec![8080]);
        assert_eq!(c.sip_transport().unwrap(), Transport::Tls);
        for (text, key) in [
            ("transport = \"sctp\"\n", "provision.transport"),
            ("utc_offset_minutes = 900\n", "provision.utc_offset_minutes"),
            ("time_zone = \"Mars/Olympus\"\n", "provision.time_zone"),
            (
                "time_zone = \"CET-1CEST,M3.5.0/2:30,M10.5.0\"\n",
                "provision.time_zone",
            ),
            (
                "time_zone = \"Europe/Berlin\"\nutc_offset_minutes = 60\n",
                "provision.time_zone",
            ),
            ("listen = [\"0.0.0.0:0\"]\n", "provision.listen"),
            (
                "listen = [\"0.0.0.0:80\", \"0.0.0.0:80\"]\n",
                "provision.listen",
            ),
        ] {
            let c: ProvisionConfig = toml::from_str(text).unwrap();
            assert_eq!(c.validate().unwrap_err().0, key, "{text}");
        }
        assert!(toml::from_str::<ProvisionConfig>("port = 1\n").is_err());
        let c: ProvisionConfig = toml::from_str("time_zone = \"Asia/Tokyo\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.zone(), (540, Daylight::Never));
        let c: ProvisionConfig = toml::from_str("utc_offset_minutes = -300\n").unwrap();
        assert_eq!(c.zone(), (-300, Daylight::LeftToPhone));
        let c: ProvisionConfig =
            toml::from_str("time_zone = \"CET-1CEST,M3.5.0,M10.5.0/3\"\n").unwrap();
        assert!(matches!(c.zone(), (60, Daylight::Rule(d)) if d.save_minutes == 60));
    }
}
