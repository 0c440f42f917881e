//! Media I/O: the RTP relay that moves the packets of every call between its two legs, and
//! plays prompts to and records from a leg for the auto attendant, voicemail and music on
//! hold.
//!
//! The call core decides what flows where ([`pbx_core::media::session`]); this module owns
//! the sockets.

mod files;
pub mod mixer;
pub mod player;
pub mod prompts;
pub mod relay;
pub mod stream;
pub mod wav;

pub use prompts::PromptStore;
pub use relay::{start, start_with_prompts, Relay, RelayConfig, RelayCounters};
