//! Outpost's SIP-aware firewall.
//!
//! Layout: [`detect`] turns observations of SIP traffic (and the call core's feedback) into
//! verdicts, [`policy`] applies the toll-fraud rules to outbound call attempts. Both are pure
//! and deterministic like pbx-core: no I/O, no clock, no tokio; time is an argument
//! ([`Millis`]). The enforcement half (`nft`: the `inet outpost` table and batched set updates
//! through `nft -j`) is the only I/O and lives in its own module.

pub mod detect;
pub mod net;
pub mod nft;
pub mod policy;

mod table;
mod window;

/// Wall-clock time in milliseconds since the Unix epoch, supplied by the caller
/// (the same convention as `pbx_core::Millis`).
pub type Millis = u64;
