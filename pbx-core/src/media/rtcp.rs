//! RTCP (RFC 3550 §6): a zero-copy view of one RTCP packet, iteration over a compound
//! packet, sender/receiver report parsing, and [`summarize`], which pulls out what the relay
//! puts in [`LegStats`](super::session::LegStats).
//!
//! SDES, BYE, APP and any other type are recognised by their header and skipped: the relay
//! forwards RTCP untouched and only reads the reports.

use thiserror::Error;

/// Length of the common RTCP header (V/P/count, type, length).
pub const HEADER_LEN: usize = 4;
/// Length of one report block.
pub const REPORT_BLOCK_LEN: usize = 24;
/// Length of the sender info in an SR.
pub const SENDER_INFO_LEN: usize = 20;
/// Packet type of a sender report.
pub const PT_SR: u8 = 200;
/// Packet type of a receiver report.
pub const PT_RR: u8 = 201;
/// Packet type of source description items.
pub const PT_SDES: u8 = 202;
/// Packet type of a goodbye.
pub const PT_BYE: u8 = 203;
/// Packet type of application-defined data.
pub const PT_APP: u8 = 204;

/// Why bytes are not an acceptable RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    /// Shorter than a 4-byte header, or an empty compound.
    #[error("truncated RTCP packet")]
    Truncated,
    /// Version field is not 2.
    #[error("RTCP version is not 2")]
    Version,
    /// The length field points past the end of the buffer.
    #[error("RTCP length field exceeds the packet")]
    Length,
    /// P bit set but the padding count is zero or larger than the body.
    #[error("bad RTCP padding")]
    Padding,
    /// The report count needs more blocks than the length field allows.
    #[error("RTCP report blocks overrun the packet")]
    ReportOverrun,
    /// More than 31 report blocks to emit.
    #[error("too many RTCP report blocks")]
    TooManyBlocks,
    /// The output buffer is too small for what was to be emitted.
    #[error("buffer too small for RTCP packet")]
    BufferTooSmall,
}

/// The kind of an RTCP packet, by its packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpKind {
    /// SR (200).
    SenderReport,
    /// RR (201).
    ReceiverReport,
    /// SDES (202).
    SourceDescription,
    /// BYE (203).
    Bye,
    /// APP (204).
    App,
    /// Any other type (feedback, XR, ...), skipped.
    Other(u8),
}

impl From<u8> for RtcpKind {
    fn from(pt: u8) -> Self {
        match pt {
            PT_SR => RtcpKind::SenderReport,
            PT_RR => RtcpKind::ReceiverReport,
            PT_SDES => RtcpKind::SourceDescription,
            PT_BYE => RtcpKind::Bye,
            PT_APP => RtcpKind::App,
            other => RtcpKind::Other(other),
        }
    }
}

/// The sender info of an SR (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP timestamp (seconds in the upper 32 bits, fraction in the lower).
    pub ntp_timestamp: u64,
    /// RTP timestamp corresponding to the NTP timestamp.
    pub rtp_timestamp: u32,
    /// Packets sent by the sender so far.
    pub packet_count: u32,
    /// Payload octets sent by the sender so far.
    pub octet_count: u32,
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    /// Reads a block from exactly [`REPORT_BLOCK_LEN`] bytes (`None` if `b` is shorter).
    pub fn parse(b: &[u8]) -> Option<ReportBlock> {
        let b = b.get(..REPORT_BLOCK_LEN)?;
        let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        // Sign-extend the 24-bit field by placing it in the top bytes and shifting back.
        let cumulative_lost = i32::from_be_bytes([b[5], b[6], b[7], 0]) >> 8;
        Some(ReportBlock {
            ssrc: be32(0),
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: be32(8),
            jitter: be32(12),
            lsr: be32(16),
            dlsr: be32(20),
        })
    }

    /// Writes the block into the first [`REPORT_BLOCK_LEN`] bytes of `buf`; the cumulative
    /// count is clamped to the 24-bit signed range.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), RtcpError> {
        let b = buf
            .get_mut(..REPORT_BLOCK_LEN)
            .ok_or(RtcpError::BufferTooSmall)?;
        let lost = self
            .cumulative_lost
            .clamp(-0x80_0000, 0x7f_ffff)
            .to_be_bytes();
        b[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        b[4] = self.fraction_lost;
        b[5..8].copy_from_slice(&lost[1..4]);
        b[8..12].copy_from_slice(&self.highest_seq.to_be_bytes());
        b[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        b[16..20].copy_from_slice(&self.lsr.to_be_bytes());
        b[20..24].copy_from_slice(&self.dlsr.to_be_bytes());
        Ok(())
    }
}

/// A view of one RTCP packet, validated once; it covers the first `(length + 1) * 4`
/// bytes of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<T: AsRef<[u8]>> {
    buffer: T,
    /// Packet length from the length field, checked to fit the buffer.
    len: usize,
    /// Padding bytes at the end of the packet.
    padding_len: usize,
}

impl<T: AsRef<[u8]>> RtcpPacket<T> {
    /// Validates version, length field, padding and (for SR/RR) that the report blocks fit.
    pub fn new_checked(buffer: T) -> Result<Self, RtcpError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(RtcpError::Truncated);
        }
        if buf[0] >> 6 != 2 {
            return Err(RtcpError::Version);
        }
        let len = (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1) * 4;
        if len > buf.len() {
            return Err(RtcpError::Length);
        }
        let padding_len = if buf[0] & 0x20 != 0 {
            let count = usize::from(buf[len - 1]);
            if count == 0 || count > len - HEADER_LEN {
                return Err(RtcpError::Padding);
            }
            count
        } else {
            0
        };
        let blocks = usize::from(buf[0] & 0x1f) * REPORT_BLOCK_LEN;
        let needed = match buf[1] {
            PT_SR => 4 + SENDER_INFO_LEN + blocks,
            PT_RR => 4 + blocks,
            _ => 0,
        };
        if HEADER_LEN + needed + padding_len > len {
            return Err(RtcpError::ReportOverrun);
        }
        Ok(RtcpPacket {
            buffer,
            len,
            padding_len,
        })
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Version field (always 2 after the check).
    pub fn version(&self) -> u8 {
        self.buf()[0] >> 6
    }

    /// P bit.
    pub fn padding(&self) -> bool {
        self.buf()[0] & 0x20 != 0
    }

    /// The 5-bit count field (report blocks for SR/RR, chunks for SDES, sources for BYE).
    pub fn count(&self) -> u8 {
        self.buf()[0] & 0x1f
    }

    /// Packet type byte.
    pub fn packet_type(&self) -> u8 {
        self.buf()[1]
    }

    /// Packet type as a kind.
    pub fn kind(&self) -> RtcpKind {
        RtcpKind::from(self.packet_type())
    }

    /// Packet length in bytes (from the length field, header included).
    pub fn packet_len(&self) -> usize {
        self.len
    }

    /// The packet's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf().get(..self.len).unwrap_or_default()
    }

    /// Everything after the 4-byte header, without padding.
    pub fn body(&self) -> &[u8] {
        self.buf()
            .get(HEADER_LEN..self.len - self.padding_len)
            .unwrap_or_default()
    }

    /// The first SSRC in the body (the sender for SR/RR/APP, the first source for SDES/BYE).
    pub fn ssrc(&self) -> Option<u32> {
        let b = self.body().get(..4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Sender info, for an SR.
    pub fn sender_info(&self) -> Option<SenderInfo> {
        if self.kind() != RtcpKind::SenderReport {
            return None;
        }
        let b = self.body().get(4..4 + SENDER_INFO_LEN)?;
        let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Some(SenderInfo {
            ntp_timestamp: (u64::from(be32(0)) << 32) | u64::from(be32(4)),
            rtp_timestamp: be32(8),
            packet_count: be32(12),
            octet_count: be32(16),
        })
    }

    /// Number of report blocks (0 for types other than SR and RR).
    pub fn report_count(&self) -> usize {
        match self.kind() {
            RtcpKind::SenderReport | RtcpKind::ReceiverReport => usize::from(self.count()),
            _ => 0,
        }
    }

    /// The `i`-th report block of an SR or RR.
    pub fn report_block(&self, i: usize) -> Option<ReportBlock> {
        if i >= self.report_count() {
            return None;
        }
        let first = match self.kind() {
            RtcpKind::SenderReport => 4 + SENDER_INFO_LEN,
            _ => 4,
        };
        let at = first + i * REPORT_BLOCK_LEN;
        ReportBlock::parse(self.body().get(at..)?)
    }

    /// The report blocks of an SR or RR, in order.
    pub fn report_blocks(&self) -> impl Iterator<Item = ReportBlock> + '_ {
        (0..self.report_count()).filter_map(|i| self.report_block(i))
    }
}

/// Iterates over the packets of a compound RTCP datagram. A malformed packet yields one
/// error and ends the iteration; nothing past the buffer is ever read.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    rest: &'a [u8],
}

impl<'a> RtcpIter<'a> {
    /// Iteration over `buf`, which holds one or more RTCP packets back to back.
    pub fn new(buf: &'a [u8]) -> Self {
        RtcpIter { rest: buf }
    }
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<&'a [u8]>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let buf = std::mem::take(&mut self.rest);
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Some(Err(RtcpError::Truncated));
        };
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let (this, rest) = if len <= buf.len() {
            buf.split_at(len)
        } else {
            (buf, &[][..])
        };
        match RtcpPacket::new_checked(this) {
            Ok(packet) => {
                self.rest = rest;
                Some(Ok(packet))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// What a phone reported in one compound RTCP packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    /// SSRC of the first SR or RR (the reporting phone).
    pub sender_ssrc: Option<u32>,
    /// The first report block of the first SR or RR that has one.
    pub report: Option<ReportBlock>,
    /// That block's cumulative loss.
    pub cumulative_lost: Option<i32>,
    /// That block's jitter, converted at 8 kHz to microseconds.
    pub jitter_us: Option<u64>,
}

impl RtcpSummary {
    /// Cumulative loss as [`LegStats::rtcp_lost`](super::session::LegStats) holds it
    /// (negative counts, possible with duplicates, become zero).
    pub fn rtcp_lost(&self) -> Option<u32> {
        self.cumulative_lost.map(|l| l.max(0).unsigned_abs())
    }
}

/// Converts an RTCP jitter value (8 kHz timestamp units) to microseconds.
pub fn jitter_ts_to_us(jitter: u32) -> u64 {
    u64::from(jitter) * 1_000_000 / 8000
}

/// Reads a compound RTCP datagram: the whole compound must be well formed (RFC 3550 A.2
/// checks lengths across the compound), and the first report block found is summarised.
pub fn summarize(buf: &[u8]) -> Result<RtcpSummary, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Truncated);
    }
    let mut summary = RtcpSummary::default();
    for packet in RtcpIter::new(buf) {
        let packet = packet?;
        if !matches!(
            packet.kind(),
            RtcpKind::SenderReport | RtcpKind::ReceiverReport
        ) {
            continue;
        }
        if summary.sender_ssrc.is_none() {
            summary.sender_ssrc = packet.ssrc();
        }
        if summary.report.is_none() {
            if let Some(block) = packet.report_block(0) {
                summary.report = Some(block);
                summary.cumulative_lost = Some(block.cumulative_lost);
                summary.jitter_us = Some(jitter_ts_to_us(block.jitter));
            }
        }
    }
    Ok(summary)
}

/// Writes a receiver report (RR) from `ssrc` with `blocks`; returns its length.
pub fn emit_receiver_report(
    buf: &mut [u8],
    ssrc: u32,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    let count = u8::try_from(blocks.len())
        .ok()
        .filter(|&c| c <= 31)
        .ok_or(RtcpError::TooManyBlocks)?;
    let len = HEADER_LEN + 4 + blocks.len() * REPORT_BLOCK_LEN;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    let words = u16::try_from(len / 4 - 1).map_err(|_| RtcpError::TooManyBlocks)?;
    out[0] = 0x80 | count;
    out[1] = PT_RR;
    out[2..4].copy_from_slice(&words.to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    for (block, chunk) in blocks
        .iter()
        .zip(out[8..].chunks_exact_mut(REPORT_BLOCK_LEN))
    {
        block.emit(chunk)?;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, lost: i32, jitter: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 12,
            cumulative_lost: lost,
            highest_seq: 0x0001_0005,
            jitter,
            lsr: 0x1234_5678,
            dlsr: 0x0001_8000,
        }
    }

    /// SR from 0xAABBCCDD with one block, then SDES with a CNAME.
    fn sr_sdes() -> Vec<u8> {
        let mut p = vec![0x81, PT_SR, 0, 12, 0xaa, 0xbb, 0xcc, 0xdd];
        p.extend_from_slice(&[0xe8, 0x00, 0x00, 0x01, 0x80, 0, 0, 0]); // NTP
        p.extend_from_slice(&160u32.to_be_bytes());
        p.extend_from_slice(&50u32.to_be_bytes());
        p.extend_from_slice(&8000u32.to_be_bytes());
        let mut b = [0u8; REPORT_BLOCK_LEN];
        block(0x1111, 3, 80).emit(&mut b).expect("fits");
        p.extend_from_slice(&b);
        // SDES: one chunk, CNAME "ab", END, padded to a word.
        p.extend_from_slice(&[0x81, PT_SDES, 0, 3, 0xaa, 0xbb, 0xcc, 0xdd]);
        p.extend_from_slice(&[1, 2, b'a', b'b', 0, 0, 0, 0]);
        p
    }

    #[test]
    fn report_block_round_trips_with_negative_loss() {
        let mut b = [0u8; REPORT_BLOCK_LEN];
        let orig = block(7, -5, 1234);
        orig.emit(&mut b).expect("fits");
        assert_eq!(&b[5..8], &[0xff, 0xff, 0xfb]);
        assert_eq!(ReportBlock::parse(&b), Some(orig));
        let big = block(7, i32::MAX, 0);
        big.emit(&mut b).expect("fits");
        assert_eq!(
            ReportBlock::parse(&b).map(|r| r.cumulative_lost),
            Some(0x7f_ffff)
        );
        assert_eq!(ReportBlock::parse(&b[..23]), None);
        assert_eq!(orig.emit(&mut [0u8; 23]), Err(RtcpError::BufferTooSmall));
    }

    #[test]
    fn compound_sr_and_sdes_iterate_and_parse() {
        let buf = sr_sdes();
        let packets: Vec<_> = RtcpIter::new(&buf).collect();
        assert_eq!(packets.len(), 2);
        let sr = packets[0].as_ref().expect("SR valid");
        assert_eq!(sr.kind(), RtcpKind::SenderReport);
        assert_eq!(sr.packet_len(), 52);
        assert_eq!(sr.ssrc(), Some(0xaabb_ccdd));
        let info = sr.sender_info().expect("SR has sender info");
        assert_eq!(info.ntp_timestamp, 0xe800_0001_8000_0000);
        assert_eq!(
            (info.rtp_timestamp, info.packet_count, info.octet_count),
            (160, 50, 8000)
        );
        assert_eq!(sr.report_count(), 1);
        assert_eq!(sr.report_block(0), Some(block(0x1111, 3, 80)));
        assert_eq!(sr.report_block(1), None);
        assert_eq!(sr.report_blocks().count(), 1);
        let sdes = packets[1].as_ref().expect("SDES valid");
        assert_eq!(sdes.kind(), RtcpKind::SourceDescription);
        assert_eq!(sdes.report_count(), 0);
        assert_eq!(sdes.sender_info(), None);

        let s = summarize(&buf).expect("valid compound");
        assert_eq!(s.sender_ssrc, Some(0xaabb_ccdd));
        assert_eq!(s.cumulative_lost, Some(3));
        assert_eq!(s.rtcp_lost(), Some(3));
        assert_eq!(s.jitter_us, Some(10_000)); // 80 ticks at 8 kHz
    }

    #[test]
    fn receiver_report_emits_and_summarizes() {
        let mut buf = [0u8; 64];
        let n =
            emit_receiver_report(&mut buf, 42, &[block(9, -2, 8), block(10, 7, 16)]).expect("fits");
        assert_eq!(n, 8 + 48);
        let rr = RtcpPacket::new_checked(&buf[..n]).expect("valid RR");
        assert_eq!(rr.kind(), RtcpKind::ReceiverReport);
        assert_eq!(
            rr.report_blocks().map(|b| b.ssrc).collect::<Vec<_>>(),
            [9, 10]
        );
        let s = summarize(&buf[..n]).expect("valid");
        assert_eq!(s.cumulative_lost, Some(-2));
        assert_eq!(s.rtcp_lost(), Some(0));
        assert_eq!(s.jitter_us, Some(1000));
        assert_eq!(
            emit_receiver_report(&mut buf, 42, &[block(1, 0, 0); 3]),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            emit_receiver_report(&mut [0u8; 2000], 42, &[block(1, 0, 0); 32]),
            Err(RtcpError::TooManyBlocks)
        );
        // An empty RR (no blocks) summarises to nothing but the sender.
        let n = emit_receiver_report(&mut buf, 5, &[]).expect("fits");
        let s = summarize(&buf[..n]).expect("valid");
        assert_eq!((s.sender_ssrc, s.report), (Some(5), None));
    }

    #[test]
    fn single_packets_with_lies_are_rejected() {
        assert_eq!(
            RtcpPacket::new_checked(&[0x80, 201, 0][..]).err(),
            Some(RtcpError::Truncated)
        );
        assert_eq!(
            RtcpPacket::new_checked(&[0x40, 201, 0, 1, 0, 0, 0, 1][..]).err(),
            Some(RtcpError::Version)
        );
        // Length says 3 words after the header, only 1 present.
        assert_eq!(
            RtcpPacket::new_checked(&[0x80, 201, 0, 3, 0, 0, 0, 1][..]).err(),
            Some(RtcpError::Length)
        );
        assert_eq!(
            RtcpPacket::new_checked(&[0x80, 201, 0xff, 0xff, 0, 0, 0, 1][..]).err(),
            Some(RtcpError::Length)
        );
        // RR claims 2 blocks but the length only covers the SSRC.
        assert_eq!(
            RtcpPacket::new_checked(&[0x82, 201, 0, 1, 0, 0, 0, 1][..]).err(),
            Some(RtcpError::ReportOverrun)
        );
        // SR without room for sender info.
        assert_eq!(
            RtcpPacket::new_checked(&[0x80, 200, 0, 1, 0, 0, 0, 1][..]).err(),
            Some(RtcpError::ReportOverrun)
        );
        // Padding count 0, and larger than the body.
        assert_eq!(
            RtcpPacket::new_checked(&[0xa0, 203, 0, 1, 0, 0, 0, 0][..]).err(),
            Some(RtcpError::Padding)
        );
        assert_eq!(
            RtcpPacket::new_checked(&[0xa0, 203, 0, 1, 0, 0, 0, 5][..]).err(),
            Some(RtcpError::Padding)
        );
        let bye = RtcpPacket::new_checked(&[0xa0, 203, 0, 1, 0, 0, 0, 4][..]).expect("valid");
        assert!(bye.body().is_empty());
        assert_eq!(bye.ssrc(), None);
        // Padding eating into the report block is an overrun.
        let mut buf = [0u8; 64];
        let n = emit_receiver_report(&mut buf, 1, &[block(2, 0, 0)]).expect("fits");
        buf[0] |= 0x20;
        buf[n - 1] = 4;
        assert_eq!(
            RtcpPacket::new_checked(&buf[..n]).err(),
            Some(RtcpError::ReportOverrun)
        );
    }

    #[test]
    fn view_over_a_longer_buffer_covers_only_its_length() {
        let mut buf = sr_sdes();
        buf.extend_from_slice(&[0xde, 0xad]);
        let sr = RtcpPacket::new_checked(&buf[..]).expect("first packet valid");
        assert_eq!(sr.as_bytes().len(), 52);
        assert_eq!(sr.body().len(), 48);
    }

    #[test]
    fn compound_with_garbage_tail_yields_one_error_and_stops() {
        let mut buf = sr_sdes();
        buf.extend_from_slice(&[0x00, 0x01, 0x02]);
        let items: Vec<_> = RtcpIter::new(&buf).collect();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_ok());
        assert_eq!(items[2].as_ref().err(), Some(&RtcpError::Truncated));
        assert_eq!(summarize(&buf), Err(RtcpError::Truncated));

        let mut buf = sr_sdes();
        buf.extend_from_slice(&[0x80, 203, 0, 9, 1, 2, 3, 4]);
        let items: Vec<_> = RtcpIter::new(&buf).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].as_ref().err(), Some(&RtcpError::Length));
        assert_eq!(summarize(&buf), Err(RtcpError::Length));

        // An error in the middle stops the iteration: the valid SDES after it is not reached.
        let mut buf = vec![0x40, 201, 0, 1, 0, 0, 0, 1];
        buf.extend_from_slice(&sr_sdes());
        let items: Vec<_> = RtcpIter::new(&buf).collect();
        assert_eq!(items, vec![Err(RtcpError::Version)]);
        assert_eq!(summarize(&[]), Err(RtcpError::Truncated));
    }

    #[test]
    fn app_and_unknown_types_are_skipped() {
        let mut buf = vec![0x80, PT_RR, 0, 1, 0, 0, 0, 9];
        buf.extend_from_slice(&[0x80, PT_APP, 0, 2, 0, 0, 0, 9, b'n', b'a', b'm', b'e']);
        buf.extend_from_slice(&[0x81, 205, 0, 2, 0, 0, 0, 9, 0, 0, 0, 1]);
        let kinds: Vec<_> = RtcpIter::new(&buf)
            .map(|p| p.expect("valid").kind())
            .collect();
        assert_eq!(
            kinds,
            [
                RtcpKind::ReceiverReport,
                RtcpKind::App,
                RtcpKind::Other(205)
            ]
        );
        let s = summarize(&buf).expect("valid");
        assert_eq!((s.sender_ssrc, s.report), (Some(9), None));
    }
}
