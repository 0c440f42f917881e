//! RFC 4733 telephone events (DTMF over RTP): a view of the 4-byte event payload (§2.3),
//! the event-to-digit mapping (§3.2), a detector that turns the packet stream into one
//! report per digit, and an emitter for the PBX's own events.

use thiserror::Error;

/// Length of one telephone-event payload.
pub const EVENT_LEN: usize = 4;

/// Why bytes are not a telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DtmfError {
    /// Shorter than 4 bytes.
    #[error("truncated telephone-event payload")]
    Truncated,
}

/// A view of a telephone-event payload (RFC 4733 §2.3); only the first 4 bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TelephoneEvent<T> {
    /// Checks the payload holds a whole event.
    pub fn new_checked(buffer: T) -> Result<Self, DtmfError> {
        if buffer.as_ref().len() < EVENT_LEN {
            return Err(DtmfError::Truncated);
        }
        Ok(TelephoneEvent { buffer })
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Event code (0-15 are DTMF digits, 16 is flash).
    pub fn event(&self) -> u8 {
        self.buf()[0]
    }

    /// E bit: this packet ends the event.
    pub fn end(&self) -> bool {
        self.buf()[1] & 0x80 != 0
    }

    /// R bit (reserved; senders set 0, receivers ignore it).
    pub fn reserved(&self) -> bool {
        self.buf()[1] & 0x40 != 0
    }

    /// Volume in -dBm0 (0..=63).
    pub fn volume(&self) -> u8 {
        self.buf()[1] & 0x3f
    }

    /// Duration so far, in RTP timestamp units, from the event's timestamp.
    pub fn duration(&self) -> u16 {
        let b = self.buf();
        u16::from_be_bytes([b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TelephoneEvent<T> {
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the event code.
    pub fn set_event(&mut self, event: u8) {
        self.buf_mut()[0] = event;
    }

    /// Sets or clears the E bit.
    pub fn set_end(&mut self, end: bool) {
        let b = self.buf_mut();
        b[1] = (b[1] & 0x7f) | if end { 0x80 } else { 0 };
    }

    /// Sets the volume (low 6 bits used).
    pub fn set_volume(&mut self, volume: u8) {
        let b = self.buf_mut();
        b[1] = (b[1] & 0xc0) | (volume & 0x3f);
    }

    /// Sets the duration.
    pub fn set_duration(&mut self, duration: u16) {
        self.buf_mut()[2..4].copy_from_slice(&duration.to_be_bytes());
    }
}

/// The DTMF digit of an event code: 0-9, `*`, `#`, A-D for events 0-15; `None` otherwise
/// (flash, 16, and the non-DTMF events).
pub fn event_digit(event: u8) -> Option<char> {
    const DIGITS: &[u8; 16] = b"0123456789*#ABCD";
    DIGITS.get(usize::from(event)).map(|&d| char::from(d))
}

/// The event code of a DTMF digit (accepts lower-case a-d too).
pub fn digit_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => u8::try_from(u32::from(digit) - u32::from('0')).ok(),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => u8::try_from(u32::from(digit) - u32::from('A') + 12).ok(),
        'a'..='d' => u8::try_from(u32::from(digit) - u32::from('a') + 12).ok(),
        _ => None,
    }
}

/// Writes a telephone-event payload into `buf`; returns its length (4), or 0 if `buf` is
/// shorter than 4 bytes. The volume is limited to 6 bits.
pub fn emit_event(buf: &mut [u8], digit_event: u8, end: bool, volume: u8, duration: u16) -> usize {
    let Some(out) = buf.get_mut(..EVENT_LEN) else {
        return 0;
    };
    out[0] = digit_event;
    out[1] = if end { 0x80 } else { 0 } | (volume & 0x3f);
    out[2..4].copy_from_slice(&duration.to_be_bytes());
    EVENT_LEN
}

/// The event the detector is following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current {
    /// RTP timestamp of the event (constant over all its packets).
    ts: u32,
    event: u8,
    /// Longest duration seen, in timestamp units.
    duration: u16,
    /// Already reported (its end arrived, or it was flushed).
    reported: bool,
}

/// Turns a stream of telephone-event packets into one report per DTMF digit.
///
/// A digit is reported when its first end packet arrives; the retransmitted end packets
/// (RFC 4733 §2.5.1.4 sends three) share the event's RTP timestamp and are ignored. If all
/// end packets are lost, the digit is reported with its last duration as soon as a packet of
/// a new event (a different timestamp) arrives, or by [`DtmfDetector::flush`]. Packets with
/// a timestamp older than the current event's are late and ignored.
///
/// In the rare case that a new event's end packet itself flushes an unreported digit, the
/// flushed digit is returned and the new one follows on its next end retransmission (or at
/// the next event or flush). Durations assume the 8 kHz clock of G.711.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtmfDetector {
    current: Option<Current>,
}

impl DtmfDetector {
    /// A detector that has seen nothing.
    pub const fn new() -> Self {
        DtmfDetector { current: None }
    }

    /// Feeds one telephone-event packet: its RTP timestamp, marker bit and payload.
    /// Returns a finished digit and its duration in milliseconds.
    pub fn handle(&mut self, rtp_ts: u32, marker: bool, payload: &[u8]) -> Option<(char, u32)> {
        let ev = TelephoneEvent::new_checked(payload).ok()?;
        let (event, end, duration) = (ev.event(), ev.end(), ev.duration());
        if let Some(cur) = self.current.as_mut() {
            if rtp_ts == cur.ts && !(marker && cur.reported && !end) {
                // The same event (a marked start after a reported end with the same
                // timestamp is a sender that reuses timestamps: treated as new below).
                cur.duration = cur.duration.max(duration);
                if end && !cur.reported {
                    cur.reported = true;
                    return Self::report(cur.event, cur.duration);
                }
                return None;
            }
            // Serial-number comparison: a timestamp behind the current one is a late packet.
            #[allow(clippy::cast_possible_wrap)]
            if (rtp_ts.wrapping_sub(cur.ts) as i32) < 0 {
                return None;
            }
        }
        let flushed = self.flush();
        let reported = end && flushed.is_none();
        self.current = Some(Current {
            ts: rtp_ts,
            event,
            duration,
            reported,
        });
        if reported {
            return Self::report(event, duration);
        }
        flushed
    }

    /// Reports the current digit if it has not been reported (its end packets were lost);
    /// call at the end of a session or after a media timeout.
    pub fn flush(&mut self) -> Option<(char, u32)> {
        let cur = self.current.as_mut()?;
        if cur.reported {
            return None;
        }
        cur.reported = true;
        Self::report(cur.event, cur.duration)
    }

    fn report(event: u8, duration: u16) -> Option<(char, u32)> {
        event_digit(event).map(|d| (d, u32::from(duration) / 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let mut b = [0u8; 4];
        assert_eq!(emit_event(&mut b, event, end, 10, duration), 4);
        b
    }

    /// Feeds a full event as RFC 4733 senders do: start with marker, updates every 160
    /// ticks, three end packets; returns everything reported.
    fn send_digit(
        det: &mut DtmfDetector,
        ts: u32,
        event: u8,
        updates: u16,
        ends: usize,
    ) -> Vec<(char, u32)> {
        let mut out = Vec::new();
        for i in 0..updates {
            out.extend(det.handle(ts, i == 0, &ev(event, false, (i + 1) * 160)));
        }
        for _ in 0..ends {
            out.extend(det.handle(ts, false, &ev(event, true, (updates + 1) * 160)));
        }
        out
    }

    #[test]
    fn view_reads_and_writes_the_fields() {
        let mut b = [0x0b, 0xca, 0x03, 0x20, 0xff];
        let e = TelephoneEvent::new_checked(&b[..]).expect("valid");
        assert_eq!(e.event(), 11);
        assert!(e.end());
        assert!(e.reserved());
        assert_eq!(e.volume(), 10);
        assert_eq!(e.duration(), 800);
        let mut e = TelephoneEvent::new_checked(&mut b[..]).expect("valid");
        e.set_end(false);
        e.set_volume(0xff);
        e.set_event(5);
        e.set_duration(1);
        assert!(!e.end());
        assert_eq!(e.volume(), 63);
        assert!(e.reserved());
        assert_eq!(b[..4], [5, 0x7f, 0, 1]);
        assert_eq!(
            TelephoneEvent::new_checked(&[1, 2, 3][..]).err(),
            Some(DtmfError::Truncated)
        );
    }

    #[test]
    fn digits_map_both_ways() {
        let all: String = (0..16).filter_map(event_digit).collect();
        assert_eq!(all, "0123456789*#ABCD");
        assert_eq!(event_digit(16), None);
        assert_eq!(event_digit(255), None);
        for e in 0..16 {
            let d = event_digit(e).expect("digit");
            assert_eq!(digit_event(d), Some(e));
        }
        assert_eq!(digit_event('d'), Some(15));
        assert_eq!(digit_event('E'), None);
    }

    #[test]
    fn emit_writes_the_wire_format() {
        let mut b = [0u8; 6];
        assert_eq!(emit_event(&mut b, 1, true, 0xff, 0x0640), 4);
        assert_eq!(b, [1, 0xbf, 0x06, 0x40, 0, 0]);
        assert_eq!(emit_event(&mut b[..3], 1, true, 0, 0), 0);
    }

    #[test]
    fn triple_end_packets_report_the_digit_once() {
        let mut det = DtmfDetector::new();
        let got = send_digit(&mut det, 1000, 5, 5, 3);
        assert_eq!(got, [('5', 120)]); // 6 * 160 ticks = 960 = 120 ms
        let got = send_digit(&mut det, 3000, 11, 3, 3);
        assert_eq!(got, [('#', 80)]);
        // Late retransmission of the first digit's end is ignored.
        assert_eq!(det.handle(1000, false, &ev(5, true, 960)), None);
        assert_eq!(det.flush(), None);
    }

    #[test]
    fn lost_end_packets_are_reported_when_the_next_event_starts() {
        let mut det = DtmfDetector::new();
        assert!(send_digit(&mut det, 5000, 1, 4, 0).is_empty());
        // Next event starts: the previous digit comes out with its last duration (640).
        assert_eq!(det.handle(8000, true, &ev(2, false, 160)), Some(('1', 80)));
        assert_eq!(det.handle(8000, false, &ev(2, true, 320)), Some(('2', 40)));
        assert_eq!(det.handle(8000, false, &ev(2, true, 320)), None);
        // Lost ends of the last digit of a call come out on flush, once.
        assert!(send_digit(&mut det, 9000, 3, 2, 0).is_empty());
        assert_eq!(det.flush(), Some(('3', 40)));
        assert_eq!(det.flush(), None);
    }

    #[test]
    fn short_event_seen_only_as_end_packets_is_reported_once() {
        let mut det = DtmfDetector::new();
        // Some senders set the marker on every packet of a single-packet event.
        let reports: Vec<_> = (0..3)
            .filter_map(|_| det.handle(400, true, &ev(0, true, 400)))
            .collect();
        assert_eq!(reports, [('0', 50)]);
        let mut det = DtmfDetector::new();
        let reports: Vec<_> = (0..3)
            .filter_map(|_| det.handle(400, false, &ev(0, true, 400)))
            .collect();
        assert_eq!(reports, [('0', 50)]);
    }

    #[test]
    fn new_end_packet_that_flushes_a_lost_digit_is_reported_on_its_retransmission() {
        let mut det = DtmfDetector::new();
        assert!(send_digit(&mut det, 100, 7, 3, 0).is_empty());
        assert_eq!(det.handle(2000, false, &ev(9, true, 800)), Some(('7', 60)));
        assert_eq!(det.handle(2000, false, &ev(9, true, 800)), Some(('9', 100)));
        assert_eq!(det.handle(2000, false, &ev(9, true, 800)), None);
    }

    #[test]
    fn sender_reusing_a_timestamp_starts_a_new_event_with_the_marker() {
        let mut det = DtmfDetector::new();
        assert_eq!(send_digit(&mut det, 700, 4, 2, 3), [('4', 60)]);
        assert_eq!(send_digit(&mut det, 700, 6, 2, 3), [('6', 60)]);
    }

    #[test]
    fn flash_and_garbage_are_not_reported_and_timestamps_wrap() {
        let mut det = DtmfDetector::new();
        assert!(send_digit(&mut det, u32::MAX - 2000, 16, 2, 3).is_empty());
        assert_eq!(det.handle(20, false, &[1, 2]), None);
        assert_eq!(send_digit(&mut det, u32::MAX - 100, 8, 2, 3), [('8', 60)]);
        // After the wrap, a timestamp near zero is newer, not late.
        assert_eq!(send_digit(&mut det, 500, 9, 1, 1), [('9', 40)]);
    }
}
