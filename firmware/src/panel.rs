//! The front panel in the daemon: a thread that drives the `board` (LCD, buttons, LEDs)
//! with `board::panel`'s screens, fed by the daemon's status snapshot, and hands the
//! actions chosen on the panel (acknowledge alerts, unban, network, reboot, factory reset)
//! back to the daemon's loop. The board is never allowed to block the SIP loop: its I2C and
//! GPIO calls run on this thread only, and an absent or unplugged LCD is retried quietly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use board::backend::Board;
use board::leds::Led;
use board::panel::{Panel, PanelAction, PanelStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// How often keys are polled (debouncing needs ~10 ms).
const TICK: Duration = Duration::from_millis(10);

/// `[panel]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PanelConfig {
    /// `none`, `sim` (drawn in the terminal, keys from stdin) or `linux` (the devices of
    /// `profile`).
    pub backend: String,
    /// Board profile: a built-in name (`rpi4`, `qemu-virt`) or a TOML file.
    pub profile: String,
    /// Simulated LCD size (the linux backend takes it from the profile).
    pub cols: u8,
    pub rows: u8,
    /// The panel may reboot the box (off in the demo: it only logs the request).
    pub allow_reboot: bool,
    /// The panel may wipe the data and reboot (factory reset; off in the demo).
    pub allow_factory_reset: bool,
}

impl Default for PanelConfig {
    fn default() -> Self {
        PanelConfig {
            backend: "none".to_string(),
            profile: "qemu-virt".to_string(),
            cols: 20,
            rows: 4,
            allow_reboot: false,
            allow_factory_reset: false,
        }
    }
}

impl PanelConfig {
    /// Range checks: (key, reason) on error.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !matches!(self.backend.as_str(), "none" | "sim" | "linux") {
            return Err(("panel.backend", "must be none, sim or linux".to_string()));
        }
        if !matches!(
            (self.cols, self.rows),
            (16, 2) | (20, 4) | (16, 4) | (20, 2)
        ) {
            return Err((
                "panel.cols",
                "the LCD must be 16x2, 16x4, 20x2 or 20x4".to_string(),
            ));
        }
        if self.backend == "linux" {
            self.profile()
                .map_err(|e| ("panel.profile", e.to_string()))?;
        }
        Ok(())
    }

    /// The board's watchdog when the panel runs on the real board (`backend = "linux"`)
    /// and its profile has one: the device and the longest timeout it accepts.
    pub fn board_watchdog(&self) -> Option<board::profile::WatchdogProfile> {
        (self.backend == "linux")
            .then(|| self.profile().ok())
            .flatten()
            .and_then(|p| p.watchdog)
    }

    fn profile(&self) -> Result<board::profile::BoardProfile, board::profile::ProfileError> {
        match board::profile::BoardProfile::builtin(&self.profile) {
            Ok(p) => Ok(p),
            Err(_) => board::profile::BoardProfile::load(PathBuf::from(&self.profile)),
        }
    }
}

/// The running panel thread; dropping it stops the thread.
#[derive(Debug)]
pub struct PanelHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PanelHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the panel (none for `backend = "none"`); actions chosen on it arrive on `actions`.
pub fn start(
    cfg: &PanelConfig,
    status: watch::Receiver<PanelStatus>,
    actions: mpsc::Sender<PanelAction>,
) -> Option<PanelHandle> {
    let board: Box<dyn Board> = match cfg.backend.as_str() {
        "sim" => Box::new(board::backend::sim::SimBoard::stdio(cfg.cols, cfg.rows)),
        "linux" => {
            let profile = match cfg.profile() {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(%err, "front panel: bad board profile; panel off");
                    return None;
                }
            };
            let (board, problems) = board::backend::linux::LinuxBoard::open(&profile);
            for p in problems {
                tracing::warn!(problem = %p, "front panel: part missing");
            }
            Box::new(board)
        }
        _ => return None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("front-panel".into())
        .spawn(move || run(board, status, actions, &stopping))
        .map_err(|err| tracing::error!(%err, "front panel: cannot start its thread"))
        .ok()?;
    tracing::info!(backend = %cfg.backend, "front panel started");
    Some(PanelHandle {
        stop,
        thread: Some(thread),
    })
}

fn run(
    mut board: Box<dyn Board>,
    status: watch::Receiver<PanelStatus>,
    actions: mpsc::Sender<PanelAction>,
    stop: &AtomicBool,
) {
    let (cols, rows) = board.geometry();
    let mut panel = Panel::new(cols, rows);
    let start = Instant::now();
    let mut reported = false;
    while !stop.load(Ordering::Relaxed) {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let snapshot = status.borrow().clone();
        panel.update(now, &snapshot);
        match board.poll_keys(now) {
            Ok(keys) => {
                for key in keys {
                    if let Some(action) = panel.key(now, key) {
                        tracing::info!(?action, "front panel action");
                        if actions.try_send(action).is_err() {
                            tracing::warn!("front panel: the daemon is busy; action dropped");
                        }
                    }
                }
            }
            Err(err) if !reported => {
                tracing::warn!(%err, "front panel: cannot read the buttons");
                reported = true;
            }
            Err(_) => {}
        }
        // The board retries an unplugged LCD itself and reports each outage once.
        let _ = board.show(now, &panel.lines());
        let _ = board.set_led(Led::Alert, panel.alert_led());
        let _ = board.set_led(Led::Status, !snapshot.survival);
        std::thread::sleep(TICK);
    }
}
