//! A typed view of a run of DMA memory: [`DmaRegion`].
//!
//! The kernel hands drivers memory only through
//! [`io_pgtable::TableMemory`] (one frame) and [`crate::DmaMemory`]
//! (naturally aligned runs of frames), whose unit is the naturally aligned
//! 64-bit word of a 4 KiB frame. A region is such a run addressed linearly:
//! word `i` lives in frame `i / 512` at index `i % 512`. Every access is
//! bounds-checked against the region ([`OutsideRegion`] instead of a write
//! into a neighbour's frame).
//!
//! Byte layouts (virtqueues, request bodies) are packed and unpacked
//! little-endian, the byte order the IOMMUs' in-memory structures use and the
//! targets have. Partial words are read-modify-written: that is safe only for
//! memory the device does not write concurrently (descriptor tables, rings
//! and request bodies the driver alone writes).

use core::fmt;
use io_pgtable::TableMemory;

/// Bytes per frame.
const FRAME: u64 = 4096;

/// Why a [`DmaRegion`] access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideRegion {
    /// First byte asked for, from the region's start.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
    /// Bytes in the region.
    pub region: u64,
    /// The access's natural alignment, when the offset was not a multiple
    /// of it (0: the bounds were the problem).
    pub misaligned: u64,
}

impl fmt::Display for OutsideRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.misaligned != 0 {
            write!(f, "DMA access at {:#x} is not {}-byte aligned", self.offset, self.misaligned)
        } else {
            write!(f, "DMA access {:#x}+{:#x} leaves the {:#x}-byte region", self.offset, self.len, self.region)
        }
    }
}

/// A run of contiguous, frame-aligned DMA memory: physical address and size.
/// It owns nothing: the frames belong to whoever allocated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegion {
    base: u64,
    len: u64,
}

impl DmaRegion {
    /// The `frames` frames at physical address `base` (frame-aligned, as
    /// [`TableMemory::alloc_table`] and [`crate::DmaMemory::alloc_contiguous`]
    /// give them); `None` when `base` is not frame-aligned or the size overflows.
    pub fn new(base: u64, frames: usize) -> Option<DmaRegion> {
        let len = (frames as u64).checked_mul(FRAME)?;
        (base.is_multiple_of(FRAME) && base.checked_add(len).is_some()).then_some(DmaRegion { base, len })
    }

    /// One frame from [`TableMemory::alloc_table`] (zeroed); `None` when memory is exhausted.
    pub fn alloc_frame(mem: &mut impl TableMemory) -> Option<DmaRegion> {
        let pa = mem.alloc_table()?;
        let region = DmaRegion::new(pa, 1);
        if region.is_none() {
            mem.free_table(pa);
        }
        region
    }

    /// Gives back a region [`DmaRegion::alloc_frame`] returned.
    pub fn free_frame(self, mem: &mut impl TableMemory) {
        mem.free_table(self.base);
    }

    /// `frames` (a power of two) zeroed contiguous frames from
    /// [`crate::DmaMemory::alloc_contiguous`]; `None` when memory is exhausted.
    pub fn alloc_contiguous(mem: &mut impl crate::DmaMemory, frames: usize) -> Option<DmaRegion> {
        let pa = mem.alloc_contiguous(frames)?;
        let region = DmaRegion::new(pa, frames);
        if region.is_none() {
            mem.free_contiguous(pa, frames);
        }
        region
    }

    /// Gives back a region [`DmaRegion::alloc_contiguous`] returned.
    pub fn free_contiguous(self, mem: &mut impl crate::DmaMemory) {
        mem.free_contiguous(self.base, self.frames());
    }

    /// Physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes in the region.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames in the region.
    pub fn frames(&self) -> usize {
        (self.len / FRAME) as usize
    }

    /// 64-bit words in the region.
    pub fn words(&self) -> usize {
        (self.len / 8) as usize
    }

    /// Physical address of byte `offset`, when it lies inside the region.
    pub fn pa(&self, offset: u64) -> Result<u64, OutsideRegion> {
        self.check(offset, 1, 1)?;
        Ok(self.base + offset)
    }

    fn check(&self, offset: u64, len: u64, align: u64) -> Result<(), OutsideRegion> {
        let refused = |misaligned| OutsideRegion { offset, len, region: self.len, misaligned };
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(refused(0)),
        }
        if !offset.is_multiple_of(align) {
            return Err(refused(align));
        }
        Ok(())
    }

    /// The frame and index of the word holding byte `offset` (checked by the caller).
    fn at(&self, offset: u64) -> (u64, usize) {
        let pa = self.base + offset;
        (pa & !(FRAME - 1), ((pa % FRAME) / 8) as usize)
    }

    fn word(&self, mem: &impl TableMemory, offset: u64) -> u64 {
        let (frame, index) = self.at(offset);
        mem.read(frame, index)
    }

    fn set_word(&self, mem: &mut impl TableMemory, offset: u64, value: u64) {
        let (frame, index) = self.at(offset);
        mem.write(frame, index, value);
    }

    /// Word `index` (bytes `8 * index ..`).
    pub fn read_u64(&self, mem: &impl TableMemory, index: usize) -> Result<u64, OutsideRegion> {
        let offset = (index as u64).saturating_mul(8);
        self.check(offset, 8, 8)?;
        Ok(self.word(mem, offset))
    }

    /// Writes word `index`.
    pub fn write_u64(&self, mem: &mut impl TableMemory, index: usize, value: u64) -> Result<(), OutsideRegion> {
        let offset = (index as u64).saturating_mul(8);
        self.check(offset, 8, 8)?;
        self.set_word(mem, offset, value);
        Ok(())
    }

    /// Reads `out.len()` bytes from byte `offset`.
    pub fn read_bytes(&self, mem: &impl TableMemory, offset: u64, out: &mut [u8]) -> Result<(), OutsideRegion> {
        self.check(offset, out.len() as u64, 1)?;
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            let skip = (at % 8) as usize;
            let n = (8 - skip).min(out.len() - done);
            let bytes = self.word(mem, at).to_le_bytes();
            out[done..done + n].copy_from_slice(&bytes[skip..skip + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes `data` from byte `offset`; the other bytes of partly written
    /// words keep their values (read-modify-write).
    pub fn write_bytes(&self, mem: &mut impl TableMemory, offset: u64, data: &[u8]) -> Result<(), OutsideRegion> {
        self.check(offset, data.len() as u64, 1)?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let skip = (at % 8) as usize;
            let n = (8 - skip).min(data.len() - done);
            let mut bytes = if n == 8 { [0; 8] } else { self.word(mem, at).to_le_bytes() };
            bytes[skip..skip + n].copy_from_slice(&data[done..done + n]);
            self.set_word(mem, at, u64::from_le_bytes(bytes));
            done += n;
        }
        Ok(())
    }

    /// The naturally aligned 16-bit value at byte `offset`.
    pub fn read_u16(&self, mem: &impl TableMemory, offset: u64) -> Result<u16, OutsideRegion> {
        self.check(offset, 2, 2)?;
        Ok((self.word(mem, offset) >> ((offset % 8) * 8)) as u16)
    }

    /// Writes the naturally aligned 16-bit value at byte `offset` (one word
    /// store: the neighbours are rewritten with the values they had).
    pub fn write_u16(&self, mem: &mut impl TableMemory, offset: u64, value: u16) -> Result<(), OutsideRegion> {
        self.check(offset, 2, 2)?;
        let shift = (offset % 8) * 8;
        let w = (self.word(mem, offset) & !(0xFFFF << shift)) | u64::from(value) << shift;
        self.set_word(mem, offset, w);
        Ok(())
    }

    /// The naturally aligned 32-bit value at byte `offset`.
    pub fn read_u32(&self, mem: &impl TableMemory, offset: u64) -> Result<u32, OutsideRegion> {
        self.check(offset, 4, 4)?;
        Ok((self.word(mem, offset) >> ((offset % 8) * 8)) as u32)
    }

    /// Writes the naturally aligned 32-bit value at byte `offset` (one word store).
    pub fn write_u32(&self, mem: &mut impl TableMemory, offset: u64, value: u32) -> Result<(), OutsideRegion> {
        self.check(offset, 4, 4)?;
        let shift = (offset % 8) * 8;
        let w = (self.word(mem, offset) & !(0xFFFF_FFFF << shift)) | u64::from(value) << shift;
        self.set_word(mem, offset, w);
        Ok(())
    }

    /// The `len` bytes at `offset` as a region of their own (frame-aligned
    /// and whole frames: table-sized pieces of a larger run).
    pub fn sub(&self, offset: u64, len: u64) -> Result<DmaRegion, OutsideRegion> {
        self.check(offset, len, FRAME)?;
        if !len.is_multiple_of(FRAME) {
            return Err(OutsideRegion { offset, len, region: self.len, misaligned: FRAME });
        }
        Ok(DmaRegion { base: self.base + offset, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    /// Frames in a map, contiguous runs from a bump pointer.
    #[derive(Default)]
    struct Mem {
        frames: BTreeMap<u64, [u64; 512]>,
        next: u64,
    }

    impl TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            crate::DmaMemory::alloc_contiguous(self, 1)
        }
        fn free_table(&mut self, pa: u64) {
            self.frames.remove(&pa);
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.frames[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.frames.get_mut(&table).unwrap()[index] = value;
        }
    }

    impl crate::DmaMemory for Mem {
        fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
            let base = 0x10_0000 + self.next;
            for f in 0..frames as u64 {
                self.frames.insert(base + f * FRAME, [0; 512]);
            }
            self.next += frames as u64 * FRAME;
            Some(base)
        }
        fn free_contiguous(&mut self, base: u64, frames: usize) {
            for f in 0..frames as u64 {
                self.frames.remove(&(base + f * FRAME));
            }
        }
    }

    #[test]
    fn words_are_addressed_across_frames() {
        let mut mem = Mem::default();
        let r = DmaRegion::alloc_contiguous(&mut mem, 2).unwrap();
        assert_eq!((r.frames(), r.words(), r.len()), (2, 1024, 8192));
        r.write_u64(&mut mem, 511, 1).unwrap();
        r.write_u64(&mut mem, 512, 2).unwrap();
        assert_eq!(mem.frames[&r.base()][511], 1);
        assert_eq!(mem.frames[&(r.base() + FRAME)][0], 2);
        assert_eq!(r.read_u64(&mem, 512), Ok(2));
        assert_eq!(r.read_u64(&mem, 1024), Err(OutsideRegion { offset: 8192, len: 8, region: 8192, misaligned: 0 }));
        assert!(r.write_u64(&mut mem, usize::MAX, 0).is_err());
        r.free_contiguous(&mut mem);
        assert!(mem.frames.is_empty());
    }

    #[test]
    fn bytes_round_trip_across_words_and_frames() {
        let mut mem = Mem::default();
        let r = DmaRegion::alloc_contiguous(&mut mem, 2).unwrap();
        let data: Vec<u8> = (0..40u8).collect();
        let at = FRAME - 13; // unaligned, across words and the frame boundary
        r.write_bytes(&mut mem, at, &data).unwrap();
        let mut back = [0u8; 40];
        r.read_bytes(&mem, at, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        let mut edge = [0xAA; 1];
        r.read_bytes(&mem, at - 1, &mut edge).unwrap();
        assert_eq!(edge, [0], "the byte before is untouched");
        assert_eq!(r.read_u16(&mem, FRAME - 12), Ok(u16::from_le_bytes([1, 2])));
        // The last byte is fine, one more is not; nothing was written on refusal.
        assert!(r.write_bytes(&mut mem, 8191, &[9]).is_ok());
        assert_eq!(r.write_bytes(&mut mem, 8191, &[9, 9]).unwrap_err().len, 2);
        assert!(r.read_bytes(&mem, 8192, &mut []).is_ok(), "empty at the end");
        assert!(r.read_bytes(&mem, u64::MAX, &mut [0]).is_err());
    }

    #[test]
    fn small_writes_keep_their_neighbours() {
        let mut mem = Mem::default();
        let r = DmaRegion::alloc_frame(&mut mem).unwrap();
        r.write_u64(&mut mem, 1, 0x1122_3344_5566_7788).unwrap();
        r.write_u16(&mut mem, 10, 0xABCD).unwrap();
        assert_eq!(r.read_u64(&mem, 1), Ok(0x1122_3344_ABCD_7788));
        r.write_u32(&mut mem, 12, 0xDEAD_BEEF).unwrap();
        assert_eq!(r.read_u64(&mem, 1), Ok(0xDEAD_BEEF_ABCD_7788));
        assert_eq!(r.read_u32(&mem, 8), Ok(0xABCD_7788));
        assert_eq!(r.read_u16(&mem, 14), Ok(0xDEAD));
        // Misaligned and out-of-bounds small accesses are refused.
        assert_eq!(r.read_u16(&mem, 11).unwrap_err().misaligned, 2);
        assert_eq!(r.write_u32(&mut mem, 10, 0).unwrap_err().misaligned, 4);
        assert!(r.read_u32(&mem, 4096).is_err());
        assert_eq!(r.read_u64(&mem, 1), Ok(0xDEAD_BEEF_ABCD_7788));
        r.free_frame(&mut mem);
    }

    #[test]
    fn construction_and_sub_regions() {
        assert!(DmaRegion::new(0x1001, 1).is_none());
        assert!(DmaRegion::new(!0xFFF, 2).is_none());
        let r = DmaRegion::new(0x4000, 4).unwrap();
        assert_eq!(r.pa(0x3FFF), Ok(0x7FFF));
        assert!(r.pa(0x4000).is_err());
        let s = r.sub(0x1000, 0x2000).unwrap();
        assert_eq!((s.base(), s.frames()), (0x5000, 2));
        assert!(r.sub(0x800, 0x1000).is_err());
        assert!(r.sub(0x1000, 0x800).is_err());
        assert!(r.sub(0x3000, 0x2000).is_err());
    }
}
