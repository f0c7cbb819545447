//! Exception and interrupt entry: assembly stubs that build a [`TrapFrame`],
//! the IDT (x86_64 crate), and the Rust dispatcher with readable reports.
//!
//! Vectors: 0–31 CPU exceptions (Intel SDM Vol. 3A §6.15), 32 the local APIC
//! timer, 255 the APIC spurious vector. The double fault runs on its own IST stack.

use core::sync::atomic::{AtomicU64, Ordering};
use kcore::console::print_unlocked;
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 32;
/// Vector of APIC spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 255;
/// Vectors for device MSIs routed to user tasks.
pub const DEVICE_VECTORS: core::ops::RangeInclusive<u8> = 64..=71;
/// Vector of IOMMU fault-event interrupts.
pub const IOMMU_FAULT_VECTOR: u8 = 72;
/// IOMMU fault-event interrupts received.
pub static IOMMU_FAULT_IRQS: AtomicU64 = AtomicU64::new(0);
/// Frequency of the periodic timer.
pub const TIMER_HZ: u32 = 100;

/// Timer interrupts handled on CPU 0 (the kernel's tick clock).
pub static TICKS: AtomicU64 = AtomicU64::new(0);
/// Breakpoint exceptions handled.
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

/// Registers saved by the entry stubs, lowest address first.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number pushed by the stub.
    pub vector: u64,
    /// CPU error code, or 0 for vectors without one.
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Entry stubs: push a dummy error code where the CPU pushes none, the vector,
// then all general registers, and call `x86_trap(&mut TrapFrame)`. The stack is
// 16-byte aligned at the call (22 quadwords pushed after the CPU's alignment).
core::arch::global_asm!(
    r#"
.section .text.isr, "ax"
isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call x86_trap
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
isr_0:
    push 0
    push 0
    jmp isr_common
isr_1:
    push 0
    push 1
    jmp isr_common
isr_2:
    push 0
    push 2
    jmp isr_common
isr_3:
    push 0
    push 3
    jmp isr_common
isr_4:
    push 0
    push 4
    jmp isr_common
isr_5:
    push 0
    push 5
    jmp isr_common
isr_6:
    push 0
    push 6
    jmp isr_common
isr_7:
    push 0
    push 7
    jmp isr_common
isr_8:
    push 8
    jmp isr_common
isr_9:
    push 0
    push 9
    jmp isr_common
isr_10:
    push 10
    jmp isr_common
isr_11:
    push 11
    jmp isr_common
isr_12:
    push 12
    jmp isr_common
isr_13:
    push 13
    jmp isr_common
isr_14:
    push 14
    jmp isr_common
isr_15:
    push 0
    push 15
    jmp isr_common
isr_16:
    push 0
    push 16
    jmp isr_common
isr_17:
    push 17
    jmp isr_common
isr_18:
    push 0
    push 18
    jmp isr_common
isr_19:
    push 0
    push 19
    jmp isr_common
isr_20:
    push 0
    push 20
    jmp isr_common
isr_21:
    push 21
    jmp isr_common
isr_22:
    push 0
    push 22
    jmp isr_common
isr_23:
    push 0
    push 23
    jmp isr_common
isr_24:
    push 0
    push 24
    jmp isr_common
isr_25:
    push 0
    push 25
    jmp isr_common
isr_26:
    push 0
    push 26
    jmp isr_common
isr_27:
    push 0
    push 27
    jmp isr_common
isr_28:
    push 0
    push 28
    jmp isr_common
isr_29:
    push 29
    jmp isr_common
isr_30:
    push 30
    jmp isr_common
isr_31:
    push 0
    push 31
    jmp isr_common
isr_32:
    push 0
    push 32
    jmp isr_common
isr_255:
    push 0
    push 255
    jmp isr_common
isr_64:
    push 0
    push 64
    jmp isr_common
isr_65:
    push 0
    push 65
    jmp isr_common
isr_66:
    push 0
    push 66
    jmp isr_common
isr_67:
    push 0
    push 67
    jmp isr_common
isr_68:
    push 0
    push 68
    jmp isr_common
isr_69:
    push 0
    push 69
    jmp isr_common
isr_70:
    push 0
    push 70
    jmp isr_common
isr_71:
    push 0
    push 71
    jmp isr_common
isr_72:
    push 0
    push 72
    jmp isr_common
.section .rodata.isr, "a"
.balign 8
.global isr_table
isr_table:
    .quad isr_0
    .quad isr_1
    .quad isr_2
    .quad isr_3
    .quad isr_4
    .quad isr_5
    .quad isr_6
    .quad isr_7
    .quad isr_8
    .quad isr_9
    .quad isr_10
    .quad isr_11
    .quad isr_12
    .quad isr_13
    .quad isr_14
    .quad isr_15
    .quad isr_16
    .quad isr_17
    .quad isr_18
    .quad isr_19
    .quad isr_20
    .quad isr_21
    .quad isr_22
    .quad isr_23
    .quad isr_24
    .quad isr_25
    .quad isr_26
    .quad isr_27
    .quad isr_28
    .quad isr_29
    .quad isr_30
    .quad isr_31
    .quad isr_32
    .quad isr_255
    .quad isr_64
    .quad isr_65
    .quad isr_66
    .quad isr_67
    .quad isr_68
    .quad isr_69
    .quad isr_70
    .quad isr_71
    .quad isr_72
"#
);

unsafe extern "C" {
    static isr_table: [u64; 43];
}

/// Vectors in `isr_table` order.
const VECTORS: [u8; 43] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 255, 64, 65, 66, 67, 68, 69, 70, 71, 72,
];

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// Builds the IDT (first call) and loads it on the executing CPU; every CPU
/// shares the one table.
pub fn init_idt() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // SAFETY: isr_table is an immutable table of stub addresses defined above.
        let stubs = unsafe { &*core::ptr::addr_of!(isr_table) };
        let addr = |v: u8| -> VirtAddr {
            let i = VECTORS.iter().position(|&x| x == v).unwrap_or(0);
            VirtAddr::new(stubs[i])
        };
        // SAFETY: (all entries) each address is an entry stub above that saves the full register state, calls the dispatcher and returns with iretq.
        unsafe {
            idt.divide_error.set_handler_addr(addr(0));
            idt.debug.set_handler_addr(addr(1));
            idt.non_maskable_interrupt.set_handler_addr(addr(2)).set_stack_index(crate::gdt::DOUBLE_FAULT_IST);
            idt.breakpoint.set_handler_addr(addr(3));
            idt.overflow.set_handler_addr(addr(4));
            idt.bound_range_exceeded.set_handler_addr(addr(5));
            idt.invalid_opcode.set_handler_addr(addr(6));
            idt.device_not_available.set_handler_addr(addr(7));
            idt.double_fault.set_handler_addr(addr(8)).set_stack_index(crate::gdt::DOUBLE_FAULT_IST);
            idt.invalid_tss.set_handler_addr(addr(10));
            idt.segment_not_present.set_handler_addr(addr(11));
            idt.stack_segment_fault.set_handler_addr(addr(12));
            idt.general_protection_fault.set_handler_addr(addr(13));
            idt.page_fault.set_handler_addr(addr(14));
            idt.x87_floating_point.set_handler_addr(addr(16));
            idt.alignment_check.set_handler_addr(addr(17));
            idt.machine_check.set_handler_addr(addr(18));
            idt.simd_floating_point.set_handler_addr(addr(19));
            idt.virtualization.set_handler_addr(addr(20));
            idt.cp_protection_exception.set_handler_addr(addr(21));
            idt.hv_injection_exception.set_handler_addr(addr(28));
            idt.vmm_communication_exception.set_handler_addr(addr(29));
            idt.security_exception.set_handler_addr(addr(30));
            idt[TIMER_VECTOR].set_handler_addr(addr(TIMER_VECTOR));
            idt[SPURIOUS_VECTOR].set_handler_addr(addr(SPURIOUS_VECTOR));
            for v in DEVICE_VECTORS {
                idt[v].set_handler_addr(addr(v));
            }
            idt[IOMMU_FAULT_VECTOR].set_handler_addr(addr(IOMMU_FAULT_VECTOR));
        }
        idt
    });
    idt.load();
}

/// Name of an exception vector (SDM Table 6-1).
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack-segment fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point (#XM)",
        20 => "virtualization (#VE)",
        21 => "control protection (#CP)",
        _ => "reserved/unknown",
    }
}

/// Prints an exception report: name, error code, CR2, all registers, backtrace.
fn report(frame: &TrapFrame) {
    let f = frame;
    print_unlocked(format_args!(
        "\nEXCEPTION: {} vector={} error={:#x} rip={:#018x} cs={:#x} rflags={:#x}\n",
        exception_name(f.vector),
        f.vector,
        f.error,
        f.rip,
        f.cs,
        f.rflags
    ));
    if f.vector == 14 {
        let cr2 = x86_64::registers::control::Cr2::read_raw();
        let why = match (f.error & 1 != 0, f.error & 2 != 0, f.error & 16 != 0) {
            (_, _, true) => "instruction fetch",
            (_, true, _) => "write",
            _ => "read",
        };
        let present = if f.error & 1 != 0 { "protection violation" } else { "not present" };
        print_unlocked(format_args!("  fault address (cr2)={cr2:#018x} access={why} {present}\n"));
    }
    print_unlocked(format_args!(
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}\n",
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp
    ));
    print_unlocked(format_args!(
        "  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n",
        f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15
    ));
    print_unlocked(format_args!("backtrace: #0 {:#018x}\n", f.rip));
    kcore::backtrace::print_from(f.rbp as usize, 1);
}

/// The Rust side of every vector.
#[unsafe(no_mangle)]
extern "C" fn x86_trap(frame: &mut TrapFrame) {
    match frame.vector {
        3 => {
            BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
            log::debug!("breakpoint at {:#x}", frame.rip);
        }
        v if v == u64::from(TIMER_VECTOR) => {
            // Every CPU's timer ticks; the tick clock counts CPU 0's only.
            if crate::user::cpu_index() == 0 {
                TICKS.fetch_add(1, Ordering::Relaxed);
            }
            crate::apic::eoi();
            if frame.cs & 3 == 3 {
                kcore::task::preempt();
            }
        }
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v if v == u64::from(IOMMU_FAULT_VECTOR) => {
            IOMMU_FAULT_IRQS.fetch_add(1, Ordering::Relaxed);
            crate::apic::eoi();
        }
        v if DEVICE_VECTORS.contains(&(v as u8)) => {
            crate::apic::eoi();
            kcore::task::device_irq(u32::from(v as u8 - DEVICE_VECTORS.start()));
            if frame.cs & 3 == 3 {
                kcore::task::preempt();
            }
        }
        v if frame.cs & 3 == 3 => {
            // A fault in user mode kills the task, not the kernel.
            let addr = if v == 14 { x86_64::registers::control::Cr2::read_raw() } else { 0 };
            crate::user::kill(exception_name(v), frame.rip, addr);
        }
        _ => {
            report(frame);
            crate::exit::exit(false);
        }
    }
}
