//! `iommufd(op, ptr)`, the IOAS door: the decoder of `iommufd::syscall` run
//! on the running task's object table (`iommufd::Iommufd`) over the
//! registered IOMMU units, with the task's memory behind its page tables
//! ([`crate::dma::TaskMemory`]), and the units' faults delivered to the
//! fault queues that asked for them.

use super::device::{decode_bdf, owned_by_current};
use crate::dma::TaskMemory;
use crate::scheduler::with_current_iommufd;
use crate::user_access::{copy_from_user, copy_from_user_into, copy_to_user};
use abi::{Errno, SysResult};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use fallible::VecExt;

/// Faults drained from the units that no task has taken yet (oldest first).
static PENDING_FAULTS: spin::Mutex<VecDeque<(usize, iommu::FaultEvent)>> = spin::Mutex::new(VecDeque::new());
/// Faults kept for their owner at most (older ones are dropped; all were logged).
const PENDING_LIMIT: usize = 256;
/// Timer tick of the last poll of the units' fault records. They are polled
/// at the start of a call once per tick (10 ms at 100 Hz) at most: each poll
/// reads every unit's fault status over MMIO, and under TCG (`cargo xtask
/// profile`) polls every 100 us still took a tenth of the cheapest call; the
/// tick is one atomic load where a clock read is a timer-counter read.
/// `fault_read` and its wait always poll, so a task asking for its faults
/// never misses one; the log of a stray DMA is at most a tick late (edu's
/// DMA alone takes 100 ms).
static LAST_POLL_TICK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

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

    fn read_into(&self, va: u64, out: &mut [u8]) -> Result<(), Errno> {
        copy_from_user_into(va, out)
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
        let bdf = decode_bdf(raw)?;
        let dev = owned_by_current(bdf)?;
        let rid = pci::dma_requester_id(&dev.function, crate::pci::functions());
        let t = crate::pci::topology().and_then(|t| t.translate_pci(bdf.segment, rid)).ok_or(Errno::ENODEV)?;
        let unit = crate::iommu::registered(t.unit).ok_or(Errno::ENODEV)?;
        Ok((unit, iommu::DeviceId(t.id)))
    }

    fn write_unit_name(&self, unit: usize, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        out.write_str(crate::iommu::unit_name(unit))
    }

    fn now_ns(&self) -> u64 {
        crate::platform().uptime_ns()
    }

    fn wait_for_faults(&mut self) {
        // The switch to another task happens with interrupts off, as always.
        crate::platform().disable_interrupts();
        crate::scheduler::sleep_current(5_000_000);
        collect_faults();
        crate::platform().enable_interrupts();
    }
}

/// Drains the units' faults (each logged, decoded), keeps them for their
/// owners, and hands the running task those its HWPTs route to a fault queue.
pub(crate) fn collect_faults() {
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

/// `iommufd(op, ptr)`. Faults the units recorded since the last poll are
/// logged first (decoded), so a task sees its stray DMA reported, and
/// delivered to the fault queues that asked for them (polled at most once
/// per timer tick, see `LAST_POLL_TICK`, and always for `fault_read`); then the op runs
/// through the decoder the host tests use too (`iommufd::syscall`).
///
/// The op runs with interrupts on: a map at the pin quota takes tens of
/// milliseconds (45 ms for 128 MiB under TCG), and the timer and devices
/// are served meanwhile. That is safe: no interrupt handler takes a lock a
/// syscall may hold (they count, acknowledge, and at most log, which does
/// not wait on an interrupted writer of its own CPU), and the kernel is not
/// preempted (a task switch happens only from user mode), so the call
/// stays on its CPU. Calls of tasks on other CPUs run meanwhile; they meet
/// at the locks of docs/smp.md (the task list briefly, then each unit's own lock for its calls).
///
/// IOMMU table frames: what each call adds or frees on its CPU is charged
/// to the task (`quota.table_frames`); at the limit, ops that can add tables
/// are `EDQUOT`.
pub fn syscall(op: u64, ptr: u64) -> SysResult {
    use abi::iommufd::Op;
    use core::sync::atomic::Ordering;
    let op_kind = Op::from_raw(op);
    let tick = crate::platform().timer_ticks();
    if op_kind == Some(Op::FaultRead) || tick != LAST_POLL_TICK.load(Ordering::Relaxed) {
        LAST_POLL_TICK.store(tick, Ordering::Relaxed);
        collect_faults();
    }
    let frees_only = matches!(
        op_kind,
        Some(Op::Destroy | Op::IoasUnmap | Op::DeviceDetach | Op::IoasIovaRanges | Op::GetHwInfo | Op::FaultRead)
    );
    if !frees_only && crate::scheduler::current_table_frames()? >= crate::limits::limits().table_frames {
        return Err(Errno::EDQUOT);
    }
    let before = crate::iommu::cpu_table_frames();
    crate::platform().enable_interrupts();
    let r = iommufd::syscall::dispatch(&mut TaskKernel { user: TaskUser }, op, ptr);
    crate::platform().disable_interrupts();
    // Calls that remove entries, and calls that ran out of memory (after
    // reserving room), leave maps with room to spare: given back now, so a
    // kernel back in a state is back at its heap use, and a call that found
    // no memory leaves the heap as it found it. A call refused on its
    // arguments (unknown id, bad struct or range) removed nothing.
    let refused = matches!(r, Err(Errno::ENOENT | Errno::EINVAL | Errno::EFAULT | Errno::E2BIG | Errno::ENOTTY));
    let removes = matches!(op_kind, Some(Op::Destroy | Op::IoasUnmap | Op::DeviceDetach));
    if r == Err(Errno::ENOMEM) || (removes && !refused) {
        crate::iommu::with_units(|units| units.iter_mut().for_each(|u| u.shrink()));
        let _ = with_current_iommufd(|fd, _| {
            fd.shrink();
            Ok(())
        });
    }
    // fault_read may sleep, and other tasks' calls run meanwhile: it maps
    // nothing, so it is charged nothing.
    let delta = crate::iommu::cpu_table_frames() - before;
    if op_kind != Some(Op::FaultRead) && delta != 0 {
        crate::scheduler::charge_table_frames(delta);
    }
    r
}
