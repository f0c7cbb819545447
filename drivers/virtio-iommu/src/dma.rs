//! Byte-granular access to DMA memory. The kernel hands this driver memory
//! only through [`iommu::DmaMemory`], whose unit is the naturally aligned
//! 64-bit word of a 4 KiB frame; virtqueues and requests are byte layouts
//! (virtio 1.2 §2.7, §5.13.6), so these helpers pack and unpack them
//! little-endian, the byte order virtio uses and the targets have.
//!
//! Partial words are read-modify-written. That is safe for everything the
//! driver writes: descriptor tables, available rings and request bodies
//! belong to the driver alone (the device only reads them), and the driver
//! never writes the used ring or a buffer the device may be writing.

use iommu::DmaMemory;

/// The word holding byte address `pa` (a run of contiguous frames is
/// addressed linearly, so `pa` may be in any of its frames).
fn word(mem: &impl DmaMemory, pa: u64) -> u64 {
    mem.read(pa & !0xFFF, ((pa & 0xFFF) / 8) as usize)
}

fn set_word(mem: &mut impl DmaMemory, pa: u64, value: u64) {
    mem.write(pa & !0xFFF, ((pa & 0xFFF) / 8) as usize, value);
}

/// Reads `out.len()` bytes starting at physical address `pa`.
pub fn read_bytes(mem: &impl DmaMemory, pa: u64, out: &mut [u8]) {
    let mut done = 0;
    while done < out.len() {
        let at = pa + done as u64;
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(out.len() - done);
        let bytes = word(mem, at).to_le_bytes();
        out[done..done + n].copy_from_slice(&bytes[skip..skip + n]);
        done += n;
    }
}

/// Writes `data` starting at physical address `pa`.
pub fn write_bytes(mem: &mut impl DmaMemory, pa: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let at = pa + done as u64;
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(data.len() - done);
        let mut bytes = if n == 8 { [0; 8] } else { word(mem, at).to_le_bytes() };
        bytes[skip..skip + n].copy_from_slice(&data[done..done + n]);
        set_word(mem, at, u64::from_le_bytes(bytes));
        done += n;
    }
}

/// Reads a naturally aligned 16-bit value.
pub fn read_u16(mem: &impl DmaMemory, pa: u64) -> u16 {
    debug_assert!(pa.is_multiple_of(2));
    (word(mem, pa) >> ((pa % 8) * 8)) as u16
}

/// Writes a naturally aligned 16-bit value (one word store: the neighbours
/// are rewritten with the values they had).
pub fn write_u16(mem: &mut impl DmaMemory, pa: u64, value: u16) {
    debug_assert!(pa.is_multiple_of(2));
    let shift = (pa % 8) * 8;
    let w = (word(mem, pa) & !(0xFFFF << shift)) | u64::from(value) << shift;
    set_word(mem, pa, w);
}

/// Reads a naturally aligned 32-bit value.
pub fn read_u32(mem: &impl DmaMemory, pa: u64) -> u32 {
    debug_assert!(pa.is_multiple_of(4));
    (word(mem, pa) >> ((pa % 8) * 8)) as u32
}

/// Writes a naturally aligned 32-bit value.
pub fn write_u32(mem: &mut impl DmaMemory, pa: u64, value: u32) {
    debug_assert!(pa.is_multiple_of(4));
    let shift = (pa % 8) * 8;
    let w = (word(mem, pa) & !(0xFFFF_FFFF << shift)) | u64::from(value) << shift;
    set_word(mem, pa, w);
}

/// Reads an 8-byte aligned 64-bit value.
pub fn read_u64(mem: &impl DmaMemory, pa: u64) -> u64 {
    debug_assert!(pa.is_multiple_of(8));
    word(mem, pa)
}

/// Writes an 8-byte aligned 64-bit value.
pub fn write_u64(mem: &mut impl DmaMemory, pa: u64, value: u64) {
    debug_assert!(pa.is_multiple_of(8));
    set_word(mem, pa, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestMem;

    #[test]
    fn bytes_round_trip_across_words_and_frames() {
        let mut mem = TestMem::new();
        let base = mem.alloc_contiguous(2).unwrap();
        let data: Vec<u8> = (0..40u8).collect();
        // Unaligned start, crossing several words and the frame boundary.
        let at = base + 4096 - 13;
        write_bytes(&mut mem, at, &data);
        let mut back = [0u8; 40];
        read_bytes(&mem, at, &mut back);
        assert_eq!(&back[..], &data[..]);
        // Bytes around the written run are untouched.
        let mut edge = [0xAAu8; 1];
        read_bytes(&mem, at - 1, &mut edge);
        assert_eq!(edge, [0]);
        assert_eq!(read_u16(&mem, base + 4096 - 12), u16::from_le_bytes([1, 2]));
    }

    #[test]
    fn small_writes_keep_their_neighbours() {
        let mut mem = TestMem::new();
        let f = mem.alloc_contiguous(1).unwrap();
        write_u64(&mut mem, f + 8, 0x1122_3344_5566_7788);
        write_u16(&mut mem, f + 10, 0xABCD);
        assert_eq!(read_u64(&mem, f + 8), 0x1122_3344_ABCD_7788);
        write_u32(&mut mem, f + 12, 0xDEAD_BEEF);
        assert_eq!(read_u64(&mem, f + 8), 0xDEAD_BEEF_ABCD_7788);
        assert_eq!(read_u32(&mem, f + 8), 0xABCD_7788);
        assert_eq!(read_u16(&mem, f + 14), 0xDEAD);
    }
}
