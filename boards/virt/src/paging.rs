//! Kernel page tables for the upper VA range (TTBR1_EL1), 4 KiB granule,
//! 4 levels, through io-pgtable's engine in the CPU format
//! ([`io_pgtable::formats::ArmCpu`], ARM ARM D8.3 "Translation table
//! descriptor formats"), and the [`TableMemory`] the user spaces use too.
//!
//! Only what the kernel needs: 4 KiB pages in the dynamic window, and
//! lookups that understand the boot code's 1 GiB and 2 MiB blocks. Table
//! frames come from the kernel frame allocator and are reached through the
//! direct map; none of this touches the heap (it runs before the heap
//! exists). Barriers and TLB maintenance are here, around the engine's
//! changes: a map only ever fills an invalid entry (nothing to invalidate,
//! the TLB holds no faulting entry), an unmap clears a valid one and then
//! invalidates its VA (break-before-make never needs more: no entry is
//! changed from one valid value to another).

use io_pgtable::formats::ArmCpu;
use io_pgtable::{PageTable, Perms, TableMemory};
use kcore::{MapError, PageAttr};

/// The tables as the boot code configured the MMU: 48-bit VAs (T0SZ = T1SZ
/// = 16, four levels); MAIR_EL1 attr0 Device-nGnRnE, attr1 Normal write-back.
pub(crate) const FORMAT: ArmCpu = ArmCpu::new(4, 1, 0);
const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;
/// First address of the upper range: the TTBR1 tables index VA\[47:0\].
const UPPER: u64 = 0xFFFF_0000_0000_0000;

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Page-table frames of the CPU's tables (kernel and user): the kernel
/// frame allocator (zeroed frames), reached through the direct map.
pub(crate) struct CpuTables;

impl TableMemory for CpuTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = kcore::mm::alloc_frame()?;
        // A table walk may read the frame as soon as the descriptor that
        // publishes it is visible: the zeroing stores go first.
        // SAFETY: a barrier only (orders the stores before it before any store after it).
        unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        let _ = kcore::mm::free_frame(pa);
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        let p = (kcore::mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *const u64;
        // SAFETY: `table` is a page-table frame (reached from TTBR0/TTBR1 or just allocated) in the direct map; the index stays inside it.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        let p = (kcore::mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *mut u64;
        // SAFETY: as in `read`; kernel-table updates hold LOCK, a user space is changed by its owner alone.
        unsafe { p.write_volatile(value) }
    }
}

/// What an engine refusal means for a page at `va`.
pub(crate) fn map_error(e: io_pgtable::Error, va: u64) -> MapError {
    match e {
        io_pgtable::Error::NoMemory => MapError::OutOfFrames,
        io_pgtable::Error::AlreadyMapped(_) => MapError::AlreadyMapped(va),
        io_pgtable::Error::SplitLeaf(_) => MapError::InsideHugePage(va),
        io_pgtable::Error::Unaligned
        | io_pgtable::Error::OutOfRange
        | io_pgtable::Error::BadPerms
        | io_pgtable::Error::Empty => MapError::BadAddress(va),
    }
}

fn ttbr1_root() -> u64 {
    let ttbr: u64;
    // SAFETY: reading TTBR1_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr1_el1", out(reg) ttbr, options(nomem, nostack)) };
    ttbr & ADDR_MASK
}

/// The kernel's tables (the boot code built them; the caller holds LOCK).
fn kernel_tables() -> PageTable<ArmCpu> {
    PageTable::from_root(FORMAT, ttbr1_root())
}

/// `va` as the TTBR1 tables index it, if it is in the upper range.
fn table_va(va: u64) -> Option<u64> {
    (va >> 48 == 0xFFFF).then(|| va - UPPER)
}

fn check_va(va: u64) -> Result<u64, MapError> {
    match table_va(va) {
        Some(t) if va & 0xFFF == 0 => Ok(t),
        _ => Err(MapError::BadAddress(va)),
    }
}

fn sync_after_change(va: Option<u64>) {
    // SAFETY: barriers and a TLB invalidation by VA for all ASIDs, inner shareable.
    unsafe {
        match va {
            Some(va) => {
                core::arch::asm!("dsb ishst", "tlbi vaae1is, {}", "dsb ish", "isb", in(reg) va >> 12, options(nostack))
            }
            None => core::arch::asm!("dsb ishst", "isb", options(nostack)),
        }
    }
}

/// Maps one 4 KiB page in the upper range (never executable; MMIO as Device memory).
pub fn map_page(va: u64, pa: u64, attr: PageAttr) -> Result<(), MapError> {
    let tva = check_va(va)?;
    if pa & !ADDR_MASK != 0 {
        return Err(MapError::BadAddress(pa));
    }
    let _guard = LOCK.lock();
    let mut tables = kernel_tables();
    if let Some(m) = tables.lookup(&CpuTables, tva) {
        return Err(if m.size > 4096 { MapError::InsideHugePage(va) } else { MapError::AlreadyMapped(va) });
    }
    let perms = match attr {
        PageAttr::Data => Perms::READ | Perms::WRITE | Perms::CACHE,
        PageAttr::Mmio => Perms::READ | Perms::WRITE,
    };
    let done = tables.map(&mut CpuTables, tva, pa, 4096, perms).map_err(|e| map_error(e, va))?;
    // The entry was invalid: no TLB entry to invalidate, only the store to publish.
    sync_after_change(None);
    done.release(&mut CpuTables); // a map frees no table
    Ok(())
}

/// Unmaps one 4 KiB page and returns the physical address it mapped.
pub fn unmap_page(va: u64) -> Result<u64, MapError> {
    let tva = check_va(va)?;
    let _guard = LOCK.lock();
    let mut tables = kernel_tables();
    let m = tables.lookup(&CpuTables, tva).ok_or(MapError::NotMapped(va))?;
    if m.size > 4096 {
        return Err(MapError::InsideHugePage(va));
    }
    let (_, done) = tables.unmap(&mut CpuTables, tva, 4096).map_err(|e| map_error(e, va))?;
    sync_after_change(Some(va));
    done.release(&mut CpuTables); // after the invalidation (a 4 KiB unmap frees no table)
    Ok(m.pa)
}

/// Physical address behind an upper-range `va`, through pages or blocks.
pub fn translate(va: u64) -> Option<u64> {
    let tva = table_va(va)?;
    let _guard = LOCK.lock();
    kernel_tables().iova_to_phys(&CpuTables, tva)
}

/// Memory-attribute index of the leaf mapping `va` (0 device, 1 normal).
pub fn attr_index(va: u64) -> Option<u64> {
    let tva = table_va(va)?;
    let _guard = LOCK.lock();
    let m = kernel_tables().lookup(&CpuTables, tva)?;
    Some(u64::from(if m.perms.contains(Perms::CACHE) { FORMAT.mair_normal } else { FORMAT.mair_device }))
}
