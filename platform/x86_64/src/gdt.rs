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
static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static GDT: spin::Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector, SegmentSelector)> = spin::Once::new();
static STACKS: spin::Once<[(usize, usize); 2]> = spin::Once::new();

unsafe extern "C" {
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

fn ist_range() -> (usize, usize) {
    let lo = core::ptr::addr_of!(IST_STACK) as usize;
    (lo, lo + IST_STACK_SIZE)
}

/// Kernel stacks known to the backtrace walker: the boot stack and the IST stack.
pub fn stack_ranges() -> &'static [(usize, usize)] {
    STACKS.call_once(|| {
        let boot = (core::ptr::addr_of!(boot_stack_bottom) as usize, core::ptr::addr_of!(boot_stack_top) as usize);
        [boot, ist_range()]
    })
}

/// Loads the GDT (kernel code/data + TSS) and reloads the segment registers.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = VirtAddr::new(ist_range().1 as u64);
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives
    // in a static; the TSS descriptor is valid and not yet loaded.
    unsafe {
        CS::set_reg(*code);
        DS::set_reg(*data);
        ES::set_reg(*data);
        SS::set_reg(*data);
        load_tss(*tss_sel);
    }
    let _ = stack_ranges();
}
