//! Kernel tests specific to aarch64.

use ktest::{check, check_eq, TestResult};

/// Mapping the GIC distributor a second time reads the same registers, as device memory.
fn mmio_map_reads_device_register() -> TestResult {
    let first = crate::gic::distributor_va();
    check!(first != 0, "GIC distributor not mapped");
    let pa = crate::paging::translate(first);
    check!(pa.is_some());
    let pa = pa.unwrap_or_default();
    let m = kcore::mm::map_mmio(pa, 0x1000);
    check!(m.is_ok(), "map_mmio failed: {:?}", m.err());
    let m = m.map_err(|_| ktest::TestError::Failed("unreachable".into()))?;
    check_eq!(crate::paging::attr_index(m.va), Some(0));
    // SAFETY: both addresses map the distributor page; 0x8 is GICD_IIDR, 0x4 GICD_TYPER (read-only).
    let (a, b, t) = unsafe {
        (
            ((first + 8) as *const u32).read_volatile(),
            ((m.va + 8) as *const u32).read_volatile(),
            ((m.va + 4) as *const u32).read_volatile(),
        )
    };
    check_eq!(a, b);
    check!(t != 0 && t != u32::MAX, "GICD_TYPER reads {t:#x}");
    Ok(())
}

/// A GIC distributor priority register written for the last SPI reads back, and is restored.
fn irq_controller_roundtrip() -> TestResult {
    let lines = crate::gic::lines();
    check!(lines > 32, "distributor reports {lines} lines");
    let intid = lines - 1;
    let before = crate::gic::spi_priority(intid);
    check!(before.is_some());
    // Implemented priority bits are the top ones: 0xA0 survives any implementation of >= 3 bits.
    check!(crate::gic::set_spi_priority(intid, 0xA0).is_ok());
    check_eq!(crate::gic::spi_priority(intid), Some(0xA0));
    check!(crate::gic::set_spi_priority(intid, before.unwrap_or(0)).is_ok());
    check!(crate::gic::set_spi_priority(lines, 0).is_err(), "INTID past the last line accepted");
    Ok(())
}

ktest::suite!(pub ARCH = "arch", [mmio_map_reads_device_register, irq_controller_roundtrip]);

/// The suites of this crate for the boot binary.
pub static SUITES: &[&ktest::Suite] = &[&ARCH];
