//! [`MockIommu`]: an [`Iommu`] in plain memory, for host tests of the layers
//! above the drivers.
//!
//! It keeps a page map per paging domain at the unit's smallest page size and
//! an IOTLB that caches what simulated DMA ([`MockIommu::dma`]) translated:
//! entries leave the IOTLB only when a flush covers them, so a caller that
//! forgets to flush after unmap sees the stale translation, as on hardware.
//! Any operation can be told to fail once ([`MockIommu::fail_next`]), and a
//! [`FailNth`] countdown shared with other fakes (the task memory of
//! `iommufd::testing`) fails the N-th injection point of a call, whichever
//! fake it lands in (fail-nth, as Linux's `iommufd_fail_nth`).
//!
//! Under heap failure it behaves as a driver should: the trait methods that
//! allocate (`domain_alloc`, `attach`, `map`) answer [`Error::NoMemory`]
//! with the unit unchanged, the teardown ones (`unmap`, `flush`, `detach`,
//! `domain_free`) and the allocation-free doors (`serves`,
//! `drain_faults_with`, `for_each_reserved`, `for_each_leaf_size`) never
//! allocate. Only the test-side helpers (`dma`, `snapshot`, the `Vec` forms
//! of the trait, the flush log) allocate infallibly.

use crate::{
    DeviceId, DomainId, DomainKind, Error, FaultEvent, Gather, Info, Iommu, Perms, Region, ReservedKind, UnitKind,
    Unmapped,
};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use fallible::{TryMap, VecExt};

/// How a mock unit looks.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Lowest and highest (inclusive) translatable IOVA.
    pub aperture: (u64, u64),
    /// Supported leaf sizes (bit n = 2^n bytes); the smallest is the map granule.
    pub page_sizes: u64,
    /// Devices behind the unit.
    pub devices: Vec<DeviceId>,
    /// Reserved regions, for one device or (`None`) for all.
    pub reserved: Vec<(Option<DeviceId>, Region)>,
    /// Most domains that may exist at once.
    pub max_domains: usize,
}

impl Default for MockConfig {
    /// A 48-bit unit with 4 KiB, 2 MiB and 1 GiB pages, devices 0x10 and 0x18,
    /// the x86 interrupt window reserved.
    fn default() -> Self {
        MockConfig {
            aperture: (0, (1 << 48) - 1),
            page_sizes: 1 << 12 | 1 << 21 | 1 << 30,
            devices: alloc::vec![DeviceId(0x10), DeviceId(0x18)],
            reserved: alloc::vec![(None, Region { start: 0xFEE0_0000, end: 0xFEEF_FFFF, kind: ReservedKind::Msi })],
            max_domains: 64,
        }
    }
}

/// Operations whose next call can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Iommu::domain_alloc`].
    DomainAlloc,
    /// [`Iommu::attach`].
    Attach,
    /// [`Iommu::map`].
    Map,
    /// [`Iommu::unmap`].
    Unmap,
    /// [`Iommu::flush`].
    Flush,
    /// [`Iommu::detach`].
    Detach,
}

/// What an injection point stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Something that allocates (a domain, page-table frames, context
    /// structures, pinned pages): a failure there must leave no trace.
    Alloc,
    /// A command to the hardware on a teardown path (unmap, flush, detach):
    /// a failure there may quarantine pages, as documented, but leaks nothing.
    Hardware,
}

/// A fail-nth countdown: armed with N, the N-th injection point passed from
/// then on fails (once); every point passed is counted. Shared (`Arc`) by
/// every fake of one test world, so the N-th point of a call fails wherever
/// it is.
#[derive(Debug, Default)]
pub struct FailNth {
    /// Points left until the failing one; 0: disarmed.
    countdown: AtomicU64,
    /// Points passed since the last [`FailNth::arm`].
    passed: AtomicU64,
    /// Whether [`Point::Hardware`] points count too (else only allocations).
    hardware: AtomicBool,
    /// Whether the armed failure was injected.
    fired: AtomicBool,
}

impl FailNth {
    /// A disarmed countdown, to share.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fails the `n`-th point from now (`n` ≥ 1; 0 disarms). With `hardware`
    /// the teardown commands count as points too.
    pub fn arm(&self, n: u64, hardware: bool) {
        self.passed.store(0, Ordering::SeqCst);
        self.fired.store(false, Ordering::SeqCst);
        self.hardware.store(hardware, Ordering::SeqCst);
        self.countdown.store(n, Ordering::SeqCst);
    }

    /// Disarms; returns how many points were passed since [`FailNth::arm`]
    /// (the failing one included).
    pub fn disarm(&self) -> u64 {
        self.countdown.store(0, Ordering::SeqCst);
        self.passed.load(Ordering::SeqCst)
    }

    /// Whether the armed failure was injected.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// One injection point of kind `p`: true when it must fail.
    pub fn hit(&self, p: Point) -> bool {
        if p == Point::Hardware && !self.hardware.load(Ordering::SeqCst) {
            return false;
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 0 {
            return false;
        }
        self.passed.fetch_add(1, Ordering::SeqCst);
        self.countdown.store(left - 1, Ordering::SeqCst);
        if left == 1 {
            self.fired.store(true, Ordering::SeqCst);
        }
        left == 1
    }
}

/// Fault reason codes the mock reports.
pub mod reason {
    /// No translation for the IOVA.
    pub const NOT_MAPPED: u32 = 1;
    /// The mapping does not allow the access.
    pub const PERMISSION: u32 = 2;
    /// The device is in a blocked domain.
    pub const BLOCKED: u32 = 3;
}

enum Domain {
    Paging { pages: TryMap<u64, (u64, Perms)>, tlb: TryMap<u64, (u64, Perms)> },
    Identity,
    Blocked,
}

/// A simulated IOMMU unit.
pub struct MockIommu {
    cfg: MockConfig,
    domains: TryMap<u32, Domain>,
    next_id: u32,
    attached: TryMap<DeviceId, DomainId>,
    faults: Vec<FaultEvent>,
    fail: Vec<(Op, Error)>,
    fail_nth: Option<Arc<FailNth>>,
    /// Flushes done, each as (domain, start, end exclusive): a log for
    /// tests. A flush the heap has no room to log still happens (and is
    /// counted by [`Iommu::flushes`]); it is only missing here.
    pub flushes: Vec<(DomainId, u64, u64)>,
    /// Flushes done (logged or not).
    flush_count: u64,
}

impl MockIommu {
    /// A unit as `cfg` describes.
    pub fn new(cfg: MockConfig) -> Self {
        MockIommu {
            cfg,
            domains: TryMap::new(),
            next_id: 1,
            attached: TryMap::new(),
            faults: Vec::new(),
            fail: Vec::new(),
            fail_nth: None,
            flushes: Vec::new(),
            flush_count: 0,
        }
    }

    /// The next call of `op` fails with `err` (calls queue up per operation).
    pub fn fail_next(&mut self, op: Op, err: Error) {
        self.fail.push((op, err));
    }

    /// Every operation becomes an injection point of `f`: domain_alloc,
    /// attach and map are [`Point::Alloc`] (they fail with
    /// [`Error::NoMemory`]), unmap, flush and detach [`Point::Hardware`]
    /// ([`Error::Hardware`]).
    pub fn set_fail_nth(&mut self, f: Arc<FailNth>) {
        self.fail_nth = Some(f);
    }

    fn injected(&mut self, op: Op) -> Result<(), Error> {
        if let Some(i) = self.fail.iter().position(|(o, _)| *o == op) {
            return Err(self.fail.remove(i).1);
        }
        let point = match op {
            Op::DomainAlloc | Op::Attach | Op::Map => Point::Alloc,
            Op::Unmap | Op::Flush | Op::Detach => Point::Hardware,
        };
        match &self.fail_nth {
            Some(f) if f.hit(point) => Err(match point {
                Point::Alloc => Error::NoMemory,
                Point::Hardware => Error::Hardware("fail-nth"),
            }),
            _ => Ok(()),
        }
    }

    /// Everything a caller can change, as text (domains by id with their kind
    /// and pages, devices and their domains; not the IOTLB, a cache): two
    /// snapshots are equal when nothing was left behind.
    pub fn snapshot(&self) -> alloc::string::String {
        use core::fmt::Write;
        let mut out = alloc::string::String::new();
        for (id, d) in &self.domains {
            let _ = match d {
                Domain::Paging { pages, .. } => write!(out, "domain {id} paging {pages:?}; "),
                Domain::Identity => write!(out, "domain {id} identity; "),
                Domain::Blocked => write!(out, "domain {id} blocked; "),
            };
        }
        let _ = write!(out, "attached {:?}", self.attached);
        out
    }

    /// Ids of the domains that exist now.
    pub fn domain_ids(&self) -> Vec<DomainId> {
        self.domains.keys().map(|&d| DomainId(d)).collect()
    }

    fn granule(&self) -> u64 {
        1 << self.cfg.page_sizes.trailing_zeros().min(63)
    }

    /// Domains that exist now.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Mapped bytes in a paging domain.
    pub fn mapped_bytes(&self, domain: DomainId) -> u64 {
        match self.domains.get(&domain.0) {
            Some(Domain::Paging { pages, .. }) => pages.len() as u64 * self.granule(),
            _ => 0,
        }
    }

    /// A DMA by `device` to `iova`: the physical address it reaches, or
    /// `None` with a fault recorded. Translations are cached in the IOTLB.
    pub fn dma(&mut self, device: DeviceId, iova: u64, write: bool) -> Option<u64> {
        let g = self.granule();
        let page = iova & !(g - 1);
        let fault = |reason: u32, reason_name: &'static str| FaultEvent {
            device,
            address: iova,
            access: crate::Access::from_write(write),
            reason,
            reason_name,
        };
        let result = match self.attached.get(&device).and_then(|d| self.domains.get_mut(&d.0)) {
            Some(Domain::Identity) => return Some(iova),
            // Not attached: the unit's default, blocked.
            None => Err(fault(reason::BLOCKED, "not attached (blocked)")),
            Some(Domain::Blocked) => Err(fault(reason::BLOCKED, "blocked domain")),
            Some(Domain::Paging { pages, tlb }) => {
                let entry = tlb.get(&page).copied().or_else(|| pages.get(&page).copied());
                match entry {
                    None => Err(fault(reason::NOT_MAPPED, "not mapped")),
                    Some((pa, perms)) => {
                        // Test-side (simulated DMA): a full heap just leaves it uncached.
                        let _ = tlb.try_insert(page, (pa, perms));
                        let needed = if write { Perms::WRITE } else { Perms::READ };
                        if perms.contains(needed) {
                            Ok(pa + (iova - page))
                        } else {
                            Err(fault(reason::PERMISSION, "permission"))
                        }
                    }
                }
            }
        };
        result.map_err(|f| self.faults.push(f)).ok()
    }

    fn paging(&mut self, domain: DomainId) -> Result<&mut TryMap<u64, (u64, Perms)>, Error> {
        match self.domains.get_mut(&domain.0) {
            Some(Domain::Paging { pages, .. }) => Ok(pages),
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn check_range(&self, iova: u64, len: u64) -> Result<(), Error> {
        let g = self.granule();
        if len == 0 {
            return Err(Error::Map(io_pgtable::Error::Empty));
        }
        if !iova.is_multiple_of(g) || !len.is_multiple_of(g) {
            return Err(Error::Map(io_pgtable::Error::Unaligned));
        }
        match iova.checked_add(len - 1) {
            Some(last) if iova >= self.cfg.aperture.0 && last <= self.cfg.aperture.1 => Ok(()),
            _ => Err(Error::OutOfAperture { iova, len }),
        }
    }
}

impl Iommu for MockIommu {
    fn info(&self) -> Info {
        Info {
            kind: UnitKind::Mock,
            // No raw registers: `info` is asked on syscall paths and cannot
            // fail, so the mock's allocates nothing (a real driver's `raw`
            // vector is an infallible allocation there).
            raw: Vec::new(),
            page_sizes: self.cfg.page_sizes,
            aperture: self.cfg.aperture,
            native_identity: true,
        }
    }

    fn kind(&self) -> UnitKind {
        UnitKind::Mock
    }

    fn page_sizes(&self) -> u64 {
        self.cfg.page_sizes
    }

    fn aperture(&self) -> (u64, u64) {
        self.cfg.aperture
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        self.injected(Op::DomainAlloc)?;
        if self.domains.len() >= self.cfg.max_domains {
            return Err(Error::NoDomainIds);
        }
        let id = self.next_id;
        let d = match kind {
            DomainKind::Paging => Domain::Paging { pages: TryMap::new(), tlb: TryMap::new() },
            DomainKind::Identity => Domain::Identity,
            DomainKind::Blocked => Domain::Blocked,
        };
        self.domains.try_insert(id, d).map_err(|_| Error::NoMemory)?;
        self.next_id += 1;
        Ok(DomainId(id))
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        if self.attached.values().any(|d| *d == domain) {
            return Err(Error::Busy(domain));
        }
        self.domains.remove(&domain.0);
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        self.injected(Op::Attach)?;
        if !self.cfg.devices.contains(&device) {
            return Err(Error::NoSuchDevice(device));
        }
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        let g = self.granule();
        // Room for everything first, so a full heap changes nothing.
        if !self.attached.contains_key(&device) {
            self.attached.try_reserve(1).map_err(|_| Error::NoMemory)?;
        }
        let Self { cfg, domains, .. } = self;
        let direct = || {
            cfg.reserved
                .iter()
                .filter(move |(d, r)| d.is_none_or(|d| d == device) && r.kind == ReservedKind::DirectMap)
                .map(|(_, r)| *r)
        };
        if let Some(Domain::Paging { pages, .. }) = domains.get_mut(&domain.0) {
            let mut more = 0usize;
            for r in direct() {
                let mut p = r.start & !(g - 1);
                while p <= r.end {
                    more += usize::from(!pages.contains_key(&p));
                    p += g;
                }
            }
            pages.try_reserve(more).map_err(|_| Error::NoMemory)?;
            for r in direct() {
                let mut p = r.start & !(g - 1);
                while p <= r.end {
                    if !pages.contains_key(&p) {
                        pages.try_insert(p, (p, Perms::READ | Perms::WRITE)).map_err(|_| Error::NoMemory)?;
                    }
                    p += g;
                }
            }
        }
        self.attached.try_insert(device, domain).map_err(|_| Error::NoMemory)?;
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        if !self.cfg.devices.contains(&device) {
            return Err(Error::NoSuchDevice(device));
        }
        // A failed detach leaves the device where it was (still translated).
        self.injected(Op::Detach)?;
        self.attached.remove(&device);
        Ok(())
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.attached.get(&device).copied()
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.cfg.devices.clone()
    }

    fn serves(&self, device: DeviceId) -> bool {
        self.cfg.devices.contains(&device)
    }

    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        self.injected(Op::Map)?;
        self.check_range(iova, len)?;
        let g = self.granule();
        if !pa.is_multiple_of(g) {
            return Err(Error::Map(io_pgtable::Error::Unaligned));
        }
        if !perms.intersects(Perms::READ | Perms::WRITE) {
            return Err(Error::Map(io_pgtable::Error::BadPerms));
        }
        let pages = self.paging(domain)?;
        if let Some((&taken, _)) = pages.range(iova..=iova + (len - 1)).next() {
            return Err(Error::Map(io_pgtable::Error::AlreadyMapped(taken)));
        }
        // One reservation: the inserts after it cannot fail.
        let n = usize::try_from(len / g).map_err(|_| Error::NoMemory)?;
        pages.try_reserve(n).map_err(|_| Error::NoMemory)?;
        for i in 0..len / g {
            pages.try_insert(iova + i * g, (pa + i * g, perms)).map_err(|_| Error::NoMemory)?;
        }
        Ok(())
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        self.injected(Op::Unmap)?;
        self.check_range(iova, len)?;
        let g = self.granule();
        let pages = self.paging(domain)?;
        let last = iova + (len - 1);
        let mut range = pages.range(iova..=last);
        let count = range.len() as u64;
        let first = range.next().map(|(&k, _)| k);
        let end = range.next_back().map_or(first, |(&k, _)| Some(k)).map(|k| k + g);
        // Without allocating: a teardown command must work on a full heap.
        pages.retain(|&k, _| k < iova || k > last);
        let mut gather = Gather::default();
        if let (Some(start), Some(end)) = (first, end) {
            gather.start = start;
            gather.end = end;
        }
        Ok(Unmapped { bytes: count * g, gather })
    }

    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        self.injected(Op::Flush)?;
        match self.domains.get_mut(&domain.0) {
            Some(Domain::Paging { tlb, .. }) => {
                if gather.start < gather.end {
                    tlb.retain(|&k, _| k < gather.start || k >= gather.end);
                }
            }
            Some(_) => {}
            None => return Err(Error::NoSuchDomain(domain)),
        }
        self.flush_count += 1;
        // The log is the tests' record; a flush never fails for want of heap.
        let _ = self.flushes.try_push((domain, gather.start, gather.end));
        Ok(())
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let g = self.granule();
        match self.domains.get(&domain.0) {
            Some(Domain::Paging { pages, .. }) => pages.get(&(iova & !(g - 1))).map(|(pa, _)| pa + (iova & (g - 1))),
            Some(Domain::Identity) => Some(iova),
            _ => None,
        }
    }

    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        core::mem::take(&mut self.faults)
    }

    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        for e in self.faults.drain(..) {
            f(e);
        }
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        self.cfg.reserved.iter().filter(|(d, _)| d.is_none_or(|d| d == device)).map(|(_, r)| *r).collect()
    }

    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        for (d, r) in &self.cfg.reserved {
            if d.is_none_or(|d| d == device) {
                f(*r);
            }
        }
    }

    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        self.for_each_leaf_size(domain, iova, len, &mut |size, n| v.push((size, n)));
        v
    }

    /// The mock maps at its granule only: one size, counted without allocating.
    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        let g = self.granule();
        if let Some(Domain::Paging { pages, .. }) = self.domains.get(&domain.0) {
            let first = iova & !(g - 1);
            let n = match iova.checked_add(len) {
                Some(end) if end > iova => pages.range(first..end).len(),
                Some(_) => 0,
                None => pages.range(first..).len(),
            } as u64;
            if n > 0 {
                f(g, n);
            }
        }
    }

    fn flushes(&self) -> u64 {
        self.flush_count
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unmap_and_flush;
    use proptest::prelude::*;

    const DEV: DeviceId = DeviceId(0x10);
    const OTHER: DeviceId = DeviceId(0x18);
    const RW: Perms = Perms::READ.union(Perms::WRITE);

    #[test]
    fn dma_follows_the_domain_kind() {
        let mut m = MockIommu::new(MockConfig::default());
        assert_eq!(m.devices(), [DEV, OTHER]);
        assert_eq!(m.dma(DEV, 0x1234, true), None, "unattached devices are blocked");
        assert_eq!(m.drain_faults()[0].reason, reason::BLOCKED);
        let blocked = m.domain_alloc(DomainKind::Blocked).unwrap();
        m.attach(DEV, blocked).unwrap();
        assert_eq!(m.dma(DEV, 0x1234, false), None);
        let f = m.drain_faults();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].device, f[0].address, f[0].access, f[0].reason),
            (DEV, 0x1234, crate::Access::Read, reason::BLOCKED)
        );
        assert!(m.drain_faults().is_empty(), "drain takes the faults");
        let id = m.domain_alloc(DomainKind::Identity).unwrap();
        m.attach(DEV, id).unwrap();
        assert_eq!(m.dma(DEV, 0x5000, true), Some(0x5000));
        m.fail_next(Op::Detach, Error::Hardware("injected"));
        assert!(m.detach(DEV).is_err());
        assert_eq!(m.attached(DEV), Some(id), "a failed detach leaves the device where it was");
        m.detach(DEV).unwrap();
        assert_eq!(m.attached(DEV), None);
        assert_eq!(m.dma(DEV, 0x5000, true), None, "detach blocks");
    }

    #[test]
    fn leaves_are_counted_largest_first() {
        assert_eq!(crate::count_leaves([4096, 2 << 20, 4096, 1 << 30]), [(1 << 30, 1), (2 << 20, 1), (4096, 2)]);
        assert!(crate::count_leaves([]).is_empty());
    }

    #[test]
    fn paging_translates_and_checks_permissions() {
        let mut m = MockIommu::new(MockConfig::default());
        let d = m.domain_alloc(DomainKind::Paging).unwrap();
        m.map(d, 0x10_0000, 0x8000_0000, 0x2000, Perms::READ).unwrap();
        m.attach(DEV, d).unwrap();
        assert_eq!(m.dma(DEV, 0x10_1008, false), Some(0x8000_1008));
        assert_eq!(m.dma(DEV, 0x10_1008, true), None);
        assert_eq!(m.dma(DEV, 0x20_0000, false), None);
        let reasons: Vec<u32> = m.drain_faults().iter().map(|f| f.reason).collect();
        assert_eq!(reasons, [reason::PERMISSION, reason::NOT_MAPPED]);
        assert_eq!(m.iova_to_phys(d, 0x10_0010), Some(0x8000_0010));
    }

    #[test]
    fn stale_translation_survives_until_flushed() {
        let mut m = MockIommu::new(MockConfig::default());
        let d = m.domain_alloc(DomainKind::Paging).unwrap();
        m.map(d, 0x4000, 0x9000, 0x1000, RW).unwrap();
        m.attach(DEV, d).unwrap();
        assert_eq!(m.dma(DEV, 0x4000, true), Some(0x9000));
        let u = m.unmap(d, 0x4000, 0x1000).unwrap();
        assert_eq!(u.bytes, 0x1000);
        assert_eq!(m.dma(DEV, 0x4000, true), Some(0x9000), "the IOTLB still holds the entry");
        m.flush(d, u.gather).unwrap();
        assert_eq!(m.dma(DEV, 0x4000, true), None);
        assert_eq!(m.flushes, [(d, 0x4000, 0x5000)]);
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        let mut m = MockIommu::new(MockConfig { aperture: (0x1000, 0xFFFF_FFFF), ..MockConfig::default() });
        let d = m.domain_alloc(DomainKind::Paging).unwrap();
        let b = m.domain_alloc(DomainKind::Blocked).unwrap();
        assert_eq!(m.map(d, 0, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 0, len: 0x1000 }));
        assert_eq!(m.map(d, 0xFFFF_F000, 0, 0x2000, RW), Err(Error::OutOfAperture { iova: 0xFFFF_F000, len: 0x2000 }));
        assert_eq!(m.map(d, 0x1800, 0, 0x1000, RW), Err(Error::Map(io_pgtable::Error::Unaligned)));
        assert_eq!(m.map(d, 0x1000, 0, 0, RW), Err(Error::Map(io_pgtable::Error::Empty)));
        assert_eq!(m.map(d, 0x1000, 0, 0x1000, Perms::empty()), Err(Error::Map(io_pgtable::Error::BadPerms)));
        assert_eq!(m.map(b, 0x1000, 0, 0x1000, RW), Err(Error::NotPaging(b)));
        assert_eq!(m.map(DomainId(99), 0x1000, 0, 0x1000, RW), Err(Error::NoSuchDomain(DomainId(99))));
        m.map(d, 0x3000, 0, 0x1000, RW).unwrap();
        assert_eq!(m.map(d, 0x2000, 0, 0x3000, RW), Err(Error::Map(io_pgtable::Error::AlreadyMapped(0x3000))));
        assert_eq!(m.mapped_bytes(d), 0x1000, "a refused map changes nothing");
        assert_eq!(m.attach(DeviceId(0x99), d), Err(Error::NoSuchDevice(DeviceId(0x99))));
        m.attach(DEV, d).unwrap();
        assert_eq!(m.domain_free(d), Err(Error::Busy(d)));
        m.attach(DEV, b).unwrap();
        assert_eq!(m.domain_free(d), Ok(()));
        assert_eq!(m.domain_free(d), Err(Error::NoSuchDomain(d)));
    }

    #[test]
    fn injected_failures_fire_once() {
        let mut m = MockIommu::new(MockConfig { max_domains: 2, ..MockConfig::default() });
        m.fail_next(Op::DomainAlloc, Error::NoMemory);
        assert_eq!(m.domain_alloc(DomainKind::Paging), Err(Error::NoMemory));
        let d = m.domain_alloc(DomainKind::Paging).unwrap();
        m.fail_next(Op::Map, Error::Hardware("injected"));
        assert_eq!(m.map(d, 0, 0, 0x1000, RW), Err(Error::Hardware("injected")));
        assert_eq!(m.mapped_bytes(d), 0);
        m.map(d, 0, 0, 0x1000, RW).unwrap();
        m.fail_next(Op::Flush, Error::Hardware("flush"));
        assert_eq!(unmap_and_flush(&mut m, d, 0, 0x1000), Err(Error::Hardware("flush")));
        m.fail_next(Op::Attach, Error::Hardware("attach"));
        assert_eq!(m.attach(DEV, d), Err(Error::Hardware("attach")));
        assert_eq!(m.attached(DEV), None);
        m.domain_alloc(DomainKind::Blocked).unwrap();
        assert_eq!(m.domain_alloc(DomainKind::Identity), Err(Error::NoDomainIds));
    }

    #[test]
    fn direct_map_regions_are_mapped_on_attach_for_their_device_only() {
        let direct = Region { start: 0x7000_0000, end: 0x7000_2FFF, kind: ReservedKind::DirectMap };
        let mut cfg = MockConfig::default();
        cfg.reserved.push((Some(DEV), direct));
        let mut m = MockIommu::new(cfg);
        assert_eq!(m.reserved_regions(DEV).len(), 2);
        assert_eq!(m.reserved_regions(OTHER).len(), 1);
        let d = m.domain_alloc(DomainKind::Paging).unwrap();
        m.attach(OTHER, d).unwrap();
        assert_eq!(m.mapped_bytes(d), 0);
        m.attach(DEV, d).unwrap();
        assert_eq!(m.mapped_bytes(d), 0x3000);
        assert_eq!(m.dma(DEV, 0x7000_1000, true), Some(0x7000_1000));
        assert!(crate::overlaps_reserved(&m.reserved_regions(DEV), 0xFEE0_0000, 0xFEE0_0FFF).is_some());
        assert!(crate::overlaps_reserved(&m.reserved_regions(OTHER), 0x7000_0000, 0x7000_0FFF).is_none());
    }

    proptest! {
        /// Random maps and unmaps agree with a page-set model, and every DMA
        /// after a flushed unmap faults.
        #[test]
        fn model(ops in proptest::collection::vec((any::<bool>(), 0u64..64, 1u64..8), 1..64)) {
            let mut m = MockIommu::new(MockConfig::default());
            let d = m.domain_alloc(DomainKind::Paging).unwrap();
            m.attach(DEV, d).unwrap();
            let mut model = std::collections::BTreeSet::new();
            for (is_map, page, count) in ops {
                let (iova, len) = (page << 12, count << 12);
                let range: Vec<u64> = (page..page + count).collect();
                if is_map {
                    let free = range.iter().all(|p| !model.contains(p));
                    prop_assert_eq!(m.map(d, iova, 0x1_0000_0000 + iova, len, RW).is_ok(), free);
                    if free {
                        model.extend(range);
                    }
                } else {
                    let expect = range.iter().filter(|p| model.contains(p)).count() as u64 * 4096;
                    prop_assert_eq!(unmap_and_flush(&mut m, d, iova, len), Ok(expect));
                    for p in &range {
                        model.remove(p);
                        prop_assert_eq!(m.dma(DEV, p << 12, false), None);
                    }
                }
                prop_assert_eq!(m.mapped_bytes(d), model.len() as u64 * 4096);
            }
            for p in &model {
                prop_assert_eq!(m.dma(DEV, p << 12, true), Some(0x1_0000_0000 + (p << 12)));
            }
        }
    }
}
