//! HTTP: the one client ([`client`], ureq on the daemon's rustls settings, [`tls`]) that the
//! update download (`update::fetch`), the backup targets (`backup::target::https`) and HTTPS
//! blocklist feeds ([`get_bounded`]) use, and the URL authority helpers their settings
//! checks share.

pub mod client;
pub mod tls;

pub use client::{get_bounded, shown, Client, HttpError, Response, Settings};

/// Splits a URL authority `host[:port]` or `[v6][:port]` into the host (IPv6 without
/// brackets) and the port text, if any. The port is not checked; the host is not checked
/// beyond an IPv6 literal being one.
pub fn split_authority(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed `[` in the host")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "`{}` is not an IPv6 address",
                addr.chars().take(60).collect::<String>()
            ));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
        };
        Ok((addr, port))
    } else {
        Ok(match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        })
    }
}

/// `host[:port]` as `Host` headers and URLs carry it: an IPv6 host in brackets, the port
/// only when it is not the scheme's `default_port`.
pub fn authority(host: &str, port: u16, default_port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_and_join() {
        assert_eq!(
            split_authority("a.example:8443"),
            Ok(("a.example", Some("8443")))
        );
        assert_eq!(split_authority("a.example"), Ok(("a.example", None)));
        assert_eq!(
            split_authority("[2001:db8::7]:80"),
            Ok(("2001:db8::7", Some("80")))
        );
        assert_eq!(split_authority("[::1]"), Ok(("::1", None)));
        assert!(split_authority("[::1").is_err());
        assert!(split_authority("[::1]x").is_err());
        assert!(split_authority("[nope]").is_err());
        assert_eq!(authority("2001:db8::7", 443, 443), "[2001:db8::7]");
        assert_eq!(authority("a.example", 8080, 80), "a.example:8080");
    }
}
