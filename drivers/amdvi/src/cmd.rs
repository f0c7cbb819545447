//! Command buffer entries (§2.4, "Commands"): 16 bytes each ([`Command`],
//! typed with [`iommu::descriptor!`]), the opcode in bits 63:60 of the
//! first 64-bit word. The fields of every command this driver sends are
//! named in [`CMD0`] and [`CMD1`], each with its command's section.

use iommu::desc::{from_place, in_place};
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// Command bits 63:0 (§2.4).
    pub CMD0 [
        /// COMPLETION_WAIT bit 0, S: store `StoreData` at the store address (§2.4.1).
        CW_S OFFSET(0) NUMBITS(1) [],
        /// COMPLETION_WAIT bits 51:3, StoreAddress: address bits 51:3 of the store (§2.4.1).
        CW_STORE_ADDR OFFSET(3) NUMBITS(49) [],
        /// INVALIDATE_DEVTAB_ENTRY (§2.4.2) and INVALIDATE_INTERRUPT_TABLE
        /// (§2.4.5) bits 15:0, DeviceID.
        DEVICE_ID OFFSET(0) NUMBITS(16) [],
        /// INVALIDATE_IOMMU_PAGES bits 47:32, DomainID (§2.4.3).
        DOMAIN_ID OFFSET(32) NUMBITS(16) [],
        /// Bits 63:60, the opcode (§2.4).
        OPCODE OFFSET(60) NUMBITS(4) []
    ],
    /// Command bits 127:64 (§2.4).
    pub CMD1 [
        /// INVALIDATE_IOMMU_PAGES bit 64, S: the address encodes a range (§2.4.3).
        PAGES_S OFFSET(0) NUMBITS(1) [],
        /// INVALIDATE_IOMMU_PAGES bit 65, PDE: cached page-directory entries too (§2.4.3).
        PAGES_PDE OFFSET(1) NUMBITS(1) [],
        /// INVALIDATE_IOMMU_PAGES bits 127:76, Address: address bits 63:12 (§2.4.3).
        PAGES_ADDRESS OFFSET(12) NUMBITS(52) []
    ]
];

iommu::descriptor! {
    /// A command buffer entry (§2.4): two 64-bit words.
    pub struct Command {
        /// Bits 63:0: the opcode and the first operands.
        w0: CMD0,
        /// Bits 127:64: the rest (COMPLETION_WAIT's StoreData is all of it, §2.4.1).
        w1: CMD1,
    }
}

/// COMPLETION_WAIT opcode (§2.4.1).
pub const COMPLETION_WAIT: u64 = 0x1;
/// INVALIDATE_DEVTAB_ENTRY opcode (§2.4.2).
pub const INVALIDATE_DEVTAB_ENTRY: u64 = 0x2;
/// INVALIDATE_IOMMU_PAGES opcode (§2.4.3).
pub const INVALIDATE_IOMMU_PAGES: u64 = 0x3;
/// INVALIDATE_INTERRUPT_TABLE opcode (§2.4.5).
pub const INVALIDATE_INTERRUPT_TABLE: u64 = 0x5;
/// INVALIDATE_IOMMU_ALL opcode (§2.4.8).
pub const INVALIDATE_IOMMU_ALL: u64 = 0x8;

/// The opcode of a command.
pub fn opcode(c: &Command) -> u64 {
    c.w0.read(CMD0::OPCODE)
}

/// COMPLETION_WAIT (§2.4.1) with the store bit (S): once every earlier
/// command has completed, the IOMMU writes `data` to the 8-byte aligned
/// `store_pa` (address bits 51:3 in word 0, data in word 1). No interrupt (I),
/// no flush-queue (F).
pub fn completion_wait(store_pa: u64, data: u64) -> Command {
    debug_assert_eq!(store_pa % 8, 0, "the store address is 8-byte aligned");
    let mut c = Command::zeroed();
    c.w0.write(CMD0::OPCODE.val(COMPLETION_WAIT) + from_place(CMD0::CW_STORE_ADDR, store_pa) + CMD0::CW_S::SET);
    c.w1.set(data);
    c
}

/// The store address of a COMPLETION_WAIT (§2.4.1).
pub fn store_address(c: &Command) -> u64 {
    in_place(c.w0, CMD0::CW_STORE_ADDR)
}

/// INVALIDATE_DEVTAB_ENTRY (§2.4.2): the IOMMU forgets what it cached of
/// DeviceID `devid`'s DTE.
pub fn invalidate_devtab_entry(devid: u16) -> Command {
    let mut c = Command::zeroed();
    c.w0.write(CMD0::OPCODE.val(INVALIDATE_DEVTAB_ENTRY) + CMD0::DEVICE_ID.val(u64::from(devid)));
    c
}

/// INVALIDATE_INTERRUPT_TABLE (§2.4.5): the IOMMU forgets what it cached of
/// DeviceID `devid`'s interrupt table. Needed after every change of an entry
/// the IOMMU may have seen. QEMU refuses it with any of word 0 bits 59:16 or
/// word 1 set (`amdvi_inval_inttable`); none are.
pub fn invalidate_interrupt_table(devid: u16) -> Command {
    let mut c = Command::zeroed();
    c.w0.write(CMD0::OPCODE.val(INVALIDATE_INTERRUPT_TABLE) + CMD0::DEVICE_ID.val(u64::from(devid)));
    c
}

/// The address operand of INVALIDATE_IOMMU_PAGES (§2.4.3): one 4 KiB page
/// (S = 0), or with S = 1 a naturally aligned power-of-two range whose size
/// the address itself encodes: counting from bit 12, the first zero bit at
/// position 12 + n means a range of 2^(13 + n) bytes (bit 12 clear: 8 KiB;
/// bits 19:12 set and bit 20 clear: 2 MiB). Bits 62:12 set with bit 63 clear
/// means the whole 64-bit space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    /// Address field (bits 63:12; the low 12 bits are zero).
    pub address: u64,
    /// S: `address` encodes a range larger than 4 KiB.
    pub size: bool,
}

impl PageRange {
    /// Every address of the domain.
    pub const ALL: PageRange = PageRange { address: 0x7FFF_FFFF_FFFF_F000, size: true };

    /// The smallest naturally aligned power-of-two range covering
    /// `[start, end)` (`end > start`; an empty range counts as its first page).
    pub fn covering(start: u64, end: u64) -> PageRange {
        let last = end.saturating_sub(1).max(start);
        // Bits in which the first and last address differ: the range must span them.
        let span = 64 - (start ^ last).leading_zeros();
        match span {
            0..=12 => PageRange { address: start & !0xFFF, size: false },
            64 => PageRange::ALL,
            k => {
                let base = start & !((1u64 << k) - 1);
                // Bits 12..k-2 set, bit k-1 clear: 2^k bytes.
                PageRange { address: (base | ((1u64 << (k - 1)) - 1)) & !0xFFF, size: true }
            }
        }
    }

    /// First byte covered.
    pub fn start(&self) -> u64 {
        if !self.size {
            return self.address;
        }
        match self.len() {
            None => 0,
            Some(len) => self.address & !(len - 1),
        }
    }

    /// Bytes covered (`None`: all 2^64).
    pub fn len(&self) -> Option<u64> {
        if !self.size {
            return Some(4096);
        }
        let ones = (self.address >> 12).trailing_ones();
        1u64.checked_shl(13 + ones)
    }

    /// Whether the range is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// INVALIDATE_IOMMU_PAGES (§2.4.3) for domain `domain_id`, no PASID (GN = 0):
/// the IOMMU drops cached translations of `range`; with `pde` also the cached
/// page-directory entries (needed when tables were freed).
pub fn invalidate_iommu_pages(domain_id: u16, range: PageRange, pde: bool) -> Command {
    let mut c = Command::zeroed();
    c.w0.write(CMD0::OPCODE.val(INVALIDATE_IOMMU_PAGES) + CMD0::DOMAIN_ID.val(u64::from(domain_id)));
    c.w1.write(
        from_place(CMD1::PAGES_ADDRESS, range.address)
            + CMD1::PAGES_PDE.val(u64::from(pde))
            + CMD1::PAGES_S.val(u64::from(range.size)),
    );
    c
}

/// The DomainID of an INVALIDATE_IOMMU_PAGES (§2.4.3).
pub fn pages_domain(c: &Command) -> u16 {
    c.w0.read(CMD0::DOMAIN_ID) as u16
}

/// INVALIDATE_IOMMU_ALL (§2.4.8; EFR.IASup): every cached DTE, translation
/// and interrupt-table entry.
pub fn invalidate_iommu_all() -> Command {
    let mut c = Command::zeroed();
    c.w0.write(CMD0::OPCODE.val(INVALIDATE_IOMMU_ALL));
    c
}

/// Name of a command's opcode, for trace lines.
pub fn opcode_name(c: &Command) -> &'static str {
    match opcode(c) {
        0x1 => "COMPLETION_WAIT",
        0x2 => "INVALIDATE_DEVTAB_ENTRY",
        0x3 => "INVALIDATE_IOMMU_PAGES",
        0x4 => "INVALIDATE_IOTLB_PAGES",
        0x5 => "INVALIDATE_INTERRUPT_TABLE",
        0x6 => "PREFETCH_IOMMU_PAGES",
        0x7 => "COMPLETE_PPR_REQUEST",
        0x8 => "INVALIDATE_IOMMU_ALL",
        _ => "?",
    }
}

/// Decodes a command buffer entry by the spec's names (AMD IOMMU spec
/// §2.4.1–§2.4.9, "Commands"): its name, then its fields, e.g.
/// `COMPLETION_WAIT (S=1 I=0 F=0 StoreAddr=0x1000 StoreData=0x3)`.
pub fn decode(w: &[u64; 2], out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let (w0, w1) = (w[0], w[1]);
    let c = Command::from_words(*w);
    out.write_str(match opcode(&c) {
        0x0 => "reserved",
        _ => opcode_name(&c),
    })?;
    let bit = |v: u64, n: u32| (v >> n) & 1;
    match opcode(&c) {
        // §2.4.1
        COMPLETION_WAIT => write!(
            out,
            " (S={} I={} F={} StoreAddr={:#x} StoreData={w1:#x})",
            bit(w0, 0),
            bit(w0, 1),
            bit(w0, 2),
            w0 & 0x000F_FFFF_FFFF_FFF8
        ),
        // §2.4.2, §2.4.5
        INVALIDATE_DEVTAB_ENTRY | INVALIDATE_INTERRUPT_TABLE => write!(out, " (DeviceID={:#06x})", w0 & 0xFFFF),
        // §2.4.3
        INVALIDATE_IOMMU_PAGES => write!(
            out,
            " (DomainID={:#x} PASID={:#x} S={} PDE={} GN={} Address={:#x})",
            (w0 >> 32) & 0xFFFF,
            w0 & 0xF_FFFF,
            bit(w1, 0),
            bit(w1, 1),
            bit(w1, 2),
            w1 & !0xFFF
        ),
        // §2.4.4
        0x4 => write!(
            out,
            " (DeviceID={:#06x} Queueid={:#x} S={} Address={:#x})",
            w0 & 0xFFFF,
            (w0 >> 48) & 0xFFFF,
            bit(w1, 0),
            w1 & !0xFFF
        ),
        // §2.4.8
        INVALIDATE_IOMMU_ALL => Ok(()),
        _ => write!(out, " ({w0:#018x} {w1:#018x})"),
    }
}

#[cfg(test)]
mod tests {
    fn decoded(c: super::Command) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        super::decode(&c.to_words(), &mut s).unwrap();
        s
    }

    #[test]
    fn commands_decode_by_spec_names() {
        use super::*;
        assert_eq!(decoded(completion_wait(0x1000, 3)), "COMPLETION_WAIT (S=1 I=0 F=0 StoreAddr=0x1000 StoreData=0x3)");
        assert_eq!(decoded(invalidate_devtab_entry(0x10)), "INVALIDATE_DEVTAB_ENTRY (DeviceID=0x0010)");
        assert_eq!(decoded(invalidate_interrupt_table(0x8)), "INVALIDATE_INTERRUPT_TABLE (DeviceID=0x0008)");
        assert_eq!(
            decoded(invalidate_iommu_pages(2, PageRange::ALL, true)),
            "INVALIDATE_IOMMU_PAGES (DomainID=0x2 PASID=0x0 S=1 PDE=1 GN=0 Address=0x7ffffffffffff000)"
        );
        assert_eq!(decoded(invalidate_iommu_all()), "INVALIDATE_IOMMU_ALL");
        let mut s = alloc::string::String::new();
        decode(&[0x9 << 60, 7], &mut s).unwrap();
        assert_eq!(s, "? (0x9000000000000000 0x0000000000000007)");
    }

    #[test]
    fn registers_decode_by_spec_names() {
        let d = |name, v| {
            let mut s = alloc::string::String::new();
            crate::regs::decode(name, v, &mut s).unwrap();
            s
        };
        assert_eq!(d("Control", 0x1405), "IommuEn EventLogEn Coherent CmdBufEn");
        assert_eq!(d("CmdTail", 0x30), "offset=0x30 (entry 3)");
        assert_eq!(d("Status", 1), "EventOverflow cleared");
        assert_eq!(d("CmdBufBase", 8 << 56 | 0x1234_5000), "Base=0x12345000 Len=2^8");
        assert_eq!(d("DevTabBase", 0x1234_5000 | 0x1FF), "Base=0x12345000 Size=512 pages");
    }
    use super::*;
    use crate::fake::qemu_accepts;

    #[test]
    fn golden_words() {
        // S = 1, address bits 51:3, opcode 1 in bits 63:60, data in word 1.
        assert_eq!(completion_wait(0x1234_5678, 0xABCD).to_words(), [0x1000_0000_1234_5679, 0xABCD]);
        assert_eq!(store_address(&completion_wait(0x1234_5678, 0xABCD)), 0x1234_5678);
        assert_eq!(invalidate_devtab_entry(0x00A0).to_words(), [0x2000_0000_0000_00A0, 0]);
        assert_eq!(invalidate_interrupt_table(0x00A0).to_words(), [0x5000_0000_0000_00A0, 0]);
        assert_eq!(invalidate_iommu_all().to_words(), [0x8000_0000_0000_0000, 0]);
        // DomainID in bits 47:32 of word 0; S bit 0, PDE bit 1 of word 1.
        let one_page = invalidate_iommu_pages(5, PageRange::covering(0x20_3000, 0x20_4000), false);
        assert_eq!((one_page.to_words(), pages_domain(&one_page)), ([0x3000_0005_0000_0000, 0x20_3000], 5));
        let eight_k = invalidate_iommu_pages(5, PageRange::covering(0x20_2000, 0x20_4000), false);
        assert_eq!(eight_k.w1.get(), 0x20_2001, "8 KiB: bit 12 clear, S set");
        let two_m = invalidate_iommu_pages(0xFEFF, PageRange::covering(0x4000_0000, 0x4020_0000), true);
        assert_eq!(
            two_m.to_words(),
            [0x3000_FEFF_0000_0000, 0x400F_F003],
            "2 MiB: bits 19:12 set, bit 20 clear, PDE, S"
        );
        let all = invalidate_iommu_pages(1, PageRange::ALL, true);
        assert_eq!(all.w1.get(), 0x7FFF_FFFF_FFFF_F003);
    }

    #[test]
    fn qemu_parses_them() {
        // QEMU reads the completion store address as bits 51:3 of word 0 (`amdvi_completion_wait`).
        let c = completion_wait(0x000F_FFFF_FFFF_FFF8, 7);
        let w0 = c.w0.get();
        assert_eq!((w0 >> 3 & ((1 << 49) - 1)) << 3, 0x000F_FFFF_FFFF_FFF8);
        for c in [
            c,
            completion_wait(0x1000, u64::MAX),
            invalidate_devtab_entry(0xFFFF),
            invalidate_iommu_pages(0xFEFF, PageRange::ALL, true),
            invalidate_iommu_pages(1, PageRange::covering(0x1234_5000, 0x1234_6000), false),
            invalidate_iommu_all(),
        ] {
            assert!(qemu_accepts(&c), "{} {:x?}", opcode_name(&c), c.to_words());
        }
        assert!(!qemu_accepts(&Command::from_words([0xF << 60, 0])));
        assert_eq!(opcode_name(&invalidate_iommu_all()), "INVALIDATE_IOMMU_ALL");
    }

    #[test]
    fn unaligned_ranges_get_the_covering_power_of_two() {
        // Pages 0x1000 and 0x2000: the aligned block holding both is 16 KiB at 0.
        let r = PageRange::covering(0x1000, 0x3000);
        assert_eq!((r.address, r.size, r.start(), r.len()), (0x1000, true, 0, Some(0x4000)));
        // Across the 2^47 boundary: 2^48 bytes from 0.
        let r = PageRange::covering((1 << 47) - 0x1000, (1 << 47) + 0x1000);
        assert_eq!((r.start(), r.len()), (0, Some(1 << 48)));
        // An empty range is its first page.
        assert_eq!(PageRange::covering(0x5000, 0x5000), PageRange { address: 0x5000, size: false });
        assert_eq!(PageRange::covering(0, u64::MAX), PageRange::ALL);
        assert_eq!(PageRange::ALL.len(), None);
    }

    #[test]
    fn covering_is_minimal() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let start = (x >> 16) & 0x0000_FFFF_FFFF_F000;
            let len = ((x & 0xFFFF) + 1) << (x % 20);
            let end = start + len;
            let r = PageRange::covering(start, end);
            let size = r.len().unwrap();
            assert!(size.is_power_of_two() && r.start().is_multiple_of(size), "{r:?}");
            assert!(r.start() <= start && end - 1 <= r.start() + (size - 1), "{start:#x}..{end:#x}: {r:?}");
            // No aligned block of half the size holds the whole range.
            if size > 4096 {
                let half = size / 2;
                assert_ne!(start / half, (end - 1) / half, "{start:#x}..{end:#x}: {r:?} is not minimal");
            }
        }
    }
}
