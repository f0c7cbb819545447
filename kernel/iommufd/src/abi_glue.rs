//! The hardware-specific door's ABI structs (`abi::iommufd`) turned into this
//! crate's requests, with every rule the ABI states checked: shared by the
//! kernel's syscall and the host-side selftest door, so both refuse the same
//! inputs with the same errors.

use crate::error::nomem;
use crate::hwpt::{hwpt_flags, HwptAlloc, HwptData, Stage1Invalidation};
use crate::object::{FaultRecord, Iommufd, Units};
use crate::pages::{Memory, PAGE};
use abi::iommufd as a;
use abi::Errno;
use alloc::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

/// Decodes typed data passed by length (not by a size field): shorter input
/// leaves the rest zero, longer input must be zero past what this ABI knows
/// (`E2BIG`).
pub fn decode_data<T: FromBytes + IntoBytes>(bytes: &[u8]) -> Result<T, Errno> {
    iommu::user_data::read_struct(bytes).map_err(|_| Errno::E2BIG)
}

/// The request an [`a::HwptAlloc`] (already decoded by the ABI's size and
/// flag rules) makes, with `data` the `data_len` bytes at its `data_uptr`
/// (`ENOMEM`: no room to copy driver data).
pub fn hwpt_alloc(s: &a::HwptAlloc, data: &[u8]) -> Result<HwptAlloc, Errno> {
    if s.data_len > a::MAX_STRUCT || data.len() != s.data_len as usize {
        return Err(Errno::E2BIG);
    }
    let data = match s.data_type {
        a::hwpt_data::NONE if data.is_empty() => HwptData::Default,
        a::hwpt_data::NONE => return Err(Errno::EINVAL),
        a::hwpt_data::VTD_S1 => {
            let s1: a::HwptVtdS1 = decode_data(data)?;
            let levels = match s1.addr_width {
                48 => 4,
                57 => 5,
                _ => return Err(Errno::EINVAL),
            };
            if s1.flags != 0 || s1.reserved != 0 || !s1.pgtbl_addr.is_multiple_of(PAGE) {
                return Err(Errno::EINVAL);
            }
            HwptData::Stage1X86 { root: s1.pgtbl_addr, levels }
        }
        // Driver attributes: the unit decodes and checks them.
        a::hwpt_data::VTD_ATTRS | a::hwpt_data::SMMUV3_ATTRS | a::hwpt_data::AMDVI_ATTRS => {
            HwptData::Driver { data_type: s.data_type, bytes: fallible::try_to_vec(data).map_err(nomem)? }
        }
        a::hwpt_data::SMMUV3_STE => {
            HwptData::DriverNested { data_type: s.data_type, bytes: fallible::try_to_vec(data).map_err(nomem)? }
        }
        _ => return Err(Errno::EOPNOTSUPP),
    };
    Ok(HwptAlloc {
        dev: s.dev_id,
        parent: s.pt_id,
        flags: if s.flags & a::HWPT_ALLOC_NEST_PARENT != 0 { hwpt_flags::NEST_PARENT } else { 0 },
        data,
        fault_queue: (s.flags & a::HWPT_ALLOC_FAULT_ID_VALID != 0).then_some(s.fault_id),
    })
}

/// Largest batch of invalidation entries one call takes.
pub const MAX_INVALIDATIONS: u32 = 4096;

/// Checks an [`a::HwptInvalidate`]'s header (`EINVAL` / `E2BIG`) before its
/// entries are read: the entry bytes to copy.
pub fn invalidation_bytes(s: &a::HwptInvalidate) -> Result<usize, Errno> {
    let known = matches!(s.data_type, a::hwpt_data::VTD_S1 | a::hwpt_data::SMMUV3_STE);
    if !known || s.entry_len == 0 || s.entry_len > a::MAX_STRUCT {
        return Err(Errno::EINVAL);
    }
    if s.entry_num > MAX_INVALIDATIONS {
        return Err(Errno::E2BIG);
    }
    Ok(s.entry_len as usize * s.entry_num as usize)
}

/// The entries in `bytes` (`entry_len` each) up to the first malformed one,
/// and that one's error: the batch stops there (`ENOMEM`, no entry: no room
/// for the list).
pub fn invalidations(bytes: &[u8], entry_len: usize) -> (Vec<Stage1Invalidation>, Option<Errno>) {
    let mut out = Vec::new();
    if entry_len == 0 {
        return (out, Some(Errno::EINVAL));
    }
    // Room for every entry at once: the pushes below never allocate.
    if out.try_reserve_exact(bytes.len() / entry_len).is_err() {
        return (out, Some(Errno::ENOMEM));
    }
    for chunk in bytes.chunks_exact(entry_len) {
        match decode_data::<a::HwptVtdS1Invalidation>(chunk) {
            Ok(e) if e.reserved == 0 => out.push(Stage1Invalidation { addr: e.addr, npages: e.npages, flags: e.flags }),
            Ok(_) => return (out, Some(Errno::EINVAL)),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Runs a checked batch of invalidation entries (`bytes`, `entry_len` each,
/// of `data_type`) on `hwpt`: VT-d stage-1 entries re-sync a shadowed child
/// (decoded here; the first malformed one stops the batch with its error),
/// anything else goes to the unit of a hardware-nested child, which checks
/// each entry itself. Returns how many were handled and why the batch stopped.
pub fn invalidate(
    fd: &mut Iommufd,
    units: Units<'_>,
    mem: &mut dyn Memory,
    hwpt: u32,
    data_type: u32,
    bytes: &[u8],
    entry_len: usize,
) -> (u32, Result<(), Errno>) {
    if data_type != a::hwpt_data::VTD_S1 {
        return fd.hwpt_invalidate_driver(units, hwpt, data_type, bytes, entry_len);
    }
    let (entries, bad) = invalidations(bytes, entry_len);
    if entries.is_empty() && bad == Some(Errno::ENOMEM) {
        return (0, Err(Errno::ENOMEM));
    }
    let (handled, r) = fd.hwpt_invalidate(units, mem, hwpt, &entries);
    (handled, r.and(bad.map_or(Ok(()), Err)))
}

/// Checks a [`a::FaultQueueAlloc`]'s capacity (1–4096 records).
pub fn fault_queue_capacity(s: &a::FaultQueueAlloc) -> Result<usize, Errno> {
    if (1..=4096).contains(&s.capacity) {
        Ok(s.capacity as usize)
    } else {
        Err(Errno::EINVAL)
    }
}

/// A fault record as the ABI carries it.
pub fn fault_record(r: &FaultRecord) -> a::FaultRecord {
    a::FaultRecord {
        dev_id: r.dev_id,
        hwpt_id: r.hwpt_id,
        address: r.address,
        access: match r.access {
            iommu::Access::Read => a::fault_access::READ,
            iommu::Access::Write => a::fault_access::WRITE,
            iommu::Access::Unknown => a::fault_access::UNKNOWN,
            iommu::Access::Interrupt => a::fault_access::INTERRUPT,
        },
        reason: r.reason,
    }
}

/// `HwInfo.out_hwpt_alloc_types` for a unit of `kind`: kernel-managed HWPTs
/// and VT-d stage-1 children (shadowed where the unit cannot nest) on every
/// unit, plus the unit's own driver attributes and (SMMUv3) hardware nesting.
pub fn hwpt_alloc_types(kind: iommu::UnitKind) -> u64 {
    let generic = 1 << a::hwpt_data::NONE | 1 << a::hwpt_data::VTD_S1;
    generic
        | match kind {
            iommu::UnitKind::Vtd => 1 << a::hwpt_data::VTD_ATTRS,
            iommu::UnitKind::AmdVi => 1 << a::hwpt_data::AMDVI_ATTRS,
            iommu::UnitKind::Smmuv3 => 1 << a::hwpt_data::SMMUV3_ATTRS | 1 << a::hwpt_data::SMMUV3_STE,
            iommu::UnitKind::VirtioIommu | iommu::UnitKind::Mock | iommu::UnitKind::NoIommu => 0,
        }
}

/// `HwInfo.out_invalidate_types` for a unit of `kind`: VT-d stage-1 entries
/// everywhere, SMMUv3 commands on an SMMUv3.
pub fn invalidate_types(kind: iommu::UnitKind) -> u64 {
    1 << a::hwpt_data::VTD_S1 | if kind == iommu::UnitKind::Smmuv3 { 1 << a::hwpt_data::SMMUV3_STE } else { 0 }
}

/// The bytes of a typed hardware-info struct, held without a heap
/// allocation (every `abi::iommufd::HwInfo*` fits); reads as a `[u8]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypedInfo {
    bytes: [u8; TypedInfo::MAX],
    len: usize,
}

impl TypedInfo {
    /// Room for the largest typed struct.
    pub const MAX: usize = 64;

    fn of(b: &[u8]) -> Self {
        let mut t = TypedInfo { bytes: [0; Self::MAX], len: b.len().min(Self::MAX) };
        t.bytes[..t.len].copy_from_slice(&b[..t.len]);
        t
    }
}

impl core::ops::Deref for TypedInfo {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The unit's capabilities as the typed struct of its kind (`abi::iommufd::HwInfo*`).
pub fn typed_hw_info(info: &iommu::Info) -> (u32, TypedInfo) {
    let reg = |name: &str| info.raw.iter().find(|r| r.0 == name).map_or(0, |r| r.1);
    match info.kind {
        iommu::UnitKind::Vtd => {
            (a::hw_kind::VTD, TypedInfo::of(a::HwInfoVtd { cap_reg: reg("CAP"), ecap_reg: reg("ECAP") }.as_bytes()))
        }
        iommu::UnitKind::AmdVi => {
            (a::hw_kind::AMDVI, TypedInfo::of(a::HwInfoAmdvi { efr: reg("EFR"), efr2: reg("EFR2") }.as_bytes()))
        }
        iommu::UnitKind::Smmuv3 => {
            let idr = ["IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5"].map(|n| reg(n) as u32);
            let t = a::HwInfoSmmuv3 { idr, iidr: reg("IIDR") as u32, aidr: reg("AIDR") as u32 };
            (a::hw_kind::SMMUV3, TypedInfo::of(t.as_bytes()))
        }
        iommu::UnitKind::VirtioIommu => {
            let t = a::HwInfoVirtio {
                features: reg("FEATURES"),
                page_size_mask: reg("PAGE_SIZE_MASK"),
                input_start: reg("INPUT_START"),
                input_end: reg("INPUT_END"),
                domain_start: reg("DOMAIN_START") as u32,
                domain_end: reg("DOMAIN_END") as u32,
            };
            (a::hw_kind::VIRTIO_IOMMU, TypedInfo::of(t.as_bytes()))
        }
        iommu::UnitKind::Mock => (a::hw_kind::MOCK, TypedInfo::of(&[])),
        iommu::UnitKind::NoIommu => (a::hw_kind::NOIOMMU, TypedInfo::of(&[])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(data_type: u32, data: &[u8], flags: u32) -> a::HwptAlloc {
        a::HwptAlloc {
            size: 40,
            flags,
            dev_id: 1,
            pt_id: 2,
            data_type,
            data_len: data.len() as u32,
            ..Default::default()
        }
    }

    #[test]
    fn typed_info_follows_the_raw_registers() {
        let info = |kind, raw: Vec<(&'static str, u64)>| iommu::Info {
            kind,
            raw,
            page_sizes: 0x1000,
            aperture: (0, u64::MAX),
            native_identity: true,
        };
        let (t, b) = typed_hw_info(&info(iommu::UnitKind::Vtd, alloc::vec![("CAP", 7), ("ECAP", 9)]));
        assert_eq!((t, b.to_vec()), (a::hw_kind::VTD, a::HwInfoVtd { cap_reg: 7, ecap_reg: 9 }.as_bytes().to_vec()));
        let raw = alloc::vec![("IDR0", 1), ("IDR5", 6), ("IIDR", 0x43b), ("AIDR", 2)];
        let (t, b) = typed_hw_info(&info(iommu::UnitKind::Smmuv3, raw));
        let want = a::HwInfoSmmuv3 { idr: [1, 0, 0, 0, 0, 6], iidr: 0x43b, aidr: 2 };
        assert_eq!((t, b.to_vec()), (a::hw_kind::SMMUV3, want.as_bytes().to_vec()));
        let (t, b) =
            typed_hw_info(&info(iommu::UnitKind::VirtioIommu, alloc::vec![("FEATURES", 3), ("INPUT_END", 99)]));
        assert_eq!(t, a::hw_kind::VIRTIO_IOMMU);
        assert_eq!(b.len(), core::mem::size_of::<a::HwInfoVirtio>());
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 99);
        assert_eq!(typed_hw_info(&info(iommu::UnitKind::AmdVi, alloc::vec![("EFR", 5)])).1.len(), 16);
        assert!(typed_hw_info(&info(iommu::UnitKind::Mock, Vec::new())).1.is_empty());
    }

    #[test]
    fn hwpt_alloc_data_rules() {
        let s1 = a::HwptVtdS1 { flags: 0, pgtbl_addr: 0x4000, addr_width: 57, reserved: 0 };
        let ok = hwpt_alloc(&alloc(a::hwpt_data::VTD_S1, s1.as_bytes(), a::HWPT_ALLOC_FAULT_ID_VALID), s1.as_bytes());
        let ok = ok.unwrap();
        assert!(matches!(ok.data, HwptData::Stage1X86 { root: 0x4000, levels: 5 }));
        assert_eq!((ok.dev, ok.parent, ok.flags, ok.fault_queue), (1, 2, 0, Some(0)));
        let np = hwpt_alloc(&alloc(a::hwpt_data::NONE, &[], a::HWPT_ALLOC_NEST_PARENT), &[]).unwrap();
        assert!(
            matches!(np.data, HwptData::Default) && np.flags == hwpt_flags::NEST_PARENT && np.fault_queue.is_none()
        );
        let bad = |s: a::HwptVtdS1| hwpt_alloc(&alloc(a::hwpt_data::VTD_S1, s.as_bytes(), 0), s.as_bytes()).err();
        assert_eq!(bad(a::HwptVtdS1 { addr_width: 39, ..s1 }), Some(Errno::EINVAL));
        assert_eq!(bad(a::HwptVtdS1 { flags: 1, ..s1 }), Some(Errno::EINVAL));
        assert_eq!(bad(a::HwptVtdS1 { reserved: 1, ..s1 }), Some(Errno::EINVAL));
        assert_eq!(bad(a::HwptVtdS1 { pgtbl_addr: 0x4008, ..s1 }), Some(Errno::EINVAL));
        // A short struct: the address width is missing (0) → EINVAL; a longer one with a non-zero tail → E2BIG.
        let short = &s1.as_bytes()[..16];
        assert_eq!(hwpt_alloc(&alloc(a::hwpt_data::VTD_S1, short, 0), short).err(), Some(Errno::EINVAL));
        let mut long = s1.as_bytes().to_vec();
        long.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(hwpt_alloc(&alloc(a::hwpt_data::VTD_S1, &long, 0), &long).is_ok());
        long[30] = 1;
        assert_eq!(hwpt_alloc(&alloc(a::hwpt_data::VTD_S1, &long, 0), &long).err(), Some(Errno::E2BIG));
        assert_eq!(hwpt_alloc(&alloc(a::hwpt_data::NONE, &[0; 8], 0), &[0; 8]).err(), Some(Errno::EINVAL));
        assert_eq!(hwpt_alloc(&alloc(77, &[0; 8], 0), &[0; 8]).err(), Some(Errno::EOPNOTSUPP));
        // Driver types pass their bytes through unchanged.
        let attrs = [48, 0, 0, 0, 1, 0, 0, 0];
        let d = hwpt_alloc(&alloc(a::hwpt_data::VTD_ATTRS, &attrs, 0), &attrs).unwrap();
        assert_eq!(d.data, HwptData::Driver { data_type: a::hwpt_data::VTD_ATTRS, bytes: attrs.to_vec() });
        let ste = [1u8; 16];
        let d = hwpt_alloc(&alloc(a::hwpt_data::SMMUV3_STE, &ste, 0), &ste).unwrap();
        assert_eq!(d.data, HwptData::DriverNested { data_type: a::hwpt_data::SMMUV3_STE, bytes: ste.to_vec() });
        assert_eq!(hwpt_alloc_types(iommu::UnitKind::VirtioIommu), 0b11);
        assert_eq!(hwpt_alloc_types(iommu::UnitKind::Smmuv3), 0b101011);
        assert_eq!(invalidate_types(iommu::UnitKind::Smmuv3), 0b100010);
        assert_eq!(invalidate_types(iommu::UnitKind::Vtd), 0b10);
        let huge = [0u8; 300];
        assert_eq!(hwpt_alloc(&alloc(a::hwpt_data::VTD_S1, &huge, 0), &huge).err(), Some(Errno::E2BIG));
    }

    #[test]
    fn invalidation_batches_stop_at_the_first_bad_entry() {
        let e = |addr: u64, reserved: u32| a::HwptVtdS1Invalidation { addr, npages: 1, flags: 0, reserved };
        let bytes: Vec<u8> = [e(0, 0), e(0x1000, 1), e(0x2000, 0)].iter().flat_map(|x| x.as_bytes().to_vec()).collect();
        let (ok, err) = invalidations(&bytes, 24);
        assert_eq!((ok.len(), err), (1, Some(Errno::EINVAL)));
        // 16-byte entries (no flags word) are fine; a 32-byte entry with a non-zero tail is E2BIG.
        let (ok, err) = invalidations(&e(0x3000, 0).as_bytes()[..16], 16);
        assert_eq!((ok.len(), ok[0].addr, err), (1, 0x3000, None));
        let mut long = e(0, 0).as_bytes().to_vec();
        long.extend([0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(invalidations(&long, 32).1, Some(Errno::E2BIG));
        let header = |data_type, entry_len, entry_num| a::HwptInvalidate {
            size: 32,
            data_type,
            entry_len,
            entry_num,
            ..Default::default()
        };
        assert_eq!(invalidation_bytes(&header(a::hwpt_data::VTD_S1, 24, 3)), Ok(72));
        assert_eq!(invalidation_bytes(&header(9, 24, 3)), Err(Errno::EINVAL));
        assert_eq!(invalidation_bytes(&header(a::hwpt_data::SMMUV3_STE, 16, 2)), Ok(32));
        assert_eq!(invalidation_bytes(&header(a::hwpt_data::VTD_S1, 0, 3)), Err(Errno::EINVAL));
        assert_eq!(invalidation_bytes(&header(a::hwpt_data::VTD_S1, 24, 5000)), Err(Errno::E2BIG));
    }
}
