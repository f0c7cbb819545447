//! Ending the run: Arm semihosting `SYS_EXIT` when the command line says
//! `qemu_exit=semihosting` (QEMU's `-semihosting`), else PSCI `SYSTEM_OFF`
//! through SMC (the conduit when EL2 is ours), else a WFI loop.

use core::sync::atomic::{AtomicBool, Ordering};

static SEMIHOSTING: AtomicBool = AtomicBool::new(false);
/// Set on the first exit attempt, so an exception raised while exiting cannot loop.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Semihosting operation number of SYS_EXIT (Arm semihosting spec §6.5.2).
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`.
const APPLICATION_EXIT: u64 = 0x20026;
/// PSCI SYSTEM_OFF function ID (PSCI spec DEN0022 §5.1.9).
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

/// Reads `qemu_exit=` from the command line.
pub fn configure(boot: &bootinfo::BootInfo) {
    SEMIHOSTING.store(boot.cmdline_value("qemu_exit") == Some("semihosting"), Ordering::Relaxed);
}

/// Exits QEMU with status 0 (success) or 1 (failure) where possible.
pub fn exit(success: bool) -> ! {
    if EXITING.swap(true, Ordering::Relaxed) {
        loop {
            aarch64_cpu::asm::wfi();
        }
    }
    kcore::console::print_unlocked(format_args!(
        "portcullis: halting ({})\n",
        if success { "success" } else { "failure" }
    ));
    if SEMIHOSTING.load(Ordering::Relaxed) {
        let block: [u64; 2] = [APPLICATION_EXIT, u64::from(!success)];
        // SAFETY: the command line says the host handles semihosting; SYS_EXIT reads the two-word block and ends the emulator.
        unsafe {
            core::arch::asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
        }
    }
    // SAFETY: PSCI SYSTEM_OFF does not return when firmware implements it; if the SMC is not implemented it returns an error code we ignore.
    unsafe { core::arch::asm!("smc #0", inout("x0") PSCI_SYSTEM_OFF => _, options(nostack)) };
    loop {
        aarch64_cpu::asm::wfi();
    }
}
