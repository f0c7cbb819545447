//! The IOMMU's MMIO registers as typed definitions (§3.4, "IOMMU MMIO
//! Registers"). All registers used here are 64 bits wide and accessed with
//! 64-bit loads and stores: QEMU accepts 2-, 4- and 8-byte accesses
//! (`amdvi_mmio_read` / `amdvi_mmio_write`), but takes a new device-table or
//! command-buffer base only after an 8-byte write or a write to the upper
//! half, so whole-register writes are the simple, correct choice.

use crate::error::AmdViError;
use iommu::mmio::tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::register_bitfields;

register_bitfields! [u64,
    /// Device Table Base Address register (MMIO offset 0000h).
    pub DEVTAB_BASE [
        /// Table size in 4 KiB units, minus one (0x1FF = 2 MiB = 65536 DTEs).
        SIZE OFFSET(0) NUMBITS(9) [],
        /// Physical address bits 51:12 of the table.
        BASE OFFSET(12) NUMBITS(40) []
    ],
    /// Command Buffer and Event Log Base Address registers (offsets 0008h, 0010h).
    pub RING_BASE [
        /// Physical address bits 51:12 of the ring.
        BASE OFFSET(12) NUMBITS(40) [],
        /// log2 of the number of 16-byte entries (ComLen / EventLen; at least 8).
        LEN OFFSET(56) NUMBITS(4) []
    ],
    /// IOMMU Control register (offset 0018h).
    pub CONTROL [
        /// IommuEn: translation and the command / event machinery on.
        IOMMU_EN OFFSET(0) NUMBITS(1) [],
        /// HtTunEn: HyperTransport tunnel translation.
        HT_TUN_EN OFFSET(1) NUMBITS(1) [],
        /// EventLogEn: record events in the event log.
        EVENT_LOG_EN OFFSET(2) NUMBITS(1) [],
        /// EventIntEn: interrupt when an event is logged.
        EVENT_INT_EN OFFSET(3) NUMBITS(1) [],
        /// ComWaitIntEn: interrupt on COMPLETION_WAIT with I = 1.
        COM_WAIT_INT_EN OFFSET(4) NUMBITS(1) [],
        /// InvTimeOut: device IOTLB invalidation timeout (0 = none).
        INV_TIMEOUT OFFSET(5) NUMBITS(3) [],
        /// Coherent: the IOMMU's own reads of tables and buffers are snooped.
        COHERENT OFFSET(10) NUMBITS(1) [],
        /// CmdBufEn: fetch and run commands.
        CMD_BUF_EN OFFSET(12) NUMBITS(1) [],
        /// PPRLogEn: peripheral page request log.
        PPR_LOG_EN OFFSET(13) NUMBITS(1) [],
        /// GTEn: guest (v2) translation.
        GT_EN OFFSET(16) NUMBITS(1) [],
        /// GAEn: guest virtual APIC.
        GA_EN OFFSET(17) NUMBITS(1) []
    ],
    /// Exclusion Base register (offset 0020h).
    pub EXCL_BASE [
        /// ExEn: the exclusion range is active.
        EX_EN OFFSET(0) NUMBITS(1) [],
        /// Allow: the range applies to every device (not only DTE.EX ones).
        ALLOW OFFSET(1) NUMBITS(1) [],
        /// Physical address bits 51:12 of the first excluded page.
        BASE OFFSET(12) NUMBITS(40) []
    ],
    /// Extended Feature register (offset 0030h), read-only.
    pub EFR [
        /// PreFSup: PREFETCH_IOMMU_PAGES.
        PREF_SUP OFFSET(0) NUMBITS(1) [],
        /// PPRSup: peripheral page requests.
        PPR_SUP OFFSET(1) NUMBITS(1) [],
        /// XTSup: x2APIC interrupt destinations.
        XT_SUP OFFSET(2) NUMBITS(1) [],
        /// NXSup: no-execute and privilege bits.
        NX_SUP OFFSET(3) NUMBITS(1) [],
        /// GTSup: guest translation.
        GT_SUP OFFSET(4) NUMBITS(1) [],
        /// IASup: INVALIDATE_IOMMU_ALL.
        IA_SUP OFFSET(6) NUMBITS(1) [],
        /// GASup: guest virtual APIC.
        GA_SUP OFFSET(7) NUMBITS(1) [],
        /// HESup: hardware error registers.
        HE_SUP OFFSET(8) NUMBITS(1) [],
        /// PCSup: performance counters.
        PC_SUP OFFSET(9) NUMBITS(1) [],
        /// HATS: host page-table levels (0 = 4, 1 = 5, 2 = 6, 3 reserved).
        HATS OFFSET(10) NUMBITS(2) [],
        /// GATS: guest page-table levels (0 = 4, 1 = 5).
        GATS OFFSET(12) NUMBITS(2) [],
        /// GLXSup: guest CR3 table levels.
        GLX_SUP OFFSET(14) NUMBITS(2) [],
        /// PASmax: PASID bits minus one.
        PAS_MAX OFFSET(32) NUMBITS(5) [],
        /// USSup: user/supervisor page protection.
        US_SUP OFFSET(37) NUMBITS(1) [],
        /// HASup: host access bit updates.
        HA_SUP OFFSET(49) NUMBITS(1) [],
        /// HDSup: host dirty bit updates.
        HD_SUP OFFSET(52) NUMBITS(1) []
    ],
    /// Command buffer and event log head / tail pointer registers (offsets
    /// 2000h–2018h): byte offsets into the ring, 16-byte aligned.
    pub RING_PTR [
        /// Bits 18:4 of the byte offset.
        OFFSET OFFSET(4) NUMBITS(15) []
    ],
    /// IOMMU Status register (offset 2020h).
    pub STATUS [
        /// EventOverflow (write 1 to clear): the event log was full, events were lost.
        EVENT_OVERFLOW OFFSET(0) NUMBITS(1) [],
        /// EventLogInt (write 1 to clear): an event was logged.
        EVENT_LOG_INT OFFSET(1) NUMBITS(1) [],
        /// ComWaitInt (write 1 to clear): a COMPLETION_WAIT with I = 1 completed.
        COM_WAIT_INT OFFSET(2) NUMBITS(1) [],
        /// EventLogRun: events are being logged.
        EVENT_LOG_RUN OFFSET(3) NUMBITS(1) [],
        /// CmdBufRun: commands are being fetched.
        CMD_BUF_RUN OFFSET(4) NUMBITS(1) [],
        /// PprOverflow (write 1 to clear).
        PPR_OVERFLOW OFFSET(5) NUMBITS(1) [],
        /// PprInt (write 1 to clear).
        PPR_INT OFFSET(6) NUMBITS(1) []
    ]
];

iommu::register_blocks! {
    /// The register block (§3.4): control registers at 0000h, ring pointers
    /// and status at 2000h, 16 KiB in all.
    pub Regs {
        /// Device Table Base Address (0000h).
        (0x0000 => pub devtab_base: ReadWrite<u64, DEVTAB_BASE::Register>),
        /// Command Buffer Base Address (0008h).
        (0x0008 => pub cmd_base: ReadWrite<u64, RING_BASE::Register>),
        /// Event Log Base Address (0010h).
        (0x0010 => pub evt_base: ReadWrite<u64, RING_BASE::Register>),
        /// IOMMU Control (0018h).
        (0x0018 => pub control: ReadWrite<u64, CONTROL::Register>),
        /// Exclusion Base (0020h).
        (0x0020 => pub excl_base: ReadWrite<u64, EXCL_BASE::Register>),
        /// Exclusion Range Limit (0028h).
        (0x0028 => pub excl_limit: ReadWrite<u64>),
        /// Extended Feature Register (0030h).
        (0x0030 => pub efr: ReadOnly<u64, EFR::Register>),
        (0x0038 => _reserved0),
        /// Command Buffer Head Pointer (2000h), advanced by the IOMMU.
        (0x2000 => pub cmd_head: ReadWrite<u64, RING_PTR::Register>),
        /// Command Buffer Tail Pointer (2008h), advanced by software.
        (0x2008 => pub cmd_tail: ReadWrite<u64, RING_PTR::Register>),
        /// Event Log Head Pointer (2010h), advanced by software.
        (0x2010 => pub evt_head: ReadWrite<u64, RING_PTR::Register>),
        /// Event Log Tail Pointer (2018h), advanced by the IOMMU.
        (0x2018 => pub evt_tail: ReadWrite<u64, RING_PTR::Register>),
        /// IOMMU Status (2020h).
        (0x2020 => pub status: ReadWrite<u64, STATUS::Register>),
        (0x2028 => _reserved1),
        (0x4000 => @END),
    }
}

/// Size of the register block.
pub const MMIO_SIZE: usize = 0x4000;

/// The registers this driver reads or writes (§3.4), by name, offset and
/// end: the control block (Device Table Base at 0000h through EFR at 0037h)
/// and the ring pointers and status (CmdHead at 2000h through Status at
/// 2027h).
const USED: [(&str, u64, u64); 2] = [
    ("control registers (Device Table Base..EFR, 0000h-0037h)", 0x0000, 0x0038),
    ("ring pointers and status (Command Buffer Head..IOMMU Status, 2000h-2027h)", 0x2000, 0x2028),
];

/// Checks that the mapped register window (`window` bytes; the IVHD gives
/// the base only, so the kernel maps the 16 KiB block of §3.4) holds every
/// register the driver uses ([`Regs`]). The offsets are fixed by the spec,
/// none comes from a capability: EFR only says which optional registers
/// exist, and the ones it gates that lie beyond 16 KiB — the performance
/// counter banks at MMIO offset 4_0000h (EFR.PCSup) — are not used; the
/// PPR log (EFR.PPRSup, 0038h / 2030h) and GA log (EFR.GASup, 00E0h /
/// 2040h) registers are inside the block and not used either. A driver that
/// starts using an EFR-gated register adds it to this check with its EFR bit.
pub fn check_window(window: u64) -> Result<(), AmdViError> {
    let outside = |register, offset: u64, end: u64| AmdViError::RegisterOutsideWindow { register, offset, end, window };
    if let Some(&(register, offset, end)) = USED.iter().find(|(_, _, end)| *end > window) {
        return Err(outside(register, offset, end));
    }
    // The typed view spans the whole block, reserved gaps included.
    let block = core::mem::size_of::<Regs>() as u64;
    if block > window {
        return Err(outside("register block (Regs, 0000h-3FFFh)", 0, block));
    }
    Ok(())
}

/// Status bits that are cleared by writing 1 (EventOverflow, EventLogInt,
/// ComWaitInt, PprOverflow, PprInt).
pub const STATUS_W1C: u64 = 0x67;

/// Highest number of host page-table levels the unit walks (EFR.HATS), or
/// `None` for the reserved encoding.
pub fn host_levels(efr: u64) -> Option<usize> {
    match EFR::HATS.read(efr) {
        h @ 0..=2 => Some(4 + h as usize),
        _ => None,
    }
}

/// The EFR feature bits by their spec names, for the boot log.
pub fn efr_features(efr: u64) -> alloc::vec::Vec<&'static str> {
    let flags = [
        (EFR::PREF_SUP, "PreFSup"),
        (EFR::PPR_SUP, "PPRSup"),
        (EFR::XT_SUP, "XTSup"),
        (EFR::NX_SUP, "NXSup"),
        (EFR::GT_SUP, "GTSup"),
        (EFR::IA_SUP, "IASup"),
        (EFR::GA_SUP, "GASup"),
        (EFR::HE_SUP, "HESup"),
        (EFR::PC_SUP, "PCSup"),
        (EFR::US_SUP, "USSup"),
        (EFR::HA_SUP, "HASup"),
        (EFR::HD_SUP, "HDSup"),
    ];
    flags.iter().filter(|(f, _)| f.read(efr) != 0).map(|(_, n)| *n).collect()
}

/// Decodes a value written to register `name` (the names [`crate::unit`]
/// traces its writes under, the AMD IOMMU spec's §3.4 names) into its fields,
/// for the register trace ([`iommu::trace::write`]).
pub fn decode(name: &str, v: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    use iommu::trace::flags;
    match name {
        // §3.4.1
        "DevTabBase" => write!(out, "Base={:#x} Size={} pages", v & 0x000F_FFFF_FFFF_F000, (v & 0x1FF) + 1),
        // §3.4.2, §3.4.3
        "CmdBufBase" | "EventLogBase" => {
            write!(out, "Base={:#x} Len=2^{}", v & 0x000F_FFFF_FFFF_F000, (v >> 56) & 0xF)
        }
        // §3.4.4
        "Control" => flags(
            v,
            &[
                (0, "IommuEn"),
                (1, "HtTunEn"),
                (2, "EventLogEn"),
                (3, "EventIntEn"),
                (4, "ComWaitIntEn"),
                (10, "Coherent"),
                (12, "CmdBufEn"),
                (13, "PPRLogEn"),
                (16, "GTEn"),
                (17, "GAEn"),
            ],
            out,
        ),
        // §3.4.5
        "ExclBase" => write!(out, "ExEn={} Allow={} Base={:#x}", v & 1, (v >> 1) & 1, v & !0xFFF),
        // §3.4.9–§3.4.12: byte offsets of 16-byte entries.
        "CmdHead" | "CmdTail" | "EventLogHead" | "EventLogTail" => {
            let off = v & 0x7_FFF0;
            write!(out, "offset={off:#x} (entry {})", off / 16)
        }
        // §3.4.13: write-1-to-clear bits.
        "Status" if v == 0 => out.write_str("nothing to clear"),
        "Status" => {
            flags(
                v,
                &[(0, "EventOverflow"), (1, "EventLogInt"), (2, "ComWaitInt"), (5, "PprOverflow"), (6, "PprInt")],
                out,
            )?;
            out.write_str(" cleared")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn outside(r: Result<(), AmdViError>) -> (u64, u64, u64) {
        match r {
            Err(AmdViError::RegisterOutsideWindow { offset, end, window, .. }) => (offset, end, window),
            other => panic!("expected RegisterOutsideWindow, got {other:?}"),
        }
    }

    #[test]
    fn window_must_hold_the_16k_block() {
        assert_eq!(core::mem::size_of::<Regs>(), MMIO_SIZE);
        assert_eq!(check_window(0x4000), Ok(()));
        assert_eq!(check_window(u64::MAX), Ok(()));
        // One byte short of the block: the head/tail registers fit, the typed block does not.
        assert_eq!(outside(check_window(0x3FFF)), (0, 0x4000, 0x3FFF));
        // Exactly up to IOMMU Status, and one byte short of it.
        assert_eq!(outside(check_window(0x2028)), (0, 0x4000, 0x2028));
        assert_eq!(outside(check_window(0x2027)), (0x2000, 0x2028, 0x2027));
        // One page (what a VT-d-style mapping would give): head/tail at 2000h are out.
        assert_eq!(outside(check_window(0x1000)), (0x2000, 0x2028, 0x1000));
        assert_eq!(outside(check_window(0x37)), (0, 0x38, 0x37));
        assert_eq!(outside(check_window(0)), (0, 0x38, 0));
    }

    #[test]
    fn the_error_names_register_offset_and_window() {
        let msg = check_window(0x1000).unwrap_err().to_string();
        assert!(
            msg.contains("Command Buffer Head") && msg.contains("0x2000..0x2028") && msg.contains("0x1000-byte"),
            "{msg}"
        );
    }
}
