//! Stream table entries and level-1 stream table descriptors (SMMUv3 §5.2).
//! An STE is eight 64-bit words; only the first four carry fields used here.

/// An STE, as eight little-endian 64-bit words.
pub type Ste = [u64; 8];

/// Words of an STE (§5.2: 64 bytes).
pub const STE_WORDS: usize = 8;

/// Whether an STE whose word 0 is `word0` is valid (V, bit 0).
pub fn valid(word0: u64) -> bool {
    word0 & w0::V != 0
}

/// STE.Config (word 0 bits 3:1, §5.2): no traffic passes.
pub const CONFIG_ABORT: u64 = 0b000;
/// STE.Config: both stages bypassed.
pub const CONFIG_BYPASS: u64 = 0b100;
/// STE.Config: stage 1 translates, stage 2 bypassed.
pub const CONFIG_S1: u64 = 0b101;
/// STE.Config: stage 1 bypassed, stage 2 translates.
pub const CONFIG_S2: u64 = 0b110;
/// STE.Config: both stages translate (nesting).
pub const CONFIG_NESTED: u64 = 0b111;

/// STE word 0 fields (§5.2).
pub mod w0 {
    /// V: the STE is valid.
    pub const V: u64 = 1;
    /// Config, bits 3:1.
    pub const CONFIG: u64 = 0b111 << 1;
    /// S1Fmt, bits 5:4: CD table format (IGNORED when S1CDMax = 0).
    pub const S1FMT: u64 = 0b11 << 4;
    /// S1ContextPtr, bits 51:6 (this driver's 52-bit limit of the 55:6 field).
    pub const S1_CONTEXT_PTR: u64 = 0x000F_FFFF_FFFF_FFC0;
    /// S1CDMax, bits 63:59: log2 of the number of CDs (0: one, no substreams).
    pub const S1CDMAX: u64 = 0x1F << 59;
}

/// STE word 1 fields (§5.2, bits 127:64 of the STE).
pub mod w1 {
    /// S1DSS, bits 1:0: default substream (IGNORED when S1CDMax = 0).
    pub const S1DSS: u64 = 0b11;
    /// S1CIR, bits 3:2: inner cacheability of CD fetches.
    pub const S1CIR: u64 = 0b11 << 2;
    /// S1COR, bits 5:4: outer cacheability of CD fetches.
    pub const S1COR: u64 = 0b11 << 4;
    /// S1CSH, bits 7:6: shareability of CD fetches.
    pub const S1CSH: u64 = 0b11 << 6;
    /// S1STALLD, bit 27: stage-1 stalls disallowed.
    pub const S1STALLD: u64 = 1 << 27;
    /// EATS, bits 29:28: ATS translation requests.
    pub const EATS: u64 = 0b11 << 28;
}

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

/// A nested STE (Config = 0b111, §5.2; §3.3.4 two-stage translation): the
/// stage-1 fields of `s1` (words 0 and 1 as a nested child's owner gave them,
/// already checked: S1Fmt, S1ContextPtr, S1CDMax, S1DSS, S1CIR, S1COR, S1CSH,
/// S1STALLD) over the stage 2 of `s2`, exactly as [`stage2`] writes it
/// (S2VMID, S2T0SZ, S2SL0, S2IR0/S2OR0/S2SH0, S2TG, S2PS, S2AA64, S2R, S2TTB).
/// The context-descriptor pointer is an IPA the SMMU translates through that
/// stage 2. Everything else the kernel decides: EATS = 0 (no ATS), STRW = 0
/// (IGNORED with stage 2: NS-EL1), SHCFG and the other overrides 0. S2PTW stays
/// clear: the stage-2 tables map task memory as Device-nGnRE (no
/// `Perms::CACHE`), and S2PTW = 1 would fault every CD fetch from it.
pub fn nested(s1: [u64; 2], s2: Stage2) -> Ste {
    let w0 = word0(CONFIG_NESTED) | s1[0] & (w0::S1FMT | w0::S1_CONTEXT_PTR | w0::S1CDMAX);
    let w1 = s1[1] & (w1::S1DSS | w1::S1CIR | w1::S1COR | w1::S1CSH | w1::S1STALLD);
    let s2 = stage2(s2);
    [w0, w1, s2[2], s2[3], 0, 0, 0, 0]
}

/// Whether an STE translates at stage 1 (Config = 0b101 or 0b111), so that
/// the SMMU may have cached a CD under its stream (§4.3.3).
pub fn translates_stage1(entry: &Ste) -> bool {
    entry[0] & w0::V != 0 && (entry[0] & w0::CONFIG) >> 1 & CONFIG_S1 == CONFIG_S1
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

    #[test]
    fn which_entries_translate_at_stage_1() {
        let s2 = stage2(Stage2 { vmid: 1, ttb: 0x1000, ias: 39, levels: 3, ps: 4 });
        assert!(translates_stage1(&stage1(0x1000)));
        assert!(translates_stage1(&nested(
            [1 | CONFIG_S1 << 1, 0],
            Stage2 { vmid: 1, ttb: 0, ias: 39, levels: 3, ps: 4 }
        )));
        assert!(!translates_stage1(&s2));
        assert!(!translates_stage1(&bypass()));
        assert!(!translates_stage1(&abort()));
        assert!(!translates_stage1(&[CONFIG_S1 << 1, 0, 0, 0, 0, 0, 0, 0]), "invalid");
    }

    /// Golden words: a guest's stage-1 STE (S1 translate, CD at IPA
    /// 0x8000_0040, CD fetches write-back inner shareable) over a parent with
    /// VMID 5, 3-level 39-bit stage 2 at 0x4020_0000, 44-bit output.
    #[test]
    fn nested_entry_composition() {
        let user = [0x8000_0040 | CONFIG_S1 << 1 | 1, 0xD4];
        let s2 = Stage2 { vmid: 5, ttb: 0x4020_0000, ias: 39, levels: 3, ps: 4 };
        let got = nested(user, s2);
        assert_eq!(got[0], 0x0000_0000_8000_004F, "V, Config 0b111, S1ContextPtr");
        assert_eq!(got[1], 0xD4, "S1CIR = S1COR = 01, S1CSH = 11; EATS, STRW, SHCFG 0");
        // S2VMID 5 | S2T0SZ 25 | S2SL0 1 | S2IR0 1 | S2OR0 1 | S2SH0 3 | S2PS 4 | S2AA64 | S2R
        assert_eq!(got[2], 0x040C_3559_0000_0005);
        assert_eq!(got[3], 0x4020_0000, "S2TTB");
        assert_eq!(got[4..], [0; 4]);
        // The parent's stage-2 words are exactly those of its own STE.
        assert_eq!(got[2..4], stage2(s2)[2..4]);
        // Only stage-1 fields of the user words survive (callers check first;
        // this is the second line of defence).
        let noisy = nested([user[0] | 0x7F << 52, user[1] | w1::EATS | 3 << 30 | 1 << 44], s2);
        assert_eq!(noisy[..2], got[..2]);
        // S1CDMax, S1Fmt, S1DSS and S1STALLD are carried over.
        let more = nested([user[0] | 2 << 59 | 1 << 4, user[1] | 2 | w1::S1STALLD], s2);
        assert_eq!(more[0], got[0] | 2 << 59 | 1 << 4);
        assert_eq!(more[1], got[1] | 2 | 1 << 27);
    }
}
