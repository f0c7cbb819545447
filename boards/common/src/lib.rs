//! Bring-up both boards share: the virtio-iommu, a PCI function on either
//! architecture (virtio 1.2 §5.13, PCI transport §4.1), and its kernel tests;
//! programming a function's MSI or MSI-X message ([`msi`], [`msix`]).
//! The arch boards (`board-pc`, `board-virt`) call [`virtio_units`] beside
//! their own IOMMUs; nothing else in the kernel names the virtio-iommu driver.

#![no_std]

extern crate alloc;

pub mod ktests;
pub mod msi;
pub mod msix;

use alloc::boxed::Box;
use alloc::vec::Vec;
use topology::{IommuKind, UnitLocation};

/// Every virtio-iommu of `topology` (a PCI function, on either architecture):
/// its virtio structures found through its vendor capabilities, the BARs
/// holding them mapped, bus mastering on (its queues are DMA), the function
/// kept from tasks, and the device initialised; a unit that fails is logged
/// and left out.
pub fn virtio_units(_boot: &bootinfo::BootInfo, topology: &topology::Topology) -> Vec<(usize, Box<dyn iommu::Iommu>)> {
    let mut out: Vec<(usize, Box<dyn iommu::Iommu>)> = Vec::new();
    for (index, u) in topology.units().iter().enumerate().filter(|(_, u)| u.kind == IommuKind::Virtio) {
        let UnitLocation::Pci { segment, rid } = u.location else { continue };
        let found =
            kcore::pci::devices().iter().find(|d| d.function.bdf.segment == segment && d.function.bdf.rid() == rid);
        let Some(dev) = found else {
            log::error!("virtio-iommu: {}: no PCI function {:04x}:{rid:04x}", u.name, segment);
            continue;
        };
        let mut mem = kcore::iommu::KernelTables::default();
        match virtio_device(dev, &mut mem) {
            Ok(d) => {
                log::info!("{} ({} at {})", d.describe(), u.name, dev.function.bdf);
                let endpoints = kcore::iommu::unit_devices(topology, index);
                match virtio_iommu::VirtioIommu::new(d, mem, endpoints) {
                    Ok(v) => out.push((index, Box::new(v))),
                    Err(e) => log::error!("virtio-iommu: {}: cannot block its endpoints: {e}", u.name),
                }
            }
            Err(e) => log::error!("virtio-iommu: {}: bring-up failed: {e}", u.name),
        }
    }
    out
}

/// Finds, maps and initialises the virtio-iommu at `dev` (virtio 1.2 §4.1.4).
fn virtio_device(
    dev: &kcore::pci::Device,
    mem: &mut kcore::iommu::KernelTables,
) -> Result<virtio_iommu::VirtioIommuDevice, alloc::string::String> {
    use alloc::format;
    use pci::ConfigAccess;
    let f = &dev.function;
    let access = kcore::pci::access(f.bdf).ok_or("no configuration access")?;
    let vendor_caps: Vec<u16> = f.caps.legacy.iter().filter(|c| c.0 == pci::caps::id::VENDOR).map(|c| c.1).collect();
    let caps = virtio_iommu::find_caps(|o| access.read8(f.bdf, o), |o| access.read32(f.bdf, o), &vendor_caps)
        .map_err(|e| format!("{e}"))?;
    // Each structure's BAR, mapped once; each structure a window of its capability's bytes.
    let mut mapped_bars: Vec<(u8, iommu::mmio::MmioWindow)> = Vec::new();
    let mut at = |r: virtio_iommu::CapRegion| -> Result<iommu::mmio::MmioWindow, alloc::string::String> {
        let bar = f.bars.iter().find(|b| b.index == r.bar).ok_or_else(|| format!("BAR{} is not implemented", r.bar))?;
        if bar.base == 0 || matches!(bar.kind, pci::BarKind::Io) {
            return Err(format!("BAR{} is unassigned or an I/O BAR", r.bar));
        }
        if u64::from(r.offset) + u64::from(r.length) > bar.size {
            return Err(format!("a virtio structure lies beyond BAR{}", r.bar));
        }
        let window = match mapped_bars.iter().find(|m| m.0 == r.bar) {
            Some(m) => m.1,
            None => {
                let m = kcore::mm::map_mmio(kcore::pci::bar_cpu_address(dev, bar), bar.size)
                    .map_err(|e| format!("cannot map BAR{}: {e}", r.bar))?;
                // SAFETY: `map_mmio` mapped the whole BAR (device memory) for the rest of the kernel's life, never unmapped; the function is kept from tasks, so the driver is the only user of its registers.
                let window = unsafe { iommu::mmio::MmioWindow::new(m.va, bar.size) };
                mapped_bars.push((r.bar, window));
                window
            }
        };
        window.sub(u64::from(r.offset), u64::from(r.length)).map_err(|e| format!("BAR{}: {e}", r.bar))
    };
    let mapped = virtio_iommu::Mapped {
        common: at(caps.common)?,
        notify: at(caps.notify)?,
        notify_multiplier: caps.notify_off_multiplier,
        isr: at(caps.isr)?,
        device: at(caps.device)?,
    };
    kcore::pci::keep_for_kernel(f.bdf);
    pci::set_bus_master(access, f.bdf, true);
    // Bus mastering is on; the windows stay mapped (see above).
    virtio_iommu::VirtioIommuDevice::new(mapped, mem).map_err(|e| format!("{e}"))
}
