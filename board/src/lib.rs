//! Outpost's front panel: LCD, buttons, LEDs and watchdog over embedded-hal 1.0.
//!
//! Layers, from the hardware up:
//! - drivers: [`lcd`] (HD44780 behind a PCF8574 I2C backpack), [`buttons`] (debounce state
//!   machine plus gpiocdev input lines), [`leds`] (gpiocdev output lines), [`watchdog`]
//!   (`/dev/watchdog` through ioctls);
//! - [`profile`]: which of those a given box has, read from a TOML board profile;
//! - [`backend`]: the [`Board`] trait with a `linux` backend (real devices) and a `sim`
//!   backend (the LCD drawn in a terminal, keys from stdin);
//! - [`panel`]: the pure front-panel state machine (status screens, menus, confirmations)
//!   that turns a status snapshot and key presses into LCD lines and actions.
//!
//! The daemon owns the clock: every time here is a [`Millis`] passed in by the caller.

pub mod backend;
pub mod buttons;
pub mod lcd;
pub mod leds;
pub mod panel;
pub mod profile;
// The watchdog is driven through ioctls, which nix only offers as `unsafe fn`s; every call
// site carries a SAFETY comment.
#[allow(unsafe_code)]
pub mod watchdog;

pub use backend::linux::LinuxBoard;
pub use backend::sim::SimBoard;
pub use backend::{Board, BoardError, Presence};
pub use buttons::{Debouncer, Key, KeyEvent};
pub use leds::Led;
pub use panel::{NetworkInfo, NetworkMode, NetworkSetting, Panel, PanelAction, PanelStatus};
pub use profile::{BoardProfile, ProfileError};
pub use watchdog::{Watchdog, WatchdogError};

/// Milliseconds since the Unix epoch, passed in by the caller (the unit of `pbx_core::Millis`).
pub type Millis = u64;
