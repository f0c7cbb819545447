//! The IOAS object (../shared/DESIGN.md §2): an IOVA space of areas of
//! pinned user pages, mirrored into every HWPT on it.
//!
//! Here: allocation, the usable IOVA ranges (above page 0, inside each
//! attached unit's aperture, outside each attached device's reserved regions)
//! and the ranges promised by `allow_iovas`, the kernel's choice of an IOVA
//! ([`lowest_gap`]), map / unmap / copy (each undone in full on failure, pages
//! unpinned only once every unit forgot them), hints and inspection.

use crate::error::{errno, nomem};
use crate::object::{Hints, HwptKind, Ioas, Iommufd, Object, Placement, Units};
use crate::pages::{map_pages, merge, Area, InsertFailed, Memory, Runs, PAGE};
use crate::ranges::{self, Range};
use abi::Errno;
use alloc::boxed::Box;
use alloc::vec::Vec;
use fallible::{TryMap, VecExt};
use iommu::{DeviceId, Gather, Iommu, Perms};

/// Leaves of a mapping in one unit: (leaf size, count) pairs, largest first.
pub type Leaves = Vec<(u64, u64)>;

/// Option ids for [`Iommufd::set_option`].
pub mod option {
    /// Value 1: allow huge leaves (default); 0: 4 KiB leaves only.
    pub const HUGE_PAGES: u32 = 1;
    /// Value 1: the kernel logs the leaves each new mapping gets; 0: not (default).
    pub const REPORT_LEAVES: u32 = 2;
}

/// Where an IOVA for a new mapping comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IovaChoice {
    /// Exactly here.
    Fixed(u64),
    /// The kernel picks, aligned to the largest page size that fits.
    Auto,
}

/// What [`Iommufd::map`] maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapArgs {
    /// Task virtual address (page aligned).
    pub va: u64,
    /// Bytes (page multiple, not zero).
    pub len: u64,
    /// Where.
    pub iova: IovaChoice,
    /// Device access.
    pub perms: Perms,
}

/// What [`Iommufd::copy`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyArgs {
    /// Source IOAS.
    pub src: u32,
    /// First IOVA in the source.
    pub src_iova: u64,
    /// Bytes.
    pub len: u64,
    /// Where in the destination.
    pub dst_iova: IovaChoice,
    /// Device access in the destination (no more than the source allows).
    pub perms: Perms,
}

impl Iommufd {
    /// Creates an empty IOAS.
    pub fn ioas_alloc(&mut self) -> Result<u32, Errno> {
        let ioas = Ioas::new()?;
        let id = self.reserve_id()?;
        Ok(self.publish(id, Object::Ioas(ioas)))
    }

    /// Devices attached to `ioas` (through any of its HWPTs), with their
    /// units (a walk of the table: nothing is allocated).
    pub(crate) fn attached_devices(&self, ioas: u32) -> impl Iterator<Item = (usize, DeviceId)> + Clone + '_ {
        self.objects.iter().filter_map(move |(_, o)| match o {
            Object::Device(d) => d.hwpt.and_then(|h| self.hwpt(h)).filter(|h| h.ioas == ioas).map(|_| (d.unit, d.id)),
            _ => None,
        })
    }

    /// Whether `r` meets a reserved region of one of `devices`.
    fn hits_reserved(units: &[Box<dyn Iommu>], mut devices: impl Iterator<Item = (usize, DeviceId)>, r: Range) -> bool {
        devices.any(|(unit, dev)| {
            let mut hit = false;
            units[unit].for_each_reserved(dev, &mut |x| {
                hit |= ranges::overlaps(&[(x.start & !(PAGE - 1), x.end | (PAGE - 1))], r);
            });
            hit
        })
    }

    /// Usable IOVA ranges of `ioas` with `devices` attached, narrowed to the
    /// aperture of every unit it has a HWPT on (a user HWPT may have no device).
    fn usable(
        &self,
        units: &[Box<dyn Iommu>],
        ioas: u32,
        devices: impl Iterator<Item = (usize, DeviceId)>,
    ) -> Result<Vec<Range>, Errno> {
        let mut set = Vec::new();
        self.usable_in(units, ioas, devices, &mut set)?;
        Ok(set)
    }

    /// [`Iommufd::usable`] into `set` (cleared first; allocates only when
    /// its room runs out): above page 0, inside every unit's aperture,
    /// outside every device's reserved regions, inside the aperture of every
    /// unit the IOAS has a HWPT on.
    fn usable_in(
        &self,
        units: &[Box<dyn Iommu>],
        ioas: u32,
        devices: impl Iterator<Item = (usize, DeviceId)>,
        set: &mut Vec<Range>,
    ) -> Result<(), Errno> {
        set.clear();
        set.try_push((PAGE, u64::MAX)).map_err(nomem)?;
        for (unit, dev) in devices {
            let u = &units[unit];
            ranges::intersect_in(set, u.aperture());
            let mut full = false;
            u.for_each_reserved(dev, &mut |r| {
                full |= ranges::subtract_in(set, (r.start & !(PAGE - 1), r.end | (PAGE - 1))).is_err();
            });
            if full {
                return Err(Errno::ENOMEM);
            }
        }
        if let Ok(i) = self.ioas(ioas) {
            for h in i.hwpts.iter().filter_map(|&h| self.hwpt(h)) {
                ranges::intersect_in(set, units[h.unit].aperture());
            }
        }
        Ok(())
    }

    /// The IOVA ranges a map into `ioas` may use now.
    pub fn iova_ranges(&self, units: Units<'_>, ioas: u32) -> Result<Vec<Range>, Errno> {
        self.ioas(ioas)?;
        self.usable(units, ioas, self.attached_devices(ioas))
    }

    /// Promises that `ranges` stay usable: they must be usable now, and a
    /// later attach that would take part of them away fails. An empty list
    /// withdraws the promise.
    pub fn allow_iovas(&mut self, units: Units<'_>, ioas: u32, allowed: &[Range]) -> Result<(), Errno> {
        let usable = self.iova_ranges(units, ioas)?;
        for &(s, e) in allowed {
            if s > e || !s.is_multiple_of(PAGE) || e % PAGE != PAGE - 1 {
                return Err(Errno::EINVAL);
            }
            if !ranges::covers(&usable, (s, e)) {
                return Err(Errno::EADDRINUSE);
            }
        }
        self.ioas_mut(ioas)?.allowed = fallible::try_to_vec(allowed).map_err(nomem)?;
        Ok(())
    }

    /// Whether `ioas` can take `more` devices: their reserved regions must
    /// not collide with what is mapped, nor narrow the ranges the IOAS was
    /// promised, and their units' apertures must hold both (`EADDRINUSE`).
    pub(crate) fn check_fits(
        &self,
        units: &[Box<dyn Iommu>],
        ioas: u32,
        more: &[(usize, DeviceId)],
    ) -> Result<(), Errno> {
        let devs = self.attached_devices(ioas).chain(more.iter().copied());
        let i = self.ioas(ioas)?;
        let usable = self.usable(units, ioas, devs.clone())?;
        let taken = i.areas.iter().map(|(&s, a)| (s, s + (a.len - 1)));
        if taken.chain(i.allowed.iter().copied()).any(|r| !ranges::covers(&usable, r)) {
            return Err(Errno::EADDRINUSE);
        }
        // A unit with larger pages than the IOAS had so far: every area must
        // already be mappable in them.
        let align = Self::alignment_with(units, devs.map(|(u, _)| u).chain(self.hwpt_units(ioas)));
        for (&at, a) in i.areas.iter() {
            Self::check_aligned(at, &a.pages, align)?;
        }
        Ok(())
    }

    /// Sets a hint; returns whether it is honoured (unknown hints: false, never an error).
    pub fn set_option(&mut self, ioas: u32, option: u32, value: u64) -> Result<bool, Errno> {
        let i = self.ioas_mut(ioas)?;
        match option {
            option::HUGE_PAGES if value <= 1 => {
                i.hints.huge_pages = value == 1;
                Ok(true)
            }
            option::REPORT_LEAVES if value <= 1 => {
                i.hints.report_leaves = value == 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The hints of `ioas`.
    pub fn hints(&self, ioas: u32) -> Result<Hints, Errno> {
        Ok(self.ioas(ioas)?.hints)
    }

    /// Page sizes all units attached to `ioas` support (4 KiB, 2 MiB, 1 GiB when none is).
    pub fn page_sizes(&self, units: &[Box<dyn Iommu>], ioas: u32) -> u64 {
        self.attached_devices(ioas).fold(1 << 12 | 1 << 21 | 1 << 30, |acc, (u, _)| acc & units[u].page_sizes())
            | 1 << 12
    }

    /// The IOVA alignment of `ioas` (Linux's `out_iova_alignment`): the
    /// largest of the smallest pages of the units it reaches, through its
    /// devices and its HWPTs, and 4 KiB at least. Every map, copy and attach
    /// keeps each area's IOVA, length and physical runs multiples of it, so
    /// every unit can map every area with its own pages.
    pub fn iova_alignment(&self, units: &[Box<dyn Iommu>], ioas: u32) -> u64 {
        Self::alignment_with(units, self.attached_devices(ioas).map(|(u, _)| u).chain(self.hwpt_units(ioas)))
    }

    /// The units of the HWPTs of `ioas` (none for an unknown id).
    fn hwpt_units(&self, ioas: u32) -> impl Iterator<Item = usize> + '_ {
        self.ioas(ioas).ok().into_iter().flat_map(|i| i.hwpts.iter()).filter_map(|&h| self.hwpt(h)).map(|h| h.unit)
    }

    /// The largest smallest page of `unit_ids`, 4 KiB at least.
    fn alignment_with(units: &[Box<dyn Iommu>], unit_ids: impl Iterator<Item = usize>) -> u64 {
        unit_ids.map(|u| 1u64 << units[u].page_sizes().trailing_zeros().min(63)).fold(PAGE, u64::max)
    }

    /// `EINVAL` (the reason logged) unless an area of `pages` at `at` can be
    /// mapped in pages of `align` bytes: its IOVA and length multiples of
    /// it, and each physically contiguous run starting and ending on it.
    pub(crate) fn check_aligned(at: u64, pages: &Runs, align: u64) -> Result<(), Errno> {
        if align <= PAGE {
            return Ok(());
        }
        let len = pages.pages() * PAGE;
        if !at.is_multiple_of(align) || !len.is_multiple_of(align) {
            log::warn!(
                "ioas: {len:#x} bytes at IOVA {at:#x}: not multiples of the IOAS's {align:#x}-byte IOVA alignment"
            );
            return Err(Errno::EINVAL);
        }
        if let Some(r) = pages.iter().find(|r| !r.pa.is_multiple_of(align) || !(r.pages * PAGE).is_multiple_of(align)) {
            log::warn!(
                "ioas: {len:#x} bytes at IOVA {at:#x}: memory at {:#x} is not in physically contiguous {align:#x}-byte \
                 blocks (map a buffer from mem_map with abi::mem_align({align:#x}))",
                r.pa
            );
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `EDQUOT` unless `pages` more pinned pages fit the quota.
    fn check_pins(&self, pages: u64) -> Result<(), Errno> {
        match self.pinned.checked_add(pages) {
            Some(n) if n <= self.quota.pinned_pages => Ok(()),
            _ => Err(Errno::EDQUOT),
        }
    }

    /// Maps `[va, va + len)` of the task at an IOVA of `ioas`; returns the IOVA.
    pub fn map(&mut self, units: Units<'_>, mem: &mut dyn Memory, ioas: u32, m: MapArgs) -> Result<u64, Errno> {
        let MapArgs { va, len, iova, perms } = m;
        if len == 0
            || !va.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
            || !perms.intersects(Perms::READ | Perms::WRITE)
        {
            return Err(Errno::EINVAL);
        }
        va.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        let (at, alignment, pages) = if self.attached_devices(ioas).any(|(u, _)| units[u].identity_only()) {
            // No IOMMU ([`iommu::noiommu`]): pinned first, the area goes at
            // the pages' physical address.
            self.check_pins(len / PAGE)?;
            let pages = mem.pin(va, len, perms.contains(Perms::WRITE))?;
            match self.place_identity(units, ioas, len, iova, &pages) {
                Ok((at, alignment)) => (at, alignment, pages),
                Err(e) => {
                    mem.unpin(&pages);
                    return Err(e);
                }
            }
        } else {
            let (at, alignment) = self.place(units, ioas, len, iova)?;
            self.check_pins(len / PAGE)?;
            (at, alignment, mem.pin(va, len, perms.contains(Perms::WRITE))?)
        };
        if let Err(e) = Self::check_aligned(at, &pages, alignment) {
            mem.unpin(&pages);
            return Err(e);
        }
        self.insert_area(units, ioas, at, pages, perms).map_err(|f| f.give_back(mem))
    }

    /// [`Iommufd::place`] for an IOAS with a device of a unit that takes
    /// only identity mappings: at the physical address of `pages`, which
    /// must cover it contiguously (a fixed IOVA elsewhere is `EINVAL`).
    fn place_identity(
        &mut self,
        units: &[Box<dyn Iommu>],
        ioas: u32,
        len: u64,
        iova: IovaChoice,
        pages: &Runs,
    ) -> Result<(u64, u64), Errno> {
        let pa = match pages.iter().next() {
            Some(run) if pages.run_count() == 1 => run.pa,
            _ => {
                log::warn!("ioas: {len:#x} bytes: not physically contiguous, so no identity mapping (no IOMMU)");
                return Err(Errno::EINVAL);
            }
        };
        if matches!(iova, IovaChoice::Fixed(at) if at != pa) {
            return Err(Errno::EINVAL);
        }
        self.place(units, ioas, len, IovaChoice::Fixed(pa))
    }

    /// Where a new area of `len` bytes goes in `ioas`, and the IOAS's IOVA
    /// alignment. Both cases look only at the areas near the answer (the
    /// areas are sorted by IOVA).
    ///
    /// The usable ranges, the alignment and the page sizes are kept in the
    /// IOAS between calls ([`Placement`]) and computed again only after the
    /// devices or HWPTs on it changed ([`Iommufd::topology_changed`]): a map
    /// after a map does not walk every device and its reserved regions again.
    fn place(&mut self, units: &[Box<dyn Iommu>], ioas: u32, len: u64, iova: IovaChoice) -> Result<(u64, u64), Errno> {
        let topology = self.topology;
        // Lent out for the call (the IOAS's own room).
        let mut kept = core::mem::take(&mut self.ioas_mut(ioas)?.placement);
        let computed = if kept.at != 0 && kept.at == topology {
            #[cfg(test)]
            {
                let mut fresh = Vec::new();
                let _ = self.usable_in(units, ioas, self.attached_devices(ioas), &mut fresh);
                assert_eq!(kept.usable, fresh, "IOAS {ioas}: kept usable ranges are stale");
                assert_eq!(kept.alignment, self.iova_alignment(units, ioas), "IOAS {ioas}: kept alignment is stale");
                assert_eq!(kept.page_sizes, self.page_sizes(units, ioas), "IOAS {ioas}: kept page sizes are stale");
            }
            Ok(())
        } else {
            kept.alignment = self.iova_alignment(units, ioas);
            kept.page_sizes = self.page_sizes(units, ioas);
            self.usable_in(units, ioas, self.attached_devices(ioas), &mut kept.usable)
        };
        kept.at = if computed.is_ok() { topology } else { 0 };
        let r = computed.and_then(|()| self.place_in(units, ioas, len, iova, &kept));
        let alignment = kept.alignment;
        if let Ok(i) = self.ioas_mut(ioas) {
            i.placement = kept;
        }
        r.map(|at| (at, alignment))
    }

    /// [`Iommufd::place`] with `kept`, the IOAS's [`Placement`] now.
    fn place_in(
        &self,
        units: &[Box<dyn Iommu>],
        ioas: u32,
        len: u64,
        iova: IovaChoice,
        kept: &Placement,
    ) -> Result<u64, Errno> {
        let i = self.ioas(ioas)?;
        let (usable, alignment) = (kept.usable.as_slice(), kept.alignment);
        if !len.is_multiple_of(alignment) {
            log::warn!("ioas: {len:#x} bytes: not a multiple of the IOAS's {alignment:#x}-byte IOVA alignment");
            return Err(Errno::EINVAL);
        }
        match iova {
            IovaChoice::Fixed(at) => {
                if !at.is_multiple_of(alignment) {
                    if at.is_multiple_of(PAGE) {
                        log::warn!(
                            "ioas: IOVA {at:#x}: not a multiple of the IOAS's {alignment:#x}-byte IOVA alignment"
                        );
                    }
                    return Err(Errno::EINVAL);
                }
                let last = at.checked_add(len - 1).ok_or(Errno::ERANGE)?;
                if Self::hits_reserved(units, self.attached_devices(ioas), (at, last)) {
                    return Err(Errno::EADDRINUSE);
                }
                if !ranges::covers(usable, (at, last)) {
                    return Err(Errno::ERANGE);
                }
                if i.areas.range(..=last).next_back().is_some_and(|(&s, a)| s + (a.len - 1) >= at) {
                    return Err(Errno::EEXIST);
                }
                Ok(at)
            }
            IovaChoice::Auto => {
                // Ranges set by `allow_iovas` confine the kernel's choice (as Linux's).
                let within: Vec<Range>;
                let usable: &[Range] = if i.allowed.is_empty() {
                    usable
                } else {
                    let mut set: Vec<Range> = Vec::new();
                    for &r in &i.allowed {
                        for &(s, e) in usable {
                            let (lo, hi) = (s.max(r.0), e.min(r.1));
                            if lo <= hi {
                                set.try_push((lo, hi)).map_err(nomem)?;
                            }
                        }
                    }
                    set.sort_unstable();
                    within = set;
                    &within
                };
                let sizes = if i.hints.huge_pages { kept.page_sizes } else { PAGE };
                let align = 1u64 << (63 - (sizes & (u64::MAX >> len.leading_zeros())).max(alignment).leading_zeros());
                lowest_gap(&i.areas, usable, len, align, i.run)
                    .or_else(|| lowest_gap(&i.areas, usable, len, alignment, i.run))
                    .ok_or(Errno::ENOSPC)
            }
        }
    }

    /// Maps pinned `pages` at `at` in every HWPT of `ioas` and records the
    /// area; on failure everything is undone and the pages handed back.
    fn insert_area(
        &mut self,
        units: Units<'_>,
        ioas: u32,
        at: u64,
        pages: Runs,
        perms: Perms,
    ) -> Result<u64, InsertFailed> {
        let len = pages.pages() * PAGE;
        // The area's slot first (its pages join it once mapped), so nothing
        // can fail after the units were told.
        let huge = match self.ioas_mut(ioas) {
            Ok(i) => match i.areas.try_insert(at, Area { len, pages: Runs::new(), perms }) {
                Ok(_) => i.hints.huge_pages,
                Err(_) => return Err(InsertFailed { errno: Errno::ENOMEM, pages, clean: true }),
            },
            Err(e) => return Err(InsertFailed { errno: e, pages, clean: true }),
        };
        let failed = match self.ioas(ioas) {
            Ok(i) => i.hwpts.iter().enumerate().find_map(|(n, &h)| {
                let hw = self.hwpt(h)?;
                let (e, mut clean) = map_pages(&mut *units[hw.unit], hw.domain, at, &pages, perms, huge).err()?;
                for &done in &i.hwpts[..n] {
                    if let Some(hw) = self.hwpt(done) {
                        clean &= iommu::unmap_and_flush(&mut *units[hw.unit], hw.domain, at, len).is_ok();
                    }
                }
                Some((errno(e), clean && !self.poisoned))
            }),
            Err(e) => Some((e, true)),
        };
        let Ok(i) = self.ioas_mut(ioas) else { return Err(InsertFailed { errno: Errno::ENOENT, pages, clean: true }) };
        if let Some((errno, clean)) = failed {
            i.areas.remove(&at);
            i.cut_run(at);
            return Err(InsertFailed { errno, pages, clean });
        }
        if let Some(a) = i.areas.get_mut(&at) {
            a.pages = pages;
        }
        match at.checked_add(len) {
            Some(end) if i.run.0 == i.run.1 => i.run = (at, end),
            Some(end) if at == i.run.1 => i.run.1 = end,
            _ => {}
        }
        self.pinned += len / PAGE;
        Ok(at)
    }

    /// Unmaps the areas inside `[iova, iova + len)`; the range must not cut
    /// an area. `iova = 0, len = u64::MAX` unmaps everything. Returns the bytes
    /// unmapped (`ENOENT` when there was nothing).
    pub fn unmap(
        &mut self,
        units: Units<'_>,
        mem: &mut dyn Memory,
        ioas: u32,
        iova: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        let all = iova == 0 && len == u64::MAX;
        if !all && (len == 0 || !iova.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE)) {
            return Err(Errno::EINVAL);
        }
        let last = if all { u64::MAX } else { iova.checked_add(len - 1).ok_or(Errno::EINVAL)? };
        let i = self.ioas(ioas)?;
        // The areas hit are those starting in [lo, last]: the one holding
        // `iova` (if any) and the ones after it. Walked again where needed
        // rather than listed, so an unmap never allocates.
        // Last bytes, never ends: an area may end at 2^64.
        let lo = match i.areas.range(..=iova).next_back() {
            Some((&s, a)) if s + (a.len - 1) >= iova => s,
            _ => iova,
        };
        let hit = || i.areas.range(lo..=last);
        // One pass: whether the range cuts an area, and the parent IOVAs the
        // areas hit span (first and last byte).
        let (mut cuts, mut span) = (false, None);
        for (&s, a) in hit() {
            let end = s + (a.len - 1);
            cuts |= s < iova || end > last;
            span = Some((span.map_or(s, |(first, _)| first), end));
        }
        if cuts {
            return Err(Errno::EINVAL); // would cut an area
        }
        // Unmap-all of an empty IOAS has nothing to do, and succeeds (as Linux's).
        let Some(span) = span else { return if all { Ok(0) } else { Err(Errno::ENOENT) } };
        let mut first_error = None;
        for &h in &i.hwpts {
            let Some(hw) = self.hwpt(h) else { continue };
            let unit = &mut *units[hw.unit];
            let mut gather = Gather::default();
            for (&s, a) in hit() {
                match unit.unmap(hw.domain, s, a.len).and_then(|u| merge(unit, hw.domain, &mut gather, u.gather)) {
                    Ok(()) => {}
                    Err(e) => first_error = first_error.or(Some(errno(e))),
                }
            }
            // One flush per HWPT for the whole call.
            if let Err(e) = unit.flush(hw.domain, gather) {
                first_error = first_error.or(Some(errno(e)));
            }
        }
        // Nested children shadowing this IOAS drop what points into the areas
        // (unmapped and flushed) before the pages are unpinned.
        if let Err(e) = self.purge_children(units, ioas, span) {
            first_error = first_error.or(Some(e));
        }
        // Unpinned only once every unit confirmed it forgot them.
        let quarantine = first_error.is_some() || self.poisoned;
        let i = self.ioas_mut(ioas)?;
        let mut bytes = 0;
        let run = &mut i.run;
        // Taken out in one pass (the areas after them move once).
        for (s, a) in i.areas.drain(lo..=last) {
            Ioas::cut(run, s);
            if quarantine {
                mem.quarantine(&a.pages);
            } else {
                mem.unpin(&a.pages);
            }
            bytes += a.len;
        }
        self.pinned = self.pinned.saturating_sub(bytes / PAGE);
        match first_error {
            // The areas are gone from the IOAS either way; the error says the
            // hardware may not have been told.
            Some(e) => Err(e),
            None => Ok(bytes),
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

    /// Maps the pages behind `[src_iova, src_iova + len)` of `src` into `dst`
    /// as well (pinned once more); returns the IOVA in `dst`.
    pub fn copy(&mut self, units: Units<'_>, mem: &mut dyn Memory, dst: u32, c: CopyArgs) -> Result<u64, Errno> {
        let CopyArgs { src, src_iova, len, dst_iova, perms } = c;
        if len == 0
            || !src_iova.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
            || !perms.intersects(Perms::READ | Perms::WRITE)
        {
            return Err(Errno::EINVAL);
        }
        let s = self.ioas(src)?;
        let mut pages = Runs::new();
        let mut at = src_iova;
        // Last bytes, never ends: the source may end at 2^64.
        let last = src_iova.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        loop {
            let (&start, area) = s.areas.range(..=at).next_back().ok_or(Errno::ENOENT)?;
            let area_last = start + (area.len - 1);
            if at > area_last {
                return Err(Errno::ENOENT);
            }
            if perms.contains(Perms::WRITE) && !area.perms.contains(Perms::WRITE) {
                return Err(Errno::EPERM);
            }
            let upto = area_last.min(last);
            let first = (at - start) / PAGE;
            let count = (upto - at) / PAGE + 1;
            for (_, run) in area.pages.window(first, count) {
                pages.push_run(run)?;
            }
            if upto == last {
                break;
            }
            at = upto + 1;
        }
        let (place, alignment) = self.place(units, dst, len, dst_iova)?;
        self.check_pins(pages.pages())?;
        Self::check_aligned(place, &pages, alignment)?;
        mem.repin(&pages);
        self.insert_area(units, dst, place, pages, perms).map_err(|f| f.give_back(mem))
    }

    /// The leaves `[iova, iova + len)` got in each HWPT of `ioas`: (unit, (size, count) pairs).
    pub fn leaves(
        &self,
        units: &[Box<dyn Iommu>],
        ioas: u32,
        iova: u64,
        len: u64,
    ) -> Result<Vec<(usize, Leaves)>, Errno> {
        let i = self.ioas(ioas)?;
        let mut out = Vec::new();
        out.try_reserve(i.hwpts.len()).map_err(|_| Errno::ENOMEM)?;
        for h in i.hwpts.iter().filter_map(|&h| self.hwpt(h)) {
            let (mut leaves, mut full) = (Vec::new(), false);
            units[h.unit].for_each_leaf_size(h.domain, iova, len, &mut |size, n| {
                full |= leaves.try_push((size, n)).is_err();
            });
            if full {
                return Err(Errno::ENOMEM);
            }
            out.try_push((h.unit, leaves)).map_err(nomem)?;
        }
        Ok(out)
    }

    /// Mapped areas of `ioas` as (iova, length), for inspection.
    pub fn areas(&self, ioas: u32) -> Result<Vec<(u64, u64)>, Errno> {
        fallible::try_collect(self.ioas(ioas)?.areas.iter().map(|(&s, a)| (s, a.len))).map_err(nomem)
    }

    /// The HWPT ids of `ioas` and the unit each is on.
    pub fn hwpts(&self, ioas: u32) -> Result<Vec<(u32, usize)>, Errno> {
        let i = self.ioas(ioas)?;
        fallible::try_collect(i.hwpts.iter().filter_map(|&h| self.hwpt(h).map(|x| (h, x.unit)))).map_err(nomem)
    }
}

/// The lowest `align`-aligned IOVA where `len` bytes fit inside `usable`
/// without touching an area: one walk over the areas in IOVA order.
pub(crate) fn lowest_gap(
    areas: &TryMap<u64, Area>,
    usable: &[Range],
    len: u64,
    align: u64,
    run: (u64, u64),
) -> Option<u64> {
    let fit = |lo: u64, hi: u64| -> Option<u64> {
        let start = lo.checked_add(align - 1)? & !(align - 1);
        (start >= lo && start.checked_add(len - 1)? <= hi).then_some(start)
    };
    for &(s, e) in usable {
        let mut cur = s;
        // A run of back-to-back areas holding `cur` is stepped over at once.
        if run.0 <= cur && cur < run.1 {
            cur = run.1;
            if cur > e {
                continue;
            }
        }
        // An area that began below `cur` may reach into the range.
        if let Some((&start, a)) = areas.range(..=cur).next_back() {
            match start.checked_add(a.len) {
                Some(end) if end > cur => cur = end,
                None => continue,
                _ => {}
            }
        }
        let mut blocked = false;
        for (&start, a) in areas.range(cur..) {
            if start > e {
                break;
            }
            if start > cur {
                if let Some(at) = fit(cur, start - 1) {
                    return Some(at);
                }
            }
            match start.checked_add(a.len) {
                Some(end) => cur = cur.max(end),
                None => {
                    blocked = true;
                    break;
                }
            }
        }
        if !blocked && cur <= e {
            if let Some(at) = fit(cur, e) {
                return Some(at);
            }
        }
    }
    None
}
