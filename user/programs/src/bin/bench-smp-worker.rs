//! One task of `bench-smp`: map + unmap pairs of one 4 KiB page on an IOAS
//! of its own with its own `edu` attached (so every call reaches the IOMMU),
//! started together with the others by `bench-smp`'s start word.
//!
//! Or, by the series `bench-smp` names, the same without a device, pairs
//! of the cheapest syscall, or pairs of a loop without syscalls. The
//! mailbox words are in `bench_smp_protocol.rs`.
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use edu_driver as edu;
use userlib::{iommufd, sys};

#[path = "../bench_smp_protocol.rs"]
mod protocol;

use protocol::*;

const PAGE: u64 = 4096;
/// Loop steps of one `COMPUTE` pair (about 57 us under TCG, so a round of
/// 3 000 pairs lasts about 0.17 s: long against the 10 ms tick).
const COMPUTE_STEPS: u64 = 20_000;

/// Claims the first free edu behind an IOMMU and attaches it to a new IOAS.
fn setup() -> Option<(u32, u32)> {
    let mut list = [abi::DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    for d in list[..n.min(64)].iter().filter(|d| (d.vendor, d.device) == edu::EDU) {
        if d.flags & abi::DEVICE_DMA_ALLOWED == 0 || sys::device_claim(d.bdf).is_err() {
            continue;
        }
        let bound = userlib::driver::bind_to_new_ioas(d.bdf).ok()?;
        return Some((bound.ioas, bound.dev));
    }
    None
}

fn main() -> i32 {
    let index = sys::test_mailbox_get(0).unwrap_or(0);
    let _ = sys::test_mailbox_set(0, TAKEN);
    let pairs = sys::test_mailbox_get(1).unwrap_or(0);
    let mode = sys::test_mailbox_get(7).unwrap_or(0);
    if mode == NULL_CALLS || mode == COMPUTE {
        return without_iommufd(index, pairs, mode);
    }
    let setup = if mode == NO_DEVICE { userlib::iommufd::ioas_alloc().ok().map(|ioas| (ioas, 0)) } else { setup() };
    let Some((ioas, _dev)) = setup else {
        let _ = sys::test_mailbox_set(3 + index, FAILED);
        return 1;
    };
    let Ok(buf) = iommufd::dma_alloc(ioas, PAGE) else {
        let _ = sys::test_mailbox_set(3 + index, FAILED);
        return 1;
    };
    if !wait_for_go(index) {
        return 1;
    }
    let rw = MAP_READABLE | MAP_WRITEABLE;
    for _ in 0..pairs {
        let ok = iommufd::map(ioas, buf.va, PAGE, None, rw).and_then(|at| iommufd::unmap(ioas, at, PAGE));
        if ok.is_err() {
            let _ = sys::test_mailbox_set(3 + index, FAILED);
            return 1;
        }
    }
    let _ = sys::test_mailbox_set(3 + index, userlib::time::now_ns());
    0
}

/// Waits (yielding) for `bench-smp`'s start word, for at most a minute; on
/// a timeout marks this worker failed. Whether the start came.
fn wait_for_go(index: u64) -> bool {
    let go = userlib::driver::wait_until(60_000_000_000, "start", || sys::test_mailbox_get(2) == Ok(GO)).is_ok();
    if !go {
        let _ = sys::test_mailbox_set(3 + index, FAILED);
    }
    go
}

/// The rounds that reach no IOAS: `pairs` pairs of the cheapest syscall
/// ([`NULL_CALLS`]) or of a loop of [`COMPUTE_STEPS`] steps ([`COMPUTE`]).
fn without_iommufd(index: u64, pairs: u64, mode: u64) -> i32 {
    if !wait_for_go(index) {
        return 1;
    }
    let mut x = index.wrapping_add(1);
    for _ in 0..pairs {
        if mode == NULL_CALLS {
            let a = sys::clock_counter();
            let b = sys::clock_counter();
            x = x.wrapping_add(u64::from(a.is_ok()) + u64::from(b.is_ok()));
        } else {
            for i in 0..COMPUTE_STEPS {
                x = core::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
            }
        }
    }
    core::hint::black_box(x);
    let _ = sys::test_mailbox_set(3 + index, userlib::time::now_ns());
    0
}

userlib::entry!(main);
