//! Host tests: enumeration and assignment on simulated topologies.

use crate::assign::{assign, bar_shares_page, shares_page, PAGE_SIZE};
use crate::enumerate::enumerate;
use crate::fake::{FakeConfig, FakeFunction};
use crate::{reg, Bar, BarKind, Bdf, ConfigAccess, Function, HostBridge, PciError, Window};
use proptest::prelude::*;

pub(crate) fn virt_host() -> HostBridge {
    HostBridge {
        segment: 0,
        bus_start: 0,
        bus_end: 0xFF,
        mmio32: Some(Window { cpu_base: 0x1000_0000, pci_base: 0x1000_0000, size: 0x2EFF_0000 }),
        mmio64: Some(Window { cpu_base: 0x80_0000_0000, pci_base: 0x80_0000_0000, size: 0x80_0000_0000 }),
        io: Some(Window { cpu_base: 0x3EFF_0000, pci_base: 0, size: 0x1_0000 }),
    }
}

const EDU: (u16, u16, u32) = (0x1234, 0x11E8, 0x00FF00);

fn edu(parent: Option<usize>, dev: u8) -> FakeFunction {
    FakeFunction::endpoint(parent, dev, 0, EDU.0, EDU.1, EDU.2).with_mem_bar(0, 1 << 20, false, false)
}

#[test]
fn root_bus_endpoints_get_bars_and_decode() {
    let host_bridge = FakeFunction::endpoint(None, 0, 0, 0x1B36, 0x0008, 0x060000);
    let nvme = FakeFunction::endpoint(None, 5, 0, 0x1B36, 0x0010, 0x010802)
        .with_mem_bar(0, 16 << 10, true, false)
        .with_cap(0x40, crate::caps::id::MSIX, &[0x3F, 0x00, 0x00, 0x20, 0, 0, 0x00, 0x30, 0, 0]);
    let cfg = FakeConfig::new(0, vec![host_bridge, edu(None, 4), nvme]);
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    assert_eq!(fns.len(), 3);
    assert_eq!(fns[1].bdf, Bdf::new(0, 0, 4, 0));
    assert_eq!((fns[1].vendor, fns[1].device, fns[1].class), EDU);
    assert_eq!(fns[1].bars[0].size, 1 << 20);
    assert_eq!(fns[1].bars[0].base, 0, "unassigned before assignment");
    let msix = fns[2].caps.msix.unwrap();
    assert_eq!((msix.table_size, msix.table, msix.pba), (64, (0, 0x2000), (0, 0x3000)));
    let s = assign(&cfg, &host, &mut fns).unwrap();
    assert_eq!(s.assigned, 2);
    let edu_bar = fns[1].bars[0];
    assert_eq!(edu_bar.base % (1 << 20), 0);
    assert_eq!(cfg.read32(fns[1].bdf, reg::BAR0), edu_bar.base as u32, "BAR programmed");
    let nvme_bar = fns[2].bars[0];
    assert_eq!(nvme_bar.kind, BarKind::Mem64);
    assert!(nvme_bar.base >= 0x80_0000_0000, "64-bit BAR on the root bus uses the 64-bit window");
    assert_eq!(cfg.read32(fns[2].bdf, reg::BAR0 + 4), (nvme_bar.base >> 32) as u32);
    assert_ne!(cfg.read16(fns[1].bdf, reg::COMMAND) & reg::CMD_MEMORY, 0, "memory decode on");
    assert_eq!(cfg.read16(fns[1].bdf, reg::COMMAND) & reg::CMD_BUS_MASTER, 0, "bus master stays off");
}

#[test]
fn devices_behind_a_root_port_and_a_bridge_chain_get_buses_and_windows() {
    // root port (bus 0 dev 1) -> edu ; pci bridge (bus 0 dev 2) -> bridge -> edu (multi-function: + fn 1)
    let rp = FakeFunction::bridge(None, 1, 0x1B36, 0x000C).with_cap(0x40, crate::caps::id::PCIE, &[0x42, 0]);
    let e1 = edu(Some(0), 0);
    let b1 = FakeFunction::bridge(None, 2, 0x1B36, 0x0001);
    let b2 = FakeFunction::bridge(Some(2), 3, 0x1B36, 0x0001);
    let e2 = edu(Some(3), 0).multifunction();
    let e3 = FakeFunction::endpoint(Some(3), 0, 1, 0x1AF4, 0x1057, 0x00FF00).with_mem_bar(0, 16 << 10, true, true);
    let cfg = FakeConfig::new(0, vec![rp, e1, b1, b2, e2, e3]);
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    let bdfs: Vec<String> = fns.iter().map(|f| f.bdf.to_string()).collect();
    assert_eq!(bdfs, ["0000:00:01.0", "0000:01:00.0", "0000:00:02.0", "0000:02:03.0", "0000:03:00.0", "0000:03:00.1"]);
    assert_eq!(fns[0].bridge_buses, Some((1, 1)));
    assert_eq!(fns[2].bridge_buses, Some((2, 3)));
    assert_eq!(fns[3].bridge_buses, Some((3, 3)));
    assert_eq!(fns[4].path, vec![Bdf::new(0, 0, 2, 0), Bdf::new(0, 2, 3, 0)]);
    assert_eq!(fns[0].caps.pcie_port_type, Some(4), "root port");
    assign(&cfg, &host, &mut fns).unwrap();
    // Every endpoint BAR lies inside every window of its bridges.
    for f in fns.iter().filter(|f| !f.is_bridge()) {
        for bar in &f.bars {
            assert!(bar.base != 0 && bar.base + bar.size <= 1 << 32, "{} {bar:?}", f.bdf);
            for bridge in &f.path {
                let w = cfg.read32(*bridge, reg::MEMORY_BASE);
                let (base, limit) = (u64::from(w & 0xFFF0) << 16, (u64::from(w >> 16 & 0xFFF0) << 16) | 0xF_FFFF);
                assert!(bar.base >= base && bar.base + bar.size - 1 <= limit, "{} not in {bridge}'s window", f.bdf);
            }
        }
    }
    assert_ne!(cfg.read16(fns[0].bdf, reg::COMMAND) & reg::CMD_BUS_MASTER, 0, "bridges forward DMA");
}

#[test]
fn firmware_assigned_bars_and_buses_are_kept() {
    let rp = FakeFunction::bridge(None, 1, 0x8086, 0x1234).with_bytes(0x18, &[0, 5, 5, 0]);
    let e = edu(Some(0), 0).with_bar_value(0, 0xFEA0_0000);
    let cfg = FakeConfig::new(0, vec![rp, e]);
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    assert_eq!(fns[1].bdf, Bdf::new(0, 5, 0, 0), "firmware's bus number kept");
    assert_eq!(fns[1].bars[0].base, 0xFEA0_0000);
    let s = assign(&cfg, &host, &mut fns).unwrap();
    assert_eq!((s.assigned, s.kept), (0, 1));
    assert_eq!(cfg.read32(fns[1].bdf, reg::BAR0), 0xFEA0_0000);
}

#[test]
fn without_host_windows_firmware_bars_are_kept_and_the_rest_left_alone() {
    // An ACPI machine: MCFG gives the ECAM but no windows (they are AML).
    let mut host = virt_host();
    host.mmio32 = None;
    host.mmio64 = None;
    host.io = None;
    let kept = edu(None, 1).with_bar_value(0, 0x1000_0000);
    let missing = edu(None, 2);
    let cfg = FakeConfig::new(0, vec![kept, missing]);
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    let s = assign(&cfg, &host, &mut fns).unwrap();
    assert_eq!((s.assigned, s.kept, s.unplaced), (0, 1, 1));
    assert_eq!(fns[0].bars[0].base, 0x1000_0000);
    assert_eq!(fns[1].bars[0].base, 0, "no address invented");
    assert_eq!(cfg.read16(fns[1].bdf, reg::COMMAND) & reg::CMD_MEMORY, 0, "no decode of an unplaced BAR");
}

#[test]
fn window_too_small_is_a_typed_error() {
    let mut host = virt_host();
    host.mmio32 = Some(Window { cpu_base: 0x1000_0000, pci_base: 0x1000_0000, size: 0x8_0000 });
    host.mmio64 = None;
    let cfg = FakeConfig::new(0, vec![edu(None, 4)]);
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    assert_eq!(
        assign(&cfg, &host, &mut fns),
        Err(PciError::WindowExhausted { bdf: Bdf::new(0, 0, 4, 0), bar: 0, size: 1 << 20 })
    );
}

#[test]
fn capability_loop_is_detected_and_enumeration_goes_on() {
    let looped = edu(None, 4).with_cap(0x40, crate::caps::id::MSI, &[0, 0]).with_bytes(0x41, &[0x40]);
    let cfg = FakeConfig::new(0, vec![looped]);
    assert_eq!(crate::caps::read(&cfg, Bdf::new(0, 0, 4, 0)), Err(PciError::BadCapabilityList(Bdf::new(0, 0, 4, 0))));
    let into_header = edu(None, 4).with_bytes(0x06, &[0x10]).with_bytes(0x34, &[0x20]);
    let cfg2 = FakeConfig::new(0, vec![into_header]);
    assert!(crate::caps::read(&cfg2, Bdf::new(0, 0, 4, 0)).is_err());
    let fns = enumerate(&cfg, &virt_host(), true).unwrap();
    assert_eq!(fns.len(), 1, "a bad capability list does not stop enumeration");
}

#[test]
fn msi_fields_decode() {
    // Control: 64-bit (bit 7), per-vector mask (bit 8), 4 vectors capable (MMC = 2).
    let ctrl: u16 = (1 << 7) | (1 << 8) | (2 << 1);
    let f = edu(None, 4).with_cap(0x40, crate::caps::id::MSI, &ctrl.to_le_bytes());
    let cfg = FakeConfig::new(0, vec![f]);
    let caps = crate::caps::read(&cfg, Bdf::new(0, 0, 4, 0)).unwrap();
    let msi = caps.msi.unwrap();
    assert!(msi.is_64bit && msi.per_vector_mask);
    assert_eq!((msi.offset, msi.vectors), (0x40, 4));
    assert_eq!(caps.names(), vec!["msi"]);
}

#[test]
fn out_of_bus_numbers() {
    let mut host = virt_host();
    host.bus_end = 0;
    let cfg = FakeConfig::new(0, vec![FakeFunction::bridge(None, 1, 1, 1), edu(Some(0), 0)]);
    assert_eq!(enumerate(&cfg, &host, true), Err(PciError::OutOfBusNumbers(Bdf::new(0, 0, 1, 0))));
}

/// The pages `bar` touches, first and last.
fn pages(bar: &Bar) -> (u64, u64) {
    (bar.base / PAGE_SIZE, (bar.base + bar.size - 1) / PAGE_SIZE)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random endpoints (some behind one or two bridges) with random BARs, some
    /// smaller than a page: after assignment no two BARs overlap, each is
    /// naturally aligned and page aligned, inside a host window, and inside the
    /// windows of every bridge above it, and no two functions' BARs share a page.
    #[test]
    fn assignment_invariants(devs in proptest::collection::vec((0u8..3, 4u32..22, any::<bool>(), any::<bool>()), 1..12)) {
        let mut fns = vec![
            FakeFunction::bridge(None, 30, 1, 1),
            FakeFunction::bridge(Some(0), 0, 1, 1),
        ];
        for (i, &(place, log2, is64, pref)) in devs.iter().enumerate() {
            let parent = match place { 0 => None, 1 => Some(0), _ => Some(1) };
            let dev = (i as u8) + 1;
            fns.push(FakeFunction::endpoint(parent, dev, 0, 0x1234, i as u16, 0xFF00)
                .with_mem_bar(0, 1 << log2, is64, pref)
                .with_mem_bar(if is64 { 2 } else { 1 }, 1 << (log2 - 1).max(4), false, false));
        }
        let cfg = FakeConfig::new(0, fns);
        let host = virt_host();
        let mut found = enumerate(&cfg, &host, true).unwrap();
        prop_assert_eq!(found.len(), devs.len() + 2);
        assign(&cfg, &host, &mut found).unwrap();
        let mut ranges: Vec<(Bdf, u64, u64)> = Vec::new();
        for f in found.iter().filter(|f| !f.is_bridge()) {
            for bar in &f.bars {
                prop_assert_eq!(bar.base % bar.size, 0);
                prop_assert_eq!(bar.base % PAGE_SIZE, 0, "memory BARs are page aligned");
                let in32 = host.mmio32.is_some_and(|w| bar.base >= w.pci_base && bar.base + bar.size <= w.pci_base + w.size);
                let in64 = host.mmio64.is_some_and(|w| bar.base >= w.pci_base && bar.base + bar.size <= w.pci_base + w.size);
                prop_assert!(in32 || in64);
                for bridge in &f.path {
                    let w = cfg.read32(*bridge, reg::MEMORY_BASE);
                    let (lo, hi) = (u64::from(w & 0xFFF0) << 16, (u64::from(w >> 16 & 0xFFF0) << 16) | 0xF_FFFF);
                    prop_assert!(bar.base >= lo && bar.base + bar.size - 1 <= hi);
                }
                let (first, last) = pages(bar);
                for &(other, b, s) in &ranges {
                    prop_assert!(bar.base + bar.size <= b || b + s <= bar.base, "overlap");
                    let (of, ol) = (b / PAGE_SIZE, (b + s - 1) / PAGE_SIZE);
                    prop_assert!(other == f.bdf || last < of || ol < first, "{} and {} share a page", f.bdf, other);
                }
                ranges.push((f.bdf, bar.base, bar.size));
            }
        }
        prop_assert_eq!(shares_page(&found), vec![]);
    }

    /// Firmware assigned some BARs (some in the middle of a page), left others
    /// unassigned: the kept ones stay, and the new ones are naturally and page
    /// aligned and share no page with any other BAR, kept or new.
    #[test]
    fn partial_assignment_keeps_clear_of_firmware_pages(
        devs in proptest::collection::vec((4u32..22, any::<bool>(), 0u64..4, 0u64..256, 4u32..16), 1..12),
    ) {
        let mut fns = Vec::new();
        let mut firmware = Vec::new();
        for (i, &(log2, assigned, jitter, sub, log2b)) in devs.iter().enumerate() {
            let size = 1u64 << log2;
            let mut f = FakeFunction::endpoint(None, (i as u8) + 1, 0, 0x1234, i as u16, 0xFF00)
                .with_mem_bar(0, size, false, false)
                .with_mem_bar(1, 1 << log2b, false, false);
            if assigned {
                // A 4 MiB slot of its own, at a random sub-page offset when the BAR is small.
                let base = 0x1000_0000 + (i as u64 * 4 + jitter) * (4 << 20) + if size < PAGE_SIZE { (sub * size) % PAGE_SIZE } else { 0 };
                f = f.with_bar_value(0, base as u32);
                firmware.push(((i as u8) + 1, base));
            }
            fns.push(f);
        }
        let cfg = FakeConfig::new(0, fns);
        let host = virt_host();
        let mut found = enumerate(&cfg, &host, true).unwrap();
        let s = assign(&cfg, &host, &mut found).unwrap();
        prop_assert_eq!(s.kept, firmware.len());
        prop_assert_eq!(s.assigned, 2 * devs.len() - firmware.len());
        let all: Vec<(Bdf, Bar)> = found.iter().flat_map(|f| f.bars.iter().map(move |b| (f.bdf, *b))).collect();
        for &(bdf, bar) in &all {
            let kept = firmware.iter().find(|k| k.0 == bdf.dev && bar.index == 0);
            if let Some(&(_, base)) = kept {
                prop_assert_eq!(bar.base, base, "firmware BAR kept");
                continue;
            }
            prop_assert!(bar.base != 0);
            prop_assert_eq!(bar.base % bar.size.max(PAGE_SIZE), 0);
            let (first, last) = pages(&bar);
            for &(other, b) in &all {
                if (other, b.index) != (bdf, bar.index) {
                    let (of, ol) = pages(&b);
                    prop_assert!(last < of || ol < first, "{} BAR{} shares a page with {} BAR{}", bdf, bar.index, other, b.index);
                }
            }
        }
        prop_assert_eq!(shares_page(&found), vec![]);
    }
}

#[test]
fn small_memory_bars_get_a_page_each() {
    let f =
        |dev, size| FakeFunction::endpoint(None, dev, 0, 0x1234, 0x1000, 0xFF00).with_mem_bar(0, size, false, false);
    let cfg = FakeConfig::new(0, vec![f(1, 16), f(2, 256), f(3, 4096), f(4, 16)]);
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    assign(&cfg, &host, &mut fns).unwrap();
    let bases: Vec<u64> = fns.iter().map(|f| f.bars[0].base).collect();
    // Largest first from the window base; every BAR starts a page and takes one.
    // (Packed naturally these were 0x1000_1100, 0x1000_1000, 0x1000_0000, 0x1000_1110.)
    assert_eq!(bases, [0x1000_2000, 0x1000_1000, 0x1000_0000, 0x1000_3000]);
    for (i, f) in fns.iter().enumerate() {
        assert_eq!(cfg.read32(f.bdf, reg::BAR0), bases[i] as u32, "programmed");
    }
    assert!(shares_page(&fns).is_empty());
}

#[test]
fn io_bars_still_pack_naturally() {
    let a = FakeFunction::endpoint(None, 1, 0, 0x1234, 0x1000, 0xFF00).with_io_bar(0, 32);
    let b = FakeFunction::endpoint(None, 2, 0, 0x1234, 0x1001, 0xFF00).with_io_bar(0, 16).with_io_bar(1, 4);
    let cfg = FakeConfig::new(0, vec![a, b]);
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    assign(&cfg, &host, &mut fns).unwrap();
    assert_eq!(fns[0].bars[0].base, 0x1000);
    assert_eq!((fns[1].bars[0].base, fns[1].bars[1].base), (0x1020, 0x1030));
    assert!(fns.iter().flat_map(|f| &f.bars).all(|b| b.kind == BarKind::Io));
    assert!(shares_page(&fns).is_empty(), "I/O BARs are not pages");
}

#[test]
fn partial_assignment_avoids_firmware_bars() {
    let f =
        |dev, size| FakeFunction::endpoint(None, dev, 0, 0x1234, 0x1000, 0xFF00).with_mem_bar(0, size, false, false);
    let cfg = FakeConfig::new(
        0,
        vec![
            f(1, 64 << 10).with_bar_value(0, 0x1000_0000),
            f(2, 2 << 10).with_bar_value(0, 0x1001_0800),
            f(3, 16),
            f(4, 64 << 10),
            FakeFunction::endpoint(None, 5, 0, 0x1234, 0x1000, 0xFF00).with_io_bar(0, 32).with_bar_value(0, 0x1000),
            FakeFunction::endpoint(None, 6, 0, 0x1234, 0x1000, 0xFF00).with_io_bar(0, 16),
        ],
    );
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    let s = assign(&cfg, &host, &mut fns).unwrap();
    assert_eq!((s.assigned, s.kept), (3, 3));
    let bases: Vec<u64> = fns.iter().map(|f| f.bars[0].base).collect();
    // Without the reservation these went to 0x1000_0000 (inside dev 1's BAR),
    // 0x1001_0000 (dev 2's page) and I/O port 0x1000 (dev 5's ports).
    assert_eq!(bases, [0x1000_0000, 0x1001_0800, 0x1001_1000, 0x1002_0000, 0x1000, 0x1020]);
    assert!(shares_page(&fns).is_empty());
}

fn mem_bar(index: u8, base: u64, size: u64) -> Bar {
    Bar { index, kind: BarKind::Mem32, prefetchable: false, base, size }
}

fn with_bars(dev: u8, bars: Vec<Bar>) -> Function {
    Function {
        bdf: Bdf::new(0, 0, dev, 0),
        vendor: 0x1234,
        device: 0x1000,
        class: 0xFF00,
        header_type: 0,
        bars,
        caps: Default::default(),
        path: Vec::new(),
        bridge_buses: None,
    }
}

#[test]
fn shares_page_reports_firmware_packed_bars() {
    let io = Bar { index: 0, kind: BarKind::Io, prefetchable: false, base: 0x3000_0000, size: 0x100 };
    let fns = vec![
        with_bars(10, vec![mem_bar(0, 0x5000_0000, 0x1_0000)]),
        with_bars(1, vec![mem_bar(0, 0x2000_0000, 0x100)]),
        with_bars(2, vec![mem_bar(0, 0x2000_0100, 0x100)]),
        with_bars(3, vec![mem_bar(0, 0x2000_1000, 0x1000)]),
        with_bars(4, vec![mem_bar(0, 0x3000_0000, 0x2000), mem_bar(2, 0x3000_3000, 0x10)]),
        with_bars(5, vec![io, mem_bar(1, 0x3000_1800, 0x800)]),
        with_bars(6, vec![mem_bar(0, 0x4000_0000, 0x100), mem_bar(1, 0x4000_0100, 0x100)]),
        with_bars(7, vec![mem_bar(0, 0, 0x10)]),
        with_bars(8, vec![mem_bar(0, 0, 0x10)]),
        with_bars(9, vec![mem_bar(0, 0x5000_4000, 0x1000)]),
        with_bars(11, vec![mem_bar(0, 0xFFFF_FFFF_FFFF_F000, 0x2000)]),
    ];
    let d = |dev| Bdf::new(0, 0, dev, 0);
    assert_eq!(
        shares_page(&fns),
        vec![(d(1), 0, d(2), 0), (d(4), 0, d(5), 1), (d(10), 0, d(9), 0)],
        "same-function, I/O and unassigned BARs are not reported"
    );
    for (dev, index, shared) in [
        (1, 0, true),
        (2, 0, true),
        (3, 0, false),
        (4, 0, true),
        (4, 2, false),
        (5, 1, true),
        (5, 0, false),
        (6, 0, false),
    ] {
        assert_eq!(bar_shares_page(&fns, d(dev), index), shared, "dev {dev} BAR{index}");
    }
}

#[test]
fn bdf_rid_and_display() {
    let b = Bdf::new(0, 0x01, 0x1F, 7);
    assert_eq!(b.rid(), 0x01FF);
    assert_eq!(Bdf::from_rid(0, 0x01FF), b);
    assert_eq!(b.to_string(), "0000:01:1f.7");
    assert_eq!(Bdf::new(1, 0, 0x24, 9), Bdf::new(1, 0, 4, 1), "fields masked");
}

#[test]
fn requester_ids_behind_conventional_and_pcie_to_pci_bridges() {
    let rp = FakeFunction::bridge(None, 1, 0x1B36, 0x000C).with_cap(0x40, crate::caps::id::PCIE, &[0x42, 0]);
    let e1 = edu(Some(0), 0);
    let conv = FakeFunction::bridge(None, 2, 0x1B36, 0x0001);
    let e2 = edu(Some(2), 3);
    let p2p = FakeFunction::bridge(None, 4, 0x1B36, 0x000E).with_cap(0x40, crate::caps::id::PCIE, &[0x72, 0]);
    let e3 = edu(Some(4), 5);
    let cfg = FakeConfig::new(0, vec![rp, e1, conv, e2, p2p, e3]);
    let fns = enumerate(&cfg, &virt_host(), true).unwrap();
    let rid_of = |vendor_dev: Bdf| {
        let f = fns.iter().find(|f| f.bdf == vendor_dev).unwrap();
        crate::dma_requester_id(f, &fns)
    };
    assert_eq!(rid_of(Bdf::new(0, 1, 0, 0)), 0x0100, "behind a PCIe root port: its own RID");
    assert_eq!(rid_of(Bdf::new(0, 2, 3, 0)), Bdf::new(0, 0, 2, 0).rid(), "behind a PCI-PCI bridge: the bridge's RID");
    assert_eq!(rid_of(Bdf::new(0, 3, 5, 0)), 0x0300, "behind a PCIe-to-PCI bridge: secondary bus, devfn 0");
}

/// Found by `cargo xtask fuzz pci`: a host window whose end passes 2^64 (a
/// firmware table's claim) overflowed the BAR allocator's window end.
#[test]
fn window_past_the_top_of_the_address_space_is_cut_not_overflowed() {
    let cfg = FakeConfig::new(0, vec![edu(None, 1)]);
    let w = Window { cpu_base: u64::MAX - 0xF_FFFF, pci_base: u64::MAX - 0xF_FFFF, size: u64::MAX };
    let host = HostBridge { mmio32: Some(w), mmio64: None, io: None, ..virt_host() };
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    // 1 MiB does not fit below 2^64 from there (the window starts 1 MiB - 1 below it).
    assert!(matches!(assign(&cfg, &host, &mut fns), Err(PciError::WindowExhausted { .. })));
}

/// Found by `cargo xtask fuzz pci`: a BAR whose writable bits are not
/// contiguous (a hostile or broken device) was sized `!mask + 1`, no power of
/// two, and assignment then placed it off a page boundary, sharing a page with
/// another function's BAR. The size is the lowest writable bit, as in Linux.
#[test]
fn non_contiguous_bar_mask_is_sized_by_its_lowest_bit() {
    let mut odd = FakeFunction::endpoint(None, 1, 0, 0x1234, 0x0001, 0x00FF00);
    odd.bar_masks[0] = 0xFFFF_0400; // bits 10 and 16..31 writable
    odd.bar_masks[1] = 0xFFFF_FC00; // a 1 KiB I/O BAR's mask shape, as memory
    odd.bar_masks[2] = 0x0000_FF04; // I/O: bits 2 and 8..15
    odd.cfg[0x18] = 1; // BAR2 is I/O
    let cfg = FakeConfig::new(0, vec![odd, edu(None, 2)]);
    let host = virt_host();
    let mut fns = enumerate(&cfg, &host, true).unwrap();
    let sizes: Vec<u64> = fns[0].bars.iter().map(|b| b.size).collect();
    assert_eq!(sizes, [0x400, 0x400, 0x4]);
    assign(&cfg, &host, &mut fns).unwrap();
    for b in fns[0].bars.iter().filter(|b| b.kind != BarKind::Io) {
        assert_eq!(b.base % PAGE_SIZE, 0, "BAR{} at {:#x}", b.index, b.base);
    }
    assert!(shares_page(&fns).is_empty());
}
