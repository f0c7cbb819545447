//! One remapping unit (legacy or scalable mode), and its domains:
//! second-stage tables, or first-stage tables in scalable mode.

pub use crate::config::Stage;
use crate::config::{self, DomainConfig};
use crate::context;
pub use crate::error::VtdError;
use crate::fault::FaultRecord;
use crate::invalidation::{self as inv, Descriptor, QueueError};
use crate::layout::Layout;
use crate::regs::{
    FaultRecordRegisters, IotlbRegisters, Registers, CAP, CCMD, ECAP, FECTL, FRCD_HI_HI, FSTS, GLOBAL, GLOBAL_ONE_SHOT,
    IOTLB, IQA, RTADDR,
};
use io_pgtable::formats::{VtdSecondLevel, X86Paging};
use io_pgtable::{Gather, PageTable, Perms, TableMemory};
use iommu::dma::DmaRegion;
use iommu::mmio::{BlockRef, MmioWindow};
use iommu::ring::{Indexing, ProducerRing};
use iommu::trace::{History, Tracer};
use tock_registers::interfaces::{Readable, Writeable};

/// The one way this driver writes a register: through the register trace
/// ([`iommu::trace::write`]), named as VT-d §10.4 names it and decoded by
/// [`crate::regs::decode`].
fn wr<R>(t: Tracer, reg: &R, name: &'static str, value: R::T)
where
    R: Writeable,
    R::T: Into<u64>,
{
    iommu::trace::write(t, reg, name, value, crate::regs::decode)
}

/// Descriptors the queue history keeps ([`Unit::describe_queue`]).
pub const HISTORY: usize = 32;

/// Polls of a status bit before a wait is declared failed.
const MAX_POLLS: u32 = 1_000_000;

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

/// Registers read for a report ([`Unit::status_registers`]).
#[derive(Debug, Clone, Copy)]
pub struct StatusRegisters {
    /// VER.
    pub version: u64,
    /// GSTS.
    pub gsts: u64,
    /// FSTS.
    pub fsts: u64,
    /// FECTL.
    pub fectl: u64,
    /// RTADDR.
    pub rtaddr: u64,
    /// IQA.
    pub iqa: u64,
    /// IQH.
    pub iqh: u64,
    /// IQT.
    pub iqt: u64,
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
    /// The register window the DRHD describes.
    window: MmioWindow,
    /// The fixed registers, checked inside the window at bring-up.
    regs: BlockRef<Registers>,
    /// The IOTLB register pair at ECAP.IRO × 16, checked at bring-up.
    iotlb: BlockRef<IotlbRegisters>,
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
    /// The unit's register-trace handle (name `vtdN`).
    trace: Tracer,
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

/// The invalidation queue: one 4 KiB page of 256 descriptors (a
/// [`ProducerRing`] with IQT / IQH byte offsets) and a status word.
struct Queue {
    ring: ProducerRing,
    status: DmaRegion,
    seq: u32,
    /// The last descriptors submitted (whether tracing or not).
    history: History<2, HISTORY>,
}

/// A descriptor decoded for the trace ([`inv::decode`]).
struct Desc(u64, u64);

impl core::fmt::Display for Desc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        inv::decode(self.0, self.1, f)
    }
}

/// log2 of the descriptors in the one-page queue (QS = 0: 256 of 128 bits).
const QUEUE_LOG2: u32 = 8;

fn wait(what: &'static str, done: impl FnMut() -> bool) -> Result<(), VtdError> {
    iommu::ring::ProducerRing::wait(MAX_POLLS, done).map_err(|_| VtdError::Timeout(what))
}

/// GSTS with the one-shot bits cleared: what GCMD is written with to keep
/// the persistent state (§10.4.4).
fn persistent(gsts: u32) -> u32 {
    gsts & !GLOBAL_ONE_SHOT
}

impl Unit {
    fn regs(&self) -> &Registers {
        &self.regs
    }

    /// Where ECAP.IRO and CAP.FRO / CAP.NFR put the IOTLB and fault-recording
    /// registers (checked against the register window at bring-up).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The IOTLB register pair at ECAP.IRO × 16.
    fn iotlb(&self) -> &IotlbRegisters {
        &self.iotlb
    }

    /// Fault-recording register `i`, if the unit has that many (CAP.NFR + 1).
    fn fault_record(&self, i: usize) -> Option<&FaultRecordRegisters> {
        if i >= self.layout.fault_record_count {
            return None;
        }
        let off = (self.layout.fault_records + i * core::mem::size_of::<FaultRecordRegisters>()) as u64;
        // `check_window` placed all CAP.NFR + 1 records inside the window; the window checks again.
        self.window.block(off).ok()
    }

    /// Takes over the unit whose registers `window` covers (the DRHD's
    /// register set, its size 2^n pages, §8.3): checks that the registers
    /// CAP and ECAP locate lie in that window
    /// ([`crate::layout::check_window`]; [`VtdError::RegisterOutsideWindow`]
    /// otherwise, before anything is written), installs an empty root table
    /// and invalidates the caches. Translation stays off. Nothing else may
    /// program the unit while the `Unit` lives.
    pub fn new(window: MmioWindow, mem: &mut impl TableMemory) -> Result<Unit, VtdError> {
        Self::with_queue(window, mem, true)
    }

    /// As [`Unit::new`]; with `use_queue` false a legacy-mode unit invalidates
    /// through the CCMD/IOTLB registers even when it has a queue (to exercise
    /// that path on units that all have QI, like QEMU's). Scalable mode needs
    /// the queue (PASID-cache invalidation has no register form) and keeps it.
    pub fn with_queue(window: MmioWindow, mem: &mut impl TableMemory, use_queue: bool) -> Result<Unit, VtdError> {
        let outside = |register, offset: u64, end: u64| VtdError::RegisterOutsideWindow {
            register,
            offset,
            end,
            window: window.len(),
        };
        // Not even CAP and ECAP can be read without the fixed registers.
        let regs =
            window.checked::<Registers>(0).map_err(|e| outside("fixed registers (VER_REG..ICS_REG)", 0, e.len))?;
        let (cap, ecap) = (regs.cap.get(), regs.ecap.get());
        let layout = crate::layout::check_window(cap, ecap, usize::try_from(window.len()).unwrap_or(usize::MAX))?;
        let iotlb_at = layout.iotlb as u64;
        let iotlb_end = iotlb_at + core::mem::size_of::<IotlbRegisters>() as u64;
        let iotlb = window
            .checked::<IotlbRegisters>(iotlb_at)
            .map_err(|_| outside("IOTLB registers (ECAP.IRO)", iotlb_at, iotlb_end))?;
        let levels = config::sagaw_default_levels(cap).ok_or(VtdError::NoAddressWidth)?;
        let stage = match (ECAP::SMTS.read(ecap) != 0, ECAP::SLTS.read(ecap) != 0, ECAP::FLTS.read(ecap) != 0) {
            (true, true, _) => Stage::ScalableSecond,
            (true, false, true) => Stage::ScalableFirst,
            _ => Stage::Legacy,
        };
        let default_config = config::default_config(cap, stage).ok_or(VtdError::NoAddressWidth)?;
        let sllps = CAP::SLLPS.read(cap);
        let max_leaf_level = if sllps & 2 != 0 {
            2
        } else if sllps & 1 != 0 {
            1
        } else {
            0
        };
        let root = mem.alloc_table().ok_or(VtdError::NoMemory)?;
        let base = window.base();
        let mut unit = Unit {
            window,
            regs,
            iotlb,
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
            trace: Tracer::register(iommu::UnitKind::Vtd),
        };
        // Firmware with pre-boot DMA protection hands over with remapping (and its
        // queue) on: take both down before installing our tables, translation first,
        // then the queue (IQA may change only while QI is off, VT-d §6.5.2).
        // (QEMU's OVMF never does this, so this path is not exercised by the QEMU tests.)
        let gsts = unit.regs().gsts.extract();
        if gsts.is_set(GLOBAL::TE) {
            log::warn!("vtd: unit at {base:#x}: firmware left DMA remapping on; turning it off to take over");
            unit.disable()?;
        }
        if gsts.is_set(GLOBAL::QIE) {
            unit.queue_disable()?;
        }
        // RTADDR.TTM (bits 11:10): 00 legacy root table, 01 scalable-mode root table.
        let ttm = if unit.stage == Stage::Legacy { RTADDR::TTM::Legacy } else { RTADDR::TTM::Scalable };
        let rtaddr = iommu::desc::from_place(RTADDR::RTA, root) + ttm;
        wr(unit.trace, &unit.regs().rtaddr, "RTADDR", rtaddr.value);
        unit.command(GLOBAL::SRTP::SET, "set root table pointer", |s| GLOBAL::SRTP.is_set(s))?;
        if ECAP::QI.read(ecap) != 0 && (use_queue || unit.stage != Stage::Legacy) {
            let region = DmaRegion::alloc_frame(mem).ok_or(VtdError::NoMemory)?;
            let Some(status) = DmaRegion::alloc_frame(mem) else {
                region.free_frame(mem);
                return Err(VtdError::NoMemory);
            };
            let ring = match ProducerRing::new(region, QUEUE_LOG2, 2, Indexing::Offsets) {
                Ok(ring) => ring,
                Err(_) => {
                    region.free_frame(mem);
                    status.free_frame(mem);
                    return Err(VtdError::NoMemory);
                }
            };
            wr(unit.trace, &unit.regs().iqt, "IQT", ring.tail_offset());
            // QS = 0 (one page), DW = 0 (128-bit descriptors).
            let iqa = iommu::desc::from_place(IQA::IQA, region.base()) + IQA::QS.val(0) + IQA::DW.val(0);
            wr(unit.trace, &unit.regs().iqa, "IQA", iqa.value);
            unit.command(GLOBAL::QIE::SET, "queued invalidation enable", |s| GLOBAL::QIE.is_set(s))?;
            unit.queue = Some(Queue { ring, status, seq: 0, history: History::new() });
        }
        unit.invalidate_context_global(mem)?;
        unit.invalidate_iotlb(None, mem)?;
        Ok(unit)
    }

    /// Whether invalidations go through the queue.
    pub fn queued(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `descs` plus a wait descriptor and waits for the unit to write
    /// its status; a batch longer than the queue holds goes in several
    /// rounds, each behind its own wait.
    fn submit(&mut self, descs: &[Descriptor], mem: &mut impl TableMemory) -> Result<(), VtdError> {
        let Some(q) = self.queue.as_ref() else { return Ok(()) };
        // Room for one round: every slot the ring offers but the wait's.
        let round = (q.ring.capacity() as usize).saturating_sub(1).max(1);
        if descs.is_empty() {
            return self.submit_round(&[], mem);
        }
        for chunk in descs.chunks(round) {
            self.submit_round(chunk, mem)?;
        }
        Ok(())
    }

    /// One round of [`Unit::submit`]: `descs` (fewer than the queue's
    /// capacity) and a wait, then the bounded wait for its status write.
    fn submit_round<M: TableMemory>(&mut self, descs: &[Descriptor], mem: &mut M) -> Result<(), VtdError> {
        let t = self.trace;
        let regs = self.regs;
        let Some(q) = self.queue.as_mut() else { return Ok(()) };
        q.seq = q.seq.wrapping_add(1);
        let seq = q.seq;
        q.status.write_u64(mem, 0, 0).map_err(|_| VtdError::NoMemory)?;
        let wait_desc = inv::wait(seq, q.status.base());
        for &(lo, hi) in descs.iter().chain(core::iter::once(&wait_desc)) {
            let slot = q.ring.tail_index();
            q.ring.push(mem, &[lo, hi]).map_err(|_| VtdError::NotSupported("a batch larger than the queue"))?;
            let n = q.history.record(slot, [lo, hi]);
            if t.on() {
                t.emit_seq(n, format_args!("IQ[{slot}] submit {}", Desc(lo, hi)));
            }
        }
        q.ring.publish(|r| wr(t, &regs.iqt, "IQT", r.tail_offset()));
        let status = q.status;
        // The unit wrote the wait's status (a read refused by the region counts as not yet).
        let done = |mem: &M| status.read_u64(mem, 0).is_ok_and(|v| v as u32 == seq);
        // The status word first: it is memory, FSTS is a (slow) register read.
        let waited = ProducerRing::wait(MAX_POLLS, || done(mem) || QueueError::from_fsts(regs.fsts.get()).is_some());
        // The wait came back (or the unit stopped): as before, the driver
        // takes the queue as drained whatever happens next.
        q.ring.retire_all();
        if waited.is_err() {
            iommu::trace!(t, "IQ wait timed out (SDATA={seq:#x})");
        }
        waited.map_err(|_| VtdError::Timeout("invalidation wait descriptor"))?;
        // The wait's status written: every descriptor before it ran without
        // error (a descriptor error stops the queue at that descriptor, so
        // the wait after it never completes, §6.5.2.10; device-TLB errors,
        // ITE and ICE, need descriptors this driver never sends). FSTS is read
        // only when it did not: one register read (an exit to the emulator
        // under QEMU) fewer per invalidation.
        if done(mem) {
            iommu::trace!(t, "IQ wait done (SDATA={seq:#x})");
            return Ok(());
        }
        let Some(error) = QueueError::from_fsts(regs.fsts.get()) else { return Ok(()) };
        let head = q.ring.index_of_offset(regs.iqh.get());
        let mut bad = [0u64; 2];
        q.ring.read_slot(mem, head, &mut bad).map_err(|_| VtdError::NoMemory)?;
        let [lo, hi] = bad;
        log::error!("vtd: invalidation queue error {} at descriptor {head}: {lo:#018x} {hi:#018x}", error.name());
        if error == QueueError::InvalidDescriptor {
            // The unit stopped at the bad descriptor (§6.5.2.10): put a valid
            // one in its place (a global IOTLB flush never does harm), clear
            // IQE and ring the doorbell again so the rest, and our wait, run.
            let (glo, ghi) = inv::iotlb_global();
            q.ring.write_slot(mem, head, &[glo, ghi]).map_err(|_| VtdError::NoMemory)?;
            let n = q.history.record(head, [glo, ghi]);
            if t.on() {
                t.emit_seq(n, format_args!("IQ[{head}] replace {}", Desc(glo, ghi)));
            }
        }
        wr(t, &regs.fsts, "FSTS", error.fsts_bit());
        q.ring.publish(|r| wr(t, &regs.iqt, "IQT", r.tail_offset()));
        // After ITE the unit dropped pending waits; ours may never complete.
        if error != QueueError::TimeOut {
            ProducerRing::wait(MAX_POLLS, || done(mem))
                .map_err(|_| VtdError::Timeout("invalidation wait after a queue error"))?;
        }
        Err(VtdError::Queue { error, head: head as usize })
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
        self.gcmd(persistent(self.regs().gsts.get()) | bit.value, what, done)
    }

    /// Writes `value` to GCMD and waits for `done(GSTS)` (§10.4.4, §10.4.5).
    fn gcmd(&self, value: u32, what: &'static str, done: impl Fn(u32) -> bool) -> Result<(), VtdError> {
        wr(self.trace, &self.regs().gcmd, "GCMD", value);
        let r = wait(what, || done(self.regs().gsts.get()));
        let gsts = self.regs().gsts.get();
        iommu::trace!(
            self.trace,
            "GSTS {gsts:#x}{}: {what} {}",
            iommu::trace::Fields(crate::regs::decode, "GCMD", u64::from(gsts)),
            if r.is_ok() { "done" } else { "timed out" }
        );
        r
    }

    /// The unit's most recent invalidation descriptors, oldest first, one per
    /// line (`#seq IQ[slot] type (fields)`); a unit without a queue says so.
    pub fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        match &self.queue {
            Some(q) => q.history.describe("IQ", out, |w, o| inv::decode(w[0], w[1], o)),
            None => writeln!(out, "no invalidation queue: register-based invalidation (CCMD, IOTLB)"),
        }
    }

    /// The unit's register-trace handle.
    pub fn tracer(&self) -> Tracer {
        self.trace
    }

    fn invalidate_context_global(&mut self, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_some() {
            return self.submit(&[inv::context_global()], mem);
        }
        wr(self.trace, &self.regs().ccmd, "CCMD", (CCMD::ICC::SET + CCMD::CIRG.val(1)).value);
        let r = wait("context-cache invalidation", || !self.regs().ccmd.is_set(CCMD::ICC));
        iommu::trace!(self.trace, "CCMD ICC {}", if r.is_ok() { "done" } else { "timed out" });
        r
    }

    /// Invalidates the IOTLB for one domain (or all with `None`), draining reads and writes.
    fn invalidate_iotlb(&mut self, domain: Option<u16>, mem: &mut impl TableMemory) -> Result<(), VtdError> {
        if self.queue.is_some() {
            let d = domain.map_or_else(inv::iotlb_global, inv::iotlb_domain);
            return self.submit(&[d], mem);
        }
        let v = match domain {
            Some(did) => IOTLB::IVT::SET + IOTLB::IIRG.val(2) + IOTLB::DID.val(u64::from(did)),
            None => IOTLB::IVT::SET + IOTLB::IIRG.val(1),
        };
        wr(self.trace, &self.iotlb().iotlb, "IOTLB", (v + IOTLB::DR::SET + IOTLB::DW::SET).value);
        let r = wait("IOTLB invalidation", || !self.iotlb().iotlb.is_set(IOTLB::IVT));
        iommu::trace!(self.trace, "IOTLB IVT {}", if r.is_ok() { "done" } else { "timed out" });
        r
    }

    /// Whether DMA remapping is on (GSTS.TES).
    pub fn enabled(&self) -> bool {
        self.regs().gsts.is_set(GLOBAL::TE)
    }

    /// Whether the unit can remap interrupts (ECAP.IR, §10.4.3).
    pub fn interrupt_remapping_supported(&self) -> bool {
        ECAP::IR.read(self.ecap) != 0
    }

    /// Whether interrupt remapping is on (GSTS.IRES).
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.regs().gsts.is_set(GLOBAL::IRE)
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
        wr(self.trace, &self.regs().irta, "IRTA", irta);
        self.command(GLOBAL::SIRTP::SET, "set interrupt remap table pointer", |s| GLOBAL::SIRTP.is_set(s))?;
        self.submit(&[crate::intremap::iec_global()], mem)
    }

    /// Turns interrupt remapping on (GCMD.IRE). CFI stays clear, so
    /// compatibility-format interrupts are blocked (§5.1.4; QEMU does not
    /// model CFI and lets them through, docs/qemu.md).
    pub fn enable_interrupt_remapping(&self) -> Result<(), VtdError> {
        self.command(GLOBAL::IRE::SET, "interrupt remapping enable", |s| GLOBAL::IRE.is_set(s))
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
        self.command(GLOBAL::TE::SET, "translation enable", |s| GLOBAL::TE.is_set(s))
    }

    /// Turns DMA remapping off.
    pub fn disable(&self) -> Result<(), VtdError> {
        let keep = persistent(self.regs().gsts.get()) & !GLOBAL::TE::SET.value;
        self.gcmd(keep, "translation disable", |s| !GLOBAL::TE.is_set(s))
    }

    /// Turns queued invalidation off (GCMD.QIE clear) and waits for GSTS.QIES.
    fn queue_disable(&self) -> Result<(), VtdError> {
        let keep = persistent(self.regs().gsts.get()) & !GLOBAL::QIE::SET.value;
        self.gcmd(keep, "queued invalidation disable", |s| !GLOBAL::QIE.is_set(s))
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
    /// [`crate::user_data::hwpt_config`] accepted for this unit).
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
            1 + CAP::FS1GP.read(self.cap) as usize
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
        let present = context::context_present(mem.read(ct, 2 * devfn));
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
        iommu::trace!(self.trace, "context[{rid:#06x}] <- {lo:#018x} {hi:#018x}{}", context::Decoded(lo, hi));
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
        if context::pasid_entry_present(mem.read(table, 0)) {
            // As in legacy mode: the old PASID entry goes not-present and is
            // forgotten (PASID cache of its domain, IOTLB globally) first.
            let old_id = context::pasid_entry_domain(mem.read(table, 1));
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
        iommu::trace!(
            self.trace,
            "scalable context[{rid:#06x}] <- PASID dir {dir:#x}; PASID table {table:#x}[0] <- {:#018x} {:#018x} {:#018x}",
            pe[0],
            pe[1],
            pe[2]
        );
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
        self.map_runs(domain, &mut core::iter::once((iova, pa, len)), perms, mem).map(|_| ()).map_err(|(e, _)| e)
    }

    /// Maps each `(iova, pa, len)` of `runs` in `domain` as [`Unit::map`]
    /// does, with one flush for them all in caching mode (of the range they
    /// span). Returns how many runs were mapped; on failure, the error and
    /// how many were mapped before it (those are flushed too).
    pub fn map_runs(
        &mut self,
        domain: &mut Domain,
        runs: &mut dyn Iterator<Item = (u64, u64, u64)>,
        perms: Perms,
        mem: &mut impl TableMemory,
    ) -> Result<usize, (VtdError, usize)> {
        // Snooped second-stage domains: SNP (bit 11) in every leaf, which
        // VtdSecondLevel writes for Perms::CACHE (first stage: PGSNP instead).
        let perms = if domain.config.snoop && !domain.config.first_stage { perms | Perms::CACHE } else { perms };
        let mut all = Gather::default();
        let mut done = 0;
        let mut failed = None;
        for (iova, pa, len) in runs {
            iommu::trace!(self.trace, "map domain={:#x} iova={iova:#x} pa={pa:#x} len={len:#x} {perms:?}", domain.id);
            match domain.table.map(mem, iova, pa, len, perms) {
                Ok(g) if self.caching_mode => {
                    if let Err(g) = all.try_merge(g) {
                        // No heap to merge the two: this one flushed on its own.
                        if let Err(e) = self.flush(domain.id, g, mem) {
                            failed = Some(e);
                            done += 1;
                            break;
                        }
                    }
                }
                Ok(g) => g.release(mem),
                Err(e) => {
                    failed = Some(VtdError::Map(e));
                    break;
                }
            }
            done += 1;
        }
        // CAP.CM: the unit may have cached the not-present entries (§6.1).
        let flushed = if self.caching_mode { self.flush(domain.id, all, mem) } else { Ok(()) };
        match (failed, flushed) {
            (Some(e), _) | (None, Err(e)) => Err((e, done)),
            (None, Ok(())) => Ok(done),
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
        // 32-bit registers take 32-bit writes only (QEMU.md G5).
        wr(self.trace, &self.regs().fedata, "FEDATA", data);
        wr(self.trace, &self.regs().feaddr, "FEADDR", address);
        wr(self.trace, &self.regs().feuaddr, "FEUADDR", 0);
        wr(self.trace, &self.regs().fectl, "FECTL", FECTL::IM::CLEAR.value);
    }

    /// Masks fault-event interrupts again.
    pub fn disable_fault_interrupt(&self) {
        wr(self.trace, &self.regs().fectl, "FECTL", FECTL::IM::SET.value);
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
            wr(self.trace, &self.regs().fsts, "FSTS", FSTS::PFO::SET.value); // write-1-to-clear
        }
        for i in 0..self.layout.fault_record_count {
            let Some(r) = self.fault_record(i) else { break };
            let lo = r.lo.get();
            let hi = u64::from(r.hi_hi.get()) << 32 | u64::from(r.hi_lo.get()); // bits 127:64 from two 32-bit reads
            if let Some(rec) = FaultRecord::decode(lo, hi) {
                iommu::trace!(self.trace, "FRCD[{i}] fault recorded: {rec}");
                // F is write-1-to-clear.
                iommu::trace::write_at(
                    self.trace,
                    &r.hi_hi,
                    "FRCD_HI",
                    i,
                    FRCD_HI_HI::F::SET.value,
                    crate::regs::decode,
                );
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

    /// VER, GSTS, FSTS, FECTL, RTADDR and the queue registers as they read now.
    pub fn status_registers(&self) -> StatusRegisters {
        let r = self.regs();
        StatusRegisters {
            version: u64::from(r.version.get()),
            gsts: u64::from(r.gsts.get()),
            fsts: u64::from(r.fsts.get()),
            fectl: u64::from(r.fectl.get()),
            rtaddr: r.rtaddr.get(),
            iqa: r.iqa.get(),
            iqh: r.iqh.get(),
            iqt: r.iqt.get(),
        }
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
            let _ = self.queue_disable();
            q.ring.region().free_frame(mem);
            q.status.free_frame(mem);
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

    /// A fake register page whose CAP and ECAP read `cap` and `ecap`.
    fn page(cap: u64, ecap: u64) -> iommu::mmio::FakeMmio {
        let p = iommu::mmio::FakeMmio::new(0x1000).unwrap();
        p.write_u64(0x08, cap);
        p.write_u64(0x10, ecap);
        p
    }

    #[test]
    fn every_register_write_goes_through_the_trace() {
        for (file, src) in [("unit.rs", include_str!("unit.rs")), ("driver.rs", include_str!("driver.rs"))] {
            let bad = iommu::trace::untraced_writes(src, &["regs", "iotlb()", "hi_hi"]);
            assert!(bad.is_empty(), "{file}: register writes outside `wr`: {bad:?}");
        }
        // The check itself finds the old form.
        assert_eq!(iommu::trace::untraced_writes("unit.regs().rtaddr.write(rtaddr);", &["regs"]).len(), 1);
    }

    #[test]
    fn bring_up_refuses_out_of_window_offsets_before_touching_anything() {
        // QEMU's FRO/NFR, and an IRO one page out.
        let cap = (CAP::FRO.val(0x22) + CAP::SAGAW.val(4) + CAP::MGAW.val(47)).value;
        let regs = page(cap, ECAP::IRO.val(0x100).value);
        let r = Unit::with_queue(regs.window(), &mut Untouched, false);
        assert!(
            matches!(r, Err(VtdError::RegisterOutsideWindow { offset: 0x1000, end: 0x1010, window: 0x1000, .. })),
            "{:?}",
            r.as_ref().err()
        );
        // A window too small to read CAP from.
        let r = Unit::new(regs.window().sub(0, 0x10).unwrap(), &mut Untouched);
        assert!(matches!(r, Err(VtdError::RegisterOutsideWindow { offset: 0, window: 0x10, .. })));
        assert_eq!((3..512).filter(|w| regs.read_u64(w * 8) != 0).count(), 0, "no register written");
    }
}
