//! Symmetric RTP source checks (RFC 4961's idea, as phones behind NAT need it): which
//! address a leg's packets are accepted from, and so where the relay sends to that leg.
//!
//! A [`Latch`] starts empty and takes the first source whose IP is allowed (one of the
//! leg's `allowed_ips`, or its SDP address when that list is empty). Afterwards it accepts
//! only that exact address (IP and port), unless the latched source has been silent for
//! [`RELATCH_AFTER`] and another allowed source appears: a NAT rebinding. A refused packet
//! does not count as the latched source speaking, so a stranger cannot hold the latch.
//! Pure: time is passed in.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use pbx_core::media::session::LegMedia;

/// How long a latched source must be silent before another allowed source may take over.
pub const RELATCH_AFTER: Duration = Duration::from_secs(1);

/// The address a leg's packets (RTP or RTCP) are accepted from and sent to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Latch {
    addr: Option<SocketAddr>,
    /// The number of the local address the source reached us on (replies leave from it).
    via: usize,
    /// When the latched source was last accepted.
    last: Instant,
}

impl Latch {
    /// An empty latch; `now` counts as the last time it heard its (absent) source.
    pub(super) fn new(now: Instant) -> Self {
        Latch {
            addr: None,
            via: 0,
            last: now,
        }
    }

    /// The latched source, if any.
    pub(super) fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The local address number the latched source reached us on.
    pub(super) fn via(&self) -> usize {
        self.via
    }

    /// The latched source was heard at `now` through the kernel fast path (its packets do
    /// not reach [`Latch::accept`] meanwhile), so no other source may take over.
    pub(super) fn heard(&mut self, now: Instant) {
        if self.addr.is_some() && now > self.last {
            self.last = now;
        }
    }

    /// Whether a packet from `src` (arrived on local address `via` at `now`) is accepted;
    /// latches (or re-latches) as a side effect.
    pub(super) fn accept(
        &mut self,
        src: SocketAddr,
        via: usize,
        now: Instant,
        media: &LegMedia,
    ) -> bool {
        match self.addr {
            Some(addr) if addr == src => {}
            Some(_) if now.saturating_duration_since(self.last) < RELATCH_AFTER => return false,
            _ if !ip_allowed(media, src.ip()) => return false,
            _ => self.addr = Some(src),
        }
        self.via = via;
        self.last = now;
        true
    }
}

/// Whether packets may come from `ip`: one of `allowed_ips`, or the SDP address if none.
fn ip_allowed(media: &LegMedia, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if media.allowed_ips.is_empty() {
        media.remote.is_some_and(|r| r.ip().to_canonical() == ip)
    } else {
        media.allowed_ips.iter().any(|a| a.to_canonical() == ip)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use pbx_core::media::session::Codec;

    use super::*;

    const PHONE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 4000);

    fn media(remote: Option<SocketAddr>, allowed: &[IpAddr]) -> LegMedia {
        LegMedia {
            local_port: 10_000,
            remote,
            allowed_ips: allowed.to_vec(),
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_allowed_source_latches_and_others_are_refused() {
        let t0 = Instant::now();
        let m = media(Some(PHONE), &[PHONE.ip()]);
        let mut latch = Latch::new(t0);
        let stranger = SocketAddr::from(([198, 51, 100, 7], 4000));
        assert!(!latch.accept(stranger, 0, t0, &m), "IP not allowed");
        assert_eq!(latch.addr(), None, "a refused packet does not latch");

        // NAT: the phone's packets come from another port than its SDP says.
        let natted = SocketAddr::new(PHONE.ip(), 61_000);
        assert!(latch.accept(natted, 1, t0 + ms(5), &m));
        assert_eq!((latch.addr(), latch.via()), (Some(natted), 1));
        assert!(latch.accept(natted, 1, t0 + ms(25), &m));
        assert!(
            !latch.accept(PHONE, 1, t0 + ms(30), &m),
            "the SDP port is now a stranger"
        );
    }

    #[test]
    fn a_new_port_takes_over_only_after_a_second_of_silence() {
        let t0 = Instant::now();
        let m = media(Some(PHONE), &[PHONE.ip()]);
        let mut latch = Latch::new(t0);
        assert!(latch.accept(PHONE, 0, t0, &m));
        let rebound = SocketAddr::new(PHONE.ip(), 4100);
        // Refused packets do not refresh the latch, nor do they delay the take-over.
        for i in 1..10 {
            assert!(!latch.accept(rebound, 0, t0 + ms(i * 100), &m));
        }
        assert!(!latch.accept(rebound, 0, t0 + RELATCH_AFTER - ms(1), &m));
        assert!(latch.accept(rebound, 0, t0 + RELATCH_AFTER, &m));
        assert_eq!(latch.addr(), Some(rebound));
        assert!(
            !latch.accept(PHONE, 0, t0 + RELATCH_AFTER + ms(20), &m),
            "old port now refused"
        );
    }

    #[test]
    fn the_latched_source_speaking_keeps_the_latch() {
        let t0 = Instant::now();
        let m = media(Some(PHONE), &[PHONE.ip()]);
        let mut latch = Latch::new(t0);
        let rebound = SocketAddr::new(PHONE.ip(), 4100);
        for i in 0..200 {
            let now = t0 + ms(i * 20);
            assert!(latch.accept(PHONE, 0, now, &m));
            assert!(!latch.accept(rebound, 0, now + ms(10), &m));
        }
    }

    #[test]
    fn a_relatch_needs_an_allowed_ip_even_after_silence() {
        let t0 = Instant::now();
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
        let m = media(Some(PHONE), &[PHONE.ip(), other]);
        let mut latch = Latch::new(t0);
        assert!(latch.accept(PHONE, 0, t0, &m));
        let later = t0 + ms(5000);
        let stranger = SocketAddr::from(([203, 0, 113, 1], 4000));
        assert!(!latch.accept(stranger, 0, later, &m));
        assert_eq!(latch.addr(), Some(PHONE));
        // Any allowed IP may take over (the signalling source, a second interface).
        let moved = SocketAddr::new(other, 5000);
        assert!(latch.accept(moved, 0, later, &m));
        assert_eq!(latch.addr(), Some(moved));
    }

    #[test]
    fn without_allowed_ips_the_sdp_address_is_allowed_and_v4_mapped_matches() {
        let t0 = Instant::now();
        let m = media(Some(PHONE), &[]);
        let mut latch = Latch::new(t0);
        let IpAddr::V4(v4) = PHONE.ip() else {
            unreachable!("PHONE is IPv4")
        };
        let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 4000);
        assert!(latch.accept(mapped, 0, t0, &m));

        let unknown = media(None, &[]);
        let mut latch = Latch::new(t0);
        assert!(
            !latch.accept(PHONE, 0, t0, &unknown),
            "no SDP yet: nothing allowed"
        );
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4000);
        assert!(!latch.accept(v6, 0, t0, &m));
    }
}
