//! Stage-1 context descriptors (SMMUv3 §5.4): eight 64-bit words, of which the
//! first four (translation control, TTB0, TTB1, MAIR) are used.

use iommu::desc::{from_place, RAW};
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// CD word 0, bits 63:0 (§5.4).
    pub CD0 [
        /// T0SZ, bits 5:0: 64 - input bits of TTB0's region (§5.4).
        T0SZ OFFSET(0) NUMBITS(6) [],
        /// TG0, bits 7:6: TTB0 granule (0 = 4 KiB; §5.4).
        TG0 OFFSET(6) NUMBITS(2) [],
        /// IR0, bits 9:8: inner cacheability of TTB0 walks (1 write-back; §5.4).
        IR0 OFFSET(8) NUMBITS(2) [],
        /// OR0, bits 11:10: outer cacheability of TTB0 walks (§5.4).
        OR0 OFFSET(10) NUMBITS(2) [],
        /// SH0, bits 13:12: shareability of TTB0 walks (3 inner shareable; §5.4).
        SH0 OFFSET(12) NUMBITS(2) [],
        /// EPD1, bit 30: no walks through TTB1 (§5.4).
        EPD1 OFFSET(30) NUMBITS(1) [],
        /// V, bit 31: the CD is valid (§5.4).
        V OFFSET(31) NUMBITS(1) [],
        /// IPS, bits 34:32: intermediate physical address size (IDR5.OAS encoding; §5.4).
        IPS OFFSET(32) NUMBITS(3) [],
        /// AA64, bit 41: AArch64 tables (§5.4).
        AA64 OFFSET(41) NUMBITS(1) [],
        /// R, bit 45: record faults (§5.4).
        R OFFSET(45) NUMBITS(1) [],
        /// A, bit 46: abort faulting transactions (§5.4; QEMU requires it).
        A OFFSET(46) NUMBITS(1) [],
        /// ASID, bits 63:48 (§5.4).
        ASID OFFSET(48) NUMBITS(16) []
    ],
    /// CD word 1, bits 127:64 (§5.4).
    pub CD1 [
        /// TTB0, bits 115:68: the stage-1 table address bits 51:4 (§5.4).
        TTB0 OFFSET(4) NUMBITS(48) []
    ]
];

iommu::descriptor! {
    /// A context descriptor (§5.4): 64 bytes.
    pub struct Cd {
        /// Bits 63:0: translation control, validity, ASID.
        w0: CD0,
        /// Bits 127:64: TTB0.
        w1: CD1,
        /// Bits 191:128: TTB1 (unused: EPD1 is set).
        w2: RAW,
        /// Bits 255:192: MAIR (MAIR0 in bits 223:192, MAIR1 in 255:224; §5.4), the whole word.
        w3: RAW,
        /// Bits 319:256 (unused here).
        w4: RAW,
        /// Bits 383:320 (unused here).
        w5: RAW,
        /// Bits 447:384 (unused here).
        w6: RAW,
        /// Bits 511:448 (unused here).
        w7: RAW,
    }
}

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
    let mut cd = Cd::zeroed();
    cd.w0.write(
        CD0::T0SZ.val(u64::from(64 - s.ias))
            + CD0::TG0.val(0)
            + CD0::IR0.val(1)
            + CD0::OR0.val(1)
            + CD0::SH0.val(3)
            + CD0::EPD1::SET
            + CD0::V::SET
            + CD0::IPS.val(u64::from(s.ips))
            + CD0::AA64::SET
            + CD0::R::SET
            + CD0::A::SET
            + CD0::ASID.val(u64::from(s.asid)),
    );
    cd.w1.write(from_place(CD1::TTB0, s.ttb0));
    cd.w3.set(s.mair);
    cd
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
        let cd = stage1(Stage1 { asid: 3, ttb0: 0x4010_0000, ias: 48, ips: 4, mair: MAIR }).to_words();
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
        // The bare-shift encoding this replaced, word for word.
        let old = 16 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 30 | 1 << 31 | 4 << 32 | 1 << 41 | 1 << 45 | 1 << 46 | 3 << 48;
        assert_eq!(cd, [old, 0x4010_0000, 0, 0x04FF, 0, 0, 0, 0]);
    }
}
