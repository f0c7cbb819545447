//! PCIe host bridges (`pci-host-ecam-generic`), their `ranges`, `bus-range`,
//! `iommu-map`/`msi-map` (Linux bindings `pci/pci-iommu.yaml`, `pci/pci-msi.yaml`,
//! IEEE 1275 PCI bus binding for the 3-cell addresses), Arm SMMUv3 nodes
//! (`iommu/arm,smmu-v3.yaml`) and virtio-iommu nodes (`virtio/iommu.txt`).

use crate::{be32, read_cells, DeviceTree, DtError, MemRange, Node};
use alloc::string::String;
use alloc::vec::Vec;

/// Address space of a PCI range (phys.hi bits 25:24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciSpace {
    /// Configuration space (not used in `ranges` of ECAM hosts).
    Config,
    /// I/O ports.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory.
    Mem64,
}

/// One `ranges` entry of a PCI host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRange {
    /// Space.
    pub space: PciSpace,
    /// Prefetchable (phys.hi bit 30).
    pub prefetchable: bool,
    /// PCI bus address.
    pub pci_addr: u64,
    /// CPU physical address.
    pub cpu_addr: u64,
    /// Size.
    pub size: u64,
}

/// One `iommu-map` or `msi-map` entry: RIDs `rid_base..rid_base+len` go to
/// `target` (a phandle) as IDs `out_base..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// First input requester ID.
    pub rid_base: u32,
    /// Phandle of the IOMMU or MSI controller.
    pub target: u32,
    /// First output ID.
    pub out_base: u32,
    /// Number of IDs.
    pub len: u32,
}

/// Maps a requester ID through a map and mask (first matching entry wins).
pub fn map_id(map: &[IdMap], mask: Option<u32>, rid: u32) -> Option<(u32, u32)> {
    let id = rid & mask.unwrap_or(u32::MAX);
    map.iter()
        .find(|e| id >= e.rid_base && u64::from(id) < u64::from(e.rid_base) + u64::from(e.len))
        .map(|e| (e.target, e.out_base.wrapping_add(id - e.rid_base)))
}

/// One `interrupt-map` entry: INTx `pin` of the device at `child_hi` (phys.hi,
/// i.e. bus/dev/fn in bits 23:8) raises `parent_spec` on interrupt controller `parent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntxRoute {
    /// phys.hi of the child unit address.
    pub child_hi: u32,
    /// Interrupt pin (1 = INTA .. 4 = INTD).
    pub pin: u32,
    /// Phandle of the parent interrupt controller.
    pub parent: u32,
    /// The parent's interrupt specifier (for a GIC: type, number, flags).
    pub parent_spec: Vec<u32>,
}

/// A `pci-host-ecam-generic` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// Node name.
    pub name: String,
    /// PCI segment (`linux,pci-domain`, else 0).
    pub segment: u16,
    /// ECAM window.
    pub ecam: MemRange,
    /// First bus.
    pub bus_start: u8,
    /// Last bus.
    pub bus_end: u8,
    /// Address windows.
    pub ranges: Vec<PciRange>,
    /// `iommu-map`.
    pub iommu_map: Vec<IdMap>,
    /// `iommu-map-mask`.
    pub iommu_map_mask: Option<u32>,
    /// `msi-map`.
    pub msi_map: Vec<IdMap>,
    /// `msi-parent` phandle.
    pub msi_parent: Option<u32>,
    /// `dma-coherent`.
    pub dma_coherent: bool,
    /// `interrupt-map` (legacy INTx routing).
    pub interrupt_map: Vec<IntxRoute>,
    /// `interrupt-map-mask` (phys.hi, mid, lo, pin).
    pub interrupt_map_mask: [u32; 4],
}

impl PciHost {
    /// The parent interrupt for INTx `pin` (1–4) of the root-bus device with
    /// requester ID `rid` (callers swizzle pins through bridges first).
    pub fn intx(&self, rid: u16, pin: u32) -> Option<&IntxRoute> {
        let hi = (u32::from(rid) << 8) & self.interrupt_map_mask[0];
        let pin = pin & self.interrupt_map_mask[3];
        self.interrupt_map.iter().find(|e| e.child_hi & self.interrupt_map_mask[0] == hi && e.pin == pin)
    }

    /// The IOMMU (phandle) and ID that requester ID `rid` is translated with, if any.
    pub fn map_rid(&self, rid: u16) -> Option<(u32, u32)> {
        map_id(&self.iommu_map, self.iommu_map_mask, u32::from(rid))
    }

    /// The first window of `space`.
    pub fn window(&self, space: PciSpace) -> Option<PciRange> {
        self.ranges.iter().copied().find(|r| r.space == space)
    }
}

/// A wired interrupt of a device node, decoded from a 3-cell GIC specifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedIrq {
    /// Name from `interrupt-names` (empty when absent).
    pub name: String,
    /// GIC INTID.
    pub intid: u32,
    /// Edge triggered (else level).
    pub edge: bool,
}

/// An `arm,smmu-v3` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smmu {
    /// Node name.
    pub name: String,
    /// Register window.
    pub regs: MemRange,
    /// Phandle (what `iommu-map`/`iommus` refer to).
    pub phandle: Option<u32>,
    /// Interrupts by name (`eventq`, `priq`, `cmdq-sync`, `gerror`).
    pub irqs: Vec<NamedIrq>,
    /// `dma-coherent`.
    pub dma_coherent: bool,
}

/// A `virtio,pci-iommu` node (a child of a PCI host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioIommu {
    /// Node name.
    pub name: String,
    /// Requester ID of the virtio-iommu function (from `reg` phys.hi bits 23:8).
    pub rid: u16,
    /// Phandle.
    pub phandle: Option<u32>,
}

/// A platform device with an `iommus` property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuClient {
    /// Node name.
    pub name: String,
    /// (IOMMU phandle, stream/endpoint ID) pairs.
    pub iommus: Vec<(u32, u32)>,
}

fn id_map(dt: &DeviceTree<'_>, node: &Node<'_>, name: &str) -> Result<Vec<IdMap>, DtError> {
    let Some(p) = dt.property(node, name) else { return Ok(Vec::new()) };
    if !p.value.len().is_multiple_of(16) {
        return Err(DtError::Malformed);
    }
    Ok(p.value
        .chunks_exact(16)
        .map(|c| IdMap {
            rid_base: be32(c, 0).unwrap_or(0),
            target: be32(c, 4).unwrap_or(0),
            out_base: be32(c, 8).unwrap_or(0),
            len: be32(c, 12).unwrap_or(0),
        })
        .collect())
}

impl<'a> DeviceTree<'a> {
    fn pci_host(&self, node: &Node<'a>) -> Result<PciHost, DtError> {
        let ecam = self.reg(node).next().ok_or(DtError::Malformed)?;
        let (bus_start, bus_end) = match self.property(node, "bus-range") {
            Some(p) => {
                let c: Vec<u32> = p.cells().collect();
                match c.as_slice() {
                    [a, b] if a <= b && *b <= 0xFF => (*a as u8, *b as u8),
                    _ => return Err(DtError::Malformed),
                }
            }
            None => (0, ((ecam.size >> 20).clamp(1, 256) - 1) as u8),
        };
        // ranges: child (3 cells) + parent (#address-cells of our parent) + size (our #size-cells).
        let own_size_cells = self.property(node, "#size-cells").and_then(|p| p.as_u32()).unwrap_or(2).min(2);
        let parent_cells = node.parent_address_cells.min(2);
        let stride = (3 + parent_cells + own_size_cells) as usize;
        let mut ranges = Vec::new();
        if let Some(p) = self.property(node, "ranges") {
            let cells: Vec<u32> = p.cells().collect();
            if !cells.len().is_multiple_of(stride) {
                return Err(DtError::Malformed);
            }
            for e in cells.chunks_exact(stride) {
                let hi = e[0];
                let space = match (hi >> 24) & 3 {
                    0 => PciSpace::Config,
                    1 => PciSpace::Io,
                    2 => PciSpace::Mem32,
                    _ => PciSpace::Mem64,
                };
                ranges.push(PciRange {
                    space,
                    prefetchable: hi & (1 << 30) != 0,
                    pci_addr: read_cells(e, 1, 2).ok_or(DtError::Malformed)?,
                    cpu_addr: read_cells(e, 3, parent_cells).ok_or(DtError::Malformed)?,
                    size: read_cells(e, 3 + parent_cells as usize, own_size_cells).ok_or(DtError::Malformed)?,
                });
            }
        }
        let segment = self.property(node, "linux,pci-domain").and_then(|p| p.as_u32()).unwrap_or(0);
        let mut interrupt_map_mask = [u32::MAX; 4];
        if let Some(p) = self.property(node, "interrupt-map-mask") {
            for (slot, c) in interrupt_map_mask.iter_mut().zip(p.cells()) {
                *slot = c;
            }
        }
        let mut interrupt_map = Vec::new();
        if let Some(p) = self.property(node, "interrupt-map") {
            let cells: Vec<u32> = p.cells().collect();
            let mut i = 0;
            while i + 5 <= cells.len() {
                let (child_hi, pin, parent) = (cells[i], cells[i + 3], cells[i + 4]);
                let pnode = self.find_phandle(parent).ok_or(DtError::Malformed)?;
                let acells = self.property(&pnode, "#address-cells").and_then(|p| p.as_u32()).unwrap_or(0) as usize;
                let icells =
                    self.property(&pnode, "#interrupt-cells").and_then(|p| p.as_u32()).ok_or(DtError::Malformed)?
                        as usize;
                let start = i + 5 + acells;
                let spec = cells.get(start..start + icells).ok_or(DtError::Malformed)?.to_vec();
                interrupt_map.push(IntxRoute { child_hi, pin, parent, parent_spec: spec });
                i = start + icells;
            }
        }
        Ok(PciHost {
            name: node.name.into(),
            segment: u16::try_from(segment).map_err(|_| DtError::Malformed)?,
            ecam,
            bus_start,
            bus_end,
            ranges,
            iommu_map: id_map(self, node, "iommu-map")?,
            iommu_map_mask: self.property(node, "iommu-map-mask").and_then(|p| p.as_u32()),
            msi_map: id_map(self, node, "msi-map")?,
            msi_parent: self.property(node, "msi-parent").and_then(|p| p.cells().next()),
            dma_coherent: self.property(node, "dma-coherent").is_some(),
            interrupt_map,
            interrupt_map_mask,
        })
    }

    /// Every ECAM PCI host; a malformed node yields an error for that node only.
    pub fn pci_hosts(&self) -> Vec<Result<PciHost, DtError>> {
        self.nodes().filter(|n| self.is_compatible(n, &["pci-host-ecam-generic"])).map(|n| self.pci_host(&n)).collect()
    }

    fn named_irqs(&self, node: &Node<'a>) -> Result<Vec<NamedIrq>, DtError> {
        let Some(p) = self.property(node, "interrupts") else { return Ok(Vec::new()) };
        if !p.value.len().is_multiple_of(12) {
            return Err(DtError::Malformed);
        }
        let names: Vec<&str> =
            self.property(node, "interrupt-names").map(|n| n.strings().collect()).unwrap_or_default();
        Ok(p.value
            .chunks_exact(12)
            .enumerate()
            .map(|(i, c)| {
                let (kind, num, flags) = (be32(c, 0).unwrap_or(0), be32(c, 4).unwrap_or(0), be32(c, 8).unwrap_or(0));
                NamedIrq {
                    name: names.get(i).copied().unwrap_or("").into(),
                    intid: if kind == 1 { 16 + num } else { 32 + num },
                    edge: flags & 3 != 0,
                }
            })
            .collect())
    }

    /// Every `arm,smmu-v3` node; a malformed node yields an error for that node only.
    pub fn smmus(&self) -> Vec<Result<Smmu, DtError>> {
        self.nodes()
            .filter(|n| self.is_compatible(n, &["arm,smmu-v3"]))
            .map(|n| {
                Ok(Smmu {
                    name: n.name.into(),
                    regs: self.reg(&n).next().ok_or(DtError::Malformed)?,
                    phandle: self.property(&n, "phandle").and_then(|p| p.as_u32()),
                    irqs: self.named_irqs(&n)?,
                    dma_coherent: self.property(&n, "dma-coherent").is_some(),
                })
            })
            .collect()
    }

    /// Every `virtio,pci-iommu` node.
    pub fn virtio_iommus(&self) -> Vec<Result<VirtioIommu, DtError>> {
        self.nodes()
            .filter(|n| self.is_compatible(n, &["virtio,pci-iommu"]))
            .map(|n| {
                let hi = self.property(&n, "reg").and_then(|p| p.cells().next()).ok_or(DtError::Malformed)?;
                Ok(VirtioIommu {
                    name: n.name.into(),
                    rid: ((hi >> 8) & 0xFFFF) as u16,
                    phandle: self.property(&n, "phandle").and_then(|p| p.as_u32()),
                })
            })
            .collect()
    }

    /// Platform devices with an `iommus` property (single-cell specifiers).
    pub fn iommu_clients(&self) -> Vec<IommuClient> {
        self.nodes()
            .filter_map(|n| {
                let p = self.property(&n, "iommus")?;
                let cells: Vec<u32> = p.cells().collect();
                Some(IommuClient { name: n.name.into(), iommus: cells.chunks_exact(2).map(|c| (c[0], c[1])).collect() })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMMU: &[u8] = include_bytes!("../tests/data/virt-smmuv3.dtb");
    const VIRTIO: &[u8] = include_bytes!("../tests/data/virt-virtio.dtb");

    #[test]
    fn qemu_virt_pcie_host() {
        let dt = DeviceTree::from_bytes(SMMU).unwrap();
        let hosts = dt.pci_hosts();
        assert_eq!(hosts.len(), 1);
        let h = hosts[0].as_ref().unwrap();
        assert_eq!(h.ecam, MemRange { base: 0x40_1000_0000, size: 0x1000_0000 });
        assert_eq!((h.segment, h.bus_start, h.bus_end), (0, 0, 0xFF));
        let m32 = h.window(PciSpace::Mem32).unwrap();
        assert_eq!((m32.cpu_addr, m32.pci_addr, m32.size), (0x1000_0000, 0x1000_0000, 0x2EFF_0000));
        let io = h.window(PciSpace::Io).unwrap();
        assert_eq!((io.cpu_addr, io.pci_addr, io.size), (0x3EFF_0000, 0, 0x1_0000));
        let m64 = h.window(PciSpace::Mem64).unwrap();
        assert_eq!(m64.cpu_addr, 0x80_0000_0000);
        assert!(h.dma_coherent);
        // iommu-map = <0 &smmu 0 0x10000>: RID == stream ID.
        let smmus = dt.smmus();
        let smmu = smmus[0].as_ref().unwrap();
        assert_eq!(h.map_rid(0x20), Some((smmu.phandle.unwrap(), 0x20)));
        assert_eq!(smmu.regs, MemRange { base: 0x0905_0000, size: 0x2_0000 });
        let names: Vec<(&str, u32, bool)> = smmu.irqs.iter().map(|i| (i.name.as_str(), i.intid, i.edge)).collect();
        assert_eq!(
            names,
            [("eventq", 106, true), ("priq", 107, true), ("cmdq-sync", 108, true), ("gerror", 109, true)]
        );
        assert_eq!(h.msi_map.len(), 1);
        // INTx: SPI 3 + (slot + pin - 1) % 4 (QEMU virt's swizzle).
        let edu_slot1_inta = h.intx(0x0008, 1).unwrap();
        assert_eq!(edu_slot1_inta.parent_spec, vec![0, 4, 4], "slot 1, INTA -> SPI 4, level");
        assert_eq!(h.intx(0x0010, 4).unwrap().parent_spec[1], 3 + (2 + 4 - 1) % 4);
    }

    #[test]
    fn qemu_virt_virtio_iommu_leaves_itself_out() {
        let dt = DeviceTree::from_bytes(VIRTIO).unwrap();
        let v = dt.virtio_iommus();
        assert_eq!(v.len(), 1);
        let vi = v[0].as_ref().unwrap();
        // The capture has QEMU's default NIC at 00:01.0, so the virtio-iommu is 00:02.0.
        assert_eq!(vi.rid, 0x0010);
        let h = dt.pci_hosts().remove(0).unwrap();
        let ph = vi.phandle.unwrap();
        assert_eq!(h.map_rid(0x0000), Some((ph, 0)));
        assert_eq!(h.map_rid(vi.rid), None, "its own RID is not translated");
        assert_eq!(h.map_rid(vi.rid + 1), Some((ph, u32::from(vi.rid) + 1)));
        assert_eq!(h.map_rid(0x0018), Some((ph, 0x18)));
        assert!(dt.smmus().is_empty());
    }

    #[test]
    fn map_id_with_mask_and_offsets() {
        let m = [IdMap { rid_base: 0x100, target: 7, out_base: 0x8000, len: 0x100 }];
        assert_eq!(map_id(&m, None, 0x105), Some((7, 0x8005)));
        assert_eq!(map_id(&m, None, 0x205), None);
        assert_eq!(map_id(&m, Some(0xFF00), 0x1FF), Some((7, 0x8000)), "mask drops devfn");
        let edge = [IdMap { rid_base: u32::MAX, target: 1, out_base: 0, len: 1 }];
        assert_eq!(map_id(&edge, None, u32::MAX), Some((1, 0)), "no overflow at the top");
    }
}
