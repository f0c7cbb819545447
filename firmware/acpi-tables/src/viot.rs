//! The Virtual I/O Translation table (ACPI 6.5 §5.2.32): virtio-iommu devices
//! and the endpoints they translate.

use crate::{check_header, structures, Bytes, TableError};
use alloc::vec::Vec;

/// One VIOT node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// PCI endpoints `bdf_start..=bdf_end` on segments `segment_start..=segment_end`,
    /// with endpoint IDs from `endpoint_start`, translated by the IOMMU node at `output` (offset).
    PciRange {
        /// Offset of this node.
        offset: u16,
        /// Endpoint ID of the first BDF.
        endpoint_start: u32,
        /// First segment.
        segment_start: u16,
        /// Last segment.
        segment_end: u16,
        /// First BDF.
        bdf_start: u16,
        /// Last BDF.
        bdf_end: u16,
        /// Offset of the IOMMU node.
        output: u16,
    },
    /// A virtio-mmio or platform endpoint.
    MmioEndpoint {
        /// Offset of this node.
        offset: u16,
        /// Endpoint ID.
        endpoint: u32,
        /// MMIO base of the endpoint.
        base: u64,
        /// Offset of the IOMMU node.
        output: u16,
    },
    /// A virtio-iommu PCI function.
    VirtioPci {
        /// Offset of this node.
        offset: u16,
        /// Segment.
        segment: u16,
        /// BDF of the virtio-iommu.
        bdf: u16,
    },
    /// A virtio-mmio virtio-iommu.
    VirtioMmio {
        /// Offset of this node.
        offset: u16,
        /// MMIO base.
        base: u64,
    },
}

/// A parsed VIOT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viot {
    /// Nodes in table order.
    pub nodes: Vec<Node>,
    /// Node types skipped as unknown.
    pub skipped: Vec<u8>,
}

impl Viot {
    /// The IOMMU node at `offset`.
    pub fn iommu_at(&self, offset: u16) -> Option<&Node> {
        self.nodes.iter().find(|n| match n {
            Node::VirtioPci { offset: o, .. } | Node::VirtioMmio { offset: o, .. } => *o == offset,
            _ => false,
        })
    }

    /// The IOMMU node offset and endpoint ID for PCI function `segment:bdf`.
    pub fn translate_pci(&self, segment: u16, bdf: u16) -> Option<(u16, u32)> {
        self.nodes.iter().find_map(|n| match *n {
            Node::PciRange { endpoint_start, segment_start, segment_end, bdf_start, bdf_end, output, .. }
                if (segment_start..=segment_end).contains(&segment) && (bdf_start..=bdf_end).contains(&bdf) =>
            {
                Some((output, endpoint_start.wrapping_add(u32::from(bdf - bdf_start))))
            }
            _ => None,
        })
    }
}

/// Parses a VIOT table image; references to missing IOMMU nodes are errors.
pub fn parse(data: &[u8]) -> Result<Viot, TableError> {
    let t = check_header(data, b"VIOT", 48)?;
    let b = Bytes(t);
    let count = b.u16(36).unwrap_or(0) as usize;
    let first = b.u16(38).unwrap_or(0) as usize;
    if first < 48 {
        return Err(TableError::Overlap { offset: first });
    }
    let mut v = Viot::default();
    for (i, s) in structures(t, first, 4, |b, o| b.u16(o + 2).map(usize::from)).enumerate() {
        if i == count {
            break;
        }
        let (o, len) = s?;
        let short = TableError::BadLength { offset: o, length: len };
        let off = o as u16;
        let node = match t[o] {
            1 if len >= 24 => Node::PciRange {
                offset: off,
                endpoint_start: b.u32(o + 4).ok_or(short)?,
                segment_start: b.u16(o + 8).ok_or(short)?,
                segment_end: b.u16(o + 10).ok_or(short)?,
                bdf_start: b.u16(o + 12).ok_or(short)?,
                bdf_end: b.u16(o + 14).ok_or(short)?,
                output: b.u16(o + 16).ok_or(short)?,
            },
            2 if len >= 24 => Node::MmioEndpoint {
                offset: off,
                endpoint: b.u32(o + 4).ok_or(short)?,
                base: b.u64(o + 8).ok_or(short)?,
                output: b.u16(o + 16).ok_or(short)?,
            },
            3 if len >= 16 => {
                Node::VirtioPci { offset: off, segment: b.u16(o + 4).ok_or(short)?, bdf: b.u16(o + 6).ok_or(short)? }
            }
            4 if len >= 16 => Node::VirtioMmio { offset: off, base: b.u64(o + 8).ok_or(short)? },
            1..=4 => return Err(short),
            other => {
                log::warn!("viot: skipping unknown node type {other} at {o:#x}");
                v.skipped.push(other);
                continue;
            }
        };
        v.nodes.push(node);
    }
    for n in &v.nodes {
        let (offset, output, ok) = match *n {
            Node::PciRange { offset, output, segment_start, segment_end, bdf_start, bdf_end, .. } => {
                (offset, output, segment_start <= segment_end && bdf_start <= bdf_end)
            }
            Node::MmioEndpoint { offset, output, .. } => (offset, output, true),
            _ => continue,
        };
        if !ok || v.iommu_at(output).is_none() {
            return Err(TableError::BadReference { offset: offset.into() });
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mutate, table};

    const QEMU: &[u8] = include_bytes!("../tests/data/virtio-VIOT.bin");

    #[test]
    fn qemu_q35_viot() {
        let v = parse(QEMU).unwrap();
        assert_eq!(v.nodes.len(), 2);
        let Node::VirtioPci { offset, segment, bdf } = v.nodes[0] else { panic!("{:?}", v.nodes[0]) };
        assert_eq!((offset, segment), (0x30, 0));
        assert_ne!(bdf, 0);
        assert_eq!(v.translate_pci(0, 0x0008), Some((0x30, 0x0008)), "endpoint ID = RID");
        assert_eq!(v.translate_pci(1, 0x0008), None);
    }

    #[test]
    fn mmio_nodes_and_bad_references() {
        let mut body = vec![0u8; 12];
        body[0] = 2; // node count
        body[2] = 48; // node offset
                      // virtio-mmio IOMMU at 48
        let mut iommu = vec![4u8, 0, 16, 0, 0, 0, 0, 0];
        iommu.extend(0x0A00_0000u64.to_le_bytes());
        // MMIO endpoint at 64 pointing at 48
        let mut ep = vec![2u8, 0, 24, 0];
        ep.extend(5u32.to_le_bytes());
        ep.extend(0x0A00_0200u64.to_le_bytes());
        ep.extend(48u16.to_le_bytes());
        ep.extend([0u8; 6]);
        let mut b = body.clone();
        b.extend(&iommu);
        b.extend(&ep);
        let v = parse(&table(b"VIOT", 0, &b)).unwrap();
        assert_eq!(v.nodes[1], Node::MmioEndpoint { offset: 64, endpoint: 5, base: 0x0A00_0200, output: 48 });
        let mut broken = b.clone();
        broken[12 + 16 + 16] = 99; // output offset → nowhere
        assert_eq!(parse(&table(b"VIOT", 0, &broken)), Err(TableError::BadReference { offset: 64 }));
        let mut overlap = body.clone();
        overlap[2] = 8;
        assert_eq!(parse(&table(b"VIOT", 0, &overlap)), Err(TableError::Overlap { offset: 8 }));
    }

    #[test]
    fn mutations_never_panic() {
        mutate(QEMU, 20_000, |d| {
            let _ = parse(d);
        });
    }
}
