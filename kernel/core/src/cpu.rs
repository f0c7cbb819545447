//! What each CPU runs now: the running task's id, page-table root and kernel
//! stack, one slot per CPU, kept in atomics so that fail-nth, user-memory
//! access and backtraces read them without the task list's lock (a panic
//! inside a syscall often happens while it is held). A slot is written only
//! by the scheduler on its own CPU (`crate::scheduler`) and read on that CPU.
//!
//! Every per-CPU array of the kernel keeps each CPU's entry on a cache line
//! of its own ([`CachePadded`]): a syscall writes its CPU's entries, and
//! entries sharing a line made each CPU's syscalls move the line away from
//! the other CPUs (on x86_64 `bench-smp`'s null-syscall series gave
//! 0.79–0.94 of one task with two tasks before, 1.32–1.96 after).

use core::sync::atomic::{AtomicU64, Ordering};
/// A value alone on its cache line (re-exported for the boards' per-CPU arrays).
pub use crossbeam_utils::CachePadded;

/// CPUs the kernel can run on; the firmware may describe more (the rest stay off).
pub const MAX_CPUS: usize = 16;

/// One CPU's view of what runs on it.
struct Slot {
    /// Id of the running task (0 = the scheduler / kernel).
    running: AtomicU64,
    /// Page-table root of the running task (0 while the kernel runs): every
    /// copy to or from user memory starts from it, without the task list's lock.
    root: AtomicU64,
    /// `(bottom, top)` of the running task's kernel stack (for backtraces).
    kstack_bottom: AtomicU64,
    kstack_top: AtomicU64,
}

static SLOTS: [CachePadded<Slot>; MAX_CPUS] = [const {
    CachePadded::new(Slot {
        running: AtomicU64::new(0),
        root: AtomicU64::new(0),
        kstack_bottom: AtomicU64::new(0),
        kstack_top: AtomicU64::new(0),
    })
}; MAX_CPUS];

/// Index of the CPU executing this code (0 before the platform is known).
pub fn index() -> usize {
    crate::try_platform().map_or(0, |p| p.cpu_index()).min(MAX_CPUS - 1)
}

fn slot() -> &'static Slot {
    &SLOTS[index()]
}

/// Id of the task running on this CPU (0: the kernel itself runs).
pub fn running() -> u64 {
    slot().running.load(Ordering::Relaxed)
}

/// Records that task `id` with page-table root `root` runs now on this CPU
/// (`(0, 0)`: back in the kernel).
pub fn set_running(id: u64, root: u64) {
    let s = slot();
    s.running.store(id, Ordering::Relaxed);
    s.root.store(root, Ordering::Relaxed);
}

/// Page-table root of the task running on this CPU (`None`: the kernel itself runs).
pub fn running_root() -> Option<u64> {
    Some(slot().root.load(Ordering::Relaxed)).filter(|&r| r != 0)
}

/// Whether some CPU other than this one runs a task with page-table root
/// `root` now (a TLB of that CPU may hold its translations).
pub fn root_active_elsewhere(root: u64) -> bool {
    let me = index();
    SLOTS.iter().enumerate().any(|(i, s)| i != me && s.root.load(Ordering::Acquire) == root)
}

/// Records the kernel stack `[bottom, top)` of the task about to run here.
pub fn set_kernel_stack(bottom: u64, top: u64) {
    let s = slot();
    s.kstack_bottom.store(bottom, Ordering::Relaxed);
    s.kstack_top.store(top, Ordering::Relaxed);
}

/// `(bottom, top)` of the running task's kernel stack, for backtraces.
pub fn current_kernel_stack() -> Option<(usize, usize)> {
    let s = slot();
    let top = s.kstack_top.load(Ordering::Relaxed) as usize;
    let bottom = s.kstack_bottom.load(Ordering::Relaxed) as usize;
    (running() != 0 && top != 0).then_some((bottom, top))
}
