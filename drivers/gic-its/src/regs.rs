//! The ITS control frame as typed registers (Arm GIC architecture
//! specification IHI 0069, §12.19 "The ITS register descriptions"). The
//! 64-bit registers are read and written whole: the ITS accepts 64-bit
//! accesses to them (QEMU's `its_readll` / `its_writell`).

use iommu::mmio::tock_registers::register_bitfields;
use iommu::mmio::tock_registers::registers::{ReadOnly, ReadWrite};

register_bitfields! [u32,
    /// GITS_CTLR.
    pub GITS_CTLR [
        /// The ITS translates and processes commands.
        ENABLED OFFSET(0) NUMBITS(1) [],
        /// No transaction and no command is in flight (safe to reprogram).
        QUIESCENT OFFSET(31) NUMBITS(1) []
    ]
];

register_bitfields! [u64,
    /// GITS_TYPER.
    pub GITS_TYPER [
        /// Physical LPIs supported.
        PHYSICAL OFFSET(0) NUMBITS(1) [],
        /// Bytes per interrupt translation table entry, minus one.
        ITT_ENTRY_SIZE OFFSET(4) NUMBITS(4) [],
        /// EventID bits supported, minus one.
        ID_BITS OFFSET(8) NUMBITS(5) [],
        /// DeviceID bits supported, minus one.
        DEV_BITS OFFSET(13) NUMBITS(5) [],
        /// Commands name a redistributor by physical address (1) or by
        /// processor number (0).
        PTA OFFSET(19) NUMBITS(1) [],
        /// Collections held in the ITS itself (no memory needed for them).
        HCC OFFSET(24) NUMBITS(8) [],
        /// Collection ID bits, minus one (valid when CIL is set).
        CID_BITS OFFSET(32) NUMBITS(4) [],
        /// CID_BITS is meaningful (else collection IDs have 16 bits).
        CIL OFFSET(36) NUMBITS(1) []
    ],
    /// GITS_CBASER: where the command queue is.
    pub GITS_CBASER [
        /// 4 KiB pages of the queue, minus one.
        SIZE OFFSET(0) NUMBITS(8) [],
        /// Shareability of the ITS's accesses (1: inner shareable).
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Bits 51:12 of the queue's physical address.
        PHYSICAL_ADDRESS OFFSET(12) NUMBITS(40) [],
        /// Outer cacheability (0: same as inner).
        OUTER_CACHE OFFSET(53) NUMBITS(3) [],
        /// Inner cacheability (7: write-back, read- and write-allocate).
        INNER_CACHE OFFSET(59) NUMBITS(3) [],
        /// The queue is valid.
        VALID OFFSET(63) NUMBITS(1) []
    ],
    /// `GITS_BASER<n>`: one table the ITS keeps in memory.
    pub GITS_BASER [
        /// Pages of the table, minus one.
        SIZE OFFSET(0) NUMBITS(8) [],
        /// Page size of the table.
        PAGE_SIZE OFFSET(8) NUMBITS(2) [Size4K = 0, Size16K = 1, Size64K = 2],
        /// Shareability of the ITS's accesses.
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Bits 47:12 of the table's physical address (64 KiB pages: 47:16,
        /// with bits 15:12 holding address bits 51:48).
        PHYSICAL_ADDRESS OFFSET(12) NUMBITS(36) [],
        /// Bytes per entry, minus one (read-only).
        ENTRY_SIZE OFFSET(48) NUMBITS(5) [],
        /// Outer cacheability.
        OUTER_CACHE OFFSET(53) NUMBITS(3) [],
        /// What the table holds (read-only).
        TYPE OFFSET(56) NUMBITS(3) [Unimplemented = 0, Devices = 1, Vpes = 2, Collections = 4],
        /// Inner cacheability.
        INNER_CACHE OFFSET(59) NUMBITS(3) [],
        /// Two-level table.
        INDIRECT OFFSET(62) NUMBITS(1) [],
        /// The table is valid.
        VALID OFFSET(63) NUMBITS(1) []
    ],
    /// GITS_CREADR: the command the ITS reads next.
    pub GITS_CREADR [
        /// Command processing stopped at an error.
        STALLED OFFSET(0) NUMBITS(1) [],
        /// Byte offset of the next command, in units of 32 bytes (bits 19:5).
        OFFSET OFFSET(5) NUMBITS(15) []
    ]
];

iommu::register_blocks! {
    /// The ITS control frame (ITS_base + 0; the translation frame with
    /// GITS_TRANSLATER follows at + 64 KiB, see [`crate::TRANSLATER_OFFSET`]).
    pub ItsRegisters {
        (0x0000 => pub ctlr: ReadWrite<u32, GITS_CTLR::Register>),
        (0x0004 => pub iidr: ReadOnly<u32>),
        (0x0008 => pub typer: ReadOnly<u64, GITS_TYPER::Register>),
        (0x0010 => _reserved0),
        (0x0080 => pub cbaser: ReadWrite<u64, GITS_CBASER::Register>),
        (0x0088 => pub cwriter: ReadWrite<u64>),
        (0x0090 => pub creadr: ReadOnly<u64, GITS_CREADR::Register>),
        (0x0098 => _reserved1),
        (0x0100 => pub baser: [ReadWrite<u64, GITS_BASER::Register>; 8]),
        (0x0140 => @END),
    }
}
