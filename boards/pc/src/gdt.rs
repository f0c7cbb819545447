//! Global descriptor tables and task-state segments, one of each per CPU
//! (the TSS holds the CPU's RSP0 and its double-fault IST stack).

use kcore::cpu::MAX_CPUS;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot used by the double-fault and NMI handlers.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// Size of each CPU's double-fault IST stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
#[allow(dead_code)] // only its address is used
struct Stack([u8; IST_STACK_SIZE]);

/// The boot CPU's IST stack (the other CPUs' come from the frame allocator).
static mut IST_STACK: Stack = Stack([0; IST_STACK_SIZE]);
/// Kernel stack used while a user task runs (TSS.RSP0 and the syscall stack).
const USER_KERNEL_STACK_SIZE: usize = 64 * 1024;
static mut USER_KERNEL_STACK: Stack64 = Stack64([0; USER_KERNEL_STACK_SIZE]);
#[repr(align(16))]
#[allow(dead_code)] // only its address is used
struct Stack64([u8; USER_KERNEL_STACK_SIZE]);

/// One task-state segment per CPU, indexed by CPU index. Entry `i` is
/// written only by CPU `i` ([`init_cpu`] before it loads it, [`set_rsp0`]
/// with interrupts off), and read by that CPU's hardware.
static mut TSS: [TaskStateSegment; MAX_CPUS] = [const { TaskStateSegment::new() }; MAX_CPUS];
/// Each CPU's GDT (built once, by that CPU, in [`init_cpu`]).
static GDT: [spin::Once<Selectors>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];
/// The boot CPU's stacks (boot, IST, user-kernel), for the backtrace walker.
static STACKS: spin::Once<[(usize, usize); 3]> = spin::Once::new();
/// Every CPU's stacks once [`publish_stack_ranges`] ran (before the others start).
static ALL_STACKS: spin::Once<&'static [(usize, usize)]> = spin::Once::new();

/// The GDT and the selectors of its entries.
struct Selectors {
    gdt: GlobalDescriptorTable,
    kernel_code: SegmentSelector,
    kernel_data: SegmentSelector,
    tss: SegmentSelector,
}

/// User code selector (ring 3); SYSRET derives it from STAR as user base + 16.
pub const USER_CODE: u16 = 0x23;
/// User data/stack selector (ring 3); SYSRET derives it as user base + 8.
pub const USER_DATA: u16 = 0x1B;
/// Kernel code selector.
pub const KERNEL_CODE: u16 = 0x08;

/// Top of the kernel stack used while user code runs.
pub fn user_kernel_stack_top() -> u64 {
    (core::ptr::addr_of!(USER_KERNEL_STACK) as usize + USER_KERNEL_STACK_SIZE) as u64
}

/// Sets the stack CPU `cpu`, the executing one, switches to on an
/// interrupt from ring 3 (the caller knows its index: `user::cpu_index`).
pub fn set_rsp0(cpu: usize, top: u64) {
    let cpu = cpu.min(kcore::cpu::MAX_CPUS - 1);
    // SAFETY: entry `cpu` belongs to the executing CPU alone (the caller passes its own index), and its caller (the scheduler, via `activate_task`) runs with interrupts disabled before entering user mode, so its hardware cannot read the TSS concurrently and no other CPU writes it.
    unsafe { (*core::ptr::addr_of_mut!(TSS))[cpu].privilege_stack_table[0] = VirtAddr::new(top) };
}

unsafe extern "C" {
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

fn ist_range() -> (usize, usize) {
    let lo = core::ptr::addr_of!(IST_STACK) as usize;
    (lo, lo + IST_STACK_SIZE)
}

/// Kernel stacks known to the backtrace walker: the boot CPU's boot, IST
/// and user-kernel stacks, then each other CPU's.
pub fn stack_ranges() -> &'static [(usize, usize)] {
    if let Some(all) = ALL_STACKS.get() {
        return all;
    }
    boot_stack_ranges()
}

fn boot_stack_ranges() -> &'static [(usize, usize)] {
    STACKS.call_once(|| {
        let boot = (core::ptr::addr_of!(boot_stack_bottom) as usize, core::ptr::addr_of!(boot_stack_top) as usize);
        let user = user_kernel_stack_top() as usize;
        [boot, ist_range(), (user - USER_KERNEL_STACK_SIZE, user)]
    })
}

/// Adds the other CPUs' stacks to [`stack_ranges`] (once, before any of
/// them starts; the table is never freed).
/// Without heap room the walker keeps the boot CPU's stacks only (logged).
pub fn publish_stack_ranges(others: &[(usize, usize)]) {
    let mut all = alloc::vec::Vec::new();
    if all.try_reserve_exact(3 + others.len()).is_err() {
        log::warn!("smp: no heap for the stack table; backtraces on the other CPUs stop at their stacks");
        return;
    }
    all.extend_from_slice(boot_stack_ranges());
    all.extend_from_slice(others);
    ALL_STACKS.call_once(|| all.leak());
}

/// Loads the boot CPU's GDT and TSS (see [`init_cpu`]).
pub fn init() {
    init_cpu(0, ist_range().1 as u64, user_kernel_stack_top());
    let _ = stack_ranges();
}

/// Builds and loads CPU `cpu`'s GDT (kernel code/data, user data/code, its
/// TSS with the double-fault stack `ist_top` and RSP0 `rsp0`) and reloads
/// the segment registers. Runs on CPU `cpu`, once, interrupts off.
pub fn init_cpu(cpu: usize, ist_top: u64, rsp0: u64) {
    // SAFETY: CPU `cpu` runs this once at its start, interrupts off, before it loads the TSS; no other CPU touches entry `cpu` (see `TSS`).
    let tss: &'static TaskStateSegment = unsafe {
        let tss = &mut (*core::ptr::addr_of_mut!(TSS))[cpu];
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = VirtAddr::new(ist_top);
        tss.privilege_stack_table[0] = VirtAddr::new(rsp0);
        tss
    };
    let s = GDT[cpu].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        // Order fixed by SYSRET: user data at base + 8, user code at base + 16.
        let _user_data = gdt.append(Descriptor::user_data_segment());
        let _user_code = gdt.append(Descriptor::user_code_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        Selectors { gdt, kernel_code, kernel_data, tss }
    });
    s.gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a static; the TSS descriptor is valid and not yet loaded (each CPU loads its own TSS once).
    unsafe {
        CS::set_reg(s.kernel_code);
        DS::set_reg(s.kernel_data);
        ES::set_reg(s.kernel_data);
        SS::set_reg(s.kernel_data);
        load_tss(s.tss);
    }
}
