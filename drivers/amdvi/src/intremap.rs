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
//!   mode (Control.NumIntRemapMode = 01b, MSI address DM = 1: `data[10:0]` is
//!   the index) that the spec defines with EFR2.NumIntRemapSup.
//! - Remap: the entry at `IntTableRootPtr + (data & 0x7FF) * size` (4 bytes,
//!   16 with GAEn); IntTabLen is not compared with the index. RemapEn = 0:
//!   target abort; GuestMode = 1 or IntType > 001b: dropped. The legacy
//!   entry's RqEoi is used as the redirection hint; the 128-bit entry's
//!   destination bits 31:24 only with the `xtsup` property.
//! - No failure is logged: QEMU writes no IO_PAGE_FAULT event for interrupts
//!   (`amdvi_mem_ir_write` only reports it once on stderr and drops the write).

use crate::dte::DTE2;
use iommu::desc::Word;
use iommu::desc::{from_place, in_place};
use iommu::dma::DmaRegion;
use iommu::ids::IdAllocator;
use iommu::DmaMemory;
use tock_registers::fields::FieldValue;
use tock_registers::{register_bitfields, LocalRegisterCopy};

register_bitfields![u32,
    /// A 32-bit IRTE (§2.2.5.1).
    pub IRTE32 [
        /// Bit 0, RemapEn: the entry remaps (clear: target abort).
        REMAP_EN OFFSET(0) NUMBITS(1) [],
        /// Bit 1, SupIOPF: no IO_PAGE_FAULT event while not enabled.
        SUP_IOPF OFFSET(1) NUMBITS(1) [],
        /// Bits 4:2, IntType: 000b fixed, 001b arbitrated.
        INT_TYPE OFFSET(2) NUMBITS(3) [],
        /// Bit 5, RqEoi: request an EOI.
        RQ_EOI OFFSET(5) NUMBITS(1) [],
        /// Bit 6, DM: logical destination mode.
        DM OFFSET(6) NUMBITS(1) [],
        /// Bit 7, GuestMode: a guest virtual APIC entry (never written here).
        GUEST_MODE OFFSET(7) NUMBITS(1) [],
        /// Bits 15:8, Destination: the APIC ID.
        DESTINATION OFFSET(8) NUMBITS(8) [],
        /// Bits 23:16, Vector.
        VECTOR OFFSET(16) NUMBITS(8) [],
        /// Bits 31:24, reserved.
        RESERVED OFFSET(24) NUMBITS(8) []
    ],
    /// A 32-bit destination APIC ID as the 128-bit IRTE splits it (§2.2.5.2).
    pub DEST32 [
        /// Destination[23:0], in low qword bits 31:8.
        LO OFFSET(0) NUMBITS(24) [],
        /// Destination[31:24], in high qword bits 63:56.
        HI OFFSET(24) NUMBITS(8) []
    ],
    /// MSI data as the IOMMU reads it (§2.2.5).
    pub MSI_DATA [
        /// Bits 8:0: the table index without the 2K interrupt mode.
        INDEX_512 OFFSET(0) NUMBITS(9) [],
        /// Bits 10:0: the table offset (the index in the 2K mode).
        INDEX_2K OFFSET(0) NUMBITS(11) [],
        /// Bits 10:8: the message type (000b fixed, 001b arbitrated).
        TYPE OFFSET(8) NUMBITS(3) []
    ]
];

register_bitfields![u64,
    /// A 128-bit IRTE bits 63:0, remapping mode (§2.2.5.2).
    pub IRTE_LO [
        /// Bit 0, RemapEn.
        REMAP_EN OFFSET(0) NUMBITS(1) [],
        /// Bit 1, SupIOPF.
        SUP_IOPF OFFSET(1) NUMBITS(1) [],
        /// Bits 4:2, IntType.
        INT_TYPE OFFSET(2) NUMBITS(3) [],
        /// Bit 5, RqEoi.
        RQ_EOI OFFSET(5) NUMBITS(1) [],
        /// Bit 6, DM.
        DM OFFSET(6) NUMBITS(1) [],
        /// Bit 7, GuestMode.
        GUEST_MODE OFFSET(7) NUMBITS(1) [],
        /// Bits 31:8, Destination[23:0].
        DESTINATION_LO OFFSET(8) NUMBITS(24) [],
        /// Bits 63:32, reserved with GuestMode = 0 (GATag in guest mode).
        RESERVED OFFSET(32) NUMBITS(32) []
    ],
    /// A 128-bit IRTE bits 127:64, remapping mode (§2.2.5.2).
    pub IRTE_HI [
        /// Bits 71:64, Vector.
        VECTOR OFFSET(0) NUMBITS(8) [],
        /// Bits 119:72, reserved with GuestMode = 0 (the vAPIC root pointer in guest mode).
        RESERVED OFFSET(8) NUMBITS(48) [],
        /// Bits 127:120, Destination[31:24].
        DESTINATION_HI OFFSET(56) NUMBITS(8) []
    ]
];

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
/// MSI address bit 2 (DM): in the 2K interrupt mode it selects `data[10:0]` as
/// the index instead of `data[8:0]`.
pub const MSI_ADDRESS_DM: u32 = 1 << 2;

/// DTE qword 2 with IV alone (IntCtl = 00b, no table, no pass bit): every
/// interrupt of the device is target-aborted (§2.2.2.2).
pub const DTE_IV: u64 = DTE2::IV::SET.value;

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
    let mut q2 = Word::<DTE2::Register>::new(0);
    q2.write(
        DTE2::IV::SET
            + DTE2::INT_TAB_LEN.val(u64::from(len_log2))
            + from_place(DTE2::INT_TABLE_ROOT, table_pa)
            + DTE2::INT_CTL.val(ctl as u64),
    );
    q2.get()
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
        let q2 = Word::<DTE2::Register>::new(q2);
        DteInterrupt {
            valid: q2.is_set(DTE2::IV),
            len_log2: q2.read(DTE2::INT_TAB_LEN) as u8,
            ignore_unmapped: q2.is_set(DTE2::IG),
            table: in_place(q2, DTE2::INT_TABLE_ROOT),
            int_ctl: q2.read(DTE2::INT_CTL) as u8,
            init_pass: q2.is_set(DTE2::INIT_PASS),
            eint_pass: q2.is_set(DTE2::EINT_PASS),
            nmi_pass: q2.is_set(DTE2::NMI_PASS),
            lint0_pass: q2.is_set(DTE2::LINT0_PASS),
            lint1_pass: q2.is_set(DTE2::LINT1_PASS),
        }
    }
}

/// The MSI data that selects entry `index` (§2.2.5: data bits 10:0 are the
/// table offset; bits 10:8 double as the message type, so without the 2K
/// interrupt mode the index must be below [`MAX_INDEX_512`]).
pub fn msi_data(index: u16) -> u32 {
    MSI_DATA::INDEX_2K.val(u32::from(index)).value
}

/// The MSI address of a remapped interrupt: [`MSI_ADDRESS`], with DM set in
/// the 2K interrupt mode (`two_k`) so all 11 data bits index the table.
pub fn msi_address(two_k: bool) -> u32 {
    MSI_ADDRESS | if two_k { MSI_ADDRESS_DM } else { 0 }
}

/// The table index an MSI reaches when DTE.IntCtl = 10b, or `None` when it is
/// not a fixed or arbitrated interrupt (the pass bits decide those) or not an
/// interrupt address. In the 2K mode (`two_k`) with address DM set, `data[10:0]`;
/// otherwise `data[8:0]`, with `data[10:8]` the message type.
pub fn msi_index(address: u32, data: u32, two_k: bool) -> Option<u16> {
    if address & 0xFFF0_0000 != MSI_ADDRESS {
        return None;
    }
    let data = LocalRegisterCopy::<u32, MSI_DATA::Register>::new(data);
    if two_k && address & MSI_ADDRESS_DM != 0 {
        return Some(data.read(MSI_DATA::INDEX_2K) as u16);
    }
    match data.read(MSI_DATA::TYPE) {
        0 | 1 => Some(data.read(MSI_DATA::INDEX_512) as u16),
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

    /// Bits 7:0 of a 32-bit entry: RemapEn, SupIOPF, IntType, RqEoi, DM, GuestMode = 0.
    fn flags32(&self) -> FieldValue<u32, IRTE32::Register> {
        IRTE32::REMAP_EN::SET
            + IRTE32::SUP_IOPF.val(u32::from(self.sup_iopf))
            + IRTE32::INT_TYPE.val(self.int_type as u32)
            + IRTE32::RQ_EOI.val(u32::from(self.rq_eoi))
            + IRTE32::DM.val(u32::from(self.logical))
    }

    /// The same bits 7:0 of a 128-bit entry's low qword.
    fn flags128(&self) -> FieldValue<u64, IRTE_LO::Register> {
        IRTE_LO::REMAP_EN::SET
            + IRTE_LO::SUP_IOPF.val(u64::from(self.sup_iopf))
            + IRTE_LO::INT_TYPE.val(self.int_type as u64)
            + IRTE_LO::RQ_EOI.val(u64::from(self.rq_eoi))
            + IRTE_LO::DM.val(u64::from(self.logical))
    }

    /// The fields from the flag bits of either format (`flags`) and the
    /// entry's vector and destination.
    fn from_flags(flags: LowFlags, vector: u8, destination: u32) -> Result<Self, IrteError> {
        if !flags.remap_en {
            return Err(IrteError::NotEnabled);
        }
        if flags.guest_mode {
            return Err(IrteError::GuestMode);
        }
        let int_type = match flags.int_type {
            0 => IntType::Fixed,
            1 => IntType::Arbitrated,
            t => return Err(IrteError::IntType(t)),
        };
        Ok(RemapFields {
            vector,
            destination,
            int_type,
            logical: flags.dm,
            rq_eoi: flags.rq_eoi,
            sup_iopf: flags.sup_iopf,
        })
    }
}

/// Bits 7:0 of either IRTE format, read by name (§2.2.5.1, §2.2.5.2).
#[derive(Debug, Clone, Copy)]
struct LowFlags {
    remap_en: bool,
    sup_iopf: bool,
    int_type: u8,
    rq_eoi: bool,
    dm: bool,
    guest_mode: bool,
}

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

/// A 32-bit (basic / legacy) IRTE (§2.2.5.1), laid out by [`IRTE32`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Irte32(pub u32);

impl Irte32 {
    /// RemapEn = 0: every interrupt through it is target-aborted.
    pub const DISABLED: Irte32 = Irte32(0);

    /// An enabled entry with fields `f`; `None` when the destination does not
    /// fit in 8 bits.
    pub fn remapped(f: &RemapFields) -> Option<Irte32> {
        let dest = u8::try_from(f.destination).ok()?;
        let value = f.flags32() + IRTE32::DESTINATION.val(u32::from(dest)) + IRTE32::VECTOR.val(u32::from(f.vector));
        Some(Irte32(value.value))
    }

    fn word(self) -> LocalRegisterCopy<u32, IRTE32::Register> {
        LocalRegisterCopy::new(self.0)
    }

    /// RemapEn.
    pub fn enabled(self) -> bool {
        self.word().is_set(IRTE32::REMAP_EN)
    }

    /// The fields of an enabled entry.
    pub fn decode(self) -> Result<RemapFields, IrteError> {
        let w = self.word();
        if w.read(IRTE32::RESERVED) != 0 {
            return Err(IrteError::Reserved(u64::from(IRTE32::RESERVED.val(w.read(IRTE32::RESERVED)).value), 0));
        }
        let flags = LowFlags {
            remap_en: w.is_set(IRTE32::REMAP_EN),
            sup_iopf: w.is_set(IRTE32::SUP_IOPF),
            int_type: w.read(IRTE32::INT_TYPE) as u8,
            rq_eoi: w.is_set(IRTE32::RQ_EOI),
            dm: w.is_set(IRTE32::DM),
            guest_mode: w.is_set(IRTE32::GUEST_MODE),
        };
        RemapFields::from_flags(flags, w.read(IRTE32::VECTOR) as u8, w.read(IRTE32::DESTINATION))
    }
}

iommu::descriptor! {
    /// A 128-bit IRTE (§2.2.5.2, used when Control.GAEn = 1) in remapping
    /// mode (GuestMode = 0): low qword bits 7:0 as in [`Irte32`] and
    /// Destination[23:0]; high qword Vector and Destination[31:24].
    pub struct Irte128 {
        /// Bits 63:0.
        lo: IRTE_LO,
        /// Bits 127:64.
        hi: IRTE_HI,
    }
}

impl Irte128 {
    /// RemapEn = 0: every interrupt through it is target-aborted.
    pub const DISABLED: Irte128 = Irte128::zeroed();

    /// An enabled entry with fields `f` (32-bit destinations need x2APIC
    /// support, EFR.XTSup, for the upper byte to be used).
    pub fn remapped(f: &RemapFields) -> Irte128 {
        let d = LocalRegisterCopy::<u32, DEST32::Register>::new(f.destination);
        let mut e = Irte128::zeroed();
        e.lo.write(f.flags128() + IRTE_LO::DESTINATION_LO.val(u64::from(d.read(DEST32::LO))));
        e.hi.write(
            IRTE_HI::VECTOR.val(u64::from(f.vector)) + IRTE_HI::DESTINATION_HI.val(u64::from(d.read(DEST32::HI))),
        );
        e
    }

    /// RemapEn.
    pub fn enabled(self) -> bool {
        self.lo.is_set(IRTE_LO::REMAP_EN)
    }

    /// The fields of an enabled remapping entry.
    pub fn decode(self) -> Result<RemapFields, IrteError> {
        let (rlo, rhi) = (in_place(self.lo, IRTE_LO::RESERVED), in_place(self.hi, IRTE_HI::RESERVED));
        if !self.lo.is_set(IRTE_LO::GUEST_MODE) && (rlo != 0 || rhi != 0) {
            return Err(IrteError::Reserved(rlo, rhi));
        }
        let destination = (DEST32::LO.val(self.lo.read(IRTE_LO::DESTINATION_LO) as u32)
            + DEST32::HI.val(self.hi.read(IRTE_HI::DESTINATION_HI) as u32))
        .value;
        let flags = LowFlags {
            remap_en: self.lo.is_set(IRTE_LO::REMAP_EN),
            sup_iopf: self.lo.is_set(IRTE_LO::SUP_IOPF),
            int_type: self.lo.read(IRTE_LO::INT_TYPE) as u8,
            rq_eoi: self.lo.is_set(IRTE_LO::RQ_EOI),
            dm: self.lo.is_set(IRTE_LO::DM),
            guest_mode: self.lo.is_set(IRTE_LO::GUEST_MODE),
        };
        RemapFields::from_flags(flags, self.hi.read(IRTE_HI::VECTOR) as u8, destination)
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
/// [`crate::cmd::invalidate_interrupt_table`] for the device (and a COMPLETION_WAIT).
pub struct AmdIrTable {
    region: DmaRegion,
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
        let region = DmaRegion::alloc_contiguous(mem, frames)?;
        debug_assert_eq!(region.base() % TABLE_ALIGN, 0);
        Some(AmdIrTable { region, len_log2, format, ids: IdAllocator::new(entries as u32) })
    }

    /// Physical address of entry 0.
    pub fn base(&self) -> u64 {
        self.region.base()
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
        dte_interrupt_fields(self.region.base(), self.len_log2, remap)
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

    /// Byte offset of entry `i` in the table.
    fn offset(&self, i: usize) -> u64 {
        (i * self.format.entry_bytes()) as u64
    }

    /// Qword index of a GA entry's low qword (its high one follows).
    fn ga_word(i: usize) -> usize {
        i * 2
    }

    /// The entry at `index` (any index in range, allocated or not).
    pub fn get(&self, mem: &impl DmaMemory, index: u16) -> Option<AmdIrte> {
        let i = usize::from(index);
        if i >= self.entries() {
            return None;
        }
        // Every index below `entries()` lies inside the table's frames.
        Some(match self.format {
            IrteFormat::Legacy => AmdIrte::Legacy(Irte32(self.region.read_u32(mem, self.offset(i)).ok()?)),
            IrteFormat::Ga => {
                let w = Self::ga_word(i);
                let (lo, hi) = (self.region.read_u64(mem, w).ok()?, self.region.read_u64(mem, w + 1).ok()?);
                AmdIrte::Ga(Irte128::from_words([lo, hi]))
            }
        })
    }

    fn store(&self, mem: &mut impl DmaMemory, i: usize, new: AmdIrte) {
        // `i` was checked against the table (`check`): no access below is refused.
        match new {
            AmdIrte::Legacy(e) => {
                // One 64-bit store; the neighbouring entry is rewritten unchanged.
                let _ = self.region.write_u32(mem, self.offset(i), e.0);
            }
            AmdIrte::Ga(e) => {
                // RemapEn is in the low qword: write the high one first and the
                // low one last; when an enabled entry's high qword changes,
                // disable it first so no interrupt sees a mix of both.
                let w = Self::ga_word(i);
                let old = Irte128::from_words([
                    self.region.read_u64(mem, w).unwrap_or(0),
                    self.region.read_u64(mem, w + 1).unwrap_or(0),
                ]);
                if old.hi.get() != e.hi.get() {
                    if old.enabled() {
                        let mut off = old.lo;
                        off.modify(IRTE_LO::REMAP_EN::CLEAR);
                        let _ = self.region.write_u64(mem, w, off.get());
                    }
                    let _ = self.region.write_u64(mem, w + 1, e.hi.get());
                }
                let _ = self.region.write_u64(mem, w, e.lo.get());
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
                // `i` was checked against the table: neither store is refused.
                let w = Self::ga_word(i);
                let _ = self.region.write_u64(mem, w, 0); // RemapEn first
                let _ = self.region.write_u64(mem, w + 1, 0);
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
        self.region.free_contiguous(mem);
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
        assert_eq!(e, Irte128::from_words([0x3456_7801, 0x1200_0000_0000_00EC]));
        let e = Irte128::remapped(&RemapFields { int_type: IntType::Arbitrated, ..RemapFields::fixed(0x30, 2) });
        assert_eq!(e, Irte128::from_words([0x0000_0205, 0x30]));
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
        let [lo, hi] = ga.to_words();
        assert_eq!(Irte128::from_words([lo | 1 << 7, hi]).decode(), Err(IrteError::GuestMode));
        assert_eq!(Irte128::from_words([lo | 7 << 2, hi]).decode(), Err(IrteError::IntType(7)));
        assert_eq!(Irte128::from_words([lo | 1 << 32, hi]).decode(), Err(IrteError::Reserved(1 << 32, 0)));
        assert_eq!(Irte128::from_words([lo, hi | 1 << 8]).decode(), Err(IrteError::Reserved(0, 1 << 8)));
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
        let pass = 1 << 56 | 1 << 57 | 1 << 58 | 1 << 62 | 1 << 63 | 1 << 5;
        let all = DteInterrupt::decode(pass);
        assert!(all.init_pass && all.eint_pass && all.nmi_pass && all.lint0_pass && all.lint1_pass);
        assert!(all.ignore_unmapped && !all.valid);
        // No bit QEMU 10.0 calls reserved in qword 2.
        for q2 in [
            dte_interrupt_fields(0x000F_FFFF_FFFF_FF80, 11, true),
            dte_interrupt_fields(0x1000, 0, false),
            pass | 3 << 60,
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
        use crate::cmd::invalidate_interrupt_table;
        assert_eq!(invalidate_interrupt_table(0x00A0).to_words(), [0x5000_0000_0000_00A0, 0]);
        let c = invalidate_interrupt_table(0xFFFF).to_words();
        assert_eq!((c[0] >> 16) & ((1 << 44) - 1), 0, "QEMU amdvi_inval_inttable reserved bits");
        assert_eq!(c[1], 0);
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
        assert_eq!(w, [(3, ea.hi.get()), (2, ea.lo.get())], "high first, RemapEn last");
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
        assert_eq!(w, [(2, eb.lo.get() & !1), (3, ec.hi.get()), (2, ec.lo.get())]);
        assert_eq!(t.get(&mem, i), Some(AmdIrte::Ga(ec)));
        // The last entry is at the end of the eighth frame.
        assert_eq!(t.alloc_block(1024), Some(1024));
        t.set(&mut mem, 2047, &a).unwrap();
        assert_eq!(mem.frames[&(t.base() + 7 * 4096)][510..], ea.to_words());
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
