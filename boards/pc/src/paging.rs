//! Kernel page tables through the `x86_64` crate's `OffsetPageTable`
//! (all page-table frames are reachable through the direct map).

use kcore::{MapError, PageAttr};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, TranslateResult, UnmapError};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// Serialises page-table updates.
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Page-table frames come from the kernel frame allocator (zeroed).
struct KernelFrames;

// SAFETY: every frame returned is freshly allocated, zeroed and unused elsewhere.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        kcore::mm::alloc_frame().map(|pa| PhysFrame::containing_address(PhysAddr::new(pa)))
    }
}

fn with_tables<R>(f: impl FnOnce(&mut OffsetPageTable<'static>) -> R) -> R {
    let _guard = LOCK.lock();
    let (root, _) = Cr3::read();
    let va = kcore::mm::phys_to_virt(root.start_address().as_u64());
    // SAFETY: CR3 holds the active PML4, mapped through the direct map at `crate::DIRECT_MAP`; the lock gives exclusive access to the tables.
    let mut tables = unsafe { OffsetPageTable::new(&mut *(va as *mut PageTable), VirtAddr::new(crate::DIRECT_MAP)) };
    f(&mut tables)
}

fn page(va: u64) -> Result<Page<Size4KiB>, MapError> {
    let v = VirtAddr::try_new(va).map_err(|_| MapError::BadAddress(va))?;
    Page::from_start_address(v).map_err(|_| MapError::BadAddress(va))
}

/// Maps one 4 KiB page (writable, never executable; MMIO uncached).
pub fn map_page(va: u64, pa: u64, attr: PageAttr) -> Result<(), MapError> {
    let page = page(va)?;
    if !pa.is_multiple_of(4096) {
        return Err(MapError::BadAddress(pa));
    }
    let frame = PhysFrame::containing_address(PhysAddr::new(pa));
    let mut flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    if attr == PageAttr::Mmio {
        flags |= PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH;
    }
    with_tables(|t| {
        // SAFETY: the page lies in the dynamic window (callers reserve it through kcore::mm), so it aliases no Rust object; the frame is owned by the caller.
        match unsafe { t.map_to(page, frame, flags, &mut KernelFrames) } {
            Ok(flush) => {
                flush.flush();
                Ok(())
            }
            Err(MapToError::PageAlreadyMapped(_)) => Err(MapError::AlreadyMapped(va)),
            Err(MapToError::ParentEntryHugePage) => Err(MapError::InsideHugePage(va)),
            Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
        }
    })
}

/// Unmaps one 4 KiB page and returns the physical address it mapped.
pub fn unmap_page(va: u64) -> Result<u64, MapError> {
    let page = page(va)?;
    with_tables(|t| match t.unmap(page) {
        Ok((frame, flush)) => {
            flush.flush();
            Ok(frame.start_address().as_u64())
        }
        Err(UnmapError::PageNotMapped) => Err(MapError::NotMapped(va)),
        Err(UnmapError::ParentEntryHugePage) => Err(MapError::InsideHugePage(va)),
        Err(UnmapError::InvalidFrameAddress(_)) => Err(MapError::BadAddress(va)),
    })
}

/// Physical address behind `va`, if mapped.
pub fn translate(va: u64) -> Option<u64> {
    let v = VirtAddr::try_new(va).ok()?;
    with_tables(|t| t.translate_addr(v).map(|p| p.as_u64()))
}

/// Page-table flags of the leaf mapping `va`, if mapped.
pub fn leaf_flags(va: u64) -> Option<PageTableFlags> {
    let v = VirtAddr::try_new(va).ok()?;
    with_tables(|t| match t.translate(v) {
        TranslateResult::Mapped { flags, .. } => Some(flags),
        _ => None,
    })
}
