//! The x86 IOMMU units at boot: each VT-d remapping unit of the topology is
//! brought up (root table, invalidation queue; translation stays off) and
//! handed to the kernel behind the generic `iommu::Iommu` trait.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bootinfo::MemoryKind;
use firmware::{IommuKind, Topology, UnitLocation};

/// One `VtdIommu` per VT-d unit in `topology`; a unit that fails to come up is
/// logged and left out.
pub fn units(boot: &bootinfo::BootInfo, topology: &Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    vtd::TRACE.store(boot.cmdline_value("trace") == Some("1"), core::sync::atomic::Ordering::Relaxed);
    let mut out: Vec<(usize, Box<dyn iommu::Iommu>)> = Vec::new();
    for (index, u) in topology.units().iter().enumerate().filter(|(_, u)| u.kind == IommuKind::Vtd) {
        let UnitLocation::Mmio { base, .. } = u.location else { continue };
        let mmio = match kcore::mm::map_mmio(base, 0x1000) {
            Ok(m) => m,
            Err(e) => {
                log::error!("vtd: {}: cannot map registers at {base:#x}: {e}", u.name);
                continue;
            }
        };
        let mut mem = kcore::iommu::KernelTables::default();
        let use_queue = boot.cmdline_value("vtd_qi") != Some("off");
        // SAFETY: `mmio` maps the unit's register page for the rest of the kernel's life (never unmapped), and the registered driver becomes its only user.
        let unit = match unsafe { vtd::Unit::with_queue(mmio.va, &mut mem, use_queue) } {
            Ok(unit) => unit,
            Err(e) => {
                log::error!("vtd: {}: bring-up failed: {e}", u.name);
                continue;
            }
        };
        log::info!("{} ({} at {base:#x})", unit.describe(), u.name);
        if !unit.queued() {
            log::info!("vtd: {}: register-based invalidation (CCMD, IOTLB registers)", u.name);
        }
        let ids = kcore::iommu::unit_devices(topology, index);
        let devices: Vec<u16> = ids.iter().filter_map(|&id| u16::try_from(id).ok()).collect();
        let reserved: Vec<(Option<u16>, iommu::Region)> = kcore::iommu::unit_reserved(topology, index, &ids)
            .into_iter()
            .map(|(d, r)| (d.and_then(|d| u16::try_from(d).ok()), r))
            .collect();
        let ram: Vec<(u64, u64)> = boot
            .regions()
            .iter()
            .filter(|r| matches!(r.kind, MemoryKind::Usable | MemoryKind::AcpiReclaimable))
            .map(|r| (r.base, r.end()))
            .collect();
        out.push((index, Box::new(vtd::VtdIommu::new(unit, mem, devices, reserved, ram))));
    }
    out
}
