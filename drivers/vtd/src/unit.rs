//! One remapping unit (legacy or scalable mode), and its domains:
//! second-stage tables, or first-stage tables in scalable mode.

use crate::context;
use crate::fault::FaultRecord;
use crate::hwpt::{self, DomainConfig};
use crate::invalidation::{self as inv, Descriptor, QueueError};
use crate::regs::{FaultRecordRegisters, IotlbRegisters, Layout, Registers, CAP, CCMD, ECAP, FSTS, GLOBAL, IOTLB};
use io_pgtable::formats::{VtdSecondLevel, X86Paging};
use io_pgtable::{Gather, PageTable, Perms, TableMemory};
use tock_registers::interfaces::{Readable, Writeable};

/// Polls of a status bit before a wait is declared failed.
const MAX_POLLS: u32 = 1_000_000;

/// Why a unit operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    /// The hardware did not acknowledge a command in time.
    Timeout(&'static str),
    /// No table memory.
    NoMemory,
    /// SAGAW offers no address width this driver can use.
    NoAddressWidth,
    /// A page-table operation failed.
    Map(io_pgtable::Error),
    /// Every domain ID the unit supports (CAP.ND) is in use.
    NoDomainId,
    /// The unit reported an invalidation-queue error; `head` is the descriptor
    /// index IQH pointed at. The queue was made to run again before returning.
    Queue {
        /// Which error.
        error: QueueError,
        /// Descriptor index at IQH when the error was seen.
        head: usize,
    },
    /// The operation needs the invalidation queue and the unit has none.
    NoQueue,
    /// The unit cannot do this (a missing capability, named).
    NotSupported(&'static str),
    /// Registers the capability registers locate (ECAP.IRO, CAP.FRO and
    /// CAP.NFR) do not fit in the register window the firmware described
    /// (DRHD size), or sit over the fixed registers: the unit is not used
    /// ([`crate::regs::check_window`]).
    RegisterOutsideWindow {
        /// Which registers, and the capability field that placed them.
        register: &'static str,
        /// Their first byte, from the register base.
        offset: u64,
        /// One past their last byte.
        end: u64,
        /// Bytes in the window.
        window: u64,
    },
    /// ECAP.IRO puts the IOTLB registers over the fault-recording registers
    /// CAP.FRO and CAP.NFR describe.
    RegistersOverlap {
        /// IOTLB register offset (ECAP.IRO × 16).
        iotlb: u64,
        /// First fault-recording register (CAP.FRO × 16).
        records: u64,
        /// One past the last fault-recording register.
        records_end: u64,
    },
}

impl core::fmt::Display for VtdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VtdError::Timeout(what) => write!(f, "VT-d did not complete {what} in time"),
            VtdError::NoMemory => f.write_str("out of memory for VT-d tables"),
            VtdError::NoAddressWidth => f.write_str("no supported second-level address width in CAP.SAGAW"),
            VtdError::Map(e) => write!(f, "page table: {e}"),
            VtdError::NoDomainId => f.write_str("every VT-d domain ID (CAP.ND) is in use"),
            VtdError::Queue { error, head } => {
                write!(f, "invalidation queue error {} at descriptor {head}", error.name())
            }
            VtdError::NoQueue => f.write_str("the unit has no invalidation queue (ECAP.QI = 0)"),
            VtdError::NotSupported(what) => write!(f, "the unit does not support {what}"),
            VtdError::RegisterOutsideWindow { register, offset, end, window } => write!(
                f,
                "{register} at {offset:#x}..{end:#x} lie outside the unit's {window:#x}-byte register window \
                 (DRHD size) or over its fixed registers"
            ),
            VtdError::RegistersOverlap { iotlb, records, records_end } => write!(
                f,
                "IOTLB registers (ECAP.IRO) at {iotlb:#x} overlap the fault-recording registers \
                 (CAP.FRO, CAP.NFR) at {records:#x}..{records_end:#x}"
            ),
        }
    }
}

/// Which translation a unit's domains use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Legacy root/context tables, second-level page tables.
    Legacy,
    /// Scalable mode, second-stage tables (ECAP.SLTS).
    ScalableSecond,
    /// Scalable mode, first-stage tables in x86 paging format (ECAP.FLTS only).
    ScalableFirst,
}

/// A domain's page table, in the format its unit's stage needs.
pub enum DomainTable {
    /// Second-level / second-stage tables.
    Second(PageTable<VtdSecondLevel>),
    /// First-stage tables.
    First(PageTable<X86Paging>),
}

impl DomainTable {
    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        match self {
            DomainTable::Second(t) => t.root(),
            DomainTable::First(t) => t.root(),
        }
    }

    /// See [`PageTable::map`].
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        iova: u64,
        pa: u64,
        len: u64,
        perms: Perms,
    ) -> Result<Gather, io_pgtable::Error> {
        match self {
            DomainTable::Second(t) => t.map(mem, iova, pa, len, perms),
            DomainTable::First(t) => t.map(mem, iova, pa, len, perms),
        }
    }

    /// See [`PageTable::unmap`].
    pub fn unmap(
        &mut self,
        mem: &mut impl TableMemory,
        iova: u64,
        len: u64,
    ) -> Result<(u64, Gather), io_pgtable::Error> {
        match self {
            DomainTable::Second(t) => t.unmap(mem, iova, len),
            DomainTable::First(t) => t.unmap(mem, iova, len),
        }
    }

    /// See [`PageTable::iova_to_phys`].
    pub fn iova_to_phys(&self, mem: &impl TableMemory, iova: u64) -> Option<u64> {
        match self {
            DomainTable::Second(t) => t.iova_to_phys(mem, iova),
            DomainTable::First(t) => t.iova_to_phys(mem, iova),
        }
    }

    /// See [`PageTable::for_each_mapping`].
    pub fn for_each_mapping(&self, mem: &impl TableMemory, f: &mut dyn FnMut(u64, u64, u64, Perms)) {
        match self {
            DomainTable::Second(t) => t.for_each_mapping(mem, f),
            DomainTable::First(t) => t.for_each_mapping(mem, f),
        }
    }

    /// See [`PageTable::destroy`].
    pub fn destroy(self, mem: &mut impl TableMemory) {
        match self {
            DomainTable::Second(t) => t.destroy(mem),
            DomainTable::First(t) => t.destroy(mem),
        }
    }
}

/// A translation domain.
pub struct Domain {
    /// Domain ID in context/PASID entries and invalidations.
    pub id: u16,
    /// Its page table.
    pub table: DomainTable,
    /// Stage, levels, input width and snoop: the unit's default, or what a
    /// HWPT asked for.
    pub config: DomainConfig,
}

impl Domain {
    /// Lowest and highest (inclusive) IOVA the domain translates.
    pub fn aperture(&self) -> (u64, u64) {
        self.config.aperture()
    }
}

/// A remapping unit.
pub struct Unit {
    base: u64,
    /// Where the IOTLB and fault-recording registers are, checked against
    /// the register window at bring-up.
    layout: Layout,
    root: u64,
    /// Context-table frame per bus (0 = none yet); in scalable mode, for devfn 0–127.
    context_tables: [u64; 256],
    /// Scalable mode: context-table frame per bus for devfn 128–255.
    upper_context_tables: [u64; 256],
    /// Second-level levels of the default domains (3, 4 or 5); pass-through
    /// entries carry this address width too.
    pub levels: usize,
    /// What `new_domain` and `alloc_domain` give.
    default_config: DomainConfig,
    /// Largest leaf level (SLLPS).
    pub max_leaf_level: usize,
    /// CAP.CM: flush on map too.
    pub caching_mode: bool,
    /// Raw CAP.
    pub cap: u64,
    /// Raw ECAP.
    pub ecap: u64,
    /// IOTLB invalidations issued so far.
    pub invalidations: u64,
    /// Primary fault overflows seen (FSTS.PFO: faults the unit could not record).
    pub fault_overflows: core::sync::atomic::AtomicU64,
    /// The invalidation queue, when the unit has one (ECAP.QI).
    queue: Option<Queue>,
    /// Legacy, or scalable mode with second- or first-stage tables: in scalable
    /// mode root entries have two halves and context entries point at PASID directories.
    pub stage: Stage,
    /// Scalable mode: (requester ID, PASID directory, PASID table) per attached device.
    pasid_tables: alloc::vec::Vec<(u16, u64, u64)>,
    /// Domain IDs in use.
    domain_ids: iommu::ids::IdAllocator,
}

/// What a context / PASID entry points a device at.
#[derive(Clone, Copy)]
enum Entry {
    /// A page table (root address) in domain `id`, with its configuration.
    Table { root: u64, id: u16, config: DomainConfig },
    /// No translation, domain `id`.
    PassThrough { id: u16 },
}

impl Entry {
    fn id(self) -> u16 {
        match self {
            Entry::Table { id, .. } | Entry::PassThrough { id } => id,
        }
    }
}

/// The invalidation queue: one 4 KiB page of 256 descriptors and a status word.
struct Queue {
    base: u64,
    status: u64,
    tail: usize,
    seq: u32,
}

/// Descriptors in the one-page queue (QS = 0).
const QUEUE_ENTRIES: usize = 256;

fn wait(what: &'static str, done: impl FnMut() -> bool) -> Result<(), VtdError> {
    if iommu::poll(MAX_POLLS, done) {
        Ok(())
    } else {
        Err(VtdError::Timeout(what))
    }
}

impl Unit {
    fn regs(&self) -> &Registers {
        // SAFETY: `base` maps the unit's register window, which holds `Registers` (checked in `with_queue`), for the unit's lifetime (see `new`).
        unsafe { &*(self.base as *const Registers) }
    }

    /// Where ECAP.IRO and CAP.FRO / CAP.NFR put the IOTLB and fault-recording
    /// registers (checked against the register window at bring-up).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The IOTLB register pair at ECAP.IRO × 16.
    fn iotlb(&self) -> &IotlbRegisters {
        let off = self.layout.iotlb as u64;
        // SAFETY: `check_window` placed these 16 bytes inside the mapped register window (see `with_queue`), clear of every other register this driver defines.
        unsafe { &*((self.base + off) as *const IotlbRegisters) }
    }

    /// Fault-recording register `i`, if the unit has that many (CAP.NFR + 1).
    fn fault_record(&self, i: usize) -> Option<&FaultRecordRegisters> {
        if i >= self.layout.fault_record_count {
            return None;
        }
        let off = (self.layout.fault_records + i * core::mem::size_of::<FaultRecordRegisters>()) as u64;
        // SAFETY: `check_window` placed all CAP.NFR + 1 records (i is below that) inside the mapped register window (see `with_queue`).
        Some(unsafe { &*((self.base + off) as *const FaultRecordRegisters) })
    }

    /// Takes over the unit whose registers are mapped at virtual address `base`,
    /// `window` bytes of them (the DRHD's register set size, §8.3): checks that
    /// the registers CAP and ECAP locate lie in that window
    /// ([`crate::regs::check_window`]; [`VtdError::RegisterOutsideWindow`]
    /// otherwise, before anything is written), installs an empty root table
    /// and invalidates the caches. Translation stays off.
    ///
    /// # Safety
    /// `base` must map `window` bytes of the unit's registers (device memory),
    /// at least the fixed ones, for as long as the returned `Unit` lives, and
    /// nothing else may program the unit.
    pub unsafe fn new(base: u64, window: usize, mem: &mut impl TableMemory) -> Result<Unit, VtdError> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::with_queue(base, window, mem, true) }
    }

    /// As [`Unit::new`]; with `use_queue` false a legacy-mode unit invalidates
    /// through the CCMD/IOTLB registers even when it has a queue (to exercise
    /// that path on units that all have QI, like QEMU's). Scalable mode needs
    /// the queue (PASID-cache invalidation has no register form) and keeps it.
    ///
    /// # Safety
    /// As for [`Unit::new`].
    pub unsafe fn with_queue(
        base: u64,
        window: usize,
        mem: &mut impl TableMemory,
        use_queue: bool,
    ) -> Result<Unit, VtdError> {
        if window < core::mem::size_of::<Registers>() {
            // Not even CAP and ECAP can be read.
            return Err(VtdError::RegisterOutsideWindow {
                register: "fixed registers (VER_REG..ICS_REG)",
                offset: 0,
                end: core::mem::size_of::<Registers>() as u64,
                window: window as u64,
            });
        }
        // SAFETY: the caller guarantees `base` maps `window` bytes of the registers, which holds `Registers` (checked just above).
        let regs = unsafe { &*(base as *const Registers) };
        let (cap, ecap) = (regs.cap.get(), regs.ecap.get());
        let layout = crate::regs::check_window(cap, ecap, window)?;
        let levels = hwpt::sagaw_default_levels(cap).ok_or(VtdError::NoAddressWidth)?;
        let stage = match (ECAP::SMTS.read(ecap) != 0, ECAP::SLTS.read(ecap) != 0, ECAP::FLTS.read(ecap) != 0) {
            (true, true, _) => Stage::ScalableSecond,
            (true, false, true) => Stage::ScalableFirst,
            _ => Stage::Legacy,
        };
        let default_config = hwpt::default_config(cap, stage).ok_or(VtdError::NoAddressWidth)?;
        let sllps = CAP::SLLPS.read(cap);
        let max_leaf_level = if sllps & 2 != 0 {
            2
        } else if sllps & 1 != 0 {
            1
        } else {
            0
        };
        let root = mem.alloc_table().ok_or(VtdError::NoMemory)?;
        let mut unit = Unit {
            base,
            layout,
            root,
            context_tables: [0; 256],
            upper_context_tables: [0; 256],
            levels,
            default_config,
            max_leaf_level,
            caching_mode: CAP::CM.read(cap) != 0,
            cap,
            ecap,
            invalidations: 0,
            fault_overflows: core::sync::atomic::AtomicU64::new(0),
            queue: None,
            stage,
            pasid_tables: alloc::vec::Vec::new(),
            domain_ids: iommu::ids::IdAllocator::new(1 << (4 + 2 * CAP::ND.read(cap))),
        };
        // Firmware with pre-boot DMA protection hands over with remapping (and its
        // queue) on: take both down before installing our tables, translation first,
        // then the queue (IQA may change only while QI is off, VT-d §6.5.2).
        // (QEMU's OVMF never does this, so this path is not exercised by the QEMU tests.)
        let gsts = unit.regs().gsts.get();
        if gsts & (1 << 31) != 0 {
            log::warn!("vtd: unit at {base:#x}: firmware left DMA remapping on; turning it off to take over");
            unit.disable()?;
        }
        if gsts & (1 << 26) != 0 {
            let keep = unit.regs().gsts.get() & 0x96FF_FFFF & !(1 << 26);
            unit.regs().gcmd.set(keep);
            wait("queued invalidation disable", || unit.regs().gsts.get() & (1 << 26) == 0)?;
        }
        // RTADDR.TTM (bits 11:10): 00 legacy root table, 01 scalable-mode root table.
        let rtaddr = if unit.stage == Stage::Legacy { root } else { root | 1 << 10 };
        if crate::tracing() {
            log::info!("vtd trace: RTADDR <- {rtaddr:#x}");
        }
        unit.regs().rtaddr.set(rtaddr);
        unit.command(GLOBAL::SRTP::SET, "set root table pointer", |s| s & (1 << 30) != 0)?;
        if ECAP::QI.read(ecap) != 0 && (use_queue || unit.stage != Stage::Legacy) {
            let base = mem.alloc_table().ok_or(VtdError::NoMemory)?;
            let status = mem.alloc_table().ok_or(VtdError::NoMemory)?;
            if crate::tracing() {
                log::info!("vtd trace: IQT <- 0, IQA <- {base:#x} (QS 0: 256 descriptors)");
            }
            unit.regs().iqt.set(0);
            unit.regs().iqa.set(base); // QS = 0, 128-bit descriptors
            unit.command(GLOBAL::QIE::SET, "queued invalidation enable", |s| s & (1 << 26) != 0)?;
            unit.queue = Some(Queue { base, status, tail: 0, seq: 0 });
        }
        unit.invalidate_context_global(mem)?;
        unit.invalidate_iotlb(None, mem)?;
        Ok(unit)
    }

    /// Whether invalidations go through the queue.
    pub fn queued(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `descs` plus a wait descriptor and waits for the unit to write its status.
    fn submit(&mut self, descs: &[Descriptor], mem: &mut impl TableMemory) -> Result<(), VtdError> {
        let trace = crate::tracing();
        let Some(q) = self.queue.as_mut() else { return Ok(()) };
        q.seq = q.seq.wrapping_add(1);
        mem.write(q.status, 0, 0);
        let wait_desc = inv::wait(q.seq, q.status);
        for &(lo, hi) in descs.iter().chain(core::iter::once(&wait_desc)) {
            if trace {
                log::info!("vtd trace: descriptor [{}] {lo:#018x} {hi:#018x}", q.tail);
            }
            mem.write(q.base, 2 * q.tail, lo);
            mem.write(q.base, 2 * q.tail + 1, hi);
            q.tail = (q.tail + 1) % QUEUE_ENTRIES;
        }
        let (tail, seq, status, base) = (q.tail, q.seq, q.status, q.base);
        self.regs().iqt.set((tail as u64) << 4);
        // The status word first: it is memory, FSTS is a (slow) register read.
        wait("invalidation wait descriptor", || {
            mem.read(status, 0) as u32 == seq || QueueError::from_fsts(self.regs().fsts.get()).is_some()
        })?;
        let Some(error) = QueueError::from_fsts(self.regs().fsts.get()) else { return Ok(()) };
        let head = (self.regs().iqh.get() >> 4) as usize % QUEUE_ENTRIES;
        let (lo, hi) = (mem.read(base, 2 * head), mem.read(base, 2 * head + 1));
        log::error!("vtd: invalidation queue error {} at descriptor {head}: {lo:#018x} {hi:#018x}", error.name());
        if error == QueueError::InvalidDescriptor {
            // The unit stopped at the bad descriptor (§6.5.2.10): put a valid
            // one in its place (a global IOTLB flush never does harm), clear
            // IQE and ring the doorbell again so the rest, and our wait, run.
            let (glo, ghi) = inv::iotlb_global();
            mem.write(base, 2 * head, glo);
            mem.write(base, 2 * head + 1, ghi);
        }
        self.regs().fsts.set(error.fsts_bit());
        self.regs().iqt.set((tail as u64) << 4);
        // After ITE the unit dropped pending waits; ours may never complete.
        if error != QueueError::TimeOut {
            wait("invalidation wait after a queue error", || mem.read(status, 0) as u32 == seq)?;
        }
        Err(VtdError::Queue { error, head })
    }

    /// Queues raw descriptors, followed by a wait, and waits for them: for
    /// callers that form their own descriptors (user invalidation, tests).
    pub fn submit_descriptors(&mut self, descs: &[Descriptor], mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_none() {
            return Err(VtdError::NoQueue);
        }
        self.submit(descs, mem)
    }

    /// One line describing the unit, for the boot log.
    pub fn describe(&self) -> alloc::string::String {
        alloc::format!(
            "vtd: ver {:#x} cap {:#018x} ecap {:#018x}: {}-level second-level tables, largest leaf {}, {} domains{}{}{}",
            self.regs().version.get(),
            self.cap,
            self.ecap,
            self.levels,
            ["4K", "2M", "1G"][self.max_leaf_level],
            1u32 << (4 + 2 * CAP::ND.read(self.cap)),
            if ECAP::QI.read(self.ecap) != 0 { ", queued invalidation" } else { "" },
            if self.caching_mode { ", caching mode" } else { "" },
            match self.stage {
                Stage::ScalableSecond => ", scalable mode (second stage)",
                Stage::ScalableFirst => ", scalable mode (first stage)",
                Stage::Legacy => "",
            },
        )
    }

    /// Writes GCMD with the persistent bits of GSTS plus `bit`, and waits for `done(GSTS)`.
    fn command(
        &self,
        bit: tock_registers::fields::FieldValue<u32, GLOBAL::Register>,
        what: &'static str,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), VtdError> {
        // One-shot bits (SRTP, SFL, WBF, SIRTP) must not be written back (§10.4.4).
        let persistent = self.regs().gsts.get() & 0x96FF_FFFF;
        self.regs().gcmd.set(persistent | bit.value);
        wait(what, || done(self.regs().gsts.get()))
    }

    fn invalidate_context_global(&mut self, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_some() {
            return self.submit(&[inv::context_global()], mem);
        }
        if crate::tracing() {
            log::info!("vtd trace: CCMD <- ICC, global");
        }
        self.regs().ccmd.write(CCMD::ICC::SET + CCMD::CIRG.val(1));
        wait("context-cache invalidation", || !self.regs().ccmd.is_set(CCMD::ICC))
    }

    /// Invalidates the IOTLB for one domain (or all with `None`), draining reads and writes.
    fn invalidate_iotlb(&mut self, domain: Option<u16>, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_some() {
            let d = domain.map_or_else(inv::iotlb_global, inv::iotlb_domain);
            return self.submit(&[d], mem);
        }
        if crate::tracing() {
            log::info!("vtd trace: IOTLB <- IVT, domain {domain:?}");
        }
        let v = match domain {
            Some(did) => IOTLB::IVT::SET + IOTLB::IIRG.val(2) + IOTLB::DID.val(u64::from(did)),
            None => IOTLB::IVT::SET + IOTLB::IIRG.val(1),
        };
        self.iotlb().iotlb.write(v + IOTLB::DR::SET + IOTLB::DW::SET);
        wait("IOTLB invalidation", || !self.iotlb().iotlb.is_set(IOTLB::IVT))
    }

    /// Whether DMA remapping is on (GSTS.TES).
    pub fn enabled(&self) -> bool {
        self.regs().gsts.get() & (1 << 31) != 0
    }

    /// Whether the unit can remap interrupts (ECAP.IR, §10.4.3).
    pub fn interrupt_remapping_supported(&self) -> bool {
        ECAP::IR.read(self.ecap) != 0
    }

    /// Whether interrupt remapping is on (GSTS.IRES).
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.regs().gsts.get() & (1 << 25) != 0
    }

    /// Latches `irta` (an [`crate::intremap::IrTable::irta_value`]) as the
    /// interrupt remapping table (IRTA, then GCMD.SIRTP, §10.4.29, §10.4.4)
    /// and invalidates the whole interrupt entry cache. Needs the
    /// invalidation queue: the entry cache has no register-based
    /// invalidation (§6.5.2.7).
    pub fn set_interrupt_table(&mut self, irta: u64, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_none() {
            return Err(VtdError::NoQueue);
        }
        if crate::tracing() {
            log::info!("vtd trace: IRTA <- {irta:#x}, GCMD <- SIRTP");
        }
        self.regs().irta.set(irta);
        self.command(GLOBAL::SIRTP::SET, "set interrupt remap table pointer", |s| s & (1 << 24) != 0)?;
        self.submit(&[crate::intremap::iec_global()], mem)
    }

    /// Turns interrupt remapping on (GCMD.IRE). CFI stays clear, so
    /// compatibility-format interrupts are blocked (§5.1.4; QEMU does not
    /// model CFI and lets them through, docs/qemu.md).
    pub fn enable_interrupt_remapping(&self) -> Result<(), VtdError> {
        if crate::tracing() {
            log::info!("vtd trace: GCMD <- IRE");
        }
        self.command(GLOBAL::IRE::SET, "interrupt remapping enable", |s| s & (1 << 25) != 0)
    }

    /// Invalidates the interrupt entry cache for `handle` (§6.5.2.7) and
    /// waits until the unit has done it.
    pub fn invalidate_interrupt_entry(&mut self, handle: u16, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_none() {
            return Err(VtdError::NoQueue);
        }
        let d = crate::intremap::iec_selective(handle, 0).unwrap_or_else(crate::intremap::iec_global);
        self.submit(&[d], mem)
    }

    /// Turns DMA remapping on.
    pub fn enable(&self) -> Result<(), VtdError> {
        if crate::tracing() {
            log::info!("vtd trace: GCMD <- TE");
        }
        self.command(GLOBAL::TE::SET, "translation enable", |s| s & (1 << 31) != 0)
    }

    /// Turns DMA remapping off.
    pub fn disable(&self) -> Result<(), VtdError> {
        let keep = self.regs().gsts.get() & 0x96FF_FFFF & !(1 << 31);
        self.regs().gcmd.set(keep);
        wait("translation disable", || self.regs().gsts.get() & (1 << 31) == 0)
    }

    /// Number of domain IDs the unit supports (CAP.ND: 2^(4 + 2·ND)).
    pub fn domain_id_count(&self) -> u32 {
        1 << (4 + 2 * CAP::ND.read(self.cap))
    }

    /// Takes a free domain ID (1 .. CAP.ND limit).
    pub fn alloc_domain_id(&mut self) -> Option<u16> {
        self.domain_ids.alloc()
    }

    /// Returns a domain ID.
    pub fn free_domain_id(&mut self, id: u16) {
        self.domain_ids.free(id);
    }

    /// A new, empty domain with a fresh ID.
    pub fn alloc_domain(&mut self, mem: &mut impl TableMemory) -> Result<Domain, VtdError> {
        self.alloc_domain_with(self.default_config, mem)
    }

    /// A new, empty domain with a fresh ID and configuration `config` (one
    /// [`hwpt::hwpt_config`] accepted for this unit).
    pub fn alloc_domain_with(&mut self, config: DomainConfig, mem: &mut impl TableMemory) -> Result<Domain, VtdError> {
        let id = self.alloc_domain_id().ok_or(VtdError::NoDomainId)?;
        self.new_domain_with(id, config, mem).inspect_err(|_| self.free_domain_id(id))
    }

    /// The configuration of the unit's default paging domains.
    pub fn default_config(&self) -> DomainConfig {
        self.default_config
    }

    /// Largest leaf level of the default domains' tables (0 = 4K, 1 = 2M, 2 = 1G).
    pub fn domain_max_leaf_level(&self) -> usize {
        self.max_leaf_level_for(self.default_config.first_stage)
    }

    /// Largest leaf level of first-stage or second-stage tables: SLLPS for
    /// second-level tables; for first-stage tables 2M always and 1G only with
    /// CAP.FS1GP (bit 56).
    pub fn max_leaf_level_for(&self, first_stage: bool) -> usize {
        if first_stage {
            1 + (self.cap >> 56 & 1) as usize
        } else {
            self.max_leaf_level
        }
    }

    /// A new, empty domain in the format the unit's stage uses.
    pub fn new_domain(&self, id: u16, mem: &mut impl TableMemory) -> Result<Domain, VtdError> {
        self.new_domain_with(id, self.default_config, mem)
    }

    /// A new, empty domain with configuration `config`: first-stage x86
    /// paging (FLPM from its levels) or second-stage tables of its levels.
    pub fn new_domain_with(
        &self,
        id: u16,
        config: DomainConfig,
        mem: &mut impl TableMemory,
    ) -> Result<Domain, VtdError> {
        let leaf = self.max_leaf_level_for(config.first_stage);
        let table = if config.first_stage {
            let fmt = X86Paging::vtd_first_level(config.levels, leaf);
            DomainTable::First(PageTable::new(fmt, mem).map_err(VtdError::Map)?)
        } else {
            let fmt = VtdSecondLevel { levels: config.levels, max_leaf_level: leaf };
            DomainTable::Second(PageTable::new(fmt, mem).map_err(VtdError::Map)?)
        };
        Ok(Domain { id, table, config })
    }

    /// Points requester ID `rid` at `domain` and flushes the context cache.
    pub fn attach(&mut self, rid: u16, domain: &Domain, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        self.install(rid, Entry::Table { root: domain.table.root(), id: domain.id, config: domain.config }, mem)
    }

    /// Whether the unit can let DMA through untranslated (ECAP.PT).
    pub fn pass_through_supported(&self) -> bool {
        ECAP::PT.read(self.ecap) != 0
    }

    /// Lets requester ID `rid`'s DMA through untranslated (context entry
    /// TT = 10b, or PASID entry PGTT = 100b in scalable mode), tagged with
    /// domain ID `id`.
    pub fn attach_pass_through(&mut self, rid: u16, id: u16, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if !self.pass_through_supported() {
            return Err(VtdError::NotSupported("pass-through (ECAP.PT)"));
        }
        self.install(rid, Entry::PassThrough { id }, mem)
    }

    fn install(&mut self, rid: u16, entry: Entry, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.stage != Stage::Legacy {
            return self.attach_scalable(rid, entry, mem);
        }
        if matches!(entry, Entry::Table { config: DomainConfig { first_stage: true, .. }, .. }) {
            return Err(VtdError::NotSupported("first-stage tables in legacy mode"));
        }
        let bus = usize::from(rid >> 8);
        if self.context_tables[bus] == 0 {
            let ct = mem.alloc_table().ok_or(VtdError::NoMemory)?;
            self.context_tables[bus] = ct;
            // Root entry: 128 bits, low half at index 2*bus.
            mem.write(self.root, 2 * bus, context::root_entry(ct));
        }
        let (lo, hi) = match entry {
            Entry::Table { root, id, config } => context::context_entry(root, config.levels, id),
            Entry::PassThrough { id } => context::context_entry_pass_through(self.levels, id),
        };
        let ct = self.context_tables[bus];
        let devfn = usize::from(rid & 0xFF);
        let present = mem.read(ct, 2 * devfn) & 1 != 0;
        if present {
            // A present entry is never rewritten in place (the unit could
            // fetch half of each): it goes not-present, the caches forget it
            // and every translation made through it (any domain: global),
            // then the new one is written (VT-d §6.5.3.3).
            mem.write(ct, 2 * devfn, 0);
            self.invalidate_context_global(mem)?;
            self.invalidate_iotlb(None, mem)?;
        }
        mem.write(ct, 2 * devfn + 1, hi);
        mem.write(ct, 2 * devfn, lo); // present bit last
        if crate::tracing() {
            log::info!("vtd trace: context[{rid:#06x}] <- {lo:#018x} {hi:#018x}");
        }
        self.invalidate_context_global(mem)?;
        self.invalidate_iotlb(Some(entry.id()), mem)
    }

    /// Scalable mode: context entry → PASID directory → PASID table entry 0
    /// (RID_PASID) with `entry`'s translation.
    fn attach_scalable(&mut self, rid: u16, entry: Entry, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        let (bus, devfn) = (usize::from(rid >> 8), usize::from(rid & 0xFF));
        // Two context tables per bus: the root entry's low half for devfn 0–127,
        // its high half for 128–255.
        let half = devfn / 128;
        let tables = if half == 0 { &mut self.context_tables } else { &mut self.upper_context_tables };
        let ct = match tables[bus] {
            0 => {
                let ct = mem.alloc_table().ok_or(VtdError::NoMemory)?;
                tables[bus] = ct;
                mem.write(self.root, 2 * bus + half, context::scalable_root_half(ct));
                ct
            }
            ct => ct,
        };
        let (dir, table) = match self.pasid_tables.iter().find(|t| t.0 == rid) {
            Some(&(_, d, t)) => (d, t),
            None => {
                // Room for the record first; a frame taken is given back
                // if the second one is not there.
                self.pasid_tables.try_reserve(1).map_err(|_| VtdError::NoMemory)?;
                let d = mem.alloc_table().ok_or(VtdError::NoMemory)?;
                let Some(t) = mem.alloc_table() else {
                    mem.free_table(d);
                    return Err(VtdError::NoMemory);
                };
                self.pasid_tables.push((rid, d, t)); // reserved: no allocation
                (d, t)
            }
        };
        let pe = match entry {
            Entry::PassThrough { id } => context::pasid_entry_pass_through(self.levels, id),
            Entry::Table { root, id, config } if config.first_stage => {
                context::pasid_entry_first_stage(root, config.levels, id, config.snoop)
            }
            Entry::Table { root, id, config } => context::pasid_entry_second_stage(root, config.levels, id),
        };
        if mem.read(table, 0) & 1 != 0 {
            // As in legacy mode: the old PASID entry goes not-present and is
            // forgotten (PASID cache of its domain, IOTLB globally) first.
            let old_id = mem.read(table, 1) as u16;
            mem.write(table, 0, 0);
            self.invalidate_context_global(mem)?;
            self.submit(&[inv::pasid_cache_domain(old_id)], mem)?;
            self.invalidate_iotlb(None, mem)?;
        }
        for (i, q) in pe.iter().enumerate().rev() {
            mem.write(table, i, *q); // present bit (qword 0) last
        }
        mem.write(dir, 0, context::pasid_dir_entry(table));
        let ce = context::scalable_context_entry(dir);
        let at = 4 * (devfn % 128);
        for (i, q) in ce.iter().enumerate().rev() {
            mem.write(ct, at + i, *q);
        }
        if crate::tracing() {
            log::info!(
                "vtd trace: scalable context[{rid:#06x}] -> PASID dir {dir:#x} -> PASID table {table:#x}: {:#x} {:#x}",
                pe[0],
                pe[1]
            );
        }
        self.invalidate_context_global(mem)?;
        // Scalable mode always has QI; the PASID cache has no register interface (§6.5.2.2).
        if self.queue.is_some() {
            self.submit(&[inv::pasid_cache_domain(entry.id())], mem)?;
        }
        self.invalidate_iotlb(Some(entry.id()), mem)
    }

    /// Removes requester ID `rid`'s context entry (its DMA then faults).
    pub fn detach(&mut self, rid: u16, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        let devfn = usize::from(rid & 0xFF);
        if self.stage != Stage::Legacy {
            let bus = usize::from(rid >> 8);
            let ct = if devfn < 128 { self.context_tables[bus] } else { self.upper_context_tables[bus] };
            if ct != 0 {
                for i in 0..4 {
                    mem.write(ct, 4 * (devfn % 128) + i, 0);
                }
            }
            self.invalidate_context_global(mem)?;
            self.invalidate_iotlb(None, mem)?;
            if let Some(i) = self.pasid_tables.iter().position(|t| t.0 == rid) {
                let (_, d, t) = self.pasid_tables.swap_remove(i);
                mem.free_table(d);
                mem.free_table(t);
            }
            return Ok(());
        }
        let ct = self.context_tables[usize::from(rid >> 8)];
        if ct != 0 {
            mem.write(ct, 2 * devfn, 0);
            mem.write(ct, 2 * devfn + 1, 0);
        }
        self.invalidate_context_global(mem)?;
        self.invalidate_iotlb(None, mem)
    }

    /// Maps `[iova, iova + len)` → `pa` in `domain` (flushing first in caching mode).
    pub fn map(
        &mut self,
        domain: &mut Domain,
        iova: u64,
        pa: u64,
        len: u64,
        perms: Perms,
        mem: &mut impl TableMemory,
    ) -> Result<(), VtdError> {
        // Snooped second-stage domains: SNP (bit 11) in every leaf, which
        // VtdSecondLevel writes for Perms::CACHE (first stage: PGSNP instead).
        let perms = if domain.config.snoop && !domain.config.first_stage { perms | Perms::CACHE } else { perms };
        let g = domain.table.map(mem, iova, pa, len, perms).map_err(VtdError::Map)?;
        if self.caching_mode {
            // CAP.CM: the unit may have cached the not-present entries (§6.1).
            self.flush(domain.id, g, mem)
        } else {
            g.release(mem);
            Ok(())
        }
    }

    /// Unmaps `[iova, iova + len)` from `domain`, flushes the IOTLB, frees tables.
    pub fn unmap(
        &mut self,
        domain: &mut Domain,
        iova: u64,
        len: u64,
        mem: &mut impl TableMemory,
    ) -> Result<u64, VtdError> {
        let (n, g) = domain.table.unmap(mem, iova, len).map_err(VtdError::Map)?;
        self.flush(domain.id, g, mem)?;
        Ok(n)
    }

    /// Flushes what a gather covers — one page-selective invalidation sized to
    /// its range when the unit supports it (CAP.PSI, within CAP.MAMV), else the
    /// domain — then releases its tables.
    pub fn flush(&mut self, domain: u16, g: Gather, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if !g.is_empty() {
            self.invalidations += 1;
            let mamv = CAP::MAMV.read(self.cap) as u32;
            let psi = CAP::PSI.read(self.cap) != 0;
            match (self.queue.is_some(), psi, inv::address_mask(g.start, g.end.max(g.start + 1), mamv)) {
                (true, true, Some((base, am))) => self.submit(&[inv::iotlb_pages(domain, base, am)], mem)?,
                _ => self.invalidate_iotlb(Some(domain), mem)?,
            }
        }
        g.release(mem);
        Ok(())
    }

    /// Invalidates every IOTLB entry of `domain` (no table change needed).
    pub fn invalidate_domain(&mut self, domain: u16, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        self.invalidations += 1;
        self.invalidate_iotlb(Some(domain), mem)
    }

    /// Routes fault events to an MSI (`address`, `data`) and unmasks them (§10.4.10–10.4.13).
    pub fn enable_fault_interrupt(&self, address: u32, data: u32) {
        if crate::tracing() {
            log::info!("vtd trace: FEDATA <- {data:#x}, FEADDR <- {address:#x}, FECTL <- 0");
        }
        // 32-bit registers take 32-bit writes only (QEMU.md G5).
        self.regs().fedata.set(data);
        self.regs().feaddr.set(address);
        self.regs().feuaddr.set(0);
        self.regs().fectl.set(0); // IM = 0
    }

    /// Masks fault-event interrupts again.
    pub fn disable_fault_interrupt(&self) {
        self.regs().fectl.set(1 << 31);
    }

    /// Takes the next recorded fault, clearing it. A primary fault overflow
    /// (FSTS.PFO: every recording register was full, so faults were lost) is
    /// logged, counted in `fault_overflows` and cleared (§7.2.2).
    pub fn take_fault(&self) -> Option<FaultRecord> {
        let fsts = self.regs().fsts.extract();
        // Nothing pending, nothing lost: one register read (the common case).
        if !fsts.is_set(FSTS::PPF) && !fsts.is_set(FSTS::PFO) {
            return None;
        }
        if fsts.is_set(FSTS::PFO) {
            self.fault_overflows.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            log::warn!("vtd: primary fault overflow (FSTS.PFO): faults arrived while the recording registers were full and were lost");
            self.regs().fsts.write(FSTS::PFO::SET); // write-1-to-clear
        }
        for i in 0..self.layout.fault_record_count {
            let Some(r) = self.fault_record(i) else { break };
            let lo = r.lo.get();
            let hi = u64::from(r.hi_hi.get()) << 32 | u64::from(r.hi_lo.get());
            if let Some(rec) = FaultRecord::decode(lo, hi) {
                r.hi_hi.set(1 << 31); // F is write-1-to-clear
                return Some(rec);
            }
        }
        None
    }

    /// Whether the invalidation queue reported an error (FSTS.IQE).
    pub fn queue_error(&self) -> bool {
        self.regs().fsts.is_set(FSTS::IQE)
    }

    /// Frames the unit itself holds: root, context and PASID tables, the
    /// queue and its status page (domains' page tables not included).
    pub fn table_frames(&self) -> usize {
        let contexts = self.context_tables.iter().chain(self.upper_context_tables.iter()).filter(|c| **c != 0).count();
        1 + contexts + 2 * self.pasid_tables.len() + if self.queue.is_some() { 2 } else { 0 }
    }

    /// Physical address of the root table.
    pub fn root_table(&self) -> u64 {
        self.root
    }

    /// Turns the queue off (so register-based invalidation works again) and frees
    /// the unit's root, context and queue tables (translation must be off).
    pub fn release_tables(&mut self, mem: &mut impl TableMemory) {
        for (_, d, t) in self.pasid_tables.drain(..) {
            mem.free_table(d);
            mem.free_table(t);
        }
        if let Some(q) = self.queue.take() {
            let keep = self.regs().gsts.get() & 0x96FF_FFFF & !(1 << 26);
            self.regs().gcmd.set(keep);
            let _ = wait("queued invalidation disable", || self.regs().gsts.get() & (1 << 26) == 0);
            mem.free_table(q.base);
            mem.free_table(q.status);
        }
        for ct in self.context_tables.iter_mut().chain(self.upper_context_tables.iter_mut()).filter(|c| **c != 0) {
            mem.free_table(*ct);
            *ct = 0;
        }
        mem.free_table(self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table memory a refused unit must never touch.
    struct Untouched;

    impl TableMemory for Untouched {
        fn alloc_table(&mut self) -> Option<u64> {
            panic!("a unit with out-of-window registers allocated a table")
        }
        fn free_table(&mut self, _: u64) {
            panic!("free_table")
        }
        fn read(&self, _: u64, _: usize) -> u64 {
            panic!("read")
        }
        fn write(&mut self, _: u64, _: usize, _: u64) {
            panic!("write")
        }
    }

    /// A register page (plain memory) whose CAP and ECAP read `cap` and `ecap`.
    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    fn page(cap: u64, ecap: u64) -> alloc::boxed::Box<Page> {
        let mut p = alloc::boxed::Box::new(Page([0; 512]));
        p.0[1] = cap; // 0x08
        p.0[2] = ecap; // 0x10
        p
    }

    #[test]
    fn bring_up_refuses_out_of_window_offsets_before_touching_anything() {
        // QEMU's FRO/NFR, and an IRO one page out.
        let cap = (CAP::FRO.val(0x22) + CAP::SAGAW.val(4) + CAP::MGAW.val(47)).value;
        let regs = page(cap, ECAP::IRO.val(0x100).value);
        let base = regs.0.as_ptr() as u64;
        // SAFETY: `regs` is 4 KiB of plain memory that outlives the call; the unit is refused before any write.
        let r = unsafe { Unit::with_queue(base, 0x1000, &mut Untouched, false) };
        assert!(
            matches!(r, Err(VtdError::RegisterOutsideWindow { offset: 0x1000, end: 0x1010, window: 0x1000, .. })),
            "{:?}",
            r.as_ref().err()
        );
        // A window too small to read CAP from.
        // SAFETY: as above; nothing is read.
        let r = unsafe { Unit::new(base, 0x10, &mut Untouched) };
        assert!(matches!(r, Err(VtdError::RegisterOutsideWindow { offset: 0, window: 0x10, .. })));
        assert_eq!(regs.0[3..].iter().filter(|w| **w != 0).count(), 0, "no register written");
    }
}
