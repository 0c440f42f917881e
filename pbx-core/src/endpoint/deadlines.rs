//! Timers as data: one ordered set of `(deadline, call)` per kind of call timer (ring
//! timeout, next ring-plan step, auto-attendant digit), the earliest first.
//!
//! A call keeps the deadline it armed; a timer that fires for a deadline the call no longer
//! holds is stale and ignored by the caller, so re-arming removes the old entry first to
//! keep [`Deadlines::next`] honest.

use std::collections::BTreeSet;

use crate::Millis;

/// Deadlines of one kind, by call.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    set: BTreeSet<(Millis, u64)>,
}

impl Deadlines {
    /// Arms `call`'s deadline `at`.
    pub(super) fn insert(&mut self, at: Millis, call: u64) {
        self.set.insert((at, call));
    }

    /// Disarms `call`'s deadline `at` (nothing when it is not armed).
    pub(super) fn remove(&mut self, at: Millis, call: u64) {
        self.set.remove(&(at, call));
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Millis> {
        self.set.first().map(|&(at, _)| at)
    }

    /// Takes the earliest deadline due at `now`, with its call.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(Millis, u64)> {
        let &(at, call) = self.set.first()?;
        if at > now {
            return None;
        }
        self.set.remove(&(at, call));
        Some((at, call))
    }

    /// Number of armed deadlines.
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_deadlines_come_out_earliest_first() {
        let mut d = Deadlines::default();
        d.insert(3_000, 1);
        d.insert(1_000, 2);
        d.insert(1_000, 3);
        d.insert(5_000, 4);
        assert_eq!(d.next(), Some(1_000));
        assert_eq!(d.pop_due(999), None);
        assert_eq!(d.pop_due(3_000), Some((1_000, 2)));
        assert_eq!(d.pop_due(3_000), Some((1_000, 3)));
        assert_eq!(d.pop_due(3_000), Some((3_000, 1)));
        assert_eq!(d.pop_due(3_000), None);
        assert_eq!(d.next(), Some(5_000));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_removed_deadline_never_fires() {
        let mut d = Deadlines::default();
        d.insert(1_000, 1);
        d.insert(2_000, 1);
        d.remove(1_000, 1);
        d.remove(1_000, 9);
        assert_eq!(d.next(), Some(2_000));
        assert_eq!(d.pop_due(10_000), Some((2_000, 1)));
        assert_eq!(d.len(), 0);
    }
}
