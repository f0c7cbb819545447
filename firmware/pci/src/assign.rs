//! BAR assignment from the host bridge's windows where firmware left BARs
//! unassigned, bridge windows programmed to cover their subtrees, and decode
//! enabled (PCI-to-PCI Bridge 1.2 §3.2.5 for the window registers).
//!
//! Policy (documented because real firmware does more): BARs are placed with
//! natural alignment by a bump allocator per window, largest first within each
//! bus. Behind a bridge every memory BAR (64-bit ones included) comes from the
//! 32-bit window, because only the bridge's non-prefetchable window is
//! programmed; on the root bus 64-bit BARs use the 64-bit window when there is
//! one. I/O BARs are assigned on the root bus only. A host whose BARs are all
//! assigned already (x86 firmware) is left alone.
//!
//! Every memory BAR this module places gets a page of its own: it is aligned to
//! at least [`PAGE_SIZE`] and takes a slot of at least [`PAGE_SIZE`], so a BAR
//! smaller than a page is followed by padding and no other function's BAR
//! shares a page with it (a task that maps one function's BAR cannot reach
//! another's). I/O BARs keep natural alignment and packing. BARs firmware
//! assigned are kept where they are, and when only some are unassigned the new
//! ones avoid every page a kept memory BAR touches (and every kept I/O range);
//! firmware may still have packed its own BARs into shared pages, which
//! [`shares_page`] reports so the kernel can refuse to map those to a task.

use crate::{reg, Bar, BarKind, Bdf, ConfigAccess, Function, HostBridge, PciError, Window};
use alloc::vec::Vec;

/// Bridge memory windows have 1 MiB granularity; I/O windows 4 KiB.
const MEM_GRANULE: u64 = 1 << 20;

/// The page size memory BAR isolation is measured in (the smallest page a task
/// can be given).
pub const PAGE_SIZE: u64 = 4096;

#[derive(Clone, Copy)]
struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    fn from(w: Option<Window>) -> Option<Self> {
        // A window firmware claims runs past 2^64 is cut at the top of the bus address space.
        w.map(|w| Bump { next: w.pci_base, end: w.pci_base.saturating_add(w.size) })
    }

    /// The lowest `align`-aligned range of `size` bytes from `next` that fits
    /// before `end` and overlaps none of `reserved` (half-open ranges).
    fn take(&mut self, size: u64, align: u64, reserved: &[(u64, u64)]) -> Option<u64> {
        let align = align.max(1);
        let mut start = self.next.checked_next_multiple_of(align)?;
        loop {
            let end = start.checked_add(size)?;
            if end > self.end {
                return None;
            }
            // Each step moves past at least one reserved range, so this ends.
            match reserved.iter().filter(|r| r.0 < end && start < r.1).map(|r| r.1).max() {
                None => {
                    self.next = end;
                    return Some(start);
                }
                Some(past) => start = past.checked_next_multiple_of(align)?,
            }
        }
    }
}

/// What assignment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// BARs given an address.
    pub assigned: usize,
    /// BARs firmware had assigned, kept.
    pub kept: usize,
    /// Bridges whose windows were programmed.
    pub bridges: usize,
    /// BARs left unassigned because the host describes no window of their kind
    /// (ACPI machines: the windows live in the DSDT's AML, so the kernel keeps
    /// what firmware assigned and cannot place the rest).
    pub unplaced: usize,
}

struct Ctx<'a> {
    access: &'a dyn ConfigAccess,
    mem32: Option<Bump>,
    mem64: Option<Bump>,
    io: Option<Bump>,
    /// Memory ranges (whole pages) of BARs firmware assigned, to keep clear of.
    reserved_mem: Vec<(u64, u64)>,
    /// I/O ranges of BARs firmware assigned.
    reserved_io: Vec<(u64, u64)>,
    summary: Summary,
}

fn write_bar(access: &dyn ConfigAccess, f: &Function, bar: &Bar) {
    let off = reg::BAR0 + 4 * u16::from(bar.index);
    access.write32(f.bdf, off, bar.base as u32);
    if bar.kind == BarKind::Mem64 {
        access.write32(f.bdf, off + 4, (bar.base >> 32) as u32);
    }
}

impl Ctx<'_> {
    /// Whether the host has any window a root-bus BAR of `kind` could go in.
    fn has_window_for(&self, kind: BarKind) -> bool {
        match kind {
            BarKind::Io => self.io.is_some(),
            BarKind::Mem32 => self.mem32.is_some(),
            BarKind::Mem64 => self.mem32.is_some() || self.mem64.is_some(),
        }
    }

    fn place(&mut self, f: &Function, bar: &mut Bar, behind_bridge: bool) -> Result<(), PciError> {
        let err = PciError::WindowExhausted { bdf: f.bdf, bar: bar.index, size: bar.size };
        // A memory BAR gets a page-aligned slot of at least a page (sizes are powers of two).
        let slot = bar.size.max(PAGE_SIZE);
        let (mem, io) = (&self.reserved_mem, &self.reserved_io);
        let base = match bar.kind {
            BarKind::Io if behind_bridge => {
                log::warn!("pci: {} BAR{}: I/O behind a bridge is not assigned", f.bdf, bar.index);
                return Ok(());
            }
            BarKind::Io => self.io.as_mut().and_then(|b| b.take(bar.size, bar.size, io)),
            BarKind::Mem64 if !behind_bridge && self.mem64.is_some() => {
                self.mem64.as_mut().and_then(|b| b.take(slot, slot, mem))
            }
            BarKind::Mem32 | BarKind::Mem64 => self
                .mem32
                .as_mut()
                .and_then(|b| b.take(slot, slot, mem))
                .filter(|&a| bar.kind == BarKind::Mem64 || a + bar.size <= 1 << 32),
        };
        bar.base = base.ok_or(err)?;
        write_bar(self.access, f, bar);
        self.summary.assigned += 1;
        Ok(())
    }

    /// Assigns the functions whose parent is `parent` (None = root bus), recursively.
    fn bus(&mut self, functions: &mut [Function], parent: Option<crate::Bdf>) -> Result<(), PciError> {
        let depth = parent.map_or(0, |p| functions.iter().find(|f| f.bdf == p).map_or(0, |f| f.path.len() + 1));
        let children: Vec<usize> = (0..functions.len())
            .filter(|&i| functions[i].path.last().copied() == parent && functions[i].path.len() == depth)
            .collect();
        // Largest BARs first packs naturally aligned ranges without holes.
        let mut bars: Vec<(usize, usize)> =
            children.iter().flat_map(|&i| (0..functions[i].bars.len()).map(move |b| (i, b))).collect();
        bars.sort_by(|a, b| functions[b.0].bars[b.1].size.cmp(&functions[a.0].bars[a.1].size));
        for (i, b) in bars {
            let mut bar = functions[i].bars[b];
            self.place(&functions[i], &mut bar, parent.is_some())?;
            functions[i].bars[b] = bar;
        }
        for &i in &children {
            if !functions[i].is_bridge() {
                continue;
            }
            let bdf = functions[i].bdf;
            let start = self.mem32.map(|b| b.next.next_multiple_of(MEM_GRANULE));
            if let (Some(b), Some(s)) = (self.mem32.as_mut(), start) {
                b.next = s.min(b.end);
            }
            self.bus(functions, Some(bdf))?;
            let end = self.mem32.map(|b| b.next.next_multiple_of(MEM_GRANULE));
            if let (Some(b), Some(e)) = (self.mem32.as_mut(), end) {
                b.next = e.min(b.end);
            }
            let (base, limit) = match (start, end) {
                (Some(s), Some(e)) if e > s => (((s >> 16) as u32) & 0xFFF0, (((e - 1) >> 16) as u32) & 0xFFF0),
                _ => (0xFFF0, 0), // closed window
            };
            self.access.write32(bdf, reg::MEMORY_BASE, limit << 16 | base);
            // Prefetchable and I/O windows closed (base above limit).
            self.access.write32(bdf, reg::PREF_BASE, 0x0000_FFF0);
            self.access.write32(bdf, reg::PREF_BASE_UPPER, 0);
            self.access.write32(bdf, reg::PREF_LIMIT_UPPER, 0);
            self.access.write16(bdf, reg::IO_BASE, 0x00F0);
            self.summary.bridges += 1;
        }
        Ok(())
    }
}

/// Assigns unassigned BARs, programs bridge windows and enables decode.
///
/// Bridges also get Bus Master Enable (they must forward their devices' DMA);
/// endpoints keep it off until a driver asks ([`crate::set_bus_master`]).
pub fn assign(access: &dyn ConfigAccess, host: &HostBridge, functions: &mut [Function]) -> Result<Summary, PciError> {
    let total = functions.iter().map(|f| f.bars.len()).sum::<usize>();
    let unassigned = functions.iter().flat_map(|f| f.bars.iter()).filter(|b| b.base == 0).count();
    let mut ctx = Ctx {
        access,
        mem32: Bump::from(host.mmio32),
        mem64: Bump::from(host.mmio64),
        io: Bump::from(host.io).map(|mut b| {
            // Never hand out I/O port 0.
            b.next = b.next.max(0x1000);
            b
        }),
        reserved_mem: Vec::new(),
        reserved_io: Vec::new(),
        summary: Summary::default(),
    };
    if unassigned > 0 && unassigned == total {
        ctx.bus(functions, None)?;
    } else {
        ctx.summary.kept = total - unassigned;
        for bar in functions.iter().flat_map(|f| f.bars.iter()).filter(|b| b.base != 0) {
            let end = bar.base.saturating_add(bar.size);
            match bar.kind {
                BarKind::Io => ctx.reserved_io.push((bar.base, end)),
                BarKind::Mem32 | BarKind::Mem64 => ctx
                    .reserved_mem
                    .push((bar.base & !(PAGE_SIZE - 1), end.checked_next_multiple_of(PAGE_SIZE).unwrap_or(u64::MAX))),
            }
        }
        if unassigned > 0 {
            log::warn!(
                "pci: {unassigned} of {total} BARs unassigned by firmware; assigning those on the root bus only"
            );
            let root: Vec<usize> = (0..functions.len()).filter(|&i| functions[i].path.is_empty()).collect();
            for i in root {
                for b in 0..functions[i].bars.len() {
                    let mut bar = functions[i].bars[b];
                    if bar.base == 0 {
                        if !ctx.has_window_for(bar.kind) {
                            log::warn!(
                                "pci: {} BAR{} ({:?}, {:#x} bytes) left unassigned: the firmware names no host window for it",
                                functions[i].bdf,
                                bar.index,
                                bar.kind,
                                bar.size
                            );
                            ctx.summary.unplaced += 1;
                            continue;
                        }
                        ctx.place(&functions[i], &mut bar, false)?;
                        functions[i].bars[b] = bar;
                    }
                }
            }
        }
    }
    for f in functions.iter() {
        let mut enable = 0;
        if f.bars.iter().any(|b| b.kind != BarKind::Io && b.base != 0) || f.is_bridge() {
            enable |= reg::CMD_MEMORY;
        }
        if f.bars.iter().any(|b| b.kind == BarKind::Io && b.base != 0) {
            enable |= reg::CMD_IO;
        }
        if f.is_bridge() {
            enable |= reg::CMD_BUS_MASTER;
        }
        let cmd = access.read16(f.bdf, reg::COMMAND);
        if cmd & enable != enable {
            access.write16(f.bdf, reg::COMMAND, cmd | enable);
        }
    }
    Ok(ctx.summary)
}

/// Pairs of memory BARs of different functions that share a [`PAGE_SIZE`] page
/// (or overlap), as `(function, BAR index, function, BAR index)`.
///
/// Unassigned BARs (base 0) and I/O BARs are left out. Each pair appears once,
/// the BAR whose first page is lower (then the earlier one in `functions`)
/// first. BARs this module placed never appear here; BARs firmware packed
/// together can. Addresses are PCI bus addresses; host windows translate them
/// to CPU addresses by page-aligned offsets, so sharing a page on the bus is
/// sharing one in the CPU's view too.
pub fn shares_page(functions: &[Function]) -> Vec<(Bdf, u8, Bdf, u8)> {
    // (first page, last page, position in `functions`, BAR index)
    let mut spans: Vec<(u64, u64, usize, u8)> = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        for bar in f.bars.iter().filter(|b| b.kind != BarKind::Io && b.base != 0 && b.size != 0) {
            let last = bar.base.saturating_add(bar.size - 1);
            spans.push((bar.base / PAGE_SIZE, last / PAGE_SIZE, i, bar.index));
        }
    }
    spans.sort_unstable_by_key(|s| (s.0, s.2, s.3));
    let mut out = Vec::new();
    for (n, a) in spans.iter().enumerate() {
        // Sorted by first page: once one starts after `a` ends, all later ones do.
        for b in spans[n + 1..].iter().take_while(|b| b.0 <= a.1) {
            let (fa, fb) = (functions[a.2].bdf, functions[b.2].bdf);
            if fa != fb {
                out.push((fa, a.3, fb, b.3));
            }
        }
    }
    out
}

/// Whether BAR `index` of `bdf` shares a page with a memory BAR of another
/// function in `functions` (see [`shares_page`]): a kernel must not map such a
/// BAR to a task.
pub fn bar_shares_page(functions: &[Function], bdf: Bdf, index: u8) -> bool {
    shares_page(functions).iter().any(|p| (p.0 == bdf && p.1 == index) || (p.2 == bdf && p.3 == index))
}
