//! `cargo xtask bench ioas --smp N`, the scaling part: 4 KiB map + unmap
//! pairs from 1, 2, … up to N tasks at once (N = the CPUs online, at most
//! 4), each on its own IOAS with its own `edu` attached, started together;
//! prints the pairs per second of each round and its ratio to one task, and
//! a `RESULT` line per round; then the same without devices (the IOAS
//! reaches no IOMMU: what the kernel's own locks allow), and two baselines:
//! pairs of the cheapest syscall (the entry path) and pairs of a loop
//! without syscalls (what the CPUs of the machine give at all). Figures only.
#![no_std]
#![no_main]

use userlib::println;
use userlib::sys::{self, Counter};

#[path = "../bench_smp_protocol.rs"]
mod protocol;

use protocol::*;

/// Pairs per task and round (map + unmap, and compute loops).
const PAIRS: u64 = 3_000;
/// Pairs per task and round of the null syscalls (each far cheaper).
const NULL_PAIRS: u64 = 60_000;
/// Rounds per task count (the median is printed).
const ROUNDS: usize = 3;

/// Waits (sleeping 1 ms at a time) until `done` or `seconds` pass; whether it held.
fn wait_until(seconds: u64, done: impl FnMut() -> bool) -> bool {
    userlib::driver::sleep_until(seconds * 1_000_000_000, "wait", done).is_ok()
}

/// One round of `tasks` workers; the pairs per second of all together.
fn round(tasks: u64, alone: u64, pairs: u64) -> Result<f64, &'static str> {
    let _ = sys::test_mailbox_set(1, pairs);
    let _ = sys::test_mailbox_set(2, 0);
    for k in 0..tasks {
        let _ = sys::test_mailbox_set(3 + k, NOT_YET);
        let _ = sys::test_mailbox_set(0, k);
        sys::task_spawn("bench-smp-worker").map_err(|_| "spawn")?;
        if !wait_until(30, || sys::test_mailbox_get(0) == Ok(TAKEN)) {
            return Err("a worker did not start");
        }
    }
    // Every worker has set up (claimed, bound, attached) before the start.
    let _ = sys::sleep(50_000_000);
    let start = userlib::time::now_ns();
    let _ = sys::test_mailbox_set(2, GO);
    if !wait_until(600, || (0..tasks).all(|k| sys::test_mailbox_get(3 + k).is_ok_and(|v| v != NOT_YET))) {
        return Err("a worker did not finish");
    }
    let ends: Option<u64> =
        (0..tasks).map(|k| sys::test_mailbox_get(3 + k).ok().filter(|&v| v != FAILED)).max().flatten();
    let failed = (0..tasks).any(|k| sys::test_mailbox_get(3 + k) == Ok(FAILED));
    wait_until(60, || sys::test_counter(Counter::Tasks).unwrap_or(0) <= alone);
    let end = ends.filter(|_| !failed).ok_or("a worker's map or unmap failed (no edu of its own?)")?;
    let secs = end.saturating_sub(start).max(1) as f64 / 1e9;
    Ok((tasks * pairs) as f64 / secs)
}

fn main() -> i32 {
    let cpus = sys::test_counter(Counter::Cpus).unwrap_or(1);
    let alone = sys::test_counter(Counter::Tasks).unwrap_or(1);
    let max = cpus.clamp(1, 4);
    println!("bench-smp: {cpus} CPU(s); pairs per second, {PAIRS} per task ({NULL_PAIRS} of null syscalls), each task its own IOAS");
    let series = [
        (0, "edu", "map + unmap, each with its own edu attached"),
        (NO_DEVICE, "no-device", "map + unmap, no device (no IOMMU reached)"),
        (NULL_CALLS, "null-syscall", "two cheapest syscalls (clock_counter)"),
        (COMPUTE, "compute", "a loop without syscalls (the CPUs' ceiling)"),
    ];
    for (mode, label, what) in series {
        let _ = sys::test_mailbox_set(7, mode);
        let pairs = if mode == NULL_CALLS { NULL_PAIRS } else { PAIRS };
        let mut base = 0.0;
        for tasks in [1u64, 2, 4].into_iter().filter(|&t| t <= max.max(2)) {
            let mut rates = [0f64; ROUNDS];
            for r in rates.iter_mut() {
                match round(tasks, alone, pairs) {
                    Ok(rate) => *r = rate,
                    Err(e) => {
                        println!("bench-smp: failed: {tasks} task(s), {label}: {e}");
                        let _ = sys::test_mailbox_set(7, 0);
                        return 1;
                    }
                }
            }
            rates.sort_unstable_by(f64::total_cmp);
            let median = rates[ROUNDS / 2];
            if tasks == 1 {
                base = median;
            }
            let ratio = if base > 0.0 { median / base } else { 0.0 };
            println!("bench-smp: {tasks} task(s), {what}: {median:.0} pairs/s ({ratio:.2} x one task)");
            println!(
                "RESULT case=smp devices={label} tasks={tasks} cpus={cpus} pairs_per_s={median:.0} ratio_x100={:.0}",
                ratio * 100.0
            );
        }
    }
    let _ = sys::test_mailbox_set(7, 0);
    println!("bench-smp: done");
    0
}

userlib::entry!(main);
