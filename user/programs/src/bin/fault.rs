//! Touches an unmapped address on purpose: the kernel must kill this task and go on.
#![no_std]
#![no_main]

use userlib::println;

fn main() -> i32 {
    println!("fault: reading address 0x10 (unmapped)");
    // SAFETY: none; this read is meant to fault so the kernel kills the task.
    let v = unsafe { core::ptr::read_volatile(0x10 as *const u64) };
    println!("fault: read {v:#x}, the kernel did not stop me");
    1
}

userlib::entry!(main);
