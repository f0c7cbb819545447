//! Global descriptor table and task-state segment (IST stack for double faults).

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot used by the double-fault and NMI handlers.
pub const DOUBLE_FAULT_IST: u16 = 0;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
#[allow(dead_code)] // only its address is used
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACK: Stack = Stack([0; IST_STACK_SIZE]);
/// Kernel stack used while a user task runs (TSS.RSP0 and the syscall stack).
const USER_KERNEL_STACK_SIZE: usize = 64 * 1024;
static mut USER_KERNEL_STACK: Stack64 = Stack64([0; USER_KERNEL_STACK_SIZE]);
#[repr(align(16))]
#[allow(dead_code)] // only its address is used
struct Stack64([u8; USER_KERNEL_STACK_SIZE]);

/// The task-state segment; mutable only through [`set_rsp0`].
static mut TSS: TaskStateSegment = TaskStateSegment::new();
static GDT: spin::Once<Selectors> = spin::Once::new();
static STACKS: spin::Once<[(usize, usize); 3]> = spin::Once::new();

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

/// Sets the stack the CPU switches to on an interrupt from ring 3.
pub fn set_rsp0(top: u64) {
    // SAFETY: single CPU; called with interrupts disabled before entering user mode, so the CPU cannot read the TSS concurrently.
    unsafe { (*core::ptr::addr_of_mut!(TSS)).privilege_stack_table[0] = VirtAddr::new(top) };
}

unsafe extern "C" {
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

fn ist_range() -> (usize, usize) {
    let lo = core::ptr::addr_of!(IST_STACK) as usize;
    (lo, lo + IST_STACK_SIZE)
}

/// Kernel stacks known to the backtrace walker: boot, IST and user-kernel stacks.
pub fn stack_ranges() -> &'static [(usize, usize)] {
    STACKS.call_once(|| {
        let boot = (core::ptr::addr_of!(boot_stack_bottom) as usize, core::ptr::addr_of!(boot_stack_top) as usize);
        let user = user_kernel_stack_top() as usize;
        [boot, ist_range(), (user - USER_KERNEL_STACK_SIZE, user)]
    })
}

/// Loads the GDT (kernel code/data, user data/code, TSS) and reloads the segment registers.
pub fn init() {
    // SAFETY: called once at boot before interrupts are enabled; nothing else holds a reference to the TSS yet.
    let tss: &'static TaskStateSegment = unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = VirtAddr::new(ist_range().1 as u64);
        tss.privilege_stack_table[0] = VirtAddr::new(user_kernel_stack_top());
        tss
    };
    let s = GDT.call_once(|| {
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
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a static; the TSS descriptor is valid and not yet loaded.
    unsafe {
        CS::set_reg(s.kernel_code);
        DS::set_reg(s.kernel_data);
        ES::set_reg(s.kernel_data);
        SS::set_reg(s.kernel_data);
        load_tss(s.tss);
    }
    let _ = stack_ranges();
}
