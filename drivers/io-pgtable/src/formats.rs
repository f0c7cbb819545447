//! The page-table formats, each a small [`Format`].

use crate::{Entry, Error, Format, Perms};

const ADDR_52: u64 = 0x000F_FFFF_FFFF_F000;
const ADDR_48: u64 = 0x0000_FFFF_FFFF_F000;

fn leaf_addr(pte: u64, mask: u64, level: usize) -> u64 {
    pte & mask & !(crate::level_size(level) - 1)
}

/// Intel VT-d second-level (second-stage) tables (VT-d spec rev 4.1 §9.8,
/// "Second-Stage Paging Entries"): R bit 0, W bit 1, PS bit 7 on 2 MiB / 1 GiB
/// leaves, A bit 8 / D bit 9 (when SLADE), SNP bit 11.
#[derive(Clone, Copy, Debug)]
pub struct VtdSecondLevel {
    /// 3, 4 or 5 levels (SAGAW).
    pub levels: usize,
    /// Largest leaf level allowed: 0 (4K), 1 (2M, SLLPS bit 0), 2 (1G, SLLPS bit 1).
    pub max_leaf_level: usize,
}

impl VtdSecondLevel {
    /// R, W, PS, A, D, SNP.
    const R: u64 = 1 << 0;
    const W: u64 = 1 << 1;
    const PS: u64 = 1 << 7;
    const D: u64 = 1 << 9;
    const SNP: u64 = 1 << 11;
}

impl Format for VtdSecondLevel {
    #[inline]
    fn name(&self) -> &'static str {
        "vtd-sl"
    }
    #[inline]
    fn levels(&self) -> usize {
        self.levels
    }
    #[inline]
    fn ia_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        level <= self.max_leaf_level
    }
    #[inline]
    fn encode_table(&self, pa: u64, _level: usize) -> u64 {
        pa | Self::R | Self::W
    }
    #[inline]
    fn encode_leaf(&self, pa: u64, level: usize, perms: Perms) -> Result<u64, Error> {
        if !perms.intersects(Perms::READ | Perms::WRITE) {
            return Err(Error::BadPerms);
        }
        let mut pte = pa;
        if perms.contains(Perms::READ) {
            pte |= Self::R;
        }
        if perms.contains(Perms::WRITE) {
            pte |= Self::W;
        }
        if perms.contains(Perms::CACHE) {
            pte |= Self::SNP;
        }
        if level > 0 {
            pte |= Self::PS;
        }
        Ok(pte)
    }
    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Entry {
        if pte & (Self::R | Self::W) == 0 {
            return Entry::Empty;
        }
        if level > 0 && pte & Self::PS == 0 {
            return Entry::Table(pte & ADDR_52);
        }
        let mut perms = Perms::empty();
        perms.set(Perms::READ, pte & Self::R != 0);
        perms.set(Perms::WRITE, pte & Self::W != 0);
        perms.set(Perms::CACHE, pte & Self::SNP != 0);
        Entry::Leaf { pa: leaf_addr(pte, ADDR_52, level), perms }
    }
    #[inline]
    fn is_dirty(&self, pte: u64) -> Option<bool> {
        Some(pte & Self::D != 0)
    }
    #[inline]
    fn clear_dirty(&self, pte: u64) -> u64 {
        pte & !Self::D
    }
}

/// x86-64 paging as the IOMMUs use it: Intel VT-d first-level (first-stage,
/// VT-d §9.7, Intel SDM Vol. 3A §4.5) and AMD-Vi v2 (AMD IOMMU spec §2.2.6,
/// "guest page tables" in x86 long-mode format). P bit 0, R/W bit 1, U/S bit 2,
/// A bit 5, D bit 6, PS bit 7, XD bit 63.
#[derive(Clone, Copy, Debug)]
pub struct X86Paging {
    /// 4 or 5 levels.
    pub levels: usize,
    /// Largest leaf level: 1 (2 MiB) or 2 (1 GiB, when the unit supports it).
    pub max_leaf_level: usize,
    /// Which IOMMU uses it (name only).
    pub name: &'static str,
}

impl X86Paging {
    const P: u64 = 1 << 0;
    const RW: u64 = 1 << 1;
    const US: u64 = 1 << 2;
    const A: u64 = 1 << 5;
    const D: u64 = 1 << 6;
    const PS: u64 = 1 << 7;
    const XD: u64 = 1 << 63;

    /// Intel VT-d first-level tables.
    #[inline]
    pub const fn vtd_first_level(levels: usize, max_leaf_level: usize) -> Self {
        X86Paging { levels, max_leaf_level, name: "vtd-fl" }
    }

    /// AMD-Vi v2 tables (same format).
    #[inline]
    pub const fn amd_v2(levels: usize) -> Self {
        X86Paging { levels, max_leaf_level: 2, name: "amd-v2" }
    }
}

impl Format for X86Paging {
    #[inline]
    fn name(&self) -> &'static str {
        self.name
    }
    #[inline]
    fn levels(&self) -> usize {
        self.levels
    }
    #[inline]
    fn ia_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        level <= self.max_leaf_level
    }
    #[inline]
    fn encode_table(&self, pa: u64, _level: usize) -> u64 {
        // U/S set on every level: device accesses are user accesses (VT-d §9.7).
        pa | Self::P | Self::RW | Self::US
    }
    #[inline]
    fn encode_leaf(&self, pa: u64, level: usize, perms: Perms) -> Result<u64, Error> {
        if !perms.contains(Perms::READ) {
            return Err(Error::BadPerms); // x86 paging has no write-only pages
        }
        let mut pte = pa | Self::P | Self::US | Self::A;
        if perms.contains(Perms::WRITE) {
            pte |= Self::RW;
        }
        if !perms.contains(Perms::EXEC) {
            pte |= Self::XD;
        }
        if level > 0 {
            pte |= Self::PS;
        }
        Ok(pte)
    }
    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Entry {
        if pte & Self::P == 0 {
            return Entry::Empty;
        }
        if level > 0 && pte & Self::PS == 0 {
            return Entry::Table(pte & ADDR_52);
        }
        let mut perms = Perms::READ;
        perms.set(Perms::WRITE, pte & Self::RW != 0);
        perms.set(Perms::EXEC, pte & Self::XD == 0);
        Entry::Leaf { pa: leaf_addr(pte, ADDR_52, level), perms }
    }
    #[inline]
    fn is_dirty(&self, pte: u64) -> Option<bool> {
        Some(pte & Self::D != 0)
    }
    #[inline]
    fn clear_dirty(&self, pte: u64) -> u64 {
        pte & !Self::D
    }
}

/// AMD-Vi v1 host page tables (AMD IOMMU spec rev 3.08 §2.2.3, Figures 7–8):
/// PR bit 0, NextLevel bits 11:9 (0 = leaf of this level's size), address
/// 51:12, IR bit 61, IW bit 62. The DTE Mode field gives the number of levels
/// (1–6).
#[derive(Clone, Copy, Debug)]
pub struct AmdV1 {
    /// Levels (DTE Mode 1–6).
    pub levels: usize,
}

impl AmdV1 {
    const PR: u64 = 1 << 0;
    const IR: u64 = 1 << 61;
    const IW: u64 = 1 << 62;
    const NEXT_SHIFT: u32 = 9;
}

impl Format for AmdV1 {
    #[inline]
    fn name(&self) -> &'static str {
        "amd-v1"
    }
    #[inline]
    fn levels(&self) -> usize {
        self.levels
    }
    #[inline]
    fn ia_bits(&self) -> u32 {
        (12 + 9 * self.levels as u32).min(64)
    }
    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        // 4 KiB, 2 MiB and 1 GiB leaves (NextLevel = 0 at levels 1–3).
        level <= 2
    }
    #[inline]
    fn encode_table(&self, pa: u64, level: usize) -> u64 {
        // NextLevel names the level of the table pointed to, counted from 1 = PTE level.
        pa | Self::PR | Self::IR | Self::IW | ((level as u64) << Self::NEXT_SHIFT)
    }
    #[inline]
    fn encode_leaf(&self, pa: u64, _level: usize, perms: Perms) -> Result<u64, Error> {
        if !perms.intersects(Perms::READ | Perms::WRITE) {
            return Err(Error::BadPerms);
        }
        let mut pte = pa | Self::PR;
        if perms.contains(Perms::READ) {
            pte |= Self::IR;
        }
        if perms.contains(Perms::WRITE) {
            pte |= Self::IW;
        }
        Ok(pte)
    }
    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Entry {
        if pte & Self::PR == 0 {
            return Entry::Empty;
        }
        let next = (pte >> Self::NEXT_SHIFT) & 7;
        if level > 0 && next != 0 {
            return Entry::Table(pte & ADDR_52);
        }
        let mut perms = Perms::empty();
        perms.set(Perms::READ, pte & Self::IR != 0);
        perms.set(Perms::WRITE, pte & Self::IW != 0);
        Entry::Leaf { pa: leaf_addr(pte, ADDR_52, level), perms }
    }
}

/// Arm VMSAv8-64 translation tables with the 4 KiB granule (ARM ARM D8.3),
/// stage 1 (SMMUv3 context descriptors) or stage 2 (STE S2 fields).
///
/// Stage 1: valid bit 0, table/page bit 1, AttrIndx 4:2, `AP[2:1]` 7:6 (`AP[1]` =
/// unprivileged access, set: SMMU client accesses are unprivileged unless the
/// STE says otherwise), SH 9:8, AF 10, nG 11, DBM 51, PXN 53, UXN 54.
/// Stage 2: MemAttr 5:2, S2AP 7:6 (bit 6 read, bit 7 write), SH, AF, XN 54:53.
/// Dirty (with hardware DBM): DBM set and write permission granted.
#[derive(Clone, Copy, Debug)]
pub struct ArmLpae {
    /// Stage 1 or 2.
    pub stage: u8,
    /// 3 or 4 levels (39- or 48-bit input).
    pub levels: usize,
    /// MAIR index for cacheable memory (stage 1).
    pub mair_cached: u8,
    /// MAIR index for device / non-cacheable memory (stage 1).
    pub mair_device: u8,
    /// Hardware dirty tracking (HTTU with DBM) is on: writable leaves start
    /// "writable-clean" (DBM set, write permission off) and the SMMU grants
    /// write on the first write. Off (QEMU's SMMUv3 has no HTTU): writable
    /// leaves are plainly writable.
    pub hw_dirty: bool,
}

impl ArmLpae {
    const VALID: u64 = 1 << 0;
    const TABLE: u64 = 1 << 1;
    const AP_UNPRIV: u64 = 1 << 6;
    const AP_RDONLY: u64 = 1 << 7;
    const S2AP_R: u64 = 1 << 6;
    const S2AP_W: u64 = 1 << 7;
    const SH_INNER: u64 = 3 << 8;
    const AF: u64 = 1 << 10;
    const NG: u64 = 1 << 11;
    const DBM: u64 = 1 << 51;
    const PXN: u64 = 1 << 53;
    const UXN: u64 = 1 << 54;

    /// Stage-1 tables with the given MAIR indices.
    #[inline]
    pub const fn stage1(levels: usize, mair_cached: u8, mair_device: u8) -> Self {
        ArmLpae { stage: 1, levels, mair_cached, mair_device, hw_dirty: false }
    }

    /// Stage-2 tables.
    #[inline]
    pub const fn stage2(levels: usize) -> Self {
        ArmLpae { stage: 2, levels, mair_cached: 0, mair_device: 0, hw_dirty: false }
    }

    /// The same format with hardware dirty tracking on.
    #[inline]
    pub const fn with_hw_dirty(mut self) -> Self {
        self.hw_dirty = true;
        self
    }
}

impl Format for ArmLpae {
    #[inline]
    fn name(&self) -> &'static str {
        if self.stage == 1 {
            "arm-s1"
        } else {
            "arm-s2"
        }
    }
    #[inline]
    fn levels(&self) -> usize {
        self.levels
    }
    #[inline]
    fn ia_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        // Blocks at level 1 (1 GiB) and level 2 (2 MiB) of the 4 KiB granule.
        level <= 2
    }
    #[inline]
    fn encode_table(&self, pa: u64, _level: usize) -> u64 {
        pa | Self::VALID | Self::TABLE
    }
    #[inline]
    fn encode_leaf(&self, pa: u64, level: usize, perms: Perms) -> Result<u64, Error> {
        if !perms.contains(Perms::READ) {
            return Err(Error::BadPerms);
        }
        let mut pte = pa | Self::VALID | Self::AF | Self::SH_INNER;
        if level == 0 {
            pte |= Self::TABLE; // page descriptor
        }
        if self.stage == 1 {
            let idx = if perms.contains(Perms::CACHE) { self.mair_cached } else { self.mair_device };
            pte |= (u64::from(idx) & 7) << 2 | Self::AP_UNPRIV | Self::NG;
            match (perms.contains(Perms::WRITE), self.hw_dirty) {
                (true, true) => pte |= Self::DBM | Self::AP_RDONLY, // writable-clean
                (true, false) => {}
                (false, _) => pte |= Self::AP_RDONLY,
            }
            if !perms.contains(Perms::EXEC) {
                pte |= Self::UXN | Self::PXN;
            }
        } else {
            let attr: u64 = if perms.contains(Perms::CACHE) { 0xF } else { 0x1 };
            pte |= attr << 2 | Self::S2AP_R;
            match (perms.contains(Perms::WRITE), self.hw_dirty) {
                (true, true) => pte |= Self::DBM, // writable-clean until written
                (true, false) => pte |= Self::S2AP_W,
                (false, _) => {}
            }
            if !perms.contains(Perms::EXEC) {
                pte |= Self::UXN;
            }
        }
        Ok(pte)
    }
    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Entry {
        if pte & Self::VALID == 0 {
            return Entry::Empty;
        }
        let is_table = pte & Self::TABLE != 0;
        if level > 0 && is_table {
            return Entry::Table(pte & ADDR_48);
        }
        if level == 0 && !is_table {
            return Entry::Empty; // reserved encoding at level 3
        }
        let mut perms = Perms::READ;
        if self.stage == 1 {
            perms.set(Perms::WRITE, pte & Self::AP_RDONLY == 0 || pte & Self::DBM != 0);
            perms.set(Perms::EXEC, pte & Self::UXN == 0);
            perms.set(Perms::CACHE, (pte >> 2) & 7 == u64::from(self.mair_cached));
        } else {
            perms.set(Perms::WRITE, pte & Self::S2AP_W != 0 || pte & Self::DBM != 0);
            perms.set(Perms::EXEC, pte & Self::UXN == 0);
            perms.set(Perms::CACHE, (pte >> 2) & 0xF == 0xF);
        }
        Entry::Leaf { pa: leaf_addr(pte, ADDR_48, level), perms }
    }
    #[inline]
    fn is_dirty(&self, pte: u64) -> Option<bool> {
        if pte & Self::DBM == 0 {
            return Some(false);
        }
        Some(if self.stage == 1 { pte & Self::AP_RDONLY == 0 } else { pte & Self::S2AP_W != 0 })
    }
    #[inline]
    fn clear_dirty(&self, pte: u64) -> u64 {
        if self.stage == 1 {
            pte | Self::AP_RDONLY
        } else {
            pte & !Self::S2AP_W
        }
    }
}

/// Arm VMSAv8-64 stage-1 translation tables as the CPU walks them, EL1&0
/// regime, 4 KiB granule (ARM ARM D8.3 "Translation table descriptor
/// formats", D8.4 "Memory access control", D8.6 "Memory region attributes"):
/// the kernel's upper range (TTBR1_EL1) and user spaces (TTBR0_EL1).
///
/// The descriptor bits are those of [`ArmLpae`] stage 1; what differs is who
/// decides them. Per leaf, from its [`Perms`]:
/// - AP\[2\] (bit 7) read-only unless [`Perms::WRITE`]; every leaf is readable
///   at EL1 (stage 1 has no write-only or no-access privileged encoding), so
///   [`Perms::READ`] is required.
/// - [`Perms::USER`]: AP\[1\] (bit 6, EL0 access) and nG (bit 11: the entry is
///   tagged with the ASID, so it never outlives its address space in the TLB);
///   PXN (bit 53) always, UXN (bit 54) unless [`Perms::EXEC`]. Without it the
///   leaf is global and EL1-only: UXN always, PXN unless [`Perms::EXEC`].
/// - [`Perms::CACHE`]: AttrIndx (bits 4:2) = `mair_normal` (Normal
///   write-back) and SH = inner shareable (bits 9:8); clear: AttrIndx =
///   `mair_device` and SH = 0 (Device memory is outer shareable whatever SH
///   says, D8.6.2). Device memory is never executable (an instruction fetch
///   could read a register speculatively): EXEC without CACHE is refused.
/// - AF (bit 10) always set: the CPU would fault on first access otherwise
///   (no hardware access-flag management assumed).
///
/// Input addresses are the 48 bits the tables index: for the upper range
/// (T1SZ = 16) a caller passes `va - 0xFFFF_0000_0000_0000` (VA\[47:0\]).
#[derive(Clone, Copy, Debug)]
pub struct ArmCpu {
    /// 3 or 4 levels (39- or 48-bit input; TxSZ = 25 or 16).
    pub levels: usize,
    /// MAIR_EL1 index of Normal write-back memory.
    pub mair_normal: u8,
    /// MAIR_EL1 index of Device memory.
    pub mair_device: u8,
}

impl ArmCpu {
    /// The format with the given level count and MAIR indices.
    #[inline]
    pub const fn new(levels: usize, mair_normal: u8, mair_device: u8) -> Self {
        ArmCpu { levels, mair_normal, mair_device }
    }

    #[inline]
    fn attr_index(pte: u64) -> u64 {
        (pte >> 2) & 7
    }
}

impl Format for ArmCpu {
    #[inline]
    fn name(&self) -> &'static str {
        "arm-cpu"
    }
    #[inline]
    fn levels(&self) -> usize {
        self.levels
    }
    #[inline]
    fn ia_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        // Pages, 2 MiB and 1 GiB blocks (the boot code maps RAM in 1 GiB blocks).
        level <= 2
    }
    #[inline]
    fn encode_table(&self, pa: u64, _level: usize) -> u64 {
        // No APTable / XNTable limits: the leaves say everything.
        pa | ArmLpae::VALID | ArmLpae::TABLE
    }
    #[inline]
    fn encode_leaf(&self, pa: u64, level: usize, perms: Perms) -> Result<u64, Error> {
        if !perms.contains(Perms::READ) || (perms.contains(Perms::EXEC) && !perms.contains(Perms::CACHE)) {
            return Err(Error::BadPerms);
        }
        if pa & !ADDR_48 != 0 {
            return Err(Error::OutOfRange);
        }
        let mut pte = pa | ArmLpae::VALID | ArmLpae::AF;
        if level == 0 {
            pte |= ArmLpae::TABLE; // page descriptor
        }
        if perms.contains(Perms::CACHE) {
            pte |= (u64::from(self.mair_normal) & 7) << 2 | ArmLpae::SH_INNER;
        } else {
            pte |= (u64::from(self.mair_device) & 7) << 2;
        }
        if !perms.contains(Perms::WRITE) {
            pte |= ArmLpae::AP_RDONLY;
        }
        let exec = perms.contains(Perms::EXEC);
        if perms.contains(Perms::USER) {
            pte |= ArmLpae::AP_UNPRIV | ArmLpae::NG | ArmLpae::PXN;
            if !exec {
                pte |= ArmLpae::UXN;
            }
        } else {
            pte |= ArmLpae::UXN;
            if !exec {
                pte |= ArmLpae::PXN;
            }
        }
        Ok(pte)
    }
    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Entry {
        if pte & ArmLpae::VALID == 0 {
            return Entry::Empty;
        }
        let is_table = pte & ArmLpae::TABLE != 0;
        if level > 0 && is_table {
            return Entry::Table(pte & ADDR_48);
        }
        if level == 0 && !is_table {
            return Entry::Empty; // reserved encoding at level 3
        }
        let user = pte & ArmLpae::AP_UNPRIV != 0;
        let mut perms = Perms::READ;
        perms.set(Perms::WRITE, pte & ArmLpae::AP_RDONLY == 0);
        perms.set(Perms::USER, user);
        perms.set(Perms::EXEC, pte & if user { ArmLpae::UXN } else { ArmLpae::PXN } == 0);
        perms.set(Perms::CACHE, Self::attr_index(pte) == u64::from(self.mair_normal));
        Entry::Leaf { pa: leaf_addr(pte, ADDR_48, level), perms }
    }
}
