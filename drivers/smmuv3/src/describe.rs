//! An SMMUv3 in words ([`iommu::Iommu::describe`]): the ID and control
//! registers decoded field by field (§6.3), the stream table entry and
//! context descriptor the SMMU reads for one stream ID, found from
//! STRTAB_BASE as the SMMU finds them (§3.3, §5.1, §5.2, §5.4), and the
//! stage-1 or stage-2 walk for one IOVA (Arm VMSAv8-64 translation tables).
//!
//! Only structures the kernel built are followed: a nested STE's context
//! descriptor and stage-1 tables belong to the task and live at its IPAs,
//! so the report stops at the STE's pointer there.

use crate::cd::{CD0, CD1};
use crate::regs::{CR0, GBPA, GERROR, IDR0, IDR1, IDR3, IDR5, QUEUE_BASE, STRTAB_BASE_CFG};
use crate::ste::{L1STD, STE0, STE2, STE3};
use crate::unit::Smmu;
use core::fmt::{self, Write};
use io_pgtable::formats::ArmLpae;
use io_pgtable::TableMemory;
use iommu::describe::{write_register, write_walk, write_walk_end, write_words, Field};
use iommu::fields;

const IDR0_FIELDS: &[Field] = fields![IDR0:
    S2P "stage-2 translation",
    S1P "stage-1 translation",
    TTF "table formats (2: AArch64, 3: AArch32 and AArch64)",
    COHACC "coherent access to tables and queues",
    ASID16 "16-bit ASIDs",
    MSI "message-signalled interrupts",
    VMID16 "16-bit VMIDs",
    CD2L "2-level CD tables",
    STALL_MODEL "stall model (0: stall and terminate, 1: terminate, 2: stall)",
    ST_LEVEL "stream table levels (0: linear, 1: linear and 2-level)",
];

const IDR1_FIELDS: &[Field] = fields![IDR1:
    SIDSIZE "stream ID bits",
    SSIDSIZE "substream ID bits",
    EVENTQS "log2 of the largest event queue",
    CMDQS "log2 of the largest command queue",
];

const IDR3_FIELDS: &[Field] = fields![IDR3:
    RIL "range invalidation",
];

const IDR5_FIELDS: &[Field] = fields![IDR5:
    OAS "output address size (0: 32 bits ... 5: 48, 6: 52)",
    GRAN4K "4 KiB granule",
    GRAN16K "16 KiB granule",
    GRAN64K "64 KiB granule",
];

const CR0_FIELDS: &[Field] = fields![CR0:
    SMMUEN "translation enabled",
    EVENTQEN "event queue enabled",
    CMDQEN "command queue enabled",
];

const GBPA_FIELDS: &[Field] = fields![GBPA:
    ABORT "abort while SMMUEN is 0",
    UPDATE "update in progress",
];

const GERROR_FIELDS: &[Field] = fields![GERROR:
    CMDQ_ERR "command queue error",
    EVENTQ_ABT_ERR "event queue write aborted",
    SFM_ERR "service failure mode",
];

const STRTAB_CFG_FIELDS: &[Field] = fields![STRTAB_BASE_CFG:
    LOG2SIZE "log2 of the stream IDs covered",
    SPLIT "stream ID bits resolved by level 2",
    FMT "format (0: linear, 1: 2-level)",
];

const STRTAB_BASE_FIELDS: &[Field] = fields![QUEUE_BASE:
    ADDR "table address bits 51:5",
    RA "read-allocate hint",
];

const L1STD_FIELDS: &[Field] = fields![L1STD:
    SPAN "level-2 table holds 2^(SPAN-1) STEs",
    L2PTR "level-2 table address bits 51:6",
];

const STE0_FIELDS: &[Field] = fields![STE0:
    V "valid",
    CONFIG "config (0: abort, 4: bypass, 5: stage 1, 6: stage 2, 7: nested)",
    S1FMT "CD table format",
    S1_CONTEXT_PTR "CD address bits 51:6",
    S1CDMAX "log2 of the number of CDs",
];

const STE2_FIELDS: &[Field] = fields![STE2:
    S2VMID "stage-2 VMID",
    S2T0SZ "64 - stage-2 input bits",
    S2SL0 "stage-2 starting level",
    S2TG "stage-2 granule (0: 4 KiB)",
    S2PS "stage-2 output size",
    S2AA64 "AArch64 stage-2 tables",
    S2R "record stage-2 faults",
];

const STE3_FIELDS: &[Field] = fields![STE3:
    S2TTB "stage-2 table address bits 51:4",
];

const CD0_FIELDS: &[Field] = fields![CD0:
    T0SZ "64 - input bits",
    TG0 "granule (0: 4 KiB)",
    IR0 "walk inner cacheability",
    OR0 "walk outer cacheability",
    SH0 "walk shareability",
    EPD1 "no walks through TTB1",
    V "valid",
    IPS "intermediate physical address size",
    AA64 "AArch64 tables",
    R "record faults",
    A "abort faulting transactions",
    ASID "address space ID",
];

const CD1_FIELDS: &[Field] = fields![CD1:
    TTB0 "stage-1 table address bits 51:4",
];

/// `show`: the ID registers, then the control and queue registers as they read now.
pub fn registers(smmu: &Smmu, out: &mut dyn Write) -> fmt::Result {
    writeln!(out, "SMMUv3 (§6.3), AIDR {:#x} (SMMUv3.{}), IIDR {:#x}", smmu.aidr, smmu.aidr & 0xF, smmu.iidr)?;
    let idr = smmu.idr.map(u64::from);
    write_register(out, "IDR0", idr[0], IDR0_FIELDS)?;
    write_register(out, "IDR1", idr[1], IDR1_FIELDS)?;
    write_register(out, "IDR3", idr[3], IDR3_FIELDS)?;
    write_register(out, "IDR5", idr[5], IDR5_FIELDS)?;
    for (name, value) in smmu.live_registers() {
        let fields: &[Field] = match name {
            "CR0" => CR0_FIELDS,
            "GBPA" => GBPA_FIELDS,
            "GERROR" => GERROR_FIELDS,
            "STRTAB_BASE" => STRTAB_BASE_FIELDS,
            "STRTAB_BASE_CFG" => STRTAB_CFG_FIELDS,
            _ => &[],
        };
        if fields.is_empty() {
            writeln!(out, "{name} = {value:#x}")?;
        } else {
            write_register(out, name, value, fields)?;
        }
    }
    Ok(())
}

/// What the stream table says for one stream.
enum Config {
    /// The SMMU raises this event (and the walk stops).
    Fault(&'static str),
    /// Transactions pass untranslated.
    Bypass,
    /// Transactions are terminated.
    Abort,
    /// Stage 1 through the kernel's CD: table root and input bits.
    Stage1 { ttb: u64, ias: u32 },
    /// Stage 2: table root and levels.
    Stage2 { ttb: u64, levels: usize, ias: u32 },
    /// Nested: the task's CD (at an IPA) over stage 2.
    Nested { cd_ipa: u64 },
}

/// Reads 64-bit word `word` of the structure at physical address `at`.
fn read_at(mem: &impl TableMemory, at: u64, word: usize) -> u64 {
    let addr = at + 8 * word as u64;
    mem.read(addr & !0xFFF, ((addr & 0xFFF) / 8) as usize)
}

/// Where the stream table starts: `STRTAB_BASE` and `STRTAB_BASE_CFG` as the SMMU reads them.
#[derive(Debug, Clone, Copy)]
pub struct StreamTable {
    /// STRTAB_BASE.
    pub base: u64,
    /// STRTAB_BASE_CFG.
    pub cfg: u64,
}

impl StreamTable {
    /// The SMMU's, read now.
    pub fn of(smmu: &Smmu) -> StreamTable {
        let (base, cfg) = smmu.stream_table_registers();
        StreamTable { base, cfg }
    }
}

fn stream_walk(t: StreamTable, mem: &impl TableMemory, sid: u32, out: &mut dyn Write) -> Result<Config, fmt::Error> {
    let base = QUEUE_BASE::ADDR.read(t.base) << 5;
    let log2 = STRTAB_BASE_CFG::LOG2SIZE.read(t.cfg as u32);
    writeln!(out, "stream {sid:#x}; stream table at {base:#x}, {} stream IDs", 1u64 << log2)?;
    if u64::from(sid) >> log2 != 0 {
        return Ok(Config::Fault("C_BAD_STREAMID: beyond the stream table"));
    }
    let ste_at = if STRTAB_BASE_CFG::FMT.read(t.cfg as u32) == 1 {
        let split = STRTAB_BASE_CFG::SPLIT.read(t.cfg as u32);
        let i = (sid >> split) as usize;
        let d = read_at(mem, base, i);
        write_words(out, &alloc::format!("level-1 descriptor [{i}] (§5.1)"), &[d], &[L1STD_FIELDS])?;
        let span = L1STD::SPAN.read(d);
        if span == 0 || u64::from(sid & ((1 << split) - 1)) >> (span - 1) != 0 {
            return Ok(Config::Fault("C_BAD_STREAMID: no level-2 table for it"));
        }
        (L1STD::L2PTR.read(d) << 6) + u64::from(sid & ((1 << split) - 1)) * 64
    } else {
        base + u64::from(sid) * 64
    };
    let ste: [u64; 4] = core::array::from_fn(|i| read_at(mem, ste_at, i));
    let title = alloc::format!("STE at {ste_at:#x} (§5.2)");
    write_words(out, &title, &ste, &[STE0_FIELDS, &[], STE2_FIELDS, STE3_FIELDS])?;
    if STE0::V.read(ste[0]) == 0 {
        return Ok(Config::Fault("C_BAD_STE: the STE is not valid"));
    }
    let s2 = || {
        let ias = 64 - STE2::S2T0SZ.read(ste[2]) as u32;
        // 4 KiB granule: S2SL0 0 starts at level 2 (3 levels), 1 at level 1 (3), 2 at level 0 (4).
        let levels = 2 + STE2::S2SL0.read(ste[2]) as usize;
        Config::Stage2 { ttb: STE3::S2TTB.read(ste[3]) << 4, levels, ias }
    };
    Ok(match STE0::CONFIG.read(ste[0]) {
        0b000 => Config::Abort,
        0b100 => Config::Bypass,
        0b101 => {
            let cd_at = STE0::S1_CONTEXT_PTR.read(ste[0]) << 6;
            let cd: [u64; 4] = core::array::from_fn(|i| read_at(mem, cd_at, i));
            write_words(out, &alloc::format!("CD at {cd_at:#x} (§5.4)"), &cd, &[CD0_FIELDS, CD1_FIELDS])?;
            if CD0::V.read(cd[0]) == 0 {
                Config::Fault("C_BAD_CD: the CD is not valid")
            } else {
                Config::Stage1 { ttb: CD1::TTB0.read(cd[1]) << 4, ias: 64 - CD0::T0SZ.read(cd[0]) as u32 }
            }
        }
        0b110 => s2(),
        0b111 => Config::Nested { cd_ipa: STE0::S1_CONTEXT_PTR.read(ste[0]) << 6 },
        _ => Config::Fault("C_BAD_STE: reserved Config"),
    })
}

/// `dump`: the level-1 descriptor (2-level tables), the STE and the CD the
/// SMMU reads for `sid`, then where they lead.
pub fn device(t: StreamTable, mem: &impl TableMemory, sid: u32, out: &mut dyn Write) -> fmt::Result {
    match stream_walk(t, mem, sid, out)? {
        Config::Fault(e) => writeln!(out, "=> transactions from stream {sid:#x} raise {e}"),
        Config::Bypass => writeln!(out, "=> bypass: addresses pass untranslated"),
        Config::Abort => writeln!(out, "=> abort: every transaction is terminated (no event)"),
        Config::Stage1 { ttb, ias } => writeln!(out, "=> stage-1 tables at {ttb:#x}, {ias}-bit input"),
        Config::Stage2 { ttb, levels, ias } => {
            writeln!(out, "=> stage-2 tables at {ttb:#x}, {levels} levels, {ias}-bit input")
        }
        Config::Nested { cd_ipa } => {
            writeln!(out, "=> nested: the task's CD at IPA {cd_ipa:#x} (stage 1 is the task's), over the stage 2 above")
        }
    }
}

/// `walk`: the stream table, then the walk for `iova` at the stage that translates.
pub fn walk(t: StreamTable, mem: &impl TableMemory, sid: u32, iova: u64, out: &mut dyn Write) -> fmt::Result {
    let mut read = |table: u64, index: usize| Some(mem.read(table, index));
    match stream_walk(t, mem, sid, out)? {
        Config::Fault(e) => writeln!(out, "=> no translation: {e}"),
        Config::Bypass => writeln!(out, "=> bypass: {iova:#x} reaches physical {iova:#x}"),
        Config::Abort => writeln!(out, "=> no translation: the STE aborts every transaction"),
        Config::Stage1 { ttb, ias } => {
            let fmt =
                ArmLpae::stage1(crate::user_data::levels_for(ias), crate::cd::MAIR_CACHED, crate::cd::MAIR_DEVICE);
            let end = write_walk(out, &fmt, ttb, iova, &mut read)?;
            write_walk_end(out, end, iova, "F_TRANSLATION, stage 1")
        }
        Config::Stage2 { ttb, levels, .. } => {
            let end = write_walk(out, &ArmLpae::stage2(levels), ttb, iova, &mut read)?;
            write_walk_end(out, end, iova, "F_TRANSLATION, stage 2")
        }
        Config::Nested { cd_ipa } => writeln!(
            out,
            "=> nested: stage 1 is the task's (CD at IPA {cd_ipa:#x}); walk its tables with the task's own view"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cd, ste};
    use alloc::string::String;
    use io_pgtable::arena::Arena;
    use io_pgtable::{PageTable, Perms};

    /// A linear stream table of 64 STEs (one frame of 4 KiB holds 64): stream 8 at stage 1
    /// through a CD whose tables map one page, stream 9 at stage 2, stream 10 aborted.
    fn tables(mem: &mut Arena) -> StreamTable {
        let strtab = mem.alloc_table().unwrap();
        let cd_frame = mem.alloc_table().unwrap();
        let fmt = ArmLpae::stage1(3, cd::MAIR_CACHED, cd::MAIR_DEVICE);
        let mut s1 = PageTable::new(fmt, mem).unwrap();
        let _ = s1.map(mem, 0x8000, 0x4_2000, 0x1000, Perms::READ | Perms::WRITE).unwrap();
        let desc = cd::stage1(cd::Stage1 { asid: 5, ttb0: s1.root(), ias: 39, ips: 5, mair: cd::MAIR });
        for (i, w) in desc.to_words().iter().enumerate() {
            mem.write(cd_frame, i, *w);
        }
        let mut s2 = PageTable::new(ArmLpae::stage2(3), mem).unwrap();
        let _ = s2.map(mem, 0x20_0000, 0x80_0000, 0x20_0000, Perms::READ).unwrap();
        let stage2 = ste::stage2(ste::Stage2 { vmid: 3, ttb: s2.root(), ias: 39, levels: 3, ps: 5 });
        for (sid, e) in [(8usize, ste::stage1(cd_frame)), (9, stage2), (10, ste::abort())] {
            for (i, w) in e.to_words().iter().enumerate() {
                mem.write(strtab, sid * 8 + i, *w);
            }
        }
        StreamTable {
            base: QUEUE_BASE::ADDR.val(strtab >> 5).value,
            cfg: u64::from(STRTAB_BASE_CFG::LOG2SIZE.val(6).value),
        }
    }

    #[test]
    fn dump_finds_the_ste_and_cd_from_strtab_base() {
        let mut mem = Arena::new();
        let t = tables(&mut mem);
        let mut s = String::new();
        device(t, &mem, 8, &mut s).unwrap();
        assert!(s.contains("STE at") && s.contains("CD at"), "{s}");
        assert!(s.lines().any(|l| l.trim_start().starts_with("CONFIG") && l.contains("= 0x5")), "{s}");
        assert!(s.lines().any(|l| l.trim_start().starts_with("ASID") && l.contains("= 0x5")), "{s}");
        assert!(s.contains("=> stage-1 tables at"), "{s}");
        let mut s = String::new();
        device(t, &mem, 10, &mut s).unwrap();
        assert!(s.contains("=> abort"), "{s}");
        let mut s = String::new();
        device(t, &mem, 11, &mut s).unwrap();
        assert!(s.contains("C_BAD_STE"), "{s}");
        let mut s = String::new();
        device(t, &mem, 64, &mut s).unwrap();
        assert!(s.contains("C_BAD_STREAMID"), "{s}");
    }

    #[test]
    fn walk_follows_the_stage_that_translates() {
        let mut mem = Arena::new();
        let t = tables(&mut mem);
        let mut s = String::new();
        walk(t, &mem, 8, 0x8abc, &mut s).unwrap();
        assert!(s.contains("=> 0x8abc translates to 0x42abc (4 KiB leaf, read+write)"), "{s}");
        let mut s = String::new();
        walk(t, &mem, 8, 0x9000, &mut s).unwrap();
        assert!(s.contains("F_TRANSLATION, stage 1"), "{s}");
        let mut s = String::new();
        walk(t, &mem, 9, 0x20_1234, &mut s).unwrap();
        assert!(s.contains("=> 0x201234 translates to 0x801234 (2 MiB leaf, read-only)"), "{s}");
    }
}
