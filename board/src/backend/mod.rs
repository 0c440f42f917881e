//! Front-panel backends: real devices (`linux`) and a terminal stand-in (`sim`).
//!
//! The daemon owns one `Box<dyn Board>`, sized a [`crate::Panel`] from [`Board::geometry`],
//! and on each tick (every ~10 ms for the buttons) calls [`Board::poll_keys`], feeds the
//! events to the panel, and pushes [`crate::Panel::lines`] and the alert LED back with
//! [`Board::show`] and [`Board::set_led`]. Calls block (I2C writes, delays of a few ms), so
//! the daemon drives the board from its own thread or `spawn_blocking`, never from the
//! SIP task.

pub mod linux;
pub mod sim;

use crate::buttons::{GpioError, KeyEvent};
use crate::lcd::LcdError;
use crate::leds::Led;
use crate::Millis;

/// Errors of a board backend.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The LCD failed (absent, bus error).
    #[error(transparent)]
    Lcd(#[from] LcdError),
    /// A GPIO request or access failed.
    #[error(transparent)]
    Gpio(#[from] GpioError),
    /// Opening the I2C bus failed.
    #[error("cannot open I2C bus {bus}: {detail}")]
    I2cBus {
        /// The bus device.
        bus: std::path::PathBuf,
        /// What the OS said.
        detail: String,
    },
    /// Writing the simulated panel failed.
    #[error("cannot draw the simulated panel: {0}")]
    Sim(#[from] std::io::Error),
}

/// Which parts of the front panel are there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// The LCD answered its last init and write.
    pub lcd: bool,
    /// The buttons are readable.
    pub buttons: bool,
    /// The LEDs are drivable.
    pub leds: bool,
}

/// A front panel: an LCD to show lines on, keys to poll, LEDs to switch.
pub trait Board: Send + std::fmt::Debug {
    /// Columns and rows of the display (the panel is laid out for these).
    fn geometry(&self) -> (u8, u8);

    /// Shows `lines` (one per row); an absent LCD is a no-op, retried every few seconds.
    fn show(&mut self, now: Millis, lines: &[String]) -> Result<(), BoardError>;

    /// Debounced key events since the last call; call about every 10 ms.
    fn poll_keys(&mut self, now: Millis) -> Result<Vec<KeyEvent>, BoardError>;

    /// Switches an LED (a no-op when the board has none).
    fn set_led(&mut self, led: Led, on: bool) -> Result<(), BoardError>;

    /// Which parts are present right now.
    fn present(&self) -> Presence;
}
