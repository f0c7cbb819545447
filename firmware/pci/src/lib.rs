//! PCI: configuration access, enumeration through bridges, BAR sizing and
//! assignment, capability parsing (PCI Local Bus 3.0 §6, PCI-to-PCI Bridge
//! 1.2 §3.2, PCI Express Base 4.0 §7), and what a user task may claim and
//! write ([`policy`]).
//!
//! Hardware access goes through [`ConfigAccess`]; the kernel implements it with
//! ECAM MMIO, the host tests with [`fake::FakeConfig`]. Nothing here touches
//! hardware directly.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod assign;
pub mod caps;
pub mod enumerate;
pub mod fake;
pub mod policy;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

use core::fmt;

/// A PCI function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0–31).
    pub dev: u8,
    /// Function number (0–7).
    pub func: u8,
}

impl Bdf {
    /// Creates an address (device and function are masked to their widths).
    pub const fn new(segment: u16, bus: u8, dev: u8, func: u8) -> Self {
        Bdf { segment, bus, dev: dev & 0x1F, func: func & 7 }
    }

    /// Requester ID: `bus << 8 | dev << 3 | func`.
    pub const fn rid(&self) -> u16 {
        (self.bus as u16) << 8 | (self.dev as u16) << 3 | self.func as u16
    }

    /// The function with requester ID `rid` on `segment`.
    pub const fn from_rid(segment: u16, rid: u16) -> Self {
        Bdf::new(segment, (rid >> 8) as u8, (rid >> 3) as u8, rid as u8)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment, self.bus, self.dev, self.func)
    }
}

/// Configuration-space access (4 KiB per function with ECAM).
///
/// Reads of absent functions return all ones, as on real hardware.
pub trait ConfigAccess {
    /// Reads a naturally aligned dword.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes a naturally aligned dword.
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);
    /// Reads a naturally aligned word.
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    /// Writes a naturally aligned word (ECAM performs a real 16-bit write; the
    /// default read-modify-write would also rewrite the neighbouring word).
    fn write16(&self, bdf: Bdf, offset: u16, value: u16);
    /// Reads a byte.
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
}

/// Standard configuration header offsets (PCI Local Bus 3.0 §6.1).
pub mod reg {
    /// Vendor ID (16).
    pub const VENDOR: u16 = 0x00;
    /// Device ID (16).
    pub const DEVICE: u16 = 0x02;
    /// Command (16).
    pub const COMMAND: u16 = 0x04;
    /// Status (16).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8) and class code (24).
    pub const CLASS_REV: u16 = 0x08;
    /// Header type (8).
    pub const HEADER_TYPE: u16 = 0x0E;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Capabilities pointer (8).
    pub const CAP_PTR: u16 = 0x34;
    /// Interrupt line (8) and pin (8).
    pub const INTERRUPT: u16 = 0x3C;
    /// Type 1: primary, secondary, subordinate bus numbers and latency (dword).
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Type 1: I/O base and limit (8 + 8).
    pub const IO_BASE: u16 = 0x1C;
    /// Type 1: memory base and limit (16 + 16).
    pub const MEMORY_BASE: u16 = 0x20;
    /// Type 1: prefetchable memory base and limit (16 + 16).
    pub const PREF_BASE: u16 = 0x24;
    /// Type 1: prefetchable base, upper 32 bits.
    pub const PREF_BASE_UPPER: u16 = 0x28;
    /// Type 1: prefetchable limit, upper 32 bits.
    pub const PREF_LIMIT_UPPER: u16 = 0x2C;
    /// Command: I/O space decode.
    pub const CMD_IO: u16 = 1 << 0;
    /// Command: memory space decode.
    pub const CMD_MEMORY: u16 = 1 << 1;
    /// Command: bus master.
    pub const CMD_BUS_MASTER: u16 = 1 << 2;
    /// Command: INTx emulation disabled.
    pub const CMD_INTX_DISABLE: u16 = 1 << 10;
    /// Status: capability list present.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Status bits that are write-1-to-clear error flags (PCI 3.0 §6.2.3;
    /// the same bits in PCIe 4.0 §7.5.1.1.4): master data parity error (8),
    /// signaled target abort (11), received target abort (12), received
    /// master abort (13), signaled system error (14), detected parity error (15).
    pub const STATUS_RW1C: u16 = 0xF900;
    /// Cache line size (8).
    pub const CACHE_LINE_SIZE: u16 = 0x0C;
    /// Latency timer (8).
    pub const LATENCY_TIMER: u16 = 0x0D;
    /// Built-in self test (8).
    pub const BIST: u16 = 0x0F;
    /// Type 0: expansion ROM base address (32).
    pub const EXPANSION_ROM: u16 = 0x30;
}

/// Why a PCI operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciError {
    /// A capability list loops or points into the header.
    BadCapabilityList(Bdf),
    /// A bridge's bus numbers are inconsistent (secondary not above primary, loop).
    BadBusNumbers(Bdf),
    /// No bus number left to give a bridge.
    OutOfBusNumbers(Bdf),
    /// No window space left for a BAR.
    WindowExhausted {
        /// Function whose BAR did not fit.
        bdf: Bdf,
        /// BAR index.
        bar: u8,
        /// Size needed.
        size: u64,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::BadCapabilityList(b) => write!(f, "{b}: capability list loops or is malformed"),
            PciError::BadBusNumbers(b) => write!(f, "{b}: inconsistent bridge bus numbers"),
            PciError::OutOfBusNumbers(b) => write!(f, "{b}: no bus number left for the bridge"),
            PciError::WindowExhausted { bdf, bar, size } => {
                write!(f, "{bdf}: BAR{bar} of {size:#x} bytes does not fit in the host windows")
            }
        }
    }
}

/// A host-bridge address window: CPU addresses `cpu_base..` map to PCI addresses `pci_base..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// CPU physical address of the start.
    pub cpu_base: u64,
    /// PCI bus address of the start.
    pub pci_base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One PCI host bridge (segment) and the windows firmware gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBridge {
    /// Segment.
    pub segment: u16,
    /// First bus number.
    pub bus_start: u8,
    /// Last bus number.
    pub bus_end: u8,
    /// 32-bit memory window.
    pub mmio32: Option<Window>,
    /// 64-bit memory window.
    pub mmio64: Option<Window>,
    /// I/O port window.
    pub io: Option<Window>,
}

/// Kind of a base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (uses two BAR slots).
    Mem64,
    /// I/O ports.
    Io,
}

/// A sized base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0–5).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// PCI bus address (0 = unassigned).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One enumerated PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base, sub, prog-if) in the low 24 bits.
    pub class: u32,
    /// Header type (0 endpoint, 1 PCI-PCI bridge), without the multi-function bit.
    pub header_type: u8,
    /// Sized BARs (zero-sized ones are left out).
    pub bars: alloc::vec::Vec<Bar>,
    /// Capabilities found.
    pub caps: caps::Capabilities,
    /// Bridges between the host bridge and this function, outermost first.
    pub path: alloc::vec::Vec<Bdf>,
    /// For bridges: secondary and subordinate bus numbers.
    pub bridge_buses: Option<(u8, u8)>,
}

impl Function {
    /// Whether this function is a PCI-PCI bridge (or PCIe port).
    pub fn is_bridge(&self) -> bool {
        self.header_type == 1
    }
}

/// PCIe device/port type of a PCI Express to PCI/PCI-X bridge (PCIe 4.0 §7.5.3.2).
pub const PORT_TYPE_PCIE_TO_PCI_BRIDGE: u8 = 0x7;

/// The requester ID an IOMMU sees on DMA from `f`.
///
/// A conventional PCI bus carries no requester ID, so the bridge that forwards
/// the request upstream supplies one: a PCIe-to-PCI bridge uses its secondary
/// bus number with devfn 0 (PCIe-to-PCI/PCI-X Bridge spec r1.0 §2.3), a
/// conventional PCI-PCI bridge (no PCIe capability) its own ID. The bridge
/// closest to the host bridge wins, as it rewrites whatever came from below.
pub fn dma_requester_id(f: &Function, all: &[Function]) -> u16 {
    for bridge in &f.path {
        let Some(b) = all.iter().find(|x| x.bdf == *bridge) else { continue };
        match b.caps.pcie_port_type {
            None => return b.bdf.rid(),
            Some(PORT_TYPE_PCIE_TO_PCI_BRIDGE) => return u16::from(b.bridge_buses.map_or(0, |x| x.0)) << 8,
            Some(_) => {}
        }
    }
    f.bdf.rid()
}

/// Sets or clears Bus Master Enable.
pub fn set_bus_master(access: &dyn ConfigAccess, bdf: Bdf, on: bool) {
    let cmd = access.read16(bdf, reg::COMMAND);
    let new = if on { cmd | reg::CMD_BUS_MASTER } else { cmd & !reg::CMD_BUS_MASTER };
    if new != cmd {
        access.write16(bdf, reg::COMMAND, new);
    }
}
