//! The checked ELF image of a user program: the `elf` crate reads the file
//! (System V gABI, "ELF Header" and "Program Header"), and this module adds
//! the checks the kernel relies on before it maps a byte: a little-endian
//! ELF64 executable for this machine, every `PT_LOAD` segment inside the file,
//! not writable and executable at once, no larger in the file than in
//! memory, not wrapping the address space, and the entry point inside an
//! executable segment. Whether segments fit user space and do not share a
//! page is the loader's check (`super::load`).
//!
//! Self-contained (no `crate::` paths): the fuzz target compiles this file
//! on its own (`fuzz/fuzz_targets/elf.rs`).

use core::fmt;
use elf::endian::LittleEndian;
use elf::segment::SegmentTable;
use elf::ElfBytes;

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Too short for what a header says.
    Truncated,
    /// Not a little-endian ELF64 executable.
    NotElf64,
    /// Built for another machine.
    WrongMachine(u16),
    /// A segment is writable and executable, or overflows, or lies past the file.
    BadSegment,
    /// The entry point is in no executable `PT_LOAD` segment.
    BadEntry(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Truncated => f.write_str("ELF image truncated"),
            ElfError::NotElf64 => f.write_str("not a little-endian ELF64 executable"),
            ElfError::WrongMachine(m) => write!(f, "ELF built for machine {m}"),
            ElfError::BadSegment => f.write_str("bad PT_LOAD segment (W+X, overflow or misaligned)"),
            ElfError::BadEntry(e) => write!(f, "entry point {e:#x} is in no executable segment"),
        }
    }
}

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = elf::abi::EM_X86_64;
/// `e_machine` of AArch64.
pub const EM_AARCH64: u16 = elf::abi::EM_AARCH64;

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the first byte.
    pub vaddr: u64,
    /// Bytes in memory (the tail past `file_size` is zero).
    pub mem_size: u64,
    /// File offset of the contents.
    pub offset: u64,
    /// Bytes in the file.
    pub file_size: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

/// A validated ELF image.
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    data: &'a [u8],
    /// The program header table (`None`: the image has none).
    table: Option<SegmentTable<'a, LittleEndian>>,
    /// Entry point.
    pub entry: u64,
}

/// The `elf` crate's error in this module's terms: reads past the end (or
/// offsets that overflow) are a truncated image, anything else is no ELF64
/// executable this kernel runs.
fn from_parse(e: elf::ParseError) -> ElfError {
    use elf::ParseError as P;
    match e {
        P::SliceReadError(_) | P::BadOffset(_) | P::IntegerOverflow | P::TryFromIntError(_) => ElfError::Truncated,
        _ => ElfError::NotElf64,
    }
}

impl<'a> Elf<'a> {
    /// Checks the header for an ELF64 little-endian executable for `machine`,
    /// and every `PT_LOAD` segment (see the module documentation).
    pub fn parse(data: &'a [u8], machine: u16) -> Result<Self, ElfError> {
        if data.len() < 64 {
            return Err(ElfError::Truncated);
        }
        // EI_CLASS 2 (ELF64) and EI_DATA 1 (little endian), before the
        // crate reads a header of either class in either order.
        if data[0..4] != elf::abi::ELFMAGIC || data[4] != elf::abi::ELFCLASS64 || data[5] != elf::abi::ELFDATA2LSB {
            return Err(ElfError::NotElf64);
        }
        let file = ElfBytes::<LittleEndian>::minimal_parse(data).map_err(from_parse)?;
        if file.ehdr.e_type != elf::abi::ET_EXEC {
            return Err(ElfError::NotElf64);
        }
        if file.ehdr.e_machine != machine {
            return Err(ElfError::WrongMachine(file.ehdr.e_machine));
        }
        let elf = Elf { data, table: file.segments(), entry: file.ehdr.e_entry };
        let mut entry_found = false;
        for seg in elf.segments() {
            let end = seg.vaddr.checked_add(seg.mem_size).ok_or(ElfError::BadSegment)?;
            let file_end = seg.offset.checked_add(seg.file_size).ok_or(ElfError::BadSegment)?;
            if (seg.write && seg.exec) || seg.file_size > seg.mem_size || file_end > data.len() as u64 || end == 0 {
                return Err(ElfError::BadSegment);
            }
            entry_found |= seg.exec && (seg.vaddr..end).contains(&elf.entry);
        }
        if !entry_found {
            return Err(ElfError::BadEntry(elf.entry));
        }
        Ok(elf)
    }

    /// The `PT_LOAD` segments, in file order.
    pub fn segments(&self) -> impl Iterator<Item = Segment> + 'a {
        self.table.into_iter().flatten().filter(|ph| ph.p_type == elf::abi::PT_LOAD).map(|ph| Segment {
            vaddr: ph.p_vaddr,
            mem_size: ph.p_memsz,
            offset: ph.p_offset,
            file_size: ph.p_filesz,
            read: ph.p_flags & elf::abi::PF_R != 0,
            write: ph.p_flags & elf::abi::PF_W != 0,
            exec: ph.p_flags & elf::abi::PF_X != 0,
        })
    }

    /// The file bytes of a segment (empty for one past the file, which
    /// [`Elf::parse`] never accepts).
    pub fn contents(&self, seg: &Segment) -> &'a [u8] {
        let (Ok(start), Ok(len)) = (usize::try_from(seg.offset), usize::try_from(seg.file_size)) else { return &[] };
        start.checked_add(len).and_then(|end| self.data.get(start..end)).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry point of every test image (inside its first segment).
    const ENTRY: u64 = 0x40_0100;

    /// Builds a minimal ELF64 with the given (vaddr, memsz, filesz, flags) segments.
    fn image(machine: u16, segs: &[(u64, u64, u64, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56 * segs.len()];
        d[0..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1; // EI_VERSION: EV_CURRENT
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&machine.to_le_bytes());
        d[20..24].copy_from_slice(&1u32.to_le_bytes());
        d[24..32].copy_from_slice(&ENTRY.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let payload = d.len() as u64;
        for (i, &(va, mem, file, flags)) in segs.iter().enumerate() {
            let b = 64 + 56 * i;
            d[b..b + 4].copy_from_slice(&1u32.to_le_bytes());
            d[b + 4..b + 8].copy_from_slice(&flags.to_le_bytes());
            d[b + 8..b + 16].copy_from_slice(&payload.to_le_bytes());
            d[b + 16..b + 24].copy_from_slice(&va.to_le_bytes());
            d[b + 32..b + 40].copy_from_slice(&file.to_le_bytes());
            d[b + 40..b + 48].copy_from_slice(&mem.to_le_bytes());
        }
        d.resize(d.len() + 0x100, 0xAB);
        d
    }

    #[test]
    fn parses_segments() {
        let d = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x80, 5), (0x40_2000, 0x2000, 0x10, 6)]);
        let e = Elf::parse(&d, EM_X86_64).unwrap();
        assert_eq!(e.entry, ENTRY);
        let segs: Vec<Segment> = e.segments().collect();
        assert_eq!(segs.len(), 2);
        assert!(segs[0].exec && !segs[0].write && segs[0].read);
        assert!(segs[1].write && !segs[1].exec);
        assert_eq!(e.contents(&segs[0]).len(), 0x80);
    }

    #[test]
    fn rejects_bad_images() {
        assert_eq!(Elf::parse(&[0; 10], EM_X86_64).err(), Some(ElfError::Truncated));
        let d = image(EM_AARCH64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        assert_eq!(Elf::parse(&d, EM_X86_64).err(), Some(ElfError::WrongMachine(EM_AARCH64)));
        let wx = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 7)]);
        assert_eq!(Elf::parse(&wx, EM_X86_64).err(), Some(ElfError::BadSegment), "W^X");
        let past = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10_0000, 5)]);
        assert_eq!(Elf::parse(&past, EM_X86_64).err(), Some(ElfError::BadSegment));
        let wrap = image(EM_X86_64, &[(u64::MAX - 4, 0x1000, 0x10, 5)]);
        assert_eq!(Elf::parse(&wrap, EM_X86_64).err(), Some(ElfError::BadSegment));
        let mut trunc = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        trunc[56..58].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(Elf::parse(&trunc, EM_X86_64).err(), Some(ElfError::Truncated));
    }

    #[test]
    fn the_entry_point_must_be_in_an_executable_segment() {
        let data = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 6), (0x40_2000, 0x1000, 0x10, 5)]);
        assert_eq!(Elf::parse(&data, EM_X86_64).err(), Some(ElfError::BadEntry(ENTRY)), "entry in a data segment");
        let none = image(EM_X86_64, &[]);
        assert_eq!(Elf::parse(&none, EM_X86_64).err(), Some(ElfError::BadEntry(ENTRY)), "no segment at all");
        let mut past = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        past[24..32].copy_from_slice(&0x40_1000u64.to_le_bytes());
        assert_eq!(Elf::parse(&past, EM_X86_64).err(), Some(ElfError::BadEntry(0x40_1000)), "one past the end");
    }

    #[test]
    fn header_fields_the_crate_checks_are_refused_too() {
        let mut d = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        d[54..56].copy_from_slice(&48u16.to_le_bytes());
        assert_eq!(Elf::parse(&d, EM_X86_64).err(), Some(ElfError::NotElf64), "program header entries too small");
        let mut d = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        d[16..18].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(Elf::parse(&d, EM_X86_64).err(), Some(ElfError::NotElf64), "ET_DYN is no executable");
        let mut d = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        d[4] = 1;
        assert_eq!(Elf::parse(&d, EM_X86_64).err(), Some(ElfError::NotElf64), "ELF32");
        let mut d = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
        d[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        d[58..60].copy_from_slice(&64u16.to_le_bytes());
        d[60..62].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(Elf::parse(&d, EM_X86_64).err(), Some(ElfError::Truncated), "section headers past the file");
    }

    /// Found by `cargo xtask fuzz elf`: a program-header offset near 2^64
    /// overflowed the field readers (a panic with overflow checks on).
    #[test]
    fn header_table_at_the_top_of_the_address_space_is_truncated() {
        for phoff in [u64::MAX - 1, u64::MAX - 60, u64::MAX] {
            let mut d = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x10, 5)]);
            d[32..40].copy_from_slice(&phoff.to_le_bytes());
            assert_eq!(Elf::parse(&d, EM_X86_64).err(), Some(ElfError::Truncated), "phoff {phoff:#x}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let base = image(EM_X86_64, &[(0x40_0000, 0x1000, 0x80, 5), (0x40_2000, 0x2000, 0x10, 6)]);
        for _ in 0..20_000 {
            let mut d = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % d.len();
                d[i] = (x >> 32) as u8;
            }
            if let Ok(e) = Elf::parse(&d, EM_X86_64) {
                for s in e.segments() {
                    let _ = e.contents(&s);
                }
            }
        }
    }
}
