//! Local time without a time-zone database: a fixed offset from UTC, weekdays, and
//! "HH:MM-HH:MM" windows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::PolicyError;
use crate::Millis;

const MINUTES_PER_DAY: u16 = 24 * 60;

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    fn from_days_since_epoch(days: i64) -> Weekday {
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let idx = (days + 3).rem_euclid(7);
        Weekday::ALL[usize::try_from(idx).unwrap_or(0)]
    }

    fn previous(self) -> Weekday {
        let idx = Weekday::ALL.iter().position(|&d| d == self).unwrap_or(0);
        Weekday::ALL[(idx + 6) % 7]
    }
}

/// A daily window `HH:MM-HH:MM` in local time; `from > to` wraps past midnight, `24:00`
/// is allowed as the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeWindow {
    /// Start, minutes after local midnight.
    from: u16,
    /// End (exclusive), minutes after local midnight.
    to: u16,
}

impl FromStr for TimeWindow {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError::TimeWindow(s.to_string());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let from = parse_hhmm(a).ok_or_else(bad)?;
        let to = parse_hhmm(b).ok_or_else(bad)?;
        if from == to || from >= MINUTES_PER_DAY {
            return Err(bad());
        }
        Ok(TimeWindow { from, to })
    }
}

impl TryFrom<String> for TimeWindow {
    type Error = PolicyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TimeWindow> for String {
    fn from(w: TimeWindow) -> String {
        w.to_string()
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.from / 60,
            self.from % 60,
            self.to / 60,
            self.to % 60
        )
    }
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// When international calls are allowed: a daily window on the listed weekdays (a window
/// that wraps past midnight belongs to the day it starts on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// Days the window opens.
    pub days: Vec<Weekday>,
    /// The daily window, e.g. `"08:00-18:00"`.
    pub hours: TimeWindow,
}

impl BusinessHours {
    /// Whether the local time `at` falls inside the window.
    pub fn contains(&self, at: LocalTime) -> bool {
        let w = self.hours;
        if w.from < w.to {
            self.days.contains(&at.weekday) && (w.from..w.to).contains(&at.minute)
        } else {
            (self.days.contains(&at.weekday) && at.minute >= w.from)
                || (self.days.contains(&at.weekday.previous()) && at.minute < w.to)
        }
    }
}

/// A point in local time: the day number, weekday and minute of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Days since 1970-01-01 in local time (changes at local midnight).
    pub day: i64,
    /// The weekday.
    pub weekday: Weekday,
    /// Minutes after local midnight.
    pub minute: u16,
}

impl LocalTime {
    /// Local time at `now` for a fixed offset from UTC in minutes (east positive).
    pub fn at(now: Millis, offset_minutes: i32) -> LocalTime {
        let secs =
            i64::try_from(now / 1_000).unwrap_or(i64::MAX / 2) + i64::from(offset_minutes) * 60;
        let day = secs.div_euclid(86_400);
        let minute = u16::try_from(secs.rem_euclid(86_400) / 60).unwrap_or(0);
        LocalTime {
            day,
            weekday: Weekday::from_days_since_epoch(day),
            minute,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    /// 2024-01-01 00:00 UTC, a Monday.
    const MON: Millis = 1_704_067_200_000;
    const HOUR: Millis = 3_600_000;

    #[test]
    fn weekdays_and_offsets() {
        let t = LocalTime::at(MON, 0);
        assert_eq!((t.weekday, t.minute), (Weekday::Mon, 0));
        let t = LocalTime::at(MON + 10 * HOUR + 30 * 60_000, 60);
        assert_eq!((t.weekday, t.minute), (Weekday::Mon, 11 * 60 + 30));
        // West of UTC it is still Sunday evening.
        let t = LocalTime::at(MON + HOUR, -5 * 60);
        assert_eq!((t.weekday, t.minute), (Weekday::Sun, 20 * 60));
        assert_eq!(
            LocalTime::at(MON, 0).day,
            LocalTime::at(MON + 23 * HOUR, 0).day
        );
        assert_ne!(
            LocalTime::at(MON, 0).day,
            LocalTime::at(MON + 24 * HOUR, 0).day
        );
    }

    #[test]
    fn windows_parse_strictly() {
        assert_eq!(
            "08:00-18:00".parse::<TimeWindow>().unwrap().to_string(),
            "08:00-18:00"
        );
        assert!("8:30-24:00".parse::<TimeWindow>().is_ok());
        for bad in [
            "08:00",
            "08:00-08:00",
            "25:00-26:00",
            "08:60-09:00",
            "08-18",
            "24:00-01:00",
            "x",
        ] {
            assert!(bad.parse::<TimeWindow>().is_err(), "{bad}");
        }
    }

    #[test]
    fn office_hours_and_overnight_windows() {
        let office = BusinessHours {
            days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            hours: "08:00-18:00".parse().unwrap(),
        };
        assert!(!office.contains(LocalTime::at(MON + 7 * HOUR + 59 * 60_000, 0)));
        assert!(office.contains(LocalTime::at(MON + 8 * HOUR, 0)));
        assert!(!office.contains(LocalTime::at(MON + 18 * HOUR, 0)));
        assert!(
            !office.contains(LocalTime::at(MON + 5 * 24 * HOUR + 10 * HOUR, 0)),
            "Saturday"
        );

        let night = BusinessHours {
            days: vec![Weekday::Mon],
            hours: "22:00-06:00".parse().unwrap(),
        };
        assert!(night.contains(LocalTime::at(MON + 23 * HOUR, 0)));
        assert!(
            night.contains(LocalTime::at(MON + 29 * HOUR, 0)),
            "Tuesday 05:00"
        );
        assert!(
            !night.contains(LocalTime::at(MON + 5 * HOUR, 0)),
            "Monday 05:00 belongs to Sunday"
        );
    }

    #[test]
    fn business_hours_from_toml() {
        let b: BusinessHours =
            toml::from_str("days = [\"mon\", \"fri\"]\nhours = \"09:00-17:30\"").unwrap();
        assert_eq!(b.days, vec![Weekday::Mon, Weekday::Fri]);
        assert!(toml::from_str::<BusinessHours>("days = []\nhours = \"9-5\"").is_err());
    }
}
