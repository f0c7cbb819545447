//! Stream table entries and level-1 stream table descriptors (SMMUv3 §5.2).
//! An STE is eight 64-bit words; only the first four carry fields used here.

/// An STE, as eight little-endian 64-bit words.
pub type Ste = [u64; 8];

/// STE.Config: what the stream does (§5.2, STE.Config).
const CONFIG_ABORT: u64 = 0b000;
const CONFIG_BYPASS: u64 = 0b100;
const CONFIG_S1: u64 = 0b101;
const CONFIG_S2: u64 = 0b110;

fn word0(config: u64) -> u64 {
    1 | config << 1 // V
}

/// Incoming shareability used for bypass streams (STE.SHCFG = 01, word 1 bits 45:44).
const SHCFG_INCOMING: u64 = 1 << 44;

/// A valid STE that terminates every transaction silently (Config = abort).
pub fn abort() -> Ste {
    [word0(CONFIG_ABORT), 0, 0, 0, 0, 0, 0, 0]
}

/// A valid STE letting transactions through untranslated.
pub fn bypass() -> Ste {
    [word0(CONFIG_BYPASS), SHCFG_INCOMING, 0, 0, 0, 0, 0, 0]
}

/// Stage-1 translation through the single context descriptor at `cd`
/// (S1Fmt = linear, S1CDMax = 0: no substreams). The CD, table walks are
/// write-back cacheable, inner shareable (S1CIR/S1COR = 01, S1CSH = 11).
pub fn stage1(cd: u64) -> Ste {
    let w0 = word0(CONFIG_S1) | (cd & 0x000F_FFFF_FFFF_FFC0);
    let w1 = 1 << 2 | 1 << 4 | 3 << 6;
    [w0, w1, 0, 0, 0, 0, 0, 0]
}

/// Stage-2 parameters of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage2 {
    /// VMID tagging its TLB entries.
    pub vmid: u16,
    /// Root of the stage-2 tables.
    pub ttb: u64,
    /// Input (IPA) bits: 64 - S2T0SZ.
    pub ias: u32,
    /// Lookup levels (3 or 4, 4 KiB granule).
    pub levels: usize,
    /// Output size encoding (IDR5.OAS).
    pub ps: u32,
}

/// Stage-2 translation (4 KiB granule, AArch64 tables, faults recorded).
pub fn stage2(s2: Stage2) -> Ste {
    // S2SL0 with a 4 KiB granule: 0 = start at level 2, 1 = level 1, 2 = level 0.
    let sl0 = (s2.levels as u64).saturating_sub(2);
    let w2 = u64::from(s2.vmid)
        | u64::from(64 - s2.ias) << 32 // S2T0SZ
        | sl0 << 38
        | 1 << 40 // S2IR0: write-back
        | 1 << 42 // S2OR0
        | 3 << 44 // S2SH0: inner shareable
        // S2TG = 00: 4 KiB
        | u64::from(s2.ps & 7) << 48
        | 1 << 51 // S2AA64 (0 would abort QEMU, QEMU.md G6)
        | 1 << 58; // S2R: record faults
    let w3 = s2.ttb & 0x000F_FFFF_FFFF_FFF0;
    [word0(CONFIG_S2), 0, w2, w3, 0, 0, 0, 0]
}

/// Level-1 stream table descriptor pointing at a level-2 table of
/// 2^(`split`) STEs (§5.1: L2Ptr 51:6, Span 4:0 = split + 1).
pub fn l1_descriptor(l2: u64, split: u32) -> u64 {
    (l2 & 0x000F_FFFF_FFFF_FFC0) | u64::from(split + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(abort()[0], 1);
        assert_eq!(bypass()[..2], [0b1001, 1 << 44]);
        let s1 = stage1(0x4000_1000);
        assert_eq!(s1[0], 0x4000_1000 | 0b1011);
        assert_eq!(s1[1], 0xD4);
        let s2 = stage2(Stage2 { vmid: 5, ttb: 0x4020_0000, ias: 39, levels: 3, ps: 4 });
        assert_eq!(s2[0], 0b1101);
        assert_eq!(s2[2] & 0xFFFF, 5);
        assert_eq!(s2[2] >> 32 & 0x3F, 25, "S2T0SZ");
        assert_eq!(s2[2] >> 38 & 3, 1, "S2SL0: start at level 1");
        assert_eq!(s2[2] >> 48 & 7, 4, "S2PS");
        assert_eq!(s2[2] >> 51 & 1, 1, "S2AA64");
        assert_eq!(s2[2] >> 58 & 1, 1, "S2R");
        assert_eq!(s2[3], 0x4020_0000);
        assert_eq!(l1_descriptor(0x4003_0000, 6), 0x4003_0007);
    }
}
