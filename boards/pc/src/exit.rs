//! Ending the run: QEMU's `isa-debug-exit` device when the command line names
//! its port (`qemu_exit=0xf4`), otherwise a halt loop.
//!
//! `isa-debug-exit` turns a write of `v` into QEMU exit status `(v << 1) | 1`:
//! we write 0x10 for success (status 33) and 0x11 for failure (status 35).

use core::sync::atomic::{AtomicU32, Ordering};
use x86_64::instructions::port::Port;

/// Port of the exit device; 0 means none.
static EXIT_PORT: AtomicU32 = AtomicU32::new(0);

/// Value written for success.
pub const SUCCESS: u32 = 0x10;
/// Value written for failure.
pub const FAILURE: u32 = 0x11;

/// Reads `qemu_exit=<port>` from the command line.
pub fn configure(boot: &bootinfo::BootInfo) {
    let port = boot.cmdline_value("qemu_exit").and_then(|v| {
        let hex = v.strip_prefix("0x").unwrap_or(v);
        u16::from_str_radix(hex, 16).ok()
    });
    if let Some(port) = port {
        EXIT_PORT.store(u32::from(port), Ordering::Relaxed);
    }
}

/// Exits QEMU (or halts forever on a machine without the exit device).
pub fn exit(success: bool) -> ! {
    kcore::console::print_unlocked(format_args!(
        "portcullis: halting ({})\n",
        if success { "success" } else { "failure" }
    ));
    let port = EXIT_PORT.load(Ordering::Relaxed) as u16;
    if port != 0 {
        let mut p: Port<u32> = Port::new(port);
        // SAFETY: the command line told us this port is QEMU's isa-debug-exit device.
        unsafe { p.write(if success { SUCCESS } else { FAILURE }) };
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
