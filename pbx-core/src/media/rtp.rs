//! RTP (RFC 3550 §5.1): a zero-copy packet view, a header [`RtpRepr`], the rtcp-mux
//! demultiplexing test (RFC 5761 §4), sequence tracking (RFC 3550 Appendix A.1) and the
//! interarrival jitter estimator (RFC 3550 §6.4.1, Appendix A.8).
//!
//! The relay runs every packet through [`RtpPacket::new_checked`] on its hot path, so the
//! checks are a handful of comparisons and nothing here allocates.

use thiserror::Error;

/// Length of the fixed RTP header (no CSRC, no extension).
pub const HEADER_LEN: usize = 12;

/// RTP version this code understands.
pub const VERSION: u8 = 2;

/// Why bytes are not an acceptable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the fixed 12-byte header.
    #[error("truncated RTP header")]
    Truncated,
    /// Version field is not 2.
    #[error("RTP version is not 2")]
    Version,
    /// The CSRC list runs past the end of the packet.
    #[error("RTP CSRC list overruns the packet")]
    CsrcOverrun,
    /// The header extension runs past the end of the packet.
    #[error("RTP header extension overruns the packet")]
    ExtensionOverrun,
    /// P bit set but the padding count is zero or larger than the payload.
    #[error("bad RTP padding")]
    Padding,
    /// The output buffer is too small for what was to be emitted.
    #[error("buffer too small for RTP packet")]
    BufferTooSmall,
}

/// Whether a datagram on an rtcp-mux port is RTCP rather than RTP (RFC 5761 §4: the second
/// byte, read as RTCP packet type, lies in 192..=223).
pub fn looks_like_rtcp(buf: &[u8]) -> bool {
    matches!(buf.get(1), Some(192..=223))
}

/// A read (and, over mutable bytes, write) view of one RTP packet, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<T: AsRef<[u8]>> {
    buffer: T,
    /// Header length including CSRC list and extension, fixed at check time.
    header_len: usize,
    /// Number of padding bytes at the end (0 when the P bit is clear).
    padding_len: usize,
}

impl<T: AsRef<[u8]>> RtpPacket<T> {
    /// Validates version, header, CSRC list, extension and padding; afterwards no accessor
    /// panics.
    pub fn new_checked(buffer: T) -> Result<Self, RtpError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(RtpError::Truncated);
        }
        if buf[0] >> 6 != VERSION {
            return Err(RtpError::Version);
        }
        let mut header_len = HEADER_LEN + 4 * usize::from(buf[0] & 0x0f);
        if header_len > buf.len() {
            return Err(RtpError::CsrcOverrun);
        }
        if buf[0] & 0x10 != 0 {
            // RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the data.
            let Some(ext) = buf.get(header_len..header_len + 4) else {
                return Err(RtpError::ExtensionOverrun);
            };
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            header_len += 4 + 4 * words;
            if header_len > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
        }
        let padding_len = if buf[0] & 0x20 != 0 {
            let count = usize::from(buf[buf.len() - 1]);
            if count == 0 || count > buf.len() - header_len {
                return Err(RtpError::Padding);
            }
            count
        } else {
            0
        };
        Ok(RtpPacket {
            buffer,
            header_len,
            padding_len,
        })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Version field (always 2 after the check).
    pub fn version(&self) -> u8 {
        self.buf()[0] >> 6
    }

    /// P bit: the packet ends in padding.
    pub fn padding(&self) -> bool {
        self.buf()[0] & 0x20 != 0
    }

    /// X bit: a header extension follows the CSRC list.
    pub fn extension(&self) -> bool {
        self.buf()[0] & 0x10 != 0
    }

    /// CC field: number of CSRC identifiers.
    pub fn csrc_count(&self) -> u8 {
        self.buf()[0] & 0x0f
    }

    /// M bit (for audio: first packet of a talkspurt; for RFC 4733: start of an event).
    pub fn marker(&self) -> bool {
        self.buf()[1] & 0x80 != 0
    }

    /// Payload type (7 bits).
    pub fn payload_type(&self) -> u8 {
        self.buf()[1] & 0x7f
    }

    /// Sequence number.
    pub fn sequence_number(&self) -> u16 {
        let b = self.buf();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        let b = self.buf();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// Synchronisation source.
    pub fn ssrc(&self) -> u32 {
        let b = self.buf();
        u32::from_be_bytes([b[8], b[9], b[10], b[11]])
    }

    /// The `i`-th contributing source, if the CSRC list has one.
    pub fn csrc(&self, i: usize) -> Option<u32> {
        if i >= usize::from(self.csrc_count()) {
            return None;
        }
        let at = HEADER_LEN + 4 * i;
        let b = self.buf().get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Header extension profile identifier, when the X bit is set.
    pub fn extension_profile(&self) -> Option<u16> {
        let at = self.extension_offset()?;
        let b = self.buf().get(at..at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Header extension data (after its 4-byte header), when the X bit is set.
    pub fn extension_data(&self) -> Option<&[u8]> {
        let at = self.extension_offset()?;
        self.buf().get(at + 4..self.header_len)
    }

    fn extension_offset(&self) -> Option<usize> {
        self.extension()
            .then(|| HEADER_LEN + 4 * usize::from(self.csrc_count()))
    }

    /// Length of the whole header: fixed part, CSRC list and extension.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Number of padding bytes at the end (0 without the P bit).
    pub fn padding_len(&self) -> usize {
        self.padding_len
    }

    /// The payload, without header and padding.
    pub fn payload(&self) -> &[u8] {
        let b = self.buf();
        // The check guaranteed header_len + padding_len <= len.
        b.get(self.header_len..b.len() - self.padding_len)
            .unwrap_or_default()
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RtpPacket<T> {
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets or clears the M bit.
    pub fn set_marker(&mut self, marker: bool) {
        let b = self.buf_mut();
        b[1] = (b[1] & 0x7f) | if marker { 0x80 } else { 0 };
    }

    /// Sets the payload type (only the low 7 bits are used).
    pub fn set_payload_type(&mut self, pt: u8) {
        let b = self.buf_mut();
        b[1] = (b[1] & 0x80) | (pt & 0x7f);
    }

    /// Sets the sequence number.
    pub fn set_sequence_number(&mut self, seq: u16) {
        self.buf_mut()[2..4].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the RTP timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        self.buf_mut()[4..8].copy_from_slice(&ts.to_be_bytes());
    }

    /// Sets the synchronisation source.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.buf_mut()[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }

    /// The payload, writable (without header and padding).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, pad) = (self.header_len, self.padding_len);
        let b = self.buf_mut();
        let end = b.len() - pad;
        b.get_mut(start..end).unwrap_or_default()
    }
}

/// The fields of a plain RTP header (no CSRC, extension or padding), for building packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpRepr {
    /// M bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence_number: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpRepr {
    /// Reads the header fields of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &RtpPacket<T>) -> RtpRepr {
        RtpRepr {
            marker: packet.marker(),
            payload_type: packet.payload_type(),
            sequence_number: packet.sequence_number(),
            timestamp: packet.timestamp(),
            ssrc: packet.ssrc(),
        }
    }

    /// Writes a 12-byte header followed by `payload` into `buf`; returns the packet length.
    pub fn emit(&self, buf: &mut [u8], payload: &[u8]) -> Result<usize, RtpError> {
        let len = HEADER_LEN + payload.len();
        let out = buf.get_mut(..len).ok_or(RtpError::BufferTooSmall)?;
        out[0] = VERSION << 6;
        out[1] = (self.payload_type & 0x7f) | if self.marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence_number.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[HEADER_LEN..].copy_from_slice(payload);
        Ok(len)
    }
}

/// A sequence jump beyond this many packets ahead is treated as a restart candidate.
const MAX_DROPOUT: u16 = 3000;
/// A sequence this many packets behind the highest is a late (reordered or duplicate) packet.
const MAX_MISORDER: u16 = 100;
/// In-order packets a new source must send before it counts (its probation).
const MIN_SEQUENTIAL: u8 = 2;
const SEQ_MOD: u32 = 1 << 16;

/// Tracks a source's sequence numbers as RFC 3550 Appendix A.1 does: extended highest
/// sequence number across wraps, packets received and expected, and loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqTracker {
    started: bool,
    max_seq: u16,
    /// Wrap count, shifted left by 16 (so `cycles + max_seq` is the extended sequence).
    cycles: u32,
    base_seq: u32,
    /// The sequence number that would confirm a restart after a big jump; > 0xffff = none.
    bad_seq: u32,
    probation: u8,
    received: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqTracker {
    /// A tracker that has seen no packet yet.
    pub const fn new() -> Self {
        SeqTracker {
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
        }
    }

    fn restart(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// Feeds one packet's sequence number; returns whether it counts as a valid packet of
    /// the source (false during probation and for a wild jump not yet confirmed).
    pub fn update(&mut self, seq: u16) -> bool {
        if !self.started {
            self.started = true;
            self.restart(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.restart(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a big jump: the source restarted.
                self.restart(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, like A.1 does.
        self.received += 1;
        true
    }

    /// Whether the source has passed probation.
    pub fn is_valid(&self) -> bool {
        self.started && self.probation == 0
    }

    /// Extended highest sequence number received (wrap count in the upper 16 bits).
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Valid packets received (duplicates included, as in RFC 3550 A.3).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the first valid one to the highest seen.
    pub fn expected(&self) -> u64 {
        if !self.is_valid() {
            return 0;
        }
        u64::from(self.extended_max().wrapping_sub(self.base_seq)) + 1
    }

    /// Packets lost: expected minus received, never below zero.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// Interarrival jitter (RFC 3550 §6.4.1, computed as in Appendix A.8), kept in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterEstimator {
    clock_rate: u32,
    last: Option<(u64, u32)>,
    /// Jitter in µs, scaled by 16 (A.8's integer form of the 1/16 gain).
    jitter_x16: u64,
}

impl Default for JitterEstimator {
    fn default() -> Self {
        Self::new(8000)
    }
}

impl JitterEstimator {
    /// An estimator for a stream whose RTP clock runs at `clock_rate` Hz (8000 for G.711).
    pub const fn new(clock_rate: u32) -> Self {
        JitterEstimator {
            clock_rate: if clock_rate == 0 { 1 } else { clock_rate },
            last: None,
            jitter_x16: 0,
        }
    }

    /// Feeds a packet's arrival time (µs, any epoch, from the caller's monotonic clock) and
    /// its RTP timestamp.
    pub fn update(&mut self, arrival_us: u64, rtp_ts: u32) {
        if let Some((last_arrival, last_ts)) = self.last {
            // Differences, so timestamps may wrap; a reordered packet gives a negative delta.
            #[allow(clippy::cast_possible_wrap)]
            let d_arrival = arrival_us.wrapping_sub(last_arrival) as i64;
            #[allow(clippy::cast_possible_wrap)]
            let d_ts = i64::from(rtp_ts.wrapping_sub(last_ts) as i32);
            let d_ts_us = d_ts * 1_000_000 / i64::from(self.clock_rate);
            let d = d_arrival.saturating_sub(d_ts_us).unsigned_abs();
            // J += (|D| - J) / 16, with J kept scaled by 16.
            self.jitter_x16 = self
                .jitter_x16
                .saturating_add(d)
                .saturating_sub((self.jitter_x16 + 8) >> 4);
        }
        self.last = Some((arrival_us, rtp_ts));
    }

    /// Current jitter estimate in microseconds.
    pub fn jitter_us(&self) -> u64 {
        self.jitter_x16 >> 4
    }

    /// Current jitter in RTP timestamp units, as an RTCP report block carries it.
    pub fn jitter_ts(&self) -> u32 {
        let ts = u128::from(self.jitter_us()) * u128::from(self.clock_rate) / 1_000_000;
        u32::try_from(ts).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcmu_packet(seq: u16, ts: u32) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + 160];
        let repr = RtpRepr {
            marker: false,
            payload_type: 0,
            sequence_number: seq,
            timestamp: ts,
            ssrc: 0x1234_5678,
        };
        let n = repr.emit(&mut buf, &[0xff; 160]).expect("fits");
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn plain_packet_reads_back_its_fields() {
        let mut buf = pcmu_packet(4711, 160_000);
        buf[1] |= 0x80;
        let p = RtpPacket::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.version(), 2);
        assert!(p.marker());
        assert!(!p.padding() && !p.extension());
        assert_eq!(p.csrc_count(), 0);
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.sequence_number(), 4711);
        assert_eq!(p.timestamp(), 160_000);
        assert_eq!(p.ssrc(), 0x1234_5678);
        assert_eq!(p.header_len(), 12);
        assert_eq!(p.payload().len(), 160);
        assert_eq!(p.csrc(0), None);
        assert_eq!(p.extension_profile(), None);
        let repr = RtpRepr::parse(&p);
        assert!(repr.marker);
        assert_eq!(repr.sequence_number, 4711);
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped_for_the_payload() {
        // V=2 P=1 X=1 CC=2, PT 8, two CSRCs, extension of 1 word, payload 3 bytes, 2 padding.
        let mut buf = vec![0xb2, 0x08, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        buf.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        buf.extend_from_slice(&[1, 2, 3, 0, 2]);
        let p = RtpPacket::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.csrc_count(), 2);
        assert_eq!(p.csrc(0), Some(1));
        assert_eq!(p.csrc(1), Some(2));
        assert_eq!(p.csrc(2), None);
        assert_eq!(p.extension_profile(), Some(0xbede));
        assert_eq!(p.extension_data(), Some(&[0x10, 0xaa, 0, 0][..]));
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.padding_len(), 2);
        assert_eq!(p.payload(), &[1, 2, 3]);
    }

    #[test]
    fn malformed_packets_are_rejected_with_the_right_error() {
        let good = pcmu_packet(1, 0);
        assert_eq!(
            RtpPacket::new_checked(&good[..11]).err(),
            Some(RtpError::Truncated)
        );
        assert_eq!(
            RtpPacket::new_checked(&[][..]).err(),
            Some(RtpError::Truncated)
        );

        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(
            RtpPacket::new_checked(&v1[..]).err(),
            Some(RtpError::Version)
        );
        v1[0] = 0x00;
        assert_eq!(
            RtpPacket::new_checked(&v1[..]).err(),
            Some(RtpError::Version)
        );

        // CC = 15 needs 60 more bytes than a 12-byte packet has.
        let cc = [0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5];
        assert_eq!(
            RtpPacket::new_checked(&cc[..]).err(),
            Some(RtpError::CsrcOverrun)
        );

        // X bit set, but no room for the extension header.
        let x = [0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde];
        assert_eq!(
            RtpPacket::new_checked(&x[..]).err(),
            Some(RtpError::ExtensionOverrun)
        );
        // Extension header claims 0xffff words.
        let x = [
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0xff, 0xff, 1, 2,
        ];
        assert_eq!(
            RtpPacket::new_checked(&x[..]).err(),
            Some(RtpError::ExtensionOverrun)
        );

        let mut pad = good.clone();
        pad[0] |= 0x20;
        *pad.last_mut().expect("non-empty") = 0;
        assert_eq!(
            RtpPacket::new_checked(&pad[..]).err(),
            Some(RtpError::Padding)
        );
        *pad.last_mut().expect("non-empty") = 161;
        assert_eq!(
            RtpPacket::new_checked(&pad[..]).err(),
            Some(RtpError::Padding)
        );
        *pad.last_mut().expect("non-empty") = 160;
        let p = RtpPacket::new_checked(&pad[..]).expect("all-padding payload is legal");
        assert!(p.payload().is_empty());
        // Header only with P bit: the count byte would be inside the header.
        let mut hdr = good[..12].to_vec();
        hdr[0] |= 0x20;
        assert_eq!(
            RtpPacket::new_checked(&hdr[..]).err(),
            Some(RtpError::Padding)
        );
    }

    #[test]
    fn setters_rewrite_the_header_in_place() {
        let mut buf = pcmu_packet(10, 800);
        let mut p = RtpPacket::new_checked(&mut buf[..]).expect("valid");
        p.set_marker(true);
        p.set_payload_type(0xff);
        p.set_sequence_number(0xfffe);
        p.set_timestamp(0xdead_beef);
        p.set_ssrc(7);
        p.payload_mut()[0] = 0x55;
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0x7f);
        p.set_payload_type(8);
        p.set_marker(false);
        assert_eq!(p.payload_type(), 8);
        assert!(!p.marker());
        assert_eq!(p.sequence_number(), 0xfffe);
        assert_eq!(p.timestamp(), 0xdead_beef);
        assert_eq!(p.ssrc(), 7);
        assert_eq!(p.version(), 2);
        assert_eq!(buf[12], 0x55);
    }

    #[test]
    fn emit_refuses_a_short_buffer() {
        let repr = RtpRepr {
            marker: true,
            payload_type: 101,
            sequence_number: 1,
            timestamp: 2,
            ssrc: 3,
        };
        let mut small = [0u8; 15];
        assert_eq!(
            repr.emit(&mut small, &[0; 4]),
            Err(RtpError::BufferTooSmall)
        );
        assert_eq!(repr.emit(&mut small, &[9; 3]), Ok(15));
        let p = RtpPacket::new_checked(&small[..]).expect("valid");
        assert_eq!(RtpRepr::parse(&p), repr);
    }

    #[test]
    fn rtcp_mux_demultiplexing_uses_the_second_byte() {
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6]));
        assert!(looks_like_rtcp(&[0x81, 201]));
        assert!(looks_like_rtcp(&[0x80, 223]));
        assert!(looks_like_rtcp(&[0x80, 192]));
        assert!(!looks_like_rtcp(&pcmu_packet(1, 0)));
        assert!(!looks_like_rtcp(&[0x80, 0x80 | 101])); // PT 101 with marker: 229
        assert!(!looks_like_rtcp(&[0x80, 191]));
        assert!(!looks_like_rtcp(&[0x80]));
        assert!(!looks_like_rtcp(&[]));
    }

    #[test]
    fn new_source_is_on_probation_for_two_packets() {
        let mut t = SeqTracker::new();
        assert!(!t.update(100));
        assert!(!t.is_valid());
        assert_eq!(t.expected(), 0);
        assert!(t.update(101));
        assert!(t.is_valid());
        assert_eq!((t.received(), t.expected(), t.lost()), (1, 1, 0));
        // A non-consecutive second packet restarts probation.
        let mut t = SeqTracker::new();
        assert!(!t.update(100));
        assert!(!t.update(200));
        assert!(t.update(201));
        assert_eq!(t.extended_max(), 201);
    }

    #[test]
    fn sequence_wrap_at_65535_extends_the_count() {
        let mut t = SeqTracker::new();
        let mut seq = 65530u16;
        for _ in 0..12 {
            t.update(seq);
            seq = seq.wrapping_add(1);
        }
        // 65530 is the probation packet; 65531..=65535 and 0..=5 count.
        assert_eq!(t.extended_max(), 65536 + 5);
        assert_eq!(t.received(), 11);
        assert_eq!(t.expected(), 11);
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn loss_reorder_and_duplicates_are_tolerated() {
        let mut t = SeqTracker::new();
        assert!(!t.update(1));
        for s in [2, 3, 5, 4, 6, 6, 9, 10] {
            assert!(t.update(s));
        }
        // Counted: 2..=10 expected = 9, received 8 (incl. one duplicate), lost 7 and 8 -> 1
        assert_eq!(t.expected(), 9);
        assert_eq!(t.received(), 8);
        assert_eq!(t.lost(), 1);
        // Duplicates can make received exceed expected: lost is clamped at zero.
        for _ in 0..5 {
            t.update(10);
        }
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn wild_jump_is_ignored_once_and_accepted_as_restart_when_confirmed() {
        let mut t = SeqTracker::new();
        t.update(1000);
        t.update(1001);
        assert!(!t.update(40_000));
        assert_eq!(t.extended_max(), 1001);
        assert!(t.update(40_001));
        assert_eq!(t.extended_max(), 40_001);
        assert_eq!((t.received(), t.lost()), (1, 0));
        // A late packet within MAX_MISORDER is accepted without moving the maximum.
        assert!(t.update(39_990));
        assert_eq!(t.extended_max(), 40_001);
    }

    #[test]
    fn perfectly_paced_stream_has_no_jitter() {
        let mut j = JitterEstimator::new(8000);
        for i in 0..500u32 {
            j.update(
                1_000_000 + u64::from(i) * 20_000,
                0xffff_0000u32.wrapping_add(i * 160),
            );
        }
        assert_eq!(j.jitter_us(), 0);
        assert_eq!(j.jitter_ts(), 0);
    }

    #[test]
    fn jittered_stream_converges_near_the_mean_deviation() {
        let mut j = JitterEstimator::default();
        // Every other packet 4 ms late: |D| is 4 ms on every packet.
        for i in 0..1000u32 {
            let late = if i % 2 == 1 { 4_000 } else { 0 };
            j.update(u64::from(i) * 20_000 + late, i * 160);
        }
        let us = j.jitter_us();
        assert!((3_900..=4_000).contains(&us), "jitter {us} µs");
        assert_eq!(j.jitter_ts(), u32::try_from(us * 8 / 1000).expect("small"));
    }
}
