//! PCI in the running kernel: ECAM configuration access (mapped per bus on
//! first use, as device memory), enumeration of every host the firmware
//! describes, BAR assignment, and the list of functions other parts use.

use crate::mm;
use alloc::string::String;
use alloc::vec::Vec;
use pci::{Bdf, ConfigAccess, Function, HostBridge};

/// ECAM: 4 KiB of configuration space per function, 1 MiB per bus (PCIe 4.0 §7.2.2).
pub struct Ecam {
    /// Physical base of bus `host.bus_start`.
    pub base: u64,
    /// The host bridge this window serves.
    pub host: HostBridge,
    /// Kernel virtual address of each bus's 1 MiB (0 = not mapped yet).
    buses: spin::Mutex<[u64; 256]>,
}

impl Ecam {
    /// An ECAM window at physical `base` for `host`.
    pub fn new(base: u64, host: HostBridge) -> Self {
        Ecam { base, host, buses: spin::Mutex::new([0; 256]) }
    }

    /// Virtual address of a config register, mapping its bus on first use.
    fn address(&self, bdf: Bdf, offset: u16) -> Option<u64> {
        if bdf.segment != self.host.segment || bdf.bus < self.host.bus_start || bdf.bus > self.host.bus_end {
            return None;
        }
        let index = usize::from(bdf.bus - self.host.bus_start);
        let mut buses = self.buses.lock();
        if buses[index] == 0 {
            let pa = self.base + ((index as u64) << 20);
            buses[index] = mm::map_mmio(pa, 1 << 20).ok()?.va;
        }
        Some(buses[index] + (u64::from(bdf.dev) << 15 | u64::from(bdf.func) << 12 | u64::from(offset & 0xFFF)))
    }
}

impl ConfigAccess for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.address(bdf, offset & !3) {
            // SAFETY: the address lies in this bus's ECAM page mapped as device memory.
            Some(va) => unsafe { (va as *const u32).read_volatile() },
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(va) = self.address(bdf, offset & !3) {
            // SAFETY: as in `read32`.
            unsafe { (va as *mut u32).write_volatile(value) }
        }
    }

    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        match self.address(bdf, offset & !1) {
            // SAFETY: as in `read32`; ECAM accepts naturally aligned 16-bit accesses.
            Some(va) => unsafe { (va as *const u16).read_volatile() },
            None => u16::MAX,
        }
    }

    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if let Some(va) = self.address(bdf, offset & !1) {
            // SAFETY: as in `read16`.
            unsafe { (va as *mut u16).write_volatile(value) }
        }
    }
}

/// An enumerated function with the host it hangs off.
pub struct Device {
    /// What enumeration found.
    pub function: Function,
    /// Index of its host in [`hosts`].
    pub host: usize,
}

static HOSTS: spin::Once<Vec<Ecam>> = spin::Once::new();
static TOPOLOGY: spin::Once<topology::Topology> = spin::Once::new();

/// The IOMMU topology found at boot.
pub fn topology() -> Option<&'static topology::Topology> {
    TOPOLOGY.get()
}

/// `iommu.noiommu=allow` on the command line, on a machine without an
/// IOMMU: every PCI function is put behind the no-IOMMU unit
/// (`iommu::noiommu`, registered by [`crate::iommu::init`]), so the generic
/// door drives it with IOVA = physical address and nothing confined (as
/// Linux's VFIO no-IOMMU mode). Off by default; `cargo xtask bench blk`
/// uses it for its "none" column.
pub fn noiommu_allowed() -> bool {
    crate::cmdline_value("iommu.noiommu") == Some("allow")
}

/// Builds the IOMMU topology from the firmware and prints it, one line per item.
pub fn init_topology(boot: &bootinfo::BootInfo) {
    let functions = self::functions();
    let mut t = crate::platform().iommu_topology(boot, functions);
    if noiommu_allowed() {
        let mut segments: Vec<u16> = functions.iter().map(|f| f.bdf.segment).collect();
        segments.sort_unstable();
        segments.dedup();
        if topology::build::add_noiommu(&mut t, &segments).is_some() {
            log::warn!(
                "iommu.noiommu=allow: no IOMMU described; devices do DMA to physical addresses, untranslated and \
                 unconfined (IOVA = physical address; for measuring what an IOMMU costs, never for isolation)"
            );
        } else {
            log::warn!("iommu.noiommu=allow ignored: the firmware describes an IOMMU");
        }
    }
    let source = match boot.firmware() {
        bootinfo::FirmwareTables::Acpi { rsdp } => {
            let tables: Vec<String> = crate::acpi::raw_tables(rsdp)
                .into_iter()
                .filter(|(sig, _)| matches!(sig, b"DMAR" | b"IVRS" | b"IORT" | b"VIOT"))
                .map(|(sig, _)| String::from_utf8_lossy(&sig).into_owned())
                .collect();
            alloc::format!(
                "acpi {}",
                if tables.is_empty() { String::from("(no IOMMU table)") } else { tables.join(" ") }
            )
        }
        bootinfo::FirmwareTables::DeviceTree { .. } => String::from("devicetree"),
        bootinfo::FirmwareTables::None => String::from("none"),
    };
    crate::kprintln!("topology: source {source}");
    let mut text = alloc::format!("topology: source {source}\n");
    for line in topology::build::lines(&t, functions) {
        crate::kprintln!("{line}");
        text.push_str(&line);
        text.push('\n');
    }
    TOPOLOGY_TEXT.call_once(|| text);
    if t.units().is_empty() {
        log::info!("topology: no IOMMU described by the firmware");
    }
    TOPOLOGY.call_once(|| t);
}
static DEVICES: spin::Once<Vec<Device>> = spin::Once::new();
/// The `topology:` lines printed at boot, kept for `info_read` (made once at
/// boot, so the syscall only copies).
static TOPOLOGY_TEXT: spin::Once<String> = spin::Once::new();

/// The `topology:` lines of the boot log (empty before enumeration).
pub fn topology_text() -> &'static str {
    TOPOLOGY_TEXT.get().map_or("", String::as_str)
}
static FUNCTIONS: spin::Once<Vec<Function>> = spin::Once::new();

/// The PCI hosts found at boot.
pub fn hosts() -> &'static [Ecam] {
    HOSTS.get().map_or(&[], |v| v.as_slice())
}

/// Every PCI function found at boot.
pub fn devices() -> &'static [Device] {
    DEVICES.get().map_or(&[], |v| v.as_slice())
}

/// Every PCI function found at boot, as [`devices`] without the host index
/// (what the `pci` crate's topology helpers take).
pub fn functions() -> &'static [Function] {
    FUNCTIONS.get().map_or(&[], |v| v.as_slice())
}

/// Functions the kernel drives itself (an IOMMU that is a PCI function).
static KERNEL_OWNED: spin::Mutex<Vec<Bdf>> = spin::Mutex::new(Vec::new());

/// Marks `bdf` as driven by the kernel: no task can claim it.
pub fn keep_for_kernel(bdf: Bdf) {
    KERNEL_OWNED.lock().push(bdf);
}

/// Whether the kernel drives `bdf` itself.
pub fn kernel_owned(bdf: Bdf) -> bool {
    KERNEL_OWNED.lock().contains(&bdf)
}

/// Configuration access for `bdf`.
pub fn access(bdf: Bdf) -> Option<&'static Ecam> {
    hosts().iter().find(|h| h.host.segment == bdf.segment && (h.host.bus_start..=h.host.bus_end).contains(&bdf.bus))
}

/// CPU physical address of a BAR (PCI bus address translated through the host's windows).
pub fn bar_cpu_address(dev: &Device, bar: &pci::Bar) -> u64 {
    let host = &hosts()[dev.host].host;
    [host.mmio32, host.mmio64, host.io]
        .into_iter()
        .flatten()
        .find(|w| bar.base >= w.pci_base && bar.base < w.pci_base + w.size)
        .map_or(bar.base, |w| bar.base - w.pci_base + w.cpu_base)
}

/// Enumerates every host (assigning buses and BARs where firmware did not).
pub fn init(hosts: Vec<crate::platform::EcamHost>) {
    let hosts: Vec<Ecam> = hosts.into_iter().map(|h| Ecam::new(h.base, h.host)).collect();
    let mut all = Vec::new();
    for (index, ecam) in hosts.iter().enumerate() {
        let host = &ecam.host;
        let mut functions = match pci::enumerate::enumerate(ecam, host, true) {
            Ok(f) => f,
            Err(e) => {
                log::error!("pci: segment {}: enumeration failed: {e}", host.segment);
                continue;
            }
        };
        match pci::assign::assign(ecam, host, &mut functions) {
            Ok(s) => log::info!(
                "pci: segment {} buses {:#x}-{:#x}: {} functions, {} BARs assigned, {} kept, {} left unassigned, {} bridge windows",
                host.segment,
                host.bus_start,
                host.bus_end,
                functions.len(),
                s.assigned,
                s.kept,
                s.unplaced,
                s.bridges
            ),
            Err(e) => log::error!("pci: segment {}: BAR assignment failed: {e}", host.segment),
        }
        for f in &functions {
            let bars: Vec<alloc::string::String> =
                f.bars.iter().map(|b| alloc::format!("BAR{}={:#x}+{:#x}", b.index, b.base, b.size)).collect();
            log::info!(
                "pci: {} {:04x}:{:04x} class={:06x}{} {} caps=[{}]",
                f.bdf,
                f.vendor,
                f.device,
                f.class,
                if f.is_bridge() { " bridge" } else { "" },
                bars.join(" "),
                f.caps.names().join(",")
            );
        }
        all.extend(functions.into_iter().map(|function| Device { function, host: index }));
    }
    HOSTS.call_once(|| hosts);
    FUNCTIONS.call_once(|| all.iter().map(|d: &Device| d.function.clone()).collect());
    DEVICES.call_once(|| all);
}
