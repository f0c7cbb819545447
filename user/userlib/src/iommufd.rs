//! The IOAS door from user space: typed wrappers over `Sysno::Iommufd`
//! (structs and rules in `abi::iommufd`).

use abi::iommufd::{self as a, Op};
use abi::{decode, Errno, Sysno};

/// Issues `iommufd(op, &mut s)`.
pub fn call<T>(op: Op, s: &mut T) -> Result<u64, Errno> {
    decode(crate::sys::raw(Sysno::Iommufd as u64, [op as u64, s as *mut T as u64, 0, 0, 0]))
}

fn size_of<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// A new IOAS.
pub fn ioas_alloc() -> Result<u32, Errno> {
    let mut s = a::IoasAlloc { size: size_of::<a::IoasAlloc>(), ..Default::default() };
    call(Op::IoasAlloc, &mut s)?;
    Ok(s.out_ioas_id)
}

/// Destroys an object.
pub fn destroy(id: u32) -> Result<(), Errno> {
    let mut s = a::Destroy { size: size_of::<a::Destroy>(), id, ..Default::default() };
    call(Op::Destroy, &mut s).map(|_| ())
}

/// Fills `out` with the usable IOVA ranges; returns (how many there are, IOVA alignment).
pub fn iova_ranges(ioas: u32, out: &mut [a::IovaRange]) -> Result<(usize, u64), Errno> {
    let mut s = a::IoasIovaRanges {
        size: size_of::<a::IoasIovaRanges>(),
        ioas_id: ioas,
        num_ranges: out.len() as u32,
        ranges: out.as_mut_ptr() as u64,
        ..Default::default()
    };
    call(Op::IoasIovaRanges, &mut s)?;
    Ok((s.num_ranges as usize, s.out_iova_alignment))
}

/// The IOVA alignment of `ioas` (`out_iova_alignment`): every map into it
/// needs its IOVA, its length and its memory's physical blocks to be
/// multiples of this (4 KiB on most IOMMUs; a virtio-iommu's `granule`, say
/// 64 KiB, where that is larger). Allocate DMA buffers with [`dma_alloc`].
pub fn iova_alignment(ioas: u32) -> Result<u64, Errno> {
    // No room for ranges: the kernel still fills in the alignment (E2BIG).
    let mut s = a::IoasIovaRanges { size: size_of::<a::IoasIovaRanges>(), ioas_id: ioas, ..Default::default() };
    match call(Op::IoasIovaRanges, &mut s) {
        Ok(_) | Err(Errno::E2BIG) => Ok(s.out_iova_alignment.max(4096)),
        Err(e) => Err(e),
    }
}

/// Zeroed, writable memory a device behind `ioas` may reach: [`DmaBuffer::len`]
/// is `len` rounded up to the IOAS's [`iova_alignment`], and the memory is
/// physically contiguous in aligned blocks of it, so the whole buffer maps
/// into `ioas` on any IOMMU. Ask after the devices are attached (an attach
/// may raise the alignment).
pub fn dma_alloc(ioas: u32, len: u64) -> Result<DmaBuffer, Errno> {
    let align = iova_alignment(ioas)?;
    let len = len.max(1).checked_next_multiple_of(align).ok_or(Errno::EINVAL)?;
    let flags = if align > 4096 { abi::mem_align(align) } else { 0 };
    let va = crate::sys::mem_map(0, len, abi::PROT_READ | abi::PROT_WRITE | flags)?;
    Ok(DmaBuffer { va, len, align })
}

/// Memory from [`dma_alloc`] (not `Clone`: it hands out its bytes mutably).
#[derive(Debug, PartialEq, Eq)]
pub struct DmaBuffer {
    /// Where it is mapped in the task.
    pub va: u64,
    /// Its length: a multiple of `align`.
    pub len: u64,
    /// The IOVA alignment it was made for.
    pub align: u64,
}

impl DmaBuffer {
    /// The buffer as bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `dma_alloc` mapped `len` writable bytes at `va` for this task, and they stay mapped until `free` takes the buffer by value.
        unsafe { core::slice::from_raw_parts_mut(self.va as *mut u8, self.len as usize) }
    }

    /// Gives the memory back (unmap it from every IOAS first; a page still
    /// mapped for DMA stays allocated until then).
    pub fn free(self) -> Result<(), Errno> {
        crate::sys::mem_unmap(self.va, self.len).map(|_| ())
    }
}

/// Promises `ranges` stay usable.
pub fn allow_iovas(ioas: u32, ranges: &[a::IovaRange]) -> Result<(), Errno> {
    let mut s = a::IoasAllowIovas {
        size: size_of::<a::IoasAllowIovas>(),
        ioas_id: ioas,
        num_ranges: ranges.len() as u32,
        ranges: ranges.as_ptr() as u64,
        ..Default::default()
    };
    call(Op::IoasAllowIovas, &mut s).map(|_| ())
}

/// Maps `[va, va + len)` at `iova` (or a kernel-chosen IOVA); `flags` are
/// `MAP_READABLE` / `MAP_WRITEABLE`. Returns the IOVA.
pub fn map(ioas: u32, va: u64, len: u64, iova: Option<u64>, flags: u32) -> Result<u64, Errno> {
    let fixed = if iova.is_some() { a::MAP_FIXED_IOVA } else { 0 };
    let mut s = a::IoasMap {
        size: size_of::<a::IoasMap>(),
        flags: flags | fixed,
        ioas_id: ioas,
        user_va: va,
        length: len,
        iova: iova.unwrap_or(0),
        ..Default::default()
    };
    call(Op::IoasMap, &mut s)?;
    Ok(s.iova)
}

/// Unmaps whole mappings in `[iova, iova + len)`; returns the bytes unmapped.
pub fn unmap(ioas: u32, iova: u64, len: u64) -> Result<u64, Errno> {
    let mut s =
        a::IoasUnmap { size: size_of::<a::IoasUnmap>(), ioas_id: ioas, iova, length: len, ..Default::default() };
    call(Op::IoasUnmap, &mut s)?;
    Ok(s.length)
}

/// Unmaps everything.
pub fn unmap_all(ioas: u32) -> Result<u64, Errno> {
    unmap(ioas, 0, u64::MAX)
}

/// Maps the pages behind `[src_iova, src_iova + len)` of `src` into `dst`; returns the IOVA there.
pub fn copy(dst: u32, src: u32, src_iova: u64, len: u64, dst_iova: Option<u64>, flags: u32) -> Result<u64, Errno> {
    let fixed = if dst_iova.is_some() { a::MAP_FIXED_IOVA } else { 0 };
    let mut s = a::IoasCopy {
        size: size_of::<a::IoasCopy>(),
        flags: flags | fixed,
        dst_ioas_id: dst,
        src_ioas_id: src,
        length: len,
        dst_iova: dst_iova.unwrap_or(0),
        src_iova,
    };
    call(Op::IoasCopy, &mut s)?;
    Ok(s.dst_iova)
}

/// Sets a hint; returns whether it is honoured.
pub fn set_option(ioas: u32, option: u32, value: u64) -> Result<bool, Errno> {
    let mut s = a::IoasOption {
        size: size_of::<a::IoasOption>(),
        option_id: option,
        object_id: ioas,
        value,
        ..Default::default()
    };
    call(Op::IoasOption, &mut s)?;
    Ok(s.out_honoured == 1)
}

/// Binds a claimed PCI function; returns the device object id.
pub fn device_bind(bdf: u64) -> Result<u32, Errno> {
    let mut s = a::DeviceBind { size: size_of::<a::DeviceBind>(), bdf, ..Default::default() };
    call(Op::DeviceBind, &mut s)?;
    Ok(s.out_dev_id)
}

/// Attaches a device to an IOAS or HWPT; returns the HWPT id.
pub fn device_attach(dev: u32, pt: u32) -> Result<u32, Errno> {
    let mut s = a::DeviceAttach { size: size_of::<a::DeviceAttach>(), dev_id: dev, pt_id: pt, ..Default::default() };
    call(Op::DeviceAttach, &mut s)?;
    Ok(s.out_hwpt_id)
}

/// Detaches a device (its DMA is blocked).
pub fn device_detach(dev: u32) -> Result<(), Errno> {
    let mut s = a::DeviceDetach { size: size_of::<a::DeviceDetach>(), dev_id: dev, ..Default::default() };
    call(Op::DeviceDetach, &mut s).map(|_| ())
}

/// What `hw_info` tells about a device's unit.
#[derive(Debug, Clone, Copy)]
pub struct UnitInfo {
    /// `abi::iommufd::hw_kind::*`.
    pub kind: u32,
    /// Registers the unit has (those beyond `regs.len()` were not copied).
    pub num_regs: usize,
    /// The unit's topology name, NUL padded.
    pub name: [u8; 16],
    /// IOTLB invalidations the unit has issued so far.
    pub flushes: u64,
}

impl UnitInfo {
    /// The unit's name as text.
    pub fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        core::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }

    /// The kind as text.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            a::hw_kind::VTD => "vtd",
            a::hw_kind::AMDVI => "amdvi",
            a::hw_kind::SMMUV3 => "smmuv3",
            a::hw_kind::VIRTIO_IOMMU => "virtio-iommu",
            a::hw_kind::MOCK => "mock",
            a::hw_kind::NOIOMMU => "noiommu",
            _ => "unknown",
        }
    }
}

/// The unit a device sits behind and its raw capability registers.
pub fn hw_info(dev: u32, regs: &mut [a::HwReg]) -> Result<UnitInfo, Errno> {
    let mut s = a::HwInfo {
        size: size_of::<a::HwInfo>(),
        dev_id: dev,
        num_regs: regs.len() as u32,
        data: regs.as_mut_ptr() as u64,
        ..Default::default()
    };
    call(Op::GetHwInfo, &mut s)?;
    Ok(UnitInfo { kind: s.out_kind, num_regs: s.num_regs as usize, name: s.out_unit_name, flushes: s.out_flushes })
}

// ---- The hardware-specific door -------------------------------------------

/// What the typed `hw_info` says: the unit's capabilities in its own struct
/// (`data`, `data_len` bytes of it) and which HWPT data types it accepts.
#[derive(Debug, Clone, Copy)]
pub struct TypedInfo {
    /// `abi::iommufd::hw_kind::*` of the data.
    pub data_type: u32,
    /// Bytes written to the caller's buffer.
    pub data_len: usize,
    /// Bit n: `hwpt_alloc` accepts data type n.
    pub hwpt_alloc_types: u64,
    /// Bit n: `hwpt_invalidate` accepts data type n.
    pub invalidate_types: u64,
}

/// The typed capabilities of a device's unit, written into `data` (for
/// The unit bound device `dev` sits behind (kind, name, invalidations),
/// without its registers (asked again with room for them where the kernel
/// answers `E2BIG` for none).
pub fn unit_info(dev: u32) -> Result<UnitInfo, Errno> {
    hw_info(dev, &mut []).or_else(|e| match e {
        Errno::E2BIG => hw_info(dev, &mut [a::HwReg::default(); 16]),
        e => Err(e),
    })
}

/// example an `abi::iommufd::HwInfoVtd`'s bytes).
pub fn hw_info_typed(dev: u32, data: &mut [u8]) -> Result<TypedInfo, Errno> {
    // Room for the raw registers too, so the call does not end in E2BIG.
    let mut regs = [a::HwReg::default(); 16];
    let mut s = a::HwInfo {
        size: size_of::<a::HwInfo>(),
        dev_id: dev,
        num_regs: regs.len() as u32,
        data: regs.as_mut_ptr() as u64,
        data_len: data.len() as u32,
        data_uptr: data.as_mut_ptr() as u64,
        ..Default::default()
    };
    call(Op::GetHwInfo, &mut s)?;
    Ok(TypedInfo {
        data_type: s.out_data_type,
        data_len: s.data_len as usize,
        hwpt_alloc_types: s.out_hwpt_alloc_types,
        invalidate_types: s.out_invalidate_types,
    })
}

/// A HWPT on `dev`'s unit under `parent` (an IOAS, or a NEST_PARENT HWPT for a
/// nested child) with `flags` (`HWPT_ALLOC_*`; `HWPT_ALLOC_FAULT_ID_VALID` is
/// added when `fault` is given) and typed `data` of `data_type`.
pub fn hwpt_alloc(
    dev: u32,
    parent: u32,
    flags: u32,
    data_type: u32,
    data: &[u8],
    fault: Option<u32>,
) -> Result<u32, Errno> {
    let mut s = a::HwptAlloc {
        size: size_of::<a::HwptAlloc>(),
        flags: flags | if fault.is_some() { a::HWPT_ALLOC_FAULT_ID_VALID } else { 0 },
        dev_id: dev,
        pt_id: parent,
        data_type,
        data_len: data.len() as u32,
        data_uptr: data.as_ptr() as u64,
        fault_id: fault.unwrap_or(0),
        ..Default::default()
    };
    call(Op::HwptAlloc, &mut s)?;
    Ok(s.out_hwpt_id)
}

/// Hands `entries` (each `entry_len` bytes of `data_type`) to a HWPT; returns
/// how many were handled, also when the batch stopped at a bad one (then
/// the error comes with the count).
pub fn hwpt_invalidate(hwpt: u32, data_type: u32, entries: &[u8], entry_len: usize) -> (u32, Result<(), Errno>) {
    let num = entries.len().checked_div(entry_len).unwrap_or(0);
    let mut s = a::HwptInvalidate {
        size: size_of::<a::HwptInvalidate>(),
        hwpt_id: hwpt,
        data_type,
        data_uptr: entries.as_ptr() as u64,
        entry_len: entry_len as u32,
        entry_num: num as u32,
        ..Default::default()
    };
    let r = call(Op::HwptInvalidate, &mut s).map(|_| ());
    (s.entry_num, r)
}

/// A fault queue holding `capacity` records.
pub fn fault_queue_alloc(capacity: u32) -> Result<u32, Errno> {
    let mut s = a::FaultQueueAlloc { size: size_of::<a::FaultQueueAlloc>(), capacity, ..Default::default() };
    call(Op::FaultQueueAlloc, &mut s)?;
    Ok(s.out_fault_id)
}

/// Reads up to `out.len()` fault records, waiting up to `timeout_ms` for the
/// first; returns (records read, overflows since the last read).
pub fn fault_read(queue: u32, out: &mut [a::FaultRecord], timeout_ms: u32) -> Result<(usize, u64), Errno> {
    let mut s = a::FaultRead {
        size: size_of::<a::FaultRead>(),
        fault_id: queue,
        timeout_ms,
        records: out.as_mut_ptr() as u64,
        num: out.len() as u32,
        ..Default::default()
    };
    call(Op::FaultRead, &mut s)?;
    Ok((s.num as usize, s.out_overflows))
}
