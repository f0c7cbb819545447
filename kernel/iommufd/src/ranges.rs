//! Sets of IOVA ranges as sorted, disjoint, inclusive `(first, last)` pairs.
//!
//! Syscall paths use the in-place forms ([`intersect_in`], [`subtract_in`]):
//! they allocate at most once, fallibly.

use alloc::vec::Vec;
use fallible::AllocError;

/// An inclusive IOVA range.
pub type Range = (u64, u64);

/// `set` ∩ `r`, as a new vector (allocates infallibly: tests and tools;
/// syscall paths use [`intersect_in`]).
pub fn intersect(set: &[Range], r: Range) -> Vec<Range> {
    set.iter().filter_map(|&(s, e)| (s.max(r.0) <= e.min(r.1)).then_some((s.max(r.0), e.min(r.1)))).collect()
}

/// `set` minus `r`, as a new vector (allocates infallibly: tests and tools;
/// syscall paths use [`subtract_in`]).
pub fn subtract(set: &[Range], r: Range) -> Vec<Range> {
    let mut out = Vec::new();
    for &(s, e) in set {
        if e < r.0 || s > r.1 {
            out.push((s, e));
            continue;
        }
        if s < r.0 {
            out.push((s, r.0 - 1));
        }
        if e > r.1 {
            out.push((r.1 + 1, e));
        }
    }
    out
}

/// `set` ∩ `r`, in place (never allocates).
pub fn intersect_in(set: &mut Vec<Range>, r: Range) {
    set.retain_mut(|x| {
        let (s, e) = (x.0.max(r.0), x.1.min(r.1));
        *x = (s, e);
        s <= e
    });
}

/// `set` minus `r`, in place. Only a range strictly containing `r` grows the
/// set (by one, split in two); the room is reserved first, so on
/// [`AllocError`] the set is unchanged.
pub fn subtract_in(set: &mut Vec<Range>, r: Range) -> Result<(), AllocError> {
    if let Some(i) = set.iter().position(|&(s, e)| s < r.0 && e > r.1) {
        // The set is disjoint: no other range meets `r`.
        set.try_reserve(1)?;
        let (s, e) = set[i];
        set[i] = (s, r.0 - 1);
        set.insert(i + 1, (r.1 + 1, e));
        return Ok(());
    }
    set.retain_mut(|x| {
        if x.1 < r.0 || x.0 > r.1 {
            true
        } else if x.0 < r.0 {
            x.1 = r.0 - 1;
            true
        } else if x.1 > r.1 {
            x.0 = r.1 + 1;
            true
        } else {
            false
        }
    });
    Ok(())
}

/// Whether `r` lies inside one range of `set`.
pub fn covers(set: &[Range], r: Range) -> bool {
    set.iter().any(|&(s, e)| s <= r.0 && r.1 <= e)
}

/// Whether `r` overlaps any range of `set`.
pub fn overlaps(set: &[Range], r: Range) -> bool {
    set.iter().any(|&(s, e)| s <= r.1 && r.0 <= e)
}

/// The lowest `align`-aligned start of `len` bytes inside `free` (a power-of-two
/// `align`, `len` > 0).
pub fn lowest_fit(free: &[Range], len: u64, align: u64) -> Option<u64> {
    free.iter().find_map(|&(s, e)| {
        let start = s.checked_add(align - 1)? & !(align - 1);
        let last = start.checked_add(len - 1)?;
        (start >= s && last <= e).then_some(start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_set_operations() {
        let all = [(0x1000, u64::MAX)];
        let s = subtract(&all, (0xFEE0_0000, 0xFEEF_FFFF));
        assert_eq!(s, [(0x1000, 0xFEDF_FFFF), (0xFEF0_0000, u64::MAX)]);
        assert_eq!(intersect(&s, (0, (1 << 48) - 1)), [(0x1000, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 48) - 1)]);
        assert!(covers(&s, (0x2000, 0x2FFF)));
        assert!(!covers(&s, (0xFEDF_F000, 0xFEE0_0FFF)));
        assert!(overlaps(&s, (0, 0x1000)));
        assert!(!overlaps(&[(5, 9)], (10, 20)));
        assert_eq!(subtract(&[(0, 10)], (0, 10)), []);
        assert_eq!(lowest_fit(&[(0x1000, 0x3F_FFFF)], 0x20_0000, 0x20_0000), Some(0x20_0000));
        assert_eq!(lowest_fit(&[(0x1000, 0x3F_FFFF)], 0x40_0000, 0x1000), None);
        assert_eq!(lowest_fit(&[(u64::MAX - 0xFFF, u64::MAX)], 0x1000, 0x1000), Some(u64::MAX - 0xFFF));
        assert_eq!(lowest_fit(&[(u64::MAX - 0xFFF, u64::MAX)], 0x1000, 0x2000), None);
    }

    proptest! {
        /// Subtraction leaves nothing of the removed range and keeps everything else.
        #[test]
        fn subtract_is_exact(a in 0u64..1000, b in 0u64..1000, c in 0u64..1000, d in 0u64..1000, p in 0u64..1000) {
            let (s1, e1) = (a.min(b), a.max(b));
            let (s2, e2) = (c.min(d), c.max(d));
            let r = subtract(&[(s1, e1)], (s2, e2));
            let inside = |set: &[Range], x: u64| set.iter().any(|&(s, e)| s <= x && x <= e);
            prop_assert_eq!(inside(&r, p), (s1..=e1).contains(&p) && !(s2..=e2).contains(&p));
        }

        /// The in-place forms agree with the allocating ones.
        #[test]
        fn in_place_forms_agree(cuts in proptest::collection::vec((0u64..1000, 0u64..1000, any::<bool>()), 0..12)) {
            let mut set = alloc::vec![(10u64, 990u64)];
            let mut ours = set.clone();
            for (a, b, sub) in cuts {
                let r = (a.min(b), a.max(b));
                if sub {
                    set = subtract(&set, r);
                    subtract_in(&mut ours, r).unwrap();
                } else {
                    set = intersect(&set, r);
                    intersect_in(&mut ours, r);
                }
                prop_assert_eq!(&ours, &set);
            }
        }

        /// A fit is aligned, inside the free set, and no lower aligned fit exists.
        #[test]
        fn lowest_fit_is_lowest(s in 0u64..0x10_0000, len in 1u64..0x4_0000, shift in 0u32..16) {
            let free = [(s, s + 0x8_0000)];
            let align = 1u64 << shift;
            match lowest_fit(&free, len, align) {
                Some(x) => {
                    prop_assert_eq!(x % align, 0);
                    prop_assert!(covers(&free, (x, x + len - 1)));
                    prop_assert!(x < align || !covers(&free, (x - align, x - align + len - 1)));
                }
                None => prop_assert!(len > 0x8_0001 - (s.next_multiple_of(align) - s).min(0x8_0001)),
            }
        }
    }
}
