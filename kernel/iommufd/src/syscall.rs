//! The byte-level `iommufd(op, ptr)` syscall: each op's user struct read by
//! the ABI's size rules (`abi::iommufd::decode`), the op run on the task's
//! [`Iommufd`], the reply written back — the same code in the kernel and on
//! the host. What only the kernel knows (the task's page tables, which
//! function a task owns, sleeping) comes through [`Kernel`].
//!
//! Rules every op follows: a struct whose `size` exceeds
//! [`a::MAX_STRUCT`] is `E2BIG`, one shorter than the op's struct `EINVAL`,
//! unknown flags or non-zero reserved fields `EINVAL`, a bad user pointer
//! `EFAULT`, an unknown op `ENOTTY`. Out fields are written back only as far
//! as the caller's `size` reaches.
//!
//! Heap: every allocation here is fallible and answers `ENOMEM` before the
//! op touches the table, or (a leaves report, a log) is given up without
//! failing an op that already took effect; log lines format through small
//! `Display` adapters, never through an allocated string.

use crate::abi_glue;
use crate::error::nomem;
use crate::ioas::{CopyArgs, IovaChoice, MapArgs};
use crate::object::{Iommufd, Units};
use crate::pages::{Memory, PAGE};
use abi::iommufd::{self as a, Header, Op};
use abi::Errno;
use alloc::vec::Vec;
use core::fmt;
use iommu::{DeviceId, Perms};
use zerocopy::IntoBytes;

/// The calling task's memory, every access checked against its page tables.
pub trait UserMemory {
    /// `len` bytes at `va` (`EFAULT` unless every byte is readable user
    /// memory). The vector is allocated fallibly (`try_reserve`): `ENOMEM`
    /// when the heap has no room for `len` bytes.
    fn read(&self, va: u64, len: usize) -> Result<Vec<u8>, Errno>;
    /// Fills `out` with the bytes at `va` (`EFAULT` as for [`UserMemory::read`]).
    /// The decoder reads every op's struct (at most [`a::MAX_STRUCT`] bytes)
    /// this way, into a buffer on the stack; a kernel implements it without
    /// allocating, so a call that fails early touches no heap.
    fn read_into(&self, va: u64, out: &mut [u8]) -> Result<(), Errno> {
        out.copy_from_slice(&self.read(va, out.len())?);
        Ok(())
    }
    /// Writes `bytes` at `va` (`EFAULT` unless every byte is writable user memory).
    fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Errno>;
}

/// What an op does with the table, the units and the task's pin memory.
pub type TableOp<'a> = dyn FnMut(&mut Iommufd, Units<'_>, &mut dyn Memory) -> Result<(), Errno> + 'a;

/// What the decoder needs from the kernel (or from a host test).
pub trait Kernel {
    /// The calling task's memory.
    fn user(&mut self) -> &mut dyn UserMemory;
    /// Runs `f` on the task's table, the units and the task's pin memory.
    fn with_fd(&mut self, f: &mut TableOp<'_>) -> Result<(), Errno>;
    /// The unit and ID of PCI function `bdf` (the ABI's encoding) for a
    /// `device_bind`, if the calling task owns it; otherwise its errno
    /// (`EPERM` not claimed, `EBUSY` another's, `ENODEV` no IOMMU, ...).
    fn bind_target(&mut self, bdf: u64) -> Result<(usize, DeviceId), Errno>;
    /// Writes the name of registered unit `unit` (`dmar0`, `smmu0`, ...) to
    /// `out`, for `GET_HW_INFO` and logs (without allocating: syscall path).
    fn write_unit_name(&self, unit: usize, out: &mut dyn fmt::Write) -> fmt::Result;
    /// Monotonic time.
    fn now_ns(&self) -> u64;
    /// Sleeps a little (the table is not held) and hands the task the
    /// faults the units recorded meanwhile: `fault_read` waits this way.
    fn wait_for_faults(&mut self);
}

/// Reads the struct at `ptr` by the ABI's size rules; returns it and the caller's size.
///
/// The bytes go straight into the struct: what of it lies on `ptr`'s page
/// in one read (one translation; the whole struct for nearly every call),
/// the rest only for a struct across a page boundary, and the bytes a newer
/// caller has past the struct (which must be zero) a small piece at a time.
/// The errors are [`a::decode`]'s, in its order.
fn read<T: Header>(user: &dyn UserMemory, ptr: u64) -> Result<(T, u32), Errno> {
    let known = core::mem::size_of::<T>();
    let mut v = T::default();
    let on_page = (PAGE - ptr % PAGE) as usize;
    // At least the size word, at most the struct (`known` is at least 8).
    let first = on_page.clamp(4, known);
    user.read_into(ptr, &mut v.as_mut_bytes()[..first])?;
    let b = v.as_bytes();
    let size = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if size > a::MAX_STRUCT {
        return Err(Errno::E2BIG);
    }
    let size_bytes = size as usize;
    a::check_size::<T>(size_bytes)?;
    let at = |off: usize| ptr.checked_add(off as u64).ok_or(Errno::EFAULT);
    if known > first {
        user.read_into(at(first)?, &mut v.as_mut_bytes()[first..])?;
    }
    let mut tail = [0u8; 32];
    let mut done = known;
    while done < size_bytes {
        let n = (size_bytes - done).min(tail.len());
        user.read_into(at(done)?, &mut tail[..n])?;
        if tail[..n].iter().any(|&x| x != 0) {
            return Err(Errno::E2BIG);
        }
        done += n;
    }
    a::check_fields(&v)?;
    Ok((v, size))
}

fn write<T: Header>(user: &mut dyn UserMemory, ptr: u64, v: &T, size: u32) -> Result<(), Errno> {
    user.write(ptr, a::encode(v, size))
}

fn perms(flags: u32) -> Perms {
    let mut p = Perms::empty();
    p.set(Perms::READ, flags & a::MAP_READABLE != 0);
    p.set(Perms::WRITE, flags & a::MAP_WRITEABLE != 0);
    p
}

fn iova_choice(flags: u32, iova: u64) -> IovaChoice {
    if flags & a::MAP_FIXED_IOVA != 0 {
        IovaChoice::Fixed(iova)
    } else {
        IovaChoice::Auto
    }
}

/// A leaf size for logs (`4K`, `2M`, `1G`).
struct SizeName(u64);

impl fmt::Display for SizeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            s if s >= 1 << 30 => write!(f, "{}G", s >> 30),
            s if s >= 1 << 20 => write!(f, "{}M", s >> 20),
            s => write!(f, "{}K", s >> 10),
        }
    }
}

/// (size, count) pairs for logs: `2M x 1, 4K x 3`.
struct LeavesText<'a>(&'a [(u64, u64)]);

impl fmt::Display for LeavesText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(size, n)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} x {n}", SizeName(size))?;
        }
        Ok(())
    }
}

/// A unit's name for logs, through [`Kernel::write_unit_name`].
struct UnitName<'a>(&'a dyn Kernel, usize);

impl fmt::Display for UnitName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_unit_name(self.1, f)
    }
}

/// A unit name cut to the ABI's 15 bytes and a NUL, written without allocating.
struct NameField {
    bytes: [u8; 16],
    len: usize,
}

impl fmt::Write for NameField {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(15 - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Runs `f` on the table (once) and hands back what it returns.
fn with<R>(
    k: &mut dyn Kernel,
    mut f: impl FnMut(&mut Iommufd, Units<'_>, &mut dyn Memory) -> Result<R, Errno>,
) -> Result<R, Errno> {
    let mut out = None;
    k.with_fd(&mut |fd, units, mem| {
        out = Some(f(fd, units, mem)?);
        Ok(())
    })?;
    out.ok_or(Errno::EIO)
}

/// `iommufd(op, ptr)`: decodes, runs and answers one op.
pub fn dispatch(k: &mut dyn Kernel, op: u64, ptr: u64) -> Result<u64, Errno> {
    // An op this kernel does not know has its own errno (as an unknown ioctl).
    match Op::from_raw(op).ok_or(Errno::ENOTTY)? {
        Op::IoasAlloc => {
            let (mut s, size) = read::<a::IoasAlloc>(k.user(), ptr)?;
            s.out_ioas_id = with(k, |fd, _, _| fd.ioas_alloc())?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::Destroy => {
            let (s, _) = read::<a::Destroy>(k.user(), ptr)?;
            with(k, |fd, units, mem| fd.destroy(units, mem, s.id))?;
        }
        Op::IoasIovaRanges => {
            let (mut s, size) = read::<a::IoasIovaRanges>(k.user(), ptr)?;
            let (ranges, align) = with(k, |fd, units, _| {
                let r = fd.iova_ranges(units, s.ioas_id)?;
                Ok((r, fd.iova_alignment(units, s.ioas_id)))
            })?;
            let room = s.num_ranges as usize;
            s.num_ranges = ranges.len() as u32;
            s.out_iova_alignment = align;
            let out: Vec<a::IovaRange> =
                fallible::try_collect(ranges.iter().map(|&(start, last)| a::IovaRange { start, last }))
                    .map_err(nomem)?;
            if out.len() > room {
                write(k.user(), ptr, &s, size)?;
                return Err(Errno::E2BIG);
            }
            k.user().write(s.ranges, out.as_bytes())?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::IoasAllowIovas => {
            let (s, _) = read::<a::IoasAllowIovas>(k.user(), ptr)?;
            if s.num_ranges > 64 {
                return Err(Errno::E2BIG);
            }
            let bytes = k.user().read(s.ranges, s.num_ranges as usize * core::mem::size_of::<a::IovaRange>())?;
            let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
            let ranges: Vec<(u64, u64)> =
                fallible::try_collect(bytes.chunks_exact(16).map(|c| (word(&c[..8]), word(&c[8..])))).map_err(nomem)?;
            with(k, |fd, units, _| fd.allow_iovas(units, s.ioas_id, &ranges))?;
        }
        Op::IoasMap => {
            let (mut s, size) = read::<a::IoasMap>(k.user(), ptr)?;
            let m = MapArgs { va: s.user_va, len: s.length, iova: iova_choice(s.flags, s.iova), perms: perms(s.flags) };
            let (iova, report) = with(k, |fd, units, mem| {
                let iova = fd.map(units, mem, s.ioas_id, m)?;
                // The map took effect: a report the heap has no room for is
                // given up (`None`), never the call's error.
                let report = if fd.hints(s.ioas_id)?.report_leaves {
                    fd.leaves(units, s.ioas_id, iova, m.len).ok()
                } else {
                    Some(Vec::new())
                };
                Ok((iova, report))
            })?;
            match report {
                Some(report) => {
                    for (unit, leaves) in report {
                        let (name, text) = (UnitName(&*k, unit), LeavesText(&leaves));
                        log::info!("ioas: {:#x} bytes at {iova:#x}: {name} leaves {text}", m.len);
                    }
                }
                None => log::warn!("ioas: {:#x} bytes at {iova:#x}: leaves not reported (out of memory)", m.len),
            }
            s.iova = iova;
            write(k.user(), ptr, &s, size)?;
        }
        Op::IoasUnmap => {
            let (mut s, size) = read::<a::IoasUnmap>(k.user(), ptr)?;
            s.length = with(k, |fd, units, mem| fd.unmap(units, mem, s.ioas_id, s.iova, s.length))?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::IoasCopy => {
            let (mut s, size) = read::<a::IoasCopy>(k.user(), ptr)?;
            let c = CopyArgs {
                src: s.src_ioas_id,
                src_iova: s.src_iova,
                len: s.length,
                dst_iova: iova_choice(s.flags, s.dst_iova),
                perms: perms(s.flags),
            };
            s.dst_iova = with(k, |fd, units, mem| fd.copy(units, mem, s.dst_ioas_id, c))?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::IoasOption => {
            let (mut s, size) = read::<a::IoasOption>(k.user(), ptr)?;
            let honoured = with(k, |fd, _, _| fd.set_option(s.object_id, s.option_id, s.value))?;
            s.out_honoured = u32::from(honoured);
            write(k.user(), ptr, &s, size)?;
        }
        Op::DeviceBind => {
            let (mut s, size) = read::<a::DeviceBind>(k.user(), ptr)?;
            let (unit, id) = k.bind_target(s.bdf)?;
            s.out_dev_id = with(k, |fd, units, _| fd.device_bind(units, unit, id))?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::DeviceAttach => {
            let (mut s, size) = read::<a::DeviceAttach>(k.user(), ptr)?;
            s.out_hwpt_id = with(k, |fd, units, _| fd.device_attach(units, s.dev_id, s.pt_id))?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::DeviceDetach => {
            let (s, _) = read::<a::DeviceDetach>(k.user(), ptr)?;
            with(k, |fd, units, _| fd.device_detach(units, s.dev_id))?;
        }
        Op::HwptAlloc => {
            let (mut s, size) = read::<a::HwptAlloc>(k.user(), ptr)?;
            if s.data_len > a::MAX_STRUCT {
                return Err(Errno::E2BIG);
            }
            let data = k.user().read(s.data_uptr, s.data_len as usize)?;
            // `with` may run its closure once only, so the arguments move in once.
            let mut args = Some(abi_glue::hwpt_alloc(&s, &data)?);
            let (id, stats) = with(k, |fd, units, mem| {
                let id = fd.hwpt_alloc(units, mem, args.take().ok_or(Errno::EIO)?)?;
                Ok((id, fd.shadow_stats(id)))
            })?;
            if let Some(st) = stats {
                log::info!(
                    "ioas: nested HWPT {id}: stage 1 shadowed, {} page(s) mapped, {} table entries read",
                    st.pages,
                    st.last_reads
                );
            }
            s.out_hwpt_id = id;
            write(k.user(), ptr, &s, size)?;
        }
        Op::HwptInvalidate => {
            let (mut s, size) = read::<a::HwptInvalidate>(k.user(), ptr)?;
            let bytes = abi_glue::invalidation_bytes(&s).and_then(|n| k.user().read(s.data_uptr, n));
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    // Nothing was handled.
                    s.entry_num = 0;
                    write(k.user(), ptr, &s, size)?;
                    return Err(e);
                }
            };
            let (handled, result) = with(k, |fd, units, mem| {
                Ok(abi_glue::invalidate(fd, units, mem, s.hwpt_id, s.data_type, &bytes, s.entry_len as usize))
            })?;
            s.entry_num = handled;
            write(k.user(), ptr, &s, size)?;
            result?;
        }
        Op::FaultQueueAlloc => {
            let (mut s, size) = read::<a::FaultQueueAlloc>(k.user(), ptr)?;
            let capacity = abi_glue::fault_queue_capacity(&s)?;
            s.out_fault_id = with(k, |fd, _, _| fd.fault_queue_alloc(capacity))?;
            write(k.user(), ptr, &s, size)?;
        }
        Op::FaultRead => {
            let (mut s, size) = read::<a::FaultRead>(k.user(), ptr)?;
            if s.timeout_ms > 10_000 || s.num > 1024 {
                return Err(Errno::EINVAL);
            }
            // The buffer is checked before records leave the queue, so none is lost to a bad pointer.
            let room_bytes = s.num as usize * core::mem::size_of::<a::FaultRecord>();
            k.user().write(s.records, &fallible::try_filled(0u8, room_bytes).map_err(nomem)?)?;
            // Room for the records they turn into, before any leaves its queue.
            let mut out: Vec<a::FaultRecord> = Vec::new();
            out.try_reserve_exact(s.num as usize).map_err(|_| Errno::ENOMEM)?;
            let deadline = k.now_ns().saturating_add(u64::from(s.timeout_ms) * 1_000_000);
            let (records, overflows) = loop {
                let (records, overflows) = with(k, |fd, _, _| fd.fault_read(s.fault_id, s.num as usize))?;
                if !records.is_empty() || s.num == 0 || k.now_ns() >= deadline {
                    break (records, overflows);
                }
                // Faults are polled: look again after a short sleep.
                k.wait_for_faults();
            };
            // Within the room reserved above (`fault_read` takes at most `num`).
            out.extend(records.iter().take(s.num as usize).map(abi_glue::fault_record));
            k.user().write(s.records, out.as_bytes())?;
            let room = s.num;
            s.num = out.len() as u32;
            s.out_overflows = overflows;
            write(k.user(), ptr, &s, size)?;
            // Waited for a record that never came (asking for none is no timeout).
            if out.is_empty() && s.timeout_ms > 0 && room > 0 {
                return Err(Errno::ETIMEDOUT);
            }
        }
        Op::GetHwInfo => {
            let (mut s, size) = read::<a::HwInfo>(k.user(), ptr)?;
            let (unit, info, flushes) = with(k, |fd, units, _| {
                let (unit, _) = fd.device_unit(s.dev_id)?;
                let info = units[unit].try_info().map_err(|_| Errno::ENOMEM)?;
                Ok((unit, info, units[unit].flushes()))
            })?;
            s.out_flushes = flushes;
            let mut name = NameField { bytes: [0; 16], len: 0 };
            let _ = k.write_unit_name(unit, &mut name);
            s.out_unit_name = name.bytes;
            s.out_kind = match info.kind {
                iommu::UnitKind::Vtd => a::hw_kind::VTD,
                iommu::UnitKind::AmdVi => a::hw_kind::AMDVI,
                iommu::UnitKind::Smmuv3 => a::hw_kind::SMMUV3,
                iommu::UnitKind::VirtioIommu => a::hw_kind::VIRTIO_IOMMU,
                iommu::UnitKind::Mock => a::hw_kind::MOCK,
                iommu::UnitKind::NoIommu => a::hw_kind::NOIOMMU,
            };
            let regs: Vec<a::HwReg> = fallible::try_collect(info.raw.iter().map(|&(name, value)| {
                let mut n = [0u8; 8];
                let b = name.as_bytes();
                n[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
                a::HwReg { name: n, value }
            }))
            .map_err(nomem)?;
            // The typed part first: it is complete even when the raw registers do not fit.
            let (data_type, typed) = abi_glue::typed_hw_info(&info);
            s.out_data_type = data_type;
            s.out_hwpt_alloc_types = abi_glue::hwpt_alloc_types(info.kind);
            s.out_invalidate_types = abi_glue::invalidate_types(info.kind);
            if s.data_len > 0 {
                let n = typed.len().min(s.data_len as usize);
                if n > 0 {
                    k.user().write(s.data_uptr, &typed[..n])?;
                }
                s.data_len = n as u32;
            }
            let room = s.num_regs as usize;
            s.num_regs = regs.len() as u32;
            if regs.len() > room {
                write(k.user(), ptr, &s, size)?;
                return Err(Errno::E2BIG);
            }
            // A unit without registers (no IOMMU) writes none, wherever `data` points.
            if !regs.is_empty() {
                k.user().write(s.data, regs.as_bytes())?;
            }
            write(k.user(), ptr, &s, size)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::testing::FakeMemory;
    use alloc::boxed::Box;
    use alloc::vec;
    use iommu::mock::{MockConfig, MockIommu};
    use iommu::Iommu;

    const AT: u64 = 0x1000;

    /// User memory at [`AT`] (one page unless a test asks for more); everything else `EFAULT`.
    struct OnePage(Vec<u8>);

    impl UserMemory for OnePage {
        fn read(&self, va: u64, len: usize) -> Result<Vec<u8>, Errno> {
            let off =
                va.checked_sub(AT).filter(|o| o + len as u64 <= self.0.len() as u64).ok_or(Errno::EFAULT)? as usize;
            Ok(self.0[off..off + len].to_vec())
        }
        fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Errno> {
            let off =
                va.checked_sub(AT).filter(|o| o + bytes.len() as u64 <= self.0.len() as u64).ok_or(Errno::EFAULT)?
                    as usize;
            self.0[off..off + bytes.len()].copy_from_slice(bytes);
            Ok(())
        }
    }

    struct Host {
        fd: Iommufd,
        units: Vec<Box<dyn Iommu>>,
        mem: FakeMemory,
        user: OnePage,
    }

    impl Kernel for Host {
        fn user(&mut self) -> &mut dyn UserMemory {
            &mut self.user
        }
        fn with_fd(&mut self, f: &mut TableOp<'_>) -> Result<(), Errno> {
            f(&mut self.fd, &mut self.units, &mut self.mem)
        }
        fn bind_target(&mut self, _bdf: u64) -> Result<(usize, DeviceId), Errno> {
            Ok((0, DeviceId(0x10)))
        }
        fn write_unit_name(&self, _unit: usize, out: &mut dyn fmt::Write) -> fmt::Result {
            out.write_str("mock0")
        }
        fn now_ns(&self) -> u64 {
            0
        }
        fn wait_for_faults(&mut self) {}
    }

    fn host() -> Host {
        let cfg = MockConfig { devices: vec![DeviceId(0x10)], ..MockConfig::default() };
        Host {
            fd: Iommufd::new(),
            units: vec![Box::new(MockIommu::new(cfg))],
            mem: FakeMemory::default(),
            user: OnePage(vec![0; 4096]),
        }
    }

    /// Runs `op` with a struct of `size` bytes (the `size` field says
    /// `field`) whose bytes past the header are `fill`.
    fn call(op: u64, size: usize, field: u32, flags: u32, tail: Option<(usize, u8)>) -> Result<u64, Errno> {
        let mut h = host();
        let mut bytes = vec![0u8; size.max(8)];
        bytes[..4].copy_from_slice(&field.to_le_bytes());
        bytes[4..8].copy_from_slice(&flags.to_le_bytes());
        if let Some((at, b)) = tail {
            bytes[at] = b;
        }
        h.user.write(AT, &bytes[..size.max(4)]).unwrap();
        dispatch(&mut h, op, AT)
    }

    /// The size rules, on every op: shorter than its struct (down to 0) is
    /// EINVAL, beyond MAX_STRUCT E2BIG, a longer struct with a non-zero byte
    /// past what the ABI knows E2BIG, an unknown flag EINVAL, a struct
    /// pointer outside user memory EFAULT. None of these leaves an object.
    #[test]
    fn size_rules_hold_on_every_op() {
        let sizes: [(Op, usize); 16] = [
            (Op::IoasAlloc, core::mem::size_of::<a::IoasAlloc>()),
            (Op::Destroy, core::mem::size_of::<a::Destroy>()),
            (Op::IoasIovaRanges, core::mem::size_of::<a::IoasIovaRanges>()),
            (Op::IoasAllowIovas, core::mem::size_of::<a::IoasAllowIovas>()),
            (Op::IoasMap, core::mem::size_of::<a::IoasMap>()),
            (Op::IoasUnmap, core::mem::size_of::<a::IoasUnmap>()),
            (Op::IoasCopy, core::mem::size_of::<a::IoasCopy>()),
            (Op::IoasOption, core::mem::size_of::<a::IoasOption>()),
            (Op::DeviceBind, core::mem::size_of::<a::DeviceBind>()),
            (Op::DeviceAttach, core::mem::size_of::<a::DeviceAttach>()),
            (Op::DeviceDetach, core::mem::size_of::<a::DeviceDetach>()),
            (Op::GetHwInfo, core::mem::size_of::<a::HwInfo>()),
            (Op::HwptAlloc, core::mem::size_of::<a::HwptAlloc>()),
            (Op::HwptInvalidate, core::mem::size_of::<a::HwptInvalidate>()),
            (Op::FaultQueueAlloc, core::mem::size_of::<a::FaultQueueAlloc>()),
            (Op::FaultRead, core::mem::size_of::<a::FaultRead>()),
        ];
        for (op, n) in sizes {
            let o = op as u64;
            for short in [0, 4, 8, n - 1] {
                assert_eq!(call(o, short.max(4), short as u32, 0, None), Err(Errno::EINVAL), "{op:?} size {short}");
            }
            assert_eq!(call(o, n, a::MAX_STRUCT + 1, 0, None), Err(Errno::E2BIG), "{op:?} beyond MAX_STRUCT");
            assert_eq!(call(o, n + 8, (n + 8) as u32, 0, Some((n + 3, 1))), Err(Errno::E2BIG), "{op:?} unknown tail");
            assert_eq!(call(o, n, n as u32, 1 << 31, None), Err(Errno::EINVAL), "{op:?} unknown flag");
            let mut h = host();
            assert_eq!(dispatch(&mut h, o, 0x10), Err(Errno::EFAULT), "{op:?} bad struct pointer");
            assert_eq!(dispatch(&mut h, o, AT + 4094), Err(Errno::EFAULT), "{op:?} struct across the end");
            assert!(h.fd.is_empty(), "{op:?}: a refused call left an object");
        }
        assert_eq!(call(0, 16, 16, 0, None), Err(Errno::ENOTTY));
        assert_eq!(call(17, 16, 16, 0, None), Err(Errno::ENOTTY));
        // The well-formed smallest call works, and its id comes back.
        let mut h = host();
        let mut s = a::IoasAlloc { size: core::mem::size_of::<a::IoasAlloc>() as u32, ..Default::default() };
        h.user.write(AT, s.as_bytes()).unwrap();
        assert_eq!(dispatch(&mut h, Op::IoasAlloc as u64, AT), Ok(0));
        let back = h.user.read(AT, core::mem::size_of::<a::IoasAlloc>()).unwrap();
        s = a::decode(&back).unwrap();
        assert_eq!(h.fd.kind(s.out_ioas_id), Some(crate::Kind::Ioas));
    }

    /// The struct is read a page at a time: one that ends at a page's end
    /// works, one that runs onto a page that is not there is EFAULT, and one
    /// that runs onto the next page (there) is read whole.
    #[test]
    fn a_struct_is_read_across_a_page_boundary_only_where_both_pages_are() {
        let n = core::mem::size_of::<a::IoasAlloc>();
        let s = a::IoasAlloc { size: n as u32, ..Default::default() };
        let mut h = host();
        let end = AT + 4096 - n as u64;
        h.user.write(end, s.as_bytes()).unwrap();
        assert_eq!(dispatch(&mut h, Op::IoasAlloc as u64, end), Ok(0), "ends at the page's end");
        let across = AT + 4096 - 8;
        h.user.write(across, &s.as_bytes()[..8]).unwrap();
        assert_eq!(dispatch(&mut h, Op::IoasAlloc as u64, across), Err(Errno::EFAULT), "runs off the memory");
        let mut h = host();
        h.user = OnePage(vec![0; 8192]);
        h.user.write(across, s.as_bytes()).unwrap();
        assert_eq!(dispatch(&mut h, Op::IoasAlloc as u64, across), Ok(0), "runs onto the next page");
        let back: a::IoasAlloc = a::decode(&h.user.read(across, n).unwrap()).unwrap();
        assert_eq!(h.fd.kind(back.out_ioas_id), Some(crate::Kind::Ioas));
    }
}
