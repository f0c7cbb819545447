//! Property tests of every format against a reference model, golden encodings,
//! allocation-failure injection and dirty tracking.

use crate::arena::Arena;
use crate::formats::{AmdV1, ArmCpu, ArmLpae, VtdSecondLevel, X86Paging};

mod cpu;
use crate::{level_size, Error, Format, PageTable, Perms, TableMemory};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Leaves as the model expects them: start → (size, pa, perms).
#[derive(Default, Clone, Debug)]
struct Model {
    leaves: BTreeMap<u64, (u64, u64, Perms)>,
}

impl Model {
    fn check_range<F: Format>(f: &F, iova: u64, len: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::Empty);
        }
        if !(iova | len).is_multiple_of(4096) {
            return Err(Error::Unaligned);
        }
        let end = iova.checked_add(len).ok_or(Error::OutOfRange)?;
        if f.ia_bits() < 64 && end > 1u64 << f.ia_bits() {
            return Err(Error::OutOfRange);
        }
        Ok(end)
    }

    fn overlapping(&self, iova: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.leaves.iter().map(|(&s, &(size, _, _))| (s, size)).filter(move |&(s, size)| s < end && iova < s + size)
    }

    fn map<F: Format>(&mut self, f: &F, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        let end = Self::check_range(f, iova, len)?;
        if !pa.is_multiple_of(4096) {
            return Err(Error::Unaligned);
        }
        f.encode_leaf(pa, 0, perms)?;
        if let Some((s, _)) = self.overlapping(iova, end).next() {
            return Err(Error::AlreadyMapped(s.max(iova)));
        }
        let (mut va, mut out) = (iova, pa);
        while va < end {
            let level = (0..f.levels())
                .rev()
                .find(|&l| f.leaf_allowed(l) && (va | out).is_multiple_of(level_size(l)) && end - va >= level_size(l))
                .unwrap_or(0);
            self.leaves.insert(va, (level_size(level), out, perms));
            va += level_size(level);
            out += level_size(level);
        }
        Ok(())
    }

    fn unmap<F: Format>(&mut self, f: &F, iova: u64, len: u64) -> Result<u64, Error> {
        let end = Self::check_range(f, iova, len)?;
        let hit: Vec<(u64, u64)> = self.overlapping(iova, end).collect();
        if let Some(&(s, _)) = hit.iter().find(|&&(s, size)| s < iova || s + size > end) {
            return Err(Error::SplitLeaf(s));
        }
        Ok(hit
            .iter()
            .map(|&(s, size)| {
                self.leaves.remove(&s);
                size
            })
            .sum())
    }

    fn lookup(&self, iova: u64) -> Option<u64> {
        let (&s, &(size, pa, _)) = self.leaves.range(..=iova).next_back()?;
        (iova < s + size).then(|| pa + (iova - s))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, pages: u64, pa_page: u64, perms: u8 },
    Unmap { page: u64, pages: u64 },
    Lookup { page: u64 },
}

/// Page numbers clustered so that maps collide, straddle 2 MiB boundaries and
/// sometimes sit at IOVA 0 or the very top of the address space (`top` pages).
fn page(top: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..2048,
        2 => (0u64..8).prop_map(|k| k * 512),
        1 => Just(0u64),
        1 => (1u64..600).prop_map(move |k| top - k),
        1 => (0u64..4).prop_map(|k| k * 262_144),
    ]
}

fn pages() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..40, 2 => Just(512u64), 1 => 500u64..1100, 1 => Just(262_144u64)]
}

fn ops(top: u64) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (page(top), pages(), prop_oneof![Just(0u64), 0u64..4096, (0u64..8).prop_map(|k| k * 262_144)], 0u8..4)
            .prop_map(|(page, pages, pa_page, perms)| Op::Map { page, pages, pa_page, perms }),
        2 => (page(top), pages()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => page(top).prop_map(|page| Op::Lookup { page }),
    ];
    proptest::collection::vec(op, 1..40)
}

fn perms_of(i: u8) -> Perms {
    [Perms::READ, Perms::READ | Perms::WRITE, Perms::READ | Perms::WRITE | Perms::CACHE, Perms::READ | Perms::EXEC]
        [i as usize % 4]
}

/// Runs `ops` on a table and the model, comparing every result, every leaf and
/// the frame count; finally unmaps everything and checks only the root is left.
fn run<F: Format + Clone>(f: F, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut mem = Arena::new();
    let mut t = PageTable::new(f.clone(), &mut mem).unwrap();
    let mut m = Model::default();
    for op in ops {
        match *op {
            Op::Map { page, pages, pa_page, perms } => {
                let (iova, len, pa) = (page.wrapping_mul(4096), pages * 4096, pa_page * 4096);
                let p = perms_of(perms);
                let got = t.map(&mut mem, iova, pa, len, p).map(|g| g.release(&mut mem));
                prop_assert_eq!(got, m.map(&f, iova, pa, len, p), "map {:#x}+{:#x}", iova, len);
                if got.is_ok() {
                    // The engine carries a large leaf in smaller ones where
                    // it falls on a table an unmap kept (see `map_level`): the
                    // model takes the engine's shapes for what was just mapped.
                    let inside = |va: u64| va.wrapping_sub(iova) < len;
                    let keys: Vec<u64> = m.leaves.range(iova..).map(|(&k, _)| k).take_while(|&k| inside(k)).collect();
                    for k in keys {
                        m.leaves.remove(&k);
                    }
                    t.for_each_mapping(&mem, &mut |va, size, out, _| {
                        if inside(va) {
                            m.leaves.insert(va, (size, out, p));
                        }
                    });
                }
            }
            Op::Unmap { page, pages } => {
                let (iova, len) = (page.wrapping_mul(4096), pages * 4096);
                let got = t.unmap(&mut mem, iova, len).map(|(n, g)| {
                    g.release(&mut mem);
                    n
                });
                prop_assert_eq!(got, m.unmap(&f, iova, len), "unmap {:#x}+{:#x}", iova, len);
            }
            Op::Lookup { page } => {
                let iova = page.wrapping_mul(4096) + 0x123;
                prop_assert_eq!(t.iova_to_phys(&mem, iova), m.lookup(iova));
            }
        }
    }
    // Every 4 KiB page the model maps, mapped to the same frame with the
    // rights asked for; the leaf shapes are the model's, except where a
    // large leaf fell on a table an earlier unmap kept (then smaller leaves
    // carry it: see `map_level`).
    let mut seen = BTreeMap::new();
    t.for_each_mapping(&mem, &mut |va, size, pa, perms| {
        for off in (0..size).step_by(0x1000) {
            seen.insert(va + off, (pa + off, perms));
        }
    });
    let mut want = BTreeMap::new();
    for (&va, &(size, pa, perms)) in &m.leaves {
        for off in (0..size).step_by(0x1000) {
            want.insert(va + off, (pa + off, perms));
        }
    }
    prop_assert_eq!(seen.len(), want.len());
    for (va, (pa, perms)) in &seen {
        let (wpa, wperms) = want[va];
        prop_assert_eq!(*pa, wpa);
        prop_assert!(perms.contains(wperms & (Perms::READ | Perms::WRITE)), "perms lost: {:?} vs {:?}", perms, wperms);
    }
    // Unmap everything: only the root remains (a 64-bit space's last page
    // is beyond any range, so the tables on its path stay until the destroy).
    let top = if f.ia_bits() >= 64 { !0xFFF } else { 1u64 << f.ia_bits() };
    let (_, g) = t.unmap(&mut mem, 0, top).unwrap();
    g.release(&mut mem);
    if f.ia_bits() < 64 {
        prop_assert_eq!(mem.live(), 1, "tables left besides the root");
    }
    t.destroy(&mut mem);
    prop_assert_eq!(mem.live(), 0);
    Ok(())
}

/// A format under test, run against the model.
type Runner = Box<dyn Fn(&[Op]) -> Result<(), TestCaseError>>;

fn all_formats() -> Vec<(&'static str, Runner)> {
    vec![
        ("vtd-sl-3", Box::new(|o: &[Op]| run(VtdSecondLevel { levels: 3, max_leaf_level: 2 }, o))),
        ("vtd-sl-4", Box::new(|o: &[Op]| run(VtdSecondLevel { levels: 4, max_leaf_level: 1 }, o))),
        ("vtd-sl-5", Box::new(|o: &[Op]| run(VtdSecondLevel { levels: 5, max_leaf_level: 2 }, o))),
        ("vtd-fl-4", Box::new(|o: &[Op]| run(X86Paging::vtd_first_level(4, 2), o))),
        ("vtd-fl-5", Box::new(|o: &[Op]| run(X86Paging::vtd_first_level(5, 1), o))),
        ("amd-v2-4", Box::new(|o: &[Op]| run(X86Paging::amd_v2(4), o))),
        ("amd-v1-3", Box::new(|o: &[Op]| run(AmdV1 { levels: 3 }, o))),
        ("amd-v1-4", Box::new(|o: &[Op]| run(AmdV1 { levels: 4 }, o))),
        ("amd-v1-6", Box::new(|o: &[Op]| run(AmdV1 { levels: 6 }, o))),
        ("arm-s1-3", Box::new(|o: &[Op]| run(ArmLpae::stage1(3, 1, 0), o))),
        ("arm-s1-4", Box::new(|o: &[Op]| run(ArmLpae::stage1(4, 1, 0), o))),
        ("arm-s2-4", Box::new(|o: &[Op]| run(ArmLpae::stage2(4), o))),
        ("arm-cpu-3", Box::new(|o: &[Op]| run(ArmCpu::new(3, 1, 0), o))),
        ("arm-cpu-4", Box::new(|o: &[Op]| run(ArmCpu::new(4, 1, 0), o))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Every format against the model. The top-of-space pages use the smallest
    /// format's width (3 levels, 39 bits); bigger formats see them as ordinary.
    #[test]
    fn formats_match_the_model(ops in ops(1 << 27)) {
        for (_, f) in all_formats() {
            f(&ops)?;
        }
    }

    /// AMD v1 with 6 levels covers the full 64-bit space: IOVAs at the very top work.
    #[test]
    fn amd_v1_full_width(ops in ops(1 << 52)) {
        run(AmdV1 { levels: 6 }, &ops)?;
    }
}

#[test]
fn golden_encodings() {
    let sl = VtdSecondLevel { levels: 4, max_leaf_level: 2 };
    assert_eq!(sl.encode_leaf(0x1234_5000, 0, Perms::READ | Perms::WRITE).unwrap(), 0x1234_5003);
    assert_eq!(sl.encode_leaf(0x4020_0000, 1, Perms::READ).unwrap(), 0x4020_0081);
    assert_eq!(sl.encode_leaf(0x1000, 0, Perms::WRITE | Perms::CACHE).unwrap(), 0x1802);
    assert_eq!(sl.encode_table(0x9000, 2), 0x9003);
    let fl = X86Paging::vtd_first_level(4, 2);
    assert_eq!(fl.encode_leaf(0x5000, 0, Perms::READ | Perms::WRITE).unwrap(), 0x8000_0000_0000_5027);
    assert_eq!(fl.encode_leaf(0x4000_0000, 2, Perms::READ | Perms::EXEC).unwrap(), 0x4000_00A5);
    assert_eq!(fl.encode_table(0x8000, 3), 0x8007);
    let amd = AmdV1 { levels: 4 };
    assert_eq!(amd.encode_leaf(0x7000, 0, Perms::READ | Perms::WRITE).unwrap(), 0x6000_0000_0000_7001);
    assert_eq!(amd.encode_table(0x9000, 1), 0x6000_0000_0000_9201, "NextLevel 1 = the PTE table");
    assert_eq!(amd.encode_table(0x9000, 3), 0x6000_0000_0000_9601);
    let s1 = ArmLpae::stage1(4, 1, 0);
    assert_eq!(
        s1.encode_leaf(0x4000_0000, 0, Perms::READ | Perms::WRITE | Perms::CACHE).unwrap(),
        0x0060_0000_4000_0F47
    );
    assert_eq!(s1.encode_leaf(0x4000_0000, 1, Perms::READ).unwrap(), 0x0060_0000_4000_0FC1);
    let s2 = ArmLpae::stage2(4);
    assert_eq!(
        s2.encode_leaf(0x8020_0000, 1, Perms::READ | Perms::WRITE | Perms::CACHE).unwrap(),
        0x0040_0000_8020_07FD
    );
    assert_eq!(s2.encode_table(0x1000, 3), 0x1003);
    assert_eq!(fl.encode_leaf(0x1000, 0, Perms::WRITE), Err(Error::BadPerms), "x86 paging has no write-only");
    assert_eq!(sl.encode_leaf(0x1000, 0, Perms::empty()), Err(Error::BadPerms));
}

#[test]
fn allocation_failure_at_every_call_leaves_no_trace() {
    for f in [VtdSecondLevel { levels: 4, max_leaf_level: 2 }] {
        for fail_at in 1..8 {
            let mut mem = Arena::new();
            let mut t = PageTable::new(f, &mut mem).unwrap();
            t.map(&mut mem, 0x20_0000, 0x1000_0000, 0x20_0000, Perms::READ).unwrap().release(&mut mem);
            let before = mem.live();
            mem.fail_at = Some(mem.allocations() + fail_at - 1);
            // A range needing new tables at several levels, then more 4K pages.
            let r = t.map(&mut mem, (1 << 39) + 0x40_1000, 0x2000_1000, 0x40_0000, Perms::READ | Perms::WRITE);
            match r {
                Err(Error::NoMemory) => {
                    assert_eq!(mem.live(), before, "fail_at {fail_at}: tables leaked");
                    assert_eq!(t.iova_to_phys(&mem, (1 << 39) + 0x40_1000), None);
                }
                Ok(g) => g.release(&mut mem),
                Err(e) => panic!("unexpected {e}"),
            }
            assert_eq!(t.iova_to_phys(&mem, 0x20_0000), Some(0x1000_0000), "earlier mapping intact");
            mem.fail_at = None;
            let (_, g) = t.unmap(&mut mem, 0, 1 << 48).unwrap();
            g.release(&mut mem);
            assert_eq!(mem.live(), 1);
        }
    }
    // Several formats, failing at each allocation of a mixed workload.
    fn mixed<F: Format + Copy>(f: F) {
        for fail_at in 0..12 {
            let mut mem = Arena::new();
            let mut t = PageTable::new(f, &mut mem).unwrap();
            mem.fail_at = Some(fail_at + 1);
            for (i, (iova, len)) in
                [(0u64, 0x1000u64), (0x1FF000, 0x3000), (0x4000_0000, 0x20_0000), (0x7F_FFFF_F000, 0x1000)]
                    .iter()
                    .enumerate()
            {
                match t.map(&mut mem, *iova, 0x8000_0000 + (i as u64) * 0x100_0000, *len, Perms::READ | Perms::WRITE) {
                    Ok(g) => {
                        g.release(&mut mem);
                        assert_eq!(t.iova_to_phys(&mem, *iova), Some(0x8000_0000 + (i as u64) * 0x100_0000));
                    }
                    Err(Error::NoMemory) => assert_eq!(t.iova_to_phys(&mem, *iova), None),
                    Err(e) => panic!("{}: {e}", f.name()),
                }
            }
            let (_, g) = t.unmap(&mut mem, 0, 1u64 << f.ia_bits().min(63)).unwrap();
            g.release(&mut mem);
            assert_eq!(mem.live(), 1, "{}: fail_at {fail_at}", f.name());
            t.destroy(&mut mem);
            assert_eq!(mem.live(), 0);
        }
    }
    mixed(VtdSecondLevel { levels: 3, max_leaf_level: 1 });
    mixed(X86Paging::vtd_first_level(4, 2));
    mixed(AmdV1 { levels: 3 });
    mixed(ArmLpae::stage1(3, 1, 0));
    mixed(ArmLpae::stage2(4));
}

#[test]
fn partial_unmap_of_a_large_leaf_is_refused() {
    let mut mem = Arena::new();
    let mut t = PageTable::new(ArmLpae::stage1(4, 1, 0), &mut mem).unwrap();
    t.map(&mut mem, 0x20_0000, 0x4020_0000, 0x20_0000, Perms::READ).unwrap().release(&mut mem);
    assert_eq!(t.unmap(&mut mem, 0x20_0000, 0x1000).map(|(n, _)| n), Err(Error::SplitLeaf(0x20_0000)));
    assert_eq!(t.iova_to_phys(&mem, 0x20_1000), Some(0x4020_1000), "nothing changed");
    let (n, g) = t.unmap(&mut mem, 0, 0x100_0000).unwrap();
    assert_eq!(n, 0x20_0000);
    assert_eq!((g.start, g.end), (0, 0x100_0000));
    g.release(&mut mem);
}

#[test]
fn gather_merges_and_collects_freed_tables() {
    let mut mem = Arena::new();
    let mut t = PageTable::new(VtdSecondLevel { levels: 4, max_leaf_level: 1 }, &mut mem).unwrap();
    t.map(&mut mem, 0x1000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    let live = mem.live();
    assert_eq!(live, 4, "root + 3 levels of tables for one 4K page");
    // Unmapping only the page keeps every table (the next map there needs them).
    let (n, g) = t.unmap(&mut mem, 0x1000, 0x1000).unwrap();
    assert_eq!((n, g.freed_tables(&mem), (g.start, g.end)), (0x1000, 0, (0x1000, 0x2000)));
    assert!(!g.has_freed_tables());
    g.release(&mut mem);
    t.map(&mut mem, 0x1000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    assert_eq!(mem.live(), 4, "the map reused the tables");
    // An unmap covering the 2 MiB span of the last-level table frees it only.
    let (_, g) = t.unmap(&mut mem, 0, 0x20_0000).unwrap();
    assert_eq!(g.freed_tables(&mem), 1);
    g.release(&mut mem);
    // Covering the 512 GiB under the root entry frees the rest, empty tables included.
    t.map(&mut mem, 0x1000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    let (n, g) = t.unmap(&mut mem, 0, 1 << 39).unwrap();
    assert_eq!(n, 0x1000);
    assert_eq!(g.freed_tables(&mem), 3);
    assert!(g.has_freed_tables());
    assert_eq!(mem.live(), 4, "frames are released only after the flush");
    g.release(&mut mem);
    assert_eq!(mem.live(), 1);
    // Tables an earlier unmap left empty go with a covering unmap that clears nothing.
    t.map(&mut mem, 0x1000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    t.unmap(&mut mem, 0x1000, 0x1000).unwrap().1.release(&mut mem);
    let (n, g) = t.unmap(&mut mem, 0, 1 << 39).unwrap();
    assert_eq!((n, g.freed_tables(&mem)), (0, 3));
    g.release(&mut mem);
    assert_eq!(mem.live(), 1);
    // A large leaf over a table an unmap kept goes inside it, as smaller leaves.
    t.map(&mut mem, 0x20_1000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    t.unmap(&mut mem, 0x20_1000, 0x1000).unwrap().1.release(&mut mem);
    t.map(&mut mem, 0x20_0000, 0x4000_0000, 0x20_0000, Perms::READ).unwrap().release(&mut mem);
    assert_eq!(t.iova_to_phys(&mem, 0x3F_F123), Some(0x401F_F123));
    let mut leaves = 0;
    t.for_each_mapping(&mem, &mut |_, size, _, _| {
        assert_eq!(size, 0x1000);
        leaves += 1;
    });
    assert_eq!(leaves, 512);
}

#[test]
fn dirty_bits_are_read_and_cleared() {
    let mut mem = Arena::new();
    let mut t = PageTable::new(VtdSecondLevel { levels: 4, max_leaf_level: 1 }, &mut mem).unwrap();
    t.map(&mut mem, 0, 0x10_0000, 0x4000, Perms::READ | Perms::WRITE).unwrap().release(&mut mem);
    // Simulate the IOMMU setting D (bit 9) on the second page.
    let mut leaf_table = t.root();
    for level in (1..4).rev() {
        leaf_table = match t.format().decode(mem.read(leaf_table, 0), level) {
            crate::Entry::Table(n) => n,
            other => panic!("{other:?}"),
        };
    }
    let pte = mem.read(leaf_table, 1);
    mem.write(leaf_table, 1, pte | 1 << 9);
    let mut dirty = Vec::new();
    t.read_and_clear_dirty(&mut mem, 0, 0x4000, &mut |va, size| dirty.push((va, size))).unwrap().release(&mut mem);
    assert_eq!(dirty, vec![(0x1000, 0x1000)]);
    dirty.clear();
    t.read_and_clear_dirty(&mut mem, 0, 0x4000, &mut |va, size| dirty.push((va, size))).unwrap().release(&mut mem);
    assert!(dirty.is_empty(), "cleared");
    // Arm with hardware dirty tracking: writable-clean leaves, hardware clears AP[2].
    let mut mem = Arena::new();
    let f = ArmLpae::stage1(4, 1, 0).with_hw_dirty();
    let mut t = PageTable::new(f, &mut mem).unwrap();
    t.map(&mut mem, 0, 0x10_0000, 0x1000, Perms::READ | Perms::WRITE).unwrap().release(&mut mem);
    let mut dirty = 0;
    t.read_and_clear_dirty(&mut mem, 0, 0x1000, &mut |_, _| dirty += 1).unwrap().release(&mut mem);
    assert_eq!(dirty, 0, "clean after map");
}

#[test]
fn range_errors() {
    let mut mem = Arena::new();
    let mut t = PageTable::new(VtdSecondLevel { levels: 3, max_leaf_level: 2 }, &mut mem).unwrap();
    assert_eq!(t.map(&mut mem, 0, 0, 0, Perms::READ), Err(Error::Empty));
    assert_eq!(t.map(&mut mem, 0x10, 0, 0x1000, Perms::READ), Err(Error::Unaligned));
    assert_eq!(t.map(&mut mem, 0, 0x10, 0x1000, Perms::READ), Err(Error::Unaligned));
    assert_eq!(t.map(&mut mem, (1 << 39) - 0x1000, 0, 0x2000, Perms::READ), Err(Error::OutOfRange));
    assert_eq!(t.map(&mut mem, !0xFFF, 0, 0x2000, Perms::READ), Err(Error::OutOfRange));
    assert_eq!(t.iova_to_phys(&mem, 1 << 40), None);
    t.map(&mut mem, 0, 0x5000, 0x2000, Perms::READ).unwrap().release(&mut mem);
    assert_eq!(t.map(&mut mem, 0x1000, 0x5000, 0x1000, Perms::READ), Err(Error::AlreadyMapped(0x1000)));
}

/// The remembered leaf table takes small maps without a walk; it must refuse
/// what the walk refuses, before writing anything: rights the format cannot
/// encode, an output address past the format's, a slot in use.
#[test]
fn maps_into_the_remembered_leaf_table_are_checked_like_walks() {
    let mut mem = Arena::new();
    // ArmCpu refuses both write-only pages and output bits past 48.
    let mut t = PageTable::new(ArmCpu::new(4, 1, 0), &mut mem).unwrap();
    t.map(&mut mem, 0x20_0000, 0x5000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    let leaves = |t: &PageTable<ArmCpu>, mem: &Arena| {
        let mut v = Vec::new();
        t.for_each_mapping(mem, &mut |va, size, pa, perms| v.push((va, size, pa, perms)));
        v
    };
    let before = leaves(&t, &mem);
    for len in [0x1000, 0x3000] {
        assert_eq!(t.map(&mut mem, 0x20_1000, 0x6000, len, Perms::WRITE), Err(Error::BadPerms), "{len:#x}");
        assert_eq!(t.map(&mut mem, 0x20_1000, 1 << 60, len, Perms::READ), Err(Error::OutOfRange), "{len:#x}");
        assert_eq!(t.map(&mut mem, 0x20_0000, 0x6000, len, Perms::READ), Err(Error::AlreadyMapped(0x20_0000)));
        assert_eq!(leaves(&t, &mem), before, "a refused map wrote something ({len:#x})");
    }
    t.map(&mut mem, 0x20_1000, 0x6000, 0x3000, Perms::READ).unwrap().release(&mut mem);
    assert_eq!(t.iova_to_phys(&mem, 0x20_3000), Some(0x8000));
}

/// A table in plain memory for [`crate::walk_foreign`]: entries by (table, index);
/// a missing entry reads as zero unless its table is listed as unreadable.
#[derive(Default)]
struct Foreign {
    entries: BTreeMap<(u64, usize), u64>,
    unreadable: Vec<u64>,
    reads: usize,
}

impl Foreign {
    fn read(&mut self, table: u64, index: usize) -> Option<u64> {
        self.reads += 1;
        if self.unreadable.contains(&table) {
            return None;
        }
        Some(self.entries.get(&(table, index)).copied().unwrap_or(0))
    }

    fn leaves<F: Format>(&mut self, fmt: &F, root: u64, start: u64, end: u64) -> Vec<(u64, u64, u64, Perms)> {
        let mut out = Vec::new();
        crate::walk_foreign(fmt, root, &mut |t, i| self.read(t, i), start, end, &mut |va, size, pa, perms| {
            out.push((va, size, pa, perms & (Perms::READ | Perms::WRITE)))
        });
        out
    }
}

const R: Perms = Perms::READ;
const RW: Perms = Perms::READ.union(Perms::WRITE);

#[test]
fn foreign_walk_reports_every_leaf_size_and_skips_what_it_cannot_read() {
    let fmt = X86Paging::vtd_first_level(4, 2);
    let (pml4, pdpt, pd, pt) = (0x1000_0000u64, 0x1000_1000, 0x1000_2000, 0x1000_3000);
    let mut m = Foreign::default();
    let e = &mut m.entries;
    e.insert((pml4, 0), pdpt | 7);
    e.insert((pdpt, 0), pd | 7);
    e.insert((pdpt, 1), 0x8000_0000 | 0x83); // 1 GiB leaf, writable
    e.insert((pd, 0), pt | 7);
    e.insert((pd, 1), 0x20_0000 | 0x81); // 2 MiB leaf, read-only
    e.insert((pt, 0), 0x5000 | 0x3);
    e.insert((pt, 1), 0x6000 | 0x1);
    e.insert((pt, 3), 0x8000_0000_0000_7003);
    e.insert((pml4, 1), 0x2000_0000 | 7); // a table nobody can read
    e.insert((pml4, 511), 0x83); // PS at the top level: reserved, not a leaf
    m.unreadable.push(0x2000_0000);
    let all = m.leaves(&fmt, pml4, 0, u64::MAX);
    assert_eq!(
        all,
        [
            (0, 0x1000, 0x5000, RW),
            (0x1000, 0x1000, 0x6000, R),
            (0x3000, 0x1000, 0x7000, RW),
            (0x20_0000, 0x20_0000, 0x20_0000, R),
            (1 << 30, 1 << 30, 0x8000_0000, RW),
        ]
    );
    // A range reports the leaves overlapping it, each whole.
    assert_eq!(m.leaves(&fmt, pml4, 0x1000, 0x20_1000).len(), 3);
    assert_eq!(m.leaves(&fmt, pml4, 0x20_1000, 0x20_2000), [(0x20_0000, 0x20_0000, 0x20_0000, R)]);
    assert_eq!(m.leaves(&fmt, pml4, 0x4000, 0x20_0000), []);
    assert_eq!(m.leaves(&fmt, pml4, 5, 5), [], "empty range");
    // An unreadable root maps nothing.
    m.unreadable.push(pml4);
    assert_eq!(m.leaves(&fmt, pml4, 0, u64::MAX), []);
}

#[test]
fn foreign_walk_survives_garbage() {
    let fmt = X86Paging::vtd_first_level(4, 2);
    // A root whose every entry points at itself: each level finds "tables",
    // the last one leaves; the walk ends after the levels run out.
    let root = 0x4000_0000u64;
    let mut m = Foreign::default();
    for i in 0..512 {
        m.entries.insert((root, i), root | 7);
    }
    let leaves = m.leaves(&fmt, root, 0, 0x4000);
    assert_eq!(leaves.len(), 4);
    assert!(leaves.iter().all(|&(_, size, pa, _)| size == 0x1000 && pa == root));
    // The whole space of that table is 2^36 leaves: a budget on reads stops it.
    let budget = 10_000;
    let (mut calls, mut leaves) = (0usize, 0usize);
    crate::walk_foreign(
        &fmt,
        root,
        &mut |_, _| {
            calls += 1;
            (calls <= budget).then_some(root | 7)
        },
        0,
        u64::MAX,
        &mut |_, _, _, _| leaves += 1,
    );
    assert!(calls <= budget + 4 * 512, "{calls} reads");
    assert!(leaves < budget);
    // All-ones entries: a reserved leaf at the top, 1 GiB leaves at the
    // highest address the format decodes below (passed on as they are).
    let mut m = Foreign::default();
    for i in 0..512 {
        m.entries.insert((root, i), u64::MAX);
    }
    assert_eq!(m.leaves(&fmt, root, 0, u64::MAX), []);
    let mut m = Foreign::default();
    m.entries.insert((root, 0), 0x5000 | 7);
    for i in 0..512 {
        m.entries.insert((0x5000, i), u64::MAX);
    }
    let leaves = m.leaves(&fmt, root, 0, u64::MAX);
    assert_eq!(leaves.len(), 512);
    assert!(leaves.iter().all(|&(_, size, pa, perms)| size == 1 << 30 && pa == 0xF_FFFF_C000_0000 && perms == RW));
    // A 1 GiB leaf where the format allows only 2 MiB ones is not present.
    let small = X86Paging::vtd_first_level(4, 1);
    assert_eq!(m.leaves(&small, root, 0, u64::MAX), []);
    // A format too deep for 64-bit addresses is not walked at all.
    let reads = m.reads;
    assert_eq!(m.leaves(&X86Paging::vtd_first_level(7, 2), root, 0, u64::MAX), []);
    assert_eq!(m.reads, reads);
}

#[test]
fn foreign_walk_agrees_with_the_engine_on_every_format() {
    fn check<F: Format + Copy>(f: F) {
        let mut mem = Arena::new();
        let mut t = PageTable::new(f, &mut mem).unwrap();
        let maps = [
            (0x1000u64, 0x10_0000u64, 0x3000u64, RW),
            (0x20_0000, 0x40_0000, 0x40_0000, R),
            (0x4000_0000, 0x8000_0000, 0x4000_0000, RW),
            (0x9000_0000, 0x7000, 0x1000, R),
        ];
        for (iova, pa, len, perms) in maps {
            t.map(&mut mem, iova, pa, len, perms).unwrap().release(&mut mem);
        }
        let mut want = Vec::new();
        t.for_each_mapping(&mem, &mut |va, size, pa, perms| want.push((va, size, pa, perms)));
        let mut got = Vec::new();
        crate::walk_foreign(
            t.format(),
            t.root(),
            &mut |table, i| Some(mem.read(table, i)),
            0,
            u64::MAX,
            &mut |va, size, pa, perms| got.push((va, size, pa, perms)),
        );
        assert_eq!(got, want, "{}", f.name());
        assert_eq!(want.len(), 3 + 2 + 1 + 1, "{}", f.name());
    }
    check(X86Paging::vtd_first_level(4, 2));
    check(X86Paging::amd_v2(5));
    check(VtdSecondLevel { levels: 3, max_leaf_level: 2 });
    check(AmdV1 { levels: 6 });
    check(ArmLpae::stage1(4, 1, 0));
    check(ArmLpae::stage2(3));
}

#[test]
fn gather_links_decode_as_empty() {
    // A freed frame's entry 0 holds a 4 KiB-aligned link: every format must
    // see it as not present at every level (a stale walker until the flush).
    fn check<F: Format>(f: F) {
        for level in 0..f.levels() {
            for link in [0x1000u64, 0x1_2345_6000, 0x000F_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000] {
                assert_eq!(f.decode(link, level), crate::Entry::Empty, "{} level {level} link {link:#x}", f.name());
            }
        }
    }
    check(VtdSecondLevel { levels: 4, max_leaf_level: 2 });
    check(X86Paging::vtd_first_level(4, 2));
    check(X86Paging::vtd_first_level(5, 2));
    check(AmdV1 { levels: 6 });
    check(ArmLpae::stage1(4, 2, 0));
    check(ArmLpae::stage2(4));
    check(ArmCpu::new(4, 1, 0));
}

/// One 4 KiB page mapped alone in a fresh 4-level region: unmapping it frees 3 tables.
fn lone_page(t: &mut PageTable<VtdSecondLevel>, mem: &mut Arena, iova: u64) -> crate::Gather {
    t.map(mem, iova, 0x1000, 0x1000, Perms::READ).unwrap().release(mem);
    // Covering the root entry's 512 GiB: its three tables go.
    let (n, g) = t.unmap(mem, iova, 1 << 39).unwrap();
    assert_eq!((n, g.freed_tables(mem)), (0x1000, 3));
    g
}

#[test]
fn merged_gathers_release_every_frame_once() {
    let mut mem = Arena::new();
    let mut t = PageTable::new(VtdSecondLevel { levels: 4, max_leaf_level: 1 }, &mut mem).unwrap();
    // Ten gathers that each freed tables: four chains inline, the rest spilled.
    let mut all = crate::Gather::default();
    assert!(all.is_empty());
    for i in 0..10u64 {
        let g = lone_page(&mut t, &mut mem, i << 39);
        assert!(all.try_merge(g).is_ok());
        assert!(all.try_merge(crate::Gather::default()).is_ok());
    }
    assert_eq!(all.freed_tables(&mem), 30);
    assert_eq!((all.start, all.end), (0, 10 << 39));
    assert_eq!(mem.live(), 31, "nothing released before the flush");
    all.release(&mut mem);
    assert_eq!(mem.live(), 1);
    // The frames come back zeroed (the arena would hand them out as they are).
    t.map(&mut mem, 0, 0x1000, 0x20_0000, Perms::READ).unwrap().release(&mut mem);
    let mut n = 0;
    t.for_each_mapping(&mem, &mut |_, _, _, _| n += 1);
    assert_eq!(n, 512);
}

#[test]
fn map_rolls_back_on_every_table_failure_and_unmap_never_allocates() {
    // A map allocates nothing from the heap; failing its n-th table
    // allocation (the arena's frames grow the heap only now and then, so
    // the arena is told to fail) must leave everything as it was.
    fn mappings<F: Format>(t: &PageTable<F>, mem: &Arena) -> Vec<(u64, u64, u64)> {
        fallible::testing::unarmed(|| {
            let mut v = Vec::new();
            t.for_each_mapping(mem, &mut |va, size, pa, _| v.push((va, size, pa)));
            v
        })
    }
    let mut mem = Arena::new();
    let mut t = PageTable::new(ArmLpae::stage2(4), &mut mem).unwrap();
    for (iova, pa, len) in
        [(0x4000_0000u64, 0x8000_0000u64, 0x1000u64), (0x20_0000, 0x40_0000, 0x40_0000), (0x7F_F000, 0x1000, 0x3000)]
    {
        let mut n = 1;
        loop {
            let (before, live) = (mappings(&t, &mem), mem.live());
            mem.fail_at = Some(mem.allocations() + n - 1);
            let r = t.map(&mut mem, iova, pa, len, Perms::READ | Perms::WRITE);
            mem.fail_at = None;
            match r {
                Ok(g) => {
                    g.release(&mut mem);
                    break;
                }
                Err(e) => {
                    assert_eq!(e, Error::NoMemory, "map {iova:#x}: failure {n}");
                    assert_eq!(mappings(&t, &mem), before, "map {iova:#x}: failure {n} left mappings");
                    assert_eq!(mem.live(), live, "map {iova:#x}: failure {n} leaked tables");
                }
            }
            n += 1;
        }
        assert!(n > 1, "the map allocated tables");
    }
    let live = mem.live();
    // Every unmap succeeds whichever heap allocation fails: a table the
    // gather has no room for stays in place, empty.
    let mut g = crate::Gather::default();
    // (Each range covers the tables under it, so the unmaps free them.)
    for (k, (iova, len, mapped)) in
        [(0x4000_0000u64, 0x20_0000u64, 0x1000u64), (0x20_0000, 0x40_0000, 0x40_0000), (0x60_0000, 0x40_0000, 0x3000)]
            .into_iter()
            .enumerate()
    {
        fallible::testing::arm(1);
        let (n, u) = t.unmap(&mut mem, iova, len).unwrap();
        fallible::testing::disarm();
        assert_eq!(n, mapped);
        assert_eq!(t.iova_to_phys(&mem, iova), None);
        if k == 0 {
            assert!(!u.has_freed_tables(), "no heap for the first head: the tables stay");
        }
        assert!(g.try_merge(u).is_ok());
    }
    assert!(g.has_freed_tables(), "the second and third unmap freed tables");
    // The kept tables are reused by a map and freed by a later unmap.
    t.map(&mut mem, 0x4000_0000, 0x8000_0000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    let (_, mut u) = t.unmap(&mut mem, 0x4000_0000, 0x20_0000).unwrap();
    let own = u.freed_tables(&mem);
    assert!(own > 0);
    // Merging gathers that both freed tables needs room for the heads: with
    // no heap the other gather comes back whole, both unchanged.
    let theirs = g.freed_tables(&mem);
    let range = (u.start, u.end);
    fallible::testing::arm(1);
    let back = u.try_merge(g);
    assert_eq!(fallible::testing::disarm(), 1);
    let Err(g) = back else { panic!("the merge needed heap and got none") };
    assert_eq!((u.freed_tables(&mem), g.freed_tables(&mem)), (own, theirs));
    assert_eq!((u.start, u.end), range);
    g.release(&mut mem);
    fallible::testing::arm(1);
    u.release(&mut mem);
    assert_eq!(fallible::testing::disarm(), 0, "release allocated");
    assert!(mem.live() < live);
    // Tables kept for want of heap go with the table.
    t.destroy(&mut mem);
    assert_eq!(mem.live(), 0, "every table frame came back");
}

#[test]
fn a_failed_map_frees_only_the_tables_it_made() {
    // A table an unmap kept may sit in a walk cache: only a flush may free
    // it, never a failed map's undo.
    let mut mem = Arena::new();
    let mut t = PageTable::new(VtdSecondLevel { levels: 4, max_leaf_level: 1 }, &mut mem).unwrap();
    t.map(&mut mem, 0x20_1000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    t.unmap(&mut mem, 0x20_1000, 0x1000).unwrap().1.release(&mut mem);
    let live = mem.live();
    assert_eq!(live, 4, "root + 3 tables, the last-level one kept empty");
    // One page into the kept table, the next needs a new one, which fails.
    fallible::testing::arm(1);
    let r = t.map(&mut mem, 0x3F_F000, 0x1000, 0x2000, Perms::READ);
    fallible::testing::disarm();
    assert_eq!(r.map(|g| g.release(&mut mem)), Err(Error::NoMemory));
    assert_eq!(mem.live(), live, "the kept table stays, nothing made is left");
    assert_eq!(t.iova_to_phys(&mem, 0x3F_F000), None);
    // It is still the one in use: a map there allocates nothing.
    t.map(&mut mem, 0x3F_F000, 0x1000, 0x1000, Perms::READ).unwrap().release(&mut mem);
    assert_eq!(mem.live(), live);
}

/// The leaf table a map or unmap remembers (to skip the walk next time) is
/// forgotten whenever it is unlinked: by a covering unmap, by a prune and by
/// a failed map's undo. A stale one would make the next call write into a
/// freed frame (the arena refuses that in test builds) or lose a mapping.
#[test]
fn the_remembered_leaf_table_never_outlives_its_table() {
    let perms = Perms::READ | Perms::WRITE;
    let mut mem = Arena::new();
    let mut t = PageTable::new(ArmLpae::stage2(4), &mut mem).unwrap();
    let base = 0x4000_0000u64;
    let check = |t: &PageTable<ArmLpae>, mem: &Arena, iova: u64, pa: Option<u64>| {
        assert_eq!(t.iova_to_phys(mem, iova), pa, "{iova:#x}");
    };

    // 1. A covering unmap frees the table; the next map must make a new one.
    t.map(&mut mem, base, 0x10_0000, 0x1000, perms).unwrap().release(&mut mem);
    let (n, g) = t.unmap(&mut mem, base, 0x20_0000).unwrap();
    assert_eq!((n, g.freed_tables(&mem)), (0x1000, 1), "the leaf table (the range covers its span)");
    g.release(&mut mem);
    let live = mem.live();
    t.map(&mut mem, base + 0x1000, 0x20_0000, 0x1000, perms).unwrap().release(&mut mem);
    assert_eq!(mem.live(), live + 1, "the map made a new leaf table");
    check(&t, &mem, base + 0x1000, Some(0x20_0000));
    check(&t, &mem, base, None);

    // 2. A page unmapped inside the table leaves it; a prune then frees it.
    let (n, g) = t.unmap(&mut mem, base + 0x1000, 0x1000).unwrap();
    assert_eq!((n, g.freed_tables(&mem)), (0x1000, 0));
    g.release(&mut mem);
    let freed = t.prune(&mut mem, base, base + 0x20_0000);
    assert_eq!(freed.count(&mem), 3);
    freed.release(&mut mem);
    t.map(&mut mem, base + 0x2000, 0x30_0000, 0x1000, perms).unwrap().release(&mut mem);
    check(&t, &mem, base + 0x2000, Some(0x30_0000));
    let (n, g) = t.unmap(&mut mem, base + 0x2000, 0x1000).unwrap();
    assert_eq!(n, 0x1000);
    g.release(&mut mem);
    t.prune(&mut mem, base, base + 0x20_0000).release(&mut mem);

    // 3. A map that fails after making a leaf table frees it on the way out.
    let live = mem.live();
    // Tables for the first 2 MiB come, then the second leaf table fails.
    mem.fail_at = Some(mem.allocations() + 3);
    let r = t.map(&mut mem, base + 0x1F_F000, 0x40_0000, 0x2000, perms);
    mem.fail_at = None;
    assert_eq!(r.unwrap_err(), Error::NoMemory);
    assert_eq!(mem.live(), live, "the undo freed the tables it made");
    t.map(&mut mem, base + 0x1F_E000, 0x50_0000, 0x1000, perms).unwrap().release(&mut mem);
    check(&t, &mem, base + 0x1F_E000, Some(0x50_0000));
    check(&t, &mem, base + 0x1F_F000, None);

    // 4. Calls that stay in the remembered table agree with the walk.
    for k in 0..16u64 {
        t.map(&mut mem, base + k * 0x1000, 0x60_0000 + k * 0x1000, 0x1000, perms).unwrap().release(&mut mem);
    }
    assert!(
        matches!(t.map(&mut mem, base + 0x3000, 0, 0x1000, perms), Err(Error::AlreadyMapped(a)) if a == base + 0x3000)
    );
    let (n, g) = t.unmap(&mut mem, base + 0x4000, 0x3000).unwrap();
    assert_eq!(n, 0x3000);
    assert_eq!((g.start, g.end), (base + 0x4000, base + 0x7000));
    g.release(&mut mem);
    let (n, g) = t.unmap(&mut mem, base + 0x4000, 0x3000).unwrap();
    assert!(n == 0 && g.is_empty(), "a hole unmaps nothing and owes no flush");
    check(&t, &mem, base + 0x3000, Some(0x60_3000));
    check(&t, &mem, base + 0x5000, None);
    check(&t, &mem, base + 0x7000, Some(0x60_7000));
    let (_, g) = t.unmap(&mut mem, 0, 1 << 48).unwrap();
    g.release(&mut mem);
    assert_eq!(mem.live(), 1);
    t.destroy(&mut mem);
}
