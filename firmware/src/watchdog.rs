//! The hardware watchdog: petted only while the daemon is healthy, so a hung daemon gets
//! the box rebooted.
//!
//! A thread of its own checks, every third of the watchdog's timeout: the SIP loop went
//! round recently (it wakes at least once a second), the store answers a read, and the
//! nftables enforcer thread (when the kernel enforces) went round recently. Only then does
//! it write to the watchdog device. When the loop stalls, the store locks up or the
//! enforcer hangs, the petting stops and the hardware resets the box within its timeout.
//! On a clean stop the device is closed with the magic 'V' so the kernel disarms it.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::Store;

/// `[watchdog]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogConfig {
    /// The watchdog device (e.g. `/dev/watchdog`); none = the board profile's when the panel
    /// runs on the board (`[panel] backend = "linux"`), else no watchdog (the demo).
    pub device: Option<PathBuf>,
    /// Seconds without petting before the hardware resets the box (set on the device when
    /// it supports it).
    pub timeout_secs: u64,
    /// A part of the daemon that has not gone round for this long counts as hung.
    pub max_stall_secs: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            device: None,
            timeout_secs: 15,
            max_stall_secs: 10,
        }
    }
}

impl WatchdogConfig {
    /// Range checks: (key, reason) on error.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(2..=600).contains(&self.timeout_secs) {
            return Err(("watchdog.timeout_secs", "must be between 2 and 600"));
        }
        if self.max_stall_secs == 0 || self.max_stall_secs >= self.timeout_secs.max(2) * 4 {
            return Err((
                "watchdog.max_stall_secs",
                "must be at least 1 and well below a few watchdog timeouts",
            ));
        }
        Ok(())
    }
}

/// When each part of the daemon last went round (ms since the heartbeats were created).
#[derive(Debug)]
pub struct Heartbeats {
    start: Instant,
    sip_loop: AtomicU64,
    enforcer: AtomicU64,
    /// The kernel enforces: the enforcer thread must beat too.
    enforcer_expected: AtomicBool,
}

impl Heartbeats {
    /// Everything beating now.
    pub fn new() -> Arc<Heartbeats> {
        Arc::new(Heartbeats {
            start: Instant::now(),
            sip_loop: AtomicU64::new(0),
            enforcer: AtomicU64::new(0),
            enforcer_expected: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The SIP loop went round.
    pub fn beat_loop(&self) {
        self.sip_loop.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The enforcer thread went round.
    pub fn beat_enforcer(&self) {
        self.enforcer.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether the enforcer's beat is checked (only when the kernel enforces).
    pub fn expect_enforcer(&self, expected: bool) {
        self.beat_enforcer();
        self.enforcer_expected.store(expected, Ordering::Relaxed);
    }

    /// Why the daemon is not healthy at `now_ms` (ms since creation), if it is not.
    pub fn stalled(&self, now_ms: u64, max_stall_ms: u64) -> Option<&'static str> {
        if now_ms.saturating_sub(self.sip_loop.load(Ordering::Relaxed)) > max_stall_ms {
            return Some("the SIP loop is stalled");
        }
        if self.enforcer_expected.load(Ordering::Relaxed)
            && now_ms.saturating_sub(self.enforcer.load(Ordering::Relaxed)) > max_stall_ms
        {
            return Some("the nftables enforcer is stalled");
        }
        None
    }
}

/// Something that keeps a watchdog from firing.
pub trait Pet: Send {
    /// Keeps the watchdog from firing for another timeout.
    fn pet(&mut self) -> io::Result<()>;
    /// Disarms it (clean stop).
    fn disarm(&mut self) -> io::Result<()>;
}

/// The watchdog device through `board` (ioctls on a real device; a byte per pet on a
/// stand-in file, as in tests).
#[derive(Debug)]
pub struct BoardWatchdog(Option<board::watchdog::Watchdog>);

impl BoardWatchdog {
    /// Opens (and so arms) the device at `path` with `timeout_secs`.
    pub fn open(path: &std::path::Path, timeout_secs: u64) -> io::Result<BoardWatchdog> {
        let secs = u32::try_from(timeout_secs).unwrap_or(u32::MAX);
        board::watchdog::Watchdog::open(path, secs)
            .map(|w| BoardWatchdog(Some(w)))
            .map_err(io::Error::other)
    }
}

impl Pet for BoardWatchdog {
    fn pet(&mut self) -> io::Result<()> {
        match self.0.as_mut() {
            Some(w) => w.pet().map_err(io::Error::other),
            None => Ok(()),
        }
    }

    fn disarm(&mut self) -> io::Result<()> {
        match self.0.take() {
            Some(w) => w.close().map_err(io::Error::other),
            None => Ok(()),
        }
    }
}

/// The running watchdog thread; dropping it disarms the device and stops the thread.
#[derive(Debug)]
pub struct WatchdogHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WatchdogHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts petting `dog` every third of `timeout` while the daemon is healthy.
pub fn spawn(
    mut dog: Box<dyn Pet>,
    cfg: &WatchdogConfig,
    beats: Arc<Heartbeats>,
    store: Arc<Store>,
) -> io::Result<WatchdogHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let period = Duration::from_millis(cfg.timeout_secs.saturating_mul(1000) / 3);
    let max_stall_ms = cfg.max_stall_secs.saturating_mul(1000);
    let thread = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut was_healthy = true;
            while !stopping.load(Ordering::Relaxed) {
                let verdict = beats
                    .stalled(beats.now_ms(), max_stall_ms)
                    .map(str::to_string)
                    .or_else(|| {
                        store
                            .ext_count()
                            .err()
                            .map(|e| format!("the store does not answer: {e}"))
                    });
                match verdict {
                    None => {
                        if let Err(err) = dog.pet() {
                            tracing::error!(%err, "watchdog: cannot pet the device");
                        }
                        if !was_healthy {
                            tracing::warn!("watchdog: healthy again, petting resumed");
                        }
                        was_healthy = true;
                    }
                    Some(why) => {
                        if was_healthy {
                            tracing::error!(
                                "watchdog: {why}: no longer petting; the box resets unless it recovers"
                            );
                        }
                        was_healthy = false;
                    }
                }
                // Sleep in short steps so a stop is quick.
                let until = Instant::now() + period;
                while Instant::now() < until && !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if let Err(err) = dog.disarm() {
                tracing::warn!(%err, "watchdog: cannot disarm the device");
            }
        })?;
    Ok(WatchdogHandle {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn a_stalled_loop_or_enforcer_is_unhealthy() {
        let hb = Heartbeats::new();
        hb.beat_loop();
        assert_eq!(hb.stalled(5_000, 10_000), None);
        assert_eq!(hb.stalled(11_000, 10_000), Some("the SIP loop is stalled"));
        hb.sip_loop.store(11_000, Ordering::Relaxed);
        assert_eq!(
            hb.stalled(12_000, 10_000),
            None,
            "the enforcer is not checked"
        );
        hb.expect_enforcer(true);
        hb.enforcer.store(0, Ordering::Relaxed);
        assert_eq!(
            hb.stalled(12_000, 10_000),
            Some("the nftables enforcer is stalled")
        );
    }

    #[derive(Debug, Default, Clone)]
    struct Counted(Arc<AtomicU64>, Arc<AtomicBool>);

    impl Pet for Counted {
        fn pet(&mut self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn disarm(&mut self) -> io::Result<()> {
            self.1.store(true, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn petting_stops_while_the_loop_stalls_and_the_device_is_disarmed_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let hb = Heartbeats::new();
        let dog = Counted::default();
        let cfg = WatchdogConfig {
            device: None,
            timeout_secs: 3,
            max_stall_secs: 1,
        };
        hb.beat_loop();
        let handle = spawn(Box::new(dog.clone()), &cfg, hb.clone(), store).unwrap();
        // Healthy: the loop beats; pets arrive every second.
        for _ in 0..25 {
            hb.beat_loop();
            std::thread::sleep(Duration::from_millis(100));
        }
        let healthy = dog.0.load(Ordering::Relaxed);
        assert!(healthy >= 2, "petted {healthy} times in 2.5 s");
        // The loop stalls: after the stall limit, no more pets.
        std::thread::sleep(Duration::from_millis(1_200));
        let at_stall = dog.0.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2_200));
        assert_eq!(
            dog.0.load(Ordering::Relaxed),
            at_stall,
            "petted while stalled"
        );
        drop(handle);
        assert!(dog.1.load(Ordering::Relaxed), "disarmed on a clean stop");
    }
}
