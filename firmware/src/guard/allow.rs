//! Who the firewall never bans: the networks `outpostctl fw allow` adds at runtime, and
//! the one trust check that also covers loopback, trunk peers and `[firewall.detect] allow`.
//!
//! Runtime additions are not kept across a restart; the permanent list is the
//! configuration's.

use std::net::IpAddr;

use firewall::detect::DetectConfig;
use firewall::net::{canonical, is_loopback, Cidr};

/// Networks `fw allow` may add.
pub const MAX_RUNTIME_ALLOW: usize = 256;

/// The networks added with `fw allow` since the start.
#[derive(Debug, Default)]
pub struct RuntimeAllow {
    nets: Vec<Cidr>,
}

/// What [`RuntimeAllow::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The network is new.
    New,
    /// It was already allowed.
    Already,
    /// [`MAX_RUNTIME_ALLOW`] networks are allowed already; not added.
    Full,
}

impl RuntimeAllow {
    /// Adds `net`, up to [`MAX_RUNTIME_ALLOW`] networks.
    pub fn add(&mut self, net: Cidr) -> Added {
        if self.nets.contains(&net) {
            Added::Already
        } else if self.nets.len() >= MAX_RUNTIME_ALLOW {
            Added::Full
        } else {
            self.nets.push(net);
            Added::New
        }
    }

    /// Whether `ip` (canonical) is inside a network added at runtime.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|c| c.contains(ip))
    }

    /// The networks, in the order they were added.
    pub fn nets(&self) -> &[Cidr] {
        &self.nets
    }

    /// Never banned: loopback, trunk peers, allow-listed networks (`detect`'s and these).
    pub fn trusts(&self, detect: &DetectConfig, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_loopback(ip)
            || detect.trunk_peers.iter().any(|&p| canonical(p) == ip)
            || detect.allow.iter().any(|n| n.contains(ip))
            || self.contains(ip)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn runtime_networks_are_bounded_and_trusted_with_the_configured_ones() {
        let mut allow = RuntimeAllow::default();
        let office: Cidr = "198.51.100.0/24".parse().unwrap();
        assert_eq!(allow.add(office), Added::New);
        assert_eq!(allow.add(office), Added::Already);
        for n in 1..MAX_RUNTIME_ALLOW {
            let net = Cidr::new(ip(&format!("10.{}.{}.0", n / 256, n % 256)), 24).unwrap();
            assert_eq!(allow.add(net), Added::New);
        }
        assert_eq!(
            allow.add("192.0.2.0/24".parse().unwrap()),
            Added::Full,
            "at most {MAX_RUNTIME_ALLOW}"
        );
        assert_eq!(allow.nets()[0], office);
        assert!(allow.contains(ip("198.51.100.7")));

        let detect = DetectConfig {
            trunk_peers: vec![ip("203.0.113.5")],
            allow: vec!["2001:db8::/64".parse().unwrap()],
            ..DetectConfig::default()
        };
        for trusted in [
            "127.0.0.1",
            "::1",
            "::ffff:203.0.113.5",
            "2001:db8::9",
            "198.51.100.7",
        ] {
            assert!(allow.trusts(&detect, ip(trusted)), "{trusted}");
        }
        assert!(!allow.trusts(&detect, ip("203.0.113.6")));
        assert!(!RuntimeAllow::default().trusts(&detect, ip("198.51.100.7")));
    }
}
