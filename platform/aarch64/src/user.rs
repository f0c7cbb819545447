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

/// Kernel stack pointer saved by `arm_enter_user`, restored by `arm_leave_user`.
static mut KERNEL_SP: u64 = 0;
static EXIT: spin::Mutex<Option<UserExit>> = spin::Mutex::new(None);
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
/* arm_enter_user(entry = x0, user_sp = x1, kernel_stack_top = x2) */
.global arm_enter_user
arm_enter_user:
    stp x19, x20, [sp, #-96]!
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    mov x9, sp
    adrp x10, {kernel_sp}
    str x9, [x10, :lo12:{kernel_sp}]
    mov sp, x2
    msr sp_el0, x1
    msr elr_el1, x0
    msr spsr_el1, xzr               /* EL0t, interrupts unmasked */
    mov x0, xzr
    mov x1, xzr
    mov x2, xzr
    mov x9, xzr
    mov x10, xzr
    mov x29, xzr
    mov x30, xzr
    eret

/* arm_leave_user(value = x0): back on the kernel stack saved by arm_enter_user. */
.global arm_leave_user
arm_leave_user:
    adrp x10, {kernel_sp}
    ldr x9, [x10, :lo12:{kernel_sp}]
    mov sp, x9
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp x19, x20, [sp], #96
    ret
"#,
    kernel_sp = sym KERNEL_SP,
);

unsafe extern "C" {
    fn arm_enter_user(entry: u64, user_sp: u64, kernel_stack_top: u64) -> u64;
    fn arm_leave_user(value: u64) -> !;
}

/// Serves an SVC from EL0: number in x8, arguments x0–x4, result in x0.
pub fn syscall(frame: &mut crate::exceptions::TrapFrame) {
    let args = [frame.x[0], frame.x[1], frame.x[2], frame.x[3], frame.x[4]];
    match kcore::task::syscall(frame.x[8], args) {
        SyscallOutcome::Return(v) => frame.x[0] = v,
        SyscallOutcome::Exit(code) => leave(UserExit::Exited(code)),
    }
}

/// Ends the running task and resumes the kernel after `run`.
pub fn leave(exit: UserExit) -> ! {
    *EXIT.lock() = Some(exit);
    // SAFETY: called only from an exception taken at EL0, so `arm_enter_user`
    // saved a valid kernel stack to return to.
    unsafe { arm_leave_user(0) }
}

fn set_ttbr0(value: u64) {
    // SAFETY: TTBR0 only translates the lower range, which the kernel does not
    // use after boot; the TLB is invalidated because user pages are non-global
    // without ASIDs.
    unsafe {
        core::arch::asm!("msr ttbr0_el1, {}", "isb", "tlbi vmalle1", "dsb nsh", "isb", in(reg) value, options(nostack))
    };
}

/// Runs user code until it exits or is killed.
pub fn run(root: u64, entry: u64, stack_top: u64) -> UserExit {
    let old: u64;
    // SAFETY: reading TTBR0_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) old, options(nomem, nostack)) };
    KERNEL_TTBR0.store(old, Ordering::Relaxed);
    // SAFETY: masks IRQs while switching; they are unmasked again in EL0 by SPSR = 0.
    unsafe { core::arch::asm!("msr daifset, #2", options(nomem, nostack)) };
    *EXIT.lock() = None;
    set_ttbr0(root);
    // SAFETY: entry and stack are mapped for EL0 in `root`; the call returns only
    // through arm_leave_user, which restores the callee-saved registers.
    unsafe { arm_enter_user(entry, stack_top, user_kernel_stack().1 as u64) };
    set_ttbr0(old);
    // SAFETY: unmasking IRQs at EL1 after the task.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nomem, nostack)) };
    EXIT.lock().take().unwrap_or(UserExit::Killed { reason: "lost exit status", pc: 0, addr: 0 })
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
