//! EL0: user address spaces (TTBR0_EL1), entering EL0, the SVC syscall path and
//! leaving EL0 on `exit` or a fault (ARM ARM D1.3 "Exception levels", D8.3
//! descriptor formats: AP[2:1] at bits 7:6, nG bit 11, PXN 53, UXN 54).
//!
//! User space is the lower VA range, translated through TTBR0_EL1; the kernel
//! keeps running from TTBR1, so switching TTBR0 needs no kernel mappings in the
//! user tables. Without ASIDs, every TTBR0 switch invalidates the EL1&0 TLB.

use core::sync::atomic::{AtomicU64, Ordering};
use kcore::task::SyscallOutcome;
use kcore::{MapError, UserExit, UserPerms};

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_NORMAL: u64 = 1 << 2;
/// AP[1] = 1: accessible from EL0.
const AP_EL0: u64 = 1 << 6;
/// AP[2] = 1: read-only.
const AP_RO: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const NOT_GLOBAL: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;
/// End of the lower (TTBR0) range with 48-bit VAs.
const USER_END: u64 = 1 << 48;

static KERNEL_TTBR0: AtomicU64 = AtomicU64::new(0);

const USER_KERNEL_STACK_SIZE: usize = 64 * 1024;
#[repr(align(16))]
#[allow(dead_code)] // only its address is used
struct Stack([u8; USER_KERNEL_STACK_SIZE]);
static mut USER_KERNEL_STACK: Stack = Stack([0; USER_KERNEL_STACK_SIZE]);

/// `(bottom, top)` of the kernel stack used while a user task runs.
pub fn user_kernel_stack() -> (usize, usize) {
    let lo = core::ptr::addr_of!(USER_KERNEL_STACK) as usize;
    (lo, lo + USER_KERNEL_STACK_SIZE)
}

core::arch::global_asm!(
    r#"
.section .text.user_entry, "ax"
/* arm_enter_user(entry = x0, user_sp = x1, kernel_stack_top = x2): eret to EL0t. */
.global arm_enter_user
arm_enter_user:
    mov sp, x2
    msr sp_el0, x1
    msr elr_el1, x0
    msr spsr_el1, xzr               /* EL0t, interrupts unmasked */
    mov x0, xzr
    mov x1, xzr
    mov x2, xzr
    mov x29, xzr
    mov x30, xzr
    eret

/* arm_context_switch(save = x0, load = x1): callee-saved registers on the stack. */
.global arm_context_switch
arm_context_switch:
    stp x19, x20, [sp, #-96]!
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp x19, x20, [sp], #96
    ret
"#
);

unsafe extern "C" {
    fn arm_enter_user(entry: u64, user_sp: u64, kernel_stack_top: u64) -> !;
    fn arm_context_switch(save: *mut u64, load: u64);
}

/// Kernel stack of the running task (where traps from EL0 land).
static TASK_KSTACK_TOP: AtomicU64 = AtomicU64::new(0);

/// Serves an SVC from EL0: number in x8, arguments x0–x4, result in x0.
pub fn syscall(frame: &mut crate::exceptions::TrapFrame) {
    let args = [frame.x[0], frame.x[1], frame.x[2], frame.x[3], frame.x[4]];
    match kcore::task::syscall(frame.x[8], args) {
        SyscallOutcome::Return(v) => frame.x[0] = v,
        SyscallOutcome::Exit(code) => leave(UserExit::Exited(code)),
    }
}

/// Ends the running task (exit or fault); the scheduler takes over.
pub fn leave(exit: UserExit) -> ! {
    kcore::task::exit_current(exit)
}

fn set_ttbr0(value: u64) {
    // SAFETY: TTBR0 only translates the lower range, which the kernel does not use after boot; the TLB is invalidated because user pages are non-global without ASIDs.
    unsafe {
        core::arch::asm!("msr ttbr0_el1, {}", "isb", "tlbi vmalle1", "dsb nsh", "isb", in(reg) value, options(nostack))
    };
}

/// Builds a new task's kernel stack: a 96-byte frame for `arm_context_switch`
/// to restore, whose x30 is `start` (x29 = 0 ends backtraces).
pub fn init_task_stack(top: u64, start: extern "C" fn() -> !) -> u64 {
    let top = top & !0xF;
    let frame = (top - 96) as *mut u64;
    // SAFETY: `top` is the end of a fresh kernel stack owned by the new task; the 12 slots written lie inside it.
    unsafe {
        for i in 0..12 {
            frame.add(i).write(0);
        }
        frame.add(11).write(start as *const () as u64); // x30
    }
    frame as u64
}

/// Saves the current kernel context to `*save` and resumes `load`.
///
/// # Safety
/// As [`kcore::Platform::context_switch`]: `save` writable while the context
/// may resume, `load` a live saved stack pointer.
pub unsafe fn context_switch(save: *mut u64, load: u64) {
    // SAFETY: upheld by the caller (see above).
    unsafe { arm_context_switch(save, load) }
}

/// Makes `root` the EL0 address space and remembers the task's kernel stack.
pub fn activate_task(root: u64, kernel_stack_top: u64) {
    if KERNEL_TTBR0.load(Ordering::Relaxed) == 0 {
        let old: u64;
        // SAFETY: reading TTBR0_EL1 has no side effects.
        unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) old, options(nomem, nostack)) };
        KERNEL_TTBR0.store(old, Ordering::Relaxed);
    }
    TASK_KSTACK_TOP.store(kernel_stack_top, Ordering::Relaxed);
    set_ttbr0(root);
}

/// Back to the boot TTBR0 (no user mappings).
pub fn activate_kernel() {
    let k = KERNEL_TTBR0.load(Ordering::Relaxed);
    if k != 0 {
        set_ttbr0(k);
    }
}

/// Enters EL0; never returns. SP_EL1 is reset to the top of the task's kernel
/// stack, where exceptions from EL0 will build their frames.
pub fn enter_user(entry: u64, user_sp: u64) -> ! {
    // SAFETY: the task's tables are in TTBR0 (`activate_task`), entry and stack are mapped for EL0; the kernel stack top belongs to the running task.
    unsafe { arm_enter_user(entry, user_sp, TASK_KSTACK_TOP.load(Ordering::Relaxed)) }
}

fn entry_at(table: u64, index: u64) -> *mut u64 {
    (kcore::mm::phys_to_virt(table) + index * 8) as *mut u64
}

fn index(va: u64, level: u32) -> u64 {
    (va >> (39 - 9 * level)) & 0x1FF
}

/// Level-3 table for `va` in `root`, creating tables when `create`.
fn leaf_table(root: u64, va: u64, create: bool) -> Result<u64, MapError> {
    let mut table = root;
    for level in 0..3 {
        let p = entry_at(table, index(va, level));
        // SAFETY: `table` is a page-table frame of this user space, in the direct map.
        let e = unsafe { p.read_volatile() };
        if e & VALID == 0 {
            if !create {
                return Err(MapError::NotMapped(va));
            }
            let new = kcore::mm::alloc_frame().ok_or(MapError::OutOfFrames)?;
            // SAFETY: as above; the new table is zeroed before it is published.
            unsafe {
                core::arch::asm!("dsb ishst", options(nostack));
                p.write_volatile(new | VALID | TABLE_OR_PAGE);
            }
            table = new;
        } else {
            table = e & ADDR_MASK;
        }
    }
    Ok(table)
}

/// A new, empty user address space (a level-0 table).
pub fn new_space() -> Result<u64, MapError> {
    kcore::mm::alloc_frame().ok_or(MapError::OutOfFrames)
}

/// Maps a user page.
pub fn map(root: u64, va: u64, pa: u64, perms: UserPerms) -> Result<(), MapError> {
    if va >= USER_END || !va.is_multiple_of(4096) {
        return Err(MapError::BadAddress(va));
    }
    let table = leaf_table(root, va, true)?;
    let p = entry_at(table, index(va, 3));
    // SAFETY: `table` is this space's level-3 table in the direct map.
    if unsafe { p.read_volatile() } & VALID != 0 {
        return Err(MapError::AlreadyMapped(va));
    }
    let memory = if perms.device { 0 } else { ATTR_NORMAL | SH_INNER };
    let mut desc = pa | VALID | TABLE_OR_PAGE | ACCESS_FLAG | memory | AP_EL0 | NOT_GLOBAL | PXN;
    if !perms.write {
        desc |= AP_RO;
    }
    if !perms.exec || perms.device {
        desc |= UXN;
    }
    // SAFETY: as above.
    unsafe {
        p.write_volatile(desc);
        core::arch::asm!("dsb ishst", "isb", options(nostack));
    }
    Ok(())
}

/// Frame and rights of a user page.
pub fn translate(root: u64, va: u64) -> Option<(u64, UserPerms)> {
    if va >= USER_END {
        return None;
    }
    let table = leaf_table(root, va, false).ok()?;
    // SAFETY: `table` is this space's level-3 table in the direct map.
    let e = unsafe { entry_at(table, index(va, 3)).read_volatile() };
    if e & VALID == 0 || e & AP_EL0 == 0 {
        return None;
    }
    Some((
        (e & ADDR_MASK) | (va & 0xFFF),
        UserPerms { write: e & AP_RO == 0, exec: e & UXN == 0, device: e & (7 << 2) == 0 },
    ))
}

/// Hands `f(va, pa, perms)` each mapped user page from `va` up to `end`
/// while it answers true, reading each level-3 table once; returns where it
/// stopped (see `Platform::user_walk`).
pub fn walk(root: u64, mut va: u64, end: u64, f: &mut dyn FnMut(u64, u64, UserPerms) -> bool) -> u64 {
    let end = end.min(USER_END);
    while va < end {
        let Ok(table) = leaf_table(root, va, false) else { return va };
        for i in index(va, 3)..512 {
            if va >= end {
                return va;
            }
            // SAFETY: `table` is this space's level-3 table in the direct map; `i` < 512.
            let e = unsafe { entry_at(table, i).read_volatile() };
            if e & VALID == 0 || e & AP_EL0 == 0 {
                return va;
            }
            let perms = UserPerms { write: e & AP_RO == 0, exec: e & UXN == 0, device: e & (7 << 2) == 0 };
            if !f(va, e & ADDR_MASK, perms) {
                return va;
            }
            va += 4096;
        }
    }
    va
}

/// Unmaps a user page (the caller frees the frame) and invalidates its TLB entry.
pub fn unmap(root: u64, va: u64) -> Result<u64, MapError> {
    if va >= USER_END || !va.is_multiple_of(4096) {
        return Err(MapError::BadAddress(va));
    }
    let table = leaf_table(root, va, false)?;
    let p = entry_at(table, index(va, 3));
    // SAFETY: `table` is this space's level-3 table in the direct map.
    let e = unsafe { p.read_volatile() };
    if e & VALID == 0 {
        return Err(MapError::NotMapped(va));
    }
    // SAFETY: as above; then invalidate the page for every ASID (none are used).
    unsafe {
        p.write_volatile(0);
        core::arch::asm!("dsb ishst", "tlbi vaae1is, {}", "dsb ish", "isb", in(reg) va >> 12, options(nostack));
    }
    Ok(e & ADDR_MASK)
}

/// Frees the page tables under `[start, end)` that map nothing any more
/// (after an unmap, or a map rolled back), so a failed or undone call leaves
/// no table frame behind. The level-0 table stays.
pub fn prune(root: u64, start: u64, end: u64) {
    /// Prunes below `table` (at `level`, mapping from `base`); true when it is empty after.
    fn level_prune(table: u64, level: u32, base: u64, start: u64, end: u64, freed: &mut bool) -> bool {
        let span = 1u64 << (39 - 9 * level);
        let mut empty = true;
        for i in 0..512u64 {
            let lo = base + i * span;
            let p = entry_at(table, i);
            // SAFETY: `table` is a page-table frame of this space in the direct map.
            let e = unsafe { p.read_volatile() };
            let inside = lo < end && lo + span > start;
            if inside && level < 3 && e & VALID != 0 && e & TABLE_OR_PAGE != 0 {
                let next = e & ADDR_MASK;
                if level_prune(next, level + 1, lo, start, end, freed) {
                    // SAFETY: as above; the entry is cleared before its table is freed.
                    unsafe { p.write_volatile(0) };
                    let _ = kcore::mm::free_frame(next);
                    *freed = true;
                    continue;
                }
            }
            empty &= e & VALID == 0;
        }
        empty
    }
    if start >= end || end > USER_END {
        return;
    }
    let mut freed = false;
    level_prune(root, 0, 0, start, end, &mut freed);
    if freed {
        // SAFETY: drops every cached walk (the freed tables among them) for all ASIDs; the barriers order it after the cleared entries.
        unsafe { core::arch::asm!("dsb ishst", "tlbi vmalle1is", "dsb ish", "isb", options(nostack)) };
    }
}

/// Frees the tables of a user address space.
pub fn free_space(root: u64) {
    fn free_level(table: u64, level: u32) {
        for i in 0..512 {
            // SAFETY: `table` is a page-table frame of this space in the direct map.
            let e = unsafe { entry_at(table, i).read_volatile() };
            if e & VALID != 0 && e & TABLE_OR_PAGE != 0 && level < 3 {
                let next = e & ADDR_MASK;
                free_level(next, level + 1);
                let _ = kcore::mm::free_frame(next);
            }
        }
    }
    free_level(root, 0);
    let _ = kcore::mm::free_frame(root);
}
