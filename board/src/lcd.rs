//! HD44780 character LCD behind a PCF8574 I2C backpack, on embedded-hal 1.0.
//!
//! The bit-level protocol (4-bit mode, PCF8574 bits RS=P0, RW=P1, EN=P2, backlight=P3,
//! D4-D7=P4-P7) comes from the `i2c-character-display` crate; this wrapper adds what an
//! appliance needs on top: a fixed geometry, whole-screen updates that only rewrite the rows
//! that changed, ASCII-only output, and recovery from an unplugged display. Any I2C error
//! marks the display absent; the caller retries with [`Lcd::init`] later.
//!
//! Known limit of the crate (0.6): its init sends "clear" and "return home" back to back
//! without the ~1.5 ms execution wait. [`Lcd::init`] therefore clears again (with the wait)
//! so the screen is in a known state afterwards.

use std::fmt;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{Error as _, ErrorKind, I2c};
use i2c_character_display::{CharacterDisplayError, CharacterDisplayPCF8574T, LcdDisplayType};

/// The usual I2C address of a PCF8574T backpack (0x3F for the PCF8574AT).
pub const DEFAULT_ADDR: u8 = 0x27;

/// Errors of the LCD driver.
#[derive(Debug, thiserror::Error)]
pub enum LcdError {
    /// Nothing acknowledged at the address: the display is unplugged or at another address.
    #[error("no LCD answers at I2C address {addr:#04x}")]
    Absent {
        /// The I2C address tried.
        addr: u8,
    },
    /// The bus reported another error.
    #[error("I2C error talking to the LCD at {addr:#04x}: {kind:?}")]
    Bus {
        /// The I2C address tried.
        addr: u8,
        /// What the bus said.
        kind: ErrorKind,
    },
    /// The geometry is not one an HD44780 behind a single PCF8574 can drive.
    #[error("unsupported LCD geometry {cols}x{rows} (use 8x2, 16x2, 16x4, 20x2, 20x4 or 40x2)")]
    Geometry {
        /// Columns asked for.
        cols: u8,
        /// Rows asked for.
        rows: u8,
    },
    /// The display has not been (re)initialised since it was last found absent.
    #[error("LCD not initialised (absent or failed); call init() to retry")]
    NotPresent,
    /// Any other driver error.
    #[error("LCD driver error: {0}")]
    Driver(String),
}

/// An HD44780 LCD with a PCF8574 backpack; tracks what each row shows.
pub struct Lcd<I2C: I2c, D: DelayNs> {
    display: CharacterDisplayPCF8574T<I2C, D>,
    addr: u8,
    cols: u8,
    rows: u8,
    /// What each row shows now (exactly `cols` chars); `None` when unknown.
    shown: Vec<Option<String>>,
    present: bool,
    backlight: bool,
}

impl<I2C: I2c, D: DelayNs> fmt::Debug for Lcd<I2C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lcd")
            .field("addr", &self.addr)
            .field("cols", &self.cols)
            .field("rows", &self.rows)
            .field("present", &self.present)
            .field("backlight", &self.backlight)
            .finish_non_exhaustive()
    }
}

impl<I2C: I2c, D: DelayNs> Lcd<I2C, D> {
    /// A display of `cols` x `rows` at I2C address `addr`; nothing is sent until [`Lcd::init`].
    pub fn new(i2c: I2C, addr: u8, cols: u8, rows: u8, delay: D) -> Result<Self, LcdError> {
        let kind = display_type(cols, rows).ok_or(LcdError::Geometry { cols, rows })?;
        Ok(Self {
            display: CharacterDisplayPCF8574T::new_with_address(i2c, addr, kind, delay),
            addr,
            cols,
            rows,
            shown: vec![None; usize::from(rows)],
            present: false,
            backlight: true,
        })
    }

    /// Runs the HD44780 4-bit init sequence and clears the screen; on success the LCD is present.
    pub fn init(&mut self) -> Result<(), LcdError> {
        self.present = false;
        self.shown = vec![None; usize::from(self.rows)];
        let result = self
            .display
            .init()
            .and_then(|()| self.display.clear().map(drop))
            .and_then(|()| {
                if self.backlight {
                    Ok(())
                } else {
                    self.display.backlight(false).map(drop)
                }
            });
        result.map_err(|e| self.error(e))?;
        let blank = " ".repeat(usize::from(self.cols));
        self.shown = vec![Some(blank); usize::from(self.rows)];
        self.present = true;
        Ok(())
    }

    /// Shows `lines` (one per row, padded or cut; missing rows blank); rewrites changed rows only.
    pub fn write_lines(&mut self, lines: &[String]) -> Result<(), LcdError> {
        if !self.present {
            return Err(LcdError::NotPresent);
        }
        for row in 0..self.rows {
            let index = usize::from(row);
            let text = fit(
                lines.get(index).map_or("", String::as_str),
                usize::from(self.cols),
            );
            if self.shown[index].as_deref() == Some(text.as_str()) {
                continue;
            }
            // Unknown until the write completes, so a failed write is redone after re-init.
            self.shown[index] = None;
            let result = self
                .display
                .set_cursor(0, row)
                .and_then(|display| display.print(&text).map(drop));
            result.map_err(|e| self.error(e))?;
            self.shown[index] = Some(text);
        }
        Ok(())
    }

    /// Switches the backlight; remembered across re-initialisation.
    pub fn backlight(&mut self, on: bool) -> Result<(), LcdError> {
        self.backlight = on;
        if !self.present {
            return Ok(());
        }
        let result = self.display.backlight(on).map(drop);
        result.map_err(|e| self.error(e))
    }

    /// Whether the last init succeeded and no I2C error happened since.
    pub fn present(&self) -> bool {
        self.present
    }

    /// Columns and rows.
    pub fn geometry(&self) -> (u8, u8) {
        (self.cols, self.rows)
    }

    /// Maps a driver error and marks the display absent.
    fn error(&mut self, e: CharacterDisplayError<I2C>) -> LcdError {
        self.present = false;
        match e {
            CharacterDisplayError::I2cError(e) => match e.kind() {
                ErrorKind::NoAcknowledge(_) => LcdError::Absent { addr: self.addr },
                kind => LcdError::Bus {
                    addr: self.addr,
                    kind,
                },
            },
            other => LcdError::Driver(format!("{other:?}")),
        }
    }
}

/// The driver crate's name for a geometry.
fn display_type(cols: u8, rows: u8) -> Option<LcdDisplayType> {
    match (cols, rows) {
        (8, 2) => Some(LcdDisplayType::Lcd8x2),
        (16, 2) => Some(LcdDisplayType::Lcd16x2),
        (16, 4) => Some(LcdDisplayType::Lcd16x4),
        (20, 2) => Some(LcdDisplayType::Lcd20x2),
        (20, 4) => Some(LcdDisplayType::Lcd20x4),
        (40, 2) => Some(LcdDisplayType::Lcd40x2),
        _ => None,
    }
}

/// Exactly `cols` characters of printable ASCII: truncated, padded with spaces, others as '?'.
pub fn fit(text: &str, cols: usize) -> String {
    let mut out: String = text
        .chars()
        .take(cols)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    let len = out.chars().count();
    out.extend(std::iter::repeat_n(' ', cols - len));
    out
}

#[cfg(test)]
mod tests {
    use embedded_hal::i2c::NoAcknowledgeSource;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const ADDR: u8 = 0x27;
    const EN: u8 = 0b0000_0100;
    const RS: u8 = 0b0000_0001;
    const BL: u8 = 0b0000_1000;

    /// The two PCF8574 writes that latch one nibble: EN high, then EN low.
    fn nibble(value: u8, flags: u8) -> [Transaction; 2] {
        [
            Transaction::write(ADDR, vec![(value << 4) | flags | EN]),
            Transaction::write(ADDR, vec![(value << 4) | flags]),
        ]
    }

    /// A whole byte: high nibble first.
    fn byte(value: u8, flags: u8) -> Vec<Transaction> {
        let mut t = nibble(value >> 4, flags).to_vec();
        t.extend(nibble(value & 0x0F, flags));
        t
    }

    /// The exact bus traffic of `Lcd::init` with the backlight on.
    fn init_sequence() -> Vec<Transaction> {
        vec![
            // 8-bit mode three times (0x33 + 0x3), then 4-bit mode (0x2); backlight still off.
            Transaction::write(ADDR, vec![0x34]),
            Transaction::write(ADDR, vec![0x30]),
            Transaction::write(ADDR, vec![0x34]),
            Transaction::write(ADDR, vec![0x30]),
            Transaction::write(ADDR, vec![0x34]),
            Transaction::write(ADDR, vec![0x30]),
            Transaction::write(ADDR, vec![0x24]),
            Transaction::write(ADDR, vec![0x20]),
            // Function set 0x28 (4-bit, 2 lines, 5x8).
            Transaction::write(ADDR, vec![0x24]),
            Transaction::write(ADDR, vec![0x20]),
            Transaction::write(ADDR, vec![0x84]),
            Transaction::write(ADDR, vec![0x80]),
            // Display on, cursor off, blink off: 0x0C.
            Transaction::write(ADDR, vec![0x04]),
            Transaction::write(ADDR, vec![0x00]),
            Transaction::write(ADDR, vec![0xC4]),
            Transaction::write(ADDR, vec![0xC0]),
            // Entry mode: left to right, no shift: 0x06.
            Transaction::write(ADDR, vec![0x04]),
            Transaction::write(ADDR, vec![0x00]),
            Transaction::write(ADDR, vec![0x64]),
            Transaction::write(ADDR, vec![0x60]),
            // Clear 0x01, return home 0x02.
            Transaction::write(ADDR, vec![0x04]),
            Transaction::write(ADDR, vec![0x00]),
            Transaction::write(ADDR, vec![0x14]),
            Transaction::write(ADDR, vec![0x10]),
            Transaction::write(ADDR, vec![0x04]),
            Transaction::write(ADDR, vec![0x00]),
            Transaction::write(ADDR, vec![0x24]),
            Transaction::write(ADDR, vec![0x20]),
            // Backlight on (D4-D7 still hold the last nibble, 0x2).
            Transaction::write(ADDR, vec![0x28]),
            // Our own clear with the execution wait, backlight bit now set.
            Transaction::write(ADDR, vec![0x0C]),
            Transaction::write(ADDR, vec![0x08]),
            Transaction::write(ADDR, vec![0x1C]),
            Transaction::write(ADDR, vec![0x18]),
        ]
    }

    fn lcd(expect: &[Transaction]) -> (Lcd<Mock, NoopDelay>, Mock) {
        let mock = Mock::new(expect);
        let lcd = Lcd::new(mock.clone(), ADDR, 16, 2, NoopDelay).expect("16x2 is supported");
        (lcd, mock)
    }

    #[test]
    fn init_writes_the_hd44780_4bit_sequence() {
        let (mut lcd, mut mock) = lcd(&init_sequence());
        assert!(!lcd.present());
        lcd.init().expect("mock acknowledges everything");
        assert!(lcd.present());
        mock.done();
    }

    #[test]
    fn writing_hi_on_line_one_sends_cursor_then_padded_text() {
        let mut expect = init_sequence();
        // Set DDRAM address 0x00 (row 0): command 0x80, RS low, backlight on.
        expect.extend(byte(0x80, BL));
        // 'H' = 0x48 and 'i' = 0x69 as data (RS high), each nibble latched by an EN pulse.
        expect.extend([
            Transaction::write(ADDR, vec![0x4D]),
            Transaction::write(ADDR, vec![0x49]),
            Transaction::write(ADDR, vec![0x8D]),
            Transaction::write(ADDR, vec![0x89]),
            Transaction::write(ADDR, vec![0x6D]),
            Transaction::write(ADDR, vec![0x69]),
            Transaction::write(ADDR, vec![0x9D]),
            Transaction::write(ADDR, vec![0x99]),
        ]);
        // The rest of the 16 columns are padded with spaces (0x20).
        for _ in 0..14 {
            expect.extend(byte(b' ', BL | RS));
        }
        // Second write of the same lines: nothing on the bus. Then only row 1 changes.
        expect.extend(byte(0xC0, BL));
        expect.extend(byte(b'O', BL | RS));
        expect.extend(byte(b'K', BL | RS));
        for _ in 0..14 {
            expect.extend(byte(b' ', BL | RS));
        }
        let (mut lcd, mut mock) = lcd(&expect);
        lcd.init().expect("init");
        lcd.write_lines(&["Hi".to_string()]).expect("write Hi");
        lcd.write_lines(&["Hi".to_string(), String::new()])
            .expect("unchanged");
        lcd.write_lines(&["Hi".to_string(), "OK".to_string()])
            .expect("row 1");
        mock.done();
    }

    #[test]
    fn backlight_off_clears_bit_in_later_writes() {
        let mut expect = init_sequence();
        // Backlight off; D4-D7 still hold the last nibble of the clear (0x1).
        expect.push(Transaction::write(ADDR, vec![0x10]));
        expect.extend(byte(0x80, 0));
        expect.extend(byte(b'A', RS));
        for _ in 0..15 {
            expect.extend(byte(b' ', RS));
        }
        let (mut lcd, mut mock) = lcd(&expect);
        lcd.init().expect("init");
        lcd.backlight(false).expect("backlight");
        lcd.write_lines(&["A".to_string()]).expect("write");
        mock.done();
    }

    #[test]
    fn nack_gives_error_marks_absent_and_init_can_retry() {
        let mut expect = vec![Transaction::write(ADDR, vec![0x34])
            .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address))];
        expect.extend(init_sequence());
        let (mut lcd, mut mock) = lcd(&expect);
        let err = lcd.init().expect_err("unplugged");
        assert!(matches!(err, LcdError::Absent { addr: ADDR }), "{err:?}");
        assert!(!lcd.present());
        assert!(matches!(
            lcd.write_lines(&["x".to_string()]),
            Err(LcdError::NotPresent)
        ));
        // Plugged back in: a retry succeeds.
        lcd.init().expect("retry");
        assert!(lcd.present());
        mock.done();
    }

    #[test]
    fn nack_mid_write_marks_absent_and_rewrites_after_reinit() {
        let mut expect = init_sequence();
        expect.push(
            Transaction::write(ADDR, vec![0x8C])
                .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data)),
        );
        let (mut lcd, mut mock) = lcd(&expect);
        lcd.init().expect("init");
        let err = lcd.write_lines(&["Hi".to_string()]).expect_err("nack");
        assert!(matches!(err, LcdError::Absent { .. }), "{err:?}");
        assert!(!lcd.present());
        mock.done();
    }

    #[test]
    fn unsupported_geometry_is_an_error() {
        let mock = Mock::new(&[]);
        let err = Lcd::new(mock.clone(), ADDR, 40, 4, NoopDelay).expect_err("40x4");
        assert!(matches!(err, LcdError::Geometry { cols: 40, rows: 4 }));
        let mut mock = mock;
        mock.done();
    }

    #[test]
    fn fit_pads_truncates_and_replaces_non_ascii() {
        assert_eq!(fit("Hi", 4), "Hi  ");
        assert_eq!(fit("Hello world", 5), "Hello");
        assert_eq!(fit("Zürich\t", 8), "Z?rich? ");
        assert_eq!(fit("", 3), "   ");
    }
}
