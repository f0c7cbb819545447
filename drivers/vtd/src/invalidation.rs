//! Invalidation: the queued-invalidation interface (VT-d §6.5.2) with
//! context-cache, IOTLB and wait descriptors, and the choice of granularity.

use crate::regs::FSTS;
use iommu::desc::{from_place, RAW};
use tock_registers::register_bitfields;

/// Descriptor type: context-cache invalidate (§6.5.2.1).
pub const CONTEXT_CACHE: u64 = 1;
/// Descriptor type: IOTLB invalidate (§6.5.2.3).
pub const IOTLB: u64 = 2;
/// Descriptor type: invalidation wait (§6.5.2.8).
pub const WAIT: u64 = 5;
/// Descriptor type: PASID-cache invalidate (§6.5.2.2), scalable mode.
pub const PASID_CACHE: u64 = 7;

register_bitfields![u64,
    /// Context-cache invalidate descriptor bits 63:0 (§6.5.2.1).
    pub CC_LO [
        /// Bits 3:0: descriptor type (1).
        TYPE OFFSET(0) NUMBITS(4) [],
        /// Bits 5:4: granularity.
        G OFFSET(4) NUMBITS(2) [
            /// 01b: global.
            Global = 1,
            /// 10b: domain-selective.
            Domain = 2,
            /// 11b: device-selective.
            Device = 3
        ],
        /// Bits 31:16: domain ID.
        DID OFFSET(16) NUMBITS(16) []
    ],
    /// PASID-cache invalidate descriptor bits 63:0 (§6.5.2.2).
    pub PC_LO [
        /// Bits 3:0: descriptor type (7).
        TYPE OFFSET(0) NUMBITS(4) [],
        /// Bits 5:4: granularity.
        G OFFSET(4) NUMBITS(2) [
            /// 00b: domain-selective, every PASID of a domain.
            DomainSelective = 0,
            /// 01b: PASID-selective within a domain (the PASID in bits 51:32).
            PasidSelective = 1,
            /// 11b: global.
            Global = 3
        ],
        /// Bits 31:16: domain ID.
        DID OFFSET(16) NUMBITS(16) []
    ],
    /// IOTLB invalidate descriptor bits 63:0 (§6.5.2.3).
    pub IOTLB_LO [
        /// Bits 3:0: descriptor type (2).
        TYPE OFFSET(0) NUMBITS(4) [],
        /// Bits 5:4: granularity.
        G OFFSET(4) NUMBITS(2) [
            /// 01b: global.
            Global = 1,
            /// 10b: domain-selective.
            Domain = 2,
            /// 11b: page-selective within a domain.
            Page = 3
        ],
        /// Bit 6: drain writes.
        DW OFFSET(6) NUMBITS(1) [],
        /// Bit 7: drain reads.
        DR OFFSET(7) NUMBITS(1) [],
        /// Bits 31:16: domain ID.
        DID OFFSET(16) NUMBITS(16) []
    ],
    /// IOTLB invalidate descriptor bits 127:64 (§6.5.2.3).
    pub IOTLB_HI [
        /// Bits 69:64: address mask, 2^AM pages.
        AM OFFSET(0) NUMBITS(6) [],
        /// Bits 127:76: address (page number).
        ADDR OFFSET(12) NUMBITS(52) []
    ],
    /// Invalidation wait descriptor bits 63:0 (§6.5.2.8).
    pub WAIT_LO [
        /// Bits 3:0: descriptor type (5).
        TYPE OFFSET(0) NUMBITS(4) [],
        /// Bit 4: interrupt flag (not used: QEMU aborts on SW with IF, QEMU.md G5).
        IF OFFSET(4) NUMBITS(1) [],
        /// Bit 5: status write.
        SW OFFSET(5) NUMBITS(1) [],
        /// Bits 63:32: status data.
        STATUS_DATA OFFSET(32) NUMBITS(32) []
    ],
    /// Invalidation wait descriptor bits 127:64 (§6.5.2.8).
    pub WAIT_HI [
        /// Bits 127:66: status address, 4-byte aligned.
        STATUS_ADDR OFFSET(2) NUMBITS(62) []
    ]
];

iommu::descriptor! {
    /// Context-cache invalidate descriptor (§6.5.2.1).
    pub struct ContextCacheDesc {
        /// Bits 63:0.
        lo: CC_LO,
        /// Bits 127:64 (unused here).
        hi: RAW,
    }
}

iommu::descriptor! {
    /// PASID-cache invalidate descriptor (§6.5.2.2).
    pub struct PasidCacheDesc {
        /// Bits 63:0.
        lo: PC_LO,
        /// Bits 127:64 (unused here).
        hi: RAW,
    }
}

iommu::descriptor! {
    /// IOTLB invalidate descriptor (§6.5.2.3).
    pub struct IotlbDesc {
        /// Bits 63:0.
        lo: IOTLB_LO,
        /// Bits 127:64.
        hi: IOTLB_HI,
    }
}

iommu::descriptor! {
    /// Invalidation wait descriptor (§6.5.2.8).
    pub struct WaitDesc {
        /// Bits 63:0.
        lo: WAIT_LO,
        /// Bits 127:64.
        hi: WAIT_HI,
    }
}

/// A 128-bit descriptor (low, high).
pub type Descriptor = (u64, u64);

fn pair(words: [u64; 2]) -> Descriptor {
    (words[0], words[1])
}

/// Global context-cache invalidation.
pub fn context_global() -> Descriptor {
    let mut d = ContextCacheDesc::zeroed();
    d.lo.write(CC_LO::TYPE.val(CONTEXT_CACHE) + CC_LO::G::Global);
    pair(d.to_words())
}

/// PASID-cache invalidation for domain `did` (granularity 01b,
/// PASID-selective within the domain, with PASID 0: RID_PASID, the only
/// PASID this driver's entries use, so every PASID entry of the domain).
pub fn pasid_cache_domain(did: u16) -> Descriptor {
    let mut d = PasidCacheDesc::zeroed();
    d.lo.write(PC_LO::TYPE.val(PASID_CACHE) + PC_LO::G::PasidSelective + PC_LO::DID.val(u64::from(did)));
    pair(d.to_words())
}

/// IOTLB invalidation draining reads and writes, with granularity `g`.
fn iotlb(g: tock_registers::fields::FieldValue<u64, IOTLB_LO::Register>, did: u16) -> IotlbDesc {
    let mut d = IotlbDesc::zeroed();
    d.lo.write(
        IOTLB_LO::TYPE.val(IOTLB) + g + IOTLB_LO::DR::SET + IOTLB_LO::DW::SET + IOTLB_LO::DID.val(u64::from(did)),
    );
    d
}

/// Domain-selective IOTLB invalidation, draining reads and writes.
pub fn iotlb_domain(did: u16) -> Descriptor {
    pair(iotlb(IOTLB_LO::G::Domain, did).to_words())
}

/// Global IOTLB invalidation.
pub fn iotlb_global() -> Descriptor {
    pair(iotlb(IOTLB_LO::G::Global, 0).to_words())
}

/// Page-selective IOTLB invalidation of 2^`am` pages at `addr` (aligned to that size).
pub fn iotlb_pages(did: u16, addr: u64, am: u32) -> Descriptor {
    let mut d = iotlb(IOTLB_LO::G::Page, did);
    d.hi.write(from_place(IOTLB_HI::ADDR, addr) + IOTLB_HI::AM.val(u64::from(am)));
    pair(d.to_words())
}

/// Wait descriptor: the unit writes `status` to `status_pa` when all earlier descriptors are done
/// (SW only: QEMU aborts on SW together with IF, QEMU.md G5).
pub fn wait(status: u32, status_pa: u64) -> Descriptor {
    let mut d = WaitDesc::zeroed();
    d.lo.write(WAIT_LO::TYPE.val(WAIT) + WAIT_LO::SW::SET + WAIT_LO::STATUS_DATA.val(u64::from(status)));
    d.hi.write(from_place(WAIT_HI::STATUS_ADDR, status_pa));
    pair(d.to_words())
}

/// The spec's short name of descriptor type `t` (VT-d §6.5.2, Table 20):
/// bits 3:0 and 11:9 of the low word.
pub fn type_name(t: u64) -> &'static str {
    match t {
        1 => "cc_inv",
        2 => "iotlb_inv",
        3 => "dev_tlb_inv",
        4 => "iec_inv",
        5 => "inv_wait",
        6 => "p_iotlb_inv",
        7 => "pc_inv",
        8 => "p_dev_tlb_inv",
        _ => "reserved",
    }
}

/// A 128-bit invalidation descriptor's type (bits 3:0, and 11:9 as bits 6:4).
pub fn descriptor_type(lo: u64) -> u64 {
    (lo & 0xF) | ((lo >> 9) & 0x7) << 4
}

/// Decodes a 128-bit invalidation descriptor by the spec's names (VT-d
/// §6.5.2.1–§6.5.2.8): its type, then its fields, e.g.
/// `inv_wait (SW=1 IF=0 FN=0 SDATA=0x1 SADDR=0x7f000)`.
pub fn decode(lo: u64, hi: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let t = descriptor_type(lo);
    let g = (lo >> 4) & 3;
    let did = (lo >> 16) & 0xFFFF;
    let bit = |w: u64, n: u32| (w >> n) & 1;
    write!(out, "{}", type_name(t))?;
    match t {
        // §6.5.2.1
        CONTEXT_CACHE => write!(
            out,
            " (G={} DID={did:#x} SID={:#06x} FM={})",
            ["reserved", "global", "domain", "device"][g as usize],
            (lo >> 32) & 0xFFFF,
            (lo >> 48) & 3
        ),
        // §6.5.2.3
        IOTLB => write!(
            out,
            " (G={} DR={} DW={} DID={did:#x} ADDR={:#x} IH={} AM={})",
            ["reserved", "global", "domain", "page"][g as usize],
            bit(lo, 7),
            bit(lo, 6),
            hi & !0xFFF,
            bit(hi, 6),
            hi & 0x3F
        ),
        // §6.5.2.5
        3 => write!(
            out,
            " (SID={:#06x} MIP={} PFSID={:#x} ADDR={:#x} S={})",
            (lo >> 32) & 0xFFFF,
            (lo >> 16) & 0x1F,
            ((lo >> 12) & 0xF) | ((lo >> 52) & 0xFFF) << 4,
            hi & !0xFFF,
            bit(hi, 0)
        ),
        // §6.5.2.7
        4 => {
            if bit(lo, 4) == 0 {
                write!(out, " (G=global)")
            } else {
                write!(out, " (G=index IM={} IIDX={:#x})", (lo >> 27) & 0x1F, (lo >> 32) & 0xFFFF)
            }
        }
        // §6.5.2.8
        WAIT => write!(
            out,
            " (SW={} IF={} FN={} PD={} SDATA={:#x} SADDR={:#x})",
            bit(lo, 5),
            bit(lo, 4),
            bit(lo, 6),
            bit(lo, 7),
            lo >> 32,
            hi & !3
        ),
        // §6.5.2.4
        6 => write!(
            out,
            " (G={} DID={did:#x} PASID={:#x} ADDR={:#x} IH={} AM={})",
            ["reserved", "reserved", "pasid", "page"][g as usize],
            (lo >> 32) & 0xF_FFFF,
            hi & !0xFFF,
            bit(hi, 6),
            hi & 0x3F
        ),
        // §6.5.2.2
        PASID_CACHE => write!(
            out,
            " (G={} DID={did:#x} PASID={:#x})",
            ["domain", "pasid", "reserved", "global"][g as usize],
            (lo >> 32) & 0xF_FFFF
        ),
        // §6.5.2.6
        8 => write!(
            out,
            " (SID={:#06x} PASID={:#x} ADDR={:#x})",
            (lo >> 32) & 0xFFFF,
            (lo >> 32) & 0xF_FFFF,
            hi & !0xFFF
        ),
        _ => write!(out, " ({lo:#018x} {hi:#018x})"),
    }
}

/// The smallest address mask covering `[start, end)` with one aligned block,
/// or `None` when it would exceed `mamv` (then invalidate the whole domain).
pub fn address_mask(start: u64, end: u64, mamv: u32) -> Option<(u64, u32)> {
    (0..=mamv).find_map(|am| {
        let size = 4096u64 << am;
        let base = start & !(size - 1);
        (base.checked_add(size)? >= end).then_some((base, am))
    })
}

/// An error the unit reported about its invalidation queue in FSTS (§6.5.2.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// IQE: the descriptor at IQH is invalid (unknown type or reserved bits
    /// set); the unit stopped fetching at it.
    InvalidDescriptor,
    /// ITE: a device-TLB invalidation was not answered in time; the unit
    /// dropped the wait descriptors still pending.
    TimeOut,
    /// ICE: a device-TLB invalidation completion was invalid.
    Completion,
}

impl QueueError {
    /// The first error FSTS reports, checked in the order IQE, ITE, ICE.
    pub fn from_fsts(fsts: u32) -> Option<Self> {
        [QueueError::InvalidDescriptor, QueueError::TimeOut, QueueError::Completion]
            .into_iter()
            .find(|e| fsts & e.fsts_bit() != 0)
    }

    /// Its write-1-to-clear bit in FSTS.
    pub fn fsts_bit(self) -> u32 {
        match self {
            QueueError::InvalidDescriptor => FSTS::IQE::SET.value,
            QueueError::Completion => FSTS::ICE::SET.value,
            QueueError::TimeOut => FSTS::ITE::SET.value,
        }
    }

    /// Spec name and meaning.
    pub fn name(self) -> &'static str {
        match self {
            QueueError::InvalidDescriptor => "IQE (invalid descriptor)",
            QueueError::TimeOut => "ITE (device-TLB invalidation time-out)",
            QueueError::Completion => "ICE (invalid device-TLB invalidation completion)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(context_global(), (0x11, 0));
        assert_eq!(iotlb_domain(5), (0x2 | 0x20 | 0xC0 | 5 << 16, 0));
        assert_eq!(iotlb_pages(1, 0x20_0000, 9), (0x2 | 0x30 | 0xC0 | 1 << 16, 0x20_0009));
        assert_eq!(wait(7, 0x1000), (0x5 | 0x20 | 7 << 32, 0x1000));
        assert_eq!(pasid_cache_domain(3), (0x7 | 0x10 | 3 << 16, 0));
    }

    fn decoded(d: Descriptor) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        decode(d.0, d.1, &mut s).unwrap();
        s
    }

    #[test]
    fn descriptors_decode_by_spec_names() {
        assert_eq!(decoded(context_global()), "cc_inv (G=global DID=0x0 SID=0x0000 FM=0)");
        assert_eq!(decoded(iotlb_domain(5)), "iotlb_inv (G=domain DR=1 DW=1 DID=0x5 ADDR=0x0 IH=0 AM=0)");
        assert_eq!(
            decoded(iotlb_pages(1, 0x20_0000, 9)),
            "iotlb_inv (G=page DR=1 DW=1 DID=0x1 ADDR=0x200000 IH=0 AM=9)"
        );
        assert_eq!(decoded(wait(7, 0x1000)), "inv_wait (SW=1 IF=0 FN=0 PD=0 SDATA=0x7 SADDR=0x1000)");
        assert_eq!(decoded(pasid_cache_domain(3)), "pc_inv (G=pasid DID=0x3 PASID=0x0)");
        assert_eq!(decoded(crate::intremap::iec_global()), "iec_inv (G=global)");
        assert_eq!(decoded(crate::intremap::iec_selective(0x20, 4).unwrap()), "iec_inv (G=index IM=4 IIDX=0x20)");
        // Type bits 11:9 count: 0x200 | 0 is type 0x10, reserved.
        assert_eq!(decoded((0x200, 0)), "reserved (0x0000000000000200 0x0000000000000000)");
        assert_eq!(descriptor_type(0x205), 0x15);
    }

    #[test]
    fn registers_decode_by_spec_names() {
        let d = |name, v| {
            let mut s = alloc::string::String::new();
            crate::regs::decode(name, v, &mut s).unwrap();
            s
        };
        assert_eq!(d("GCMD", 0x8400_0000), "TE QIE");
        assert_eq!(d("GCMD", 0x4000_0000), "SRTP");
        assert_eq!(d("RTADDR", 0x1234_5000 | 1 << 10), "RTA=0x12345000 TTM=scalable");
        assert_eq!(d("IQA", 0x7_7000), "IQA=0x77000 DW=0 QS=0");
        assert_eq!(d("IQT", 0x50), "QT=5");
        assert_eq!(d("FSTS", 0x11), "PFO IQE cleared");
        assert_eq!(d("FRCD_HI", 0x8000_0000), "F cleared");
        assert_eq!(d("CCMD", 1 << 63 | 1 << 61), "ICC=1 CIRG=global DID=0x0");
        assert_eq!(d("IOTLB", 1 << 63 | 2 << 60 | 3 << 48 | 7 << 32), "IVT=1 IIRG=domain DR=1 DW=1 DID=0x7");
        assert_eq!(d("FEDATA", 0x41), "");
    }

    #[test]
    fn queue_errors_decode_from_fsts() {
        assert_eq!(QueueError::from_fsts(0), None);
        assert_eq!(QueueError::from_fsts(0b11), None, "fault bits are not queue errors");
        assert_eq!(QueueError::from_fsts(1 << 4), Some(QueueError::InvalidDescriptor));
        assert_eq!(QueueError::from_fsts(1 << 5), Some(QueueError::Completion));
        assert_eq!(QueueError::from_fsts(1 << 6), Some(QueueError::TimeOut));
        assert_eq!(QueueError::from_fsts(0x70), Some(QueueError::InvalidDescriptor));
        for e in [QueueError::InvalidDescriptor, QueueError::TimeOut, QueueError::Completion] {
            assert_eq!(QueueError::from_fsts(e.fsts_bit()), Some(e));
        }
    }

    #[test]
    fn masks_cover_the_range() {
        assert_eq!(address_mask(0x20_0000, 0x20_1000, 18), Some((0x20_0000, 0)));
        assert_eq!(address_mask(0x20_0000, 0x40_0000, 18), Some((0x20_0000, 9)));
        assert_eq!(address_mask(0x1F_F000, 0x20_1000, 18), Some((0, 10)), "straddling a 2M boundary");
        assert_eq!(address_mask(0, 1 << 40, 18), None, "beyond MAMV");
        for (s, e) in [(0x3000u64, 0x9000u64), (0x7FF_F000, 0x800_1000)] {
            let (b, am) = address_mask(s, e, 30).unwrap();
            assert!(b <= s && b + (4096 << am) >= e);
        }
    }
}
