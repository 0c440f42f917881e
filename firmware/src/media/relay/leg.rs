//! The state of one leg of a relayed call: its negotiated media, its RTP and RTCP latches,
//! its counters and DTMF detector, what is played to and recorded from its phone, and its
//! SRTP contexts. Pure: it answers where packets for the phone go ([`Route`]) and protects
//! them; the session decides what to forward.

use std::net::SocketAddr;
use std::time::Instant;

use pbx_core::media::dtmf::DtmfDetector;
use pbx_core::media::rtp::{JitterEstimator, SeqTracker};
use pbx_core::media::session::{Codec, Leg, LegMedia, LegStats, SessionId, SrtpKeys};
use pbx_core::media::srtp::SrtpContext;

use super::latch::Latch;
use super::ports::Layout;
use crate::media::player::{Player, Recorder};
use crate::media::stream::OutStream;

/// Where a packet goes: out of `port` on address `via` to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Route {
    pub(super) port: u16,
    pub(super) via: usize,
    pub(super) dest: SocketAddr,
    /// The leg whose phone receives it.
    pub(super) to: Leg,
    /// RTP (counted in the receiving leg's `packets_out`), not RTCP.
    pub(super) rtp: bool,
}

/// Whether a codec is G.711 (the relay transcodes, plays and records only those).
pub(super) fn is_g711(codec: Codec) -> bool {
    matches!(codec, Codec::Pcmu | Codec::Pcma)
}

/// One leg of a relayed call.
#[derive(Debug)]
pub(super) struct LegState {
    pub(super) media: LegMedia,
    pub(super) rtp: Latch,
    pub(super) rtcp: Latch,
    /// The phone sent RTCP on its RTP port (RFC 5761), so ours goes there too.
    pub(super) rtcp_mux: bool,
    pub(super) seq: SeqTracker,
    pub(super) jitter: JitterEstimator,
    pub(super) dtmf: DtmfDetector,
    pub(super) stats: LegStats,
    /// What is being played to this leg's phone (the other leg is not heard meanwhile).
    pub(super) player: Option<Player>,
    /// The next played frame starts a talkspurt (marker bit).
    pub(super) talkspurt: bool,
    /// Identifies the latest `Play`/`StopPlay`, so a late file load cannot revive old ones.
    pub(super) play_generation: u64,
    /// Numbering of every RTP packet this leg's phone receives, played or forwarded.
    pub(super) out: OutStream,
    /// What this leg's phone sends, being recorded.
    pub(super) recorder: Option<Recorder>,
    /// SRTP contexts when the leg is SRTP.
    pub(super) srtp: Option<LegSrtp>,
    /// The mix this leg is in (`MediaCommand::Join`): what it sends goes to the mixer, what
    /// it hears comes from there.
    pub(super) mix: Option<SessionId>,
}

/// SRTP of one leg: what the phone sends is unprotected with its key, what goes to it is
/// protected with ours.
#[derive(Debug)]
pub(super) struct LegSrtp {
    keys: SrtpKeys,
    pub(super) inbound: SrtpContext,
    pub(super) outbound: SrtpContext,
}

impl LegSrtp {
    fn new(keys: SrtpKeys) -> Self {
        LegSrtp {
            inbound: SrtpContext::new(keys.suite, &keys.remote_key),
            outbound: SrtpContext::new(keys.suite, &keys.local_key),
            keys,
        }
    }

    /// New keys (re-INVITE): a direction whose key is unchanged keeps its state (rollover
    /// counters, replay windows), so no keystream is ever used twice.
    fn rekey(old: Option<LegSrtp>, keys: Option<&SrtpKeys>) -> Option<LegSrtp> {
        let keys = keys?;
        let Some(mut srtp) = old else {
            return Some(LegSrtp::new(keys.clone()));
        };
        if srtp.keys.suite != keys.suite {
            return Some(LegSrtp::new(keys.clone()));
        }
        if srtp.keys.remote_key != keys.remote_key {
            srtp.inbound = SrtpContext::new(keys.suite, &keys.remote_key);
        }
        if srtp.keys.local_key != keys.local_key {
            srtp.outbound = SrtpContext::new(keys.suite, &keys.local_key);
        }
        srtp.keys = keys.clone();
        Some(srtp)
    }
}

impl LegState {
    /// A leg with nothing latched yet, opened at `now`.
    pub(super) fn new(media: LegMedia, now: Instant) -> Self {
        LegState {
            rtp: Latch::new(now),
            rtcp: Latch::new(now),
            rtcp_mux: false,
            seq: SeqTracker::new(),
            jitter: JitterEstimator::new(8000),
            dtmf: DtmfDetector::new(),
            stats: LegStats::default(),
            player: None,
            talkspurt: true,
            play_generation: 0,
            out: OutStream::new(rand::random(), rand::random(), rand::random()),
            recorder: None,
            srtp: LegSrtp::rekey(None, media.srtp.as_ref()),
            mix: None,
            media,
        }
    }

    /// Where RTP for this leg's phone goes: the latched source, else the SDP address.
    pub(super) fn rtp_route(&self, to: Leg, layout: &Layout) -> Option<Route> {
        if self.media.is_absent() {
            return None;
        }
        let (dest, via) = match self.rtp.addr() {
            Some(addr) => (addr, self.rtp.via()),
            None => {
                let remote = self.media.remote?;
                (remote, layout.via_for(remote)?)
            }
        };
        Some(Route {
            port: self.media.local_port,
            via,
            dest,
            to,
            rtp: true,
        })
    }

    /// Where RTCP for this leg's phone goes: like RTP if it multiplexes, else port + 1.
    pub(super) fn rtcp_route(&self, to: Leg, layout: &Layout) -> Option<Route> {
        if self.media.is_absent() {
            return None;
        }
        if self.rtcp_mux {
            return self
                .rtp_route(to, layout)
                .map(|r| Route { rtp: false, ..r });
        }
        let (dest, via) = match self.rtcp.addr() {
            Some(addr) => (addr, self.rtcp.via()),
            None => {
                let remote = self.media.remote?;
                let dest = SocketAddr::new(remote.ip(), remote.port().checked_add(1)?);
                (dest, layout.via_for(dest)?)
            }
        };
        Some(Route {
            port: self.media.local_port.checked_add(1)?,
            via,
            dest,
            to,
            rtp: false,
        })
    }

    /// New SDP: parameters replaced; latches kept unless the remote address changed.
    pub(super) fn update(&mut self, media: LegMedia, now: Instant) {
        if media.remote != self.media.remote {
            self.rtp = Latch::new(now);
            self.rtcp = Latch::new(now);
            self.rtcp_mux = false;
            self.stats.latched = None;
        }
        self.srtp = LegSrtp::rekey(self.srtp.take(), media.srtp.as_ref());
        self.media = media;
    }

    /// Protects a packet for this leg's phone in place if the leg is SRTP; returns the
    /// length to send, `None` if it cannot be sent (no room, replayed index).
    pub(super) fn protect(&mut self, buf: &mut [u8], len: usize, rtp: bool) -> Option<usize> {
        let Some(srtp) = self.srtp.as_mut() else {
            return Some(len);
        };
        let protected = if rtp {
            srtp.outbound.protect_rtp(buf, len)
        } else {
            srtp.outbound.protect_rtcp(buf, len)
        };
        protected.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use pbx_core::media::srtp::{self, Suite};

    use super::*;

    const PHONE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 4000);

    fn media(remote: Option<SocketAddr>) -> LegMedia {
        LegMedia {
            local_port: 20_000,
            remote,
            allowed_ips: vec![PHONE.ip()],
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        }
    }

    fn layout() -> Layout {
        Layout::new(20_000, 10, &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
    }

    #[test]
    fn routes_go_to_the_sdp_address_until_a_source_latches() {
        let t0 = Instant::now();
        let mut leg = LegState::new(media(Some(PHONE)), t0);
        let rtp = leg.rtp_route(Leg::B, &layout()).expect("SDP known");
        assert_eq!(
            (rtp.port, rtp.dest, rtp.to, rtp.rtp),
            (20_000, PHONE, Leg::B, true)
        );
        let rtcp = leg.rtcp_route(Leg::B, &layout()).expect("SDP known");
        assert_eq!(
            (rtcp.port, rtcp.dest.port(), rtcp.rtp),
            (20_001, 4001, false)
        );

        let natted = SocketAddr::new(PHONE.ip(), 61_000);
        assert!(leg.rtp.accept(natted, 0, t0, &leg.media));
        assert_eq!(
            leg.rtp_route(Leg::B, &layout()).map(|r| r.dest),
            Some(natted)
        );
        assert_eq!(
            leg.rtcp_route(Leg::B, &layout()).map(|r| r.dest.port()),
            Some(4001),
            "RTCP has its own latch"
        );
        leg.rtcp_mux = true;
        assert_eq!(
            leg.rtcp_route(Leg::B, &layout())
                .map(|r| (r.port, r.dest, r.rtp)),
            Some((20_000, natted, false)),
            "muxed RTCP follows RTP"
        );
        assert!(LegState::new(media(None), t0)
            .rtp_route(Leg::B, &layout())
            .is_none());
        assert!(LegState::new(LegMedia::absent(), t0)
            .rtp_route(Leg::B, &layout())
            .is_none());
    }

    #[test]
    fn an_update_resets_the_latches_only_when_the_remote_moves() {
        let t0 = Instant::now();
        let mut leg = LegState::new(media(Some(PHONE)), t0);
        assert!(leg.rtp.accept(PHONE, 0, t0, &leg.media));
        leg.stats.latched = Some(PHONE);
        leg.update(media(Some(PHONE)), t0);
        assert_eq!(leg.rtp.addr(), Some(PHONE));
        let moved = SocketAddr::from(([192, 0, 2, 20], 4000));
        leg.update(media(Some(moved)), t0);
        assert_eq!((leg.rtp.addr(), leg.stats.latched), (None, None));
    }

    #[test]
    fn a_rekey_keeps_the_state_of_an_unchanged_direction() {
        let keys = |remote: u8, local: u8| SrtpKeys {
            suite: Suite::AesCm128HmacSha1_80,
            remote_key: [remote; srtp::KEY_MATERIAL_LEN],
            local_key: [local; srtp::KEY_MATERIAL_LEN],
        };
        let t0 = Instant::now();
        let mut m = media(Some(PHONE));
        m.srtp = Some(keys(1, 2));
        let mut leg = LegState::new(m.clone(), t0);
        let packet = [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xaa];
        let mut first = [0u8; 64];
        first[..packet.len()].copy_from_slice(&packet);
        let n = leg
            .protect(&mut first, packet.len(), true)
            .expect("protects");

        // Same local key: sending the same index again would reuse keystream, so the
        // replay check of the kept context refuses it.
        m.srtp = Some(keys(3, 2));
        leg.update(m.clone(), t0);
        let mut again = [0u8; 64];
        again[..packet.len()].copy_from_slice(&packet);
        assert_eq!(leg.protect(&mut again, packet.len(), true), None);

        // A new local key starts a fresh context.
        m.srtp = Some(keys(3, 4));
        leg.update(m, t0);
        let mut fresh = [0u8; 64];
        fresh[..packet.len()].copy_from_slice(&packet);
        assert_eq!(leg.protect(&mut fresh, packet.len(), true), Some(n));
        assert_ne!(first[..n], fresh[..n]);
    }
}
