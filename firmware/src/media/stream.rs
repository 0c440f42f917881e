//! The one RTP stream each phone receives from the relay, whatever its audio comes from.
//!
//! A phone hears, one after another, the other phone (forwarded packets), prompts or music
//! (the relay's own frames) and the other phone again, which may meanwhile have restarted its
//! stream with a new SSRC. Phones treat a new SSRC, or a sequence number or timestamp that
//! jumps back, as a broken stream ("timestamp wraps backwards") and may discard it, so an
//! [`OutStream`] gives the leg one SSRC, a sequence number that advances by one per packet,
//! and a timestamp that advances with the real elapsed time (8 kHz, G.711):
//!
//! - the first source forwarded before anything was played is passed through unchanged and
//!   its SSRC becomes the stream's (so a plain call is untouched, and the kernel fast path can
//!   forward it);
//! - the relay's own frames continue the numbering: the next sequence number, and a
//!   timestamp advanced by the time since the last packet (at least one frame), marker set;
//! - a forwarded source that is new (another SSRC) or follows played frames is mapped with
//!   fixed offsets (sequence and timestamp deltas, the stream's SSRC), computed at its first
//!   packet so that it continues the numbering the same way; later packets of that source keep
//!   their spacing, reordering and gaps.
//!
//! While the kernel forwards the call (fast path) the relay does not see the packets, only
//! their count, read every second: a stream the kernel carried continues, at the next switch,
//! after every packet counted plus [`KERNEL_SEQ_SLACK`] (the count can be a second late), and
//! with its timestamp advanced by the wall time plus [`KERNEL_DRIFT_DIVISOR`]'s margin for the
//! phone's clock. The receiver then sees at most one forward jump, which it takes for loss,
//! never a step back.

use std::time::Instant;

use pbx_core::media::rtp::{RtpPacket, RtpRepr};

/// RTP timestamp units in one 20 ms frame.
const FRAME_TS: u32 = 160;
/// Samples per millisecond at 8 kHz.
const PER_MS: u128 = 8;
/// Sequence numbers skipped after the kernel carried a stream: 2 s of 20 ms packets, more
/// than the kernel sends between two counter reads.
pub const KERNEL_SEQ_SLACK: u16 = 100;
/// After the kernel carried a stream, its timestamp is advanced by the wall time plus
/// 1/`KERNEL_DRIFT_DIVISOR` of it (2,000 ppm, ten times a phone crystal's tolerance).
pub const KERNEL_DRIFT_DIVISOR: u32 = 500;

/// How forwarded packets are renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Nothing sent yet: the first forwarded source passes through and lends its SSRC.
    Fresh,
    /// Packets of source `ssrc` are shifted by the deltas (zero and the stream's own SSRC:
    /// passed through unchanged).
    Source {
        ssrc: u32,
        seq_delta: u16,
        ts_delta: u32,
    },
    /// The relay's own frames went last: the next forwarded packet starts a new mapping.
    Played,
}

/// The numbering of the RTP packets one phone receives from the relay.
#[derive(Debug, Clone, Copy)]
pub struct OutStream {
    ssrc: u32,
    /// Sequence number and timestamp of the newest packet sent (the initial values before).
    seq: u16,
    ts: u32,
    /// When the newest packet was sent (a played frame: when it was due); `None` before.
    last: Option<Instant>,
    map: Mapping,
    /// Packets the kernel forwarded to this phone since `last`, when it carried the stream.
    kernel: Option<u64>,
}

impl OutStream {
    /// A stream whose own frames, if played before anything is forwarded, start with
    /// `ssrc`, `seq` and `ts` (random in the relay).
    pub fn new(ssrc: u32, seq: u16, ts: u32) -> Self {
        OutStream {
            ssrc,
            seq,
            ts,
            last: None,
            map: Mapping::Fresh,
            kernel: None,
        }
    }

    /// The stream's SSRC (a forwarded first source's, else its own).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Whether forwarded packets go out unchanged, so the kernel may forward them.
    pub fn is_passthrough(&self) -> bool {
        match self.map {
            Mapping::Fresh => true,
            Mapping::Source {
                ssrc,
                seq_delta,
                ts_delta,
            } => ssrc == self.ssrc && seq_delta == 0 && ts_delta == 0,
            Mapping::Played => false,
        }
    }

    /// The kernel took over forwarding to this phone (fast path).
    pub fn kernel_took(&mut self) {
        self.kernel.get_or_insert(0);
    }

    /// The kernel forwarded `packets` more packets to this phone.
    pub fn kernel_forwarded(&mut self, packets: u64) {
        let seen = self.kernel.get_or_insert(0);
        *seen = seen.saturating_add(packets);
    }

    /// The header of the relay's own next frame, due at `due`. The first frame of a
    /// talkspurt (or after forwarded audio) carries the marker bit and a timestamp that
    /// covers the time since the last packet; inside a talkspurt it advances by one frame.
    pub fn next(&mut self, due: Instant, talkspurt: bool, payload_type: u8) -> RtpRepr {
        let switched = self.map != Mapping::Played;
        let marker = talkspurt || switched;
        if marker {
            (self.seq, self.ts) = self.continuation(due);
        } else {
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(FRAME_TS);
        }
        self.last = Some(due);
        self.kernel = None;
        self.map = Mapping::Played;
        RtpRepr {
            marker,
            payload_type,
            sequence_number: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        }
    }

    /// Renumbers in place a packet forwarded to this phone at `now` (see the module doc).
    pub fn forward<T: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        packet: &mut RtpPacket<T>,
        now: Instant,
    ) {
        let (ssrc, seq, ts) = (packet.ssrc(), packet.sequence_number(), packet.timestamp());
        let (seq_delta, ts_delta) = match self.map {
            Mapping::Fresh => {
                self.ssrc = ssrc;
                (self.seq, self.ts) = (seq, ts);
                self.last = Some(now);
                self.map = Mapping::Source {
                    ssrc,
                    seq_delta: 0,
                    ts_delta: 0,
                };
                return;
            }
            Mapping::Source {
                ssrc: source,
                seq_delta,
                ts_delta,
            } if source == ssrc => (seq_delta, ts_delta),
            Mapping::Source { .. } | Mapping::Played => {
                let (out_seq, out_ts) = self.continuation(now);
                let deltas = (out_seq.wrapping_sub(seq), out_ts.wrapping_sub(ts));
                self.map = Mapping::Source {
                    ssrc,
                    seq_delta: deltas.0,
                    ts_delta: deltas.1,
                };
                // The receiver's jitter buffer resynchronises on a marked packet.
                packet.set_marker(true);
                deltas
            }
        };
        let out_seq = seq.wrapping_add(seq_delta);
        let out_ts = ts.wrapping_add(ts_delta);
        if ssrc != self.ssrc {
            packet.set_ssrc(self.ssrc);
        }
        if seq_delta != 0 {
            packet.set_sequence_number(out_seq);
        }
        if ts_delta != 0 {
            packet.set_timestamp(out_ts);
        }
        // A late (reordered) packet keeps its place and does not move the stream back.
        #[allow(clippy::cast_possible_wrap)]
        let newer = (out_seq.wrapping_sub(self.seq) as i16) > 0;
        if newer {
            (self.seq, self.ts) = (out_seq, out_ts);
            self.last = Some(now);
            self.kernel = None;
        }
    }

    /// Renumbers in place a sender report forwarded to this phone (the first packet of a
    /// compound RTCP packet, RFC 3550 §6.4.1) of the source currently mapped: its sender SSRC
    /// and RTP timestamp become the stream's, so the phone can still tie its RTP to the
    /// sender's clock. Anything else passes unchanged.
    pub fn forward_sender_report(&self, rtcp: &mut [u8]) {
        const SENDER_REPORT: u8 = 200;
        let Mapping::Source { ssrc, ts_delta, .. } = self.map else {
            return;
        };
        let (Some(&pt), Some(sender), Some(ts)) = (
            rtcp.get(1),
            rtcp.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()),
            rtcp.get(16..20).and_then(|b| <[u8; 4]>::try_from(b).ok()),
        ) else {
            return;
        };
        if pt != SENDER_REPORT || u32::from_be_bytes(sender) != ssrc {
            return;
        }
        let ts = u32::from_be_bytes(ts).wrapping_add(ts_delta);
        rtcp[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        rtcp[16..20].copy_from_slice(&ts.to_be_bytes());
    }

    /// The sequence number and timestamp of a packet sent at `at` that continues the stream
    /// after a switch of source.
    fn continuation(&self, at: Instant) -> (u16, u32) {
        let Some(last) = self.last else {
            // The stream's first packet: its initial numbering.
            return (self.seq, self.ts);
        };
        let elapsed = at.saturating_duration_since(last);
        let wall = u32::try_from(elapsed.as_micros() * PER_MS / 1000).unwrap_or(u32::MAX);
        let mut samples = wall.max(FRAME_TS);
        let mut packets: u16 = 1;
        if let Some(unseen) = self.kernel {
            let unseen = u16::try_from(unseen).unwrap_or(u16::MAX / 2);
            packets = packets
                .saturating_add(unseen)
                .saturating_add(KERNEL_SEQ_SLACK)
                .min(u16::MAX / 2);
            samples = samples
                .saturating_add(wall / KERNEL_DRIFT_DIVISOR)
                .saturating_add(FRAME_TS);
        }
        (
            self.seq.wrapping_add(packets),
            self.ts.wrapping_add(samples),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pbx_core::media::rtp::HEADER_LEN;

    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// A 20 ms PCMU packet of `ssrc` with `seq` and `ts`.
    fn packet(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + 160];
        RtpRepr {
            marker: false,
            payload_type: 0,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
        }
        .emit(&mut buf, &[0x55; 160])
        .expect("fits");
        buf
    }

    /// Forwards one packet; returns what the phone receives (ssrc, seq, ts, marker).
    fn fwd(
        out: &mut OutStream,
        ssrc: u32,
        seq: u16,
        ts: u32,
        now: Instant,
    ) -> (u32, u16, u32, bool) {
        let mut bytes = packet(ssrc, seq, ts);
        let mut view = RtpPacket::new_checked(&mut bytes[..]).expect("RTP");
        out.forward(&mut view, now);
        (
            view.ssrc(),
            view.sequence_number(),
            view.timestamp(),
            view.marker(),
        )
    }

    fn played(out: &mut OutStream, due: Instant, talkspurt: bool) -> (u32, u16, u32, bool) {
        let r = out.next(due, talkspurt, 0);
        (r.ssrc, r.sequence_number, r.timestamp, r.marker)
    }

    #[test]
    fn a_plain_call_passes_through_untouched() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 2, 3);
        assert!(out.is_passthrough());
        for i in 0..5u16 {
            let now = t0 + FRAME * u32::from(i);
            let ts = 9000 + 160 * u32::from(i);
            assert_eq!(
                fwd(&mut out, 0xAAAA, 100 + i, ts, now),
                (0xAAAA, 100 + i, ts, false)
            );
        }
        assert!(out.is_passthrough());
        assert_eq!(out.ssrc(), 0xAAAA);
    }

    #[test]
    fn music_then_the_phone_again_continue_one_ssrc_sequence_and_timestamp() {
        let t0 = Instant::now();
        let mut out = OutStream::new(0x5151, 7, 1_400_000_000);
        // The other phone, 10 packets.
        for i in 0..10u16 {
            fwd(
                &mut out,
                0xAAAA,
                500 + i,
                160 * u32::from(i),
                t0 + FRAME * u32::from(i),
            );
        }
        // Hold: music starts 100 ms after the last forwarded packet.
        let hold = t0 + FRAME * 9 + Duration::from_millis(100);
        assert_eq!(
            played(&mut out, hold, true),
            (0xAAAA, 510, 1440 + 800, true)
        );
        assert_eq!(
            played(&mut out, hold + FRAME, false),
            (0xAAAA, 511, 2240 + 160, false)
        );
        assert!(!out.is_passthrough(), "renumbering from now on");
        // Resume 1 s after the last frame: the phone restarted with a new SSRC and numbering.
        let resume = hold + FRAME + Duration::from_secs(1);
        assert_eq!(
            fwd(&mut out, 0xBBBB, 40_000, 3_000_000_000, resume),
            (0xAAAA, 512, 2400 + 8000, true)
        );
        // Its later packets keep their spacing, a gap stays a gap, a late one its place.
        assert_eq!(
            fwd(&mut out, 0xBBBB, 40_001, 3_000_000_160, resume + FRAME),
            (0xAAAA, 513, 10_560, false)
        );
        assert_eq!(
            fwd(&mut out, 0xBBBB, 40_003, 3_000_000_480, resume + FRAME * 3),
            (0xAAAA, 515, 10_880, false)
        );
        assert_eq!(
            fwd(&mut out, 0xBBBB, 40_002, 3_000_000_320, resume + FRAME * 3),
            (0xAAAA, 514, 10_720, false)
        );
        // Music again continues after the newest packet, not the late one.
        let again = resume + FRAME * 4;
        assert_eq!(
            played(&mut out, again, true),
            (0xAAAA, 516, 10_880 + 160, true)
        );
    }

    #[test]
    fn a_prompt_before_any_forwarded_audio_lends_its_ssrc_to_the_phone_that_follows() {
        let t0 = Instant::now();
        let mut out = OutStream::new(0x5151, 65_535, u32::MAX - 100);
        assert_eq!(
            played(&mut out, t0, true),
            (0x5151, 65_535, u32::MAX - 100, true)
        );
        assert_eq!(played(&mut out, t0 + FRAME, false), (0x5151, 0, 59, false));
        let (ssrc, seq, ts, marker) = fwd(&mut out, 0xAAAA, 1, 0, t0 + FRAME * 2);
        assert_eq!(
            (ssrc, seq, ts, marker),
            (0x5151, 1, 219, true),
            "wraps forward"
        );
    }

    #[test]
    fn a_stream_the_kernel_carried_continues_past_every_packet_it_may_have_sent() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 2, 3);
        fwd(&mut out, 0xAAAA, 1000, 80_000, t0);
        out.kernel_took();
        out.kernel_forwarded(3000);
        // 62 s later the call is taken back for music.
        let later = t0 + Duration::from_secs(62);
        let (ssrc, seq, ts, marker) = played(&mut out, later, true);
        assert_eq!(ssrc, 0xAAAA);
        assert!(marker);
        assert_eq!(seq, 1000 + 1 + 3000 + KERNEL_SEQ_SLACK);
        let wall = 62 * 8000;
        assert_eq!(ts, 80_000 + wall + wall / KERNEL_DRIFT_DIVISOR + FRAME_TS);
        // The estimate is used once; the stream then runs on what it sent.
        let (_, next_seq, next_ts, _) = played(&mut out, later + FRAME, false);
        assert_eq!((next_seq, next_ts), (seq + 1, ts + 160));
    }

    #[test]
    fn a_sender_report_of_a_renumbered_source_is_renumbered_too() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 2, 3);
        fwd(&mut out, 0xAAAA, 10, 1000, t0);
        fwd(&mut out, 0xCCCC, 7, 5, t0 + FRAME);
        let report = |ssrc: u32, ts: u32| {
            let mut sr = vec![0x80, 200, 0, 6];
            sr.extend_from_slice(&ssrc.to_be_bytes());
            sr.extend_from_slice(&[9; 8]);
            sr.extend_from_slice(&ts.to_be_bytes());
            sr.extend_from_slice(&[0; 8]);
            sr
        };
        let mut sr = report(0xCCCC, 5 + 160);
        out.forward_sender_report(&mut sr);
        assert_eq!(sr, report(0xAAAA, 1160 + 160));
        // Another sender, a receiver report, a runt: untouched.
        for mut other in [
            report(0xDDDD, 5),
            vec![0x80, 201, 0, 1, 0, 0, 0xCC, 0xCC],
            vec![0x80],
        ] {
            let before = other.clone();
            out.forward_sender_report(&mut other);
            assert_eq!(other, before);
        }
    }

    #[test]
    fn a_source_changing_its_ssrc_mid_call_keeps_the_stream() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 2, 3);
        fwd(&mut out, 0xAAAA, 10, 1000, t0);
        let got = fwd(&mut out, 0xCCCC, 7, 5, t0 + FRAME);
        assert_eq!(got, (0xAAAA, 11, 1160, true));
        assert!(!out.is_passthrough());
    }
}
