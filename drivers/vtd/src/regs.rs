//! The remapping unit's registers as typed definitions (VT-d §10.4).

use tock_registers::register_bitfields;
use tock_registers::register_structs;
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
        MAMV OFFSET(48) NUMBITS(6) []
    ],
    /// Extended capability register (§10.4.3).
    pub ECAP [
        /// Queued invalidation.
        QI OFFSET(1) NUMBITS(1) [],
        /// Interrupt remapping.
        IR OFFSET(3) NUMBITS(1) [],
        /// Pass-through.
        PT OFFSET(6) NUMBITS(1) [],
        /// IOTLB register offset / 16.
        IRO OFFSET(8) NUMBITS(10) [],
        /// Scalable mode.
        SMTS OFFSET(43) NUMBITS(1) [],
        /// Second-stage translation in scalable mode.
        SLTS OFFSET(46) NUMBITS(1) [],
        /// First-stage translation in scalable mode.
        FLTS OFFSET(47) NUMBITS(1) []
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
    /// Global command / status (§10.4.4, §10.4.5): same bit positions.
    pub GLOBAL [
        /// Translation enable / status.
        TE OFFSET(31) NUMBITS(1) [],
        /// Set root table pointer / status.
        SRTP OFFSET(30) NUMBITS(1) [],
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
        ITE OFFSET(6) NUMBITS(1) []
    ]
];

register_structs! {
    /// The fixed-offset registers (§10.4, Table 42).
    pub Registers {
        (0x000 => pub version: ReadOnly<u32>),
        (0x004 => _reserved0),
        (0x008 => pub cap: ReadOnly<u64, CAP::Register>),
        (0x010 => pub ecap: ReadOnly<u64, ECAP::Register>),
        (0x018 => pub gcmd: ReadWrite<u32, GLOBAL::Register>),
        (0x01C => pub gsts: ReadOnly<u32, GLOBAL::Register>),
        (0x020 => pub rtaddr: ReadWrite<u64>),
        (0x028 => pub ccmd: ReadWrite<u64, CCMD::Register>),
        (0x030 => _reserved1),
        (0x034 => pub fsts: ReadWrite<u32, FSTS::Register>),
        (0x038 => pub fectl: ReadWrite<u32>),
        (0x03C => pub fedata: ReadWrite<u32>),
        (0x040 => pub feaddr: ReadWrite<u32>),
        (0x044 => pub feuaddr: ReadWrite<u32>),
        (0x048 => _reserved2),
        (0x080 => pub iqh: ReadOnly<u64>),
        (0x088 => pub iqt: ReadWrite<u64>),
        (0x090 => pub iqa: ReadWrite<u64>),
        (0x098 => _reserved3),
        (0x09C => pub ics: ReadWrite<u32>),
        (0x0A0 => _reserved4),
        /// Interrupt remapping table address (§10.4.29).
        (0x0B8 => pub irta: ReadWrite<u64>),
        (0x0C0 => @END),
    }
}

register_structs! {
    /// IOTLB registers at `ECAP.IRO * 16` (§10.4.8).
    pub IotlbRegisters {
        (0x000 => pub iva: ReadWrite<u64>),
        (0x008 => pub iotlb: ReadWrite<u64, IOTLB::Register>),
        (0x010 => @END),
    }
}

register_structs! {
    /// One fault-recording register at `CAP.FRO * 16` (§10.4.14).
    pub FaultRecordRegisters {
        (0x000 => pub lo: ReadOnly<u64>),
        (0x008 => pub hi_lo: ReadOnly<u32>),
        /// Bits 127:96; bit 31 (F) is write-1-to-clear.
        (0x00C => pub hi_hi: ReadWrite<u32>),
        (0x010 => @END),
    }
}
