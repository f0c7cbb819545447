//! Kernel tests specific to x86_64.

use ktest::{check, check_eq, TestResult};
use x86_64::registers::model_specific::Msr;
use x86_64::structures::paging::PageTableFlags;

/// Mapping the local APIC page a second time reads the same registers, uncached.
fn mmio_map_reads_device_register() -> TestResult {
    // SAFETY: reading IA32_APIC_BASE has no side effects.
    let base = unsafe { Msr::new(0x1B).read() } & 0x000F_FFFF_FFFF_F000;
    let m = kcore::mm::map_mmio(base, 0x1000);
    check!(m.is_ok(), "map_mmio failed: {:?}", m.err());
    let m = m.map_err(|_| ktest::TestError::Failed("unreachable".into()))?;
    let flags = crate::paging::leaf_flags(m.va);
    check!(flags.is_some_and(|f| f.contains(PageTableFlags::NO_CACHE)), "MMIO page not uncached: {flags:?}");
    check_eq!(crate::paging::translate(m.va), Some(base));
    // SAFETY: m.va maps the local APIC page; 0x30 is its read-only version register.
    let version = unsafe { ((m.va + 0x30) as *const u32).read_volatile() };
    check!((0x10..=0x15).contains(&(version & 0xFF)), "LAPIC version {version:#x} is not an integrated APIC");
    check!(version != u32::MAX);
    Ok(())
}

/// An I/O APIC redirection entry written (masked) reads back, and is restored.
fn irq_controller_roundtrip() -> TestResult {
    let all = crate::ioapic::all();
    check!(!all.is_empty(), "no I/O APIC was brought up");
    let io = &all[0];
    check!(io.pins >= 16, "only {} pins", io.pins);
    let pin = io.pins - 1;
    let before = io.entry(pin);
    check_eq!(before.map(|e| e & crate::ioapic::MASKED), Some(crate::ioapic::MASKED));
    let probe = crate::ioapic::MASKED | 0x4A | (1u64 << 56);
    check!(io.set_entry(pin, probe).is_ok());
    check_eq!(io.entry(pin).map(|e| e & 0xFF00_0000_0001_00FF), Some(probe));
    check!(io.set_entry(pin, before.unwrap_or(crate::ioapic::MASKED)).is_ok());
    check!(io.set_entry(io.pins, 0).is_err(), "pin out of range accepted");
    Ok(())
}

ktest::suite!(pub ARCH = "arch", [mmio_map_reads_device_register, irq_controller_roundtrip]);

/// The suites of this crate for the boot binary.
pub static SUITES: &[&ktest::Suite] = &[&ARCH];
