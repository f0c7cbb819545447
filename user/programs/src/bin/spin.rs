//! Busy-loops for 60 ms of wall time without ever yielding: only preemption
//! lets other tasks run meanwhile (the scheduler test runs two of these).
#![no_std]
#![no_main]

use userlib::{println, sys};

fn main() -> i32 {
    let start = sys::clock().unwrap_or(0);
    let mut spins = 0u64;
    while sys::clock().unwrap_or(u64::MAX) - start < 60_000_000 {
        spins += 1;
        core::hint::black_box(spins);
    }
    println!("spin: done after {spins} iterations");
    0
}

userlib::entry!(main);
