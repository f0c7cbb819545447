//! Device table entries (§2.2.2, "Device Table Entry Format"): 32 bytes per
//! DeviceID, four little-endian 64-bit words ([`Dte`], typed with
//! [`iommu::descriptor!`]), in a [`DeviceTable`] covering every DeviceID.
//!
//! Only these fields are used (everything else stays zero, so no reserved bit
//! is ever set and qword 3 is always 0, as QEMU 10.0 requires):
//! - qword 0 ([`DTE0`]): V, TV, Mode (0 = no translation, 1–6 = levels of the
//!   host page table), Host Page Table Root Pointer, IR, IW.
//! - qword 1 ([`DTE1`]): DomainID, the tag of IOTLB entries.
//! - qword 2 ([`DTE2`]): interrupt remapping (§2.2.2.2; IV = 0: interrupts
//!   pass unchanged), written by [`crate::intremap`].
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

use io_pgtable::TableMemory;
use iommu::desc::RAW;
use iommu::desc::{from_place, in_place};
use iommu::dma::DmaRegion;
use iommu::DmaMemory;
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// DTE bits 63:0 (§2.2.2.1).
    pub DTE0 [
        /// Bit 0, V: the entry is valid.
        V OFFSET(0) NUMBITS(1) [],
        /// Bit 1, TV: the translation fields (Mode, root pointer) are valid.
        TV OFFSET(1) NUMBITS(1) [],
        /// Bits 11:9, Mode: 0 = no translation, 1–6 = host page-table levels.
        MODE OFFSET(9) NUMBITS(3) [],
        /// Bits 51:12, Host Page Table Root Pointer (address bits 51:12).
        PT_ROOT OFFSET(12) NUMBITS(40) [],
        /// Bit 61, IR: reads allowed.
        IR OFFSET(61) NUMBITS(1) [],
        /// Bit 62, IW: writes allowed.
        IW OFFSET(62) NUMBITS(1) []
    ],
    /// DTE bits 127:64 (§2.2.2.1).
    pub DTE1 [
        /// Bits 79:64, DomainID: the tag of the device's IOTLB entries.
        DOMAIN_ID OFFSET(0) NUMBITS(16) []
    ],
    /// DTE bits 191:128: the interrupt remapping fields (§2.2.2.2).
    pub DTE2 [
        /// Bit 128, IV: the interrupt fields are valid (clear: interrupts pass unchanged).
        IV OFFSET(0) NUMBITS(1) [],
        /// Bits 132:129, IntTabLen: log2 of the interrupt table's entries.
        INT_TAB_LEN OFFSET(1) NUMBITS(4) [],
        /// Bit 133, IG: no IO_PAGE_FAULT events for unmapped interrupts.
        IG OFFSET(5) NUMBITS(1) [],
        /// Bits 179:134, IntTableRootPtr: address bits 51:6 of the interrupt table.
        INT_TABLE_ROOT OFFSET(6) NUMBITS(46) [],
        /// Bit 184, InitPass: INIT messages pass unchanged.
        INIT_PASS OFFSET(56) NUMBITS(1) [],
        /// Bit 185, EIntPass: ExtINT messages pass unchanged.
        EINT_PASS OFFSET(57) NUMBITS(1) [],
        /// Bit 186, NMIPass: NMI messages pass unchanged.
        NMI_PASS OFFSET(58) NUMBITS(1) [],
        /// Bits 189:188, IntCtl: 00b target abort, 01b forward, 10b remap.
        INT_CTL OFFSET(60) NUMBITS(2) [],
        /// Bit 190, Lint0Pass: LINT0 messages pass unchanged.
        LINT0_PASS OFFSET(62) NUMBITS(1) [],
        /// Bit 191, Lint1Pass: LINT1 messages pass unchanged.
        LINT1_PASS OFFSET(63) NUMBITS(1) []
    ]
];

iommu::descriptor! {
    /// A device table entry (§2.2.2): four 64-bit words.
    pub struct Dte {
        /// Bits 63:0: validity, translation mode and root, permissions.
        q0: DTE0,
        /// Bits 127:64: DomainID.
        q1: DTE1,
        /// Bits 191:128: interrupt remapping (§2.2.2.2).
        q2: DTE2,
        /// Bits 255:192: nothing this driver sets (always 0).
        q3: RAW,
    }
}

/// Page-table levels of the default paging domains (DTE Mode 4: 48-bit IOVAs).
pub const LEVELS: usize = 4;

/// The all-zero entry: not valid, so the device's DMA is untranslated and
/// unchecked (what firmware may leave; never written by this driver).
pub const fn untranslated() -> Dte {
    Dte::zeroed()
}

/// The DomainID of the blocked entries every device sits in while no domain
/// holds it. No domain uses it (`driver::domain_tag` is never 0),
/// and a blocked entry caches no translation under it.
pub const BLOCKED_TAG: u16 = 0;

fn entry(q0: tock_registers::fields::FieldValue<u64, DTE0::Register>, domain_id: u16) -> Dte {
    let mut d = Dte::zeroed();
    d.q0.write(q0);
    d.q1.write(DTE1::DOMAIN_ID.val(u64::from(domain_id)));
    d
}

/// Translation through a host page table of `levels` levels (1–6) rooted at
/// `root` (4 KiB aligned), IOTLB entries tagged `domain_id`, reads and writes
/// allowed by the entry (the page-table entries then decide per page).
pub fn paging(root: u64, levels: usize, domain_id: u16) -> Dte {
    debug_assert!((1..=6).contains(&levels), "DTE Mode must be 1-6");
    debug_assert_eq!(from_place(DTE0::PT_ROOT, root).value, root, "root must be 4 KiB aligned below 2^52");
    let q0 = DTE0::V::SET
        + DTE0::TV::SET
        + DTE0::MODE.val(levels as u64)
        + from_place(DTE0::PT_ROOT, root)
        + DTE0::IR::SET
        + DTE0::IW::SET;
    entry(q0, domain_id)
}

/// No translation (Mode 0), every read and write allowed: the identity domain.
pub fn identity(domain_id: u16) -> Dte {
    entry(DTE0::V::SET + DTE0::TV::SET + DTE0::IR::SET + DTE0::IW::SET, domain_id)
}

/// No access: IR = IW = 0, and a one-level table at `empty_root` (a zeroed
/// frame nothing ever maps into): every DMA of the device is refused by
/// both the entry's permissions and the walk.
pub fn blocked(domain_id: u16, empty_root: u64) -> Dte {
    debug_assert_eq!(from_place(DTE0::PT_ROOT, empty_root).value, empty_root, "root must be 4 KiB aligned below 2^52");
    entry(DTE0::V::SET + DTE0::TV::SET + DTE0::MODE.val(1) + from_place(DTE0::PT_ROOT, empty_root), domain_id)
}

/// Whether the entry is valid (V).
pub fn valid(d: &Dte) -> bool {
    d.q0.is_set(DTE0::V)
}

/// Whether the translation fields are valid (TV).
pub fn translation_valid(d: &Dte) -> bool {
    d.q0.is_set(DTE0::TV)
}

/// The Mode field (0 = no translation, 1–6 = page-table levels).
pub fn mode(d: &Dte) -> u64 {
    d.q0.read(DTE0::MODE)
}

/// The Host Page Table Root Pointer, as an address.
pub fn root(d: &Dte) -> u64 {
    in_place(d.q0, DTE0::PT_ROOT)
}

/// Whether the entry lets reads (IR) and writes (IW) pass.
pub fn access(d: &Dte) -> (bool, bool) {
    (d.q0.is_set(DTE0::IR), d.q0.is_set(DTE0::IW))
}

/// The DomainID field.
pub fn domain_id(d: &Dte) -> u16 {
    d.q1.read(DTE1::DOMAIN_ID) as u16
}

/// The device table (§2.2.2, Device Table Base Address register §3.4.1):
/// one DTE per 16-bit DeviceID, 2 MiB of contiguous frames.
#[derive(Debug, Clone, Copy)]
pub struct DeviceTable {
    region: DmaRegion,
}

impl DeviceTable {
    /// Frames of the table: 65536 DTEs of 32 bytes.
    pub const FRAMES: usize = 512;

    /// A zeroed table (every entry [`untranslated`]); `None` without memory.
    pub fn alloc(mem: &mut impl DmaMemory) -> Option<DeviceTable> {
        DmaRegion::alloc_contiguous(mem, Self::FRAMES).map(|region| DeviceTable { region })
    }

    /// Gives the frames back.
    pub fn free(self, mem: &mut impl DmaMemory) {
        self.region.free_contiguous(mem);
    }

    /// Physical address of the table.
    pub fn base(&self) -> u64 {
        self.region.base()
    }

    /// Word index of qword `q` of `devid`'s entry.
    fn word(devid: u16, q: usize) -> usize {
        usize::from(devid) * Dte::WORDS + q
    }

    /// `devid`'s entry as the table holds it.
    pub fn read(&self, mem: &impl TableMemory, devid: u16) -> Dte {
        // Every DeviceID's entry lies inside the table: no read is refused.
        Dte::from_words([0, 1, 2, 3].map(|q| self.region.read_u64(mem, Self::word(devid, q)).unwrap_or(0)))
    }

    /// Stores qword `q` (0–3; any other is ignored) of `devid`'s entry (one 64-bit store).
    pub fn write_qword(&self, mem: &mut impl TableMemory, devid: u16, q: usize, value: u64) {
        if q < Dte::WORDS {
            // Every DeviceID's entry lies inside the table: the store is never refused.
            let _ = self.region.write_u64(mem, Self::word(devid, q), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::QEMU_DTE_RESERVED;

    fn qemu_valid(d: &Dte) -> bool {
        d.to_words().iter().zip(QEMU_DTE_RESERVED).all(|(q, m)| q & m == 0)
    }

    #[test]
    fn golden_entries() {
        // V | TV | Mode 4 (bits 11:9 = 100b) | root | IR (61) | IW (62); DomainID in qword 1.
        assert_eq!(paging(0x1234_5000, 4, 7).to_words(), [0x6000_0000_1234_5803, 7, 0, 0]);
        assert_eq!(paging(0xF_FFFF_FFFF_F000, 6, 0xFEFF).to_words(), [0x600F_FFFF_FFFF_FC03, 0xFEFF, 0, 0]);
        assert_eq!(identity(3).to_words(), [0x6000_0000_0000_0003, 3, 0, 0]);
        assert_eq!(blocked(3, 0x7000).to_words(), [0x7203, 3, 0, 0]);
        assert_eq!(untranslated().to_words(), [0; 4]);
    }

    #[test]
    fn fields_read_back() {
        for levels in 1..=6 {
            let d = paging(0x8_0000_0000, levels, 0x2A);
            assert!(valid(&d) && translation_valid(&d));
            assert_eq!((mode(&d), domain_id(&d), root(&d)), (levels as u64, 0x2A, 0x8_0000_0000));
            assert_eq!(access(&d), (true, true));
        }
        assert_eq!(mode(&identity(1)), 0);
        assert_eq!(access(&blocked(9, 0x7000)), (false, false), "blocked grants nothing");
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
