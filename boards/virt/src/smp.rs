//! The other CPUs: found in the device tree (`/cpus`, `/psci`) or the ACPI
//! MADT (GICC entries) and FADT, started one at a time by PSCI `CPU_ON`
//! (Arm DEN 0022 §5.1.4, function 0xC400_0003) at `secondary_entry`.
//!
//! A started CPU enters at EL2 or EL1 with the MMU off, like the boot CPU
//! (`boot/aarch64`): the entry stub gives EL1 the same EL2 configuration
//! (`el2_enter_el1`, which the boot CPU's `_start` calls too), drops to
//! EL1, loads the boot CPU's translation registers (TTBR0 is the
//! identity map the stub runs from until it jumps to the linked address,
//! TTBR1 the kernel's), its vector base, and its own stack from a
//! `StartBlock` whose physical address PSCI passes in x0, then sets up
//! its redistributor, CPU interface and timer and enters the kernel's
//! scheduler. `TPIDR_EL1` holds the CPU's index for [`index`] (EL0 cannot
//! read it).

use core::sync::atomic::{AtomicU64, Ordering};
use devicetree::PsciConduit;

/// PSCI `CPU_ON` (SMC64 calling convention).
const PSCI_CPU_ON: u64 = 0xC400_0003;
/// Frames of each started CPU's scheduler stack.
const STACK_FRAMES: usize = 16;
/// How long a started CPU has to report in.
const START_TIMEOUT_NS: u64 = 1_000_000_000;

/// What a starting CPU reads before its MMU is on (offsets fixed: the stub
/// reads them by number), one per CPU, in a frame of its own.
#[repr(C)]
struct StartBlock {
    /// 0: TTBR0_EL1 (the boot identity map).
    ttbr0: u64,
    /// 8: TTBR1_EL1 (the kernel's tables).
    ttbr1: u64,
    /// 16: TCR_EL1.
    tcr: u64,
    /// 24: MAIR_EL1.
    mair: u64,
    /// 32: SCTLR_EL1 (MMU and caches on).
    sctlr: u64,
    /// 40: VBAR_EL1.
    vbar: u64,
    /// 48: top of the CPU's stack (kernel virtual).
    sp: u64,
    /// 56: the CPU's index (into TPIDR_EL1, and the Rust entry's argument).
    index: u64,
    /// 64: the Rust entry ([`secondary_main`], linked address).
    entry: u64,
    /// 72: set to 1 by the CPU once it is set up (read by the boot CPU).
    up: AtomicU64,
    /// 80: why a CPU's setup failed (0: none; else a `&'static str` pointer).
    failed: AtomicU64,
    failed_len: AtomicU64,
}

core::arch::global_asm!(
    r#"
.section .text.secondary, "ax"
.balign 4096
.global secondary_entry
secondary_entry:
    mov x19, x0                     /* physical address of the StartBlock */
    bl el2_enter_el1
    /* ---- EL1, MMU off ---- */
    mov x0, #(3 << 20)              /* CPACR_EL1.FPEN */
    msr cpacr_el1, x0
    isb
    ldr x0, [x19, #24]
    msr mair_el1, x0
    ldr x0, [x19, #16]
    msr tcr_el1, x0
    ldr x0, [x19, #0]
    msr ttbr0_el1, x0
    ldr x0, [x19, #8]
    msr ttbr1_el1, x0
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x0, [x19, #32]
    msr sctlr_el1, x0
    isb
    /* MMU on, still at the physical address through the identity map. */
    ldr x0, [x19, #40]
    msr vbar_el1, x0
    ldr x0, [x19, #56]
    msr tpidr_el1, x0
    ldr x1, [x19, #48]
    mov sp, x1
    mov x1, x19
    ldr x2, [x19, #64]
    mov x29, #0
    mov x30, #0
    br x2

/* el2_enter_el1: at EL2, configures EL2 for a kernel at EL1 (EL1 is
 * AArch64, counter and timer access, no FP/SIMD traps, GIC system
 * registers on, no stage 2, the vectors below) and returns to x30 at EL1h
 * with DAIF masked and SCTLR_EL1 reset (MMU off); at EL1 it returns at
 * once. Position independent, MMU off; clobbers x0. Shared by the boot
 * CPU's `_start` (boot/aarch64) and every started CPU's entry. */
.global el2_enter_el1
el2_enter_el1:
    mrs x0, CurrentEL
    lsr x0, x0, #2
    cmp x0, #2
    b.ne 3f
    mov x0, #(1 << 31)              /* HCR_EL2.RW: EL1 is AArch64 */
    msr hcr_el2, x0
    mrs x0, cnthctl_el2
    orr x0, x0, #3                  /* EL1PCTEN | EL1PCEN */
    msr cnthctl_el2, x0
    msr cntvoff_el2, xzr
    mov x0, #0x33ff                 /* CPTR_EL2: no FP/SIMD traps */
    msr cptr_el2, x0
    mrs x0, id_aa64pfr0_el1
    ubfx x0, x0, #24, #4            /* GIC system registers implemented? */
    cbz x0, 2f
    mov x0, #0xf                    /* ICC_SRE_EL2: SRE | DFB | DIB | Enable */
    msr icc_sre_el2, x0
    isb
2:  msr vttbr_el2, xzr
    adr x0, el2_vectors
    msr vbar_el2, x0
    mov x0, #0x0800
    movk x0, #0x30d0, lsl #16       /* SCTLR_EL1 RES1 bits, MMU off */
    msr sctlr_el1, x0
    mov x0, #0x3c5                  /* SPSR: EL1h, DAIF masked */
    msr spsr_el2, x0
    msr elr_el2, x30
    eret
3:  ret

/* EL2 vectors: anything taken to EL2 returns at once (a later hypervisor replaces them). */
.balign 2048
el2_vectors:
.rept 16
.balign 0x80
    eret
.endr
"#
);

unsafe extern "C" {
    fn secondary_entry();
}

/// The portable entry every started CPU ends in (set once, before the first start).
static KERNEL_ENTRY: spin::Once<extern "C" fn(usize) -> !> = spin::Once::new();

/// Index of the CPU running this (TPIDR_EL1; 0 on the boot CPU).
pub fn index() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 has no side effects; the boot CPU zeroes it in `early_init`, each started CPU's stub sets it.
    unsafe { core::arch::asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v as usize
}

/// Marks the running CPU as the boot CPU (index 0).
pub fn set_boot_cpu() {
    // SAFETY: TPIDR_EL1 is the kernel's per-CPU register; nothing else uses it.
    unsafe { core::arch::asm!("msr tpidr_el1, xzr", options(nomem, nostack, preserves_flags)) };
}

/// First Rust code of a started CPU: MMU on, its stack, interrupts masked.
extern "C" fn secondary_main(index: usize, block_pa: u64) -> ! {
    // SAFETY: `block_pa` is this CPU's StartBlock, a frame the boot CPU keeps for good; the direct map covers it.
    let block = unsafe { &*(kcore::mm::phys_to_virt(block_pa) as *const StartBlock) };
    let setup = crate::gic::init_cpu().and_then(|_| crate::timer::start_cpu());
    match setup {
        Ok(()) => block.up.store(1, Ordering::Release),
        Err(e) => {
            block.failed_len.store(e.len() as u64, Ordering::Relaxed);
            block.failed.store(e.as_ptr() as u64, Ordering::Release);
            loop {
                aarch64_cpu::asm::wfi();
            }
        }
    }
    match KERNEL_ENTRY.get() {
        Some(entry) => entry(index),
        None => loop {
            aarch64_cpu::asm::wfi();
        },
    }
}

/// The CPUs (MPIDR affinity values) and PSCI conduit the firmware describes.
fn describe(boot: &bootinfo::BootInfo) -> Result<(alloc::vec::Vec<u64>, PsciConduit), &'static str> {
    match boot.firmware() {
        bootinfo::FirmwareTables::Acpi { rsdp } => crate::acpi::cpus(rsdp),
        bootinfo::FirmwareTables::DeviceTree { .. } => {
            let dt = crate::dtb(boot).ok_or("device tree unreadable")?;
            let conduit = dt.psci_conduit().ok_or("the device tree describes no PSCI")?;
            Ok((dt.cpus().filter(|c| c.psci).map(|c| c.mpidr).collect(), conduit))
        }
        bootinfo::FirmwareTables::None => Err("no firmware tables"),
    }
}

/// One PSCI call per the SMC calling convention through `insn` (`smc #0` or
/// `hvc #0`): x0–x3 in, x0 out, x1–x17 clobbered.
macro_rules! psci_call {
    ($insn:literal, $fid:expr, $a:expr, $b:expr, $c:expr) => {{
        let ret: u64;
        // SAFETY: a PSCI call per the SMC calling convention: x0-x3 in, x0 out, x1-x17 may be clobbered; it changes no memory of ours.
        unsafe {
            core::arch::asm!($insn, inout("x0") $fid => ret, inout("x1") $a => _, inout("x2") $b => _,
                inout("x3") $c => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
                out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _, options(nostack))
        };
        ret
    }};
}

/// `CPU_ON(target, entry, context)`: the PSCI return code (0: on its way).
fn cpu_on(conduit: PsciConduit, target: u64, entry: u64, context: u64) -> i64 {
    let ret = match conduit {
        PsciConduit::Smc => psci_call!("smc #0", PSCI_CPU_ON, target, entry, context),
        PsciConduit::Hvc => psci_call!("hvc #0", PSCI_CPU_ON, target, entry, context),
    };
    ret as i64
}

/// The boot CPU's MPIDR affinity fields.
fn own_mpidr() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    mpidr & 0xFF_00FF_FFFF
}

/// The boot CPU's translation and vector registers, for a StartBlock.
fn own_registers() -> [u64; 6] {
    let (ttbr0, ttbr1, tcr, mair, sctlr, vbar): (u64, u64, u64, u64, u64, u64);
    // SAFETY: reads of EL1 system registers; no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {0}, ttbr0_el1", "mrs {1}, ttbr1_el1", "mrs {2}, tcr_el1", "mrs {3}, mair_el1",
            "mrs {4}, sctlr_el1", "mrs {5}, vbar_el1",
            out(reg) ttbr0, out(reg) ttbr1, out(reg) tcr, out(reg) mair, out(reg) sctlr, out(reg) vbar,
            options(nomem, nostack)
        )
    };
    [ttbr0, ttbr1, tcr, mair, sctlr, vbar]
}

/// Starts the CPUs the firmware describes (see the module doc); returns how
/// many run, the boot CPU included.
pub fn start_cpus(boot: &bootinfo::BootInfo, max: usize, entry: extern "C" fn(usize) -> !) -> usize {
    let (cpus, conduit) = match describe(boot) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("smp: {e}; only the boot CPU runs");
            return 1;
        }
    };
    KERNEL_ENTRY.call_once(|| entry);
    let Some(entry_pa) = kcore::platform().translate(secondary_entry as *const () as u64) else {
        log::error!("smp: the entry stub has no physical address; only the boot CPU runs");
        return 1;
    };
    let me = own_mpidr();
    let [ttbr0, ttbr1, tcr, mair, sctlr, vbar] = own_registers();
    let mut online = 1;
    for mpidr in cpus.into_iter().filter(|&m| m != me) {
        if online >= max.min(kcore::cpu::MAX_CPUS) {
            log::info!("smp: cpu {mpidr:#x} left off (at most {max} CPUs)");
            continue;
        }
        let (Some(block_pa), Some(stack)) = (kcore::mm::alloc_frames(1, 1), kcore::mm::alloc_frames(STACK_FRAMES, 1))
        else {
            log::error!("smp: no memory to start cpu {mpidr:#x}");
            break;
        };
        let sp = kcore::mm::phys_to_virt(stack) + (STACK_FRAMES as u64) * kcore::frames::FRAME_SIZE;
        let block = StartBlock {
            ttbr0,
            ttbr1,
            tcr,
            mair,
            sctlr,
            vbar,
            sp,
            index: online as u64,
            entry: secondary_main as *const () as u64,
            up: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_len: AtomicU64::new(0),
        };
        let va = kcore::mm::phys_to_virt(block_pa) as *mut StartBlock;
        // SAFETY: `va` is the direct-map address of a frame just allocated for this block alone.
        unsafe { va.write(block) };
        // The CPU reads the block with its MMU (and so its caches) off:
        // clean it to the point of coherency first.
        // SAFETY: cache maintenance by address on the block just written (one cache line holds at most 64 bytes; the block fits two).
        unsafe {
            core::arch::asm!("dc cvac, {0}", "dc cvac, {1}", "dsb sy", in(reg) va as u64, in(reg) va as u64 + 64,
                options(nostack))
        };
        // SAFETY: the block lives for good (its frame is never freed).
        let block = unsafe { &*va };
        let ret = cpu_on(conduit, mpidr, entry_pa, block_pa);
        if ret != 0 {
            log::error!("smp: PSCI CPU_ON of cpu {mpidr:#x} failed ({ret}); left off");
            continue;
        }
        let deadline = kcore::platform().uptime_ns().saturating_add(START_TIMEOUT_NS);
        let failed = loop {
            if block.up.load(Ordering::Acquire) == 1 {
                break None;
            }
            let why = block.failed.load(Ordering::Acquire);
            if why != 0 {
                let len = block.failed_len.load(Ordering::Relaxed) as usize;
                let bytes = why as *const u8;
                // SAFETY: the CPU stored the pointer and length of a `&'static str` of the kernel image.
                let text = unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(bytes, len)) };
                break Some(text);
            }
            if kcore::platform().uptime_ns() > deadline {
                break Some("it did not report in within 1 s");
            }
            core::hint::spin_loop();
        };
        match failed {
            None => {
                log::info!("smp: cpu {online} (mpidr {mpidr:#x}) started");
                online += 1;
            }
            Some(why) => {
                // Its index is not handed out again: a late CPU would share it.
                log::error!("smp: cpu {mpidr:#x}: {why}; left off");
                break;
            }
        }
    }
    online
}
