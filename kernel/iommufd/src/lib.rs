//! The IOAS object model (../shared/DESIGN.md §2): one per task, behind both
//! syscall doors.
//!
//! Objects are named by `u32` ids in a per-task table: **IOAS** (an IOVA space:
//! areas of pinned user pages), **HWPT** (a domain of one IOMMU unit: mirroring
//! an IOAS, or a nested child shadowing a user's stage-1 table), **DEVICE** (a
//! PCI function the task claimed, with its unit and the ID the unit knows it
//! by), **FAULT QUEUE** (faults of the devices of the HWPTs routed to it).
//! Everything is generic over [`iommu::Iommu`] and a [`Memory`] that pins user
//! pages, so the whole model is tested on the host against
//! `iommu::mock::MockIommu`.
//!
//! Rules kept here (generic door):
//! - Two-phase create: an id is published only when its object is complete.
//! - A map pins its pages (one pin per page per mapping) and mirrors them into
//!   every HWPT of the IOAS; a failure anywhere undoes all of it.
//! - Unmap removes whole areas only (a range that cuts an area is an error,
//!   never a split), flushes each HWPT once per call, then unpins.
//! - Usable IOVAs: everything above page 0, narrowed to each attached unit's
//!   aperture, minus each attached device's reserved regions. Ranges given to
//!   `allow_iovas` must stay usable: an attach that would narrow them fails.
//! - A bound device not attached to an IOAS is blocked (its unit's default,
//!   [`Iommu::detach`]): DMA stops. Bind, detach and destroy all block it.
//! - [`Iommufd::close`] (task exit) blocks every device before any page is
//!   unpinned, then frees nested children, then their parents, then unmaps and
//!   unpins every IOAS.
//! - **Quarantine.** Pages are unpinned only after the unit confirmed it can
//!   no longer reach them. If a flush fails during unmap, that call's pages
//!   are quarantined ([`Memory::quarantine`]) instead; if a device cannot be
//!   blocked at exit, every page of the task's IOAS is.
//! - An automatic HWPT (made by an attach to an IOAS) goes with its last device.
//!
//! Rules of the hardware-specific door ([`Iommufd::hwpt_alloc`] and friends):
//! - A HWPT is created on the unit of the device named at creation; attaching
//!   a device of another unit is `EINVAL`.
//! - A kernel-managed user HWPT ([`HwptData::Default`], [`HwptData::Driver`])
//!   mirrors its IOAS like an automatic one but lives until `destroy`
//!   (`EBUSY` while a device is attached or a nested child hangs off it).
//!   Driver data goes to the unit unchanged; a unit that cannot honour it fails
//!   the call (unlike the generic door).
//! - A nested child ([`HwptData::Stage1X86`]) needs a parent HWPT created with
//!   [`hwpt_flags::NEST_PARENT`]. Its stage 1 is the user's table in the parent
//!   IOAS, shadowed into a kernel-owned paging domain (any unit kind): see
//!   [`shadow`]. The user's table is read at creation and at each
//!   [`Iommufd::hwpt_invalidate`] entry, never otherwise: a change to the
//!   table, or a new map in the parent IOAS, is seen after an invalidation
//!   (as on hardware). An unmap in the parent IOAS drops the child pages
//!   pointing into it (unmapped and flushed) before the pages are unpinned.
//! - Attach to any HWPT replaces the device's domain with one `attach` call:
//!   the device is never left untranslated nor on a freed domain.
//! - An IOAS with a HWPT on it is `EBUSY` for `destroy`; so is a fault queue
//!   a HWPT routes to.
//! - Faults of a device whose HWPT routes to a queue go to that queue
//!   ([`Iommufd::deliver_fault`]); a full queue drops and counts them.
//!
//! Heap (issue 18): every allocation a public method or
//! [`syscall::dispatch`] makes goes through the `fallible` crate and answers
//! `ENOMEM` with the table, the units and the task's pins as they were
//! before the call. Teardown ([`Iommufd::unmap`], `destroy`, `close`)
//! allocates nothing, so it cannot be stopped half-way by a full heap. The
//! object table and the areas are [`fallible::TryMap`]s.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi_glue;
mod hw;
pub mod ranges;
pub mod shadow;
pub mod syscall;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use hw::{hwpt_flags, FaultRecord, HwptAlloc, HwptData, Stage1Invalidation, MAX_FAULT_QUEUE};
pub use shadow::{ShadowLimits, ShadowStats};

use abi::Errno;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Bound;
use fallible::{AllocError, TryMap, VecExt};
use iommu::{DeviceId, DomainId, DomainKind, Gather, Iommu, Perms};
use ranges::Range;

/// A full heap, as an errno.
pub(crate) fn nomem(_: AllocError) -> Errno {
    Errno::ENOMEM
}

/// Leaves of a mapping in one unit: (leaf size, count) pairs, largest first.
pub type Leaves = Vec<(u64, u64)>;

/// Pages are 4 KiB everywhere in this model.
pub const PAGE: u64 = 4096;

/// The task's memory, as DMA mappings see it.
pub trait Memory {
    /// Pins the pages of `[va, va + len)` (page aligned, mapped, writable when
    /// `write`) and returns their physical addresses, one per page.
    fn pin(&mut self, va: u64, len: u64, write: bool) -> Result<Vec<u64>, Errno>;
    /// Adds one more pin to each page (the same pages mapped again).
    fn repin(&mut self, pages: &[u64]);
    /// Drops one pin of each page.
    fn unpin(&mut self, pages: &[u64]);
    /// Gives up on `pages` instead of unpinning them: the unit may still
    /// reach them (a flush or a detach failed), so they must never be handed
    /// out again. They stay pinned forever, counted and logged.
    fn quarantine(&mut self, pages: &[u64]);
    /// Reads the 8-byte-aligned `u64` at physical address `pa` of a page this
    /// table pinned (a user's stage-1 table entry); `None`: cannot be read (the
    /// entry is then treated as not present). The default reads nothing.
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let _ = pa;
        None
    }
}

/// The units, indexed as the kernel registered them.
pub type Units<'a> = &'a mut [Box<dyn Iommu>];

/// An IOMMU error as an errno.
pub fn errno(e: iommu::Error) -> Errno {
    match e {
        iommu::Error::NotSupported(_) => Errno::EOPNOTSUPP,
        iommu::Error::NoMemory => Errno::ENOMEM,
        iommu::Error::NoDomainIds => Errno::ENOSPC,
        iommu::Error::NoSuchDomain(_) | iommu::Error::NoSuchDevice(_) => Errno::ENOENT,
        iommu::Error::Busy(_) => Errno::EBUSY,
        iommu::Error::NotPaging(_) => Errno::EINVAL,
        iommu::Error::OutOfAperture { .. } => Errno::ERANGE,
        iommu::Error::Map(io_pgtable::Error::AlreadyMapped(_)) => Errno::EEXIST,
        iommu::Error::Map(_) => Errno::EINVAL,
        iommu::Error::Hardware(_) => Errno::EIO,
        iommu::Error::InvalidData(_) => Errno::EINVAL,
    }
}

/// Hints a caller may give an IOAS; none can make an operation fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    /// Use leaves larger than 4 KiB where alignment allows (default on).
    pub huge_pages: bool,
    /// Report the leaves each new mapping got (a teaching and benchmark aid; default off).
    pub report_leaves: bool,
}

impl Default for Hints {
    fn default() -> Self {
        Hints { huge_pages: true, report_leaves: false }
    }
}

/// Option ids for [`Iommufd::set_option`].
pub mod option {
    /// Value 1: allow huge leaves (default); 0: 4 KiB leaves only.
    pub const HUGE_PAGES: u32 = 1;
    /// Value 1: the kernel logs the leaves each new mapping gets; 0: not (default).
    pub const REPORT_LEAVES: u32 = 2;
}

/// A mapping: a run of pinned pages at an IOVA.
#[derive(Debug, Clone)]
struct Area {
    len: u64,
    pages: Vec<u64>,
    perms: Perms,
}

#[derive(Debug, Default)]
struct Ioas {
    areas: TryMap<u64, Area>,
    /// `[start, end)` wholly covered by back-to-back areas: the search for
    /// a kernel-chosen IOVA steps over it at once instead of walking each of
    /// its areas (so a map after a map is found in one step). A map at its
    /// end extends it; an unmap inside it cuts it there.
    run: (u64, u64),
    allowed: Vec<Range>,
    hwpts: Vec<u32>,
    hints: Hints,
}

impl Ioas {
    /// The area at `at` left: the covered run ends there if it held it.
    fn cut_run(&mut self, at: u64) {
        if self.run.0 <= at && at < self.run.1 {
            self.run.1 = at;
        }
    }
}

/// How a HWPT came to be, which decides how it goes.
#[derive(Debug)]
enum HwptKind {
    /// Made by an attach to an IOAS; freed with its last device.
    Auto,
    /// Made by `hwpt_alloc`, mirroring its IOAS; freed by `destroy`.
    User {
        /// Nested children may be created under it.
        nest_parent: bool,
    },
    /// A nested child of HWPT `parent`: shadowing the user's stage 1
    /// (`shadow`), or nested by the hardware itself (`None`: the unit's
    /// domain holds the user's stage-1 configuration over the parent's).
    Nested { parent: u32, shadow: Option<shadow::Shadow> },
}

#[derive(Debug)]
struct Hwpt {
    unit: usize,
    domain: DomainId,
    /// The IOAS it mirrors; for a nested child, its parent's.
    ioas: u32,
    devices: u32,
    kind: HwptKind,
    /// The fault queue its devices' faults go to.
    fault_queue: Option<u32>,
}

impl Hwpt {
    /// Whether it mirrors its IOAS (and is on the IOAS's list).
    fn mirrors(&self) -> bool {
        !matches!(self.kind, HwptKind::Nested { .. })
    }
}

#[derive(Debug)]
struct Device {
    unit: usize,
    id: DeviceId,
    hwpt: Option<u32>,
}

#[derive(Debug)]
enum Object {
    /// An id taken by a create still in progress.
    Pending,
    Ioas(Ioas),
    Hwpt(Hwpt),
    Device(Device),
    FaultQueue(hw::FaultQueue),
}

/// What kind an object id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An IOVA space.
    Ioas,
    /// A hardware page table.
    Hwpt,
    /// A bound device.
    Device,
    /// A fault queue.
    FaultQueue,
}

/// What one task's table may hold; each limit has its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Objects alive at once (IOAS, HWPT, device, fault queue): `EMFILE`.
    pub objects: usize,
    /// 4 KiB pages pinned by mappings, a copied page counting again:
    /// `EDQUOT`. It also bounds the IOMMU page tables the mappings need.
    pub pinned_pages: u64,
    /// Records all fault queues may hold together: `EDQUOT`.
    pub fault_records: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { objects: 1024, pinned_pages: 1 << 16, fault_records: 4096 }
    }
}

/// The object table of one task.
#[derive(Debug, Default)]
pub struct Iommufd {
    objects: TryMap<u32, Object>,
    next_id: u32,
    /// A device could not be blocked: no page may be unpinned any more.
    poisoned: bool,
    /// Bounds on shadowing work.
    limits: ShadowLimits,
    /// Per-task limits.
    quota: Quota,
    /// Pages pinned by the areas of every IOAS now.
    pinned: u64,
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
    /// Gives back heap the table's maps no longer need (room they kept
    /// after entries left them, or reserved by a call that then failed:
    /// `fallible::TryMap::shrink`). For the end of a call; never fails.
    pub fn shrink(&mut self) {
        self.objects.shrink();
        for o in self.objects.values_mut() {
            match o {
                Object::Ioas(i) => i.areas.shrink(),
                Object::Hwpt(Hwpt { kind: HwptKind::Nested { shadow: Some(s), .. }, .. }) => s.shrink(),
                _ => {}
            }
        }
    }

    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty table with `quota`.
    pub fn with_quota(quota: Quota) -> Self {
        Iommufd { quota, ..Self::default() }
    }

    /// The table's limits.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Pages the task's mappings pin now (copies count again).
    pub fn pinned_pages(&self) -> u64 {
        self.pinned
    }

    /// `EDQUOT` unless `pages` more pinned pages fit the quota.
    fn check_pins(&self, pages: u64) -> Result<(), Errno> {
        match self.pinned.checked_add(pages) {
            Some(n) if n <= self.quota.pinned_pages => Ok(()),
            _ => Err(Errno::EDQUOT),
        }
    }

    fn reserve_id(&mut self) -> Result<u32, Errno> {
        if self.objects.len() >= self.quota.objects {
            return Err(Errno::EMFILE);
        }
        // Ids start at 1 and are never reused while the table lives.
        let id = self.next_id.checked_add(1).ok_or(Errno::ENOSPC)?;
        self.objects.try_insert(id, Object::Pending).map_err(nomem)?;
        self.next_id = id;
        Ok(id)
    }

    /// Reserves an id and allocates its domain with `alloc`; on failure the
    /// id is given back and the unit's error returned as an errno.
    fn reserve_with_domain(
        &mut self,
        alloc: impl FnOnce() -> Result<DomainId, iommu::Error>,
    ) -> Result<(u32, DomainId), Errno> {
        let obj = self.reserve_id()?;
        match alloc() {
            Ok(d) => Ok((obj, d)),
            Err(e) => {
                self.objects.remove(&obj);
                Err(errno(e))
            }
        }
    }

    /// Puts `object` in the slot [`Iommufd::reserve_id`] made (never allocates).
    fn publish(&mut self, id: u32, object: Object) -> u32 {
        if let Some(slot) = self.objects.get_mut(&id) {
            *slot = object;
        }
        id
    }

    /// The first object id after `after` (`None`: from the start) whose
    /// object `pick` accepts; walks without allocating.
    fn next_id_where(&self, after: Option<u32>, pick: impl Fn(&Object) -> bool) -> Option<u32> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.objects.range((from, Bound::Unbounded)).find(|(_, o)| pick(o)).map(|(&id, _)| id)
    }

    /// The kind of object `id`, if it exists.
    pub fn kind(&self, id: u32) -> Option<Kind> {
        match self.objects.get(&id)? {
            Object::Ioas(_) => Some(Kind::Ioas),
            Object::Hwpt(_) => Some(Kind::Hwpt),
            Object::Device(_) => Some(Kind::Device),
            Object::FaultQueue(_) => Some(Kind::FaultQueue),
            Object::Pending => None,
        }
    }

    /// Number of live objects.
    pub fn len(&self) -> usize {
        self.objects.values().filter(|o| !matches!(o, Object::Pending)).count()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ioas(&self, id: u32) -> Result<&Ioas, Errno> {
        match self.objects.get(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    fn ioas_mut(&mut self, id: u32) -> Result<&mut Ioas, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    fn hwpt(&self, id: u32) -> Option<&Hwpt> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(h)) => Some(h),
            _ => None,
        }
    }

    fn device(&self, id: u32) -> Result<&Device, Errno> {
        match self.objects.get(&id) {
            Some(Object::Device(d)) => Ok(d),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// Creates an empty IOAS.
    pub fn ioas_alloc(&mut self) -> Result<u32, Errno> {
        let id = self.reserve_id()?;
        Ok(self.publish(id, Object::Ioas(Ioas::default())))
    }

    /// Devices attached to `ioas` (through any of its HWPTs), with their
    /// units (a walk of the table: nothing is allocated).
    fn attached_devices(&self, ioas: u32) -> impl Iterator<Item = (usize, DeviceId)> + Clone + '_ {
        self.objects.iter().filter_map(move |(_, o)| match o {
            Object::Device(d) => d.hwpt.and_then(|h| self.hwpt(h)).filter(|h| h.ioas == ioas).map(|_| (d.unit, d.id)),
            _ => None,
        })
    }

    /// Usable IOVA ranges of an IOAS with `devices` attached: above page 0,
    /// inside every unit's aperture, outside every device's reserved regions.
    fn usable_with(
        units: &[Box<dyn Iommu>],
        devices: impl Iterator<Item = (usize, DeviceId)>,
    ) -> Result<Vec<Range>, Errno> {
        let mut set = Vec::new();
        set.try_push((PAGE, u64::MAX)).map_err(nomem)?;
        for (unit, dev) in devices {
            let u = &units[unit];
            ranges::intersect_in(&mut set, u.aperture());
            let mut full = false;
            u.for_each_reserved(dev, &mut |r| {
                full |= ranges::subtract_in(&mut set, (r.start & !(PAGE - 1), r.end | (PAGE - 1))).is_err();
            });
            if full {
                return Err(Errno::ENOMEM);
            }
        }
        Ok(set)
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
        let mut set = Self::usable_with(units, devices)?;
        if let Ok(i) = self.ioas(ioas) {
            for h in i.hwpts.iter().filter_map(|&h| self.hwpt(h)) {
                ranges::intersect_in(&mut set, units[h.unit].aperture());
            }
        }
        Ok(set)
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

    /// Page sizes all units attached to `ioas` support (4 KiB, 2 MiB, 1 GiB when none is).
    pub fn page_sizes(&self, units: &[Box<dyn Iommu>], ioas: u32) -> u64 {
        self.attached_devices(ioas).fold(1 << 12 | 1 << 21 | 1 << 30, |acc, (u, _)| acc & units[u].page_sizes())
            | 1 << 12
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
        let at = self.place(units, ioas, len, iova)?;
        self.check_pins(len / PAGE)?;
        let pages = mem.pin(va, len, perms.contains(Perms::WRITE))?;
        self.insert_area(units, ioas, at, pages, perms).map_err(|f| f.give_back(mem))
    }

    /// Where a new area of `len` bytes goes in `ioas`. Both cases look only
    /// at the areas near the answer (the areas are sorted by IOVA).
    fn place(&self, units: &[Box<dyn Iommu>], ioas: u32, len: u64, iova: IovaChoice) -> Result<u64, Errno> {
        let i = self.ioas(ioas)?;
        let devs = self.attached_devices(ioas);
        let usable = self.usable(units, ioas, devs.clone())?;
        match iova {
            IovaChoice::Fixed(at) => {
                if !at.is_multiple_of(PAGE) {
                    return Err(Errno::EINVAL);
                }
                let last = at.checked_add(len - 1).ok_or(Errno::ERANGE)?;
                if Self::hits_reserved(units, devs, (at, last)) {
                    return Err(Errno::EADDRINUSE);
                }
                if !ranges::covers(&usable, (at, last)) {
                    return Err(Errno::ERANGE);
                }
                if i.areas.range(..=last).next_back().is_some_and(|(&s, a)| s + (a.len - 1) >= at) {
                    return Err(Errno::EEXIST);
                }
                Ok(at)
            }
            IovaChoice::Auto => {
                // Ranges set by `allow_iovas` confine the kernel's choice (as Linux's).
                let usable: Vec<Range> = if i.allowed.is_empty() {
                    usable
                } else {
                    let mut within: Vec<Range> = Vec::new();
                    for &r in &i.allowed {
                        for &(s, e) in &usable {
                            let (lo, hi) = (s.max(r.0), e.min(r.1));
                            if lo <= hi {
                                within.try_push((lo, hi)).map_err(nomem)?;
                            }
                        }
                    }
                    within.sort_unstable();
                    within
                };
                let sizes = if i.hints.huge_pages { self.page_sizes(units, ioas) } else { PAGE };
                let align = 1u64 << (63 - (sizes & (u64::MAX >> len.leading_zeros())).max(PAGE).leading_zeros());
                lowest_gap(&i.areas, &usable, len, align, i.run)
                    .or_else(|| lowest_gap(&i.areas, &usable, len, PAGE, i.run))
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
        pages: Vec<u64>,
        perms: Perms,
    ) -> Result<u64, InsertFailed> {
        let len = pages.len() as u64 * PAGE;
        // The area's slot first (its pages join it once mapped), so nothing
        // can fail after the units were told.
        let huge = match self.ioas_mut(ioas) {
            Ok(i) => match i.areas.try_insert(at, Area { len, pages: Vec::new(), perms }) {
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
        if hit().any(|(&s, a)| s < iova || s + (a.len - 1) > last) {
            return Err(Errno::EINVAL); // would cut an area
        }
        // The parent IOVAs the areas hit span (first and last byte).
        let span = match (hit().next(), hit().next_back()) {
            (Some((&first, _)), Some((&s, a))) => (first, s + (a.len - 1)),
            // Unmap-all of an empty IOAS has nothing to do, and succeeds (as Linux's).
            _ => return if all { Ok(0) } else { Err(Errno::ENOENT) },
        };
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
        while let Some(s) = i.areas.range(lo..=last).next().map(|(&s, _)| s) {
            if let Some(a) = i.areas.remove(&s) {
                i.cut_run(s);
                if quarantine {
                    mem.quarantine(&a.pages);
                } else {
                    mem.unpin(&a.pages);
                }
                bytes += a.len;
            }
        }
        self.pinned = self.pinned.saturating_sub(bytes / PAGE);
        match first_error {
            // The areas are gone from the IOAS either way; the error says the
            // hardware may not have been told.
            Some(e) => Err(e),
            None => Ok(bytes),
        }
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
        let mut pages: Vec<u64> = Vec::new();
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
            let first = ((at - start) / PAGE) as usize;
            let count = ((upto - at) / PAGE + 1) as usize;
            pages.try_reserve(count).map_err(|_| Errno::ENOMEM)?;
            pages.extend_from_slice(&area.pages[first..first + count]);
            if upto == last {
                break;
            }
            at = upto + 1;
        }
        let place = self.place(units, dst, len, dst_iova)?;
        self.check_pins(pages.len() as u64)?;
        mem.repin(&pages);
        self.insert_area(units, dst, place, pages, perms).map_err(|f| f.give_back(mem))
    }

    /// Binds a device the task owns: `unit` and `id` say where it sits. It is
    /// blocked (again) until it is attached.
    pub fn device_bind(&mut self, units: Units<'_>, unit: usize, id: DeviceId) -> Result<u32, Errno> {
        if unit >= units.len() || !units[unit].serves(id) {
            return Err(Errno::ENOENT);
        }
        let bound = self.objects.values().any(|o| matches!(o, Object::Device(d) if d.unit == unit && d.id == id));
        if bound {
            return Err(Errno::EBUSY);
        }
        let obj = self.reserve_id()?;
        if let Err(e) = units[unit].detach(id) {
            self.objects.remove(&obj);
            return Err(errno(e));
        }
        Ok(self.publish(obj, Object::Device(Device { unit, id, hwpt: None })))
    }

    /// Attaches device `dev` to `ioas` (through the IOAS's HWPT for the
    /// device's unit, created and filled on first use) or to a HWPT directly;
    /// returns the HWPT id.
    pub fn device_attach(&mut self, units: Units<'_>, dev: u32, pt: u32) -> Result<u32, Errno> {
        let d = self.device(dev)?;
        let (unit, id, old) = (d.unit, d.id, d.hwpt);
        let hwpt = match self.kind(pt) {
            Some(Kind::Hwpt) => {
                let h = self.hwpt(pt).ok_or(Errno::ENOENT)?;
                if h.unit != unit {
                    return Err(Errno::EINVAL);
                }
                if old != Some(pt) {
                    self.check_fits(units, h.ioas, &[(unit, id)])?;
                }
                pt
            }
            Some(Kind::Ioas) => {
                self.check_fits(units, pt, &[(unit, id)])?;
                let i = self.ioas(pt)?;
                let existing = i
                    .hwpts
                    .iter()
                    .copied()
                    .find(|&h| self.hwpt(h).is_some_and(|h| h.unit == unit && matches!(h.kind, HwptKind::Auto)));
                match existing {
                    Some(h) => h,
                    None => self.hwpt_create(units, unit, pt)?,
                }
            }
            // An id of another kind is EINVAL, as everywhere; no object at all ENOENT.
            Some(_) => return Err(Errno::EINVAL),
            None => return Err(Errno::ENOENT),
        };
        if old == Some(hwpt) {
            return Ok(hwpt);
        }
        let domain = self.hwpt(hwpt).map(|h| h.domain).ok_or(Errno::ENOENT)?;
        if let Err(e) = units[unit].attach(id, domain) {
            self.release_hwpt_if_unused(units, hwpt);
            return Err(errno(e));
        }
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&hwpt) {
            h.devices += 1;
        }
        if let Some(Object::Device(d)) = self.objects.get_mut(&dev) {
            d.hwpt = Some(hwpt);
        }
        if let Some(old) = old {
            self.drop_hwpt_ref(units, old);
        }
        Ok(hwpt)
    }

    /// Whether `ioas` can take `more` devices: their reserved regions must
    /// not collide with what is mapped, nor narrow the ranges the IOAS was
    /// promised, and their units' apertures must hold both (`EADDRINUSE`).
    fn check_fits(&self, units: &[Box<dyn Iommu>], ioas: u32, more: &[(usize, DeviceId)]) -> Result<(), Errno> {
        let devs = self.attached_devices(ioas).chain(more.iter().copied());
        let i = self.ioas(ioas)?;
        let usable = self.usable(units, ioas, devs)?;
        let taken = i.areas.iter().map(|(&s, a)| (s, s + (a.len - 1)));
        if taken.chain(i.allowed.iter().copied()).any(|r| !ranges::covers(&usable, r)) {
            return Err(Errno::EADDRINUSE);
        }
        Ok(())
    }

    /// An automatic HWPT on `unit` mirroring every area of `ioas`.
    fn hwpt_create(&mut self, units: Units<'_>, unit: usize, ioas: u32) -> Result<u32, Errno> {
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
            self.objects.remove(&obj);
            return Err(e);
        }
        if let Err(e) = self.ioas_mut(ioas).and_then(|i| i.hwpts.try_push(obj).map_err(nomem)) {
            let _ = u.domain_free(domain);
            self.objects.remove(&obj);
            return Err(e);
        }
        Ok(self.publish(obj, Object::Hwpt(Hwpt { unit, domain, ioas, devices: 0, kind, fault_queue })))
    }

    fn drop_hwpt_ref(&mut self, units: Units<'_>, hwpt: u32) {
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&hwpt) {
            h.devices = h.devices.saturating_sub(1);
        }
        self.release_hwpt_if_unused(units, hwpt);
    }

    /// Frees an automatic HWPT no device uses any more (user HWPTs wait for `destroy`).
    fn release_hwpt_if_unused(&mut self, units: Units<'_>, hwpt: u32) {
        if self.hwpt(hwpt).is_some_and(|h| h.devices == 0 && matches!(h.kind, HwptKind::Auto)) {
            self.free_hwpt(units, hwpt);
        }
    }

    /// Frees a HWPT with no device: its domain, its id, its place on its IOAS.
    fn free_hwpt(&mut self, units: Units<'_>, hwpt: u32) {
        let Some(Object::Hwpt(h)) = self.objects.remove(&hwpt) else { return };
        // Freeing the domain frees its tables and invalidates its TLB entries;
        // the pages stay pinned by the IOAS.
        let _ = units[h.unit].domain_free(h.domain);
        if h.mirrors() {
            if let Ok(i) = self.ioas_mut(h.ioas) {
                i.hwpts.retain(|&x| x != hwpt);
            }
        }
    }

    /// Detaches `dev`: its DMA is blocked until it is attached again.
    pub fn device_detach(&mut self, units: Units<'_>, dev: u32) -> Result<(), Errno> {
        let d = self.device(dev)?;
        let (unit, id, hwpt) = (d.unit, d.id, d.hwpt);
        let Some(hwpt) = hwpt else { return Err(Errno::EINVAL) };
        units[unit].detach(id).map_err(errno)?;
        if let Some(Object::Device(d)) = self.objects.get_mut(&dev) {
            d.hwpt = None;
        }
        self.drop_hwpt_ref(units, hwpt);
        Ok(())
    }

    /// The unit a bound device sits behind, and the ID it knows it by.
    pub fn device_unit(&self, dev: u32) -> Result<(usize, DeviceId), Errno> {
        let d = self.device(dev)?;
        Ok((d.unit, d.id))
    }

    /// Destroys any object: an IOAS with attached devices or any HWPT on it,
    /// a HWPT with devices or nested children, a fault queue a HWPT routes to
    /// are `EBUSY`; destroying a device detaches and unbinds it (it stays
    /// blocked; if the unit cannot block it, the object stays and the error
    /// is returned).
    pub fn destroy(&mut self, units: Units<'_>, mem: &mut dyn Memory, id: u32) -> Result<(), Errno> {
        match self.kind(id) {
            None => Err(Errno::ENOENT),
            Some(Kind::Ioas) => {
                let has_hwpt = self.objects.values().any(|o| matches!(o, Object::Hwpt(h) if h.ioas == id));
                if has_hwpt || self.attached_devices(id).next().is_some() {
                    return Err(Errno::EBUSY);
                }
                if self.ioas(id)?.areas.is_empty() {
                    self.objects.remove(&id);
                    return Ok(());
                }
                let r = self.unmap(units, mem, id, 0, u64::MAX);
                self.objects.remove(&id);
                r.map(|_| ())
            }
            Some(Kind::Hwpt) => {
                if self.hwpt(id).is_some_and(|h| h.devices > 0) || self.has_children(id) {
                    return Err(Errno::EBUSY);
                }
                self.free_hwpt(units, id);
                Ok(())
            }
            Some(Kind::FaultQueue) => {
                if self.objects.values().any(|o| matches!(o, Object::Hwpt(h) if h.fault_queue == Some(id))) {
                    return Err(Errno::EBUSY);
                }
                self.objects.remove(&id);
                Ok(())
            }
            Some(Kind::Device) => {
                // Blocked by one detach: from its HWPT when attached (a second
                // detach that failed would leave the call failed with the
                // device already moved — fail-nth `destroy_attached_device`).
                if self.device(id)?.hwpt.is_some() {
                    self.device_detach(units, id)?;
                } else {
                    let (unit, dev) = self.device_unit(id)?;
                    units[unit].detach(dev).map_err(errno)?;
                }
                self.objects.remove(&id);
                Ok(())
            }
        }
    }

    /// Task exit: every device blocked first (no DMA can reach a page after
    /// this), then nested children freed, then the HWPTs left (their parents),
    /// then every IOAS unmapped and unpinned, devices unbound, blocked domains
    /// freed. Nothing is left, and nothing is allocated on the way.
    pub fn close(&mut self, units: Units<'_>, mem: &mut dyn Memory) {
        let is_device = |o: &Object| matches!(o, Object::Device(_));
        let mut at = None;
        while let Some(d) = self.next_id_where(at, is_device) {
            at = Some(d);
            let Ok(&Device { unit, id, hwpt }) = self.device(d) else { continue };
            let blocked = match hwpt {
                Some(_) => self.device_detach(units, d).is_ok(),
                None => units[unit].detach(id).is_ok(),
            };
            if !blocked {
                log::error!(
                    "iommufd: device {:#x} of unit {unit} could not be blocked: the task's pages are quarantined",
                    id.0
                );
                self.poisoned = true;
            }
        }
        // Nested children first, then the HWPTs they hang off.
        for nested in [true, false] {
            let mut at = None;
            while let Some(h) = self.next_id_where(at, |o| matches!(o, Object::Hwpt(h) if h.mirrors() != nested)) {
                at = Some(h);
                self.free_hwpt(units, h);
            }
        }
        let mut at = None;
        while let Some(i) = self.next_id_where(at, |o| matches!(o, Object::Ioas(_))) {
            at = Some(i);
            let _ = self.destroy(units, mem, i);
        }
        let mut at = None;
        while let Some(d) = self.next_id_where(at, is_device) {
            at = Some(d);
            let _ = self.destroy(units, mem, d);
        }
        self.objects.clear();
    }

    /// The hints of `ioas`.
    pub fn hints(&self, ioas: u32) -> Result<Hints, Errno> {
        Ok(self.ioas(ioas)?.hints)
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

    /// The domain behind a HWPT (for tests and the hardware-specific door).
    pub fn hwpt_domain(&self, hwpt: u32) -> Option<(usize, DomainId)> {
        self.hwpt(hwpt).map(|h| (h.unit, h.domain))
    }
}

/// The lowest `align`-aligned IOVA where `len` bytes fit inside `usable`
/// without touching an area: one walk over the areas in IOVA order.
fn lowest_gap(areas: &TryMap<u64, Area>, usable: &[Range], len: u64, align: u64, run: (u64, u64)) -> Option<u64> {
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

/// Adds `g` to `into` (one flush for both); without heap to do so, `g` is
/// flushed on its own right away (one flush more, nothing lost).
fn merge(unit: &mut dyn Iommu, domain: DomainId, into: &mut Gather, g: Gather) -> Result<(), iommu::Error> {
    match into.try_merge(g) {
        Ok(()) => Ok(()),
        Err(g) => unit.flush(domain, g),
    }
}

/// Maps `pages` (one PA per 4 KiB page) at `at`, in runs of physically
/// contiguous pages so the engine can use large leaves (4 KiB calls only when
/// `huge` is off).
/// A map that failed after its pages were pinned: they go back to the task
/// (`clean`: every unit confirmed it forgot what was mapped) or to quarantine.
struct InsertFailed {
    errno: Errno,
    pages: Vec<u64>,
    clean: bool,
}

impl InsertFailed {
    /// Unpins (or quarantines) the pages; the errno for the caller.
    fn give_back(self, mem: &mut dyn Memory) -> Errno {
        if self.clean {
            mem.unpin(&self.pages);
        } else {
            mem.quarantine(&self.pages);
        }
        self.errno
    }
}

/// Maps `pages` at `at` run by run; on failure undoes what it mapped and
/// says whether that undo (unmap + flush) succeeded.
fn map_pages(
    u: &mut dyn Iommu,
    domain: DomainId,
    at: u64,
    pages: &[u64],
    perms: Perms,
    huge: bool,
) -> Result<(), (iommu::Error, bool)> {
    let mut i = 0;
    while i < pages.len() {
        let mut n = 1;
        while huge && i + n < pages.len() && pages[i + n] == pages[i] + n as u64 * PAGE {
            n += 1;
        }
        if let Err(e) = u.map(domain, at + i as u64 * PAGE, pages[i], n as u64 * PAGE, perms) {
            let clean = i == 0 || iommu::unmap_and_flush(u, domain, at, i as u64 * PAGE).is_ok();
            return Err((e, clean));
        }
        i += n;
    }
    Ok(())
}

/// Heap fail-nth for every unit test of the crate: allocations fail only
/// where a test arms it (`fail_nth_tests`), and otherwise go to the system.
#[cfg(test)]
#[global_allocator]
static HEAP: fallible::testing::FailingAlloc = fallible::testing::FailingAlloc;

#[cfg(test)]
mod fail_nth_tests;
#[cfg(test)]
mod hw_tests;
#[cfg(test)]
mod tests;
