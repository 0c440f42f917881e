//! What the endpoint reports: the [`Event`]s drained by [`super::Endpoint::poll_event`], and
//! the summaries and counters read for `status`, `calls` and metrics.

use crate::cdr::Cdr;
use crate::media::session::{Codec, MediaCommand, SessionId};
use crate::registrar::BindingChange;
use crate::sip::{Method, Peer};
use crate::Millis;
use serde::{Deserialize, Serialize};

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Registration state changed: persist before sending what follows.
    Bindings(Vec<BindingChange>),
    /// Message-waiting subscriptions changed: persist them (they survive a restart).
    Mwi(Vec<MwiChange>),
    /// An extension turned do-not-disturb on or off with a feature code: persist it.
    DndChanged {
        /// The extension.
        ext: String,
        /// Do-not-disturb is on.
        on: bool,
    },
    /// A call ended: persist its record.
    CallEnded(Cdr),
    /// Tell the relay (open, update or close a call's media).
    Media(MediaCommand),
    /// A request failed authentication (for the firewall's detectors).
    AuthFailed {
        /// Where the request came from.
        src: Peer,
        /// The user name it claimed (cut to 64 characters).
        user: String,
        /// The request method.
        method: Method,
        /// The user exists (unknown names feed the enumeration detector).
        known: bool,
    },
    /// A voicemail message was recorded: index it and tell the mailbox's phones.
    VoicemailStored {
        /// The extension whose mailbox got the message.
        mailbox: String,
        /// Who called.
        caller: String,
        /// The WAV file.
        path: std::path::PathBuf,
        duration_ms: u32,
        /// When the call came in.
        at: Millis,
    },
    /// A call recording is complete: each leg's file (`None` when it could not be
    /// written), both starting at `started`; the driver mixes them into one recording.
    CallRecorded {
        /// The Call-ID of the call's first leg (the records' `linked_id`).
        call_id: String,
        caller: String,
        callee: String,
        /// The extension that asked for the recording.
        by: String,
        started: Millis,
        /// Legs A and B: the file and its length.
        parts: [Option<(std::path::PathBuf, u32)>; 2],
    },
    /// The mailbox owner listened to a message (it is no longer new).
    VoicemailHeard { id: u64 },
    /// The mailbox owner deleted a message.
    VoicemailDeleted { id: u64 },
    /// The toll-fraud gate refused an outbound call (the driver alerts, and bans the source
    /// when `lock` is set and the source is not allow-listed).
    CallRefused {
        /// Where the INVITE came from.
        src: Peer,
        /// The calling extension.
        ext: String,
        /// The number dialled.
        dialled: String,
        /// Why.
        reason: String,
        /// The extension was locked to internal calls.
        lock: bool,
    },
    /// A trunk went up or down.
    TrunkChanged(crate::trunk::TrunkChange),
    /// A trunk sent more inbound INVITEs than its `inbound_calls_per_second`: the excess got
    /// 503. Raised at most once per [`crate::trunk::CAP_ALERT_EVERY_MS`] per trunk.
    TrunkCallsRefused {
        /// The trunk's name.
        trunk: String,
        /// Where the latest refused INVITE came from.
        src: Peer,
        /// Refused since the last report.
        refused: u64,
        /// The cap, per second.
        limit: u32,
    },
    /// A request authenticated (the firewall gives the source a pass).
    AuthSucceeded {
        /// Where the request came from.
        src: Peer,
        /// The authenticated extension.
        user: String,
    },
}

/// A live call, for `outpostctl calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummary {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// Calling extension.
    pub caller: String,
    /// Dialled number.
    pub callee: String,
    /// True once a callee answered.
    pub answered: bool,
    /// True while either phone holds the answered call (its last SDP was sendonly or
    /// inactive); known only when the media is anchored.
    pub on_hold: bool,
    /// The park orbit the call waits in, while parked.
    pub parked: Option<u32>,
    /// Parties in the conference this call is in, while in one.
    pub conference: Option<usize>,
    /// When the INVITE arrived.
    pub start: Millis,
    /// When the call was answered.
    pub answer: Option<Millis>,
    /// Relay session, when media is anchored.
    pub media_session: Option<SessionId>,
    /// Codecs on legs A and B once negotiated (they differ when the relay transcodes).
    pub codecs: Option<(Codec, Codec)>,
}

/// Plain counters for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams and stream messages handled.
    pub received: u64,
    /// Messages that did not parse.
    pub malformed: u64,
    /// Requests refused for bad credentials or identity.
    pub auth_failures: u64,
    /// Calls set up towards a callee.
    pub calls_started: u64,
    /// Calls answered.
    pub calls_answered: u64,
    /// Requests answered 503 because the server transaction table was full.
    pub overloaded: u64,
}

/// Sizes of the endpoint's internal tables (see [`Endpoint::debug_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugCounts {
    /// Calls, including ended ones waiting for their forks' transactions to finish.
    pub calls: usize,
    /// Caller-leg Call-ID index.
    pub by_a_call_id: usize,
    /// Callee-leg Call-ID index.
    pub by_b_call_id: usize,
    /// Caller INVITE server transaction index.
    pub by_server_key: usize,
    /// Client transactions with a role.
    pub clients: usize,
    /// Relayed in-dialog requests awaiting an answer.
    pub relays: usize,
    /// Armed ring timers.
    pub ring_timers: usize,
    /// Live transactions.
    pub transactions: usize,
}

/// The event package of a subscription (RFC 6665 §7.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventPackage {
    /// Message-waiting counts (RFC 3842).
    #[default]
    MessageSummary,
    /// An extension's calls, for busy lamp keys (RFC 4235).
    Dialog,
    /// An extension's presence (RFC 3856, PIDF body).
    Presence,
}

impl EventPackage {
    /// The package of an `Event` header's value, when it is one we serve.
    pub fn of_event_header(value: &str) -> Option<EventPackage> {
        let token = value.split(';').next().unwrap_or_default().trim();
        [
            ("message-summary", EventPackage::MessageSummary),
            ("dialog", EventPackage::Dialog),
            ("presence", EventPackage::Presence),
        ]
        .into_iter()
        .find(|(name, _)| token.eq_ignore_ascii_case(name))
        .map(|(_, p)| p)
    }

    /// The package's name as the `Event` header carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventPackage::MessageSummary => "message-summary",
            EventPackage::Dialog => "dialog",
            EventPackage::Presence => "presence",
        }
    }
}

/// A subscription (message-waiting, dialog or presence) as stored, so that it survives a
/// restart. The type keeps its first name: records written before the dialog and presence
/// packages read back as message-summary subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MwiRecord {
    /// The subscription dialog's Call-ID.
    pub call_id: String,
    /// The subscriber's own extension (for message-summary, the mailbox watched).
    pub mailbox: String,
    /// The event package.
    #[serde(default)]
    pub package: EventPackage,
    /// The extension watched (dialog, presence); empty for message-summary.
    #[serde(default)]
    pub watched: String,
    /// Our tag in the dialog.
    pub local_tag: String,
    /// Our side of the dialog (the SUBSCRIBE's To, without parameters), as on the wire.
    pub local_uri: String,
    /// The subscriber's side (the SUBSCRIBE's From, with its tag), as on the wire.
    pub remote_uri: String,
    /// Where NOTIFYs go (the subscriber's Contact).
    pub target: String,
    /// Where the SUBSCRIBE came from.
    pub peer: Peer,
    /// When the subscription ends unless refreshed.
    pub expires_at: Millis,
    /// CSeq of our last NOTIFY in the dialog.
    pub cseq: u32,
}

/// A change to persist so that the store mirrors the subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MwiChange {
    /// Insert or replace the subscription with this Call-ID.
    Upsert(MwiRecord),
    /// Delete the subscription with this Call-ID.
    Remove(String),
}
