//! Selftest scenarios for the generic IOAS door and the rules of the
//! hardware-specific door (`hw_*`, module `hw`), written once against the
//! [`Door`] trait: user space runs them through the `iommufd` syscall under
//! QEMU (program `test-ioas`), the host runs them against the object model
//! and `MockIommu` (`tests/mock.rs`). Output is KTAP (`user.ioas.<case>`).
//!
//! Cases that need what a backend lacks (a device, two units, the raw ABI)
//! are reported as skipped with the reason, never silently dropped.
#![no_std]

extern crate alloc;

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use abi::Errno;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Read and write.
pub const RW: u32 = MAP_READABLE | MAP_WRITEABLE;
/// Read only.
pub const RO: u32 = MAP_READABLE;
const PAGE: u64 = 4096;

/// The generic door as a test sees it.
pub trait Door {
    /// `ioas_alloc`.
    fn ioas_alloc(&mut self) -> Result<u32, Errno>;
    /// `destroy`.
    fn destroy(&mut self, id: u32) -> Result<(), Errno>;
    /// `ioas_iova_ranges`: the ranges and the IOVA alignment.
    fn iova_ranges(&mut self, ioas: u32) -> Result<(Vec<(u64, u64)>, u64), Errno>;
    /// `ioas_allow_iovas`.
    fn allow_iovas(&mut self, ioas: u32, ranges: &[(u64, u64)]) -> Result<(), Errno>;
    /// `ioas_map` of task memory at `va`.
    fn map(&mut self, ioas: u32, va: u64, len: u64, iova: Option<u64>, flags: u32) -> Result<u64, Errno>;
    /// `ioas_unmap`.
    fn unmap(&mut self, ioas: u32, iova: u64, len: u64) -> Result<u64, Errno>;
    /// `ioas_copy`.
    fn copy(
        &mut self,
        dst: u32,
        src: u32,
        src_iova: u64,
        len: u64,
        dst_iova: Option<u64>,
        flags: u32,
    ) -> Result<u64, Errno>;
    /// `ioas_option`: whether the hint is honoured.
    fn set_option(&mut self, ioas: u32, option: u32, value: u64) -> Result<bool, Errno>;
    /// Devices this backend can bind, each with the unit it sits behind.
    fn devices(&self) -> Vec<usize>;
    /// `device_bind` of the `which`-th device.
    fn bind(&mut self, which: usize) -> Result<u32, Errno>;
    /// `device_attach`.
    fn attach(&mut self, dev: u32, pt: u32) -> Result<u32, Errno>;
    /// `device_detach`.
    fn detach(&mut self, dev: u32) -> Result<(), Errno>;
    /// Task memory: `pages` fresh read/write pages, and their release.
    fn alloc_pages(&mut self, pages: u64) -> Result<u64, Errno>;
    /// Releases what `alloc_pages` returned.
    fn free_pages(&mut self, va: u64, pages: u64);
    /// A task address that is not mapped.
    fn unmapped_va(&self) -> u64;
    /// The raw syscall with the struct `bytes` (written back on return);
    /// `None` when the backend has no ABI layer.
    fn raw(&mut self, op: u64, bytes: &mut [u8]) -> Option<Result<(), Errno>>;
    /// The raw syscall with an arbitrary struct pointer.
    fn raw_ptr(&mut self, op: u64, ptr: u64) -> Option<Result<(), Errno>>;
    /// What a leak check compares before and after each case (pinned pages,
    /// live objects, ...); `None` where the backend cannot tell.
    fn leak_counters(&mut self) -> Option<[u64; 2]> {
        None
    }
    /// Writes `value` into the first word of the task page at `va` (what a
    /// device reading that page will find).
    fn poke(&mut self, va: u64, value: u64) {
        let _ = (va, value);
    }
    /// Device `which` (bound, attached to `ioas`) reads the page at `iova`:
    /// `Some(Some(word))` with the first word it read, `Some(None)` when the
    /// read was blocked (or read nothing but zeros), `None` when this backend
    /// has no device DMA. Cases poke non-zero words only.
    fn dma_read(&mut self, which: usize, ioas: u32, iova: u64) -> Option<Option<u64>> {
        let _ = (which, ioas, iova);
        None
    }

    // The hardware-specific door.

    /// `get_hw_info` with typed data into `data`: (data type, bytes written,
    /// `hwpt_alloc` types, `hwpt_invalidate` types).
    fn hw_info_typed(&mut self, dev: u32, data: &mut [u8]) -> Result<(u32, usize, u64, u64), Errno>;
    /// `hwpt_alloc` with raw `HWPT_ALLOC_*` flags, typed data and `fault_id`.
    fn hwpt_alloc(
        &mut self,
        dev: u32,
        parent: u32,
        flags: u32,
        data_type: u32,
        data: &[u8],
        fault_id: u32,
    ) -> Result<u32, Errno>;
    /// `hwpt_invalidate` of `entries` (`entry_len` bytes each): (handled, result).
    fn hwpt_invalidate(
        &mut self,
        hwpt: u32,
        data_type: u32,
        entries: &[u8],
        entry_len: u32,
    ) -> (u32, Result<(), Errno>);
    /// `fault_queue_alloc`.
    fn fault_queue_alloc(&mut self, capacity: u32) -> Result<u32, Errno>;
    /// `fault_read` of up to `room` records, waiting up to `timeout_ms`.
    fn fault_read(
        &mut self,
        queue: u32,
        room: usize,
        timeout_ms: u32,
    ) -> Result<(Vec<abi::iommufd::FaultRecord>, u64), Errno>;

    // What the fuzzer (`fuzz`) compares with its model, where the backend can tell.

    /// Pages the task's mappings pin now (copies count again).
    fn pinned_pages(&mut self) -> Option<u64> {
        None
    }
    /// The task's live iommufd objects.
    fn objects(&mut self) -> Option<u64> {
        None
    }
}

/// A case's verdict.
pub enum Verdict {
    /// Passed.
    Pass,
    /// Failed, why.
    Fail(String),
    /// Not applicable here, why.
    Skip(&'static str),
}

type Case = fn(&mut dyn Door) -> Verdict;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Verdict::Fail(format!($($msg)+));
        }
    };
}

/// Checks `got == want`, or fails the case with both.
macro_rules! expect {
    ($got:expr, $want:expr) => {{
        let got = $got;
        let want = $want;
        if got != want {
            return Verdict::Fail(format!("{} = {:?}, expected {:?}", stringify!($got), got, want));
        }
    }};
}

macro_rules! try_ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Verdict::Fail(format!("{} failed: {:?}", stringify!($e), e)),
        }
    };
}

pub mod fuzz;
mod hw;

fn with_ioas(d: &mut dyn Door, f: impl FnOnce(&mut dyn Door, u32) -> Verdict) -> Verdict {
    let ioas = try_ok!(d.ioas_alloc());
    let v = f(d, ioas);
    let _ = d.unmap(ioas, 0, u64::MAX);
    if let Err(e) = d.destroy(ioas) {
        if matches!(v, Verdict::Pass) {
            return Verdict::Fail(format!("destroy after the case: {e:?}"));
        }
    }
    v
}

fn with_pages(d: &mut dyn Door, pages: u64, f: impl FnOnce(&mut dyn Door, u64) -> Verdict) -> Verdict {
    let va = try_ok!(d.alloc_pages(pages));
    let v = f(d, va);
    d.free_pages(va, pages);
    v
}

/// Map + unmap of `pages` pages at a fixed IOVA.
fn fixed_map(d: &mut dyn Door, pages: u64) -> Verdict {
    with_ioas(d, |d, ioas| {
        with_pages(d, pages, |d, va| {
            let at = 0x100_0000;
            expect!(d.map(ioas, va, pages * PAGE, Some(at), RW), Ok(at));
            expect!(d.unmap(ioas, at, pages * PAGE), Ok(pages * PAGE));
            expect!(d.unmap(ioas, at, pages * PAGE), Err(Errno::ENOENT));
            Verdict::Pass
        })
    })
}

/// Map of `pages` pages at a kernel-chosen IOVA: never 0, page aligned, and
/// aligned to 2 MiB when the length allows a 2 MiB leaf.
fn auto_map(d: &mut dyn Door, pages: u64) -> Verdict {
    with_ioas(d, |d, ioas| {
        with_pages(d, pages, |d, va| {
            let at = try_ok!(d.map(ioas, va, pages * PAGE, None, RW));
            ensure!(at != 0 && at % PAGE == 0, "auto IOVA {at:#x}");
            if pages * PAGE >= 0x20_0000 {
                ensure!(at % 0x20_0000 == 0, "{pages} pages at {at:#x}: not 2 MiB aligned");
            }
            expect!(d.unmap(ioas, at, pages * PAGE), Ok(pages * PAGE));
            Verdict::Pass
        })
    })
}

/// A map refused with `errno`, given (va offset in pages, len, iova, flags).
fn refused(d: &mut dyn Door, va_off: u64, len: u64, iova: Option<u64>, flags: u32, errno: Errno) -> Verdict {
    with_ioas(d, |d, ioas| {
        with_pages(d, 4, |d, va| {
            expect!(d.map(ioas, va + va_off, len, iova, flags), Err(errno));
            Verdict::Pass
        })
    })
}

/// A second map overlapping a first one at [0x20_0000, +4 pages) by `(start, pages)`.
fn overlap(d: &mut dyn Door, start: u64, pages: u64) -> Verdict {
    with_ioas(d, |d, ioas| {
        with_pages(d, 8, |d, va| {
            try_ok!(d.map(ioas, va, 4 * PAGE, Some(0x20_0000), RW));
            expect!(d.map(ioas, va + 4 * PAGE, pages * PAGE, Some(start), RW), Err(Errno::EEXIST));
            Verdict::Pass
        })
    })
}

/// An unmap of `(iova, len)` that cuts the mapping [0x20_0000, +4 pages).
fn cut(d: &mut dyn Door, iova: u64, len: u64) -> Verdict {
    with_ioas(d, |d, ioas| {
        with_pages(d, 4, |d, va| {
            try_ok!(d.map(ioas, va, 4 * PAGE, Some(0x20_0000), RW));
            expect!(d.unmap(ioas, iova, len), Err(Errno::EINVAL));
            expect!(d.unmap(ioas, 0x20_0000, 4 * PAGE), Ok(4 * PAGE));
            Verdict::Pass
        })
    })
}

/// Runs `f` with a bound device attached to a fresh IOAS (skips without one).
fn with_device(d: &mut dyn Door, f: impl FnOnce(&mut dyn Door, u32, u32) -> Verdict) -> Verdict {
    if d.devices().is_empty() {
        return Verdict::Skip("no device behind an IOMMU this task can bind");
    }
    let dev = try_ok!(d.bind(0));
    let v = with_ioas(d, |d, ioas| {
        try_ok!(d.attach(dev, ioas));
        let v = f(d, dev, ioas);
        let _ = d.detach(dev);
        v
    });
    let _ = d.destroy(dev);
    v
}

/// Raw call with a struct of `size` bytes whose first words are set; expects `want`.
fn raw_call(d: &mut dyn Door, op: u64, words: &[u32], size: usize, want: Result<(), Errno>) -> Verdict {
    let mut bytes = alloc::vec![0u8; size.max(8)];
    for (i, w) in words.iter().enumerate() {
        if 4 * i + 4 <= bytes.len() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    match d.raw(op, &mut bytes[..size.max(4)]) {
        None => Verdict::Skip("no ABI layer on this backend"),
        Some(got) => {
            ensure!(got == want, "op {op} {words:?} size {size}: {got:?}, expected {want:?}");
            Verdict::Pass
        }
    }
}

/// Raw call with an arbitrary struct pointer; expects `want`.
fn raw_ptr_call(d: &mut dyn Door, op: u64, ptr: u64, want: Result<(), Errno>) -> Verdict {
    match d.raw_ptr(op, ptr) {
        None => Verdict::Skip("no ABI layer on this backend"),
        Some(got) => {
            ensure!(got == want, "op {op} at {ptr:#x}: {got:?}, expected {want:?}");
            Verdict::Pass
        }
    }
}

/// Every case, by name.
pub fn cases() -> Vec<(String, Case)> {
    let mut v: Vec<(String, Case)> = Vec::new();
    macro_rules! case {
        ($name:expr, $f:expr) => {
            v.push((String::from($name), $f));
        };
    }
    // Objects.
    case!("alloc_gives_distinct_ids", |d| {
        let a = try_ok!(d.ioas_alloc());
        let b = try_ok!(d.ioas_alloc());
        ensure!(a != 0 && b != 0 && a != b, "ids {a} {b}");
        expect!(d.destroy(a), Ok(()));
        expect!(d.destroy(b), Ok(()));
        Verdict::Pass
    });
    case!("destroy_twice_is_enoent", |d| {
        let a = try_ok!(d.ioas_alloc());
        expect!(d.destroy(a), Ok(()));
        expect!(d.destroy(a), Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("destroy_id_0_is_enoent", |d| {
        expect!(d.destroy(0), Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("destroy_unknown_is_enoent", |d| {
        expect!(d.destroy(0x7FFF_FFF0), Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("destroy_with_mappings_unpins", |d| with_pages(d, 2, |d, va| {
        let a = try_ok!(d.ioas_alloc());
        try_ok!(d.map(a, va, 2 * PAGE, None, RW));
        expect!(d.destroy(a), Ok(()));
        Verdict::Pass
    }));
    case!("many_ioas", |d| {
        let ids: Vec<u32> = (0..32).filter_map(|_| d.ioas_alloc().ok()).collect();
        ensure!(ids.len() == 32, "only {} IOAS", ids.len());
        for id in ids {
            expect!(d.destroy(id), Ok(()));
        }
        Verdict::Pass
    });
    // Fixed and kernel-chosen IOVAs at many sizes.
    case!("fixed_map_1_page", |d| fixed_map(d, 1));
    case!("fixed_map_2_pages", |d| fixed_map(d, 2));
    case!("fixed_map_3_pages", |d| fixed_map(d, 3));
    case!("fixed_map_8_pages", |d| fixed_map(d, 8));
    case!("fixed_map_17_pages", |d| fixed_map(d, 17));
    case!("fixed_map_64_pages", |d| fixed_map(d, 64));
    case!("fixed_map_512_pages", |d| fixed_map(d, 512));
    case!("auto_map_1_page", |d| auto_map(d, 1));
    case!("auto_map_2_pages", |d| auto_map(d, 2));
    case!("auto_map_5_pages", |d| auto_map(d, 5));
    case!("auto_map_16_pages", |d| auto_map(d, 16));
    case!("auto_map_100_pages", |d| auto_map(d, 100));
    case!("auto_map_512_pages", |d| auto_map(d, 512));
    case!("auto_map_600_pages", |d| auto_map(d, 600));
    case!("auto_maps_do_not_overlap", |d| with_ioas(d, |d, ioas| with_pages(d, 8, |d, va| {
        let mut got = Vec::new();
        for i in 0..8 {
            got.push(try_ok!(d.map(ioas, va + i * PAGE, PAGE, None, RW)));
        }
        got.sort_unstable();
        ensure!(got.windows(2).all(|w| w[0] + PAGE <= w[1]), "{got:x?}");
        Verdict::Pass
    })));
    case!("auto_map_skips_a_fixed_one", |d| with_ioas(d, |d, ioas| with_pages(d, 2, |d, va| {
        try_ok!(d.map(ioas, va, PAGE, Some(PAGE), RW));
        let at = try_ok!(d.map(ioas, va + PAGE, PAGE, None, RW));
        ensure!(at != PAGE && at != 0, "{at:#x}");
        Verdict::Pass
    })));
    case!("auto_map_without_huge_pages_is_4k_aligned", |d| with_ioas(d, |d, ioas| with_pages(d, 513, |d, va| {
        try_ok!(d.map(ioas, va, PAGE, None, RW));
        expect!(d.set_option(ioas, abi::iommufd::OPTION_HUGE_PAGES, 0), Ok(true));
        let at = try_ok!(d.map(ioas, va + PAGE, 512 * PAGE, None, RW));
        ensure!(at % 0x20_0000 != 0, "{at:#x}: still 2 MiB aligned");
        Verdict::Pass
    })));
    case!("read_only_map", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        let at = try_ok!(d.map(ioas, va, PAGE, None, RO));
        expect!(d.unmap(ioas, at, PAGE), Ok(PAGE));
        Verdict::Pass
    })));
    case!("same_pages_mapped_twice", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        let a = try_ok!(d.map(ioas, va, PAGE, None, RW));
        let b = try_ok!(d.map(ioas, va, PAGE, None, RW));
        ensure!(a != b, "same IOVA twice");
        Verdict::Pass
    })));
    case!("memory_unmapped_while_dma_mapped_stays_pinned", |d| with_ioas(d, |d, ioas| {
        let va = try_ok!(d.alloc_pages(1));
        let at = try_ok!(d.map(ioas, va, PAGE, None, RW));
        d.free_pages(va, 1);
        expect!(d.unmap(ioas, at, PAGE), Ok(PAGE));
        Verdict::Pass
    }));
    // Bad maps.
    case!("map_zero_length_einval", |d| refused(d, 0, 0, Some(0x10_0000), RW, Errno::EINVAL));
    case!("map_unaligned_va_einval", |d| refused(d, 1, PAGE, Some(0x10_0000), RW, Errno::EINVAL));
    case!("map_unaligned_length_einval", |d| refused(d, 0, PAGE + 8, Some(0x10_0000), RW, Errno::EINVAL));
    case!("map_unaligned_iova_einval", |d| refused(d, 0, PAGE, Some(0x10_0800), RW, Errno::EINVAL));
    case!("map_no_access_einval", |d| refused(d, 0, PAGE, None, 0, Errno::EINVAL));
    case!("map_iova_0_erange", |d| refused(d, 0, PAGE, Some(0), RW, Errno::ERANGE));
    case!("map_iova_wraps_erange", |d| refused(d, 0, 2 * PAGE, Some(u64::MAX - PAGE + 1), RW, Errno::ERANGE));
    case!("map_length_beyond_memory_efault", |d| refused(d, 0, 64 * PAGE, Some(0x10_0000), RW, Errno::EFAULT));
    case!("map_larger_than_the_aperture_enospc", |d| with_device(d, |d, _, ioas| with_pages(d, 1, |d, va| {
        expect!(d.map(ioas, va, 1 << 63, None, RW), Err(Errno::ENOSPC));
        Verdict::Pass
    })));
    case!("map_unmapped_va_efault", |d| with_ioas(d, |d, ioas| {
        let va = d.unmapped_va();
        expect!(d.map(ioas, va, PAGE, None, RW), Err(Errno::EFAULT));
        Verdict::Pass
    }));
    case!("map_kernel_va_efault", |d| with_ioas(d, |d, ioas| {
        expect!(d.map(ioas, 0xFFFF_8000_0000_0000, PAGE, None, RW), Err(Errno::EFAULT));
        Verdict::Pass
    }));
    case!("map_into_missing_ioas_enoent", |d| with_pages(d, 1, |d, va| {
        expect!(d.map(0x7FFF_0000, va, PAGE, None, RW), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("map_same_iova_eexist", |d| overlap(d, 0x20_0000, 4));
    case!("map_overlapping_head_eexist", |d| overlap(d, 0x1F_E000, 4));
    case!("map_overlapping_tail_eexist", |d| overlap(d, 0x20_3000, 2));
    case!("map_inside_eexist", |d| overlap(d, 0x20_1000, 1));
    case!("map_covering_eexist", |d| overlap(d, 0x1F_F000, 6));
    case!("failed_map_leaves_nothing", |d| with_ioas(d, |d, ioas| with_pages(d, 4, |d, va| {
        try_ok!(d.map(ioas, va, PAGE, Some(0x20_2000), RW));
        expect!(d.map(ioas, va, 4 * PAGE, Some(0x20_0000), RW), Err(Errno::EEXIST));
        expect!(d.map(ioas, va, 2 * PAGE, Some(0x20_0000), RW), Ok(0x20_0000));
        Verdict::Pass
    })));
    // Unmap.
    case!("unmap_cut_head_einval", |d| cut(d, 0x20_0000, PAGE));
    case!("unmap_cut_tail_einval", |d| cut(d, 0x20_3000, PAGE));
    case!("unmap_cut_middle_einval", |d| cut(d, 0x20_1000, 2 * PAGE));
    case!("unmap_overhang_einval", |d| cut(d, 0x20_2000, 4 * PAGE));
    case!("unmap_nothing_enoent", |d| with_ioas(d, |d, ioas| {
        expect!(d.unmap(ioas, 0x10_0000, PAGE), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("unmap_zero_length_einval", |d| with_ioas(d, |d, ioas| {
        expect!(d.unmap(ioas, 0x10_0000, 0), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("unmap_unaligned_einval", |d| with_ioas(d, |d, ioas| {
        expect!(d.unmap(ioas, 0x10_0800, PAGE), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("unmap_spanning_two_mappings", |d| with_ioas(d, |d, ioas| with_pages(d, 4, |d, va| {
        try_ok!(d.map(ioas, va, 2 * PAGE, Some(0x40_0000), RW));
        try_ok!(d.map(ioas, va + 2 * PAGE, 2 * PAGE, Some(0x40_2000), RW));
        expect!(d.unmap(ioas, 0x40_0000, 4 * PAGE), Ok(4 * PAGE));
        Verdict::Pass
    })));
    case!("unmap_range_with_a_hole", |d| with_ioas(d, |d, ioas| with_pages(d, 2, |d, va| {
        try_ok!(d.map(ioas, va, PAGE, Some(0x40_0000), RW));
        try_ok!(d.map(ioas, va + PAGE, PAGE, Some(0x40_5000), RW));
        expect!(d.unmap(ioas, 0x40_0000, 0x10_0000), Ok(2 * PAGE));
        Verdict::Pass
    })));
    case!("unmap_all", |d| with_ioas(d, |d, ioas| with_pages(d, 6, |d, va| {
        for i in 0..6 {
            try_ok!(d.map(ioas, va + i * PAGE, PAGE, None, RW));
        }
        expect!(d.unmap(ioas, 0, u64::MAX), Ok(6 * PAGE));
        // Unmap-all of an empty IOAS succeeds with nothing done (as Linux's).
        expect!(d.unmap(ioas, 0, u64::MAX), Ok(0));
        Verdict::Pass
    })));
    case!("unmap_missing_ioas_enoent", |d| {
        expect!(d.unmap(0x7FFF_0000, 0x10_0000, PAGE), Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("remap_after_unmap", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        for _ in 0..4 {
            expect!(d.map(ioas, va, PAGE, Some(0x30_0000), RW), Ok(0x30_0000));
            expect!(d.unmap(ioas, 0x30_0000, PAGE), Ok(PAGE));
        }
        Verdict::Pass
    })));
    // IOVA ranges and allowed ranges.
    case!("iova_ranges_never_include_page_0", |d| with_ioas(d, |d, ioas| {
        let (r, align) = try_ok!(d.iova_ranges(ioas));
        ensure!(!r.is_empty() && r[0].0 >= PAGE, "{r:x?}");
        ensure!(align >= PAGE && align.is_power_of_two(), "alignment {align:#x}");
        Verdict::Pass
    }));
    case!("iova_ranges_are_sorted_and_disjoint", |d| with_device(d, |d, _, ioas| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        ensure!(r.iter().all(|&(s, e)| s <= e) && r.windows(2).all(|w| w[0].1 < w[1].0), "{r:x?}");
        Verdict::Pass
    }));
    case!("iova_ranges_narrow_with_a_device", |d| with_device(d, |d, _, ioas| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        ensure!(r.last().is_some_and(|&(_, e)| e < u64::MAX), "the aperture did not narrow: {r:x?}");
        Verdict::Pass
    }));
    case!("map_outside_the_ranges_refused", |d| with_device(d, |d, _, ioas| with_pages(d, 1, |d, va| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        let Some(&(_, last)) = r.last() else { return Verdict::Fail("no ranges".into()) };
        let got = d.map(ioas, va, PAGE, Some(last + 1), RW);
        ensure!(matches!(got, Err(Errno::ERANGE) | Err(Errno::EADDRINUSE)), "{got:?}");
        Verdict::Pass
    })));
    case!("map_into_a_reserved_hole_eaddrinuse", |d| with_device(d, |d, _, ioas| with_pages(d, 1, |d, va| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        if r.len() < 2 {
            return Verdict::Skip("no reserved region inside the aperture");
        }
        expect!(d.map(ioas, va, PAGE, Some(r[0].1 + 1), RW), Err(Errno::EADDRINUSE));
        Verdict::Pass
    })));
    case!("allow_iovas_inside", |d| with_ioas(d, |d, ioas| {
        expect!(d.allow_iovas(ioas, &[(0x10_0000, 0x1F_FFFF)]), Ok(()));
        expect!(d.allow_iovas(ioas, &[]), Ok(()));
        Verdict::Pass
    }));
    case!("allow_iovas_unaligned_einval", |d| with_ioas(d, |d, ioas| {
        expect!(d.allow_iovas(ioas, &[(0x10_0800, 0x1F_FFFF)]), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("allow_iovas_reversed_einval", |d| with_ioas(d, |d, ioas| {
        expect!(d.allow_iovas(ioas, &[(0x20_0000, 0x10_0FFF)]), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("allow_iovas_page_0_eaddrinuse", |d| with_ioas(d, |d, ioas| {
        expect!(d.allow_iovas(ioas, &[(0, 0xFFF)]), Err(Errno::EADDRINUSE));
        Verdict::Pass
    }));
    case!("allow_iovas_over_a_reserved_hole_eaddrinuse", |d| with_device(d, |d, _, ioas| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        if r.len() < 2 {
            return Verdict::Skip("no reserved region inside the aperture");
        }
        expect!(d.allow_iovas(ioas, &[(r[0].1 - 0xFFF, r[1].0 + 0xFFF)]), Err(Errno::EADDRINUSE));
        Verdict::Pass
    }));
    case!("allowed_range_blocks_a_narrowing_attach", |d| {
        if d.devices().is_empty() {
            return Verdict::Skip("no device");
        }
        with_ioas(d, |d, ioas| {
            expect!(d.allow_iovas(ioas, &[(1 << 60, (1 << 60) + 0xFFF)]), Ok(()));
            let dev = try_ok!(d.bind(0));
            let got = d.attach(dev, ioas);
            let _ = d.destroy(dev);
            expect!(got, Err(Errno::EADDRINUSE));
            Verdict::Pass
        })
    });
    // Copy.
    case!("copy_whole_mapping", |d| with_pages(d, 2, |d, va| {
        let (a, b) = (try_ok!(d.ioas_alloc()), try_ok!(d.ioas_alloc()));
        let src = try_ok!(d.map(a, va, 2 * PAGE, None, RW));
        let v = match d.copy(b, a, src, 2 * PAGE, None, RW) {
            Ok(at) => {
                ensure!(at != 0, "copied to IOVA 0");
                ensure!(d.unmap(b, at, 2 * PAGE) == Ok(2 * PAGE), "unmap of the copy");
                Verdict::Pass
            }
            Err(e) => Verdict::Fail(format!("copy: {e:?}")),
        };
        let _ = d.unmap(a, 0, u64::MAX);
        let _ = (d.destroy(a), d.destroy(b));
        v
    }));
    case!("copy_sub_range_fixed", |d| with_pages(d, 4, |d, va| {
        let (a, b) = (try_ok!(d.ioas_alloc()), try_ok!(d.ioas_alloc()));
        try_ok!(d.map(a, va, 4 * PAGE, Some(0x10_0000), RW));
        let got = d.copy(b, a, 0x10_1000, 2 * PAGE, Some(0x50_0000), RO);
        let _ = d.unmap(a, 0, u64::MAX);
        let _ = d.unmap(b, 0, u64::MAX);
        let _ = (d.destroy(a), d.destroy(b));
        expect!(got, Ok(0x50_0000));
        Verdict::Pass
    }));
    case!("copy_survives_source_unmap", |d| with_pages(d, 1, |d, va| {
        let (a, b) = (try_ok!(d.ioas_alloc()), try_ok!(d.ioas_alloc()));
        try_ok!(d.map(a, va, PAGE, Some(0x10_0000), RW));
        let at = try_ok!(d.copy(b, a, 0x10_0000, PAGE, None, RW));
        expect!(d.destroy(a), Ok(()));
        expect!(d.unmap(b, at, PAGE), Ok(PAGE));
        expect!(d.destroy(b), Ok(()));
        Verdict::Pass
    }));
    case!("copy_read_only_as_writable_eperm", |d| with_pages(d, 1, |d, va| {
        let (a, b) = (try_ok!(d.ioas_alloc()), try_ok!(d.ioas_alloc()));
        try_ok!(d.map(a, va, PAGE, Some(0x10_0000), RO));
        let got = d.copy(b, a, 0x10_0000, PAGE, None, RW);
        let _ = d.unmap(a, 0, u64::MAX);
        let _ = (d.destroy(a), d.destroy(b));
        expect!(got, Err(Errno::EPERM));
        Verdict::Pass
    }));
    case!("copy_unmapped_source_enoent", |d| {
        let (a, b) = (try_ok!(d.ioas_alloc()), try_ok!(d.ioas_alloc()));
        let got = d.copy(b, a, 0x10_0000, PAGE, None, RW);
        let _ = (d.destroy(a), d.destroy(b));
        expect!(got, Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("copy_onto_a_mapping_eexist", |d| with_pages(d, 2, |d, va| {
        let (a, b) = (try_ok!(d.ioas_alloc()), try_ok!(d.ioas_alloc()));
        try_ok!(d.map(a, va, PAGE, Some(0x10_0000), RW));
        try_ok!(d.map(b, va + PAGE, PAGE, Some(0x60_0000), RW));
        let got = d.copy(b, a, 0x10_0000, PAGE, Some(0x60_0000), RW);
        let _ = d.unmap(a, 0, u64::MAX);
        let _ = d.unmap(b, 0, u64::MAX);
        let _ = (d.destroy(a), d.destroy(b));
        expect!(got, Err(Errno::EEXIST));
        Verdict::Pass
    }));
    case!("copy_into_the_same_ioas", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        let at = try_ok!(d.map(ioas, va, PAGE, None, RW));
        let again = try_ok!(d.copy(ioas, ioas, at, PAGE, None, RW));
        ensure!(again != at, "copied onto itself");
        Verdict::Pass
    })));
    case!("copy_zero_length_einval", |d| with_ioas(d, |d, ioas| {
        expect!(d.copy(ioas, ioas, 0x10_0000, 0, None, RW), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    // Hints.
    case!("option_huge_pages_honoured", |d| with_ioas(d, |d, ioas| {
        expect!(d.set_option(ioas, abi::iommufd::OPTION_HUGE_PAGES, 0), Ok(true));
        expect!(d.set_option(ioas, abi::iommufd::OPTION_HUGE_PAGES, 1), Ok(true));
        Verdict::Pass
    }));
    case!("option_report_leaves_honoured", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        expect!(d.set_option(ioas, abi::iommufd::OPTION_REPORT_LEAVES, 1), Ok(true));
        let at = try_ok!(d.map(ioas, va, PAGE, None, RW));
        expect!(d.unmap(ioas, at, PAGE), Ok(PAGE));
        expect!(d.set_option(ioas, abi::iommufd::OPTION_REPORT_LEAVES, 0), Ok(true));
        Verdict::Pass
    })));
    case!("option_unknown_reported_not_error", |d| with_ioas(d, |d, ioas| {
        expect!(d.set_option(ioas, 0x7777, 1), Ok(false));
        Verdict::Pass
    }));
    case!("option_bad_value_reported_not_error", |d| with_ioas(d, |d, ioas| {
        expect!(d.set_option(ioas, abi::iommufd::OPTION_HUGE_PAGES, 9), Ok(false));
        Verdict::Pass
    }));
    case!("option_on_missing_ioas_enoent", |d| {
        expect!(d.set_option(0x7FFF_0000, abi::iommufd::OPTION_HUGE_PAGES, 1), Err(Errno::ENOENT));
        Verdict::Pass
    });
    // Devices.
    case!("bind_attach_detach", |d| with_device(d, |d, dev, ioas| {
        expect!(d.detach(dev), Ok(()));
        expect!(d.detach(dev), Err(Errno::EINVAL));
        let h = try_ok!(d.attach(dev, ioas));
        ensure!(h != ioas && h != dev, "HWPT id {h}");
        Verdict::Pass
    }));
    case!("attach_twice_same_hwpt", |d| with_device(d, |d, dev, ioas| {
        let a = try_ok!(d.attach(dev, ioas));
        expect!(d.attach(dev, ioas), Ok(a));
        Verdict::Pass
    }));
    case!("bind_twice_ebusy", |d| with_device(d, |d, _, _| {
        expect!(d.bind(0), Err(Errno::EBUSY));
        Verdict::Pass
    }));
    case!("destroy_attached_ioas_ebusy", |d| with_device(d, |d, _, ioas| {
        expect!(d.destroy(ioas), Err(Errno::EBUSY));
        Verdict::Pass
    }));
    case!("destroy_hwpt_in_use_ebusy", |d| with_device(d, |d, dev, ioas| {
        let h = try_ok!(d.attach(dev, ioas));
        expect!(d.destroy(h), Err(Errno::EBUSY));
        Verdict::Pass
    }));
    case!("attach_to_missing_ioas_enoent", |d| with_device(d, |d, dev, _| {
        expect!(d.attach(dev, 0x7FFF_0000), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("attach_device_to_a_device_einval", |d| with_device(d, |d, dev, _| {
        // An id of the wrong kind is EINVAL, as for every other op.
        expect!(d.attach(dev, dev), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("attach_missing_device_enoent", |d| with_ioas(d, |d, ioas| {
        expect!(d.attach(0x7FFF_0000, ioas), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("attach_ioas_as_device_einval", |d| with_ioas(d, |d, ioas| {
        expect!(d.attach(ioas, ioas), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("move_to_a_second_ioas", |d| with_device(d, |d, dev, first| with_ioas(d, |d, second| {
        let h = try_ok!(d.attach(dev, second));
        ensure!(h != 0, "HWPT id 0");
        expect!(d.destroy(second), Err(Errno::EBUSY));
        try_ok!(d.attach(dev, first));
        Verdict::Pass
    })));
    case!("map_after_attach_then_unmap", |d| with_device(d, |d, _, ioas| with_pages(d, 4, |d, va| {
        let at = try_ok!(d.map(ioas, va, 4 * PAGE, None, RW));
        expect!(d.unmap(ioas, at, 4 * PAGE), Ok(4 * PAGE));
        Verdict::Pass
    })));
    case!("mappings_made_before_attach_are_mirrored", |d| {
        if d.devices().is_empty() {
            return Verdict::Skip("no device");
        }
        with_ioas(d, |d, ioas| {
            with_pages(d, 2, |d, va| {
                let at = try_ok!(d.map(ioas, va, 2 * PAGE, None, RW));
                let dev = try_ok!(d.bind(0));
                let r = d.attach(dev, ioas);
                let unmapped = d.unmap(ioas, at, 2 * PAGE);
                let _ = d.detach(dev);
                let _ = d.destroy(dev);
                try_ok!(r);
                expect!(unmapped, Ok(2 * PAGE));
                Verdict::Pass
            })
        })
    });
    case!("destroy_device_while_attached", |d| {
        if d.devices().is_empty() {
            return Verdict::Skip("no device");
        }
        with_ioas(d, |d, ioas| {
            let dev = try_ok!(d.bind(0));
            try_ok!(d.attach(dev, ioas));
            // Unbinding detaches: the IOAS is free to go (with_ioas destroys it).
            expect!(d.destroy(dev), Ok(()));
            Verdict::Pass
        })
    });
    case!("two_devices_share_an_ioas", |d| {
        if d.devices().len() < 2 {
            return Verdict::Skip("fewer than two devices");
        }
        with_ioas(d, |d, ioas| {
            with_pages(d, 1, |d, va| {
                let (a, b) = (try_ok!(d.bind(0)), try_ok!(d.bind(1)));
                let ha = d.attach(a, ioas);
                let hb = d.attach(b, ioas);
                let at = d.map(ioas, va, PAGE, None, RW);
                let _ = d.unmap(ioas, 0, u64::MAX);
                let _ = (d.detach(a), d.detach(b), d.destroy(a), d.destroy(b));
                let (ha, hb) = (try_ok!(ha), try_ok!(hb));
                try_ok!(at);
                let units = d.devices();
                ensure!((units[0] == units[1]) == (ha == hb), "HWPTs {ha} {hb} for units {units:?}");
                Verdict::Pass
            })
        })
    });
    case!("two_devices_on_two_units", |d| {
        let units = d.devices();
        let Some(j) = units.iter().position(|&u| u != units.first().copied().unwrap_or(0)) else {
            return Verdict::Skip("every device sits behind the same unit");
        };
        with_ioas(d, |d, ioas| {
            with_pages(d, 1, |d, va| {
                let (a, b) = (try_ok!(d.bind(0)), try_ok!(d.bind(j)));
                let ha = d.attach(a, ioas);
                let hb = d.attach(b, ioas);
                let mapped = d.map(ioas, va, PAGE, None, RW);
                let _ = d.unmap(ioas, 0, u64::MAX);
                let _ = (d.detach(a), d.detach(b), d.destroy(a), d.destroy(b));
                let (ha, hb) = (try_ok!(ha), try_ok!(hb));
                try_ok!(mapped);
                ensure!(ha != hb, "one HWPT for two units");
                Verdict::Pass
            })
        })
    });
    case!("fixed_map_above_4g", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        expect!(d.map(ioas, va, PAGE, Some(0x1_0000_0000), RW), Ok(0x1_0000_0000));
        Verdict::Pass
    })));
    case!("map_last_page_of_the_aperture", |d| with_device(d, |d, _, ioas| with_pages(d, 1, |d, va| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        let Some(&(_, last)) = r.last() else { return Verdict::Fail("no ranges".into()) };
        expect!(d.map(ioas, va, PAGE, Some(last + 1 - PAGE), RW), Ok(last + 1 - PAGE));
        Verdict::Pass
    })));
    case!("map_straddling_the_aperture_end_erange", |d| with_device(d, |d, _, ioas| with_pages(d, 2, |d, va| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        let Some(&(_, last)) = r.last() else { return Verdict::Fail("no ranges".into()) };
        expect!(d.map(ioas, va, 2 * PAGE, Some(last + 1 - PAGE), RW), Err(Errno::ERANGE));
        Verdict::Pass
    })));
    case!("auto_iova_lies_in_the_ranges", |d| with_device(d, |d, _, ioas| with_pages(d, 8, |d, va| {
        let (r, _) = try_ok!(d.iova_ranges(ioas));
        let at = try_ok!(d.map(ioas, va, 8 * PAGE, None, RW));
        ensure!(r.iter().any(|&(s, e)| s <= at && at + 8 * PAGE - 1 <= e), "{at:#x} outside {r:x?}");
        Verdict::Pass
    })));
    case!("iova_ranges_of_missing_ioas_enoent", |d| {
        expect!(d.iova_ranges(0x7FFF_0000).map(|_| ()), Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("allow_iovas_missing_ioas_enoent", |d| {
        expect!(d.allow_iovas(0x7FFF_0000, &[]), Err(Errno::ENOENT));
        Verdict::Pass
    });
    case!("copy_into_missing_ioas_enoent", |d| with_ioas(d, |d, ioas| with_pages(d, 1, |d, va| {
        let at = try_ok!(d.map(ioas, va, PAGE, None, RW));
        expect!(d.copy(0x7FFF_0000, ioas, at, PAGE, None, RW), Err(Errno::ENOENT));
        Verdict::Pass
    })));
    case!("detach_a_bound_unattached_device_einval", |d| {
        if d.devices().is_empty() {
            return Verdict::Skip("no device");
        }
        let dev = try_ok!(d.bind(0));
        let got = d.detach(dev);
        expect!(d.destroy(dev), Ok(()));
        expect!(got, Err(Errno::EINVAL));
        Verdict::Pass
    });
    case!("mappings_outlive_a_detach", |d| with_device(d, |d, dev, ioas| with_pages(d, 2, |d, va| {
        let at = try_ok!(d.map(ioas, va, 2 * PAGE, None, RW));
        expect!(d.detach(dev), Ok(()));
        expect!(d.unmap(ioas, at, 2 * PAGE), Ok(2 * PAGE));
        try_ok!(d.attach(dev, ioas));
        Verdict::Pass
    })));
    case!("iova_ranges_widen_again_after_detach", |d| with_device(d, |d, dev, ioas| {
        let (narrow, _) = try_ok!(d.iova_ranges(ioas));
        expect!(d.detach(dev), Ok(()));
        let (wide, _) = try_ok!(d.iova_ranges(ioas));
        let _ = d.attach(dev, ioas);
        ensure!(wide.last().map(|r| r.1) > narrow.last().map(|r| r.1), "{narrow:x?} -> {wide:x?}");
        Verdict::Pass
    }));
    // The raw ABI rules.
    use abi::iommufd::Op;
    case!("raw_unknown_op_enotty", |d| raw_call(d, 99, &[16, 0], 16, Err(Errno::ENOTTY)));
    case!("raw_op_0_enotty", |d| raw_call(d, 0, &[16, 0], 16, Err(Errno::ENOTTY)));
    case!("raw_size_below_header_einval", |d| raw_call(d, Op::IoasAlloc as u64, &[4, 0], 4, Err(Errno::EINVAL)));
    case!("raw_size_0_einval", |d| raw_call(d, Op::IoasAlloc as u64, &[0, 0], 8, Err(Errno::EINVAL)));
    case!("raw_size_too_big_e2big", |d| raw_call(d, Op::IoasAlloc as u64, &[4096, 0], 16, Err(Errno::E2BIG)));
    case!("raw_unknown_flags_einval", |d| raw_call(d, Op::IoasAlloc as u64, &[16, 1], 16, Err(Errno::EINVAL)));
    case!("raw_reserved_set_einval", |d| raw_call(d, Op::IoasAlloc as u64, &[16, 0, 0, 5], 16, Err(Errno::EINVAL)));
    case!("raw_longer_struct_zero_tail_ok", |d| {
        let mut bytes = alloc::vec![0u8; 32];
        bytes[0..4].copy_from_slice(&32u32.to_le_bytes());
        match d.raw(Op::IoasAlloc as u64, &mut bytes) {
            None => Verdict::Skip("no ABI layer on this backend"),
            Some(r) => {
                expect!(r, Ok(()));
                // The id came back in the struct: the IOAS is not lost.
                let id = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                expect!(d.destroy(id), Ok(()));
                Verdict::Pass
            }
        }
    });
    case!("raw_longer_struct_nonzero_tail_e2big", |d| {
        raw_call(d, Op::IoasAlloc as u64, &[32, 0, 0, 0, 0, 0, 7], 32, Err(Errno::E2BIG))
    });
    // A size that cuts off the out field would make an object whose id never comes back.
    case!("raw_struct_shorter_than_its_fields_einval", |d| raw_call(
        d,
        Op::IoasAlloc as u64,
        &[8, 0],
        8,
        Err(Errno::EINVAL)
    ));
    case!("raw_map_unknown_flag_einval", |d| raw_call(d, Op::IoasMap as u64, &[40, 8], 40, Err(Errno::EINVAL)));
    case!("raw_destroy_reserved_einval", |d| raw_call(d, Op::Destroy as u64, &[16, 0, 1, 1], 16, Err(Errno::EINVAL)));
    case!("raw_bad_struct_pointer_efault", |d| raw_ptr_call(d, Op::IoasAlloc as u64, 0x10, Err(Errno::EFAULT)));
    case!("raw_kernel_struct_pointer_efault", |d| {
        raw_ptr_call(d, Op::IoasAlloc as u64, 0xFFFF_8000_0000_0000, Err(Errno::EFAULT))
    });
    case!("raw_iova_ranges_small_room_e2big_with_count", |d| with_ioas(d, |d, ioas| {
        // num_ranges = 0: no room; the count comes back with E2BIG.
        let mut bytes = alloc::vec![0u8; 32];
        bytes[0..4].copy_from_slice(&32u32.to_le_bytes());
        bytes[8..12].copy_from_slice(&ioas.to_le_bytes());
        match d.raw(Op::IoasIovaRanges as u64, &mut bytes) {
            None => Verdict::Skip("no ABI layer on this backend"),
            Some(r) => {
                expect!(r, Err(Errno::E2BIG));
                let n = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
                ensure!(n >= 1, "count {n}");
                Verdict::Pass
            }
        }
    }));
    // Array pointers and bound functions: the struct words spell them out
    // (64-bit fields as low, high halves).
    case!("raw_iova_ranges_bad_array_pointer_efault", |d| with_ioas(d, |d, ioas| {
        raw_call(d, Op::IoasIovaRanges as u64, &[32, 0, ioas, 8, 0x10, 0], 32, Err(Errno::EFAULT))
    }));
    case!("raw_allow_iovas_bad_array_pointer_efault", |d| with_ioas(d, |d, ioas| {
        raw_call(d, Op::IoasAllowIovas as u64, &[24, 0, ioas, 1, 0x10, 0], 24, Err(Errno::EFAULT))
    }));
    case!("raw_bind_unclaimed_eperm", |d| {
        let host_bridge = abi::bdf(0, 0, 0, 0) as u32;
        raw_call(d, Op::DeviceBind as u64, &[24, 0, host_bridge, 0], 24, Err(Errno::EPERM))
    });
    case!("raw_bind_missing_function_enoent", |d| {
        let missing = abi::bdf(0, 0xEE, 31, 7) as u32;
        raw_call(d, Op::DeviceBind as u64, &[24, 0, missing, 0], 24, Err(Errno::ENOENT))
    });
    // Ported from Linux's iommufd selftest: what it checks that the cases above do not.
    case!("dma_sweep_of_map_starts_and_lengths", |d| with_device(d, |d, _, ioas| with_pages(d, 8, |d, va| {
        // Every page says which task page it is; a device reading through a
        // mapping of pages [first, first + n) must find exactly those, and
        // the page just past the mapping must be blocked.
        for i in 0..8 {
            d.poke(va + i * PAGE, va + i * PAGE);
        }
        for (first, n) in [(0u64, 1u64), (1, 3), (5, 3)] {
            let at = 0x400_0000 + first * 0x10_0000;
            try_ok!(d.map(ioas, va + first * PAGE, n * PAGE, Some(at), RW));
            for k in [0, n - 1] {
                match d.dma_read(0, ioas, at + k * PAGE) {
                    None => {
                        let _ = d.unmap(ioas, 0, u64::MAX);
                        return Verdict::Skip("no device DMA on this backend");
                    }
                    Some(got) => {
                        let want = va + (first + k) * PAGE;
                        ensure!(got == Some(want), "map [{first}, +{n}) page {k}: read {got:x?}, want {want:#x}");
                    }
                }
            }
            let past = d.dma_read(0, ioas, at + n * PAGE);
            ensure!(past == Some(None), "map [{first}, +{n}): the page past the mapping was read: {past:x?}");
            expect!(d.unmap(ioas, at, n * PAGE), Ok(n * PAGE));
        }
        Verdict::Pass
    })));
    case!("copy_window_starting_before_an_area_enoent", |d| with_ioas(d, |d, src| with_pages(d, 2, |d, va| {
        let at = try_ok!(d.map(src, va, 2 * PAGE, Some(0x40_0000), RW));
        with_ioas(d, |d, dst| {
            expect!(d.copy(dst, src, at - PAGE, 2 * PAGE, None, RW), Err(Errno::ENOENT));
            expect!(d.copy(dst, src, at + PAGE, 2 * PAGE, None, RW), Err(Errno::ENOENT));
            expect!(d.copy(dst, src, at, 2 * PAGE, None, RW).map(|_| ()), Ok(()));
            Verdict::Pass
        })
    })));
    case!("auto_map_never_wraps_past_2_64", |d| with_ioas(d, |d, ioas| with_pages(d, 32, |d, va| {
        // Only the top 16 pages of the space are allowed: a bigger map finds
        // no gap (it must not wrap to low IOVAs), a fitting one lands there.
        let top = u64::MAX - (16 * PAGE - 1);
        if d.allow_iovas(ioas, &[(top, u64::MAX)]).is_err() {
            return Verdict::Skip("the top of the IOVA space is not usable here (a device narrows it)");
        }
        expect!(d.map(ioas, va, 32 * PAGE, None, RW), Err(Errno::ENOSPC));
        expect!(d.map(ioas, va, 16 * PAGE, None, RW), Ok(top));
        expect!(d.map(ioas, va, PAGE, None, RW), Err(Errno::ENOSPC));
        expect!(d.unmap(ioas, 0, u64::MAX), Ok(16 * PAGE));
        expect!(d.allow_iovas(ioas, &[]), Ok(()));
        Verdict::Pass
    })));
    case!("map_of_a_range_whose_first_half_is_unmapped_efault", |d| with_ioas(d, |d, ioas| with_pages(
        d,
        2,
        |d, va| {
            // The page before `va` is a guard page: the range starts unmapped.
            expect!(d.map(ioas, va - PAGE, 2 * PAGE, None, RW), Err(Errno::EFAULT));
            expect!(d.map(ioas, va - 2 * PAGE, 4 * PAGE, None, RW), Err(Errno::EFAULT));
            expect!(d.unmap(ioas, 0, u64::MAX), Ok(0));
            Verdict::Pass
        }
    )));
    case!("hw_info_of_an_unknown_device_enoent", |d| {
        let mut data = [0u8; 64];
        expect!(d.hw_info_typed(0x7FFF_0001, &mut data).map(|_| ()), Err(Errno::ENOENT));
        with_ioas(d, |d, ioas| {
            expect!(d.hw_info_typed(ioas, &mut data).map(|_| ()), Err(Errno::EINVAL));
            Verdict::Pass
        })
    });
    case!("raw_hwpt_alloc_null_data_pointer_efault", |d| with_device(d, |d, dev, ioas| {
        // data_len 8 with data_uptr 0: the kernel must not read address 0.
        let words = [40, 0, dev, ioas, abi::iommufd::hwpt_data::VTD_ATTRS, 8, 0, 0, 0, 0];
        raw_call(d, Op::HwptAlloc as u64, &words, 40, Err(Errno::EFAULT))
    }));
    v.extend(hw::cases());
    v
}

/// Runs every case, printing KTAP through `out` (one line per call); returns
/// (passed, failed, skipped).
pub fn run(door: &mut dyn Door, out: &mut dyn FnMut(&str)) -> (u32, u32, u32) {
    let all = cases();
    out("KTAP version 1");
    out(&format!("1..{}", all.len()));
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for (i, (name, case)) in all.iter().enumerate() {
        // Every case ends with a pin-leak check, as Linux's selftest does.
        let before = door.leak_counters();
        let mut verdict = case(door);
        if let (Verdict::Pass | Verdict::Skip(_), Some(b), Some(a)) = (&verdict, before, door.leak_counters()) {
            if a != b {
                verdict = Verdict::Fail(format!("leak: pins and objects {b:?} before the case, {a:?} after"));
            }
        }
        match verdict {
            Verdict::Pass => {
                pass += 1;
                out(&format!("ok {} user.ioas.{name}", i + 1));
            }
            Verdict::Skip(why) => {
                skip += 1;
                out(&format!("ok {} user.ioas.{name} # SKIP {why}", i + 1));
            }
            Verdict::Fail(why) => {
                fail += 1;
                out(&format!("not ok {} user.ioas.{name} # {why}", i + 1));
            }
        }
    }
    (pass, fail, skip)
}
