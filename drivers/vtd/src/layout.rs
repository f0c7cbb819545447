//! The check that the registers CAP and ECAP locate lie inside the register
//! window the firmware described ([`check_window`]), and where they are
//! ([`Layout`]).

use crate::error::VtdError;
use crate::regs::{FaultRecordRegisters, IotlbRegisters, CAP, ECAP, FIXED_END};

/// Where the registers the capability registers locate are, once
/// [`check_window`] found them inside the register window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of the IOTLB register pair ([`IotlbRegisters`], 16 bytes):
    /// ECAP.IRO × 16 (§10.4.3, §10.4.8).
    pub iotlb: usize,
    /// Byte offset of fault-recording register 0 ([`FaultRecordRegisters`],
    /// 16 bytes each): CAP.FRO × 16 (§10.4.2, §10.4.14).
    pub fault_records: usize,
    /// How many fault-recording registers there are: CAP.NFR + 1.
    pub fault_record_count: usize,
}

/// Checks the register offsets a unit's CAP and ECAP allege against the
/// `window` bytes of registers the firmware described (DMAR DRHD "Size":
/// 2^n 4 KiB pages, §8.3) and the kernel mapped. Hardware-supplied offsets
/// are allegations: the driver forms register addresses from them, so each
/// must stay inside the window and clear of the fixed registers.
///
/// - the fixed registers ([`crate::regs::Registers`], up to [`FIXED_END`]) fit;
/// - the IOTLB register pair, 16 bytes at ECAP.IRO × 16 (ECAP bits 17:8,
///   §10.4.3), lies in `[FIXED_END, window)`;
/// - CAP.NFR + 1 fault-recording registers of 16 bytes each from
///   CAP.FRO × 16 (CAP bits 33:24 and 47:40, §10.4.2) lie in
///   `[FIXED_END, window)`;
/// - the two do not overlap (an IOTLB invalidation must not write a fault
///   record's write-1-to-clear F bit, nor a fault clear start an invalidation).
///
/// QEMU's unit: IRO = 0xF (0xF0–0xFF), FRO = 0x22 with NFR = 0 (0x220–0x22F),
/// in the one page its DRHD describes (Size = 0).
pub fn check_window(cap: u64, ecap: u64, window: usize) -> Result<Layout, VtdError> {
    let window_bytes = window as u64;
    let outside = |register, offset: u64, end: u64| VtdError::RegisterOutsideWindow {
        register,
        offset,
        end,
        window: window_bytes,
    };
    if window_bytes < FIXED_END {
        return Err(outside("fixed registers (VER_REG..IRTA_REG)", 0, FIXED_END));
    }
    let iotlb = ECAP::IRO.read(ecap) * 16;
    let iotlb_end = iotlb + core::mem::size_of::<IotlbRegisters>() as u64;
    if iotlb < FIXED_END || iotlb_end > window_bytes {
        return Err(outside("IOTLB registers (ECAP.IRO)", iotlb, iotlb_end));
    }
    let records = CAP::FRO.read(cap) * 16;
    let count = CAP::NFR.read(cap) + 1;
    let records_end = records + count * core::mem::size_of::<FaultRecordRegisters>() as u64;
    if records < FIXED_END || records_end > window_bytes {
        return Err(outside("fault-recording registers (CAP.FRO, CAP.NFR)", records, records_end));
    }
    if iotlb < records_end && records < iotlb_end {
        return Err(VtdError::RegistersOverlap { iotlb, records, records_end });
    }
    // Every value is below 2^15 + 2^12 here (10-bit offsets, 8-bit count): the casts are exact.
    Ok(Layout { iotlb: iotlb as usize, fault_records: records as usize, fault_record_count: count as usize })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// CAP with FRO = `fro` (16-byte units) and NFR = `nfr`; ECAP with IRO = `iro`.
    fn caps(fro: u64, nfr: u64, iro: u64) -> (u64, u64) {
        ((CAP::FRO.val(fro) + CAP::NFR.val(nfr)).value, ECAP::IRO.val(iro).value)
    }

    fn outside(r: Result<Layout, VtdError>) -> (&'static str, u64, u64, u64) {
        match r {
            Err(VtdError::RegisterOutsideWindow { register, offset, end, window }) => (register, offset, end, window),
            other => panic!("expected RegisterOutsideWindow, got {other:?}"),
        }
    }

    #[test]
    fn qemu_unit_fits_its_one_page() {
        // QEMU: DMAR_IOTLB_REG_OFFSET 0xF0, DMAR_FRCD_REG_OFFSET 0x220, one record.
        let (cap, ecap) = caps(0x22, 0, 0xF);
        assert_eq!(
            check_window(cap, ecap, 0x1000),
            Ok(Layout { iotlb: 0xF0, fault_records: 0x220, fault_record_count: 1 })
        );
        // Its registers end at 0x230 (DMAR_REG_SIZE): that much is enough, one byte less is not.
        assert!(check_window(cap, ecap, 0x230).is_ok());
        assert_eq!(
            outside(check_window(cap, ecap, 0x22F)),
            ("fault-recording registers (CAP.FRO, CAP.NFR)", 0x220, 0x230, 0x22F)
        );
    }

    #[test]
    fn iotlb_registers_at_the_edge_and_one_past() {
        let (cap, _) = caps(0x20, 0, 0);
        let (_, at_edge) = caps(0, 0, 0xFF); // 0xFF0..0x1000
        assert_eq!(check_window(cap, at_edge, 0x1000).map(|l| l.iotlb), Ok(0xFF0));
        let (_, past) = caps(0, 0, 0x100); // 0x1000..0x1010
        assert_eq!(outside(check_window(cap, past, 0x1000)), ("IOTLB registers (ECAP.IRO)", 0x1000, 0x1010, 0x1000));
        // A bigger DRHD (Size = 1: two pages) holds it.
        assert_eq!(check_window(cap, past, 0x2000).map(|l| l.iotlb), Ok(0x1000));
    }

    #[test]
    fn fault_records_at_the_edge_and_one_past() {
        let (_, ecap) = caps(0, 0, 0xF);
        // 0xF00 + 16 records of 16 bytes = 0x1000 exactly.
        let (edge, _) = caps(0xF0, 15, 0);
        assert_eq!(
            check_window(edge, ecap, 0x1000),
            Ok(Layout { iotlb: 0xF0, fault_records: 0xF00, fault_record_count: 16 })
        );
        // One record more ends one record past the window.
        let (past, _) = caps(0xF0, 16, 0);
        assert_eq!(
            outside(check_window(past, ecap, 0x1000)),
            ("fault-recording registers (CAP.FRO, CAP.NFR)", 0xF00, 0x1010, 0x1000)
        );
        // Same records, one 16-byte step higher.
        let (shifted, _) = caps(0xF1, 15, 0);
        assert_eq!(outside(check_window(shifted, ecap, 0x1000)).2, 0x1010);
    }

    #[test]
    fn nfr_max_needs_a_page_of_records() {
        let (_, ecap) = caps(0, 0, 0xF);
        let (cap, _) = caps(0x10, 255, 0); // 256 records from 0x100: up to 0x1100
        assert_eq!(
            outside(check_window(cap, ecap, 0x1000)),
            ("fault-recording registers (CAP.FRO, CAP.NFR)", 0x100, 0x1100, 0x1000)
        );
        assert_eq!(check_window(cap, ecap, 0x2000).map(|l| l.fault_record_count), Ok(256));
    }

    #[test]
    fn huge_values_are_refused_not_wrapped() {
        // Every bit set: IRO = FRO = 0x3FF, NFR = 255.
        let (cap, ecap) = (u64::MAX, u64::MAX);
        assert_eq!(outside(check_window(cap, ecap, 0x1000)), ("IOTLB registers (ECAP.IRO)", 0x3FF0, 0x4000, 0x1000));
        // A window big enough for both still refuses them: they overlap.
        assert_eq!(
            check_window(cap, ecap, usize::MAX),
            Err(VtdError::RegistersOverlap { iotlb: 0x3FF0, records: 0x3FF0, records_end: 0x4FF0 })
        );
        // The largest DRHD size (2^15 pages) with the largest sane placement.
        let (cap, _) = caps(0x3FF, 255, 0);
        let (_, ecap) = caps(0, 0, 0x3FE);
        assert_eq!(check_window(cap, ecap, 0x1000 << 15).map(|l| l.fault_records), Ok(0x3FF0));
    }

    #[test]
    fn offsets_over_the_fixed_registers_are_refused() {
        // ECAP.IRO = 1 would put the IOTLB register on GCMD (0x18).
        let (cap, ecap) = caps(0x22, 0, 1);
        assert_eq!(outside(check_window(cap, ecap, 0x1000)), ("IOTLB registers (ECAP.IRO)", 0x10, 0x20, 0x1000));
        let (cap, ecap) = caps(0, 0, 0xF);
        assert_eq!(outside(check_window(cap, ecap, 0x1000)).1, 0);
        // Just above IRTA is fine.
        let (cap, ecap) = caps(FIXED_END / 16, 0, FIXED_END / 16 + 1);
        assert!(check_window(cap, ecap, 0x1000).is_ok());
        // A window smaller than the fixed registers.
        let (cap, ecap) = caps(0x22, 0, 0xF);
        assert_eq!(outside(check_window(cap, ecap, 0x80)), ("fixed registers (VER_REG..IRTA_REG)", 0, FIXED_END, 0x80));
        assert_eq!(outside(check_window(cap, ecap, 0)).3, 0);
    }

    #[test]
    fn iotlb_inside_the_fault_records_is_refused() {
        let (cap, _) = caps(0x20, 3, 0); // 0x200..0x240
        let (_, ecap) = caps(0, 0, 0x23); // 0x230..0x240
        assert_eq!(
            check_window(cap, ecap, 0x1000),
            Err(VtdError::RegistersOverlap { iotlb: 0x230, records: 0x200, records_end: 0x240 })
        );
        // Right after the last record is fine, right before the first too.
        assert!(check_window(cap, caps(0, 0, 0x24).1, 0x1000).is_ok());
        assert!(check_window(cap, caps(0, 0, 0x1F).1, 0x1000).is_ok());
    }

    #[test]
    fn the_error_names_register_offset_and_window() {
        let (cap, ecap) = caps(0x22, 0, 0x100);
        let msg = check_window(cap, ecap, 0x1000).unwrap_err().to_string();
        assert!(msg.contains("ECAP.IRO") && msg.contains("0x1000..0x1010") && msg.contains("0x1000-byte"), "{msg}");
        assert!(msg.contains("DRHD size"), "{msg}");
    }
}
