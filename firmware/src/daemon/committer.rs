//! The store committer: writes the daemon's batches on their own thread, one at a time, so
//! the loop gathers the next batch while the previous one is fsynced (pipelined group
//! commit). Messages that must not leave before their writes are durable are held here
//! until the commit of their sequence number is reported.

use anyhow::Context;
use tokio::sync::mpsc;

use crate::store::{Batch, Store};

/// Writes batches on its own thread, one at a time, and reports each completion.
#[derive(Debug)]
pub(super) struct Committer {
    pub(super) jobs: std::sync::mpsc::Sender<(u64, Batch)>,
    /// Writes gathered for the next commit.
    pub(super) pending: Batch,
    /// Sequence number of the commit being written.
    pub(super) in_flight: Option<u64>,
    /// Mailboxes whose index changes with the commit in flight.
    pub(super) in_flight_mailboxes: Vec<String>,
    pub(super) next_seq: u64,
    /// Messages waiting for the commit of the given sequence number.
    pub(super) held: std::collections::VecDeque<(u64, pbx_core::sip::transaction::Transmit)>,
}

impl Committer {
    /// Starts the store thread; `done` hears `(seq, ok)` for every commit.
    pub(super) fn start(
        store: std::sync::Arc<Store>,
        done: mpsc::UnboundedSender<(u64, bool)>,
    ) -> anyhow::Result<Committer> {
        let (jobs, rx) = std::sync::mpsc::channel::<(u64, Batch)>();
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || {
                while let Ok((seq, batch)) = rx.recv() {
                    let ok = match store.commit(&batch) {
                        Ok(()) => true,
                        Err(err) => {
                            tracing::error!(%err, "store commit failed");
                            false
                        }
                    };
                    if done.send((seq, ok)).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the store thread")?;
        Ok(Committer {
            jobs,
            pending: Batch::default(),
            in_flight: None,
            in_flight_mailboxes: Vec::new(),
            next_seq: 1,
            held: std::collections::VecDeque::new(),
        })
    }

    /// Starts the next commit if none is running and something is waiting.
    pub(super) fn dispatch(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut boxes: Vec<String> = batch.voicemail.iter().map(|m| m.mailbox.clone()).collect();
        boxes.sort();
        boxes.dedup();
        self.in_flight_mailboxes = boxes;
        self.in_flight = Some(seq);
        if self.jobs.send((seq, batch)).is_err() {
            tracing::error!("the store thread stopped");
        }
    }
}
