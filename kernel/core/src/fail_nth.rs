//! fail-nth in the kernel (issue 18 item 4, Linux's `fail_nth`): a test task
//! arms a countdown (`test_canary` op 6, `ktest=` boots only) and the N-th
//! injection point passed while that task runs fails as if memory ran out;
//! op 7 disarms and says how many points were passed. The test then checks
//! that the failed call left every kernel counter where it was.
//!
//! Injection points: every frame allocation ([`crate::mm::alloc_frames_uninit`]:
//! task memory, IOMMU page tables and driver structures through
//! `KernelTables`, kernel stacks), every pin of task pages for DMA, and every
//! heap allocation made while the armed task is inside a syscall
//! ([`hit_heap`], asked by the global allocator). Syscall paths allocate only
//! through the `fallible` crate, so a failed heap allocation is an `ENOMEM`
//! like a failed frame; one that was missed calls the allocation error
//! handler, a panic, which the test then reports. Not injected: IOMMU command
//! submission (a failed flush or detach quarantines frames for good by
//! design, so a loop over it would eat memory; the host harness covers those
//! paths over the mock).
//!
//! Only the armed task's calls count (the scheduler may run others in
//! between; their allocations pass untouched).

use core::sync::atomic::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// The task the countdown is armed for (0: none).
static TASK: AtomicU64 = AtomicU64::new(0);
/// Points left until the failing one; 0: disarmed.
static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
/// Points the armed task passed since it armed.
static PASSED: AtomicU64 = AtomicU64::new(0);
/// Per CPU, the task whose syscall that CPU serves (0: none): heap
/// allocations count only there, not in the scheduler or a task's teardown.
static IN_SYSCALL: [CachePadded<AtomicU64>; crate::cpu::MAX_CPUS] =
    [const { CachePadded::new(AtomicU64::new(0)) }; crate::cpu::MAX_CPUS];

/// Marks the start (`Some(task)`) and end (`None`) of serving a syscall.
///
/// Relaxed: the scope is read on the CPU that serves the syscall (by the
/// heap's injection point inside it), never by another.
pub fn syscall_scope(task: Option<u64>) {
    IN_SYSCALL[crate::cpu::index()].store(task.unwrap_or(0), Ordering::Relaxed);
}

/// The task whose syscall this CPU serves, if any.
pub fn current_scope() -> Option<u64> {
    Some(IN_SYSCALL[crate::cpu::index()].load(Ordering::Relaxed)).filter(|&t| t != 0)
}

/// The heap's injection point: true when this allocation must fail. Only
/// allocations inside the armed task's syscall count.
pub fn hit_heap() -> bool {
    if COUNTDOWN.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let task = IN_SYSCALL[crate::cpu::index()].load(Ordering::Relaxed);
    task != 0 && task == crate::cpu::running() && hit()
}

/// Fails the `n`-th injection point `task` passes from now (0 disarms).
pub fn arm(task: u64, n: u64) {
    COUNTDOWN.store(0, Ordering::SeqCst);
    PASSED.store(0, Ordering::SeqCst);
    TASK.store(task, Ordering::SeqCst);
    COUNTDOWN.store(n, Ordering::SeqCst);
}

/// Disarms; the points passed since [`arm`] (the failing one included).
pub fn disarm() -> u64 {
    COUNTDOWN.store(0, Ordering::SeqCst);
    TASK.store(0, Ordering::SeqCst);
    PASSED.load(Ordering::SeqCst)
}

/// One injection point: true when it must fail.
pub fn hit() -> bool {
    if COUNTDOWN.load(Ordering::Relaxed) == 0 {
        return false;
    }
    if crate::cpu::running() != TASK.load(Ordering::SeqCst) {
        return false;
    }
    let Ok(left) = COUNTDOWN.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) else {
        return false;
    };
    PASSED.fetch_add(1, Ordering::SeqCst);
    if left == 1 {
        log::debug!("fail-nth: injection point {} fails", PASSED.load(Ordering::SeqCst));
    }
    left == 1
}
