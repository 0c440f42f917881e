//! The time zone provisioned phones show: a POSIX TZ rule (`CET-1CEST,M3.5.0,M10.5.0/3`),
//! given directly or by the name of a common zone from a small built-in table
//! ([`ZONES`]), parsed into what the vendors' files can carry: the standard offset and,
//! where the zone has one, a daylight-saving rule whose changes fall on the n-th (or last)
//! weekday of a month at a whole hour. Rules outside that (Julian days, minutes in a
//! transition time, a negative or more than 3 h saving) are refused with the reason: no
//! vendor file could say them.

/// The common zones by name, with their POSIX TZ rule (as the tz database's current
/// rules give them). A zone not listed is given as its rule.
pub const ZONES: &[(&str, &str)] = &[
    ("UTC", "UTC0"),
    ("Europe/London", "GMT0BST,M3.5.0/1,M10.5.0"),
    ("Europe/Lisbon", "WET0WEST,M3.5.0/1,M10.5.0"),
    ("Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Paris", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Madrid", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Rome", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Amsterdam", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Brussels", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Vienna", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Zurich", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Stockholm", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Warsaw", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Prague", "CET-1CEST,M3.5.0,M10.5.0/3"),
    ("Europe/Helsinki", "EET-2EEST,M3.5.0/3,M10.5.0/4"),
    ("Europe/Athens", "EET-2EEST,M3.5.0/3,M10.5.0/4"),
    ("America/New_York", "EST5EDT,M3.2.0,M11.1.0"),
    ("America/Toronto", "EST5EDT,M3.2.0,M11.1.0"),
    ("America/Chicago", "CST6CDT,M3.2.0,M11.1.0"),
    ("America/Denver", "MST7MDT,M3.2.0,M11.1.0"),
    ("America/Phoenix", "MST7"),
    ("America/Los_Angeles", "PST8PDT,M3.2.0,M11.1.0"),
    ("Asia/Kolkata", "IST-5:30"),
    ("Asia/Tokyo", "JST-9"),
    ("Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3"),
];

/// Longest rule accepted.
const MAX_RULE: usize = 64;

/// A time zone: the standard offset and the daylight-saving rule, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone {
    /// Minutes east of UTC outside daylight saving time.
    pub offset_minutes: i32,
    /// When clocks go forward and back; `None` for a zone without.
    pub dst: Option<Dst>,
}

/// A yearly daylight-saving rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dst {
    /// Minutes the clock goes forward (1 to 180).
    pub save_minutes: i32,
    /// When it starts, in standard (local) time.
    pub start: Change,
    /// When it ends, in daylight (local) time.
    pub end: Change,
}

/// One change of the clock: the `week`-th `weekday` of `month` at `hour` local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// 1 (January) to 12.
    pub month: u8,
    /// 1 to 4: the first to fourth such weekday; 5: the last.
    pub week: u8,
    /// 0 (Sunday) to 6 (Saturday), as POSIX counts.
    pub weekday: u8,
    /// 0 to 23.
    pub hour: u8,
}

impl TimeZone {
    /// A zone name from [`ZONES`] or a POSIX TZ rule; the error says what is wrong.
    pub fn parse(text: &str) -> Result<TimeZone, String> {
        let rule = ZONES
            .iter()
            .find(|(name, _)| *name == text)
            .map_or(text, |(_, rule)| rule);
        parse_rule(rule).map_err(|why| {
            // A zone name has a '/' (a rule only after its ',').
            if text.contains('/') && !text.contains(',') && !ZONES.iter().any(|(n, _)| *n == text) {
                format!(
                    "{:?} is not one of the zones Outpost knows by name ({}); give its POSIX TZ rule instead, e.g. \"CET-1CEST,M3.5.0,M10.5.0/3\"",
                    text.chars().take(MAX_RULE).collect::<String>(),
                    ZONES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )
            } else {
                format!("not a POSIX TZ rule Outpost can give phones: {why}")
            }
        })
    }
}

/// A cursor over the rule's characters.
struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.rest = &self.rest[c.len_utf8()..];
            true
        } else {
            false
        }
    }

    /// A zone abbreviation: 3 or more letters, or `<...>` of letters, digits, `+`, `-`.
    fn name(&mut self, what: &str) -> Result<(), String> {
        let len = if self.eat('<') {
            let end = self
                .rest
                .find('>')
                .ok_or_else(|| format!("the {what} name has no closing '>'"))?;
            let ok = self.rest[..end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
            if !ok || end < 3 {
                return Err(format!(
                    "the {what} name <{}> is not valid",
                    &self.rest[..end]
                ));
            }
            self.rest = &self.rest[end + 1..];
            return Ok(());
        } else {
            self.rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(self.rest.len())
        };
        if len < 3 {
            return Err(format!(
                "the {what} name must be 3 or more letters (e.g. CET), at {:?}",
                self.rest
            ));
        }
        self.rest = &self.rest[len..];
        Ok(())
    }

    /// A number of at most `max_digits` digits.
    fn number(&mut self, max_digits: usize) -> Option<u32> {
        let len = self
            .rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(self.rest.len());
        if len == 0 || len > max_digits {
            return None;
        }
        let n = self.rest[..len].parse().ok()?;
        self.rest = &self.rest[len..];
        Some(n)
    }

    /// `[+-]hh[:mm]` as minutes (POSIX: positive west of Greenwich).
    fn offset(&mut self, what: &str) -> Result<i32, String> {
        let sign = if self.eat('-') {
            -1
        } else {
            self.eat('+');
            1
        };
        let bad = || format!("the {what} offset must be [+-]hh[:mm] (at most 24 hours)");
        let hours = self.number(2).ok_or_else(bad)?;
        let minutes = if self.eat(':') {
            self.number(2).filter(|m| *m < 60).ok_or_else(bad)?
        } else {
            0
        };
        if hours > 24 {
            return Err(bad());
        }
        Ok(sign * i32::try_from(hours * 60 + minutes).map_err(|_| bad())?)
    }

    /// `Mm.w.d[/h]` (whole hours only; default 02:00).
    fn change(&mut self, what: &str) -> Result<Change, String> {
        if !self.eat('M') {
            return Err(format!(
                "the {what} of daylight saving time must be Mm.w.d (the w-th weekday d of month m)"
            ));
        }
        let bad = || format!("the {what} must be Mm.w.d with m 1-12, w 1-5, d 0-6");
        let month = self
            .number(2)
            .filter(|m| (1..=12).contains(m))
            .ok_or_else(bad)?;
        let week = (self.eat('.').then(|| self.number(1)).flatten())
            .filter(|w| (1..=5).contains(w))
            .ok_or_else(bad)?;
        let weekday = (self.eat('.').then(|| self.number(1)).flatten())
            .filter(|d| *d <= 6)
            .ok_or_else(bad)?;
        let hour = if self.eat('/') {
            let h = self.number(2).filter(|h| *h <= 23).ok_or_else(|| {
                format!("the {what} time must be a whole hour 0-23 (phones take no minutes)")
            })?;
            if self.eat(':') {
                for _ in 0..2 {
                    if self.number(2) != Some(0) {
                        return Err(format!(
                            "the {what} time must be a whole hour (phones take no minutes)"
                        ));
                    }
                    if !self.eat(':') {
                        break;
                    }
                }
            }
            h
        } else {
            2
        };
        let narrow = |n: u32| u8::try_from(n).map_err(|_| bad());
        Ok(Change {
            month: narrow(month)?,
            week: narrow(week)?,
            weekday: narrow(weekday)?,
            hour: narrow(hour)?,
        })
    }
}

fn parse_rule(rule: &str) -> Result<TimeZone, String> {
    if rule.is_empty() || rule.len() > MAX_RULE || !rule.is_ascii() {
        return Err(format!("a rule is 1 to {MAX_RULE} ASCII characters"));
    }
    let mut c = Cursor { rest: rule };
    c.name("standard time")?;
    let std_west = c.offset("standard time")?;
    if c.rest.is_empty() {
        return Ok(TimeZone {
            offset_minutes: -std_west,
            dst: None,
        });
    }
    c.name("daylight saving time")?;
    let dst_west = if matches!(c.peek(), Some(',') | None) {
        std_west - 60
    } else {
        c.offset("daylight saving time")?
    };
    let save_minutes = std_west - dst_west;
    if !(1..=180).contains(&save_minutes) {
        return Err(format!(
            "daylight saving time must be 1 minute to 3 hours ahead of standard time, not {save_minutes} minutes"
        ));
    }
    if !c.eat(',') {
        return Err("daylight saving time needs its start and end: ,Mm.w.d,Mm.w.d".to_owned());
    }
    let start = c.change("start")?;
    if !c.eat(',') {
        return Err("daylight saving time needs its end: ,Mm.w.d".to_owned());
    }
    let end = c.change("end")?;
    if !c.rest.is_empty() {
        return Err(format!("unexpected {:?} at the end", c.rest));
    }
    if start.month == end.month {
        return Err("daylight saving time must start and end in different months".to_owned());
    }
    Ok(TimeZone {
        offset_minutes: -std_west,
        dst: Some(Dst {
            save_minutes,
            start,
            end,
        }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn names_and_rules_parse_into_offset_and_changes() {
        let berlin = TimeZone::parse("Europe/Berlin").unwrap();
        assert_eq!(
            berlin,
            TimeZone::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
        );
        assert_eq!(berlin.offset_minutes, 60);
        let dst = berlin.dst.unwrap();
        assert_eq!(dst.save_minutes, 60);
        assert_eq!(
            (dst.start, dst.end),
            (
                Change {
                    month: 3,
                    week: 5,
                    weekday: 0,
                    hour: 2
                },
                Change {
                    month: 10,
                    week: 5,
                    weekday: 0,
                    hour: 3
                }
            )
        );
        let ny = TimeZone::parse("America/New_York").unwrap();
        assert_eq!(ny.offset_minutes, -300);
        assert_eq!(
            ny.dst.unwrap().start,
            Change {
                month: 3,
                week: 2,
                weekday: 0,
                hour: 2
            }
        );
        let india = TimeZone::parse("Asia/Kolkata").unwrap();
        assert_eq!((india.offset_minutes, india.dst), (330, None));
        let quoted = TimeZone::parse("<+0330>-3:30").unwrap();
        assert_eq!(quoted.offset_minutes, 210);
        let explicit = TimeZone::parse("AAA+3BBB+2:30,M9.1.6/0:00:00,M4.1.0/23").unwrap();
        assert_eq!(explicit.offset_minutes, -180);
        assert_eq!(explicit.dst.unwrap().save_minutes, 30);
        for (name, _) in ZONES {
            TimeZone::parse(name).unwrap();
        }
    }

    #[test]
    fn what_no_phone_can_carry_is_refused_with_the_reason() {
        for (bad, why) in [
            ("", "1 to 64"),
            ("Mars/Olympus", "not one of the zones"),
            ("C1", "3 or more letters"),
            ("CET", "offset"),
            ("CET-1CEST", "start and end"),
            ("CET-1CEST,J60,M10.5.0", "Mm.w.d"),
            ("CET-1CEST,M3.5.0/2:30,M10.5.0/3", "whole hour"),
            ("CET-1CEST,M13.5.0,M10.5.0", "m 1-12"),
            ("CET-1CEST,M3.6.0,M10.5.0", "w 1-5"),
            ("CET-1CEST,M3.5.7,M10.5.0", "d 0-6"),
            ("IST-1GMT0,M10.5.0,M3.5.0/1", "1 minute to 3 hours"),
            ("CET-1CEST,M3.5.0,M10.5.0/3x", "unexpected"),
            ("CET-25", "offset"),
            ("CET-1CEST,M3.5.0,M3.5.0", "different months"),
        ] {
            let err = TimeZone::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
