//! The x86 IOMMU units at boot: each VT-d remapping unit (root table,
//! invalidation queue), AMD-Vi unit (device table, command buffer, event log)
//! and virtio-iommu of the topology is brought up (translation stays off
//! until a device is attached) and handed to the kernel behind the generic
//! `iommu::Iommu` trait.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bootinfo::MemoryKind;
use topology::{IommuKind, Topology, UnitLocation};

/// One driver per VT-d, AMD-Vi and virtio-iommu unit in `topology`, in
/// topology order; a unit that fails to come up is logged and left out.
pub fn units(boot: &bootinfo::BootInfo, topology: &Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    let mut out = vtd_units(boot, topology);
    out.extend(amdvi_units(boot, topology));
    out.extend(board_common::virtio_units(boot, topology));
    out.sort_by_key(|(index, _)| *index);
    out
}

/// The unit's devices (requester IDs) and reserved regions, as the x86
/// drivers take them.
fn devices_and_reserved(topology: &Topology, index: usize) -> (Vec<u16>, Vec<(Option<u16>, iommu::Region)>) {
    let ids = kcore::iommu::unit_devices(topology, index);
    let devices: Vec<u16> = ids.iter().filter_map(|&id| u16::try_from(id).ok()).collect();
    let reserved = kcore::iommu::unit_reserved(topology, index, &ids)
        .into_iter()
        .map(|(d, r)| (d.and_then(|d| u16::try_from(d).ok()), r))
        .collect();
    (devices, reserved)
}

/// AMD-Vi units (IVHD): device table, command buffer and event log.
fn amdvi_units(boot: &bootinfo::BootInfo, topology: &Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    let mut out: Vec<(usize, Box<dyn iommu::Iommu>)> = Vec::new();
    for (index, u) in topology.units().iter().enumerate().filter(|(_, u)| u.kind == IommuKind::AmdVi) {
        let UnitLocation::Mmio { base, .. } = u.location else { continue };
        // The register block is 16 KiB (AMD IOMMU spec §3.4: head/tail registers at 0x2000); the IVHD gives no size.
        let mmio = match kcore::mm::map_mmio(base, amdvi::regs::MMIO_SIZE as u64) {
            Ok(m) => m,
            Err(e) => {
                log::error!("amdvi: {}: cannot map registers at {base:#x}: {e}", u.name);
                continue;
            }
        };
        let mut mem = kcore::iommu::KernelTables::default();
        // SAFETY: `mmio` maps `mmio.len` bytes of the unit's registers (device memory) for the rest of the kernel's life (never unmapped), no Rust reference covers them, and the AMD-Vi driver becomes their only user.
        let regs = unsafe { iommu::mmio::MmioWindow::new(mmio.va, mmio.len) };
        let unit = match amdvi::AmdVi::new(regs, &mut mem) {
            Ok(unit) => unit,
            Err(e) => {
                log::error!("amdvi: {}: bring-up failed: {e}", u.name);
                continue;
            }
        };
        log::info!("{} ({} at {base:#x})", unit.describe(), u.name);
        let (devices, reserved) = devices_and_reserved(topology, index);
        let stale = stale_bus_entries(boot, topology, index);
        let mut a = amdvi::AmdViIommu::new(unit, mem, devices, reserved).with_dte_aliases(stale);
        match (boot.cmdline_value("intremap") != Some("off"), u.interrupt_remapping) {
            (false, _) => {
                log::warn!("amdvi: {}: interrupt remapping off (intremap=off): its devices can raise any vector", u.name)
            }
            (true, Some(true)) => {
                if let Err(e) = a.enable_interrupt_remapping() {
                    log::warn!("amdvi: {}: interrupts not remapped ({e}): its devices can raise any vector", u.name);
                }
            }
            (true, _) => log::warn!(
                "amdvi: {}: interrupts not remapped (the IVRS names no I/O APIC for the unit, so it does not remap): its devices can raise any vector",
                u.name
            ),
        }
        out.push((index, Box::new(a)));
    }
    out
}

/// Subsystem vendor ID in a type 0 configuration header.
const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;

/// `amdvi.stale_bus=auto|on|off` (default `auto`: on when the unit is
/// QEMU's, `amdvi::qemu::is_qemu_iommu_function`): for every device of AMD-Vi
/// unit `index` off bus 0, the bus-0 DeviceID QEMU 10.0 translates its DMA
/// through (`amdvi::qemu`), as `(device, stale)` for the driver; each is
/// noted for the kernel's IOMMU groups, which log it.
fn stale_bus_entries(boot: &bootinfo::BootInfo, topology: &Topology, index: usize) -> Vec<(u16, u16)> {
    use amdvi::qemu::{self, StaleBus};
    use pci::ConfigAccess;
    let Some(u) = topology.units().get(index) else { return Vec::new() };
    let mode = StaleBus::parse(boot.cmdline_value("amdvi.stale_bus")).unwrap_or_else(|other| {
        log::warn!("amdvi: amdvi.stale_bus={other} is not auto|on|off: using auto");
        StaleBus::Auto
    });
    let qemu_function = kcore::pci::devices().iter().map(|d| &d.function).find(|f| {
        f.bdf.segment == u.segment
            && kcore::pci::access(f.bdf).is_some_and(|a| {
                qemu::is_qemu_iommu_function(f.vendor, f.device, f.class, a.read16(f.bdf, SUBSYSTEM_VENDOR_ID))
            })
    });
    let why = match qemu_function {
        Some(f) => alloc::format!("{} is QEMU's AMD-Vi function (1022:1419, subsystem vendor 1af4)", f.bdf),
        None => "no QEMU AMD-Vi function found".into(),
    };
    if !mode.applies(qemu_function.is_some()) {
        log::info!("amdvi: {}: amdvi.stale_bus={mode:?}: {why}; every device only through its own DeviceID", u.name);
        return Vec::new();
    }
    log::info!(
        "amdvi: {}: amdvi.stale_bus={mode:?}: {why}; devices off bus 0 are programmed under their bus-0 DeviceID too",
        u.name
    );
    let mut out = Vec::new();
    for id in kcore::iommu::unit_devices(topology, index).into_iter().filter_map(|id| u16::try_from(id).ok()) {
        if let Some(stale) = qemu::stale_device_id(id) {
            kcore::iommu::note_dma_alias(kcore::iommu::DmaAlias {
                unit: index,
                id: u32::from(id),
                alias: u32::from(stale),
                who: "amdvi",
                why: "by QEMU 10.0 (bus numbers read before enumeration)",
            });
            out.push((id, stale));
        }
    }
    out
}

/// VT-d remapping units (DRHD): root table and invalidation queue.
fn vtd_units(boot: &bootinfo::BootInfo, topology: &Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    let intremap = boot.cmdline_value("intremap") != Some("off");
    let mut out: Vec<(usize, Box<dyn iommu::Iommu>)> = Vec::new();
    for (index, u) in topology.units().iter().enumerate().filter(|(_, u)| u.kind == IommuKind::Vtd) {
        let UnitLocation::Mmio { base, size } = u.location else { continue };
        // The register set the DRHD describes (2^Size 4 KiB pages, VT-d §8.3),
        // at least one page; the driver checks that the IOTLB and
        // fault-recording registers CAP and ECAP locate lie inside it.
        let window = size.max(0x1000);
        let mmio = match kcore::mm::map_mmio(base, window) {
            Ok(m) => m,
            Err(e) => {
                log::error!("vtd: {}: cannot map {window:#x} bytes of registers at {base:#x}: {e}", u.name);
                continue;
            }
        };
        let mut mem = kcore::iommu::KernelTables::default();
        let use_queue = boot.cmdline_value("vtd_qi") != Some("off");
        // SAFETY: `mmio` maps the unit's `window`-byte register set (device memory) for the rest of the kernel's life (never unmapped), no Rust reference covers it, and the VT-d driver becomes its only user.
        let regs = unsafe { iommu::mmio::MmioWindow::new(mmio.va, window) };
        let unit = match vtd::Unit::with_queue(regs, &mut mem, use_queue) {
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
        let (devices, reserved) = devices_and_reserved(topology, index);
        let ram: Vec<(u64, u64)> = boot
            .regions()
            .iter()
            .filter(|r| matches!(r.kind, MemoryKind::Usable | MemoryKind::AcpiReclaimable))
            .map(|r| (r.base, r.end()))
            .collect();
        match vtd::VtdIommu::new(unit, mem, devices, reserved, ram) {
            Ok(mut v) => {
                if intremap {
                    if let Err(e) = v.enable_interrupt_remapping() {
                        log::warn!("vtd: {}: interrupts not remapped ({e}): its devices can raise any vector", u.name);
                    }
                } else {
                    log::warn!(
                        "vtd: {}: interrupt remapping off (intremap=off): its devices can raise any vector",
                        u.name
                    );
                }
                out.push((index, Box::new(v)))
            }
            Err(e) => log::error!("vtd: {}: cannot block its devices and turn translation on: {e}", u.name),
        }
    }
    out
}
