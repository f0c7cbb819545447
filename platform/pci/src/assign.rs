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

use crate::{reg, Bar, BarKind, ConfigAccess, Function, HostBridge, PciError, Window};
use alloc::vec::Vec;

/// Bridge memory windows have 1 MiB granularity; I/O windows 4 KiB.
const MEM_GRANULE: u64 = 1 << 20;

#[derive(Clone, Copy)]
struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    fn from(w: Option<Window>) -> Option<Self> {
        w.map(|w| Bump { next: w.pci_base, end: w.pci_base + w.size })
    }

    fn take(&mut self, size: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(align.max(1))?;
        let end = start.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            start
        })
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
        let base = match bar.kind {
            BarKind::Io if behind_bridge => {
                log::warn!("pci: {} BAR{}: I/O behind a bridge is not assigned", f.bdf, bar.index);
                return Ok(());
            }
            BarKind::Io => self.io.as_mut().and_then(|b| b.take(bar.size, bar.size)),
            BarKind::Mem64 if !behind_bridge && self.mem64.is_some() => {
                self.mem64.as_mut().and_then(|b| b.take(bar.size, bar.size))
            }
            BarKind::Mem32 | BarKind::Mem64 => self
                .mem32
                .as_mut()
                .and_then(|b| b.take(bar.size, bar.size))
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
        summary: Summary::default(),
    };
    if unassigned > 0 && unassigned == total {
        ctx.bus(functions, None)?;
    } else {
        ctx.summary.kept = total - unassigned;
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
