//! Measures the null-syscall round trip (`yield`, which does no work) and
//! prints `bench: null syscall <ns> ns` for `cargo xtask bench syscall`.
#![no_std]
#![no_main]

use userlib::{println, sys};

const CALLS: u64 = 100_000;

fn main() -> i32 {
    // Warm up, then time a batch; clock() itself is one more syscall per batch.
    for _ in 0..1000 {
        let _ = sys::yield_now();
    }
    let mut best = u64::MAX;
    for _ in 0..5 {
        let t0 = sys::clock().unwrap_or(0);
        for _ in 0..CALLS {
            let _ = sys::yield_now();
        }
        let t1 = sys::clock().unwrap_or(0);
        best = best.min(t1.saturating_sub(t0));
    }
    println!("bench: null syscall {} ns ({} calls, best of 5 batches)", best / CALLS, CALLS);
    0
}

userlib::entry!(main);
