//! [`VirtioIommu`]: one virtio-iommu behind the [`iommu::Iommu`] trait.
//!
//! The device keeps the mappings (there is no page table in guest memory);
//! the driver mirrors every domain in a sorted map (IOVA → end, physical
//! address, flags) for `iova_to_phys`, `leaves` and its own checks.
//!
//! **Domain lifetime.** In QEMU (`hw/virtio/virtio-iommu.c`) a domain exists
//! only while an endpoint is attached to it: ATTACH creates it
//! (`virtio_iommu_get_domain`), and when DETACH (`virtio_iommu_detach`) or an
//! ATTACH that moves the endpoint elsewhere (`virtio_iommu_attach`) leaves it
//! without endpoints, `g_tree_remove` destroys it together with its
//! mappings (`virtio_iommu_put_domain`); MAP and UNMAP on a domain that does
//! not exist answer NOENT. The generic layer, however, maps into a paging
//! domain before any device is attached and keeps the domain across
//! detach/attach. So the mirror is the source of truth: MAP / UNMAP reach the
//! device only while the domain has an endpoint, and the first endpoint
//! attached to a domain replays its mappings (one MAP each). Between that
//! ATTACH and the end of the replay the endpoint's DMA faults; the generic
//! layer attaches devices before starting their DMA, so nothing is lost.
//!
//! **Domains.** IDs come from the device's `domain_range`; a [`DomainId`] is
//! the device's domain ID. Identity = ATTACH with the BYPASS flag when
//! VIRTIO_IOMMU_F_BYPASS_CONFIG was negotiated, otherwise a domain with one
//! mapping of the whole input range onto itself. Blocked = a domain with no
//! mappings: DMA raises "mapping fault" events.
//!
//! **Default state: blocked.** The device layer writes `config.bypass` = 0
//! (and never negotiates the legacy BYPASS feature), and [`VirtioIommu::new`]
//! attaches every endpoint to a *blocking* domain of its own with no
//! mappings: its DMA raises mapping faults. Detaching moves an endpoint back
//! there (one ATTACH; QEMU answers it synchronously, after which the old
//! domain's translations no longer apply to it).
//!
//! **Map and unmap.** QEMU checks neither alignment nor the input range
//! (`virtio_iommu_map`), so the driver does: IOVA, physical address and
//! length aligned to the smallest page of `page_size_mask`, the range inside
//! `input_range`. A MAP is one request for the whole range; an UNMAP removes
//! whole mappings only (a range that cuts one is refused before anything is
//! sent, as QEMU would answer RANGE). UNMAP is synchronous and the device has
//! dropped the translations when it answers, so `flush` sends nothing; it
//! counts one flush per non-empty gather so [`Iommu::flushes`] reports
//! invalidations per unmap call like the page-table drivers.
//!
//! **Heap.** Every allocation on a syscall path is fallible and answers
//! [`Error::NoMemory`] with nothing changed: requests are encoded on the
//! stack into the buffer allocated at bring-up, and each call reserves room
//! in the mirror's tables ([`TryMap`]) before the device is told anything,
//! so once a request reached the device the bookkeeping that follows cannot
//! fail. Only bring-up ([`VirtioIommu::new`]: PROBE replies, the reserved
//! regions) and the `Vec` forms of the trait (`devices`, `reserved_regions`,
//! `drain_faults`, `leaves`) use the heap otherwise.

use crate::device::{VirtioError, VirtioIommuDevice};
use crate::request::{self, feature, map_flags};
use alloc::vec::Vec;
use fallible::TryMap;
use io_pgtable::Gather;
use iommu::{
    DeviceId, DmaMemory, DomainId, DomainKind, Error, FaultEvent, Info, Iommu, Perms, Region, UnitKind, Unmapped,
};

/// What a domain is on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Translated through the mirrored mappings.
    Paging,
    /// ATTACH with the BYPASS flag.
    Bypass,
    /// Identity emulated with one mapping of the whole input range.
    IdentityMapped,
    /// No mappings at all.
    Blocked,
}

/// One mapping: `[start, end]` → `pa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    /// Last IOVA (inclusive).
    end: u64,
    pa: u64,
    flags: u32,
}

#[derive(Debug)]
struct Domain {
    kind: Kind,
    /// Start IOVA → mapping.
    mappings: TryMap<u64, Mapping>,
    /// Attached endpoints (a map without values, for `try_reserve`); the
    /// device holds the domain exactly while this is not empty.
    endpoints: TryMap<u32, ()>,
}

/// Mappings a paging domain keeps room for however few it holds: one
/// mapping made and taken down, over and over, allocates nothing.
const MAPPINGS_FLOOR: usize = 4;

impl Domain {
    fn new(kind: Kind) -> Domain {
        Domain { kind, mappings: TryMap::new(), endpoints: TryMap::new() }
    }

    /// A paging domain: [`Domain::new`] with room for [`MAPPINGS_FLOOR`] mappings reserved.
    fn paging() -> Result<Domain, Error> {
        let mappings = TryMap::with_floor(MAPPINGS_FLOOR).map_err(no_memory)?;
        Ok(Domain { kind: Kind::Paging, mappings, endpoints: TryMap::new() })
    }
}

fn no_memory(_: fallible::AllocError) -> Error {
    Error::NoMemory
}

/// Sends the requests that rebuild domain `id` (`d`) on the device after it
/// was (re)created; the number of mappings replayed.
fn replay(dev: &mut VirtioIommuDevice, mem: &mut impl DmaMemory, id: u32, d: &Domain) -> Result<usize, VirtioError> {
    match d.kind {
        Kind::Paging => {
            for (&s, m) in d.mappings.iter() {
                dev.send(&request::map(id, s, m.end, m.pa, m.flags), mem)?;
            }
            Ok(d.mappings.len())
        }
        Kind::IdentityMapped => {
            let (lo, hi) = dev.config.input_range;
            dev.send(&request::map(id, lo, hi, lo, map_flags::READ | map_flags::WRITE), mem)?;
            Ok(1)
        }
        Kind::Bypass | Kind::Blocked => Ok(0),
    }
}

/// A virtio-iommu driven through the generic IOMMU interface.
pub struct VirtioIommu<M: DmaMemory> {
    /// The device (driver-specific calls and tests reach it here).
    pub dev: VirtioIommuDevice,
    /// Where queues and request buffers live.
    pub mem: M,
    endpoints: Vec<u32>,
    reserved: TryMap<u32, Vec<Region>>,
    domains: TryMap<u32, Domain>,
    /// Endpoint → the domain it is attached to (the blocking one included).
    attached: TryMap<u32, u32>,
    /// The domain every endpoint not attached elsewhere sits in.
    blocking: u32,
    flushes: u64,
}

impl<M: DmaMemory + Send + 'static> VirtioIommu<M> {
    /// Wraps a device that was just brought up. `endpoints`: the endpoint IDs
    /// (PCI requester IDs) behind it. With VIRTIO_IOMMU_F_PROBE each endpoint
    /// is probed now and its reserved regions kept (an endpoint the device
    /// does not know gets none).
    ///
    /// Then every endpoint is attached to the blocking domain (default deny);
    /// an endpoint the device does not know (NOENT) is logged and skipped
    /// (with bypass off its DMA faults anyway).
    pub fn new(dev: VirtioIommuDevice, mem: M, endpoints: Vec<u32>) -> Result<Self, Error> {
        let mut s = VirtioIommu {
            dev,
            mem,
            endpoints,
            reserved: TryMap::new(),
            domains: TryMap::new(),
            attached: TryMap::new(),
            blocking: 0,
            flushes: 0,
        };
        s.blocking = s.free_domain_id().ok_or(Error::NoDomainIds)?;
        s.domains.try_insert(s.blocking, Domain::new(Kind::Blocked)).map_err(no_memory)?;
        if s.dev.has(feature::PROBE) {
            for ep in s.endpoints.clone() {
                match s.dev.probe(ep, &mut s.mem) {
                    Ok(regions) => {
                        s.reserved.try_insert(ep, regions).map_err(no_memory)?;
                    }
                    Err(VirtioError::Status { status: request::status::NOENT, .. }) => {
                        log::debug!("virtio-iommu: PROBE {ep:#x}: no such endpoint");
                    }
                    Err(e) => log::warn!("virtio-iommu: PROBE {ep:#x}: {e}"),
                }
            }
        }
        for ep in s.endpoints.clone() {
            match s.attach(DeviceId(ep), DomainId(s.blocking)) {
                Ok(()) => {}
                Err(Error::NoSuchDevice(_)) => {
                    log::warn!("virtio-iommu: endpoint {ep:#x} unknown to the device (its DMA faults: bypass is off)")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(s)
    }

    /// The blocking domain's ID (for tests and logs).
    pub fn blocking_domain(&self) -> DomainId {
        DomainId(self.blocking)
    }

    /// The endpoints behind the device.
    pub fn endpoints(&self) -> &[u32] {
        &self.endpoints
    }

    /// Whether the device currently holds `domain` (it has an endpoint attached).
    pub fn domain_live(&self, domain: DomainId) -> bool {
        self.domains.get(&domain.0).is_some_and(|d| !d.endpoints.is_empty())
    }

    /// Mappings in the driver's mirror of `domain`.
    pub fn mapping_count(&self, domain: DomainId) -> usize {
        self.domains.get(&domain.0).map_or(0, |d| d.mappings.len())
    }

    fn endpoint(&self, device: DeviceId) -> Result<u32, Error> {
        Some(device.0).filter(|e| self.endpoints.contains(e)).ok_or(Error::NoSuchDevice(device))
    }

    fn granule(&self) -> u64 {
        self.dev.granule()
    }

    /// The lowest free domain ID in `domain_range` (0 only if it is the sole ID).
    fn free_domain_id(&self) -> Option<u32> {
        let (lo, hi) = self.dev.config.domain_range;
        let mut candidate = if hi == 0 { 0 } else { lo.max(1) };
        for &taken in self.domains.range(candidate..=hi).map(|(k, _)| k) {
            if taken != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        (candidate <= hi).then_some(candidate)
    }

    /// Alignment, emptiness and input-range checks; the last IOVA.
    fn check_range(&self, iova: u64, len: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::Map(io_pgtable::Error::Empty));
        }
        let g = self.granule();
        if !iova.is_multiple_of(g) || !len.is_multiple_of(g) {
            return Err(Error::Map(io_pgtable::Error::Unaligned));
        }
        let (lo, hi) = self.dev.config.input_range;
        match iova.checked_add(len - 1) {
            Some(last) if iova >= lo && last <= hi => Ok(last),
            _ => Err(Error::OutOfAperture { iova, len }),
        }
    }

    /// Room for every record an attach of `ep` to `domain` may write: the
    /// attach record, the endpoint in `domain` and (should the replay fail)
    /// in the blocking domain. Taken before the device hears of the attach.
    fn reserve_attach(&mut self, ep: u32, domain: u32) -> Result<(), Error> {
        if !self.attached.contains_key(&ep) {
            self.attached.try_reserve(1).map_err(no_memory)?;
        }
        for id in [domain, self.blocking] {
            if let Some(d) = self.domains.get_mut(&id) {
                d.endpoints.try_reserve(1).map_err(no_memory)?;
            }
        }
        Ok(())
    }

    /// Records `ep` in `domain` (room reserved by [`Self::reserve_attach`]:
    /// nothing here allocates); whether the domain had no endpoint before.
    fn record_attach(&mut self, ep: u32, domain: u32) -> bool {
        // Reserved: these inserts do not allocate and cannot fail.
        let _ = self.attached.try_insert(ep, domain);
        self.domains.get_mut(&domain).is_some_and(|d| {
            let fresh = d.endpoints.is_empty();
            let _ = d.endpoints.try_insert(ep, ());
            fresh
        })
    }

    const RAW_NAMES: [&'static str; 6] =
        ["FEATURES", "PAGE_SIZE_MASK", "INPUT_START", "INPUT_END", "DOMAIN_START", "DOMAIN_END"];

    fn raw_regs(&self) -> [(&'static str, u64); 6] {
        let c = &self.dev.config;
        let values = [
            self.dev.features,
            c.page_size_mask,
            c.input_range.0,
            c.input_range.1,
            u64::from(c.domain_range.0),
            u64::from(c.domain_range.1),
        ];
        core::array::from_fn(|i| (Self::RAW_NAMES[i], values[i]))
    }

    fn info_with(&self, raw: Vec<(&'static str, u64)>) -> Info {
        Info {
            kind: UnitKind::VirtioIommu,
            raw,
            page_sizes: self.page_sizes(),
            aperture: self.dev.config.input_range,
            native_identity: self.dev.has(feature::BYPASS_CONFIG),
        }
    }
}

/// The feature bits `show` names (virtio 1.2 §5.13.3, §6).
const FEATURE_FIELDS: &[iommu::describe::Field] = {
    use iommu::describe::Field;
    const fn bit(name: &'static str, shift: u32, meaning: &'static str) -> Field {
        Field { name, shift, mask: 1, meaning }
    }
    &[
        bit("INPUT_RANGE", feature::INPUT_RANGE, "input_range is valid"),
        bit("DOMAIN_RANGE", feature::DOMAIN_RANGE, "domain_range is valid"),
        bit("MAP_UNMAP", feature::MAP_UNMAP, "MAP and UNMAP requests"),
        bit("BYPASS", feature::BYPASS, "unattached endpoints bypass (legacy)"),
        bit("PROBE", feature::PROBE, "PROBE requests"),
        bit("MMIO", feature::MMIO, "the MAP flag MMIO"),
        bit("BYPASS_CONFIG", feature::BYPASS_CONFIG, "config.bypass and ATTACH's BYPASS flag"),
        bit("RING_INDIRECT_DESC", feature::RING_INDIRECT_DESC, "indirect descriptors"),
        bit("RING_EVENT_IDX", feature::RING_EVENT_IDX, "notification suppression"),
        bit("VERSION_1", feature::VERSION_1, "virtio 1.0 or later"),
        bit("ACCESS_PLATFORM", feature::ACCESS_PLATFORM, "the device's own DMA is translated"),
        bit("RING_RESET", feature::RING_RESET, "virtqueue reset"),
    ]
};

impl<M: DmaMemory> VirtioIommu<M> {
    /// `show`: the negotiated features and the configuration (§5.13.4).
    fn describe_registers(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let c = &self.dev.config;
        writeln!(out, "virtio-iommu (virtio 1.2 §5.13): no registers of its own; requests on a virtqueue")?;
        iommu::describe::write_register(out, "FEATURES (negotiated)", self.dev.features, FEATURE_FIELDS)?;
        writeln!(
            out,
            "config.page_size_mask = {:#x} (granule {})",
            c.page_size_mask,
            iommu::describe::size_text(1 << c.page_size_mask.trailing_zeros().min(63))
        )?;
        writeln!(out, "config.input_range = {:#x}..={:#x}", c.input_range.0, c.input_range.1)?;
        writeln!(out, "config.domain_range = {}..={}", c.domain_range.0, c.domain_range.1)?;
        writeln!(out, "config.probe_size = {}", c.probe_size)?;
        writeln!(
            out,
            "config.bypass = {} (unattached endpoints {})",
            c.bypass,
            if c.bypass == 1 { "pass through" } else { "fault" }
        )
    }

    /// `dump`: the endpoint's domain on the device and the mappings this
    /// driver asked for (the device keeps its tables to itself: these are
    /// the MAP requests it acknowledged, §5.13.6.6).
    fn describe_endpoint(&self, ep: u32, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        writeln!(out, "endpoint {ep:#x}")?;
        let Some(&domain) = self.attached.get(&ep) else {
            return writeln!(
                out,
                "=> attached to no domain: its DMA {}",
                if self.dev.config.bypass == 1 { "bypasses" } else { "faults" }
            );
        };
        let Some(d) = self.domains.get(&domain) else { return writeln!(out, "=> domain {domain} (unknown)") };
        let kind = match d.kind {
            Kind::Paging => "paging",
            Kind::Bypass => "bypass (ATTACH flag BYPASS)",
            Kind::IdentityMapped => "identity (one mapping of the input range)",
            Kind::Blocked => "blocking (no mappings)",
        };
        let blocking = if domain == self.blocking { ", the blocking domain" } else { "" };
        writeln!(
            out,
            "domain {domain}: {kind}{blocking}, {} mapping(s), {} endpoint(s)",
            d.mappings.len(),
            d.endpoints.len()
        )?;
        for (shown, (start, m)) in d.mappings.iter().enumerate() {
            if shown == 32 {
                writeln!(out, "  ... {} more", d.mappings.len() - 32)?;
                break;
            }
            writeln!(
                out,
                "  MAP {start:#x}..={:#x} -> {:#x} flags {:#x} ({})",
                m.end,
                m.pa,
                m.flags,
                map_flags(m.flags)
            )?;
        }
        Ok(())
    }

    /// `walk`: the mapping the device would use for `iova`, or the fault.
    fn describe_walk(&self, ep: u32, iova: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        self.describe_endpoint(ep, out)?;
        let Some(d) = self.attached.get(&ep).and_then(|id| self.domains.get(id)) else { return Ok(()) };
        if d.kind == Kind::Bypass {
            return writeln!(out, "=> bypass: {iova:#x} reaches physical {iova:#x}");
        }
        let hit = d.mappings.range(..=iova).next_back().filter(|(_, m)| iova <= m.end);
        match hit {
            Some((start, m)) => writeln!(
                out,
                "=> {iova:#x} translates to {:#x} (mapping at {start:#x}, {})",
                m.pa + (iova - start),
                map_flags(m.flags)
            ),
            None => writeln!(out, "=> no translation: a DMA here faults (fault event, reason MAPPING)"),
        }
    }
}

/// `READ|WRITE|MMIO` of a MAP request's flags (§5.13.6.6).
fn map_flags(flags: u32) -> &'static str {
    match flags & 7 {
        1 => "READ",
        2 => "WRITE",
        3 => "READ|WRITE",
        5 => "READ|MMIO",
        6 => "WRITE|MMIO",
        7 => "READ|WRITE|MMIO",
        4 => "MMIO",
        _ => "none",
    }
}

impl<M: DmaMemory + Send + 'static> Iommu for VirtioIommu<M> {
    fn describe(&self, what: iommu::describe::Describe, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        use iommu::describe::Describe;
        let written = match what {
            Describe::Registers => self.describe_registers(out),
            Describe::Device(device) => self.describe_endpoint(self.endpoint(device)?, out),
            Describe::Walk { device, iova } => self.describe_walk(self.endpoint(device)?, iova, out),
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
        UnitKind::VirtioIommu
    }

    fn page_sizes(&self) -> u64 {
        let mask = self.dev.config.page_size_mask;
        // 2 MiB and 1 GiB leaves where the device offers them.
        self.granule() | (mask & (0x20_0000 | 0x4000_0000))
    }

    fn aperture(&self) -> (u64, u64) {
        self.dev.config.input_range
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        let id = self.free_domain_id().ok_or(Error::NoDomainIds)?;
        let kind = match kind {
            DomainKind::Paging => Kind::Paging,
            DomainKind::Identity if self.dev.has(feature::BYPASS_CONFIG) => Kind::Bypass,
            DomainKind::Identity => Kind::IdentityMapped,
            DomainKind::Blocked => Kind::Blocked,
        };
        // Unchanged on failure; an empty domain holds no heap of its own
        // but a paging domain's reserved room for its mappings.
        let domain = if kind == Kind::Paging { Domain::paging()? } else { Domain::new(kind) };
        self.domains.try_insert(id, domain).map_err(no_memory)?;
        Ok(DomainId(id))
    }

    /// Nothing to tell the device: a domain without endpoints does not exist there.
    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        match self.domains.get(&domain.0) {
            None => Err(Error::NoSuchDomain(domain)),
            Some(_) if domain.0 == self.blocking => Err(Error::Busy(domain)),
            Some(d) if !d.endpoints.is_empty() => Err(Error::Busy(domain)),
            Some(_) => {
                self.domains.remove(&domain.0);
                Ok(())
            }
        }
    }

    /// One ATTACH (the device moves the endpoint out of its old domain); if
    /// the domain was not on the device, its mappings are replayed. If the
    /// replay fails the endpoint goes back to the blocking domain. Room for
    /// the bookkeeping is reserved before the ATTACH is sent.
    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        let ep = self.endpoint(device)?;
        let kind = self.domains.get(&domain.0).ok_or(Error::NoSuchDomain(domain))?.kind;
        let previous = self.attached.get(&ep).copied();
        if previous == Some(domain.0) {
            return Ok(());
        }
        self.reserve_attach(ep, domain.0)?;
        self.dev.attach(domain.0, ep, kind == Kind::Bypass, &mut self.mem)?;
        if let Some(p) = previous.and_then(|p| self.domains.get_mut(&p)) {
            p.endpoints.remove(&ep);
        }
        if !self.record_attach(ep, domain.0) {
            return Ok(());
        }
        let replayed = match self.domains.get(&domain.0) {
            Some(d) => replay(&mut self.dev, &mut self.mem, domain.0, d),
            None => Ok(0),
        };
        let e = match replayed {
            Ok(n) => {
                if n != 0 {
                    log::debug!("virtio-iommu: domain {} back on the device with {n} mapping(s)", domain.0);
                }
                return Ok(());
            }
            Err(e) => e,
        };
        log::error!("virtio-iommu: replaying domain {}: {e}", domain.0);
        // Back to the blocking domain; if even that fails, DETACH
        // (with bypass off an unattached endpoint faults too).
        self.attached.remove(&ep);
        if let Some(d) = self.domains.get_mut(&domain.0) {
            d.endpoints.remove(&ep);
        }
        let blocking = self.blocking;
        match self.dev.attach(blocking, ep, false, &mut self.mem) {
            Ok(()) => {
                // Room reserved above: no allocation.
                self.record_attach(ep, blocking);
            }
            Err(e2) => {
                log::error!("virtio-iommu: blocking {ep:#x} after the failed replay: {e2}");
                if let Err(e3) = self.dev.detach(domain.0, ep, &mut self.mem) {
                    log::error!("virtio-iommu: detaching {ep:#x} after the failed replay: {e3}");
                }
            }
        }
        Err(e.into())
    }

    /// ATTACH to the blocking domain (the device moves the endpoint out of
    /// its domain and answers once it has).
    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        self.endpoint(device)?;
        self.attach(device, DomainId(self.blocking))
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.attached.get(&device.0).filter(|&&d| d != self.blocking).map(|&d| DomainId(d))
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.endpoints.iter().map(|&e| DeviceId(e)).collect()
    }

    /// Room in the mirror is reserved before the MAP is sent.
    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        let d = self.domains.get(&domain.0).ok_or(Error::NoSuchDomain(domain))?;
        if d.kind != Kind::Paging {
            return Err(Error::NotPaging(domain));
        }
        let last = self.check_range(iova, len)?;
        if !pa.is_multiple_of(self.granule()) {
            return Err(Error::Map(io_pgtable::Error::Unaligned));
        }
        if !perms.intersects(Perms::READ | Perms::WRITE) {
            return Err(Error::Map(io_pgtable::Error::BadPerms));
        }
        // QEMU refuses overlaps too (INVAL), but only for a domain it holds.
        if let Some((&s, _)) = d.mappings.range(..=last).next_back().filter(|(_, m)| m.end >= iova) {
            return Err(Error::Map(io_pgtable::Error::AlreadyMapped(s.max(iova))));
        }
        let mut flags = 0;
        if perms.contains(Perms::READ) {
            flags |= map_flags::READ;
        }
        if perms.contains(Perms::WRITE) {
            flags |= map_flags::WRITE;
        }
        let live = !d.endpoints.is_empty();
        let Some(d) = self.domains.get_mut(&domain.0) else { return Err(Error::NoSuchDomain(domain)) };
        d.mappings.try_reserve(1).map_err(no_memory)?;
        if live {
            self.dev.map(domain.0, iova, last, pa, flags, &mut self.mem)?;
        }
        if let Some(d) = self.domains.get_mut(&domain.0) {
            // Room reserved above: no allocation, cannot fail.
            let _ = d.mappings.try_insert(iova, Mapping { end: last, pa, flags });
        }
        Ok(())
    }

    /// Allocates nothing: the mappings removed are those starting inside
    /// the range (a mapping it cuts is refused first).
    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        let d = self.domains.get(&domain.0).ok_or(Error::NoSuchDomain(domain))?;
        if d.kind != Kind::Paging {
            return Err(Error::NotPaging(domain));
        }
        let last = self.check_range(iova, len)?;
        // Mappings meeting the range: the one starting below it, then those inside.
        if let Some((&s, _)) = d.mappings.range(..iova).next_back().filter(|(_, m)| m.end >= iova) {
            return Err(Error::Map(io_pgtable::Error::SplitLeaf(s)));
        }
        if let Some((&s, _)) = d.mappings.range(iova..=last).find(|(_, m)| m.end > last) {
            return Err(Error::Map(io_pgtable::Error::SplitLeaf(s)));
        }
        let (Some((&first, _)), Some((_, last_map))) =
            (d.mappings.range(iova..=last).next(), d.mappings.range(iova..=last).next_back())
        else {
            return Ok(Unmapped { bytes: 0, gather: Gather::default() });
        };
        let end = last_map.end;
        let bytes: u64 = d.mappings.range(iova..=last).map(|(&s, m)| m.end - s + 1).sum();
        if !d.endpoints.is_empty() {
            self.dev.unmap(domain.0, iova, last, &mut self.mem)?;
        }
        if let Some(d) = self.domains.get_mut(&domain.0) {
            d.mappings.retain(|&s, _| !(iova..=last).contains(&s));
        }
        let gather = Gather::range(first, end.saturating_add(1));
        Ok(Unmapped { bytes, gather })
    }

    /// Nothing to send (the UNMAP already took effect); counts the invalidation.
    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        let known = self.domains.contains_key(&domain.0);
        if known && !gather.is_empty() {
            self.flushes += 1;
        }
        gather.release(&mut self.mem);
        if known {
            Ok(())
        } else {
            Err(Error::NoSuchDomain(domain))
        }
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let d = self.domains.get(&domain.0)?;
        match d.kind {
            Kind::Paging => {
                let (&s, m) = d.mappings.range(..=iova).next_back()?;
                (iova <= m.end).then(|| m.pa + (iova - s))
            }
            Kind::Bypass => Some(iova),
            Kind::IdentityMapped => {
                let (lo, hi) = self.dev.config.input_range;
                (lo..=hi).contains(&iova).then_some(iova)
            }
            Kind::Blocked => None,
        }
    }

    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        let mut out = Vec::new();
        self.drain_faults_with(&mut |f| out.push(f));
        out
    }

    /// Events of one faulting DMA are merged ([`iommu::FaultCoalescer`], as
    /// [`iommu::coalesce_faults`]): QEMU reports every 4-byte retry of a
    /// blocked transfer. Allocates nothing.
    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        let mut runs = iommu::FaultCoalescer::default();
        self.dev.take_faults_with(&mut self.mem, &mut |fault| {
            let e = fault.to_event();
            if runs.starts_run(e) {
                f(e);
            }
        });
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        self.reserved.get(&device.0).cloned().unwrap_or_default()
    }

    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        self.reserved.get(&device.0).into_iter().flatten().for_each(|r| f(*r));
    }

    fn serves(&self, device: DeviceId) -> bool {
        self.endpoints.contains(&device.0)
    }

    /// One "leaf" per device mapping (a mapping is one entry of any size).
    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        self.for_each_leaf_size(domain, iova, len, &mut |size, n| out.push((size, n)));
        out
    }

    /// [`Iommu::leaves`] without allocating: mapping sizes are any multiple
    /// of the granule, so each distinct size is found by a pass over the
    /// mappings meeting the range (largest first, as `count_leaves` sorts).
    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        let Some(d) = self.domains.get(&domain.0).filter(|d| d.kind == Kind::Paging) else { return };
        let Some(last) = len.checked_sub(1).map(|l| iova.saturating_add(l)) else { return };
        let sizes = || d.mappings.iter().filter(move |(&s, m)| s <= last && iova <= m.end).map(|(&s, m)| m.end - s + 1);
        let mut below = None;
        while let Some(size) = sizes().filter(|&s| below.is_none_or(|b| s < b)).max() {
            f(size, sizes().filter(|&s| s == size).count() as u64);
            below = Some(size);
        }
    }

    fn shrink(&mut self) {
        self.domains.shrink();
        self.attached.shrink();
        for d in self.domains.values_mut() {
            d.mappings.shrink();
            d.endpoints.shrink();
        }
    }

    fn flushes(&self) -> u64 {
        self.flushes
    }

    fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        self.dev.describe_queue(out).map_err(|_| Error::NoMemory)
    }

    fn tracer(&self) -> iommu::trace::Tracer {
        self.dev.tracer()
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::kind;
    use crate::testing::{Fake, TestMem};
    use iommu::ReservedKind;

    const A: DeviceId = DeviceId(0x10);
    const B: DeviceId = DeviceId(0x18);
    const RW: Perms = Perms::READ.union(Perms::WRITE);

    fn unit_with(fake: &Fake) -> VirtioIommu<TestMem> {
        let mut mem = TestMem::new();
        let dev = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem).unwrap();
        VirtioIommu::new(dev, mem, vec![0x10, 0x18, 0x20, 0x99]).unwrap()
    }

    fn unit() -> (Fake, VirtioIommu<TestMem>) {
        let fake = Fake::q35();
        let u = unit_with(&fake);
        (fake, u)
    }

    #[test]
    fn describe_tells_features_domains_mappings_and_walks() {
        use iommu::describe::Describe;
        let (_fake, mut u) = unit();
        let mut s = alloc::string::String::new();
        u.describe(Describe::Registers, &mut s).unwrap();
        assert!(s.lines().any(|l| l.trim_start().starts_with("MAP_UNMAP") && l.contains("= 0x1")), "{s}");
        assert!(s.contains("granule 4 KiB"), "{s}");
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        u.attach(A, d).unwrap();
        u.map(d, 0x4000, 0x7000, 0x2000, Perms::READ).unwrap();
        let mut s = alloc::string::String::new();
        u.describe(Describe::Device(A), &mut s).unwrap();
        assert!(s.contains("paging, 1 mapping(s)"), "{s}");
        assert!(s.contains("MAP 0x4000..=0x5fff -> 0x7000 flags 0x1 (READ)"), "{s}");
        let mut s = alloc::string::String::new();
        u.describe(Describe::Walk { device: A, iova: 0x5008 }, &mut s).unwrap();
        assert!(s.contains("=> 0x5008 translates to 0x8008"), "{s}");
        let mut s = alloc::string::String::new();
        u.describe(Describe::Walk { device: A, iova: 0x6000 }, &mut s).unwrap();
        assert!(s.contains("=> no translation"), "{s}");
        u.detach(A).unwrap();
        let mut s = alloc::string::String::new();
        u.describe(Describe::Device(A), &mut s).unwrap();
        assert!(s.contains("the blocking domain"), "{s}");
        assert_eq!(u.describe(Describe::Device(DeviceId(0x4242)), &mut s), Err(Error::NoSuchDevice(DeviceId(0x4242))));
    }

    #[test]
    fn info_describes_the_device() {
        let (_fake, u) = unit();
        let i = u.info();
        assert_eq!(i.kind, UnitKind::VirtioIommu);
        assert_eq!(i.page_sizes, 1 << 12 | 1 << 21 | 1 << 30);
        assert_eq!(i.aperture, (0, (1 << 39) - 1));
        assert!(i.native_identity);
        let names: Vec<&str> = i.raw.iter().map(|r| r.0).collect();
        assert_eq!(names, ["FEATURES", "PAGE_SIZE_MASK", "INPUT_START", "INPUT_END", "DOMAIN_START", "DOMAIN_END"]);
        assert_eq!(i.raw[1].1, 0xFFFF_FFFF_FFFF_F000);
        assert_eq!(i.raw[5].1, u64::from(u32::MAX));
        assert_eq!(u.devices(), [DeviceId(0x10), DeviceId(0x18), DeviceId(0x20), DeviceId(0x99)]);
    }

    #[test]
    fn reserved_regions_come_from_probe() {
        let (fake, u) = unit();
        let msi = Region { start: 0xFEE0_0000, end: 0xFEEF_FFFF, kind: ReservedKind::Msi };
        assert_eq!(u.reserved_regions(A), [msi]);
        assert_eq!(u.reserved_regions(DeviceId(0x99)), [], "unknown to the device: no regions");
        assert_eq!(fake.lock().count(kind::PROBE), 4, "one PROBE per endpoint, at start");
        assert!(iommu::overlaps_reserved(&u.reserved_regions(B), 0xFEE0_1000, 0xFEE0_1FFF).is_some());
    }

    #[test]
    fn mappings_made_before_attach_are_replayed() {
        let (fake, mut u) = unit();
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        u.map(d, 0x10_0000, 0x8000_0000, 0x2000, Perms::READ).unwrap();
        u.map(d, 0x20_0000, 0x9000_0000, 0x1000, RW).unwrap();
        assert_eq!(fake.lock().count(kind::MAP), 0, "no MAP for a domain the device does not hold");
        assert!(!u.domain_live(d));
        assert_eq!(u.iova_to_phys(d, 0x10_1008), Some(0x8000_1008));
        u.attach(A, d).unwrap();
        assert!(u.domain_live(d));
        let mut f = fake.lock();
        assert_eq!(f.count(kind::MAP), 2);
        assert_eq!(f.translate(0x10, 0x10_1008, false), Some(0x8000_1008));
        assert_eq!(f.translate(0x10, 0x20_0000, true), Some(0x9000_0000));
        assert_eq!(f.translate(0x10, 0x10_0000, true), None, "read-only mapping");
        assert_eq!(f.translate(0x10, 0xFEE0_0004, true), Some(0xFEE0_0004), "MSI window passes");
        assert_eq!(f.translate(0x18, 0x10_0000, true), None, "endpoints nobody attached are blocked");
        assert_eq!(f.translate(0x28, 0x10_0000, true), None, "so are endpoints the driver was not told about");
    }

    #[test]
    fn detaching_the_last_endpoint_does_not_lose_the_mappings() {
        let (fake, mut u) = unit();
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        u.attach(A, d).unwrap();
        u.map(d, 0x4000, 0x7000, 0x1000, RW).unwrap();
        assert_eq!(fake.lock().count(kind::MAP), 1, "live domain: mapped at once");
        u.detach(A).unwrap();
        assert!(!fake.lock().domains.contains_key(&d.0), "QEMU dropped the domain with the last endpoint");
        assert!(fake.lock().domains[&u.blocking_domain().0].endpoints.contains(&0x10));
        assert_eq!(u.attached(A), None);
        assert_eq!(fake.lock().translate(0x10, 0x4000, true), None, "detached: blocked");
        // Changes while the device does not hold the domain stay in the mirror.
        u.map(d, 0x8000, 0xA000, 0x1000, Perms::READ).unwrap();
        assert_eq!(iommu::unmap_and_flush(&mut u, d, 0x4000, 0x1000), Ok(0x1000));
        assert_eq!(fake.lock().count(kind::UNMAP), 0);
        u.attach(B, d).unwrap();
        let mut f = fake.lock();
        assert_eq!(f.translate(0x18, 0x8000, false), Some(0xA000));
        assert_eq!(f.translate(0x18, 0x4000, false), None, "the unmapped page stays unmapped");
        assert_eq!(f.domains[&d.0].mappings.len(), 1);
    }

    #[test]
    fn moving_an_endpoint_keeps_both_domains_usable() {
        let (fake, mut u) = unit();
        let attaches = fake.lock().count(kind::ATTACH);
        let d1 = u.domain_alloc(DomainKind::Paging).unwrap();
        let d2 = u.domain_alloc(DomainKind::Paging).unwrap();
        assert_ne!(d1, d2);
        u.map(d1, 0x1000, 0x11000, 0x1000, RW).unwrap();
        u.map(d2, 0x1000, 0x22000, 0x1000, RW).unwrap();
        u.attach(A, d1).unwrap();
        u.attach(B, d1).unwrap();
        assert_eq!(fake.lock().count(kind::MAP), 1, "the second endpoint joins a live domain: no replay");
        u.attach(A, d2).unwrap();
        assert_eq!(u.attached(A), Some(d2));
        assert_eq!(fake.lock().translate(0x10, 0x1000, true), Some(0x22000));
        assert_eq!(fake.lock().translate(0x18, 0x1000, true), Some(0x11000));
        assert_eq!(u.domain_free(d1), Err(Error::Busy(d1)));
        // B leaves d1 for d2: d1 disappears from the device, then comes back on demand.
        u.attach(B, d2).unwrap();
        assert!(!u.domain_live(d1) && !fake.lock().domains.contains_key(&d1.0));
        u.attach(A, d1).unwrap();
        assert_eq!(fake.lock().translate(0x10, 0x1000, true), Some(0x11000));
        assert_eq!(u.attach(A, d1), Ok(()), "attaching to the current domain sends nothing");
        assert_eq!(fake.lock().count(kind::ATTACH) - attaches, 5);
    }

    #[test]
    fn identity_and_blocked_domains() {
        let (fake, mut u) = unit();
        let id = u.domain_alloc(DomainKind::Identity).unwrap();
        let blocked = u.domain_alloc(DomainKind::Blocked).unwrap();
        u.attach(A, id).unwrap();
        assert!(fake.lock().domains[&id.0].bypass, "ATTACH with the BYPASS flag");
        assert_eq!(fake.lock().translate(0x10, 0x1234_5000, true), Some(0x1234_5000));
        assert_eq!(u.iova_to_phys(id, 0x5000), Some(0x5000));
        assert_eq!(u.map(id, 0, 0, 0x1000, RW), Err(Error::NotPaging(id)));
        u.attach(A, blocked).unwrap();
        assert_eq!(fake.lock().translate(0x10, 0x5000, true), None);
        let faults = u.drain_faults();
        assert_eq!(faults.len(), 1);
        assert_eq!((faults[0].device, faults[0].address, faults[0].reason_name), (A, 0x5000, "mapping fault"));
        assert_eq!(faults[0].access, iommu::Access::Unknown, "QEMU reports no access direction for a missing mapping");
        assert_eq!(u.map(blocked, 0, 0, 0x1000, RW), Err(Error::NotPaging(blocked)));
        assert_eq!(u.iova_to_phys(blocked, 0x5000), None);
    }

    #[test]
    fn identity_without_bypass_config_is_one_big_mapping() {
        let fake = Fake::q35();
        fake.lock().offered &= !(1 << feature::BYPASS_CONFIG);
        let mut u = unit_with(&fake);
        assert!(!u.info().native_identity);
        let id = u.domain_alloc(DomainKind::Identity).unwrap();
        u.attach(A, id).unwrap();
        let f = fake.lock();
        let dom = &f.domains[&id.0];
        assert!(!dom.bypass);
        assert_eq!(dom.mappings.get(&0), Some(&((1 << 39) - 1, 0, map_flags::READ | map_flags::WRITE)));
        drop(f);
        assert_eq!(fake.lock().translate(0x10, 0x7654_3000, false), Some(0x7654_3000));
        assert_eq!(u.iova_to_phys(id, 1 << 40), None);
    }

    #[test]
    fn map_checks_what_qemu_does_not() {
        let (fake, mut u) = unit();
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        u.attach(A, d).unwrap();
        let unaligned = Err(Error::Map(io_pgtable::Error::Unaligned));
        assert_eq!(u.map(d, 0x1800, 0, 0x1000, RW), unaligned);
        assert_eq!(u.map(d, 0x1000, 0x800, 0x1000, RW), unaligned);
        assert_eq!(u.map(d, 0x1000, 0, 0x800, RW), unaligned);
        assert_eq!(u.map(d, 0x1000, 0, 0, RW), Err(Error::Map(io_pgtable::Error::Empty)));
        assert_eq!(u.map(d, 1 << 39, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 1 << 39, len: 0x1000 }));
        assert_eq!(
            u.map(d, u64::MAX - 0xFFF, 0, 0x2000, RW),
            Err(Error::OutOfAperture { iova: u64::MAX - 0xFFF, len: 0x2000 })
        );
        assert_eq!(u.map(d, 0x1000, 0, 0x1000, Perms::empty()), Err(Error::Map(io_pgtable::Error::BadPerms)));
        assert_eq!(u.map(DomainId(999), 0x1000, 0, 0x1000, RW), Err(Error::NoSuchDomain(DomainId(999))));
        assert_eq!(fake.lock().count(kind::MAP), 0, "refused before any request");
        u.map(d, 0x3000, 0x3000, 0x2000, RW).unwrap();
        assert_eq!(u.map(d, 0x2000, 0, 0x2000, RW), Err(Error::Map(io_pgtable::Error::AlreadyMapped(0x3000))));
        assert_eq!(u.map(d, 0x4000, 0, 0x1000, RW), Err(Error::Map(io_pgtable::Error::AlreadyMapped(0x4000))));
        u.map(d, 0x5000, 0x5000, 0x1000, RW).unwrap();
        u.map(d, 0x2000, 0x2000, 0x1000, RW).unwrap();
        assert_eq!(u.mapping_count(d), 3);
        // A request the device refuses leaves the mirror unchanged.
        fake.lock().fail_next = Some(crate::request::status::NOMEM);
        assert_eq!(u.map(d, 0x10_0000, 0, 0x1000, RW), Err(Error::NoMemory));
        assert_eq!(u.mapping_count(d), 3);
        assert_eq!(u.iova_to_phys(d, 0x10_0000), None);
    }

    #[test]
    fn unmap_removes_whole_mappings_and_flush_counts() {
        let (fake, mut u) = unit();
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        u.attach(A, d).unwrap();
        u.map(d, 0x20_0000, 0x4000_0000, 0x20_0000, RW).unwrap();
        u.map(d, 0x40_0000, 0x5000_0000, 0x1000, RW).unwrap();
        assert_eq!(u.leaves(d, 0, 1 << 30), [(0x20_0000, 1), (0x1000, 1)]);
        assert_eq!(u.iova_to_phys(d, 0x3F_FFFF), Some(0x401F_FFFF));
        // Cutting a mapping is refused before anything is sent.
        let split = u.unmap(d, 0x20_0000, 0x1000).map(|x| x.bytes);
        assert_eq!(split, Err(Error::Map(io_pgtable::Error::SplitLeaf(0x20_0000))));
        let split = u.unmap(d, 0x30_0000, 0x20_0000).map(|x| x.bytes);
        assert_eq!(split, Err(Error::Map(io_pgtable::Error::SplitLeaf(0x20_0000))));
        assert_eq!(fake.lock().count(kind::UNMAP), 0);
        let before = u.flushes();
        let un = u.unmap(d, 0, 0x100_0000).unwrap();
        assert_eq!(un.bytes, 0x20_1000);
        assert_eq!((un.gather.start, un.gather.end), (0x20_0000, 0x40_1000));
        assert!(un.gather.freed.is_empty());
        u.flush(d, un.gather).unwrap();
        assert_eq!(u.flushes(), before + 1);
        assert_eq!(fake.lock().count(kind::UNMAP), 1, "one UNMAP for the whole range");
        assert_eq!(fake.lock().translate(0x10, 0x20_0000, false), None);
        // Nothing there: no request, an empty gather, no flush counted.
        let none = u.unmap(d, 0, 0x1000).unwrap();
        assert_eq!(none.bytes, 0);
        u.flush(d, none.gather).unwrap();
        assert_eq!(u.flushes(), before + 1);
        assert_eq!(fake.lock().count(kind::UNMAP), 1);
        assert_eq!(u.flush(DomainId(999), Gather::default()), Err(Error::NoSuchDomain(DomainId(999))));
        assert!(u.leaves(d, 0, 1 << 30).is_empty());
    }

    #[test]
    fn domain_ids_come_from_the_domain_range() {
        let fake = Fake::q35();
        fake.lock().config.domain_range = (10, 13);
        let mut u = unit_with(&fake);
        assert_eq!(u.blocking_domain(), DomainId(10), "the blocking domain takes the first ID");
        let ids: Vec<u32> = (0..3).map(|_| u.domain_alloc(DomainKind::Paging).unwrap().0).collect();
        assert_eq!(ids, [11, 12, 13]);
        assert_eq!(u.domain_free(DomainId(10)), Err(Error::Busy(DomainId(10))), "the blocking domain stays");
        assert_eq!(u.domain_alloc(DomainKind::Blocked), Err(Error::NoDomainIds));
        u.domain_free(DomainId(11)).unwrap();
        assert_eq!(u.domain_alloc(DomainKind::Identity), Ok(DomainId(11)));
        assert_eq!(u.domain_free(DomainId(11)), Ok(()));
        assert_eq!(u.domain_free(DomainId(11)), Err(Error::NoSuchDomain(DomainId(11))));
    }

    #[test]
    fn attach_and_detach_errors() {
        let (fake, mut u) = unit();
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        assert_eq!(u.attach(DeviceId(0x77), d), Err(Error::NoSuchDevice(DeviceId(0x77))));
        assert_eq!(u.attach(A, DomainId(999)), Err(Error::NoSuchDomain(DomainId(999))));
        // Listed but unknown to the device: the device says NOENT.
        assert_eq!(u.attach(DeviceId(0x99), d), Err(Error::NoSuchDevice(DeviceId(0x99))));
        assert_eq!(u.attached(DeviceId(0x99)), None);
        assert_eq!(u.detach(A), Ok(()), "detaching an unattached device is a no-op");
        assert_eq!(fake.lock().count(kind::DETACH), 0);
        // A failed replay leaves the endpoint blocked, the mirror intact.
        u.map(d, 0x1000, 0x1000, 0x1000, RW).unwrap();
        u.map(d, 0x3000, 0x3000, 0x1000, RW).unwrap();
        let blocker = u.domain_alloc(DomainKind::Paging).unwrap();
        // Make the second replayed MAP fail.
        u.attach(DeviceId(0x20), blocker).unwrap();
        fake.lock().fail_after_requests(2, crate::request::status::DEVERR);
        assert!(matches!(u.attach(A, d), Err(Error::Hardware(_))));
        assert_eq!(u.attached(A), None);
        assert_eq!(fake.lock().attached.get(&0x10), Some(&u.blocking_domain().0), "back in the blocking domain");
        assert_eq!(u.mapping_count(d), 2);
        u.attach(A, d).unwrap();
        assert_eq!(fake.lock().translate(0x10, 0x3000, true), Some(0x3000));
    }

    #[test]
    fn frames_are_given_back() {
        let (_fake, mut u) = unit();
        let base = u.mem.live();
        assert_eq!(base, u.dev.frames());
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        u.attach(A, d).unwrap();
        u.map(d, 0x1000, 0x1000, 0x1000, RW).unwrap();
        assert_eq!(iommu::unmap_and_flush(&mut u, d, 0x1000, 0x1000), Ok(0x1000));
        u.detach(A).unwrap();
        u.domain_free(d).unwrap();
        assert_eq!(u.mem.live(), base, "the driver holds no frames besides the device's");
    }

    /// What a caller and the device can see: the driver's translations at a
    /// few IOVAs, its mapping counts and attach records; the fake device's
    /// domains (mappings, endpoints), attach table and requests seen; frames in use.
    fn observe(fake: &Fake, u: &VirtioIommu<TestMem>, domains: &[DomainId]) -> String {
        fallible::testing::unarmed(|| {
            let iovas = [0x10_0000u64, 0x10_1000, 0x40_0000, 0x5F_F000, 0x1234_5000];
            let maps: Vec<_> = domains
                .iter()
                .map(|&d| (iovas.map(|i| u.iova_to_phys(d, i)), u.mapping_count(d), u.domain_live(d)))
                .collect();
            let att = [A, B, DeviceId(0x20)].map(|e| u.attached(e));
            let f = fake.lock();
            format!(
                "{maps:?} {att:?} {:?} {:?} seen {} sent {} live {}",
                f.domains,
                f.attached,
                f.requests_seen(),
                u.dev.requests_sent,
                u.mem.live()
            )
        })
    }

    /// Runs `op` failing its 1st, 2nd, ... heap allocation until it
    /// succeeds; each failure must answer `NoMemory` and leave `observe`
    /// unchanged. Returns the result and how many allocations it made.
    fn fail_nth<T: core::fmt::Debug>(
        fake: &Fake,
        u: &mut VirtioIommu<TestMem>,
        domains: &[DomainId],
        what: &str,
        op: &mut dyn FnMut(&mut VirtioIommu<TestMem>) -> Result<T, Error>,
    ) -> (T, u64) {
        fallible::testing::each_failure(u, what, &Error::NoMemory, &|u| observe(fake, u, domains), op)
    }

    #[test]
    fn every_heap_failure_on_a_syscall_path_answers_no_memory_and_changes_nothing() {
        let (fake, mut u) = unit();
        // Enough domains that the table grows (the blocking domain's insert left room for a few).
        let mut made = Vec::new();
        let mut grew = 0;
        for _ in 0..5 {
            let (d, n) = fail_nth(&fake, &mut u, &made, "domain_alloc", &mut |u| u.domain_alloc(DomainKind::Paging));
            made.push(d);
            grew += n;
        }
        assert!(grew >= 1, "the domain table grew");
        let (d1, d2) = (made[0], made[1]);
        for &d in &made[2..] {
            fail_nth(&fake, &mut u, &made, "domain_free spare", &mut |u| u.domain_free(d));
        }
        let ds = [d1, d2];
        // Into a domain the device does not hold: the mirror only.
        let (_, n) = fail_nth(&fake, &mut u, &ds, "map 4K", &mut |u| u.map(d1, 0x10_0000, 0x30_0000, 0x1000, RW));
        assert_eq!(n, 0, "the mirror's room for its first mappings was reserved by domain_alloc");
        fail_nth(&fake, &mut u, &ds, "map 2M", &mut |u| u.map(d1, 0x40_0000, 0x80_0000, 0x20_0000, RW));
        fail_nth(&fake, &mut u, &ds, "map d2", &mut |u| u.map(d2, 0x10_0000, 0x90_0000, 0x1000, Perms::READ));
        // The first endpoint: ATTACH, then both mappings replayed.
        let sent = u.dev.requests_sent;
        let (_, n) = fail_nth(&fake, &mut u, &ds, "attach", &mut |u| u.attach(A, d1));
        assert!(n >= 1, "the domain's endpoint set grew");
        assert_eq!(u.dev.requests_sent - sent, 3, "ATTACH + 2 MAPs, sent once");
        assert_eq!(fake.lock().translate(0x10, 0x40_1000, true), Some(0x80_1000));
        // Into a live domain: MAP reaches the device.
        fail_nth(&fake, &mut u, &ds, "map 4K live", &mut |u| u.map(d1, 0x10_1000, 0x31_0000, 0x1000, RW));
        fail_nth(&fake, &mut u, &ds, "map 2M live", &mut |u| u.map(d1, 0x60_0000, 0xA0_0000, 0x20_0000, RW));
        assert_eq!(fake.lock().translate(0x10, 0x60_0010, false), Some(0xA0_0010));
        let (_, n) = fail_nth(&fake, &mut u, &ds, "map live, mirror grows", &mut |u| {
            u.map(d1, 0x80_0000, 0xB0_0000, 0x1000, RW)
        });
        assert!(n >= 1, "the fifth mapping grew the mirror while the device holds the domain");
        fail_nth(&fake, &mut u, &ds, "attach B", &mut |u| u.attach(B, d1));
        let (_, n) = fail_nth(&fake, &mut u, &ds, "unmap+flush", &mut |u| {
            let x = u.unmap(d1, 0x40_0000, 0x40_0000)?;
            assert_eq!(x.bytes, 0x40_0000);
            u.flush(d1, x.gather)
        });
        assert_eq!(n, 0, "unmap and flush allocate nothing");
        assert_eq!(fake.lock().translate(0x10, 0x40_1000, true), None);
        fail_nth(&fake, &mut u, &ds, "detach", &mut |u| u.detach(A));
        fail_nth(&fake, &mut u, &ds, "detach B", &mut |u| u.detach(B));
        assert!(!fake.lock().domains.contains_key(&d1.0), "d1 left the device");
        // Re-attach to another domain, then move over to the first one.
        fail_nth(&fake, &mut u, &ds, "attach to d2", &mut |u| u.attach(A, d2));
        fail_nth(&fake, &mut u, &ds, "move to d1", &mut |u| u.attach(A, d1));
        assert_eq!(fake.lock().translate(0x10, 0x10_1000, false), Some(0x31_0000), "d1 replayed");
        let (id, _) =
            fail_nth(&fake, &mut u, &ds, "domain_alloc identity", &mut |u| u.domain_alloc(DomainKind::Identity));
        let ds3 = [d1, d2, id];
        fail_nth(&fake, &mut u, &ds3, "attach identity", &mut |u| u.attach(B, id));
        fail_nth(&fake, &mut u, &ds3, "detach identity", &mut |u| u.detach(B));
        fail_nth(&fake, &mut u, &ds3, "domain_free identity", &mut |u| u.domain_free(id));
        fail_nth(&fake, &mut u, &ds, "domain_free d2", &mut |u| u.domain_free(d2));
        // Faults: every one handed out, nothing allocated, runs merged.
        assert_eq!(u.drain_faults().len(), 1, "the probe of the unmapped page above");
        for addr in [0x5000, 0x5004, 0x5008, 0x9000] {
            assert_eq!(fake.lock().translate(0x10, addr, true), None);
        }
        let mut got = [(0u64, DeviceId(0)); 4];
        let mut k = 0;
        fallible::testing::arm(1);
        u.drain_faults_with(&mut |f| {
            got[k] = (f.address, f.device);
            k += 1;
        });
        assert_eq!(fallible::testing::disarm(), 0, "drain_faults_with allocates nothing");
        assert_eq!(got[..k], [(0x5000, A), (0x9000, A)], "one per faulting DMA");
        // The allocation-free doors allocate nothing.
        fallible::testing::arm(1);
        assert!(u.serves(A) && !u.serves(DeviceId(0x77)));
        let mut regions = 0;
        u.for_each_reserved(A, &mut |_| regions += 1);
        let mut leaves = [(0u64, 0u64); 2];
        let mut k = 0;
        u.for_each_leaf_size(d1, 0, 1 << 30, &mut |size, n| {
            leaves[k] = (size, n);
            k += 1;
        });
        assert_eq!((u.kind(), u.page_sizes()), (UnitKind::VirtioIommu, 1 << 12 | 1 << 21 | 1 << 30));
        assert!(u.iova_to_phys(d1, 0x10_0000).is_some() && u.attached(A) == Some(d1));
        assert_eq!(fallible::testing::disarm(), 0);
        assert_eq!((regions, &leaves[..k]), (1, &[(0x1000, 3)][..]));
        fallible::testing::arm(1);
        assert_eq!(u.try_info().map(|_| ()), Err(Error::NoMemory));
        fallible::testing::arm(1);
        assert!(u.info().raw.is_empty(), "info without heap: no raw registers, no abort");
        fallible::testing::disarm();
        assert_eq!(u.try_info().unwrap().raw.len(), 6);
    }

    #[test]
    fn leaf_sizes_match_count_leaves() {
        let (_fake, mut u) = unit();
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        let sizes = [0x3000u64, 0x1000, 0x20_0000, 0x3000, 0x1000, 0x5000, 0x1000];
        let mut at = 0x100_0000;
        for s in sizes {
            u.map(d, at, at, s, RW).unwrap();
            at += s + 0x1000;
        }
        assert_eq!(u.leaves(d, 0, 1 << 30), iommu::count_leaves(sizes));
        assert_eq!(u.leaves(d, 0x100_0000, 0x1000), [(0x3000, 1)], "a mapping meeting the range counts whole");
        assert!(u.leaves(d, 0, 0).is_empty());
    }
}
