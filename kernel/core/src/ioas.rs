//! The IOAS syscall (`Sysno::Iommufd`): user structs decoded by the ABI rules,
//! the running task's object table (`iommufd::Iommufd`) driven over the
//! registered IOMMU units, and task pages pinned while DMA-mapped.
//!
//! Pinning: a frame mapped into an IOAS carries a pin count. A task that
//! unmaps such a page from its own address space (or exits) does not free the
//! frame; it becomes an orphan, freed by the last unpin.

use crate::frames::FRAME_SIZE;
use crate::task::{copy_from_user, copy_to_user, with_current_iommufd};
use crate::{mm, platform};
use abi::ioas::{self as a, Header, Op};
use abi::{Errno, SysResult};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use iommu::Perms;
use iommufd::{CopyArgs, Iommufd, IovaChoice, MapArgs};
use zerocopy::IntoBytes;

static PINS: spin::Mutex<BTreeMap<u64, u32>> = spin::Mutex::new(BTreeMap::new());
/// Faults drained from the units that no task has taken yet (oldest first).
static PENDING_FAULTS: spin::Mutex<VecDeque<(usize, iommu::FaultEvent)>> = spin::Mutex::new(VecDeque::new());
/// Faults kept for their owner at most (older ones are dropped; all were logged).
const PENDING_LIMIT: usize = 256;
static ORPHANS: spin::Mutex<BTreeSet<u64>> = spin::Mutex::new(BTreeSet::new());
/// Frames a unit may still reach (a flush or a detach failed): never freed.
static QUARANTINE: spin::Mutex<BTreeSet<u64>> = spin::Mutex::new(BTreeSet::new());

/// Frames quarantined so far (kept forever: a unit may still reach them).
pub fn quarantined_frames() -> usize {
    QUARANTINE.lock().len()
}

/// Frees a task frame, or leaves it to its last unpin while DMA-mapped.
pub fn free_user_frame(pa: u64) {
    if PINS.lock().contains_key(&pa) {
        ORPHANS.lock().insert(pa);
    } else {
        let _ = mm::free_frame(pa);
    }
}

/// Keeps task frames that a device may still reach (its unit could not
/// block it) out of the allocator forever, counted and logged.
pub fn quarantine(frames: &[u64]) {
    if frames.is_empty() {
        return;
    }
    let mut q = QUARANTINE.lock();
    q.extend(frames.iter().copied());
    log::error!("iommu: {} task frame(s) quarantined, {} in all", frames.len(), q.len());
}

/// Frames pinned for DMA right now (for tests and the log).
pub fn pinned_frames() -> usize {
    PINS.lock().len()
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
        // fail-nth injection points: the pin itself, and each growth of its vector.
        if crate::fail_nth::hit() {
            return Err(Errno::ENOMEM);
        }
        // Grown as pages are found, never sized from `len`: a huge length
        // fails at its first unmapped page, not in the allocator.
        let mut pages: Vec<u64> = Vec::new();
        for page in (va..end).step_by(FRAME_SIZE as usize) {
            let (pa, perms) = platform().user_translate(self.root, page).ok_or(Errno::EFAULT)?;
            // Device memory (a mapped BAR) is no DMA target; a device may
            // write only what the task may write.
            if perms.device || (write && !perms.write) {
                return Err(Errno::EFAULT);
            }
            if pages.len() == pages.capacity() {
                if crate::fail_nth::hit() {
                    return Err(Errno::ENOMEM);
                }
                pages.try_reserve(pages.len().max(16)).map_err(|_| Errno::ENOMEM)?;
            }
            pages.push(pa);
        }
        self.repin(&pages);
        Ok(pages)
    }

    fn repin(&mut self, pages: &[u64]) {
        let mut pins = PINS.lock();
        for &p in pages {
            *pins.entry(p).or_default() += 1;
        }
    }

    fn quarantine(&mut self, pages: &[u64]) {
        let mut q = QUARANTINE.lock();
        let before = q.len();
        q.extend(pages.iter().copied());
        // The pins stay: neither unpin nor a task's exit frees these frames.
        log::error!(
            "iommu: {} frame(s) quarantined (a unit may still reach them), {} in all",
            q.len() - before,
            q.len()
        );
    }

    fn read_u64(&self, pa: u64) -> Option<u64> {
        // Only pinned task frames (pages mapped in an IOAS) are read.
        if !pa.is_multiple_of(8) || !PINS.lock().contains_key(&(pa & !(FRAME_SIZE - 1))) {
            return None;
        }
        // SAFETY: `pa` lies in a frame pinned for DMA (allocated, not freed while pinned), reached through the direct map; the read is aligned.
        Some(unsafe { (mm::phys_to_virt(pa) as *const u64).read_volatile() })
    }

    fn unpin(&mut self, pages: &[u64]) {
        let mut pins = PINS.lock();
        for &p in pages {
            let Some(n) = pins.get_mut(&p) else { continue };
            *n -= 1;
            if *n == 0 {
                pins.remove(&p);
                if ORPHANS.lock().remove(&p) {
                    let _ = mm::free_frame(p);
                }
            }
        }
    }
}

/// Task exit: every device blocked, every mapping gone, every pin dropped.
pub fn close(fd: &mut Iommufd, root: u64) {
    if fd.is_empty() {
        return;
    }
    crate::iommu::with_units(|units| fd.close(units, &mut TaskMemory { root }));
}

/// Reads the struct at `ptr` by the ABI's size rules.
fn read<T: Header>(ptr: u64) -> Result<(T, u32), Errno> {
    let head = copy_from_user(ptr, 4)?;
    let size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if size > a::MAX_STRUCT {
        return Err(Errno::E2BIG);
    }
    Ok((a::decode::<T>(&copy_from_user(ptr, size as usize)?)?, size))
}

fn write<T: Header>(ptr: u64, v: &T, size: u32) -> Result<(), Errno> {
    copy_to_user(ptr, a::encode(v, size))
}

/// Runs `f` on the running task's objects and the registered units.
fn with_fd<R>(
    f: impl FnOnce(&mut Iommufd, iommufd::Units<'_>, &mut TaskMemory) -> Result<R, Errno>,
) -> Result<R, Errno> {
    with_current_iommufd(|fd, root| crate::iommu::with_units(|units| f(fd, units, &mut TaskMemory { root })))
}

fn perms(flags: u32) -> Perms {
    let mut p = Perms::empty();
    p.set(Perms::READ, flags & a::MAP_READABLE != 0);
    p.set(Perms::WRITE, flags & a::MAP_WRITEABLE != 0);
    p
}

fn iova_choice(flags: u32, iova: u64) -> IovaChoice {
    if flags & a::MAP_FIXED_IOVA != 0 {
        IovaChoice::Fixed(iova)
    } else {
        IovaChoice::Auto
    }
}

fn size_name(size: u64) -> alloc::string::String {
    match size {
        s if s >= 1 << 30 => alloc::format!("{}G", s >> 30),
        s if s >= 1 << 20 => alloc::format!("{}M", s >> 20),
        s => alloc::format!("{}K", s >> 10),
    }
}

/// Drains the units' faults (each logged, decoded), keeps them for their
/// owners, and hands the running task those its HWPTs route to a fault queue.
fn collect_faults() {
    let drained = crate::iommu::take_faults();
    let mut pending = PENDING_FAULTS.lock();
    // Refused interrupt requests are logged (above) but are no HWPT's page
    // faults: they never reach a fault queue.
    for f in drained.into_iter().filter(|(_, f)| f.access != iommu::Access::Interrupt) {
        if pending.len() == PENDING_LIMIT {
            pending.pop_front();
        }
        pending.push_back(f);
    }
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
/// delivered to the fault queues that asked for them.
pub fn syscall(op: u64, ptr: u64) -> SysResult {
    collect_faults();
    // An op this kernel does not know has its own errno (as an unknown ioctl).
    match Op::from_raw(op).ok_or(Errno::ENOTTY)? {
        Op::IoasAlloc => {
            let (mut s, size) = read::<a::IoasAlloc>(ptr)?;
            s.out_ioas_id = with_fd(|fd, _, _| fd.ioas_alloc())?;
            write(ptr, &s, size)?;
        }
        Op::Destroy => {
            let (s, _) = read::<a::Destroy>(ptr)?;
            with_fd(|fd, units, mem| fd.destroy(units, mem, s.id))?;
        }
        Op::IoasIovaRanges => {
            let (mut s, size) = read::<a::IoasIovaRanges>(ptr)?;
            let (ranges, align) = with_fd(|fd, units, _| {
                let r = fd.iova_ranges(units, s.ioas_id)?;
                Ok((r, 1u64 << fd.page_sizes(units, s.ioas_id).trailing_zeros()))
            })?;
            let room = s.num_ranges as usize;
            s.num_ranges = ranges.len() as u32;
            s.out_iova_alignment = align;
            let out: Vec<a::IovaRange> = ranges.iter().map(|&(start, last)| a::IovaRange { start, last }).collect();
            if out.len() > room {
                write(ptr, &s, size)?;
                return Err(Errno::E2BIG);
            }
            copy_to_user(s.ranges, out.as_bytes())?;
            write(ptr, &s, size)?;
        }
        Op::IoasAllowIovas => {
            let (s, _) = read::<a::IoasAllowIovas>(ptr)?;
            if s.num_ranges > 64 {
                return Err(Errno::E2BIG);
            }
            let bytes = copy_from_user(s.ranges, s.num_ranges as usize * core::mem::size_of::<a::IovaRange>())?;
            let ranges: Vec<(u64, u64)> = bytes
                .chunks_exact(16)
                .map(|c| {
                    (
                        u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                        u64::from_le_bytes(c[8..].try_into().unwrap_or_default()),
                    )
                })
                .collect();
            with_fd(|fd, units, _| fd.allow_iovas(units, s.ioas_id, &ranges))?;
        }
        Op::IoasMap => {
            let (mut s, size) = read::<a::IoasMap>(ptr)?;
            let m = MapArgs { va: s.user_va, len: s.length, iova: iova_choice(s.flags, s.iova), perms: perms(s.flags) };
            s.iova = with_fd(|fd, units, mem| {
                let iova = fd.map(units, mem, s.ioas_id, m)?;
                if fd.hints(s.ioas_id)?.report_leaves {
                    for (unit, leaves) in fd.leaves(units, s.ioas_id, iova, m.len)? {
                        let text: Vec<alloc::string::String> =
                            leaves.iter().map(|&(size, n)| alloc::format!("{} x {n}", size_name(size))).collect();
                        let name = crate::iommu::topology_index(unit)
                            .and_then(|t| {
                                crate::pci::topology().and_then(|topo| topo.units().get(t).map(|u| u.name.clone()))
                            })
                            .unwrap_or_default();
                        log::info!("ioas: {:#x} bytes at {iova:#x}: {name} leaves {}", m.len, text.join(", "));
                    }
                }
                Ok(iova)
            })?;
            write(ptr, &s, size)?;
        }
        Op::IoasUnmap => {
            let (mut s, size) = read::<a::IoasUnmap>(ptr)?;
            s.length = with_fd(|fd, units, mem| fd.unmap(units, mem, s.ioas_id, s.iova, s.length))?;
            write(ptr, &s, size)?;
        }
        Op::IoasCopy => {
            let (mut s, size) = read::<a::IoasCopy>(ptr)?;
            let c = CopyArgs {
                src: s.src_ioas_id,
                src_iova: s.src_iova,
                len: s.length,
                dst_iova: iova_choice(s.flags, s.dst_iova),
                perms: perms(s.flags),
            };
            s.dst_iova = with_fd(|fd, units, mem| fd.copy(units, mem, s.dst_ioas_id, c))?;
            write(ptr, &s, size)?;
        }
        Op::IoasOption => {
            let (mut s, size) = read::<a::IoasOption>(ptr)?;
            let honoured = with_fd(|fd, _, _| fd.set_option(s.object_id, s.option_id, s.value))?;
            s.out_honoured = u32::from(honoured);
            write(ptr, &s, size)?;
        }
        Op::DeviceBind => {
            let (mut s, size) = read::<a::DeviceBind>(ptr)?;
            let bdf = crate::task::decode_bdf(s.bdf)?;
            let dev = crate::task::owned_by_current(bdf)?;
            let all: Vec<pci::Function> = crate::pci::devices().iter().map(|d| d.function.clone()).collect();
            let rid = pci::dma_requester_id(&dev.function, &all);
            let t = crate::pci::topology().and_then(|t| t.translate_pci(bdf.segment, rid)).ok_or(Errno::ENODEV)?;
            let unit = crate::iommu::registered(t.unit).ok_or(Errno::ENODEV)?;
            s.out_dev_id = with_fd(|fd, units, _| fd.device_bind(units, unit, iommu::DeviceId(t.id)))?;
            write(ptr, &s, size)?;
        }
        Op::DeviceAttach => {
            let (mut s, size) = read::<a::DeviceAttach>(ptr)?;
            s.out_hwpt_id = with_fd(|fd, units, _| fd.device_attach(units, s.dev_id, s.pt_id))?;
            write(ptr, &s, size)?;
        }
        Op::DeviceDetach => {
            let (s, _) = read::<a::DeviceDetach>(ptr)?;
            with_fd(|fd, units, _| fd.device_detach(units, s.dev_id))?;
        }
        Op::HwptAlloc => {
            let (mut s, size) = read::<a::HwptAlloc>(ptr)?;
            if s.data_len > a::MAX_STRUCT {
                return Err(Errno::E2BIG);
            }
            let data = copy_from_user(s.data_uptr, s.data_len as usize)?;
            let args = iommufd::abi_glue::hwpt_alloc(&s, &data)?;
            s.out_hwpt_id = with_fd(|fd, units, mem| {
                let id = fd.hwpt_alloc(units, mem, args)?;
                if let Some(st) = fd.shadow_stats(id) {
                    log::info!(
                        "ioas: nested HWPT {id}: stage 1 shadowed, {} page(s) mapped, {} table entries read",
                        st.pages,
                        st.last_reads
                    );
                }
                Ok(id)
            })?;
            write(ptr, &s, size)?;
        }
        Op::HwptInvalidate => {
            let (mut s, size) = read::<a::HwptInvalidate>(ptr)?;
            let bytes = iommufd::abi_glue::invalidation_bytes(&s).and_then(|n| copy_from_user(s.data_uptr, n));
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    // Nothing was handled.
                    s.entry_num = 0;
                    write(ptr, &s, size)?;
                    return Err(e);
                }
            };
            let (handled, result) = with_fd(|fd, units, mem| {
                Ok(iommufd::abi_glue::invalidate(fd, units, mem, s.hwpt_id, s.data_type, &bytes, s.entry_len as usize))
            })?;
            s.entry_num = handled;
            write(ptr, &s, size)?;
            result?;
        }
        Op::FaultQueueAlloc => {
            let (mut s, size) = read::<a::FaultQueueAlloc>(ptr)?;
            let capacity = iommufd::abi_glue::fault_queue_capacity(&s)?;
            s.out_fault_id = with_fd(|fd, _, _| fd.fault_queue_alloc(capacity))?;
            write(ptr, &s, size)?;
        }
        Op::FaultRead => {
            let (mut s, size) = read::<a::FaultRead>(ptr)?;
            if s.timeout_ms > 10_000 || s.num > 1024 {
                return Err(Errno::EINVAL);
            }
            // The buffer is checked before records leave the queue, so none is lost to a bad pointer.
            copy_to_user(s.records, &alloc::vec![0u8; s.num as usize * core::mem::size_of::<a::FaultRecord>()])?;
            let deadline = platform().uptime_ns().saturating_add(u64::from(s.timeout_ms) * 1_000_000);
            let (records, overflows) = loop {
                let (records, overflows) = with_fd(|fd, _, _| fd.fault_read(s.fault_id, s.num as usize))?;
                if !records.is_empty() || s.num == 0 || platform().uptime_ns() >= deadline {
                    break (records, overflows);
                }
                // Faults are polled: look again after a short sleep.
                crate::task::sleep_current(5_000_000);
                collect_faults();
            };
            let out: Vec<a::FaultRecord> = records.iter().map(iommufd::abi_glue::fault_record).collect();
            copy_to_user(s.records, out.as_bytes())?;
            let room = s.num;
            s.num = out.len() as u32;
            s.out_overflows = overflows;
            write(ptr, &s, size)?;
            // Waited for a record that never came (asking for none is no timeout).
            if out.is_empty() && s.timeout_ms > 0 && room > 0 {
                return Err(Errno::ETIMEDOUT);
            }
        }
        Op::GetHwInfo => {
            let (mut s, size) = read::<a::HwInfo>(ptr)?;
            let (unit, info, flushes) = with_fd(|fd, units, _| {
                let (unit, _) = fd.device_unit(s.dev_id)?;
                Ok((unit, units[unit].info(), units[unit].flushes()))
            })?;
            s.out_flushes = flushes;
            let name = crate::iommu::unit_name(unit);
            let n = name.len().min(15);
            s.out_unit_name = [0; 16];
            s.out_unit_name[..n].copy_from_slice(&name.as_bytes()[..n]);
            s.out_kind = match info.kind {
                iommu::UnitKind::Vtd => a::hw_kind::VTD,
                iommu::UnitKind::AmdVi => a::hw_kind::AMDVI,
                iommu::UnitKind::Smmuv3 => a::hw_kind::SMMUV3,
                iommu::UnitKind::VirtioIommu => a::hw_kind::VIRTIO_IOMMU,
                iommu::UnitKind::Mock => a::hw_kind::MOCK,
            };
            let regs: Vec<a::HwReg> = info
                .raw
                .iter()
                .map(|&(name, value)| {
                    let mut n = [0u8; 8];
                    let b = name.as_bytes();
                    n[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
                    a::HwReg { name: n, value }
                })
                .collect();
            // The typed part first: it is complete even when the raw registers do not fit.
            let (data_type, typed) = iommufd::abi_glue::typed_hw_info(&info);
            s.out_data_type = data_type;
            s.out_hwpt_alloc_types = iommufd::abi_glue::hwpt_alloc_types(info.kind);
            s.out_invalidate_types = iommufd::abi_glue::invalidate_types(info.kind);
            if s.data_len > 0 {
                let n = typed.len().min(s.data_len as usize);
                copy_to_user(s.data_uptr, &typed[..n])?;
                s.data_len = n as u32;
            }
            let room = s.num_regs as usize;
            s.num_regs = regs.len() as u32;
            if regs.len() > room {
                write(ptr, &s, size)?;
                return Err(Errno::E2BIG);
            }
            copy_to_user(s.data, regs.as_bytes())?;
            write(ptr, &s, size)?;
        }
    }
    Ok(0)
}
