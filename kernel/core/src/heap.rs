//! The kernel heap: a `linked_list_allocator` over contiguous frames.

use crate::mm;
use linked_list_allocator::LockedHeap;

#[cfg_attr(target_os = "none", global_allocator)]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size for a machine with `ram` bytes of usable memory: 1/16 of RAM, 4–32 MiB.
pub fn heap_size_for(ram: u64) -> usize {
    ((ram / 16).clamp(4 << 20, 32 << 20) as usize) & !0xFFF
}

/// Takes `size` bytes of contiguous frames and hands them to the global allocator.
pub fn init(size: usize) -> Result<(), &'static str> {
    let frames = size / 4096;
    let pa = mm::alloc_frames_uninit(frames, 1).ok_or("no contiguous memory for the heap")?;
    // SAFETY: the frames were just allocated for the heap alone and are mapped through the direct map; the heap owns them for the life of the kernel.
    unsafe { HEAP.lock().init(mm::phys_to_virt(pa) as *mut u8, frames * 4096) };
    Ok(())
}

/// `(used, free)` heap bytes.
pub fn usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}
