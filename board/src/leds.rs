//! The front-panel LEDs: alert and status, on gpiocdev output lines.

use gpiocdev::line::Value;

use crate::buttons::GpioError;
use crate::profile::LedsProfile;

/// A front-panel LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Led {
    /// Lit while unacknowledged alerts exist.
    Alert,
    /// The daemon's heartbeat / "system OK" LED.
    Status,
}

/// The two LEDs as gpiocdev output lines (both start off).
#[derive(Debug)]
pub struct GpioLeds {
    request: gpiocdev::Request,
    profile: LedsProfile,
}

impl GpioLeds {
    /// Requests the profile's two lines as outputs, both off.
    pub fn open(profile: &LedsProfile) -> Result<Self, GpioError> {
        let offsets = [profile.alert, profile.status];
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(profile.chip.clone())
            .with_consumer("outpost-leds")
            .with_lines(&offsets);
        if profile.active_low {
            builder.as_active_low();
        }
        builder.as_output(Value::Inactive);
        let request = builder.request().map_err(|source| GpioError::Request {
            chip: profile.chip.clone(),
            offsets: offsets.to_vec(),
            source,
        })?;
        Ok(Self {
            request,
            profile: profile.clone(),
        })
    }

    /// Switches one LED.
    pub fn set(&mut self, led: Led, on: bool) -> Result<(), GpioError> {
        let offset = match led {
            Led::Alert => self.profile.alert,
            Led::Status => self.profile.status,
        };
        let value = if on { Value::Active } else { Value::Inactive };
        self.request
            .set_value(offset, value)
            .map(drop)
            .map_err(|source| GpioError::Access {
                chip: self.profile.chip.clone(),
                source,
            })
    }
}
