//! The DMA Remapping table (Intel VT-d spec rev 4.1, §8 "BIOS Considerations").

use crate::{check_header, structures, Bytes, TableError};
use alloc::string::String;
use alloc::vec::Vec;

/// Kind of a device scope entry (§8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// A PCI endpoint.
    Endpoint,
    /// A PCI-PCI bridge: the scope covers its whole subtree.
    Bridge,
    /// An I/O APIC (enumeration ID = its APIC ID).
    IoApic,
    /// An HPET block (enumeration ID = its HPET number).
    Hpet,
    /// An ACPI namespace device (see ANDD).
    AcpiNamespace,
    /// A type this parser does not know.
    Unknown(u8),
}

/// One device scope: a PCI path from `start_bus` through bridges to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceScope {
    /// Kind.
    pub kind: ScopeKind,
    /// Enumeration ID (I/O APIC ID, HPET number, ANDD device number).
    pub enumeration_id: u8,
    /// Bus where the path starts.
    pub start_bus: u8,
    /// (device, function) hops; all but the last are bridges.
    pub path: Vec<(u8, u8)>,
}

impl DeviceScope {
    /// Resolves the path to the final `(bus, device, function)`, asking
    /// `secondary_bus(bus, dev, func)` for the secondary bus of each bridge hop.
    pub fn resolve(&self, mut secondary_bus: impl FnMut(u8, u8, u8) -> Option<u8>) -> Option<(u8, u8, u8)> {
        let (&(last_dev, last_fn), hops) = self.path.split_last()?;
        let mut bus = self.start_bus;
        for &(dev, func) in hops {
            bus = secondary_bus(bus, dev, func)?;
        }
        Some((bus, last_dev, last_fn))
    }
}

/// A DMA-remapping hardware unit definition (DRHD, §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drhd {
    /// INCLUDE_PCI_ALL: the unit covers every device of the segment not claimed by another unit.
    pub include_pci_all: bool,
    /// Register set size as 2^n 4 KiB pages (revision 3+; 0 = one page).
    pub size: u8,
    /// PCI segment.
    pub segment: u16,
    /// Register base.
    pub base: u64,
    /// Device scopes.
    pub scopes: Vec<DeviceScope>,
}

/// A reserved memory region needing identity mapping (RMRR, §8.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rmrr {
    /// Segment.
    pub segment: u16,
    /// First byte.
    pub base: u64,
    /// Last byte (inclusive).
    pub limit: u64,
    /// Devices that use it.
    pub scopes: Vec<DeviceScope>,
}

/// Root-port ATS capability reporting (ATSR, §8.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atsr {
    /// ALL_PORTS: every root port of the segment supports ATS.
    pub all_ports: bool,
    /// Segment.
    pub segment: u16,
    /// Root ports (when not all).
    pub scopes: Vec<DeviceScope>,
}

/// Remapping hardware static affinity (RHSA, §8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rhsa {
    /// Register base of the unit.
    pub base: u64,
    /// Proximity domain.
    pub proximity_domain: u32,
}

/// ACPI namespace device declaration (ANDD, §8.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Andd {
    /// Device number used in DRHD scopes of kind ACPI namespace.
    pub device_number: u8,
    /// ACPI object name.
    pub name: String,
}

/// SoC integrated address translation cache (SATC, §8.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Satc {
    /// ATC_REQUIRED flag.
    pub atc_required: bool,
    /// Segment.
    pub segment: u16,
    /// Devices.
    pub scopes: Vec<DeviceScope>,
}

/// A parsed DMAR table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmar {
    /// Host address width (physical address bits = value + 1).
    pub host_address_width: u8,
    /// Flags (bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN).
    pub flags: u8,
    /// Remapping units.
    pub drhds: Vec<Drhd>,
    /// Reserved regions.
    pub rmrrs: Vec<Rmrr>,
    /// ATS reporting.
    pub atsrs: Vec<Atsr>,
    /// Affinities.
    pub rhsas: Vec<Rhsa>,
    /// Namespace devices.
    pub andds: Vec<Andd>,
    /// SoC translation caches.
    pub satcs: Vec<Satc>,
    /// Structure types skipped as unknown.
    pub skipped: Vec<u16>,
}

fn scopes(t: &[u8], start: usize, end: usize) -> Result<Vec<DeviceScope>, TableError> {
    let mut out = Vec::new();
    for s in structures(&t[..end], start, 6, |b, o| b.u8(o + 1).map(usize::from)) {
        let (o, len) = s?;
        let b = Bytes(t);
        if len % 2 != 0 {
            return Err(TableError::BadLength { offset: o, length: len });
        }
        let kind = match b.u8(o).unwrap_or(0) {
            1 => ScopeKind::Endpoint,
            2 => ScopeKind::Bridge,
            3 => ScopeKind::IoApic,
            4 => ScopeKind::Hpet,
            5 => ScopeKind::AcpiNamespace,
            other => ScopeKind::Unknown(other),
        };
        let path = (o + 6..o + len).step_by(2).map(|p| (t[p], t[p + 1])).collect();
        out.push(DeviceScope { kind, enumeration_id: t[o + 4], start_bus: t[o + 5], path });
    }
    Ok(out)
}

/// Parses a DMAR table image.
pub fn parse(data: &[u8]) -> Result<Dmar, TableError> {
    let t = check_header(data, b"DMAR", 48)?;
    let mut d = Dmar { host_address_width: t[36], flags: t[37], ..Dmar::default() };
    for s in structures(t, 48, 4, |b, o| b.u16(o + 2).map(usize::from)) {
        let (o, len) = s?;
        let b = Bytes(t);
        let short = TableError::BadLength { offset: o, length: len };
        let kind = b.u16(o).unwrap_or(u16::MAX);
        let end = o + len;
        match kind {
            0 => {
                if len < 16 {
                    return Err(short);
                }
                d.drhds.push(Drhd {
                    include_pci_all: t[o + 4] & 1 != 0,
                    size: t[o + 5] & 0xF,
                    segment: b.u16(o + 6).ok_or(short)?,
                    base: b.u64(o + 8).ok_or(short)?,
                    scopes: scopes(t, o + 16, end)?,
                });
            }
            1 => {
                if len < 24 {
                    return Err(short);
                }
                let (base, limit) = (b.u64(o + 8).ok_or(short)?, b.u64(o + 16).ok_or(short)?);
                if limit < base {
                    return Err(short);
                }
                d.rmrrs.push(Rmrr {
                    segment: b.u16(o + 6).ok_or(short)?,
                    base,
                    limit,
                    scopes: scopes(t, o + 24, end)?,
                });
            }
            2 => {
                if len < 8 {
                    return Err(short);
                }
                d.atsrs.push(Atsr {
                    all_ports: t[o + 4] & 1 != 0,
                    segment: b.u16(o + 6).ok_or(short)?,
                    scopes: scopes(t, o + 8, end)?,
                });
            }
            3 => {
                if len < 20 {
                    return Err(short);
                }
                d.rhsas.push(Rhsa { base: b.u64(o + 8).ok_or(short)?, proximity_domain: b.u32(o + 16).ok_or(short)? });
            }
            4 => {
                if len < 8 {
                    return Err(short);
                }
                let raw = &t[o + 8..end];
                let name = raw.split(|&c| c == 0).next().unwrap_or(&[]);
                d.andds.push(Andd { device_number: t[o + 7], name: String::from_utf8_lossy(name).into_owned() });
            }
            5 => {
                if len < 8 {
                    return Err(short);
                }
                d.satcs.push(Satc {
                    atc_required: t[o + 4] & 1 != 0,
                    segment: b.u16(o + 6).ok_or(short)?,
                    scopes: scopes(t, o + 8, end)?,
                });
            }
            other => {
                log::warn!("dmar: skipping unknown structure type {other} at {o:#x}");
                d.skipped.push(other);
            }
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mutate, table};

    const QEMU: &[u8] = include_bytes!("../tests/data/vtd-DMAR.bin");
    const QEMU_IOTLB: &[u8] = include_bytes!("../tests/data/vtd-iotlb-DMAR.bin");

    #[test]
    fn qemu_q35_dmar() {
        let d = parse(QEMU).unwrap();
        assert_eq!(d.host_address_width, 0x2F, "48-bit");
        assert_eq!(d.flags & 1, 1, "interrupt remapping");
        assert_eq!(d.drhds.len(), 1);
        let u = &d.drhds[0];
        assert!(!u.include_pci_all, "QEMU lists explicit scopes");
        assert_eq!((u.segment, u.base), (0, 0xFED9_0000));
        assert_eq!(u.size, 0, "QEMU leaves Size 0: one 4 KiB page of registers");
        assert_eq!(u.scopes[0].kind, ScopeKind::IoApic);
        let edu = u.scopes.iter().find(|s| s.path == [(1, 0)]).expect("edu at 00:01.0 in the capture");
        assert_eq!(edu.kind, ScopeKind::Endpoint);
        assert_eq!(edu.resolve(|_, _, _| None), Some((0, 1, 0)));
        assert!(d.rmrrs.is_empty() && d.atsrs.is_empty());
        let d2 = parse(QEMU_IOTLB).unwrap();
        assert_eq!(d2.atsrs.len(), 1);
        assert!(d2.atsrs[0].all_ports);
    }

    fn scope(kind: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, 0, bus];
        for &(d, f) in path {
            s.extend([d, f]);
        }
        s
    }

    fn structure(kind: u16, fixed: &[u8], tail: &[u8]) -> Vec<u8> {
        let len = 4 + fixed.len() + tail.len();
        let mut s = kind.to_le_bytes().to_vec();
        s.extend((len as u16).to_le_bytes());
        s.extend(fixed);
        s.extend(tail);
        s
    }

    /// A hand-made table with every structure type QEMU never emits.
    fn full() -> Vec<u8> {
        let mut body = vec![38, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut drhd = vec![1u8, 0, 0, 0];
        drhd.extend(0xFED9_1000u64.to_le_bytes());
        body.extend(structure(0, &drhd, &[]));
        // Size 3 (eight pages) with the reserved bits 7:4 set, which are ignored.
        let mut drhd2 = vec![0u8, 0xF3, 0, 0];
        drhd2.extend(0xFED9_0000u64.to_le_bytes());
        let mut scopes = scope(2, 0, &[(0x1C, 0)]);
        scopes.extend(scope(1, 0, &[(0x1C, 0), (0, 0)]));
        body.extend(structure(0, &drhd2, &scopes));
        let mut rmrr = vec![0u8, 0, 0, 0];
        rmrr.extend(0x7B80_0000u64.to_le_bytes());
        rmrr.extend(0x7FFF_FFFFu64.to_le_bytes());
        body.extend(structure(1, &rmrr, &scope(1, 0, &[(0x14, 0)])));
        body.extend(structure(2, &[0, 0, 0, 0], &scope(2, 0, &[(0x1C, 0)])));
        let mut rhsa = vec![0u8; 4];
        rhsa.extend(0xFED9_0000u64.to_le_bytes());
        rhsa.extend(3u32.to_le_bytes());
        body.extend(structure(3, &rhsa, &[]));
        body.extend(structure(4, &[0, 0, 0, 7], b"\\_SB.PCI0.UAR0\0"));
        body.extend(structure(5, &[1, 0, 0, 0], &scope(1, 0, &[(2, 0)])));
        body.extend(structure(99, &[0; 4], &[]));
        table(b"DMAR", 1, &body)
    }

    #[test]
    fn every_structure_type() {
        let d = parse(&full()).unwrap();
        assert_eq!(d.drhds.len(), 2);
        assert!(d.drhds[0].include_pci_all);
        assert_eq!((d.drhds[0].size, d.drhds[1].size), (0, 3));
        let behind = &d.drhds[1].scopes[1];
        assert_eq!(behind.resolve(|bus, dev, func| ((bus, dev, func) == (0, 0x1C, 0)).then_some(5)), Some((5, 0, 0)));
        assert_eq!(behind.resolve(|_, _, _| None), None, "unknown bridge");
        assert_eq!(d.drhds[1].scopes[0].kind, ScopeKind::Bridge);
        assert_eq!((d.rmrrs[0].base, d.rmrrs[0].limit), (0x7B80_0000, 0x7FFF_FFFF));
        assert_eq!(d.atsrs.len(), 1);
        assert_eq!(d.rhsas[0], Rhsa { base: 0xFED9_0000, proximity_domain: 3 });
        assert_eq!(d.andds[0], Andd { device_number: 7, name: "\\_SB.PCI0.UAR0".into() });
        assert!(d.satcs[0].atc_required);
        assert_eq!(d.skipped, vec![99]);
    }

    #[test]
    fn malformed_variants() {
        let good = full();
        let mut zero_len = good.clone();
        zero_len[48 + 2] = 0;
        zero_len[48 + 3] = 0;
        crate::fix_checksum(&mut zero_len);
        assert_eq!(parse(&zero_len), Err(TableError::BadLength { offset: 48, length: 0 }));
        let mut past_end = good.clone();
        past_end[48 + 2] = 0xFF;
        crate::fix_checksum(&mut past_end);
        assert!(matches!(parse(&past_end), Err(TableError::BadLength { offset: 48, .. })));
        let mut bad_sum = good.clone();
        bad_sum[40] ^= 0xFF;
        assert!(matches!(parse(&bad_sum), Err(TableError::BadChecksum(_))));
        assert!(matches!(parse(&good[..60]), Err(TableError::Truncated { .. })));
    }

    #[test]
    fn mutations_never_panic() {
        for base in [QEMU.to_vec(), full()] {
            mutate(&base, 20_000, |d| {
                let _ = parse(d);
            });
        }
    }
}
