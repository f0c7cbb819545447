//! Kernel memory: the direct map, the global frame allocator, and dynamic
//! kernel mappings (MMIO and test pages) in the platform's dynamic window.

use crate::frames::{bitmap_words, FrameBitmap, FrameError, FRAME_SIZE};
use crate::platform::{MapError, PageAttr};
use bootinfo::{BootInfo, MemoryKind};
use core::sync::atomic::{AtomicU64, Ordering};

static DIRECT_MAP_OFFSET: AtomicU64 = AtomicU64::new(0);
static FRAMES: spin::Mutex<Option<FrameBitmap<'static>>> = spin::Mutex::new(None);
/// Next free virtual address in the dynamic window (bump allocated).
static DYNAMIC_NEXT: AtomicU64 = AtomicU64::new(0);

/// Physical memory below this is never handed out (firmware structures, real-mode area).
const LOW_RESERVED: u64 = 0x10_0000;

/// Sets the offset at which all physical memory is mapped (done once by the boot code).
pub fn set_direct_map(offset: u64) {
    DIRECT_MAP_OFFSET.store(offset, Ordering::Relaxed);
}

/// Kernel virtual address of physical address `pa` through the direct map.
pub fn phys_to_virt(pa: u64) -> u64 {
    DIRECT_MAP_OFFSET.load(Ordering::Relaxed) + pa
}

/// Physical address of a direct-map virtual address, if it is one.
pub fn virt_to_phys(va: u64) -> Option<u64> {
    va.checked_sub(DIRECT_MAP_OFFSET.load(Ordering::Relaxed))
}

/// Why memory initialisation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemInitError {
    /// The memory map has no usable RAM.
    NoUsableRam,
    /// No usable region can hold the frame bitmap.
    NoRoomForBitmap,
}

impl core::fmt::Display for MemInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemInitError::NoUsableRam => f.write_str("memory map has no usable RAM"),
            MemInitError::NoRoomForBitmap => f.write_str("no usable region can hold the frame bitmap"),
        }
    }
}

/// Ranges that must never be handed out: everything not usable, the low
/// megabyte and the kernel image.
fn is_reserved(boot: &BootInfo, start: u64, end: u64) -> bool {
    let overlaps = |a: u64, b: u64| start < b && a < end;
    overlaps(0, LOW_RESERVED)
        || overlaps(boot.kernel_image.start, boot.kernel_image.end)
        || boot.regions().iter().any(|r| r.kind != MemoryKind::Usable && overlaps(r.base, r.end()))
}

/// Builds the global frame allocator from the boot memory map.
pub fn init_frames(boot: &BootInfo) -> Result<(), MemInitError> {
    let usable = || boot.regions().iter().filter(|r| r.kind == MemoryKind::Usable);
    let lo = usable().map(|r| r.base).min().ok_or(MemInitError::NoUsableRam)? & !(FRAME_SIZE - 1);
    let hi = usable().map(|r| r.end()).max().ok_or(MemInitError::NoUsableRam)?;
    let frames = ((hi - lo).div_ceil(FRAME_SIZE)) as usize;
    let bytes = (bitmap_words(frames) * 8) as u64;
    // First usable, non-reserved, frame-aligned spot big enough for the bitmap.
    let mut place = None;
    for r in usable() {
        let mut start = r.base.next_multiple_of(FRAME_SIZE).max(LOW_RESERVED);
        while start + bytes <= r.end() {
            if !is_reserved(boot, start, start + bytes) {
                place = Some(start);
                break;
            }
            start += FRAME_SIZE;
        }
        if place.is_some() {
            break;
        }
    }
    let place = place.ok_or(MemInitError::NoRoomForBitmap)?;
    let words_ptr = phys_to_virt(place) as *mut u64;
    // SAFETY: [place, place + bytes) is usable RAM reserved for nothing else (checked above), mapped through the direct map, 8-byte aligned, and from now on owned by the allocator for the life of the kernel (it is reserved below).
    let words = unsafe { core::slice::from_raw_parts_mut(words_ptr, bitmap_words(frames)) };
    let mut bitmap = FrameBitmap::new(lo, frames, words);
    for r in usable() {
        bitmap.release_range(r.base, r.end());
    }
    for r in boot.regions().iter().filter(|r| r.kind != MemoryKind::Usable) {
        bitmap.reserve_range(r.base, r.end());
    }
    bitmap.reserve_range(0, LOW_RESERVED);
    bitmap.reserve_range(boot.kernel_image.start, boot.kernel_image.end);
    bitmap.reserve_range(place, place + bytes);
    *FRAMES.lock() = Some(bitmap);
    Ok(())
}

/// The frame allocator's span: its first frame and how many frames it covers.
pub fn frame_span() -> Option<(u64, usize)> {
    FRAMES.lock().as_ref().map(|f| (f.base(), f.total_frames()))
}

/// Allocates one zeroed frame.
pub fn alloc_frame() -> Option<u64> {
    alloc_frames(1, 1)
}

/// Allocates `count` contiguous frames aligned to `align_frames` frames, not zeroed.
pub fn alloc_frames_uninit(count: usize, align_frames: usize) -> Option<u64> {
    // A fail-nth injection point (every frame allocation goes through here).
    if crate::fail_nth::hit() {
        return None;
    }
    FRAMES.lock().as_mut()?.alloc_contiguous(count, align_frames)
}

/// Allocates `count` zeroed contiguous frames aligned to `align_frames` frames.
pub fn alloc_frames(count: usize, align_frames: usize) -> Option<u64> {
    let pa = alloc_frames_uninit(count, align_frames)?;
    let va = phys_to_virt(pa) as *mut u8;
    // SAFETY: the frames were just handed out to us, so nothing else uses them, and the direct map covers all RAM.
    unsafe { core::ptr::write_bytes(va, 0, count * FRAME_SIZE as usize) };
    Some(pa)
}

/// Returns a frame to the allocator.
pub fn free_frame(pa: u64) -> Result<(), FrameError> {
    FRAMES.lock().as_mut().ok_or(FrameError::Uninitialised)?.free(pa)
}

/// Keeps every frame touching `[start, end)` out of the allocator for good.
pub fn reserve_range(start: u64, end: u64) -> Result<(), FrameError> {
    FRAMES.lock().as_mut().ok_or(FrameError::Uninitialised)?.reserve_range(start, end);
    Ok(())
}

/// Frames touching `[start, end)` that the kernel has handed out or uses
/// itself (usable RAM above the low megabyte, outside the kernel image, in use).
pub fn frames_taken(boot: &BootInfo, start: u64, end: u64) -> usize {
    let guard = FRAMES.lock();
    let Some(frames) = guard.as_ref() else { return 0 };
    (start & !(FRAME_SIZE - 1)..end)
        .step_by(FRAME_SIZE as usize)
        .filter(|&a| a >= LOW_RESERVED && !(boot.kernel_image.start..boot.kernel_image.end).contains(&a))
        .filter(|&a| boot.regions().iter().any(|r| r.kind == MemoryKind::Usable && r.base <= a && a < r.end()))
        .filter(|&a| frames.in_use(a))
        .count()
}

/// Whether the frame allocator would never hand out the frame at `pa`
/// (reserved, in use, or outside the RAM it manages).
pub fn frame_unavailable(pa: u64) -> bool {
    FRAMES.lock().as_ref().is_none_or(|f| f.in_use(pa & !(FRAME_SIZE - 1)))
}

/// `(free, total)` frames.
pub fn frame_counts() -> (usize, usize) {
    FRAMES.lock().as_ref().map_or((0, 0), |f| (f.free_frames(), f.total_frames()))
}

/// Reserves `size` bytes of virtual space in the dynamic window.
pub fn reserve_virtual(size: u64) -> Result<u64, MapError> {
    let (start, len) = crate::platform().dynamic_window();
    let size = size.next_multiple_of(FRAME_SIZE);
    let _ = DYNAMIC_NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    let va = DYNAMIC_NEXT.fetch_add(size + FRAME_SIZE, Ordering::Relaxed); // one guard page
    if va.saturating_add(size) > start + len {
        return Err(MapError::WindowFull);
    }
    Ok(va)
}

/// A device register window mapped with device attributes.
#[derive(Debug, Clone, Copy)]
pub struct MmioRegion {
    /// Kernel virtual address of the first byte requested.
    pub va: u64,
    /// Physical address of the first byte requested.
    pub pa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Maps `[pa, pa + len)` as device memory and returns where it is.
pub fn map_mmio(pa: u64, len: u64) -> Result<MmioRegion, MapError> {
    let first = pa & !(FRAME_SIZE - 1);
    let span = (pa + len).next_multiple_of(FRAME_SIZE) - first;
    let va = reserve_virtual(span)?;
    let p = crate::platform();
    for off in (0..span).step_by(FRAME_SIZE as usize) {
        if let Err(e) = p.map_page(va + off, first + off, PageAttr::Mmio) {
            for undo in (0..off).step_by(FRAME_SIZE as usize) {
                let _ = p.unmap_page(va + undo);
            }
            return Err(e);
        }
    }
    log::debug!("mmio: {pa:#x}+{len:#x} at {:#x}", va + (pa - first));
    Ok(MmioRegion { va: va + (pa - first), pa, len })
}
