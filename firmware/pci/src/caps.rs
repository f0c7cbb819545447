//! Capability lists: the legacy list (PCI 3.0 §6.7) and the PCIe extended list
//! (PCIe 4.0 §7.6), with the fields drivers need from MSI, MSI-X and PCIe.

use crate::{reg, Bdf, ConfigAccess, PciError};
use alloc::vec::Vec;

/// Legacy capability IDs.
pub mod id {
    /// Power management.
    pub const PM: u8 = 0x01;
    /// Vital product data.
    pub const VPD: u8 = 0x03;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// Vendor specific (virtio uses these).
    pub const VENDOR: u8 = 0x09;
    /// PCI Express.
    pub const PCIE: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability IDs.
pub mod ext_id {
    /// Access Control Services.
    pub const ACS: u16 = 0x000D;
    /// Address Translation Services.
    pub const ATS: u16 = 0x000F;
    /// Page Request Interface.
    pub const PRI: u16 = 0x0013;
    /// Process Address Space ID.
    pub const PASID: u16 = 0x001B;
}

/// MSI capability fields (PCI 3.0 §6.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    /// Offset of the capability.
    pub offset: u16,
    /// 64-bit message address supported.
    pub is_64bit: bool,
    /// Per-vector masking supported.
    pub per_vector_mask: bool,
    /// Vectors the function can request (1, 2, 4 ... 32).
    pub vectors: u8,
}

/// MSI-X capability fields (PCI 3.0 §6.8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiX {
    /// Offset of the capability.
    pub offset: u16,
    /// Table entries.
    pub table_size: u16,
    /// BAR holding the table, and the offset in it.
    pub table: (u8, u32),
    /// BAR holding the pending-bit array, and the offset in it.
    pub pba: (u8, u32),
}

/// What the capability lists hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Legacy capabilities as (id, offset).
    pub legacy: Vec<(u8, u16)>,
    /// Extended capabilities as (id, version, offset).
    pub extended: Vec<(u16, u8, u16)>,
    /// MSI, if present.
    pub msi: Option<Msi>,
    /// MSI-X, if present.
    pub msix: Option<MsiX>,
    /// PCIe device/port type (PCIe 4.0 §7.5.3.2), if a PCIe function.
    pub pcie_port_type: Option<u8>,
    /// Vendor-specific capabilities as (offset, length byte): byte 2 of such a
    /// structure gives its length in bytes, header included (PCI 3.0 Appendix H).
    pub vendor_lengths: Vec<(u16, u8)>,
    /// The lists could not be walked (a loop, or a pointer into the header), so
    /// what the function really holds in 0x40..0x1000 is unknown. Enumeration
    /// sets this and leaves the other fields empty; [`crate::policy`] then
    /// treats all of 0x40..0x100 as capability structures.
    pub malformed: bool,
}

impl Capabilities {
    /// Offset of the first legacy capability with `id`.
    pub fn find(&self, id: u8) -> Option<u16> {
        self.legacy.iter().find(|c| c.0 == id).map(|c| c.1)
    }

    /// Offset of the extended capability with `id`.
    pub fn find_extended(&self, id: u16) -> Option<u16> {
        self.extended.iter().find(|c| c.0 == id).map(|c| c.2)
    }

    /// Short names of what is present, for logs.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let legacy = [(id::MSI, "msi"), (id::MSIX, "msix"), (id::PCIE, "pcie"), (id::PM, "pm"), (id::VENDOR, "vendor")];
        for (i, n) in legacy {
            if self.find(i).is_some() {
                v.push(n);
            }
        }
        let ext = [(ext_id::ATS, "ats"), (ext_id::PASID, "pasid"), (ext_id::PRI, "pri"), (ext_id::ACS, "acs")];
        for (i, n) in ext {
            if self.find_extended(i).is_some() {
                v.push(n);
            }
        }
        v
    }
}

/// Most legacy capabilities that fit in the 192 bytes after the header.
const MAX_LEGACY: usize = 48;
/// Most extended capabilities that fit in 4 KiB - 256 bytes.
const MAX_EXTENDED: usize = (4096 - 256) / 4;

/// Reads both capability lists of `bdf`; a loop or a pointer into the header is an error.
pub fn read(access: &dyn ConfigAccess, bdf: Bdf) -> Result<Capabilities, PciError> {
    let mut caps = Capabilities::default();
    if access.read16(bdf, reg::STATUS) & reg::STATUS_CAP_LIST != 0 {
        let mut ptr = u16::from(access.read8(bdf, reg::CAP_PTR) & 0xFC);
        let mut seen = 0;
        while ptr != 0 {
            if ptr < 0x40 || seen == MAX_LEGACY {
                return Err(PciError::BadCapabilityList(bdf));
            }
            seen += 1;
            let header = access.read16(bdf, ptr);
            let cap_id = header as u8;
            caps.legacy.push((cap_id, ptr));
            match cap_id {
                id::MSI => {
                    let ctrl = access.read16(bdf, ptr + 2);
                    caps.msi = Some(Msi {
                        offset: ptr,
                        is_64bit: ctrl & (1 << 7) != 0,
                        per_vector_mask: ctrl & (1 << 8) != 0,
                        vectors: 1 << ((ctrl >> 1) & 7).min(5),
                    });
                }
                id::MSIX => {
                    let ctrl = access.read16(bdf, ptr + 2);
                    let table = access.read32(bdf, ptr + 4);
                    let pba = access.read32(bdf, ptr + 8);
                    caps.msix = Some(MsiX {
                        offset: ptr,
                        table_size: (ctrl & 0x7FF) + 1,
                        table: ((table & 7) as u8, table & !7),
                        pba: ((pba & 7) as u8, pba & !7),
                    });
                }
                id::PCIE => caps.pcie_port_type = Some(((access.read16(bdf, ptr + 2) >> 4) & 0xF) as u8),
                id::VENDOR => caps.vendor_lengths.push((ptr, access.read8(bdf, ptr + 2))),
                _ => {}
            }
            ptr = (header >> 8) & 0xFC;
        }
    }
    // Extended capabilities exist only on PCIe functions (ECAM reaches them).
    if caps.pcie_port_type.is_some() {
        let mut ptr = 0x100u16;
        let mut seen = 0;
        loop {
            let header = access.read32(bdf, ptr);
            if header == 0 || header == u32::MAX {
                break;
            }
            seen += 1;
            if seen > MAX_EXTENDED {
                return Err(PciError::BadCapabilityList(bdf));
            }
            caps.extended.push((header as u16, ((header >> 16) & 0xF) as u8, ptr));
            let next = ((header >> 20) & 0xFFC) as u16;
            if next == 0 {
                break;
            }
            if next < 0x100 {
                return Err(PciError::BadCapabilityList(bdf));
            }
            ptr = next;
        }
    }
    Ok(caps)
}
