//! Reads a flattened device tree (DTB) and answers the
//! questions the kernel asks at boot: memory, reserved ranges, bootargs, the
//! console UART, the GIC and the architected timer.
//!
//! Bindings: Devicetree Specification v0.4 (§3.4 `/memory`, §3.6 `/chosen`,
//! §5.3 memory reservation block), Linux bindings `arm,gic-v3`, `arm,armv8-timer`,
//! `arm,pl011`, `reserved-memory`; PCI hosts, SMMUs and virtio-iommu in [`pci`]
//! (these allocate; the boot-time queries above do not).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod pci;

use core::fmt;

/// Why a blob could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtError {
    /// Shorter than a header, or shorter than the header says.
    Truncated,
    /// The magic number is not 0xD00DFEED.
    BadMagic,
    /// The `fdt` crate rejected the structure.
    Malformed,
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtError::Truncated => f.write_str("device tree blob is truncated"),
            DtError::BadMagic => f.write_str("device tree magic is not 0xd00dfeed"),
            DtError::Malformed => f.write_str("device tree structure is malformed"),
        }
    }
}

/// A physical address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

/// UART models the kernel can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UartKind {
    /// Arm PrimeCell PL011.
    Pl011,
}

/// The console UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uart {
    /// Model.
    pub kind: UartKind,
    /// Register base.
    pub base: u64,
    /// Register window size.
    pub size: u64,
}

/// GIC architecture version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2 (`arm,cortex-a15-gic` and friends).
    V2,
    /// GICv3 (`arm,gic-v3`).
    V3,
}

/// The interrupt controller's register windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gic {
    /// Version.
    pub version: GicVersion,
    /// Distributor.
    pub dist: MemRange,
    /// Redistributors (GICv3).
    pub redist: Option<MemRange>,
    /// ITS (GICv3, `arm,gic-v3-its` child).
    pub its: Option<MemRange>,
    /// v2m MSI frame (GICv2, `arm,gic-v2m-frame` child).
    pub v2m: Option<MemRange>,
    /// CPU interface (GICv2).
    pub cpu_if: Option<MemRange>,
}

/// Architected timer interrupts as GIC INTIDs (PPI n → INTID 16 + n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// Secure physical timer.
    pub secure_phys: u32,
    /// Non-secure physical timer.
    pub phys: u32,
    /// Virtual timer.
    pub virt: u32,
    /// Hypervisor physical timer.
    pub hyp_phys: u32,
}

/// A CPU under `/cpus` (DT spec §3.7, `device_type = "cpu"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// Its `reg`: the affinity fields of its MPIDR_EL1 (Aff3 in bits 39:32, Aff2..0 in 23:0).
    pub mpidr: u64,
    /// `enable-method = "psci"`: started by PSCI CPU_ON.
    pub psci: bool,
}

/// How PSCI calls reach the firmware (`/psci` `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciConduit {
    /// `smc #0` (EL3, or QEMU's emulation when EL2 belongs to the guest).
    Smc,
    /// `hvc #0` (a hypervisor at EL2).
    Hvc,
}

/// Magic number at the start of every DTB (big endian).
pub const FDT_MAGIC: u32 = 0xD00D_FEED;

fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Deepest node nesting accepted.
const MAX_DEPTH: usize = 64;

/// Checks the header and walks the structure block (DT spec §5.4): every token
/// aligned and in bounds, names terminated UTF-8, property name offsets inside
/// the strings block, properties before child nodes, nodes balanced, one root,
/// `FDT_END` last; the reservation block is terminated inside the blob.
fn validate(b: &[u8]) -> Result<(), DtError> {
    let field = |i: usize| be32(b, i * 4).ok_or(DtError::Truncated).map(|v| v as usize);
    let (off_struct, off_strings, off_rsv) = (field(2)?, field(3)?, field(4)?);
    let (version, size_strings, size_struct) = (field(5)?, field(8)?, field(9)?);
    if version < 16 {
        return Err(DtError::Malformed);
    }
    let in_blob = |off: usize, len: usize| off.checked_add(len).is_some_and(|end| end <= b.len());
    if !in_blob(off_struct, size_struct) || !in_blob(off_strings, size_strings) || off_rsv % 8 != 0 {
        return Err(DtError::Malformed);
    }
    // Memory reservation block: (address, size) pairs ending with (0, 0).
    let mut p = off_rsv;
    loop {
        if !in_blob(p, 16) {
            return Err(DtError::Malformed);
        }
        if b[p..p + 16].iter().all(|&x| x == 0) {
            break;
        }
        p += 16;
    }
    let strings = &b[off_strings..off_strings + size_strings];
    let st = &b[off_struct..off_struct + size_struct];
    let align = |x: usize| (x + 3) & !3;
    let (mut p, mut depth, mut roots) = (0usize, 0usize, 0usize);
    // Per depth: a child node was seen (properties must come first, DT spec §5.4.2).
    let mut child_seen = [false; MAX_DEPTH + 1];
    loop {
        let token = be32(st, p).ok_or(DtError::Malformed)?;
        p += 4;
        match token {
            FDT_BEGIN_NODE => {
                let name = cstr(st, p).ok_or(DtError::Malformed)?;
                p = align(p + name.len() + 1);
                if depth == 0 {
                    roots += 1;
                }
                child_seen[depth] = true;
                depth += 1;
                if depth > MAX_DEPTH || roots > 1 {
                    return Err(DtError::Malformed);
                }
                child_seen[depth] = false;
            }
            FDT_END_NODE => depth = depth.checked_sub(1).ok_or(DtError::Malformed)?,
            FDT_PROP => {
                let len = be32(st, p).ok_or(DtError::Malformed)? as usize;
                let name_off = be32(st, p + 4).ok_or(DtError::Malformed)? as usize;
                if depth == 0 || child_seen[depth] || cstr(strings, name_off).is_none() {
                    return Err(DtError::Malformed);
                }
                p = p.checked_add(8 + len).map(align).ok_or(DtError::Malformed)?;
                if p > st.len() {
                    return Err(DtError::Malformed);
                }
            }
            FDT_NOP => {}
            FDT_END => {
                return if depth == 0 && roots == 1 { Ok(()) } else { Err(DtError::Malformed) };
            }
            _ => return Err(DtError::Malformed),
        }
    }
}

/// A parsed device tree: the validated blob, read on demand without allocation
/// (the kernel parses it before it has a heap).
///
/// The `fdt` crate was the first choice, but version 0.1.5 panics on malformed
/// input and on `reg` of nodes whose parent has three address cells (every PCI
/// child), so this crate walks the structure block itself after validating it.
#[derive(Clone, Copy)]
pub struct DeviceTree<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    rsvmap: &'a [u8],
}

/// A node: where its properties start and its parent's cell sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node<'a> {
    /// Node name with unit address (`pl011@9000000`; the root is empty).
    pub name: &'a str,
    /// Offset of the first token after the name in the structure block.
    body: usize,
    /// Depth (root = 1).
    pub depth: usize,
    /// `#address-cells` of the parent (for this node's `reg`).
    pub parent_address_cells: u32,
    /// `#size-cells` of the parent.
    pub parent_size_cells: u32,
}

/// One property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property<'a> {
    /// Name.
    pub name: &'a str,
    /// Raw value.
    pub value: &'a [u8],
}

impl<'a> Property<'a> {
    /// The value as big-endian u32 cells (trailing partial bytes ignored).
    pub fn cells(&self) -> impl Iterator<Item = u32> + 'a {
        self.value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The value as one u32.
    pub fn as_u32(&self) -> Option<u32> {
        (self.value.len() == 4).then(|| be32(self.value, 0)).flatten()
    }

    /// The value as a string list (NUL separated).
    pub fn strings(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.value.split(|&b| b == 0).filter(|s| !s.is_empty()).filter_map(|s| core::str::from_utf8(s).ok())
    }
}

/// Reads a NUL-terminated UTF-8 string at `off`.
fn cstr(b: &[u8], off: usize) -> Option<&str> {
    let rest = b.get(off..)?;
    core::str::from_utf8(&rest[..rest.iter().position(|&c| c == 0)?]).ok()
}

/// Combines `n` (0..=2) big-endian cells starting at cell `i` into a u64.
fn read_cells(cells: &[u32], i: usize, n: u32) -> Option<u64> {
    let mut v = 0u64;
    for k in 0..n as usize {
        v = (v << 32) | u64::from(*cells.get(i + k)?);
    }
    Some(v)
}

/// Iterates over the properties of one node.
pub struct Properties<'a> {
    dt: DeviceTree<'a>,
    pos: usize,
}

impl<'a> Iterator for Properties<'a> {
    type Item = Property<'a>;
    fn next(&mut self) -> Option<Property<'a>> {
        loop {
            match be32(self.dt.structs, self.pos)? {
                FDT_NOP => self.pos += 4,
                FDT_PROP => {
                    let len = be32(self.dt.structs, self.pos + 4)? as usize;
                    let name_off = be32(self.dt.structs, self.pos + 8)? as usize;
                    let value = self.dt.structs.get(self.pos + 12..self.pos + 12 + len)?;
                    self.pos = (self.pos + 12 + len + 3) & !3;
                    return Some(Property { name: cstr(self.dt.strings, name_off)?, value });
                }
                _ => return None,
            }
        }
    }
}

/// Iterates over every node in document order.
pub struct Nodes<'a> {
    dt: DeviceTree<'a>,
    pos: usize,
    depth: usize,
    /// (#address-cells, #size-cells) declared by the node at each depth.
    cells: [(u32, u32); MAX_DEPTH + 2],
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Node<'a>;
    fn next(&mut self) -> Option<Node<'a>> {
        loop {
            let token = be32(self.dt.structs, self.pos)?;
            match token {
                FDT_BEGIN_NODE => {
                    let name = cstr(self.dt.structs, self.pos + 4)?;
                    let body = (self.pos + 4 + name.len() + 1 + 3) & !3;
                    let (pa, ps) = self.cells[self.depth];
                    self.depth += 1;
                    // Defaults per DT spec §2.3.5, then this node's own declarations.
                    let mut own = (2, 1);
                    let mut props = Properties { dt: self.dt, pos: body };
                    for p in props.by_ref() {
                        match p.name {
                            "#address-cells" => own.0 = p.as_u32().unwrap_or(2),
                            "#size-cells" => own.1 = p.as_u32().unwrap_or(1),
                            _ => {}
                        }
                    }
                    *self.cells.get_mut(self.depth)? = own;
                    self.pos = props.pos;
                    return Some(Node {
                        name,
                        body,
                        depth: self.depth,
                        parent_address_cells: pa,
                        parent_size_cells: ps,
                    });
                }
                FDT_END_NODE => {
                    self.depth = self.depth.checked_sub(1)?;
                    self.pos += 4;
                }
                FDT_NOP => self.pos += 4,
                _ => return None,
            }
        }
    }
}

impl<'a> DeviceTree<'a> {
    /// Reads the total size from a DTB header (the first 40 bytes suffice).
    pub fn total_size(header: &[u8]) -> Result<usize, DtError> {
        let magic = be32(header, 0).ok_or(DtError::Truncated)?;
        if magic != FDT_MAGIC {
            return Err(DtError::BadMagic);
        }
        let size = be32(header, 4).ok_or(DtError::Truncated)? as usize;
        if size < 40 {
            return Err(DtError::Malformed);
        }
        Ok(size)
    }

    /// Parses a blob after checking its header and its whole structure block.
    pub fn from_bytes(blob: &'a [u8]) -> Result<Self, DtError> {
        let size = Self::total_size(blob)?;
        let blob = blob.get(..size).ok_or(DtError::Truncated)?;
        validate(blob)?;
        let field = |i: usize| be32(blob, i * 4).unwrap_or(0) as usize;
        Ok(DeviceTree {
            structs: &blob[field(2)..field(2) + field(9)],
            strings: &blob[field(3)..field(3) + field(8)],
            rsvmap: &blob[field(4)..],
        })
    }

    /// Every node, in document order.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes { dt: *self, pos: 0, depth: 0, cells: [(2, 1); MAX_DEPTH + 2] }
    }

    /// The properties of `node`.
    pub fn properties(&self, node: &Node<'a>) -> Properties<'a> {
        Properties { dt: *self, pos: node.body }
    }

    /// One property of `node` by name.
    pub fn property(&self, node: &Node<'a>, name: &str) -> Option<Property<'a>> {
        self.properties(node).find(|p| p.name == name)
    }

    /// Whether `node`'s `compatible` lists any of `compatibles`.
    pub fn is_compatible(&self, node: &Node<'a>, compatibles: &[&str]) -> bool {
        self.property(node, "compatible").is_some_and(|p| p.strings().any(|s| compatibles.contains(&s)))
    }

    /// The first node compatible with any of `compatibles`.
    pub fn find_compatible(&self, compatibles: &[&str]) -> Option<Node<'a>> {
        self.nodes().find(|n| self.is_compatible(n, compatibles))
    }

    /// The node at an absolute path such as `/pl011@9000000` (unit address optional).
    pub fn find_path(&self, path: &str) -> Option<Node<'a>> {
        let mut want = path.split('/').filter(|c| !c.is_empty());
        let mut target = want.next();
        let mut depth = 1; // the root matches the empty path
        if target.is_none() {
            return self.nodes().next();
        }
        for n in self.nodes().skip(1) {
            if n.depth == depth + 1 {
                let t = target?;
                let matches = n.name == t || n.name.split('@').next() == Some(t);
                if matches {
                    target = want.next();
                    depth += 1;
                    if target.is_none() {
                        return Some(n);
                    }
                }
            } else if n.depth <= depth {
                return None; // left the subtree we were searching
            }
        }
        None
    }

    /// The node with `phandle`.
    pub fn find_phandle(&self, phandle: u32) -> Option<Node<'a>> {
        self.nodes().find(|n| {
            self.property(n, "phandle").or_else(|| self.property(n, "linux,phandle")).and_then(|p| p.as_u32())
                == Some(phandle)
        })
    }

    /// The children of `node`.
    pub fn children(&self, node: &Node<'a>) -> impl Iterator<Item = Node<'a>> + 'a {
        let depth = node.depth;
        let body = node.body;
        self.nodes()
            .skip_while(move |n| n.body != body)
            .skip(1)
            .take_while(move |n| n.depth > depth)
            .filter(move |n| n.depth == depth + 1)
    }

    /// `reg` of `node` decoded with its parent's cell sizes (each at most 2 cells).
    pub fn reg(&self, node: &Node<'a>) -> impl Iterator<Item = MemRange> + 'a {
        let (ac, sc) = (node.parent_address_cells, node.parent_size_cells);
        let ok = ac <= 2 && sc <= 2 && ac + sc > 0;
        let prop = if ok { self.property(node, "reg") } else { None };
        let stride = (ac + sc) as usize;
        prop.into_iter().flat_map(move |p| {
            let value = p.value;
            (0..value.len() / (4 * stride.max(1))).filter_map(move |i| {
                let cells: [u32; 4] = core::array::from_fn(|k| be32(value, (i * stride + k) * 4).unwrap_or(0));
                Some(MemRange { base: read_cells(&cells, 0, ac)?, size: read_cells(&cells, ac as usize, sc)? })
            })
        })
    }

    /// Every `reg` range of every `device_type = "memory"` node.
    pub fn memory(&self) -> impl Iterator<Item = MemRange> + 'a {
        let dt = *self;
        self.nodes()
            .filter(move |n| dt.property(n, "device_type").is_some_and(|p| p.strings().next() == Some("memory")))
            .flat_map(move |n| dt.reg(&n))
    }

    /// Memory-reservation block entries and `/reserved-memory` children with `reg`.
    pub fn reserved(&self) -> impl Iterator<Item = MemRange> + 'a {
        let rsv = self.rsvmap;
        let block = (0..)
            .map(move |i| {
                let b = rsv.get(i * 16..i * 16 + 16)?;
                let v = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
                Some(MemRange { base: v(0), size: v(8) })
            })
            .take_while(|r| r.is_some_and(|r| r.base != 0 || r.size != 0))
            .flatten();
        let dt = *self;
        let nodes = self
            .find_path("/reserved-memory")
            .into_iter()
            .flat_map(move |n| dt.children(&n))
            .flat_map(move |c| dt.reg(&c));
        block.chain(nodes)
    }

    /// `/chosen/bootargs`.
    pub fn bootargs(&self) -> Option<&'a str> {
        let chosen = self.find_path("/chosen")?;
        self.property(&chosen, "bootargs")?.strings().next()
    }

    /// The console: `/chosen/stdout-path` if it names a PL011, else the first PL011.
    pub fn console(&self) -> Option<Uart> {
        let from_chosen = self
            .find_path("/chosen")
            .and_then(|c| self.property(&c, "stdout-path"))
            .and_then(|p| p.strings().next())
            .map(|path| path.split(':').next().unwrap_or(path))
            .and_then(|path| self.find_path(path))
            .filter(|n| self.is_compatible(n, &["arm,pl011"]));
        let node = from_chosen.or_else(|| self.find_compatible(&["arm,pl011"]))?;
        let reg = self.reg(&node).next()?;
        Some(Uart { kind: UartKind::Pl011, base: reg.base, size: if reg.size == 0 { 0x1000 } else { reg.size } })
    }

    fn child_reg(&self, node: &Node<'a>, compatible: &str) -> Option<MemRange> {
        let child = self.children(node).find(|c| self.is_compatible(c, &[compatible]))?;
        self.reg(&child).next()
    }

    /// The CPUs under `/cpus` that are not `status = "disabled"`, in tree order
    /// (a `reg` of more than two cells is skipped).
    pub fn cpus(&self) -> impl Iterator<Item = Cpu> + 'a {
        let dt = *self;
        self.find_path("/cpus")
            .into_iter()
            .flat_map(move |n| dt.children(&n))
            .filter(move |n| dt.property(n, "device_type").is_some_and(|p| p.strings().next() == Some("cpu")))
            .filter(move |n| dt.property(n, "status").and_then(|p| p.strings().next()) != Some("disabled"))
            .filter_map(move |n| {
                let ac = n.parent_address_cells;
                let value = dt.property(&n, "reg")?.value;
                let cells: [u32; 2] = core::array::from_fn(|k| be32(value, k * 4).unwrap_or(0));
                let mpidr = match ac {
                    1 if value.len() >= 4 => u64::from(cells[0]),
                    2 if value.len() >= 8 => u64::from(cells[0]) << 32 | u64::from(cells[1]),
                    _ => return None,
                };
                let psci = dt.property(&n, "enable-method").and_then(|p| p.strings().next()) == Some("psci");
                Some(Cpu { mpidr, psci })
            })
    }

    /// The PSCI conduit of `/psci` (`method`), if the tree describes PSCI.
    pub fn psci_conduit(&self) -> Option<PsciConduit> {
        let n = self.find_path("/psci")?;
        match self.property(&n, "method")?.strings().next()? {
            "smc" => Some(PsciConduit::Smc),
            "hvc" => Some(PsciConduit::Hvc),
            _ => None,
        }
    }

    /// The GIC (v3 preferred when both are described).
    pub fn gic(&self) -> Option<Gic> {
        if let Some(n) = self.find_compatible(&["arm,gic-v3"]) {
            let mut regs = self.reg(&n);
            let dist = regs.next()?;
            let redist = regs.next();
            let its = self.child_reg(&n, "arm,gic-v3-its");
            return Some(Gic { version: GicVersion::V3, dist, redist, its, v2m: None, cpu_if: None });
        }
        let n = self.find_compatible(&["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"])?;
        let mut regs = self.reg(&n);
        let dist = regs.next()?;
        let cpu_if = regs.next();
        let v2m = self.child_reg(&n, "arm,gic-v2m-frame");
        Some(Gic { version: GicVersion::V2, dist, redist: None, its: None, v2m, cpu_if })
    }

    /// The architected timer's interrupts (`arm,armv8-timer`, 3-cell GIC specifiers).
    pub fn timer(&self) -> Option<Timer> {
        let n = self.find_compatible(&["arm,armv8-timer", "arm,armv7-timer"])?;
        let cells = self.property(&n, "interrupts")?.value;
        let intid = |i: usize| -> Option<u32> {
            let kind = be32(cells, i * 12)?;
            let num = be32(cells, i * 12 + 4)?;
            // Cell 0: 0 = SPI (INTID 32 + n), 1 = PPI (INTID 16 + n); a
            // number past the INTID space is no timer (the fuzzer found it).
            if kind == 1 {
                num.checked_add(16)
            } else {
                num.checked_add(32)
            }
        };
        Some(Timer { secure_phys: intid(0)?, phys: intid(1)?, virt: intid(2)?, hyp_phys: intid(3)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMMU: &[u8] = include_bytes!("../tests/data/virt-smmuv3.dtb");

    /// Found by the `devicetree` fuzz target: a timer interrupt number near
    /// 2^32 overflowed `INTID = 16 + n`. Such a timer is refused, not a panic.
    #[test]
    fn timer_interrupt_numbers_past_the_intid_space_are_refused() {
        let dt = DeviceTree::from_bytes(include_bytes!("../tests/data/fuzz-timer-intid-overflow.dtb")).unwrap();
        assert_eq!(dt.timer(), None);
        assert!(DeviceTree::from_bytes(SMMU).unwrap().timer().is_some(), "QEMU's own timer still parses");
    }

    #[test]
    fn qemu_virt_basics() {
        let dt = DeviceTree::from_bytes(SMMU).unwrap();
        let mem: Vec<MemRange> = dt.memory().collect();
        assert_eq!(mem, vec![MemRange { base: 0x4000_0000, size: 0x4000_0000 }]);
        assert_eq!(dt.console(), Some(Uart { kind: UartKind::Pl011, base: 0x0900_0000, size: 0x1000 }));
        let gic = dt.gic().unwrap();
        assert_eq!(gic.version, GicVersion::V3);
        assert_eq!(gic.dist, MemRange { base: 0x0800_0000, size: 0x1_0000 });
        assert_eq!(gic.redist.map(|r| r.base), Some(0x080A_0000));
        assert_eq!(gic.its.map(|r| r.base), Some(0x0808_0000));
        assert_eq!(dt.timer(), Some(Timer { secure_phys: 29, phys: 30, virt: 27, hyp_phys: 26 }));
        assert_eq!(dt.bootargs(), None);
        assert_eq!(dt.reserved().count(), 0);
    }

    #[test]
    fn cpus_and_psci_of_a_four_cpu_machine() {
        let dt = DeviceTree::from_bytes(include_bytes!("../tests/data/virt-smmuv3-smp4.dtb")).unwrap();
        let cpus: Vec<Cpu> = dt.cpus().collect();
        assert_eq!(cpus, (0..4).map(|mpidr| Cpu { mpidr, psci: true }).collect::<Vec<_>>());
        assert_eq!(dt.psci_conduit(), Some(PsciConduit::Smc), "virtualization=on: QEMU's PSCI answers SMC");
        let one = DeviceTree::from_bytes(SMMU).unwrap();
        assert_eq!(one.cpus().count(), 1);
    }

    #[test]
    fn generic_queries() {
        let dt = DeviceTree::from_bytes(SMMU).unwrap();
        let root = dt.find_path("/").unwrap();
        assert_eq!(root.depth, 1);
        let pcie = dt.find_compatible(&["pci-host-ecam-generic"]).unwrap();
        assert_eq!(pcie.name, "pcie@10000000");
        assert_eq!(dt.reg(&pcie).next(), Some(MemRange { base: 0x40_1000_0000, size: 0x1000_0000 }));
        let smmu = dt.find_path("/smmuv3@9050000").unwrap();
        let ph = dt.property(&smmu, "phandle").and_then(|p| p.as_u32()).unwrap();
        assert_eq!(dt.find_phandle(ph).map(|n| n.name), Some("smmuv3@9050000"));
        let gic = dt.find_compatible(&["arm,gic-v3"]).unwrap();
        assert_eq!(dt.children(&gic).count(), 1, "the ITS");
        assert!(dt.find_path("/nonexistent").is_none());
        assert!(dt.find_path("/pcie/x").is_none());
    }

    #[test]
    fn header_errors() {
        assert_eq!(DeviceTree::total_size(&[0; 3]), Err(DtError::Truncated));
        assert_eq!(DeviceTree::total_size(&[0; 40]), Err(DtError::BadMagic));
        assert_eq!(DeviceTree::total_size(&SMMU[..40]), Ok(SMMU.len()));
        assert_eq!(DeviceTree::from_bytes(&SMMU[..SMMU.len() - 1]).err(), Some(DtError::Truncated));
        let mut bad = SMMU.to_vec();
        bad[4..8].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(DeviceTree::from_bytes(&bad).err(), Some(DtError::Malformed));
    }

    #[test]
    fn corrupted_blobs_never_panic() {
        let mut state = 0x1234_5678u32;
        let mut parsed = 0;
        for round in 0..std::env::var("DT_FUZZ_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000) {
            let mut blob = SMMU.to_vec();
            for _ in 0..=(round % 3) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let i = state as usize % blob.len();
                blob[i] = (state >> 8) as u8;
            }
            if let Ok(dt) = DeviceTree::from_bytes(&blob) {
                parsed += 1;
                let _ = dt.memory().count();
                let _ = dt.reserved().count();
                let _ = (dt.console(), dt.gic(), dt.timer(), dt.bootargs(), dt.psci_conduit());
                let _ = dt.cpus().count();
            }
        }
        assert!(parsed > 1000, "most single-byte mutations still parse ({parsed})");
    }
}
