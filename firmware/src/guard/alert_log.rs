//! The alert log: each alert is a log line, at most [`ALERT_LOG_LIMIT`] per rule per
//! minute, because alerts are triggered by network input and a flood must not fill the disk.
//! The rest are counted and summarised in one line per rule when its window ends (at the
//! next alert of that rule, or at [`AlertLog::flush`]). Every alert is stored regardless;
//! `outpostctl fw alerts` lists them.

use firewall::detect::{Alert, Rule};
use pbx_core::Millis;

/// Alert log lines per rule per window; the rest are counted and summarised.
pub const ALERT_LOG_LIMIT: u32 = 10;
/// The alert log window.
pub const ALERT_LOG_WINDOW_MS: u64 = 60_000;

/// Log lines of one rule within the current window.
#[derive(Debug, Clone, Copy, Default)]
struct LogWindow {
    start: Millis,
    logged: u32,
    suppressed: u64,
}

/// The per-rule windows and the totals.
#[derive(Debug, Default)]
pub struct AlertLog {
    windows: [LogWindow; Rule::ALL.len()],
    logged: u64,
    suppressed: u64,
    /// The same windows for ban and lock event lines (their own budget, so a burst of
    /// bans does not hide the alerts, nor the reverse).
    events: [LogWindow; Rule::ALL.len()],
}

impl AlertLog {
    /// Logs `alert` unless its rule used up its lines for this window.
    pub fn log(&mut self, now: Millis, alert: &Alert) {
        let i = rule_index(alert.rule);
        let w = &mut self.windows[i];
        if now >= w.start.saturating_add(ALERT_LOG_WINDOW_MS) {
            if w.suppressed > 0 {
                tracing::warn!(
                    rule = %alert.rule,
                    "firewall: {} more {} alerts in the last minute were not logged (see `outpostctl fw alerts`)",
                    w.suppressed, alert.rule
                );
            }
            *w = LogWindow {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= ALERT_LOG_LIMIT {
            w.suppressed += 1;
            self.suppressed += 1;
            return;
        }
        w.logged += 1;
        self.logged += 1;
        // `sd`: a structured event for the remote syslog collectors (crate::log).
        tracing::warn!(
            sd = "alert",
            rule = %alert.rule,
            src = alert.addr.map(tracing::field::display),
            user = alert.user.as_deref(),
            enforced = alert.enforced,
            "firewall: {}",
            alert.message.escape_debug()
        );
    }

    /// Whether a ban or lock event line of `rule` may be logged now: [`ALERT_LOG_LIMIT`]
    /// per rule per window, like alerts; the rest are counted and summarised.
    pub fn admit_event(&mut self, now: Millis, rule: Rule) -> bool {
        let i = rule_index(rule);
        let w = &mut self.events[i];
        if now >= w.start.saturating_add(ALERT_LOG_WINDOW_MS) {
            if w.suppressed > 0 {
                tracing::warn!(
                    rule = %rule,
                    "firewall: {} more {} bans or locks in the last minute were not logged (see `outpostctl fw bans`)",
                    w.suppressed, rule
                );
            }
            *w = LogWindow {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= ALERT_LOG_LIMIT {
            w.suppressed += 1;
            return false;
        }
        w.logged += 1;
        true
    }

    /// Summarises the windows that ended with alerts left unlogged.
    pub fn flush(&mut self, now: Millis) {
        for (i, w) in self.windows.iter_mut().enumerate() {
            if w.suppressed > 0 && now >= w.start.saturating_add(ALERT_LOG_WINDOW_MS) {
                tracing::warn!(
                    rule = %Rule::ALL[i],
                    "firewall: {} more {} alerts in the last minute were not logged (see `outpostctl fw alerts`)",
                    w.suppressed, Rule::ALL[i]
                );
                *w = LogWindow::default();
            }
        }
        for (i, w) in self.events.iter_mut().enumerate() {
            if w.suppressed > 0 && now >= w.start.saturating_add(ALERT_LOG_WINDOW_MS) {
                tracing::warn!(
                    rule = %Rule::ALL[i],
                    "firewall: {} more {} bans or locks in the last minute were not logged (see `outpostctl fw bans`)",
                    w.suppressed, Rule::ALL[i]
                );
                *w = LogWindow::default();
            }
        }
    }

    /// Alerts logged since the start.
    pub fn logged(&self) -> u64 {
        self.logged
    }

    /// Alerts not logged (only counted) since the start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

fn rule_index(rule: Rule) -> usize {
    Rule::ALL.iter().position(|&r| r == rule).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(at: Millis, rule: Rule) -> Alert {
        Alert {
            at,
            rule,
            addr: None,
            user: None,
            message: "x".into(),
            enforced: true,
        }
    }

    #[test]
    fn each_rule_logs_ten_lines_a_minute_and_counts_the_rest() {
        let mut log = AlertLog::default();
        const T0: Millis = 1_700_000_000_000;
        for n in 0..15 {
            log.log(T0 + n, &alert(T0 + n, Rule::Scanner));
        }
        log.log(T0 + 20, &alert(T0 + 20, Rule::Flood));
        assert_eq!(
            (log.logged(), log.suppressed()),
            (11, 5),
            "the flood rule has its own"
        );
        log.flush(T0 + 30);
        log.log(T0 + 40, &alert(T0 + 40, Rule::Scanner));
        assert_eq!(log.suppressed(), 6, "still the same window");
        log.flush(T0 + ALERT_LOG_WINDOW_MS);
        log.log(T0 + ALERT_LOG_WINDOW_MS, &alert(0, Rule::Scanner));
        assert_eq!((log.logged(), log.suppressed()), (12, 6), "a new window");
        // Ban and lock lines have their own budget per rule and window.
        let admitted = (0..15)
            .filter(|n| log.admit_event(T0 + ALERT_LOG_WINDOW_MS + n, Rule::Scanner))
            .count();
        assert_eq!(admitted, 10);
        assert!(log.admit_event(T0 + 2 * ALERT_LOG_WINDOW_MS, Rule::Scanner));
    }
}
