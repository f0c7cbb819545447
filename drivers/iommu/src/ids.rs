//! Allocation of the small tags units put on their TLB entries: VT-d domain
//! IDs (within CAP.ND), SMMUv3 ASIDs and VMIDs, AMD-Vi domain IDs; and of
//! interrupt-remapping table entries (VT-d handles, AMD-Vi indices).

use alloc::vec::Vec;

/// A bitmap of IDs in use. ID 0 is never handed out (VT-d with CAP.CM tags
/// invalid-entry translations with it, §6.2.3.1; elsewhere 0 is kept for the
/// kernel's own use).
#[derive(Debug)]
pub struct IdAllocator {
    count: usize,
    used: Vec<u64>,
    /// IDs handed out and not freed.
    in_use: usize,
}

impl IdAllocator {
    /// An allocator for IDs `1 .. count` (`count` at most 2^16). The bitmap
    /// (at most 8 KiB) is taken here, when the unit comes up, not at the
    /// first `alloc`: a task's first domain must not leave kernel heap
    /// behind that looks like a leak (the syscall fuzzer's baseline saw it).
    pub fn new(count: u32) -> Self {
        let count = count.min(1 << 16) as usize;
        let mut used = alloc::vec![0; count.div_ceil(64).max(1)];
        used[0] |= 1; // ID 0 stays unused
        Self { count, used, in_use: 0 }
    }

    fn taken(&self, i: usize) -> bool {
        self.used.get(i / 64).is_some_and(|w| w & 1 << (i % 64) != 0)
    }

    /// Whether `id` is handed out now (ID 0 and IDs out of range: false).
    pub fn is_used(&self, id: u16) -> bool {
        id != 0 && usize::from(id) < self.count && self.taken(usize::from(id))
    }

    /// IDs handed out now.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Takes `count` consecutive free IDs whose first is a multiple of
    /// `align` (1: anywhere), the lowest such run; returns its first ID.
    /// `None` when `count` is 0 or no run is free.
    pub fn alloc_run(&mut self, count: usize, align: usize) -> Option<u16> {
        let align = align.max(1);
        if count == 0 {
            return None;
        }
        let mut start = 0;
        while start + count <= self.count {
            match (start..start + count).find(|&i| self.taken(i)) {
                Some(busy) => start = (busy + 1).next_multiple_of(align),
                None => {
                    for i in start..start + count {
                        self.used[i / 64] |= 1 << (i % 64);
                    }
                    self.in_use += count;
                    return Some(start as u16);
                }
            }
        }
        None
    }

    /// Takes the lowest free ID, or `None` when all are in use.
    pub fn alloc(&mut self) -> Option<u16> {
        let (w, word) = self.used.iter_mut().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let id = w * 64 + word.trailing_ones() as usize;
        if id >= self.count {
            return None;
        }
        *word |= 1 << (id % 64);
        self.in_use += 1;
        Some(id as u16)
    }

    /// Returns `id`; freeing ID 0, an ID out of range or a free ID changes nothing.
    pub fn free(&mut self, id: u16) {
        if id == 0 {
            return;
        }
        if self.is_used(id) {
            self.used[usize::from(id) / 64] &= !(1 << (id % 64));
            self.in_use -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_id_once_then_none() {
        let mut ids = IdAllocator::new(16); // CAP.ND = 0
        let got: Vec<u16> = core::iter::from_fn(|| ids.alloc()).collect();
        assert_eq!(got, (1..16).collect::<Vec<u16>>());
        assert_eq!(ids.alloc(), None);
        ids.free(7);
        assert_eq!(ids.alloc(), Some(7));
        assert_eq!(ids.alloc(), None);
    }

    #[test]
    fn zero_and_out_of_range_frees_change_nothing() {
        let mut ids = IdAllocator::new(1 << 16);
        assert_eq!(ids.alloc(), Some(1));
        ids.free(0);
        ids.free(u16::MAX);
        assert_eq!(ids.alloc(), Some(2));
        let mut small = IdAllocator::new(16);
        small.free(500);
        assert_eq!(small.alloc(), Some(1));
    }

    #[test]
    fn runs_are_consecutive_aligned_and_counted() {
        let mut ids = IdAllocator::new(32);
        assert_eq!(ids.alloc_run(0, 1), None);
        assert_eq!(ids.alloc_run(4, 1), Some(1), "ID 0 is never part of a run");
        assert_eq!(ids.alloc_run(4, 4), Some(8), "aligned: 4 is taken by the first run");
        assert_eq!(ids.alloc(), Some(5));
        assert_eq!(ids.in_use(), 9);
        assert!(ids.is_used(9) && !ids.is_used(12) && !ids.is_used(0) && !ids.is_used(40));
        assert_eq!(ids.alloc_run(21, 1), None, "only 20 are free in a row (12..32)");
        assert_eq!(ids.alloc_run(16, 16), Some(16));
        ids.free(16);
        ids.free(16);
        assert_eq!(ids.in_use(), 24, "a second free changes nothing");
        assert_eq!(ids.alloc_run(32, 1), None);
    }

    #[test]
    fn full_sixteen_bit_space() {
        let mut ids = IdAllocator::new(1 << 16);
        let n = core::iter::from_fn(|| ids.alloc()).count();
        assert_eq!(n, (1 << 16) - 1);
    }
}
