//! Heap fail-nth for host tests: a global allocator that fails the n-th
//! allocation a thread makes once armed, so a test can check that a call
//! answers out-of-memory at every one of its allocations and leaves its
//! state as it was.
//!
//! A test binary installs it with
//! `#[global_allocator] static HEAP: fallible::testing::FailingAlloc = fallible::testing::FailingAlloc;`
//! and brackets the call under test with [`arm`] and [`disarm`]. An
//! allocation that is not fallible and gets the failure calls the
//! allocation error handler, which aborts the test binary: that is the bug
//! this finds. Set `FAIL_NTH_BACKTRACE=1` to print where each injected
//! failure happened (to find the infallible one).

extern crate std;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use std::alloc::System;

std::thread_local! {
    /// Allocations left until the failing one (0: disarmed).
    static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
    /// Allocations counted since [`arm`].
    static PASSED: Cell<u64> = const { Cell::new(0) };
    /// Nesting of [`unarmed`] (and of the backtrace print).
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// The system allocator, failing where [`arm`] said.
pub struct FailingAlloc;

fn should_fail() -> bool {
    let quiet = QUIET.try_with(Cell::get).unwrap_or(1);
    let left = COUNTDOWN.try_with(Cell::get).unwrap_or(0);
    if quiet != 0 || left == 0 {
        return false;
    }
    let _ = COUNTDOWN.try_with(|c| c.set(left - 1));
    let _ = PASSED.try_with(|c| c.set(c.get() + 1));
    if left != 1 {
        return false;
    }
    if std::env::var_os("FAIL_NTH_BACKTRACE").is_some() {
        unarmed(|| std::eprintln!("heap fail-nth: failing here:\n{}", std::backtrace::Backtrace::force_capture()));
    }
    true
}

// SAFETY: every call is forwarded to `System` unchanged, except that an
// allocation may answer null, which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for FailingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if should_fail() {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if should_fail() {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && should_fail() {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Fails this thread's `n`-th allocation (a growing `realloc` counts) from now; 0 disarms.
pub fn arm(n: u64) {
    PASSED.with(|c| c.set(0));
    COUNTDOWN.with(|c| c.set(n));
}

/// Disarms; the allocations counted since [`arm`] (the failing one included).
pub fn disarm() -> u64 {
    COUNTDOWN.with(|c| c.set(0));
    PASSED.with(Cell::get)
}

/// True while armed and the failure has not been handed out yet.
pub fn armed() -> bool {
    COUNTDOWN.with(Cell::get) != 0
}

/// Runs `f` with this thread's allocations neither counted nor failed
/// (a test double's own bookkeeping, say).
pub fn unarmed<R>(f: impl FnOnce() -> R) -> R {
    QUIET.with(|q| q.set(q.get() + 1));
    let r = f();
    QUIET.with(|q| q.set(q.get() - 1));
    r
}

/// Runs `op` on `target` failing its 1st, 2nd, … allocation until it
/// succeeds. Each failed run must answer `no_memory` and leave what
/// `observe` sees of `target` unchanged (the test panics otherwise, naming
/// `what` and the allocation). Returns the successful result and how many
/// allocations that run made.
pub fn each_failure<U, T: core::fmt::Debug, E: core::fmt::Debug + PartialEq, S: core::fmt::Debug + PartialEq>(
    target: &mut U,
    what: &str,
    no_memory: &E,
    observe: &dyn Fn(&U) -> S,
    op: &mut dyn FnMut(&mut U) -> Result<T, E>,
) -> (T, u64) {
    let mut n = 1;
    loop {
        let before = unarmed(|| observe(target));
        arm(n);
        let r = op(target);
        let counted = disarm();
        match r {
            Ok(v) if counted < n => return (v, counted),
            Ok(v) => panic!("{what}: succeeded although allocation {n} of {counted} failed: {v:?}"),
            Err(e) => {
                assert_eq!(&e, no_memory, "{what}: failure {n}");
                assert_eq!(unarmed(|| observe(target)), before, "{what}: failure {n} changed the state");
            }
        }
        n += 1;
    }
}
