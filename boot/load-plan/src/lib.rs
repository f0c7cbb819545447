//! Planning the load of a kernel ELF into physical memory, for loaders that
//! are programs of their own (the UEFI loader, `boot/uefi`).
//!
//! [`Plan::new`] checks the image (ELF64, little endian, the expected
//! machine, every `PT_LOAD` inside the file and no larger in the file than in
//! memory, all segments within 1 GiB) and computes the page-aligned physical
//! span the segments occupy at their link addresses (`p_paddr`). The loader
//! then asks firmware for that span — at the link address, or anywhere
//! suitably aligned when the kernel is relocatable — and [`Plan::copy_into`]
//! fills it: file contents copied, the rest (`.bss`) zeroed. Nothing here
//! touches memory the caller did not hand over, and no input panics
//! (property-tested on random and mutated images).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Page size of the plan.
pub const PAGE: u64 = 4096;
/// Largest span a kernel image may cover.
pub const MAX_SPAN: u64 = 1 << 30;

/// Why an image cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// Not a little-endian ELF64 file (or its headers are cut off).
    NotElf64,
    /// Built for another machine (`e_machine`).
    WrongMachine(u16),
    /// No program headers, or no loadable segment with a size.
    NoSegments,
    /// A segment lies outside the file, overflows, or is larger in the file than in memory.
    BadSegment,
    /// The segments spread over more than [`MAX_SPAN`].
    TooLarge,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NotElf64 => f.write_str("not a little-endian ELF64 file"),
            PlanError::WrongMachine(m) => write!(f, "built for machine {m}, not this one"),
            PlanError::NoSegments => f.write_str("no loadable segment"),
            PlanError::BadSegment => f.write_str(
                "a PT_LOAD segment lies outside the file, overflows, or is larger in the file than in memory",
            ),
            PlanError::TooLarge => f.write_str("the segments spread over more than 1 GiB"),
        }
    }
}

/// One loadable segment, relative to the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the contents in the file.
    pub file_offset: usize,
    /// Bytes in the file.
    pub file_size: usize,
    /// Offset of the segment's first byte from the start of the span.
    pub span_offset: usize,
    /// Bytes in memory (the part past `file_size` is zero).
    pub mem_size: usize,
}

/// Where an image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// First byte of the span at the link addresses (page aligned).
    pub link_start: u64,
    /// Bytes of the span (whole pages).
    pub size: u64,
    /// Entry point at the link addresses (`e_entry`).
    pub entry: u64,
    /// The loadable segments.
    pub segments: Vec<Segment>,
}

impl Plan {
    /// Checks `image` and plans its segments for machine `machine` (`EM_*`).
    pub fn new(image: &[u8], machine: u16) -> Result<Plan, PlanError> {
        use elf::endian::LittleEndian;
        let file = elf::ElfBytes::<LittleEndian>::minimal_parse(image).map_err(|_| PlanError::NotElf64)?;
        if file.ehdr.class != elf::file::Class::ELF64 {
            return Err(PlanError::NotElf64);
        }
        if file.ehdr.e_machine != machine {
            return Err(PlanError::WrongMachine(file.ehdr.e_machine));
        }
        let table = file.segments().ok_or(PlanError::NoSegments)?;
        let mut loads = Vec::new();
        let (mut start, mut end) = (u64::MAX, 0u64);
        for ph in table.iter().filter(|p| p.p_type == elf::abi::PT_LOAD && p.p_memsz > 0) {
            let file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or(PlanError::BadSegment)?;
            let mem_end = ph.p_paddr.checked_add(ph.p_memsz).ok_or(PlanError::BadSegment)?;
            if file_end > image.len() as u64 || ph.p_filesz > ph.p_memsz || mem_end > u64::MAX - PAGE {
                return Err(PlanError::BadSegment);
            }
            start = start.min(ph.p_paddr & !(PAGE - 1));
            end = end.max(mem_end.next_multiple_of(PAGE));
            loads.push(ph);
        }
        if loads.is_empty() {
            return Err(PlanError::NoSegments);
        }
        if end - start > MAX_SPAN {
            return Err(PlanError::TooLarge);
        }
        let segments = loads
            .iter()
            .map(|ph| Segment {
                file_offset: ph.p_offset as usize,
                file_size: ph.p_filesz as usize,
                span_offset: (ph.p_paddr - start) as usize,
                mem_size: ph.p_memsz as usize,
            })
            .collect();
        Ok(Plan { link_start: start, size: end - start, entry: file.ehdr.e_entry, segments })
    }

    /// Pages the span covers.
    pub fn pages(&self) -> usize {
        (self.size / PAGE) as usize
    }

    /// Fills `span` (the span's memory, wherever it is) from `image`: zeroes
    /// it, then copies each segment's file contents to its place. `span` must
    /// be at least [`Plan::size`] bytes and `image` the image the plan was made from.
    pub fn copy_into(&self, image: &[u8], span: &mut [u8]) -> Result<(), PlanError> {
        if (span.len() as u64) < self.size {
            return Err(PlanError::BadSegment);
        }
        span.fill(0);
        for s in &self.segments {
            let contents = image.get(s.file_offset..s.file_offset + s.file_size).ok_or(PlanError::BadSegment)?;
            let dst = span.get_mut(s.span_offset..s.span_offset + s.file_size).ok_or(PlanError::BadSegment)?;
            dst.copy_from_slice(contents);
        }
        Ok(())
    }

    /// The entry point and span `[start, end)` once the span sits at `base`.
    pub fn placed_at(&self, base: u64) -> (u64, u64, u64) {
        let delta = base.wrapping_sub(self.link_start);
        (self.entry.wrapping_add(delta), base, base + self.size)
    }
}

/// Carving an aligned image out of an over-sized allocation: an image of
/// `n` pages wanted at `align` (a power of two, at least a page) inside a
/// block of `n + align / PAGE` pages at `block` (page aligned). Returns
/// (aligned base, pages to give back before it, pages to give back after the image).
pub fn carve_aligned(block: u64, align: u64) -> (u64, usize, usize) {
    let slack = (align / PAGE) as usize;
    let base = block.next_multiple_of(align);
    let head = ((base - block) / PAGE) as usize;
    (base, head, slack - head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EM_X86_64: u16 = 62;

    /// A minimal ELF64 image: header, program headers, then the file bytes of each segment.
    /// Segments are (p_paddr, file bytes, mem size).
    fn elf(machine: u16, entry: u64, segs: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * segs.len() as u64;
        let mut out = vec![0u8; 64];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little endian
        out[6] = 1; // EV_CURRENT
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&machine.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut bodies = Vec::new();
        for (paddr, bytes, mem) in segs {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            ph[8..16].copy_from_slice(&data_off.to_le_bytes());
            ph[16..24].copy_from_slice(&paddr.wrapping_add(0xFFFF_FFFF_8000_0000).to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&mem.to_le_bytes());
            out.extend_from_slice(&ph);
            bodies.extend_from_slice(bytes);
            data_off += bytes.len() as u64;
        }
        out.extend_from_slice(&bodies);
        out
    }

    #[test]
    fn plans_copies_zeroes_and_relocates() {
        let text = vec![0xAA; 5000];
        let data = vec![0xBB; 100];
        let image = elf(EM_X86_64, 0x100_0040, &[(0x100_0000, text.clone(), 5000), (0x100_3000, data.clone(), 0x2000)]);
        let plan = Plan::new(&image, EM_X86_64).unwrap();
        assert_eq!(plan.link_start, 0x100_0000);
        assert_eq!(plan.size, 0x5000);
        assert_eq!(plan.pages(), 5);
        let mut span = vec![0xEE; plan.size as usize];
        plan.copy_into(&image, &mut span).unwrap();
        assert_eq!(&span[..5000], &text[..]);
        assert!(span[5000..0x3000].iter().all(|&b| b == 0), "gap zeroed");
        assert_eq!(&span[0x3000..0x3064], &data[..]);
        assert!(span[0x3064..].iter().all(|&b| b == 0), ".bss zeroed");
        let (entry, start, end) = plan.placed_at(0x1AA0_0000);
        assert_eq!((entry, start, end), (0x1AA0_0040, 0x1AA0_0000, 0x1AA0_5000));
        assert_eq!(plan.placed_at(plan.link_start).0, 0x100_0040);
        assert_eq!(plan.copy_into(&image, &mut [0u8; 10]), Err(PlanError::BadSegment));
    }

    #[test]
    fn refuses_what_cannot_be_loaded() {
        let ok = elf(EM_X86_64, 0, &[(0x1000, vec![1; 10], 10)]);
        assert_eq!(Plan::new(&ok, 183), Err(PlanError::WrongMachine(EM_X86_64)));
        assert_eq!(Plan::new(&ok[..40], EM_X86_64), Err(PlanError::NotElf64));
        assert_eq!(Plan::new(b"MZ not an elf", EM_X86_64), Err(PlanError::NotElf64));
        assert_eq!(Plan::new(&elf(EM_X86_64, 0, &[]), EM_X86_64), Err(PlanError::NoSegments));
        let bigger_in_file = elf(EM_X86_64, 0, &[(0x1000, vec![1; 10], 5)]);
        assert_eq!(Plan::new(&bigger_in_file, EM_X86_64), Err(PlanError::BadSegment));
        let mut cut = ok.clone();
        cut.truncate(cut.len() - 5);
        assert_eq!(Plan::new(&cut, EM_X86_64), Err(PlanError::BadSegment), "contents past the end of the file");
        let wraps = elf(EM_X86_64, 0, &[(u64::MAX - 0x10, vec![1; 1], 0x100)]);
        assert_eq!(Plan::new(&wraps, EM_X86_64), Err(PlanError::BadSegment));
        let spread = elf(EM_X86_64, 0, &[(0x1000, vec![1; 1], 1), (0x1000 + MAX_SPAN, vec![1; 1], 1)]);
        assert_eq!(Plan::new(&spread, EM_X86_64), Err(PlanError::TooLarge));
    }

    #[test]
    fn carving_keeps_the_image_inside_the_block() {
        let mb2 = 2 << 20;
        for block in [0x1A80_0000u64, 0x1A80_1000, 0x1A9F_F000] {
            let pages = 300;
            let (base, head, tail) = carve_aligned(block, mb2);
            assert_eq!(base % mb2, 0);
            assert_eq!(block + head as u64 * PAGE, base);
            let block_end = block + (pages as u64 + mb2 / PAGE) * PAGE;
            assert_eq!(base + pages as u64 * PAGE + tail as u64 * PAGE, block_end);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Plan::new(&bytes, EM_X86_64);
        }

        #[test]
        fn mutated_images_never_panic_and_copies_stay_in_bounds(
            at in 0usize..400, value in any::<u8>(), count in 1usize..4,
        ) {
            let mut image = elf(EM_X86_64, 0x2000, &[(0x2000, vec![7; 200], 300), (0x4000, vec![9; 20], 20)]);
            for i in 0..count {
                let idx = (at + i * 37) % image.len();
                image[idx] = value;
            }
            if let Ok(plan) = Plan::new(&image, EM_X86_64) {
                prop_assert!(plan.size <= MAX_SPAN);
                let mut span = vec![0u8; plan.size as usize];
                prop_assert!(plan.copy_into(&image, &mut span).is_ok());
            }
        }
    }
}
