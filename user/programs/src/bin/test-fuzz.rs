//! The syscall fuzzer as a test (KTAP `user.fuzz.*`): reads the kernel's
//! counters, runs the worker (`sysfuzz`, which prints `user.fuzz.calls` and
//! `user.fuzz.worker_clean`) as a child, waits until it and its children are
//! gone, and requires free frames, pinned frames, quarantined frames, IOMMU
//! table frames, tasks and kernel heap back at their baseline
//! (`user.fuzz.baseline_restored`): everything the worker took, a task's
//! exit must give back. Then one worker per CPU at once, each with a seed of
//! its own (`user.fuzz.all_cpus`): every run clean, the baseline again.
#![no_std]
#![no_main]

use userlib::println;
use userlib::sys::{self, Counter};

use sys::{leak_counters as counters, LEAK_COUNTERS as COUNTERS};

/// The mailbox word the worker reads its warm-up call count from.
const WARM_UP_SLOT: u64 = 7;
const WARM_UP_CALLS: u64 = 2_000;
/// The mailbox word of the parallel round (sysfuzz's `PARALLEL_SLOT`) and its values.
const PARALLEL_SLOT: u64 = 6;
const PARALLEL: u64 = 0x5A5A_0001;
const PARALLEL_FAILED: u64 = 0x5A5A_0002;
/// Calls of each worker of the parallel round.
const PARALLEL_CALLS: u64 = 4_000;

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
    println!("1..4");
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
    let mut failed = 0;
    if before.contains(&u64::MAX) {
        println!("ok 3 user.fuzz.baseline_restored # SKIP no kernel counters (boot with ktest=)");
    } else if after == before {
        println!("ok 3 user.fuzz.baseline_restored");
    } else {
        println!("not ok 3 user.fuzz.baseline_restored # {COUNTERS:?}: {before:?} before, {after:?} after");
        failed += 1;
    }
    // The fuzzer on every CPU at once.
    let cpus = sys::test_counter(Counter::Cpus).unwrap_or(1).clamp(2, 8);
    let _ = sys::test_mailbox_set(WARM_UP_SLOT, PARALLEL_CALLS);
    let _ = sys::test_mailbox_set(PARALLEL_SLOT, PARALLEL);
    let spawned = (0..cpus).filter(|_| sys::task_spawn("sysfuzz").is_ok()).count() as u64;
    wait_for(alone);
    let verdict = sys::test_mailbox_get(PARALLEL_SLOT);
    let _ = sys::test_mailbox_set(PARALLEL_SLOT, 0);
    let _ = sys::test_mailbox_set(WARM_UP_SLOT, 0);
    let again = counters();
    if spawned != cpus {
        println!("not ok 4 user.fuzz.all_cpus # {spawned} of {cpus} workers started");
        failed += 1;
    } else if verdict == Ok(PARALLEL_FAILED) || verdict != Ok(PARALLEL) {
        println!("not ok 4 user.fuzz.all_cpus # a worker's run failed (its line above says why): {verdict:?}");
        failed += 1;
    } else if !before.contains(&u64::MAX) && again != after {
        println!("not ok 4 user.fuzz.all_cpus # {COUNTERS:?}: {after:?} before, {again:?} after");
        failed += 1;
    } else {
        println!("ok 4 user.fuzz.all_cpus # {cpus} workers x {PARALLEL_CALLS} calls at once");
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
