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
