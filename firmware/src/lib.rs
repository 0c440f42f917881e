//! Outpost firmware: the daemon's driver, store, config and admin plane.

pub mod admin;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod guard;
pub mod media;
pub mod pbx_config;
pub mod store;
