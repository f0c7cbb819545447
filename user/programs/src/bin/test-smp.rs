//! The concurrency test (KTAP `user.smp.*`, docs/smp.md): four `smp-worker`
//! tasks at once, which the scheduler spreads over the CPUs, each checking
//! its IOAS calls (and, with an `edu` of its own, its DMA) against a model
//! while the others work on the same IOMMU unit; then every kernel counter
//! must be back where it was. `smp.ops=N` on the command line sets the
//! operations per worker (default 1000).
#![no_std]
#![no_main]

use userlib::println;
use userlib::sys::{self, Counter};

const WORKERS: u64 = 4;
const DEFAULT_OPS: u64 = 1_000;
/// Operations per worker of the warm-up round.
const WARM_UP_OPS: u64 = 100;
/// A mailbox word no worker wrote (not `u64::MAX`: that reads back as an error).
const NONE: u64 = 0xDEAD_0000_0000;

use sys::{leak_counters as counters, LEAK_COUNTERS as COUNTERS};

/// Waits (sleeping 1 ms at a time) until `done` or `seconds` pass; whether it held.
fn wait_until(seconds: u64, done: impl FnMut() -> bool) -> bool {
    userlib::driver::sleep_until(seconds * 1_000_000_000, "wait", done).is_ok()
}

/// Runs [`WORKERS`] workers of `ops` operations each and waits until they
/// are gone (no more than `alone` tasks alive); returns how many started and
/// whether they are gone.
fn round(ops: u64, alone: u64) -> (u64, bool) {
    let _ = sys::test_mailbox_set(1, ops);
    let mut started = 0;
    for k in 0..WORKERS {
        let _ = sys::test_mailbox_set(2 + k, NONE);
        let _ = sys::test_mailbox_set(0, k);
        if sys::task_spawn("smp-worker").is_err() {
            break;
        }
        // The worker takes its index before the next one is handed out.
        if !wait_until(60, || sys::test_mailbox_get(0) == Ok(NONE)) {
            break;
        }
        started += 1;
    }
    // Bounded: each operation is bounded (DMA waits 2 s at most); an hour covers 10^5 of them per worker.
    let gone = wait_until(3_600, || sys::test_counter(Counter::Tasks).unwrap_or(0) <= alone);
    (started, gone)
}

fn main() -> i32 {
    println!("KTAP version 1");
    println!("1..{}", WORKERS + 2);
    let ops = sys::test_fuzz_param(2).unwrap_or(DEFAULT_OPS);
    let cpus = sys::test_counter(Counter::Cpus).unwrap_or(1);
    println!("# test-smp: {WORKERS} workers x {ops} operations on {cpus} CPU(s)");
    let alone = sys::test_counter(Counter::Tasks).unwrap_or(1);
    // A short warm-up round first: what the kernel keeps after the first
    // claim of each device and the first IOAS of each worker (grown tables,
    // cached placements) is then in the baseline, and a leak of the real
    // round shows.
    let _ = round(WARM_UP_OPS.min(ops), alone);
    let before = counters();
    let (started, gone) = round(ops, alone);
    let mut failed = 0;
    let mut dma_checks = 0;
    for k in 0..WORKERS {
        let r = sys::test_mailbox_get(2 + k).unwrap_or(NONE);
        let (done, checks, status) = (r >> 16, (r >> 4) & 0xFFF, r & 0xF);
        dma_checks += checks;
        if k >= started || r == NONE {
            println!("not ok {} user.smp.worker_{k} # did not start or report", k + 1);
            failed += 1;
        } else if status != 0 || done != ops {
            println!("not ok {} user.smp.worker_{k} # status {status} after {done} of {ops} operations", k + 1);
            failed += 1;
        } else {
            println!("ok {} user.smp.worker_{k} # {done} operations, {checks} DMA checks", k + 1);
        }
    }
    let has_edu = edu_driver::first_behind_iommu().is_some();
    if !has_edu {
        println!("ok {} user.smp.dma_checked # SKIP no edu behind an IOMMU", WORKERS + 1);
    } else if dma_checks > 0 {
        println!("ok {} user.smp.dma_checked # {dma_checks} DMA checks", WORKERS + 1);
    } else {
        println!("not ok {} user.smp.dma_checked # an edu is there but no worker checked DMA", WORKERS + 1);
        failed += 1;
    }
    let after = counters();
    if before.contains(&u64::MAX) {
        println!("ok {} user.smp.baseline_restored # SKIP no kernel counters (boot with ktest=)", WORKERS + 2);
    } else if gone && after == before {
        println!("ok {} user.smp.baseline_restored", WORKERS + 2);
    } else {
        println!(
            "not ok {} user.smp.baseline_restored # {COUNTERS:?}: {before:?} before, {after:?} after (workers gone: {gone})",
            WORKERS + 2
        );
        failed += 1;
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
