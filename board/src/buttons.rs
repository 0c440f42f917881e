//! The four front-panel buttons: a pure debounce state machine and the gpiocdev reader.
//!
//! A press counts once the input has been stable for [`DEBOUNCE_MS`]. A short press is
//! reported when the button is released (so that a long press never also yields a short one);
//! a long press is reported once, while the button is still held, when it reaches
//! [`LONG_PRESS_MS`]. The release after a long press reports nothing.

use std::path::PathBuf;

use gpiocdev::line::{Bias, Value, Values};

use crate::profile::{ButtonsProfile, Pull};
use crate::Millis;

/// How long an input must hold a level before it counts.
pub const DEBOUNCE_MS: Millis = 30;
/// How long a button must be held to count as a long press.
pub const LONG_PRESS_MS: Millis = 2_000;
/// How often the linux backend should be polled for a responsive, debounced panel.
pub const POLL_INTERVAL_MS: Millis = 10;

/// A front-panel button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// Up / previous.
    Up,
    /// Down / next.
    Down,
    /// OK / enter / confirm.
    Ok,
    /// Back / cancel.
    Back,
}

impl Key {
    /// All keys, in the order of the `levels` array given to [`Debouncer::update`].
    pub const ALL: [Key; 4] = [Key::Up, Key::Down, Key::Ok, Key::Back];
}

/// A debounced key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    /// Which button.
    pub key: Key,
    /// Held for at least [`LONG_PRESS_MS`].
    pub long: bool,
}

impl KeyEvent {
    /// A short press of `key`.
    pub fn short(key: Key) -> Self {
        Self { key, long: false }
    }

    /// A long press of `key`.
    pub fn long(key: Key) -> Self {
        Self { key, long: true }
    }
}

/// Debounce state of one button.
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    /// Debounced level (true = pressed).
    stable: bool,
    /// Last sampled level.
    raw: bool,
    /// When the sampled level last changed.
    raw_since: Millis,
    /// When the current debounced press began.
    pressed_at: Millis,
    /// The current press has already been reported as long.
    long_sent: bool,
}

/// Turns sampled button levels into key events; pure, time passed in.
#[derive(Debug, Clone)]
pub struct Debouncer {
    keys: [KeyState; 4],
    debounce_ms: Millis,
    long_ms: Millis,
}

impl Default for Debouncer {
    fn default() -> Self {
        Self::new()
    }
}

impl Debouncer {
    /// A debouncer with the default timing (30 ms stable, 2 s long press), all keys released.
    pub fn new() -> Self {
        Self::with_timing(DEBOUNCE_MS, LONG_PRESS_MS)
    }

    /// A debouncer with explicit timing.
    pub fn with_timing(debounce_ms: Millis, long_ms: Millis) -> Self {
        Self {
            keys: [KeyState::default(); 4],
            debounce_ms,
            long_ms,
        }
    }

    /// Feeds one sample (`levels[i]` true = `Key::ALL[i]` pressed) taken at `now`.
    pub fn update(&mut self, now: Millis, levels: [bool; 4]) -> Vec<KeyEvent> {
        let mut events = Vec::new();
        for ((state, level), key) in self.keys.iter_mut().zip(levels).zip(Key::ALL) {
            if level != state.raw {
                state.raw = level;
                state.raw_since = now;
            }
            let stable_for = now.saturating_sub(state.raw_since);
            if state.raw != state.stable && stable_for >= self.debounce_ms {
                state.stable = state.raw;
                if state.stable {
                    state.pressed_at = state.raw_since;
                    state.long_sent = false;
                } else if !state.long_sent {
                    events.push(KeyEvent::short(key));
                }
            }
            if state.stable
                && !state.long_sent
                && now.saturating_sub(state.pressed_at) >= self.long_ms
            {
                state.long_sent = true;
                events.push(KeyEvent::long(key));
            }
        }
        events
    }
}

/// Errors of the gpiocdev button and LED lines.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The lines could not be requested (chip missing, line busy, no permission).
    #[error("cannot request GPIO lines {offsets:?} on {chip}: {source}")]
    Request {
        /// The gpiochip device.
        chip: PathBuf,
        /// The line offsets asked for.
        offsets: Vec<u32>,
        /// What gpiocdev said.
        source: gpiocdev::Error,
    },
    /// Reading or setting line values failed.
    #[error("GPIO line access on {chip} failed: {source}")]
    Access {
        /// The gpiochip device.
        chip: PathBuf,
        /// What gpiocdev said.
        source: gpiocdev::Error,
    },
}

/// The four buttons on gpiocdev input lines, polled and debounced.
#[derive(Debug)]
pub struct GpioButtons {
    request: gpiocdev::Request,
    chip: PathBuf,
    offsets: [u32; 4],
    values: Values,
    debouncer: Debouncer,
}

impl GpioButtons {
    /// Requests the profile's four lines as inputs (active-low and bias as configured).
    pub fn open(profile: &ButtonsProfile) -> Result<Self, GpioError> {
        let offsets = [profile.up, profile.down, profile.ok, profile.back];
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(profile.chip.clone())
            .with_consumer("outpost-buttons")
            .with_lines(&offsets)
            .as_input();
        if profile.active_low {
            builder.as_active_low();
        }
        match profile.pull {
            Pull::AsIs => {}
            Pull::Up => {
                builder.with_bias(Bias::PullUp);
            }
            Pull::Down => {
                builder.with_bias(Bias::PullDown);
            }
            Pull::Disabled => {
                builder.with_bias(Bias::Disabled);
            }
        }
        let request = builder.request().map_err(|source| GpioError::Request {
            chip: profile.chip.clone(),
            offsets: offsets.to_vec(),
            source,
        })?;
        Ok(Self {
            request,
            chip: profile.chip.clone(),
            offsets,
            values: Values::from_offsets(&offsets),
            debouncer: Debouncer::new(),
        })
    }

    /// Samples the lines once and returns the debounced events; call every 10 ms.
    pub fn poll(&mut self, now: Millis) -> Result<Vec<KeyEvent>, GpioError> {
        self.request
            .values(&mut self.values)
            .map_err(|source| GpioError::Access {
                chip: self.chip.clone(),
                source,
            })?;
        let mut levels = [false; 4];
        for (level, offset) in levels.iter_mut().zip(self.offsets) {
            *level = self.values.get(offset) == Some(Value::Active);
        }
        Ok(self.debouncer.update(now, levels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [bool; 4] = [false; 4];
    const OK: [bool; 4] = [false, false, true, false];
    const UP: [bool; 4] = [true, false, false, false];

    /// Feeds `levels` every 10 ms from `from` up to and including `to`.
    fn hold(d: &mut Debouncer, from: Millis, to: Millis, levels: [bool; 4]) -> Vec<KeyEvent> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.extend(d.update(t, levels));
            t += 10;
        }
        out
    }

    #[test]
    fn bounce_shorter_than_debounce_is_ignored() {
        let mut d = Debouncer::new();
        let mut events = Vec::new();
        // Contact bounce: toggles every 10 ms, never stable for 30 ms.
        for i in 0..20u64 {
            let level = if i % 2 == 0 { OK } else { NONE };
            events.extend(d.update(1_000 + i * 10, level));
        }
        events.extend(hold(&mut d, 1_200, 1_500, NONE));
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn press_counts_after_30_ms_stable_and_reports_on_release() {
        let mut d = Debouncer::new();
        assert!(hold(&mut d, 0, 100, NONE).is_empty());
        // 20 ms of press is too short.
        assert!(hold(&mut d, 110, 130, OK).is_empty());
        assert!(hold(&mut d, 140, 300, NONE).is_empty());
        // A bouncy 200 ms press: counts once, reported when released (after 30 ms stable).
        let mut events = d.update(310, OK);
        events.extend(d.update(315, NONE));
        events.extend(hold(&mut d, 320, 520, OK));
        assert!(events.is_empty(), "nothing until release: {events:?}");
        assert!(d.update(530, NONE).is_empty());
        assert!(d.update(550, NONE).is_empty());
        assert_eq!(d.update(560, NONE), vec![KeyEvent::short(Key::Ok)]);
        assert!(hold(&mut d, 570, 900, NONE).is_empty());
    }

    #[test]
    fn long_press_reported_once_while_held_and_not_again_on_release() {
        let mut d = Debouncer::new();
        let held = hold(&mut d, 1_000, 2_990, OK);
        assert!(held.is_empty(), "{held:?}");
        assert_eq!(d.update(3_000, OK), vec![KeyEvent::long(Key::Ok)]);
        assert!(hold(&mut d, 3_010, 6_000, OK).is_empty());
        assert!(hold(&mut d, 6_010, 6_500, NONE).is_empty());
    }

    #[test]
    fn keys_are_independent() {
        let mut d = Debouncer::new();
        hold(&mut d, 0, 50, UP);
        let both = [true, false, true, false];
        hold(&mut d, 60, 200, both);
        let events = hold(&mut d, 210, 300, OK);
        assert_eq!(events, vec![KeyEvent::short(Key::Up)]);
        let events = hold(&mut d, 310, 400, NONE);
        assert_eq!(events, vec![KeyEvent::short(Key::Ok)]);
    }

    #[test]
    fn clock_going_backwards_does_not_panic_or_fire() {
        let mut d = Debouncer::new();
        d.update(10_000, OK);
        assert!(d.update(5, OK).is_empty());
        assert!(d.update(0, NONE).is_empty());
    }
}
