//! The hardware-specific door: user-created HWPTs (kernel-managed with driver
//! data, nest parents, nested children shadowing a user's stage 1), stage-1
//! invalidation, fault queues.

use crate::shadow::{Shadow, ShadowStats, SyncCtx};
use crate::{errno, HwptKind, Iommufd, Memory, Object, ShadowLimits, Units, PAGE};
use abi::Errno;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use fallible::VecExt;
use iommu::{DomainKind, Gather};

/// Flags of [`HwptAlloc::flags`].
pub mod hwpt_flags {
    /// The HWPT may be the parent of nested children (it must be kernel-managed).
    pub const NEST_PARENT: u32 = 1;
}

/// Most records a fault queue may hold.
pub const MAX_FAULT_QUEUE: usize = 1 << 16;

/// What [`Iommufd::hwpt_alloc`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwptAlloc {
    /// A bound device: the HWPT is created on its unit.
    pub dev: u32,
    /// An IOAS (kernel-managed HWPTs) or a nest-parent HWPT (nested children).
    pub parent: u32,
    /// [`hwpt_flags`]; any other bit is `EINVAL`.
    pub flags: u32,
    /// What kind of page table.
    pub data: HwptData,
    /// A fault queue the faults of the HWPT's devices go to.
    pub fault_queue: Option<u32>,
}

/// The page table a user HWPT has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HwptData {
    /// Kernel-managed, the unit's default paging domain (parent must be an IOAS).
    Default,
    /// Kernel-managed with driver attributes: passed unchanged to the unit's
    /// `domain_alloc_user(data_type, bytes, None)`; the unit's refusal
    /// (`EOPNOTSUPP`, `EINVAL`, ...) is the call's error. Parent must be an IOAS.
    Driver {
        /// The driver's type tag for `bytes`.
        data_type: u32,
        /// The driver's structure.
        bytes: Vec<u8>,
    },
    /// A nested child whose stage 1 the user owns, in x86-64 paging format
    /// (VT-d first stage, AMD v2): `root` is the parent IOVA of the top-level
    /// table, `levels` 4 or 5. Parent must be a HWPT created with
    /// [`hwpt_flags::NEST_PARENT`]. The kernel shadows it into a paging domain
    /// of its own (see [`crate::shadow`]).
    Stage1X86 {
        /// Parent IOVA of the top-level table (4 KiB aligned).
        root: u64,
        /// 4 or 5.
        levels: usize,
    },
    /// A nested child the unit builds itself (hardware nesting): `bytes`
    /// (the unit's own structure, e.g. SMMUv3 STE words) go unchanged to
    /// `domain_alloc_user(data_type, bytes, Some(parent's domain))`, and its
    /// invalidations to the unit's `invalidate_user`. Parent must be a
    /// [`hwpt_flags::NEST_PARENT`] HWPT on the same unit.
    DriverNested {
        /// The driver's type tag for `bytes`.
        data_type: u32,
        /// The driver's structure.
        bytes: Vec<u8>,
    },
}

/// One stage-1 invalidation request of [`Iommufd::hwpt_invalidate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage1Invalidation {
    /// First stage-1 IOVA (4 KiB aligned).
    pub addr: u64,
    /// 4 KiB pages; `u64::MAX` with `addr` 0: everything.
    pub npages: u64,
    /// Bit 0: only leaves changed (a hint, ignored); other bits are `EINVAL`.
    pub flags: u32,
}

impl Stage1Invalidation {
    /// Bit 0 of [`Stage1Invalidation::flags`].
    pub const LEAF: u32 = 1;

    /// The stage-1 IOVAs `[start, end)` it covers.
    fn range(&self) -> Result<(u64, u64), Errno> {
        if self.flags & !Self::LEAF != 0 {
            return Err(Errno::EINVAL);
        }
        if self.addr == 0 && self.npages == u64::MAX {
            return Ok((0, u64::MAX));
        }
        if !self.addr.is_multiple_of(PAGE) || self.npages == 0 {
            return Err(Errno::EINVAL);
        }
        let end = self.npages.checked_mul(PAGE).and_then(|len| self.addr.checked_add(len)).ok_or(Errno::EINVAL)?;
        Ok((self.addr, end))
    }
}

/// A fault as a fault queue hands it to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// The device object id (not the unit's ID).
    pub dev_id: u32,
    /// The HWPT the device was attached to.
    pub hwpt_id: u32,
    /// The faulting IOVA as the unit reported it.
    pub address: u64,
    /// Read, write, or not said.
    pub access: iommu::Access,
    /// The unit's reason code.
    pub reason: u32,
}

/// A fault queue object.
#[derive(Debug)]
pub(crate) struct FaultQueue {
    capacity: usize,
    /// Room for `capacity` records, reserved at creation: a delivery never allocates.
    records: VecDeque<FaultRecord>,
    /// Records dropped because the queue was full, since the last read.
    overflows: u64,
}

impl Iommufd {
    /// Sets the bounds on shadowing work (for every later sync).
    pub fn set_shadow_limits(&mut self, limits: ShadowLimits) {
        self.limits = limits;
    }

    /// Creates a HWPT on the unit of device `a.dev` (the hardware-specific
    /// door); returns its id. Errors: unknown flags, a parent of the wrong kind
    /// (an IOAS for a nested child, a HWPT without NEST_PARENT, a nested
    /// child), NEST_PARENT on a nested child, a nest parent on another unit,
    /// bad `levels` or an unaligned root, a fault queue id naming another kind
    /// are `EINVAL`; missing objects `ENOENT`; a unit refusing the domain its
    /// own error; a first shadow sync over the limits `ENOSPC`.
    pub fn hwpt_alloc(&mut self, units: Units<'_>, mem: &mut dyn Memory, a: HwptAlloc) -> Result<u32, Errno> {
        let HwptAlloc { dev, parent, flags, data, fault_queue } = a;
        if flags & !hwpt_flags::NEST_PARENT != 0 {
            return Err(Errno::EINVAL);
        }
        let (unit, _) = self.device_unit(dev)?;
        if let Some(q) = fault_queue {
            match self.objects.get(&q) {
                Some(Object::FaultQueue(_)) => {}
                Some(_) => return Err(Errno::EINVAL),
                None => return Err(Errno::ENOENT),
            }
        }
        let nest_parent = flags & hwpt_flags::NEST_PARENT != 0;
        match data {
            HwptData::Default | HwptData::Driver { .. } => {
                // The unit's aperture must hold what is mapped and what was promised.
                let aperture = units[unit].aperture();
                let i = self.ioas(parent)?;
                let taken = i.areas.iter().map(|(&s, a)| (s, s + (a.len - 1)));
                if taken.chain(i.allowed.iter().copied()).any(|r| !crate::ranges::covers(&[aperture], r)) {
                    return Err(Errno::EADDRINUSE);
                }
                let (obj, domain) = self.reserve_with_domain(|| match &data {
                    HwptData::Driver { data_type, bytes } => units[unit].domain_alloc_user(*data_type, bytes, None),
                    _ if nest_parent => units[unit].domain_alloc_nest_parent(),
                    _ => units[unit].domain_alloc(DomainKind::Paging),
                })?;
                self.publish_mirror(units, obj, unit, domain, parent, HwptKind::User { nest_parent }, fault_queue)
            }
            HwptData::DriverNested { data_type, bytes } => {
                let p = match self.objects.get(&parent) {
                    Some(Object::Hwpt(h)) => h,
                    Some(_) => return Err(Errno::EINVAL),
                    None => return Err(Errno::ENOENT),
                };
                if nest_parent || !matches!(p.kind, HwptKind::User { nest_parent: true }) || p.unit != unit {
                    return Err(Errno::EINVAL);
                }
                let (ioas, parent_domain) = (p.ioas, p.domain);
                let (obj, domain) =
                    self.reserve_with_domain(|| units[unit].domain_alloc_user(data_type, &bytes, Some(parent_domain)))?;
                let hwpt = crate::Hwpt {
                    unit,
                    domain,
                    ioas,
                    devices: 0,
                    kind: HwptKind::Nested { parent, shadow: None },
                    fault_queue,
                };
                Ok(self.publish(obj, Object::Hwpt(hwpt)))
            }
            HwptData::Stage1X86 { root, levels } => {
                let p = match self.objects.get(&parent) {
                    Some(Object::Hwpt(h)) => h,
                    Some(_) => return Err(Errno::EINVAL),
                    None => return Err(Errno::ENOENT),
                };
                if nest_parent
                    || !matches!(p.kind, HwptKind::User { nest_parent: true })
                    || p.unit != unit
                    || !(4..=5).contains(&levels)
                    || !root.is_multiple_of(PAGE)
                {
                    return Err(Errno::EINVAL);
                }
                let ioas = p.ioas;
                let (obj, domain) = self.reserve_with_domain(|| units[unit].domain_alloc(DomainKind::Paging))?;
                let mut shadow = Shadow::new(root, levels);
                let synced = match self.ioas(ioas) {
                    Ok(i) => {
                        let mut cx =
                            SyncCtx { ioas: i, mem: &*mem, unit: &mut *units[unit], domain, limits: self.limits };
                        shadow.sync(&mut cx, 0, u64::MAX)
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = synced {
                    // No device ever saw the domain: freeing it drops its tables.
                    let _ = units[unit].domain_free(domain);
                    self.objects.remove(&obj);
                    return Err(e);
                }
                let hwpt = crate::Hwpt {
                    unit,
                    domain,
                    ioas,
                    devices: 0,
                    kind: HwptKind::Nested { parent, shadow: Some(shadow) },
                    fault_queue,
                };
                Ok(self.publish(obj, Object::Hwpt(hwpt)))
            }
        }
    }

    /// Whether nested children hang off HWPT `hwpt`.
    pub(crate) fn has_children(&self, hwpt: u32) -> bool {
        self.objects.values().any(
            |o| matches!(o, Object::Hwpt(h) if matches!(h.kind, HwptKind::Nested { parent, .. } if parent == hwpt)),
        )
    }

    /// Re-reads the user's stage-1 table for each entry in order (unmap the
    /// child's old pages in the range, map the new ones, at most one flush per
    /// entry); returns how many entries were handled and the error of the
    /// first one that failed (the ones after it are not looked at). Only
    /// nested children take it (others: `EINVAL`, 0 handled).
    pub fn hwpt_invalidate(
        &mut self,
        units: Units<'_>,
        mem: &mut dyn Memory,
        hwpt: u32,
        entries: &[Stage1Invalidation],
    ) -> (u32, Result<(), Errno>) {
        match self.objects.get(&hwpt) {
            Some(Object::Hwpt(h)) if matches!(h.kind, HwptKind::Nested { shadow: Some(_), .. }) => {}
            Some(_) => return (0, Err(Errno::EINVAL)),
            None => return (0, Err(Errno::ENOENT)),
        }
        // One budget of table reads for the whole call, not one per entry:
        // 4096 entries must not cost 4096 times the bound of one sync.
        let limits = self.limits;
        let mut left = limits.max_reads;
        let mut handled = 0u32;
        for e in entries {
            if left == 0 {
                self.limits = limits;
                return (handled, Err(Errno::ENOSPC));
            }
            self.limits.max_reads = left;
            let r = e.range().and_then(|(start, end)| self.shadow_sync(units, &*mem, hwpt, start, end));
            left = left.saturating_sub(self.shadow_last_reads(hwpt));
            if let Err(err) = r {
                self.limits = limits;
                return (handled, Err(err));
            }
            handled = handled.saturating_add(1);
        }
        self.limits = limits;
        (handled, Ok(()))
    }

    /// Hands `entries` (`entry_len` bytes each, of `data_type`) to the unit of
    /// a hardware-nested child, which checks each before it reaches the
    /// hardware; returns how many were handled and why the batch stopped.
    /// Other HWPTs: `EINVAL`, 0 handled.
    pub fn hwpt_invalidate_driver(
        &mut self,
        units: Units<'_>,
        hwpt: u32,
        data_type: u32,
        entries: &[u8],
        entry_len: usize,
    ) -> (u32, Result<(), Errno>) {
        let (unit, domain) = match self.objects.get(&hwpt) {
            Some(Object::Hwpt(h)) if matches!(h.kind, HwptKind::Nested { shadow: None, .. }) => (h.unit, h.domain),
            Some(_) => return (0, Err(Errno::EINVAL)),
            None => return (0, Err(Errno::ENOENT)),
        };
        let (handled, r) = units[unit].invalidate_user(domain, data_type, entries, entry_len);
        (handled, r.map_err(errno))
    }

    /// Syncs `[start, end)` of nested child `hwpt`.
    fn shadow_sync(
        &mut self,
        units: Units<'_>,
        mem: &dyn Memory,
        hwpt: u32,
        start: u64,
        end: u64,
    ) -> Result<(), Errno> {
        let limits = self.limits;
        let Some(Object::Hwpt(h)) = self.objects.get_mut(&hwpt) else { return Err(Errno::ENOENT) };
        let (unit, domain, ioas) = (h.unit, h.domain, h.ioas);
        let HwptKind::Nested { shadow: Some(shadow), .. } = &mut h.kind else { return Err(Errno::EINVAL) };
        // Out of the table while the IOAS is borrowed; put back below.
        let mut sh = core::mem::take(shadow);
        let r = match self.ioas(ioas) {
            Ok(i) => sh.sync(&mut SyncCtx { ioas: i, mem, unit: &mut *units[unit], domain, limits }, start, end),
            Err(e) => Err(e),
        };
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&hwpt) {
            if let HwptKind::Nested { shadow: Some(shadow), .. } = &mut h.kind {
                *shadow = sh;
            }
        }
        r
    }

    /// Table reads the last sync of shadowed HWPT `hwpt` made (0 for others).
    fn shadow_last_reads(&self, hwpt: u32) -> u64 {
        match self.objects.get(&hwpt) {
            Some(Object::Hwpt(h)) => match &h.kind {
                HwptKind::Nested { shadow: Some(sh), .. } => sh.stats().last_reads.max(1),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Drops from every nested child shadowing `ioas` the pages that point
    /// into parent IOVAs `[span.0, span.1]` (the areas an unmap hits), one
    /// flush per child; allocates nothing.
    pub(crate) fn purge_children(&mut self, units: Units<'_>, ioas: u32, span: (u64, u64)) -> Result<(), Errno> {
        let mut result = Ok(());
        for o in self.objects.values_mut() {
            let Object::Hwpt(h) = o else { continue };
            if h.ioas != ioas {
                continue;
            }
            let (unit, domain) = (h.unit, h.domain);
            let HwptKind::Nested { shadow: Some(shadow), .. } = &mut h.kind else { continue };
            let u = &mut *units[unit];
            let mut gather = Gather::default();
            if let Err(e) = shadow.purge(u, domain, span.0, span.1, &mut gather) {
                result = result.and(Err(e));
            }
            if !gather.is_empty() {
                if let Err(e) = u.flush(domain, gather) {
                    result = result.and(Err(errno(e)));
                }
            }
        }
        result
    }

    /// What shadowing nested child `hwpt` costs (`None`: not a nested child).
    pub fn shadow_stats(&self, hwpt: u32) -> Option<ShadowStats> {
        match &self.hwpt(hwpt)?.kind {
            HwptKind::Nested { shadow: Some(shadow), .. } => Some(shadow.stats()),
            _ => None,
        }
    }

    /// The parent HWPT of nested child `hwpt`.
    pub fn hwpt_parent(&self, hwpt: u32) -> Option<u32> {
        match self.hwpt(hwpt)?.kind {
            HwptKind::Nested { parent, .. } => Some(parent),
            _ => None,
        }
    }

    /// Creates a fault queue holding up to `capacity` records (1 to
    /// [`MAX_FAULT_QUEUE`], else `EINVAL`); their room is allocated now
    /// (`ENOMEM`), so delivering a fault never allocates.
    pub fn fault_queue_alloc(&mut self, capacity: usize) -> Result<u32, Errno> {
        if capacity == 0 || capacity > MAX_FAULT_QUEUE {
            return Err(Errno::EINVAL);
        }
        let held: usize = self
            .objects
            .values()
            .filter_map(|o| if let Object::FaultQueue(q) = o { Some(q.capacity) } else { None })
            .sum();
        if held + capacity > self.quota.fault_records {
            return Err(Errno::EDQUOT);
        }
        let mut records = VecDeque::new();
        records.try_reserve_exact(capacity).map_err(|_| Errno::ENOMEM)?;
        let id = self.reserve_id()?;
        let q = FaultQueue { capacity, records, overflows: 0 };
        Ok(self.publish(id, Object::FaultQueue(q)))
    }

    /// Takes a fault `unit` reported if it is this table's: the device is bound
    /// here and its HWPT routes faults to a queue. The record goes to the queue
    /// (or, the queue full, is dropped and counted). False: not ours.
    pub fn deliver_fault(&mut self, unit: usize, f: &iommu::FaultEvent) -> bool {
        let found = self.objects.iter().find_map(|(&id, o)| match o {
            Object::Device(d) if d.unit == unit && d.id == f.device => Some((id, d.hwpt)),
            _ => None,
        });
        let Some((dev_id, Some(hwpt_id))) = found else { return false };
        let Some(q) = self.hwpt(hwpt_id).and_then(|h| h.fault_queue) else { return false };
        let Some(Object::FaultQueue(queue)) = self.objects.get_mut(&q) else { return false };
        let r = FaultRecord { dev_id, hwpt_id, address: f.address, access: f.access, reason: f.reason };
        // The room was reserved at creation; should it be missing, the
        // record is dropped and counted as a full queue's would be.
        if queue.records.len() >= queue.capacity || queue.records.try_push(r).is_err() {
            queue.overflows += 1;
        }
        true
    }

    /// Takes up to `max` records from fault queue `q`, oldest first, and the
    /// number of records dropped (queue full) since the last read. `ENOMEM`
    /// takes none.
    pub fn fault_read(&mut self, q: u32, max: usize) -> Result<(Vec<FaultRecord>, u64), Errno> {
        let queue = match self.objects.get_mut(&q) {
            Some(Object::FaultQueue(queue)) => queue,
            Some(_) => return Err(Errno::EINVAL),
            None => return Err(Errno::ENOENT),
        };
        let n = max.min(queue.records.len());
        // The room first: a record leaves the queue only into it.
        let mut records = Vec::new();
        records.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
        records.extend(queue.records.drain(..n));
        Ok((records, core::mem::take(&mut queue.overflows)))
    }
}
