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
    /// [`HwptAlloc`] (hardware-specific door).
    HwptAlloc = 13,
    /// [`HwptInvalidate`] (hardware-specific door).
    HwptInvalidate = 14,
    /// [`FaultQueueAlloc`] (hardware-specific door).
    FaultQueueAlloc = 15,
    /// [`FaultRead`] (hardware-specific door).
    FaultRead = 16,
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
            HwptAlloc,
            HwptInvalidate,
            FaultQueueAlloc,
            FaultRead,
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
    /// Out: the IOVA alignment (Linux's meaning): the largest of the
    /// smallest pages of the units the IOAS reaches, 4 KiB at least. A map's
    /// IOVA and length, and the physical blocks of its memory, must be
    /// multiples of it (`mem_map` with [`crate::mem_align`] gives such
    /// memory); `EINVAL` otherwise.
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
    /// No IOMMU (`iommu.noiommu=allow`, benchmarks only): nothing is translated or blocked.
    pub const NOIOMMU: u32 = 6;
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

/// The unit a device sits behind: kind and raw capability registers, and
/// (hardware-specific door) its capabilities as one typed struct per kind
/// (`data_*`: [`HwInfoVtd`], [`HwInfoAmdvi`], [`HwInfoSmmuv3`],
/// [`HwInfoVirtio`]; `out_data_type` is the `hw_kind`), plus which
/// [`HwptAlloc`] and [`HwptInvalidate`] data types the unit accepts.
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
    /// In: bytes of room at `data_uptr` (0: no typed data wanted); out: bytes written.
    pub data_len: u32,
    /// Out: the type of the typed data (`hw_kind::*`).
    pub out_data_type: u32,
    /// User pointer for the typed data.
    pub data_uptr: u64,
    /// Out: bit n set = [`HwptAlloc`] accepts `data_type` n (`hwpt_data::*`).
    pub out_hwpt_alloc_types: u64,
    /// Out: bit n set = [`HwptInvalidate`] accepts `data_type` n (`hwpt_data::*`).
    pub out_invalidate_types: u64,
}

/// Typed capabilities of a VT-d unit (VT-d §11.4.2, §11.4.3), version 1.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwInfoVtd {
    /// Capability register.
    pub cap_reg: u64,
    /// Extended capability register.
    pub ecap_reg: u64,
}

/// Typed capabilities of an AMD-Vi unit (AMD IOMMU spec §3.4.1), version 1.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwInfoAmdvi {
    /// Extended Feature Register.
    pub efr: u64,
    /// Extended Feature 2 Register (0 where the unit has none).
    pub efr2: u64,
}

/// Typed capabilities of an SMMUv3 (SMMUv3 §6.3.1–§6.3.6), version 1.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwInfoSmmuv3 {
    /// IDR0–IDR5.
    pub idr: [u32; 6],
    /// Implementation identification (0 where not read).
    pub iidr: u32,
    /// Architecture version.
    pub aidr: u32,
}

/// Typed capabilities of a virtio-iommu (virtio 1.2 §5.13.4), version 1.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwInfoVirtio {
    /// Negotiated feature bits.
    pub features: u64,
    /// Page sizes the device maps.
    pub page_size_mask: u64,
    /// First IOVA.
    pub input_start: u64,
    /// Last IOVA.
    pub input_end: u64,
    /// First domain ID.
    pub domain_start: u32,
    /// Last domain ID.
    pub domain_end: u32,
}

/// `HwptAlloc.data_type` / `HwptInvalidate.data_type` values.
pub mod hwpt_data {
    /// No data: a kernel-managed HWPT with the unit's defaults.
    pub const NONE: u32 = 0;
    /// [`super::HwptVtdS1`]: a nested child whose stage 1 (x86-64 paging
    /// format, VT-d first stage) the task owns; on [`super::HwptInvalidate`],
    /// [`super::HwptVtdS1Invalidation`] entries. Accepted by every unit: where
    /// the hardware cannot nest, the kernel shadows the task's tables.
    pub const VTD_S1: u32 = 1;
    /// [`super::HwptVtdAttrs`]: a kernel-managed HWPT on a VT-d unit with
    /// driver attributes (stage, address width, snoop).
    pub const VTD_ATTRS: u32 = 2;
    /// [`super::HwptSmmuv3Attrs`]: a kernel-managed HWPT on an SMMUv3 with
    /// driver attributes (stage, granule, input size).
    pub const SMMUV3_ATTRS: u32 = 3;
    /// [`super::HwptAmdviAttrs`]: a kernel-managed HWPT on an AMD-Vi unit with
    /// driver attributes (page-table levels).
    pub const AMDVI_ATTRS: u32 = 4;
    /// [`super::HwptSmmuv3Ste`]: a nested child on an SMMUv3 (real hardware
    /// nesting: the task's stage-1 context descriptors over the parent's
    /// stage 2); on [`super::HwptInvalidate`], [`super::HwptSmmuv3Command`] entries.
    pub const SMMUV3_STE: u32 = 5;
}

/// `HwptVtdAttrs.flags`: first-stage tables (scalable mode with FLTS) instead of second-stage.
pub const VTD_ATTR_FIRST_STAGE: u32 = 1;
/// `HwptVtdAttrs.flags`: snooped DMA (second-stage SNP bit; needs ECAP.SC).
pub const VTD_ATTR_SNOOP: u32 = 2;

/// Driver attributes of a kernel-managed VT-d HWPT (`hwpt_data::VTD_ATTRS`).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptVtdAttrs {
    /// `VTD_ATTR_*`.
    pub flags: u32,
    /// Input address width: 39, 48 or 57 (0: the unit's default).
    pub addr_width: u32,
}

/// Driver attributes of a kernel-managed SMMUv3 HWPT (`hwpt_data::SMMUV3_ATTRS`).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptSmmuv3Attrs {
    /// 1 or 2 (0: the driver's default).
    pub stage: u32,
    /// log2 of the translation granule: 12 (0: 12).
    pub granule_log2: u32,
    /// Input address size in bits (0: the driver's default).
    pub input_bits: u32,
    /// Zero.
    pub reserved: u32,
}

/// Driver attributes of a kernel-managed AMD-Vi HWPT (`hwpt_data::AMDVI_ATTRS`).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptAmdviAttrs {
    /// Host page-table levels, 1–6 within EFR.HATS (0: the driver's default).
    pub levels: u32,
    /// Zero.
    pub reserved: u32,
}

/// Stage-1 STE words of an SMMUv3 nested child (`hwpt_data::SMMUV3_STE`;
/// SMMUv3 §5.2): only the stage-1 fields (Config, S1Fmt, S1ContextPtr,
/// S1CDMax, S1DSS, S1CIR/COR/CSH, ...) may be set; the context-descriptor
/// pointer is an IOVA of the parent's IOAS.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptSmmuv3Ste {
    /// STE words 0 and 1.
    pub ste: [u64; 2],
}

/// One SMMUv3 command a task may queue for its nested child
/// (`hwpt_data::SMMUV3_STE`; SMMUv3 §4): TLBI_NH_VA, TLBI_NH_VAA,
/// TLBI_NH_ASID, TLBI_NH_ALL, CFGI_CD, CFGI_CD_ALL. The kernel checks each
/// and puts in the VMID and stream ID itself.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptSmmuv3Command {
    /// Command words 0 and 1.
    pub cmd: [u64; 2],
}

/// `HwptAlloc.flags`: the HWPT may serve as the parent (stage 2) of nested children.
pub const HWPT_ALLOC_NEST_PARENT: u32 = 1;
/// `HwptAlloc.flags`: `fault_id` names a fault queue the HWPT's faults go to.
pub const HWPT_ALLOC_FAULT_ID_VALID: u32 = 2;

/// Creates a HWPT on a device's unit: kernel-managed over an IOAS (`pt_id`),
/// or a nested child of a `HWPT_ALLOC_NEST_PARENT` HWPT (`pt_id`) described by
/// `data_type` / `data_uptr` / `data_len`. Unlike the generic door, a request
/// the unit cannot honour is an error (`EOPNOTSUPP`, `EINVAL`).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptAlloc {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// `HWPT_ALLOC_*`.
    pub flags: u32,
    /// A bound device: the HWPT is created on its unit.
    pub dev_id: u32,
    /// Parent: an IOAS, or a NEST_PARENT HWPT for a nested child.
    pub pt_id: u32,
    /// `hwpt_data::*`.
    pub data_type: u32,
    /// Bytes at `data_uptr`.
    pub data_len: u32,
    /// User pointer to the typed data.
    pub data_uptr: u64,
    /// With `HWPT_ALLOC_FAULT_ID_VALID`: the fault queue.
    pub fault_id: u32,
    /// Out: the new HWPT id.
    pub out_hwpt_id: u32,
}

/// Stage-1 data of a VT-d nested child (`hwpt_data::VTD_S1`).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptVtdS1 {
    /// None defined: zero.
    pub flags: u64,
    /// The top-level table: an IOVA of the parent's IOAS (4 KiB aligned).
    pub pgtbl_addr: u64,
    /// Input address width: 48 (4 levels) or 57 (5 levels).
    pub addr_width: u32,
    /// Zero.
    pub reserved: u32,
}

/// One stage-1 invalidation of a VT-d nested child (`hwpt_data::VTD_S1`).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptVtdS1Invalidation {
    /// First IOVA (4 KiB aligned).
    pub addr: u64,
    /// Pages; `addr = 0, npages = u64::MAX` is everything.
    pub npages: u64,
    /// Bit 0: leaf entries only (a hint).
    pub flags: u32,
    /// Zero.
    pub reserved: u32,
}

/// Hands a batch of invalidation entries to a HWPT: they are handled in
/// order and the first bad one stops the batch; `entry_num` comes back as the
/// number handled.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwptInvalidate {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The HWPT.
    pub hwpt_id: u32,
    /// `hwpt_data::*` of the entries.
    pub data_type: u32,
    /// User pointer to the entries.
    pub data_uptr: u64,
    /// Bytes per entry as the caller knows them (shorter or longer entries follow the size rules).
    pub entry_len: u32,
    /// In: entries; out: entries handled.
    pub entry_num: u32,
}

/// Creates a fault queue a HWPT can route its faults to.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultQueueAlloc {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// Records the queue holds before it counts overflows (1–4096).
    pub capacity: u32,
    /// Out: the fault queue id.
    pub out_fault_id: u32,
}

/// `FaultRecord.access` values.
pub mod fault_access {
    /// A read.
    pub const READ: u32 = 1;
    /// A write.
    pub const WRITE: u32 = 2;
    /// The unit did not say.
    pub const UNKNOWN: u32 = 0;
    /// An interrupt request the unit's interrupt remapping refused
    /// (`address` holds the interrupt index).
    pub const INTERRUPT: u32 = 3;
}

/// One fault a HWPT routed to a queue.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRecord {
    /// The device object.
    pub dev_id: u32,
    /// The HWPT the device was attached to.
    pub hwpt_id: u32,
    /// The faulting IOVA.
    pub address: u64,
    /// `fault_access::*`.
    pub access: u32,
    /// The unit's reason code.
    pub reason: u32,
}

/// Reads fault records, oldest first; waits up to `timeout_ms` while the
/// queue is empty (`ETIMEDOUT` when nothing came).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRead {
    /// Size of this struct as the caller knows it.
    pub size: u32,
    /// None defined: zero.
    pub flags: u32,
    /// The fault queue.
    pub fault_id: u32,
    /// Longest wait for a first record (0: do not wait; at most 10 000).
    pub timeout_ms: u32,
    /// User pointer to an array of [`FaultRecord`].
    pub records: u64,
    /// In: room in `records`; out: records written.
    pub num: u32,
    /// Zero.
    pub reserved: u32,
    /// Out: records dropped because the queue was full, since the last read.
    pub out_overflows: u64,
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
header!(HwptAlloc, HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_FAULT_ID_VALID, |_s| true);
header!(HwptInvalidate, 0, |_s| true);
header!(FaultQueueAlloc, 0, |_s| true);
header!(FaultRead, 0, |s| s.reserved == 0);

/// Decodes a struct from the bytes a caller passed (its whole `size`):
/// longer input must be zero past what this ABI knows; shorter input than
/// the struct is `EINVAL`. (Every field of every struct is part of the first
/// ABI, so its size is also its minimum: a caller cannot cut off an out
/// field, such as the id of the object it just made, and lose the object.
/// A field added later will make the older size the minimum of that op.)
pub fn decode<T: Header>(bytes: &[u8]) -> Result<T, crate::Errno> {
    let known = core::mem::size_of::<T>();
    check_size::<T>(bytes.len())?;
    if bytes.len() > known && bytes[known..].iter().any(|&b| b != 0) {
        return Err(crate::Errno::E2BIG);
    }
    let mut v = T::default();
    v.as_mut_bytes().copy_from_slice(&bytes[..known]);
    check_fields(&v)?;
    Ok(v)
}

/// The rule on a caller's `size` of `T` (of [`decode`]): shorter than the
/// struct, or than its two header words, is `EINVAL`.
pub fn check_size<T: Header>(size: usize) -> Result<(), crate::Errno> {
    if size < 8 || size < core::mem::size_of::<T>() {
        return Err(crate::Errno::EINVAL);
    }
    Ok(())
}

/// The rule on a struct's own fields, once its bytes are in: flags it does
/// not define, or reserved fields not zero, are `EINVAL` (the part of
/// [`decode`] a reader that fills the struct in place applies itself).
pub fn check_fields<T: Header>(v: &T) -> Result<(), crate::Errno> {
    let b = v.as_bytes();
    let flags = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if flags & !T::FLAGS != 0 || !v.reserved_clear() {
        return Err(crate::Errno::EINVAL);
    }
    Ok(())
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
        assert_eq!(core::mem::size_of::<HwInfo>(), 88);
        assert_eq!(core::mem::size_of::<HwReg>(), 16);
        assert_eq!(core::mem::size_of::<HwptAlloc>(), 40);
        assert_eq!(core::mem::size_of::<HwptVtdS1>(), 24);
        assert_eq!(core::mem::size_of::<HwptVtdS1Invalidation>(), 24);
        assert_eq!(core::mem::size_of::<HwptInvalidate>(), 32);
        assert_eq!(core::mem::size_of::<FaultRecord>(), 24);
        assert_eq!(core::mem::size_of::<FaultRead>(), 40);
        assert_eq!(core::mem::size_of::<HwInfoSmmuv3>(), 32);
        assert_eq!(core::mem::size_of::<HwInfoVirtio>(), 40);
        for n in 1..=16 {
            assert_eq!(Op::from_raw(n).map(|o| o as u64), Some(n));
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(17), None);
    }

    #[test]
    fn decode_follows_the_growth_rules() {
        let m = IoasMap { size: 40, flags: MAP_READABLE, ioas_id: 3, iova: 0x1000, ..Default::default() };
        assert_eq!(decode::<IoasMap>(m.as_bytes()), Ok(m));
        // Shorter than the struct: every field is part of the first ABI, so
        // a cut-off struct is refused (its out fields would be lost).
        for cut in [8, 24, 39] {
            assert_eq!(decode::<IoasMap>(&m.as_bytes()[..cut]), Err(Errno::EINVAL), "{cut} bytes");
        }
        assert_eq!(decode::<IoasAlloc>(&IoasAlloc::default().as_bytes()[..8]), Err(Errno::EINVAL));
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
