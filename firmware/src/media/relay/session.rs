//! One relayed call and the per-packet decision for it: a pure function of the session's
//! state, the arrival (which leg, which port, from where, when) and the datagram's bytes.
//!
//! For each datagram, in order: an SRTP leg's packet is authenticated and decrypted (a
//! forgery or replay is dropped and counted before it can touch a latch, so a NAT rebinding
//! on an SRTP leg needs the key); RTCP (on the RTCP port, or muxed on the RTP port) is
//! summarised and forwarded to the other leg's RTCP destination; RTP is checked as a view,
//! source-checked by the leg's [`Latch`](super::latch::Latch), counted, fed to the DTMF
//! detector and the recorder, rewritten in place (payload type, G.711 transcoding) unless the
//! other leg hears a prompt, and finally protected for the other leg if that one is SRTP.
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
        let route = self.handle_plain(arrival, &mut buf[..len], layout, out)?;
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
            Leg::A => (a, &*b),
            Leg::B => (b, &*a),
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
            return other.rtcp_route(to, layout);
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
            // A prompt replaces what the other phone hears.
            if other.player.is_some() {
                return None;
            }
            // The other phone cannot decode telephone-events it did not negotiate.
            let out_pt = other.media.dtmf_pt?;
            let route = other.rtp_route(to, layout)?;
            packet.set_payload_type(out_pt);
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
            if other.player.is_some() {
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
            return Some(route);
        }
        // Comfort noise and anything else negotiated end to end: passed through untouched.
        if other.player.is_some() {
            return None;
        }
        other.rtp_route(to, layout)
    }

    /// The counters of legs A and B.
    pub(super) fn stats(&self) -> (LegStats, LegStats) {
        (self.legs[0].stats, self.legs[1].stats)
    }
}
