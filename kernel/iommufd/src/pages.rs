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

/// A run of physically contiguous 4 KiB pages: `pages` frames from `pa`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    /// Physical address of the first frame.
    pub pa: u64,
    /// Frames in the run.
    pub pages: u64,
}

/// One run of [`Runs`], with the index of its first page in the whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Extent {
    index: u64,
    run: Run,
}

/// The frames behind a range of user memory, in order, as runs of
/// physically contiguous pages (one entry per run, not per page). The first
/// run is held inline, so a range of one run (every 4 KiB map) allocates
/// nothing; more runs grow a vector fallibly (`ENOMEM`).
#[derive(Debug, Clone, Default)]
pub struct Runs {
    first: Run,
    rest: Vec<Extent>,
    pages: u64,
}

impl Runs {
    /// No pages.
    pub const fn new() -> Self {
        Runs { first: Run { pa: 0, pages: 0 }, rest: Vec::new(), pages: 0 }
    }

    /// Pages in all.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether there are no pages.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Runs held (at most one per page; one for contiguous memory).
    pub fn run_count(&self) -> usize {
        usize::from(self.pages != 0) + self.rest.len()
    }

    /// Appends the page at `pa` (joining the last run when it continues it).
    pub fn push(&mut self, pa: u64) -> Result<(), Errno> {
        self.push_run(Run { pa, pages: 1 })
    }

    /// Appends `run` (joined to the last run when it continues it; a run of
    /// no pages is ignored). `ENOMEM`: no room for a new run; nothing changed.
    pub fn push_run(&mut self, run: Run) -> Result<(), Errno> {
        if run.pages == 0 {
            return Ok(());
        }
        let total = self.pages.checked_add(run.pages).ok_or(Errno::EINVAL)?;
        let last = match self.rest.last_mut() {
            Some(e) => &mut e.run,
            None => &mut self.first,
        };
        if self.pages == 0 {
            *last = run;
        } else if last.pa.checked_add(last.pages * PAGE) == Some(run.pa) {
            last.pages += run.pages;
        } else {
            self.rest.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
            self.rest.push(Extent { index: self.pages, run });
        }
        self.pages = total;
        Ok(())
    }

    /// The runs, in order.
    pub fn iter(&self) -> impl Iterator<Item = Run> + '_ {
        let first = (self.pages != 0).then_some(self.first);
        first.into_iter().chain(self.rest.iter().map(|e| e.run))
    }

    /// Every frame's physical address, in order.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().flat_map(|r| (0..r.pages).map(move |i| r.pa + i * PAGE))
    }

    /// The frame of page `index` (a binary search over the runs).
    pub fn page(&self, index: u64) -> Option<u64> {
        if index >= self.pages {
            return None;
        }
        let at = self.rest.partition_point(|e| e.index <= index);
        let (start, run) = match at.checked_sub(1) {
            Some(i) => (self.rest[i].index, self.rest[i].run),
            None => (0, self.first),
        };
        Some(run.pa + (index - start) * PAGE)
    }

    /// The runs of pages `[first, first + count)`, clipped to that window,
    /// each with the index of its first page relative to `first`.
    pub fn window(&self, first: u64, count: u64) -> impl Iterator<Item = (u64, Run)> + '_ {
        let end = first.saturating_add(count).min(self.pages);
        // The run holding `first`, then the ones after it.
        let skip = self.rest.partition_point(|e| e.index <= first);
        let head = (skip == 0 && self.pages != 0).then_some(Extent { index: 0, run: self.first });
        let from = skip.saturating_sub(1);
        // In order: the walk ends at the first run past the window.
        let runs = head.into_iter().chain(self.rest[from.min(self.rest.len())..].iter().copied());
        runs.take_while(move |e| e.index < end).filter_map(move |e| {
            let (lo, hi) = (e.index.max(first), (e.index + e.run.pages).min(end));
            (lo < hi).then(|| (lo - first, Run { pa: e.run.pa + (lo - e.index) * PAGE, pages: hi - lo }))
        })
    }

    /// [`Runs::window`] as the pieces one map call each takes: whole runs
    /// when `huge` (large leaves wanted), single pages otherwise; each piece
    /// `(index relative to first, pa, pages)`.
    pub(crate) fn pieces(&self, first: u64, count: u64, huge: bool) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.window(first, count).flat_map(move |(index, run)| {
            let (calls, step) = if huge { (1, run.pages) } else { (run.pages, 1) };
            (0..calls).map(move |c| (index + c * step, run.pa + c * step * PAGE, step))
        })
    }
}

/// The task's memory, as DMA mappings see it.
pub trait Memory {
    /// Pins the pages of `[va, va + len)` (page aligned, mapped, writable when
    /// `write`) and returns their frames, as runs of contiguous pages.
    fn pin(&mut self, va: u64, len: u64, write: bool) -> Result<Runs, Errno>;
    /// Adds one more pin to each page (the same pages mapped again).
    fn repin(&mut self, pages: &Runs);
    /// Drops one pin of each page.
    fn unpin(&mut self, pages: &Runs);
    /// Gives up on `pages` instead of unpinning them: the unit may still
    /// reach them (a flush or a detach failed), so they must never be handed
    /// out again. They stay pinned forever, counted and logged.
    fn quarantine(&mut self, pages: &Runs);
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
    pub(crate) pages: Runs,
    pub(crate) perms: Perms,
}

/// A map that failed after its pages were pinned: they go back to the task
/// (`clean`: every unit confirmed it forgot what was mapped) or to quarantine.
pub(crate) struct InsertFailed {
    pub(crate) errno: Errno,
    pub(crate) pages: Runs,
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

/// Maps `pages` at `at`, one run of physically contiguous pages at a time
/// so the engine can use large leaves (4 KiB at a time when `huge` is off),
/// in one [`Iommu::map_runs`] call (one invalidation where the unit needs
/// one on map); on failure undoes what it mapped and says whether that undo
/// (unmap + flush) succeeded.
pub(crate) fn map_pages(
    u: &mut dyn Iommu,
    domain: DomainId,
    at: u64,
    pages: &Runs,
    perms: Perms,
    huge: bool,
) -> Result<(), (iommu::Error, bool)> {
    let pieces = || pages.pieces(0, pages.pages(), huge);
    let mut runs = pieces().map(|(index, pa, n)| (at + index * PAGE, pa, n * PAGE));
    let Err((e, done)) = u.map_runs(domain, &mut runs, perms) else { return Ok(()) };
    // The pieces mapped before the failure: they start at `at` and are consecutive.
    let mapped: u64 = pieces().take(done).map(|(_, _, n)| n * PAGE).sum();
    let clean = mapped == 0 || iommu::unmap_and_flush(u, domain, at, mapped).is_ok();
    Err((e, clean))
}

/// Adds `g` to `into` (one flush for both); without heap to do so, `g` is
/// flushed on its own right away (one flush more, nothing lost).
pub(crate) fn merge(unit: &mut dyn Iommu, domain: DomainId, into: &mut Gather, g: Gather) -> Result<(), iommu::Error> {
    match into.try_merge(g) {
        Ok(()) => Ok(()),
        Err(g) => unit.flush(domain, g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn runs_of(frames: &[u64]) -> Runs {
        let mut r = Runs::new();
        for &f in frames {
            r.push(f).unwrap();
        }
        r
    }

    #[test]
    fn contiguous_frames_are_one_run_held_inline() {
        let r = runs_of(&[0x1000, 0x2000, 0x3000]);
        assert_eq!(r.run_count(), 1);
        assert!(r.rest.capacity() == 0, "one run allocates nothing");
        assert_eq!(r.iter().collect::<Vec<_>>(), [Run { pa: 0x1000, pages: 3 }]);
        assert_eq!(r.page(2), Some(0x3000));
        assert_eq!(r.page(3), None);
        assert!(Runs::new().is_empty() && Runs::new().iter().next().is_none());
    }

    #[test]
    fn a_gap_or_a_step_back_starts_a_new_run() {
        let r = runs_of(&[0x5000, 0x6000, 0x1000, 0x3000, 0x4000, 0x4000]);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [
                Run { pa: 0x5000, pages: 2 },
                Run { pa: 0x1000, pages: 1 },
                Run { pa: 0x3000, pages: 2 },
                Run { pa: 0x4000, pages: 1 }
            ]
        );
        assert_eq!(r.pages(), 6);
        assert_eq!(
            r.window(1, 3).collect::<Vec<_>>(),
            [(0, Run { pa: 0x6000, pages: 1 }), (1, Run { pa: 0x1000, pages: 1 }), (2, Run { pa: 0x3000, pages: 1 })]
        );
        // A run at the top of the address space does not wrap into page 0.
        let top = runs_of(&[u64::MAX - 0xfff, 0]);
        assert_eq!(top.run_count(), 2);
    }

    proptest! {
        /// Runs against the plain per-page vector they replace: the same
        /// frames in the same order, page by page and window by window, and
        /// never more runs than breaks in contiguity.
        #[test]
        fn runs_agree_with_a_page_vector(
            steps in proptest::collection::vec((0u64..4, 1u64..5), 0..40),
            first in 0u64..200,
            count in 0u64..200,
        ) {
            // Frames: runs of `len` pages, each run a jump of `gap` pages (0: contiguous).
            let (mut frames, mut pa) = (Vec::new(), 0x10_0000u64);
            for (gap, len) in steps {
                pa += gap * PAGE;
                for _ in 0..len {
                    frames.push(pa);
                    pa += PAGE;
                }
            }
            let r = runs_of(&frames);
            prop_assert_eq!(r.pages(), frames.len() as u64);
            prop_assert_eq!(r.frames().collect::<Vec<_>>(), frames.clone());
            let breaks = frames.windows(2).filter(|w| w[1] != w[0] + PAGE).count();
            prop_assert_eq!(r.run_count(), if frames.is_empty() { 0 } else { breaks + 1 });
            for (i, &f) in frames.iter().enumerate() {
                prop_assert_eq!(r.page(i as u64), Some(f));
            }
            let expect: Vec<u64> = frames.iter().copied().skip(first as usize).take(count as usize).collect();
            let mut got = Vec::new();
            for (index, run) in r.window(first, count) {
                prop_assert_eq!(index, got.len() as u64, "windows are in order, without holes");
                got.extend((0..run.pages).map(|i| run.pa + i * PAGE));
            }
            prop_assert_eq!(got, expect);
        }
    }
}
