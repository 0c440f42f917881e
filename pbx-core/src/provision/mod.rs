//! Desk-phone auto-provisioning, sans-IO: MAC addresses and the request paths of each
//! vendor ([`mac`]), the vendors and their models ([`vendor`]), the time zone phones show
//! ([`tz`]), and each vendor's configuration file generated from a phone's
//! [`files::Profile`] ([`files`]). The firmware
//! serves these files over HTTP(S) to authenticated phones (`docs/provisioning.md`).

pub mod files;
pub mod mac;
pub mod tz;
pub mod vendor;

pub use files::{common_file, phone_file, File, Profile, Transport};
pub use mac::{parse_path, Mac, MacError, PhoneFile, Wanted};
pub use tz::{Change, Dst, TimeZone};
pub use vendor::Vendor;

/// Most phones the box provisions.
pub const MAX_PHONES: usize = 1_000;

/// Most BLF keys one phone is given (`--keys`).
pub const MAX_BLF_KEYS: usize = 16;
