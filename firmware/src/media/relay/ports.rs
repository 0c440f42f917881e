//! The relay's port range: how socket numbers map to ports and local addresses
//! ([`Layout`]), and which session leg owns each port ([`PortTable`]).
//!
//! Every port of the range is bound on every configured address at start, so socket
//! number = (port - first) × addresses + address number, and finding the owner of a
//! datagram is an index into a `Vec`. Pure: no sockets here, only the arithmetic.

use std::net::{IpAddr, SocketAddr};

use pbx_core::media::session::{Leg, LegMedia};

/// How socket indices map to ports and addresses: index = (port - first) * naddrs + via.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    first: u16,
    ports: usize,
    naddrs: usize,
    /// The first bound address of each family, used to reach a not yet latched remote.
    v4: Option<usize>,
    v6: Option<usize>,
}

impl Layout {
    /// The layout of `ports` ports from `first` on, each bound on every one of `addrs`.
    pub(super) fn new(first: u16, ports: usize, addrs: &[IpAddr]) -> Self {
        Layout {
            first,
            ports,
            naddrs: addrs.len(),
            v4: addrs.iter().position(IpAddr::is_ipv4),
            v6: addrs.iter().position(IpAddr::is_ipv6),
        }
    }

    /// Ports in the range.
    pub(super) fn ports(&self) -> usize {
        self.ports
    }

    /// The port index and the address number of socket `socket`.
    pub(super) fn split(&self, socket: usize) -> (usize, usize) {
        (socket / self.naddrs, socket % self.naddrs)
    }

    /// Index of a port in the range.
    pub(super) fn port_index(&self, port: u16) -> Option<usize> {
        let idx = usize::from(port.checked_sub(self.first)?);
        (idx < self.ports).then_some(idx)
    }

    /// The socket of `port` on address number `via`.
    pub(super) fn socket(&self, port: u16, via: usize) -> Option<usize> {
        (via < self.naddrs).then(|| self.port_index(port).map(|p| p * self.naddrs + via))?
    }

    /// Which bound address reaches `dest`.
    pub(super) fn via_for(&self, dest: SocketAddr) -> Option<usize> {
        if dest.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

/// Which session and leg a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    /// The session's slot in the session table.
    pub(super) slot: u32,
    pub(super) leg: Leg,
    /// The leg's RTCP port (RTP port + 1).
    pub(super) rtcp: bool,
}

/// The port indices of a session: A RTP, A RTCP, B RTP, B RTCP (`None`: absent leg).
pub(super) type SessionPorts = [Option<usize>; 4];

/// Who owns each port of the range.
#[derive(Debug)]
pub(super) struct PortTable {
    layout: Layout,
    owners: Vec<Option<Owner>>,
}

impl PortTable {
    /// Every port of `layout` free.
    pub(super) fn new(layout: Layout) -> Self {
        PortTable {
            owners: vec![None; layout.ports()],
            layout,
        }
    }

    /// The layout of the range.
    pub(super) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The owner of the port with index `port`.
    pub(super) fn owner(&self, port: usize) -> Option<Owner> {
        self.owners.get(port).copied().flatten()
    }

    /// The four port indices of a pair of legs, if at least one leg is present, all lie in
    /// the range, are distinct, and are free or already owned by `slot`.
    pub(super) fn claimable(
        &self,
        a: &LegMedia,
        b: &LegMedia,
        slot: Option<u32>,
    ) -> Option<SessionPorts> {
        if a.is_absent() && b.is_absent() {
            return None;
        }
        let pair = |m: &LegMedia| -> Option<[Option<usize>; 2]> {
            if m.is_absent() {
                return Some([None, None]);
            }
            let rtp = self.layout.port_index(m.local_port)?;
            let rtcp = self.layout.port_index(m.local_port.checked_add(1)?)?;
            Some([Some(rtp), Some(rtcp)])
        };
        let ([a0, a1], [b0, b1]) = (pair(a)?, pair(b)?);
        let ports = [a0, a1, b0, b1];
        let distinct = [a0, a1]
            .iter()
            .flatten()
            .all(|p| b0 != Some(*p) && b1 != Some(*p));
        let free = ports.iter().flatten().all(|&p| match self.owners[p] {
            None => true,
            Some(o) => Some(o.slot) == slot,
        });
        (distinct && free).then_some(ports)
    }

    /// Gives `ports` (from [`Self::claimable`]) to the session in `slot`.
    pub(super) fn claim(&mut self, ports: SessionPorts, slot: u32) {
        let roles = [
            (Leg::A, false),
            (Leg::A, true),
            (Leg::B, false),
            (Leg::B, true),
        ];
        for (port, (leg, rtcp)) in ports.into_iter().zip(roles) {
            if let Some(port) = port {
                self.owners[port] = Some(Owner { slot, leg, rtcp });
            }
        }
    }

    /// Frees those of `ports` that the session in `slot` still owns.
    pub(super) fn release(&mut self, ports: SessionPorts, slot: u32) {
        for port in ports.into_iter().flatten() {
            if let Some(owner) = self.owners.get_mut(port) {
                if owner.is_some_and(|o| o.slot == slot) {
                    *owner = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use pbx_core::media::session::Codec;

    use super::*;

    fn leg(port: u16) -> LegMedia {
        LegMedia {
            local_port: port,
            remote: None,
            allowed_ips: Vec::new(),
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        }
    }

    #[test]
    fn sockets_are_numbered_port_major_and_families_find_their_address() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let layout = Layout::new(20_000, 10, &[v6, v4]);
        assert_eq!(layout.socket(20_003, 1), Some(7));
        assert_eq!(layout.split(7), (3, 1));
        assert_eq!(layout.socket(20_010, 0), None, "above the range");
        assert_eq!(layout.socket(19_999, 0), None, "below the range");
        assert_eq!(layout.socket(20_000, 2), None, "no third address");
        assert_eq!(layout.via_for(SocketAddr::new(v4, 1)), Some(1));
        assert_eq!(layout.via_for(SocketAddr::new(v6, 1)), Some(0));
        let only_v4 = Layout::new(20_000, 10, &[v4]);
        assert_eq!(only_v4.via_for(SocketAddr::new(v6, 1)), None);
    }

    #[test]
    fn ports_are_claimed_once_and_released_by_their_owner_only() {
        let mut table = PortTable::new(Layout::new(20_000, 10, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]));
        let ports = table
            .claimable(&leg(20_000), &leg(20_002), None)
            .expect("free");
        assert_eq!(ports, [Some(0), Some(1), Some(2), Some(3)]);
        table.claim(ports, 7);
        assert_eq!(
            table.owner(1),
            Some(Owner {
                slot: 7,
                leg: Leg::A,
                rtcp: true
            })
        );
        assert!(
            table.claimable(&leg(20_002), &leg(20_004), None).is_none(),
            "taken"
        );
        assert!(
            table
                .claimable(&leg(20_002), &leg(20_004), Some(7))
                .is_some(),
            "its owner may keep them"
        );
        assert!(
            table.claimable(&leg(20_000), &leg(20_001), None).is_none(),
            "overlap"
        );
        assert!(
            table.claimable(&leg(20_009), &leg(20_004), None).is_none(),
            "RTCP outside"
        );
        assert!(table
            .claimable(&LegMedia::absent(), &LegMedia::absent(), None)
            .is_none());
        assert_eq!(
            table.claimable(&leg(20_004), &LegMedia::absent(), None),
            Some([Some(4), Some(5), None, None])
        );

        table.release(ports, 8);
        assert!(table.owner(0).is_some(), "not slot 8's to free");
        table.release(ports, 7);
        assert!((0..10).all(|p| table.owner(p).is_none()));
    }
}
