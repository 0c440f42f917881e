//! What a call is ringing, as data the call records hold: the ring plan, the trunks still
//! to try for an outbound call, the toll-fraud gate's ticket, and where a follow-me list
//! stands. A leaf of the endpoint:
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

/// A follow-me in progress: the no-answer numbers of `ext` (its [`Forwarding`] list, at
/// most [`MAX_FOLLOW_ME`]) tried one after the other, each for the no-answer ring time.
///
/// [`Forwarding`]: super::config::Forwarding
/// [`MAX_FOLLOW_ME`]: super::config::MAX_FOLLOW_ME
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FollowMe {
    /// The extension whose phones did not answer (its voicemail ends the list).
    pub ext: String,
    /// Index of the next number to try.
    pub next: usize,
    /// The call's forwarding hops when the list started: each number is one hop from there
    /// (the numbers are alternatives, not a chain).
    pub hops: u8,
    /// The call had no toll-fraud ticket of its own when the list started: a ticket it holds
    /// is a number's of the list, released when the list moves on.
    pub gate_ours: bool,
}
