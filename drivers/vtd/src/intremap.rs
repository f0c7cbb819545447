//! Interrupt remapping building blocks (VT-d spec rev 4.x, chapter 5
//! "Interrupt Remapping", §9.10 "Interrupt Remap Table Entry (IRTE) for
//! Remapped Interrupts", §10.4.29 IRTA_REG). Hardware-free: no register is
//! touched here; the unit bring-up (IRTA, GCMD.SIRTP, GCMD.IRE) uses these.
//!
//! - [`Irte`]: the 128-bit table entry, built from [`RemappedIrte`] fields and
//!   decoded back for logs and tests, through its typed words [`IrteWords`]
//!   ([`IRTE_LO`] / [`IRTE_HI`], an [`iommu::descriptor!`]).
//! - [`msi_address`] / [`msi_data`] / [`decode_msi`]: the remappable MSI
//!   format (§5.1.2.2, [`MSI_ADDR`] / [`MSI_DATA`]) a device is programmed
//!   with instead of a destination.
//! - [`IrTable`]: a table of 2^(S+1) entries in contiguous frames, with handle
//!   allocation, and the IRTA register value ([`IrTable::irta_value`]).
//! - [`iec_global`] / [`iec_selective`]: interrupt entry cache invalidation
//!   descriptors (§6.5.2.7), needed after every [`IrTable::set`] / [`IrTable::clear`]
//!   once the table is live.
//! - [`ir_fault_name`]: fault reasons 20h–29h (§7.1.3, Appendix A), and
//!   [`fault_interrupt_index`] for the fault record of an interrupt fault.
//!
//! Facts about QEMU's model (`hw/i386/intel_iommu.c`, `vtd_interrupt_remap_msi`,
//! `vtd_irte_get`) that matter to users of this module:
//! - A compatibility-format MSI (address bit 4 clear) is delivered unchanged
//!   while IRE is set; QEMU does not implement GCMD.CFI / GSTS.CFIS, so the
//!   blocking of §5.1.4 (fault 25h) never happens there.
//! - The interrupt index is computed in 16 bits (`handle + subhandle` wraps).
//! - Faults 20h–24h and 26h are recorded in the fault-recording registers only
//!   for real MSI writes (not for KVM route pre-translation); FPD in the IRTE
//!   suppresses the recording of 22h, 24h and 26h. The interrupt is dropped.
//! - Reserved-bit check (fault 24h): low bits 14:12 and 31:24, high bits 127:84.
//!   IM (bit 15, posted format) and the xAPIC-mode reserved destination bits
//!   are not checked.

use crate::regs::GLOBAL;
use iommu::desc::{field_mask, from_place, Word, RAW};
use iommu::ids::IdAllocator;
use iommu::DmaMemory;
use tock_registers::fields::FieldValue;
use tock_registers::{register_bitfields, LocalRegisterCopy};

/// Bytes per IRTE.
pub const IRTE_BYTES: usize = 16;
/// IRTEs per 4 KiB frame.
pub const IRTES_PER_FRAME: usize = 4096 / IRTE_BYTES;
/// Largest IRTA.S value: 2^16 entries, every 16-bit handle (§10.4.29).
pub const MAX_SIZE_FIELD: u8 = 15;
/// Base of the interrupt address range, 0xFEEx_xxxx (§5.1.2): MSI address
/// bits 31:20 = FEEh.
pub const MSI_BASE: u32 = MSI_ADDR::BASE::Interrupt.value;
/// MMIO offset of the Interrupt Remapping Table Address register (§10.4.29).
pub const IRTA_OFFSET: usize = 0xB8;
/// ECAP.EIM (bit 4): the unit can remap to 32-bit x2APIC destinations
/// (§10.4.3). (`regs::ECAP` has no EIM field yet.)
pub const ECAP_EIM: u64 = 1 << 4;
/// GCMD / GSTS bit 24: set interrupt remap table pointer / its status (§10.4.4).
pub const GLOBAL_SIRTP: u32 = GLOBAL::SIRTP::SET.value;
/// GCMD / GSTS bit 23: compatibility-format interrupts allowed (CFI / CFIS, §10.4.4).
pub const GLOBAL_CFI: u32 = GLOBAL::CFI::SET.value;

register_bitfields![u64,
    /// IRTE bits 63:0, remapped format (IM = 0, §9.10). The posted format
    /// (IM = 1, §9.11) is only recognised by its IM bit, never written.
    pub IRTE_LO [
        /// Bit 0: present.
        P OFFSET(0) NUMBITS(1) [],
        /// Bit 1: fault processing disable (qualified faults not recorded).
        FPD OFFSET(1) NUMBITS(1) [],
        /// Bit 2: destination mode, 1 = logical, 0 = physical.
        DM OFFSET(2) NUMBITS(1) [],
        /// Bit 3: redirection hint.
        RH OFFSET(3) NUMBITS(1) [],
        /// Bit 4: trigger mode, 1 = level, 0 = edge.
        TM OFFSET(4) NUMBITS(1) [],
        /// Bits 7:5: delivery mode ([`DeliveryMode`]).
        DLM OFFSET(5) NUMBITS(3) [],
        /// Bits 11:8: available to software, ignored by hardware (left zero here).
        AVAIL OFFSET(8) NUMBITS(4) [],
        /// Bits 14:12: reserved (fault 24h when set).
        RSVD_14_12 OFFSET(12) NUMBITS(3) [],
        /// Bit 15: IRTE mode, 1 = posted format (§9.11), 0 = remapped.
        IM OFFSET(15) NUMBITS(1) [],
        /// Bits 23:16: vector.
        VECTOR OFFSET(16) NUMBITS(8) [],
        /// Bits 31:24: reserved (fault 24h when set).
        RSVD_31_24 OFFSET(24) NUMBITS(8) [],
        /// Bits 63:32: destination ID, a 32-bit x2APIC ID (IRTA.EIME = 1).
        DST OFFSET(32) NUMBITS(32) [],
        /// Bits 47:40 (DST[15:8]): the 8-bit xAPIC ID (IRTA.EIME = 0).
        DST_XAPIC OFFSET(40) NUMBITS(8) [],
        /// Bits 39:32 (DST[7:0]): reserved in xAPIC mode.
        RSVD_XAPIC_39_32 OFFSET(32) NUMBITS(8) [],
        /// Bits 63:48 (DST[31:16]): reserved in xAPIC mode.
        RSVD_XAPIC_63_48 OFFSET(48) NUMBITS(16) []
    ],
    /// IRTE bits 127:64 (§9.10): source validation, the same in both formats.
    pub IRTE_HI [
        /// Bits 79:64: source identifier (requester ID, or buses with SVT = 10b).
        SID OFFSET(0) NUMBITS(16) [],
        /// Bits 71:64 (SID[7:0]): with SVT = 10b, the last bus allowed.
        SID_END_BUS OFFSET(0) NUMBITS(8) [],
        /// Bits 79:72 (SID[15:8]): with SVT = 10b, the first bus allowed.
        SID_START_BUS OFFSET(8) NUMBITS(8) [],
        /// Bits 81:80: source-id qualifier ([`SourceQualifier`]).
        SQ OFFSET(16) NUMBITS(2) [],
        /// Bits 83:82: source validation type.
        SVT OFFSET(18) NUMBITS(2) [
            /// 00b: no requester-ID verification.
            NoVerification = 0,
            /// 01b: requester ID against SID, the bits SQ selects.
            RequesterId = 1,
            /// 10b: the requester's bus within SID[15:8]..=SID[7:0].
            Bus = 2
        ],
        /// Bits 127:84: reserved (fault 24h when set).
        RSVD_127_84 OFFSET(20) NUMBITS(44) []
    ],
    /// Interrupt Remapping Table Address register (§10.4.29).
    pub IRTA_REG [
        /// Bits 3:0: table size, 2^(S+1) entries.
        S OFFSET(0) NUMBITS(4) [],
        /// Bit 11: extended interrupt mode, 32-bit x2APIC destinations.
        EIME OFFSET(11) NUMBITS(1) [],
        /// Bits 63:12: table base address.
        IRTA OFFSET(12) NUMBITS(52) []
    ]
];

register_bitfields![u32,
    /// MSI address, remappable format (§5.1.2.2; programmed as §5.1.5.2
    /// describes). The upper address dword is zero.
    pub MSI_ADDR [
        /// Bit 2: handle[15].
        HANDLE_15 OFFSET(2) NUMBITS(1) [],
        /// Bit 3: subhandle valid, the data's bits 15:0 are added to the handle.
        SHV OFFSET(3) NUMBITS(1) [],
        /// Bit 4: interrupt format.
        IF OFFSET(4) NUMBITS(1) [
            /// 0: compatibility format.
            Compatibility = 0,
            /// 1: remappable format.
            Remappable = 1
        ],
        /// Bits 19:5: handle[14:0].
        HANDLE_14_0 OFFSET(5) NUMBITS(15) [],
        /// Bits 31:20: FEEh for an interrupt request.
        BASE OFFSET(20) NUMBITS(12) [
            /// FEEh.
            Interrupt = 0xFEE
        ]
    ],
    /// MSI data, remappable format with SHV = 1 (§5.1.2.2).
    pub MSI_DATA [
        /// Bits 15:0: subhandle.
        SUBHANDLE OFFSET(0) NUMBITS(16) [],
        /// Bits 31:16: reserved (fault 20h when set).
        RSVD_31_16 OFFSET(16) NUMBITS(16) []
    ]
];

iommu::descriptor! {
    /// The IRTE's two words laid out by field (§9.10); [`Irte`] is the plain
    /// (low, high) value stored in the table.
    pub struct IrteWords {
        /// Bits 63:0.
        lo: IRTE_LO,
        /// Bits 127:64.
        hi: IRTE_HI,
    }
}

/// Reserved in every remapped IRTE: bits 14:12 and 31:24. (Bits 11:8 are
/// AVAIL, ignored by hardware; this module leaves them zero.)
const LO_RESERVED: u64 = field_mask(IRTE_LO::RSVD_14_12) | field_mask(IRTE_LO::RSVD_31_24);
/// Reserved in xAPIC mode: DST bits 7:0 and 31:16 (IRTE bits 39:32, 63:48).
const LO_RESERVED_XAPIC: u64 = field_mask(IRTE_LO::RSVD_XAPIC_39_32) | field_mask(IRTE_LO::RSVD_XAPIC_63_48);
/// Reserved: bits 127:84.
const HI_RESERVED: u64 = field_mask(IRTE_HI::RSVD_127_84);

/// Delivery mode of a remapped interrupt (IRTE bits 7:5, §9.10; the encodings
/// of the MSI data register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000b: the vector to the listed destinations.
    Fixed = 0,
    /// 001b: lowest priority among the destinations.
    LowestPriority = 1,
    /// 010b: SMI (vector ignored).
    Smi = 2,
    /// 100b: NMI (vector ignored).
    Nmi = 4,
    /// 101b: INIT (vector ignored).
    Init = 5,
    /// 111b: ExtINT.
    ExtInt = 7,
}

impl DeliveryMode {
    /// The mode a 3-bit field encodes; 011b and 110b are reserved.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }
}

/// Destination ID of a remapped interrupt (IRTE bits 63:32, §9.10). Which
/// variant the unit reads is set by IRTA.EIME, for the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// EIME = 0: an 8-bit xAPIC ID, in IRTE bits 47:40.
    XApic(u8),
    /// EIME = 1: a 32-bit x2APIC ID, in IRTE bits 63:32.
    X2Apic(u32),
}

/// SQ: which requester-ID bits SVT = 01b compares (IRTE bits 81:80, §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceQualifier {
    /// 00b: all 16 bits.
    All = 0,
    /// 01b: all but bit 2 (function bit 2).
    IgnoreBit2 = 1,
    /// 10b: all but bits 2:1.
    IgnoreBits2To1 = 2,
    /// 11b: all but bits 2:0 (any function of the device).
    IgnoreBits2To0 = 3,
}

impl SourceQualifier {
    fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => SourceQualifier::All,
            1 => SourceQualifier::IgnoreBit2,
            2 => SourceQualifier::IgnoreBits2To1,
            _ => SourceQualifier::IgnoreBits2To0,
        }
    }

    /// Requester-ID bits that take part in the comparison.
    pub fn mask(self) -> u16 {
        match self {
            SourceQualifier::All => 0xFFFF,
            SourceQualifier::IgnoreBit2 => 0xFFFB,
            SourceQualifier::IgnoreBits2To1 => 0xFFF9,
            SourceQualifier::IgnoreBits2To0 => 0xFFF8,
        }
    }
}

/// Source validation of an IRTE: SVT (bits 83:82) with SID (79:64) and SQ
/// (81:80), §9.10. A request failing it is blocked with fault 26h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT = 00b: any requester may use the entry.
    None,
    /// SVT = 01b: the requester ID must equal `sid` in the bits `sq` selects.
    RequesterId {
        /// Expected requester ID (bus << 8 | devfn).
        sid: u16,
        /// Bits compared.
        sq: SourceQualifier,
    },
    /// SVT = 10b: the requester's bus must lie in `start..=end` (devices
    /// behind a PCIe-to-PCI bridge). Encoded as SID = start << 8 | end, as the
    /// spec's field description and Linux `set_irte_verify_bus` do; QEMU's
    /// `vtd_irte_get` reads SID\[15:8\] as the *upper* bound instead, so under
    /// QEMU this only works with `start == end`.
    Bus {
        /// First bus allowed.
        start: u8,
        /// Last bus allowed.
        end: u8,
    },
}

impl SourceValidation {
    /// Full requester-ID verification (SVT = 01b, SQ = 00b): the default.
    pub fn requester(sid: u16) -> Self {
        SourceValidation::RequesterId { sid, sq: SourceQualifier::All }
    }

    /// SVT, SQ and SID (IRTE bits 83:64); every other high bit zero.
    fn encode(self) -> FieldValue<u64, IRTE_HI::Register> {
        match self {
            SourceValidation::None => IRTE_HI::SVT::NoVerification,
            SourceValidation::RequesterId { sid, sq } => {
                IRTE_HI::SVT::RequesterId + IRTE_HI::SQ.val(sq as u64) + IRTE_HI::SID.val(u64::from(sid))
            }
            SourceValidation::Bus { start, end } => {
                IRTE_HI::SVT::Bus
                    + IRTE_HI::SID_START_BUS.val(u64::from(start))
                    + IRTE_HI::SID_END_BUS.val(u64::from(end))
            }
        }
    }

    /// The source validation of the high word `hi`; `None` for SVT = 11b.
    fn decode(hi: Word<IRTE_HI::Register>) -> Option<Self> {
        Some(match hi.read_as_enum(IRTE_HI::SVT)? {
            IRTE_HI::SVT::Value::NoVerification => SourceValidation::None,
            IRTE_HI::SVT::Value::RequesterId => SourceValidation::RequesterId {
                sid: hi.read(IRTE_HI::SID) as u16,
                sq: SourceQualifier::from_bits(hi.read(IRTE_HI::SQ)),
            },
            IRTE_HI::SVT::Value::Bus => SourceValidation::Bus {
                start: hi.read(IRTE_HI::SID_START_BUS) as u8,
                end: hi.read(IRTE_HI::SID_END_BUS) as u8,
            },
        })
    }

    /// Whether a request from `requester` passes, as the spec describes the check.
    pub fn accepts(self, requester: u16) -> bool {
        match self {
            SourceValidation::None => true,
            SourceValidation::RequesterId { sid, sq } => (sid ^ requester) & sq.mask() == 0,
            SourceValidation::Bus { start, end } => (start..=end).contains(&((requester >> 8) as u8)),
        }
    }
}

/// The fields of a remapped-format IRTE (§9.10, IM = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemappedIrte {
    /// V: the vector delivered (bits 23:16).
    pub vector: u8,
    /// DST (bits 63:32).
    pub destination: Destination,
    /// DLM (bits 7:5).
    pub delivery: DeliveryMode,
    /// DM (bit 2): logical destination mode; physical when clear.
    pub logical: bool,
    /// RH (bit 3): redirection hint (lowest-priority style redirection among
    /// the logical destinations).
    pub redirection_hint: bool,
    /// TM (bit 4): level-triggered; edge when clear.
    pub level: bool,
    /// FPD (bit 1): faults on this entry are not recorded (qualified faults only).
    pub fault_processing_disable: bool,
    /// SVT / SQ / SID (bits 83:64).
    pub source: SourceValidation,
}

impl RemappedIrte {
    /// A fixed, edge-triggered interrupt of `vector` to one CPU in physical
    /// mode, faults recorded, accepted only from requester `sid` (SVT = 01b,
    /// SQ = 00b).
    pub fn fixed(vector: u8, destination: Destination, sid: u16) -> Self {
        RemappedIrte {
            vector,
            destination,
            delivery: DeliveryMode::Fixed,
            logical: false,
            redirection_hint: false,
            level: false,
            fault_processing_disable: false,
            source: SourceValidation::requester(sid),
        }
    }
}

/// Why an [`Irte`] does not decode as a present remapped-format entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrteError {
    /// P = 0 (a request through it faults with 22h).
    NotPresent,
    /// IM = 1: a posted-format entry (§9.11).
    Posted,
    /// Reserved bits set (fault 24h); the offending bits of (low, high).
    Reserved(u64, u64),
    /// A reserved delivery-mode encoding (011b or 110b).
    DeliveryMode(u8),
    /// SVT = 11b, reserved.
    SourceValidation,
}

/// An interrupt remapping table entry, 128 bits as (low, high) qwords (§9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Irte {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl Irte {
    /// The all-zero entry: P = 0, every request through it is blocked (22h).
    pub const NOT_PRESENT: Irte = Irte { lo: 0, hi: 0 };

    /// A present remapped-format entry (IM = 0, AVAIL = 0) with fields `f`.
    pub fn remapped(f: &RemappedIrte) -> Irte {
        let flag = |set: bool| u64::from(set);
        let dst = match f.destination {
            Destination::XApic(id) => IRTE_LO::DST_XAPIC.val(u64::from(id)),
            Destination::X2Apic(id) => IRTE_LO::DST.val(u64::from(id)),
        };
        let mut w = IrteWords::zeroed();
        w.lo.write(
            IRTE_LO::P::SET
                + IRTE_LO::FPD.val(flag(f.fault_processing_disable))
                + IRTE_LO::DM.val(flag(f.logical))
                + IRTE_LO::RH.val(flag(f.redirection_hint))
                + IRTE_LO::TM.val(flag(f.level))
                + IRTE_LO::DLM.val(f.delivery as u64)
                + IRTE_LO::VECTOR.val(u64::from(f.vector))
                + dst,
        );
        w.hi.write(f.source.encode());
        Irte::from(w)
    }

    /// The entry's words, laid out by field.
    pub fn words(&self) -> IrteWords {
        IrteWords::from_words([self.lo, self.hi])
    }

    /// P: the entry is present.
    pub fn present(&self) -> bool {
        self.words().lo.is_set(IRTE_LO::P)
    }

    /// Reserved bits that are set, as (low, high), for a unit in xAPIC mode
    /// (`x2apic` false) or x2APIC mode (IRTA.EIME).
    pub fn reserved_bits(&self, x2apic: bool) -> (u64, u64) {
        let lo_mask = if x2apic { LO_RESERVED } else { LO_RESERVED | LO_RESERVED_XAPIC };
        (self.lo & lo_mask, self.hi & HI_RESERVED)
    }

    /// The fields of a present remapped-format entry, read as a unit in
    /// x2APIC mode (`x2apic`, IRTA.EIME = 1) or xAPIC mode would read them.
    pub fn decode(&self, x2apic: bool) -> Result<RemappedIrte, IrteError> {
        let w = self.words();
        if !w.lo.is_set(IRTE_LO::P) {
            return Err(IrteError::NotPresent);
        }
        if w.lo.is_set(IRTE_LO::IM) {
            return Err(IrteError::Posted);
        }
        let (rlo, rhi) = self.reserved_bits(x2apic);
        if rlo != 0 || rhi != 0 {
            return Err(IrteError::Reserved(rlo, rhi));
        }
        let dlm = w.lo.read(IRTE_LO::DLM) as u8;
        let delivery = DeliveryMode::from_bits(dlm).ok_or(IrteError::DeliveryMode(dlm))?;
        let destination = if x2apic {
            Destination::X2Apic(w.lo.read(IRTE_LO::DST) as u32)
        } else {
            Destination::XApic(w.lo.read(IRTE_LO::DST_XAPIC) as u8)
        };
        let source = SourceValidation::decode(w.hi).ok_or(IrteError::SourceValidation)?;
        Ok(RemappedIrte {
            vector: w.lo.read(IRTE_LO::VECTOR) as u8,
            destination,
            delivery,
            logical: w.lo.is_set(IRTE_LO::DM),
            redirection_hint: w.lo.is_set(IRTE_LO::RH),
            level: w.lo.is_set(IRTE_LO::TM),
            fault_processing_disable: w.lo.is_set(IRTE_LO::FPD),
            source,
        })
    }
}

impl From<IrteWords> for Irte {
    fn from(w: IrteWords) -> Irte {
        let [lo, hi] = w.to_words();
        Irte { lo, hi }
    }
}

/// The remappable-format MSI address for `handle` (§5.1.2.2), with SHV set so
/// the unit adds the data's subhandle: the index used is `handle + data[15:0]`.
/// With [`msi_data`] = 0 that is `handle`; a multi-message MSI function puts its
/// message number in the low data bits and so reaches `handle + n` (allocate
/// the run with [`IrTable::alloc_block`]). The upper address dword is zero.
pub fn msi_address(handle: u16) -> u32 {
    let h = u32::from(handle);
    let mut a = LocalRegisterCopy::<u32, MSI_ADDR::Register>::new(0);
    a.write(
        MSI_ADDR::BASE::Interrupt
            + MSI_ADDR::HANDLE_14_0.val(h & 0x7FFF)
            + MSI_ADDR::IF::Remappable
            + MSI_ADDR::SHV::SET
            + MSI_ADDR::HANDLE_15.val(h >> 15),
    );
    a.get()
}

/// The MSI data that goes with [`msi_address`]: subhandle 0 (bits 31:16 are
/// reserved with SHV = 1, §5.1.2.2).
pub fn msi_data() -> u32 {
    let mut d = LocalRegisterCopy::<u32, MSI_DATA::Register>::new(0);
    d.write(MSI_DATA::SUBHANDLE.val(0));
    d.get()
}
/// An interrupt request as the remapping unit classifies it (§5.1.2, §5.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiRequest {
    /// Address bit 4 clear: compatibility format. Delivered untranslated
    /// unless EIME is set or CFIS is clear, then blocked (fault 25h).
    Compatibility,
    /// Remappable format.
    Remappable {
        /// The 16-bit handle of the address.
        handle: u16,
        /// The data's subhandle when SHV is set.
        subhandle: Option<u16>,
    },
}

impl MsiRequest {
    /// The interrupt_index the unit looks up: handle, plus the subhandle when
    /// SHV is set (§5.1.3). Not truncated: an index at or beyond the table size
    /// faults with 21h (QEMU computes it in 16 bits and wraps instead).
    pub fn index(&self) -> Option<u32> {
        match *self {
            MsiRequest::Compatibility => None,
            MsiRequest::Remappable { handle, subhandle } => Some(u32::from(handle) + u32::from(subhandle.unwrap_or(0))),
        }
    }
}

/// Classifies a 32-bit MSI address / data pair: `None` when the address is
/// not in the interrupt range (bits 31:20 ≠ FEEh) or a remappable request
/// with SHV set has reserved data bits 31:16 set (the unit faults with 20h).
pub fn decode_msi(address: u32, data: u32) -> Option<MsiRequest> {
    let a = LocalRegisterCopy::<u32, MSI_ADDR::Register>::new(address);
    if !a.matches_all(MSI_ADDR::BASE::Interrupt) {
        return None;
    }
    if a.matches_all(MSI_ADDR::IF::Compatibility) {
        return Some(MsiRequest::Compatibility);
    }
    let handle = (a.read(MSI_ADDR::HANDLE_15) << 15 | a.read(MSI_ADDR::HANDLE_14_0)) as u16;
    let subhandle = if a.is_set(MSI_ADDR::SHV) {
        let d = LocalRegisterCopy::<u32, MSI_DATA::Register>::new(data);
        if d.read(MSI_DATA::RSVD_31_16) != 0 {
            return None;
        }
        Some(d.read(MSI_DATA::SUBHANDLE) as u16)
    } else {
        None
    };
    Some(MsiRequest::Remappable { handle, subhandle })
}

/// Interrupt entry cache invalidation of every entry (§6.5.2.7, type 4, G = 0),
/// as a (low, high) queued-invalidation descriptor.
pub fn iec_global() -> (u64, u64) {
    let mut d = IecDesc::zeroed();
    d.lo.write(IEC_LO::TYPE.val(IEC_TYPE) + IEC_LO::G::Global);
    (d.lo.get(), d.hi.get())
}

/// Interrupt entry cache invalidation of the 2^`mask_log2` entries from
/// `index` (G = 1, IM bits 31:27, IIDX bits 47:32); `None` unless `index` is
/// aligned to that count and `mask_log2` ≤ 16.
pub fn iec_selective(index: u16, mask_log2: u8) -> Option<(u64, u64)> {
    if mask_log2 > 16 || u32::from(index) & ((1u32 << mask_log2) - 1) != 0 {
        return None;
    }
    let mut d = IecDesc::zeroed();
    d.lo.write(
        IEC_LO::TYPE.val(IEC_TYPE)
            + IEC_LO::G::Index
            + IEC_LO::IM.val(u64::from(mask_log2))
            + IEC_LO::IIDX.val(u64::from(index)),
    );
    Some((d.lo.get(), d.hi.get()))
}

const IEC_TYPE: u64 = 4;

tock_registers::register_bitfields![u64,
    /// Interrupt entry cache invalidate descriptor bits 63:0 (§6.5.2.7).
    pub IEC_LO [
        /// Bits 3:0: descriptor type (4).
        TYPE OFFSET(0) NUMBITS(4) [],
        /// Bit 4: granularity.
        G OFFSET(4) NUMBITS(1) [
            /// Every entry.
            Global = 0,
            /// The entries from IIDX that IM selects.
            Index = 1
        ],
        /// Bits 31:27: index mask, 2^IM entries.
        IM OFFSET(27) NUMBITS(5) [],
        /// Bits 47:32: interrupt index.
        IIDX OFFSET(32) NUMBITS(16) []
    ]
];

iommu::descriptor! {
    /// Interrupt entry cache invalidate descriptor (§6.5.2.7).
    pub struct IecDesc {
        /// Bits 63:0.
        lo: IEC_LO,
        /// Bits 127:64 (reserved).
        hi: RAW,
    }
}

/// The interrupt_index an interrupt-remapping fault record names (FRCD bits
/// 63:48 of the low qword, §10.4.14). Meaningful only for the reasons that
/// looked up an entry (21h–24h, 26h–28h); undefined for 20h, 25h, 29h.
pub fn fault_interrupt_index(frcd_lo: u64) -> u16 {
    crate::regs::FaultRecordWords::from_words([frcd_lo, 0]).lo.read(crate::regs::FRCD_LO::FI_INDEX) as u16
}

/// Name of an interrupt-remapping fault reason (§7.1.3, Appendix A), or
/// `None` for a reason outside 20h–29h. 20h–26h agree with Linux
/// `irq_remap_fault_reasons` and QEMU `VTD_FR_IR_*`; 27h–29h are from the
/// spec's posted-interrupt and untranslated-request conditions (as VirtualBox
/// `VTDINTRFAULT` transcribes them), which neither Linux nor QEMU names.
pub fn ir_fault_name(reason: u8) -> Option<&'static str> {
    Some(match reason {
        0x20 => "IR: reserved field set in the remappable interrupt request",
        0x21 => "IR: interrupt index beyond the interrupt remapping table size",
        0x22 => "IR: IRTE not present",
        0x23 => "IR: error reading the interrupt remapping table (IRTA)",
        0x24 => "IR: reserved field set in a present IRTE",
        0x25 => "IR: compatibility-format interrupt blocked (EIME set or CFIS clear)",
        0x26 => "IR: source-id verification failed (SID/SQ/SVT)",
        0x27 => "IR: error reading the posted interrupt descriptor",
        0x28 => "IR: reserved field set in the posted interrupt descriptor",
        0x29 => "IR: invalid untranslated interrupt request (without PASID)",
        _ => return None,
    })
}

/// Why an [`IrTable`] operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrTableError {
    /// The handle is at or beyond the table size.
    OutOfRange(u16),
    /// The handle is not allocated (handle 0 never is).
    NotAllocated(u16),
}

/// An interrupt remapping table of 2^(S+1) IRTEs (§9.10, §10.4.29) in
/// contiguous frames aligned to their size (a table larger than 4 KiB must be
/// size-aligned), with handle allocation.
///
/// Handle 0 is never handed out and its entry stays not present: the
/// all-zero handle is the one a remappable message gets by accident (an MSI
/// address of 0xFEE0_0010/18 with data 0, a half-programmed entry), and with
/// entry 0 absent such a message faults with 22h, attributed to its source,
/// instead of landing on whichever vector got the first allocation. It costs
/// one of up to 65536 entries.
///
/// Every handle's entry is not present unless the handle is allocated and was
/// [`set`](IrTable::set). Changes to a live table take effect only after an
/// interrupt entry cache invalidation ([`iec_selective`], [`iec_global`]).
pub struct IrTable {
    base: u64,
    size_field: u8,
    /// Handles in use (0 never is).
    ids: IdAllocator,
}

impl IrTable {
    /// A table of 2^(`size_field` + 1) entries, all not present; `None` when
    /// `size_field` > 15 or memory is short.
    pub fn new(mem: &mut impl DmaMemory, size_field: u8) -> Option<IrTable> {
        if size_field > MAX_SIZE_FIELD {
            return None;
        }
        let entries = 1usize << (size_field + 1);
        let frames = entries.div_ceil(IRTES_PER_FRAME);
        let base = mem.alloc_contiguous(frames)?;
        Some(IrTable { base, size_field, ids: IdAllocator::new(entries as u32) })
    }

    /// The smallest IRTA.S whose table holds `entries` entries (at most 15).
    pub fn size_field_for(entries: usize) -> u8 {
        let log2 = entries.max(2).next_power_of_two().trailing_zeros();
        (log2 - 1).min(u32::from(MAX_SIZE_FIELD)) as u8
    }

    /// Physical address of entry 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// IRTA.S.
    pub fn size_field(&self) -> u8 {
        self.size_field
    }

    /// Number of entries, 2^(S+1).
    pub fn entries(&self) -> usize {
        1 << (self.size_field + 1)
    }

    /// Frames the table occupies.
    pub fn frames(&self) -> usize {
        self.entries().div_ceil(IRTES_PER_FRAME)
    }

    /// Handles allocated now.
    pub fn in_use(&self) -> usize {
        self.ids.in_use()
    }

    /// The IRTA register value (§10.4.29): table base (bits 63:12), EIME
    /// (bit 11) for 32-bit x2APIC destinations when `ext_irq_mode`, and S.
    pub fn irta_value(&self, ext_irq_mode: bool) -> u64 {
        let mut r = Word::<IRTA_REG::Register>::new(0);
        r.write(
            from_place(IRTA_REG::IRTA, self.base)
                + IRTA_REG::EIME.val(u64::from(ext_irq_mode))
                + IRTA_REG::S.val(u64::from(self.size_field)),
        );
        r.get()
    }

    /// Takes the lowest free handle (never 0), or `None` when the table is full.
    pub fn alloc(&mut self) -> Option<u16> {
        self.ids.alloc()
    }

    /// Takes `count` consecutive free handles (for a multi-message MSI with
    /// SHV, whose messages reach `first + n`), returning the first.
    pub fn alloc_block(&mut self, count: usize) -> Option<u16> {
        self.ids.alloc_run(count, 1)
    }

    fn check(&self, handle: u16) -> Result<usize, IrTableError> {
        let i = usize::from(handle);
        if i >= self.entries() {
            return Err(IrTableError::OutOfRange(handle));
        }
        if !self.ids.is_used(handle) {
            return Err(IrTableError::NotAllocated(handle));
        }
        Ok(i)
    }

    /// The frame and qword index of entry `i`'s low qword.
    fn slot(&self, i: usize) -> (u64, usize) {
        (self.base + (i / IRTES_PER_FRAME) as u64 * 4096, (i % IRTES_PER_FRAME) * 2)
    }

    fn write(&self, mem: &mut impl DmaMemory, i: usize, old: Irte, new: Irte) {
        let (frame, word) = self.slot(i);
        // The unit reads an entry as two qwords, P in the low one. Write the
        // high qword first, the low one (with P) last; when a present entry's
        // high qword changes, make it not present first so no request sees
        // the new source-id fields with the old destination.
        if old.hi != new.hi {
            if old.present() {
                let mut w = old.words();
                w.lo.modify(IRTE_LO::P::CLEAR);
                mem.write(frame, word, w.lo.get());
            }
            mem.write(frame, word + 1, new.hi);
        }
        mem.write(frame, word, new.lo);
    }

    /// The entry of `handle` (any handle in range, allocated or not).
    pub fn get(&self, mem: &impl DmaMemory, handle: u16) -> Option<Irte> {
        let i = usize::from(handle);
        if i >= self.entries() {
            return None;
        }
        let (frame, word) = self.slot(i);
        Some(Irte { lo: mem.read(frame, word), hi: mem.read(frame, word + 1) })
    }

    /// Writes the entry of an allocated `handle`.
    pub fn set(&mut self, mem: &mut impl DmaMemory, handle: u16, irte: Irte) -> Result<(), IrTableError> {
        let i = self.check(handle)?;
        let old = self.get(mem, handle).unwrap_or_default();
        self.write(mem, i, old, irte);
        Ok(())
    }

    /// Makes the entry of an allocated `handle` not present.
    pub fn clear(&mut self, mem: &mut impl DmaMemory, handle: u16) -> Result<(), IrTableError> {
        let i = self.check(handle)?;
        let (frame, word) = self.slot(i);
        mem.write(frame, word, 0); // P first
        mem.write(frame, word + 1, 0);
        Ok(())
    }

    /// Clears the entry of `handle` and returns the handle to the pool.
    pub fn free(&mut self, mem: &mut impl DmaMemory, handle: u16) -> Result<(), IrTableError> {
        self.clear(mem, handle)?;
        self.ids.free(handle);
        Ok(())
    }

    /// Gives the frames back. The unit must no longer use the table (IRE
    /// clear, or IRTA pointing elsewhere and latched with SIRTP).
    pub fn destroy(self, mem: &mut impl DmaMemory) {
        mem.free_contiguous(self.base, self.frames());
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::BTreeMap;
    use std::vec;
    use std::vec::Vec;

    /// Frames in a map at made-up physical addresses; contiguous runs aligned
    /// to their size, as `DmaMemory` promises.
    #[derive(Default)]
    struct Mem {
        frames: BTreeMap<u64, [u64; 512]>,
        next: u64,
        limit: Option<usize>,
    }

    impl io_pgtable::TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            self.alloc_contiguous(1)
        }
        fn free_table(&mut self, pa: u64) {
            self.free_contiguous(pa, 1);
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.frames[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.frames.get_mut(&table).expect("write to an unallocated frame")[index] = value;
        }
    }

    impl DmaMemory for Mem {
        fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
            if self.limit.is_some_and(|l| self.frames.len() + frames > l) {
                return None;
            }
            let size = frames as u64 * 4096;
            let base = (self.next.max(0x10_0000)).next_multiple_of(size);
            for f in 0..frames as u64 {
                assert!(self.frames.insert(base + f * 4096, [0; 512]).is_none());
            }
            self.next = base + size;
            Some(base)
        }
        fn free_contiguous(&mut self, base: u64, frames: usize) {
            for f in 0..frames as u64 {
                assert!(self.frames.remove(&(base + f * 4096)).is_some(), "double free");
            }
        }
    }

    #[test]
    fn golden_entries() {
        // Vector 0x31, fixed, physical, edge, xAPIC ID 2 in bits 47:40, P; SVT = 01b
        // (bit 82 = high bit 18), SQ = 00b, SID 00:01.0 = 0x0008.
        let e = Irte::remapped(&RemappedIrte::fixed(0x31, Destination::XApic(2), 0x0008));
        assert_eq!(e, Irte { lo: 0x0000_0200_0031_0001, hi: 0x0004_0008 });
        // x2APIC ID 0x12345678 in bits 63:32.
        let e = Irte::remapped(&RemappedIrte::fixed(0xEC, Destination::X2Apic(0x1234_5678), 0xFFFF));
        assert_eq!(e, Irte { lo: 0x1234_5678_00EC_0001, hi: 0x0004_FFFF });
        // Every flag: FPD 1, DM 2, RH 3, TM 4, DLM 101b (INIT) in 7:5 = 0xA0.
        let all = RemappedIrte {
            vector: 0xFF,
            destination: Destination::XApic(0xFF),
            delivery: DeliveryMode::Init,
            logical: true,
            redirection_hint: true,
            level: true,
            fault_processing_disable: true,
            source: SourceValidation::RequesterId { sid: 0xABCD, sq: SourceQualifier::IgnoreBits2To0 },
        };
        // SQ = 11b in bits 81:80 (high 17:16), SVT = 01b.
        assert_eq!(Irte::remapped(&all), Irte { lo: 0x0000_FF00_00FF_00BF, hi: 0x0007_ABCD });
        // SVT = 10b (bit 83), SID = start bus << 8 | end bus.
        let bus = RemappedIrte { source: SourceValidation::Bus { start: 2, end: 5 }, ..all };
        assert_eq!(Irte::remapped(&bus).hi, 0x0008_0205);
        let none = RemappedIrte { source: SourceValidation::None, ..all };
        assert_eq!(Irte::remapped(&none).hi, 0);
        assert!(!Irte::NOT_PRESENT.present());
        assert_eq!(Irte::NOT_PRESENT.decode(false), Err(IrteError::NotPresent));
    }

    #[test]
    fn fields_round_trip() {
        let modes = [
            DeliveryMode::Fixed,
            DeliveryMode::LowestPriority,
            DeliveryMode::Smi,
            DeliveryMode::Nmi,
            DeliveryMode::Init,
            DeliveryMode::ExtInt,
        ];
        let sources = [
            SourceValidation::None,
            SourceValidation::requester(0x0100),
            SourceValidation::RequesterId { sid: 0x1234, sq: SourceQualifier::IgnoreBit2 },
            SourceValidation::RequesterId { sid: 0xFFF8, sq: SourceQualifier::IgnoreBits2To1 },
            SourceValidation::Bus { start: 0, end: 0xFF },
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let x2apic = round % 2 == 0;
            let f = RemappedIrte {
                vector: x as u8,
                destination: if x2apic {
                    Destination::X2Apic((x >> 16) as u32)
                } else {
                    Destination::XApic((x >> 8) as u8)
                },
                delivery: modes[(x >> 48) as usize % modes.len()],
                logical: x & 1 << 52 != 0,
                redirection_hint: x & 1 << 53 != 0,
                level: x & 1 << 54 != 0,
                fault_processing_disable: x & 1 << 55 != 0,
                source: sources[(x >> 56) as usize % sources.len()],
            };
            let e = Irte::remapped(&f);
            assert_eq!(e.reserved_bits(x2apic), (0, 0), "{f:?}");
            assert_eq!(e.decode(x2apic), Ok(f));
        }
    }

    #[test]
    fn layouts_match_the_spec_bit_ranges() {
        // The masks and constants the fields now derive, against their spec
        // bit ranges written out.
        assert_eq!(LO_RESERVED, 0x7 << 12 | 0xFF << 24);
        assert_eq!(LO_RESERVED_XAPIC, 0xFF << 32 | 0xFFFF << 48);
        assert_eq!(HI_RESERVED, !0 << 20);
        assert_eq!((MSI_BASE, GLOBAL_SIRTP, GLOBAL_CFI), (0xFEE0_0000, 1 << 24, 1 << 23));
        // Every IRTE bit is in exactly one named field of its format (xAPIC
        // DST split in three, x2APIC DST whole; SID whole or as two buses).
        let xapic_lo = [
            IRTE_LO::P,
            IRTE_LO::FPD,
            IRTE_LO::DM,
            IRTE_LO::RH,
            IRTE_LO::TM,
            IRTE_LO::DLM,
            IRTE_LO::AVAIL,
            IRTE_LO::RSVD_14_12,
            IRTE_LO::IM,
            IRTE_LO::VECTOR,
            IRTE_LO::RSVD_31_24,
            IRTE_LO::RSVD_XAPIC_39_32,
            IRTE_LO::DST_XAPIC,
            IRTE_LO::RSVD_XAPIC_63_48,
        ];
        let disjoint =
            |masks: &[u64]| masks.iter().try_fold(0u64, |acc, &m| (acc & m == 0).then_some(acc | m)) == Some(u64::MAX);
        assert!(disjoint(&xapic_lo.map(field_mask)));
        let mut x2apic_lo = xapic_lo.map(field_mask).to_vec();
        x2apic_lo.truncate(11);
        x2apic_lo.push(field_mask(IRTE_LO::DST));
        assert!(disjoint(&x2apic_lo));
        let hi = [IRTE_HI::SID, IRTE_HI::SQ, IRTE_HI::SVT, IRTE_HI::RSVD_127_84].map(field_mask);
        assert!(disjoint(&hi));
        assert_eq!(field_mask(IRTE_HI::SID_START_BUS) | field_mask(IRTE_HI::SID_END_BUS), field_mask(IRTE_HI::SID));
        assert_eq!(field_mask(IRTE_LO::DST_XAPIC), 0xFF << 40);
        // IRTA: base 63:12, EIME 11, S 3:0.
        let irta = [IRTA_REG::S, IRTA_REG::EIME, IRTA_REG::IRTA].map(field_mask);
        assert_eq!(irta, [0xF, 1 << 11, !0xFFF]);
    }

    #[test]
    fn every_flag_mode_and_source_round_trips_field_by_field() {
        let modes = [0u8, 1, 2, 4, 5, 7].map(|b| DeliveryMode::from_bits(b).unwrap());
        let sqs = [0u64, 1, 2, 3].map(SourceQualifier::from_bits);
        let mut sources = vec![SourceValidation::None, SourceValidation::Bus { start: 0x12, end: 0x34 }];
        sources.extend(sqs.map(|sq| SourceValidation::RequesterId { sid: 0xA5C3, sq }));
        let dests = [Destination::XApic(0), Destination::XApic(0xA5), Destination::X2Apic(0), Destination::X2Apic(!0)];
        for flags in 0..16u8 {
            for &delivery in &modes {
                for &source in &sources {
                    for (&destination, vector) in dests.iter().zip([0u8, 0x31, 0xEC, 0xFF]) {
                        let f = RemappedIrte {
                            vector,
                            destination,
                            delivery,
                            logical: flags & 1 != 0,
                            redirection_hint: flags & 2 != 0,
                            level: flags & 4 != 0,
                            fault_processing_disable: flags & 8 != 0,
                            source,
                        };
                        let e = Irte::remapped(&f);
                        let x2apic = matches!(destination, Destination::X2Apic(_));
                        assert_eq!(e.decode(x2apic), Ok(f));
                        // Field by field, through the typed words.
                        let w = e.words();
                        assert_eq!(Irte::from(w), e);
                        assert!(w.lo.is_set(IRTE_LO::P) && !w.lo.is_set(IRTE_LO::IM));
                        assert_eq!(w.lo.read(IRTE_LO::AVAIL), 0);
                        assert_eq!(w.lo.read(IRTE_LO::DLM), delivery as u64);
                        assert_eq!(w.lo.read(IRTE_LO::VECTOR), u64::from(vector));
                        let flag_bits = [IRTE_LO::DM, IRTE_LO::RH, IRTE_LO::TM, IRTE_LO::FPD].map(|b| w.lo.is_set(b));
                        assert_eq!(flag_bits, [f.logical, f.redirection_hint, f.level, f.fault_processing_disable]);
                        match destination {
                            Destination::XApic(id) => {
                                assert_eq!(w.lo.read(IRTE_LO::DST), u64::from(id) << 8, "DST[15:8]")
                            }
                            Destination::X2Apic(id) => assert_eq!(w.lo.read(IRTE_LO::DST), u64::from(id)),
                        }
                        let svt = w.hi.read(IRTE_HI::SVT);
                        match source {
                            SourceValidation::None => assert_eq!(w.hi.get(), 0),
                            SourceValidation::RequesterId { sid, sq } => {
                                assert_eq!((svt, w.hi.read(IRTE_HI::SQ)), (1, sq as u64));
                                assert_eq!(w.hi.read(IRTE_HI::SID), u64::from(sid));
                            }
                            SourceValidation::Bus { start, end } => {
                                assert_eq!((svt, w.hi.read(IRTE_HI::SQ)), (2, 0));
                                assert_eq!(w.hi.read(IRTE_HI::SID), u64::from(start) << 8 | u64::from(end));
                            }
                        }
                        // The other mode reads the same entry with the other destination width.
                        let other = e.decode(!x2apic);
                        if x2apic {
                            // An x2APIC ID can set bits xAPIC mode reserves.
                            assert!(other.is_ok() == (e.reserved_bits(false) == (0, 0)));
                        } else if let Destination::XApic(id) = destination {
                            // x2APIC mode reads the xAPIC ID as DST[15:8] of a 32-bit ID.
                            assert_eq!(other.map(|o| o.destination), Ok(Destination::X2Apic(u32::from(id) << 8)));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_handle_round_trips_through_the_msi_address() {
        for handle in 0..=u16::MAX {
            let a = LocalRegisterCopy::<u32, MSI_ADDR::Register>::new(msi_address(handle));
            assert!(a.matches_all(MSI_ADDR::BASE::Interrupt + MSI_ADDR::IF::Remappable + MSI_ADDR::SHV::SET));
            assert_eq!(a.get() & 3, 0, "bits 1:0 left clear");
            let req = decode_msi(a.get(), msi_data());
            assert_eq!(req, Some(MsiRequest::Remappable { handle, subhandle: Some(0) }));
            // Without SHV the data is not looked at.
            let no_shv = a.get() & !MSI_ADDR::SHV::SET.value;
            assert_eq!(decode_msi(no_shv, !0), Some(MsiRequest::Remappable { handle, subhandle: None }));
        }
    }

    #[test]
    fn decode_refuses_what_the_unit_would() {
        let good = Irte::remapped(&RemappedIrte::fixed(0x40, Destination::XApic(1), 8));
        let with = |lo: u64, hi: u64| Irte { lo: good.lo | lo, hi: good.hi | hi };
        assert_eq!(with(1 << 15, 0).decode(false), Err(IrteError::Posted));
        assert_eq!(with(1 << 12, 0).decode(false), Err(IrteError::Reserved(1 << 12, 0)));
        assert_eq!(with(1 << 24, 0).decode(true), Err(IrteError::Reserved(1 << 24, 0)));
        assert_eq!(with(0, 1 << 20).decode(false), Err(IrteError::Reserved(0, 1 << 20)));
        // DST[7:0] is reserved in xAPIC mode, not in x2APIC mode.
        assert_eq!(with(1 << 32, 0).decode(false), Err(IrteError::Reserved(1 << 32, 0)));
        assert!(with(1 << 32, 0).decode(true).is_ok());
        assert_eq!(with(3 << 5, 0).decode(false), Err(IrteError::DeliveryMode(3)));
        assert_eq!(with(6 << 5, 0).decode(false), Err(IrteError::DeliveryMode(6)));
        assert_eq!(with(0, 3 << 18).decode(false), Err(IrteError::SourceValidation));
        // AVAIL (11:8) is ignored by hardware.
        assert!(with(0xF << 8, 0).decode(false).is_ok());
    }

    #[test]
    fn source_validation_checks() {
        let exact = SourceValidation::requester(0x0108);
        assert!(exact.accepts(0x0108) && !exact.accepts(0x0109) && !exact.accepts(0x0208));
        let any_fn = SourceValidation::RequesterId { sid: 0x0108, sq: SourceQualifier::IgnoreBits2To0 };
        assert!((0x0108..0x0110).all(|r| any_fn.accepts(r)) && !any_fn.accepts(0x0110));
        let bit2 = SourceValidation::RequesterId { sid: 0x0108, sq: SourceQualifier::IgnoreBit2 };
        assert!(bit2.accepts(0x010C) && !bit2.accepts(0x010A));
        let bus = SourceValidation::Bus { start: 2, end: 4 };
        assert!(bus.accepts(0x0200) && bus.accepts(0x04FF) && !bus.accepts(0x0100) && !bus.accepts(0x0500));
        assert!(SourceValidation::None.accepts(0xFFFF));
    }

    #[test]
    fn msi_encodings() {
        // FEEh | handle[14:0] << 5 | format (4) | SHV (3) | handle[15] << 2.
        let cases: [(u16, u32); 5] =
            [(0, 0xFEE0_0018), (1, 0xFEE0_0038), (0x7FFF, 0xFEEF_FFF8), (0x8000, 0xFEE0_001C), (0xFFFF, 0xFEEF_FFFC)];
        for (handle, address) in cases {
            assert_eq!(msi_address(handle), address, "handle {handle:#x}");
            let req = decode_msi(address, msi_data()).unwrap();
            assert_eq!(req, MsiRequest::Remappable { handle, subhandle: Some(0) });
            assert_eq!(req.index(), Some(u32::from(handle)));
        }
        assert_eq!(msi_data(), 0);
    }

    #[test]
    fn msi_decoding() {
        // Compatibility format: bit 4 clear (destination ID 3 in bits 19:12).
        assert_eq!(decode_msi(0xFEE0_3000, 0x4031), Some(MsiRequest::Compatibility));
        assert_eq!(MsiRequest::Compatibility.index(), None);
        // Not an interrupt address.
        assert_eq!(decode_msi(0xFED0_0018, 0), None);
        // SHV clear: the data is ignored (an I/O APIC-style request).
        let no_shv = decode_msi(0xFEE0_0030, 0xFFFF_FFFF).unwrap();
        assert_eq!(no_shv, MsiRequest::Remappable { handle: 1, subhandle: None });
        assert_eq!(no_shv.index(), Some(1));
        // SHV set: multi-message MSI, message 3 of a block at handle 8.
        let multi = decode_msi(msi_address(8), 3).unwrap();
        assert_eq!(multi.index(), Some(11));
        // Reserved data bits with SHV (fault 20h).
        assert_eq!(decode_msi(msi_address(8), 0x1_0000), None);
        // handle + subhandle is not truncated.
        assert_eq!(decode_msi(msi_address(0xFFFF), 0xFFFF).unwrap().index(), Some(0x1_FFFE));
        // Address bits 1:0 are ignored.
        assert_eq!(decode_msi(msi_address(5) | 3, 0).unwrap().index(), Some(5));
    }

    #[test]
    fn table_allocates_until_full_and_reuses() {
        let mut mem = Mem::default();
        let mut t = IrTable::new(&mut mem, 3).unwrap(); // 16 entries
        assert_eq!((t.entries(), t.frames(), t.size_field()), (16, 1, 3));
        let got: Vec<u16> = core::iter::from_fn(|| t.alloc()).collect();
        assert_eq!(got, (1..16).collect::<Vec<u16>>(), "handle 0 stays reserved");
        assert_eq!((t.alloc(), t.in_use()), (None, 15));
        let e = Irte::remapped(&RemappedIrte::fixed(0x50, Destination::XApic(0), 0x10));
        t.set(&mut mem, 9, e).unwrap();
        assert_eq!(t.get(&mem, 9), Some(e));
        t.free(&mut mem, 9).unwrap();
        assert_eq!(t.get(&mem, 9), Some(Irte::NOT_PRESENT), "freeing clears the entry");
        assert_eq!(t.set(&mut mem, 9, e), Err(IrTableError::NotAllocated(9)));
        assert_eq!(t.free(&mut mem, 9), Err(IrTableError::NotAllocated(9)));
        assert_eq!(t.alloc(), Some(9));
        assert_eq!(t.set(&mut mem, 0, e), Err(IrTableError::NotAllocated(0)));
        assert_eq!(t.set(&mut mem, 16, e), Err(IrTableError::OutOfRange(16)));
        assert_eq!(t.get(&mem, 16), None);
        t.destroy(&mut mem);
        assert!(mem.frames.is_empty());
    }

    #[test]
    fn blocks_are_contiguous() {
        let mut mem = Mem::default();
        let mut t = IrTable::new(&mut mem, 4).unwrap(); // 32 entries
        assert_eq!(t.alloc(), Some(1));
        assert_eq!(t.alloc_block(4), Some(2));
        assert_eq!(t.alloc(), Some(6));
        t.free(&mut mem, 3).unwrap();
        assert_eq!(t.alloc_block(2), Some(7), "the hole at 3 is too small");
        assert_eq!(t.alloc_block(1), Some(3));
        assert_eq!(t.alloc_block(23), Some(9));
        assert_eq!(t.alloc_block(1), None);
        assert_eq!(t.alloc_block(0), None);
        assert_eq!(t.in_use(), 31);
    }

    #[test]
    fn big_tables_span_frames() {
        let mut mem = Mem::default();
        let mut t = IrTable::new(&mut mem, MAX_SIZE_FIELD).unwrap();
        assert_eq!((t.entries(), t.frames()), (65536, 256));
        assert_eq!(t.base() % (256 * 4096), 0, "size-aligned");
        let e = Irte::remapped(&RemappedIrte::fixed(0x41, Destination::X2Apic(7), 0x18));
        assert_eq!(t.alloc_block(65535), Some(1));
        assert_eq!(t.alloc(), None);
        for h in [1u16, 255, 256, 257, 0x8000, 0xFFFF] {
            t.set(&mut mem, h, e).unwrap();
            assert_eq!(t.get(&mem, h), Some(e));
        }
        // Entry 256 is the first of the second frame.
        assert_eq!(mem.frames[&(t.base() + 4096)][0], e.lo);
        assert_eq!(mem.frames[&(t.base() + 255 * 4096)][510..], [e.lo, e.hi]);
        assert!(IrTable::new(&mut mem, 16).is_none());
        t.destroy(&mut mem);
        assert!(mem.frames.is_empty());
        mem.limit = Some(1);
        assert!(IrTable::new(&mut mem, 8).is_none(), "two frames needed");
        assert!(IrTable::new(&mut mem, 7).is_some());
    }

    #[test]
    fn irta_and_sizes() {
        let mut mem = Mem::default();
        let t = IrTable::new(&mut mem, 7).unwrap(); // 256 entries, one frame
        let base = t.base();
        assert_eq!(base & 0xFFF, 0);
        assert_eq!(t.irta_value(false), base | 7);
        assert_eq!(t.irta_value(true), base | 1 << 11 | 7);
        assert_eq!(IrTable::size_field_for(1), 0);
        assert_eq!(IrTable::size_field_for(2), 0);
        assert_eq!(IrTable::size_field_for(3), 1);
        assert_eq!(IrTable::size_field_for(256), 7);
        assert_eq!(IrTable::size_field_for(257), 8);
        assert_eq!(IrTable::size_field_for(65536), 15);
        assert_eq!(IrTable::size_field_for(1 << 20), 15);
    }

    #[test]
    fn updates_keep_p_last() {
        // Record the order of writes to check P is written last and cleared first.
        struct Log {
            mem: Mem,
            writes: Vec<(usize, u64)>,
        }
        impl io_pgtable::TableMemory for Log {
            fn alloc_table(&mut self) -> Option<u64> {
                self.mem.alloc_table()
            }
            fn free_table(&mut self, pa: u64) {
                self.mem.free_table(pa)
            }
            fn read(&self, t: u64, i: usize) -> u64 {
                self.mem.read(t, i)
            }
            fn write(&mut self, t: u64, i: usize, v: u64) {
                self.writes.push((i, v));
                self.mem.write(t, i, v)
            }
        }
        impl DmaMemory for Log {
            fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
                self.mem.alloc_contiguous(frames)
            }
            fn free_contiguous(&mut self, base: u64, frames: usize) {
                self.mem.free_contiguous(base, frames)
            }
        }
        let mut log = Log { mem: Mem::default(), writes: vec![] };
        let mut t = IrTable::new(&mut log, 3).unwrap();
        let h = t.alloc().unwrap();
        let a = Irte::remapped(&RemappedIrte::fixed(0x30, Destination::XApic(1), 8));
        t.set(&mut log, h, a).unwrap();
        assert_eq!(log.writes, [(3, a.hi), (2, a.lo)], "high qword, then low with P");
        log.writes.clear();
        // Same source, new vector: one 64-bit store.
        let b = Irte::remapped(&RemappedIrte::fixed(0x31, Destination::XApic(2), 8));
        t.set(&mut log, h, b).unwrap();
        assert_eq!(log.writes, [(2, b.lo)]);
        log.writes.clear();
        // New source: not present, high, low.
        let c = Irte::remapped(&RemappedIrte::fixed(0x32, Destination::XApic(2), 0x10));
        t.set(&mut log, h, c).unwrap();
        assert_eq!(log.writes, [(2, b.lo & !1), (3, c.hi), (2, c.lo)]);
        log.writes.clear();
        t.clear(&mut log, h).unwrap();
        assert_eq!(log.writes, [(2, 0), (3, 0)], "P cleared first");
    }

    #[test]
    fn iec_descriptors() {
        assert_eq!(iec_global(), (0x4, 0));
        assert_eq!(iec_selective(5, 0), Some((0x4 | 0x10 | 5 << 32, 0)));
        assert_eq!(iec_selective(0x40, 4), Some((0x4 | 0x10 | 4 << 27 | 0x40 << 32, 0)));
        assert_eq!(iec_selective(0x41, 4), None, "unaligned");
        assert_eq!(iec_selective(0, 17), None);
        // QEMU's reserved mask for this descriptor (VTD_INV_DESC_IEC_RSVD).
        for d in [iec_global(), iec_selective(0xFFFF, 0).unwrap(), iec_selective(0, 16).unwrap()] {
            assert_eq!(d.0 & 0xFFFF_0000_07FF_F1E0, 0);
        }
    }

    #[test]
    fn fault_reasons() {
        for r in 0x20..=0x29u8 {
            assert!(ir_fault_name(r).unwrap().starts_with("IR: "), "{r:#x}");
        }
        assert_eq!(ir_fault_name(0x22), Some("IR: IRTE not present"));
        assert_eq!(ir_fault_name(0x1F), None);
        assert_eq!(ir_fault_name(0x2A), None);
        assert_eq!(ir_fault_name(0x05), None, "DMA faults are not IR faults");
        // QEMU `vtd_report_ir_fault`: index in FRCD bits 63:48.
        assert_eq!(fault_interrupt_index(0x1234u64 << 48), 0x1234);
    }
}
