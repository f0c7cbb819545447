//! Shadowing of a user-owned stage-1 table (x86-64 paging: VT-d first
//! stage, AMD v2) into a kernel-owned paging domain.
//!
//! The user's table lives in its parent IOAS: every table address and every
//! output address is a parent IOVA. A sync walks a range of the user's table
//! with [`io_pgtable::walk_foreign`], reading each entry through the parent
//! IOAS (IOVA → area → pinned page → [`Memory::read_u64`]), and maps into the
//! child's domain the composition: stage-1 IOVA → parent IOVA → pinned page,
//! with the stage-1 permissions (R/W of every level on the path) ∧ the area's.
//! What cannot be composed is left unmapped, so a device's DMA there faults:
//! an entry that cannot be read, an output outside every area, a page the unit
//! refuses (outside its aperture, taken by a direct-map region, a permission
//! set its format cannot express).
//!
//! What a child has mapped is kept as chunks (one `map` call each: a run of
//! physically contiguous pages at consecutive stage-1 and parent IOVAs, inside
//! one IOAS area, possibly across many stage-1 leaves), so a re-sync unmaps
//! exactly what it mapped and never asks the unit to split a large leaf: a
//! re-sync widens its range to whole chunks (re-reading more of the user's
//! table than asked is allowed: hardware may drop more IOTLB entries too). An index by parent
//! IOVA finds the chunks an IOAS unmap hits.
//!
//! Heap: the chunks and their index are [`TryMap`]s, room for a chunk is
//! reserved before the unit maps it, and a sync or a purge walks the chunks
//! without listing them, so a full heap stops a sync with `ENOMEM` with what
//! is recorded still exactly what is mapped, and a purge never allocates.
//!
//! Not emulated: accessed/dirty bits are never written back into the user's
//! table, and U/S is ignored (every device access is treated alike).

use crate::error::{errno, nomem};
use crate::pages::{merge, Area, Memory, PAGE};
use abi::Errno;
use core::cell::Cell;
use core::ops::Bound;
use fallible::TryMap;
use io_pgtable::formats::X86Paging;
use io_pgtable::{level_size, Entry, Format, Gather};
use iommu::{DomainId, Iommu, Perms};

/// Bounds on the work one child may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLimits {
    /// Most 4 KiB pages a child may have mapped (default 2^20: 4 GiB). A sync
    /// that would go beyond stops with `ENOSPC`.
    pub max_pages: u64,
    /// Most table entries one sync may read (default 2^23). A sync that runs
    /// out stops with `ENOSPC`: a table that fans out without end (every entry
    /// pointing back at its own table) costs this much and no more.
    pub max_reads: u64,
}

impl Default for ShadowLimits {
    fn default() -> Self {
        ShadowLimits { max_pages: 1 << 20, max_reads: 1 << 23 }
    }
}

/// What shadowing a nested child costs, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// 4 KiB pages mapped in the child's domain now.
    pub pages: u64,
    /// Syncs so far (the one at creation and one per invalidation entry).
    pub syncs: u64,
    /// Stage-1 4 KiB pages the last sync found mapped by the user's table
    /// (composed or not).
    pub last_walked: u64,
    /// Table entries the last sync read.
    pub last_reads: u64,
}

/// A run mapped with one `map` call.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Parent IOVA of its first page.
    src: u64,
    /// Length in bytes.
    len: u64,
    /// Size of the stage-1 leaves it came from (an invalidation of any page
    /// of a leaf re-reads the whole leaf, as hardware drops the whole entry).
    leaf: u64,
}

/// The shadow state of one nested child.
#[derive(Debug, Default)]
pub(crate) struct Shadow {
    /// Parent IOVA of the user's top-level table.
    root: u64,
    /// 4 or 5.
    levels: usize,
    /// Stage-1 IOVA → chunk.
    chunks: TryMap<u64, Chunk>,
    /// (parent IOVA, stage-1 IOVA) of every chunk (a map to nothing rather
    /// than a `TrySet`, for its `try_reserve`).
    by_src: TryMap<(u64, u64), ()>,
    stats: ShadowStats,
}

impl Shadow {
    /// Gives back room its maps no longer need (`TryMap::shrink`).
    pub(crate) fn shrink(&mut self) {
        self.chunks.shrink();
        self.by_src.shrink();
    }
}

/// What a sync works with.
pub(crate) struct SyncCtx<'a> {
    /// The areas of the parent IOAS (the user's tables and output addresses
    /// live there).
    pub areas: &'a TryMap<u64, Area>,
    /// The parent IOAS's `huge_pages` hint.
    pub huge_pages: bool,
    /// The task's memory, for reading table entries.
    pub mem: &'a dyn Memory,
    /// The child's unit.
    pub unit: &'a mut dyn Iommu,
    /// The child's domain.
    pub domain: DomainId,
    /// Work bounds.
    pub limits: ShadowLimits,
}

/// Physically contiguous pages at consecutive stage-1 and parent IOVAs,
/// inside one IOAS area, with one set of permissions: one `map` call.
struct Run {
    /// The IOAS area (its first IOVA) the parent IOVAs lie in.
    area: u64,
    /// First stage-1 IOVA.
    at: u64,
    /// First parent IOVA.
    src: u64,
    perms: Perms,
    /// Size of the stage-1 leaves.
    leaf: u64,
    /// Frame of the first page (the run's frames are contiguous).
    pa: u64,
    /// Pages in the run.
    count: u64,
}

/// Reads user table entries through the IOAS, counting against a budget.
struct Reader<'a> {
    areas: &'a TryMap<u64, Area>,
    mem: &'a dyn Memory,
    reads: Cell<u64>,
    limit: u64,
    /// Set when the budget ran out.
    exhausted: Cell<bool>,
    /// Set to end the walk early (every read answers `None`).
    stop: Cell<bool>,
    /// The last table page read: (parent IOVA of the page, its frame).
    last_page: Cell<Option<(u64, u64)>>,
}

impl Reader<'_> {
    fn read(&self, table: u64, index: usize) -> Option<u64> {
        if self.stop.get() {
            return None;
        }
        let n = self.reads.get() + 1;
        self.reads.set(n);
        if n > self.limit {
            self.exhausted.set(true);
            self.stop.set(true);
            return None;
        }
        let addr = table.checked_add(index as u64 * 8)?;
        let page = addr & !(PAGE - 1);
        // Walks read many entries of one table page: its frame is remembered.
        let frame = match self.last_page.get() {
            Some((p, frame)) if p == page => frame,
            _ => {
                let (&start, area) = self.areas.range(..=addr).next_back()?;
                let off = addr - start;
                // The walk reads through stage 2: the area must be readable.
                if off > area.len - 1 || !area.perms.contains(Perms::READ) {
                    return None;
                }
                let frame = area.pages.page(off / PAGE)?;
                self.last_page.set(Some((page, frame)));
                frame
            }
        };
        self.mem.read_u64(frame + addr % PAGE)
    }
}

/// Whether a unit's refusal to map a page only means "this page cannot be
/// translated" (the page stays unmapped) rather than a failure of the sync.
fn page_refused(e: iommu::Error) -> bool {
    matches!(e, iommu::Error::Map(_) | iommu::Error::OutOfAperture { .. } | iommu::Error::NotSupported(_))
}

impl Shadow {
    /// An empty shadow of the table at parent IOVA `root`.
    pub fn new(root: u64, levels: usize) -> Self {
        Shadow { root, levels, ..Shadow::default() }
    }

    fn format(&self) -> X86Paging {
        // 1 GiB leaves included: AMD v2 always has them, VT-d with FL1GP.
        X86Paging { levels: self.levels, max_leaf_level: 2, name: "user-stage1" }
    }

    /// Costs so far.
    pub fn stats(&self) -> ShadowStats {
        self.stats
    }

    /// Room for `more` chunks in both indexes: the next `more` inserts cannot fail.
    fn reserve(&mut self, more: usize) -> Result<(), Errno> {
        self.chunks.try_reserve(more).map_err(nomem)?;
        self.by_src.try_reserve(more).map_err(nomem)
    }

    /// Records a chunk; only after [`Shadow::reserve`] made room (else a full
    /// heap would leave it mapped but unrecorded: `ENOMEM`, recorded as far
    /// as it went, is all that can be said then).
    fn insert(&mut self, iova: u64, c: Chunk) -> Result<(), Errno> {
        self.chunks.try_insert(iova, c).map_err(nomem)?;
        if let Err(e) = self.by_src.try_insert((c.src, iova), ()) {
            self.chunks.remove(&iova);
            return Err(nomem(e));
        }
        self.stats.pages += c.len / PAGE;
        Ok(())
    }

    fn remove(&mut self, iova: u64) {
        if let Some(c) = self.chunks.remove(&iova) {
            self.by_src.remove(&(c.src, iova));
            self.stats.pages -= c.len / PAGE;
        }
    }

    /// Unmaps `[lo, hi)`, widened to whole stage-1 leaves, out of the chunk at
    /// `s` and keeps what is left of it on either side as chunks of their own;
    /// returns the range unmapped, or `None` (nothing changed) when the unit
    /// cannot unmap part of it (a large leaf would have to split); `ENOMEM`
    /// (nothing changed) when there is no room for the pieces.
    fn cut(
        &mut self,
        cx: &mut SyncCtx<'_>,
        s: u64,
        lo: u64,
        hi: u64,
        gather: &mut Gather,
    ) -> Result<Option<(u64, u64)>, Errno> {
        let Some(&c) = self.chunks.get(&s) else { return Ok(None) };
        // Whole stage-1 leaves of the chunk.
        let lo = (lo & !(c.leaf - 1)).max(s);
        let hi = hi.checked_next_multiple_of(c.leaf).unwrap_or(u64::MAX).min(s + c.len);
        if lo >= hi {
            return Ok(None);
        }
        // The pieces left on either side must be recordable once the unit unmapped the middle.
        self.reserve(2)?;
        match cx.unit.unmap(cx.domain, lo, hi - lo) {
            Ok(u) => {
                let flushed = merge(&mut *cx.unit, cx.domain, gather, u.gather);
                self.remove(s);
                if lo > s {
                    self.insert(s, Chunk { len: lo - s, ..c })?;
                }
                if hi < s + c.len {
                    self.insert(hi, Chunk { src: c.src + (hi - s), len: s + c.len - hi, leaf: c.leaf })?;
                }
                flushed.map_err(errno)?;
                Ok(Some((lo, hi)))
            }
            Err(_) => Ok(None),
        }
    }

    /// Re-reads `[start, end)` of the user's table (chunks across its ends cut
    /// or, where the unit cannot, the range widened to them; clipped to the
    /// stage-1 input space and the unit's aperture): unmaps what
    /// the child had there, maps what the table says now, flushes once. On an
    /// error what is recorded stays exactly what is mapped.
    pub fn sync(&mut self, cx: &mut SyncCtx<'_>, start: u64, end: u64) -> Result<(), Errno> {
        self.stats.syncs += 1;
        self.stats.last_walked = 0;
        self.stats.last_reads = 0;
        let (lo, hi) = self.span(cx.unit.aperture());
        let (mut start, mut end) = (start.max(lo) & !(PAGE - 1), end.min(hi).next_multiple_of(PAGE));
        if start >= end {
            return Ok(());
        }
        let mut gather = Gather::default();
        let mut result = Ok(());
        // A chunk across a boundary is cut there when the unit can unmap part
        // of it (it used small leaves); otherwise the range widens to it.
        if let Some((s, len)) = self.chunks.range(..start).next_back().map(|(&s, c)| (s, c.len)) {
            if s + len > start {
                match self.cut(cx, s, start, (s + len).min(end), &mut gather) {
                    Ok(Some((lo, hi))) => (start, end) = (lo, end.max(hi)),
                    Ok(None) => start = s,
                    Err(e) => result = Err(e),
                }
            }
        }
        if result.is_ok() {
            if let Some((s, len)) = self.chunks.range(..end).next_back().map(|(&s, c)| (s, c.len)) {
                if s + len > end {
                    match self.cut(cx, s, s.max(start), end, &mut gather) {
                        Ok(Some((lo, hi))) => (start, end) = (start.min(lo), hi),
                        Ok(None) => end = s + len,
                        Err(e) => result = Err(e),
                    }
                }
            }
        }
        // The chunks inside, one at a time (each leaves the map once unmapped).
        while result.is_ok() {
            let Some((s, len)) = self.chunks.range(start..end).next().map(|(&s, c)| (s, c.len)) else { break };
            match cx.unit.unmap(cx.domain, s, len) {
                Ok(u) => {
                    if let Err(e) = merge(&mut *cx.unit, cx.domain, &mut gather, u.gather) {
                        result = Err(errno(e));
                    }
                    self.remove(s);
                }
                Err(e) => {
                    result = Err(errno(e));
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.fill(cx, start, end);
        }
        if !gather.is_empty() {
            if let Err(e) = cx.unit.flush(cx.domain, gather) {
                result = result.and(Err(errno(e)));
            }
        }
        result
    }

    /// The stage-1 IOVAs `[lo, hi)` that can translate on a unit with `aperture`.
    fn span(&self, aperture: (u64, u64)) -> (u64, u64) {
        let top = level_size(self.levels); // 2^(12 + 9 * levels)
        let lo = aperture.0.checked_next_multiple_of(PAGE).unwrap_or(u64::MAX);
        let hi = aperture.1.saturating_add(1).min(top) & !(PAGE - 1);
        (lo, hi)
    }

    /// Maps what the user's table says about `[start, end)` (nothing of it is
    /// mapped in the child when this is called).
    fn fill(&mut self, cx: &mut SyncCtx<'_>, start: u64, end: u64) -> Result<(), Errno> {
        let fmt = self.format();
        let (root, levels) = (self.root, self.levels);
        let reader = Reader {
            areas: cx.areas,
            mem: cx.mem,
            reads: Cell::new(0),
            limit: cx.limits.max_reads,
            exhausted: Cell::new(false),
            stop: Cell::new(false),
            last_page: Cell::new(None),
        };
        let areas = cx.areas;
        let huge = cx.huge_pages;
        let (unit, domain, max_pages) = (&mut *cx.unit, cx.domain, cx.limits.max_pages);
        let mut err: Option<Errno> = None;
        let mut walked = 0u64;
        // Write permission of the tables above the last leaf's table: (key, writable).
        let mut path_cache: Option<((usize, u64), bool)> = None;
        // The run being gathered for one map call.
        let mut pending: Option<Run> = None;
        io_pgtable::walk_foreign(&fmt, root, &mut |t, i| reader.read(t, i), start, end, &mut |va, size, out, perms| {
            if err.is_some() {
                return;
            }
            let (lo, hi) = (va.max(start), va.saturating_add(size).min(end));
            walked += (hi - lo) / PAGE;
            let mut perms = perms & (Perms::READ | Perms::WRITE);
            if perms.contains(Perms::WRITE) {
                let leaf_level = (size.trailing_zeros() as usize - 12) / 9;
                let key = (leaf_level, va >> (12 + 9 * (leaf_level + 1)));
                let writable = match path_cache {
                    Some((k, w)) if k == key => w,
                    _ => {
                        let w = path_writable(&fmt, &reader, root, levels, leaf_level, va);
                        path_cache = Some((key, w));
                        w
                    }
                };
                perms.set(Perms::WRITE, writable);
            }
            let Some(src_lo) = out.checked_add(lo - va) else { return };
            let Some(src_last) = src_lo.checked_add(hi - lo - 1) else { return };
            // The areas overlapping [src_lo, src_last], in order.
            let first = match areas.range(..=src_lo).next_back() {
                Some((&s, a)) if s + (a.len - 1) >= src_lo => s,
                _ => src_lo,
            };
            for (&s, area) in areas.range(first..=src_last) {
                let p = perms & area.perms;
                if !p.intersects(Perms::READ | Perms::WRITE) {
                    continue;
                }
                let (a_lo, a_last) = (s.max(src_lo), (s + (area.len - 1)).min(src_last));
                let first_page = (a_lo - s) / PAGE;
                let iova = lo + (a_lo - src_lo);
                // The area's runs of contiguous frames in the window, split
                // into single pages when large leaves are not wanted.
                for (i, first_pa, n) in area.pages.pieces(first_page, (a_last - a_lo) / PAGE + 1, huge) {
                    let at = iova + i * PAGE;
                    let src = a_lo + i * PAGE;
                    // Leaves that continue the pending run (same area and
                    // permissions, consecutive IOVAs, parent IOVAs and frames)
                    // join it: one map call for many stage-1 pages.
                    let joins = pending.as_ref().is_some_and(|r: &Run| {
                        let len = r.count * PAGE;
                        huge && r.area == s
                            && r.perms == p
                            && r.leaf == size
                            && r.at + len == at
                            && r.src + len == src
                            && r.pa + len == first_pa
                    });
                    if joins {
                        if let Some(r) = pending.as_mut() {
                            r.count += n;
                        }
                    } else {
                        if let Some(r) = pending.take() {
                            if let Err(e) =
                                self.map_run(unit, domain, max_pages, r.at, r.src, r.leaf, r.pa, r.count, r.perms)
                            {
                                err = Some(e);
                                reader.stop.set(true);
                                return;
                            }
                        }
                        pending = Some(Run { area: s, at, src, perms: p, leaf: size, pa: first_pa, count: n });
                    }
                }
            }
        });
        if let (None, Some(r)) = (err, pending.take()) {
            if let Err(e) = self.map_run(unit, domain, max_pages, r.at, r.src, r.leaf, r.pa, r.count, r.perms) {
                err = Some(e);
            }
        }
        self.stats.last_walked = walked;
        self.stats.last_reads = reader.reads.get().min(cx.limits.max_reads);
        match err {
            Some(e) => Err(e),
            None if reader.exhausted.get() => Err(Errno::ENOSPC),
            None => Ok(()),
        }
    }

    /// Maps `n` physically contiguous pages from frame `pa` at stage-1 IOVA
    /// `at` (parent IOVA `src`); pages the unit refuses are left out.
    #[allow(clippy::too_many_arguments)]
    fn map_run(
        &mut self,
        unit: &mut dyn Iommu,
        domain: DomainId,
        max_pages: u64,
        at: u64,
        src: u64,
        leaf: u64,
        pa: u64,
        n: u64,
        perms: Perms,
    ) -> Result<(), Errno> {
        if self.stats.pages + n > max_pages {
            return Err(Errno::ENOSPC);
        }
        // Room to record the chunk before the unit maps it.
        self.reserve(1)?;
        match unit.map(domain, at, pa, n * PAGE, perms) {
            Ok(()) => self.insert(at, Chunk { src, len: n * PAGE, leaf }),
            Err(e) if page_refused(e) && n > 1 => {
                // One page in the way (a direct-map region, say): the others still go in.
                for k in 0..n {
                    let off = k * PAGE;
                    self.map_run(unit, domain, max_pages, at + off, src + off, leaf, pa + off, 1, perms)?;
                }
                Ok(())
            }
            Err(e) if page_refused(e) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Unmaps every chunk pointing into parent IOVAs `[first, last]` (the
    /// pages of an area about to be unpinned) into `gather`; the caller
    /// flushes. A chunk the unit fails to unmap stays recorded. Walks the
    /// index without listing it: never allocates.
    pub fn purge(
        &mut self,
        unit: &mut dyn Iommu,
        domain: DomainId,
        first: u64,
        last: u64,
        gather: &mut Gather,
    ) -> Result<(), Errno> {
        let mut result = Ok(());
        let mut from = Bound::Included((first, 0));
        loop {
            let to = Bound::Included((last, u64::MAX));
            let Some(&(src, iova)) = self.by_src.range((from, to)).next().map(|(k, _)| k) else { break };
            from = Bound::Excluded((src, iova));
            let Some(len) = self.chunks.get(&iova).map(|c| c.len) else { continue };
            match unit.unmap(domain, iova, len) {
                Ok(u) => {
                    result = result.and(merge(unit, domain, gather, u.gather).map_err(errno));
                    self.remove(iova);
                }
                Err(e) => result = result.and(Err(errno(e))),
            }
        }
        result
    }
}

/// Whether every table entry above the leaf mapping `va` at `leaf_level`
/// allows writes (x86 paging: R/W, bit 1, on every level of the path).
fn path_writable(fmt: &X86Paging, reader: &Reader<'_>, root: u64, levels: usize, leaf_level: usize, va: u64) -> bool {
    let mut table = root;
    for level in (leaf_level + 1..levels).rev() {
        let Some(pte) = reader.read(table, ((va >> (12 + 9 * level)) & 0x1FF) as usize) else { return false };
        if pte & 2 == 0 {
            return false;
        }
        match fmt.decode(pte, level) {
            Entry::Table(next) => table = next,
            _ => return false,
        }
    }
    true
}
