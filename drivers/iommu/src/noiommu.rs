//! No IOMMU at all, made to look like one for the generic door: the unit
//! the kernel registers when booted with `iommu.noiommu=allow` on a machine
//! whose firmware describes no IOMMU (as Linux's VFIO "no-IOMMU mode",
//! `enable_unsafe_noiommu_mode`). It exists to measure what a real IOMMU
//! costs (`cargo xtask bench blk`, the "none" column), never to protect.
//!
//! A device behind it reaches every physical address: nothing is
//! translated and nothing is blocked. The unit keeps the generic door's
//! contract as far as it can without hardware: a paging domain holds only
//! identity mappings (IOVA = physical address; [`Iommu::identity_only`], so
//! the IOAS places an area at the physical address of its pinned pages),
//! which is what the device reaches while the pages stay pinned, and a map
//! anywhere else is refused. Blocking a device is impossible and is said so
//! ([`Error::NotSupported`]); the kernel's Bus Master policy keeps DMA off
//! until a task turns it on for a function it claimed.

use crate::{
    DeviceId, DomainId, DomainKind, Error, FaultEvent, Gather, Info, Iommu, Perms, Region, UnitKind, Unmapped,
};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// One domain: its kind and identity mappings (start → length).
#[derive(Debug, Default)]
struct Domain {
    identity: bool,
    mappings: BTreeMap<u64, u64>,
}

/// The no-IOMMU unit (see the module docs).
#[derive(Debug, Default)]
pub struct NoIommu {
    devices: Vec<DeviceId>,
    domains: BTreeMap<u32, Domain>,
    next: u32,
    attached: BTreeMap<u32, DomainId>,
}

/// 48-bit physical addresses.
const APERTURE: (u64, u64) = (0, (1 << 48) - 1);
const PAGE: u64 = 4096;
/// The page size the unit reports: 2 MiB, so that the IOAS's IOVA alignment
/// (Linux's `out_iova_alignment`: maps and the physical blocks of their
/// memory are multiples of it) makes `userlib::iommufd::dma_alloc` hand out
/// physically contiguous 2 MiB blocks, which an identity mapping needs.
const REPORTED_PAGE: u64 = 2 << 20;

impl NoIommu {
    /// A unit "serving" `devices` (their requester IDs).
    pub fn new(devices: Vec<DeviceId>) -> NoIommu {
        NoIommu { devices, next: 1, ..NoIommu::default() }
    }

    fn domain(&mut self, d: DomainId) -> Result<&mut Domain, Error> {
        self.domains.get_mut(&d.0).ok_or(Error::NoSuchDomain(d))
    }
}

impl Iommu for NoIommu {
    fn info(&self) -> Info {
        Info {
            kind: UnitKind::NoIommu,
            raw: Vec::new(),
            page_sizes: REPORTED_PAGE,
            aperture: APERTURE,
            native_identity: true,
        }
    }

    fn identity_only(&self) -> bool {
        true
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        let identity = match kind {
            DomainKind::Paging => false,
            DomainKind::Identity => true,
            DomainKind::Blocked => return Err(Error::NotSupported("blocking DMA (there is no IOMMU)")),
        };
        let id = self.next;
        self.next = self.next.checked_add(1).ok_or(Error::NoDomainIds)?;
        self.domains.insert(id, Domain { identity, mappings: BTreeMap::new() });
        Ok(DomainId(id))
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        if self.attached.values().any(|&d| d == domain) {
            return Err(Error::Busy(domain));
        }
        self.domains.remove(&domain.0).map(|_| ()).ok_or(Error::NoSuchDomain(domain))
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        if !self.devices.contains(&device) {
            return Err(Error::NoSuchDevice(device));
        }
        self.domain(domain)?;
        self.attached.insert(device.0, domain);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        if !self.devices.contains(&device) {
            return Err(Error::NoSuchDevice(device));
        }
        self.attached.remove(&device.0);
        Ok(())
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.attached.get(&device.0).copied()
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.devices.clone()
    }

    /// Records an identity mapping; any other is refused (the device would
    /// reach `iova` itself, not `pa`).
    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, _perms: Perms) -> Result<(), Error> {
        let d = self.domain(domain)?;
        if d.identity {
            return Err(Error::NotPaging(domain));
        }
        if iova != pa {
            return Err(Error::NotSupported("a mapping other than IOVA = physical address (there is no IOMMU)"));
        }
        if len == 0 || !iova.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(Error::Map(io_pgtable::Error::Unaligned));
        }
        let last = iova.checked_add(len - 1).filter(|&l| l <= APERTURE.1).ok_or(Error::OutOfAperture { iova, len })?;
        if d.mappings.range(..=last).next_back().is_some_and(|(&s, &l)| s + l > iova) {
            return Err(Error::Map(io_pgtable::Error::AlreadyMapped(iova)));
        }
        d.mappings.insert(iova, len);
        Ok(())
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        let d = self.domain(domain)?;
        let end = iova.saturating_add(len);
        let inside: Vec<(u64, u64)> = d.mappings.range(iova..end).map(|(&s, &l)| (s, l)).collect();
        let mut bytes = 0;
        for (s, l) in inside {
            if s + l <= end {
                d.mappings.remove(&s);
                bytes += l;
            }
        }
        Ok(Unmapped { bytes, gather: Gather::default() })
    }

    fn flush(&mut self, _domain: DomainId, _gather: Gather) -> Result<(), Error> {
        Ok(())
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let d = self.domains.get(&domain.0)?;
        if d.identity {
            return Some(iova);
        }
        d.mappings.range(..=iova).next_back().filter(|(&s, &l)| iova < s + l).map(|_| iova)
    }

    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        Vec::new()
    }

    fn reserved_regions(&self, _device: DeviceId) -> Vec<Region> {
        Vec::new()
    }

    fn flushes(&self) -> u64 {
        0
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identity_mappings_and_no_blocking() {
        let mut u = NoIommu::new(alloc::vec![DeviceId(0x10)]);
        assert!(u.identity_only());
        assert!(matches!(u.domain_alloc(DomainKind::Blocked), Err(Error::NotSupported(_))));
        let d = u.domain_alloc(DomainKind::Paging).unwrap();
        assert!(matches!(u.map(d, 0x10_0000, 0x20_0000, 0x1000, Perms::READ), Err(Error::NotSupported(_))));
        u.map(d, 0x20_0000, 0x20_0000, 0x2000, Perms::READ).unwrap();
        assert_eq!(u.iova_to_phys(d, 0x20_1000), Some(0x20_1000));
        assert_eq!(u.iova_to_phys(d, 0x20_2000), None);
        assert!(u.map(d, 0x20_1000, 0x20_1000, 0x1000, Perms::READ).is_err(), "overlap");
        assert!(u.map(d, 0x20_0800, 0x20_0800, 0x1000, Perms::READ).is_err(), "misaligned");
        assert_eq!(u.attach(DeviceId(0x18), d), Err(Error::NoSuchDevice(DeviceId(0x18))));
        u.attach(DeviceId(0x10), d).unwrap();
        assert_eq!(u.domain_free(d), Err(Error::Busy(d)));
        assert_eq!(u.unmap(d, 0x20_0000, 0x2000).unwrap().bytes, 0x2000);
        assert_eq!(u.iova_to_phys(d, 0x20_0000), None);
        u.detach(DeviceId(0x10)).unwrap();
        u.domain_free(d).unwrap();
    }
}
