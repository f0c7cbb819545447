//! Each IOMMU unit under a lock of its own (docs/smp.md): the registry
//! hands every CPU a [`SharedUnit`] per unit, a proxy that takes the unit's
//! lock for each call and forwards it, so an iommufd op gets the
//! `&mut [Box<dyn Iommu>]` it works on without a machine-wide lock. Two
//! tasks' ops meet only inside the same unit's calls (its tables, its
//! queue and its invalidation waits); pinning, placement and bookkeeping
//! run in parallel.

use alloc::boxed::Box;
use alloc::vec::Vec;
use iommu::{
    DeviceId, DomainId, DomainKind, Error, FaultEvent, Gather, Info, Iommu, MsiMessage, MsiTarget, Perms, Region,
    UnitKind, Unmapped,
};

/// One unit's driver under its lock; registered once, never freed.
pub type UnitLock = spin::Mutex<Box<dyn Iommu>>;

/// A proxy for one unit: every call takes the unit's lock for its length.
/// (`as_any_mut` answers the proxy itself: reach the driver through
/// `kcore::iommu::with_drivers`.)
pub struct SharedUnit(pub &'static UnitLock);

impl Iommu for SharedUnit {
    fn info(&self) -> Info {
        self.0.lock().info()
    }

    fn try_info(&self) -> Result<Info, Error> {
        self.0.lock().try_info()
    }

    fn kind(&self) -> UnitKind {
        self.0.lock().kind()
    }

    fn page_sizes(&self) -> u64 {
        self.0.lock().page_sizes()
    }

    fn aperture(&self) -> (u64, u64) {
        self.0.lock().aperture()
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        self.0.lock().domain_alloc(kind)
    }

    fn domain_alloc_user(&mut self, data_type: u32, data: &[u8], parent: Option<DomainId>) -> Result<DomainId, Error> {
        self.0.lock().domain_alloc_user(data_type, data, parent)
    }

    fn domain_alloc_nest_parent(&mut self) -> Result<DomainId, Error> {
        self.0.lock().domain_alloc_nest_parent()
    }

    fn invalidate_user(
        &mut self,
        domain: DomainId,
        data_type: u32,
        entries: &[u8],
        entry_len: usize,
    ) -> (u32, Result<(), Error>) {
        self.0.lock().invalidate_user(domain, data_type, entries, entry_len)
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        self.0.lock().domain_free(domain)
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        self.0.lock().attach(device, domain)
    }

    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        self.0.lock().detach(device)
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.0.lock().attached(device)
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.0.lock().devices()
    }

    fn serves(&self, device: DeviceId) -> bool {
        self.0.lock().serves(device)
    }

    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        self.0.lock().map(domain, iova, pa, len, perms)
    }

    fn map_runs(
        &mut self,
        domain: DomainId,
        runs: &mut dyn Iterator<Item = (u64, u64, u64)>,
        perms: Perms,
    ) -> Result<(), (Error, usize)> {
        self.0.lock().map_runs(domain, runs, perms)
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        self.0.lock().unmap(domain, iova, len)
    }

    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        self.0.lock().flush(domain, gather)
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.0.lock().iova_to_phys(domain, iova)
    }

    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        self.0.lock().drain_faults()
    }

    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        self.0.lock().drain_faults_with(f)
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        self.0.lock().reserved_regions(device)
    }

    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        self.0.lock().for_each_reserved(device, f)
    }

    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        self.0.lock().leaves(domain, iova, len)
    }

    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        self.0.lock().for_each_leaf_size(domain, iova, len, f)
    }

    fn shrink(&mut self) {
        self.0.lock().shrink()
    }

    fn flushes(&self) -> u64 {
        self.0.lock().flushes()
    }

    fn remaps_interrupts(&self) -> bool {
        self.0.lock().remaps_interrupts()
    }

    fn identity_only(&self) -> bool {
        self.0.lock().identity_only()
    }

    fn msi_remap(&mut self, device: DeviceId, target: MsiTarget) -> Result<Option<MsiMessage>, Error> {
        self.0.lock().msi_remap(device, target)
    }

    fn msi_unmap(&mut self, device: DeviceId, vector: u8) -> Result<(), Error> {
        self.0.lock().msi_unmap(device, vector)
    }

    fn describe(&self, what: iommu::describe::Describe, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        self.0.lock().describe(what, out)
    }

    fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        self.0.lock().describe_queue(out)
    }

    fn tracer(&self) -> iommu::trace::Tracer {
        self.0.lock().tracer()
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}
