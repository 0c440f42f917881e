//! What the relay's pure core asks of its driver besides sending packets: events for the
//! daemon, jobs for the file thread, and sessions to add to or drop from the stats
//! snapshot. They are queued in the order they arise and drained by the engine after each
//! input, so a recording handed to the file thread at a close is queued before the close's
//! final stats, as the daemon expects.

use std::collections::VecDeque;

use pbx_core::media::session::{MediaEvent, SessionId};

use crate::media::files::FileJob;

/// One request from the core to its driver.
#[derive(Debug)]
pub(super) enum Output {
    /// An event for the daemon.
    Event(MediaEvent),
    /// Work for the file thread (write a recording, load a playlist).
    File(FileJob),
    /// A session was opened: it appears in the stats snapshot from now on.
    Opened(SessionId),
    /// A session was closed: it leaves the stats snapshot.
    Closed(SessionId),
}

/// The queue of [`Output`]s; bounded by the work of one input (one batch, one command,
/// one tick), because the engine drains it after each.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Output>,
}

impl Outbox {
    /// Queues an event for the daemon.
    pub(super) fn event(&mut self, event: MediaEvent) {
        self.queue.push_back(Output::Event(event));
    }

    /// Queues any output.
    pub(super) fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    /// The oldest queued output.
    pub(super) fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }
}
