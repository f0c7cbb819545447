//! An ordered map and set over one sorted ring buffer (`VecDeque`).
//!
//! `BTreeMap` allocates a node whenever an insert fills one, and there is no
//! fallible insert on stable Rust. [`TryMap`] keeps its entries sorted in one
//! `VecDeque`: lookups are binary searches, an insert reserves room with
//! `try_reserve` before it moves anything, and a remove never allocates. An
//! insert or remove moves the entries on its shorter side only, so taking
//! the first entry (unmapping areas in the order they were mapped) or adding
//! after the last costs nothing however many there are; in the middle it is
//! cheap at the sizes the kernel holds per task (quotas bound them to
//! thousands).
//!
//! Room: growing doubles, from 4, to `max(4, n.next_power_of_two())` for
//! `n` entries. A remove keeps the room (so room reserved before a remove
//! is still there for the insert after it); [`TryMap::shrink`], called
//! where an operation that removed entries ends, brings the room back to
//! what the length asks for (none when empty) — allocated fallibly, and
//! skipped when the heap has none, so it never fails. A map shrunk that way
//! holds a heap that is a function of its length, so a kernel that returns
//! to a state returns to its heap use too (the leak checks compare heap
//! bytes), as it would with `BTreeMap`.

use crate::AllocError;
use alloc::collections::VecDeque;
use core::ops::{Bound, RangeBounds};

/// An ordered map whose inserts answer a full heap (see the module doc).
#[derive(Clone, PartialEq, Eq)]
pub struct TryMap<K, V> {
    entries: VecDeque<(K, V)>,
    /// Room kept however few entries there are ([`TryMap::with_floor`]).
    floor: usize,
}

impl<K, V> Default for TryMap<K, V> {
    fn default() -> Self {
        TryMap { entries: VecDeque::new(), floor: 0 }
    }
}

impl<K: core::fmt::Debug, V: core::fmt::Debug> core::fmt::Debug for TryMap<K, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(k, v)| (k, v))).finish()
    }
}

/// Iterator over `(&K, &V)` in key order.
pub type Iter<'a, K, V> =
    core::iter::Map<alloc::collections::vec_deque::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
/// Iterator over `(&K, &mut V)` in key order.
pub type IterMut<'a, K, V> =
    core::iter::Map<alloc::collections::vec_deque::IterMut<'a, (K, V)>, fn(&'a mut (K, V)) -> (&'a K, &'a mut V)>;

fn pair<K, V>(e: &(K, V)) -> (&K, &V) {
    (&e.0, &e.1)
}

fn pair_mut<K, V>(e: &mut (K, V)) -> (&K, &mut V) {
    (&e.0, &mut e.1)
}

impl<K: Ord, V> TryMap<K, V> {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        TryMap { entries: VecDeque::new(), floor: 0 }
    }

    /// An empty map with room for `floor` entries reserved now and kept
    /// while it lives, however few entries it holds: a map that fills and
    /// empties again (one mapping made and taken down, over and over)
    /// allocates nothing after its creation. Its heap is still a function
    /// of its length (see the module doc), with the floor under it.
    /// The floor is rounded up to a size the map grows by (a power of two, 4 or more).
    pub fn with_floor(floor: usize) -> Result<Self, AllocError> {
        let floor = if floor == 0 { 0 } else { floor.checked_next_power_of_two().ok_or(AllocError)?.max(4) };
        let mut entries = VecDeque::new();
        entries.try_reserve_exact(floor)?;
        Ok(TryMap { entries, floor })
    }

    /// Entries in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        // A key past the last one (an id never handed out, the next entry
        // of a map that grows upward) needs no search.
        match self.entries.back() {
            None => return Err(0),
            Some((last, _)) if *last < *key => return Err(self.entries.len()),
            _ => {}
        }
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value under `key`, to change it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self.find(key) {
            Ok(i) => Some(&mut self.entries[i].1),
            Err(_) => None,
        }
    }

    /// True when `key` is in the map.
    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// Puts `value` under `key` and returns the value it replaces; on
    /// [`AllocError`] the map is unchanged (and `value` dropped).
    pub fn try_insert(&mut self, key: K, value: V) -> Result<Option<V>, AllocError> {
        match self.find(&key) {
            Ok(i) => Ok(Some(core::mem::replace(&mut self.entries[i].1, value))),
            Err(i) => {
                self.room_for(self.entries.len() + 1)?;
                self.entries.insert(i, (key, value));
                Ok(None)
            }
        }
    }

    /// Room for `more` inserts that then cannot fail, or [`AllocError`].
    pub fn try_reserve(&mut self, more: usize) -> Result<(), AllocError> {
        self.room_for(self.entries.len().checked_add(more).ok_or(AllocError)?)
    }

    /// The room a map of `len` entries keeps.
    fn room(&self, len: usize) -> usize {
        let room = if len == 0 { 0 } else { len.checked_next_power_of_two().unwrap_or(len).max(4) };
        room.max(self.floor)
    }

    /// Room for `len` entries, in the size [`Self::room`] says.
    fn room_for(&mut self, len: usize) -> Result<(), AllocError> {
        if len <= self.entries.capacity() {
            return Ok(());
        }
        let want = self.room(len);
        Ok(self.entries.try_reserve_exact(want - self.entries.len())?)
    }

    /// After removals, where an operation ends: down to the room the length
    /// asks for (see the module doc), when a vector of that size can be had
    /// (otherwise the room stays; nothing fails). Not between a reserve and
    /// the insert it was for.
    pub fn shrink(&mut self) {
        let want = self.room(self.entries.len());
        if self.entries.capacity() <= want || self.entries.len() > self.entries.capacity() / 2 {
            return;
        }
        if want == 0 {
            self.entries = VecDeque::new(); // frees; never fails
            return;
        }
        let mut smaller = VecDeque::new();
        if smaller.try_reserve_exact(want).is_ok() {
            smaller.append(&mut self.entries); // reserved: no allocation
            self.entries = smaller;
        }
    }

    /// Takes the entry under `key` out (never allocates).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.find(key).ok().and_then(|i| self.entries.remove(i)).map(|(_, v)| v)
    }

    /// Keeps only the entries `keep` accepts (never allocates).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// Removes every entry (keeps nothing allocated).
    pub fn clear(&mut self) {
        self.entries = VecDeque::new();
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        self.entries.iter().map(pair as fn(&(K, V)) -> (&K, &V))
    }

    /// The entries in key order, values changeable.
    pub fn iter_mut(&mut self) -> IterMut<'_, K, V> {
        self.entries.iter_mut().map(pair_mut as fn(&mut (K, V)) -> (&K, &mut V))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values in key order, changeable.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// The entry with the smallest key.
    pub fn first_key_value(&self) -> Option<(&K, &V)> {
        self.entries.front().map(pair)
    }

    /// The entry with the largest key.
    pub fn last_key_value(&self) -> Option<(&K, &V)> {
        self.entries.back().map(pair)
    }

    /// Index bounds of the entries whose keys are in `range`: one binary
    /// search for the start; the end is found by looking at the one or two
    /// entries after it first (most ranges asked for hold one entry or
    /// none), by a search of what follows the start only if that fails.
    fn span(&self, range: impl RangeBounds<K>) -> (usize, usize) {
        let lo = match range.start_bound() {
            Bound::Included(k) => self.partition_from(0, |x| x < k),
            Bound::Excluded(k) => self.partition_from(0, |x| x <= k),
            Bound::Unbounded => 0,
        };
        let below_end = |x: &K| match range.end_bound() {
            Bound::Included(k) => x <= k,
            Bound::Excluded(k) => x < k,
            Bound::Unbounded => true,
        };
        let inside = |i: usize| self.entries.get(i).is_some_and(|(x, _)| below_end(x));
        let hi = if !inside(lo) {
            lo
        } else if !inside(lo + 1) {
            lo + 1
        } else {
            self.partition_from(lo + 2, below_end)
        };
        (lo, hi)
    }

    /// The first index at or after `from` whose key fails `pred` (which
    /// must hold for a prefix of the keys and fail for the rest, as for
    /// `partition_point`), searching only the entries from `from` on.
    fn partition_from(&self, from: usize, mut pred: impl FnMut(&K) -> bool) -> usize {
        let (front, back) = self.entries.as_slices();
        let from = from.min(self.entries.len());
        if from >= front.len() {
            let skip = from - front.len();
            return from + back[skip..].partition_point(|(k, _)| pred(k));
        }
        if back.first().is_some_and(|(k, _)| pred(k)) {
            front.len() + back.partition_point(|(k, _)| pred(k))
        } else {
            from + front[from..].partition_point(|(k, _)| pred(k))
        }
    }

    /// The entries whose keys are in `range`, in order (both ends, as `BTreeMap::range`).
    pub fn range(&self, range: impl RangeBounds<K>) -> Iter<'_, K, V> {
        let (lo, hi) = self.span(range);
        self.entries.range(lo..hi).map(pair as fn(&(K, V)) -> (&K, &V))
    }

    /// The entries whose keys are in `range`, values changeable.
    pub fn range_mut(&mut self, range: impl RangeBounds<K>) -> IterMut<'_, K, V> {
        let (lo, hi) = self.span(range);
        self.entries.range_mut(lo..hi).map(pair_mut as fn(&mut (K, V)) -> (&K, &mut V))
    }
}

impl<K: Ord, V> TryMap<K, V> {
    /// Takes the entries whose keys are in `range` out, in order, in one
    /// pass (the entries on the shorter side move once, whatever the count
    /// taken; never allocates). Entries the iterator is not driven to are
    /// taken out all the same when it is dropped.
    pub fn drain(&mut self, range: impl RangeBounds<K>) -> impl DoubleEndedIterator<Item = (K, V)> + '_ {
        let (lo, hi) = self.span(range);
        self.entries.drain(lo..hi)
    }

    /// Opens a run of inserts at the place `key` would go: entries pushed
    /// into the [`Run`], in increasing key order and all between the keys
    /// around that place, cost one move each (plus, when the run opens and
    /// closes, one move of the entries on the shorter side of the place),
    /// where inserting them one at a time would move that side each time.
    /// Reserve room first ([`TryMap::try_reserve`]): a run never allocates.
    pub fn run_at(&mut self, key: &K) -> Run<'_, K, V> {
        let before = self.entries.partition_point(|(x, _)| x < key);
        let after = self.entries.len() - before;
        // [before, after] becomes [after, before]: the place is the back.
        self.entries.rotate_left(before);
        Run { map: self, before, pushed: 0, after }
    }
}

/// Inserts at one place of a [`TryMap`] ([`TryMap::run_at`]). While it is
/// open the map is out of order inside (it holds the map borrowed, so
/// nothing can look); dropping it puts the order back.
pub struct Run<'a, K: Ord, V> {
    map: &'a mut TryMap<K, V>,
    /// Entries before the place.
    before: usize,
    /// Entries this run added.
    pushed: usize,
    /// Entries after the place (now at the front).
    after: usize,
}

impl<K: Ord, V> Run<'_, K, V> {
    /// Adds `key` after the entries pushed so far; refused (handed back)
    /// when there is no room reserved for it or it is out of place: not
    /// above the key before it, or not below the first key after the place.
    pub fn push(&mut self, key: K, value: V) -> Result<(), (K, V)> {
        let e = &self.map.entries;
        let above_previous = self.before + self.pushed == 0 || e.back().is_some_and(|(k, _)| *k < key);
        let below_next = self.after == 0 || e.front().is_some_and(|(k, _)| key < *k);
        if e.len() == e.capacity() || !above_previous || !below_next {
            return Err((key, value));
        }
        self.map.entries.push_back((key, value));
        self.pushed += 1;
        Ok(())
    }

    /// Takes the last entry this run pushed out again (never one that was
    /// there before).
    pub fn pop(&mut self) -> Option<(K, V)> {
        if self.pushed == 0 {
            return None;
        }
        self.pushed -= 1;
        self.map.entries.pop_back()
    }

    /// Entries this run added and did not take out.
    pub fn pushed(&self) -> usize {
        self.pushed
    }
}

impl<K: Ord, V> Drop for Run<'_, K, V> {
    fn drop(&mut self) {
        // [after, before, pushed] back to [before, pushed, after].
        self.map.entries.rotate_left(self.after);
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a TryMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K, V> IntoIterator for TryMap<K, V> {
    type Item = (K, V);
    type IntoIter = alloc::collections::vec_deque::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// An ordered set whose inserts answer a full heap: a [`TryMap`] without values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrySet<K> {
    map: TryMap<K, ()>,
}

impl<K: core::fmt::Debug> core::fmt::Debug for TrySet<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.map.entries.iter().map(|(k, _)| k)).finish()
    }
}

impl<K: Ord> TrySet<K> {
    /// An empty set (allocates nothing).
    pub const fn new() -> Self {
        TrySet { map: TryMap::new() }
    }

    /// Members of the set.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when `key` is a member.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Adds `key`; true when it was not there. On [`AllocError`] the set is unchanged.
    pub fn try_insert(&mut self, key: K) -> Result<bool, AllocError> {
        Ok(self.map.try_insert(key, ())?.is_none())
    }

    /// As [`TryMap::shrink`].
    pub fn shrink(&mut self) {
        self.map.shrink();
    }

    /// Takes `key` out; true when it was there (never allocates).
    pub fn remove(&mut self, key: &K) -> bool {
        self.map.remove(key).is_some()
    }

    /// The members in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.map.keys()
    }

    /// The members in `range`, in order.
    pub fn range(&self, range: impl RangeBounds<K>) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.map.range(range).map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::{BTreeMap, BTreeSet};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Remove(u8),
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Every answer matches `BTreeMap`'s, ranges included.
        #[test]
        fn behaves_as_btreemap(ops in proptest::collection::vec(op(), 0..200), lo in any::<u8>(), hi in any::<u8>()) {
            let mut ours = TryMap::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(ours.try_insert(k, v).unwrap(), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(ours.remove(&k), model.remove(&k)),
                    Op::Retain(m) => {
                        ours.retain(|k, _| k % m.max(1) != 0);
                        model.retain(|k, _| k % m.max(1) != 0);
                    }
                }
                prop_assert_eq!(ours.len(), model.len());
            }
            prop_assert!(ours.iter().eq(model.iter()));
            prop_assert_eq!(ours.first_key_value(), model.first_key_value());
            prop_assert_eq!(ours.last_key_value(), model.last_key_value());
            // A run opened and closed at `lo` rotates the deque there and
            // back: the entries may now wrap around its buffer, which the
            // searches below must see through.
            drop(ours.run_at(&lo));
            prop_assert!(ours.iter().eq(model.iter()));
            prop_assert!(ours.range(lo..=lo).eq(model.range(lo..=lo)));
            prop_assert!(ours.range(hi..).eq(model.range(hi..)));
            if lo <= hi {
                prop_assert!(ours.range(lo..hi).eq(model.range(lo..hi)));
                prop_assert!(ours.range(lo..=hi).eq(model.range(lo..=hi)));
                prop_assert!(ours.range(..=hi).rev().eq(model.range(..=hi).rev()));
                prop_assert!(ours.range((Bound::Excluded(lo), Bound::Unbounded)).eq(model.range((Bound::Excluded(lo), Bound::Unbounded))));
            }
            for k in 0..=255u8 {
                prop_assert_eq!(ours.get(&k), model.get(&k));
                prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
            }
        }

        /// The set matches `BTreeSet`.
        #[test]
        fn set_behaves_as_btreeset(keys in proptest::collection::vec((any::<u8>(), any::<bool>()), 0..200)) {
            let mut ours = TrySet::new();
            let mut model = BTreeSet::new();
            for (k, add) in keys {
                if add {
                    prop_assert_eq!(ours.try_insert(k).unwrap(), model.insert(k));
                } else {
                    prop_assert_eq!(ours.remove(&k), model.remove(&k));
                }
            }
            prop_assert!(ours.iter().eq(model.iter()));
            prop_assert!(ours.range(10..100).eq(model.range(10..100)));
        }
    }

    proptest! {
        /// The room a map keeps is a function of its length (so the heap a
        /// state holds does not depend on the path that led there).
        #[test]
        fn room_follows_the_length(ops in proptest::collection::vec((any::<bool>(), 0u16..300), 0..400), floor in 0usize..7) {
            let mut m = if floor == 0 { TryMap::new() } else { TryMap::with_floor(floor).unwrap() };
            let floor = if floor == 0 { 0 } else { floor.next_power_of_two().max(4) };
            prop_assert_eq!(m.entries.capacity(), floor, "the floor is reserved at creation");
            for (add, k) in ops {
                if add {
                    m.try_insert(k, 0u64).unwrap();
                } else {
                    m.remove(&k);
                    m.shrink();
                }
                prop_assert_eq!(m.entries.capacity(), m.room(m.len()), "len {}", m.len());
            }
            m.retain(|k, _| k % 7 == 0);
            m.shrink();
            prop_assert_eq!(m.entries.capacity(), m.room(m.len()));
            m.retain(|_, _| false);
            m.shrink();
            prop_assert_eq!(m.entries.capacity(), floor, "an emptied map keeps its floor, no more");
        }
    }

    proptest! {
        /// A run inserts what a loop of inserts would, refuses what is out
        /// of place or has no room, and a drain takes out exactly a range.
        #[test]
        fn runs_and_drains_behave_as_btreemap(
            keys in proptest::collection::btree_set(any::<u16>(), 0..120),
            at in any::<u16>(),
            run in proptest::collection::vec(any::<u16>(), 0..40),
            pops in 0usize..5,
            room in 0usize..50,
            lo in any::<u16>(),
            hi in any::<u16>(),
        ) {
            let mut m = TryMap::new();
            let mut model = BTreeMap::new();
            for &k in &keys {
                m.try_insert(k, u32::from(k)).unwrap();
                model.insert(k, u32::from(k));
            }
            m.try_reserve(room).unwrap();
            let spare = m.entries.capacity() - m.len();
            let prev = model.range(..at).next_back().map(|(&k, _)| k);
            let next = model.range(at..).next().map(|(&k, _)| k);
            let mut last = prev;
            let mut added = alloc::vec::Vec::new();
            {
                let mut r = m.run_at(&at);
                for &k in &run {
                    let fits = last.is_none_or(|l| l < k) && next.is_none_or(|n| k < n) && added.len() < spare;
                    let got = r.push(k, 7);
                    prop_assert_eq!(got.is_ok(), fits, "push {}", k);
                    if fits {
                        added.push(k);
                        last = Some(k);
                    }
                }
                for _ in 0..pops {
                    let want = added.pop();
                    prop_assert_eq!(r.pop().map(|(k, _)| k), want);
                }
                prop_assert_eq!(r.pushed(), added.len());
            }
            for &k in &added {
                model.insert(k, 7);
            }
            prop_assert!(m.iter().map(|(k, v)| (*k, *v)).eq(model.iter().map(|(k, v)| (*k, *v))));
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let taken: alloc::vec::Vec<(u16, u32)> = m.drain(lo..hi).collect();
            let want: alloc::vec::Vec<(u16, u32)> = model.range(lo..hi).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(taken, want);
            model.retain(|k, _| !(lo..hi).contains(k));
            prop_assert!(m.iter().map(|(k, v)| (*k, *v)).eq(model.iter().map(|(k, v)| (*k, *v))));
        }
    }

    #[test]
    fn an_empty_range_is_empty_even_when_reversed() {
        let mut m = TryMap::new();
        for k in [1, 5, 9] {
            m.try_insert(k, ()).unwrap();
        }
        assert_eq!(m.range(6..6).count(), 0);
        assert_eq!(m.range(5..=5).count(), 1);
        assert_eq!(m.range((Bound::Excluded(5), Bound::Excluded(5))).count(), 0);
        m.range_mut(..).for_each(|(_, v)| *v = ());
        m.clear();
        assert!(m.is_empty());
    }
}
