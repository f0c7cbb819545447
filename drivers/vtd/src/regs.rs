//! The remapping unit's registers as typed definitions (VT-d §10.4),
//! including the fault-recording register's 128 bits as a typed record.
//! (Where CAP and ECAP place the movable registers is checked in
//! [`crate::layout`].)

use tock_registers::register_bitfields;
use tock_registers::registers::{ReadOnly, ReadWrite};

register_bitfields! [u64,
    /// Capability register (§10.4.2).
    pub CAP [
        /// Number of domains supported: 2^(4 + 2*ND).
        ND OFFSET(0) NUMBITS(3) [],
        /// Required write-buffer flushing.
        RWBF OFFSET(4) NUMBITS(1) [],
        /// Supported adjusted guest address widths (bit 1: 39-bit 3-level, bit 2: 48-bit 4-level, bit 3: 57-bit 5-level).
        SAGAW OFFSET(8) NUMBITS(5) [],
        /// Maximum guest address width minus one.
        MGAW OFFSET(16) NUMBITS(6) [],
        /// Fault-recording register offset / 16.
        FRO OFFSET(24) NUMBITS(10) [],
        /// Second-level large page support (bit 0: 2 MiB, bit 1: 1 GiB).
        SLLPS OFFSET(34) NUMBITS(4) [],
        /// Page-selective invalidation.
        PSI OFFSET(39) NUMBITS(1) [],
        /// Number of fault-recording registers minus one.
        NFR OFFSET(40) NUMBITS(8) [],
        /// Caching mode: not-present entries may be cached; flush on map too.
        CM OFFSET(7) NUMBITS(1) [],
        /// Maximum address-mask value for page-selective invalidation.
        MAMV OFFSET(48) NUMBITS(6) [],
        /// First-stage 1 GiB pages.
        FS1GP OFFSET(56) NUMBITS(1) [],
        /// First-stage 5-level paging.
        FL5LP OFFSET(60) NUMBITS(1) [],
        /// Advanced fault logging.
        AFL OFFSET(3) NUMBITS(1) [],
        /// Protected low-memory region.
        PLMR OFFSET(5) NUMBITS(1) [],
        /// Protected high-memory region.
        PHMR OFFSET(6) NUMBITS(1) [],
        /// Zero-length read.
        ZLR OFFSET(22) NUMBITS(1) [],
        /// Write draining.
        DWD OFFSET(54) NUMBITS(1) [],
        /// Read draining.
        DRD OFFSET(55) NUMBITS(1) [],
        /// Posted interrupts.
        PI OFFSET(59) NUMBITS(1) [],
        /// Setting IRTP invalidates the interrupt entry cache.
        ESIRTPS OFFSET(62) NUMBITS(1) [],
        /// Setting RTADDR invalidates the context and translation caches.
        ESRTPS OFFSET(63) NUMBITS(1) []
    ],
    /// Extended capability register (§10.4.3).
    pub ECAP [
        /// Queued invalidation.
        QI OFFSET(1) NUMBITS(1) [],
        /// Interrupt remapping.
        IR OFFSET(3) NUMBITS(1) [],
        /// Snoop control: the second-stage SNP bit and the PASID entry's PGSNP may be set.
        SC OFFSET(7) NUMBITS(1) [],
        /// Pass-through.
        PT OFFSET(6) NUMBITS(1) [],
        /// IOTLB register offset / 16.
        IRO OFFSET(8) NUMBITS(10) [],
        /// Scalable mode.
        SMTS OFFSET(43) NUMBITS(1) [],
        /// Second-stage translation in scalable mode.
        SLTS OFFSET(46) NUMBITS(1) [],
        /// First-stage translation in scalable mode.
        FLTS OFFSET(47) NUMBITS(1) [],
        /// Page-walk coherency.
        C OFFSET(0) NUMBITS(1) [],
        /// Device-TLB (ATS).
        DT OFFSET(2) NUMBITS(1) [],
        /// Extended interrupt mode (32-bit x2APIC destination IDs).
        EIM OFFSET(4) NUMBITS(1) [],
        /// Maximum handle mask value.
        MHMV OFFSET(20) NUMBITS(4) [],
        /// Nested translation.
        NEST OFFSET(26) NUMBITS(1) [],
        /// Page requests.
        PRS OFFSET(29) NUMBITS(1) [],
        /// Execute requests.
        ERS OFFSET(30) NUMBITS(1) [],
        /// Supervisor requests.
        SRS OFFSET(31) NUMBITS(1) [],
        /// No-write flag.
        NWFS OFFSET(33) NUMBITS(1) [],
        /// Extended accessed flag.
        EAFS OFFSET(34) NUMBITS(1) [],
        /// PASID size minus one, in bits.
        PSS OFFSET(35) NUMBITS(5) [],
        /// Process address space IDs.
        PASID OFFSET(40) NUMBITS(1) [],
        /// Device-TLB invalidation throttling.
        DIT OFFSET(41) NUMBITS(1) [],
        /// Page-request drain.
        PDS OFFSET(42) NUMBITS(1) [],
        /// Virtual command.
        VCS OFFSET(44) NUMBITS(1) [],
        /// Second-stage accessed / dirty bits.
        SLADS OFFSET(45) NUMBITS(1) [],
        /// Scalable-mode page-walk coherency.
        SMPWCS OFFSET(48) NUMBITS(1) [],
        /// RID_PASID.
        RPS OFFSET(49) NUMBITS(1) []
    ],
    /// Context command register (§10.4.7).
    pub CCMD [
        /// Invalidate context cache (set to request, cleared by hardware when done).
        ICC OFFSET(63) NUMBITS(1) [],
        /// Request granularity: 1 global, 2 domain, 3 device.
        CIRG OFFSET(61) NUMBITS(2) []
    ],
    /// IOTLB invalidate register (§10.4.8.1).
    pub IOTLB [
        /// Invalidate IOTLB (set to request, cleared when done).
        IVT OFFSET(63) NUMBITS(1) [],
        /// Request granularity: 1 global, 2 domain, 3 page.
        IIRG OFFSET(60) NUMBITS(2) [],
        /// Drain reads.
        DR OFFSET(49) NUMBITS(1) [],
        /// Drain writes.
        DW OFFSET(48) NUMBITS(1) [],
        /// Domain ID.
        DID OFFSET(32) NUMBITS(16) []
    ]
];

register_bitfields! [u32,
    /// Version (§11.4.1).
    pub VER [
        /// Minor version.
        MIN OFFSET(0) NUMBITS(4) [],
        /// Major version.
        MAX OFFSET(4) NUMBITS(4) []
    ],
    /// Global command / status (§10.4.4, §10.4.5): same bit positions.
    pub GLOBAL [
        /// Translation enable / status.
        TE OFFSET(31) NUMBITS(1) [],
        /// Set root table pointer / status.
        SRTP OFFSET(30) NUMBITS(1) [],
        /// Set fault log (one-shot).
        SFL OFFSET(29) NUMBITS(1) [],
        /// Write buffer flush (one-shot).
        WBF OFFSET(27) NUMBITS(1) [],
        /// Queued invalidation enable.
        QIE OFFSET(26) NUMBITS(1) [],
        /// Interrupt remapping enable.
        IRE OFFSET(25) NUMBITS(1) [],
        /// Set interrupt remap table pointer (one-shot) / its status.
        SIRTP OFFSET(24) NUMBITS(1) [],
        /// Compatibility-format interrupts allowed (left clear: blocked).
        CFI OFFSET(23) NUMBITS(1) []
    ],
    /// Fault status (§10.4.9).
    pub FSTS [
        /// Primary fault overflow.
        PFO OFFSET(0) NUMBITS(1) [],
        /// Primary pending fault.
        PPF OFFSET(1) NUMBITS(1) [],
        /// Invalidation queue error.
        IQE OFFSET(4) NUMBITS(1) [],
        /// Invalidation completion error (a device-TLB invalidation response was invalid).
        ICE OFFSET(5) NUMBITS(1) [],
        /// Invalidation time-out error (a device-TLB invalidation was not answered in time).
        ITE OFFSET(6) NUMBITS(1) [],
        /// Fault record index: the first record to look at.
        FRI OFFSET(8) NUMBITS(8) []
    ],
    /// Fault event control (§10.4.10).
    pub FECTL [
        /// Interrupt mask: fault events raise no interrupt while set.
        IM OFFSET(31) NUMBITS(1) [],
        /// Interrupt pending.
        IP OFFSET(30) NUMBITS(1) []
    ],
    /// Fault-recording register bits 127:96 (§10.4.14).
    pub FRCD_HI_HI [
        /// Fault (bit 127): a fault is recorded; write 1 to clear.
        F OFFSET(31) NUMBITS(1) []
    ]
];

/// The one-shot GCMD bits (SRTP, SFL, WBF, SIRTP), which must not be written
/// back from GSTS with the persistent ones (§10.4.4).
pub const GLOBAL_ONE_SHOT: u32 =
    GLOBAL::SRTP::SET.value | GLOBAL::SFL::SET.value | GLOBAL::WBF::SET.value | GLOBAL::SIRTP::SET.value;

register_bitfields! [u64,
    /// Root table address (§10.4.6).
    pub RTADDR [
        /// Translation table mode (bits 11:10): legacy or scalable-mode root table.
        TTM OFFSET(10) NUMBITS(2) [
            /// Legacy-mode root table.
            Legacy = 0,
            /// Scalable-mode root table.
            Scalable = 1
        ],
        /// Root table address (bits 63:12), 4 KiB aligned.
        RTA OFFSET(12) NUMBITS(52) []
    ],
    /// Invalidation queue address (§10.4.23).
    pub IQA [
        /// Queue size: 2^QS 4 KiB pages (bits 2:0).
        QS OFFSET(0) NUMBITS(3) [],
        /// Descriptor width (bit 11): 0 for 128-bit descriptors.
        DW OFFSET(11) NUMBITS(1) [],
        /// Invalidation queue base address (bits 63:12).
        IQA OFFSET(12) NUMBITS(52) []
    ]
];

iommu::register_blocks! {
    /// The fixed-offset registers (§10.4, Table 42).
    pub Registers {
        (0x000 => pub version: ReadOnly<u32, VER::Register>),
        (0x004 => _reserved0),
        (0x008 => pub cap: ReadOnly<u64, CAP::Register>),
        (0x010 => pub ecap: ReadOnly<u64, ECAP::Register>),
        (0x018 => pub gcmd: ReadWrite<u32, GLOBAL::Register>),
        (0x01C => pub gsts: ReadOnly<u32, GLOBAL::Register>),
        (0x020 => pub rtaddr: ReadWrite<u64, RTADDR::Register>),
        (0x028 => pub ccmd: ReadWrite<u64, CCMD::Register>),
        (0x030 => _reserved1),
        (0x034 => pub fsts: ReadWrite<u32, FSTS::Register>),
        (0x038 => pub fectl: ReadWrite<u32, FECTL::Register>),
        (0x03C => pub fedata: ReadWrite<u32>),
        (0x040 => pub feaddr: ReadWrite<u32>),
        (0x044 => pub feuaddr: ReadWrite<u32>),
        (0x048 => _reserved2),
        (0x080 => pub iqh: ReadOnly<u64>),
        (0x088 => pub iqt: ReadWrite<u64>),
        (0x090 => pub iqa: ReadWrite<u64, IQA::Register>),
        (0x098 => _reserved3),
        (0x09C => pub ics: ReadWrite<u32>),
        (0x0A0 => _reserved4),
        /// Interrupt remapping table address (§10.4.29).
        (0x0B8 => pub irta: ReadWrite<u64>),
        (0x0C0 => @END),
    }
}

iommu::register_blocks! {
    /// IOTLB registers at `ECAP.IRO * 16` (§10.4.8).
    pub IotlbRegisters {
        (0x000 => pub iva: ReadWrite<u64>),
        (0x008 => pub iotlb: ReadWrite<u64, IOTLB::Register>),
        (0x010 => @END),
    }
}

iommu::register_blocks! {
    /// One fault-recording register at `CAP.FRO * 16` (§10.4.14).
    pub FaultRecordRegisters {
        (0x000 => pub lo: ReadOnly<u64>),
        (0x008 => pub hi_lo: ReadOnly<u32>),
        /// Bits 127:96; bit 31 (F) is write-1-to-clear.
        (0x00C => pub hi_hi: ReadWrite<u32, FRCD_HI_HI::Register>),
        (0x010 => @END),
    }
}

/// End of the fixed-offset registers this driver programs: [`Registers`]
/// plus IRTA at 0xB8 (§10.4.29). The registers CAP and ECAP locate must lie
/// above it, or a write meant for IOTLB would land on GCMD (ECAP.IRO = 1
/// puts the IOTLB register at 0x18).
pub const FIXED_END: u64 = 0xC0;

register_bitfields![u64,
    /// Fault-recording register bits 63:0 (§10.4.14).
    pub FRCD_LO [
        /// Bits 63:12: fault information, the faulting page address.
        FI OFFSET(12) NUMBITS(52) [],
        /// Bits 63:48: for an interrupt-remapping fault, the interrupt index.
        FI_INDEX OFFSET(48) NUMBITS(16) []
    ],
    /// Fault-recording register bits 127:64 (§10.4.14).
    pub FRCD_HI [
        /// Bits 79:64: source identifier (requester ID).
        SID OFFSET(0) NUMBITS(16) [],
        /// Bits 103:96: fault reason.
        FR OFFSET(32) NUMBITS(8) [],
        /// Bit 126: type, 0 = write request, 1 = read request.
        T OFFSET(62) NUMBITS(1) [],
        /// Bit 127: fault recorded.
        F OFFSET(63) NUMBITS(1) []
    ]
];

iommu::descriptor! {
    /// A fault-recording register's 128 bits as read (§10.4.14).
    pub struct FaultRecordWords {
        /// Bits 63:0.
        lo: FRCD_LO,
        /// Bits 127:64.
        hi: FRCD_HI,
    }
}

/// Decodes a value written to register `name` (the names [`crate::unit`]
/// traces its writes under, VT-d §10.4) into its fields by spec name, for
/// the register trace ([`iommu::trace::write`]).
pub fn decode(name: &str, v: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    use iommu::trace::flags;
    let bit = |n: u32| (v >> n) & 1;
    match name {
        // §10.4.4: the command bits (GSTS reads back the same positions).
        "GCMD" => flags(
            v,
            &[
                (31, "TE"),
                (30, "SRTP"),
                (29, "SFL"),
                (28, "EAFL"),
                (27, "WBF"),
                (26, "QIE"),
                (25, "IRE"),
                (24, "SIRTP"),
                (23, "CFI"),
            ],
            out,
        ),
        // §10.4.6.
        "RTADDR" => write!(
            out,
            "RTA={:#x} TTM={}",
            v & !0xFFF,
            match (v >> 10) & 3 {
                0 => "legacy",
                1 => "scalable",
                _ => "reserved",
            }
        ),
        // §10.4.7.
        "CCMD" => write!(
            out,
            "ICC={} CIRG={} DID={:#x}",
            bit(63),
            ["reserved", "global", "domain", "device"][((v >> 61) & 3) as usize],
            v & 0xFFFF
        ),
        // §10.4.8.1.
        "IOTLB" => write!(
            out,
            "IVT={} IIRG={} DR={} DW={} DID={:#x}",
            bit(63),
            ["reserved", "global", "domain", "page"][((v >> 60) & 3) as usize],
            bit(49),
            bit(48),
            (v >> 32) & 0xFFFF
        ),
        // §10.4.9: write-1-to-clear.
        "FSTS" => {
            flags(v, &[(0, "PFO"), (1, "PPF"), (4, "IQE"), (5, "ICE"), (6, "ITE")], out)?;
            out.write_str(" cleared")
        }
        // §10.4.10.
        "FECTL" => write!(out, "IM={}", bit(31)),
        // §10.4.14: bits 127:96 of a fault-recording register; F is write-1-to-clear.
        "FRCD_HI" => out.write_str(if bit(31) != 0 { "F cleared" } else { "" }),
        // §10.4.22: IQT holds the byte offset of the next free 128-bit descriptor.
        "IQT" => write!(out, "QT={}", (v >> 4) & 0x7FFF),
        // §10.4.23.
        "IQA" => write!(out, "IQA={:#x} DW={} QS={}", v & !0xFFF, bit(11), v & 7),
        // §10.4.29.
        "IRTA" => write!(out, "IRTA={:#x} EIME={} S={}", v & !0xFFF, bit(11), v & 0xF),
        _ => Ok(()),
    }
}
