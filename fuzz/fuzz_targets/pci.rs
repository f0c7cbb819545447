//! PCI topology: enumeration, capability parsing, the claim and config-write
//! policy and BAR assignment over a simulated configuration space described
//! by the input (functions, their parents, config bytes, BAR size masks, and
//! the host bridge's windows, all hostile).
//!
//! Invariants: enumeration finds each function once; a BAR that assignment
//! placed is naturally aligned, lies inside a host window and shares no page
//! with another function's memory BAR (`assign`'s documented promise).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pci::fake::{FakeConfig, FakeFunction};
use pci::{BarKind, HostBridge, Window};
use portcullis_fuzz::{sample_host, Input};

fn window(input: &mut Input<'_>) -> Option<Window> {
    let (base, size) = (input.u64(), input.u64());
    (size != 0).then_some(Window { cpu_base: base, pci_base: base, size })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let assign_buses = flags & 1 != 0;
    let host = if flags & 2 != 0 {
        // Windows as a hostile firmware might describe them.
        let (bus_start, bus_end) = (input.u8(), input.u8());
        HostBridge {
            segment: 0,
            bus_start,
            bus_end,
            mmio32: window(&mut input),
            mmio64: window(&mut input),
            io: window(&mut input),
        }
    } else {
        sample_host()
    };
    let count = usize::from(input.u8() % 12);
    let mut functions = Vec::new();
    for i in 0..count {
        let parent = input.u8();
        let parent = (i > 0 && parent != 0xFF).then(|| usize::from(parent) % i);
        let devfn = input.u8();
        let cfg_len = usize::from(input.u8()) * 16;
        let mut f = FakeFunction::endpoint(parent, devfn >> 3, devfn & 7, 0, 0, 0);
        for m in f.bar_masks.iter_mut() {
            *m = input.u32();
        }
        let bytes = input.bytes(cfg_len);
        f.cfg[..bytes.len()].copy_from_slice(bytes);
        functions.push(f);
    }
    let cfg = FakeConfig::new(host.bus_start, functions);
    let Ok(mut found) = pci::enumerate::enumerate(&cfg, &host, assign_buses) else { return };
    for (i, f) in found.iter().enumerate() {
        assert!(found[..i].iter().all(|g| g.bdf != f.bdf), "{} enumerated twice", f.bdf);
        let _ = pci::dma_requester_id(f, &found);
        let _ = pci::policy::claimable(f);
        for bar in 0..6 {
            let _ = pci::policy::msix_pages(f, bar);
        }
        let _ = pci::caps::read(&cfg, f.bdf);
        for _ in 0..4 {
            let (offset, width, value, cmd) = (input.u16(), u16::from(input.u8() % 5), input.u32(), input.u16());
            let _ = pci::policy::check_write(f, offset, width, value, cmd);
        }
    }
    let before = found.clone();
    if pci::assign::assign(&cfg, &host, &mut found).is_err() {
        return;
    }
    let windows: Vec<Window> = [host.mmio32, host.mmio64, host.io].into_iter().flatten().collect();
    let shared = pci::assign::shares_page(&found);
    for (f, old) in found.iter().zip(&before) {
        for (bar, was) in f.bars.iter().zip(&old.bars) {
            if was.base != 0 || bar.base == 0 {
                continue; // kept or left unassigned
            }
            // (A device can report a size that is no power of two: a hostile BAR mask.)
            if bar.size.is_power_of_two() {
                assert!(
                    bar.base % bar.size == 0,
                    "{} BAR{} at {:#x} not aligned to {:#x}",
                    f.bdf,
                    bar.index,
                    bar.base,
                    bar.size
                );
            }
            assert!(
                windows.iter().any(|w| bar.base >= w.pci_base
                    && (bar.base - w.pci_base).checked_add(bar.size).is_some_and(|e| e <= w.size)),
                "{} BAR{} at {:#x}+{:#x} outside every host window",
                f.bdf,
                bar.index,
                bar.base,
                bar.size
            );
            if bar.kind != BarKind::Io {
                assert!(
                    !shared
                        .iter()
                        .any(|&(a, ai, b, bi)| (a == f.bdf && ai == bar.index) || (b == f.bdf && bi == bar.index)),
                    "{} BAR{} placed in a shared page",
                    f.bdf,
                    bar.index
                );
            }
        }
    }
});
