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
}

/// One call detail record, written when the call ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// SIP Call-ID of the caller's leg.
    pub call_id: String,
    /// Calling extension.
    pub caller: String,
    /// Dialled number.
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
}

impl Cdr {
    /// Talk time in whole seconds (zero for unanswered calls).
    pub fn billsec(&self) -> u64 {
        self.answer
            .map(|a| self.end.saturating_sub(a) / 1000)
            .unwrap_or(0)
    }
}
