//! An audio mixer for G.711 parties (conference, paging), pure: packets and ticks in, one
//! packet per party and tick out, time passed in.
//!
//! Each party's packets go through its own [`JitterBuffer`] (a fixed ring of
//! [`JITTER_SLOTS`] frames, reordered by sequence number, played out [`JITTER_TARGET`]
//! frames behind the newest, a lost frame concealed by the previous one at half level, then
//! silence). Every 20 ms tick takes one frame from each buffer, sums them in linear PCM,
//! and sends each party the sum of the *others* (never itself), saturated to 16 bits and
//! encoded in its own law (μ-law or A-law: the mixer transcodes by construction). A party
//! that is only a listener (paging) contributes nothing; one that is only a talker hears
//! nothing. Each party's outgoing stream is an [`OutStream`]: one SSRC, sequence and
//! timestamp continuous.
//!
//! Bounds: [`MAX_PARTIES`] per mixer. Memory is fixed when a party joins: about 3.3 KiB per
//! party (its ring of 8 linear frames, the concealment frame), plus the mixer's 640-byte sum;
//! a full mixer of 8 holds about 27 KiB. Nothing is allocated per packet or per tick.

use std::time::Instant;

use pbx_core::media::g711;
use pbx_core::media::rtp::{RtpPacket, HEADER_LEN};
use pbx_core::media::session::Codec;

use super::player::FRAME;
use super::stream::OutStream;

/// Most parties in one mixer.
pub const MAX_PARTIES: usize = 8;
/// Frames a party's jitter buffer holds (160 ms).
pub const JITTER_SLOTS: usize = 8;
/// Frames the play-out runs behind the newest frame received (60 ms).
pub const JITTER_TARGET: u16 = 3;
/// Consecutive missing frames after which a party counts as silent and its buffer refills
/// from its next packet (a phone with silence suppression resumes with a jump).
const MISSES_BEFORE_REFILL: u8 = 3;
/// One mixed packet: RTP header and a 20 ms G.711 frame.
pub const PACKET_LEN: usize = HEADER_LEN + FRAME;

/// Why a party could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MixerError {
    /// The mixer holds [`MAX_PARTIES`] already.
    #[error("the mixer is full ({MAX_PARTIES} parties)")]
    Full,
    /// Only G.711 (PCMU, PCMA) is mixed.
    #[error("only G.711 can be mixed")]
    Codec,
    /// A party with that id is in the mixer.
    #[error("party {0} is already in the mixer")]
    Duplicate(u32),
}

/// What a party does in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Talks and hears the others (conference).
    Both,
    /// Talks only (a paging caller: hears nothing back).
    Talker,
    /// Hears only (a paged phone: what it sends is not mixed).
    Listener,
}

/// A frame in the jitter buffer's ring.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: Option<u16>,
    pcm: [i16; FRAME],
}

/// Reorders one party's frames by sequence number and plays them out at a fixed delay.
#[derive(Debug)]
pub struct JitterBuffer {
    slots: [Slot; JITTER_SLOTS],
    /// The sequence number of the next frame to play out; `None` while (re)filling.
    next: Option<u16>,
    /// Newest sequence number received since the last (re)fill.
    newest: Option<u16>,
    /// The last frame played, for concealment.
    last: [i16; FRAME],
    /// Consecutive frames missing at play-out.
    misses: u8,
    /// Frames received, concealed, dropped as too late.
    pub received: u64,
    pub concealed: u64,
    pub late: u64,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        JitterBuffer {
            slots: [Slot {
                seq: None,
                pcm: [0; FRAME],
            }; JITTER_SLOTS],
            next: None,
            newest: None,
            last: [0; FRAME],
            misses: MISSES_BEFORE_REFILL,
            received: 0,
            concealed: 0,
            late: 0,
        }
    }
}

/// Signed distance from `b` to `a` in sequence space.
#[allow(clippy::cast_possible_wrap)]
fn seq_diff(a: u16, b: u16) -> i16 {
    a.wrapping_sub(b) as i16
}

impl JitterBuffer {
    /// Adds a frame of `seq` (decoded from `payload`, `alaw` or μ-law; a short payload is
    /// padded with silence, a long one cut).
    pub fn push(&mut self, seq: u16, payload: &[u8], alaw: bool) {
        if let Some(next) = self.next {
            let ahead = seq_diff(seq, next);
            if ahead < 0 {
                self.late += 1;
                return;
            }
            if usize::try_from(ahead).is_ok_and(|a| a >= JITTER_SLOTS) {
                // Far ahead (a jump): start again from this frame.
                self.refill();
            }
        }
        self.received += 1;
        if self.newest.is_none_or(|n| seq_diff(seq, n) > 0) {
            self.newest = Some(seq);
        }
        let slot = &mut self.slots[usize::from(seq) % JITTER_SLOTS];
        slot.seq = Some(seq);
        let decode = if alaw {
            g711::alaw_to_linear
        } else {
            g711::ulaw_to_linear
        };
        for (pcm, &code) in slot.pcm.iter_mut().zip(payload) {
            *pcm = decode(code);
        }
        if payload.len() < FRAME {
            slot.pcm[payload.len()..].fill(0);
        }
    }

    fn refill(&mut self) {
        self.next = None;
        self.newest = None;
        for slot in &mut self.slots {
            slot.seq = None;
        }
    }

    /// The frame to play this tick, added into `sum` (and copied into `own` for the
    /// party's own subtraction); returns whether the party contributed anything.
    pub fn pop(&mut self, own: &mut [i16; FRAME]) -> bool {
        if self.next.is_none() {
            // Filling: play out once the newest frame is the target's depth ahead of the
            // oldest held one, or as soon as anything is held after a silence (the delay
            // then builds up from the frames that follow).
            let Some(newest) = self.newest else {
                return false;
            };
            let oldest = self
                .slots
                .iter()
                .filter_map(|s| s.seq)
                .min_by_key(|&s| seq_diff(s, newest))
                .unwrap_or(newest);
            if seq_diff(newest, oldest) + 1 < JITTER_TARGET as i16 {
                return false;
            }
            self.next = Some(oldest);
            self.misses = 0;
        }
        let Some(next) = self.next else {
            return false;
        };
        self.next = Some(next.wrapping_add(1));
        let slot = &mut self.slots[usize::from(next) % JITTER_SLOTS];
        if slot.seq == Some(next) {
            slot.seq = None;
            self.misses = 0;
            *own = slot.pcm;
            self.last = slot.pcm;
            return true;
        }
        self.misses += 1;
        if self.misses >= MISSES_BEFORE_REFILL {
            self.refill();
            return false;
        }
        // Concealment: the previous frame again at half level, then silence.
        self.concealed += 1;
        if self.misses == 1 {
            for (o, l) in own.iter_mut().zip(self.last.iter_mut()) {
                *l /= 2;
                *o = *l;
            }
            return true;
        }
        false
    }
}

/// One party of a mixer.
#[derive(Debug)]
struct Party {
    id: u32,
    codec: Codec,
    pt: u8,
    role: Role,
    jitter: JitterBuffer,
    /// This tick's own frame (for the subtraction) and whether it has one.
    own: [i16; FRAME],
    spoke: bool,
    out: OutStream,
}

/// Mixes G.711 parties: see the module doc.
#[derive(Debug, Default)]
pub struct Mixer {
    parties: Vec<Party>,
    sum: Vec<i32>,
    packet: Vec<u8>,
}

impl Mixer {
    /// An empty mixer, its memory for [`MAX_PARTIES`] reserved.
    pub fn new() -> Self {
        Mixer {
            parties: Vec::with_capacity(MAX_PARTIES),
            sum: vec![0; FRAME],
            packet: vec![0; PACKET_LEN],
        }
    }

    /// Adds party `id` (its codec and payload type, its role), whose outgoing stream starts
    /// at `out` (continue a leg's stream by passing its [`OutStream`]).
    pub fn join(
        &mut self,
        id: u32,
        codec: Codec,
        pt: u8,
        role: Role,
        out: OutStream,
    ) -> Result<(), MixerError> {
        if !matches!(codec, Codec::Pcmu | Codec::Pcma) {
            return Err(MixerError::Codec);
        }
        if self.parties.iter().any(|p| p.id == id) {
            return Err(MixerError::Duplicate(id));
        }
        if self.parties.len() >= MAX_PARTIES {
            return Err(MixerError::Full);
        }
        self.parties.push(Party {
            id,
            codec,
            pt,
            role,
            jitter: JitterBuffer::default(),
            own: [0; FRAME],
            spoke: false,
            out,
        });
        Ok(())
    }

    /// Removes party `id`; returns its outgoing stream (to continue it elsewhere).
    pub fn leave(&mut self, id: u32) -> Option<OutStream> {
        let i = self.parties.iter().position(|p| p.id == id)?;
        Some(self.parties.swap_remove(i).out)
    }

    /// The bytes the mixer holds (its parties reserved up to [`MAX_PARTIES`]).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.parties.capacity() * std::mem::size_of::<Party>()
            + self.sum.capacity() * std::mem::size_of::<i32>()
            + self.packet.capacity()
    }

    /// Parties in the mixer.
    pub fn len(&self) -> usize {
        self.parties.len()
    }

    /// Whether no party is left.
    pub fn is_empty(&self) -> bool {
        self.parties.is_empty()
    }

    /// The jitter buffer counters of party `id`.
    pub fn jitter(&self, id: u32) -> Option<&JitterBuffer> {
        self.parties.iter().find(|p| p.id == id).map(|p| &p.jitter)
    }

    /// A packet from party `id` (checked RTP); its audio payload type only, others ignored
    /// (a listener's audio is ignored too).
    pub fn push<T: AsRef<[u8]>>(&mut self, id: u32, packet: &RtpPacket<T>) {
        let Some(party) = self.parties.iter_mut().find(|p| p.id == id) else {
            return;
        };
        if party.role == Role::Listener || packet.payload_type() != party.pt {
            return;
        }
        party.jitter.push(
            packet.sequence_number(),
            packet.payload(),
            party.codec == Codec::Pcma,
        );
    }

    /// One 20 ms tick due at `due`: hands `send(party, packet)` each party's mixed packet
    /// (talkers get none).
    pub fn tick(&mut self, due: Instant, send: &mut impl FnMut(u32, &[u8])) {
        self.sum.fill(0);
        for party in &mut self.parties {
            party.spoke = party.jitter.pop(&mut party.own);
            if party.spoke {
                for (s, &o) in self.sum.iter_mut().zip(party.own.iter()) {
                    *s += i32::from(o);
                }
            }
        }
        let mut frame = [0u8; FRAME];
        for party in &mut self.parties {
            if party.role == Role::Talker {
                continue;
            }
            let encode = if party.codec == Codec::Pcma {
                g711::linear_to_alaw
            } else {
                g711::linear_to_ulaw
            };
            for (i, code) in frame.iter_mut().enumerate() {
                let own = if party.spoke {
                    i32::from(party.own[i])
                } else {
                    0
                };
                let mixed = (self.sum[i] - own).clamp(i32::from(i16::MIN), i32::from(i16::MAX));
                #[allow(clippy::cast_possible_truncation)]
                let sample = mixed as i16;
                *code = encode(sample);
            }
            let header = party.out.next(due, false, party.pt);
            if let Ok(len) = header.emit(&mut self.packet, &frame) {
                send(party.id, &self.packet[..len]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pbx_core::media::rtp::RtpRepr;

    use super::*;

    const TICK: Duration = Duration::from_millis(20);

    /// A 20 ms packet of a constant linear `level` in `codec`.
    fn packet(codec: Codec, seq: u16, level: i16) -> Vec<u8> {
        let code = match codec {
            Codec::Pcma => g711::linear_to_alaw(level),
            _ => g711::linear_to_ulaw(level),
        };
        let pt = if codec == Codec::Pcma { 8 } else { 0 };
        let mut buf = vec![0u8; PACKET_LEN];
        RtpRepr {
            marker: false,
            payload_type: pt,
            sequence_number: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 9,
        }
        .emit(&mut buf, &[code; FRAME])
        .expect("fits");
        buf
    }

    /// Each party's first sample this tick, decoded (`None`: no packet).
    fn tick(mixer: &mut Mixer, due: Instant, codecs: &[(u32, Codec)]) -> Vec<(u32, Option<i16>)> {
        let mut heard = Vec::new();
        mixer.tick(due, &mut |id, bytes| {
            let view = RtpPacket::new_checked(bytes).expect("RTP");
            let alaw = codecs.iter().any(|&(p, c)| p == id && c == Codec::Pcma);
            let code = view.payload()[0];
            let level = if alaw {
                g711::alaw_to_linear(code)
            } else {
                g711::ulaw_to_linear(code)
            };
            heard.push((id, level));
        });
        codecs
            .iter()
            .map(|&(id, _)| (id, heard.iter().find(|(p, _)| *p == id).map(|&(_, l)| l)))
            .collect()
    }

    fn feed(mixer: &mut Mixer, id: u32, codec: Codec, seq: u16, level: i16) {
        let bytes = packet(codec, seq, level);
        mixer.push(id, &RtpPacket::new_checked(&bytes[..]).expect("RTP"));
    }

    fn near(level: Option<i16>, want: i16) -> bool {
        level.is_some_and(|l| {
            (i32::from(l) - i32::from(want)).abs() <= i32::from(want.unsigned_abs() / 16 + 8)
        })
    }

    #[test]
    fn each_party_hears_the_sum_of_the_others_in_its_own_law() {
        let t0 = Instant::now();
        let mut mixer = Mixer::new();
        let parties = [(1, Codec::Pcmu), (2, Codec::Pcma), (3, Codec::Pcmu)];
        for (id, codec) in parties {
            let pt = if codec == Codec::Pcma { 8 } else { 0 };
            mixer
                .join(id, codec, pt, Role::Both, OutStream::new(id, 0, 0))
                .expect("joins");
        }
        // Three frames each fill the buffers to the 60 ms target.
        for seq in 0..3 {
            feed(&mut mixer, 1, Codec::Pcmu, seq, 1000);
            feed(&mut mixer, 2, Codec::Pcma, seq, 2000);
            feed(&mut mixer, 3, Codec::Pcmu, seq, -500);
        }
        let heard = tick(&mut mixer, t0, &parties);
        assert!(near(heard[0].1, 1500), "1 hears 2 + 3: {heard:?}");
        assert!(near(heard[1].1, 500), "2 hears 1 + 3: {heard:?}");
        assert!(near(heard[2].1, 3000), "3 hears 1 + 2: {heard:?}");
    }

    #[test]
    fn loud_parties_saturate_instead_of_wrapping() {
        let t0 = Instant::now();
        let mut mixer = Mixer::new();
        let parties = [(1, Codec::Pcmu), (2, Codec::Pcmu), (3, Codec::Pcmu)];
        for (id, _) in parties {
            mixer
                .join(id, Codec::Pcmu, 0, Role::Both, OutStream::new(id, 0, 0))
                .expect("joins");
        }
        for seq in 0..3 {
            feed(&mut mixer, 1, Codec::Pcmu, seq, 30_000);
            feed(&mut mixer, 2, Codec::Pcmu, seq, 30_000);
        }
        let heard = tick(&mut mixer, t0, &parties);
        let top = g711::ulaw_to_linear(g711::linear_to_ulaw(i16::MAX));
        assert_eq!(heard[2].1, Some(top), "clipped at full scale: {heard:?}");
    }

    #[test]
    fn the_jitter_buffer_reorders_conceals_one_loss_and_drops_late_frames() {
        let mut jb = JitterBuffer::default();
        let mut own = [0i16; FRAME];
        let ulaw = |level: i16| [g711::linear_to_ulaw(level); FRAME];
        jb.push(11, &ulaw(1100), false);
        jb.push(10, &ulaw(1000), false);
        assert!(!jb.pop(&mut own), "still filling (2 of 3 frames)");
        jb.push(12, &ulaw(1200), false);
        let mut levels = Vec::new();
        for _ in 0..3 {
            assert!(jb.pop(&mut own));
            levels.push(own[0]);
        }
        assert!(
            levels[0] < levels[1] && levels[1] < levels[2],
            "in order: {levels:?}"
        );
        // 13 is lost, 14 arrives: 13 is the previous frame at half level.
        jb.push(14, &ulaw(1400), false);
        assert!(jb.pop(&mut own));
        assert_eq!(own[0], levels[2] / 2, "concealed");
        assert!(jb.pop(&mut own));
        assert!(own[0] > levels[2], "14 played");
        jb.push(13, &ulaw(1300), false);
        assert_eq!((jb.late, jb.concealed), (1, 1));
        // Silence suppression: three misses, then the next talkspurt refills the buffer.
        for _ in 0..3 {
            jb.pop(&mut own);
        }
        for seq in 500..503 {
            jb.push(seq, &ulaw(-800), false);
        }
        assert!(jb.pop(&mut own), "plays again after a jump");
        assert!(own[0] < 0);
    }

    #[test]
    fn a_paging_talker_is_heard_by_listeners_who_are_not_heard() {
        let t0 = Instant::now();
        let mut mixer = Mixer::new();
        let parties = [(1, Codec::Pcmu), (2, Codec::Pcmu), (3, Codec::Pcma)];
        mixer
            .join(1, Codec::Pcmu, 0, Role::Talker, OutStream::new(1, 0, 0))
            .expect("joins");
        mixer
            .join(2, Codec::Pcmu, 0, Role::Listener, OutStream::new(2, 0, 0))
            .expect("joins");
        mixer
            .join(3, Codec::Pcma, 8, Role::Listener, OutStream::new(3, 0, 0))
            .expect("joins");
        for seq in 0..3 {
            feed(&mut mixer, 1, Codec::Pcmu, seq, 4000);
            feed(&mut mixer, 2, Codec::Pcmu, seq, 9000);
        }
        let heard = tick(&mut mixer, t0, &parties);
        assert_eq!(heard[0].1, None, "the talker gets nothing back");
        assert!(
            near(heard[1].1, 4000) && near(heard[2].1, 4000),
            "{heard:?}"
        );
    }

    #[test]
    fn the_outgoing_streams_are_continuous_and_the_mixer_is_bounded() {
        let t0 = Instant::now();
        let mut mixer = Mixer::new();
        for id in 0..u32::try_from(MAX_PARTIES).expect("small") {
            mixer
                .join(id, Codec::Pcmu, 0, Role::Both, OutStream::new(id, 0, 0))
                .expect("room");
        }
        assert_eq!(
            mixer.join(99, Codec::Pcmu, 0, Role::Both, OutStream::new(9, 0, 0)),
            Err(MixerError::Full)
        );
        let mut seqs = Vec::new();
        for n in 0..3u32 {
            mixer.tick(t0 + TICK * n, &mut |id, bytes| {
                if id == 0 {
                    let view = RtpPacket::new_checked(bytes).expect("RTP");
                    seqs.push((view.sequence_number(), view.timestamp()));
                }
            });
        }
        assert_eq!(seqs, [(0, 0), (1, 160), (2, 320)]);
        assert!(
            mixer.memory_bytes() <= 28 * 1024,
            "{}",
            mixer.memory_bytes()
        );
        assert!(mixer.leave(3).is_some());
        assert_eq!(
            mixer.join(1, Codec::Pcmu, 0, Role::Both, OutStream::new(1, 0, 0)),
            Err(MixerError::Duplicate(1))
        );
        assert_eq!(
            mixer.join(50, Codec::Other, 9, Role::Both, OutStream::new(1, 0, 0)),
            Err(MixerError::Codec)
        );
    }
}
