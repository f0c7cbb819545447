//! The arch-neutral hand-off from the boot code to the kernel.
//!
//! Each boot path (x86_64 PVH, aarch64 `-kernel` ELF, later UEFI) fills one
//! [`BootInfo`] and calls the kernel with it: one entry contract, several loaders.
//! Everything here is plain data with fixed capacity so that it can be built
//! before the kernel has a heap.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// Maximum number of memory-map entries a boot path can hand over.
pub const MAX_MEMORY_REGIONS: usize = 64;
/// Maximum length of the kernel command line kept in [`BootInfo`].
pub const MAX_CMDLINE: usize = 256;

/// What a physical memory range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Everything the boot code tells the kernel.
#[derive(Clone, Debug)]
pub struct BootInfo {
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Where the firmware tables are.
    pub firmware: FirmwareTables,
    /// Physical range occupied by the kernel image (start, end).
    pub kernel_image: (u64, u64),
    /// Name of the boot path (`"pvh"`, `"arm64-elf"`, ...), for the log.
    pub loader: &'static str,
}

impl BootInfo {
    /// An empty boot info for the named loader.
    pub const fn new(loader: &'static str) -> Self {
        BootInfo {
            regions: [MemoryRegion { base: 0, size: 0, kind: MemoryKind::Reserved }; MAX_MEMORY_REGIONS],
            region_count: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            firmware: FirmwareTables::None,
            kernel_image: (0, 0),
            loader,
        }
    }

    /// Appends a memory region; empty regions are ignored.
    pub fn push_region(&mut self, region: MemoryRegion) -> Result<(), CapacityExceeded> {
        if region.size == 0 {
            return Ok(());
        }
        let slot = self.regions.get_mut(self.region_count).ok_or(CapacityExceeded)?;
        *slot = region;
        self.region_count += 1;
        Ok(())
    }

    /// The memory map, in the order the loader pushed it.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// Stores the command line, truncated to [`MAX_CMDLINE`] bytes at a UTF-8 boundary.
    pub fn set_cmdline(&mut self, text: &str) {
        let mut len = text.len().min(MAX_CMDLINE);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        self.cmdline[..len].copy_from_slice(&text.as_bytes()[..len]);
        self.cmdline_len = len;
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Value of `key=value` on the command line, if present.
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        self.cmdline().split_ascii_whitespace().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Total bytes of usable RAM.
    pub fn usable_bytes(&self) -> u64 {
        self.regions().iter().filter(|r| r.kind == MemoryKind::Usable).map(|r| r.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
