//! Call detail records.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// How a call ended, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Answered and later hung up by either side.
    Answered,
    /// Callee (every contact) answered busy.
    Busy,
    /// Caller cancelled before answer.
    Cancelled,
    /// No answer within the ring timeout, or every fork failed without busy.
    NoAnswer,
    /// Dialled number is not an extension.
    NotFound,
    /// Callee has no registration.
    Unavailable,
    /// Call setup failed for another reason (status code in `status`).
    Failed,
    /// Answered, then torn down because the media stopped flowing.
    MediaTimeout,
    /// Not answered by a phone; Outpost's voicemail took the call.
    Voicemail,
    /// This leg of the call ended because a party transferred the call (or the auto
    /// attendant put it through): the call goes on in the next record with the same
    /// `linked_id`.
    Transferred,
}

impl Disposition {
    /// The disposition of a leg nobody answered, from the final status it got.
    pub fn of_failure(status: u16) -> Disposition {
        match status {
            486 | 600 => Disposition::Busy,
            480 | 408 => Disposition::NoAnswer,
            487 => Disposition::Cancelled,
            _ => Disposition::Failed,
        }
    }
}

/// One call detail record, written when a leg of a call ends: a call that is never
/// transferred has one; a transferred call has one per leg (100 → 101, then 100 → 103 once
/// 101 transferred it), sharing `linked_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// SIP Call-ID of the caller's leg.
    pub call_id: String,
    /// The party on the calling side of this leg (an extension, or the caller ID an outside
    /// caller sent).
    pub caller: String,
    /// The party called in this leg: the number dialled, or the transfer target.
    pub callee: String,
    /// When the INVITE arrived.
    pub start: Millis,
    /// When the call was answered, if it was.
    pub answer: Option<Millis>,
    /// When the call ended.
    pub end: Millis,
    pub disposition: Disposition,
    /// Final status sent to the caller (200 for answered calls).
    pub status: u16,
    /// How this leg fits the call: its link to the other legs, the trunk, the DID, the
    /// menu (flattened: the same fields at the top level of the JSON).
    #[serde(flatten)]
    pub leg: CdrLeg,
}

/// What a record says beyond its parties and times: which call it belongs to and how it
/// came about. Every field may be missing in records written before it existed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrLeg {
    /// Shared by every record of one call: the Call-ID of its first leg. Empty in records
    /// written before it existed (see [`Cdr::link`]).
    #[serde(default)]
    pub linked_id: String,
    /// Who put this leg's caller through to its callee: the extension that transferred the
    /// call, or `menu:<name>` for the auto attendant.
    #[serde(default)]
    pub transferred_by: Option<String>,
    /// The trunk of an outside call: the provider it came in from, or the one it went out on.
    #[serde(default)]
    pub trunk: Option<String>,
    /// The number the provider called (an inbound call's DID).
    #[serde(default)]
    pub did: Option<String>,
    /// The auto-attendant menu the caller went through, if any.
    #[serde(default)]
    pub menu: Option<String>,
    /// The digit pressed in that menu.
    #[serde(default)]
    pub menu_digit: Option<String>,
}

impl Cdr {
    /// The id shared by the records of this call (`call_id` for records older than it).
    pub fn link(&self) -> &str {
        if self.leg.linked_id.is_empty() {
            &self.call_id
        } else {
            &self.leg.linked_id
        }
    }

    /// Talk time in whole seconds (zero for unanswered calls).
    pub fn billsec(&self) -> u64 {
        self.answer
            .map(|a| self.end.saturating_sub(a) / 1000)
            .unwrap_or(0)
    }
}
