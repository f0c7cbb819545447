//! Device syscalls: the PCI functions a task may see, claim, map and
//! configure (`device_list`, `device_claim`, `device_map_bar`,
//! `device_config_read`, `device_config_write`).

use crate::claims;
use crate::frames::FRAME_SIZE;
use crate::platform::UserPerms;
use crate::scheduler::{current_name, with_current};
use crate::user_access::copy_to_user;
use crate::user_layout::MMAP_END;
use abi::{Errno, SysResult};
use alloc::vec::Vec;
use pci::ConfigAccess;

/// The function a syscall names by `raw` (`segment << 16 | requester ID`).
pub fn decode_bdf(raw: u64) -> Result<pci::Bdf, Errno> {
    if raw >> 32 != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(pci::Bdf::from_rid((raw >> 16) as u16, raw as u16))
}

/// `device_list(buf, len)`: one `abi::DeviceInfo` per enumerated function,
/// as many as fit; the number of functions.
pub fn sys_device_list(buf: u64, len: u64) -> SysResult {
    let devices = crate::pci::devices();
    let size = core::mem::size_of::<abi::DeviceInfo>();
    let room = (len as usize) / size;
    let topology = crate::pci::topology();
    let mut out = Vec::new();
    out.try_reserve_exact(devices.len().min(room) * size).map_err(|_| Errno::ENOMEM)?;
    for d in devices.iter().take(room) {
        let f = &d.function;
        let mut info = abi::DeviceInfo {
            size: size as u32,
            flags: 0,
            bdf: abi::bdf(f.bdf.segment, f.bdf.bus, f.bdf.dev, f.bdf.func),
            vendor: f.vendor,
            device: f.device,
            class: f.class,
            bars: Default::default(),
            group: crate::iommu::group_id(f.bdf),
            reserved: 0,
        };
        if claims::is_claimed(f.bdf) || crate::pci::kernel_owned(f.bdf) {
            info.flags |= abi::DEVICE_CLAIMED;
        }
        if crate::iommu::behind_noiommu(f.bdf) {
            info.flags |= abi::DEVICE_NO_IOMMU;
        } else if topology.and_then(|t| t.translate_pci(f.bdf.segment, f.bdf.rid())).is_some() {
            info.flags |= abi::DEVICE_BEHIND_IOMMU;
        }
        let confined = crate::iommu::interrupts_confined(f.bdf);
        if confined {
            info.flags |= abi::DEVICE_INTERRUPTS_CONFINED;
        }
        if crate::iommu::protected(f.bdf) && (confined || crate::iommu::unsafe_interrupts_allowed()) {
            info.flags |= abi::DEVICE_DMA_ALLOWED;
        }
        for b in &f.bars {
            let kind = match b.kind {
                pci::BarKind::Mem32 => abi::bar_kind::MEM32,
                pci::BarKind::Mem64 => abi::bar_kind::MEM64,
                pci::BarKind::Io => abi::bar_kind::IO,
            };
            info.bars[usize::from(b.index).min(5)] = abi::BarInfo { base: b.base, size: b.size, kind, reserved: 0 };
        }
        out.extend_from_slice(&info.to_bytes());
    }
    if !out.is_empty() {
        copy_to_user(buf, &out)?;
    }
    Ok(devices.len() as u64)
}

/// `device_claim(bdf)`: claims `bdf` and its whole IOMMU group for the
/// calling task ([`crate::claims::claim`] says which groups may be taken).
pub fn sys_device_claim(raw: u64) -> SysResult {
    let bdf = decode_bdf(raw)?;
    let id = with_current(|cur| Ok(cur.id))?;
    claims::claim(id, current_name(), bdf)?;
    Ok(0)
}

/// As [`claimed_by_current`], but a function another task holds (or the
/// kernel drives) is `EBUSY` rather than `EPERM`: what a bind answers, as
/// for a claim of a taken group.
pub fn owned_by_current(bdf: pci::Bdf) -> Result<&'static crate::pci::Device, Errno> {
    claimed_by_current(bdf).map_err(|e| {
        let id = with_current(|cur| Ok(cur.id)).unwrap_or(0);
        let taken = claims::taken_by_other(bdf, id);
        if e == Errno::EPERM && taken {
            Errno::EBUSY
        } else {
            e
        }
    })
}

/// The function `bdf` when the calling task holds it (`EPERM` otherwise).
pub fn claimed_by_current(bdf: pci::Bdf) -> Result<&'static crate::pci::Device, Errno> {
    let dev = claims::device(bdf)?;
    let id = with_current(|cur| Ok(cur.id))?;
    if claims::held_by(bdf, id) {
        Ok(dev)
    } else {
        Err(Errno::EPERM)
    }
}

/// `device_map_bar(bdf, index)`: maps a claimed function's memory BAR
/// (MSI-X pages left out) into the caller; the address of its first byte.
pub fn sys_device_map_bar(raw: u64, index: u64) -> SysResult {
    let dev = claimed_by_current(decode_bdf(raw)?)?;
    if index > 5 {
        return Err(Errno::EINVAL);
    }
    let bar = dev
        .function
        .bars
        .iter()
        .find(|b| u64::from(b.index) == index && b.kind != pci::BarKind::Io && b.base != 0)
        .copied()
        .ok_or(Errno::ENOENT)?;
    let all = crate::pci::functions();
    if pci::assign::bar_shares_page(all, dev.function.bdf, bar.index) {
        log::warn!(
            "task {}: BAR{} of {} shares a 4 KiB page with another function's registers: not mapped",
            current_name(),
            bar.index,
            dev.function.bdf
        );
        return Err(Errno::EPERM);
    }
    let pa = crate::pci::bar_cpu_address(dev, &bar);
    let span = bar.size.max(FRAME_SIZE).next_multiple_of(FRAME_SIZE);
    // The MSI-X table and PBA belong to the kernel: their pages stay holes.
    let msix = pci::policy::msix_pages(&dev.function, bar.index);
    if !msix.is_empty() {
        log::info!(
            "task {}: BAR{} of {}: MSI-X pages {:x?} left unmapped (the kernel owns the table)",
            current_name(),
            bar.index,
            dev.function.bdf,
            msix.as_slice()
        );
    }
    with_current(|cur| {
        let va = cur.next_va;
        if va + span > MMAP_END {
            return Err(Errno::ENOMEM);
        }
        let perms = UserPerms { write: true, exec: false, device: true };
        for off in (0..span).step_by(FRAME_SIZE as usize) {
            if msix.contains(off) {
                continue;
            }
            crate::user_access::map_page(cur.root, va + off, (pa & !(FRAME_SIZE - 1)) + off, perms)
                .map_err(|_| Errno::ENOMEM)?;
        }
        cur.next_va = va + span + FRAME_SIZE;
        Ok(va + (pa % FRAME_SIZE))
    })
}

fn config_args(raw: u64, offset: u64, width: u64) -> Result<(&'static crate::pci::Device, u16, u16), Errno> {
    let dev = claimed_by_current(decode_bdf(raw)?)?;
    if !matches!(width, 1 | 2 | 4)
        || !offset.is_multiple_of(width)
        || offset.checked_add(width).is_none_or(|e| e > 4096)
    {
        return Err(Errno::EINVAL);
    }
    Ok((dev, offset as u16, width as u16))
}

/// `device_config_read(bdf, offset, width)`: a claimed function's
/// configuration space, 1, 2 or 4 bytes.
pub fn sys_config_read(raw: u64, offset: u64, width: u64) -> SysResult {
    let (dev, off, w) = config_args(raw, offset, width)?;
    let access = crate::pci::access(dev.function.bdf).ok_or(Errno::EIO)?;
    let v = access.read32(dev.function.bdf, off & !3) >> ((off & 3) * 8);
    Ok(u64::from(match w {
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        _ => v,
    }))
}

/// Writes a claimed function's configuration space through the per-field
/// policy (`pci::policy::check_write`): the command register's I/O, memory
/// and Bus Master bits and the device-specific bytes are writable; BARs, ROM,
/// capability pointers and structures (MSI, MSI-X, power management, PCIe),
/// extended configuration space and every bridge register are `EPERM`. Bus
/// Master can be turned on only for a function a registered IOMMU translates.
pub fn sys_config_write(raw: u64, offset: u64, width: u64, value: u64) -> SysResult {
    let (dev, off, w) = config_args(raw, offset, width)?;
    if value >> (8 * w) != 0 {
        return Err(Errno::EINVAL);
    }
    let access = crate::pci::access(dev.function.bdf).ok_or(Errno::EIO)?;
    let bdf = dev.function.bdf;
    let command = access.read16(bdf, pci::reg::COMMAND);
    match pci::policy::check_write(&dev.function, off, w, value as u32, command) {
        Err(why) => {
            log::warn!("task {}: config write {bdf} +{off:#x}/{w} refused: {why}", current_name());
            return Err(Errno::EPERM);
        }
        Ok(pci::policy::WriteKind::Command { command: new })
            if new & pci::reg::CMD_BUS_MASTER != 0
                && command & pci::reg::CMD_BUS_MASTER == 0
                && !crate::iommu::protected(bdf) =>
        {
            log::warn!("task {}: {bdf}: Bus Master refused: no IOMMU translates this function", current_name());
            return Err(Errno::EPERM);
        }
        Ok(pci::policy::WriteKind::Command { command: new })
            if new & pci::reg::CMD_BUS_MASTER != 0
                && command & pci::reg::CMD_BUS_MASTER == 0
                && !crate::iommu::interrupts_confined(bdf)
                && !crate::iommu::unsafe_interrupts_allowed() =>
        {
            log::warn!(
                "task {}: {bdf}: Bus Master refused: its IOMMU does not remap interrupts, so its DMA could send any \
                 interrupt (boot with iommu.unsafe_interrupts=allow to permit it)",
                current_name()
            );
            return Err(Errno::EPERM);
        }
        Ok(kind) => {
            if w == 1 {
                // A byte goes out as its 16-bit word, never as a dword
                // read-modify-write that would write the neighbouring
                // registers back (status is write-1-to-clear; BIST starts a
                // self test). Status bytes carry only the bits asked for.
                let (word, shift) = (off & !1, (off & 1) * 8);
                let merged = if kind == pci::policy::WriteKind::StatusClear {
                    (value as u16 & 0xFF) << shift
                } else {
                    (access.read16(bdf, word) & !(0xFF << shift)) | ((value as u16 & 0xFF) << shift)
                };
                access.write16(bdf, word, merged);
                return Ok(0);
            }
        }
    }
    match w {
        2 => access.write16(bdf, off, value as u16),
        _ => access.write32(bdf, off, value as u32),
    }
    Ok(0)
}
