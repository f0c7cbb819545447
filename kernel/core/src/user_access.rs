//! Copies between the kernel and the running task's memory, each page
//! checked in the task's page tables first: below [`USER_STACK_TOP`],
//! mapped, not device memory, and writable for a copy out.

use crate::frames::FRAME_SIZE;
use crate::mm;
use crate::user_layout::USER_STACK_TOP;
use abi::Errno;
use alloc::vec::Vec;

/// Copies `len` bytes from the current task's memory, checking every page is mapped for it.
pub fn copy_from_user(va: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| Errno::ENOMEM)?;
    out.resize(len, 0);
    copy_from_user_into(va, &mut out)?;
    Ok(out)
}

/// Fills `out` from the current task's memory at `va`, checking every page
/// is mapped readable (not a device BAR); allocates nothing.
pub fn copy_from_user_into(va: u64, out: &mut [u8]) -> Result<(), Errno> {
    let root = crate::scheduler::current_root().ok_or(Errno::EFAULT)?;
    let len = out.len();
    va.checked_add(len as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    let mut done = 0;
    while done < len {
        let at = va + done as u64;
        let (pa, perms) = crate::platform().user_translate(root, at & !(FRAME_SIZE - 1)).ok_or(Errno::EFAULT)?;
        if perms.device {
            return Err(Errno::EFAULT);
        }
        let offset = at % FRAME_SIZE;
        let n = ((FRAME_SIZE - offset) as usize).min(len - done);
        let src = (mm::phys_to_virt(pa) + offset) as *const u8;
        // SAFETY: the page is mapped in the task's address space to frame `pa` (checked above), and the frame is reachable through the direct map.
        out[done..done + n].copy_from_slice(unsafe { core::slice::from_raw_parts(src, n) });
        done += n;
    }
    Ok(())
}

/// Copies `bytes` into the current task's memory at `va`, checking every page is mapped writable.
pub fn copy_to_user(va: u64, bytes: &[u8]) -> Result<(), Errno> {
    let root = crate::scheduler::current_root().ok_or(Errno::EFAULT)?;
    va.checked_add(bytes.len() as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    let p = crate::platform();
    // Check every page first, so a bad pointer writes nothing.
    let mut page = va & !(FRAME_SIZE - 1);
    while page < va + bytes.len() as u64 {
        match p.user_translate(root, page) {
            Some((_, perms)) if perms.write && !perms.device => {}
            _ => return Err(Errno::EFAULT),
        }
        page += FRAME_SIZE;
    }
    let mut done = 0;
    while done < bytes.len() {
        let at = va + done as u64;
        let (pa, _) = p.user_translate(root, at & !(FRAME_SIZE - 1)).ok_or(Errno::EFAULT)?;
        let offset = at % FRAME_SIZE;
        let n = ((FRAME_SIZE - offset) as usize).min(bytes.len() - done);
        let dst = (mm::phys_to_virt(pa) + offset) as *mut u8;
        // SAFETY: the page is mapped writable for the task to frame `pa` (checked above), reached through the direct map; `n` stays within the page.
        unsafe { core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), dst, n) };
        done += n;
    }
    Ok(())
}

/// Physical address of the user page holding `va` in the running task,
/// when it is mapped and not device memory (`EFAULT` otherwise).
pub fn translate_user(va: u64) -> Result<u64, Errno> {
    let root = crate::scheduler::current_root().ok_or(Errno::EFAULT)?;
    if va >= USER_STACK_TOP {
        return Err(Errno::EFAULT);
    }
    match crate::platform().user_translate(root, va & !(FRAME_SIZE - 1)) {
        Some((pa, perms)) if !perms.device => Ok(pa),
        _ => Err(Errno::EFAULT),
    }
}
