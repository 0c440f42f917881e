//! The uplink's configuration: what the running system has (address with prefix, default
//! gateway, DNS servers, DHCP or static) for the front panel's Network page, and the one
//! file that chooses DHCP or a static address at boot.
//!
//! `<data_dir>/network.toml` is written by the daemon (the panel's Network page) and read by
//! the image's `network-up` at boot. Its one format:
//!
//! ```toml
//! mode = "static"            # or "dhcp" (the default when the file is missing)
//! address = "192.168.1.10/24"
//! gateway = "192.168.1.1"
//! dns = ["192.168.1.1", "9.9.9.9"]
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use board::panel::{NetworkInfo, NetworkMode, NetworkSetting};

use crate::netif::read_small;
use serde::{Deserialize, Serialize};

/// The file under the data directory.
pub const FILE: &str = "network.toml";
/// Most DNS servers kept (as many as a resolver uses).
const MAX_DNS: usize = 3;

/// `network.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// `dhcp` or `static` (a file without it but with an address, as written by hand
    /// before, is static).
    #[serde(default)]
    pub mode: String,
    /// Address with prefix (static only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Default gateway (static only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers (static only); a single string (the older hand-written form) reads as
    /// one server.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub dns: Vec<String>,
}

/// `dns = "a"` or `dns = ["a", "b"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl NetworkFile {
    /// The file for a setting chosen on the panel.
    pub fn from_setting(setting: &NetworkSetting) -> NetworkFile {
        match setting {
            NetworkSetting::Dhcp => NetworkFile {
                mode: "dhcp".into(),
                address: None,
                gateway: None,
                dns: Vec::new(),
            },
            NetworkSetting::Static {
                address,
                gateway,
                dns,
            } => NetworkFile {
                mode: "static".into(),
                address: Some(address.clone()),
                gateway: (!gateway.is_empty()).then(|| gateway.clone()),
                dns: dns.iter().take(MAX_DNS).cloned().collect(),
            },
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        toml::to_string(self).unwrap_or_else(|_| "mode = \"dhcp\"\n".to_owned())
    }

    /// Reads `<data_dir>/network.toml`; `None` when missing or unreadable (DHCP).
    pub fn read(data_dir: &Path) -> Option<NetworkFile> {
        toml::from_str(&read_small(data_dir.join(FILE))?).ok()
    }

    /// Writes `<data_dir>/network.toml` (replaced atomically: a power cut leaves the old
    /// file or the new one).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(FILE);
        let tmp = data_dir.join(format!("{FILE}.new"));
        std::fs::write(&tmp, self.to_text())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    fn is_static(&self) -> bool {
        self.mode != "dhcp" && self.address.is_some()
    }
}

/// The uplink as the system has it now: the address (with prefix) of the interface that
/// holds the default route (else the first global IPv4 address), the default gateway, the
/// resolver's servers, and DHCP or static as `network.toml` says.
pub fn uplink(data_dir: &Path) -> NetworkInfo {
    let route = read_small(Path::new("/proc/net/route")).unwrap_or_default();
    let resolv = read_small(Path::new("/etc/resolv.conf")).unwrap_or_default();
    let (iface, gateway) = default_route(&route).unzip();
    let addrs = crate::netif::interface_addrs();
    let usable = |a: &&crate::netif::IfAddr| a.up && a.ip.is_ipv4() && !a.ip.is_loopback();
    let addr = iface
        .as_deref()
        .and_then(|name| addrs.iter().filter(usable).find(|a| a.name == name))
        .or_else(|| addrs.iter().find(usable));
    let file = NetworkFile::read(data_dir);
    NetworkInfo {
        mode: if file.as_ref().is_some_and(NetworkFile::is_static) {
            NetworkMode::Static
        } else {
            NetworkMode::Dhcp
        },
        address: addr
            .map(|a| format!("{}/{}", a.ip, a.prefix))
            .unwrap_or_default(),
        gateway: gateway.flatten().map(|g| g.to_string()).unwrap_or_default(),
        dns: nameservers(&resolv),
    }
}

/// The interface of the IPv4 default route in `/proc/net/route` text and its gateway
/// (the table's addresses are little-endian hex).
fn default_route(text: &str) -> Option<(String, Option<Ipv4Addr>)> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        let (iface, dest, gw, flags, mask) =
            (f.first()?, f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
        let up = u32::from_str_radix(flags, 16).ok()? & 1 == 1;
        if !(up && *dest == "00000000" && *mask == "00000000") {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16)
            .ok()
            .map(|g| Ipv4Addr::from(g.swap_bytes()))
            .filter(|g| !g.is_unspecified());
        Some(((*iface).to_owned(), gw))
    })
}

/// The `nameserver` addresses of resolv.conf text, at most [`MAX_DNS`].
fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
        .take(MAX_DNS)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn the_default_route_gives_the_interface_and_gateway() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route(table),
            Some(("eth0".to_owned(), Some(Ipv4Addr::new(192, 168, 1, 1))))
        );
        assert_eq!(default_route("Iface\n"), None);
    }

    #[test]
    fn resolv_conf_gives_at_most_three_servers() {
        let text = "# by udhcpc\nsearch office\nnameserver 192.168.1.1\nnameserver  9.9.9.9\n\
                    nameserver bogus\nnameserver 2001:db8::53\nnameserver 1.1.1.1\n";
        assert_eq!(
            nameservers(text),
            ["192.168.1.1", "9.9.9.9", "2001:db8::53"]
        );
    }

    #[test]
    fn the_file_round_trips_and_says_static_or_dhcp() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NetworkFile::read(dir.path()), None);
        let setting = NetworkSetting::Static {
            address: "192.168.1.10/24".into(),
            gateway: "192.168.1.1".into(),
            dns: vec!["192.168.1.1".into(), "9.9.9.9".into()],
        };
        let file = NetworkFile::from_setting(&setting);
        file.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(
            text,
            "mode = \"static\"\naddress = \"192.168.1.10/24\"\ngateway = \"192.168.1.1\"\ndns = [\"192.168.1.1\", \"9.9.9.9\"]\n"
        );
        assert_eq!(NetworkFile::read(dir.path()), Some(file.clone()));
        assert!(file.is_static());
        assert_eq!(uplink(dir.path()).mode, NetworkMode::Static);
        NetworkFile::from_setting(&NetworkSetting::Dhcp)
            .write(dir.path())
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            "mode = \"dhcp\"\n"
        );
        assert_eq!(uplink(dir.path()).mode, NetworkMode::Dhcp);
    }
}
