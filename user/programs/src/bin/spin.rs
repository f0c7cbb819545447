//! Busy-loops for 60 ms of wall time without ever yielding: only preemption
//! lets other tasks run meanwhile (the scheduler test runs two of these).
//! While test mailbox slot 5 holds [`HOLD`] (`test-hostile`'s spawn flood,
//! test boots only) it goes on, up to 10 s: on a machine of several CPUs a
//! child runs at once, and must still be alive when its parent reaches the
//! children quota.
#![no_std]
#![no_main]

use userlib::{println, sys};

/// The mailbox slot and value that keep a spinner going.
const HOLD_SLOT: u64 = 5;
const HOLD: u64 = 0x5917_0001;

fn main() -> i32 {
    let start = sys::clock().unwrap_or(0);
    let mut spins = 0u64;
    let held = |now: u64| now.saturating_sub(start) < 10_000_000_000 && sys::test_mailbox_get(HOLD_SLOT) == Ok(HOLD);
    loop {
        let now = sys::clock().unwrap_or(u64::MAX);
        if now.saturating_sub(start) >= 60_000_000 && !held(now) {
            break;
        }
        spins += 1;
        core::hint::black_box(spins);
    }
    println!("spin: done after {spins} iterations");
    0
}

userlib::entry!(main);
