//! The arch-neutral hand-off from the boot code to the kernel.
//!
//! Each boot path (x86_64 PVH, aarch64 `-kernel` ELF, later UEFI) fills one
//! [`BootInfo`] and calls the kernel with it: one entry contract, several loaders.
//! Everything here is plain data with fixed capacity so that it can be built
//! before the kernel has a heap.
//!
//! A loader that is a separate program (the UEFI loader, `boot/uefi`) hands the
//! struct over in memory: it is `#[repr(C)]`, starts with [`BOOTINFO_MAGIC`], a
//! version and its size, and the kernel accepts it only through
//! [`BootInfo::from_handoff`], which checks every field (enum tags included,
//! through `zerocopy`) before the kernel trusts a byte of it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use zerocopy::{Immutable, IntoBytes, KnownLayout, TryFromBytes};

/// Maximum number of memory-map entries a boot path can hand over (UEFI maps
/// are long even after merging neighbours of the same kind).
pub const MAX_MEMORY_REGIONS: usize = 128;
/// Maximum length of the loader name kept in [`BootInfo`].
pub const MAX_LOADER_NAME: usize = 48;
/// First field of every [`BootInfo`]: "PCBOOTIN" in little-endian ASCII.
pub const BOOTINFO_MAGIC: u64 = u64::from_le_bytes(*b"PCBOOTIN");
/// Layout version of [`BootInfo`]; bumped whenever a field changes.
pub const BOOTINFO_VERSION: u32 = 1;
/// Maximum length of the kernel command line kept in [`BootInfo`].
pub const MAX_CMDLINE: usize = 256;

/// What a physical memory range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, TryFromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(u64)]
pub enum MemoryKind {
    /// Usable RAM.
    Usable,
    /// Reserved by firmware or hardware: never allocate, map only if asked.
    Reserved,
    /// RAM holding ACPI tables that can be reclaimed after parsing.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Defective RAM.
    Bad,
}

/// One entry of the physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, TryFromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MemoryRegion {
    /// First physical address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// How the firmware describes the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareTables {
    /// ACPI: the physical address of the RSDP.
    Acpi {
        /// Physical address of the Root System Description Pointer.
        rsdp: u64,
    },
    /// A flattened device tree at this physical address.
    DeviceTree {
        /// Physical address of the DTB header.
        dtb: u64,
    },
    /// Nothing was found.
    None,
}

/// Error returned when a fixed-capacity field of [`BootInfo`] is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityExceeded;

impl core::fmt::Display for CapacityExceeded {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("boot info capacity exceeded")
    }
}

/// A physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, TryFromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Why a handed-over [`BootInfo`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffError {
    /// Fewer bytes than a `BootInfo`.
    TooShort,
    /// The first field is not [`BOOTINFO_MAGIC`].
    BadMagic(u64),
    /// Built by a loader with another layout version (or size).
    Version {
        /// Version the loader wrote.
        version: u32,
        /// Size the loader wrote.
        size: u32,
    },
    /// A field holds a value no loader writes (an unknown enum tag, a count past its capacity, bad UTF-8).
    Invalid(&'static str),
}

impl core::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HandoffError::TooShort => f.write_str("boot info hand-off is shorter than a BootInfo"),
            HandoffError::BadMagic(m) => write!(f, "boot info hand-off has magic {m:#x}, not {BOOTINFO_MAGIC:#x}"),
            HandoffError::Version { version, size } => write!(
                f,
                "boot info hand-off is version {version} ({size} bytes); this kernel takes version {BOOTINFO_VERSION} ({} bytes): rebuild the loader",
                core::mem::size_of::<BootInfo>()
            ),
            HandoffError::Invalid(what) => write!(f, "boot info hand-off is corrupt: {what}"),
        }
    }
}

/// Everything the boot code tells the kernel.
#[derive(Clone, Debug, TryFromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BootInfo {
    magic: u64,
    version: u32,
    size: u32,
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: u64,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: u64,
    loader: [u8; MAX_LOADER_NAME],
    loader_len: u64,
    acpi_rsdp: u64,
    dtb: u64,
    /// Physical range occupied by the kernel image.
    pub kernel_image: PhysRange,
}

impl BootInfo {
    /// An empty boot info for the named loader (truncated to [`MAX_LOADER_NAME`] bytes).
    pub fn new(loader: &str) -> Self {
        let mut b = BootInfo {
            magic: BOOTINFO_MAGIC,
            version: BOOTINFO_VERSION,
            size: core::mem::size_of::<BootInfo>() as u32,
            regions: [MemoryRegion { base: 0, size: 0, kind: MemoryKind::Reserved }; MAX_MEMORY_REGIONS],
            region_count: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            loader: [0; MAX_LOADER_NAME],
            loader_len: 0,
            acpi_rsdp: 0,
            dtb: 0,
            kernel_image: PhysRange::default(),
        };
        let len = utf8_prefix(loader, MAX_LOADER_NAME);
        b.loader[..len].copy_from_slice(&loader.as_bytes()[..len]);
        b.loader_len = len as u64;
        b
    }

    /// Checks and copies a `BootInfo` that a separate loader wrote into memory
    /// (`bytes` starts at it and may run past its end).
    pub fn from_handoff(bytes: &[u8]) -> Result<BootInfo, HandoffError> {
        let size = core::mem::size_of::<BootInfo>();
        let head = bytes.get(..16).ok_or(HandoffError::TooShort)?;
        let word = |r: core::ops::Range<usize>| head[r].iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let (magic, version, claimed) = (word(0..8), word(8..12) as u32, word(12..16) as u32);
        if magic != BOOTINFO_MAGIC {
            return Err(HandoffError::BadMagic(magic));
        }
        if version != BOOTINFO_VERSION || claimed as usize != size {
            return Err(HandoffError::Version { version, size: claimed });
        }
        let body = bytes.get(..size).ok_or(HandoffError::TooShort)?;
        let boot =
            BootInfo::try_ref_from_bytes(body).map_err(|_| HandoffError::Invalid("a field holds an unknown tag"))?;
        if boot.region_count > MAX_MEMORY_REGIONS as u64 {
            return Err(HandoffError::Invalid("region count past capacity"));
        }
        if boot.cmdline_len > MAX_CMDLINE as u64
            || core::str::from_utf8(&boot.cmdline[..boot.cmdline_len as usize]).is_err()
        {
            return Err(HandoffError::Invalid("command line"));
        }
        if boot.loader_len > MAX_LOADER_NAME as u64
            || core::str::from_utf8(&boot.loader[..boot.loader_len as usize]).is_err()
        {
            return Err(HandoffError::Invalid("loader name"));
        }
        Ok(boot.clone())
    }

    /// The bytes a loader leaves in memory for [`BootInfo::from_handoff`].
    pub fn handoff_bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// How the firmware describes the machine: ACPI when the loader found an
    /// RSDP (also when it found a device tree too, as UEFI firmware on arm may
    /// give both), else the device tree, else nothing.
    pub fn firmware(&self) -> FirmwareTables {
        match (self.acpi_rsdp, self.dtb) {
            (0, 0) => FirmwareTables::None,
            (0, dtb) => FirmwareTables::DeviceTree { dtb },
            (rsdp, _) => FirmwareTables::Acpi { rsdp },
        }
    }

    /// Records the physical address of the ACPI RSDP.
    pub fn set_acpi_rsdp(&mut self, rsdp: u64) {
        self.acpi_rsdp = rsdp;
    }

    /// Records the physical address of a flattened device tree.
    pub fn set_dtb(&mut self, dtb: u64) {
        self.dtb = dtb;
    }

    /// The device tree the loader found, if any (even when ACPI is preferred).
    pub fn dtb(&self) -> Option<u64> {
        (self.dtb != 0).then_some(self.dtb)
    }

    /// Name of the boot path (`"pvh"`, `"arm64-elf"`, `"uefi"`, ...), for the log.
    pub fn loader(&self) -> &str {
        core::str::from_utf8(&self.loader[..self.loader_len as usize]).unwrap_or("?")
    }

    /// Appends a memory region; empty regions are ignored.
    pub fn push_region(&mut self, region: MemoryRegion) -> Result<(), CapacityExceeded> {
        if region.size == 0 {
            return Ok(());
        }
        let slot = self.regions.get_mut(self.region_count as usize).ok_or(CapacityExceeded)?;
        *slot = region;
        self.region_count += 1;
        Ok(())
    }

    /// Appends a memory region, growing the previous one instead when `region`
    /// starts where it ends and holds the same kind (UEFI maps list many
    /// neighbours of one kind); empty regions are ignored.
    pub fn push_merged(&mut self, region: MemoryRegion) -> Result<(), CapacityExceeded> {
        if let Some(last) = self.region_count.checked_sub(1).map(|i| &mut self.regions[i as usize]) {
            if last.kind == region.kind && last.end() == region.base {
                last.size = last.size.saturating_add(region.size);
                return Ok(());
            }
        }
        self.push_region(region)
    }

    /// The memory map, in the order the loader pushed it.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count as usize]
    }

    /// Stores the command line, truncated to [`MAX_CMDLINE`] bytes at a UTF-8 boundary.
    pub fn set_cmdline(&mut self, text: &str) {
        let len = utf8_prefix(text, MAX_CMDLINE);
        self.cmdline[..len].copy_from_slice(&text.as_bytes()[..len]);
        self.cmdline_len = len as u64;
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len as usize]).unwrap_or("")
    }

    /// Value of `key=value` on the command line, if present.
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        self.cmdline().split_ascii_whitespace().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Total bytes of usable RAM (saturating: the sizes come from the loader).
    pub fn usable_bytes(&self) -> u64 {
        self.regions().iter().filter(|r| r.kind == MemoryKind::Usable).fold(0u64, |sum, r| sum.saturating_add(r.size))
    }
}

/// What a UEFI memory type (UEFI 2.10 §7.2.3, `EFI_MEMORY_TYPE`) is to the
/// kernel once boot services are gone; `None` for what is not memory (MMIO).
///
/// Loader and boot-services memory becomes usable (the kernel copies the
/// hand-off before it allocates anything); runtime-services memory stays
/// reserved, as does every type the spec leaves to OEMs and OS loaders.
pub fn uefi_memory_kind(efi_type: u32) -> Option<MemoryKind> {
    Some(match efi_type {
        1..=4 | 7 => MemoryKind::Usable,
        8 => MemoryKind::Bad,
        9 => MemoryKind::AcpiReclaimable,
        10 => MemoryKind::AcpiNvs,
        11 | 12 => return None,
        _ => MemoryKind::Reserved,
    })
}

/// Length of the longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn utf8_prefix(text: &str, max: usize) -> usize {
    let mut len = text.len().min(max);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask fuzz bootinfo`: two usable regions whose sizes add
    /// past 2^64 (a loader's hand-off) overflowed the sum.
    #[test]
    fn usable_bytes_saturates() {
        let mut b = BootInfo::new("test");
        for base in [0, 1 << 40] {
            b.push_region(MemoryRegion { base, size: u64::MAX - 1, kind: MemoryKind::Usable }).unwrap();
        }
        let b = BootInfo::from_handoff(b.handoff_bytes()).unwrap();
        assert_eq!(b.usable_bytes(), u64::MAX);
    }

    #[test]
    fn regions_and_capacity() {
        let mut b = BootInfo::new("test");
        b.push_region(MemoryRegion { base: 0, size: 0, kind: MemoryKind::Usable }).unwrap();
        assert!(b.regions().is_empty(), "empty regions are dropped");
        for i in 0..MAX_MEMORY_REGIONS as u64 {
            b.push_region(MemoryRegion { base: i << 20, size: 4096, kind: MemoryKind::Usable }).unwrap();
        }
        assert_eq!(b.push_region(MemoryRegion { base: 1, size: 1, kind: MemoryKind::Usable }), Err(CapacityExceeded));
        assert_eq!(b.usable_bytes(), 4096 * MAX_MEMORY_REGIONS as u64);
    }

    #[test]
    fn cmdline_parsing_and_truncation() {
        let mut b = BootInfo::new("test");
        b.set_cmdline("ktest.filter=frames console=ttyS0 flag");
        assert_eq!(b.cmdline_value("ktest.filter"), Some("frames"));
        assert_eq!(b.cmdline_value("flag"), None);
        assert_eq!(b.cmdline_value("missing"), None);
        let long = "é".repeat(MAX_CMDLINE);
        b.set_cmdline(&long);
        assert!(b.cmdline().len() <= MAX_CMDLINE);
        assert!(b.cmdline().chars().all(|c| c == 'é'));
    }

    fn sample() -> BootInfo {
        let mut b = BootInfo::new("uefi (x86_64)");
        b.push_region(MemoryRegion { base: 0x10_0000, size: 0x7F0_0000, kind: MemoryKind::Usable }).unwrap();
        b.push_region(MemoryRegion { base: 0x7FF_0000, size: 0x1_0000, kind: MemoryKind::AcpiReclaimable }).unwrap();
        b.set_cmdline("init=demo iommu=vtd");
        b.set_acpi_rsdp(0x7FF_A014);
        b.kernel_image = PhysRange { start: 0x20_0000, end: 0x90_0000 };
        b
    }

    fn same(a: &BootInfo, b: &BootInfo) {
        assert_eq!(a.regions(), b.regions());
        assert_eq!(a.cmdline(), b.cmdline());
        assert_eq!(a.loader(), b.loader());
        assert_eq!(a.firmware(), b.firmware());
        assert_eq!(a.kernel_image, b.kernel_image);
    }

    #[test]
    fn handoff_round_trip_with_trailing_bytes() {
        let b = sample();
        let mut bytes = b.handoff_bytes().to_vec();
        let back = BootInfo::from_handoff(&bytes).unwrap();
        same(&b, &back);
        bytes.extend_from_slice(&[0xAA; 100]);
        same(&b, &BootInfo::from_handoff(&bytes).unwrap());
    }

    #[test]
    fn handoff_refuses_what_no_loader_writes() {
        let good = sample().handoff_bytes().to_vec();
        let size = core::mem::size_of::<BootInfo>();
        assert_eq!(BootInfo::from_handoff(&good[..10]).unwrap_err(), HandoffError::TooShort);
        assert_eq!(BootInfo::from_handoff(&good[..size - 1]).unwrap_err(), HandoffError::TooShort);
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(BootInfo::from_handoff(&bad), Err(HandoffError::BadMagic(_))));
        let mut bad = good.clone();
        bad[8] = 9;
        assert!(matches!(BootInfo::from_handoff(&bad), Err(HandoffError::Version { version: 9, .. })));
        let mut bad = good.clone();
        bad[12] ^= 8;
        assert!(matches!(BootInfo::from_handoff(&bad), Err(HandoffError::Version { .. })));
        // The first region's kind (offset 16 + 16): an unknown tag.
        let mut bad = good.clone();
        bad[32] = 77;
        assert!(matches!(BootInfo::from_handoff(&bad), Err(HandoffError::Invalid(_))));
        // The region count (right after the regions) past capacity.
        let count_at = 16 + 24 * MAX_MEMORY_REGIONS;
        let mut bad = good.clone();
        bad[count_at..count_at + 8].copy_from_slice(&(MAX_MEMORY_REGIONS as u64 + 1).to_le_bytes());
        assert_eq!(BootInfo::from_handoff(&bad).unwrap_err(), HandoffError::Invalid("region count past capacity"));
        // The command line: invalid UTF-8, then a length past capacity.
        let cmd_at = count_at + 8;
        let mut bad = good.clone();
        bad[cmd_at] = 0xFF;
        assert_eq!(BootInfo::from_handoff(&bad).unwrap_err(), HandoffError::Invalid("command line"));
        let mut bad = good.clone();
        bad[cmd_at + MAX_CMDLINE..cmd_at + MAX_CMDLINE + 8].copy_from_slice(&999u64.to_le_bytes());
        assert_eq!(BootInfo::from_handoff(&bad).unwrap_err(), HandoffError::Invalid("command line"));
    }

    #[test]
    fn uefi_map_merges_neighbours_of_one_kind() {
        let mut b = BootInfo::new("t");
        // (base, pages, type): conventional, loader data, boot data, ACPI reclaim, runtime data, conventional after a hole, MMIO.
        let map = [
            (0u64, 160u64, 7u32),
            (0x10_0000, 16, 2),
            (0x11_0000, 16, 4),
            (0x12_0000, 1, 9),
            (0x12_1000, 1, 6),
            (0x20_0000, 16, 7),
            (0xFFC0_0000, 1024, 11),
        ];
        for (base, pages, ty) in map {
            if let Some(kind) = uefi_memory_kind(ty) {
                b.push_merged(MemoryRegion { base, size: pages * 4096, kind }).unwrap();
            }
        }
        let got: Vec<_> = b.regions().iter().map(|r| (r.base, r.size, r.kind)).collect();
        assert_eq!(
            got,
            vec![
                (0, 160 * 4096, MemoryKind::Usable),
                (0x10_0000, 32 * 4096, MemoryKind::Usable),
                (0x12_0000, 4096, MemoryKind::AcpiReclaimable),
                (0x12_1000, 4096, MemoryKind::Reserved),
                (0x20_0000, 16 * 4096, MemoryKind::Usable),
            ]
        );
        assert_eq!(uefi_memory_kind(0x8000_0001), Some(MemoryKind::Reserved));
        assert_eq!(uefi_memory_kind(8), Some(MemoryKind::Bad));
        assert_eq!(uefi_memory_kind(10), Some(MemoryKind::AcpiNvs));
    }

    #[test]
    fn firmware_prefers_acpi() {
        let mut b = BootInfo::new("t");
        assert_eq!(b.firmware(), FirmwareTables::None);
        b.set_dtb(0x4000_0000);
        assert_eq!(b.firmware(), FirmwareTables::DeviceTree { dtb: 0x4000_0000 });
        b.set_acpi_rsdp(0x1234);
        assert_eq!(b.firmware(), FirmwareTables::Acpi { rsdp: 0x1234 });
        assert_eq!(b.dtb(), Some(0x4000_0000));
        let long = "x".repeat(100);
        assert_eq!(BootInfo::new(&long).loader().len(), MAX_LOADER_NAME);
    }
}
