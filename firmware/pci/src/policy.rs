//! What a user task may do with a PCI function: which functions it may claim
//! ([`claimable`]) and, field by field, which configuration-space writes it may
//! make to a function it owns ([`check_write`]).
//!
//! The kernel keeps everything that decides where a function decodes (BARs,
//! expansion ROM), which interrupt messages it sends (MSI, MSI-X), whether it
//! stays powered and in one piece (power management, PCI Express device and
//! link control, function level reset) and everything in extended
//! configuration space. The task gets the function's device-specific registers
//! and the three command bits it needs to drive it.
//!
//! Type-0 header (PCI Local Bus 3.0 §6.1, Figure 6-1) and what a task may write:
//!
//! | bytes       | field                                   | task write                                |
//! |-------------|-----------------------------------------|-------------------------------------------|
//! | 0x00–0x03   | vendor ID, device ID                    | refused ([`Refusal::Header`])             |
//! | 0x04–0x05   | command (§6.2.2)                        | only bits 0–2 may change                  |
//! | 0x06–0x07   | status (§6.2.3)                         | only write-1-to-clear of error bits       |
//! | 0x08–0x0B   | revision ID, class code                 | refused ([`Refusal::Header`])             |
//! | 0x0C        | cache line size (§6.2.4)                | allowed                                   |
//! | 0x0D        | latency timer (§6.2.4)                  | allowed                                   |
//! | 0x0E–0x0F   | header type, BIST                       | refused ([`Refusal::Header`])             |
//! | 0x10–0x27   | BAR0–BAR5 (§6.2.5.1)                    | refused ([`Refusal::Bar`])                |
//! | 0x28–0x2F   | CardBus CIS pointer, subsystem IDs      | refused ([`Refusal::Header`])             |
//! | 0x30–0x33   | expansion ROM base (§6.2.5.2)           | refused ([`Refusal::Rom`])                |
//! | 0x34        | capabilities pointer                    | refused ([`Refusal::CapabilityPointer`])  |
//! | 0x35–0x3B   | reserved                                | refused ([`Refusal::Header`])             |
//! | 0x3C        | interrupt line (§6.2.4)                 | allowed                                   |
//! | 0x3D–0x3F   | interrupt pin, Min_Gnt, Max_Lat         | refused ([`Refusal::Header`])             |
//! | 0x40–0xFF   | capability structures (§6.7)            | refused (per capability, see below)       |
//! | 0x40–0xFF   | every other byte (device specific)      | allowed                                   |
//! | 0x100–0xFFF | extended configuration (PCIe 4.0 §7.6)  | refused ([`Refusal::Extended`])           |
//!
//! A write is allowed only if every byte it covers is; otherwise the lowest
//! refused byte names the [`Refusal`]. Functions with a type-1 (PCI-to-PCI
//! bridge, PCIe port) or type-2 (CardBus) header refuse every write: tasks
//! cannot own bridges (see [`claimable`]).
//!
//! Choices the specifications leave open:
//!
//! * **Command.** Only I/O space (bit 0), memory space (bit 1) and bus master
//!   (bit 2) may change; the caller passes the register's current value and a
//!   write that would change any other bit is refused. That keeps special
//!   cycles, memory write and invalidate, VGA palette snoop, parity error
//!   response, SERR# enable and fast back-to-back as the kernel set them, and
//!   Interrupt Disable (bit 10) with the kernel, which routes INTx.
//! * **Status.** The register is read-only except for write-1-to-clear error
//!   flags ([`crate::reg::STATUS_RW1C`]). A status write is allowed only if it
//!   sets nothing but those flags: zero (a dword write of the command register
//!   with an empty status half) and clearing latched errors are fine, but a
//!   value with read-only or reserved bits set is refused, because that is
//!   what a task that read the dword and wrote it back produces, and it would
//!   silently clear every latched error.
//! * **Cache line size** is allowed: PCI Express functions ignore it (PCIe 4.0
//!   §7.5.1.1.7) and on conventional PCI it only tunes memory-read-line and
//!   memory write and invalidate, which the command rule keeps off.
//! * **Latency timer** is allowed: hardwired to zero on PCI Express; on a shared
//!   conventional bus a large value lets the device hold the bus longer, which
//!   costs fairness but grants no access the IOMMU would not.
//! * **Interrupt line** is allowed: it is a scratch byte firmware fills for
//!   software and the device never uses (§6.2.4). The kernel must not trust it
//!   for a function a task has owned; INTx routing comes from the read-only
//!   interrupt pin and the firmware's routing tables.
//! * **BIST and header type** are refused even though the header type is
//!   read-only: a dword write at 0x0C would also write BIST, whose bit 6 starts
//!   a self test that may leave the function in an unknown state.
//!
//! Capability structures are read-only to the task, each over its whole extent:
//!
//! * MSI (PCI 3.0 §6.8.1, [`Refusal::Msi`]): 10, 14, 20 or 24 bytes from its
//!   control word (64-bit address, per-vector masking); 24 bytes if the
//!   function's [`crate::caps::Msi`] does not describe this structure. The
//!   kernel programs the message address and data; a task that could would
//!   make the device send any interrupt message it liked.
//! * MSI-X (PCI 3.0 §6.8.2, [`Refusal::MsiX`]): 12 bytes. Its control word
//!   enables and masks the vectors the kernel programmed, and its table and
//!   PBA offsets are the kernel's to trust.
//! * Power management (PCI Bus Power Management 1.2 §3.2,
//!   [`Refusal::PowerManagement`]): 8 bytes. PMCSR can put the function in D3hot,
//!   and the way back to D0 may reset it, losing the BARs the kernel assigned.
//! * PCI Express (PCIe 4.0 §7.5.3, [`Refusal::PciExpress`]): 0x3C bytes. Device
//!   control can initiate a function level reset, change max payload size or
//!   enable relaxed ordering and no-snoop; link control can disable the link.
//! * Vendor specific (PCI 3.0 Appendix H, [`Refusal::Capability`]): the length
//!   at byte 2 (at least 3), from [`crate::caps::Capabilities::vendor_lengths`];
//!   without it, up to the next capability. Vendor structures are not
//!   device-specific space to hand out: virtio's PCI configuration access
//!   structure, for one, is a window onto BAR memory, MSI-X table included.
//! * Any other capability (VPD, whose writes can rewrite the adapter's EEPROM,
//!   and unknown IDs; [`Refusal::Capability`]): from its offset up to the next
//!   capability in offset order, or to 0x100 for the last one.
//!
//! Every extent is clipped to 0x100 and rounded out to dword boundaries, so a
//! writable device-specific byte never shares a dword with a capability (a
//! kernel that emulates byte writes with a dword read-modify-write cannot
//! rewrite a capability register through one). If the function's capability
//! lists could not be walked ([`crate::caps::Capabilities::malformed`]), all of
//! 0x40–0xFF counts as capability structures.

use crate::caps::id;
use crate::{reg, Function};
use alloc::vec::Vec;
use core::fmt;

/// Size of a function's configuration space (ECAM).
pub const CONFIG_SPACE_SIZE: u16 = 0x1000;

/// Command register bits a task may change: I/O space, memory space, bus master.
pub const TASK_COMMAND_BITS: u16 = reg::CMD_IO | reg::CMD_MEMORY | reg::CMD_BUS_MASTER;

/// First byte after the type-0 header.
const HEADER_END: u16 = 0x40;
/// First byte of extended configuration space.
const LEGACY_END: u16 = 0x100;

/// Why a task's configuration write is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The width is not 1, 2 or 4 bytes, or the value has bits beyond it.
    Width,
    /// The offset is not a multiple of the width.
    Misaligned,
    /// The write reaches past the 4 KiB configuration space.
    OutOfRange,
    /// The function has a bridge header (type 1 or 2); tasks cannot own bridges.
    BridgeFunction,
    /// The function has a header type this crate does not know (3–0x7F).
    UnknownHeader,
    /// A read-only or reserved header field: IDs, revision, class, header type,
    /// BIST, CardBus CIS pointer, subsystem IDs, reserved bytes, interrupt pin,
    /// Min_Gnt, Max_Lat.
    Header,
    /// The write would change a command bit other than I/O space, memory space
    /// and bus master.
    CommandBits,
    /// The status write sets a bit that is not a write-1-to-clear error flag.
    Status,
    /// A base address register.
    Bar,
    /// The expansion ROM base address register.
    Rom,
    /// The capabilities pointer.
    CapabilityPointer,
    /// The MSI capability structure.
    Msi,
    /// The MSI-X capability structure.
    MsiX,
    /// The power management capability structure.
    PowerManagement,
    /// The PCI Express capability structure.
    PciExpress,
    /// Another standard capability structure (vendor specific, VPD, unknown IDs,
    /// or anything in 0x40–0xFF when the capability list is malformed).
    Capability,
    /// Extended configuration space (0x100–0xFFF).
    Extended,
}

impl Refusal {
    /// Short stable name, for logs and tests.
    pub const fn name(&self) -> &'static str {
        match self {
            Refusal::Width => "width",
            Refusal::Misaligned => "misaligned",
            Refusal::OutOfRange => "out-of-range",
            Refusal::BridgeFunction => "bridge-function",
            Refusal::UnknownHeader => "unknown-header",
            Refusal::Header => "header",
            Refusal::CommandBits => "command-bits",
            Refusal::Status => "status",
            Refusal::Bar => "bar",
            Refusal::Rom => "rom",
            Refusal::CapabilityPointer => "capability-pointer",
            Refusal::Msi => "msi",
            Refusal::MsiX => "msi-x",
            Refusal::PowerManagement => "power-management",
            Refusal::PciExpress => "pci-express",
            Refusal::Capability => "capability",
            Refusal::Extended => "extended",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            Refusal::Width => "width is not 1, 2 or 4 bytes, or the value does not fit in it",
            Refusal::Misaligned => "offset is not a multiple of the width",
            Refusal::OutOfRange => "write reaches past the 4 KiB configuration space",
            Refusal::BridgeFunction => "the function is a bridge; tasks cannot own bridges",
            Refusal::UnknownHeader => "the function's header type is unknown",
            Refusal::Header => "read-only or reserved header field",
            Refusal::CommandBits => "only the I/O, memory and bus master command bits may change",
            Refusal::Status => "status writes may only clear error bits",
            Refusal::Bar => "base address registers belong to the kernel",
            Refusal::Rom => "the expansion ROM register belongs to the kernel",
            Refusal::CapabilityPointer => "the capabilities pointer is read-only",
            Refusal::Msi => "the MSI capability belongs to the kernel",
            Refusal::MsiX => "the MSI-X capability belongs to the kernel",
            Refusal::PowerManagement => "the power management capability belongs to the kernel",
            Refusal::PciExpress => "the PCI Express capability belongs to the kernel",
            Refusal::Capability => "capability structures are read-only",
            Refusal::Extended => "extended configuration space belongs to the kernel",
        };
        write!(f, "{} ({why})", self.name())
    }
}

/// What an allowed write reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// The command register (and, for a dword write at 0x04, the status
    /// register with error-clearing bits only). `command` is the value the
    /// command register holds after the write; it differs from the current
    /// value at most in [`TASK_COMMAND_BITS`].
    Command {
        /// Command register after the write.
        command: u16,
    },
    /// The status register only, clearing error flags (or writing zero).
    StatusClear,
    /// Cache line size, latency timer or interrupt line.
    HeaderMisc,
    /// Device-specific bytes in 0x40–0xFF outside every capability structure.
    DeviceSpecific,
}

/// Where one byte of a type-0 function's configuration space falls.
#[derive(Clone, Copy)]
enum Byte {
    Command,
    Status,
    HeaderMisc,
    DeviceSpecific,
}

/// A capability structure's bytes `start..end` and what touching them is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    start: u16,
    end: u16,
    refusal: Refusal,
}

/// Byte length of the legacy capability `cap_id` at `offset`, if its layout fixes one.
fn known_length(f: &Function, cap_id: u8, offset: u16) -> Option<u16> {
    match cap_id {
        id::MSI => Some(match f.caps.msi.filter(|m| m.offset == offset) {
            // ID, next, control, address, data; + upper address; + reserved, mask, pending.
            Some(m) => 10 + (if m.is_64bit { 4 } else { 0 }) + (if m.per_vector_mask { 10 } else { 0 }),
            None => 24,
        }),
        id::MSIX => Some(12),
        id::PM => Some(8),
        id::PCIE => Some(0x3C),
        id::VENDOR => f.caps.vendor_lengths.iter().find(|v| v.0 == offset).map(|v| u16::from(v.1).max(3)),
        _ => None,
    }
}

fn refusal_for(cap_id: u8) -> Refusal {
    match cap_id {
        id::MSI => Refusal::Msi,
        id::MSIX => Refusal::MsiX,
        id::PM => Refusal::PowerManagement,
        id::PCIE => Refusal::PciExpress,
        _ => Refusal::Capability,
    }
}

/// The extents of `f`'s legacy capability structures, in offset order.
fn extents(f: &Function) -> Vec<Extent> {
    if f.caps.malformed {
        return alloc::vec![Extent { start: HEADER_END, end: LEGACY_END, refusal: Refusal::Capability }];
    }
    let mut caps: Vec<(u16, u8)> =
        f.caps.legacy.iter().filter(|c| (HEADER_END..LEGACY_END).contains(&c.1)).map(|c| (c.1, c.0)).collect();
    caps.sort_unstable();
    caps.iter()
        .map(|&(start, cap_id)| {
            let next = caps.iter().map(|c| c.0).find(|&o| o > start).unwrap_or(LEGACY_END);
            let end = match known_length(f, cap_id, start) {
                Some(len) => start.saturating_add(len),
                None => next,
            };
            let end = end.min(LEGACY_END).next_multiple_of(4);
            Extent { start: start & !3, end, refusal: refusal_for(cap_id) }
        })
        .collect()
}

/// Classifies one byte of a type-0 function (`extents` from [`extents`]).
fn classify(extents: &[Extent], at: u16) -> Result<Byte, Refusal> {
    Ok(match at {
        0x00..=0x03 => return Err(Refusal::Header),
        0x04..=0x05 => Byte::Command,
        0x06..=0x07 => Byte::Status,
        0x08..=0x0B => return Err(Refusal::Header),
        reg::CACHE_LINE_SIZE | reg::LATENCY_TIMER => Byte::HeaderMisc,
        0x0E..=0x0F => return Err(Refusal::Header),
        0x10..=0x27 => return Err(Refusal::Bar),
        0x28..=0x2F => return Err(Refusal::Header),
        0x30..=0x33 => return Err(Refusal::Rom),
        reg::CAP_PTR => return Err(Refusal::CapabilityPointer),
        0x35..=0x3B => return Err(Refusal::Header),
        reg::INTERRUPT => Byte::HeaderMisc,
        0x3D..=0x3F => return Err(Refusal::Header),
        HEADER_END..LEGACY_END => match extents.iter().find(|e| (e.start..e.end).contains(&at)) {
            Some(e) => return Err(e.refusal),
            None => Byte::DeviceSpecific,
        },
        _ => return Err(Refusal::Extended),
    })
}

/// Whether a task that owns `f` may write the low `width` bytes of `value` at
/// `offset` of its configuration space, and what the write reaches.
///
/// `current_command` is the command register's present value (the caller
/// reads it just before the write); see the [module docs](crate::policy) for the
/// rules. Checks run in this order: width and value ([`Refusal::Width`]),
/// alignment, range, the function's header type, then each byte in address
/// order, then the command and status values. The function is pure: it reads
/// nothing but its arguments.
pub fn check_write(
    f: &Function,
    offset: u16,
    width: u16,
    value: u32,
    current_command: u16,
) -> Result<WriteKind, Refusal> {
    if !matches!(width, 1 | 2 | 4) || (width < 4 && value >> (8 * width) != 0) {
        return Err(Refusal::Width);
    }
    if !offset.is_multiple_of(width) {
        return Err(Refusal::Misaligned);
    }
    if u32::from(offset) + u32::from(width) > u32::from(CONFIG_SPACE_SIZE) {
        return Err(Refusal::OutOfRange);
    }
    match f.header_type & 0x7F {
        0 => {}
        1 | 2 => return Err(Refusal::BridgeFunction),
        _ => return Err(Refusal::UnknownHeader),
    }
    if offset >= LEGACY_END {
        return Err(Refusal::Extended);
    }
    let extents = if offset >= HEADER_END { extents(f) } else { Vec::new() };
    let mut command = current_command.to_le_bytes();
    let (mut touches_command, mut touches_status, mut misc) = (false, false, false);
    let mut status = 0u16;
    for i in 0..width {
        let at = offset + i;
        let byte = (value >> (8 * i)) as u8;
        match classify(&extents, at)? {
            Byte::Command => {
                command[usize::from(at - reg::COMMAND)] = byte;
                touches_command = true;
            }
            Byte::Status => {
                status |= u16::from(byte) << (8 * (at - reg::STATUS));
                touches_status = true;
            }
            Byte::HeaderMisc => misc = true,
            Byte::DeviceSpecific => {}
        }
    }
    let command = u16::from_le_bytes(command);
    if touches_command && (command ^ current_command) & !TASK_COMMAND_BITS != 0 {
        return Err(Refusal::CommandBits);
    }
    if touches_status && status & !reg::STATUS_RW1C != 0 {
        return Err(Refusal::Status);
    }
    Ok(if touches_command {
        WriteKind::Command { command }
    } else if touches_status {
        WriteKind::StatusClear
    } else if misc {
        WriteKind::HeaderMisc
    } else {
        WriteKind::DeviceSpecific
    })
}

/// Why a task may not claim a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimRefusal {
    /// Header type 1: a PCI-to-PCI bridge, or a PCIe root port or switch port.
    /// Its bus numbers and windows decide what every function below it decodes,
    /// its bus master enable gates their DMA and its secondary bus reset resets
    /// them all.
    BridgeHeader,
    /// Header type 2: a CardBus bridge.
    CardBusHeader,
    /// A header type this crate does not know (3–0x7F).
    UnknownHeader(u8),
    /// The PCI Express capability names a root port, switch port or PCIe/PCI
    /// bridge (device/port type 4–8, PCIe 4.0 §7.5.3.2) whatever the header says.
    PciePort(u8),
    /// Class 0x0600: a host bridge, whose registers often configure the memory
    /// controller and the platform's address map.
    HostBridge,
    /// Class 0x0601: an ISA bridge (LPC bridges use this class too), which
    /// decodes legacy I/O, firmware flash and, on x86, interrupt routing.
    IsaBridge,
    /// Any other bridge class 0x06xx (EISA, MCA, PCI-to-PCI, PCMCIA, NuBus,
    /// CardBus, RACEway, semi-transparent PCI-to-PCI, InfiniBand, other);
    /// holds the subclass.
    Bridge(u8),
    /// Class 0x0806: an IOMMU (AMD-Vi exposes one as a PCI function), which
    /// is what confines every task's DMA.
    Iommu,
}

impl ClaimRefusal {
    /// Short stable name, for logs and tests.
    pub const fn name(&self) -> &'static str {
        match self {
            ClaimRefusal::BridgeHeader => "bridge-header",
            ClaimRefusal::CardBusHeader => "cardbus-header",
            ClaimRefusal::UnknownHeader(_) => "unknown-header",
            ClaimRefusal::PciePort(_) => "pcie-port",
            ClaimRefusal::HostBridge => "host-bridge",
            ClaimRefusal::IsaBridge => "isa-bridge",
            ClaimRefusal::Bridge(_) => "bridge",
            ClaimRefusal::Iommu => "iommu",
        }
    }
}

impl fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimRefusal::BridgeHeader => write!(f, "bridge-header (a PCI-to-PCI bridge or PCIe port)"),
            ClaimRefusal::CardBusHeader => write!(f, "cardbus-header (a CardBus bridge)"),
            ClaimRefusal::UnknownHeader(t) => write!(f, "unknown-header (header type {t:#04x})"),
            ClaimRefusal::PciePort(t) => write!(f, "pcie-port (PCIe device/port type {t:#x})"),
            ClaimRefusal::HostBridge => write!(f, "host-bridge (class 0x0600)"),
            ClaimRefusal::IsaBridge => write!(f, "isa-bridge (class 0x0601, ISA or LPC)"),
            ClaimRefusal::Bridge(sub) => write!(f, "bridge (class 0x06{sub:02x})"),
            ClaimRefusal::Iommu => write!(f, "iommu (class 0x0806)"),
        }
    }
}

/// PCIe device/port types of ports and bridges (PCIe 4.0 §7.5.3.2): root port,
/// upstream and downstream switch ports, PCIe-to-PCI and PCI-to-PCIe bridges.
const PORT_TYPES: core::ops::RangeInclusive<u8> = 0x4..=0x8;

/// Whether a task may claim `f`. Checks run in this order: header type, PCIe
/// device/port type, class code; the first that refuses names the reason.
pub fn claimable(f: &Function) -> Result<(), ClaimRefusal> {
    match f.header_type & 0x7F {
        0 => {}
        1 => return Err(ClaimRefusal::BridgeHeader),
        2 => return Err(ClaimRefusal::CardBusHeader),
        t => return Err(ClaimRefusal::UnknownHeader(t)),
    }
    if let Some(t) = f.caps.pcie_port_type.filter(|t| PORT_TYPES.contains(t)) {
        return Err(ClaimRefusal::PciePort(t));
    }
    let (base, sub) = ((f.class >> 16) as u8, (f.class >> 8) as u8);
    match (base, sub) {
        (0x06, 0x00) => Err(ClaimRefusal::HostBridge),
        (0x06, 0x01) => Err(ClaimRefusal::IsaBridge),
        (0x06, s) => Err(ClaimRefusal::Bridge(s)),
        (0x08, 0x06) => Err(ClaimRefusal::Iommu),
        _ => Ok(()),
    }
}

/// The 4 KiB pages of BAR `bar` of `f` that hold its MSI-X table or pending
/// bit array (PCI 3.0 §6.8.2.4, §6.8.2.5), as sorted, disjoint byte ranges
/// `[start, end)` from the BAR's base. The kernel owns the MSI-X table like
/// the MSI capability: these pages are never mapped into a task, so a task
/// cannot aim its device's interrupt messages anywhere. Empty when the
/// function has no MSI-X or keeps both structures in other BARs.
pub fn msix_pages(f: &Function, bar: u8) -> PageHoles {
    const PAGE: u64 = 4096;
    let mut out = PageHoles::default();
    let Some(m) = f.caps.msix else { return out };
    // Table: 16 bytes per entry; PBA: one bit per entry, in qwords.
    let entries = u64::from(m.table_size);
    let table = (m.table, entries * 16);
    let pba = (m.pba, entries.div_ceil(64) * 8);
    for ((b, off), len) in [table, pba] {
        if b == bar && len > 0 {
            let start = u64::from(off) & !(PAGE - 1);
            out.spans[out.len] = (start, (u64::from(off) + len).next_multiple_of(PAGE));
            out.len += 1;
        }
    }
    out.spans[..out.len].sort_unstable();
    let [a, b] = out.spans;
    if out.len == 2 && b.0 <= a.1 {
        out.spans[0] = (a.0, a.1.max(b.1));
        out.len = 1;
    }
    out
}

/// At most two disjoint byte ranges `[start, end)` of a BAR (what
/// [`msix_pages`] finds), held inline: a syscall asks for them, and they
/// need no heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageHoles {
    spans: [(u64, u64); 2],
    len: usize,
}

impl PageHoles {
    /// The ranges, sorted.
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.spans[..self.len]
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether byte `off` of the BAR lies in one.
    pub fn contains(&self, off: u64) -> bool {
        self.as_slice().iter().any(|&(start, end)| (start..end).contains(&off))
    }
}
