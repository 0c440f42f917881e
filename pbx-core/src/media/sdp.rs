//! SDP (RFC 8866 syntax) and the offer/answer rules (RFC 3264) of a media-anchoring B2BUA.
//!
//! Every SDP crossing Outpost is parsed once into an [`Sdp`], rewritten by [`Sdp::anchor`] so
//! RTP and RTCP flow through the relay, and emitted again. Everything the core does not
//! interpret (attribute order, `fmtp`, `ptime`, unknown attributes) is kept as it came.
//!
//! Parsing decisions — lenient with phones, strict on structure:
//! - bounded: ≤ [`MAX_SDP`] bytes (checked before anything is interpreted, and again on the
//!   canonical CRLF form), ≤ [`MAX_MEDIA`] `m=` sections, ≤ [`MAX_ATTRIBUTES`] `a=` lines;
//! - lines end in CRLF or LF; any other CR (CR-only line ends included) is rejected, as are
//!   NUL bytes and text that is not UTF-8; blank lines are skipped;
//! - `v=0` comes first, `o=` and `s=` exactly once; `m=` starts a media section; the other
//!   session-level lines may come in any order and are emitted in RFC order;
//! - a line type RFC 8866 does not define is rejected (RFC 8866 §5: a parser must not
//!   use a description containing a type letter it does not understand);
//! - trailing spaces/tabs are dropped except in the free-text fields `s= i= u= e= p=`, and
//!   fields of `o=`, `c=`, `m=` may be separated by runs of whitespace;
//! - a missing `t=` is taken as `t=0 0` (some phones omit it);
//! - `c=` accepts IP literals and, as RFC 8866 allows, host names ([`Host::Name`]). The core
//!   resolves nothing, so [`Sdp::remote_rtp`] is `None` for a name and the relay relies on
//!   symmetric RTP latching; [`Sdp::anchor`] replaces every `c=` with an IP anyway.
//!
//! `emit` always writes CRLF line ends; `parse(emit(sdp)) == sdp` for every parsed `sdp`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use thiserror::Error;

use crate::media::session::Codec;
use crate::media::srtp::{Suite, KEY_MATERIAL_LEN};

/// Largest SDP body accepted (bytes).
pub const MAX_SDP: usize = 8 * 1024;
/// Most media sections (`m=` lines) accepted.
pub const MAX_MEDIA: usize = 64;
/// Most attribute lines accepted, session and media level together.
pub const MAX_ATTRIBUTES: usize = 256;

/// Why bytes are not an acceptable SDP body. Line numbers count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SdpError {
    /// The body exceeds [`MAX_SDP`].
    #[error("SDP too large")]
    TooLarge,
    /// More than [`MAX_MEDIA`] media sections.
    #[error("too many media sections")]
    TooManyMedia,
    /// More than [`MAX_ATTRIBUTES`] attribute lines.
    #[error("too many attributes")]
    TooManyAttributes,
    /// A CR not followed by LF (CR-only line ends included).
    #[error("line {0}: bare CR")]
    BadLineEnd(usize),
    /// Not UTF-8, or a NUL byte.
    #[error("line {0}: invalid text")]
    BadText(usize),
    /// Not of the form `<letter>=<value>`.
    #[error("line {0}: malformed line")]
    BadLine(usize),
    /// The description breaks a structural or offer/answer rule (also used by callers).
    #[error("malformed SDP: {0}")]
    Malformed(&'static str),
    /// A type letter RFC 8866 does not define.
    #[error("line {0}: unknown line type")]
    UnknownType(usize),
    /// A line repeated, or at a level where it is not allowed.
    #[error("line {0}: line repeated or misplaced")]
    Misplaced(usize),
    /// The first line is not `v=0`.
    #[error("v=0 is not the first line")]
    BadVersion,
    /// No `o=` line.
    #[error("o= missing")]
    MissingOrigin,
    /// No `s=` line.
    #[error("s= missing")]
    MissingSessionName,
    /// An invalid `o=` line.
    #[error("line {0}: bad o= line")]
    BadOrigin(usize),
    /// An invalid `c=` line.
    #[error("line {0}: bad c= line")]
    BadConnection(usize),
    /// An invalid `m=` line (port above 65535 included).
    #[error("line {0}: bad m= line")]
    BadMedia(usize),
    /// An `a=` line without a valid attribute name.
    #[error("line {0}: bad a= line")]
    BadAttribute(usize),
}

/// A parsed session description (`v=0` is implied: no other version exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// `o=`.
    pub origin: Origin,
    /// `s=` as written (may be a single space).
    pub session_name: String,
    /// `i=` at session level.
    pub info: Option<String>,
    /// `u=`.
    pub uri: Option<String>,
    /// `e=` lines in order.
    pub emails: Vec<String>,
    /// `p=` lines in order.
    pub phones: Vec<String>,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level `b=` values (`AS:64`), in order.
    pub bandwidth: Vec<String>,
    /// The `t=` and `r=` lines in order, each written whole (`"t=0 0"`); never empty.
    pub times: Vec<String>,
    /// `z=` value.
    pub zone: Option<String>,
    /// Session-level `k=` value (obsolete, kept).
    pub key: Option<String>,
    /// Session-level attributes in order.
    pub attributes: Vec<Attribute>,
    /// Media sections in order.
    pub media: Vec<MediaDesc>,
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name, `-` when none.
    pub username: String,
    /// Session id, kept as text: phones write numbers of any length.
    pub sess_id: String,
    /// Session version (RFC 3264 §8: changes with every modified description).
    pub sess_version: u64,
    /// Network type, `IN`.
    pub net_type: String,
    /// Address type, `IP4` or `IP6`.
    pub addr_type: String,
    /// Originating address or host name as written.
    pub addr: String,
}

/// IP version of a connection address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    /// `IP4`.
    Ip4,
    /// `IP6`.
    Ip6,
}

/// The host part of a `c=` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP literal matching the address type.
    Ip(IpAddr),
    /// A host name (never resolved by the core).
    Name(String),
}

/// A `c=` line; the network type is always `IN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `IP4` or `IP6`.
    pub addr_type: AddrType,
    /// The address.
    pub host: Host,
    /// Multicast TTL (`/127`, IP4 only).
    pub ttl: Option<u8>,
    /// Number of multicast addresses (`/3`).
    pub count: Option<u32>,
}

/// An `a=` line: `a=name` or `a=name:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Everything after the first `:`, if there is one.
    pub value: Option<String>,
}

/// One media section (`m=` and the lines after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    /// `audio`, `video`, `image`, ...
    pub kind: String,
    /// Transport port; 0 means rejected or disabled.
    pub port: u16,
    /// `/<n>` after the port, if written.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVP`, `udptl`, ...
    pub proto: String,
    /// Formats as written (RTP payload type numbers for RTP protocols).
    pub formats: Vec<String>,
    /// Media-level `i=`.
    pub info: Option<String>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// Media-level `b=` values in order.
    pub bandwidth: Vec<String>,
    /// Media-level `k=` value.
    pub key: Option<String>,
    /// Media-level attributes in order.
    pub attributes: Vec<Attribute>,
}

/// Media direction (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

/// An `a=rtpmap` entry, or the RFC 3551 entry of a static payload type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Encoding name as written (`PCMU`, `opus`, `telephone-event`).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count, when written.
    pub channels: Option<u16>,
}

/// A usable `a=crypto` line (RFC 4568 §9.1) of an `RTP/SAVP` stream: a supported suite,
/// one inline key of the right length, no MKI, and no session parameter Outpost cannot
/// honour. Lines that are not usable are never turned into a `Crypto`.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    /// The tag that ties an answer's line to the offer's.
    pub tag: u32,
    /// The crypto suite.
    pub suite: Suite,
    /// Master key || master salt.
    pub key: [u8; KEY_MATERIAL_LEN],
}

impl fmt::Debug for Crypto {
    // Keys never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// The `o=` line Outpost writes on one leg, and the last body sent there.
///
/// Keep one per leg for the whole call; [`Sdp::anchor`] bumps the version only when the
/// body differs from the last one sent (RFC 3264 §8: an unchanged re-offer keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginState {
    sess_id: u64,
    version: u64,
    last: Option<Vec<u8>>,
}

impl OriginState {
    /// A fresh origin for one leg; the first body is sent with version 1.
    pub fn new(sess_id: u64) -> Self {
        OriginState {
            sess_id,
            version: 1,
            last: None,
        }
    }

    /// The session id written in `o=`.
    pub fn sess_id(&self) -> u64 {
        self.sess_id
    }

    /// The version of the last body sent (or of the first one, before anything was sent).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes Outpost's `o=` into `sdp`, bumping the version if the body changed.
    fn stamp(&mut self, sdp: &mut Sdp, addr: IpAddr) {
        sdp.origin = Origin {
            username: "outpost".to_owned(),
            sess_id: self.sess_id.to_string(),
            sess_version: self.version,
            net_type: "IN".to_owned(),
            addr_type: AddrType::of(addr).as_str().to_owned(),
            addr: addr.to_string(),
        };
        let mut body = sdp.emit();
        if self.last.as_ref().is_some_and(|last| *last != body) {
            self.version = self.version.wrapping_add(1);
            sdp.origin.sess_version = self.version;
            body = sdp.emit();
        }
        self.last = Some(body);
    }
}

impl Sdp {
    /// Parses and validates an SDP body (see the module documentation for the rules).
    pub fn parse(bytes: &[u8]) -> Result<Sdp, SdpError> {
        if bytes.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let bad_line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            SdpError::BadText(bad_line + 1)
        })?;

        let mut parser = Parser::default();
        for (index, raw) in text.split('\n').enumerate() {
            let n = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.contains('\r') {
                return Err(SdpError::BadLineEnd(n));
            }
            if line.contains('\0') {
                return Err(SdpError::BadText(n));
            }
            if line.is_empty() {
                continue;
            }
            parser.line(n, line)?;
        }
        let sdp = parser.finish()?;
        // The limit holds for the canonical form too (CRLF, added `t=0 0`, IPv6 written
        // canonically), so whatever parses can be emitted and parsed again.
        if sdp.emit().len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        Ok(sdp)
    }

    /// Writes the description with CRLF line ends, lines in RFC 8866 order.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512);
        push_line(&mut out, 'v', "0");
        push_line(&mut out, 'o', &self.origin.to_string());
        push_line(&mut out, 's', &self.session_name);
        if let Some(info) = &self.info {
            push_line(&mut out, 'i', info);
        }
        if let Some(uri) = &self.uri {
            push_line(&mut out, 'u', uri);
        }
        for email in &self.emails {
            push_line(&mut out, 'e', email);
        }
        for phone in &self.phones {
            push_line(&mut out, 'p', phone);
        }
        if let Some(c) = &self.connection {
            push_line(&mut out, 'c', &c.to_string());
        }
        for b in &self.bandwidth {
            push_line(&mut out, 'b', b);
        }
        if self.times.is_empty() {
            push_line(&mut out, 't', "0 0");
        }
        for t in &self.times {
            out.push_str(t);
            out.push_str("\r\n");
        }
        if let Some(z) = &self.zone {
            push_line(&mut out, 'z', z);
        }
        if let Some(k) = &self.key {
            push_line(&mut out, 'k', k);
        }
        for a in &self.attributes {
            push_line(&mut out, 'a', &a.to_string());
        }
        for m in &self.media {
            m.emit_into(&mut out);
        }
        out.into_bytes()
    }

    /// The first audio section with a port other than 0, and its index in `media`.
    pub fn audio(&self) -> Option<(usize, &MediaDesc)> {
        self.media
            .iter()
            .enumerate()
            .find(|(_, m)| m.kind.eq_ignore_ascii_case("audio") && m.port != 0)
    }

    /// The session-level direction attribute, if any.
    pub fn session_direction(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }

    /// Effective direction of media section `i`: its own attribute, else the session's,
    /// else sendrecv. An index out of range yields sendrecv.
    pub fn media_direction(&self, i: usize) -> Direction {
        self.media
            .get(i)
            .and_then(MediaDesc::direction)
            .or_else(|| self.session_direction())
            .unwrap_or(Direction::SendRecv)
    }

    /// Effective connection of media section `i`: its own `c=`, else the session's.
    pub fn connection_of(&self, i: usize) -> Option<&Connection> {
        self.media
            .get(i)
            .and_then(|m| m.connection.as_ref())
            .or(self.connection.as_ref())
    }

    /// Where the first audio stream wants RTP: `None` without an audio stream, for a host
    /// name, or for the unspecified address (old-style hold, `c=IN IP4 0.0.0.0`).
    pub fn remote_rtp(&self) -> Option<SocketAddr> {
        let (i, m) = self.audio()?;
        let ip = self.connection_of(i)?.ip()?;
        if ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, m.port))
    }

    /// Whether media section `i` is on RFC 2543 hold: its effective `c=` is the unspecified
    /// address. Not when ICE credentials are present: ICE offers (WebRTC, trickle ICE)
    /// write `0.0.0.0` as a placeholder (RFC 8839 §4.2.1.1), not to stop media.
    fn zero_address_hold(&self, i: usize) -> bool {
        let ice = |attrs: &[Attribute]| attrs.iter().any(|a| a.is("ice-ufrag"));
        self.connection_of(i)
            .and_then(Connection::ip)
            .is_some_and(|ip| ip.is_unspecified())
            && !ice(&self.attributes)
            && !self.media.get(i).is_some_and(|m| ice(&m.attributes))
    }

    /// Rewrites the description so media flows through Outpost at `addr`, RTP on `port`,
    /// RTCP on `port + 1`, and stamps Outpost's `o=` from `origin` (version bumped only when
    /// the result differs from the last body anchored with the same `origin`).
    ///
    /// - every `c=` (session and media) becomes `addr`, unicast;
    /// - the first audio stream gets `port`; every other media section gets port 0 (the
    ///   relay carries audio only), formats kept;
    /// - an existing `a=rtcp` of the audio stream becomes `port+1 IN IP4|IP6 addr`; none is
    ///   added (port+1 is the default); rejected sections lose theirs;
    /// - ICE (`ice-*`, `candidate`, `end-of-candidates`, `remote-candidates`), `rtcp-mux`,
    ///   `rtcp-mux-only`, `bundle-only` and `group:BUNDLE` are removed: the relay does none
    ///   of them and relays RTCP on its own port;
    /// - an old-style hold (`c=0.0.0.0` on the audio stream) is kept as a direction
    ///   (sendrecv → sendonly, recvonly → inactive), since the address is replaced.
    pub fn anchor(&mut self, addr: IpAddr, port: u16, origin: &mut OriginState) {
        let audio = self.audio().map(|(i, _)| i);
        if let Some(i) = audio {
            if self.zero_address_hold(i) {
                let direction = match self.media_direction(i) {
                    Direction::SendRecv => Direction::SendOnly,
                    Direction::RecvOnly => Direction::Inactive,
                    other => other,
                };
                self.media[i].set_direction(direction);
            }
        }

        let connection = Connection::new(addr);
        self.connection = Some(connection.clone());
        self.attributes
            .retain(|a| !is_transport_extra(a) && !is_endpoint_identity(a));
        for (i, m) in self.media.iter_mut().enumerate() {
            if m.connection.is_some() {
                m.connection = Some(connection.clone());
            }
            m.port_count = None;
            m.attributes
                .retain(|a| !is_transport_extra(a) && !is_endpoint_identity(a));
            let rtcp = if Some(i) == audio {
                m.port = port;
                port.checked_add(1)
            } else {
                m.port = 0;
                None
            };
            match rtcp {
                Some(rtcp) => {
                    let value = format!("{rtcp} IN {} {addr}", AddrType::of(addr).as_str());
                    for a in m.attributes.iter_mut().filter(|a| a.is("rtcp")) {
                        a.value = Some(value.clone());
                    }
                }
                None => m.attributes.retain(|a| !a.is("rtcp")),
            }
        }
        origin.stamp(self, addr);
    }
}

impl MediaDesc {
    /// The media-level direction attribute, if any; see [`Sdp::media_direction`] for the
    /// effective direction including the session level.
    pub fn direction(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }

    /// Sets the media-level direction, replacing any direction attribute in place.
    pub fn set_direction(&mut self, direction: Direction) {
        let first = self
            .attributes
            .iter()
            .position(|a| Direction::from_name(&a.name).is_some());
        self.attributes
            .retain(|a| Direction::from_name(&a.name).is_none());
        let attr = Attribute::flag(direction.as_str());
        match first {
            Some(at) => self.attributes.insert(at, attr),
            None => self.attributes.push(attr),
        }
    }

    /// The first attribute called `name` (ASCII case-insensitive).
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.is(name))
    }

    /// The formats that are RTP payload type numbers (0–127), in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| parse_pt(f))
    }

    /// The rtpmap of payload type `pt`: its `a=rtpmap` line, else the RFC 3551 static
    /// assignment (0 PCMU/8000, 8 PCMA/8000, ...).
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap> {
        self.attributes
            .iter()
            .filter(|a| a.is("rtpmap"))
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (p, map) = RtpMap::parse_attr(v)?;
                (p == pt).then_some(map)
            })
            .or_else(|| RtpMap::static_pt(pt))
    }

    /// The relay codec of payload type `pt` (G.711 at 8000 Hz mono, else `Other`).
    pub fn codec_of(&self, pt: u8) -> Codec {
        self.rtpmap(pt).map_or(Codec::Other, |m| m.codec())
    }

    /// Whether the stream is SRTP keyed in SDP: `RTP/SAVP`, or `RTP/SAVPF` (its feedback
    /// messages are relayed like any RTCP, so for audio it is treated as SAVP).
    pub fn is_srtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/SAVP") || self.proto.eq_ignore_ascii_case("RTP/SAVPF")
    }

    /// The usable `a=crypto` lines, in the order written (the offerer's preference).
    pub fn cryptos(&self) -> impl Iterator<Item = Crypto> + '_ {
        self.attributes
            .iter()
            .filter(|a| a.is("crypto"))
            .filter_map(|a| Crypto::parse_attr(a.value.as_deref()?))
    }

    /// Replaces every `a=crypto` line with `cryptos` (where the first one was, else last).
    pub fn set_cryptos(&mut self, cryptos: &[Crypto]) {
        let at = self
            .attributes
            .iter()
            .position(|a| a.is("crypto"))
            .unwrap_or(self.attributes.len());
        self.attributes.retain(|a| !a.is("crypto"));
        let at = at.min(self.attributes.len());
        self.attributes
            .splice(at..at, cryptos.iter().map(Crypto::to_attribute));
    }

    /// The payload type of `telephone-event/8000` (RFC 4733) among the formats.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.payload_types().find(|&pt| {
            self.rtpmap(pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000
            })
        })
    }

    /// Payload types carrying voice (with a known rtpmap, not DTMF, comfort noise,
    /// redundancy or FEC), in preference order.
    fn voice_pts(&self) -> impl Iterator<Item = u8> + '_ {
        self.payload_types()
            .filter(|&pt| self.rtpmap(pt).is_some_and(|m| m.is_voice()))
    }

    /// The first payload type whose rtpmap names the same codec as `map`.
    fn find_pt(&self, map: &RtpMap) -> Option<u8> {
        self.payload_types()
            .find(|&pt| self.rtpmap(pt).is_some_and(|m| m.same_codec(map)))
    }

    fn emit_into(&self, out: &mut String) {
        let mut m = self.kind.clone();
        m.push(' ');
        m.push_str(&self.port.to_string());
        if let Some(n) = self.port_count {
            m.push('/');
            m.push_str(&n.to_string());
        }
        m.push(' ');
        m.push_str(&self.proto);
        for f in &self.formats {
            m.push(' ');
            m.push_str(f);
        }
        push_line(out, 'm', &m);
        if let Some(info) = &self.info {
            push_line(out, 'i', info);
        }
        if let Some(c) = &self.connection {
            push_line(out, 'c', &c.to_string());
        }
        for b in &self.bandwidth {
            push_line(out, 'b', b);
        }
        if let Some(k) = &self.key {
            push_line(out, 'k', k);
        }
        for a in &self.attributes {
            push_line(out, 'a', &a.to_string());
        }
    }
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for this offered direction (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    fn from_name(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| name.eq_ignore_ascii_case(d.as_str()))
    }
}

impl RtpMap {
    /// Parses an `a=rtpmap` value: `<pt> <encoding>/<clock rate>[/<channels>]`.
    pub fn parse_attr(value: &str) -> Option<(u8, RtpMap)> {
        let (pt, rest) = value.trim().split_once(char::is_whitespace)?;
        let pt = parse_pt(pt)?;
        let mut parts = rest.trim().split('/');
        let encoding = parts.next().filter(|e| !e.is_empty())?.to_owned();
        let clock_rate = parse_digits(parts.next()?)?;
        let channels = match parts.next() {
            Some(c) => Some(parse_digits(c)?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some((
            pt,
            RtpMap {
                encoding,
                clock_rate,
                channels,
            },
        ))
    }

    /// The RFC 3551 audio assignment of a static payload type.
    pub fn static_pt(pt: u8) -> Option<RtpMap> {
        let (encoding, clock_rate) = match pt {
            0 => ("PCMU", 8000),
            3 => ("GSM", 8000),
            4 => ("G723", 8000),
            5 => ("DVI4", 8000),
            6 => ("DVI4", 16000),
            7 => ("LPC", 8000),
            8 => ("PCMA", 8000),
            9 => ("G722", 8000),
            10 | 11 => ("L16", 44100),
            12 => ("QCELP", 8000),
            13 => ("CN", 8000),
            14 => ("MPA", 90000),
            15 => ("G728", 8000),
            16 => ("DVI4", 11025),
            17 => ("DVI4", 22050),
            18 => ("G729", 8000),
            _ => return None,
        };
        Some(RtpMap {
            encoding: encoding.to_owned(),
            clock_rate,
            channels: (pt == 10).then_some(2),
        })
    }

    /// The relay codec this names.
    pub fn codec(&self) -> Codec {
        let mono = self.channels.unwrap_or(1) == 1;
        if self.clock_rate != 8000 || !mono {
            Codec::Other
        } else if self.encoding.eq_ignore_ascii_case("PCMU") {
            Codec::Pcmu
        } else if self.encoding.eq_ignore_ascii_case("PCMA") {
            Codec::Pcma
        } else {
            Codec::Other
        }
    }

    fn same_codec(&self, other: &RtpMap) -> bool {
        self.encoding.eq_ignore_ascii_case(&other.encoding)
            && self.clock_rate == other.clock_rate
            && self.channels.unwrap_or(1) == other.channels.unwrap_or(1)
    }

    fn is_voice(&self) -> bool {
        !["telephone-event", "CN", "red", "ulpfec", "flexfec"]
            .iter()
            .any(|e| self.encoding.eq_ignore_ascii_case(e))
    }
}

impl fmt::Display for RtpMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding, self.clock_rate)?;
        if let Some(ch) = self.channels {
            write!(f, "/{ch}")?;
        }
        Ok(())
    }
}

impl AddrType {
    /// The type of an IP address.
    pub fn of(ip: IpAddr) -> AddrType {
        match ip {
            IpAddr::V4(_) => AddrType::Ip4,
            IpAddr::V6(_) => AddrType::Ip6,
        }
    }

    /// `IP4` or `IP6`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrType::Ip4 => "IP4",
            AddrType::Ip6 => "IP6",
        }
    }
}

impl Connection {
    /// A unicast connection to `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Connection {
            addr_type: AddrType::of(ip),
            host: Host::Ip(ip),
            ttl: None,
            count: None,
        }
    }

    /// The IP address, unless the connection names a host.
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// Parses a `c=` value: `IN IP4|IP6 <address>[/<ttl>][/<count>]`.
    fn parse(value: &str) -> Option<Connection> {
        let mut fields = value.split_ascii_whitespace();
        let (net, typ, addr) = (fields.next()?, fields.next()?, fields.next()?);
        if fields.next().is_some() || !net.eq_ignore_ascii_case("IN") {
            return None;
        }
        let addr_type = if typ.eq_ignore_ascii_case("IP4") {
            AddrType::Ip4
        } else if typ.eq_ignore_ascii_case("IP6") {
            AddrType::Ip6
        } else {
            return None;
        };
        let mut parts = addr.split('/');
        let host = parts.next()?;
        let host = match host.parse::<IpAddr>() {
            Ok(ip) if AddrType::of(ip) == addr_type => Host::Ip(ip),
            Ok(_) => return None,
            Err(_) if is_host_name(host) => Host::Name(host.to_owned()),
            Err(_) => return None,
        };
        let ttl = match addr_type {
            AddrType::Ip4 => optional_digits(parts.next())?,
            AddrType::Ip6 => None,
        };
        let count = optional_digits(parts.next())?;
        if parts.next().is_some() {
            return None;
        }
        Some(Connection {
            addr_type,
            host,
            ttl,
            count,
        })
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IN {} ", self.addr_type.as_str())?;
        match &self.host {
            Host::Ip(ip) => write!(f, "{ip}")?,
            Host::Name(name) => f.write_str(name)?,
        }
        if let Some(ttl) = self.ttl {
            write!(f, "/{ttl}")?;
        }
        if let Some(count) = self.count {
            write!(f, "/{count}")?;
        }
        Ok(())
    }
}

impl Origin {
    fn parse(value: &str) -> Option<Origin> {
        let mut fields = value.split_ascii_whitespace();
        let mut next = || fields.next().map(str::to_owned);
        let origin = Origin {
            username: next()?,
            sess_id: next()?,
            sess_version: parse_digits(&next()?)?,
            net_type: next()?,
            addr_type: next()?,
            addr: next()?,
        };
        next().is_none().then_some(origin)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.username,
            self.sess_id,
            self.sess_version,
            self.net_type,
            self.addr_type,
            self.addr
        )
    }
}

impl Attribute {
    /// `a=name:value`.
    pub fn new(name: &str, value: &str) -> Self {
        Attribute {
            name: name.to_owned(),
            value: Some(value.to_owned()),
        }
    }

    /// `a=name`.
    pub fn flag(name: &str) -> Self {
        Attribute {
            name: name.to_owned(),
            value: None,
        }
    }

    /// Whether the attribute is called `name` (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    fn parse(value: &str) -> Option<Attribute> {
        let (name, value) = match value.split_once(':') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (value, None),
        };
        let token = !name.is_empty() && name.bytes().all(is_token_char);
        token.then(|| Attribute {
            name: name.to_owned(),
            value,
        })
    }

    /// The payload type an `rtpmap`, `fmtp` or `rtcp-fb` attribute is about.
    fn payload_type(&self) -> Option<u8> {
        if !(self.is("rtpmap") || self.is("fmtp") || self.is("rtcp-fb")) {
            return None;
        }
        let value = self.value.as_deref()?.trim_start();
        parse_pt(value.split(char::is_whitespace).next()?)
    }
}

impl Crypto {
    /// Parses the value of an `a=crypto` line:
    /// `<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>] [<params>]`.
    /// `None` for anything Outpost cannot use: an unknown suite, bad base64 or length,
    /// several keys, an MKI, or session parameters other than `KDR=0`, `WSH=` and
    /// `FEC_ORDER=` (RFC 4568 §6.3: an unknown one makes the line unusable).
    pub fn parse_attr(value: &str) -> Option<Crypto> {
        let mut fields = value.split_ascii_whitespace();
        let tag = fields.next()?;
        if tag.is_empty() || tag.len() > 9 {
            return None;
        }
        let tag = parse_digits(tag)?;
        let suite = Suite::from_name(fields.next()?)?;
        let key_params = fields.next()?;
        // Several keys (separated by ';') only make sense with MKIs, which are not done.
        let inline = key_params.strip_prefix("inline:")?;
        let mut parts = inline.split('|');
        let encoded = parts.next()?;
        let mut lifetime_seen = false;
        for part in parts {
            if part.contains(':') {
                return None; // an MKI
            }
            let lifetime_ok = match part.strip_prefix("2^") {
                Some(exp) => exp.len() <= 2 && exp.bytes().all(|b| b.is_ascii_digit()),
                None => part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit()),
            };
            if lifetime_seen || part.is_empty() || !lifetime_ok {
                return None;
            }
            lifetime_seen = true;
        }
        // 30 bytes are exactly 40 base64 characters; checked before decoding anything.
        if encoded.len() != 40 {
            return None;
        }
        let mut key = [0u8; KEY_MATERIAL_LEN];
        let mut decoded = [0u8; KEY_MATERIAL_LEN + 3];
        let n = BASE64.decode_slice(encoded, &mut decoded).ok()?;
        if n != KEY_MATERIAL_LEN {
            return None;
        }
        key.copy_from_slice(&decoded[..n]);
        for param in fields {
            let ok =
                param == "KDR=0" || param.starts_with("WSH=") || param.starts_with("FEC_ORDER=");
            if !ok {
                return None;
            }
        }
        Some(Crypto { tag, suite, key })
    }

    /// The `a=crypto` attribute (no lifetime, no MKI, no session parameters).
    pub fn to_attribute(&self) -> Attribute {
        let value = format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            BASE64.encode(self.key)
        );
        Attribute::new("crypto", &value)
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.value {
            write!(f, ":{v}")?;
        }
        Ok(())
    }
}

/// Removes every SDES key (session- and media-level `a=crypto`) and turns each secure RTP
/// profile into its plain counterpart (`RTP/SAVP` → `RTP/AVP`, `RTP/SAVPF` → `RTP/AVPF`):
/// the form of a body that travels over a transport keys must not cross (RFC 4568 §8.3).
pub fn strip_sdes(sdp: &mut Sdp) {
    sdp.attributes.retain(|a| !a.is("crypto"));
    for m in &mut sdp.media {
        m.set_cryptos(&[]);
        if let Some(plain) = plain_profile(&m.proto) {
            m.proto = plain.to_string();
        }
    }
}

/// True if `sdp` carries an SDES key anywhere (an `a=crypto` line, usable or not).
pub fn has_sdes(sdp: &Sdp) -> bool {
    sdp.attributes.iter().any(|a| a.is("crypto"))
        || sdp
            .media
            .iter()
            .any(|m| m.attributes.iter().any(|a| a.is("crypto")))
}

/// The plain RTP profile of a secure one; `None` for any other profile.
fn plain_profile(proto: &str) -> Option<&'static str> {
    if proto.eq_ignore_ascii_case("RTP/SAVP") {
        Some("RTP/AVP")
    } else if proto.eq_ignore_ascii_case("RTP/SAVPF") {
        Some("RTP/AVPF")
    } else {
        None
    }
}

/// The offer passed to the callee: A's offer with the missing G.711 variant added next to
/// the one A offered (so the relay can transcode when the callee supports only the other).
/// A's telephone-event and every other format stay. Not anchored yet.
pub fn offer_for_b(offer_from_a: &Sdp) -> Sdp {
    let mut sdp = offer_from_a.clone();
    let Some((i, m)) = sdp.audio() else {
        return sdp;
    };
    let has = |codec| m.payload_types().any(|pt| m.codec_of(pt) == codec);
    let (present, missing) = match (has(Codec::Pcmu), has(Codec::Pcma)) {
        (true, false) => (Codec::Pcmu, Codec::Pcma),
        (false, true) => (Codec::Pcma, Codec::Pcmu),
        _ => return sdp,
    };
    let Some(new_pt) = missing.static_pt() else {
        return sdp;
    };
    if m.payload_types().any(|pt| pt == new_pt) {
        return sdp; // the static number is taken by something else: leave the offer alone
    }
    let is_present = |f: &String| parse_pt(f).is_some_and(|pt| m.codec_of(pt) == present);
    let format_at = m
        .formats
        .iter()
        .rposition(is_present)
        .map_or(m.formats.len(), |p| p + 1);
    let rtpmap_at = m
        .attributes
        .iter()
        .rposition(|a| {
            a.is("rtpmap") && a.payload_type().is_some_and(|pt| m.codec_of(pt) == present)
        })
        .map(|p| p + 1);

    let m = &mut sdp.media[i];
    m.formats.insert(format_at, new_pt.to_string());
    if let Some(at) = rtpmap_at {
        let value = format!("{new_pt} {}/8000", missing.name());
        m.attributes.insert(at, Attribute::new("rtpmap", &value));
    }
    sdp
}

/// The codec a side sends after `answer` to `offer`: the first voice format of the answer's
/// audio stream that the offer also has (compared by rtpmap), its payload type in the
/// answer, and the answer's telephone-event payload type if both offered it.
/// `None` when either has no audio stream or nothing matches.
pub fn choose(answer: &Sdp, offer: &Sdp) -> Option<(Codec, u8, Option<u8>)> {
    let (_, am) = answer.audio()?;
    let (_, om) = offer.audio()?;
    let pt = am
        .voice_pts()
        .find(|&pt| am.rtpmap(pt).is_some_and(|map| om.find_pt(&map).is_some()))?;
    let dtmf = om.telephone_event_pt().and(am.telephone_event_pt());
    Some((am.codec_of(pt), pt, dtmf))
}

/// The answer to give A (not anchored yet), and the codec and payload type A will use.
///
/// B's codec is the first voice format of B's answer. If A offered it, B's answer goes to A
/// as it is. Otherwise, when B's codec is G.711, the audio formats become A's first G.711
/// codec plus A's telephone-event (if offered), with A's rtpmap/fmtp lines, and the relay
/// transcodes. When nothing can be bridged (B rejected audio, or B picked a codec A lacks
/// and the relay cannot transcode) B's answer is returned as it is with `Codec::Other` and
/// B's first payload type (0 if none): the relay then passes packets untouched.
pub fn answer_for_a(answer_from_b: &Sdp, offer_from_a: &Sdp) -> (Sdp, Codec, u8) {
    transcoding_answer(answer_from_b, offer_from_a).unwrap_or_else(|| {
        let pt = answer_from_b
            .audio()
            .and_then(|(_, m)| m.payload_types().next())
            .unwrap_or(0);
        (answer_from_b.clone(), Codec::Other, pt)
    })
}

/// [`answer_for_a`] where it can bridge.
fn transcoding_answer(answer_from_b: &Sdp, offer_from_a: &Sdp) -> Option<(Sdp, Codec, u8)> {
    let (bi, bm) = answer_from_b.audio()?;
    let (_, am) = offer_from_a.audio()?;
    let b_pt = bm.voice_pts().next()?;
    let b_map = bm.rtpmap(b_pt)?;
    if am.find_pt(&b_map).is_some() {
        return Some((answer_from_b.clone(), b_map.codec(), b_pt));
    }
    if b_map.codec() == Codec::Other {
        return None;
    }
    let (a_pt, a_codec) = am.voice_pts().find_map(|pt| match am.codec_of(pt) {
        Codec::Other => None,
        g711 => Some((pt, g711)),
    })?;
    let a_dtmf = am.telephone_event_pt();

    let mut lines: Vec<Attribute> = Vec::new();
    for pt in std::iter::once(a_pt).chain(a_dtmf) {
        let own: Vec<Attribute> = am
            .attributes
            .iter()
            .filter(|a| (a.is("rtpmap") || a.is("fmtp")) && a.payload_type() == Some(pt))
            .cloned()
            .collect();
        if !own.iter().any(|a| a.is("rtpmap")) {
            if let Some(map) = am.rtpmap(pt) {
                lines.push(Attribute::new("rtpmap", &format!("{pt} {map}")));
            }
        }
        lines.extend(own);
    }

    let mut sdp = answer_from_b.clone();
    let m = &mut sdp.media[bi];
    m.formats = std::iter::once(a_pt)
        .chain(a_dtmf)
        .map(|pt| pt.to_string())
        .collect();
    let at = m
        .attributes
        .iter()
        .position(|a| a.payload_type().is_some())
        .unwrap_or(0);
    m.attributes.retain(|a| a.payload_type().is_none());
    let at = at.min(m.attributes.len());
    m.attributes.splice(at..at, lines);
    Some((sdp, a_codec, a_pt))
}

/// `offer` with every media section rejected (port 0), for an answer refusing all streams.
pub fn reject_all(offer: &Sdp) -> Sdp {
    let mut sdp = offer.clone();
    for m in &mut sdp.media {
        m.port = 0;
        m.port_count = None;
    }
    sdp
}

/// Whether the description puts the audio stream on hold: sendonly, inactive, or the
/// unspecified address (RFC 2543 style `c=IN IP4 0.0.0.0`, unless it is an ICE placeholder).
pub fn is_hold(sdp: &Sdp) -> bool {
    let Some((i, _)) = sdp.audio() else {
        return false;
    };
    matches!(
        sdp.media_direction(i),
        Direction::SendOnly | Direction::Inactive
    ) || sdp.zero_address_hold(i)
}

/// Line-by-line builder behind [`Sdp::parse`].
#[derive(Debug, Default)]
struct Parser {
    seen_version: bool,
    origin: Option<Origin>,
    session_name: Option<String>,
    info: Option<String>,
    uri: Option<String>,
    emails: Vec<String>,
    phones: Vec<String>,
    connection: Option<Connection>,
    bandwidth: Vec<String>,
    times: Vec<String>,
    zone: Option<String>,
    key: Option<String>,
    attributes: Vec<Attribute>,
    media: Vec<MediaDesc>,
    attribute_count: usize,
}

impl Parser {
    fn line(&mut self, n: usize, line: &str) -> Result<(), SdpError> {
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
            return Err(SdpError::BadLine(n));
        }
        let typ = char::from(bytes[0]);
        let raw = &line[2..];
        let value = match typ {
            's' | 'i' | 'u' | 'e' | 'p' => raw,
            _ => raw.trim_end_matches([' ', '\t']),
        };
        if !self.seen_version {
            if typ != 'v' || value != "0" {
                return Err(SdpError::BadVersion);
            }
            self.seen_version = true;
            return Ok(());
        }
        if typ == 'a' {
            self.attribute_count += 1;
            if self.attribute_count > MAX_ATTRIBUTES {
                return Err(SdpError::TooManyAttributes);
            }
        }
        if typ == 'm' {
            if self.media.len() == MAX_MEDIA {
                return Err(SdpError::TooManyMedia);
            }
            let m = parse_media(value).ok_or(SdpError::BadMedia(n))?;
            self.media.push(m);
            return Ok(());
        }
        match self.media.last_mut() {
            Some(m) => media_line(m, n, typ, value),
            None => self.session_line(n, typ, value),
        }
    }

    fn session_line(&mut self, n: usize, typ: char, value: &str) -> Result<(), SdpError> {
        let once = |slot: &mut Option<String>| {
            if slot.is_some() {
                return Err(SdpError::Misplaced(n));
            }
            *slot = Some(value.to_owned());
            Ok(())
        };
        match typ {
            'v' => Err(SdpError::Misplaced(n)),
            'o' => {
                if self.origin.is_some() {
                    return Err(SdpError::Misplaced(n));
                }
                self.origin = Some(Origin::parse(value).ok_or(SdpError::BadOrigin(n))?);
                Ok(())
            }
            's' => once(&mut self.session_name),
            'i' => once(&mut self.info),
            'u' => once(&mut self.uri),
            'z' => once(&mut self.zone),
            'k' => once(&mut self.key),
            'e' => {
                self.emails.push(value.to_owned());
                Ok(())
            }
            'p' => {
                self.phones.push(value.to_owned());
                Ok(())
            }
            'b' => {
                self.bandwidth.push(value.to_owned());
                Ok(())
            }
            'c' => {
                if self.connection.is_some() {
                    return Err(SdpError::Misplaced(n));
                }
                self.connection = Some(Connection::parse(value).ok_or(SdpError::BadConnection(n))?);
                Ok(())
            }
            't' | 'r' => {
                if typ == 'r' && self.times.is_empty() {
                    return Err(SdpError::Misplaced(n));
                }
                self.times.push(format!("{typ}={value}"));
                Ok(())
            }
            'a' => {
                self.attributes
                    .push(Attribute::parse(value).ok_or(SdpError::BadAttribute(n))?);
                Ok(())
            }
            _ => Err(SdpError::UnknownType(n)),
        }
    }

    fn finish(self) -> Result<Sdp, SdpError> {
        if !self.seen_version {
            return Err(SdpError::BadVersion);
        }
        let origin = self.origin.ok_or(SdpError::MissingOrigin)?;
        let session_name = self.session_name.ok_or(SdpError::MissingSessionName)?;
        let mut times = self.times;
        if times.is_empty() {
            times.push("t=0 0".to_owned());
        }
        Ok(Sdp {
            origin,
            session_name,
            info: self.info,
            uri: self.uri,
            emails: self.emails,
            phones: self.phones,
            connection: self.connection,
            bandwidth: self.bandwidth,
            times,
            zone: self.zone,
            key: self.key,
            attributes: self.attributes,
            media: self.media,
        })
    }
}

fn media_line(m: &mut MediaDesc, n: usize, typ: char, value: &str) -> Result<(), SdpError> {
    match typ {
        'i' | 'k' => {
            let slot = if typ == 'i' { &mut m.info } else { &mut m.key };
            if slot.is_some() {
                return Err(SdpError::Misplaced(n));
            }
            *slot = Some(value.to_owned());
            Ok(())
        }
        'c' => {
            if m.connection.is_some() {
                return Err(SdpError::Misplaced(n));
            }
            m.connection = Some(Connection::parse(value).ok_or(SdpError::BadConnection(n))?);
            Ok(())
        }
        'b' => {
            m.bandwidth.push(value.to_owned());
            Ok(())
        }
        'a' => {
            m.attributes
                .push(Attribute::parse(value).ok_or(SdpError::BadAttribute(n))?);
            Ok(())
        }
        'v' | 'o' | 's' | 'u' | 'e' | 'p' | 't' | 'r' | 'z' => Err(SdpError::Misplaced(n)),
        _ => Err(SdpError::UnknownType(n)),
    }
}

/// Parses an `m=` value: `<media> <port>[/<count>] <proto> <fmt>...`.
fn parse_media(value: &str) -> Option<MediaDesc> {
    let mut fields = value.split_ascii_whitespace();
    let kind = fields.next()?;
    let port_field = fields.next()?;
    let (port, port_count) = match port_field.split_once('/') {
        Some((port, count)) => (parse_digits(port)?, Some(parse_digits(count)?)),
        None => (parse_digits(port_field)?, None),
    };
    let proto = fields.next()?;
    let proto_ok = proto
        .split('/')
        .all(|t| !t.is_empty() && t.bytes().all(is_token_char));
    if !kind.bytes().all(is_token_char) || !proto_ok {
        return None;
    }
    Some(MediaDesc {
        kind: kind.to_owned(),
        port,
        port_count,
        proto: proto.to_owned(),
        formats: fields.map(str::to_owned).collect(),
        info: None,
        connection: None,
        bandwidth: Vec::new(),
        key: None,
        attributes: Vec::new(),
    })
}

/// A decimal number of at most 10 digits, no sign, no spaces.
fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `Some(None)` for no text, `Some(Some(n))` for a number, `None` for anything else.
fn optional_digits<T: std::str::FromStr>(s: Option<&str>) -> Option<Option<T>> {
    match s {
        Some(s) => parse_digits(s).map(Some),
        None => Some(None),
    }
}

/// An RTP payload type number, 0–127.
fn parse_pt(s: &str) -> Option<u8> {
    parse_digits::<u8>(s).filter(|&pt| pt <= 127)
}

/// RFC 8866 `token-char`.
fn is_token_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x27 | 0x2A | 0x2B | 0x2D | 0x2E | 0x30..=0x39 | 0x41..=0x5A | 0x5E..=0x7E)
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn direction_in(attributes: &[Attribute]) -> Option<Direction> {
    attributes
        .iter()
        .find_map(|a| Direction::from_name(&a.name))
}

/// Attributes about transports the relay does not provide (ICE, RTCP mux, BUNDLE).
/// What one phone says about itself and its own streams, untrue on the other leg: its
/// sources (`ssrc`, `ssrc-group`, `msid`: the relay's prompts and music play under the
/// relay's own source, and the other phone would drop or mix up packets it does not
/// expect) and its software (`tool`: nothing of one phone's make goes to the other).
fn is_endpoint_identity(a: &Attribute) -> bool {
    ["ssrc", "ssrc-group", "msid", "msid-semantic", "tool"]
        .iter()
        .any(|n| a.is(n))
}

fn is_transport_extra(a: &Attribute) -> bool {
    const DROPPED: [&str; 10] = [
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "ice-pacing",
        "candidate",
        "end-of-candidates",
        "remote-candidates",
        "rtcp-mux",
    ];
    DROPPED.iter().any(|d| a.is(d))
        || a.is("rtcp-mux-only")
        || a.is("bundle-only")
        || (a.is("group")
            && a.value
                .as_deref()
                .is_some_and(|v| v.trim_start().starts_with("BUNDLE")))
}

fn push_line(out: &mut String, typ: char, value: &str) {
    out.push(typ);
    out.push('=');
    out.push_str(value);
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Joins lines with CRLF (and a final CRLF).
    fn sdp_text(lines: &[&str]) -> Vec<u8> {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn parse(lines: &[&str]) -> Sdp {
        Sdp::parse(&sdp_text(lines)).expect("test SDP parses")
    }

    fn pcmu_offer() -> Sdp {
        parse(&[
            "v=0",
            "o=alice 2890844526 2890844526 IN IP4 192.168.1.20",
            "s=-",
            "c=IN IP4 192.168.1.20",
            "t=0 0",
            "m=audio 49170 RTP/AVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
        ])
    }

    fn linphone_ice_offer() -> Sdp {
        parse(&[
            "v=0",
            "o=alice 3425 1897 IN IP4 192.168.1.20",
            "s=Talk",
            "c=IN IP4 192.168.1.20",
            "t=0 0",
            "a=ice-pwd:31ec21eb38b2ec6d36e8dc7b",
            "a=ice-ufrag:95f6a9ca",
            "a=group:BUNDLE as vs",
            "a=record:off",
            "m=audio 7078 RTP/AVP 96 0 8 101",
            "a=rtpmap:96 opus/48000/2",
            "a=fmtp:96 useinbandfec=1",
            "a=rtpmap:101 telephone-event/8000",
            "a=rtcp:7079",
            "a=candidate:1 1 UDP 2130706431 192.168.1.20 7078 typ host",
            "a=candidate:2 1 UDP 1694498815 203.0.113.7 41834 typ srflx raddr 192.168.1.20 rport 7078",
            "a=end-of-candidates",
            "a=rtcp-mux",
            "a=rtcp-fb:* trr-int 1000",
            "m=video 9078 RTP/AVP 97",
            "c=IN IP4 192.168.1.20",
            "a=rtpmap:97 VP8/90000",
            "a=rtcp:9079",
            "a=candidate:1 1 UDP 2130706431 192.168.1.20 9078 typ host",
        ])
    }

    fn names(attrs: &[Attribute]) -> Vec<&str> {
        attrs.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn parses_fields_and_emits_canonical_input_byte_for_byte() {
        let text = sdp_text(&[
            "v=0",
            "o=- 20024 20025 IN IP4 192.168.1.105",
            "s=SDP data",
            "i=info",
            "u=http://example.com/",
            "e=a@example.com",
            "p=+1 555",
            "c=IN IP4 224.2.17.12/127/2",
            "b=AS:64",
            "t=0 0",
            "r=604800 3600 0 90000",
            "z=2882844526 -1h",
            "k=prompt",
            "a=tool:x",
            "m=audio 11796/2 RTP/AVP 0 8 18 101",
            "i=voice",
            "c=IN IP6 2001:db8::1",
            "b=TIAS:64000",
            "k=clear:x",
            "a=rtpmap:18 G729/8000",
            "a=fmtp:18 annexb=no",
            "a=x-unknown:some value: with colons",
            "a=sendrecv",
        ]);
        let sdp = Sdp::parse(&text).expect("parses");
        assert_eq!(sdp.origin.sess_id, "20024");
        assert_eq!(sdp.origin.sess_version, 20025);
        assert_eq!(sdp.session_name, "SDP data");
        let c = sdp.connection.as_ref().expect("session c=");
        assert_eq!(c.ttl, Some(127));
        assert_eq!(c.count, Some(2));
        assert_eq!(sdp.times, vec!["t=0 0", "r=604800 3600 0 90000"]);
        let m = &sdp.media[0];
        assert_eq!(
            (m.kind.as_str(), m.port, m.port_count),
            ("audio", 11796, Some(2))
        );
        assert_eq!(m.proto, "RTP/AVP");
        assert_eq!(m.formats, vec!["0", "8", "18", "101"]);
        assert_eq!(
            m.connection.as_ref().and_then(Connection::ip),
            Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)))
        );
        assert_eq!(
            m.attributes[2],
            Attribute::new("x-unknown", "some value: with colons")
        );
        assert_eq!(m.attributes[3], Attribute::flag("sendrecv"));
        assert_eq!(sdp.emit(), text);
    }

    #[test]
    fn lf_only_input_is_accepted_and_emitted_with_crlf_in_rfc_order() {
        // Session lines out of RFC order (a= before c=, t= missing) and trailing spaces.
        let text = b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=x\na=sendrecv \nc=IN  IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\n\n";
        let sdp = Sdp::parse(text).expect("parses");
        assert_eq!(sdp.times, vec!["t=0 0"]);
        let emitted = sdp.emit();
        assert_eq!(
            emitted,
            sdp_text(&[
                "v=0",
                "o=- 1 1 IN IP4 10.0.0.1",
                "s=x",
                "c=IN IP4 10.0.0.1",
                "t=0 0",
                "a=sendrecv",
                "m=audio 4000 RTP/AVP 0",
            ])
        );
        assert_eq!(Sdp::parse(&emitted), Ok(sdp));
    }

    #[test]
    fn host_name_connection_is_kept_but_gives_no_remote_address() {
        let sdp = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 media.example.com",
            "s=-",
            "c=IN IP4 media.example.com",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0",
        ]);
        assert_eq!(
            sdp.connection.as_ref().map(|c| &c.host),
            Some(&Host::Name("media.example.com".into()))
        );
        assert_eq!(sdp.remote_rtp(), None);
        assert_eq!(Sdp::parse(&sdp.emit()), Ok(sdp));
    }

    #[test]
    fn anchor_replaces_addresses_ports_rtcp_and_drops_ice() {
        let mut sdp = linphone_ice_offer();
        let ours = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        let mut origin = OriginState::new(777);
        sdp.anchor(ours, 30000, &mut origin);

        assert_eq!(sdp.connection, Some(Connection::new(ours)));
        assert_eq!(names(&sdp.attributes), vec!["record"]);
        let audio = &sdp.media[0];
        assert_eq!(audio.port, 30000);
        assert_eq!(audio.formats, vec!["96", "0", "8", "101"]);
        assert_eq!(
            names(&audio.attributes),
            vec!["rtpmap", "fmtp", "rtpmap", "rtcp", "rtcp-fb"]
        );
        assert_eq!(
            audio.attribute("rtcp").and_then(|a| a.value.as_deref()),
            Some("30001 IN IP4 203.0.113.1")
        );
        let video = &sdp.media[1];
        assert_eq!(video.port, 0);
        assert_eq!(video.formats, vec!["97"]);
        assert_eq!(video.connection, Some(Connection::new(ours)));
        assert_eq!(names(&video.attributes), vec!["rtpmap"]);
        assert_eq!(sdp.remote_rtp(), Some(SocketAddr::new(ours, 30000)));

        let text = String::from_utf8(sdp.emit()).expect("utf-8");
        assert!(
            text.contains("o=outpost 777 1 IN IP4 203.0.113.1\r\n"),
            "{text}"
        );
        assert!(!text.contains("candidate") && !text.contains("ice-"));
        assert!(!text.contains("192.168.1.20"));
    }

    #[test]
    fn origin_version_bumps_only_when_the_body_changes() {
        let ours = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        let mut origin = OriginState::new(42);
        let mut first = pcmu_offer();
        first.anchor(ours, 30000, &mut origin);
        assert_eq!(first.origin.sess_version, 1);

        // The same offer again (the phone's own o= version differs; ours must not).
        let mut again = pcmu_offer();
        again.origin.sess_version += 1;
        again.anchor(ours, 30000, &mut origin);
        assert_eq!(again.origin.sess_version, 1);
        assert_eq!(again.emit(), first.emit());

        let mut hold = pcmu_offer();
        hold.media[0].set_direction(Direction::SendOnly);
        hold.anchor(ours, 30000, &mut origin);
        assert_eq!(hold.origin.sess_version, 2);
        assert_eq!(origin.version(), 2);
        assert_eq!(hold.origin.sess_id, "42");

        let mut resume = pcmu_offer();
        resume.anchor(ours, 30000, &mut origin);
        assert_eq!(resume.origin.sess_version, 3);
    }

    #[test]
    fn anchoring_on_ipv6_writes_ip6_everywhere() {
        let mut sdp = pcmu_offer();
        sdp.media[0]
            .attributes
            .push(Attribute::new("rtcp", "49171"));
        let ours: IpAddr = "2001:db8::10".parse().expect("literal");
        sdp.anchor(ours, 40000, &mut OriginState::new(1));
        let text = String::from_utf8(sdp.emit()).expect("utf-8");
        assert!(
            text.contains("o=outpost 1 1 IN IP6 2001:db8::10\r\n"),
            "{text}"
        );
        assert!(text.contains("c=IN IP6 2001:db8::10\r\n"));
        assert!(text.contains("m=audio 40000 RTP/AVP 0 101\r\n"));
        assert!(text.contains("a=rtcp:40001 IN IP6 2001:db8::10\r\n"));
        assert_eq!(sdp.remote_rtp(), Some(SocketAddr::new(ours, 40000)));
        assert_eq!(Sdp::parse(text.as_bytes()), Ok(sdp));
    }

    #[test]
    fn zero_address_with_ice_credentials_is_not_hold() {
        let mut sdp = pcmu_offer();
        sdp.connection = Some(Connection::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        sdp.media[0]
            .attributes
            .push(Attribute::new("ice-ufrag", "Xh3T"));
        assert!(!is_hold(&sdp));
        assert_eq!(sdp.remote_rtp(), None);
        sdp.anchor(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            30000,
            &mut OriginState::new(1),
        );
        assert_eq!(sdp.media[0].direction(), None);
    }

    #[test]
    fn anchor_drops_the_phones_own_sources_and_software() {
        let mut sdp = pcmu_offer();
        sdp.attributes
            .push(Attribute::new("tool", "Zoiper rv2.10.20.4"));
        sdp.attributes
            .push(Attribute::new("msid-semantic", "WMS *"));
        for (name, value) in [
            ("ssrc", "2231627014 cname:Pf7nBEYwQH3lVg0h"),
            ("ssrc", "2231627014 msid:- a1"),
            ("ssrc-group", "FID 2231627014 2231627015"),
            ("msid", "- a1"),
        ] {
            sdp.media[0].attributes.push(Attribute::new(name, value));
        }
        sdp.anchor(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            30000,
            &mut OriginState::new(1),
        );
        let text = String::from_utf8(sdp.emit()).expect("utf-8");
        for gone in ["a=tool", "a=ssrc", "cname", "msid", "Zoiper"] {
            assert!(
                !text.contains(gone),
                "{gone} copied to the other leg:\n{text}"
            );
        }
        assert!(text.contains("a=rtpmap:0 PCMU/8000"), "{text}");
    }

    #[test]
    fn anchor_keeps_old_style_hold_as_a_direction() {
        let mut sdp = pcmu_offer();
        sdp.connection = Some(Connection::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert!(is_hold(&sdp));
        sdp.anchor(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            30000,
            &mut OriginState::new(1),
        );
        assert_eq!(sdp.media[0].direction(), Some(Direction::SendOnly));
        assert!(is_hold(&sdp));
    }

    #[test]
    fn static_payload_types_need_no_rtpmap() {
        let sdp = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "t=0 0",
            "m=audio 4000 RTP/AVP 8 0 18 96 97 98",
            "a=rtpmap:96 telephone-event/48000",
            "a=rtpmap:97 PCMU/16000",
            "a=rtpmap:98 telephone-event/8000",
        ]);
        let m = &sdp.media[0];
        let pcma = RtpMap {
            encoding: "PCMA".into(),
            clock_rate: 8000,
            channels: None,
        };
        assert_eq!(m.rtpmap(8), Some(pcma));
        assert_eq!(m.codec_of(8), Codec::Pcma);
        assert_eq!(m.codec_of(0), Codec::Pcmu);
        assert_eq!(m.codec_of(18), Codec::Other);
        assert_eq!(m.codec_of(97), Codec::Other); // PCMU at 16 kHz is not G.711
        assert_eq!(m.rtpmap(99), None);
        assert_eq!(m.telephone_event_pt(), Some(98));
    }

    #[test]
    fn rtpmap_line_overrides_the_static_table() {
        let sdp = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0 96",
            "a=rtpmap:96 opus/48000/2",
            "a=rtpmap:0 PCMU/8000",
        ]);
        let m = &sdp.media[0];
        assert_eq!(m.rtpmap(96).and_then(|r| r.channels), Some(2));
        assert_eq!(
            m.rtpmap(96).map(|r| r.to_string()).as_deref(),
            Some("opus/48000/2")
        );
        assert_eq!(m.codec_of(0), Codec::Pcmu);
        assert_eq!(m.telephone_event_pt(), None);
    }

    #[test]
    fn direction_comes_from_media_then_session_then_default() {
        let mut sdp = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "t=0 0",
            "a=sendonly",
            "m=audio 4000 RTP/AVP 0",
            "m=audio 4002 RTP/AVP 0",
            "a=ptime:20",
            "a=inactive",
            "a=maxptime:40",
        ]);
        assert_eq!(sdp.session_direction(), Some(Direction::SendOnly));
        assert_eq!(sdp.media[0].direction(), None);
        assert_eq!(sdp.media_direction(0), Direction::SendOnly);
        assert_eq!(sdp.media_direction(1), Direction::Inactive);
        assert_eq!(sdp.media_direction(9), Direction::SendOnly);
        sdp.media[1].set_direction(Direction::RecvOnly);
        assert_eq!(
            names(&sdp.media[1].attributes),
            vec!["ptime", "recvonly", "maxptime"]
        );
        sdp.attributes.clear();
        assert_eq!(sdp.media_direction(0), Direction::SendRecv);
        assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
    }

    #[test]
    fn hold_is_sendonly_inactive_or_zero_address() {
        let with = |dir: Option<&str>, conn: &str, port: &str| {
            let m = format!("m=audio {port} RTP/AVP 0");
            let c = format!("c=IN IP4 {conn}");
            let mut lines = vec!["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", &c, "t=0 0", &m];
            if let Some(d) = dir {
                lines.push(d);
            }
            parse(&lines)
        };
        assert!(is_hold(&with(Some("a=sendonly"), "10.0.0.1", "4000")));
        assert!(is_hold(&with(Some("a=inactive"), "10.0.0.1", "4000")));
        assert!(is_hold(&with(None, "0.0.0.0", "4000")));
        assert!(!is_hold(&with(Some("a=recvonly"), "10.0.0.1", "4000")));
        assert!(!is_hold(&with(None, "10.0.0.1", "4000")));
        assert!(!is_hold(&with(Some("a=sendonly"), "10.0.0.1", "0")));
        assert_eq!(with(None, "0.0.0.0", "4000").remote_rtp(), None);
    }

    #[test]
    fn remote_rtp_prefers_the_media_connection() {
        let sdp = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "t=0 0",
            "m=video 5000 RTP/AVP 96",
            "m=audio 0 RTP/AVP 0",
            "m=audio 4000 RTP/AVP 0",
            "c=IN IP4 10.0.0.2",
        ]);
        assert_eq!(sdp.audio().map(|(i, _)| i), Some(2));
        assert_eq!(
            sdp.remote_rtp(),
            Some("10.0.0.2:4000".parse().expect("literal"))
        );
    }

    #[test]
    fn offer_for_b_adds_pcma_next_to_pcmu() {
        let b = offer_for_b(&pcmu_offer());
        let m = &b.media[0];
        assert_eq!(m.formats, vec!["0", "8", "101"]);
        assert_eq!(
            names(&m.attributes),
            vec!["rtpmap", "rtpmap", "rtpmap", "fmtp", "ptime"]
        );
        assert_eq!(m.attributes[1], Attribute::new("rtpmap", "8 PCMA/8000"));
        assert_eq!(m.telephone_event_pt(), Some(101));

        let pcma_only = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "t=0 0",
            "m=audio 4000 RTP/AVP 9 8",
        ]);
        let b = offer_for_b(&pcma_only);
        assert_eq!(b.media[0].formats, vec!["9", "8", "0"]);
        assert!(b.media[0].attributes.is_empty());

        let both = offer_for_b(&linphone_ice_offer());
        assert_eq!(both, linphone_ice_offer());
        let g722 = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "m=audio 4000 RTP/AVP 9",
        ]);
        assert_eq!(offer_for_b(&g722), g722);
    }

    #[test]
    fn choose_takes_the_first_common_voice_format() {
        let offer = offer_for_b(&pcmu_offer());
        let answer = parse(&[
            "v=0",
            "o=- 5 5 IN IP4 10.0.0.9",
            "s=-",
            "c=IN IP4 10.0.0.9",
            "t=0 0",
            "m=audio 6000 RTP/AVP 101 18 8 0",
            "a=rtpmap:101 telephone-event/8000",
        ]);
        assert_eq!(choose(&answer, &offer), Some((Codec::Pcma, 8, Some(101))));
        assert_eq!(
            choose(&answer, &pcmu_offer()),
            Some((Codec::Pcmu, 0, Some(101)))
        );
        assert_eq!(choose(&reject_all(&answer), &offer), None);
    }

    #[test]
    fn answer_for_a_passes_a_common_codec_through() {
        let offer_a = pcmu_offer();
        let answer_b = parse(&[
            "v=0",
            "o=- 5 5 IN IP4 10.0.0.9",
            "s=-",
            "c=IN IP4 10.0.0.9",
            "t=0 0",
            "m=audio 6000 RTP/AVP 0 101",
            "a=rtpmap:101 telephone-event/8000",
        ]);
        let (answer, codec, pt) = answer_for_a(&answer_b, &offer_a);
        assert_eq!((answer, codec, pt), (answer_b, Codec::Pcmu, 0));
    }

    #[test]
    fn answer_for_a_rewrites_to_a_codec_when_the_relay_transcodes() {
        let offer_a = pcmu_offer();
        let answer_b = parse(&[
            "v=0",
            "o=- 5 5 IN IP4 10.0.0.9",
            "s=-",
            "c=IN IP4 10.0.0.9",
            "t=0 0",
            "m=audio 6000 RTP/AVP 8 101",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "a=ptime:30",
            "a=sendrecv",
        ]);
        let (answer, codec, pt) = answer_for_a(&answer_b, &offer_a);
        assert_eq!((codec, pt), (Codec::Pcmu, 0));
        let m = &answer.media[0];
        assert_eq!(m.formats, vec!["0", "101"]);
        assert_eq!(
            m.attributes,
            vec![
                Attribute::new("rtpmap", "0 PCMU/8000"),
                Attribute::new("rtpmap", "101 telephone-event/8000"),
                Attribute::new("fmtp", "101 0-16"),
                Attribute::new("ptime", "30"),
                Attribute::flag("sendrecv"),
            ]
        );
        assert_eq!(choose(&answer, &offer_a), Some((Codec::Pcmu, 0, Some(101))));
        assert_eq!(answer.remote_rtp(), answer_b.remote_rtp());
    }

    #[test]
    fn answer_for_a_synthesises_rtpmap_for_a_static_codec_and_drops_dtmf_a_lacks() {
        let offer_a = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "m=audio 4000 RTP/AVP 18 8",
        ]);
        let answer_b = parse(&[
            "v=0",
            "o=- 5 5 IN IP4 10.0.0.9",
            "s=-",
            "c=IN IP4 10.0.0.9",
            "m=audio 6000 RTP/AVP 0",
        ]);
        let (answer, codec, pt) = answer_for_a(&answer_b, &offer_a);
        assert_eq!((codec, pt), (Codec::Pcma, 8));
        assert_eq!(answer.media[0].formats, vec!["8"]);
        assert_eq!(
            answer.media[0].attributes,
            vec![Attribute::new("rtpmap", "8 PCMA/8000")]
        );
    }

    #[test]
    fn answer_for_a_returns_a_rejection_untouched() {
        let rejected = reject_all(&pcmu_offer());
        assert!(rejected.media.iter().all(|m| m.port == 0));
        assert_eq!(rejected.media[0].formats, vec!["0", "101"]);
        let (answer, codec, _) = answer_for_a(&rejected, &pcmu_offer());
        assert_eq!((answer, codec), (rejected, Codec::Other));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let ok = ["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0"];
        let with = |extra: &[&str]| {
            let mut lines = ok.to_vec();
            lines.extend_from_slice(extra);
            Sdp::parse(&sdp_text(&lines))
        };
        assert!(with(&["m=audio 4000 RTP/AVP 0"]).is_ok());
        assert_eq!(
            with(&["m=audio 70000 RTP/AVP 0"]),
            Err(SdpError::BadMedia(5))
        );
        assert_eq!(with(&["m=audio -1 RTP/AVP 0"]), Err(SdpError::BadMedia(5)));
        assert_eq!(with(&["m=audio 4000"]), Err(SdpError::BadMedia(5)));
        assert_eq!(
            with(&["o=- 2 2 IN IP4 10.0.0.1"]),
            Err(SdpError::Misplaced(5))
        );
        assert_eq!(with(&["x=1"]), Err(SdpError::UnknownType(5)));
        assert_eq!(
            with(&["m=audio 4000 RTP/AVP 0", "t=0 0"]),
            Err(SdpError::Misplaced(6))
        );
        assert_eq!(with(&["c=IN IP4 ::1"]), Err(SdpError::BadConnection(5)));
        assert_eq!(
            with(&["c=IN IP4 10.0.0.1/x"]),
            Err(SdpError::BadConnection(5))
        );
        assert_eq!(with(&["a=:x"]), Err(SdpError::BadAttribute(5)));
        assert_eq!(with(&["garbage"]), Err(SdpError::BadLine(5)));

        let no_version = sdp_text(&ok[1..]);
        assert_eq!(Sdp::parse(&no_version), Err(SdpError::BadVersion));
        assert_eq!(Sdp::parse(b""), Err(SdpError::BadVersion));
        assert_eq!(Sdp::parse(&sdp_text(&["v=1"])), Err(SdpError::BadVersion));
        assert_eq!(
            Sdp::parse(&sdp_text(&["v=0", "s=-"])),
            Err(SdpError::MissingOrigin)
        );
        assert_eq!(
            Sdp::parse(&sdp_text(&["v=0", "o=- 1 1 IN IP4 10.0.0.1"])),
            Err(SdpError::MissingSessionName)
        );
        assert_eq!(
            Sdp::parse(&sdp_text(&["v=0", "o=- 1 x IN IP4 10.0.0.1", "s=-"])),
            Err(SdpError::BadOrigin(2))
        );
        assert_eq!(
            Sdp::parse(&sdp_text(&[
                "v=0",
                "o=- 1 1 IN IP4 10.0.0.1",
                "s=-",
                "r=1 2 3"
            ])),
            Err(SdpError::Misplaced(4))
        );
    }

    #[test]
    fn limits_are_enforced() {
        let mut big = sdp_text(&["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0"]);
        big.extend(std::iter::repeat_n(b'x', 10 * 1024));
        assert_eq!(Sdp::parse(&big), Err(SdpError::TooLarge));

        // Under the limit with LF line ends, over it once written with CRLF.
        let mut lf = b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0\n".to_vec();
        while lf.len() < MAX_SDP - 20 {
            lf.extend_from_slice(b"a=x-pad:pppppppppppppppppppppppppppppp\n");
        }
        assert!(lf.len() <= MAX_SDP);
        assert_eq!(Sdp::parse(&lf), Err(SdpError::TooLarge));

        let mut lines = vec!["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0"];
        lines.extend(std::iter::repeat_n("a=x", 300));
        assert_eq!(
            Sdp::parse(&sdp_text(&lines)),
            Err(SdpError::TooManyAttributes)
        );
        lines.truncate(4 + MAX_ATTRIBUTES);
        assert!(Sdp::parse(&sdp_text(&lines)).is_ok());

        let mut lines = vec!["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0"];
        lines.extend(std::iter::repeat_n("m=audio 0 RTP/AVP 0", 65));
        assert_eq!(Sdp::parse(&sdp_text(&lines)), Err(SdpError::TooManyMedia));
    }

    #[test]
    fn bad_bytes_are_rejected_deliberately() {
        // CR-only line ends: rejected (no phone in the field sends them; RFC 8866 says CRLF).
        let cr_only = b"v=0\ro=- 1 1 IN IP4 10.0.0.1\rs=-\rt=0 0\r";
        assert_eq!(Sdp::parse(cr_only), Err(SdpError::BadLineEnd(1)));
        let nul = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=a\0b\r\n";
        assert_eq!(Sdp::parse(nul), Err(SdpError::BadText(3)));
        let latin1 = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=Caf\xe9\r\n";
        assert_eq!(Sdp::parse(latin1), Err(SdpError::BadText(3)));
        let garbage: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert!(Sdp::parse(&garbage).is_err());
    }

    fn key_b64(byte: u8) -> String {
        BASE64.encode([byte; KEY_MATERIAL_LEN])
    }

    #[test]
    fn crypto_lines_parse_with_lifetime_and_known_session_parameters() {
        let k = key_b64(7);
        let c = Crypto::parse_attr(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^31"))
            .expect("usable");
        assert_eq!(
            (c.tag, c.suite, c.key),
            (1, Suite::AesCm128HmacSha1_80, [7; 30])
        );
        let c = Crypto::parse_attr(&format!(
            "42  AES_CM_128_HMAC_SHA1_32 inline:{k} KDR=0 WSH=64"
        ))
        .expect("usable");
        assert_eq!((c.tag, c.suite), (42, Suite::AesCm128HmacSha1_32));
        assert_eq!(
            Crypto::parse_attr(&c.to_attribute().value.expect("value")),
            Some(c)
        );
    }

    #[test]
    fn unusable_crypto_lines_are_ignored_without_panic() {
        let k = key_b64(7);
        let bad = [
            format!("1 AEAD_AES_256_GCM inline:{k}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^20|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k} UNENCRYPTED_SRTP"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k} KDR=24"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k};inline:{k}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{}", &k[..36]),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{}AAAA", k),
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!".to_owned(),
            format!("x AES_CM_128_HMAC_SHA1_80 inline:{k}"),
            format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{k}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 {k}"),
            "1 AES_CM_128_HMAC_SHA1_80".to_owned(),
            String::new(),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^x"),
        ];
        for value in bad {
            assert_eq!(Crypto::parse_attr(&value), None, "{value}");
        }
    }

    #[test]
    fn savp_media_lists_only_usable_crypto_lines_and_they_can_be_replaced() {
        let k = key_b64(1);
        let body = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/SAVPF 0\r\na=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:xyz\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{k}\r\na=sendrecv\r\n"
        );
        let mut sdp = Sdp::parse(body.as_bytes()).expect("valid SDP");
        let m = &mut sdp.media[0];
        assert!(m.is_srtp());
        let tags: Vec<u32> = m.cryptos().map(|c| c.tag).collect();
        assert_eq!(tags, vec![2]);
        let ours = Crypto {
            tag: 2,
            suite: Suite::AesCm128HmacSha1_80,
            key: [3; KEY_MATERIAL_LEN],
        };
        m.set_cryptos(std::slice::from_ref(&ours));
        assert_eq!(names(&m.attributes), vec!["crypto", "sendrecv"]);
        assert_eq!(m.cryptos().collect::<Vec<_>>(), vec![ours]);
        let emitted = String::from_utf8(sdp.emit()).expect("UTF-8");
        assert!(emitted.contains(&format!(
            "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{}",
            key_b64(3)
        )));
        assert!(
            !Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n")
                .expect("valid SDP")
                .media[0]
                .is_srtp()
        );
    }
}
