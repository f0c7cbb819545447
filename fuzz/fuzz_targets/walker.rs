//! `walk_foreign`, the walk over tables the kernel does not own (a task's
//! stage-1 table), over a table arena built from the input: table frames at
//! 0x1000, 0x2000, ..., entries written anywhere, pointers anywhere
//! (including loops back to a table or an ancestor), every level count.
//!
//! Invariants: leaves come out in strictly increasing, non-overlapping IOVA
//! order, each overlapping the asked range, at a level where the format allows
//! leaves; the number of `read` calls stays within the documented bound
//! (the budget plus 512 per level once `read` starts answering `None`).
#![no_main]
use io_pgtable::formats::{AmdV1, ArmLpae, VtdSecondLevel, X86Paging};
use io_pgtable::{level_size, walk_foreign, Format};
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::Input;

fn run<F: Format>(fmt: F, input: &mut Input<'_>) {
    let tables = 1 + usize::from(input.u8() % 8);
    let mut mem = vec![[0u64; 512]; tables];
    let (start, end) = (input.u64(), input.u64());
    let budget = usize::from(input.u16());
    let root = 0x1000 * (1 + u64::from(input.u8()) % tables as u64);
    while !input.is_empty() {
        let (t, i, v) = (usize::from(input.u8()) % tables, usize::from(input.u16()) % 512, input.u64());
        mem[t][i] = v;
    }
    let mut reads = 0usize;
    let mut read = |table: u64, index: usize| -> Option<u64> {
        reads += 1;
        if reads > budget || !table.is_multiple_of(0x1000) {
            return None;
        }
        let t = usize::try_from(table / 0x1000).ok()?.checked_sub(1)?;
        mem.get(t).map(|e| e[index])
    };
    let sizes: Vec<u64> = (0..fmt.levels().min(6)).filter(|&l| fmt.leaf_allowed(l)).map(level_size).collect();
    let mut last_end: Option<u64> = None;
    let mut leaves = 0usize;
    walk_foreign(&fmt, root, &mut read, start, end, &mut |va, size, _pa, _perms| {
        leaves += 1;
        assert!(sizes.contains(&size), "leaf of {size:#x} at a level without leaves");
        assert!(va < end && va.saturating_add(size) > start, "leaf {va:#x}+{size:#x} outside [{start:#x}, {end:#x})");
        if let Some(e) = last_end {
            assert!(va >= e, "leaf {va:#x} out of order (previous ended at {e:#x})");
        }
        last_end = Some(va.wrapping_add(size));
        if va.checked_add(size).is_none() {
            last_end = Some(u64::MAX);
        }
    });
    let levels = fmt.levels();
    if (1..=6).contains(&levels) {
        assert!(reads <= budget + 512 * levels + 1, "{reads} reads for a budget of {budget}");
    } else {
        assert_eq!(reads, 0, "a format with {levels} levels was walked");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let sel = input.u8();
    let v = usize::from(sel >> 3);
    match sel % 6 {
        0 => run(VtdSecondLevel { levels: 3 + v % 3, max_leaf_level: (v / 3) % 3 }, &mut input),
        1 => run(X86Paging::vtd_first_level(4 + v % 2, 1 + (v / 2) % 2), &mut input),
        2 => run(X86Paging::amd_v2(4 + v % 2), &mut input),
        3 => run(AmdV1 { levels: v % 8 }, &mut input),
        4 => run(ArmLpae::stage1(3 + v % 2, 0, 1), &mut input),
        _ => run(ArmLpae::stage2(3 + v % 2), &mut input),
    }
});
