//! Measures syscall round trips for `cargo xtask bench syscall`:
//! - null: an unknown number (dispatch and return with ENOSYS, no work),
//! - yield: a full trip through the scheduler and back,
//! - iommufd error: the cheapest failing IOAS call (`destroy` of an unknown id),
//!   dispatch through the iommufd door and back with ENOENT.
#![no_std]
#![no_main]

use userlib::{println, sys};

const CALLS: u64 = 100_000;

/// Best-of-5 nanoseconds per call of `f`.
fn measure(f: impl Fn()) -> u64 {
    for _ in 0..1000 {
        f();
    }
    let mut best = u64::MAX;
    for _ in 0..5 {
        let t0 = sys::clock().unwrap_or(0);
        for _ in 0..CALLS {
            f();
        }
        best = best.min(sys::clock().unwrap_or(0).saturating_sub(t0));
    }
    best / CALLS
}

fn main() -> i32 {
    let null = measure(|| {
        core::hint::black_box(sys::raw(u64::MAX, [0; 5]));
    });
    let yld = measure(|| {
        let _ = core::hint::black_box(sys::yield_now());
    });
    let door = measure(|| {
        let _ = core::hint::black_box(userlib::iommufd::destroy(u32::MAX));
    });
    println!(
        "bench: null syscall {null} ns, yield {yld} ns, iommufd error {door} ns ({CALLS} calls, best of 5 batches)"
    );
    0
}

userlib::entry!(main);
