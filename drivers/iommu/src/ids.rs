//! Allocation of the small tags units put on their TLB entries: VT-d domain
//! IDs (within CAP.ND), SMMUv3 ASIDs and VMIDs, AMD-Vi domain IDs.

use alloc::vec::Vec;

/// A bitmap of IDs in use. ID 0 is never handed out (VT-d with CAP.CM tags
/// invalid-entry translations with it, §6.2.3.1; elsewhere 0 is kept for the
/// kernel's own use).
#[derive(Debug)]
pub struct IdAllocator {
    count: usize,
    used: Vec<u64>,
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
        Self { count, used }
    }

    /// Takes the lowest free ID, or `None` when all are in use.
    pub fn alloc(&mut self) -> Option<u16> {
        let (w, word) = self.used.iter_mut().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let id = w * 64 + word.trailing_ones() as usize;
        if id >= self.count {
            return None;
        }
        *word |= 1 << (id % 64);
        Some(id as u16)
    }

    /// Returns `id`; freeing ID 0, an ID out of range or a free ID changes nothing.
    pub fn free(&mut self, id: u16) {
        if id == 0 {
            return;
        }
        if let Some(w) = self.used.get_mut(usize::from(id) / 64) {
            *w &= !(1 << (id % 64));
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
    fn full_sixteen_bit_space() {
        let mut ids = IdAllocator::new(1 << 16);
        let n = core::iter::from_fn(|| ids.alloc()).count();
        assert_eq!(n, (1 << 16) - 1);
    }
}
