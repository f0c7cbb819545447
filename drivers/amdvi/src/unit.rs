//! One AMD-Vi IOMMU: bring-up, the command buffer, the device table, the
//! event log.
//!
//! Bring-up (§3.4 register programming, in the order the spec's
//! initialisation follows): a zeroed device table for all 65536 DeviceIDs, a
//! 256-entry command buffer and a 256-entry event log are installed, the
//! exclusion range is switched off, then the command buffer, the event log
//! and the IOMMU itself are enabled. The unit translates from then on, but
//! every DTE is zero (V = 0: untranslated, unchecked), so no device notices.
//! Enabling early is what makes commands work at all on QEMU 10.0, which runs
//! the command buffer only while IommuEn is set.
//!
//! Commands are queued at CmdTail, followed by a COMPLETION_WAIT that stores
//! a sequence number into a small frame; the driver polls that frame (bounded).

use crate::cmd::{self, Command};
use crate::dte::{self, DeviceTable, Dte};
use crate::event::Event;
use crate::regs::{Regs, CONTROL, DEVTAB_BASE, EXCL_BASE, RING_BASE, RING_PTR, STATUS};
use alloc::vec::Vec;
use fallible::VecExt;
use iommu::desc::from_place;
use iommu::dma::DmaRegion;
use iommu::mmio::{BlockRef, MmioWindow};
use iommu::ring::{Indexing, ProducerRing};
use iommu::trace::{History, Tracer};
use iommu::DmaMemory;
use tock_registers::interfaces::{Readable, Writeable};

/// The one way this driver writes a register: through the register trace
/// ([`iommu::trace::write`]), named as the AMD IOMMU spec §3.4 names it and
/// decoded by [`crate::regs::decode`].
fn wr<R>(t: Tracer, reg: &R, name: &'static str, value: R::T)
where
    R: Writeable,
    R::T: Into<u64>,
{
    iommu::trace::write(t, reg, name, value, crate::regs::decode)
}

/// Commands the command-buffer history keeps ([`AmdVi::describe_queue`]).
pub const HISTORY: usize = 32;

pub use crate::error::AmdViError;

/// Polls of memory or a register before a wait is declared failed.
const MAX_POLLS: u32 = 1_000_000;
/// log2 of the command buffer entries (256 × 16 bytes: one frame; the spec's minimum).
const CMD_LOG2: u32 = 8;
/// log2 of the event log entries (256 × 16 bytes: one frame).
const EVT_LOG2: u32 = 8;
/// Bytes per command and per event.
const ENTRY: u64 = 16;

fn wait(what: &'static str, done: impl FnMut() -> bool) -> Result<(), AmdViError> {
    ProducerRing::wait(MAX_POLLS, done).map_err(|_| AmdViError::Timeout(what))
}

/// Writes the Control register (§3.4.4).
fn write_control(t: Tracer, regs: &Regs, value: u64) {
    wr(t, &regs.control, "Control", value);
}

/// Turns off what the firmware may have left running (IommuEn, the
/// command buffer, the event log) before the bases change.
fn quiesce(t: Tracer, regs: &Regs) -> Result<(), AmdViError> {
    let running = STATUS::CMD_BUF_RUN::SET.value | STATUS::EVENT_LOG_RUN::SET.value;
    if regs.control.get() == 0 && regs.status.get() & running == 0 {
        return Ok(());
    }
    log::info!("amdvi: the unit was enabled by firmware (control {:#x}): turning it off", regs.control.get());
    write_control(t, regs, 0);
    wait("stopping the command buffer and event log", || regs.status.get() & running == 0)
}

/// A head or tail pointer register's byte offset (bits 18:4, §3.4.9–§3.4.12).
fn ring_offset(value: u64) -> u64 {
    from_place(RING_PTR::OFFSET, value).value
}

/// A command decoded for the trace ([`cmd::decode`]).
struct Cmd([u64; 2]);

impl core::fmt::Display for Cmd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        cmd::decode(&self.0, f)
    }
}

/// Frames of a ring of `1 << log2` 16-byte entries.
fn ring_frames(log2: u32) -> usize {
    (ENTRY << log2).div_ceil(4096) as usize
}

/// The event log (§2.5): 16-byte entries the unit writes at EvtTail, read
/// by the driver from its head.
#[derive(Debug, Clone, Copy)]
struct EventLog {
    region: DmaRegion,
    log2: u32,
    /// The driver's EvtHead, a byte offset.
    head: u64,
}

impl EventLog {
    fn entries(&self) -> u32 {
        1 << self.log2
    }

    fn bytes(&self) -> u64 {
        ENTRY << self.log2
    }

    fn next(&self, at: u64) -> u64 {
        (at + ENTRY) % self.bytes()
    }

    /// The entry at byte offset `at`, or `None` outside the log.
    fn entry(&self, mem: &impl DmaMemory, at: u64) -> Option<[u64; 2]> {
        let word = (at / 8) as usize;
        Some([self.region.read_u64(mem, word).ok()?, self.region.read_u64(mem, word + 1).ok()?])
    }
}

/// The Command Buffer / Event Log Base Address register value for a ring
/// of `1 << log2` entries at `base` (§3.4.2, §3.4.3).
fn ring_base(base: u64, log2: u32) -> tock_registers::fields::FieldValue<u64, RING_BASE::Register> {
    from_place(RING_BASE::BASE, base) + RING_BASE::LEN.val(u64::from(log2))
}

/// Free command slots, from the unit's CmdHead: the ring holds one entry
/// less than its size, so that a full ring differs from an empty one (§3.4:
/// head == tail means empty).
fn free_slots(ring: &mut ProducerRing, regs: &Regs) -> u32 {
    // QEMU stores the unwrapped head (== size) after running the last
    // slot (`amdvi_cmdbuf_run`): the ring reduces it modulo its size.
    ring.set_head_offset(ring_offset(regs.cmd_head.get()));
    ring.free()
}

/// An AMD-Vi IOMMU and its in-memory structures.
pub struct AmdVi {
    regs: BlockRef<Regs>,
    efr: u64,
    devtab: DeviceTable,
    /// The command buffer (§2.4): CmdTail is its producer, CmdHead its consumer.
    cmd: ProducerRing,
    evt: EventLog,
    /// Two frames: the COMPLETION_WAIT stores its sequence number into word 0
    /// of the first; the second is the all-zero table blocked entries point at.
    wait: DmaRegion,
    sequence: u64,
    /// Events read while recovering from a refused command, for the next `take_events`.
    pending: Vec<Event>,
    /// Commands issued so far (COMPLETION_WAITs included).
    pub commands: u64,
    /// Event-log overflows seen (events were lost).
    pub event_overflows: u64,
    /// The unit's register-trace handle (name `amdviN`).
    trace: Tracer,
    /// The last commands submitted (whether tracing or not).
    history: History<2, HISTORY>,
}

/// What bring-up allocates: the device table, the command buffer, the
/// event log, and the completion frame with the empty table after it.
struct Memory {
    devtab: DeviceTable,
    cmd: DmaRegion,
    evt: DmaRegion,
    wait: DmaRegion,
}

impl Memory {
    fn alloc(mem: &mut impl DmaMemory) -> Result<Memory, AmdViError> {
        let devtab = DeviceTable::alloc(mem).ok_or(AmdViError::NoMemory)?;
        let cmd = DmaRegion::alloc_contiguous(mem, ring_frames(CMD_LOG2));
        let evt = DmaRegion::alloc_contiguous(mem, ring_frames(EVT_LOG2));
        // The completion frame and, after it, the empty table of [`AmdVi::blocked_dte`].
        let wait = DmaRegion::alloc_contiguous(mem, 2);
        match (cmd, evt, wait) {
            (Some(cmd), Some(evt), Some(wait)) => Ok(Memory { devtab, cmd, evt, wait }),
            (c, e, w) => {
                devtab.free(mem);
                for r in [c, e, w].into_iter().flatten() {
                    r.free_contiguous(mem);
                }
                Err(AmdViError::NoMemory)
            }
        }
    }

    fn free(self, mem: &mut impl DmaMemory) {
        self.devtab.free(mem);
        for r in [self.cmd, self.evt, self.wait] {
            r.free_contiguous(mem);
        }
    }
}

impl AmdVi {
    /// The register block.
    fn regs(&self) -> &Regs {
        &self.regs
    }

    /// Takes over the unit whose registers `regs` maps: refused with
    /// [`AmdViError::RegisterOutsideWindow`], before any register is
    /// touched, unless the window holds every register the driver uses
    /// ([`crate::regs::check_window`]: the 16 KiB block of §3.4, with CmdHead /
    /// CmdTail / EvtHead / EvtTail / Status at 2000h-2027h). Then: device
    /// table, command buffer and event log installed, exclusion range off,
    /// the unit enabled with every one of the 65536 DTEs blocked
    /// ([`dte::blocked`]: valid, no translation, no access; default deny, so
    /// even a DeviceID no firmware table names reaches nothing), its caches
    /// invalidated (INVALIDATE_IOMMU_ALL where EFR.IASup says so). This value
    /// becomes the registers' only user.
    pub fn new(regs: MmioWindow, mem: &mut impl DmaMemory) -> Result<AmdVi, AmdViError> {
        crate::regs::check_window(regs.len())?;
        let regs = regs.checked::<Regs>(0).map_err(|e| AmdViError::RegisterOutsideWindow {
            register: "register block (Regs, 0000h-3FFFh)",
            offset: e.offset,
            end: e.offset.saturating_add(e.len),
            window: e.window,
        })?;
        let efr = regs.efr.get();
        let levels = crate::regs::host_levels(efr).ok_or(AmdViError::Unsupported("a valid EFR.HATS"))?;
        if levels < dte::LEVELS {
            return Err(AmdViError::Unsupported("4-level host page tables (EFR.HATS)"));
        }
        let t = Tracer::register(iommu::UnitKind::AmdVi);
        quiesce(t, &regs)?;
        let memory = Memory::alloc(mem)?;
        let Ok(cmd) = ProducerRing::new(memory.cmd, CMD_LOG2, Command::WORDS, Indexing::Offsets) else {
            // The geometry is fixed (256 entries of 2 words in one frame): never refused.
            memory.free(mem);
            return Err(AmdViError::Unsupported("the command buffer geometry"));
        };
        let unit = AmdVi {
            regs,
            efr,
            devtab: memory.devtab,
            cmd,
            evt: EventLog { region: memory.evt, log2: EVT_LOG2, head: 0 },
            wait: memory.wait,
            sequence: 0,
            pending: Vec::new(),
            commands: 0,
            event_overflows: 0,
            trace: t,
            history: History::new(),
        };
        unit.start(mem)
    }

    /// Fills the table, programs and enables the unit, and runs the first
    /// command; on failure the unit is turned off and the memory given back.
    fn start(mut self, mem: &mut impl DmaMemory) -> Result<AmdVi, AmdViError> {
        self.block_all(mem);
        self.program();
        let on =
            CONTROL::IOMMU_EN::SET + CONTROL::EVENT_LOG_EN::SET + CONTROL::CMD_BUF_EN::SET + CONTROL::COHERENT::SET;
        self.write_control(on.value);
        // The fresh table is all zero; without INVALIDATE_IOMMU_ALL only DTEs
        // the firmware's table left cached could linger, and each is replaced
        // (and invalidated) when its device is attached.
        let first = if self.invalidate_all_supported() {
            self.submit(&[cmd::invalidate_iommu_all()], mem)
        } else {
            self.sync(mem)
        };
        if let Err(e) = first {
            self.write_control(0);
            self.release(mem);
            return Err(e);
        }
        Ok(self)
    }

    /// The blocked entry ([`dte::blocked`]) tagged `domain_id`, over this
    /// unit's empty table (the frame after the completion frame).
    pub fn blocked_dte(&self, domain_id: u16) -> Dte {
        dte::blocked(domain_id, self.wait.base() + 4096)
    }

    /// Fills the device table (the unit is off) with blocked entries.
    fn block_all(&self, mem: &mut impl DmaMemory) {
        let entry = self.blocked_dte(dte::BLOCKED_TAG).to_words();
        for devid in 0..=u16::MAX {
            for (q, w) in entry.iter().enumerate() {
                self.devtab.write_qword(mem, devid, q, *w);
            }
        }
    }

    /// Gives back what bring-up allocated (bring-up failed).
    fn release(self, mem: &mut impl DmaMemory) {
        Memory { devtab: self.devtab, cmd: self.cmd.region(), evt: self.evt.region, wait: self.wait }.free(mem);
    }

    /// Programs bases, pointers and the exclusion range (the unit is off).
    fn program(&self) {
        let (r, t) = (self.regs(), self.trace);
        let devtab =
            from_place(DEVTAB_BASE::BASE, self.devtab.base()) + DEVTAB_BASE::SIZE.val(DeviceTable::FRAMES as u64 - 1);
        wr(t, &r.devtab_base, "DevTabBase", devtab.value);
        wr(t, &r.cmd_base, "CmdBufBase", ring_base(self.cmd.region().base(), self.cmd.log2_slots()).value);
        wr(t, &r.evt_base, "EventLogBase", ring_base(self.evt.region.base(), self.evt.log2).value);
        wr(t, &r.cmd_head, "CmdHead", 0);
        wr(t, &r.cmd_tail, "CmdTail", 0);
        wr(t, &r.evt_head, "EventLogHead", 0);
        wr(t, &r.evt_tail, "EventLogTail", 0);
        // No exclusion range: IVMD exclusion ranges become reserved regions
        // (kept out of IOVA allocation) instead of untranslated holes.
        wr(t, &r.excl_base, "ExclBase", EXCL_BASE::EX_EN::CLEAR.value);
        wr(t, &r.excl_limit, "ExclLimit", 0);
        // Acknowledge whatever W1C status the firmware left.
        let ack = r.status.get() & crate::regs::STATUS_W1C;
        wr(t, &r.status, "Status", ack);
    }

    fn write_control(&self, value: u64) {
        write_control(self.trace, self.regs(), value);
    }

    /// The unit's most recent commands, oldest first, one per line
    /// (`#seq CMDBUF[entry] NAME (fields)`).
    pub fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        self.history.describe("CMDBUF", out, cmd::decode)
    }

    /// The unit's register-trace handle.
    pub fn tracer(&self) -> Tracer {
        self.trace
    }

    /// The Extended Feature register.
    pub fn efr(&self) -> u64 {
        self.efr
    }

    /// The Control register now.
    pub fn control(&self) -> u64 {
        self.regs().control.get()
    }

    /// The Status register now.
    pub fn status(&self) -> u64 {
        self.regs().status.get()
    }

    /// Whether INVALIDATE_IOMMU_ALL exists (EFR.IASup).
    pub fn invalidate_all_supported(&self) -> bool {
        crate::regs::EFR::IA_SUP.read(self.efr) != 0
    }

    /// Most host page-table levels the unit walks (EFR.HATS).
    pub fn max_levels(&self) -> usize {
        crate::regs::host_levels(self.efr).unwrap_or(4)
    }

    /// One line describing the unit, for the boot log.
    pub fn describe(&self) -> alloc::string::String {
        let features = crate::regs::efr_features(self.efr).join(" ");
        alloc::format!(
            "amdvi: EFR={:#x} ({features}, HATS {} host levels, GATS={}, PASmax={}), device table {} entries, command buffer {} entries, event log {} entries",
            self.efr,
            self.max_levels(),
            crate::regs::EFR::GATS.read(self.efr),
            crate::regs::EFR::PAS_MAX.read(self.efr),
            DeviceTable::FRAMES * 4096 / 32,
            self.cmd.slots(),
            self.evt.entries(),
        )
    }

    /// Frames the unit itself holds (device table, rings, completion frame,
    /// the blocked entries' empty table): what leak checks leave out.
    pub fn table_frames(&self) -> usize {
        DeviceTable::FRAMES + self.cmd.region().frames() + self.evt.region.frames() + self.wait.frames()
    }

    /// Free command slots: the ring holds one entry less than its size, so
    /// that a full ring differs from an empty one (§3.4: head == tail means empty).
    fn free_slots(&mut self) -> u32 {
        free_slots(&mut self.cmd, &self.regs)
    }

    /// Queues `cmds`, then a COMPLETION_WAIT, and waits until the IOMMU has
    /// completed them all. Batches longer than half the ring go in parts.
    pub fn submit(&mut self, cmds: &[Command], mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        let half = self.cmd.slots() as usize / 2;
        for part in cmds.chunks(half) {
            self.submit_part(part, mem)?;
        }
        if cmds.is_empty() {
            self.sync(mem)?;
        }
        Ok(())
    }

    /// A COMPLETION_WAIT alone: everything queued before it has completed.
    fn sync(&mut self, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        self.submit_part(&[], mem)
    }

    fn submit_part(&mut self, cmds: &[Command], mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        self.sequence += 1;
        let seq = self.sequence;
        let done = cmd::completion_wait(self.wait.base(), seq);
        let needed = cmds.len() as u32 + 1;
        if self.free_slots() < needed {
            let (ring, regs) = (&mut self.cmd, &self.regs);
            wait("command buffer space", || free_slots(ring, regs) >= needed)?;
        }
        let t = self.trace;
        for c in cmds.iter().chain(core::iter::once(&done)) {
            let index = self.cmd.tail_index();
            let words = c.to_words();
            // Room for every entry was checked above.
            self.cmd.push(mem, &words).map_err(|_| AmdViError::Timeout("command buffer space"))?;
            let n = self.history.record(index, words);
            if t.on() {
                t.emit_seq(n, format_args!("CMDBUF[{index}] submit {}", Cmd(words)));
            }
            self.commands += 1;
        }
        // The entries must be in memory before the IOMMU sees the new tail:
        // `publish` fences before the doorbell.
        let regs = self.regs;
        self.cmd
            .publish(|ring| wr(t, &regs.cmd_tail, "CmdTail", from_place(RING_PTR::OFFSET, ring.tail_offset()).value));
        let wait_frame = self.wait;
        if ProducerRing::wait(MAX_POLLS, || wait_frame.read_u64(mem, 0) == Ok(seq)).is_ok() {
            self.cmd.retire_all();
            iommu::trace!(t, "COMPLETION_WAIT done (StoreData={seq:#x})");
            return Ok(());
        }
        iommu::trace!(t, "COMPLETION_WAIT timed out (StoreData={seq:#x})");
        Err(self.command_failure(mem))
    }

    /// After a COMPLETION_WAIT that never stored: a refused command is in the
    /// event log (§2.5), and the IOMMU stopped at it. The buffer is restarted
    /// empty and the refusal reported; other events are kept for `take_events`.
    fn command_failure(&mut self, mem: &mut impl DmaMemory) -> AmdViError {
        let mut refused = None;
        let mut pending = core::mem::take(&mut self.pending);
        self.read_events_with(mem, &mut |e| {
            if e.is_command_error() {
                refused.get_or_insert(e);
            } else if pending.try_push(e).is_err() {
                // No heap to keep it for `take_events`: it is at least logged.
                log::warn!("amdvi: event dropped (no memory to keep it): {e}");
            }
        });
        self.pending = pending;
        let Some(e) = refused else {
            return AmdViError::Timeout("COMPLETION_WAIT");
        };
        log::error!("amdvi: {e}; restarting the command buffer");
        let control = self.regs().control.get();
        self.write_control(control & !CONTROL::CMD_BUF_EN::SET.value);
        let stopped = wait("command buffer stop", || !self.regs().status.is_set(STATUS::CMD_BUF_RUN));
        wr(self.trace, &self.regs().cmd_head, "CmdHead", 0);
        wr(self.trace, &self.regs().cmd_tail, "CmdTail", 0);
        self.cmd.reset();
        self.write_control(control);
        match stopped {
            Ok(()) => AmdViError::Command { code: e.code, address: e.address },
            Err(t) => t,
        }
    }

    /// The DTE of `devid` as the table holds it.
    pub fn dte(&self, devid: u16, mem: &impl DmaMemory) -> Dte {
        self.devtab.read(mem, devid)
    }

    /// Installs `new` as `devid`'s DTE so that the IOMMU never uses a torn
    /// entry, then makes it forget the old one (§2.2.2 / §2.4.2):
    /// - becoming invalid (V = 0): qword 0 first, so V clears in one store;
    /// - from an invalid entry: qwords 3..1 first, qword 0 (with V) last;
    /// - from a valid entry with other qwords 1..3: qword 0 is first made
    ///   blocked (V = 1, TV = 1, Mode 0, no access) and invalidated, so no DMA
    ///   passes while the rest changes; then as from an invalid entry.
    ///
    /// The final INVALIDATE_DEVTAB_ENTRY goes with an INVALIDATE_IOMMU_PAGES
    /// of the domain the device leaves: QEMU's IOTLB answers by DeviceID
    /// before it reads the DTE, so its old translations would outlive the change.
    pub fn set_dte(&mut self, devid: u16, new: &Dte, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        let old = self.dte(devid, mem);
        if old == *new {
            return Ok(());
        }
        let (words, old_words) = (new.to_words(), old.to_words());
        iommu::trace!(
            self.trace,
            "DTE[{devid:#06x}] <- {:#018x} {:#018x} {:#018x} {:#018x} (V={} TV={} Mode={} DomainID={:#x})",
            words[0],
            words[1],
            words[2],
            words[3],
            words[0] & 1,
            (words[0] >> 1) & 1,
            (words[0] >> 9) & 7,
            words[1] & 0xFFFF
        );
        if !dte::valid(new) {
            for (q, w) in words.iter().enumerate() {
                self.devtab.write_qword(mem, devid, q, *w);
            }
        } else {
            if dte::valid(&old) && old_words[1..] != words[1..] {
                self.devtab.write_qword(mem, devid, 0, self.blocked_dte(0).q0.get());
                self.submit(&[cmd::invalidate_devtab_entry(devid)], mem)?;
            }
            for q in (1..Dte::WORDS).rev() {
                self.devtab.write_qword(mem, devid, q, words[q]);
            }
            self.devtab.write_qword(mem, devid, 0, words[0]);
        }
        let cmds = [
            cmd::invalidate_devtab_entry(devid),
            cmd::invalidate_iommu_pages(dte::domain_id(&old), cmd::PageRange::ALL, true),
        ];
        let n = if dte::valid(&old) && dte::translation_valid(&old) { 2 } else { 1 };
        self.submit(&cmds[..n], mem)
    }

    /// Rewrites `devid`'s interrupt fields (DTE qword 2, §2.2.2.2) in one
    /// store — the translation fields stay as they are, so DMA is not
    /// disturbed — and makes the IOMMU forget the old DTE and whatever it
    /// cached of the device's interrupt table.
    pub fn set_interrupt_fields(&mut self, devid: u16, q2: u64, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        iommu::trace!(self.trace, "DTE[{devid:#06x}].q2 <- {q2:#018x}");
        self.devtab.write_qword(mem, devid, 2, q2);
        self.submit(&[cmd::invalidate_devtab_entry(devid), cmd::invalidate_interrupt_table(devid)], mem)
    }

    /// Writes `q2` as the interrupt fields of every DTE (turning interrupt
    /// remapping on for the whole table) and invalidates every cached DTE and
    /// interrupt table: with INVALIDATE_IOMMU_ALL where the unit has it, else
    /// one INVALIDATE_DEVTAB_ENTRY and INVALIDATE_INTERRUPT_TABLE per DeviceID.
    pub fn set_all_interrupt_fields(&mut self, q2: u64, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        iommu::trace!(self.trace, "DTE[*].q2 <- {q2:#018x}");
        for devid in 0..=u16::MAX {
            self.devtab.write_qword(mem, devid, 2, q2);
        }
        if self.invalidate_all_supported() {
            return self.submit(&[cmd::invalidate_iommu_all()], mem);
        }
        for first in (0..=u16::MAX).step_by(64) {
            let cmds: Vec<Command> = (first..=first.saturating_add(63))
                .flat_map(|d| [cmd::invalidate_devtab_entry(d), cmd::invalidate_interrupt_table(d)])
                .collect();
            self.submit(&cmds, mem)?;
        }
        Ok(())
    }

    /// Makes the IOMMU forget what it cached of `devid`'s interrupt table
    /// (INVALIDATE_INTERRUPT_TABLE and a COMPLETION_WAIT, §2.4.5).
    pub fn invalidate_interrupt_table(&mut self, devid: u16, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        self.submit(&[cmd::invalidate_interrupt_table(devid)], mem)
    }

    /// Reads the entries between EvtHead and EvtTail, handing each to `f`,
    /// and advances EvtHead.
    fn read_events_with(&mut self, mem: &impl DmaMemory, f: &mut dyn FnMut(Event)) {
        let tail = ring_offset(self.regs().evt_tail.get()) % self.evt.bytes();
        let mut any = false;
        // Bounded by the log: the IOMMU cannot have more for us.
        for _ in 0..self.evt.entries() {
            if self.evt.head == tail {
                break;
            }
            let Some(raw) = self.evt.entry(mem, self.evt.head) else { break };
            let e = Event::decode(raw);
            iommu::trace!(self.trace, "EventLog[{}] event {e}", self.evt.head / ENTRY);
            f(e);
            self.evt.head = self.evt.next(self.evt.head);
            any = true;
        }
        if any {
            let head = from_place(RING_PTR::OFFSET, self.evt.head).value;
            wr(self.trace, &self.regs().evt_head, "EventLogHead", head);
        }
    }

    /// Takes every event the IOMMU logged since the last call. An overflow
    /// (Status.EventOverflow: events were lost) is logged, counted and
    /// cleared, and a halted log is restarted (EventLogEn off, the overflow
    /// acknowledged, EventLogEn on again, §2.5).
    pub fn take_events(&mut self, mem: &impl DmaMemory) -> Vec<Event> {
        let mut out = Vec::new();
        self.take_events_with(mem, &mut |e| out.push(e));
        out
    }

    /// [`AmdVi::take_events`] without allocating: hands each event to `f`
    /// in order (those kept by a failed command first).
    pub fn take_events_with(&mut self, mem: &impl DmaMemory, f: &mut dyn FnMut(Event)) {
        let mut pending = core::mem::take(&mut self.pending);
        for e in pending.drain(..) {
            f(e);
        }
        self.pending = pending; // its room is kept for the next failure
        self.read_events_with(mem, f);
        let status = self.regs().status.get();
        if STATUS::EVENT_OVERFLOW.is_set(status) {
            self.event_overflows += 1;
            log::warn!("amdvi: event log overflow: events were lost");
            let control = self.regs().control.get();
            let halted = !STATUS::EVENT_LOG_RUN.is_set(status);
            if halted {
                self.write_control(control & !CONTROL::EVENT_LOG_EN::SET.value);
            }
            wr(self.trace, &self.regs().status, "Status", STATUS::EVENT_OVERFLOW::SET.value);
            if halted {
                self.write_control(control);
            }
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::fake::{FakeMem, QEMU_EFR};

    #[test]
    fn every_register_write_goes_through_the_trace() {
        for (file, src) in [("unit.rs", include_str!("unit.rs")), ("driver.rs", include_str!("driver.rs"))] {
            let bad = iommu::trace::untraced_writes(src, &["regs", "r."]);
            assert!(bad.is_empty(), "{file}: register writes outside `wr`: {bad:?}");
        }
        assert_eq!(iommu::trace::untraced_writes("        r.cmd_head.set(0);", &["r."]).len(), 1);
    }

    #[test]
    fn bring_up_refuses_a_short_window_before_touching_anything() {
        let mut mem = FakeMem::with_unit(QEMU_EFR);
        let short = mem.register_window().sub(0, 0x1000).unwrap();
        let e = AmdVi::new(short, &mut mem).err();
        assert!(
            matches!(e, Some(AmdViError::RegisterOutsideWindow { offset: 0x2000, end: 0x2028, window: 0x1000, .. })),
            "{e:?}"
        );
        assert_eq!(mem.live(), 0, "nothing allocated");
        assert_eq!(mem.regs().control.get(), 0, "nothing enabled");
        // The whole block works.
        let unit = AmdVi::new(mem.register_window(), &mut mem);
        assert!(unit.is_ok(), "{:?}", unit.err());
    }
}
