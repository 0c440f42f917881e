//! When backups run and which ones are kept: the `[backup] schedule` (UTC), retention
//! (newest per day for `keep_daily` days, newest per ISO week for `keep_weekly` weeks), and
//! the UTC text formats of backups and call records (RFC 3339, file stamps; the calendar
//! arithmetic under them is the leaf [`crate::civil`]: no time zone database on the box).
//!
//! Everything here is pure: time is passed in as [`Millis`].

use std::fmt;

use pbx_core::Millis;

use crate::civil::{self, civil_from_days, days_from_civil, UtcTime, MS_PER_DAY};

const MS_PER_HOUR: u64 = 3_600_000;
const MS_PER_MIN: u64 = 60_000;

/// When scheduled backups run (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// No scheduled backups (`"off"`).
    Off,
    /// At the start of every hour (`"hourly"`).
    Hourly,
    /// Every day at this time (`"daily 02:30"`).
    Daily {
        /// Hour, 0-23.
        hour: u8,
        /// Minute, 0-59.
        minute: u8,
    },
    /// Every week on this day at this time (`"weekly sun 03:00"`).
    Weekly {
        /// Day of the week, 0 = Sunday ... 6 = Saturday.
        weekday: u8,
        /// Hour, 0-23.
        hour: u8,
        /// Minute, 0-59.
        minute: u8,
    },
}

const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    /// Parses `off`, `hourly`, `daily HH:MM` or `weekly DAY HH:MM` (DAY: sun, mon, ...).
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let bad = || {
            format!(
                "{s:?} is not a schedule: use \"off\", \"hourly\", \"daily 02:30\" or \"weekly sun 03:00\" (UTC)"
            )
        };
        match words.as_slice() {
            ["off"] => Ok(Schedule::Off),
            ["hourly"] => Ok(Schedule::Hourly),
            ["daily", time] => {
                let (hour, minute) = parse_hhmm(time).ok_or_else(bad)?;
                Ok(Schedule::Daily { hour, minute })
            }
            ["weekly", day, time] => {
                let lower = day.to_ascii_lowercase();
                let weekday = WEEKDAYS
                    .iter()
                    .position(|d| lower.starts_with(d) && lower.len() <= 9)
                    .ok_or_else(bad)?;
                let (hour, minute) = parse_hhmm(time).ok_or_else(bad)?;
                Ok(Schedule::Weekly {
                    weekday: u8::try_from(weekday).map_err(|_| bad())?,
                    hour,
                    minute,
                })
            }
            _ => Err(bad()),
        }
    }

    /// The first run strictly after `t`, or `None` when off.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        match *self {
            Schedule::Off => None,
            Schedule::Hourly => Some((t / MS_PER_HOUR + 1) * MS_PER_HOUR),
            Schedule::Daily { hour, minute } => {
                let offset = u64::from(hour) * MS_PER_HOUR + u64::from(minute) * MS_PER_MIN;
                let day = t / MS_PER_DAY;
                let today = day * MS_PER_DAY + offset;
                Some(if today > t { today } else { today + MS_PER_DAY })
            }
            Schedule::Weekly {
                weekday,
                hour,
                minute,
            } => {
                let offset = u64::from(hour) * MS_PER_HOUR + u64::from(minute) * MS_PER_MIN;
                let day = t / MS_PER_DAY;
                let ahead = (u64::from(weekday) + 7 - civil::weekday(day)) % 7;
                let candidate = (day + ahead) * MS_PER_DAY + offset;
                Some(if candidate > t {
                    candidate
                } else {
                    candidate + 7 * MS_PER_DAY
                })
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Schedule::Off => write!(f, "off"),
            Schedule::Hourly => write!(f, "hourly"),
            Schedule::Daily { hour, minute } => write!(f, "daily {hour:02}:{minute:02}"),
            Schedule::Weekly {
                weekday,
                hour,
                minute,
            } => write!(
                f,
                "weekly {} {hour:02}:{minute:02}",
                WEEKDAYS.get(usize::from(weekday)).unwrap_or(&"?")
            ),
        }
    }
}

fn parse_hhmm(s: &str) -> Option<(u8, u8)> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let hour: u8 = h.parse().ok()?;
    let minute: u8 = m.parse().ok()?;
    (hour < 24 && minute < 60).then_some((hour, minute))
}

/// Which backups to delete: `backups` are (name, created) pairs in any order. Kept are the
/// newest backup of each of the `keep_daily` most recent days that have one, and the newest
/// of each of the `keep_weekly` most recent ISO weeks that have one (a backup may count for
/// both); the newest backup of all is never deleted. Days and weeks are UTC.
pub fn retention_victims(
    backups: &[(String, Millis)],
    keep_daily: u32,
    keep_weekly: u32,
) -> Vec<String> {
    let mut sorted: Vec<&(String, Millis)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut keep = vec![false; sorted.len()];
    let mut mark = |bucket: &dyn Fn(Millis) -> u64, limit: u32| {
        let mut last = None;
        let mut kept = 0u32;
        for (i, (_, created)) in sorted.iter().enumerate() {
            if kept >= limit {
                break;
            }
            let b = bucket(*created);
            if last != Some(b) {
                last = Some(b);
                kept += 1;
                keep[i] = true;
            }
        }
    };
    mark(&|t| t / MS_PER_DAY, keep_daily);
    mark(&iso_week_start, keep_weekly);
    if let Some(first) = keep.first_mut() {
        *first = true;
    }
    sorted
        .iter()
        .zip(keep)
        .filter(|(_, k)| !k)
        .map(|((name, _), _)| name.clone())
        .collect()
}

/// Day number (days since 1970-01-01) of the Monday starting `t`'s ISO week.
fn iso_week_start(t: Millis) -> u64 {
    let day = t / MS_PER_DAY;
    // civil::weekday: 0 = Sunday; ISO weeks start on Monday.
    let since_monday = (civil::weekday(day) + 6) % 7;
    day.saturating_sub(since_monday)
}

/// RFC 3339 UTC with seconds: `2024-05-01T02:30:00Z`.
pub fn rfc3339(t: Millis) -> String {
    let u = UtcTime::from_millis(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

/// RFC 3339 UTC with milliseconds: `2024-05-01T02:30:00.125Z`.
pub fn rfc3339_ms(t: Millis) -> String {
    let u = UtcTime::from_millis(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second, u.milli
    )
}

/// The compact stamp in backup file names: `20240501T023000Z`.
pub fn file_stamp(t: Millis) -> String {
    let u = UtcTime::from_millis(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

/// Parses a [`file_stamp`] back to ms since the epoch.
pub fn parse_file_stamp(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    to_millis(i64::from(y), mo, d, h, mi, sec, 0, 0)
}

/// Parses `YYYY-MM-DD` (midnight UTC) or RFC 3339 (`2024-05-01T10:00:00Z`,
/// `...T10:00:00.5+02:00`) into ms since the epoch. The second value is true for a bare
/// date (so an end date can include its whole day).
pub fn parse_date(s: &str) -> Result<(Millis, bool), String> {
    let bad = || format!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time");
    let s = s.trim();
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = parts.as_slice() else {
        return Err(bad());
    };
    if y.len() != 4 || mo.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let y: i64 = y.parse().map_err(|_| bad())?;
    let mo: u32 = mo.parse().map_err(|_| bad())?;
    let d: u32 = d.parse().map_err(|_| bad())?;
    let Some(time) = time else {
        return to_millis(y, mo, d, 0, 0, 0, 0, 0)
            .map(|t| (t, true))
            .ok_or_else(bad);
    };
    // hh:mm:ss[.frac](Z|+hh:mm|-hh:mm)
    let (clock, offset_min) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let i = time.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':').ok_or_else(bad)?;
        let oh: i64 = oh.parse().map_err(|_| bad())?;
        let om: i64 = om.parse().map_err(|_| bad())?;
        if oh > 23 || om > 59 {
            return Err(bad());
        }
        (c, sign * (oh * 60 + om))
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let hms: Vec<&str> = hms.split(':').collect();
    let [h, mi, sec] = hms.as_slice() else {
        return Err(bad());
    };
    let field = |v: &str| -> Result<u32, String> {
        if v.len() != 2 {
            return Err(bad());
        }
        v.parse().map_err(|_| bad())
    };
    let ms = match frac {
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            let padded: String = f.chars().chain("000".chars()).take(3).collect();
            padded.parse().map_err(|_| bad())?
        }
        Some(_) => return Err(bad()),
        None => 0,
    };
    to_millis(y, mo, d, field(h)?, field(mi)?, field(sec)?, ms, offset_min)
        .map(|t| (t, false))
        .ok_or_else(bad)
}

#[allow(clippy::too_many_arguments)]
fn to_millis(
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    ms: u32,
    offset_min: i64,
) -> Option<Millis> {
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || d == 0 || h > 23 || mi > 59 {
        return None;
    }
    if s > 60 || ms > 999 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) {
        return None; // 2023-02-30 and the like
    }
    let t = days * 86_400_000
        + i64::from(h) * 3_600_000
        + i64::from(mi) * 60_000
        + i64::from(s) * 1000
        + i64::from(ms)
        - offset_min * 60_000;
    u64::try_from(t).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    /// 2024-05-01T00:00:00Z, a Wednesday.
    const MAY1: Millis = 1_714_521_600_000;

    fn at(s: &str) -> Millis {
        parse_date(s).unwrap().0
    }

    #[test]
    fn calendar_round_trips_and_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(MAY1), "2024-05-01T00:00:00Z");
        assert_eq!(rfc3339_ms(MAY1 + 3_723_045), "2024-05-01T01:02:03.045Z");
        assert_eq!(file_stamp(MAY1 + 9_000_000), "20240501T023000Z");
        assert_eq!(parse_file_stamp("20240501T023000Z"), Some(MAY1 + 9_000_000));
        assert_eq!(parse_file_stamp("20240501T023000"), None);
        assert_eq!(parse_file_stamp("2024050xT023000Z"), None);
        for days in [-1000i64, 0, 59, 60, 365, 11_016, 19_844, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(19_782), (2024, 2, 29), "leap day");
    }

    #[test]
    fn dates_and_rfc3339_parse() {
        assert_eq!(parse_date("2024-05-01").unwrap(), (MAY1, true));
        assert_eq!(at("2024-05-01T00:00:00Z"), MAY1);
        assert_eq!(at("2024-05-01T02:00:00+02:00"), MAY1);
        assert_eq!(at("2024-04-30T22:30:00-01:30"), MAY1);
        assert_eq!(at("2024-05-01T00:00:00.5Z"), MAY1 + 500);
        assert_eq!(at("2024-05-01t00:00:01.123456z"), MAY1 + 1_123);
        for bad in [
            "",
            "2024-5-1",
            "2024-02-30",
            "2024-13-01",
            "2024-05-01T25:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00Z",
            "yesterday",
            "2024-05-01T10:00:00.Z",
        ] {
            assert!(parse_date(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn schedules_parse_and_print() {
        for (text, s) in [
            ("off", Schedule::Off),
            ("hourly", Schedule::Hourly),
            (
                "daily 02:30",
                Schedule::Daily {
                    hour: 2,
                    minute: 30,
                },
            ),
            (
                "weekly sun 03:00",
                Schedule::Weekly {
                    weekday: 0,
                    hour: 3,
                    minute: 0,
                },
            ),
        ] {
            assert_eq!(Schedule::parse(text).unwrap(), s);
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(
            Schedule::parse("weekly Saturday 23:59").unwrap(),
            Schedule::Weekly {
                weekday: 6,
                hour: 23,
                minute: 59
            }
        );
        for bad in [
            "",
            "daily",
            "daily 24:00",
            "daily 2:5",
            "weekly 03:00",
            "weekly xyz 03:00",
            "every 5s",
            "nightly",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(err.contains("daily 02:30"), "{err}");
        }
    }

    #[test]
    fn next_run_with_a_fake_clock() {
        let daily = Schedule::parse("daily 02:30").unwrap();
        assert_eq!(daily.next_after(MAY1), Some(at("2024-05-01T02:30:00Z")));
        assert_eq!(
            daily.next_after(at("2024-05-01T02:30:00Z")),
            Some(at("2024-05-02T02:30:00Z")),
            "strictly after: a run at 02:30 schedules tomorrow's"
        );
        assert_eq!(
            daily.next_after(at("2024-12-31T23:59:59Z")),
            Some(at("2025-01-01T02:30:00Z"))
        );
        let hourly = Schedule::Hourly;
        assert_eq!(
            hourly.next_after(at("2024-05-01T10:59:59.999Z")),
            Some(at("2024-05-01T11:00:00Z"))
        );
        assert_eq!(
            hourly.next_after(at("2024-05-01T11:00:00Z")),
            Some(at("2024-05-01T12:00:00Z"))
        );
        let weekly = Schedule::parse("weekly sun 03:00").unwrap();
        // 2024-05-01 is a Wednesday; the next Sunday is the 5th.
        assert_eq!(weekly.next_after(MAY1), Some(at("2024-05-05T03:00:00Z")));
        assert_eq!(
            weekly.next_after(at("2024-05-05T02:59:00Z")),
            Some(at("2024-05-05T03:00:00Z"))
        );
        assert_eq!(
            weekly.next_after(at("2024-05-05T03:00:00Z")),
            Some(at("2024-05-12T03:00:00Z"))
        );
        let wed = Schedule::parse("weekly wed 00:00").unwrap();
        assert_eq!(wed.next_after(MAY1 - 1), Some(MAY1));
        assert_eq!(Schedule::Off.next_after(MAY1), None);

        // A simulated month of the daily schedule: one run per day, always at 02:30.
        let mut t = MAY1;
        let mut runs = Vec::new();
        while let Some(next) = daily.next_after(t) {
            if next >= at("2024-06-01T00:00:00Z") {
                break;
            }
            runs.push(next);
            t = next;
        }
        assert_eq!(runs.len(), 31);
        assert!(runs.iter().all(|r| rfc3339(*r).ends_with("T02:30:00Z")));
    }

    fn names(v: &[(String, Millis)], victims: &[String]) -> Vec<String> {
        let mut kept: Vec<String> = v
            .iter()
            .filter(|(n, _)| !victims.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        kept.sort();
        kept
    }

    #[test]
    fn retention_keeps_newest_per_day_and_per_week() {
        // 60 days of backups, two a day (02:30 and 14:00), from 2024-03-03 (a Sunday).
        let start = at("2024-03-03T00:00:00Z");
        let mut backups = Vec::new();
        for day in 0..60u64 {
            for (h, m) in [(2u64, 30u64), (14, 0)] {
                let t = start + day * MS_PER_DAY + h * MS_PER_HOUR + m * MS_PER_MIN;
                backups.push((format!("b-{}", file_stamp(t)), t));
            }
        }
        let victims = retention_victims(&backups, 7, 4);
        let kept = names(&backups, &victims);
        // Last day is 2024-05-01 (Wednesday). Daily: newest of Apr 25..May 1 (14:00 each).
        // Weekly (ISO, Monday start): weeks of Apr 29, Apr 22, Apr 15, Apr 8: newest in
        // each: May 1 14:00 (already daily), Apr 28 14:00, Apr 21 14:00, Apr 14 14:00.
        let want: Vec<String> = [
            "20240414T140000Z",
            "20240421T140000Z",
            "20240425T140000Z",
            "20240426T140000Z",
            "20240427T140000Z",
            "20240428T140000Z",
            "20240429T140000Z",
            "20240430T140000Z",
            "20240501T140000Z",
        ]
        .iter()
        .map(|s| format!("b-{s}"))
        .collect();
        assert_eq!(kept, want);
        assert_eq!(victims.len(), backups.len() - want.len());

        // Idempotent: applying retention to what is kept deletes nothing more.
        let remaining: Vec<(String, Millis)> = backups
            .iter()
            .filter(|(n, _)| !victims.contains(n))
            .cloned()
            .collect();
        assert!(retention_victims(&remaining, 7, 4).is_empty());
    }

    #[test]
    fn retention_counts_days_that_have_backups_and_keeps_the_newest() {
        // A box that was off for weeks: its last backups are old, but still kept.
        let t0 = at("2024-01-10T02:30:00Z");
        let backups = vec![
            ("a".to_string(), t0),
            ("b".to_string(), t0 + MS_PER_DAY),
            ("c".to_string(), t0 + 2 * MS_PER_DAY),
        ];
        assert!(retention_victims(&backups, 7, 0).is_empty());
        assert_eq!(retention_victims(&backups, 1, 0), ["b", "a"]);
        assert_eq!(
            retention_victims(&backups, 0, 0),
            ["b", "a"],
            "the newest is never deleted"
        );
        assert!(retention_victims(&[], 7, 4).is_empty());
    }
}
