//! Outpost firmware: the daemon's driver, store, config and admin plane.
