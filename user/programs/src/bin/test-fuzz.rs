//! The syscall fuzzer as a test (KTAP `user.fuzz.*`): reads the kernel's
//! counters, runs the worker (`sysfuzz`, which prints `user.fuzz.calls` and
//! `user.fuzz.worker_clean`) as a child, waits until it and its children are
//! gone, and requires free frames, pinned frames, quarantined frames, IOMMU
//! table frames, tasks and kernel heap back at their baseline
//! (`user.fuzz.baseline_restored`): everything the worker took, a task's
//! exit must give back.
#![no_std]
#![no_main]

use userlib::println;
use userlib::sys::{self, Counter};

const COUNTERS: [Counter; 6] = [
    Counter::FreeFrames,
    Counter::PinnedFrames,
    Counter::QuarantinedFrames,
    Counter::TableFrames,
    Counter::Tasks,
    Counter::HeapUsed,
];

fn counters() -> [u64; 6] {
    COUNTERS.map(|c| sys::test_counter(c).unwrap_or(u64::MAX))
}

/// The mailbox word the worker reads its warm-up call count from.
const WARM_UP_SLOT: u64 = 7;
const WARM_UP_CALLS: u64 = 2_000;

/// Waits until no more than `tasks` tasks are alive (the worker and its
/// children end by themselves; the fuzzer's calls are bounded), an hour at most.
fn wait_for(tasks: u64) {
    let deadline = sys::clock().unwrap_or(0).saturating_add(3_600_000_000_000);
    while sys::test_counter(Counter::Tasks).unwrap_or(0) > tasks && sys::clock().unwrap_or(u64::MAX) < deadline {
        let _ = sys::sleep(2_000_000);
    }
}

fn main() -> i32 {
    println!("KTAP version 1");
    println!("1..3");
    // A short warm-up first: what the kernel keeps after a task's first
    // claim, bind or map (caches, grown tables) is then in the baseline,
    // and whatever one run leaks shows.
    let alone = sys::test_counter(Counter::Tasks).unwrap_or(1);
    let _ = sys::test_mailbox_set(WARM_UP_SLOT, WARM_UP_CALLS);
    let started = sys::task_spawn("sysfuzz").is_ok();
    wait_for(alone);
    let _ = sys::test_mailbox_set(WARM_UP_SLOT, 0);
    let before = counters();
    if !started || sys::task_spawn("sysfuzz").is_err() {
        println!("not ok 1 user.fuzz.calls # the worker could not start");
        println!("not ok 2 user.fuzz.worker_clean # the worker could not start");
        println!("not ok 3 user.fuzz.baseline_restored # the worker could not start");
        return 1;
    }
    wait_for(before[4]);
    let after = counters();
    if before.contains(&u64::MAX) {
        println!("ok 3 user.fuzz.baseline_restored # SKIP no kernel counters (boot with ktest=)");
        0
    } else if after == before {
        println!("ok 3 user.fuzz.baseline_restored");
        0
    } else {
        println!("not ok 3 user.fuzz.baseline_restored # {COUNTERS:?}: {before:?} before, {after:?} after");
        1
    }
}

userlib::entry!(main);
