//! Copies between the kernel and the running task's memory, each page
//! checked in the task's page tables first: below [`USER_STACK_TOP`],
//! mapped, not device memory, and writable for a copy out.
//!
//! Each CPU keeps the last page it translated (`translate_page`): a syscall reads
//! its struct and writes its answer on one page, nearly always the same
//! page of the task's stack as the call before, so most accesses need no
//! walk of the task's tables. The kept translation is valid only while no
//! user mapping anywhere has changed since it was made: every change of a
//! task's mappings goes through this module ([`map_page`], [`unmap_page`],
//! [`prune`], [`free_space`]; clippy refuses the platform's methods
//! anywhere else, `clippy.toml`), and each one moves `GENERATION` on
//! once it changed the tables, so a translation made before is never used.

use crate::frames::FRAME_SIZE;
use crate::mm;
use crate::platform::{MapError, UserPerms};
use crate::user_layout::USER_STACK_TOP;
use abi::Errno;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// Moves on at every change of any task's user mappings.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// One translation made at [`GENERATION`] `generation`.
#[derive(Clone, Copy)]
struct Kept {
    generation: u64,
    root: u64,
    page: u64,
    pa: u64,
    perms: UserPerms,
}

/// Each CPU's last translation of a user page for an access (none at
/// first): per CPU, so tasks on different CPUs neither share the line nor
/// evict each other's entry.
static LAST: [crate::cpu::CachePadded<spin::Mutex<Option<Kept>>>; crate::cpu::MAX_CPUS] =
    [const { crate::cpu::CachePadded::new(spin::Mutex::new(None)) }; crate::cpu::MAX_CPUS];

/// Physical address and rights of user page `page` (aligned) of the space
/// rooted at `root`: the kept translation when nothing changed since it was
/// made, else a walk of the tables (kept for next time).
fn translate_page(root: u64, page: u64) -> Option<(u64, UserPerms)> {
    let generation = GENERATION.load(Ordering::Acquire);
    let kept = &LAST[crate::cpu::index()];
    if let Some(last) = kept.try_lock() {
        if let Some(k) = *last {
            if k.generation == generation && k.root == root && k.page == page {
                return Some((k.pa, k.perms));
            }
        }
    }
    let (pa, perms) = crate::platform().user_translate(root, page)?;
    // A change that raced the walk moved the generation on: the entry kept
    // here is then never used.
    if let Some(mut last) = kept.try_lock() {
        *last = Some(Kept { generation, root, page, pa, perms });
    }
    Some((pa, perms))
}

/// Every kept translation is stale from now on: called after each change,
/// so a translation made before it (even by a walk that raced the change)
/// carries an older generation.
fn mappings_changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Maps one 4 KiB user page (the platform's `user_map`, through here so
/// that kept translations stay true).
#[allow(clippy::disallowed_methods)]
pub fn map_page(root: u64, va: u64, pa: u64, perms: UserPerms) -> Result<(), MapError> {
    let r = crate::platform().user_map(root, va, pa, perms);
    mappings_changed();
    r
}

/// Unmaps one user page; the physical address it mapped.
#[allow(clippy::disallowed_methods)]
pub fn unmap_page(root: u64, va: u64) -> Result<u64, MapError> {
    // No TLB shootdown is needed (docs/smp.md): a task is single-threaded, so
    // its address space is live on at most its own CPU, and a CPU switching
    // away drops its translations (x86: the CR3 load; aarch64: TLBI
    // broadcast on unmap). Should that ever stop holding, say so loudly.
    if crate::cpu::root_active_elsewhere(root) {
        log::error!("user_access: unmap of {va:#x} in an address space another CPU runs: its TLB may keep the page");
    }
    let r = crate::platform().user_unmap(root, va);
    mappings_changed();
    r
}

/// Frees the page tables under `[start, end)` that map nothing any more.
#[allow(clippy::disallowed_methods)]
pub fn prune(root: u64, start: u64, end: u64) {
    crate::platform().user_prune(root, start, end);
    mappings_changed();
}

/// Frees a user address space's page tables (its root may be reused).
#[allow(clippy::disallowed_methods)]
pub fn free_space(root: u64) {
    crate::platform().user_space_free(root);
    mappings_changed();
}

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
    let root = crate::cpu::running_root().ok_or(Errno::EFAULT)?;
    let len = out.len();
    va.checked_add(len as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    let mut done = 0;
    while done < len {
        let at = va + done as u64;
        let (pa, perms) = translate_page(root, at & !(FRAME_SIZE - 1)).ok_or(Errno::EFAULT)?;
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
    let root = crate::cpu::running_root().ok_or(Errno::EFAULT)?;
    let end = va.checked_add(bytes.len() as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    let writable = |page| match translate_page(root, page) {
        Some((pa, perms)) if perms.write && !perms.device => Ok(pa),
        _ => Err(Errno::EFAULT),
    };
    // Check every page first, so a bad pointer writes nothing (one page,
    // nearly every call: its check is its translation).
    let mut page = va & !(FRAME_SIZE - 1);
    while page < end {
        writable(page)?;
        page += FRAME_SIZE;
    }
    let mut done = 0;
    while done < bytes.len() {
        let at = va + done as u64;
        let pa = writable(at & !(FRAME_SIZE - 1))?;
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
    let root = crate::cpu::running_root().ok_or(Errno::EFAULT)?;
    if va >= USER_STACK_TOP {
        return Err(Errno::EFAULT);
    }
    match translate_page(root, va & !(FRAME_SIZE - 1)) {
        Some((pa, perms)) if !perms.device => Ok(pa),
        _ => Err(Errno::EFAULT),
    }
}
