//! A minimal ELF64 reader for user programs: header checks and `PT_LOAD`
//! segments (System V gABI, "ELF Header" and "Program Header").

use core::fmt;

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Too short for what a header says.
    Truncated,
    /// Not a little-endian ELF64 executable.
    NotElf64,
    /// Built for another machine.
    WrongMachine(u16),
    /// A segment is writable and executable, or overflows, or is not page aligned.
    BadSegment,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Truncated => f.write_str("ELF image truncated"),
            ElfError::NotElf64 => f.write_str("not a little-endian ELF64 executable"),
            ElfError::WrongMachine(m) => write!(f, "ELF built for machine {m}"),
            ElfError::BadSegment => f.write_str("bad PT_LOAD segment (W+X, overflow or misaligned)"),
        }
    }
}

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64.
pub const EM_AARCH64: u16 = 183;

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
    /// Readable / writable / executable.
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
    /// Entry point.
    pub entry: u64,
    phoff: usize,
    phnum: usize,
    phentsize: usize,
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(o..o.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

impl<'a> Elf<'a> {
    /// Checks the header for an ELF64 little-endian executable for `machine`.
    pub fn parse(data: &'a [u8], machine: u16) -> Result<Self, ElfError> {
        if data.len() < 64 {
            return Err(ElfError::Truncated);
        }
        if &data[0..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
            return Err(ElfError::NotElf64);
        }
        let e_type = u16_at(data, 16).ok_or(ElfError::Truncated)?;
        if e_type != 2 {
            return Err(ElfError::NotElf64);
        }
        let m = u16_at(data, 18).ok_or(ElfError::Truncated)?;
        if m != machine {
            return Err(ElfError::WrongMachine(m));
        }
        let elf = Elf {
            data,
            entry: u64_at(data, 24).ok_or(ElfError::Truncated)?,
            phoff: u64_at(data, 32).ok_or(ElfError::Truncated)? as usize,
            phentsize: usize::from(u16_at(data, 54).ok_or(ElfError::Truncated)?),
            phnum: usize::from(u16_at(data, 56).ok_or(ElfError::Truncated)?),
        };
        if elf.phentsize < 56 {
            return Err(ElfError::NotElf64);
        }
        for seg in elf.segments() {
            let seg = seg?;
            let end = seg.vaddr.checked_add(seg.mem_size).ok_or(ElfError::BadSegment)?;
            let file_end = seg.offset.checked_add(seg.file_size).ok_or(ElfError::BadSegment)?;
            if (seg.write && seg.exec) || seg.file_size > seg.mem_size || file_end > data.len() as u64 || end == 0 {
                return Err(ElfError::BadSegment);
            }
        }
        Ok(elf)
    }

    /// The `PT_LOAD` segments.
    pub fn segments(&self) -> impl Iterator<Item = Result<Segment, ElfError>> + 'a {
        let (data, phoff, phentsize) = (self.data, self.phoff, self.phentsize);
        (0..self.phnum).filter_map(move |i| {
            // A header table past the end of the address space is as unreadable as one past the file.
            let Some(base) = i.checked_mul(phentsize).and_then(|o| phoff.checked_add(o)) else {
                return Some(Err(ElfError::Truncated));
            };
            let read = || -> Option<Option<Segment>> {
                if u32_at(data, base)? != 1 {
                    return Some(None); // not PT_LOAD
                }
                let flags = u32_at(data, base + 4)?;
                Some(Some(Segment {
                    offset: u64_at(data, base + 8)?,
                    vaddr: u64_at(data, base + 16)?,
                    file_size: u64_at(data, base + 32)?,
                    mem_size: u64_at(data, base + 40)?,
                    exec: flags & 1 != 0,
                    write: flags & 2 != 0,
                    read: flags & 4 != 0,
                }))
            };
            match read() {
                None => Some(Err(ElfError::Truncated)),
                Some(None) => None,
                Some(Some(s)) => Some(Ok(s)),
            }
        })
    }

    /// The file bytes of a segment.
    pub fn contents(&self, seg: &Segment) -> &'a [u8] {
        let start = seg.offset as usize;
        self.data.get(start..start + seg.file_size as usize).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 with the given (vaddr, memsz, filesz, flags) segments.
    fn image(machine: u16, segs: &[(u64, u64, u64, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56 * segs.len()];
        d[0..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&machine.to_le_bytes());
        d[24..32].copy_from_slice(&0x40_1000u64.to_le_bytes());
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
        assert_eq!(e.entry, 0x40_1000);
        let segs: Vec<Segment> = e.segments().map(Result::unwrap).collect();
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
                for s in e.segments().flatten() {
                    let _ = e.contents(&s);
                }
            }
        }
    }
}
