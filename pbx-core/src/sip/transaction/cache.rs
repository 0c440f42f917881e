//! The two caches that answer retransmissions without a live transaction: responses sent
//! statelessly (rejections before a dialog) and completed server transactions' final
//! responses. Their caps and what they cost are in the parent module's docs.

use std::collections::{HashMap, VecDeque};

use super::{
    AckKey, SentBy, ServerIdent, TxKey, MAX_COMPLETED_BYTES, MAX_COMPLETED_ENTRIES,
    MAX_STATELESS_BYTES, MAX_STATELESS_ENTRIES,
};
use crate::sip::message::Peer;
use crate::Millis;

/// A response sent without a transaction (see "Stateless until a dialog").
#[derive(Debug)]
pub(super) struct StatelessEntry {
    /// Insertion number, to tell this entry from a newer one under the same key.
    pub(super) seq: u64,
    pub(super) sent_by: SentBy,
    pub(super) dest: Peer,
    pub(super) bytes: Vec<u8>,
    pub(super) at: Millis,
}

/// The bounded cache of statelessly sent final responses, oldest evicted first.
#[derive(Debug, Default)]
pub(super) struct StatelessCache {
    pub(super) entries: HashMap<TxKey, StatelessEntry>,
    pub(super) order: VecDeque<(TxKey, u64)>,
    pub(super) bytes: usize,
    pub(super) next_seq: u64,
}

impl StatelessCache {
    pub(super) fn insert(
        &mut self,
        key: TxKey,
        sent_by: SentBy,
        dest: Peer,
        bytes: Vec<u8>,
        at: Millis,
    ) {
        if bytes.len() > MAX_STATELESS_BYTES {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= MAX_STATELESS_ENTRIES
            || self.bytes + bytes.len() > MAX_STATELESS_BYTES
        {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                self.remove(&old);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += bytes.len();
        self.order.push_back((key.clone(), seq));
        self.entries.insert(
            key,
            StatelessEntry {
                seq,
                sent_by,
                dest,
                bytes,
                at,
            },
        );
    }

    pub(super) fn remove(&mut self, key: &TxKey) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.bytes.len();
        }
        // `order` keeps a stale (key, seq) pair; it is skipped when it reaches the front.
        if self.order.len() > 2 * MAX_STATELESS_ENTRIES {
            let entries = &self.entries;
            self.order
                .retain(|(k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    /// The entry for `ident` if it is younger than `max_age` at `now`.
    pub(super) fn get(
        &self,
        ident: &ServerIdent,
        now: Millis,
        max_age: u64,
    ) -> Option<&StatelessEntry> {
        self.entries
            .get(&ident.key)
            .filter(|e| e.sent_by == ident.sent_by && now < e.at.saturating_add(max_age))
    }
}

/// A server transaction after its final response, reduced to what answers retransmissions
/// (see "Completed server transactions keep only their final response").
#[derive(Debug)]
pub(super) struct CompletedEntry {
    /// Insertion number, to tell this entry from a newer one under the same key.
    pub(super) seq: u64,
    pub(super) sent_by: SentBy,
    pub(super) dest: Peer,
    /// The final response, re-sent to a retransmitted request; `None` absorbs it silently.
    pub(super) response: Option<Vec<u8>>,
    /// INVITE after its 2xx was ACKed: its entry in the cache's 2xx-ACK index (boxed: most
    /// entries have none, and the table's slots stay small).
    pub(super) ack_key: Option<Box<AckKey>>,
    /// Timer J, I or L: when the entry stops answering.
    pub(super) deadline: Millis,
}

/// The bounded cache of completed server transactions, in arrival order.
#[derive(Debug, Default)]
pub(super) struct CompletedCache {
    pub(super) entries: HashMap<TxKey, CompletedEntry>,
    /// 2xx-ACK index: the insertion number of the entry that absorbs the ACK, its deadline.
    pub(super) acks: HashMap<AckKey, (u64, Millis)>,
    /// `(deadline, key, seq)` in arrival order; pairs whose entry was replaced are skipped.
    pub(super) order: VecDeque<(Millis, TxKey, u64)>,
    /// Response bytes held.
    pub(super) bytes: usize,
    pub(super) next_seq: u64,
    /// Entries dropped before their deadline because the cache was full.
    pub(super) dropped: u64,
}

impl CompletedCache {
    /// Stores the completed transaction `key`, first dropping expired entries and, while
    /// full, the oldest live ones (counted in `dropped`).
    pub(super) fn insert(&mut self, now: Millis, key: TxKey, mut entry: CompletedEntry) {
        self.expire(now);
        let size = entry.response.as_ref().map_or(0, Vec::len);
        if size > MAX_COMPLETED_BYTES {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= MAX_COMPLETED_ENTRIES
            || self.bytes.saturating_add(size) > MAX_COMPLETED_BYTES
        {
            let Some((deadline, old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                if deadline > now {
                    self.dropped += 1;
                }
                self.remove(&old);
            }
        }
        entry.seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        if let Some(ack_key) = &entry.ack_key {
            self.acks
                .insert(AckKey::clone(ack_key), (entry.seq, entry.deadline));
        }
        self.order
            .push_back((entry.deadline, key.clone(), entry.seq));
        self.entries.insert(key, entry);
    }

    /// Drops the entry under `key`, if any, with its ACK index entry.
    pub(super) fn remove(&mut self, key: &TxKey) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.bytes -= e.response.as_ref().map_or(0, Vec::len);
        if let Some(ack_key) = e.ack_key.as_deref() {
            if self.acks.get(ack_key).is_some_and(|(seq, _)| *seq == e.seq) {
                self.acks.remove(ack_key);
            }
        }
        // `order` keeps a stale (key, seq) pair; it is skipped when it reaches the front.
        if self.order.len() > 2 * MAX_COMPLETED_ENTRIES {
            let entries = &self.entries;
            self.order
                .retain(|(_, k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Frees the entries at the front whose deadline is at or before `now`, and gives the
    /// tables' memory back once a burst has drained.
    pub(super) fn expire(&mut self, now: Millis) {
        let mut freed = false;
        while let Some((deadline, _, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            let Some((_, key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.remove(&key);
            }
            freed = true;
        }
        if freed {
            shrink_map(&mut self.entries);
            shrink_map(&mut self.acks);
            if self.order.capacity() >= 4 * self.order.len().max(256) {
                self.order.shrink_to(2 * self.order.len());
            }
        }
    }

    /// The live entry for `ident` (its own sent-by; see [`ServerIdent::alt_key`]).
    pub(super) fn get(&self, ident: &ServerIdent, now: Millis) -> Option<&CompletedEntry> {
        let e = self.entries.get(&ident.key)?;
        let e = if e.sent_by == ident.sent_by {
            e
        } else {
            self.entries.get(&ident.alt_key())?
        };
        (e.sent_by == ident.sent_by && now < e.deadline).then_some(e)
    }

    /// True when an ACK with `ack_key` repeats one already passed to the TU.
    pub(super) fn absorbs_ack(&self, ack_key: &AckKey, now: Millis) -> bool {
        self.acks
            .get(ack_key)
            .is_some_and(|(_, deadline)| now < *deadline)
    }

    /// The deadline at the front, when `expire` has something to free.
    pub(super) fn next_deadline(&self) -> Option<Millis> {
        self.order.front().map(|(at, _, _)| *at)
    }
}

/// Gives a hash map's memory back when it holds less than a quarter of its capacity (a
/// burst has drained); small maps are left alone.
pub(super) fn shrink_map<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() >= 4 * map.len().max(256) {
        map.shrink_to(2 * map.len());
    }
}
