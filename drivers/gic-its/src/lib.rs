//! The Arm GICv3 Interrupt Translation Service (ITS; Arm GIC architecture
//! specification IHI 0069, §5.2 "The ITS", §5.3 "ITS commands", §12.19 the
//! GITS_* registers): what turns a PCI function's MSI into an interrupt on
//! aarch64, and what keeps one device from raising another's.
//!
//! A device's MSI is a 32-bit write of an *EventID* to GITS_TRANSLATER (the
//! second 64 KiB frame of the ITS, [`TRANSLATER_OFFSET`]). The ITS knows the
//! writer by its *DeviceID*, which the interconnect attaches (on QEMU virt and
//! in the usual `msi-map` / IORT identity: the PCI requester ID, after any
//! SMMU in the path), never by anything the device wrote. It looks the
//! DeviceID up in its device table (one entry per device, pointing at the
//! device's *interrupt translation table*, ITT) and the EventID in that ITT;
//! only an event the kernel mapped (MAPD, MAPTI) becomes an LPI, delivered to
//! the redistributor its collection names (MAPC). Any other write is
//! dropped. So a device can raise exactly the interrupts the kernel mapped
//! for its own DeviceID — the confinement VT-d and AMD-Vi give through
//! interrupt remapping — whatever it writes to the doorbell.
//!
//! [`Its::new`] disables the ITS, gives it a command queue and its device
//! and collection tables (sized from GITS_TYPER and the DeviceIDs asked
//! for), enables it and maps collection 0 to the boot CPU's redistributor.
//! [`Its::map_event`] and [`Its::unmap_device`] then add and remove
//! (DeviceID, EventID) → LPI translations; every change ends with SYNC and a
//! bounded wait for the ITS to consume it. The LPI configuration and pending
//! tables the redistributor reads are [`lpi::LpiTables`].
//!
//! The device table, collection table and ITTs hold entries in a format the
//! ITS chooses; the driver only provides zeroed memory. Memory the ITS may
//! still write (it stopped answering) is never given back.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cmd;
pub mod lpi;
pub mod regs;

use cmd::{Command, RdBase};
use core::fmt;
use iommu::dma::DmaRegion;
use iommu::mmio::tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use iommu::mmio::{BlockRef, MmioWindow};
use iommu::ring::{Indexing, ProducerRing};
use iommu::DmaMemory;
use regs::{ItsRegisters, GITS_BASER, GITS_CBASER, GITS_CREADR, GITS_CTLR, GITS_TYPER};

/// GITS_TRANSLATER's offset from the ITS base: the doorbell devices write.
pub const TRANSLATER_OFFSET: u64 = 0x1_0040;
/// Devices with mapped events at once (the kernel routes at most one
/// interrupt slot per claimed device, eight slots in all).
pub const MAX_DEVICES: usize = 16;
/// EventID bits every device is mapped with (32 events: MSI-X entries 0..31).
const EVENT_BITS: u32 = 5;
/// Bound on polls of CREADR and GITS_CTLR.Quiescent.
const MAX_POLLS: u32 = 1_000_000;
/// Command-queue slots (one 4 KiB page of 32-byte commands).
const QUEUE_LOG2: u32 = 7;
/// Cacheability and shareability the ITS is told for its memory:
/// write-back read/write-allocate, inner shareable.
const WB_RAWA: u64 = 0b111;
const INNER_SHAREABLE: u64 = 0b01;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// GITS_TYPER.Physical is clear: this ITS cannot deliver physical LPIs.
    NoPhysicalLpis,
    /// A bounded wait ran out (what it waited for).
    Timeout(&'static str),
    /// The ITS stopped at a command it refused (GITS_CREADR.Stalled), at
    /// this byte offset of the queue.
    Stalled(u64),
    /// Frames for a table ran out.
    NoMemory,
    /// The device table has no entry for this DeviceID.
    DeviceOutOfRange {
        /// The DeviceID asked for.
        device: u32,
        /// DeviceIDs the table covers (0 .. covered).
        covered: u32,
    },
    /// The EventID is beyond what a device is mapped with.
    EventOutOfRange(u32),
    /// [`MAX_DEVICES`] devices already have events mapped.
    TooManyDevices,
    /// The ITS has no device table (no GITS_BASER of type Devices).
    NoDeviceTable,
    /// The register window is smaller than the control frame's registers.
    WindowTooSmall,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoPhysicalLpis => write!(f, "the ITS does not support physical LPIs (GITS_TYPER.Physical clear)"),
            Error::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Error::Stalled(at) => write!(f, "the ITS stalled at the command at queue offset {at:#x}"),
            Error::NoMemory => write!(f, "out of memory for ITS tables"),
            Error::DeviceOutOfRange { device, covered } => {
                write!(f, "DeviceID {device:#x} is beyond the device table ({covered:#x} entries)")
            }
            Error::EventOutOfRange(e) => {
                write!(f, "EventID {e} is beyond the {} events a device gets", 1 << EVENT_BITS)
            }
            Error::TooManyDevices => write!(f, "{MAX_DEVICES} devices already have interrupts mapped"),
            Error::NoDeviceTable => write!(f, "the ITS has no device table (no GITS_BASER of type Devices)"),
            Error::WindowTooSmall => write!(f, "the ITS register window is too small"),
        }
    }
}

/// A device with events mapped: its DeviceID, its ITT and which EventIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Device {
    id: u32,
    itt: DmaRegion,
    events: u32,
}

/// One ITS, enabled, with collection 0 on one redistributor.
pub struct Its<M: DmaMemory> {
    regs: BlockRef<ItsRegisters>,
    /// The memory its queue and tables come from.
    pub mem: M,
    queue: ProducerRing,
    /// The tables given to `GITS_BASER<n>` (None: that register is unused).
    tables: [Option<DmaRegion>; 8],
    device_ids: u32,
    event_bits: u32,
    rd: RdBase,
    translater: u64,
    devices: [Option<Device>; MAX_DEVICES],
    commands: u64,
}

impl<M: DmaMemory> fmt::Debug for Its<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Its")
            .field("translater", &format_args!("{:#x}", self.translater))
            .field("device_ids", &self.device_ids)
            .field("devices", &self.devices.iter().flatten().count())
            .finish()
    }
}

/// Bytes of a GITS_BASER Page_Size code (0 4 KiB, 1 16 KiB, 2 64 KiB).
fn page_bytes(code: u64) -> u64 {
    match code {
        0 => 0x1000,
        1 => 0x4000,
        _ => 0x1_0000,
    }
}

impl<M: DmaMemory> Its<M> {
    /// Brings up the ITS whose control frame is `window` (64 KiB) and whose physical
    /// base is `base` (GITS_TRANSLATER is at `base + TRANSLATER_OFFSET`):
    /// quiesced, given its queue and tables (the device table covering
    /// DeviceIDs below `device_ids`, or fewer if GITS_TYPER.Devbits says so),
    /// enabled, collection 0 mapped to the redistributor at physical
    /// address `rd_pa` / with processor number `processor` (whichever
    /// GITS_TYPER.PTA says commands use). On failure every frame is given
    /// back unless the ITS may still use it.
    pub fn new(
        window: MmioWindow,
        base: u64,
        mut mem: M,
        device_ids: u32,
        rd_pa: u64,
        processor: u16,
    ) -> Result<Its<M>, Error> {
        let regs = window.checked::<ItsRegisters>(0).map_err(|_| Error::WindowTooSmall)?;
        if !regs.typer.is_set(GITS_TYPER::PHYSICAL) {
            return Err(Error::NoPhysicalLpis);
        }
        // Tables and the queue may change only while the ITS is disabled and
        // quiescent. (Quiescent is read-only: a read-modify-write is a plain write of Enabled.)
        regs.ctlr.modify(GITS_CTLR::ENABLED::CLEAR);
        if !iommu::poll(MAX_POLLS, || regs.ctlr.is_set(GITS_CTLR::QUIESCENT)) {
            return Err(Error::Timeout("GITS_CTLR.Quiescent"));
        }
        let region = DmaRegion::alloc_contiguous(&mut mem, 1).ok_or(Error::NoMemory)?;
        // One page holds 1 << QUEUE_LOG2 slots of four words: the geometry always fits.
        let Ok(queue) = ProducerRing::new(region, QUEUE_LOG2, 4, Indexing::Offsets) else {
            region.free_contiguous(&mut mem);
            return Err(Error::NoMemory);
        };
        let typer = regs.typer.extract();
        let id_bits = typer.read(GITS_TYPER::ID_BITS) as u32 + 1;
        // An ITT of 2^event_bits entries of at most 16 bytes (ITT_entry_size
        // is four bits) is at most 512 bytes: one frame always holds it.
        let event_bits = EVENT_BITS.min(id_bits);
        let rd = if typer.is_set(GITS_TYPER::PTA) { RdBase::physical(rd_pa) } else { RdBase::processor(processor) };
        let mut its = Its {
            regs,
            mem,
            queue,
            tables: [None; 8],
            device_ids: 0,
            event_bits,
            rd,
            translater: base + TRANSLATER_OFFSET,
            devices: [None; MAX_DEVICES],
            commands: 0,
        };
        if let Err(e) = its.program_tables(device_ids) {
            its.release();
            return Err(e);
        }
        let q = its.queue.region().base();
        regs.cbaser.write(
            GITS_CBASER::VALID::SET
                + GITS_CBASER::INNER_CACHE.val(WB_RAWA)
                + GITS_CBASER::SHAREABILITY.val(INNER_SHAREABLE)
                + GITS_CBASER::PHYSICAL_ADDRESS.val(q >> 12)
                + GITS_CBASER::SIZE.val(0),
        );
        regs.cwriter.set(0);
        regs.ctlr.modify(GITS_CTLR::ENABLED::SET);
        if let Err(e) = its.submit(&[Command::mapc(0, rd, true), Command::invall(0), Command::sync(rd)]) {
            // Disabled and quiescent: the ITS touches none of it any more.
            regs.ctlr.modify(GITS_CTLR::ENABLED::CLEAR);
            if iommu::poll(MAX_POLLS, || regs.ctlr.is_set(GITS_CTLR::QUIESCENT)) {
                its.release();
            } else {
                log::error!("its: not quiescent after a failed bring-up; its tables stay allocated");
            }
            return Err(e);
        }
        Ok(its)
    }

    /// Gives every GITS_BASER of type Devices or Collections a zeroed,
    /// flat table of 64 KiB pages (or the page size it insists on).
    fn program_tables(&mut self, device_ids: u32) -> Result<(), Error> {
        let typer = self.regs.typer.extract();
        let dev_limit = 1u64 << (typer.read(GITS_TYPER::DEV_BITS) + 1);
        for n in 0..8 {
            let reg = &self.regs.baser[n];
            let value = reg.extract();
            let wanted = match value.read_as_enum(GITS_BASER::TYPE) {
                Some(GITS_BASER::TYPE::Value::Devices) => u64::from(device_ids.max(1)).min(dev_limit),
                // Collection 0 only.
                Some(GITS_BASER::TYPE::Value::Collections) => 1,
                _ => continue,
            };
            let entry = value.read(GITS_BASER::ENTRY_SIZE) + 1;
            // Ask for 64 KiB pages; an ITS that supports fewer sizes reads back one it has.
            reg.write(GITS_BASER::PAGE_SIZE::Size64K + GITS_BASER::TYPE.val(value.read(GITS_BASER::TYPE)));
            // 3 is reserved: taken (and written back) as 64 KiB.
            let code = reg.read(GITS_BASER::PAGE_SIZE).min(2);
            let page = page_bytes(code);
            let pages = (wanted * entry).div_ceil(page).clamp(1, 256);
            let frames = ((pages * page) / 4096) as usize;
            let table =
                DmaRegion::alloc_contiguous(&mut self.mem, frames.next_power_of_two()).ok_or(Error::NoMemory)?;
            self.tables[n] = Some(table);
            let pa = table.base();
            // 64 KiB pages carry address bits 51:48 in field bits 3:0.
            let field = if page == 0x1_0000 { (pa >> 12) & !0xF | (pa >> 48) & 0xF } else { pa >> 12 };
            reg.write(
                GITS_BASER::VALID::SET
                    + GITS_BASER::INNER_CACHE.val(WB_RAWA)
                    + GITS_BASER::SHAREABILITY.val(INNER_SHAREABLE)
                    + GITS_BASER::PAGE_SIZE.val(code)
                    + GITS_BASER::PHYSICAL_ADDRESS.val(field)
                    + GITS_BASER::SIZE.val(pages - 1),
            );
            if value.read_as_enum(GITS_BASER::TYPE) == Some(GITS_BASER::TYPE::Value::Devices) {
                self.device_ids = ((pages * page) / entry).min(dev_limit).min(u64::from(u32::MAX)) as u32;
            }
        }
        if self.device_ids == 0 {
            return Err(Error::NoDeviceTable);
        }
        Ok(())
    }

    /// Frees the queue, the tables and every ITT (only when the ITS is
    /// disabled and quiescent, or never enabled).
    fn release(&mut self) {
        for t in self.tables.iter_mut().filter_map(Option::take) {
            t.free_contiguous(&mut self.mem);
        }
        for d in self.devices.iter_mut().filter_map(Option::take) {
            d.itt.free_frame(&mut self.mem);
        }
        self.queue.region().free_contiguous(&mut self.mem);
    }

    /// Queues `commands`, rings GITS_CWRITER and waits until the ITS has
    /// read past the last one (it processes commands in order, so the SYNC
    /// a batch ends with has then completed).
    fn submit(&mut self, commands: &[Command]) -> Result<(), Error> {
        let creadr = self.regs.creadr.extract();
        if creadr.is_set(GITS_CREADR::STALLED) {
            return Err(Error::Stalled(creadr.read(GITS_CREADR::OFFSET) << 5));
        }
        self.queue.set_head_offset(creadr.read(GITS_CREADR::OFFSET) << 5);
        if self.queue.free() < commands.len() as u32 {
            return Err(Error::Timeout("room in the ITS command queue"));
        }
        for c in commands {
            log::trace!("its: {c}");
            // Room was checked above: the push cannot fail.
            let _ = self.queue.push(&mut self.mem, &c.0);
        }
        self.commands += commands.len() as u64;
        let regs = &self.regs;
        let tail = self.queue.publish(|q| {
            regs.cwriter.set(q.tail_offset());
            q.tail_offset()
        });
        let mut stalled = None;
        let done = iommu::poll(MAX_POLLS, || {
            let r = regs.creadr.extract();
            if r.is_set(GITS_CREADR::STALLED) {
                stalled = Some(r.read(GITS_CREADR::OFFSET) << 5);
                return true;
            }
            r.read(GITS_CREADR::OFFSET) << 5 == tail
        });
        if let Some(at) = stalled {
            return Err(Error::Stalled(at));
        }
        if !done {
            return Err(Error::Timeout("GITS_CREADR to reach GITS_CWRITER"));
        }
        self.queue.retire_all();
        Ok(())
    }

    /// Maps `event` of `device` to `lpi` (in collection 0): afterwards a
    /// write of `event` to the doorbell by that device raises `lpi`. The
    /// device's ITT is made on its first event. The LPI's configuration
    /// byte should be written first ([`lpi::LpiTables::configure`]): the INV
    /// this ends with makes the redistributor read it.
    pub fn map_event(&mut self, device: u32, event: u32, lpi: u32) -> Result<(), Error> {
        if device >= self.device_ids {
            return Err(Error::DeviceOutOfRange { device, covered: self.device_ids });
        }
        if event >= 1 << self.event_bits {
            return Err(Error::EventOutOfRange(event));
        }
        let index = match self.devices.iter().position(|d| d.is_some_and(|d| d.id == device)) {
            Some(i) => i,
            None => {
                let i = self.devices.iter().position(Option::is_none).ok_or(Error::TooManyDevices)?;
                let itt = DmaRegion::alloc_frame(&mut self.mem).ok_or(Error::NoMemory)?;
                if let Err(e) = self.submit(&[Command::mapd(device, self.event_bits, itt.base(), true)]) {
                    log::error!("its: MAPD of device {device:#x} failed ({e}); its ITT stays allocated");
                    return Err(e);
                }
                self.devices[i] = Some(Device { id: device, itt, events: 0 });
                i
            }
        };
        let rd = self.rd;
        self.submit(&[Command::mapti(device, event, lpi, 0), Command::inv(device, event), Command::sync(rd)])?;
        if let Some(d) = self.devices[index].as_mut() {
            d.events |= 1 << event;
        }
        Ok(())
    }

    /// Removes `event` of `device` (DISCARD, which also drops an LPI it
    /// left pending); the device's last event takes the device with it
    /// (MAPD with V clear) and its ITT is freed. Afterwards a write of that
    /// event by the device raises nothing. Nothing mapped is `Ok`.
    pub fn unmap_event(&mut self, device: u32, event: u32) -> Result<(), Error> {
        let events = self.devices.iter().flatten().find(|d| d.id == device).map_or(0, |d| d.events);
        if event >= 32 || events & 1 << event == 0 {
            return Ok(());
        }
        self.remove(device, 1 << event)
    }

    /// Removes every event of `device` and the device itself, as
    /// [`Its::unmap_event`] does for its last one.
    pub fn unmap_device(&mut self, device: u32) -> Result<(), Error> {
        self.remove(device, u32::MAX)
    }

    /// Discards the events of `device` in `which`; unmaps the device when
    /// none is left.
    fn remove(&mut self, device: u32, which: u32) -> Result<(), Error> {
        let Some(i) = self.devices.iter().position(|d| d.is_some_and(|d| d.id == device)) else {
            return Ok(());
        };
        let Some(d) = self.devices[i] else { return Ok(()) };
        let gone = d.events & which;
        let left = d.events & !which;
        let mut batch = [Command([0; 4]); 34];
        let mut n = 0;
        for e in (0..32).filter(|e| gone & 1 << e != 0) {
            batch[n] = Command::discard(device, e);
            n += 1;
        }
        if left == 0 {
            batch[n] = Command::mapd(device, self.event_bits, 0, false);
            n += 1;
        }
        batch[n] = Command::sync(self.rd);
        self.submit(&batch[..n + 1])?;
        if left == 0 {
            self.devices[i] = None;
            d.itt.free_frame(&mut self.mem);
        } else if let Some(d) = self.devices[i].as_mut() {
            d.events = left;
        }
        Ok(())
    }

    /// Raises `event` of `device` as if the device had written it (the INT
    /// command): what a test uses to reach an LPI without a device.
    pub fn raise(&mut self, device: u32, event: u32) -> Result<(), Error> {
        let rd = self.rd;
        self.submit(&[Command::int(device, event), Command::sync(rd)])
    }

    /// Physical address of GITS_TRANSLATER: the MSI address of every device.
    pub fn translater(&self) -> u64 {
        self.translater
    }

    /// DeviceIDs the device table covers (0 .. this).
    pub fn device_ids(&self) -> u32 {
        self.device_ids
    }

    /// Whether `device` has any event mapped.
    pub fn is_mapped(&self, device: u32) -> bool {
        self.devices.iter().flatten().any(|d| d.id == device)
    }

    /// Commands submitted since bring-up.
    pub fn commands(&self) -> u64 {
        self.commands
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Frames in a map, handed out upwards from 1 GiB, optionally limited.
    #[derive(Default)]
    pub struct Mem {
        words: BTreeMap<u64, u64>,
        frames: BTreeMap<u64, ()>,
        next: u64,
        pub limit: Option<usize>,
    }

    impl Mem {
        /// Memory that gives out at most `frames` frames.
        pub fn limited(frames: usize) -> Mem {
            Mem { limit: Some(frames), ..Mem::default() }
        }

        pub fn live(&self) -> usize {
            self.frames.len()
        }
    }

    impl io_pgtable::TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            self.alloc_contiguous(1)
        }
        fn free_table(&mut self, pa: u64) {
            self.free_contiguous(pa, 1)
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.words.get(&(table + index as u64 * 8)).copied().unwrap_or(0)
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.words.insert(table + index as u64 * 8, value);
        }
    }

    impl DmaMemory for Mem {
        fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
            if self.limit.is_some_and(|l| self.frames.len() + frames > l) {
                return None;
            }
            let size = frames as u64 * 4096;
            let base = (0x4000_0000 + self.next).next_multiple_of(size);
            self.next = base + size - 0x4000_0000;
            for f in 0..frames as u64 {
                self.frames.insert(base + f * 4096, ());
            }
            Some(base)
        }
        fn free_contiguous(&mut self, base: u64, frames: usize) {
            for f in 0..frames as u64 {
                assert!(self.frames.remove(&(base + f * 4096)).is_some(), "freed a frame not allocated");
                self.words.retain(|&a, _| a & !0xFFF != base + f * 4096);
            }
        }
    }

    /// A fake control frame ([`iommu::mmio::FakeMmio`]) with a thread
    /// standing in for the ITS: it consumes every command at once (CREADR
    /// follows CWRITER) unless told to hang. Quiescent is set from the
    /// start (the driver changes Enabled with read-modify-writes).
    struct Fake {
        mmio: iommu::mmio::FakeMmio,
        stop: Arc<AtomicBool>,
        hang: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Fake {
        fn new(typer: u64) -> Fake {
            let mmio = iommu::mmio::FakeMmio::new(0x1_0000).unwrap();
            mmio.write_u64(0x8, typer);
            // GITS_BASER0: Devices, 8-byte entries; GITS_BASER1: Collections, 8-byte entries.
            mmio.write_u64(0x100, (1 << 56) | (7 << 48));
            mmio.write_u64(0x108, (4 << 56) | (7 << 48));
            mmio.write_u32(0, 1 << 31);
            let (stop, hang) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let (s, h) = (stop.clone(), hang.clone());
            let thread = std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    if !h.load(Ordering::SeqCst) {
                        let w = mmio.read_u64(0x88);
                        let r = mmio.read_u64(0x90);
                        if r & 1 == 0 && r != w & 0xF_FFE0 {
                            mmio.write_u64(0x90, w & 0xF_FFE0);
                        }
                    }
                    std::thread::yield_now();
                }
            });
            Fake { mmio, stop, hang, thread: Some(thread) }
        }

        fn window(&self) -> MmioWindow {
            self.mmio.window()
        }

        fn baser(&self, n: u64) -> u64 {
            self.mmio.read_u64(0x100 + 8 * n)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// QEMU's GITS_TYPER: Physical, 12-byte ITT entries, 16 EventID bits,
    /// 16 DeviceID bits, PTA 0, CIL with 16 collection ID bits.
    const QEMU_TYPER: u64 = 1 | (11 << 4) | (15 << 8) | (15 << 13) | (15 << 32) | (1 << 36);

    fn commands(its: &Its<Mem>) -> Vec<Command> {
        let n = its.commands as u32;
        (0..n)
            .map(|i| {
                let mut w = [0u64; 4];
                its.queue.read_slot(&its.mem, i, &mut w).unwrap();
                Command(w)
            })
            .collect()
    }

    #[test]
    fn bring_up_programs_queue_and_tables_and_maps_collection_zero() {
        let fake = Fake::new(QEMU_TYPER);
        let its = Its::new(fake.window(), 0x0808_0000, Mem::default(), 0x200, 0x080A_0000, 0).unwrap();
        assert_eq!(its.translater(), 0x0809_0040);
        let dt = fake.baser(0);
        assert_eq!(dt >> 63, 1, "device table valid");
        assert_eq!((dt >> 8) & 3, 2, "64 KiB pages");
        assert_eq!(dt & 0xFF, 0, "0x200 devices × 8 bytes fit one page");
        assert_eq!(dt & 0x0000_FFFF_FFFF_0000, its.tables[0].unwrap().base());
        assert_eq!(its.tables[0].unwrap().base() % 0x1_0000, 0, "page aligned");
        assert_eq!(its.device_ids(), 0x2000, "a whole page of entries is usable");
        assert_eq!(fake.baser(1) >> 63, 1, "collection table valid");
        let cbaser = fake.mmio.read_u64(0x80);
        assert_eq!(cbaser >> 63, 1);
        assert_eq!(cbaser & 0x000F_FFFF_FFFF_F000, its.queue.region().base());
        assert_eq!(fake.mmio.read_u32(0) & 1, 1, "enabled");
        let c = commands(&its);
        assert_eq!(c, [Command::mapc(0, RdBase::processor(0), true), Command::invall(0), Command::sync(RdBase(0))]);
    }

    #[test]
    fn redistributors_are_named_by_address_when_pta_is_set() {
        let fake = Fake::new(QEMU_TYPER | 1 << 19);
        let its = Its::new(fake.window(), 0x0808_0000, Mem::default(), 16, 0x080C_0000, 1).unwrap();
        assert_eq!(commands(&its)[0], Command::mapc(0, RdBase::physical(0x080C_0000), true));
    }

    #[test]
    fn events_map_and_unmap_with_their_itt() {
        let fake = Fake::new(QEMU_TYPER);
        let mut its = Its::new(fake.window(), 0x0808_0000, Mem::default(), 0x100, 0, 0).unwrap();
        let base = its.mem.live();
        its.map_event(0x8, 0, 8192).unwrap();
        assert!(its.is_mapped(0x8));
        assert_eq!(its.mem.live(), base + 1, "one ITT frame");
        let itt = its.devices[0].unwrap().itt.base();
        let c = commands(&its);
        assert_eq!(
            c[3..],
            [
                Command::mapd(0x8, 5, itt, true),
                Command::mapti(0x8, 0, 8192, 0),
                Command::inv(0x8, 0),
                Command::sync(RdBase(0))
            ]
        );
        its.map_event(0x8, 3, 8195).unwrap();
        its.map_event(0x8, 4, 8196).unwrap();
        assert_eq!(its.mem.live(), base + 1, "the same ITT");
        its.unmap_event(0x8, 4).unwrap();
        assert_eq!(commands(&its)[commands(&its).len() - 2..], [Command::discard(0x8, 4), Command::sync(RdBase(0))]);
        assert!(its.is_mapped(0x8), "two events left");
        let n = commands(&its).len();
        its.unmap_event(0x8, 4).unwrap();
        its.unmap_event(0x8, 40).unwrap();
        its.unmap_event(0x9, 0).unwrap();
        assert_eq!(commands(&its).len(), n, "nothing mapped there: no command");
        its.unmap_device(0x8).unwrap();
        assert!(!its.is_mapped(0x8));
        assert_eq!(its.mem.live(), base, "ITT freed");
        let c = commands(&its);
        let n = c.len();
        assert_eq!(
            c[n - 4..],
            [
                Command::discard(0x8, 0),
                Command::discard(0x8, 3),
                Command::mapd(0x8, 5, 0, false),
                Command::sync(RdBase(0))
            ]
        );
        its.unmap_device(0x8).unwrap();
        assert_eq!(commands(&its).len(), n, "nothing mapped: no command");
    }

    #[test]
    fn bad_requests_are_refused_before_any_command() {
        let fake = Fake::new(QEMU_TYPER);
        let mut its = Its::new(fake.window(), 0, Mem::default(), 0x10, 0, 0).unwrap();
        let covered = its.device_ids();
        let before = its.commands();
        assert_eq!(its.map_event(covered, 0, 8192), Err(Error::DeviceOutOfRange { device: covered, covered }));
        assert_eq!(its.map_event(u32::MAX, 0, 8192), Err(Error::DeviceOutOfRange { device: u32::MAX, covered }));
        assert_eq!(its.map_event(1, 32, 8192), Err(Error::EventOutOfRange(32)));
        assert_eq!(its.commands(), before);
        for d in 0..MAX_DEVICES as u32 {
            its.map_event(d, 0, 8192 + d).unwrap();
        }
        assert_eq!(its.map_event(MAX_DEVICES as u32, 0, 8192), Err(Error::TooManyDevices));
    }

    #[test]
    fn an_its_that_stops_consuming_times_out_and_stalls_are_reported() {
        let fake = Fake::new(QEMU_TYPER);
        let mut its = Its::new(fake.window(), 0, Mem::default(), 0x10, 0, 0).unwrap();
        fake.hang.store(true, Ordering::SeqCst);
        assert_eq!(its.map_event(1, 0, 8192), Err(Error::Timeout("GITS_CREADR to reach GITS_CWRITER")));
        // A stalled queue: CREADR.Stalled set.
        fake.mmio.write_u64(0x90, fake.mmio.read_u64(0x90) | 1);
        assert!(matches!(its.raise(1, 0), Err(Error::Stalled(_))));
    }

    #[test]
    fn a_bring_up_that_times_out_leaves_the_its_disabled() {
        let fake = Fake::new(QEMU_TYPER);
        fake.hang.store(true, Ordering::SeqCst);
        let mem = Mem::default();
        let e = Its::new(fake.window(), 0, mem, 0x10, 0, 0).unwrap_err();
        assert_eq!(e, Error::Timeout("GITS_CREADR to reach GITS_CWRITER"));
        assert_eq!(fake.mmio.read_u32(0) & 1, 0, "left disabled");
    }

    #[test]
    fn an_its_without_physical_lpis_or_a_device_table_is_refused() {
        let fake = Fake::new(QEMU_TYPER & !1);
        assert_eq!(Its::new(fake.window(), 0, Mem::default(), 0x10, 0, 0).unwrap_err(), Error::NoPhysicalLpis);
        let fake = Fake::new(QEMU_TYPER);
        fake.mmio.write_u64(0x100, 0); // BASER0 unimplemented
        let mem = Mem::limited(64);
        assert_eq!(Its::new(fake.window(), 0, mem, 0x10, 0, 0).unwrap_err(), Error::NoDeviceTable);
    }

    #[test]
    fn short_memory_fails_cleanly() {
        // Queue 1 frame, device table 16, collection table 16.
        for limit in 0..33 {
            let fake = Fake::new(QEMU_TYPER);
            let mem = Mem::limited(limit);
            assert_eq!(Its::new(fake.window(), 0, mem, 0x10, 0, 0).unwrap_err(), Error::NoMemory, "limit {limit}");
        }
    }
}
