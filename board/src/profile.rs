//! Board profiles: which front-panel hardware a box has and where, as TOML.
//!
//! Every section is optional; a missing section means that part is absent (a VM has no LCD).
//! Profiles shipped with the firmware live in `board/profiles/` and are built in
//! ([`BoardProfile::builtin`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Names of the profiles built into the firmware.
pub const BUILTIN: [&str; 2] = ["qemu-virt", "rpi4"];

const QEMU_VIRT: &str = include_str!("../profiles/qemu-virt.toml");
const RPI4: &str = include_str!("../profiles/rpi4.toml");

/// Errors reading a board profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read board profile {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("bad board profile: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values are inconsistent.
    #[error("bad board profile: {0}")]
    Invalid(String),
    /// No built-in profile of that name.
    #[error("no built-in board profile {0:?} (known: qemu-virt, rpi4)")]
    Unknown(String),
}

/// The front-panel hardware of one kind of box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Short name, e.g. "rpi4".
    pub name: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// The character LCD, if any.
    #[serde(default)]
    pub lcd: Option<LcdProfile>,
    /// The four buttons, if any.
    #[serde(default)]
    pub buttons: Option<ButtonsProfile>,
    /// The LEDs, if any.
    #[serde(default)]
    pub leds: Option<LedsProfile>,
    /// The hardware watchdog, if any.
    #[serde(default)]
    pub watchdog: Option<WatchdogProfile>,
}

/// An HD44780 LCD behind a PCF8574 I2C backpack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LcdProfile {
    /// The I2C bus device, e.g. "/dev/i2c-1".
    pub bus: PathBuf,
    /// 7-bit I2C address, usually 0x27 (PCF8574T) or 0x3F (PCF8574AT).
    pub addr: u8,
    /// Columns (16 or 20).
    pub cols: u8,
    /// Rows (2 or 4).
    pub rows: u8,
}

/// Line bias for the button inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pull {
    /// Leave the bias as the kernel/device tree has it.
    #[default]
    AsIs,
    /// Internal pull-up (buttons switching to ground, with `active_low = true`).
    Up,
    /// Internal pull-down (buttons switching to 3.3 V).
    Down,
    /// No bias (external resistors).
    Disabled,
}

/// Four buttons on one gpiochip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonsProfile {
    /// The gpiochip device, e.g. "/dev/gpiochip0".
    pub chip: PathBuf,
    /// Line offset of Up.
    pub up: u32,
    /// Line offset of Down.
    pub down: u32,
    /// Line offset of OK.
    pub ok: u32,
    /// Line offset of Back.
    pub back: u32,
    /// A pressed button reads low.
    #[serde(default)]
    pub active_low: bool,
    /// Line bias.
    #[serde(default)]
    pub pull: Pull,
}

/// The alert and status LEDs on one gpiochip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedsProfile {
    /// The gpiochip device.
    pub chip: PathBuf,
    /// Line offset of the alert LED.
    pub alert: u32,
    /// Line offset of the status LED.
    pub status: u32,
    /// An LED lights when its line is driven low.
    #[serde(default)]
    pub active_low: bool,
}

/// The hardware watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogProfile {
    /// The device, usually "/dev/watchdog".
    pub device: PathBuf,
    /// Seconds without a keepalive before the hardware resets the box.
    pub timeout_secs: u32,
    /// The longest timeout the hardware accepts (the daemon's `[watchdog] timeout_secs` is
    /// checked against it); none = [`crate::watchdog::MAX_TIMEOUT_SECS`].
    #[serde(default)]
    pub max_timeout_secs: Option<u32>,
}

impl WatchdogProfile {
    /// The longest timeout this watchdog accepts.
    pub fn max_timeout(&self) -> u32 {
        self.max_timeout_secs
            .unwrap_or(crate::watchdog::MAX_TIMEOUT_SECS)
    }
}

impl BoardProfile {
    /// Parses and validates a profile.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let profile: Self = toml::from_str(text)?;
        profile.validate()?;
        Ok(profile)
    }

    /// Reads, parses and validates a profile file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// One of the profiles shipped in `board/profiles/` (see [`BUILTIN`]).
    pub fn builtin(name: &str) -> Result<Self, ProfileError> {
        match name {
            "qemu-virt" => Self::from_toml(QEMU_VIRT),
            "rpi4" => Self::from_toml(RPI4),
            other => Err(ProfileError::Unknown(other.to_string())),
        }
    }

    /// Checks values that TOML types cannot express.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let invalid = |msg: String| Err(ProfileError::Invalid(msg));
        if let Some(lcd) = &self.lcd {
            if lcd.addr > 0x7F {
                return invalid(format!("lcd.addr {:#x} is not a 7-bit address", lcd.addr));
            }
            let supported = matches!(
                (lcd.cols, lcd.rows),
                (8, 2) | (16, 2) | (16, 4) | (20, 2) | (20, 4) | (40, 2)
            );
            if !supported {
                return invalid(format!(
                    "lcd geometry {}x{} unsupported (8x2, 16x2, 16x4, 20x2, 20x4, 40x2)",
                    lcd.cols, lcd.rows
                ));
            }
        }
        if let Some(b) = &self.buttons {
            let lines: HashSet<u32> = [b.up, b.down, b.ok, b.back].into_iter().collect();
            if lines.len() != 4 {
                return invalid("buttons: up, down, ok and back need four distinct lines".into());
            }
        }
        if let Some(l) = &self.leds {
            if l.alert == l.status {
                return invalid("leds: alert and status need distinct lines".into());
            }
        }
        if let Some(w) = &self.watchdog {
            if w.timeout_secs == 0 || w.timeout_secs > w.max_timeout() {
                return invalid(format!(
                    "watchdog.timeout_secs {} out of range (1..=3600)",
                    w.timeout_secs
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpi4_profile_has_lcd_buttons_leds_and_watchdog() {
        let p = BoardProfile::builtin("rpi4").expect("rpi4 parses");
        let lcd = p.lcd.expect("lcd");
        assert_eq!(lcd.bus, PathBuf::from("/dev/i2c-1"));
        assert_eq!((lcd.addr, lcd.cols, lcd.rows), (0x27, 20, 4));
        let b = p.buttons.expect("buttons");
        assert_eq!((b.up, b.down, b.ok, b.back), (5, 6, 13, 19));
        assert!(b.active_low);
        assert_eq!(b.pull, Pull::Up);
        let l = p.leds.expect("leds");
        assert_eq!((l.alert, l.status), (20, 21));
        let w = p.watchdog.expect("watchdog");
        assert_eq!(w.device, PathBuf::from("/dev/watchdog"));
        assert_eq!(w.timeout_secs, 15);
    }

    #[test]
    fn qemu_profile_has_only_a_watchdog() {
        let p = BoardProfile::builtin("qemu-virt").expect("qemu-virt parses");
        assert!(p.lcd.is_none() && p.buttons.is_none() && p.leds.is_none());
        assert_eq!(p.watchdog.expect("watchdog").timeout_secs, 15);
    }

    #[test]
    fn shipped_files_match_builtins() {
        for name in BUILTIN {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("profiles")
                .join(format!("{name}.toml"));
            let loaded = BoardProfile::load(&path).expect("load");
            assert_eq!(loaded, BoardProfile::builtin(name).expect("builtin"));
            assert_eq!(loaded.name, name);
        }
        assert!(matches!(
            BoardProfile::builtin("pc"),
            Err(ProfileError::Unknown(_))
        ));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = BoardProfile::from_toml(
            "name = \"x\"\n[lcd]\nbus = \"/dev/i2c-1\"\naddr = 0x27\ncols = 16\nrows = 2\ncolour = \"blue\"\n",
        )
        .expect_err("unknown field");
        assert!(matches!(err, ProfileError::Parse(_)), "{err:?}");
        assert!(BoardProfile::from_toml("name = \"x\"\n[display]\n").is_err());
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let bad_geometry =
            "name = \"x\"\n[lcd]\nbus = \"/dev/i2c-1\"\naddr = 0x27\ncols = 40\nrows = 4\n";
        assert!(matches!(
            BoardProfile::from_toml(bad_geometry),
            Err(ProfileError::Invalid(_))
        ));
        let same_line = "name = \"x\"\n[buttons]\nchip = \"/dev/gpiochip0\"\nup = 5\ndown = 5\nok = 13\nback = 19\n";
        assert!(matches!(
            BoardProfile::from_toml(same_line),
            Err(ProfileError::Invalid(_))
        ));
        let zero_timeout =
            "name = \"x\"\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout_secs = 0\n";
        assert!(matches!(
            BoardProfile::from_toml(zero_timeout),
            Err(ProfileError::Invalid(_))
        ));
    }
}
