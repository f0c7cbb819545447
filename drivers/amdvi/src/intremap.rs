//! Interrupt remapping building blocks (AMD IOMMU spec rev 3.x, §2.2.5
//! "Interrupt Remapping Tables", the DTE interrupt fields of §2.2.2.2, and
//! INVALIDATE_INTERRUPT_TABLE, §2.4.5). Hardware-free: no register is touched;
//! the unit bring-up uses these.
//!
//! Each DeviceID has its own table of 2^IntTabLen entries, named by its DTE
//! (qword 2, [`dte_interrupt_fields`]). A device's MSI data selects the entry
//! ([`msi_data`]); the entry ([`Irte32`], or [`Irte128`] when Control.GAEn is
//! set) supplies vector, destination and delivery. [`AmdIrTable`] owns one
//! table with index allocation.
//!
//! What QEMU's model (`hw/i386/amd_iommu.c`, `amdvi_int_remap_msi`,
//! `__amdvi_int_remap_msi`, `amdvi_int_remap_legacy`, `amdvi_int_remap_ga`)
//! does with an MSI write to 0xFEEx_xxxx from DeviceID `sid` (an I/O APIC
//! without a requester ID counts as 00:14.0, 0x00A0):
//! - No device table yet, or DTE.IV = 0: delivered unchanged.
//! - `intremap=on` missing while a DTE has IV = 1, or an address outside
//!   0xFEE0_0000–0xFEEF_FFFF: dropped.
//! - The message type is MSI data bits 10:8 *before* any table lookup: fixed
//!   (000b) and arbitrated (001b) go by DTE.IntCtl (00b target abort, 01b
//!   forward unchanged, 10b remap, 11b dropped); NMI, INIT and ExtINT pass
//!   unchanged only with NMIPass / InitPass / EIntPass set and MSI address
//!   bit 2 (DM) clear, otherwise they are dropped; SMI and the rest are dropped.
//!   So data bits 10:9 must be zero for a remapped interrupt: only indices
//!   0–511 are reachable (see [`MAX_INDEX_512`]). A posted patch adds the 2K
//!   mode (Control.NumIntRemapMode = 01b, MSI address DM = 1: data[10:0] is
//!   the index) that the spec defines with EFR2.NumIntRemapSup.
//! - Remap: the entry at `IntTableRootPtr + (data & 0x7FF) * size` (4 bytes,
//!   16 with GAEn); IntTabLen is not compared with the index. RemapEn = 0:
//!   target abort; GuestMode = 1 or IntType > 001b: dropped. The legacy
//!   entry's RqEoi is used as the redirection hint; the 128-bit entry's
//!   destination bits 31:24 only with the `xtsup` property.
//! - No failure is logged: QEMU writes no IO_PAGE_FAULT event for interrupts
//!   (`amdvi_mem_ir_write` only reports it once on stderr and drops the write).

use iommu::ids::IdAllocator;
use iommu::DmaMemory;

/// Largest IntTabLen: 2^11 = 2048 entries (§2.2.2.2; 1100b–1111b are reserved).
pub const MAX_LEN_LOG2: u8 = 11;
/// Indices below this are remappable without the 2K interrupt mode: MSI data
/// bits 10:9 are part of the message type and must be zero, leaving 9 index
/// bits (QEMU `amdvi_int_remap_msi`; Linux's 512-entry `MAX_IRQS_PER_TABLE_512`).
pub const MAX_INDEX_512: u16 = 512;
/// Required alignment of an interrupt table (Linux `DTE_INTTAB_ALIGNMENT`;
/// the DTE field itself holds address bits 51:6).
pub const TABLE_ALIGN: u64 = 128;
/// The MSI address of a remapped interrupt: the interrupt range base with
/// destination ID 0 and DM = 0 (the IRTE supplies the real destination).
pub const MSI_ADDRESS: u32 = 0xFEE0_0000;
/// MSI address bit 2 (DM): in the 2K interrupt mode it selects data[10:0] as
/// the index instead of data[8:0].
pub const MSI_ADDRESS_DM: u32 = 1 << 2;

// DTE qword 2 (DTE bits 191:128).
/// IV (DTE bit 128): the interrupt fields are valid. Clear: interrupts pass
/// unchanged.
pub const DTE_IV: u64 = 1 << 0;
const INT_TAB_LEN_SHIFT: u32 = 1;
/// IG (DTE bit 133): don't log IO_PAGE_FAULT events for unmapped interrupts.
pub const DTE_IG: u64 = 1 << 5;
/// IntTableRootPtr (DTE bits 179:134): address bits 51:6 of the table.
pub const DTE_INT_TABLE_ROOT: u64 = 0x000F_FFFF_FFFF_FFC0;
/// InitPass (DTE bit 184): INIT messages pass unchanged.
pub const DTE_INIT_PASS: u64 = 1 << 56;
/// EIntPass (DTE bit 185): ExtINT messages pass unchanged.
pub const DTE_EINT_PASS: u64 = 1 << 57;
/// NMIPass (DTE bit 186): NMI messages pass unchanged.
pub const DTE_NMI_PASS: u64 = 1 << 58;
const INT_CTL_SHIFT: u32 = 60;
/// Lint0Pass (DTE bit 190): LINT0 messages pass unchanged.
pub const DTE_LINT0_PASS: u64 = 1 << 62;
/// Lint1Pass (DTE bit 191): LINT1 messages pass unchanged.
pub const DTE_LINT1_PASS: u64 = 1 << 63;

/// IntCtl (DTE bits 189:188): what fixed and arbitrated interrupts get (§2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntCtl {
    /// 00b: target abort (blocked).
    Abort = 0,
    /// 01b: forwarded unmapped.
    Forward = 1,
    /// 10b: remapped through the table.
    Remap = 2,
}

/// DTE qword 2 (DTE bits 191:128) for a device whose interrupts go through the
/// table at `table_pa` of 2^`len_log2` entries: IV = 1, IntTabLen, the table
/// pointer, IntCtl = 10b (remap) or, without `remap`, 00b (every fixed and
/// arbitrated interrupt target-aborted). The pass bits stay clear, so INIT,
/// ExtINT, NMI, LINT0 and LINT1 from the device are blocked; IG is clear, so
/// remapping failures are logged. `table_pa` must be 128-byte aligned.
pub fn dte_interrupt_fields(table_pa: u64, len_log2: u8, remap: bool) -> u64 {
    debug_assert!(len_log2 <= MAX_LEN_LOG2, "IntTabLen 12-15 is reserved");
    debug_assert_eq!(table_pa % TABLE_ALIGN, 0, "interrupt tables are 128-byte aligned");
    let ctl = if remap { IntCtl::Remap } else { IntCtl::Abort };
    DTE_IV
        | u64::from(len_log2 & 0xF) << INT_TAB_LEN_SHIFT
        | (table_pa & DTE_INT_TABLE_ROOT)
        | (ctl as u64) << INT_CTL_SHIFT
}

/// The interrupt fields of DTE qword 2, decoded (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DteInterrupt {
    /// IV.
    pub valid: bool,
    /// IntTabLen: log2 of the entries.
    pub len_log2: u8,
    /// IG.
    pub ignore_unmapped: bool,
    /// IntTableRootPtr, as an address.
    pub table: u64,
    /// IntCtl (raw, 11b is reserved).
    pub int_ctl: u8,
    /// InitPass.
    pub init_pass: bool,
    /// EIntPass.
    pub eint_pass: bool,
    /// NMIPass.
    pub nmi_pass: bool,
    /// Lint0Pass.
    pub lint0_pass: bool,
    /// Lint1Pass.
    pub lint1_pass: bool,
}

impl DteInterrupt {
    /// Decodes DTE qword 2.
    pub fn decode(q2: u64) -> Self {
        DteInterrupt {
            valid: q2 & DTE_IV != 0,
            len_log2: ((q2 >> INT_TAB_LEN_SHIFT) & 0xF) as u8,
            ignore_unmapped: q2 & DTE_IG != 0,
            table: q2 & DTE_INT_TABLE_ROOT,
            int_ctl: ((q2 >> INT_CTL_SHIFT) & 3) as u8,
            init_pass: q2 & DTE_INIT_PASS != 0,
            eint_pass: q2 & DTE_EINT_PASS != 0,
            nmi_pass: q2 & DTE_NMI_PASS != 0,
            lint0_pass: q2 & DTE_LINT0_PASS != 0,
            lint1_pass: q2 & DTE_LINT1_PASS != 0,
        }
    }
}

/// INVALIDATE_INTERRUPT_TABLE (§2.4.5, opcode 5): the IOMMU forgets what it
/// cached of DeviceID `devid`'s interrupt table. Needed after every change of
/// an entry the IOMMU may have seen. QEMU refuses it with any of word 0 bits
/// 59:16 or word 1 set (`amdvi_inval_inttable`); none are.
pub fn invalidate_interrupt_table(devid: u16) -> [u64; 2] {
    [5 << 60 | u64::from(devid), 0]
}

/// The MSI data that selects entry `index` (§2.2.5: data bits 10:0 are the
/// table offset; bits 10:8 double as the message type, so without the 2K
/// interrupt mode the index must be below [`MAX_INDEX_512`]).
pub fn msi_data(index: u16) -> u32 {
    u32::from(index) & 0x7FF
}

/// The MSI address of a remapped interrupt: [`MSI_ADDRESS`], with DM set in
/// the 2K interrupt mode (`two_k`) so all 11 data bits index the table.
pub fn msi_address(two_k: bool) -> u32 {
    MSI_ADDRESS | if two_k { MSI_ADDRESS_DM } else { 0 }
}

/// The table index an MSI reaches when DTE.IntCtl = 10b, or `None` when it is
/// not a fixed or arbitrated interrupt (the pass bits decide those) or not an
/// interrupt address. In the 2K mode (`two_k`) with address DM set, data[10:0];
/// otherwise data[8:0], with data[10:8] the message type.
pub fn msi_index(address: u32, data: u32, two_k: bool) -> Option<u16> {
    if address & 0xFFF0_0000 != MSI_ADDRESS {
        return None;
    }
    if two_k && address & MSI_ADDRESS_DM != 0 {
        return Some((data & 0x7FF) as u16);
    }
    match (data >> 8) & 7 {
        0 | 1 => Some((data & 0x1FF) as u16),
        _ => None,
    }
}

/// IntType of a remapped interrupt (IRTE bits 4:2): only fixed and arbitrated
/// are valid, the other encodings are reserved (QEMU drops them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntType {
    /// 000b: fixed.
    Fixed = 0,
    /// 001b: arbitrated (lowest priority).
    Arbitrated = 1,
}

/// The fields of a remapping IRTE (GuestMode = 0), either format (§2.2.5.1,
/// §2.2.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemapFields {
    /// Vector.
    pub vector: u8,
    /// Destination APIC ID: 8 bits in the 32-bit format, 32 in the 128-bit one.
    pub destination: u32,
    /// IntType.
    pub int_type: IntType,
    /// DM: logical destination mode; physical when clear.
    pub logical: bool,
    /// RqEoi: request an EOI (for level-triggered interrupts).
    pub rq_eoi: bool,
    /// SupIOPF: no IO_PAGE_FAULT event when this entry is not enabled.
    pub sup_iopf: bool,
}

impl RemapFields {
    /// A fixed interrupt of `vector` to one CPU in physical mode.
    pub fn fixed(vector: u8, destination: u32) -> Self {
        RemapFields { vector, destination, int_type: IntType::Fixed, logical: false, rq_eoi: false, sup_iopf: false }
    }

    /// The low 8 bits shared by both formats: RemapEn, SupIOPF, IntType, RqEoi, DM, GuestMode = 0.
    fn flags(&self) -> u64 {
        let flag = |set: bool, bit: u64| if set { bit } else { 0 };
        REMAP_EN
            | flag(self.sup_iopf, SUP_IOPF)
            | (self.int_type as u64) << 2
            | flag(self.rq_eoi, RQ_EOI)
            | flag(self.logical, DM)
    }

    fn from_flags(low: u64, vector: u8, destination: u32) -> Result<Self, IrteError> {
        if low & REMAP_EN == 0 {
            return Err(IrteError::NotEnabled);
        }
        if low & GUEST_MODE != 0 {
            return Err(IrteError::GuestMode);
        }
        let int_type = match (low >> 2) & 7 {
            0 => IntType::Fixed,
            1 => IntType::Arbitrated,
            t => return Err(IrteError::IntType(t as u8)),
        };
        Ok(RemapFields {
            vector,
            destination,
            int_type,
            logical: low & DM != 0,
            rq_eoi: low & RQ_EOI != 0,
            sup_iopf: low & SUP_IOPF != 0,
        })
    }
}

const REMAP_EN: u64 = 1 << 0;
const SUP_IOPF: u64 = 1 << 1;
const RQ_EOI: u64 = 1 << 5;
const DM: u64 = 1 << 6;
const GUEST_MODE: u64 = 1 << 7;

/// Why an IRTE does not decode as an enabled remapping entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrteError {
    /// RemapEn = 0: the interrupt is target-aborted (and logged unless SupIOPF).
    NotEnabled,
    /// GuestMode = 1: a guest virtual APIC entry, which this module never writes.
    GuestMode,
    /// A reserved IntType encoding.
    IntType(u8),
    /// Reserved bits set (for [`Irte128`]: the offending bits of (low, high)).
    Reserved(u64, u64),
}

/// A 32-bit (basic / legacy) IRTE (§2.2.5.1): RemapEn 0, SupIOPF 1, IntType
/// 4:2, RqEoi 5, DM 6, GuestMode 7, Destination 15:8, Vector 23:16, 31:24 reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Irte32(pub u32);

impl Irte32 {
    /// RemapEn = 0: every interrupt through it is target-aborted.
    pub const DISABLED: Irte32 = Irte32(0);

    /// An enabled entry with fields `f`; `None` when the destination does not
    /// fit in 8 bits.
    pub fn remapped(f: &RemapFields) -> Option<Irte32> {
        let dest = u8::try_from(f.destination).ok()?;
        Some(Irte32(f.flags() as u32 | u32::from(dest) << 8 | u32::from(f.vector) << 16))
    }

    /// RemapEn.
    pub fn enabled(self) -> bool {
        self.0 & 1 != 0
    }

    /// The fields of an enabled entry.
    pub fn decode(self) -> Result<RemapFields, IrteError> {
        let v = u64::from(self.0);
        if v >> 24 != 0 {
            return Err(IrteError::Reserved(v & 0xFF00_0000, 0));
        }
        RemapFields::from_flags(v, (v >> 16) as u8, u32::from((v >> 8) as u8))
    }
}

/// Reserved in the 128-bit entry with GuestMode = 0: low bits 63:32 (GATag in
/// guest mode), high bits 55:8 (the guest vAPIC root pointer in guest mode).
const GA_LO_RESERVED: u64 = 0xFFFF_FFFF_0000_0000;
const GA_HI_RESERVED: u64 = 0x00FF_FFFF_FFFF_FF00;

/// A 128-bit IRTE (§2.2.5.2, used when Control.GAEn = 1) in remapping mode
/// (GuestMode = 0), as (low, high) qwords: low bits 7:0 as in [`Irte32`] and
/// Destination[23:0] in 31:8; high bits 7:0 Vector and 63:56 Destination[31:24].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Irte128 {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl Irte128 {
    /// RemapEn = 0: every interrupt through it is target-aborted.
    pub const DISABLED: Irte128 = Irte128 { lo: 0, hi: 0 };

    /// An enabled entry with fields `f` (32-bit destinations need x2APIC
    /// support, EFR.XTSup, for the upper byte to be used).
    pub fn remapped(f: &RemapFields) -> Irte128 {
        let d = u64::from(f.destination);
        Irte128 { lo: f.flags() | (d & 0xFF_FFFF) << 8, hi: u64::from(f.vector) | (d >> 24) << 56 }
    }

    /// RemapEn.
    pub fn enabled(self) -> bool {
        self.lo & REMAP_EN != 0
    }

    /// The fields of an enabled remapping entry.
    pub fn decode(self) -> Result<RemapFields, IrteError> {
        let (rlo, rhi) = (self.lo & GA_LO_RESERVED, self.hi & GA_HI_RESERVED);
        if self.lo & GUEST_MODE == 0 && (rlo != 0 || rhi != 0) {
            return Err(IrteError::Reserved(rlo, rhi));
        }
        let destination = ((self.lo >> 8) & 0xFF_FFFF) as u32 | ((self.hi >> 56) as u32) << 24;
        RemapFields::from_flags(self.lo, self.hi as u8, destination)
    }
}

/// The entry format of a table: the IOMMU reads 128-bit entries when
/// Control.GAEn is set (QEMU: `ga_enabled`), 32-bit ones otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrteFormat {
    /// 32-bit entries (§2.2.5.1).
    Legacy,
    /// 128-bit entries (§2.2.5.2).
    Ga,
}

impl IrteFormat {
    /// Bytes per entry.
    pub fn entry_bytes(self) -> usize {
        match self {
            IrteFormat::Legacy => 4,
            IrteFormat::Ga => 16,
        }
    }
}

/// An entry as stored, in its table's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdIrte {
    /// From a legacy table.
    Legacy(Irte32),
    /// From a GA table.
    Ga(Irte128),
}

impl AmdIrte {
    /// RemapEn.
    pub fn enabled(&self) -> bool {
        match self {
            AmdIrte::Legacy(e) => e.enabled(),
            AmdIrte::Ga(e) => e.enabled(),
        }
    }

    /// The fields of an enabled entry.
    pub fn decode(&self) -> Result<RemapFields, IrteError> {
        match self {
            AmdIrte::Legacy(e) => e.decode(),
            AmdIrte::Ga(e) => e.decode(),
        }
    }
}

/// Why an [`AmdIrTable`] operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdIrError {
    /// The index is at or beyond the table size.
    OutOfRange(u16),
    /// The index is not allocated (index 0 never is).
    NotAllocated(u16),
    /// A destination above 0xFF in a legacy (32-bit entry) table.
    DestinationTooWide(u32),
}

/// One device's interrupt remapping table (§2.2.5): 2^IntTabLen entries in
/// contiguous, 4 KiB-aligned frames (so 128-byte aligned), with index
/// allocation.
///
/// Index 0 is never handed out and its entry stays disabled: MSI data 0 is
/// what a device sends with a message that was never programmed, and with
/// entry 0 disabled such an interrupt is target-aborted (and logged) instead
/// of reaching whichever vector got the first allocation.
///
/// An index's entry is enabled only while the index is allocated and was
/// [`set`](AmdIrTable::set). Changes to a live table take effect after
/// [`invalidate_interrupt_table`] for the device (and a COMPLETION_WAIT).
pub struct AmdIrTable {
    base: u64,
    len_log2: u8,
    format: IrteFormat,
    /// Indices in use (0 never is).
    ids: IdAllocator,
}

impl AmdIrTable {
    /// A table of 2^`len_log2` entries (1–11) in `format`, all disabled;
    /// `None` for another size or when memory is short.
    pub fn new(mem: &mut impl DmaMemory, len_log2: u8, format: IrteFormat) -> Option<AmdIrTable> {
        if !(1..=MAX_LEN_LOG2).contains(&len_log2) {
            return None;
        }
        let entries = 1usize << len_log2;
        let frames = (entries * format.entry_bytes()).div_ceil(4096);
        let base = mem.alloc_contiguous(frames)?;
        debug_assert_eq!(base % TABLE_ALIGN, 0);
        Some(AmdIrTable { base, len_log2, format, ids: IdAllocator::new(entries as u32) })
    }

    /// Physical address of entry 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// IntTabLen.
    pub fn len_log2(&self) -> u8 {
        self.len_log2
    }

    /// Number of entries.
    pub fn entries(&self) -> usize {
        1 << self.len_log2
    }

    /// Entry format.
    pub fn format(&self) -> IrteFormat {
        self.format
    }

    /// Frames the table occupies.
    pub fn frames(&self) -> usize {
        (self.entries() * self.format.entry_bytes()).div_ceil(4096)
    }

    /// Indices allocated now.
    pub fn in_use(&self) -> usize {
        self.ids.in_use()
    }

    /// DTE qword 2 naming this table ([`dte_interrupt_fields`]).
    pub fn dte_fields(&self, remap: bool) -> u64 {
        dte_interrupt_fields(self.base, self.len_log2, remap)
    }

    /// Takes the lowest free index (never 0), or `None` when the table is full.
    pub fn alloc(&mut self) -> Option<u16> {
        self.alloc_block(1)
    }

    /// Takes `count` (a power of two) free indices aligned to `count`, for a
    /// multi-message MSI function, which replaces the low log2(`count`) data
    /// bits with the message number; returns the first.
    pub fn alloc_block(&mut self, count: usize) -> Option<u16> {
        if !count.is_power_of_two() {
            return None;
        }
        self.ids.alloc_run(count, count)
    }

    fn check(&self, index: u16) -> Result<usize, AmdIrError> {
        let i = usize::from(index);
        if i >= self.entries() {
            return Err(AmdIrError::OutOfRange(index));
        }
        if !self.ids.is_used(index) {
            return Err(AmdIrError::NotAllocated(index));
        }
        Ok(i)
    }

    /// Frame and qword index holding entry `i` (its low qword for GA entries).
    fn slot(&self, i: usize) -> (u64, usize) {
        let byte = i * self.format.entry_bytes();
        (self.base + (byte / 4096) as u64 * 4096, (byte % 4096) / 8)
    }

    /// The entry at `index` (any index in range, allocated or not).
    pub fn get(&self, mem: &impl DmaMemory, index: u16) -> Option<AmdIrte> {
        let i = usize::from(index);
        if i >= self.entries() {
            return None;
        }
        let (frame, word) = self.slot(i);
        Some(match self.format {
            IrteFormat::Legacy => AmdIrte::Legacy(Irte32((mem.read(frame, word) >> (i % 2 * 32)) as u32)),
            IrteFormat::Ga => AmdIrte::Ga(Irte128 { lo: mem.read(frame, word), hi: mem.read(frame, word + 1) }),
        })
    }

    fn store(&self, mem: &mut impl DmaMemory, i: usize, new: AmdIrte) {
        let (frame, word) = self.slot(i);
        match new {
            AmdIrte::Legacy(e) => {
                // One 64-bit store; the neighbouring entry is rewritten unchanged.
                let shift = i % 2 * 32;
                let q = mem.read(frame, word) & !(0xFFFF_FFFF << shift) | u64::from(e.0) << shift;
                mem.write(frame, word, q);
            }
            AmdIrte::Ga(e) => {
                // RemapEn is in the low qword: write the high one first and the
                // low one last; when an enabled entry's high qword changes,
                // disable it first so no interrupt sees a mix of both.
                let old = Irte128 { lo: mem.read(frame, word), hi: mem.read(frame, word + 1) };
                if old.hi != e.hi {
                    if old.enabled() {
                        mem.write(frame, word, old.lo & !REMAP_EN);
                    }
                    mem.write(frame, word + 1, e.hi);
                }
                mem.write(frame, word, e.lo);
            }
        }
    }

    /// Writes an enabled entry with fields `f` at an allocated `index`, in the
    /// table's format.
    pub fn set(&mut self, mem: &mut impl DmaMemory, index: u16, f: &RemapFields) -> Result<(), AmdIrError> {
        let i = self.check(index)?;
        let e = match self.format {
            IrteFormat::Legacy => {
                AmdIrte::Legacy(Irte32::remapped(f).ok_or(AmdIrError::DestinationTooWide(f.destination))?)
            }
            IrteFormat::Ga => AmdIrte::Ga(Irte128::remapped(f)),
        };
        self.store(mem, i, e);
        Ok(())
    }

    /// Disables the entry at an allocated `index` (all zero).
    pub fn clear(&mut self, mem: &mut impl DmaMemory, index: u16) -> Result<(), AmdIrError> {
        let i = self.check(index)?;
        match self.format {
            IrteFormat::Legacy => self.store(mem, i, AmdIrte::Legacy(Irte32::DISABLED)),
            IrteFormat::Ga => {
                let (frame, word) = self.slot(i);
                mem.write(frame, word, 0); // RemapEn first
                mem.write(frame, word + 1, 0);
            }
        }
        Ok(())
    }

    /// Disables the entry at `index` and returns the index to the pool.
    pub fn free(&mut self, mem: &mut impl DmaMemory, index: u16) -> Result<(), AmdIrError> {
        self.clear(mem, index)?;
        self.ids.free(index);
        Ok(())
    }

    /// Gives the frames back. No DTE may name the table any more (and the
    /// DTE change must have been invalidated).
    pub fn destroy(self, mem: &mut impl DmaMemory) {
        mem.free_contiguous(self.base, self.frames());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::QEMU_DTE_RESERVED;
    use std::collections::BTreeMap;

    /// Frames in a map at made-up physical addresses; contiguous runs aligned
    /// to their size, as `DmaMemory` promises.
    #[derive(Default)]
    struct Mem {
        frames: BTreeMap<u64, [u64; 512]>,
        next: u64,
        writes: Vec<(u64, usize, u64)>,
    }

    impl io_pgtable::TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            self.alloc_contiguous(1)
        }
        fn free_table(&mut self, pa: u64) {
            self.free_contiguous(pa, 1);
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.frames[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.writes.push((table, index, value));
            self.frames.get_mut(&table).expect("write to an unallocated frame")[index] = value;
        }
    }

    impl DmaMemory for Mem {
        fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
            let size = frames as u64 * 4096;
            let base = self.next.max(0x10_0000).next_multiple_of(size);
            for f in 0..frames as u64 {
                assert!(self.frames.insert(base + f * 4096, [0; 512]).is_none());
            }
            self.next = base + size;
            Some(base)
        }
        fn free_contiguous(&mut self, base: u64, frames: usize) {
            for f in 0..frames as u64 {
                assert!(self.frames.remove(&(base + f * 4096)).is_some(), "double free");
            }
        }
    }

    #[test]
    fn golden_legacy_entries() {
        // RemapEn, fixed, physical, destination 3 in 15:8, vector 0x41 in 23:16.
        assert_eq!(Irte32::remapped(&RemapFields::fixed(0x41, 3)), Some(Irte32(0x0041_0301)));
        // SupIOPF 1, IntType 001b in 4:2 (0x04), RqEoi 5, DM 6: 0x67.
        let all = RemapFields {
            vector: 0xFF,
            destination: 0xFF,
            int_type: IntType::Arbitrated,
            logical: true,
            rq_eoi: true,
            sup_iopf: true,
        };
        assert_eq!(Irte32::remapped(&all), Some(Irte32(0x00FF_FF67)));
        assert_eq!(Irte32::remapped(&RemapFields::fixed(0x41, 0x100)), None);
        assert!(!Irte32::DISABLED.enabled());
        assert_eq!(Irte32::DISABLED.decode(), Err(IrteError::NotEnabled));
    }

    #[test]
    fn golden_ga_entries() {
        // Destination 0x12345678: bits 23:0 at low 31:8, bits 31:24 at high 63:56.
        let e = Irte128::remapped(&RemapFields::fixed(0xEC, 0x1234_5678));
        assert_eq!(e, Irte128 { lo: 0x3456_7801, hi: 0x1200_0000_0000_00EC });
        let e = Irte128::remapped(&RemapFields { int_type: IntType::Arbitrated, ..RemapFields::fixed(0x30, 2) });
        assert_eq!(e, Irte128 { lo: 0x0000_0205, hi: 0x30 });
        assert_eq!(Irte128::DISABLED.decode(), Err(IrteError::NotEnabled));
    }

    #[test]
    fn fields_round_trip() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = RemapFields {
                vector: x as u8,
                destination: (x >> 8) as u32,
                int_type: if x & 1 << 40 != 0 { IntType::Arbitrated } else { IntType::Fixed },
                logical: x & 1 << 41 != 0,
                rq_eoi: x & 1 << 42 != 0,
                sup_iopf: x & 1 << 43 != 0,
            };
            assert_eq!(Irte128::remapped(&f).decode(), Ok(f));
            let narrow = RemapFields { destination: f.destination & 0xFF, ..f };
            assert_eq!(Irte32::remapped(&narrow).unwrap().decode(), Ok(narrow));
        }
    }

    #[test]
    fn decode_refuses_what_qemu_drops() {
        let good = Irte32::remapped(&RemapFields::fixed(0x41, 3)).unwrap();
        assert_eq!(Irte32(good.0 | 1 << 7).decode(), Err(IrteError::GuestMode));
        assert_eq!(Irte32(good.0 | 2 << 2).decode(), Err(IrteError::IntType(2)));
        assert_eq!(Irte32(good.0 | 1 << 24).decode(), Err(IrteError::Reserved(1 << 24, 0)));
        let ga = Irte128::remapped(&RemapFields::fixed(0x41, 3));
        assert_eq!(Irte128 { lo: ga.lo | 1 << 7, ..ga }.decode(), Err(IrteError::GuestMode));
        assert_eq!(Irte128 { lo: ga.lo | 7 << 2, ..ga }.decode(), Err(IrteError::IntType(7)));
        assert_eq!(Irte128 { lo: ga.lo | 1 << 32, ..ga }.decode(), Err(IrteError::Reserved(1 << 32, 0)));
        assert_eq!(Irte128 { hi: ga.hi | 1 << 8, ..ga }.decode(), Err(IrteError::Reserved(0, 1 << 8)));
    }

    #[test]
    fn dte_fields() {
        // IV (0) | IntTabLen 9 in 4:1 (0x12) | root | IntCtl 10b in 61:60.
        assert_eq!(dte_interrupt_fields(0x1234_5000, 9, true), 0x2000_0000_1234_5013);
        assert_eq!(dte_interrupt_fields(0x1234_5080, 11, false), 0x0000_0000_1234_5097);
        let d = DteInterrupt::decode(dte_interrupt_fields(0x000F_FFFF_FFFF_FF80, 11, true));
        assert_eq!(
            d,
            DteInterrupt {
                valid: true,
                len_log2: 11,
                ignore_unmapped: false,
                table: 0x000F_FFFF_FFFF_FF80,
                int_ctl: IntCtl::Remap as u8,
                init_pass: false,
                eint_pass: false,
                nmi_pass: false,
                lint0_pass: false,
                lint1_pass: false,
            }
        );
        let blocked = DteInterrupt::decode(dte_interrupt_fields(0x8000, 1, false));
        assert_eq!((blocked.valid, blocked.int_ctl, blocked.len_log2), (true, IntCtl::Abort as u8, 1));
        // Pass bits and IG where the spec puts them (DTE bits 184-186, 190, 191, 133).
        let all = DteInterrupt::decode(
            DTE_INIT_PASS | DTE_EINT_PASS | DTE_NMI_PASS | DTE_LINT0_PASS | DTE_LINT1_PASS | DTE_IG,
        );
        assert!(all.init_pass && all.eint_pass && all.nmi_pass && all.lint0_pass && all.lint1_pass);
        assert!(all.ignore_unmapped && !all.valid);
        // No bit QEMU 10.0 calls reserved in qword 2.
        for q2 in [
            dte_interrupt_fields(0x000F_FFFF_FFFF_FF80, 11, true),
            dte_interrupt_fields(0x1000, 0, false),
            DTE_INIT_PASS | DTE_EINT_PASS | DTE_NMI_PASS | DTE_LINT0_PASS | DTE_LINT1_PASS | DTE_IG | 3 << 60,
        ] {
            assert_eq!(q2 & QEMU_DTE_RESERVED[2], 0, "{q2:#x}");
        }
    }

    #[test]
    fn msi_encodings() {
        assert_eq!((msi_address(false), msi_address(true)), (0xFEE0_0000, 0xFEE0_0004));
        for index in [0u16, 1, 0x1FF] {
            assert_eq!(msi_data(index), u32::from(index));
            assert_eq!(msi_index(msi_address(false), msi_data(index), false), Some(index));
            assert_eq!(msi_index(msi_address(true), msi_data(index), true), Some(index));
        }
        // Indices from 512 up need the 2K mode: data bits 10:8 are the message type.
        for index in [0x200u16, 0x400, 0x7FF] {
            assert_eq!(msi_index(msi_address(false), msi_data(index), false), None);
            assert_eq!(msi_index(msi_address(true), msi_data(index), true), Some(index));
            assert_eq!(msi_index(msi_address(false), msi_data(index), true), None, "DM clear");
        }
        // Arbitrated (001b) is remapped too; NMI (100b) is not.
        assert_eq!(msi_index(MSI_ADDRESS, 0x1_05, false), Some(0x105));
        assert_eq!(msi_index(MSI_ADDRESS, 0x4_00, false), None);
        assert_eq!(msi_index(0xFED0_0000, 0, false), None);
        assert_eq!(msi_data(0xFFFF), 0x7FF);
    }

    #[test]
    fn inval_command() {
        assert_eq!(invalidate_interrupt_table(0x00A0), [0x5000_0000_0000_00A0, 0]);
        let c = invalidate_interrupt_table(0xFFFF);
        assert_eq!((c[0] >> 16) & ((1 << 44) - 1), 0, "QEMU amdvi_inval_inttable reserved bits");
    }

    #[test]
    fn table_allocates_until_full_and_reuses() {
        let mut mem = Mem::default();
        let mut t = AmdIrTable::new(&mut mem, 4, IrteFormat::Legacy).unwrap();
        assert_eq!((t.entries(), t.frames()), (16, 1));
        let got: Vec<u16> = core::iter::from_fn(|| t.alloc()).collect();
        assert_eq!(got, (1..16).collect::<Vec<u16>>(), "index 0 stays reserved");
        assert_eq!((t.alloc(), t.in_use()), (None, 15));
        let f = RemapFields::fixed(0x50, 1);
        t.set(&mut mem, 5, &f).unwrap();
        assert_eq!(t.get(&mem, 5).unwrap().decode(), Ok(f));
        t.free(&mut mem, 5).unwrap();
        assert_eq!(t.get(&mem, 5), Some(AmdIrte::Legacy(Irte32::DISABLED)));
        assert_eq!(t.set(&mut mem, 5, &f), Err(AmdIrError::NotAllocated(5)));
        assert_eq!(t.alloc(), Some(5));
        assert_eq!(t.set(&mut mem, 0, &f), Err(AmdIrError::NotAllocated(0)));
        assert_eq!(t.set(&mut mem, 16, &f), Err(AmdIrError::OutOfRange(16)));
        assert_eq!(t.set(&mut mem, 5, &RemapFields::fixed(1, 0x100)), Err(AmdIrError::DestinationTooWide(0x100)));
        assert_eq!(t.get(&mem, 16), None);
        t.destroy(&mut mem);
        assert!(mem.frames.is_empty());
        assert!(AmdIrTable::new(&mut mem, 0, IrteFormat::Ga).is_none());
        assert!(AmdIrTable::new(&mut mem, 12, IrteFormat::Ga).is_none());
    }

    #[test]
    fn legacy_neighbours_share_a_qword() {
        let mut mem = Mem::default();
        let mut t = AmdIrTable::new(&mut mem, MAX_LEN_LOG2, IrteFormat::Legacy).unwrap();
        assert_eq!((t.entries(), t.frames()), (2048, 2));
        assert_eq!(t.alloc_block(1024), Some(1024));
        let (a, b) = (RemapFields::fixed(0x30, 1), RemapFields::fixed(0x31, 2));
        t.set(&mut mem, 1024, &a).unwrap();
        t.set(&mut mem, 1025, &b).unwrap();
        // Entry 1024 is the first of the second frame; 1025 is its upper half.
        let (ea, eb) = (Irte32::remapped(&a).unwrap().0, Irte32::remapped(&b).unwrap().0);
        assert_eq!(mem.frames[&(t.base() + 4096)][0], u64::from(eb) << 32 | u64::from(ea));
        t.clear(&mut mem, 1024).unwrap();
        assert_eq!(mem.frames[&(t.base() + 4096)][0], u64::from(eb) << 32);
        assert_eq!(t.get(&mem, 1025).unwrap().decode(), Ok(b));
    }

    #[test]
    fn ga_tables_and_write_order() {
        let mut mem = Mem::default();
        let mut t = AmdIrTable::new(&mut mem, MAX_LEN_LOG2, IrteFormat::Ga).unwrap();
        assert_eq!(t.frames(), 8);
        assert_eq!(t.base() % (8 * 4096), 0);
        let i = t.alloc().unwrap();
        let a = RemapFields::fixed(0x30, 1);
        mem.writes.clear();
        t.set(&mut mem, i, &a).unwrap();
        let ea = Irte128::remapped(&a);
        let w: Vec<(usize, u64)> = mem.writes.iter().map(|&(_, i, v)| (i, v)).collect();
        assert_eq!(w, [(3, ea.hi), (2, ea.lo)], "high first, RemapEn last");
        // Same vector and destination byte 3, new destination low bits: one store.
        mem.writes.clear();
        let b = RemapFields::fixed(0x30, 7);
        t.set(&mut mem, i, &b).unwrap();
        assert_eq!(mem.writes.len(), 1);
        // New vector: disable, high, low.
        mem.writes.clear();
        let c = RemapFields::fixed(0x31, 7);
        t.set(&mut mem, i, &c).unwrap();
        let (eb, ec) = (Irte128::remapped(&b), Irte128::remapped(&c));
        let w: Vec<(usize, u64)> = mem.writes.iter().map(|&(_, i, v)| (i, v)).collect();
        assert_eq!(w, [(2, eb.lo & !1), (3, ec.hi), (2, ec.lo)]);
        assert_eq!(t.get(&mem, i), Some(AmdIrte::Ga(ec)));
        // The last entry is at the end of the eighth frame.
        assert_eq!(t.alloc_block(1024), Some(1024));
        t.set(&mut mem, 2047, &a).unwrap();
        assert_eq!(mem.frames[&(t.base() + 7 * 4096)][510..], [ea.lo, ea.hi]);
        assert_eq!(t.dte_fields(true), t.base() | 11 << 1 | 1 | 2 << 60);
        t.destroy(&mut mem);
        assert!(mem.frames.is_empty());
    }

    #[test]
    fn blocks_are_aligned() {
        let mut mem = Mem::default();
        let mut t = AmdIrTable::new(&mut mem, 5, IrteFormat::Ga).unwrap(); // 32 entries
        assert_eq!(t.alloc_block(4), Some(4), "0-3 hold the reserved index 0");
        assert_eq!(t.alloc(), Some(1));
        assert_eq!(t.alloc_block(8), Some(8));
        assert_eq!(t.alloc_block(16), Some(16));
        assert_eq!(t.alloc_block(8), None);
        assert_eq!(t.alloc_block(3), None, "not a power of two");
        assert_eq!(t.alloc_block(2), Some(2));
        assert_eq!(t.in_use(), 4 + 1 + 8 + 16 + 2);
        assert_eq!(t.alloc(), None);
    }
}
