//! Fixed-size counters: a sliding window of event counts and a small distinct-value window.
//!
//! Per-source state must stay small and allocation-free per packet even with 100,000 sources
//! in the table, so a window is 8 time slots of `window / 8` each (24 bytes), not a log of
//! timestamps. The count covers the current slot and the 7 before it: an event is always
//! counted for at least 7/8 of the window after it happened and never for longer than the
//! window. Bursts (the attacks the rules exist for) are counted exactly.

use crate::Millis;

/// Number of time slots in a [`Window`].
const SLOTS: usize = 8;

/// Event counts over a sliding window whose length is passed to every call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    /// Index (`now / slot_len`) of the newest slot that was written.
    epoch: u64,
    counts: [u16; SLOTS],
}

impl Window {
    /// Records `n` events at `now` and returns the count within the window afterwards.
    pub(crate) fn add(&mut self, now: Millis, window_ms: u64, n: u16) -> u32 {
        let idx = now / slot_len(window_ms);
        self.advance(idx);
        let slot = &mut self.counts[slot_of(self.epoch)];
        *slot = slot.saturating_add(n);
        self.sum()
    }

    /// The count within the window at `now`, without recording anything.
    #[cfg(test)]
    pub(crate) fn count(&self, now: Millis, window_ms: u64) -> u32 {
        let idx = now / slot_len(window_ms);
        let age = idx.saturating_sub(self.epoch);
        if age >= SLOTS as u64 {
            return 0;
        }
        // Slots older than `idx - 7` have dropped out; they are the `age` oldest ones.
        (0..SLOTS as u64 - age)
            .map(|back| u32::from(self.counts[slot_of(self.epoch.wrapping_sub(back))]))
            .sum()
    }

    fn advance(&mut self, idx: u64) {
        // A clock that steps back lands in the newest slot: never un-count events.
        if idx <= self.epoch {
            return;
        }
        let gap = idx - self.epoch;
        if gap >= SLOTS as u64 {
            self.counts = [0; SLOTS];
        } else {
            for i in 1..=gap {
                self.counts[slot_of(self.epoch + i)] = 0;
            }
        }
        self.epoch = idx;
    }

    fn sum(&self) -> u32 {
        self.counts.iter().map(|&c| u32::from(c)).sum()
    }
}

fn slot_len(window_ms: u64) -> u64 {
    (window_ms / SLOTS as u64).max(1)
}

fn slot_of(idx: u64) -> usize {
    // The remainder is below SLOTS (8), so it always fits.
    usize::try_from(idx % SLOTS as u64).unwrap_or(0)
}

/// Distinct values (by hash) seen within a sliding window, holding at most `cap` of them.
///
/// Used for enumeration: the rule fires when more than `limit` distinct users were seen,
/// so `cap = limit + 1` entries are enough to decide exactly.
#[derive(Debug, Clone)]
pub(crate) struct Distinct {
    seen: Vec<(u64, Millis)>,
    cap: usize,
}

impl Distinct {
    /// An empty set that never holds more than `cap` entries (allocated once, here).
    pub(crate) fn new(cap: usize) -> Self {
        Distinct {
            seen: Vec::with_capacity(cap),
            cap,
        }
    }

    /// Records `hash` at `now` and returns how many distinct values were seen within the window.
    pub(crate) fn add(&mut self, now: Millis, window_ms: u64, hash: u64) -> usize {
        self.seen
            .retain(|&(_, at)| now < at.saturating_add(window_ms));
        if let Some(entry) = self.seen.iter_mut().find(|(h, _)| *h == hash) {
            entry.1 = now;
        } else if self.seen.len() < self.cap {
            self.seen.push((hash, now));
        }
        self.seen.len()
    }
}

/// FNV-1a, 64 bit: a stable, allocation-free key for user names and number prefixes.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn bursts_are_counted_exactly() {
        let mut w = Window::default();
        for i in 1..=16u32 {
            assert_eq!(w.add(10_000, 2_000, 1), i);
        }
        assert_eq!(w.count(10_000, 2_000), 16);
    }

    #[test]
    fn events_leave_the_window() {
        let mut w = Window::default();
        w.add(0, 8_000, 3);
        // Within 7/8 of the window: still counted.
        assert_eq!(w.count(6_999, 8_000), 3);
        // After the whole window: gone.
        assert_eq!(w.count(8_000, 8_000), 0);
        assert_eq!(w.add(8_000, 8_000, 1), 1);
        // A long silence clears everything.
        assert_eq!(w.add(1_000_000, 8_000, 1), 1);
    }

    #[test]
    fn events_spread_over_the_window_add_up() {
        let mut w = Window::default();
        for i in 0..10u64 {
            w.add(i * 500, 10_000, 1);
        }
        assert_eq!(w.count(4_500, 10_000), 10);
    }

    #[test]
    fn a_clock_stepping_back_does_not_lose_counts() {
        let mut w = Window::default();
        w.add(50_000, 1_000, 2);
        assert_eq!(w.add(49_000, 1_000, 1), 3);
    }

    #[test]
    fn distinct_counts_values_not_events() {
        let mut d = Distinct::new(3);
        assert_eq!(d.add(0, 1_000, 1), 1);
        assert_eq!(d.add(1, 1_000, 1), 1);
        assert_eq!(d.add(2, 1_000, 2), 2);
        assert_eq!(d.add(3, 1_000, 3), 3);
        // Capped: a fourth value cannot grow the set.
        assert_eq!(d.add(4, 1_000, 4), 3);
        // Values expire with the window.
        assert_eq!(d.add(1_002, 1_000, 9), 2);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"100"), fnv1a(b"101"));
    }
}
