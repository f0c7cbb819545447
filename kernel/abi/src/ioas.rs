//! The IOAS syscall (`Sysno::Iommufd`): `iommufd(op, ptr)` where `ptr` points
//! at the operation's struct. Every struct begins with `size: u32` (bytes the
//! caller provides) and `flags: u32`; the kernel reads `min(size, known)`
//! bytes, refuses non-zero bytes beyond what it knows (`E2BIG`), unknown
//! flags and non-zero reserved fields (`EINVAL`), and writes results back into
//! the `out_` fields. The generic door (every op here but [`Op::GetHwInfo`])
//! works on every IOMMU; hints never fail (../shared/DESIGN.md §2–§3).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Operations of the IOAS syscall. Stable: append only.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`IoasAlloc`].
    IoasAlloc = 1,
    /// [`Destroy`] any object.
    Destroy = 2,
    /// [`IoasIovaRanges`].
    IoasIovaRanges = 3,
    /// [`IoasAllowIovas`].
    IoasAllowIovas = 4,
    /// [`IoasMap`].
    IoasMap = 5,
    /// [`IoasUnmap`].
    IoasUnmap = 6,
    /// [`IoasCopy`].
    IoasCopy = 7,
    /// [`IoasOption`].
    IoasOption = 8,
    /// [`DeviceBind`].
    DeviceBind = 9,
    /// [`DeviceAttach`].
    DeviceAttach = 10,
    /// [`DeviceDetach`].
    DeviceDetach = 11,
    /// [`HwInfo`] (the first piece of the hardware-specific door).
    GetHwInfo = 12,
}

impl Op {
    /// Decodes a raw operation number.
    pub fn from_raw(n: u64) -> Option<Op> {
        use Op::*;
        [
            IoasAlloc,
            Destroy,
            IoasIovaRanges,
            IoasAllowIovas,
            IoasMap,
            IoasUnmap,
            IoasCopy,
            IoasOption,
            DeviceBind,
            DeviceAttach,
            DeviceDetach,
            GetHwInfo,
        ]
        .into_iter()
        .find(|o| *o as u64 == n)
    }
}

/// Largest struct the kernel reads (bigger is `E2BIG`).
pub const MAX_STRUCT: u32 = 256;

/// Creates an IOAS.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasAlloc {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// Out: the new IOAS id.
    pub out_ioas_id: u32,
    /// Zero.
    pub reserved: u32,
}

/// Destroys an object (IOAS, HWPT or device): `EBUSY` while in use.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destroy {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// Object id.
    pub id: u32,
    /// Zero.
    pub reserved: u32,
}

/// One inclusive IOVA range.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaRange {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA.
    pub last: u64,
}

/// The IOVA ranges a map may use now: the intersection of every attached
/// unit's aperture minus reserved regions, never page 0.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasIovaRanges {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// In: room in `ranges`; out: how many there are (`E2BIG` when more than the room).
    pub num_ranges: u32,
    /// User pointer to an array of [`IovaRange`].
    pub ranges: u64,
    /// Out: the smallest page size every attached unit supports.
    pub out_iova_alignment: u64,
}

/// Promises IOVA ranges stay usable (an attach that narrows them fails).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasAllowIovas {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// Entries in `ranges` (0 withdraws the promise).
    pub num_ranges: u32,
    /// User pointer to an array of [`IovaRange`].
    pub ranges: u64,
}

/// `IoasMap.flags` / `IoasCopy.flags`: use the given IOVA.
pub const MAP_FIXED_IOVA: u32 = 1;
/// The device may read.
pub const MAP_READABLE: u32 = 2;
/// The device may write.
pub const MAP_WRITEABLE: u32 = 4;

/// Maps task memory `[user_va, user_va + length)` at an IOVA.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasMap {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// `MAP_*`.
    pub flags: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// Zero.
    pub reserved: u32,
    /// Task virtual address (page aligned).
    pub user_va: u64,
    /// Bytes (page multiple).
    pub length: u64,
    /// In with `MAP_FIXED_IOVA`: the IOVA; out: the IOVA used.
    pub iova: u64,
}

/// Unmaps whole mappings in `[iova, iova + length)`; `iova = 0, length =
/// u64::MAX` unmaps everything.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasUnmap {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// Zero.
    pub reserved: u32,
    /// First IOVA.
    pub iova: u64,
    /// In: bytes; out: bytes unmapped.
    pub length: u64,
}

/// Maps the pages behind a source range into a second IOAS.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasCopy {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// `MAP_*` for the destination.
    pub flags: u32,
    /// Destination IOAS.
    pub dst_ioas_id: u32,
    /// Source IOAS.
    pub src_ioas_id: u32,
    /// Bytes.
    pub length: u64,
    /// In with `MAP_FIXED_IOVA`: destination IOVA; out: the IOVA used.
    pub dst_iova: u64,
    /// Source IOVA.
    pub src_iova: u64,
}

/// `IoasOption.option_id`: 1 allows huge leaves (default), 0 forbids them.
pub const OPTION_HUGE_PAGES: u32 = 1;
/// `IoasOption.option_id`: 1 makes the kernel log the leaves each new mapping gets.
pub const OPTION_REPORT_LEAVES: u32 = 2;

/// Sets a hint on an IOAS; whether it is honoured comes back, it never fails
/// for being unknown.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasOption {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// `OPTION_*`.
    pub option_id: u32,
    /// The IOAS.
    pub object_id: u32,
    /// The value.
    pub value: u64,
    /// Out: 1 honoured, 0 not supported (ignored).
    pub out_honoured: u32,
    /// Zero.
    pub reserved: u32,
}

/// Binds a PCI function the task claimed: it becomes a device object, its
/// DMA blocked until it is attached.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceBind {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The function, as [`crate::bdf`] encodes it.
    pub bdf: u64,
    /// Out: the device object id.
    pub out_dev_id: u32,
    /// Zero.
    pub reserved: u32,
}

/// Attaches a device to an IOAS (or a HWPT); returns the HWPT used.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceAttach {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The device object.
    pub dev_id: u32,
    /// An IOAS or HWPT id.
    pub pt_id: u32,
    /// Out: the HWPT.
    pub out_hwpt_id: u32,
    /// Zero.
    pub reserved: u32,
}

/// Detaches a device: its DMA is blocked.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceDetach {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The device object.
    pub dev_id: u32,
    /// Zero.
    pub reserved: u32,
}

/// `HwInfo.out_kind` values.
pub mod hw_kind {
    /// Intel VT-d.
    pub const VTD: u32 = 1;
    /// AMD-Vi.
    pub const AMDVI: u32 = 2;
    /// Arm SMMUv3.
    pub const SMMUV3: u32 = 3;
    /// virtio-iommu.
    pub const VIRTIO_IOMMU: u32 = 4;
    /// Host-test mock.
    pub const MOCK: u32 = 5;
}

/// One raw capability register in [`HwInfo`]'s data.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwReg {
    /// Register name from the unit's spec, NUL padded (e.g. `CAP`, `IDR0`).
    pub name: [u8; 8],
    /// Its value.
    pub value: u64,
}

/// The unit a device sits behind: kind and raw capability registers.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwInfo {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The device object.
    pub dev_id: u32,
    /// Out: `hw_kind::*`.
    pub out_kind: u32,
    /// In: room in `data` (entries); out: entries the unit has (`E2BIG` when more than the room).
    pub num_regs: u32,
    /// Zero.
    pub reserved: u32,
    /// User pointer to an array of [`HwReg`].
    pub data: u64,
    /// Out: the unit's name in the firmware topology (e.g. `dmar0`, `smmu0`), NUL padded.
    pub out_unit_name: [u8; 16],
    /// Out: IOTLB invalidations the unit has issued so far (a statistic for benchmarks).
    pub out_flushes: u64,
}

/// Every IOAS struct begins with these two words.
pub trait Header: FromBytes + IntoBytes + Immutable + KnownLayout + Default + Copy {
    /// The `flags` this struct defines.
    const FLAGS: u32;
    /// Whether its reserved fields are zero.
    fn reserved_clear(&self) -> bool;
}

macro_rules! header {
    ($t:ty, $flags:expr, |$s:ident| $reserved:expr) => {
        impl Header for $t {
            const FLAGS: u32 = $flags;
            fn reserved_clear(&self) -> bool {
                let $s = self;
                $reserved
            }
        }
    };
}

header!(IoasAlloc, 0, |s| s.reserved == 0);
header!(Destroy, 0, |s| s.reserved == 0);
header!(IoasIovaRanges, 0, |_s| true);
header!(IoasAllowIovas, 0, |_s| true);
header!(IoasMap, MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, |s| s.reserved == 0);
header!(IoasUnmap, 0, |s| s.reserved == 0);
header!(IoasCopy, MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, |_s| true);
header!(IoasOption, 0, |s| s.reserved == 0);
header!(DeviceBind, 0, |s| s.reserved == 0);
header!(DeviceAttach, 0, |s| s.reserved == 0);
header!(DeviceDetach, 0, |s| s.reserved == 0);
header!(HwInfo, 0, |s| s.reserved == 0);

/// Decodes a struct from the bytes a caller passed (its whole `size`):
/// shorter input leaves the rest zero, longer input must be zero past what
/// this ABI knows.
pub fn decode<T: Header>(bytes: &[u8]) -> Result<T, crate::Errno> {
    let known = core::mem::size_of::<T>();
    if bytes.len() < 8 {
        return Err(crate::Errno::EINVAL);
    }
    if bytes.len() > known && bytes[known..].iter().any(|&b| b != 0) {
        return Err(crate::Errno::E2BIG);
    }
    let mut v = T::default();
    let n = bytes.len().min(known);
    v.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
    let flags = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if flags & !T::FLAGS != 0 || !v.reserved_clear() {
        return Err(crate::Errno::EINVAL);
    }
    Ok(v)
}

/// The bytes to write back: as many as the caller's `size` covers.
pub fn encode<T: Header>(v: &T, size: u32) -> &[u8] {
    let b = v.as_bytes();
    &b[..(size as usize).min(b.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<IoasAlloc>(), 16);
        assert_eq!(core::mem::size_of::<IoasMap>(), 40);
        assert_eq!(core::mem::size_of::<IoasCopy>(), 40);
        assert_eq!(core::mem::size_of::<IoasIovaRanges>(), 32);
        assert_eq!(core::mem::size_of::<HwInfo>(), 56);
        assert_eq!(core::mem::size_of::<HwReg>(), 16);
        for n in 1..=12 {
            assert_eq!(Op::from_raw(n).map(|o| o as u64), Some(n));
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(13), None);
    }

    #[test]
    fn decode_follows_the_growth_rules() {
        let m = IoasMap { size: 40, flags: MAP_READABLE, ioas_id: 3, iova: 0x1000, ..Default::default() };
        assert_eq!(decode::<IoasMap>(m.as_bytes()), Ok(m));
        // An older caller that knew only the first 24 bytes.
        let short = decode::<IoasMap>(&m.as_bytes()[..24]).unwrap();
        assert_eq!((short.ioas_id, short.iova), (3, 0));
        // A newer caller with zero bytes we do not know: fine; non-zero: E2BIG.
        let mut long = [0u8; 48];
        long[..40].copy_from_slice(m.as_bytes());
        assert_eq!(decode::<IoasMap>(&long), Ok(m));
        long[44] = 1;
        assert_eq!(decode::<IoasMap>(&long), Err(Errno::E2BIG));
        assert_eq!(decode::<IoasMap>(&m.as_bytes()[..4]), Err(Errno::EINVAL), "no room for flags");
        let bad_flags = IoasMap { flags: 8, ..m };
        assert_eq!(decode::<IoasMap>(bad_flags.as_bytes()), Err(Errno::EINVAL));
        let bad_reserved = IoasMap { reserved: 1, ..m };
        assert_eq!(decode::<IoasMap>(bad_reserved.as_bytes()), Err(Errno::EINVAL));
        assert_eq!(encode(&m, 24).len(), 24);
        assert_eq!(encode(&m, 400).len(), 40);
    }
}
