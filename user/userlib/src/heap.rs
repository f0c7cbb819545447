//! The user heap: `linked_list_allocator` over memory from `mem_map` at a fixed
//! place (`HEAP_BASE`, away from where the kernel puts mappings it chooses), grown
//! contiguously in 64 KiB steps (or more for a large request) as allocations need it.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;

/// Smallest growth step.
const STEP: usize = 64 * 1024;
/// Where the heap starts; it grows upwards from here.
const HEAP_BASE: u64 = 0x0000_2000_0000_0000;

struct UserHeap(spin::Mutex<Heap>);

// A tiny spin lock, so the heap needs no lock crate of its own.
mod spin {
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, Ordering};

    pub struct Mutex<T> {
        locked: AtomicBool,
        value: UnsafeCell<T>,
    }

    // SAFETY: access to `value` is serialised by `locked`.
    unsafe impl<T: Send> Sync for Mutex<T> {}

    impl<T> Mutex<T> {
        pub const fn new(value: T) -> Self {
            Mutex { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
        }

        pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            while self.locked.swap(true, Ordering::Acquire) {
                core::hint::spin_loop();
            }
            // SAFETY: the flag was taken above, so this is the only reference.
            let r = f(unsafe { &mut *self.value.get() });
            self.locked.store(false, Ordering::Release);
            r
        }
    }
}

#[global_allocator]
static HEAP: UserHeap = UserHeap(spin::Mutex::new(Heap::empty()));

fn grow(heap: &mut Heap, at_least: usize) -> bool {
    let len = at_least.max(STEP).next_multiple_of(4096);
    let at = if heap.size() == 0 { HEAP_BASE } else { heap.top() as u64 };
    if crate::sys::mem_map(at, len as u64, abi::PROT_READ | abi::PROT_WRITE).is_err() {
        return false;
    }
    if heap.size() == 0 {
        // SAFETY: the kernel just mapped `len` writable bytes at `at` for this task alone.
        unsafe { heap.init(at as *mut u8, len) };
    } else {
        // SAFETY: the new mapping starts right at the heap's end.
        unsafe { heap.extend(len) };
    }
    true
}

// SAFETY: allocation is delegated to `linked_list_allocator`, which returns
// blocks inside memory this task owns; the lock serialises access.
unsafe impl GlobalAlloc for UserHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.with(|heap| {
            if let Ok(p) = heap.allocate_first_fit(layout) {
                return p.as_ptr();
            }
            if grow(heap, layout.size() + layout.align() + 64) {
                if let Ok(p) = heap.allocate_first_fit(layout) {
                    return p.as_ptr();
                }
            }
            core::ptr::null_mut()
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with the same layout.
            self.0.with(|heap| unsafe { heap.deallocate(p, layout) });
        }
    }
}
