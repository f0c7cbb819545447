//! Command queue entries (SMMUv3 §4): two 64-bit words each, and the
//! command-error codes the SMMU reports in CMDQ_CONS.ERR (§4.7.3).

use iommu::desc::from_place;
use tock_registers::fields::FieldValue;
use tock_registers::register_bitfields;

/// A command, as two 64-bit words (what the queue holds).
pub type Command = [u64; 2];

register_bitfields![u64,
    /// Command word 0, bits 63:0 (§4.1.1 and each command's layout).
    pub CMD0 [
        /// Opcode, bits 7:0 (§4.1.1).
        OPCODE OFFSET(0) NUMBITS(8) [
            /// CMD_CFGI_STE (§4.3.1).
            CfgiSte = 0x03,
            /// CMD_CFGI_STE_RANGE (§4.3.2).
            CfgiSteRange = 0x04,
            /// CMD_CFGI_CD (§4.3.3).
            CfgiCd = 0x05,
            /// CMD_CFGI_CD_ALL (§4.3.4).
            CfgiCdAll = 0x06,
            /// CMD_TLBI_NH_ALL (§4.4.2.1).
            TlbiNhAll = 0x10,
            /// CMD_TLBI_NH_ASID (§4.4.2).
            TlbiNhAsid = 0x11,
            /// CMD_TLBI_NH_VA (§4.4.2).
            TlbiNhVa = 0x12,
            /// CMD_TLBI_NH_VAA (§4.4.2).
            TlbiNhVaa = 0x13,
            /// CMD_TLBI_S12_VMALL (§4.4.3).
            TlbiS12Vmall = 0x28,
            /// CMD_TLBI_S2_IPA (§4.4.3).
            TlbiS2Ipa = 0x2A,
            /// CMD_TLBI_NSNH_ALL (§4.4.4).
            TlbiNsnhAll = 0x30,
            /// CMD_SYNC (§4.6).
            Sync = 0x46
        ],
        /// SubstreamID of CMD_CFGI_CD, bits 31:12 (§4.3.3).
        SSID OFFSET(12) NUMBITS(20) [],
        /// NUM of a range TLBI, bits 16:12: (NUM + 1) << SCALE pages (§4.4.1).
        NUM OFFSET(12) NUMBITS(5) [],
        /// SCALE of a range TLBI, bits 24:20 (bit 25 only with IDR5.DS; §4.4.1).
        SCALE OFFSET(20) NUMBITS(5) [],
        /// StreamID of CMD_CFGI_*, bits 63:32 (§4.3).
        SID OFFSET(32) NUMBITS(32) [],
        /// VMID of CMD_TLBI_*, bits 47:32 (§4.4).
        VMID OFFSET(32) NUMBITS(16) [],
        /// ASID of CMD_TLBI_NH_ASID / CMD_TLBI_NH_VA, bits 63:48 (§4.4.2).
        ASID OFFSET(48) NUMBITS(16) []
    ],
    /// Command word 1, bits 127:64 (each command's layout, §4.3, §4.4).
    pub CMD1 [
        /// Leaf, bit 64: only last-level entries (TLBI, §4.4.1) or only the
        /// STE / CD, not the level-1 descriptor (CFGI, §4.3.1).
        LEAF OFFSET(0) NUMBITS(1) [],
        /// Range of CMD_CFGI_STE_RANGE, bits 68:64: 2^(Range + 1) streams (§4.3.2).
        RANGE OFFSET(0) NUMBITS(5) [],
        /// TTL level hint, bits 73:72 (§4.4.1).
        TTL OFFSET(8) NUMBITS(2) [],
        /// TG translation granule of a range TLBI, bits 75:74 (1 = 4 KiB; §4.4.1).
        TG OFFSET(10) NUMBITS(2) [],
        /// Address, bits 127:76: address bits 63:12 (§4.4.2).
        ADDR OFFSET(12) NUMBITS(52) [],
        /// Address bits 51:12, what this driver puts in the commands it builds
        /// (TLBI_S2_IPA's field is 51:12, §4.4.3).
        ADDR_PA OFFSET(12) NUMBITS(40) []
    ]
];

iommu::descriptor! {
    /// A command queue entry (§4.1): 16 bytes.
    pub struct Cmd {
        /// Bits 63:0: opcode and tags.
        w0: CMD0,
        /// Bits 127:64: leaf, ranges and the address.
        w1: CMD1,
    }
}

/// The two words of a command laid out from its fields.
fn build(w0: FieldValue<u64, CMD0::Register>, w1: FieldValue<u64, CMD1::Register>) -> Command {
    let mut c = Cmd::zeroed();
    c.w0.write(w0);
    c.w1.write(w1);
    c.to_words()
}

/// CMD_CFGI_STE: the SMMU forgets what it cached of stream `sid`'s STE.
pub fn cfgi_ste(sid: u32) -> Command {
    // Leaf = 1: only the STE, not the L1 descriptor.
    build(CMD0::OPCODE::CfgiSte + CMD0::SID.val(u64::from(sid)), CMD1::LEAF::SET)
}

/// CMD_CFGI_ALL (CFGI_STE_RANGE with Range = 31): every cached STE and CD.
pub fn cfgi_all() -> Command {
    build(CMD0::OPCODE::CfgiSteRange, CMD1::RANGE.val(31))
}

/// CMD_CFGI_CD: the cached CD of substream 0 of stream `sid`.
pub fn cfgi_cd(sid: u32) -> Command {
    build(CMD0::OPCODE::CfgiCd + CMD0::SID.val(u64::from(sid)), CMD1::LEAF::SET)
}

/// CMD_CFGI_CD_ALL: every cached CD of stream `sid` (§4.3.4).
pub fn cfgi_cd_all(sid: u32) -> Command {
    build(CMD0::OPCODE::CfgiCdAll + CMD0::SID.val(u64::from(sid)), CMD1::LEAF::CLEAR)
}

/// CMD_TLBI_NH_ALL: every stage-1 TLB entry tagged with `vmid` (§4.4.2.1),
/// including the combined stage-1 + stage-2 entries of nested streams.
pub fn tlbi_nh_all(vmid: u16) -> Command {
    build(CMD0::OPCODE::TlbiNhAll + CMD0::VMID.val(u64::from(vmid)), CMD1::LEAF::CLEAR)
}

/// CMD_TLBI_NH_ASID: stage-1 TLB entries of `asid`.
pub fn tlbi_nh_asid(asid: u16) -> Command {
    build(CMD0::OPCODE::TlbiNhAsid + CMD0::ASID.val(u64::from(asid)), CMD1::LEAF::CLEAR)
}

/// CMD_TLBI_S12_VMALL: every TLB entry tagged with `vmid`.
pub fn tlbi_s12_vmall(vmid: u16) -> Command {
    build(CMD0::OPCODE::TlbiS12Vmall + CMD0::VMID.val(u64::from(vmid)), CMD1::LEAF::CLEAR)
}

/// CMD_TLBI_NSNH_ALL: every non-secure, non-hypervisor TLB entry.
pub fn tlbi_nsnh_all() -> Command {
    build(CMD0::OPCODE::TlbiNsnhAll, CMD1::LEAF::CLEAR)
}

/// CMD_SYNC without a completion signal (completion is seen by polling CMDQ_CONS).
pub fn sync() -> Command {
    build(CMD0::OPCODE::Sync, CMD1::LEAF::CLEAR)
}

/// A range of 4 KiB pages for TLBI_NH_VA / TLBI_S2_IPA (§4.4.1): `(NUM + 1) *
/// 2^SCALE` pages from `start`, the smallest such range covering
/// `[start, end)`. Without range support (IDR3.RIL = 0) only one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First page address.
    pub start: u64,
    /// NUM field (pages = (NUM + 1) << SCALE).
    pub num: u8,
    /// SCALE field.
    pub scale: u8,
}

impl Range {
    /// The smallest range covering `[start, end)` (4 KiB aligned), if one command can.
    pub fn covering(start: u64, end: u64) -> Option<Range> {
        let start = start & !0xFFF;
        let pages = (end.saturating_sub(start)).div_ceil(4096).max(1);
        (0u8..32).find_map(|scale| {
            let n = pages.div_ceil(1 << scale);
            (n <= 32).then_some(Range { start, num: (n - 1) as u8, scale })
        })
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        (u64::from(self.num) + 1) << self.scale << 12
    }

    /// Whether the range is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// How an address invalidation is scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The pages.
    pub range: Range,
    /// Use NUM/SCALE (IDR3.RIL); otherwise one page at `range.start`.
    pub ranged: bool,
    /// Only last-level entries changed (Leaf = 1); clear when tables were
    /// freed, so walk caches forget them too.
    pub leaf: bool,
}

/// An address invalidation (§4.4.1): `opcode_tag` (the opcode and its
/// ASID or VMID), NUM / SCALE / TG when ranged, Leaf, the start address.
fn address_words(opcode_tag: FieldValue<u64, CMD0::Register>, s: Scope) -> Command {
    let (num, scale, tg) = if s.ranged { (s.range.num, s.range.scale, 1) } else { (0, 0, 0) };
    // TTL = 0: entries of any level.
    build(
        opcode_tag + CMD0::NUM.val(u64::from(num)) + CMD0::SCALE.val(u64::from(scale)),
        CMD1::LEAF.val(u64::from(s.leaf)) + CMD1::TG.val(tg) + from_place(CMD1::ADDR_PA, s.range.start),
    )
}

/// CMD_TLBI_NH_VA: stage-1 entries of `asid` in the scope (TG = 4 KiB when ranged).
pub fn tlbi_nh_va(asid: u16, scope: Scope) -> Command {
    address_words(CMD0::OPCODE::TlbiNhVa + CMD0::ASID.val(u64::from(asid)), scope)
}

/// CMD_TLBI_S2_IPA: stage-2 entries of `vmid` in the scope.
pub fn tlbi_s2_ipa(vmid: u16, scope: Scope) -> Command {
    address_words(CMD0::OPCODE::TlbiS2Ipa + CMD0::VMID.val(u64::from(vmid)), scope)
}

/// Why the SMMU refused a command (CMDQ_CONS.ERR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// CERROR_ILL: unknown opcode or reserved field set.
    Illegal,
    /// CERROR_ABT: fetching the command aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC: an ATS invalidation did not complete before a CMD_SYNC.
    AtcInvalidationSync,
    /// A code this driver does not know.
    Other(u32),
}

impl CommandError {
    /// From the CMDQ_CONS.ERR field.
    pub fn from_code(code: u32) -> CommandError {
        match code {
            1 => CommandError::Illegal,
            2 => CommandError::Abort,
            3 => CommandError::AtcInvalidationSync,
            c => CommandError::Other(c),
        }
    }

    /// Spec name.
    pub fn name(self) -> &'static str {
        match self {
            CommandError::Illegal => "CERROR_ILL (illegal command)",
            CommandError::Abort => "CERROR_ABT (command fetch aborted)",
            CommandError::AtcInvalidationSync => "CERROR_ATC_INV_SYNC (ATC invalidation timed out)",
            CommandError::Other(_) => "CERROR (unknown code)",
        }
    }
}

/// Name of a command opcode, for trace lines.
pub fn opcode_name(word0: u64) -> &'static str {
    use CMD0::OPCODE::Value as Op;
    match iommu::desc::Word::<CMD0::Register>::new(word0).read_as_enum(CMD0::OPCODE) {
        Some(Op::CfgiSte) => "CFGI_STE",
        Some(Op::CfgiSteRange) => "CFGI_STE_RANGE",
        Some(Op::CfgiCd) => "CFGI_CD",
        Some(Op::CfgiCdAll) => "CFGI_CD_ALL",
        Some(Op::TlbiNhAll) => "TLBI_NH_ALL",
        Some(Op::TlbiNhAsid) => "TLBI_NH_ASID",
        Some(Op::TlbiNhVa) => "TLBI_NH_VA",
        Some(Op::TlbiNhVaa) => "TLBI_NH_VAA",
        Some(Op::TlbiS12Vmall) => "TLBI_S12_VMALL",
        Some(Op::TlbiS2Ipa) => "TLBI_S2_IPA",
        Some(Op::TlbiNsnhAll) => "TLBI_NSNH_ALL",
        Some(Op::Sync) => "SYNC",
        None => "?",
    }
}

/// A command's spec name by opcode (SMMUv3 §4.1.1, Table 4.1): `CMD_CFGI_STE`.
pub fn command_name(opcode: u8) -> &'static str {
    match opcode {
        0x01 => "CMD_PREFETCH_CONFIG",
        0x02 => "CMD_PREFETCH_ADDR",
        0x03 => "CMD_CFGI_STE",
        0x04 => "CMD_CFGI_STE_RANGE",
        0x05 => "CMD_CFGI_CD",
        0x06 => "CMD_CFGI_CD_ALL",
        0x07 => "CMD_CFGI_VMS_PIDM",
        0x10 => "CMD_TLBI_NH_ALL",
        0x11 => "CMD_TLBI_NH_ASID",
        0x12 => "CMD_TLBI_NH_VA",
        0x13 => "CMD_TLBI_NH_VAA",
        0x18 => "CMD_TLBI_EL3_ALL",
        0x1A => "CMD_TLBI_EL3_VA",
        0x20 => "CMD_TLBI_EL2_ALL",
        0x21 => "CMD_TLBI_EL2_ASID",
        0x22 => "CMD_TLBI_EL2_VA",
        0x23 => "CMD_TLBI_EL2_VAA",
        0x28 => "CMD_TLBI_S12_VMALL",
        0x2A => "CMD_TLBI_S2_IPA",
        0x30 => "CMD_TLBI_NSNH_ALL",
        0x40 => "CMD_ATC_INV",
        0x41 => "CMD_PRI_RESP",
        0x44 => "CMD_RESUME",
        0x45 => "CMD_STALL_TERM",
        0x46 => "CMD_SYNC",
        _ => "CMD_?",
    }
}

/// Decodes a command queue entry by the spec's names (SMMUv3 §4.3–§4.6):
/// its name, then its fields, e.g. `CMD_CFGI_STE (SID=0x8 LEAF=1)`;
/// `CMD_CFGI_STE_RANGE` with Range 31 is named `CMD_CFGI_ALL` (§4.3.2).
pub fn decode(c: &Command, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let (w0, w1) = (c[0], c[1]);
    let op = (w0 & 0xFF) as u8;
    let f0 = |at: u32, n: u32| (w0 >> at) & ((1u64 << n) - 1);
    let f1 = |at: u32, n: u32| (w1 >> at) & ((1u64 << n) - 1);
    let sid = f0(32, 32);
    let vmid = f0(32, 16);
    let asid = f0(48, 16);
    let leaf = f1(0, 1);
    // Address invalidations (§4.4.1): NUM, SCALE, TG and TTL beside the address.
    let addr = |out: &mut dyn core::fmt::Write| {
        write!(
            out,
            " ADDR={:#x} LEAF={leaf} NUM={} SCALE={} TG={} TTL={}",
            w1 & !0xFFF,
            f0(12, 5),
            f0(20, 5),
            f1(10, 2),
            f1(8, 2)
        )
    };
    match op {
        0x04 if f1(0, 5) == 31 => return write!(out, "CMD_CFGI_ALL"),
        _ => out.write_str(command_name(op))?,
    }
    match op {
        0x01 => write!(out, " (SID={sid:#x} SSID={:#x})", f0(12, 20)),
        0x03 => write!(out, " (SID={sid:#x} LEAF={leaf})"),
        0x04 => write!(out, " (SID={sid:#x} Range={})", f1(0, 5)),
        0x05 => write!(out, " (SID={sid:#x} SSID={:#x} LEAF={leaf})", f0(12, 20)),
        0x06 => write!(out, " (SID={sid:#x})"),
        0x10 | 0x28 => write!(out, " (VMID={vmid:#x})"),
        0x11 => write!(out, " (VMID={vmid:#x} ASID={asid:#x})"),
        0x12 => {
            write!(out, " (VMID={vmid:#x} ASID={asid:#x}")?;
            addr(out)?;
            out.write_str(")")
        }
        0x13 | 0x2A => {
            write!(out, " (VMID={vmid:#x}")?;
            addr(out)?;
            out.write_str(")")
        }
        0x46 => write!(
            out,
            " (CS={} MSH={} MSIATTR={} MSIDATA={:#x} MSIADDR={:#x})",
            ["SIG_NONE", "SIG_IRQ", "SIG_SEV", "reserved"][f0(12, 2) as usize],
            f0(22, 2),
            f0(24, 4),
            f0(32, 32),
            w1 & 0x000F_FFFF_FFFF_FFFC
        ),
        0x30 => Ok(()),
        _ => write!(out, " ({w0:#018x} {w1:#018x})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(c: Command) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        decode(&c, &mut s).unwrap();
        s
    }

    #[test]
    fn commands_decode_by_spec_names() {
        assert_eq!(decoded(cfgi_ste(0x8)), "CMD_CFGI_STE (SID=0x8 LEAF=1)");
        assert_eq!(decoded(cfgi_all()), "CMD_CFGI_ALL");
        assert_eq!(
            decoded(build(CMD0::OPCODE::CfgiSteRange + CMD0::SID.val(0x40), CMD1::RANGE.val(5))),
            "CMD_CFGI_STE_RANGE (SID=0x40 Range=5)"
        );
        assert_eq!(decoded(cfgi_cd(0x10)), "CMD_CFGI_CD (SID=0x10 SSID=0x0 LEAF=1)");
        assert_eq!(decoded(tlbi_nh_asid(7)), "CMD_TLBI_NH_ASID (VMID=0x0 ASID=0x7)");
        assert_eq!(decoded(tlbi_s12_vmall(2)), "CMD_TLBI_S12_VMALL (VMID=0x2)");
        assert_eq!(decoded(tlbi_nsnh_all()), "CMD_TLBI_NSNH_ALL");
        assert_eq!(decoded(sync()), "CMD_SYNC (CS=SIG_NONE MSH=0 MSIATTR=0 MSIDATA=0x0 MSIADDR=0x0)");
        let r = Range::covering(0x20_0000, 0x20_3000).unwrap();
        let s = Scope { range: r, ranged: true, leaf: true };
        assert_eq!(
            decoded(tlbi_nh_va(3, s)),
            "CMD_TLBI_NH_VA (VMID=0x0 ASID=0x3 ADDR=0x200000 LEAF=1 NUM=2 SCALE=0 TG=1 TTL=0)"
        );
        assert_eq!(
            decoded(tlbi_s2_ipa(9, s)),
            "CMD_TLBI_S2_IPA (VMID=0x9 ADDR=0x200000 LEAF=1 NUM=2 SCALE=0 TG=1 TTL=0)"
        );
        assert_eq!(decoded([0x77, 5]), "CMD_? (0x0000000000000077 0x0000000000000005)");
    }

    #[test]
    fn registers_decode_by_spec_names() {
        let d = |name, v| {
            let mut s = alloc::string::String::new();
            crate::regs::decode(name, v, &mut s).unwrap();
            s
        };
        assert_eq!(d("CR0", 0xD), "SMMUEN EVENTQEN CMDQEN");
        assert_eq!(d("GBPA", 1 << 31 | 1 << 20), "UPDATE ABORT");
        assert_eq!(d("CMDQ_BASE", crate::regs::base_value(0x4000_1000, 8)), "ADDR=0x40001000 LOG2SIZE=8 RA=1");
        assert_eq!(d("STRTAB_BASE_CFG", 1 << 16 | 6 << 6 | 16), "FMT=2-level SPLIT=6 LOG2SIZE=16");
        assert_eq!(d("EVENTQ_CONS", 1 << 31 | 0x81), "RD=0x81 OVACKFLG=1");
        assert_eq!(d("GERRORN", 1), "CMDQ_ERR");
        assert_eq!(d("CR2", 6), "RECINVSID PTM");
    }

    #[test]
    fn encodings() {
        assert_eq!(cfgi_ste(0x10), [0x10_0000_0003, 1]);
        assert_eq!(cfgi_all(), [4, 31]);
        assert_eq!(tlbi_nh_asid(7), [0x0007_0000_0000_0011, 0]);
        assert_eq!(tlbi_s12_vmall(2), [0x2_0000_0028, 0]);
        assert_eq!(tlbi_nh_all(2), [0x2_0000_0010, 0]);
        assert_eq!(cfgi_cd(0x10), [0x10_0000_0005, 1]);
        assert_eq!(cfgi_cd_all(0x10), [0x10_0000_0006, 0]);
        assert_eq!(opcode_name(0x13), "TLBI_NH_VAA");
        assert_eq!(sync(), [0x46, 0]);
        let r = Range::covering(0x20_0000, 0x20_1000).unwrap();
        assert_eq!((r.num, r.scale, r.len()), (0, 0, 4096));
        let s = Scope { range: r, ranged: true, leaf: true };
        assert_eq!(tlbi_nh_va(3, s), [0x0003_0000_0000_0012, 0x20_0000 | 1 << 10 | 1]);
        assert_eq!(tlbi_nh_va(3, Scope { ranged: false, ..s })[1], 0x20_0001);
        assert_eq!(tlbi_nh_va(3, Scope { leaf: false, ..s })[1], 0x20_0000 | 1 << 10);
        let r = Range::covering(0x4000_0000, 0x4020_0000).unwrap();
        assert_eq!((r.num, r.scale), (31, 4), "512 pages = 32 << 4");
        assert_eq!(
            tlbi_s2_ipa(9, Scope { range: r, ranged: true, leaf: true })[0],
            0x2A | 31 << 12 | 4 << 20 | 9 << 32
        );
        assert_eq!(CommandError::from_code(1), CommandError::Illegal);
        assert_eq!(opcode_name(0x12), "TLBI_NH_VA");
    }

    #[test]
    fn ranges_cover_and_stay_small() {
        for (s, e) in [(0u64, 1u64), (0x1000, 0x9000), (0x7_F000, 0x80_1000), (0, 1 << 40)] {
            let r = Range::covering(s, e).unwrap();
            assert!(r.start <= s && r.start + r.len() >= e, "{s:#x}..{e:#x}: {r:?}");
            let pages = (e - r.start).div_ceil(4096);
            assert!(r.len() / 4096 < 2 * pages.max(32), "{r:?} much larger than {pages} pages");
        }
    }
}
