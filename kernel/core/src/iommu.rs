//! Glue for IOMMU drivers: page-table frames from the kernel frame allocator,
//! reached through the direct map (the `io-pgtable` frame seam).

use crate::mm;

/// [`io_pgtable::TableMemory`] over kernel frames.
#[derive(Debug, Default)]
pub struct KernelTables {
    /// Frames currently allocated through this value.
    pub live: usize,
}

impl io_pgtable::TableMemory for KernelTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = mm::alloc_frame()?;
        self.live += 1;
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        if mm::free_frame(pa).is_ok() {
            self.live -= 1;
        }
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        let p = (mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *const u64;
        // SAFETY: `table` is a frame handed out by `alloc_table` (still allocated), reached through the direct map; the index stays inside the frame.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        let p = (mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *mut u64;
        // SAFETY: as in `read`; the IOMMU walks these tables coherently (QEMU), real hardware without coherent walks would need a cache flush here.
        unsafe { p.write_volatile(value) }
    }
}
