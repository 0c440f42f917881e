//! Media anchoring of one bridged call: every SDP that crosses Outpost is rewritten so RTP
//! and RTCP flow through the relay, and the relay learns what to expect on each leg.
//!
//! The B2BUA classifies each body (RFC 3264: an INVITE or UPDATE body is an offer, the
//! matching response or ACK body the answer; with a body-less INVITE the 2xx carries the
//! offer and the ACK the answer) and hands it to [`CallMedia::offer`] or
//! [`CallMedia::answer`], which return the body for the other leg and, once both sides are
//! known, the command for the relay.

use std::net::{IpAddr, SocketAddr};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::media::sdp::{self, Crypto, Direction, OriginState, Sdp, SdpError};
use crate::media::session::{Codec, Leg, LegMedia, MediaCommand, SessionId, SrtpKeys};
use crate::media::srtp::{Suite, KEY_MATERIAL_LEN};

/// The suites offered to a phone, in preference order, with their `a=crypto` tags.
const OFFERED_SUITES: [(u32, Suite); 2] = [
    (1, Suite::AesCm128HmacSha1_80),
    (2, Suite::AesCm128HmacSha1_32),
];

/// SDP state of one call's two legs.
///
/// SRTP (RFC 3711 with SDES keys, RFC 4568) is terminated on each leg: a leg whose phone
/// offers or answers `RTP/SAVP` with a usable `a=crypto` line gets its own key from
/// Outpost, and the relay decrypts and re-encrypts. The offer relayed to the other leg
/// mirrors the offerer's profile; an answerer may answer a SAVP offer with plain RTP/AVP
/// ("best effort SRTP"), and its leg is then plain.
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
    /// Outpost's SRTP master keys, per leg (A, B) and suite (as in [`OFFERED_SUITES`]):
    /// made once per call, so a re-INVITE keeps the relay's SRTP state.
    srtp_keys: [[Option<[u8; KEY_MATERIAL_LEN]>; 2]; 2],
    /// Source of those keys; seeded from the OS on first use (see [`Self::set_key_seed`]).
    key_rng: Option<StdRng>,
    /// Whether SDES keys may cross the signalling of leg A and leg B (RFC 4568 §8.3: only
    /// over a secure transport). A leg that may not gets no key of ours, and the keys its
    /// phone sends are ignored (its media is plain RTP).
    sdes: [bool; 2],
}

impl std::fmt::Debug for CallMedia {
    // Keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMedia")
            .field("session", &self.session)
            .field("ports", &(self.port_a, self.port_b))
            .field("offer", &self.offer)
            .field("leg_a", &self.leg_a)
            .field("leg_b", &self.leg_b)
            .field("opened", &self.opened)
            .field("on_hold", &self.on_hold)
            .finish_non_exhaustive()
    }
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
            srtp_keys: [[None; 2]; 2],
            key_rng: None,
            sdes: [true; 2],
        }
    }

    /// Seeds the generator of Outpost's SRTP keys (tests, reproducible runs). Without it
    /// the generator is seeded from the operating system the first time a key is needed:
    /// the `origin_seed` is not secret (it is the `o=` session id), so keys never come
    /// from it.
    pub fn set_key_seed(&mut self, seed: [u8; 32]) {
        self.key_rng = Some(StdRng::from_seed(seed));
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

    /// Updates the signalling address of leg A (a new phone took the caller's place).
    pub fn set_signal_a(&mut self, ip: IpAddr) {
        self.signal_a = ip;
    }

    /// Updates the signalling address of leg B once the answering fork is known.
    pub fn set_signal_b(&mut self, ip: IpAddr) {
        self.signal_b = ip;
    }

    /// Whether SDES keys may cross `leg`'s signalling; allowed on both legs until told
    /// otherwise (the endpoint decides from each leg's transport and configuration).
    pub fn set_sdes(&mut self, leg: Leg, allowed: bool) {
        self.sdes[leg_index(leg)] = allowed;
    }

    fn sdes_allowed(&self, leg: Leg) -> bool {
        self.sdes[leg_index(leg)]
    }

    /// An offer from leg `from`: returns the anchored offer for the other leg.
    pub fn offer(&mut self, from: Leg, body: &[u8]) -> Result<Vec<u8>, SdpError> {
        let mut received = Sdp::parse(body)?;
        if !self.sdes_allowed(from) {
            // Keys that crossed an insecure transport protect nothing: the offerer's
            // media is plain, and so is our answer.
            sdp::strip_sdes(&mut received);
        }
        self.on_hold = sdp::is_hold(&received);
        if self.on_hold {
            self.held_by = Some(from);
        } else if self.held_by == Some(from) {
            self.held_by = None;
        }
        let mut out = sdp::offer_for_b(&received);
        if let Some((i, m)) = received.audio() {
            if m.is_srtp() && m.cryptos().next().is_none() {
                return Err(SdpError::Malformed(
                    "RTP/SAVP offer without a usable crypto line",
                ));
            }
            // The other leg gets the offerer's profile and, for SRTP, Outpost's own keys.
            let cryptos: Vec<Crypto> = if m.is_srtp() {
                OFFERED_SUITES
                    .iter()
                    .map(|&(tag, suite)| Crypto {
                        tag,
                        suite,
                        key: self.local_key(from.other(), suite),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(m) = out.media.get_mut(i) {
                m.set_cryptos(&cryptos);
            }
        }
        // No key of one phone ever reaches the other (a rejected video stream included).
        strip_cryptos(&mut out, received.audio().map(|(i, _)| i));
        if !self.sdes_allowed(from.other()) {
            sdp::strip_sdes(&mut out);
        }
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
        let mut answer = Sdp::parse(body)?;
        if !self.sdes_allowed(from) {
            sdp::strip_sdes(&mut answer);
        }
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
        // SRTP on each leg on its own: the answerer's from its answer to our offer, the
        // offerer's from its offer; the offerer's answer carries the offerer's profile.
        let srtp_ans = answered_crypto(&answer, &offer_sent).map(|(theirs, ours)| SrtpKeys {
            suite: theirs.suite,
            remote_key: theirs.key,
            local_key: ours.key,
        });
        let offerer_crypto = offered_crypto(&offer);
        let srtp_off = offerer_crypto.as_ref().map(|c| self.keys_for(offerer, c));
        secure_like_offer(
            &mut back,
            &offer,
            srtp_off.as_ref(),
            offerer_crypto.as_ref(),
        );
        let (addr, port, origin) = self.towards(offerer);
        back.anchor(addr, port, origin);

        let answerer_leg = self.leg_media(from, &answer, codec_ans, pt_ans, dtmf_ans, srtp_ans);
        let offerer_leg = self.leg_media(offerer, &offer, codec_off, pt_off, dtmf_off, srtp_off);
        let (a, b) = match from {
            Leg::A => (answerer_leg, offerer_leg),
            Leg::B => (offerer_leg, answerer_leg),
        };
        self.leg_a = Some(a.clone());
        self.leg_b = Some(b.clone());
        let mut cmds = vec![self.open_or_update(a, b)];
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
        let (answer, agreed, a) = self.answer_as_end(Leg::A, &offer, Direction::SendRecv)?;
        self.local_offer_a = Some(agreed);
        self.leg_a = Some(a.clone());
        Ok((answer, self.open_or_update(a, LegMedia::absent())))
    }

    /// A re-INVITE's offer from `leg` answered by Outpost itself, the other end of that
    /// leg (a party of a conference, whose audio goes into a mix): its G.711 codec as
    /// before, the direction mirrored (a phone that holds gets `recvonly`). Returns the SDP
    /// for that phone and the relay's `Update`; the other leg is left as it is.
    pub fn reanswer_local(
        &mut self,
        leg: Leg,
        body: &[u8],
    ) -> Result<(Vec<u8>, MediaCommand), SdpError> {
        let mut offer = Sdp::parse(body)?;
        if !self.sdes_allowed(leg) {
            sdp::strip_sdes(&mut offer);
        }
        let (idx, _) = offer
            .audio()
            .ok_or(SdpError::Malformed("no audio stream"))?;
        let direction = match offer.media_direction(idx) {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
            Direction::SendRecv => Direction::SendRecv,
        };
        self.on_hold = sdp::is_hold(&offer);
        let (answer, _, media) = self.answer_as_end(leg, &offer, direction)?;
        let (a, b) = match leg {
            Leg::A => (media, self.leg_b.clone().unwrap_or_else(LegMedia::absent)),
            Leg::B => (self.leg_a.clone().unwrap_or_else(LegMedia::absent), media),
        };
        self.leg_a = Some(a.clone());
        self.leg_b = Some(b.clone());
        Ok((answer, self.open_or_update(a, b)))
    }

    /// Outpost's own answer to `offer` from `leg`: the offer's first G.711 codec (plus
    /// telephone-event if offered) with `direction`, anchored on that leg's port. Returns
    /// the answer, what the phone agreed to (its offer cut to the answered formats, with
    /// its own key) and the leg's media for the relay.
    fn answer_as_end(
        &mut self,
        leg: Leg,
        offer: &Sdp,
        direction: Direction,
    ) -> Result<(Vec<u8>, Sdp, LegMedia), SdpError> {
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
            m.set_direction(direction);
        }
        let mut agreed = offer.clone();
        if let (Some(m), Some(ans)) = (agreed.media.get_mut(idx), answer.media.get(idx)) {
            m.formats = ans.formats.clone();
            let crypto = m.cryptos().next();
            m.attributes = ans.attributes.clone();
            m.set_cryptos(crypto.as_slice());
        }
        let crypto = offered_crypto(offer);
        let srtp = crypto.as_ref().map(|c| self.keys_for(leg, c));
        secure_like_offer(&mut answer, offer, srtp.as_ref(), crypto.as_ref());
        let (addr, port, origin) = self.towards(leg);
        answer.anchor(addr, port, origin);
        let media = self.leg_media(leg, offer, codec, pt, dtmf, srtp);
        Ok((answer.emit(), agreed, media))
    }

    /// `Open` the first time the relay hears of this session, `Update` afterwards.
    fn open_or_update(&mut self, a: LegMedia, b: LegMedia) -> MediaCommand {
        if self.opened {
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
        }
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

    /// The caller's offer cut down to what Outpost answered locally (after
    /// [`Self::answer_local`]): what the caller sends, to offer to further phones.
    pub fn agreed_offer(&self) -> Option<Vec<u8>> {
        self.local_offer_a.as_ref().map(Sdp::emit)
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

    /// Outpost's key towards `leg`'s phone for `suite`, made on first use.
    fn local_key(&mut self, leg: Leg, suite: Suite) -> [u8; KEY_MATERIAL_LEN] {
        let s = match suite {
            Suite::AesCm128HmacSha1_80 => 0,
            Suite::AesCm128HmacSha1_32 => 1,
        };
        let l = leg_index(leg);
        if let Some(key) = self.srtp_keys[l][s] {
            return key;
        }
        let rng = self.key_rng.get_or_insert_with(StdRng::from_entropy);
        let mut key = [0u8; KEY_MATERIAL_LEN];
        rng.fill_bytes(&mut key);
        self.srtp_keys[l][s] = Some(key);
        key
    }

    /// The keys of `leg` whose phone offered `crypto`.
    fn keys_for(&mut self, leg: Leg, crypto: &Crypto) -> SrtpKeys {
        SrtpKeys {
            suite: crypto.suite,
            remote_key: crypto.key,
            local_key: self.local_key(leg, crypto.suite),
        }
    }

    fn leg_media(
        &self,
        leg: Leg,
        sdp: &Sdp,
        codec: Codec,
        pt: u8,
        dtmf_pt: Option<u8>,
        srtp: Option<SrtpKeys>,
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
            srtp,
        }
    }
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

/// The crypto line Outpost takes from an SRTP offer: the first usable one of its audio
/// stream. `None` for a plain RTP offer.
fn offered_crypto(offer: &Sdp) -> Option<Crypto> {
    let (_, m) = offer.audio()?;
    if !m.is_srtp() {
        return None;
    }
    m.cryptos().next()
}

/// The answerer's crypto line and the line of ours it accepted (same tag and suite), when
/// it answered SRTP; `None` when it answered plain RTP (or nothing usable).
fn answered_crypto(answer: &Sdp, offer_sent: &Sdp) -> Option<(Crypto, Crypto)> {
    let (_, am) = answer.audio()?;
    let (_, om) = offer_sent.audio()?;
    if !am.is_srtp() || !om.is_srtp() {
        return None;
    }
    let theirs = am.cryptos().next()?;
    let ours = om
        .cryptos()
        .find(|c| c.tag == theirs.tag && c.suite == theirs.suite)?;
    Some((theirs, ours))
}

/// Gives the answer to an offerer the offerer's audio profile (RFC 3264: the answer's
/// transport matches the offer's) and, for SRTP, the offerer's tag and suite with
/// Outpost's key; a plain answer loses any crypto line.
fn secure_like_offer(
    answer: &mut Sdp,
    offer: &Sdp,
    keys: Option<&SrtpKeys>,
    crypto: Option<&Crypto>,
) {
    let audio = answer.audio().map(|(i, _)| i);
    strip_cryptos(answer, audio);
    let Some((_, om)) = offer.audio() else {
        return;
    };
    let proto = om.proto.clone();
    let Some(i) = audio else {
        return;
    };
    let line = match (keys, crypto) {
        (Some(keys), Some(crypto)) => vec![Crypto {
            tag: crypto.tag,
            suite: keys.suite,
            key: keys.local_key,
        }],
        _ => Vec::new(),
    };
    if let Some(m) = answer.media.get_mut(i) {
        m.proto = proto;
        m.set_cryptos(&line);
    }
}

/// Removes every `a=crypto` line except those of media section `keep`.
fn strip_cryptos(sdp: &mut Sdp, keep: Option<usize>) {
    sdp.attributes.retain(|a| !a.is("crypto"));
    for (i, m) in sdp.media.iter_mut().enumerate() {
        if Some(i) != keep {
            m.set_cryptos(&[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;

    use super::*;

    const KEY_A: [u8; KEY_MATERIAL_LEN] = [0xa1; KEY_MATERIAL_LEN];
    const KEY_B: [u8; KEY_MATERIAL_LEN] = [0xb2; KEY_MATERIAL_LEN];

    fn media() -> CallMedia {
        let ip = |s: &str| s.parse::<IpAddr>().expect("IP literal");
        let mut m = CallMedia::new(
            7,
            30000,
            30002,
            ip("10.0.0.1"),
            ip("10.0.0.1"),
            ip("192.168.1.10"),
            ip("192.168.1.20"),
            1234,
        );
        m.set_key_seed([9; 32]);
        m
    }

    fn sdp(host: &str, proto: &str, crypto: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=x 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
             m=audio 5000 {proto} 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}\
             a=sendrecv\r\n"
        )
        .into_bytes()
    }

    fn line(tag: u32, suite: &str, key: &[u8]) -> String {
        format!("a=crypto:{tag} {suite} inline:{}\r\n", BASE64.encode(key))
    }

    fn audio_of(body: &[u8]) -> sdp::MediaDesc {
        let sdp = Sdp::parse(body).expect("valid SDP");
        sdp.audio().expect("audio").1.clone()
    }

    fn legs(cmd: &MediaCommand) -> (&LegMedia, &LegMedia) {
        match cmd {
            MediaCommand::Open { a, b, .. } | MediaCommand::Update { a, b, .. } => (a, b),
            other => panic!("not Open/Update: {other:?}"),
        }
    }

    #[test]
    fn srtp_on_both_legs_each_with_its_own_keys() {
        let mut m = media();
        let offer_a = sdp(
            "192.168.1.10",
            "RTP/SAVP",
            &line(3, "AES_CM_128_HMAC_SHA1_80", &KEY_A),
        );
        let to_b = m.offer(Leg::A, &offer_a).expect("offer accepted");
        let to_b_text = String::from_utf8(to_b.clone()).expect("UTF-8");
        assert!(
            !to_b_text.contains(&BASE64.encode(KEY_A)),
            "A's key never reaches B"
        );
        let b_audio = audio_of(&to_b);
        assert_eq!(b_audio.proto, "RTP/SAVP");
        let offered: Vec<Crypto> = b_audio.cryptos().collect();
        assert_eq!(
            offered.iter().map(|c| (c.tag, c.suite)).collect::<Vec<_>>(),
            vec![
                (1, Suite::AesCm128HmacSha1_80),
                (2, Suite::AesCm128HmacSha1_32)
            ]
        );

        let answer_b = sdp(
            "192.168.1.20",
            "RTP/SAVP",
            &line(1, "AES_CM_128_HMAC_SHA1_80", &KEY_B),
        );
        let (to_a, cmds) = m.answer(Leg::B, &answer_b).expect("answer accepted");
        let a_audio = audio_of(&to_a);
        assert_eq!(a_audio.proto, "RTP/SAVP");
        let answered: Vec<Crypto> = a_audio.cryptos().collect();
        assert_eq!(answered.len(), 1);
        assert_eq!(
            (answered[0].tag, answered[0].suite),
            (3, Suite::AesCm128HmacSha1_80)
        );
        assert!(answered[0].key != KEY_A && answered[0].key != KEY_B);

        let (la, lb) = legs(&cmds[0]);
        let ka = la.srtp.as_ref().expect("A is SRTP");
        assert_eq!(ka.remote_key, KEY_A);
        assert_eq!(ka.local_key, answered[0].key);
        let kb = lb.srtp.as_ref().expect("B is SRTP");
        assert_eq!(kb.suite, Suite::AesCm128HmacSha1_80);
        assert_eq!(kb.remote_key, KEY_B);
        assert_eq!(kb.local_key, offered[0].key);
        assert_ne!(ka.local_key, kb.local_key);
    }

    #[test]
    fn a_plain_answer_to_an_srtp_offer_leaves_the_offerer_on_srtp() {
        let mut m = media();
        let offer_a = sdp(
            "192.168.1.10",
            "RTP/SAVP",
            &line(1, "AES_CM_128_HMAC_SHA1_32", &KEY_A),
        );
        m.offer(Leg::A, &offer_a).expect("offer accepted");
        let (to_a, cmds) = m
            .answer(Leg::B, &sdp("192.168.1.20", "RTP/AVP", ""))
            .expect("answer accepted");
        let a_audio = audio_of(&to_a);
        assert_eq!(a_audio.proto, "RTP/SAVP", "A gets the profile it offered");
        let c: Vec<Crypto> = a_audio.cryptos().collect();
        assert_eq!((c.len(), c[0].suite), (1, Suite::AesCm128HmacSha1_32));
        let (la, lb) = legs(&cmds[0]);
        assert_eq!(la.srtp.as_ref().map(|k| k.remote_key), Some(KEY_A));
        assert_eq!(lb.srtp, None, "B is plain RTP");
    }

    #[test]
    fn a_plain_offer_stays_plain_and_srtp_without_keys_is_refused() {
        let mut m = media();
        let to_b = m
            .offer(Leg::A, &sdp("192.168.1.10", "RTP/AVP", ""))
            .expect("offer accepted");
        let b_audio = audio_of(&to_b);
        assert_eq!(
            (b_audio.proto.as_str(), b_audio.cryptos().count()),
            ("RTP/AVP", 0)
        );
        let (_, cmds) = m
            .answer(Leg::B, &sdp("192.168.1.20", "RTP/AVP", ""))
            .expect("answer accepted");
        let (la, lb) = legs(&cmds[0]);
        assert_eq!((la.srtp.as_ref(), lb.srtp.as_ref()), (None, None));

        let mut m = media();
        let unknown = "a=crypto:1 AEAD_AES_256_GCM inline:AAAA\r\n";
        assert!(m
            .offer(Leg::A, &sdp("192.168.1.10", "RTP/SAVP", unknown))
            .is_err());
        assert!(m
            .offer(Leg::A, &sdp("192.168.1.10", "RTP/SAVP", ""))
            .is_err());
    }

    #[test]
    fn outpost_answers_srtp_itself_and_a_transfer_keeps_the_callers_key() {
        let mut m = media();
        let offer_a = sdp(
            "192.168.1.10",
            "RTP/SAVPF",
            &line(5, "AES_CM_128_HMAC_SHA1_80", &KEY_A),
        );
        m.offer(Leg::A, &offer_a).expect("offer accepted");
        let (to_a, cmd) = m.answer_local().expect("answered locally");
        let audio = audio_of(&to_a);
        assert_eq!(audio.proto, "RTP/SAVPF");
        let c: Vec<Crypto> = audio.cryptos().collect();
        assert_eq!((c.len(), c[0].tag), (1, 5));
        let (la, _) = legs(&cmd);
        let ka = la.srtp.clone().expect("A is SRTP");
        assert_eq!((ka.remote_key, ka.local_key), (KEY_A, c[0].key));

        // Transferred out: B is offered SRTP, and A keeps its keys in both directions.
        let to_b = m.offer_to_b().expect("re-offer");
        assert_eq!(audio_of(&to_b).proto, "RTP/SAVPF");
        let (to_a2, cmds) = m
            .answer(
                Leg::B,
                &sdp(
                    "192.168.1.20",
                    "RTP/SAVPF",
                    &line(2, "AES_CM_128_HMAC_SHA1_32", &KEY_B),
                ),
            )
            .expect("answer accepted");
        let (la, lb) = legs(&cmds[0]);
        assert_eq!(la.srtp.as_ref(), Some(&ka), "A's SRTP state carries over");
        assert_eq!(
            audio_of(&to_a2).cryptos().next().map(|c| c.key),
            Some(ka.local_key)
        );
        let kb = lb.srtp.as_ref().expect("B is SRTP");
        assert_eq!(
            (kb.suite, kb.remote_key),
            (Suite::AesCm128HmacSha1_32, KEY_B)
        );
    }

    #[test]
    fn keys_come_from_the_key_seed_not_the_public_origin_seed() {
        let run = |seed: [u8; 32]| {
            let mut m = media();
            m.set_key_seed(seed);
            let offer = sdp(
                "192.168.1.10",
                "RTP/SAVP",
                &line(1, "AES_CM_128_HMAC_SHA1_80", &KEY_A),
            );
            let to_b = m.offer(Leg::A, &offer).expect("offer accepted");
            audio_of(&to_b).cryptos().next().expect("crypto").key
        };
        assert_eq!(run([1; 32]), run([1; 32]));
        assert_ne!(run([1; 32]), run([2; 32]));
        // Unseeded: from the OS, so two calls with the same origin seed differ.
        let unseeded = || {
            let ip: IpAddr = "10.0.0.1".parse().expect("IP");
            let mut m = CallMedia::new(1, 30000, 30002, ip, ip, ip, ip, 1);
            let offer = sdp(
                "10.0.0.9",
                "RTP/SAVP",
                &line(1, "AES_CM_128_HMAC_SHA1_80", &KEY_A),
            );
            let to_b = m.offer(Leg::A, &offer).expect("offer accepted");
            audio_of(&to_b).cryptos().next().expect("crypto").key
        };
        assert_ne!(unseeded(), unseeded());
    }
}
