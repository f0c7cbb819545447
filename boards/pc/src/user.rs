//! Ring 3: user address spaces, entering user mode, the `syscall` entry, and
//! leaving user mode on `exit` or a fault (Intel SDM Vol. 3A §5.8.8 SYSCALL/SYSRET,
//! §6.14 64-bit interrupt handling).
//!
//! A user address space is a PML4 whose upper half (entries 256–511) is copied
//! from the kernel's, so kernel code and the direct map stay mapped while user
//! code runs; user pages carry the USER bit and NX unless executable.

use core::sync::atomic::{AtomicU64, Ordering};
use kcore::cpu::MAX_CPUS;
use kcore::task::SyscallOutcome;
use kcore::{MapError, UserExit, UserPerms};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, KernelGsBase, LStar, SFMask};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::paging::mapper::{CleanUp, MapToError};
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Per-CPU data reached through GS during `syscall` entry: kernel stack
/// top (`gs:[0]`), scratch (`gs:[8]`). One cache line each, so CPUs do not
/// share lines.
#[repr(C, align(64))]
struct PerCpu {
    kernel_rsp: u64,
    user_rsp_scratch: u64,
}

/// One block per CPU, indexed by CPU index. While kernel code runs, CPU
/// `i`'s IA32_KERNEL_GS_BASE holds the address of block `i` (the `syscall`
/// stub swaps it into GS only between its first and fifth instruction, with
/// interrupts masked), which is how [`cpu_index`] knows the CPU. Block `i`
/// is written only by CPU `i`: `kernel_rsp` by [`activate_task`] with
/// interrupts off, the scratch by its `syscall` stub.
static mut PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu { kernel_rsp: 0, user_rsp_scratch: 0 } }; MAX_CPUS];

/// Index of the executing CPU: which `PERCPU` block its
/// IA32_KERNEL_GS_BASE names (0 before [`init_syscalls`] ran on the boot
/// CPU, when the MSR is still 0). One RDMSR, no memory access.
pub fn cpu_index() -> usize {
    let base = core::ptr::addr_of!(PERCPU) as u64;
    let at = KernelGsBase::read().as_u64();
    let index = at.wrapping_sub(base) / core::mem::size_of::<PerCpu>() as u64;
    if at < base || index >= MAX_CPUS as u64 {
        return 0;
    }
    index as usize
}
/// CR3 of the kernel address space, restored after a task.
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);

/// Registers saved by the `syscall` entry stub, lowest address first.
#[repr(C)]
struct SyscallFrame {
    rax: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    r10: u64,
    r8: u64,
    r9: u64,
    r11: u64,
    rcx: u64,
    user_rsp: u64,
}

core::arch::global_asm!(
    r#"
.section .text.user_entry, "ax"
.global x86_syscall_entry
x86_syscall_entry:
    swapgs
    mov gs:[8], rsp
    mov rsp, gs:[0]
    push qword ptr gs:[8]
    swapgs
    push rcx
    push r11
    push r9
    push r8
    push r10
    push rdx
    push rsi
    push rdi
    push rax
    mov rdi, rsp
    cld
    call x86_syscall
    pop rax
    pop rdi
    pop rsi
    pop rdx
    pop r10
    pop r8
    pop r9
    pop r11
    pop rcx
    pop rsp
    xor edi, edi
    xor esi, esi
    xor edx, edx
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    sysretq

/* x86_enter_user(entry = rdi, user_sp = rsi): iretq to ring 3 with clean registers. */
.global x86_enter_user
x86_enter_user:
    push {user_data}
    push rsi
    push 0x202
    push {user_code}
    push rdi
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    iretq

/* x86_context_switch(save = rdi, load = rsi): callee-saved registers on the stack. */
.global x86_context_switch
x86_context_switch:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
"#,
    user_data = const crate::gdt::USER_DATA as u64,
    user_code = const crate::gdt::USER_CODE as u64,
);

unsafe extern "C" {
    fn x86_syscall_entry();
    fn x86_enter_user(entry: u64, user_sp: u64) -> !;
    fn x86_context_switch(save: *mut u64, load: u64);
}

/// Enables `syscall`/`sysret` on the boot CPU (see [`init_syscalls_cpu`]).
pub fn init_syscalls() {
    init_syscalls_cpu(0);
}

/// Enables `syscall`/`sysret` on the executing CPU, CPU `cpu`, points them
/// at the entry stub and gives it its `PERCPU` block (which also makes
/// [`cpu_index`] answer `cpu` on it).
pub fn init_syscalls_cpu(cpu: usize) {
    // SAFETY: EFER.SCE only enables the SYSCALL instruction; NXE and LME stay set.
    unsafe { Efer::update(|f| *f |= EferFlags::SYSTEM_CALL_EXTENSIONS) };
    LStar::write(VirtAddr::new(x86_syscall_entry as *const () as u64));
    // Interrupts, traps, direction and alignment checks are off on entry.
    SFMask::write(RFlags::INTERRUPT_FLAG | RFlags::TRAP_FLAG | RFlags::DIRECTION_FLAG | RFlags::ALIGNMENT_CHECK);
    let star = (u64::from(crate::gdt::USER_DATA - 8) << 48) | (u64::from(crate::gdt::KERNEL_CODE) << 32);
    // SAFETY: STAR holds the selector bases SYSCALL/SYSRET derive CS/SS from; the GDT layout (kernel code, kernel data, user data, user code) matches them.
    unsafe { x86_64::registers::model_specific::Msr::new(0xC000_0081).write(star) };
    let block = core::ptr::addr_of!(PERCPU) as u64 + (cpu.min(MAX_CPUS - 1) * core::mem::size_of::<PerCpu>()) as u64;
    KernelGsBase::write(VirtAddr::new(block));
}

#[unsafe(no_mangle)]
extern "C" fn x86_syscall(frame: &mut SyscallFrame) {
    let args = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8];
    match kcore::task::syscall(frame.rax, args) {
        SyscallOutcome::Return(v) => frame.rax = v,
        SyscallOutcome::Exit(code) => leave(UserExit::Exited(code)),
    }
}

/// Ends the running task (exit or fault); the scheduler takes over.
pub fn leave(exit: UserExit) -> ! {
    kcore::task::exit_current(exit)
}

/// Called by the exception dispatcher for a fault taken in ring 3.
pub fn kill(reason: &'static str, pc: u64, addr: u64) -> ! {
    leave(UserExit::Killed { reason, pc, addr })
}

/// Builds a new task's kernel stack: six zeroed callee-saved slots for
/// `x86_context_switch` to pop, then `start` as its return address, with the
/// stack 16-byte aligned minus 8 at `start`'s entry as the ABI expects.
pub fn init_task_stack(top: u64, start: extern "C" fn() -> !) -> u64 {
    let top = top & !0xF;
    let slots = (top - 8 * 8) as *mut u64;
    // SAFETY: `top` is the end of a fresh kernel stack owned by the new task; the 8 slots written lie inside it.
    unsafe {
        for i in 0..6 {
            slots.add(i).write(0);
        }
        slots.add(6).write(start as *const () as u64);
        slots.add(7).write(0); // fake return address of `start`
    }
    slots as u64
}

/// Saves the current kernel context to `*save` and resumes `load`.
///
/// # Safety
/// As [`kcore::platform::TaskSwitch::context_switch`]: `save` writable while the context
/// may resume, `load` a live saved stack pointer.
pub unsafe fn context_switch(save: *mut u64, load: u64) {
    // SAFETY: upheld by the caller (see above).
    unsafe { x86_context_switch(save, load) }
}

/// Switches to a task's page tables and makes its kernel stack the one used
/// for interrupts and syscalls from ring 3.
pub fn activate_task(root: u64, kernel_stack_top: u64) {
    if KERNEL_CR3.load(Ordering::Relaxed) == 0 {
        KERNEL_CR3.store(Cr3::read().0.start_address().as_u64(), Ordering::Relaxed);
    }
    crate::gdt::set_rsp0(cpu_index(), kernel_stack_top);
    let cpu = cpu_index();
    // SAFETY: block `cpu` belongs to the executing CPU alone (see `PERCPU`), interrupts are off (the scheduler disables them), and its syscall stub reads this only after SWAPGS in a later syscall on this CPU.
    unsafe { (*core::ptr::addr_of_mut!(PERCPU))[cpu].kernel_rsp = kernel_stack_top };
    // SAFETY: `root` is a user PML4 built by `new_space`, whose upper half is the kernel's, so this code stays mapped after the switch.
    unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(root)), Cr3Flags::empty()) };
}

/// Back to the kernel's page tables.
pub fn activate_kernel() {
    let k = KERNEL_CR3.load(Ordering::Relaxed);
    if k != 0 {
        // SAFETY: the kernel's own PML4, saved before the first task ran.
        unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(k)), Cr3Flags::empty()) };
    }
}

/// Enters ring 3; never returns (the task's kernel stack is current).
pub fn enter_user(entry: u64, user_sp: u64) -> ! {
    // SAFETY: the task's address space is active (`activate_task`), entry and stack are mapped for ring 3 in it.
    unsafe { x86_enter_user(entry, user_sp) }
}

struct KernelFrames;

// SAFETY: every frame returned is freshly allocated, zeroed and unused elsewhere.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        kcore::mm::alloc_frame().map(|pa| PhysFrame::containing_address(PhysAddr::new(pa)))
    }
}

/// Gives back the user page tables `clean_up_addr_range` found empty and
/// unlinked (nothing else refers to them).
impl FrameDeallocator<Size4KiB> for KernelFrames {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        let _ = kcore::mm::free_frame(frame.start_address().as_u64());
    }
}

fn with_space<R>(root: u64, f: impl FnOnce(&mut OffsetPageTable<'static>) -> R) -> R {
    let va = kcore::mm::phys_to_virt(root);
    // SAFETY: `root` is a PML4 frame of a user space (from `new_space`), reached through the direct map; callers do not run concurrently on one space.
    let mut t = unsafe { OffsetPageTable::new(&mut *(va as *mut PageTable), VirtAddr::new(crate::DIRECT_MAP)) };
    f(&mut t)
}

/// A new user PML4 sharing the kernel half.
pub fn new_space() -> Result<u64, MapError> {
    let root = kcore::mm::alloc_frame().ok_or(MapError::OutOfFrames)?;
    let kernel = Cr3::read().0.start_address().as_u64();
    let (src, dst) = (kcore::mm::phys_to_virt(kernel) as *const u64, kcore::mm::phys_to_virt(root) as *mut u64);
    for i in 256..512 {
        // SAFETY: both frames are page tables in the direct map; copying entries.
        unsafe { dst.add(i).write(src.add(i).read()) };
    }
    Ok(root)
}

/// Maps a user page.
pub fn map(root: u64, va: u64, pa: u64, perms: UserPerms) -> Result<(), MapError> {
    if va >= 0x0000_8000_0000_0000 || !va.is_multiple_of(4096) {
        return Err(MapError::BadAddress(va));
    }
    let page: Page<Size4KiB> = Page::containing_address(VirtAddr::new(va));
    let mut flags = PageTableFlags::PRESENT | PageTableFlags::USER_ACCESSIBLE;
    if perms.write {
        flags |= PageTableFlags::WRITABLE;
    }
    if !perms.exec || perms.device {
        flags |= PageTableFlags::NO_EXECUTE;
    }
    if perms.device {
        flags |= PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH;
    }
    let parents = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::USER_ACCESSIBLE;
    let frame = PhysFrame::containing_address(PhysAddr::new(pa));
    with_space(root, |t| {
        // SAFETY: the page is in the user half of a space no CPU runs right now (or the current task's own space); the frame belongs to the task.
        match unsafe { t.map_to_with_table_flags(page, frame, flags, parents, &mut KernelFrames) } {
            Ok(flush) => {
                flush.ignore();
                Ok(())
            }
            Err(MapToError::PageAlreadyMapped(_)) => Err(MapError::AlreadyMapped(va)),
            Err(MapToError::ParentEntryHugePage) => Err(MapError::InsideHugePage(va)),
            Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
        }
    })
}

/// The last-level table (its physical address) that holds user address
/// `va` in the space rooted at `root`: four reads at most, no table built.
/// `None` where a level is not present (or is a huge page: user space has none).
fn leaf_table(root: u64, va: u64) -> Option<u64> {
    let mut table = root;
    for level in [4u32, 3, 2] {
        let i = (va >> (12 + 9 * (level - 1))) & 0x1FF;
        // SAFETY: `table` is a page-table frame of this user space (the PML4 from `new_space`, or a table an entry of it names) in the direct map; `i` < 512.
        let e = unsafe { ((kcore::mm::phys_to_virt(table) + i * 8) as *const u64).read_volatile() };
        let flags = PageTableFlags::from_bits_truncate(e);
        if !flags.contains(PageTableFlags::PRESENT) || flags.contains(PageTableFlags::HUGE_PAGE) {
            return None;
        }
        table = e & 0x000F_FFFF_FFFF_F000;
    }
    Some(table)
}

/// A user leaf entry's rights.
fn user_perms(flags: PageTableFlags) -> UserPerms {
    UserPerms {
        write: flags.contains(PageTableFlags::WRITABLE),
        exec: !flags.contains(PageTableFlags::NO_EXECUTE),
        device: flags.contains(PageTableFlags::NO_CACHE),
    }
}

/// Frame and rights of a user page: a walk of the four levels by hand (on
/// every syscall that copies arguments, so it is kept to four loads).
pub fn translate(root: u64, va: u64) -> Option<(u64, UserPerms)> {
    if va >= 0x0000_8000_0000_0000 {
        return None;
    }
    let table = leaf_table(root, va)?;
    // SAFETY: `table` is a last-level table of this user space in the direct map (from `leaf_table`); the index is < 512.
    let e = unsafe { ((kcore::mm::phys_to_virt(table) + ((va >> 12) & 0x1FF) * 8) as *const u64).read_volatile() };
    let flags = PageTableFlags::from_bits_truncate(e);
    if !flags.contains(PageTableFlags::PRESENT | PageTableFlags::USER_ACCESSIBLE) {
        return None;
    }
    Some(((e & 0x000F_FFFF_FFFF_F000) + (va & 0xFFF), user_perms(flags)))
}

/// Hands `f(va, pa, pages, perms)` the mapped user pages from `va` up to
/// `end` as runs of contiguous frames ([`kcore::UserRuns`]) while it answers
/// true, reading each last-level table once; returns where it stopped (see
/// `Platform::user_walk`).
pub fn walk(root: u64, mut va: u64, end: u64, f: &mut dyn FnMut(u64, u64, u64, UserPerms) -> bool) -> u64 {
    let end = end.min(0x0000_8000_0000_0000);
    let mut runs = kcore::UserRuns::new(f);
    'tables: while va < end {
        // The page table (level 1) holding `va`: user space has no huge pages.
        let Some(table) = leaf_table(root, va) else { break };
        for i in (va >> 12) & 0x1FF..512 {
            if va >= end {
                break 'tables;
            }
            // SAFETY: `table` is a last-level table of this user space in the direct map (from `leaf_table`); `i` < 512.
            let e = unsafe { ((kcore::mm::phys_to_virt(table) + i * 8) as *const u64).read_volatile() };
            let flags = PageTableFlags::from_bits_truncate(e);
            if !flags.contains(PageTableFlags::PRESENT | PageTableFlags::USER_ACCESSIBLE) {
                break 'tables;
            }
            if let Err(at) = runs.add(va, e & 0x000F_FFFF_FFFF_F000, 1, user_perms(flags)) {
                return at;
            }
            va += 4096;
        }
    }
    runs.finish().err().unwrap_or(va)
}

/// Unmaps a user page (the caller frees the frame) and flushes its TLB entry.
pub fn unmap(root: u64, va: u64) -> Result<u64, MapError> {
    if va >= 0x0000_8000_0000_0000 || !va.is_multiple_of(4096) {
        return Err(MapError::BadAddress(va));
    }
    let page: Page<Size4KiB> = Page::containing_address(VirtAddr::new(va));
    with_space(root, |t| match t.unmap(page) {
        Ok((frame, flush)) => {
            // Flushing is harmless when `root` is not the active space.
            flush.flush();
            Ok(frame.start_address().as_u64())
        }
        Err(_) => Err(MapError::NotMapped(va)),
    })
}

/// Frees the page tables under `[start, end)` that map nothing any more
/// (after an unmap, or a map rolled back), so a failed or undone call leaves
/// no table frame behind.
pub fn prune(root: u64, start: u64, end: u64) {
    if start >= end || end > 0x0000_8000_0000_0000 {
        return;
    }
    let first = Page::<Size4KiB>::containing_address(VirtAddr::new(start));
    let last = Page::<Size4KiB>::containing_address(VirtAddr::new(end - 1));
    with_space(root, |t| {
        // SAFETY: the range is in the user half, whose tables belong to this space alone (built by `map`, each used once); a table is freed only once it holds no entry.
        unsafe { t.clean_up_addr_range(Page::range_inclusive(first, last), &mut KernelFrames) };
    });
    // The paging-structure caches may hold the freed tables: reloading CR3
    // drops them (no PCIDs, no global user pages).
    x86_64::instructions::tlb::flush_all();
}

/// Frees the user half's page tables and the PML4.
pub fn free_space(root: u64) {
    fn free_level(table_pa: u64, level: u8, range: core::ops::Range<usize>) {
        let table = kcore::mm::phys_to_virt(table_pa) as *const u64;
        for i in range {
            // SAFETY: `table_pa` is a page-table frame of this user space in the direct map.
            let e = unsafe { table.add(i).read() };
            if e & 1 == 0 || e & 0x80 != 0 {
                continue; // not present, or a huge page (never used for user space)
            }
            let next = e & 0x000F_FFFF_FFFF_F000;
            if level > 1 {
                free_level(next, level - 1, 0..512);
                let _ = kcore::mm::free_frame(next);
            }
        }
    }
    free_level(root, 4, 0..256);
    let _ = kcore::mm::free_frame(root);
}
