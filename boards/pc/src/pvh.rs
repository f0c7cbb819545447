//! The PVH boot protocol as QEMU's `-kernel` implements it: `hvm_start_info`
//! (Xen `arch-x86/hvm/start_info.h`, version 1) → [`bootinfo::BootInfo`].

use bootinfo::{BootInfo, MemoryKind, MemoryRegion};

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336E_C578;

fn read<T: Copy>(pa: u64) -> T {
    let va = kcore::mm::phys_to_virt(pa) as *const T;
    // SAFETY: the boot page tables map all low physical memory through the direct map; `pa` points into the start_info structures the loader left in RAM.
    unsafe { va.read_unaligned() }
}

/// Why the start-info block could not be used.
#[derive(Debug, Clone, Copy)]
pub enum PvhError {
    /// The magic number is wrong: not a PVH boot.
    BadMagic(u32),
}

impl core::fmt::Display for PvhError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PvhError::BadMagic(m) => write!(f, "hvm_start_info magic {m:#x} != {START_INFO_MAGIC:#x}"),
        }
    }
}

/// Builds the boot info from the start-info block at physical address `start_info`.
pub fn boot_info(start_info: u64, kernel_image: (u64, u64)) -> Result<BootInfo, PvhError> {
    let magic: u32 = read(start_info);
    if magic != START_INFO_MAGIC {
        return Err(PvhError::BadMagic(magic));
    }
    let mut boot = BootInfo::new("pvh");
    boot.kernel_image = bootinfo::PhysRange { start: kernel_image.0, end: kernel_image.1 };
    let version: u32 = read(start_info + 4);
    let cmdline_pa: u64 = read(start_info + 24);
    if cmdline_pa != 0 {
        let mut buf = [0u8; bootinfo::MAX_CMDLINE];
        let mut len = 0;
        while len < buf.len() {
            let b: u8 = read(cmdline_pa + len as u64);
            if b == 0 {
                break;
            }
            buf[len] = b;
            len += 1;
        }
        boot.set_cmdline(core::str::from_utf8(&buf[..len]).unwrap_or(""));
    }
    let rsdp: u64 = read(start_info + 32);
    if rsdp != 0 {
        boot.set_acpi_rsdp(rsdp);
    }
    if version >= 1 {
        let memmap: u64 = read(start_info + 40);
        let entries: u32 = read(start_info + 48);
        for i in 0..u64::from(entries.min(bootinfo::MAX_MEMORY_REGIONS as u32)) {
            let e = memmap + i * 24;
            let kind = match read::<u32>(e + 16) {
                1 => MemoryKind::Usable,
                3 => MemoryKind::AcpiReclaimable,
                4 => MemoryKind::AcpiNvs,
                5 => MemoryKind::Bad,
                _ => MemoryKind::Reserved,
            };
            let _ = boot.push_region(MemoryRegion { base: read(e), size: read(e + 8), kind });
        }
    }
    Ok(boot)
}
