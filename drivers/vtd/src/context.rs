//! Root, context and PASID entries: legacy mode (VT-d §9.1 root entry, §9.3
//! context entry) and scalable mode (§9.2, §9.4–§9.6).

use iommu::desc::{from_place, RAW};
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// Legacy root entry bits 63:0 (§9.1); in scalable mode each half of the
    /// root entry (bits 63:0 for devfn 0–127, 127:64 for 128–255, §9.2) has
    /// this layout too (LP/LCTP, UP/UCTP).
    pub ROOT_LO [
        /// Bit 0: present (scalable mode: LP / UP).
        P OFFSET(0) NUMBITS(1) [],
        /// Bits 63:12: context table pointer (scalable mode: LCTP / UCTP).
        CTP OFFSET(12) NUMBITS(52) []
    ],
    /// Legacy context entry bits 63:0 (§9.3).
    pub CTX_LO [
        /// Bit 0: present.
        P OFFSET(0) NUMBITS(1) [],
        /// Bit 1: fault processing disable.
        FPD OFFSET(1) NUMBITS(1) [],
        /// Bits 3:2: translation type.
        TT OFFSET(2) NUMBITS(2) [
            /// 00b: untranslated requests use second-level translation.
            SecondLevel = 0,
            /// 10b: pass-through, untranslated requests reach memory as they
            /// are (only with ECAP.PT).
            PassThrough = 2
        ],
        /// Bits 63:12: second-level page-table pointer.
        SLPTPTR OFFSET(12) NUMBITS(52) []
    ],
    /// Legacy context entry bits 127:64 (§9.3).
    pub CTX_HI [
        /// Bits 66:64: address width (1 = 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level).
        AW OFFSET(0) NUMBITS(3) [],
        /// Bits 87:72: domain identifier.
        DID OFFSET(8) NUMBITS(16) []
    ],
    /// Scalable-mode context entry bits 63:0 (§9.4).
    pub SCTX_Q0 [
        /// Bit 0: present.
        P OFFSET(0) NUMBITS(1) [],
        /// Bits 11:9: PASID directory size, 2^(PDTS + 7) entries.
        PDTS OFFSET(9) NUMBITS(3) [],
        /// Bits 63:12: PASID directory pointer.
        PASIDDIRPTR OFFSET(12) NUMBITS(52) []
    ],
    /// Scalable-mode context entry bits 127:64 (§9.4).
    pub SCTX_Q1 [
        /// Bits 83:64: the PASID requests without a PASID use (RID_PASID).
        RID_PASID OFFSET(0) NUMBITS(20) []
    ],
    /// Scalable-mode PASID directory entry (§9.5).
    pub PASID_DIR [
        /// Bit 0: present.
        P OFFSET(0) NUMBITS(1) [],
        /// Bits 63:12: scalable-mode PASID table pointer.
        SMPTBLPTR OFFSET(12) NUMBITS(52) []
    ],
    /// Scalable-mode PASID table entry bits 63:0 (§9.6).
    pub PASID_Q0 [
        /// Bit 0: present.
        P OFFSET(0) NUMBITS(1) [],
        /// Bits 4:2: address width, as in the legacy context entry.
        AW OFFSET(2) NUMBITS(3) [],
        /// Bits 8:6: PASID-granular translation type.
        PGTT OFFSET(6) NUMBITS(3) [
            /// 001b: first stage only.
            FirstStage = 1,
            /// 010b: second stage only.
            SecondStage = 2,
            /// 100b: pass-through (only with ECAP.PT).
            PassThrough = 4
        ],
        /// Bits 63:12: second-stage page-table pointer.
        SSPTPTR OFFSET(12) NUMBITS(52) []
    ],
    /// Scalable-mode PASID table entry bits 127:64 (§9.6).
    pub PASID_Q1 [
        /// Bits 79:64: domain identifier.
        DID OFFSET(0) NUMBITS(16) [],
        /// Bit 88: page snoop, every access through the entry is snooped (only with ECAP.SC).
        PGSNP OFFSET(24) NUMBITS(1) []
    ],
    /// Scalable-mode PASID table entry bits 191:128 (§9.6).
    pub PASID_Q2 [
        /// Bits 131:130: first-stage paging mode (0 = 4-level, 1 = 5-level).
        FLPM OFFSET(2) NUMBITS(2) [],
        /// Bits 191:140: first-stage page-table pointer.
        FSPTPTR OFFSET(12) NUMBITS(52) []
    ]
];

iommu::descriptor! {
    /// Legacy-mode root entry (§9.1), 128 bits.
    pub struct RootEntry {
        /// Bits 63:0.
        lo: ROOT_LO,
        /// Bits 127:64 (reserved in legacy mode).
        hi: RAW,
    }
}

iommu::descriptor! {
    /// Legacy-mode context entry (§9.3), 128 bits.
    pub struct ContextEntry {
        /// Bits 63:0.
        lo: CTX_LO,
        /// Bits 127:64.
        hi: CTX_HI,
    }
}

iommu::descriptor! {
    /// Scalable-mode context entry (§9.4), 256 bits.
    pub struct ScalableContextEntry {
        /// Bits 63:0.
        q0: SCTX_Q0,
        /// Bits 127:64.
        q1: SCTX_Q1,
        /// Bits 191:128 (reserved).
        q2: RAW,
        /// Bits 255:192 (reserved).
        q3: RAW,
    }
}

iommu::descriptor! {
    /// Scalable-mode PASID table entry (§9.6), 512 bits.
    pub struct PasidEntry {
        /// Bits 63:0.
        q0: PASID_Q0,
        /// Bits 127:64.
        q1: PASID_Q1,
        /// Bits 191:128.
        q2: PASID_Q2,
        /// Bits 255:192 (unused here).
        q3: RAW,
        /// Bits 319:256 (unused here).
        q4: RAW,
        /// Bits 383:320 (unused here).
        q5: RAW,
        /// Bits 447:384 (unused here).
        q6: RAW,
        /// Bits 511:448 (unused here).
        q7: RAW,
    }
}

/// Root entry, low 64 bits: present and the context table pointer.
pub fn root_entry(context_table: u64) -> u64 {
    let mut e = RootEntry::zeroed();
    e.lo.write(ROOT_LO::P::SET + from_place(ROOT_LO::CTP, context_table));
    e.lo.get()
}

/// Address-width encoding of the context entry for `levels` of second-level tables
/// (1 = 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level).
pub fn address_width(levels: usize) -> u64 {
    (levels as u64).saturating_sub(2)
}

/// Context entry (low, high) pointing a device at a second-level table.
pub fn context_entry(slpt_root: u64, levels: usize, domain_id: u16) -> (u64, u64) {
    let mut e = ContextEntry::zeroed();
    e.lo.write(CTX_LO::P::SET + CTX_LO::TT::SecondLevel + from_place(CTX_LO::SLPTPTR, slpt_root));
    e.hi.write(CTX_HI::AW.val(address_width(levels)) + CTX_HI::DID.val(u64::from(domain_id)));
    (e.lo.get(), e.hi.get())
}

/// Context entry (low, high) letting a device's DMA through untranslated. The
/// address width must still be one SAGAW allows; the table pointer is ignored.
pub fn context_entry_pass_through(levels: usize, domain_id: u16) -> (u64, u64) {
    let mut e = ContextEntry::zeroed();
    e.lo.write(CTX_LO::P::SET + CTX_LO::TT::PassThrough);
    e.hi.write(CTX_HI::AW.val(address_width(levels)) + CTX_HI::DID.val(u64::from(domain_id)));
    (e.lo.get(), e.hi.get())
}

/// Whether the legacy context entry whose low qword is `lo` is present.
pub fn context_present(lo: u64) -> bool {
    ContextEntry::from_words([lo, 0]).lo.is_set(CTX_LO::P)
}

/// Scalable-mode root entry half (§9.2): present (bit 0) and a 128-entry context table.
pub fn scalable_root_half(context_table: u64) -> u64 {
    root_entry(context_table)
}

/// Scalable-mode context entry (§9.4), four qwords: present, PASID directory
/// of 128 entries (PDTS = 0), RID_PASID = 0 (requests without PASID use PASID 0).
pub fn scalable_context_entry(pasid_dir: u64) -> [u64; 4] {
    let mut e = ScalableContextEntry::zeroed();
    e.q0.write(SCTX_Q0::P::SET + SCTX_Q0::PDTS.val(0) + from_place(SCTX_Q0::PASIDDIRPTR, pasid_dir));
    e.q1.write(SCTX_Q1::RID_PASID.val(0));
    e.to_words()
}

/// PASID directory entry (§9.5): present and the 64-entry PASID table.
pub fn pasid_dir_entry(pasid_table: u64) -> u64 {
    let mut e = iommu::desc::Word::<PASID_DIR::Register>::new(0);
    e.write(PASID_DIR::P::SET + from_place(PASID_DIR::SMPTBLPTR, pasid_table));
    e.get()
}

/// PASID-granular translation type "second stage only" (§9.6, PGTT = 010b).
pub const PGTT_SECOND_STAGE: u64 = 2;

/// Scalable-mode PASID table entry (§9.6), eight qwords, for second-stage
/// translation through `slpt_root` with `levels` levels in domain `domain_id`.
pub fn pasid_entry_second_stage(slpt_root: u64, levels: usize, domain_id: u16) -> [u64; 8] {
    let mut e = PasidEntry::zeroed();
    e.q0.write(
        PASID_Q0::P::SET
            + PASID_Q0::AW.val(address_width(levels))
            + PASID_Q0::PGTT::SecondStage
            + from_place(PASID_Q0::SSPTPTR, slpt_root),
    );
    e.q1.write(PASID_Q1::DID.val(u64::from(domain_id)));
    e.to_words()
}

/// PASID-granular translation type "first stage only" (§9.6, PGTT = 001b).
pub const PGTT_FIRST_STAGE: u64 = 1;

/// Scalable-mode PASID table entry for first-stage translation (x86 paging
/// format, 4 levels: FLPM = 0, or 5 levels: FLPM = 1, needs CAP.FL5LP)
/// through `flpt_root` in domain `domain_id`, with PGSNP when `snoop`.
pub fn pasid_entry_first_stage(flpt_root: u64, levels: usize, domain_id: u16, snoop: bool) -> [u64; 8] {
    let mut e = PasidEntry::zeroed();
    // AW describes the input space too (QEMU checks first-stage IOVAs for
    // canonical form against it).
    e.q0.write(PASID_Q0::P::SET + PASID_Q0::AW.val(address_width(levels)) + PASID_Q0::PGTT::FirstStage);
    e.q1.write(PASID_Q1::DID.val(u64::from(domain_id)) + PASID_Q1::PGSNP.val(u64::from(snoop)));
    e.q2.write(PASID_Q2::FLPM.val((levels as u64).saturating_sub(4)) + from_place(PASID_Q2::FSPTPTR, flpt_root));
    e.to_words()
}

/// PASID-granular translation type "pass-through" (§9.6, PGTT = 100b, only with ECAP.PT).
pub const PGTT_PASS_THROUGH: u64 = 4;

/// Scalable-mode PASID table entry letting requests through untranslated in domain `domain_id`.
pub fn pasid_entry_pass_through(levels: usize, domain_id: u16) -> [u64; 8] {
    let mut e = PasidEntry::zeroed();
    e.q0.write(PASID_Q0::P::SET + PASID_Q0::AW.val(address_width(levels)) + PASID_Q0::PGTT::PassThrough);
    e.q1.write(PASID_Q1::DID.val(u64::from(domain_id)));
    e.to_words()
}

/// Whether the PASID table entry whose first qword is `q0` is present.
pub fn pasid_entry_present(q0: u64) -> bool {
    PasidEntry::from_words([q0, 0, 0, 0, 0, 0, 0, 0]).q0.is_set(PASID_Q0::P)
}

/// The domain ID of the PASID table entry whose second qword is `q1`.
pub fn pasid_entry_domain(q1: u64) -> u16 {
    PasidEntry::from_words([0, q1, 0, 0, 0, 0, 0, 0]).q1.read(PASID_Q1::DID) as u16
}

/// A legacy context entry (low, high) decoded for the trace (§9.3):
/// ` (P=1 TT=second-level SLPTPTR=0x... AW=2 DID=0x1)`.
pub struct Decoded(pub u64, pub u64);

impl core::fmt::Display for Decoded {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (lo, hi) = (self.0, self.1);
        write!(
            f,
            " (P={} TT={} SLPTPTR={:#x} AW={} DID={:#x})",
            lo & 1,
            ["second-level", "dev-tlb", "pass-through", "reserved"][((lo >> 2) & 3) as usize],
            lo & !0xFFF,
            hi & 7,
            (hi >> 8) & 0xFFFF
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(root_entry(0x5000), 0x5001);
        assert_eq!(context_entry(0x9000, 4, 3), (0x9001, 0x302));
        assert_eq!(context_entry(0x9000, 3, 1), (0x9001, 0x101));
        assert_eq!(scalable_context_entry(0x7000), [0x7001, 0, 0, 0]);
        assert_eq!(pasid_dir_entry(0x8000), 0x8001);
        assert_eq!(pasid_entry_second_stage(0xA000, 4, 7)[..2], [0xA000 | 0x80 | 0x8 | 1, 7]);
        assert_eq!(pasid_entry_first_stage(0xB000, 4, 2, false)[..3], [0x49, 2, 0xB000]);
        assert_eq!(pasid_entry_first_stage(0xB000, 5, 2, true)[..3], [0x4D, 1 << 24 | 2, 0xB004]);
        assert_eq!(context_entry_pass_through(4, 5), (0b1001, 0x502));
        assert_eq!(pasid_entry_pass_through(3, 6)[..2], [0x100 | 0x4 | 1, 6]);
        assert_eq!(scalable_root_half(0x6000), 0x6001);
        assert_eq!(
            (PGTT_FIRST_STAGE, PGTT_SECOND_STAGE, PGTT_PASS_THROUGH),
            (
                PASID_Q0::PGTT::FirstStage.value >> 6,
                PASID_Q0::PGTT::SecondStage.value >> 6,
                PASID_Q0::PGTT::PassThrough.value >> 6
            )
        );
    }

    #[test]
    fn present_bits_and_domain_ids_decode() {
        assert!(context_present(context_entry(0x9000, 4, 3).0));
        assert!(!context_present(0x9000));
        let pe = pasid_entry_second_stage(0xA000, 4, 0x1234);
        assert!(pasid_entry_present(pe[0]) && !pasid_entry_present(0));
        assert_eq!(pasid_entry_domain(pe[1]), 0x1234);
        assert_eq!(pasid_entry_domain(1 << 24 | 7), 7, "PGSNP is not part of the DID");
    }
}
