//! The layout of every user address space: where programs, the stack and
//! kernel-chosen mappings go (a leaf: the loader, the scheduler, user access
//! and DMA pinning all check addresses against it).

/// Top of every task's user stack (exclusive).
pub const USER_STACK_TOP: u64 = 0x0000_7FFF_FFF0_0000;
/// User stack size.
pub const USER_STACK_PAGES: u64 = 16;
/// Lowest address a program may load at (page 0 stays unmapped to catch null pointers).
pub const USER_MIN: u64 = 0x1000;
/// Where `mem_map` and `device_map_bar` place mappings the kernel chooses.
pub const MMAP_BASE: u64 = 0x0000_1000_0000_0000;
/// End of the area `mem_map` may use.
pub const MMAP_END: u64 = 0x0000_7000_0000_0000;
/// Most pages one `mem_map` call may ask for (256 MiB).
pub const MAX_MAP_PAGES: u64 = 65_536;
