//! The arm IOMMU units at boot: each SMMUv3 (stream table, command and event
//! queues) and virtio-iommu of the topology is brought up (translation stays
//! off until a device is attached) and handed to the kernel behind the
//! generic `iommu::Iommu` trait.

use alloc::boxed::Box;
use alloc::vec::Vec;
use topology::{IommuKind, Topology, UnitLocation};

/// One driver per SMMUv3 and virtio-iommu in `topology`, in topology order; a
/// unit that fails to come up is logged and left out.
pub fn units(boot: &bootinfo::BootInfo, topology: &Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    let mut out = smmu_units(boot, topology);
    out.extend(board_common::virtio_units(boot, topology));
    out.sort_by_key(|(index, _)| *index);
    out
}

/// One `SmmuIommu` per SMMUv3 in `topology`. `smmu_stage=2` on the command line makes paging
/// domains use stage 2 where the SMMU has both stages; `smmu_st=linear` asks
/// for a linear stream table where a 2-level one would do.
fn smmu_units(boot: &bootinfo::BootInfo, topology: &Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    let prefer_stage2 = boot.cmdline_value("smmu_stage") == Some("2");
    let mut out: Vec<(usize, Box<dyn iommu::Iommu>)> = Vec::new();
    for (index, u) in topology.units().iter().enumerate().filter(|(_, u)| u.kind == IommuKind::Smmuv3) {
        let UnitLocation::Mmio { base, size } = u.location else { continue };
        // The window the firmware described (device-tree `reg`; an IORT node
        // implies the architected 128 KiB); the driver refuses one that lacks
        // a register it uses (page 1's event queue indices).
        let window = if size == 0 { smmuv3::regs::ARCHITECTED_WINDOW } else { size };
        let mmio = match kcore::mm::map_mmio(base, window) {
            Ok(m) => m,
            Err(e) => {
                log::error!("smmuv3: {}: cannot map {window:#x} bytes of registers at {base:#x}: {e}", u.name);
                continue;
            }
        };
        let mut mem = kcore::iommu::KernelTables::default();
        let linear = boot.cmdline_value("smmu_st") == Some("linear");
        // SAFETY: `mmio` maps the `window`-byte register window (device memory) for the rest of the kernel's life (never unmapped), and the registered driver becomes the SMMU's only user.
        let regs = unsafe { iommu::mmio::MmioWindow::new(mmio.va, window) };
        let smmu = match smmuv3::Smmu::with_options(regs, &mut mem, linear) {
            Ok(s) => s,
            Err(e) => {
                log::error!("smmuv3: {}: bring-up failed: {e}", u.name);
                continue;
            }
        };
        log::info!("{} ({} at {base:#x})", smmu.describe(), u.name);
        let devices = kcore::iommu::unit_devices(topology, index);
        let reserved = kcore::iommu::unit_reserved(topology, index, &devices);
        let driver = match smmuv3::SmmuIommu::new(smmu, mem, devices, reserved, prefer_stage2) {
            Ok(d) => d,
            Err(e) => {
                log::error!("smmuv3: {}: cannot abort its streams and set SMMUEN: {e}", u.name);
                continue;
            }
        };
        log::info!("smmuv3: {}: paging domains use stage {}", u.name, if driver.uses_stage2() { 2 } else { 1 });
        out.push((index, Box::new(driver)));
    }
    out
}
