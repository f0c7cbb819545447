//! One page-table engine for every IOMMU page-table format, and for the
//! aarch64 CPU's own translation tables.
//!
//! The walk, map, unmap, lookup and dirty-tracking logic is written once in
//! [`PageTable`]; each hardware format is a small [`Format`] implementation
//! that says how many levels there are, which levels may hold leaves, and how
//! to encode and decode an entry ([`formats`]: Intel VT-d second-level and
//! first-level, AMD-Vi v1 and v2, Arm LPAE stage 1 and stage 2, 4 KiB granule,
//! and [`formats::ArmCpu`], the VMSAv8-64 stage-1 tables the aarch64 board
//! builds for the kernel (TTBR1) and for user spaces (TTBR0)).
//!
//! **The CPU side.** A CPU mapping needs more than an IOMMU one: EL0 access
//! (AP\[1\]), non-global user entries (nG) and an execute bit per privilege
//! (UXN / PXN). [`Perms::USER`] carries that (the IOMMU formats ignore it);
//! [`Perms::CACHE`] picks the MAIR index (Normal write-back or Device). The
//! CPU needs a few more operations too, all on the same walk:
//! [`PageTable::from_root`] (a table the boot code built, or a space whose
//! root the kernel keeps), [`PageTable::lookup`] (the leaf and its rights),
//! [`PageTable::walk`] (each leaf of a range once, stoppable) and
//! [`PageTable::prune`] (free the tables a range no longer uses, returned as
//! [`FreedTables`] without touching the heap). Barriers, break-before-make
//! and TLB maintenance stay with the caller, as for the IOMMUs.
//!
//! **Why not x86 too.** The pc board keeps the `x86_64` crate for its CPU
//! page tables. There the user and kernel halves share one root: every
//! user PML4 copies the kernel's upper 256 entries, so a user space holds
//! subtrees it does not own, which this engine's model (a table owns every
//! frame under its root: `destroy`, `unmap` and `prune` free them) would
//! have to learn; x86 CPU attributes are PAT/PCD/PWT bits and a global bit
//! rather than a MAIR index, and the crate is needed for CR3, the MSRs, the
//! GDT and the IDT anyway. The board's code there is a thin, typed layer on
//! a maintained mapper, not a hand-written walker: sharing would add risk
//! and remove little. Arm has no shared subtrees (TTBR0 and TTBR1 are two
//! roots), so both CPU tables fit the engine as they are.
//!
//! Design points:
//! - **Frames through a seam.** Table frames are allocated, freed, read and
//!   written only through [`TableMemory`]; the kernel implements it over its
//!   direct map, the tests over a counting arena. The crate has no `unsafe`.
//! - **Largest leaf first.** `map` uses the biggest leaf the format allows at a
//!   level whenever IOVA, physical address and remaining length are aligned.
//! - **One walk per call.** `map` and `unmap` visit each table a range
//!   touches once and fill or clear it slot by slot (a 1 GiB run of 4 KiB
//!   pages is one entry write per page); the last leaf table used is
//!   remembered, so a small call next to the previous one skips the walk
//!   (see [`PageTable`]). `cargo xtask bench pgtable` prints the figures.
//! - **No silent splits.** `unmap` removes whole leaves only: a range that
//!   starts or ends inside a large leaf is refused with [`Error::SplitLeaf`]
//!   before anything changes (the generic IOAS never asks for it, because it
//!   unmaps exactly what it mapped).
//! - **Tables an unmap covers are freed** (the root excepted): a table the
//!   unmap empties in only part of its span stays for the next map there (as
//!   Linux's drivers keep theirs), a large leaf that falls on such a table
//!   goes inside it as smaller leaves, and a failed map frees only the
//!   tables it made.
//! - **Gather.** Every change returns a [`Gather`] (merged IOVA range + freed
//!   table frames) marked `#[must_use]`: the driver flushes the IOTLB for the
//!   range once, then gives the frames back with [`Gather::release`]. Freeing
//!   before the flush would let the hardware walk a reused frame.
//! - **Publication order.** A new table is filled (zeroed) before the entry
//!   that points to it is written; callers add the barrier/cache flush their
//!   hardware needs between the two (none under QEMU, coherent walks).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod formats;

use alloc::vec::Vec;
use core::fmt;

bitflags::bitflags! {
    /// Access rights and attributes of a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perms: u32 {
        /// Device may read.
        const READ = 1 << 0;
        /// Device may write.
        const WRITE = 1 << 1;
        /// Instruction fetch allowed (formats that distinguish it).
        const EXEC = 1 << 2;
        /// Cacheable / snooped access (format-specific meaning; for
        /// [`formats::ArmCpu`]: Normal write-back memory, clear: Device).
        const CACHE = 1 << 3;
        /// Unprivileged (EL0, user) access, for the CPU format
        /// ([`formats::ArmCpu`]): AP[1] set, the mapping is non-global (nG),
        /// and [`Perms::EXEC`] means EL0 may execute (UXN clear; PXN is then
        /// always set). The IOMMU formats ignore it and never report it.
        const USER = 1 << 4;
    }
}

/// Why an operation was refused. Nothing is changed when an error is returned:
/// a map that meets an existing mapping or runs out of table memory midway
/// removes the leaves it had written and frees the tables it had allocated.
/// (Those leaves were briefly visible, so a caller that lets hardware run
/// concurrently flushes the range anyway.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// IOVA, physical address or length not aligned to the smallest page.
    Unaligned,
    /// The range leaves the input address space (or wraps).
    OutOfRange,
    /// Part of the range is already mapped.
    AlreadyMapped(u64),
    /// The range starts or ends inside a larger leaf.
    SplitLeaf(u64),
    /// No table frame could be allocated.
    NoMemory,
    /// A permission set the format cannot express (e.g. write without read).
    BadPerms,
    /// Length zero.
    Empty,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unaligned => f.write_str("address or length not page aligned"),
            Error::OutOfRange => f.write_str("range outside the input address space"),
            Error::AlreadyMapped(a) => write!(f, "{a:#x} is already mapped"),
            Error::SplitLeaf(a) => write!(f, "{a:#x} lies inside a larger mapping (no silent split)"),
            Error::NoMemory => f.write_str("out of page-table memory"),
            Error::BadPerms => f.write_str("permissions the format cannot express"),
            Error::Empty => f.write_str("empty range"),
        }
    }
}

/// Where table frames live: allocation and 64-bit entry access by physical address.
pub trait TableMemory {
    /// A zeroed 4 KiB frame, or `None` when memory is exhausted.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Returns a frame obtained from [`TableMemory::alloc_table`].
    fn free_table(&mut self, pa: u64);
    /// Reads entry `index` (0–511) of the table at `table`.
    fn read(&self, table: u64, index: usize) -> u64;
    /// Writes entry `index` of the table at `table`.
    fn write(&mut self, table: u64, index: usize, value: u64);
}

/// A decoded entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Not present.
    Empty,
    /// Points to the next-level table.
    Table(u64),
    /// A leaf mapping the size of its level.
    Leaf {
        /// Output address.
        pa: u64,
        /// Rights.
        perms: Perms,
    },
}

/// A leaf as a lookup or a walk reports it, whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First input address the leaf maps (aligned to `size`).
    pub iova: u64,
    /// Bytes the leaf maps (the size of its level).
    pub size: u64,
    /// Output address of the leaf's first byte.
    pub pa: u64,
    /// Rights and attributes.
    pub perms: Perms,
}

/// Table frames a [`PageTable::prune`] unlinked, threaded into one chain
/// through their own entry 0 as in [`Gather`] (the last links to itself), so
/// that a prune needs no heap. The caller invalidates the walk caches (the
/// TLB), then gives the frames back with [`FreedTables::release`].
#[must_use = "invalidate the walk caches, then release the freed tables"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FreedTables {
    head: Option<u64>,
}

impl FreedTables {
    /// Whether no table was freed (then no invalidation is owed).
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Takes `frame`, empty, into the chain before it is unlinked.
    fn push(&mut self, mem: &mut impl TableMemory, frame: u64) {
        mem.write(frame, 0, self.head.unwrap_or(frame));
        self.head = Some(frame);
    }

    /// How many frames the chain holds.
    pub fn count(&self, mem: &impl TableMemory) -> usize {
        let mut n = 0;
        let mut next = self.head;
        while let Some(frame) = next {
            n += 1;
            let link = mem.read(frame, 0);
            next = (link != frame).then_some(link);
        }
        n
    }

    /// After the invalidation: gives the frames back, each zeroed again.
    pub fn release(self, mem: &mut impl TableMemory) {
        let mut next = self.head;
        while let Some(frame) = next {
            let link = mem.read(frame, 0);
            mem.write(frame, 0, 0);
            mem.free_table(frame);
            next = (link != frame).then_some(link);
        }
    }
}

/// One page-table format. Levels are numbered from the leaf: level 0 maps
/// 4 KiB pages, level 1 2 MiB, level 2 1 GiB, and so on (9 bits per level).
pub trait Format {
    /// Name for reports.
    fn name(&self) -> &'static str;
    /// Number of levels (the root is level `levels() - 1`).
    fn levels(&self) -> usize;
    /// Input (IOVA) address bits.
    fn ia_bits(&self) -> u32;
    /// Whether a leaf may sit at `level`.
    fn leaf_allowed(&self, level: usize) -> bool;
    /// Encodes a table pointer at `level`.
    fn encode_table(&self, pa: u64, level: usize) -> u64;
    /// Encodes a leaf at `level`.
    fn encode_leaf(&self, pa: u64, level: usize, perms: Perms) -> Result<u64, Error>;
    /// Decodes an entry found at `level`.
    fn decode(&self, pte: u64, level: usize) -> Entry;
    /// Whether the leaf `pte` records a write (formats without dirty bits: `None`).
    fn is_dirty(&self, _pte: u64) -> Option<bool> {
        None
    }
    /// `pte` with its dirty state cleared.
    fn clear_dirty(&self, pte: u64) -> u64 {
        pte
    }
}

/// The size a leaf at `level` maps.
#[inline]
pub const fn level_size(level: usize) -> u64 {
    1 << (12 + 9 * level)
}

#[inline]
fn index(iova: u64, level: usize) -> usize {
    ((iova >> (12 + 9 * level)) & 0x1FF) as usize
}

/// The entries `(index, first IOVA)` of a table at `level` covering `base..`
/// that intersect `[start, end)`. The top level of a 64-bit space has fewer
/// than 512 slots in use, so addresses are computed without overflow.
#[inline]
fn slots(base: u64, start: u64, end: u64, level: usize) -> impl Iterator<Item = (usize, u64)> {
    let shift = 12 + 9 * level as u32;
    let first = if start > base { index(start, level) } else { 0 };
    // One past the last slot holding a byte below `end` (none when `end <=
    // base`); every slot's IOVA is then at most `end - 1`: no overflow.
    let stop = match end.checked_sub(base) {
        Some(n) if n > 0 => (((n - 1) >> shift).min(511) + 1) as usize,
        _ => 0,
    };
    (first..stop).map(move |i| (i, base + ((i as u64) << shift)))
}

/// Whether every entry of `table` is zero. `hint` is the last index just
/// cleared: its neighbours are checked first, so unmapping pages in order does
/// not rescan the whole table each time.
fn table_empty(mem: &impl TableMemory, table: u64, hint: usize) -> bool {
    if hint + 1 < 512 && mem.read(table, hint + 1) != 0 {
        return false;
    }
    if hint > 0 && mem.read(table, hint - 1) != 0 {
        return false;
    }
    (0..512).all(|j| mem.read(table, j) == 0)
}

/// Work the caller owes after a change: flush `start..end` from the IOTLB, then
/// release the freed table frames.
///
/// The freed frames are threaded into chains through their own entry 0 (the
/// link is the next frame's address; the last frame links to itself), and
/// `freed` holds only the chains' heads: one for a gather from one `unmap`,
/// more after [`Gather::try_merge`]. A freed frame is no longer referenced by the
/// table, and a walker that still holds a stale pointer to it (until the
/// flush) reads a 4 KiB-aligned value there: its low 12 bits, which hold the
/// present / valid bits of every format, are zero, so it sees a not-present
/// entry as it did before (`gather_links_decode_as_empty` checks every format).
///
/// So an unmap allocates at most once, for the first freed table's head, and
/// never fails for it: without room it leaves that table (and the tables
/// above it) in place, empty, to be reused by a later map or freed with the
/// table. [`Gather::try_merge`] reserves room for the other gather's heads;
/// should the heap be full it hands that gather back, for the caller to
/// flush on its own.
#[must_use = "flush the IOTLB for the range, then release the freed tables"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gather {
    /// First IOVA touched (inclusive), if any.
    pub start: u64,
    /// End of the touched range (exclusive); equals `start` when nothing changed.
    pub end: u64,
    /// Heads of the chains of freed table frames (see above; use
    /// [`Gather::has_freed_tables`], [`Gather::try_merge`] and
    /// [`Gather::release`] rather than this field).
    pub freed: Vec<u64>,
}

/// Where [`PageTable`]'s walks put the tables they empty.
enum Freed<'a> {
    /// Into the gather, released after the flush.
    Gather(&'a mut Gather),
    /// Nowhere: a failed map's undo clears its leaves and keeps every table
    /// (it frees only the tables it made itself, see [`Created`]).
    Keep,
}

impl Freed<'_> {
    /// Takes `frame`, just emptied; false when it must stay where it is.
    fn take(&mut self, mem: &mut impl TableMemory, frame: u64) -> bool {
        match self {
            Freed::Gather(g) => g.free_frame(mem, frame),
            Freed::Keep => false,
        }
    }
}

/// One map call's range and progress, threaded through its walk.
struct MapRun {
    /// First IOVA to map.
    start: u64,
    /// End of the range (exclusive).
    end: u64,
    /// Output address minus IOVA (wrapping), the same for every page.
    delta: u64,
    /// Rights of every leaf.
    perms: Perms,
    /// End of the last leaf written (the undo removes `[start, done)`).
    done: u64,
    /// The tables the call made.
    created: Created,
}

/// The tables one map call made, so that its undo frees those and no
/// other: a table that was there before the call (one an unmap kept) may be
/// in a walk cache, and only a flush may free it. Each is recorded by the
/// entry that points to it, packed in one word (the parent table's address,
/// 4 KiB aligned, with the entry's index and the parent's level in the low 12
/// bits), so the record costs a map of one page little to set up. Tables
/// beyond the first [`Created::MAX`] stay, empty, like a kept table.
struct Created {
    list: [u64; Created::MAX],
    len: usize,
}

impl Created {
    const MAX: usize = 32;

    fn new() -> Self {
        Created { list: [0; Created::MAX], len: 0 }
    }

    /// Records the table entry `index` of `parent` (at `level`) points to.
    fn push(&mut self, parent: u64, level: usize, index: usize) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = parent | ((index as u64) << 3) | level as u64;
            self.len += 1;
        }
    }

    /// The records, newest (deepest) first: `(parent, level, index)`.
    fn newest_first(&self) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        self.list[..self.len].iter().rev().map(|&w| (w & !0xFFF, (w & 7) as usize, ((w >> 3) & 0x1FF) as usize))
    }
}

impl Gather {
    fn add(&mut self, start: u64, end: u64) {
        if self.start == self.end {
            (self.start, self.end) = (start, end);
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
    }

    /// A gather covering `[start, end)` with no freed tables (for drivers
    /// whose unit keeps no table in this engine).
    pub fn range(start: u64, end: u64) -> Gather {
        Gather { start, end, freed: Vec::new() }
    }

    /// Takes `frame` into the gather, in front of the first chain, before
    /// it is unlinked from its table; false (nothing changed) when there is
    /// no heap for a first head.
    fn free_frame(&mut self, mem: &mut impl TableMemory, frame: u64) -> bool {
        match self.freed.first_mut() {
            Some(head) => {
                mem.write(frame, 0, *head);
                *head = frame;
            }
            None => {
                if self.freed.try_reserve_exact(1).is_err() {
                    return false;
                }
                mem.write(frame, 0, frame); // last of its chain: links to itself
                self.freed.push(frame); // reserved: no allocation
            }
        }
        true
    }

    /// Whether anything needs flushing.
    pub fn is_empty(&self) -> bool {
        self.start == self.end && self.freed.is_empty()
    }

    /// Whether the change freed table frames (the flush must then cover
    /// cached non-leaf entries too).
    pub fn has_freed_tables(&self) -> bool {
        !self.freed.is_empty()
    }

    /// Calls `f` with each freed frame, by following the chains.
    fn for_each_freed(&self, mem: &impl TableMemory, f: &mut dyn FnMut(u64)) {
        for &head in &self.freed {
            let mut frame = head;
            loop {
                let next = mem.read(frame, 0);
                f(frame);
                if next == frame {
                    break;
                }
                frame = next;
            }
        }
    }

    /// How many table frames the change freed (follows the chains).
    pub fn freed_tables(&self, mem: &impl TableMemory) -> usize {
        let mut n = 0;
        self.for_each_freed(mem, &mut |_| n += 1);
        n
    }

    /// Adds `other` to this gather (one flush covers both). Allocates only
    /// when both freed tables (room for `other`'s chain heads); without
    /// heap for them, `other` comes back unchanged (and this gather too):
    /// the caller flushes it on its own.
    pub fn try_merge(&mut self, other: Gather) -> Result<(), Gather> {
        if !other.freed.is_empty() && !self.freed.is_empty() && self.freed.try_reserve(other.freed.len()).is_err() {
            return Err(other);
        }
        if other.start != other.end {
            self.add(other.start, other.end);
        }
        if self.freed.is_empty() {
            self.freed = other.freed;
        } else {
            self.freed.extend_from_slice(&other.freed); // reserved: no allocation
        }
        Ok(())
    }

    /// After the IOTLB flush: gives the freed frames back (each zeroed again,
    /// as [`TableMemory::alloc_table`] hands them out).
    #[inline]
    pub fn release(self, mem: &mut impl TableMemory) {
        if self.freed.is_empty() {
            return;
        }
        for head in self.freed {
            let mut frame = head;
            loop {
                let next = mem.read(frame, 0);
                mem.write(frame, 0, 0);
                mem.free_table(frame);
                if next == frame {
                    break;
                }
                frame = next;
            }
        }
    }
}

/// A page table of format `F`.
///
/// It remembers the last leaf (level-0) table a map wrote into, with the
/// 2 MiB of input addresses it serves: a map or an unmap that stays inside
/// that span and does not cover all of it goes straight to the table, one
/// entry access per page and no walk (IOVA allocators hand out neighbouring
/// addresses, so most small calls land there). The table stays linked while
/// it is remembered: every path that unlinks a table (an unmap that frees
/// one, [`PageTable::prune`], a failed map's undo) forgets it first.
#[derive(Debug)]
pub struct PageTable<F: Format> {
    fmt: F,
    root: u64,
    last_leaf_table: Option<LeafTable>,
}

/// A leaf table and the first input address it maps (2 MiB aligned).
#[derive(Debug, Clone, Copy)]
struct LeafTable {
    base: u64,
    table: u64,
}

impl LeafTable {
    /// The table's entry indexes `first..=last` of `[start, end)`, when the
    /// range lies inside the table's span and leaves part of it out (a range
    /// that covers the span may place, or free, the table itself).
    #[inline]
    fn holds(self, start: u64, end: u64) -> Option<(usize, usize)> {
        let span = level_size(1);
        (start >= self.base && end - self.base <= span && end - start < span)
            .then(|| (index(start, 0), index(end - 1, 0)))
    }
}

impl<F: Format> PageTable<F> {
    /// Allocates an empty table.
    pub fn new(fmt: F, mem: &mut impl TableMemory) -> Result<Self, Error> {
        let root = mem.alloc_table().ok_or(Error::NoMemory)?;
        Ok(PageTable { fmt, root, last_leaf_table: None })
    }

    /// Takes over the table rooted at `root`, of format `fmt`: one the boot
    /// code built (the kernel's TTBR1 tables) or one whose root the caller
    /// kept from [`PageTable::new`] (a user space). Its tables must be
    /// frames `mem` can read, write and (for [`PageTable::destroy`],
    /// [`PageTable::prune`] and covering unmaps) free. While the value
    /// lives, nothing else may unlink its tables (it remembers one).
    pub fn from_root(fmt: F, root: u64) -> Self {
        PageTable { fmt, root, last_leaf_table: None }
    }

    /// Physical address of the root table (what the hardware is pointed at).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    fn check(&self, iova: u64, len: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::Empty);
        }
        if !(iova | len).is_multiple_of(4096) {
            return Err(Error::Unaligned);
        }
        let end = iova.checked_add(len).ok_or(Error::OutOfRange)?;
        if self.fmt.ia_bits() < 64 && end > 1u64 << self.fmt.ia_bits() {
            return Err(Error::OutOfRange);
        }
        Ok(end)
    }

    /// Maps `[iova, iova + len)` to `[pa, pa + len)`, choosing the largest
    /// leaves alignment allows. Fails without change if any part is mapped.
    ///
    /// One walk serves the whole range: each table on the way is reached
    /// once and filled slot by slot (a run of 4 KiB pages costs one entry
    /// write each, not a walk from the root each).
    #[inline]
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        iova: u64,
        pa: u64,
        len: u64,
        perms: Perms,
    ) -> Result<Gather, Error> {
        let end = self.check(iova, len)?;
        if !pa.is_multiple_of(4096) {
            return Err(Error::Unaligned);
        }
        // A physical range that wraps cannot be mapped.
        pa.checked_add(len - 1).ok_or(Error::OutOfRange)?;
        if let Some((table, (first, last))) =
            self.last_leaf_table.and_then(|c| c.holds(iova, end).map(|r| (c.table, r)))
        {
            // Straight into the remembered leaf table, when every slot is
            // free (otherwise the walk below finds what is in the way). The
            // leaves are encoded (and so checked) before the first write.
            if first == last {
                if mem.read(table, first) == 0 {
                    mem.write(table, first, self.fmt.encode_leaf(pa, 0, perms)?);
                    return Ok(Gather { start: iova, end, freed: Vec::new() });
                }
            } else if (first..=last).all(|i| mem.read(table, i) == 0) {
                let step = self.leaf_step(pa, last - first, perms)?;
                for (k, i) in (first..=last).enumerate() {
                    mem.write(table, i, self.nth_leaf(step, pa, k as u64, perms)?);
                }
                return Ok(Gather { start: iova, end, freed: Vec::new() });
            }
        }
        self.map_walk(mem, iova, end, pa, perms)
    }

    /// [`PageTable::map`] by a walk from the root, for a checked range the
    /// remembered leaf table does not take (kept out of line, so the common
    /// small map above saves and restores few registers).
    #[inline(never)]
    fn map_walk(
        &mut self,
        mem: &mut impl TableMemory,
        iova: u64,
        end: u64,
        pa: u64,
        perms: Perms,
    ) -> Result<Gather, Error> {
        // Rights and the output address checked before the walk writes.
        self.fmt.encode_leaf(pa, 0, perms)?;
        let mut run =
            MapRun { start: iova, end, delta: pa.wrapping_sub(iova), perms, done: iova, created: Created::new() };
        if let Err(e) = self.map_level(mem, self.root, self.fmt.levels() - 1, 0, &mut run) {
            let va = run.done;
            // Undo: [iova, va) holds only leaves this call wrote (an
            // occupied slot stops the walk): they go, and so do the tables
            // this call made that are empty again.
            if va > iova {
                self.unmap_level(mem, self.root, self.fmt.levels() - 1, 0, iova, va, &mut Freed::Keep);
            }
            // The tables this call made, deepest first, where empty.
            for (parent, level, i) in run.created.newest_first() {
                if let Entry::Table(table) = self.fmt.decode(mem.read(parent, i), level) {
                    if (0..512).all(|j| mem.read(table, j) == 0) {
                        mem.write(parent, i, 0);
                        mem.free_table(table);
                    }
                }
            }
            // The undo may have freed the table the walks remembered.
            self.last_leaf_table = None;
            if let Error::AlreadyMapped(_) = e {
                // Report the first mapping in the way, as a pre-check would.
                let mut first = None;
                self.walk_level(mem, self.root, self.fmt.levels() - 1, 0, va, end, &mut |leaf, _, _, _| {
                    first = Some(leaf);
                    false
                });
                return Err(Error::AlreadyMapped(first.unwrap_or(va).max(iova)));
            }
            return Err(e);
        }
        Ok(Gather { start: iova, end, freed: Vec::new() })
    }

    /// The 4 KiB leaf for `pa` when the leaves for `pa + k * 4 KiB`, `k` up
    /// to `last`, are it plus `k * 4096` (the format keeps the address in
    /// place, and no carry leaves the address field): checked on the
    /// encoded leaves of the first, second and last page, so a leaf table is
    /// filled with one add per page instead of one encoding. `None`: encode
    /// each page. Errors are `encode_leaf`'s for the last page (a range past
    /// what the format can address fails before anything is written).
    fn leaf_step(&self, pa: u64, last: usize, perms: Perms) -> Result<Option<u64>, Error> {
        let first = self.fmt.encode_leaf(pa, 0, perms)?;
        if last == 0 {
            return Ok(Some(first));
        }
        let (Some(last_pa), Some(second_pa)) = (pa.checked_add(last as u64 * 4096), pa.checked_add(4096)) else {
            return Ok(None);
        };
        let end = self.fmt.encode_leaf(last_pa, 0, perms)?;
        let second = self.fmt.encode_leaf(second_pa, 0, perms)?;
        let steps = second.checked_sub(first) == Some(4096) && first.checked_add(last as u64 * 4096) == Some(end);
        Ok(steps.then_some(first))
    }

    /// The 4 KiB leaf of page `k` of a run from `pa`: [`Self::leaf_step`]'s
    /// `step` plus `k` pages where the format steps, else its own encoding.
    fn nth_leaf(&self, step: Option<u64>, pa: u64, k: u64, perms: Perms) -> Result<u64, Error> {
        match step {
            Some(first) => Ok(first + k * 4096),
            None => self.fmt.encode_leaf(pa + k * 4096, 0, perms),
        }
    }

    /// Maps the part of `run` under `table` (at `level`, mapping from
    /// `base`), largest leaves first; `run.done` follows the last leaf written.
    fn map_level(
        &mut self,
        mem: &mut impl TableMemory,
        table: u64,
        level: usize,
        base: u64,
        run: &mut MapRun,
    ) -> Result<(), Error> {
        let size = level_size(level);
        if level == 0 {
            // The leaf level: one entry per page (alignment was checked).
            self.last_leaf_table = Some(LeafTable { base, table });
            let mut slots = slots(base, run.start, run.end, 0).peekable();
            let Some(&(i0, va0)) = slots.peek() else { return Ok(()) };
            let n = (run.end.min(base.saturating_add(level_size(1))) - va0) / size;
            let step = self.leaf_step(va0.wrapping_add(run.delta), n.saturating_sub(1) as usize, run.perms)?;
            for (i, va) in slots {
                if mem.read(table, i) != 0 {
                    return Err(Error::AlreadyMapped(va));
                }
                let pte = self.nth_leaf(step, va0.wrapping_add(run.delta), (i - i0) as u64, run.perms)?;
                mem.write(table, i, pte);
                run.done = va + size;
            }
            return Ok(());
        }
        let leaf_here = self.fmt.leaf_allowed(level) && run.delta.is_multiple_of(size);
        for (i, va) in slots(base, run.start, run.end, level) {
            let e = mem.read(table, i);
            let whole = va >= run.start && run.end - va >= size;
            // Where a table is in the way (one an unmap kept), the mapping
            // goes inside it, in smaller leaves: replacing it by the leaf
            // would need the walk caches flushed before it could be freed.
            if leaf_here && whole && e == 0 {
                let pte = self.fmt.encode_leaf(va.wrapping_add(run.delta), level, run.perms)?;
                mem.write(table, i, pte);
                run.done = va + size;
                continue;
            }
            let next = match self.fmt.decode(e, level) {
                Entry::Table(next) => next,
                Entry::Empty => {
                    let next = mem.alloc_table().ok_or(Error::NoMemory)?;
                    mem.write(table, i, self.fmt.encode_table(next, level));
                    run.created.push(table, level, i);
                    next
                }
                Entry::Leaf { .. } => return Err(Error::AlreadyMapped(va.max(run.start))),
            };
            self.map_level(mem, next, level - 1, va, run)?;
        }
        Ok(())
    }

    /// Calls `f(va, size, pa, perms)` for each leaf intersecting `[start,
    /// end)`, in order, while it answers true; false when `f` stopped it.
    #[allow(clippy::too_many_arguments)]
    fn walk_level(
        &self,
        mem: &impl TableMemory,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, u64, Perms) -> bool,
    ) -> bool {
        let size = level_size(level);
        for (i, va) in slots(base, start, end, level) {
            let go_on = match self.fmt.decode(mem.read(table, i), level) {
                Entry::Empty => true,
                Entry::Leaf { pa, perms } => f(va, size, pa, perms),
                Entry::Table(next) if level > 0 => self.walk_level(mem, next, level - 1, va, start, end, f),
                Entry::Table(_) => true,
            };
            if !go_on {
                return false;
            }
        }
        true
    }

    /// Start and size of the leaf mapping `va`, if any, looking from the
    /// entry `e` found at `level` on the way to it.
    fn leaf_from(&self, mem: &impl TableMemory, mut e: u64, mut level: usize, va: u64) -> Option<(u64, u64)> {
        loop {
            match self.fmt.decode(e, level) {
                Entry::Empty => return None,
                Entry::Leaf { .. } => return Some((va & !(level_size(level) - 1), level_size(level))),
                Entry::Table(next) if level > 0 => {
                    level -= 1;
                    e = mem.read(next, index(va, level));
                }
                Entry::Table(_) => return None,
            }
        }
    }

    /// The start of a leaf that holds the first or the last byte of
    /// `[start, end)` and reaches outside it (only those two can), if any.
    /// The two addresses share their walk down to where their paths part,
    /// so a range inside one leaf table costs one walk.
    fn straddling_leaf(&self, mem: &impl TableMemory, start: u64, end: u64) -> Option<u64> {
        let last = end - 1;
        let mut table = self.root;
        for level in (0..self.fmt.levels()).rev() {
            let (i, j) = (index(start, level), index(last, level));
            let e = mem.read(table, i);
            if i != j {
                // The paths part here: the first byte's leaf may start
                // before `start`, the last byte's may end after `last`.
                if let Some((s, _)) = self.leaf_from(mem, e, level, start).filter(|&(s, _)| s < start) {
                    return Some(s);
                }
                return self
                    .leaf_from(mem, mem.read(table, j), level, last)
                    .filter(|&(s, size)| s + (size - 1) > last)
                    .map(|(s, _)| s);
            }
            match self.fmt.decode(e, level) {
                Entry::Empty => return None,
                Entry::Leaf { .. } => {
                    let (s, size) = (start & !(level_size(level) - 1), level_size(level));
                    return (s < start || s + (size - 1) > last).then_some(s);
                }
                Entry::Table(next) if level > 0 => table = next,
                Entry::Table(_) => return None,
            }
        }
        None
    }

    /// Output address for `iova`, if mapped.
    pub fn iova_to_phys(&self, mem: &impl TableMemory, iova: u64) -> Option<u64> {
        self.lookup(mem, iova).map(|m| m.pa + (iova - m.iova))
    }

    /// Calls `f(iova, size, pa, perms)` for every leaf, in IOVA order.
    pub fn for_each_mapping(&self, mem: &impl TableMemory, f: &mut dyn FnMut(u64, u64, u64, Perms)) {
        let top = if self.fmt.ia_bits() >= 64 { u64::MAX } else { 1u64 << self.fmt.ia_bits() };
        self.walk_level(mem, self.root, self.fmt.levels() - 1, 0, 0, top, &mut |va, size, pa, perms| {
            f(va, size, pa, perms);
            true
        });
    }

    /// The leaf mapping `iova`, whole, if any.
    pub fn lookup(&self, mem: &impl TableMemory, iova: u64) -> Option<Mapping> {
        if self.fmt.ia_bits() < 64 && iova >> self.fmt.ia_bits() != 0 {
            return None;
        }
        let mut table = self.root;
        for level in (0..self.fmt.levels()).rev() {
            match self.fmt.decode(mem.read(table, index(iova, level)), level) {
                Entry::Empty => return None,
                Entry::Leaf { pa, perms } => {
                    let size = level_size(level);
                    return Some(Mapping { iova: iova & !(size - 1), size, pa, perms });
                }
                Entry::Table(next) => table = next,
            }
        }
        None
    }

    /// Hands `f` each leaf overlapping `[start, end)` once, whole (a leaf
    /// that starts before `start` is reported from its own start), in input
    /// address order, while `f` answers true. Reads each table on the way
    /// once; holes are skipped silently (a caller that wants to stop at one
    /// compares each leaf's start with where the previous one ended).
    /// Returns false when `f` stopped the walk.
    pub fn walk(&self, mem: &impl TableMemory, start: u64, end: u64, f: &mut dyn FnMut(Mapping) -> bool) -> bool {
        let top = if self.fmt.ia_bits() >= 64 { u64::MAX } else { 1u64 << self.fmt.ia_bits() };
        let end = end.min(top);
        if start >= end {
            return true;
        }
        self.walk_level(mem, self.root, self.fmt.levels() - 1, 0, start, end, &mut |iova, size, pa, perms| {
            f(Mapping { iova, size, pa, perms })
        })
    }

    /// Unlinks every table overlapping `[start, end)` that maps nothing
    /// (after unmaps, or a map rolled back), deepest first, so a table
    /// emptied by this very prune goes too; the root stays. A table that
    /// still holds an entry (inside the range or not) stays. Nothing is
    /// allocated: the frames come back as one [`FreedTables`] chain, to be
    /// released after the walk caches are invalidated.
    pub fn prune(&mut self, mem: &mut impl TableMemory, start: u64, end: u64) -> FreedTables {
        let mut freed = FreedTables::default();
        let top = if self.fmt.ia_bits() >= 64 { u64::MAX } else { 1u64 << self.fmt.ia_bits() };
        let end = end.min(top);
        if start < end {
            self.prune_level(mem, self.root, self.fmt.levels() - 1, 0, start, end, &mut freed);
        }
        freed
    }

    /// Prunes the tables under `table` (at `level`, mapping from `base`);
    /// true when `table` holds no entry afterwards.
    #[allow(clippy::too_many_arguments)]
    fn prune_level(
        &mut self,
        mem: &mut impl TableMemory,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        freed: &mut FreedTables,
    ) -> bool {
        if level == 0 {
            return (0..512).all(|j| mem.read(table, j) == 0);
        }
        for (i, va) in slots(base, start, end, level) {
            if let Entry::Table(next) = self.fmt.decode(mem.read(table, i), level) {
                if self.prune_level(mem, next, level - 1, va, start, end, freed) {
                    freed.push(mem, next);
                    self.last_leaf_table = None;
                    mem.write(table, i, 0);
                }
            }
        }
        (0..512).all(|j| mem.read(table, j) == 0)
    }

    /// Unmaps every leaf inside `[iova, iova + len)` and returns the bytes
    /// unmapped. A leaf that only partly overlaps the range refuses the whole
    /// call ([`Error::SplitLeaf`]); holes are skipped.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, iova: u64, len: u64) -> Result<(u64, Gather), Error> {
        let end = self.check(iova, len)?;
        if let Some((table, (first, last))) =
            self.last_leaf_table.and_then(|c| c.holds(iova, end).map(|r| (c.table, r)))
        {
            // Inside the remembered leaf table: only 4 KiB leaves live there
            // (its parent entry is the table), so nothing can straddle the
            // range, and a range short of the whole span frees no table.
            let mut done = 0;
            for i in first..=last {
                if let Entry::Leaf { .. } = self.fmt.decode(mem.read(table, i), 0) {
                    mem.write(table, i, 0);
                    done += 4096;
                }
            }
            let g = if done > 0 { Gather { start: iova, end, freed: Vec::new() } } else { Gather::default() };
            return Ok((done, g));
        }
        if let Some(start) = self.straddling_leaf(mem, iova, end) {
            return Err(Error::SplitLeaf(start));
        }
        let mut g = Gather::default();
        let (unmapped, _) =
            self.unmap_level(mem, self.root, self.fmt.levels() - 1, 0, iova, end, &mut Freed::Gather(&mut g));
        if unmapped > 0 {
            g.add(iova, end);
        }
        Ok((unmapped, g))
    }

    /// Clears leaves in range under `table`; frees the child tables whose
    /// span the range covers (every emptied one when undoing a map). Returns the bytes unmapped and whether any entry of `table` was
    /// cleared (only then can `table` itself have become empty).
    #[allow(clippy::too_many_arguments)]
    fn unmap_level(
        &mut self,
        mem: &mut impl TableMemory,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        freed: &mut Freed<'_>,
    ) -> (u64, bool) {
        let size = level_size(level);
        let (mut done, mut cleared) = (0, false);
        if level == 0 {
            // A covering unmap that frees this table forgets it again.
            self.last_leaf_table = Some(LeafTable { base, table });
        }
        for (i, va) in slots(base, start, end, level) {
            match self.fmt.decode(mem.read(table, i), level) {
                Entry::Empty => {}
                Entry::Leaf { .. } => {
                    mem.write(table, i, 0);
                    done += size;
                    cleared = true;
                }
                Entry::Table(next) if level > 0 => {
                    let (d, _) = self.unmap_level(mem, next, level - 1, va, start, end, freed);
                    done += d;
                    let last = index(end.saturating_sub(1).min(va + (size - 1)), level - 1);
                    // An unmap frees the tables whose whole span it covers
                    // (as Linux's drivers do), empty ones left by earlier
                    // unmaps included; a table it empties in only part of
                    // its span stays for the next map there (so a map and
                    // unmap of one 4 KiB page allocate, zero, scan and free
                    // no table) and goes with a covering unmap or the domain.
                    // (A failed map's undo, `Freed::Keep`, frees none here.)
                    // A table the gather has no room for stays, empty.
                    let covered = start <= va && va + (size - 1) < end;
                    if covered && table_empty(mem, next, last) && freed.take(mem, next) {
                        self.last_leaf_table = None;
                        mem.write(table, i, 0);
                        cleared = true;
                    }
                }
                Entry::Table(_) => {}
            }
        }
        (done, cleared)
    }

    /// Reports every leaf in `[iova, iova + len)` written since the last call
    /// (`f(iova, size)`) and clears its dirty state; formats without dirty bits
    /// report nothing. The gather covers the leaves that were cleared.
    pub fn read_and_clear_dirty(
        &mut self,
        mem: &mut impl TableMemory,
        iova: u64,
        len: u64,
        f: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, Error> {
        let end = self.check(iova, len)?;
        let mut g = Gather::default();
        self.dirty_level(mem, self.root, self.fmt.levels() - 1, 0, iova, end, f, &mut g);
        Ok(g)
    }

    #[allow(clippy::too_many_arguments)]
    fn dirty_level(
        &mut self,
        mem: &mut impl TableMemory,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64),
        g: &mut Gather,
    ) {
        let size = level_size(level);
        for (i, va) in slots(base, start, end, level) {
            let pte = mem.read(table, i);
            match self.fmt.decode(pte, level) {
                Entry::Leaf { .. } if self.fmt.is_dirty(pte) == Some(true) => {
                    mem.write(table, i, self.fmt.clear_dirty(pte));
                    f(va, size);
                    g.add(va, va + size);
                }
                Entry::Table(next) if level > 0 => self.dirty_level(mem, next, level - 1, va, start, end, f, g),
                _ => {}
            }
        }
    }

    /// Frees every table (not the mapped memory) including the root.
    pub fn destroy(self, mem: &mut impl TableMemory) {
        fn free<F: Format>(fmt: &F, mem: &mut impl TableMemory, table: u64, level: usize) {
            if level > 0 {
                for i in 0..512 {
                    if let Entry::Table(next) = fmt.decode(mem.read(table, i), level) {
                        free(fmt, mem, next, level - 1);
                    }
                }
            }
            mem.free_table(table);
        }
        free(&self.fmt, mem, self.root, self.fmt.levels() - 1);
    }
}

/// Visits the leaves overlapping `[start, end)` of a table this code does not
/// own (a user's stage-1 table, say) and calls `f(iova, size, out, perms)` for
/// each, in IOVA order. The leaf is reported whole: `iova` and `size` are its
/// own, so a leaf that starts before `start` is reported from its start.
///
/// `read(table, index)` fetches entry `index` of the table at `table`; `None`
/// means the entry cannot be read and counts as not present. The walk trusts
/// nothing it reads:
/// - it is bounded by the level count: every step down lowers the level, so a
///   table that points at itself or an ancestor is visited again only at lower
///   levels, never in a loop;
/// - an entry the format decodes as a leaf at a level where
///   [`Format::leaf_allowed`] says no is treated as not present (a hardware
///   walker faults on it);
/// - addresses are whatever [`Format::decode`] makes of the bits (reserved
///   bits and alignment are the format's business); an output address beyond
///   what the hardware could reach is passed on for `f` to judge.
///
/// The work is at most 512 `read` calls per table reached. A caller bounds
/// it by making `read` answer `None` once its budget is spent: the walk then
/// ends after at most 512 more calls per level.
pub fn walk_foreign<F: Format>(
    fmt: &F,
    root: u64,
    read: &mut dyn FnMut(u64, usize) -> Option<u64>,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(u64, u64, u64, Perms),
) {
    let levels = fmt.levels();
    // Level 5 is the highest whose leaves fit a 64-bit address space.
    if levels == 0 || levels > 6 {
        return;
    }
    let top = if fmt.ia_bits() >= 64 { u64::MAX } else { 1u64 << fmt.ia_bits() };
    let end = end.min(top);
    if start >= end {
        return;
    }
    foreign_level(fmt, root, levels - 1, 0, start, end, read, f);
}

#[allow(clippy::too_many_arguments)]
fn foreign_level<F: Format>(
    fmt: &F,
    table: u64,
    level: usize,
    base: u64,
    start: u64,
    end: u64,
    read: &mut dyn FnMut(u64, usize) -> Option<u64>,
    f: &mut dyn FnMut(u64, u64, u64, Perms),
) {
    let size = level_size(level);
    for (i, va) in slots(base, start, end, level) {
        let Some(pte) = read(table, i) else { continue };
        match fmt.decode(pte, level) {
            Entry::Empty => {}
            Entry::Leaf { pa, perms } if fmt.leaf_allowed(level) => f(va, size, pa, perms),
            Entry::Leaf { .. } => {}
            Entry::Table(next) if level > 0 => foreign_level(fmt, next, level - 1, va, start, end, read, f),
            Entry::Table(_) => {}
        }
    }
}

/// A counting arena of table frames for tests and benchmarks.
pub mod arena;

#[cfg(test)]
mod tests;

/// Heap fail-nth for this crate's tests (`fallible::testing`).
#[cfg(test)]
#[global_allocator]
static HEAP: fallible::testing::FailingAlloc = fallible::testing::FailingAlloc;
