//! The hardware-specific door, checked before anything reaches the SMMU:
//! driver attributes of kernel-managed domains (`hwpt_data::SMMUV3_ATTRS`),
//! the stage-1 STE words of a nested child and the commands its owner may
//! queue (`hwpt_data::SMMUV3_STE`). Pure functions of the ID registers and
//! the caller's bytes; [`crate::SmmuIommu`] applies them.
//!
//! Every struct is decoded by length, as the IOAS ABI does: shorter data is
//! zero-filled, longer data must be zero past what this driver knows.

use crate::cmd::{Cmd, Command, CMD0, CMD1};
use crate::regs::{oas_bits, IDR0, IDR3, IDR5};
use crate::ste::{Ste, STE0, STE1};
use abi::iommufd::{HwptSmmuv3Attrs, HwptSmmuv3Command, HwptSmmuv3Ste};
use alloc::vec::Vec;
use iommu::desc::{field_mask, in_place};
use iommu::Error;
use zerocopy::{FromBytes, IntoBytes};

/// Decodes `data` into `T` by length: missing bytes are zero, bytes past
/// `T` must be zero ([`Error::InvalidData`] naming `what` otherwise).
pub fn by_length<T: FromBytes + IntoBytes>(data: &[u8], what: &'static str) -> Result<T, Error> {
    iommu::user_data::read_struct(data).map_err(|_| Error::InvalidData(what))
}

/// Input bits of a default stage-1 domain (4 levels).
pub const S1_DEFAULT_BITS: u32 = 48;
/// Input bits of a default stage-2 domain (3 levels, SL0 = 1: within QEMU's
/// 44-bit output size, which also bounds a stage-2 input, §5.2 STE.S2T0SZ).
pub const S2_DEFAULT_BITS: u32 = 39;

/// Table levels for an input size with the 4 KiB granule: 3 levels up to 39
/// bits (walks start at level 1), 4 above (start at level 0).
pub fn levels_for(input_bits: u32) -> usize {
    if input_bits > 39 {
        4
    } else {
        3
    }
}

/// What a kernel-managed domain's attributes resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    /// Stage-2 tables (a VMID) rather than stage 1 (an ASID and a CD).
    pub stage2: bool,
    /// Input address bits: the domain's aperture is `[0, 2^input_bits)`.
    pub input_bits: u32,
}

impl Attrs {
    /// Table levels (4 KiB granule).
    pub fn levels(&self) -> usize {
        levels_for(self.input_bits)
    }
}

/// Resolves [`HwptSmmuv3Attrs`] (`data`, by length) against the SMMU's ID
/// registers `idr`; `default_stage2` is the driver's choice for stage 0.
///
/// - `reserved` non-zero or bytes past the struct: [`Error::InvalidData`].
/// - `stage`: 0 the default, 1 needs IDR0.S1P, 2 needs IDR0.S2P (§6.3.1;
///   [`Error::NotSupported`] `"stage 1"` / `"stage 2"`), else invalid.
/// - `granule_log2`: 0 or 12; 14 and 16 are granules this driver does not
///   build tables for (`"granule"`), anything else is invalid.
/// - `input_bits`: 0 the default (48 for stage 1, 39 for stage 2). Else what
///   3- or 4-level 4 KiB tables can cover: stage 1 31–48 bits (CD.T0SZ 16–33,
///   §5.4); stage 2 31–48 bits and at most the output size IDR5.OAS, which
///   bounds a stage-2 input for an AArch64-only SMMU (§5.2 STE.S2T0SZ: minimum
///   64 - IAS, IAS = OAS), so 31–44 on QEMU. Others: `"input size"`.
pub fn decode_attrs(idr: &[u32; 6], default_stage2: bool, data: &[u8]) -> Result<Attrs, Error> {
    let a: HwptSmmuv3Attrs = by_length(data, "bytes past the SMMUv3 attributes")?;
    if a.reserved != 0 {
        return Err(Error::InvalidData("reserved"));
    }
    let stage2 = match a.stage {
        0 => default_stage2,
        1 if IDR0::S1P.read(idr[0]) != 0 => false,
        1 => return Err(Error::NotSupported("stage 1")),
        2 if IDR0::S2P.read(idr[0]) != 0 => true,
        2 => return Err(Error::NotSupported("stage 2")),
        _ => return Err(Error::InvalidData("stage")),
    };
    match a.granule_log2 {
        0 | 12 => {}
        14 | 16 => return Err(Error::NotSupported("granule")),
        _ => return Err(Error::InvalidData("granule_log2")),
    }
    let input_bits = match (a.input_bits, stage2) {
        (0, false) => S1_DEFAULT_BITS,
        (0, true) => S2_DEFAULT_BITS,
        (n, false) if (31..=48).contains(&n) => n,
        (n, true) if (31..=48).contains(&n) && n <= oas_bits(IDR5::OAS.read(idr[5])) => n,
        _ => return Err(Error::NotSupported("input size")),
    };
    Ok(Attrs { stage2, input_bits })
}

/// What a checked nested-child STE asks for, in the terms of a guest that
/// sees a stage-1-only SMMU (as Linux's iommufd vSTE: Config is abort, bypass
/// or stage-1 translate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSte {
    /// V = 0 or Config = 0b000: the stream's traffic is aborted (abort STE).
    Abort,
    /// Config = 0b100 (stage 1 bypassed): the parent's stage 2 alone (Config 0b110).
    Bypass,
    /// Config = 0b101: the owner's CD over the parent's stage 2 (Config
    /// 0b111); words 0 and 1 as given, only stage-1 fields set.
    Translate([u64; 2]),
}

/// Word 0 fields outside those a child's owner may set, named (§5.2).
const W0_FORBIDDEN: &[(u64, &str)] = &[
    (field_mask(STE0::S1_CONTEXT_PTR_HI), "S1ContextPtr bits 55:52"),
    (field_mask(STE0::RES0_56), "STE word 0 bits 58:56 (reserved)"),
];

/// Word 1 fields outside those a child's owner may set, named (§5.2).
const W1_FORBIDDEN: &[(u64, &str)] = &[
    (field_mask(STE1::S2HWU), "S2HWU59-62"),
    (field_mask(STE1::DRE), "DRE"),
    (field_mask(STE1::CONT), "CONT"),
    (field_mask(STE1::DCP), "DCP"),
    (field_mask(STE1::PPAR), "PPAR"),
    (field_mask(STE1::MEV), "MEV"),
    (field_mask(STE1::SW_RESERVED), "SW_RESERVED"),
    (field_mask(STE1::S1PIE), "S1PIE"),
    (field_mask(STE1::S2FWB), "S2FWB"),
    (field_mask(STE1::S1MPAM), "S1MPAM"),
    (field_mask(STE1::STRW), "STRW"),
    (field_mask(STE1::MEMATTR), "MemAttr"),
    (field_mask(STE1::MTCFG), "MTCFG"),
    (field_mask(STE1::ALLOCCFG), "ALLOCCFG"),
    (field_mask(STE1::RES0_41), "STE word 1 bits 43:41 (reserved)"),
    (field_mask(STE1::SHCFG), "SHCFG"),
    (field_mask(STE1::NSCFG), "NSCFG"),
    (field_mask(STE1::PRIVCFG), "PRIVCFG"),
    (field_mask(STE1::INSTCFG), "INSTCFG"),
    (field_mask(STE1::IMPDEF), "STE word 1 bits 63:52 (IMPLEMENTATION DEFINED)"),
];

/// Checks the stage-1 STE words of a nested child ([`HwptSmmuv3Ste`], by
/// length) for an SMMU with ID registers `idr` whose parent translates
/// `parent_bits` of input (§5.2).
///
/// Only these fields may be set; any other bit is [`Error::InvalidData`]
/// naming its field:
/// - V = 0: the rest is ignored and the child aborts (the SMMU would treat the
///   entry as invalid; it must not become one that lets anything through).
/// - EATS = 0 (1 would be ATS, which this driver does not enable: not
///   supported; 2 and 3 are invalid for a child).
/// - Config 0b000 (abort), 0b100 (stage-1 bypass: the parent's stage 2
///   only), 0b101 (stage-1 translate, nested over the parent); 0b110 and
///   0b111 name a stage 2 the kernel owns, the other values are reserved.
///   With abort or bypass the SMMU ignores the stage-1 fields, and so does
///   this check. With stage-1 translate:
/// - S1Fmt 0b00–0b10, S1ContextPtr (bits 51:6, an IPA: below
///   2^`parent_bits`), S1CDMax = 0 (more is substreams: not supported).
/// - S1DSS 0b00–0b10, S1CIR, S1COR, S1CSH other than the reserved 0b01.
/// - S1STALLD only where stalls are configurable (IDR0.STALL_MODEL = 0b00;
///   ILLEGAL elsewhere, and QEMU treats it as C_BAD_STE).
pub fn check_ste(idr: &[u32; 6], parent_bits: u32, data: &[u8]) -> Result<UserSte, Error> {
    let s: HwptSmmuv3Ste = by_length(data, "bytes past the STE words")?;
    let [a, b] = s.ste;
    let e = Ste::from_words([a, b, 0, 0, 0, 0, 0, 0]);
    if !e.w0.is_set(STE0::V) {
        return Ok(UserSte::Abort);
    }
    for &(mask, name) in W0_FORBIDDEN {
        if e.w0.get() & mask != 0 {
            return Err(Error::InvalidData(name));
        }
    }
    for &(mask, name) in W1_FORBIDDEN {
        if e.w1.get() & mask != 0 {
            return Err(Error::InvalidData(name));
        }
    }
    match e.w1.read(STE1::EATS) {
        0 => {}
        1 => return Err(Error::NotSupported("ATS (EATS)")),
        _ => return Err(Error::InvalidData("EATS")),
    }
    match e.w0.read_as_enum(STE0::CONFIG) {
        Some(STE0::CONFIG::Value::Abort) => return Ok(UserSte::Abort),
        Some(STE0::CONFIG::Value::Bypass) => return Ok(UserSte::Bypass),
        Some(STE0::CONFIG::Value::Stage1) => {}
        _ => return Err(Error::InvalidData("Config")),
    }
    // Stage 1 translates: its fields mean something now.
    if e.w0.read(STE0::S1FMT) == 0b11 {
        return Err(Error::InvalidData("S1Fmt"));
    }
    if e.w1.read(STE1::S1DSS) == 0b11 {
        return Err(Error::InvalidData("S1DSS"));
    }
    if e.w1.read(STE1::S1CSH) == 0b01 {
        return Err(Error::InvalidData("S1CSH"));
    }
    if e.w1.is_set(STE1::S1STALLD) && IDR0::STALL_MODEL.read(idr[0]) != 0 {
        return Err(Error::NotSupported("S1STALLD (stall model not configurable)"));
    }
    if e.w0.read(STE0::S1CDMAX) != 0 {
        return Err(Error::NotSupported("substreams (S1CDMax)"));
    }
    if in_place(e.w0, STE0::S1_CONTEXT_PTR) >> parent_bits.min(63) != 0 {
        return Err(Error::InvalidData("S1ContextPtr beyond the parent's input size"));
    }
    Ok(UserSte::Translate([a, b]))
}

/// A checked user command, ready for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The command with the kernel's VMID in it (TLBI_NH_*), or StreamID 0
    /// (CFGI_CD*: one copy goes to each stream attached to the child).
    pub cmd: Command,
    /// A CFGI_CD / CFGI_CD_ALL, to be sent once per attached stream.
    pub per_stream: bool,
}

impl Checked {
    /// The hardware commands for this one: itself, or one per stream in `streams`.
    pub fn commands<'a>(&'a self, streams: &'a [u32]) -> impl Iterator<Item = Command> + 'a {
        let (once, each) = if self.per_stream { (None, streams) } else { (Some(self.cmd), &[][..]) };
        once.into_iter().chain(each.iter().map(|&sid| {
            let mut c = Cmd::from_words(self.cmd);
            c.w0.modify(CMD0::SID.val(u64::from(sid)));
            c.to_words()
        }))
    }
}

/// The fields of a user command (§4.3, §4.4), as masks.
const SID: u64 = field_mask(CMD0::SID);
const VMID: u64 = field_mask(CMD0::VMID);
const ASID: u64 = field_mask(CMD0::ASID);
const SSID: u64 = field_mask(CMD0::SSID);
const NUM: u64 = field_mask(CMD0::NUM);
const SCALE: u64 = field_mask(CMD0::SCALE);
const OPCODE: u64 = field_mask(CMD0::OPCODE);
const LEAF: u64 = field_mask(CMD1::LEAF);
const TTL: u64 = field_mask(CMD1::TTL);
const TG: u64 = field_mask(CMD1::TG);
const ADDR: u64 = field_mask(CMD1::ADDR);

/// Checks one command ([`HwptSmmuv3Command`] words) a nested child's owner
/// queued and puts the kernel's tags in (§4.3, §4.4): `vmid` is the parent's.
///
/// - TLBI_NH_ALL (VMID), TLBI_NH_ASID (VMID, ASID), TLBI_NH_VAA (VMID, NUM,
///   SCALE, Leaf, TTL, TG, Address), TLBI_NH_VA (the same and ASID): the
///   owner's VMID field is replaced by `vmid`. ASIDs wider than IDR0.ASID16
///   allows, and NUM / SCALE / TTL / TG without IDR3.RIL, are invalid; so is
///   TG != 0 with NUM = SCALE = TTL = 0 (reserved: CERROR_ILL) and NUM, SCALE
///   or TTL with TG = 0 (RES0).
/// - CFGI_CD (StreamID, SSID = 0, Leaf), CFGI_CD_ALL (StreamID): the owner's
///   StreamID is replaced by each stream attached to the child; SSec must be 0.
/// - Other opcodes: `"command"`; any other bit set: `"reserved bits"`.
pub fn check_command(idr: &[u32; 6], vmid: u16, c: [u64; 2]) -> Result<Checked, Error> {
    use CMD0::OPCODE::Value as Op;
    let mut cmd = Cmd::from_words(c);
    let opcode = cmd.w0.read_as_enum(CMD0::OPCODE);
    let ril = IDR3::RIL.read(idr[3]) != 0;
    let (allowed0, allowed1, per_stream) = match opcode {
        Some(Op::TlbiNhAll) => (VMID, 0, false),
        Some(Op::TlbiNhAsid) => (VMID | ASID, 0, false),
        Some(Op::TlbiNhVaa) => (VMID | NUM | SCALE, LEAF | TTL | TG | ADDR, false),
        Some(Op::TlbiNhVa) => (VMID | ASID | NUM | SCALE, LEAF | TTL | TG | ADDR, false),
        Some(Op::CfgiCd) => (SID | SSID, LEAF, true),
        Some(Op::CfgiCdAll) => (SID, 0, true),
        _ => return Err(Error::InvalidData("command")),
    };
    if c[0] & !(OPCODE | allowed0) != 0 || c[1] & !allowed1 != 0 {
        return Err(Error::InvalidData("reserved bits"));
    }
    if opcode == Some(Op::CfgiCd) && c[0] & SSID != 0 {
        return Err(Error::InvalidData("SSID"));
    }
    if IDR0::ASID16.read(idr[0]) == 0 && cmd.w0.read(CMD0::ASID) > 0xFF {
        return Err(Error::InvalidData("ASID"));
    }
    let (num_scale, ttl, tg) = (c[0] & (NUM | SCALE), c[1] & TTL, c[1] & TG);
    if !ril && (num_scale | ttl | tg) != 0 {
        return Err(Error::InvalidData("NUM/SCALE/TTL/TG without range invalidation (IDR3.RIL)"));
    }
    if tg == 0 && (num_scale | ttl) != 0 {
        return Err(Error::InvalidData("NUM/SCALE/TTL with TG = 0"));
    }
    if tg != 0 && (num_scale | ttl) == 0 {
        return Err(Error::InvalidData("TG without a range or TTL"));
    }
    if per_stream {
        cmd.w0.modify(CMD0::SID.val(0));
    } else {
        cmd.w0.modify(CMD0::VMID.val(u64::from(vmid)));
    }
    Ok(Checked { cmd: cmd.to_words(), per_stream })
}

/// Checks a batch of `entry_len`-byte [`HwptSmmuv3Command`] entries in order,
/// stopping at the first bad one: the accepted commands, and why it stopped
/// (`None`: every entry was accepted). An entry shorter than 16 bytes (as
/// `entry_len` = 0, or a cut-off last entry) is invalid; bytes past 16 must
/// be zero. Without heap for the list, it stops there with
/// [`Error::NoMemory`].
pub fn check_commands(idr: &[u32; 6], vmid: u16, entries: &[u8], entry_len: usize) -> (Vec<Checked>, Option<Error>) {
    let mut out = Vec::new();
    if entries.is_empty() {
        return (out, None);
    }
    let size = core::mem::size_of::<HwptSmmuv3Command>();
    if entry_len < size {
        return (out, Some(Error::InvalidData("entry length")));
    }
    for entry in entries.chunks(entry_len) {
        if entry.len() < size {
            return (out, Some(Error::InvalidData("entry length")));
        }
        let checked = by_length::<HwptSmmuv3Command>(entry, "bytes past the command")
            .and_then(|c| check_command(idr, vmid, c.cmd));
        match checked {
            Ok(c) => {
                if fallible::VecExt::try_push(&mut out, c).is_err() {
                    return (out, Some(Error::NoMemory));
                }
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opcodes as numbers (§4.1.1): the golden values the tests queue.
    mod op {
        pub const CFGI_CD: u64 = 0x05;
        pub const CFGI_CD_ALL: u64 = 0x06;
        pub const TLBI_NH_ALL: u64 = 0x10;
        pub const TLBI_NH_ASID: u64 = 0x11;
        pub const TLBI_NH_VA: u64 = 0x12;
        pub const TLBI_NH_VAA: u64 = 0x13;
    }

    /// STE.Config as numbers (§5.2).
    const CONFIG_BYPASS: u64 = 0b100;
    const CONFIG_S1: u64 = 0b101;
    use crate::cmd;
    use zerocopy::IntoBytes;

    /// QEMU 10.0 virt (`smmuv3_init_regs` with stage=nested): S1P + S2P,
    /// 16-bit ASIDs and VMIDs, stall model 1 (terminate only), RIL, 44-bit OAS.
    const QEMU: [u32; 6] = [0x0D44_101B, 0x0273_0010, 0, 0x1414, 0, 0x74];

    fn idr(s1: bool, s2: bool, oas: u32) -> [u32; 6] {
        let mut i = QEMU;
        i[0] = i[0] & !3 | u32::from(s1) << 1 | u32::from(s2);
        i[5] = i[5] & !7 | oas;
        i
    }

    fn attrs(stage: u32, granule_log2: u32, input_bits: u32) -> Vec<u8> {
        HwptSmmuv3Attrs { stage, granule_log2, input_bits, reserved: 0 }.as_bytes().to_vec()
    }

    #[test]
    fn the_qemu_registers_say_what_the_tests_assume() {
        assert_eq!((IDR0::S1P.read(QEMU[0]), IDR0::S2P.read(QEMU[0])), (1, 1));
        assert_eq!((IDR0::ASID16.read(QEMU[0]), IDR0::VMID16.read(QEMU[0])), (1, 1));
        assert_eq!(IDR0::STALL_MODEL.read(QEMU[0]), 1);
        assert_eq!(IDR3::RIL.read(QEMU[3]), 1);
        assert_eq!(oas_bits(IDR5::OAS.read(QEMU[5])), 44);
    }

    #[test]
    fn attribute_defaults_follow_the_driver() {
        let q = idr(true, true, 4);
        assert_eq!(decode_attrs(&q, false, &attrs(0, 0, 0)), Ok(Attrs { stage2: false, input_bits: 48 }));
        assert_eq!(decode_attrs(&q, true, &attrs(0, 0, 0)), Ok(Attrs { stage2: true, input_bits: 39 }));
        assert_eq!(decode_attrs(&q, false, &[]), Ok(Attrs { stage2: false, input_bits: 48 }), "no data");
        assert_eq!(Attrs { stage2: false, input_bits: 48 }.levels(), 4);
        assert_eq!(Attrs { stage2: true, input_bits: 39 }.levels(), 3);
    }

    #[test]
    fn attributes_decode_by_length() {
        let q = idr(true, true, 4);
        // 4 bytes: stage only.
        assert_eq!(decode_attrs(&q, false, &2u32.to_le_bytes()), Ok(Attrs { stage2: true, input_bits: 39 }));
        // Longer: zero tail fine, non-zero tail refused.
        let mut long = attrs(1, 12, 39);
        long.extend_from_slice(&[0; 8]);
        assert_eq!(decode_attrs(&q, true, &long), Ok(Attrs { stage2: false, input_bits: 39 }));
        long[20] = 1;
        assert!(matches!(decode_attrs(&q, true, &long), Err(Error::InvalidData(_))));
        let reserved = HwptSmmuv3Attrs { reserved: 1, ..Default::default() };
        assert_eq!(decode_attrs(&q, false, reserved.as_bytes()), Err(Error::InvalidData("reserved")));
    }

    #[test]
    fn attribute_stage_needs_the_stage() {
        assert_eq!(decode_attrs(&idr(false, true, 4), true, &attrs(1, 0, 0)), Err(Error::NotSupported("stage 1")));
        assert_eq!(decode_attrs(&idr(true, false, 4), false, &attrs(2, 0, 0)), Err(Error::NotSupported("stage 2")));
        assert_eq!(
            decode_attrs(&idr(true, true, 4), false, &attrs(2, 0, 0)),
            Ok(Attrs { stage2: true, input_bits: 39 })
        );
        assert_eq!(
            decode_attrs(&idr(true, true, 4), true, &attrs(1, 0, 0)),
            Ok(Attrs { stage2: false, input_bits: 48 })
        );
        for bad in [3, 4, u32::MAX] {
            assert_eq!(decode_attrs(&QEMU, false, &attrs(bad, 0, 0)), Err(Error::InvalidData("stage")));
        }
    }

    #[test]
    fn attribute_granule() {
        assert!(decode_attrs(&QEMU, false, &attrs(0, 12, 0)).is_ok());
        for g in [14, 16] {
            assert_eq!(decode_attrs(&QEMU, false, &attrs(0, g, 0)), Err(Error::NotSupported("granule")));
        }
        for g in [1, 11, 13, 21, 30] {
            assert_eq!(decode_attrs(&QEMU, false, &attrs(0, g, 0)), Err(Error::InvalidData("granule_log2")));
        }
    }

    #[test]
    fn attribute_input_size() {
        let ok = |stage, bits, oas| decode_attrs(&idr(true, true, oas), false, &attrs(stage, 0, bits));
        // Stage 1: 3 levels up to 39 bits, 4 levels above, at most 48.
        assert_eq!(ok(1, 39, 4), Ok(Attrs { stage2: false, input_bits: 39 }));
        assert_eq!(ok(1, 48, 4), Ok(Attrs { stage2: false, input_bits: 48 }));
        assert_eq!(ok(1, 31, 4).map(|a| a.levels()), Ok(3));
        assert_eq!(ok(1, 40, 4).map(|a| a.levels()), Ok(4));
        for bits in [1, 12, 30, 49, 52, 64] {
            assert_eq!(ok(1, bits, 4), Err(Error::NotSupported("input size")), "{bits}");
        }
        // Stage 2: also bounded by the output size (44 bits on QEMU).
        assert_eq!(ok(2, 39, 4), Ok(Attrs { stage2: true, input_bits: 39 }));
        assert_eq!(ok(2, 44, 4), Ok(Attrs { stage2: true, input_bits: 44 }));
        assert_eq!(ok(2, 44, 4).map(|a| a.levels()), Ok(4));
        assert_eq!(ok(2, 45, 4), Err(Error::NotSupported("input size")));
        assert_eq!(ok(2, 48, 4), Err(Error::NotSupported("input size")));
        assert_eq!(ok(2, 48, 5), Ok(Attrs { stage2: true, input_bits: 48 }), "48-bit OAS");
        assert_eq!(ok(2, 39, 1), Err(Error::NotSupported("input size")), "36-bit OAS");
        assert_eq!(ok(2, 30, 4), Err(Error::NotSupported("input size")));
    }

    const S1: u64 = 1 | CONFIG_S1 << 1;

    fn ste_bytes(a: u64, b: u64) -> Vec<u8> {
        HwptSmmuv3Ste { ste: [a, b] }.as_bytes().to_vec()
    }

    fn check(a: u64, b: u64) -> Result<UserSte, Error> {
        check_ste(&QEMU, 39, &ste_bytes(a, b))
    }

    #[test]
    fn ste_configs() {
        assert_eq!(check(1, 0), Ok(UserSte::Abort), "V, Config 0b000");
        assert_eq!(check(1 | CONFIG_BYPASS << 1, 0), Ok(UserSte::Bypass));
        assert_eq!(check(S1 | 0x1000, 0xD4), Ok(UserSte::Translate([S1 | 0x1000, 0xD4])));
        for c in [0b001, 0b010, 0b011, 0b110, 0b111] {
            assert_eq!(check(1 | c << 1, 0), Err(Error::InvalidData("Config")), "{c:#b}");
        }
    }

    #[test]
    fn ste_invalid_is_abort_whatever_else_it_says() {
        assert_eq!(check(0, 0), Ok(UserSte::Abort));
        assert_eq!(check(CONFIG_S1 << 1 | 0x1000, u64::MAX), Ok(UserSte::Abort));
        assert_eq!(check_ste(&QEMU, 39, &[]), Ok(UserSte::Abort), "no data");
    }

    #[test]
    fn ste_decodes_by_length() {
        // Word 0 only: word 1 is zero.
        assert_eq!(check_ste(&QEMU, 39, &(S1 | 0x2000).to_le_bytes()), Ok(UserSte::Translate([S1 | 0x2000, 0])));
        let mut long = ste_bytes(S1, 0);
        long.extend_from_slice(&[0; 48]);
        assert_eq!(check_ste(&QEMU, 39, &long), Ok(UserSte::Translate([S1, 0])));
        long[63] = 1;
        assert!(matches!(check_ste(&QEMU, 39, &long), Err(Error::InvalidData(_))));
    }

    #[test]
    fn ste_each_allowed_field() {
        let ptr = 0x7F_FFFF_FFC0; // the highest CD address below 2^39
        for (a, b) in [
            (S1 | ptr, 0),
            (S1 | 0b01 << 4, 0),
            (S1 | 0b10 << 4, 0),
            (S1, 0b01),
            (S1, 0b10),
            (S1, 0b11 << 2),
            (S1, 0b10 << 4),
            (S1, 0b10 << 6),
            (S1, 0b11 << 6),
            (S1 | ptr | 0b10 << 4, 0b10 | 0b01 << 2 | 0b11 << 4 | 0b11 << 6),
        ] {
            assert_eq!(check(a, b), Ok(UserSte::Translate([a, b])), "{a:#x} {b:#x}");
        }
        // The context pointer is an IPA of the parent.
        assert_eq!(check(S1 | 1 << 39, 0), Err(Error::InvalidData("S1ContextPtr beyond the parent's input size")));
        assert_eq!(check_ste(&QEMU, 44, &ste_bytes(S1 | 1 << 43, 0)), Ok(UserSte::Translate([S1 | 1 << 43, 0])));
        // ... and means nothing when stage 1 is bypassed, as the other
        // stage-1 fields, whatever their values.
        let byp = 1 | CONFIG_BYPASS << 1;
        assert_eq!(check(byp | 1 << 45, 0), Ok(UserSte::Bypass));
        assert_eq!(check(byp | 0b11 << 4 | 1 << 59, 0b11 | 0b01 << 6 | 1 << 27), Ok(UserSte::Bypass));
        assert_eq!(check(1 | 0b11 << 4 | 1 << 59, 0b11 | 0b01 << 6 | 1 << 27), Ok(UserSte::Abort));
        // Fields outside stage 1 are refused whatever the Config.
        assert_eq!(check(byp, 1 << 44), Err(Error::InvalidData("SHCFG")));
        assert_eq!(check(1, 1 << 28), Err(Error::NotSupported("ATS (EATS)")));
    }

    #[test]
    fn ste_reserved_encodings_of_allowed_fields() {
        assert_eq!(check(S1 | 0b11 << 4, 0), Err(Error::InvalidData("S1Fmt")));
        assert_eq!(check(S1, 0b11), Err(Error::InvalidData("S1DSS")));
        assert_eq!(check(S1, 0b01 << 6), Err(Error::InvalidData("S1CSH")));
    }

    #[test]
    fn ste_unsupported_fields() {
        assert_eq!(check(S1 | 1 << 59, 0), Err(Error::NotSupported("substreams (S1CDMax)")));
        assert_eq!(check(S1 | 0x1F << 59, 0), Err(Error::NotSupported("substreams (S1CDMax)")));
        assert_eq!(check(S1, 1 << 28), Err(Error::NotSupported("ATS (EATS)")));
        assert_eq!(check(S1, 2 << 28), Err(Error::InvalidData("EATS")));
        assert_eq!(check(S1, 3 << 28), Err(Error::InvalidData("EATS")));
        // S1STALLD: ILLEGAL unless stalls are configurable (QEMU: STALL_MODEL 1).
        assert_eq!(check(S1, 1 << 27), Err(Error::NotSupported("S1STALLD (stall model not configurable)")));
        let mut stalls = QEMU;
        stalls[0] &= !(3 << 24);
        assert_eq!(check_ste(&stalls, 39, &ste_bytes(S1, 1 << 27)), Ok(UserSte::Translate([S1, 1 << 27])));
    }

    #[test]
    fn ste_each_forbidden_field() {
        for &(mask, name) in W0_FORBIDDEN {
            assert_eq!(check(S1 | mask & mask.wrapping_neg(), 0), Err(Error::InvalidData(name)));
            assert_eq!(check(S1 | mask, 0), Err(Error::InvalidData(name)));
        }
        for &(mask, name) in W1_FORBIDDEN {
            assert_eq!(check(S1, mask & mask.wrapping_neg()), Err(Error::InvalidData(name)), "{name}");
            assert_eq!(check(S1, mask), Err(Error::InvalidData(name)), "{name}");
        }
        // Every bit is either allowed or named.
        let allowed0 = [STE0::V, STE0::CONFIG, STE0::S1FMT, STE0::S1_CONTEXT_PTR, STE0::S1CDMAX]
            .into_iter()
            .fold(0, |m, f| m | field_mask(f));
        let named0 = W0_FORBIDDEN.iter().fold(0, |m, f| m | f.0);
        assert_eq!(allowed0 ^ named0, u64::MAX);
        assert_eq!(allowed0 & named0, 0);
        let allowed1 = [STE1::S1DSS, STE1::S1CIR, STE1::S1COR, STE1::S1CSH, STE1::S1STALLD, STE1::EATS]
            .into_iter()
            .fold(0, |m, f| m | field_mask(f));
        let named1 = W1_FORBIDDEN.iter().fold(0, |m, f| m | f.0);
        assert_eq!(allowed1 ^ named1, u64::MAX);
        assert_eq!(allowed1 & named1, 0);
    }

    fn cmd_ok(c: [u64; 2]) -> Checked {
        check_command(&QEMU, 7, c).unwrap_or_else(|e| panic!("{c:x?}: {e}"))
    }

    #[test]
    fn commands_get_the_parents_vmid() {
        // TLBI_NH_ALL with the owner's VMID 0x99: replaced by 7.
        let c = cmd_ok([op::TLBI_NH_ALL | 0x99 << 32, 0]);
        assert_eq!(c, Checked { cmd: cmd::tlbi_nh_all(7), per_stream: false });
        assert_eq!(c.commands(&[8, 16]).collect::<Vec<_>>(), [cmd::tlbi_nh_all(7)]);
        let c = cmd_ok([op::TLBI_NH_ASID | 0xBEEF << 48 | 0xFFFF << 32, 0]);
        assert_eq!(c.cmd, [op::TLBI_NH_ASID | 0xBEEF << 48 | 7 << 32, 0]);
        let va = [op::TLBI_NH_VA | 3 << 48 | 31 << 12 | 4 << 20, 0x4000_0000 | 1 << 10 | 2 << 8 | 1];
        assert_eq!(cmd_ok(va).cmd, [va[0] | 7 << 32, va[1]]);
        let vaa = [op::TLBI_NH_VAA, 0xFFFF_FFFF_FFFF_F000];
        assert_eq!(cmd_ok(vaa).cmd, [op::TLBI_NH_VAA | 7 << 32, vaa[1]]);
        // The kernel's own encodings pass and keep their meaning.
        let r = cmd::Range::covering(0x20_0000, 0x40_0000).unwrap_or(cmd::Range { start: 0, num: 0, scale: 0 });
        let own = cmd::tlbi_nh_va(9, cmd::Scope { range: r, ranged: true, leaf: true });
        assert_eq!(cmd_ok(own).cmd, [own[0] | 7 << 32, own[1]]);
    }

    #[test]
    fn configuration_invalidations_go_to_each_attached_stream() {
        let c = cmd_ok([op::CFGI_CD | 0x1234 << 32, 1]);
        assert_eq!(c, Checked { cmd: [op::CFGI_CD, 1], per_stream: true });
        assert_eq!(c.commands(&[8, 0x10]).collect::<Vec<_>>(), [cmd::cfgi_cd(8), cmd::cfgi_cd(0x10)]);
        assert_eq!(c.commands(&[]).count(), 0, "no stream attached: nothing to do");
        let all = cmd_ok([op::CFGI_CD_ALL | 0xFFFF_FFFF << 32, 0]);
        assert_eq!(all.commands(&[3]).collect::<Vec<_>>(), [cmd::cfgi_cd_all(3)]);
        assert_eq!(cmd_ok([op::CFGI_CD, 0]).cmd, [op::CFGI_CD, 0], "Leaf 0");
    }

    #[test]
    fn forbidden_opcodes() {
        let allowed = [0x05, 0x06, 0x10, 0x11, 0x12, 0x13];
        for opcode in (0..=0xFFu64).filter(|o| !allowed.contains(o)) {
            assert_eq!(check_command(&QEMU, 7, [opcode, 0]), Err(Error::InvalidData("command")), "{opcode:#x}");
        }
        // Notably: the kernel's own stage-2 and global invalidations, STE invalidations, SYNC.
        for c in [cmd::cfgi_ste(8), cmd::cfgi_all(), cmd::tlbi_s12_vmall(7), cmd::tlbi_nsnh_all(), cmd::sync()] {
            assert_eq!(check_command(&QEMU, 7, c), Err(Error::InvalidData("command")));
        }
    }

    #[test]
    fn reserved_bits_of_commands() {
        let reserved = Err(Error::InvalidData("reserved bits"));
        // TLBI_NH_ALL: only the VMID.
        assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_ALL | 1 << 48, 0]), reserved);
        assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_ALL, 1]), reserved);
        assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_ALL | 1 << 8, 0]), reserved);
        // TLBI_NH_ASID: no address, no range.
        assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_ASID | 1 << 12, 0]), reserved);
        assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_ASID, 0x1000]), reserved);
        // TLBI_NH_VAA: no ASID; TLBI_NH_VA / VAA word 1 bits 7:1, word 0 bits 11:8, 19:17, 31:25.
        assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_VAA | 1 << 48, 0]), reserved);
        for bit in [1, 7] {
            assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_VA, 1 << bit]), reserved);
        }
        for bit in [8, 11, 17, 19, 25, 31] {
            assert_eq!(check_command(&QEMU, 7, [op::TLBI_NH_VA | 1 << bit, 0]), reserved, "{bit}");
        }
        // CFGI_CD: SSec (bit 10), bit 11, word 1 beyond Leaf.
        for c in [[op::CFGI_CD | 1 << 10, 0], [op::CFGI_CD | 1 << 11, 0], [op::CFGI_CD, 2]] {
            assert_eq!(check_command(&QEMU, 7, c), reserved);
        }
        // CFGI_CD_ALL: no SSID, no Leaf.
        assert_eq!(check_command(&QEMU, 7, [op::CFGI_CD_ALL | 1 << 12, 0]), reserved);
        assert_eq!(check_command(&QEMU, 7, [op::CFGI_CD_ALL, 1]), reserved);
    }

    #[test]
    fn command_field_rules() {
        assert_eq!(check_command(&QEMU, 7, [op::CFGI_CD | 1 << 12, 0]), Err(Error::InvalidData("SSID")));
        // 8-bit ASIDs: the upper byte is RES0.
        let mut narrow = QEMU;
        narrow[0] &= !(1 << 12);
        assert!(check_command(&narrow, 7, [op::TLBI_NH_ASID | 0xFF << 48, 0]).is_ok());
        assert_eq!(check_command(&narrow, 7, [op::TLBI_NH_ASID | 0x100 << 48, 0]), Err(Error::InvalidData("ASID")));
        // Ranges and hints need IDR3.RIL.
        let mut no_ril = QEMU;
        no_ril[3] &= !(1 << 10);
        assert!(check_command(&no_ril, 7, [op::TLBI_NH_VA, 0x1000 | 1]).is_ok());
        for c in [[op::TLBI_NH_VA | 1 << 12, 1 << 10], [op::TLBI_NH_VA, 1 << 10 | 1 << 8]] {
            assert!(check_command(&QEMU, 7, c).is_ok());
            assert_eq!(
                check_command(&no_ril, 7, c),
                Err(Error::InvalidData("NUM/SCALE/TTL/TG without range invalidation (IDR3.RIL)"))
            );
        }
        // TG = 0: NUM, SCALE and TTL are RES0; TG != 0 alone is reserved (CERROR_ILL).
        for c in [[op::TLBI_NH_VA | 1 << 12, 0], [op::TLBI_NH_VA | 1 << 20, 0], [op::TLBI_NH_VAA, 1 << 8]] {
            assert_eq!(check_command(&QEMU, 7, c), Err(Error::InvalidData("NUM/SCALE/TTL with TG = 0")));
        }
        assert_eq!(
            check_command(&QEMU, 7, [op::TLBI_NH_VA, 3 << 10]),
            Err(Error::InvalidData("TG without a range or TTL"))
        );
    }

    fn entries(cmds: &[[u64; 2]], len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for c in cmds {
            let start = v.len();
            v.extend_from_slice(HwptSmmuv3Command { cmd: *c }.as_bytes());
            v.resize(start + len, 0);
        }
        v
    }

    #[test]
    fn batches_stop_at_the_first_bad_entry() {
        let good = [op::TLBI_NH_ALL, 0];
        let (ok, stop) = check_commands(&QEMU, 7, &entries(&[good, good], 16), 16);
        assert_eq!((ok.len(), stop), (2, None));
        let (ok, stop) = check_commands(&QEMU, 7, &entries(&[good, cmd::sync(), good], 16), 16);
        assert_eq!((ok.len(), stop), (1, Some(Error::InvalidData("command"))));
        // Longer entries: zero tails fine, the first non-zero tail stops the batch.
        let mut long = entries(&[good, good, good], 24);
        assert_eq!(check_commands(&QEMU, 7, &long, 24).0.len(), 3);
        long[24 + 20] = 1;
        let (ok, stop) = check_commands(&QEMU, 7, &long, 24);
        assert_eq!((ok.len(), stop), (1, Some(Error::InvalidData("bytes past the command"))));
        // Short entries: refused at the first.
        for len in [0, 8, 15] {
            let (ok, stop) = check_commands(&QEMU, 7, &[0; 32], len);
            assert_eq!((ok.len(), stop), (0, Some(Error::InvalidData("entry length"))), "{len}");
        }
        // A cut-off last entry.
        let (ok, stop) = check_commands(&QEMU, 7, &entries(&[good, good], 16)[..24], 16);
        assert_eq!((ok.len(), stop), (1, Some(Error::InvalidData("entry length"))));
        assert_eq!(check_commands(&QEMU, 7, &[], 0), (Vec::new(), None), "empty batch");
    }
}
