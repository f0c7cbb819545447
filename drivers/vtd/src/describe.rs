//! A VT-d unit in words ([`iommu::Iommu::describe`]): the capability and
//! status registers decoded field by field (§11.4.2–§11.4.5), the root,
//! context and PASID entries the unit reads for one requester ID, as it
//! finds them in memory (§9.1–§9.6), and the walk it does for one IOVA.
//!
//! Everything is read from what the hardware reads (the registers, the
//! tables in memory), not from the driver's bookkeeping, so what is shown is
//! what the unit sees.

use crate::context::{CTX_HI, CTX_LO};
use crate::context::{PASID_DIR, PASID_Q0, PASID_Q1, PASID_Q2, ROOT_LO, SCTX_Q0, SCTX_Q1};
use crate::regs::{CAP, ECAP, FECTL, FSTS, GLOBAL, VER};
use crate::unit::Unit;
use crate::Stage;
use core::fmt::{self, Write};
use io_pgtable::formats::{VtdSecondLevel, X86Paging};
use io_pgtable::TableMemory;
use iommu::describe::{write_register, write_walk, write_walk_end, write_words, Field, WalkEnd};
use iommu::fields;

const CAP_FIELDS: &[Field] = fields![CAP:
    ND "number of domains: 2^(4 + 2*ND)",
    AFL "advanced fault logging",
    RWBF "required write-buffer flushing",
    PLMR "protected low-memory region",
    PHMR "protected high-memory region",
    CM "caching mode: not-present entries may be cached",
    SAGAW "supported adjusted guest address widths (bit 1: 3-level, 2: 4-level, 3: 5-level)",
    MGAW "maximum guest address width - 1",
    ZLR "zero-length read",
    FRO "fault-recording register offset / 16",
    SLLPS "second-stage large pages (bit 0: 2 MiB, bit 1: 1 GiB)",
    PSI "page-selective invalidation",
    NFR "number of fault-recording registers - 1",
    MAMV "maximum address mask value",
    DWD "write draining",
    DRD "read draining",
    FS1GP "first-stage 1 GiB pages",
    PI "posted interrupts",
    FL5LP "first-stage 5-level paging",
    ESIRTPS "IRTP set invalidates the interrupt entry cache",
    ESRTPS "RTADDR set invalidates the caches",
];

const ECAP_FIELDS: &[Field] = fields![ECAP:
    C "page-walk coherency",
    QI "queued invalidation",
    DT "device-TLB (ATS)",
    IR "interrupt remapping",
    EIM "extended interrupt mode (x2APIC IDs)",
    PT "pass-through",
    SC "snoop control",
    IRO "IOTLB register offset / 16",
    MHMV "maximum handle mask value",
    NEST "nested translation",
    PRS "page requests",
    ERS "execute requests",
    SRS "supervisor requests",
    NWFS "no write flag",
    EAFS "extended accessed flag",
    PSS "PASID size - 1 (bits)",
    PASID "process address space IDs",
    DIT "device-TLB invalidation throttling",
    PDS "page-request drain",
    SMTS "scalable-mode translation",
    VCS "virtual command",
    SLADS "second-stage accessed/dirty",
    SLTS "second-stage translation (scalable mode)",
    FLTS "first-stage translation (scalable mode)",
    SMPWCS "scalable-mode page-walk coherency",
    RPS "RID_PASID",
];

const VER_FIELDS: &[Field] = fields![VER:
    MIN "minor version",
    MAX "major version",
];

const GSTS_FIELDS: &[Field] = fields![GLOBAL:
    CFI "compatibility-format interrupts allowed",
    SIRTP "interrupt remapping table pointer set",
    IRE "interrupt remapping enabled",
    QIE "queued invalidation enabled",
    WBF "write-buffer flush pending",
    SFL "fault log pointer set",
    SRTP "root table pointer set",
    TE "translation enabled",
];

const FSTS_FIELDS: &[Field] = fields![FSTS:
    PFO "primary fault overflow",
    PPF "primary pending fault",
    IQE "invalidation queue error",
    ICE "invalidation completion error",
    ITE "invalidation time-out error",
    FRI "fault record index",
];

const FECTL_FIELDS: &[Field] = fields![FECTL:
    IP "interrupt pending",
    IM "interrupt mask",
];

const ROOT_FIELDS: &[Field] = fields![ROOT_LO:
    P "present",
    CTP "context table pointer",
];

const CTX_LO_FIELDS: &[Field] = fields![CTX_LO:
    P "present",
    FPD "fault processing disable",
    TT "translation type (0: second level, 2: pass-through)",
    SLPTPTR "second-level page-table pointer",
];

const CTX_HI_FIELDS: &[Field] = fields![CTX_HI:
    AW "address width (1: 39-bit 3-level, 2: 48-bit 4-level, 3: 57-bit 5-level)",
    DID "domain identifier",
];

const SCTX_Q0_FIELDS: &[Field] = fields![SCTX_Q0:
    P "present",
    PDTS "PASID directory size: 2^(PDTS + 7) entries",
    PASIDDIRPTR "PASID directory pointer",
];

const SCTX_Q1_FIELDS: &[Field] = fields![SCTX_Q1:
    RID_PASID "PASID of requests without one",
];

const PASID_DIR_FIELDS: &[Field] = fields![PASID_DIR:
    P "present",
    SMPTBLPTR "PASID table pointer",
];

const PASID_Q0_FIELDS: &[Field] = fields![PASID_Q0:
    P "present",
    AW "address width",
    PGTT "PASID-granular translation type (1: first stage, 2: second stage, 4: pass-through)",
    SSPTPTR "second-stage page-table pointer",
];

const PASID_Q1_FIELDS: &[Field] = fields![PASID_Q1:
    DID "domain identifier",
    PGSNP "page snoop",
];

const PASID_Q2_FIELDS: &[Field] = fields![PASID_Q2:
    FLPM "first-stage paging mode (0: 4-level, 1: 5-level)",
    FSPTPTR "first-stage page-table pointer",
];

/// `show`: the identification, capability and status registers, decoded.
pub fn registers(unit: &Unit, out: &mut dyn Write) -> fmt::Result {
    let live = unit.status_registers();
    writeln!(out, "VT-d remapping unit, {} (§11.4)", stage_name(unit.stage))?;
    write_register(out, "VER", live.version, VER_FIELDS)?;
    write_register(out, "CAP", unit.cap, CAP_FIELDS)?;
    write_register(out, "ECAP", unit.ecap, ECAP_FIELDS)?;
    write_register(out, "GSTS", live.gsts, GSTS_FIELDS)?;
    write_register(out, "FSTS", live.fsts, FSTS_FIELDS)?;
    write_register(out, "FECTL", live.fectl, FECTL_FIELDS)?;
    writeln!(out, "RTADDR = {:#018x}", live.rtaddr)?;
    writeln!(out, "IQA = {:#018x}  IQH = {:#x}  IQT = {:#x}", live.iqa, live.iqh, live.iqt)?;
    Ok(())
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Legacy => "legacy mode (root and context tables, second-level tables)",
        Stage::ScalableSecond => "scalable mode, second-stage tables",
        Stage::ScalableFirst => "scalable mode, first-stage tables",
    }
}

/// Where the unit's walk for a requester ID goes after the context (and
/// PASID) entries.
enum Translation {
    /// The walk stopped in the context structures, with this fault reason.
    Fault(u8),
    /// DMA addresses are physical addresses.
    PassThrough,
    /// Second-level tables.
    Second { root: u64, levels: usize },
    /// First-stage tables (x86 paging).
    First { root: u64, levels: usize },
    /// Nested (PGTT 011b): the first stage is the task's, at its own addresses.
    Nested,
}

/// Where a unit's structures start: what `dump` and `walk` need of it.
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// The root table (RTADDR).
    pub root: u64,
    /// Legacy or scalable mode.
    pub stage: Stage,
    /// The largest second-level leaf (0: 4 KiB, 1: 2 MiB, 2: 1 GiB).
    pub max_leaf_level: usize,
}

impl Tables {
    /// The unit's.
    pub fn of(unit: &Unit) -> Tables {
        Tables { root: unit.root_table(), stage: unit.stage, max_leaf_level: unit.max_leaf_level }
    }
}

/// `dump`: the entries the unit reads for `rid`, in walk order; then where
/// they lead.
pub fn device(unit: Tables, mem: &impl TableMemory, rid: u16, out: &mut dyn Write) -> fmt::Result {
    let t = context_walk(unit, mem, rid, out)?;
    match t {
        Translation::Fault(r) => {
            writeln!(out, "=> DMA from {rid:#06x} faults here (reason {r:#x}: {})", crate::FaultReason(r).name())
        }
        Translation::PassThrough => writeln!(out, "=> pass-through: DMA addresses are physical addresses"),
        Translation::Second { root, levels } => {
            writeln!(out, "=> second-level table at {root:#x}, {levels} levels")
        }
        Translation::First { root, levels } => writeln!(out, "=> first-stage table at {root:#x}, {levels} levels"),
        Translation::Nested => {
            writeln!(out, "=> nested: the first stage is the task's (its addresses), over the second stage")
        }
    }
}

/// `walk`: the context structures, then the page-table walk for `iova`.
pub fn walk(unit: Tables, mem: &impl TableMemory, rid: u16, iova: u64, out: &mut dyn Write) -> fmt::Result {
    let t = context_walk(unit, mem, rid, out)?;
    let mut read = |table: u64, index: usize| Some(mem.read(table, index));
    let (end, fault) = match t {
        Translation::Fault(r) => {
            return writeln!(out, "=> no translation: reason {r:#x}, {}", crate::FaultReason(r).name());
        }
        Translation::PassThrough => return writeln!(out, "=> pass-through: {iova:#x} reaches physical {iova:#x}"),
        Translation::Nested => {
            return writeln!(out, "=> nested: the first stage is the task's; walk it with the task's own view")
        }
        Translation::Second { root, levels } => {
            let fmt = VtdSecondLevel { levels, max_leaf_level: unit.max_leaf_level };
            let end = write_walk(out, &fmt, root, iova, &mut read)?;
            let fault = match end {
                WalkEnd::OutOfRange { .. } => "reason 0x4, address beyond the guest address width",
                _ => "reason 0x5 on a write, 0x6 on a read: no permission",
            };
            (end, fault)
        }
        Translation::First { root, levels } => {
            let fmt = X86Paging::vtd_first_level(levels, 2);
            let end = write_walk(out, &fmt, root, iova, &mut read)?;
            (end, "reason 0x71, first-stage entry not present")
        }
    };
    write_walk_end(out, end, iova, fault)
}

fn context_walk(
    unit: Tables,
    mem: &impl TableMemory,
    rid: u16,
    out: &mut dyn Write,
) -> Result<Translation, fmt::Error> {
    let (bus, devfn) = (usize::from(rid >> 8), usize::from(rid & 0xFF));
    let root = unit.root;
    writeln!(out, "requester {rid:#06x} (bus {bus:#04x}, devfn {devfn:#04x}); root table at {root:#x}")?;
    if unit.stage == Stage::Legacy {
        let re = mem.read(root, 2 * bus);
        write_words(out, &alloc::format!("root entry [{bus}] (§9.1)"), &[re], &[ROOT_FIELDS])?;
        if ROOT_LO::P.read(re) == 0 {
            return Ok(Translation::Fault(0x01));
        }
        let ct = ROOT_LO::CTP.read(re) << 12;
        let (lo, hi) = (mem.read(ct, 2 * devfn), mem.read(ct, 2 * devfn + 1));
        let title = alloc::format!("context entry [{devfn}] at {ct:#x} (§9.3)");
        write_words(out, &title, &[lo, hi], &[CTX_LO_FIELDS, CTX_HI_FIELDS])?;
        if CTX_LO::P.read(lo) == 0 {
            return Ok(Translation::Fault(0x02));
        }
        return Ok(match CTX_LO::TT.read(lo) {
            0 => Translation::Second { root: CTX_LO::SLPTPTR.read(lo) << 12, levels: CTX_HI::AW.read(hi) as usize + 2 },
            2 => Translation::PassThrough,
            _ => Translation::Fault(0x03),
        });
    }
    let half = devfn / 128;
    let re = mem.read(root, 2 * bus + half);
    let title = alloc::format!("scalable root entry [{bus}] {} half (§9.2)", if half == 0 { "lower" } else { "upper" });
    write_words(out, &title, &[re], &[ROOT_FIELDS])?;
    if ROOT_LO::P.read(re) == 0 {
        return Ok(Translation::Fault(0x01));
    }
    let ct = ROOT_LO::CTP.read(re) << 12;
    let at = 4 * (devfn % 128);
    let ce: [u64; 4] = core::array::from_fn(|i| mem.read(ct, at + i));
    let title = alloc::format!("scalable context entry [{}] at {ct:#x} (§9.4)", devfn % 128);
    write_words(out, &title, &ce, &[SCTX_Q0_FIELDS, SCTX_Q1_FIELDS])?;
    if SCTX_Q0::P.read(ce[0]) == 0 {
        return Ok(Translation::Fault(0x02));
    }
    let pasid = SCTX_Q1::RID_PASID.read(ce[1]) as usize;
    let dir = SCTX_Q0::PASIDDIRPTR.read(ce[0]) << 12;
    let de = mem.read(dir, pasid >> 6);
    write_words(
        out,
        &alloc::format!("PASID directory entry [{}] at {dir:#x} (§9.5)", pasid >> 6),
        &[de],
        &[PASID_DIR_FIELDS],
    )?;
    if PASID_DIR::P.read(de) == 0 {
        return Ok(Translation::Fault(0x51));
    }
    let table = PASID_DIR::SMPTBLPTR.read(de) << 12;
    let at = 8 * (pasid & 63);
    let pe: [u64; 8] = core::array::from_fn(|i| mem.read(table, at + i));
    let title = alloc::format!("PASID table entry [{}] (PASID {pasid}) at {table:#x} (§9.6)", pasid & 63);
    write_words(out, &title, &pe[..3], &[PASID_Q0_FIELDS, PASID_Q1_FIELDS, PASID_Q2_FIELDS])?;
    if PASID_Q0::P.read(pe[0]) == 0 {
        return Ok(Translation::Fault(0x59));
    }
    Ok(match PASID_Q0::PGTT.read(pe[0]) {
        1 => Translation::First {
            root: PASID_Q2::FSPTPTR.read(pe[2]) << 12,
            levels: 4 + PASID_Q2::FLPM.read(pe[2]) as usize,
        },
        2 => Translation::Second {
            root: PASID_Q0::SSPTPTR.read(pe[0]) << 12,
            levels: PASID_Q0::AW.read(pe[0]) as usize + 2,
        },
        4 => Translation::PassThrough,
        3 => Translation::Nested,
        _ => Translation::Fault(0x5B),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context;
    use alloc::string::String;
    use io_pgtable::arena::Arena;
    use io_pgtable::{PageTable, Perms};

    /// A legacy root table with requester 0x0010 attached to a 4-level
    /// second-level table that maps one 4 KiB page.
    fn legacy(mem: &mut Arena) -> Tables {
        let root = mem.alloc_table().unwrap();
        let ct = mem.alloc_table().unwrap();
        let fmt = VtdSecondLevel { levels: 4, max_leaf_level: 1 };
        let mut pt = PageTable::new(fmt, mem).unwrap();
        let _ = pt.map(mem, 0x10_0000, 0x5555_0000, 0x1000, Perms::READ).unwrap();
        mem.write(root, 0, context::root_entry(ct));
        let (lo, hi) = context::context_entry(pt.root(), 4, 7);
        mem.write(ct, 2 * 0x10, lo);
        mem.write(ct, 2 * 0x10 + 1, hi);
        Tables { root, stage: Stage::Legacy, max_leaf_level: 1 }
    }

    #[test]
    fn dump_follows_root_and_context_entries_as_the_unit_does() {
        let mut mem = Arena::new();
        let t = legacy(&mut mem);
        let mut s = String::new();
        device(t, &mem, 0x0010, &mut s).unwrap();
        assert!(s.contains("root entry [0] (§9.1)"), "{s}");
        assert!(s.contains("context entry [16]"), "{s}");
        assert!(s.lines().any(|l| l.trim_start().starts_with("DID") && l.contains("= 0x7")), "{s}");
        assert!(s.lines().any(|l| l.trim_start().starts_with("AW") && l.contains("= 0x2")), "{s}");
        assert!(s.contains("=> second-level table at"), "{s}");
        assert!(s.contains("4 levels"), "{s}");
        // Another device on the same bus has no context entry: fault 2h.
        let mut s = String::new();
        device(t, &mem, 0x0018, &mut s).unwrap();
        assert!(s.contains("faults here (reason 0x2: context entry not present)"), "{s}");
        // A bus with no context table: fault 1h.
        let mut s = String::new();
        device(t, &mem, 0x0300, &mut s).unwrap();
        assert!(s.contains("reason 0x1: root entry not present"), "{s}");
    }

    #[test]
    fn walk_ends_in_the_page_or_in_the_fault_the_unit_raises() {
        let mut mem = Arena::new();
        let t = legacy(&mut mem);
        let mut s = String::new();
        walk(t, &mem, 0x0010, 0x10_0abc, &mut s).unwrap();
        assert!(s.contains("=> 0x100abc translates to 0x55550abc (4 KiB leaf, read-only)"), "{s}");
        assert_eq!(s.lines().filter(|l| l.trim_start().starts_with("level")).count(), 4, "{s}");
        let mut s = String::new();
        walk(t, &mem, 0x0010, 0x20_0000, &mut s).unwrap();
        assert!(s.contains("faults at level 1"), "{s}");
        assert!(s.contains("0x5 on a write, 0x6 on a read"), "{s}");
        let mut s = String::new();
        walk(t, &mem, 0x0010, 1 << 50, &mut s).unwrap();
        assert!(s.contains("beyond the table's 48-bit input"), "{s}");
        let mut s = String::new();
        walk(t, &mem, 0x0018, 0x10_0000, &mut s).unwrap();
        assert!(s.contains("=> no translation: reason 0x2"), "{s}");
    }

    #[test]
    fn scalable_mode_dumps_context_pasid_directory_and_pasid_entries() {
        let mut mem = Arena::new();
        let (root, ct, dir, table) = (
            mem.alloc_table().unwrap(),
            mem.alloc_table().unwrap(),
            mem.alloc_table().unwrap(),
            mem.alloc_table().unwrap(),
        );
        let fmt = X86Paging::vtd_first_level(4, 2);
        let mut pt = PageTable::new(fmt, &mut mem).unwrap();
        let _ = pt.map(&mut mem, 0x4000, 0x9000, 0x1000, Perms::READ | Perms::WRITE).unwrap();
        // devfn 0x88 lives in the upper half of bus 0's root entry.
        mem.write(root, 1, context::scalable_root_half(ct));
        for (i, q) in context::scalable_context_entry(dir).iter().enumerate() {
            mem.write(ct, 4 * 8 + i, *q);
        }
        mem.write(dir, 0, context::pasid_dir_entry(table));
        for (i, q) in context::pasid_entry_first_stage(pt.root(), 4, 3, false).iter().enumerate() {
            mem.write(table, i, *q);
        }
        let t = Tables { root, stage: Stage::ScalableFirst, max_leaf_level: 2 };
        let mut s = String::new();
        walk(t, &mem, 0x0088, 0x4010, &mut s).unwrap();
        assert!(s.contains("upper half (§9.2)"), "{s}");
        assert!(s.contains("PASID directory entry [0]"), "{s}");
        assert!(s.contains("PASID table entry [0] (PASID 0)"), "{s}");
        assert!(s.lines().any(|l| l.trim_start().starts_with("PGTT") && l.contains("= 0x1")), "{s}");
        assert!(s.contains("=> 0x4010 translates to 0x9010 (4 KiB leaf, read+write)"), "{s}");
        let mut s = String::new();
        walk(t, &mem, 0x0088, 0x8000, &mut s).unwrap();
        assert!(s.contains("reason 0x71"), "{s}");
    }

    #[test]
    fn capability_fields_decode_qemus_values() {
        // QEMU 10's intel-iommu CAP with aw-bits=48: SAGAW 4-level (bit 2), MGAW 47, ND 6 (64K domains).
        let cap = (CAP::ND.val(6) + CAP::SAGAW.val(0b100) + CAP::MGAW.val(47) + CAP::PSI::SET).value;
        let mut s = String::new();
        write_register(&mut s, "CAP", cap, CAP_FIELDS).unwrap();
        let line = |name: &str| s.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or("");
        assert!(line("SAGAW").contains("[12:8]") && line("SAGAW").contains("= 0x4"), "{s}");
        assert!(line("MGAW").contains("[21:16]") && line("MGAW").contains("= 0x2f"), "{s}");
        assert!(line("PSI").contains("[39]") && line("PSI").contains("= 0x1"), "{s}");
        assert!(!s.contains("not decoded"), "every CAP bit has a name: {s}");
        let mut s = String::new();
        write_register(&mut s, "ECAP", u64::MAX, ECAP_FIELDS).unwrap();
        assert!(s.contains("not decoded"), "ECAP's reserved bits are reported, not hidden: {s}");
    }
}
