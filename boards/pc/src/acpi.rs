//! The x86 view of the ACPI tables (the shared reader is `kcore::acpi`): the
//! interrupt window every IOMMU topology reserves.

/// The x86 interrupt address range, which no IOMMU translates for DMA
/// (Intel SDM Vol. 3A §11.11.1; VT-d §3.15; AMD IOMMU §2.2.6).
pub const MSI_WINDOW: (u64, u64) = (0xFEE0_0000, 0xFEEF_FFFF);

/// The IOMMU topology from DMAR, IVRS and VIOT (see [`kcore::acpi::topology`]).
pub fn topology(rsdp: u64, functions: &[pci::Function]) -> topology::Topology {
    kcore::acpi::topology(rsdp, functions, Some(MSI_WINDOW))
}
