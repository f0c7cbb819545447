//! The IOAS syscall (`Sysno::Iommufd`): the decoder of `iommufd::syscall` run
//! on the running task's object table (`iommufd::Iommufd`) over the
//! registered IOMMU units, with the task's memory behind its page tables,
//! and task pages pinned while DMA-mapped.
//!
//! Pinning: a frame mapped into an IOAS carries a pin count. A task that
//! unmaps such a page from its own address space (or exits) does not free the
//! frame; it becomes an orphan, freed by the last unpin.

use crate::frames::FRAME_SIZE;
use crate::pins::{PinTable, Unpinned};
use crate::task::{copy_from_user, copy_to_user, with_current_iommufd};
use crate::{mm, platform};
use abi::{Errno, SysResult};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use fallible::VecExt;
use iommufd::Iommufd;

/// Pin counts, orphan and quarantine marks, one word per frame of RAM
/// (`crate::pins`); set up at boot by [`init_pins`].
static PINS: spin::Mutex<Option<PinTable<'static>>> = spin::Mutex::new(None);
/// Faults drained from the units that no task has taken yet (oldest first).
static PENDING_FAULTS: spin::Mutex<VecDeque<(usize, iommu::FaultEvent)>> = spin::Mutex::new(VecDeque::new());
/// Faults kept for their owner at most (older ones are dropped; all were logged).
const PENDING_LIMIT: usize = 256;

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
fn pin_all(pages: &[u64]) -> Result<(), Errno> {
    with_pins(|p| {
        let p = p.ok_or(Errno::ENOMEM)?;
        for (i, &pa) in pages.iter().enumerate() {
            if let Err(e) = p.pin(pa) {
                log::error!("iommu: cannot pin {pa:#x}: {e:?}");
                // Undo: these frames were pinned here, and their task still owns them.
                for &done in &pages[..i] {
                    let _ = p.unpin(done);
                }
                return Err(Errno::EFAULT);
            }
        }
        Ok(())
    })
}

/// A task's memory as its IOAS mappings see it.
struct TaskMemory {
    root: u64,
}

impl iommufd::Memory for TaskMemory {
    fn pin(&mut self, va: u64, len: u64, write: bool) -> Result<Vec<u64>, Errno> {
        let end = va.checked_add(len).filter(|&e| e <= crate::task::USER_STACK_TOP).ok_or(Errno::EFAULT)?;
        if va < crate::task::USER_MIN {
            return Err(Errno::EFAULT);
        }
        // A fail-nth injection point (the growth of the page vector is one
        // too, as a heap allocation).
        if crate::fail_nth::hit() {
            return Err(Errno::ENOMEM);
        }
        // Grown as pages are found, never sized from `len`: a huge length
        // fails at its first unmapped page, not in the allocator.
        let mut pages: Vec<u64> = Vec::new();
        let mut error = Errno::EFAULT;
        // One walk of the task's tables, leaf table by leaf table.
        let stopped = platform().user_walk(self.root, va, end, &mut |_, pa, perms| {
            // Device memory (a mapped BAR) is no DMA target; a device may
            // write only what the task may write.
            if perms.device || (write && !perms.write) {
                return false;
            }
            if pages.len() == pages.capacity() && pages.try_reserve(pages.len().max(16)).is_err() {
                error = Errno::ENOMEM;
                return false;
            }
            pages.push(pa);
            true
        });
        if stopped < end {
            return Err(error);
        }
        pin_all(&pages)?;
        Ok(pages)
    }

    fn repin(&mut self, pages: &[u64]) {
        // The pages are pinned already (by the area copied from), so no
        // frame is out of range; a count cannot saturate under the quotas.
        if let Err(e) = pin_all(pages) {
            log::error!("iommu: repin of {} page(s) refused: {e:?}", pages.len());
        }
    }

    fn quarantine(&mut self, pages: &[u64]) {
        // The pins stay: neither unpin nor a task's exit frees these frames.
        quarantine(pages.iter().copied());
    }

    fn read_u64(&self, pa: u64) -> Option<u64> {
        // Only pinned task frames (pages mapped in an IOAS) are read.
        if !pa.is_multiple_of(8) || !with_pins(|p| p.is_some_and(|p| p.is_pinned(pa))) {
            return None;
        }
        // SAFETY: `pa` lies in a frame pinned for DMA (allocated, not freed while pinned), reached through the direct map; the read is aligned.
        Some(unsafe { (mm::phys_to_virt(pa) as *const u64).read_volatile() })
    }

    fn unpin(&mut self, pages: &[u64]) {
        with_pins(|p| {
            let Some(p) = p else { return };
            for &pa in pages {
                if p.unpin(pa) == Unpinned::FreeOrphan {
                    let _ = mm::free_frame(pa);
                }
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

/// The running task as the decoder (`iommufd::syscall`) sees it.
struct TaskKernel {
    user: TaskUser,
}

/// The running task's memory, through its page tables.
struct TaskUser;

impl iommufd::syscall::UserMemory for TaskUser {
    fn read(&self, va: u64, len: usize) -> Result<Vec<u8>, Errno> {
        copy_from_user(va, len)
    }

    fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Errno> {
        copy_to_user(va, bytes)
    }
}

impl iommufd::syscall::Kernel for TaskKernel {
    fn user(&mut self) -> &mut dyn iommufd::syscall::UserMemory {
        &mut self.user
    }

    fn with_fd(&mut self, f: &mut iommufd::syscall::TableOp<'_>) -> Result<(), Errno> {
        with_current_iommufd(|fd, root| crate::iommu::with_units(|units| f(fd, units, &mut TaskMemory { root })))
    }

    fn bind_target(&mut self, raw: u64) -> Result<(usize, iommu::DeviceId), Errno> {
        let bdf = crate::task::decode_bdf(raw)?;
        let dev = crate::task::owned_by_current(bdf)?;
        let rid = pci::dma_requester_id(&dev.function, crate::pci::functions());
        let t = crate::pci::topology().and_then(|t| t.translate_pci(bdf.segment, rid)).ok_or(Errno::ENODEV)?;
        let unit = crate::iommu::registered(t.unit).ok_or(Errno::ENODEV)?;
        Ok((unit, iommu::DeviceId(t.id)))
    }

    fn write_unit_name(&self, unit: usize, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        out.write_str(crate::iommu::unit_name(unit))
    }

    fn now_ns(&self) -> u64 {
        platform().uptime_ns()
    }

    fn wait_for_faults(&mut self) {
        // The switch to another task happens with interrupts off, as always.
        platform().disable_interrupts();
        crate::task::sleep_current(5_000_000);
        collect_faults();
        platform().enable_interrupts();
    }
}

/// Drains the units' faults (each logged, decoded), keeps them for their
/// owners, and hands the running task those its HWPTs route to a fault queue.
fn collect_faults() {
    let mut pending = PENDING_FAULTS.lock();
    // Room for the whole bound at once: the queue never grows afterwards, so
    // a task's faults do not show as kernel heap it leaves behind.
    if pending.capacity() < PENDING_LIMIT {
        let more = PENDING_LIMIT - pending.len();
        let _ = pending.try_reserve_exact(more);
    }
    crate::iommu::take_faults(&mut |unit, f| {
        // Refused interrupt requests are logged (by `take_faults`) but are
        // no HWPT's page faults: they never reach a fault queue.
        if f.access == iommu::Access::Interrupt {
            return;
        }
        if pending.len() == PENDING_LIMIT {
            pending.pop_front();
        }
        // Without room (the reserve above failed) the fault is only logged.
        let _ = pending.try_push((unit, f));
    });
    if pending.is_empty() {
        return;
    }
    let _ = with_current_iommufd(|fd, _| {
        pending.retain(|(unit, f)| !fd.deliver_fault(*unit, f));
        Ok(())
    });
}

/// `iommufd(op, ptr)`. Faults the units recorded since the last call are
/// logged first (decoded), so a task sees its stray DMA reported, and
/// delivered to the fault queues that asked for them; then the op runs
/// through the decoder the host tests use too (`iommufd::syscall`).
///
/// The op runs with interrupts on: a map at the pin quota takes tens of
/// milliseconds (45 ms for 128 MiB under TCG), and the timer and devices
/// are served meanwhile. That is safe on one CPU: no interrupt handler
/// takes a lock a syscall may hold (they count, acknowledge, and at most
/// log, which does not wait on an interrupted writer), and the kernel is
/// not preempted (a task switch happens only from user mode).
///
/// IOMMU table frames: what each call adds or frees is charged to the task
/// (`quota.table_frames`); at the limit, ops that can add tables are `EDQUOT`.
pub fn syscall(op: u64, ptr: u64) -> SysResult {
    collect_faults();
    use abi::ioas::Op;
    let op_kind = Op::from_raw(op);
    let frees_only = matches!(
        op_kind,
        Some(Op::Destroy | Op::IoasUnmap | Op::DeviceDetach | Op::IoasIovaRanges | Op::GetHwInfo | Op::FaultRead)
    );
    if !frees_only && crate::task::current_table_frames()? >= crate::task::limits().table_frames {
        return Err(Errno::EDQUOT);
    }
    let before = crate::iommu::table_frames() as i64;
    platform().enable_interrupts();
    let r = iommufd::syscall::dispatch(&mut TaskKernel { user: TaskUser }, op, ptr);
    platform().disable_interrupts();
    // Calls that remove entries, and calls that ran out of memory (after
    // reserving room), leave maps with room to spare: given back now, so a
    // kernel back in a state is back at its heap use, and a call that found
    // no memory leaves the heap as it found it.
    if r == Err(Errno::ENOMEM) || matches!(op_kind, Some(Op::Destroy | Op::IoasUnmap | Op::DeviceDetach)) {
        crate::iommu::with_units(|units| units.iter_mut().for_each(|u| u.shrink()));
        let _ = with_current_iommufd(|fd, _| {
            fd.shrink();
            Ok(())
        });
    }
    // fault_read may sleep, and other tasks' calls run meanwhile: it maps
    // nothing, so it is charged nothing.
    if op_kind != Some(Op::FaultRead) {
        crate::task::charge_table_frames(crate::iommu::table_frames() as i64 - before);
    }
    r
}
