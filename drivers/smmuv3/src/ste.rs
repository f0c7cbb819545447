//! Stream table entries and level-1 stream table descriptors (SMMUv3 §5.2,
//! §5.1). An STE is eight 64-bit words; only the first four carry fields used
//! here.

use iommu::desc::{from_place, in_place, RAW};
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// STE word 0, bits 63:0 (§5.2).
    pub STE0 [
        /// V, bit 0: the STE is valid (§5.2).
        V OFFSET(0) NUMBITS(1) [],
        /// Config, bits 3:1: what the stream's transactions go through (§5.2).
        CONFIG OFFSET(1) NUMBITS(3) [
            /// No traffic passes.
            Abort = 0b000,
            /// Both stages bypassed.
            Bypass = 0b100,
            /// Stage 1 translates, stage 2 bypassed.
            Stage1 = 0b101,
            /// Stage 1 bypassed, stage 2 translates.
            Stage2 = 0b110,
            /// Both stages translate (nesting).
            Nested = 0b111
        ],
        /// S1Fmt, bits 5:4: CD table format (IGNORED when S1CDMax = 0; §5.2).
        S1FMT OFFSET(4) NUMBITS(2) [],
        /// S1ContextPtr, bits 51:6 (this driver's 52-bit limit of the 55:6 field; §5.2).
        S1_CONTEXT_PTR OFFSET(6) NUMBITS(46) [],
        /// S1ContextPtr bits 55:52 (§5.2): beyond the 52-bit addresses this driver uses.
        S1_CONTEXT_PTR_HI OFFSET(52) NUMBITS(4) [],
        /// Bits 58:56, RES0 (§5.2).
        RES0_56 OFFSET(56) NUMBITS(3) [],
        /// S1CDMax, bits 63:59: log2 of the number of CDs (0: one, no substreams; §5.2).
        S1CDMAX OFFSET(59) NUMBITS(5) []
    ],
    /// STE word 1, bits 127:64 (§5.2).
    pub STE1 [
        /// S1DSS, bits 65:64: default substream (IGNORED when S1CDMax = 0; §5.2).
        S1DSS OFFSET(0) NUMBITS(2) [],
        /// S1CIR, bits 67:66: inner cacheability of CD fetches (§5.2).
        S1CIR OFFSET(2) NUMBITS(2) [],
        /// S1COR, bits 69:68: outer cacheability of CD fetches (§5.2).
        S1COR OFFSET(4) NUMBITS(2) [],
        /// S1CSH, bits 71:70: shareability of CD fetches (§5.2).
        S1CSH OFFSET(6) NUMBITS(2) [],
        /// S2HWU59, S2HWU60, S2HWU61, S2HWU62, bits 75:72 (§5.2).
        S2HWU OFFSET(8) NUMBITS(4) [],
        /// DRE, bit 76: destructive reads (§5.2).
        DRE OFFSET(12) NUMBITS(1) [],
        /// CONT, bits 80:77: contiguous hint (§5.2).
        CONT OFFSET(13) NUMBITS(4) [],
        /// DCP, bit 81: directed cache prefetch (§5.2).
        DCP OFFSET(17) NUMBITS(1) [],
        /// PPAR, bit 82: PRI page request auto-response (§5.2).
        PPAR OFFSET(18) NUMBITS(1) [],
        /// MEV, bit 83: merge events (§5.2).
        MEV OFFSET(19) NUMBITS(1) [],
        /// SW_RESERVED, bits 87:84 (§5.2).
        SW_RESERVED OFFSET(20) NUMBITS(4) [],
        /// S1PIE, bit 88: stage-1 permission indirection (§5.2).
        S1PIE OFFSET(24) NUMBITS(1) [],
        /// S2FWB, bit 89: stage-2 forced write-back (§5.2).
        S2FWB OFFSET(25) NUMBITS(1) [],
        /// S1MPAM, bit 90 (§5.2).
        S1MPAM OFFSET(26) NUMBITS(1) [],
        /// S1STALLD, bit 91: stage-1 stalls disallowed (§5.2).
        S1STALLD OFFSET(27) NUMBITS(1) [],
        /// EATS, bits 93:92: ATS translation requests (§5.2).
        EATS OFFSET(28) NUMBITS(2) [],
        /// STRW, bits 95:94: stream world (§5.2).
        STRW OFFSET(30) NUMBITS(2) [],
        /// MemAttr, bits 99:96 (§5.2).
        MEMATTR OFFSET(32) NUMBITS(4) [],
        /// MTCFG, bit 100 (§5.2).
        MTCFG OFFSET(36) NUMBITS(1) [],
        /// ALLOCCFG, bits 104:101 (§5.2).
        ALLOCCFG OFFSET(37) NUMBITS(4) [],
        /// Bits 107:105, RES0 (§5.2).
        RES0_41 OFFSET(41) NUMBITS(3) [],
        /// SHCFG, bits 109:108: shareability override (§5.2).
        SHCFG OFFSET(44) NUMBITS(2) [
            /// Use the incoming shareability.
            Incoming = 0b01
        ],
        /// NSCFG, bits 111:110 (§5.2).
        NSCFG OFFSET(46) NUMBITS(2) [],
        /// PRIVCFG, bits 113:112 (§5.2).
        PRIVCFG OFFSET(48) NUMBITS(2) [],
        /// INSTCFG, bits 115:114 (§5.2).
        INSTCFG OFFSET(50) NUMBITS(2) [],
        /// Bits 127:116, IMPLEMENTATION DEFINED (§5.2).
        IMPDEF OFFSET(52) NUMBITS(12) []
    ],
    /// STE word 2, bits 191:128 (§5.2).
    pub STE2 [
        /// S2VMID, bits 143:128 (§5.2).
        S2VMID OFFSET(0) NUMBITS(16) [],
        /// S2T0SZ, bits 165:160: 64 - input bits (§5.2).
        S2T0SZ OFFSET(32) NUMBITS(6) [],
        /// S2SL0, bits 167:166: starting level (4 KiB granule: 0 level 2, 1 level 1, 2 level 0; §5.2).
        S2SL0 OFFSET(38) NUMBITS(2) [],
        /// S2IR0, bits 169:168: inner cacheability of walks (1 write-back; §5.2).
        S2IR0 OFFSET(40) NUMBITS(2) [],
        /// S2OR0, bits 171:170: outer cacheability of walks (§5.2).
        S2OR0 OFFSET(42) NUMBITS(2) [],
        /// S2SH0, bits 173:172: shareability of walks (3 inner shareable; §5.2).
        S2SH0 OFFSET(44) NUMBITS(2) [],
        /// S2TG, bits 175:174: granule (0 = 4 KiB; §5.2).
        S2TG OFFSET(46) NUMBITS(2) [],
        /// S2PS, bits 178:176: output size (IDR5.OAS encoding; §5.2).
        S2PS OFFSET(48) NUMBITS(3) [],
        /// S2AA64, bit 179: AArch64 tables (§5.2; 0 would abort QEMU, QEMU.md G6).
        S2AA64 OFFSET(51) NUMBITS(1) [],
        /// S2R, bit 186: record stage-2 faults (§5.2).
        S2R OFFSET(58) NUMBITS(1) []
    ],
    /// STE word 3, bits 255:192 (§5.2).
    pub STE3 [
        /// S2TTB, bits 243:196: stage-2 table address bits 51:4 (§5.2).
        S2TTB OFFSET(4) NUMBITS(48) []
    ],
    /// A level-1 stream table descriptor (§5.1).
    pub L1STD [
        /// Span, bits 4:0: the level-2 table holds 2^(Span - 1) STEs (§5.1).
        SPAN OFFSET(0) NUMBITS(5) [],
        /// L2Ptr, bits 51:6: the level-2 table (§5.1).
        L2PTR OFFSET(6) NUMBITS(46) []
    ]
];

iommu::descriptor! {
    /// A stream table entry (§5.2): 64 bytes.
    pub struct Ste {
        /// Bits 63:0: validity, Config and the stage-1 CD pointer.
        w0: STE0,
        /// Bits 127:64: CD fetch attributes and overrides.
        w1: STE1,
        /// Bits 191:128: stage-2 VMID and translation control.
        w2: STE2,
        /// Bits 255:192: the stage-2 table.
        w3: STE3,
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

/// Words of an STE (§5.2: 64 bytes).
pub const STE_WORDS: usize = Ste::WORDS;

/// Whether an STE whose word 0 is `word0` is valid (V, §5.2).
pub fn valid(word0: u64) -> bool {
    iommu::desc::Word::<STE0::Register>::new(word0).is_set(STE0::V)
}

/// A valid STE with `config` (§5.2).
fn with_config(config: tock_registers::fields::FieldValue<u64, STE0::Register>) -> Ste {
    let mut e = Ste::zeroed();
    e.w0.write(STE0::V::SET + config);
    e
}

/// A valid STE that terminates every transaction silently (Config = abort).
pub fn abort() -> Ste {
    with_config(STE0::CONFIG::Abort)
}

/// A valid STE letting transactions through untranslated, with the
/// incoming shareability (SHCFG = 01).
pub fn bypass() -> Ste {
    let mut e = with_config(STE0::CONFIG::Bypass);
    e.w1.write(STE1::SHCFG::Incoming);
    e
}

/// Stage-1 translation through the single context descriptor at `cd`
/// (S1Fmt = linear, S1CDMax = 0: no substreams). The CD, table walks are
/// write-back cacheable, inner shareable (S1CIR/S1COR = 01, S1CSH = 11).
pub fn stage1(cd: u64) -> Ste {
    let mut e = Ste::zeroed();
    e.w0.write(STE0::V::SET + STE0::CONFIG::Stage1 + from_place(STE0::S1_CONTEXT_PTR, cd));
    e.w1.write(STE1::S1CIR.val(1) + STE1::S1COR.val(1) + STE1::S1CSH.val(3));
    e
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
    let mut e = with_config(STE0::CONFIG::Stage2);
    // S2SL0 with a 4 KiB granule: 0 = start at level 2, 1 = level 1, 2 = level 0.
    let sl0 = (s2.levels as u64).saturating_sub(2);
    e.w2.write(
        STE2::S2VMID.val(u64::from(s2.vmid))
            + STE2::S2T0SZ.val(u64::from(64 - s2.ias))
            + STE2::S2SL0.val(sl0)
            + STE2::S2IR0.val(1)
            + STE2::S2OR0.val(1)
            + STE2::S2SH0.val(3)
            + STE2::S2TG.val(0)
            + STE2::S2PS.val(u64::from(s2.ps))
            + STE2::S2AA64::SET
            + STE2::S2R::SET,
    );
    e.w3.write(from_place(STE3::S2TTB, s2.ttb));
    e
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
    let user = Ste::from_words([s1[0], s1[1], 0, 0, 0, 0, 0, 0]);
    let mut e = stage2(s2);
    e.w0.write(
        STE0::V::SET
            + STE0::CONFIG::Nested
            + STE0::S1FMT.val(user.w0.read(STE0::S1FMT))
            + from_place(STE0::S1_CONTEXT_PTR, in_place(user.w0, STE0::S1_CONTEXT_PTR))
            + STE0::S1CDMAX.val(user.w0.read(STE0::S1CDMAX)),
    );
    e.w1.write(
        STE1::S1DSS.val(user.w1.read(STE1::S1DSS))
            + STE1::S1CIR.val(user.w1.read(STE1::S1CIR))
            + STE1::S1COR.val(user.w1.read(STE1::S1COR))
            + STE1::S1CSH.val(user.w1.read(STE1::S1CSH))
            + STE1::S1STALLD.val(user.w1.read(STE1::S1STALLD)),
    );
    e
}

/// Whether an STE translates at stage 1 (Config = 0b101 or 0b111), so that
/// the SMMU may have cached a CD under its stream (§4.3.3).
pub fn translates_stage1(entry: &Ste) -> bool {
    entry.w0.is_set(STE0::V)
        && matches!(
            entry.w0.read_as_enum(STE0::CONFIG),
            Some(STE0::CONFIG::Value::Stage1 | STE0::CONFIG::Value::Nested)
        )
}

/// Level-1 stream table descriptor pointing at a level-2 table of
/// 2^(`split`) STEs (§5.1: L2Ptr 51:6, Span 4:0 = split + 1).
pub fn l1_descriptor(l2: u64, split: u32) -> u64 {
    (from_place(L1STD::L2PTR, l2) + L1STD::SPAN.val(u64::from(split + 1))).value
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu::desc::field_mask;

    /// STE.Config = stage-1 translate, as a number (§5.2).
    const CONFIG_S1: u64 = 0b101;

    fn words(e: Ste) -> [u64; 8] {
        e.to_words()
    }

    #[test]
    fn encodings() {
        assert_eq!(words(abort())[0], 1);
        assert_eq!(words(bypass())[..2], [0b1001, 1 << 44]);
        let s1 = words(stage1(0x4000_1000));
        assert_eq!(s1[0], 0x4000_1000 | 0b1011);
        assert_eq!(s1[1], 0xD4);
        let s2 = words(stage2(Stage2 { vmid: 5, ttb: 0x4020_0000, ias: 39, levels: 3, ps: 4 }));
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
        assert!(!translates_stage1(&Ste::from_words([CONFIG_S1 << 1, 0, 0, 0, 0, 0, 0, 0])), "invalid");
    }

    /// Golden words: a guest's stage-1 STE (S1 translate, CD at IPA
    /// 0x8000_0040, CD fetches write-back inner shareable) over a parent with
    /// VMID 5, 3-level 39-bit stage 2 at 0x4020_0000, 44-bit output.
    #[test]
    fn nested_entry_composition() {
        let user = [0x8000_0040 | CONFIG_S1 << 1 | 1, 0xD4];
        let s2 = Stage2 { vmid: 5, ttb: 0x4020_0000, ias: 39, levels: 3, ps: 4 };
        let got = words(nested(user, s2));
        assert_eq!(got[0], 0x0000_0000_8000_004F, "V, Config 0b111, S1ContextPtr");
        assert_eq!(got[1], 0xD4, "S1CIR = S1COR = 01, S1CSH = 11; EATS, STRW, SHCFG 0");
        // S2VMID 5 | S2T0SZ 25 | S2SL0 1 | S2IR0 1 | S2OR0 1 | S2SH0 3 | S2PS 4 | S2AA64 | S2R
        assert_eq!(got[2], 0x040C_3559_0000_0005);
        assert_eq!(got[3], 0x4020_0000, "S2TTB");
        assert_eq!(got[4..], [0; 4]);
        // The parent's stage-2 words are exactly those of its own STE.
        assert_eq!(got[2..4], words(stage2(s2))[2..4]);
        // Only stage-1 fields of the user words survive (callers check first;
        // this is the second line of defence).
        let noisy = words(nested([user[0] | 0x7F << 52, user[1] | field_mask(STE1::EATS) | 3 << 30 | 1 << 44], s2));
        assert_eq!(noisy[..2], got[..2]);
        // S1CDMax, S1Fmt, S1DSS and S1STALLD are carried over.
        let more = words(nested([user[0] | 2 << 59 | 1 << 4, user[1] | 2 | field_mask(STE1::S1STALLD)], s2));
        assert_eq!(more[0], got[0] | 2 << 59 | 1 << 4);
        assert_eq!(more[1], got[1] | 2 | 1 << 27);
    }
}
