//! Task memory as DMA sees it: kcore's side of `iommufd::Memory`. Task pages
//! are pinned while DMA-mapped, in the boot-time pin table (`crate::pins`);
//! frames a unit may still reach are quarantined; a task's IOAS objects are
//! closed at its exit. (The IOAS syscall itself is `crate::syscalls`.)
//!
//! Pinning: a frame mapped into an IOAS carries a pin count. A task that
//! unmaps such a page from its own address space (or exits) does not free the
//! frame; it becomes an orphan, freed by the last unpin.

use crate::frames::FRAME_SIZE;
use crate::mm;
use crate::pins::PinTable;
use crate::user_layout::{USER_MIN, USER_STACK_TOP};
use abi::Errno;
use iommufd::{Iommufd, Runs};

/// Pin counts, orphan and quarantine marks, one word per frame of RAM
/// (`crate::pins`); set up at boot by [`init_pins`].
static PINS: spin::Mutex<Option<PinTable<'static>>> = spin::Mutex::new(None);

/// Sizes the pin table for the frame allocator's span (4 bytes per frame,
/// from frames, not the heap): after `mm::init_frames`.
pub fn init_pins() -> Result<(), &'static str> {
    let (base, frames) = mm::frame_span().ok_or("pins: no frame allocator")?;
    let pages = (frames * 4).div_ceil(FRAME_SIZE as usize);
    let pa = mm::alloc_frames(pages, 1).ok_or("pins: no memory for the pin table")?;
    // SAFETY: `pages` zeroed frames were just allocated for the table alone and are kept for the life of the kernel; the direct map covers them, they are 4-byte aligned, and `frames` words fit in them.
    let words = unsafe { core::slice::from_raw_parts_mut(mm::phys_to_virt(pa) as *mut u32, frames) };
    *PINS.lock() = Some(PinTable::new(base, words));
    Ok(())
}

/// Runs `f` on the pin table (`None` before [`init_pins`]).
fn with_pins<R>(f: impl FnOnce(Option<&mut PinTable<'static>>) -> R) -> R {
    f(PINS.lock().as_mut())
}

/// Frames quarantined so far (kept forever: a unit may still reach them).
pub fn quarantined_frames() -> usize {
    with_pins(|p| p.map_or(0, |p| p.quarantined()))
}

/// Frees a task frame, or leaves it to its last unpin while DMA-mapped
/// (never, if quarantined).
pub fn free_user_frame(pa: u64) {
    if !with_pins(|p| p.is_some_and(|p| p.orphan(pa))) {
        let _ = mm::free_frame(pa);
    }
}

/// Keeps task frames that a device may still reach (its unit could not
/// block it) out of the allocator forever, counted and logged.
pub fn quarantine(frames: impl IntoIterator<Item = u64>) {
    let mut frames = frames.into_iter().peekable();
    if frames.peek().is_none() {
        return;
    }
    let (new, all) = with_pins(|p| match p {
        Some(p) => (frames.filter(|&f| p.quarantine(f)).count(), p.quarantined()),
        None => (0, 0),
    });
    log::error!("iommu: {new} frame(s) quarantined (a unit may still reach them), {all} in all");
}

/// Frames pinned for DMA right now (for tests and the log).
pub fn pinned_frames() -> usize {
    with_pins(|p| p.map_or(0, |p| p.pinned()))
}

/// Pins every frame of `pages`, or none (the error, all undone).
fn pin_all(pages: &Runs) -> Result<(), Errno> {
    with_pins(|p| {
        let p = p.ok_or(Errno::ENOMEM)?;
        // A run at a time: one pass over its words in the table.
        for (i, run) in pages.iter().enumerate() {
            if let Err(e) = p.pin_run(run.pa, run.pages) {
                log::error!("iommu: cannot pin {} frame(s) from {:#x}: {e:?}", run.pages, run.pa);
                // Undo: these frames were pinned here, and their task still
                // owns them (so none of them is an orphan's last pin).
                for done in pages.iter().take(i) {
                    p.unpin_run(done.pa, done.pages, &mut |_| {});
                }
                return Err(Errno::EFAULT);
            }
        }
        Ok(())
    })
}

/// A task's memory as its IOAS mappings see it: the user address space
/// whose page-table root is `root`.
pub struct TaskMemory {
    /// Root of the task's page tables.
    pub root: u64,
}

impl iommufd::Memory for TaskMemory {
    fn pin(&mut self, va: u64, len: u64, write: bool) -> Result<Runs, Errno> {
        let end = va.checked_add(len).filter(|&e| e <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
        if va < USER_MIN {
            return Err(Errno::EFAULT);
        }
        // A fail-nth injection point (a new run of frames is one too, as a
        // heap allocation).
        if crate::fail_nth::hit() {
            return Err(Errno::ENOMEM);
        }
        // Runs of contiguous frames, grown as pages are found: physically
        // contiguous memory is one entry however long, and a huge length
        // fails at its first unmapped page, not in the allocator.
        let mut pages = Runs::new();
        let mut error = Errno::EFAULT;
        // One walk of the task's tables, leaf table by leaf table, a call
        // per run of contiguous frames.
        let stopped = crate::platform().user_walk(self.root, va, end, &mut |_, pa, n, perms| {
            // Device memory (a mapped BAR) is no DMA target; a device may
            // write only what the task may write.
            if perms.device || (write && !perms.write) {
                return false;
            }
            if let Err(e) = pages.push_run(iommufd::Run { pa, pages: n }) {
                error = e;
                return false;
            }
            true
        });
        if stopped < end {
            return Err(error);
        }
        pin_all(&pages)?;
        Ok(pages)
    }

    fn repin(&mut self, pages: &Runs) {
        // The pages are pinned already (by the area copied from), so no
        // frame is out of range; a count cannot saturate under the quotas.
        if let Err(e) = pin_all(pages) {
            log::error!("iommu: repin of {} page(s) refused: {e:?}", pages.pages());
        }
    }

    fn quarantine(&mut self, pages: &Runs) {
        // The pins stay: neither unpin nor a task's exit frees these frames.
        quarantine(pages.frames());
    }

    fn read_u64(&self, pa: u64) -> Option<u64> {
        // Only pinned task frames (pages mapped in an IOAS) are read.
        if !pa.is_multiple_of(8) || !with_pins(|p| p.is_some_and(|p| p.is_pinned(pa))) {
            return None;
        }
        // SAFETY: `pa` lies in a frame pinned for DMA (allocated, not freed while pinned), reached through the direct map; the read is aligned.
        Some(unsafe { (mm::phys_to_virt(pa) as *const u64).read_volatile() })
    }

    fn unpin(&mut self, pages: &Runs) {
        with_pins(|p| {
            let Some(p) = p else { return };
            for run in pages.iter() {
                p.unpin_run(run.pa, run.pages, &mut |pa| {
                    let _ = mm::free_frame(pa);
                });
            }
        });
    }
}

/// Task exit: every device blocked, every mapping gone, every pin dropped.
pub fn close(fd: &mut Iommufd, root: u64) {
    if fd.is_empty() {
        return;
    }
    crate::iommu::with_units(|units| {
        fd.close(units, &mut TaskMemory { root });
        units.iter_mut().for_each(|u| u.shrink());
    });
}
