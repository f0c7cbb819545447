//! [`SmmuIommu`]: one SMMU behind the [`iommu::Iommu`] trait.
//!
//! Policy (as for the VT-d driver): SMMUEN stays off until the first device
//! is attached; just before it goes on, every other stream behind the SMMU
//! gets a bypass STE, so devices nobody claimed keep working; detaching puts
//! a stream back to bypass, and the last detach turns translation off.
//! Identity = bypass STE, blocked = abort STE (transactions end silently),
//! paging = stage 1 (a context descriptor with a fresh ASID) or, when the SMMU
//! has no stage 1 or stage 2 is asked for, stage 2 (a fresh VMID).

use crate::cd;
use crate::cmd::{self, Range, Scope};
use crate::ste;
use crate::unit::{Smmu, SmmuError};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use io_pgtable::formats::ArmLpae;
use io_pgtable::{Gather, PageTable, Perms};
use iommu::ids::IdAllocator;
use iommu::DmaMemory;
use iommu::{DeviceId, DomainId, DomainKind, Error, FaultEvent, Info, Iommu, Region, UnitKind, Unmapped};

/// Stage-1 tables: 4 levels, 48-bit input.
const S1_LEVELS: usize = 4;
/// Stage-2 tables: 3 levels, 39-bit input (within QEMU's 44-bit output limit).
const S2_LEVELS: usize = 3;

/// A paging domain's translation stage and its TLB tag.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// Stage 1 with its context descriptor frame.
    Asid { asid: u16, cd: u64 },
    /// Stage 2.
    Vmid(u16),
}

enum Slot {
    Paging { table: PageTable<ArmLpae>, tag: Tag },
    Identity,
    Blocked,
}

impl From<SmmuError> for Error {
    fn from(e: SmmuError) -> Self {
        match e {
            SmmuError::Timeout(what) => Error::Hardware(what),
            SmmuError::NoMemory => Error::NoMemory,
            SmmuError::Unsupported(what) => Error::NotSupported(what),
            SmmuError::BadStream(sid) => Error::NoSuchDevice(DeviceId(sid)),
            SmmuError::Command { .. } => Error::Hardware("SMMU command refused"),
            SmmuError::Map(e) => Error::from(e),
            SmmuError::NoTags => Error::NoDomainIds,
        }
    }
}

/// An SMMU driven through the generic IOMMU interface.
pub struct SmmuIommu<M: DmaMemory> {
    /// The hardware (driver-specific calls and tests reach it here).
    pub smmu: Smmu,
    /// Where tables and queues come from.
    pub mem: M,
    devices: Vec<u32>,
    reserved: Vec<(Option<u32>, Region)>,
    domains: BTreeMap<u32, Slot>,
    next_handle: u32,
    attached: BTreeMap<u32, DomainId>,
    asids: IdAllocator,
    vmids: IdAllocator,
    use_stage2: bool,
    flushes: u64,
}

impl<M: DmaMemory + Send + 'static> SmmuIommu<M> {
    /// Wraps an SMMU that was just brought up. `devices`: stream IDs behind it;
    /// `reserved`: its reserved regions, per stream or (`None`) for all;
    /// `prefer_stage2`: paging domains use stage 2 even when stage 1 exists.
    pub fn new(
        smmu: Smmu,
        mem: M,
        devices: Vec<u32>,
        reserved: Vec<(Option<u32>, Region)>,
        prefer_stage2: bool,
    ) -> Self {
        let use_stage2 = smmu.stage2() && (prefer_stage2 || !smmu.stage1());
        let (asids, vmids) = (IdAllocator::new(1 << smmu.asid_bits()), IdAllocator::new(1 << smmu.vmid_bits()));
        SmmuIommu {
            smmu,
            mem,
            devices,
            reserved,
            domains: BTreeMap::new(),
            next_handle: 1,
            attached: BTreeMap::new(),
            asids,
            vmids,
            use_stage2,
            flushes: 0,
        }
    }

    /// Stream IDs behind the SMMU.
    pub fn devices(&self) -> &[u32] {
        &self.devices
    }

    /// Whether paging domains use stage 2.
    pub fn uses_stage2(&self) -> bool {
        self.use_stage2
    }

    /// Whether translation is on (some device is attached).
    pub fn translating(&self) -> bool {
        !self.attached.is_empty()
    }

    fn input_bits(&self) -> u32 {
        if self.use_stage2 {
            12 + 9 * S2_LEVELS as u32
        } else {
            12 + 9 * S1_LEVELS as u32
        }
    }

    fn stream(&self, device: DeviceId) -> Result<u32, Error> {
        Some(device.0).filter(|s| self.devices.contains(s)).ok_or(Error::NoSuchDevice(device))
    }

    fn new_paging(&mut self) -> Result<Slot, Error> {
        if self.use_stage2 {
            let vmid = self.vmids.alloc().ok_or(Error::NoDomainIds)?;
            match PageTable::new(ArmLpae::stage2(S2_LEVELS), &mut self.mem) {
                Ok(table) => Ok(Slot::Paging { table, tag: Tag::Vmid(vmid) }),
                Err(e) => {
                    self.vmids.free(vmid);
                    Err(e.into())
                }
            }
        } else {
            let asid = self.asids.alloc().ok_or(Error::NoDomainIds)?;
            let fmt = ArmLpae::stage1(S1_LEVELS, cd::MAIR_CACHED, cd::MAIR_DEVICE);
            let (table, frame) = match (PageTable::new(fmt, &mut self.mem), self.mem.alloc_table()) {
                (Ok(t), Some(f)) => (t, f),
                (t, f) => {
                    if let Ok(t) = t {
                        t.destroy(&mut self.mem);
                    }
                    if let Some(f) = f {
                        self.mem.free_table(f);
                    }
                    self.asids.free(asid);
                    return Err(Error::NoMemory);
                }
            };
            let desc = cd::stage1(cd::Stage1 {
                asid,
                ttb0: table.root(),
                ias: self.input_bits(),
                ips: self.smmu.oas(),
                mair: cd::MAIR,
            });
            for (i, w) in desc.iter().enumerate() {
                self.mem.write(frame, i, *w);
            }
            Ok(Slot::Paging { table, tag: Tag::Asid { asid, cd: frame } })
        }
    }

    /// The STE that puts a stream in `domain`.
    fn ste_for(&self, domain: DomainId) -> Result<ste::Ste, Error> {
        match self.domains.get(&domain.0) {
            Some(Slot::Identity) => Ok(ste::bypass()),
            Some(Slot::Blocked) => Ok(ste::abort()),
            Some(Slot::Paging { tag: Tag::Asid { cd, .. }, .. }) => Ok(ste::stage1(*cd)),
            Some(Slot::Paging { table, tag: Tag::Vmid(vmid) }) => Ok(ste::stage2(ste::Stage2 {
                vmid: *vmid,
                ttb: table.root(),
                ias: self.input_bits(),
                levels: S2_LEVELS,
                ps: self.smmu.oas(),
            })),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    /// Before the first attach: bypass STEs for every other stream, then SMMUEN.
    fn start_translating(&mut self, except: u32) -> Result<(), Error> {
        for sid in self.devices.clone().into_iter().filter(|&s| s != except) {
            self.smmu.write_ste(sid, &ste::bypass(), &mut self.mem)?;
        }
        self.smmu.set_translation(true)?;
        log::info!("smmuv3: translation on ({} other stream(s) bypass)", self.devices.len() - 1);
        Ok(())
    }

    /// After the last detach: SMMUEN off, every STE invalid again.
    fn stop_translating(&mut self) {
        let _ = self.smmu.set_translation(false);
        for sid in self.devices.clone() {
            let _ = self.smmu.clear_ste(sid, &mut self.mem);
        }
        log::info!("smmuv3: translation off (no device attached)");
    }

    /// The TLB invalidation for `gather` in a domain tagged `tag`.
    fn invalidation(&self, tag: Tag, g: &Gather) -> cmd::Command {
        let ranged = self.smmu.range_invalidation();
        let range = Range::covering(g.start, g.end.max(g.start + 1));
        let scope = range.map(|range| Scope { range, ranged, leaf: g.freed.is_empty() });
        let one_page = range.is_some_and(|r| r.num == 0 && r.scale == 0);
        match (tag, scope) {
            (Tag::Asid { asid, .. }, Some(s)) if ranged || one_page => cmd::tlbi_nh_va(asid, s),
            (Tag::Vmid(vmid), Some(s)) if ranged || one_page => cmd::tlbi_s2_ipa(vmid, s),
            (Tag::Asid { asid, .. }, _) => cmd::tlbi_nh_asid(asid),
            (Tag::Vmid(vmid), _) => cmd::tlbi_s12_vmall(vmid),
        }
    }
}

impl<M: DmaMemory + Send + 'static> Iommu for SmmuIommu<M> {
    fn info(&self) -> Info {
        let mut raw: Vec<(&'static str, u64)> =
            ["IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5"].into_iter().zip(self.smmu.idr.map(u64::from)).collect();
        raw.push(("IIDR", u64::from(self.smmu.iidr)));
        raw.push(("AIDR", u64::from(self.smmu.aidr)));
        Info {
            kind: UnitKind::Smmuv3,
            raw,
            page_sizes: 1 << 12 | 1 << 21 | 1 << 30,
            aperture: (0, (1u64 << self.input_bits()) - 1),
            native_identity: true,
        }
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        let slot = match kind {
            DomainKind::Paging => self.new_paging()?,
            DomainKind::Identity => Slot::Identity,
            DomainKind::Blocked => Slot::Blocked,
        };
        let id = DomainId(self.next_handle);
        self.next_handle += 1;
        self.domains.insert(id.0, slot);
        Ok(id)
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        if self.attached.values().any(|d| *d == domain) {
            return Err(Error::Busy(domain));
        }
        if let Some(Slot::Paging { table, tag }) = self.domains.remove(&domain.0) {
            table.destroy(&mut self.mem);
            match tag {
                Tag::Asid { asid, cd } => {
                    let _ = self.smmu.submit(&[cmd::tlbi_nh_asid(asid)], &mut self.mem);
                    self.mem.free_table(cd);
                    self.asids.free(asid);
                }
                Tag::Vmid(vmid) => {
                    let _ = self.smmu.submit(&[cmd::tlbi_s12_vmall(vmid)], &mut self.mem);
                    self.vmids.free(vmid);
                }
            }
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        let sid = self.stream(device)?;
        let entry = self.ste_for(domain)?;
        let first = !self.translating();
        self.smmu.write_ste(sid, &entry, &mut self.mem)?;
        if first {
            if let Err(e) = self.start_translating(sid) {
                self.stop_translating();
                return Err(e);
            }
        }
        self.attached.insert(sid, domain);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        let sid = self.stream(device)?;
        if self.attached.remove(&sid).is_none() {
            return Ok(());
        }
        if self.attached.is_empty() {
            self.stop_translating();
            return Ok(());
        }
        Ok(self.smmu.write_ste(sid, &ste::bypass(), &mut self.mem)?)
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.attached.get(&device.0).copied()
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.devices.iter().map(|&s| DeviceId(s)).collect()
    }

    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        let top = (1u64 << self.input_bits()) - 1;
        if len > 0 && iova.checked_add(len - 1).is_none_or(|last| last > top) {
            return Err(Error::OutOfAperture { iova, len });
        }
        match self.domains.get_mut(&domain.0) {
            // New entries replace invalid ones, which the SMMU never caches:
            // nothing to invalidate (§3.21.3).
            Some(Slot::Paging { table, .. }) => {
                table.map(&mut self.mem, iova, pa, len, perms)?.release(&mut self.mem);
                Ok(())
            }
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        match self.domains.get_mut(&domain.0) {
            Some(Slot::Paging { table, .. }) => {
                let (bytes, gather) = table.unmap(&mut self.mem, iova, len)?;
                Ok(Unmapped { bytes, gather })
            }
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        let tag = match self.domains.get(&domain.0) {
            Some(Slot::Paging { tag, .. }) => *tag,
            other => {
                gather.release(&mut self.mem);
                return if other.is_some() { Ok(()) } else { Err(Error::NoSuchDomain(domain)) };
            }
        };
        if !gather.is_empty() {
            // One TLBI for the whole gather (a range when IDR3.RIL, else the
            // page or the whole ASID / VMID), then the CMD_SYNC `submit` adds.
            let c = self.invalidation(tag, &gather);
            self.flushes += 1;
            self.smmu.submit(&[c], &mut self.mem)?;
        }
        gather.release(&mut self.mem);
        Ok(())
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        match self.domains.get(&domain.0)? {
            Slot::Paging { table, .. } => table.iova_to_phys(&self.mem, iova),
            Slot::Identity => Some(iova),
            Slot::Blocked => None,
        }
    }

    /// Events of one faulting DMA are merged ([`iommu::coalesce_faults`]):
    /// QEMU queues one per 4-byte retry of a blocked transfer.
    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        let events = self.smmu.take_events(&self.mem).into_iter().map(|e| FaultEvent {
            device: DeviceId(e.stream),
            address: e.address,
            access: iommu::Access::from_write(!e.read),
            reason: u32::from(e.kind.0),
            reason_name: e.kind.name(),
        });
        iommu::coalesce_faults(events).into_iter().map(|(f, _)| f).collect()
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        self.reserved.iter().filter(|(d, _)| d.is_none_or(|d| d == device.0)).map(|(_, r)| *r).collect()
    }

    fn flushes(&self) -> u64 {
        self.flushes
    }

    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let Some(Slot::Paging { table, .. }) = self.domains.get(&domain.0) else { return Vec::new() };
        let mut sizes = Vec::new();
        let end = iova.saturating_add(len);
        table.for_each_mapping(&self.mem, &mut |at, size, _, _| {
            if at < end && iova < at + size {
                sizes.push(size);
            }
        });
        iommu::count_leaves(sizes)
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}
