//! How single values read in a table cell or a message: times, durations, sizes, and text
//! from the network made safe for a terminal.

use firmware::civil::UtcTime;

/// Replaces control characters (escape sequences, newlines) with `?`.
pub fn sanitize(s: &str) -> String {
    firmware::names::printable(s, usize::MAX)
}

/// `2026-11-26 17:03:05` (UTC) from milliseconds since the epoch.
pub fn fmt_time(ms: u64) -> String {
    let t = UtcTime::from_millis(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A recording's length from milliseconds: tenths of a second under a minute (`2.9s` was
/// `2s`: whole seconds cut 2,960 ms short), rounded to the second above.
pub fn fmt_length_ms(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else {
        fmt_duration((ms + 500) / 1000)
    }
}

/// `45s`, `1m05s`, `2h03m04s`, `3d04h05m`.
pub fn fmt_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `1.5 MiB`.
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// Milliseconds since the Unix epoch (the daemon's clock for times it reports), for "time
/// left" and "ago" cells.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(fmt_time(1_795_712_585_999), "2026-11-26 17:03:05");
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(fmt_duration(65), "1m05s");
        assert_eq!(fmt_duration(3_600 + 3 * 60 + 4), "1h03m04s");
        assert_eq!(fmt_duration(2 * 86_400 + 4 * 3_600 + 5 * 60), "2d04h05m");
        // A voicemail of 2,960 ms was listed as `2s`.
        assert_eq!(fmt_length_ms(2_960), "3.0s");
        assert_eq!(fmt_length_ms(2_940), "2.9s");
        assert_eq!(fmt_length_ms(0), "0.0s");
        assert_eq!(fmt_length_ms(59_960), "1m00s");
        assert_eq!(fmt_length_ms(125_400), "2m05s");
    }

    #[test]
    fn sizes_and_sanitised_text() {
        assert_eq!(fmt_size(1_023), "1023 B");
        assert_eq!(fmt_size(1_536 * 1024), "1.5 MiB");
        assert_eq!(fmt_size(u64::MAX), "17179869184.0 GiB");
        assert_eq!(sanitize("evil\u{1b}[2J\nphone"), "evil?[2J?phone");
    }
}
