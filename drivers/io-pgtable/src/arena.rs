//! [`TableMemory`] over plain host memory, counting every frame; it can be
//! told to fail the N-th allocation. Used by the tests and the benchmark.
//!
//! The frames are one flat vector of words (frame `s` is words `512 s ..
//! 512 (s + 1)`), so an entry access is one bounds-checked index, as cheap
//! as the kernel's direct map: the benchmark then measures the engine, not
//! the arena. Builds with debug assertions (the tests, the fuzz targets)
//! also refuse any access to a freed frame.

use crate::TableMemory;
use alloc::vec::Vec;

/// Fake physical address of frame 0 (non-zero, so a zero entry never aliases a frame).
const BASE: u64 = 0x1_0000_0000;
/// Entries per frame.
const WORDS: usize = 512;

/// A growable set of 4 KiB frames addressed by fake physical addresses.
#[derive(Debug, Default)]
pub struct Arena {
    words: Vec<u64>,
    alive: Vec<bool>,
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

    /// Where entry `index` of the frame at `table` lives in `words`.
    fn at(&self, table: u64, index: usize) -> usize {
        let s = Self::slot(table);
        debug_assert!(self.alive.get(s) == Some(&true), "access to freed or unknown table {table:#x}");
        s * WORDS + index % WORDS
    }
}

impl TableMemory for Arena {
    fn alloc_table(&mut self) -> Option<u64> {
        let n = self.allocations;
        self.allocations += 1;
        if self.fail_at == Some(n) {
            return None;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.words[s * WORDS..(s + 1) * WORDS].fill(0);
                s
            }
            None => {
                // Room in the free list for every frame, so `free_table`
                // never allocates; the heap failing is an exhausted table
                // memory (a heap fail-nth test sees it so).
                let s = self.alive.len();
                let want = (s + 1).saturating_sub(self.free.len());
                if self.free.try_reserve(want).is_err()
                    || self.alive.try_reserve(1).is_err()
                    || self.words.try_reserve(WORDS).is_err()
                {
                    return None;
                }
                self.words.resize((s + 1) * WORDS, 0);
                self.alive.push(false);
                s
            }
        };
        self.alive[slot] = true;
        self.live += 1;
        Some(BASE + slot as u64 * 4096)
    }

    fn free_table(&mut self, pa: u64) {
        let s = Self::slot(pa);
        assert!(self.alive.get(s) == Some(&true), "double free of table {pa:#x}");
        self.alive[s] = false;
        self.free.push(s); // room reserved in `alloc_table`
        self.live -= 1;
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.words[self.at(table, index)]
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        let i = self.at(table, index);
        self.words[i] = value;
    }
}
