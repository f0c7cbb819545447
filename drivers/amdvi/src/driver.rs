//! [`AmdViIommu`]: one AMD-Vi unit behind the [`iommu::Iommu`] trait.
//!
//! Policy:
//! - **Default deny.** The unit is enabled at bring-up ([`crate::unit`]) with
//!   every DTE blocked (valid, no translation, IR = IW = 0), so no device
//!   reaches memory until it is attached; [`Iommu::detach`] puts a device
//!   back there. "Translating" ([`AmdViIommu::translating`]) means some
//!   device is attached.
//! - Paging = a 4-level AMD v1 host page table (48-bit IOVAs; §2.2.3) with
//!   IR = IW = 1 in the DTE, identity = DTE Mode 0 with IR = IW = 1, blocked =
//!   DTE Mode 0 with IR = IW = 0 (§2.2.2). Every domain has its own DomainID,
//!   so the translations QEMU caches for identity domains can be dropped too.
//! - Kernel-managed HWPTs with driver attributes ([`Iommu::domain_alloc_user`]
//!   with `hwpt_data::AMDVI_ATTRS`) are paging domains whose level count (1–6,
//!   at most what EFR.HATS allows, §3.4.1) the task chose: it becomes the
//!   domain's DTE Mode and bounds its aperture (12 + 9 × levels bits) for
//!   `map`; [`Iommu::info`] keeps describing the unit's default domains.
//! - A device's direct-map regions (IVMD unity ranges) are identity-mapped
//!   into every paging domain it joins, before its DTE points there.
//! - map does not invalidate: the IOMMU keeps no translation for an absent
//!   entry (QEMU never caches a failed walk, `amdvi_update_iotlb`). Units
//!   whose PCI capability sets NpCache do; [`AmdViIommu::set_flush_on_map`]
//!   covers them. unmap hands back a gather; flush sends one
//!   INVALIDATE_IOMMU_PAGES for the range it covers (QEMU drops the whole
//!   domain either way, `amdvi_inval_pages`).
//! - drain_faults returns the events that report a refused device request
//!   (IO_PAGE_FAULT, ILLEGAL_DEV_TABLE_ENTRY, INVALID_DEVICE_REQUEST) with the
//!   event code as the reason; the unit's own troubles (hardware errors,
//!   refused commands, IOTLB timeouts) are logged as warnings. QEMU 10.0
//!   never writes its event log (QEMU.md G2), so there it always returns nothing.
//! - **Interrupt remapping** ([`AmdViIommu::enable_interrupt_remapping`]):
//!   every DTE gets IV = 1 with IntCtl = 00b and no pass bits, so every
//!   interrupt of every DeviceID is target-aborted (§2.2.5) until
//!   [`Iommu::msi_remap`] gives a device its own 16-entry table (IntCtl =
//!   10b) with one entry per vector. Entry 0 is never used; a cleared entry's
//!   index is reused only after INVALIDATE_INTERRUPT_TABLE completed. When a
//!   device's last vector is unmapped its DTE goes back to abort and, once
//!   that is invalidated, its table is freed. DTE changes for DMA (attach,
//!   detach) keep the interrupt fields.
//! - **Extra entries per device** ([`AmdViIommu::with_dte_aliases`]): a unit
//!   that looks a device's DMA up under another DeviceID as well (QEMU 10.0,
//!   [`crate::qemu`]) gets that entry written exactly like the device's own on
//!   attach and blocked with it on detach. Devices that share an entry share
//!   a translation: attaching one to another domain than a sharer is attached
//!   to is refused ([`Error::Busy`] of the sharer's domain), and a sharer
//!   whose every entry a detach blocked is no longer attached. Who shares an
//!   entry must be one IOMMU group (`iommu::groups`); the driver only keeps
//!   the entries consistent.

use crate::cmd::{self, PageRange};
use crate::dte::{self, Dte};
use crate::error::AmdViError;
use crate::intremap::{self, AmdIrTable, IrteFormat, RemapFields};
use crate::unit::AmdVi;
use crate::user_data;
use abi::iommufd::hwpt_data;
use alloc::vec::Vec;
use fallible::TryMap;
use io_pgtable::formats::AmdV1;
use io_pgtable::{Format, Gather, PageTable, Perms};
use iommu::ids::IdAllocator;
use iommu::DmaMemory;
use iommu::{
    DeviceId, DomainId, DomainKind, Error, FaultEvent, Info, Iommu, MsiMessage, MsiTarget, Region, UnitKind, Unmapped,
};

/// IntTabLen of the per-device interrupt tables: 16 entries (one per vector
/// a device may be given, index 0 unused).
const IR_LEN_LOG2: u8 = 4;

/// Interrupt remapping state, once it is on.
struct Remapping {
    /// Each device's interrupt table (made at its first `msi_remap`).
    tables: TryMap<u16, AmdIrTable>,
    /// The table index of each remapped (DeviceID, vector).
    indices: TryMap<(u16, u8), u16>,
}

/// Page-table levels of paging domains (DTE Mode 4: 48-bit IOVAs).
pub use crate::dte::LEVELS;

/// Most levels a host page table can have (DTE Mode 1–6, §2.2.2).
pub const MAX_LEVELS: usize = 6;

/// IOVA bits a host page table of `levels` levels translates: 12 + 9 per
/// level, the whole 64-bit space from 6 levels on.
pub fn iova_bits(levels: usize) -> u32 {
    AmdV1 { levels }.ia_bits()
}

/// The last IOVA a host page table of `levels` levels translates.
pub fn last_iova(levels: usize) -> u64 {
    match iova_bits(levels) {
        64.. => u64::MAX,
        bits => (1u64 << bits) - 1,
    }
}

/// Domain tags: 15 bits of index spread over 16-bit DomainIDs.
const TAG_INDICES: u32 = 1 << 15;

/// The DomainID for allocation index `index` (1 ..= 0x7FFF): the index with
/// a zero inserted at bit 8. QEMU 10.0 takes DTE qword-1 bit 8, which is
/// DomainID bit 8, for a reserved bit (`AMDVI_DTE_MIDDLE_QUAD_RESERVED` =
/// 0x100; later QEMU clears that mask) and refuses such entries, so IDs with
/// bit 8 set are never used. Never 0 for a non-zero index.
pub fn domain_tag(index: u16) -> u16 {
    (index & 0xFF) | ((index >> 8) << 9)
}

fn tag_index(tag: u16) -> u16 {
    (tag & 0xFF) | ((tag >> 9) << 8)
}

impl From<AmdViError> for Error {
    fn from(e: AmdViError) -> Self {
        match e {
            AmdViError::Timeout(what) => Error::Hardware(what),
            AmdViError::NoMemory => Error::NoMemory,
            AmdViError::Unsupported(what) => Error::NotSupported(what),
            AmdViError::Command { .. } => Error::Hardware("AMD-Vi command refused"),
            AmdViError::RegisterOutsideWindow { .. } => Error::Hardware("registers outside the register window"),
        }
    }
}

enum Slot {
    Paging(PageTable<AmdV1>),
    Identity,
    Blocked,
}

struct Domain {
    slot: Slot,
    /// The hardware DomainID (IOTLB tag).
    tag: u16,
}

/// An AMD-Vi unit driven through the generic IOMMU interface.
pub struct AmdViIommu<M: DmaMemory> {
    /// The hardware (driver-specific calls and tests reach it here).
    pub unit: AmdVi,
    /// Where tables come from.
    pub mem: M,
    devices: Vec<u16>,
    /// (device, another DeviceID the unit looks its DMA up under).
    aliases: Vec<(u16, u16)>,
    reserved: Vec<(Option<u16>, Region)>,
    domains: TryMap<u32, Domain>,
    next_handle: u32,
    attached: TryMap<u16, DomainId>,
    tags: IdAllocator,
    flushes: u64,
    flush_on_map: bool,
    ir: Option<Remapping>,
}

/// Leaf sizes of paging domains: 4 KiB, 2 MiB, 1 GiB.
const PAGE_SIZES: u64 = 1 << 12 | 1 << 21 | 1 << 30;

/// `device`'s own device-table entry, then its extra ones from `aliases`.
fn entries(aliases: &[(u16, u16)], device: u16) -> impl Iterator<Item = u16> + Clone + '_ {
    core::iter::once(device).chain(aliases.iter().filter(move |a| a.0 == device).map(|a| a.1))
}

impl<M: DmaMemory + Send + 'static> AmdViIommu<M> {
    /// Wraps a unit that was just brought up. `devices`: DeviceIDs (requester
    /// IDs after aliasing) behind it; `reserved`: its reserved regions, per
    /// device or (`None`) for all.
    pub fn new(unit: AmdVi, mem: M, devices: Vec<u16>, reserved: Vec<(Option<u16>, Region)>) -> Self {
        AmdViIommu {
            unit,
            mem,
            devices,
            aliases: Vec::new(),
            reserved,
            domains: TryMap::new(),
            next_handle: 1,
            attached: TryMap::new(),
            tags: IdAllocator::new(TAG_INDICES),
            flushes: 0,
            flush_on_map: false,
            ir: None,
        }
    }

    /// Turns interrupt remapping on: every DeviceID's interrupts are
    /// target-aborted until [`Iommu::msi_remap`] gives it an entry. Call only
    /// on a unit that remaps interrupts (firmware names its I/O APIC): QEMU
    /// drops every interrupt of a DTE with IV = 1 when its `intremap` is off.
    pub fn enable_interrupt_remapping(&mut self) -> Result<(), Error> {
        if self.ir.is_some() {
            return Ok(());
        }
        self.unit.set_all_interrupt_fields(intremap::DTE_IV, &mut self.mem)?;
        self.ir = Some(Remapping { tables: TryMap::new(), indices: TryMap::new() });
        log::info!("amdvi: interrupt remapping on: every DeviceID's interrupts blocked until given");
        Ok(())
    }

    /// The table index remapping `rid`'s interrupt to `vector`, for tests.
    pub fn msi_index(&self, rid: u16, vector: u8) -> Option<u16> {
        self.ir.as_ref().and_then(|r| r.indices.get(&(rid, vector)).copied())
    }

    /// The entry at `index` of `rid`'s interrupt table, for tests.
    pub fn irte(&self, rid: u16, index: u16) -> Option<intremap::AmdIrte> {
        self.ir.as_ref().and_then(|r| r.tables.get(&rid)).and_then(|t| t.get(&self.mem, index))
    }

    /// DeviceIDs behind the unit.
    pub fn devices(&self) -> &[u16] {
        &self.devices
    }

    /// Also program DeviceID `alias` whenever device `device` is attached or
    /// detached, for each `(device, alias)`: for a unit that translates the
    /// device's DMA through `alias`'s entry (or may). Pairs naming a device
    /// that is not behind the unit, or the device itself, are left out with a
    /// warning. The devices that share an entry this way must be grouped by
    /// the caller. Call before any device is attached.
    pub fn with_dte_aliases(mut self, aliases: Vec<(u16, u16)>) -> Self {
        for (device, alias) in aliases {
            if !self.devices.contains(&device) {
                log::warn!("amdvi: extra entry {alias:#06x} for {device:#06x} ignored: no such device behind the unit");
            } else if alias == device {
                log::warn!("amdvi: extra entry {alias:#06x} for {device:#06x} ignored: it is the device's own");
            } else if !self.aliases.contains(&(device, alias)) {
                self.aliases.push((device, alias));
            }
        }
        self
    }

    /// The extra DeviceIDs programmed with `device` ([`Self::with_dte_aliases`]).
    pub fn dte_aliases(&self, device: u16) -> Vec<u16> {
        self.aliases.iter().filter(|a| a.0 == device).map(|a| a.1).collect()
    }

    /// Every device-table entry that holds `device`'s translation: its own,
    /// then its extra ones.
    fn entries_of(&self, device: u16) -> impl Iterator<Item = u16> + Clone + '_ {
        entries(&self.aliases, device)
    }

    /// An attached device other than `device` that shares an entry with it
    /// and is in another domain than `domain`, and that domain.
    fn conflicting_sharer(&self, device: u16, domain: DomainId) -> Option<(u16, DomainId)> {
        let mine = self.entries_of(device);
        self.attached
            .iter()
            .filter(|&(&other, &theirs)| other != device && theirs != domain)
            .find(|&(&other, _)| self.entries_of(other).any(|id| mine.clone().any(|m| m == id)))
            .map(|(&other, &theirs)| (other, theirs))
    }

    /// Whether any device is attached (its DMA translated or checked).
    pub fn translating(&self) -> bool {
        !self.attached.is_empty()
    }

    /// Invalidate the mapped range after every map, for units that cache
    /// not-present entries (PCI capability header NpCache = 1).
    pub fn set_flush_on_map(&mut self, on: bool) {
        self.flush_on_map = on;
    }

    /// The hardware DomainID of `domain`.
    pub fn domain_tag(&self, domain: DomainId) -> Option<u16> {
        self.domains.get(&domain.0).map(|d| d.tag)
    }

    /// Page-table levels of paging domain `domain` (its DTE Mode): [`LEVELS`]
    /// unless it was made by [`Iommu::domain_alloc_user`] with other levels.
    pub fn domain_levels(&self, domain: DomainId) -> Option<usize> {
        match &self.domains.get(&domain.0)?.slot {
            Slot::Paging(table) => Some(table.format().levels),
            Slot::Identity | Slot::Blocked => None,
        }
    }

    /// The last IOVA of the default paging domains (the unit's aperture).
    fn top(&self) -> u64 {
        (1u64 << (12 + 9 * LEVELS)) - 1
    }

    /// The last IOVA `domain` can map: its own table's reach for a paging
    /// domain, the unit's aperture for any other (or unknown) handle.
    fn domain_top(&self, domain: DomainId) -> u64 {
        self.domain_levels(domain).map_or(self.top(), last_iova)
    }

    /// Maps `[iova, iova + len)` → `pa` in paging domain `domain` without the
    /// flush on map; returns the domain's tag for that flush.
    fn map_unflushed(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<u16, Error> {
        let top = self.domain_top(domain);
        if len > 0 && iova.checked_add(len - 1).is_none_or(|last| last > top) {
            return Err(Error::OutOfAperture { iova, len });
        }
        match self.domains.get_mut(&domain.0) {
            Some(Domain { slot: Slot::Paging(table), tag }) => {
                table.map(&mut self.mem, iova, pa, len, perms)?.release(&mut self.mem);
                Ok(*tag)
            }
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    /// The level count a task asked for (`HwptAmdviAttrs.levels`), checked
    /// against the DTE Mode encoding and what this unit walks (EFR.HATS).
    fn requested_levels(&self, levels: u32) -> Result<usize, Error> {
        let max = self.unit.max_levels();
        match usize::try_from(levels) {
            Ok(0) => Ok(LEVELS),
            Ok(n @ 1..=MAX_LEVELS) if n <= max => Ok(n),
            Ok(n @ 1..=MAX_LEVELS) => {
                log::warn!("amdvi: HWPT refused: {n} page-table levels, the unit walks at most {max} (EFR.HATS)");
                Err(Error::NotSupported("levels"))
            }
            _ => {
                log::warn!("amdvi: HWPT refused: {levels} page-table levels, DTE Mode allows 1-{MAX_LEVELS}");
                Err(Error::InvalidData("levels"))
            }
        }
    }

    /// A new domain of `kind`; a paging one gets a table of `levels` levels.
    fn alloc(&mut self, kind: DomainKind, levels: usize) -> Result<DomainId, Error> {
        // Room for the handle first: nothing below can fail after the table.
        self.domains.try_reserve(1).map_err(|_| Error::NoMemory)?;
        let tag = domain_tag(self.tags.alloc().ok_or(Error::NoDomainIds)?);
        let slot = match kind {
            DomainKind::Paging => match PageTable::new(AmdV1 { levels }, &mut self.mem) {
                Ok(t) => Slot::Paging(t),
                Err(e) => {
                    self.tags.free(tag_index(tag));
                    return Err(e.into());
                }
            },
            DomainKind::Identity => Slot::Identity,
            DomainKind::Blocked => Slot::Blocked,
        };
        let id = DomainId(self.next_handle);
        self.next_handle += 1;
        // Room reserved above: this insert does not allocate.
        if self.domains.try_insert(id.0, Domain { slot, tag }).is_err() {
            return Err(Error::NoMemory);
        }
        Ok(id)
    }

    fn rid(&self, device: DeviceId) -> Result<u16, Error> {
        u16::try_from(device.0).ok().filter(|r| self.devices.contains(r)).ok_or(Error::NoSuchDevice(device))
    }

    /// The DTE that puts a device in `domain`.
    fn dte_for(&self, domain: DomainId) -> Result<Dte, Error> {
        let d = self.domains.get(&domain.0).ok_or(Error::NoSuchDomain(domain))?;
        Ok(match &d.slot {
            Slot::Paging(table) => dte::paging(table.root(), table.format().levels, d.tag),
            Slot::Identity => dte::identity(d.tag),
            Slot::Blocked => self.unit.blocked_dte(d.tag),
        })
    }

    /// Sends one INVALIDATE_IOMMU_PAGES for `range` of the domain tagged `tag`.
    fn invalidate(&mut self, tag: u16, range: PageRange, pde: bool) -> Result<(), Error> {
        self.flushes += 1;
        Ok(self.unit.submit(&[cmd::invalidate_iommu_pages(tag, range, pde)], &mut self.mem)?)
    }

    fn raw_regs(&self) -> [(&'static str, u64); 3] {
        [("EFR", self.unit.efr()), ("CONTROL", self.unit.control()), ("STATUS", self.unit.status())]
    }

    fn info_with(&self, raw: Vec<(&'static str, u64)>) -> Info {
        Info { kind: UnitKind::AmdVi, raw, page_sizes: PAGE_SIZES, aperture: (0, self.top()), native_identity: true }
    }

    fn fault_event(e: &crate::event::Event) -> FaultEvent {
        FaultEvent {
            device: DeviceId(u32::from(e.device.unwrap_or(0))),
            address: e.address,
            access: iommu::Access::from_write(e.write()),
            reason: u32::from(e.code.0),
            reason_name: e.code.name(),
        }
    }
}

impl<M: DmaMemory + Send + 'static> Iommu for AmdViIommu<M> {
    fn describe(&self, what: iommu::describe::Describe, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        use crate::describe as d;
        use iommu::describe::Describe;
        let written = match what {
            Describe::Registers => d::registers(&self.unit, out),
            Describe::Device(device) => {
                let devid = self.rid(device)?;
                d::device(&self.unit.dte(devid, &self.mem), devid, out)
            }
            Describe::Walk { device, iova } => {
                let devid = self.rid(device)?;
                d::walk(&self.unit.dte(devid, &self.mem), &self.mem, devid, iova, out)
            }
        };
        written.map_err(|_| Error::NoMemory)
    }

    fn info(&self) -> Info {
        let raw = iommu::raw_regs(&self.raw_regs()).unwrap_or_default();
        self.info_with(raw)
    }

    fn try_info(&self) -> Result<Info, Error> {
        Ok(self.info_with(iommu::raw_regs(&self.raw_regs())?))
    }

    fn kind(&self) -> UnitKind {
        UnitKind::AmdVi
    }

    fn page_sizes(&self) -> u64 {
        PAGE_SIZES
    }

    fn aperture(&self) -> (u64, u64) {
        (0, self.top())
    }

    fn serves(&self, device: DeviceId) -> bool {
        self.rid(device).is_ok()
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        self.alloc(kind, LEVELS)
    }

    /// A kernel-managed paging domain with driver attributes
    /// (`hwpt_data::AMDVI_ATTRS`, `HwptAmdviAttrs`): `levels` 0 means
    /// [`LEVELS`], 1–6 are taken when EFR.HATS allows them. Fewer levels give
    /// a smaller aperture (3: 39-bit IOVAs, 2: 30-bit, 1: 21-bit with 4 KiB
    /// leaves only). AMD-Vi v1 tables have no nested form here: `parent` is refused.
    fn domain_alloc_user(&mut self, data_type: u32, data: &[u8], parent: Option<DomainId>) -> Result<DomainId, Error> {
        if data_type != hwpt_data::AMDVI_ATTRS {
            log::warn!("amdvi: HWPT refused: data type {data_type} (this unit takes {})", hwpt_data::AMDVI_ATTRS);
            return Err(Error::NotSupported("data type"));
        }
        if let Some(p) = parent {
            log::warn!("amdvi: HWPT refused: a nested HWPT under domain {} (AMD-Vi attributes make none)", p.0);
            return Err(Error::NotSupported("AMD-Vi has no nested HWPT of this type"));
        }
        let attrs = user_data::decode_attrs(data)?;
        let levels = self.requested_levels(attrs.levels)?;
        let id = self.alloc(DomainKind::Paging, levels)?;
        log::info!("amdvi: HWPT domain {}: {levels} levels ({}-bit IOVAs)", id.0, iova_bits(levels));
        Ok(id)
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        if self.attached.values().any(|d| *d == domain) {
            return Err(Error::Busy(domain));
        }
        // Nothing points at the domain any more (detach invalidated each DTE):
        // drop whatever the IOTLB still holds under its tag before the tag and
        // the table frames can be reused. If that fails the domain stays.
        let tag = self.domains.get(&domain.0).map_or(0, |d| d.tag);
        self.unit.submit(&[cmd::invalidate_iommu_pages(tag, PageRange::ALL, true)], &mut self.mem)?;
        if let Some(d) = self.domains.remove(&domain.0) {
            if let Slot::Paging(table) = d.slot {
                table.destroy(&mut self.mem);
            }
            self.tags.free(tag_index(d.tag));
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        let rid = self.rid(device)?;
        if let Some((other, theirs)) = self.conflicting_sharer(rid, domain) {
            log::warn!(
                "amdvi: {rid:#06x} not attached to domain {}: {other:#06x} shares a device-table entry with it and is attached to domain {}",
                domain.0,
                theirs.0
            );
            return Err(Error::Busy(theirs));
        }
        if matches!(self.domains.get(&domain.0).map(|d| &d.slot), Some(Slot::Paging(_))) {
            iommu::map_direct_regions(self, device, domain)?;
        }
        let entry = self.dte_for(domain)?;
        // Room for the record before the hardware changes.
        if !self.attached.contains_key(&rid) {
            self.attached.try_reserve(1).map_err(|_| Error::NoMemory)?;
        }
        let ids = entries(&self.aliases, rid);
        for (written, id) in ids.clone().enumerate() {
            // Each entry keeps its own interrupt fields (qword 2).
            let mut e = entry;
            e.q2 = self.unit.dte(id, &self.mem).q2;
            if let Err(err) = self.unit.set_dte(id, &e, &mut self.mem) {
                if written > 0 {
                    // Half moved: fail closed, every entry of the device blocked.
                    for id in ids.clone() {
                        let mut b = self.unit.blocked_dte(dte::BLOCKED_TAG);
                        b.q2 = self.unit.dte(id, &self.mem).q2;
                        let _ = self.unit.set_dte(id, &b, &mut self.mem);
                    }
                    self.attached.remove(&rid);
                }
                return Err(err.into());
            }
        }
        // Room reserved above (or the key is there): no allocation.
        let _ = self.attached.try_insert(rid, domain);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        let rid = self.rid(device)?;
        // Per entry INVALIDATE_DEVTAB_ENTRY and the old domain's
        // INVALIDATE_IOMMU_PAGES, then a COMPLETION_WAIT: the unit has dropped
        // the old entries when this returns. Every entry is tried, even after
        // one failed; each keeps its own interrupt fields (qword 2).
        let ids = entries(&self.aliases, rid);
        let mut failed = None;
        for id in ids.clone() {
            let mut b = self.unit.blocked_dte(dte::BLOCKED_TAG);
            b.q2 = self.unit.dte(id, &self.mem).q2;
            if let Err(e) = self.unit.set_dte(id, &b, &mut self.mem) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.attached.remove(&rid);
        // A sharer whose every entry was just blocked (the host bridge whose
        // own entry is `rid`'s extra one) is no longer attached to anything.
        let aliases = &self.aliases;
        self.attached.retain(|&o, _| !entries(aliases, o).all(|id| ids.clone().any(|i| i == id)));
        Ok(())
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        u16::try_from(device.0).ok().and_then(|r| self.attached.get(&r).copied())
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.devices.iter().map(|&r| DeviceId(u32::from(r))).collect()
    }

    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        self.map_runs(domain, &mut core::iter::once((iova, pa, len)), perms).map_err(|(e, _)| e)
    }

    fn map_runs(
        &mut self,
        domain: DomainId,
        runs: &mut dyn Iterator<Item = (u64, u64, u64)>,
        perms: Perms,
    ) -> Result<(), (Error, usize)> {
        // Where the unit asks for a flush on map: one invalidation of the
        // span of all the runs mapped.
        let (mut lo, mut hi, mut done, mut tag) = (u64::MAX, 0u64, 0usize, None);
        let mut failed = None;
        for (iova, pa, len) in runs {
            iommu::trace!(
                self.unit.tracer(),
                "map domain={:#x} iova={iova:#x} pa={pa:#x} len={len:#x} {perms:?}",
                domain.0
            );
            match self.map_unflushed(domain, iova, pa, len, perms) {
                Ok(t) => {
                    (lo, hi, tag) = (lo.min(iova), hi.max(iova + len), Some(t));
                    done += 1;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let (true, Some(t)) = (self.flush_on_map, tag) {
            self.invalidate(t, PageRange::covering(lo, hi), false).map_err(|e| (e, done))?;
        }
        failed.map_or(Ok(()), |e| Err((e, done)))
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        match self.domains.get_mut(&domain.0).map(|d| &mut d.slot) {
            Some(Slot::Paging(table)) => {
                let (bytes, gather) = table.unmap(&mut self.mem, iova, len)?;
                Ok(Unmapped { bytes, gather })
            }
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        let tag = match self.domains.get(&domain.0) {
            Some(Domain { slot: Slot::Paging(_), tag }) => *tag,
            other => {
                gather.release(&mut self.mem);
                return if other.is_some() { Ok(()) } else { Err(Error::NoSuchDomain(domain)) };
            }
        };
        if !gather.is_empty() {
            // One command for the whole gather: the smallest aligned power of
            // two covering it, or the whole domain when only tables were
            // freed; PDE as well when tables were freed.
            let range =
                if gather.start < gather.end { PageRange::covering(gather.start, gather.end) } else { PageRange::ALL };
            self.invalidate(tag, range, gather.has_freed_tables())?;
        }
        gather.release(&mut self.mem);
        Ok(())
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        match &self.domains.get(&domain.0)?.slot {
            Slot::Paging(table) => table.iova_to_phys(&self.mem, iova),
            Slot::Identity => Some(iova),
            Slot::Blocked => None,
        }
    }

    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        let mut out = Vec::new();
        self.drain_faults_with(&mut |f| out.push(f));
        out
    }

    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        self.unit.take_events_with(&self.mem, &mut |e| {
            if e.is_request_fault() {
                f(Self::fault_event(&e));
            } else {
                log::warn!("amdvi: {e}");
            }
        });
    }

    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        let rid = u16::try_from(device.0).ok();
        self.reserved.iter().filter(|(d, _)| d.is_none() || *d == rid).for_each(|(_, r)| f(*r));
    }

    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        let Some(Domain { slot: Slot::Paging(table), .. }) = self.domains.get(&domain.0) else { return };
        iommu::for_each_table_leaf_size(|g| table.for_each_mapping(&self.mem, g), iova, len, f);
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        let rid = u16::try_from(device.0).ok();
        self.reserved.iter().filter(|(d, _)| d.is_none() || *d == rid).map(|(_, r)| *r).collect()
    }

    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let Some(Domain { slot: Slot::Paging(table), .. }) = self.domains.get(&domain.0) else { return Vec::new() };
        iommu::table_leaves(|f| table.for_each_mapping(&self.mem, f), iova, len)
    }

    fn remaps_interrupts(&self) -> bool {
        self.ir.is_some()
    }

    fn msi_remap(&mut self, device: DeviceId, target: MsiTarget) -> Result<Option<MsiMessage>, Error> {
        if self.ir.is_none() {
            return Ok(None);
        }
        let rid = self.rid(device)?;
        let Some(ir) = self.ir.as_mut() else { return Ok(None) };
        // Room in both maps before anything changes.
        ir.indices.try_reserve(1).map_err(|_| Error::NoMemory)?;
        let fresh = !ir.tables.contains_key(&rid);
        if fresh {
            ir.tables.try_reserve(1).map_err(|_| Error::NoMemory)?;
            let t = AmdIrTable::new(&mut self.mem, IR_LEN_LOG2, IrteFormat::Legacy).ok_or(Error::NoMemory)?;
            // Reserved: no allocation.
            let _ = ir.tables.try_insert(rid, t);
        }
        let Some(table) = ir.tables.get_mut(&rid) else { return Err(Error::NoMemory) };
        let key = (rid, target.vector);
        let index = match ir.indices.get(&key) {
            Some(&i) => i,
            None => table.alloc().ok_or(Error::NotSupported("a free interrupt remapping entry (table full)"))?,
        };
        if table.set(&mut self.mem, index, &RemapFields::fixed(target.vector, target.cpu)).is_err() {
            let _ = table.free(&mut self.mem, index);
            return Err(Error::NotSupported("destinations above APIC ID 255 (x2APIC, GA mode)"));
        }
        let _ = ir.indices.try_insert(key, index); // reserved: no allocation
        let fields = table.dte_fields(true);
        if fresh {
            self.unit.set_interrupt_fields(rid, fields, &mut self.mem)?;
        } else {
            self.unit.invalidate_interrupt_table(rid, &mut self.mem)?;
        }
        Ok(Some(MsiMessage { address: u64::from(intremap::msi_address(false)), data: intremap::msi_data(index) }))
    }

    fn msi_unmap(&mut self, device: DeviceId, vector: u8) -> Result<(), Error> {
        let rid = self.rid(device)?;
        let Some(ir) = self.ir.as_mut() else { return Ok(()) };
        let Some(index) = ir.indices.remove(&(rid, vector)) else { return Ok(()) };
        let Some(table) = ir.tables.get_mut(&rid) else { return Ok(()) };
        if table.clear(&mut self.mem, index).is_err() {
            return Err(Error::Hardware("interrupt remapping entry out of range"));
        }
        // The index goes back to the pool only once the IOMMU has dropped
        // its cached copy; a failed invalidation keeps it taken for good.
        self.unit.invalidate_interrupt_table(rid, &mut self.mem)?;
        if let Some(table) = self.ir.as_mut().and_then(|ir| ir.tables.get_mut(&rid)) {
            let _ = table.free(&mut self.mem, index);
        }
        // The device's last vector: its DTE goes back to abort (as remapping
        // left every DTE), and once the unit has dropped the cached entry the
        // table is freed, so a device routed once holds nothing for good.
        if self.ir.as_ref().is_some_and(|ir| !ir.indices.keys().any(|&(r, _)| r == rid)) {
            self.unit.set_interrupt_fields(rid, intremap::DTE_IV, &mut self.mem)?;
            if let Some(t) = self.ir.as_mut().and_then(|ir| ir.tables.remove(&rid)) {
                t.destroy(&mut self.mem);
            }
        }
        Ok(())
    }

    fn shrink(&mut self) {
        self.domains.shrink();
        self.attached.shrink();
        if let Some(ir) = self.ir.as_mut() {
            ir.tables.shrink();
            ir.indices.shrink();
        }
    }

    fn flushes(&self) -> u64 {
        self.flushes
    }

    fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        self.unit.describe_queue(out).map_err(|_| Error::NoMemory)
    }

    fn tracer(&self) -> iommu::trace::Tracer {
        self.unit.tracer()
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}
