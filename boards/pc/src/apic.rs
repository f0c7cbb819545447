//! The local APIC (xAPIC MMIO mode): enable, periodic timer, end of
//! interrupt, and the interprocessor interrupts that start the other CPUs.
//!
//! Register layout: Intel SDM Vol. 3A §11.4.1 (Table 11-1, "Local APIC Register
//! Address Map"); timer: §11.5.4; ICR: §11.6.1. The base comes from the
//! IA32_APIC_BASE MSR; every CPU sees its own APIC at the same address, so
//! one mapping serves all of them.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};
use x86_64::registers::model_specific::Msr;

register_bitfields! [u32,
    /// Spurious-interrupt vector register (SDM §11.9).
    SVR [
        VECTOR OFFSET(0) NUMBITS(8) [],
        APIC_ENABLE OFFSET(8) NUMBITS(1) []
    ],
    /// LVT timer entry (SDM §11.5.1, Figure 11-8).
    LVT_TIMER [
        VECTOR OFFSET(0) NUMBITS(8) [],
        MASKED OFFSET(16) NUMBITS(1) [],
        MODE OFFSET(17) NUMBITS(2) [OneShot = 0, Periodic = 1]
    ],
    /// Interrupt command register, low half (SDM §11.6.1, Figure 11-12);
    /// writing it sends the IPI.
    ICR_LOW [
        VECTOR OFFSET(0) NUMBITS(8) [],
        DELIVERY_MODE OFFSET(8) NUMBITS(3) [Fixed = 0b000, Init = 0b101, StartUp = 0b110],
        DELIVERY_STATUS OFFSET(12) NUMBITS(1) [Idle = 0, SendPending = 1],
        LEVEL OFFSET(14) NUMBITS(1) [Deassert = 0, Assert = 1],
        TRIGGER_MODE OFFSET(15) NUMBITS(1) [Edge = 0, Level = 1],
        SHORTHAND OFFSET(18) NUMBITS(2) [None = 0b00, SelfOnly = 0b01, AllIncludingSelf = 0b10, AllExcludingSelf = 0b11]
    ],
    /// Interrupt command register, high half: the destination (physical mode: APIC ID).
    ICR_HIGH [
        DESTINATION OFFSET(24) NUMBITS(8) []
    ]
];

register_structs! {
    /// Local APIC registers, each 32 bits on a 16-byte stride.
    LapicRegisters {
        (0x000 => _reserved0),
        (0x020 => id: ReadOnly<u32>),
        (0x024 => _reserved1),
        (0x030 => version: ReadOnly<u32>),
        (0x034 => _reserved2),
        (0x080 => tpr: ReadWrite<u32>),
        (0x084 => _reserved3),
        (0x0B0 => eoi: WriteOnly<u32>),
        (0x0B4 => _reserved4),
        (0x0F0 => svr: ReadWrite<u32, SVR::Register>),
        (0x0F4 => _reserved5),
        (0x300 => icr_low: ReadWrite<u32, ICR_LOW::Register>),
        (0x304 => _reserved_icr0),
        (0x310 => icr_high: ReadWrite<u32, ICR_HIGH::Register>),
        (0x314 => _reserved_icr1),
        (0x320 => lvt_timer: ReadWrite<u32, LVT_TIMER::Register>),
        (0x324 => _reserved6),
        (0x380 => timer_initial: ReadWrite<u32>),
        (0x384 => _reserved7),
        (0x390 => timer_current: ReadOnly<u32>),
        (0x394 => _reserved8),
        (0x3E0 => timer_divide: ReadWrite<u32>),
        (0x3E4 => _reserved9),
        (0x400 => @END),
    }
}

const IA32_APIC_BASE: u32 = 0x1B;
/// Divide configuration value for "divide by 16" (SDM Figure 11-10).
const DIVIDE_BY_16: u32 = 0b0011;

/// Kernel virtual address of the mapped registers (0 = not mapped yet).
static LAPIC_VA: AtomicU64 = AtomicU64::new(0);
/// APIC ID of the boot CPU, where every device interrupt goes.
static BOOT_APIC_ID: AtomicU32 = AtomicU32::new(0);
/// Timer counts per 10 ms measured on the boot CPU (0: not calibrated),
/// which every CPU's timer uses (all APICs run off the same bus clock).
static TICKS_PER_10MS: AtomicU32 = AtomicU32::new(0);
/// Register spurious vector (SVR) the boot CPU enabled its APIC with.
static SPURIOUS: AtomicU32 = AtomicU32::new(0xFF);

fn regs() -> Option<&'static LapicRegisters> {
    let va = LAPIC_VA.load(Ordering::Acquire);
    if va == 0 {
        return None;
    }
    // SAFETY: `va` maps the 4 KiB local APIC register page with device attributes for the life of the kernel (set once in `map_and_enable`).
    Some(unsafe { &*(va as *const LapicRegisters) })
}

/// Maps the local APIC, enables it with spurious vector `spurious` and
/// accepts all priorities.
pub fn map_and_enable(spurious: u8) -> Result<(), &'static str> {
    // SAFETY: reading IA32_APIC_BASE has no side effects on any x86_64 CPU with an APIC.
    let base = unsafe { Msr::new(IA32_APIC_BASE).read() } & 0x000F_FFFF_FFFF_F000;
    let mmio = kcore::mm::map_mmio(base, 0x1000).map_err(|_| "cannot map the local APIC")?;
    LAPIC_VA.store(mmio.va, Ordering::Release);
    SPURIOUS.store(u32::from(spurious), Ordering::Relaxed);
    let r = enable_this_cpu()?;
    BOOT_APIC_ID.store(r.id.get() >> 24, Ordering::Relaxed);
    log::info!("lapic: base={base:#x} id={} version={:#x}", r.id.get() >> 24, r.version.get() & 0xFF);
    Ok(())
}

/// Enables the executing CPU's local APIC (the registers are mapped) with
/// the boot CPU's spurious vector, accepting all priorities.
fn enable_this_cpu() -> Result<&'static LapicRegisters, &'static str> {
    let r = regs().ok_or("local APIC not mapped")?;
    r.tpr.set(0);
    r.svr.write(SVR::VECTOR.val(SPURIOUS.load(Ordering::Relaxed)) + SVR::APIC_ENABLE::SET);
    Ok(r)
}

/// Sets up the local APIC of a CPU other than the boot CPU (after
/// [`map_and_enable`] and the calibration ran on the boot CPU): enabled as
/// there, and its periodic timer at `hz` on `vector` with the boot CPU's count.
pub fn init_secondary(hz: u32, vector: u8) -> Result<(), &'static str> {
    let r = enable_this_cpu()?;
    let per_10ms = TICKS_PER_10MS.load(Ordering::Relaxed);
    if per_10ms == 0 {
        return Err("local APIC timer not calibrated");
    }
    program_periodic(r, per_10ms, hz, vector);
    Ok(())
}

/// Counts (divide-by-16) of the timer during 10 ms of the calibrated TSC clock.
pub fn calibrate_against_tsc() -> Result<u32, &'static str> {
    let r = regs().ok_or("local APIC not mapped")?;
    r.timer_divide.set(DIVIDE_BY_16);
    r.lvt_timer.write(LVT_TIMER::MASKED::SET + LVT_TIMER::MODE::OneShot);
    let t0 = crate::tsc::uptime_ns();
    if t0 == 0 && crate::tsc::uptime_ns() == 0 {
        return Err("TSC not calibrated");
    }
    r.timer_initial.set(u32::MAX);
    while crate::tsc::uptime_ns() - t0 < 10_000_000 {
        core::hint::spin_loop();
    }
    let counted = (u32::MAX - r.timer_current.get()).max(1);
    r.timer_initial.set(0);
    TICKS_PER_10MS.store(counted, Ordering::Relaxed);
    Ok(counted)
}

/// Starts the periodic timer at `hz` on `vector`, given the calibrated count per 10 ms.
pub fn start_periodic(ticks_per_10ms: u32, hz: u32, vector: u8) -> Result<(), &'static str> {
    let r = regs().ok_or("local APIC not mapped")?;
    let initial = program_periodic(r, ticks_per_10ms, hz, vector);
    log::info!("lapic timer: {hz} Hz (initial count {initial}, divide 16)");
    Ok(())
}

/// Programs the executing CPU's timer as [`start_periodic`] says; returns the initial count.
fn program_periodic(r: &LapicRegisters, ticks_per_10ms: u32, hz: u32, vector: u8) -> u32 {
    let initial = (u64::from(ticks_per_10ms) * 100 / u64::from(hz.max(1))).clamp(1, u64::from(u32::MAX)) as u32;
    r.timer_divide.set(DIVIDE_BY_16);
    r.lvt_timer.write(LVT_TIMER::VECTOR.val(u32::from(vector)) + LVT_TIMER::MODE::Periodic);
    r.timer_initial.set(initial);
    initial
}

/// Why an interprocessor interrupt was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiError {
    /// The local APIC is not mapped yet.
    NotMapped,
    /// The previous IPI was still pending after the bound (SDM §11.6.1: delivery status).
    Busy,
}

/// Bound on one wait for the ICR's delivery status to go idle.
const ICR_IDLE_NS: u64 = 10_000_000;

/// Waits (bounded) until the ICR's previous IPI has been sent.
fn wait_icr_idle(r: &LapicRegisters) -> Result<(), IpiError> {
    let t0 = crate::tsc::uptime_ns();
    while r.icr_low.matches_all(ICR_LOW::DELIVERY_STATUS::SendPending) {
        if crate::tsc::uptime_ns().saturating_sub(t0) > ICR_IDLE_NS {
            return Err(IpiError::Busy);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Sends one IPI `low` to the CPU with APIC ID `apic_id` (physical
/// destination mode, no shorthand) and waits (bounded) until it is sent.
fn send_ipi(apic_id: u8, low: tock_registers::fields::FieldValue<u32, ICR_LOW::Register>) -> Result<(), IpiError> {
    let r = regs().ok_or(IpiError::NotMapped)?;
    wait_icr_idle(r)?;
    r.icr_high.write(ICR_HIGH::DESTINATION.val(u32::from(apic_id)));
    r.icr_low.write(low + ICR_LOW::SHORTHAND::None);
    wait_icr_idle(r)
}

/// INIT IPI to `apic_id`, asserted (level-triggered) then deasserted (SDM
/// §9.4.4.1, the universal start-up algorithm): the CPU resets and waits
/// for a start-up IPI. Used also to park a CPU that did not start.
pub fn send_init(apic_id: u8) -> Result<(), IpiError> {
    send_ipi(apic_id, ICR_LOW::DELIVERY_MODE::Init + ICR_LOW::LEVEL::Assert + ICR_LOW::TRIGGER_MODE::Level)?;
    crate::tsc::delay_ns(10_000_000);
    send_ipi(apic_id, ICR_LOW::DELIVERY_MODE::Init + ICR_LOW::LEVEL::Deassert + ICR_LOW::TRIGGER_MODE::Level)
}

/// Start-up IPI to `apic_id`: the CPU, waiting after an INIT, starts in
/// real mode at physical `page << 12` (CS = `page << 8`, IP = 0).
pub fn send_startup(apic_id: u8, page: u8) -> Result<(), IpiError> {
    send_ipi(apic_id, ICR_LOW::DELIVERY_MODE::StartUp + ICR_LOW::VECTOR.val(u32::from(page)) + ICR_LOW::LEVEL::Assert)
}

/// Signals end of interrupt.
pub fn eoi() {
    if let Some(r) = regs() {
        r.eoi.set(0);
    }
}

/// MSI message address for the boot CPU's local APIC, where every device
/// interrupt goes (SDM Vol. 3A §11.11.1): 0xFEE in bits 31:20, destination
/// APIC ID in bits 19:12, physical mode.
pub fn msi_address() -> u32 {
    0xFEE0_0000 | (irq_destination() << 12)
}

/// This CPU's local APIC ID (xAPIC: ID register bits 31:24).
pub fn id() -> u32 {
    regs().map_or(0, |r| r.id.get() >> 24)
}

/// APIC ID of the CPU device interrupts are delivered to: the boot CPU's,
/// whichever CPU routes the interrupt.
pub fn irq_destination() -> u32 {
    BOOT_APIC_ID.load(Ordering::Relaxed)
}

/// Programs `f`'s MSI capability so that each message ends as `vector` on
/// this CPU (edge, fixed delivery), and disables its INTx (PCI 3.0 §6.8.1).
///
/// When `f`'s IOMMU remaps interrupts, the device gets the remappable
/// message of its own table entry (it can raise this interrupt and no
/// other); a failure there fails the routing — a compatibility-format
/// message is never the fallback, the unit would block it. Without
/// remapping the device is programmed with the destination itself, and the
/// log says that it is not confined. A function with MSI-X and no MSI gets
/// the same message in entry 0 of its table ([`board_common::msix`]); neither: an error.
pub fn route_msi(f: &pci::Function, access: &dyn pci::ConfigAccess, vector: u8) -> Result<(), &'static str> {
    if f.caps.msi.is_none() && f.caps.msix.is_none() {
        return Err("function has neither MSI nor MSI-X (INTx through the I/O APIC is not wired yet)");
    }
    let bdf = f.bdf;
    let target = iommu::MsiTarget { vector, cpu: irq_destination() };
    let (address, data, remapped) = match kcore::iommu::msi_remap(bdf, target) {
        Ok(Some(m)) => (m.address, m.data, true),
        Ok(None) => (u64::from(msi_address()), u32::from(vector), false),
        Err(e) => {
            log::warn!("msi: {bdf}: no interrupt remapping entry: {e}");
            return Err("the IOMMU could not give the device an interrupt remapping entry");
        }
    };
    let kind = match board_common::msi::program(f, access, address, data) {
        Ok(kind) => kind,
        Err(why) => {
            let _ = kcore::iommu::msi_unmap(bdf, vector);
            return Err(why);
        }
    };
    let what = kind.name();
    let how = if remapped { "through interrupt remapping" } else { "not remapped: the device can raise any vector" };
    log::info!("{what}: {bdf} -> vector {vector:#x} ({how}; message {address:#x}/{data:#x})");
    Ok(())
}

/// Turns `f`'s MSI off again and drops its remapping entry for `vector`
/// (after the device stopped using it).
pub fn unroute_msi(f: &pci::Function, access: &dyn pci::ConfigAccess, vector: u8) {
    board_common::msi::disable(f, access);
    if let Err(e) = kcore::iommu::msi_unmap(f.bdf, vector) {
        log::error!("msi: {}: interrupt remapping entry for vector {vector:#x} not removed: {e}", f.bdf);
    }
}
