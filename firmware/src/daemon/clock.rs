//! The daemon's clock: the wall time at start advanced by the monotonic clock, so timers
//! never jump with the system clock; when the system clock is set (the NTP client's first
//! answer after a start without one, an admin's `date`), it follows once no call is in
//! progress (see `Daemon::follow_clock`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pbx_core::Millis;

/// A difference between the system clock and the daemon's that the daemon follows (ms).
pub(super) const FOLLOW_MS: i64 = 1_000;
/// How often the two clocks are compared (ms).
pub(super) const CHECK_EVERY_MS: Millis = 5_000;

fn system_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock in [`Millis`]: wall time at start plus monotonic time; it moves only by
/// [`Clock::follow`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) start: Instant,
    wall_start: Millis,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock {
            start: Instant::now(),
            wall_start: system_ms(),
        }
    }

    pub(super) fn now(&self) -> Millis {
        self.wall_start + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    pub(super) fn instant_at(&self, t: Millis) -> tokio::time::Instant {
        let offset = Duration::from_millis(t.saturating_sub(self.wall_start));
        tokio::time::Instant::from_std(self.start + offset)
    }

    /// How far the system clock is ahead of this one (ms; negative: behind).
    pub(super) fn drift_ms(&self) -> i64 {
        let (sys, own) = (i128::from(system_ms()), i128::from(self.now()));
        i64::try_from(sys - own).unwrap_or(if sys > own { i64::MAX } else { i64::MIN })
    }

    /// Moves this clock by `delta_ms` (what [`Clock::drift_ms`] measured).
    pub(super) fn follow(&mut self, delta_ms: i64) {
        self.wall_start = self.wall_start.saturating_add_signed(delta_ms);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn following_a_step_moves_now_and_keeps_instants_in_place() {
        let mut clock = Clock::new();
        assert!(clock.drift_ms().abs() < FOLLOW_MS);
        // As if the system clock had been a day behind when the daemon started.
        clock.wall_start -= 86_400_000;
        let drift = clock.drift_ms();
        assert!((drift - 86_400_000).abs() < FOLLOW_MS, "{drift}");
        let before = clock.now();
        let due = clock.instant_at(before + 30_000);
        clock.follow(drift);
        assert!(clock.drift_ms().abs() < FOLLOW_MS);
        assert!(clock.now() >= before + 86_400_000 - 1_000);
        // A deadline taken on the new timeline lands where the same delay would.
        let due_after = clock.instant_at(clock.now() + 30_000);
        let gap = due_after.max(due) - due_after.min(due);
        assert!(gap < Duration::from_millis(1_000), "{gap:?}");
        // And back: this clock a day behind the system again.
        clock.follow(-86_400_000);
        assert!((clock.drift_ms() - 86_400_000).abs() < FOLLOW_MS);
    }
}
