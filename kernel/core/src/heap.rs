//! The kernel heap: a `linked_list_allocator` over contiguous frames.

use crate::mm;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use linked_list_allocator::Heap;

/// The heap, with fail-nth's heap injection point in front of it, and its
/// free bytes as of the last allocation or release, so that the check every
/// allocating syscall makes ([`ensure_headroom`]) reads two atomics instead
/// of taking the heap's lock.
struct KernelHeap {
    heap: spin::Mutex<Heap>,
    free: AtomicUsize,
    size: AtomicUsize,
}

impl KernelHeap {
    /// Publishes `h`'s figures (called with the lock held, after each change).
    fn publish(&self, h: &Heap) {
        self.free.store(h.free(), Ordering::Relaxed);
    }
}

// SAFETY: every block comes from `Heap::allocate_first_fit` and goes back to
// `Heap::deallocate` with the layout it was allocated with (the caller's
// `GlobalAlloc` contract), under the one lock; an allocation may answer null
// (fail-nth, or no room), which `GlobalAlloc` allows. Growing `realloc`s come
// through `alloc` (the trait's provided `realloc`), so they are injection
// points too.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if crate::fail_nth::hit_heap() {
            return core::ptr::null_mut();
        }
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let mut h = self.heap.lock();
        let p = h.allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr);
        self.publish(&h);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else { return };
        let mut h = self.heap.lock();
        // SAFETY: `ptr` came from `alloc` above with this `layout` (the caller's contract).
        unsafe { h.deallocate(ptr, layout) };
        self.publish(&h);
    }
}

#[cfg_attr(target_os = "none", global_allocator)]
static HEAP: KernelHeap =
    KernelHeap { heap: spin::Mutex::new(Heap::empty()), free: AtomicUsize::new(0), size: AtomicUsize::new(0) };

/// Heap allocations (growing reallocations included) since boot.
static ALLOCATIONS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Heap allocations since boot (a test compares it around a call that must not allocate).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Heap size for a machine with `ram` bytes of usable memory: 1/16 of RAM, 4–32 MiB.
pub fn heap_size_for(ram: u64) -> usize {
    ((ram / 16).clamp(4 << 20, 32 << 20) as usize) & !0xFFF
}

/// Takes `size` bytes of contiguous frames and hands them to the global allocator.
pub fn init(size: usize) -> Result<(), &'static str> {
    let frames = size / 4096;
    let pa = mm::alloc_frames_uninit(frames, 1).ok_or("no contiguous memory for the heap")?;
    let mut h = HEAP.heap.lock();
    // SAFETY: the frames were just allocated for the heap alone and are mapped through the direct map; the heap owns them for the life of the kernel.
    unsafe { h.init(mm::phys_to_virt(pa) as *mut u8, frames * 4096) };
    HEAP.size.store(h.size(), Ordering::Relaxed);
    HEAP.publish(&h);
    Ok(())
}

/// `(used, free)` heap bytes.
pub fn usage() -> (usize, usize) {
    let h = HEAP.heap.lock();
    (h.used(), h.free())
}

/// Heap bytes every syscall that allocates must leave free. Syscall paths
/// allocate only through the `fallible` crate, so a call that finds the
/// heap full answers `ENOMEM` with nothing changed (fail-nth checks it); this
/// reserve is the second line: it keeps room for the kernel's own work that
/// is not fallible — a task's teardown, boot-time structures — so one task
/// filling the heap cannot starve it. One call allocates less than this (the
/// largest is a 1 MiB user copy, or a 512 KiB page list of a map at the pin
/// quota).
pub const SYSCALL_RESERVE: usize = 2 << 20;

/// `ENOMEM` unless the heap has [`SYSCALL_RESERVE`] bytes free (half the
/// heap on heaps smaller than twice that): checked on entry to the syscalls
/// that allocate, so a task that would exhaust the heap gets an error and
/// the kernel keeps running.
pub fn ensure_headroom() -> Result<(), abi::Errno> {
    let reserve = SYSCALL_RESERVE.min(HEAP.size.load(Ordering::Relaxed) / 2);
    if HEAP.free.load(Ordering::Relaxed) >= reserve {
        Ok(())
    } else {
        Err(abi::Errno::ENOMEM)
    }
}
