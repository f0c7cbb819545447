//! The firmware's ACPI tables, read through the direct map: the `acpi` crate
//! for the tables it models (MADT, MCFG, SPCR), a raw walker of the RSDT /
//! XSDT for the ones `acpi-tables` parses (DMAR, IVRS, IORT, VIOT, GTDT).
//! Shared by both architectures (x86 always, aarch64 when UEFI hands over
//! ACPI instead of a device tree).

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;

/// Maps ACPI tables through the kernel's direct map (nothing to unmap).
#[derive(Clone, Copy, Debug)]
pub struct DirectMapHandler;

impl AcpiHandler for DirectMapHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let va = crate::mm::phys_to_virt(physical_address as u64) as *mut T;
        // The direct map offset is non-zero, so the address is never null.
        let ptr = NonNull::new(va).unwrap_or(NonNull::dangling());
        // SAFETY: the boot page tables map the first 512 GiB of physical memory at the direct-map offset; firmware tables are read-only data that stays in place.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Opens the tables from the RSDP the loader found.
pub fn tables(rsdp: u64) -> Result<AcpiTables<DirectMapHandler>, acpi::AcpiError> {
    // SAFETY: `rsdp` comes from the boot protocol (PVH start_info or the UEFI hand-off) and points at firmware memory covered by the direct map.
    unsafe { AcpiTables::from_rsdp(DirectMapHandler, rsdp as usize) }
}

/// PCI hosts from the MCFG (ECAM windows). Address windows stay empty: where
/// ACPI describes the machine (PCs, UEFI on arm) firmware has assigned every
/// BAR and bus number, which the enumeration keeps (the _CRS windows live in
/// AML, not interpreted here).
pub fn pci_hosts(rsdp: u64) -> alloc::vec::Vec<crate::platform::EcamHost> {
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
        out.push(crate::platform::EcamHost { base: base + (u64::from(start) << 20), host });
    }
    out
}

/// Largest table the raw walker accepts (a corrupt length must not map the world).
const MAX_TABLE: usize = 1 << 20;

fn phys_bytes(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: firmware tables lie in RAM or reserved memory below 512 GiB, which the boot page tables map through the direct map; they are never written.
    unsafe { core::slice::from_raw_parts(crate::mm::phys_to_virt(pa) as *const u8, len) }
}

/// Every table the RSDT (or XSDT) lists, as `(signature, bytes)`; lengths are
/// taken from each header and capped, contents are not validated here.
pub fn raw_tables(rsdp: u64) -> alloc::vec::Vec<([u8; 4], &'static [u8])> {
    let mut out = alloc::vec::Vec::new();
    let r = phys_bytes(rsdp, 36);
    if &r[..8] != b"RSD PTR " {
        log::error!("acpi: no RSDP signature at {rsdp:#x}");
        return out;
    }
    let revision = r[15];
    let (root, entry_size) = if revision >= 2 && u64::from_le_bytes(r[24..32].try_into().unwrap_or([0; 8])) != 0 {
        (u64::from_le_bytes(r[24..32].try_into().unwrap_or([0; 8])), 8)
    } else {
        (u64::from(u32::from_le_bytes(r[16..20].try_into().unwrap_or([0; 4]))), 4)
    };
    let header = phys_bytes(root, 36);
    let len = (u32::from_le_bytes(header[4..8].try_into().unwrap_or([0; 4])) as usize).clamp(36, MAX_TABLE);
    let root_table = phys_bytes(root, len);
    for entry in root_table[36..].chunks_exact(entry_size) {
        let pa = if entry_size == 8 {
            u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]))
        } else {
            u64::from(u32::from_le_bytes(entry.try_into().unwrap_or([0; 4])))
        };
        let h = phys_bytes(pa, 36);
        let sig = [h[0], h[1], h[2], h[3]];
        let len = (u32::from_le_bytes(h[4..8].try_into().unwrap_or([0; 4])) as usize).clamp(36, MAX_TABLE);
        out.push((sig, phys_bytes(pa, len)));
    }
    out
}

/// The console the SPCR names, if it is a memory-mapped PL011 / SBSA UART:
/// its physical base address.
pub fn spcr_console(rsdp: u64) -> Option<u64> {
    let tables = tables(rsdp).ok()?;
    let spcr = tables.find_table::<acpi::spcr::Spcr>().ok()?;
    use acpi::spcr::SpcrInterfaceType as T;
    if !matches!(spcr.interface_type(), T::ArmPL011 | T::ArmSBSAGeneric32bit | T::ArmSBSAGeneric) {
        return None;
    }
    let gas = spcr.base_address()?.ok()?;
    (gas.address_space == acpi::address::AddressSpace::SystemMemory).then_some(gas.address)
}

/// The IOMMU topology from DMAR, IVRS, IORT and VIOT (whichever the machine
/// has); a table that fails to parse is logged and left out, the others still
/// count. `msi_window` is the architecture's interrupt address range, reserved
/// in every unit the tables describe (x86), or `None` where MSIs are
/// translated like any DMA (arm).
pub fn topology(rsdp: u64, functions: &[pci::Function], msi_window: Option<(u64, u64)>) -> topology::Topology {
    let mut t = topology::Topology::new();
    // DMAR and IVRS exist only on x86, which always passes its window.
    let window = msi_window.unwrap_or((0, 0));
    // A DMAR without remapping units (RMRRs only, e.g. a second table) or an
    // IVRS without IVHDs (IVMDs only) names devices through the units of the
    // others: add them last.
    let mut unitless = alloc::vec::Vec::new();
    let mut unitless_ivrs = alloc::vec::Vec::new();
    for (sig, bytes) in raw_tables(rsdp) {
        let name = core::str::from_utf8(&sig).unwrap_or("????");
        let result = match &sig {
            b"DMAR" => acpi_tables::dmar::parse(bytes).map(|d| {
                if d.drhds.is_empty() {
                    unitless.push(d);
                } else {
                    topology::build::add_dmar(&mut t, &d, functions, window)
                }
            }),
            b"IVRS" => acpi_tables::ivrs::parse(bytes).map(|v| {
                if v.ivhds.is_empty() {
                    unitless_ivrs.push(v);
                } else {
                    topology::build::add_ivrs(&mut t, &v, window)
                }
            }),
            b"VIOT" => acpi_tables::viot::parse(bytes).map(|v| topology::build::add_viot(&mut t, &v, msi_window)),
            b"IORT" => acpi_tables::iort::parse(bytes).map(|v| {
                topology::build::add_iort(&mut t, &v);
                log::info!("acpi: IOMMU topology from the IORT");
            }),
            _ => continue,
        };
        match result {
            Ok(()) => log::info!("acpi: {name} ({} bytes) parsed", bytes.len()),
            Err(e) => log::error!("acpi: {name} rejected: {e}; continuing without the units it describes"),
        }
    }
    for d in unitless {
        topology::build::add_dmar(&mut t, &d, functions, window);
    }
    for v in unitless_ivrs {
        topology::build::add_ivrs(&mut t, &v, window);
    }
    t
}
