//! Media anchoring of one bridged call: every SDP that crosses Outpost is rewritten so RTP
//! and RTCP flow through the relay, and the relay learns what to expect on each leg.
//!
//! The B2BUA classifies each body (RFC 3264: an INVITE or UPDATE body is an offer, the
//! matching response or ACK body the answer; with a body-less INVITE the 2xx carries the
//! offer and the ACK the answer) and hands it to [`CallMedia::offer`] or
//! [`CallMedia::answer`], which return the body for the other leg and, once both sides are
//! known, the command for the relay.

use std::net::{IpAddr, SocketAddr};

use crate::media::sdp::{self, OriginState, Sdp, SdpError};
use crate::media::session::{Codec, Leg, LegMedia, MediaCommand, SessionId};

/// SDP state of one call's two legs.
#[derive(Debug)]
pub struct CallMedia {
    session: SessionId,
    /// Relay RTP port towards each leg.
    port_a: u16,
    port_b: u16,
    /// Our media address towards each leg.
    addr_a: IpAddr,
    addr_b: IpAddr,
    /// Signalling source address of each leg's phone (a NATed phone's SDP lies).
    signal_a: IpAddr,
    signal_b: IpAddr,
    origin_a: OriginState,
    origin_b: OriginState,
    /// The last offer as received, and who sent it.
    offer: Option<(Leg, Sdp)>,
    /// The offer as we forwarded it (needed to pick the codec from the answer).
    offer_sent: Option<Sdp>,
    leg_a: Option<LegMedia>,
    leg_b: Option<LegMedia>,
    opened: bool,
    on_hold: bool,
    /// The leg whose phone holds the call (its last offer was sendonly/inactive).
    held_by: Option<Leg>,
    /// Music-on-hold state the relay was last told about.
    moh_playing_to: Option<Leg>,
    /// The caller's offer cut down to what Outpost answered locally (for a transfer).
    local_offer_a: Option<Sdp>,
}

/// The prompt played to a held party.
pub const MOH_CLIP: &str = "moh";

impl CallMedia {
    /// Media state for a call whose legs use relay ports `port_a` and `port_b`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: SessionId,
        port_a: u16,
        port_b: u16,
        addr_a: IpAddr,
        addr_b: IpAddr,
        signal_a: IpAddr,
        signal_b: IpAddr,
        origin_seed: u64,
    ) -> Self {
        CallMedia {
            session,
            port_a,
            port_b,
            addr_a,
            addr_b,
            signal_a,
            signal_b,
            origin_a: OriginState::new(origin_seed),
            origin_b: OriginState::new(origin_seed.wrapping_add(1)),
            offer: None,
            offer_sent: None,
            leg_a: None,
            leg_b: None,
            opened: false,
            on_hold: false,
            held_by: None,
            moh_playing_to: None,
            local_offer_a: None,
        }
    }

    /// The relay session.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The relay RTP ports of legs A and B.
    pub fn ports(&self) -> (u16, u16) {
        (self.port_a, self.port_b)
    }

    /// Codecs in use on legs A and B, once negotiated.
    pub fn codecs(&self) -> Option<(Codec, Codec)> {
        Some((self.leg_a.as_ref()?.codec, self.leg_b.as_ref()?.codec))
    }

    /// True while either phone holds the call (its last SDP was sendonly/inactive).
    pub fn on_hold(&self) -> bool {
        self.on_hold
    }

    /// Updates the signalling address of leg B once the answering fork is known.
    pub fn set_signal_b(&mut self, ip: IpAddr) {
        self.signal_b = ip;
    }

    /// An offer from leg `from`: returns the anchored offer for the other leg.
    pub fn offer(&mut self, from: Leg, body: &[u8]) -> Result<Vec<u8>, SdpError> {
        let received = Sdp::parse(body)?;
        self.on_hold = sdp::is_hold(&received);
        if self.on_hold {
            self.held_by = Some(from);
        } else if self.held_by == Some(from) {
            self.held_by = None;
        }
        let mut out = sdp::offer_for_b(&received);
        let (addr, port, origin) = self.towards(from.other());
        out.anchor(addr, port, origin);
        self.offer = Some((from, received));
        self.offer_sent = Some(out.clone());
        Ok(out.emit())
    }

    /// The answer from leg `from` to the outstanding offer: returns the anchored answer for
    /// the offerer and the relay command (Open the first time, Update afterwards).
    pub fn answer(
        &mut self,
        from: Leg,
        body: &[u8],
    ) -> Result<(Vec<u8>, Vec<MediaCommand>), SdpError> {
        let answer = Sdp::parse(body)?;
        let Some((offerer, offer)) = self.offer.clone() else {
            return Err(SdpError::Malformed("answer without an offer"));
        };
        if offerer == from {
            return Err(SdpError::Malformed("answer from the offerer"));
        }
        let offer_sent = self.offer_sent.clone().unwrap_or_else(|| offer.clone());
        // What the answerer sends: its chosen format among those we offered it.
        let (codec_ans, pt_ans, dtmf_ans) =
            sdp::choose(&answer, &offer_sent).unwrap_or((Codec::Other, 0, None));
        // What the offerer gets: the answer, re-written to the offerer's own codecs if the
        // answerer picked one the offerer does not have (then the relay transcodes).
        let (mut back, codec_off, pt_off) = sdp::answer_for_a(&answer, &offer);
        let dtmf_off = sdp::choose(&back, &offer).and_then(|(_, _, d)| d);
        if sdp::is_hold(&answer) {
            self.on_hold = true;
        }
        let (addr, port, origin) = self.towards(offerer);
        back.anchor(addr, port, origin);

        let answerer_leg = self.leg_media(from, &answer, codec_ans, pt_ans, dtmf_ans);
        let offerer_leg = self.leg_media(offerer, &offer, codec_off, pt_off, dtmf_off);
        let (a, b) = match from {
            Leg::A => (answerer_leg, offerer_leg),
            Leg::B => (offerer_leg, answerer_leg),
        };
        self.leg_a = Some(a.clone());
        self.leg_b = Some(b.clone());
        let cmd = if self.opened {
            MediaCommand::Update {
                session: self.session,
                a,
                b,
            }
        } else {
            self.opened = true;
            MediaCommand::Open {
                session: self.session,
                a,
                b,
            }
        };
        let mut cmds = vec![cmd];
        // Music on hold: the held party hears music while the other phone holds.
        let moh_to = self.held_by.map(Leg::other);
        if moh_to != self.moh_playing_to {
            if let Some(leg) = self.moh_playing_to {
                cmds.push(MediaCommand::StopPlay {
                    session: self.session,
                    leg,
                });
            }
            if let Some(leg) = moh_to {
                cmds.push(MediaCommand::Play {
                    session: self.session,
                    leg,
                    clips: vec![MOH_CLIP.to_string()],
                    repeat: true,
                });
            }
            self.moh_playing_to = moh_to;
        }
        Ok((back.emit(), cmds))
    }

    /// Answers the caller's offer with Outpost itself as the other end (voicemail, auto
    /// attendant): the first G.711 codec of the offer (plus telephone-event if offered),
    /// anchored on leg A's port. Returns the SDP for the caller and the relay command for
    /// a one-legged session.
    pub fn answer_local(&mut self) -> Result<(Vec<u8>, MediaCommand), SdpError> {
        let Some((Leg::A, offer)) = self.offer.clone() else {
            return Err(SdpError::Malformed("no offer from the caller"));
        };
        let (idx, audio) = offer
            .audio()
            .ok_or(SdpError::Malformed("no audio stream"))?;
        let pick = audio
            .payload_types()
            .find_map(|pt| match audio.codec_of(pt) {
                c @ (Codec::Pcmu | Codec::Pcma) => Some((c, pt)),
                Codec::Other => None,
            });
        let (codec, pt) = pick.ok_or(SdpError::Malformed("no G.711 codec offered"))?;
        let dtmf = audio.telephone_event_pt();
        let keep: Vec<String> = std::iter::once(pt)
            .chain(dtmf)
            .map(|p| p.to_string())
            .collect();
        let mut answer = offer.clone();
        if let Some(m) = answer.media.get_mut(idx) {
            m.formats = keep.clone();
            m.attributes.retain(|a| {
                let name = a.name.to_ascii_lowercase();
                if name == "rtpmap" || name == "fmtp" {
                    let pt = a
                        .value
                        .as_deref()
                        .and_then(|v| v.split_whitespace().next())
                        .unwrap_or("");
                    return keep.iter().any(|k| k == pt);
                }
                !matches!(
                    name.as_str(),
                    "sendonly" | "recvonly" | "inactive" | "sendrecv"
                )
            });
            m.set_direction(sdp::Direction::SendRecv);
        }
        // What the caller agreed to is its offer cut to the answered formats.
        let mut agreed = offer.clone();
        if let (Some(m), Some(ans)) = (agreed.media.get_mut(idx), answer.media.get(idx)) {
            m.formats = ans.formats.clone();
            m.attributes = ans.attributes.clone();
        }
        self.local_offer_a = Some(agreed);
        let (addr, port, origin) = self.towards(Leg::A);
        answer.anchor(addr, port, origin);
        let a = self.leg_media(Leg::A, &offer, codec, pt, dtmf);
        self.leg_a = Some(a.clone());
        let b = LegMedia::absent();
        let cmd = if self.opened {
            MediaCommand::Update {
                session: self.session,
                a,
                b,
            }
        } else {
            self.opened = true;
            MediaCommand::Open {
                session: self.session,
                a,
                b,
            }
        };
        Ok((answer.emit(), cmd))
    }

    /// For a transfer out of a locally answered call: the offer for leg B, built from
    /// what the caller agreed to (its codec stays; the relay transcodes if B differs).
    pub fn offer_to_b(&mut self) -> Result<Vec<u8>, SdpError> {
        let agreed = self
            .local_offer_a
            .clone()
            .ok_or(SdpError::Malformed("no local answer to transfer from"))?;
        self.offer(Leg::A, &agreed.emit())
    }

    /// The command that ends relaying (only if the relay was told about the call).
    pub fn close(&self) -> Option<MediaCommand> {
        self.opened.then_some(MediaCommand::Close {
            session: self.session,
        })
    }

    fn towards(&mut self, leg: Leg) -> (IpAddr, u16, &mut OriginState) {
        match leg {
            Leg::A => (self.addr_a, self.port_a, &mut self.origin_a),
            Leg::B => (self.addr_b, self.port_b, &mut self.origin_b),
        }
    }

    fn leg_media(
        &self,
        leg: Leg,
        sdp: &Sdp,
        codec: Codec,
        pt: u8,
        dtmf_pt: Option<u8>,
    ) -> LegMedia {
        let remote: Option<SocketAddr> = sdp.remote_rtp();
        let signal = match leg {
            Leg::A => self.signal_a,
            Leg::B => self.signal_b,
        };
        let mut allowed_ips = vec![signal];
        if let Some(r) = remote {
            if !allowed_ips.contains(&r.ip()) {
                allowed_ips.push(r.ip());
            }
        }
        LegMedia {
            local_port: match leg {
                Leg::A => self.port_a,
                Leg::B => self.port_b,
            },
            remote,
            allowed_ips,
            codec,
            pt,
            dtmf_pt,
        }
    }
}
