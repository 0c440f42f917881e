//! One relayed call and the per-packet decision for it: a pure function of the session's
//! state, the arrival (which leg, which port, from where, when) and the datagram's bytes.
//!
//! For each datagram, in order: an SRTP leg's packet is authenticated and decrypted (a
//! forgery or replay is dropped and counted before it can touch a latch, so a NAT rebinding
//! on an SRTP leg needs the key); RTCP (on the RTCP port, or muxed on the RTP port) is
//! summarised and forwarded to the other leg's RTCP destination; RTP is checked as a view,
//! source-checked by the leg's [`Latch`](super::latch::Latch), counted, fed to the DTMF
//! detector and the recorder, rewritten in place (payload type, G.711 transcoding, and the
//! SSRC, sequence number and timestamp of the other leg's one stream, see
//! [`OutStream`](crate::media::stream::OutStream)) unless the other leg hears a prompt, and
//! finally protected for the other leg if that one is SRTP.
//! The answer is a [`Route`] and a length; events (DTMF) go to the [`Outbox`].

use std::net::SocketAddr;
use std::time::Instant;

use pbx_core::media::rtp::RtpPacket;
use pbx_core::media::session::{Codec, Leg, LegStats, MediaEvent, SessionId};
use pbx_core::media::{g711, rtcp, rtp};

use super::leg::{is_g711, LegState, Route};
use super::output::Outbox;
use super::ports::{Layout, SessionPorts};

/// A relayed call.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) legs: [LegState; 2],
    /// Indices of the ports it owns: A RTP, A RTCP, B RTP, B RTCP (`None`: absent leg).
    pub(super) ports: SessionPorts,
    /// When either leg last sent accepted RTP (RTCP does not keep a call alive).
    pub(super) last_rtp: Instant,
    /// The timeout was reported (once per session).
    pub(super) timed_out: bool,
    /// The directions the kernel forwards for it (fast path), A→B then B→A.
    pub(super) fast: Option<[firewall::nft::fastpath::Direction; 2]>,
    /// Set by [`Self::handle`] when the datagram was audio of a leg in a mix: its plain
    /// length (the packet is in the buffer), for the table to hand to the mixer.
    pub(super) to_mix: Option<usize>,
}

/// Index of a leg in [`Session::legs`].
pub(super) fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

/// A received datagram as the session sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// The leg whose port it arrived on.
    pub(super) from: Leg,
    pub(super) on_rtcp_port: bool,
    /// The number of the local address it arrived on.
    pub(super) via: usize,
    pub(super) src: SocketAddr,
    pub(super) now: Instant,
    /// `now` in microseconds on the relay's own clock (for the jitter estimate).
    pub(super) now_us: u64,
}

impl Session {
    /// A session between legs `legs` on `ports`, opened at `now`.
    pub(super) fn new(
        id: SessionId,
        legs: [LegState; 2],
        ports: SessionPorts,
        now: Instant,
    ) -> Self {
        Session {
            id,
            legs,
            ports,
            last_rtp: now,
            timed_out: false,
            fast: None,
            to_mix: None,
        }
    }

    /// Checks, counts and rewrites (in place) the datagram `buf[..len]`; returns where to
    /// forward it and its new length. On an SRTP leg it is unprotected first (a packet that
    /// fails authentication or is replayed is dropped and counted, never forwarded), and
    /// it is protected for the destination leg if that one is SRTP (`buf` has room).
    pub(super) fn handle(
        &mut self,
        arrival: &Arrival,
        buf: &mut [u8],
        len: usize,
        layout: &Layout,
        out: &mut Outbox,
    ) -> Option<(Route, usize)> {
        let from = leg_index(arrival.from);
        let mut len = len.min(buf.len());
        let is_rtcp = arrival.on_rtcp_port || rtp::looks_like_rtcp(&buf[..len]);
        if let Some(srtp) = self.legs[from].srtp.as_mut() {
            let data = &mut buf[..len];
            let plain = if is_rtcp {
                srtp.inbound.unprotect_rtcp(data)
            } else {
                srtp.inbound.unprotect_rtp(data)
            };
            match plain {
                Ok(n) => len = n,
                Err(_) => {
                    self.legs[from].stats.dropped += 1;
                    return None;
                }
            }
        }
        self.to_mix = None;
        let route = self.handle_plain(arrival, &mut buf[..len], layout, out);
        if self.to_mix.is_some() {
            self.to_mix = Some(len);
        }
        let route = route?;
        match self.legs[leg_index(route.to)].protect(buf, len, route.rtp) {
            Some(len) => Some((route, len)),
            None => {
                self.legs[from].stats.dropped += 1;
                None
            }
        }
    }

    /// [`Self::handle`] on a plain RTP/RTCP packet.
    fn handle_plain(
        &mut self,
        arrival: &Arrival,
        data: &mut [u8],
        layout: &Layout,
        out: &mut Outbox,
    ) -> Option<Route> {
        let to = arrival.from.other();
        let [a, b] = &mut self.legs;
        let (this, other) = match arrival.from {
            Leg::A => (a, b),
            Leg::B => (b, a),
        };
        if arrival.on_rtcp_port || rtp::looks_like_rtcp(data) {
            let Ok(summary) = rtcp::summarize(data) else {
                this.stats.dropped += 1;
                return None;
            };
            let muxed = !arrival.on_rtcp_port;
            let latch = if muxed { &mut this.rtp } else { &mut this.rtcp };
            if !latch.accept(arrival.src, arrival.via, arrival.now, &this.media) {
                this.stats.dropped += 1;
                return None;
            }
            if muxed {
                this.rtcp_mux = true;
                this.stats.latched = this.rtp.addr();
            }
            if let Some(lost) = summary.rtcp_lost() {
                this.stats.rtcp_lost = Some(lost);
            }
            if let Some(jitter) = summary.jitter_us {
                this.stats.rtcp_jitter_us = Some(jitter);
            }
            // A mixed leg's reports describe the mix, not the other leg: kept here.
            if this.mix.is_some() || other.mix.is_some() {
                return None;
            }
            let route = other.rtcp_route(to, layout)?;
            other.out.forward_sender_report(data);
            return Some(route);
        }

        let len = data.len() as u64;
        let Ok(mut packet) = RtpPacket::new_checked(data) else {
            this.stats.dropped += 1;
            return None;
        };
        if !this
            .rtp
            .accept(arrival.src, arrival.via, arrival.now, &this.media)
        {
            this.stats.dropped += 1;
            return None;
        }
        self.last_rtp = arrival.now;
        this.stats.latched = this.rtp.addr();
        this.stats.packets_in += 1;
        this.stats.bytes_in += len;
        this.seq.update(packet.sequence_number());
        this.stats.lost = this.seq.lost();

        let pt = packet.payload_type();
        if Some(pt) == this.media.dtmf_pt {
            let digit = this
                .dtmf
                .handle(packet.timestamp(), packet.marker(), packet.payload());
            if let Some((digit, duration_ms)) = digit {
                out.event(MediaEvent::Dtmf {
                    session: self.id,
                    leg: arrival.from,
                    digit,
                    duration_ms,
                });
            }
            // A prompt replaces what the other phone hears; a mixed leg hears only the mix.
            if other.player.is_some() || this.mix.is_some() || other.mix.is_some() {
                return None;
            }
            // The other phone cannot decode telephone-events it did not negotiate.
            let out_pt = other.media.dtmf_pt?;
            let route = other.rtp_route(to, layout)?;
            packet.set_payload_type(out_pt);
            other.out.forward(&mut packet, arrival.now);
            return Some(route);
        }
        if pt == this.media.pt {
            this.jitter.update(arrival.now_us, packet.timestamp());
            this.stats.jitter_us = this.jitter.jitter_us();
            if let Some(recorder) = this.recorder.as_mut() {
                if is_g711(this.media.codec) {
                    let alaw = this.media.codec == Codec::Pcma;
                    recorder.push(
                        packet.ssrc(),
                        packet.timestamp(),
                        packet.payload(),
                        alaw,
                        arrival.now,
                    );
                }
            }
            if this.mix.is_some() {
                // The mixer takes it (the table reads it from the buffer).
                self.to_mix = Some(0);
                return None;
            }
            if other.player.is_some() || other.mix.is_some() {
                return None;
            }
            let route = other.rtp_route(to, layout)?;
            let (from_codec, to_codec) = (this.media.codec, other.media.codec);
            if from_codec != to_codec && is_g711(from_codec) && is_g711(to_codec) {
                g711::transcode(packet.payload_mut(), from_codec, to_codec);
            }
            if other.media.pt != pt {
                packet.set_payload_type(other.media.pt);
            }
            other.out.forward(&mut packet, arrival.now);
            return Some(route);
        }
        // Comfort noise and anything else negotiated end to end: passed through (numbered
        // as the rest of the stream).
        if other.player.is_some() || this.mix.is_some() || other.mix.is_some() {
            return None;
        }
        let route = other.rtp_route(to, layout)?;
        other.out.forward(&mut packet, arrival.now);
        Some(route)
    }

    /// The counters of legs A and B.
    pub(super) fn stats(&self) -> (LegStats, LegStats) {
        (self.legs[0].stats, self.legs[1].stats)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use pbx_core::media::dtmf::{digit_event, emit_event};
    use pbx_core::media::g711::ulaw_to_alaw;
    use pbx_core::media::rtcp::{emit_receiver_report, ReportBlock};
    use pbx_core::media::rtp::RtpRepr;
    use pbx_core::media::session::LegMedia;

    use super::*;
    use crate::media::relay::output::Output;

    const A_PHONE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 4000);
    const B_PHONE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20)), 5000);

    fn media(port: u16, phone: SocketAddr, codec: Codec, pt: u8, dtmf: Option<u8>) -> LegMedia {
        LegMedia {
            local_port: port,
            remote: Some(phone),
            allowed_ips: vec![phone.ip()],
            codec,
            pt,
            dtmf_pt: dtmf,
            srtp: None,
        }
    }

    fn layout() -> Layout {
        Layout::new(20_000, 10, &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))])
    }

    fn session(a: LegMedia, b: LegMedia, t0: Instant) -> Session {
        let ports = [Some(0), Some(1), Some(2), Some(3)];
        Session::new(1, [LegState::new(a, t0), LegState::new(b, t0)], ports, t0)
    }

    fn rtp_packet(pt: u8, seq: u16, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; rtp::HEADER_LEN + payload.len()];
        RtpRepr {
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: 8000,
            ssrc: 7,
        }
        .emit(&mut buf, payload)
        .expect("fits");
        buf
    }

    /// Runs `bytes` from `src` on leg `from`'s RTP (or RTCP) port at `now`.
    fn arrive(
        session: &mut Session,
        out: &mut Outbox,
        from: Leg,
        on_rtcp_port: bool,
        src: SocketAddr,
        now: Instant,
        bytes: &[u8],
    ) -> Option<(Route, Vec<u8>)> {
        let arrival = Arrival {
            from,
            on_rtcp_port,
            via: 0,
            src,
            now,
            now_us: 0,
        };
        let mut buf = [0u8; 2048];
        buf[..bytes.len()].copy_from_slice(bytes);
        let (route, len) = session.handle(&arrival, &mut buf, bytes.len(), &layout(), out)?;
        Some((route, buf[..len].to_vec()))
    }

    #[test]
    fn pcmu_is_transcoded_to_a_pcma_leg_and_its_payload_type_mapped() {
        let t0 = Instant::now();
        let a = media(20_000, A_PHONE, Codec::Pcmu, 0, None);
        let b = media(20_002, B_PHONE, Codec::Pcma, 8, None);
        let mut s = session(a, b, t0);
        let mut out = Outbox::default();
        let every_byte: Vec<u8> = (0..=255).collect();
        let packet = rtp_packet(0, 3, true, &every_byte);
        let (route, bytes) =
            arrive(&mut s, &mut out, Leg::A, false, A_PHONE, t0, &packet).expect("relayed");
        assert_eq!((route.dest, route.to), (B_PHONE, Leg::B));
        let view = RtpPacket::new_checked(&bytes[..]).expect("RTP");
        assert_eq!(
            (view.payload_type(), view.sequence_number(), view.marker()),
            (8, 3, true)
        );
        let alaw: Vec<u8> = every_byte.iter().map(|&u| ulaw_to_alaw(u)).collect();
        assert_eq!(view.payload(), &alaw[..]);
    }

    #[test]
    fn a_dtmf_digit_is_one_event_and_reaches_only_a_leg_that_negotiated_events() {
        let t0 = Instant::now();
        let a = media(20_000, A_PHONE, Codec::Pcmu, 0, Some(101));
        let b = media(20_002, B_PHONE, Codec::Pcmu, 0, Some(96));
        let mut s = session(a.clone(), b, t0);
        let mut out = Outbox::default();
        let five = digit_event('5').expect("a digit");
        let steps = [
            (false, 160),
            (false, 320),
            (true, 800),
            (true, 800),
            (true, 800),
        ];
        for (seq, (end, duration)) in (10u16..).zip(steps) {
            let mut payload = [0u8; 4];
            emit_event(&mut payload, five, end, 10, duration);
            let packet = rtp_packet(101, seq, seq == 10, &payload);
            let now = t0 + Duration::from_millis(u64::from(seq) * 20);
            let (_, bytes) =
                arrive(&mut s, &mut out, Leg::A, false, A_PHONE, now, &packet).expect("relayed");
            let view = RtpPacket::new_checked(&bytes[..]).expect("RTP");
            assert_eq!(view.payload_type(), 96, "B's telephone-event type");
        }
        let events: Vec<_> = std::iter::from_fn(|| out.pop()).collect();
        assert!(
            matches!(
                events[..],
                [Output::Event(MediaEvent::Dtmf {
                    session: 1,
                    leg: Leg::A,
                    digit: '5',
                    duration_ms: 100
                })]
            ),
            "{events:?}"
        );

        let mut s = session(a, media(20_002, B_PHONE, Codec::Pcmu, 0, None), t0);
        let mut payload = [0u8; 4];
        emit_event(&mut payload, five, false, 10, 160);
        let packet = rtp_packet(101, 1, true, &payload);
        assert_eq!(
            arrive(&mut s, &mut out, Leg::A, false, A_PHONE, t0, &packet),
            None
        );
        assert_eq!(s.stats().0.packets_in, 1, "counted, not forwarded");
    }

    #[test]
    fn rtcp_is_summarised_and_muxed_rtcp_switches_the_leg_to_its_rtp_port() {
        let t0 = Instant::now();
        let a = media(20_000, A_PHONE, Codec::Pcmu, 0, None);
        let b = media(20_002, B_PHONE, Codec::Pcmu, 0, None);
        let mut s = session(a, b, t0);
        let mut out = Outbox::default();
        let block = ReportBlock {
            ssrc: 7,
            fraction_lost: 3,
            cumulative_lost: 7,
            highest_seq: 1000,
            jitter: 80,
            lsr: 0,
            dlsr: 0,
        };
        let mut report = [0u8; 64];
        let len = emit_receiver_report(&mut report, 0xabcd, &[block]).expect("fits");
        let report = &report[..len];
        let a_rtcp = SocketAddr::new(A_PHONE.ip(), 4001);
        let (route, bytes) =
            arrive(&mut s, &mut out, Leg::A, true, a_rtcp, t0, report).expect("forwarded");
        assert_eq!(
            (route.port, route.dest.port(), route.rtp),
            (20_003, 5001, false)
        );
        assert_eq!(bytes, report);
        let (sa, _) = s.stats();
        assert_eq!(
            (sa.rtcp_lost, sa.rtcp_jitter_us, sa.packets_in),
            (Some(7), Some(10_000), 0)
        );
        assert_eq!(s.last_rtp, t0, "RTCP does not count as media");

        // B multiplexes (RFC 5761): its RTCP arrives on its RTP port, so A's goes there too.
        let (_, _) = arrive(&mut s, &mut out, Leg::B, false, B_PHONE, t0, report).expect("to A");
        let (route, _) = arrive(&mut s, &mut out, Leg::A, true, a_rtcp, t0, report).expect("to B");
        assert_eq!(
            (route.port, route.dest, route.rtp),
            (20_002, B_PHONE, false)
        );
        assert_eq!(s.stats().1.latched, Some(B_PHONE));

        assert_eq!(
            arrive(&mut s, &mut out, Leg::A, true, a_rtcp, t0, b"not rtcp"),
            None
        );
        assert_eq!(s.stats().0.dropped, 1);
    }

    #[test]
    fn malformed_rtp_is_dropped_before_it_can_latch() {
        let t0 = Instant::now();
        let a = media(20_000, A_PHONE, Codec::Pcmu, 0, None);
        let b = media(20_002, B_PHONE, Codec::Pcmu, 0, None);
        let mut s = session(a, b, t0);
        let mut out = Outbox::default();
        let mut version_one = rtp_packet(0, 1, false, &[0xff; 160]);
        version_one[0] = 0x40;
        for bad in [&b"\x80\x00\x00"[..], &version_one] {
            assert_eq!(
                arrive(&mut s, &mut out, Leg::A, false, A_PHONE, t0, bad),
                None
            );
        }
        let (sa, _) = s.stats();
        assert_eq!((sa.dropped, sa.latched, sa.packets_in), (2, None, 0));
        // Comfort noise (payload type 13) passes through untouched.
        let cn = rtp_packet(13, 2, false, &[40]);
        let (_, bytes) =
            arrive(&mut s, &mut out, Leg::A, false, A_PHONE, t0, &cn).expect("relayed");
        assert_eq!(bytes, cn);
    }
}
