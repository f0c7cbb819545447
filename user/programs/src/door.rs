//! The selftest `Door` over the real `iommufd` syscall, shared by the
//! programs that drive it (`test-ioas`, `sysfuzz`) through `#[path]`.

use abi::iommufd::IovaRange;
use abi::Errno;
use alloc::vec::Vec;
use ioas_selftest::Door;
use userlib::{iommufd, sys};

/// The selftest [`Door`] over the real `iommufd` syscall.
pub struct SyscallDoor {
    /// (bdf, unit index by name) of each claimed edu.
    pub devices: Vec<(u64, usize)>,
    /// Each device's edu, once `dma_read` opened it.
    edus: Vec<Option<edu_driver::Edu>>,
    /// The page `dma_read` has the device copy what it read into.
    result: Option<u64>,
}

impl SyscallDoor {
    /// A door over the claimed edus `devices`.
    pub fn new(devices: Vec<(u64, usize)>) -> Self {
        SyscallDoor { devices, edus: Vec::new(), result: None }
    }
}

/// Where `dma_read` maps its result page (clear of the selftest's IOVAs).
const RESULT_IOVA: u64 = 0x7FF0_0000;
/// What the result page holds before a read: a blocked read leaves it.
const MARKER: u64 = 0x6D61_726B_6572_2121;

impl Door for SyscallDoor {
    fn ioas_alloc(&mut self) -> Result<u32, Errno> {
        iommufd::ioas_alloc()
    }
    fn destroy(&mut self, id: u32) -> Result<(), Errno> {
        iommufd::destroy(id)
    }
    fn iova_ranges(&mut self, id: u32) -> Result<(Vec<(u64, u64)>, u64), Errno> {
        let mut buf = [IovaRange::default(); 16];
        let (n, align) = iommufd::iova_ranges(id, &mut buf)?;
        Ok((buf[..n.min(16)].iter().map(|r| (r.start, r.last)).collect(), align))
    }
    fn allow_iovas(&mut self, id: u32, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let r: Vec<IovaRange> = ranges.iter().map(|&(start, last)| IovaRange { start, last }).collect();
        iommufd::allow_iovas(id, &r)
    }
    fn map(&mut self, id: u32, va: u64, len: u64, iova: Option<u64>, flags: u32) -> Result<u64, Errno> {
        iommufd::map(id, va, len, iova, flags)
    }
    fn unmap(&mut self, id: u32, iova: u64, len: u64) -> Result<u64, Errno> {
        iommufd::unmap(id, iova, len)
    }
    fn copy(
        &mut self,
        dst: u32,
        src: u32,
        src_iova: u64,
        len: u64,
        dst_iova: Option<u64>,
        flags: u32,
    ) -> Result<u64, Errno> {
        iommufd::copy(dst, src, src_iova, len, dst_iova, flags)
    }
    fn set_option(&mut self, id: u32, option: u32, value: u64) -> Result<bool, Errno> {
        iommufd::set_option(id, option, value)
    }
    fn devices(&self) -> Vec<usize> {
        self.devices.iter().map(|d| d.1).collect()
    }
    fn bind(&mut self, which: usize) -> Result<u32, Errno> {
        iommufd::device_bind(self.devices.get(which).ok_or(Errno::ENOENT)?.0)
    }
    fn attach(&mut self, dev: u32, pt: u32) -> Result<u32, Errno> {
        iommufd::device_attach(dev, pt)
    }
    fn detach(&mut self, dev: u32) -> Result<(), Errno> {
        iommufd::device_detach(dev)
    }
    fn alloc_pages(&mut self, pages: u64) -> Result<u64, Errno> {
        sys::mem_map(0, pages * 4096, abi::PROT_READ | abi::PROT_WRITE)
    }
    fn free_pages(&mut self, va: u64, pages: u64) {
        let _ = sys::mem_unmap(va, pages * 4096);
    }
    fn unmapped_va(&self) -> u64 {
        0x7000_0000_0000 // far above every mapping of this task
    }
    fn raw(&mut self, op: u64, bytes: &mut [u8]) -> Option<Result<(), Errno>> {
        self.raw_ptr(op, bytes.as_mut_ptr() as u64)
    }
    fn raw_ptr(&mut self, op: u64, ptr: u64) -> Option<Result<(), Errno>> {
        Some(abi::decode(sys::raw(abi::Sysno::Iommufd as u64, [op, ptr, 0, 0, 0])).map(|_| ()))
    }
    fn poke(&mut self, va: u64, value: u64) {
        // SAFETY: `va` is a page of this task the case mapped read/write (alloc_pages).
        unsafe { (va as *mut u64).write_volatile(value) };
    }
    fn dma_read(&mut self, which: usize, ioas: u32, iova: u64) -> Option<Option<u64>> {
        let &(bdf, _) = self.devices.get(which)?;
        if self.edus.len() <= which {
            self.edus.resize_with(which + 1, || None);
        }
        if self.edus[which].is_none() {
            self.edus[which] = edu_driver::Edu::open_claimed(bdf).ok();
        }
        let page = match self.result {
            Some(p) => p,
            None => {
                let p = sys::mem_map(0, 4096, abi::PROT_READ | abi::PROT_WRITE).ok()?;
                self.result = Some(p);
                p
            }
        };
        let edu = self.edus[which].as_ref()?;
        let flags = abi::iommufd::MAP_READABLE | abi::iommufd::MAP_WRITEABLE;
        iommufd::map(ioas, page, 4096, Some(RESULT_IOVA), flags).ok()?;
        // SAFETY: `page` is this door's own page, mapped read/write.
        let word = |v: Option<u64>| unsafe {
            match v {
                Some(v) => {
                    (page as *mut u64).write_volatile(v);
                    v
                }
                None => (page as *const u64).read_volatile(),
            }
        };
        // The marker into edu's buffer, then the page at `iova` over it (a
        // blocked read leaves the marker), then the buffer back to our page.
        word(Some(MARKER));
        let copied = edu.dma(RESULT_IOVA, false).and_then(|_| edu.dma(iova, false));
        word(Some(0));
        let back = copied.and_then(|_| edu.dma(RESULT_IOVA, true));
        let got = word(None);
        let _ = iommufd::unmap(ioas, RESULT_IOVA, 4096);
        back.ok()?;
        // A blocked read leaves the marker, or (QEMU: a refused DMA read
        // fills the device's buffer with zeros) zeros; no page of a case is
        // zero at its start, so neither can be data read through a mapping.
        Some((got != MARKER && got != 0).then_some(got))
    }
    fn leak_counters(&mut self) -> Option<[u64; 2]> {
        // Kernel counters (ktest boots): this task's pinned pages and objects.
        let pins = sys::test_counter(sys::Counter::PinnedPages).ok()?;
        Some([pins, sys::test_counter(sys::Counter::Objects).ok()?])
    }
    fn hw_info_typed(&mut self, dev: u32, data: &mut [u8]) -> Result<(u32, usize, u64, u64), Errno> {
        let t = iommufd::hw_info_typed(dev, data)?;
        Ok((t.data_type, t.data_len, t.hwpt_alloc_types, t.invalidate_types))
    }
    fn hwpt_alloc(
        &mut self,
        dev: u32,
        parent: u32,
        flags: u32,
        data_type: u32,
        data: &[u8],
        fault_id: u32,
    ) -> Result<u32, Errno> {
        // Raw flags as given (FAULT_ID_VALID included or not).
        let mut s = abi::iommufd::HwptAlloc {
            size: core::mem::size_of::<abi::iommufd::HwptAlloc>() as u32,
            flags,
            dev_id: dev,
            pt_id: parent,
            data_type,
            data_len: data.len() as u32,
            data_uptr: data.as_ptr() as u64,
            fault_id,
            out_hwpt_id: 0,
        };
        iommufd::call(abi::iommufd::Op::HwptAlloc, &mut s)?;
        Ok(s.out_hwpt_id)
    }
    fn hwpt_invalidate(
        &mut self,
        hwpt: u32,
        data_type: u32,
        entries: &[u8],
        entry_len: u32,
    ) -> (u32, Result<(), Errno>) {
        iommufd::hwpt_invalidate(hwpt, data_type, entries, entry_len as usize)
    }
    fn fault_queue_alloc(&mut self, capacity: u32) -> Result<u32, Errno> {
        iommufd::fault_queue_alloc(capacity)
    }
    fn fault_read(
        &mut self,
        queue: u32,
        room: usize,
        timeout_ms: u32,
    ) -> Result<(Vec<abi::iommufd::FaultRecord>, u64), Errno> {
        let mut buf = alloc::vec![abi::iommufd::FaultRecord::default(); room];
        let (n, overflows) = iommufd::fault_read(queue, &mut buf, timeout_ms)?;
        buf.truncate(n);
        Ok((buf, overflows))
    }
    fn pinned_pages(&mut self) -> Option<u64> {
        sys::test_counter(sys::Counter::PinnedPages).ok()
    }
    fn objects(&mut self) -> Option<u64> {
        sys::test_counter(sys::Counter::Objects).ok()
    }
}
