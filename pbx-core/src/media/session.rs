//! The contract between the call core and the RTP relay.
//!
//! The core decides (sans-IO) which relay ports a call uses and what flows where; it emits
//! [`MediaCommand`]s. The firmware's relay owns the sockets, moves the packets and reports
//! [`MediaEvent`]s back. Ports come from a [`PortPool`] over the configured range: each leg
//! takes an even RTP port and the odd port above it for RTCP (RFC 3550 §11).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::media::srtp::{Suite, KEY_MATERIAL_LEN};

/// Identifies one relayed call (both legs).
pub type SessionId = u64;

/// An audio codec the relay can pass through or transcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// Anything else: relayed untouched, never transcoded.
    Other,
}

impl Codec {
    /// The codec's encoding name as in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Other => "other",
        }
    }

    /// Static payload type, where the codec has one.
    pub fn static_pt(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::Other => None,
        }
    }
}

/// Which side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Leg {
    /// The caller's side.
    A,
    /// The callee's side.
    B,
}

impl Leg {
    /// The other side.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// What a leg does in a mix (see [`MediaCommand::Join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MixRole {
    /// Talks and hears the others (conference).
    Both,
    /// Talks only, hears nothing back (a paging caller).
    Talker,
    /// Hears only; what its phone sends is dropped (a paged phone).
    Listener,
}

/// What the relay needs to know about one leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegMedia {
    /// Our RTP port on this leg (RTCP is `local_port + 1`).
    pub local_port: u16,
    /// Where the phone said (in its SDP) it receives RTP; `None` until its SDP is known.
    /// The relay latches onto the address packets really come from (symmetric RTP).
    pub remote: Option<SocketAddr>,
    /// Addresses packets may come from: the SDP connection address and the signalling
    /// source address (a phone behind NAT writes its private address into SDP).
    pub allowed_ips: Vec<IpAddr>,
    /// The codec this leg sends and expects to receive.
    pub codec: Codec,
    /// Its payload type on this leg.
    pub pt: u8,
    /// Payload type of `telephone-event` (RFC 4733) on this leg, if negotiated.
    pub dtmf_pt: Option<u8>,
    /// SDES keys when the leg is SRTP (RFC 4568); `None`: plain RTP.
    #[serde(default)]
    pub srtp: Option<SrtpKeys>,
}

/// The two SDES master keys of an SRTP leg (Outpost terminates SRTP on each leg).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrtpKeys {
    /// The negotiated crypto suite.
    pub suite: Suite,
    /// The phone's master key || salt, from its SDP: decrypts what the phone sends.
    pub remote_key: [u8; KEY_MATERIAL_LEN],
    /// Outpost's master key || salt, from the SDP sent to the phone: encrypts what the
    /// relay sends it.
    pub local_key: [u8; KEY_MATERIAL_LEN],
}

impl fmt::Debug for SrtpKeys {
    // Keys never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("suite", &self.suite)
            .field("remote_key", &"<redacted>")
            .field("local_key", &"<redacted>")
            .finish()
    }
}

impl LegMedia {
    /// A leg that does not exist (`local_port` 0): a session whose other leg is the only
    /// phone, e.g. a caller talking to the auto attendant or voicemail. A later `Update`
    /// may bring the real leg (the caller is transferred to an extension).
    pub fn absent() -> Self {
        LegMedia {
            local_port: 0,
            remote: None,
            allowed_ips: Vec::new(),
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        }
    }

    /// Whether this is the placeholder of a missing leg (`local_port` 0).
    pub fn is_absent(&self) -> bool {
        self.local_port == 0
    }
}

/// A command from the core to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaCommand {
    /// Start relaying between two legs (ports already reserved from the pool). One leg may
    /// be [`LegMedia::absent`] (`local_port` 0): the relay then serves the other phone alone.
    Open {
        session: SessionId,
        a: LegMedia,
        b: LegMedia,
    },
    /// New SDP on either leg (answer arrived, re-INVITE): replace both legs' parameters.
    /// Latched addresses stay unless the remote address changed.
    Update {
        session: SessionId,
        a: LegMedia,
        b: LegMedia,
    },
    /// Stop relaying and release the session; the core returns the ports to its pool.
    /// Playback stops (no `PlayDone`); a recording in progress is finished and reported.
    Close { session: SessionId },
    /// Play the prompts `clips` one after the other to `leg`'s phone, replacing what the
    /// other leg sends until it ends. A clip is a prompt name (`"beep"`, `"main-menu"`) or
    /// an absolute path to a WAV file (G.711 or 16-bit PCM, 8 kHz mono), e.g. a voicemail
    /// message. `repeat` loops until `StopPlay`. A new `Play` replaces the current one.
    Play {
        session: SessionId,
        leg: Leg,
        clips: Vec<String>,
        repeat: bool,
    },
    /// Stop playing to `leg` (no `PlayDone`); the other leg is heard again.
    StopPlay { session: SessionId, leg: Leg },
    /// Record what `leg`'s phone sends (at most `max_ms`, itself at most 10 minutes) into a
    /// µ-law WAV file at `path`; it ends at `StopRecord`, `max_ms` or `Close`. With
    /// `from_start`, the file starts now (silence until the phone's first packet), so the
    /// recordings of both legs started together line up; otherwise at the first packet.
    Record {
        session: SessionId,
        leg: Leg,
        path: PathBuf,
        max_ms: u32,
        from_start: bool,
    },
    /// Finish the recording of `leg`; `RecordingDone` follows once the file is written.
    StopRecord { session: SessionId, leg: Leg },
    /// Put `leg` of `session` (open, G.711) into the mix `mix` (an id the core chooses, e.g.
    /// the paging caller's session; the mix exists while it has parties) with `role`: from
    /// then on what its phone sends goes into the mix instead of to the other leg, and it
    /// hears the mix of the others every 20 ms. At most 8 legs per mix; a leg already in a
    /// mix moves. Ignored (with a warning) when the leg is absent, not G.711 or the mix full.
    Join {
        mix: SessionId,
        session: SessionId,
        leg: Leg,
        role: MixRole,
    },
    /// Take `leg` of `session` out of its mix (also done by `Close`); its stream continues.
    Leave { session: SessionId, leg: Leg },
}

/// Counters of one leg as the relay saw them, plus what the phone reported in RTCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegStats {
    /// RTP packets and bytes received from this leg's phone.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// RTP packets and bytes sent to this leg's phone.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets missing in the received sequence numbers (relay's own count).
    pub lost: u64,
    /// Interarrival jitter of received packets (RFC 3550 §6.4.1), in microseconds.
    pub jitter_us: u64,
    /// Packets dropped: from unexpected sources, malformed, or for a closed session.
    pub dropped: u64,
    /// Cumulative lost reported by the phone in its last RTCP receiver report.
    pub rtcp_lost: Option<u32>,
    /// Jitter reported by the phone in its last RTCP report, in microseconds.
    pub rtcp_jitter_us: Option<u64>,
    /// The address the relay latched onto, once media arrived.
    pub latched: Option<SocketAddr>,
}

/// An event from the relay to the core.
// Stats are the common case at call end; boxing them would allocate for every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaEvent {
    /// No RTP arrived on either leg for the configured media timeout.
    Timeout { session: SessionId },
    /// An RFC 4733 DTMF digit ended on `leg` (reported once per event).
    Dtmf {
        session: SessionId,
        leg: Leg,
        digit: char,
        duration_ms: u32,
    },
    /// Current counters of a session (answer to a stats request, and at close).
    Stats {
        session: SessionId,
        a: LegStats,
        b: LegStats,
    },
    /// A non-repeating `Play` to `leg` has sent its last packet (or had nothing to play).
    PlayDone { session: SessionId, leg: Leg },
    /// A recording of `leg` is complete and its WAV file is at `path`.
    RecordingDone {
        session: SessionId,
        leg: Leg,
        path: PathBuf,
        duration_ms: u32,
    },
    /// A recording of `leg` could not be written (disk full, bad directory).
    RecordingFailed {
        session: SessionId,
        leg: Leg,
        path: PathBuf,
        reason: String,
    },
}

/// Even/odd port pairs of the relay's range, handed out lowest first.
#[derive(Debug, Clone)]
pub struct PortPool {
    free: BTreeSet<u16>,
}

impl PortPool {
    /// A pool over `first..=last`; only even RTP ports whose odd RTCP port is in range count.
    pub fn new(first: u16, last: u16) -> Self {
        let start = first + first % 2;
        let free = (start..last)
            .step_by(2)
            .filter(|p| p.checked_add(1).is_some_and(|q| q <= last))
            .collect();
        PortPool { free }
    }

    /// Takes a free RTP port (its RTCP port is the next one).
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_first()
    }

    /// Returns a port taken earlier.
    pub fn give_back(&mut self, port: u16) {
        self.free.insert(port);
    }

    /// Ports pairs still free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_even_pairs_inside_the_range_and_takes_them_back() {
        let mut pool = PortPool::new(10001, 10008);
        assert_eq!(pool.available(), 3); // 10002, 10004, 10006 (10008 has no 10009)
        let a = pool.take();
        let b = pool.take();
        assert_eq!((a, b), (Some(10002), Some(10004)));
        assert_eq!(pool.take(), Some(10006));
        assert_eq!(pool.take(), None);
        pool.give_back(10004);
        assert_eq!(pool.take(), Some(10004));
    }

    #[test]
    fn srtp_keys_are_redacted_in_debug_output() {
        let keys = SrtpKeys {
            suite: Suite::AesCm128HmacSha1_80,
            remote_key: [0x5a; KEY_MATERIAL_LEN],
            local_key: [0xa5; KEY_MATERIAL_LEN],
        };
        let mut leg = LegMedia::absent();
        leg.srtp = Some(keys);
        let shown = format!("{leg:?}");
        assert!(shown.contains("AesCm128HmacSha1_80"), "{shown}");
        assert!(!shown.contains("90") && !shown.contains("165"), "{shown}");
    }
}
