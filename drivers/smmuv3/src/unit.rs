//! One SMMU: probe, stream table, command and event queues, STE programming.

use crate::cmd::{self, Command, CommandError};
pub use crate::error::SmmuError;
use crate::event::Event;
use crate::regs::{
    Page0, Page1, CMDQ_CONS, CR0, CR1, CR2, EVENTQ_CONS, EVENTQ_PROD, GBPA, GERROR, IDR0, IDR1, IDR3, IDR5,
};
use crate::regs::{PAGE1, STRTAB_BASE_CFG};
use crate::ste::{self, Ste};
use iommu::dma::DmaRegion;
use iommu::mmio::{BlockRef, MmioWindow};
use iommu::ring::{Indexing, ProducerRing};
use iommu::trace::{History, Tracer};
use iommu::DmaMemory;
use tock_registers::interfaces::{Readable, Writeable};

/// The one way this driver writes a register: through the register trace
/// ([`iommu::trace::write`]), named as SMMUv3 §6.3 names it and decoded by
/// [`crate::regs::decode`].
fn wr<R>(t: Tracer, reg: &R, name: &'static str, value: R::T)
where
    R: Writeable,
    R::T: Into<u64>,
{
    iommu::trace::write(t, reg, name, value, crate::regs::decode)
}

/// Commands the queue history keeps ([`Smmu::describe_queue`]).
pub const HISTORY: usize = 32;

/// Polls of a status register before a wait is declared failed.
const MAX_POLLS: u32 = 1_000_000;

/// Stream IDs resolved by a level-2 table: 64 STEs of 64 bytes fill one frame.
const SPLIT: u32 = 6;

fn wait(what: &'static str, done: impl FnMut() -> bool) -> Result<(), SmmuError> {
    iommu::ring::ProducerRing::wait(MAX_POLLS, done).map_err(|_| SmmuError::Timeout(what))
}

/// Words of an event record (§7.3: 32 bytes).
const EVENT_WORDS: usize = 4;

/// Words of a command (§4: 16 bytes).
const COMMAND_WORDS: usize = 2;

/// A command decoded for the trace ([`cmd::decode`]).
struct Cmd<'a>(&'a Command);

impl core::fmt::Display for Cmd<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        cmd::decode(self.0, f)
    }
}

/// Frames for `1 << log2` entries of `words` words (at least one).
fn queue_frames(words: usize, log2: u32) -> usize {
    ((words * 8) << log2).div_ceil(4096)
}

/// The event queue, which the SMMU produces and the driver consumes:
/// `1 << log2` records, the consumer index carrying a wrap bit (§3.5).
struct EventQueue {
    region: DmaRegion,
    log2: u32,
    /// The consumer index with its wrap bit.
    index: u32,
}

impl EventQueue {
    /// First word of the record at `index`.
    fn slot(&self, index: u32) -> usize {
        (index & ((1 << self.log2) - 1)) as usize * EVENT_WORDS
    }

    fn next(&self, index: u32) -> u32 {
        (index + 1) & ((2 << self.log2) - 1)
    }
}

/// The stream table: linear, or two levels with one-frame level-2 tables
/// (`l2[i]`: physical address of the table of level-1 descriptor `i`, 0 when none).
enum StreamTable {
    Linear { region: DmaRegion },
    TwoLevel { l1: DmaRegion, l2: alloc::vec::Vec<u64> },
}

/// An SMMUv3 and its in-memory structures.
pub struct Smmu {
    page0: BlockRef<Page0>,
    page1: BlockRef<Page1>,
    /// IDR0–IDR5 as read at probe.
    pub idr: [u32; 6],
    /// AIDR.
    pub aidr: u32,
    /// IIDR (implementer, revision, product).
    pub iidr: u32,
    /// Stream ID bits the stream table covers.
    pub sid_bits: u32,
    table: StreamTable,
    cmdq: ProducerRing,
    eventq: EventQueue,
    /// Commands issued so far (CMD_SYNC included).
    pub commands: u64,
    /// Event-queue overflows seen (events lost).
    pub event_overflows: u64,
    /// The unit's register-trace handle (name `smmuN`).
    trace: Tracer,
    /// The last commands submitted (whether tracing or not).
    history: History<COMMAND_WORDS, HISTORY>,
}

impl Smmu {
    fn page0(&self) -> &Page0 {
        &self.page0
    }

    fn page1(&self) -> &Page1 {
        &self.page1
    }

    /// Takes over the SMMU whose register window, as the firmware described
    /// it (128 KiB architected: page 0 and page 1, §6), is `window`: checks
    /// the window holds every
    /// register the driver uses ([`crate::regs::check_window`];
    /// [`SmmuError::RegisterOutsideWindow`] before any access otherwise),
    /// installs queues and an empty stream table, turns the command and
    /// event queues on and invalidates the caches. Translation (SMMUEN)
    /// stays off. Nothing else may program the SMMU meanwhile.
    pub fn new(window: MmioWindow, mem: &mut impl DmaMemory) -> Result<Smmu, SmmuError> {
        Self::with_options(window, mem, false)
    }

    /// As [`Smmu::new`]; `linear` asks for a linear stream table even where
    /// 2-level ones are supported (to test that path on QEMU, whose SMMU has both).
    pub fn with_options(window: MmioWindow, mem: &mut impl DmaMemory, linear: bool) -> Result<Smmu, SmmuError> {
        crate::regs::check_window(window.len())?;
        // `check_window` found both blocks inside the window; what is left to refuse is a misaligned base.
        let misaligned = |register, offset: u64, size: usize| SmmuError::RegisterOutsideWindow {
            register,
            offset,
            end: offset + size as u64,
            window: window.len(),
        };
        let page0 = window
            .checked::<Page0>(0)
            .map_err(|_| misaligned("page 0 registers (IDR0..EVENTQ_BASE)", 0, core::mem::size_of::<Page0>()))?;
        let page1 = window.checked::<Page1>(PAGE1).map_err(|_| {
            misaligned("page 1 event queue indices (EVENTQ_PROD, EVENTQ_CONS)", PAGE1, core::mem::size_of::<Page1>())
        })?;
        let p0 = &*page0;
        let idr = [p0.idr0.get(), p0.idr1.get(), p0.idr2.get(), p0.idr3.get(), p0.idr4.get(), p0.idr5.get()];
        if IDR0::TTF.read(idr[0]) & 2 == 0 {
            return Err(SmmuError::Unsupported("AArch64 translation tables (IDR0.TTF)"));
        }
        if IDR5::GRAN4K.read(idr[5]) == 0 {
            return Err(SmmuError::Unsupported("the 4 KiB granule (IDR5.GRAN4K)"));
        }
        if IDR0::S1P.read(idr[0]) == 0 && IDR0::S2P.read(idr[0]) == 0 {
            return Err(SmmuError::Unsupported("any translation stage (IDR0.S1P/S2P)"));
        }
        if IDR0::COHACC.read(idr[0]) == 0 {
            // Tables and queues would need cache maintenance this driver does not do.
            return Err(SmmuError::Unsupported("coherent table walks (IDR0.COHACC)"));
        }
        let sid_bits = IDR1::SIDSIZE.read(idr[1]);
        let two_level = IDR0::ST_LEVEL.read(idr[0]) == 1 && sid_bits > SPLIT && !linear;
        let table = if two_level {
            let l1_frames = ((8usize << (sid_bits - SPLIT)).div_ceil(4096)).next_power_of_two();
            let l1 = DmaRegion::alloc_contiguous(mem, l1_frames).ok_or(SmmuError::NoMemory)?;
            StreamTable::TwoLevel { l1, l2: alloc::vec![0; 1 << (sid_bits - SPLIT)] }
        } else {
            let frames = ((64usize << sid_bits).div_ceil(4096)).next_power_of_two();
            let region = DmaRegion::alloc_contiguous(mem, frames).ok_or(SmmuError::NoMemory)?;
            StreamTable::Linear { region }
        };
        let cmdq_log2 = IDR1::CMDQS.read(idr[1]).min(8); // 256 commands: one frame
        let eventq_log2 = IDR1::EVENTQS.read(idr[1]).min(7); // 128 events: one frame
        let cmdq_region =
            DmaRegion::alloc_contiguous(mem, queue_frames(COMMAND_WORDS, cmdq_log2)).ok_or(SmmuError::NoMemory)?;
        let cmdq = ProducerRing::new(cmdq_region, cmdq_log2, COMMAND_WORDS, Indexing::WrapBit)
            .map_err(|_| SmmuError::Unsupported("a command queue of that size (IDR1.CMDQS)"))?;
        let eventq_region =
            DmaRegion::alloc_contiguous(mem, queue_frames(EVENT_WORDS, eventq_log2)).ok_or(SmmuError::NoMemory)?;
        let eventq = EventQueue { region: eventq_region, log2: eventq_log2, index: 0 };
        let t = Tracer::register(iommu::UnitKind::Smmuv3);
        let mut smmu = Smmu {
            page0,
            page1,
            idr,
            aidr: p0.aidr.get(),
            iidr: p0.iidr.get(),
            sid_bits,
            table,
            cmdq,
            eventq,
            commands: 0,
            event_overflows: 0,
            trace: t,
            history: History::new(),
        };
        smmu.set_cr0(0, "CR0 disable")?;
        // While SMMUEN is 0, transactions follow GBPA: abort them (default
        // deny from the moment the driver owns the SMMU, §6.3.14).
        if !p0.gbpa.is_set(GBPA::ABORT) {
            wr(t, &p0.gbpa, "GBPA", p0.gbpa.get() | (GBPA::ABORT::SET + GBPA::UPDATE::SET).value);
            wait("GBPA update", || !p0.gbpa.is_set(GBPA::UPDATE))?;
            iommu::trace!(t, "GBPA update done");
        }
        let cr1 = CR1::QUEUE_IC.val(1)
            + CR1::QUEUE_OC.val(1)
            + CR1::QUEUE_SH.val(3)
            + CR1::TABLE_IC.val(1)
            + CR1::TABLE_OC.val(1)
            + CR1::TABLE_SH.val(3);
        wr(t, &p0.cr1, "CR1", cr1.value);
        wr(t, &p0.cr2, "CR2", (CR2::RECINVSID::SET + CR2::PTM::SET).value);
        let (strtab, cfg) = match &smmu.table {
            StreamTable::Linear { region } => {
                (region.base(), STRTAB_BASE_CFG::FMT.val(0) + STRTAB_BASE_CFG::LOG2SIZE.val(sid_bits))
            }
            StreamTable::TwoLevel { l1, .. } => (
                l1.base(),
                STRTAB_BASE_CFG::FMT.val(1)
                    + STRTAB_BASE_CFG::SPLIT.val(SPLIT)
                    + STRTAB_BASE_CFG::LOG2SIZE.val(sid_bits),
            ),
        };
        wr(t, &p0.strtab_base, "STRTAB_BASE", crate::regs::base_value(strtab, 0));
        wr(t, &p0.strtab_base_cfg, "STRTAB_BASE_CFG", cfg.value);
        wr(t, &p0.cmdq_base, "CMDQ_BASE", crate::regs::base_value(smmu.cmdq.region().base(), cmdq_log2));
        wr(t, &p0.cmdq_prod, "CMDQ_PROD", 0);
        wr(t, &p0.cmdq_cons, "CMDQ_CONS", 0);
        wr(t, &p0.eventq_base, "EVENTQ_BASE", crate::regs::base_value(smmu.eventq.region.base(), eventq_log2));
        wr(t, &smmu.page1().eventq_prod, "EVENTQ_PROD", 0);
        wr(t, &smmu.page1().eventq_cons, "EVENTQ_CONS", 0);
        smmu.set_cr0((CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value, "CR0 queues enable")?;
        smmu.submit(&[cmd::cfgi_all(), cmd::tlbi_nsnh_all()], mem)?;
        Ok(smmu)
    }

    /// Writes CR0 and waits for CR0ACK to match.
    fn set_cr0(&self, value: u32, what: &'static str) -> Result<(), SmmuError> {
        wr(self.trace, &self.page0().cr0, "CR0", value);
        let r = wait(what, || self.page0().cr0ack.get() == value);
        iommu::trace!(
            self.trace,
            "CR0ACK {:#x}{}: {what} {}",
            self.page0().cr0ack.get(),
            iommu::trace::Fields(crate::regs::decode, "CR0", u64::from(self.page0().cr0ack.get())),
            if r.is_ok() { "done" } else { "timed out" }
        );
        r
    }

    /// The SMMU's most recent commands, oldest first, one per line
    /// (`#seq CMDQ[index] CMD_... (fields)`; the index carries the wrap bit).
    pub fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        self.history.describe("CMDQ", out, cmd::decode)
    }

    /// The unit's register-trace handle.
    pub fn tracer(&self) -> Tracer {
        self.trace
    }

    /// Writes CMDQ_PROD with the ring's producer index (the doorbell).
    fn doorbell(&self) {
        let t = self.trace;
        let p0 = self.page0();
        self.cmdq.publish(|r| wr(t, &p0.cmdq_prod, "CMDQ_PROD", r.prod()));
    }

    /// CR0, GBPA, GERROR, STRTAB_BASE, STRTAB_BASE_CFG, CMDQ_PROD / CONS and
    /// EVENTQ_PROD / CONS as they read now (for reports).
    pub fn live_registers(&self) -> [(&'static str, u64); 9] {
        let (p0, p1) = (self.page0(), self.page1());
        [
            ("CR0", u64::from(p0.cr0.get())),
            ("GBPA", u64::from(p0.gbpa.get())),
            ("GERROR", u64::from(p0.gerror.get())),
            ("STRTAB_BASE", p0.strtab_base.get()),
            ("STRTAB_BASE_CFG", u64::from(p0.strtab_base_cfg.get())),
            ("CMDQ_PROD", u64::from(p0.cmdq_prod.get())),
            ("CMDQ_CONS", u64::from(p0.cmdq_cons.get())),
            ("EVENTQ_PROD", u64::from(p1.eventq_prod.get())),
            ("EVENTQ_CONS", u64::from(p1.eventq_cons.get())),
        ]
    }

    /// STRTAB_BASE and STRTAB_BASE_CFG as they read now: where the SMMU finds STEs.
    pub fn stream_table_registers(&self) -> (u64, u64) {
        let p0 = self.page0();
        (p0.strtab_base.get(), u64::from(p0.strtab_base_cfg.get()))
    }

    /// Stage-1 translation supported.
    pub fn stage1(&self) -> bool {
        IDR0::S1P.read(self.idr[0]) != 0
    }

    /// Stage-2 translation supported.
    pub fn stage2(&self) -> bool {
        IDR0::S2P.read(self.idr[0]) != 0
    }

    /// ASID bits (8 or 16).
    pub fn asid_bits(&self) -> u32 {
        if IDR0::ASID16.read(self.idr[0]) != 0 {
            16
        } else {
            8
        }
    }

    /// VMID bits (8 or 16).
    pub fn vmid_bits(&self) -> u32 {
        if IDR0::VMID16.read(self.idr[0]) != 0 {
            16
        } else {
            8
        }
    }

    /// Output address size encoding (IDR5.OAS).
    pub fn oas(&self) -> u32 {
        IDR5::OAS.read(self.idr[5])
    }

    /// Range invalidation supported (IDR3.RIL).
    pub fn range_invalidation(&self) -> bool {
        IDR3::RIL.read(self.idr[3]) != 0
    }

    /// One line describing the SMMU, for the boot log.
    pub fn describe(&self) -> alloc::string::String {
        alloc::format!(
            "smmuv3: aidr {:#x} idr0 {:#010x} idr1 {:#010x} idr3 {:#x} idr5 {:#x}: stages{}{}, {}-bit stream IDs ({} stream table), {}-bit ASIDs, {}-bit VMIDs, {}-bit output, {} commands, {} events{}{}",
            self.aidr,
            self.idr[0],
            self.idr[1],
            self.idr[3],
            self.idr[5],
            if self.stage1() { " 1" } else { "" },
            if self.stage2() { " 2" } else { "" },
            self.sid_bits,
            if matches!(self.table, StreamTable::TwoLevel { .. }) { "2-level" } else { "linear" },
            self.asid_bits(),
            self.vmid_bits(),
            crate::regs::oas_bits(self.oas()),
            self.cmdq.slots(),
            1u32 << self.eventq.log2,
            if self.range_invalidation() { ", range invalidation" } else { "" },
            if IDR0::MSI.read(self.idr[0]) != 0 { ", MSI" } else { ", no MSI (wired interrupts)" },
        )
    }

    /// Queues `cmds` and a CMD_SYNC and waits until the SMMU consumed them. A
    /// refused command is reported after the queue was made to run again.
    pub fn submit(&mut self, cmds: &[Command], mem: &mut impl DmaMemory) -> Result<(), SmmuError> {
        self.submit_batch(cmds, mem).map_err(|(e, _)| e)
    }

    /// As [`Smmu::submit`], and when the SMMU refused a command (§4.7.3),
    /// also where in `cmds` the first refused one was (`cmds.len()`: the
    /// closing CMD_SYNC; `None` when not known, as after a timeout or for a
    /// batch longer than the queue's index space).
    pub fn submit_batch(
        &mut self,
        cmds: &[Command],
        mem: &mut impl DmaMemory,
    ) -> Result<(), (SmmuError, Option<usize>)> {
        let t = self.trace;
        let start = self.cmdq.prod();
        let mut refused: Option<(SmmuError, Option<usize>)> = None;
        for c in cmds.iter().chain(core::iter::once(&cmd::sync())) {
            // Room for one more? (CMDQ_CONS with its wrap bit, §6.3.27.)
            self.refresh_cons();
            while self.cmdq.free() == 0 {
                self.doorbell();
                let ring = self.cmdq;
                ProducerRing::wait(MAX_POLLS, || {
                    let mut r = ring;
                    r.set_cons(CMDQ_CONS::RD.read(self.page0().cmdq_cons.get()));
                    r.free() > 0 || self.command_error().is_some()
                })
                .map_err(|_| (SmmuError::Timeout("command queue space"), None))?;
                // A refused command stops the queue, full or not: let it run on.
                self.recover(start, cmds.len(), mem, &mut refused).map_err(|e| (e, None))?;
                self.refresh_cons();
            }
            let index = self.cmdq.prod();
            self.cmdq.push(mem, c).map_err(|_| (SmmuError::Timeout("command queue space"), None))?;
            let n = self.history.record(index, *c);
            if t.on() {
                t.emit_seq(n, format_args!("CMDQ[{index:#x}] submit {}", Cmd(c)));
            }
            self.commands += 1;
        }
        let prod = self.cmdq.prod();
        self.doorbell();
        loop {
            // The CMD_SYNC closing the batch consumed (§4.6), or a refusal: bounded.
            ProducerRing::wait(MAX_POLLS, || {
                CMDQ_CONS::RD.read(self.page0().cmdq_cons.get()) == prod || self.command_error().is_some()
            })
            .inspect_err(|_| iommu::trace!(t, "CMD_SYNC timed out (CMDQ_PROD {prod:#x})"))
            .map_err(|_| (SmmuError::Timeout("command queue"), None))?;
            if self.command_error().is_none() {
                iommu::trace!(t, "CMD_SYNC done (CMDQ_CONS {prod:#x})");
            }
            if !self.recover(start, cmds.len(), mem, &mut refused).map_err(|e| (e, None))? {
                break;
            }
        }
        self.cmdq.retire_all();
        refused.map_or(Ok(()), Err)
    }

    /// Takes the SMMU's consumer index into the command ring.
    fn refresh_cons(&mut self) {
        let cons = CMDQ_CONS::RD.read(self.page0().cmdq_cons.get());
        self.cmdq.set_cons(cons);
    }

    /// When the SMMU refused a command (§4.7.3 / §7.1: the queue stopped at
    /// it), puts a CMD_SYNC in its place, acknowledges the error and lets the
    /// queue run on; the first refusal of the batch that began at producer
    /// `start` with `n` commands is kept in `refused`. Whether there was one.
    fn recover(
        &mut self,
        start: u32,
        n: usize,
        mem: &mut impl DmaMemory,
        refused: &mut Option<(SmmuError, Option<usize>)>,
    ) -> Result<bool, SmmuError> {
        let Some((error, index)) = self.command_error() else { return Ok(false) };
        log::error!("smmuv3: command {index} refused: {}", error.name());
        self.cmdq.write_slot(mem, index, &cmd::sync()).map_err(SmmuError::Dma)?;
        let seq = self.history.record(index, cmd::sync());
        if self.trace.on() {
            self.trace.emit_seq(
                seq,
                format_args!("CMDQ[{index:#x}] replace {} (refused: {})", Cmd(&cmd::sync()), error.name()),
            );
        }
        let gerror = self.page0().gerror.get();
        // GERRORN.CMDQ_ERR made equal to GERROR.CMDQ_ERR: acknowledged (§6.3.17).
        let mask = GERROR::CMDQ_ERR::SET.value;
        let gerrorn = (self.page0().gerrorn.get() & !mask) | (gerror & mask);
        wr(self.trace, &self.page0().gerrorn, "GERRORN", gerrorn);
        self.doorbell();
        if refused.is_none() {
            let span = (2 << self.cmdq.log2_slots()) - 1; // index and wrap bit
            let offset = (index.wrapping_sub(start) & span) as usize;
            let known = n < span as usize && offset <= n;
            *refused = Some((SmmuError::Command { error, index }, known.then_some(offset)));
        }
        Ok(true)
    }

    /// The pending command-queue error: (CERROR, index of the command).
    fn command_error(&self) -> Option<(CommandError, u32)> {
        let active = self.page0().gerror.get() ^ self.page0().gerrorn.get();
        if !GERROR::CMDQ_ERR.is_set(active) {
            return None;
        }
        let cons = self.page0().cmdq_cons.get();
        Some((CommandError::from_code(CMDQ_CONS::ERR.read(cons)), CMDQ_CONS::RD.read(cons)))
    }

    /// Where stream `sid`'s STE lives (a region and the index of its first
    /// word), creating its level-2 table if needed; the last value says a
    /// level-1 descriptor was just written.
    fn ste_address(&mut self, sid: u32, mem: &mut impl DmaMemory) -> Result<(DmaRegion, usize, bool), SmmuError> {
        if u64::from(sid) >> self.sid_bits != 0 {
            return Err(SmmuError::BadStream(sid));
        }
        let words = ste::STE_WORDS;
        match &mut self.table {
            StreamTable::Linear { region } => Ok((*region, sid as usize * words, false)),
            StreamTable::TwoLevel { l1, l2 } => {
                let i = (sid >> SPLIT) as usize;
                let mut fresh = false;
                if l2[i] == 0 {
                    let t = DmaRegion::alloc_frame(mem).ok_or(SmmuError::NoMemory)?;
                    l2[i] = t.base();
                    l1.write_u64(mem, i, ste::l1_descriptor(t.base(), SPLIT)).map_err(SmmuError::Dma)?;
                    fresh = true;
                }
                let table = DmaRegion::new(l2[i], 1).ok_or(SmmuError::NoMemory)?;
                Ok((table, (sid & ((1 << SPLIT) - 1)) as usize * words, fresh))
            }
        }
    }

    /// Installs `entry` as stream `sid`'s STE: the old one is invalidated and
    /// forgotten by the SMMU first, then the new words are written, the valid
    /// word last, and the SMMU told again (§3.21.1: no torn updates).
    pub fn write_ste(&mut self, sid: u32, ste: &Ste, mem: &mut impl DmaMemory) -> Result<(), SmmuError> {
        let entry = ste.to_words();
        let (table, at, fresh) = self.ste_address(sid, mem)?;
        if ste::valid(table.read_u64(mem, at).map_err(SmmuError::Dma)?) {
            table.write_u64(mem, at, 0).map_err(SmmuError::Dma)?;
            self.submit(&[cmd::cfgi_ste(sid)], mem)?;
        }
        for i in (1..ste::STE_WORDS).rev() {
            table.write_u64(mem, at + i, entry[i]).map_err(SmmuError::Dma)?;
        }
        table.write_u64(mem, at, entry[0]).map_err(SmmuError::Dma)?;
        iommu::trace!(
            self.trace,
            "STE[{sid:#x}] <- {:#018x} {:#018x} {:#018x} {:#018x} (V={} Config={:#x})",
            entry[0],
            entry[1],
            entry[2],
            entry[3],
            entry[0] & 1,
            (entry[0] >> 1) & 7
        );
        let inval = if fresh { cmd::cfgi_all() } else { cmd::cfgi_ste(sid) };
        // The CD of an STE that translates at stage 1 (alone or nested) may
        // be cached under the stream too (§4.3.3).
        if ste::translates_stage1(ste) {
            self.submit(&[inval, cmd::cfgi_cd(sid)], mem)
        } else {
            self.submit(&[inval], mem)
        }
    }

    /// Makes stream `sid`'s STE invalid again (its transactions then raise C_BAD_STE).
    pub fn clear_ste(&mut self, sid: u32, mem: &mut impl DmaMemory) -> Result<(), SmmuError> {
        let (table, at, _) = self.ste_address(sid, mem)?;
        table.write_u64(mem, at, 0).map_err(SmmuError::Dma)?;
        iommu::trace!(self.trace, "STE[{sid:#x}].word0 <- 0 (V=0)");
        self.submit(&[cmd::cfgi_ste(sid)], mem)
    }

    /// Turns translation on (SMMUEN) or off, keeping both queues on.
    pub fn set_translation(&self, on: bool) -> Result<(), SmmuError> {
        let queues = (CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value;
        let value = if on { queues | CR0::SMMUEN::SET.value } else { queues };
        self.set_cr0(value, if on { "SMMUEN set" } else { "SMMUEN clear" })
    }

    /// Whether translation is on.
    pub fn translating(&self) -> bool {
        self.page0().cr0ack.is_set(CR0::SMMUEN)
    }

    /// Takes every event the SMMU queued since the last call. An overflow
    /// (events lost) is logged, counted and acknowledged.
    pub fn take_events(&mut self, mem: &impl DmaMemory) -> alloc::vec::Vec<Event> {
        let mut out = alloc::vec::Vec::new();
        self.take_events_with(mem, &mut |e| out.push(e));
        out
    }

    /// [`Smmu::take_events`] without allocating: hands each event to `f` in order.
    pub fn take_events_with(&mut self, mem: &impl DmaMemory, f: &mut dyn FnMut(Event)) {
        self.global_errors();
        let mut any = false;
        let prod = self.page1().eventq_prod.get();
        let wr_index = EVENTQ_PROD::WR.read(prod) & ((2 << self.eventq.log2) - 1);
        let overflow = EVENTQ_PROD::OVFLG.read(prod);
        let ack = EVENTQ_CONS::OVACKFLG.read(self.page1().eventq_cons.get());
        // Bounded by the queue size: the SMMU cannot have more for us.
        for _ in 0..(1u32 << self.eventq.log2) {
            if self.eventq.index == wr_index {
                break;
            }
            let at = self.eventq.slot(self.eventq.index);
            let mut words = [0; EVENT_WORDS];
            for (i, w) in words.iter_mut().enumerate() {
                // The queue's frames hold every slot (allocated for `1 << log2` records).
                *w = self.eventq.region.read_u64(mem, at + i).unwrap_or(0);
            }
            let e = Event::decode(words);
            iommu::trace!(self.trace, "EVENTQ[{:#x}] event {e}", self.eventq.index);
            f(e);
            any = true;
            self.eventq.index = self.eventq.next(self.eventq.index);
        }
        if overflow != ack {
            self.event_overflows += 1;
            log::warn!("smmuv3: event queue overflow: events were lost");
        }
        let cons = (EVENTQ_CONS::RD.val(self.eventq.index) + EVENTQ_CONS::OVACKFLG.val(overflow)).value;
        // Nothing consumed and no overflow to acknowledge: EVENTQ_CONS already
        // holds this value, so the write (one per fault poll) is left out.
        if any || overflow != ack {
            wr(self.trace, &self.page1().eventq_cons, "EVENTQ_CONS", cons);
        }
    }

    /// Logs and acknowledges global errors other than command-queue errors
    /// (those are handled where commands are submitted): event-queue write
    /// aborts, MSI write aborts, service failure mode (§7.5).
    pub fn global_errors(&self) -> u32 {
        let (gerror, gerrorn) = (self.page0().gerror.get(), self.page0().gerrorn.get());
        let active = (gerror ^ gerrorn) & !GERROR::CMDQ_ERR::SET.mask();
        if active != 0 {
            log::error!(
                "smmuv3: global error(s) {active:#x}{}{}",
                if GERROR::EVENTQ_ABT_ERR.is_set(active) {
                    " EVENTQ_ABT_ERR (an event write aborted: events lost)"
                } else {
                    ""
                },
                if GERROR::SFM_ERR.is_set(active) { " SFM_ERR (service failure mode)" } else { "" },
            );
            wr(self.trace, &self.page0().gerrorn, "GERRORN", gerrorn ^ active);
        }
        active
    }

    /// Frames the SMMU itself holds (stream table, level-2 tables, queues):
    /// what leak checks leave out.
    pub fn table_frames(&self) -> usize {
        let table = match &self.table {
            StreamTable::Linear { region } => region.frames(),
            StreamTable::TwoLevel { l1, l2 } => l1.frames() + l2.iter().filter(|t| **t != 0).count(),
        };
        table + self.cmdq.region().frames() + self.eventq.region.frames()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory a refused SMMU must never touch.
    struct Untouched;

    impl io_pgtable::TableMemory for Untouched {
        fn alloc_table(&mut self) -> Option<u64> {
            panic!("alloc_table")
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

    impl DmaMemory for Untouched {
        fn alloc_contiguous(&mut self, _: usize) -> Option<u64> {
            panic!("a SMMU with too small a register window allocated memory")
        }
        fn free_contiguous(&mut self, _: u64, _: usize) {
            panic!("free_contiguous")
        }
    }

    #[test]
    fn every_register_write_goes_through_the_trace() {
        for (file, src) in [("unit.rs", include_str!("unit.rs")), ("driver.rs", include_str!("driver.rs"))] {
            let bad = iommu::trace::untraced_writes(src, &["page0()", "page1()", "p0"]);
            assert!(bad.is_empty(), "{file}: register writes outside `wr`: {bad:?}");
        }
        assert_eq!(iommu::trace::untraced_writes("    p0.cr1.write(cr1);", &["p0"]).len(), 1);
    }

    #[test]
    fn bring_up_refuses_a_window_without_page1() {
        // Page 0 as plain memory with IDR0 = 0: were the window not checked
        // first, the probe would fail on IDR0.TTF instead.
        let page = iommu::mmio::FakeMmio::new(0x1000).unwrap();
        let r = Smmu::new(page.window(), &mut Untouched);
        assert!(
            matches!(r, Err(SmmuError::RegisterOutsideWindow { offset: 0x1_00A8, window: 0x1000, .. })),
            "{:?}",
            r.as_ref().err()
        );
    }
}
