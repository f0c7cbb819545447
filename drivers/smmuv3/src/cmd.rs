//! Command queue entries (SMMUv3 §4): two 64-bit words each, and the
//! command-error codes the SMMU reports in CMDQ_CONS.ERR (§4.7.3).

/// A command, as two 64-bit words.
pub type Command = [u64; 2];

/// Opcodes (word 0 bits 7:0, §4.1.1) of the commands a nested child's owner
/// may queue, and of the configuration invalidations.
pub mod op {
    /// CMD_CFGI_STE.
    pub const CFGI_STE: u64 = 0x03;
    /// CMD_CFGI_CD.
    pub const CFGI_CD: u64 = 0x05;
    /// CMD_CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u64 = 0x06;
    /// CMD_TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u64 = 0x10;
    /// CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u64 = 0x11;
    /// CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u64 = 0x12;
    /// CMD_TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u64 = 0x13;
}

/// CMD_CFGI_STE: the SMMU forgets what it cached of stream `sid`'s STE.
pub fn cfgi_ste(sid: u32) -> Command {
    [op::CFGI_STE | u64::from(sid) << 32, 1] // Leaf = 1: only the STE, not the L1 descriptor
}

/// CMD_CFGI_ALL (CFGI_STE_RANGE with Range = 31): every cached STE and CD.
pub fn cfgi_all() -> Command {
    [0x04, 31]
}

/// CMD_CFGI_CD: the cached CD of substream 0 of stream `sid`.
pub fn cfgi_cd(sid: u32) -> Command {
    [op::CFGI_CD | u64::from(sid) << 32, 1]
}

/// CMD_CFGI_CD_ALL: every cached CD of stream `sid` (§4.3.4).
pub fn cfgi_cd_all(sid: u32) -> Command {
    [op::CFGI_CD_ALL | u64::from(sid) << 32, 0]
}

/// CMD_TLBI_NH_ALL: every stage-1 TLB entry tagged with `vmid` (§4.4.2.1),
/// including the combined stage-1 + stage-2 entries of nested streams.
pub fn tlbi_nh_all(vmid: u16) -> Command {
    [op::TLBI_NH_ALL | u64::from(vmid) << 32, 0]
}

/// CMD_TLBI_NH_ASID: stage-1 TLB entries of `asid`.
pub fn tlbi_nh_asid(asid: u16) -> Command {
    [op::TLBI_NH_ASID | u64::from(asid) << 48, 0]
}

/// CMD_TLBI_S12_VMALL: every TLB entry tagged with `vmid`.
pub fn tlbi_s12_vmall(vmid: u16) -> Command {
    [0x28 | u64::from(vmid) << 32, 0]
}

/// CMD_TLBI_NSNH_ALL: every non-secure, non-hypervisor TLB entry.
pub fn tlbi_nsnh_all() -> Command {
    [0x30, 0]
}

/// CMD_SYNC without a completion signal (completion is seen by polling CMDQ_CONS).
pub fn sync() -> Command {
    [0x46, 0]
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

fn address_words(opcode: u64, tag: u64, s: Scope) -> Command {
    let (num, scale, tg) = if s.ranged { (s.range.num, s.range.scale, 1) } else { (0, 0, 0) };
    let w0 = opcode | u64::from(num) << 12 | u64::from(scale) << 20 | tag;
    // TTL = 0: entries of any level.
    let w1 = u64::from(s.leaf) | tg << 10 | (s.range.start & 0x000F_FFFF_FFFF_F000);
    [w0, w1]
}

/// CMD_TLBI_NH_VA: stage-1 entries of `asid` in the scope (TG = 4 KiB when ranged).
pub fn tlbi_nh_va(asid: u16, scope: Scope) -> Command {
    address_words(op::TLBI_NH_VA, u64::from(asid) << 48, scope)
}

/// CMD_TLBI_S2_IPA: stage-2 entries of `vmid` in the scope.
pub fn tlbi_s2_ipa(vmid: u16, scope: Scope) -> Command {
    address_words(0x2A, u64::from(vmid) << 32, scope)
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
    match word0 & 0xFF {
        0x03 => "CFGI_STE",
        0x04 => "CFGI_STE_RANGE",
        0x05 => "CFGI_CD",
        0x06 => "CFGI_CD_ALL",
        0x10 => "TLBI_NH_ALL",
        0x11 => "TLBI_NH_ASID",
        0x12 => "TLBI_NH_VA",
        0x13 => "TLBI_NH_VAA",
        0x28 => "TLBI_S12_VMALL",
        0x2A => "TLBI_S2_IPA",
        0x30 => "TLBI_NSNH_ALL",
        0x46 => "SYNC",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
