//! GTDT — Generic Timer Description Table (ACPI 6.5 §5.2.25): the interrupts
//! of the Arm generic timer's per-CPU timers. Only the fixed part is read;
//! platform timers (GT blocks, watchdogs) are not needed by the kernel.

use crate::{check_header, Bytes, TableError};

/// Fixed-part length (up to and including the EL2 timer flags).
const FIXED_LEN: usize = 80;

/// One per-CPU timer: its interrupt (GSIV = GIC INTID of a PPI) and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerIrq {
    /// Global system interrupt vector (0 = not provided).
    pub gsiv: u32,
    /// Bit 0: edge triggered; bit 1: active low; bit 2 (secure timer): always on.
    pub flags: u32,
}

/// The per-CPU timer interrupts of a GTDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtdt {
    /// Secure EL1 physical timer.
    pub secure_el1: TimerIrq,
    /// Non-secure EL1 physical timer.
    pub nonsecure_el1: TimerIrq,
    /// EL1 virtual timer (the one the kernel uses).
    pub virtual_el1: TimerIrq,
    /// Non-secure EL2 physical timer.
    pub el2: TimerIrq,
}

/// Parses a GTDT image.
pub fn parse(data: &[u8]) -> Result<Gtdt, TableError> {
    let t = check_header(data, b"GTDT", FIXED_LEN)?;
    let r = Bytes(t);
    let irq = |off: usize| -> Result<TimerIrq, TableError> {
        let truncated = TableError::Truncated { needed: off + 8, available: t.len() };
        Ok(TimerIrq { gsiv: r.u32(off).ok_or(truncated)?, flags: r.u32(off + 4).ok_or(truncated)? })
    };
    Ok(Gtdt { secure_el1: irq(48)?, nonsecure_el1: irq(56)?, virtual_el1: irq(64)?, el2: irq(72)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mutate, table};

    /// A GTDT as QEMU virt builds it (hw/arm/virt-acpi-build.c): PPIs 29, 30, 27, 26, level triggered.
    fn qemu_virt() -> Vec<u8> {
        let mut body = vec![0u8; 60];
        body[0..8].copy_from_slice(&u64::MAX.to_le_bytes()); // CntControlBase: none
        for (off, gsiv) in [(12usize, 29u32), (20, 30), (28, 27), (36, 26)] {
            body[off..off + 4].copy_from_slice(&gsiv.to_le_bytes());
            body[off + 4..off + 8].copy_from_slice(&0u32.to_le_bytes());
        }
        body[44..52].copy_from_slice(&u64::MAX.to_le_bytes()); // CntReadBase: none
        table(b"GTDT", 2, &body)
    }

    #[test]
    fn reads_the_timer_interrupts() {
        let g = parse(&qemu_virt()).unwrap();
        assert_eq!(g.virtual_el1, TimerIrq { gsiv: 27, flags: 0 });
        assert_eq!(g.nonsecure_el1.gsiv, 30);
        assert_eq!(g.secure_el1.gsiv, 29);
        assert_eq!(g.el2.gsiv, 26);
    }

    #[test]
    fn refuses_short_and_foreign_tables() {
        let t = qemu_virt();
        assert!(parse(&table(b"GTDT", 2, &[0; 20])).is_err(), "shorter than the fixed part");
        assert!(matches!(parse(&table(b"MADT", 2, &t[36..])), Err(TableError::BadSignature(_))));
        mutate(&t, 2000, |d| {
            let _ = parse(d);
        });
    }
}
