//! What a call is ringing, as data the call records hold: the ring plan, the trunks still
//! to try for an outbound call, and the toll-fraud gate's ticket. A leaf of the endpoint:
//! routing and trunking fill these in, `call` keeps them.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// What a call is ringing.
#[derive(Debug, Clone, Default)]
pub(super) enum RingPlan {
    /// Nothing (yet), or Outpost answered the call itself.
    #[default]
    Nothing,
    /// An extension's phones.
    Extension { ext: String },
    /// A ring group; `next` is the next member to ring when it rings in order.
    Group { group: usize, next: usize },
    /// Out through trunks.
    External(ExternalPlan),
}

/// What to report to the toll-fraud gate when an allowed call ends.
#[derive(Debug, Clone)]
pub(super) struct GateTicket {
    pub ext: String,
    pub dialled: String,
    pub trunk: Option<String>,
}

/// An outbound call's way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExternalPlan {
    /// The number as sent to the provider (after strip/prepend).
    pub number: String,
    /// Trunks still to try, in order.
    pub trunks: VecDeque<usize>,
    /// The trunk of the current leg and its further addresses still to try on this call
    /// when the leg times out or meets 503 (RFC 3263 §4.3).
    pub addrs: Option<(usize, VecDeque<SocketAddr>)>,
    /// Caller-ID chosen by the route (else the trunk's).
    pub caller_id: Option<String>,
    /// An emergency call: every trunk, no limits.
    pub emergency: bool,
    /// The route's name.
    pub route: String,
}
