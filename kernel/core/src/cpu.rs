//! What this CPU runs now: the running task's id and kernel stack, kept in
//! atomics so that fail-nth and backtraces read them without the task list's
//! lock (a panic inside a syscall often happens while it is held). Written
//! only by the scheduler (`crate::scheduler`).

use core::sync::atomic::{AtomicU64, Ordering};

/// Id of the running task (0 = the scheduler / kernel).
static RUNNING: AtomicU64 = AtomicU64::new(0);
/// Page-table root of the running task (0 while the kernel runs): every
/// copy to or from user memory starts from it, without the task list's lock.
static RUNNING_ROOT: AtomicU64 = AtomicU64::new(0);
/// `(bottom, top)` of the running task's kernel stack (for backtraces).
static KSTACK_BOTTOM: AtomicU64 = AtomicU64::new(0);
static KSTACK_TOP: AtomicU64 = AtomicU64::new(0);

/// Id of the running task (0: the kernel itself runs).
pub fn running() -> u64 {
    RUNNING.load(Ordering::Relaxed)
}

/// Records that task `id` with page-table root `root` runs now (`(0, 0)`:
/// back in the kernel).
pub fn set_running(id: u64, root: u64) {
    RUNNING.store(id, Ordering::Relaxed);
    RUNNING_ROOT.store(root, Ordering::Relaxed);
}

/// Page-table root of the running task (`None`: the kernel itself runs).
pub fn running_root() -> Option<u64> {
    Some(RUNNING_ROOT.load(Ordering::Relaxed)).filter(|&r| r != 0)
}

/// Records the kernel stack `[bottom, top)` of the task about to run.
pub fn set_kernel_stack(bottom: u64, top: u64) {
    KSTACK_BOTTOM.store(bottom, Ordering::Relaxed);
    KSTACK_TOP.store(top, Ordering::Relaxed);
}

/// `(bottom, top)` of the running task's kernel stack, for backtraces.
pub fn current_kernel_stack() -> Option<(usize, usize)> {
    let top = KSTACK_TOP.load(Ordering::Relaxed) as usize;
    let bottom = KSTACK_BOTTOM.load(Ordering::Relaxed) as usize;
    (running() != 0 && top != 0).then_some((bottom, top))
}
