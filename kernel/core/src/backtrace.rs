//! Frame-pointer backtraces, printed as raw return addresses that the xtask
//! symbolizes from the kernel ELF (`backtrace: #N 0x<16 hex digits>`).
//!
//! Both architectures keep the same frame record: the frame pointer (rbp /
//! x29) points at `[saved frame pointer, return address]`.

use crate::console::print_unlocked;

const MAX_FRAMES: usize = 32;

/// Prints the chain of return addresses starting at frame pointer `fp`,
/// numbering frames from `first` (1 when the caller printed the faulting PC as #0).
pub fn print_from(fp: usize, first: usize) {
    let ranges = crate::try_platform().map_or(&[][..], |p| p.stack_ranges());
    let task = crate::cpu::current_kernel_stack();
    let inside = |a: usize| ranges.iter().chain(task.iter()).any(|&(lo, hi)| a >= lo && a.saturating_add(16) <= hi);
    let mut fp = fp;
    for n in first..first + MAX_FRAMES {
        if fp == 0 || !fp.is_multiple_of(8) || !inside(fp) {
            break;
        }
        let record = fp as *const usize;
        // SAFETY: `fp` is 8-byte aligned and the 16-byte record lies inside a known kernel stack (checked above), so both words are mapped and readable.
        let (next, ret) = unsafe { (record.read_volatile(), record.add(1).read_volatile()) };
        if ret == 0 {
            break;
        }
        print_unlocked(format_args!("backtrace: #{n} {ret:#018x}\n"));
        if next <= fp {
            break; // frames must move towards the stack base
        }
        fp = next;
    }
}

/// Prints the backtrace of the caller. Numbered from 1: every frame is a
/// return address (there is no faulting PC for `#0`), which the host
/// symbolizer looks up one byte earlier, at the call.
pub fn print_here() {
    if let Some(p) = crate::try_platform() {
        print_from(p.frame_pointer(), 1);
    }
}
