//! Bounded tables: a least-recently-used table and a table ordered by expiry.
//!
//! Both have a hard capacity so a flood of spoofed sources costs a fixed amount of memory:
//! once full, inserting replaces the least recently used entry (LRU) or the entry that would
//! be forgotten soonest (expiry). No operation allocates once the table has reached its
//! capacity, except the expiry index's B-tree nodes, which are bounded by the same capacity.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use crate::Millis;

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// A map with at most `cap` entries that evicts the least recently used one when full.
///
/// Entries live densely in a `Vec` linked into a recency list; removal swaps the last slot
/// into the hole, so memory is exactly `len` slots plus the index.
#[derive(Debug)]
pub(crate) struct LruTable<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> LruTable<K, V> {
    /// An empty table holding at most `cap` entries (at least 1, at most `u32::MAX - 1`).
    pub(crate) fn new(cap: usize) -> Self {
        LruTable {
            index: HashMap::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.clamp(1, (NIL - 1) as usize),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The value for `key`, without changing its recency.
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get(key).map(|&i| &self.slots[i as usize].value)
    }

    /// The value for `key`, marked as most recently used.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = *self.index.get(key)?;
        self.touch(i);
        Some(&mut self.slots[i as usize].value)
    }

    /// The value for `key`, inserted with `make` if absent (evicting the least recently used
    /// entry when full), marked as most recently used.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if let Some(&i) = self.index.get(&key) {
            self.touch(i);
            return &mut self.slots[i as usize].value;
        }
        let i = if self.slots.len() >= self.cap && self.tail != NIL {
            // Reuse the least recently used slot in place: no allocation at capacity.
            let i = self.tail;
            let slot = &mut self.slots[i as usize];
            self.index.remove(&slot.key);
            slot.key = key.clone();
            slot.value = make();
            self.touch(i);
            i
        } else {
            let i = u32::try_from(self.slots.len()).expect("cap is below u32::MAX");
            self.slots.push(Slot {
                key: key.clone(),
                value: make(),
                prev: NIL,
                next: NIL,
            });
            self.link_front(i);
            i
        };
        self.index.insert(key, i);
        &mut self.slots[i as usize].value
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.index.remove(key)?;
        Some(self.remove_slot(i).1)
    }

    /// The least recently used entry.
    pub(crate) fn oldest(&self) -> Option<(&K, &V)> {
        if self.tail == NIL {
            return None;
        }
        let slot = &self.slots[self.tail as usize];
        Some((&slot.key, &slot.value))
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        if self.tail == NIL {
            return None;
        }
        let i = self.tail;
        self.index.remove(&self.slots[i as usize].key);
        Some(self.remove_slot(i))
    }

    fn remove_slot(&mut self, i: u32) -> (K, V) {
        self.unlink(i);
        let last = u32::try_from(self.slots.len() - 1).expect("cap is below u32::MAX");
        if i != last {
            // The last slot moves into the hole: repair the links that pointed at it.
            let (prev, next) = {
                let moved = &self.slots[last as usize];
                (moved.prev, moved.next)
            };
            if prev != NIL {
                self.slots[prev as usize].next = i;
            } else {
                self.head = i;
            }
            if next != NIL {
                self.slots[next as usize].prev = i;
            } else {
                self.tail = i;
            }
            if let Some(ix) = self.index.get_mut(&self.slots[last as usize].key) {
                *ix = i;
            }
        }
        let slot = self.slots.swap_remove(i as usize);
        (slot.key, slot.value)
    }

    fn touch(&mut self, i: u32) {
        if self.head == i {
            return;
        }
        self.unlink(i);
        self.link_front(i);
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn link_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }
}

/// A record kept until a point in time.
pub(crate) trait Expiring {
    /// When the record may be dropped.
    fn forget_at(&self) -> Millis;
}

/// A map with at most `cap` records, ordered by when they may be forgotten.
///
/// When full, inserting a new key drops the record that would be forgotten soonest.
#[derive(Debug)]
pub(crate) struct ExpiryTable<K: Ord, R> {
    map: HashMap<K, R>,
    by_expiry: BTreeSet<(Millis, K)>,
    cap: usize,
}

impl<K: Hash + Ord + Clone, R: Expiring> ExpiryTable<K, R> {
    /// An empty table holding at most `cap` records (at least 1).
    pub(crate) fn new(cap: usize) -> Self {
        ExpiryTable {
            map: HashMap::new(),
            by_expiry: BTreeSet::new(),
            cap: cap.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &R)> {
        self.map.iter()
    }

    /// Inserts or replaces the record for `key`; returns the key evicted to make room, if any.
    pub(crate) fn insert(&mut self, key: K, record: R) -> Option<K> {
        let mut evicted = None;
        if let Some(old) = self.map.get(&key) {
            self.by_expiry.remove(&(old.forget_at(), key.clone()));
        } else if self.map.len() >= self.cap {
            if let Some((_, k)) = self.by_expiry.pop_first() {
                self.map.remove(&k);
                evicted = Some(k);
            }
        }
        self.by_expiry.insert((record.forget_at(), key.clone()));
        self.map.insert(key, record);
        evicted
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (k, r) = self.map.remove_entry(key)?;
        self.by_expiry.remove(&(r.forget_at(), k));
        Some(r)
    }

    /// The earliest time a record may be forgotten.
    pub(crate) fn next_expiry(&self) -> Option<Millis> {
        self.by_expiry.first().map(|(t, _)| *t)
    }

    /// Drops up to `budget` records whose time has come; returns how many were dropped.
    pub(crate) fn expire(&mut self, now: Millis, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            match self.by_expiry.first() {
                Some((t, _)) if *t <= now => {}
                _ => break,
            }
            if let Some((_, k)) = self.by_expiry.pop_first() {
                self.map.remove(&k);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut t: LruTable<u32, u32> = LruTable::new(3);
        *t.get_or_insert_with(1, || 10) += 0;
        t.get_or_insert_with(2, || 20);
        t.get_or_insert_with(3, || 30);
        // Touch 1 so 2 becomes the oldest.
        assert_eq!(t.get_mut(&1).copied(), Some(10));
        t.get_or_insert_with(4, || 40);
        assert_eq!(t.len(), 3);
        assert!(t.peek(&2).is_none());
        assert_eq!(t.peek(&1), Some(&10));
        assert_eq!(t.oldest().map(|(k, _)| *k), Some(3));
        assert_eq!(t.pop_oldest(), Some((3, 30)));
        assert_eq!(t.oldest().map(|(k, _)| *k), Some(1));
    }

    #[test]
    fn lru_remove_keeps_links_consistent() {
        let mut t: LruTable<u32, u32> = LruTable::new(10);
        for k in 0..6 {
            t.get_or_insert_with(k, || k * 10);
        }
        // Remove from the middle, the head and the tail.
        assert_eq!(t.remove(&2), Some(20));
        assert_eq!(t.remove(&5), Some(50));
        assert_eq!(t.remove(&0), Some(0));
        assert_eq!(t.remove(&0), None);
        let mut order = Vec::new();
        while let Some((k, _)) = t.pop_oldest() {
            order.push(k);
        }
        assert_eq!(order, vec![1, 3, 4]);
        assert_eq!(t.len(), 0);
        t.get_or_insert_with(9, || 90);
        assert_eq!(t.peek(&9), Some(&90));
    }

    #[derive(Debug)]
    struct Rec(Millis);
    impl Expiring for Rec {
        fn forget_at(&self) -> Millis {
            self.0
        }
    }

    #[test]
    fn expiry_table_drops_soonest_when_full_and_expires_in_order() {
        let mut t: ExpiryTable<u32, Rec> = ExpiryTable::new(2);
        assert_eq!(t.insert(1, Rec(100)), None);
        assert_eq!(t.insert(2, Rec(50)), None);
        assert_eq!(t.insert(3, Rec(200)), Some(2));
        assert_eq!(t.len(), 2);
        // Replacing a record re-indexes it.
        assert_eq!(t.insert(1, Rec(300)), None);
        assert_eq!(t.next_expiry(), Some(200));
        assert_eq!(t.expire(250, 10), 1);
        assert!(t.get(&3).is_none());
        assert_eq!(t.remove(&1).map(|r| r.0), Some(300));
        assert_eq!(t.next_expiry(), None);
    }
}
