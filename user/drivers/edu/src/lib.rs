//! A user-space driver for QEMU's `edu` device (QEMU docs/specs/edu.rst) that
//! uses only the generic IOAS door, so the same source runs on every IOMMU
//! and both architectures.
//!
//! [`check`] claims one `edu` function, binds it, puts it in a fresh IOAS,
//! copies a page RAM → device → RAM through mapped IOVAs and compares, then
//! asks the device to write to an IOVA that was mapped and unmapped again and
//! checks that memory stayed untouched. `edu` reports completion even when the
//! IOMMU blocked its DMA, so the proof is the memory (the kernel logs the
//! decoded fault where the IOMMU model reports one).
#![no_std]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
pub use userlib::driver::{check_that, fail, Failure};
use userlib::iommufd::{self, UnitInfo};
use userlib::sys;

/// Vendor and device ID of `edu`.
pub const EDU: (u16, u16) = (0x1234, 0x11E8);

/// `edu` masks DMA addresses to 28 bits unless QEMU is told otherwise.
const DMA_LIMIT: u64 = 1 << 28;
/// The device's internal buffer.
const EDU_BUFFER: u64 = 0x4_0000;
const PAGE: u64 = 4096;

/// The first `edu` function a task may drive: behind an IOMMU, Bus Master
/// allowed (`DEVICE_DMA_ALLOWED`), by its `device_list` entry.
pub fn first_behind_iommu() -> Option<abi::DeviceInfo> {
    let mut buf = [abi::DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).unwrap_or(0) as usize;
    buf[..n.min(buf.len())]
        .iter()
        .find(|d| (d.vendor, d.device) == EDU && d.flags & abi::DEVICE_DMA_ALLOWED != 0)
        .copied()
}

/// The device's DMA engine through its mapped BAR0.
pub struct Edu {
    regs: u64,
}

impl Edu {
    /// Claims the `edu` function `bdf` (released when the task ends), maps
    /// its BAR0 and turns bus mastering on.
    pub fn open(bdf: u64) -> Result<Edu, Failure> {
        sys::device_claim(bdf).map_err(fail("claim"))?;
        Self::open_claimed(bdf)
    }

    /// As [`Edu::open`] for a function this task already claimed.
    pub fn open_claimed(bdf: u64) -> Result<Edu, Failure> {
        let edu = Edu { regs: sys::device_map_bar(bdf, 0).map_err(fail("map BAR0"))? };
        // Bus mastering on, or the device cannot DMA at all.
        userlib::driver::set_command_bits(bdf, userlib::driver::COMMAND_BUS_MASTER)?;
        Ok(edu)
    }

    fn write64(&self, off: u64, v: u64) {
        // SAFETY: `regs` maps edu's BAR0 in this task (device memory); 0x80..0xA0 take 8-byte writes.
        unsafe { ((self.regs + off) as *mut u64).write_volatile(v) }
    }

    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as in `write64`.
        unsafe { ((self.regs + off) as *const u64).read_volatile() }
    }

    /// Starts copying a page between `iova` and the device buffer and
    /// returns at once (the transfer runs on in the device).
    pub fn start_dma(&self, iova: u64, to_ram: bool) {
        self.start_dma_len(iova, PAGE, to_ram);
    }

    fn start_dma_len(&self, iova: u64, len: u64, to_ram: bool) {
        let (src, dst) = if to_ram { (EDU_BUFFER, iova) } else { (iova, EDU_BUFFER) };
        self.write64(0x80, src);
        self.write64(0x88, dst);
        self.write64(0x90, len.min(PAGE));
        self.write64(0x98, 1 | if to_ram { 2 } else { 0 });
    }

    /// Copies a page between `iova` and the device buffer; waits up to 2 s.
    /// (edu reports completion even when the IOMMU blocked the transfer.)
    pub fn dma(&self, iova: u64, to_ram: bool) -> Result<(), Failure> {
        self.dma_len(iova, PAGE, to_ram)
    }

    /// As [`Edu::dma`] for the first `len` bytes (at most a page) of the
    /// buffer: a 4-byte write to the interrupt window is one message.
    pub fn dma_len(&self, iova: u64, len: u64, to_ram: bool) -> Result<(), Failure> {
        self.start_dma_len(iova, len, to_ram);
        let start = sys::clock().unwrap_or(0);
        while self.read64(0x98) & 1 != 0 {
            if sys::clock().unwrap_or(u64::MAX).saturating_sub(start) > 2_000_000_000 {
                return Err(Failure { what: "DMA did not complete in 2 s", errno: None });
            }
            let _ = sys::yield_now();
        }
        Ok(())
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The unit the device sits behind.
    pub unit: UnitInfo,
    /// IOVA of the source page.
    pub iova: u64,
}

/// Runs the driver on the `edu` function `bdf` (claimed here, released when
/// the task ends): DMA both ways must carry the data, DMA to an unmapped IOVA
/// must leave memory untouched.
pub fn check(bdf: u64) -> Result<Report, Failure> {
    let edu = Edu::open(bdf)?;
    let userlib::driver::Bound { dev, ioas, unit } = userlib::driver::bind_to_new_ioas(bdf)?;
    // Buffers as the IOAS needs them (a page each on most IOMMUs; one
    // IOMMU page each where that is larger: virtio-iommu granule=64k).
    let mut src = iommufd::dma_alloc(ioas, PAGE).map_err(fail("DMA buffer (source)"))?;
    let mut dst = iommufd::dma_alloc(ioas, PAGE).map_err(fail("DMA buffer (destination)"))?;
    let mut canary = iommufd::dma_alloc(ioas, PAGE).map_err(fail("DMA buffer (canary)"))?;
    for (i, b) in src.bytes().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0x5A;
    }
    canary.bytes().fill(0xCC);
    let rw = MAP_READABLE | MAP_WRITEABLE;
    let src_iova = iommufd::map(ioas, src.va, src.len, None, MAP_READABLE).map_err(fail("map source"))?;
    let dst_iova = iommufd::map(ioas, dst.va, dst.len, None, rw).map_err(fail("map destination"))?;
    check_that(src_iova + PAGE <= DMA_LIMIT && dst_iova + PAGE <= DMA_LIMIT, "IOVA beyond edu's 28-bit DMA mask")?;
    edu.dma(src_iova, false)?;
    edu.dma(dst_iova, true)?;
    check_that(dst.bytes()[..PAGE as usize] == src.bytes()[..PAGE as usize], "data did not arrive through the IOMMU")?;
    // Stray DMA: an IOVA that was mapped and is unmapped again.
    let stray = iommufd::map(ioas, canary.va, canary.len, None, rw).map_err(fail("map canary"))?;
    check_that(iommufd::unmap(ioas, stray, canary.len) == Ok(canary.len), "unmap canary")?;
    edu.dma(stray, true)?;
    check_that(canary.bytes().iter().all(|&b| b == 0xCC), "a DMA to an unmapped IOVA reached memory")?;
    // Tear down in order: device detached (DMA blocked), IOAS gone, pages unmapped.
    iommufd::device_detach(dev).map_err(fail("detach"))?;
    iommufd::destroy(ioas).map_err(fail("destroy IOAS"))?;
    iommufd::destroy(dev).map_err(fail("unbind"))?;
    for b in [src, dst, canary] {
        b.free().map_err(fail("mem_unmap"))?;
    }
    Ok(Report { unit, iova: src_iova })
}
