//! The store committer: writes the daemon's batches on their own thread, one at a time, so
//! the loop gathers the next batch while the previous one is fsynced (pipelined group
//! commit). Messages that must not leave before their writes are durable are held here
//! until the commit of their sequence number is reported.
//!
//! Refreshes are the exception ([`BindingChange::Refresh`]: a binding again with nothing
//! changed but its expiry). Their 200 leaves at once; the new expiry waits here, the latest
//! one per binding, and is written with the next commit, or on its own once the oldest
//! waiting refresh is [`REFRESH_WRITE_MS`] old or [`REFRESH_BATCH_MAX`] bindings wait. A
//! crash or power cut therefore loses at most the refreshes of the last
//! `REFRESH_WRITE_MS` plus the commit then in flight: those bindings come back with the
//! expiry they had before (and are gone if that has passed by the restart). A refresh of a
//! binding whose own Upsert is not on disk yet is written durably like the Upsert, so a
//! 200 is never sent for a binding that a crash could lose.

use std::collections::{HashMap, HashSet, VecDeque};

use anyhow::Context;
use pbx_core::registrar::{Binding, BindingChange};
use pbx_core::sip::transaction::Transmit;
use pbx_core::Millis;
use tokio::sync::mpsc;

use crate::store::{Batch, Store};

/// Longest a refresh waits before it is written on its own, in ms.
pub(super) const REFRESH_WRITE_MS: Millis = 1_000;
/// Most refreshes waiting before they are written on their own (at ~200 bytes each, about
/// 1.6 MB; the map never holds more than one entry per binding either).
pub(super) const REFRESH_BATCH_MAX: usize = 8_192;

/// A binding's identity in the store: (extension, contact).
type BindingKey = (String, String);

/// Writes batches on its own thread, one at a time, and reports each completion.
#[derive(Debug)]
pub(super) struct Committer {
    jobs: std::sync::mpsc::Sender<(u64, Batch)>,
    /// Durable writes gathered for the next commit.
    pub(super) pending: Batch,
    /// Bindings written by `pending`: a refresh of one of them is durable too.
    pending_keys: HashSet<BindingKey>,
    /// Refreshes not written yet, the latest per binding.
    refreshes: HashMap<BindingKey, Binding>,
    /// When the oldest waiting refresh arrived.
    refreshes_since: Option<Millis>,
    /// Sequence number of the commit being written.
    pub(super) in_flight: Option<u64>,
    /// Whether the commit in flight carries durable writes (a refresh-only one does not
    /// hold messages back).
    in_flight_durable: bool,
    /// Bindings written by the commit in flight.
    in_flight_keys: HashSet<BindingKey>,
    /// Mailboxes whose index changes with the commit in flight.
    pub(super) in_flight_mailboxes: Vec<String>,
    next_seq: u64,
    /// Messages waiting for the commit of the given sequence number (non-decreasing).
    held: VecDeque<(u64, Transmit)>,
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
            pending_keys: HashSet::new(),
            refreshes: HashMap::new(),
            refreshes_since: None,
            in_flight: None,
            in_flight_durable: false,
            in_flight_keys: HashSet::new(),
            in_flight_mailboxes: Vec::new(),
            next_seq: 1,
            held: VecDeque::new(),
        })
    }

    /// Takes the registrar's changes; returns true when one of them must be durable before
    /// the response that produced it leaves.
    pub(super) fn bindings(&mut self, now: Millis, changes: Vec<BindingChange>) -> bool {
        let mut durable = false;
        for change in changes {
            let key = match &change {
                BindingChange::Upsert(b) | BindingChange::Refresh(b) => {
                    (b.ext.clone(), b.contact.clone())
                }
                BindingChange::Remove { ext, contact } => (ext.clone(), contact.clone()),
            };
            if let BindingChange::Refresh(b) = change {
                if !self.pending_keys.contains(&key) && !self.in_flight_keys.contains(&key) {
                    self.refreshes.insert(key, b);
                    self.refreshes_since.get_or_insert(now);
                    continue;
                }
                self.pending.bindings.push(BindingChange::Refresh(b));
            } else {
                // The durable change supersedes a waiting refresh (which must not be written
                // after it).
                self.refreshes.remove(&key);
                self.pending.bindings.push(change);
            }
            self.pending_keys.insert(key);
            durable = true;
        }
        if self.refreshes.is_empty() {
            self.refreshes_since = None;
        }
        durable
    }

    /// The commit a message produced now must wait for when it wrote nothing itself: the
    /// next one if durable writes are gathering, else the durable one in flight (a
    /// retransmitted response must not overtake its original).
    pub(super) fn barrier(&self) -> Option<u64> {
        if !self.pending.is_empty() {
            Some(self.next_seq)
        } else if self.in_flight_durable {
            self.in_flight
        } else {
            None
        }
    }

    /// The sequence number of the next commit (that of `pending`).
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Holds `t` until commit `seq` is on disk.
    pub(super) fn hold(&mut self, seq: u64, t: Transmit) {
        self.held.push_back((seq, t));
    }

    /// A commit finished: the messages it released, in order.
    pub(super) fn finished(&mut self, seq: u64) -> impl Iterator<Item = Transmit> + '_ {
        self.in_flight = None;
        self.in_flight_durable = false;
        self.in_flight_keys.clear();
        let n = self.held.iter().take_while(|(s, _)| *s <= seq).count();
        self.held.drain(..n).map(|(_, t)| t)
    }

    /// When waiting refreshes must be written even if nothing else is; none while a commit
    /// is in flight (its completion dispatches the next).
    pub(super) fn poll_timeout(&self) -> Option<Millis> {
        if self.in_flight.is_some() {
            return None;
        }
        self.due()
    }

    /// When the oldest waiting refresh is due.
    fn due(&self) -> Option<Millis> {
        self.refreshes_since
            .map(|since| since.saturating_add(REFRESH_WRITE_MS))
    }

    /// Starts the next commit if none is running and something is due: durable writes (with
    /// every waiting refresh), or refreshes alone once they are due or many (`force`: now).
    pub(super) fn dispatch(&mut self, now: Millis, force: bool) {
        if self.in_flight.is_some() {
            return;
        }
        let durable = !self.pending.is_empty();
        let refreshes_due = !self.refreshes.is_empty()
            && (force
                || self.refreshes.len() >= REFRESH_BATCH_MAX
                || self.due().is_some_and(|t| t <= now));
        if !durable && !refreshes_due {
            return;
        }
        let mut batch = std::mem::take(&mut self.pending);
        batch.bindings.extend(
            self.refreshes
                .drain()
                .map(|(_, b)| BindingChange::Refresh(b)),
        );
        self.refreshes_since = None;
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut boxes: Vec<String> = batch.voicemail.iter().map(|m| m.mailbox.clone()).collect();
        boxes.sort();
        boxes.dedup();
        self.in_flight_mailboxes = boxes;
        self.in_flight = Some(seq);
        self.in_flight_durable = durable;
        self.in_flight_keys = std::mem::take(&mut self.pending_keys);
        if self.jobs.send((seq, batch)).is_err() {
            tracing::error!("the store thread stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use pbx_core::sip::{Peer, Transport};

    use super::{Binding, BindingChange, Committer, Transmit, REFRESH_WRITE_MS};

    fn binding(ext: &str, expires_at: u64) -> Binding {
        Binding {
            ext: ext.to_string(),
            contact: format!("sip:{ext}@192.0.2.1:5060"),
            source: peer(),
            expires_at,
            call_id: "c".to_string(),
            cseq: 1,
            q: None,
            user_agent: None,
            registered_at: 0,
        }
    }

    fn peer() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "192.0.2.1:5060".parse().expect("address"),
        }
    }

    fn transmit(tag: u8) -> Transmit {
        Transmit {
            dest: peer(),
            bytes: vec![tag],
        }
    }

    /// A committer whose store thread is never started: the jobs are received here.
    fn committer() -> (
        Committer,
        std::sync::mpsc::Receiver<(u64, crate::store::Batch)>,
    ) {
        let (jobs, rx) = std::sync::mpsc::channel();
        let c = Committer {
            jobs,
            pending: Default::default(),
            pending_keys: Default::default(),
            refreshes: Default::default(),
            refreshes_since: None,
            in_flight: None,
            in_flight_durable: false,
            in_flight_keys: Default::default(),
            in_flight_mailboxes: Vec::new(),
            next_seq: 1,
            held: Default::default(),
        };
        (c, rx)
    }

    #[test]
    fn a_refresh_is_lazy_and_written_after_its_delay_latest_expiry_only() {
        let (mut c, rx) = committer();
        assert!(!c.bindings(0, vec![BindingChange::Refresh(binding("100", 10))]));
        assert!(!c.bindings(5, vec![BindingChange::Refresh(binding("100", 20))]));
        assert_eq!(c.barrier(), None, "a refresh holds nothing back");
        c.dispatch(REFRESH_WRITE_MS - 1, false);
        assert!(rx.try_recv().is_err(), "not due yet");
        assert_eq!(c.poll_timeout(), Some(REFRESH_WRITE_MS));
        c.dispatch(REFRESH_WRITE_MS, false);
        let (seq, batch) = rx.try_recv().expect("a refresh-only commit");
        assert_eq!(
            batch.bindings,
            vec![BindingChange::Refresh(binding("100", 20))]
        );
        // While it is written, messages that wrote nothing are not held.
        assert_eq!(c.barrier(), None);
        assert_eq!(c.finished(seq).count(), 0);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn an_upsert_holds_its_response_and_a_refresh_of_it_is_durable_until_written() {
        let (mut c, rx) = committer();
        assert!(c.bindings(0, vec![BindingChange::Upsert(binding("100", 10))]));
        let seq = c.next_seq();
        c.hold(seq, transmit(1));
        c.dispatch(0, false);
        let (s, _) = rx.try_recv().expect("the upsert's commit");
        assert_eq!(s, seq);
        // Not on disk yet: a refresh of the same binding must be durable too.
        assert!(c.bindings(1, vec![BindingChange::Refresh(binding("100", 20))]));
        // A message that wrote nothing waits for the durable commit in flight.
        assert_eq!(c.barrier(), Some(c.next_seq()));
        let released: Vec<Transmit> = c.finished(seq).collect();
        assert_eq!(released, vec![transmit(1)]);
        // Once written, refreshes of it are lazy again.
        c.dispatch(2, false);
        let (s2, batch) = rx.try_recv().expect("the durable refresh");
        assert_eq!(
            batch.bindings,
            vec![BindingChange::Refresh(binding("100", 20))]
        );
        assert_eq!(c.finished(s2).count(), 0);
        assert!(!c.bindings(3, vec![BindingChange::Refresh(binding("100", 30))]));
    }

    #[test]
    fn a_removal_drops_the_waiting_refresh_and_joins_the_next_commit() {
        let (mut c, rx) = committer();
        assert!(!c.bindings(0, vec![BindingChange::Refresh(binding("100", 10))]));
        assert!(!c.bindings(0, vec![BindingChange::Refresh(binding("101", 10))]));
        let b = binding("100", 0);
        assert!(c.bindings(
            1,
            vec![BindingChange::Remove {
                ext: b.ext.clone(),
                contact: b.contact.clone(),
            }]
        ));
        c.dispatch(1, false);
        let (_, batch) = rx.try_recv().expect("a commit");
        // The removal, then the other binding's refresh riding along; never 100's refresh.
        assert_eq!(
            batch.bindings,
            vec![
                BindingChange::Remove {
                    ext: b.ext,
                    contact: b.contact,
                },
                BindingChange::Refresh(binding("101", 10)),
            ]
        );
    }
}
