//! The SMMU's registers as typed definitions (SMMUv3 spec §6.3). Page 0 holds
//! the control and command-queue registers, page 1 (at +64 KiB) the
//! event-queue producer and consumer indices. 32-bit registers are read with
//! 32-bit loads (QEMU returns 0 for 64-bit reads of them, QEMU.md G6).

use crate::error::SmmuError;
use tock_registers::register_bitfields;
use tock_registers::registers::{ReadOnly, ReadWrite};

register_bitfields! [u32,
    /// Feature register 0 (§6.3.1).
    pub IDR0 [
        /// Stage-2 translation supported.
        S2P OFFSET(0) NUMBITS(1) [],
        /// Stage-1 translation supported.
        S1P OFFSET(1) NUMBITS(1) [],
        /// Translation table formats (2 = AArch64 only, 3 = both).
        TTF OFFSET(2) NUMBITS(2) [],
        /// Coherent access to tables and queues.
        COHACC OFFSET(4) NUMBITS(1) [],
        /// 16-bit ASIDs.
        ASID16 OFFSET(12) NUMBITS(1) [],
        /// MSIs supported.
        MSI OFFSET(13) NUMBITS(1) [],
        /// 16-bit VMIDs.
        VMID16 OFFSET(18) NUMBITS(1) [],
        /// 2-level context-descriptor tables.
        CD2L OFFSET(19) NUMBITS(1) [],
        /// Stall model (0 stall and terminate, 1 terminate only, 2 stall forced).
        STALL_MODEL OFFSET(24) NUMBITS(2) [],
        /// Stream table levels (0 linear only, 1 linear and 2-level).
        ST_LEVEL OFFSET(27) NUMBITS(2) []
    ],
    /// Feature register 1 (§6.3.2).
    pub IDR1 [
        /// Stream ID bits.
        SIDSIZE OFFSET(0) NUMBITS(6) [],
        /// Substream ID bits.
        SSIDSIZE OFFSET(6) NUMBITS(5) [],
        /// log2 of the largest event queue.
        EVENTQS OFFSET(16) NUMBITS(5) [],
        /// log2 of the largest command queue.
        CMDQS OFFSET(21) NUMBITS(5) []
    ],
    /// Feature register 3 (§6.3.4).
    pub IDR3 [
        /// Range invalidation (TLBI with NUM/SCALE).
        RIL OFFSET(10) NUMBITS(1) []
    ],
    /// Feature register 5 (§6.3.6).
    pub IDR5 [
        /// Output address size (0 32, 1 36, 2 40, 3 42, 4 44, 5 48, 6 52 bits).
        OAS OFFSET(0) NUMBITS(3) [],
        /// 4 KiB granule.
        GRAN4K OFFSET(4) NUMBITS(1) [],
        /// 16 KiB granule.
        GRAN16K OFFSET(5) NUMBITS(1) [],
        /// 64 KiB granule.
        GRAN64K OFFSET(6) NUMBITS(1) []
    ],
    /// Control register 0 and its acknowledgement CR0ACK (§6.3.9).
    pub CR0 [
        /// Translation enable.
        SMMUEN OFFSET(0) NUMBITS(1) [],
        /// Event queue enable.
        EVENTQEN OFFSET(2) NUMBITS(1) [],
        /// Command queue enable.
        CMDQEN OFFSET(3) NUMBITS(1) []
    ],
    /// Control register 1: cacheability of queues and tables (§6.3.11).
    pub CR1 [
        /// Queue inner cacheability (1 = write-back).
        QUEUE_IC OFFSET(0) NUMBITS(2) [],
        /// Queue outer cacheability.
        QUEUE_OC OFFSET(2) NUMBITS(2) [],
        /// Queue shareability (3 = inner shareable).
        QUEUE_SH OFFSET(4) NUMBITS(2) [],
        /// Table inner cacheability.
        TABLE_IC OFFSET(6) NUMBITS(2) [],
        /// Table outer cacheability.
        TABLE_OC OFFSET(8) NUMBITS(2) [],
        /// Table shareability.
        TABLE_SH OFFSET(10) NUMBITS(2) []
    ],
    /// Control register 2 (§6.3.12).
    pub CR2 [
        /// Record C_BAD_STREAMID events.
        RECINVSID OFFSET(1) NUMBITS(1) [],
        /// Private TLB maintenance: ignore broadcast TLB invalidation.
        PTM OFFSET(2) NUMBITS(1) []
    ],
    /// Global bypass attribute (§6.3.14).
    pub GBPA [
        /// Abort transactions while SMMUEN is 0 (else they bypass).
        ABORT OFFSET(20) NUMBITS(1) [],
        /// Write with 1 to apply; reads 1 until applied.
        UPDATE OFFSET(31) NUMBITS(1) []
    ],
    /// Global errors GERROR and their acknowledgements GERRORN (§6.3.17).
    pub GERROR [
        /// Command queue error (CMDQ_CONS.ERR says which).
        CMDQ_ERR OFFSET(0) NUMBITS(1) [],
        /// Event queue write aborted.
        EVENTQ_ABT_ERR OFFSET(2) NUMBITS(1) [],
        /// Service failure mode.
        SFM_ERR OFFSET(8) NUMBITS(1) []
    ],
    /// Stream table configuration (§6.3.25).
    pub STRTAB_BASE_CFG [
        /// log2 of the number of stream IDs the table covers.
        LOG2SIZE OFFSET(0) NUMBITS(6) [],
        /// 2-level split: stream ID bits resolved by the level-2 tables.
        SPLIT OFFSET(6) NUMBITS(5) [],
        /// 0 linear, 1 2-level.
        FMT OFFSET(16) NUMBITS(2) []
    ],
    /// Command queue consumer index (§6.3.27).
    pub CMDQ_CONS [
        /// Index and wrap bit (low log2size + 1 bits).
        RD OFFSET(0) NUMBITS(20) [],
        /// Command error reason (CERROR) of the command at RD.
        ERR OFFSET(24) NUMBITS(7) []
    ],
    /// Event queue producer index (§6.3.29).
    pub EVENTQ_PROD [
        /// Index and wrap bit.
        WR OFFSET(0) NUMBITS(20) [],
        /// Overflow flag: toggles when events were lost.
        OVFLG OFFSET(31) NUMBITS(1) []
    ],
    /// Event queue consumer index (§6.3.30).
    pub EVENTQ_CONS [
        /// Index and wrap bit.
        RD OFFSET(0) NUMBITS(20) [],
        /// Overflow acknowledge: copy of OVFLG once handled.
        OVACKFLG OFFSET(31) NUMBITS(1) []
    ]
];

register_bitfields! [u64,
    /// STRTAB_BASE, CMDQ_BASE and EVENTQ_BASE (§6.3.24, §6.3.26, §6.3.30).
    pub QUEUE_BASE [
        /// log2 of the queue's entries (bits 4:0; 0 for STRTAB_BASE, whose size is in STRTAB_BASE_CFG).
        LOG2SIZE OFFSET(0) NUMBITS(5) [],
        /// Physical address bits 51:5 (STRTAB_BASE: 51:6, this driver's tables are frame-aligned).
        ADDR OFFSET(5) NUMBITS(47) [],
        /// Read-allocate hint (bit 62).
        RA OFFSET(62) NUMBITS(1) []
    ]
];

iommu::register_blocks! {
    /// Register page 0 (§6.3).
    pub Page0 {
        (0x000 => pub idr0: ReadOnly<u32, IDR0::Register>),
        (0x004 => pub idr1: ReadOnly<u32, IDR1::Register>),
        (0x008 => pub idr2: ReadOnly<u32>),
        (0x00C => pub idr3: ReadOnly<u32, IDR3::Register>),
        (0x010 => pub idr4: ReadOnly<u32>),
        (0x014 => pub idr5: ReadOnly<u32, IDR5::Register>),
        (0x018 => pub iidr: ReadOnly<u32>),
        (0x01C => pub aidr: ReadOnly<u32>),
        (0x020 => pub cr0: ReadWrite<u32, CR0::Register>),
        (0x024 => pub cr0ack: ReadOnly<u32, CR0::Register>),
        (0x028 => pub cr1: ReadWrite<u32, CR1::Register>),
        (0x02C => pub cr2: ReadWrite<u32, CR2::Register>),
        (0x030 => _reserved1),
        (0x044 => pub gbpa: ReadWrite<u32, GBPA::Register>),
        (0x048 => _reserved2),
        (0x050 => pub irq_ctrl: ReadWrite<u32>),
        (0x054 => pub irq_ctrlack: ReadOnly<u32>),
        (0x058 => _reserved3),
        (0x060 => pub gerror: ReadOnly<u32, GERROR::Register>),
        (0x064 => pub gerrorn: ReadWrite<u32, GERROR::Register>),
        (0x068 => _reserved4),
        (0x080 => pub strtab_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x088 => pub strtab_base_cfg: ReadWrite<u32, STRTAB_BASE_CFG::Register>),
        (0x08C => _reserved5),
        (0x090 => pub cmdq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x098 => pub cmdq_prod: ReadWrite<u32>),
        (0x09C => pub cmdq_cons: ReadWrite<u32, CMDQ_CONS::Register>),
        (0x0A0 => pub eventq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x0A8 => @END),
    },
    /// Register page 1, at page 0 + 0x10000 (§6.3).
    pub Page1 {
        (0x000 => _reserved0),
        (0x0A8 => pub eventq_prod: ReadWrite<u32, EVENTQ_PROD::Register>),
        (0x0AC => pub eventq_cons: ReadWrite<u32, EVENTQ_CONS::Register>),
        (0x0B0 => @END),
    }
}

/// Offset of page 1 from page 0.
pub const PAGE1: u64 = 0x1_0000;

/// The architected register window: page 0 and page 1, 64 KiB each (§6.1,
/// "SMMU memory map"); what an IORT SMMUv3 node implies (it gives no size)
/// and what a device-tree `reg` normally says.
pub const ARCHITECTED_WINDOW: u64 = 0x2_0000;

/// Checks that the register window the firmware described (device-tree
/// `reg` size, or the IORT node's implied 128 KiB) holds every register this
/// driver touches (§6, SMMU memory map): page 0 up to EVENTQ_BASE
/// ([`Page0`]) and, in page 1 at [`PAGE1`], EVENTQ_PROD / EVENTQ_CONS
/// ([`Page1`], up to 0x100B0). The driver always uses page 1 (the event queue
/// indices live only there); it uses no PRI queue (PRIQ_PROD / PRIQ_CONS,
/// also page 1, further up) and no ECMDQ or secure pages. The layout is
/// architected, not read from ID registers, so only the window can be wrong.
pub fn check_window(window: u64) -> Result<(), SmmuError> {
    let outside = |register, offset: u64, end: u64| SmmuError::RegisterOutsideWindow { register, offset, end, window };
    let page0_end = core::mem::size_of::<Page0>() as u64;
    if window < page0_end {
        return Err(outside("page 0 registers (IDR0..EVENTQ_BASE)", 0, page0_end));
    }
    let page1_end = PAGE1 + core::mem::size_of::<Page1>() as u64;
    if window < page1_end {
        return Err(outside("page 1 event queue indices (EVENTQ_PROD, EVENTQ_CONS)", PAGE1 + 0xA8, page1_end));
    }
    Ok(())
}

/// Output address size in bits for an IDR5.OAS / CD.IPS / STE.S2PS encoding.
pub fn oas_bits(oas: u32) -> u32 {
    match oas {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// Base-register value for a queue or table at `pa` with `log2size` (bits 4:0 for
/// queues) and the read-allocate hint (§6.3.24, §6.3.26).
pub fn base_value(pa: u64, log2size: u32) -> u64 {
    (QUEUE_BASE::RA::SET
        + iommu::desc::from_place(QUEUE_BASE::ADDR, pa)
        + QUEUE_BASE::LOG2SIZE.val(u64::from(log2size)))
    .value
}

/// Decodes a value written to register `name` (the names [`crate::unit`]
/// traces its writes under, SMMUv3 §6.3) into its fields by spec name, for
/// the register trace ([`iommu::trace::write`]).
pub fn decode(name: &str, v: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    use iommu::trace::flags;
    let bits = |at: u32, n: u32| (v >> at) & ((1 << n) - 1);
    match name {
        // §6.3.9.
        "CR0" => flags(v, &[(0, "SMMUEN"), (1, "PRIQEN"), (2, "EVENTQEN"), (3, "CMDQEN"), (4, "ATSCHK")], out),
        // §6.3.11.
        "CR1" => write!(
            out,
            "QUEUE_IC={} QUEUE_OC={} QUEUE_SH={} TABLE_IC={} TABLE_OC={} TABLE_SH={}",
            bits(0, 2),
            bits(2, 2),
            bits(4, 2),
            bits(6, 2),
            bits(8, 2),
            bits(10, 2)
        ),
        // §6.3.12.
        "CR2" => flags(v, &[(0, "E2H"), (1, "RECINVSID"), (2, "PTM")], out),
        // §6.3.14.
        "GBPA" => {
            flags(v, &[(31, "UPDATE"), (20, "ABORT")], out)?;
            if bits(20, 1) == 0 {
                out.write_str(" (bypass)")?;
            }
            Ok(())
        }
        // §6.3.17: GERRORN toggles acknowledge the active GERROR bits.
        "GERRORN" => flags(
            v,
            &[
                (0, "CMDQ_ERR"),
                (2, "EVENTQ_ABT_ERR"),
                (3, "PRIQ_ABT_ERR"),
                (4, "MSI_CMDQ_ABT_ERR"),
                (5, "MSI_EVENTQ_ABT_ERR"),
                (7, "MSI_GERROR_ABT_ERR"),
                (8, "SFM_ERR"),
            ],
            out,
        ),
        // §6.3.13.
        "IRQ_CTRL" => flags(v, &[(0, "GERROR_IRQEN"), (1, "PRIQ_IRQEN"), (2, "EVENTQ_IRQEN")], out),
        // §6.3.24, §6.3.26, §6.3.30 (STRTAB_BASE's size lives in STRTAB_BASE_CFG).
        "STRTAB_BASE" => write!(out, "ADDR={:#x} RA={}", v & 0x000F_FFFF_FFFF_FFC0, bits(62, 1)),
        "CMDQ_BASE" | "EVENTQ_BASE" => {
            write!(out, "ADDR={:#x} LOG2SIZE={} RA={}", v & 0x000F_FFFF_FFFF_FFE0, bits(0, 5), bits(62, 1))
        }
        // §6.3.25.
        "STRTAB_BASE_CFG" => write!(
            out,
            "FMT={} SPLIT={} LOG2SIZE={}",
            if bits(16, 2) == 1 { "2-level" } else { "linear" },
            bits(6, 5),
            bits(0, 6)
        ),
        // §6.3.27–§6.3.30: index with its wrap bit (and overflow flags).
        "CMDQ_PROD" | "CMDQ_CONS" | "EVENTQ_PROD" => write!(out, "index={:#x}", bits(0, 20)),
        "EVENTQ_CONS" => write!(out, "RD={:#x} OVACKFLG={}", bits(0, 20), bits(31, 1)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn base_values() {
        assert_eq!(base_value(0x4010_0000, 8), 1 << 62 | 0x4010_0000 | 8);
        assert_eq!(base_value(0xFFF0_0000_0000_1020, 0x25), 1 << 62 | 0x1020 | 5, "above bit 51 and LOG2SIZE masked");
    }

    #[test]
    fn window_must_reach_the_page1_queue_indices() {
        assert_eq!(check_window(ARCHITECTED_WINDOW), Ok(()));
        assert_eq!(check_window(u64::MAX), Ok(()));
        // Exactly up to EVENTQ_CONS's last byte, and one byte short.
        assert_eq!(check_window(0x1_00B0), Ok(()));
        assert_eq!(
            check_window(0x1_00AF),
            Err(SmmuError::RegisterOutsideWindow {
                register: "page 1 event queue indices (EVENTQ_PROD, EVENTQ_CONS)",
                offset: 0x1_00A8,
                end: 0x1_00B0,
                window: 0x1_00AF,
            })
        );
        // Page 0 alone (a firmware that described 64 KiB).
        assert!(matches!(check_window(0x1_0000), Err(SmmuError::RegisterOutsideWindow { offset: 0x1_00A8, .. })));
        // Not even page 0's registers.
        assert!(matches!(check_window(0xA7), Err(SmmuError::RegisterOutsideWindow { offset: 0, end: 0xA8, .. })));
        assert!(matches!(check_window(0), Err(SmmuError::RegisterOutsideWindow { window: 0, .. })));
    }

    #[test]
    fn the_error_names_register_offset_and_window() {
        let msg = check_window(0x1_0000).unwrap_err().to_string();
        assert!(
            msg.contains("EVENTQ_PROD") && msg.contains("0x100a8..0x100b0") && msg.contains("0x10000-byte"),
            "{msg}"
        );
    }
}
