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
use crate::dte::{self, Dte};
use crate::event::{Event, EventCode};
use crate::regs::{Regs, CONTROL, DEVTAB_BASE, EXCL_BASE, RING_BASE, RING_PTR, STATUS};
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use fallible::VecExt;
use iommu::DmaMemory;
use tock_registers::interfaces::{Readable, Writeable};

/// Polls of memory or a register before a wait is declared failed.
const MAX_POLLS: u32 = 1_000_000;
/// Frames of the device table: 65536 DTEs of 32 bytes.
const DEVTAB_FRAMES: usize = 512;
/// log2 of the command buffer entries (256 × 16 bytes: one frame; the spec's minimum).
const CMD_LOG2: u32 = 8;
/// log2 of the event log entries (256 × 16 bytes: one frame).
const EVT_LOG2: u32 = 8;
/// Bytes per command and per event.
const ENTRY: u64 = 16;

/// Why an AMD-Vi operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdViError {
    /// The IOMMU did not complete something in time.
    Timeout(&'static str),
    /// No memory for tables or buffers.
    NoMemory,
    /// The IOMMU lacks something this driver needs (named).
    Unsupported(&'static str),
    /// The IOMMU refused a command (ILLEGAL_COMMAND_ERROR or
    /// COMMAND_HARDWARE_ERROR in the event log); the command buffer was
    /// restarted empty.
    Command {
        /// The event code.
        code: EventCode,
        /// Physical address of the command (or of the failed access).
        address: u64,
    },
    /// Registers the driver uses lie outside the mapped register window
    /// ([`crate::regs::check_window`]): the unit is not used.
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

impl core::fmt::Display for AmdViError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AmdViError::Timeout(what) => write!(f, "AMD-Vi did not complete {what} in time"),
            AmdViError::NoMemory => f.write_str("out of memory for AMD-Vi tables or buffers"),
            AmdViError::Unsupported(what) => write!(f, "AMD-Vi unit lacks {what}"),
            AmdViError::Command { code, address } => {
                write!(f, "AMD-Vi refused the command at {address:#x}: {}", code.name())
            }
            AmdViError::RegisterOutsideWindow { register, offset, end, window } => write!(
                f,
                "AMD-Vi {register} at {offset:#x}..{end:#x} lie outside the {window:#x}-byte register window \
                 (the 16 KiB block of AMD IOMMU spec 3.4)"
            ),
        }
    }
}

fn wait(what: &'static str, done: impl FnMut() -> bool) -> Result<(), AmdViError> {
    if iommu::poll(MAX_POLLS, done) {
        Ok(())
    } else {
        Err(AmdViError::Timeout(what))
    }
}

/// Where byte `offset` of a run of contiguous frames at `base` lives: (frame, word index).
fn locate(base: u64, offset: u64) -> (u64, usize) {
    (base + (offset & !0xFFF), ((offset & 0xFFF) / 8) as usize)
}

/// A ring of 16-byte entries in one run of frames: the command buffer or the event log.
struct Ring {
    base: u64,
    log2: u32,
    /// Our pointer, a byte offset: the tail of the command buffer, the head of the event log.
    at: u64,
}

impl Ring {
    fn bytes(&self) -> u64 {
        ENTRY << self.log2
    }

    fn frames(&self) -> usize {
        self.bytes().div_ceil(4096) as usize
    }

    fn next(&self, at: u64) -> u64 {
        (at + ENTRY) % self.bytes()
    }

    /// The base-register value (address and length).
    fn base_value(&self) -> u64 {
        (RING_BASE::BASE.val(self.base >> 12) + RING_BASE::LEN.val(u64::from(self.log2))).value
    }
}

/// An AMD-Vi IOMMU and its in-memory structures.
pub struct AmdVi {
    base: u64,
    efr: u64,
    devtab: u64,
    cmd: Ring,
    evt: Ring,
    /// Frame the COMPLETION_WAIT stores its sequence number into; the frame
    /// after it is the all-zero table blocked entries point at.
    wait_frame: u64,
    sequence: u64,
    /// Events read while recovering from a refused command, for the next `take_events`.
    pending: Vec<Event>,
    /// Commands issued so far (COMPLETION_WAITs included).
    pub commands: u64,
    /// Event-log overflows seen (events were lost).
    pub event_overflows: u64,
}

impl AmdVi {
    /// The register block.
    fn regs(&self) -> &Regs {
        // SAFETY: `new`'s caller guaranteed that `base` maps the 16 KiB register block for this value's whole life and that nothing else programs the unit; `Regs` is exactly that block, every field a volatile register.
        unsafe { &*(self.base as *const Regs) }
    }

    /// Takes over the unit whose 16 KiB register block is mapped at virtual
    /// address `base`: device table, command buffer and event log installed,
    /// exclusion range off, the unit enabled with every one of the 65536 DTEs
    /// blocked ([`dte::blocked`]: valid, no translation, no access; default
    /// deny, so even a DeviceID no firmware table names reaches nothing), its
    /// caches invalidated (INVALIDATE_IOMMU_ALL where EFR.IASup says so).
    ///
    /// # Safety
    /// `base` is the virtual address of the unit's 16 KiB register block,
    /// mapped (as device memory) for the rest of the kernel's life, and this
    /// value becomes its only user.
    pub unsafe fn new(base: u64, mem: &mut impl DmaMemory) -> Result<AmdVi, AmdViError> {
        // SAFETY: forwarded from the caller, whose mapping is the whole block.
        unsafe { Self::with_window(base, crate::regs::MMIO_SIZE as u64, mem) }
    }

    /// As [`AmdVi::new`] for a register window of `window` bytes: refused
    /// with [`AmdViError::RegisterOutsideWindow`], before any register is
    /// touched, unless it holds every register the driver uses
    /// ([`crate::regs::check_window`]: the 16 KiB block, with CmdHead /
    /// CmdTail / EvtHead / EvtTail / Status at 2000h-2027h).
    ///
    /// # Safety
    /// `base` maps `window` bytes of the unit's registers (device memory)
    /// for the rest of the kernel's life, and this value becomes its only user.
    pub unsafe fn with_window(base: u64, window: u64, mem: &mut impl DmaMemory) -> Result<AmdVi, AmdViError> {
        crate::regs::check_window(window)?;
        let mut unit = AmdVi {
            base,
            efr: 0,
            devtab: 0,
            cmd: Ring { base: 0, log2: CMD_LOG2, at: 0 },
            evt: Ring { base: 0, log2: EVT_LOG2, at: 0 },
            wait_frame: 0,
            sequence: 0,
            pending: Vec::new(),
            commands: 0,
            event_overflows: 0,
        };
        unit.efr = unit.regs().efr.get();
        let levels = crate::regs::host_levels(unit.efr).ok_or(AmdViError::Unsupported("a valid EFR.HATS"))?;
        if levels < crate::driver::LEVELS {
            return Err(AmdViError::Unsupported("4-level host page tables (EFR.HATS)"));
        }
        unit.quiesce()?;
        unit.allocate(mem)?;
        unit.block_all(mem);
        unit.program();
        let on =
            CONTROL::IOMMU_EN::SET + CONTROL::EVENT_LOG_EN::SET + CONTROL::CMD_BUF_EN::SET + CONTROL::COHERENT::SET;
        unit.write_control(on.value);
        // The fresh table is all zero; without INVALIDATE_IOMMU_ALL only DTEs
        // the firmware's table left cached could linger, and each is replaced
        // (and invalidated) when its device is attached.
        let first = if unit.invalidate_all_supported() {
            unit.submit(&[cmd::invalidate_iommu_all()], mem)
        } else {
            unit.sync(mem)
        };
        if let Err(e) = first {
            unit.write_control(0);
            unit.release(mem);
            return Err(e);
        }
        Ok(unit)
    }

    /// Turns off what the firmware may have left running (IommuEn, the
    /// command buffer, the event log) before the bases change.
    fn quiesce(&self) -> Result<(), AmdViError> {
        let running = STATUS::CMD_BUF_RUN::SET.value | STATUS::EVENT_LOG_RUN::SET.value;
        if self.regs().control.get() == 0 && self.regs().status.get() & running == 0 {
            return Ok(());
        }
        log::info!(
            "amdvi: the unit was enabled by firmware (control {:#x}): turning it off",
            self.regs().control.get()
        );
        self.write_control(0);
        wait("stopping the command buffer and event log", || self.regs().status.get() & running == 0)
    }

    /// Allocates the device table, the rings and the completion frame.
    fn allocate(&mut self, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        let devtab = mem.alloc_contiguous(DEVTAB_FRAMES).ok_or(AmdViError::NoMemory)?;
        let (cmd_frames, evt_frames) = (self.cmd.frames(), self.evt.frames());
        let cmd = mem.alloc_contiguous(cmd_frames);
        let evt = mem.alloc_contiguous(evt_frames);
        // The completion frame and, after it, the empty table of [`AmdVi::blocked_dte`].
        let wait = mem.alloc_contiguous(2);
        match (cmd, evt, wait) {
            (Some(c), Some(e), Some(w)) => {
                (self.devtab, self.cmd.base, self.evt.base, self.wait_frame) = (devtab, c, e, w);
                Ok(())
            }
            (c, e, w) => {
                mem.free_contiguous(devtab, DEVTAB_FRAMES);
                c.inspect(|&c| mem.free_contiguous(c, cmd_frames));
                e.inspect(|&e| mem.free_contiguous(e, evt_frames));
                w.inspect(|&w| mem.free_contiguous(w, 2));
                Err(AmdViError::NoMemory)
            }
        }
    }

    /// The blocked entry ([`dte::blocked`]) tagged `domain_id`, over this
    /// unit's empty table.
    pub fn blocked_dte(&self, domain_id: u16) -> Dte {
        dte::blocked(domain_id, self.wait_frame + 4096)
    }

    /// Fills the device table (the unit is off) with blocked entries.
    fn block_all(&self, mem: &mut impl DmaMemory) {
        let entry = self.blocked_dte(dte::BLOCKED_TAG);
        for devid in 0..=u16::MAX {
            let (frame, word) = self.dte_at(devid);
            for (i, q) in entry.iter().enumerate() {
                mem.write(frame, word + i, *q);
            }
        }
    }

    /// Gives back what `allocate` took (bring-up failed).
    fn release(&mut self, mem: &mut impl DmaMemory) {
        mem.free_contiguous(self.devtab, DEVTAB_FRAMES);
        mem.free_contiguous(self.cmd.base, self.cmd.frames());
        mem.free_contiguous(self.evt.base, self.evt.frames());
        mem.free_contiguous(self.wait_frame, 2);
    }

    /// Programs bases, pointers and the exclusion range (the unit is off).
    fn program(&self) {
        let r = self.regs();
        let devtab = DEVTAB_BASE::BASE.val(self.devtab >> 12) + DEVTAB_BASE::SIZE.val(DEVTAB_FRAMES as u64 - 1);
        r.devtab_base.write(devtab);
        r.cmd_base.set(self.cmd.base_value());
        r.evt_base.set(self.evt.base_value());
        r.cmd_head.set(0);
        r.cmd_tail.set(0);
        r.evt_head.set(0);
        r.evt_tail.set(0);
        // No exclusion range: IVMD exclusion ranges become reserved regions
        // (kept out of IOVA allocation) instead of untranslated holes.
        r.excl_base.write(EXCL_BASE::EX_EN::CLEAR);
        r.excl_limit.set(0);
        // Acknowledge whatever W1C status the firmware left.
        let ack = r.status.get() & crate::regs::STATUS_W1C;
        r.status.set(ack);
        if crate::tracing() {
            log::info!(
                "amdvi trace: DEVTAB <- {:#x}, CMD_BASE <- {:#x}, EVT_BASE <- {:#x}, heads/tails <- 0, EXCL_BASE/LIMIT <- 0, STATUS <- {ack:#x}",
                r.devtab_base.get(),
                r.cmd_base.get(),
                r.evt_base.get()
            );
        }
    }

    fn write_control(&self, value: u64) {
        if crate::tracing() {
            log::info!("amdvi trace: CONTROL <- {value:#x}");
        }
        self.regs().control.set(value);
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
            DEVTAB_FRAMES * 4096 / 32,
            1u32 << self.cmd.log2,
            1u32 << self.evt.log2,
        )
    }

    /// Frames the unit itself holds (device table, rings, completion frame,
    /// the blocked entries' empty table): what leak checks leave out.
    pub fn table_frames(&self) -> usize {
        DEVTAB_FRAMES + self.cmd.frames() + self.evt.frames() + 2
    }

    /// Free command slots: the ring holds one entry less than its size, so
    /// that a full ring differs from an empty one (§3.4: head == tail means empty).
    fn free_slots(&self) -> u64 {
        let size = self.cmd.bytes();
        // QEMU stores the unwrapped head (== size) after running the last
        // slot (`amdvi_cmdbuf_run`): reduce it modulo the ring.
        let head = (RING_PTR::OFFSET.read(self.regs().cmd_head.get()) * ENTRY) % size;
        ((head + size - self.cmd.at - ENTRY) % size) / ENTRY
    }

    /// Queues `cmds`, then a COMPLETION_WAIT, and waits until the IOMMU has
    /// completed them all. Batches longer than half the ring go in parts.
    pub fn submit(&mut self, cmds: &[Command], mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        let half = (1usize << self.cmd.log2) / 2;
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
        let done = cmd::completion_wait(self.wait_frame, seq);
        let needed = cmds.len() as u64 + 1;
        if self.free_slots() < needed {
            wait("command buffer space", || self.free_slots() >= needed)?;
        }
        let trace = crate::tracing();
        for c in cmds.iter().chain(core::iter::once(&done)) {
            let (frame, word) = locate(self.cmd.base, self.cmd.at);
            mem.write(frame, word, c[0]);
            mem.write(frame, word + 1, c[1]);
            if trace {
                log::info!(
                    "amdvi trace: cmd [{}] {} {:#018x} {:#018x}",
                    self.cmd.at / ENTRY,
                    cmd::opcode_name(c),
                    c[0],
                    c[1]
                );
            }
            self.cmd.at = self.cmd.next(self.cmd.at);
            self.commands += 1;
        }
        // The entries must be in memory before the IOMMU sees the new tail.
        fence(Ordering::SeqCst);
        if trace {
            log::info!("amdvi trace: CMD_TAIL <- {:#x}", self.cmd.at);
        }
        self.regs().cmd_tail.set(self.cmd.at);
        let wait_frame = self.wait_frame;
        if iommu::poll(MAX_POLLS, || mem.read(wait_frame, 0) == seq) {
            return Ok(());
        }
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
        if crate::tracing() {
            log::info!("amdvi trace: CMD_HEAD <- 0, CMD_TAIL <- 0");
        }
        self.regs().cmd_head.set(0);
        self.regs().cmd_tail.set(0);
        self.cmd.at = 0;
        self.write_control(control);
        match stopped {
            Ok(()) => AmdViError::Command { code: e.code, address: e.address },
            Err(t) => t,
        }
    }

    /// Where DeviceID `devid`'s entry lives: (frame, index of qword 0).
    fn dte_at(&self, devid: u16) -> (u64, usize) {
        locate(self.devtab, u64::from(devid) * 32)
    }

    /// The DTE of `devid` as the table holds it.
    pub fn dte(&self, devid: u16, mem: &impl DmaMemory) -> Dte {
        let (frame, word) = self.dte_at(devid);
        [0, 1, 2, 3].map(|i| mem.read(frame, word + i))
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
        let (frame, word) = self.dte_at(devid);
        if crate::tracing() {
            log::info!(
                "amdvi trace: DTE[{devid:#06x}] <- {:#018x} {:#018x} {:#018x} {:#018x}",
                new[0],
                new[1],
                new[2],
                new[3]
            );
        }
        if !dte::valid(new) {
            for (i, q) in new.iter().enumerate() {
                mem.write(frame, word + i, *q);
            }
        } else {
            if dte::valid(&old) && old[1..] != new[1..] {
                mem.write(frame, word, self.blocked_dte(0)[0]);
                self.submit(&[cmd::invalidate_devtab_entry(devid)], mem)?;
            }
            for i in (1..4).rev() {
                mem.write(frame, word + i, new[i]);
            }
            mem.write(frame, word, new[0]);
        }
        let cmds = [
            cmd::invalidate_devtab_entry(devid),
            cmd::invalidate_iommu_pages(dte::domain_id(&old), cmd::PageRange::ALL, true),
        ];
        let n = if dte::valid(&old) && old[0] & dte::TV != 0 { 2 } else { 1 };
        self.submit(&cmds[..n], mem)
    }

    /// Rewrites `devid`'s interrupt fields (DTE qword 2, §2.2.2.2) in one
    /// store — the translation fields stay as they are, so DMA is not
    /// disturbed — and makes the IOMMU forget the old DTE and whatever it
    /// cached of the device's interrupt table.
    pub fn set_interrupt_fields(&mut self, devid: u16, q2: u64, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        let (frame, word) = self.dte_at(devid);
        if crate::tracing() {
            log::info!("amdvi trace: DTE[{devid:#06x}].q2 <- {q2:#018x}");
        }
        mem.write(frame, word + 2, q2);
        self.submit(&[cmd::invalidate_devtab_entry(devid), crate::intremap::invalidate_interrupt_table(devid)], mem)
    }

    /// Writes `q2` as the interrupt fields of every DTE (turning interrupt
    /// remapping on for the whole table) and invalidates every cached DTE and
    /// interrupt table: with INVALIDATE_IOMMU_ALL where the unit has it, else
    /// one INVALIDATE_DEVTAB_ENTRY and INVALIDATE_INTERRUPT_TABLE per DeviceID.
    pub fn set_all_interrupt_fields(&mut self, q2: u64, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        if crate::tracing() {
            log::info!("amdvi trace: DTE[*].q2 <- {q2:#018x}");
        }
        for devid in 0..=u16::MAX {
            let (frame, word) = self.dte_at(devid);
            mem.write(frame, word + 2, q2);
        }
        if self.invalidate_all_supported() {
            return self.submit(&[cmd::invalidate_iommu_all()], mem);
        }
        for first in (0..=u16::MAX).step_by(64) {
            let cmds: Vec<Command> = (first..=first.saturating_add(63))
                .flat_map(|d| [cmd::invalidate_devtab_entry(d), crate::intremap::invalidate_interrupt_table(d)])
                .collect();
            self.submit(&cmds, mem)?;
        }
        Ok(())
    }

    /// Makes the IOMMU forget what it cached of `devid`'s interrupt table
    /// (INVALIDATE_INTERRUPT_TABLE and a COMPLETION_WAIT, §2.4.5).
    pub fn invalidate_interrupt_table(&mut self, devid: u16, mem: &mut impl DmaMemory) -> Result<(), AmdViError> {
        self.submit(&[crate::intremap::invalidate_interrupt_table(devid)], mem)
    }

    /// Reads the entries between EvtHead and EvtTail, handing each to `f`,
    /// and advances EvtHead.
    fn read_events_with(&mut self, mem: &impl DmaMemory, f: &mut dyn FnMut(Event)) {
        let size = self.evt.bytes();
        let tail = (RING_PTR::OFFSET.read(self.regs().evt_tail.get()) * ENTRY) % size;
        let mut any = false;
        // Bounded by the ring: the IOMMU cannot have more for us.
        for _ in 0..(1u32 << self.evt.log2) {
            if self.evt.at == tail {
                break;
            }
            let (frame, word) = locate(self.evt.base, self.evt.at);
            f(Event::decode([mem.read(frame, word), mem.read(frame, word + 1)]));
            self.evt.at = self.evt.next(self.evt.at);
            any = true;
        }
        if any {
            if crate::tracing() {
                log::info!("amdvi trace: EVT_HEAD <- {:#x}", self.evt.at);
            }
            self.regs().evt_head.set(self.evt.at);
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
            if crate::tracing() {
                log::info!("amdvi trace: STATUS <- EventOverflow (write 1 to clear)");
            }
            self.regs().status.write(STATUS::EVENT_OVERFLOW::SET);
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
    fn bring_up_refuses_a_short_window_before_touching_anything() {
        let mut mem = FakeMem::with_unit(QEMU_EFR);
        // SAFETY: the fake's block is 16 KiB and outlives the call; a refused window touches none of it.
        let e = unsafe { AmdVi::with_window(mem.register_base(), 0x1000, &mut mem) }.err();
        assert!(
            matches!(e, Some(AmdViError::RegisterOutsideWindow { offset: 0x2000, end: 0x2028, window: 0x1000, .. })),
            "{e:?}"
        );
        assert_eq!(mem.live(), 0, "nothing allocated");
        assert_eq!(mem.regs().control.get(), 0, "nothing enabled");
        // The whole block works as `new` does.
        // SAFETY: as above; this unit becomes the block's only user.
        let unit = unsafe { AmdVi::with_window(mem.register_base(), 0x4000, &mut mem) };
        assert!(unit.is_ok(), "{:?}", unit.err());
    }
}
