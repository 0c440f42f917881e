//! Media I/O: the RTP relay that moves the packets of every call between its two legs.
//!
//! The call core decides what flows where ([`pbx_core::media::session`]); this module owns
//! the sockets.

pub mod relay;

pub use relay::{start, Relay, RelayConfig, RelayCounters};
