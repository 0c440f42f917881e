//! Civil dates in UTC: day numbers (days since 1970-01-01) to year, month and day of the
//! proleptic Gregorian calendar and back, and a millisecond timestamp broken into its
//! calendar and clock fields.
//!
//! A leaf: pure arithmetic, no clock read and nothing else of the crate imported. The box
//! keeps no time zone database, so every date it prints or parses is UTC; the formats
//! themselves (RFC 3339, backup file stamps, the CLI's tables) stay with their users.

/// Milliseconds in a day.
pub const MS_PER_DAY: u64 = 86_400_000;

/// Days from 0000-03-01 to 1970-01-01: the algorithms count from a March so that the leap
/// day is the last day of its year.
const EPOCH_SHIFT: i64 = 719_468;
/// Days in a 400-year era.
const DAYS_PER_ERA: i64 = 146_097;

/// (year, month 1-12, day 1-31) of a day number (days since 1970-01-01, negative before).
///
/// Howard Hinnant's `civil_from_days`; exact for every day number a `u64` of milliseconds
/// can reach, and for any `days` within ±2^60.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(DAYS_PER_ERA);
    let doe = z.rem_euclid(DAYS_PER_ERA);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(m <= 2);
    // m is 1..=12 and d is 1..=31 by construction: the fallbacks are never taken.
    (
        year,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Day number (days since 1970-01-01) of a civil date; the inverse of [`civil_from_days`]
/// for real dates (a date such as February 30 maps to some other day, which is how callers
/// detect it).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * DAYS_PER_ERA + doe - EPOCH_SHIFT
}

/// Day of the week of a day number: 0 = Sunday ... 6 = Saturday (1970-01-01 was a Thursday).
pub fn weekday(day: u64) -> u64 {
    (day + 4) % 7
}

/// A UTC time broken into its calendar and clock fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Year, e.g. 2024.
    pub year: i64,
    /// Month, 1-12.
    pub month: u32,
    /// Day of the month, 1-31.
    pub day: u32,
    /// Hour, 0-23.
    pub hour: u32,
    /// Minute, 0-59.
    pub minute: u32,
    /// Second, 0-59.
    pub second: u32,
    /// Millisecond, 0-999.
    pub milli: u32,
}

impl UtcTime {
    /// The fields of `ms` milliseconds since 1970-01-01 00:00:00 UTC.
    pub fn from_millis(ms: u64) -> UtcTime {
        // u64::MAX ms is about 2.1e11 days: always an i64, the fallback is never taken.
        let days = i64::try_from(ms / MS_PER_DAY).unwrap_or(i64::MAX / 2);
        let (year, month, day) = civil_from_days(days);
        let rest = ms % MS_PER_DAY;
        // Every field below is less than 86,400,000: each fits a u32.
        let field = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        UtcTime {
            year,
            month,
            day,
            hour: field(rest / 3_600_000),
            minute: field(rest % 3_600_000 / 60_000),
            second: field(rest % 60_000 / 1000),
            milli: field(rest % 1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(
            civil_from_days(11_016),
            (2000, 2, 29),
            "leap day of a 400-year"
        );
        assert_eq!(civil_from_days(19_782), (2024, 2, 29), "leap day");
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(
            civil_from_days(47_541),
            (2100, 3, 1),
            "2100 is not a leap year"
        );
        assert_eq!(days_from_civil(2024, 5, 1), 19_844);
        assert_eq!(weekday(0), 4, "1970-01-01 was a Thursday");
        assert_eq!(weekday(19_844), 3, "2024-05-01 was a Wednesday");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut prev = civil_from_days(-800_000);
        for days in -799_999i64..=800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            let (py, pm, pd) = prev;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = d == 1 && ((y, m) == (py, pm + 1) || (y, m, pm) == (py + 1, 1, 12));
            assert!(next_day || next_month, "{prev:?} then {:?}", (y, m, d));
            prev = (y, m, d);
        }
    }

    #[test]
    fn february_30_is_detected_by_the_round_trip() {
        let days = days_from_civil(2023, 2, 30);
        assert_ne!(civil_from_days(days), (2023, 2, 30));
        assert_eq!(civil_from_days(days), (2023, 3, 2));
    }

    #[test]
    fn timestamps_break_into_fields() {
        let t = UtcTime::from_millis(1_795_712_585_999);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli),
            (2026, 11, 26, 17, 3, 5, 999)
        );
        assert_eq!(
            UtcTime::from_millis(951_782_400_000),
            UtcTime {
                year: 2000,
                month: 2,
                day: 29,
                hour: 0,
                minute: 0,
                second: 0,
                milli: 0
            }
        );
        // The far end of the range is a date, not a panic.
        let far = UtcTime::from_millis(u64::MAX);
        assert_eq!((far.month, far.day, far.hour), (4, 3, 14));
        assert_eq!(far.year, 584_556_019);
    }
}
