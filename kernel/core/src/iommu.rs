//! Glue for IOMMU drivers: page-table frames from the kernel frame allocator,
//! reached through the direct map (the `io-pgtable` frame seam), and the
//! registry of the units brought up at boot.

use crate::mm;
use alloc::boxed::Box;
use alloc::vec::Vec;

static UNITS: spin::Mutex<Vec<Box<dyn iommu::Iommu>>> = spin::Mutex::new(Vec::new());
/// The topology index of each registered unit (same order as `UNITS`).
static TOPOLOGY_INDEX: spin::Mutex<Vec<usize>> = spin::Mutex::new(Vec::new());

/// Reserves the firmware's direct-map regions (RMRR, IVMD unity, IORT RMR) in
/// the frame allocator, so the kernel never hands out memory that devices may
/// still be using, then brings up every unit the platform has a driver for.
pub fn init(boot: &bootinfo::BootInfo) {
    let Some(topo) = crate::pci::topology() else { return };
    for r in topo.reserved().iter().filter(|r| r.kind == firmware::ReservedKind::DirectMap) {
        let end = r.end.saturating_add(1);
        let taken = mm::frames_taken(boot, r.start, end);
        if taken > 0 {
            log::error!(
                "iommu: direct-map region {:#x}-{:#x} overlaps {taken} frame(s) the kernel already uses",
                r.start,
                r.end
            );
        }
        match mm::reserve_range(r.start, end) {
            Ok(()) => {
                log::info!("iommu: direct-map region {:#x}-{:#x} kept out of the frame allocator", r.start, r.end)
            }
            Err(e) => log::error!("iommu: cannot reserve {:#x}-{:#x}: {e:?}", r.start, r.end),
        }
    }
    let units = crate::platform().iommu_units(boot, topo);
    if !units.is_empty() {
        log::info!("iommu: {} unit(s) registered", units.len());
    }
    for (index, unit) in units {
        TOPOLOGY_INDEX.lock().push(index);
        UNITS.lock().push(unit);
    }
}

/// The IDs unit `index` of `topology` sees the PCI functions behind it by
/// (requester IDs after aliasing, or stream IDs), sorted, without repeats.
pub fn unit_devices(topology: &firmware::Topology, index: usize) -> Vec<u32> {
    let functions: Vec<pci::Function> = crate::pci::devices().iter().map(|d| d.function.clone()).collect();
    let mut ids: Vec<u32> = functions
        .iter()
        .filter_map(|f| topology.translate_pci(f.bdf.segment, pci::dma_requester_id(f, &functions)))
        .filter(|t| t.unit == index)
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Reserved regions of unit `index`, per device ID (`None`: every device),
/// for the devices in `devices`.
pub fn unit_reserved(
    topology: &firmware::Topology,
    index: usize,
    devices: &[u32],
) -> Vec<(Option<u32>, iommu::Region)> {
    let mut out = Vec::new();
    for r in topology.reserved().iter().filter(|r| r.unit == index) {
        let region = iommu::Region { start: r.start, end: r.end, kind: r.kind };
        match r.devices {
            None => out.push((None, region)),
            Some((_, m)) => out.extend(
                devices
                    .iter()
                    .filter(|&&id| u16::try_from(id).is_ok_and(|rid| m.covers(rid)))
                    .map(|&id| (Some(id), region)),
            ),
        }
    }
    out
}

/// The registry index of the unit the topology lists at `topology_index`.
pub fn registered(topology_index: usize) -> Option<usize> {
    TOPOLOGY_INDEX.lock().iter().position(|&i| i == topology_index)
}

/// The topology index of registered unit `unit`.
pub fn topology_index(unit: usize) -> Option<usize> {
    TOPOLOGY_INDEX.lock().get(unit).copied()
}

/// The firmware name (`dmar0`, `smmu0`) of registered unit `unit` ("" if unknown).
pub fn unit_name(unit: usize) -> alloc::string::String {
    topology_index(unit)
        .and_then(|t| crate::pci::topology().and_then(|topo| topo.units().get(t).map(|u| u.name.clone())))
        .unwrap_or_default()
}

/// Takes every fault the registered units recorded and logs it; returns how many.
pub fn log_faults() -> usize {
    with_units(|units| {
        let mut n = 0;
        for (i, u) in units.iter_mut().enumerate() {
            for f in u.drain_faults() {
                log::warn!("iommu: {}: {f}", unit_name(i));
                n += 1;
            }
        }
        n
    })
}

/// Runs `f` on the registered units (in topology order), holding the registry lock.
pub fn with_units<R>(f: impl FnOnce(&mut [Box<dyn iommu::Iommu>]) -> R) -> R {
    f(&mut UNITS.lock())
}

impl iommu::DmaMemory for KernelTables {
    fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
        let pa = mm::alloc_frames(frames, frames)?;
        self.live += frames;
        Some(pa)
    }

    fn free_contiguous(&mut self, base: u64, frames: usize) {
        for i in 0..frames as u64 {
            if mm::free_frame(base + i * 4096).is_ok() {
                self.live -= 1;
            }
        }
    }
}

/// [`io_pgtable::TableMemory`] over kernel frames.
#[derive(Debug, Default)]
pub struct KernelTables {
    /// Frames currently allocated through this value.
    pub live: usize,
}

impl io_pgtable::TableMemory for KernelTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = mm::alloc_frame()?;
        self.live += 1;
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        if mm::free_frame(pa).is_ok() {
            self.live -= 1;
        }
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        let p = (mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *const u64;
        // SAFETY: `table` is a frame handed out by `alloc_table` (still allocated), reached through the direct map; the index stays inside the frame.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        let p = (mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *mut u64;
        // SAFETY: as in `read`; the IOMMU walks these tables coherently (QEMU), real hardware without coherent walks would need a cache flush here.
        unsafe { p.write_volatile(value) }
    }
}
