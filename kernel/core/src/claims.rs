//! Which task holds which PCI function: a claim takes a function's whole
//! IOMMU group, blocked at its unit first; a task's end gives every claim
//! back in the order that stops its DMA first (docs/isolation.md).
//!
//! Tasks are named by id (and by name for the log): this module knows no
//! task list.

use abi::Errno;
use alloc::vec::Vec;
use pci::ConfigAccess;

/// Which task claimed which PCI function.
static CLAIMS: spin::Mutex<Vec<(pci::Bdf, u64)>> = spin::Mutex::new(Vec::new());
/// Each claimed function's command register as the claim found it: the
/// release puts it back (Bus Master off), so a task that turned memory or
/// I/O decoding off does not leave the function unusable for the next owner.
static CLAIM_COMMAND: spin::Mutex<Vec<(pci::Bdf, u16)>> = spin::Mutex::new(Vec::new());

/// The enumerated function `bdf` (`ENOENT` when there is none).
pub fn device(bdf: pci::Bdf) -> Result<&'static crate::pci::Device, Errno> {
    crate::pci::devices().iter().find(|d| d.function.bdf == bdf).ok_or(Errno::ENOENT)
}

/// Whether any task holds `bdf`.
pub fn is_claimed(bdf: pci::Bdf) -> bool {
    CLAIMS.lock().iter().any(|(b, _)| *b == bdf)
}

/// Whether task `task` holds `bdf`.
pub fn held_by(bdf: pci::Bdf, task: u64) -> bool {
    CLAIMS.lock().iter().any(|&(b, owner)| b == bdf && owner == task)
}

/// Whether a task other than `task` holds `bdf`, or the kernel drives it.
pub fn taken_by_other(bdf: pci::Bdf, task: u64) -> bool {
    CLAIMS.lock().iter().any(|&(b, owner)| b == bdf && owner != task) || crate::pci::kernel_owned(bdf)
}

/// Claims `bdf` and every other member of its IOMMU group for task `task`
/// (`name` for the log): bridges, host and LPC bridges are `EPERM`, and so
/// is a group holding a function a task may not claim (bridges and ports
/// never join groups, `iommu::groups`; an LPC bridge or the IOMMU's function
/// can); a group with a member the kernel drives or another task holds is
/// `EBUSY`. Every member is blocked at its unit before the claim is granted
/// (a function the boot policy left in an identity or direct-map domain
/// leaves it).
pub fn claim(task: u64, name: &str, bdf: pci::Bdf) -> Result<(), Errno> {
    let dev = device(bdf)?;
    if let Err(why) = pci::policy::claimable(&dev.function) {
        log::warn!("task {name}: claim of {bdf} refused: {why}");
        return Err(Errno::EPERM);
    }
    let id = task;
    let group = crate::iommu::group_of(bdf).map_err(|_| Errno::ENOMEM)?;
    let mut claims = CLAIMS.lock();
    // Room first: once a member is blocked below, nothing may fail.
    claims.try_reserve(group.len()).map_err(|_| Errno::ENOMEM)?;
    CLAIM_COMMAND.lock().try_reserve(group.len()).map_err(|_| Errno::ENOMEM)?;
    if claims.iter().any(|&(b, owner)| b == bdf && owner == id) {
        return Err(Errno::EBUSY);
    }
    for &member in &group {
        // Bridges and ports never join a group (`iommu::groups`); a member a
        // task may not claim (an ISA / LPC bridge, the IOMMU's function) may
        // issue DMA of its own: the group is not the task's to take.
        if let Some(why) = device(member).ok().and_then(|d| pci::policy::claimable(&d.function).err()) {
            log::warn!("task {name}: claim of {bdf} refused: {member} of its IOMMU group is {why}");
            return Err(Errno::EPERM);
        }
        let theirs = claims.iter().any(|&(b, owner)| b == member && owner != id);
        if theirs || crate::pci::kernel_owned(member) {
            if member != bdf {
                log::warn!("task {name}: claim of {bdf} refused: {member} of its IOMMU group is taken");
            }
            return Err(Errno::EBUSY);
        }
    }
    for &member in &group {
        crate::iommu::block(member).map_err(|e| {
            log::error!("task {name}: claim of {bdf}: {member} cannot be blocked: {e}");
            Errno::EIO
        })?;
    }
    for member in group {
        if !claims.iter().any(|&(b, _)| b == member) {
            if let Some(access) = crate::pci::access(member) {
                let mut saved = CLAIM_COMMAND.lock();
                saved.retain(|(b, _)| *b != member);
                saved.push((member, access.read16(member, pci::reg::COMMAND)));
            }
            if member != bdf {
                log::info!("task {name}: {member} claimed with {bdf} (same IOMMU group)");
            }
            claims.push((member, id));
        }
    }
    Ok(())
}

/// Gives back every function task `task` holds, in the order that stops DMA
/// first (docs/isolation.md): every claimed function's Bus Master bit off
/// and its decode bits as the claim found them; `close` (the task's IOAS
/// objects: bound functions blocked, their mappings gone, pins dropped);
/// every claimed function blocked at its unit with the unit's caches flushed
/// and the flush completed; then `give_back(all_blocked)` (the task's own
/// frames: freed, or quarantined when a block failed); only then the claims
/// are dropped.
///
/// Allocates nothing (a task's end must not depend on the heap): the claims
/// are walked in place, under their lock (the steps above take no lock the
/// claim syscall holds after it).
pub fn release_task(task: u64, name: &str, close: impl FnOnce(), give_back: impl FnOnce(bool)) {
    let id = task;
    let claims = CLAIMS.lock();
    let mine = || claims.iter().filter(|(_, owner)| *owner == id).map(|&(bdf, _)| bdf);
    for bdf in mine() {
        if let Some(access) = crate::pci::access(bdf) {
            pci::set_bus_master(access, bdf, false);
        }
    }
    // The decode bits as the claim found them (Bus Master stays off).
    let mut saved = CLAIM_COMMAND.lock();
    for bdf in mine() {
        if let (Some(&(_, cmd)), Some(access)) = (saved.iter().find(|(b, _)| *b == bdf), crate::pci::access(bdf)) {
            access.write16(bdf, pci::reg::COMMAND, cmd & !pci::reg::CMD_BUS_MASTER);
        }
    }
    saved.retain(|(b, _)| !mine().any(|m| m == *b));
    drop(saved);
    close();
    let mut unblocked = 0;
    for bdf in mine() {
        if let Err(e) = crate::iommu::block(bdf) {
            log::error!("task {name}: {bdf} could not be blocked at its IOMMU: {e}");
            unblocked += 1;
        }
    }
    // A device of the task may still reach its memory: keep every frame.
    give_back(unblocked == 0);
    for bdf in mine() {
        if crate::iommu::behind_noiommu(bdf) {
            log::info!("task {name}: released {bdf} (bus master off; no IOMMU, nothing else stops its DMA)");
        } else {
            log::info!("task {name}: released {bdf} (bus master off, blocked)");
        }
    }
    drop(claims);
    CLAIMS.lock().retain(|(_, owner)| *owner != id);
}
