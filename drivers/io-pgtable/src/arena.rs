//! [`TableMemory`] over plain host memory, counting every frame; it can be
//! told to fail the N-th allocation. Used by the tests and the benchmark.

use crate::TableMemory;
use alloc::vec::Vec;
use fallible::VecExt;

/// Fake physical address of frame 0 (non-zero, so a zero entry never aliases a frame).
const BASE: u64 = 0x1_0000_0000;

/// A growable set of 4 KiB frames addressed by fake physical addresses.
#[derive(Debug, Default)]
pub struct Arena {
    frames: Vec<Option<Vec<u64>>>,
    free: Vec<usize>,
    live: usize,
    allocations: usize,
    /// When `Some(n)`, the allocation with this sequence number (0-based) fails.
    pub fail_at: Option<usize>,
}

impl Arena {
    /// An empty arena.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames currently allocated.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Allocations attempted so far.
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    fn slot(pa: u64) -> usize {
        ((pa - BASE) / 4096) as usize
    }
}

impl TableMemory for Arena {
    fn alloc_table(&mut self) -> Option<u64> {
        let n = self.allocations;
        self.allocations += 1;
        if self.fail_at == Some(n) {
            return None;
        }
        // The frame's own heap allocation fails softly too (a heap fail-nth
        // test then sees it as an exhausted table memory).
        let frame = fallible::try_filled(0u64, 512).ok()?;
        let slot = match self.free.pop() {
            Some(s) => {
                self.frames[s] = Some(frame);
                s
            }
            None => {
                // Room in the free list for every frame, so `free_table`
                // never allocates.
                let want = (self.frames.len() + 1).saturating_sub(self.free.len());
                if self.free.try_reserve(want).is_err() || self.frames.try_push(Some(frame)).is_err() {
                    return None;
                }
                self.frames.len() - 1
            }
        };
        self.live += 1;
        Some(BASE + slot as u64 * 4096)
    }

    fn free_table(&mut self, pa: u64) {
        let s = Self::slot(pa);
        assert!(self.frames[s].take().is_some(), "double free of table {pa:#x}");
        self.free.push(s); // room reserved in `alloc_table`
        self.live -= 1;
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.frames[Self::slot(table)].as_ref().expect("read of a freed table")[index]
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.frames[Self::slot(table)].as_mut().expect("write to a freed table")[index] = value;
    }
}
