//! Stage-1 context descriptors (SMMUv3 §5.4): eight 64-bit words, of which the
//! first four (translation control, TTB0, TTB1, MAIR) are used.

/// A context descriptor.
pub type Cd = [u64; 8];

/// What a stage-1 domain's context descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage1 {
    /// ASID tagging its TLB entries.
    pub asid: u16,
    /// Root of the stage-1 tables (TTB0).
    pub ttb0: u64,
    /// Input bits: 64 - T0SZ.
    pub ias: u32,
    /// Intermediate physical address size encoding (IDR5.OAS).
    pub ips: u32,
    /// MAIR value (attribute index n in byte n).
    pub mair: u64,
}

/// A valid CD for 4 KiB-granule AArch64 tables through TTB0 only (EPD1 set),
/// walks write-back inner shareable, faults recorded (R) and aborted (A),
/// little-endian, no hardware access/dirty updates.
pub fn stage1(s: Stage1) -> Cd {
    let w0 = u64::from(64 - s.ias) // T0SZ
        // TG0 = 00: 4 KiB
        | 1 << 8 // IR0: write-back
        | 1 << 10 // OR0
        | 3 << 12 // SH0: inner shareable
        | 1 << 30 // EPD1: no TTB1 walks
        | 1 << 31 // V
        | u64::from(s.ips & 7) << 32
        | 1 << 41 // AA64
        | 1 << 45 // R: record faults
        | 1 << 46 // A: abort faulting transactions (QEMU requires it)
        | u64::from(s.asid) << 48;
    [w0, s.ttb0 & 0x000F_FFFF_FFFF_FFF0, 0, s.mair, 0, 0, 0, 0]
}

/// MAIR for the stage-1 tables of this driver: index 0 normal write-back
/// read/write-allocate (0xFF), index 1 device nGnRE (0x04).
pub const MAIR: u64 = 0x04_FF;
/// MAIR index of cacheable memory in [`MAIR`].
pub const MAIR_CACHED: u8 = 0;
/// MAIR index of device memory in [`MAIR`].
pub const MAIR_DEVICE: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        let cd = stage1(Stage1 { asid: 3, ttb0: 0x4010_0000, ias: 48, ips: 4, mair: MAIR });
        assert_eq!(cd[0] & 0x3F, 16, "T0SZ");
        assert_eq!(cd[0] >> 31 & 1, 1, "V");
        assert_eq!(cd[0] >> 32 & 7, 4, "IPS");
        assert_eq!(cd[0] >> 41 & 1, 1, "AA64");
        assert_eq!(cd[0] >> 45 & 3, 3, "R and A");
        assert_eq!(cd[0] >> 48, 3, "ASID");
        assert_eq!(cd[0] >> 14 & 1, 0, "EPD0 clear");
        assert_eq!(cd[0] >> 30 & 1, 1, "EPD1 set");
        assert_eq!(cd[1], 0x4010_0000);
        assert_eq!(cd[3], 0x04FF);
    }
}
