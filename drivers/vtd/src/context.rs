//! Legacy-mode root and context entries (VT-d §9.1 root entry, §9.3 context entry).

/// Root entry, low 64 bits: present (bit 0) and the context table pointer.
pub fn root_entry(context_table: u64) -> u64 {
    context_table | 1
}

/// Translation type "untranslated requests use second-level translation" (TT = 00b).
const TT_SECOND_LEVEL: u64 = 0;

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
