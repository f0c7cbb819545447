//! The I/O Remapping Table (Arm DEN0049 rev E.e): ITS groups, named components,
//! root complexes, SMMUv1/v2 and SMMUv3 nodes, PMCGs and RMR nodes, with ID
//! mappings resolved from a requester ID to a stream ID and on to an ITS
//! device ID.

use crate::{check_header, Bytes, TableError};
use alloc::string::String;
use alloc::vec::Vec;

/// One ID mapping (§3.1.1.3): input IDs `input_base..=input_base + count` map to
/// `output_base..` on the node at `output_ref` (a single mapping maps one ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// First input ID.
    pub input_base: u32,
    /// Number of IDs minus one, as the table stores it.
    pub count_minus_one: u32,
    /// First output ID.
    pub output_base: u32,
    /// Offset of the output node.
    pub output_ref: u32,
    /// Flags (bit 0: single mapping).
    pub flags: u32,
}

impl IdMapping {
    /// The output ID for `id`, if this mapping covers it.
    pub fn map(&self, id: u32) -> Option<u32> {
        if self.flags & 1 != 0 {
            return Some(self.output_base);
        }
        let end = u64::from(self.input_base) + u64::from(self.count_minus_one);
        (id >= self.input_base && u64::from(id) <= end).then(|| self.output_base.wrapping_add(id - self.input_base))
    }
}

/// A memory range of an RMR node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmrRange {
    /// First byte.
    pub base: u64,
    /// Length.
    pub length: u64,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// ITS group (type 0): GIC ITS identifiers.
    ItsGroup {
        /// ITS IDs.
        its_ids: Vec<u32>,
    },
    /// Named component (type 1): a platform device by ACPI name.
    NamedComponent {
        /// Device object name.
        name: String,
        /// Memory address size limit (bits).
        address_limit: u8,
    },
    /// PCI root complex (type 2).
    RootComplex {
        /// PCI segment.
        segment: u32,
        /// ATS attribute (bit 0: ATS supported).
        ats: u32,
        /// Memory address size limit (bits; revision 1+).
        address_limit: u8,
    },
    /// SMMUv1/v2 (type 3).
    SmmuV1V2 {
        /// Register base.
        base: u64,
        /// Register span.
        span: u64,
        /// Model.
        model: u32,
    },
    /// SMMUv3 (type 4).
    SmmuV3 {
        /// Register base.
        base: u64,
        /// Flags (bit 0 COHACC override, bit 1 HTTU override, bit 3 proximity domain valid).
        flags: u32,
        /// Model (0 generic).
        model: u32,
        /// GSIVs: event, PRI, GERR, sync (0 = none).
        gsiv: [u32; 4],
    },
    /// Performance monitor counter group (type 5).
    Pmcg {
        /// Page 0 base.
        base: u64,
        /// Overflow interrupt GSIV.
        overflow_gsiv: u32,
        /// Offset of the node it monitors.
        node_ref: u32,
    },
    /// Reserved memory ranges (type 6): identity mappings the devices in its ID mappings need.
    Rmr {
        /// Flags (bit 0: remapping permitted).
        flags: u32,
        /// The ranges.
        ranges: Vec<RmrRange>,
    },
}

/// One IORT node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Offset in the table (what ID mappings refer to).
    pub offset: u32,
    /// Node revision.
    pub revision: u8,
    /// Node identifier (revision 3+ tables; 0 otherwise).
    pub identifier: u32,
    /// The node's data.
    pub kind: NodeKind,
    /// Its ID mappings.
    pub mappings: Vec<IdMapping>,
}

/// A parsed IORT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iort {
    /// Table revision.
    pub revision: u8,
    /// Nodes in table order.
    pub nodes: Vec<Node>,
    /// Node types skipped as unknown.
    pub skipped: Vec<u8>,
}

/// Where a requester ID goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RidRoute {
    /// Offset of the SMMU node translating it, if any.
    pub smmu: Option<u32>,
    /// Stream ID at that SMMU.
    pub stream_id: Option<u32>,
    /// Offset of the ITS group its MSIs reach, if any.
    pub its_group: Option<u32>,
    /// ITS device ID.
    pub device_id: Option<u32>,
}

impl Iort {
    /// The node at `offset`.
    pub fn node(&self, offset: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.offset == offset)
    }

    /// Root complex node for PCI `segment`.
    pub fn root_complex(&self, segment: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| matches!(n.kind, NodeKind::RootComplex { segment: s, .. } if s == segment))
    }

    /// Follows ID mappings from a root complex: RID → stream ID (if an SMMU
    /// sits in between) → ITS device ID. Loops are cut after 8 hops.
    pub fn map_rid(&self, rc_offset: u32, rid: u32) -> RidRoute {
        let mut route = RidRoute { smmu: None, stream_id: None, its_group: None, device_id: None };
        let (mut at, mut id) = (rc_offset, rid);
        for _ in 0..8 {
            let Some(node) = self.node(at) else { break };
            // Single mappings describe the node's own MSIs; skip them for device IDs.
            let Some((next, out)) =
                node.mappings.iter().filter(|m| m.flags & 1 == 0).find_map(|m| Some((m.output_ref, m.map(id)?)))
            else {
                break;
            };
            match self.node(next).map(|n| &n.kind) {
                Some(NodeKind::SmmuV3 { .. } | NodeKind::SmmuV1V2 { .. }) => {
                    route.smmu = Some(next);
                    route.stream_id = Some(out);
                }
                Some(NodeKind::ItsGroup { .. }) => {
                    route.its_group = Some(next);
                    route.device_id = Some(out);
                    break;
                }
                _ => break,
            }
            (at, id) = (next, out);
        }
        route
    }
}

fn kind_of(
    b: &Bytes<'_>,
    t: &[u8],
    o: usize,
    len: usize,
    node_type: u8,
    revision: u8,
) -> Result<Option<NodeKind>, TableError> {
    let short = TableError::BadLength { offset: o, length: len };
    let d = o + 16; // node-specific data
    let need = |n: usize| if len < 16 + n { Err(short) } else { Ok(()) };
    Ok(Some(match node_type {
        0 => {
            need(4)?;
            let count = b.u32(d).ok_or(short)? as usize;
            if count > (len - 20) / 4 {
                return Err(short);
            }
            NodeKind::ItsGroup { its_ids: (0..count).filter_map(|i| b.u32(d + 4 + 4 * i)).collect() }
        }
        1 => {
            need(12)?;
            let raw = &t[d + 12..o + len];
            let name = raw.split(|&c| c == 0).next().unwrap_or(&[]);
            NodeKind::NamedComponent { name: String::from_utf8_lossy(name).into_owned(), address_limit: t[d + 10] }
        }
        2 => {
            need(16)?;
            NodeKind::RootComplex {
                ats: b.u32(d + 8).ok_or(short)?,
                segment: b.u32(d + 12).ok_or(short)?,
                address_limit: if revision >= 1 { t[d + 16.min(len - 17)] } else { 0 },
            }
        }
        3 => {
            need(24)?;
            NodeKind::SmmuV1V2 {
                base: b.u64(d).ok_or(short)?,
                span: b.u64(d + 8).ok_or(short)?,
                model: b.u32(d + 16).ok_or(short)?,
            }
        }
        4 => {
            need(44)?;
            NodeKind::SmmuV3 {
                base: b.u64(d).ok_or(short)?,
                flags: b.u32(d + 8).ok_or(short)?,
                model: b.u32(d + 24).ok_or(short)?,
                gsiv: [
                    b.u32(d + 28).ok_or(short)?,
                    b.u32(d + 32).ok_or(short)?,
                    b.u32(d + 36).ok_or(short)?,
                    b.u32(d + 40).ok_or(short)?,
                ],
            }
        }
        5 => {
            need(16)?;
            NodeKind::Pmcg {
                base: b.u64(d).ok_or(short)?,
                overflow_gsiv: b.u32(d + 8).ok_or(short)?,
                node_ref: b.u32(d + 12).ok_or(short)?,
            }
        }
        6 => {
            need(12)?;
            let count = b.u32(d + 4).ok_or(short)? as usize;
            let at = b.u32(d + 8).ok_or(short)? as usize;
            if at < 16 || count > len / 20 || at + 20 * count > len {
                return Err(short);
            }
            let ranges = (0..count)
                .map(|i| RmrRange {
                    base: b.u64(o + at + 20 * i).unwrap_or(0),
                    length: b.u64(o + at + 20 * i + 8).unwrap_or(0),
                })
                .collect();
            NodeKind::Rmr { flags: b.u32(d).ok_or(short)?, ranges }
        }
        _ => return Ok(None),
    }))
}

/// Parses an IORT table image; every ID mapping must point at a node.
pub fn parse(data: &[u8]) -> Result<Iort, TableError> {
    let t = check_header(data, b"IORT", 48)?;
    let b = Bytes(t);
    let count = b.u32(36).unwrap_or(0) as usize;
    let first = b.u32(40).unwrap_or(0) as usize;
    if first < 48 && count > 0 {
        return Err(TableError::Overlap { offset: first });
    }
    let mut iort = Iort { revision: t[8], ..Iort::default() };
    let mut o = first;
    for _ in 0..count {
        let node_type = b.u8(o).ok_or(TableError::Truncated { needed: o + 16, available: t.len() })?;
        let len = usize::from(b.u16(o + 1).ok_or(TableError::Truncated { needed: o + 3, available: t.len() })?);
        if len < 16 || o + len > t.len() {
            return Err(TableError::BadLength { offset: o, length: len });
        }
        let revision = t[o + 3];
        let map_count = b.u32(o + 8).unwrap_or(0) as usize;
        let map_at = b.u32(o + 12).unwrap_or(0) as usize;
        if map_count > 0 && (map_at < 16 || map_count > len / 20 || map_at + 20 * map_count > len) {
            return Err(TableError::BadLength { offset: o, length: len });
        }
        let mappings = (0..map_count)
            .map(|i| {
                let m = o + map_at + 20 * i;
                IdMapping {
                    input_base: b.u32(m).unwrap_or(0),
                    count_minus_one: b.u32(m + 4).unwrap_or(0),
                    output_base: b.u32(m + 8).unwrap_or(0),
                    output_ref: b.u32(m + 12).unwrap_or(0),
                    flags: b.u32(m + 16).unwrap_or(0),
                }
            })
            .collect();
        match kind_of(&b, t, o, len, node_type, revision)? {
            Some(kind) => iort.nodes.push(Node {
                offset: o as u32,
                revision,
                identifier: b.u32(o + 4).unwrap_or(0),
                kind,
                mappings,
            }),
            None => {
                log::warn!("iort: skipping unknown node type {node_type} at {o:#x}");
                iort.skipped.push(node_type);
            }
        }
        o += len;
    }
    for n in &iort.nodes {
        for m in &n.mappings {
            if m.output_ref == n.offset || iort.node(m.output_ref).is_none() {
                return Err(TableError::BadReference { offset: n.offset as usize });
            }
        }
    }
    Ok(iort)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mutate, table};

    fn node(kind: u8, rev: u8, id: u32, data: &[u8], maps: &[(u32, u32, u32, u32, u32)]) -> Vec<u8> {
        let map_at = 16 + data.len();
        let len = map_at + 20 * maps.len();
        let mut n = vec![kind];
        n.extend((len as u16).to_le_bytes());
        n.push(rev);
        n.extend(id.to_le_bytes());
        n.extend((maps.len() as u32).to_le_bytes());
        n.extend((if maps.is_empty() { 0 } else { map_at as u32 }).to_le_bytes());
        n.extend(data);
        for &(i, c, out, r, f) in maps {
            for v in [i, c, out, r, f] {
                n.extend(v.to_le_bytes());
            }
        }
        n
    }

    /// The layout QEMU's virt builds with an SMMUv3 (QEMU.md §2.7): ITS, SMMU, RC.
    fn qemu_like() -> Vec<u8> {
        let its = node(0, 1, 0, &[1, 0, 0, 0, 0, 0, 0, 0], &[]);
        let its_at = 48u32;
        let smmu_at = its_at + its.len() as u32;
        let mut smmu_data = 0x0905_0000u64.to_le_bytes().to_vec();
        smmu_data.extend(1u32.to_le_bytes()); // flags
        smmu_data.extend([0u8; 4 + 8]); // reserved, VATOS
        smmu_data.extend(0u32.to_le_bytes()); // model
        for g in [0x6A, 0x6B, 0x6D, 0x6C] {
            smmu_data.extend((g as u32).to_le_bytes());
        }
        smmu_data.extend([0u8; 8]); // proximity, DeviceID mapping index
        let smmu = node(4, 4, 1, &smmu_data, &[(0, 0xFFFF, 0, its_at, 0)]);
        let rc_at = smmu_at + smmu.len() as u32;
        let mut rc_data = 1u64.to_le_bytes().to_vec(); // memory access properties (CCA)
        rc_data.extend(0u32.to_le_bytes()); // ATS
        rc_data.extend(0u32.to_le_bytes()); // segment
        rc_data.extend([64u8, 0, 0, 0]); // address size limit + reserved
        let rc = node(2, 3, 2, &rc_data, &[(0, 0xFF, 0, smmu_at, 0), (0x100, 0xFEFF, 0x100, its_at, 0)]);
        let mut body = 3u32.to_le_bytes().to_vec();
        body.extend(48u32.to_le_bytes());
        body.extend([0u8; 4]);
        body.extend(its);
        body.extend(smmu);
        body.extend(rc);
        let _ = rc_at;
        table(b"IORT", 3, &body)
    }

    #[test]
    fn qemu_layout_resolves_rids() {
        let iort = parse(&qemu_like()).unwrap();
        assert_eq!(iort.nodes.len(), 3);
        let rc = iort.root_complex(0).unwrap();
        let through_smmu = iort.map_rid(rc.offset, 0x08);
        let smmu = iort.nodes.iter().find(|n| matches!(n.kind, NodeKind::SmmuV3 { .. })).unwrap();
        assert_eq!(through_smmu.smmu, Some(smmu.offset));
        assert_eq!(through_smmu.stream_id, Some(0x08));
        assert_eq!(through_smmu.device_id, Some(0x08), "SMMU → ITS keeps the ID");
        let direct = iort.map_rid(rc.offset, 0x105);
        assert_eq!((direct.smmu, direct.device_id), (None, Some(0x105)), "RIDs above 0xFF bypass the SMMU");
        let NodeKind::SmmuV3 { base, gsiv, .. } = &smmu.kind else { unreachable!() };
        assert_eq!((*base, *gsiv), (0x0905_0000, [0x6A, 0x6B, 0x6D, 0x6C]));
    }

    /// Captured from QEMU 10 virt,iommu=smmuv3 booted with edk2 (tests/data/capture.py).
    const QEMU: &[u8] = include_bytes!("../tests/data/virt-smmuv3-IORT.bin");

    #[test]
    fn qemu_virt_iort() {
        let iort = parse(QEMU).unwrap();
        let kinds: Vec<u8> = iort
            .nodes
            .iter()
            .map(|n| match n.kind {
                NodeKind::ItsGroup { .. } => 0,
                NodeKind::SmmuV3 { .. } => 4,
                NodeKind::RootComplex { .. } => 2,
                _ => 99,
            })
            .collect();
        assert_eq!(kinds, vec![0, 4, 2]);
        let smmu = &iort.nodes[1];
        let NodeKind::SmmuV3 { base, gsiv, .. } = smmu.kind else { unreachable!() };
        assert_eq!(base, 0x0905_0000);
        assert_eq!(gsiv[0], 0x6A, "event queue GSIV");
        let rc = iort.root_complex(0).unwrap();
        let r = iort.map_rid(rc.offset, 0x08);
        assert_eq!((r.smmu, r.stream_id), (Some(smmu.offset), Some(0x08)));
        assert_eq!(r.its_group, Some(iort.nodes[0].offset));
    }

    #[test]
    fn named_component_smmuv2_pmcg_rmr_and_unknown() {
        let smmu2 = node(
            3,
            0,
            0,
            &{
                let mut d = 0x2B40_0000u64.to_le_bytes().to_vec();
                d.extend(0x1_0000u64.to_le_bytes());
                d.extend(3u32.to_le_bytes());
                d.extend([0u8; 4]);
                d
            },
            &[],
        );
        let nc = node(
            1,
            0,
            0,
            &{
                let mut d = vec![0u8; 12];
                d[10] = 48;
                d.extend(b"\\_SB.DMA0\0");
                d
            },
            &[(0, 0, 0x20, 48, 1)],
        );
        let pmcg = node(
            5,
            0,
            0,
            &{
                let mut d = 0x2B50_0000u64.to_le_bytes().to_vec();
                d.extend(90u32.to_le_bytes());
                d.extend(48u32.to_le_bytes());
                d
            },
            &[],
        );
        let rmr = node(
            6,
            1,
            0,
            &{
                let mut d = 1u32.to_le_bytes().to_vec();
                d.extend(1u32.to_le_bytes());
                d.extend(28u32.to_le_bytes()); // ranges right after these 12 bytes
                d.extend(0x8000_0000u64.to_le_bytes());
                d.extend(0x10_0000u64.to_le_bytes());
                d.extend([0u8; 4]);
                d
            },
            &[(5, 0, 5, 48, 0)],
        );
        let unknown = node(42, 0, 0, &[0; 4], &[]);
        let mut body = 5u32.to_le_bytes().to_vec();
        body.extend(48u32.to_le_bytes());
        body.extend([0u8; 4]);
        for n in [&smmu2, &nc, &pmcg, &rmr, &unknown] {
            body.extend(n.iter());
        }
        let iort = parse(&table(b"IORT", 3, &body)).unwrap();
        assert_eq!(iort.nodes.len(), 4);
        assert_eq!(iort.skipped, vec![42]);
        assert!(
            matches!(&iort.nodes[1].kind, NodeKind::NamedComponent { name, address_limit: 48 } if name == "\\_SB.DMA0")
        );
        assert!(matches!(iort.nodes[2].kind, NodeKind::Pmcg { overflow_gsiv: 90, node_ref: 48, .. }));
        assert!(
            matches!(&iort.nodes[3].kind, NodeKind::Rmr { flags: 1, ranges } if ranges == &[RmrRange { base: 0x8000_0000, length: 0x10_0000 }])
        );
        assert_eq!(iort.nodes[1].mappings[0].map(1234), Some(0x20), "single mapping");
    }

    #[test]
    fn bad_references_and_lengths() {
        let mut t = qemu_like();
        // Point the SMMU's mapping at a nonexistent offset.
        let smmu_map = 48 + 24 + 16 + 52; // its node (24) + smmu header (16) + smmu data (52)
        t[smmu_map + 12..smmu_map + 16].copy_from_slice(&7u32.to_le_bytes());
        crate::fix_checksum(&mut t);
        assert!(matches!(parse(&t), Err(TableError::BadReference { .. })));
        let mut t2 = qemu_like();
        t2[48 + 1] = 4; // ITS node length 4
        crate::fix_checksum(&mut t2);
        assert_eq!(parse(&t2), Err(TableError::BadLength { offset: 48, length: 4 }));
    }

    #[test]
    fn mutations_never_panic() {
        mutate(QEMU, 20_000, |d| {
            let _ = parse(d);
        });
        mutate(&qemu_like(), 20_000, |d| {
            if let Ok(i) = parse(d) {
                for n in &i.nodes {
                    let _ = i.map_rid(n.offset, 0x1234);
                }
            }
        });
    }
}
