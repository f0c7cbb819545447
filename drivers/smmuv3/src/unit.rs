//! One SMMU: probe, stream table, command and event queues, STE programming.

use crate::cmd::{self, Command, CommandError};
use crate::event::Event;
use crate::regs::{
    Page0, Page1, CMDQ_CONS, CR0, CR1, CR2, EVENTQ_CONS, EVENTQ_PROD, GBPA, GERROR, IDR0, IDR1, IDR3, IDR5,
};
use crate::regs::{PAGE1, STRTAB_BASE_CFG};
use crate::ste::{self, Ste};
use iommu::DmaMemory;
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

/// Polls of a status register before a wait is declared failed.
const MAX_POLLS: u32 = 1_000_000;

/// Stream IDs resolved by a level-2 table: 64 STEs of 64 bytes fill one frame.
const SPLIT: u32 = 6;

/// Why an SMMU operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuError {
    /// The SMMU did not acknowledge in time.
    Timeout(&'static str),
    /// No memory for tables or queues.
    NoMemory,
    /// The SMMU lacks something this driver needs (named).
    Unsupported(&'static str),
    /// The stream ID is beyond the stream table.
    BadStream(u32),
    /// The SMMU refused a command; it was replaced by a CMD_SYNC and the queue
    /// runs again.
    Command {
        /// CERROR.
        error: CommandError,
        /// Queue index of the refused command.
        index: u32,
    },
    /// A page-table operation failed.
    Map(io_pgtable::Error),
    /// Every ASID or VMID is in use.
    NoTags,
    /// Registers the driver needs lie outside the register window the
    /// firmware described (device-tree `reg` or IORT): the SMMU is not used
    /// ([`crate::regs::check_window`]).
    RegisterOutsideWindow {
        /// Which registers.
        register: &'static str,
        /// Their first byte, from the register base.
        offset: u64,
        /// One past their last byte.
        end: u64,
        /// Bytes in the window.
        window: u64,
    },
}

impl core::fmt::Display for SmmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmmuError::Timeout(what) => write!(f, "SMMU did not complete {what} in time"),
            SmmuError::NoMemory => f.write_str("out of memory for SMMU tables or queues"),
            SmmuError::Unsupported(what) => write!(f, "SMMU lacks {what}"),
            SmmuError::BadStream(sid) => write!(f, "stream ID {sid:#x} is beyond the stream table"),
            SmmuError::Command { error, index } => write!(f, "command {index} refused: {}", error.name()),
            SmmuError::Map(e) => write!(f, "page table: {e}"),
            SmmuError::NoTags => f.write_str("every ASID / VMID is in use"),
            SmmuError::RegisterOutsideWindow { register, offset, end, window } => write!(
                f,
                "{register} at {offset:#x}..{end:#x} lie outside the SMMU's {window:#x}-byte register window \
                 (the firmware's reg / IORT size; the architecture needs page 0 and page 1, 0x20000 bytes)"
            ),
        }
    }
}

fn wait(what: &'static str, done: impl FnMut() -> bool) -> Result<(), SmmuError> {
    if iommu::poll(MAX_POLLS, done) {
        Ok(())
    } else {
        Err(SmmuError::Timeout(what))
    }
}

/// Writes word `index` of a region of contiguous frames starting at `base`.
fn write_word(mem: &mut impl DmaMemory, base: u64, index: usize, value: u64) {
    mem.write(base + (index / 512) as u64 * 4096, index % 512, value);
}

fn read_word(mem: &impl DmaMemory, base: u64, index: usize) -> u64 {
    mem.read(base + (index / 512) as u64 * 4096, index % 512)
}

/// A circular queue in memory: `1 << log2` entries of `words` 64-bit words,
/// with producer and consumer indices carrying a wrap bit (§3.5).
struct Queue {
    base: u64,
    log2: u32,
    words: usize,
    /// Our index (producer for the command queue, consumer for the event queue).
    index: u32,
}

impl Queue {
    fn slot(&self, index: u32) -> usize {
        (index & ((1 << self.log2) - 1)) as usize * self.words
    }

    fn next(&self, index: u32) -> u32 {
        (index + 1) & ((2 << self.log2) - 1)
    }

    fn frames(&self) -> usize {
        ((self.words * 8) << self.log2).div_ceil(4096)
    }
}

/// The stream table: linear, or two levels with one-frame level-2 tables.
enum StreamTable {
    Linear { base: u64, frames: usize },
    TwoLevel { l1: u64, l1_frames: usize, l2: alloc::vec::Vec<u64> },
}

/// An SMMUv3 and its in-memory structures.
pub struct Smmu {
    base: u64,
    /// IDR0–IDR5 as read at probe.
    pub idr: [u32; 6],
    /// AIDR.
    pub aidr: u32,
    /// IIDR (implementer, revision, product).
    pub iidr: u32,
    /// Stream ID bits the stream table covers.
    pub sid_bits: u32,
    table: StreamTable,
    cmdq: Queue,
    eventq: Queue,
    /// Commands issued so far (CMD_SYNC included).
    pub commands: u64,
    /// Event-queue overflows seen (events lost).
    pub event_overflows: u64,
}

impl Smmu {
    fn page0(&self) -> &Page0 {
        // SAFETY: `base` maps a register window holding `Page0` (checked in `with_options`) for the SMMU's lifetime (see `new`).
        unsafe { &*(self.base as *const Page0) }
    }

    fn page1(&self) -> &Page1 {
        // SAFETY: as in `page0`; `check_window` found page 1 up to `Page1`'s end inside the mapped window.
        unsafe { &*((self.base + PAGE1) as *const Page1) }
    }

    /// Takes over the SMMU whose register window, `window` bytes as the
    /// firmware described it (128 KiB architected: page 0 and page 1, §6), is
    /// mapped at virtual address `base`: checks the window holds every
    /// register the driver uses ([`crate::regs::check_window`];
    /// [`SmmuError::RegisterOutsideWindow`] before any access otherwise),
    /// installs queues and an empty stream table, turns the command and
    /// event queues on and invalidates the caches. Translation (SMMUEN)
    /// stays off.
    ///
    /// # Safety
    /// `base` must map `window` bytes of the SMMU's registers (device memory)
    /// for as long as the returned value lives, and nothing else may program
    /// the SMMU.
    pub unsafe fn new(base: u64, window: u64, mem: &mut impl DmaMemory) -> Result<Smmu, SmmuError> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::with_options(base, window, mem, false) }
    }

    /// As [`Smmu::new`]; `linear` asks for a linear stream table even where
    /// 2-level ones are supported (to test that path on QEMU, whose SMMU has both).
    ///
    /// # Safety
    /// As for [`Smmu::new`].
    pub unsafe fn with_options(
        base: u64,
        window: u64,
        mem: &mut impl DmaMemory,
        linear: bool,
    ) -> Result<Smmu, SmmuError> {
        crate::regs::check_window(window)?;
        // SAFETY: the caller guarantees `window` bytes are mapped, and `check_window` found `Page0` inside them.
        let p0 = unsafe { &*(base as *const Page0) };
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
            let l1 = mem.alloc_contiguous(l1_frames).ok_or(SmmuError::NoMemory)?;
            StreamTable::TwoLevel { l1, l1_frames, l2: alloc::vec![0; 1 << (sid_bits - SPLIT)] }
        } else {
            let frames = ((64usize << sid_bits).div_ceil(4096)).next_power_of_two();
            let base = mem.alloc_contiguous(frames).ok_or(SmmuError::NoMemory)?;
            StreamTable::Linear { base, frames }
        };
        let cmdq_log2 = IDR1::CMDQS.read(idr[1]).min(8); // 256 commands: one frame
        let eventq_log2 = IDR1::EVENTQS.read(idr[1]).min(7); // 128 events: one frame
        let cmdq = Queue { base: 0, log2: cmdq_log2, words: 2, index: 0 };
        let eventq = Queue { base: 0, log2: eventq_log2, words: 4, index: 0 };
        let trace = crate::tracing();
        let mut smmu = Smmu {
            base,
            idr,
            aidr: p0.aidr.get(),
            iidr: p0.iidr.get(),
            sid_bits,
            table,
            cmdq,
            eventq,
            commands: 0,
            event_overflows: 0,
        };
        smmu.cmdq.base = mem.alloc_contiguous(smmu.cmdq.frames()).ok_or(SmmuError::NoMemory)?;
        smmu.eventq.base = mem.alloc_contiguous(smmu.eventq.frames()).ok_or(SmmuError::NoMemory)?;
        smmu.set_cr0(0, "CR0 disable")?;
        // While SMMUEN is 0, transactions follow GBPA: abort them (default
        // deny from the moment the driver owns the SMMU, §6.3.14).
        if !p0.gbpa.is_set(GBPA::ABORT) {
            if trace {
                log::info!("smmu trace: GBPA <- UPDATE|ABORT");
            }
            p0.gbpa.modify(GBPA::ABORT::SET + GBPA::UPDATE::SET);
            wait("GBPA update", || !p0.gbpa.is_set(GBPA::UPDATE))?;
        }
        let cr1 = CR1::QUEUE_IC.val(1)
            + CR1::QUEUE_OC.val(1)
            + CR1::QUEUE_SH.val(3)
            + CR1::TABLE_IC.val(1)
            + CR1::TABLE_OC.val(1)
            + CR1::TABLE_SH.val(3);
        p0.cr1.write(cr1);
        p0.cr2.write(CR2::RECINVSID::SET + CR2::PTM::SET);
        let (strtab, cfg) = match &smmu.table {
            StreamTable::Linear { base, .. } => {
                (*base, STRTAB_BASE_CFG::FMT.val(0) + STRTAB_BASE_CFG::LOG2SIZE.val(sid_bits))
            }
            StreamTable::TwoLevel { l1, .. } => (
                *l1,
                STRTAB_BASE_CFG::FMT.val(1)
                    + STRTAB_BASE_CFG::SPLIT.val(SPLIT)
                    + STRTAB_BASE_CFG::LOG2SIZE.val(sid_bits),
            ),
        };
        p0.strtab_base.set(crate::regs::base_value(strtab, 0));
        p0.strtab_base_cfg.write(cfg);
        p0.cmdq_base.set(crate::regs::base_value(smmu.cmdq.base, cmdq_log2));
        p0.cmdq_prod.set(0);
        p0.cmdq_cons.set(0);
        p0.eventq_base.set(crate::regs::base_value(smmu.eventq.base, eventq_log2));
        smmu.page1().eventq_prod.set(0);
        smmu.page1().eventq_cons.set(0);
        if trace {
            log::info!(
                "smmu trace: CR1 <- {:#x}, CR2 <- RECINVSID|PTM, STRTAB_BASE <- {strtab:#x} ({}), CMDQ_BASE <- {:#x} (2^{cmdq_log2}), EVENTQ_BASE <- {:#x} (2^{eventq_log2})",
                p0.cr1.get(),
                if two_level { "2-level" } else { "linear" },
                smmu.cmdq.base,
                smmu.eventq.base
            );
        }
        smmu.set_cr0((CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value, "CR0 queues enable")?;
        smmu.submit(&[cmd::cfgi_all(), cmd::tlbi_nsnh_all()], mem)?;
        Ok(smmu)
    }

    /// Writes CR0 and waits for CR0ACK to match.
    fn set_cr0(&self, value: u32, what: &'static str) -> Result<(), SmmuError> {
        if crate::tracing() {
            log::info!("smmu trace: CR0 <- {value:#x}");
        }
        self.page0().cr0.set(value);
        wait(what, || self.page0().cr0ack.get() == value)
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
            1u32 << self.cmdq.log2,
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
        let trace = crate::tracing();
        let size = 1u32 << self.cmdq.log2;
        let span = (2u32 << self.cmdq.log2) - 1; // index and wrap bit
        let start = self.cmdq.index;
        let mut refused: Option<(SmmuError, Option<usize>)> = None;
        for c in cmds.iter().chain(core::iter::once(&cmd::sync())) {
            // Room for one more? (indices differ by less than the size.)
            let full = |s: &Self| {
                let cons = CMDQ_CONS::RD.read(s.page0().cmdq_cons.get()) & span;
                s.cmdq.index.wrapping_sub(cons) & span >= size
            };
            if full(self) {
                self.page0().cmdq_prod.set(self.cmdq.index);
                wait("command queue space", || !full(self) || self.command_error().is_some()).map_err(|e| (e, None))?;
            }
            let at = self.cmdq.slot(self.cmdq.index);
            write_word(mem, self.cmdq.base, at, c[0]);
            write_word(mem, self.cmdq.base, at + 1, c[1]);
            if trace {
                log::info!(
                    "smmu trace: cmd [{}] {} {:#018x} {:#018x}",
                    self.cmdq.index,
                    cmd::opcode_name(c[0]),
                    c[0],
                    c[1]
                );
            }
            self.cmdq.index = self.cmdq.next(self.cmdq.index);
            self.commands += 1;
        }
        let prod = self.cmdq.index;
        self.page0().cmdq_prod.set(prod);
        loop {
            wait("command queue", || {
                CMDQ_CONS::RD.read(self.page0().cmdq_cons.get()) == prod || self.command_error().is_some()
            })
            .map_err(|e| (e, None))?;
            let Some((error, index)) = self.command_error() else { break };
            // §4.7.3 / §7.1: the queue stopped at the refused command. Put a
            // CMD_SYNC in its place, acknowledge the error and let it run on.
            log::error!("smmuv3: command {index} refused: {}", error.name());
            let at = self.cmdq.slot(index);
            let sync = cmd::sync();
            write_word(mem, self.cmdq.base, at, sync[0]);
            write_word(mem, self.cmdq.base, at + 1, sync[1]);
            let gerror = self.page0().gerror.get();
            if crate::tracing() {
                log::info!("smmu trace: GERRORN <- CMDQ_ERR acknowledged");
            }
            self.page0().gerrorn.modify(GERROR::CMDQ_ERR.val(GERROR::CMDQ_ERR.read(gerror)));
            self.page0().cmdq_prod.set(prod);
            if refused.is_none() {
                let offset = (index.wrapping_sub(start) & span) as usize;
                let known = cmds.len() < span as usize && offset <= cmds.len();
                refused = Some((SmmuError::Command { error, index }, known.then_some(offset)));
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// The pending command-queue error: (CERROR, index of the command).
    fn command_error(&self) -> Option<(CommandError, u32)> {
        let active = self.page0().gerror.get() ^ self.page0().gerrorn.get();
        if active & 1 == 0 {
            return None;
        }
        let cons = self.page0().cmdq_cons.get();
        Some((CommandError::from_code(CMDQ_CONS::ERR.read(cons)), CMDQ_CONS::RD.read(cons)))
    }

    /// Where stream `sid`'s STE lives, creating its level-2 table if needed;
    /// the second value says a level-1 descriptor was just written.
    fn ste_address(&mut self, sid: u32, mem: &mut impl DmaMemory) -> Result<(u64, bool), SmmuError> {
        if u64::from(sid) >> self.sid_bits != 0 {
            return Err(SmmuError::BadStream(sid));
        }
        match &mut self.table {
            StreamTable::Linear { base, .. } => Ok((*base + u64::from(sid) * 64, false)),
            StreamTable::TwoLevel { l1, l2, .. } => {
                let i = (sid >> SPLIT) as usize;
                let mut fresh = false;
                if l2[i] == 0 {
                    let t = mem.alloc_table().ok_or(SmmuError::NoMemory)?;
                    l2[i] = t;
                    write_word(mem, *l1, i, ste::l1_descriptor(t, SPLIT));
                    fresh = true;
                }
                Ok((l2[i] + u64::from(sid & ((1 << SPLIT) - 1)) * 64, fresh))
            }
        }
    }

    /// Installs `entry` as stream `sid`'s STE: the old one is invalidated and
    /// forgotten by the SMMU first, then the new words are written, the valid
    /// word last, and the SMMU told again (§3.21.1: no torn updates).
    pub fn write_ste(&mut self, sid: u32, entry: &Ste, mem: &mut impl DmaMemory) -> Result<(), SmmuError> {
        let (at, fresh) = self.ste_address(sid, mem)?;
        let (frame, word) = (at & !0xFFF, ((at & 0xFFF) / 8) as usize);
        if mem.read(frame, word) & 1 != 0 {
            mem.write(frame, word, 0);
            self.submit(&[cmd::cfgi_ste(sid)], mem)?;
        }
        for i in (1..8).rev() {
            mem.write(frame, word + i, entry[i]);
        }
        mem.write(frame, word, entry[0]);
        if crate::tracing() {
            log::info!(
                "smmu trace: STE[{sid:#x}] <- {:#018x} {:#018x} {:#018x} {:#018x}",
                entry[0],
                entry[1],
                entry[2],
                entry[3]
            );
        }
        let inval = if fresh { cmd::cfgi_all() } else { cmd::cfgi_ste(sid) };
        // The CD of an STE that translates at stage 1 (alone or nested) may
        // be cached under the stream too (§4.3.3).
        if ste::translates_stage1(entry) {
            self.submit(&[inval, cmd::cfgi_cd(sid)], mem)
        } else {
            self.submit(&[inval], mem)
        }
    }

    /// Makes stream `sid`'s STE invalid again (its transactions then raise C_BAD_STE).
    pub fn clear_ste(&mut self, sid: u32, mem: &mut impl DmaMemory) -> Result<(), SmmuError> {
        let (at, _) = self.ste_address(sid, mem)?;
        mem.write(at & !0xFFF, ((at & 0xFFF) / 8) as usize, 0);
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
        let wr = EVENTQ_PROD::WR.read(prod) & ((2 << self.eventq.log2) - 1);
        let overflow = EVENTQ_PROD::OVFLG.read(prod);
        let ack = EVENTQ_CONS::OVACKFLG.read(self.page1().eventq_cons.get());
        // Bounded by the queue size: the SMMU cannot have more for us.
        for _ in 0..(1u32 << self.eventq.log2) {
            if self.eventq.index == wr {
                break;
            }
            let at = self.eventq.slot(self.eventq.index);
            let words = [0, 1, 2, 3].map(|i| read_word(mem, self.eventq.base, at + i));
            f(Event::decode(words));
            any = true;
            self.eventq.index = self.eventq.next(self.eventq.index);
        }
        if overflow != ack {
            self.event_overflows += 1;
            log::warn!("smmuv3: event queue overflow: events were lost");
        }
        if crate::tracing() && any {
            log::info!("smmu trace: EVENTQ_CONS <- {:#x}", self.eventq.index);
        }
        self.page1().eventq_cons.write(EVENTQ_CONS::RD.val(self.eventq.index) + EVENTQ_CONS::OVACKFLG.val(overflow));
    }

    /// Logs and acknowledges global errors other than command-queue errors
    /// (those are handled where commands are submitted): event-queue write
    /// aborts, MSI write aborts, service failure mode (§7.5).
    pub fn global_errors(&self) -> u32 {
        let (gerror, gerrorn) = (self.page0().gerror.get(), self.page0().gerrorn.get());
        let active = (gerror ^ gerrorn) & !1;
        if active != 0 {
            log::error!(
                "smmuv3: global error(s) {active:#x}{}{}",
                if active & (1 << 2) != 0 { " EVENTQ_ABT_ERR (an event write aborted: events lost)" } else { "" },
                if active & (1 << 8) != 0 { " SFM_ERR (service failure mode)" } else { "" },
            );
            if crate::tracing() {
                log::info!("smmu trace: GERRORN <- {:#x}", gerrorn ^ active);
            }
            self.page0().gerrorn.set(gerrorn ^ active);
        }
        active
    }

    /// Frames the SMMU itself holds (stream table, level-2 tables, queues):
    /// what leak checks leave out.
    pub fn table_frames(&self) -> usize {
        let table = match &self.table {
            StreamTable::Linear { frames, .. } => *frames,
            StreamTable::TwoLevel { l1_frames, l2, .. } => *l1_frames + l2.iter().filter(|t| **t != 0).count(),
        };
        table + self.cmdq.frames() + self.eventq.frames()
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
    fn bring_up_refuses_a_window_without_page1() {
        // Page 0 as plain memory with IDR0 = 0: were the window not checked
        // first, the probe would fail on IDR0.TTF instead.
        #[repr(C, align(4096))]
        struct Page([u32; 1024]);
        let page = alloc::boxed::Box::new(Page([0; 1024]));
        let base = page.0.as_ptr() as u64;
        // SAFETY: 4 KiB of plain memory that outlives the call; the window check refuses before any access.
        let r = unsafe { Smmu::new(base, 0x1000, &mut Untouched) };
        assert!(
            matches!(r, Err(SmmuError::RegisterOutsideWindow { offset: 0x1_00A8, window: 0x1000, .. })),
            "{:?}",
            r.as_ref().err()
        );
    }
}
