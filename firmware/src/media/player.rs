//! Playback and recording state of one leg, without sockets: the relay thread drives these.
//!
//! A [`Player`] cuts a sequence of µ-law clips into 20 ms frames on a fixed schedule
//! (frame *n* is due at start + *n* × 20 ms, so a late wake-up sends every frame it owes and
//! the stream never drifts); [`super::stream::OutStream`] numbers the packets. A [`Recorder`]
//! places what a phone sends by RTP timestamp, so lost packets become silence.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbx_core::media::g711;

/// Samples (and µ-law bytes) in one 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// Time between two frames.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// µ-law code of silence.
pub const ULAW_SILENCE: u8 = 0xff;
/// Frames a player sends at once after a stall; owing more, it skips ahead (a new talkspurt).
pub const MAX_CATCH_UP: u32 = 10;
/// Longest recording, whatever `max_ms` asks: 10 minutes, 4.8 MB of µ-law in memory.
pub const MAX_RECORD_MS: u32 = 10 * 60 * 1000;
/// Samples per millisecond.
const PER_MS: u32 = 8;
/// A packet up to this many samples (1 s) before the start is late; earlier is a restart.
const LATE_LIMIT: i32 = 8000;
/// How far (in samples, 10 s) a packet may lie ahead of the wall clock and still count as
/// following a pause; further is a timestamp discontinuity.
const MAX_AHEAD: usize = 80_000;

/// Plays a sequence of µ-law clips as 20 ms frames on a fixed schedule.
#[derive(Debug)]
pub struct Player {
    clips: Vec<Arc<[u8]>>,
    clip: usize,
    pos: usize,
    repeat: bool,
    done: bool,
    start: Instant,
    sent: u32,
    /// The schedule was reset after a stall: the next frame starts a new talkspurt.
    resynced: bool,
}

impl Player {
    /// A player whose first frame is due at `now`; `None` if the clips hold no audio.
    pub fn new(clips: Vec<Arc<[u8]>>, repeat: bool, now: Instant) -> Option<Self> {
        let clips: Vec<Arc<[u8]>> = clips.into_iter().filter(|c| !c.is_empty()).collect();
        if clips.is_empty() {
            return None;
        }
        Some(Player {
            clips,
            clip: 0,
            pos: 0,
            repeat,
            done: false,
            start: now,
            sent: 0,
            resynced: false,
        })
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Instant {
        self.start + FRAME_INTERVAL * self.sent
    }

    /// Whether a non-repeating sequence has produced its last frame.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// How many frames are due at `now`; after a stall of more than [`MAX_CATCH_UP`] frames
    /// the schedule restarts so that only that many are owed.
    pub fn frames_due(&mut self, now: Instant) -> u32 {
        if self.done || now < self.next_due() {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.start);
        let owed_total = u32::try_from(elapsed.as_micros() / FRAME_INTERVAL.as_micros())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let owed = owed_total.saturating_sub(self.sent);
        if owed > MAX_CATCH_UP {
            // Skip the stall rather than burst it: frame `sent` is due now again.
            self.start = now
                .checked_sub(FRAME_INTERVAL * (MAX_CATCH_UP - 1 + self.sent))
                .unwrap_or(now);
            self.resynced = true;
            return MAX_CATCH_UP;
        }
        owed
    }

    /// Fills `frame` with the next 20 ms (the last one padded with silence) and reports
    /// whether a stall reset the schedule just before it. `None` once done.
    pub fn next_frame(&mut self, frame: &mut [u8; FRAME]) -> Option<bool> {
        if self.done {
            return None;
        }
        let mut filled = 0;
        while filled < FRAME {
            let Some(clip) = self.clips.get(self.clip) else {
                if self.repeat {
                    self.clip = 0;
                    self.pos = 0;
                    continue;
                }
                frame[filled..].fill(ULAW_SILENCE);
                break;
            };
            let take = (FRAME - filled).min(clip.len() - self.pos);
            frame[filled..filled + take].copy_from_slice(&clip[self.pos..self.pos + take]);
            filled += take;
            self.pos += take;
            if self.pos == clip.len() {
                self.clip += 1;
                self.pos = 0;
            }
        }
        if !self.repeat && self.clip >= self.clips.len() {
            self.done = true;
        }
        self.sent = self.sent.saturating_add(1);
        Some(std::mem::take(&mut self.resynced))
    }
}

/// Collects what one phone sends as µ-law samples, placed by RTP timestamp.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    max_samples: usize,
    samples: Vec<u8>,
    /// SSRC and RTP timestamp of sample 0 of the current source.
    base: Option<(u32, u32)>,
    started: Instant,
    max_ms: u32,
    /// The recording starts at `started`: silence until the first packet.
    pad_start: bool,
}

impl Recorder {
    /// A recording into `path` of at most `max_ms` (capped at [`MAX_RECORD_MS`]).
    pub fn new(path: PathBuf, max_ms: u32, now: Instant) -> Self {
        let max_ms = max_ms.min(MAX_RECORD_MS);
        Recorder {
            path,
            max_samples: (max_ms * PER_MS) as usize,
            samples: Vec::new(),
            base: None,
            started: now,
            max_ms,
            pad_start: false,
        }
    }

    /// The same recording, starting when it was made rather than at the phone's first
    /// packet (silence until then): recordings of two legs made together line up.
    #[must_use]
    pub fn from_start(mut self) -> Self {
        self.pad_start = true;
        self
    }

    /// Adds one packet's G.711 payload (A-law when `alaw`) at RTP timestamp `ts`; gaps
    /// before it become silence, a late packet fills its gap. Returns whether it is full.
    pub fn push(&mut self, ssrc: u32, ts: u32, payload: &[u8], alaw: bool, now: Instant) -> bool {
        if self.is_full() {
            return true;
        }
        if self.base.is_none() && self.pad_start {
            let lead = self.wall_samples(now).min(self.max_samples);
            self.samples.resize(lead, ULAW_SILENCE);
            self.rebase(ssrc, ts);
        }
        let (base_ssrc, base_ts) = *self.base.get_or_insert((ssrc, ts));
        let offset = if base_ssrc == ssrc {
            // Signed: a little before the base is a late packet, far before is a restart.
            #[allow(clippy::cast_possible_wrap)]
            let delta = ts.wrapping_sub(base_ts) as i32;
            let plausible = self.wall_samples(now).saturating_add(MAX_AHEAD);
            if delta < -LATE_LIMIT {
                self.rebase(ssrc, ts)
            } else if delta < 0 {
                return false;
            } else if delta.unsigned_abs() as usize > plausible {
                // Far ahead of real time: a discontinuity, not silence. Continue at the end.
                self.rebase(ssrc, ts)
            } else {
                delta.unsigned_abs() as usize
            }
        } else {
            // A new source (the phone restarted its stream): continue at the end.
            self.rebase(ssrc, ts)
        };
        if offset >= self.max_samples {
            self.samples.resize(self.max_samples, ULAW_SILENCE);
            return true;
        }
        let end = (offset + payload.len()).min(self.max_samples);
        if end > self.samples.len() {
            let wanted = end.max(self.samples.len() * 2).min(self.max_samples);
            self.samples.reserve_exact(wanted - self.samples.len());
            self.samples.resize(end, ULAW_SILENCE);
        }
        let target = &mut self.samples[offset..end];
        let payload = &payload[..target.len()];
        if alaw {
            for (t, &a) in target.iter_mut().zip(payload) {
                *t = g711::alaw_to_ulaw(a);
            }
        } else {
            target.copy_from_slice(payload);
        }
        self.is_full()
    }

    /// Samples of wall time since the recording started.
    fn wall_samples(&self, now: Instant) -> usize {
        let ms = now.saturating_duration_since(self.started).as_millis();
        usize::try_from(ms.saturating_mul(u128::from(PER_MS))).unwrap_or(usize::MAX)
    }

    /// Sets the base so that `ts` of `ssrc` lands at the current end; returns that offset.
    fn rebase(&mut self, ssrc: u32, ts: u32) -> usize {
        let end = self.samples.len();
        let end_ts = u32::try_from(end).unwrap_or(u32::MAX);
        self.base = Some((ssrc, ts.wrapping_sub(end_ts)));
        end
    }

    /// Whether `max_ms` of audio has been collected.
    pub fn is_full(&self) -> bool {
        self.samples.len() >= self.max_samples
    }

    /// Whether the recording has run for `max_ms` of wall time (plus a second of grace),
    /// for a phone that stops sending (silence suppression) before it is full.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started)
            >= Duration::from_millis(u64::from(self.max_ms)) + Duration::from_secs(1)
    }

    /// Length of the audio collected so far.
    pub fn duration_ms(&self) -> u32 {
        u32::try_from(self.samples.len()).unwrap_or(u32::MAX) / PER_MS
    }

    /// The target path and the µ-law samples.
    pub fn finish(self) -> (PathBuf, Vec<u8>) {
        (self.path, self.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(len: usize, value: u8) -> Arc<[u8]> {
        Arc::from(vec![value; len])
    }

    #[test]
    fn clips_are_cut_into_frames_across_clip_boundaries_and_padded_at_the_end() {
        let now = Instant::now();
        let mut player =
            Player::new(vec![clip(100, 1), clip(250, 2)], false, now).expect("has audio");
        let mut frame = [0u8; FRAME];
        assert_eq!(player.next_frame(&mut frame), Some(false));
        assert_eq!(
            (&frame[..100], &frame[100..]),
            (&[1u8; 100][..], &[2u8; 60][..])
        );
        assert_eq!(player.next_frame(&mut frame), Some(false));
        assert_eq!(frame, [2u8; FRAME]);
        assert!(!player.is_done());
        assert_eq!(player.next_frame(&mut frame), Some(false));
        assert_eq!(
            (&frame[..30], &frame[30..]),
            (&[2u8; 30][..], &[ULAW_SILENCE; 130][..])
        );
        assert!(player.is_done());
        assert_eq!(player.next_frame(&mut frame), None);
    }

    #[test]
    fn a_repeating_player_loops_seamlessly() {
        let now = Instant::now();
        let mut player = Player::new(vec![clip(0, 9), clip(100, 3)], true, now).expect("audio");
        let mut frame = [0u8; FRAME];
        for _ in 0..10 {
            assert_eq!(player.next_frame(&mut frame), Some(false));
            assert_eq!(frame, [3u8; FRAME], "no padding between loops");
        }
        assert!(!player.is_done());
        assert!(Player::new(vec![clip(0, 1)], true, now).is_none());
    }

    #[test]
    fn frames_fall_due_every_20_ms_and_a_long_stall_is_skipped() {
        let start = Instant::now();
        let mut player = Player::new(vec![clip(8000, 1)], false, start).expect("audio");
        let mut frame = [0u8; FRAME];
        assert_eq!(player.frames_due(start), 1);
        player.next_frame(&mut frame);
        assert_eq!(player.frames_due(start + Duration::from_millis(19)), 0);
        assert_eq!(player.next_due(), start + FRAME_INTERVAL);
        // 65 ms late: frames 1, 2 and 3 are owed (due at 20, 40, 60 ms).
        assert_eq!(player.frames_due(start + Duration::from_millis(65)), 3);
        for _ in 0..3 {
            assert_eq!(player.next_frame(&mut frame), Some(false));
        }
        assert_eq!(player.next_due(), start + Duration::from_millis(80));

        let late = start + Duration::from_secs(5);
        assert_eq!(player.frames_due(late), MAX_CATCH_UP);
        assert_eq!(player.next_frame(&mut frame), Some(true), "new talkspurt");
        for _ in 1..MAX_CATCH_UP {
            assert_eq!(player.next_frame(&mut frame), Some(false));
        }
        assert_eq!(player.frames_due(late), 0, "caught up");
    }

    #[test]
    fn recording_places_packets_by_timestamp_and_fills_gaps_with_silence() {
        let now = Instant::now();
        let mut rec = Recorder::new(PathBuf::from("/x.wav"), 60_000, now);
        assert!(!rec.push(7, 5000, &[1; 160], false, now));
        // 5160 lost; 5320 arrives, then the late 5160 fills its gap.
        assert!(!rec.push(7, 5320, &[3; 160], false, now));
        assert_eq!(rec.duration_ms(), 60);
        assert_eq!(
            &rec.samples[160..320],
            &[ULAW_SILENCE; 160][..],
            "gap is silence"
        );
        rec.push(7, 5160, &[2; 160], false, now);
        rec.push(7, 4000, &[9; 160], false, now); // before the start: dropped
        let (_, samples) = rec.finish();
        assert_eq!(samples.len(), 480);
        assert_eq!(&samples[160..320], &[2u8; 160][..]);
        assert_eq!(samples[479], 3);
    }

    #[test]
    fn a_recording_from_its_start_has_silence_until_the_first_packet() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(PathBuf::from("/a.wav"), 60_000, t0).from_start();
        // The phone's first packet comes 100 ms after the recording started.
        let t = t0 + Duration::from_millis(100);
        rec.push(9, 70_000, &[5; 160], false, t);
        rec.push(9, 70_160, &[6; 160], false, t + FRAME_INTERVAL);
        let (_, samples) = rec.finish();
        assert_eq!(samples.len(), 800 + 320);
        assert!(samples[..800].iter().all(|&s| s == ULAW_SILENCE));
        assert_eq!((samples[800], samples[1119]), (5, 6));
    }

    #[test]
    fn recording_stops_at_max_and_converts_alaw() {
        let now = Instant::now();
        let mut rec = Recorder::new(PathBuf::from("/x.wav"), 50, now); // 400 samples
        assert!(!rec.push(1, 0, &[0xd5; 160], true, now));
        assert!(!rec.push(1, 160, &[0xd5; 160], true, now));
        assert!(rec.push(1, 320, &[0xd5; 160], true, now), "full");
        let (_, samples) = rec.finish();
        assert_eq!(samples, vec![g711::alaw_to_ulaw(0xd5); 400]);

        // A pause longer than what is left fills to the cap at once.
        let mut rec = Recorder::new(PathBuf::from("/x.wav"), 1000, now);
        rec.push(1, 0, &[1; 160], false, now);
        assert!(rec.push(1, 24_000, &[1; 160], false, now));
        assert_eq!(rec.duration_ms(), 1000);

        // A timestamp jump far beyond real time (or backwards) continues at the end.
        let mut rec = Recorder::new(PathBuf::from("/x.wav"), 60_000, now);
        rec.push(1, 0, &[1; 160], false, now);
        assert!(!rec.push(1, 2_000_000_000, &[2; 160], false, now));
        assert!(!rec.push(1, 4_000_000_000, &[3; 160], false, now));
        assert_eq!(rec.duration_ms(), 60);
        assert!(!rec.push(1, 4_000_000_160, &[4; 160], false, now));
        assert_eq!(rec.duration_ms(), 80);

        // A new SSRC continues at the end.
        let mut rec = Recorder::new(PathBuf::from("/x.wav"), 1000, now);
        rec.push(1, 0, &[1; 160], false, now);
        rec.push(2, 777_777, &[2; 160], false, now);
        assert_eq!(rec.duration_ms(), 40);
        assert!(Recorder::new(PathBuf::new(), u32::MAX, now).max_samples <= 4_800_000);
        assert!(rec.expired(now + Duration::from_secs(3)));
        assert!(!rec.expired(now + Duration::from_millis(1500)));
    }
}
