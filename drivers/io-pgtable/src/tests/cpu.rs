//! The CPU format ([`ArmCpu`]) and the operations the aarch64 board uses on
//! it: descriptor encodings, the round trip of every permission, and a
//! page-by-page model of map / unmap / lookup / walk / prune.

use super::{Arena, ArmCpu, Error, Format, PageTable, Perms, TableMemory};
use crate::{Entry, Mapping};
use proptest::prelude::*;
use std::collections::BTreeMap;

const CPU: ArmCpu = ArmCpu::new(4, 1, 0);
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

/// Every combination of the flags the CPU format reads.
fn all_perms() -> impl Iterator<Item = Perms> {
    let flags = [Perms::READ, Perms::WRITE, Perms::EXEC, Perms::CACHE, Perms::USER];
    (0u32..32).map(move |bits| {
        flags.iter().enumerate().filter(|&(i, _)| bits & (1 << i) != 0).fold(Perms::empty(), |p, (_, &f)| p | f)
    })
}

#[test]
fn every_permission_round_trips_at_every_leaf_level() {
    for level in 0..3 {
        let pa = 0x0000_8765_4000_0000u64 & !(crate::level_size(level) - 1);
        for perms in all_perms() {
            let valid = perms.contains(Perms::READ) && (!perms.contains(Perms::EXEC) || perms.contains(Perms::CACHE));
            match CPU.encode_leaf(pa, level, perms) {
                Ok(pte) => {
                    assert!(valid, "{perms:?} accepted");
                    assert_eq!(CPU.decode(pte, level), Entry::Leaf { pa, perms }, "{perms:?} level {level}");
                    // AF always; nG exactly for user leaves; a page at level 0, a block above.
                    assert_ne!(pte & (1 << 10), 0);
                    assert_eq!(pte & (1 << 11) != 0, perms.contains(Perms::USER));
                    assert_eq!(pte & 2 != 0, level == 0);
                    // Never executable at both levels; user leaves never at EL1.
                    assert_ne!(pte & (PXN | UXN), 0);
                    if perms.contains(Perms::USER) {
                        assert_ne!(pte & PXN, 0);
                    }
                }
                Err(e) => {
                    assert!(!valid, "{perms:?} refused");
                    assert_eq!(e, Error::BadPerms);
                }
            }
        }
    }
    assert!(!CPU.leaf_allowed(3), "no 512 GiB leaves");
    assert_eq!(CPU.encode_leaf(1 << 48, 0, Perms::READ), Err(Error::OutOfRange), "beyond 48-bit output");
}

#[test]
fn descriptors_are_the_architectural_ones() {
    let pa = 0x4123_4000u64;
    let rw = Perms::READ | Perms::WRITE;
    // Kernel data: Normal (AttrIndx 1), inner shareable, AF, page, PXN | UXN.
    assert_eq!(CPU.encode_leaf(pa, 0, rw | Perms::CACHE), Ok(pa | 0x707 | PXN | UXN));
    // Kernel MMIO: Device (AttrIndx 0), SH 0.
    assert_eq!(CPU.encode_leaf(pa, 0, rw), Ok(pa | 0x403 | PXN | UXN));
    // Kernel text: EL1 may execute.
    assert_eq!(CPU.encode_leaf(pa, 0, Perms::READ | Perms::EXEC | Perms::CACHE), Ok(pa | 0x787 | UXN));
    // User data: AP[1] (EL0), nG, PXN | UXN.
    let user = Perms::USER | Perms::CACHE;
    assert_eq!(CPU.encode_leaf(pa, 0, rw | user), Ok(pa | 0xF47 | PXN | UXN));
    // User text: read-only (AP[2]), EL0 may execute.
    assert_eq!(CPU.encode_leaf(pa, 0, Perms::READ | Perms::EXEC | user), Ok(pa | 0xFC7 | PXN));
    // User device (a mapped BAR).
    assert_eq!(CPU.encode_leaf(pa, 0, rw | Perms::USER), Ok(pa | 0xC43 | PXN | UXN));
    // A 2 MiB block: bit 1 clear.
    assert_eq!(CPU.encode_leaf(0x4020_0000, 1, rw | Perms::CACHE), Ok(0x4020_0705 | PXN | UXN));
    // Another MAIR layout.
    assert_eq!(ArmCpu::new(4, 4, 2).encode_leaf(pa, 0, rw | Perms::CACHE), Ok(pa | 0x713 | PXN | UXN));
    assert_eq!(ArmCpu::new(4, 4, 2).encode_leaf(pa, 0, rw), Ok(pa | 0x40B | PXN | UXN));
    assert_eq!(CPU.encode_table(0x8000_1000, 2), 0x8000_1003);
}

#[test]
fn the_boot_codes_blocks_decode() {
    // boot/aarch64: 1 GiB blocks of RAM (0x705) and of devices (0x401), 2 MiB kernel-image blocks.
    let rwx = Perms::READ | Perms::WRITE | Perms::EXEC;
    assert_eq!(CPU.decode(0x4000_0705, 2), Entry::Leaf { pa: 0x4000_0000, perms: rwx | Perms::CACHE });
    assert_eq!(CPU.decode(0x0000_0401, 2), Entry::Leaf { pa: 0, perms: rwx });
    assert_eq!(CPU.decode(0x4020_0705, 1), Entry::Leaf { pa: 0x4020_0000, perms: rwx | Perms::CACHE });
    assert_eq!(CPU.decode(0x4020_0701, 0), Entry::Empty, "a block encoding at level 3 is reserved");
    assert_eq!(CPU.decode(0x4000_0700, 2), Entry::Empty, "not valid");
}

/// Every table reachable from `root`: (level, first input address, frame, holds no entry).
fn tables(mem: &Arena, root: u64) -> Vec<(usize, u64, u64, bool)> {
    fn visit(mem: &Arena, table: u64, level: usize, base: u64, out: &mut Vec<(usize, u64, u64, bool)>) {
        out.push((level, base, table, (0..512).all(|i| mem.read(table, i) == 0)));
        if level == 0 {
            return;
        }
        for i in 0..512 {
            if let Entry::Table(next) = CPU.decode(mem.read(table, i), level) {
                visit(mem, next, level - 1, base + i as u64 * crate::level_size(level), out);
            }
        }
    }
    let mut out = Vec::new();
    visit(mem, root, CPU.levels() - 1, 0, &mut out);
    out
}

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, perms: u8 },
    Unmap { page: u64 },
    Lookup { page: u64 },
    Walk { page: u64, pages: u64, stop: usize },
    Prune { page: u64, pages: u64 },
}

/// The rights the board asks for (kernel data / MMIO / text, user data / text / device).
const CPU_PERMS: [Perms; 6] = [
    Perms::READ.union(Perms::WRITE).union(Perms::CACHE),
    Perms::READ.union(Perms::WRITE),
    Perms::READ.union(Perms::EXEC).union(Perms::CACHE),
    Perms::USER.union(Perms::READ).union(Perms::WRITE).union(Perms::CACHE),
    Perms::USER.union(Perms::READ).union(Perms::EXEC).union(Perms::CACHE),
    Perms::USER.union(Perms::READ).union(Perms::WRITE),
];

/// 48-bit space: 2^36 pages. Clustered so that pages share tables, sit on
/// table boundaries and at the top.
fn page() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..1500,
        2 => (0u64..6).prop_map(|k| k * 512 + 511),
        1 => (0u64..4).prop_map(|k| k * 262_144),
        1 => (1u64..600).prop_map(|k| (1 << 36) - k),
        1 => (0u64..3).prop_map(|k| (k << 27) + 5),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        5 => (page(), 0u8..6).prop_map(|(page, perms)| Op::Map { page, perms }),
        3 => page().prop_map(|page| Op::Unmap { page }),
        1 => page().prop_map(|page| Op::Lookup { page }),
        1 => (page(), prop_oneof![1u64..600, Just(1u64 << 36)], 0usize..20)
            .prop_map(|(page, pages, stop)| Op::Walk { page, pages, stop }),
        1 => (page(), prop_oneof![1u64..600, Just(1u64 << 36)]).prop_map(|(page, pages)| Op::Prune { page, pages }),
    ];
    proptest::collection::vec(op, 1..60)
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let top = 1u64 << 48;
    let mut mem = Arena::new();
    let mut t = PageTable::new(CPU, &mut mem).unwrap();
    let mut model: BTreeMap<u64, (u64, Perms)> = BTreeMap::new();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Map { page, perms } => {
                let (va, pa, p) = (page << 12, 0x8000_0000 + (n as u64) * 4096, CPU_PERMS[perms as usize]);
                let got = t.map(&mut mem, va, pa, 4096, p).map(|g| g.release(&mut mem));
                if let std::collections::btree_map::Entry::Vacant(e) = model.entry(va) {
                    prop_assert_eq!(got, Ok(()));
                    e.insert((pa, p));
                } else {
                    prop_assert_eq!(got, Err(Error::AlreadyMapped(va)));
                }
            }
            Op::Unmap { page } => {
                let va = page << 12;
                let (bytes, g) = t.unmap(&mut mem, va, 4096).unwrap();
                prop_assert!(!g.has_freed_tables(), "a 4 KiB unmap frees no table");
                g.release(&mut mem);
                prop_assert_eq!(bytes, if model.remove(&va).is_some() { 4096 } else { 0 });
            }
            Op::Lookup { page } => {
                let va = page << 12;
                let want = model.get(&va).map(|&(pa, perms)| Mapping { iova: va, size: 4096, pa, perms });
                prop_assert_eq!(t.lookup(&mem, va + 0x123), want);
            }
            Op::Walk { page, pages, stop } => {
                let (start, end) = (page << 12, ((page + pages) << 12).min(top));
                let mut got = Vec::new();
                let done = t.walk(&mem, start, end, &mut |m| {
                    got.push(m);
                    got.len() < stop
                });
                let want: Vec<Mapping> = model
                    .range(start..end)
                    .map(|(&iova, &(pa, perms))| Mapping { iova, size: 4096, pa, perms })
                    .take(stop.max(1))
                    .collect();
                let all = model.range(start..end).count();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(done, all < stop.max(1) || (all == 0));
            }
            Op::Prune { page, pages } => {
                let (start, end) = (page << 12, ((page + pages) << 12).min(top));
                let live = mem.live();
                let freed = t.prune(&mut mem, start, end);
                let n = freed.count(&mem);
                freed.release(&mut mem);
                prop_assert_eq!(mem.live(), live - n);
                // No empty table is left over the range (the root excepted).
                for (level, base, _, empty) in tables(&mem, t.root()) {
                    let span = crate::level_size(level + 1);
                    let overlaps = base < end && start < base + span;
                    prop_assert!(level == 3 || !(empty && overlaps), "empty level-{} table at {:#x}", level, base);
                }
            }
        }
    }
    // Everything the model holds, through the walk and through lookups.
    let mut seen = Vec::new();
    let whole = t.walk(&mem, 0, top, &mut |m| {
        seen.push((m.iova, (m.pa, m.perms)));
        true
    });
    prop_assert!(whole);
    prop_assert_eq!(seen, model.iter().map(|(&k, &v)| (k, v)).collect::<Vec<_>>());
    // A whole-space prune leaves exactly the tables the mappings need.
    t.prune(&mut mem, 0, top).release(&mut mem);
    let mut need = std::collections::BTreeSet::new();
    for &va in model.keys() {
        for shift in [21, 30, 39] {
            need.insert((shift, va >> shift));
        }
    }
    prop_assert_eq!(mem.live(), 1 + need.len());
    for &va in model.keys() {
        t.unmap(&mut mem, va, 4096).unwrap().1.release(&mut mem);
    }
    let freed = t.prune(&mut mem, 0, top);
    prop_assert_eq!(freed.is_empty(), model.is_empty());
    freed.release(&mut mem);
    prop_assert_eq!(mem.live(), 1, "only the root is left");
    t.destroy(&mut mem);
    prop_assert_eq!(mem.live(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// Pages mapped one by one, as the board maps them, against a model.
    #[test]
    fn cpu_pages_match_the_model(ops in ops()) {
        run(&ops)?;
    }
}

#[test]
fn the_board_paths_need_no_heap() {
    // Kernel mappings run before the heap exists and user ones on syscall
    // paths that must answer ENOMEM: map (into existing tables), lookup,
    // walk, a 4 KiB unmap and a prune allocate nothing on the heap.
    let mut mem = Arena::new();
    let mut t = PageTable::new(CPU, &mut mem).unwrap();
    let rw = Perms::USER | Perms::READ | Perms::WRITE | Perms::CACHE;
    t.map(&mut mem, 0x40_0000, 0x9000_0000, 4096, rw).unwrap().release(&mut mem);
    fallible::testing::arm(u64::MAX);
    t.map(&mut mem, 0x40_1000, 0x9000_1000, 4096, rw).unwrap().release(&mut mem);
    assert!(t.lookup(&mem, 0x40_1000).is_some());
    assert!(t.walk(&mem, 0, 1 << 48, &mut |_| true));
    for va in [0x40_0000, 0x40_1000] {
        let (n, g) = t.unmap(&mut mem, va, 4096).unwrap();
        assert_eq!(n, 4096);
        g.release(&mut mem);
    }
    let freed = t.prune(&mut mem, 0x40_0000, 0x40_2000);
    assert_eq!(freed.count(&mem), 3);
    freed.release(&mut mem);
    assert_eq!(fallible::testing::disarm(), 0, "heap allocations on a CPU path");
    assert_eq!(mem.live(), 1);
    t.destroy(&mut mem);
}

#[test]
fn prune_keeps_what_is_still_used_and_adopted_roots_work() {
    let mut mem = Arena::new();
    let t = PageTable::new(CPU, &mut mem).unwrap();
    let root = t.root();
    // A space kept by its root alone, taken over again for each call (as the board does).
    let mut t = PageTable::from_root(CPU, root);
    let rx = Perms::USER | Perms::READ | Perms::EXEC | Perms::CACHE;
    for va in [0x1000u64, 0x20_0000, 0x4000_0000] {
        t.map(&mut mem, va, 0x7000_0000 + va, 4096, rx).unwrap().release(&mut mem);
    }
    let before = mem.live();
    t.unmap(&mut mem, 0x20_0000, 4096).unwrap().1.release(&mut mem);
    // Pruning a range the other pages share only frees the emptied leaf table.
    let mut t = PageTable::from_root(CPU, root);
    let freed = t.prune(&mut mem, 0, 0x8000_0000);
    assert_eq!(freed.count(&mem), 1);
    freed.release(&mut mem);
    assert_eq!(mem.live(), before - 1);
    assert_eq!(t.lookup(&mem, 0x1000).map(|m| m.pa), Some(0x7000_1000));
    assert_eq!(t.lookup(&mem, 0x4000_0000).map(|m| m.perms), Some(rx));
    assert!(t.prune(&mut mem, 0, 1 << 48).is_empty(), "nothing more to free");
    // A walk stops where asked, each leaf once.
    let mut seen = 0;
    assert!(!t.walk(&mem, 0, 1 << 48, &mut |_| {
        seen += 1;
        false
    }));
    assert_eq!(seen, 1);
    PageTable::from_root(CPU, root).destroy(&mut mem);
    assert_eq!(mem.live(), 0);
}
