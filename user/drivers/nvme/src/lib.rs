//! A user-space NVMe driver written against the generic IOAS door only, so
//! the same source runs on every IOMMU and both architectures (NVMe Base
//! Specification 1.4; section numbers below are that document's).
//!
//! [`Nvme::open`] claims the controller, maps BAR0, resets it (CC.EN = 0,
//! wait for CSTS.RDY = 0, bounded by CAP.TO), puts the admin queues at IOVAs
//! of a fresh IOAS, enables it (bounded again), identifies the controller and
//! namespace 1, and creates one I/O queue pair. Completions are found by
//! their phase tag (§4.6) with a deadline; between looks the driver sleeps on
//! the controller's interrupt where the kernel routes one
//! (`device_irq_enable`: MSI-X entry 0 through interrupt remapping on
//! x86_64, through the GICv3 ITS on aarch64), and polls (yielding) where it
//! does not. Data moves through
//! PRP entries (§4.3): the first page in PRP1, the second in PRP2 or, past
//! two pages, a PRP list at an IOVA. A failed command is reported with its
//! status decoded ([`Status`]).
//!
//! [`check`] is the demo: a pattern written over a range of blocks through
//! mapped IOVAs, flushed, read back into another buffer and compared; then a
//! read whose PRP list sits at an IOVA that is not mapped, which the IOMMU
//! must block (the controller cannot fetch the list and fails the command
//! with a data transfer error) while a canary buffer stays untouched; then
//! one more good read, to show the controller still works.
#![no_std]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};
pub use userlib::driver::{check_that, fail, Failure};
use userlib::iommufd::{self, DmaBuffer, UnitInfo};
use userlib::sys;

/// PCI class code of an NVM Express I/O controller (class 01, subclass 08, interface 02).
pub const CLASS_NVME: u32 = 0x01_08_02;

/// Memory page size the driver programs (CC.MPS = 0: 4 KiB).
const PAGE: u64 = 4096;
/// Entries of every queue (a page of submission entries: 64 × 64 bytes).
const QUEUE_ENTRIES: u16 = 64;
/// Size of a submission / completion queue entry (CC.IOSQES / IOCQES are log2 of these).
const SQE: usize = 64;
const CQE: usize = 16;
/// How long one command may take before the driver gives up on it.
const COMMAND_TIMEOUT_NS: u64 = 2_000_000_000;

register_structs! {
    /// The controller registers at the start of BAR0 (§3.1).
    Registers {
        /// Controller Capabilities.
        (0x00 => cap: ReadOnly<u64>),
        /// Version.
        (0x08 => vs: ReadOnly<u32>),
        /// Interrupt Mask Set.
        (0x0C => intms: ReadWrite<u32>),
        /// Interrupt Mask Clear.
        (0x10 => intmc: ReadWrite<u32>),
        /// Controller Configuration.
        (0x14 => cc: ReadWrite<u32>),
        (0x18 => _reserved0),
        /// Controller Status.
        (0x1C => csts: ReadOnly<u32>),
        /// NVM Subsystem Reset.
        (0x20 => nssr: ReadWrite<u32>),
        /// Admin Queue Attributes.
        (0x24 => aqa: ReadWrite<u32>),
        /// Admin Submission Queue Base Address.
        (0x28 => asq: ReadWrite<u64>),
        /// Admin Completion Queue Base Address.
        (0x30 => acq: ReadWrite<u64>),
        (0x38 => @END),
    }
}

/// CC fields (§3.1.5).
mod cc {
    pub const EN: u32 = 1;
    /// I/O submission entry size: 2^6 = 64 bytes.
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O completion entry size: 2^4 = 16 bytes.
    pub const IOCQES_16: u32 = 4 << 20;
}

/// CSTS fields (§3.1.6).
mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 2;
}

/// Admin opcodes (§5).
mod admin {
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
}

/// NVM command set opcodes (NVM Command Set §6 in 1.4's §6).
mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
}

/// A completion's status field (§4.6.1.2): type and code, as the controller
/// reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Status Code Type (0 generic, 1 command specific, 2 media / data integrity, 3 path).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    fn from_dw3(dw3: u32) -> Status {
        Status { sc: (dw3 >> 17) as u8, sct: ((dw3 >> 25) & 7) as u8, dnr: dw3 >> 31 != 0 }
    }

    /// Success (SCT 0, SC 0).
    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The specification's name for it, where the driver knows it.
    pub fn name(self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x13) => "Invalid Number of SGL Descriptors",
            (0, 0x15) => "Invalid Use of Controller Memory Buffer",
            (0, 0x16) => "PRP Offset Invalid",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (1, 0x00) => "Completion Queue Invalid",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x02) => "Invalid Queue Size",
            (1, 0x08) => "Invalid Interrupt Vector",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x86) => "Access Denied",
            _ => "(status not decoded)",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} (SCT {:#x} SC {:#04x}{})", self.name(), self.sct, self.sc, if self.dnr { ", DNR" } else { "" })
    }
}

/// What a command ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// The controller completed it with this status.
    Status(Status),
    /// No completion within the deadline.
    Timeout,
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CommandError::Status(s) => write!(f, "{s}"),
            CommandError::Timeout => f.write_str("no completion within 2 s"),
        }
    }
}

/// A submission queue and its completion queue, in one DMA buffer each.
struct QueuePair {
    id: u16,
    sq: DmaBuffer,
    sq_iova: u64,
    cq: DmaBuffer,
    cq_iova: u64,
    tail: u16,
    head: u16,
    phase: bool,
    next_cid: u16,
}

impl QueuePair {
    fn new(ioas: u32, id: u16) -> Result<QueuePair, Failure> {
        let sq = iommufd::dma_alloc(ioas, QUEUE_ENTRIES as u64 * SQE as u64).map_err(fail("queue memory"))?;
        let cq = iommufd::dma_alloc(ioas, QUEUE_ENTRIES as u64 * CQE as u64).map_err(fail("queue memory"))?;
        let rw = MAP_READABLE | MAP_WRITEABLE;
        let sq_iova = iommufd::map(ioas, sq.va, sq.len, None, MAP_READABLE).map_err(fail("map a submission queue"))?;
        let cq_iova = iommufd::map(ioas, cq.va, cq.len, None, rw).map_err(fail("map a completion queue"))?;
        Ok(QueuePair { id, sq, sq_iova, cq, cq_iova, tail: 0, head: 0, phase: true, next_cid: 0 })
    }
}

/// One command as the driver forms it (the fields of a submission entry it uses, §4.2).
#[derive(Debug, Clone, Copy, Default)]
pub struct Command {
    /// Opcode.
    pub opcode: u8,
    /// Namespace.
    pub nsid: u32,
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2 (second page or PRP list).
    pub prp2: u64,
    /// Command dwords 10 to 15.
    pub cdw: [u32; 6],
}

/// A controller this task drives.
pub struct Nvme {
    regs: &'static Registers,
    bdf: u64,
    /// Completions wake the driver by interrupt (else it polls).
    pub interrupts: bool,
    bar: u64,
    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    stride: u64,
    ioas: u32,
    admin: QueuePair,
    io: Option<QueuePair>,
    /// Controller identity, for the log.
    pub model: [u8; 40],
    /// Blocks of namespace 1.
    pub blocks: u64,
    /// Bytes per block of namespace 1.
    pub block_size: u64,
    /// Largest transfer in bytes (MDTS), 0: no limit.
    pub max_transfer: u64,
}

impl Nvme {
    /// Claims the controller `bdf` (released when the task ends), puts it
    /// into `ioas` (already holding the device, attached by the caller) and
    /// brings it up: reset, admin queues, enable, identify, one I/O queue pair.
    pub fn open(bdf: u64, ioas: u32) -> Result<Nvme, Failure> {
        let bar = sys::device_map_bar(bdf, 0).map_err(fail("map BAR0"))?;
        userlib::driver::set_command_bits(bdf, userlib::driver::COMMAND_MEMORY | userlib::driver::COMMAND_BUS_MASTER)?;
        // SAFETY: `bar` maps BAR0 of the controller in this task (device memory) for the task's life; the register block is its first 0x38 bytes, and tock-registers cells access them volatilely.
        let regs: &'static Registers = unsafe { &*(bar as *const Registers) };
        let cap = regs.cap.get();
        // CAP.TO: worst case for CSTS.RDY to follow CC.EN, in 500 ms units (§3.1.1).
        let ready_ns = ((cap >> 24) & 0xFF).max(1) * 500_000_000;
        let stride = 4u64 << ((cap >> 32) & 0xF);
        let mqes = (cap & 0xFFFF) as u16 + 1;
        check_that(mqes >= QUEUE_ENTRIES, "controller queues shorter than 64 entries")?;
        check_that((cap >> 37) & 1 == 1, "controller without the NVM command set")?;
        check_that((cap >> 48) & 0xF == 0, "controller whose smallest page is larger than 4 KiB")?;
        // Reset: disabled, and wait for it to say so.
        regs.cc.set(0);
        userlib::driver::wait_until(ready_ns, "controller did not stop (CSTS.RDY stayed 1)", || {
            regs.csts.get() & csts::RDY == 0
        })?;
        let admin = QueuePair::new(ioas, 0)?;
        let entries = u32::from(QUEUE_ENTRIES - 1);
        regs.aqa.set(entries << 16 | entries);
        regs.asq.set(admin.sq_iova);
        regs.acq.set(admin.cq_iova);
        // Pin-based and MSI interrupts masked but vector 0 (INTMS/INTMC do not
        // apply to MSI-X); completions raise vector 0 when the kernel routes it.
        regs.intms.set(u32::MAX);
        let interrupts = sys::device_irq_enable(bdf).is_ok();
        if interrupts {
            regs.intmc.set(1);
        }
        regs.cc.set(cc::EN | cc::IOSQES_64 | cc::IOCQES_16);
        userlib::driver::wait_until(ready_ns, "controller did not become ready (CSTS.RDY stayed 0)", || {
            regs.csts.get() & (csts::RDY | csts::CFS) != 0
        })?;
        check_that(regs.csts.get() & csts::CFS == 0, "controller fatal status (CSTS.CFS) after enable")?;
        let mut nvme = Nvme {
            regs,
            bdf,
            interrupts,
            bar,
            stride,
            ioas,
            admin,
            io: None,
            model: [b' '; 40],
            blocks: 0,
            block_size: 0,
            max_transfer: 0,
        };
        nvme.identify()?;
        nvme.create_io_queues()?;
        Ok(nvme)
    }

    /// Disables the controller (CC.EN = 0, bounded wait for CSTS.RDY = 0):
    /// it stops fetching commands and moving data, so its queues and buffers
    /// may go. The task's exit blocks the device in any case.
    pub fn shutdown(&mut self) -> Result<(), Failure> {
        self.regs.cc.set(0);
        let ready_ns = ((self.regs.cap.get() >> 24) & 0xFF).max(1) * 500_000_000;
        userlib::driver::wait_until(ready_ns, "controller did not stop", || self.regs.csts.get() & csts::RDY == 0)
    }

    /// NVMe version register (major, minor).
    pub fn version(&self) -> (u32, u32) {
        let vs = self.regs.vs.get();
        (vs >> 16, (vs >> 8) & 0xFF)
    }

    fn doorbell(&self, index: u64, value: u16) {
        let at = self.bar + 0x1000 + index * self.stride;
        // SAFETY: doorbells lie in BAR0 past 0x1000 (§3.1.10); `index` is 2·qid or 2·qid+1 of a queue the driver created, inside the BAR's 16 KiB for the queue ids used here.
        unsafe { (at as *mut u32).write_volatile(u32::from(value)) }
    }

    /// Submits `cmd` on the admin queue (`io` false) or the I/O queue and
    /// polls for its completion; its dword 0 on success.
    pub fn submit(&mut self, io: bool, cmd: Command) -> Result<u32, CommandError> {
        let q = if io { self.io.as_mut().ok_or(CommandError::Timeout)? } else { &mut self.admin };
        let cid = q.next_cid;
        q.next_cid = q.next_cid.wrapping_add(1);
        let mut e = [0u32; SQE / 4];
        e[0] = u32::from(cmd.opcode) | u32::from(cid) << 16;
        e[1] = cmd.nsid;
        e[6] = cmd.prp1 as u32;
        e[7] = (cmd.prp1 >> 32) as u32;
        e[8] = cmd.prp2 as u32;
        e[9] = (cmd.prp2 >> 32) as u32;
        e[10..16].copy_from_slice(&cmd.cdw);
        let slot = usize::from(q.tail) * SQE;
        let sq = q.sq.bytes();
        for (i, w) in e.iter().enumerate() {
            let at = sq[slot + 4 * i..].as_mut_ptr() as *mut u32;
            // SAFETY: `at` is inside the submission queue buffer (slot + 4 i + 4 <= 64 entries × 64 bytes).
            unsafe { at.write_volatile(*w) };
        }
        q.tail = (q.tail + 1) % QUEUE_ENTRIES;
        let (qid, tail) = (q.id, q.tail);
        // The entry is in memory before the controller is told of it.
        userlib::driver::dma_write_barrier();
        self.doorbell(2 * u64::from(qid), tail);
        // The completion: the entry at the head whose phase tag is the expected one (§4.6).
        let (interrupts, bdf) = (self.interrupts, self.bdf);
        let q = if io { self.io.as_mut().ok_or(CommandError::Timeout)? } else { &mut self.admin };
        let slot = usize::from(q.head) * CQE;
        let base = q.cq.va + slot as u64;
        let read = |off: u64| {
            // SAFETY: the entry lies inside the completion queue buffer, mapped for this task; the controller writes it by DMA, hence the volatile read.
            unsafe { ((base + off) as *const u32).read_volatile() }
        };
        let phase = q.phase;
        let arrived = || (read(12) >> 16 & 1 == 1) == phase;
        if userlib::driver::wait_on(interrupts.then_some(bdf), COMMAND_TIMEOUT_NS, "", arrived).is_err() {
            return Err(CommandError::Timeout);
        }
        // The rest of the entry is read after its phase tag was seen.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let (dw0, dw3) = (read(0), read(12));
        q.head = (q.head + 1) % QUEUE_ENTRIES;
        if q.head == 0 {
            q.phase = !q.phase;
        }
        let (qid, head) = (q.id, q.head);
        self.doorbell(2 * u64::from(qid) + 1, head);
        let status = Status::from_dw3(dw3);
        if dw3 & 0xFFFF != u32::from(cid) {
            return Err(CommandError::Status(Status { sct: 7, sc: 0xFF, dnr: true }));
        }
        if status.is_success() {
            Ok(dw0)
        } else {
            Err(CommandError::Status(status))
        }
    }

    /// Identify controller (CNS 1) and namespace 1 (CNS 0), §5.15.
    fn identify(&mut self) -> Result<(), Failure> {
        let mut buf = iommufd::dma_alloc(self.ioas, PAGE).map_err(fail("identify buffer"))?;
        let rw = MAP_READABLE | MAP_WRITEABLE;
        let iova = iommufd::map(self.ioas, buf.va, buf.len, None, rw).map_err(fail("map the identify buffer"))?;
        let id = |cns: u32, nsid: u32| Command {
            opcode: admin::IDENTIFY,
            nsid,
            prp1: iova,
            cdw: [cns, 0, 0, 0, 0, 0],
            ..Command::default()
        };
        self.submit(false, id(1, 0)).map_err(|_| Failure::new("identify controller failed"))?;
        let data = buf.bytes();
        self.model.copy_from_slice(&data[24..64]);
        let mdts = data[77];
        self.max_transfer = if mdts == 0 { 0 } else { PAGE << mdts };
        let namespaces = u32::from_le_bytes([data[516], data[517], data[518], data[519]]);
        check_that(namespaces >= 1, "controller has no namespace")?;
        data.fill(0);
        self.submit(false, id(0, 1)).map_err(|_| Failure::new("identify namespace 1 failed"))?;
        let data = buf.bytes();
        self.blocks = u64::from_le_bytes(data[0..8].try_into().unwrap_or([0; 8]));
        let format = usize::from(data[26] & 0xF);
        let lbaf = 128 + 4 * format;
        let lbads = data[lbaf + 2];
        check_that((9..=12).contains(&lbads), "namespace block size is not 512 B to 4 KiB")?;
        self.block_size = 1 << lbads;
        check_that(self.blocks > 0, "namespace 1 has no blocks")?;
        iommufd::unmap(self.ioas, iova, buf.len).map_err(fail("unmap the identify buffer"))?;
        buf.free().map_err(fail("free the identify buffer"))?;
        Ok(())
    }

    /// Create I/O completion queue 1, then submission queue 1 on it (§5.3, §5.4).
    fn create_io_queues(&mut self) -> Result<(), Failure> {
        let q = QueuePair::new(self.ioas, 1)?;
        let size = u32::from(QUEUE_ENTRIES - 1) << 16;
        // Physically contiguous (PC = 1); interrupts (IEN, vector 0) when routed.
        let ien = if self.interrupts { 2 } else { 0 };
        let cq = Command {
            opcode: admin::CREATE_IO_CQ,
            prp1: q.cq_iova,
            cdw: [size | 1, ien | 1, 0, 0, 0, 0],
            ..Command::default()
        };
        self.submit(false, cq).map_err(|_| Failure::new("create I/O completion queue failed"))?;
        let sq = Command {
            opcode: admin::CREATE_IO_SQ,
            prp1: q.sq_iova,
            cdw: [size | 1, 1 << 16 | 1, 0, 0, 0, 0],
            ..Command::default()
        };
        self.submit(false, sq).map_err(|_| Failure::new("create I/O submission queue failed"))?;
        self.io = Some(q);
        Ok(())
    }

    /// Reads (`write` false) or writes `blocks` blocks from `lba` to or from
    /// the memory at `iova` (PRP1); `prp2` is its second page, or the IOVA of
    /// a PRP list of its pages past the first, or 0 for one page (§4.3).
    pub fn rw(&mut self, write: bool, lba: u64, blocks: u32, iova: u64, prp2: u64) -> Result<(), CommandError> {
        let cmd = Command {
            opcode: if write { io::WRITE } else { io::READ },
            nsid: 1,
            prp1: iova,
            prp2,
            cdw: [lba as u32, (lba >> 32) as u32, blocks.saturating_sub(1) & 0xFFFF, 0, 0, 0],
        };
        self.submit(true, cmd).map(|_| ())
    }

    /// Flush (volatile write cache to media).
    pub fn flush(&mut self) -> Result<(), CommandError> {
        self.submit(true, Command { opcode: io::FLUSH, nsid: 1, ..Command::default() }).map(|_| ())
    }
}

/// A data buffer with its PRP list (the IOVAs of its pages past the first),
/// both mapped in one IOAS.
pub struct Transfer {
    /// The data.
    pub data: DmaBuffer,
    /// Where the data is mapped.
    pub iova: u64,
    /// The PRP list.
    pub list: DmaBuffer,
    /// Where the PRP list is mapped.
    pub list_iova: u64,
    /// The rights the data is mapped with.
    flags: u32,
}

impl Transfer {
    /// A zeroed buffer of `len` bytes (rounded up to the IOAS's alignment)
    /// mapped for the device to read, and to write when `write_to_memory`.
    pub fn new(ioas: u32, len: u64, write_to_memory: bool) -> Result<Transfer, Failure> {
        let data = iommufd::dma_alloc(ioas, len).map_err(fail("data buffer"))?;
        let flags = if write_to_memory { MAP_READABLE | MAP_WRITEABLE } else { MAP_READABLE };
        let iova = iommufd::map(ioas, data.va, data.len, None, flags).map_err(fail("map a data buffer"))?;
        let mut list = iommufd::dma_alloc(ioas, PAGE).map_err(fail("PRP list"))?;
        for (i, slot) in list.bytes().chunks_exact_mut(8).enumerate() {
            // Entry i: the IOVA of page i + 1 (PRP1 holds page 0).
            let page = iova + (i as u64 + 1) * PAGE;
            let v = if page < iova + data.len { page } else { 0 };
            slot.copy_from_slice(&v.to_le_bytes());
        }
        let list_iova = iommufd::map(ioas, list.va, list.len, None, MAP_READABLE).map_err(fail("map a PRP list"))?;
        Ok(Transfer { data, iova, list, list_iova, flags })
    }

    /// Unmaps the data (the device can reach it no more); its IOVA stays
    /// the buffer's, so [`Transfer::map_again`] puts it back where the PRP list says.
    pub fn unmap(&self, ioas: u32) -> Result<(), userlib::Errno> {
        iommufd::unmap(ioas, self.iova, self.data.len).map(|_| ())
    }

    /// Maps the data again at its IOVA.
    pub fn map_again(&self, ioas: u32) -> Result<(), userlib::Errno> {
        iommufd::map(ioas, self.data.va, self.data.len, Some(self.iova), self.flags).map(|_| ())
    }

    /// PRP2 for a transfer of `len` bytes from the start of the buffer (§4.3).
    pub fn prp2(&self, len: u64) -> u64 {
        match len.div_ceil(PAGE) {
            0 | 1 => 0,
            2 => self.iova + PAGE,
            _ => self.list_iova,
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The unit the controller sits behind.
    pub unit: UnitInfo,
    /// Blocks written and read back.
    pub blocks: u32,
    /// Block size.
    pub block_size: u64,
    /// How the stray read ended (the controller's status, or a timeout).
    pub stray: CommandError,
    /// Completions came by interrupt (else by polling).
    pub interrupts: bool,
}

/// Bytes the demo writes and reads back (8 pages: a PRP list is needed).
const SPAN: u64 = 8 * PAGE;

/// Runs the demo on the NVMe controller `bdf` (claimed here, released when
/// the task ends): written data must read back, a read whose PRP list is at
/// an unmapped IOVA must fail with memory untouched, and the controller must
/// still serve a read after it.
pub fn check(bdf: u64) -> Result<Report, Failure> {
    sys::device_claim(bdf).map_err(fail("claim"))?;
    let userlib::driver::Bound { dev, ioas, unit } = userlib::driver::bind_to_new_ioas(bdf)?;
    let mut nvme = Nvme::open(bdf, ioas)?;
    let blocks = (SPAN / nvme.block_size) as u32;
    check_that(nvme.blocks >= u64::from(blocks) + 16, "namespace too small for the demo")?;
    check_that(nvme.max_transfer == 0 || nvme.max_transfer >= SPAN, "controller transfers less than 32 KiB")?;
    let mut out = Transfer::new(ioas, SPAN, false)?;
    let mut back = Transfer::new(ioas, SPAN, true)?;
    for (i, b) in out.data.bytes().iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ 0xA5;
    }
    let lba = 8;
    let what = |e: CommandError| match e {
        CommandError::Timeout => Failure::new("an NVMe command timed out"),
        CommandError::Status(_) => Failure::new("an NVMe command failed"),
    };
    nvme.rw(true, lba, blocks, out.iova, out.prp2(SPAN)).map_err(what)?;
    nvme.flush().map_err(what)?;
    nvme.rw(false, lba, blocks, back.iova, back.prp2(SPAN)).map_err(what)?;
    check_that(back.data.bytes()[..SPAN as usize] == out.data.bytes()[..SPAN as usize], "data read back differs")?;
    // Stray DMA: a read whose PRP list is at an IOVA that was mapped and is not
    // any more. The controller must not reach the memory behind it.
    let mut canary = Transfer::new(ioas, SPAN, true)?;
    canary.data.bytes().fill(0xCC);
    check_that(iommufd::unmap(ioas, canary.list_iova, canary.list.len) == Ok(canary.list.len), "unmap the PRP list")?;
    let stray = match nvme.rw(false, lba, blocks, canary.iova, canary.list_iova) {
        Ok(()) => return Err(Failure::new("a read through an unmapped PRP list succeeded")),
        Err(e) => e,
    };
    check_that(canary.data.bytes()[PAGE as usize..].iter().all(|&b| b == 0xCC), "a stray DMA reached memory")?;
    // The controller still works.
    back.data.bytes().fill(0);
    nvme.rw(false, lba, blocks, back.iova, back.prp2(SPAN)).map_err(what)?;
    check_that(
        back.data.bytes()[..SPAN as usize] == out.data.bytes()[..SPAN as usize],
        "read after the stray one differs",
    )?;
    // Tear down: the controller stopped, detached (DMA blocked) before the memory goes.
    nvme.shutdown()?;
    iommufd::device_detach(dev).map_err(fail("detach"))?;
    iommufd::destroy(ioas).map_err(fail("destroy IOAS"))?;
    iommufd::destroy(dev).map_err(fail("unbind"))?;
    for b in [out.data, out.list, back.data, back.list, canary.data, canary.list] {
        b.free().map_err(fail("free a buffer"))?;
    }
    Ok(Report { unit, blocks, block_size: nvme.block_size, stray, interrupts: nvme.interrupts })
}
