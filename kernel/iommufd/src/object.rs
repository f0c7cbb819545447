//! The object table of one task (../shared/DESIGN.md §2): object ids and
//! kinds, what each kind of object holds, lookup, and the two-phase create.
//!
//! An object is one of [`Kind`]: its record here ([`Ioas`], [`Hwpt`],
//! [`Device`], [`FaultQueue`]) is plain data; what can be done with it is in
//! the file named after it (`ioas.rs`, `hwpt.rs`, `device.rs`, `fault.rs`).
//! The records sit here, below those files, so that every file can read every
//! record without the files naming each other in a circle.
//!
//! Two-phase create: [`Iommufd::reserve_id`] takes an id (a
//! [`Object::Pending`] slot: counted against the quota, invisible to
//! [`Iommufd::kind`] and [`Iommufd::len`]), the caller builds the object
//! (allocating, asking the unit), then [`Iommufd::publish`] puts it in the
//! slot (never allocates, cannot fail) or [`Iommufd::abort`] gives the id
//! back. A half-built object is never reachable by id.

use crate::error::{errno, nomem};
use crate::pages::Area;
use crate::ranges::Range;
use crate::shadow::{Shadow, ShadowLimits};
use abi::Errno;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ops::Bound;
use fallible::TryMap;
use iommu::{DeviceId, DomainId, Iommu};

/// The units, indexed as the kernel registered them.
pub type Units<'a> = &'a mut [Box<dyn Iommu>];

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

/// What an id of the table names.
#[derive(Debug)]
pub(crate) enum Object {
    /// An id taken by a create still in progress.
    Pending,
    /// An IOVA space (`ioas.rs`).
    Ioas(Ioas),
    /// A hardware page table (`hwpt.rs`).
    Hwpt(Hwpt),
    /// A bound device (`device.rs`).
    Device(Device),
    /// A fault queue (`fault.rs`).
    FaultQueue(FaultQueue),
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

/// An IOAS: an IOVA space of areas of pinned user pages (`ioas.rs`).
#[derive(Default)]
pub(crate) struct Ioas {
    /// The mappings, by first IOVA (they never overlap).
    pub(crate) areas: TryMap<u64, Area>,
    /// `[start, end)` wholly covered by back-to-back areas: the search for
    /// a kernel-chosen IOVA steps over it at once instead of walking each of
    /// its areas (so a map after a map is found in one step). A map at its
    /// end extends it; an unmap inside it cuts it there.
    pub(crate) run: (u64, u64),
    /// The ranges `allow_iovas` promised stay usable.
    pub(crate) allowed: Vec<Range>,
    /// The HWPTs mirroring it (automatic and kernel-managed user ones; not
    /// nested children).
    pub(crate) hwpts: Vec<u32>,
    /// Its hints.
    pub(crate) hints: Hints,
    /// What a map needs to place an area, kept between calls.
    pub(crate) placement: Placement,
}

/// What placing an area in an IOAS depends on besides its areas, as a map
/// last computed it: valid while `at` is the table's [`Iommufd::topology`]
/// (devices and HWPTs unchanged since; the units never change).
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The usable IOVA ranges (room for [`IOAS_USABLE_ROOM`] reserved at
    /// creation, so a map allocates nothing for them; more when devices
    /// reserve more holes, given back by [`Iommufd::shrink`]).
    pub(crate) usable: Vec<Range>,
    /// [`Iommufd::iova_alignment`].
    pub(crate) alignment: u64,
    /// [`Iommufd::page_sizes`].
    pub(crate) page_sizes: u64,
    /// The [`Iommufd::topology`] the rest was computed at (0: never).
    pub(crate) at: u64,
}

/// What an IOAS holds, without the [`Placement`] it keeps between calls (a
/// cache: the fail-nth tests compare this text before and after a failed
/// call, and a call may leave the cache filled).
impl core::fmt::Debug for Ioas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ioas")
            .field("areas", &self.areas)
            .field("run", &self.run)
            .field("allowed", &self.allowed)
            .field("hwpts", &self.hwpts)
            .field("hints", &self.hints)
            .finish_non_exhaustive()
    }
}

/// Usable ranges an IOAS keeps room for in [`Placement::usable`].
pub(crate) const IOAS_USABLE_ROOM: usize = 8;
/// Areas an IOAS keeps room for however few it holds (the areas map's floor).
pub(crate) const IOAS_AREAS_FLOOR: usize = 4;

impl Ioas {
    /// An empty IOAS with its room reserved (`ENOMEM` without): a map and
    /// unmap of one area, over and over, then allocates nothing.
    pub(crate) fn new() -> Result<Self, Errno> {
        let mut usable = Vec::new();
        usable.try_reserve_exact(IOAS_USABLE_ROOM).map_err(|_| Errno::ENOMEM)?;
        let areas = TryMap::with_floor(IOAS_AREAS_FLOOR).map_err(|_| Errno::ENOMEM)?;
        Ok(Ioas { areas, placement: Placement { usable, ..Placement::default() }, ..Ioas::default() })
    }

    /// The area at `at` left: the covered run ends there if it held it.
    pub(crate) fn cut_run(&mut self, at: u64) {
        Self::cut(&mut self.run, at);
    }

    /// [`Ioas::cut_run`] on the run alone (while the areas are borrowed).
    pub(crate) fn cut(run: &mut (u64, u64), at: u64) {
        if run.0 <= at && at < run.1 {
            run.1 = at;
        }
    }
}

/// How a HWPT came to be, which decides how it goes.
#[derive(Debug)]
pub(crate) enum HwptKind {
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
    Nested { parent: u32, shadow: Option<Shadow> },
}

/// A HWPT: a domain of one unit (`hwpt.rs`).
#[derive(Debug)]
pub(crate) struct Hwpt {
    /// The unit it is on.
    pub(crate) unit: usize,
    /// Its domain in that unit.
    pub(crate) domain: DomainId,
    /// The IOAS it mirrors; for a nested child, its parent's.
    pub(crate) ioas: u32,
    /// Devices attached to it.
    pub(crate) devices: u32,
    /// How it came to be.
    pub(crate) kind: HwptKind,
    /// The fault queue its devices' faults go to.
    pub(crate) fault_queue: Option<u32>,
}

impl Hwpt {
    /// Whether it mirrors its IOAS (and is on the IOAS's list).
    pub(crate) fn mirrors(&self) -> bool {
        !matches!(self.kind, HwptKind::Nested { .. })
    }
}

/// A bound device (`device.rs`).
#[derive(Debug)]
pub(crate) struct Device {
    /// The unit it sits behind.
    pub(crate) unit: usize,
    /// The ID that unit knows it by.
    pub(crate) id: DeviceId,
    /// The HWPT it is attached to (`None`: blocked).
    pub(crate) hwpt: Option<u32>,
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

/// A fault queue object (`fault.rs`).
#[derive(Debug)]
pub(crate) struct FaultQueue {
    /// Most records it holds.
    pub(crate) capacity: usize,
    /// Room for `capacity` records, reserved at creation: a delivery never allocates.
    pub(crate) records: VecDeque<FaultRecord>,
    /// Records dropped because the queue was full, since the last read.
    pub(crate) overflows: u64,
}

/// The object table of one task.
#[derive(Debug, Default)]
pub struct Iommufd {
    /// Every object, by id.
    pub(crate) objects: TryMap<u32, Object>,
    /// The last id handed out.
    next_id: u32,
    /// A device could not be blocked: no page may be unpinned any more.
    pub(crate) poisoned: bool,
    /// Bounds on shadowing work.
    pub(crate) limits: ShadowLimits,
    /// Per-task limits.
    pub(crate) quota: Quota,
    /// Pages pinned by the areas of every IOAS now.
    pub(crate) pinned: u64,
    /// Moves on whenever a device joins or leaves a HWPT, or a HWPT joins or
    /// leaves an IOAS ([`Iommufd::topology_changed`]): what an IOAS's usable
    /// ranges depend on besides the units, which never change. Starts at 1.
    pub(crate) topology: u64,
}

impl Iommufd {
    /// An empty table.
    pub fn new() -> Self {
        Self::with_quota(Quota::default())
    }

    /// An empty table with `quota`.
    pub fn with_quota(quota: Quota) -> Self {
        Iommufd { quota, topology: 1, ..Self::default() }
    }

    /// Forgets every IOAS's usable ranges: a device was attached or
    /// detached, or a HWPT added to or taken from an IOAS.
    pub(crate) fn topology_changed(&mut self) {
        self.topology = self.topology.wrapping_add(1).max(1);
    }

    /// The table's limits.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Pages the task's mappings pin now (copies count again).
    pub fn pinned_pages(&self) -> u64 {
        self.pinned
    }

    /// Gives back heap the table's maps no longer need (room they kept
    /// after entries left them, or reserved by a call that then failed:
    /// `fallible::TryMap::shrink`). For the end of a call; never fails.
    pub fn shrink(&mut self) {
        self.objects.shrink();
        for o in self.objects.values_mut() {
            match o {
                Object::Ioas(i) => {
                    i.areas.shrink();
                    if i.placement.usable.capacity() > IOAS_USABLE_ROOM {
                        let mut smaller = Vec::new();
                        if smaller.try_reserve_exact(IOAS_USABLE_ROOM).is_ok() {
                            i.placement = Placement { usable: smaller, ..Placement::default() };
                        }
                    }
                }
                Object::Hwpt(Hwpt { kind: HwptKind::Nested { shadow: Some(s), .. }, .. }) => s.shrink(),
                _ => {}
            }
        }
    }

    /// Takes the next id for a create (a pending slot): `EMFILE` past the
    /// quota, `ENOSPC` once ids ran out, `ENOMEM` without room in the table.
    pub(crate) fn reserve_id(&mut self) -> Result<u32, Errno> {
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
    pub(crate) fn reserve_with_domain(
        &mut self,
        alloc: impl FnOnce() -> Result<DomainId, iommu::Error>,
    ) -> Result<(u32, DomainId), Errno> {
        let obj = self.reserve_id()?;
        match alloc() {
            Ok(d) => Ok((obj, d)),
            Err(e) => {
                self.abort(obj);
                Err(errno(e))
            }
        }
    }

    /// Puts `object` in the slot [`Iommufd::reserve_id`] made (never allocates).
    pub(crate) fn publish(&mut self, id: u32, object: Object) -> u32 {
        if let Some(slot) = self.objects.get_mut(&id) {
            *slot = object;
        }
        id
    }

    /// Gives back an id [`Iommufd::reserve_id`] took, for a create that
    /// failed before [`Iommufd::publish`] (never allocates).
    pub(crate) fn abort(&mut self, id: u32) {
        self.objects.remove(&id);
    }

    /// The first object id after `after` (`None`: from the start) whose
    /// object `pick` accepts; walks without allocating.
    pub(crate) fn next_id_where(&self, after: Option<u32>, pick: impl Fn(&Object) -> bool) -> Option<u32> {
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

    /// IOAS `id` (`EINVAL`: another kind; `ENOENT`: no object).
    pub(crate) fn ioas(&self, id: u32) -> Result<&Ioas, Errno> {
        match self.objects.get(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// IOAS `id`, to change (errors as [`Iommufd::ioas`]).
    pub(crate) fn ioas_mut(&mut self, id: u32) -> Result<&mut Ioas, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// HWPT `id`, if it is one.
    pub(crate) fn hwpt(&self, id: u32) -> Option<&Hwpt> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(h)) => Some(h),
            _ => None,
        }
    }

    /// Device `id` (`EINVAL`: another kind; `ENOENT`: no object).
    pub(crate) fn device(&self, id: u32) -> Result<&Device, Errno> {
        match self.objects.get(&id) {
            Some(Object::Device(d)) => Ok(d),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }
}
