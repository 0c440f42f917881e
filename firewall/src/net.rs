//! Address helpers: a small CIDR type for allow lists, and the canonical form of a source.
//!
//! A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`);
//! every table in this crate keys on [`canonical`] so one host never has two identities.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a CIDR text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("not an IP address: {0:?}")]
    Address(String),
    /// The prefix length is not a number within the family's bit width.
    #[error("bad prefix length {prefix:?} for {addr}")]
    Prefix {
        /// The address part.
        addr: IpAddr,
        /// The prefix text as given.
        prefix: String,
    },
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a host route.
///
/// Serialized as its text form. Host bits are cleared on construction, so `10.1.2.3/8`
/// is stored and shown as `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A network from an address and a prefix length (0–32 for IPv4, 0–128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let addr = canonical(addr);
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::Prefix {
                addr,
                prefix: prefix.to_string(),
            });
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_v4(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_v6(prefix)).into()),
        };
        Ok(Cidr { network, prefix })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::Address(addr_text.to_string()))?;
        let addr = canonical(addr);
        let prefix = match prefix_text {
            None => max_prefix(addr),
            Some(p) => p.parse::<u8>().map_err(|_| CidrError::Prefix {
                addr,
                prefix: p.to_string(),
            })?,
        };
        Cidr::new(addr, prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The canonical form of a source address: IPv4-mapped IPv6 becomes plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Whether `ip` is a loopback address (127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6).
pub fn is_loopback(ip: IpAddr) -> bool {
    canonical(ip).is_loopback()
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_networks_contain_their_hosts_only() {
        let c: Cidr = "192.168.10.77/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.168.10.0/24");
        assert!(c.contains(ip("192.168.10.1")));
        assert!(c.contains(ip("192.168.10.255")));
        assert!(!c.contains(ip("192.168.11.1")));
        assert!(!c.contains(ip("2001:db8::1")));
        // A dual-stack socket reports the same host as a mapped address.
        assert!(c.contains(ip("::ffff:192.168.10.9")));
    }

    #[test]
    fn v6_networks_and_host_routes() {
        let c: Cidr = "2001:db8:abcd::/48".parse().unwrap();
        assert!(c.contains(ip("2001:db8:abcd:1::5")));
        assert!(!c.contains(ip("2001:db8:abce::5")));
        assert!(!c.contains(ip("10.0.0.1")));
        let host: Cidr = "2001:db8::7".parse().unwrap();
        assert_eq!(host.prefix(), 128);
        assert!(host.contains(ip("2001:db8::7")));
        assert!(!host.contains(ip("2001:db8::8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_texts_are_rejected() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            "example.com/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
    }

    #[test]
    fn serde_uses_the_text_form() {
        let c: Cidr = serde_json::from_str("\"10.1.0.0/16\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"10.1.0.0/16\"");
        assert!(serde_json::from_str::<Cidr>("\"10.1.0.0/40\"").is_err());
    }

    #[test]
    fn loopback_in_every_spelling() {
        assert!(is_loopback(ip("127.0.0.1")));
        assert!(is_loopback(ip("127.8.9.10")));
        assert!(is_loopback(ip("::1")));
        assert!(is_loopback(ip("::ffff:127.0.0.1")));
        assert!(!is_loopback(ip("10.0.0.1")));
    }
}
