//! The `[log]` settings of the remote collectors and the persistent log on `/data`
//! (the rest of `[log]` lives in `crate::config::LogConfig`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::rfc5424::facility_code;

/// Most remote collectors.
pub const MAX_COLLECTORS: usize = 4;
/// Smallest and largest size of one persistent log file, KiB.
pub const FILE_KIB_MIN: u64 = 64;
pub const FILE_KIB_MAX: u64 = 65_536;
/// Most persistent log files (the current one and the rotated ones).
pub const FILES_MAX: u32 = 16;

/// How a collector is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// RFC 5426: one message per datagram.
    Udp,
    /// RFC 6587 octet counting over TCP.
    Tcp,
    /// RFC 5425: octet counting over TLS.
    Tls,
}

impl Transport {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One `[[log.remote]]` collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collector {
    /// `host:port` (a name is resolved at each connection attempt).
    pub address: String,
    /// `udp`, `tcp` or `tls`.
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// TLS: a PEM file of CA certificates trusted besides the Mozilla roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// TLS: the name the collector's certificate must carry (default: the host of
    /// `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Syslog facility (`daemon`, `local0`..`local7`, ...).
    #[serde(default = "default_facility")]
    pub facility: String,
    /// Least severe level sent: `error`, `warn`, `info` or `debug`.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_transport() -> Transport {
    Transport::Udp
}

fn default_facility() -> String {
    "daemon".to_owned()
}

fn default_level() -> String {
    "info".to_owned()
}

/// A level name as the least severe tracing level it lets through.
pub fn parse_level(name: &str) -> Option<tracing::Level> {
    match name {
        "error" => Some(tracing::Level::ERROR),
        "warn" => Some(tracing::Level::WARN),
        "info" => Some(tracing::Level::INFO),
        "debug" => Some(tracing::Level::DEBUG),
        _ => None,
    }
}

impl Collector {
    /// The host part of `address` (without brackets) and the port.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        Some((host, port))
    }

    /// The facility's code.
    pub fn facility_code(&self) -> u8 {
        facility_code(&self.facility).unwrap_or(3)
    }

    /// Rejects what cannot work, naming the key.
    fn check(&self, i: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("log.remote[{i}].{k}");
        if self.host_port().is_none() {
            return Err((
                key("address"),
                format!("{:?} is not host:port", self.address),
            ));
        }
        if facility_code(&self.facility).is_none() {
            return Err((
                key("facility"),
                "must be a syslog facility: kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, ntp, audit, alert, clock or local0..local7".to_owned(),
            ));
        }
        if parse_level(&self.level).is_none() {
            return Err((
                key("level"),
                "must be error, warn, info or debug".to_owned(),
            ));
        }
        if self.transport != Transport::Tls && (self.ca.is_some() || self.server_name.is_some()) {
            return Err((
                key("ca"),
                "ca and server_name apply to transport = \"tls\" only".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Checks the collectors and the persistent log's bounds.
pub fn check(remote: &[Collector], file_kib: u64, files: u32) -> Result<(), (String, String)> {
    if remote.len() > MAX_COLLECTORS {
        return Err((
            "log.remote".to_owned(),
            format!("at most {MAX_COLLECTORS} collectors"),
        ));
    }
    for (i, c) in remote.iter().enumerate() {
        c.check(i)?;
    }
    if !(FILE_KIB_MIN..=FILE_KIB_MAX).contains(&file_kib) {
        return Err((
            "log.file_kib".to_owned(),
            format!("must be between {FILE_KIB_MIN} and {FILE_KIB_MAX}"),
        ));
    }
    if !(1..=FILES_MAX).contains(&files) {
        return Err((
            "log.files".to_owned(),
            format!("must be between 1 and {FILES_MAX}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn collector(address: &str) -> Collector {
        Collector {
            address: address.into(),
            transport: Transport::Udp,
            ca: None,
            server_name: None,
            facility: "local0".into(),
            level: "info".into(),
        }
    }

    #[test]
    fn addresses_levels_and_bounds() {
        assert_eq!(
            collector("[2001:db8::1]:6514").host_port(),
            Some(("2001:db8::1", 6514))
        );
        assert_eq!(
            collector("logs.example.net:514").host_port(),
            Some(("logs.example.net", 514))
        );
        for bad in ["logs", ":514", "host:0", "host:99999", "a b:514"] {
            assert_eq!(
                check(&[collector(bad)], 4096, 4).unwrap_err().0,
                "log.remote[0].address"
            );
        }
        let mut c = collector("h:514");
        c.level = "loud".into();
        assert_eq!(check(&[c], 4096, 4).unwrap_err().0, "log.remote[0].level");
        let mut c = collector("h:514");
        c.ca = Some("/etc/ca.pem".into());
        assert_eq!(check(&[c], 4096, 4).unwrap_err().0, "log.remote[0].ca");
        assert_eq!(check(&[], 16, 4).unwrap_err().0, "log.file_kib");
        assert_eq!(check(&[], 4096, 0).unwrap_err().0, "log.files");
        assert!(check(&vec![collector("h:1"); 5], 4096, 4).is_err());
        assert!(check(&[collector("h:514")], 4096, 4).is_ok());
    }
}
