//! Device table entries (§2.2.2, "Device Table Entry Format"): 32 bytes per
//! DeviceID, written as four little-endian 64-bit words.
//!
//! Only these fields are used (everything else stays zero, so no reserved bit
//! is ever set and qword 3 is always 0, as QEMU 10.0 requires):
//! - qword 0: V (bit 0), TV (bit 1), Mode (bits 11:9: 0 = no translation,
//!   1–6 = levels of the host page table), Host Page Table Root Pointer
//!   (bits 51:12), IR (bit 61), IW (bit 62).
//! - qword 1: DomainID (bits 15:0), the tag of IOTLB entries.
//! - qword 2: interrupt remapping (IV bit 0 = 0: interrupts pass unchanged).
//!
//! V = 0 means the entry is not valid: the IOMMU neither translates nor
//! checks the device's DMA. This driver never leaves an entry so: every
//! DeviceID starts [`blocked`] (default deny) and returns there on detach.
//! With V = 1, TV = 1 and Mode = 0 the DMA is not translated and IR / IW
//! decide whether reads and writes pass (QEMU 10.0 `amdvi_page_walk`, label
//! `no_remap`): both set is the identity domain. The blocked entry does not
//! rely on that reading (QEMU 10.2 lets a Mode 0 entry pass whatever IR / IW
//! say): it has IR = IW = 0 *and* Mode 1 with a root table that is all zero
//! and never written, so every DMA fails the walk at its first entry too.

/// A device table entry as four 64-bit words.
pub type Dte = [u64; 4];

/// V: the entry is valid.
pub const V: u64 = 1 << 0;
/// TV: the translation fields (Mode, root pointer) are valid.
pub const TV: u64 = 1 << 1;
/// Position of the Mode field.
pub const MODE_SHIFT: u32 = 9;
/// Host Page Table Root Pointer, bits 51:12.
pub const ROOT_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// IR: reads allowed.
pub const IR: u64 = 1 << 61;
/// IW: writes allowed.
pub const IW: u64 = 1 << 62;

/// The all-zero entry: not valid, so the device's DMA is untranslated and
/// unchecked (what firmware may leave; never written by this driver).
pub const fn untranslated() -> Dte {
    [0; 4]
}

/// The DomainID of the blocked entries every device sits in while no domain
/// holds it. No domain uses it ([`crate::driver::domain_tag`] is never 0),
/// and a blocked entry caches no translation under it.
pub const BLOCKED_TAG: u16 = 0;

/// Translation through a host page table of `levels` levels (1–6) rooted at
/// `root` (4 KiB aligned), IOTLB entries tagged `domain_id`, reads and writes
/// allowed by the entry (the page-table entries then decide per page).
pub fn paging(root: u64, levels: usize, domain_id: u16) -> Dte {
    debug_assert!((1..=6).contains(&levels), "DTE Mode must be 1-6");
    debug_assert_eq!(root & !ROOT_MASK, 0, "root must be 4 KiB aligned below 2^52");
    let q0 = V | TV | ((levels as u64 & 7) << MODE_SHIFT) | (root & ROOT_MASK) | IR | IW;
    [q0, u64::from(domain_id), 0, 0]
}

/// No translation (Mode 0), every read and write allowed: the identity domain.
pub fn identity(domain_id: u16) -> Dte {
    [V | TV | IR | IW, u64::from(domain_id), 0, 0]
}

/// No access: IR = IW = 0, and a one-level table at `empty_root` (a zeroed
/// frame nothing ever maps into): every DMA of the device is refused by
/// both the entry's permissions and the walk.
pub fn blocked(domain_id: u16, empty_root: u64) -> Dte {
    debug_assert_eq!(empty_root & !ROOT_MASK, 0, "root must be 4 KiB aligned below 2^52");
    [V | TV | 1 << MODE_SHIFT | (empty_root & ROOT_MASK), u64::from(domain_id), 0, 0]
}

/// Whether the entry is valid (V).
pub fn valid(d: &Dte) -> bool {
    d[0] & V != 0
}

/// The Mode field (0 = no translation, 1–6 = page-table levels).
pub fn mode(d: &Dte) -> u64 {
    (d[0] >> MODE_SHIFT) & 7
}

/// The DomainID field.
pub fn domain_id(d: &Dte) -> u16 {
    d[1] as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::QEMU_DTE_RESERVED;

    fn qemu_valid(d: &Dte) -> bool {
        d.iter().zip(QEMU_DTE_RESERVED).all(|(q, m)| q & m == 0)
    }

    #[test]
    fn golden_entries() {
        // V | TV | Mode 4 (bits 11:9 = 100b) | root | IR (61) | IW (62); DomainID in qword 1.
        assert_eq!(paging(0x1234_5000, 4, 7), [0x6000_0000_1234_5803, 7, 0, 0]);
        assert_eq!(paging(0xF_FFFF_FFFF_F000, 6, 0xFEFF), [0x600F_FFFF_FFFF_FC03, 0xFEFF, 0, 0]);
        assert_eq!(identity(3), [0x6000_0000_0000_0003, 3, 0, 0]);
        assert_eq!(blocked(3, 0x7000), [0x7203, 3, 0, 0]);
        assert_eq!(untranslated(), [0; 4]);
    }

    #[test]
    fn fields_read_back() {
        for levels in 1..=6 {
            let d = paging(0x8_0000_0000, levels, 0x2A);
            assert!(valid(&d) && d[0] & TV != 0);
            assert_eq!((mode(&d), domain_id(&d), d[0] & ROOT_MASK), (levels as u64, 0x2A, 0x8_0000_0000));
            assert_eq!(d[0] & (IR | IW), IR | IW);
        }
        assert_eq!(mode(&identity(1)), 0);
        assert_eq!(blocked(9, 0x7000)[0] & (IR | IW), 0, "blocked grants nothing");
        assert_eq!(mode(&blocked(9, 0x7000)), 1, "and is not a Mode 0 entry");
        assert!(!valid(&untranslated()));
    }

    #[test]
    fn no_reserved_bits_for_qemu() {
        // Every entry the driver writes passes QEMU 10.0's reserved-bit check
        // (qword 3 zero), with any DomainID the driver hands out.
        for index in 1..0x8000u16 {
            let tag = crate::driver::domain_tag(index);
            for d in
                [paging(0x000F_FFFF_FFFF_F000, 4, tag), identity(tag), blocked(tag, 0xF_FFFF_FFFF_F000), untranslated()]
            {
                assert!(qemu_valid(&d), "{d:x?} (tag {tag:#x})");
            }
        }
        // The check is real: DomainID bit 8 is what QEMU 10.0 calls reserved.
        assert!(!qemu_valid(&identity(0x100)));
    }
}
