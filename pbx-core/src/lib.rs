//! Sans-IO telephony core of Outpost.
//!
//! No sockets, no clocks, no async runtime: time is an argument ([`Millis`]), I/O is data.
//! The firmware driver feeds datagrams and stream-framed messages into
//! [`endpoint::Endpoint::handle`] and drains `poll_transmit`, `poll_event` and `poll_timeout`.

pub mod cdr;
pub mod dialplan;
pub mod endpoint;
pub mod lockout;
pub mod media;
pub mod provision;
pub mod registrar;
pub mod sip;
pub mod trunk;

/// Wall-clock time in milliseconds since the Unix epoch, supplied by the caller.
///
/// The driver derives it from a monotonic clock anchored at start, so it never steps
/// backwards; tests use any number as a virtual clock.
pub type Millis = u64;
