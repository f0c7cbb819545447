//! Access to the firmware's ACPI tables through the direct map, for the `acpi` crate.

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;

/// Maps ACPI tables through the kernel's direct map (nothing to unmap).
#[derive(Clone, Copy, Debug)]
pub struct DirectMapHandler;

impl AcpiHandler for DirectMapHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let va = kcore::mm::phys_to_virt(physical_address as u64) as *mut T;
        // The direct map offset is non-zero, so the address is never null.
        let ptr = NonNull::new(va).unwrap_or(NonNull::dangling());
        // SAFETY: the boot page tables map the first 512 GiB of physical memory at the
        // direct-map offset; firmware tables are read-only data that stays in place.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Opens the tables from the RSDP the loader found.
pub fn tables(rsdp: u64) -> Result<AcpiTables<DirectMapHandler>, acpi::AcpiError> {
    // SAFETY: `rsdp` comes from the boot protocol (PVH start_info) and points at
    // firmware memory covered by the direct map.
    unsafe { AcpiTables::from_rsdp(DirectMapHandler, rsdp as usize) }
}

/// PCI hosts from the MCFG (ECAM windows). Address windows stay empty: on PCs
/// firmware assigns every BAR (the _CRS windows live in AML, not parsed here).
pub fn pci_hosts(rsdp: u64) -> alloc::vec::Vec<kcore::pci::Ecam> {
    let mut out = alloc::vec::Vec::new();
    let tables = match tables(rsdp) {
        Ok(t) => t,
        Err(e) => {
            log::error!("acpi: cannot read the tables: {e:?}");
            return out;
        }
    };
    let Ok(mcfg) = tables.find_table::<acpi::mcfg::Mcfg>() else {
        log::warn!("acpi: no MCFG: PCI configuration space unreachable");
        return out;
    };
    for e in mcfg.get().entries() {
        let (base, segment, start, end) = (e.base_address, e.pci_segment_group, e.bus_number_start, e.bus_number_end);
        if end < start {
            log::error!("acpi: MCFG entry for segment {segment} has buses {start}-{end}; skipped");
            continue;
        }
        let host = pci::HostBridge { segment, bus_start: start, bus_end: end, mmio32: None, mmio64: None, io: None };
        // The ECAM base in MCFG is that of bus 0; ours is that of the first bus.
        out.push(kcore::pci::Ecam::new(base + (u64::from(start) << 20), host));
    }
    out
}
