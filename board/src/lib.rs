//! Outpost's front panel: LCD, buttons, LEDs and watchdog over embedded-hal 1.0.
//!
//! Planned layout (the management issue fills it): drivers for an HD44780 behind a PCF8574,
//! buttons and LEDs through gpiocdev, /dev/watchdog, with `linux` and `sim` backends.
//! Nothing here is wired into the daemon yet.
