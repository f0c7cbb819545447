//! Physical frame allocator: one bit per 4 KiB frame over the span of usable RAM.
//!
//! A set bit means "in use". Everything starts in use; the boot flow releases
//! usable RAM and then reserves the kernel image, firmware regions and the
//! bitmap itself, so overlapping or unordered memory maps are handled by the
//! order of operations rather than by trusting the firmware to be tidy.

use core::fmt;

/// Size of one physical frame.
pub const FRAME_SIZE: u64 = 4096;

/// Why a frame operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The address is not 4 KiB aligned.
    Unaligned(u64),
    /// The address lies outside the managed span.
    OutOfRange(u64),
    /// The frame is not currently allocated (double free or never handed out).
    NotAllocated(u64),
    /// The allocator has not been initialised.
    Uninitialised,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Unaligned(a) => write!(f, "frame address {a:#x} is not 4 KiB aligned"),
            FrameError::OutOfRange(a) => write!(f, "frame address {a:#x} is outside managed memory"),
            FrameError::NotAllocated(a) => write!(f, "frame {a:#x} is not allocated (double free?)"),
            FrameError::Uninitialised => f.write_str("frame allocator not initialised"),
        }
    }
}

/// Number of `u64` words a bitmap for `frames` frames needs.
pub const fn bitmap_words(frames: usize) -> usize {
    frames.div_ceil(64)
}

/// A bitmap frame allocator over `[base, base + frames * 4 KiB)`.
pub struct FrameBitmap<'a> {
    base: u64,
    frames: usize,
    words: &'a mut [u64],
    free: usize,
    next: usize,
}

impl<'a> FrameBitmap<'a> {
    /// Creates an allocator with every frame in use. `words` must hold at
    /// least [`bitmap_words`]`(frames)` entries; extra frames are cut off.
    pub fn new(base: u64, frames: usize, words: &'a mut [u64]) -> Self {
        let frames = frames.min(words.len() * 64);
        words.iter_mut().for_each(|w| *w = !0);
        FrameBitmap { base: base & !(FRAME_SIZE - 1), frames, words, free: 0, next: 0 }
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Address of the first frame managed.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Frames managed in total.
    pub fn total_frames(&self) -> usize {
        self.frames
    }

    fn is_used(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, used: bool) {
        let was = self.is_used(i);
        if used && !was {
            self.words[i / 64] |= 1 << (i % 64);
            self.free -= 1;
        } else if !used && was {
            self.words[i / 64] &= !(1 << (i % 64));
            self.free += 1;
        }
    }

    /// Frame indices `[first, last)` clipped to the span.
    fn clip(&self, start: u64, end: u64) -> (usize, usize) {
        let lo = start.max(self.base);
        let hi = end.min(self.base + self.frames as u64 * FRAME_SIZE);
        if hi <= lo {
            return (0, 0);
        }
        (((lo - self.base) / FRAME_SIZE) as usize, ((hi - self.base) / FRAME_SIZE) as usize)
    }

    /// Marks every frame wholly inside `[start, end)` free.
    pub fn release_range(&mut self, start: u64, end: u64) {
        let start = start.saturating_add(FRAME_SIZE - 1) & !(FRAME_SIZE - 1);
        let end = end & !(FRAME_SIZE - 1);
        let (a, b) = self.clip(start, end);
        (a..b).for_each(|i| self.set(i, false));
        self.next = self.next.min(a);
    }

    /// Marks every frame touching `[start, end)` in use.
    pub fn reserve_range(&mut self, start: u64, end: u64) {
        let start = start & !(FRAME_SIZE - 1);
        let end = end.saturating_add(FRAME_SIZE - 1) & !(FRAME_SIZE - 1);
        let (a, b) = self.clip(start, end);
        (a..b).for_each(|i| self.set(i, true));
    }

    /// Hands out one free frame.
    pub fn alloc(&mut self) -> Option<u64> {
        self.alloc_contiguous(1, 1)
    }

    /// Hands out `count` contiguous frames whose first frame number is a
    /// multiple of `align_frames` (a power of two; 0 is treated as 1).
    pub fn alloc_contiguous(&mut self, count: usize, align_frames: usize) -> Option<u64> {
        let align = align_frames.max(1);
        if count == 0 || !align.is_power_of_two() || count > self.free {
            return None;
        }
        let base_frame = (self.base / FRAME_SIZE) as usize;
        let scan = |start_hint: usize, this: &mut Self| -> Option<usize> {
            let mut i = start_hint;
            while i + count <= this.frames {
                // Align the absolute frame number.
                let abs = base_frame + i;
                let aligned = abs.next_multiple_of(align) - base_frame;
                if aligned != i {
                    i = aligned;
                    continue;
                }
                if count == 1 && this.words[i / 64] == !0 {
                    i = (i / 64 + 1) * 64;
                    continue;
                }
                match (i..i + count).find(|&j| this.is_used(j)) {
                    None => return Some(i),
                    Some(used) => i = used + 1,
                }
            }
            None
        };
        let hint = self.next;
        let found = scan(hint, self).or_else(|| if hint > 0 { scan(0, self) } else { None })?;
        (found..found + count).for_each(|j| self.set(j, true));
        if count == 1 {
            self.next = found + 1;
        }
        Some(self.base + found as u64 * FRAME_SIZE)
    }

    /// Returns one frame.
    pub fn free(&mut self, addr: u64) -> Result<(), FrameError> {
        if !addr.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::Unaligned(addr));
        }
        if addr < self.base || addr >= self.base + self.frames as u64 * FRAME_SIZE {
            return Err(FrameError::OutOfRange(addr));
        }
        let i = ((addr - self.base) / FRAME_SIZE) as usize;
        if !self.is_used(i) {
            return Err(FrameError::NotAllocated(addr));
        }
        self.set(i, false);
        self.next = self.next.min(i);
        Ok(())
    }

    /// Whether the frame at `addr` is in use (out-of-range frames count as used).
    pub fn in_use(&self, addr: u64) -> bool {
        if addr < self.base || addr >= self.base + self.frames as u64 * FRAME_SIZE {
            return true;
        }
        self.is_used(((addr - self.base) / FRAME_SIZE) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn make(frames: usize) -> Vec<u64> {
        vec![0; bitmap_words(frames)]
    }

    #[test]
    fn release_and_reserve_round_inwards_and_outwards() {
        let mut w = make(100);
        let mut a = FrameBitmap::new(0x10_0000, 100, &mut w);
        assert_eq!(a.free_frames(), 0);
        a.release_range(0x10_0001, 0x10_0000 + 10 * FRAME_SIZE + 5);
        assert_eq!(a.free_frames(), 9, "partial frames at both ends stay reserved");
        a.reserve_range(0x10_0000 + 2 * FRAME_SIZE + 1, 0x10_0000 + 3 * FRAME_SIZE + 1);
        assert_eq!(a.free_frames(), 7, "touched frames are reserved");
        a.release_range(0, u64::MAX);
        assert_eq!(a.free_frames(), 100, "clipped to the span");
    }

    #[test]
    fn errors() {
        let mut w = make(8);
        let mut a = FrameBitmap::new(0x1000, 8, &mut w);
        a.release_range(0x1000, 0x9000);
        let f = a.alloc().unwrap();
        assert_eq!(a.free(f + 1), Err(FrameError::Unaligned(f + 1)));
        assert_eq!(a.free(0), Err(FrameError::OutOfRange(0)));
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free(f), Err(FrameError::NotAllocated(f)));
        assert_eq!(a.alloc_contiguous(9, 1), None);
        assert_eq!(a.alloc_contiguous(0, 1), None);
        assert_eq!(a.alloc_contiguous(1, 3), None, "alignment must be a power of two");
    }

    #[test]
    fn contiguous_alignment_is_absolute() {
        let mut w = make(64);
        // Base not aligned to 8 frames: the allocator must align absolute addresses.
        let mut a = FrameBitmap::new(0x3000, 64, &mut w);
        a.release_range(0, u64::MAX);
        let p = a.alloc_contiguous(4, 8).unwrap();
        assert_eq!(p % (8 * FRAME_SIZE), 0);
        for i in 0..4 {
            assert!(a.in_use(p + i * FRAME_SIZE));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Random alloc/free sequences against a model: no frame handed out twice,
        /// every freed frame comes back, and counts always agree.
        #[test]
        fn model(ops in proptest::collection::vec((0u8..4, 1usize..6, 0usize..4), 1..200),
                 holes in proptest::collection::vec((0u64..96, 1u64..8), 0..4)) {
            let frames = 96;
            let base = 0x20_0000u64;
            let mut w = make(frames);
            let mut a = FrameBitmap::new(base, frames, &mut w);
            a.release_range(base, base + frames as u64 * FRAME_SIZE);
            let mut reserved = BTreeSet::new();
            for (start, len) in holes {
                a.reserve_range(base + start * FRAME_SIZE, base + (start + len) * FRAME_SIZE);
                for f in start..(start + len).min(frames as u64) { reserved.insert(base + f * FRAME_SIZE); }
            }
            let initial = a.free_frames();
            prop_assert_eq!(initial, frames - reserved.len());
            let mut held: Vec<u64> = Vec::new();
            let mut owned = BTreeSet::new();
            for (op, count, align_log) in ops {
                match op {
                    0 | 1 => {
                        let align = 1usize << align_log;
                        if let Some(p) = a.alloc_contiguous(count, align) {
                            prop_assert_eq!((p / FRAME_SIZE) as usize % align, 0);
                            for i in 0..count as u64 {
                                let f = p + i * FRAME_SIZE;
                                prop_assert!(!reserved.contains(&f), "reserved frame handed out");
                                prop_assert!(owned.insert(f), "frame {:#x} handed out twice", f);
                                held.push(f);
                            }
                        }
                    }
                    _ => {
                        if !held.is_empty() {
                            let f = held.swap_remove(count % held.len());
                            owned.remove(&f);
                            prop_assert_eq!(a.free(f), Ok(()));
                        }
                    }
                }
                prop_assert_eq!(a.free_frames(), initial - owned.len());
            }
            for f in held { prop_assert_eq!(a.free(f), Ok(())); }
            prop_assert_eq!(a.free_frames(), initial);
        }
    }
}
