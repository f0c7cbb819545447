//! A user-space virtio-blk driver written against the generic IOAS door only
//! (virtio 1.2: §4.1 the PCI modern transport, §2.7 split virtqueues, §5.2
//! the block device), for `virtio-blk-pci,disable-legacy=on,iommu_platform=on`.
//!
//! [`VirtioBlk::open`] finds the transport's capabilities in configuration
//! space (§4.1.4), maps the BAR that holds them, resets the device, negotiates
//! VERSION_1 and ACCESS_PLATFORM (the device's DMA goes through the IOMMU,
//! §6.1; without it the device would bypass translation), puts request queue
//! 0 (descriptor table, available and used rings) at IOVAs of the IOAS, and
//! sets DRIVER_OK. Requests are header + data + status chains (§5.2.6),
//! found in the used ring with a deadline; between looks the driver sleeps
//! on MSI-X vector 0 where the kernel routes it (`device_irq_enable`: entry 0
//! through interrupt remapping on x86_64, through the GICv3 ITS on aarch64;
//! the queue's `queue_msix_vector` is 0), and otherwise polls, with the
//! device told not to interrupt (VIRTQ_AVAIL_F_NO_INTERRUPT, no vector).
//!
//! The kernel's virtio-iommu driver has its own split virtqueue
//! (`drivers/virtio-iommu/src/queue.rs`): it works on physical frames through
//! the kernel's `iommu::DmaMemory`, and user crates depend only on `user/` and
//! leaf crates (`cargo xtask layers`), so this one is written against IOVAs.
//!
//! [`check`] is the demo: a pattern written over a range of sectors, flushed,
//! read back and compared; then a read whose data buffer is an IOVA that is
//! not mapped, which the IOMMU blocks (QEMU's device then stops with
//! DEVICE_NEEDS_RESET or fails the request) while the canary stays untouched;
//! then a reset, a new start and one more good read.
#![no_std]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::ReadWrite;
pub use userlib::driver::{check_that, fail, Failure};
use userlib::iommufd::{self, DmaBuffer, UnitInfo};
use userlib::sys;

/// Vendor and device ID of a modern (non-transitional) virtio block device.
pub const VIRTIO_BLK: (u16, u16) = (0x1AF4, 0x1042);

const PAGE: u64 = 4096;
/// Queue entries the driver uses (at most what the device offers).
const QUEUE_SIZE: u16 = 64;
/// How long one request may take.
const REQUEST_TIMEOUT_NS: u64 = 2_000_000_000;
/// VIRTIO_MSI_NO_VECTOR (§4.1.5.1.2).
const NO_VECTOR: u16 = 0xFFFF;

/// Feature bits (§6, §5.2.3).
mod feature {
    pub const BLK_FLUSH: u64 = 1 << 9;
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// Device status bits (§2.1).
mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Request types (§5.2.6).
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
}

register_structs! {
    /// The common configuration structure (§4.1.4.3).
    CommonCfg {
        (0x00 => device_feature_select: ReadWrite<u32>),
        (0x04 => device_feature: ReadWrite<u32>),
        (0x08 => driver_feature_select: ReadWrite<u32>),
        (0x0C => driver_feature: ReadWrite<u32>),
        (0x10 => config_msix_vector: ReadWrite<u16>),
        (0x12 => num_queues: ReadWrite<u16>),
        (0x14 => device_status: ReadWrite<u8>),
        (0x15 => config_generation: ReadWrite<u8>),
        (0x16 => queue_select: ReadWrite<u16>),
        (0x18 => queue_size: ReadWrite<u16>),
        (0x1A => queue_msix_vector: ReadWrite<u16>),
        (0x1C => queue_enable: ReadWrite<u16>),
        (0x1E => queue_notify_off: ReadWrite<u16>),
        (0x20 => queue_desc: ReadWrite<u64>),
        (0x28 => queue_driver: ReadWrite<u64>),
        (0x30 => queue_device: ReadWrite<u64>),
        (0x38 => @END),
    }
}

/// Where one transport structure lives: BAR and offset in it (§4.1.4).
#[derive(Debug, Clone, Copy, Default)]
struct Region {
    bar: u8,
    offset: u64,
    length: u64,
}

/// The capabilities the driver needs, and the notify multiplier.
#[derive(Debug, Clone, Copy, Default)]
struct Caps {
    common: Option<Region>,
    notify: Option<Region>,
    device: Option<Region>,
    notify_multiplier: u32,
}

/// Walks the capability list for the virtio vendor capabilities (§4.1.4): a
/// bounded walk (48 entries at most, so a looping list cannot hang it).
fn find_caps(bdf: u64) -> Result<Caps, Failure> {
    let read =
        |off: u64, width: u64| sys::device_config_read(bdf, off, width).map_err(fail("read configuration space"));
    let mut caps = Caps::default();
    check_that(read(0x06, 2)? & 0x10 != 0, "no capability list")?;
    let mut at = read(0x34, 1)? & 0xFC;
    for _ in 0..48 {
        if at < 0x40 {
            break;
        }
        let (id, next) = (read(at, 1)?, read(at + 1, 1)? & 0xFC);
        if id == 0x09 {
            let cfg_type = read(at + 3, 1)?;
            let region = Region { bar: read(at + 4, 1)? as u8, offset: read(at + 8, 4)?, length: read(at + 12, 4)? };
            match cfg_type {
                1 => caps.common = caps.common.or(Some(region)),
                2 if caps.notify.is_none() => {
                    caps.notify = Some(region);
                    caps.notify_multiplier = read(at + 16, 4)? as u32;
                }
                4 => caps.device = caps.device.or(Some(region)),
                _ => {}
            }
        }
        at = next;
    }
    Ok(caps)
}

/// A descriptor the driver posts: IOVA, length, whether the device writes it.
#[derive(Debug, Clone, Copy)]
struct Desc {
    iova: u64,
    len: u32,
    device_writes: bool,
}

/// Queue 0 in one DMA buffer: descriptor table at 0, available ring at
/// 1 KiB, used ring at 2 KiB (§2.7; 64 entries fit one page).
struct Queue {
    mem: DmaBuffer,
    iova: u64,
    /// Free-running index of the next available entry (§2.7.6).
    avail_idx: u16,
    /// Free-running index of the next used entry to look at (§2.7.8).
    used_idx: u16,
}

const DESC_AT: u64 = 0;
const AVAIL_AT: u64 = 1024;
const USED_AT: u64 = 2048;

impl Queue {
    fn write<T: Copy>(&mut self, off: u64, v: T) {
        debug_assert!(off as usize + core::mem::size_of::<T>() <= self.mem.len as usize);
        // SAFETY: `off` lies inside the queue's buffer (the layout above stays within its first page).
        unsafe { ((self.mem.va + off) as *mut T).write_volatile(v) }
    }

    fn read<T: Copy>(&self, off: u64) -> T {
        // SAFETY: as in `write`; the device writes the used ring by DMA, hence the volatile read.
        unsafe { ((self.mem.va + off) as *const T).read_volatile() }
    }
}

/// A virtio-blk device this task drives.
pub struct VirtioBlk {
    bdf: u64,
    /// Where the BAR holding the structures is mapped.
    bar: u64,
    common: &'static CommonCfg,
    notify_at: u64,
    device_cfg: u64,
    queue: Queue,
    /// Header (at 0) and status byte (at 512) of the one request in flight.
    req: DmaBuffer,
    req_iova: u64,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    flush: bool,
    /// The kernel routed the function's MSI-X entry 0 (`device_irq_enable`).
    routed: bool,
    /// Queue 0 raises MSI-X vector 0 and the driver sleeps on it (else it polls).
    pub interrupts: bool,
}

/// What a request ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The device answered with this status byte (1 IOERR, 2 UNSUPP).
    Status(u8),
    /// The device stopped and asks for a reset (DEVICE_NEEDS_RESET).
    NeedsReset,
    /// No answer within the deadline.
    Timeout,
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::Status(1) => f.write_str("VIRTIO_BLK_S_IOERR"),
            RequestError::Status(2) => f.write_str("VIRTIO_BLK_S_UNSUPP"),
            RequestError::Status(s) => write!(f, "status {s}"),
            RequestError::NeedsReset => f.write_str("device stopped (DEVICE_NEEDS_RESET)"),
            RequestError::Timeout => f.write_str("no answer within 2 s"),
        }
    }
}

impl VirtioBlk {
    /// Brings up the claimed virtio-blk function `bdf` with its queue in `ioas`
    /// (which already holds the device).
    pub fn open(bdf: u64, ioas: u32) -> Result<VirtioBlk, Failure> {
        let caps = find_caps(bdf)?;
        let (common, notify, device) = match (caps.common, caps.notify, caps.device) {
            (Some(c), Some(n), Some(d)) => (c, n, d),
            _ => return Err(Failure::new("virtio capabilities missing (a legacy device? use disable-legacy=on)")),
        };
        check_that(common.bar == notify.bar && common.bar == device.bar, "virtio structures in different BARs")?;
        check_that(common.length >= 0x38 && device.length >= 8 && notify.length >= 2, "virtio structures too short")?;
        let bar = sys::device_map_bar(bdf, u64::from(common.bar)).map_err(fail("map the virtio BAR"))?;
        userlib::driver::set_command_bits(bdf, userlib::driver::COMMAND_MEMORY | userlib::driver::COMMAND_BUS_MASTER)?;
        // SAFETY: `bar` maps the BAR for the task's life; the common structure is at `common.offset` inside it, at least 0x38 bytes long (checked), accessed through tock-registers cells.
        let common_cfg: &'static CommonCfg = unsafe { &*((bar + common.offset) as *const CommonCfg) };
        let queue_mem = iommufd::dma_alloc(ioas, PAGE).map_err(fail("queue memory"))?;
        let rw = MAP_READABLE | MAP_WRITEABLE;
        let queue_iova = iommufd::map(ioas, queue_mem.va, queue_mem.len, None, rw).map_err(fail("map the queue"))?;
        let req = iommufd::dma_alloc(ioas, PAGE).map_err(fail("request memory"))?;
        let req_iova = iommufd::map(ioas, req.va, req.len, None, rw).map_err(fail("map the request header"))?;
        let mut blk = VirtioBlk {
            bdf,
            bar,
            common: common_cfg,
            notify_at: 0,
            device_cfg: bar + device.offset,
            queue: Queue { mem: queue_mem, iova: queue_iova, avail_idx: 0, used_idx: 0 },
            req,
            req_iova,
            sectors: 0,
            flush: false,
            // Before the queue asks for vector 0: MSI-X enabled by the kernel.
            routed: sys::device_irq_enable(bdf).is_ok(),
            interrupts: false,
        };
        blk.start(bar + notify.offset, caps.notify_multiplier, notify.length)?;
        Ok(blk)
    }

    /// Reset, negotiation, queue 0, DRIVER_OK (§3.1.1).
    fn start(&mut self, notify_base: u64, multiplier: u32, notify_len: u64) -> Result<(), Failure> {
        let c = self.common;
        c.device_status.set(0);
        userlib::driver::wait_until(REQUEST_TIMEOUT_NS, "device did not reset", || c.device_status.get() == 0)?;
        c.device_status.set(status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for half in 0..2u32 {
            c.device_feature_select.set(half);
            offered |= u64::from(c.device_feature.get()) << (32 * half);
        }
        check_that(offered & feature::VERSION_1 != 0, "device without VERSION_1")?;
        check_that(
            offered & feature::ACCESS_PLATFORM != 0,
            "device without ACCESS_PLATFORM: its DMA would bypass the IOMMU (iommu_platform=on)",
        )?;
        let wanted = feature::VERSION_1 | feature::ACCESS_PLATFORM | (offered & feature::BLK_FLUSH);
        for half in 0..2u32 {
            c.driver_feature_select.set(half);
            c.driver_feature.set((wanted >> (32 * half)) as u32);
        }
        c.device_status.set(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        if c.device_status.get() & status::FEATURES_OK == 0 {
            // Given up on (§3.1.1): the device is told so.
            c.device_status.set(status::ACKNOWLEDGE | status::DRIVER | status::FAILED);
            return Err(Failure::new("device refused the features"));
        }
        self.flush = wanted & feature::BLK_FLUSH != 0;
        // Queue 0: requests.
        c.queue_select.set(0);
        let size = c.queue_size.get();
        check_that(size >= QUEUE_SIZE, "request queue shorter than 64 entries")?;
        c.queue_size.set(QUEUE_SIZE);
        // Vector 0 (the MSI-X entry the kernel programmed) where routed, for
        // the queue and for configuration changes (DEVICE_NEEDS_RESET wakes
        // the driver too); the device answers VIRTIO_MSI_NO_VECTOR (0xFFFF)
        // to a vector it cannot use (§4.1.5.1.2), and then the queue is polled.
        c.config_msix_vector.set(if self.routed { 0 } else { NO_VECTOR });
        c.queue_msix_vector.set(if self.routed { 0 } else { NO_VECTOR });
        self.interrupts = self.routed && c.queue_msix_vector.get() == 0;
        self.queue.mem.bytes()[..(USED_AT + 4 + 8 * u64::from(QUEUE_SIZE)) as usize].fill(0);
        self.queue.avail_idx = 0;
        self.queue.used_idx = 0;
        // Polled, the device is told not to interrupt (VIRTQ_AVAIL_F_NO_INTERRUPT, §2.7.7).
        self.queue.write::<u16>(AVAIL_AT, u16::from(!self.interrupts));
        c.queue_desc.set(self.queue.iova + DESC_AT);
        c.queue_driver.set(self.queue.iova + AVAIL_AT);
        c.queue_device.set(self.queue.iova + USED_AT);
        let off = u64::from(c.queue_notify_off.get()) * u64::from(multiplier);
        check_that(off + 2 <= notify_len, "queue notify address outside the notify structure")?;
        self.notify_at = notify_base + off;
        c.queue_enable.set(1);
        c.device_status.set(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        // SAFETY: the device configuration structure (at least 8 bytes, checked) starts with the capacity.
        self.sectors = unsafe { (self.device_cfg as *const u64).read_volatile() };
        check_that(self.sectors > 0, "device has no sectors")?;
        Ok(())
    }

    /// Resets the device and starts it again (after DEVICE_NEEDS_RESET).
    pub fn restart(&mut self) -> Result<(), Failure> {
        let caps = find_caps(self.bdf)?;
        let notify = caps.notify.ok_or(Failure::new("notify capability gone"))?;
        self.start(self.bar + notify.offset, caps.notify_multiplier, notify.length)
    }

    /// Stops the device (status 0: it drops its queues and moves no data).
    pub fn shutdown(&mut self) -> Result<(), Failure> {
        self.common.device_status.set(0);
        let c = self.common;
        userlib::driver::wait_until(REQUEST_TIMEOUT_NS, "device did not reset", || c.device_status.get() == 0)
    }

    /// Posts `chain` as descriptors 0.. and waits for its used entry; the
    /// request's status byte is at `self.req + 512`.
    fn run(&mut self, chain: &[Desc]) -> Result<(), RequestError> {
        for (i, d) in chain.iter().enumerate() {
            let at = DESC_AT + 16 * i as u64;
            let last = i + 1 == chain.len();
            let flags: u16 = if last { 0 } else { 1 } | if d.device_writes { 2 } else { 0 };
            self.queue.write::<u64>(at, d.iova);
            self.queue.write::<u32>(at + 8, d.len);
            self.queue.write::<u16>(at + 12, flags);
            self.queue.write::<u16>(at + 14, if last { 0 } else { i as u16 + 1 });
        }
        let slot = self.queue.avail_idx % QUEUE_SIZE;
        self.queue.write::<u16>(AVAIL_AT + 4 + 2 * u64::from(slot), 0);
        // The descriptors and ring entry are visible before the index moves (§2.7.13).
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.queue.avail_idx = self.queue.avail_idx.wrapping_add(1);
        self.queue.write::<u16>(AVAIL_AT + 2, self.queue.avail_idx);
        userlib::driver::dma_write_barrier();
        // SAFETY: `notify_at` is inside the notify structure of the mapped BAR (checked in `start`).
        unsafe { (self.notify_at as *mut u16).write_volatile(0) };
        let want = self.queue.used_idx.wrapping_add(1);
        let c = self.common;
        let q = &self.queue;
        let finished = || q.read::<u16>(USED_AT + 2) == want || c.device_status.get() & status::NEEDS_RESET != 0;
        let done = userlib::driver::wait_on(self.interrupts.then_some(self.bdf), REQUEST_TIMEOUT_NS, "", finished);
        if self.queue.read::<u16>(USED_AT + 2) != want {
            return Err(if done.is_ok() { RequestError::NeedsReset } else { RequestError::Timeout });
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let slot = self.queue.used_idx % QUEUE_SIZE;
        let id: u32 = self.queue.read(USED_AT + 4 + 8 * u64::from(slot));
        self.queue.used_idx = want;
        if id != 0 {
            return Err(RequestError::Status(0xFF));
        }
        // SAFETY: byte 512 of the request buffer, which the device wrote by DMA.
        let s = unsafe { ((self.req.va + 512) as *const u8).read_volatile() };
        if s == 0 {
            Ok(())
        } else {
            Err(RequestError::Status(s))
        }
    }

    /// Reads (`write` false) or writes `len` bytes (a multiple of 512) at
    /// `sector` from or to the memory at `iova`.
    pub fn rw(&mut self, write: bool, sector: u64, iova: u64, len: u32) -> Result<(), RequestError> {
        let header = self.req.bytes();
        header[0..4].copy_from_slice(&(if write { req::OUT } else { req::IN }).to_le_bytes());
        header[4..8].fill(0);
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        header[512] = 0xFF;
        let chain = [
            Desc { iova: self.req_iova, len: 16, device_writes: false },
            Desc { iova, len, device_writes: !write },
            Desc { iova: self.req_iova + 512, len: 1, device_writes: true },
        ];
        self.run(&chain)
    }

    /// Flushes the device's write cache (when it offers VIRTIO_BLK_F_FLUSH).
    pub fn flush(&mut self) -> Result<(), RequestError> {
        if !self.flush {
            return Ok(());
        }
        let header = self.req.bytes();
        header[0..4].copy_from_slice(&req::FLUSH.to_le_bytes());
        header[4..16].fill(0);
        header[512] = 0xFF;
        let chain = [
            Desc { iova: self.req_iova, len: 16, device_writes: false },
            Desc { iova: self.req_iova + 512, len: 1, device_writes: true },
        ];
        self.run(&chain)
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The unit the device sits behind.
    pub unit: UnitInfo,
    /// Sectors written and read back.
    pub sectors: u64,
    /// How the stray read ended: `None` when the device completed it (its
    /// writes to the unmapped IOVA dropped by the IOMMU).
    pub stray: Option<RequestError>,
    /// Completions woke the driver by interrupt (else it polled).
    pub interrupts: bool,
}

/// Bytes the demo writes and reads back.
const SPAN: u64 = 8 * PAGE;

/// Runs the demo on the virtio-blk function `bdf` (claimed here, released
/// when the task ends).
pub fn check(bdf: u64) -> Result<Report, Failure> {
    sys::device_claim(bdf).map_err(fail("claim"))?;
    let userlib::driver::Bound { dev, ioas, unit } = userlib::driver::bind_to_new_ioas(bdf)?;
    let mut blk = VirtioBlk::open(bdf, ioas)?;
    check_that(blk.sectors >= SPAN / 512 + 64, "device too small for the demo")?;
    let rw = MAP_READABLE | MAP_WRITEABLE;
    let mut out = iommufd::dma_alloc(ioas, SPAN).map_err(fail("data buffer"))?;
    let out_iova = iommufd::map(ioas, out.va, out.len, None, MAP_READABLE).map_err(fail("map a data buffer"))?;
    let mut back = iommufd::dma_alloc(ioas, SPAN).map_err(fail("data buffer"))?;
    let back_iova = iommufd::map(ioas, back.va, back.len, None, rw).map_err(fail("map a data buffer"))?;
    for (i, b) in out.bytes().iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_246_822_519).to_le_bytes()[i % 4] ^ 0x3C;
    }
    let sector = 16;
    let what = |_| Failure::new("a virtio-blk request failed");
    blk.rw(true, sector, out_iova, SPAN as u32).map_err(what)?;
    blk.flush().map_err(what)?;
    blk.rw(false, sector, back_iova, SPAN as u32).map_err(what)?;
    check_that(back.bytes()[..SPAN as usize] == out.bytes()[..SPAN as usize], "data read back differs")?;
    // Stray DMA: a read into an IOVA that was mapped and is not any more.
    let mut canary = iommufd::dma_alloc(ioas, SPAN).map_err(fail("canary buffer"))?;
    canary.bytes().fill(0xCC);
    let stray_iova = iommufd::map(ioas, canary.va, canary.len, None, rw).map_err(fail("map the canary"))?;
    check_that(iommufd::unmap(ioas, stray_iova, canary.len) == Ok(canary.len), "unmap the canary")?;
    let stray = blk.rw(false, sector, stray_iova, SPAN as u32).err();
    check_that(canary.bytes().iter().all(|&b| b == 0xCC), "a stray DMA reached memory")?;
    // QEMU may complete the read (the blocked writes dropped) or stop the
    // device; either way the memory stayed untouched. Start it again and read.
    if stray.is_some() {
        blk.restart()?;
    }
    back.bytes().fill(0);
    blk.rw(false, sector, back_iova, SPAN as u32).map_err(what)?;
    check_that(back.bytes()[..SPAN as usize] == out.bytes()[..SPAN as usize], "read after the stray one differs")?;
    blk.shutdown()?;
    iommufd::device_detach(dev).map_err(fail("detach"))?;
    iommufd::destroy(ioas).map_err(fail("destroy IOAS"))?;
    iommufd::destroy(dev).map_err(fail("unbind"))?;
    for b in [out, back, canary] {
        b.free().map_err(fail("free a buffer"))?;
    }
    Ok(Report { unit, sectors: SPAN / 512, stray, interrupts: blk.interrupts })
}
