//! The I/O Virtualization Reporting Structure (AMD IOMMU spec rev 3.08, §5.2).

use crate::{check_header, structures, Bytes, TableError};
use alloc::vec::Vec;

/// A device entry of an IVHD block, after range expansion (§5.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRange {
    /// First DeviceID (requester ID).
    pub first: u16,
    /// Last DeviceID (inclusive).
    pub last: u16,
    /// DTE setting byte (INITPass, EIntPass, NMIPass, SysMgt, Lint0/1Pass).
    pub dte_setting: u8,
    /// The DeviceID the IOMMU sees for these devices instead of their own.
    pub alias: Option<u16>,
}

/// A special device (I/O APIC or HPET) and the DeviceID it uses (type 48h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Special {
    /// 1 = I/O APIC, 2 = HPET.
    pub variety: u8,
    /// I/O APIC ID or HPET number.
    pub handle: u8,
    /// DeviceID used in interrupt requests.
    pub device_id: u16,
}

/// An I/O virtualization hardware definition (IVHD types 10h, 11h, 40h).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ivhd {
    /// Block type (0x10, 0x11, 0x40).
    pub block_type: u8,
    /// Flags.
    pub flags: u8,
    /// DeviceID of the IOMMU's own PCI function.
    pub device_id: u16,
    /// Offset of the IOMMU capability in its config space.
    pub capability_offset: u16,
    /// MMIO register base.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// IOMMU info (MSI number, unit ID).
    pub info: u16,
    /// Type 10h: IOMMU feature reporting; 11h/40h: IOMMU attributes.
    pub features: u32,
    /// Extended feature register image (types 11h and 40h).
    pub efr: Option<u64>,
    /// Devices this IOMMU translates.
    pub devices: Vec<DeviceRange>,
    /// `select all` entries seen (the unit covers every DeviceID).
    pub all: Option<u8>,
    /// Special devices.
    pub specials: Vec<Special>,
}

/// An I/O virtualization memory definition (IVMD, §5.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ivmd {
    /// Block type: 20h all devices, 21h one device, 22h a range.
    pub block_type: u8,
    /// Flags: bit 0 Unity, bit 1 IR, bit 2 IW, bit 3 exclusion range.
    pub flags: u8,
    /// First DeviceID.
    pub first: u16,
    /// Last DeviceID (inclusive; `first` for type 21h, 0xFFFF for 20h).
    pub last: u16,
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// A parsed IVRS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ivrs {
    /// IVinfo (EFRSup bit 0, GVA size, PA size bits 14:8, VA size bits 21:15 ...).
    pub ivinfo: u32,
    /// IVHD blocks.
    pub ivhds: Vec<Ivhd>,
    /// IVMD blocks.
    pub ivmds: Vec<Ivmd>,
    /// Block types skipped as unknown.
    pub skipped: Vec<u8>,
}

impl Ivrs {
    /// One IVHD per IOMMU: firmware repeats each unit in 10h and 11h/40h
    /// blocks; the highest type the parser knows wins.
    pub fn units(&self) -> Vec<&Ivhd> {
        let mut out: Vec<&Ivhd> = Vec::new();
        for h in &self.ivhds {
            match out.iter_mut().find(|u| u.base == h.base && u.segment == h.segment) {
                Some(u) if u.block_type < h.block_type => *u = h,
                Some(_) => {}
                None => out.push(h),
            }
        }
        out
    }
}

fn device_entries(t: &[u8], start: usize, end: usize, h: &mut Ivhd) -> Result<(), TableError> {
    let b = Bytes(&t[..end]);
    let mut o = start;
    let mut range_start: Option<(u16, u8, Option<u16>)> = None;
    while o < end {
        let kind = b.u8(o).ok_or(TableError::Truncated { needed: o + 1, available: end })?;
        let len = match kind {
            0..=63 => 4,
            64..=127 => 8,
            // Variable length (type F0h ACPI_HID): 22 bytes plus the UID length in byte 21.
            _ => 22 + usize::from(b.u8(o + 21).unwrap_or(0)),
        };
        if o + len > end {
            return Err(TableError::BadLength { offset: o, length: len });
        }
        let id = b.u16(o + 1).unwrap_or(0);
        let dte = b.u8(o + 3).unwrap_or(0);
        match kind {
            0 => {}
            1 => h.all = Some(dte),
            2 => h.devices.push(DeviceRange { first: id, last: id, dte_setting: dte, alias: None }),
            3 => range_start = Some((id, dte, None)),
            4 => match range_start.take() {
                Some((first, dte, alias)) if first <= id => {
                    h.devices.push(DeviceRange { first, last: id, dte_setting: dte, alias })
                }
                _ => return Err(TableError::BadReference { offset: o }),
            },
            66 => h.devices.push(DeviceRange { first: id, last: id, dte_setting: dte, alias: b.u16(o + 5) }),
            67 => range_start = Some((id, dte, b.u16(o + 5))),
            70 => h.devices.push(DeviceRange { first: id, last: id, dte_setting: dte, alias: None }),
            71 => range_start = Some((id, dte, None)),
            72 => h.specials.push(Special {
                variety: b.u8(o + 7).unwrap_or(0),
                handle: b.u8(o + 4).unwrap_or(0),
                device_id: b.u16(o + 5).unwrap_or(0),
            }),
            other => log::warn!("ivrs: skipping device entry type {other:#x} at {o:#x}"),
        }
        o += len;
    }
    if range_start.is_some() {
        return Err(TableError::BadReference { offset: end });
    }
    Ok(())
}

/// Parses an IVRS table image.
pub fn parse(data: &[u8]) -> Result<Ivrs, TableError> {
    let t = check_header(data, b"IVRS", 48)?;
    let b = Bytes(t);
    let mut v = Ivrs { ivinfo: b.u32(36).unwrap_or(0), ..Ivrs::default() };
    for s in structures(t, 48, 4, |b, o| b.u16(o + 2).map(usize::from)) {
        let (o, len) = s?;
        let short = TableError::BadLength { offset: o, length: len };
        match t[o] {
            kind @ (0x10 | 0x11 | 0x40) => {
                let entries = if kind == 0x10 { 24 } else { 40 };
                if len < entries {
                    return Err(short);
                }
                let mut h = Ivhd {
                    block_type: kind,
                    flags: t[o + 1],
                    device_id: b.u16(o + 4).ok_or(short)?,
                    capability_offset: b.u16(o + 6).ok_or(short)?,
                    base: b.u64(o + 8).ok_or(short)?,
                    segment: b.u16(o + 16).ok_or(short)?,
                    info: b.u16(o + 18).ok_or(short)?,
                    features: b.u32(o + 20).ok_or(short)?,
                    efr: (kind != 0x10).then(|| b.u64(o + 24)).flatten(),
                    devices: Vec::new(),
                    all: None,
                    specials: Vec::new(),
                };
                device_entries(t, o + entries, o + len, &mut h)?;
                v.ivhds.push(h);
            }
            kind @ (0x20..=0x22) => {
                if len < 32 {
                    return Err(short);
                }
                let id = b.u16(o + 4).ok_or(short)?;
                let aux = b.u16(o + 6).ok_or(short)?;
                let (first, last) = match kind {
                    0x20 => (0, 0xFFFF),
                    0x21 => (id, id),
                    _ => (id, aux),
                };
                if first > last {
                    return Err(TableError::BadReference { offset: o });
                }
                v.ivmds.push(Ivmd {
                    block_type: kind,
                    flags: t[o + 1],
                    first,
                    last,
                    start: b.u64(o + 16).ok_or(short)?,
                    length: b.u64(o + 24).ok_or(short)?,
                });
            }
            other => {
                log::warn!("ivrs: skipping unknown block type {other:#x} at {o:#x}");
                v.skipped.push(other);
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mutate, table};

    const QEMU: &[u8] = include_bytes!("../tests/data/amdvi-IVRS.bin");

    #[test]
    fn qemu_q35_ivrs() {
        let v = parse(QEMU).unwrap();
        assert_eq!(v.ivinfo & 1, 1, "EFRSup");
        assert_eq!(v.ivhds.iter().map(|h| h.block_type).collect::<Vec<_>>(), vec![0x10, 0x11]);
        let units = v.units();
        assert_eq!(units.len(), 1, "10h and 11h describe one IOMMU");
        let u = units[0];
        assert_eq!((u.block_type, u.base, u.segment), (0x11, 0xFED8_0000, 0));
        assert!(u.efr.is_some());
        assert!(u.devices.iter().any(|d| d.first == 0x0008 && d.last == 0x0008), "edu at 00:01.0 selected");
        assert!(u.specials.iter().any(|s| s.variety == 1), "the I/O APIC");
    }

    fn ivhd40(entries: &[u8]) -> Vec<u8> {
        let mut h = vec![0x40u8, 0];
        h.extend(((40 + entries.len()) as u16).to_le_bytes());
        h.extend([0x10, 0, 0x40, 0]);
        h.extend(0xFED8_0000u64.to_le_bytes());
        h.extend([0u8; 4 + 4]);
        h.extend(0x29D3u64.to_le_bytes());
        h.extend([0u8; 8]);
        h.extend(entries);
        h
    }

    #[test]
    fn ranges_aliases_specials_and_ivmd() {
        let mut entries = vec![1, 0, 0, 0xD7]; // select all
        entries.extend([3, 0x00, 0x01, 0, 4, 0xFF, 0x01, 0]); // range 0x100..=0x1FF
        entries.extend([67, 0x00, 0x02, 0, 0, 0x18, 0x00, 0, 4, 0x07, 0x02, 0]); // alias range 0x200..=0x207 → 0x18
        entries.extend([72, 0, 0, 0xD7, 0x21, 0xA0, 0x00, 2]); // HPET 0x21 as 00:14.0
        let mut ivmd = vec![0x21u8, 0x09];
        ivmd.extend(32u16.to_le_bytes());
        ivmd.extend(0x0010u16.to_le_bytes());
        ivmd.extend([0u8; 10]);
        ivmd.extend(0xC000_0000u64.to_le_bytes());
        ivmd.extend(0x10_0000u64.to_le_bytes());
        let mut body = 0x0000_2801u32.to_le_bytes().to_vec();
        body.extend([0u8; 8]);
        body.extend(ivhd40(&entries));
        body.extend(ivmd);
        body.extend([0x99, 0, 4, 0]);
        let v = parse(&table(b"IVRS", 2, &body)).unwrap();
        let h = &v.ivhds[0];
        assert_eq!(h.block_type, 0x40);
        assert_eq!(h.all, Some(0xD7));
        assert_eq!(h.devices[0], DeviceRange { first: 0x100, last: 0x1FF, dte_setting: 0, alias: None });
        assert_eq!(h.devices[1].alias, Some(0x0018));
        assert_eq!(h.specials[0], Special { variety: 2, handle: 0x21, device_id: 0x00A0 });
        assert_eq!(
            v.ivmds[0],
            Ivmd { block_type: 0x21, flags: 9, first: 0x10, last: 0x10, start: 0xC000_0000, length: 0x10_0000 }
        );
        assert_eq!(v.skipped, vec![0x99]);
        // A range start without its end is malformed.
        let mut body2 = 0u32.to_le_bytes().to_vec();
        body2.extend([0u8; 8]);
        body2.extend(ivhd40(&[3, 0, 1, 0]));
        assert!(matches!(parse(&table(b"IVRS", 2, &body2)), Err(TableError::BadReference { .. })));
    }

    #[test]
    fn mutations_never_panic() {
        mutate(QEMU, 20_000, |d| {
            let _ = parse(d);
        });
    }
}
