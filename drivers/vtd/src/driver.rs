//! [`VtdIommu`]: one remapping unit behind the [`iommu::Iommu`] trait.
//!
//! Policy:
//! - **Default deny.** [`VtdIommu::new`] points every device behind the unit
//!   at the *blocking* entry and turns translation on: from then on no device
//!   reaches memory unless it is attached to a domain, and detaching a
//!   device puts it back on the blocking entry. Translation is never turned
//!   off again; a requester ID the firmware did not list has no context
//!   entry at all, which blocks it too (fault "context entry not present").
//! - The blocking entry is a present context (or PASID) entry whose page
//!   table is empty and never mapped, under a domain ID of its own: every
//!   DMA faults at the first level of the walk. Blocked domains
//!   ([`DomainKind::Blocked`]) all use it.
//! - The identity domain is native (context TT = 10b / PGTT = 100b) when the
//!   unit has ECAP.PT; otherwise it is a page table mapping the machine's RAM
//!   one to one, so identity never fails for lack of a feature.
//! - RMRR regions (direct-map reserved regions) of a device are identity-mapped
//!   into every paging domain it joins, before its context entry points there
//!   (VT-d §8.4: the firmware may keep such DMA running across the handover).
//! - The hardware-specific door takes `hwpt_data::VTD_ATTRS` only: a paging
//!   domain with a chosen stage, address width and snoop control
//!   ([`crate::user_data::hwpt_config`]); a request the unit cannot honour is
//!   refused with the reason logged. Each paging domain has its own
//!   aperture (its input width); [`Info::aperture`] is the default domains'.
//! - **Interrupt remapping** ([`VtdIommu::enable_interrupt_remapping`]): a
//!   table whose entries are all not present, so every remappable interrupt
//!   is blocked (fault 22h) until [`Iommu::msi_remap`] fills one entry per
//!   (device, vector), checked against the device's requester ID (SVT = 01b,
//!   all 16 bits). Compatibility-format interrupts are blocked (CFI clear).
//!   An entry is cleared and its cache line invalidated before its handle is
//!   reused; a handle whose invalidation failed is never reused.

use crate::config::DomainConfig;
use crate::intremap::{self, Destination, IrTable, Irte, RemappedIrte};
use crate::unit::{Domain, Unit, VtdError};
use crate::user_data;
use crate::FaultRecord;
use alloc::vec::Vec;
use fallible::TryMap;
use io_pgtable::{Gather, Perms, TableMemory};
use iommu::{
    DeviceId, DmaMemory, DomainId, DomainKind, Error, FaultEvent, Info, Iommu, MsiMessage, MsiTarget, Region, UnitKind,
    Unmapped,
};

const PAGE: u64 = 4096;
/// IRTA.S of the interrupt remapping table: 2^8 = 256 entries, one frame.
const IR_SIZE_FIELD: u8 = 7;

/// The page table of paging domain `domain`.
fn paging(domains: &mut TryMap<u32, Slot>, domain: DomainId) -> Result<&mut Domain, Error> {
    match domains.get_mut(&domain.0) {
        Some(Slot::Paging(d)) => Ok(d),
        Some(_) => Err(Error::NotPaging(domain)),
        None => Err(Error::NoSuchDomain(domain)),
    }
}

enum Slot {
    /// A second-level or first-stage page table.
    Paging(Domain),
    /// Native pass-through, tagged with a domain ID.
    PassThrough(u16),
    /// Emulated identity: a page table mapping RAM 1:1.
    IdentityMapped(Domain),
    /// No translation allowed.
    Blocked,
}

/// A VT-d unit driven through the generic IOMMU interface.
pub struct VtdIommu<M: TableMemory> {
    /// The hardware unit (driver-specific calls and tests reach it here).
    pub unit: Unit,
    /// Where its tables come from.
    pub mem: M,
    devices: Vec<u16>,
    reserved: Vec<(Option<u16>, Region)>,
    ram: Vec<(u64, u64)>,
    domains: TryMap<u32, Slot>,
    next_handle: u32,
    attached: TryMap<u16, DomainId>,
    /// The empty page table every blocked device points at.
    blocking: Domain,
    /// The interrupt remapping table, once remapping is on.
    ir: Option<IrTable>,
    /// The table handle of each remapped (requester ID, vector).
    msi_handles: TryMap<(u16, u8), u16>,
}

impl From<VtdError> for Error {
    fn from(e: VtdError) -> Self {
        match e {
            VtdError::Timeout(what) => Error::Hardware(what),
            VtdError::NoMemory => Error::NoMemory,
            VtdError::NoAddressWidth => Error::NotSupported("no usable address width in CAP.SAGAW"),
            VtdError::Map(e) => Error::from(e),
            VtdError::NoDomainId => Error::NoDomainIds,
            VtdError::Queue { .. } => Error::Hardware("invalidation queue error"),
            VtdError::NoQueue => Error::NotSupported("queued invalidation"),
            VtdError::NotSupported(what) => Error::NotSupported(what),
            VtdError::RegisterOutsideWindow { .. } | VtdError::RegistersOverlap { .. } => {
                Error::Hardware("register offsets outside the register window")
            }
        }
    }
}

impl<M: DmaMemory + Send + 'static> VtdIommu<M> {
    /// Takes a unit that was just brought up (translation off), points every
    /// device in `devices` at the blocking entry and turns translation on
    /// (default deny). On failure translation stays off and the error says why.
    ///
    /// `devices`: requester IDs behind the unit; `reserved`: its reserved
    /// regions, per device or (`None`) for all; `ram`: `[start, end)` ranges of
    /// memory an emulated identity domain maps.
    pub fn new(
        mut unit: Unit,
        mut mem: M,
        devices: Vec<u16>,
        reserved: Vec<(Option<u16>, Region)>,
        ram: Vec<(u64, u64)>,
    ) -> Result<Self, Error> {
        let blocking = unit.alloc_domain(&mut mem)?;
        let mut v = VtdIommu {
            unit,
            mem,
            devices,
            reserved,
            ram,
            domains: TryMap::new(),
            next_handle: 1,
            attached: TryMap::new(),
            blocking,
            ir: None,
            msi_handles: TryMap::new(),
        };
        for rid in v.devices.clone() {
            v.unit.attach(rid, &v.blocking, &mut v.mem)?;
        }
        v.unit.enable()?;
        log::info!("vtd: translation on, {} device(s) blocked until attached", v.devices.len());
        Ok(v)
    }

    /// Turns interrupt remapping on with an empty table: from here on no
    /// device behind the unit raises an interrupt it was not given by
    /// [`Iommu::msi_remap`]. Needs ECAP.IR and the invalidation queue. On an
    /// error remapping may be half set up; the table is then never freed
    /// (the unit may read it), and interrupts stay as they were.
    pub fn enable_interrupt_remapping(&mut self) -> Result<(), Error> {
        if self.ir.is_some() {
            return Ok(());
        }
        if !self.unit.interrupt_remapping_supported() {
            return Err(Error::NotSupported("interrupt remapping (ECAP.IR clear)"));
        }
        if !self.unit.queued() {
            return Err(Error::NotSupported("interrupt remapping without the invalidation queue"));
        }
        let table = IrTable::new(&mut self.mem, IR_SIZE_FIELD).ok_or(Error::NoMemory)?;
        // xAPIC destinations (EIME clear): the kernel runs its local APIC in xAPIC mode.
        let irta = table.irta_value(false);
        if let Err(e) = self.unit.set_interrupt_table(irta, &mut self.mem) {
            core::mem::forget(table);
            return Err(e.into());
        }
        if let Err(e) = self.unit.enable_interrupt_remapping() {
            core::mem::forget(table);
            return Err(e.into());
        }
        log::info!(
            "vtd: interrupt remapping on: {} entries at {:#x}, all blocked until given; compatibility format blocked",
            table.entries(),
            table.base()
        );
        self.ir = Some(table);
        Ok(())
    }

    /// The interrupt remapping entry of `handle` (`None`: remapping off or
    /// out of range), for tests.
    pub fn irte(&self, handle: u16) -> Option<Irte> {
        self.ir.as_ref().and_then(|t| t.get(&self.mem, handle))
    }

    /// The handle remapping `rid`'s interrupt to `vector`, for tests.
    pub fn msi_handle(&self, rid: u16, vector: u8) -> Option<u16> {
        self.msi_handles.get(&(rid, vector)).copied()
    }

    /// Points `rid` at the blocking entry again (after a test drove the
    /// unit's context entries directly).
    pub fn block(&mut self, rid: u16) -> Result<(), Error> {
        Ok(self.unit.attach(rid, &self.blocking, &mut self.mem)?)
    }

    /// Requester IDs behind the unit.
    pub fn devices(&self) -> &[u16] {
        &self.devices
    }

    /// Whether some device is attached to a domain (translation itself is
    /// always on: the others are blocked).
    pub fn translating(&self) -> bool {
        !self.attached.is_empty()
    }

    /// Lowest and highest IOVA a default paging domain translates (4-level
    /// first stage: the lower canonical half; second stage: the table's
    /// width within MGAW + 1).
    fn default_aperture(&self) -> (u64, u64) {
        self.unit.default_config().aperture()
    }

    /// The configuration of paging domain `domain` (`None` for other kinds).
    pub fn domain_config(&self, domain: DomainId) -> Option<DomainConfig> {
        match self.domains.get(&domain.0) {
            Some(Slot::Paging(d)) => Some(d.config),
            _ => None,
        }
    }

    /// Lowest and highest IOVA `domain` translates: its own input width for
    /// a paging domain, the default domains' aperture for the other kinds.
    pub fn domain_aperture(&self, domain: DomainId) -> (u64, u64) {
        self.domain_config(domain).map_or_else(|| self.default_aperture(), |c| c.aperture())
    }

    fn rid(&self, device: DeviceId) -> Result<u16, Error> {
        u16::try_from(device.0).ok().filter(|r| self.devices.contains(r)).ok_or(Error::NoSuchDevice(device))
    }

    /// Room for one more domain, reserved before a slot is built so that
    /// [`Self::insert`] never allocates.
    fn reserve_domain(&mut self) -> Result<(), Error> {
        self.domains.try_reserve(1).map_err(|_| Error::NoMemory)
    }

    fn insert(&mut self, slot: Slot) -> DomainId {
        let id = DomainId(self.next_handle);
        self.next_handle += 1;
        // Room reserved by the caller (`reserve_domain`): no allocation.
        let _ = self.domains.try_insert(id.0, slot);
        id
    }

    /// A page table mapping every RAM range 1:1, read/write.
    fn identity_table(&mut self) -> Result<Domain, Error> {
        let mut d = self.unit.alloc_domain(&mut self.mem)?;
        let top = self.default_aperture().1;
        for &(start, end) in &self.ram {
            let (s, e) = (start & !(PAGE - 1), end.next_multiple_of(PAGE).min(top.saturating_add(1)));
            if s < e {
                if let Err(err) = self.unit.map(&mut d, s, s, e - s, Perms::READ | Perms::WRITE, &mut self.mem) {
                    self.drop_table(d);
                    return Err(err.into());
                }
            }
        }
        Ok(d)
    }

    fn drop_table(&mut self, d: Domain) {
        let id = d.id;
        d.table.destroy(&mut self.mem);
        let _ = self.unit.invalidate_domain(id, &mut self.mem);
        self.unit.free_domain_id(id);
    }

    /// Points `rid` at what `domain` stands for in the hardware.
    fn program(&mut self, rid: u16, domain: DomainId) -> Result<(), Error> {
        let unit = &mut self.unit;
        match self.domains.get(&domain.0) {
            Some(Slot::Paging(d)) | Some(Slot::IdentityMapped(d)) => unit.attach(rid, d, &mut self.mem)?,
            Some(Slot::PassThrough(id)) => unit.attach_pass_through(rid, *id, &mut self.mem)?,
            Some(Slot::Blocked) => unit.attach(rid, &self.blocking, &mut self.mem)?,
            None => return Err(Error::NoSuchDomain(domain)),
        }
        Ok(())
    }

    fn raw_regs(&self) -> [(&'static str, u64); 2] {
        [("CAP", self.unit.cap), ("ECAP", self.unit.ecap)]
    }

    fn info_with(&self, raw: Vec<(&'static str, u64)>) -> Info {
        Info {
            kind: UnitKind::Vtd,
            raw,
            page_sizes: self.page_sizes(),
            aperture: self.default_aperture(),
            native_identity: self.unit.pass_through_supported(),
        }
    }

    fn record_event(r: FaultRecord) -> FaultEvent {
        FaultEvent {
            device: DeviceId(u32::from(r.source_id)),
            address: r.address,
            access: if r.reason.is_interrupt() { iommu::Access::Interrupt } else { iommu::Access::from_write(r.write) },
            reason: u32::from(r.reason.0),
            reason_name: r.reason.name(),
        }
    }
}

impl<M: DmaMemory + Send + 'static> Iommu for VtdIommu<M> {
    fn describe(&self, what: iommu::describe::Describe, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        use iommu::describe::Describe;
        let written = match what {
            Describe::Registers => crate::describe::registers(&self.unit, out),
            Describe::Device(device) => {
                crate::describe::device(crate::describe::Tables::of(&self.unit), &self.mem, self.rid(device)?, out)
            }
            Describe::Walk { device, iova } => {
                crate::describe::walk(crate::describe::Tables::of(&self.unit), &self.mem, self.rid(device)?, iova, out)
            }
        };
        written.map_err(|_| Error::NoMemory)
    }

    fn info(&self) -> Info {
        self.info_with(iommu::raw_regs(&self.raw_regs()).unwrap_or_default())
    }

    fn try_info(&self) -> Result<Info, Error> {
        Ok(self.info_with(iommu::raw_regs(&self.raw_regs())?))
    }

    fn kind(&self) -> UnitKind {
        UnitKind::Vtd
    }

    fn page_sizes(&self) -> u64 {
        (0..=self.unit.domain_max_leaf_level()).map(|l| 1u64 << (12 + 9 * l)).sum()
    }

    fn aperture(&self) -> (u64, u64) {
        self.default_aperture()
    }

    fn serves(&self, device: DeviceId) -> bool {
        self.rid(device).is_ok()
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        self.reserve_domain()?;
        let slot = match kind {
            DomainKind::Paging => Slot::Paging(self.unit.alloc_domain(&mut self.mem)?),
            DomainKind::Blocked => Slot::Blocked,
            DomainKind::Identity if self.unit.pass_through_supported() => {
                Slot::PassThrough(self.unit.alloc_domain_id().ok_or(Error::NoDomainIds)?)
            }
            DomainKind::Identity => {
                log::info!("vtd: no ECAP.PT: the identity domain is a page table mapping RAM 1:1");
                Slot::IdentityMapped(self.identity_table()?)
            }
        };
        Ok(self.insert(slot))
    }

    fn domain_alloc_user(&mut self, data_type: u32, data: &[u8], parent: Option<DomainId>) -> Result<DomainId, Error> {
        let config = user_data::hwpt_config(self.unit.cap, self.unit.ecap, self.unit.stage, data_type, data, parent)
            .inspect_err(|e| log::warn!("vtd: HWPT refused: {e}"))?;
        self.reserve_domain()?;
        let d = self.unit.alloc_domain_with(config, &mut self.mem)?;
        let id = self.insert(Slot::Paging(d));
        log::info!("vtd: HWPT domain {}: {}", id.0, config.display());
        Ok(id)
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        if self.attached.values().any(|d| *d == domain) {
            return Err(Error::Busy(domain));
        }
        match self.domains.remove(&domain.0) {
            Some(Slot::Paging(d)) | Some(Slot::IdentityMapped(d)) => self.drop_table(d),
            Some(Slot::PassThrough(id)) => {
                let _ = self.unit.invalidate_domain(id, &mut self.mem);
                self.unit.free_domain_id(id);
            }
            Some(Slot::Blocked) | None => {}
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        let rid = self.rid(device)?;
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        if matches!(self.domains.get(&domain.0), Some(Slot::Paging(_))) {
            iommu::map_direct_regions(self, device, domain)?;
        }
        // Room for the record before the context entry changes.
        if !self.attached.contains_key(&rid) {
            self.attached.try_reserve(1).map_err(|_| Error::NoMemory)?;
        }
        if let Err(e) = self.program(rid, domain) {
            // Whatever the failure left in the entry, the device goes back to
            // the blocking entry if the unit still answers.
            let _ = self.block(rid);
            self.attached.remove(&rid);
            return Err(e);
        }
        let _ = self.attached.try_insert(rid, domain); // reserved: no allocation
        Ok(())
    }

    /// Points the device at the blocking entry; the context-cache and IOTLB
    /// invalidations that follow complete before this returns (queued
    /// invalidation waits for its wait descriptor, register invalidation for
    /// the ICC / IVT bits).
    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        let rid = self.rid(device)?;
        self.block(rid)?;
        self.attached.remove(&rid);
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
        let top = self.domain_aperture(domain).1;
        let beyond = |iova: u64, len: u64| len > 0 && iova.checked_add(len - 1).is_none_or(|last| last > top);
        let mut runs = runs.peekable();
        // A first run outside the aperture is refused before the domain is looked at.
        if let Some(&(iova, _, len)) = runs.peek().filter(|&&(iova, _, len)| beyond(iova, len)) {
            return Err((Error::OutOfAperture { iova, len }, 0));
        }
        let d = paging(&mut self.domains, domain).map_err(|e| (e, 0))?;
        // The runs up to the first outside the aperture (which stops the map).
        let outside = core::cell::Cell::new(None);
        let mut in_aperture = core::iter::from_fn(|| {
            let (iova, pa, len) = runs.next()?;
            if beyond(iova, len) {
                outside.set(Some((iova, len)));
                return None;
            }
            Some((iova, pa, len))
        });
        let r = self.unit.map_runs(d, &mut in_aperture, perms, &mut self.mem).map_err(|(e, n)| (Error::from(e), n));
        match (r, outside.get()) {
            (Err(e), _) => Err(e),
            // Stopped at a run outside the aperture (the ones before it are mapped and flushed).
            (Ok(n), Some((iova, len))) => Err((Error::OutOfAperture { iova, len }, n)),
            (Ok(_), None) => Ok(()),
        }
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        let d = paging(&mut self.domains, domain)?;
        let (bytes, gather) = d.table.unmap(&mut self.mem, iova, len)?;
        Ok(Unmapped { bytes, gather })
    }

    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        let id = match self.domains.get(&domain.0) {
            Some(Slot::Paging(d)) => d.id,
            Some(_) => {
                gather.release(&mut self.mem);
                return Ok(());
            }
            None => {
                // The frames were taken from a table of this unit: give them back anyway.
                gather.release(&mut self.mem);
                return Err(Error::NoSuchDomain(domain));
            }
        };
        Ok(self.unit.flush(id, gather, &mut self.mem)?)
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        match self.domains.get(&domain.0)? {
            Slot::Paging(d) | Slot::IdentityMapped(d) => d.table.iova_to_phys(&self.mem, iova),
            Slot::PassThrough(_) => Some(iova),
            Slot::Blocked => None,
        }
    }

    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        let mut v = Vec::new();
        self.drain_faults_with(&mut |f| v.push(f));
        v
    }

    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        // One fault-recording register per CAP.NFR + 1; bounded by that count
        // per call so a device faulting without pause cannot keep us here.
        for _ in 0..=crate::regs::CAP::NFR.read(self.unit.cap) {
            match self.unit.take_fault() {
                Some(r) => f(Self::record_event(r)),
                None => break,
            }
        }
    }

    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        let rid = u16::try_from(device.0).ok();
        self.reserved.iter().filter(|(d, _)| d.is_none() || *d == rid).for_each(|(_, r)| f(*r));
    }

    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        let Some(Slot::Paging(d)) = self.domains.get(&domain.0) else { return };
        iommu::for_each_table_leaf_size(|g| d.table.for_each_mapping(&self.mem, g), iova, len, f);
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        let rid = u16::try_from(device.0).ok();
        self.reserved.iter().filter(|(d, _)| d.is_none() || *d == rid).map(|(_, r)| *r).collect()
    }

    fn shrink(&mut self) {
        self.domains.shrink();
        self.attached.shrink();
        self.msi_handles.shrink();
    }

    fn flushes(&self) -> u64 {
        self.unit.invalidations
    }

    fn remaps_interrupts(&self) -> bool {
        self.ir.is_some()
    }

    fn msi_remap(&mut self, device: DeviceId, target: MsiTarget) -> Result<Option<MsiMessage>, Error> {
        if self.ir.is_none() {
            return Ok(None);
        }
        let rid = self.rid(device)?;
        let cpu = u8::try_from(target.cpu).map_err(|_| Error::NotSupported("x2APIC destinations (EIME)"))?;
        let Some(table) = self.ir.as_mut() else { return Ok(None) };
        let key = (rid, target.vector);
        // Room for the record before an entry is taken.
        self.msi_handles.try_reserve(1).map_err(|_| Error::NoMemory)?;
        let handle = match self.msi_handles.get(&key) {
            Some(&h) => h,
            None => table.alloc().ok_or(Error::NotSupported("a free interrupt remapping entry (table full)"))?,
        };
        let irte = Irte::remapped(&RemappedIrte::fixed(target.vector, Destination::XApic(cpu), rid));
        if table.set(&mut self.mem, handle, irte).is_err() {
            return Err(Error::Hardware("interrupt remapping entry out of range"));
        }
        let _ = self.msi_handles.try_insert(key, handle); // reserved: no allocation
                                                          // A replaced entry may sit in the entry cache; a new one costs one descriptor.
        self.unit.invalidate_interrupt_entry(handle, &mut self.mem)?;
        Ok(Some(MsiMessage { address: u64::from(intremap::msi_address(handle)), data: intremap::msi_data() }))
    }

    fn msi_unmap(&mut self, device: DeviceId, vector: u8) -> Result<(), Error> {
        let rid = self.rid(device)?;
        let Some(table) = self.ir.as_mut() else { return Ok(()) };
        let Some(handle) = self.msi_handles.remove(&(rid, vector)) else { return Ok(()) };
        if table.clear(&mut self.mem, handle).is_err() {
            return Err(Error::Hardware("interrupt remapping entry out of range"));
        }
        // Only once the unit has dropped the cached entry may the handle go
        // to another device; a failed invalidation keeps it taken for good.
        self.unit.invalidate_interrupt_entry(handle, &mut self.mem)?;
        if let Some(table) = self.ir.as_mut() {
            let _ = table.free(&mut self.mem, handle);
        }
        Ok(())
    }

    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let Some(Slot::Paging(d)) = self.domains.get(&domain.0) else { return Vec::new() };
        iommu::table_leaves(|f| d.table.for_each_mapping(&self.mem, f), iova, len)
    }

    fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> Result<(), iommu::Error> {
        self.unit.describe_queue(out).map_err(|_| iommu::Error::NoMemory)
    }

    fn tracer(&self) -> iommu::trace::Tracer {
        self.unit.tracer()
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}
