//! Kernel page tables for the upper VA range (TTBR1_EL1), 4 KiB granule,
//! 4 levels (ARM ARM D8.3 "Translation table descriptor formats").
//!
//! Only what the kernel needs: 4 KiB pages in the dynamic window, and a walk
//! that understands the boot code's 1 GiB blocks. Table frames come from the
//! kernel frame allocator and are reached through the direct map.

use kcore::{MapError, PageAttr};

const VALID: u64 = 1 << 0;
/// Table descriptor at levels 0–2, page descriptor at level 3.
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_INDEX_SHIFT: u64 = 2;
/// MAIR index 0: Device-nGnRnE; index 1: Normal write-back (set by the boot code).
const ATTR_DEVICE: u64 = 0 << ATTR_INDEX_SHIFT;
const ATTR_NORMAL: u64 = 1 << ATTR_INDEX_SHIFT;
const SH_INNER: u64 = 3 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

fn ttbr1_root() -> u64 {
    let ttbr: u64;
    // SAFETY: reading TTBR1_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr1_el1", out(reg) ttbr, options(nomem, nostack)) };
    ttbr & ADDR_MASK
}

fn entry_ptr(table_pa: u64, index: u64) -> *mut u64 {
    (kcore::mm::phys_to_virt(table_pa) + index * 8) as *mut u64
}

fn read_entry(table_pa: u64, index: u64) -> u64 {
    // SAFETY: `table_pa` is a page-table frame (reached from TTBR1) in the direct map.
    unsafe { entry_ptr(table_pa, index).read_volatile() }
}

fn write_entry(table_pa: u64, index: u64, value: u64) {
    // SAFETY: as in `read_entry`; the caller holds LOCK, so no concurrent update.
    unsafe { entry_ptr(table_pa, index).write_volatile(value) };
}

fn index(va: u64, level: u32) -> u64 {
    (va >> (39 - 9 * level)) & 0x1FF
}

fn check_va(va: u64) -> Result<(), MapError> {
    if va & 0xFFF != 0 || va >> 48 != 0xFFFF {
        return Err(MapError::BadAddress(va));
    }
    Ok(())
}

/// Level-3 table covering `va`, creating intermediate tables when `create`.
fn leaf_table(va: u64, create: bool) -> Result<u64, MapError> {
    let mut table = ttbr1_root();
    for level in 0..3 {
        let i = index(va, level);
        let e = read_entry(table, i);
        if e & VALID == 0 {
            if !create {
                return Err(MapError::NotMapped(va));
            }
            let new = kcore::mm::alloc_frame().ok_or(MapError::OutOfFrames)?;
            // Publish the zeroed table only after it is complete (it is: zeroed).
            // SAFETY: orders the zeroing stores before the descriptor store.
            unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
            write_entry(table, i, new | VALID | TABLE_OR_PAGE);
            table = new;
        } else if e & TABLE_OR_PAGE == 0 {
            return Err(MapError::InsideHugePage(va));
        } else {
            table = e & ADDR_MASK;
        }
    }
    Ok(table)
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

/// Maps one 4 KiB page in the upper range.
pub fn map_page(va: u64, pa: u64, attr: PageAttr) -> Result<(), MapError> {
    check_va(va)?;
    if pa & !ADDR_MASK != 0 {
        return Err(MapError::BadAddress(pa));
    }
    let _guard = LOCK.lock();
    let table = leaf_table(va, true)?;
    let i = index(va, 3);
    if read_entry(table, i) & VALID != 0 {
        return Err(MapError::AlreadyMapped(va));
    }
    let attrs = match attr {
        PageAttr::Data => ATTR_NORMAL | SH_INNER,
        PageAttr::Mmio => ATTR_DEVICE,
    };
    write_entry(table, i, pa | VALID | TABLE_OR_PAGE | ACCESS_FLAG | attrs | PXN | UXN);
    sync_after_change(None);
    Ok(())
}

/// Unmaps one 4 KiB page and returns the physical address it mapped.
pub fn unmap_page(va: u64) -> Result<u64, MapError> {
    check_va(va)?;
    let _guard = LOCK.lock();
    let table = leaf_table(va, false)?;
    let i = index(va, 3);
    let e = read_entry(table, i);
    if e & VALID == 0 {
        return Err(MapError::NotMapped(va));
    }
    write_entry(table, i, 0);
    sync_after_change(Some(va));
    Ok(e & ADDR_MASK)
}

/// Physical address behind an upper-range `va`, through pages or blocks.
pub fn translate(va: u64) -> Option<u64> {
    if va >> 48 != 0xFFFF {
        return None;
    }
    let _guard = LOCK.lock();
    let mut table = ttbr1_root();
    for level in 0..4 {
        let e = read_entry(table, index(va, level));
        if e & VALID == 0 {
            return None;
        }
        let is_leaf = level == 3 || e & TABLE_OR_PAGE == 0;
        if is_leaf {
            let block_mask = (1u64 << (12 + 9 * (3 - level))) - 1;
            return Some((e & ADDR_MASK & !block_mask) | (va & block_mask));
        }
        table = e & ADDR_MASK;
    }
    None
}

/// Memory-attribute index of the leaf mapping `va` (0 device, 1 normal).
pub fn attr_index(va: u64) -> Option<u64> {
    let _guard = LOCK.lock();
    let table = leaf_table(va, false).ok()?;
    let e = read_entry(table, index(va, 3));
    (e & VALID != 0).then_some((e >> ATTR_INDEX_SHIFT) & 7)
}
