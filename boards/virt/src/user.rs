//! EL0: user address spaces (TTBR0_EL1), entering EL0, the SVC syscall path and
//! leaving EL0 on `exit` or a fault (ARM ARM D1.3 "Exception levels").
//!
//! User space is the lower VA range, translated through TTBR0_EL1; the kernel
//! keeps running from TTBR1, so switching TTBR0 needs no kernel mappings in the
//! user tables. Without ASIDs, every TTBR0 switch invalidates the EL1&0 TLB.
//! The tables are io-pgtable's, in the CPU format
//! ([`io_pgtable::formats::ArmCpu`]: user leaves have AP\[1\] and nG set,
//! PXN always); the barriers and TLB maintenance around each change are here.

use crate::paging::{map_error, CpuTables, FORMAT};
use core::sync::atomic::{AtomicU64, Ordering};
use io_pgtable::formats::ArmCpu;
use io_pgtable::{PageTable, Perms};
use kcore::task::SyscallOutcome;
use kcore::{MapError, UserExit, UserPerms};

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

/// Per CPU, the kernel stack of the task running there (where its traps from EL0 land).
static TASK_KSTACK_TOP: [kcore::cpu::CachePadded<AtomicU64>; kcore::cpu::MAX_CPUS] =
    [const { kcore::cpu::CachePadded::new(AtomicU64::new(0)) }; kcore::cpu::MAX_CPUS];

/// Serves an SVC from EL0 on its saved general registers x0–x30 (the trap
/// frame's): number in x8, arguments x0–x4, result in x0.
pub fn syscall(x: &mut [u64; 31]) {
    let args = [x[0], x[1], x[2], x[3], x[4]];
    match kcore::task::syscall(x[8], args) {
        SyscallOutcome::Return(v) => x[0] = v,
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
/// As [`kcore::platform::TaskSwitch::context_switch`]: `save` writable while the context
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
    TASK_KSTACK_TOP[crate::smp::index()].store(kernel_stack_top, Ordering::Relaxed);
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
    unsafe { arm_enter_user(entry, user_sp, TASK_KSTACK_TOP[crate::smp::index()].load(Ordering::Relaxed)) }
}

/// A user space, taken over by its root for one call.
fn space(root: u64) -> PageTable<ArmCpu> {
    PageTable::from_root(FORMAT, root)
}

/// The engine's rights for a user page: EL0 access (non-global), device
/// memory never executable.
fn perms_of(p: UserPerms) -> Perms {
    let mut perms = Perms::USER | Perms::READ;
    perms.set(Perms::WRITE, p.write);
    if !p.device {
        perms |= Perms::CACHE;
        perms.set(Perms::EXEC, p.exec);
    }
    perms
}

fn user_perms(p: Perms) -> UserPerms {
    UserPerms { write: p.contains(Perms::WRITE), exec: p.contains(Perms::EXEC), device: !p.contains(Perms::CACHE) }
}

fn check_va(va: u64) -> Result<(), MapError> {
    if va >= USER_END || !va.is_multiple_of(4096) {
        return Err(MapError::BadAddress(va));
    }
    Ok(())
}

/// A new, empty user address space (a level-0 table).
pub fn new_space() -> Result<u64, MapError> {
    PageTable::new(FORMAT, &mut CpuTables).map(|t| t.root()).map_err(|_| MapError::OutOfFrames)
}

/// Maps a user page.
pub fn map(root: u64, va: u64, pa: u64, perms: UserPerms) -> Result<(), MapError> {
    check_va(va)?;
    let done = space(root).map(&mut CpuTables, va, pa, 4096, perms_of(perms)).map_err(|e| map_error(e, va))?;
    // The entry was invalid (no TLB entry to invalidate): publish the store.
    // SAFETY: barriers only.
    unsafe { core::arch::asm!("dsb ishst", "isb", options(nostack)) };
    done.release(&mut CpuTables); // a map frees no table
    Ok(())
}

/// Frame and rights of a user page.
pub fn translate(root: u64, va: u64) -> Option<(u64, UserPerms)> {
    if va >= USER_END {
        return None;
    }
    let m = space(root).lookup(&CpuTables, va).filter(|m| m.perms.contains(Perms::USER))?;
    Some((m.pa + (va - m.iova), user_perms(m.perms)))
}

/// Hands `f(va, pa, pages, perms)` the mapped user pages from `va` up to
/// `end` as runs of contiguous frames ([`kcore::UserRuns`]) while it answers
/// true, reading each level-3 table once; returns where it stopped (see
/// `Platform::user_walk`): `end`, the first page not mapped for EL0, or the
/// start of the run `f` refused.
pub fn walk(root: u64, va: u64, end: u64, f: &mut dyn FnMut(u64, u64, u64, UserPerms) -> bool) -> u64 {
    let end = end.min(USER_END);
    let mut next = va;
    if next >= end {
        return next;
    }
    let mut runs = kcore::UserRuns::new(f);
    let mut refused = None;
    let _ = space(root).walk(&CpuTables, va, end, &mut |m| {
        // A hole before this leaf, or a leaf EL0 may not use: stop at `next`.
        if m.iova > next || !m.perms.contains(Perms::USER) {
            return false;
        }
        // The part of the leaf in [next, end).
        let upto = (m.iova + m.size).min(end);
        let pages = (upto - next) / 4096;
        if let Err(at) = runs.add(next, m.pa + (next - m.iova), pages, user_perms(m.perms)) {
            refused = Some(at);
            return false;
        }
        next = upto;
        true
    });
    if let Some(at) = refused {
        return at;
    }
    runs.finish().err().unwrap_or(next)
}

/// Unmaps a user page (the caller frees the frame) and invalidates its TLB entry.
pub fn unmap(root: u64, va: u64) -> Result<u64, MapError> {
    check_va(va)?;
    let mut space = space(root);
    let m = space.lookup(&CpuTables, va).ok_or(MapError::NotMapped(va))?;
    if m.size > 4096 {
        return Err(MapError::InsideHugePage(va));
    }
    let (_, done) = space.unmap(&mut CpuTables, va, 4096).map_err(|e| map_error(e, va))?;
    // SAFETY: barriers and an invalidation of the page for every ASID (none are used), after the cleared entry.
    unsafe { core::arch::asm!("dsb ishst", "tlbi vaae1is, {}", "dsb ish", "isb", in(reg) va >> 12, options(nostack)) };
    done.release(&mut CpuTables); // after the invalidation (a 4 KiB unmap frees no table)
    Ok(m.pa)
}

/// Frees the page tables under `[start, end)` that map nothing any more
/// (after an unmap, or a map rolled back), so a failed or undone call leaves
/// no table frame behind. The level-0 table stays. Needs no heap.
pub fn prune(root: u64, start: u64, end: u64) {
    if start >= end || end > USER_END {
        return;
    }
    let freed = space(root).prune(&mut CpuTables, start, end);
    if !freed.is_empty() {
        // The walk caches may hold the unlinked tables: drop them before the frames are reused.
        // SAFETY: drops every cached walk for all ASIDs; the barriers order it after the cleared entries.
        unsafe { core::arch::asm!("dsb ishst", "tlbi vmalle1is", "dsb ish", "isb", options(nostack)) };
    }
    freed.release(&mut CpuTables);
}

/// Frees the tables of a user address space (not running: every TTBR0
/// switch invalidates the TLB).
pub fn free_space(root: u64) {
    space(root).destroy(&mut CpuTables);
}
