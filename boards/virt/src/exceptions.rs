//! EL1 exception vectors (ARM ARM D1.10 "Exception entry", VBAR_EL1 layout:
//! 16 entries of 0x80 bytes), the saved [`TrapFrame`] and the Rust dispatcher.

use aarch64_cpu::registers::{Readable, ESR_EL1, FAR_EL1, VBAR_EL1};
use core::sync::atomic::{AtomicU64, Ordering};
use kcore::console::print_unlocked;
use tock_registers::interfaces::Writeable;

/// Breakpoint exceptions handled.
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

/// Registers saved on exception entry.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// Exception link register (return address).
    pub elr: u64,
    /// Saved program status.
    pub spsr: u64,
    /// The interrupted context's EL0 stack pointer (SP_EL0), saved because the
    /// scheduler may run another task before this frame returns.
    pub sp_el0: u64,
}

// 16 vectors; each saves x0/x1, loads its index and branches to the common
// path, which saves everything else and calls `arm_trap(frame, index)`.
core::arch::global_asm!(
    r#"
.macro VECTOR idx
.balign 0x80
    sub sp, sp, #272
    stp x0, x1, [sp, #0]
    mov x1, #\idx
    b arm_trap_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global el1_vectors
el1_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15

arm_trap_common:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    mrs x2, elr_el1
    stp x30, x2, [sp, #240]
    mrs x2, spsr_el1
    mrs x3, sp_el0
    stp x2, x3, [sp, #256]
    mov x0, sp
    bl arm_trap
    ldp x2, x3, [sp, #256]
    msr spsr_el1, x2
    msr sp_el0, x3
    ldp x30, x2, [sp, #240]
    msr elr_el1, x2
    ldp x28, x29, [sp, #224]
    ldp x26, x27, [sp, #208]
    ldp x24, x25, [sp, #192]
    ldp x22, x23, [sp, #176]
    ldp x20, x21, [sp, #160]
    ldp x18, x19, [sp, #144]
    ldp x16, x17, [sp, #128]
    ldp x14, x15, [sp, #112]
    ldp x12, x13, [sp, #96]
    ldp x10, x11, [sp, #80]
    ldp x8, x9, [sp, #64]
    ldp x6, x7, [sp, #48]
    ldp x4, x5, [sp, #32]
    ldp x2, x3, [sp, #16]
    ldp x0, x1, [sp, #0]
    add sp, sp, #272
    eret
"#
);

unsafe extern "C" {
    static el1_vectors: u8;
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

static STACKS: spin::Once<[(usize, usize); 1]> = spin::Once::new();

/// Kernel stacks known to the backtrace walker.
pub fn stack_ranges() -> &'static [(usize, usize)] {
    STACKS
        .call_once(|| [(core::ptr::addr_of!(boot_stack_bottom) as usize, core::ptr::addr_of!(boot_stack_top) as usize)])
}

/// Points VBAR_EL1 at the vector table.
pub fn install_vectors() {
    VBAR_EL1.set(core::ptr::addr_of!(el1_vectors) as u64);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

const KIND: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
const ORIGIN: [&str; 4] = ["EL1 with SP_EL0", "EL1", "EL0 (AArch64)", "EL0 (AArch32)"];

/// Name of an ESR exception class (ARM ARM D17.2.37, ESR_ELx.EC).
pub fn exception_class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "trapped WFI/WFE",
        0x07 => "SVE/SIMD/FP access",
        0x0E => "illegal execution state",
        0x15 => "SVC (AArch64)",
        0x16 => "HVC (AArch64)",
        0x17 => "SMC (AArch64)",
        0x18 => "trapped MSR/MRS/system instruction",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2F => "SError",
        0x3C => "BRK instruction",
        _ => "other",
    }
}

fn report(frame: &TrapFrame, vector: u64, esr: u64, far: u64) {
    let ec = (esr >> 26) & 0x3F;
    print_unlocked(format_args!(
        "\nEXCEPTION: {} from {}: {} (ec={ec:#x}) esr={esr:#x} elr={:#018x} spsr={:#x}\n",
        KIND[(vector % 4) as usize],
        ORIGIN[(vector / 4) as usize],
        exception_class_name(ec),
        frame.elr,
        frame.spsr
    ));
    if matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) {
        let access = if ec >= 0x24 && esr & (1 << 6) != 0 { "write" } else { "read" };
        print_unlocked(format_args!("  fault address (far)={far:#018x} access={access} dfsc={:#x}\n", esr & 0x3F));
    }
    for row in 0..8 {
        print_unlocked(format_args!("  "));
        for col in 0..4 {
            let i = row * 4 + col;
            if i < 31 {
                print_unlocked(format_args!("x{i:<2}={:#018x} ", frame.x[i]));
            }
        }
        print_unlocked(format_args!("\n"));
    }
    print_unlocked(format_args!("backtrace: #0 {:#018x}\n", frame.elr));
    kcore::backtrace::print_from(frame.x[29] as usize, 1);
}

/// The Rust side of every vector.
#[unsafe(no_mangle)]
extern "C" fn arm_trap(frame: &mut TrapFrame, vector: u64) {
    match vector {
        // Synchronous from EL1 (SP_ELx).
        4 => {
            let esr = ESR_EL1.get();
            if (esr >> 26) & 0x3F == 0x3C {
                BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
                log::debug!("breakpoint at {:#x}", frame.elr);
                frame.elr += 4;
                return;
            }
            report(frame, vector, esr, FAR_EL1.get());
            crate::exit::exit(false);
        }
        // IRQ from EL1.
        5 => crate::gic::handle_irq(),
        // IRQ from EL0: may end the task's time slice.
        9 => {
            crate::gic::handle_irq();
            kcore::task::preempt();
        }
        // Synchronous from EL0 (AArch64): a syscall, or a fault that kills the task.
        8 => {
            let esr = ESR_EL1.get();
            let ec = (esr >> 26) & 0x3F;
            if ec == 0x15 {
                crate::user::syscall(&mut frame.x);
                return;
            }
            let addr = if matches!(ec, 0x20 | 0x24) { FAR_EL1.get() } else { 0 };
            crate::user::leave(kcore::UserExit::Killed { reason: exception_class_name(ec), pc: frame.elr, addr });
        }
        _ => {
            report(frame, vector, ESR_EL1.get(), FAR_EL1.get());
            crate::exit::exit(false);
        }
    }
}
