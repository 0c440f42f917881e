//! The box's own addresses, read from the kernel.
//!
//! The appliance listens on the unspecified address (`0.0.0.0:5060`) and binds the relay
//! there too, so sockets never depend on which address DHCP handed out. What goes on the
//! wire — Via and Contact, the `c=` line of SDP — must name a real address, though: that is
//! the primary address of each family, [`HostAddrs`], re-read every few seconds by the
//! daemon, which hands a change to the call core (new calls and registrations use it; calls
//! in progress keep their relay ports).
//!
//! The primary address of a family is the first address of the interface that holds the
//! default route of that family (`/proc/net/route`, `/proc/net/ipv6_route`), else the first
//! global address of any interface that is up. Loopback, link-local and (IPv6) deprecated
//! addresses are never chosen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest routing table file read (a box has a handful of routes).
const MAX_ROUTE_FILE: u64 = 256 * 1024;

/// The primary address of each family, if the box has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostAddrs {
    /// IPv4.
    pub v4: Option<Ipv4Addr>,
    /// IPv6 (global scope).
    pub v6: Option<Ipv6Addr>,
}

/// One address of one interface, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name (`eth0`).
    pub name: String,
    /// The interface is up.
    pub up: bool,
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length (from the netmask; 32 or 128 when the kernel gives none).
    pub prefix: u8,
}

impl HostAddrs {
    /// Reads the addresses and default routes from the kernel now. Errors read as "no
    /// address" (the daemon then keeps using loopback until an address appears).
    pub fn read() -> HostAddrs {
        let addrs = interface_addrs();
        let v4_default = read_small("/proc/net/route").and_then(|t| default_route_v4(&t));
        let v6_default = read_small("/proc/net/ipv6_route").and_then(|t| default_route_v6(&t));
        HostAddrs::choose(&addrs, v4_default.as_deref(), v6_default.as_deref())
    }

    /// The primary address of each family among `addrs`, preferring the interfaces that
    /// hold the default routes.
    pub fn choose(addrs: &[IfAddr], v4_iface: Option<&str>, v6_iface: Option<&str>) -> HostAddrs {
        let pick = |want_v4: bool, iface: Option<&str>| -> Option<IpAddr> {
            let usable = |a: &&IfAddr| a.up && a.ip.is_ipv4() == want_v4 && is_global(a.ip);
            iface
                .and_then(|name| addrs.iter().filter(usable).find(|a| a.name == name))
                .or_else(|| addrs.iter().find(usable))
                .map(|a| a.ip)
        };
        HostAddrs {
            v4: pick(true, v4_iface).and_then(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            }),
            v6: pick(false, v6_iface).and_then(|ip| match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            }),
        }
    }

    /// What goes on the wire for `ip`: itself when it is a real address; for an unspecified
    /// one, the primary address of its family, or loopback while the box has none.
    pub fn advertise(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => {
                IpAddr::V4(self.v4.unwrap_or(Ipv4Addr::LOCALHOST))
            }
            IpAddr::V6(v6) if v6.is_unspecified() => {
                IpAddr::V6(self.v6.unwrap_or(Ipv6Addr::LOCALHOST))
            }
            other => other,
        }
    }

    /// [`HostAddrs::advertise`] for every address of `listen` (ports kept, duplicates
    /// dropped).
    pub fn advertise_sockets(&self, listen: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::with_capacity(listen.len());
        for a in listen {
            let s = SocketAddr::new(self.advertise(a.ip()), a.port());
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// [`HostAddrs::advertise`] for every address of `ips` (duplicates dropped).
    pub fn advertise_ips(&self, ips: &[IpAddr]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
        for ip in ips {
            let a = self.advertise(*ip);
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

/// Whether an address can be advertised to phones: not loopback, link-local, multicast or
/// unspecified.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || link_local || v6.is_unspecified() || v6.is_multicast())
        }
    }
}

/// Every address of every interface (empty when the kernel cannot be asked).
pub fn interface_addrs() -> Vec<IfAddr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in list {
        let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let Some(addr) = ifa.address else { continue };
        let mask = ifa.netmask.as_ref();
        let (ip, prefix) = if let Some(sin) = addr.as_sockaddr_in() {
            let ones = mask
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| m.ip().to_bits().count_ones());
            (IpAddr::V4(sin.ip()), ones)
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ones = mask
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(128, |m| m.ip().to_bits().count_ones());
            (IpAddr::V6(sin6.ip()), ones)
        } else {
            continue;
        };
        out.push(IfAddr {
            name: ifa.interface_name,
            up,
            ip,
            prefix: u8::try_from(prefix).unwrap_or(128),
        });
    }
    out
}

/// A small system file (routing table, resolver, `network.toml`) as text, at most 256 KiB;
/// `None` when it cannot be read.
pub fn read_small(path: impl AsRef<std::path::Path>) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_ROUTE_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The interface of the IPv4 default route in `/proc/net/route` text (destination and mask
/// 0, route up).
fn default_route_v4(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        let (iface, dest, flags, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(7)?);
        let up = u32::from_str_radix(flags, 16).ok()? & 1 == 1;
        (up && *dest == "00000000" && *mask == "00000000").then(|| (*iface).to_owned())
    })
}

/// The interface of the IPv6 default route in `/proc/net/ipv6_route` text (::/0, not the
/// loopback "unreachable" entry).
fn default_route_v6(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dest dest_len src src_len next_hop metric refcnt use flags iface
        let (dest, len, iface) = (f.first()?, f.get(1)?, f.get(9)?);
        let zero = dest.chars().all(|c| c == '0') && *len == "00";
        (zero && *iface != "lo").then(|| (*iface).to_owned())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn a(name: &str, up: bool, ip: &str) -> IfAddr {
        IfAddr {
            name: name.into(),
            up,
            ip: ip.parse().unwrap(),
            prefix: 24,
        }
    }

    #[test]
    fn the_default_route_interface_wins_and_loopback_never() {
        let addrs = [
            a("lo", true, "127.0.0.1"),
            a("eth1", true, "192.168.9.4"),
            a("eth0", true, "10.0.5.15"),
            a("eth0", true, "fe80::1"),
            a("eth0", true, "2001:db8::15"),
        ];
        let h = HostAddrs::choose(&addrs, Some("eth0"), None);
        assert_eq!(h.v4, Some("10.0.5.15".parse().unwrap()));
        assert_eq!(h.v6, Some("2001:db8::15".parse().unwrap()));
        let h = HostAddrs::choose(&addrs, None, None);
        assert_eq!(h.v4, Some("192.168.9.4".parse().unwrap()), "first global");
        let only_lo = [a("lo", true, "127.0.0.1"), a("eth0", false, "10.0.0.2")];
        assert_eq!(
            HostAddrs::choose(&only_lo, Some("eth0"), None),
            HostAddrs::default()
        );
    }

    #[test]
    fn unspecified_addresses_are_replaced_and_real_ones_kept() {
        let h = HostAddrs {
            v4: Some("10.0.5.15".parse().unwrap()),
            v6: None,
        };
        let listen: Vec<SocketAddr> = vec![
            "0.0.0.0:5060".parse().unwrap(),
            "[::]:5060".parse().unwrap(),
            "192.0.2.1:5070".parse().unwrap(),
        ];
        assert_eq!(
            h.advertise_sockets(&listen),
            vec![
                "10.0.5.15:5060".parse::<SocketAddr>().unwrap(),
                "[::1]:5060".parse().unwrap(),
                "192.0.2.1:5070".parse().unwrap(),
            ]
        );
        let none = HostAddrs::default();
        assert_eq!(
            none.advertise("0.0.0.0".parse().unwrap()),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn default_routes_are_read_from_proc() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_v4(v4).as_deref(), Some("eth0"));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
        let v6 = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_route_v6(v6).as_deref(), Some("eth1"));
    }

    #[test]
    fn the_kernel_lists_this_machines_loopback_and_nothing_unassigned() {
        let addrs = interface_addrs();
        assert!(
            addrs
                .iter()
                .any(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
        assert!(!addrs
            .iter()
            .any(|a| a.ip == "192.0.2.254".parse::<IpAddr>().unwrap()));
    }
}
