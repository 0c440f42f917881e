//! Outpost firmware: the daemon's driver, store, config and admin plane.

pub mod admin;
pub mod backup;
pub mod config;
pub mod console;
pub mod daemon;
pub mod driver;
pub mod fallback;
pub mod guard;
pub mod http;
pub mod media;
pub mod metrics;
pub mod names;
pub mod netif;
pub mod panel;
pub mod pbx_config;
pub mod revisions;
pub mod ssh;
pub mod store;
pub mod syslog;
pub mod system;
pub mod update;
pub mod watchdog;
