//! The page-table engine (`drivers/io-pgtable`): sequences of map, unmap,
//! lookup and dirty-harvest calls on every format, from the input, checked
//! against a model (IOVA intervals → physical address), with table
//! allocations failed on demand.
//!
//! Invariants after every call: the leaves the table holds cover exactly
//! the model's intervals with the model's output addresses (the engine's own
//! walk and `walk_foreign` agree); a refused call changes neither mappings
//! nor the number of live table frames; a map succeeds exactly when its range
//! is valid and free; unmapping everything and destroying the table frees
//! every frame.
#![no_main]
use io_pgtable::arena::Arena;
use io_pgtable::formats::{AmdV1, ArmLpae, VtdSecondLevel, X86Paging};
use io_pgtable::{Error, Format, PageTable, Perms, TableMemory};
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::Input;
use std::collections::BTreeMap;

/// Mapped intervals: start → (end, physical address of start).
type Model = BTreeMap<u64, (u64, u64)>;

fn top(f: &impl Format) -> u64 {
    if f.ia_bits() >= 64 {
        u64::MAX
    } else {
        1u64 << f.ia_bits()
    }
}

fn overlaps(m: &Model, start: u64, end: u64) -> bool {
    m.range(..end).next_back().is_some_and(|(_, &(e, _))| e > start)
}

fn remove(m: &mut Model, start: u64, end: u64) {
    let hit: Vec<(u64, (u64, u64))> =
        m.range(..end).filter(|(&s, &(e, _))| s < end && e > start).map(|(&s, &v)| (s, v)).collect();
    for (s, (e, pa)) in hit {
        m.remove(&s);
        if s < start {
            m.insert(s, (start, pa));
        }
        if e > end {
            m.insert(end, (e, pa + (end - s)));
        }
    }
}

/// The table's leaves, merged where contiguous in IOVA and output address.
fn leaves<F: Format>(pt: &PageTable<F>, mem: &Arena) -> Model {
    let mut out: Model = BTreeMap::new();
    let mut last: Option<(u64, u64, u64)> = None; // start, end, pa
    pt.for_each_mapping(mem, &mut |va, size, pa, _| {
        last = match last {
            Some((s, e, p)) if e == va && p + (e - s) == pa => Some((s, va + size, p)),
            Some((s, e, p)) => {
                out.insert(s, (e, p));
                Some((va, va + size, pa))
            }
            None => Some((va, va + size, pa)),
        };
    });
    if let Some((s, e, p)) = last {
        out.insert(s, (e, p));
    }
    out
}

/// The walk a foreign table gets must see the same leaves as the engine's own.
fn walks_agree<F: Format>(pt: &PageTable<F>, mem: &Arena) {
    let mut foreign = Vec::new();
    io_pgtable::walk_foreign(
        pt.format(),
        pt.root(),
        &mut |t, i| Some(mem.read(t, i)),
        0,
        u64::MAX,
        &mut |va, size, pa, _| foreign.push((va, size, pa)),
    );
    let mut own = Vec::new();
    pt.for_each_mapping(mem, &mut |va, size, pa, _| own.push((va, size, pa)));
    assert_eq!(own, foreign, "walk_foreign disagrees with the engine's walk");
}

/// Merges the model's touching intervals the same way, for comparison.
fn merged(m: &Model) -> Model {
    let mut out: Model = BTreeMap::new();
    let mut last: Option<(u64, u64, u64)> = None;
    for (&s, &(e, pa)) in m {
        last = match last {
            Some((ls, le, lp)) if le == s && lp + (le - ls) == pa => Some((ls, e, lp)),
            Some((ls, le, lp)) => {
                out.insert(ls, (le, lp));
                Some((s, e, pa))
            }
            None => Some((s, e, pa)),
        };
    }
    if let Some((s, e, p)) = last {
        out.insert(s, (e, p));
    }
    out
}

/// An address: mostly small and aligned to a leaf size, sometimes raw.
fn addr(input: &mut Input<'_>, limit: u64) -> u64 {
    let sel = input.u8();
    let v = u64::from(input.u16());
    match sel % 8 {
        0 => input.u64(),
        1 => limit.wrapping_sub(v << 12),
        2 | 3 => v << 21,
        4 => (v & 0xF) << 30,
        _ => v << 12,
    }
}

fn run<F: Format>(fmt: F, input: &mut Input<'_>) {
    let mut mem = Arena::new();
    let Ok(mut pt) = PageTable::new(fmt, &mut mem) else { return };
    let limit = top(pt.format());
    let mut model = Model::new();
    let mut ops = 0;
    let mut before = leaves(&pt, &mem);
    while !input.is_empty() && ops < 16 {
        ops += 1;
        let op = input.u8();
        if op & 0x80 != 0 {
            mem.fail_at = Some(mem.allocations() + usize::from(op & 7));
        } else {
            mem.fail_at = None;
        }
        let live = mem.live();
        match op % 4 {
            0 | 1 => {
                let iova = addr(input, limit);
                let pa = addr(input, 1 << 40) & ((1 << 46) - 1);
                let len = match input.u8() % 4 {
                    0 => input.u64(),
                    1 => u64::from(input.u16()) << 21,
                    _ => u64::from(input.u8()) << 12,
                };
                let perms = Perms::from_bits_truncate(u32::from(input.u8()));
                if pa.checked_add(len).is_none_or(|e| e > 1 << 48) {
                    continue; // beyond every format's output size: callers never ask
                }
                // Keep each call to a few thousand leaves (a huge range in 4 KiB leaves is slow, not wrong).
                let f = pt.format();
                let align = (0..f.levels())
                    .rev()
                    .filter(|&l| f.leaf_allowed(l))
                    .map(io_pgtable::level_size)
                    .find(|a| (iova | pa).is_multiple_of(*a))
                    .unwrap_or(1);
                if len / align > 512 && (iova | pa | len).is_multiple_of(4096) && iova.checked_add(len).is_some() {
                    continue;
                }
                let end = iova.checked_add(len);
                let valid = len != 0
                    && (iova | len | pa).is_multiple_of(4096)
                    && end.is_some_and(|e| e <= limit || (limit == u64::MAX))
                    && pa.checked_add(len).is_some();
                match pt.map(&mut mem, iova, pa, len, perms) {
                    Ok(g) => {
                        assert!(valid, "map({iova:#x}, {pa:#x}, {len:#x}) accepted an invalid range");
                        assert!(!overlaps(&model, iova, iova + len), "map over a mapping accepted");
                        model.insert(iova, (iova + len, pa));
                        g.release(&mut mem);
                    }
                    Err(e) => {
                        let free = valid && !overlaps(&model, iova, iova + len);
                        match e {
                            Error::AlreadyMapped(_) => assert!(valid && !free, "AlreadyMapped on a free range"),
                            Error::NoMemory => assert!(mem.fail_at.is_some(), "NoMemory without a failed allocation"),
                            Error::BadPerms => {}
                            Error::Empty | Error::Unaligned | Error::OutOfRange => {
                                assert!(!valid, "{e:?} for a valid range")
                            }
                            Error::SplitLeaf(_) => panic!("map answered SplitLeaf"),
                        }
                        assert_eq!(mem.live(), live, "a refused map leaked table frames");
                        assert_eq!(leaves(&pt, &mem), before, "a refused map changed the mappings");
                    }
                }
            }
            2 => {
                let iova = addr(input, limit);
                let len = match input.u8() % 3 {
                    0 => input.u64(),
                    1 => u64::from(input.u16()) << 21,
                    _ => u64::from(input.u8()) << 12,
                };
                match pt.unmap(&mut mem, iova, len) {
                    Ok((bytes, g)) => {
                        let end = iova + len;
                        let expect: u64 = model
                            .range(..end)
                            .filter(|(&s, &(e, _))| s < end && e > iova)
                            .map(|(&s, &(e, _))| e.min(end) - s.max(iova))
                            .sum();
                        assert_eq!(bytes, expect, "unmap({iova:#x}, {len:#x}) removed the wrong amount");
                        remove(&mut model, iova, end);
                        g.release(&mut mem);
                    }
                    Err(_) => assert_eq!(leaves(&pt, &mem), before, "a refused unmap changed the mappings"),
                }
            }
            _ => {
                let iova = addr(input, limit);
                if let Some(pa) = pt.iova_to_phys(&mem, iova) {
                    let (_, &(e, p)) = model.range(..=iova).next_back().expect("a lookup hit outside the model");
                    assert!(iova < e, "lookup of {iova:#x} hit outside the model");
                    let s = *model.range(..=iova).next_back().map(|(s, _)| s).unwrap_or(&0);
                    assert_eq!(pa, p + (iova - s), "lookup of {iova:#x}");
                } else {
                    assert!(!overlaps(&model, iova, iova.saturating_add(1)), "lookup of mapped {iova:#x} missed");
                }
                if let Ok(g) = pt.read_and_clear_dirty(&mut mem, iova & !0xFFF, 1 << 21, &mut |_, _| {}) {
                    g.release(&mut mem);
                }
            }
        }
        let after = leaves(&pt, &mem);
        assert_eq!(after, merged(&model), "table and model disagree after op {op:#x}");
        before = after;
    }
    mem.fail_at = None;
    walks_agree(&pt, &mem);
    for (&s, &(e, _)) in &model {
        let (bytes, g) = pt.unmap(&mut mem, s, e - s).expect("unmapping what the model holds");
        assert_eq!(bytes, e - s);
        g.release(&mut mem);
    }
    // Unmaps free only the tables whose span they cover (the rest stay for
    // the next map there): one covering the whole space frees every table
    // (a 64-bit space's last page is beyond any range, so the tables on
    // its path stay until the destroy).
    let (bytes, g) = pt.unmap(&mut mem, 0, if limit == u64::MAX { !0xFFF } else { limit }).expect("unmapping the empty space");
    assert_eq!(bytes, 0, "unmapping everything found mappings left");
    g.release(&mut mem);
    if limit != u64::MAX {
        assert_eq!(mem.live(), 1, "tables left after unmapping everything");
    }
    pt.destroy(&mut mem);
    assert_eq!(mem.live(), 0, "destroy leaked table frames");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let sel = input.u8();
    let v = usize::from(sel >> 3);
    match sel % 6 {
        0 => run(VtdSecondLevel { levels: 3 + v % 3, max_leaf_level: (v / 3) % 3 }, &mut input),
        1 => run(X86Paging::vtd_first_level(4 + v % 2, 1 + (v / 2) % 2), &mut input),
        2 => run(X86Paging::amd_v2(4 + v % 2), &mut input),
        3 => run(AmdV1 { levels: 1 + v % 6 }, &mut input),
        4 => {
            let f = ArmLpae::stage1(3 + v % 2, 0, 1);
            run(if v & 2 != 0 { f.with_hw_dirty() } else { f }, &mut input)
        }
        _ => run(ArmLpae::stage2(3 + v % 2), &mut input),
    }
});
