//! Pinned user pages: how the object model asks the kernel for the frames
//! behind user memory ([`Memory`]: pin, repin, unpin, quarantine, read), the
//! runs of pinned pages an IOAS maps ([`Area`]), and how such runs get into a
//! unit's domain ([`map_pages`], in physically contiguous runs so the engine
//! can use large leaves) and back out ([`merge`]: one flush per call).

use abi::Errno;
use alloc::vec::Vec;
use iommu::{DomainId, Gather, Iommu, Perms};

/// Pages are 4 KiB everywhere in this model.
pub const PAGE: u64 = 4096;

/// The task's memory, as DMA mappings see it.
pub trait Memory {
    /// Pins the pages of `[va, va + len)` (page aligned, mapped, writable when
    /// `write`) and returns their physical addresses, one per page.
    fn pin(&mut self, va: u64, len: u64, write: bool) -> Result<Vec<u64>, Errno>;
    /// Adds one more pin to each page (the same pages mapped again).
    fn repin(&mut self, pages: &[u64]);
    /// Drops one pin of each page.
    fn unpin(&mut self, pages: &[u64]);
    /// Gives up on `pages` instead of unpinning them: the unit may still
    /// reach them (a flush or a detach failed), so they must never be handed
    /// out again. They stay pinned forever, counted and logged.
    fn quarantine(&mut self, pages: &[u64]);
    /// Reads the 8-byte-aligned `u64` at physical address `pa` of a page this
    /// table pinned (a user's stage-1 table entry); `None`: cannot be read (the
    /// entry is then treated as not present). The default reads nothing.
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let _ = pa;
        None
    }
}

/// A mapping: a run of pinned pages at an IOVA.
#[derive(Debug, Clone)]
pub(crate) struct Area {
    pub(crate) len: u64,
    pub(crate) pages: Vec<u64>,
    pub(crate) perms: Perms,
}

/// A map that failed after its pages were pinned: they go back to the task
/// (`clean`: every unit confirmed it forgot what was mapped) or to quarantine.
pub(crate) struct InsertFailed {
    pub(crate) errno: Errno,
    pub(crate) pages: Vec<u64>,
    pub(crate) clean: bool,
}

impl InsertFailed {
    /// Unpins (or quarantines) the pages; the errno for the caller.
    pub(crate) fn give_back(self, mem: &mut dyn Memory) -> Errno {
        if self.clean {
            mem.unpin(&self.pages);
        } else {
            mem.quarantine(&self.pages);
        }
        self.errno
    }
}

/// Maps `pages` (one PA per 4 KiB page) at `at`, in runs of physically
/// contiguous pages so the engine can use large leaves (4 KiB calls only when
/// `huge` is off); on failure undoes what it mapped and says whether that
/// undo (unmap + flush) succeeded.
pub(crate) fn map_pages(
    u: &mut dyn Iommu,
    domain: DomainId,
    at: u64,
    pages: &[u64],
    perms: Perms,
    huge: bool,
) -> Result<(), (iommu::Error, bool)> {
    let mut i = 0;
    while i < pages.len() {
        let mut n = 1;
        while huge && i + n < pages.len() && pages[i + n] == pages[i] + n as u64 * PAGE {
            n += 1;
        }
        if let Err(e) = u.map(domain, at + i as u64 * PAGE, pages[i], n as u64 * PAGE, perms) {
            let clean = i == 0 || iommu::unmap_and_flush(u, domain, at, i as u64 * PAGE).is_ok();
            return Err((e, clean));
        }
        i += n;
    }
    Ok(())
}

/// Adds `g` to `into` (one flush for both); without heap to do so, `g` is
/// flushed on its own right away (one flush more, nothing lost).
pub(crate) fn merge(unit: &mut dyn Iommu, domain: DomainId, into: &mut Gather, g: Gather) -> Result<(), iommu::Error> {
    match into.try_merge(g) {
        Ok(()) => Ok(()),
        Err(g) => unit.flush(domain, g),
    }
}
