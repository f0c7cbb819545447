//! Pin counts of task frames mapped for DMA: one word per frame of RAM,
//! indexed by frame number (issue 18: a pin allocates nothing; issue 19: a
//! pin is an add, not a tree insert).
//!
//! A frame's word holds its pin count (how many IOAS mappings hold it) and
//! two marks: *orphan* (the task gave the page up while it was pinned: the
//! last unpin frees it) and *quarantined* (a unit may still reach it: never
//! freed). The table is sized once at boot for the frame allocator's span,
//! so nothing here can run out of memory.

use crate::frames::FRAME_SIZE;

const COUNT: u32 = (1 << 30) - 1;
const ORPHAN: u32 = 1 << 30;
const QUARANTINED: u32 = 1 << 31;

/// Why a pin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError {
    /// The frame is outside the RAM the table covers.
    OutOfRange(u64),
    /// The frame holds the most pins a word can count (2^30 - 1; the quotas
    /// keep every task far below).
    Saturated(u64),
}

/// What an unpin leaves the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpinned {
    /// Other mappings still hold the frame, or nobody held it.
    Kept,
    /// That was the last pin of a frame its task still owns.
    Released,
    /// That was the last pin of an orphan: the caller frees the frame now.
    FreeOrphan,
}

/// The table over `[base, base + words.len() * 4 KiB)`.
pub struct PinTable<'a> {
    base: u64,
    words: &'a mut [u32],
    pinned: usize,
    quarantined: usize,
}

impl<'a> PinTable<'a> {
    /// A table with nothing pinned (clears `words`).
    pub fn new(base: u64, words: &'a mut [u32]) -> Self {
        words.iter_mut().for_each(|w| *w = 0);
        PinTable { base, words, pinned: 0, quarantined: 0 }
    }

    fn slot(&self, pa: u64) -> Option<usize> {
        let i = pa.checked_sub(self.base)? / FRAME_SIZE;
        (i < self.words.len() as u64).then_some(i as usize)
    }

    /// One more pin on the frame holding `pa`.
    pub fn pin(&mut self, pa: u64) -> Result<(), PinError> {
        let i = self.slot(pa).ok_or(PinError::OutOfRange(pa))?;
        let w = self.words[i];
        if w & COUNT == COUNT {
            return Err(PinError::Saturated(pa));
        }
        if w & COUNT == 0 {
            self.pinned += 1;
        }
        self.words[i] = w + 1;
        Ok(())
    }

    /// One pin fewer on the frame holding `pa` (nothing if it had none).
    pub fn unpin(&mut self, pa: u64) -> Unpinned {
        let Some(i) = self.slot(pa) else { return Unpinned::Kept };
        let w = self.words[i];
        if w & COUNT == 0 {
            return Unpinned::Kept;
        }
        let w = w - 1;
        if w & COUNT != 0 {
            self.words[i] = w;
            return Unpinned::Kept;
        }
        self.pinned -= 1;
        if w & QUARANTINED != 0 {
            self.words[i] = w;
            Unpinned::Kept
        } else if w & ORPHAN != 0 {
            self.words[i] = 0;
            Unpinned::FreeOrphan
        } else {
            self.words[i] = 0;
            Unpinned::Released
        }
    }

    /// The slots of the `pages` frames from `pa`, or the first frame of
    /// them outside the table.
    fn slots(&self, pa: u64, pages: u64) -> Result<core::ops::Range<usize>, PinError> {
        let first = self.slot(pa).ok_or(PinError::OutOfRange(pa))?;
        let room = (self.words.len() - first) as u64;
        if pages > room {
            return Err(PinError::OutOfRange(self.base + (first as u64 + room) * FRAME_SIZE));
        }
        Ok(first..first + pages as usize)
    }

    /// One more pin on each of the `pages` frames from `pa` (a physically
    /// contiguous run), all or none: one pass over their words.
    pub fn pin_run(&mut self, pa: u64, pages: u64) -> Result<(), PinError> {
        let range = self.slots(pa, pages)?;
        let words = &mut self.words[range];
        if let Some(k) = words.iter().position(|w| w & COUNT == COUNT) {
            return Err(PinError::Saturated(pa + k as u64 * FRAME_SIZE));
        }
        let mut fresh = 0;
        for w in words.iter_mut() {
            fresh += usize::from(*w & COUNT == 0);
            *w += 1;
        }
        self.pinned += fresh;
        Ok(())
    }

    /// One pin fewer on each of the `pages` frames from `pa` (frames outside
    /// the table or without a pin are left alone, as [`PinTable::unpin`]);
    /// `free` gets each orphan whose last pin that was.
    pub fn unpin_run(&mut self, pa: u64, pages: u64, free: &mut dyn FnMut(u64)) {
        for frame in (0..pages).map(|k| pa + k * FRAME_SIZE) {
            if self.unpin(frame) == Unpinned::FreeOrphan {
                free(frame);
            }
        }
    }

    /// Whether the frame holding `pa` has a pin.
    pub fn is_pinned(&self, pa: u64) -> bool {
        self.slot(pa).is_some_and(|i| self.words[i] & COUNT != 0)
    }

    /// The task gives up the frame holding `pa`: true when it must not be
    /// freed now (pinned: its last unpin frees it; or quarantined).
    pub fn orphan(&mut self, pa: u64) -> bool {
        let Some(i) = self.slot(pa) else { return false };
        let w = self.words[i];
        if w & QUARANTINED != 0 {
            return true;
        }
        if w & COUNT == 0 {
            return false;
        }
        self.words[i] = w | ORPHAN;
        true
    }

    /// Keeps the frame holding `pa` from ever being freed; true when it was
    /// not quarantined before. `false` too for a frame outside the table,
    /// which the caller must then never free itself.
    pub fn quarantine(&mut self, pa: u64) -> bool {
        let Some(i) = self.slot(pa) else { return false };
        if self.words[i] & QUARANTINED != 0 {
            return false;
        }
        self.words[i] |= QUARANTINED;
        self.quarantined += 1;
        true
    }

    /// Frames with at least one pin.
    pub fn pinned(&self) -> usize {
        self.pinned
    }

    /// Frames quarantined so far.
    pub fn quarantined(&self) -> usize {
        self.quarantined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const BASE: u64 = 0x4000_0000;

    #[test]
    fn counts_orphans_and_quarantine() {
        let mut words = [7u32; 8];
        let mut t = PinTable::new(BASE, &mut words);
        let a = BASE + 0x1000;
        assert_eq!(t.pin(BASE - 0x1000), Err(PinError::OutOfRange(BASE - 0x1000)));
        assert_eq!(t.pin(BASE + 8 * 0x1000), Err(PinError::OutOfRange(BASE + 0x8000)));
        t.pin(a + 0x123).unwrap();
        t.pin(a).unwrap();
        assert_eq!(t.pinned(), 1);
        assert!(t.orphan(a), "a pinned frame is kept for its last unpin");
        assert_eq!(t.unpin(a), Unpinned::Kept);
        assert_eq!(t.unpin(a), Unpinned::FreeOrphan);
        assert_eq!(t.unpin(a), Unpinned::Kept, "no pin left: nothing to do");
        assert!(!t.orphan(a), "an unpinned frame is freed at once");
        assert_eq!(t.pinned(), 0);

        let b = BASE + 0x3000;
        t.pin(b).unwrap();
        assert!(t.quarantine(b));
        assert!(!t.quarantine(b));
        assert_eq!(t.unpin(b), Unpinned::Kept, "a quarantined frame is never handed back");
        assert!(t.orphan(b), "nor freed when its task lets it go");
        assert_eq!(t.quarantined(), 1);
        assert!(!t.quarantine(BASE + 0x10_0000));
    }

    #[test]
    fn a_word_saturates_instead_of_wrapping() {
        let mut words = [0u32; 1];
        let mut t = PinTable::new(BASE, &mut words);
        t.words[0] = COUNT - 1;
        t.pinned = 1;
        t.pin(BASE).unwrap();
        assert_eq!(t.pin(BASE), Err(PinError::Saturated(BASE)));
        assert_eq!(t.unpin(BASE), Unpinned::Kept);
    }

    #[test]
    fn a_run_is_pinned_whole_or_not_at_all() {
        let mut words = [0u32; 4];
        let mut t = PinTable::new(BASE, &mut words);
        assert_eq!(t.pin_run(BASE + 0x2000, 3), Err(PinError::OutOfRange(BASE + 0x4000)));
        assert_eq!(t.pin_run(BASE - 0x1000, 1), Err(PinError::OutOfRange(BASE - 0x1000)));
        assert_eq!(t.pinned(), 0, "nothing pinned by a refused run");
        t.words[2] = COUNT;
        assert_eq!(t.pin_run(BASE, 4), Err(PinError::Saturated(BASE + 0x2000)));
        assert!(t.words[..2].iter().all(|&w| w == 0) && t.words[3] == 0);
        t.words[2] = 0;
        t.pin_run(BASE, 4).unwrap();
        t.pin_run(BASE + 0x1000, 0).unwrap();
        assert_eq!(t.pinned(), 4);
    }

    proptest! {
        /// Runs against frame-by-frame pins and unpins: the same words, the
        /// same pinned count, the same orphans freed.
        #[test]
        fn runs_match_frame_by_frame(ops in proptest::collection::vec((0u8..3, 0u64..8, 0u64..5), 0..120)) {
            let (mut a, mut b) = ([0u32; 8], [0u32; 8]);
            let (mut runs, mut frames) = (PinTable::new(BASE, &mut a), PinTable::new(BASE, &mut b));
            for (op, f, n) in ops {
                let pa = BASE + f * FRAME_SIZE;
                match op {
                    0 => {
                        let one = (0..n).try_for_each(|k| frames.slot(pa + k * FRAME_SIZE).map(|_| ()).ok_or(()));
                        let got = runs.pin_run(pa, n);
                        prop_assert_eq!(got.is_ok(), one.is_ok());
                        if got.is_ok() {
                            for k in 0..n {
                                frames.pin(pa + k * FRAME_SIZE).unwrap();
                            }
                        }
                    }
                    1 => {
                        let mut freed = Vec::new();
                        runs.unpin_run(pa, n, &mut |x| freed.push(x));
                        let want: Vec<u64> = (0..n)
                            .map(|k| pa + k * FRAME_SIZE)
                            .filter(|&x| frames.unpin(x) == Unpinned::FreeOrphan)
                            .collect();
                        prop_assert_eq!(freed, want);
                    }
                    _ => {
                        prop_assert_eq!(runs.orphan(pa), frames.orphan(pa));
                    }
                }
                prop_assert_eq!(runs.pinned(), frames.pinned());
                prop_assert_eq!(&*runs.words, &*frames.words);
            }
        }

        /// Against a model: pins per frame, orphan marks, the pinned count.
        #[test]
        fn matches_a_map_of_counts(ops in proptest::collection::vec((0u8..4, 0u64..6), 0..200)) {
            let mut words = [0u32; 6];
            let mut t = PinTable::new(BASE, &mut words);
            let mut model: BTreeMap<u64, (u32, bool)> = BTreeMap::new();
            for (op, f) in ops {
                let pa = BASE + f * FRAME_SIZE;
                match op {
                    0 | 1 => {
                        t.pin(pa).unwrap();
                        model.entry(f).or_insert((0, false)).0 += 1;
                    }
                    2 => {
                        let want = match model.get_mut(&f) {
                            None => Unpinned::Kept,
                            Some(e) if e.0 > 1 => { e.0 -= 1; Unpinned::Kept }
                            Some(e) => {
                                let orphan = e.1;
                                model.remove(&f);
                                if orphan { Unpinned::FreeOrphan } else { Unpinned::Released }
                            }
                        };
                        prop_assert_eq!(t.unpin(pa), want);
                    }
                    _ => {
                        let kept = model.get_mut(&f).map(|e| e.1 = true).is_some();
                        prop_assert_eq!(t.orphan(pa), kept);
                    }
                }
                prop_assert_eq!(t.pinned(), model.len());
                for g in 0..6 {
                    prop_assert_eq!(t.is_pinned(BASE + g * FRAME_SIZE), model.contains_key(&g));
                }
            }
        }
    }
}
