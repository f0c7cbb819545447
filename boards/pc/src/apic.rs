//! The local APIC (xAPIC MMIO mode): enable, periodic timer, end of interrupt.
//!
//! Register layout: Intel SDM Vol. 3A §11.4.1 (Table 11-1, "Local APIC Register
//! Address Map"); timer: §11.5.4. The base comes from the IA32_APIC_BASE MSR.

use core::sync::atomic::{AtomicU64, Ordering};
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
    let r = regs().ok_or("local APIC not mapped")?;
    r.tpr.set(0);
    r.svr.write(SVR::VECTOR.val(u32::from(spurious)) + SVR::APIC_ENABLE::SET);
    log::info!("lapic: base={base:#x} id={} version={:#x}", r.id.get() >> 24, r.version.get() & 0xFF);
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
    let counted = u32::MAX - r.timer_current.get();
    r.timer_initial.set(0);
    Ok(counted.max(1))
}

/// Starts the periodic timer at `hz` on `vector`, given the calibrated count per 10 ms.
pub fn start_periodic(ticks_per_10ms: u32, hz: u32, vector: u8) -> Result<(), &'static str> {
    let r = regs().ok_or("local APIC not mapped")?;
    let initial = (u64::from(ticks_per_10ms) * 100 / u64::from(hz.max(1))).clamp(1, u64::from(u32::MAX)) as u32;
    r.timer_divide.set(DIVIDE_BY_16);
    r.lvt_timer.write(LVT_TIMER::VECTOR.val(u32::from(vector)) + LVT_TIMER::MODE::Periodic);
    r.timer_initial.set(initial);
    log::info!("lapic timer: {hz} Hz (initial count {initial}, divide 16)");
    Ok(())
}

/// Signals end of interrupt.
pub fn eoi() {
    if let Some(r) = regs() {
        r.eoi.set(0);
    }
}

/// MSI message address for this CPU's local APIC (SDM Vol. 3A §11.11.1):
/// 0xFEE in bits 31:20, destination APIC ID in bits 19:12, physical mode.
pub fn msi_address() -> u32 {
    0xFEE0_0000 | (id() << 12)
}

/// This CPU's local APIC ID (xAPIC: ID register bits 31:24).
pub fn id() -> u32 {
    regs().map_or(0, |r| r.id.get() >> 24)
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
    let target = iommu::MsiTarget { vector, cpu: id() };
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
