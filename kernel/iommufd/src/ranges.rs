//! Sets of IOVA ranges as sorted, disjoint, inclusive `(first, last)` pairs.

use alloc::vec::Vec;

/// An inclusive IOVA range.
pub type Range = (u64, u64);

/// `set` ∩ `r`.
pub fn intersect(set: &[Range], r: Range) -> Vec<Range> {
    set.iter().filter_map(|&(s, e)| (s.max(r.0) <= e.min(r.1)).then_some((s.max(r.0), e.min(r.1)))).collect()
}

/// `set` minus `r`.
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
