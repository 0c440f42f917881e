//! The real front panel: LCD over `/dev/i2c-*`, buttons and LEDs over gpiocdev.

use linux_embedded_hal::{Delay, I2cdev};

use crate::backend::{Board, BoardError, Presence};
use crate::buttons::{GpioButtons, KeyEvent};
use crate::lcd::Lcd;
use crate::leds::{GpioLeds, Led};
use crate::profile::BoardProfile;
use crate::Millis;

/// How long to wait between attempts to bring back an absent LCD.
pub const LCD_RETRY_MS: Millis = 5_000;

/// Geometry assumed when the profile has no LCD (for the panel logic and the sim).
pub const DEFAULT_GEOMETRY: (u8, u8) = (20, 4);

/// The front panel of a real box, built from a [`BoardProfile`].
#[derive(Debug)]
pub struct LinuxBoard {
    lcd: Option<Lcd<I2cdev, Delay>>,
    geometry: (u8, u8),
    /// Earliest time of the next init attempt while the LCD is absent.
    lcd_retry_at: Millis,
    /// The current LCD outage has been reported once; later retries fail quietly.
    lcd_outage_reported: bool,
    buttons: Option<GpioButtons>,
    leds: Option<GpioLeds>,
}

impl LinuxBoard {
    /// Opens what the profile lists; parts that fail are left out and their errors returned.
    ///
    /// An LCD that does not answer yet is kept and retried every [`LCD_RETRY_MS`] by
    /// [`Board::show`]; a missing I2C bus or GPIO chip leaves that part out for good.
    pub fn open(profile: &BoardProfile) -> (Self, Vec<BoardError>) {
        let mut errors = Vec::new();
        let mut geometry = DEFAULT_GEOMETRY;
        let lcd = profile.lcd.as_ref().and_then(|p| {
            geometry = (p.cols, p.rows);
            let i2c = I2cdev::new(&p.bus)
                .map_err(|e| BoardError::I2cBus {
                    bus: p.bus.clone(),
                    detail: e.to_string(),
                })
                .map_err(|e| errors.push(e))
                .ok()?;
            let mut lcd = Lcd::new(i2c, p.addr, p.cols, p.rows, Delay)
                .map_err(|e| errors.push(e.into()))
                .ok()?;
            if let Err(e) = lcd.init() {
                errors.push(e.into());
            }
            Some(lcd)
        });
        let lcd_outage_reported = lcd.as_ref().is_some_and(|l| !l.present());
        let buttons = profile
            .buttons
            .as_ref()
            .and_then(|p| GpioButtons::open(p).map_err(|e| errors.push(e.into())).ok());
        let leds = profile
            .leds
            .as_ref()
            .and_then(|p| GpioLeds::open(p).map_err(|e| errors.push(e.into())).ok());
        let board = Self {
            lcd,
            geometry,
            lcd_retry_at: 0,
            lcd_outage_reported,
            buttons,
            leds,
        };
        (board, errors)
    }
}

impl Board for LinuxBoard {
    fn geometry(&self) -> (u8, u8) {
        self.geometry
    }

    fn show(&mut self, now: Millis, lines: &[String]) -> Result<(), BoardError> {
        let Some(lcd) = self.lcd.as_mut() else {
            return Ok(());
        };
        if !lcd.present() {
            if now < self.lcd_retry_at {
                return Ok(());
            }
            self.lcd_retry_at = now.saturating_add(LCD_RETRY_MS);
            if let Err(e) = lcd.init() {
                return if self.lcd_outage_reported {
                    Ok(())
                } else {
                    self.lcd_outage_reported = true;
                    Err(e.into())
                };
            }
            self.lcd_outage_reported = false;
        }
        let result = lcd.write_lines(lines);
        if result.is_err() {
            self.lcd_outage_reported = true;
            self.lcd_retry_at = now.saturating_add(LCD_RETRY_MS);
        }
        Ok(result?)
    }

    fn poll_keys(&mut self, now: Millis) -> Result<Vec<KeyEvent>, BoardError> {
        match self.buttons.as_mut() {
            Some(buttons) => Ok(buttons.poll(now)?),
            None => Ok(Vec::new()),
        }
    }

    fn set_led(&mut self, led: Led, on: bool) -> Result<(), BoardError> {
        match self.leds.as_mut() {
            Some(leds) => Ok(leds.set(led, on)?),
            None => Ok(()),
        }
    }

    fn present(&self) -> Presence {
        Presence {
            lcd: self.lcd.as_ref().is_some_and(Lcd::present),
            buttons: self.buttons.is_some(),
            leds: self.leds.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_profile_opens_with_nothing_present_and_no_errors() {
        let profile = BoardProfile::builtin("qemu-virt").expect("profile");
        let (mut board, errors) = LinuxBoard::open(&profile);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(board.present(), Presence::default());
        assert_eq!(board.geometry(), DEFAULT_GEOMETRY);
        board.show(0, &["x".to_string()]).expect("no lcd: no-op");
        assert!(board.poll_keys(0).expect("no buttons").is_empty());
        board.set_led(Led::Alert, true).expect("no leds: no-op");
    }

    #[test]
    fn missing_devices_are_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "name = \"t\"\n[lcd]\nbus = \"{0}/i2c-9\"\naddr = 0x27\ncols = 16\nrows = 2\n\
             [buttons]\nchip = \"{0}/gpiochip9\"\nup = 1\ndown = 2\nok = 3\nback = 4\n\
             [leds]\nchip = \"{0}/gpiochip9\"\nalert = 5\nstatus = 6\n",
            dir.path().display()
        );
        let profile = BoardProfile::from_toml(&text).expect("profile");
        let (board, errors) = LinuxBoard::open(&profile);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(matches!(errors[0], BoardError::I2cBus { .. }));
        assert_eq!(board.present(), Presence::default());
        assert_eq!(board.geometry(), (16, 2));
    }
}
