//! The system clock: stepping and slewing it (CAP_SYS_TIME), the time saved on `/data` and
//! the image's build time, the two floors `rc.sysinit` sets the clock to at boot on a board
//! without a battery clock.

use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{clock_gettime, clock_settime, ClockId};

/// File under the data directory holding the last time the daemon saw (decimal Unix
/// seconds and a newline), saved every [`super::SAVE_EVERY`] and at shutdown.
pub const CLOCK_FILE: &str = "clock";

/// The image's release file; its `source_date_epoch=` line is the build time.
pub const RELEASE_FILE: &str = "/etc/outpost/release";

/// Offsets up to this are slewed (the kernel runs the clock up to 500 ppm faster or slower
/// until they are gone); larger ones are stepped at once.
pub const STEP_THRESHOLD_US: i64 = 500_000;

/// Unix time now in microseconds (0 before 1970, which a floor never allows).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How an offset is corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// The clock jumps by the offset.
    Step,
    /// The kernel slews the clock by the offset, without a jump.
    Slew,
}

/// Step for large offsets, slew for small ones.
pub fn correction_for(offset_us: i64) -> Correction {
    if offset_us.unsigned_abs() > STEP_THRESHOLD_US.unsigned_abs() {
        Correction::Step
    } else {
        Correction::Slew
    }
}

/// Corrects the system clock by `offset_us` (positive: it is behind).
pub fn correct(offset_us: i64) -> io::Result<Correction> {
    let how = correction_for(offset_us);
    match how {
        Correction::Step => step(offset_us)?,
        Correction::Slew => slew(offset_us)?,
    }
    Ok(how)
}

/// Sets the clock `offset_us` later (earlier when negative).
fn step(offset_us: i64) -> io::Result<()> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME).map_err(io::Error::from)?;
    let ns = i128::from(now.tv_sec()) * 1_000_000_000
        + i128::from(now.tv_nsec())
        + i128::from(offset_us) * 1_000;
    let secs = i64::try_from(ns.div_euclid(1_000_000_000))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?;
    if secs < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to set the clock before 1970",
        ));
    }
    let nanos = i64::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0);
    let target = nix::sys::time::TimeSpec::new(secs, nanos);
    clock_settime(ClockId::CLOCK_REALTIME, target).map_err(io::Error::from)
}

/// Asks the kernel to slew the clock by `offset_us` (replacing any slew in progress).
#[allow(unsafe_code)]
fn slew(offset_us: i64) -> io::Result<()> {
    let delta = libc::timeval {
        tv_sec: offset_us.div_euclid(1_000_000),
        tv_usec: offset_us.rem_euclid(1_000_000),
    };
    // SAFETY: adjtime reads the one timeval passed by reference for the call and is given
    // no old-value pointer (null is allowed); no memory outlives the call.
    let rc = unsafe { libc::adjtime(&delta, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The time saved in `<data_dir>/clock`, if the file holds one.
pub fn read_saved(data_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(data_dir.join(CLOCK_FILE)).ok()?;
    text.trim().parse().ok()
}

/// Saves `secs` in `<data_dir>/clock` (written beside and renamed over, so a power cut
/// leaves the old or the new value, never a torn one).
pub fn save(data_dir: &Path, secs: u64) -> io::Result<()> {
    let tmp = data_dir.join(format!("{CLOCK_FILE}.tmp"));
    std::fs::write(&tmp, format!("{secs}\n"))?;
    std::fs::rename(&tmp, data_dir.join(CLOCK_FILE))
}

/// The build time in a release file's text (`source_date_epoch=N`).
pub fn build_epoch(release_text: &str) -> Option<u64> {
    release_text
        .lines()
        .find_map(|l| l.strip_prefix("source_date_epoch="))
        .and_then(|v| v.trim().parse().ok())
}

/// The earliest time the clock may show at boot: the later of the build time and the time
/// saved on `/data` (what `rc.sysinit` does with `date -s`, here for the daemon's checks).
pub fn floor(build: Option<u64>, saved: Option<u64>) -> u64 {
    build.unwrap_or(0).max(saved.unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn small_offsets_slew_large_ones_step() {
        assert_eq!(correction_for(0), Correction::Slew);
        assert_eq!(correction_for(-499_999), Correction::Slew);
        assert_eq!(correction_for(500_000), Correction::Slew);
        assert_eq!(correction_for(500_001), Correction::Step);
        assert_eq!(correction_for(-3_600_000_000), Correction::Step);
        assert_eq!(correction_for(i64::MIN), Correction::Step);
    }

    #[test]
    fn saved_time_round_trips_and_garbage_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_saved(dir.path()), None);
        save(dir.path(), 1_780_000_000).unwrap();
        assert_eq!(read_saved(dir.path()), Some(1_780_000_000));
        std::fs::write(dir.path().join(CLOCK_FILE), "yesterday\n").unwrap();
        assert_eq!(read_saved(dir.path()), None);
    }

    #[test]
    fn build_epoch_is_read_from_the_release_file() {
        let text =
            "version=0.1.0\nbuild=1700000000\nprofile=qemu-virt\nsource_date_epoch=1700000000\n";
        assert_eq!(build_epoch(text), Some(1_700_000_000));
        assert_eq!(build_epoch("version=1\n"), None);
        assert_eq!(
            floor(Some(1_700_000_000), Some(1_780_000_000)),
            1_780_000_000
        );
        assert_eq!(floor(Some(1_700_000_000), None), 1_700_000_000);
        assert_eq!(floor(None, None), 0);
    }
}
