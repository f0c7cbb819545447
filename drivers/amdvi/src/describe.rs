//! An AMD-Vi unit in words ([`iommu::Iommu::describe`]): the Extended
//! Feature, Control and Status registers decoded field by field (AMD IOMMU
//! spec 48882 §3.4), the device table entry the unit reads for one DeviceID
//! (§2.2.2) and the host page-table walk for one IOVA (§2.2.3, v1 format).

use crate::dte::{Dte, DTE0, DTE1, DTE2};
use crate::regs::{CONTROL, EFR, STATUS};
use crate::unit::AmdVi;
use core::fmt::{self, Write};
use io_pgtable::formats::AmdV1;
use io_pgtable::TableMemory;
use iommu::describe::{write_register, write_walk, write_walk_end, write_words, Field};
use iommu::fields;

const EFR_FIELDS: &[Field] = fields![EFR:
    PREF_SUP "PREFETCH_IOMMU_PAGES",
    PPR_SUP "peripheral page requests",
    XT_SUP "x2APIC destinations",
    NX_SUP "no-execute and privilege bits",
    GT_SUP "guest (v2) translation",
    IA_SUP "INVALIDATE_IOMMU_ALL",
    GA_SUP "guest virtual APIC",
    HE_SUP "hardware error registers",
    PC_SUP "performance counters",
    HATS "host page-table levels (0: 4, 1: 5, 2: 6)",
    GATS "guest page-table levels (0: 4, 1: 5)",
    GLX_SUP "guest CR3 table levels",
    PAS_MAX "PASID bits - 1",
    US_SUP "user/supervisor protection",
    HA_SUP "host accessed-bit updates",
    HD_SUP "host dirty-bit updates",
];

const CONTROL_FIELDS: &[Field] = fields![CONTROL:
    IOMMU_EN "IommuEn: translation on",
    HT_TUN_EN "HtTunEn",
    EVENT_LOG_EN "EventLogEn",
    EVENT_INT_EN "EventIntEn",
    COM_WAIT_INT_EN "ComWaitIntEn",
    INV_TIMEOUT "InvTimeOut",
    COHERENT "Coherent table reads",
    CMD_BUF_EN "CmdBufEn",
    PPR_LOG_EN "PPRLogEn",
    GT_EN "GTEn: guest translation",
    GA_EN "GAEn: guest virtual APIC",
];

const STATUS_FIELDS: &[Field] = fields![STATUS:
    EVENT_OVERFLOW "EventOverflow: events were lost",
    EVENT_LOG_INT "EventLogInt: an event was logged",
    COM_WAIT_INT "ComWaitInt",
    EVENT_LOG_RUN "EventLogRun",
    CMD_BUF_RUN "CmdBufRun",
    PPR_OVERFLOW "PprOverflow",
    PPR_INT "PprInt",
];

const DTE0_FIELDS: &[Field] = fields![DTE0:
    V "valid",
    TV "translation fields valid",
    MODE "mode (0: untranslated, 1-6: host page-table levels)",
    PT_ROOT "host page-table root bits 51:12",
    IR "reads allowed",
    IW "writes allowed",
];

const DTE1_FIELDS: &[Field] = fields![DTE1:
    DOMAIN_ID "DomainID: the IOTLB tag",
];

const DTE2_FIELDS: &[Field] = fields![DTE2:
    IV "interrupt fields valid",
    INT_TAB_LEN "log2 of the interrupt table's entries",
    IG "no events for unmapped interrupts",
    INT_TABLE_ROOT "interrupt table bits 51:6",
    INIT_PASS "INIT passes",
    EINT_PASS "ExtINT passes",
    NMI_PASS "NMI passes",
    INT_CTL "IntCtl (0: abort, 1: forward, 2: remap)",
    LINT0_PASS "LINT0 passes",
    LINT1_PASS "LINT1 passes",
];

/// `show`: EFR, Control and Status.
pub fn registers(unit: &AmdVi, out: &mut dyn Write) -> fmt::Result {
    writeln!(out, "AMD-Vi IOMMU (AMD IOMMU spec §3.4)")?;
    write_register(out, "EFR", unit.efr(), EFR_FIELDS)?;
    write_register(out, "CONTROL", unit.control(), CONTROL_FIELDS)?;
    write_register(out, "STATUS", unit.status(), STATUS_FIELDS)
}

fn write_dte(out: &mut dyn Write, devid: u16, dte: &Dte) -> fmt::Result {
    let words = dte.to_words();
    let title = alloc::format!("device table entry [{devid:#06x}] (§2.2.2)");
    write_words(out, &title, &words, &[DTE0_FIELDS, DTE1_FIELDS, DTE2_FIELDS])
}

/// Where a DTE sends DMA.
enum Translation {
    /// Not valid: DMA passes untranslated and unchecked (the driver never leaves one).
    Untranslated,
    /// Mode 0: untranslated, with the IR / IW rights.
    ModeZero { read: bool, write: bool },
    /// Host page tables.
    Tables { root: u64, levels: usize },
    /// A reserved mode.
    Bad,
}

fn translation(dte: &Dte) -> Translation {
    let q0 = dte.to_words()[0];
    if DTE0::V.read(q0) == 0 || DTE0::TV.read(q0) == 0 {
        return Translation::Untranslated;
    }
    match DTE0::MODE.read(q0) as usize {
        0 => Translation::ModeZero { read: DTE0::IR.read(q0) != 0, write: DTE0::IW.read(q0) != 0 },
        levels @ 1..=6 => Translation::Tables { root: DTE0::PT_ROOT.read(q0) << 12, levels },
        _ => Translation::Bad,
    }
}

/// `dump`: the DTE of `devid`, decoded, and where it leads.
pub fn device(dte: &Dte, devid: u16, out: &mut dyn Write) -> fmt::Result {
    write_dte(out, devid, dte)?;
    match translation(dte) {
        Translation::Untranslated => writeln!(out, "=> not valid: DMA passes untranslated"),
        Translation::ModeZero { read: false, write: false } => {
            writeln!(out, "=> blocked: mode 0 with neither IR nor IW, every DMA is refused (IO_PAGE_FAULT)")
        }
        Translation::ModeZero { read, write } => {
            writeln!(out, "=> untranslated (mode 0), reads {read}, writes {write}")
        }
        Translation::Tables { root, levels } => writeln!(out, "=> host page table at {root:#x}, {levels} levels"),
        Translation::Bad => writeln!(out, "=> reserved mode: ILLEGAL_DEV_TABLE_ENTRY"),
    }
}

/// `walk`: the DTE, then the host page-table walk for `iova`.
pub fn walk(dte: &Dte, mem: &impl TableMemory, devid: u16, iova: u64, out: &mut dyn Write) -> fmt::Result {
    write_dte(out, devid, dte)?;
    match translation(dte) {
        Translation::Untranslated => writeln!(out, "=> not valid: {iova:#x} passes untranslated"),
        Translation::ModeZero { read: false, write: false } => {
            writeln!(out, "=> no translation: the DTE blocks every DMA (IO_PAGE_FAULT)")
        }
        Translation::ModeZero { .. } => writeln!(out, "=> untranslated: {iova:#x} reaches physical {iova:#x}"),
        Translation::Tables { root, levels } => {
            let end = write_walk(out, &AmdV1 { levels }, root, iova, &mut |t, i| Some(mem.read(t, i)))?;
            write_walk_end(out, end, iova, "IO_PAGE_FAULT")
        }
        Translation::Bad => writeln!(out, "=> no translation: ILLEGAL_DEV_TABLE_ENTRY"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use io_pgtable::arena::Arena;
    use io_pgtable::{PageTable, Perms};

    #[test]
    fn a_dte_is_dumped_and_walked_to_the_page_or_the_fault() {
        let mut mem = Arena::new();
        let mut pt = PageTable::new(AmdV1 { levels: 3 }, &mut mem).unwrap();
        let _ = pt.map(&mut mem, 0x3000, 0x7000, 0x1000, Perms::WRITE).unwrap();
        let mut dte = Dte::zeroed();
        dte.q0.write(
            DTE0::V::SET
                + DTE0::TV::SET
                + DTE0::MODE.val(3)
                + DTE0::PT_ROOT.val(pt.root() >> 12)
                + DTE0::IR::SET
                + DTE0::IW::SET,
        );
        dte.q1.write(DTE1::DOMAIN_ID.val(9));
        let mut s = String::new();
        device(&dte, 0x10, &mut s).unwrap();
        assert!(s.lines().any(|l| l.trim_start().starts_with("DOMAIN_ID") && l.contains("= 0x9")), "{s}");
        assert!(s.contains("3 levels"), "{s}");
        let mut s = String::new();
        walk(&dte, &mem, 0x10, 0x3008, &mut s).unwrap();
        assert!(s.contains("=> 0x3008 translates to 0x7008 (4 KiB leaf, write-only)"), "{s}");
        let mut s = String::new();
        walk(&dte, &mem, 0x10, 0x4000, &mut s).unwrap();
        assert!(s.contains("IO_PAGE_FAULT"), "{s}");
        let mut blocked = Dte::zeroed();
        blocked.q0.write(DTE0::V::SET + DTE0::TV::SET);
        let mut s = String::new();
        device(&blocked, 0x10, &mut s).unwrap();
        assert!(s.contains("=> blocked"), "{s}");
    }
}
