//! Hardware page-table objects (HWPTs, ../shared/DESIGN.md §2): a domain
//! of one IOMMU unit. Automatic ones (made by an attach to an IOAS, gone with
//! their last device) and, through the hardware-specific door, user ones:
//! kernel-managed (default or with driver data, possibly nest parents)
//! mirroring an IOAS, and nested children (a user's stage 1 shadowed by the
//! kernel, see [`crate::shadow`], or nested by the hardware itself), with
//! their stage-1 invalidation.

use crate::error::{errno, nomem};
use crate::object::{Hwpt, HwptKind, Iommufd, Object, Units};
use crate::pages::{map_pages, Memory, PAGE};
use crate::shadow::{Shadow, ShadowLimits, ShadowStats, SyncCtx};
use abi::Errno;
use alloc::vec::Vec;
use fallible::VecExt;
use iommu::{DomainId, DomainKind};

/// Flags of [`HwptAlloc::flags`].
pub mod hwpt_flags {
    /// The HWPT may be the parent of nested children (it must be kernel-managed).
    pub const NEST_PARENT: u32 = 1;
}

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
        // The device's unit (`Iommufd::device_unit`, read here so that this
        // file does not name `device.rs`, which builds on it).
        let unit = self.device(dev)?.unit;
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
                let hwpt = Hwpt {
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
                        let mut cx = SyncCtx {
                            areas: &i.areas,
                            huge_pages: i.hints.huge_pages,
                            mem: &*mem,
                            unit: &mut *units[unit],
                            domain,
                            limits: self.limits,
                        };
                        shadow.sync(&mut cx, 0, u64::MAX)
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = synced {
                    // No device ever saw the domain: freeing it drops its tables.
                    let _ = units[unit].domain_free(domain);
                    self.abort(obj);
                    return Err(e);
                }
                let hwpt = Hwpt {
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

    /// An automatic HWPT on `unit` mirroring every area of `ioas`.
    pub(crate) fn hwpt_create(&mut self, units: Units<'_>, unit: usize, ioas: u32) -> Result<u32, Errno> {
        let (obj, domain) = self.reserve_with_domain(|| units[unit].domain_alloc(DomainKind::Paging))?;
        self.publish_mirror(units, obj, unit, domain, ioas, HwptKind::Auto, None)
    }

    /// Fills `domain` with every area of `ioas` and publishes it as HWPT
    /// `obj` on the IOAS's list; on failure frees the domain and the id.
    #[allow(clippy::too_many_arguments)]
    fn publish_mirror(
        &mut self,
        units: Units<'_>,
        obj: u32,
        unit: usize,
        domain: DomainId,
        ioas: u32,
        kind: HwptKind,
        fault_queue: Option<u32>,
    ) -> Result<u32, Errno> {
        let u = &mut *units[unit];
        // Room on the IOAS's list first: nothing can fail once it is filled.
        let room = self.ioas_mut(ioas).and_then(|i| i.hwpts.try_reserve(1).map_err(|_| Errno::ENOMEM));
        let filled = room.and_then(|()| self.ioas(ioas)).and_then(|i| {
            let huge = i.hints.huge_pages;
            i.areas.iter().try_for_each(|(&at, area)| {
                map_pages(u, domain, at, &area.pages, area.perms, huge).map_err(|(e, _)| errno(e))
            })
        });
        if let Err(e) = filled {
            let _ = u.domain_free(domain);
            self.abort(obj);
            return Err(e);
        }
        if let Err(e) = self.ioas_mut(ioas).and_then(|i| i.hwpts.try_push(obj).map_err(nomem)) {
            let _ = u.domain_free(domain);
            self.abort(obj);
            return Err(e);
        }
        self.topology_changed();
        Ok(self.publish(obj, Object::Hwpt(Hwpt { unit, domain, ioas, devices: 0, kind, fault_queue })))
    }

    /// Whether nested children hang off HWPT `hwpt`.
    pub(crate) fn has_children(&self, hwpt: u32) -> bool {
        self.objects.values().any(
            |o| matches!(o, Object::Hwpt(h) if matches!(h.kind, HwptKind::Nested { parent, .. } if parent == hwpt)),
        )
    }

    pub(crate) fn drop_hwpt_ref(&mut self, units: Units<'_>, hwpt: u32) {
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&hwpt) {
            h.devices = h.devices.saturating_sub(1);
        }
        self.release_hwpt_if_unused(units, hwpt);
    }

    /// Frees an automatic HWPT no device uses any more (user HWPTs wait for `destroy`).
    pub(crate) fn release_hwpt_if_unused(&mut self, units: Units<'_>, hwpt: u32) {
        if self.hwpt(hwpt).is_some_and(|h| h.devices == 0 && matches!(h.kind, HwptKind::Auto)) {
            self.free_hwpt(units, hwpt);
        }
    }

    /// Frees a HWPT with no device: its domain, its id, its place on its IOAS.
    pub(crate) fn free_hwpt(&mut self, units: Units<'_>, hwpt: u32) {
        let Some(Object::Hwpt(h)) = self.objects.remove(&hwpt) else { return };
        // Freeing the domain frees its tables and invalidates its TLB entries;
        // the pages stay pinned by the IOAS.
        let _ = units[h.unit].domain_free(h.domain);
        if h.mirrors() {
            if let Ok(i) = self.ioas_mut(h.ioas) {
                i.hwpts.retain(|&x| x != hwpt);
            }
        }
        self.topology_changed();
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
            Ok(i) => {
                let mut cx = SyncCtx {
                    areas: &i.areas,
                    huge_pages: i.hints.huge_pages,
                    mem,
                    unit: &mut *units[unit],
                    domain,
                    limits,
                };
                sh.sync(&mut cx, start, end)
            }
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

    /// The domain behind a HWPT (for tests and the hardware-specific door).
    pub fn hwpt_domain(&self, hwpt: u32) -> Option<(usize, DomainId)> {
        self.hwpt(hwpt).map(|h| (h.unit, h.domain))
    }
}
