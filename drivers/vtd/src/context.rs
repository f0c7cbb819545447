//! Root, context and PASID entries: legacy mode (VT-d §9.1 root entry, §9.3
//! context entry) and scalable mode (§9.2, §9.4–§9.6).

/// Root entry, low 64 bits: present (bit 0) and the context table pointer.
pub fn root_entry(context_table: u64) -> u64 {
    context_table | 1
}

/// Translation type "untranslated requests use second-level translation" (TT = 00b).
const TT_SECOND_LEVEL: u64 = 0;
/// Translation type "pass-through": untranslated requests reach memory as
/// they are (TT = 10b, only with ECAP.PT).
const TT_PASS_THROUGH: u64 = 2;

/// Address-width encoding of the context entry for `levels` of second-level tables
/// (1 = 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level).
pub fn address_width(levels: usize) -> u64 {
    (levels as u64).saturating_sub(2)
}

/// Context entry (low, high) pointing a device at a second-level table.
pub fn context_entry(slpt_root: u64, levels: usize, domain_id: u16) -> (u64, u64) {
    let lo = slpt_root | TT_SECOND_LEVEL << 2 | 1; // present
    let hi = address_width(levels) | u64::from(domain_id) << 8;
    (lo, hi)
}

/// Context entry (low, high) letting a device's DMA through untranslated. The
/// address width must still be one SAGAW allows; the table pointer is ignored.
pub fn context_entry_pass_through(levels: usize, domain_id: u16) -> (u64, u64) {
    let lo = TT_PASS_THROUGH << 2 | 1;
    let hi = address_width(levels) | u64::from(domain_id) << 8;
    (lo, hi)
}

/// Scalable-mode root entry half (§9.2): present (bit 0) and a 128-entry context table.
pub fn scalable_root_half(context_table: u64) -> u64 {
    context_table | 1
}

/// Scalable-mode context entry (§9.4), four qwords: present, PASID directory
/// of 128 entries (PDTS = 0), RID_PASID = 0 (requests without PASID use PASID 0).
pub fn scalable_context_entry(pasid_dir: u64) -> [u64; 4] {
    [pasid_dir | 1, 0, 0, 0]
}

/// PASID directory entry (§9.5): present and the 64-entry PASID table.
pub fn pasid_dir_entry(pasid_table: u64) -> u64 {
    pasid_table | 1
}

/// PASID-granular translation type "second stage only" (§9.6, PGTT = 010b).
pub const PGTT_SECOND_STAGE: u64 = 2;

/// Scalable-mode PASID table entry (§9.6), eight qwords, for second-stage
/// translation through `slpt_root` with `levels` levels in domain `domain_id`.
pub fn pasid_entry_second_stage(slpt_root: u64, levels: usize, domain_id: u16) -> [u64; 8] {
    let q0 = slpt_root | PGTT_SECOND_STAGE << 6 | address_width(levels) << 2 | 1;
    [q0, u64::from(domain_id), 0, 0, 0, 0, 0, 0]
}

/// PASID-granular translation type "first stage only" (§9.6, PGTT = 001b).
pub const PGTT_FIRST_STAGE: u64 = 1;

/// PASID entry bit 88 (qword 1 bit 24), PGSNP: every access of requests
/// through this entry is snooped (only with ECAP.SC).
const PGSNP: u64 = 1 << 24;

/// Scalable-mode PASID table entry for first-stage translation (x86 paging
/// format, 4 levels: FLPM = 0, or 5 levels: FLPM = 1, needs CAP.FL5LP)
/// through `flpt_root` in domain `domain_id`, with PGSNP when `snoop`.
pub fn pasid_entry_first_stage(flpt_root: u64, levels: usize, domain_id: u16, snoop: bool) -> [u64; 8] {
    // AW describes the input space too (QEMU checks first-stage IOVAs for
    // canonical form against it).
    let q0 = PGTT_FIRST_STAGE << 6 | address_width(levels) << 2 | 1;
    let q1 = u64::from(domain_id) | if snoop { PGSNP } else { 0 };
    // FLPM: qword 2 bits 3:2 (0 = 4-level, 1 = 5-level paging).
    let flpm = (levels as u64).saturating_sub(4) << 2;
    [q0, q1, flpt_root | flpm, 0, 0, 0, 0, 0]
}

/// PASID-granular translation type "pass-through" (§9.6, PGTT = 100b, only with ECAP.PT).
pub const PGTT_PASS_THROUGH: u64 = 4;

/// Scalable-mode PASID table entry letting requests through untranslated in domain `domain_id`.
pub fn pasid_entry_pass_through(levels: usize, domain_id: u16) -> [u64; 8] {
    let q0 = PGTT_PASS_THROUGH << 6 | address_width(levels) << 2 | 1;
    [q0, u64::from(domain_id), 0, 0, 0, 0, 0, 0]
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
    }
}
