//! `[web]`: the web admin page's listeners, certificate and session timeouts (the page itself
//! is [`crate::web`], above the admin layer; this section is a leaf so `config` can hold it).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most listen addresses.
pub const MAX_LISTEN: usize = 4;

/// `[web]` section: the web admin page (HTTPS only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// HTTPS listeners, e.g. `["0.0.0.0:443", "[::]:443"]`; empty (the default): no web page.
    /// Reachable only from `[management] networks` (the kernel drops the rest, and the
    /// daemon closes such a connection unread).
    pub listen: Vec<SocketAddr>,
    /// Certificate chain (PEM, leaf first), with `key`. Absent: the box's own TLS identity
    /// (the self-signed certificate in `<store.data_dir>/tls/`, or `[tls] cert`).
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// A login ends after this long without a request (60–86,400 s).
    pub idle_timeout_secs: u64,
    /// A login ends this long after it began, used or not (300–604,800 s).
    pub session_max_secs: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: Vec::new(),
            cert: None,
            key: None,
            idle_timeout_secs: 15 * 60,
            session_max_secs: 8 * 3600,
        }
    }
}

/// Checks a list of TCP listen addresses: at most `max`, none twice, no port 0.
pub fn check_listen(listen: &[SocketAddr], max: usize) -> Result<(), String> {
    if listen.len() > max {
        return Err(format!("at most {max} addresses"));
    }
    let mut seen = listen.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != listen.len() {
        return Err("an address is listed twice".to_owned());
    }
    if listen.iter().any(|a| a.port() == 0) {
        return Err("port 0 is not a port to listen on".to_owned());
    }
    Ok(())
}

impl WebConfig {
    /// Checks the section; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_listen(&self.listen, MAX_LISTEN).map_err(|e| ("web.listen", e))?;
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(("web.key", "web.cert is set: set web.key too".into())),
            (None, Some(_)) => return Err(("web.cert", "web.key is set: set web.cert too".into())),
            _ => {}
        }
        if !(60..=86_400).contains(&self.idle_timeout_secs) {
            return Err((
                "web.idle_timeout_secs",
                "must be between 60 and 86400".to_owned(),
            ));
        }
        if !(300..=604_800).contains(&self.session_max_secs) {
            return Err((
                "web.session_max_secs",
                "must be between 300 and 604800".to_owned(),
            ));
        }
        if self.session_max_secs < self.idle_timeout_secs {
            return Err((
                "web.session_max_secs",
                "must not be shorter than web.idle_timeout_secs".to_owned(),
            ));
        }
        Ok(())
    }

    /// The ports that join the management zone's kernel rule.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listen.iter().map(SocketAddr::port)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = WebConfig::default();
        assert!(c.listen.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = WebConfig {
            cert: Some("/x.pem".into()),
            ..WebConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "web.key");
        let c = WebConfig {
            idle_timeout_secs: 5,
            ..WebConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "web.idle_timeout_secs");
        let c = WebConfig {
            listen: vec!["127.0.0.1:8443".parse().unwrap(); 2],
            ..WebConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "web.listen");
        let c: WebConfig = toml::from_str("listen = [\"[::1]:8443\"]\n").unwrap();
        assert_eq!(c.ports().collect::<Vec<_>>(), vec![8443]);
        assert!(toml::from_str::<WebConfig>("port = 1\n").is_err());
    }
}
